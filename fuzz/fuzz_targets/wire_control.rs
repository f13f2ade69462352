//! Fuzz target: peer frames (control, reply, request) and segment headers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz::wire_control(data));
