//! The viewer's status: one line redrawn on a terminal, or a log line every
//! [`LOG_EVERY`] otherwise. The text is worked out from the node's counters and the time
//! given; only [`StatusLine::show`] and [`StatusLine::clear`] write.

use super::stats::share_from_peers;
use crate::cli::human_bytes;
use crate::net::NodeStats;
use crate::rate::Rate;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often the status is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The one-line status on a terminal, or an occasional log line otherwise.
pub(super) struct StatusLine {
    /// Redraw in place on stderr rather than log.
    terminal: bool,
    /// When the status was last logged (not a terminal).
    last_log: Option<Instant>,
    /// Bytes uploaded at the last update, and when, for the upload rate since.
    last_uploaded: (Instant, u64),
    /// A line is on the terminal, to be erased before other output.
    drawn: bool,
    /// The broadcaster was reached once, so losing it now means "unreachable", not "connecting".
    ever_connected: bool,
}

impl StatusLine {
    /// A status line starting at `now`, drawn on a terminal if `terminal`.
    pub(super) fn new(terminal: bool, now: Instant) -> StatusLine {
        StatusLine {
            terminal,
            last_log: None,
            last_uploaded: (now, 0),
            drawn: false,
            ever_connected: false,
        }
    }

    /// Shows the status for `s` at `now`: redrawn on a terminal, else logged if due.
    pub(super) fn show(&mut self, s: &NodeStats, now: Instant) {
        let line = self.update(s, now);
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
    pub(super) fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    /// The status text for `s` at `now`, with the upload rate since the previous update.
    fn update(&mut self, s: &NodeStats, now: Instant) -> String {
        let (t0, up0) = self.last_uploaded;
        let secs = now.duration_since(t0).as_secs_f64().max(0.001);
        let up_rate = Rate((s.bytes_uploaded.saturating_sub(up0) as f64 * 8.0 / secs) as u64);
        self.last_uploaded = (now, s.bytes_uploaded);
        self.ever_connected |= s.origin_connected;
        text(s, up_rate, self.ever_connected)
    }

    /// Whether a log line is due at `now` (the first is at once); if so, starts the next wait.
    fn log_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if due {
            self.last_log = Some(now);
        }
        due
    }
}

/// The status text for `s`, uploading at `up_rate`.
fn text(s: &NodeStats, up_rate: Rate, ever_connected: bool) -> String {
    let origin = match (s.origin_connected, ever_connected) {
        (true, _) => "",
        (false, false) => " (connecting to the broadcaster)",
        (false, true) => " (broadcaster unreachable, retrying)",
    };
    format!(
        "peers {}{} | buffered {} seg | from peers {:.0}% | up {} ({} total) | missed {}",
        s.peers,
        origin,
        s.buffered_segments,
        100.0 * share_from_peers(s),
        up_rate,
        human_bytes(s.bytes_uploaded),
        s.missed_deadlines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> NodeStats {
        NodeStats {
            peers: 3,
            origin_connected: true,
            buffered_segments: 5,
            bytes_from_peers: 3_000,
            bytes_from_origin: 1_000,
            missed_deadlines: 1,
            ..NodeStats::default()
        }
    }

    #[test]
    fn text_shows_the_figures() {
        let s = NodeStats {
            bytes_uploaded: 2_500_000,
            ..connected()
        };
        assert_eq!(
            text(&s, Rate(1_500_000), true),
            "peers 3 | buffered 5 seg | from peers 75% | up 1.50 Mbit/s (2.5 MB total) | missed 1"
        );
    }

    #[test]
    fn text_says_why_the_broadcaster_is_missing() {
        let s = NodeStats {
            origin_connected: false,
            ..connected()
        };
        assert!(text(&s, Rate(0), false).starts_with("peers 3 (connecting to the broadcaster) |"));
        assert!(
            text(&s, Rate(0), true).starts_with("peers 3 (broadcaster unreachable, retrying) |")
        );
    }

    #[test]
    fn update_reports_upload_rate_since_the_last_update() {
        let t0 = Instant::now();
        let mut status = StatusLine::new(false, t0);
        // 500 kB in 2 s is 2 Mbit/s.
        let s = NodeStats {
            bytes_uploaded: 500_000,
            ..connected()
        };
        let line = status.update(&s, t0 + Duration::from_secs(2));
        assert!(line.contains("| up 2.00 Mbit/s (500 kB total) |"), "{line}");
        // Nothing more uploaded in the next second.
        let line = status.update(&s, t0 + Duration::from_secs(3));
        assert!(line.contains("| up 0 kbit/s (500 kB total) |"), "{line}");
    }

    #[test]
    fn update_remembers_the_broadcaster_was_reached() {
        let t0 = Instant::now();
        let mut status = StatusLine::new(false, t0);
        let mut s = NodeStats {
            origin_connected: false,
            ..connected()
        };
        assert!(status
            .update(&s, t0)
            .contains("connecting to the broadcaster"));
        s.origin_connected = true;
        assert!(status.update(&s, t0).starts_with("peers 3 |"));
        s.origin_connected = false;
        assert!(status
            .update(&s, t0)
            .contains("broadcaster unreachable, retrying"));
    }

    #[test]
    fn log_is_due_at_once_then_every_ten_seconds() {
        let t0 = Instant::now();
        let mut status = StatusLine::new(false, t0);
        assert!(status.log_due(t0));
        assert!(!status.log_due(t0 + Duration::from_secs(9)));
        assert!(status.log_due(t0 + LOG_EVERY));
        assert!(!status.log_due(t0 + LOG_EVERY + Duration::from_secs(1)));
    }
}
