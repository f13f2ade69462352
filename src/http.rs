//! The local HTTP server: `/live.m3u8`, `/seg/<n>.ts`, `/stats` (being written).

use bytes::Bytes;

/// What the HTTP server serves; implemented by the viewer's and broadcaster's nodes.
pub trait Catalog: Send + Sync + 'static {
    /// The current live playlist, or `None` (404) when nothing is playable.
    fn playlist(&self) -> Option<String>;
    /// The bytes of segment `number`, or `None` (404).
    fn segment(&self, number: u64) -> Option<Bytes>;
    /// The `/stats` body (a JSON object).
    fn stats_json(&self) -> String;
}
