//! Idempotency keys of HTTP publishes (`idempotencyKey` / `Idempotency-Key`), kept on
//! the channel's owner shard.
//!
//! The owner handles a channel's publishes one at a time, so "was this key seen on this
//! channel?" is answered exactly, with no lock and no cross-core traffic: a retry that
//! arrives while the first publish is still queued is handled after it, and finds it.
//! Keys are scoped by (tenant, channel): the same key on two channels is two keys.
//!
//! Bounded: at most `max_per_tenant` keys per tenant on each shard; past it the oldest
//! key is forgotten early (a retry of it after that publishes again). Each entry costs
//! the key (at most 256 bytes), a shared reference to the channel name and about 80
//! bytes of table overhead. Keys expire `ttl_ms` after the first publish.

use std::collections::VecDeque;

use hashbrown::HashMap;
use ringcast_protocol::{ChannelName, TenantId};

use crate::keys::ChannelKey;

/// What a first publish answered, replayed to its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The message's seq.
    pub seq: u64,
    /// The message's `ts`.
    pub ts: u64,
}

/// The idempotency keys of the channels this shard owns.
#[derive(Debug)]
pub struct IdempotencyTable {
    ttl_ms: u64,
    max_per_tenant: usize,
    tenants: HashMap<TenantId, TenantKeys>,
}

#[derive(Debug, Default)]
struct TenantKeys {
    by_channel: HashMap<ChannelName, HashMap<Box<str>, Remembered>>,
    /// Every entry once, oldest first: (expires at, channel, key). The TTL is the same for
    /// every key, so insertion order is expiry order.
    order: VecDeque<(u64, ChannelName, Box<str>)>,
}

impl TenantKeys {
    fn forget_oldest(&mut self) {
        if let Some((_, channel, key)) = self.order.pop_front() {
            if let Some(keys) = self.by_channel.get_mut(&channel) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_channel.remove(&channel);
                }
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|(at, _, _)| *at <= now_ms) {
            self.forget_oldest();
        }
    }
}

impl IdempotencyTable {
    /// Keys live `ttl_ms`; at most `max_per_tenant` per tenant are kept.
    pub fn new(ttl_ms: u64, max_per_tenant: usize) -> IdempotencyTable {
        IdempotencyTable {
            ttl_ms,
            max_per_tenant: max_per_tenant.max(1),
            tenants: HashMap::new(),
        }
    }

    /// The answer of the first publish on `channel` with `key`, if it is still kept.
    pub fn get(&mut self, channel: &ChannelKey, key: &str, now_ms: u64) -> Option<Remembered> {
        let keys = self.tenants.get_mut(&channel.tenant)?;
        keys.expire(now_ms);
        keys.by_channel.get(&channel.channel)?.get(key).copied()
    }

    /// Records the answer of the first publish on `channel` with `key`.
    pub fn remember(
        &mut self,
        channel: &ChannelKey,
        key: Box<str>,
        answer: Remembered,
        now_ms: u64,
    ) {
        let keys = self.tenants.entry(channel.tenant.clone()).or_default();
        keys.expire(now_ms);
        let per_channel = keys.by_channel.entry(channel.channel.clone()).or_default();
        if per_channel.contains_key(&key) {
            return;
        }
        per_channel.insert(key.clone(), answer);
        keys.order.push_back((
            now_ms.saturating_add(self.ttl_ms),
            channel.channel.clone(),
            key,
        ));
        while keys.order.len() > self.max_per_tenant {
            keys.forget_oldest();
        }
    }

    /// Forgets expired keys (housekeeping) and tenants left with none.
    pub fn expire(&mut self, now_ms: u64) {
        for keys in self.tenants.values_mut() {
            keys.expire(now_ms);
        }
        self.tenants.retain(|_, keys| !keys.order.is_empty());
    }

    /// Keys kept, over all tenants.
    pub fn len(&self) -> usize {
        self.tenants.values().map(|k| k.order.len()).sum()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, channel: &str) -> ChannelKey {
        ChannelKey::new(TenantId::new(tenant), ChannelName::new(channel).unwrap())
    }

    #[test]
    fn a_key_is_answered_until_it_expires_per_channel() {
        let mut table = IdempotencyTable::new(1000, 10);
        let (a, b) = (key("t", "a"), key("t", "b"));
        let first = Remembered { seq: 7, ts: 100 };
        table.remember(&a, "k".into(), first, 100);
        assert_eq!(table.get(&a, "k", 500), Some(first));
        assert_eq!(table.get(&b, "k", 500), None, "scoped by channel");
        assert_eq!(
            table.get(&key("u", "a"), "k", 500),
            None,
            "scoped by tenant"
        );
        // A second remember of the same key keeps the first answer.
        table.remember(&a, "k".into(), Remembered { seq: 8, ts: 200 }, 200);
        assert_eq!(table.get(&a, "k", 1099), Some(first));
        assert_eq!(table.get(&a, "k", 1100), None);
        table.expire(1100);
        assert!(table.is_empty());
    }

    #[test]
    fn each_tenant_is_bounded_and_forgets_its_oldest() {
        let mut table = IdempotencyTable::new(60_000, 3);
        let a = key("t", "a");
        for i in 0..5u64 {
            let answer = Remembered { seq: i, ts: i };
            table.remember(&a, i.to_string().into(), answer, i);
        }
        table.remember(&key("u", "a"), "x".into(), Remembered { seq: 1, ts: 1 }, 5);
        assert_eq!(table.len(), 4);
        assert_eq!(table.get(&a, "1", 6), None);
        assert_eq!(table.get(&a, "2", 6), Some(Remembered { seq: 2, ts: 2 }));
        assert_eq!(table.get(&a, "4", 6), Some(Remembered { seq: 4, ts: 4 }));
    }
}
