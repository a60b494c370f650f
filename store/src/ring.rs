//! Ring arithmetic: where the next record goes and which records it evicts.
//!
//! Pure and safe, with no access to the bytes, so the placement rules can be
//! property-tested on their own. The ring keeps the data offset of every kept record,
//! oldest first; that index is also what makes `iter_after` O(1) to start.
//!
//! Live bytes are `[head, tail)` when `tail > head` ("unwrapped"), and
//! `[head, wrap point) ∪ [0, tail)` when `tail <= head` ("wrapped"). A record never
//! straddles the end of the data region: when it does not fit before the end, it goes to
//! offset 0 and a wrap marker (or, if fewer than a record header's bytes remain, nothing)
//! fills the place where it would have started.

use std::collections::VecDeque;

use crate::format::REC_HEADER_LEN;

/// Kept records of one log, by data offset, plus the seqs around them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ring {
    data_len: u64,
    /// Data offset of each kept record, oldest first. Offsets fit in u32 because the
    /// data region is at most `u32::MAX` bytes.
    offsets: VecDeque<u32>,
    /// Offset just past the newest kept record (0 when none).
    tail: u64,
    /// Seq of `offsets[0]`.
    first_seq: u64,
    /// Latest assigned seq; may be past the newest kept record's seq.
    last_seq: u64,
}

/// Where an append goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The record is larger than the whole data region. Format 1's `RingLog` consumes
    /// its seq and empties the log, so readers see the gap; the shard store grows the
    /// ring or refuses the record.
    TooLarge,
    /// Evict the `evict` oldest records, then write the record at `at`; if `wrap_at` is
    /// set, write a wrap marker there first.
    Store {
        evict: usize,
        at: u64,
        wrap_at: Option<u64>,
    },
}

impl Ring {
    pub(crate) fn new(data_len: u64) -> Ring {
        Ring {
            data_len,
            offsets: VecDeque::new(),
            tail: 0,
            first_seq: 1,
            last_seq: 0,
        }
    }

    /// An empty ring whose last assigned seq is `last_seq`.
    pub(crate) fn empty_at(data_len: u64, last_seq: u64) -> Ring {
        Ring {
            first_seq: last_seq + 1,
            last_seq,
            ..Ring::new(data_len)
        }
    }

    /// Size of the data region this ring places records in.
    pub(crate) fn data_len(&self) -> u64 {
        self.data_len
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Seq of the oldest kept record, if any.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then_some(self.first_seq)
    }

    /// Seq of the newest kept record, if any.
    pub(crate) fn newest_kept_seq(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_seq + self.offsets.len() as u64 - 1)
    }

    pub(crate) fn head(&self) -> u64 {
        self.offsets.front().map_or(0, |&o| u64::from(o))
    }

    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    pub(crate) fn offset(&self, index: usize) -> u64 {
        u64::from(self.offsets[index])
    }

    /// Decides where a record of `rec_len` bytes (a multiple of 8) goes. Evicts only
    /// what it must: one record at a time from the oldest, until the newcomer fits and
    /// the count stays within `max_records` (at least 1).
    pub(crate) fn plan(&self, rec_len: u64, max_records: u32) -> Plan {
        if rec_len > self.data_len {
            return Plan::TooLarge;
        }
        let count = self.offsets.len();
        let mut evict = (count + 1).saturating_sub(max_records as usize);
        if self.newest_kept_seq().is_some_and(|s| s != self.last_seq) {
            // The kept run ended before last_seq (published records were lost): keep the
            // kept records one gap-free run by starting a new one.
            evict = count;
        }
        loop {
            if evict >= count {
                return Plan::Store {
                    evict: count,
                    at: 0,
                    wrap_at: None,
                };
            }
            let head = u64::from(self.offsets[evict]);
            let tail = self.tail;
            if tail > head {
                if self.data_len - tail >= rec_len {
                    return Plan::Store {
                        evict,
                        at: tail,
                        wrap_at: None,
                    };
                }
                if head >= rec_len {
                    let room = self.data_len - tail;
                    return Plan::Store {
                        evict,
                        at: 0,
                        wrap_at: (room >= REC_HEADER_LEN as u64).then_some(tail),
                    };
                }
            } else if head - tail >= rec_len {
                return Plan::Store {
                    evict,
                    at: tail,
                    wrap_at: None,
                };
            }
            evict += 1;
        }
    }

    /// Forgets the `n` oldest records.
    pub(crate) fn evict(&mut self, n: usize) {
        let n = n.min(self.offsets.len());
        self.offsets.drain(..n);
        self.first_seq += n as u64;
        if self.offsets.is_empty() {
            self.tail = 0;
            self.first_seq = self.last_seq + 1;
        }
    }

    /// Records a record of `len` bytes written at `at` with seq `last_seq + 1`.
    pub(crate) fn push(&mut self, at: u64, len: u64) {
        self.last_seq += 1;
        if self.offsets.is_empty() {
            self.first_seq = self.last_seq;
        }
        debug_assert!(at + len <= self.data_len);
        self.offsets.push_back(at as u32);
        self.tail = at + len;
    }

    /// Raises the last assigned seq to `to` without keeping records for the seqs skipped
    /// (used by recovery when published records were lost).
    pub(crate) fn raise_last_seq(&mut self, to: u64) {
        if to > self.last_seq {
            self.last_seq = to;
            if self.offsets.is_empty() {
                self.first_seq = to + 1;
            }
        }
    }

    /// Consumes a seq without keeping a record: the log becomes empty.
    pub(crate) fn skip_seq(&mut self) {
        self.offsets.clear();
        self.tail = 0;
        self.last_seq += 1;
        self.first_seq = self.last_seq + 1;
    }

    /// Whether `[at, at + len)` lies in bytes no kept record uses.
    pub(crate) fn is_free(&self, at: u64, len: u64) -> bool {
        let end = at.saturating_add(len);
        if end > self.data_len {
            return false;
        }
        if self.offsets.is_empty() {
            return true;
        }
        let (head, tail) = (self.head(), self.tail);
        if tail > head {
            end <= head || at >= tail
        } else {
            at >= tail && end <= head
        }
    }

    /// Index of the first kept record with seq > `after`, or `len()` if none.
    pub(crate) fn index_after(&self, after: u64) -> usize {
        (after.saturating_add(1).saturating_sub(self.first_seq) as usize).min(self.offsets.len())
    }

    /// Index one past the last kept record with seq < `before`.
    pub(crate) fn index_before(&self, before: u64) -> usize {
        (before.saturating_sub(self.first_seq) as usize).min(self.offsets.len())
    }
}

#[cfg(test)]
mod tests;
