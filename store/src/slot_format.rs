//! The bytes of format version 2: segment header, slot header, state slots, records.
//!
//! Pure encode/decode over byte slices; `docs/store-format.md` ("Format version 2") is the
//! byte-by-byte description and must change together with this file. All integers are
//! little-endian.

use std::ops::Range;

use crate::format::{put_u32, put_u64, u32_at, u64_at};
use crate::{Record, Seq};

/// First bytes of every segment file.
pub(crate) const SEG_MAGIC: [u8; 8] = *b"RCSTSEG2";
/// Format version of segment files.
pub(crate) const SEG_VERSION: u32 = 2;
/// The segment header is one page, so slots start page-aligned.
pub(crate) const SEG_HEADER_LEN: usize = 4096;
const SEG_CRC_AT: usize = 28;
const SEG_HW_AT: usize = 32;
const SEG_HW_CRC_AT: usize = 36;

/// Smallest and largest slot size classes (log2 of the slot size in bytes).
pub(crate) const MIN_CLASS_LOG2: u8 = 9;
pub(crate) const MAX_CLASS_LOG2: u8 = 31;

/// First bytes of a slot in use.
pub(crate) const SLOT_MAGIC: [u8; 4] = *b"RCR2";
/// Fixed part of a slot header, before the key.
pub(crate) const SLOT_HEADER_LEN: usize = 128;
/// Longest key a slot holds.
pub(crate) const MAX_KEY_LEN: usize = 512;
const SLOT_CRC_AT: usize = 24;
const STATE_AT: [usize; 2] = [32, 80];
const STATE_LEN: usize = 48;
const STATE_CRC_AT: usize = 20;

/// A wrap marker is this long; it is also the "too little room left" threshold.
pub(crate) const WRAP_LEN: usize = 32;
/// Every record starts with this many header bytes.
pub(crate) const REC_HEADER_LEN: usize = 40;
/// Records start at multiples of this.
pub(crate) const ALIGN: u64 = 8;
const KIND_RECORD: u8 = 1;
const KIND_WRAP: u8 = 2;
const FLAG_UID: u8 = 1;

/// Fixed fields of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub class_log2: u8,
    pub slot_count: u32,
    pub number: u32,
}

impl SegmentHeader {
    pub(crate) fn class_size(&self) -> usize {
        1usize << self.class_log2
    }

    /// Length of the whole file.
    pub(crate) fn file_len(&self) -> u64 {
        SEG_HEADER_LEN as u64 + u64::from(self.slot_count) * (1u64 << self.class_log2)
    }

    /// File offset of slot `i`.
    pub(crate) fn slot_at(&self, i: u32) -> usize {
        SEG_HEADER_LEN + i as usize * self.class_size()
    }

    /// Whether a slot spans a page or more (the header is one page). Such a slot is holes
    /// of the sparse file past its first page until its ring's data reaches them, used or
    /// not; smaller slots put a written header on every page below the high-water slot.
    pub(crate) fn page_sized_slots(&self) -> bool {
        self.class_size() >= SEG_HEADER_LEN
    }
}

/// Writes the segment header (high-water mark 0) into the first page.
pub(crate) fn write_segment_header(page: &mut [u8], h: &SegmentHeader) {
    let page = &mut page[..SEG_HEADER_LEN];
    page.fill(0);
    page[..8].copy_from_slice(&SEG_MAGIC);
    put_u32(page, 8, SEG_VERSION);
    put_u32(page, 12, SEG_HEADER_LEN as u32);
    put_u32(page, 16, u32::from(h.class_log2));
    put_u32(page, 20, h.slot_count);
    put_u32(page, 24, h.number);
    let crc = crc32fast::hash(&page[..SEG_CRC_AT]);
    put_u32(page, SEG_CRC_AT, crc);
    write_high_water(page, 0);
}

/// The format version a segment of a newer format than this one says it is (our magic,
/// a greater version), if `file` is one.
pub(crate) fn newer_version(file: &[u8]) -> Option<u32> {
    (file.len() >= 12 && file[..8] == SEG_MAGIC)
        .then(|| u32_at(file, 8))
        .filter(|v| *v > SEG_VERSION)
}

/// Reads and checks a segment header against the file's length.
pub(crate) fn read_segment_header(file: &[u8]) -> Result<SegmentHeader, &'static str> {
    if file.len() < SEG_HEADER_LEN {
        return Err("shorter than its header");
    }
    if file[..8] != SEG_MAGIC {
        return Err("bad magic");
    }
    if u32_at(file, 8) != SEG_VERSION || u32_at(file, 12) as usize != SEG_HEADER_LEN {
        return Err("unknown version or header length");
    }
    if crc32fast::hash(&file[..SEG_CRC_AT]) != u32_at(file, SEG_CRC_AT) {
        return Err("header checksum mismatch");
    }
    let log2 = u32_at(file, 16);
    if !(u32::from(MIN_CLASS_LOG2)..=u32::from(MAX_CLASS_LOG2)).contains(&log2) {
        return Err("slot class out of range");
    }
    let h = SegmentHeader {
        class_log2: log2 as u8,
        slot_count: u32_at(file, 20),
        number: u32_at(file, 24),
    };
    if h.slot_count == 0 || h.file_len() != file.len() as u64 {
        return Err("file length does not match slot count and class");
    }
    Ok(h)
}

fn high_water_crc(page: &[u8], hw: u32) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&page[..SEG_CRC_AT]);
    c.update(&hw.to_le_bytes());
    c.finalize()
}

/// Records that slots `0..hw` may have been used. Slots at or past it are known unused,
/// so `open` never reads (and faults in) the untouched tail of a sparse segment.
pub(crate) fn write_high_water(page: &mut [u8], hw: u32) {
    put_u32(page, SEG_HW_AT, hw);
    let crc = high_water_crc(page, hw);
    put_u32(page, SEG_HW_CRC_AT, crc);
}

/// The high-water mark, or `None` if it fails its checksum (then scan every slot).
pub(crate) fn read_high_water(page: &[u8]) -> Option<u32> {
    let hw = u32_at(page, SEG_HW_AT);
    (high_water_crc(page, hw) == u32_at(page, SEG_HW_CRC_AT)).then_some(hw)
}

/// Byte range of the high-water field, for dirty tracking.
pub(crate) const HIGH_WATER_RANGE: Range<usize> = SEG_HW_AT..SEG_HW_CRC_AT + 4;

/// Data region offset inside a slot for a key of `key_len` bytes.
pub(crate) fn data_offset(key_len: usize) -> usize {
    (SLOT_HEADER_LEN + key_len).div_ceil(ALIGN as usize) * ALIGN as usize
}

/// Fixed fields of a slot in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotHeader<'a> {
    pub class_log2: u8,
    pub epoch: u64,
    /// Bumped each time the ring moves to a bigger slot; the higher copy wins.
    pub moves: u32,
    pub data_len: u32,
    pub key: &'a [u8],
}

fn slot_header_crc(slot: &[u8], key: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&slot[..SLOT_CRC_AT]);
    c.update(key);
    c.finalize()
}

/// Writes the fixed header fields and the key. Writes neither state slot, so the caller
/// decides the order (state first, then this, so a valid header implies a valid state).
pub(crate) fn write_slot_header(slot: &mut [u8], h: &SlotHeader<'_>) {
    slot[..STATE_AT[0]].fill(0);
    slot[..4].copy_from_slice(&SLOT_MAGIC);
    slot[4..6].copy_from_slice(&(h.key.len() as u16).to_le_bytes());
    slot[6] = h.class_log2;
    put_u64(slot, 8, h.epoch);
    put_u32(slot, 16, h.moves);
    put_u32(slot, 20, h.data_len);
    slot[SLOT_HEADER_LEN..SLOT_HEADER_LEN + h.key.len()].copy_from_slice(h.key);
    let crc = slot_header_crc(slot, h.key);
    put_u32(slot, SLOT_CRC_AT, crc);
}

/// Writes only the key (done before the rest, so the header crc covers final bytes).
pub(crate) fn write_key(slot: &mut [u8], key: &[u8]) {
    slot[SLOT_HEADER_LEN..SLOT_HEADER_LEN + key.len()].copy_from_slice(key);
}

/// Marks a slot free: its magic and checksum are zeroed, so it never verifies again.
pub(crate) fn free_slot(slot: &mut [u8]) {
    slot[..SLOT_CRC_AT + 4].fill(0);
}

/// Bytes `free_slot` writes, for dirty tracking.
pub(crate) const FREE_LEN: usize = SLOT_CRC_AT + 4;

/// Reads and checks a slot header; `None` means the slot is free (or unreadable).
pub(crate) fn read_slot_header(slot: &[u8], class_log2: u8) -> Option<SlotHeader<'_>> {
    if slot.len() < SLOT_HEADER_LEN || slot[..4] != SLOT_MAGIC || slot[6] != class_log2 {
        return None;
    }
    let key_len = usize::from(u16::from_le_bytes([slot[4], slot[5]]));
    if key_len > MAX_KEY_LEN || data_offset(key_len) + WRAP_LEN * 2 > slot.len() {
        return None;
    }
    let key = &slot[SLOT_HEADER_LEN..SLOT_HEADER_LEN + key_len];
    if slot_header_crc(slot, key) != u32_at(slot, SLOT_CRC_AT) {
        return None;
    }
    let h = SlotHeader {
        class_log2,
        epoch: u64_at(slot, 8),
        moves: u32_at(slot, 16),
        data_len: u32_at(slot, 20),
        key,
    };
    let room = slot.len() - data_offset(key_len);
    let ok = h.epoch != 0
        && h.data_len as usize <= room
        && h.data_len as usize >= WRAP_LEN * 2
        && u64::from(h.data_len) % ALIGN == 0;
    ok.then_some(h)
}

/// The key of a slot this process verified or wrote.
pub(crate) fn key_of(slot: &[u8]) -> &[u8] {
    let key_len = usize::from(u16::from_le_bytes([slot[4], slot[5]]));
    &slot[SLOT_HEADER_LEN..SLOT_HEADER_LEN + key_len]
}

/// The published state of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Higher (in wrapping order) wins; bumped by every publish.
    pub generation: u32,
    pub head: u32,
    pub tail: u32,
    pub count: u32,
    pub max_records: u32,
    pub last_seq: u64,
    /// Seq of the oldest kept record (`last_seq + 1` when none).
    pub first_seq: u64,
    pub last_append_ms: u64,
}

fn state_crc(epoch: u64, s: &[u8]) -> u32 {
    crc_of(&[
        &epoch.to_le_bytes(),
        &s[..STATE_CRC_AT],
        &s[STATE_CRC_AT + 4..STATE_LEN],
    ])
}

/// Inputs up to this many bytes are gathered before their checksum is taken.
const GATHER_UP_TO: usize = 256;

/// CRC-32 of `parts`, in order (the same value as feeding them to one hasher). Short
/// inputs are first copied into one stack buffer: crc32fast pays a fixed cost per call,
/// which for a 50–150-byte state or record is a third of the checksum's time.
fn crc_of(parts: &[&[u8]]) -> u32 {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > GATHER_UP_TO {
        let mut c = crc32fast::Hasher::new();
        for part in parts {
            c.update(part);
        }
        return c.finalize();
    }
    let mut gathered = [0u8; GATHER_UP_TO];
    let mut at = 0;
    for part in parts {
        gathered[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    crc32fast::hash(&gathered[..at])
}

/// Byte range of the state slot that `generation` selects, within the slot.
pub(crate) fn state_range(generation: u32) -> Range<usize> {
    let at = STATE_AT[(generation % 2) as usize];
    at..at + STATE_LEN
}

/// Writes `st` into the state slot its generation selects, leaving the other intact.
pub(crate) fn write_state(slot: &mut [u8], epoch: u64, st: &State) {
    let s = &mut slot[state_range(st.generation)];
    put_u32(s, 0, st.generation);
    put_u32(s, 4, st.head);
    put_u32(s, 8, st.tail);
    put_u32(s, 12, st.count);
    put_u32(s, 16, st.max_records);
    put_u64(s, 24, st.last_seq);
    put_u64(s, 32, st.first_seq);
    put_u64(s, 40, st.last_append_ms);
    let crc = state_crc(epoch, s);
    put_u32(s, STATE_CRC_AT, crc);
}

/// Zeroes the state slot that `generation` selects (used when a slot is (re)initialised,
/// so a state left by an earlier occupant can never be read).
pub(crate) fn clear_state(slot: &mut [u8], generation: u32) {
    slot[state_range(generation)].fill(0);
}

/// The newer of the two state slots whose checksum holds for this epoch.
pub(crate) fn read_state(slot: &[u8], epoch: u64) -> Option<State> {
    let read = |at: usize| {
        let s = &slot[at..at + STATE_LEN];
        (state_crc(epoch, s) == u32_at(s, STATE_CRC_AT)).then(|| State {
            generation: u32_at(s, 0),
            head: u32_at(s, 4),
            tail: u32_at(s, 8),
            count: u32_at(s, 12),
            max_records: u32_at(s, 16),
            last_seq: u64_at(s, 24),
            first_seq: u64_at(s, 32),
            last_append_ms: u64_at(s, 40),
        })
    };
    match (read(STATE_AT[0]), read(STATE_AT[1])) {
        (Some(a), Some(b)) => Some(if newer(b.generation, a.generation) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// Serial-number order: `a` is newer than `b` (generations wrap at 2^32).
pub(crate) fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Bytes a record occupies in the data region, padding included.
pub(crate) fn record_len(uid_len: usize, payload_len: usize) -> u64 {
    let raw = REC_HEADER_LEN as u64 + uid_len as u64 + payload_len as u64;
    raw.div_ceil(ALIGN) * ALIGN
}

fn entry_crc(epoch: u64, head: &[u8], body: &[u8]) -> u32 {
    crc_of(&[&epoch.to_le_bytes(), &head[4..], body])
}

/// What a record holds, as `append` receives it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewRecord<'a> {
    pub seq: u64,
    pub ts_ms: u64,
    pub uid: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// Span of the message's `data` inside `payload`.
    pub data: (u32, u32),
}

/// Encodes a record into `dst`, which is exactly `record_len(..)` bytes.
pub(crate) fn write_record(dst: &mut [u8], epoch: u64, rec: &NewRecord<'_>) {
    let uid = rec.uid.unwrap_or_default();
    let (head, body) = dst.split_at_mut(REC_HEADER_LEN);
    head.fill(0);
    head[4] = KIND_RECORD;
    head[5] = if rec.uid.is_some() { FLAG_UID } else { 0 };
    head[6..8].copy_from_slice(&(uid.len() as u16).to_le_bytes());
    put_u32(head, 8, rec.payload.len() as u32);
    put_u32(head, 12, rec.data.0);
    put_u64(head, 16, rec.seq);
    put_u64(head, 24, rec.ts_ms);
    put_u32(head, 32, rec.data.1);
    let body_len = uid.len() + rec.payload.len();
    body[..uid.len()].copy_from_slice(uid);
    body[uid.len()..body_len].copy_from_slice(rec.payload);
    body[body_len..].fill(0);
    let crc = entry_crc(epoch, head, &body[..body_len]);
    put_u32(head, 0, crc);
}

/// Wrap markers are the same 32 bytes as in version 1 (kind, next seq, checksum over the
/// epoch and the header).
pub(crate) use crate::format::write_wrap;
const _: () = assert!(WRAP_LEN == crate::format::REC_HEADER_LEN);

/// What sits at a data offset, once its checksum has been verified.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    Record { rec: Record<'a>, len: u64 },
    Wrap { next_seq: u64 },
}

/// Decodes and verifies the entry at `at` in the data region.
pub(crate) fn read_entry(data: &[u8], at: u64, epoch: u64) -> Result<Entry<'_>, &'static str> {
    const OOB: &str = "extends past the data region";
    let at = usize::try_from(at).map_err(|_| OOB)?;
    let head = data.get(at..at.saturating_add(WRAP_LEN)).ok_or(OOB)?;
    let crc = u32_at(head, 0);
    match head[4] {
        KIND_WRAP => {
            if entry_crc(epoch, head, &[]) != crc {
                return Err("checksum mismatch");
            }
            Ok(Entry::Wrap {
                next_seq: u64_at(head, 16),
            })
        }
        KIND_RECORD => {
            let head = data.get(at..at + REC_HEADER_LEN).ok_or(OOB)?;
            let (uid_len, payload_len) = lens(head);
            let len = record_len(uid_len, payload_len);
            let body_at = at + REC_HEADER_LEN;
            let body = data
                .get(body_at..body_at + uid_len + payload_len)
                .filter(|_| (at as u64).saturating_add(len) <= data.len() as u64)
                .ok_or(OOB)?;
            if entry_crc(epoch, head, body) != crc {
                return Err("checksum mismatch");
            }
            let (ds, dl) = (u32_at(head, 12) as usize, u32_at(head, 32) as usize);
            if ds.checked_add(dl).is_none_or(|end| end > payload_len) {
                return Err("data span outside the payload");
            }
            Ok(Entry::Record {
                rec: record_parts(head, body, uid_len),
                len,
            })
        }
        _ => Err("unknown entry kind"),
    }
}

fn lens(head: &[u8]) -> (usize, usize) {
    let uid_len = u16::from_le_bytes([head[6], head[7]]) as usize;
    (uid_len, u32_at(head, 8) as usize)
}

fn record_parts<'a>(head: &[u8], body: &'a [u8], uid_len: usize) -> Record<'a> {
    Record {
        seq: Seq(u64_at(head, 16)),
        ts_ms: u64_at(head, 24),
        uid: (head[5] & FLAG_UID != 0).then(|| &body[..uid_len]),
        payload: &body[uid_len..],
        data_span: (u32_at(head, 12), u32_at(head, 32)),
    }
}

/// Reads a record this process wrote or already verified, without re-checking its crc.
pub(crate) fn read_record_trusted(data: &[u8], at: u64) -> Record<'_> {
    let at = at as usize;
    let head = &data[at..at + REC_HEADER_LEN];
    let (uid_len, payload_len) = lens(head);
    let body = &data[at + REC_HEADER_LEN..at + REC_HEADER_LEN + uid_len + payload_len];
    record_parts(head, body, uid_len)
}

/// Length (padding included) of a record this process wrote or verified.
pub(crate) fn record_len_at(data: &[u8], at: u64) -> u64 {
    let at = at as usize;
    let (uid_len, payload_len) = lens(&data[at..at + REC_HEADER_LEN]);
    record_len(uid_len, payload_len)
}

#[cfg(test)]
mod tests;
