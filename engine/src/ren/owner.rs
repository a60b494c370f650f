//! The REN owner's state: one [`RenLog`] per tenant it owns (`keys::tenant_owner`), with
//! the tenant's sequence, its resume buffer, and the shards that have streams of it.
//!
//! Ids: a tenant's sequence starts, in each process, at `1000 × the wall-clock ms` at
//! which its first stream opened, and goes up by one per event. A `Last-Event-ID` from
//! an earlier run of the server is therefore below the start and is answered with
//! `ren.meta` (truncated) instead of being taken for an id of this run. (A run that
//! assigned more than 1,000 ids per millisecond of its life on average could overlap the
//! next run's ids; no tenant comes near that.) Ids stay below 2^53, so a client may even
//! read them as JavaScript numbers.

use hashbrown::HashMap;
use ringcast_protocol::TenantId;

use crate::clock::Millis;
use crate::keys::ShardId;
use crate::owner::ShardSet;
use crate::ren::activity::RenActivity;
use crate::ren::buffer::RenBuffer;
use crate::ren::RenLimits;

/// One tenant's sequence at its REN owner.
#[derive(Debug)]
pub struct RenLog {
    /// Its ids and kept events.
    pub buffer: RenBuffer,
    /// Shards with at least one stream of the tenant (subscribed or subscribing).
    pub watchers: ShardSet,
    /// Since when no shard has had a stream (`None` while some has).
    idle_since: Option<Millis>,
    /// Recording (see `activity.rs`).
    active: bool,
}

/// The logs of every tenant this shard is the REN owner of.
#[derive(Debug, Default)]
pub struct RenLogs {
    logs: HashMap<TenantId, RenLog>,
}

impl RenLogs {
    /// A stream of `tenant` on `from` subscribes: the tenant's log, recording (activated
    /// first if it was not: the shared flag is set before this returns, so before the
    /// stream is answered).
    pub fn subscribe(
        &mut self,
        tenant: &TenantId,
        from: ShardId,
        now: Millis,
        activity: &RenActivity,
    ) -> &mut RenLog {
        // The engine's clock is epoch-aligned (wall clock at start-up + monotonic).
        let base = now.0.saturating_mul(1000);
        if let Some(log) = self.logs.get_mut(tenant).filter(|log| !log.active) {
            // It recorded before and then stopped: events happened unseen since, so no
            // id handed out so far may resume.
            log.buffer.skip_to(base);
        }
        let log = self.logs.entry_ref(tenant).or_insert_with(|| RenLog {
            buffer: RenBuffer::new(base),
            watchers: ShardSet::default(),
            idle_since: None,
            active: false,
        });
        if !log.active {
            log.active = true;
            activity.activate(tenant);
        }
        log.watchers.insert(from);
        log.idle_since = None;
        log
    }

    /// `from` has no stream of `tenant` left.
    pub fn unwatch(&mut self, tenant: &TenantId, from: ShardId, now: Millis) {
        if let Some(log) = self.logs.get_mut(tenant) {
            log.watchers.remove(from);
            if log.watchers.is_empty() {
                log.idle_since = Some(now);
            }
        }
    }

    /// The log of `tenant` if it is recording.
    pub fn recording(&mut self, tenant: &TenantId) -> Option<&mut RenLog> {
        self.logs.get_mut(tenant).filter(|log| log.active)
    }

    /// Ages every buffer out, and stops recording for tenants that have had no stream
    /// for the buffer's age bound (their buffer is freed; their sequence goes on after a
    /// gap when a stream comes back). Returns how many stopped.
    pub fn housekeeping(
        &mut self,
        now: Millis,
        limits: &RenLimits,
        activity: &RenActivity,
    ) -> usize {
        let mut stopped = 0;
        for (tenant, log) in self.logs.iter_mut() {
            log.buffer.expire(now, limits);
            let idle_long = log
                .idle_since
                .is_some_and(|since| now.since(since) >= limits.max_age_ms);
            if log.active && idle_long {
                log.active = false;
                log.buffer.clear();
                activity.deactivate(tenant);
                stopped += 1;
            }
        }
        stopped
    }

    /// Tenants with a log here.
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    /// Whether this shard owns no tenant's log.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Events kept in every buffer here.
    pub fn buffered(&self) -> usize {
        self.logs.values().map(|log| log.buffer.len()).sum()
    }
}
