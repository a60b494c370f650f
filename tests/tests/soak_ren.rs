//! A randomized soak of REN (SPEC §7) against the real binary, on three shards: producer
//! threads publish over WebSocket and HTTP, join and leave presence, and push app events
//! (`POST /api/ren/events`) at random, while reader threads follow the tenant's stream
//! with their own filters and drop and resume it (`Last-Event-ID`) at random.
//!
//! A reference reader takes every domain and never drops: its ids go up by exactly one
//! per event (one sequence per tenant). Every other reader, across all its resumes, gets
//! each id once, in increasing order, and exactly the reference's events its filter
//! takes from its first event on; no `ren.meta` (nothing is older than the buffer).
//! Mirrored messages carry the channel, data and seq their publish was acknowledged with,
//! and every app event arrives once. `RINGCAST_SOAK_SEED=<0x-hex>` replays a walk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::sse::{SseEvent, SseItem, SseStream};
use ringcast_tests::walk::{soak_seed, Rng};
use ringcast_tests::{http_request, json, Client, HttpResponse, Server, TIMEOUT};
use serde_json::Value;

const STREAM: &str = "/api/maravilla/ren";
const PRODUCERS: usize = 3;
const OPS_PER_PRODUCER: usize = 120;
/// Each reader's filter; every one takes `kv`, where the end marker is.
const FILTERS: [&str; 4] = ["kv", "kv,realtime", "kv,db,presence", "*"];
const CHANNELS: usize = 4;
const SOAK_LIMIT: Duration = Duration::from_secs(120);
/// The app event after which nothing more is produced.
const END_KEY: &str = "soak-end";

/// What producers had acknowledged: a mirrored message's `(ch, seq)` → its data, and
/// every app event's key.
#[derive(Default)]
struct Produced {
    messages: BTreeMap<(String, u64), String>,
    app_keys: Vec<String>,
}

/// One event as a reader keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: u64,
    r: String,
    data: Value,
}

fn post(server: &Server, path: &str, body: &str) -> Result<HttpResponse> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_request(server.addr(), request.as_bytes())
}

fn open(server: &Server, target: &str, last_id: Option<u64>) -> Result<SseStream> {
    let last = last_id.map(|id| id.to_string());
    let headers: Vec<(&str, &str)> = last
        .as_deref()
        .map(|l| vec![("Last-Event-ID", l)])
        .unwrap_or_default();
    match SseStream::open(server, target, &headers)? {
        Ok(mut stream) => {
            ensure!(stream.next_item(TIMEOUT)? == SseItem::Comment("ok".into()));
            Ok(stream)
        }
        Err(resp) => bail!("stream refused: {} {}", resp.status, resp.body_text()),
    }
}

fn seen(event: SseEvent) -> Result<Seen> {
    let id = event
        .id
        .as_deref()
        .context("an event without id")?
        .parse()
        .context("id")?;
    ensure!(event.data["t"] == event.event.as_str(), "{event:?}");
    Ok(Seen {
        id,
        r: event.data["r"].as_str().unwrap_or("").to_owned(),
        data: event.data,
    })
}

fn is_end(s: &Seen) -> bool {
    s.data["t"] == "kv.put" && s.data["k"] == END_KEY
}

/// Reads `filter`'s stream until the end marker, dropping and resuming it at random.
fn read(
    server: &Server,
    filter: &str,
    mut rng: Rng,
    resumes: bool,
    deadline: Instant,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<Vec<Seen>> {
    let target = format!("{STREAM}?s={filter}");
    let mut stream = open(server, &target, None)?;
    // Registered at the REN owner (the head came): every later event reaches it.
    let _ = ready.send(());
    let mut got: Vec<Seen> = Vec::new();
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "reader {filter} ran past the soak's limit");
        let event = seen(stream.next_event(left.min(Duration::from_secs(20)))?)?;
        ensure!(
            event.data["t"] != "ren.meta",
            "{filter}: unexpected {:?}",
            event
        );
        if let Some(last) = got.last() {
            ensure!(
                event.id > last.id,
                "{filter}: id {} after {} (duplicate or out of order)",
                event.id,
                last.id
            );
        }
        let end = is_end(&event);
        got.push(event);
        if end {
            return Ok(got);
        }
        if resumes && rng.below(40) == 0 {
            drop(stream);
            let last = got.last().map(|s| s.id);
            stream = open(server, &target, last)?;
        }
    }
    bail!("{filter}: no end marker in 100,000 events")
}

fn produce(server: &Server, id: usize, mut rng: Rng, produced: &Mutex<Produced>) -> Result<()> {
    let mut ws = Client::open(server, "")?;
    let mut n = 0u64;
    let mut present: Option<String> = None;
    for op in 0..OPS_PER_PRODUCER {
        n += 1;
        let channel = format!("rsoak:{}", rng.below(CHANNELS));
        let step = || format!("producer {id}, op {op}");
        match rng.below(100) {
            0..=39 => {
                let count = 1 + rng.below(3);
                let domains = ["kv.put", "db.document.created", "jobs.done"];
                let events: Vec<Value> = (0..count)
                    .map(|i| {
                        let t = domains[rng.below(domains.len())];
                        json!({"t": t, "k": format!("p{id}-{n}-{i}"), "data": {"n": n}})
                    })
                    .collect();
                let resp = post(
                    server,
                    "/api/ren/events",
                    &Value::from(events.clone()).to_string(),
                )?;
                ensure!(resp.status == 200, "{}: {}", step(), resp.body_text());
                ensure!(
                    resp.json()?["accepted"] == count as u64,
                    "{}",
                    resp.body_text()
                );
                let mut p = produced.lock().unwrap();
                p.app_keys
                    .extend(events.iter().map(|e| e["k"].as_str().unwrap().to_owned()));
            }
            40..=69 => {
                let data = json!({"p": id, "n": n});
                ws.send_json(
                    &json!({"action": "publish", "channel": channel, "data": data, "ref": n}),
                )?;
                let ack = ws
                    .recv_until(|ev| ev["ref"] == n, TIMEOUT)
                    .with_context(step)?;
                ensure!(ack["event"] == "ack", "{}: {ack}", step());
                let seq = ack["seq"].as_u64().context("seq")?;
                produced
                    .lock()
                    .unwrap()
                    .messages
                    .insert((channel, seq), data.to_string());
            }
            70..=84 => {
                let data = json!({"p": id, "n": n, "http": true});
                let body = json!({"channel": channel, "data": data}).to_string();
                let resp = post(server, "/api/realtime/publish", &body)?;
                ensure!(resp.status == 200, "{}: {}", step(), resp.body_text());
                let seq = resp.json()?["seq"].as_u64().context("HTTP publish seq")?;
                produced
                    .lock()
                    .unwrap()
                    .messages
                    .insert((channel, seq), data.to_string());
            }
            _ => {
                let frame = match present.take() {
                    Some(ch) => json!({"action": "presence:leave", "channel": ch}),
                    None => {
                        present = Some(channel.clone());
                        json!({"action": "presence:join", "channel": channel,
                               "userId": format!("producer-{id}"), "metadata": {"n": n}})
                    }
                };
                ws.send_json(&frame)?;
                ws.send_json(&json!({"action": "ping"}))?;
                let pong = ws.recv_until(
                    |ev| ev["event"] == "pong" || ev["event"] == "error",
                    TIMEOUT,
                )?;
                ensure!(pong["event"] == "pong", "{}: {pong}", step());
            }
        }
    }
    Ok(())
}

#[test]
fn readers_resuming_at_random_get_every_event_their_filter_takes_once() -> Result<()> {
    let seed = soak_seed(0x5eed_0000_0000_0ee1)?;
    let server = Arc::new(Server::start(&["--shards", "3"])?);
    let deadline = Instant::now() + SOAK_LIMIT;
    let rng = |k: u64| Rng::new(seed, k);
    let (ready, opened) = std::sync::mpsc::channel();
    let reference = {
        let (server, ready) = (server.clone(), ready.clone());
        std::thread::spawn(move || read(&server, "*", Rng::new(seed, 99), false, deadline, ready))
    };
    let mut readers = Vec::new();
    for (k, filter) in FILTERS.iter().enumerate() {
        let (server, ready) = (server.clone(), ready.clone());
        let r = rng(100 + k as u64);
        readers.push((
            *filter,
            std::thread::spawn(move || read(&server, filter, r, true, deadline, ready)),
        ));
    }
    drop(ready);
    for _ in 0..=FILTERS.len() {
        opened
            .recv_timeout(TIMEOUT)
            .context("a reader did not open its stream")?;
    }
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (server, produced) = (server.clone(), produced.clone());
            let r = rng(id as u64);
            std::thread::spawn(move || produce(&server, id, r, &produced))
        })
        .collect();
    for (id, p) in producers.into_iter().enumerate() {
        p.join()
            .expect("producer thread")
            .with_context(|| format!("producer {id}, seed {seed:#x}"))?;
    }
    let end = json!({"t": "kv.put", "k": END_KEY}).to_string();
    ensure!(post(&server, "/api/ren/events", &end)?.status == 200);

    let all = reference.join().expect("reference thread")?;
    for pair in all.windows(2) {
        ensure!(
            pair[1].id == pair[0].id + 1,
            "the reference's ids jump from {} to {}",
            pair[0].id,
            pair[1].id
        );
    }
    let produced = produced.lock().unwrap();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    let mut mirrored = 0;
    for s in &all {
        match s.data["t"].as_str().unwrap_or("") {
            "realtime.message" => {
                let ch = s.data["ch"].as_str().unwrap_or("").to_owned();
                let seq: u64 = s.data["v"].as_str().unwrap_or("").parse().context("v")?;
                let want = produced.messages.get(&(ch.clone(), seq));
                ensure!(
                    want == Some(&s.data["data"].to_string()),
                    "{ch} seq {seq} mirrored as {}, acked {want:?}",
                    s.data["data"]
                );
                mirrored += 1;
            }
            "kv.put" | "db.document.created" | "jobs.done" => {
                if let Some(k) = s.data["k"].as_str() {
                    *keys.entry(k).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    ensure!(
        mirrored == produced.messages.len(),
        "{mirrored} of {} acked messages mirrored",
        produced.messages.len()
    );
    for k in &produced.app_keys {
        ensure!(
            keys.get(k.as_str()) == Some(&1),
            "app event {k} seen {:?} times",
            keys.get(k.as_str())
        );
    }
    eprintln!(
        "reference: {} events, {mirrored} mirrored messages, {} app events",
        all.len(),
        produced.app_keys.len()
    );
    for (filter, reader) in readers {
        let got = reader
            .join()
            .expect("reader thread")
            .with_context(|| format!("reader {filter}, seed {seed:#x}"))?;
        let first = got.first().context("a reader got nothing")?.id;
        let takes = |r: &str| filter == "*" || filter.split(',').any(|d| d == r);
        let want: Vec<&Seen> = all
            .iter()
            .filter(|s| s.id >= first && takes(&s.r))
            .collect();
        let got_ids: Vec<u64> = got.iter().map(|s| s.id).collect();
        let want_ids: Vec<u64> = want.iter().map(|s| s.id).collect();
        ensure!(
            got_ids == want_ids,
            "reader {filter}: {} events, the reference has {} it takes from id {first}; first difference at {:?}",
            got_ids.len(),
            want_ids.len(),
            got_ids.iter().zip(&want_ids).position(|(a, b)| a != b)
        );
        eprintln!("reader {filter}: {} events from id {first}", got.len());
        for (g, w) in got.iter().zip(want) {
            ensure!(g == w, "reader {filter}: {g:?} is {w:?} in the reference");
        }
    }
    Ok(())
}
