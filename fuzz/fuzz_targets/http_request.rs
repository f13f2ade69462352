//! Fuzz target: the bytes a client sends the local HTTP server on one connection.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz::http_request(data));
