//! Rate limit of the "connection closed" log lines: one line per abnormal close (slow
//! consumer, limit, auth, protocol error, tenant removed, timeout, internal), at most
//! [`LINES_PER_SECOND`] per second per shard per reason; past that, closes are counted,
//! and one "suppressed" line per reason says how many were left out (the next time a
//! line of that reason is logged, or at the next housekeeping tick, whichever comes
//! first). A storm of closes (a thousand slow consumers cut at once) so costs a few lines,
//! never a line per connection, and never a line per message.
//!
//! Owned by its shard's `ShardCore` (no lock); time comes from the shard's clock.

use std::net::IpAddr;

use crate::clock::Millis;
use crate::metrics::{CloseReason, Transport};

/// Lines per second per shard per reason.
pub const LINES_PER_SECOND: u32 = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// The second (`ms / 1000`) this window counts.
    second: u64,
    logged: u32,
    suppressed: u64,
}

/// One connection's end, as counted and (when abnormal) logged.
#[derive(Debug, Clone, Copy)]
pub struct Closed<'a> {
    /// Its transport.
    pub transport: Transport,
    /// Why it ended.
    pub reason: CloseReason,
    /// Its client address (the real client behind a trusted proxy), when known.
    pub client: Option<IpAddr>,
    /// Its tenant, when known (WebSocket sessions).
    pub tenant: Option<&'a str>,
    /// The close code sent or received (WebSocket sessions).
    pub code: Option<u16>,
}

/// What to do with one close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Log this close.
    pub log: bool,
    /// Before it, report this many closes of the same reason that were suppressed in an
    /// earlier second (0: none).
    pub suppressed_before: u64,
}

/// Per-reason windows of one shard.
#[derive(Debug, Default)]
pub struct CloseLog {
    windows: [Window; CloseReason::COUNT],
}

impl CloseLog {
    /// Decides about one close for `reason` at `now`.
    pub fn admit(&mut self, reason: CloseReason, now: Millis) -> Admit {
        let second = now.0 / 1000;
        let window = &mut self.windows[reason.index()];
        let mut suppressed_before = 0;
        if window.second != second {
            suppressed_before = std::mem::take(&mut window.suppressed);
            window.second = second;
            window.logged = 0;
        }
        if window.logged < LINES_PER_SECOND {
            window.logged += 1;
            Admit {
                log: true,
                suppressed_before,
            }
        } else {
            window.suppressed += 1;
            Admit {
                log: false,
                suppressed_before,
            }
        }
    }

    /// The suppressed counts of windows that ended before `now` (each reported once).
    pub fn flush(&mut self, now: Millis) -> Vec<(CloseReason, u64)> {
        let second = now.0 / 1000;
        let mut out = Vec::new();
        for reason in CloseReason::ALL {
            let window = &mut self.windows[reason.index()];
            if window.second < second && window.suppressed > 0 {
                out.push((reason, std::mem::take(&mut window.suppressed)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_per_second_then_one_summary() {
        let mut log = CloseLog::default();
        let at = Millis(5_000);
        let logged = (0..25)
            .filter(|_| log.admit(CloseReason::SlowConsumer, at).log)
            .count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        // Another reason has its own budget.
        assert!(log.admit(CloseReason::Auth, at).log);
        // Within the same second nothing is flushed yet.
        assert!(log.flush(Millis(5_999)).is_empty());
        assert_eq!(
            log.flush(Millis(6_000)),
            vec![(CloseReason::SlowConsumer, 15)]
        );
        assert!(log.flush(Millis(7_000)).is_empty(), "reported once");
    }

    #[test]
    fn the_next_line_of_a_new_second_carries_the_count() {
        let mut log = CloseLog::default();
        for _ in 0..12 {
            log.admit(CloseReason::Limit, Millis(1_000));
        }
        let next = log.admit(CloseReason::Limit, Millis(2_500));
        assert_eq!(
            next,
            Admit {
                log: true,
                suppressed_before: 2
            }
        );
        assert!(log.flush(Millis(9_000)).is_empty(), "already reported");
    }
}
