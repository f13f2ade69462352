//! The playout window rendered as an HLS media playlist (hls_m3u8 lives here only).
//!
//! API contract (being written):

use std::collections::BTreeMap;
use std::time::Duration;

/// What the playlist needs to know of one verified segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Duration from the signed header.
    pub duration: Duration,
    /// Broadcaster's wall clock when it published the segment (ms since the Unix epoch).
    pub published_unix_ms: u64,
    /// The broadcaster restarted (or the source jumped) before this segment.
    pub discontinuity: bool,
}

/// How the live window is cut.
#[derive(Debug, Clone, Copy)]
pub struct PlaylistConfig {
    /// Segments held back behind the newest verified one.
    pub delay: u64,
    /// Most segments listed at once.
    pub window: usize,
}

/// Renders `/live.m3u8` from the verified segments, or `None` when nothing is playable yet.
pub fn live_playlist(
    segments: &BTreeMap<u64, SegmentInfo>,
    config: PlaylistConfig,
    ended: bool,
) -> Option<String> {
    let _ = (segments, config, ended);
    None
}
