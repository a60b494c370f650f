//! A connection's outbound side, whatever its transport: the bounded queue of encoded
//! frames, the slow-consumer policy, byte accounting, and the writer task that sends
//! everything queued in one `writev` (one plain `send` when that is a single buffer).
//!
//! Transport-agnostic: it moves opaque `Bytes`. WebSocket connections queue WebSocket
//! frames and say goodbye with a close frame; an SSE stream queues `text/event-stream`
//! chunks and has no goodbye frame. The transport tells the queue how to say goodbye
//! ([`Farewell`]); everything else (coalescing, the 4008 bound, idle-buffer release) is
//! shared.
//!
//! Fan-out only appends shared `Bytes` to the queue and wakes the writer; everything
//! queued while the writer was busy goes out in its next single `writev`, so frames
//! coalesce per connection. The queue is bounded by `limit` bytes (queued plus in
//! flight). A push that would exceed it drops what is queued and starts a close with
//! [`CloseCode::SLOW_CONSUMER`].
//!
//! The queue remembers why it left [`ConnState::Open`] ([`CloseReason`]: the server's
//! close code, or the client), which the shard counts and logs when the connection ends.
//! The writer counts the bytes it writes and the frames per `writev` in its shard's
//! counters ([`WriteMeter`]).
//!
//! A busy connection keeps its queue's and batch's memory from one write to the next; the
//! shard's once-a-second sweep ([`Outbound::sweep_idle`]) gives that memory back once a
//! connection has written nothing for a whole tick, so idle connections hold none.
//!
//! Who sends: on a shard with a [`SendRing`], a connection (WebSocket or SSE) has a
//! [`Sink`] attached ([`Outbound::attach`]) and no writer task; a push then only puts it
//! on the ring's dirty list, and the shard's flush pass sends (`send_ring.rs`). Without
//! a ring (the legacy driver, `RINGCAST_SEND_RING=0`) each has a writer task
//! ([`run_writer`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Buf, Bytes};
use monoio::io::AsyncWriteRent;
use ringcast_protocol::CloseCode;

use crate::iovec::FrameBatch;
use crate::metrics::{CloseReason, ShardMetrics, Transport};
use crate::send_ring::{Sink, CLOSE_FLUSH_TIMEOUT};

#[cfg(doc)]
use crate::send_ring::SendRing;

/// The last frame a transport sends when it closes with a code (a WebSocket close frame;
/// nothing for SSE).
pub type Farewell = fn(CloseCode, &str) -> Option<Bytes>;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Serving.
    Open,
    /// Closing with this code: flush what is queued, then shut the socket down.
    Closing(CloseCode),
    /// Gone: stop writing.
    Closed,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for writing.
    Queued,
    /// The connection is closing; the frame was dropped.
    Dropped,
    /// The buffer overflowed: the connection is now closing with 4008.
    Overflowed,
}

/// Whether the connection holds write buffers the idle sweep should give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffers {
    /// Nothing held (new, or trimmed by the sweep).
    Released,
    /// Written since the last sweep.
    Busy,
    /// Nothing written since the last sweep: the next one trims.
    Idle,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Queued plus in-flight bytes.
    bytes: usize,
    limit: usize,
    state: ConnState,
}

/// One connection's outbound queue and the wakers of its two tasks.
pub struct Outbound {
    queue: RefCell<Queue>,
    farewell: Farewell,
    writer_waker: Cell<Option<Waker>>,
    reader_waker: Cell<Option<Waker>>,
    buffers: Cell<Buffers>,
    /// Set by the sweep: the writer gives back its batch's memory at its next turn.
    trim_requested: Cell<bool>,
    /// The reader waits for half the bound to be free (see [`Outbound::want_room`]).
    room_wanted: Cell<bool>,
    /// Why it stopped being open, and the code it closed with if the server sent one
    /// (`None` while open).
    closed_by: Cell<Option<(CloseReason, Option<CloseCode>)>>,
    /// The socket, when the shard's send ring sends (`None`: a writer task does).
    sink: RefCell<Option<Sink>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.queue.borrow();
        f.debug_struct("Outbound")
            .field("state", &queue.state)
            .field("frames", &queue.frames.len())
            .field("bytes", &queue.bytes)
            .finish()
    }
}

impl Outbound {
    /// An open queue bounded at `limit` bytes; `farewell` makes the transport's last frame.
    pub fn new(limit: usize, farewell: Farewell) -> Outbound {
        Outbound {
            queue: RefCell::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                limit,
                state: ConnState::Open,
            }),
            farewell,
            writer_waker: Cell::new(None),
            reader_waker: Cell::new(None),
            buffers: Cell::new(Buffers::Released),
            trim_requested: Cell::new(false),
            room_wanted: Cell::new(false),
            closed_by: Cell::new(None),
            sink: RefCell::new(None),
        }
    }

    /// The bound on queued-plus-in-flight bytes.
    pub fn limit(&self) -> usize {
        self.queue.borrow().limit
    }

    /// Bytes that may still be queued before the bound is reached.
    pub fn room(&self) -> usize {
        let queue = self.queue.borrow();
        queue.limit.saturating_sub(queue.bytes)
    }

    /// Asks for the reader to be woken once half the bound is free again, when it is
    /// not already: after a resume's replay filled the queue past half, the session acts
    /// on no further frame before then, so resumes sent in one read each find room for
    /// their replay, and a client that sends them without reading its answers is not
    /// closed with 4008 for it (found in review).
    pub fn want_room(&self) {
        let queue = self.queue.borrow();
        self.room_wanted.set(queue.bytes > queue.limit / 2);
    }

    /// Whether the reader waits for room ([`Outbound::want_room`]) and it is not there.
    pub fn waits_for_room(&self) -> bool {
        self.room_wanted.get()
    }

    /// `written` bytes left the queue.
    fn release(&self, queue: &mut Queue, written: usize) {
        queue.bytes = queue.bytes.saturating_sub(written);
        if self.room_wanted.get() && queue.bytes <= queue.limit / 2 {
            self.room_wanted.set(false);
            wake(&self.reader_waker);
        }
    }

    /// From now on the shard's send ring sends through `sink` (no writer task).
    pub fn attach(&self, sink: Sink) {
        let mut slot = self.sink.borrow_mut();
        let sink = slot.insert(sink);
        if !self.queue.borrow().frames.is_empty() {
            sink.wake();
        }
    }

    /// Runs `f` on the attached sink (`None`: no sink).
    pub(crate) fn with_sink<R>(&self, f: impl FnOnce(&mut Sink) -> R) -> Option<R> {
        self.sink.borrow_mut().as_mut().map(f)
    }

    /// For the send ring: moves what is queued into `batch` (after giving its memory
    /// back if the idle sweep asked) and says where the connection stands.
    pub(crate) fn fill_batch(&self, batch: &mut FrameBatch) -> ConnState {
        if self.trim_requested.replace(false) {
            batch.trim();
        }
        let mut queue = self.queue.borrow_mut();
        batch.fill_from(&mut queue.frames);
        queue.state
    }

    /// For the send ring: `written` bytes went out. True if more is queued, or the
    /// connection is closing (its socket is shut down once everything is out).
    pub(crate) fn written(&self, written: usize) -> bool {
        self.buffers.set(Buffers::Busy);
        let mut queue = self.queue.borrow_mut();
        self.release(&mut queue, written);
        !queue.frames.is_empty() || matches!(queue.state, ConnState::Closing(_))
    }

    /// Why the connection stopped being open: the reason of the server's close code, or
    /// [`CloseReason::Client`] when the client closed (or went away) first.
    pub fn close_reason(&self) -> CloseReason {
        self.closed_by
            .get()
            .map_or(CloseReason::Client, |(reason, _)| reason)
    }

    /// The code the connection was closed with (`None`: it went away without one).
    pub fn close_code(&self) -> Option<CloseCode> {
        self.closed_by.get().and_then(|(_, code)| code)
    }

    /// Records the first reason only.
    fn note_reason(&self, reason: CloseReason, code: Option<CloseCode>) {
        if self.closed_by.get().is_none() {
            self.closed_by.set(Some((reason, code)));
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.queue.borrow().state
    }

    /// Queues a frame for writing.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut queue = self.queue.borrow_mut();
        if queue.state != ConnState::Open {
            return Pushed::Dropped;
        }
        // One frame bigger than the whole bound still goes to a connection with nothing
        // queued or in flight (found in review: otherwise a message the tenant may send
        // cut every subscriber, and again on each resume that replayed it).
        if queue.bytes + frame.len() > queue.limit && queue.bytes > 0 {
            // Memory stays bounded: what is queued goes; the client catches up from history.
            queue.frames.clear();
            queue.bytes = 0;
            queue.state = ConnState::Closing(CloseCode::SLOW_CONSUMER);
            self.note_reason(CloseReason::SlowConsumer, Some(CloseCode::SLOW_CONSUMER));
            if let Some(last) = (self.farewell)(CloseCode::SLOW_CONSUMER, "slow consumer") {
                queue.frames.push_back(last);
            }
            drop(queue);
            self.now_closing();
            return Pushed::Overflowed;
        }
        queue.bytes += frame.len();
        let was_empty = queue.frames.is_empty();
        queue.frames.push_back(frame);
        drop(queue);
        if let Some(sink) = self.sink.borrow_mut().as_mut() {
            sink.wake();
        } else if was_empty {
            wake(&self.writer_waker);
        }
        Pushed::Queued
    }

    /// Takes everything queued, as if it had been written: tests read what a connection
    /// was sent this way, benchmarks measure fan-out without a socket.
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut queue = self.queue.borrow_mut();
        let all = queue.bytes;
        self.release(&mut queue, all);
        queue.frames.drain(..).collect()
    }

    /// Drops everything queued, as if it had been written; returns how many frames.
    pub fn discard_queued(&self) -> usize {
        let mut queue = self.queue.borrow_mut();
        let n = queue.frames.len();
        queue.frames.clear();
        let all = queue.bytes;
        self.release(&mut queue, all);
        n
    }

    /// Starts a close with `code`: the transport's farewell goes after what is queued.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.close_for(code, reason, CloseReason::of(code));
    }

    /// Closes a peer that has gone quiet for too long with 1001, counted as a timeout.
    pub fn close_idle(&self, reason: &str) {
        self.close_for(CloseCode::GOING_AWAY, reason, CloseReason::Timeout);
    }

    /// Answers the client's own close (a close frame) with `code`: counted as the
    /// client's close, whatever the code.
    pub fn close_by_client(&self, code: CloseCode) {
        self.close_for(code, "", CloseReason::Client);
    }

    fn close_for(&self, code: CloseCode, reason: &str, why: CloseReason) {
        let mut queue = self.queue.borrow_mut();
        if queue.state != ConnState::Open {
            return;
        }
        queue.state = ConnState::Closing(code);
        self.note_reason(why, Some(code));
        if let Some(last) = (self.farewell)(code, reason) {
            queue.frames.push_back(last);
        }
        drop(queue);
        self.now_closing();
    }

    /// The connection just left `Open` for `Closing`: whoever sends flushes the farewell
    /// (within [`CLOSE_FLUSH_TIMEOUT`]) and shuts the socket down; the reader stops.
    fn now_closing(&self) {
        if let Some(sink) = self.sink.borrow_mut().as_mut() {
            sink.wake();
            sink.arm_close_deadline();
        }
        self.wake_both();
    }

    /// The connection is gone: drop what is queued and stop the writer. Gone while
    /// open means the client went away (EOF, reset, a failed write).
    pub fn mark_closed(&self) {
        self.note_reason(CloseReason::Client, None);
        let mut queue = self.queue.borrow_mut();
        queue.state = ConnState::Closed;
        queue.frames.clear();
        queue.bytes = 0;
        drop(queue);
        if let Some(sink) = self.sink.borrow_mut().as_mut() {
            sink.abort();
        }
        self.wake_both();
    }

    /// Called by the shard once per housekeeping tick: a connection that wrote nothing
    /// since the previous tick gives back its queue's memory now and its writer's batch
    /// at the writer's next turn.
    pub fn sweep_idle(&self) {
        match self.buffers.get() {
            Buffers::Released => {}
            Buffers::Busy => self.buffers.set(Buffers::Idle),
            Buffers::Idle => {
                self.buffers.set(Buffers::Released);
                let mut queue = self.queue.borrow_mut();
                if queue.frames.is_empty() {
                    queue.frames = VecDeque::new();
                }
                drop(queue);
                let trimmed = self.with_sink(Sink::trim);
                if trimmed != Some(true) {
                    self.trim_requested.set(true);
                }
                wake(&self.writer_waker);
            }
        }
    }

    /// Resolves once the connection is no longer open (the reader task waits on this
    /// beside its read).
    pub async fn until_not_open(&self) {
        poll_fn(|cx| {
            if self.state() != ConnState::Open {
                return Poll::Ready(());
            }
            register(&self.reader_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// For the reader task once it stopped reading: resolves when the connection is
    /// marked closed (it waits on the reader's waker slot, never the writer's).
    pub async fn reader_until_closed(&self) {
        poll_fn(|cx| {
            if self.state() == ConnState::Closed {
                return Poll::Ready(());
            }
            register(&self.reader_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    async fn until_closed(&self) {
        poll_fn(|cx| {
            if self.state() == ConnState::Closed {
                return Poll::Ready(());
            }
            register(&self.writer_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Resolves when there is something to write, the state changed, or the sweep asked
    /// for the batch's memory back.
    async fn until_writable(&self) {
        poll_fn(|cx| {
            let queue = self.queue.borrow();
            if !queue.frames.is_empty()
                || queue.state != ConnState::Open
                || self.trim_requested.get()
            {
                return Poll::Ready(());
            }
            register(&self.writer_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Has `waker` woken with the reader's other events (see [`Outbound::wake_reader`]).
    pub fn register_reader(&self, waker: &Waker) {
        register(&self.reader_waker, waker);
    }

    /// Wakes the reader task: something it waits on besides the socket changed (an
    /// answer to one of its resumes).
    pub fn wake_reader(&self) {
        wake(&self.reader_waker);
    }

    fn wake_both(&self) {
        wake(&self.writer_waker);
        wake(&self.reader_waker);
    }
}

/// Stores `waker` in `slot`, cloning only when the slot does not already hold one that
/// wakes the same task (a task polled again without being woken keeps its waker).
fn register(slot: &Cell<Option<Waker>>, waker: &Waker) {
    match slot.take() {
        Some(held) if held.will_wake(waker) => slot.set(Some(held)),
        _ => slot.set(Some(waker.clone())),
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// Where a writer counts what it writes: its shard's counters and its transport.
#[derive(Debug, Clone)]
pub struct WriteMeter {
    /// The counters of the shard the writer runs on.
    pub counters: ShardMetrics,
    /// The connection's transport (the `transport` label of `ringcast_bytes_out_total`).
    pub transport: Transport,
}

/// The writer task: one `writev` per turn with everything queued, until closed. `owner`
/// is whatever holds the queue (a WebSocket connection, an SSE stream); `meter` counts
/// bytes written and frames per `writev` on the writer's shard.
///
/// A function returning an `async move` block rather than an `async fn`, so its
/// arguments are kept once in the task, not twice (see `session::run_session`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn run_writer<C, W>(owner: Rc<C>, mut writer: W, meter: WriteMeter) -> impl Future<Output = ()>
where
    C: AsRef<Outbound>,
    W: AsyncWriteRent,
{
    async move {
        let out: &Outbound = (*owner).as_ref();
        let mut batch = FrameBatch::default();
        loop {
            out.until_writable().await;
            if out.trim_requested.replace(false) {
                batch.trim();
            }
            let state = {
                let mut queue = out.queue.borrow_mut();
                batch.fill_from(&mut queue.frames);
                queue.state
            };
            if batch.is_empty() {
                if state != ConnState::Open {
                    break;
                }
                continue;
            }
            meter
                .counters
                .write_batch_frames
                .observe(batch.frames() as u64);
            let written = if state == ConnState::Open {
                // Boxed: the write's state (the in-flight op, the select) lives on the heap
                // only while writing, so an idle connection's task stays small.
                Box::pin(write_batch(out, &mut writer, &mut batch, &meter)).await
            } else {
                // Closing: the last frames get a deadline (boxed: a rare path kept out of
                // every idle connection's task).
                let flush = monoio::time::timeout(
                    CLOSE_FLUSH_TIMEOUT,
                    write_batch(out, &mut writer, &mut batch, &meter),
                );
                Box::pin(flush).await.unwrap_or(false)
            };
            if !written {
                out.mark_closed();
                return;
            }
            out.buffers.set(Buffers::Busy);
        }
        if matches!(out.state(), ConnState::Closing(_)) {
            let _ = Box::pin(monoio::time::timeout(
                CLOSE_FLUSH_TIMEOUT,
                writer.shutdown(),
            ))
            .await;
        }
    }
}

/// Writes the whole batch; false when the socket failed or the connection went away.
async fn write_batch<W: AsyncWriteRent>(
    out: &Outbound,
    writer: &mut W,
    batch: &mut FrameBatch,
    meter: &WriteMeter,
) -> bool {
    while !batch.is_empty() {
        let written = match batch.take_single() {
            Some(frame) => send_one(out, writer, batch, frame).await,
            None => send_vectored(out, writer, batch).await,
        };
        match written {
            None | Some(Ok(0) | Err(_)) => return false,
            Some(Ok(written)) => {
                meter.counters.bytes_out(meter.transport, written as u64);
                let mut queue = out.queue.borrow_mut();
                out.release(&mut queue, written);
            }
        }
    }
    true
}

/// One buffer (a frame, or a delivery run) as a plain send: no iovec array for the
/// kernel to copy in. What is left of it after a short write goes back into `batch`.
/// `None`: the connection went away meanwhile.
async fn send_one<W: AsyncWriteRent>(
    out: &Outbound,
    writer: &mut W,
    batch: &mut FrameBatch,
    frame: Bytes,
) -> Option<std::io::Result<usize>> {
    let (result, mut frame) = monoio::select! {
        result = writer.write(frame) => Some(result),
        _ = out.until_closed() => None,
    }?;
    if let Ok(written) = result {
        frame.advance(written.min(frame.len()));
        if !frame.is_empty() {
            batch.put_back(frame);
        }
    }
    Some(result)
}

/// Several buffers in one `writev`; `batch` is advanced past what was written.
/// `None`: the connection went away meanwhile.
async fn send_vectored<W: AsyncWriteRent>(
    out: &Outbound,
    writer: &mut W,
    batch: &mut FrameBatch,
) -> Option<std::io::Result<usize>> {
    let (result, returned) = monoio::select! {
        result = writer.writev(std::mem::take(batch)) => Some(result),
        _ = out.until_closed() => None,
    }?;
    *batch = returned;
    if let Ok(written) = result {
        batch.advance(written);
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_like(code: CloseCode, _reason: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(&code.0.to_be_bytes()))
    }

    #[test]
    fn overflow_closes_with_4008_and_frees_the_queue() {
        let out = Outbound::new(100, ws_like);
        assert_eq!(out.push(Bytes::from(vec![0u8; 60])), Pushed::Queued);
        assert_eq!(out.push(Bytes::from(vec![0u8; 60])), Pushed::Overflowed);
        assert_eq!(out.state(), ConnState::Closing(CloseCode::SLOW_CONSUMER));
        let queued = out.take_queued();
        assert_eq!(queued.len(), 1, "only the farewell is left");
        assert_eq!(&queued[0][..], &4008u16.to_be_bytes());
        assert_eq!(out.push(Bytes::from_static(b"x")), Pushed::Dropped);
    }

    #[test]
    fn a_transport_without_farewell_just_closes() {
        let out = Outbound::new(10, |_, _| None);
        out.push(Bytes::from_static(b"x"));
        out.push(Bytes::from_static(b"0123456789"));
        assert_eq!(out.state(), ConnState::Closing(CloseCode::SLOW_CONSUMER));
        assert!(out.take_queued().is_empty());
    }

    #[test]
    fn idle_sweep_gives_buffers_back_only_after_a_quiet_tick() {
        let out = Outbound::new(1000, ws_like);
        out.push(Bytes::from_static(b"a"));
        out.discard_queued();
        out.buffers.set(Buffers::Busy); // what the writer records after a write
        out.sweep_idle();
        assert!(
            out.queue.borrow().frames.capacity() > 0,
            "written this tick: kept"
        );
        assert!(!out.trim_requested.get());
        out.sweep_idle();
        assert_eq!(
            out.queue.borrow().frames.capacity(),
            0,
            "a quiet tick: released"
        );
        assert!(
            out.trim_requested.get(),
            "the writer is asked to trim its batch"
        );
        assert_eq!(out.buffers.get(), Buffers::Released);
    }

    #[test]
    fn the_first_reason_to_leave_open_is_kept() {
        let out = Outbound::new(100, ws_like);
        out.push(Bytes::from_static(b"x"));
        out.push(Bytes::from(vec![0u8; 100]));
        out.close(CloseCode::GOING_AWAY, "shutdown");
        out.mark_closed();
        assert_eq!(out.close_reason(), CloseReason::SlowConsumer);

        let out = Outbound::new(100, ws_like);
        out.close_by_client(CloseCode::GOING_AWAY);
        assert_eq!(out.close_reason(), CloseReason::Client, "the client's 1001");

        let out = Outbound::new(100, ws_like);
        out.close(CloseCode::GOING_AWAY, "shutdown");
        assert_eq!(out.close_reason(), CloseReason::Shutdown);

        let out = Outbound::new(100, ws_like);
        out.mark_closed();
        assert_eq!(out.close_reason(), CloseReason::Client, "EOF while open");
    }

    #[test]
    fn close_queues_behind_pending_frames() {
        let out = Outbound::new(1000, ws_like);
        out.push(Bytes::from_static(b"a"));
        out.close(CloseCode::GOING_AWAY, "shutdown");
        out.close(CloseCode::NORMAL, "again");
        let queued = out.take_queued();
        assert_eq!(queued.len(), 2);
        assert_eq!(&queued[1][..], &1001u16.to_be_bytes());
    }
}
