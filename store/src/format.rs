//! The bytes on disk: file header, state slots, records and wrap markers.
//!
//! Pure encode/decode over byte slices; `docs/store-format.md` is the byte-by-byte
//! description and must change together with this file. All integers are little-endian.

use crate::{Record, Seq};

/// First bytes of every log file.
pub(crate) const MAGIC: [u8; 8] = *b"RCSTRLOG";
/// Format version written by this crate.
pub(crate) const VERSION: u32 = 1;
/// The header is one page, so the data region starts page-aligned.
pub(crate) const HEADER_LEN: usize = 4096;
/// Keys live in the header after the fixed fields and before the state slots.
pub(crate) const MAX_KEY_LEN: usize = 2048;
const KEY_AT: usize = 64;
const STATIC_CRC_AT: usize = 36;
/// Two state slots; a publish writes the one not holding the newest state.
pub(crate) const SLOT_AT: [usize; 2] = [3072, 3136];
const SLOT_LEN: usize = 64;
const SLOT_CRC_AT: usize = 60;
/// Every record and wrap marker starts with this many header bytes.
pub(crate) const REC_HEADER_LEN: usize = 32;
/// Records start at multiples of this.
pub(crate) const ALIGN: u64 = 8;
const KIND_RECORD: u8 = 1;
const KIND_WRAP: u8 = 2;
const FLAG_UID: u8 = 1;

/// Fields written once per epoch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FileHeader<'a> {
    pub data_len: u64,
    pub epoch: u64,
    pub key: &'a [u8],
}

/// Why a file header was rejected; becomes the new-epoch reason.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    Short(usize),
    Magic,
    Version(u32),
    HeaderLen(u32),
    KeyLen(u32),
    Checksum,
    ZeroEpoch,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Short(n) => write!(f, "file is {n} bytes, shorter than its header"),
            HeaderProblem::Magic => f.write_str("bad magic"),
            HeaderProblem::Version(v) => write!(f, "unknown format version {v}"),
            HeaderProblem::HeaderLen(n) => write!(f, "unexpected header length {n}"),
            HeaderProblem::KeyLen(n) => write!(f, "key length {n} out of range"),
            HeaderProblem::Checksum => f.write_str("header checksum mismatch"),
            HeaderProblem::ZeroEpoch => f.write_str("epoch is zero"),
        }
    }
}

/// The published state of the ring: what a reader may trust after a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotState {
    /// Higher wins; bumped by every publish.
    pub generation: u64,
    /// Data offset of the oldest kept record (0 when none).
    pub head: u64,
    /// Data offset just past the newest kept record (0 when none).
    pub tail: u64,
    /// Latest assigned seq.
    pub last_seq: u64,
    /// Seq of the oldest kept record (`last_seq + 1` when none).
    pub first_seq: u64,
    /// `ts_ms` of the newest append.
    pub last_append_ms: u64,
    /// Number of kept records.
    pub count: u32,
    /// The `max_records` in force when this state was published (informational).
    pub max_records: u32,
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes a fresh header page: file header, key, both state slots zeroed (invalid).
pub(crate) fn write_file_header(page: &mut [u8], h: &FileHeader<'_>) {
    let page = &mut page[..HEADER_LEN];
    page.fill(0);
    page[..8].copy_from_slice(&MAGIC);
    put_u32(page, 8, VERSION);
    put_u32(page, 12, HEADER_LEN as u32);
    put_u64(page, 16, h.data_len);
    put_u64(page, 24, h.epoch);
    put_u32(page, 32, h.key.len() as u32);
    page[KEY_AT..KEY_AT + h.key.len()].copy_from_slice(h.key);
    let crc = file_header_crc(page, h.key);
    put_u32(page, STATIC_CRC_AT, crc);
}

fn file_header_crc(page: &[u8], key: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&page[..STATIC_CRC_AT]);
    c.update(key);
    c.finalize()
}

/// Reads and checks the fixed header fields. Does not look at the state slots.
pub(crate) fn read_file_header(file: &[u8]) -> Result<FileHeader<'_>, HeaderProblem> {
    if file.len() < HEADER_LEN {
        return Err(HeaderProblem::Short(file.len()));
    }
    if file[..8] != MAGIC {
        return Err(HeaderProblem::Magic);
    }
    let version = u32_at(file, 8);
    if version != VERSION {
        return Err(HeaderProblem::Version(version));
    }
    let header_len = u32_at(file, 12);
    if header_len as usize != HEADER_LEN {
        return Err(HeaderProblem::HeaderLen(header_len));
    }
    let key_len = u32_at(file, 32);
    if key_len as usize > MAX_KEY_LEN {
        return Err(HeaderProblem::KeyLen(key_len));
    }
    let key = &file[KEY_AT..KEY_AT + key_len as usize];
    if file_header_crc(file, key) != u32_at(file, STATIC_CRC_AT) {
        return Err(HeaderProblem::Checksum);
    }
    let epoch = u64_at(file, 24);
    if epoch == 0 {
        return Err(HeaderProblem::ZeroEpoch);
    }
    Ok(FileHeader {
        data_len: u64_at(file, 16),
        epoch,
        key,
    })
}

fn slot_crc(epoch: u64, slot: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&epoch.to_le_bytes());
    c.update(&slot[..SLOT_CRC_AT]);
    c.finalize()
}

/// Writes `st` into the slot its generation selects (generation parity), leaving the
/// other slot, which holds the previous state, untouched.
pub(crate) fn write_slot(page: &mut [u8], epoch: u64, st: &SlotState) {
    let at = SLOT_AT[(st.generation % 2) as usize];
    let slot = &mut page[at..at + SLOT_LEN];
    slot.fill(0);
    put_u64(slot, 0, st.generation);
    put_u64(slot, 8, st.head);
    put_u64(slot, 16, st.tail);
    put_u64(slot, 24, st.last_seq);
    put_u64(slot, 32, st.first_seq);
    put_u64(slot, 40, st.last_append_ms);
    put_u32(slot, 48, st.count);
    put_u32(slot, 52, st.max_records);
    let crc = slot_crc(epoch, slot);
    put_u32(slot, SLOT_CRC_AT, crc);
}

/// The newest state slot whose checksum holds for this epoch.
pub(crate) fn read_slot(page: &[u8], epoch: u64) -> Option<SlotState> {
    SLOT_AT
        .iter()
        .filter_map(|&at| {
            let slot = &page[at..at + SLOT_LEN];
            (slot_crc(epoch, slot) == u32_at(slot, SLOT_CRC_AT)).then(|| SlotState {
                generation: u64_at(slot, 0),
                head: u64_at(slot, 8),
                tail: u64_at(slot, 16),
                last_seq: u64_at(slot, 24),
                first_seq: u64_at(slot, 32),
                last_append_ms: u64_at(slot, 40),
                count: u32_at(slot, 48),
                max_records: u32_at(slot, 52),
            })
        })
        .max_by_key(|st| st.generation)
}

/// Bytes a record occupies in the data region, padding included.
pub(crate) fn record_len(uid_len: usize, payload_len: usize) -> u64 {
    let raw = REC_HEADER_LEN as u64 + uid_len as u64 + payload_len as u64;
    raw.div_ceil(ALIGN) * ALIGN
}

fn entry_crc(epoch: u64, head: &[u8], body: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&epoch.to_le_bytes());
    c.update(&head[4..REC_HEADER_LEN]);
    c.update(body);
    c.finalize()
}

/// Encodes a record into `dst`, which is exactly `record_len(..)` bytes.
pub(crate) fn write_record(dst: &mut [u8], epoch: u64, rec: &Record<'_>) {
    let uid = rec.uid.unwrap_or_default();
    let (head, body) = dst.split_at_mut(REC_HEADER_LEN);
    head.fill(0);
    head[4] = KIND_RECORD;
    head[5] = if rec.uid.is_some() { FLAG_UID } else { 0 };
    head[6..8].copy_from_slice(&(uid.len() as u16).to_le_bytes());
    put_u32(head, 8, rec.payload.len() as u32);
    put_u64(head, 16, rec.seq.0);
    put_u64(head, 24, rec.ts_ms);
    body[..uid.len()].copy_from_slice(uid);
    body[uid.len()..uid.len() + rec.payload.len()].copy_from_slice(rec.payload);
    body[uid.len() + rec.payload.len()..].fill(0);
    let body_len = uid.len() + rec.payload.len();
    let crc = entry_crc(epoch, head, &body[..body_len]);
    put_u32(head, 0, crc);
}

/// Encodes a wrap marker: "the record with `next_seq` continues at data offset 0".
pub(crate) fn write_wrap(dst: &mut [u8], epoch: u64, next_seq: u64) {
    let head = &mut dst[..REC_HEADER_LEN];
    head.fill(0);
    head[4] = KIND_WRAP;
    put_u64(head, 16, next_seq);
    let crc = entry_crc(epoch, head, &[]);
    put_u32(head, 0, crc);
}

/// What sits at a data offset, once its checksum has been verified.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    Record { rec: Record<'a>, len: u64 },
    Wrap { next_seq: u64 },
}

/// Why the bytes at an offset are not a valid entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryProblem {
    OutOfBounds,
    Kind,
    Checksum,
}

impl EntryProblem {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            EntryProblem::OutOfBounds => "extends past the data region",
            EntryProblem::Kind => "unknown entry kind",
            EntryProblem::Checksum => "checksum mismatch",
        }
    }
}

/// Decodes and verifies the entry at `at` in the data region.
pub(crate) fn read_entry(data: &[u8], at: u64, epoch: u64) -> Result<Entry<'_>, EntryProblem> {
    let at = usize::try_from(at).map_err(|_| EntryProblem::OutOfBounds)?;
    let head = data
        .get(at..at.saturating_add(REC_HEADER_LEN))
        .ok_or(EntryProblem::OutOfBounds)?;
    let crc = u32_at(head, 0);
    match head[4] {
        KIND_WRAP => {
            if entry_crc(epoch, head, &[]) != crc {
                return Err(EntryProblem::Checksum);
            }
            Ok(Entry::Wrap {
                next_seq: u64_at(head, 16),
            })
        }
        KIND_RECORD => {
            let (uid_len, payload_len) = lens(head);
            let len = record_len(uid_len, payload_len);
            let body_at = at + REC_HEADER_LEN;
            let body = data
                .get(body_at..body_at + uid_len + payload_len)
                .filter(|_| (at as u64).saturating_add(len) <= data.len() as u64)
                .ok_or(EntryProblem::OutOfBounds)?;
            if entry_crc(epoch, head, body) != crc {
                return Err(EntryProblem::Checksum);
            }
            Ok(Entry::Record {
                rec: record_parts(head, body, uid_len),
                len,
            })
        }
        _ => Err(EntryProblem::Kind),
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
        data_span: (0, (body.len() - uid_len) as u32),
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

#[cfg(test)]
mod tests;
