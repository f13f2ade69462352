//! Fuzz target: join token strings a user pastes (private streams).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz::token(data));
