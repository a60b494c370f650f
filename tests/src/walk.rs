//! What the seeded soaks (`tests/tests/soak*.rs`) share: their random generator, the seed
//! a run takes, and the model of what one followed channel must be delivered next.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::TIMEOUT;

/// A small seeded generator (xorshift64*): the same seed walks the same ops.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of walker (or thread) `stream` of a walk seeded `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ (stream + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// A walk's seed: `RINGCAST_SOAK_SEED` (`0x`-hex, as failures print it, or decimal) when
/// set, else `default`.
pub fn soak_seed(default: u64) -> Result<u64> {
    let Ok(text) = std::env::var("RINGCAST_SOAK_SEED") else {
        return Ok(default);
    };
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .context("RINGCAST_SOAK_SEED is 0x-hex or decimal")
}

/// A walker: reads its connection one event at a time through its model.
pub trait Observe {
    /// Reads one event and checks it against the model; returns it.
    fn observe(&mut self) -> Result<Value>;

    /// Observes events until `done` holds for one (at most 100,000 of them).
    fn until(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Result<Value> {
        for _ in 0..100_000 {
            let ev = self
                .observe()
                .with_context(|| format!("waiting for {what}"))?;
            if done(&ev) {
                return Ok(ev);
            }
        }
        bail!("no {what} in 100,000 events")
    }
}

/// What a read may wait, at most [`TIMEOUT`]; an error once the walk's `deadline` passed.
pub fn time_left(deadline: Instant, who: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    ensure!(!left.is_zero(), "{who} ran past the soak's limit");
    Ok(left.min(TIMEOUT))
}

/// The last frames a walker sent and read, for a failure's message.
#[derive(Debug)]
pub struct Trail {
    lines: VecDeque<String>,
    keep: usize,
    width: usize,
}

impl Trail {
    /// Keeps the last `keep` lines, each cut to `width` characters.
    pub fn new(keep: usize, width: usize) -> Trail {
        Trail {
            lines: VecDeque::with_capacity(keep),
            keep,
            width,
        }
    }

    pub fn note(&mut self, line: String) {
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines
            .push_back(line.chars().take(self.width).collect());
    }

    /// The lines, oldest first, one per line.
    pub fn text(&self) -> String {
        Vec::from(self.lines.clone()).join("\n")
    }
}

/// What one followed channel must be delivered next, from the `subscribe` or resume
/// that asked for it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The seq the next message must carry (0 before a plain subscribe's answer: no
    /// message may come before it).
    pub next: u64,
    /// `subscribed` answers still to come (2 after the SDK's plain-then-resume pair).
    pub answers_due: u32,
    /// A resume is among the answers due: the last `subscribed` must be `recovered` and
    /// come right after the replay.
    resuming: bool,
    /// The SDK's pair in flight: the resume's `lastEventId` and the seqs seen since.
    /// Messages sent live after the plain answer may come before the replay of older
    /// ones, but each seq comes once, and by the resume's answer all of them have.
    window: Option<(u64, BTreeSet<u64>)>,
    /// A resume that takes a replay of only the kept messages ([`Delivery::resume_kept`]).
    kept: Option<Kept>,
}

/// What a [`Delivery::resume_kept`] asked for and what its replay began with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kept {
    /// The resume's `lastEventId`.
    last: u64,
    /// The first seq replayed, once one came.
    first: Option<u64>,
}

impl Delivery {
    /// A plain `subscribe`: live messages from its answer's seq on.
    pub fn plain() -> Delivery {
        Delivery {
            next: 0,
            answers_due: 1,
            resuming: false,
            window: None,
            kept: None,
        }
    }

    /// A resume from `last` (its `lastEventId`); with `plain_first`, the SDK's order on
    /// open: a plain `subscribe`, then the resume before the first answer.
    pub fn resume(last: u64, plain_first: bool) -> Delivery {
        Delivery {
            next: last + 1,
            answers_due: 1 + u32::from(plain_first),
            resuming: true,
            window: plain_first.then(BTreeSet::new).map(|seen| (last, seen)),
            kept: None,
        }
    }

    /// A resume from `last` on a channel whose history keeps only its newest messages
    /// (the tenant's `history_messages`): the replay is every kept message after `last`,
    /// in order, then `subscribed`. A replay that begins after `last + 1` (those between
    /// were no longer kept) must be answered `recovered: false`, one that begins there
    /// (or an empty one) `recovered: true`.
    pub fn resume_kept(last: u64) -> Delivery {
        Delivery {
            kept: Some(Kept { last, first: None }),
            ..Delivery::resume(last, false)
        }
    }

    /// The first seq a [`Delivery::resume_kept`] replayed, once it replayed one.
    pub fn first_replayed(&self) -> Option<u64> {
        self.kept.and_then(|k| k.first)
    }

    /// Every answer came, and each seq since is accounted for.
    pub fn answered(&self) -> bool {
        self.answers_due == 0 && self.window.is_none()
    }

    /// A message with `seq` arrived. Err says what is wrong with it.
    pub fn message(&mut self, seq: u64) -> std::result::Result<(), String> {
        if let Some((from, seqs)) = &mut self.window {
            if seq <= *from || !seqs.insert(seq) {
                return Err(format!("seq {seq} again, or not after {from}"));
            }
            return Ok(());
        }
        if let Some(kept @ Kept { first: None, .. }) = &mut self.kept {
            // The replay's first message: it may start later than asked, not earlier.
            if self.answers_due > 0 && seq >= self.next {
                kept.first = Some(seq);
                self.next = seq;
            }
        }
        if seq != self.next {
            return Err(format!(
                "seq {seq}, expected {} (gap, duplicate, or before the answer)",
                self.next
            ));
        }
        self.next = seq + 1;
        Ok(())
    }

    /// A `subscribed` at `seq` arrived; `Ok(true)` when it was the last answer due.
    pub fn subscribed(&mut self, seq: u64, recovered: bool) -> std::result::Result<bool, String> {
        if self.answers_due == 0 {
            return Err("an extra subscribed".into());
        }
        self.answers_due -= 1;
        if self.answers_due > 0 {
            return Ok(false);
        }
        if let Some(Kept { last, first }) = self.kept {
            let lost = first.is_some_and(|first| first > last + 1);
            if lost == recovered {
                return Err(format!(
                    "resume from {last} answered at {seq} recovered: {recovered}, its replay \
                     beginning at {first:?}"
                ));
            }
        } else if self.resuming && !recovered {
            return Err(format!("resume answered at {seq} not recovered"));
        }
        if let Some((from, seqs)) = self.window.take() {
            let want: BTreeSet<u64> = (from + 1..=seq).collect();
            if seqs != want {
                return Err(format!(
                    "resumed from {from}, answered at {seq}, seen {seqs:?}"
                ));
            }
        } else if self.resuming && self.next != seq + 1 {
            return Err(format!(
                "resume answered at seq {seq} after replaying up to {}",
                self.next - 1
            ));
        }
        self.next = seq + 1;
        self.resuming = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_takes_live_messages_before_the_replay_once_each() {
        let mut d = Delivery::resume(4, true);
        assert_eq!(d.subscribed(6, true), Ok(false));
        d.message(7).unwrap();
        d.message(5).unwrap();
        assert!(d.message(7).is_err(), "twice");
        d.message(6).unwrap();
        assert_eq!(d.subscribed(7, true), Ok(true));
        assert!(d.answered());
        assert!(d.message(9).is_err(), "a gap");
        d.message(8).unwrap();
    }

    #[test]
    fn a_resume_of_kept_messages_says_whether_its_replay_begins_where_asked() {
        let mut d = Delivery::resume_kept(2);
        d.message(6).unwrap();
        d.message(7).unwrap();
        assert!(d.message(9).is_err(), "a gap inside the replay");
        assert_eq!(d.first_replayed(), Some(6));
        assert!(d.clone().subscribed(7, true).is_err(), "3 to 5 were lost");
        assert_eq!(d.subscribed(7, false), Ok(true));
        d.message(8).unwrap();

        let mut d = Delivery::resume_kept(2);
        d.message(3).unwrap();
        assert!(d.clone().subscribed(3, false).is_err(), "nothing was lost");
        assert_eq!(d.subscribed(3, true), Ok(true));

        let mut d = Delivery::resume_kept(4);
        assert!(d.clone().message(4).is_err(), "before what was asked");
        assert!(
            d.clone().subscribed(6, false).is_err(),
            "5 and 6 not replayed"
        );
        assert_eq!(d.subscribed(4, true), Ok(true));
    }

    #[test]
    fn a_plain_subscribe_takes_nothing_before_its_answer() {
        let mut d = Delivery::plain();
        assert!(d.message(3).is_err());
        assert_eq!(d.subscribed(3, true), Ok(true));
        d.message(4).unwrap();
        assert!(d.subscribed(4, true).is_err(), "no answer was due");
    }

    #[test]
    fn a_resume_replays_in_order_then_answers_at_the_last() {
        let mut d = Delivery::resume(2, false);
        d.message(3).unwrap();
        assert!(d.subscribed(4, true).is_err(), "seq 4 not replayed");
        let mut d = Delivery::resume(2, false);
        d.message(3).unwrap();
        assert!(d.subscribed(3, false).is_err(), "not recovered");
    }
}
