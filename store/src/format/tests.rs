use super::*;

#[test]
fn record_round_trip_and_alignment() {
    let mut data = vec![0xAA; 256];
    let rec = Record {
        seq: Seq(7),
        ts_ms: 1_700_000_000_000,
        uid: Some(b"alice"),
        payload: b"{\"hello\":1}",
        data_span: (0, b"{\"hello\":1}".len() as u32),
    };
    let len = record_len(5, 11);
    assert_eq!(len, 48);
    write_record(&mut data[8..8 + len as usize], 42, &rec);
    assert_eq!(read_entry(&data, 8, 42), Ok(Entry::Record { rec, len }));
    assert_eq!(read_record_trusted(&data, 8), rec);
    // The epoch is part of the checksum: a record of another history does not verify.
    assert_eq!(read_entry(&data, 8, 43), Err(EntryProblem::Checksum));
}

#[test]
fn empty_uid_differs_from_no_uid() {
    let mut data = vec![0; 64];
    let rec = Record {
        seq: Seq(1),
        ts_ms: 0,
        uid: Some(b""),
        payload: b"",
        data_span: (0, b"".len() as u32),
    };
    write_record(&mut data[..32], 1, &rec);
    assert!(
        matches!(read_entry(&data, 0, 1), Ok(Entry::Record { rec: r, len: 32 }) if r.uid == Some(&b""[..]))
    );
}

#[test]
fn every_single_bit_flip_in_a_record_is_detected() {
    let mut data = vec![0; 64];
    let rec = Record {
        seq: Seq(3),
        ts_ms: 9,
        uid: None,
        payload: b"abcdefgh",
        data_span: (0, b"abcdefgh".len() as u32),
    };
    write_record(&mut data[..40], 5, &rec);
    for byte in 0..40 {
        for bit in 0..8 {
            let mut bad = data.clone();
            bad[byte] ^= 1 << bit;
            assert!(
                !matches!(read_entry(&bad, 0, 5), Ok(Entry::Record { rec: r, .. }) if r == rec),
                "flip at byte {byte} bit {bit} went unnoticed"
            );
        }
    }
}

#[test]
fn lengths_past_the_end_are_rejected() {
    let mut data = vec![0; 64];
    let rec = Record {
        seq: Seq(1),
        ts_ms: 0,
        uid: None,
        payload: &[1; 24],
        data_span: (0, 24),
    };
    write_record(&mut data[8..64], 1, &rec);
    assert!(read_entry(&data, 8, 1).is_ok());
    assert_eq!(
        read_entry(&data[..60], 8, 1),
        Err(EntryProblem::OutOfBounds)
    );
    assert_eq!(read_entry(&data, 40, 1), Err(EntryProblem::OutOfBounds));
    assert_eq!(
        read_entry(&data, u64::MAX, 1),
        Err(EntryProblem::OutOfBounds)
    );
}

#[test]
fn wrap_marker_round_trip() {
    let mut data = vec![0; 64];
    write_wrap(&mut data[16..48], 9, 77);
    assert_eq!(read_entry(&data, 16, 9), Ok(Entry::Wrap { next_seq: 77 }));
    assert_eq!(read_entry(&data, 16, 8), Err(EntryProblem::Checksum));
}

#[test]
fn header_round_trip_and_damage() {
    let mut page = vec![0xFF; HEADER_LEN];
    let h = FileHeader {
        data_len: 4096,
        epoch: 12345,
        key: b"tenant/chat:lobby",
    };
    write_file_header(&mut page, &h);
    assert_eq!(read_file_header(&page), Ok(h));
    assert_eq!(
        read_slot(&page, 12345),
        None,
        "fresh header has no valid slot"
    );
    for at in [0, 9, 13, 17, 25, 33, 36, KEY_AT + 3] {
        let mut bad = page.clone();
        bad[at] ^= 0x10;
        assert!(
            read_file_header(&bad).is_err(),
            "damage at {at} went unnoticed"
        );
    }
    assert_eq!(
        read_file_header(&page[..100]),
        Err(HeaderProblem::Short(100))
    );
}

#[test]
fn newest_valid_slot_wins_and_torn_slot_falls_back() {
    let mut page = vec![0; HEADER_LEN];
    let older = SlotState {
        generation: 4,
        head: 8,
        tail: 64,
        last_seq: 10,
        first_seq: 9,
        last_append_ms: 5,
        count: 2,
        max_records: 100,
    };
    let newer = SlotState {
        generation: 5,
        last_seq: 11,
        count: 3,
        ..older
    };
    write_slot(&mut page, 1, &older);
    write_slot(&mut page, 1, &newer);
    assert_eq!(read_slot(&page, 1), Some(newer));
    assert_eq!(read_slot(&page, 2), None, "slots are bound to their epoch");
    page[SLOT_AT[1] + 30] ^= 1;
    assert_eq!(read_slot(&page, 1), Some(older));
}
