//! What every shard of one server shares: read-mostly state behind `arc-swap` (config,
//! tenants), the metrics every shard writes its own part of, and the process-wide
//! connection count.

use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ren::activity::RenActivity;
use crate::tenant::TenantTable;

/// State shared by every shard (read-mostly; live-replaceable parts behind `ArcSwap`).
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: ArcSwap<Config>,
    /// Tenants and their limits.
    pub tenants: ArcSwap<TenantTable>,
    /// Per-shard counters, summed at scrape.
    pub metrics: Metrics,
    /// Open TCP connections on all shards (for `max_connections`).
    pub open_connections: AtomicUsize,
    /// Shards whose loops run (for `/readyz`).
    pub ready_shards: AtomicUsize,
    /// Which tenants' channel events are mirrored into REN (`ren/activity.rs`).
    pub ren: RenActivity,
}
