//! What an operator and a new user see of the real programs: `/metrics` checked by
//! promtool, the broadcaster's own output, its lock on the key, the end of a stream, the
//! dashboard, and the README against `--help`.

mod common;
mod harness;

use std::env;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{
    broadcaster_url, get, one_stream_at_a_time, poll_until, start_broadcaster, start_viewer,
    wait_for_segments, TempDir,
};

/// How long a fresh mesh may take to list its first segments: start-up of debug builds, the
/// first segments cut, the hold-back, on a busy shared machine.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);

/// A test broadcaster's flags: its own key, HTTP on any free port, then `extra`.
fn broadcaster_args<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--key", key, "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    args
}

/// Whether promtool is here. Outside CI (env `CI` unset) its absence is a loud skip; in CI
/// it is a failure, since `.ci/run` installs it.
fn require_promtool() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        env::var_os("CI").is_none(),
        "promtool is not installed, and CI must check /metrics with it: .ci/run installs the \
         Debian package prometheus"
    );
    eprintln!("SKIP: promtool not installed (Debian package prometheus); /metrics unchecked");
    false
}

/// Runs `promtool check metrics` on `text`; Err with what it said unless it found nothing.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot feed promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {said}", out.status))
    }
}

/// The value of the sample line starting `series ` in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `/metrics` at `url`: 200, the Prometheus text content type, and the text.
fn metrics_at(url: &str) -> String {
    let response = get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status, 200, "{url}: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{url} content type: {:?}",
        response.header("content-type")
    );
    response.text()
}

#[test]
fn metrics_of_both_programs_pass_promtool() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-metrics");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--segment-duration", "1"]),
        Stdio::null(),
    );
    let viewer = start_viewer(&broadcaster.ticket, &["--delay", "2"]);
    wait_for_segments(&viewer.url, 2, FIRST_SEGMENTS_TIMEOUT);

    // The histograms are fed once a second; wait until the viewer's has its first segments.
    let viewer_url = viewer.url_of("/metrics");
    let viewer_text = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        let text = metrics_at(&viewer_url);
        (sample(&text, "starling_delivery_latency_seconds_count")? >= 2.0).then_some(text)
    })
    .unwrap_or_else(|| panic!("no latency observed: {}", metrics_at(&viewer_url)));
    assert!(sample(&viewer_text, "starling_segments_verified_total").is_some_and(|v| v >= 2.0));
    assert_eq!(
        sample(&viewer_text, "starling_join_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&viewer_text, "starling_origin_connected"), Some(1.0));
    let from_origin = "starling_received_bytes_total{from=\"origin\"}";
    assert!(
        sample(&viewer_text, from_origin).is_some_and(|v| v > 0.0),
        "{viewer_text}"
    );
    for name in [
        "starling_partners",
        "starling_received_bytes_total{from=\"peers\"}",
        "starling_uploaded_bytes_total",
        "starling_segments_rejected_total",
        "starling_deadlines_missed_total",
        "starling_busy_replies_total",
        "starling_bans_total",
    ] {
        assert!(
            sample(&viewer_text, name).is_some(),
            "no {name}:\n{viewer_text}"
        );
    }

    let broadcaster_text = metrics_at(&broadcaster_url(&broadcaster, "/metrics"));
    assert_eq!(sample(&broadcaster_text, "starling_viewers"), Some(1.0));
    for name in [
        "starling_segments_published_total",
        "starling_uploaded_bytes_total",
        "starling_stream_bytes_per_second",
    ] {
        assert!(
            sample(&broadcaster_text, name).is_some_and(|v| v > 0.0),
            "{name} is not positive:\n{broadcaster_text}"
        );
    }

    if require_promtool() {
        promtool_check(&viewer_text).unwrap_or_else(|e| panic!("viewer: {e}\n{viewer_text}"));
        promtool_check(&broadcaster_text)
            .unwrap_or_else(|e| panic!("broadcaster: {e}\n{broadcaster_text}"));
        // The check itself must be able to fail: a counter without `_total` is reported.
        let bad = "# HELP starling_x X.\n# TYPE starling_x counter\nstarling_x 1\n";
        assert!(promtool_check(bad).is_err(), "promtool accepted a bad name");
    }
}

/// Waits until the stderr of `proc` holds `needle` (ANSI colours aside); panics otherwise.
fn wait_for_stderr(proc: &harness::Proc, needle: &str, timeout: Duration) {
    let found = poll_until(timeout, || {
        harness::strip_ansi(&proc.stderr_text())
            .contains(needle)
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no {needle:?} on stderr within {} s{}",
        timeout.as_secs(),
        proc.output_tail()
    );
}

#[test]
fn broadcaster_says_what_happens() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-talk");
    let key = dir.file("key");
    let mut broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--segment-duration", "1", "--private"]),
        Stdio::null(),
    );
    let quick = Duration::from_secs(10);
    wait_for_stderr(
        &broadcaster.proc,
        &format!("created a new stream key at {key}"),
        quick,
    );
    wait_for_stderr(
        &broadcaster.proc,
        "private stream: only viewers with a join token",
        quick,
    );
    // Not a terminal: the status is logged at once, then every 10 s.
    wait_for_stderr(&broadcaster.proc, "viewers 0 | offload - | up ", quick);

    let token = Command::new(harness::program("starling-broadcaster"))
        .args(["token", "--key", &key])
        .stdin(Stdio::null())
        .output()
        .expect("run the token command");
    assert!(token.status.success(), "token: {token:?}");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let mut viewer = start_viewer(&broadcaster.ticket, &["--token", &token]);
    wait_for_stderr(
        &broadcaster.proc,
        "a viewer joined (1 watching)",
        FIRST_SEGMENTS_TIMEOUT,
    );
    wait_for_stderr(
        &broadcaster.proc,
        "viewers 1 | offload ",
        Duration::from_secs(30),
    );
    viewer.proc.assert_clean_exit_on("TERM");
    wait_for_stderr(
        &broadcaster.proc,
        "a viewer left (0 watching)",
        FIRST_SEGMENTS_TIMEOUT,
    );
    broadcaster.proc.assert_clean_exit_on("INT");

    // The same key again: nothing created, and a public stream says nothing of tokens.
    let mut again = start_broadcaster(&broadcaster_args(&key, &[]), Stdio::null());
    wait_for_stderr(&again.proc, "viewers 0 | offload", quick);
    again.proc.assert_clean_exit_on("TERM");
    let said = harness::strip_ansi(&again.proc.stderr_text());
    assert!(!said.contains("created a new stream key"), "{said}");
    assert!(!said.contains("private stream"), "{said}");
}

#[test]
fn one_broadcaster_per_key() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-lock");
    let key = dir.file("key");
    let mut first = start_broadcaster(&broadcaster_args(&key, &[]), Stdio::null());

    let mut cmd = Command::new(harness::program("starling-broadcaster"));
    cmd.args(broadcaster_args(&key, &[])).stdin(Stdio::null());
    let mut second = harness::Proc::spawn("second broadcaster", cmd);
    harness::assert_clear_failure(
        &mut second,
        "a second broadcaster on one key",
        "already running",
    );
    let said = harness::strip_ansi(&second.stderr_text());
    assert!(
        said.contains(&format!("(pid {})", first.proc.id())),
        "{said}"
    );
    assert!(
        said.contains(&key),
        "the refusal should name the key: {said}"
    );
    assert!(
        !said.contains("starling1"),
        "the refused broadcaster printed a ticket: {said}"
    );
    assert!(
        first.proc.try_status().is_none(),
        "the first broadcaster stopped{}",
        first.proc.output_tail()
    );

    // A broadcaster killed outright leaves its lock file; the lock goes with the process.
    let _ = Command::new("kill")
        .args(["-KILL", &first.proc.id().to_string()])
        .status();
    first.proc.wait_exit(harness::EXIT_TIMEOUT).expect("killed");
    assert!(std::path::Path::new(&format!("{key}.lock")).exists());
    let mut after = start_broadcaster(&broadcaster_args(&key, &[]), Stdio::null());
    let ticket = |t: &str| starling::stream::Ticket::decode(t).expect("ticket").stream;
    assert_eq!(
        ticket(&after.ticket),
        ticket(&first.ticket),
        "same key, same stream"
    );
    after.proc.assert_clean_exit_on("TERM");
}

/// Stops a live broadcaster with `signal` while a viewer's player (this test, fetching what
/// the playlist lists) watches: the viewer must list every segment it holds, end its
/// playlist, say so, and exit 0 once the player fetched the last segment.
fn stopped_broadcaster_ends_the_stream(signal: &str) {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-end");
    let key = dir.file("key");
    let mut broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--segment-duration", "1"]),
        Stdio::null(),
    );
    let mut viewer = start_viewer(&broadcaster.ticket, &["--delay", "3"]);
    let (playing, _) = wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT);
    // The player has started: it fetched the first segment listed.
    let first = harness::resolve(&viewer.url, &playing.entries[0].uri);
    assert_eq!(get(&first).map(|r| r.status).ok(), Some(200), "{first}");
    broadcaster.proc.assert_clean_exit_on(signal);
    let said = harness::strip_ansi(&broadcaster.proc.stderr_text());
    assert!(
        said.contains("asked to stop: the stream ends after segment"),
        "the broadcaster did not say it ends the stream{}",
        broadcaster.proc.output_tail()
    );

    let mut last_text = String::new();
    let ended = poll_until(Duration::from_secs(30), || {
        let (playlist, text) = harness::fetch_playlist(&viewer.url)?;
        last_text = text;
        playlist.ended.then_some(playlist)
    })
    .unwrap_or_else(|| {
        panic!(
            "the playlist never ended:\n{last_text}{}",
            viewer.proc.output_tail()
        )
    });
    let stats = harness::stats_at(&viewer.url_of("/stats"));
    let newest = stats["newest_segment"].as_u64().expect("newest_segment");
    assert_eq!(
        ended.max_number(),
        Some(newest),
        "the ended playlist does not list the newest segment held:\n{last_text}"
    );
    let listed: Vec<u64> = ended.entries.iter().map(|e| e.number).collect();
    assert!(
        listed.windows(2).all(|w| w[1] == w[0] + 1) && listed.len() >= 3,
        "the ended playlist should be one run of the held segments: {listed:?}"
    );
    wait_for_stderr(
        &viewer.proc,
        "the broadcaster ended the stream",
        Duration::from_secs(10),
    );
    assert!(
        viewer.proc.try_status().is_none(),
        "the viewer exited before its player fetched the last segment{}",
        viewer.proc.output_tail()
    );

    // The player reads to the end; then the viewer has nothing left to do.
    for entry in &ended.entries {
        let url = harness::resolve(&viewer.url, &entry.uri);
        let got = get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(got.status, 200, "{url}");
    }
    let status = viewer
        .proc
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the viewer did not exit{}", viewer.proc.output_tail()));
    assert!(
        status.success(),
        "viewer exit {status}{}",
        viewer.proc.output_tail()
    );
    let said = harness::strip_ansi(&viewer.proc.stderr_text());
    assert!(
        said.contains("the stream has ended and the player has every segment: exiting"),
        "{said}"
    );
    assert!(!said.contains("unreachable"), "{said}");
}

#[test]
fn sigterm_ends_the_stream_for_viewers() {
    stopped_broadcaster_ends_the_stream("TERM");
}

#[test]
fn ctrl_c_ends_the_stream_for_viewers() {
    stopped_broadcaster_ends_the_stream("INT");
}

/// Asserts `proc` failed with one clear line holding `needle`, having printed nothing on
/// stdout (no ticket, no URL).
fn assert_failed_silently(proc: &mut harness::Proc, what: &str, needle: &str) {
    harness::assert_clear_failure(proc, what, needle);
    assert!(
        proc.stdout_text().trim().is_empty(),
        "{what}: printed on stdout{}",
        proc.output_tail()
    );
}

#[test]
fn an_input_that_fails_is_never_announced() {
    if !common::players::require_tool("ffmpeg") {
        return;
    }
    let dir = TempDir::new("op-announce");
    let key = dir.file("key");
    let missing = dir.file("missing.mp4");
    let mut cmd = Command::new(harness::program("starling-broadcaster"));
    cmd.args(broadcaster_args(&key, &["--input", &missing]))
        .stdin(Stdio::null());
    let mut broadcaster = harness::Proc::spawn("broadcaster", cmd);
    assert_failed_silently(&mut broadcaster, "a missing input file", "cannot open");

    // A file ffmpeg cannot read (an MP4 cut off after its first box): found out by reading
    // it, still before any ticket.
    let junk = dir.file("broken.mp4");
    let mut mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    mp4.resize(4096, 0);
    std::fs::write(&junk, mp4).expect("write the broken file");
    let mut cmd = Command::new(harness::program("starling-broadcaster"));
    cmd.args(broadcaster_args(&key, &["--input", &junk]))
        .stdin(Stdio::null());
    let mut broadcaster = harness::Proc::spawn("broadcaster", cmd);
    assert_failed_silently(
        &mut broadcaster,
        "an input ffmpeg cannot read",
        "ffmpeg failed",
    );
}

#[test]
fn a_refused_viewer_prints_no_url() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-refused");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(&broadcaster_args(&key, &["--private"]), Stdio::null());
    let mut cmd = Command::new(harness::program("starling-viewer"));
    cmd.arg(&broadcaster.ticket)
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .env_remove("STARLING_TOKEN")
        .stdin(Stdio::null());
    let mut viewer = harness::Proc::spawn("viewer", cmd);
    assert_failed_silently(&mut viewer, "a viewer without a token", "private");
}

/// How many times `needle` appears in the stderr of `proc`.
fn stderr_count(proc: &harness::Proc, needle: &str) -> usize {
    harness::strip_ansi(&proc.stderr_text())
        .matches(needle)
        .count()
}

/// The words of the warning about segments longer than asked.
const LONG_SEGMENTS: &str = "come out";

/// Broadcasts `input` to its end with `extra` flags (1 s segments unless they say) and no
/// viewer; returns the finished broadcaster (exit 0 checked), its playlist at the last moment
/// it was read, and the first segment it listed.
fn broadcast_to_the_end(input: &str, extra: &[&str]) -> (harness::Proc, String, Vec<u8>) {
    broadcast_to_the_end_from(input, extra, Stdio::null())
}

/// [`broadcast_to_the_end`] with `stdin` for the broadcaster (for `--input -`).
fn broadcast_to_the_end_from(
    input: &str,
    extra: &[&str],
    stdin: Stdio,
) -> (harness::Proc, String, Vec<u8>) {
    let dir = TempDir::new("op-segments");
    let key = dir.file("key");
    let mut args = broadcaster_args(&key, &["--input", input]);
    args.extend_from_slice(extra);
    if !extra.contains(&"--segment-duration") {
        args.extend(["--segment-duration", "1"]);
    }
    let mut broadcaster = start_broadcaster(&args, stdin);
    let playlist_url = broadcaster_url(&broadcaster, "/live.m3u8");
    let mut playlist = String::new();
    let mut segment = Vec::new();
    while broadcaster.proc.try_status().is_none() {
        if let Some((listed, text)) = harness::fetch_playlist(&playlist_url) {
            playlist = text;
            if let (true, Some(first)) = (segment.is_empty(), listed.entries.first()) {
                let url = harness::resolve(&playlist_url, &first.uri);
                segment = get(&url).map(|r| r.body).unwrap_or_default();
            }
        }
        std::thread::sleep(harness::POLL_INTERVAL);
    }
    let status = broadcaster
        .proc
        .wait_exit(harness::EXIT_TIMEOUT)
        .expect("exited");
    assert!(
        status.success(),
        "{status}{}",
        broadcaster.proc.output_tail()
    );
    (broadcaster.proc, playlist, segment)
}

/// The EXTINF durations of a playlist, seconds.
fn durations(playlist: &str) -> Vec<f64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|d| d.split(',').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn keyframes_further_apart_than_the_target_are_warned_once() {
    let _one = one_stream_at_a_time();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    // 12 s with a keyframe every 4 s, asked for 1 s segments.
    let (proc, playlist, _) = broadcast_to_the_end(&format!("{fixtures}/gop4s.ts"), &[]);
    let long = durations(&playlist);
    assert!(long.iter().filter(|&&d| d > 3.5).count() >= 2, "{playlist}");
    assert_eq!(
        stderr_count(&proc, LONG_SEGMENTS),
        1,
        "one warning, however many long segments{}",
        proc.output_tail()
    );
    assert!(
        proc.stderr_text().contains("--encode"),
        "{}",
        proc.output_tail()
    );
    // A keyframe every second, as asked: no warning.
    let (proc, playlist, _) = broadcast_to_the_end(&format!("{fixtures}/h264.ts"), &[]);
    assert!(
        durations(&playlist).iter().all(|&d| d <= 1.25),
        "{playlist}"
    );
    assert_eq!(
        stderr_count(&proc, LONG_SEGMENTS),
        0,
        "{}",
        proc.output_tail()
    );
}

#[test]
fn encode_gives_segments_as_long_as_asked_at_the_asked_size() {
    if !common::players::require_tool("ffmpeg") {
        return;
    }
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-encode");
    // 8 s of H.264 with a keyframe every 4 s, which would be copied as it is.
    let clip = dir.file("gop4s.mp4");
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
            "-t",
            "8",
        ])
        .args(["-c:v", "libx264", "-preset", "veryfast"])
        .args([
            "-x264-params",
            "keyint=100:min-keyint=100:scenecut=0",
            &clip,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ffmpeg");
    assert!(made.status.success(), "{made:?}");

    let (proc, playlist, segment) = broadcast_to_the_end(
        &clip,
        &["--encode", "--size", "160x90", "--video-bitrate", "200k"],
    );
    let got = durations(&playlist);
    assert!(got.len() >= 4, "{playlist}");
    // The last segment is whatever was left of the input.
    let whole = &got[..got.len() - 1];
    assert!(
        whole.iter().all(|&d| (0.9..=1.25).contains(&d)),
        "segments not 1 s long: {got:?}\n{playlist}"
    );
    assert_eq!(
        stderr_count(&proc, LONG_SEGMENTS),
        0,
        "{}",
        proc.output_tail()
    );

    // The video has the size asked for.
    let first = dir.file("first.ts");
    std::fs::write(&first, &segment).expect("write the segment");
    let size = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .args(["-i", &first])
        .output()
        .expect("run ffprobe");
    // MPEG-TS lists the stream under its program too: every line that names it says 160x90.
    let said = String::from_utf8_lossy(&size.stdout).into_owned();
    let sizes: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|l| l.trim() == "160,90"),
        "{said}{}",
        String::from_utf8_lossy(&size.stderr)
    );
}

/// Ends a process group (SIGTERM) when dropped: what a test started leaves with it.
struct StopGroup(u32);

impl Drop for StopGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// The demo script with the programs of this build (a stand-in `cargo` that builds
/// nothing): free ports, its logs kept where it says, a clean stop on Ctrl-C.
#[test]
fn demo_script_picks_free_ports_and_keeps_its_logs() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-demo");
    let release = dir.path().join("target").join("release");
    std::fs::create_dir_all(&release).expect("release dir");
    for name in ["starling-broadcaster", "starling-viewer"] {
        std::os::unix::fs::symlink(harness::program(name), release.join(name)).expect("link");
    }
    let fake_bin = dir.path().join("bin");
    std::fs::create_dir_all(&fake_bin).expect("bin dir");
    let cargo = fake_bin.join("cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\necho \"   Compiling (stand-in cargo) $*\" >&2\n",
    )
    .expect("write the stand-in cargo");
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the stand-in cargo");
    let logs = dir.path().join("logs");
    // The usual first port is taken: the demo must not need it.
    let _taken = std::net::TcpListener::bind("127.0.0.1:8080");

    let path = format!(
        "{}:{}",
        fake_bin.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    // Its own process group, so a failed test can stop the programs the script started.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .arg("1")
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env("STARLING_DEMO_LOGS", &logs)
        .stdin(Stdio::null());
    let mut demo = harness::Proc::spawn("demo", cmd);
    let _group = StopGroup(demo.id());
    let ready = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        demo.stdout_text().contains("Press Ctrl-C").then_some(())
    });
    assert!(
        ready.is_some(),
        "the demo never got ready{}",
        demo.output_tail()
    );
    let out = demo.stdout_text();
    // cargo's progress is shown (on stderr, where cargo writes it).
    assert!(
        demo.stderr_text()
            .contains("Compiling (stand-in cargo) build --release"),
        "{}",
        demo.output_tail()
    );
    assert!(
        out.contains(&format!("Logs of this run: {}", logs.display())),
        "{out}"
    );
    let url = out
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:") && w.ends_with("/live.m3u8"))
        .unwrap_or_else(|| panic!("no viewer URL:\n{out}"));
    assert!(!url.contains(":8080/"), "{url}");
    assert!(
        out.contains("Broadcaster dashboard: http://127.0.0.1:"),
        "{out}"
    );
    wait_for_segments(url, 1, FIRST_SEGMENTS_TIMEOUT);

    demo.interrupt();
    let status = demo
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the demo did not stop{}", demo.output_tail()));
    assert_eq!(status.code(), Some(130), "{}", demo.output_tail());
    assert!(
        demo.stdout_text().contains(&format!(
            "the programs' logs are kept in {}",
            logs.display()
        )),
        "{}",
        demo.output_tail()
    );
    for log in ["broadcaster.log", "viewer0.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap_or_default();
        assert!(!text.is_empty(), "{log} was not kept{}", demo.output_tail());
    }
}

#[test]
fn broadcaster_dashboard_and_its_data() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("op-dashboard");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(
        &broadcaster_args(&key, &["--segment-duration", "1"]),
        Stdio::null(),
    );
    let viewer = start_viewer(&broadcaster.ticket, &["--delay", "2"]);
    wait_for_segments(&viewer.url, 2, FIRST_SEGMENTS_TIMEOUT);

    let page_url = broadcaster_url(&broadcaster, "/");
    let page = get(&page_url).expect("GET the dashboard");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    for part in [
        "Starling broadcaster",
        "id=\"viewers\"",
        "id=\"rates\"",
        "fetch(\"history\"",
    ] {
        assert!(html.contains(part), "the dashboard lacks {part:?}");
    }
    // Its only script from elsewhere is the player, from the broadcaster itself (no CDN).
    let sources: Vec<&str> = html
        .split("<script src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(sources, ["hls.min.js"], "the dashboard's scripts");
    let player = get(&broadcaster_url(&broadcaster, "/hls.min.js")).expect("GET /hls.min.js");
    assert_eq!(player.status, 200);
    assert!(
        html.contains("loadSource(\"live.m3u8\")"),
        "the dashboard plays no live edge"
    );

    // The chart's data: a sample a second, with the viewer counted and bytes going out.
    let history_url = broadcaster_url(&broadcaster, "/history");
    let samples = poll_until(FIRST_SEGMENTS_TIMEOUT, || {
        let v = harness::stats_at(&history_url);
        let samples = v["samples"].as_array()?.clone();
        let last = samples.last()?;
        (samples.len() >= 3 && last["viewers"] == 1 && last["uploaded_bytes"].as_u64()? > 0)
            .then_some(samples)
    })
    .unwrap_or_else(|| {
        panic!(
            "no history with the viewer: {}",
            harness::stats_at(&history_url)
        )
    });
    for field in [
        "unix_ms",
        "viewers",
        "uploaded_bytes",
        "delivered_bytes",
        "segments_published",
    ] {
        assert!(
            samples[0].get(field).is_some(),
            "no {field}: {}",
            samples[0]
        );
    }
    let times: Vec<u64> = samples
        .iter()
        .filter_map(|s| s["unix_ms"].as_u64())
        .collect();
    assert!(times.windows(2).all(|t| t[0] < t[1]), "{times:?}");
    let stats = harness::broadcaster_stats(&broadcaster);
    assert!(
        harness::count(&stats, "bytes_delivered_estimate") > 0,
        "{stats}"
    );
    // A viewer has no history of its own.
    assert_eq!(get(&viewer.url_of("/history")).expect("GET").status, 404);

    // The page's own script, run by a real browser when one is installed.
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("SKIP: chromium not installed; the dashboard's script was not run in a browser");
        return;
    };
    let dom = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .args(["--dump-dom", &page_url])
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<b id=\"viewers\">1</b>"),
        "viewers not filled in:\n{dom}"
    );
    assert!(dom.contains("<polyline"), "no chart drawn:\n{dom}");
    // The status line (the script itself names the failure text, so look only there).
    let state = dom
        .split("<small id=\"state\">")
        .nth(1)
        .and_then(|rest| rest.split("</small>").next())
        .unwrap_or("");
    assert!(state.starts_with("updated"), "status: {state}\n{dom}");
}

/// Every `--flag` (and `-x` short flag) a `--help` text names.
fn flags_in_help(help: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for word in
        help.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '`' | '(' | ')'))
    {
        let name = word.trim_end_matches(['.', ';', ':']);
        let long = name.strip_prefix("--").is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
        let short = name.len() == 2
            && name.starts_with('-')
            && name.chars().nth(1).is_some_and(|c| c.is_ascii_alphabetic());
        if (long || short) && !flags.iter().any(|f| f == name) {
            flags.push(name.to_string());
        }
    }
    flags
}

#[test]
fn readme_names_every_flag_and_stays_short() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let helps = [
        ("starling-broadcaster", vec!["--help"]),
        ("starling-broadcaster", vec!["token", "--help"]),
        ("starling-viewer", vec!["--help"]),
    ];
    let mut missing = Vec::new();
    for (program, args) in helps {
        let out = Command::new(harness::program(program))
            .args(&args)
            .output()
            .expect("run --help");
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let flags = flags_in_help(&help);
        assert!(
            flags.len() >= 5,
            "{program} {args:?} names few flags: {flags:?}\n{help}"
        );
        for flag in flags {
            // A flag is named as itself: `--key` must not be found inside `--key-file`.
            let named = readme.match_indices(&flag).any(|(at, _)| {
                let next = readme[at + flag.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if !named {
                missing.push(format!("{program} {}: {flag}", args.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "README.md does not name: {missing:?}");
    let lines = readme.lines().count();
    assert!(
        lines <= 260,
        "README.md has {lines} lines; keep it for users, details in docs/"
    );
    assert!(readme.contains("cargo test --workspace"));
    // Every document the README links to exists.
    for link in readme
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
    {
        if !link.starts_with("http") && !link.starts_with('#') {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(link);
            assert!(
                path.exists(),
                "README.md links to {link}, which does not exist"
            );
        }
    }
}

#[test]
fn flags_in_help_finds_long_and_short_flags() {
    let help = "Usage: x [OPTIONS]\n  -h, --help  Print help\n      --max-upload <RATE>  Cap [default: 4M]\n  \
                implies --encode; see e.g. 1280x720 or -12\n";
    assert_eq!(
        flags_in_help(help),
        ["-h", "--help", "--max-upload", "--encode"]
    );
}

/// The README's stdin example forces a keyframe every 2 s, for 2 s segments: it gives them.
#[test]
fn readme_stdin_example_gives_the_segments_it_claims() {
    if !common::players::require_tool("ffmpeg") {
        return;
    }
    const KEYFRAMES: &str = "expr:gte(t,n_forced*2)";
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    assert!(
        readme.contains(&format!("-force_key_frames \"{KEYFRAMES}\"")),
        "the README's stdin example changed; change this test with it"
    );
    let _one = one_stream_at_a_time();
    // 30 fps, where the `-g 50` the README once had gave 3.3 s segments.
    let mut source = Command::new("ffmpeg");
    source
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=30",
            "-t",
            "9",
        ])
        .args(["-c:v", "libx264", "-force_key_frames", KEYFRAMES])
        .args(["-f", "mpegts", "-"])
        .stdin(Stdio::null());
    let (_source, ts) = harness::Proc::spawn_feeding("ffmpeg-source", source);
    let (proc, playlist, _) =
        broadcast_to_the_end_from("-", &["--segment-duration", "2"], Stdio::from(ts));
    let got = durations(&playlist);
    assert!(got.len() >= 3, "{playlist}");
    let whole = &got[..got.len() - 1];
    assert!(
        whole.iter().all(|&d| (1.9..=2.1).contains(&d)),
        "not 2 s segments: {got:?}\n{playlist}"
    );
    assert_eq!(
        stderr_count(&proc, LONG_SEGMENTS),
        0,
        "{}",
        proc.output_tail()
    );
}
