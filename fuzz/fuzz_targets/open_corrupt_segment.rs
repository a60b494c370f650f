//! Damages one segment file of a valid shard store (format v2) with the fuzz input (or
//! replaces it), reopens the store and asserts its invariants: every ring verifies, no
//! two rings share a slot, appends and a second reopen keep epoch and seq. The checks
//! live in `ringcast_store::fuzzing::open_corrupt_segment`.
//!
//! `cargo +nightly fuzz run open_corrupt_segment -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcast_store::fuzzing::open_corrupt_segment(data);
});
