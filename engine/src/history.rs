//! TEMPORARY in-memory history (replaced by the ring log of `ringcast_store`).

use std::collections::VecDeque;
use std::path::Path;

use bytes::Bytes;

use crate::config::HistoryConfig;
use crate::keys::ChannelKey;
use crate::owner::SubscribeAnswer;
use crate::tenant::Tenant;

/// A history failure.
pub type HistoryError = std::io::Error;

/// Where logs live.
#[derive(Debug)]
pub struct HistoryStore;

impl HistoryStore {
    /// New store.
    pub fn new(_data_dir: &Path, _config: &HistoryConfig) -> Result<HistoryStore, HistoryError> {
        Ok(HistoryStore)
    }
    /// Opens a channel.
    pub fn open(&self, _key: &ChannelKey, tenant: &Tenant) -> Result<ChannelHistory, HistoryError> {
        Ok(ChannelHistory {
            records: VecDeque::new(),
            last: 0,
            max: tenant.limits.history_messages as usize,
        })
    }
    /// Removes idle logs.
    pub fn remove_idle(&self, _now_ms: u64, _is_open: impl Fn(&[u8]) -> bool) -> usize {
        0
    }
}

/// One channel's history.
#[derive(Debug)]
pub struct ChannelHistory {
    records: VecDeque<(u64, Bytes)>,
    last: u64,
    max: usize,
}

impl ChannelHistory {
    /// Next seq.
    pub fn next_seq(&self) -> u64 {
        self.last + 1
    }
    /// Latest seq.
    pub fn last_seq(&self) -> u64 {
        self.last
    }
    /// Appends.
    pub fn append(
        &mut self,
        _ts_ms: u64,
        _user_id: Option<&str>,
        frame: &[u8],
    ) -> Result<u64, HistoryError> {
        self.last += 1;
        self.records
            .push_back((self.last, Bytes::copy_from_slice(frame)));
        if self.records.len() > self.max {
            self.records.pop_front();
        }
        Ok(self.last)
    }
    /// Subscribe answer.
    pub fn subscribe_answer(
        &self,
        last_event_id: Option<u64>,
        _epoch: Option<&str>,
    ) -> SubscribeAnswer {
        let mut answer = SubscribeAnswer {
            replay: Vec::new(),
            seq: self.last,
            epoch: "1".into(),
            recovered: true,
        };
        if let Some(after) = last_event_id {
            answer.replay = self
                .records
                .iter()
                .filter(|(s, _)| *s > after)
                .map(|(_, f)| f.clone())
                .collect();
            answer.recovered =
                after <= self.last && self.records.front().is_none_or(|(s, _)| *s <= after + 1);
        }
        answer
    }
    /// Tick.
    pub fn tick(&mut self, _now_ms: u64) {}
}
