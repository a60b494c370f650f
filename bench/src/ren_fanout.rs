//! Workload `ren-fanout`: REN (SSE) fan-out, one ingest → N streams. N streams of
//! `GET /api/maravilla/ren` on one epoll (`mio`); one keep-alive connection posting
//! bursts of K app events (`POST /api/ren/events`, one request per burst). Closed loop:
//! post a burst, wait until every stream got all K, repeat. The ingest connection is on
//! the same epoll: its answers are read as they come, while the streams are read (so
//! the client reads deliveries as the server writes them, as in W1).
//!
//! With `--nchan` the same streams and paths go to Nginx + Nchan (`bench/scripts/ren.sh`
//! configures its subscriber and publisher locations on REN's paths): Nchan publishes
//! one message per POST, so a burst is K pipelined POSTs of one event each.
//!
//! Reports deliveries/s, broadcast completion (post → last stream has the burst) and
//! per-delivery latency from the stamp in each event's data, server CPU per million
//! deliveries.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::payload;
use crate::report::Report;
use crate::workload::Config;

/// A burst not complete after this long means the server lost or stalled something.
const STALL: Duration = Duration::from_secs(20);

struct Stream {
    sock: TcpStream,
    buf: Vec<u8>,
    head_done: bool,
    opened: bool,
    closed: bool,
}

struct Counts {
    deliveries: u64,
    latency_us: Histogram<u64>,
    reads: u64,
}

/// Runs `ren-fanout` and fills `r`.
pub fn run(cfg: &Config, r: &mut Report) -> Result<()> {
    let addr: SocketAddr = host_port(&cfg.url)?
        .parse()
        .context("--url must name IP:PORT")?;
    let start = Instant::now();
    let n = cfg.subscribers;
    let mut poll = Poll::new()?;
    let mut streams = Vec::with_capacity(n);
    let request = format!(
        "GET /api/maravilla/ren?s=bench&cid=bench HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    for i in 0..n {
        let std = std::net::TcpStream::connect(addr).with_context(|| format!("stream {i}"))?;
        std.set_nodelay(true)?;
        (&std).write_all(request.as_bytes())?;
        std.set_nonblocking(true)?;
        let mut sock = TcpStream::from_std(std);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)?;
        streams.push(Stream {
            sock,
            buf: Vec::with_capacity(4096),
            head_done: false,
            opened: false,
            closed: false,
        });
    }
    let mut events = Events::with_capacity(1024);
    let mut counts = Counts {
        deliveries: 0,
        latency_us: Histogram::new(3)?,
        reads: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while streams.iter().any(|s| !s.opened) {
        if Instant::now() > deadline {
            bail!("streams did not open within 120 s");
        }
        turn(
            &mut poll,
            &mut events,
            &mut streams,
            &mut counts,
            start,
            None,
        )?;
    }
    r.num("connect_s", start.elapsed().as_secs_f64());

    let mut publisher = Publisher::connect(addr, &poll)?;
    let k = cfg.burst.max(1);
    let mut next_id = 0u64;
    let mut body = Vec::new();
    let mut data = Vec::new();
    let mut burst = |publisher: &mut Publisher, next_id: &mut u64| -> Result<Instant> {
        let sent = Instant::now();
        let lg = sent.duration_since(start).as_nanos() as u64;
        if cfg.nchan {
            for _ in 0..k {
                payload::write_data(&mut data, lg, *next_id, cfg.payload);
                *next_id += 1;
                publisher.post(&data)?;
            }
            return Ok(sent);
        }
        body.clear();
        body.push(b'[');
        for j in 0..k {
            if j > 0 {
                body.push(b',');
            }
            payload::write_data(&mut data, lg, *next_id, cfg.payload);
            *next_id += 1;
            body.extend_from_slice(br#"{"t":"bench.tick","data":"#);
            body.extend_from_slice(&data);
            body.push(b'}');
        }
        body.push(b']');
        publisher.post(&body)?;
        Ok(sent)
    };

    let mut completion = Histogram::<u64>::new(3)?;
    let mut expected = 0u64;
    let mut measured = None;
    let phase_end = Instant::now() + Duration::from_secs_f64(cfg.warmup_s);
    let mut run_until = phase_end;
    let mut cpu0 = None;
    loop {
        if Instant::now() >= run_until {
            if measured.is_some() {
                break;
            }
            // Warm-up done: measure from here.
            counts.deliveries = 0;
            counts.reads = 0;
            counts.latency_us.reset();
            completion.reset();
            expected = 0;
            cpu0 = cfg.server_pid.and_then(crate::procfs::cpu_seconds);
            measured = Some((Instant::now(), next_id));
            run_until = Instant::now() + Duration::from_secs_f64(cfg.duration_s);
        }
        let sent = burst(&mut publisher, &mut next_id)?;
        expected += (n * k) as u64;
        while counts.deliveries < expected {
            if sent.elapsed() > STALL {
                bail!(
                    "burst incomplete after {STALL:?}: {} of {expected} deliveries",
                    counts.deliveries
                );
            }
            let publisher = Some(&mut publisher);
            turn(
                &mut poll,
                &mut events,
                &mut streams,
                &mut counts,
                start,
                publisher,
            )?;
        }
        completion.record((sent.elapsed().as_nanos() as u64 / 1000).max(1))?;
    }
    let (t0, id0) = measured.expect("measured phase ran");
    let secs = t0.elapsed().as_secs_f64();
    let wait = Instant::now();
    while publisher.pending > 0 {
        if wait.elapsed() > STALL {
            bail!("{} ingest answers missing", publisher.pending);
        }
        let publisher = Some(&mut publisher);
        turn(
            &mut poll,
            &mut events,
            &mut streams,
            &mut counts,
            start,
            publisher,
        )?;
    }
    r.str("mode", "closed");
    r.num("duration_s", secs);
    r.int("published", next_id - id0);
    r.int("deliveries", counts.deliveries);
    r.num("msgs_per_s", (next_id - id0) as f64 / secs);
    r.num("deliveries_per_s", counts.deliveries as f64 / secs);
    r.hist("completion", &completion);
    r.hist("latency", &counts.latency_us);
    r.num(
        "events_per_read",
        counts.deliveries as f64 / counts.reads.max(1) as f64,
    );
    r.int(
        "closed_by_server",
        streams.iter().filter(|s| s.closed).count() as u64,
    );
    if let (Some(a), Some(b)) = (cpu0, cfg.server_pid.and_then(crate::procfs::cpu_seconds)) {
        r.num("server_cpu_s", b - a);
        r.num(
            "cpu_s_per_m_deliveries",
            (b - a) / counts.deliveries.max(1) as f64 * 1e6,
        );
    }
    if let Some(rss) = cfg.server_pid.and_then(crate::procfs::rss_bytes) {
        r.int("server_rss_bytes", rss);
    }
    Ok(())
}

/// One poll: reads every ready stream and counts the events it completed.
fn turn(
    poll: &mut Poll,
    events: &mut Events,
    streams: &mut [Stream],
    counts: &mut Counts,
    start: Instant,
    mut publisher: Option<&mut Publisher>,
) -> Result<()> {
    poll.poll(events, Some(Duration::from_millis(5)))?;
    let mut chunk = [0u8; 64 * 1024];
    for event in events.iter() {
        if event.token() == PUBLISHER {
            if let Some(publisher) = publisher.as_deref_mut() {
                publisher.read_answers()?;
            }
            continue;
        }
        let stream = &mut streams[event.token().0];
        loop {
            match stream.sock.read(&mut chunk) {
                Ok(0) => {
                    stream.closed = true;
                    break;
                }
                Ok(got) => {
                    counts.reads += 1;
                    stream.buf.extend_from_slice(&chunk[..got]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    stream.closed = true;
                    break;
                }
            }
        }
        consume(stream, counts, start);
        if stream.closed && !stream.opened {
            bail!(
                "a stream was refused: {:?}",
                String::from_utf8_lossy(&stream.buf)
            );
        }
    }
    Ok(())
}

/// Takes every complete block (`…\n\n`) off the stream's buffer.
fn consume(stream: &mut Stream, counts: &mut Counts, start: Instant) {
    let mut at = 0;
    if !stream.head_done {
        let Some(end) = find(&stream.buf, b"\r\n\r\n") else {
            return;
        };
        if !stream.buf.starts_with(b"HTTP/1.1 200") {
            stream.closed = true;
            return;
        }
        // Ringcast sends the head once the stream is registered; Nchan at once.
        stream.head_done = true;
        stream.opened = true;
        at = end + 4;
    }
    let now_ns = start.elapsed().as_nanos() as u64;
    let blank = memchr::memmem::Finder::new(b"\n\n");
    let lg = memchr::memmem::Finder::new(b"{\"lg\":");
    while let Some(end) = blank.find(&stream.buf[at..]) {
        let block = &stream.buf[at..at + end];
        if !block.starts_with(b":") {
            counts.deliveries += 1;
            // The stamp opens the event's `data`: jump there before parsing it.
            let stamp = lg
                .find(block)
                .and_then(|i| payload::find_stamp(&block[i..]));
            if let Some(stamp) = stamp {
                let us = now_ns.saturating_sub(stamp.lg_ns) / 1000;
                let _ = counts.latency_us.record(us.max(1));
            }
        }
        at += end + 2;
    }
    stream.buf.drain(..at);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn host_port(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    Ok(rest
        .split('/')
        .next()
        .context("no host in --url")?
        .to_owned())
}

const PUBLISHER: Token = Token(usize::MAX);

/// The ingest connection (keep-alive; requests pipelined, answers read from the epoll).
struct Publisher {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Requests sent whose answer has not been read.
    pending: usize,
}

impl Publisher {
    fn connect(addr: SocketAddr, poll: &Poll) -> Result<Publisher> {
        let std = std::net::TcpStream::connect(addr)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, PUBLISHER, Interest::READABLE)?;
        Ok(Publisher {
            stream,
            buf: Vec::with_capacity(1024),
            pending: 0,
        })
    }

    /// Sends `POST /api/ren/events` with `body`; its answer is read by [`Self::read_answers`].
    fn post(&mut self, body: &[u8]) -> Result<()> {
        let mut request = format!(
            "POST /api/ren/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let mut at = 0;
        let deadline = Instant::now() + STALL;
        while at < request.len() {
            match self.stream.write(&request[at..]) {
                Ok(n) => at += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    if Instant::now() > deadline {
                        bail!("the ingest connection does not take the request");
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Reads what answers arrived; each must be `200`.
    fn read_answers(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the server closed the ingest connection"),
                Ok(got) => self.buf.extend_from_slice(&chunk[..got]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .context("answer without Content-Length")?;
                if self.buf.len() >= end + 4 + length {
                    if !head.starts_with("HTTP/1.1 2") {
                        // A 503 here is the server's backpressure (a shard spilling): the
                        // offered rate is more than its streams drain; lower it.
                        bail!(
                            "ingest refused: {head} {}",
                            String::from_utf8_lossy(&self.buf[end + 4..end + 4 + length])
                        );
                    }
                    self.buf.drain(..end + 4 + length);
                    self.pending = self.pending.saturating_sub(1);
                    continue;
                }
            }
            return Ok(());
        }
    }
}
