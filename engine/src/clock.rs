//! The engine's one source of time.
//!
//! Every handler reads time through a [`Clock`] handed to it, never from the OS directly,
//! so tests can drive presence TTLs, token expiry, rate windows and request deadlines
//! with a [`ManualClock`] instead of sleeping. `protocol` stays clock-free: the engine
//! passes `now` to it as an argument.
//!
//! The system clock is monotonic and epoch-aligned: it reads the wall clock once at
//! start-up and adds monotonic time since, so `ts` values on the wire are epoch
//! milliseconds and deadlines never jump when the host's clock is stepped. A token's
//! `exp` and `nbf`, times another machine wrote, are compared with the wall clock read
//! afresh ([`Clock::wall_now`]): after a suspend the monotonic reading runs behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of every `ts` on the wire and of every
/// deadline inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 when `earlier` is later).
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Where a shard reads the time.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The host's clock: wall time at start-up plus monotonic time since.
    System {
        /// Wall-clock epoch milliseconds at `base`.
        base_ms: u64,
        /// When `base_ms` was read.
        base: Instant,
    },
    /// Time that moves only when a test says so.
    Manual(ManualClock),
}

impl Clock {
    /// The host's clock.
    pub fn system() -> Clock {
        Clock::System {
            base_ms: wall_ms(),
            base: Instant::now(),
        }
    }

    /// Now.
    pub fn now(&self) -> Millis {
        match self {
            Clock::System { base_ms, base } => Millis(base_ms + base.elapsed().as_millis() as u64),
            Clock::Manual(manual) => manual.now(),
        }
    }

    /// Now, as epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now().0
    }

    /// The host's wall clock now, read afresh: for comparing with times another machine
    /// wrote (a token's `exp` and `nbf`). [`Clock::now`] can run behind it by however
    /// long the host was suspended, or by an NTP step, since start-up; deadlines stay on
    /// [`Clock::now`]. A manual clock reads its own time here too, so a test moves both.
    pub fn wall_now(&self) -> u64 {
        match self {
            Clock::System { .. } => wall_ms(),
            Clock::Manual(manual) => manual.now().0,
        }
    }
}

/// A clock for tests: starts where it is told and moves only by [`ManualClock::advance`].
/// Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Millis) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start.0)))
    }

    /// The time it reads.
    pub fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }

    /// Moves time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

/// Wall-clock epoch milliseconds, for the few places outside a shard (start-up logs,
/// generated ids) that need no injected clock.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let manual = ManualClock::new(Millis(1_000));
        let clock = Clock::Manual(manual.clone());
        assert_eq!(clock.now(), Millis(1_000));
        manual.advance(250);
        assert_eq!(clock.clone().now_ms(), 1_250);
    }

    #[test]
    fn system_clock_is_epoch_aligned_and_monotonic() {
        let clock = Clock::system();
        let (a, b) = (clock.now(), clock.now());
        assert!(b >= a);
        assert!(a.0.abs_diff(wall_ms()) < 5_000);
    }
}
