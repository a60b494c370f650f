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
