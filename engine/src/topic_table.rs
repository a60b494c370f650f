//! A shard's local topic table: which of ITS connections follow which channel.
//!
//! Architecture invariant: only the owning shard's thread touches its table; other shards
//! reach it through the shard's inbox. A channel is "watched" by this shard (the owner
//! sends it messages) while the entry exists: from the first pending subscribe until the
//! last subscriber leaves and no subscribe is pending. Emptiness is reported to the caller
//! exactly once, so it can tell the owner (`Unwatch`).

use std::rc::Rc;

use hashbrown::HashMap;
use ringcast_store::SplitMap;

use crate::conn::Conn;
use crate::keys::{ChannelKey, ConnId, ShardId};

/// A channel with more local subscribers than this finds one by a hash index instead of
/// a scan (a channel every connection follows would otherwise make connection set-up
/// quadratic: 10,000 subscribes scanning up to 10,000 entries each).
const INDEX_FROM: usize = 16;

/// Local subscribers of one channel: a dense list (what fan-out walks) and, once the
/// channel is large, each connection's place in it.
#[derive(Debug, Default)]
pub struct LocalChannel {
    subscribers: Vec<Rc<Conn>>,
    index: Option<Box<HashMap<ConnId, u32>>>,
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

    fn position(&self, conn: ConnId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&conn).map(|&at| at as usize),
            None => self.subscribers.iter().position(|c| c.id == conn),
        }
    }

    fn push(&mut self, conn: Rc<Conn>) {
        let at = self.subscribers.len() as u32;
        let id = conn.id;
        self.subscribers.push(conn);
        match &mut self.index {
            Some(index) => {
                index.insert(id, at);
            }
            None if self.subscribers.len() > INDEX_FROM => {
                let index = self
                    .subscribers
                    .iter()
                    .enumerate()
                    .map(|(at, c)| (c.id, at as u32))
                    .collect();
                self.index = Some(Box::new(index));
            }
            None => {}
        }
    }

    fn swap_remove(&mut self, at: usize) -> Rc<Conn> {
        let gone = self.subscribers.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&gone.id);
            if let Some(moved) = self.subscribers.get(at) {
                index.insert(moved.id, at as u32);
            }
        }
        gone
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
    /// Split, so that no subscribe regrows the whole table.
    channels: SplitMap<ChannelKey, LocalChannel>,
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
        self.channels
            .get_or_insert_with(key, LocalChannel::default)
            .pending += 1;
    }

    /// Records the owner's answer; `conn` is added unless it is `None` (gone meanwhile).
    pub fn finish_subscribe(&mut self, key: &ChannelKey, conn: Option<Rc<Conn>>) -> Watch {
        let Some(channel) = self.channels.get_mut(key) else {
            return Watch::Unwatched;
        };
        channel.pending = channel.pending.saturating_sub(1);
        if let Some(conn) = conn {
            if channel.position(conn.id).is_none() {
                channel.push(conn.clone());
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
        if let Some(at) = channel.position(conn) {
            let gone = channel.swap_remove(at);
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
    fn a_large_channel_finds_and_removes_any_subscriber() {
        let mut topics = LocalTopics::default();
        let conns: Vec<_> = (0..200).map(conn).collect();
        for c in &conns {
            topics.begin_subscribe(&key());
            topics.finish_subscribe(&key(), Some(c.clone()));
        }
        // Again: no duplicates past the index threshold either.
        topics.begin_subscribe(&key());
        topics.finish_subscribe(&key(), Some(conns[150].clone()));
        assert_eq!(topics.get(&key()).unwrap().subscribers().len(), 200);
        // Remove in an order that moves entries around.
        for c in conns.iter().step_by(3) {
            topics.remove(&key(), c.id);
        }
        let mut left: Vec<u64> = topics
            .get(&key())
            .unwrap()
            .subscribers()
            .iter()
            .map(|c| c.id.0)
            .collect();
        left.sort_unstable();
        let expected: Vec<u64> = (0..200).filter(|i| i % 3 != 0).collect();
        assert_eq!(left, expected);
        for c in conns.iter().filter(|c| c.id.0 % 3 != 0) {
            topics.remove(&key(), c.id);
        }
        assert!(topics.is_empty());
        assert_eq!(topics.subscriptions(), 0);
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
