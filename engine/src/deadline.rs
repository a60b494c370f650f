//! The per-shard deadline queue, one per kind of deadline: request deadlines
//! (`requests.rs`) and presence TTLs (`presence.rs`) today; token expiry and SSE
//! heartbeats as they land.
//!
//! A binary heap of `(deadline, slot)` over a slab of entries. Cancelling or moving an
//! entry leaves its old heap item behind as stale (recognised by a per-slot generation
//! and insertion number); the heap is rebuilt from the slab once stale items outnumber
//! live ones, so its size stays within twice the live entries. A tick looks only at the
//! top of the heap: idle entries cost nothing per tick.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::clock::Millis;

/// Names one entry; stale once the entry fired or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    entry: Option<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    deadline: Millis,
    pushed: u64,
    value: T,
}

/// Heap item: ordered by deadline, then insertion (earliest first via `Reverse`).
type Item = Reverse<(Millis, u64, u32)>;

/// Values that fall due at a deadline.
#[derive(Debug)]
pub struct DeadlineQueue<T> {
    heap: BinaryHeap<Item>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
    pushed: u64,
}

impl<T> Default for DeadlineQueue<T> {
    fn default() -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            pushed: 0,
        }
    }
}

impl<T> DeadlineQueue<T> {
    /// Schedules `value` for `deadline`.
    pub fn insert(&mut self, deadline: Millis, value: T) -> TimerKey {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.pushed += 1;
        let s = &mut self.slots[slot as usize];
        s.entry = Some(Entry {
            deadline,
            pushed: self.pushed,
            value,
        });
        self.live += 1;
        self.heap.push(Reverse((deadline, self.pushed, slot)));
        TimerKey {
            slot,
            generation: s.generation,
        }
    }

    /// Removes an entry before it falls due; `None` when it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        self.release(key.slot);
        self.compact_if_stale();
        Some(entry.value)
    }

    /// Moves an entry to a new deadline; false when it already fired or was cancelled.
    pub fn reset(&mut self, key: TimerKey, deadline: Millis) -> bool {
        let Some(slot) = self.slots.get_mut(key.slot as usize) else {
            return false;
        };
        let Some(entry) = slot
            .entry
            .as_mut()
            .filter(|_| slot.generation == key.generation)
        else {
            return false;
        };
        self.pushed += 1;
        entry.deadline = deadline;
        entry.pushed = self.pushed;
        self.heap.push(Reverse((deadline, self.pushed, key.slot)));
        self.compact_if_stale();
        true
    }

    /// The value of a live entry.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        let slot = self.slots.get(key.slot as usize)?;
        (slot.generation == key.generation)
            .then_some(slot.entry.as_ref()?)
            .map(|e| &e.value)
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Millis> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((deadline, _, _))| *deadline)
    }

    /// Takes one entry whose deadline is at or before `now`, earliest first.
    pub fn pop_expired(&mut self, now: Millis) -> Option<(TimerKey, T)> {
        self.drop_stale_top();
        let Reverse((deadline, _, slot)) = *self.heap.peek()?;
        if deadline > now {
            return None;
        }
        self.heap.pop();
        let s = &mut self.slots[slot as usize];
        let key = TimerKey {
            slot,
            generation: s.generation,
        };
        let entry = s.entry.take().expect("top of the heap is live");
        self.release(slot);
        Some((key, entry.value))
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn is_live(&self, (deadline, pushed, slot): (Millis, u64, u32)) -> bool {
        self.slots[slot as usize]
            .entry
            .as_ref()
            .is_some_and(|e| e.deadline == deadline && e.pushed == pushed)
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse(item)) = self.heap.peek() {
            if self.is_live(*item) {
                return;
            }
            self.heap.pop();
        }
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
    }

    fn compact_if_stale(&mut self) {
        if self.heap.len() <= 2 * self.live + 64 {
            return;
        }
        let live: Vec<Item> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.entry
                    .as_ref()
                    .map(|e| Reverse((e.deadline, e.pushed, i as u32)))
            })
            .collect();
        self.heap = BinaryHeap::from(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(q: &mut DeadlineQueue<u32>, now: u64) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_expired(Millis(now)).map(|(_, v)| v)).collect()
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let mut q = DeadlineQueue::default();
        q.insert(Millis(30), 3);
        q.insert(Millis(10), 1);
        q.insert(Millis(20), 2);
        assert_eq!(q.next_deadline(), Some(Millis(10)));
        assert_eq!(drain(&mut q, 9), Vec::<u32>::new());
        assert_eq!(drain(&mut q, 20), vec![1, 2]);
        assert_eq!(drain(&mut q, 100), vec![3]);
        assert!(q.is_empty());
    }

    #[test]
    fn cancel_and_reset() {
        let mut q = DeadlineQueue::default();
        let a = q.insert(Millis(10), 1);
        let b = q.insert(Millis(20), 2);
        assert_eq!(q.cancel(a), Some(1));
        assert_eq!(q.cancel(a), None, "cancelled twice");
        assert!(q.reset(b, Millis(5)));
        assert_eq!(q.next_deadline(), Some(Millis(5)));
        assert_eq!(drain(&mut q, 5), vec![2]);
        assert!(!q.reset(b, Millis(50)), "fired keys are stale");
        // A reused slot does not answer to the old key.
        let c = q.insert(Millis(7), 3);
        assert_eq!(q.cancel(b), None);
        assert_eq!(q.get(c), Some(&3));
    }

    #[test]
    fn heap_stays_within_twice_the_live_entries() {
        let mut q = DeadlineQueue::default();
        let keep = q.insert(Millis(1_000_000), 0);
        for i in 0..100_000u32 {
            let k = q.insert(Millis(u64::from(i)), i);
            q.cancel(k);
        }
        assert!(q.heap.len() <= 2 * q.len() + 64 + 1, "{}", q.heap.len());
        for _ in 0..10_000 {
            q.reset(keep, Millis(1_000_000));
        }
        assert!(q.heap.len() <= 2 * q.len() + 64 + 1);
        assert_eq!(drain(&mut q, u64::MAX), vec![0]);
    }

    proptest! {
        /// Against a model: whatever mix of inserts, cancels, resets and pops, what fires
        /// is exactly the live entries due by then, in deadline order.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..4, 0u64..100, 0usize..16), 1..200)) {
            let mut q = DeadlineQueue::default();
            let mut model: Vec<(TimerKey, u64, u32)> = Vec::new();
            let mut keys: Vec<TimerKey> = Vec::new();
            let mut next = 0u32;
            for (op, t, pick) in ops {
                match op {
                    0 => {
                        let k = q.insert(Millis(t), next);
                        model.push((k, t, next));
                        keys.push(k);
                        next += 1;
                    }
                    1 if !keys.is_empty() => {
                        let k = keys[pick % keys.len()];
                        let expected = model.iter().position(|m| m.0 == k).map(|i| model.remove(i).2);
                        prop_assert_eq!(q.cancel(k), expected);
                    }
                    2 if !keys.is_empty() => {
                        let k = keys[pick % keys.len()];
                        let live = model.iter_mut().find(|m| m.0 == k);
                        let was_live = live.is_some();
                        if let Some(m) = live { m.1 = t; }
                        prop_assert_eq!(q.reset(k, Millis(t)), was_live);
                    }
                    _ => {
                        let mut due: Vec<_> = model.iter().filter(|m| m.1 <= t).cloned().collect();
                        due.sort_by_key(|m| m.1);
                        let fired: Vec<(u64, u32)> = std::iter::from_fn(|| q.pop_expired(Millis(t)))
                            .map(|(k, v)| (model.iter().find(|m| m.0 == k).unwrap().1, v))
                            .collect();
                        prop_assert_eq!(fired.len(), due.len());
                        prop_assert!(fired.windows(2).all(|w| w[0].0 <= w[1].0));
                        model.retain(|m| m.1 > t);
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
