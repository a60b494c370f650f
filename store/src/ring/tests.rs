use proptest::prelude::*;

use super::*;

/// Applies one append of `len` bytes as `RingLog::append` does and checks that the
/// placement only touches free bytes.
fn apply(ring: &mut Ring, len: u64, max_records: u32) -> Plan {
    let plan = ring.plan(len, max_records);
    match plan {
        Plan::TooLarge => {
            assert!(len > ring.data_len);
            ring.skip_seq();
        }
        Plan::Store { evict, at, wrap_at } => {
            let old_tail = ring.tail;
            ring.evict(evict);
            assert!(
                ring.is_free(at, len),
                "record [{at}, +{len}) overlaps kept records in {ring:?}"
            );
            if let Some(w) = wrap_at {
                assert_eq!(
                    w, old_tail,
                    "wrap marker goes where the record would have started"
                );
                assert!(
                    ring.is_free(w, REC_HEADER_LEN as u64),
                    "wrap marker overlaps kept records"
                );
                assert!(w + len > ring.data_len, "wrapped although the record fit");
            }
            assert_eq!(at % 8, 0);
            ring.push(at, len);
        }
    }
    plan
}

/// Kept records' byte ranges, oldest first.
fn extents(ring: &Ring, lens: &[u64]) -> Vec<(u64, u64)> {
    let first = ring.first_seq().unwrap_or(0);
    (0..ring.len())
        .map(|i| {
            let seq = first + i as u64;
            (ring.offset(i), lens[seq as usize - 1])
        })
        .collect()
}

#[test]
fn fills_then_wraps_with_marker() {
    let mut ring = Ring::new(256);
    for _ in 0..3 {
        assert!(matches!(
            apply(&mut ring, 80, 100),
            Plan::Store { evict: 0, .. }
        ));
    }
    assert_eq!((ring.head(), ring.tail(), ring.len()), (0, 240, 3));
    // 16 bytes left at the end: too few for a marker, the next record wraps implicitly.
    assert_eq!(
        apply(&mut ring, 80, 100),
        Plan::Store {
            evict: 1,
            at: 0,
            wrap_at: None
        }
    );
    assert_eq!(
        (ring.first_seq(), ring.last_seq(), ring.head()),
        (Some(2), 4, 80)
    );
}

#[test]
fn writes_a_wrap_marker_when_room_for_a_header_is_left() {
    let mut ring = Ring::new(256);
    apply(&mut ring, 96, 100);
    apply(&mut ring, 96, 100);
    // 64 bytes left, a 96-byte record needs the first record's room at 0.
    assert_eq!(
        apply(&mut ring, 96, 100),
        Plan::Store {
            evict: 1,
            at: 0,
            wrap_at: Some(192)
        }
    );
}

#[test]
fn max_records_evicts_one_per_append() {
    let mut ring = Ring::new(4096);
    for _ in 0..5 {
        apply(&mut ring, 40, 3);
    }
    assert_eq!(
        (ring.len(), ring.first_seq(), ring.last_seq()),
        (3, Some(3), 5)
    );
}

#[test]
fn too_large_consumes_the_seq_and_empties_the_ring() {
    let mut ring = Ring::new(128);
    apply(&mut ring, 40, 10);
    assert_eq!(apply(&mut ring, 136, 10), Plan::TooLarge);
    assert_eq!(
        (ring.len(), ring.first_seq(), ring.last_seq()),
        (0, None, 2)
    );
    apply(&mut ring, 40, 10);
    assert_eq!((ring.first_seq(), ring.last_seq()), (Some(3), 3));
    // A record exactly the size of the data region fits.
    assert!(matches!(
        apply(&mut ring, 128, 10),
        Plan::Store {
            evict: 1,
            at: 0,
            ..
        }
    ));
}

#[test]
fn a_kept_run_ending_before_last_seq_is_dropped_by_the_next_append() {
    let mut ring = Ring::new(1024);
    apply(&mut ring, 40, 10);
    apply(&mut ring, 40, 10);
    ring.raise_last_seq(5);
    assert_eq!((ring.newest_kept_seq(), ring.last_seq()), (Some(2), 5));
    apply(&mut ring, 40, 10);
    assert_eq!(
        (ring.first_seq(), ring.len(), ring.last_seq()),
        (Some(6), 1, 6)
    );
}

#[test]
fn index_lookups() {
    let mut ring = Ring::new(1024);
    for _ in 0..5 {
        apply(&mut ring, 40, 3);
    }
    // kept: 3, 4, 5
    assert_eq!(ring.index_after(0), 0);
    assert_eq!(ring.index_after(3), 1);
    assert_eq!(ring.index_after(5), 3);
    assert_eq!(ring.index_after(u64::MAX), 3);
    assert_eq!(ring.index_before(1), 0);
    assert_eq!(ring.index_before(4), 1);
    assert_eq!(ring.index_before(u64::MAX), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Wrap-around keeps exactly the newest records within both bounds: the kept records
    /// are a gap-free run ending at the newest seq, within max_records and the data
    /// region, never overlapping, and nothing is evicted needlessly (the ring loses at most
    /// two records' worth of bytes to wrap padding).
    #[test]
    fn keeps_the_newest_records_within_both_bounds(
        data_len in (8u64..160).prop_map(|n| n * 8),
        max_records in 1u32..12,
        lens in prop::collection::vec((4u64..40).prop_map(|n| n * 8), 1..120),
    ) {
        let mut ring = Ring::new(data_len);
        let mut since_reset: Vec<u64> = Vec::new();
        let mut max_len = 0;
        for (i, &len) in lens.iter().enumerate() {
            let plan = apply(&mut ring, len, max_records);
            let seq = i as u64 + 1;
            prop_assert_eq!(ring.last_seq(), seq);
            if plan == Plan::TooLarge {
                prop_assert_eq!(ring.len(), 0);
                since_reset.clear();
                continue;
            }
            since_reset.push(len);
            max_len = max_len.max(len);

            prop_assert!(ring.len() <= max_records as usize);
            prop_assert_eq!(ring.newest_kept_seq(), Some(seq));
            let ext = extents(&ring, &lens);
            let used: u64 = ext.iter().map(|e| e.1).sum();
            prop_assert!(used <= data_len);
            let mut sorted = ext.clone();
            sorted.sort_unstable();
            for w in sorted.windows(2) {
                prop_assert!(w[0].0 + w[0].1 <= w[1].0, "overlap in {:?}", ext);
            }
            prop_assert!(sorted.last().is_some_and(|e| e.0 + e.1 <= data_len));

            // The newest k records that fit in data_len - 2 * max_len must all be kept.
            let budget = data_len.saturating_sub(2 * max_len);
            let mut k = 0;
            let mut sum = 0;
            for &l in since_reset.iter().rev() {
                sum += l;
                if sum > budget {
                    break;
                }
                k += 1;
            }
            prop_assert!(ring.len() >= k.min(max_records as usize), "kept {} of newest {k}", ring.len());
        }
    }
}
