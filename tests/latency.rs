//! `--latency low` on both programs: the broadcaster cuts 1 s segments and the viewer lists its
//! newest two, checked from outside on the viewer's playlist and `/stats`.

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
fn low_latency_preset_cuts_short_segments_and_lists_the_newest_two() {
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

    // The newest listed segment is the broadcaster's newest, and only two are listed: a stock
    // player starting three entries from the end starts one segment behind it. Reads race
    // the stream, so the two are compared until one pair is taken between cuts.
    let listed = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        let (playlist, _) = fetch_playlist(&viewer.url)?;
        let newest = count(&broadcaster_stats(&broadcaster), "newest_segment");
        let (again, _) = fetch_playlist(&viewer.url)?;
        let listed = playlist.max_number()?;
        (listed == again.max_number()? && listed == newest).then_some(playlist.entries.len())
    });
    assert_eq!(
        listed,
        Some(2),
        "the playlist does not list the newest two segments"
    );
}
