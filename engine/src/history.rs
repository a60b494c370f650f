//! Channel history on the owner shard: one `ringcast_store::RingLog` per channel.
//!
//! Every record keeps the message's complete, already-encoded WebSocket frame, so a
//! replay writes the stored bytes as they are. The log assigns `seq`; its epoch is the
//! channel's epoch on the wire.
//!
//! A channel that was never published to has no log: subscribing to it creates no file
//! and no mapping (idle personal channels cost memory, not a page each). Its epoch is
//! chosen when the owner first sees it and becomes the log's epoch when the first message
//! creates the log.

use std::path::Path;

use bytes::Bytes;
use ringcast_store::{Epoch, LogConfig, LogDir, RingLog, Seq, StoreError, SyncPolicy};

use crate::config::{FlushPolicy, HistoryConfig};
use crate::keys::ChannelKey;
use crate::tenant::Tenant;

/// A history failure (the disk, or a corrupt log that could not be reset).
pub type HistoryError = StoreError;

/// Where the logs of one server live, and how they are kept.
#[derive(Debug)]
pub struct HistoryStore {
    dir: LogDir,
    config: HistoryConfig,
}

impl HistoryStore {
    /// Opens (creating) `<data_dir>/history`.
    pub fn new(data_dir: &Path, config: &HistoryConfig) -> Result<HistoryStore, HistoryError> {
        Ok(HistoryStore {
            dir: LogDir::new(&data_dir.join("history"))?,
            config: config.clone(),
        })
    }

    /// The history of `key`, with the tenant's bound on kept messages: its log when one
    /// exists, else an empty history that creates its log on the first append.
    pub fn open(&self, key: &ChannelKey, tenant: &Tenant) -> Result<ChannelHistory, HistoryError> {
        // The store msyncs on append for `every_append` and `interval`; `tick` covers
        // channels that go quiet under `interval`.
        let sync = match self.config.flush {
            FlushPolicy::Never => SyncPolicy::Never,
            FlushPolicy::EveryAppend => SyncPolicy::EveryAppend,
            FlushPolicy::Interval => SyncPolicy::IntervalMs(self.config.flush_interval_ms),
        };
        let log_config = LogConfig {
            max_records: tenant.limits.history_messages,
            max_bytes: self.config.max_bytes_per_channel,
            sync,
        };
        let mut history = ChannelHistory {
            log: None,
            epoch: Epoch::fresh(None),
            log_config,
            interval_ms: (self.config.flush == FlushPolicy::Interval)
                .then_some(u64::from(self.config.flush_interval_ms)),
            dirty: false,
            last_flush_ms: 0,
        };
        if self.dir.exists(&key.log_key()) {
            history.open_log(&self.dir, key)?;
        }
        Ok(history)
    }

    /// Deletes logs idle past the TTL whose channel is not open (`is_open`).
    pub fn remove_idle(&self, now_ms: u64, is_open: impl Fn(&[u8]) -> bool) -> usize {
        let ttl_ms = self.config.idle_ttl_secs.saturating_mul(1000);
        match self.dir.remove_idle(now_ms, ttl_ms, is_open) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "history: idle log cleanup failed");
                0
            }
        }
    }

    /// Appends to `history`, creating its log on the first message.
    pub fn append(
        &self,
        key: &ChannelKey,
        history: &mut ChannelHistory,
        ts_ms: u64,
        user_id: Option<&str>,
        frame: &[u8],
    ) -> Result<u64, HistoryError> {
        if history.log.is_none() {
            history.open_log(&self.dir, key)?;
        }
        let log = history.log.as_mut().expect("opened above");
        let seq = log.append(ts_ms, user_id.map(str::as_bytes), frame)?;
        history.dirty = true;
        Ok(seq.0)
    }
}

/// One channel's history.
#[derive(Debug)]
pub struct ChannelHistory {
    /// `None` until the channel's first message (boxed: most open channels of an idle
    /// server have none).
    log: Option<Box<RingLog>>,
    epoch: Epoch,
    log_config: LogConfig,
    interval_ms: Option<u64>,
    dirty: bool,
    last_flush_ms: u64,
}

impl ChannelHistory {
    /// Opens (or creates, with this history's epoch) the log file.
    fn open_log(&mut self, dir: &LogDir, key: &ChannelKey) -> Result<(), HistoryError> {
        let (log, report) =
            dir.open_with_epoch(&key.log_key(), &self.log_config, Some(self.epoch))?;
        if let Some(reason) = &report.new_epoch_reason {
            tracing::warn!(channel = %key.channel, tenant = %key.tenant, %reason, "history reset: new epoch");
        }
        if report.torn_tail_dropped > 0 {
            tracing::warn!(channel = %key.channel, dropped = report.torn_tail_dropped, "history: torn tail dropped");
        }
        self.epoch = log.epoch();
        self.log = Some(Box::new(log));
        Ok(())
    }

    /// The seq the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq() + 1
    }

    /// The latest seq (0 when nothing was published in this epoch).
    pub fn last_seq(&self) -> u64 {
        self.log.as_ref().map_or(0, |log| log.last_seq().0)
    }

    /// The epoch as sent to clients.
    pub fn epoch(&self) -> String {
        self.epoch.0.to_string()
    }

    /// What a subscriber gets: replayed frames after `last_event_id`, the latest seq,
    /// the epoch, and whether the catch-up is complete.
    pub fn subscribe_answer(
        &self,
        last_event_id: Option<u64>,
        epoch: Option<&str>,
    ) -> SubscribeAnswer {
        let seq = self.last_seq();
        let mut answer = SubscribeAnswer {
            replay: Vec::new(),
            seq,
            epoch: self.epoch(),
            recovered: true,
        };
        let Some(after) = last_event_id else {
            return answer;
        };
        let Some(log) = &self.log else {
            // Nothing was ever published in this history: nothing after 0 can be missing.
            answer.recovered = after == 0;
            return answer;
        };
        if epoch.is_some_and(|e| e != answer.epoch) || after > seq {
            // The client's position belongs to another history: it must refetch.
            answer.recovered = false;
            return answer;
        }
        answer.recovered = log.replay_complete(Seq(after));
        answer.replay = log
            .iter_after(Seq(after))
            .map(|r| Bytes::copy_from_slice(r.payload))
            .collect();
        answer
    }

    /// Flushes to disk when the interval policy says so.
    pub fn tick(&mut self, now_ms: u64) {
        let (Some(interval), Some(log)) = (self.interval_ms, &self.log) else {
            return;
        };
        if self.dirty && now_ms.saturating_sub(self.last_flush_ms) >= interval {
            if let Err(e) = log.flush() {
                tracing::warn!(error = %e, "history flush failed");
            }
            self.dirty = false;
            self.last_flush_ms = now_ms;
        }
    }
}

/// Frames produced by a subscribe at the owner.
#[derive(Debug)]
pub struct SubscribeAnswer {
    /// Replayed messages, oldest first.
    pub replay: Vec<Bytes>,
    /// Latest seq.
    pub seq: u64,
    /// The history's epoch, as sent to clients.
    pub epoch: String,
    /// Whether every message after `lastEventId` was replayed.
    pub recovered: bool,
}

// ----- history pages (the HTTP API's `GET /api/realtime/history/{channel}`) -----
//
// The types below are the contract between the owner and the HTTP handler; the body of
// `history_page` reads today's v1 log and is the one place to change when the store
// changes.

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

/// The page of `history` that `query` asks for. With neither bound: the latest `limit`;
/// `after` alone: the first `limit` after it; `before` alone: the `limit` just below it;
/// both: the first `limit` strictly between them.
pub fn history_page(
    history: &ChannelHistory,
    query: &HistoryQuery,
) -> Result<HistoryPage, HistoryError> {
    let Some(log) = &history.log else {
        return Ok(HistoryPage::default());
    };
    let item = |r: ringcast_store::Record<'_>| {
        // v1 records keep the whole encoded frame; `data` is read back out of it.
        let data = ringcast_protocol::event::message_data(r.payload)?;
        Some(HistoryItem {
            seq: r.seq.0,
            ts: r.ts_ms,
            user_id: r.uid.map(|u| String::from_utf8_lossy(u).into_owned()),
            data: Bytes::copy_from_slice(data),
        })
    };
    let before = query.before.unwrap_or(u64::MAX);
    let messages = match query.after {
        Some(after) => log
            .iter_after(Seq(after))
            .take_while(|r| r.seq.0 < before)
            .take(query.limit)
            .filter_map(item)
            .collect(),
        None => log
            .iter_before(Seq(before), query.limit)
            .filter_map(item)
            .collect(),
    };
    Ok(HistoryPage { messages })
}
