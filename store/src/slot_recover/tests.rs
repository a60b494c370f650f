use proptest::prelude::*;

use super::*;
use crate::fuzzing;
use crate::slot_format::NewRecord;

fn ring_bytes(n: u64) -> (Vec<u8>, State) {
    let mut data = vec![0; 512];
    let mut ring = Ring::new(512);
    for seq in 1..=n {
        let payload = vec![seq as u8; 50];
        let len = slot_format::record_len(0, 50);
        let Plan::Store { evict, at, wrap_at } = ring.plan(len, 100) else {
            unreachable!()
        };
        ring.evict(evict);
        if let Some(w) = wrap_at {
            slot_format::write_wrap(&mut data[w as usize..w as usize + WRAP_LEN], 7, seq);
        }
        let rec = NewRecord {
            seq,
            ts_ms: seq,
            uid: None,
            payload: &payload,
            data: (0, 50),
        };
        slot_format::write_record(&mut data[at as usize..(at + len) as usize], 7, &rec);
        ring.push(at, len);
    }
    let st = State {
        generation: 1,
        head: ring.head() as u32,
        tail: ring.tail() as u32,
        count: ring.len() as u32,
        max_records: 100,
        last_seq: ring.last_seq(),
        first_seq: ring.first_seq().unwrap_or(ring.last_seq() + 1),
        last_append_ms: n,
    };
    (data, st)
}

use crate::ring::Plan;

#[test]
fn a_published_wrapped_ring_recovers_whole_and_an_unpublished_append_is_adopted() {
    let (data, st) = ring_bytes(12);
    let rec = recover(&data, 7, &st).unwrap();
    assert_eq!((rec.torn, rec.dirty, rec.ring.last_seq()), (0, false, 12));
    assert!(rec.ring.len() > 3);
    // State published one append behind: the complete record past the tail is adopted.
    let (data3, _) = ring_bytes(3);
    let (_, st2) = ring_bytes(2);
    let rec = recover(&data3, 7, &st2).unwrap();
    assert!(rec.dirty);
    assert_eq!(
        (rec.ring.last_seq(), rec.ring.len(), rec.last_append_ms),
        (3, 3, 3)
    );
    // ... but not when it overwrote records the stale state still counts as kept.
    let (_, st11) = ring_bytes(11);
    let rec = recover(&data, 7, &st11).unwrap();
    assert_eq!(rec.ring.last_seq(), 11);
    // Another epoch's bytes never verify.
    assert_eq!(recover(&data, 8, &st).unwrap().torn, st.count);
}

#[test]
fn a_damaged_published_record_is_dropped_without_reusing_its_seq() {
    let (mut data, st) = ring_bytes(5);
    let third = 2 * slot_format::record_len(0, 50) as usize + slot_format::REC_HEADER_LEN;
    data[third] ^= 1;
    let rec = recover(&data, 7, &st).unwrap();
    assert_eq!((rec.torn, rec.ring.len(), rec.ring.last_seq()), (3, 2, 5));
    let bad = State { first_seq: 9, ..st };
    assert!(recover(&data, 7, &bad).is_err());
    let bad = State {
        max_records: 0,
        ..st
    };
    assert!(recover(&data, 7, &bad).is_err());
}

#[test]
fn fuzz_hook_survives_hand_made_damage() {
    fuzzing::open_corrupt_segment(&[]);
    fuzzing::open_corrupt_segment(&[0]);
    fuzzing::open_corrupt_segment(&[0, 1, 2, 3]);
    // Garble slot headers, state slots and record bytes of the first segment.
    for at in [
        4096u16,
        4096 + 30,
        4096 + 40,
        4096 + 90,
        4096 + 200,
        4096 + 512 + 5,
        20,
        36,
    ] {
        let [lo, hi] = at.to_le_bytes();
        fuzzing::open_corrupt_segment(&[1, lo, hi, 0xFF, 0x00, 0x13]);
        fuzzing::open_corrupt_segment(&[3, lo, hi, 0xFF]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The fuzz target's checks on random damage of random segment files.
    #[test]
    fn random_segment_damage_keeps_invariants(
        sel in any::<u8>(),
        at in 0u16..8192,
        patch in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut input = vec![sel | 1];
        input.extend_from_slice(&at.to_le_bytes());
        input.extend_from_slice(&patch);
        fuzzing::open_corrupt_segment(&input);
    }

    #[test]
    fn random_segment_replacement_keeps_invariants(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        let mut input = vec![0u8];
        input.extend_from_slice(&bytes);
        fuzzing::open_corrupt_segment(&input);
    }
}
