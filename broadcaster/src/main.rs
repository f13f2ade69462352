//! `starling-broadcaster`: cuts a live source into signed segments and seeds the mesh.
//! Prints the stream's ticket as the first line of stdout. `token` prints a join token
//! for a private stream instead.

use clap::{Parser, Subcommand};
use starling::broadcaster::{self, BroadcasterConfig, Stop};
use starling::cli::{Latency, StopSignal};
use starling::rate::Rate;
use starling::source::{Encode, Input};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Broadcast a live stream to a peer-to-peer mesh of viewers.
///
/// Prints a ticket on the first line of stdout; give it to viewers
/// (`starling-viewer <TICKET>`). Ctrl-C or SIGTERM ends the stream: viewers play what they
/// hold to the end. SIGHUP stops without ending it, so a restart with the same key continues
/// the stream for the viewers still waiting.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// What to broadcast: `-` for MPEG-TS on stdin, a .ts file (paced at real time),
    /// or anything ffmpeg opens (a file, a device, an srt:// or rtmp:// listener).
    /// Without it, a built-in looping demo clip.
    #[arg(long, value_name = "INPUT")]
    input: Option<String>,

    /// How close to live: `normal` (2 s segments) or `low` (1 s segments; viewers should
    /// use `--latency low` too). --segment-duration overrides it.
    #[arg(long, value_name = "PRESET", default_value = "normal", value_parser = Latency::parse)]
    latency: Latency,

    /// Target segment length in seconds (0.5 to 10); cuts land on the next keyframe.
    /// [default: 2, or 1 with --latency low]
    #[arg(long, value_name = "SECS", value_parser = parse_segment_duration)]
    segment_duration: Option<f64>,

    /// The stream's key file, created on first run. Same key, same stream.
    /// [default: ~/.config/starling/broadcaster.key]
    #[arg(long, value_name = "PATH")]
    key: Option<PathBuf>,

    /// UDP address for QUIC [default: 0.0.0.0 and the previous run's port if free, else any]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Address for the HTTP server: the dashboard at /, /stats, /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8079")]
    http: SocketAddr,

    /// Also write the ticket to this file.
    #[arg(long, value_name = "PATH")]
    ticket_file: Option<PathBuf>,

    /// Cap on total upload in bits/s, with optional k/M/G suffix (e.g. 8M)
    /// [default: 4x the stream's measured bitrate, at least 1M; 4M until the first segment]
    #[arg(long, value_name = "RATE")]
    max_upload: Option<Rate>,

    /// Private stream: only viewers with a join token may join (see the `token` command).
    /// The ticket stays the same and is not a secret; the tokens are.
    #[arg(long)]
    private: bool,

    /// Re-encode the input to H.264 with a keyframe every segment duration, for inputs
    /// whose keyframes are too far apart (segments come out longer than asked) or that
    /// need a lower bitrate or size. Files, devices and URLs only (not stdin or the demo).
    #[arg(long)]
    encode: bool,

    /// Video bitrate when re-encoding, bits/s with optional k/M/G suffix (e.g. 2500k);
    /// implies --encode [default: x264's own quality-based choice]
    #[arg(long, value_name = "RATE")]
    video_bitrate: Option<Rate>,

    /// Video size when re-encoding, WIDTHxHEIGHT with even numbers (e.g. 1280x720);
    /// implies --encode [default: the input's size]
    #[arg(long, value_name = "WxH", value_parser = starling::source::parse_size)]
    size: Option<(u32, u32)>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a join token for a private stream (on stdout, nothing else). Give it to a
    /// viewer with the ticket: `starling-viewer TICKET --token TOKEN`.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The stream's key file (as for broadcasting).
    /// [default: ~/.config/starling/broadcaster.key]
    #[arg(long, value_name = "PATH")]
    key: Option<PathBuf>,

    /// How long the token admits its holder: a number with s, m, h or d (30m, 2h, 7d;
    /// at most 366d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = starling::token::parse_lifetime)]
    expires: Duration,

    /// The token admits nobody until this long from now (same units as --expires); its
    /// lifetime counts from then.
    #[arg(long, value_name = "DURATION", value_parser = starling::token::parse_lifetime)]
    starts_in: Option<Duration>,

    /// First revoke every token issued so far (a new token epoch); the stream's key and
    /// ticket stay the same. A running broadcaster applies it within a segment.
    #[arg(long)]
    rotate: bool,
}

fn parse_segment_duration(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.5..=10.0).contains(&v) {
        return Err(format!("{v} is outside 0.5–10 seconds"));
    }
    Ok(v)
}

fn main() {
    starling::cli::run_main("starling-broadcaster", run)
}

async fn run() -> bool {
    // First: a stop signal from now on ends the program cleanly. SIGHUP stops it without
    // ending the stream, for a restart.
    let signal = starling::cli::stop_signal(true);
    let stop = async move {
        match signal.await {
            StopSignal::Hangup => Stop::KeepStream,
            StopSignal::Interrupt | StopSignal::Terminate => Stop::EndStream,
        }
    };
    let args = Args::parse();
    starling::cli::init_logging();
    if let Some(Command::Token(t)) = args.command {
        return print_token(t);
    }
    let config = BroadcasterConfig {
        input: Input::from_arg(args.input.as_deref()),
        segment_duration: args
            .segment_duration
            .map_or(args.latency.segment_duration(), Duration::from_secs_f64),
        key_path: args.key.unwrap_or_else(starling::cli::default_key_path),
        listen: args.listen,
        http: args.http,
        ticket_file: args.ticket_file,
        max_upload: args.max_upload,
        private: args.private,
        status_line: starling::cli::stderr_is_terminal(),
        encode: (args.encode || args.video_bitrate.is_some() || args.size.is_some()).then_some(
            Encode {
                video_bitrate: args.video_bitrate,
                size: args.size,
            },
        ),
    };
    let print_ticket = |ticket: &starling::stream::Ticket| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", ticket.encode());
        let _ = out.flush();
    };
    match broadcaster::run(config, print_ticket, stop).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("starling-broadcaster: {e}");
            false
        }
    }
}

fn print_token(args: TokenArgs) -> bool {
    let key = args.key.unwrap_or_else(starling::cli::default_key_path);
    let now = starling::clock::unix_now_s();
    let starts_in = args.starts_in.unwrap_or_default();
    match broadcaster::issue_token(&key, args.expires, starts_in, args.rotate, now) {
        Ok(cred) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", cred.encode());
            let _ = out.flush();
            let token = cred.token();
            eprintln!(
                "starling-broadcaster: join token for stream {}, epoch {}, valid for {} s from {}{}",
                token.stream.short(),
                token.epoch,
                args.expires.as_secs(),
                if starts_in.is_zero() {
                    "now".to_string()
                } else {
                    format!("{} s from now", starts_in.as_secs())
                },
                if args.rotate {
                    "; every earlier token is now revoked"
                } else {
                    ""
                }
            );
            true
        }
        Err(e) => {
            eprintln!("starling-broadcaster: {e}");
            false
        }
    }
}
