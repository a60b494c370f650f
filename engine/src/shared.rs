//! What every shard of one server shares: read-mostly state behind `arc-swap` (config,
//! tenants), the metrics every shard writes its own part of, the process-wide
//! connection count, and what `/readyz` reads (shards started, draining, data directory
//! writable).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::client_addr::TrustedProxies;
use crate::config::Config;
use crate::demo::DemoSite;
use crate::mesh::Mesh;
use crate::metrics::{Metrics, Scrape};
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
    /// Set on SIGTERM (before connections are closed): `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Whether the data directory took the last write probe (refreshed once a second
    /// by the main thread, `datadir::probe_writable`; never by a request).
    pub data_dir_writable: AtomicBool,
    shards: usize,
    /// The demo page's files, when `demo` is on (loaded at start-up, never reloaded).
    pub demo: Option<DemoSite>,
}

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Some shard has not started its loops yet.
    Starting,
    /// SIGTERM arrived: draining, then shutting down.
    Draining,
    /// The data directory refused the last write probe.
    DataDirNotWritable,
}

impl NotReady {
    /// The message of the 503 answer.
    pub fn message(self) -> &'static str {
        match self {
            NotReady::Starting => "starting: not every shard runs yet",
            NotReady::Draining => "draining: shutting down (SIGTERM)",
            NotReady::DataDirNotWritable => "the data directory is not writable",
        }
    }
}

impl Shared {
    /// The shared state of a server starting with `config`.
    pub fn new(config: Config, mesh: Arc<Mesh>) -> Shared {
        let tenants = TenantTable::new(&config.tenants, config.default_tenant.as_deref());
        Shared {
            trusted: ArcSwap::from_pointee(config.trusted()),
            per_ip: Arc::default(),
            metrics: Metrics::new(mesh.clone(), &config.metrics),
            config: ArcSwap::from_pointee(config),
            tenants: ArcSwap::from_pointee(tenants),
            open_connections: AtomicUsize::new(0),
            ready_shards: AtomicUsize::new(0),
            reloads: AtomicU64::new(0),
            ren: Default::default(),
            draining: AtomicBool::new(false),
            data_dir_writable: AtomicBool::new(true),
            shards: mesh.shards(),
            demo: None,
        }
    }

    /// What `/readyz` answers: `Ok` when every shard runs, the server is not draining and
    /// the data directory took its last write probe. Reads three atomics.
    pub fn readiness(&self, shutting_down: bool) -> Result<(), NotReady> {
        if self.draining.load(Ordering::SeqCst) || shutting_down {
            return Err(NotReady::Draining);
        }
        if self.ready_shards.load(Ordering::SeqCst) < self.shards {
            return Err(NotReady::Starting);
        }
        if !self.data_dir_writable.load(Ordering::Relaxed) {
            return Err(NotReady::DataDirNotWritable);
        }
        Ok(())
    }

    /// `/metrics`: every counter, with the tenant table and the server's state.
    pub fn render_metrics(&self, shutting_down: bool) -> String {
        self.metrics.render(Scrape {
            tenants: Some(self.tenants.load_full()),
            ready: self.readiness(shutting_down).is_ok(),
            draining: self.draining.load(Ordering::SeqCst) || shutting_down,
        })
    }

    /// Number of reloads applied.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }
}
