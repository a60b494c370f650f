//! A randomized soak of the WebSocket protocol against the real binary: several clients
//! at once, each a seeded random walk of subscribes, resumes (alone and in the SDK's
//! order on open: a plain `subscribe`, then a resume before its answer), unsubscribes,
//! acknowledged publishes, presence joins and leaves, pings, reconnects and bad frames,
//! on a few channels that live on both shards.
//!
//! What every client checks as it goes: each channel it follows is delivered in seq
//! order with no gap and no duplicate, from the first seq its subscribe or resume
//! promised, until its `unsubscribed`; a resume's `subscribed` comes after every
//! message it replayed and says `recovered: true`; no message arrives for a channel it
//! does not follow; no `error` arrives but the one a bad frame asks for. At the end, a
//! fresh client replays every channel from the start: every acknowledged publish is
//! there, at its acked seq, with its data, and every client saw that same data.
//!
//! Walks with their own seeds: on 1, 2 and 3 shards; under a SIGHUP reload every 20 ms;
//! and across three kill -9 restarts, after which every walker resumes and every
//! acknowledged publish must be kept at its seq. `RINGCAST_SOAK_SEED=<0x-hex>` replaces
//! each walk's seed (a failure prints it), to replay one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::walk::{soak_seed, time_left, Delivery, Observe, Rng, Trail};
use ringcast_tests::{json, Client, Server, TIMEOUT};
use serde_json::Value;

const CLIENTS: usize = 6;
const OPS_PER_CLIENT: usize = 220;
const CHANNELS: usize = 5;
/// The whole soak stops failing-fast after this long (every loop is bounded by it).
const SOAK_LIMIT: Duration = Duration::from_secs(120);

/// Seqs and data of every acknowledged publish, by channel.
type Acked = Arc<Mutex<BTreeMap<String, BTreeMap<u64, String>>>>;

/// Where one followed channel stands for this client.
#[derive(Debug)]
struct Following {
    /// What it must be delivered next.
    delivery: Delivery,
    /// `unsubscribe` sent, `unsubscribed` not yet seen.
    leaving: bool,
}

/// Where the server is while another thread kills and restarts it (the kill -9 walk).
#[derive(Debug)]
struct Crashes {
    state: Mutex<CrashState>,
    /// Signalled when a restart is done.
    restarted: Condvar,
    /// Data of publishes sent but not acknowledged when the server died: each may be in
    /// history (appended before the kill) or not.
    maybe: Mutex<HashSet<String>>,
}

#[derive(Debug)]
struct CrashState {
    addr: SocketAddr,
    /// Restarts done.
    generation: u64,
    /// Killed, not yet listening again.
    down: bool,
}

struct Walker {
    id: usize,
    server_addr: SocketAddr,
    /// Set in the kill -9 walk.
    crashes: Option<Arc<Crashes>>,
    /// The restart count when the connection was opened: a failure after a later
    /// restart (or while the server is down) is the crash, not a bug.
    conn_generation: u64,
    /// The data of the publish waiting for its ack.
    in_flight: Option<String>,
    /// The last frames sent and events read, for a failure's message.
    trail: Trail,
    /// Channels this connection joined presence in.
    present: std::collections::HashSet<String>,
    /// A bad frame was sent: its `bad_request` error is expected next.
    error_expected: bool,
    client: Client,
    rng: Rng,
    epoch: HashMap<String, Value>,
    following: HashMap<String, Following>,
    /// The last seq seen per channel (kept across unsubscribes and reconnects).
    last_seen: HashMap<String, u64>,
    /// Data of every message seen, by channel and seq.
    seen: BTreeMap<(String, u64), String>,
    acked: Acked,
    published: u64,
    deadline: Instant,
}

fn channel_name(k: usize) -> String {
    format!("soak:{k}")
}

impl Walker {
    fn left(&self) -> Result<Duration> {
        time_left(self.deadline, &format!("client {}", self.id))
    }

    /// Observes events until `done` holds for one.
    fn settle(&mut self, channel: &str) -> Result<()> {
        let ch = channel.to_owned();
        while self
            .following
            .get(&ch)
            .is_some_and(|f| !f.delivery.answered() || f.leaving)
        {
            self.observe().with_context(|| format!("settling {ch}"))?;
        }
        Ok(())
    }

    fn subscribe_plain(&mut self, channel: &str) -> Result<()> {
        let following = Following {
            delivery: Delivery::plain(),
            leaving: false,
        };
        self.following.insert(channel.to_owned(), following);
        self.send(&json!({"action": "subscribe", "channel": channel}))?;
        self.settle(channel)
    }

    /// A resume from the last seq seen (0 when none); with `plain_first`, the SDK's
    /// order on open: a plain subscribe, then the resume before the first answer.
    fn send_resume(&mut self, channel: &str, plain_first: bool) -> Result<()> {
        let last = self.last_seen.get(channel).copied().unwrap_or(0);
        let following = Following {
            delivery: Delivery::resume(last, plain_first),
            leaving: false,
        };
        self.following.insert(channel.to_owned(), following);
        if plain_first {
            self.send(&json!({"action": "subscribe", "channel": channel}))?;
        }
        let mut frame = json!({"action": "subscribe", "channel": channel, "lastEventId": last});
        if let Some(epoch) = self.epoch.get(channel) {
            frame["epoch"] = epoch.clone();
        }
        self.send(&frame)
    }

    fn publish(&mut self, channel: &str) -> Result<()> {
        self.published += 1;
        let reference = format!("c{}-{}", self.id, self.published);
        let data =
            json!({"c": self.id, "n": self.published, "pad": "x".repeat(self.rng.below(300))});
        self.in_flight = Some(data.to_string());
        self.send(&json!({
            "action": "publish", "channel": channel, "data": data, "ref": reference,
        }))?;
        let ack = self.until("ack", |ev| ev["ref"] == reference.as_str())?;
        ensure!(ack["event"] == "ack", "publish refused: {ack}");
        self.in_flight = None;
        let seq = ack["seq"].as_u64().context("ack seq")?;
        let previous = self
            .acked
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default()
            .insert(seq, data.to_string());
        ensure!(previous.is_none(), "seq {seq} of {channel} acked twice");
        Ok(())
    }

    fn reconnect(&mut self) -> Result<()> {
        let channels: Vec<String> = self
            .following
            .iter()
            .filter(|(_, f)| !f.leaving)
            .map(|(c, _)| c.clone())
            .collect();
        self.following.clear();
        self.present.clear();
        self.error_expected = false;
        if let Some(crashes) = &self.crashes {
            let state = crashes.state.lock().unwrap();
            (self.server_addr, self.conn_generation) = (state.addr, state.generation);
        }
        let stream = std::net::TcpStream::connect(self.server_addr)?;
        let (client, _) = Client::handshake(stream, self.server_addr, "")
            .map_err(|e| anyhow::anyhow!("reconnect: {e}"))?;
        self.client = client;
        self.client.expect_event("connected")?;
        // Every channel at once, as the SDK resubscribes on open.
        for channel in &channels {
            let plain_first = self.rng.below(2) == 0;
            self.send_resume(channel, plain_first)?;
        }
        for channel in &channels {
            self.settle(channel)?;
        }
        Ok(())
    }

    /// Whether the server died under this connection (kill -9 walk only).
    fn crashed(&self) -> bool {
        self.crashes.as_ref().is_some_and(|c| {
            let state = c.state.lock().unwrap();
            state.down || state.generation != self.conn_generation
        })
    }

    /// After the server died: its unacknowledged publish may or may not have been kept;
    /// once it listens again, reconnect and resume every followed channel (each resume
    /// must say `recovered: true`: a kill -9 loses nothing appended).
    fn recover(&mut self) -> Result<()> {
        let crashes = self.crashes.clone().expect("kill -9 walk");
        if let Some(data) = self.in_flight.take() {
            crashes.maybe.lock().unwrap().insert(data);
        }
        for _ in 0..5 {
            let state = crashes.state.lock().unwrap();
            let (state, timeout) = crashes
                .restarted
                .wait_timeout_while(state, Duration::from_secs(30), |s| s.down)
                .unwrap();
            ensure!(!timeout.timed_out(), "the server did not come back");
            drop(state);
            match self.reconnect() {
                Ok(()) => return Ok(()),
                Err(_) if self.crashed() => continue,
                Err(e) => return Err(e.context("resuming after a restart")),
            }
        }
        bail!("client {}: could not reconnect after 5 restarts", self.id)
    }

    fn note(&mut self, line: String) {
        self.trail.note(line);
    }

    fn send(&mut self, frame: &Value) -> Result<()> {
        self.note(format!("-> {frame}"));
        self.client.send_json(frame)
    }

    fn step(&mut self) -> Result<()> {
        let channel = channel_name(self.rng.below(CHANNELS));
        let followed = self.following.contains_key(&channel);
        match self.rng.below(100) {
            0..=34 => self.publish(&channel),
            35..=49 if !followed => self.subscribe_plain(&channel),
            50..=59 if !followed => {
                let plain_first = self.rng.below(2) == 0;
                self.send_resume(&channel, plain_first)?;
                self.settle(&channel)
            }
            60..=69 if followed => {
                self.following.get_mut(&channel).expect("followed").leaving = true;
                self.send(&json!({"action": "unsubscribe", "channel": channel}))?;
                self.settle(&channel)
            }
            70..=75 => {
                let user = format!("user-{}", self.id);
                self.send(&json!({
                    "action": "presence:join", "channel": channel, "userId": user,
                    "metadata": {"op": self.published},
                }))?;
                self.present.insert(channel);
                self.send(&json!({"action": "ping"}))?;
                self.until("pong", |ev| ev["event"] == "pong").map(drop)
            }
            76..=79 if self.present.remove(&channel) => {
                self.send(&json!({"action": "presence:leave", "channel": channel}))?;
                self.send(&json!({"action": "ping"}))?;
                self.until("pong", |ev| ev["event"] == "pong").map(drop)
            }
            80..=85 => {
                self.send(&json!({"action": "ping"}))?;
                self.until("pong", |ev| ev["event"] == "pong").map(drop)
            }
            86..=90 => {
                self.error_expected = true;
                self.client
                    .send_raw_text("{\"action\": \"publish\", \"chan")?;
                self.until("the bad frame's error", |ev| ev["event"] == "error")?;
                ensure!(
                    !self.error_expected,
                    "the bad frame's error was not bad_request"
                );
                Ok(())
            }
            91..=94 => self.reconnect(),
            _ => Ok(()),
        }
    }
}

impl Observe for Walker {
    fn observe(&mut self) -> Result<Value> {
        let left = self.left()?;
        let ev = self.client.recv_event(left)?;
        self.note(format!("<- {ev}"));
        let channel = ev["channel"].as_str().unwrap_or("").to_owned();
        match ev["event"].as_str().unwrap_or("") {
            "realtime.message" => {
                let seq = ev["seq"].as_u64().context("message seq")?;
                let f = self
                    .following
                    .get_mut(&channel)
                    .with_context(|| format!("a message for an unfollowed channel: {ev}"))?;
                f.delivery
                    .message(seq)
                    .map_err(|e| anyhow::anyhow!("client {}: {channel} {e}: {ev}", self.id))?;
                let last = self.last_seen.entry(channel.clone()).or_default();
                *last = (*last).max(seq);
                self.seen.insert((channel, seq), ev["data"].to_string());
            }
            "subscribed" => {
                let seq = ev["seq"].as_u64().context("subscribed seq")?;
                let f = self
                    .following
                    .get_mut(&channel)
                    .with_context(|| format!("an unasked subscribed: {ev}"))?;
                f.delivery
                    .subscribed(seq, ev["recovered"] == true)
                    .map_err(|e| anyhow::anyhow!("client {}: {channel}: {e}: {ev}", self.id))?;
                self.epoch.insert(channel, ev["epoch"].clone());
            }
            "unsubscribed" => {
                let f = self
                    .following
                    .remove(&channel)
                    .with_context(|| format!("an unasked unsubscribed: {ev}"))?;
                ensure!(f.leaving, "unsubscribed without unsubscribe: {ev}");
            }
            "error" if self.error_expected && ev["data"]["code"] == "bad_request" => {
                self.error_expected = false;
            }
            "error" => bail!("client {}: unexpected error {ev}", self.id),
            "ack" | "pong" | "presence:join" | "presence:update" | "presence:leave"
            | "presence.join" | "presence.update" | "presence.leave" | "connected" => {}
            other => bail!("client {}: unknown event {other}: {ev}", self.id),
        }
        Ok(ev)
    }
}

#[test]
fn a_random_walk_on_two_shards_loses_duplicates_and_reorders_nothing() -> Result<()> {
    walk(0x5eed_0000_0000_0001, 2)
}

#[test]
fn a_random_walk_on_three_shards_loses_duplicates_and_reorders_nothing() -> Result<()> {
    walk(0x5eed_0000_0000_0002, 3)
}

#[test]
fn a_random_walk_on_one_shard_loses_duplicates_and_reorders_nothing() -> Result<()> {
    walk(0x5eed_0000_0000_0003, 1)
}

/// A walk while the configuration is reloaded (SIGHUP) over and over, each time with
/// another presence TTL and message bound that the walk never reaches: a reload swaps
/// every tenant's limits under live traffic and must change nothing the walk sees.
#[test]
fn a_random_walk_under_config_reloads_loses_duplicates_and_reorders_nothing() -> Result<()> {
    let config = |n: u64| {
        format!(
            "[[tenants]]\nid = \"dev\"\nplan = \"enterprise\"\npresence_ttl_secs = {}\n\
             max_message_bytes = {}\n",
            30 + n % 7,
            1_000_000 + n * 1_000
        )
    };
    let (server, path) = Server::start_with_config(&config(0), &["--dev"])?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (stop, pid) = (stop.clone(), server.pid());
        std::thread::spawn(move || -> Result<u64> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2_000 {
                n += 1;
                std::fs::write(&path, config(n))?;
                // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the
                // server, a child of this process that is not reaped while `server`
                // lives (the walk holds it until this thread is joined).
                let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                ensure!(rc == 0, "SIGHUP: {}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(n)
        })
    };
    let server = Mutex::new(server);
    let walked = walk_on(&server, 0x5eed_0000_0000_0004, None);
    let server = server.into_inner().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloader.join().expect("reloader thread")?;
    walked?;
    ensure!(reloads > 5, "only {reloads} reloads during the walk");
    server.await_log_line(&["config reloaded"])?;
    ensure!(
        !server.stderr_text().contains("reload refused"),
        "a reload was refused: {}",
        server.stderr_tail()
    );
    Ok(())
}

/// A walk while the server is killed (SIGKILL) and restarted three times: every walker
/// reconnects and resumes, every resume says `recovered: true`, every acknowledged
/// publish is kept at its seq, and no seq is reused (what a client saw before a kill is
/// what the history holds after it). A publish the kill cut off before its ack may or
/// may not be kept.
#[test]
fn a_random_walk_across_kill9_restarts_keeps_every_acked_message() -> Result<()> {
    const KILLS: usize = 3;
    let server = Server::start(&[])?;
    let crashes = Arc::new(Crashes {
        state: Mutex::new(CrashState {
            addr: server.addr(),
            generation: 0,
            down: false,
        }),
        restarted: Condvar::new(),
        maybe: Mutex::default(),
    });
    let server = Arc::new(Mutex::new(server));
    let (progress, ops_done) = std::sync::mpsc::channel::<usize>();
    let killer = {
        let (server, crashes) = (server.clone(), crashes.clone());
        std::thread::spawn(move || -> Result<usize> {
            let total = 3 * OPS_PER_CLIENT;
            let mut kills = 0;
            // Walker 0's op count; the kills fall at a quarter, a half, three quarters.
            while let Ok(op) = ops_done.recv_timeout(SOAK_LIMIT) {
                if kills < KILLS && op >= (kills + 1) * total / (KILLS + 1) {
                    crashes.state.lock().unwrap().down = true;
                    let mut server = server.lock().unwrap();
                    server.restart_after_kill9()?;
                    let mut state = crashes.state.lock().unwrap();
                    state.addr = server.addr();
                    state.generation += 1;
                    state.down = false;
                    crashes.restarted.notify_all();
                    kills += 1;
                }
            }
            Ok(kills)
        })
    };
    let walked = walk_on(&server, 0x5eed_0000_0000_0005, Some((crashes, progress)));
    let kills = killer.join().expect("killer thread")?;
    walked?;
    ensure!(kills == KILLS, "only {kills} kills");
    Ok(())
}

/// One soak: `CLIENTS` walkers from `seed` on a server with `shards` shards.
fn walk(seed: u64, shards: usize) -> Result<()> {
    let shards = shards.to_string();
    let server = Server::start(&["--shards", &shards])?;
    walk_on(&Mutex::new(server), seed, None)
}

/// `CLIENTS` walkers from `seed` (or `RINGCAST_SOAK_SEED`) on `server`; with `crashes`,
/// another thread kills and restarts it meanwhile, and `progress` hears walker 0's op
/// count (for the killer to act on).
fn walk_on(
    server: &Mutex<Server>,
    seed: u64,
    crashes: Option<(Arc<Crashes>, std::sync::mpsc::Sender<usize>)>,
) -> Result<()> {
    let seed = soak_seed(seed)?;
    let ops = if crashes.is_some() {
        3 * OPS_PER_CLIENT
    } else {
        OPS_PER_CLIENT
    };
    let acked: Acked = Arc::default();
    let deadline = Instant::now() + SOAK_LIMIT;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (client, _) = Client::connect(&server.lock().unwrap(), "")?;
            let progress = crashes.as_ref().filter(|_| id == 0).map(|(_, p)| p.clone());
            let mut walker = Walker {
                id,
                server_addr: server.lock().unwrap().addr(),
                crashes: crashes.as_ref().map(|(c, _)| c.clone()),
                conn_generation: 0,
                in_flight: None,
                error_expected: false,
                present: Default::default(),
                trail: Trail::new(40, 160),
                client,
                rng: Rng::new(seed, id as u64),
                epoch: HashMap::new(),
                following: HashMap::new(),
                last_seen: HashMap::new(),
                seen: BTreeMap::new(),
                acked: acked.clone(),
                published: 0,
                deadline,
            };
            walker.client.expect_event("connected")?;
            Ok(std::thread::spawn(move || -> Result<_> {
                for op in 0..ops {
                    let stepped = match walker.step() {
                        Err(_) if walker.crashed() => walker.recover(),
                        other => other,
                    };
                    if let Err(e) = stepped {
                        return Err(e.context(format!(
                            "client {id}, op {op}, seed {seed:#x}; last frames:\n{}",
                            walker.trail.text()
                        )));
                    }
                    if let Some(progress) = &progress {
                        let _ = progress.send(op);
                    }
                }
                Ok(walker.seen)
            }))
        })
        .collect::<Result<_>>()?;
    let maybe_source = crashes.map(|(c, _)| c);
    let mut seen_by_all = Vec::new();
    for t in threads {
        seen_by_all.push(t.join().expect("client thread")?);
    }

    let acked = acked.lock().unwrap().clone();
    let maybe = maybe_source
        .map(|c| c.maybe.lock().unwrap().clone())
        .unwrap_or_default();
    let mut reader = Client::open(&server.lock().unwrap(), "")?;
    let mut kept_unacked = 0;
    for (channel, messages) in &acked {
        reader.send_json(&json!({"action": "subscribe", "channel": channel, "lastEventId": 0}))?;
        let mut replayed = BTreeMap::new();
        loop {
            let ev = reader.recv_event(TIMEOUT)?;
            match ev["event"].as_str() {
                Some("realtime.message") => {
                    replayed.insert(ev["seq"].as_u64().context("seq")?, ev["data"].to_string());
                }
                Some("subscribed") => {
                    ensure!(ev["recovered"] == true, "{ev}");
                    let last = ev["seq"].as_u64().context("seq")?;
                    ensure!(
                        replayed.keys().copied().eq(1..=last),
                        "{channel}: the replay from 0 is not seqs 1..={last}"
                    );
                    break;
                }
                _ => {}
            }
        }
        // Every acknowledged publish is kept at its seq; anything else kept is a publish
        // the server died before acknowledging.
        for (seq, data) in messages {
            ensure!(
                replayed.get(seq) == Some(data),
                "{channel} seq {seq}: acked {data}, kept {:?}",
                replayed.get(seq)
            );
        }
        for (seq, data) in &replayed {
            if !messages.contains_key(seq) {
                ensure!(
                    maybe.contains(data),
                    "{channel} seq {seq}: kept {data}, which no one published"
                );
                kept_unacked += 1;
            }
        }
        for seen in &seen_by_all {
            for ((ch, seq), data) in seen.range((channel.clone(), 0)..=(channel.clone(), u64::MAX))
            {
                ensure!(
                    replayed.get(seq) == Some(data),
                    "{ch} seq {seq}: a client saw {data}, kept is {:?}",
                    replayed.get(seq)
                );
            }
        }
    }
    if !maybe.is_empty() {
        eprintln!(
            "{} publishes unacknowledged at a kill, {kept_unacked} of them kept",
            maybe.len()
        );
    }
    let total: usize = acked.values().map(BTreeMap::len).sum();
    ensure!(total > 100, "the walk published only {total} messages");
    Ok(())
}
