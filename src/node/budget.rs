//! How many control messages, and how many peer candidates in them, one connection may
//! send: a budget far above what an honest peer sends, so that only a flood exhausts it.
//! And how many connections may be in their handshake or Hello at once, in all and from
//! one address. Pure: the caller passes the time; the driver closes and bans on a refusal.

use super::Misbehaviour;
use crate::rate::{Rate, TokenBucket};
use crate::wire::Control;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Connections still in their handshake or Hello, in all: each costs state before the
/// peer has proved anything, so a flood of half-open attempts is refused beyond it.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections in their handshake or Hello from one IP address. Established connections
/// are not capped per address (many honest viewers can share one, behind NAT or on
/// loopback); they are bounded by the node's connection cap and the mesh's partner cap.
pub const MAX_HANDSHAKES_PER_IP: usize = 32;

/// The connections in their handshake or Hello, counted per address against
/// [`MAX_HANDSHAKES`] and [`MAX_HANDSHAKES_PER_IP`]. Holds an entry only per address with
/// one in progress, so it is bounded by [`MAX_HANDSHAKES`] entries.
#[derive(Debug, Default)]
pub struct HandshakeSlots {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

impl HandshakeSlots {
    /// Takes a slot for a new attempt from `ip`; false (and nothing taken) if that would
    /// pass either cap.
    pub fn take(&mut self, ip: IpAddr) -> bool {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.total >= MAX_HANDSHAKES || from_ip >= MAX_HANDSHAKES_PER_IP {
            return false;
        }
        self.per_ip.insert(ip, from_ip + 1);
        self.total += 1;
        true
    }

    /// Gives back a slot [`HandshakeSlots::take`] gave for `ip`.
    pub fn give_back(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Slots taken, in all.
    pub fn in_use(&self) -> usize {
        self.total
    }

    /// Addresses with a slot taken.
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }
}

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

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([10, 0, a, b])
    }

    #[test]
    fn handshakes_are_capped_per_address_and_in_all() {
        let mut slots = HandshakeSlots::default();
        for _ in 0..MAX_HANDSHAKES_PER_IP {
            assert!(slots.take(ip(0, 1)));
        }
        assert!(!slots.take(ip(0, 1)), "one past the per-address cap");
        assert!(slots.take(ip(0, 2)), "another address is not held up by it");
        slots.give_back(ip(0, 1));
        assert!(slots.take(ip(0, 1)), "a slot given back is free again");
        assert!(!slots.take(ip(0, 1)));
        // Fill up to the total cap from addresses of one each, then nobody gets in.
        let mut n = 0u16;
        while slots.in_use() < MAX_HANDSHAKES {
            n += 1;
            assert!(slots.take(ip((n / 256) as u8 + 1, n as u8)));
        }
        assert_eq!(slots.in_use(), MAX_HANDSHAKES);
        assert!(!slots.take(ip(200, 1)), "one past the total cap");
        assert!(
            !slots.take(ip(0, 2)),
            "even from an address under its own cap"
        );
        slots.give_back(ip(1, 1));
        assert!(slots.take(ip(200, 1)));
        // Giving everything back leaves no entry behind: the table is bounded by the caps.
        slots.give_back(ip(200, 1));
        for i in 2..=n {
            slots.give_back(ip((i / 256) as u8 + 1, i as u8));
        }
        slots.give_back(ip(0, 2));
        for _ in 0..MAX_HANDSHAKES_PER_IP {
            slots.give_back(ip(0, 1));
        }
        assert_eq!((slots.in_use(), slots.addresses()), (0, 0));
        // A slot never taken is not given back (no underflow into another address's count).
        slots.give_back(ip(9, 9));
        assert_eq!(slots.in_use(), 0);
    }
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
            site: None,
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
