//! The viewer's status line: its text worked out from the node's counters and the time
//! given; [`crate::cli::StatusLine`] draws or logs it.

use super::stats::share_from_peers;
use crate::cli::{human_bytes, RateMeter, StatusLine};
use crate::net::NodeStats;
use crate::rate::Rate;
use std::time::Instant;

/// The viewer's status, shown on a terminal or logged now and then.
pub(super) struct ViewerStatus {
    /// Where the line goes.
    out: StatusLine,
    /// Upload rate since the previous update.
    upload: RateMeter,
    /// The broadcaster was reached once, so losing it now means "unreachable", not "connecting".
    ever_connected: bool,
}

impl ViewerStatus {
    /// A status starting at `now`, drawn on a terminal if `terminal`.
    pub(super) fn new(terminal: bool, now: Instant) -> ViewerStatus {
        ViewerStatus {
            out: StatusLine::new(terminal),
            upload: RateMeter::new(now),
            ever_connected: false,
        }
    }

    /// Shows the status for `s` at `now`: redrawn on a terminal, else logged if due.
    pub(super) fn show(&mut self, s: &NodeStats, now: Instant) {
        let line = self.update(s, now);
        self.out.show(&line, now);
    }

    /// Erases the drawn line, if any, so the next output starts on a clean line.
    pub(super) fn clear(&mut self) {
        self.out.clear();
    }

    /// The status text for `s` at `now`, with the upload rate since the previous update.
    fn update(&mut self, s: &NodeStats, now: Instant) -> String {
        let up_rate = self.upload.update(s.bytes_uploaded, now);
        self.ever_connected |= s.origin_connected;
        text(s, up_rate, self.ever_connected)
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
    use std::time::Duration;

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
        let mut status = ViewerStatus::new(false, t0);
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
        let mut status = ViewerStatus::new(false, t0);
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
}
