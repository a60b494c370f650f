//! Which tenants' channel events are mirrored into REN at all.
//!
//! A channel owner checks this before each mirror, so a tenant nobody follows over REN
//! costs its publishes one hash and one atomic load, and nothing crosses cores. A tenant
//! becomes active when its REN owner handles the first stream's subscribe (before it
//! answers, so anything a client does after its stream opened is mirrored), and stops
//! being active once it has had no stream for `[ren] buffer_secs`: by then every event
//! a reconnecting client could still resume would have aged out of the buffer anyway.
//!
//! Tenants are hashed onto a fixed table of counters (one writer per tenant: its REN
//! owner). Two tenants on one slot make each other look active: extra mirrors that the
//! REN owner drops, never a missed one.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

use ringcast_protocol::TenantId;

const SLOTS: usize = 4096;

/// Per-slot counts of active tenants (shared by every shard).
#[derive(Debug)]
pub struct RenActivity {
    slots: Box<[AtomicU32]>,
}

impl Default for RenActivity {
    fn default() -> Self {
        RenActivity {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl RenActivity {
    fn slot(&self, tenant: &TenantId) -> &AtomicU32 {
        let mut hasher = rustc_hash::FxHasher::default();
        tenant.as_str().hash(&mut hasher);
        let hash = hasher.finish();
        &self.slots[((hash ^ (hash >> 32)) as usize) % SLOTS]
    }

    /// Whether `tenant`'s channel events should be mirrored (true while it is active).
    pub fn is_active(&self, tenant: &TenantId) -> bool {
        self.slot(tenant).load(Ordering::Acquire) != 0
    }

    /// `tenant` became active. Only its REN owner calls this, once per activation.
    pub fn activate(&self, tenant: &TenantId) {
        self.slot(tenant).fetch_add(1, Ordering::SeqCst);
    }

    /// `tenant` stopped being active. Only its REN owner calls this, once per activation.
    pub fn deactivate(&self, tenant: &TenantId) {
        self.slot(tenant).fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_slot() {
        let activity = RenActivity::default();
        let (a, b) = (TenantId::new("a"), TenantId::new("b"));
        assert!(!activity.is_active(&a));
        activity.activate(&a);
        assert!(activity.is_active(&a));
        activity.activate(&b);
        activity.deactivate(&a);
        assert!(activity.is_active(&b));
        activity.deactivate(&b);
        assert!(!activity.is_active(&a) && !activity.is_active(&b));
    }
}
