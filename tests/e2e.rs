//! End to end: the real `starling-broadcaster` and `starling-viewer` programs on loopback,
//! checked from outside as a user would — the ticket and URL they print, the viewer's HLS
//! server, real players (ffmpeg, VLC) reading it, and how the programs end.

mod common;
mod harness;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::players::{ffmpeg_reads_hls, require_tool, vlc_plays_hls};
use harness::{
    assert_clear_failure, broadcaster_stats, count, fetch_playlist, get, one_stream_at_a_time,
    poll_until, program, request, resolve, start_broadcaster, start_viewer, stats_at,
    wait_for_segments, Proc, TempDir, Viewer,
};

/// How long a fresh mesh may take to list its first segments in a viewer's playlist: start-up
/// of debug builds, the first segments cut, the hold-back, on a busy shared machine.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);
/// Fields the contract promises in a viewer's `/stats`.
const VIEWER_STATS: [&str; 7] = [
    "peers",
    "segments_verified",
    "bytes_from_peers",
    "bytes_from_origin",
    "bytes_uploaded",
    "missed_deadlines",
    "rejected_segments",
];

/// Fields the contract promises in the broadcaster's `/stats`.
const BROADCASTER_STATS: [&str; 3] = ["viewers", "segments_published", "bytes_uploaded"];

/// A viewer's `/stats`, parsed.
fn viewer_stats(viewer: &Viewer) -> serde_json::Value {
    stats_at(&viewer.url_of("/stats"))
}

/// A test broadcaster's flags: its own key, stats on any free port, then `extra`.
fn broadcaster_args<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--key", key, "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn ffmpeg_reads_viewer_playlist() {
    if !require_tool("ffmpeg") {
        return;
    }
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("e2e-ffmpeg");
    let key = dir.file("key");
    let mut source = Command::new("ffmpeg");
    source
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "25"])
        .args(["-c:a", "aac", "-f", "mpegts", "-"])
        .stdin(Stdio::null());
    let (_source, ts) = Proc::spawn_feeding("ffmpeg-source", source);
    let broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--input", "-", "--segment-duration", "1"]),
        Stdio::from(ts),
    );
    let first = start_viewer(&broadcaster.ticket, &["--delay", "2"]);
    let second = start_viewer(&broadcaster.ticket, &["--delay", "2"]);

    // ffmpeg starts three segments behind the end of a live playlist; give it all three.
    wait_for_segments(&first.url, 3, FIRST_SEGMENTS_TIMEOUT);
    let report = ffmpeg_reads_hls(&first.url, 10).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("ffmpeg read viewer 1: {report:?}");

    for viewer in [&first, &second] {
        let stats = viewer_stats(viewer);
        for field in VIEWER_STATS {
            count(&stats, field); // Panics if the field is missing.
        }
        assert!(
            count(&stats, "segments_verified") > 0,
            "no segment verified: {stats}"
        );
        assert_eq!(
            count(&stats, "rejected_segments"),
            0,
            "an honest broadcaster's segments were rejected: {stats}"
        );
    }
    let stats = broadcaster_stats(&broadcaster);
    for field in BROADCASTER_STATS {
        count(&stats, field); // Panics if the field is missing.
    }
    assert!(count(&stats, "viewers") > 0, "no viewer counted: {stats}");
    assert!(
        count(&stats, "segments_published") > 0,
        "nothing published: {stats}"
    );
    assert!(
        count(&stats, "bytes_uploaded") > 0,
        "nothing uploaded: {stats}"
    );

    // Two viewers of one stream find each other through the broadcaster.
    let peers = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        let stats = viewer_stats(&first);
        (count(&stats, "peers") > 0).then_some(stats)
    });
    assert!(
        peers.is_some(),
        "viewer 1 never counted a peer: {}",
        viewer_stats(&first)
    );
}

/// VLC plays a viewer's two-segment live window under a preset given to both programs.
fn vlc_plays_viewer_playlist_with(name: &str, preset: &[&str]) {
    if !require_tool("cvlc") {
        return;
    }
    let _one = one_stream_at_a_time();
    let dir = TempDir::new(name);
    let key = dir.file("key");
    let broadcaster = start_broadcaster(&broadcaster_args(&key, preset), Stdio::null());
    let viewer = start_viewer(&broadcaster.ticket, preset);
    let _other = start_viewer(&broadcaster.ticket, preset);
    wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT);
    let report = vlc_plays_hls(&viewer.url, 8).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("VLC played the viewer ({preset:?}): {report:?}");
}

#[test]
fn vlc_plays_viewer_playlist() {
    vlc_plays_viewer_playlist_with("e2e-vlc", &[]);
}

#[test]
fn vlc_plays_viewer_playlist_at_low_latency() {
    vlc_plays_viewer_playlist_with("e2e-vlc-low", &["--latency", "low"]);
}

#[test]
fn playlist_and_segments_are_served_correctly() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("e2e-http");
    let key = dir.file("key");
    let ticket_file = dir.file("ticket");
    let mut broadcaster = start_broadcaster(
        &broadcaster_args(
            &key,
            &["--segment-duration", "1", "--ticket-file", &ticket_file],
        ),
        Stdio::null(),
    );
    assert!(
        fs::metadata(&key).is_ok_and(|m| m.is_file()),
        "the broadcaster did not create its key file {key}"
    );
    let written = fs::read_to_string(&ticket_file).expect("read the --ticket-file");
    assert_eq!(
        written.trim(),
        broadcaster.ticket,
        "--ticket-file differs from stdout"
    );
    let mut viewer = start_viewer(
        &broadcaster.ticket,
        &["--delay", "2", "--allow-origin", "https://app.example"],
    );
    let (playlist, text) = wait_for_segments(&viewer.url, 2, FIRST_SEGMENTS_TIMEOUT);

    let response = get(&viewer.url).expect("GET /live.m3u8");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/vnd.apple.mpegurl")),
        "playlist content type: {:?}",
        response.header("content-type")
    );
    // Only the viewer's own page reads it by default.
    assert_eq!(response.header("access-control-allow-origin"), None);
    assert!(text.starts_with("#EXTM3U"), "not a playlist:\n{text}");
    // Players map the whole playlist to the broadcaster's clock from the first segment's tag.
    assert!(
        playlist
            .entries
            .first()
            .is_some_and(|e| e.program_date_time.is_some()),
        "no EXT-X-PROGRAM-DATE-TIME on the first segment:\n{text}"
    );
    let times: Vec<u64> = playlist
        .entries
        .iter()
        .filter_map(|e| e.program_date_time)
        .collect();
    assert!(
        times.windows(2).all(|t| t[0] < t[1]),
        "EXT-X-PROGRAM-DATE-TIME goes backwards:\n{text}"
    );
    // Segment numbers are the HLS media sequence numbers: one contiguous run from it.
    let first = playlist.entries.first().expect("segments listed");
    // RFC 8216 §4.3.3.2: a playlist without EXT-X-MEDIA-SEQUENCE starts at 0.
    assert_eq!(
        playlist.media_sequence.unwrap_or(0),
        first.number,
        "EXT-X-MEDIA-SEQUENCE should be the first listed segment's number:\n{text}"
    );
    for pair in playlist.entries.windows(2) {
        assert_eq!(
            pair[1].number,
            pair[0].number + 1,
            "not contiguous:\n{text}"
        );
    }

    let last = playlist.entries.last().expect("segments listed");
    let segment_url = resolve(&viewer.url, &last.uri);
    let segment = get(&segment_url).expect("GET a listed segment");
    assert_eq!(segment.status, 200, "{segment_url}");
    assert_eq!(segment.header("content-type"), Some("video/mp2t"));
    assert_eq!(segment.header("access-control-allow-origin"), None);
    assert!(!segment.body.is_empty(), "{segment_url} is empty");
    assert_eq!(
        segment.body[0], 0x47,
        "{segment_url} does not start with a TS sync byte"
    );
    assert_eq!(
        segment.body.len() % 188,
        0,
        "{segment_url} is not whole 188-byte packets ({} bytes)",
        segment.body.len()
    );
    let packets_in_sync = segment.body.chunks(188).all(|p| p[0] == 0x47);
    assert!(packets_in_sync, "{segment_url} loses TS sync");

    let head = request("HEAD", &segment_url).expect("HEAD a segment");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(segment.body.len().to_string().as_str()),
        "HEAD and GET disagree on the length of {segment_url}"
    );
    let head = request("HEAD", &viewer.url).expect("HEAD the playlist");
    assert_eq!(head.status, 200);

    let missing = get(&viewer.url_of(&format!("/seg/{}.ts", u64::MAX))).expect("GET unknown");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("access-control-allow-origin"), None);
    let nonsense = get(&viewer.url_of("/seg/not-a-number.ts")).expect("GET nonsense");
    assert_eq!(nonsense.status, 404);
    // The named origin may read; any other may not, and a foreign Host is refused.
    let granted = harness::request_with("GET", &viewer.url, &[("Origin", "https://app.example")])
        .expect("GET with a granted Origin");
    assert_eq!(
        granted.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = harness::request_with("GET", &viewer.url, &[("Origin", "https://evil.example")])
        .expect("GET with another Origin");
    assert_eq!(other.header("access-control-allow-origin"), None);

    viewer.proc.assert_clean_exit_on("TERM");
    broadcaster.proc.assert_clean_exit_on("INT");
}

#[test]
fn input_end_ends_the_stream() {
    assert_input_end_ends_the_stream("short.ts");
}

/// The same through the ffmpeg input (a file that is not MPEG-TS).
#[test]
fn ffmpeg_input_end_ends_the_stream() {
    assert_input_end_ends_the_stream("short.mp4");
}

/// Broadcasts a 4 s clip written as `file_name` to one viewer: the viewer's playlist must
/// end with EXT-X-ENDLIST, and the broadcaster exit 0 by itself.
fn assert_input_end_ends_the_stream(file_name: &str) {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = TempDir::new("e2e-end");
    let key = dir.file("key");
    let input = dir.file(file_name);
    harness::make_clip(&input, 4);
    let _one = one_stream_at_a_time();
    let mut broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--input", &input, "--segment-duration", "1"]),
        Stdio::null(),
    );
    let mut viewer = start_viewer(&broadcaster.ticket, &["--delay", "2"]);

    // Polls all along: the viewer may exit soon after its playlist has ended.
    let mut last = String::from("(no playlist yet)");
    let ended = poll_until(Duration::from_secs(90), || {
        if let Some((playlist, text)) = fetch_playlist(&viewer.url) {
            last = text;
            if playlist.ended {
                return Some(playlist);
            }
        }
        None
    });
    let ended = ended
        .unwrap_or_else(|| panic!("the viewer's playlist never got EXT-X-ENDLIST; last:\n{last}"));
    assert!(
        !ended.entries.is_empty(),
        "the ended playlist lists no segment:\n{last}"
    );
    assert!(
        last.trim_end().ends_with("#EXT-X-ENDLIST"),
        "EXT-X-ENDLIST is not last:\n{last}"
    );

    let status = broadcaster
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the broadcaster did not exit after its input ended");
    assert!(status.success(), "broadcaster exit: {status}");
    if let Some(status) = viewer.proc.try_status() {
        assert!(status.success(), "viewer exit: {status}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = TempDir::new("e2e-bad");
    // Pseudo-random bytes (xorshift, fixed seed): 1 MiB with no MPEG-TS structure.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect();
    let input = dir.file("x.ts");
    fs::write(&input, noise).expect("write x.ts");
    let key = dir.file("key");
    let mut cmd = Command::new(program("starling-broadcaster"));
    cmd.args(broadcaster_args(&key, &["--input", &input]))
        .stdin(Stdio::null());
    let mut broadcaster = Proc::spawn("broadcaster", cmd);
    assert_clear_failure(&mut broadcaster, "broadcaster on random bytes", "MPEG-TS");

    for ticket in ["starling1garbage!!", "starling1", "not-a-ticket"] {
        let mut cmd = Command::new(program("starling-viewer"));
        cmd.arg(ticket)
            .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null());
        let mut viewer = Proc::spawn("viewer", cmd);
        assert_clear_failure(
            &mut viewer,
            &format!("viewer given the ticket {ticket:?}"),
            "ticket",
        );
    }
}

/// Scripts and service managers stop a program as soon as it has announced itself; the
/// signal must already get the clean exit then. A race is caught only by repetition.
#[test]
fn stop_signal_right_after_start_is_a_clean_exit() {
    const ROUNDS: usize = 10;
    let dir = TempDir::new("e2e-early-stop");
    let key = dir.file("key");
    for _ in 0..ROUNDS {
        let mut broadcaster = start_broadcaster(
            &broadcaster_args(&key, &["--listen", "127.0.0.1:0"]),
            Stdio::null(),
        );
        broadcaster.proc.assert_clean_exit_on("INT");
    }
    let _one = one_stream_at_a_time();
    let broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--listen", "127.0.0.1:0"]),
        Stdio::null(),
    );
    for round in 0..ROUNDS {
        let mut viewer = start_viewer(&broadcaster.ticket, &[]);
        viewer
            .proc
            .assert_clean_exit_on(if round % 2 == 0 { "TERM" } else { "INT" });
    }
}

/// An unusable key file, or a port another program holds: one clear line, a non-zero exit,
/// and the user's key file left exactly as it was.
#[test]
fn unusable_key_and_busy_ports_are_clear_errors() {
    let dir = TempDir::new("e2e-bad-setup");
    let key = dir.file("key");
    fs::write(&key, b"not a key\n").expect("write key");
    let mut cmd = Command::new(program("starling-broadcaster"));
    cmd.args(broadcaster_args(&key, &[])).stdin(Stdio::null());
    let mut broadcaster = Proc::spawn("broadcaster", cmd);
    assert_clear_failure(
        &mut broadcaster,
        "broadcaster with a corrupt key",
        "key file",
    );
    assert_eq!(
        fs::read(&key).expect("read key"),
        b"not a key\n",
        "the corrupt key file was changed"
    );

    let good_key = dir.file("good-key");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let tcp_addr = tcp.local_addr().expect("tcp addr").to_string();
    let mut cmd = Command::new(program("starling-broadcaster"));
    cmd.args(["--key", &good_key, "--http", &tcp_addr])
        .stdin(Stdio::null());
    let mut broadcaster = Proc::spawn("broadcaster", cmd);
    assert_clear_failure(
        &mut broadcaster,
        "broadcaster on a busy HTTP port",
        "cannot listen",
    );

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_addr = udp.local_addr().expect("udp addr").to_string();
    let mut cmd = Command::new(program("starling-broadcaster"));
    cmd.args(broadcaster_args(&good_key, &["--listen", &udp_addr]))
        .stdin(Stdio::null());
    let mut broadcaster = Proc::spawn("broadcaster", cmd);
    assert_clear_failure(
        &mut broadcaster,
        "broadcaster on a busy UDP port",
        "cannot bind",
    );

    // A well-formed ticket (nobody listens there) and a busy HTTP port for the viewer.
    let stream = starling::stream::node_id(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let ticket = starling::stream::Ticket {
        stream,
        addrs: vec!["127.0.0.1:9".parse().expect("addr")],
    }
    .encode();
    let mut cmd = Command::new(program("starling-viewer"));
    cmd.args([&ticket, "--http", &tcp_addr, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null());
    let mut viewer = Proc::spawn("viewer", cmd);
    assert_clear_failure(&mut viewer, "viewer on a busy HTTP port", "cannot listen");
    drop((tcp, udp));
}

/// A ticket whose addresses lead to a broadcaster with another key (another stream): the
/// viewer refuses the impostor at the TLS pin and says so in one line, instead of waiting
/// forever.
#[test]
fn ticket_for_another_stream_is_a_clear_error() {
    let _turn = one_stream_at_a_time();
    let dir = TempDir::new("e2e-other-stream");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(&broadcaster_args(&key, &[]), Stdio::null());
    let real = starling::stream::Ticket::decode(&broadcaster.ticket).expect("ticket parses");
    let other = starling::stream::Ticket {
        stream: starling::stream::node_id(&ed25519_dalek::SigningKey::from_bytes(&[9; 32])),
        addrs: real.addrs.clone(),
    };
    let mut cmd = Command::new(program("starling-viewer"));
    cmd.args([
        &other.encode(),
        "--http",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ])
    .stdin(Stdio::null());
    let mut viewer = Proc::spawn("viewer", cmd);
    assert_clear_failure(
        &mut viewer,
        "viewer with another stream's ticket",
        "different key",
    );
    drop(broadcaster);
}
