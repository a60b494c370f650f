//! Rate limit of the "accept failed" log line. When the process runs out of descriptors
//! (EMFILE), the connection stays in the listener's backlog and every retry fails again:
//! a shard retries every 10 ms, and a line per failure would be about 100 lines a second
//! per shard. So a shard logs at most one line per [`INTERVAL_MS`], carrying how many
//! failures were left out since the line before, and one "accepting again" line (with
//! the failures left out since the last line) when an accept succeeds after failures.
//!
//! Owned by its shard's accept loop (no lock); time comes from the shard's clock.

use crate::clock::Millis;

/// At most one "accept failed" line per this many milliseconds, per shard.
pub const INTERVAL_MS: u64 = 1000;

/// What to log for one accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Nothing.
    Quiet,
    /// An "accept failed" line, with the failures left out since the line before.
    Failure {
        /// Failures not logged since the last line.
        suppressed: u64,
    },
    /// An "accepting again" line: the first success after failures.
    Recovered {
        /// Failures not logged since the last line.
        suppressed: u64,
    },
}

/// One shard's accept failures: when the last line went out, how many were left out
/// since, and whether the last accept failed.
#[derive(Debug, Default)]
pub struct AcceptLog {
    last_line: Option<Millis>,
    suppressed: u64,
    failing: bool,
}

impl AcceptLog {
    fn due(&self, now: Millis) -> bool {
        self.last_line
            .is_none_or(|last| now.0 >= last.0.saturating_add(INTERVAL_MS))
    }

    /// An accept failed at `now`.
    pub fn failed(&mut self, now: Millis) -> Logged {
        self.failing = true;
        if !self.due(now) {
            self.suppressed += 1;
            return Logged::Quiet;
        }
        self.last_line = Some(now);
        Logged::Failure {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// An accept succeeded at `now`: `Recovered` when accepts failed since the last
    /// line and a line is due (found in review: at the descriptor limit, every close let
    /// one accept through, so success and failure took turns, and each success logged).
    pub fn accepted(&mut self, now: Millis) -> Logged {
        if !self.failing || !self.due(now) {
            return Logged::Quiet;
        }
        self.failing = false;
        self.last_line = Some(now);
        Logged::Recovered {
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_then_the_count_left_out() {
        let mut log = AcceptLog::default();
        assert_eq!(log.failed(Millis(5_000)), Logged::Failure { suppressed: 0 });
        // A retry every 10 ms for the rest of the second: all left out.
        let quiet = (1..100)
            .map(|i| log.failed(Millis(5_000 + 10 * i)))
            .filter(|l| *l == Logged::Quiet)
            .count();
        assert_eq!(quiet, 99);
        assert_eq!(
            log.failed(Millis(6_000)),
            Logged::Failure { suppressed: 99 }
        );
        // A full interval since the last line, not a calendar second.
        assert_eq!(log.failed(Millis(6_999)), Logged::Quiet);
        assert_eq!(log.failed(Millis(7_000)), Logged::Failure { suppressed: 1 });
    }

    #[test]
    fn the_first_success_after_failures_says_so_once() {
        let mut log = AcceptLog::default();
        assert_eq!(log.accepted(Millis(500)), Logged::Quiet, "no failures yet");
        log.failed(Millis(1_000));
        log.failed(Millis(1_010));
        log.failed(Millis(1_020));
        assert_eq!(
            log.accepted(Millis(2_030)),
            Logged::Recovered { suppressed: 2 }
        );
        assert_eq!(log.accepted(Millis(2_040)), Logged::Quiet, "said once");
        // A later failure is logged at once if the interval has passed.
        assert_eq!(log.failed(Millis(3_500)), Logged::Failure { suppressed: 0 });
    }

    /// At the descriptor limit, successes and failures take turns (each close lets one
    /// accept through): still at most one line per interval.
    #[test]
    fn successes_and_failures_taking_turns_log_once_an_interval() {
        let mut log = AcceptLog::default();
        let lines = (0..100u64)
            .flat_map(|i| {
                let now = Millis(1_000 + 10 * i);
                [log.failed(now), log.accepted(now)]
            })
            .filter(|l| *l != Logged::Quiet)
            .count();
        assert_eq!(lines, 1, "100 turns within one second");
    }
}
