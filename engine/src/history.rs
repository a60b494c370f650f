//! Channel history on the owner shard: every channel's ring in the shard's
//! `ringcast_store::ShardStore` (format v2: rings in shared, preallocated segment files).
//!
//! Every record keeps the message's complete, already-encoded WebSocket frame, so a
//! replay writes the stored bytes as they are, and the span of its `data` inside the
//! frame, so a history page needs no re-parsing. The store assigns `seq`; a ring's epoch
//! is the channel's epoch on the wire.
//!
//! A channel that was never published to has no ring: subscribing to it writes nothing.
//! Its epoch is chosen when the owner first sees it and becomes the ring's epoch when the
//! first message creates the ring. The engine pins the ring of every channel it has
//! open, so only closed channels' rings are evicted under `[history] max_total_bytes` or
//! freed by the idle TTL, and a `RingId` held by an open channel never goes stale.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringcast_protocol::event;
use ringcast_store::{
    open_for_start, Epoch, RingId, Seq, ShardOpenReport, ShardStore, StoreConfig, StoreError,
    StoreStats, SyncPolicy, Tombstone,
};

use crate::config::{FlushPolicy, HistoryConfig};
use crate::keys::{log_key_owner, ChannelKey, ShardId};
use crate::tenant::Tenant;

/// A history failure (the disk, the node's byte bound, or a corrupt store).
pub type HistoryError = StoreError;

/// Size of one segment file of a shard's store (sparse: disk is used as rings fill).
const SEGMENT_BYTES: u64 = 64 << 20;
/// Ring indices one idle sweep looks at (a slice of a big store, all of a small one):
/// each housekeeping tick sweeps the next slice, so a full pass over 500k rings takes
/// about a minute and no tick scans (or frees) them all at once.
pub const IDLE_SWEEP_RINGS: usize = 8192;

/// The history folder of a data directory: v2 shard stores in `shard-<k>/`, and v1
/// `*.rlog` files directly inside until they are migrated.
pub fn history_root(data_dir: &Path) -> PathBuf {
    data_dir.join("history")
}

/// Opens the history of every shard of a server: carries format-v1 logs over (same
/// epoch and seqs, so clients keep `recovered: true`), moves rings whose owner changed
/// with the shard count, then opens one store per shard. Runs once, before the shards
/// start, on the data directory this process has locked.
pub fn open_all(
    data_dir: &Path,
    config: &HistoryConfig,
    shards: usize,
) -> Result<Vec<HistoryStore>, HistoryError> {
    let root = history_root(data_dir);
    let cfg = store_config(config, shards);
    let owner = |key: &[u8]| log_key_owner(key, shards).unwrap_or(ShardId(0)).index();
    let data_span = |frame: &[u8]| event::message_data_span(frame).unwrap_or(0..0);
    // Told as each store opens, before a later step could fail (found in review).
    let on_open = |k: usize, report: &ShardOpenReport| log_open_report(k, shards, report);
    let started = open_for_start(&root, shards, cfg, owner, data_span, on_open)?;
    let migrated = &started.migrated;
    for path in &migrated.unreadable {
        tracing::warn!(
            path = %path.display(),
            "history: a format-1 log whose header is unreadable was removed; its channel starts a new epoch"
        );
    }
    if migrated.migrated > 0 || !migrated.unreadable.is_empty() {
        tracing::info!(
            logs = migrated.migrated,
            records = migrated.records,
            unreadable = migrated.unreadable.len(),
            "history: carried format-1 logs over to format 2"
        );
    }
    let moved = &started.resharded;
    if moved.moved > 0 || moved.dirs_removed > 0 {
        tracing::info!(
            rings = moved.moved,
            dirs_removed = moved.dirs_removed,
            "history: moved rings to their owners for the new shard count"
        );
    }
    Ok(started
        .stores
        .into_iter()
        .map(|store| HistoryStore::new(store, config))
        .collect())
}

/// Logs what shard `k`'s store recovery found that an operator should know: channels
/// whose history was lost, segments set aside, records dropped. A shard at or past
/// `shards` is a directory a run with more shards left: its rings move and it is removed
/// (a segment set aside there goes with it).
fn log_open_report(k: usize, shards: usize, report: &ShardOpenReport) {
    let surplus = k >= shards;
    for (key, reason) in &report.rings_reset {
        tracing::warn!(shard = k, key = %String::from_utf8_lossy(key), %reason, "history reset: new epoch");
    }
    for (path, reason) in &report.segments_discarded {
        if surplus {
            tracing::warn!(shard = k, path = %path.display(), %reason, "history segment unreadable, in a shard directory past the shard count that is now removed");
        } else {
            tracing::warn!(shard = k, path = %path.display(), %reason, "history segment set aside");
        }
    }
    if report.torn_tail_dropped > 0 {
        tracing::warn!(
            shard = k,
            dropped = report.torn_tail_dropped,
            "history: records failing their checksum dropped"
        );
    }
    if report.tombstones_tail_dropped {
        tracing::warn!(
            shard = k,
            kept = report.tombstones,
            "history: the tombstone file ended in a torn record, dropped (a channel let go just before a crash starts a new epoch at seq 1)"
        );
    }
}

/// How the engine's history settings map onto one shard's store.
pub(crate) fn store_config(config: &HistoryConfig, shards: usize) -> StoreConfig {
    let sync = match config.flush {
        FlushPolicy::Never => SyncPolicy::Never,
        FlushPolicy::EveryAppend => SyncPolicy::EveryAppend,
        FlushPolicy::Interval => SyncPolicy::IntervalMs(config.flush_interval_ms),
    };
    StoreConfig {
        max_bytes_per_ring: config.max_bytes_per_channel,
        max_total_bytes: config
            .max_total_bytes
            .map(|total| (total / shards.max(1) as u64).max(1)),
        sync,
        segment_bytes: SEGMENT_BYTES,
        max_tombstones: config.max_tombstones_per_shard,
    }
}

/// The history of one shard's channels.
#[derive(Debug)]
pub struct HistoryStore {
    store: ShardStore,
    config: HistoryConfig,
    last_flush_ms: u64,
    /// The ring index the idle sweep looks at next.
    idle_sweep_next: usize,
}

impl HistoryStore {
    /// The history of one shard, served from `store`.
    fn new(store: ShardStore, config: &HistoryConfig) -> HistoryStore {
        HistoryStore {
            store,
            config: config.clone(),
            last_flush_ms: 0,
            idle_sweep_next: 0,
        }
    }

    /// The history of `key`, with the tenant's bound on kept messages: its ring when one
    /// exists (pinned while the channel is open), else an empty history whose ring the
    /// first append creates. A channel whose ring was let go by policy (idle, evicted)
    /// goes on where its numbering stood: same epoch, next seq (its tombstone, held
    /// here until the ring is made or the channel closes).
    pub fn open_channel(&mut self, key: &ChannelKey, tenant: &Tenant) -> ChannelHistory {
        let max_records = tenant.limits.history_messages.max(1);
        let log_key = key.log_key();
        let Some(ring) = self.store.lookup(&log_key) else {
            let stone = self.store.take_tombstone(&log_key);
            return ChannelHistory {
                ring: None,
                epoch: stone.map_or_else(|| Epoch::fresh(None), |t| t.epoch),
                after: stone.map_or(0, |t| t.last_seq.0),
                max_records,
            };
        };
        self.store.pin(ring);
        if self.store.max_records(ring) != max_records {
            // The tenant's plan changed since the ring was written.
            let _ = self.store.set_max_records(ring, max_records);
        }
        ChannelHistory {
            ring: Some(ring),
            epoch: self.store.epoch(ring),
            after: 0,
            max_records,
        }
    }

    /// Brings `history`'s bound on kept messages to the tenant's current one (a reload may
    /// have changed it); a lowered bound drops the oldest messages now.
    pub fn follow_limits(&mut self, history: &mut ChannelHistory, tenant: &Tenant) {
        let max_records = tenant.limits.history_messages.max(1);
        if history.max_records == max_records {
            return;
        }
        history.max_records = max_records;
        if let Some(ring) = history.ring {
            let _ = self.store.set_max_records(ring, max_records);
        }
    }

    /// The channel was closed: its ring may be evicted or expire again; a tombstone it
    /// held with no ring made goes back to the store.
    pub fn close(&mut self, key: &ChannelKey, history: &ChannelHistory) {
        match history.ring {
            Some(ring) => self.store.unpin(ring),
            None if history.after > 0 => {
                let stone = Tombstone {
                    epoch: history.epoch,
                    last_seq: Seq(history.after),
                };
                self.store.put_tombstone(&key.log_key(), stone);
            }
            None => {}
        }
    }

    /// Appends one encoded message (`data` is the span of its `data` in `frame`),
    /// creating the channel's ring on its first message. Returns the seq.
    pub fn append(
        &mut self,
        key: &ChannelKey,
        history: &mut ChannelHistory,
        ts_ms: u64,
        user_id: Option<&str>,
        frame: &[u8],
        data: Range<u32>,
    ) -> Result<u64, HistoryError> {
        let ring = match history.ring {
            Some(ring) => ring,
            None => {
                let log_key = key.log_key();
                // A message no ring could keep is refused before a ring is made for it,
                // and the ring is made big enough for it.
                let uid_len = user_id.map_or(0, str::len);
                let ring = self.store.create_for_record_after(
                    &log_key,
                    history.epoch,
                    history.max_records,
                    Seq(history.after),
                    uid_len,
                    frame.len(),
                )?;
                self.store.pin(ring);
                history.ring = Some(ring);
                ring
            }
        };
        let seq = self
            .store
            .append(ring, ts_ms, user_id.map(str::as_bytes), frame, data)?;
        Ok(seq.0)
    }

    /// The latest seq (0 when nothing was published in this epoch).
    pub fn last_seq(&self, history: &ChannelHistory) -> u64 {
        history
            .ring
            .map_or(history.after, |ring| self.store.last_seq(ring).0)
    }

    /// What a subscriber gets: replayed frames after `last_event_id` (the newest that
    /// fit in `max_replay_bytes`), the latest seq, the epoch, and whether the catch-up is
    /// complete.
    pub fn subscribe_answer(
        &self,
        history: &ChannelHistory,
        last_event_id: Option<u64>,
        epoch: Option<&str>,
        max_replay_bytes: usize,
        replay_below: Option<u64>,
    ) -> SubscribeAnswer {
        let seq = self.last_seq(history);
        let mut answer = SubscribeAnswer {
            replay: Vec::new(),
            replay_from: 0,
            seq,
            epoch: history.epoch().into_boxed_str(),
            recovered: true,
        };
        let Some(after) = last_event_id else {
            return answer;
        };
        let Some(ring) = history.ring else {
            // No record is kept: only a client that had every seq up to where the
            // numbering stands (0, or a let-go ring's last seq) missed nothing. A position
            // in another epoch may have missed messages of that one, so it must refetch.
            answer.recovered = after == seq && epoch.is_none_or(|e| e == &*answer.epoch);
            return answer;
        };
        if epoch.is_some_and(|e| e != &*answer.epoch) || after > seq {
            // The client's position belongs to another history: it must refetch.
            answer.recovered = false;
            return answer;
        }
        // A resume on a live subscription needs only the seqs below the live ones.
        let needs_none = replay_below.is_some_and(|below| below <= after.saturating_add(1));
        answer.recovered = needs_none || self.store.replay_complete(ring, Seq(after));
        // Newest first, so a replay too big for the subscriber's buffer keeps its newest
        // messages (contiguous with what comes live) and copies no more than it keeps.
        let mut bytes = 0;
        let below = replay_below.unwrap_or(u64::MAX);
        for record in self.store.iter_after(ring, Seq(after)).rev() {
            if record.seq.0 >= below {
                // Sent to this connection live.
                continue;
            }
            bytes += record.payload.len();
            if bytes > max_replay_bytes {
                answer.recovered = false;
                break;
            }
            answer.replay.push(Bytes::copy_from_slice(record.payload));
            answer.replay_from = record.seq.0;
        }
        answer.replay.reverse();
        answer
    }

    /// Periodic work on the shard thread, none of it a blocking system call: hands
    /// written ranges to the store's background thread for msync (interval policy),
    /// logs rings evicted under the node bound, and, when `sweep_idle`, frees the rings
    /// of closed channels idle past the TTL (from the store's in-memory state, no
    /// directory scan). Returns the number of rings freed.
    pub fn housekeeping(&mut self, now_ms: u64, sweep_idle: bool) -> usize {
        if self.config.flush == FlushPolicy::Interval
            && now_ms.saturating_sub(self.last_flush_ms) >= u64::from(self.config.flush_interval_ms)
        {
            self.store.flush();
            self.last_flush_ms = now_ms;
        }
        let evicted = self.store.take_evicted();
        if !evicted.is_empty() {
            tracing::info!(
                rings = evicted.len(),
                "history: evicted idle channels' rings to stay under max_total_bytes"
            );
        }
        if !sweep_idle {
            return 0;
        }
        let ttl_ms = self.config.idle_ttl_secs.saturating_mul(1000);
        let (idle, next) = self.store.idle_rings_from(
            self.idle_sweep_next,
            IDLE_SWEEP_RINGS,
            now_ms.saturating_sub(ttl_ms),
        );
        self.idle_sweep_next = next;
        for &ring in &idle {
            let _ = self.store.free(ring);
        }
        idle.len()
    }

    /// Rings held.
    pub fn ring_count(&self) -> usize {
        self.store.ring_count()
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Writes everything to disk now (shutdown).
    pub fn sync_all(&mut self) {
        if let Err(e) = self.store.sync_all() {
            tracing::warn!(error = %e, "history: final msync failed");
        }
    }
}

/// One open channel's history: its ring, once it has one.
#[derive(Debug)]
pub struct ChannelHistory {
    ring: Option<RingId>,
    epoch: Epoch,
    /// With no ring: the seq its numbering stands at (a tombstone's last seq; else 0).
    after: u64,
    max_records: u32,
}

impl ChannelHistory {
    /// The epoch as sent to clients.
    pub fn epoch(&self) -> String {
        self.epoch.0.to_string()
    }
}

/// What a subscribe gets from the owner.
#[derive(Debug)]
pub struct SubscribeAnswer {
    /// Replayed messages, oldest first: the newest that fit the replay's byte bound.
    pub replay: Vec<Bytes>,
    /// The seq of `replay[0]`; the others follow one by one (kept records are one run).
    pub replay_from: u64,
    /// Latest seq.
    pub seq: u64,
    /// The history's epoch, as sent to clients.
    pub epoch: Box<str>,
    /// Whether every message after `lastEventId` was replayed.
    pub recovered: bool,
}

impl SubscribeAnswer {
    /// Drops the replayed messages at or after seq `first_live`: the connection was sent
    /// those live (found in review: a plain subscribe answered while a resume and then
    /// another plain subscribe were on their way made the connection live, and the
    /// resume's full replay then sent those messages again).
    pub fn drop_from(&mut self, first_live: u64) {
        let keep = first_live.saturating_sub(self.replay_from);
        if (keep as usize) < self.replay.len() {
            self.replay.truncate(keep as usize);
        }
    }

    /// Keeps the newest messages of the replay that fit in `max_bytes`; if that drops
    /// any, the answer is no longer `recovered`. Returns whether it dropped some.
    pub fn truncate_to(&mut self, max_bytes: usize) -> bool {
        let mut kept_bytes = 0;
        let kept = self
            .replay
            .iter()
            .rev()
            .take_while(|frame| {
                kept_bytes += frame.len();
                kept_bytes <= max_bytes
            })
            .count();
        let dropped = self.replay.len() - kept;
        if dropped == 0 {
            return false;
        }
        self.replay.drain(..dropped);
        self.replay_from += dropped as u64;
        self.recovered = false;
        true
    }
}

// ----- history pages (the HTTP API's `GET /api/realtime/history/{channel}`) -----
//
// The types below are the contract between the owner and the HTTP handler.

/// Which messages a history page holds. Always returned oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with seq > `after`: the first `limit` of them.
    pub after: Option<u64>,
    /// Only messages with seq < `before`; without `after`, the last `limit` of them.
    pub before: Option<u64>,
    /// At most this many messages.
    pub limit: usize,
}

/// One page of a channel's history, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages.
    pub messages: Vec<HistoryItem>,
}

/// One kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// Its seq.
    pub seq: u64,
    /// Its `ts` (epoch milliseconds).
    pub ts: u64,
    /// The publisher's user id, if the message showed one.
    pub user_id: Option<String>,
    /// The raw JSON of `data`, as published.
    pub data: Bytes,
}

impl HistoryStore {
    /// The page of `history` that `query` asks for. With neither bound: the latest
    /// `limit`; `after` alone: the first `limit` after it; `before` alone: the `limit`
    /// just below it; both: the first `limit` strictly between them. Each item comes from
    /// the record's parts (seq, ts, uid, the `data` span): nothing is re-parsed.
    pub fn history_page(&self, history: &ChannelHistory, query: &HistoryQuery) -> HistoryPage {
        let Some(ring) = history.ring else {
            return HistoryPage::default();
        };
        let item = |r: ringcast_store::Record<'_>| HistoryItem {
            seq: r.seq.0,
            ts: r.ts_ms,
            user_id: r.uid.map(|u| String::from_utf8_lossy(u).into_owned()),
            data: Bytes::copy_from_slice(r.data()),
        };
        let before = query.before.unwrap_or(u64::MAX);
        let messages = match query.after {
            Some(after) => self
                .store
                .iter_after(ring, Seq(after))
                .take_while(|r| r.seq.0 < before)
                .take(query.limit)
                .map(item)
                .collect(),
            None => self
                .store
                .iter_before(ring, Seq(before), query.limit)
                .map(item)
                .collect(),
        };
        HistoryPage { messages }
    }
}
