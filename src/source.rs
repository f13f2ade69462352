//! Live inputs for the broadcaster: MPEG-TS on stdin, a `.ts` file, anything ffmpeg can open
//! (files, cameras, SRT/RTMP listeners for OBS), or the built-in demo clip looped forever.
//! Every input is cut by [`ts::Segmenter`] and released at real time into a bounded channel;
//! signing, numbering and networking happen downstream.

use crate::ts::{self, CutSegment, Restamper, Segmenter};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

/// Where the broadcaster's stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// MPEG-TS on standard input (`--input -`).
    Stdin,
    /// An MPEG-TS file, read in chunks and paced at real time.
    TsFile(PathBuf),
    /// Anything else: handed to an `ffmpeg` child that remuxes or transcodes it to MPEG-TS.
    Ffmpeg(String),
    /// The built-in test pattern, looped forever with continuous timestamps.
    Demo,
}

impl Input {
    /// Interprets the `--input` flag: none → demo, `-` → stdin, a `.ts` path or a regular file
    /// that starts like MPEG-TS → [`Input::TsFile`], anything else → [`Input::Ffmpeg`].
    ///
    /// Sniffing reads at most 377 bytes of a regular file (never a device or a pipe, where a
    /// read could block or consume data).
    pub fn from_arg(arg: Option<&str>) -> Input {
        let Some(arg) = arg else {
            return Input::Demo;
        };
        if arg == "-" {
            return Input::Stdin;
        }
        if arg.contains("://") {
            return Input::Ffmpeg(arg.to_owned());
        }
        let path = Path::new(arg);
        let ts_extension = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("ts"));
        if ts_extension || sniff_ts_file(path) {
            Input::TsFile(path.to_path_buf())
        } else {
            Input::Ffmpeg(arg.to_owned())
        }
    }
}

impl Input {
    /// The input to read when re-encoding is asked for (`--encode`): files, devices and URLs
    /// go through ffmpeg, a `.ts` file included; stdin and the demo cannot.
    pub fn encoded(self) -> Result<Input, SourceError> {
        match self {
            Input::Ffmpeg(arg) => Ok(Input::Ffmpeg(arg)),
            Input::TsFile(path) => Ok(Input::Ffmpeg(path.to_string_lossy().into_owned())),
            Input::Stdin | Input::Demo => Err(SourceError::CannotEncode {
                input: self.to_string(),
            }),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Stdin => f.write_str("- (stdin)"),
            Input::TsFile(path) => write!(f, "{}", path.display()),
            Input::Ffmpeg(arg) => f.write_str(arg),
            Input::Demo => f.write_str("built-in demo"),
        }
    }
}

/// Re-encoding asked for by the user (`--encode`, `--video-bitrate`, `--size`): H.264 with
/// a keyframe every segment duration, whatever the input's codec and keyframe spacing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encode {
    /// Target video bitrate; None: x264's default quality.
    pub video_bitrate: Option<crate::rate::Rate>,
    /// Output width and height in pixels; None: the input's.
    pub size: Option<(u32, u32)>,
}

/// Parses a video size `WIDTHxHEIGHT` such as `1280x720`: even numbers (4:2:0 video needs
/// them) from 16 to 7680.
pub fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a size like 1280x720");
    let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.parse().map_err(|_| bad())?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    for v in [w, h] {
        if !(16..=7680).contains(&v) || v % 2 != 0 {
            return Err(format!(
                "{text:?}: width and height must be even numbers from 16 to 7680"
            ));
        }
    }
    Ok((w, h))
}

/// What [`run`] needs to know.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The input to read.
    pub input: Input,
    /// Target segment duration; segments are cut at the first keyframe at or after it.
    pub segment_duration: Duration,
    /// The ffmpeg program to run for [`Input::Ffmpeg`]; `ffprobe` is looked up beside it.
    /// A field so tests (and unusual installs) can point elsewhere.
    pub ffmpeg: PathBuf,
    /// Re-encode ffmpeg inputs even when their codecs could be copied.
    pub encode: Option<Encode>,
}

impl SourceConfig {
    /// A config that runs `ffmpeg` from `PATH` when it needs to.
    pub fn new(input: Input, segment_duration: Duration) -> Self {
        SourceConfig {
            input,
            segment_duration,
            ffmpeg: PathBuf::from("ffmpeg"),
            encode: None,
        }
    }
}

/// Why a source stopped before its input ended cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input ended (or ran on for a while) without one valid MPEG-TS packet.
    #[error("input holds no MPEG-TS: {input} (expected 188-byte packets starting with 0x47)")]
    NotTs {
        /// The input as the user named it.
        input: String,
    },
    /// The ffmpeg program could not be found.
    #[error("{} not found: install it (e.g. apt-get install ffmpeg) to use --input {input}", program.display())]
    FfmpegMissing {
        /// The program that was tried.
        program: PathBuf,
        /// The input that needed it.
        input: String,
    },
    /// ffmpeg exited with a failure status or was killed, at start-up or mid-stream; the
    /// segments it produced before that were sent on.
    #[error("ffmpeg failed on {input} ({status}) after {segments} segments: {message}")]
    FfmpegFailed {
        /// The input ffmpeg was reading.
        input: String,
        /// How ffmpeg exited.
        status: ExitStatus,
        /// Segments released from ffmpeg's output, the last (possibly short) one included.
        segments: u64,
        /// ffmpeg's last line on stderr, or a note that it printed none.
        message: String,
    },
    /// Re-encoding was asked for an input that does not go through ffmpeg.
    #[error("--encode re-encodes files, devices and URLs through ffmpeg, not {input}: encode it where it is made")]
    CannotEncode {
        /// The input as the user named it.
        input: String,
    },
    /// Reading the input (or starting the program that reads it) failed.
    #[error("cannot {action} {input}: {source}")]
    Io {
        /// What was being done, e.g. "read" or "start ffmpeg for".
        action: &'static str,
        /// The input as the user named it.
        input: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Reads the input, cuts it with [`ts::Segmenter`], paces segments at real time, sends them.
///
/// Returns `Ok(())` when the input ends (after sending the last segment) or when the receiver
/// is dropped; `Err` on failure. The demo never ends on its own.
///
/// Segment k is released no earlier than `start + d0 + … + dk` (see [`Pacer`]), `start` being
/// when the first bytes arrived; a source slower than that (a live camera) is never delayed.
/// Stdin is read by tokio on a blocking thread whose read cannot be cancelled, so a runtime
/// shutting down while stdin is idle waits for it to deliver data or close.
pub async fn run(config: SourceConfig, segments: Sender<CutSegment>) -> Result<(), SourceError> {
    let name = config.input.to_string();
    let mut cutter = Cutter::new(config.segment_duration, segments, name.clone());
    match &config.input {
        Input::Stdin => {
            if cutter.pump(tokio::io::stdin()).await? == Flow::ReceiverGone {
                return Ok(());
            }
            cutter.finish().await
        }
        Input::TsFile(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|source| SourceError::Io {
                    action: "open",
                    input: name,
                    source,
                })?;
            if cutter.pump(file).await? == Flow::ReceiverGone {
                return Ok(());
            }
            cutter.finish().await
        }
        Input::Ffmpeg(arg) => run_ffmpeg(&config, arg, cutter).await,
        Input::Demo => run_demo(cutter).await,
    }
}

/// Checks what can be known before broadcasting starts, so a mistyped path fails before a
/// key, a port or a ticket exists: a `.ts` file, or a plain file path for ffmpeg, must open.
/// Other inputs are checked by reading them (ffmpeg says what is wrong with a URL or device
/// it cannot open).
pub fn check_input(input: &Input) -> Result<(), SourceError> {
    let path = match input {
        Input::TsFile(path) => Some(path.as_path()),
        // A colon may name an ffmpeg protocol (`concat:a|b`), which is no path to check.
        Input::Ffmpeg(arg) if classify(arg) == Origin::File && !arg.contains(':') => {
            Some(Path::new(arg))
        }
        _ => None,
    };
    if let Some(path) = path {
        std::fs::File::open(path).map_err(|source| SourceError::Io {
            action: "open",
            input: input.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Real-time release schedule: segment k may leave at `start + d0 + … + dk`, the moment it
/// would be complete if it were being recorded live. Pure: the caller supplies the start.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// When the first byte of the input arrived.
    start: Instant,
    /// Content duration scheduled so far.
    scheduled: Duration,
}

impl Pacer {
    /// A schedule anchored at `start`.
    pub fn new(start: Instant) -> Self {
        Pacer {
            start,
            scheduled: Duration::ZERO,
        }
    }

    /// Schedules the next segment and returns the earliest instant it may be released.
    /// A source slower than real time finds this instant already past and waits no extra.
    pub fn release_at(&mut self, duration: Duration) -> Instant {
        self.scheduled = self.scheduled.saturating_add(duration);
        // Beyond the clock's range (never, in practice) means: do not wait.
        self.start.checked_add(self.scheduled).unwrap_or(self.start)
    }
}

/// Bytes read per step: whole TS packets, about 64 KiB, so memory stays flat for any input.
const CHUNK: usize = 188 * 348;

/// After this much input without one valid packet, give up instead of reading on.
const NOT_TS_LIMIT: u64 = 1 << 20;

/// The demo clip, made by `assets/make-demo.sh`.
static DEMO_CLIP: &[u8] = include_bytes!("../assets/demo.ts");

/// One video frame of the demo clip in 90 kHz ticks (make-demo.sh encodes 24 fps).
const DEMO_FRAME_TICKS: u64 = 90_000 / 24;

/// PTS and PCR base are 33-bit counters.
const PTS_MASK: u64 = (1 << 33) - 1;

/// How long ffprobe may take to describe an input before we transcode without knowing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The most of ffprobe's JSON we read; a few streams need a few hundred bytes.
const PROBE_OUTPUT_LIMIT: u64 = 64 * 1024;

/// The longest ffmpeg stderr line we keep; the rest of a longer line is dropped.
const STDERR_LINE_LIMIT: usize = 1024;

/// Whether to keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep going (from a reader: the input ended normally).
    Continue,
    /// Nobody listens any more: stop quietly.
    ReceiverGone,
}

/// The shared back half of every input: segmenter, pacer, channel.
struct Cutter {
    segmenter: Segmenter,
    /// Anchored when the first bytes arrive, so ffmpeg's start-up time is not counted as content.
    pacer: Option<Pacer>,
    segments: Sender<CutSegment>,
    /// Bytes pushed, for giving up early on an input that is not MPEG-TS.
    bytes_seen: u64,
    /// Segments handed to the receiver, for saying how far a failed input got.
    released: u64,
    /// The input's name, for errors.
    input: String,
    /// The segment duration asked for.
    target: Duration,
    /// A segment came out much longer than the target, and the user was told.
    warned_long: bool,
}

impl Cutter {
    fn new(target: Duration, segments: Sender<CutSegment>, input: String) -> Self {
        Cutter {
            target,
            warned_long: false,
            segmenter: Segmenter::new(target),
            pacer: None,
            segments,
            bytes_seen: 0,
            released: 0,
            input,
        }
    }

    /// Reads `reader` to its end in chunks, pushing each.
    async fn pump<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> Result<Flow, SourceError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| SourceError::Io {
                    action: "read",
                    input: self.input.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(Flow::Continue);
            }
            if self.push(buf.get(..n).unwrap_or_default()).await? == Flow::ReceiverGone {
                return Ok(Flow::ReceiverGone);
            }
        }
    }

    /// Feeds bytes to the segmenter and releases every segment they complete.
    async fn push(&mut self, bytes: &[u8]) -> Result<Flow, SourceError> {
        if self.pacer.is_none() {
            self.pacer = Some(Pacer::new(Instant::now()));
        }
        self.bytes_seen = self.bytes_seen.saturating_add(bytes.len() as u64);
        for segment in self.segmenter.push(bytes) {
            if self.release(segment).await == Flow::ReceiverGone {
                return Ok(Flow::ReceiverGone);
            }
        }
        if self.bytes_seen >= NOT_TS_LIMIT && self.segmenter.packets_seen() == 0 {
            return Err(self.not_ts());
        }
        Ok(Flow::Continue)
    }

    /// Waits for the segment's release time, then sends it.
    async fn release(&mut self, segment: CutSegment) -> Flow {
        if !self.warned_long && too_long(segment.duration, self.target) {
            self.warned_long = true;
            tracing::warn!(
                "segments of {} come out {:.1} s long against the {:.1} s asked for: its \
                 keyframes are further apart, so players start later and lag more. \
                 Re-encode with --encode, or give the source a keyframe every {:.1} s",
                self.input,
                segment.duration.as_secs_f64(),
                self.target.as_secs_f64(),
                self.target.as_secs_f64(),
            );
        }
        let pacer = self.pacer.get_or_insert_with(|| Pacer::new(Instant::now()));
        tokio::time::sleep_until(pacer.release_at(segment.duration)).await;
        match self.segments.send(segment).await {
            Ok(()) => {
                self.released = self.released.saturating_add(1);
                Flow::Continue
            }
            Err(_) => Flow::ReceiverGone,
        }
    }

    /// Sends the last, possibly short, segment; an input with no TS packet at all is an error.
    async fn finish(&mut self) -> Result<(), SourceError> {
        if let Some(segment) = self.segmenter.finish() {
            // The receiver may be gone; either way the input is over.
            self.release(segment).await;
        }
        if self.segmenter.packets_seen() == 0 {
            return Err(self.not_ts());
        }
        Ok(())
    }

    fn not_ts(&self) -> SourceError {
        SourceError::NotTs {
            input: self.input.clone(),
        }
    }
}

/// Whether a segment of `duration` is much longer than the `target`: a quarter over it
/// is more than frame rounding can explain.
fn too_long(duration: Duration, target: Duration) -> bool {
    duration > target.saturating_add(target / 4)
}

/// Loops the embedded clip forever, shifting each pass's timestamps by the clip's length so
/// that a player sees one continuous stream.
async fn run_demo(mut cutter: Cutter) -> Result<(), SourceError> {
    if DEMO_CLIP.len() % 188 != 0 {
        return Err(cutter.not_ts());
    }
    let (first, last) = ts::pts_span(DEMO_CLIP).ok_or_else(|| cutter.not_ts())?;
    // Last frame's PTS plus its own duration is where the next pass must begin.
    let period = (last.wrapping_sub(first) & PTS_MASK) + DEMO_FRAME_TICKS;
    let mut restamper = Restamper::new();
    let mut offset = 0u64;
    let mut buf = Vec::with_capacity(CHUNK);
    loop {
        restamper.set_offset(offset);
        for chunk in DEMO_CLIP.chunks(CHUNK) {
            buf.clear();
            buf.extend_from_slice(chunk);
            restamper.apply(&mut buf);
            if cutter.push(&buf).await? == Flow::ReceiverGone {
                return Ok(());
            }
        }
        offset = (offset + period) & PTS_MASK;
    }
}

/// How an ffmpeg input behaves, which decides the flags it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A file on disk: read at real time (`-re`), probe to decide copy or transcode.
    File,
    /// A V4L2 camera (`/dev/video*`): live, raw frames, always transcoded.
    Camera,
    /// Some other device node: live, not probed (a probe would consume it).
    Device,
    /// A URL ffmpeg pulls from (RTSP camera, HTTP, UDP): live, probed.
    Url,
    /// A URL ffmpeg listens on (OBS pushing SRT or RTMP): a probe would take the one
    /// connection, so it is not probed and always transcoded.
    Listener {
        /// RTMP needs `-listen 1`; SRT says `mode=listener` in its own URL.
        rtmp: bool,
    },
}

fn classify(arg: &str) -> Origin {
    if arg.starts_with("/dev/video") {
        return Origin::Camera;
    }
    if arg.starts_with("/dev/") {
        return Origin::Device;
    }
    let Some((scheme, rest)) = arg.split_once("://") else {
        return Origin::File;
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "rtmp" || scheme == "rtmps" {
        return Origin::Listener { rtmp: true };
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let listens = query.split('&').any(|param| {
        matches!(
            param.to_ascii_lowercase().as_str(),
            "mode=listener" | "listen" | "listen=1"
        )
    });
    if listens {
        Origin::Listener { rtmp: false }
    } else {
        Origin::Url
    }
}

/// What ffprobe said about the first video and audio streams.
#[derive(Debug, Clone, Default, PartialEq)]
struct Probe {
    video_codec: Option<String>,
    audio_codec: Option<String>,
    /// Frames per second of the video, when ffprobe knows it.
    fps: Option<f64>,
}

#[derive(serde::Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
}

#[derive(serde::Deserialize)]
struct ProbeStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
}

/// Parses `ffprobe -of json -show_entries stream=…`; malformed output means "unknown".
fn parse_probe(json: &[u8]) -> Probe {
    let Ok(parsed) = serde_json::from_slice::<ProbeJson>(json) else {
        return Probe::default();
    };
    let mut probe = Probe::default();
    for stream in parsed.streams {
        match stream.codec_type.as_deref() {
            Some("video") if probe.video_codec.is_none() => {
                probe.fps = stream
                    .avg_frame_rate
                    .as_deref()
                    .and_then(parse_rate)
                    .or_else(|| stream.r_frame_rate.as_deref().and_then(parse_rate));
                probe.video_codec = stream.codec_name;
            }
            Some("audio") if probe.audio_codec.is_none() => {
                probe.audio_codec = stream.codec_name;
            }
            _ => {}
        }
    }
    probe
}

/// Parses ffprobe's "num/den" rate; absurd or undefined rates ("0/0") are None.
fn parse_rate(rate: &str) -> Option<f64> {
    let (num, den) = rate.split_once('/')?;
    let num: f64 = num.trim().parse().ok()?;
    let den: f64 = den.trim().parse().ok()?;
    let fps = num / den;
    (fps.is_finite() && (1.0..=300.0).contains(&fps)).then_some(fps)
}

/// ffmpeg's command line: read `arg`, write MPEG-TS to stdout.
///
/// H.264 video and AAC audio are copied; anything else, or anything not probed, is encoded
/// with x264 at low latency and a keyframe once a segment duration has passed since the last
/// forced one (`-force_key_frames`), with `-g` (twice the frame rate, or 50) as the longest
/// gap if timestamps are odd.
fn ffmpeg_args(
    arg: &str,
    origin: Origin,
    probe: Option<&Probe>,
    segment_duration: Duration,
    encode: Option<&Encode>,
) -> Vec<String> {
    let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-nostdin"]
        .map(String::from)
        .to_vec();
    match origin {
        Origin::File => args.push("-re".into()),
        Origin::Camera => args.extend(["-f".into(), "v4l2".into()]),
        Origin::Listener { rtmp: true } => args.extend(["-listen".into(), "1".into()]),
        Origin::Device | Origin::Url | Origin::Listener { rtmp: false } => {}
    }
    args.extend(["-i".into(), arg.into()]);
    // The first video and audio stream only: subtitles or data tracks would upset the muxer.
    args.extend(["-map", "0:v:0?", "-map", "0:a:0?", "-sn", "-dn"].map(String::from));

    let copy_video =
        encode.is_none() && probe.is_some_and(|p| p.video_codec.as_deref() == Some("h264"));
    let copy_audio = probe.is_some_and(|p| p.audio_codec.as_deref() == Some("aac"));
    if copy_video {
        args.extend(["-c:v", "copy"].map(String::from));
    } else {
        let fps = probe.and_then(|p| p.fps);
        let gop = fps.map_or(50, |fps| (2.0 * fps).round() as u32).max(1);
        let every = segment_duration.as_secs_f64().max(0.001);
        args.extend(
            [
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
                "-pix_fmt",
                "yuv420p",
            ]
            .map(String::from),
        );
        args.extend([
            "-g".into(),
            gop.to_string(),
            "-force_key_frames".into(),
            // Measured from the previous forced keyframe, not on a fixed grid: the segmenter
            // cuts at the first keyframe at least one target after the last cut, so a grid
            // point that frame rounding put a frame early would be skipped.
            format!("expr:if(isnan(prev_forced_t),1,gte(t,prev_forced_t+{every:.3}))"),
        ]);
        if let Some(rate) = encode.and_then(|e| e.video_bitrate) {
            // A one-second buffer keeps each segment near the asked rate.
            let bits = rate.0.to_string();
            args.extend(["-b:v".into(), bits.clone(), "-maxrate".into(), bits.clone()]);
            args.extend(["-bufsize".into(), bits]);
        }
        if let Some((w, h)) = encode.and_then(|e| e.size) {
            args.extend(["-vf".into(), format!("scale={w}:{h}")]);
        }
    }
    if copy_audio {
        args.extend(["-c:a", "copy"].map(String::from));
    } else {
        args.extend(["-c:a", "aac"].map(String::from));
    }
    args.extend(["-f", "mpegts", "pipe:1"].map(String::from));
    args
}

/// `ffprobe` beside the configured ffmpeg: `/opt/x/ffmpeg` → `/opt/x/ffprobe`.
fn ffprobe_for(ffmpeg: &Path) -> PathBuf {
    let name = ffmpeg
        .file_name()
        .map(|n| n.to_string_lossy().replace("ffmpeg", "ffprobe"))
        .unwrap_or_else(|| "ffprobe".into());
    ffmpeg.with_file_name(name)
}

/// Asks ffprobe for the codecs; None when ffprobe is missing, fails or takes too long.
async fn probe(ffprobe: &Path, arg: &str) -> Option<Probe> {
    let mut child = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,avg_frame_rate,r_frame_rate",
            "-of",
            "json",
            "-i",
            arg,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let read = async move {
        let mut json = Vec::new();
        stdout
            .take(PROBE_OUTPUT_LIMIT)
            .read_to_end(&mut json)
            .await
            .ok()?;
        child.wait().await.ok()?.success().then_some(json)
    };
    let json = tokio::time::timeout(PROBE_TIMEOUT, read).await.ok()??;
    Some(parse_probe(&json))
}

async fn run_ffmpeg(
    config: &SourceConfig,
    arg: &str,
    mut cutter: Cutter,
) -> Result<(), SourceError> {
    let origin = classify(arg);
    let probed = match origin {
        Origin::File | Origin::Url => probe(&ffprobe_for(&config.ffmpeg), arg).await,
        Origin::Camera | Origin::Device | Origin::Listener { .. } => None,
    };
    let args = ffmpeg_args(
        arg,
        origin,
        probed.as_ref(),
        config.segment_duration,
        config.encode.as_ref(),
    );
    tracing::debug!(program = %config.ffmpeg.display(), ?args, "starting ffmpeg");
    if let Origin::Listener { .. } = origin {
        tracing::info!("waiting for a stream at {arg}");
    }
    let mut child = Command::new(&config.ffmpeg)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                SourceError::FfmpegMissing {
                    program: config.ffmpeg.clone(),
                    input: arg.to_owned(),
                }
            } else {
                SourceError::Io {
                    action: "start ffmpeg for",
                    input: arg.to_owned(),
                    source,
                }
            }
        })?;
    let stderr = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(last_line(stderr)));
    let Some(stdout) = child.stdout.take() else {
        return Err(SourceError::Io {
            action: "read ffmpeg output for",
            input: arg.to_owned(),
            source: io::Error::other("ffmpeg's stdout was not captured"),
        });
    };
    // Dropping `child` on any early return kills ffmpeg (kill_on_drop).
    if cutter.pump(stdout).await? == Flow::ReceiverGone {
        return Ok(());
    }
    let status = child.wait().await.map_err(|source| SourceError::Io {
        action: "wait for ffmpeg on",
        input: arg.to_owned(),
        source,
    })?;
    let message = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    // Whatever ffmpeg produced before failing is still good video: send it first.
    let finished = cutter.finish().await;
    if !status.success() {
        return Err(SourceError::FfmpegFailed {
            input: arg.to_owned(),
            status,
            segments: cutter.released,
            message: if message.is_empty() {
                "(ffmpeg printed no message)".into()
            } else {
                message
            },
        });
    }
    finished
}

/// Drains ffmpeg's stderr (so it never blocks on a full pipe), logs each line, and returns
/// the last non-empty one, each line cut to [`STDERR_LINE_LIMIT`] bytes.
async fn last_line<R: AsyncRead + Unpin>(mut stderr: R) -> String {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(STDERR_LINE_LIMIT);
    let mut last = String::new();
    let end_line = |line: &mut Vec<u8>, last: &mut String| {
        let text = String::from_utf8_lossy(line).trim().to_owned();
        line.clear();
        if !text.is_empty() {
            tracing::warn!(target: "starling::source::ffmpeg", "{text}");
            *last = text;
        }
    };
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in buf.get(..n).unwrap_or_default() {
            match byte {
                b'\n' | b'\r' => end_line(&mut line, &mut last),
                _ if line.len() < STDERR_LINE_LIMIT => line.push(byte),
                _ => {}
            }
        }
    }
    end_line(&mut line, &mut last);
    last
}

/// True when the first three packet positions of a regular file hold the TS sync byte.
fn sniff_ts_file(path: &Path) -> bool {
    let is_file = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    if !is_file {
        return false;
    }
    let mut head = Vec::with_capacity(377);
    let read = std::fs::File::open(path).and_then(|f| f.take(377).read_to_end(&mut head));
    read.is_ok() && looks_like_ts(&head)
}

/// 0x47 at offsets 0, 188 and 376: three packets in a row are not a coincidence.
fn looks_like_ts(head: &[u8]) -> bool {
    [0, 188, 376].iter().all(|&at| head.get(at) == Some(&0x47))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pacer_releases_each_segment_when_its_content_is_complete() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start);
        let durations = [1000, 480, 2020, 500].map(Duration::from_millis);
        let mut sum = Duration::ZERO;
        for d in durations {
            sum += d;
            assert_eq!(pacer.release_at(d), start + sum);
        }
    }

    #[test]
    fn from_arg_picks_the_input_kind() {
        assert_eq!(Input::from_arg(None), Input::Demo);
        assert_eq!(Input::from_arg(Some("-")), Input::Stdin);
        assert_eq!(
            Input::from_arg(Some("/nonexistent/clip.TS")),
            Input::TsFile("/nonexistent/clip.TS".into())
        );
        for other in [
            "/nonexistent/movie.mp4",
            "/dev/video0",
            "srt://0.0.0.0:9000?mode=listener",
            "rtmp://0.0.0.0:1935/live/key",
            "http://example.com/live.ts",
        ] {
            assert_eq!(Input::from_arg(Some(other)), Input::Ffmpeg(other.into()));
        }
    }

    #[test]
    fn looks_like_ts_needs_three_sync_bytes() {
        let mut head = vec![0u8; 377];
        assert!(!looks_like_ts(&head));
        head[0] = 0x47;
        head[188] = 0x47;
        assert!(!looks_like_ts(&head));
        head[376] = 0x47;
        assert!(looks_like_ts(&head));
        assert!(!looks_like_ts(&head[..376]));
    }

    #[test]
    fn check_input_opens_the_paths_it_can() {
        let missing = |arg: &str| check_input(&Input::from_arg(Some(arg)));
        assert!(matches!(
            missing("/nonexistent/movie.mp4"),
            Err(SourceError::Io { action: "open", .. })
        ));
        assert!(missing("/nonexistent/clip.ts").is_err());
        // URLs, devices and ffmpeg protocols are left to ffmpeg.
        for left in [
            "srt://0.0.0.0:9000?mode=listener",
            "/dev/video9",
            "concat:/nonexistent/a.mp4|b.mp4",
        ] {
            assert!(missing(left).is_ok(), "{left}");
        }
        assert!(check_input(&Input::Demo).is_ok());
    }

    #[test]
    fn classify_origins() {
        assert_eq!(classify("movie.mkv"), Origin::File);
        assert_eq!(classify("/dev/video2"), Origin::Camera);
        assert_eq!(classify("/dev/dvb/adapter0/dvr0"), Origin::Device);
        assert_eq!(
            classify("srt://0.0.0.0:9000?mode=listener&latency=200"),
            Origin::Listener { rtmp: false }
        );
        assert_eq!(classify("srt://host:9000?mode=caller"), Origin::Url);
        assert_eq!(
            classify("tcp://0.0.0.0:9000?listen=1"),
            Origin::Listener { rtmp: false }
        );
        assert_eq!(
            classify("RTMP://0.0.0.0/live"),
            Origin::Listener { rtmp: true }
        );
        assert_eq!(classify("rtsp://cam.local/stream"), Origin::Url);
    }

    #[test]
    fn probe_json_gives_first_video_and_audio() {
        let json = br#"{"programs":[],"streams":[
            {"codec_name":"mjpeg","codec_type":"attachment"},
            {"codec_name":"h264","codec_type":"video","avg_frame_rate":"30000/1001","r_frame_rate":"30000/1001"},
            {"codec_name":"hevc","codec_type":"video","avg_frame_rate":"25/1"},
            {"codec_name":"mp3","codec_type":"audio","avg_frame_rate":"0/0"},
            {"codec_name":"aac","codec_type":"audio"}]}"#;
        let probe = parse_probe(json);
        assert_eq!(probe.video_codec.as_deref(), Some("h264"));
        assert_eq!(probe.audio_codec.as_deref(), Some("mp3"));
        let fps = probe.fps.unwrap();
        assert!((fps - 29.97).abs() < 0.01, "{fps}");
        assert_eq!(parse_probe(b"not json"), Probe::default());
        assert_eq!(parse_rate("0/0"), None);
        assert_eq!(parse_rate("25/1"), Some(25.0));
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn ffmpeg_copies_h264_aac_files_at_real_time() {
        let probe = Probe {
            video_codec: Some("h264".into()),
            audio_codec: Some("aac".into()),
            fps: Some(25.0),
        };
        let args = ffmpeg_args(
            "a.mp4",
            Origin::File,
            Some(&probe),
            Duration::from_secs(1),
            None,
        );
        assert!(args.contains(&"-re".to_string()));
        assert!(has_pair(&args, "-c:v", "copy"));
        assert!(has_pair(&args, "-c:a", "copy"));
        assert!(has_pair(&args, "-i", "a.mp4"));
        assert!(has_pair(&args, "-f", "mpegts"));
        assert_eq!(args.last().map(String::as_str), Some("pipe:1"));
    }

    #[test]
    fn ffmpeg_transcodes_other_codecs_with_keyframes_at_segment_boundaries() {
        let probe = Probe {
            video_codec: Some("vp9".into()),
            audio_codec: Some("opus".into()),
            fps: Some(30.0),
        };
        let args = ffmpeg_args(
            "a.webm",
            Origin::File,
            Some(&probe),
            Duration::from_millis(500),
            None,
        );
        assert!(has_pair(&args, "-c:v", "libx264"));
        assert!(has_pair(&args, "-tune", "zerolatency"));
        assert!(has_pair(&args, "-g", "60"));
        assert!(has_pair(
            &args,
            "-force_key_frames",
            "expr:if(isnan(prev_forced_t),1,gte(t,prev_forced_t+0.500))"
        ));
        assert!(has_pair(&args, "-c:a", "aac"));
    }

    #[test]
    fn ffmpeg_live_inputs_are_not_slowed_and_use_their_demuxer() {
        let cam = ffmpeg_args(
            "/dev/video0",
            Origin::Camera,
            None,
            Duration::from_secs(1),
            None,
        );
        assert!(!cam.contains(&"-re".to_string()));
        assert!(has_pair(&cam, "-f", "v4l2"));
        assert!(has_pair(&cam, "-g", "50"));
        assert!(has_pair(&cam, "-c:v", "libx264"));
        let rtmp = "rtmp://0.0.0.0:1935/live";
        let obs = ffmpeg_args(
            rtmp,
            Origin::Listener { rtmp: true },
            None,
            Duration::from_secs(1),
            None,
        );
        assert!(has_pair(&obs, "-listen", "1"));
        assert!(!obs.contains(&"-re".to_string()));
    }

    #[test]
    fn encode_transcodes_even_h264_at_the_asked_rate_and_size() {
        let probe = Probe {
            video_codec: Some("h264".into()),
            audio_codec: Some("aac".into()),
            fps: Some(25.0),
        };
        let encode = Encode {
            video_bitrate: Some(crate::rate::Rate(1_500_000)),
            size: Some((640, 360)),
        };
        let args = ffmpeg_args(
            "a.mp4",
            Origin::File,
            Some(&probe),
            Duration::from_secs(2),
            Some(&encode),
        );
        assert!(has_pair(&args, "-c:v", "libx264"));
        assert!(has_pair(&args, "-b:v", "1500000"));
        assert!(has_pair(&args, "-maxrate", "1500000"));
        assert!(has_pair(&args, "-vf", "scale=640:360"));
        assert!(has_pair(
            &args,
            "-force_key_frames",
            "expr:if(isnan(prev_forced_t),1,gte(t,prev_forced_t+2.000))"
        ));
        // Audio that can be copied still is.
        assert!(has_pair(&args, "-c:a", "copy"));
        let plain = ffmpeg_args(
            "a.mp4",
            Origin::File,
            Some(&probe),
            Duration::from_secs(2),
            Some(&Encode::default()),
        );
        assert!(has_pair(&plain, "-c:v", "libx264"));
        assert!(!plain.contains(&"-b:v".to_string()));
        assert!(!plain.contains(&"-vf".to_string()));
    }

    #[test]
    fn only_inputs_through_ffmpeg_can_be_encoded() {
        assert_eq!(
            Input::TsFile("/x/a.ts".into()).encoded().unwrap(),
            Input::Ffmpeg("/x/a.ts".into())
        );
        assert_eq!(
            Input::Ffmpeg("srt://h:1".into()).encoded().unwrap(),
            Input::Ffmpeg("srt://h:1".into())
        );
        for input in [Input::Stdin, Input::Demo] {
            assert!(matches!(
                input.encoded(),
                Err(SourceError::CannotEncode { .. })
            ));
        }
    }

    #[test]
    fn sizes_are_even_width_by_height() {
        assert_eq!(parse_size("1280x720"), Ok((1280, 720)));
        assert_eq!(parse_size("640X360"), Ok((640, 360)));
        for bad in ["1280", "x720", "1281x720", "8x8", "99999x2", "axb", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_segment_a_quarter_over_the_target_is_too_long() {
        let target = Duration::from_secs(2);
        assert!(!too_long(Duration::from_millis(2040), target));
        assert!(!too_long(Duration::from_millis(2500), target));
        assert!(too_long(Duration::from_millis(3333), target));
    }

    #[test]
    fn ffprobe_is_found_beside_ffmpeg() {
        assert_eq!(ffprobe_for(Path::new("ffmpeg")), PathBuf::from("ffprobe"));
        assert_eq!(
            ffprobe_for(Path::new("/opt/ff/bin/ffmpeg")),
            PathBuf::from("/opt/ff/bin/ffprobe")
        );
    }

    #[tokio::test]
    async fn last_line_keeps_the_last_non_empty_line_bounded() {
        let long = "x".repeat(STDERR_LINE_LIMIT * 3);
        let text = format!("first\r\n{long}\nsecond problem\n\n");
        assert_eq!(last_line(text.as_bytes()).await, "second problem");
        assert_eq!(last_line(long.as_bytes()).await.len(), STDERR_LINE_LIMIT);
        assert_eq!(last_line(&b""[..]).await, "");
    }

    #[test]
    fn demo_clip_is_whole_packets_and_small() {
        assert_eq!(DEMO_CLIP.len() % 188, 0);
        assert!(looks_like_ts(DEMO_CLIP));
        assert!(DEMO_CLIP.len() < 2_000_000);
    }
}
