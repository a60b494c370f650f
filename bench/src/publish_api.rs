//! Workloads `http-publish` and `ws-publish`: publish throughput and latency of the HTTP
//! API (`POST /api/realtime/publish` on keep-alive connections) beside WebSocket publishes
//! acknowledged with `ref`, on the same number of connections.
//!
//! Closed loop, one request in flight per connection, one thread per connection (a few
//! connections: this measures the server's per-publish cost, not the client's fan-in).
//! Latency (µs) is from the request's write to its complete answer (`{ok,seq}` or `ack`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use crate::report::Report;
use crate::workload::Config;

/// Runs `http-publish` (`http == true`) or `ws-publish` and fills `r`.
pub fn run(cfg: &Config, http: bool, r: &mut Report) -> Result<()> {
    let addr = host_port(&cfg.url)?;
    let data = format!("\"{}\"", "x".repeat(cfg.payload.saturating_sub(2)));
    let (warmup, measured) = (
        Duration::from_secs_f64(cfg.warmup_s),
        Duration::from_secs_f64(cfg.duration_s),
    );
    let cpu_before = cfg.server_pid.and_then(crate::procfs::cpu_seconds);
    let threads: Vec<_> = (0..cfg.publishers)
        .map(|i| {
            let (addr, data) = (addr.clone(), data.clone());
            let channel = format!("bench:pub:{i}");
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut conn = if http {
                    Publisher::http(&addr)?
                } else {
                    Publisher::ws(&addr)?
                };
                let start = Instant::now();
                let mut hist = Histogram::<u64>::new(3)?;
                let mut done = 0u64;
                let mut n = 0u64;
                while start.elapsed() < warmup + measured {
                    let sent = Instant::now();
                    conn.publish(&channel, &data, n)?;
                    n += 1;
                    if sent >= start + warmup {
                        hist.record((sent.elapsed().as_nanos() as u64 / 1000).max(1))?;
                        done += 1;
                    }
                }
                Ok((done, hist))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut hist = Histogram::<u64>::new(3)?;
    for t in threads {
        let (done, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        total += done;
        hist.add(h)?;
    }
    r.int("publishers", cfg.publishers as u64);
    r.num("publishes_per_s", total as f64 / measured.as_secs_f64());
    r.hist("publish_latency", &hist);
    if let (Some(pid), Some(before)) = (cfg.server_pid, cpu_before) {
        if let Some(after) = crate::procfs::cpu_seconds(pid) {
            let per_million = (after - before) / (total.max(1) as f64) * 1e6;
            r.num("server_cpu_s_per_million", per_million);
        }
    }
    Ok(())
}

fn host_port(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    Ok(rest
        .split('/')
        .next()
        .context("no host in --url")?
        .to_owned())
}

enum Publisher {
    Http { stream: TcpStream, buf: Vec<u8> },
    Ws(Box<tungstenite::WebSocket<TcpStream>>),
}

impl Publisher {
    fn http(addr: &str) -> Result<Publisher> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Publisher::Http {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    fn ws(addr: &str) -> Result<Publisher> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{addr}/_rt/ws");
        let (mut ws, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
        ws.read()?; // connected
        Ok(Publisher::Ws(Box::new(ws)))
    }

    fn publish(&mut self, channel: &str, data: &str, n: u64) -> Result<()> {
        match self {
            Publisher::Http { stream, buf } => {
                let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
                let req = format!(
                    "POST /api/realtime/publish HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                // A 503 is backpressure (a shard spilling): the same publish again, soon.
                for _ in 0..BACKPRESSURE_RETRIES {
                    stream.write_all(req.as_bytes())?;
                    match read_response(stream, buf)? {
                        Answered::Ok => return Ok(()),
                        Answered::Overloaded => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                bail!("publish refused with 503 {BACKPRESSURE_RETRIES} times in a row")
            }
            Publisher::Ws(ws) => {
                let frame = format!(
                    r#"{{"action":"publish","channel":"{channel}","data":{data},"ref":{n}}}"#
                );
                ws.send(tungstenite::Message::text(frame))?;
                loop {
                    if let tungstenite::Message::Text(t) = ws.read()? {
                        if t.as_str().starts_with("{\"event\":\"ack\"") {
                            return Ok(());
                        }
                        if t.as_str().starts_with("{\"event\":\"error\"") {
                            bail!("publish refused: {t}");
                        }
                    }
                }
            }
        }
    }
}

/// How many times a publish refused with 503 (backpressure) is sent again.
const BACKPRESSURE_RETRIES: usize = 10_000;

/// How a publish was answered.
enum Answered {
    /// 200.
    Ok,
    /// 503: refused while a shard spills; send it again.
    Overloaded,
}

/// Reads one complete response with a Content-Length body: `200`, or `503`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answered> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf)? {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .context("no Content-Length")?;
            if buf.len() >= head + len {
                return match resp.code {
                    Some(200) => Ok(Answered::Ok),
                    Some(503) => Ok(Answered::Overloaded),
                    code => bail!(
                        "publish answered {code:?}: {}",
                        String::from_utf8_lossy(&buf[head..])
                    ),
                };
            }
        }
    }
}
