//! A hash map in [`PARTS`] parts that grow one at a time.
//!
//! A single hash table doubles all at once: at half a million channels on a shard, one
//! insert moves every entry into a freshly allocated array of a hundred megabytes, and
//! the shard (with every connection on it) waits while the new pages are faulted in and
//! the entries rehashed — measured at 0.4 s in the million-channel run. Split into 64
//! parts chosen by the key's hash, a growth moves one part: 1/64 of the entries into an
//! array 1/64 the size, and the freed arrays are small enough for the allocator to reuse
//! at once instead of holding them resident. Lookups hash the key once; the part is taken
//! from hash bits that the table itself does not use (above the bucket index, below the
//! control tag), so entries within a part still spread over all buckets and tags.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, Equivalent, HashTable};

/// Number of parts.
pub const PARTS: usize = 64;
/// The part is `(hash >> PART_SHIFT) % PARTS`: bits 40–45, clear of the bucket index
/// (the low bits, up to 2^40 buckets) and of the 7-bit control tag (the top bits).
const PART_SHIFT: u32 = 40;

/// A hash map from `K` to `V` whose growth never moves more than one part.
pub struct SplitMap<K, V> {
    parts: Box<[HashTable<(K, V)>; PARTS]>,
    hasher: DefaultHashBuilder,
    len: usize,
}

impl<K, V> std::fmt::Debug for SplitMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitMap").field("len", &self.len).finish()
    }
}

impl<K: Hash + Eq, V> Default for SplitMap<K, V> {
    fn default() -> Self {
        SplitMap {
            parts: Box::new(std::array::from_fn(|_| HashTable::new())),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> SplitMap<K, V> {
    /// An empty map (no part allocates until it gets an entry).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn part_of(hash: u64) -> usize {
        (hash >> PART_SHIFT) as usize % PARTS
    }

    /// The value under `key`.
    pub fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<&V> {
        let hash = self.hash(key);
        self.parts[Self::part_of(hash)]
            .find(hash, |(k, _)| key.equivalent(k))
            .map(|(_, v)| v)
    }

    /// The value under `key`, to change.
    pub fn get_mut<Q: Hash + Equivalent<K> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        let hash = self.hash(key);
        self.parts[Self::part_of(hash)]
            .find_mut(hash, |(k, _)| key.equivalent(k))
            .map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> bool {
        self.get(key).is_some()
    }

    /// Puts `value` under `key`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(&key);
        let part = &mut self.parts[Self::part_of(hash)];
        match part.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                e.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// The value under `key`, made with `make` (and `key` cloned in) if there is none.
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V
    where
        K: Clone,
    {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(key);
        let part = &mut self.parts[Self::part_of(hash)];
        match part.entry(hash, |(k, _)| k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(e) => &mut e.into_mut().1,
            Entry::Vacant(e) => {
                self.len += 1;
                &mut e.insert((key.clone(), make())).into_mut().1
            }
        }
    }

    /// Takes the value under `key` out.
    pub fn remove<Q: Hash + Equivalent<K> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        let hash = self.hash(key);
        let part = &mut self.parts[Self::part_of(hash)];
        let ((_, v), _) = part
            .find_entry(hash, |(k, _)| key.equivalent(k))
            .ok()?
            .remove();
        self.len -= 1;
        Some(v)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts
            .iter()
            .flat_map(|p| p.iter().map(|(k, v)| (k, v)))
    }

    /// Visits whole parts from `*next` on, until at least `budget` entries were seen or
    /// every part was, leaving `*next` at the part to start from next time: a sweep of a
    /// big map spread over many calls (each call about `budget` entries; a map of up to
    /// `budget` entries is visited whole every call). Returns how many entries it saw.
    pub fn for_each_in_turn(
        &self,
        next: &mut usize,
        budget: usize,
        mut f: impl FnMut(&K, &V),
    ) -> usize {
        in_turn(next, budget, |part| {
            let p = &self.parts[part];
            p.iter().for_each(|(k, v)| f(k, v));
            p.len()
        })
    }

    /// [`SplitMap::for_each_in_turn`], keeping the entries for which `keep` is true.
    pub fn retain_in_turn(
        &mut self,
        next: &mut usize,
        budget: usize,
        mut keep: impl FnMut(&K, &mut V) -> bool,
    ) -> usize {
        let (parts, len) = (&mut self.parts, &mut self.len);
        in_turn(next, budget, |part| {
            let p = &mut parts[part];
            let before = p.len();
            p.retain(|(k, v)| keep(k, v));
            *len -= before - p.len();
            before
        })
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// The most entries each part holds without growing.
    #[cfg(test)]
    fn part_capacities(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(HashTable::capacity)
    }
}

/// The turn of [`SplitMap::for_each_in_turn`]: `visit` each part from `*next` on (it
/// returns the entries it saw there) until `budget` entries or every part.
fn in_turn(next: &mut usize, budget: usize, mut visit: impl FnMut(usize) -> usize) -> usize {
    let mut seen = 0;
    for _ in 0..PARTS {
        if seen >= budget {
            break;
        }
        let part = *next % PARTS;
        *next = (part + 1) % PARTS;
        seen += visit(part);
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Any sequence of inserts, removes and retains leaves the same entries as a
        /// `std` map given the same operations.
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec((0u8..5, 0u16..300, any::<u32>()), 0..600)) {
            let mut split: SplitMap<Box<[u8]>, u32> = SplitMap::new();
            let mut model: HashMap<Box<[u8]>, u32> = HashMap::new();
            for (op, k, v) in ops {
                let key: Box<[u8]> = format!("key-{k}").into_bytes().into();
                match op {
                    0 => prop_assert_eq!(split.insert(key.clone(), v), model.insert(key, v)),
                    1 => prop_assert_eq!(split.remove(&key[..]), model.remove(&key[..])),
                    2 => {
                        let got = *split.get_or_insert_with(&key, || v);
                        prop_assert_eq!(got, *model.entry(key).or_insert(v));
                    }
                    3 => {
                        split.retain_in_turn(&mut 0, usize::MAX, |_, x| *x % 3 != 0);
                        model.retain(|_, x| *x % 3 != 0);
                    }
                    _ => {
                        // A few parts at a time: after a whole turn, the same entries go.
                        // Bounded: each call moves on at least one part, PARTS calls
                        // at most for a whole turn.
                        let mut next = usize::from(k) % PARTS;
                        let mut moved = 0;
                        while moved < PARTS {
                            let from = next;
                            split.retain_in_turn(&mut next, 5, |_, x| *x % 5 != 0);
                            moved += match (next + PARTS - from) % PARTS {
                                0 => PARTS,
                                n => n,
                            };
                        }
                        model.retain(|_, x| *x % 5 != 0);
                    }
                }
                prop_assert_eq!(split.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(split.get(&k[..]), Some(v));
            }
            let mut next = 0;
            let mut seen = 0;
            prop_assert_eq!(split.for_each_in_turn(&mut next, usize::MAX, |_, _| seen += 1), split.len());
            prop_assert_eq!((seen, next), (split.len(), 0), "an unbounded turn sees everything once");
            let mut keys: Vec<_> = split.keys().cloned().collect();
            keys.sort();
            let mut want: Vec<_> = model.keys().cloned().collect();
            want.sort();
            prop_assert_eq!(keys, want);
        }
    }

    #[test]
    fn turns_visit_about_their_budget_and_go_round_every_entry_evenly() {
        let mut map: SplitMap<u64, u64> = SplitMap::new();
        for i in 0..64_000u64 {
            map.insert(i, 0);
        }
        let mut visits = std::collections::HashMap::new();
        let mut next = 0;
        for _ in 0..50 {
            let seen = map.for_each_in_turn(&mut next, 10_000, |k, _| {
                *visits.entry(*k).or_insert(0u32) += 1;
            });
            assert!(
                (10_000..10_000 + 64_000 / 16).contains(&seen),
                "about the budget, in whole parts: {seen}"
            );
        }
        let (min, max) = (visits.values().min(), visits.values().max());
        assert_eq!(visits.len(), 64_000, "every entry was reached");
        assert!(
            max.unwrap() - min.unwrap() <= 1,
            "round the parts in turn: {min:?}..{max:?}"
        );

        let mut small: SplitMap<u64, u64> = SplitMap::new();
        for i in 0..100u64 {
            small.insert(i, i);
        }
        let mut next = 7;
        assert_eq!(
            small.for_each_in_turn(&mut next, 10_000, |_, _| {}),
            100,
            "a map under the budget is visited whole"
        );
        assert_eq!(next, 7, "and the turn ends where it began");

        let before = map.len();
        let seen = map.retain_in_turn(&mut next, 10_000, |k, _| k % 2 == 0);
        let removed = before - map.len();
        assert!(
            removed > 0 && removed < seen,
            "only the parts visited lost (odd) entries: {removed} of {seen} seen"
        );
        map.retain_in_turn(&mut next, usize::MAX, |k, _| k % 2 == 0);
        assert_eq!(map.len(), 32_000, "a whole turn leaves the even keys");
        assert!(map.keys().all(|k| k % 2 == 0));
    }

    #[test]
    fn entries_spread_over_every_part() {
        let mut map: SplitMap<u64, ()> = SplitMap::new();
        for i in 0..64_000u64 {
            map.insert(i, ());
        }
        let caps: Vec<usize> = map.part_capacities().collect();
        let (min, max) = (caps.iter().min().unwrap(), caps.iter().max().unwrap());
        assert!(*min > 0 && *max <= 4 * *min, "part capacities {caps:?}");
        assert!(*max < 64_000 / 8, "no part holds a large share: {max}");
    }
}
