//! Counters, kept per shard and summed at scrape, rendered as Prometheus text by
//! `prometheus-client` (a [`Collector`] reads every shard's counters when `/metrics` is
//! asked).
//!
//! Each shard writes only its own [`ShardCounters`], on its own cache line, with plain
//! loads and stores (one writer per counter: no atomic read-modify-write, no lock, no
//! allocation). Other threads only read them, at scrape. Counting an error event is an
//! index into a fixed table of codes.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ringcast_protocol::ErrorCode;

use crate::keys::ShardId;
use crate::mesh::Mesh;

/// Every code an error event or HTTP error can carry: the `code` label of
/// `ringcast_errors_total`. Error events use the SPEC's codes; the HTTP front door adds
/// its own. A code not listed is counted as `other`.
pub const ERROR_LABELS: &[&str] = &[
    "bad_request",
    "invalid_channel",
    "unauthorized",
    "forbidden",
    "channel_limit",
    "message_too_large",
    "rate_limited",
    "presence_limit",
    "not_subscribed",
    "overloaded",
    "not_implemented",
    "not_found",
    "method_not_allowed",
    "upgrade_required",
    "unknown_tenant",
    "timeout",
    "headers_too_large",
    "payload_too_large",
    "not_ready",
    "internal_error",
    "other",
];

/// A counter one shard writes.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds `n`. Only the owning shard's thread calls this.
    pub fn add(&self, n: u64) {
        // One writer: a plain load and store, no read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets the count to a total kept elsewhere (monotonic). Only the owning shard's
    /// thread calls this.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value (any thread).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge one shard writes.
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    /// Adds `n` (negative to lower it). Only the owning shard's thread calls this.
    pub fn add(&self, n: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value. Only the owning shard's thread calls this.
    pub fn set(&self, n: u64) {
        self.0.store(n as i64, Ordering::Relaxed);
    }

    /// The value (any thread).
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's counters.
#[derive(Debug)]
pub struct ShardCounters {
    /// Open TCP connections (HTTP and WebSocket) on this shard.
    pub connections: Level,
    /// Connections accepted.
    pub connections_accepted: Count,
    /// Messages published on channels this shard owns.
    pub messages_published: Count,
    /// Messages queued to this shard's subscribers.
    pub deliveries: Count,
    /// Connections closed with 4008.
    pub slow_consumer_closes: Count,
    /// Messages that found another shard's inbox full and waited in this shard's spill.
    pub inbox_spills: Count,
    /// Times a publisher stopped reading because a shard was spilling.
    pub publisher_holdbacks: Count,
    /// Answers that arrived for a request nobody waits for any more (asker gone, or
    /// deadline passed).
    pub answers_unclaimed: Count,
    /// Requests to another shard that passed their deadline unanswered.
    pub requests_timed_out: Count,
    /// Channel history rings in this shard's store.
    pub history_rings: Level,
    /// Slot bytes those rings use (what `[history] max_total_bytes` bounds).
    pub history_bytes: Level,
    /// Rings evicted to stay under `max_total_bytes` (copied from the store).
    pub history_evictions: Count,
    /// JWTs that passed verification (channel and connection tokens).
    pub tokens_accepted: Count,
    /// JWTs refused (bad signature, key, algorithm, time, tenant or channel).
    pub tokens_refused: Count,
    /// REN events given an id by this shard (the REN owner of their tenant).
    pub ren_events: Count,
    /// REN chunks queued to this shard's SSE streams.
    pub ren_deliveries: Count,
    /// Streams that asked to resume from an id the buffer no longer covers (`ren.meta`).
    pub ren_truncated: Count,
    /// Open SSE streams on this shard (set at each housekeeping tick).
    pub ren_streams: Level,
    /// REN events held in the resume buffers of the tenants this shard owns.
    pub ren_buffered: Level,
    errors: Vec<Count>,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            connections: Level::default(),
            connections_accepted: Count::default(),
            messages_published: Count::default(),
            deliveries: Count::default(),
            slow_consumer_closes: Count::default(),
            inbox_spills: Count::default(),
            publisher_holdbacks: Count::default(),
            answers_unclaimed: Count::default(),
            requests_timed_out: Count::default(),
            history_rings: Level::default(),
            history_bytes: Level::default(),
            history_evictions: Count::default(),
            tokens_accepted: Count::default(),
            tokens_refused: Count::default(),
            ren_events: Count::default(),
            ren_deliveries: Count::default(),
            ren_truncated: Count::default(),
            ren_streams: Level::default(),
            ren_buffered: Level::default(),
            errors: ERROR_LABELS.iter().map(|_| Count::default()).collect(),
        }
    }
}

impl ShardCounters {
    /// Counts one error answered with `code`.
    pub fn error(&self, code: &str) {
        let index = ERROR_LABELS
            .iter()
            .position(|label| *label == code)
            .unwrap_or(ERROR_LABELS.len() - 1);
        self.errors[index].inc();
    }

    /// Counts one error event.
    pub fn error_event(&self, code: ErrorCode) {
        self.error(code.as_str());
    }

    /// Counts one token verification.
    pub fn token_verification(&self, accepted: bool) {
        if accepted {
            self.tokens_accepted.inc();
        } else {
            self.tokens_refused.inc();
        }
    }
}

/// Keeps each shard's counters on their own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(ShardCounters);

/// Every shard's counters, and the mesh for inbox depths.
#[derive(Debug)]
struct Shards {
    counters: Vec<Padded>,
    mesh: Arc<Mesh>,
}

impl Shards {
    fn sum(&self, f: impl Fn(&ShardCounters) -> u64) -> u64 {
        self.counters.iter().map(|c| f(&c.0)).sum()
    }
}

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    shards: Arc<Shards>,
}

impl Metrics {
    /// Counters for `mesh.shards()` shards.
    pub fn new(mesh: Arc<Mesh>) -> Metrics {
        let shards = Arc::new(Shards {
            counters: (0..mesh.shards()).map(|_| Padded::default()).collect(),
            mesh,
        });
        let mut registry = Registry::with_prefix("ringcast");
        registry.register_collector(Box::new(Collect(shards.clone())));
        Metrics { registry, shards }
    }

    /// The counters shard `shard` writes.
    pub fn shard(&self, shard: ShardId) -> &ShardCounters {
        &self.shards.counters[shard.index()].0
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct Collect(Arc<Shards>);

type Reader = fn(&ShardCounters) -> u64;

const COUNTERS: &[(&str, &str, Reader)] = &[
    ("connections_accepted", "Connections accepted", |c| {
        c.connections_accepted.get()
    }),
    ("messages_published", "Messages published", |c| {
        c.messages_published.get()
    }),
    ("deliveries", "Messages queued to subscribers", |c| {
        c.deliveries.get()
    }),
    (
        "slow_consumer_closes",
        "Connections closed because their outbound buffer was full",
        |c| c.slow_consumer_closes.get(),
    ),
    (
        "inbox_spills",
        "Messages held back by their sender because another shard's inbox was full",
        |c| c.inbox_spills.get(),
    ),
    (
        "publisher_holdbacks",
        "Times a publisher stopped reading while a shard was spilling",
        |c| c.publisher_holdbacks.get(),
    ),
    (
        "answers_unclaimed",
        "Answers from an owner shard that nobody waited for any more",
        |c| c.answers_unclaimed.get(),
    ),
    (
        "requests_timed_out",
        "Requests to an owner shard that passed their deadline",
        |c| c.requests_timed_out.get(),
    ),
    (
        "history_evictions",
        "Closed channels' history rings evicted to stay under max_total_bytes",
        |c| c.history_evictions.get(),
    ),
    ("tokens_accepted", "JWTs that passed verification", |c| {
        c.tokens_accepted.get()
    }),
    ("tokens_refused", "JWTs refused", |c| c.tokens_refused.get()),
    ("ren_events", "REN events sequenced", |c| c.ren_events.get()),
    ("ren_deliveries", "REN events queued to SSE streams", |c| {
        c.ren_deliveries.get()
    }),
    (
        "ren_truncated",
        "REN streams told ren.meta (truncated): their Last-Event-ID was no longer covered",
        |c| c.ren_truncated.get(),
    ),
];

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = &self.0;
        let connections: i64 = shards.counters.iter().map(|c| c.0.connections.get()).sum();
        let gauge = ConstGauge::new(connections);
        gauge.encode(encoder.encode_descriptor(
            "connections",
            "Open connections",
            None,
            gauge.metric_type(),
        )?)?;
        for (name, help, read) in [
            (
                "history_rings",
                "Channel history rings held",
                (|c| c.history_rings.get()) as fn(&ShardCounters) -> i64,
            ),
            (
                "history_bytes",
                "Bytes of history slots in use (bounded by max_total_bytes)",
                |c| c.history_bytes.get(),
            ),
            ("ren_streams", "Open REN (SSE) streams", |c| {
                c.ren_streams.get()
            }),
            ("ren_buffered", "REN events held in resume buffers", |c| {
                c.ren_buffered.get()
            }),
        ] {
            let gauge = ConstGauge::new(shards.counters.iter().map(|c| read(&c.0)).sum::<i64>());
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        for (name, help, read) in COUNTERS {
            let counter = ConstCounter::new(shards.sum(read));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut family = encoder.encode_descriptor(
            "errors",
            "Errors answered, by code",
            None,
            MetricType::Counter,
        )?;
        for (index, code) in ERROR_LABELS.iter().enumerate() {
            let total = shards.sum(|c| c.errors[index].get());
            ConstCounter::new(total).encode(family.encode_family(&[("code", *code)])?)?;
        }
        let mut depth = encoder.encode_descriptor(
            "inbox_depth",
            "Messages waiting in each shard's inbox",
            None,
            MetricType::Gauge,
        )?;
        for index in 0..shards.mesh.shards() {
            let shard = index.to_string();
            let waiting = shards.mesh.inbox(ShardId(index as u16)).len() as i64;
            ConstGauge::new(waiting).encode(depth.encode_family(&[("shard", shard.as_str())])?)?;
        }
        let capacity = shards.mesh.inbox(ShardId(0)).capacity() as i64;
        let gauge = ConstGauge::new(capacity);
        gauge.encode(encoder.encode_descriptor(
            "inbox_capacity",
            "Bound of each shard's inbox, in messages",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names_summed_over_shards() {
        let metrics = Metrics::new(Mesh::new(2));
        metrics.shard(ShardId(0)).slow_consumer_closes.inc();
        metrics.shard(ShardId(1)).slow_consumer_closes.add(2);
        metrics.shard(ShardId(1)).error("bad_request");
        metrics.shard(ShardId(0)).error_event(ErrorCode::BadRequest);
        metrics.shard(ShardId(0)).error("no_such_code");
        metrics.shard(ShardId(1)).connections.add(3);
        metrics.shard(ShardId(1)).connections.add(-1);
        let text = metrics.render();
        for name in [
            "ringcast_connections 2",
            "ringcast_connections_accepted_total 0",
            "ringcast_messages_published_total",
            "ringcast_deliveries_total",
            "ringcast_slow_consumer_closes_total 3",
            "ringcast_errors_total{code=\"bad_request\"} 2",
            "ringcast_errors_total{code=\"other\"} 1",
            "ringcast_inbox_depth{shard=\"1\"} 0",
            "ringcast_inbox_capacity 8192",
            "ringcast_ren_events_total 0",
            "ringcast_ren_streams 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn every_error_event_code_has_its_own_label() {
        for code in ErrorCode::ALL {
            assert!(ERROR_LABELS.contains(&code.as_str()), "{code}");
        }
        for error in ringcast_protocol::ApiError::ALL {
            assert!(ERROR_LABELS.contains(&error.code()), "{}", error.code());
        }
    }
}
