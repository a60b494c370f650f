//! What a tenant has used, against its plan's limits (SPEC §8): its active channels and
//! its publishes in the last minute. One [`TenantUsage`] per tenant, shared by every
//! shard (an `Arc` in [`crate::tenant::Tenant`], carried across reloads).
//!
//! - Active channels: each channel's owner shard decides when the channel starts and
//!   stops counting (`crate::owner`), and moves the tenant's count with one atomic
//!   compare-and-swap, so the limit holds exactly however the channels are spread over
//!   shards.
//! - Publishes: a sliding log of the accepted publishes' times, at most the limit long.
//!   A publish is accepted when fewer than the limit were accepted in the 60 s before it;
//!   the log's oldest entry says when the next one will be. Exact on one node, O(1)
//!   amortised, 8 bytes per publish of the window (a tenant on 50,000/min holds at most
//!   400 KB, allocated as it publishes). The lock is held for a few instructions, by
//!   the owner shard of the channel published to, and only for tenants with a rate limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The rolling window of `publishes_per_minute`.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// A tenant's use of its limits.
#[derive(Debug, Default)]
pub struct TenantUsage {
    active_channels: AtomicU32,
    publishes: Mutex<VecDeque<u64>>,
}

/// A refused publish: the tenant may publish again in this many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    /// Whole seconds, rounded up, for `Retry-After`.
    pub fn secs(self) -> u64 {
        self.0.div_ceil(1000).max(1)
    }
}

impl TenantUsage {
    /// Channels of the tenant that count now.
    pub fn active_channels(&self) -> u32 {
        self.active_channels.load(Ordering::Relaxed)
    }

    /// Counts one more active channel if that stays within `max` (`None`: unlimited).
    /// Whether it was counted.
    pub fn try_count_channel(&self, max: Option<u32>) -> bool {
        self.active_channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match max {
                Some(max) if n >= max => None,
                _ => Some(n + 1),
            })
            .is_ok()
    }

    /// A channel counted by [`TenantUsage::try_count_channel`] stopped counting.
    pub fn uncount_channel(&self) {
        let _ = self
            .active_channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records a publish at `now_ms` if fewer than `limit` were recorded in the window
    /// before it (`None`: unlimited, nothing recorded; `0`: every publish refused).
    pub fn try_publish(&self, now_ms: u64, limit: Option<u32>) -> Result<Recorded, RetryAfter> {
        self.try_publish_counting(now_ms, limit, None)
            .map_err(|refused| match refused {
                PublishRefused::Rate(retry) => retry,
                PublishRefused::ChannelLimit => unreachable!("no channel counted"),
            })
    }

    /// [`TenantUsage::try_publish`] for a publish that also makes its channel count
    /// (`count_channel: Some(max_channels)`): the channel is counted only if the rate
    /// allows the publish, and the publish recorded only if the channel fits, in one
    /// step, so no other shard ever sees a count or a log entry of a refused publish.
    pub fn try_publish_counting(
        &self,
        now_ms: u64,
        limit: Option<u32>,
        count_channel: Option<Option<u32>>,
    ) -> Result<Recorded, PublishRefused> {
        let Some(limit) = limit else {
            return match count_channel {
                Some(max) if !self.try_count_channel(max) => Err(PublishRefused::ChannelLimit),
                _ => Ok(Recorded(None)),
            };
        };
        let mut log = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        // Shards' clocks may differ by a millisecond: the log stays in order.
        let now_ms = log.back().map_or(now_ms, |&last| now_ms.max(last));
        // Entries at or before `now - window` have left it.
        if let Some(window_start) = now_ms.checked_sub(RATE_WINDOW_MS) {
            while log.front().is_some_and(|&t| t <= window_start) {
                log.pop_front();
            }
        }
        if limit == 0 {
            return Err(PublishRefused::Rate(RetryAfter(RATE_WINDOW_MS)));
        }
        if log.len() >= limit as usize {
            // Once enough of the oldest entries leave the window, one more fits (a
            // lowered limit may need several to leave).
            let oldest_blocking = log[log.len() - limit as usize];
            return Err(PublishRefused::Rate(RetryAfter(
                (oldest_blocking + RATE_WINDOW_MS).saturating_sub(now_ms),
            )));
        }
        if let Some(max) = count_channel {
            if !self.try_count_channel(max) {
                return Err(PublishRefused::ChannelLimit);
            }
        }
        log.push_back(now_ms);
        Ok(Recorded(Some(now_ms)))
    }

    /// Gives back the place a publish took (`recorded`, what
    /// [`TenantUsage::try_publish_counting`] returned) when it then failed (its history
    /// append), so that only published messages count. Its own entry goes, not a later
    /// one another shard recorded meanwhile (found in review: the newest went, which
    /// freed the window early by the time between the two).
    pub fn refund_publish(&self, recorded: Recorded) {
        let Recorded(Some(at)) = recorded else {
            return;
        };
        let mut log = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = log.iter().rposition(|&t| t == at) {
            log.remove(entry);
        }
    }
}

/// Where a publish was recorded in its tenant's rate window (`None`: unlimited, not
/// recorded), for [`TenantUsage::refund_publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded(Option<u64>);

/// Why [`TenantUsage::try_publish_counting`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// Over `publishes_per_minute`.
    Rate(RetryAfter),
    /// The channel would be one active channel too many.
    ChannelLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_plus_first_publish_in_any_minute_is_refused() {
        let usage = TenantUsage::default();
        for i in 0..500 {
            assert!(usage.try_publish(1_000 + i, Some(500)).is_ok(), "{i}");
        }
        let refused = usage.try_publish(1_500, Some(500)).unwrap_err();
        assert_eq!(
            refused,
            RetryAfter(59_500),
            "the first entry leaves at 61,000"
        );
        assert_eq!(refused.secs(), 60);
        // At 61,000 the first (t = 1,000) has left the window: one more fits, not two.
        assert!(usage.try_publish(61_000, Some(500)).is_ok());
        assert!(usage.try_publish(61_000, Some(500)).is_err());
        assert!(usage.try_publish(61_001, Some(500)).is_ok());
    }

    #[test]
    fn refused_publishes_take_no_room() {
        let usage = TenantUsage::default();
        assert!(usage.try_publish(0, Some(1)).is_ok());
        for t in 1..100 {
            assert!(usage.try_publish(t, Some(1)).is_err());
        }
        assert!(usage.try_publish(60_000, Some(1)).is_ok());
    }

    #[test]
    fn a_lowered_limit_waits_for_enough_entries_to_leave() {
        let usage = TenantUsage::default();
        for t in 0..10 {
            usage.try_publish(t * 1000, Some(10)).unwrap();
        }
        // Limit now 5: entries at 0..=4 s must leave first; the 5 s one blocks last.
        assert_eq!(usage.try_publish(10_000, Some(5)), Err(RetryAfter(55_000)));
        assert!(usage.try_publish(65_000, Some(5)).is_ok());
    }

    #[test]
    fn a_zero_limit_refuses_every_publish() {
        let usage = TenantUsage::default();
        assert_eq!(usage.try_publish(5, Some(0)), Err(RetryAfter(60_000)));
        assert_eq!(usage.try_publish(70_000, Some(0)), Err(RetryAfter(60_000)));
    }

    #[test]
    fn out_of_order_times_from_two_clocks_keep_the_window_exact() {
        let usage = TenantUsage::default();
        usage.try_publish(10_000, Some(2)).unwrap();
        // Another shard's clock is a millisecond behind.
        usage.try_publish(9_999, Some(2)).unwrap();
        assert!(usage.try_publish(69_999, Some(2)).is_err());
        // Both entries (at 10,000) leave the window at 70,000.
        assert!(usage.try_publish(70_000, Some(2)).is_ok());
        assert!(usage.try_publish(70_000, Some(2)).is_ok());
        assert!(usage.try_publish(70_000, Some(2)).is_err());
    }

    #[test]
    fn a_publish_counts_its_channel_only_when_the_rate_allows_it() {
        let usage = TenantUsage::default();
        assert!(usage
            .try_publish_counting(0, Some(1), Some(Some(5)))
            .is_ok());
        assert_eq!(usage.active_channels(), 1);
        let refused = usage.try_publish_counting(1, Some(1), Some(Some(5)));
        assert!(matches!(refused, Err(PublishRefused::Rate(_))));
        assert_eq!(
            usage.active_channels(),
            1,
            "a rate-refused publish counts nothing"
        );
        let full = TenantUsage::default();
        assert!(full.try_count_channel(Some(1)));
        let refused = full.try_publish_counting(0, Some(10), Some(Some(1)));
        assert_eq!(refused, Err(PublishRefused::ChannelLimit));
        let recorded = full.try_publish(0, Some(1));
        assert!(recorded.is_ok(), "a channel-refused publish took no place");
        full.refund_publish(recorded.unwrap());
        assert!(
            full.try_publish(0, Some(1)).is_ok(),
            "a refunded place is free again"
        );
    }

    #[test]
    fn a_refund_gives_back_the_failed_publishs_own_entry() {
        let usage = TenantUsage::default();
        let failed = usage.try_publish(1_000, Some(2)).unwrap();
        usage.try_publish(2_000, Some(2)).unwrap();
        usage.refund_publish(failed);
        usage.try_publish(3_000, Some(2)).unwrap();
        // The window holds 2,000 and 3,000: the next place frees at 62,000, not 61,000.
        assert_eq!(usage.try_publish(61_500, Some(2)), Err(RetryAfter(500)));
        assert!(usage.try_publish(62_000, Some(2)).is_ok());
    }

    #[test]
    fn channels_count_up_to_the_limit_exactly() {
        let usage = TenantUsage::default();
        assert!((0..3).all(|_| usage.try_count_channel(Some(3))));
        assert!(!usage.try_count_channel(Some(3)));
        usage.uncount_channel();
        assert!(usage.try_count_channel(Some(3)));
        assert!(usage.try_count_channel(None));
        assert_eq!(usage.active_channels(), 4);
    }
}
