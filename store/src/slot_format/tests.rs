use super::*;

#[test]
fn record_round_trip_keeps_uid_payload_and_data_span() {
    let mut data = vec![0xAA; 256];
    let rec = NewRecord {
        seq: 7,
        ts_ms: 1_700_000_000_000,
        uid: Some(b"alice"),
        payload: b"{\"data\":{\"x\":1}}",
        data: (8, 7),
    };
    let len = record_len(5, rec.payload.len());
    assert_eq!(len, 64);
    write_record(&mut data[8..8 + len as usize], 42, &rec);
    let Ok(Entry::Record { rec: got, len: l }) = read_entry(&data, 8, 42) else {
        panic!("record does not verify");
    };
    assert_eq!(l, len);
    assert_eq!((got.seq, got.ts_ms, got.uid), (Seq(7), rec.ts_ms, rec.uid));
    assert_eq!(got.payload, rec.payload);
    assert_eq!(got.data(), b"{\"x\":1}");
    assert_eq!(read_record_trusted(&data, 8), got);
    assert_eq!(record_len_at(&data, 8), len);
    // The epoch is part of the checksum.
    assert!(read_entry(&data, 8, 43).is_err());
}

#[test]
fn every_single_bit_flip_in_a_record_or_state_is_detected() {
    let mut data = vec![0; 64];
    let rec = NewRecord {
        seq: 3,
        ts_ms: 9,
        uid: None,
        payload: b"abcdefgh",
        data: (0, 8),
    };
    write_record(&mut data[..48], 5, &rec);
    for byte in 0..48 {
        for bit in 0..8 {
            let mut bad = data.clone();
            bad[byte] ^= 1 << bit;
            assert!(
                !matches!(read_entry(&bad, 0, 5), Ok(Entry::Record { rec: r, .. }) if r.seq.0 == 3 && r.payload == b"abcdefgh" && r.ts_ms == 9 && r.data() == b"abcdefgh"),
                "flip at byte {byte} bit {bit} went unnoticed"
            );
        }
    }
    let mut slot = vec![0; 512];
    let st = State {
        generation: 4,
        head: 8,
        tail: 64,
        count: 2,
        max_records: 9,
        last_seq: 20,
        first_seq: 19,
        last_append_ms: 77,
    };
    write_state(&mut slot, 11, &st);
    assert_eq!(read_state(&slot, 11), Some(st));
    assert_eq!(read_state(&slot, 12), None);
    let r = state_range(4);
    for byte in r.clone() {
        let mut bad = slot.clone();
        bad[byte] ^= 0x10;
        assert_ne!(read_state(&bad, 11), Some(st));
    }
}

#[test]
fn state_slots_alternate_and_the_newer_wins_across_wrap_around() {
    let mut slot = vec![0; 512];
    let mut st = State {
        generation: u32::MAX,
        max_records: 1,
        first_seq: 1,
        ..State::default()
    };
    write_state(&mut slot, 1, &st);
    st.generation = st.generation.wrapping_add(1);
    st.last_seq = 1;
    write_state(&mut slot, 1, &st);
    assert_eq!(read_state(&slot, 1).unwrap().generation, 0);
    // A torn newer slot leaves the older one readable.
    slot[state_range(0)][3] ^= 1;
    assert_eq!(read_state(&slot, 1).unwrap().generation, u32::MAX);
    assert!(newer(1, u32::MAX) && !newer(u32::MAX, 1) && !newer(5, 5));
}

#[test]
fn slot_and_segment_headers_round_trip_and_reject_damage() {
    let mut slot = vec![0; 512];
    let h = SlotHeader {
        class_log2: 9,
        epoch: 99,
        moves: 3,
        data_len: 352,
        key: b"tenant/chan",
    };
    write_slot_header(&mut slot, &h);
    assert_eq!(read_slot_header(&slot, 9), Some(h));
    assert_eq!(read_slot_header(&slot, 10), None, "class must match");
    assert_eq!(key_of(&slot), b"tenant/chan");
    let mut bad = slot.clone();
    bad[SLOT_HEADER_LEN] ^= 1;
    assert_eq!(read_slot_header(&bad, 9), None, "the key is checksummed");
    free_slot(&mut slot);
    assert_eq!(read_slot_header(&slot, 9), None);

    let sh = SegmentHeader {
        class_log2: 9,
        slot_count: 4,
        number: 2,
    };
    let mut file = vec![0; sh.file_len() as usize];
    write_segment_header(&mut file, &sh);
    assert_eq!(read_segment_header(&file), Ok(sh));
    assert_eq!(read_high_water(&file), Some(0));
    write_high_water(&mut file, 3);
    assert_eq!(read_high_water(&file), Some(3));
    file[SEG_HW_AT] ^= 4;
    assert_eq!(read_high_water(&file), None);
    assert!(read_segment_header(&file[..file.len() - 1]).is_err());
    file[17] ^= 1;
    assert!(read_segment_header(&file).is_err());
}

#[test]
fn gathered_checksums_equal_one_hasher_fed_every_part() {
    let bytes: Vec<u8> = (0..700u32).map(|i| (i * 31 % 251) as u8).collect();
    for total in [
        0,
        1,
        52,
        113,
        GATHER_UP_TO - 1,
        GATHER_UP_TO,
        GATHER_UP_TO + 1,
        700,
    ] {
        for cut in [0, total / 3, total] {
            let (a, rest) = bytes[..total].split_at(cut.min(total));
            let (b, c) = rest.split_at(rest.len() / 2);
            let mut one = crc32fast::Hasher::new();
            one.update(&bytes[..total]);
            assert_eq!(
                crc_of(&[a, b, c]),
                one.finalize(),
                "total {total}, cut {cut}"
            );
        }
    }
}
