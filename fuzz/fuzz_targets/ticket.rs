//! Fuzz target: ticket strings a user pastes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz::ticket(data));
