//! At most one log line a second for an event that may repeat at the rate of client
//! requests (a publish refused because history is full or failing): each line carries
//! how many were left out since the line before. Owned by one shard (no lock); time
//! comes from the shard's clock.

use crate::clock::Millis;

/// At most one line per this many milliseconds.
pub const INTERVAL_MS: u64 = 1000;

/// When the last line went out, and how many were left out since.
#[derive(Debug, Default)]
pub struct LineLimit {
    last_line: Option<Millis>,
    suppressed: u64,
}

impl LineLimit {
    /// The event happened at `now`: `Some(left out since the last line)` when a line is
    /// due, `None` when this one is left out.
    pub fn admit(&mut self, now: Millis) -> Option<u64> {
        let due = self
            .last_line
            .is_none_or(|last| now.0 >= last.0.saturating_add(INTERVAL_MS));
        if !due {
            self.suppressed += 1;
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_left_out() {
        let mut limit = LineLimit::default();
        assert_eq!(limit.admit(Millis(10)), Some(0));
        for t in 11..1_010 {
            assert_eq!(limit.admit(Millis(t)), None, "{t}");
        }
        assert_eq!(limit.admit(Millis(1_010)), Some(999));
        assert_eq!(limit.admit(Millis(5_000)), Some(0));
    }
}
