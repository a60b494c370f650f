//! Metrics: counted per shard, summed at scrape, rendered as OpenMetrics text by
//! `prometheus-client` (a [`Collector`] reads every shard's counters when `/metrics` is
//! asked).
//!
//! ```text
//!  shard k's thread ──plain load+store──► ShardCounters[k] (own cache lines)
//!  shard k's thread ──plain load+store──► TenantMetrics[tenant].slot[k]  (tenant_labels only)
//!  GET /metrics (any shard) ──► Collect: Σ over shards (and tenants) ──► text exposition
//! ```
//!
//! Each shard writes only its own [`ShardCounters`], with plain loads and stores (one
//! writer per counter: no atomic read-modify-write, no lock, no allocation). Other
//! threads only read them, at scrape. Histograms are per-shard buckets of plain counters
//! with fixed bounds ([`histogram`]), added up at scrape. Every label value comes from a
//! fixed set ([`labels`]); tenant labels are bounded by the configuration ([`tenant`]).
//! Names follow Prometheus conventions: `ringcast_` prefix, `_total` on counters, base
//! units (`_seconds`, `_bytes`). The list is in `docs/wire-contract.md` ("Metrics").

pub mod counters;
pub mod histogram;
pub mod labels;
pub mod tenant;

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ringcast_protocol::TenantId;

pub use self::counters::{Count, Level, ShardCounters};
pub use self::labels::{CloseReason, HttpRoute, Transport, ERROR_LABELS};
pub use self::tenant::{TenantMetrics, TenantShardCounters};

use self::histogram::Histogram;
use self::labels::HTTP_STATUSES;
use crate::config::MetricsConfig;
use crate::keys::ShardId;
use crate::mesh::Mesh;
use crate::tenant::{Tenant, TenantTable};

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
    fn iter(&self) -> impl Iterator<Item = &ShardCounters> {
        self.counters.iter().map(|c| &c.0)
    }

    fn sum(&self, f: impl Fn(&ShardCounters) -> u64) -> u64 {
        self.iter().map(f).sum()
    }

    fn sum_levels(&self, f: impl Fn(&ShardCounters) -> i64) -> i64 {
        self.iter().map(f).sum()
    }
}

/// A handle on one shard's counters that a task can keep (a connection's writer).
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    shards: Arc<Shards>,
    index: usize,
}

impl std::ops::Deref for ShardMetrics {
    type Target = ShardCounters;

    fn deref(&self) -> &ShardCounters {
        &self.shards.counters[self.index].0
    }
}

/// What a scrape shows besides the counters: the tenant table (for tenant labels) and
/// the server's state.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The tenants in force (tenant-labelled families are rendered only with labels on).
    pub tenants: Option<Arc<TenantTable>>,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// SIGTERM arrived and the server is draining (or shutting down).
    pub draining: bool,
}

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    shards: Arc<Shards>,
    settings: MetricsConfig,
    other: Arc<OtherCounters>,
}

/// The `_other` tenant counters, which sum whichever tenants sit past
/// `max_tenant_labels`: each is what it showed at the last scrape plus what the tenants
/// in `_other` now added since, so a reload that changes who they are neither makes it
/// go down (a tenant removed, or one moving to its own label: Prometheus reads a drop as
/// a reset and `increase()` shows a false spike) nor makes it jump (a tenant moving in
/// brings only what it counts from then on, not its lifetime count). Found in review,
/// twice. A tenant's reading at the last scrape is kept whatever its label, so one that
/// moves in brings what it counted since it was last shown under its own label: each
/// count shows in the increase of one series, the tenant's own or `_other`.
#[derive(Debug, Default)]
struct OtherCounters(std::sync::Mutex<Vec<OtherFamily>>);

#[derive(Debug)]
struct OtherFamily {
    name: &'static str,
    /// What `_other` showed last.
    shown: u64,
    /// Every tenant's count at the last scrape.
    seen: HashMap<TenantId, u64>,
}

impl OtherCounters {
    /// `_other`'s value of counter `family` (read by `read`) now: `rest` are the tenants
    /// it sums, `named` the others. Called at every scrape, with `rest` empty too, so
    /// that every tenant's last reading stays current.
    fn advance(
        &self,
        family: &'static str,
        named: &[&Arc<Tenant>],
        rest: &[&Arc<Tenant>],
        read: TenantReader,
    ) -> u64 {
        // Read under the lock: two scrapes at once must not apply their readings out of
        // order (the older would look like a reset).
        let mut families = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = match families.iter().position(|f| f.name == family) {
            Some(at) => at,
            None => {
                families.push(OtherFamily {
                    name: family,
                    shown: 0,
                    seen: HashMap::new(),
                });
                families.len() - 1
            }
        };
        let state = &mut families[at];
        let mut seen = HashMap::with_capacity(named.len() + rest.len());
        for (tenant, in_other) in named
            .iter()
            .map(|t| (t, false))
            .chain(rest.iter().map(|t| (t, true)))
        {
            let count = tenant.metrics.sum(read).max(0) as u64;
            if in_other {
                // First seen (its count is all since it was made), or lower than before (a
                // tenant of that id removed and made again): counted from 0.
                let since = match state.seen.get(&tenant.id) {
                    Some(&last) if last <= count => last,
                    _ => 0,
                };
                state.shown = state.shown.saturating_add(count - since);
            }
            seen.insert(tenant.id.clone(), count);
        }
        state.seen = seen;
        state.shown
    }
}

impl Metrics {
    /// Counters for `mesh.shards()` shards.
    pub fn new(mesh: Arc<Mesh>, settings: &MetricsConfig) -> Metrics {
        let shards = Arc::new(Shards {
            counters: (0..mesh.shards()).map(|_| Padded::default()).collect(),
            mesh,
        });
        Metrics {
            shards,
            settings: settings.clone(),
            other: Arc::default(),
        }
    }

    /// The counters shard `shard` writes.
    pub fn shard(&self, shard: ShardId) -> &ShardCounters {
        &self.shards.counters[shard.index()].0
    }

    /// A handle on shard `shard`'s counters, for a task to keep.
    pub fn shard_handle(&self, shard: ShardId) -> ShardMetrics {
        ShardMetrics {
            shards: self.shards.clone(),
            index: shard.index(),
        }
    }

    /// Whether shards count per tenant (`[metrics] tenant_labels`).
    pub fn tenant_labels(&self) -> bool {
        self.settings.tenant_labels
    }

    /// OpenMetrics text exposition (it ends with `# EOF`).
    pub fn render(&self, scrape: Scrape) -> String {
        let tenants = scrape
            .tenants
            .clone()
            .filter(|_| self.settings.tenant_labels);
        let mut registry = Registry::with_prefix("ringcast");
        registry.register_collector(Box::new(Collect {
            shards: self.shards.clone(),
            scrape,
            tenants: tenants.map(|t| (t, self.settings.max_tenant_labels)),
            other: self.other.clone(),
        }));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[derive(Debug)]
struct Collect {
    shards: Arc<Shards>,
    scrape: Scrape,
    /// The tenant table and how many tenants get their own label.
    tenants: Option<(Arc<TenantTable>, usize)>,
    other: Arc<OtherCounters>,
}

type Reader = fn(&ShardCounters) -> u64;
type LevelReader = fn(&ShardCounters) -> i64;

const COUNTERS: &[(&str, &str, Reader)] = &[
    ("connections_accepted", "TCP connections accepted", |c| {
        c.connections_accepted.get()
    }),
    (
        "messages_published",
        "Messages published (appended and fanned out by their owner shard)",
        |c| c.messages_published.get(),
    ),
    (
        "deliveries",
        "Messages queued to subscribers (one per subscriber per message)",
        |c| c.deliveries.get(),
    ),
    (
        "slow_consumer_closes",
        "Connections closed because their outbound buffer was full (4008)",
        |c| c.slow_consumer_closes.get(),
    ),
    (
        "inbox_spills",
        "Messages held back by their sender because another shard's inbox was full",
        |c| c.inbox_spills.get(),
    ),
    (
        "publisher_holdbacks",
        "Times a publisher stopped reading, or an HTTP publish was refused, while a shard was spilling",
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
    (
        "history_space_waits",
        "Times the shard waited for a history segment file to be made (none when space is made ahead of need)",
        |c| c.history_space_waits.get(),
    ),
    (
        "history_segments_prepared",
        "History segment files made by the store's background thread",
        |c| c.history_segments_prepared.get(),
    ),
    (
        "history_growths",
        "History rings moved to a bigger slot as they filled",
        |c| c.history_growths.get(),
    ),
    (
        "history_records_not_kept",
        "Messages given a seq but not kept in history (stays 0: history refuses what it cannot keep before a seq is taken)",
        |c| c.history_records_not_kept.get(),
    ),
    ("history_appends", "Messages appended to history", |c| {
        c.history_appends.get()
    }),
    (
        "history_appended_bytes",
        "Bytes of the messages appended to history (encoded frames)",
        |c| c.history_appended_bytes.get(),
    ),
    (
        "history_replays",
        "Subscribes with lastEventId (resumes) answered",
        |c| c.history_replays.get(),
    ),
    (
        "history_replayed_messages",
        "Messages replayed to resuming subscribers",
        |c| c.history_replayed_messages.get(),
    ),
    (
        "history_truncations",
        "Resumes answered recovered:false (history no longer held what was missed)",
        |c| c.history_truncations.get(),
    ),
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

const GAUGES: &[(&str, &str, LevelReader)] = &[
    (
        "subscriptions",
        "Subscriptions of the connections (local topic table entries)",
        |c| c.subscriptions.get(),
    ),
    (
        "channels",
        "Open channels (owned by a shard: seq in memory, history mapped)",
        |c| c.channels.get(),
    ),
    (
        "presence_members",
        "Presence members of every channel",
        |c| c.presence_members.get(),
    ),
    ("history_rings", "Channel history rings held", |c| {
        c.history_rings.get()
    }),
    (
        "history_bytes",
        "Bytes of history slots in use (bounded by max_total_bytes)",
        |c| c.history_bytes.get(),
    ),
    ("ren_streams", "Open REN (SSE) streams", |c| {
        c.ren_streams.get()
    }),
    (
        "ren_buffered",
        "REN events held in the tenants' resume buffers",
        |c| c.ren_buffered.get(),
    ),
];

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

fn histogram<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    buckets: histogram::Buckets,
    shards: impl Iterator<Item = &'a Histogram>,
) -> Result<(), std::fmt::Error> {
    let summed = histogram::sum(buckets, shards);
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(summed.sum, summed.count, &summed.buckets, None)
}

impl Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        {
            let mut family = encoder.encode_descriptor(
                "build_info",
                "The running server's version (always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        self.encode_connections(&mut encoder)?;
        for (name, help, read) in GAUGES {
            gauge(&mut encoder, name, help, shards.sum_levels(read))?;
        }
        for (name, help, read) in COUNTERS {
            counter(&mut encoder, name, help, shards.sum(read))?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "bytes_out",
                "Bytes written to client sockets, by transport",
                None,
                MetricType::Counter,
            )?;
            for transport in Transport::ALL {
                let total = shards.sum(|c| c.bytes_out_count(transport));
                ConstCounter::new(total)
                    .encode(family.encode_family(&[("transport", transport.as_str())])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "errors",
                "Errors answered (error events and HTTP errors), by code",
                None,
                MetricType::Counter,
            )?;
            for (index, code) in ERROR_LABELS.iter().enumerate() {
                let total = shards.sum(|c| c.error_count(index));
                ConstCounter::new(total).encode(family.encode_family(&[("code", *code)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "token_verifications",
                "JWT verifications (channel and connection tokens), by result",
                None,
                MetricType::Counter,
            )?;
            for (result, accepted) in [("accepted", true), ("refused", false)] {
                let total = shards.sum(|c| c.tokens(accepted));
                ConstCounter::new(total).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        self.encode_http(&mut encoder)?;
        histogram(
            &mut encoder,
            "loop_turn_seconds",
            "Time a shard takes to handle one inbox batch (up to 256 messages)",
            histogram::LOOP_TURN,
            shards.iter().map(|c| &c.loop_turn),
        )?;
        histogram(
            &mut encoder,
            "write_batch_frames",
            "Buffers sent per writev by a connection's writer (coalescing; a delivery run of one channel's messages is one buffer)",
            histogram::WRITE_BATCH,
            shards.iter().map(|c| &c.write_batch_frames),
        )?;
        {
            let mut depth = encoder.encode_descriptor(
                "inbox_depth",
                "Messages waiting in each shard's inbox",
                None,
                MetricType::Gauge,
            )?;
            for index in 0..shards.mesh.shards() {
                let shard = index.to_string();
                let waiting = shards.mesh.inbox(ShardId(index as u16)).len() as i64;
                ConstGauge::new(waiting)
                    .encode(depth.encode_family(&[("shard", shard.as_str())])?)?;
            }
        }
        let capacity = shards.mesh.inbox(ShardId(0)).capacity() as i64;
        gauge(
            &mut encoder,
            "inbox_capacity",
            "Bound of each shard's inbox, in messages",
            capacity,
        )?;
        gauge(
            &mut encoder,
            "shards",
            "Shards (threads) running",
            shards.mesh.shards() as i64,
        )?;
        gauge(
            &mut encoder,
            "ready",
            "1 while /readyz answers 200",
            i64::from(self.scrape.ready),
        )?;
        gauge(
            &mut encoder,
            "draining",
            "1 from SIGTERM until exit (readyz answers 503)",
            i64::from(self.scrape.draining),
        )?;
        if let Some((tenants, max)) = &self.tenants {
            encode_tenants(&mut encoder, tenants, *max, &self.other)?;
        }
        Ok(())
    }
}

impl Collect {
    fn encode_connections(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        let tcp = shards.sum_levels(|c| c.connections.get());
        let ws = shards.sum_levels(|c| c.ws_connections.get());
        let sse = shards.sum_levels(|c| c.sse_connections.get());
        {
            let mut family = encoder.encode_descriptor(
                "connections",
                "Open TCP connections, by what they carry (http: not upgraded)",
                None,
                MetricType::Gauge,
            )?;
            for (transport, value) in [
                (Transport::Http, (tcp - ws - sse).max(0)),
                (Transport::Ws, ws),
                (Transport::Sse, sse),
            ] {
                ConstGauge::new(value)
                    .encode(family.encode_family(&[("transport", transport.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "connections_closed",
            "Connections ended, by transport and reason",
            None,
            MetricType::Counter,
        )?;
        for transport in Transport::ALL {
            for reason in CloseReason::ALL {
                let total = shards.sum(|c| c.closed_count(transport, reason));
                let labels = [
                    ("transport", transport.as_str()),
                    ("reason", reason.as_str()),
                ];
                ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_http(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = &self.shards;
        {
            let mut family = encoder.encode_descriptor(
                "http_requests",
                "HTTP requests answered, by route and status (only pairs seen)",
                None,
                MetricType::Counter,
            )?;
            for route in HttpRoute::ALL {
                for (at, (_, status)) in HTTP_STATUSES.iter().enumerate() {
                    let total = shards.sum(|c| c.http_count(route, at));
                    if total == 0 {
                        continue;
                    }
                    let labels = [("route", route.as_str()), ("status", *status)];
                    ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration_seconds",
            "From a complete HTTP request to its answer written, by route",
            None,
            MetricType::Histogram,
        )?;
        for route in HttpRoute::ALL {
            let summed = histogram::sum(
                histogram::HTTP_REQUEST,
                shards.iter().map(|c| c.http_duration(route)),
            );
            let labels = [("route", route.as_str())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(summed.sum, summed.count, &summed.buckets, None)?;
        }
        Ok(())
    }
}

type TenantReader = fn(&TenantShardCounters) -> i64;

/// The tenant-labelled families: the first `max` tenants by id get their own label, the
/// rest are summed under [`tenant::OTHER_TENANTS`].
fn encode_tenants(
    encoder: &mut DescriptorEncoder<'_>,
    tenants: &TenantTable,
    max: usize,
    other: &OtherCounters,
) -> Result<(), std::fmt::Error> {
    let mut sorted: Vec<&Arc<Tenant>> = tenants.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let (named, rest) = sorted.split_at(sorted.len().min(max));
    let groups: Vec<(&str, &[&Arc<Tenant>])> = named
        .iter()
        .map(|t| (t.id.as_str(), std::slice::from_ref(t)))
        .chain((!rest.is_empty()).then_some((tenant::OTHER_TENANTS, rest)))
        .collect();
    let sum = |group: &[&Arc<Tenant>], read: TenantReader| -> i64 {
        group.iter().map(|t| t.metrics.sum(read)).sum()
    };
    {
        let mut family = encoder.encode_descriptor(
            "tenant_connections",
            "Open WebSocket sessions and SSE streams, by tenant and transport",
            None,
            MetricType::Gauge,
        )?;
        for (id, group) in &groups {
            for (transport, read) in [
                (Transport::Ws, (|c| c.ws_connections.get()) as TenantReader),
                (Transport::Sse, |c| c.sse_connections.get()),
            ] {
                let labels = [("tenant", *id), ("transport", transport.as_str())];
                ConstGauge::new(sum(group, read)).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    // (name, help, is a gauge, read)
    let families: [(&str, &str, bool, TenantReader); 3] = [
        (
            "tenant_subscriptions",
            "Subscriptions, by tenant",
            true,
            |c| c.subscriptions.get(),
        ),
        (
            "tenant_messages_published",
            "Messages published, by tenant",
            false,
            |c| c.messages_published.get() as i64,
        ),
        (
            "tenant_deliveries",
            "Messages queued to subscribers, by tenant",
            false,
            |c| c.deliveries.get() as i64,
        ),
    ];
    for (name, help, is_gauge, read) in families {
        let kind = if is_gauge {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let other_count = (!is_gauge).then(|| other.advance(name, named, rest, read));
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (id, group) in &groups {
            let labels = [("tenant", *id)];
            if is_gauge {
                ConstGauge::new(sum(group, read)).encode(family.encode_family(&labels)?)?;
            } else {
                let value = match other_count {
                    Some(count) if *id == tenant::OTHER_TENANTS => count,
                    _ => sum(group, read).max(0) as u64,
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
