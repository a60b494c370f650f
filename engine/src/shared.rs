//! What every shard of one server shares: read-mostly state behind `arc-swap` (config,
//! tenants), the metrics every shard writes its own part of, and the process-wide
//! connection count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::client_addr::TrustedProxies;
use crate::config::Config;
use crate::demo::DemoSite;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::per_ip::PerIp;
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
    /// Configuration reloads applied so far; a shard that sees it move re-checks its
    /// connections' tenants.
    pub reloads: AtomicU64,
    /// Open long-lived connections and handshake buckets per client address.
    pub per_ip: Arc<PerIp>,
    /// The trusted proxies of the config in force (parsed), swapped with it on reload.
    pub trusted: ArcSwap<TrustedProxies>,
    /// Which tenants' channel events are mirrored into REN (`ren/activity.rs`).
    pub ren: RenActivity,
    /// The demo page's files, when `demo` is on (loaded at start-up, never reloaded).
    pub demo: Option<DemoSite>,
}

impl Shared {
    /// The shared state of a server starting with `config`.
    pub fn new(config: Config, mesh: Arc<Mesh>) -> Shared {
        let tenants = TenantTable::new(&config.tenants, config.default_tenant.as_deref());
        Shared {
            trusted: ArcSwap::from_pointee(config.trusted()),
            per_ip: Arc::default(),
            config: ArcSwap::from_pointee(config),
            tenants: ArcSwap::from_pointee(tenants),
            metrics: Metrics::new(mesh),
            open_connections: AtomicUsize::new(0),
            ready_shards: AtomicUsize::new(0),
            reloads: AtomicU64::new(0),
            ren: Default::default(),
            demo: None,
        }
    }

    /// Number of reloads applied.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }
}
