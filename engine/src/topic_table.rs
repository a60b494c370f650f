//! A shard's local topic table: which of ITS connections follow which channel.
//!
//! Architecture invariant: only the owning shard's thread touches its table; other shards
//! reach it through the shard's inbox. A channel is "watched" by this shard (the owner
//! sends it messages) while the entry exists: from the first pending subscribe until the
//! last subscriber leaves and no subscribe is pending. Emptiness is reported to the caller
//! exactly once, so it can tell the owner (`Unwatch`).

use std::rc::Rc;

use hashbrown::HashMap;

use crate::conn::Conn;
use crate::keys::{ChannelKey, ConnId, ShardId};

/// Local subscribers of one channel.
#[derive(Debug, Default)]
pub struct LocalChannel {
    subscribers: Vec<Rc<Conn>>,
    pending: u32,
}

impl LocalChannel {
    /// The subscribed connections.
    pub fn subscribers(&self) -> &[Rc<Conn>] {
        &self.subscribers
    }

    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.pending == 0
    }
}

/// Whether the shard still watches a channel after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Subscribers or pending subscribes remain.
    Watching,
    /// The entry is gone: tell the owner.
    Unwatched,
}

/// Channel → local subscribers.
#[derive(Debug, Default)]
pub struct LocalTopics {
    channels: HashMap<ChannelKey, LocalChannel>,
    /// Subscribers over every channel (the `ringcast_subscriptions` gauge).
    subscriptions: usize,
    /// `(this shard, shard count)` when subscriptions are also counted per tenant.
    tenant_meter: Option<(ShardId, usize)>,
}

impl LocalTopics {
    /// A table that also counts subscriptions per tenant, in slot `shard` of each
    /// tenant's metrics (`[metrics] tenant_labels`).
    pub fn with_tenant_meter(shard: ShardId, shards: usize) -> LocalTopics {
        LocalTopics {
            tenant_meter: Some((shard, shards)),
            ..LocalTopics::default()
        }
    }

    /// Subscribers over every channel.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    fn count_tenant(&self, conn: &Conn, delta: i64) {
        if let Some((shard, shards)) = self.tenant_meter {
            let slot = conn.tenant.metrics.shard(shard, shards);
            slot.subscriptions.add(delta);
        }
    }

    /// Records a subscribe sent to the owner.
    pub fn begin_subscribe(&mut self, key: &ChannelKey) {
        self.channels.entry_ref(key).or_default().pending += 1;
    }

    /// Records the owner's answer; `conn` is added unless it is `None` (gone meanwhile).
    pub fn finish_subscribe(&mut self, key: &ChannelKey, conn: Option<Rc<Conn>>) -> Watch {
        let Some(channel) = self.channels.get_mut(key) else {
            return Watch::Unwatched;
        };
        channel.pending = channel.pending.saturating_sub(1);
        if let Some(conn) = conn {
            if !channel.subscribers.iter().any(|c| c.id == conn.id) {
                channel.subscribers.push(conn.clone());
                self.subscriptions += 1;
                self.count_tenant(&conn, 1);
            }
        }
        self.prune(key)
    }

    /// Removes `conn` from `key`'s subscribers.
    pub fn remove(&mut self, key: &ChannelKey, conn: ConnId) -> Watch {
        let Some(channel) = self.channels.get_mut(key) else {
            return Watch::Watching;
        };
        if let Some(at) = channel.subscribers.iter().position(|c| c.id == conn) {
            let gone = channel.subscribers.swap_remove(at);
            self.subscriptions -= 1;
            self.count_tenant(&gone, -1);
        }
        self.prune(key)
    }

    /// The local subscribers of `key`.
    pub fn get(&self, key: &ChannelKey) -> Option<&LocalChannel> {
        self.channels.get(key)
    }

    /// Number of watched channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether no channel is watched.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    fn prune(&mut self, key: &ChannelKey) -> Watch {
        match self.channels.get(key) {
            Some(channel) if channel.is_empty() => {
                self.channels.remove(key);
                Watch::Unwatched
            }
            _ => Watch::Watching,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Plan, TenantConfig, TenantTable};
    use ringcast_protocol::{ChannelName, TenantId};

    fn conn(id: u64) -> Rc<Conn> {
        let tenant = TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap();
        Rc::new(Conn::new(ConnId(id), tenant, 1 << 20))
    }

    fn key() -> ChannelKey {
        ChannelKey::new(TenantId::new("t"), ChannelName::new("c").unwrap())
    }

    #[test]
    fn pending_subscribe_keeps_the_channel_watched() {
        let mut topics = LocalTopics::default();
        let (a, b) = (conn(1), conn(2));
        topics.begin_subscribe(&key());
        assert_eq!(
            topics.finish_subscribe(&key(), Some(a.clone())),
            Watch::Watching
        );
        topics.begin_subscribe(&key());
        // `a` leaves while `b`'s subscribe is in flight: still watched.
        assert_eq!(topics.remove(&key(), a.id), Watch::Watching);
        assert_eq!(
            topics.finish_subscribe(&key(), Some(b.clone())),
            Watch::Watching
        );
        assert_eq!(topics.get(&key()).unwrap().subscribers().len(), 1);
        assert_eq!(topics.subscriptions(), 1);
        assert_eq!(topics.remove(&key(), b.id), Watch::Unwatched);
        assert!(topics.is_empty());
        assert_eq!(topics.subscriptions(), 0);
    }

    #[test]
    fn answer_for_a_vanished_connection_unwatches() {
        let mut topics = LocalTopics::default();
        topics.begin_subscribe(&key());
        assert_eq!(topics.finish_subscribe(&key(), None), Watch::Unwatched);
    }

    #[test]
    fn no_duplicate_subscribers() {
        let mut topics = LocalTopics::default();
        let a = conn(1);
        for _ in 0..2 {
            topics.begin_subscribe(&key());
            topics.finish_subscribe(&key(), Some(a.clone()));
        }
        assert_eq!(topics.get(&key()).unwrap().subscribers().len(), 1);
        assert_eq!(topics.subscriptions(), 1);
    }

    #[test]
    fn subscriptions_are_counted_per_tenant_when_asked() {
        let mut topics = LocalTopics::with_tenant_meter(ShardId(1), 2);
        let a = conn(1);
        topics.begin_subscribe(&key());
        topics.finish_subscribe(&key(), Some(a.clone()));
        assert_eq!(a.tenant.metrics.sum(|c| c.subscriptions.get()), 1);
        topics.remove(&key(), a.id);
        assert_eq!(a.tenant.metrics.sum(|c| c.subscriptions.get()), 0);
    }
}
