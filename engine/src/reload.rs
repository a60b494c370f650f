//! Live reload (SIGHUP): re-read the configuration file and swap in what may change while
//! the server runs: tenants (new ones, plans, overrides, API keys, token keys, origins),
//! `dev`, the default tenant, trusted proxies, per-address limits, `max_connections`,
//! timeouts, and size limits of new connections. Connections stay open.
//!
//! A file that does not parse or validate is refused whole (a log line; the running
//! configuration stays). Settings fixed at start-up (listen address, PROXY protocol,
//! shards, data directory, history, inbox capacity, idempotency table, `[metrics]`, log
//! format and level, the demo page, the shutdown grace, `[ren]`) keep their running values, with
//! a log line naming each one that changed. A removed tenant's connections are closed
//! with 4510 by their shards at the next housekeeping tick (at most one second), also when
//! a later reload has added the tenant back by then (`TenantTable::still_has`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::config::{Config, ConfigError, Overrides};
use crate::shared::Shared;
use crate::tenant::TenantTable;

/// Where the configuration came from: read again on reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config FILE`, if any.
    pub path: Option<PathBuf>,
    /// The command-line flags (they still beat the file).
    pub flags: Overrides,
}

impl ConfigSource {
    /// Reads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.flags)
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Tenants that are new.
    pub added: Vec<String>,
    /// Tenants that are gone (their connections are being closed).
    pub removed: Vec<String>,
    /// Start-up settings that changed in the file but keep their running value.
    pub need_restart: Vec<&'static str>,
}

/// Re-reads `source` and applies it to `shared`. On error nothing changes.
pub fn reload(shared: &Shared, source: &ConfigSource) -> Result<Reloaded, ConfigError> {
    let mut next = source.load()?;
    let running = shared.config.load();
    let mut need_restart = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if next.$field != running.$field {
                need_restart.push(stringify!($field));
                next.$field = running.$field.clone();
            }
        )*};
    }
    keep!(
        listen,
        proxy_protocol,
        shards,
        data_dir,
        history,
        inbox_capacity,
        idempotency_ttl_secs,
        idempotency_max_keys,
        metrics,
        log_format,
        log_level,
        demo,
        demo_bundle,
        shutdown_grace_ms,
        ren
    );
    let previous = shared.tenants.load();
    let tenants = TenantTable::rebuild(&next.tenants, next.default_tenant.as_deref(), &previous);
    let ids = |t: &TenantTable| -> Vec<String> {
        let mut ids: Vec<String> = t.iter().map(|t| t.id.as_str().to_owned()).collect();
        ids.sort_unstable();
        ids
    };
    let (before, after) = (ids(&previous), ids(&tenants));
    let reloaded = Reloaded {
        added: after
            .iter()
            .filter(|id| !before.contains(id))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|id| !after.contains(id))
            .cloned()
            .collect(),
        need_restart,
    };
    shared.trusted.store(std::sync::Arc::new(next.trusted()));
    shared.config.store(std::sync::Arc::new(next));
    shared.tenants.store(std::sync::Arc::new(tenants));
    shared.reloads.fetch_add(1, Ordering::AcqRel);
    Ok(reloaded)
}

/// Reloads and logs the outcome (the SIGHUP handler).
pub fn reload_and_log(shared: &Shared, source: &ConfigSource) {
    if source.path.is_none() {
        tracing::warn!("SIGHUP: no --config file to reload");
        return;
    }
    match reload(shared, source) {
        Ok(done) => {
            for setting in &done.need_restart {
                tracing::warn!(
                    setting,
                    "config reload: this setting changes only on restart"
                );
            }
            for warning in shared.config.load().warnings() {
                tracing::warn!("{warning}");
            }
            tracing::info!(
                added = ?done.added,
                removed = ?done.removed,
                "config reloaded"
            );
        }
        Err(e) => tracing::error!(
            error = %e.redacted(),
            "config reload refused; the running config stays"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;

    fn source(dir: &tempfile::TempDir, text: &str) -> ConfigSource {
        let path = dir.path().join("ringcast.toml");
        std::fs::write(&path, text).unwrap();
        ConfigSource {
            path: Some(path),
            flags: Overrides::default(),
        }
    }

    #[test]
    fn a_reload_swaps_tenants_keeps_usage_and_refuses_a_broken_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let first = source(
            &dir,
            "shards = 1\n[[tenants]]\nid = \"a\"\nplan = \"free\"\n[[tenants]]\nid = \"b\"\nplan = \"free\"\n",
        );
        let config = first.load().unwrap();
        let shared = Shared::new(config, Mesh::with_capacity(1, 64));
        let usage = shared.tenants.load().get("a").unwrap().usage.clone();
        assert!(usage.try_count_channel(Some(10)));

        let next = source(
            &dir,
            "shards = 4\nshutdown_grace_ms = 1\n[ren]\nbuffer_events = 5\n[[tenants]]\nid = \"a\"\nplan = \"pro\"\n[[tenants]]\nid = \"c\"\nplan = \"free\"\n",
        );
        let done = reload(&shared, &next).unwrap();
        assert_eq!(done.added, vec!["c".to_owned()]);
        assert_eq!(done.removed, vec!["b".to_owned()]);
        // The shutdown grace is read once by each shard at start (found in review: a
        // reload took a new value silently and shutdown used the old one).
        // So are the REN buffer's bounds (found in review: a change was taken silently).
        assert_eq!(
            done.need_restart,
            vec!["shards", "shutdown_grace_ms", "ren"]
        );
        assert_eq!(
            shared.config.load().shards,
            1,
            "shards keep their running value"
        );
        let a = shared.tenants.load().get("a").unwrap();
        assert_eq!(a.limits.max_channels, Some(200), "the new plan applies");
        assert_eq!(a.usage.active_channels(), 1, "usage is carried over");
        assert_eq!(shared.reload_count(), 1);

        let broken = source(&dir, "[[tenants]]\nid = \"a\"\nplan = \"platinum\"\n");
        assert!(reload(&shared, &broken).is_err());
        assert!(
            shared.tenants.load().get("c").is_some(),
            "the running config stays"
        );
        assert_eq!(shared.reload_count(), 1);
    }
}
