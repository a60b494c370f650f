//! Recovery of one slot's ring at open: trust the published state only as far as the
//! records verify, adopt the one append that may have been in flight, drop a torn tail.
//!
//! Pure over the slot's bytes (no mapping, no store), so it can be fuzzed and
//! property-tested on its own. Same rules as format version 1 (`docs/store-format.md`,
//! "Recovery on open").

use crate::ring::Ring;
use crate::slot_format::{self, Entry, State, ALIGN, WRAP_LEN};

/// A ring rebuilt from its slot.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub ring: Ring,
    pub generation: u32,
    pub last_append_ms: u64,
    pub max_records: u32,
    /// Published records dropped because they failed to verify.
    pub torn: u32,
    /// Something changed, so the caller must publish the state again.
    pub dirty: bool,
}

/// Rebuilds the ring whose data region is `data` from its published state `st`.
pub(crate) fn recover(data: &[u8], epoch: u64, st: &State) -> Result<Recovered, &'static str> {
    let data_len = data.len() as u64;
    sane(st, data_len)?;
    let mut ring = Ring::empty_at(data_len, st.first_seq - 1);
    let mut pos = u64::from(st.head);
    for _ in 0..st.count {
        let seq = ring.last_seq() + 1;
        match next_record(data, pos, seq, epoch) {
            Some((at, len, _)) => {
                ring.push(at, len);
                pos = at + len;
            }
            None => break,
        }
    }
    let torn = st.count - ring.len() as u32;
    // Seqs the state published stay consumed even if their records were lost.
    ring.raise_last_seq(st.last_seq);
    let mut rec = Recovered {
        ring,
        generation: st.generation,
        last_append_ms: st.last_append_ms,
        max_records: st.max_records,
        torn,
        dirty: torn > 0,
    };
    if torn == 0 {
        rec.dirty |= adopt_unpublished(&mut rec, data, epoch);
    }
    let excess = rec.ring.len().saturating_sub(rec.max_records as usize);
    if excess > 0 {
        rec.ring.evict(excess);
        rec.dirty = true;
    }
    Ok(rec)
}

/// Keeps the record of an append that was written but not yet published when the
/// process died, if it is complete and lies in free space.
fn adopt_unpublished(rec: &mut Recovered, data: &[u8], epoch: u64) -> bool {
    let ring = &mut rec.ring;
    if ring.newest_kept_seq().is_some_and(|s| s != ring.last_seq()) {
        return false;
    }
    let seq = ring.last_seq() + 1;
    let pos = if ring.len() == 0 { 0 } else { ring.tail() };
    match next_record(data, pos, seq, epoch) {
        Some((at, len, ts_ms)) if ring.is_free(at, len) && ring.len() < u32::MAX as usize => {
            ring.push(at, len);
            rec.last_append_ms = ts_ms;
            true
        }
        _ => false,
    }
}

/// Finds the record with `seq` that continues the chain at `pos`, following a wrap marker
/// or an implicit wrap (too little room left for a marker). Returns (offset, len, ts_ms).
pub(crate) fn next_record(data: &[u8], pos: u64, seq: u64, epoch: u64) -> Option<(u64, u64, u64)> {
    let record_at = |at: u64| match slot_format::read_entry(data, at, epoch) {
        Ok(Entry::Record { rec, len }) if rec.seq.0 == seq => Some((at, len, rec.ts_ms)),
        _ => None,
    };
    if pos + WRAP_LEN as u64 > data.len() as u64 {
        return record_at(0);
    }
    match slot_format::read_entry(data, pos, epoch) {
        Ok(Entry::Record { rec, len }) if rec.seq.0 == seq => Some((pos, len, rec.ts_ms)),
        Ok(Entry::Wrap { next_seq }) if next_seq == seq && pos != 0 => record_at(0),
        _ => None,
    }
}

/// Checks a state's fields against the data region before trusting them.
fn sane(st: &State, data_len: u64) -> Result<(), &'static str> {
    if u64::from(st.head | st.tail) & (ALIGN - 1) != 0 {
        return Err("unaligned offset");
    }
    if u64::from(st.head) >= data_len.max(1) || u64::from(st.tail) > data_len {
        return Err("offset past the data region");
    }
    if st.last_seq >= u64::MAX / 2 {
        return Err("last_seq out of range");
    }
    if st.first_seq == 0 || st.first_seq - 1 > st.last_seq {
        return Err("first_seq past last_seq");
    }
    if u64::from(st.count) > st.last_seq - (st.first_seq - 1) {
        return Err("more records than seqs");
    }
    if u64::from(st.count) > data_len / WRAP_LEN as u64 {
        return Err("more records than fit");
    }
    if st.max_records == 0 {
        return Err("max_records is zero");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
