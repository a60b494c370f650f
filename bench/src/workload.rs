//! Workloads W1–W6 of `shared/BENCHMARKS.md`, each driving one [`Pool`].
//!
//! Two ways to publish:
//! - closed loop (`window` bursts in flight): publish K, wait until every expected
//!   delivery arrived, repeat. Used to find saturation (W1, the W2 probe).
//! - open loop (`rate`): burst `b` is due at `t0 + b·K/rate`, and its payload carries
//!   that INTENDED time, so a late loop turn never hides latency (no coordinated
//!   omission).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{ConnIx, Ended, Pool, Protocol};
use crate::payload;
use crate::procfs;
use crate::report::Report;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ws://127.0.0.1:PORT/path`.
    pub url: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Name of the server under test, echoed in the report.
    pub label: String,
    /// `w1`…`w6`.
    pub workload: String,
    /// Subscribers (W1/W3), connections (W2/W4/W5/W6).
    pub subscribers: usize,
    /// Data object size in bytes.
    pub payload: usize,
    /// Publishes back to back per burst.
    pub burst: usize,
    /// Open-loop publishes per second; `None` = closed loop (saturation).
    pub rate: Option<f64>,
    /// Measured seconds (per phase).
    pub duration_s: f64,
    /// Unmeasured seconds first.
    pub warmup_s: f64,
    /// Bursts in flight in closed loop.
    pub window: usize,
    /// Each publish in its own `write` (else a burst's K in one).
    pub write_each: bool,
    /// Server process for CPU and RSS.
    pub server_pid: Option<u32>,
    /// Publisher connections (W1/W3 default 1, the others 4).
    pub publishers: usize,
    /// Handshakes in flight while ramping.
    pub max_inflight: usize,
    /// Percent of readers stopped in W6.
    pub stopped_pct: f64,
    /// W6: publishes per second to the stopped readers' own channel in the stalled phase.
    pub hot_rate: f64,
    /// W6: their data size in bytes.
    pub hot_payload: usize,
    /// Reconnects per second in W4's churn phase.
    pub churn_per_s: f64,
    /// W2/W6: write each open-loop phase's deliveries (arrival, latency) to
    /// `<prefix>.<phase>.tsv` (`--latency-trace`).
    pub latency_trace: Option<String>,
    /// `ren-fanout` against Nchan (one message per POST) instead of Ringcast (K events
    /// per POST).
    pub nchan: bool,
    /// Put before every channel name (W1/W2/W6), so several load generators at once use
    /// channels of their own (`bench/scripts/scaling.sh`).
    pub channel_prefix: String,
    /// W1/W2/W6: after set-up, wait until this wall-clock time (Unix ms) before the
    /// measured part, so several load generators measure the same seconds.
    pub start_at_ms: Option<u64>,
}

/// Waits, still reading, until `cfg.start_at_ms` (if given); reports how late set-up
/// made this load generator (`start_late_ms`, 0 when it was in time).
fn wait_for_start(cfg: &Config, pool: &mut Pool, r: &mut Report) -> anyhow::Result<()> {
    let Some(at) = cfg.start_at_ms else {
        return Ok(());
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    r.int("start_late_ms", now_ms().saturating_sub(at));
    // Bounded: at most the time left until `at`, in 5 ms turns.
    while now_ms() < at {
        let left = at - now_ms();
        pool.turn(Some(Duration::from_millis(left.min(5))))?;
    }
    Ok(())
}

/// Runs the workload named in `cfg`.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let mut r = Report::default();
    r.str("server", &cfg.label);
    r.str("workload", &cfg.workload);
    r.int("subscribers", cfg.subscribers as u64);
    r.int("payload", cfg.payload as u64);
    r.int("burst", cfg.burst as u64);
    match cfg.workload.as_str() {
        "w1" => fanout(cfg, cfg.rate, &mut r)?,
        "w3" => fanout(cfg, Some(cfg.rate.unwrap_or(10_000.0)), &mut r)?,
        "w2" => personal_and_group(cfg, false, &mut r)?,
        "w6" => personal_and_group(cfg, true, &mut r)?,
        "w4" => storm_and_churn(cfg, &mut r)?,
        "w5" => idle(cfg, &mut r)?,
        "http-publish" => crate::publish_api::run(cfg, true, &mut r)?,
        "ws-publish" => crate::publish_api::run(cfg, false, &mut r)?,
        "ren-fanout" => crate::ren_fanout::run(cfg, &mut r)?,
        other => anyhow::bail!(
            "unknown workload {other:?} (w1…w6, http-publish, ws-publish, ren-fanout)"
        ),
    }
    Ok(r)
}

/// Where publishes go and how many deliveries each expects.
#[derive(Debug)]
struct Traffic {
    publishers: Vec<ConnIx>,
    channels: Vec<String>,
    expected: Vec<u32>,
    burst: usize,
    payload: usize,
    next_id: u64,
    rr: usize,
    rng: u64,
    data: Vec<u8>,
}

impl Traffic {
    fn new(publishers: Vec<ConnIx>, channels: Vec<(String, u32)>, cfg: &Config) -> Traffic {
        let (channels, expected) = channels.into_iter().unzip();
        Traffic {
            publishers,
            channels,
            expected,
            burst: cfg.burst.max(1),
            payload: cfg.payload,
            next_id: 0,
            rr: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            data: Vec::new(),
        }
    }

    /// K publishes back to back from one publisher, each to a uniformly chosen channel.
    fn burst(&mut self, pool: &mut Pool, intended_ns: u64) {
        let publisher = self.publishers[self.rr % self.publishers.len()];
        self.rr += 1;
        for _ in 0..self.burst {
            let t = if self.channels.len() == 1 {
                0
            } else {
                self.rand() % self.channels.len()
            };
            payload::write_data(&mut self.data, intended_ns, self.next_id, self.payload);
            pool.publish(
                publisher,
                &self.channels[t],
                &self.data,
                self.next_id,
                intended_ns,
                self.expected[t],
            );
            self.next_id += 1;
        }
    }

    fn rand(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as usize
    }
}

const STALL: Duration = Duration::from_secs(5);

/// Closed loop for `secs`: a new burst whenever fewer than `window` bursts are in flight.
fn closed_loop(pool: &mut Pool, tr: &mut Traffic, window: usize, secs: f64) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let limit = (window.max(1) * tr.burst) as u64;
    let mut last = (pool.stats.deliveries, Instant::now());
    while t0.elapsed().as_secs_f64() < secs {
        while pool.outstanding() + tr.burst as u64 <= limit {
            let now = pool.now_ns();
            tr.burst(pool, now);
        }
        pool.turn(Some(Duration::from_millis(1)))?;
        if pool.stats.deliveries != last.0 {
            last = (pool.stats.deliveries, Instant::now());
        } else if last.1.elapsed() > STALL {
            anyhow::bail!(
                "stalled: no delivery for {STALL:?}, {} messages outstanding, {} closed by server",
                pool.outstanding(),
                pool.stats.closed_by_server
            );
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// What an open-loop phase saw.
#[derive(Debug)]
struct OpenLoop {
    secs: f64,
    /// Deliveries that arrived before publishing stopped.
    in_window: u64,
    published: u64,
}

/// An open-loop schedule: burst `b` is due at `t0 + b·K/rate` on the pool's clock.
#[derive(Debug)]
struct Schedule {
    t0: u64,
    bursts_per_s: f64,
    /// The next burst to send.
    b: u64,
}

impl Schedule {
    /// Starts now, at `rate` publishes a second.
    fn new(pool: &Pool, tr: &Traffic, rate: f64) -> Schedule {
        Schedule {
            t0: pool.now_ns(),
            bursts_per_s: (rate / tr.burst as f64).max(1e-3),
            b: 0,
        }
    }

    fn due(&self, b: u64) -> u64 {
        self.t0 + (b as f64 * 1e9 / self.bursts_per_s) as u64
    }

    /// Sends every burst as it falls due, reading meanwhile, until `end` (pool clock,
    /// ns). The schedule goes on where the last call left it: time spent between calls
    /// makes the bursts due meanwhile late, stamped with when they were due.
    fn run_until(&mut self, pool: &mut Pool, tr: &mut Traffic, end: u64) -> io::Result<()> {
        loop {
            let now = pool.now_ns();
            if now >= end {
                return Ok(());
            }
            // Every burst already due leaves now, stamped with the time it was due.
            while self.due(self.b) <= now {
                tr.burst(pool, self.due(self.b));
                self.b += 1;
            }
            let wait = self.due(self.b).min(end).saturating_sub(pool.now_ns());
            // epoll waits whole milliseconds: below one, spin (the load generator owns
            // its core).
            let timeout = if wait < 1_000_000 {
                Duration::ZERO
            } else {
                Duration::from_nanos(wait)
            };
            pool.turn(Some(timeout))?;
        }
    }
}

/// Open loop at `rate` publishes/s for `secs`, then up to `drain` for stragglers.
fn open_loop(
    pool: &mut Pool,
    tr: &mut Traffic,
    rate: f64,
    secs: f64,
    drain: Duration,
) -> anyhow::Result<OpenLoop> {
    let mut schedule = Schedule::new(pool, tr, rate);
    let t0 = schedule.t0;
    let d0 = pool.stats.deliveries;
    let id0 = tr.next_id;
    schedule.run_until(pool, tr, t0 + (secs * 1e9) as u64)?;
    let secs = (pool.now_ns() - t0) as f64 / 1e9;
    let in_window = pool.stats.deliveries - d0;
    let t_drain = Instant::now();
    while pool.outstanding() > 0 && t_drain.elapsed() < drain {
        pool.turn(Some(Duration::from_millis(5)))?;
    }
    Ok(OpenLoop {
        secs,
        in_window,
        published: tr.next_id - id0,
    })
}

fn cpu(cfg: &Config) -> Option<f64> {
    cfg.server_pid.and_then(procfs::cpu_seconds)
}

fn rss(cfg: &Config) -> Option<u64> {
    cfg.server_pid.and_then(procfs::rss_bytes)
}

fn memory(cfg: &Config) -> Option<procfs::Memory> {
    cfg.server_pid.and_then(procfs::memory)
}

fn connect_report(pool: &Pool, r: &mut Report, secs: f64, n: usize) {
    r.num("connect_s", secs);
    r.num("connects_per_s", n as f64 / secs.max(1e-9));
    r.hist("handshake", &pool.stats.handshake_us);
    r.hist("ready", &pool.stats.ready_us);
}

fn server_report(cfg: &Config, r: &mut Report, cpu0: Option<f64>, deliveries: u64) {
    if let (Some(a), Some(b)) = (cpu0, cpu(cfg)) {
        r.num("server_cpu_s", b - a);
        r.num(
            "cpu_s_per_m_deliveries",
            (b - a) / deliveries.max(1) as f64 * 1e6,
        );
    }
    if let Some(m) = rss(cfg) {
        r.int("server_rss_bytes", m);
    }
}

/// What the checks on every delivery found (`verify`), since the pool started: a
/// nonzero `delivery_errors` means the run's figures count wrong deliveries.
fn verify_report(pool: &Pool, r: &mut Report) {
    let c = pool.verifier.counts;
    r.int("deliveries_checked", c.checked);
    r.int("delivery_errors", c.errors());
    r.int("misrouted", c.misrouted);
    r.int("repeated_or_reordered", c.repeated_or_reordered);
    r.int("unknown_ids", c.unknown);
    if c.errors() > 0 {
        eprintln!(
            "loadgen: {} of {} deliveries broke a check ({} misrouted, {} repeated or reordered, {} unknown)",
            c.errors(),
            c.checked,
            c.misrouted,
            c.repeated_or_reordered,
            c.unknown
        );
    }
}

/// W1 (closed loop, saturation) and W3 (open loop at a fixed rate): one publisher,
/// N subscribers on channel `bench`.
fn fanout(cfg: &Config, rate: Option<f64>, r: &mut Report) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pool = Pool::new(&cfg.url, cfg.protocol, start)?;
    pool.write_each = cfg.write_each;
    r.str("writes", if cfg.write_each { "each" } else { "burst" });
    let n = cfg.subscribers;
    let publishers = cfg.publishers.max(1);
    let channel = format!("{}bench", cfg.channel_prefix);
    let mut specs = vec![vec![channel.clone()]; n];
    specs.extend((0..publishers).map(|_| Vec::new()));
    let total = n + publishers;
    let (ixs, secs, errors) =
        pool.connect_all(specs, cfg.max_inflight, Duration::from_secs(120))?;
    anyhow::ensure!(errors == 0, "{errors} of {total} connections failed");
    connect_report(&pool, r, secs, total);
    r.int("publishers", publishers as u64);
    let mut tr = Traffic::new(ixs[n..].to_vec(), vec![(channel, n as u32)], cfg);
    wait_for_start(cfg, &mut pool, r)?;

    // Warm-up, then let everything in flight land before measuring.
    match rate {
        None => closed_loop(&mut pool, &mut tr, cfg.window, cfg.warmup_s)?,
        Some(rate) => open_loop(&mut pool, &mut tr, rate, cfg.warmup_s, Duration::ZERO)?.secs,
    };
    let t = Instant::now();
    while pool.outstanding() > 0 && t.elapsed() < STALL {
        pool.turn(Some(Duration::from_millis(5)))?;
    }
    pool.reset_stats();

    let cpu0 = cpu(cfg);
    let (secs, deliveries, published) = match rate {
        None => {
            r.str("mode", "closed");
            r.int("window", cfg.window as u64);
            let id0 = tr.next_id;
            let secs = closed_loop(&mut pool, &mut tr, cfg.window, cfg.duration_s)?;
            (secs, pool.stats.deliveries, tr.next_id - id0)
        }
        Some(rate) => {
            r.str("mode", "open");
            r.num("rate", rate);
            let o = open_loop(
                &mut pool,
                &mut tr,
                rate,
                cfg.duration_s,
                Duration::from_secs(2),
            )?;
            (o.secs, o.in_window, o.published)
        }
    };
    let total = pool.stats.deliveries;
    r.num("duration_s", secs);
    r.int("published", published);
    r.int("deliveries", total);
    r.num("msgs_per_s", published as f64 / secs);
    r.num("deliveries_per_s", deliveries as f64 / secs);
    r.int("lagging_msgs", pool.outstanding());
    r.int("error_events", pool.stats.error_events);
    report_error_codes(&pool, &cfg.workload);
    r.hist("completion", &pool.stats.completion_us);
    r.hist("latency", &pool.stats.latency_us);
    r.num(
        "frames_per_read",
        pool.stats.frames_in as f64 / pool.stats.reads.max(1) as f64,
    );
    r.int("closed_by_server", pool.stats.closed_by_server);
    server_report(cfg, r, cpu0, total);
    verify_report(&pool, r);
    Ok(())
}

/// What W2/W6's set-up opened.
#[derive(Debug)]
struct PersonalGroup {
    /// Connection `i` of C is on `p{i}` and `g{i/10}`.
    subs: Vec<ConnIx>,
    /// On no channel: W2's publishers.
    pubs: Vec<ConnIx>,
    /// W6: one more on no channel, the hot channel's own publisher, so W2's publishes
    /// do not queue behind its bursts of 32 KiB in the load generator's own socket
    /// (found in review: they shared W2's first publisher).
    hot_pub: Option<ConnIx>,
    /// W2's channels and how many deliveries each publish to them expects.
    channels: Vec<(String, u32)>,
    /// The same counts less W6's readers to stop (`channels`' order): what the other
    /// readers are expected to get while those do not read.
    live: Vec<u32>,
}

/// W2's channels for C connections with their expected delivery counts (`p{i}` 1, `g{g}`
/// its members), and the counts less every `every`-th connection (W6's readers to stop;
/// `None`: no reader stops).
fn personal_group_channels(
    pre: &str,
    c: usize,
    every: Option<usize>,
) -> (Vec<(String, u32)>, Vec<u32>) {
    let stops = |i: usize| every.is_some_and(|e| i.is_multiple_of(e));
    let mut channels: Vec<(String, u32)> = (0..c).map(|i| (format!("{pre}p{i}"), 1)).collect();
    let mut live: Vec<u32> = (0..c).map(|i| u32::from(!stops(i))).collect();
    for g in 0..c.div_ceil(10) {
        let members = g * 10..(g * 10 + 10).min(c);
        channels.push((format!("{pre}g{g}"), members.len() as u32));
        live.push(members.filter(|&i| !stops(i)).count() as u32);
    }
    (channels, live)
}

/// W2/W6 setup: C connections, each on `p{i}` and the 10-member group `g{i/10}`, plus
/// publishers on no channel; with `hot = Some((channel, every))`, every `every`-th
/// connection also follows `channel` (W6's readers to stop), and one more connection on
/// no channel publishes to it.
fn personal_group_setup(
    cfg: &Config,
    pool: &mut Pool,
    r: &mut Report,
    hot: Option<(&str, usize)>,
) -> anyhow::Result<PersonalGroup> {
    let c = cfg.subscribers;
    let pre = &cfg.channel_prefix;
    let mut specs: Vec<Vec<String>> = (0..c)
        .map(|i| {
            let mut spec = vec![format!("{pre}p{i}"), format!("{pre}g{}", i / 10)];
            if let Some((channel, _)) = hot.filter(|(_, every)| i % every == 0) {
                spec.push(channel.to_owned());
            }
            spec
        })
        .collect();
    let publishers = cfg.publishers.max(1);
    specs.extend((0..publishers + usize::from(hot.is_some())).map(|_| Vec::new()));
    let total = specs.len();
    let (ixs, secs, errors) =
        pool.connect_all(specs, cfg.max_inflight, Duration::from_secs(180))?;
    anyhow::ensure!(errors == 0, "{errors} of {total} connections failed");
    connect_report(pool, r, secs, total);
    let (channels, live) = personal_group_channels(pre, c, hot.map(|(_, every)| every));
    Ok(PersonalGroup {
        subs: ixs[..c].to_vec(),
        pubs: ixs[c..c + publishers].to_vec(),
        hot_pub: ixs.get(c + publishers).copied().filter(|_| hot.is_some()),
        channels,
        live,
    })
}

/// Finds the closed-loop maximum publish rate with many messages in flight.
fn probe_max_rate(pool: &mut Pool, tr: &mut Traffic, secs: f64) -> anyhow::Result<f64> {
    let c0 = pool.stats.completed;
    let took = closed_loop(pool, tr, 256 / tr.burst.max(1), secs)?;
    Ok((pool.stats.completed - c0) as f64 / took)
}

fn phase_report(pool: &Pool, r: &mut Report, tag: &str, o: &OpenLoop) {
    r.num(&format!("{tag}_duration_s"), o.secs);
    r.int(&format!("{tag}_published"), o.published);
    r.num(
        &format!("{tag}_deliveries_per_s"),
        o.in_window as f64 / o.secs,
    );
    r.int(&format!("{tag}_lagging_msgs"), pool.outstanding());
    r.int(
        &format!("{tag}_closed_by_server"),
        pool.stats.closed_by_server,
    );
    r.int(&format!("{tag}_error_events"), pool.stats.error_events);
    report_error_codes(pool, tag);
    r.hist(&format!("{tag}_latency"), &pool.stats.latency_us);
}

/// Says on stderr which `error` events the server sent since the last reset, if any:
/// refused publishes are not lag or loss (found in review: they were not counted).
fn report_error_codes(pool: &Pool, tag: &str) {
    if pool.stats.error_events == 0 {
        return;
    }
    let mut codes: Vec<(&String, &u64)> = pool.stats.error_codes.iter().collect();
    codes.sort();
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    eprintln!(
        "loadgen: {tag}: the server sent {} error events ({}); a refused publish also counts as lag",
        pool.stats.error_events,
        codes.join(", ")
    );
}

/// Where a phase's latency trace starts: the pool's clock and `CLOCK_MONOTONIC`, read
/// together just after the phase's stats were reset.
#[derive(Debug, Clone, Copy)]
struct TraceStart {
    pool_us: u64,
    monotonic_us: u64,
}

impl TraceStart {
    fn now(pool: &Pool) -> TraceStart {
        TraceStart {
            pool_us: pool.now_ns() / 1000,
            monotonic_us: procfs::monotonic_us(),
        }
    }
}

/// Writes one phase's deliveries to `<prefix>.<tag>.tsv` when `--latency-trace` is on:
/// a `#` header with the phase start on `CLOCK_MONOTONIC` (to line up with
/// `perf record -k CLOCK_MONOTONIC`), then `arrival_us<TAB>latency_us` per delivery,
/// arrival counted from the phase start. `bench/scripts/latency-gaps.py` reads it.
fn write_latency_trace(
    cfg: &Config,
    pool: &Pool,
    tag: &str,
    start: TraceStart,
) -> anyhow::Result<()> {
    let Some(prefix) = &cfg.latency_trace else {
        return Ok(());
    };
    let path = format!("{prefix}.{tag}.tsv");
    let file = std::fs::File::create(&path).with_context(|| format!("creating {path}"))?;
    let mut out = std::io::BufWriter::new(file);
    let trace = &pool.stats.latency_trace;
    writeln!(
        out,
        "# loadgen latency trace: server {}, workload {}, phase {tag}, {} deliveries",
        cfg.label,
        cfg.workload,
        trace.len()
    )?;
    writeln!(out, "# phase_start_monotonic_us {}", start.monotonic_us)?;
    writeln!(out, "# arrival_us\tlatency_us")?;
    for &(arrival, latency) in trace {
        writeln!(out, "{}\t{latency}", arrival.saturating_sub(start.pool_us))?;
    }
    out.flush().with_context(|| format!("writing {path}"))?;
    Ok(())
}

/// W6's load: the fraction of the probed maximum both phases run at (the goal is set at
/// 80 %, as W2's second phase; it ran at half before 2026-12-08).
const W6_LOAD: f64 = 0.8;

/// W6's stalled phase goes in chunks this long: the hot channel's publishes are spread
/// over them (at 100/s, 5 of 32 KiB a chunk) and server memory is sampled after each.
/// They went in 250 ms chunks before, 25 × 32 KiB at once (found in review).
const W6_CHUNK_S: f64 = 0.05;

/// What a server under test queues for one reader that stopped, at most, before it closes
/// it or drops what it would send: 4 MiB, Ringcast's default outbound bound (4008 past
/// it) and the `backpressureLimit` of `peers/bun/server.mjs` (dropped past it).
const W6_SERVER_QUEUE_BYTES: u64 = 4 << 20;

/// What one stopped reader's path holds before its server has to close it or drop
/// anything: the server's own queue ([`W6_SERVER_QUEUE_BYTES`]), its kernel send buffer
/// (grown up to `tcp_wmem`'s most) and the reader's receive buffer (`tcp_rmem`'s default:
/// not grown while unread). 8.5 MB on this box, what each of Bun's stopped readers got
/// in the run of 2026-12-08 (259 × 32 KiB). A stalled phase that sends a reader no more
/// than this measures nothing about stalled readers: compare.sh `--quick`'s 1 s sends
/// 3.3 MB (found in review: its rows showed 0 closed, 0 lost, and said nothing).
fn stopped_reader_buffers() -> u64 {
    W6_SERVER_QUEUE_BYTES
        + procfs::tcp_wmem_max().unwrap_or(4 << 20)
        + procfs::tcp_rmem_default().unwrap_or(128 << 10)
}

/// W6's channel that only the readers to stop follow.
///
/// They keep the kernel's default receive buffer (128 KiB on this box; it grows only
/// while read). A 4 KiB `SO_RCVBUF`, set at first so that the server and not the load
/// generator's kernel would hold what they did not read, made loopback TCP drop the
/// server's segments (each larger than that buffer), and the server's retransmissions
/// backed off to seconds (`ss` on Bun's side after 3 s: rto 3.3 s, backoff 4), so when
/// the readers read again they got what the server still held at about one 32 KiB
/// message per 0.8 s, and the end's 1 s wait counted Bun's queue as lost (found checking
/// the loss count). The default buffer holds under 1 % of the 16 MB sent.
const HOT: &str = "w6hot";

/// W2 (`stalled = false`): end-to-end latency at 50 % and 80 % of the maximum (`--rate`,
/// or else the closed-loop probe's).
/// W6 (`stalled = true`): the same traffic at [`W6_LOAD`] of the maximum before and after
/// 1 % of readers stop reading,
/// while a channel only they follow gets `hot_rate` publishes of `hot_payload` bytes a
/// second; server RSS sampled throughout; at the end the stopped readers read again, to
/// count those the server had closed.
fn personal_and_group(cfg: &Config, stalled: bool, r: &mut Report) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pool = Pool::new(&cfg.url, cfg.protocol, start)?;
    let every = (100.0 / cfg.stopped_pct.max(0.01)).round().max(1.0) as usize;
    let hot = format!("{}{HOT}", cfg.channel_prefix);
    let hot_spec = stalled.then_some((hot.as_str(), every));
    let set = personal_group_setup(cfg, &mut pool, r, hot_spec)?;
    let (subs, hot_publisher, live) = (set.subs, set.hot_pub, set.live);
    let mut tr = Traffic::new(set.pubs, set.channels, cfg);
    wait_for_start(cfg, &mut pool, r)?;
    let probed = match cfg.rate {
        // With `--rate`, W2 and W6 alike: that is the maximum, for every server alike,
        // and the phases run at their fractions of it (found in review: W6 ran at `--rate`
        // itself, so compare.sh's `--w2-max R` could not reach it as it reaches W2).
        Some(rate) => {
            r.num("max_msgs_per_s", rate);
            rate
        }
        None => {
            let (cpu0, own0, t0) = (
                cpu(cfg),
                procfs::cpu_seconds(std::process::id()),
                Instant::now(),
            );
            let m = probe_max_rate(&mut pool, &mut tr, cfg.duration_s.min(5.0))?;
            r.num("max_msgs_per_s", m);
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            // Near 1.0 that side sets the maximum; both well below it: latency does
            // (the probe keeps a fixed number of publishes in flight).
            if let (Some(a), Some(b)) = (cpu0, cpu(cfg)) {
                r.num("max_server_busy", (b - a) / secs);
            }
            if let (Some(a), Some(b)) = (own0, procfs::cpu_seconds(std::process::id())) {
                r.num("max_loadgen_busy", (b - a) / secs);
            }
            m
        }
    };
    let drain = Duration::from_secs(2);
    // Only the open-loop phases are traced (not the set-up or the probe).
    pool.trace_latency = cfg.latency_trace.is_some();
    if !stalled {
        for (tag, frac) in [("at50", 0.5), ("at80", 0.8)] {
            pool.reset_stats();
            let trace_start = TraceStart::now(&pool);
            let cpu0 = cpu(cfg);
            let steal0 = procfs::steal_ms();
            let rate = probed * frac;
            r.num(&format!("{tag}_rate"), rate);
            let o = open_loop(&mut pool, &mut tr, rate, cfg.duration_s, drain)?;
            phase_report(&pool, r, tag, &o);
            if let (Some(a), Some(b)) = (steal0, procfs::steal_ms()) {
                r.num(&format!("{tag}_box_steal_ms"), b - a);
            }
            if let (Some(a), Some(b)) = (cpu0, cpu(cfg)) {
                r.num(
                    &format!("{tag}_cpu_s_per_m_deliveries"),
                    (b - a) / o.in_window.max(1) as f64 * 1e6,
                );
            }
            write_latency_trace(cfg, &pool, tag, trace_start)?;
        }
        if let Some(m) = rss(cfg) {
            r.int("server_rss_bytes", m);
        }
        verify_report(&pool, r);
        return Ok(());
    }

    let rate = probed * W6_LOAD;
    r.num("rate", rate);
    pool.reset_stats();
    let trace_start = TraceStart::now(&pool);
    let o = open_loop(&mut pool, &mut tr, rate, cfg.duration_s, drain)?;
    phase_report(&pool, r, "before", &o);
    write_latency_trace(cfg, &pool, "before", trace_start)?;
    let mem_before = memory(cfg);
    r.int("before_server_rss_bytes", mem_before.map_or(0, |m| m.rss));
    r.int(
        "before_server_rss_anon_bytes",
        mem_before.map_or(0, |m| m.rss_anon),
    );

    // The readers to stop are those on the hot channel: every `every`-th connection.
    let stopped: Vec<ConnIx> = subs.iter().copied().step_by(every).collect();
    for &ix in &stopped {
        pool.pause(ix);
    }
    r.int("stopped_readers", stopped.len() as u64);
    // Publishes now expect the other readers only, so `stalled_lagging_msgs` counts what
    // they miss, not what the stopped readers do not read (found in review: it counted
    // both).
    tr.expected = live;
    pool.reset_stats();
    let trace_start = TraceStart::now(&pool);
    let hot_publisher = hot_publisher.context("W6 opens a hot publisher")?;
    let (mut rss_max, mut anon_max) = mem_before.map_or((0, 0), |m| (m.rss, m.rss_anon));
    let mut schedule = Schedule::new(&pool, &tr, rate);
    let t0 = schedule.t0;
    let end = t0 + (cfg.duration_s * 1e9) as u64;
    let d0 = pool.stats.deliveries;
    let chunk_ns = (W6_CHUNK_S * 1e9) as u64;
    let mut hot_published = 0u64;
    let mut data = Vec::new();
    // Time spent on the hot publishes and the memory sample between the chunks, while
    // W2's bursts wait (they leave late, stamped with when they were due).
    let (mut between_ns, mut between_max_ns) = (0u64, 0u64);
    let mut chunk = 0u64;
    while pool.now_ns() < end {
        let b0 = pool.now_ns();
        chunk += 1;
        // This chunk's share of the hot channel's publishes, at its start.
        let due = (cfg.hot_rate * W6_CHUNK_S * chunk as f64) as u64;
        while hot_published < due {
            let now = pool.now_ns();
            payload::write_data(&mut data, now, tr.next_id, cfg.hot_payload);
            // Expected 0: every follower has stopped reading.
            pool.publish(hot_publisher, &hot, &data, tr.next_id, now, 0);
            tr.next_id += 1;
            hot_published += 1;
        }
        if let Some(m) = memory(cfg) {
            rss_max = rss_max.max(m.rss);
            anon_max = anon_max.max(m.rss_anon);
        }
        let took = pool.now_ns() - b0;
        between_ns += took;
        between_max_ns = between_max_ns.max(took);
        schedule.run_until(&mut pool, &mut tr, (t0 + chunk * chunk_ns).min(end))?;
    }
    let agg = OpenLoop {
        secs: (pool.now_ns() - t0) as f64 / 1e9,
        in_window: pool.stats.deliveries - d0,
        published: schedule.b * tr.burst as u64,
    };
    let t = Instant::now();
    while t.elapsed() < drain {
        pool.turn(Some(Duration::from_millis(5)))?;
    }
    phase_report(&pool, r, "stalled", &agg);
    write_latency_trace(cfg, &pool, "stalled", trace_start)?;
    r.int("stalled_chunks", chunk);
    r.num("stalled_between_chunks_ms", between_ns as f64 / 1e6);
    r.num("stalled_between_chunks_max_us", between_max_ns as f64 / 1e3);
    r.int("stalled_server_rss_max_bytes", rss_max);
    r.int("stalled_server_rss_anon_max_bytes", anon_max);
    r.int("stalled_server_rss_end_bytes", rss(cfg).unwrap_or(0));
    r.int("closed_by_server", pool.stats.closed_by_server);
    r.num("hot_rate", cfg.hot_rate);
    r.int("hot_published", hot_published);
    let hot_bytes = hot_published * cfg.hot_payload as u64;
    let buffered = stopped_reader_buffers();
    r.int("hot_bytes_per_stopped_reader", hot_bytes);
    r.int("hot_buffered_bytes_per_stopped_reader", buffered);
    r.int("stalled_past_buffers", u64::from(hot_bytes > buffered));
    if hot_bytes <= buffered {
        eprintln!(
            "loadgen: W6's stalled phase sent each stopped reader {hot_bytes} B, within what \
             its server and the kernels buffer for it (about {buffered} B): no server had \
             to close or drop anything, so the stopped readers' closes and losses say \
             nothing (give it more with --duration-s, --hot-rate or --hot-payload)"
        );
    }
    let probed = read_stopped_again(&mut pool, &stopped)?;
    r.int("stopped_readers_probed", probed);
    // The hot publisher publishes nothing else: each error event it got is a hot
    // publish the server refused, which no reader gets, so not a loss.
    let hot_refused = pool.error_events(hot_publisher).min(hot_published);
    r.int("hot_refused", hot_refused);
    let s = stopped_readers_end(&pool, &stopped, &hot, hot_published - hot_refused);
    r.int("stopped_readers_closed", s.closed);
    r.int("stopped_readers_closed_4008", s.closed_4008);
    r.int("stopped_readers_closed_other", s.closed_other);
    r.int("stopped_readers_closed_eof", s.closed_eof);
    r.int("stopped_readers_closed_error", s.closed_error);
    r.int("stopped_readers_closed_malformed", s.closed_malformed);
    r.int("stopped_readers_closed_hot_received", s.closed_hot_received);
    r.int("stopped_readers_lost_msgs", s.lost_msgs);
    r.int("stopped_readers_with_loss", s.with_loss);
    if s.lost_msgs > 0 {
        eprintln!(
            "loadgen: {} stopped readers still open lost {} hot messages in all (of {} each, {} refused)",
            s.with_loss, s.lost_msgs, hot_published, hot_refused
        );
    }
    verify_report(&pool, r);
    Ok(())
}

/// W6's end: how long the stopped readers are read with nothing arriving before those
/// still open are probed, and after the probes before reading stops.
const END_QUIET: Duration = Duration::from_secs(1);

/// W6's end: how long it reads the stopped readers at most, probes included.
const END_LIMIT: Duration = Duration::from_secs(10);

/// W6's end: the stopped readers read again: what the server queued for them arrives,
/// then the close it sent, if it did. Those still open once [`END_QUIET`] passes with
/// nothing read get a ping each, which makes a closed one's reset show (found on the
/// first runs: the server had closed all 100, the load generator saw none). Not sooner: a
/// ping that reaches a socket the server has closed while it still holds data unsent
/// makes the kernel reset the connection and throw that data away, so a ping sent right
/// after the resume (as until the review of 2026-12-08) could turn a reader that would
/// have read everything and the EOF into a reset with part of it. Bounded: each pass
/// until all its readers are closed or [`END_QUIET`] passes with no read, both within
/// [`END_LIMIT`]. Returns how many were probed.
fn read_stopped_again(pool: &mut Pool, stopped: &[ConnIx]) -> io::Result<u64> {
    let t = Instant::now();
    for &ix in stopped {
        pool.resume(ix);
    }
    read_until_quiet(pool, stopped, t)?;
    let open: Vec<ConnIx> = stopped
        .iter()
        .copied()
        .filter(|&ix| pool.is_open(ix))
        .collect();
    for &ix in &open {
        pool.probe(ix);
    }
    if !open.is_empty() {
        read_until_quiet(pool, &open, t)?;
    }
    Ok(open.len() as u64)
}

/// Turns the pool until every one of `conns` is closed, or [`END_QUIET`] passes with no
/// read, or [`END_LIMIT`] since `t0`.
fn read_until_quiet(pool: &mut Pool, conns: &[ConnIx], t0: Instant) -> io::Result<()> {
    let mut last = (pool.stats.reads, Instant::now());
    while t0.elapsed() < END_LIMIT && last.1.elapsed() < END_QUIET {
        if conns.iter().all(|&ix| !pool.is_open(ix)) {
            break;
        }
        pool.turn(Some(Duration::from_millis(5)))?;
        if pool.stats.reads != last.0 {
            last = (pool.stats.reads, Instant::now());
        }
    }
    Ok(())
}

/// How W6's stopped readers ended, once they had read again.
#[derive(Debug, Default, PartialEq, Eq)]
struct StoppedEnd {
    /// Closed by the server, however the load generator saw it.
    closed: u64,
    /// Of those, by a close frame with 4008 (Ringcast's outbound bound).
    closed_4008: u64,
    /// Of those, by a close frame with another code (1008, 1011, 1001, …) or none.
    closed_other: u64,
    /// Of those, by EOF with no close frame before it.
    closed_eof: u64,
    /// Of those, by a failed read or write (a reset, mostly).
    closed_error: u64,
    /// Of those, by a frame the load generator could not parse.
    closed_malformed: u64,
    /// Hot messages the closed ones got before their close.
    closed_hot_received: u64,
    /// Hot messages the ones still open never got, of those the server took (a refused
    /// publish is no loss: its publisher was told): dropped by the server without a
    /// close. A closed one is not counted: its close tells the client to reconnect and
    /// catch up.
    lost_msgs: u64,
    /// Readers still open that lost any.
    with_loss: u64,
}

/// `hot_accepted`: the hot publishes the server took (published less refused).
fn stopped_readers_end(
    pool: &Pool,
    stopped: &[ConnIx],
    hot: &str,
    hot_accepted: u64,
) -> StoppedEnd {
    let mut s = StoppedEnd::default();
    for &ix in stopped {
        let got = pool.received(ix, hot).unwrap_or(0);
        if pool.is_open(ix) {
            let lost = hot_accepted.saturating_sub(got);
            s.lost_msgs += lost;
            s.with_loss += u64::from(lost > 0);
            continue;
        }
        s.count_close(pool.ended(ix), got);
    }
    s
}

impl StoppedEnd {
    /// A stopped reader that is closed: `how` it ended (`None`: the client closed it,
    /// which W6 never does; counted as other, so the kinds add up to `closed`), and the
    /// hot messages it got first.
    fn count_close(&mut self, how: Option<Ended>, got: u64) {
        self.closed += 1;
        self.closed_hot_received += got;
        match how {
            Some(Ended::CloseFrame(Some(4008))) => self.closed_4008 += 1,
            Some(Ended::CloseFrame(_)) | None => self.closed_other += 1,
            Some(Ended::Eof) => self.closed_eof += 1,
            Some(Ended::Error) => self.closed_error += 1,
            Some(Ended::Malformed) => self.closed_malformed += 1,
        }
    }
}

/// W4: a storm of connections (each subscribing to its personal channel), then churn:
/// close a random connection and open a new one, `churn_per_s` times a second.
fn storm_and_churn(cfg: &Config, r: &mut Report) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pool = Pool::new(&cfg.url, cfg.protocol, start)?;
    let limit = procfs::raise_nofile() as usize;
    let n = cfg.subscribers.min(limit.saturating_sub(200));
    r.int("storm_connections", n as u64);
    let specs: Vec<Vec<String>> = (0..n).map(|i| vec![format!("p{i}")]).collect();
    let (ixs, secs, errors) =
        pool.connect_all(specs, cfg.max_inflight, Duration::from_secs(180))?;
    r.num("storm_s", secs);
    r.num("storm_connects_per_s", pool.stats.opened as f64 / secs);
    r.int("storm_errors", errors);
    r.hist("storm_handshake", &pool.stats.handshake_us);

    let mut live: Vec<ConnIx> = ixs.into_iter().filter(|&ix| pool.is_ready(ix)).collect();
    pool.reset_stats();
    let t0 = Instant::now();
    let mut churned = 0u64;
    let mut rng = 0x9e37_79b9_u64;
    let mut next_name = n;
    let mut sync_errors = 0u64;
    while t0.elapsed().as_secs_f64() < cfg.duration_s {
        let want = (t0.elapsed().as_secs_f64() * cfg.churn_per_s) as u64;
        while churned < want && !live.is_empty() && pool.in_progress < cfg.max_inflight {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let victim = live.swap_remove((rng as usize) % live.len());
            pool.close(victim);
            match pool.connect(vec![format!("p{next_name}")]) {
                Ok(ix) => live.push(ix),
                Err(_) => sync_errors += 1,
            }
            next_name += 1;
            churned += 1;
        }
        pool.turn(Some(Duration::from_millis(1)))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    while pool.in_progress > 0 && t.elapsed() < Duration::from_secs(10) {
        pool.turn(Some(Duration::from_millis(5)))?;
    }
    r.num("churn_s", secs);
    r.num("churn_target_per_s", cfg.churn_per_s);
    r.num("churn_connects_per_s", pool.stats.opened as f64 / secs);
    r.int("churn_errors", pool.stats.connect_errors + sync_errors);
    r.int("churn_still_connecting", pool.in_progress as u64);
    r.hist("churn_handshake", &pool.stats.handshake_us);
    r.int("closed_by_server", pool.stats.closed_by_server);
    if let Some(m) = rss(cfg) {
        r.int("server_rss_bytes", m);
    }
    Ok(())
}

/// W5: N idle connections, each on two channels; server RSS and kernel slab per connection.
fn idle(cfg: &Config, r: &mut Report) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pool = Pool::new(&cfg.url, cfg.protocol, start)?;
    let n = cfg.subscribers;
    // Idle means idle for a while: servers may give back per-connection buffers some
    // time after the last write (Ringcast's sweep does within 2 s), as they would for
    // connections that sit quiet for minutes in production.
    let settle = |pool: &mut Pool, wait: Duration| -> anyhow::Result<()> {
        let t = Instant::now();
        while t.elapsed() < wait {
            pool.turn(Some(Duration::from_millis(20)))?;
        }
        Ok(())
    };
    settle(&mut pool, Duration::from_millis(300))?;
    let rss0 = rss(cfg);
    let slab0 = procfs::slab_bytes();
    if let Some(m) = rss0 {
        r.int("server_rss_base_bytes", m);
    }
    if n == 0 {
        return Ok(());
    }
    let specs: Vec<Vec<String>> = (0..n)
        .map(|i| vec![format!("u{i}"), "bench".into()])
        .collect();
    let cpu0 = cpu(cfg);
    let own0 = procfs::cpu_seconds(std::process::id());
    let (_ixs, secs, errors) =
        pool.connect_all(specs, cfg.max_inflight, Duration::from_secs(180))?;
    anyhow::ensure!(errors == 0, "{errors} of {n} connections failed");
    connect_report(&pool, r, secs, n);
    if let (Some(a), Some(b)) = (cpu0, cpu(cfg)) {
        // What set-up costs the server, whatever the rate: less noisy than connects/s
        // on a box where both ends share the kernel's loopback work.
        r.num("connect_cpu_us_per_conn", (b - a) / n as f64 * 1e6);
        r.num("connect_server_busy", (b - a) / secs.max(1e-9));
    }
    if let (Some(a), Some(b)) = (own0, procfs::cpu_seconds(std::process::id())) {
        // Near 1.0 the load generator, not the server, sets the connect rate.
        r.num("connect_loadgen_busy", (b - a) / secs.max(1e-9));
    }
    settle(&mut pool, Duration::from_secs(3))?;
    if let (Some(a), Some(b)) = (rss0, rss(cfg)) {
        r.int("server_rss_bytes", b);
        r.num("rss_per_conn_bytes", (b as f64 - a as f64) / n as f64);
    }
    if let (Some(a), Some(b)) = (slab0, procfs::slab_bytes()) {
        // Both ends of every loopback connection, and anything else the box did meanwhile.
        r.num("slab_per_conn_bytes", (b as f64 - a as f64) / n as f64);
    }
    r.int("closed_by_server", pool.stats.closed_by_server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    use crate::ws;

    /// Accepts one connection on `listener` and answers as the floor does: the handshake,
    /// then the client's subscribe with `{"event":"subscribed"}`.
    fn accept_floor(listener: &TcpListener) -> TcpStream {
        let mut s = ws::accept_handshake(listener);
        let mut buf = [0u8; 1024];
        // The subscribe, one client frame, read before it is answered: the client sends
        // nothing more until then, so whatever comes later is read later.
        let mut frame = Vec::new();
        while !matches!(ws::parse_frame(&frame), Ok(Some(_))) {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "client went before subscribing");
            frame.extend_from_slice(&buf[..n]);
        }
        let mut out = Vec::new();
        ws::encode_server_frame(ws::OP_TEXT, b"{\"event\":\"subscribed\"}", &mut out);
        s.write_all(&out).expect("write");
        s
    }

    /// Ends `s` with a reset (`SO_LINGER` 0), as the kernel ends an orphaned socket that
    /// data reaches, throwing away what it had not sent.
    fn reset(s: TcpStream) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `s` is an open socket for the call; `l` is a valid linger of the size
        // given.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(s);
    }

    /// Whether anything from the client is waiting on `s`, without waiting for it.
    fn client_sent(s: &mut TcpStream) -> bool {
        s.set_nonblocking(true).expect("nonblocking");
        let got = matches!(s.read(&mut [0u8; 64]), Ok(n) if n > 0);
        s.set_nonblocking(false).expect("blocking");
        got
    }

    /// A server for one stopped reader on channel `hot`: once told to go, it sends
    /// `messages` stamped messages `gap` apart (ids from 0; `gap` zero: all at once),
    /// then, with `close`, ends the connection (EOF), else holds it open, sending nothing
    /// (up to 10 s). Anything from the client after the go makes it reset the connection,
    /// as a socket the server has closed does (the kernel answers data with a reset and
    /// throws away what it still held); the handle says whether that happened.
    fn stalled_server(
        messages: u64,
        gap: Duration,
        close: bool,
    ) -> (SocketAddr, mpsc::Sender<()>, JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (go, went) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let mut s = accept_floor(&listener);
            went.recv().expect("go");
            let mut data = Vec::new();
            for id in 0..messages {
                let mut frame = Vec::new();
                payload::write_data(&mut data, 1, id, 64);
                ws::encode_server_frame(ws::OP_TEXT, &data, &mut frame);
                s.write_all(&frame).expect("write");
                // The pace of a server still delivering what it queued.
                std::thread::sleep(gap);
                if client_sent(&mut s) {
                    reset(s);
                    return true;
                }
            }
            if close {
                return false;
            }
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            if matches!(s.read(&mut [0u8; 64]), Ok(n) if n > 0) {
                reset(s);
                return true;
            }
            false
        });
        (addr, go, t)
    }

    /// A pool with one reader on `hot` at `addr`, subscribed and then stopped, which
    /// expects messages 0..`messages` there.
    fn stopped_reader(addr: SocketAddr, messages: u64) -> (Pool, ConnIx) {
        let url = format!("ws://{addr}/");
        let mut pool = Pool::new(&url, Protocol::Floor, Instant::now()).expect("pool");
        for id in 0..messages {
            pool.verifier.published(id, "hot", u64::MAX);
        }
        let ix = pool.connect(vec!["hot".into()]).expect("connect");
        // Bounded: 1,000 turns of at most 10 ms.
        for _ in 0..1000 {
            if pool.is_ready(ix) {
                break;
            }
            pool.turn(Some(Duration::from_millis(10))).expect("turn");
        }
        assert!(pool.is_ready(ix), "subscribed");
        pool.pause(ix);
        (pool, ix)
    }

    #[test]
    fn a_reader_still_being_sent_to_is_not_probed_so_it_gets_everything_and_the_eof() {
        // Found in review: the ping went out right after the resume, while the server was
        // still delivering; to a socket it has closed (an orphan with data unsent), that
        // ping makes the kernel reset the connection and discard the rest.
        let (addr, go, server) = stalled_server(10, Duration::from_millis(50), true);
        let (mut pool, ix) = stopped_reader(addr, 10);
        go.send(()).expect("go");
        assert_eq!(read_stopped_again(&mut pool, &[ix]).expect("read"), 0);
        let reset = server.join().expect("server");
        assert!(!reset, "the reader was probed while the server still sent");
        assert_eq!(pool.ended(ix), Some(Ended::Eof));
        assert_eq!(pool.received(ix, "hot"), Some(10));
    }

    #[test]
    fn a_reader_still_open_after_the_quiet_second_is_probed_and_its_reset_seen() {
        // A server that closed a stopped reader whose FIN never came (the kernel gave up
        // on it): only the probe's reset shows the close.
        let (addr, go, server) = stalled_server(3, Duration::ZERO, false);
        let (mut pool, ix) = stopped_reader(addr, 3);
        go.send(()).expect("go");
        assert_eq!(read_stopped_again(&mut pool, &[ix]).expect("read"), 1);
        assert!(server.join().expect("server"), "the reader was probed");
        assert_eq!(pool.ended(ix), Some(Ended::Error));
        assert_eq!(pool.received(ix, "hot"), Some(3));
    }

    #[test]
    fn every_way_a_stopped_reader_ends_is_counted_once() {
        // Found in review: closes with another code (1008, 1011, 1001), with no code, or
        // by a frame that did not parse counted in `closed` and under no kind.
        let mut s = StoppedEnd::default();
        for how in [
            Some(Ended::CloseFrame(Some(4008))),
            Some(Ended::CloseFrame(Some(1011))),
            Some(Ended::CloseFrame(None)),
            Some(Ended::Eof),
            Some(Ended::Error),
            Some(Ended::Malformed),
        ] {
            s.count_close(how, 2);
        }
        assert_eq!(
            s,
            StoppedEnd {
                closed: 6,
                closed_4008: 1,
                closed_other: 2,
                closed_eof: 1,
                closed_error: 1,
                closed_malformed: 1,
                closed_hot_received: 12,
                lost_msgs: 0,
                with_loss: 0,
            }
        );
    }

    #[test]
    fn live_counts_leave_out_the_readers_to_stop() {
        let (channels, live) = personal_group_channels("x", 25, Some(10));
        let names: Vec<&str> = channels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 25 + 3);
        assert_eq!(
            (names[0], names[24], names[25], names[27]),
            ("xp0", "xp24", "xg0", "xg2")
        );
        let all: Vec<u32> = channels.iter().map(|(_, e)| *e).collect();
        assert_eq!(&all[25..], &[10, 10, 5]);
        // Connections 0, 10 and 20 stop: their own channels expect none, each group one
        // fewer.
        assert_eq!(
            (live[0], live[1], live[10], live[20], live[24]),
            (0, 1, 0, 0, 1)
        );
        assert_eq!(&live[25..], &[9, 9, 4]);
        let (_, none_stop) = personal_group_channels("", 25, None);
        assert_eq!(none_stop, all);
    }
}
