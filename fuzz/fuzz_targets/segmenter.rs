//! Fuzz target: the MPEG-TS segmenter, `pts_span` and the restamper.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| starling_fuzz::segmenter(data));
