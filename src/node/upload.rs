//! Upload admission: how many uploads run at once, when a request is answered Busy, when
//! seeding is skipped, and how long a seeding push may go unacknowledged.

use crate::stream::{SegmentHeader, PARTS};
use std::collections::VecDeque;
use std::time::Duration;

/// Upload backlog (the limiter's debt, in time) beyond which requests are answered Busy and
/// seeding pushes are skipped: the requester does better asking someone else.
pub const BUSY_BACKLOG: Duration = Duration::from_millis(1500);

/// Requests a peer may have us serve at once; more are answered Busy. An honest viewer asks
/// one partner for at most 2 parts at a time (the origin for 3), so only a flooder meets it.
pub const SERVES_PER_CONNECTION: usize = 4;

/// Pushes accepted at once from one connection: every part of two segments, since a
/// broadcaster with few viewers seeds each of them several parts of every segment.
pub const PUSHES_PER_CONNECTION: usize = 2 * PARTS;

/// The least [`seed_confirm_wait`]: above an ack delay and scheduling noise, and well inside
/// half a playout budget, when viewers would ask the origin themselves.
pub const SEED_CONFIRM_MIN: Duration = Duration::from_millis(250);

/// How long a seeding push may wait for its acknowledgement while its connection
/// acknowledges no new packet before the receiver counts as vanished and the part is
/// seeded elsewhere: four round trips, and at least [`SEED_CONFIRM_MIN`].
pub fn seed_confirm_wait(rtt: Duration) -> Duration {
    (rtt * 4).max(SEED_CONFIRM_MIN)
}

/// Most uploads a node runs at once, and how many while the cap or the bitrate is unknown.
pub const MAX_UPLOAD_SLOTS: u64 = 8;

/// How many uploads a node with upload cap `cap_bps` (None: uncapped) runs at once for a
/// stream of `stream_bps` (0: not known yet). Each downstream must get at least the stream's
/// bitrate or it falls behind live, so the cap is divided by the bitrate (at least one). A
/// `join` request (a joiner's player waits for it) gets one more where a quarter of the
/// bitrate is left over beyond the full slots: there it takes spare upload, while on a
/// barely sufficient uplink it would slow the live relaying everyone else waits on.
pub fn upload_slots(cap_bps: Option<u64>, stream_bps: u64, join: bool) -> u64 {
    let Some(cap) = cap_bps.filter(|_| stream_bps > 0) else {
        return MAX_UPLOAD_SLOTS + u64::from(join);
    };
    let slots = (cap / stream_bps).clamp(1, MAX_UPLOAD_SLOTS);
    let spare = cap.saturating_sub(slots.saturating_mul(stream_bps));
    slots + u64::from(join && spare.saturating_mul(4) >= stream_bps)
}

/// [`upload_slots`] for one request, with one slot more for a part the origin seeded to
/// this node ([`SeededParts`]), whatever the spare: the seed holds the swarm's only viewer
/// copy of it, and every other viewer waits on it.
pub fn serving_slots(cap_bps: Option<u64>, stream_bps: u64, join: bool, seeded: bool) -> u64 {
    upload_slots(cap_bps, stream_bps, join) + u64::from(seeded)
}

/// Of `slots` upload slots, how many a node whose viewer partners are `(symmetric, all)`
/// holds back from requesters not behind a symmetric NAT: slots in half the proportion of
/// its partners behind one, rounded up. A peer behind a symmetric NAT can be served by
/// public peers alone (and the broadcaster), and public peers are few; everyone else has
/// many suppliers. Served first come first served, public peers spent most of their upload
/// on the many, and the symmetric ones fell back on the broadcaster until its uplink was
/// full (the simulator at 1,000 peers, 20 % of them symmetric: continuity 0.97 at
/// 4.1 origin copies; holding back half their share: 0.996 at 3.3).
pub fn held_back(slots: u64, (symmetric, all): (usize, usize)) -> u64 {
    if symmetric == 0 || all == 0 {
        return 0;
    }
    let (s, a) = (symmetric.min(all) as u64, all as u64);
    slots.saturating_mul(s).div_ceil(2 * a).min(slots)
}

/// The parts the origin pushed to this node lately, oldest first: two segments' worth.
#[derive(Debug, Default)]
pub struct SeededParts(VecDeque<(u64, u8)>);

impl SeededParts {
    /// Parts remembered; older ones are forgotten first.
    pub const CAPACITY: usize = 2 * PARTS;

    /// Part `part` of segment `number` was pushed here by the origin.
    pub fn note(&mut self, number: u64, part: u8) {
        if self.0.len() >= Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back((number, part));
    }

    /// Whether part `part` of segment `number` was pushed here by the origin lately.
    pub fn contains(&self, number: u64, part: u8) -> bool {
        self.0.contains(&(number, part))
    }
}

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Serve it: an upload slot is taken, to be given back with [`Uploads::release`].
    Serve,
    /// Every upload slot is taken: ask someone else.
    BusySlots,
    /// The uplink is queued beyond [`BUSY_BACKLOG`]: ask someone else.
    BusyBacklog,
    /// The part is neither here nor arriving (or this node does not upload).
    Unavailable,
}

/// One node's uploads: the slots in use, the stream's bitrate as headers show it (slots are
/// counted in bitrates), and the parts the origin seeded here (served beyond the cap).
#[derive(Debug, Default)]
pub struct Uploads {
    active: u64,
    stream_bps: u64,
    seeded: SeededParts,
    /// See [`Uploads::note_partners`].
    symmetric_partners: (usize, usize),
}

impl Uploads {
    /// The stream's smoothed bitrate (bits/s; 0 until a header showed it).
    pub fn stream_bps(&self) -> u64 {
        self.stream_bps
    }

    /// Folds a bitrate seen in a segment header (or a publish) into the smoothed one.
    pub fn note_bitrate(&mut self, bps: u64) {
        self.stream_bps = if self.stream_bps == 0 {
            bps
        } else {
            (self.stream_bps * 7 + bps) / 8
        };
    }

    /// Folds a verified header's length and duration into the stream's bitrate.
    pub fn note_header(&mut self, header: &SegmentHeader) {
        if header.duration_ms > 0 {
            self.note_bitrate(u64::from(header.len) * 8000 / u64::from(header.duration_ms));
        }
    }

    /// How many of our viewer partners sit behind symmetric NATs (off our site), and how
    /// many viewer partners we have ([`crate::mesh::Mesh::symmetric_partners`]).
    pub fn note_partners(&mut self, (symmetric, all): (usize, usize)) {
        self.symmetric_partners = (symmetric, all);
    }

    /// The origin pushed part `part` of segment `number` here.
    pub fn note_seeded(&mut self, number: u64, part: u8) {
        self.seeded.note(number, part);
    }

    /// Uploads running now.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// Answers a request for part `part` of `number` (`servable`: this node uploads and holds
    /// the part or is receiving it; `join`: a joiner's player waits for it), given the upload
    /// cap (None: uncapped) and the uplink's backlog now. [`Answer::Serve`] takes a slot.
    pub fn admit(
        &mut self,
        servable: bool,
        (number, part): (u64, u8),
        join: bool,
        cap_bps: Option<u64>,
        backlog: Duration,
        from_symmetric: bool,
    ) -> Answer {
        if !servable {
            return Answer::Unavailable;
        }
        let seeded = self.seeded.contains(number, part);
        let mut slots = serving_slots(cap_bps, self.stream_bps, join, seeded);
        if !seeded && !from_symmetric {
            slots -= held_back(slots, self.symmetric_partners);
        }
        if self.active >= slots {
            return Answer::BusySlots;
        }
        if backlog > BUSY_BACKLOG {
            return Answer::BusyBacklog;
        }
        self.active += 1;
        Answer::Serve
    }

    /// An upload [`Uploads::admit`] let in has ended, however it ended.
    pub fn release(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Whether a seeding push should go out with the uplink this backlogged: seeding is
    /// optional, and a queued uplink would only delay it past the point of use.
    pub fn may_push(backlog: Duration) -> bool {
        backlog < BUSY_BACKLOG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_slots_divide_the_cap_by_the_bitrate_and_add_a_join_slot_only_with_room() {
        const M: u64 = 1_000_000;
        // 3 Mbit/s for a 2 Mbit/s stream: one slot, and half the bitrate spare for a joiner.
        assert_eq!(upload_slots(Some(3 * M), 2 * M, false), 1);
        assert_eq!(upload_slots(Some(3 * M), 2 * M, true), 2);
        // 2.1 Mbit/s: barely one stream's worth; a join slot would slow the live relaying.
        assert_eq!(upload_slots(Some(21 * M / 10), 2 * M, true), 1);
        // Below the bitrate: still one; exactly four streams: no spare, no join slot.
        assert_eq!(upload_slots(Some(M), 2 * M, true), 1);
        assert_eq!(upload_slots(Some(8 * M), 2 * M, true), 4);
        // At most eight, and eight while the cap or the bitrate is unknown.
        assert_eq!(upload_slots(Some(100 * M), 2 * M, false), MAX_UPLOAD_SLOTS);
        assert_eq!(
            upload_slots(Some(100 * M), 2 * M, true),
            MAX_UPLOAD_SLOTS + 1
        );
        assert_eq!(upload_slots(None, 2 * M, false), MAX_UPLOAD_SLOTS);
        assert_eq!(upload_slots(Some(3 * M), 0, false), MAX_UPLOAD_SLOTS);
        assert_eq!(upload_slots(Some(u64::MAX), 1, true), MAX_UPLOAD_SLOTS + 1);
    }

    #[test]
    fn requests_beyond_the_slots_or_the_backlog_are_busy() {
        const M: u64 = 1_000_000;
        let mut u = Uploads::default();
        u.note_bitrate(2 * M);
        let cap = Some(3 * M);
        let idle = Duration::ZERO;
        assert_eq!(
            u.admit(false, (1, 0), false, cap, idle, false),
            Answer::Unavailable
        );
        assert_eq!(
            u.admit(true, (1, 0), false, cap, idle, false),
            Answer::Serve
        );
        // One slot at 1.5x: the next is turned away until the first ends.
        assert_eq!(
            u.admit(true, (1, 1), false, cap, idle, false),
            Answer::BusySlots
        );
        // A seeded part gets a slot more.
        u.note_seeded(1, 1);
        assert_eq!(
            u.admit(true, (1, 1), false, cap, idle, false),
            Answer::Serve
        );
        u.release();
        u.release();
        let queued = BUSY_BACKLOG + Duration::from_millis(1);
        assert_eq!(
            u.admit(true, (1, 2), false, cap, queued, false),
            Answer::BusyBacklog
        );
        assert_eq!(u.active(), 0);
        assert!(Uploads::may_push(Duration::ZERO) && !Uploads::may_push(BUSY_BACKLOG));
    }

    #[test]
    fn a_node_with_partners_behind_symmetric_nats_holds_slots_back_for_them() {
        const M: u64 = 1_000_000;
        // Half the partners' share, rounded up; nothing without such partners.
        assert_eq!(held_back(4, (0, 10)), 0);
        assert_eq!(held_back(4, (5, 10)), 1);
        assert_eq!(held_back(4, (10, 10)), 2);
        assert_eq!(held_back(1, (1, 11)), 1);
        assert_eq!(held_back(3, (20, 10)), 2);
        assert_eq!(held_back(3, (1, 0)), 0);
        let mut u = Uploads::default();
        u.note_bitrate(2 * M);
        let (cap, idle) = (Some(4 * M), Duration::ZERO);
        u.note_partners((2, 8));
        let ask = |u: &mut Uploads, part: u8, symmetric: bool| {
            u.admit(true, (1, part), false, cap, idle, symmetric)
        };
        // Two slots, one held back: one for anyone, the other for the symmetric partners.
        assert_eq!(ask(&mut u, 0, false), Answer::Serve);
        assert_eq!(ask(&mut u, 1, false), Answer::BusySlots);
        assert_eq!(ask(&mut u, 1, true), Answer::Serve);
        // A part the origin seeded here is anyone's: the swarm waits on it.
        u.release();
        u.note_seeded(1, 2);
        assert_eq!(ask(&mut u, 2, false), Answer::Serve);
        // Without such partners, nothing is held back.
        u.release();
        u.release();
        u.note_partners((0, 8));
        assert_eq!(ask(&mut u, 3, false), Answer::Serve);
        assert_eq!(ask(&mut u, 4, false), Answer::Serve);
    }

    #[test]
    fn the_bitrate_is_smoothed_from_headers() {
        let mut u = Uploads::default();
        u.note_bitrate(800);
        u.note_bitrate(1600);
        assert_eq!(u.stream_bps(), 900);
    }

    #[test]
    fn a_seed_is_confirmed_within_four_round_trips_and_never_faster_than_the_floor() {
        assert_eq!(
            seed_confirm_wait(Duration::from_millis(10)),
            SEED_CONFIRM_MIN
        );
        assert_eq!(
            seed_confirm_wait(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
    }
}
