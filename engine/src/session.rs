//! The WebSocket session task: reads frames, hands text messages to the shard, answers
//! control frames, and closes with the right code on protocol violations.
//!
//! Idle connections are the common case, so the task is kept small: rare paths (holding
//! back a publisher while the mesh is under pressure, pacing resumes (`Conn::may_read`),
//! lingering after a close) are boxed, and the read buffer starts at
//! 256 bytes, doubles while a message does not fit or a read fills it (so a publisher's
//! burst is handled whole), and shrinks back once drained if it grew past 16 KB.
//!
//! A publisher that writes each message of a burst on its own is usually still writing
//! when the first one is read. When the batch's delivery run would reach many local
//! subscribers, the session tops the batch up with what has arrived since (a
//! non-blocking `recv`, `TOP_UPS` times at most), so the burst goes to each subscriber
//! in one send instead of its first message alone and the rest in a second pass.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::ws::{pong_frame, Decoded, Message, WsDecoder};
use ringcast_protocol::CloseCode;

use crate::admission::ConnectionSlot;
use crate::conn::Conn;
use crate::metrics::Transport;
use crate::outbound::{ConnState, WriteMeter};
use crate::per_ip::IpSlot;
use crate::send_ring::start_sending;
use crate::shard::Shard;
use crate::tenant::Tenant;
use crate::token::Grant;

/// Initial read buffer: enough for ordinary client frames (subscribe, ping, small
/// publishes). It doubles while a message does not fit or a read fills it.
const READ_BUF: usize = 256;
/// A drained buffer larger than this is given back.
const KEEP_READ_BUF: usize = 16 * 1024;
/// A batch whose waiting run would reach at least this many local subscribers first
/// takes what else the client has sent meanwhile (see `run_session`).
const TOP_UP_REACH: usize = 64;
/// At most this many such top-ups per read.
const TOP_UPS: usize = 4;
/// How long a closing connection waits for the client's side to finish.
const LINGER: Duration = Duration::from_secs(2);

/// Who an upgraded connection is, from its handshake.
#[derive(Debug)]
pub struct SessionSetup {
    /// Its tenant (`?tenant=`).
    pub tenant: Arc<Tenant>,
    /// Its client id (`?cid=`, or generated).
    pub client_id: String,
    /// `?presence_events=`, overriding the tenant's spelling.
    pub presence_events: Option<PresenceSpelling>,
    /// What its connection token (`?token=`) verified.
    pub grant: Option<Grant>,
    /// The `101 Switching Protocols` response, not written yet: it leaves with
    /// `connected` in the connection's first `writev`.
    pub response: Vec<u8>,
}

/// Starts serving one upgraded connection: registers it, attaches it to the shard's send
/// ring (or spawns its writer task where there is none), spawns its session task, and
/// queues `connected`. `slot` (its `max_connections` slot and its place among its client
/// address's connections) is released when the session ends.
///
/// The set-up runs here, outside the session task, so the task keeps only what it needs
/// while the connection lives (an async fn's arguments stay in its task to the end).
pub fn start_session(
    shard: Rc<Shard>,
    stream: TcpStream,
    leftover: Vec<u8>,
    setup: SessionSetup,
    slot: (ConnectionSlot, IpSlot),
) {
    let SessionSetup {
        tenant,
        client_id,
        presence_events,
        grant,
        response,
    } = setup;
    let preface = Some(bytes::Bytes::from(response));
    let conn = shard.register_conn(tenant, &client_id, presence_events, grant, preface);
    let (reader, writer) = stream.into_split();
    let meter = WriteMeter {
        counters: shard.shared.metrics.shard_handle(shard.id),
        transport: Transport::Ws,
    };
    start_sending(shard.send_ring.as_ref(), &conn, &reader, writer, meter);
    // The HTTP phase's buffer is sized for request heads; start small unless it holds
    // frames the client sent right behind its handshake.
    let buf = if leftover.is_empty() {
        Vec::with_capacity(READ_BUF)
    } else {
        leftover
    };
    monoio::spawn(run_session(shard, conn, reader, buf, slot));
}

/// Reads and handles the connection's frames until it closes.
///
/// A plain function returning an `async move` block, not an `async fn`: an async fn's
/// arguments are moved into locals of its body and so kept twice in the task (96 bytes
/// here, for every idle connection); a block's captures are kept once.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn run_session(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut reader: OwnedReadHalf<TcpStream>,
    mut buf: Vec<u8>,
    slot: (ConnectionSlot, IpSlot),
) -> impl Future<Output = ()> {
    async move {
        let max_message = shard.shared.config.load().max_message_bytes;
        let mut decoder = WsDecoder::new(max_message);
        'serve: loop {
            let mut offset = 0;
            let mut top_ups = 0;
            // The messages of one read are one batch: a burst of publishes to a channel
            // reaches its subscribers as one run (`run.rs`).
            shard.begin_batch();
            loop {
                match decoder.decode(&mut buf[offset..]) {
                    Ok(Some(Decoded { consumed, message })) => {
                        if matches!(message, Message::Text(_)) && shard.mesh.under_pressure() {
                            // Backpressure: an inbox somewhere is full; stop reading until the
                            // spills drain, so memory between shards stays bounded.
                            shard.end_batch();
                            Box::pin(shard.until_no_pressure()).await;
                            if conn.state() != ConnState::Open {
                                // Closed while held back (shutdown, tenant removed): the
                                // frame is not acted on, as after any close (found in
                                // review: a publish went out, its ack was dropped).
                                break 'serve;
                            }
                            shard.begin_batch();
                        }
                        if matches!(message, Message::Text(_)) && !conn.may_read() {
                            // Resumes in flight, or a replay filled the queue: replay is
                            // bounded per connection, so the next frame waits.
                            shard.end_batch();
                            Box::pin(until_may_read(&shard, &conn)).await;
                            if conn.state() != ConnState::Open {
                                break 'serve;
                            }
                            shard.begin_batch();
                        }
                        handle_message(&shard, &conn, &message, &buf[offset..]);
                        offset += consumed;
                        if conn.state() != ConnState::Open {
                            shard.end_batch();
                            break 'serve;
                        }
                    }
                    // A publisher that writes each message of a burst on its own is
                    // usually still writing when its first message is read. When the run
                    // waiting goes to many subscribers, take what has arrived since
                    // (one non-blocking `recv`) so it joins the run: each subscriber then
                    // gets the burst in one send, not its first message alone and the
                    // rest in a second pass.
                    Ok(None) if top_ups < TOP_UPS && shard.run_reach() >= TOP_UP_REACH => {
                        top_ups += 1;
                        buf.drain(..offset);
                        offset = 0;
                        let stream = crate::nowait::stream_of(&reader);
                        match crate::nowait::read_now(stream, &mut buf, READ_BUF) {
                            Ok(n) if n > 0 => {}
                            // End of stream or an error: the next read reports it.
                            _ => break,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        shard.end_batch();
                        conn.close(e.close_code(), &e.to_string());
                        break 'serve;
                    }
                }
            }
            shard.end_batch();
            buf.drain(..offset);
            if buf.is_empty() && buf.capacity() > KEEP_READ_BUF {
                buf = Vec::new();
            }
            if buf.capacity() - buf.len() < READ_BUF / 4 {
                buf.reserve(buf.len().max(READ_BUF));
            }
            let (len, room) = (buf.len(), buf.capacity() - buf.len());
            let read = reader.read(buf.slice_mut(len..));
            let outcome = monoio::select! {
                (result, slice) = read => Some((result, slice.into_inner())),
                _ = conn.outbound().until_not_open() => None,
            };
            let Some((result, returned)) = outcome else {
                break;
            };
            buf = returned;
            if matches!(result, Ok(n) if n > 0) {
                // Bytes of a frame not yet whole (a large message arriving slowly) show
                // the peer is there too.
                conn.heard.set(true);
            }
            match result {
                Ok(0) | Err(_) => {
                    conn.mark_closed();
                    break;
                }
                // A read that filled the buffer means the client sends in bursts: read the
                // next burst whole, so its messages are handled (and their deliveries
                // coalesced) together rather than a few at a time.
                Ok(n) if n == room && buf.capacity() < KEEP_READ_BUF => buf.reserve(buf.capacity()),
                Ok(_) => {}
            }
        }
        if matches!(conn.state(), ConnState::Closing(_)) {
            Box::pin(linger(&mut reader)).await;
        }
        conn.mark_closed();
        shard.unregister_conn(&conn, Some(slot.1.addr()));
        drop(slot);
    }
}

fn handle_message(shard: &Shard, conn: &Rc<Conn>, message: &Message, buf: &[u8]) {
    // Anything at all shows the peer is there (the idle sweep's pings ask for a pong).
    conn.heard.set(true);
    match message {
        Message::Text(payload) => shard.on_text(conn, payload.bytes(buf)),
        Message::Binary(_) => shard.on_binary(conn),
        Message::Ping(payload) => shard.on_ws_ping(conn, pong_frame(payload.bytes(buf))),
        Message::Pong => shard.on_ws_pong(conn),
        Message::Fragment => {}
        Message::Close(_) => {
            // The answer to a client's close is 1000 whatever its code (the server
            // sends only the codes it documents; found in review: it echoed the
            // client's, reserved ones included).
            let answer = CloseCode::NORMAL;
            // What the batch has for this connection goes first.
            shard.end_batch();
            conn.outbound().close_by_client(answer);
        }
    }
}

/// Waits until `conn` may act on another text frame, or closes meanwhile (a rare path:
/// boxed by the caller, so it takes no room in the idle session's task).
async fn until_may_read(shard: &Shard, conn: &Conn) {
    monoio::select! {
        _ = shard.until_may_read(conn) => {},
        _ = conn.outbound().until_not_open() => {},
    }
}

/// After our close frame, read (and discard) until the client closes or time runs out,
/// so the close frame is not lost to a reset.
async fn linger(reader: &mut OwnedReadHalf<TcpStream>) {
    let deadline = monoio::time::Instant::now() + LINGER;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let read = monoio::time::timeout_at(deadline, reader.read(buf)).await;
        match read {
            Ok((Ok(n), returned)) if n > 0 => {
                buf = returned;
                buf.clear();
            }
            _ => return,
        }
    }
}
