//! `--latency low` on both programs: the broadcaster cuts 1 s segments and the viewer holds
//! back one segment, checked from outside on the viewer's playlist and `/stats`.

mod harness;

use std::process::Stdio;
use std::time::Duration;

use harness::{
    broadcaster_stats, count, fetch_playlist, one_stream_at_a_time, poll_until, start_broadcaster,
    start_viewer, wait_for_segments, TempDir,
};

/// How long a fresh mesh may take to list its first segments: start-up of debug builds, the
/// first segments cut, the hold-back, on a busy shared machine.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn low_latency_preset_cuts_short_segments_and_holds_back_one() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("latency-low");
    let key = dir.file("key");
    // The built-in demo has a keyframe every half second, so 1 s cuts land on time.
    let broadcaster = start_broadcaster(
        &["--key", &key, "--http", "127.0.0.1:0", "--latency", "low"],
        Stdio::null(),
    );
    let viewer = start_viewer(&broadcaster.ticket, &["--latency", "low"]);
    let _partner = start_viewer(&broadcaster.ticket, &["--latency", "low"]);
    let (_, text) = wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT);
    assert!(
        text.lines().any(|l| l.trim() == "#EXT-X-TARGETDURATION:1"),
        "segments are not about 1 s long:\n{text}"
    );

    // The newest listed segment is one behind the broadcaster's newest; it is never closer,
    // and with the default hold-back never closer than three. Reads race the stream, so the
    // two are compared until one pair is taken between cuts.
    let behind = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        let listed = fetch_playlist(&viewer.url)?.0.max_number()?;
        let newest = count(&broadcaster_stats(&broadcaster), "newest_segment");
        let listed_again = fetch_playlist(&viewer.url)?.0.max_number()?;
        let behind = newest.checked_sub(listed)?;
        (listed == listed_again && behind <= 1).then_some(behind)
    });
    assert_eq!(
        behind,
        Some(1),
        "the playlist is not held back by one segment"
    );
}
