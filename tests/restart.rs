//! End to end: restarting the broadcaster with the same key and address must not stop the
//! viewers. They reconnect by themselves, numbering continues where it stopped, the playlist
//! marks the restart with `EXT-X-DISCONTINUITY`, and a player reading through it keeps going.

mod common;
mod harness;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::players::{ffmpeg_reads_hls, require_tool};
use harness::{
    fetch_playlist, poll_until, start_broadcaster, start_viewer, wait_for_segments, Broadcaster,
    TempDir, EXIT_TIMEOUT,
};

/// How long the first segments may take to reach a viewer's playlist.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long viewers may take to show segments of the restarted broadcaster.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket.local_addr().expect("its address").port()
}

fn start(key: &str, listen: &str) -> Broadcaster {
    start_broadcaster(
        &[
            "--key",
            key,
            "--listen",
            listen,
            "--http",
            "127.0.0.1:0",
            "--segment-duration",
            "1",
        ],
        Stdio::null(),
    )
}

#[test]
fn broadcaster_restart_keeps_viewers_playing() {
    let dir = TempDir::new("restart");
    let key = dir.file("key");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let mut broadcaster = start(&key, &listen);
    let viewers = [
        start_viewer(&broadcaster.ticket, &["--delay", "2"]),
        start_viewer(&broadcaster.ticket, &["--delay", "2"]),
    ];
    let mut before = 0;
    for viewer in &viewers {
        let (playlist, _) = wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT);
        before = before.max(playlist.max_number().expect("segments listed"));
    }

    // A player reads through the restart; ffmpeg waits on an unchanged live playlist.
    let player = require_tool("ffmpeg").then(|| {
        let url = viewers[0].url.clone();
        thread::spawn(move || ffmpeg_reads_hls(&url, 6))
    });

    broadcaster.proc.interrupt();
    let status = broadcaster.proc.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "the broadcaster ignored SIGINT{}",
            broadcaster.proc.output_tail()
        )
    });
    assert!(
        status.success(),
        "SIGINT should end the broadcaster cleanly, got {status}{}",
        broadcaster.proc.output_tail()
    );
    let state = format!("{key}.state");
    assert!(
        Path::new(&state).is_file(),
        "no state file {state} beside the key after a clean exit"
    );
    // The highest number any viewer has listed by now; the restarted stream must go on past it.
    for viewer in &viewers {
        if let Some((playlist, _)) = fetch_playlist(&viewer.url) {
            before = before.max(playlist.max_number().unwrap_or(0));
        }
    }

    let restarted = start(&key, &listen);
    assert_eq!(
        restarted.ticket, broadcaster.ticket,
        "same key and address, yet a different ticket"
    );

    for (i, viewer) in viewers.iter().enumerate() {
        let mut last = String::from("(no playlist)");
        let mut highest = before;
        let resumed = poll_until(RECONNECT_TIMEOUT, || {
            let (playlist, text) = fetch_playlist(&viewer.url)?;
            last.clone_from(&text);
            let max = playlist.max_number().unwrap_or(0);
            assert!(
                max >= highest,
                "viewer {i}: numbering went back from {highest} to {max}:\n{text}"
            );
            highest = max;
            // The restart point: a segment past every pre-restart number, marked as a
            // discontinuity, with the restarted stream going on after it.
            let mark = playlist
                .entries
                .iter()
                .position(|e| e.number > before && e.discontinuity)?;
            (playlist.entries.len() > mark + 1).then_some(playlist)
        });
        let resumed = resumed.unwrap_or_else(|| {
            panic!(
                "viewer {i}: no discontinuity-marked segment after {before} followed by more \
                 within {} s; last playlist:\n{last}{}",
                RECONNECT_TIMEOUT.as_secs(),
                restarted.proc.output_tail()
            )
        });
        for pair in resumed.entries.windows(2) {
            assert_eq!(
                pair[1].number,
                pair[0].number + 1,
                "viewer {i}: the playlist is not one contiguous run:\n{last}"
            );
        }
    }

    if let Some(player) = player {
        let report = player
            .join()
            .expect("player thread")
            .unwrap_or_else(|e| panic!("ffmpeg stopped playing across the restart: {e}"));
        eprintln!("ffmpeg across the restart: {report:?}");
    }
}
