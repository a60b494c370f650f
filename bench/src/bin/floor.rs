//! The floor: the least work a WebSocket fan-out server can do on this box.
//!
//! One thread, one `mio` poll. A client text frame containing `"action":"subscribe"`
//! makes the connection a subscriber of the frame's `"channel":"…"` (answered with a
//! fixed `{"event":"subscribed"}`); a frame containing `"action":"publish"` is framed
//! ONCE as a server frame whose body is the client's unmasked text (no JSON parsing), and
//! those bytes are appended to the queue of every subscriber of its channel. The channel
//! is found by a byte search, not a parse: the routing any pub/sub server must do, and
//! nothing more. After each poll turn every connection with queued bytes is flushed with
//! one `write` of everything queued — the coalescing uWS gets by corking. No history, no
//! limits: Ringcast is measured as a fraction of this.
//!
//! `floor --listen 127.0.0.1:0` prints `floor listening on 127.0.0.1:PORT` on stdout.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use ringcast_bench::ws;

#[derive(Parser, Debug)]
#[command(about = "Minimal WebSocket broadcast server: the physical floor of this box")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);
const SUBSCRIBED: &[u8] = b"{\"event\":\"subscribed\"}";
const PONG: &[u8] = b"{\"event\":\"pong\"}";

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    open: bool,
    /// The channels it subscribed to (to leave them when it goes).
    channels: Vec<Vec<u8>>,
    queued: bool,
    /// Registered for WRITABLE: only while a write was partial, so the ACK of every frame
    /// does not wake the loop.
    want_write: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

#[derive(Debug, Default)]
struct Floor {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Channel name → its subscribers.
    subscribers: HashMap<Vec<u8>, Vec<usize>>,
    dirty: Vec<usize>,
    frame: Vec<u8>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ringcast_bench::procfs::raise_nofile();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.listen)?;
    // mio listens with std's backlog of 128; a connection storm needs the kernel's maximum.
    // SAFETY: the fd is a bound, listening socket we own; listen() again only resizes the
    // accept queue.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("floor listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut events = Events::with_capacity(4096);
    let mut floor = Floor::default();
    let mut scratch = vec![0u8; 256 * 1024];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                floor.accept(&listener, &poll)?;
                continue;
            }
            let ix = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() {
                floor.read(ix, &mut scratch, &poll);
            }
            if ev.is_writable() {
                floor.mark_dirty(ix);
            }
        }
        floor.flush(&poll);
    }
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) -> io::Result<()> {
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of fds and the like: skip this one, keep serving the rest.
                Err(_) => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let ix = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            poll.registry().register(
                &mut stream,
                Token(ix),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns[ix] = Some(Conn {
                stream,
                open: false,
                channels: Vec::new(),
                queued: false,
                want_write: false,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
            });
        }
    }

    fn mark_dirty(&mut self, ix: usize) {
        if let Some(c) = self.conns.get_mut(ix).and_then(Option::as_mut) {
            if !c.queued && !c.wbuf.is_empty() {
                c.queued = true;
                self.dirty.push(ix);
            }
        }
    }

    fn drop_conn(&mut self, ix: usize, poll: &Poll) {
        if let Some(mut c) = self.conns[ix].take() {
            let _ = poll.registry().deregister(&mut c.stream);
            for channel in &c.channels {
                if let Some(subs) = self.subscribers.get_mut(channel) {
                    subs.retain(|&s| s != ix);
                }
            }
            self.dirty.retain(|&d| d != ix);
            self.free.push(ix);
        }
    }

    fn read(&mut self, ix: usize, scratch: &mut [u8], poll: &Poll) {
        loop {
            let Some(c) = self.conns.get_mut(ix).and_then(Option::as_mut) else {
                return;
            };
            match c.stream.read(scratch) {
                Ok(0) => return self.drop_conn(ix, poll),
                Ok(n) => {
                    c.rbuf.extend_from_slice(&scratch[..n]);
                    if !self.process(ix) {
                        return self.drop_conn(ix, poll);
                    }
                    if n < scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_conn(ix, poll),
            }
        }
    }

    /// Handles every complete request/frame in `ix`'s read buffer. False: drop it.
    fn process(&mut self, ix: usize) -> bool {
        let mut rbuf = match self.conns[ix].as_mut() {
            Some(c) => std::mem::take(&mut c.rbuf),
            None => return false,
        };
        let mut used = 0;
        let ok = 'parse: {
            if !self.conns[ix].as_ref().is_some_and(|c| c.open) {
                match handshake(&rbuf) {
                    Ok(None) => break 'parse true,
                    Ok(Some((n, answer))) => {
                        used = n;
                        let c = self.conns[ix].as_mut().expect("open");
                        c.open = true;
                        c.wbuf.extend_from_slice(&answer);
                        self.mark_dirty(ix);
                    }
                    Err(()) => break 'parse false,
                }
            }
            loop {
                let head = match ws::parse_frame(&rbuf[used..]) {
                    Ok(Some(h)) => h,
                    Ok(None) => break 'parse true,
                    Err(_) => break 'parse false,
                };
                let Some(mask) = head.mask else {
                    break 'parse false;
                };
                let start = used + head.header_len;
                let end = used + head.total_len();
                used = end;
                ws::apply_mask(&mut rbuf[start..end], mask);
                let body = &rbuf[start..end];
                match head.opcode {
                    ws::OP_TEXT => self.on_text(ix, body),
                    ws::OP_PING => self.reply(ix, ws::OP_PONG, body),
                    ws::OP_CLOSE => break 'parse false,
                    _ => {}
                }
            }
        };
        rbuf.drain(..used);
        if let Some(c) = self.conns[ix].as_mut() {
            c.rbuf = rbuf;
        }
        ok
    }

    fn on_text(&mut self, ix: usize, body: &[u8]) {
        if contains(body, b"\"action\":\"publish\"") {
            // Frame once; the same bytes go to every subscriber.
            self.frame.clear();
            ws::encode_server_frame(ws::OP_TEXT, body, &mut self.frame);
            let Some(subs) = channel_of(body).and_then(|ch| self.subscribers.get(ch)) else {
                return;
            };
            for &s in subs {
                if let Some(c) = self.conns[s].as_mut() {
                    c.wbuf.extend_from_slice(&self.frame);
                    if !c.queued {
                        c.queued = true;
                        self.dirty.push(s);
                    }
                }
            }
        } else if contains(body, b"\"action\":\"subscribe\"") {
            let channel = channel_of(body).unwrap_or_default();
            if let Some(c) = self.conns[ix].as_mut() {
                if !c.channels.iter().any(|ch| ch == channel) {
                    c.channels.push(channel.to_vec());
                    self.subscribers
                        .entry(channel.to_vec())
                        .or_default()
                        .push(ix);
                }
            }
            self.reply(ix, ws::OP_TEXT, SUBSCRIBED);
        } else if contains(body, b"\"action\":\"ping\"") {
            self.reply(ix, ws::OP_TEXT, PONG);
        }
    }

    fn reply(&mut self, ix: usize, opcode: u8, body: &[u8]) {
        if let Some(c) = self.conns[ix].as_mut() {
            ws::encode_server_frame(opcode, body, &mut c.wbuf);
        }
        self.mark_dirty(ix);
    }

    /// One write per dirty connection with everything queued for it.
    fn flush(&mut self, poll: &Poll) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut broken = Vec::new();
        for &ix in &dirty {
            let Some(c) = self.conns[ix].as_mut() else {
                continue;
            };
            c.queued = false;
            let mut off = 0;
            while off < c.wbuf.len() {
                match c.stream.write(&c.wbuf[off..]) {
                    Ok(0) => {
                        broken.push(ix);
                        break;
                    }
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        broken.push(ix);
                        break;
                    }
                }
            }
            c.wbuf.drain(..off);
            let want = !c.wbuf.is_empty();
            if want != c.want_write {
                c.want_write = want;
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                let _ = poll
                    .registry()
                    .reregister(&mut c.stream, Token(ix), interest);
            }
        }
        for ix in broken {
            self.drop_conn(ix, poll);
        }
        if self.dirty.is_empty() {
            let mut d = dirty;
            d.clear();
            self.dirty = d;
        }
    }
}

/// Parses the upgrade request; returns the bytes it took and the `101` answer.
fn handshake(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .ok_or(())?
        .value;
    let accept = tungstenite::handshake::derive_accept_key(key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(Some((n, answer.into_bytes())))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of the frame's first `"channel":"…"` (no escapes: the load generator's
/// channel names are plain).
fn channel_of(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"channel\":\"";
    let start = find(body, KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    Some(&body[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::channel_of;

    #[test]
    fn finds_the_channel_of_a_frame() {
        let publish = br#"{"action":"publish","channel":"g17","data":{"x":1}}"#;
        assert_eq!(channel_of(publish), Some(&b"g17"[..]));
        assert_eq!(
            channel_of(br#"{"action":"subscribe","channel":""}"#),
            Some(&b""[..])
        );
        assert_eq!(channel_of(br#"{"action":"ping"}"#), None);
        assert_eq!(channel_of(br#"{"channel":"unterminated"#), None);
    }
}
