//! The owner side of channels: for every channel this shard owns, its history (and so
//! its seq and epoch) and the set of shards that have subscribers.
//!
//! Architecture invariant: a channel's seq is assigned only here, by the one shard that
//! owns it, and the message is appended to history before it is fanned out.
//!
//! The owner also decides when a channel counts against its tenant's `max_channels`
//! (SPEC §8): while some shard has subscribers on it, it has presence members, or it had
//! a publish in the last [`PUBLISH_KEEPS_ACTIVE_MS`]. A channel starts counting through
//! [`OwnedChannels::open_counted`] (refused when the tenant is at its limit) and stops in
//! [`OwnedChannels::settle`] (after an unwatch or a presence leave) or in housekeeping
//! (when its last publish ages out).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use ringcast_protocol::{ChannelName, TenantId};
use ringcast_store::{SplitMap, StoreStats};

use crate::config::MAX_SHARDS;
use crate::history::{
    ChannelHistory, HistoryError, HistoryPage, HistoryQuery, HistoryStore, SubscribeAnswer,
};
use crate::keys::{ChannelKey, ShardId};
use crate::tenant::{Tenant, TenantUsage};

/// How long a publish keeps a channel counting as active.
pub const PUBLISH_KEEPS_ACTIVE_MS: u64 = 60_000;

/// Open channels [`OwnedChannels::housekeeping`] looks at per tick (about a millisecond
/// of work): a shard with more goes round its table in several ticks, so its channels
/// stop counting and close up to `open channels / SWEEP_PER_TICK` seconds late, instead
/// of every tick stalling the shard for the whole table (7 ms at 500k channels).
pub const SWEEP_PER_TICK: usize = 1 << 16;

/// The tenant is at its `max_channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimitReached(pub u32);

/// A small set of shard ids: shards 0–63 in one inline word, 64 and up (to
/// [`MAX_SHARDS`]) in words on the heap. 16 bytes, and on hosts of up to 64 shards no
/// pointer to follow when a publish walks its channel's watchers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSet {
    low: u64,
    /// Shards 64 and up; `None` when none is in the set, so equal sets compare equal.
    high: Option<Box<[u64; HIGH_WORDS]>>,
}

/// Words for the shards above 63.
const HIGH_WORDS: usize = MAX_SHARDS / 64 - 1;

impl ShardSet {
    /// Adds `shard` (below [`MAX_SHARDS`]).
    pub fn insert(&mut self, shard: ShardId) {
        let (word, bit) = (shard.index() / 64, shard.index() % 64);
        match word {
            0 => self.low |= 1 << bit,
            _ => self.high.get_or_insert_with(Box::default)[word - 1] |= 1 << bit,
        }
    }

    /// Removes `shard`.
    pub fn remove(&mut self, shard: ShardId) {
        let (word, bit) = (shard.index() / 64, shard.index() % 64);
        if word == 0 {
            self.low &= !(1 << bit);
            return;
        }
        let Some(high) = self.high.as_mut() else {
            return;
        };
        if let Some(w) = high.get_mut(word - 1) {
            *w &= !(1 << bit);
        }
        if high.iter().all(|&w| w == 0) {
            self.high = None;
        }
    }

    /// Whether no shard is in the set.
    pub fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_none()
    }

    /// The shards in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        let high = self.high.as_deref().map_or(&[][..], |h| &h[..]);
        std::iter::once(self.low)
            .chain(high.iter().copied())
            .enumerate()
            .flat_map(|(i, mut w)| {
                std::iter::from_fn(move || {
                    let bit = (w != 0).then(|| w.trailing_zeros() as usize)?;
                    w &= w - 1;
                    Some(ShardId((i * 64 + bit) as u16))
                })
            })
    }
}

/// A message [`OwnedChannels::publish`] appended.
#[derive(Debug)]
pub struct Published<'a> {
    /// Its channel, for the watchers.
    pub channel: &'a OwnedChannel,
    /// The seq it got.
    pub seq: u64,
    /// Its `realtime.message` frame, as every subscriber gets it.
    pub frame: Bytes,
    /// The span of its `data` in `frame`.
    pub data: Range<u32>,
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
    /// Last publish (0: none since it was opened).
    pub last_publish_ms: u64,
    /// The usage it counts against while it is active.
    counted: Option<Arc<TenantUsage>>,
}

impl OwnedChannel {
    /// Stops counting against its tenant.
    fn uncount(&mut self) {
        if let Some(usage) = self.counted.take() {
            usage.uncount_channel();
        }
    }

    /// Counts against `tenant` from now on (the caller has counted it in its usage).
    fn count(&mut self, tenant: &Tenant) {
        if self.counted.is_none() {
            self.counted = Some(tenant.usage.clone());
        }
    }

    /// Whether it counts against its tenant's `max_channels` now.
    pub fn is_counted(&self) -> bool {
        self.counted.is_some()
    }
}

/// `key`'s entry in `channels`, created with its history from `store` on first use,
/// marked active at `now_ms`.
fn open_in<'a>(
    channels: &'a mut SplitMap<ChannelKey, OwnedChannel>,
    store: &mut HistoryStore,
    key: &ChannelKey,
    tenant: &Tenant,
    now_ms: u64,
) -> &'a mut OwnedChannel {
    let channel = channels.get_or_insert_with(key, || OwnedChannel {
        history: store.open_channel(key, tenant),
        watchers: ShardSet::default(),
        last_active_ms: now_ms,
        last_publish_ms: 0,
        counted: None,
    });
    channel.last_active_ms = now_ms;
    // A reload may have changed the tenant's `history_messages` since the channel opened
    // (found in review: a channel never closed kept its old bound for good).
    store.follow_limits(&mut channel.history, tenant);
    channel
}

/// Every channel this shard owns that is open now, and the shard's history store.
#[derive(Debug)]
pub struct OwnedChannels {
    /// Split, so that no insert regrows the whole table (a million channels on a shard).
    channels: SplitMap<ChannelKey, OwnedChannel>,
    /// The part [`OwnedChannels::housekeeping`] looks at next.
    sweep_next: usize,
    store: HistoryStore,
    /// The open channels some shard watches, by tenant, so listing one tenant's looks at
    /// no other tenant's (found in review: `GET /api/realtime/channels` scanned every
    /// open channel of the shard, and any tenant could repeat it). A channel closes only
    /// once unwatched, so [`OwnedChannels::watch`] and [`OwnedChannels::unwatch`] keep it.
    watched: HashMap<TenantId, HashSet<ChannelName>>,
}

impl OwnedChannels {
    /// An empty table writing history through `store`.
    pub fn new(store: HistoryStore) -> OwnedChannels {
        OwnedChannels {
            channels: SplitMap::new(),
            sweep_next: 0,
            store,
            watched: HashMap::new(),
        }
    }

    /// The channel, opening its history on first use (no disk work: a channel's ring is
    /// found in memory or created by its first append).
    pub fn open(&mut self, key: &ChannelKey, tenant: &Tenant, now_ms: u64) -> &mut OwnedChannel {
        open_in(&mut self.channels, &mut self.store, key, tenant, now_ms)
    }

    /// Like [`OwnedChannels::open`], for an action that makes the channel active
    /// (subscribe, publish, presence join): a channel not counting yet counts from now
    /// on, unless its tenant is at its `max_channels` (then nothing is opened).
    pub fn open_counted(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        now_ms: u64,
    ) -> Result<&mut OwnedChannel, ChannelLimitReached> {
        if !self.is_counted(key) && !tenant.usage.try_count_channel(tenant.limits.max_channels) {
            return Err(ChannelLimitReached(
                tenant.limits.max_channels.unwrap_or(u32::MAX),
            ));
        }
        Ok(self.open_as_counted(key, tenant, now_ms))
    }

    /// Whether `key` counts against its tenant's `max_channels` now.
    pub fn is_counted(&self, key: &ChannelKey) -> bool {
        self.channels.get(key).is_some_and(OwnedChannel::is_counted)
    }

    /// Like [`OwnedChannels::open`], for a channel the caller has just counted in
    /// `tenant.usage` (when it did not count yet): it counts from now on.
    pub fn open_as_counted(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        now_ms: u64,
    ) -> &mut OwnedChannel {
        let channel = self.open(key, tenant, now_ms);
        channel.count(tenant);
        channel
    }

    /// Stops counting `key` if nothing keeps it active any more: no shard watches it,
    /// `has_members` is false and its last publish is older than
    /// [`PUBLISH_KEEPS_ACTIVE_MS`].
    pub fn settle(&mut self, key: &ChannelKey, has_members: bool, now_ms: u64) {
        if let Some(channel) = self.channels.get_mut(key) {
            let recent = channel.last_publish_ms + PUBLISH_KEEPS_ACTIVE_MS > now_ms
                && channel.last_publish_ms != 0;
            if channel.watchers.is_empty() && !has_members && !recent {
                channel.uncount();
            }
        }
    }

    /// The channel's latest seq and epoch, opening it like [`OwnedChannels::open`]
    /// without counting as activity.
    pub fn peek(&mut self, key: &ChannelKey, tenant: &Tenant) -> (u64, String) {
        let now = self.channels.get(key).map_or(0, |c| c.last_active_ms);
        self.open(key, tenant, now);
        let history = &self.channels.get(key).expect("opened above").history;
        (self.store.last_seq(history), history.epoch())
    }

    /// A page of `key`'s history, opening it like [`OwnedChannels::peek`] (a channel
    /// never published to gives an empty page and creates no log).
    pub fn history_page(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        query: &HistoryQuery,
    ) -> HistoryPage {
        let now = self.channels.get(key).map_or(0, |c| c.last_active_ms);
        self.open(key, tenant, now);
        let history = &self.channels.get(key).expect("opened above").history;
        self.store.history_page(history, query)
    }

    /// The open channels of `tenant` that some shard has subscribers on.
    pub fn watched_channels<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a ChannelName> + 'a {
        self.watched.get(tenant).into_iter().flatten()
    }

    /// Shard `from` has subscribers on `key` (open).
    pub fn watch(&mut self, key: &ChannelKey, from: ShardId) {
        if let Some(channel) = self.channels.get_mut(key) {
            if channel.watchers.is_empty() {
                self.watched
                    .entry_ref(&key.tenant)
                    .or_default()
                    .insert(key.channel.clone());
            }
            channel.watchers.insert(from);
        }
    }

    /// A publish to `key` in one table lookup: opens the channel like
    /// [`OwnedChannels::open_as_counted`], has `encode` build the message for the seq it
    /// gets next (returning the frame and the span of its `data`), and appends that to
    /// the channel's history. Returns the channel (its watchers get the frame next), the
    /// seq, the frame and the span. Nothing is appended if the append fails.
    pub fn publish(
        &mut self,
        key: &ChannelKey,
        tenant: &Tenant,
        now_ms: u64,
        user_id: Option<&str>,
        encode: impl FnOnce(u64) -> (Bytes, Range<u32>),
    ) -> Result<Published<'_>, HistoryError> {
        let store = &mut self.store;
        let channel = open_in(&mut self.channels, store, key, tenant, now_ms);
        channel.count(tenant);
        let (frame, data) = encode(store.last_seq(&channel.history) + 1);
        let seq = store.append(
            key,
            &mut channel.history,
            now_ms,
            user_id,
            &frame,
            data.clone(),
        )?;
        channel.last_publish_ms = now_ms;
        Ok(Published {
            channel,
            seq,
            frame,
            data,
        })
    }

    /// What a subscriber to `key` (opened) gets, see [`HistoryStore::subscribe_answer`].
    pub fn subscribe_answer(
        &self,
        key: &ChannelKey,
        last_event_id: Option<u64>,
        epoch: Option<&str>,
        max_replay_bytes: usize,
        replay_below: Option<u64>,
    ) -> SubscribeAnswer {
        let channel = self.channels.get(key).expect("channel opened before");
        self.store.subscribe_answer(
            &channel.history,
            last_event_id,
            epoch,
            max_replay_bytes,
            replay_below,
        )
    }

    /// The open channel `key`.
    pub fn get(&self, key: &ChannelKey) -> Option<&OwnedChannel> {
        self.channels.get(key)
    }

    /// The open channel `key`, mutably.
    pub fn get_mut(&mut self, key: &ChannelKey) -> Option<&mut OwnedChannel> {
        self.channels.get_mut(key)
    }

    /// Shard `from` no longer has subscribers on `key`.
    pub fn unwatch(&mut self, key: &ChannelKey, from: ShardId) {
        let Some(channel) = self.channels.get_mut(key) else {
            return;
        };
        channel.watchers.remove(from);
        if channel.watchers.is_empty() {
            if let Some(set) = self.watched.get_mut(&key.tenant) {
                set.remove(&key.channel);
                if set.is_empty() {
                    self.watched.remove(&key.tenant);
                }
            }
        }
    }

    /// Stops counting channels that nothing keeps active (see
    /// [`OwnedChannels::settle`]; `keep` says which have presence members), closes
    /// channels nobody watches that were idle since `idle_before_ms` and that `keep`
    /// does not hold open (their rings become evictable), then the store's periodic work
    /// (see [`HistoryStore::housekeeping`]). Looks at up to [`SWEEP_PER_TICK`] channels
    /// (whole parts of the table), going on next time where it stopped. Returns the
    /// rings freed.
    pub fn housekeeping(
        &mut self,
        now_ms: u64,
        idle_before_ms: u64,
        sweep_idle: bool,
        keep: impl Fn(&ChannelKey) -> bool,
    ) -> usize {
        let store = &mut self.store;
        let published_before = now_ms.saturating_sub(PUBLISH_KEEPS_ACTIVE_MS);
        // Up to SWEEP_PER_TICK channels a tick, whole parts at a time, going on where the
        // last tick stopped: every tick is a full pass until the table is that big.
        self.channels
            .retain_in_turn(&mut self.sweep_next, SWEEP_PER_TICK, |key, c| {
                let held = !c.watchers.is_empty() || keep(key);
                if !held && c.last_publish_ms <= published_before {
                    c.uncount();
                }
                let close = !held && c.last_active_ms < idle_before_ms;
                if close {
                    c.uncount();
                    store.close(key, &c.history);
                }
                !close
            });
        self.store.housekeeping(now_ms, sweep_idle)
    }

    /// Channel history rings held (all of this shard's, open or not).
    pub fn ring_count(&self) -> usize {
        self.store.ring_count()
    }

    /// The history store's counters.
    pub fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Writes all history to disk now (shutdown).
    pub fn sync_all(&mut self) {
        self.store.sync_all();
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

    fn dev_tenant() -> std::sync::Arc<Tenant> {
        TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap()
    }

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(TenantId::new("t"), ChannelName::new(name).unwrap())
    }

    fn append(table: &mut OwnedChannels, key: &ChannelKey, now: u64) -> u64 {
        let tenant = dev_tenant();
        let encode = |seq| ringcast_protocol::event::message_with_span("c", b"1", None, seq, now);
        table.publish(key, &tenant, now, None, encode).unwrap().seq
    }

    /// An empty table over a store in a fresh directory (kept alive by the guard).
    fn fresh_table(config: &HistoryConfig) -> (tempfile::TempDir, OwnedChannels) {
        let data = tempfile::tempdir().unwrap();
        let store = crate::history::open_all(data.path(), config, 1)
            .unwrap()
            .pop()
            .unwrap();
        (data, OwnedChannels::new(store))
    }

    #[test]
    fn a_table_over_the_sweep_size_is_closed_over_several_ticks() {
        let tenant = dev_tenant();
        let (_data, mut table) = fresh_table(&HistoryConfig::default());
        let n = 3 * SWEEP_PER_TICK;
        for i in 0..n {
            table.open(&key(&format!("c{i}")), &tenant, 1);
        }
        let mut ticks = 0;
        let mut left = vec![n];
        while !table.is_empty() && ticks < 16 {
            table.housekeeping(100, 10, false, |_| false);
            ticks += 1;
            left.push(table.len());
        }
        assert!(table.is_empty(), "every idle channel closed: {left:?}");
        assert!(
            (3..=5).contains(&ticks),
            "closed over a few ticks, a bounded number per tick: {left:?}"
        );
        for w in left.windows(2) {
            assert!(w[0] - w[1] <= SWEEP_PER_TICK + n / 16, "{left:?}");
        }
    }

    /// A resume on a live subscription needs only the seqs below its first live one:
    /// when those are all there (here: none needed), it is `recovered`, even though
    /// older messages than `lastEventId` the free plan's bound dropped (found in review:
    /// it said `recovered: false` because the whole range to the latest seq was asked
    /// of the history). The replay holds only seqs below the live ones.
    #[test]
    fn a_resume_below_the_live_seqs_is_recovered_when_those_are_kept() {
        let tenant = dev_tenant();
        let (_data, mut table) = fresh_table(&HistoryConfig::default());
        let key = key("c");
        // Free plan: 100 kept. Live from 141 on (answered at 140), then 110 more came
        // live: 250 published, 151..=250 kept.
        for _ in 0..250 {
            append(&mut table, &key, 5);
        }
        table.open(&key, &tenant, 5);
        // Resumed after 140: nothing needed, nothing replayed, recovered.
        let answer = table.subscribe_answer(&key, Some(140), None, 1 << 20, Some(141));
        assert!(answer.replay.is_empty());
        assert!(answer.recovered);
        // Resumed after 120: 121..=140 were needed and are gone.
        let answer = table.subscribe_answer(&key, Some(120), None, 1 << 20, Some(141));
        assert!(answer.replay.is_empty());
        assert!(!answer.recovered);
        // Live from 201 on: resumed after 180, 181..=200 replayed (the rest came live).
        let answer = table.subscribe_answer(&key, Some(180), None, 1 << 20, Some(201));
        assert_eq!((answer.replay.len(), answer.replay_from), (20, 181));
        assert!(answer.recovered);
    }

    #[test]
    fn a_publish_gets_the_next_seq_in_its_frame_and_its_history() {
        let tenant = dev_tenant();
        let (_data, mut table) = fresh_table(&HistoryConfig::default());
        let key = key("c");
        for expected in 1..=3u64 {
            let encode = |seq| ringcast_protocol::event::message_with_span("c", b"7", None, seq, 9);
            let published = table.publish(&key, &tenant, 9, Some("u"), encode).unwrap();
            assert_eq!(published.seq, expected);
            // The WebSocket frame: a header, then the JSON text.
            let frame = String::from_utf8_lossy(&published.frame);
            assert!(frame.contains(&format!("\"seq\":{expected}")), "{frame}");
            assert_eq!(
                &published.frame[published.data.start as usize..published.data.end as usize],
                b"7"
            );
            assert!(
                published.channel.is_counted(),
                "a publish makes its channel count"
            );
        }
        assert_eq!(
            table.peek(&key, &tenant).0,
            3,
            "three messages in its history"
        );
    }

    #[test]
    fn an_idle_ring_is_freed_only_once_its_channel_is_closed_and_its_numbering_goes_on() {
        let config = HistoryConfig {
            idle_ttl_secs: 0,
            ..HistoryConfig::default()
        };
        let tenant = dev_tenant();
        let (_data, mut table) = fresh_table(&config);
        let key = key("c");
        table.open(&key, &tenant, 1);
        assert_eq!(append(&mut table, &key, 1), 1);
        let epoch = table.peek(&key, &tenant).1;

        assert_eq!(table.housekeeping(5, 0, true, |_| false), 0, "still open");
        assert_eq!(table.housekeeping(5, 0, true, |_| true), 0, "held open");
        assert_eq!(table.housekeeping(5, u64::MAX, true, |_| false), 1);
        assert!(table.is_empty());

        // Its records are gone; its numbering goes on in its epoch (the store's
        // tombstone), so a client's old position shows the gap.
        let (seq, same_epoch) = table.peek(&key, &tenant);
        assert_eq!((seq, same_epoch), (1, epoch), "the numbering stands");
        table.open(&key, &tenant, 2);
        assert_eq!(append(&mut table, &key, 2), 2, "and goes on");
    }

    #[test]
    fn a_closed_channel_keeps_its_history_until_the_ttl() {
        let tenant = dev_tenant();
        let (_data, mut table) = fresh_table(&HistoryConfig::default());
        let key = key("c");
        table.open(&key, &tenant, 1);
        append(&mut table, &key, 1);
        append(&mut table, &key, 2);
        let before = table.peek(&key, &tenant);
        table.housekeeping(3, u64::MAX, true, |_| false);
        assert!(table.is_empty());
        assert_eq!(table.peek(&key, &tenant), before, "same seq and epoch");
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

    #[test]
    fn shard_sets_above_64_compare_by_members() {
        let mut a = ShardSet::default();
        for s in [1u16, 63, 64, 130, 200, 1023] {
            a.insert(ShardId(s));
        }
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [1u16, 63, 64, 130, 200, 1023].map(ShardId).to_vec()
        );
        a.remove(ShardId(200));
        a.remove(ShardId(1023));
        let mut b = ShardSet::default();
        for s in [130u16, 64, 63, 1] {
            b.insert(ShardId(s));
        }
        assert_eq!(a, b, "no words left over after a removal");
        for s in [64u16, 130] {
            a.remove(ShardId(s));
        }
        a.remove(ShardId(1000));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![ShardId(1), ShardId(63)]);
        a.remove(ShardId(1));
        a.remove(ShardId(63));
        assert!(a.is_empty());
        assert_eq!(a, ShardSet::default());
    }
}
