use super::*;

/// The `VmFlags` of the mapping of this process that contains `addr` (`/proc/self/smaps`).
pub(crate) fn vm_flags_at(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = (start..end).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
    }
    panic!("no mapping contains {addr:#x}");
}

/// `rr` in `VmFlags`: the kernel reads no ahead on faults there.
pub(crate) fn reads_ahead(addr: usize) -> bool {
    !vm_flags_at(addr).iter().any(|f| f == "rr")
}

const PAGE: usize = 4096;

#[test]
fn a_created_segment_is_mapped_without_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let map = SegmentMap::create(&dir.path().join("s.seg"), 64 * PAGE as u64).unwrap();
    let base = map.bytes().as_ptr() as usize;
    assert!(!reads_ahead(base));
    assert!(!reads_ahead(base + 63 * PAGE));
}

#[test]
fn no_read_ahead_from_covers_the_tail_from_its_page_and_leaves_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.seg");
    drop(SegmentMap::create(&path, 64 * PAGE as u64).unwrap());
    let map = SegmentMap::open_existing(&path).unwrap();
    let base = map.bytes().as_ptr() as usize;
    assert!(reads_ahead(base), "a plain mapping reads ahead");
    // An offset inside page 10 turns it off from page 10 (the page holding the first
    // unused slot may hold used ones too; it only loses read-ahead).
    map.no_read_ahead_from(10 * PAGE + 100);
    assert!(reads_ahead(base));
    assert!(reads_ahead(base + 9 * PAGE));
    assert!(!reads_ahead(base + 10 * PAGE));
    assert!(!reads_ahead(base + 63 * PAGE));
    // The end of the mapping is a valid (empty) tail.
    map.no_read_ahead_from(map.len());
    assert!(reads_ahead(base));
}

/// Whether the page holding `addr` is present in this process's page tables (bit 63 of
/// its `/proc/self/pagemap` entry): a write to it takes no fault.
pub(crate) fn page_present(addr: usize) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    pagemap
        .seek(SeekFrom::Start((addr / PAGE * 8) as u64))
        .unwrap();
    let mut entry = [0u8; 8];
    pagemap.read_exact(&mut entry).unwrap();
    u64::from_le_bytes(entry) >> 63 == 1
}

#[test]
fn populate_for_write_faults_in_whole_pages_and_keeps_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut map = SegmentMap::create(&dir.path().join("s.seg"), 64 * PAGE as u64).unwrap();
    map.bytes_mut()[12 * PAGE] = 7;
    let base = map.bytes().as_ptr() as usize;
    assert!(!page_present(base + 20 * PAGE), "a hole is not in memory");
    // From inside page 10 to inside page 14: pages 10..=14.
    map.flush_handle()
        .populate_for_write(10 * PAGE + 100, 4 * PAGE);
    for page in 10..=14 {
        assert!(page_present(base + page * PAGE), "page {page}");
    }
    assert!(!page_present(base + 9 * PAGE));
    assert!(!page_present(base + 15 * PAGE));
    assert!(map.bytes()[10 * PAGE..15 * PAGE]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == if i == 2 * PAGE { 7 } else { 0 }));
    // Past the end: clamped, nothing to do.
    map.flush_handle().populate_for_write(64 * PAGE, PAGE);
}
