//! How a viewer finishes once the broadcaster ended the stream: it stays while its player
//! fetches the last segments, then exits. Pure: the caller gives the time and what it saw.

use std::fmt;
use std::time::{Duration, Instant};

/// Least time a viewer stays after the end, so partners can still fetch the tail from it.
pub(super) const END_GRACE: Duration = Duration::from_secs(3);

/// The end of a stream as one viewer lives it, from the moment it learns of it.
#[derive(Debug)]
pub(super) struct Ending {
    /// The broadcaster's last segment.
    last: u64,
    /// When the end became known.
    known_at: Instant,
    /// When the last segment was held too (the playlist then ends).
    complete_at: Option<Instant>,
}

/// What the viewer does now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Keep serving.
    Wait,
    /// Every segment through the last is held now, and the playlist ends: say so.
    Complete,
    /// Exit (with status 0), for this reason.
    Exit(Exit),
}

/// Why a viewer of an ended stream exits.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// Its player fetched the last segment.
    PlayerHasAll,
    /// No player fetched any segment.
    NoPlayer,
    /// A player is reading but did not reach the last segment in time.
    PlayerTooSlow {
        /// How long it was given.
        waited: Duration,
    },
    /// The last segments never arrived (the broadcaster left before they spread).
    TailMissing {
        /// The first segment missing.
        from: u64,
        /// The last segment.
        last: u64,
    },
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::PlayerHasAll => f.write_str("the player has every segment"),
            Exit::NoPlayer => f.write_str("no player is reading"),
            Exit::PlayerTooSlow { waited } => write!(
                f,
                "the player did not fetch the last segment within {} s",
                waited.as_secs()
            ),
            Exit::TailMissing { from, last } => {
                write!(f, "segments {from} to {last} never arrived")
            }
        }
    }
}

impl Ending {
    /// The stream ends after segment `last`, learnt at `now`.
    pub(super) fn new(last: u64, now: Instant) -> Ending {
        Ending {
            last,
            known_at: now,
            complete_at: None,
        }
    }

    /// The last segment.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// What to do at `now`, holding `newest`, with segments through `served` fetched by the
    /// player (None: none yet), waiting at most `patience` for the player or the tail.
    pub(super) fn step(
        &mut self,
        now: Instant,
        newest: Option<u64>,
        served: Option<u64>,
        patience: Duration,
    ) -> Step {
        let Some(complete_at) = self.complete_at else {
            if newest >= Some(self.last) {
                self.complete_at = Some(now);
                return Step::Complete;
            }
            if now.saturating_duration_since(self.known_at) >= patience {
                let from = newest.map_or(0, |n| n.saturating_add(1));
                return Step::Exit(Exit::TailMissing {
                    from,
                    last: self.last,
                });
            }
            return Step::Wait;
        };
        let waited = now.saturating_duration_since(complete_at);
        if waited < END_GRACE {
            return Step::Wait;
        }
        match served {
            Some(n) if n >= self.last => Step::Exit(Exit::PlayerHasAll),
            None => Step::Exit(Exit::NoPlayer),
            Some(_) if waited >= patience => Step::Exit(Exit::PlayerTooSlow { waited: patience }),
            Some(_) => Step::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(30);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_viewer_with_its_player_at_the_end_exits_after_the_grace() {
        let t0 = Instant::now();
        let mut e = Ending::new(9, t0);
        assert_eq!(e.step(t0, Some(9), Some(6), PATIENCE), Step::Complete);
        assert_eq!(e.step(at(t0, 1), Some(9), Some(9), PATIENCE), Step::Wait);
        assert_eq!(
            e.step(at(t0, 3), Some(9), Some(9), PATIENCE),
            Step::Exit(Exit::PlayerHasAll)
        );
    }

    #[test]
    fn a_player_behind_is_waited_for_until_patience_runs_out() {
        let t0 = Instant::now();
        let mut e = Ending::new(9, t0);
        assert_eq!(e.step(t0, Some(9), Some(6), PATIENCE), Step::Complete);
        assert_eq!(e.step(at(t0, 10), Some(9), Some(8), PATIENCE), Step::Wait);
        assert_eq!(
            e.step(at(t0, 30), Some(9), Some(8), PATIENCE),
            Step::Exit(Exit::PlayerTooSlow { waited: PATIENCE })
        );
    }

    #[test]
    fn without_a_player_the_grace_is_enough() {
        let t0 = Instant::now();
        let mut e = Ending::new(4, t0);
        assert_eq!(e.step(t0, Some(3), None, PATIENCE), Step::Wait);
        assert_eq!(e.step(at(t0, 1), Some(4), None, PATIENCE), Step::Complete);
        assert_eq!(e.step(at(t0, 3), Some(4), None, PATIENCE), Step::Wait);
        assert_eq!(
            e.step(at(t0, 4), Some(4), None, PATIENCE),
            Step::Exit(Exit::NoPlayer)
        );
    }

    #[test]
    fn a_tail_that_never_comes_ends_the_wait() {
        let t0 = Instant::now();
        let mut e = Ending::new(12, t0);
        assert_eq!(e.step(at(t0, 29), Some(10), Some(9), PATIENCE), Step::Wait);
        let exit = e.step(at(t0, 30), Some(10), Some(9), PATIENCE);
        assert_eq!(exit, Step::Exit(Exit::TailMissing { from: 11, last: 12 }));
        if let Step::Exit(why) = exit {
            assert_eq!(why.to_string(), "segments 11 to 12 never arrived");
        }
    }
}
