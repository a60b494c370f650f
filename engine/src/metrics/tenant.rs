//! Per-tenant counters, for the `tenant`-labelled families (`[metrics] tenant_labels =
//! true`). One [`TenantMetrics`] per tenant (an `Arc` in `Tenant`, carried across
//! reloads like its usage), holding one padded slot per shard: each shard writes only
//! its own slot, with plain loads and stores, as for [`super::ShardCounters`]. The slots
//! are allocated at a tenant's first counted event, and only when tenant labels are on
//! (shards skip counting otherwise).
//!
//! Cardinality stays bounded: the labels are the configured tenants, at most
//! `max_tenant_labels` of them (by id); the others are summed under `tenant="_other"`.

use std::sync::OnceLock;

use super::counters::{Count, Level};
use crate::keys::ShardId;

/// The label value for tenants past `max_tenant_labels`.
pub const OTHER_TENANTS: &str = "_other";

/// What one shard counts for one tenant.
#[derive(Debug, Default)]
pub struct TenantShardCounters {
    /// The tenant's WebSocket sessions on this shard.
    pub ws_connections: Level,
    /// The tenant's SSE streams on this shard (moved by the SSE code, `ren/serve.rs`, with
    /// the shard's own `sse_connections`).
    pub sse_connections: Level,
    /// Subscriptions of the tenant's connections on this shard.
    pub subscriptions: Level,
    /// Messages published on the tenant's channels this shard owns.
    pub messages_published: Count,
    /// Messages queued to the tenant's subscribers on this shard.
    pub deliveries: Count,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(TenantShardCounters);

/// One tenant's counters, one slot per shard.
#[derive(Debug, Default)]
pub struct TenantMetrics {
    shards: OnceLock<Box<[Padded]>>,
}

impl TenantMetrics {
    /// The slot shard `shard` (of `shards`) writes.
    pub fn shard(&self, shard: ShardId, shards: usize) -> &TenantShardCounters {
        let slots = self
            .shards
            .get_or_init(|| (0..shards).map(|_| Padded::default()).collect());
        &slots[shard.index()].0
    }

    /// Sums `read` over every shard's slot (0 when nothing was counted yet).
    pub fn sum(&self, read: impl Fn(&TenantShardCounters) -> i64) -> i64 {
        self.shards
            .get()
            .map_or(0, |slots| slots.iter().map(|s| read(&s.0)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_write_their_own_slots_and_the_sum_adds_them() {
        let metrics = TenantMetrics::default();
        assert_eq!(metrics.sum(|c| c.ws_connections.get()), 0);
        metrics.shard(ShardId(0), 2).ws_connections.add(2);
        metrics.shard(ShardId(1), 2).ws_connections.add(1);
        metrics.shard(ShardId(1), 2).deliveries.add(5);
        assert_eq!(metrics.sum(|c| c.ws_connections.get()), 3);
        assert_eq!(metrics.sum(|c| c.deliveries.get() as i64), 5);
    }
}
