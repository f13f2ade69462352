//! Proves the real-player checks in `common::players` against HLS that ffmpeg
//! itself makes: a live sliding window, a stream with an EXT-X-DISCONTINUITY,
//! a missing playlist and undecodable segments. Needs ffmpeg and VLC; skips
//! loudly without them, except on CI.
#![allow(clippy::unwrap_used)] // tests may unwrap (team standard)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::players::{ffmpeg_reads_hls, require_tool, vlc_plays_hls, StaticServer};

/// Frame rate of every stream these tests make.
const FPS: u32 = 25;
/// Media seconds each check plays.
const SECONDS: u32 = 5;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("starling-players-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("seg")).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Arguments for a 320x180, 25 fps test picture with a tone, as H.264 + AAC
/// cut into 1-second HLS segments under `seg/`.
fn test_source_args(tone_hz: u32) -> Vec<String> {
    let args = format!(
        "-nostdin -loglevel error -f lavfi -i testsrc2=size=320x180:rate={FPS} \
         -f lavfi -i sine=frequency={tone_hz}:sample_rate=44100 \
         -c:v libx264 -preset ultrafast -g {FPS} -c:a aac -f hls -hls_time 1 -hls_base_url seg/"
    );
    args.split_whitespace().map(String::from).collect()
}

/// ffmpeg writing a live HLS window (5 segments, old ones deleted) in real
/// time, as a viewer's server would present it. Killed on drop.
struct LiveSource {
    ffmpeg: Child,
    dir: TempDir,
}

impl LiveSource {
    /// Starts the encoder and returns once the playlist lists 3 segments.
    fn start() -> Self {
        let dir = TempDir::new("live");
        let log = fs::File::create(dir.path().join("ffmpeg.log")).unwrap();
        // `-re` paces the picture input in real time, as a live encoder runs.
        let mut args = vec!["-re".to_string()];
        args.extend(test_source_args(440));
        // -t caps the encoder even if this test process dies without dropping it.
        args.extend(["-t", "120", "-hls_list_size", "5"].map(String::from));
        args.extend(
            ["-hls_flags", "delete_segments+program_date_time+temp_file"].map(String::from),
        );
        args.push("-hls_segment_filename".into());
        args.push(dir.path().join("seg/%d.ts").display().to_string());
        args.push(dir.path().join("live.m3u8").display().to_string());
        let ffmpeg = Command::new("ffmpeg")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut source = Self { ffmpeg, dir };
        source.wait_for_segments(3);
        source
    }

    fn wait_for_segments(&mut self, count: usize) {
        let playlist = self.dir.path().join("live.m3u8");
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&playlist).unwrap_or_default();
            if text.matches("#EXTINF").count() >= count {
                return;
            }
            if let Some(status) = self.ffmpeg.try_wait().unwrap() {
                let log =
                    fs::read_to_string(self.dir.path().join("ffmpeg.log")).unwrap_or_default();
                panic!(
                    "the test HLS encoder exited ({status}) before writing {count} segments: {log}"
                );
            }
            assert!(
                Instant::now() < give_up,
                "no {count} HLS segments from the test encoder after 60 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        let _ = self.ffmpeg.kill();
        let _ = self.ffmpeg.wait();
    }
}

/// Encodes a finished 4-second HLS run named `name` in `dir` (segments
/// `seg/<name><n>.ts`) and returns its playlist text.
fn encode_run(dir: &Path, name: &str, tone_hz: u32) -> String {
    let playlist = dir.join(format!("{name}.m3u8"));
    let status = Command::new("ffmpeg")
        .args(test_source_args(tone_hz))
        .args(["-t", "4", "-hls_list_size", "0", "-hls_segment_filename"])
        .arg(dir.join(format!("seg/{name}%d.ts")))
        .arg(&playlist)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg could not encode test run {name}");
    fs::read_to_string(playlist).unwrap()
}

/// Two separately encoded runs joined by EXT-X-DISCONTINUITY — timestamps and
/// MPEG-TS continuity restart, as after a broadcaster restart — then ENDLIST.
fn discontinuous_stream(dir: &Path) {
    let first = encode_run(dir, "a", 440);
    let second = encode_run(dir, "b", 880);
    let mut playlist: Vec<&str> = first.lines().filter(|l| *l != "#EXT-X-ENDLIST").collect();
    playlist.push("#EXT-X-DISCONTINUITY");
    playlist.extend(
        second
            .lines()
            .filter(|l| l.starts_with("#EXTINF") || !l.starts_with('#')),
    );
    playlist.push("#EXT-X-ENDLIST");
    assert_eq!(
        playlist.iter().filter(|l| l.starts_with("seg/")).count(),
        8,
        "{playlist:?}"
    );
    fs::write(dir.join("live.m3u8"), playlist.join("\n") + "\n").unwrap();
}

/// A finished playlist of three segments of noise that no player can decode.
fn noise_stream(dir: &Path) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut playlist = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n",
    );
    for n in 0..3 {
        let noise: Vec<u8> = (0..188 * 500)
            .map(|_| {
                // xorshift64: deterministic noise, no dependency.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        fs::write(dir.join(format!("seg/{n}.ts")), noise).unwrap();
        playlist.push_str(&format!("#EXTINF:2.000,\nseg/{n}.ts\n"));
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    fs::write(dir.join("live.m3u8"), playlist).unwrap();
}

#[test]
fn ffmpeg_reads_a_live_sliding_window() {
    if !require_tool("ffmpeg") {
        return;
    }
    let source = LiveSource::start();
    let server = StaticServer::serve_dir(source.dir.path()).unwrap();
    let report =
        ffmpeg_reads_hls(&server.url("live.m3u8"), SECONDS).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report:?}");
    assert_eq!(report.frame_rate, Some(f64::from(FPS)));
    assert!(
        report.video_frames >= u64::from(SECONDS * FPS / 2),
        "{report:?}"
    );
}

#[test]
fn vlc_plays_a_live_sliding_window() {
    if !require_tool("ffmpeg") || !require_tool("cvlc") {
        return;
    }
    let source = LiveSource::start();
    let server = StaticServer::serve_dir(source.dir.path()).unwrap();
    let report = vlc_plays_hls(&server.url("live.m3u8"), SECONDS).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report:?}");
    assert_eq!(report.frame_rate, Some(f64::from(FPS)));
    assert!(
        report.video_frames >= u64::from(SECONDS * FPS / 2),
        "{report:?}"
    );
}

#[test]
fn players_play_across_a_discontinuity() {
    if !require_tool("ffmpeg") || !require_tool("cvlc") {
        return;
    }
    let dir = TempDir::new("discontinuity");
    discontinuous_stream(dir.path());
    let server = StaticServer::serve_dir(dir.path()).unwrap();
    let url = server.url("live.m3u8");
    // 6 of the 8 seconds: the check must get past the join to pass.
    let ffmpeg = ffmpeg_reads_hls(&url, 6).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{ffmpeg:?}");
    let vlc = vlc_plays_hls(&url, 6).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{vlc:?}");
}

#[test]
fn players_fail_on_a_missing_playlist() {
    if !require_tool("ffmpeg") || !require_tool("cvlc") {
        return;
    }
    let dir = TempDir::new("missing");
    let server = StaticServer::serve_dir(dir.path()).unwrap();
    let url = server.url("live.m3u8");
    let ffmpeg = ffmpeg_reads_hls(&url, SECONDS).unwrap_err();
    assert!(
        ffmpeg.contains("404"),
        "ffmpeg's error should show the 404: {ffmpeg}"
    );
    let vlc = vlc_plays_hls(&url, SECONDS).unwrap_err();
    assert!(
        vlc.contains("404"),
        "VLC's error should show the 404: {vlc}"
    );
}

#[test]
fn players_fail_on_undecodable_segments() {
    if !require_tool("ffmpeg") || !require_tool("cvlc") {
        return;
    }
    let dir = TempDir::new("noise");
    noise_stream(dir.path());
    let server = StaticServer::serve_dir(dir.path()).unwrap();
    let url = server.url("live.m3u8");
    let ffmpeg = ffmpeg_reads_hls(&url, 2).unwrap_err();
    eprintln!("ffmpeg on noise: {ffmpeg}");
    let vlc = vlc_plays_hls(&url, 2).unwrap_err();
    eprintln!("VLC on noise: {vlc}");
}

#[test]
fn static_server_serves_files_and_refuses_the_rest() {
    let dir = TempDir::new("server");
    fs::write(dir.path().join("live.m3u8"), "#EXTM3U\n").unwrap();
    fs::write(dir.path().join("seg/7.ts"), [0x47u8; 188]).unwrap();
    let server = StaticServer::serve_dir(dir.path()).unwrap();
    let get = |request: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        reply
    };
    let reply = get("GET /live.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: application/vnd.apple.mpegurl\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n#EXTM3U\n"), "{text}");
    let reply = get("GET /seg/7.ts?x=1 HTTP/1.1\r\n\r\n");
    assert!(String::from_utf8_lossy(&reply).contains("Content-Type: video/mp2t\r\n"));
    assert!(reply.ends_with(&[0x47u8; 188]));
    for (request, status) in [
        ("GET /seg/8.ts HTTP/1.1\r\n\r\n", "404"),
        ("GET /../live.m3u8 HTTP/1.1\r\n\r\n", "404"),
        ("GET /seg HTTP/1.1\r\n\r\n", "404"),
        ("POST /live.m3u8 HTTP/1.1\r\n\r\n", "405"),
    ] {
        let reply = get(request);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?} → {text}"
        );
    }
}

#[test]
fn require_tool_finds_tools_and_reports_missing_ones() {
    assert!(require_tool("sh"));
    let on_ci = std::env::var("CI").as_deref() == Ok("true");
    let missing = std::panic::catch_unwind(|| require_tool("starling-no-such-tool"));
    if on_ci {
        assert!(missing.is_err(), "on CI a missing tool must fail the test");
    } else {
        assert_eq!(missing.ok(), Some(false));
    }
}
