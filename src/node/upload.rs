//! Upload admission: how many uploads run at once, when a request is answered Busy, when
//! seeding is skipped, and how long a seeding push may go unacknowledged.

use crate::stream::{NodeId, SegmentHeader, PARTS};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The tag [`Requester::peer`] of the peer with id `id`.
pub fn peer_tag(id: &NodeId) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
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
    /// Serve it: an upload slot is taken, to be given back with [`Uploads::finish`].
    Serve,
    /// Every upload slot is taken: ask someone else.
    BusySlots,
    /// The uplink is queued beyond [`BUSY_BACKLOG`]: ask someone else.
    BusyBacklog,
    /// The part is neither here nor arriving (or this node does not upload).
    Unavailable,
}

/// Who asks, as far as admission cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requester {
    /// Behind a symmetric NAT (its Hello says so): see [`held_back`].
    pub symmetric: bool,
    /// On one of our own networks (our site's LAN). Its uploads do not cross the uplink
    /// that uploads off our networks share (an office's WAN), so each path has its own
    /// slots, learned apart.
    pub lan: bool,
    /// Which peer it is (the first bytes of its id): a path's slots drop only when uploads
    /// to two different peers ran slow in a row, so one peer that reads at a trickle cannot
    /// talk a node out of serving everyone else.
    pub peer: u64,
}

/// Upload slots a path starts with, before any upload on it was measured, when no cap was
/// given: enough to learn from, few enough that a thin uplink (a home router's, an office
/// WAN behind a desktop's LAN port) is not swamped by a joining crowd. Under a cap a path
/// has the cap's slots ([`upload_slots`]) and learns nothing: the cap is the operator's
/// knowledge (in the simulator, where every home has its uplink as its cap, learning under
/// it cost the 10,000-peer class continuity: 0.9835 against 0.9928).
pub const FIRST_SLOTS: u64 = 2;

/// Upload slots the LAN path starts with, without a cap: a LAN port carries many streams,
/// and a site's neighbours ask for each part at once, most of them of one that is still
/// arriving across the WAN (relays, which teach nothing of the path's rate). With
/// [`FIRST_SLOTS`] there, three neighbours asking one viewer for a part left one turned away
/// every 100 ms until its slots grew, which in the lab's offices took more than the 30 s
/// warm-up at most viewers: up to 1,515 `Busy` a minute, 8–12 missed deadlines at every
/// viewer of an office, and parts gone late fetched across the WAN by all four (1.61 copies
/// on that WAN). A slow LAN (a busy wireless one) is learned from full serves as any path.
pub const LAN_FIRST_SLOTS: u64 = MAX_UPLOAD_SLOTS;

/// How fast an upload must go, against the stream's bitrate, to count as keeping up: an
/// upload slower than this means the path carries more at once than it can.
pub const KEEPING_UP: f64 = 0.8;

/// What a path must carry, in bitrates, to keep one slot. Below it the path goes quiet
/// (no slot) for [`QUIET`], then tries one upload: an uplink shared with others who also
/// upload (an office WAN) carries little per node, and one slot on each of ten desktops
/// ran ten crawling uploads through it (the simulator's sites of ten on a 5 Mbit/s WAN:
/// each at a quarter of the bitrate, late for everyone who asked). A home uplink of half
/// the bitrate keeps its slot.
pub const CRAWLING: f64 = 0.4;

/// How long a path that carried less than [`CRAWLING`] takes no request before it tries one.
pub const QUIET: Duration = Duration::from_secs(1);

/// The slots one path (off our networks, or our LAN) may run when no upload cap was given,
/// learned from its own uploads, as a congestion window is: a node rarely knows what its
/// uplink carries (a home router's, or an office WAN shared with colleagues who also
/// upload), and a slot count from a cap it does not have swamped thin uplinks (in the
/// simulator, office desktops behind one 5 Mbit/s WAN served eight requests each, every
/// transfer crawled, and continuity fell to 0.02 for everyone).
///
/// Each slot promises its downstream the stream's bitrate, so an upload that finished
/// slower than [`KEEPING_UP`] of the bitrate while `k` ran at once, right after a slow one
/// to another peer, shows the path carries about `k × rate`: the slots drop to that many
/// bitrates (at least one, or none for [`QUIET`] below [`CRAWLING`]). One that kept up
/// while every slot was in use adds a slot (at most [`MAX_UPLOAD_SLOTS`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PathSlots {
    /// None until the first request: then the cap's slots, or [`FIRST_SLOTS`] without one.
    slots: Option<u64>,
    /// Started under a cap: the operator's figure stands, and nothing is learned.
    capped: bool,
    active: u64,
    /// With no slot: when the next upload may try the path.
    probe_at: Option<Instant>,
    /// The peer whose upload ran slow last, if the one after it did not keep up either.
    slow_to: Option<u64>,
}

impl PathSlots {
    /// Slots this path may run now (None: not started).
    pub fn slots(&self) -> Option<u64> {
        self.slots
    }

    /// Starts the path, if it is not, at the slots of `cap_bps` for a stream of
    /// `stream_bps`, or at `first` without a cap ([`FIRST_SLOTS`], [`LAN_FIRST_SLOTS`]).
    fn start(&mut self, cap_bps: Option<u64>, stream_bps: u64, first: u64) -> u64 {
        if self.slots.is_none() {
            self.capped = cap_bps.is_some();
        }
        *self.slots.get_or_insert(match cap_bps {
            Some(_) => upload_slots(cap_bps, stream_bps, false),
            None => first,
        })
    }

    /// Uploads running on this path now.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// The slots this path may run now, starting it if need be, and whether the one it
    /// allows is a quiet path's probe (once its quiet time is over, to learn again).
    fn allowed(
        &mut self,
        now: Instant,
        (cap_bps, stream_bps): (Option<u64>, u64),
        first: u64,
    ) -> (u64, bool) {
        let slots = self.start(cap_bps, stream_bps, first);
        let probe = slots == 0 && self.probe_at.is_none_or(|t| now >= t);
        (if probe { 1 } else { slots }, probe)
    }

    /// An upload was let in (`probe`: as a quiet path's probe, which starts another quiet time).
    fn admitted(&mut self, now: Instant, probe: bool) {
        self.active += 1;
        if probe {
            self.probe_at = Some(now + QUIET);
        }
    }

    /// An upload to `peer` ended at `now`; `sent` as [`Uploads::finish`] takes it.
    fn ended(&mut self, (now, peer): (Instant, u64), sent: Option<(u64, Duration, u64)>, bps: u64) {
        if let Some((bytes, elapsed, at_start)) = sent {
            // Uploads that started or ended meanwhile shared the path for part of the time.
            let sharing = (at_start + self.active).div_ceil(2);
            self.learn((now, peer), bytes, elapsed, (sharing, bps));
        }
        self.active = self.active.saturating_sub(1);
    }

    /// An upload of `bytes` to `peer` that ended at `now` after `elapsed` (from its first byte
    /// leaving to its last, round trip excluded), with `sharing` uploads on this path
    /// (itself included), for a stream of `stream_bps` (0: not known, nothing learned).
    pub fn learn(
        &mut self,
        (now, peer): (Instant, u64),
        bytes: u64,
        elapsed: Duration,
        (sharing, stream_bps): (u64, u64),
    ) {
        let Some(slots) = self.slots.filter(|_| !self.capped) else {
            return;
        };
        if stream_bps == 0 || bytes == 0 {
            return;
        }
        // An upload sent within a millisecond went out of a burst allowance and says
        // nothing of the path's rate, except that it kept up.
        let secs = elapsed.as_secs_f64().max(0.001);
        let rate = bytes as f64 * 8.0 / secs;
        let sharing = sharing.max(1);
        if rate < KEEPING_UP * stream_bps as f64 {
            // One slow peer proves nothing of the path: wait for a second, other one.
            let other = self.slow_to.is_some_and(|p| p != peer);
            self.slow_to = Some(peer);
            if !other {
                return;
            }
            let carried = rate * sharing as f64 / stream_bps as f64;
            if carried < CRAWLING {
                self.slots = Some(0);
                self.probe_at = Some(now + QUIET);
            } else {
                self.slots = Some((carried as u64).clamp(1, slots.max(1)));
            }
        } else {
            // It kept up: a slow one before it was slow at its own end.
            self.slow_to = None;
            if sharing >= slots {
                self.slots = Some((slots + 1).min(MAX_UPLOAD_SLOTS));
            }
        }
    }
}

/// One node's uploads: the slots in use on each path, the stream's bitrate as headers show
/// it (slots are counted in bitrates), and the parts the origin seeded here (served beyond
/// the cap).
#[derive(Debug, Default)]
pub struct Uploads {
    /// Off our networks (`[0]`) and on our LAN (`[1]`).
    paths: [PathSlots; 2],
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

    /// Uploads running now, on both paths.
    pub fn active(&self) -> u64 {
        self.paths.iter().map(|p| p.active).sum()
    }

    /// The path a requester's uploads take: off our networks or on our LAN.
    pub fn path(&self, lan: bool) -> &PathSlots {
        &self.paths[usize::from(lan)]
    }

    fn path_mut(&mut self, lan: bool) -> &mut PathSlots {
        &mut self.paths[usize::from(lan)]
    }

    /// Answers a request for part `part` of `number` from `who` (`servable`: this node
    /// uploads and holds the part or is receiving it; `join`: a joiner's player waits for
    /// it), given the upload cap (None: uncapped) and the uplink's backlog now.
    /// [`Answer::Serve`] takes a slot on `who`'s path, to be given back with
    /// [`Uploads::finish`].
    pub fn admit(
        &mut self,
        now: Instant,
        servable: bool,
        (number, part): (u64, u8),
        join: bool,
        (cap_bps, backlog): (Option<u64>, Duration),
        who: Requester,
    ) -> Answer {
        if !servable {
            return Answer::Unavailable;
        }
        let seeded = self.seeded.contains(number, part);
        let bps = self.stream_bps;
        let full = serving_slots(cap_bps, bps, join, seeded);
        // The extra slots a join or a seed gets are beyond what the path learned, too.
        let extra = full - upload_slots(cap_bps, bps, false);
        let first = if who.lan {
            LAN_FIRST_SLOTS
        } else {
            FIRST_SLOTS
        };
        let path = self.path_mut(who.lan);
        let (learned, probe) = path.allowed(now, (cap_bps, bps), first);
        let active = path.active;
        let mut slots = full.min(learned + extra);
        if !seeded && !who.symmetric {
            slots -= held_back(slots, self.symmetric_partners);
        }
        if active >= slots {
            return Answer::BusySlots;
        }
        if backlog > BUSY_BACKLOG {
            return Answer::BusyBacklog;
        }
        self.path_mut(who.lan).admitted(now, probe);
        Answer::Serve
    }

    /// An upload [`Uploads::admit`] let in for `who` has ended at `now`, however it ended.
    /// `sent`: it sent a part held whole here (not relayed while arriving, whose pace is
    /// its upstream's) to the end: its bytes, how long they took to leave (round trip
    /// excluded), and how many uploads ran on its path once it started, itself included
    /// ([`PathSlots::learn`]).
    pub fn finish(&mut self, now: Instant, who: Requester, sent: Option<(u64, Duration, u64)>) {
        let bps = self.stream_bps;
        self.path_mut(who.lan).ended((now, who.peer), sent, bps);
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
        let t0 = Instant::now();
        const M: u64 = 1_000_000;
        let mut u = Uploads::default();
        u.note_bitrate(2 * M);
        let cap = Some(3 * M);
        let idle = Duration::ZERO;
        let anyone = Requester::default();
        assert_eq!(
            u.admit(t0, false, (1, 0), false, (cap, idle), anyone),
            Answer::Unavailable
        );
        assert_eq!(
            u.admit(t0, true, (1, 0), false, (cap, idle), anyone),
            Answer::Serve
        );
        // One slot at 1.5x: the next is turned away until the first ends.
        assert_eq!(
            u.admit(t0, true, (1, 1), false, (cap, idle), anyone),
            Answer::BusySlots
        );
        // A seeded part gets a slot more.
        u.note_seeded(1, 1);
        assert_eq!(
            u.admit(t0, true, (1, 1), false, (cap, idle), anyone),
            Answer::Serve
        );
        u.finish(t0, anyone, None);
        u.finish(t0, anyone, None);
        let queued = BUSY_BACKLOG + Duration::from_millis(1);
        assert_eq!(
            u.admit(t0, true, (1, 2), false, (cap, queued), anyone),
            Answer::BusyBacklog
        );
        assert_eq!(u.active(), 0);
        assert!(Uploads::may_push(Duration::ZERO) && !Uploads::may_push(BUSY_BACKLOG));
    }

    #[test]
    fn a_node_with_partners_behind_symmetric_nats_holds_slots_back_for_them() {
        let t0 = Instant::now();
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
        let anyone = Requester::default();
        let ask = |u: &mut Uploads, part: u8, symmetric: bool| {
            let who = Requester {
                symmetric,
                ..Requester::default()
            };
            u.admit(t0, true, (1, part), false, (cap, idle), who)
        };
        // Two slots, one held back: one for anyone, the other for the symmetric partners.
        assert_eq!(ask(&mut u, 0, false), Answer::Serve);
        assert_eq!(ask(&mut u, 1, false), Answer::BusySlots);
        assert_eq!(ask(&mut u, 1, true), Answer::Serve);
        // A part the origin seeded here is anyone's: the swarm waits on it.
        u.finish(t0, anyone, None);
        u.note_seeded(1, 2);
        assert_eq!(ask(&mut u, 2, false), Answer::Serve);
        // Without such partners, nothing is held back.
        u.finish(t0, anyone, None);
        u.finish(t0, anyone, None);
        u.note_partners((0, 8));
        assert_eq!(ask(&mut u, 3, false), Answer::Serve);
        assert_eq!(ask(&mut u, 4, false), Answer::Serve);
    }

    #[test]
    fn a_path_learns_its_slots_from_how_fast_its_uploads_went() {
        let t0 = Instant::now();
        const M: u64 = 1_000_000;
        let ms = Duration::from_millis;
        // 250,000 bits (a part of a 2 Mbit/s stream in eight parts a second).
        let part = 31_250;
        let mut p = PathSlots::default();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        assert_eq!(p.slots(), None);
        // Nothing is learned before the path starts (its first request).
        p.learn((t0, next()), part, ms(5000), (2, 2 * M));
        assert_eq!(p.slots(), None);
        assert_eq!(p.start(None, 2 * M, FIRST_SLOTS), FIRST_SLOTS);
        // Kept up (125 ms: the bitrate) with every slot in use: one more, up to the most.
        p.learn((t0, next()), part, ms(125), (2, 2 * M));
        assert_eq!(p.slots(), Some(3));
        // Kept up with a slot idle: nothing learned of what a third would do.
        p.learn((t0, next()), part, ms(100), (2, 2 * M));
        assert_eq!(p.slots(), Some(3));
        for _ in 0..20 {
            p.learn((t0, next()), part, ms(1), (8, 2 * M));
        }
        assert_eq!(p.slots(), Some(MAX_UPLOAD_SLOTS));
        // Eight at once, each at a quarter of the bitrate, to two peers in a row: the path
        // carries two streams.
        p.learn((t0, next()), part, ms(500), (8, 2 * M));
        assert_eq!(p.slots(), Some(MAX_UPLOAD_SLOTS));
        p.learn((t0, next()), part, ms(500), (8, 2 * M));
        assert_eq!(p.slots(), Some(2));
        // Alone at half the bitrate (a thin home uplink), to a third: one slot.
        p.learn((t0, next()), part, ms(250), (1, 2 * M));
        assert_eq!(p.slots(), Some(1));
        p.learn((t0, next()), part, Duration::ZERO, (1, 2 * M));
        assert_eq!(p.slots(), Some(2));
        // Alone at an eighth (others share the uplink), twice: quiet, until one keeps up.
        p.learn((t0, next()), part, ms(1000), (1, 2 * M));
        p.learn((t0, next()), part, ms(1000), (1, 2 * M));
        assert_eq!(p.slots(), Some(0));
        p.learn((t0, next()), part, ms(125), (1, 2 * M));
        assert_eq!(p.slots(), Some(1));
        // Nothing is learned before the bitrate is known.
        p.learn((t0, next()), part, ms(5000), (2, 0));
        assert_eq!(p.slots(), Some(1));
    }

    #[test]
    fn one_peer_reading_at_a_trickle_does_not_cut_the_slots() {
        const M: u64 = 1_000_000;
        let (t0, part, trickler) = (Instant::now(), 31_250, 7);
        let mut p = PathSlots::default();
        p.start(Some(8 * M), 2 * M, FIRST_SLOTS);
        p.capped = false;
        // Every upload to the trickler crawls, with honest ones between keeping up.
        for honest in 100..110 {
            p.learn((t0, trickler), part, Duration::from_secs(5), (4, 2 * M));
            p.learn((t0, trickler), part, Duration::from_secs(5), (4, 2 * M));
            p.learn((t0, honest), part, Duration::from_millis(100), (1, 2 * M));
        }
        assert_eq!(p.slots(), Some(4));
        // A second slow peer right after it: the path itself is slow.
        p.learn((t0, trickler), part, Duration::from_secs(5), (4, 2 * M));
        p.learn((t0, 8), part, Duration::from_millis(500), (8, 2 * M));
        assert_eq!(p.slots(), Some(2));
    }

    #[test]
    fn uploads_off_our_networks_and_on_our_lan_have_slots_of_their_own() {
        let t0 = Instant::now();
        const M: u64 = 1_000_000;
        let mut u = Uploads::default();
        u.note_bitrate(2 * M);
        let idle = Duration::ZERO;
        let (wan, lan) = (
            Requester::default(),
            Requester {
                lan: true,
                ..Requester::default()
            },
        );
        let other = Requester { peer: 1, ..wan };
        // Uncapped: a path starts with FIRST_SLOTS, however many the (absent) cap allows.
        for part in 0..2 {
            assert_eq!(
                u.admit(t0, true, (1, part), false, (None, idle), wan),
                Answer::Serve
            );
        }
        assert_eq!(
            u.admit(t0, true, (1, 2), false, (None, idle), wan),
            Answer::BusySlots
        );
        // The LAN's slots are not the WAN's, and it starts with LAN_FIRST_SLOTS: a site's
        // neighbours all ask for each part at once.
        for part in 0..LAN_FIRST_SLOTS {
            assert_eq!(
                u.admit(t0, true, (2, part as u8), false, (None, idle), lan),
                Answer::Serve
            );
        }
        assert_eq!(
            u.admit(t0, true, (3, 0), false, (None, idle), lan),
            Answer::BusySlots
        );
        for _ in 1..LAN_FIRST_SLOTS {
            u.finish(t0, lan, None);
        }
        assert_eq!(u.active(), 3);
        // Two off-site uploads each at a quarter of the bitrate: the WAN carries half a
        // stream, one slot; the LAN's stay.
        u.finish(t0, wan, Some((31_250, Duration::from_millis(500), 2)));
        u.finish(t0, other, Some((31_250, Duration::from_millis(500), 2)));
        assert_eq!(
            (u.path(false).slots(), u.path(true).slots()),
            (Some(1), Some(LAN_FIRST_SLOTS))
        );
        assert_eq!(
            u.admit(t0, true, (1, 3), false, (None, idle), wan),
            Answer::Serve
        );
        assert_eq!(
            u.admit(t0, true, (1, 4), false, (None, idle), wan),
            Answer::BusySlots
        );
        // Under a cap a path has the cap's slots, and learns nothing.
        let mut capped = Uploads::default();
        capped.note_bitrate(2 * M);
        let four = (Some(8 * M), idle);
        for part in 0..4 {
            let a = capped.admit(t0, true, (1, part), false, four, wan);
            assert_eq!(a, Answer::Serve);
        }
        let a = capped.admit(t0, true, (1, 4), false, four, wan);
        assert_eq!(a, Answer::BusySlots);
        capped.finish(t0, wan, Some((31_250, Duration::from_millis(2000), 4)));
        assert_eq!(capped.path(false).slots(), Some(4));
        u.finish(t0, lan, None);
        assert_eq!(u.path(true).active(), 0);
        let low = Some(M);
        assert_eq!(
            u.admit(t0, true, (1, 5), false, (low, idle), lan),
            Answer::Serve
        );
        assert_eq!(
            u.admit(t0, true, (1, 6), false, (low, idle), lan),
            Answer::BusySlots
        );
    }

    #[test]
    fn a_path_too_slow_for_one_slot_takes_one_upload_a_quiet_time_to_learn_again() {
        const M: u64 = 1_000_000;
        let t0 = Instant::now();
        let mut u = Uploads::default();
        u.note_bitrate(2 * M);
        let (wan, idle) = (Requester::default(), Duration::ZERO);
        let ask = |u: &mut Uploads, at: Instant, part: u8| {
            u.admit(at, true, (1, part), false, (None, idle), wan)
        };
        assert_eq!(ask(&mut u, t0, 0), Answer::Serve);
        // Alone, at a tenth of the bitrate, to two peers in a row: the path goes quiet.
        u.finish(t0, wan, Some((31_250, Duration::from_millis(1250), 1)));
        assert_eq!(ask(&mut u, t0, 1), Answer::Serve);
        let other = Requester { peer: 1, ..wan };
        u.finish(t0, other, Some((31_250, Duration::from_millis(1250), 1)));
        assert_eq!(u.path(false).slots(), Some(0));
        assert_eq!(ask(&mut u, t0 + QUIET / 2, 1), Answer::BusySlots);
        // A seeded part is still served: the swarm waits on it.
        u.note_seeded(1, 7);
        assert_eq!(ask(&mut u, t0, 7), Answer::Serve);
        u.finish(t0, wan, None);
        // After the quiet time, one upload tries the path; a second waits another.
        let later = t0 + QUIET;
        assert_eq!(ask(&mut u, later, 2), Answer::Serve);
        u.finish(later, wan, None);
        assert_eq!(ask(&mut u, later, 3), Answer::BusySlots);
        let again = later + QUIET;
        assert_eq!(ask(&mut u, again, 3), Answer::Serve);
        // It kept up: the path has its slot back.
        u.finish(again, wan, Some((31_250, Duration::from_millis(120), 1)));
        assert_eq!(u.path(false).slots(), Some(1));
        assert_eq!(ask(&mut u, again, 4), Answer::Serve);
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
