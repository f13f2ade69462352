//! The broadcaster's status line and its join and leave log lines, worked out from its
//! figures and the time given; [`crate::cli::StatusLine`] draws or logs the line.
//!
//! Joins and leaves are read from the viewer count between two updates (the node reports a
//! count, not who), so a join and a leave within one update show as neither.

use crate::cli::{human_bytes, RateMeter, StatusLine};
use crate::rate::Rate;
use std::time::Instant;

/// What the status shows, read from the node and the broadcaster's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Figures {
    /// Viewers connected now.
    pub(super) viewers: usize,
    /// Segment bytes uploaded so far.
    pub(super) uploaded: u64,
    /// Segment bytes viewers received so far (estimated; see `BroadcastStats`).
    pub(super) delivered: u64,
    /// The newest segment published.
    pub(super) newest: Option<u64>,
    /// The stream's bitrate over its last segments, bits/s.
    pub(super) stream_bps: u64,
}

/// The broadcaster's status, shown on a terminal or logged now and then.
pub(super) struct BroadcasterStatus {
    /// Where the line goes.
    out: StatusLine,
    /// Upload rate since the previous update.
    upload: RateMeter,
    /// Viewers at the previous update, to tell joins and leaves.
    viewers: usize,
}

impl BroadcasterStatus {
    /// A status starting at `now`, drawn on a terminal if `terminal`.
    pub(super) fn new(terminal: bool, now: Instant) -> BroadcasterStatus {
        BroadcasterStatus {
            out: StatusLine::new(terminal),
            upload: RateMeter::new(now),
            viewers: 0,
        }
    }

    /// Logs a line per viewer that joined or left since the last update, then shows the
    /// status for `f` at `now`.
    pub(super) fn show(&mut self, f: &Figures, now: Instant) {
        let changes = membership_lines(self.viewers, f.viewers);
        self.viewers = f.viewers;
        if !changes.is_empty() {
            // Log lines start on a clean line, below the status they interrupt.
            self.out.clear();
            for line in changes {
                tracing::info!("{line}");
            }
        }
        let up = self.upload.update(f.uploaded, now);
        self.out.show(&text(f, up), now);
    }

    /// Erases the drawn line, if any, so the next output starts on a clean line.
    pub(super) fn clear(&mut self) {
        self.out.clear();
    }
}

/// One line per viewer that joined or left, going from `before` viewers to `after`.
fn membership_lines(before: usize, after: usize) -> Vec<String> {
    if after > before {
        (before + 1..=after)
            .map(|n| format!("a viewer joined ({n} watching)"))
            .collect()
    } else {
        (after..before)
            .rev()
            .map(|n| format!("a viewer left ({n} watching)"))
            .collect()
    }
}

/// The share of what viewers received that the broadcaster did not send itself; None
/// before viewers received anything.
pub(super) fn offload(uploaded: u64, delivered: u64) -> Option<f64> {
    if delivered == 0 {
        return None;
    }
    Some((1.0 - uploaded as f64 / delivered as f64).clamp(0.0, 1.0))
}

/// The status text for `f`, uploading at `up`.
fn text(f: &Figures, up: Rate) -> String {
    let offload =
        offload(f.uploaded, f.delivered).map_or("-".to_owned(), |o| format!("{:.0}%", 100.0 * o));
    let segment = f.newest.map_or("-".to_owned(), |n| n.to_string());
    format!(
        "viewers {} | offload {offload} | up {up} ({} total) | segment {segment} | stream {}",
        f.viewers,
        human_bytes(f.uploaded),
        Rate(f.stream_bps),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_shows_the_figures() {
        let f = Figures {
            viewers: 3,
            uploaded: 1_000_000,
            delivered: 3_000_000,
            newest: Some(42),
            stream_bps: 1_050_000,
        };
        assert_eq!(
            text(&f, Rate(1_200_000)),
            "viewers 3 | offload 67% | up 1.20 Mbit/s (1.0 MB total) | segment 42 | \
             stream 1.05 Mbit/s"
        );
    }

    #[test]
    fn text_before_anything_was_published() {
        assert_eq!(
            text(&Figures::default(), Rate(0)),
            "viewers 0 | offload - | up 0 kbit/s (0 B total) | segment - | stream 0 kbit/s"
        );
    }

    #[test]
    fn offload_is_what_the_broadcaster_did_not_send() {
        assert_eq!(offload(0, 0), None);
        assert_eq!(offload(250, 1000), Some(0.75));
        // Seeding more than one copy (or an estimate that fell short) is no offload, not less.
        assert_eq!(offload(1500, 1000), Some(0.0));
    }

    #[test]
    fn one_line_per_join_and_per_leave() {
        assert!(membership_lines(2, 2).is_empty());
        assert_eq!(
            membership_lines(1, 3),
            [
                "a viewer joined (2 watching)",
                "a viewer joined (3 watching)"
            ]
        );
        assert_eq!(
            membership_lines(3, 1),
            ["a viewer left (2 watching)", "a viewer left (1 watching)"]
        );
    }
}
