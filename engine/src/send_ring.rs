//! One flush pass per shard turn: the shard's own io_uring ring for what WebSocket
//! connections and SSE streams are sent.
//!
//! Without it, every connection has a writer task: a delivery wakes it, it polls, makes
//! a monoio write op (touching the connection's task, its descriptor's shared state and
//! the op's slot, each a cache miss with 10k connections), and the completion wakes and
//! polls it again. With it, a delivery only puts the connection on the ring's dirty list
//! (once per turn); one flusher task per shard, which runs after the tasks already woken
//! in that turn, takes every dirty connection's queue into one `send`/`writev`
//! submission each, submits them all with one `io_uring_enter`, and handles the
//! completions that came back inline right there. This is NATS's `flushClients` and
//! uWS's corking, kept on io_uring's batching.
//!
//! A send the socket cannot take at once completes later. The ring signals an eventfd
//! whenever it posts completions (once per submission for those that came back
//! inline, which the flush pass has reaped already, and once for each later batch); a
//! reaper task reads it through the shard's monoio runtime and reaps. The `_ASYNC`
//! registration would not do: it signals only for completions from io-wq workers, and
//! a send that waited for socket space completes through task work instead. A
//! connection has at most one send in flight, so its bytes stay in order; what is
//! queued meanwhile goes in the next one.
//!
//! The closing rules are the writer task's (`outbound::run_writer`): a closing
//! connection's last frames get [`CLOSE_FLUSH_TIMEOUT`], then the socket is shut down for
//! writing; a connection that went away is shut down both ways if a send is still in
//! flight, so that send ends. Where the ring cannot be made (the legacy driver, or an old
//! kernel), or with `RINGCAST_SEND_RING=0`, connections and streams keep their writer
//! tasks.
//!
//! One of the engine's unsafe modules: the kernel reads a send's buffers after the
//! submission returns. Every in-flight send's connection is held in the ring's slot
//! table until its completion, and with it the `FrameBatch` whose iovecs and frames
//! the submission points at; the batch is not touched while the send is in flight.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;

use crate::iovec::FrameBatch;
use crate::outbound::{run_writer, ConnState, Outbound, WriteMeter};
use crate::server::yield_now;

/// How long a closing connection may take to flush its last frames.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Submission queue entries: sends pushed in one pass beyond this are submitted in
/// several `io_uring_enter` calls.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries. The kernel keeps completions that find the queue full on
/// a list of its own and moves them into the queue only inside `io_uring_enter`; while
/// it holds any, it posts no further completion to the queue (nor signals the
/// eventfd), so [`SendRing::reap`] asks for them whenever the overflow flag is up, and a
/// flush pass reaps after each full submission queue.
const CQ_ENTRIES: u32 = 32768;

/// Whatever holds an [`Outbound`] (a WebSocket connection, an SSE stream).
pub type Owner = dyn AsRef<Outbound>;

/// A connection's side of the ring: its socket and its send in flight.
pub struct Sink {
    owner: Weak<Owner>,
    ring: Rc<SendRing>,
    /// Keeps the descriptor open while the ring may use it.
    _stream: OwnedWriteHalf<TcpStream>,
    fd: RawFd,
    meter: WriteMeter,
    /// What the send in flight (or the next) writes.
    batch: FrameBatch,
    in_flight: bool,
    /// On the ring's dirty list.
    queued: bool,
    /// Shut down for writing (a closing connection's last frames are out).
    shut: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("fd", &self.fd)
            .field("in_flight", &self.in_flight)
            .field("batch", &self.batch)
            .finish()
    }
}

impl Sink {
    /// A sink sending `owner`'s queue on `fd` (the descriptor of `stream`'s socket)
    /// through `ring`.
    pub fn new(
        ring: Rc<SendRing>,
        owner: Weak<Owner>,
        stream: OwnedWriteHalf<TcpStream>,
        fd: RawFd,
        meter: WriteMeter,
    ) -> Sink {
        Sink {
            owner,
            ring,
            _stream: stream,
            fd,
            meter,
            batch: FrameBatch::default(),
            in_flight: false,
            queued: false,
            shut: false,
        }
    }

    /// Something was queued or the state changed: put the connection on the dirty list
    /// unless it is there already or a send is in flight (its completion looks again).
    pub(crate) fn wake(&mut self) {
        if self.queued || self.in_flight {
            return;
        }
        if let Some(owner) = self.owner.upgrade() {
            self.queued = true;
            self.ring.mark_dirty(owner);
        }
    }

    /// The connection went away: a send still in flight is ended by shutting the socket
    /// down both ways (its peer may never read again).
    pub(crate) fn abort(&mut self) {
        if self.in_flight {
            shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// The idle sweep: give the batch's memory back (not while the kernel reads it).
    pub(crate) fn trim(&mut self) -> bool {
        if self.in_flight {
            return false;
        }
        self.batch.trim();
        true
    }

    /// A closing connection gets [`CLOSE_FLUSH_TIMEOUT`] to send its last frames.
    pub(crate) fn arm_close_deadline(&self) {
        if let Some(owner) = self.owner.upgrade() {
            monoio::spawn(close_deadline(owner));
        }
    }
}

/// After [`CLOSE_FLUSH_TIMEOUT`], a closing connection whose last frames are still not
/// out is shut down both ways and marked closed.
async fn close_deadline(owner: Rc<Owner>) {
    monoio::time::sleep(CLOSE_FLUSH_TIMEOUT).await;
    let out = (*owner).as_ref();
    if out.state() == ConnState::Closed {
        return;
    }
    let stuck = out.with_sink(|sink| {
        let stuck = sink.in_flight || !sink.shut;
        if stuck {
            shutdown(sink.fd, libc::SHUT_RDWR);
        }
        stuck
    });
    if stuck == Some(true) {
        out.mark_closed();
    }
}

fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: `fd` is the socket of a sink, which holds its write half, so the
    // descriptor is open and still this socket. shutdown(2) touches no memory.
    let _ = unsafe { libc::shutdown(fd, how) };
}

/// Starts sending what `owner` is queued on `writer`'s socket: through `ring` when the
/// shard has one, else with a writer task of its own. `reader` is the other half of the
/// same socket (its descriptor is read from it).
pub fn start_sending<C: AsRef<Outbound> + 'static>(
    ring: Option<&Rc<SendRing>>,
    owner: &Rc<C>,
    reader: &OwnedReadHalf<TcpStream>,
    writer: OwnedWriteHalf<TcpStream>,
    meter: WriteMeter,
) {
    match ring {
        Some(ring) => {
            let fd = crate::nowait::stream_of(reader).as_raw_fd();
            let weak: Weak<C> = Rc::downgrade(owner);
            let sink = Sink::new(ring.clone(), weak, writer, fd, meter);
            (**owner).as_ref().attach(sink);
        }
        None => {
            monoio::spawn(run_writer(owner.clone(), writer, meter));
        }
    }
}

/// A shard's send ring. Lives in an `Rc` on the shard's thread.
pub struct SendRing {
    ring: RefCell<IoUring>,
    /// Submission queue entries: a flush pass reaps after pushing this many.
    sq_entries: usize,
    /// Whether it does (always, but in a test of `reap`'s own overflow handling).
    reap_each_full_queue: bool,
    /// Connections with something to send this turn.
    dirty: RefCell<Vec<Rc<Owner>>>,
    /// In-flight sends, by `user_data`; each keeps its connection (and its batch) alive.
    slots: RefCell<Slots>,
    /// `reap`'s buffer of `(user_data, result)`, kept from one reap to the next.
    completions: RefCell<Vec<(u64, i32)>>,
    flush_scheduled: Cell<bool>,
    flusher: Cell<Option<Waker>>,
    /// Signalled by the kernel whenever it posts completions; the reaper task takes it.
    eventfd: Cell<Option<monoio::fs::File>>,
}

impl std::fmt::Debug for SendRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRing")
            .field("dirty", &self.dirty.borrow().len())
            .field("in_flight", &self.slots.borrow().live)
            .finish()
    }
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Rc<Owner>>>,
    free: Vec<usize>,
    live: usize,
}

impl Slots {
    fn insert(&mut self, owner: Rc<Owner>) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(owner);
                i
            }
            None => {
                self.entries.push(Some(owner));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Rc<Owner>> {
        let owner = self.entries.get_mut(i)?.take()?;
        self.live -= 1;
        self.free.push(i);
        Some(owner)
    }
}

impl SendRing {
    /// A ring of its own for this shard, with its eventfd; `Err` where the kernel has no
    /// io_uring (connections then keep writer tasks).
    pub fn new() -> std::io::Result<Rc<SendRing>> {
        SendRing::with_sizes(SQ_ENTRIES, CQ_ENTRIES, true)
    }

    fn with_sizes(
        sq_entries: u32,
        cq_entries: u32,
        reap_each_full_queue: bool,
    ) -> std::io::Result<Rc<SendRing>> {
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(sq_entries)?;
        let sq_entries = ring.params().sq_entries() as usize;
        // SAFETY: eventfd(2) touches no memory; the descriptor it returns is owned by the
        // `File` made next (which the reaper task keeps and closes).
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if eventfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was made above and nothing else owns it.
        let file = unsafe { std::fs::File::from_raw_fd(eventfd) };
        ring.submitter().register_eventfd(eventfd)?;
        let eventfd = monoio::fs::File::from_std(file)?;
        Ok(Rc::new(SendRing {
            ring: RefCell::new(ring),
            sq_entries,
            reap_each_full_queue,
            dirty: RefCell::new(Vec::new()),
            slots: RefCell::new(Slots::default()),
            completions: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
            flusher: Cell::new(None),
            eventfd: Cell::new(Some(eventfd)),
        }))
    }

    /// Starts the shard's flusher and reaper tasks.
    pub fn spawn_tasks(self: &Rc<Self>) {
        monoio::spawn(run_flusher(self.clone()));
        monoio::spawn(run_reaper(self.clone()));
    }

    /// Sends in flight now.
    pub fn in_flight(&self) -> usize {
        self.slots.borrow().live
    }

    fn mark_dirty(&self, owner: Rc<Owner>) {
        self.dirty.borrow_mut().push(owner);
        if !self.flush_scheduled.replace(true) {
            if let Some(waker) = self.flusher.take() {
                waker.wake();
            }
        }
    }

    /// The flush pass: a send for every dirty connection, one submission for all, then
    /// the completions that came back inline.
    fn flush(&self) {
        // Taken out while the sends start, then put back empty (unless something was
        // marked dirty meanwhile), so its memory serves the next turn.
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut pushed = 0;
        for owner in dirty.drain(..) {
            pushed += usize::from(self.start(&owner));
            if pushed == self.sq_entries && self.reap_each_full_queue {
                // A full submission queue: hand it over and take what came back, so a
                // pass over more connections than the completion queue holds leaves
                // nothing on the kernel's overflow list.
                self.submit();
                self.reap();
                pushed = 0;
            }
        }
        let mut list = self.dirty.borrow_mut();
        if list.is_empty() {
            *list = dirty;
        }
        drop(list);
        if pushed > 0 {
            self.submit();
        }
        self.reap();
    }

    /// Takes what `owner` has queued into a send; true if one was pushed.
    fn start(&self, owner: &Rc<Owner>) -> bool {
        let out = (**owner).as_ref();
        let pushed = out.with_sink(|sink| {
            sink.queued = false;
            if sink.in_flight {
                return None;
            }
            let state = out.fill_batch(&mut sink.batch);
            if sink.batch.is_empty() {
                if matches!(state, ConnState::Closing(_)) && !sink.shut {
                    sink.shut = true;
                    shutdown(sink.fd, libc::SHUT_WR);
                }
                return None;
            }
            if state == ConnState::Closed {
                sink.batch = FrameBatch::default();
                return None;
            }
            sink.meter
                .counters
                .write_batch_frames
                .observe(sink.batch.frames() as u64);
            let iovecs = sink.batch.iovecs();
            let entry = if let [one] = iovecs {
                opcode::Send::new(
                    types::Fd(sink.fd),
                    one.iov_base as *const u8,
                    one.iov_len as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
            } else {
                opcode::Writev::new(types::Fd(sink.fd), iovecs.as_ptr(), iovecs.len() as u32)
                    .build()
            };
            sink.in_flight = true;
            Some(entry)
        });
        let Some(Some(entry)) = pushed else {
            return false;
        };
        let slot = self.slots.borrow_mut().insert(owner.clone());
        let entry = entry.user_data(slot as u64);
        let mut ring = self.ring.borrow_mut();
        for attempt in 0..2 {
            // SAFETY: the entry points at the iovecs and frames of the sink's batch. The
            // slot just filled holds the connection (and so the sink and its batch) until
            // this send's completion is reaped, and the batch is not changed while
            // `in_flight` is set; the descriptor stays open while the sink holds its write
            // half, which the connection keeps.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_ok() {
                return true;
            }
            if attempt == 0 {
                // The submission queue is full: hand it to the kernel and try again.
                if let Err(e) = ring.submit() {
                    tracing::warn!(error = %e, "send ring submit failed");
                }
            }
        }
        // Still no room: the kernel is not taking submissions. Nothing was handed over,
        // so the connection is let go here (closed, as after a failed write).
        drop(ring);
        tracing::warn!("send ring full: closing a connection");
        self.slots.borrow_mut().remove(slot);
        out.with_sink(|sink| {
            sink.in_flight = false;
            sink.batch = FrameBatch::default();
        });
        out.mark_closed();
        false
    }

    /// Hands the queued sends to the kernel (and, when the overflow flag is up, has it
    /// move the completions it kept aside into the queue); false if that failed.
    fn submit(&self) -> bool {
        match self.ring.borrow_mut().submit() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "send ring submit failed");
                false
            }
        }
    }

    /// Handles every completion there is, those the kernel kept aside while the queue
    /// was full included; a connection with more to send is started again at once.
    fn reap(&self) {
        let mut pushed = 0;
        let mut done = std::mem::take(&mut *self.completions.borrow_mut());
        // Rounds that found the queue empty with the overflow flag up: the enter that
        // follows moves kept completions in, so a second such round means it cannot.
        let mut empty_overflowed = 0;
        loop {
            let mut ring = self.ring.borrow_mut();
            done.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
            let overflowed = ring.submission().cq_overflow();
            drop(ring);
            if done.is_empty() {
                if !overflowed || empty_overflowed == 1 || !self.submit() {
                    break;
                }
                empty_overflowed += 1;
                continue;
            }
            empty_overflowed = 0;
            for (slot, result) in done.drain(..) {
                let Some(owner) = self.slots.borrow_mut().remove(slot as usize) else {
                    continue;
                };
                if self.complete(&owner, result) {
                    pushed += usize::from(self.start(&owner));
                }
            }
            if pushed == 0 && !overflowed {
                break;
            }
            // Restarted sends go in; kept completions come out (the flag asks for them).
            if !self.submit() {
                break;
            }
            pushed = 0;
        }
        *self.completions.borrow_mut() = done;
    }

    /// One send's completion; true if the connection has more to send now (the rest of
    /// a short write, frames queued meanwhile, or a close to finish).
    fn complete(&self, owner: &Rc<Owner>, result: i32) -> bool {
        let out = (**owner).as_ref();
        let left = out.with_sink(|sink| {
            sink.in_flight = false;
            if result <= 0 {
                // The socket failed (or was shut down by `abort` or the close deadline).
                sink.batch = FrameBatch::default();
                return None;
            }
            sink.meter
                .counters
                .bytes_out(sink.meter.transport, result as u64);
            sink.batch.advance(result as usize);
            Some(!sink.batch.is_empty())
        });
        match left {
            Some(Some(left)) => out.written(result as usize) | left,
            Some(None) => {
                out.mark_closed();
                false
            }
            None => false,
        }
    }
}

impl Drop for SendRing {
    fn drop(&mut self) {
        // Sends still in flight when the shard's runtime ends: the kernel may read their
        // buffers until it has cancelled them, after the ring is closed. Their
        // connections (and so their batches) are leaked rather than freed under it.
        for owner in self.slots.get_mut().entries.drain(..).flatten() {
            std::mem::forget(owner);
        }
    }
}

/// The flusher task: one flush pass each time connections became dirty.
async fn run_flusher(ring: Rc<SendRing>) {
    loop {
        poll_fn(|cx| {
            if ring.flush_scheduled.get() {
                return Poll::Ready(());
            }
            ring.flusher.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        // Once more to the back of the run queue: the tasks woken after this one in
        // the same turn (more sessions' reads, the inbox) queue their deliveries
        // first, so the turn's sends go in one pass and one submission.
        yield_now().await;
        ring.flush_scheduled.set(false);
        ring.flush();
    }
}

/// The reaper task: reads the eventfd through the shard's runtime and reaps the sends
/// that completed after their submission. Should a read ever fail, it reaps every
/// millisecond instead, so no completion is left behind.
async fn run_reaper(ring: Rc<SendRing>) {
    let Some(file) = ring.eventfd.take() else {
        return;
    };
    let mut buf = vec![0u8; 8];
    loop {
        let (result, returned) = file.read_at(buf, 0).await;
        buf = returned;
        ring.reap();
        if let Err(e) = result {
            tracing::warn!(error = %e, "send ring: eventfd read failed; reaping every millisecond");
            break;
        }
    }
    loop {
        monoio::time::sleep(Duration::from_millis(1)).await;
        ring.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ShardId;
    use crate::mesh::Mesh;
    use crate::metrics::{Metrics, Transport};
    use bytes::Bytes;
    use monoio::io::{AsyncReadRent, Splitable};
    use ringcast_protocol::CloseCode;
    use std::os::fd::AsRawFd;

    /// Socket buffers small enough that the tests' writes wait for the reader. Not much
    /// smaller: with 4 KiB buffers loopback TCP stops waking a waiting io_uring send at
    /// all, through the writer task's monoio op just the same.
    const SMALL_BUF: usize = 64 * 1024;

    struct TestConn {
        out: Outbound,
    }

    impl AsRef<Outbound> for TestConn {
        fn as_ref(&self) -> &Outbound {
            &self.out
        }
    }

    fn farewell(code: CloseCode, _reason: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(&code.0.to_be_bytes()))
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring")
    }

    /// A connected pair on loopback: the server side attached to `ring` with small
    /// socket buffers (so large writes complete late), and the client side.
    async fn attached_pair(
        ring: &Rc<SendRing>,
        limit: usize,
    ) -> (Rc<TestConn>, monoio::net::TcpStream) {
        std::future::ready(()).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(SMALL_BUF)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(SMALL_BUF)
            .unwrap();
        let server = monoio::net::TcpStream::from_std(server).unwrap();
        let client = monoio::net::TcpStream::from_std(client).unwrap();
        let conn = Rc::new(TestConn {
            out: Outbound::new(limit, farewell),
        });
        let fd = server.as_raw_fd();
        let (_reader, writer) = server.into_split();
        let metrics = Metrics::new(Mesh::new(1), &Default::default());
        let meter = WriteMeter {
            counters: metrics.shard_handle(ShardId(0)),
            transport: Transport::Ws,
        };
        let owner: Weak<TestConn> = Rc::downgrade(&conn);
        conn.out
            .attach(Sink::new(ring.clone(), owner, writer, fd, meter));
        (conn, client)
    }

    /// Reads until end of stream (or `max` bytes), pausing between reads so the
    /// sender's socket fills up.
    async fn read_all(client: &mut monoio::net::TcpStream, max: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1500];
        while got.len() < max {
            let (n, returned) = client.read(buf).await;
            buf = returned;
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            monoio::time::sleep(Duration::from_micros(200)).await;
        }
        got
    }

    /// Waits (2 s at most) for the ring's last send to come back: its completion arrives
    /// through the eventfd at a time the test cannot await directly.
    async fn no_send_in_flight(ring: &SendRing) {
        for _ in 0..2000 {
            if ring.in_flight() == 0 {
                return;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Reads exactly `n` bytes, within 2 s (fewer if the time runs out or the stream ends).
    async fn read_n(client: &mut monoio::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while got.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let buf = vec![0u8; n - got.len()];
            match monoio::time::timeout(left, client.read(buf)).await {
                Ok((Ok(k), buf)) if k > 0 => got.extend_from_slice(&buf[..k]),
                _ => break,
            }
        }
        got
    }

    /// 20 connections, a ring of 4 submissions and 8 completions: `PAIRS` sends go to
    /// the kernel in one flush pass, more than its completion queue holds.
    const PAIRS: usize = 20;

    fn small_ring() -> Rc<SendRing> {
        small_ring_reaping(true)
    }

    fn small_ring_reaping(each_full_queue: bool) -> Rc<SendRing> {
        let ring = SendRing::with_sizes(4, 8, each_full_queue).unwrap();
        assert_eq!(ring.sq_entries, 4);
        ring.spawn_tasks();
        ring
    }

    #[test]
    fn a_pass_over_more_connections_than_the_completion_queue_holds_ends_every_send() {
        pass_over_more_connections_than_the_completion_queue(true);
    }

    /// The same with the pass's own reaping off: `reap` alone must take the
    /// completions the kernel kept aside (no submission follows to flush them).
    #[test]
    fn reap_takes_the_completions_the_kernel_kept_aside() {
        pass_over_more_connections_than_the_completion_queue(false);
    }

    fn pass_over_more_connections_than_the_completion_queue(reap_each_full_queue: bool) {
        runtime().block_on(async {
            let ring = small_ring_reaping(reap_each_full_queue);
            let mut pairs = Vec::new();
            for _ in 0..PAIRS {
                pairs.push(attached_pair(&ring, 16 << 20).await);
            }
            // One turn: every connection dirty, one flush pass.
            for (conn, _) in &pairs {
                conn.out.push(Bytes::from_static(b"first."));
            }
            for (i, (_, client)) in pairs.iter_mut().enumerate() {
                assert_eq!(read_n(client, 6).await, b"first.", "connection {i}");
            }
            no_send_in_flight(&ring).await;
            assert_eq!(ring.in_flight(), 0, "every completion was reaped");
            for (conn, _) in &pairs {
                conn.out.push(Bytes::from_static(b"second"));
            }
            for (i, (_, client)) in pairs.iter_mut().enumerate() {
                assert_eq!(read_n(client, 6).await, b"second", "connection {i}");
            }
        });
    }

    #[test]
    fn completions_arriving_late_beyond_the_completion_queue_are_all_reaped() {
        runtime().block_on(async {
            let ring = small_ring();
            let mut pairs = Vec::new();
            for _ in 0..PAIRS {
                pairs.push(attached_pair(&ring, 16 << 20).await);
            }
            // More than the socket buffers hold: every send waits for the reader.
            let big = Bytes::from(vec![3u8; 1 << 20]);
            for (conn, _) in &pairs {
                conn.out.push(big.clone());
            }
            for _ in 0..100 {
                if ring.in_flight() == PAIRS {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(ring.in_flight(), PAIRS, "every send waits for its reader");
            // Without yielding to the runtime, read a little from every client: each
            // waiting send makes progress and completes (short), 20 completions for a
            // queue of 8, before the reaper can run. (Each restarts, and a restart's
            // submission also has the kernel hand kept completions over; the pass test
            // above is the one with nothing to restart.)
            let mut read = [0usize; PAIRS];
            for (i, (_, client)) in pairs.iter().enumerate() {
                let fd = client.as_raw_fd();
                let mut buf = vec![0u8; 256 * 1024];
                // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes, and
                // `fd` is the client socket `pairs` keeps open.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                read[i] = usize::try_from(n).unwrap_or(0);
            }
            std::thread::sleep(Duration::from_millis(20));
            for (i, (_, client)) in pairs.iter_mut().enumerate() {
                let rest = read_n(client, big.len() - read[i]).await;
                assert_eq!(read[i] + rest.len(), big.len(), "connection {i}");
            }
            no_send_in_flight(&ring).await;
            assert_eq!(ring.in_flight(), 0);
        });
    }

    #[test]
    fn frames_arrive_whole_and_in_order_through_late_completions_then_the_close() {
        runtime().block_on(async {
            let ring = SendRing::new().unwrap();
            ring.spawn_tasks();
            let (conn, mut client) = attached_pair(&ring, 16 << 20).await;
            let mut expected = Vec::new();
            for i in 0..400u32 {
                // 400 frames of 1 KiB: far more than the 4 KiB socket buffers hold, so
                // most sends complete after their submission (through the eventfd).
                let frame: Vec<u8> = (0..1024u32).map(|j| (i * 7 + j) as u8).collect();
                expected.extend_from_slice(&frame);
                assert_eq!(
                    conn.out.push(Bytes::from(frame)),
                    crate::outbound::Pushed::Queued
                );
                if i % 50 == 0 {
                    monoio::time::sleep(Duration::from_micros(100)).await;
                }
            }
            conn.out.close(CloseCode::NORMAL, "bye");
            expected.extend_from_slice(&1000u16.to_be_bytes());
            let got = read_all(&mut client, usize::MAX).await;
            assert_eq!(got.len(), expected.len(), "everything, then end of stream");
            assert!(got == expected, "in order");
            assert_eq!(ring.in_flight(), 0);
            assert_eq!(conn.out.state(), ConnState::Closing(CloseCode::NORMAL));
        });
    }

    #[test]
    fn a_send_stuck_on_a_reader_that_went_quiet_ends_when_the_connection_goes() {
        runtime().block_on(async {
            let ring = SendRing::new().unwrap();
            ring.spawn_tasks();
            let (conn, _client) = attached_pair(&ring, 16 << 20).await;
            for _ in 0..200 {
                conn.out.push(Bytes::from(vec![7u8; 1024]));
            }
            // Let the flusher run: the client never reads, so a send stays in flight.
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(ring.in_flight(), 1);
            conn.out.mark_closed();
            // The shutdown ends the send; its completion comes back through the eventfd.
            no_send_in_flight(&ring).await;
            assert_eq!(
                ring.in_flight(),
                0,
                "the slot (and the connection) is let go"
            );
            assert_eq!(Rc::strong_count(&conn), 1);
        });
    }

    #[test]
    fn a_closing_connection_whose_reader_never_reads_is_closed_after_the_deadline() {
        runtime().block_on(async {
            let ring = SendRing::new().unwrap();
            ring.spawn_tasks();
            let (conn, _client) = attached_pair(&ring, 16 << 20).await;
            for _ in 0..2048 {
                conn.out.push(Bytes::from(vec![7u8; 1024]));
            }
            // Let the flusher run: nobody reads, so a send stays in flight.
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(ring.in_flight(), 1);
            conn.out.close(CloseCode::GOING_AWAY, "shutdown");
            monoio::time::sleep(CLOSE_FLUSH_TIMEOUT - Duration::from_millis(200)).await;
            assert_eq!(conn.out.state(), ConnState::Closing(CloseCode::GOING_AWAY));
            monoio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(
                conn.out.state(),
                ConnState::Closed,
                "given up at the deadline"
            );
            no_send_in_flight(&ring).await;
            assert_eq!(ring.in_flight(), 0);
        });
    }
}
