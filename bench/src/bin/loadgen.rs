//! The load generator: thousands of WebSocket clients on one epoll (`mio`), one thread.
//!
//! `loadgen --url ws://127.0.0.1:PORT/_rt/ws --protocol ringcast --workload w1
//!  --subscribers 1000 --payload 64 --burst 16 --duration-s 5 --server-pid PID --json`
//!
//! Workloads are those of `shared/BENCHMARKS.md`; see `bench/README.md`.

use clap::Parser;
use ringcast_bench::client::Protocol;
use ringcast_bench::procfs;
use ringcast_bench::workload::{self, Config};

#[derive(Parser, Debug)]
#[command(about = "Ringcast load generator (W1–W6 of BENCHMARKS.md)")]
struct Args {
    /// Server URL; loopback only.
    #[arg(long, default_value = "ws://127.0.0.1:8080/_rt/ws")]
    url: String,
    /// ringcast (also node-ws, bun), socketio or floor.
    #[arg(long, default_value = "ringcast")]
    protocol: String,
    /// Name of the server in the report (defaults to the protocol).
    #[arg(long)]
    label: Option<String>,
    /// w1 (fan-out saturation), w2 (personal+group, open loop at 50/80 %), w3 (hot channel,
    /// fixed rate), w4 (connection storm + churn), w5 (idle memory), w6 (w2 + stalled readers),
    /// http-publish (HTTP API publishes on `--publishers` keep-alive connections, closed
    /// loop), ws-publish (the same over WebSocket with `ref` acks), ren-fanout (one
    /// `POST /api/ren/events` of `--burst` events → `--subscribers` SSE streams).
    #[arg(long, default_value = "w1")]
    workload: String,
    /// Subscribers (w1/w3) or connections (w2/w4/w5/w6).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Published data size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Publishes back to back per burst (K).
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Open-loop publishes per second. w1 without it runs closed loop (saturation);
    /// w3 defaults to 10000; w2 and w6 take it as the maximum (no probe; without it they
    /// probe one) and run their phases at fractions of it: w2 at 50 % and 80 %, w6 at 80 %.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Unmeasured warm-up seconds (w1/w3).
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Bursts in flight in closed loop (w1).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Write each publish with its own `write` (a TCP segment each, as clients that
    /// send one message at a time do) instead of the K of a burst in one.
    #[arg(long)]
    write_each: bool,
    /// Server process id, for CPU seconds and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Publisher connections: w1/w3 default 1 (bursts go round-robin over them; give
    /// `--window` as many bursts in flight to keep them all busy), w2/w6, http-publish
    /// and ws-publish default 4.
    #[arg(long)]
    publishers: Option<usize>,
    /// Handshakes in flight while connecting.
    #[arg(long, default_value_t = 512)]
    max_inflight: usize,
    /// Percent of readers that stop reading in w6.
    #[arg(long, default_value_t = 1.0)]
    stopped_pct: f64,
    /// w6: publishes per second, in the stalled phase, to the channel only the stopped
    /// readers follow (0: none, W2's traffic alone).
    #[arg(long, default_value_t = 100.0)]
    hot_rate: f64,
    /// w6: data size of those publishes in bytes (with `--hot-rate` 100, 3.2 MB/s per
    /// stopped reader: past a 4 MiB kernel send buffer and Ringcast's 4 MiB outbound
    /// bound within a 5 s phase).
    #[arg(long, default_value_t = 32768)]
    hot_payload: usize,
    /// Reconnects per second during w4's churn.
    #[arg(long, default_value_t = 3000.0)]
    churn_per_s: f64,
    /// ren-fanout against Nginx + Nchan (`bench/scripts/ren.sh --nchan`): each event its
    /// own POST, answers 2xx.
    #[arg(long)]
    nchan: bool,
    /// w2/w6: write each open-loop phase's deliveries to `PREFIX.<phase>.tsv`
    /// (arrival and latency in µs, the phase start on CLOCK_MONOTONIC), for
    /// `bench/scripts/latency-gaps.py`.
    #[arg(long, value_name = "PREFIX")]
    latency_trace: Option<String>,
    /// w1/w2/w6: put this before every channel name, so several load generators at once
    /// use channels of their own (`bench/scripts/scaling.sh`).
    #[arg(long, default_value = "")]
    channel_prefix: String,
    /// w1/w2/w6: after set-up, wait until this wall-clock time (Unix milliseconds)
    /// before the measured part, so several load generators measure the same seconds.
    #[arg(long)]
    start_at_ms: Option<u64>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let a = Args::parse();
    let nofile = procfs::raise_nofile();
    let Some(protocol) = Protocol::parse(&a.protocol) else {
        eprintln!(
            "unknown --protocol {:?}: ringcast, socketio or floor",
            a.protocol
        );
        std::process::exit(2);
    };
    let publishers = a
        .publishers
        .unwrap_or(if matches!(a.workload.as_str(), "w1" | "w3") {
            1
        } else {
            4
        })
        .max(1);
    let needed = a.subscribers + publishers + 64;
    if needed as u64 > nofile && a.workload != "w4" {
        eprintln!("{needed} sockets needed but RLIMIT_NOFILE is {nofile}");
        std::process::exit(2);
    }
    let cfg = Config {
        url: a.url,
        protocol,
        label: a.label.unwrap_or_else(|| a.protocol.clone()),
        workload: a.workload,
        subscribers: a.subscribers,
        payload: a.payload,
        burst: a.burst.max(1),
        rate: a.rate,
        duration_s: a.duration_s,
        warmup_s: a.warmup_s,
        window: a.window.max(1),
        write_each: a.write_each,
        server_pid: a.server_pid,
        publishers,
        max_inflight: a.max_inflight.max(1),
        stopped_pct: a.stopped_pct,
        hot_rate: a.hot_rate,
        hot_payload: a.hot_payload,
        churn_per_s: a.churn_per_s,
        nchan: a.nchan,
        latency_trace: a.latency_trace,
        channel_prefix: a.channel_prefix,
        start_at_ms: a.start_at_ms,
    };
    match workload::run(&cfg) {
        Ok(r) if a.json => println!("{}", r.to_json()),
        Ok(r) => print!("{}", r.to_text()),
        Err(e) => {
            if a.json {
                let mut r = ringcast_bench::report::Report::default();
                r.str("server", &cfg.label);
                r.str("workload", &cfg.workload);
                r.int("subscribers", cfg.subscribers as u64);
                r.int("payload", cfg.payload as u64);
                r.int("burst", cfg.burst as u64);
                r.str("error", &format!("{e:#}"));
                println!("{}", r.to_json());
            }
            eprintln!("loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}
