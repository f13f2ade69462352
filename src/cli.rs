//! What both programs share around the library: logging, signals, default paths, status.
//!
//! Kept here so the two binaries stay a page of flag parsing each, and so
//! there is one way to do each of these things.

use crate::rate::Rate;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Runs a program's async body on a fresh runtime and exits with its result.
///
/// Exits right away afterwards: a blocking read on stdin (the `-` input) cannot be
/// cancelled and would otherwise keep the runtime, and the process, alive.
pub fn run_main<F>(program: &str, body: impl FnOnce() -> F) -> !
where
    F: std::future::Future<Output = bool>,
{
    let ok = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(body()),
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            false
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(if ok { 0 } else { 1 })
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` (default: info for Starling).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,starling=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A stop signal, as [`stop_signal`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Ctrl-C (SIGINT).
    Interrupt,
    /// SIGTERM, as service managers send.
    Terminate,
    /// SIGHUP, listened for only when asked (else it ends the process as usual).
    Hangup,
}

/// A future that resolves when the process is asked to stop (Ctrl-C or SIGTERM).
///
/// The handlers are installed by this call, not on first poll, so a signal that
/// arrives before the program starts waiting is still a clean stop. Call it
/// inside the runtime, before anything is printed.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let signal = stop_signal(false);
    async move {
        signal.await;
    }
}

/// A future that resolves with the first stop signal: Ctrl-C, SIGTERM, and SIGHUP if
/// `hangup`. Installed at once, as for [`shutdown_signal`].
pub fn stop_signal(hangup: bool) -> impl std::future::Future<Output = StopSignal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        let hangup = hangup.then(|| signal(SignalKind::hangup()).ok()).flatten();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => StopSignal::Interrupt,
                _ = wait(terminate) => StopSignal::Terminate,
                _ = wait(hangup) => StopSignal::Hangup,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = hangup;
        async {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Interrupt
        }
    }
}

/// The broadcaster's default key file: `$XDG_CONFIG_HOME/starling/broadcaster.key`,
/// else `~/.config/starling/broadcaster.key`, else `./starling-broadcaster.key`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        });
    match base {
        Some(b) => b.join("starling").join("broadcaster.key"),
        None => PathBuf::from("starling-broadcaster.key"),
    }
}

/// How close to live both programs aim: `--latency normal|low`, one preset for the segment
/// length (broadcaster) and the hold-back (viewer), so the two stay matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// 2 s segments: about 4.4 s behind the camera in a stock player.
    #[default]
    Normal,
    /// 1 s segments: about 2.4 s, with half the slack for a late segment.
    Low,
}

impl Latency {
    /// The broadcaster's target segment length under this preset.
    pub fn segment_duration(self) -> Duration {
        match self {
            Latency::Normal => Duration::from_secs(2),
            Latency::Low => Duration::from_secs(1),
        }
    }

    /// The viewer's segments held back behind the newest under this preset: none for
    /// either, since the playlist's short window already keeps a stock player a segment
    /// behind the newest (see `viewer::PLAYER_WINDOW`); the segment length sets the delay.
    pub fn delay(self) -> u64 {
        match self {
            Latency::Normal | Latency::Low => 0,
        }
    }

    /// Parses `normal` or `low`, for the programs' `--latency` flag.
    ///
    /// # Errors
    ///
    /// A message naming the two choices for anything else.
    pub fn parse(s: &str) -> Result<Latency, String> {
        match s {
            "normal" => Ok(Latency::Normal),
            "low" => Ok(Latency::Low),
            _ => Err(format!("{s:?} is not a latency preset: normal or low")),
        }
    }
}

/// Whether stderr is a terminal (then a status line is redrawn in place).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// How often a status is logged when stderr is not a terminal.
pub const STATUS_LOG_EVERY: Duration = Duration::from_secs(10);

/// A program's one-line status: redrawn in place on a terminal, else logged every
/// [`STATUS_LOG_EVERY`]. Both programs show theirs through it.
#[derive(Debug)]
pub struct StatusLine {
    /// Redraw in place on stderr rather than log.
    terminal: bool,
    /// When the status was last logged (not a terminal).
    last_log: Option<Instant>,
    /// A line is on the terminal, to be erased before other output.
    drawn: bool,
}

impl StatusLine {
    /// A status line, drawn on a terminal if `terminal`.
    pub fn new(terminal: bool) -> StatusLine {
        StatusLine {
            terminal,
            last_log: None,
            drawn: false,
        }
    }

    /// Shows `line` at `now`: redrawn on a terminal, else logged if due.
    pub fn show(&mut self, line: &str, now: Instant) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.log_due(now) {
            tracing::info!("{line}");
        }
    }

    /// Erases the drawn line, if any, so the next output starts on a clean line.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    /// Whether a log line is due at `now` (the first is at once); if so, starts the next wait.
    fn log_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= STATUS_LOG_EVERY);
        if due {
            self.last_log = Some(now);
        }
        due
    }
}

/// The rate of a growing byte total between two readings, for status lines.
#[derive(Debug, Clone, Copy)]
pub struct RateMeter {
    /// The previous reading and when it was taken.
    last: (Instant, u64),
}

impl RateMeter {
    /// A meter starting from 0 bytes at `now`.
    pub fn new(now: Instant) -> RateMeter {
        RateMeter { last: (now, 0) }
    }

    /// The rate from the previous reading to `total` bytes at `now`.
    pub fn update(&mut self, total: u64, now: Instant) -> Rate {
        let (t0, b0) = self.last;
        let secs = now.saturating_duration_since(t0).as_secs_f64().max(0.001);
        self.last = (now, total);
        Rate((total.saturating_sub(b0) as f64 * 8.0 / secs) as u64)
    }
}

/// Bytes as a human-readable size.
pub fn human_bytes(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} kB", v / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_log_is_due_at_once_then_every_ten_seconds() {
        let t0 = Instant::now();
        let mut status = StatusLine::new(false);
        assert!(status.log_due(t0));
        assert!(!status.log_due(t0 + Duration::from_secs(9)));
        assert!(status.log_due(t0 + STATUS_LOG_EVERY));
        assert!(!status.log_due(t0 + STATUS_LOG_EVERY + Duration::from_secs(1)));
    }

    #[test]
    fn latency_presets_pair_segment_length_and_hold_back() {
        assert_eq!(Latency::parse("normal"), Ok(Latency::Normal));
        assert_eq!(Latency::parse("low"), Ok(Latency::Low));
        assert!(Latency::parse("Low").is_err());
        assert_eq!(Latency::default(), Latency::Normal);
        assert_eq!(Latency::Normal.segment_duration(), Duration::from_secs(2));
        assert_eq!(Latency::Normal.delay(), 0);
        assert_eq!(Latency::Low.segment_duration(), Duration::from_secs(1));
        assert_eq!(Latency::Low.delay(), 0);
    }

    #[test]
    fn rate_meter_measures_between_readings() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(t0);
        // 500 kB in 2 s is 2 Mbit/s; then nothing in the next second.
        assert_eq!(
            meter.update(500_000, t0 + Duration::from_secs(2)),
            Rate(2_000_000)
        );
        assert_eq!(meter.update(500_000, t0 + Duration::from_secs(3)), Rate(0));
    }
}
