//! How many control messages, and how many peer candidates in them, one connection may
//! send: a budget far above what an honest peer sends, so that only a flood exhausts it.
//! Pure: the caller passes the time; the driver closes and bans on a refusal.

use super::Misbehaviour;
use crate::rate::{Rate, TokenBucket};
use crate::wire::Control;
use std::time::Instant;

/// Control messages per second a peer may sustain. An honest one sends a `Have` per part
/// ([`crate::stream::PARTS`] per segment) and a buffer map every few seconds: at 100 ms
/// segments that is 80 a second, so this leaves a margin of ten.
pub const CONTROL_PER_SEC: u64 = 1_000;
/// Control messages a peer may send at once: a viewer catching up announces the parts of
/// a whole window of segments in a burst (120 segments of 8 parts, and a margin).
pub const CONTROL_BURST: u64 = 4_000;
/// Peer candidates per minute a peer may hand us in `Peers`. An honest one sends at most
/// [`crate::wire::MAX_PEERS_PER_MESSAGE`] at connect and per peer exchange (every 10 s):
/// about 200 a minute.
pub const CANDIDATES_PER_MIN: u64 = 1_024;

/// The budget of one connection's control stream.
#[derive(Debug, Clone)]
pub struct ControlBudget {
    /// Messages; one token each.
    messages: TokenBucket,
    /// Candidates in `Peers`; one token each, banked up to a minute's worth.
    candidates: TokenBucket,
}

impl ControlBudget {
    /// A full budget at `now`.
    pub fn new(now: Instant) -> ControlBudget {
        // TokenBucket counts bytes of a rate in bits, so a rate of 8n gives n tokens a second.
        let per_sec = |n: u64| Rate(n.saturating_mul(8));
        ControlBudget {
            messages: TokenBucket::new(per_sec(CONTROL_PER_SEC), CONTROL_BURST, now),
            candidates: TokenBucket::new(
                per_sec(CANDIDATES_PER_MIN.div_ceil(60)),
                CANDIDATES_PER_MIN,
                now,
            ),
        }
    }

    /// Charges `msg` to the budget; [`Misbehaviour::ControlFlood`] once it is spent.
    pub fn charge(&mut self, msg: &Control, now: Instant) -> Result<(), Misbehaviour> {
        self.messages.take(1, now);
        if let Control::Peers { peers } = msg {
            self.candidates.take(peers.len() as u64, now);
        }
        // A debt means more than the budget arrived: the bucket starts full and refills
        // only at the allowed rate.
        let over =
            !self.messages.wait_time(now).is_zero() || !self.candidates.wait_time(now).is_zero();
        if over {
            Err(Misbehaviour::ControlFlood)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PeerInfo, MAX_PEERS_PER_MESSAGE};
    use std::time::Duration;

    fn have(n: u64) -> Control {
        Control::Have {
            number: n,
            parts: 1,
        }
    }

    fn peers(n: usize) -> Control {
        let p = PeerInfo {
            id: crate::stream::NodeId([7; 32]),
            addr: "127.0.0.1:9".parse().unwrap(),
            local: None,
            reach: crate::wire::Reach::Public,
        };
        Control::Peers { peers: vec![p; n] }
    }

    #[test]
    fn an_honest_peers_traffic_passes_for_an_hour() {
        let t0 = Instant::now();
        let mut budget = ControlBudget::new(t0);
        // A join's burst: a window of 120 segments announced part by part at once.
        for n in 0..120 * 8 {
            assert_eq!(budget.charge(&have(n), t0), Ok(()));
        }
        // Then 100 ms segments for an hour: 8 Haves each, a buffer map every 5 s and a
        // full peer sample every 10 s.
        for tick in 1..=36_000u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            for _ in 0..8 {
                assert_eq!(budget.charge(&have(tick), now), Ok(()));
            }
            if tick % 100 == 0 {
                assert_eq!(budget.charge(&peers(MAX_PEERS_PER_MESSAGE), now), Ok(()));
            }
        }
    }

    #[test]
    fn a_flood_of_messages_or_candidates_is_refused_within_its_burst() {
        let t0 = Instant::now();
        let mut budget = ControlBudget::new(t0);
        let refused = (0..CONTROL_BURST + 2).find(|&n| budget.charge(&have(n), t0).is_err());
        assert_eq!(refused, Some(CONTROL_BURST));
        let mut budget = ControlBudget::new(t0);
        let full = peers(MAX_PEERS_PER_MESSAGE);
        let refused = (0..100).find(|_| budget.charge(&full, t0).is_err());
        assert_eq!(
            refused,
            Some(CANDIDATES_PER_MIN / MAX_PEERS_PER_MESSAGE as u64)
        );
    }
}
