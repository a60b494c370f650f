//! The load generator's connection pool: thousands of WebSocket clients on one `mio`
//! poll, one thread, no task per connection.
//!
//! Each connection walks `Connecting → Handshaking → Opening → Subscribing → Ready`.
//! Reads go into one shared scratch buffer and frames are parsed in place; only the tail
//! of a frame split across reads is kept per connection. Writes are queued per
//! connection and flushed once per poll turn, so K publishes queued back to back leave
//! in one `write` (or, with `write_each`, each publish as it is queued: one `write`
//! and one TCP segment per publish).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::payload::find_stamp;
use crate::verify::{Seen, Verifier};
use crate::ws;

/// Which wire protocol the servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Ringcast (`/_rt/ws?cid=`; first frame `connected`), also spoken by the node-ws
    /// and Bun peers.
    Ringcast,
    /// Engine.IO v4 + Socket.IO packets over the WebSocket transport.
    SocketIo,
    /// The floor server: JSON actions, no `connected` frame.
    Floor,
}

impl Protocol {
    /// Parses the `--protocol` value.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "ringcast" | "node-ws" | "bun" => Some(Protocol::Ringcast),
            "socketio" => Some(Protocol::SocketIo),
            "floor" => Some(Protocol::Floor),
            _ => None,
        }
    }

    fn path(self, base: &str, cid: u64) -> String {
        match self {
            Protocol::Ringcast => format!("{base}?cid=lg{cid}"),
            Protocol::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_string(),
            Protocol::Floor => base.to_string(),
        }
    }

    fn subscribe_text(self, channel: &str) -> Vec<u8> {
        match self {
            Protocol::SocketIo => format!("42[\"subscribe\",\"{channel}\"]").into_bytes(),
            _ => format!("{{\"action\":\"subscribe\",\"channel\":\"{channel}\"}}").into_bytes(),
        }
    }

    fn publish_text(self, channel: &str, data: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Protocol::SocketIo => {
                out.extend_from_slice(b"42[\"publish\",\"");
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(b"\",");
                out.extend_from_slice(data);
                out.push(b']');
            }
            _ => {
                out.extend_from_slice(b"{\"action\":\"publish\",\"channel\":\"");
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(b"\",\"data\":");
                out.extend_from_slice(data);
                out.push(b'}');
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    /// Waiting for the server's greeting (`connected`, or Engine.IO `0{…}` then `40`).
    Opening,
    Subscribing,
    Ready,
}

/// Index of a connection in the pool.
pub type ConnIx = usize;

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    phase: Phase,
    key: String,
    cid: u64,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Payload of a fragmented message being reassembled.
    frag: Vec<u8>,
    channels: Vec<String>,
    acks_left: usize,
    started_ns: u64,
    /// A stopped reader (W6): the socket is not read until resumed.
    paused: bool,
    /// The server's close frame, once parsed: its code, if it carried one.
    close_frame: Option<Option<u16>>,
    /// `error` events the server sent it, for its life.
    errors: u64,
    queued: bool,
    /// What it was delivered, for the checks.
    seen: Seen,
}

/// Counters and histograms of what the pool saw. Latencies are in microseconds.
#[derive(Debug)]
pub struct Stats {
    /// Stamped frames received.
    pub deliveries: u64,
    /// Per delivery: receive time minus intended send time.
    pub latency_us: Histogram<u64>,
    /// Per message: time the LAST expected subscriber got it, minus intended send time.
    pub completion_us: Histogram<u64>,
    /// TCP connect start to `101` parsed.
    pub handshake_us: Histogram<u64>,
    /// TCP connect start to Ready (`connected` and every subscribe answered): what a
    /// client waits for in all, wherever the server queues it.
    pub ready_us: Histogram<u64>,
    /// Connections Ready now.
    pub ready: u64,
    /// Connections that reached Ready since the last reset (never decremented).
    pub opened: u64,
    /// Connect or handshake failures.
    pub connect_errors: u64,
    /// Connections the server closed (EOF, reset, close frame) after Ready.
    pub closed_by_server: u64,
    /// Frames received (all kinds).
    pub frames_in: u64,
    /// `read` calls that returned data.
    pub reads: u64,
    /// Messages whose every expected delivery arrived.
    pub completed: u64,
    /// `error` events the server sent (`{"event":"error",…}`): refused publishes
    /// (`overloaded`, `rate_limited`, `message_too_large`, …) or subscribes. A refused
    /// publish is never delivered, so it also stays in [`Pool::outstanding`]: the pool
    /// cannot tell which publish an error answers (its publishes carry no `ref`, which
    /// would make the server acknowledge every one), only count them (found in review:
    /// they were ignored, so refusals passed for lag or loss).
    pub error_events: u64,
    /// The same, by `data.code` (`?` when it carried none).
    pub error_codes: HashMap<String, u64>,
    /// Per delivery, when [`Pool::trace_latency`] is on: (arrival µs since the load
    /// generator started, latency µs), in arrival order.
    pub latency_trace: Vec<(u64, u64)>,
}

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Stats {
            deliveries: 0,
            latency_us: h(),
            completion_us: h(),
            handshake_us: h(),
            ready_us: h(),
            ready: 0,
            opened: 0,
            connect_errors: 0,
            closed_by_server: 0,
            frames_in: 0,
            reads: 0,
            completed: 0,
            error_events: 0,
            error_codes: HashMap::new(),
            latency_trace: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    remaining: u32,
    intended_ns: u64,
}

/// Messages in flight, indexed by id (ids are handed out densely from 0).
#[derive(Debug, Default)]
struct Tracker {
    pending: Vec<Pending>,
    outstanding: u64,
}

/// The pool of client connections on one poll.
#[derive(Debug)]
pub struct Pool {
    poll: Poll,
    events: Events,
    conns: Vec<Option<Conn>>,
    free: Vec<ConnIx>,
    addr: SocketAddr,
    host: String,
    base_path: String,
    proto: Protocol,
    start: Instant,
    scratch: Vec<u8>,
    text_out: Vec<u8>,
    dirty: Vec<ConnIx>,
    /// Flush each publish as it is queued (one `write` per publish) instead of once
    /// per turn.
    pub write_each: bool,
    /// Keep every delivery's arrival time and latency in [`Stats::latency_trace`].
    pub trace_latency: bool,
    rng: u64,
    next_cid: u64,
    /// Connections in Connecting..Subscribing.
    pub in_progress: usize,
    /// What the pool saw since the last reset.
    pub stats: Stats,
    tracker: Tracker,
    /// Every delivery checked against what was published.
    pub verifier: Verifier,
    /// How the server ended each slot's last connection, and what it had received,
    /// kept after the slot is freed until it is reused (W6 tells Ringcast's 4008 from
    /// other closes; found in review).
    ended: HashMap<ConnIx, Gone>,
}

/// How the server ended a connection, as the pool saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A close frame, with its code (`None`: an empty body, which carries none).
    CloseFrame(Option<u16>),
    /// EOF before any close frame.
    Eof,
    /// A read or write failed: a reset, mostly.
    Error,
    /// A frame or a handshake answer that did not parse.
    Malformed,
}

/// A connection the server ended.
#[derive(Debug)]
struct Gone {
    how: Ended,
    seen: Seen,
    errors: u64,
}

impl Pool {
    /// A pool for the server at `url` (`ws://127.0.0.1:PORT/path`).
    pub fn new(url: &str, proto: Protocol, start: Instant) -> anyhow::Result<Pool> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("--url must start with ws://"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host.parse()?;
        anyhow::ensure!(addr.ip().is_loopback(), "loopback targets only, got {addr}");
        Ok(Pool {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Vec::new(),
            free: Vec::new(),
            addr,
            host: host.to_string(),
            base_path: path.to_string(),
            proto,
            start,
            scratch: vec![0; 256 * 1024],
            text_out: Vec::new(),
            dirty: Vec::new(),
            write_each: false,
            trace_latency: false,
            rng: 0x9e37_79b9_7f4a_7c15,
            next_cid: 0,
            in_progress: 0,
            stats: Stats::new(),
            tracker: Tracker::default(),
            verifier: Verifier::default(),
            ended: HashMap::new(),
        })
    }

    /// Nanoseconds since the load generator started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Forgets counters and histograms (after a warm-up). Messages in flight stay tracked.
    pub fn reset_stats(&mut self) {
        let ready = self.stats.ready;
        self.stats = Stats::new();
        self.stats.ready = ready;
    }

    /// Messages published and not yet delivered to every expected subscriber.
    pub fn outstanding(&self) -> u64 {
        self.tracker.outstanding
    }

    /// Starts one connection that will subscribe to `channels` once open.
    pub fn connect(&mut self, channels: Vec<String>) -> io::Result<ConnIx> {
        let mut stream = TcpStream::connect(self.addr)?;
        let ix = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.poll.registry().register(
            &mut stream,
            Token(ix),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.ended.remove(&ix);
        let cid = self.next_cid;
        self.next_cid += 1;
        let seen = self.verifier.seen_for(&channels);
        self.conns[ix] = Some(Conn {
            stream,
            phase: Phase::Connecting,
            key: ws::key_for(cid),
            cid,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            frag: Vec::new(),
            acks_left: channels.len(),
            channels,
            started_ns: self.now_ns(),
            paused: false,
            close_frame: None,
            errors: 0,
            queued: false,
            seen,
        });
        self.in_progress += 1;
        Ok(ix)
    }

    /// Closes a connection from the client side (churn).
    pub fn close(&mut self, ix: ConnIx) {
        self.take(ix);
    }

    /// Drops `ix`'s connection and frees its slot; returns what it was.
    fn take(&mut self, ix: ConnIx) -> Option<Conn> {
        let mut c = self.conns[ix].take()?;
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.phase == Phase::Ready {
            self.stats.ready = self.stats.ready.saturating_sub(1);
        } else {
            self.in_progress -= 1;
        }
        self.free.push(ix);
        Some(c)
    }

    /// Whether `ix` is open and subscribed.
    pub fn is_ready(&self, ix: ConnIx) -> bool {
        matches!(&self.conns[ix], Some(c) if c.phase == Phase::Ready)
    }

    /// Stops reading `ix` (a stalled reader).
    pub fn pause(&mut self, ix: ConnIx) {
        if let Some(c) = self.conns[ix].as_mut() {
            c.paused = true;
        }
    }

    /// Reads `ix` again, from what its kernel buffer holds: a close the server sent
    /// while it was paused is then seen (counted in [`Stats::closed_by_server`]).
    pub fn resume(&mut self, ix: ConnIx) {
        if let Some(c) = self.conns[ix].as_mut() {
            c.paused = false;
            // Edge-triggered: what arrived while paused raised no new event, a FIN
            // among it included, so read to EAGAIN or EOF.
            self.on_readable(ix, true);
        }
    }

    /// Sends a WebSocket ping on `ix`: a server that closed the connection answers with
    /// a reset, so the close is seen even when its FIN never came (an orphaned socket
    /// the kernel gave up on while its peer did not read).
    pub fn probe(&mut self, ix: ConnIx) {
        let mask = self.next_mask();
        if let Some(c) = self.conns[ix].as_mut() {
            ws::encode_client_frame(ws::OP_PING, b"probe", mask, &mut c.wbuf);
        }
        self.mark_dirty(ix);
    }

    /// Whether `ix` is still open (not closed by either side).
    pub fn is_open(&self, ix: ConnIx) -> bool {
        self.conns[ix].is_some()
    }

    /// How the server ended `ix`'s connection; `None` while it is open, or when the
    /// client closed it.
    pub fn ended(&self, ix: ConnIx) -> Option<Ended> {
        self.ended.get(&ix).map(|g| g.how)
    }

    /// The close code the server sent `ix`'s connection, once it is closed; `None`
    /// while open, or when it went by EOF or reset, or with a close frame with no code.
    pub fn close_code(&self, ix: ConnIx) -> Option<u16> {
        match self.ended(ix)? {
            Ended::CloseFrame(code) => code,
            _ => None,
        }
    }

    /// `error` events the server sent `ix`'s connection, for its life (kept past a close
    /// by the server, as [`Pool::received`] is); 0 if the client closed it.
    pub fn error_events(&self, ix: ConnIx) -> u64 {
        match &self.conns[ix] {
            Some(c) => c.errors,
            None => self.ended.get(&ix).map_or(0, |g| g.errors),
        }
    }

    /// Messages on `channel` that `ix`'s connection received and that passed the
    /// checks, up to now or to the server's close; `None` if it does not subscribe to
    /// `channel`, or the client closed it.
    pub fn received(&self, ix: ConnIx, channel: &str) -> Option<u64> {
        let seen = match &self.conns[ix] {
            Some(c) => &c.seen,
            None => &self.ended.get(&ix)?.seen,
        };
        self.verifier.received(seen, channel)
    }

    /// Opens `specs.len()` connections, at most `max_inflight` handshakes at a time, and
    /// waits until each is Ready or failed. Returns the indices of those that started,
    /// the seconds it took and how many failed.
    pub fn connect_all(
        &mut self,
        specs: Vec<Vec<String>>,
        max_inflight: usize,
        timeout: Duration,
    ) -> anyhow::Result<(Vec<ConnIx>, f64, u64)> {
        let t0 = Instant::now();
        let total = specs.len() as u64;
        let mut ixs = Vec::with_capacity(specs.len());
        let mut specs = specs.into_iter();
        let ready0 = self.stats.ready;
        let errors0 = self.stats.connect_errors;
        let mut sync_errors = 0u64;
        loop {
            while self.in_progress < max_inflight {
                let Some(spec) = specs.next() else { break };
                match self.connect(spec) {
                    Ok(ix) => ixs.push(ix),
                    Err(_) => sync_errors += 1,
                }
            }
            self.turn(Some(Duration::from_millis(5)))?;
            let errors = self.stats.connect_errors - errors0 + sync_errors;
            let done = self.stats.ready.saturating_sub(ready0);
            if done + errors >= total && self.in_progress == 0 {
                return Ok((ixs, t0.elapsed().as_secs_f64(), errors));
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "only {done}/{total} connections ready after {timeout:?} ({errors} errors)"
                );
            }
        }
    }

    /// Queues one publish of `data` to `channel` on connection `ix`, expecting
    /// `expected` deliveries of message `id` (ids are dense from 0, in order).
    pub fn publish(
        &mut self,
        ix: ConnIx,
        channel: &str,
        data: &[u8],
        id: u64,
        intended_ns: u64,
        expected: u32,
    ) {
        if let Some(c) = self.conns[ix].as_ref() {
            self.verifier.published(id, channel, c.cid);
        }
        let mut text = std::mem::take(&mut self.text_out);
        self.proto.publish_text(channel, data, &mut text);
        let mask = self.next_mask();
        if let Some(c) = self.conns[ix].as_mut() {
            ws::encode_client_frame(ws::OP_TEXT, &text, mask, &mut c.wbuf);
            if !c.queued {
                c.queued = true;
                self.dirty.push(ix);
            }
        }
        self.text_out = text;
        if self.write_each {
            self.flush_dirty();
        }
        let id = id as usize;
        if self.tracker.pending.len() <= id {
            self.tracker.pending.resize(
                id + 1,
                Pending {
                    remaining: 0,
                    intended_ns: 0,
                },
            );
        }
        self.tracker.pending[id] = Pending {
            remaining: expected,
            intended_ns,
        };
        if expected > 0 {
            self.tracker.outstanding += 1;
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64: masks only need to vary, not to be secret, against our own servers.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    /// One poll turn: wait up to `timeout`, handle every event, then flush every
    /// connection with queued bytes once.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.flush_dirty();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let tokens: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed(),
                    e.is_read_closed(),
                    e.is_writable() || e.is_error(),
                )
            })
            .collect();
        for (ix, readable, read_closed, writable) in tokens {
            if writable {
                self.on_writable(ix);
            }
            if readable {
                self.on_readable(ix, read_closed);
            }
        }
        self.flush_dirty();
        Ok(())
    }

    /// The connection ended, `how`: counted, dropped, and remembered.
    fn fail(&mut self, ix: ConnIx, how: Ended) {
        let Some(c) = self.take(ix) else {
            return;
        };
        if c.phase == Phase::Ready {
            self.stats.closed_by_server += 1;
        } else {
            self.stats.connect_errors += 1;
        }
        self.ended.insert(
            ix,
            Gone {
                how,
                seen: c.seen,
                errors: c.errors,
            },
        );
    }

    fn on_writable(&mut self, ix: ConnIx) {
        let Some(c) = self.conns[ix].as_mut() else {
            return;
        };
        if c.phase == Phase::Connecting {
            if let Ok(Some(_)) | Err(_) = c.stream.take_error() {
                self.fail(ix, Ended::Error);
                return;
            }
            match c.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.fail(ix, Ended::Error);
                    return;
                }
            }
            let _ = c.stream.set_nodelay(true);
            let path = self.proto.path(&self.base_path, c.cid);
            c.wbuf
                .extend_from_slice(&ws::handshake_request(&self.host, &path, &c.key));
            c.phase = Phase::Handshaking;
        }
        if !c.wbuf.is_empty() && !c.queued {
            c.queued = true;
            self.dirty.push(ix);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &ix in &dirty {
            let Some(c) = self.conns[ix].as_mut() else {
                continue;
            };
            c.queued = false;
            let mut off = 0;
            let mut broken = false;
            while off < c.wbuf.len() {
                match c.stream.write(&c.wbuf[off..]) {
                    Ok(0) => {
                        broken = true;
                        break;
                    }
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            c.wbuf.drain(..off);
            if broken {
                self.fail(ix, Ended::Error);
            }
            // A partial write waits for the next writable event, which re-queues it.
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Reads `ix` until a short read (the socket is drained: edge-triggered poll tells
    /// when more arrives), or with `to_eof` until EAGAIN or EOF: a FIN that came with
    /// the last data raises no later event, so a short read would leave the close
    /// unseen (found in review: a server's 101 and EOF read at once).
    fn on_readable(&mut self, ix: ConnIx, to_eof: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(c) = self.conns[ix].as_mut() {
            if c.paused || c.phase == Phase::Connecting {
                break;
            }
            match c.stream.read(&mut scratch) {
                Ok(0) => {
                    self.fail(ix, Ended::Eof);
                    break;
                }
                Ok(n) => {
                    self.stats.reads += 1;
                    if !self.ingest(ix, &scratch[..n]) {
                        let how = match self.conns[ix].as_ref().and_then(|c| c.close_frame) {
                            Some(code) => Ended::CloseFrame(code),
                            None => Ended::Malformed,
                        };
                        self.fail(ix, how);
                        break;
                    }
                    if n < scratch.len() && !to_eof {
                        // Short read: the socket is drained; edge-triggered poll tells
                        // us when more arrives, and we skip the EAGAIN syscall.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.fail(ix, Ended::Error);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Feeds bytes read from `ix`. Returns false if the connection must be dropped.
    fn ingest(&mut self, ix: ConnIx, data: &[u8]) -> bool {
        let c = self.conns[ix].as_mut().expect("readable conn exists");
        if c.rbuf.is_empty() {
            let used = match self.parse(ix, data) {
                Some(u) => u,
                None => return false,
            };
            let c = self.conns[ix].as_mut().expect("still open");
            c.rbuf.extend_from_slice(&data[used..]);
        } else {
            c.rbuf.extend_from_slice(data);
            let buf = std::mem::take(&mut c.rbuf);
            let used = match self.parse(ix, &buf) {
                Some(u) => u,
                None => return false,
            };
            let c = self.conns[ix].as_mut().expect("still open");
            c.rbuf = buf;
            c.rbuf.drain(..used);
        }
        true
    }

    /// Parses as much of `buf` as is complete. `None`: protocol error.
    fn parse(&mut self, ix: ConnIx, buf: &[u8]) -> Option<usize> {
        let mut used = 0;
        let phase = self.conns[ix].as_ref()?.phase;
        if phase == Phase::Handshaking {
            let c = self.conns[ix].as_mut()?;
            match ws::parse_handshake_response(buf, &c.key) {
                Ok(None) => return Some(0),
                Ok(Some(n)) => {
                    used = n;
                    let took = self.start.elapsed().as_nanos() as u64 - c.started_ns;
                    self.stats
                        .handshake_us
                        .saturating_record((took / 1000).max(1));
                    c.phase = Phase::Opening;
                    if self.proto == Protocol::Floor {
                        self.send_subscribes(ix);
                    }
                }
                Err(_) => return None,
            }
        }
        loop {
            let head = match ws::parse_frame(&buf[used..]) {
                Ok(Some(h)) => h,
                Ok(None) => return Some(used),
                Err(_) => return None,
            };
            let body = &buf[used + head.header_len..used + head.total_len()];
            used += head.total_len();
            self.stats.frames_in += 1;
            match head.opcode {
                ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => {
                    let c = self.conns[ix].as_mut()?;
                    if head.fin && c.frag.is_empty() {
                        self.on_message(ix, body);
                    } else {
                        c.frag.extend_from_slice(body);
                        if head.fin {
                            let msg = std::mem::take(&mut c.frag);
                            self.on_message(ix, &msg);
                        }
                    }
                }
                ws::OP_PING => {
                    let mask = self.next_mask();
                    let c = self.conns[ix].as_mut()?;
                    ws::encode_client_frame(ws::OP_PONG, body, mask, &mut c.wbuf);
                    self.mark_dirty(ix);
                }
                ws::OP_CLOSE => {
                    self.conns[ix].as_mut()?.close_frame = Some(close_code(body));
                    return None;
                }
                _ => {}
            }
            self.conns[ix].as_ref()?;
        }
    }

    fn mark_dirty(&mut self, ix: ConnIx) {
        if let Some(c) = self.conns[ix].as_mut() {
            if !c.queued {
                c.queued = true;
                self.dirty.push(ix);
            }
        }
    }

    fn send_text(&mut self, ix: ConnIx, text: &[u8]) {
        let mask = self.next_mask();
        if let Some(c) = self.conns[ix].as_mut() {
            ws::encode_client_frame(ws::OP_TEXT, text, mask, &mut c.wbuf);
        }
        self.mark_dirty(ix);
    }

    fn send_subscribes(&mut self, ix: ConnIx) {
        let channels = match self.conns[ix].as_mut() {
            Some(c) => {
                c.phase = Phase::Subscribing;
                std::mem::take(&mut c.channels)
            }
            None => return,
        };
        for ch in &channels {
            let t = self.proto.subscribe_text(ch);
            self.send_text(ix, &t);
        }
        if channels.is_empty() {
            self.become_ready(ix);
        }
    }

    fn become_ready(&mut self, ix: ConnIx) {
        if let Some(c) = self.conns[ix].as_mut() {
            if c.phase != Phase::Ready {
                c.phase = Phase::Ready;
                let took = self.start.elapsed().as_nanos() as u64 - c.started_ns;
                self.stats.ready_us.saturating_record((took / 1000).max(1));
                self.in_progress -= 1;
                self.stats.ready += 1;
                self.stats.opened += 1;
            }
        }
    }

    fn on_message(&mut self, ix: ConnIx, msg: &[u8]) {
        if let Some(stamp) = find_stamp(msg) {
            if let Some(c) = self.conns[ix].as_mut() {
                self.verifier.delivered(&mut c.seen, stamp.id);
            }
            let now = self.now_ns();
            self.stats.deliveries += 1;
            let lat = now.saturating_sub(stamp.lg_ns) / 1000;
            self.stats.latency_us.saturating_record(lat.max(1));
            if self.trace_latency {
                self.stats.latency_trace.push((now / 1000, lat));
            }
            if let Some(p) = self.tracker.pending.get_mut(stamp.id as usize) {
                if p.remaining > 0 {
                    p.remaining -= 1;
                    if p.remaining == 0 {
                        let took = now.saturating_sub(p.intended_ns) / 1000;
                        self.stats.completion_us.saturating_record(took.max(1));
                        self.stats.completed += 1;
                        self.tracker.outstanding -= 1;
                    }
                }
            }
            return;
        }
        let phase = match self.conns[ix].as_ref() {
            Some(c) => c.phase,
            None => return,
        };
        // Before the acks below: `not_subscribed` holds "subscribed".
        if contains(msg, b"\"event\":\"error\"") {
            self.stats.error_events += 1;
            let code = error_code(msg).unwrap_or("?");
            *self.stats.error_codes.entry(code.to_owned()).or_default() += 1;
            if let Some(c) = self.conns[ix].as_mut() {
                c.errors += 1;
            }
            return;
        }
        match (self.proto, phase) {
            (Protocol::SocketIo, _) if msg == b"2" => self.send_text(ix, b"3"),
            (Protocol::SocketIo, Phase::Opening) if msg.starts_with(b"0{") => {
                self.send_text(ix, b"40")
            }
            (Protocol::SocketIo, Phase::Opening) if msg.starts_with(b"40") => {
                self.send_subscribes(ix)
            }
            (Protocol::Ringcast, Phase::Opening) if contains(msg, b"\"connected\"") => {
                self.send_subscribes(ix)
            }
            (_, Phase::Subscribing) if contains(msg, b"subscribed") => {
                let done = match self.conns[ix].as_mut() {
                    Some(c) => {
                        c.acks_left = c.acks_left.saturating_sub(1);
                        c.acks_left == 0
                    }
                    None => false,
                };
                if done {
                    self.become_ready(ix);
                }
            }
            _ => {}
        }
    }

    /// Sends a protocol-level ping to `ix` (keeps idle connections honest in W5).
    pub fn ping(&mut self, ix: ConnIx) {
        match self.proto {
            Protocol::SocketIo => {}
            _ => self.send_text(ix, b"{\"action\":\"ping\"}"),
        }
    }

    /// Number of connection slots (open or free).
    pub fn slots(&self) -> usize {
        self.conns.len()
    }
}

/// The status code of a close frame's body (RFC 6455 §5.5.1: its first 2 bytes, big
/// endian); `None` for an empty body, which carries none.
fn close_code(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// The `"code"` of an `error` event (`{"event":"error","data":{"code":"overloaded",…}}`),
/// found by a byte search as the stamps are.
fn error_code(msg: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"code\":\"";
    let at = msg.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = msg[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&msg[at..at + len]).ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_envelopes_carry_data_verbatim() {
        let mut out = Vec::new();
        Protocol::Ringcast.publish_text("bench", b"{\"lg\":1,\"i\":2}", &mut out);
        assert_eq!(
            out,
            b"{\"action\":\"publish\",\"channel\":\"bench\",\"data\":{\"lg\":1,\"i\":2}}".to_vec()
        );
        Protocol::SocketIo.publish_text("bench", b"{\"lg\":1}", &mut out);
        assert_eq!(out, b"42[\"publish\",\"bench\",{\"lg\":1}]".to_vec());
        assert_eq!(
            Protocol::SocketIo.subscribe_text("c"),
            b"42[\"subscribe\",\"c\"]".to_vec()
        );
        assert_eq!(Protocol::parse("bun"), Some(Protocol::Ringcast));
        assert_eq!(Protocol::parse("nope"), None);
    }

    #[test]
    fn close_code_is_the_first_two_bytes_big_endian() {
        assert_eq!(
            close_code(&[0x0f, 0xa8, b's', b'l', b'o', b'w']),
            Some(4008)
        );
        assert_eq!(close_code(&1000u16.to_be_bytes()), Some(1000));
        assert_eq!(close_code(&[]), None, "an empty close carries no code");
        assert_eq!(close_code(&[0x0f]), None);
    }

    /// A server on loopback that answers each of `closes.len()` handshakes, sends
    /// `message` as a text frame, then ends the connection: with a close frame of that
    /// body, or (`None`) by EOF.
    fn closing_server(
        message: Vec<u8>,
        closes: Vec<Option<Vec<u8>>>,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            for close in closes {
                let mut s = ws::accept_handshake(&listener);
                let mut out = Vec::new();
                ws::encode_server_frame(ws::OP_TEXT, &message, &mut out);
                if let Some(body) = close {
                    ws::encode_server_frame(ws::OP_CLOSE, &body, &mut out);
                }
                s.write_all(&out).expect("write");
                // Dropped here: EOF after the close frame, if any.
            }
        });
        (addr, t)
    }

    #[test]
    fn a_close_frames_code_is_kept_per_connection_and_an_eof_has_none() {
        let mut body = 4008u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"slow consumer");
        let mut message = Vec::new();
        crate::payload::write_data(&mut message, 1, 0, 64);
        let (addr, server) = closing_server(message, vec![Some(body), None, Some(Vec::new())]);
        let url = format!("ws://{addr}/_rt/ws");
        let mut pool = Pool::new(&url, Protocol::Ringcast, Instant::now()).expect("pool");
        // Message 0 went to "a": each connection gets it before its close.
        pool.verifier.published(0, "a", u64::MAX);
        // One at a time, so each meets its own answer, in the same slot (reused): the
        // code is read as each ends, and a reuse forgets the last one's.
        let mut codes = Vec::new();
        for _ in 0..3 {
            let ix = pool.connect(vec!["a".into()]).expect("connect");
            assert_eq!(ix, 0);
            // Bounded: 1,000 turns of at most 10 ms.
            for _ in 0..1000 {
                if !pool.is_open(ix) {
                    break;
                }
                pool.turn(Some(Duration::from_millis(10))).expect("turn");
            }
            assert!(!pool.is_open(ix), "the server closed it: {codes:?}");
            codes.push((pool.close_code(ix), pool.ended(ix)));
            assert_eq!(pool.received(ix, "a"), Some(1), "kept past the close");
        }
        server.join().expect("server");
        assert_eq!(
            codes,
            vec![
                (Some(4008), Some(Ended::CloseFrame(Some(4008)))),
                (None, Some(Ended::Eof)),
                (None, Some(Ended::CloseFrame(None))),
            ]
        );
    }

    #[test]
    fn error_events_are_counted_per_phase_and_connection_with_their_codes() {
        // Found in review: the pool ignored `error` events, so a publish the server
        // refused (`overloaded`, `rate_limited`) showed only as others' lag or as loss.
        let message =
            br#"{"event":"error","channel":"w6hot","data":{"code":"overloaded","message":"x"},"ts":1}"#
                .to_vec();
        let (addr, server) = closing_server(message, vec![Some(1000u16.to_be_bytes().to_vec())]);
        let url = format!("ws://{addr}/_rt/ws");
        let mut pool = Pool::new(&url, Protocol::Ringcast, Instant::now()).expect("pool");
        let ix = pool.connect(Vec::new()).expect("connect");
        // Bounded: 1,000 turns of at most 10 ms.
        for _ in 0..1000 {
            if !pool.is_open(ix) {
                break;
            }
            pool.turn(Some(Duration::from_millis(10))).expect("turn");
        }
        server.join().expect("server");
        assert!(!pool.is_open(ix));
        assert_eq!(pool.stats.error_events, 1);
        assert_eq!(pool.stats.error_codes.get("overloaded"), Some(&1));
        assert_eq!(pool.error_events(ix), 1, "kept past the close");
        pool.reset_stats();
        assert_eq!(pool.stats.error_events, 0, "per phase");
        assert_eq!(pool.error_events(ix), 1, "per connection, for its life");
        assert_eq!(
            error_code(br#"{"event":"error","data":{"code":"rate_limited"}}"#),
            Some("rate_limited")
        );
        assert_eq!(error_code(br#"{"event":"error"}"#), None);
    }

    #[test]
    fn publishers_are_told_apart_by_cid_when_a_slot_is_reused() {
        // Accepts and never answers: the pool only queues, which is all this needs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("ws://{}/_rt/ws", listener.local_addr().expect("addr"));
        let mut pool = Pool::new(&url, Protocol::Ringcast, Instant::now()).expect("pool");
        let old = pool.connect(Vec::new()).expect("connect");
        for id in 0..3 {
            pool.publish(old, "a", b"{}", id, 0, 0);
        }
        pool.close(old);
        let new = pool.connect(Vec::new()).expect("connect");
        assert_eq!(new, old, "the slot is reused");
        pool.publish(new, "a", b"{}", 3, 0, 0);
        // The new publisher's message overtakes the old one's last: two publishers, so
        // allowed (keyed by slot, this was a reordering).
        let mut seen = pool.verifier.seen_for(&["a".to_owned()]);
        for id in [0, 3, 1, 2] {
            pool.verifier.delivered(&mut seen, id);
        }
        assert_eq!(
            pool.verifier.counts.errors(),
            0,
            "{:?}",
            pool.verifier.counts
        );
        assert_eq!(pool.verifier.received(&seen, "a"), Some(4));
        drop(listener);
    }

    #[test]
    fn pool_rejects_non_loopback_targets() {
        assert!(Pool::new("ws://10.0.0.1:80/", Protocol::Floor, Instant::now()).is_err());
        assert!(Pool::new("http://127.0.0.1:80/", Protocol::Floor, Instant::now()).is_err());
        assert!(Pool::new(
            "ws://127.0.0.1:9/_rt/ws",
            Protocol::Ringcast,
            Instant::now()
        )
        .is_ok());
    }
}
