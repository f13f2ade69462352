//! MPEG-TS scanning and the keyframe segmenter (pure: bytes in, segments out).
//!
//! API contract (other modules code against it; the body is being written):

use bytes::Bytes;
use std::time::Duration;

/// One segment cut by the [`Segmenter`]: starts with PAT+PMT and a random-access point.
#[derive(Debug, Clone)]
pub struct CutSegment {
    /// The segment's bytes: whole 188-byte TS packets, PAT and PMT first.
    pub data: Bytes,
    /// Duration measured from PTS (next segment's first PTS minus this one's).
    pub duration: Duration,
    /// The first presentation timestamp in the segment (90 kHz), when known.
    pub first_pts: Option<u64>,
}

/// Cuts an MPEG-TS byte stream into independently decodable segments.
#[derive(Debug)]
pub struct Segmenter {}

impl Segmenter {
    /// A segmenter that cuts at the first random-access point at or after `target`.
    pub fn new(target: Duration) -> Self {
        let _ = target;
        Segmenter {}
    }

    /// Feeds bytes (any chunking); returns the segments completed by them.
    pub fn push(&mut self, input: &[u8]) -> Vec<CutSegment> {
        let _ = input;
        Vec::new()
    }

    /// Ends the input; returns the last, possibly short, segment.
    pub fn finish(&mut self) -> Option<CutSegment> {
        None
    }

    /// How many valid TS packets were seen so far (0 means: not MPEG-TS).
    pub fn packets_seen(&self) -> u64 {
        0
    }
}

/// Rewrites PCR, PTS and DTS by a fixed offset and keeps continuity counters
/// continuous, so a clip can be replayed in a loop without a timestamp jump.
#[derive(Debug, Default)]
pub struct Restamper {}

impl Restamper {
    /// A restamper with offset 0.
    pub fn new() -> Self {
        Restamper {}
    }
    /// Sets the offset (90 kHz ticks) added to every following timestamp.
    pub fn set_offset(&mut self, offset_90k: u64) {
        let _ = offset_90k;
    }
    /// Rewrites whole 188-byte packets in place; a trailing partial packet is left alone.
    pub fn apply(&mut self, packets: &mut [u8]) {
        let _ = packets;
    }
}

/// First and last PTS (90 kHz) of the video stream (or the first PES stream if no video).
pub fn pts_span(data: &[u8]) -> Option<(u64, u64)> {
    let _ = data;
    None
}
