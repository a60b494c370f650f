//! The owner side of channels: for every channel this shard owns, its history (and so
//! its seq and epoch) and the set of shards that have subscribers.
//!
//! Architecture invariant: a channel's seq is assigned only here, by the one shard that
//! owns it, and the message is appended to history before it is fanned out.

use hashbrown::{HashMap, HashSet};
use ringcast_protocol::{ChannelName, TenantId};

use crate::history::{ChannelHistory, HistoryError, HistoryPage, HistoryQuery, HistoryStore};
use crate::keys::{log_key_owner, ChannelKey, ShardId};
use crate::tenant::Tenant;

/// A small set of shard ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSet(Vec<u64>);

impl ShardSet {
    /// Adds `shard`.
    pub fn insert(&mut self, shard: ShardId) {
        let (word, bit) = (shard.index() / 64, shard.index() % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    /// Removes `shard`.
    pub fn remove(&mut self, shard: ShardId) {
        let (word, bit) = (shard.index() / 64, shard.index() % 64);
        if let Some(w) = self.0.get_mut(word) {
            *w &= !(1 << bit);
        }
    }

    /// Whether no shard is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The shards in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| ShardId((i * 64 + b) as u16))
        })
    }
}

/// One owned channel.
#[derive(Debug)]
pub struct OwnedChannel {
    /// Its history log.
    pub history: ChannelHistory,
    /// Shards with local subscribers.
    pub watchers: ShardSet,
    /// Last publish or subscribe, for idle eviction.
    pub last_active_ms: u64,
}

/// Every channel this shard owns that is open now.
#[derive(Debug)]
pub struct OwnedChannels {
    channels: HashMap<ChannelKey, OwnedChannel>,
    store: HistoryStore,
}

impl OwnedChannels {
    /// An empty table writing history through `store`.
    pub fn new(store: HistoryStore) -> OwnedChannels {
        OwnedChannels {
            channels: HashMap::new(),
            store,
        }
    }

    /// The channel, opening (or creating) its history on first use.
    pub fn open(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        now_ms: u64,
    ) -> Result<&mut OwnedChannel, HistoryError> {
        if !self.channels.contains_key(key) {
            let history = self.store.open(key, tenant)?;
            self.channels.insert(
                key.clone(),
                OwnedChannel {
                    history,
                    watchers: ShardSet::default(),
                    last_active_ms: now_ms,
                },
            );
        }
        let channel = self.channels.get_mut(key).expect("inserted above");
        channel.last_active_ms = now_ms;
        Ok(channel)
    }

    /// The channel's latest seq and epoch, opening it like [`OwnedChannels::open`].
    pub fn peek(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
    ) -> Result<(u64, String), HistoryError> {
        let now = self.channels.get(key).map_or(0, |c| c.last_active_ms);
        let channel = self.open(key, tenant, now)?;
        Ok((channel.history.last_seq(), channel.history.epoch()))
    }

    /// A page of `key`'s history, opening it like [`OwnedChannels::peek`] (a channel
    /// never published to gives an empty page and creates no log).
    pub fn history_page(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, HistoryError> {
        let now = self.channels.get(key).map_or(0, |c| c.last_active_ms);
        let channel = self.open(key, tenant, now)?;
        crate::history::history_page(&channel.history, query)
    }

    /// The open channels of `tenant` that some shard has subscribers on.
    pub fn watched_channels<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a ChannelName> + 'a {
        self.channels
            .iter()
            .filter(move |(key, channel)| &key.tenant == tenant && !channel.watchers.is_empty())
            .map(|(key, _)| &key.channel)
    }

    /// Appends an encoded message to `key`'s history (opened by [`OwnedChannels::open`]).
    pub fn append(
        &mut self,
        key: &ChannelKey,
        ts_ms: u64,
        user_id: Option<&str>,
        frame: &[u8],
    ) -> Result<u64, HistoryError> {
        let channel = self
            .channels
            .get_mut(key)
            .expect("channel opened before append");
        self.store
            .append(key, &mut channel.history, ts_ms, user_id, frame)
    }

    /// The open channel `key`.
    pub fn get(&self, key: &ChannelKey) -> Option<&OwnedChannel> {
        self.channels.get(key)
    }

    /// Shard `from` no longer has subscribers on `key`.
    pub fn unwatch(&mut self, key: &ChannelKey, from: ShardId) {
        if let Some(channel) = self.channels.get_mut(key) {
            channel.watchers.remove(from);
        }
    }

    /// Closes channels nobody watches that were idle since `idle_before_ms`, and flushes
    /// the rest if the flush policy asks for it.
    pub fn housekeeping(&mut self, now_ms: u64, idle_before_ms: u64) {
        self.channels
            .retain(|_, c| !(c.watchers.is_empty() && c.last_active_ms < idle_before_ms));
        for channel in self.channels.values_mut() {
            channel.history.tick(now_ms);
        }
    }

    /// Removes history logs idle past the TTL among those this shard (`me` of `shards`)
    /// owns and has not open. Every shard shares the history folder, so another shard's
    /// logs are left to their owner, which alone knows whether they are open (a log key
    /// that names no channel goes to shard 0).
    pub fn remove_idle_logs(&self, now_ms: u64, me: ShardId, shards: usize) -> usize {
        let open: HashSet<Vec<u8>> = self.channels.keys().map(ChannelKey::log_key).collect();
        self.store.remove_idle(now_ms, |key| {
            log_key_owner(key, shards).unwrap_or(ShardId(0)) != me || open.contains(key)
        })
    }

    /// Number of open channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::tenant::{Plan, TenantConfig, TenantTable};
    use ringcast_protocol::{ChannelName, TenantId};

    #[test]
    fn only_the_owner_removes_an_idle_log_and_only_once_closed() {
        let data = tempfile::tempdir().unwrap();
        let config = HistoryConfig {
            idle_ttl_secs: 0,
            ..HistoryConfig::default()
        };
        let tenant = TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap();
        let table = || OwnedChannels::new(HistoryStore::new(data.path(), &config).unwrap());
        let (mut owner_table, other_table) = (table(), table());
        let key = (0..)
            .map(|i| {
                ChannelKey::new(
                    TenantId::new("t"),
                    ChannelName::new(&format!("c{i}")).unwrap(),
                )
            })
            .find(|k| k.owner(2) == ShardId(1))
            .unwrap();
        owner_table.open(&key, &tenant, 1).unwrap();
        owner_table.append(&key, 1, None, b"frame").unwrap();
        let (owner, other) = (ShardId(1), ShardId(0));

        assert_eq!(
            other_table.remove_idle_logs(u64::MAX, other, 2),
            0,
            "not its log"
        );
        assert_eq!(
            owner_table.remove_idle_logs(u64::MAX, owner, 2),
            0,
            "still open"
        );
        owner_table.housekeeping(2, u64::MAX);
        assert!(owner_table.is_empty());
        assert_eq!(owner_table.remove_idle_logs(u64::MAX, owner, 2), 1);
    }

    #[test]
    fn shard_set() {
        let mut set = ShardSet::default();
        assert!(set.is_empty());
        for s in [3u16, 0, 70] {
            set.insert(ShardId(s));
        }
        set.insert(ShardId(3));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![ShardId(0), ShardId(3), ShardId(70)]
        );
        set.remove(ShardId(3));
        set.remove(ShardId(0));
        set.remove(ShardId(70));
        assert!(set.is_empty());
    }
}
