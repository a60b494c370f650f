//! Damages a valid ring log file with the fuzz input (or replaces it), reopens it and
//! asserts the store's invariants; the checks live in `ringcast_store::fuzzing`.
//!
//! `cargo +nightly fuzz run open_corrupt -- -max_total_time=60`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringcast_store::fuzzing::open_corrupt(data);
});
