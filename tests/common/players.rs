//! Real-player checks for integration tests: run ffmpeg or VLC as an ordinary
//! HLS client against a URL and say whether it decoded the stream cleanly.
//! Every player run is bounded in time and output; a tiny static HTTP server
//! lets tests serve a directory of HLS files on loopback.
//!
//! Use: `mod common;` then `common::players::{require_tool, ffmpeg_reads_hls, ..}`.
//! A test first calls [`require_tool`] so that it skips loudly where a
//! player is missing — except on CI (`CI=true`), where a missing player fails.

// Each test crate uses only part of this module, and its `pub` items are
// reachable only inside that crate.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::env;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The ordinary account VLC runs under when the tests run as root (VLC
/// refuses to run as root).
pub const VLC_USER: &str = "starling-test";

/// How long a player may take beyond the media time it was asked to play:
/// start-up, buffering and a slow shared machine.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// How long a player may take to exit once its work is done.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often VLC is asked for its statistics.
const VLC_POLL: Duration = Duration::from_millis(500);
/// Longest player log line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 1024;
/// Lines in flight from a player's pipes to the thread that reads them.
const LINE_QUEUE: usize = 256;
/// Notable log lines kept for an error message.
const LOG_TAIL: usize = 20;
/// Warnings kept in a [`PlayReport`].
const MAX_WARNINGS: usize = 20;

/// What a player did with a stream it played successfully.
#[derive(Debug, Clone)]
pub struct PlayReport {
    /// Which player ran: `"ffmpeg"` or `"vlc"`.
    pub player: &'static str,
    /// Video frames decoded (ffmpeg) or shown (VLC).
    pub video_frames: u64,
    /// Video frames VLC decoded too late to show (always 0 for ffmpeg).
    pub frames_lost: u64,
    /// The video frame rate the player found in the stream, if it said one.
    pub frame_rate: Option<f64>,
    /// Warnings the player logged (at most 20): not failures, worth a look.
    pub warnings: Vec<String>,
    /// Wall-clock time the check took.
    pub elapsed: Duration,
}

/// True if `name` is an executable on PATH. If not, prints a loud SKIP line
/// and returns false — or, when env `CI` is `true`, panics: CI must run
/// every player test, so a missing tool is a CI failure.
pub fn require_tool(name: &str) -> bool {
    if find_on_path(name).is_some() {
        return true;
    }
    if env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is not installed, and CI must run every player test: install it in .ci/run");
    }
    eprintln!("SKIP: {name} not installed — this test needs it (on CI this fails)");
    false
}

/// Plays `url` with ffmpeg as a standard HLS client, decoding every stream
/// into the null muxer for `seconds` of media time.
///
/// Ok when ffmpeg exits cleanly, logged no error, and decoded at least half
/// the video frames that `seconds` hold (`seconds × fps / 2`, or `seconds`
/// frames when ffmpeg names no frame rate). A stream that ends sooner fails.
/// ffmpeg is killed after `seconds` + 30 s of wall time.
///
/// Errors from ffmpeg's own null output (timestamps going backwards after an
/// EXT-X-DISCONTINUITY) are not the stream's fault and count as warnings.
pub fn ffmpeg_reads_hls(url: &str, seconds: u32) -> Result<PlayReport, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(seconds)) + DEADLINE_SLACK;
    let mut cmd = Command::new("ffmpeg");
    // `level` prefixes each log line with its level, so errors are told from
    // warnings, and `info` shows the input's frame rate.
    cmd.args([
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+info",
    ])
    .args(["-progress", "pipe:1", "-t", &seconds.to_string(), "-i", url])
    .args(["-f", "null", "-"]);
    let mut session = Session::spawn(cmd, false)?;
    let mut progress = FfmpegProgress::default();
    let mut log = FfmpegLog::default();
    loop {
        match session.next_line(deadline) {
            Next::Line(Pipe::Stdout, line) => progress.feed(&line),
            Next::Line(Pipe::Stderr, line) => log.feed(&line),
            Next::Closed => break,
            Next::Timeout => {
                return Err(format!(
                    "ffmpeg did not finish {seconds} s of {url} within {} s (decoded {} frames so far){}",
                    (deadline - started).as_secs(),
                    progress.frames,
                    log.tail.render()
                ));
            }
        }
    }
    let status = session.wait(EXIT_GRACE);
    let report = PlayReport {
        player: "ffmpeg",
        video_frames: progress.frames,
        frames_lost: 0,
        frame_rate: log.frame_rate,
        warnings: log.warnings.clone(),
        elapsed: started.elapsed(),
    };
    if !log.errors.is_empty() {
        return Err(format!(
            "ffmpeg logged {} error(s) reading {url}: {}{}",
            log.errors.len(),
            log.errors.join(" | "),
            log.tail.render()
        ));
    }
    match status {
        Some(status) if status.success() => {}
        Some(status) => {
            return Err(format!(
                "ffmpeg reading {url} exited with {status}{}",
                log.tail.render()
            ))
        }
        None => {
            return Err(format!(
                "ffmpeg reading {url} did not exit{}",
                log.tail.render()
            ))
        }
    }
    let need = frames_needed(seconds, report.frame_rate);
    if report.video_frames < need {
        return Err(format!(
            "ffmpeg decoded only {} video frames of {url} in {seconds} s (frame rate {:?}), needs {need}{}",
            report.video_frames,
            report.frame_rate,
            log.tail.render()
        ));
    }
    Ok(report)
}

/// Plays `url` in VLC, headless (dummy video and audio output, so frames are
/// really decoded and paced), until `seconds` of video have been shown or
/// lost, or VLC reaches the end of the stream. VLC runs as [`VLC_USER`] when
/// this process is root, creating that user if needed.
///
/// VLC is driven through its `oldrc` (remote control) interface on stdin/stdout and asked for
/// `stats` twice a second. Ok when it showed at least half the frames that
/// `seconds` hold (`seconds × fps / 2`, or `seconds` frames with no known
/// frame rate — then it plays `seconds` of wall time) and counted no corrupt
/// MPEG-TS data. VLC is killed after `seconds` + 30 s of wall time.
pub fn vlc_plays_hls(url: &str, seconds: u32) -> Result<PlayReport, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(seconds)) + DEADLINE_SLACK;
    let mut cmd = vlc_command()?;
    cmd.args([
        "--intf",
        "oldrc",
        "--rc-fake-tty",
        "--no-dbus",
        "--stats",
        "--verbose=1",
    ])
    .args([
        "--vout",
        "dummy",
        "--aout",
        "dummy",
        "--no-video-title-show",
    ])
    .args(["--play-and-exit", url]);
    let mut session = Session::spawn(cmd, true)?;
    let mut vlc = VlcState::default();
    let mut next_poll = Instant::now() + VLC_POLL;
    let mut ended = false;
    loop {
        match session.next_line(next_poll.min(deadline)) {
            Next::Line(Pipe::Stdout, line) => {
                if vlc.feed(&line) && vlc.target_reached(seconds) {
                    break;
                }
            }
            Next::Line(Pipe::Stderr, line) => vlc.feed_log(line),
            Next::Closed => {
                ended = true;
                break;
            }
            Next::Timeout if Instant::now() >= deadline => {
                return Err(format!(
                    "VLC did not play {seconds} s of {url} within {} s (showed {} frames){}",
                    (deadline - started).as_secs(),
                    vlc.last.displayed,
                    vlc.tail.render()
                ));
            }
            Next::Timeout => {
                let ask = if vlc.frame_rate.is_none() {
                    "info\nstats\n"
                } else {
                    "stats\n"
                };
                session.send(ask);
                next_poll = Instant::now() + VLC_POLL;
            }
        }
    }
    if !ended {
        session.send("quit\n");
        // The verdict rests on the statistics already read, so however VLC
        // exits from here does not matter; a VLC that hangs is killed.
        let _ = session.wait(EXIT_GRACE);
    }
    let stats = vlc.last;
    let report = PlayReport {
        player: "vlc",
        video_frames: stats.displayed,
        frames_lost: stats.lost,
        frame_rate: vlc.frame_rate,
        warnings: vlc.warnings.clone(),
        elapsed: started.elapsed(),
    };
    if stats.corrupted > 0 {
        return Err(format!(
            "VLC found {} corrupt MPEG-TS blocks in {url}{}",
            stats.corrupted,
            vlc.tail.render()
        ));
    }
    let need = frames_needed(seconds, vlc.frame_rate);
    if stats.displayed < need {
        let why = if ended { "VLC stopped" } else { "VLC" };
        return Err(format!(
            "{why} after showing only {} video frames of {url} ({} lost, frame rate {:?}), needs {need}{}",
            stats.displayed,
            stats.lost,
            vlc.frame_rate,
            vlc.tail.render()
        ));
    }
    Ok(report)
}

/// Half the video frames `seconds` of media hold, at least one; `seconds`
/// frames when the frame rate is unknown.
fn frames_needed(seconds: u32, frame_rate: Option<f64>) -> u64 {
    let need = match frame_rate {
        Some(fps) if fps.is_finite() && fps > 0.0 => (f64::from(seconds) * fps / 2.0).ceil() as u64,
        _ => u64::from(seconds),
    };
    need.max(1)
}

/// A static file server on 127.0.0.1 for a directory of HLS files: GET only,
/// `Connection: close`, Content-Type by extension, at most 32 connections at
/// once. It stops when dropped.
pub struct StaticServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// Connections a [`StaticServer`] serves at once; more get 503.
const MAX_CONNECTIONS: usize = 32;
/// Largest request head a [`StaticServer`] reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Largest file a [`StaticServer`] sends.
const MAX_FILE: u64 = 256 * 1024 * 1024;
/// How long a [`StaticServer`] waits on a slow client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

impl StaticServer {
    /// Serves the files under `root` on 127.0.0.1 at a free port.
    pub fn serve_dir(root: &Path) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let flag = Arc::clone(&stop);
        let acceptor = thread::Builder::new()
            .name("static-server".into())
            .spawn(move || accept_loop(&listener, &root, &flag))?;
        Ok(Self {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` (relative to the served directory) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, root: &Path, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"busy\n",
            );
            continue;
        }
        let root = root.to_path_buf();
        let done = Arc::clone(&active);
        let spawned = thread::Builder::new()
            .name("static-conn".into())
            .spawn(move || {
                let _ = serve_one(stream, &root);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_one(mut stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(file) = resolve(root, path) else {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n");
    };
    let body = match fs::File::open(&file) {
        Ok(f)
            if f.metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE) =>
        {
            let mut body = Vec::new();
            f.take(MAX_FILE).read_to_end(&mut body)?;
            body
        }
        _ => return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
    };
    respond(&mut stream, "200 OK", content_type(&file), &body)
}

/// Maps a request path to a file under `root`, refusing anything that could
/// step outside it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut file = root.to_path_buf();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            Component::Normal(name) => file.push(name),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(file)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("html") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// What ffmpeg's `-progress` output says: the frames written so far.
#[derive(Default)]
struct FfmpegProgress {
    frames: u64,
}

impl FfmpegProgress {
    fn feed(&mut self, line: &str) {
        if let Some(frames) = line
            .strip_prefix("frame=")
            .and_then(|v| v.trim().parse().ok())
        {
            self.frames = frames;
        }
    }
}

/// What ffmpeg's log (`-loglevel level+info`) says.
#[derive(Default)]
struct FfmpegLog {
    /// Errors about the input (bounded like the warnings).
    errors: Vec<String>,
    warnings: Vec<String>,
    /// The input's video frame rate, from its `Stream #..: Video:` line.
    frame_rate: Option<f64>,
    /// The output section has begun: its stream lines describe our sink.
    output_started: bool,
    tail: LogTail,
}

impl FfmpegLog {
    fn feed(&mut self, line: &str) {
        // A line reads `[ctx @ 0x..] [level] text` or `[level] text`.
        let (context, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((ctx, rest)) if ctx.contains(" @ ") => (ctx, rest),
            _ => ("", line),
        };
        let (level, text) = match rest.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((level, text)) => (level, text),
            None => ("info", rest),
        };
        match level {
            "error" | "fatal" | "panic" if !context.starts_with("null @") => {
                push_bounded(&mut self.errors, line.to_string(), MAX_WARNINGS);
                self.tail.push(line.to_string());
            }
            "error" | "fatal" | "panic" | "warning" => {
                push_bounded(&mut self.warnings, line.to_string(), MAX_WARNINGS);
                self.tail.push(line.to_string());
            }
            _ => {
                if text.starts_with("Output #") {
                    self.output_started = true;
                } else if !self.output_started
                    && self.frame_rate.is_none()
                    && text.contains(": Video: ")
                {
                    self.frame_rate = text.split(", ").find_map(|part| {
                        part.trim()
                            .strip_suffix(" fps")
                            .and_then(|n| n.parse().ok())
                    });
                }
            }
        }
    }
}

/// VLC's `rc` answers, as far as read.
#[derive(Default)]
struct VlcState {
    /// The statistics block being read.
    current: VlcStats,
    /// The last complete statistics block.
    last: VlcStats,
    frame_rate: Option<f64>,
    /// When VLC first reported a shown frame.
    playing_since: Option<Instant>,
    warnings: Vec<String>,
    tail: LogTail,
}

#[derive(Default, Clone, Copy)]
struct VlcStats {
    displayed: u64,
    lost: u64,
    corrupted: u64,
}

impl VlcState {
    /// Reads one line of VLC's stdout; true when it completed a stats block.
    fn feed(&mut self, line: &str) -> bool {
        let line = line.trim_start_matches(['>', ' ']);
        if line.starts_with("+----[ end of statistical info") {
            self.last = self.current;
            if self.playing_since.is_none() && self.last.displayed > 0 {
                self.playing_since = Some(Instant::now());
            }
            return true;
        }
        if let Some((key, value)) = line.strip_prefix('|').and_then(|l| l.split_once(':')) {
            let value = value.trim();
            match key.trim() {
                "frames displayed" => self.current.displayed = value.parse().unwrap_or(0),
                "frames lost" => self.current.lost = value.parse().unwrap_or(0),
                "demux corrupted" => self.current.corrupted = value.parse().unwrap_or(0),
                "Frame rate" => self.frame_rate = value.parse().ok().filter(|f: &f64| *f > 0.0),
                _ => {}
            }
        } else if line.starts_with("status change")
            || (line.contains("error") && !line.ends_with("(no error)"))
        {
            self.tail.push(line.to_string());
        }
        false
    }

    /// Keeps a line of VLC's stderr for the error message, but not the noise
    /// of a headless start (no D-Bus, no hotkeys).
    fn feed_log(&mut self, line: String) {
        let noise = ["dbus", "globalhotkeys", "no suitable interface module"];
        if noise.iter().any(|n| line.contains(n)) {
            return;
        }
        if line.contains(" warning: ") {
            push_bounded(&mut self.warnings, line.clone(), MAX_WARNINGS);
        }
        self.tail.push(line);
    }

    /// True once VLC has shown or lost `seconds` worth of video frames — or,
    /// with no known frame rate, has been showing frames for `seconds`.
    fn target_reached(&self, seconds: u32) -> bool {
        match self.frame_rate {
            Some(fps) => {
                let target = (f64::from(seconds) * fps).ceil() as u64;
                self.last.displayed + self.last.lost >= target
            }
            None => self
                .playing_since
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(u64::from(seconds))),
        }
    }
}

/// The command that starts VLC: `cvlc` itself, or through `runuser` as
/// [`VLC_USER`] when this process is root.
fn vlc_command() -> Result<Command, String> {
    if effective_uid()? != 0 {
        return Ok(Command::new("cvlc"));
    }
    ensure_vlc_user()?;
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", VLC_USER, "--", "cvlc"]);
    // No desktop session exists; keep VLC from looking for one.
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DISPLAY");
    Ok(cmd)
}

fn effective_uid() -> Result<u32, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| "no effective uid in /proc/self/status".to_string())
}

/// Creates [`VLC_USER`] once per process if it does not exist yet.
pub fn ensure_vlc_user() -> Result<(), String> {
    static READY: OnceLock<Mutex<bool>> = OnceLock::new();
    let mut ready = READY
        .get_or_init(|| Mutex::new(false))
        .lock()
        .map_err(|_| "user lock poisoned".to_string())?;
    if *ready {
        return Ok(());
    }
    let exists = || {
        Command::new("id")
            .args(["-u", VLC_USER])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !exists() {
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", VLC_USER])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run useradd to create {VLC_USER} for VLC: {e}"))?;
        // Another process may have created it meanwhile; only its absence counts.
        if !exists() {
            return Err(format!(
                "useradd {VLC_USER} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    *ready = true;
    Ok(())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Which pipe of the player a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// What [`Session::next_line`] found.
enum Next {
    /// A line from one of the pipes.
    Line(Pipe, String),
    /// Both pipes closed: the player is exiting.
    Closed,
    /// Nothing arrived before the time given.
    Timeout,
}

/// A player process in its own process group, its output arriving line by
/// line. Dropping it kills the whole group (runuser and VLC alike).
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Pipe, String)>,
    program: String,
}

impl Session {
    fn spawn(mut cmd: Command, with_stdin: bool) -> Result<Self, String> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let (tx, lines) = mpsc::sync_channel(LINE_QUEUE);
        let mut session = Self {
            stdin: child.stdin.take(),
            child,
            lines,
            program,
        };
        if let Some(out) = session.child.stdout.take() {
            spawn_pump(Pipe::Stdout, out, tx.clone())?;
        }
        if let Some(err) = session.child.stderr.take() {
            spawn_pump(Pipe::Stderr, err, tx)?;
        }
        Ok(session)
    }

    fn next_line(&mut self, until: Instant) -> Next {
        let wait = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok((pipe, line)) => Next::Line(pipe, line),
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// Writes `text` to the player's stdin; a player that has gone away
    /// shows up as closed pipes, so a failed write needs no handling here.
    fn send(&mut self, text: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin
                .write_all(text.as_bytes())
                .and_then(|()| stdin.flush());
        }
    }

    /// Waits up to `grace` for the player to exit; None if it had to be killed.
    fn wait(&mut self, grace: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }

    fn kill(&mut self) {
        // Only while the leader is unreaped is its pid surely still our group.
        if let Ok(None) = self.child.try_wait() {
            let group = format!("-{}", self.child.id());
            let killed = Command::new("kill").args(["-KILL", "--", &group]).status();
            if !killed.is_ok_and(|s| s.success()) {
                eprintln!(
                    "could not kill process group of {}; killing it alone",
                    self.program
                );
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

fn spawn_pump(
    pipe: Pipe,
    src: impl Read + Send + 'static,
    tx: SyncSender<(Pipe, String)>,
) -> Result<(), String> {
    thread::Builder::new()
        .name(format!("player-{pipe:?}"))
        .spawn(move || {
            let mut reader = BufReader::new(src);
            let mut line = Vec::new();
            loop {
                line.clear();
                match read_line_bounded(&mut reader, &mut line, MAX_LINE) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        if tx.send((pipe, text)).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start a thread to read the player's output: {e}"))
}

/// Reads one line into `out`, keeping at most `max` bytes of it; returns the
/// bytes consumed (0 at end of input).
fn read_line_bounded(
    reader: &mut impl BufRead,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (line, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (buf.get(..=end).unwrap_or(buf), true),
            None => (buf, false),
        };
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(line.get(..room.min(line.len())).unwrap_or_default());
        let n = line.len();
        reader.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

/// The last notable lines of a player's log, for an error message.
#[derive(Default)]
struct LogTail {
    lines: VecDeque<String>,
}

impl LogTail {
    fn push(&mut self, line: String) {
        if self.lines.len() == LOG_TAIL {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn render(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let mut out = String::from("\n--- player log (tail) ---");
        for line in &self.lines {
            out.push_str("\n  ");
            out.push_str(line);
        }
        out
    }
}

fn push_bounded(list: &mut Vec<String>, line: String, max: usize) {
    if list.len() < max {
        list.push(line);
    }
}
