//! A tenant's resume buffer: the last events of its sequence, bounded by count, bytes
//! and age (`[ren] buffer_events`, `buffer_bytes`, `buffer_secs`), so that a
//! reconnecting stream gets exactly what it missed, or learns that it cannot.
//!
//! Ids are contiguous: the buffer holds every id in `(floor, last_id]` and nothing else,
//! so a resume is an index, not a search. An id at or above `floor` (and not above
//! `last_id`) can be resumed exactly; any other id is truncated.

use std::collections::VecDeque;

use crate::clock::Millis;
use crate::ren::{RenEntry, RenLimits};

#[derive(Debug)]
struct Held {
    entry: RenEntry,
    at: Millis,
}

/// The kept tail of one tenant's sequence.
#[derive(Debug)]
pub struct RenBuffer {
    held: VecDeque<Held>,
    bytes: usize,
    /// Ids up to this one may be missing.
    floor: u64,
    last_id: u64,
}

impl RenBuffer {
    /// An empty buffer whose last id was `last_id` (nothing before it can be resumed).
    pub fn new(last_id: u64) -> RenBuffer {
        RenBuffer {
            held: VecDeque::new(),
            bytes: 0,
            floor: last_id,
            last_id,
        }
    }

    /// The last id assigned.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Assigns the next id.
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Keeps `entry` (the id [`RenBuffer::next_id`] just gave), dropping the oldest past
    /// the bounds.
    pub fn push(&mut self, entry: RenEntry, at: Millis, limits: &RenLimits) {
        debug_assert_eq!(entry.id, self.last_id);
        self.bytes += entry.chunk.len();
        self.held.push_back(Held { entry, at });
        while self.held.len() > limits.max_events || self.bytes > limits.max_bytes {
            self.drop_oldest();
        }
    }

    /// Drops the events older than the age bound.
    pub fn expire(&mut self, now: Millis, limits: &RenLimits) {
        while self
            .held
            .front()
            .is_some_and(|h| now.since(h.at) >= limits.max_age_ms)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(held) = self.held.pop_front() {
            self.bytes -= held.entry.chunk.len();
            self.floor = held.entry.id;
        }
    }

    /// Forgets every event (nothing before now can be resumed) and frees the memory.
    pub fn clear(&mut self) {
        self.held = VecDeque::new();
        self.bytes = 0;
        self.floor = self.last_id;
    }

    /// Moves the sequence past every id handed out so far (to `at_least` if that is
    /// further) and forgets every event, so that no old id resumes: for a sequence that
    /// stopped recording for a while (events happened unseen).
    pub fn skip_to(&mut self, at_least: u64) {
        self.last_id = (self.last_id + 1).max(at_least);
        self.clear();
    }

    /// The kept events after `id`, oldest first; `None` when some after it are gone (or
    /// `id` was never handed out).
    pub fn after(&self, id: u64) -> Option<Vec<RenEntry>> {
        if id < self.floor || id > self.last_id {
            return None;
        }
        let skip = (id - self.floor) as usize;
        Some(
            self.held
                .iter()
                .skip(skip)
                .map(|h| h.entry.clone())
                .collect(),
        )
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes of chunks kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    const LIMITS: RenLimits = RenLimits {
        max_events: 3,
        max_bytes: 1000,
        max_age_ms: 100,
    };

    fn push(buffer: &mut RenBuffer, at: u64, size: usize) -> u64 {
        let id = buffer.next_id();
        let entry = RenEntry {
            id,
            domain: Arc::from("kv"),
            chunk: Bytes::from(vec![b'x'; size]),
            private: None,
        };
        buffer.push(entry, Millis(at), &LIMITS);
        id
    }

    fn ids(entries: Option<Vec<RenEntry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.id).collect())
    }

    #[test]
    fn resumes_exactly_what_is_kept_and_refuses_the_rest() {
        let mut buffer = RenBuffer::new(100);
        assert_eq!(ids(buffer.after(100)), Some(vec![]));
        assert_eq!(ids(buffer.after(99)), None, "before the sequence began");
        for _ in 0..5 {
            push(&mut buffer, 0, 10);
        }
        assert_eq!(buffer.len(), 3, "count bound");
        assert_eq!(ids(buffer.after(102)), Some(vec![103, 104, 105]));
        assert_eq!(ids(buffer.after(104)), Some(vec![105]));
        assert_eq!(ids(buffer.after(105)), Some(vec![]));
        assert_eq!(ids(buffer.after(101)), None, "102 was dropped");
        assert_eq!(ids(buffer.after(106)), None, "never handed out");
    }

    #[test]
    fn byte_and_age_bounds() {
        let mut buffer = RenBuffer::new(0);
        push(&mut buffer, 0, 600);
        push(&mut buffer, 50, 600);
        assert_eq!((buffer.len(), buffer.bytes()), (1, 600), "byte bound");
        push(&mut buffer, 60, 10);
        buffer.expire(Millis(149), &LIMITS);
        assert_eq!(buffer.len(), 2);
        buffer.expire(Millis(150), &LIMITS);
        assert_eq!(ids(buffer.after(2)), Some(vec![3]));
        buffer.expire(Millis(160), &LIMITS);
        assert!(buffer.is_empty());
        assert_eq!(ids(buffer.after(3)), Some(vec![]), "nothing missed");
        assert_eq!(ids(buffer.after(2)), None);
    }

    #[test]
    fn a_skip_makes_every_old_id_truncated() {
        let mut buffer = RenBuffer::new(0);
        push(&mut buffer, 0, 1);
        buffer.skip_to(0);
        assert_eq!(ids(buffer.after(1)), None);
        assert_eq!(push(&mut buffer, 0, 1), 3);
        assert_eq!(ids(buffer.after(2)), Some(vec![3]));
        buffer.skip_to(10);
        assert_eq!(push(&mut buffer, 0, 1), 11, "time-based start when further");
    }
}
