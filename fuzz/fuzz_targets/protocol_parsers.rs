//! Every parser of the protocol crate over arbitrary bytes: none may panic, and every
//! raw span one accepts must be JSON (`ringcast_protocol::fuzzing::every_parser`).
//!
//! `cargo +nightly fuzz run protocol_parsers` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    ringcast_protocol::fuzzing::every_parser(bytes);
});
