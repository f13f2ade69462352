//! One node's mesh state machine: partners, buffer maps, what to request from whom.
//!
//! Pure, in the style of `quinn-proto`: no sockets, no clock reads, seeded
//! randomness. The driver ([`crate::net`], or the simulator) feeds events in with
//! `handle_*(now, …)` and acts on what `poll_action()` returns; it calls
//! `handle_tick(now)` no later than `poll_timeout()`. The mesh moves numbered,
//! signed byte ranges and knows nothing of MPEG-TS; it does not verify bytes
//! either — the driver verifies and reports only verified segments, so the
//! simulator can skip the cryptography.
//!
//! ## Call order
//! 1. A connection completes its Hello exchange → [`Mesh::handle_connected`].
//! 2. Every control message from it → [`Mesh::handle_control`].
//! 3. A verified segment arrives (pulled or pushed) → [`Mesh::handle_segment`];
//!    a transfer fails → [`Mesh::handle_transfer_failed`]; bad data → [`Mesh::handle_misbehaviour`].
//! 4. The connection ends → [`Mesh::handle_disconnected`]; a dial fails → [`Mesh::handle_dial_failed`].
//! 5. The broadcaster publishes → [`Mesh::handle_publish`]; its input ends → [`Mesh::handle_end`].
//! 6. After any of these, drain [`Mesh::poll_action`]; sleep until [`Mesh::poll_timeout`], then
//!    [`Mesh::handle_tick`].
//!
//! ## Strategy
//! Pull with a deadline, after CoolStreaming/DONet, in parts: a segment is cut into
//! [`PARTS`] runs of pieces, and the part is the unit a viewer asks one supplier for.
//! Every node announces what it holds (a buffer map on connect, then a `Have` with a
//! mask of parts as each part *starts* arriving, so partners pull it piece by piece
//! while it arrives: cut-through; a partner is not told of parts it announced itself);
//! a viewer asks partners for the parts it misses,
//! most urgent first and otherwise rarest first, from the least-loaded, fastest
//! supplier. The broadcaster announces every segment to every viewer (so everyone
//! knows at once what exists and when it was published) but pushes each part to one
//! different viewer (`seed_fanout` copies in all, one by default), so the segment
//! enters the swarm at several points at once and the origin's upload stays near one
//! copy (a seed its receiver does not acknowledge is pushed to another viewer:
//! [`Mesh::handle_push_unconfirmed`]); a viewer asks the broadcaster itself only when no
//! partner has a part by the
//! time half of its playout budget is spent (200 ms for a joining viewer's first
//! segment, which the player is waiting for). A joiner asks for every part of that first
//! segment at once, flagged `join`, and suppliers with spare upload serve it in a slot
//! beyond their cap ([`crate::rate::upload_slots`]), so a flash crowd's first segments do
//! not wait for the live relaying; a part the origin seeded to a viewer is served in a
//! slot beyond its cap too, since that viewer holds the swarm's first copy (the drivers
//! decide both). The broadcaster is also the tracker: its peer samples
//! list its partners and, once it is full, the viewers it turned away lately, which still
//! have room for each other.
//!
//! A joiner starts `delay` segments behind live, so its player starts at once, unless
//! the broadcaster's [`Control::Swarm`] says the swarm's spare upload cannot serve the
//! joining crowd's catch-up soon enough (`Mesh::catch_up`): then it starts at live,
//! since that catch-up would come out of the upload the live segments need.
//!
//! Why parts: with whole-segment requests a viewer whose upload is below twice the
//! bitrate serves one downstream at a time for a whole segment, so a segment spreads
//! one relay chain at a time and the tree branches only every 0.7 s (BENCHMARKS.md).
//! A part turns a viewer's upload over in about a tenth of that, the tree branches
//! eight times as often, and a segment arrives over several suppliers' uplinks at once.

mod peers;

use crate::node::{DisconnectReason, Misbehaviour};
use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Control, PeerInfo, Role, MAX_BUFFER_MAP_BITS, MAX_PEERS_PER_MESSAGE};
use peers::{Announced, Peer, PeerMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a peer that answered Busy is left alone.
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// Shortest wait for a request's header before the supplier counts as stalled.
const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a supplier that stalled a request is not asked.
const STALL_BACKOFF: Duration = Duration::from_secs(2);
/// Requests left unanswered in a row that get a peer dropped and banned.
const MAX_STALLS: u32 = 3;
/// How long a joining viewer waits for partners to announce its first segment before it
/// asks the origin: long enough for the tracker's sample to be dialled and buffer maps to
/// arrive, short next to the wait for the stream's later segments. 200 ms joined faster
/// than 400 ms in the simulator and the swarm (docs/DESIGN.md, "Request order").
const JOIN_ORIGIN_WAIT: Duration = Duration::from_millis(200);
/// Most parts the broadcaster owes as seeds (see [`Mesh::handle_publish`]).
const MAX_SEED_DEBT: usize = 4 * PARTS;
/// Broadcaster: turned-away viewers remembered for its peer samples.
const MAX_OVERFLOW: usize = 64;
/// Broadcaster: how many of a peer sample's 16 are turned-away viewers.
const OVERFLOW_IN_SAMPLE: usize = 8;
/// Re-dial period for the origin while this viewer has few partners.
const ORIGIN_RETRY: Duration = Duration::from_secs(2);
/// A connection to the origin that ends sooner than this was a refusal, not a loss.
const ORIGIN_SHORT_LIVED: Duration = Duration::from_secs(5);
/// Re-dial period for the origin once this viewer has partners to pull from.
const ORIGIN_RETRY_WITH_PARTNERS: Duration = Duration::from_secs(30);

/// The broadcaster's partner cap ([`MeshConfig::broadcaster`]).
pub const BROADCASTER_MAX_PARTNERS: usize = 3072;
/// How recently a viewer must have connected to count as joining in [`Control::Swarm`].
pub const JOINING_WINDOW: Duration = Duration::from_secs(10);
/// Fewest viewers with a declared upload before the broadcaster sends [`Control::Swarm`]:
/// below that the sample says little, and the broadcaster's own upload covers a few
/// viewers' catch-up anyway.
const MIN_DECLARED: usize = 8;
/// Longest the swarm's spare upload may need to serve the joiners' catch-up, in segment
/// durations, for a joiner to catch up at all ([`Mesh::catch_up`]); beyond it a crowd's
/// catch-up would push everyone's latency up (BENCHMARKS.md).
const CATCH_UP_ABSORB_SEGMENTS: u64 = 8;

/// Tuning of one node. [`MeshConfig::viewer`] and [`MeshConfig::broadcaster`] give the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Whether this node is the broadcaster or a viewer.
    pub role: Role,
    /// The stream's (broadcaster's) id: the origin.
    pub origin: NodeId,
    /// Partners a viewer tries to keep.
    pub target_partners: usize,
    /// Partners beyond which new connections are turned away (after a peer sample).
    pub max_partners: usize,
    /// Requests outstanding to one partner at a time.
    pub max_inflight_per_partner: usize,
    /// Requests outstanding in all.
    pub max_inflight_total: usize,
    /// Segments a viewer holds back from the newest (the playlist delay); also the join point.
    pub delay_segments: u64,
    /// Segments remembered behind the newest (buffer maps, stores).
    pub window: u64,
    /// Time from first hearing of a segment to its playout deadline.
    pub playout_budget: Duration,
    /// A request unanswered after this long is abandoned and asked elsewhere.
    pub request_timeout: Duration,
    /// Broadcaster: viewers each new segment is pushed to.
    pub seed_fanout: usize,
    /// How often peer samples are exchanged.
    pub pex_interval: Duration,
    /// How often full buffer maps are resent (Haves keep them current in between).
    pub buffer_map_interval: Duration,
    /// Period of membership maintenance (dialling, origin re-dial).
    pub maintenance_interval: Duration,
    /// How long a misbehaving peer is refused.
    pub ban: Duration,
    /// Whether this node uploads to peers (false: leech-only).
    pub uploads: bool,
    /// Most candidate peers remembered.
    pub max_known: usize,
    /// Dials in progress at once.
    pub max_pending_dials: usize,
}

impl MeshConfig {
    /// Defaults for a viewer of `origin`, for segments of about `segment` length.
    pub fn viewer(origin: NodeId, segment: Duration, delay_segments: u64) -> MeshConfig {
        let budget = segment.mul_f64(delay_segments.max(1) as f64);
        MeshConfig {
            role: Role::Viewer,
            origin,
            target_partners: 6,
            // Room above the target for newcomers, so the last joiners of a crowd still
            // find established partners instead of only fellow newcomers.
            max_partners: 11,
            max_inflight_per_partner: 2,
            max_inflight_total: 6,
            delay_segments,
            window: 64,
            playout_budget: budget,
            request_timeout: (segment * 2).max(Duration::from_secs(3)),
            seed_fanout: 0,
            pex_interval: Duration::from_secs(10),
            buffer_map_interval: Duration::from_secs(5),
            maintenance_interval: Duration::from_millis(500),
            ban: Duration::from_secs(300),
            uploads: true,
            max_known: 256,
            max_pending_dials: 4,
        }
    }

    /// Defaults for the broadcaster of stream `origin`.
    pub fn broadcaster(origin: NodeId, segment: Duration) -> MeshConfig {
        MeshConfig {
            role: Role::Broadcaster,
            seed_fanout: 1,
            // Well below the 8192 connections `broadcaster.rs` gives `net.rs`, so the overflow
            // is turned away by the mesh, with a peer sample to join the swarm through, rather
            // than refused in the handshake. Each turned-away connection is held 300 ms (so the
            // sample lands first): the 5120 left over take a crowd of about 17,000 a second.
            max_partners: BROADCASTER_MAX_PARTNERS,
            ..MeshConfig::viewer(origin, segment, 3)
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control message.
    Send {
        /// To whom.
        peer: NodeId,
        /// What.
        msg: Control,
    },
    /// Open a transfer stream and ask for one part of a segment.
    Request {
        /// From whom.
        peer: NodeId,
        /// Which segment.
        number: u64,
        /// Which part of it (below [`PARTS`]).
        part: u8,
        /// For the segment a joining viewer's player is waiting for: the supplier serves
        /// it beyond its upload-slot cap (see [`crate::wire::Request::join`]).
        join: bool,
    },
    /// Abandon an outstanding request (it timed out, or the segment is complete).
    Cancel {
        /// The peer asked.
        peer: NodeId,
        /// The segment asked for.
        number: u64,
        /// The part asked for.
        part: u8,
    },
    /// Send one part of a segment unasked (broadcaster seeding).
    Push {
        /// To whom.
        peer: NodeId,
        /// Which segment.
        number: u64,
        /// Which part of it.
        part: u8,
    },
    /// Connect to a peer. `addr: None` means the origin, at the ticket's addresses.
    Dial {
        /// The key to pin.
        peer: NodeId,
        /// Where.
        addr: Option<SocketAddr>,
    },
    /// Close the connection.
    Disconnect {
        /// Whom.
        peer: NodeId,
        /// Why (for the close frame and the log).
        reason: DisconnectReason,
    },
}

/// Figures for `/stats` and the status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Connected viewer partners (the origin excluded).
    pub partners: usize,
    /// Connected to the origin.
    pub origin_connected: bool,
    /// Segments not held by their playout deadline.
    pub missed_deadlines: u64,
    /// Requests outstanding.
    pub inflight: usize,
    /// Peers banned for misbehaviour so far.
    pub bans: u64,
    /// The newest segment known to exist (announced by the origin, or held).
    pub newest: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    peer: NodeId,
    since: Instant,
}

/// One part of a segment: the unit asked of one supplier. Written only through
/// [`Tracked`]'s setters, which keep its masks.
#[derive(Debug, Default, Clone, Copy)]
struct PartState {
    /// Bytes are arriving (pulled or pushed) since this moment.
    receiving_since: Option<Instant>,
    /// From whom they are arriving.
    receiving_from: Option<NodeId>,
    inflight: Option<Inflight>,
}

/// A segment tracked and not yet held: the scheduler's view of each part (held, asked of
/// whom, arriving from whom), with no bytes, while [`crate::node::Assemblies`] is where the
/// driver keeps the segment's verified pieces. Its parts' flags are also kept as masks, so
/// the scans after every event read a part's own state only where a bit is set.
#[derive(Debug, Default)]
struct Tracked {
    /// When this node first learned the segment exists.
    first_heard: Option<Instant>,
    /// Parts already announced to partners (as each starts arriving, or when held).
    announced: u32,
    /// Parts held.
    held: u32,
    /// Parts whose `inflight` is set.
    asked: u32,
    /// Parts whose `receiving_since` is set.
    arriving: u32,
    missed: bool,
    /// Peers that failed us for this segment (not asked again for it).
    failed: Vec<NodeId>,
    parts: [PartState; PARTS],
}

impl Tracked {
    fn inflight(&self) -> usize {
        self.asked.count_ones() as usize
    }

    /// The parts neither held nor asked for.
    fn unasked(&self) -> u32 {
        ALL_PARTS & !self.held & !self.asked
    }

    /// Part `j`'s request (None: none in flight).
    fn set_inflight(&mut self, j: usize, inf: Option<Inflight>) {
        if let Some(ps) = self.parts.get_mut(j) {
            ps.inflight = inf;
            self.asked = set_bit(self.asked, j, inf.is_some());
        }
    }

    /// Part `j`'s bytes arriving since a moment, from a peer (None: not arriving).
    fn set_arriving(&mut self, j: usize, arriving: Option<(Instant, NodeId)>) {
        if let Some(ps) = self.parts.get_mut(j) {
            ps.receiving_since = arriving.map(|a| a.0);
            ps.receiving_from = arriving.map(|a| a.1);
            self.arriving = set_bit(self.arriving, j, arriving.is_some());
        }
    }

    /// Whether the masks say what the parts say.
    fn consistent(&self) -> bool {
        self.parts.iter().enumerate().all(|(j, ps)| {
            (self.asked & bit(j) != 0) == ps.inflight.is_some()
                && (self.arriving & bit(j) != 0) == ps.receiving_since.is_some()
        })
    }
}

/// `mask` with bit `j` set to `on`.
fn set_bit(mask: u32, j: usize, on: bool) -> u32 {
    if on {
        mask | bit(j)
    } else {
        mask & !bit(j)
    }
}

/// The parts in `mask`, lowest first.
fn bits(mask: u32) -> impl Iterator<Item = usize> {
    (0..PARTS).filter(move |&j| mask & bit(j) != 0)
}

fn bit(part: usize) -> u32 {
    1 << part
}

/// The segments a node holds: a ring of bits ending at the newest held, inline but for
/// one short allocation. Every announcement asks whether its segment is held, and the
/// `BTreeSet` this was cost a cold node per question (15% of the simulator's mesh calls
/// at 10,000 peers). Members stay within the window of the newest known segment, and a
/// verified one is at most a window ahead of it, so a span of two windows holds them all
/// (up to a window of 32,767 segments, nine hours of 1 s segments; a larger one gets that
/// span, and what falls out of it counts as not held).
#[derive(Debug)]
struct HeldSet {
    /// The newest member ever inserted; None before the first.
    top: Option<u64>,
    /// Bit `n % span` of member `n`, for `n` within `span` of `top`.
    words: Vec<u64>,
}

impl HeldSet {
    fn new(window: u64) -> HeldSet {
        let bits = window
            .saturating_mul(2)
            .saturating_add(2)
            .clamp(64, 1 << 16);
        HeldSet {
            top: None,
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    fn span(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The oldest number the ring can tell about.
    fn low(&self) -> Option<u64> {
        self.top.map(|t| t.saturating_sub(self.span() - 1))
    }

    fn bit(&self, n: u64) -> (usize, u64) {
        let i = n % self.span();
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn contains(&self, n: u64) -> bool {
        match (self.top, self.low()) {
            (Some(t), Some(lo)) if n >= lo && n <= t => {
                let (w, b) = self.bit(n);
                self.words.get(w).is_some_and(|x| x & b != 0)
            }
            _ => false,
        }
    }

    fn set(&mut self, n: u64, on: bool) {
        let (w, b) = self.bit(n);
        if let Some(x) = self.words.get_mut(w) {
            if on {
                *x |= b;
            } else {
                *x &= !b;
            }
        }
    }

    /// Adds `n`; false if it was there. One older than the span is not kept (it is far
    /// below the window, so no one asks).
    fn insert(&mut self, n: u64) -> bool {
        match self.top {
            Some(t) if n > t => {
                // The slots of t+1 ..= n held numbers that now fall out of the span.
                let step = (n - t).min(self.span());
                for x in n + 1 - step..=n {
                    self.set(x, false);
                }
                self.top = Some(n);
            }
            None => self.top = Some(n),
            Some(_) if self.low().is_some_and(|lo| n < lo) => return true,
            Some(_) if self.contains(n) => return false,
            Some(_) => {}
        }
        self.set(n, true);
        true
    }

    /// Forgets the members below `floor`.
    fn remove_below(&mut self, floor: u64) {
        if let (Some(lo), Some(t)) = (self.low(), self.top) {
            for x in lo..floor.min(t.saturating_add(1)) {
                self.set(x, false);
            }
        }
    }

    /// The members, oldest first.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let range = match (self.low(), self.top) {
            (Some(lo), Some(t)) => lo..t.saturating_add(1),
            _ => 0..0,
        };
        range.filter(|&n| self.contains(n))
    }
}

#[derive(Debug)]
struct Known {
    addr: SocketAddr,
    failures: u32,
    retry_at: Option<Instant>,
}

/// One node's view of the mesh. See the module docs for the call order.
#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    me: NodeId,
    rng: ChaCha8Rng,
    peers: PeerMap,
    known: BTreeMap<NodeId, Known>,
    pending_dials: BTreeSet<NodeId>,
    banned: BTreeMap<NodeId, Instant>,
    /// Segments tracked and not yet held. Held ones move to `held`: their per-part state
    /// is done with, and at 880 bytes a segment over a 64-segment window it was most of a
    /// node's memory, which the scans of the segments in play had to skip over.
    segs: BTreeMap<u64, Tracked>,
    /// Segments held, within the window.
    held: HeldSet,
    /// Every tracked segment below this is settled: given up with nothing in flight and
    /// its deadline counted (held ones have left `segs`). The per-event scans (scheduling,
    /// timeouts, deadlines) start here instead of walking the whole window. Lowered when an
    /// older segment is tracked, raised by [`Mesh::advance_settled`].
    settled_below: u64,
    /// The floor at the last [`Mesh::prune`].
    pruned_floor: u64,
    /// Lowest segment this node still wants; set at join from the origin's buffer map.
    want_from: Option<u64>,
    newest: Option<u64>,
    ended: Option<u64>,
    actions: VecDeque<Action>,
    next_maintenance: Instant,
    /// The latest time any input carried; wake-ups at or before it are already due.
    last_now: Instant,
    origin_retry_at: Instant,
    /// Dials to the origin that failed, and connections to it that ended within
    /// [`ORIGIN_SHORT_LIVED`] (turned away: its partner set is full), since the last that
    /// lasted; each doubles the wait before the next dial.
    origin_failures: u32,
    /// When the connection to the origin opened.
    origin_since: Option<Instant>,
    push_cursor: usize,
    /// `want_from` was taken from partners (the origin is full) and no data has come yet.
    start_from_partners: bool,
    /// Viewer: the broadcaster's last [`Control::Swarm`] (upload %, joining %).
    swarm: Option<(u32, u32)>,
    /// Broadcaster: the upload each viewer declared in its Hello (bits/s, 0 for a
    /// leech-only one) and when it connected; viewers without a cap are not in it.
    declared: BTreeMap<NodeId, (u64, Instant)>,
    /// Broadcaster: the stream's bitrate and its own upload cap, from
    /// [`Mesh::observe_capacity`].
    capacity: (u64, Option<u64>),
    /// Broadcaster: parts not yet seeded (published while few viewers were there).
    seed_debt: VecDeque<(u64, u8)>,
    /// Broadcaster: uploading viewers it turned away lately (newest last). They are still
    /// looking for partners, so they have room: the tracker's samples include them.
    overflow: VecDeque<PeerInfo>,
    /// A segment has been held: the join is over.
    started: bool,
    /// This node's rotation of part order among equally rare parts, so viewers that hear
    /// of a segment at the same moment do not all ask for part 0 first.
    part_offset: usize,
    stats: MeshStats,
    scratch: Scratch,
}

/// [`Mesh::schedule`]'s work lists, kept between calls.
#[derive(Debug, Default)]
struct Scratch {
    /// The segments with parts to ask for.
    candidates: Vec<Candidate>,
    /// Partners holding or receiving each part of each candidate.
    suppliers: Vec<[usize; PARTS]>,
    /// Every wanted part of every candidate, sorted into the order they are asked for.
    order: Vec<PartRank>,
}

/// A segment with parts to ask for, as [`Mesh::schedule`] found it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The segment's number.
    number: u64,
    /// Its parts neither held, asked for, nor arriving.
    wanted: u32,
    /// Its playout deadline has passed.
    late: bool,
    /// Its parts go before the others': it is urgent, or a joiner's join segment.
    first: bool,
    /// Its origin wait is over: its parts may go to the origin.
    urgent: bool,
}

/// One wanted part's place in the order parts are asked for. The derived order compares
/// the fields top to bottom, so their order is the policy: on-time segments first, the
/// urgent ones and a joiner's join segment before the rest, rarest first among equals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PartRank {
    /// Past its deadline: last, since chasing it first would make the next ones late too.
    late: bool,
    /// Neither urgent nor the join segment (false sorts first).
    not_first: bool,
    /// Partners holding or receiving it: the rarest first.
    suppliers: usize,
    /// Its segment's number: the oldest first among equals.
    number: u64,
    /// Its place in this node's rotation of parts ([`Mesh::part_offset`]), not its index.
    rotated: usize,
    /// It may go to the origin when no partner can serve it.
    urgent: bool,
}

impl Mesh {
    /// A node with id `me`; `seed` makes every random choice reproducible.
    pub fn new(cfg: MeshConfig, me: NodeId, seed: u64, now: Instant) -> Mesh {
        let held = HeldSet::new(cfg.window);
        let mut mesh = Mesh {
            cfg,
            me,
            rng: ChaCha8Rng::seed_from_u64(seed),
            peers: PeerMap::default(),
            known: BTreeMap::new(),
            pending_dials: BTreeSet::new(),
            banned: BTreeMap::new(),
            segs: BTreeMap::new(),
            held,
            settled_below: 0,
            pruned_floor: 0,
            want_from: None,
            newest: None,
            ended: None,
            actions: VecDeque::new(),
            next_maintenance: now,
            last_now: now,
            origin_retry_at: now,
            origin_failures: 0,
            origin_since: None,
            push_cursor: 0,
            start_from_partners: false,
            swarm: None,
            declared: BTreeMap::new(),
            capacity: (0, None),
            part_offset: 0,
            started: false,
            seed_debt: VecDeque::new(),
            overflow: VecDeque::new(),
            stats: MeshStats::default(),
            scratch: Scratch::default(),
        };
        mesh.part_offset = mesh.rng.gen_range(0..PARTS);
        mesh.maintain(now);
        mesh
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Mesh::handle_tick`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_maintenance;
        let header_timeout = self.header_timeout();
        // Parts a request could go out for once a partner's `Busy` backoff ends: neither
        // held nor asked for (a part arriving unasked counts, since that can stall), of the
        // segments `schedule` considers. Up to 16 segments; beyond, every partner counts.
        let mut open = [(0u64, 0u32); 16];
        let mut opens = 0usize;
        let mut overflow = false;
        let mut inflight_total = 0usize;
        let origin = self.peers.contains_key(&self.cfg.origin);
        for (&n, s) in self.segs.range(self.settled_start()..) {
            debug_assert!(s.consistent(), "segment {n}'s masks");
            let mut inflight = 0;
            for part in bits(s.asked).filter_map(|j| s.parts.get(j)) {
                let Some(inf) = part.inflight else { continue };
                inflight += 1;
                let expiry = inf.since + self.cfg.request_timeout;
                if expiry > self.last_now {
                    t = t.min(expiry);
                }
                let stall = inf.since + header_timeout;
                if part.receiving_since.is_none() && stall > self.last_now {
                    t = t.min(stall);
                }
            }
            // Counted as `schedule` counts.
            inflight_total += inflight;
            let unasked = s.unasked();
            if self.in_play(n) && unasked != 0 {
                // Once urgent, its parts may go to the origin: wake then, also with some of
                // its parts in flight (with none, the fallback below covers it).
                if let Some(u) = s.first_heard.map(|h| h + self.origin_wait_for(n)) {
                    if inflight > 0 && origin && u > self.last_now && u < t {
                        t = u;
                    }
                }
                match open.get_mut(opens) {
                    Some(slot) => {
                        *slot = (n, unasked);
                        opens += 1;
                    }
                    None => overflow = true,
                }
            }
            if inflight == 0 {
                if let Some(h) = s.first_heard {
                    // Wake when a waiting segment becomes eligible for the origin, or misses.
                    let fallback = h + self.origin_wait();
                    let deadline = h + self.cfg.playout_budget;
                    // Only future moments: a passed one was handled at the last tick, and
                    // returning it again would make the driver spin.
                    let join = if self.started {
                        deadline
                    } else {
                        h + JOIN_ORIGIN_WAIT
                    };
                    for x in [fallback, deadline, join] {
                        if x > self.last_now && x < t {
                            t = x;
                        }
                    }
                }
            }
        }
        // Only a viewer asks anyone for anything, so only its peers can have said Busy; the
        // broadcaster's thousands of partners are not walked after each of its events.
        // A backoff's end matters only if that peer could then be asked for something:
        // the tick it would cause does nothing otherwise (over half of a simulation's ticks
        // were such). Whatever changes that (an announcement, a request ending) is an
        // input, which schedules then. At the total in-flight cap nothing can be asked.
        let joining = !self.started && self.want_from.is_some();
        let capped = inflight_total >= self.cfg.max_inflight_total && !joining;
        if self.cfg.role == Role::Viewer && opens + usize::from(overflow) > 0 && !capped {
            let open = open.get(..opens).unwrap_or(&[]);
            for p in self.peers.values() {
                let Some(b) = p.busy_until.filter(|b| *b > self.last_now && *b < t) else {
                    continue;
                };
                // The origin serves any part (once it is urgent).
                let useful = overflow
                    || p.is_origin()
                    || (p.uploads && open.iter().any(|&(n, m)| p.have.get(n) & m != 0));
                if useful {
                    t = b;
                }
            }
        }
        t
    }

    /// Current figures.
    pub fn stats(&self) -> MeshStats {
        let mut s = self.stats.clone();
        s.partners = self
            .peers
            .iter()
            .filter(|(id, _)| **id != self.cfg.origin)
            .count();
        s.origin_connected = self.peers.contains_key(&self.cfg.origin);
        s.inflight = self.segs.values().map(Tracked::inflight).sum();
        s.newest = self.newest;
        s
    }

    /// The connected peers (origin included).
    pub fn peer_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// The newest segment number known to exist.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// The last segment of the stream, once the broadcaster has ended it.
    pub fn ended(&self) -> Option<u64> {
        self.ended
    }

    /// Lowest segment number this node is after (its join point and later).
    pub fn want_from(&self) -> Option<u64> {
        self.want_from
    }

    /// Whether a peer is banned right now (the driver refuses its connections).
    pub fn is_banned(&self, peer: &NodeId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// Adapts deadlines to the stream's real segment length (viewers learn it from headers).
    pub fn observe_segment_duration(&mut self, d: Duration) {
        if d.is_zero() || self.cfg.role != Role::Viewer {
            return;
        }
        let d = d.min(Duration::from_secs(60));
        let slots = self.cfg.delay_segments.max(1) as f64;
        // Smooth: one odd segment (a short last one, a long GOP) should not swing deadlines.
        let old = self.cfg.playout_budget.as_secs_f64() / slots;
        let seg = 0.8 * old + 0.2 * d.as_secs_f64();
        self.cfg.playout_budget = Duration::from_secs_f64(seg * slots);
        self.cfg.request_timeout = Duration::from_secs_f64((seg * 2.0).max(3.0));
    }

    /// How long after first hearing of segment `n` its parts may go to the origin: less
    /// for a joiner's join segment, which the player waits for.
    fn origin_wait_for(&self, n: u64) -> Duration {
        if !self.started && self.want_from == Some(n) {
            JOIN_ORIGIN_WAIT.min(self.origin_wait())
        } else {
            self.origin_wait()
        }
    }

    /// Whether segment `n` is one `schedule` asks for parts of: wanted, not given up, not
    /// past the stream's end.
    fn in_play(&self, n: u64) -> bool {
        self.want_from.is_some_and(|w| n >= w)
            && n >= self.lost_before()
            && self.ended.is_none_or(|e| n <= e)
    }

    fn origin_wait(&self) -> Duration {
        self.cfg.playout_budget / 2
    }

    fn is_origin(&self, id: &NodeId) -> bool {
        *id == self.cfg.origin
    }

    fn viewer_count(&self) -> usize {
        self.peers.keys().filter(|id| !self.is_origin(id)).count()
    }

    /// A connection finished its Hello exchange. `addr` is the peer's endpoint address;
    /// `uploads` and `upload_bps` are what its Hello said.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        peer: NodeId,
        addr: SocketAddr,
        claimed_role: Role,
        uploads: bool,
        upload_bps: Option<u64>,
    ) {
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        // The claim is informational: only the stream's key is ever treated as the origin.
        let _ = claimed_role;
        if peer == self.me || self.is_banned(&peer, now) {
            self.actions.push_back(Action::Disconnect {
                peer,
                reason: DisconnectReason::Refused,
            });
            return;
        }
        // Only the stream's key may claim to be the broadcaster.
        let role = if self.is_origin(&peer) {
            Role::Broadcaster
        } else {
            Role::Viewer
        };
        if role == Role::Viewer && self.viewer_count() >= self.cfg.max_partners {
            // Turn it away, but hand it some peers so it can find room elsewhere.
            let sample = self.peer_sample(Some(peer));
            if self.cfg.role == Role::Broadcaster && uploads {
                self.overflow.retain(|p| p.id != peer);
                if self.overflow.len() >= MAX_OVERFLOW {
                    self.overflow.pop_front();
                }
                self.overflow.push_back(PeerInfo { id: peer, addr });
            }
            self.send(peer, Control::Peers { peers: sample });
            self.actions.push_back(Action::Disconnect {
                peer,
                reason: DisconnectReason::PartnerSetFull,
            });
            return;
        }
        if role == Role::Broadcaster {
            self.start_from_partners = false;
            self.origin_since = Some(now);
        }
        // A partner now: no longer one of the broadcaster's turned-away.
        self.overflow.retain(|p| p.id != peer);
        if let Some(k) = self.known.get_mut(&peer) {
            k.failures = 0;
            k.retry_at = None;
        }
        self.peers.insert(
            peer,
            Peer {
                role,
                addr,
                uploads,
                have: Announced::new(),
                inflight: 0,
                throughput: None,
                busy_until: None,
                stalls: 0,
                seed_suspect: false,
                next_pex: now + self.cfg.pex_interval,
                next_buffer_map: now + self.cfg.buffer_map_interval,
            },
        );
        if self.cfg.role == Role::Broadcaster {
            // Before the buffer map: the viewer picks its join point on reading that.
            let declared = if uploads { upload_bps } else { Some(0) };
            if let Some(bps) = declared {
                self.declared.insert(peer, (bps, now));
            }
            if let Some(msg) = self.swarm_estimate(now) {
                self.send(peer, msg);
            }
        }
        if self.cfg.uploads || self.cfg.role == Role::Broadcaster {
            let map = self.buffer_map();
            self.send(peer, map);
        }
        if self.cfg.role == Role::Broadcaster && uploads {
            // Owed seeds of segments still within a newcomer's join window.
            let oldest = self
                .newest
                .map_or(0, |n| n.saturating_sub(self.cfg.delay_segments));
            while let Some((number, part)) = self.seed_debt.pop_front() {
                if number >= oldest && self.held.contains(number) {
                    self.actions.push_back(Action::Push { peer, number, part });
                    break;
                }
            }
        }
        if self.cfg.role == Role::Broadcaster {
            // The tracker's answer: a random sample of the swarm.
            let sample = self.peer_sample(Some(peer));
            if !sample.is_empty() {
                self.send(peer, Control::Peers { peers: sample });
            }
            if let Some(last) = self.ended {
                self.send(peer, Control::End { last });
            }
        }
        self.schedule(now);
    }

    /// The connection to `peer` ended.
    pub fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.declared.remove(&peer);
        for s in self.segs.values_mut() {
            for j in 0..PARTS {
                let Some(part) = s.parts.get(j) else { continue };
                let (asked, sending) = (
                    part.inflight.is_some_and(|i| i.peer == peer),
                    part.receiving_from == Some(peer),
                );
                if asked {
                    s.set_inflight(j, None);
                }
                // What it was sending dies with the connection: ask elsewhere at once rather
                // than wait out the request timeout (by then the segment may be given up).
                if sending {
                    s.set_arriving(j, None);
                }
            }
        }
        if self.is_origin(&peer) {
            let short = self
                .origin_since
                .take()
                .is_none_or(|t| now.saturating_duration_since(t) < ORIGIN_SHORT_LIVED);
            self.origin_failed(now, short);
        }
        self.dial_more_if_viewer(now);
        self.schedule(now);
    }

    /// A dial to `peer` failed.
    pub fn handle_dial_failed(&mut self, now: Instant, peer: NodeId) {
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        if self.is_origin(&peer) {
            self.origin_failed(now, true);
        }
        if let Some(k) = self.known.get_mut(&peer) {
            k.failures += 1;
            let backoff = Duration::from_secs(2u64.saturating_pow(k.failures.min(6)));
            k.retry_at = Some(now + backoff);
            if k.failures >= 5 {
                self.known.remove(&peer);
            }
        }
        self.dial_more_if_viewer(now);
    }

    /// A control message from a connected peer (after [`Control::validate`]).
    pub fn handle_control(&mut self, now: Instant, from: NodeId, msg: Control) {
        self.last_now = self.last_now.max(now);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        // It is alive after all.
        p.seed_suspect = false;
        match msg {
            Control::Hello(_) => {
                self.misbehaved(now, from, Misbehaviour::SecondHello);
                return;
            }
            Control::Have { number, parts } => {
                // Parts already held or asked for change nothing worth scheduling.
                if !self.learn(now, from, &[(number, parts)]) {
                    return;
                }
            }
            Control::BufferMap { first, bits } => {
                let numbers: Vec<(u64, u32)> = (0..bits.len() * 8)
                    .filter(|i| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                    .filter_map(|i| first.checked_add(i as u64))
                    .map(|n| (n, ALL_PARTS))
                    .collect();
                if !self.learn(now, from, &numbers) {
                    return;
                }
            }
            Control::Peers { peers } => {
                for p in peers.into_iter().take(MAX_PEERS_PER_MESSAGE) {
                    self.add_known(p);
                }
                // A joining viewer dials the tracker's sample at once rather than at the
                // next maintenance: half a second of a join is spent otherwise.
                self.dial_more_if_viewer(now);
            }
            Control::Swarm {
                upload_pct,
                joining_pct,
            } => {
                if self.is_origin(&from) {
                    self.swarm = Some((upload_pct, joining_pct.min(100)));
                }
                return;
            }
            Control::End { last } => {
                if self.is_origin(&from) {
                    self.ended = Some(last);
                    if let Some(n) = self.newest {
                        if last < n {
                            // Forget announced segments past the end; they cannot exist.
                            self.segs.retain(|k, _| *k <= last);
                        }
                    }
                }
            }
        }
        self.schedule(now);
    }

    /// Records which parts of which segments `from` holds; only the origin (or verified
    /// data) moves our notion of newest. True when it is worth scheduling: a part neither
    /// held nor asked for has a supplier now, or the join point or the live edge moved.
    fn learn(&mut self, now: Instant, from: NodeId, announced: &[(u64, u32)]) -> bool {
        let from_origin = self.is_origin(&from);
        let mut news = false;
        if self.cfg.role == Role::Viewer
            && !from_origin
            && (self.start_from_partners
                || (self.want_from.is_none() && !self.peers.contains_key(&self.cfg.origin)))
        {
            // The origin turned us away (full): start from what partners hold, the lowest of
            // their newest, redone as partners announce until data arrives, so a liar
            // announcing the future cannot park us past the stream.
            let others = self
                .peers
                .iter()
                .filter(|(id, _)| !self.is_origin(id) && **id != from)
                .filter_map(|(_, p)| p.have.newest);
            let start = others.chain(announced.iter().map(|(n, _)| *n).max()).min();
            if let Some(s) = start {
                news = true;
                // Join `delay` segments back only if most partners hold them whole: the
                // catch-up then comes from established viewers with upload to spare. A
                // viewer the origin turned away whose partners lack them is in a crowd of
                // joiners, where every joiner's catch-up comes out of the upload the live
                // segments need (10,000 joining in 2 s: 0.08% of segments late, latency
                // p99 2.0 s). It waits at their live edge instead: its playlist fills as
                // the stream goes on, a start about 2 s later, with no late segments.
                let whole = |k: u64| {
                    let theirs = announced
                        .iter()
                        .any(|&(n, m)| n == k && m & ALL_PARTS == ALL_PARTS);
                    let (mut with, mut all) = (usize::from(theirs), 1usize);
                    for (id, p) in &self.peers {
                        if !p.is_origin() && *id != from {
                            all += 1;
                            with += usize::from(p.have.get(k) == ALL_PARTS);
                        }
                    }
                    2 * with > all
                };
                let from_k = (s.saturating_sub(self.cfg.delay_segments)..s)
                    .find(|&k| whole(k))
                    .unwrap_or(s);
                self.want_from = Some(from_k);
                self.start_from_partners = true;
            }
        }
        let mut max_seen = None;
        news |= from_origin;
        // While the join point is picked from partners, what they hold up to `delay` below
        // it is kept: it decides the pick as more of them announce.
        let below = if self.start_from_partners {
            self.cfg.delay_segments
        } else {
            0
        };
        let lo = self.floor().saturating_sub(below);
        // A peer may announce at most a window ahead of what we know, so a liar cannot
        // make us track an unbounded set.
        let hi = self
            .newest
            .map_or(u64::MAX, |n| n.saturating_add(self.cfg.window));
        // Walked again below rather than collected: nearly every call is one `Have`, and
        // a vector for it was an allocation per announcement.
        let learned = move || {
            announced
                .iter()
                .filter(move |&&(n, parts)| {
                    n >= lo && (from_origin || n <= hi) && parts & ALL_PARTS != 0
                })
                .map(|&(n, parts)| (n, parts & ALL_PARTS))
        };
        for (n, _) in learned() {
            max_seen = max_seen.max(Some(n));
        }
        if from_origin {
            if let Some(m) = max_seen {
                self.advance_newest(m);
            }
        }
        let lo = self.floor().saturating_sub(below);
        let Some(peer) = self.peers.get_mut(&from) else {
            return news;
        };
        let uploads = peer.uploads;
        for (n, parts) in learned().filter(|(n, _)| *n >= lo) {
            peer.have.add(n, parts);
        }
        if self.cfg.role == Role::Broadcaster {
            return news;
        }
        // With the origin connected, a partner's claim does not start a deadline for a
        // segment the origin has not announced: a liar announcing the future would make it
        // look late before it is published. Without the origin, partners are all we have.
        let origin_says = self.peers.contains_key(&self.cfg.origin);
        let newest = self.newest;
        let exists = |n: u64| from_origin || !origin_says || newest.is_none_or(|k| n <= k);
        for (n, _) in learned() {
            if n >= lo && self.want_from.is_some_and(|w| n >= w) && exists(n) {
                if let Some(s) = self.track(n) {
                    s.first_heard.get_or_insert(now);
                }
            }
        }
        if from_origin {
            // Numbers are consecutive: everything up to the origin's newest exists.
            if let (Some(w), Some(n)) = (self.want_from, self.newest) {
                for k in w.max(self.floor())..=n {
                    if let Some(s) = self.track(k) {
                        s.first_heard.get_or_insert(now);
                    }
                }
            }
        }
        self.prune();
        // A part we neither hold nor have asked for now has a supplier.
        news || (uploads
            && learned()
                .any(|(n, parts)| self.segs.get(&n).is_some_and(|s| s.unasked() & parts != 0)))
    }

    fn advance_newest(&mut self, n: u64) {
        if self.newest.is_none_or(|old| n > old) {
            self.newest = Some(n);
        }
        if self.want_from.is_none() && self.cfg.role == Role::Viewer {
            self.want_from = Some(n.saturating_sub(self.catch_up()));
        }
    }

    /// How many segments behind live a joiner starts. `delay` fills the playlist's
    /// hold-back at once, so the player starts about as soon as those arrive. But they
    /// come out of the swarm's spare upload: each joiner wants `delay` segments beyond
    /// the live ones, and each viewer's spare serves (upload share − 1) of a segment per
    /// segment duration, so a crowd needs (joining share × `delay`) / (spare share)
    /// segment durations for them all. When the broadcaster's [`Control::Swarm`] puts that
    /// above [`CATCH_UP_ABSORB_SEGMENTS`], the joiner starts at live instead, and its
    /// playlist fills as the stream goes on (a start about `delay` segments later). 1,000
    /// viewers joining a running stream at 1.05× the bitrate: continuity 0.944 with
    /// catch-up, 1.0 without (BENCHMARKS.md). Counted in segments, not seconds: a viewer
    /// learns the segment duration only from the first header, after this choice.
    fn catch_up(&self) -> u64 {
        let delay = self.cfg.delay_segments;
        let Some((upload_pct, joining_pct)) = self.swarm else {
            return delay;
        };
        let spare = u64::from(upload_pct.saturating_sub(100));
        let need = delay.saturating_mul(u64::from(joining_pct));
        if need > CATCH_UP_ABSORB_SEGMENTS.saturating_mul(spare) {
            0
        } else {
            delay
        }
    }

    /// Broadcaster: the stream's bitrate (bits/s) and its own upload cap, as the driver
    /// last measured them; they size [`Control::Swarm`].
    pub fn observe_capacity(&mut self, stream_bps: u64, upload_bps: Option<u64>) {
        self.capacity = (stream_bps, upload_bps);
    }

    /// Broadcaster: the swarm's upload for a viewer connecting now, or None while it is
    /// not known (too few declared, the bitrate unknown, or its own upload unlimited, in
    /// which case it covers any catch-up).
    fn swarm_estimate(&self, now: Instant) -> Option<Control> {
        let (stream_bps, own) = self.capacity;
        let own = own?;
        let n = self.declared.len();
        if stream_bps == 0 || n < MIN_DECLARED {
            return None;
        }
        // One walk: the upload in all, and how many connected within the window.
        let (total, joining) =
            self.declared
                .values()
                .fold((u128::from(own), 0usize), |(t, j), (bps, since)| {
                    let recent = now.saturating_duration_since(*since) < JOINING_WINDOW;
                    (t + u128::from(*bps), j + usize::from(recent))
                });
        let per = total * 100 / (n as u128 * u128::from(stream_bps));
        Some(Control::Swarm {
            upload_pct: u32::try_from(per).unwrap_or(u32::MAX),
            joining_pct: u32::try_from(joining * 100 / n).unwrap_or(100),
        })
    }

    /// The state of segment `n`, tracked from now on if it was not; None if it is held.
    fn track(&mut self, n: u64) -> Option<&mut Tracked> {
        if self.held.contains(n) {
            return None;
        }
        self.settled_below = self.settled_below.min(n);
        Some(self.segs.entry(n).or_default())
    }

    /// Raises [`Mesh::settled_below`] past the segments settled since it was last raised.
    /// A given-up segment is never asked for again (the live edge only moves on), so this
    /// only rises.
    fn advance_settled(&mut self) {
        self.settled_below = self.settled_start();
    }

    /// Where [`Mesh::advance_settled`] would move [`Mesh::settled_below`] to now.
    fn settled_start(&self) -> u64 {
        let lost_before = self.lost_before();
        let settled = |n: u64, s: &Tracked| n < lost_before && s.missed && s.inflight() == 0;
        match self
            .segs
            .range(self.settled_below..)
            .find(|(n, s)| !settled(**n, s))
        {
            Some((&n, _)) => n,
            None => self
                .segs
                .last_key_value()
                .map_or(self.settled_below, |(&n, _)| n.saturating_add(1)),
        }
    }

    /// The segments still being fetched or waited for (with a few settled ones among them).
    fn unsettled(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.segs.range(self.settled_below..)
    }

    /// Segments below this are given up: too far behind the newest to be worth fetching
    /// (the playlist skips them at the same point).
    fn lost_before(&self) -> u64 {
        self.newest
            .map_or(0, |n| n.saturating_sub(self.cfg.delay_segments + 2))
    }

    /// Lowest number worth tracking.
    fn floor(&self) -> u64 {
        self.newest
            .map_or(0, |n| n.saturating_sub(self.cfg.window))
            .max(self.want_from.unwrap_or(0))
    }

    /// Forgets what fell below the floor; true if the floor rose.
    fn prune(&mut self) -> bool {
        let floor = self.floor();
        // Nothing below the floor is ever added, so a floor that has not risen has nothing
        // to prune (this runs on every announcement).
        if floor <= self.pruned_floor && self.pruned_floor != 0 {
            return false;
        }
        self.pruned_floor = floor;
        self.held.remove_below(floor);
        while let Some((&n, _)) = self.segs.first_key_value() {
            if n >= floor {
                break;
            }
            if let Some(s) = self.segs.remove(&n) {
                for inf in s.parts.iter().filter_map(|p| p.inflight) {
                    self.release(inf.peer);
                }
            }
        }
        true
    }

    fn release(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
    }

    /// Part `part` of segment `number` is arriving from `from` (its first frame checked out):
    /// announce it now, so partners can pull it piece by piece while it arrives (cut-through).
    pub fn handle_receiving(&mut self, now: Instant, from: NodeId, number: u64, part: u8) {
        self.last_now = self.last_now.max(now);
        let j = usize::from(part);
        if number < self.floor() || self.cfg.role != Role::Viewer || j >= PARTS {
            return;
        }
        // A report from a peer whose connection has ended is stale: its transfer died with
        // the connection and will report nothing more, so marking the part as arriving
        // would keep it from being asked elsewhere until the request timeout.
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.stalls = 0;
        let Some(s) = self.track(number) else {
            return;
        };
        s.first_heard.get_or_insert(now);
        s.set_arriving(j, Some((now, from)));
        if s.announced & bit(j) != 0 {
            return;
        }
        s.announced |= bit(j);
        if self.cfg.uploads {
            self.announce(number, bit(j), Some(from));
        }
    }

    /// Tells partners about `parts` of `number`, leaving out what each announced itself: a
    /// partner holding or receiving a part has no use for another supplier of it, and in a
    /// mesh that relays a part as it arrives, about half of one's partners had it first.
    fn announce(&mut self, number: u64, parts: u32, except: Option<NodeId>) {
        let origin = self.cfg.origin;
        let news: Vec<(NodeId, u32)> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != origin && Some(**id) != except)
            .map(|(id, p)| (*id, parts & !p.have.get(number)))
            .filter(|(_, m)| *m != 0)
            .collect();
        for (p, parts) in news {
            self.send(p, Control::Have { number, parts });
        }
    }

    /// Part `part` of segment `number` (`len` bytes) arrived whole and verified from `from`.
    /// When it completes the segment, the driver then reports [`Mesh::handle_segment`].
    pub fn handle_part(&mut self, now: Instant, from: NodeId, number: u64, part: u8, len: u64) {
        self.last_now = self.last_now.max(now);
        let j = usize::from(part);
        // A part of a segment held already (a second copy) changes nothing of its state.
        let s = match self.segs.get_mut(&number).filter(|_| j < PARTS) {
            Some(s) => Some(s),
            None if self.held.contains(number) => None,
            None => return,
        };
        let inflight = s.and_then(|s| {
            let inf = s.parts.get(j).and_then(|ps| ps.inflight);
            s.held |= bit(j);
            s.set_arriving(j, None);
            s.set_inflight(j, None);
            inf
        });
        if let Some(inf) = inflight {
            self.release(inf.peer);
            if inf.peer == from {
                let elapsed = now
                    .saturating_duration_since(inf.since)
                    .as_secs_f64()
                    .max(1e-3);
                if let Some(p) = self.peers.get_mut(&from) {
                    let sample = len as f64 / elapsed;
                    p.throughput = Some(p.throughput.map_or(sample, |t| 0.7 * t + 0.3 * sample));
                }
            }
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.have.add(number, bit(j));
        }
        self.schedule(now);
    }

    /// Segment `number` (`len` bytes) is now held verified; `from` is who sent its last
    /// part (None: ourselves).
    pub fn handle_segment(&mut self, now: Instant, from: Option<NodeId>, number: u64, len: u64) {
        self.last_now = self.last_now.max(now);
        let _ = len;
        if self.want_from.is_none() && self.cfg.role == Role::Viewer {
            self.want_from = Some(number);
        }
        self.start_from_partners = false;
        self.started = true;
        if number < self.floor() {
            return;
        }
        self.advance_newest(number);
        let was_held = !self.held.insert(number);
        let s = self.segs.remove(&number).unwrap_or_default();
        let unannounced = if was_held {
            0
        } else {
            ALL_PARTS & !s.announced
        };
        let mut abandoned = Vec::new();
        for (j, ps) in s.parts.iter().enumerate() {
            // A second copy of a part still coming: the segment is whole without it.
            if let Some(inf) = ps.inflight {
                abandoned.push((inf.peer, j as u8));
            }
        }
        for (peer, part) in abandoned {
            self.release(peer);
            self.actions
                .push_back(Action::Cancel { peer, number, part });
        }
        if unannounced != 0 && self.cfg.uploads {
            self.announce(number, unannounced, from);
        }
        self.prune();
        self.schedule(now);
    }

    /// A request or push of part `part` of `number` from `peer` failed (`busy`: it said it
    /// was saturated).
    pub fn handle_transfer_failed(
        &mut self,
        now: Instant,
        peer: NodeId,
        number: u64,
        part: u8,
        busy: bool,
    ) {
        self.last_now = self.last_now.max(now);
        let j = usize::from(part);
        let mut was_ours = false;
        if let Some(s) = self.segs.get_mut(&number) {
            if let Some(&ps) = s.parts.get(j) {
                if ps.receiving_from.is_none_or(|f| f == peer) {
                    s.set_arriving(j, None);
                }
                was_ours = ps.inflight.is_some_and(|i| i.peer == peer);
                if was_ours {
                    s.set_inflight(j, None);
                }
            }
            if !busy && !s.failed.contains(&peer) && s.failed.len() < 16 {
                s.failed.push(peer);
            }
        }
        if was_ours {
            self.release(peer);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            // It answered: not a stall.
            p.stalls = 0;
            if busy {
                // Back off briefly so the request goes to another supplier.
                p.busy_until = Some(now + BUSY_BACKOFF);
            } else {
                p.have.remove(number, bit(j));
            }
        }
        self.schedule(now);
    }

    /// `peer` sent bytes or messages that failed verification: drop and ban it.
    pub fn handle_misbehaviour(&mut self, now: Instant, peer: NodeId, reason: Misbehaviour) {
        self.last_now = self.last_now.max(now);
        self.misbehaved(now, peer, reason);
        self.schedule(now);
    }

    /// How long a request may go without its header before the supplier counts as stalled.
    fn header_timeout(&self) -> Duration {
        (self.cfg.playout_budget / 4)
            .max(MIN_HEADER_TIMEOUT)
            .min(self.cfg.request_timeout)
    }

    /// `peer` left a request unanswered: back off from it, and after
    /// [`MAX_STALLS`] in a row (no answer in between) drop and ban it.
    fn stalled(&mut self, now: Instant, peer: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.stalls += 1;
        p.busy_until = Some(now + STALL_BACKOFF);
        if p.stalls >= MAX_STALLS && !self.is_origin(&peer) {
            self.misbehaved(now, peer, Misbehaviour::LeavesRequestsUnanswered);
        }
    }

    fn misbehaved(&mut self, now: Instant, peer: NodeId, reason: Misbehaviour) {
        if self.is_origin(&peer) {
            // The origin's key signs the stream; it cannot be banned from its own stream.
            return;
        }
        self.banned.insert(peer, now + self.cfg.ban);
        self.stats.bans += 1;
        self.known.remove(&peer);
        self.actions.push_back(Action::Disconnect {
            peer,
            reason: DisconnectReason::Misbehaved(reason),
        });
        self.handle_disconnected(now, peer);
    }

    /// Broadcaster: segment `number` was just cut and signed.
    pub fn handle_publish(&mut self, now: Instant, number: u64) {
        self.last_now = self.last_now.max(now);
        self.advance_newest(number);
        self.held.insert(number);
        self.segs.remove(&number);
        let viewers: Vec<NodeId> = self.peers.keys().copied().collect();
        for v in &viewers {
            self.send(
                *v,
                Control::Have {
                    number,
                    parts: ALL_PARTS,
                },
            );
        }
        // Seed a few uploaders, rotating so the relaying load spreads over the swarm.
        let uploaders = self.seed_targets(None, true);
        // Each part goes to different viewers: the origin sends `seed_fanout` copies of the
        // segment in all, spread over up to `seed_fanout × PARTS` relays that then trade parts.
        // With no uploader yet (the stream has just started), the seeds are owed: each
        // newcomer gets one owed part, so the first segments spread as later ones do.
        let seeds = self.cfg.seed_fanout * PARTS;
        for i in 0..seeds {
            let part = (i % PARTS) as u8;
            match uploaders.get((self.push_cursor + i) % uploaders.len().max(1)) {
                Some(peer) => self.actions.push_back(Action::Push {
                    peer: *peer,
                    number,
                    part,
                }),
                None if self.seed_debt.len() < MAX_SEED_DEBT => {
                    self.seed_debt.push_back((number, part))
                }
                None => {}
            }
        }
        self.push_cursor = self.push_cursor.wrapping_add(seeds.max(1));
        self.prune();
    }

    /// Uploaders to seed, `except` left out: those not suspected of having vanished, or
    /// (`fall_back`) every one if all are.
    fn seed_targets(&self, except: Option<NodeId>, fall_back: bool) -> Vec<NodeId> {
        let pick = |trusted: bool| -> Vec<NodeId> {
            self.peers
                .iter()
                .filter(|(id, p)| p.uploads && Some(**id) != except && !(trusted && p.seed_suspect))
                .map(|(id, _)| *id)
                .collect()
        };
        let trusted = pick(true);
        if trusted.is_empty() && fall_back {
            pick(false)
        } else {
            trusted
        }
    }

    /// Broadcaster: the seed of part `part` of segment `number` pushed to `peer` was not
    /// acknowledged in time (or its connection ended). `peer` may have vanished with the
    /// swarm's only viewer copy, and every viewer would then wait until it asks the origin
    /// itself at half its playout budget; so the part is seeded to another uploader while
    /// the segment is still among the newest two, and `peer` is not seeded until heard from.
    pub fn handle_push_unconfirmed(&mut self, now: Instant, peer: NodeId, number: u64, part: u8) {
        self.last_now = self.last_now.max(now);
        if self.cfg.role != Role::Broadcaster || usize::from(part) >= PARTS {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.seed_suspect = true;
        }
        let fresh = self.newest.is_some_and(|n| number.saturating_add(1) >= n);
        if !fresh || !self.held.contains(number) {
            return;
        }
        // Only to the unsuspected: each miss makes one more suspect, so this ends.
        let targets = self.seed_targets(Some(peer), false);
        if let Some(to) = targets.get(self.push_cursor % targets.len().max(1)) {
            self.actions.push_back(Action::Push {
                peer: *to,
                number,
                part,
            });
            self.push_cursor = self.push_cursor.wrapping_add(1);
        }
    }

    /// Broadcaster: the input ended after segment `last`.
    pub fn handle_end(&mut self, _now: Instant, last: u64) {
        self.ended = Some(last);
        let all: Vec<NodeId> = self.peers.keys().copied().collect();
        for p in all {
            self.send(p, Control::End { last });
        }
    }

    /// Timers: request timeouts, deadlines, maintenance, scheduling.
    pub fn handle_tick(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        // Abandon requests that have taken too long and ask elsewhere.
        let timeout = self.cfg.request_timeout;
        let header_timeout = self.header_timeout();
        let mut expired = Vec::new();
        self.advance_settled();
        for (n, s) in self.segs.range_mut(self.settled_below..) {
            for j in bits(s.asked) {
                let Some(&ps) = s.parts.get(j) else { continue };
                let Some(inf) = ps.inflight else { continue };
                // An honest supplier answers at once (first frame or Busy); silence is a stall.
                let stalled = ps.receiving_since.is_none() && now >= inf.since + header_timeout;
                if stalled || now >= inf.since + timeout {
                    s.set_inflight(j, None);
                    if s.failed.len() < 16 && !s.failed.contains(&inf.peer) {
                        s.failed.push(inf.peer);
                    }
                    expired.push((inf.peer, *n, j as u8, stalled));
                }
            }
        }
        let mut stalled_peers = BTreeSet::new();
        for (peer, number, part, stalled) in expired {
            self.release(peer);
            self.actions
                .push_back(Action::Cancel { peer, number, part });
            if stalled {
                stalled_peers.insert(peer);
            }
        }
        // One count per peer per tick: several parts left unanswered at once are one stall.
        for peer in stalled_peers {
            self.stalled(now, peer);
        }
        // Count deadlines passed without the segment.
        let budget = self.cfg.playout_budget;
        for s in self.segs.range_mut(self.settled_below..).map(|(_, s)| s) {
            if !s.missed && s.first_heard.is_some_and(|h| now >= h + budget) {
                s.missed = true;
                self.stats.missed_deadlines += 1;
            }
        }
        if now >= self.next_maintenance {
            self.maintain(now);
        }
        self.schedule(now);
    }

    fn maintain(&mut self, now: Instant) {
        self.next_maintenance = now + self.cfg.maintenance_interval;
        self.banned.retain(|_, until| *until > now);
        if self.cfg.role == Role::Viewer {
            let origin = self.cfg.origin;
            if !self.peers.contains_key(&origin)
                && !self.pending_dials.contains(&origin)
                && now >= self.origin_retry_at
            {
                self.pending_dials.insert(origin);
                // With partners, the origin is only a fallback: a full origin is not asked
                // again every 2 s by thousands of turned-away viewers.
                let retry = if self.viewer_count() >= self.cfg.target_partners / 2 {
                    ORIGIN_RETRY_WITH_PARTNERS
                } else {
                    ORIGIN_RETRY
                };
                self.origin_retry_at = now + retry;
                self.actions.push_back(Action::Dial {
                    peer: origin,
                    addr: None,
                });
            }
            self.dial_more(now);
        }
        // Periodic peer exchange and buffer-map resync.
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let (pex_due, map_due) = match self.peers.get(&id) {
                Some(p) => (now >= p.next_pex, now >= p.next_buffer_map),
                None => continue,
            };
            if pex_due {
                let sample = self.peer_sample(Some(id));
                if !sample.is_empty() {
                    self.send(id, Control::Peers { peers: sample });
                }
            }
            if map_due && (self.cfg.uploads || self.cfg.role == Role::Broadcaster) {
                let map = self.buffer_map();
                self.send(id, map);
            }
            let (pex, bm) = (self.cfg.pex_interval, self.cfg.buffer_map_interval);
            if let Some(p) = self.peers.get_mut(&id) {
                if pex_due {
                    p.next_pex = now + pex;
                }
                if map_due {
                    p.next_buffer_map = now + bm;
                }
            }
        }
    }

    /// The origin was lost (`failed`: turned away or never reached): when to dial it again.
    /// A flash crowd beyond the origin's partner cap is turned away (or, past its connection
    /// cap, refused) every time; redialling all at a fixed period kept the cap full and left
    /// thousands of viewers with no way in. Each failure doubles the wait, with jitter, so
    /// the crowd spreads out and joins through the peers it is handed.
    fn origin_failed(&mut self, now: Instant, failed: bool) {
        if failed {
            self.origin_failures = self.origin_failures.saturating_add(1);
        } else {
            self.origin_failures = 0;
        }
        let base = Duration::from_millis(500) * 2u32.saturating_pow(self.origin_failures.min(6));
        let mut wait = base.min(ORIGIN_RETRY_WITH_PARTNERS);
        if failed && self.viewer_count() >= self.cfg.target_partners / 2 {
            // With partners, the origin is only a fallback.
            wait = ORIGIN_RETRY_WITH_PARTNERS;
        }
        self.origin_retry_at = now + wait.mul_f64(self.rng.gen_range(1.0..1.5));
    }

    /// [`Mesh::dial_more`] for a viewer (the broadcaster dials nobody).
    fn dial_more_if_viewer(&mut self, now: Instant) {
        if self.cfg.role == Role::Viewer {
            self.dial_more(now);
        }
    }

    fn dial_more(&mut self, now: Instant) {
        let have = self.viewer_count() + self.pending_dials.len();
        if have >= self.cfg.target_partners {
            return;
        }
        let mut candidates: Vec<(NodeId, SocketAddr)> = self
            .known
            .iter()
            .filter(|(id, k)| {
                !self.peers.contains_key(id)
                    && !self.pending_dials.contains(id)
                    && **id != self.me
                    && !self.is_origin(id)
                    && k.retry_at.is_none_or(|t| now >= t)
            })
            .map(|(id, k)| (*id, k.addr))
            .collect();
        candidates.shuffle(&mut self.rng);
        let room = (self.cfg.target_partners - have).min(
            self.cfg
                .max_pending_dials
                .saturating_sub(self.pending_dials.len()),
        );
        for (id, addr) in candidates.into_iter().take(room) {
            self.pending_dials.insert(id);
            if let Some(k) = self.known.get_mut(&id) {
                // Until it answers, do not pick it again.
                k.retry_at = Some(now + Duration::from_secs(10));
            }
            self.actions.push_back(Action::Dial {
                peer: id,
                addr: Some(addr),
            });
        }
    }

    fn add_known(&mut self, p: PeerInfo) {
        if p.id == self.me
            || self.is_origin(&p.id)
            || self.banned.contains_key(&p.id)
            || self.peers.contains_key(&p.id)
        {
            return;
        }
        if let Some(k) = self.known.get_mut(&p.id) {
            k.addr = p.addr;
            return;
        }
        if self.known.len() >= self.cfg.max_known {
            // Forget a random candidate: a flood of fake peers cannot pin the table.
            let idx = self.rng.gen_range(0..self.known.len());
            if let Some(victim) = self.known.keys().nth(idx).copied() {
                self.known.remove(&victim);
            }
        }
        self.known.insert(
            p.id,
            Known {
                addr: p.addr,
                failures: 0,
                retry_at: None,
            },
        );
    }

    /// A random sample of connected uploading viewers (never everyone: PPSPP's advice). The
    /// broadcaster's (the tracker's) also lists the viewers it turned away last: with a
    /// crowd beyond its partner cap, its partners' sets are full, and a sample of them alone
    /// sends newcomers from one full viewer to the next (at 10,000 simulated viewers, join
    /// p99 was 13 s), while the turned-away ones still have room for each other.
    fn peer_sample(&mut self, exclude: Option<NodeId>) -> Vec<PeerInfo> {
        let mut sample: Vec<PeerInfo> = Vec::new();
        if self.cfg.role == Role::Broadcaster {
            // Random ones among the last turned away, so a crowd is not herded onto the few
            // newest.
            let candidates: Vec<&PeerInfo> = self
                .overflow
                .iter()
                .filter(|p| Some(p.id) != exclude)
                .collect();
            sample.extend(
                candidates
                    .choose_multiple(&mut self.rng, OVERFLOW_IN_SAMPLE)
                    .map(|p| **p),
            );
        }
        let mut all: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(id, p)| Some(**id) != exclude && p.role == Role::Viewer && p.uploads)
            .filter(|(id, _)| sample.iter().all(|s| s.id != **id))
            .map(|(id, p)| PeerInfo {
                id: *id,
                addr: p.addr,
            })
            .collect();
        all.shuffle(&mut self.rng);
        let cap = if self.cfg.role == Role::Broadcaster {
            16
        } else {
            8
        };
        all.truncate(cap.min(MAX_PEERS_PER_MESSAGE).saturating_sub(sample.len()));
        sample.extend(all);
        sample
    }

    fn buffer_map(&self) -> Control {
        let held: Vec<u64> = self.held.iter().collect();
        let first = held.first().copied().unwrap_or(0);
        let mut bits = Vec::new();
        for n in held {
            let i = (n - first) as usize;
            if i >= MAX_BUFFER_MAP_BITS {
                break;
            }
            if bits.len() <= i / 8 {
                bits.resize(i / 8 + 1, 0u8);
            }
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        Control::BufferMap { first, bits }
    }

    fn send(&mut self, peer: NodeId, msg: Control) {
        self.actions.push_back(Action::Send { peer, msg });
    }

    /// Decides what to request now, part by part. Most urgent first; otherwise rarest first.
    fn schedule(&mut self, now: Instant) {
        // The work lists outlive the call, so the hottest path allocates nothing.
        let mut scratch = std::mem::take(&mut self.scratch);
        self.schedule_with(now, &mut scratch);
        self.scratch = scratch;
    }

    fn schedule_with(&mut self, now: Instant, scratch: &mut Scratch) {
        self.last_now = self.last_now.max(now);
        if self.cfg.role != Role::Viewer {
            return;
        }
        let Some(want_from) = self.want_from else {
            return;
        };
        self.advance_settled();
        let mut inflight: usize = self.unsettled().map(|(_, s)| s.inflight()).sum();
        // The join segment's parts are asked for all at once, beyond the total cap: the
        // player waits for them, and each goes to a different supplier's join slot.
        let join_segment = (!self.started).then_some(want_from);
        if inflight >= self.cfg.max_inflight_total && join_segment.is_none() {
            return;
        }
        // Most calls find every supplier busy or at its in-flight cap: then nothing can be
        // asked, and the ordering below is not worth computing.
        let max = self.cfg.max_inflight_per_partner;
        let askable = |p: &Peer| p.askable(max, now);
        let origin_askable = self.peers.get(&self.cfg.origin).is_some_and(askable);
        if !origin_askable
            && !self
                .peers
                .values()
                .any(|p| !p.is_origin() && p.uploads && askable(p))
        {
            return;
        }
        // Parts are asked for in [`PartRank`]'s order; only urgent parts may go to the origin.
        let budget = self.cfg.playout_budget;
        let candidates = &mut scratch.candidates;
        candidates.clear();
        for (&n, s) in self.unsettled() {
            if !self.in_play(n) {
                continue;
            }
            // The parts to ask for: neither held, asked, nor already arriving (a push, or
            // a second copy: wait for it unless it stalls). Mostly none.
            let mut wanted = s.unasked();
            for j in bits(wanted & s.arriving) {
                let arriving = s
                    .parts
                    .get(j)
                    .and_then(|ps| ps.receiving_since)
                    .is_some_and(|t| now < t + self.cfg.request_timeout);
                if arriving {
                    wanted &= !bit(j);
                }
            }
            if wanted == 0 {
                continue;
            }
            // The join segment is what the player waits for: if no partner has announced it
            // shortly after joining, the origin is asked at once rather than after the wait.
            let joining = join_segment == Some(n);
            let urgent = s
                .first_heard
                .is_some_and(|h| now >= h + self.origin_wait_for(n));
            // It also goes first from the start: a joiner hears of its join segment and the
            // few after it at once, and rarest-first would fetch the live one (the rarest)
            // before the one the player starts with.
            let first = urgent || joining;
            let late = s.first_heard.is_some_and(|h| now >= h + budget);
            candidates.push(Candidate {
                number: n,
                wanted,
                late,
                first,
                urgent,
            });
        }
        if candidates.is_empty() {
            return;
        }
        // Partners holding or receiving each wanted part, in one walk of the partners.
        let suppliers = &mut scratch.suppliers;
        suppliers.clear();
        suppliers.resize(candidates.len(), [0; PARTS]);
        // Whether any wanted part is held by a partner that could be asked now (a superset
        // of what `pick_supplier` accepts: it also skips partners that failed us).
        let mut reachable = false;
        for p in self.peers.values() {
            if !p.uploads || p.is_origin() {
                continue;
            }
            let can_ask = p.askable(max, self.last_now);
            for (c, counts) in candidates.iter().zip(suppliers.iter_mut()) {
                let m = p.have.get(c.number) & c.wanted;
                if m != 0 {
                    reachable |= can_ask;
                    for (j, count) in counts.iter_mut().enumerate() {
                        *count += usize::from(m & bit(j) != 0);
                    }
                }
            }
        }
        // Nothing can be asked of a partner, nor of the origin: ordering is not worth it
        // (54% of the calls that get this far, in a 1,000-peer simulation).
        let origin_may_serve = origin_askable && candidates.iter().any(|c| c.urgent);
        if !reachable && !origin_may_serve {
            return;
        }
        let order = &mut scratch.order;
        order.clear();
        for (c, counts) in candidates.iter().zip(suppliers.iter()) {
            for k in 0..PARTS {
                let j = (k + self.part_offset) % PARTS;
                if c.wanted & bit(j) == 0 {
                    continue;
                }
                order.push(PartRank {
                    late: c.late,
                    not_first: !c.first,
                    suppliers: counts.get(j).copied().unwrap_or(0),
                    number: c.number,
                    rotated: k,
                    urgent: c.urgent,
                });
            }
        }
        order.sort_unstable();
        for &PartRank {
            number: n,
            rotated: k,
            urgent,
            ..
        } in order.iter()
        {
            if inflight >= self.cfg.max_inflight_total && join_segment != Some(n) {
                continue;
            }
            let j = (k + self.part_offset) % PARTS;
            let pick = self.pick_supplier(n, j);
            let chosen = match pick {
                Some(p) => Some(p),
                // No partner can deliver: go to the origin once the wait is over.
                None if urgent => {
                    let origin = self.cfg.origin;
                    self.peers
                        .get(&origin)
                        .filter(|p| askable(p))
                        .map(|_| origin)
                }
                None => None,
            };
            if let Some(peer) = chosen {
                if let Some(s) = self.segs.get_mut(&n) {
                    s.set_inflight(j, Some(Inflight { peer, since: now }));
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.inflight += 1;
                }
                inflight += 1;
                self.actions.push_back(Action::Request {
                    peer,
                    number: n,
                    part: j as u8,
                    join: join_segment == Some(n),
                });
            }
        }
    }

    fn pick_supplier(&mut self, n: u64, part: usize) -> Option<NodeId> {
        let failed: &[NodeId] = self.segs.get(&n).map_or(&[], |s| s.failed.as_slice());
        let max = self.cfg.max_inflight_per_partner;
        let mut best: Option<(usize, i64, u32, NodeId)> = None;
        for (id, p) in &self.peers {
            if p.is_origin()
                || !p.uploads
                || !p.askable(max, self.last_now)
                || p.have.get(n) & bit(part) == 0
                || failed.contains(id)
            {
                continue;
            }
            // Least loaded, then fastest, then a random tie-break.
            let speed = -(p.throughput.unwrap_or(0.0) as i64);
            let key = (p.inflight, speed, self.rng.gen::<u32>(), *id);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|b| b.3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }
    pub(super) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    const ORIGIN: u8 = 1;
    const SEG: Duration = Duration::from_secs(2);

    fn viewer(me: u8, now: Instant) -> Mesh {
        Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 3), id(me), 7, now)
    }

    /// Viewer 10 with the origin and `partners` connected; the origin has announced all of
    /// segment 9.
    fn viewer_with_partners(t0: Instant, partners: &[u8]) -> Mesh {
        let mut v = viewer_connected(t0, partners);
        origin_announces_nine(&mut v, t0);
        v
    }

    /// Viewer 10 with the origin and `partners` connected, told nothing yet.
    fn viewer_connected(t0: Instant, partners: &[u8]) -> Mesh {
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        for &p in partners {
            v.handle_connected(t0, id(p), addr(u16::from(p)), Role::Viewer, true, None);
        }
        v
    }

    fn origin_announces_nine(v: &mut Mesh, t0: Instant) {
        announce(v, t0, ORIGIN, 9, ALL_PARTS);
    }

    /// `from` announces `parts` of segment `number` to `v`.
    fn announce(v: &mut Mesh, t0: Instant, from: u8, number: u64, parts: u32) {
        v.handle_control(t0, id(from), Control::Have { number, parts });
    }

    /// A viewer that joins at the live edge (no hold-back), budget one segment.
    fn edge_viewer(me: u8, now: Instant) -> Mesh {
        Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 0), id(me), 7, now)
    }

    fn drain(m: &mut Mesh) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    /// The `Have`s of segment `number` among `actions`: (partner, parts).
    fn haves_of(actions: &[Action], number: u64) -> Vec<(NodeId, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    peer,
                    msg: Control::Have { number: n, parts },
                } if *n == number => Some((*peer, *parts)),
                _ => None,
            })
            .collect()
    }

    fn requests(actions: &[Action]) -> Vec<(NodeId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { peer, number, .. } => Some((*peer, *number)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn viewer_dials_origin_first() {
        let now = Instant::now();
        let mut v = viewer(10, now);
        assert_eq!(
            drain(&mut v),
            vec![Action::Dial {
                peer: id(ORIGIN),
                addr: None
            }]
        );
    }

    fn parts_asked(actions: &[Action]) -> Vec<(NodeId, u64, u8)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request {
                    peer, number, part, ..
                } => Some((*peer, *number, *part)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prefers_partners_and_falls_back_to_origin_after_the_wait() {
        let t0 = Instant::now();
        assert_eq!(viewer(10, t0).want_from(), None);
        let mut v = edge_viewer(10, t0);
        drain(&mut v);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
        drain(&mut v);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 100,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.want_from(), Some(100));
        // Partner 20 holds 100: ask it for parts, not the origin.
        v.handle_control(
            t0,
            id(20),
            Control::Have {
                number: 100,
                parts: ALL_PARTS,
            },
        );
        let asked = parts_asked(&drain(&mut v));
        assert!(!asked.is_empty());
        assert!(
            asked.iter().all(|(p, n, _)| (*p, *n) == (id(20), 100)),
            "{asked:?}"
        );
        for (_, _, part) in &asked {
            v.handle_receiving(t0, id(20), 100, *part);
        }
        v.handle_segment(t0, Some(id(20)), 100, 8000);
        // Nobody holds 101 yet: wait, then after half the budget go to the origin.
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 101,
                parts: ALL_PARTS,
            },
        );
        assert!(requests(&drain(&mut v)).is_empty());
        let wake = v.poll_timeout();
        assert!(wake <= t0 + Duration::from_secs(1));
        v.handle_tick(t0 + Duration::from_millis(500));
        assert!(requests(&drain(&mut v)).is_empty());
        v.handle_tick(t0 + Duration::from_secs(1));
        let late = requests(&drain(&mut v));
        assert!(!late.is_empty());
        // The rarest (held by no partner) first.
        assert!(late.iter().all(|r| *r == (id(ORIGIN), 101)), "{late:?}");
    }

    /// A viewer connected to the origin, which announces segment 20: it joins at 17.
    fn joined_at_20(t0: Instant) -> Mesh {
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 20,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.want_from(), Some(17));
        v
    }

    /// Partner `p` connects to `v` and announces the segments `bits` marks from 17 up.
    fn partner_holding(v: &mut Mesh, t0: Instant, p: u8, bits: u8) {
        v.handle_connected(t0, id(p), addr(u16::from(p)), Role::Viewer, true, None);
        v.handle_control(
            t0,
            id(p),
            Control::BufferMap {
                first: 17,
                bits: vec![bits],
            },
        );
    }

    #[test]
    fn a_joiner_fetches_its_join_segment_before_the_rarer_live_ones() {
        let t0 = Instant::now();
        let mut v = joined_at_20(t0);
        // Two partners hold 17..=19 and are asked for parts of 17 (two each); the third also
        // holds 20, which is then the rarest: rarest-first alone would ask it for 20, while
        // the player is waiting for the rest of 17.
        for p in [31, 32, 30] {
            partner_holding(&mut v, t0, p, if p == 30 { 0b1111 } else { 0b0111 });
        }
        let asked = requests(&drain(&mut v));
        let from_30: Vec<u64> = asked
            .iter()
            .filter(|(p, _)| *p == id(30))
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(from_30, vec![17, 17], "{asked:?}");
    }

    #[test]
    fn a_joiner_asks_for_every_part_of_its_join_segment_at_once_flagged_join() {
        let t0 = Instant::now();
        let mut v = joined_at_20(t0);
        // Five partners hold 17..=20: the total cap (6) would leave two parts of 17 waiting.
        for p in 30..35 {
            partner_holding(&mut v, t0, p, 0b1111);
        }
        let asked: Vec<(u64, u8, bool)> = drain(&mut v)
            .into_iter()
            .filter_map(|a| match a {
                Action::Request {
                    number, part, join, ..
                } => Some((number, part, join)),
                _ => None,
            })
            .collect();
        let mut join_parts: Vec<u8> = asked
            .iter()
            .filter(|(n, _, _)| *n == 17)
            .map(|(_, p, _)| *p)
            .collect();
        join_parts.sort_unstable();
        assert_eq!(
            join_parts,
            (0..PARTS as u8).collect::<Vec<_>>(),
            "{asked:?}"
        );
        // Only the join segment is flagged, and only it goes beyond the total cap.
        assert!(
            asked.iter().all(|(n, _, join)| *join == (*n == 17)),
            "{asked:?}"
        );
        assert!(
            asked.len() <= PARTS.max(v.cfg.max_inflight_total),
            "{asked:?}"
        );
        // Once the join is over, nothing is flagged.
        for part in 0..PARTS as u8 {
            v.handle_receiving(t0, id(30), 17, part);
        }
        v.handle_segment(t0, Some(id(30)), 17, 8000);
        v.handle_tick(t0 + Duration::from_secs(5));
        let later = drain(&mut v);
        assert!(later
            .iter()
            .all(|a| !matches!(a, Action::Request { join: true, .. })));
    }

    #[test]
    fn a_joining_viewer_asks_the_origin_for_its_first_segment_soon() {
        let t0 = Instant::now();
        let mut v = joined_at_20(t0);
        assert!(requests(&drain(&mut v)).is_empty());
        assert!(v.poll_timeout() <= t0 + JOIN_ORIGIN_WAIT);
        v.handle_tick(t0 + JOIN_ORIGIN_WAIT);
        let asked = requests(&drain(&mut v));
        assert!(!asked.is_empty());
        // Only the join segment; the later ones wait for partners as usual.
        assert!(asked.iter().all(|r| *r == (id(ORIGIN), 17)), "{asked:?}");
    }

    #[test]
    fn a_part_reported_arriving_from_a_partner_already_gone_is_asked_elsewhere() {
        let t0 = Instant::now();
        let mut v = viewer_with_partners(t0, &[20, 30, 40]);
        let have = |number, parts| Control::Have { number, parts };
        for p in [20, 30, 40] {
            v.handle_control(t0, id(p), have(9, 0b1));
        }
        let asked_for_part_0 = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Request {
                    peer,
                    number: 9,
                    part: 0,
                    ..
                } => Some(*peer),
                _ => None,
            })
        };
        let first = asked_for_part_0(&drain(&mut v)).expect("part 0 asked for");
        // Its connection ends (it sent forged bytes, say); the driver's report that its
        // part had started arriving is handled after that.
        v.handle_disconnected(t0, first);
        let second = asked_for_part_0(&drain(&mut v)).expect("asked elsewhere");
        assert_ne!(second, first);
        v.handle_receiving(t0, first, 9, 0);
        // The second supplier fails too: nothing is arriving, so the third is asked.
        let t1 = t0 + Duration::from_millis(50);
        v.handle_transfer_failed(t1, second, 9, 0, false);
        let third = asked_for_part_0(&drain(&mut v));
        assert!(
            third.is_some_and(|p| p != first && p != second),
            "{third:?}"
        );
    }

    #[test]
    fn an_announcement_of_parts_held_or_asked_for_leaves_the_wake_up_alone() {
        let t0 = Instant::now();
        let mut v = viewer_with_partners(t0, &[20, 30]);
        let have = |number, parts| Control::Have { number, parts };
        // 20 holds all of segment 9: parts are asked of it.
        v.handle_control(t0, id(20), have(9, ALL_PARTS));
        let asked = parts_asked(&drain(&mut v));
        assert!(!asked.is_empty());
        let wake = v.poll_timeout();
        // 30 announcing the parts already asked for queues nothing and brings no wake-up
        // earlier.
        let mask = asked
            .iter()
            .fold(0, |m, &(_, _, j)| m | bit(usize::from(j)));
        let t1 = t0 + Duration::from_millis(10);
        v.handle_control(t1, id(30), have(9, mask));
        assert!(drain(&mut v).is_empty());
        assert!(v.poll_timeout() >= wake);
        // Nor does a partner's claim of a segment the origin has not announced.
        v.handle_control(t1, id(30), have(10, ALL_PARTS));
        assert!(parts_asked(&drain(&mut v)).is_empty());
        assert!(v.poll_timeout() >= wake);
        // The origin announcing it does: its parts are asked for.
        v.handle_control(t1, id(ORIGIN), have(10, ALL_PARTS));
        assert!(parts_asked(&drain(&mut v)).iter().any(|&(_, n, _)| n == 10));
    }

    #[test]
    fn a_part_is_not_announced_to_a_partner_that_announced_it() {
        let t0 = Instant::now();
        let mut v = viewer_with_partners(t0, &[20, 30, 40]);
        let have = |number, parts| Control::Have { number, parts };
        // 30 has parts 0 and 1 of segment 9; part 0 starts arriving from 20.
        v.handle_control(t0, id(30), have(9, 0b11));
        drain(&mut v);
        v.handle_receiving(t0, id(20), 9, 0);
        // Neither the sender nor 30, which has it, hears of it: only 40.
        assert_eq!(haves_of(&drain(&mut v), 9), vec![(id(40), 0b1)]);
        // Whole, the last part from 40: 30 hears of the parts it lacks, 20 of all those not
        // yet announced; 40, the sender, of none.
        v.handle_segment(t0, Some(id(40)), 9, 8000);
        assert_eq!(
            haves_of(&drain(&mut v), 9),
            vec![(id(20), ALL_PARTS & !0b1), (id(30), ALL_PARTS & !0b11)]
        );
    }

    #[test]
    fn parts_come_from_several_suppliers_and_the_whole_is_announced() {
        let t0 = Instant::now();
        let mut v = viewer_with_partners(t0, &[20, 30, 40, 50]);
        drain(&mut v);
        // Each partner has only some parts of segment 9.
        for (p, mask) in [
            (20, 0b0000_0011),
            (30, 0b0000_1100),
            (40, 0b0011_0000),
            (50, 0b1100_0000),
        ] {
            v.handle_control(
                t0,
                id(p),
                Control::Have {
                    number: 9,
                    parts: mask,
                },
            );
        }
        let asked: Vec<_> = parts_asked(&drain(&mut v))
            .into_iter()
            .filter(|(_, n, _)| *n == 9)
            .collect();
        let suppliers: BTreeSet<NodeId> = asked.iter().map(|(p, _, _)| *p).collect();
        assert!(suppliers.len() >= 3, "{asked:?}");
        for (p, _, part) in &asked {
            let mask = match p.0[0] {
                20 => 0b0000_0011,
                30 => 0b0000_1100,
                40 => 0b0011_0000,
                _ => 0b1100_0000,
            };
            assert!(
                mask & bit(usize::from(*part)) != 0,
                "asked {p:?} for part {part}"
            );
        }
        // Each part arriving is announced to the others at once, only that part.
        let (p0, _, part0) = asked[0];
        v.handle_receiving(t0, p0, 9, part0);
        let haves = haves_of(&drain(&mut v), 9);
        assert_eq!(haves.len(), 3, "{haves:?}");
        assert!(haves
            .iter()
            .all(|(p, m)| *p != p0 && *m == bit(usize::from(part0))));
        // Whole: the rest is announced, and what is still in flight is called off.
        v.handle_part(t0, p0, 9, part0, 1000);
        drain(&mut v);
        let inflight = v.stats().inflight;
        assert!(inflight > 0);
        v.handle_segment(t0, Some(p0), 9, 8000);
        let acts = drain(&mut v);
        let cancels = acts
            .iter()
            .filter(|a| matches!(a, Action::Cancel { number: 9, .. }))
            .count();
        assert_eq!(cancels, inflight);
        // Each partner hears of the parts it did not announce itself.
        let whole: BTreeMap<NodeId, u32> = haves_of(&acts, 9).into_iter().collect();
        let rest = ALL_PARTS & !bit(usize::from(part0));
        assert_eq!(
            whole,
            [
                (20, 0b0000_0011),
                (30, 0b0000_1100),
                (40, 0b0011_0000),
                (50, 0b1100_0000)
            ]
            .into_iter()
            .filter(|(p, _)| id(*p) != p0)
            .map(|(p, mask)| (id(p), rest & !mask))
            .collect()
        );
        assert_eq!(v.stats().inflight, 0);
    }

    #[test]
    fn timed_out_parts_are_cancelled_and_asked_elsewhere() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
        v.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 5,
                parts: ALL_PARTS,
            },
        );
        drain(&mut v);
        v.handle_control(
            t0,
            id(20),
            Control::Have {
                number: 5,
                parts: ALL_PARTS,
            },
        );
        let first = parts_asked(&drain(&mut v));
        assert!(!first.is_empty() && first.iter().all(|(p, _, _)| *p == id(20)));
        // 30 has it too, and answers; 20 never does.
        let t1 = t0 + Duration::from_millis(100);
        v.handle_control(
            t1,
            id(30),
            Control::Have {
                number: 5,
                parts: ALL_PARTS,
            },
        );
        for (p, n, part) in parts_asked(&drain(&mut v)) {
            assert_eq!(p, id(30));
            v.handle_receiving(t1, p, n, part);
        }
        let t2 = t0 + v.header_timeout();
        v.handle_tick(t2);
        let acts = drain(&mut v);
        for (p, n, part) in &first {
            assert!(acts.contains(&Action::Cancel {
                peer: *p,
                number: *n,
                part: *part
            }));
        }
        // Never 20 again for this segment.
        for t in [t2, t0 + Duration::from_secs(2), t0 + Duration::from_secs(4)] {
            v.handle_tick(t);
            let again = parts_asked(&drain(&mut v));
            assert!(again.iter().all(|(p, _, _)| *p != id(20)), "{again:?}");
        }
    }

    #[test]
    fn liars_cannot_move_the_live_edge_and_get_banned() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 50,
                parts: ALL_PARTS,
            },
        );
        v.handle_control(
            t0,
            id(20),
            Control::Have {
                number: u64::MAX,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.newest(), Some(50));
        // A viewer claiming to be the broadcaster is still a viewer.
        v.handle_connected(t0, id(30), addr(30), Role::Broadcaster, true, None);
        v.handle_control(
            t0,
            id(30),
            Control::Have {
                number: 60,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.newest(), Some(50));
        drain(&mut v);
        let bad_digest = Misbehaviour::Forged(crate::node::Forgery::SegmentDigest);
        v.handle_misbehaviour(t0, id(20), bad_digest);
        assert!(drain(&mut v).contains(&Action::Disconnect {
            peer: id(20),
            reason: DisconnectReason::Misbehaved(bad_digest)
        }));
        assert!(v.is_banned(&id(20), t0));
        v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
        assert!(drain(&mut v).contains(&Action::Disconnect {
            peer: id(20),
            reason: DisconnectReason::Refused
        }));
        assert!(!v.is_banned(&id(20), t0 + Duration::from_secs(301)));
    }

    /// A partner's `Busy` backoff wakes the viewer when it ends only if that partner could
    /// then be asked for something: otherwise the tick would do nothing.
    #[test]
    fn a_busy_partner_is_woken_for_only_while_it_holds_a_part_still_wanted() {
        let t0 = Instant::now();
        for taken_elsewhere in [false, true] {
            let mut v = viewer_with_partners(t0, &[20, 30]);
            drain(&mut v);
            // 20 holds part 0 of the join segment (6) and is asked for it.
            let have = Control::Have {
                number: 6,
                parts: 1,
            };
            v.handle_control(t0, id(20), have.clone());
            assert_eq!(requests(&drain(&mut v)), vec![(id(20), 6)]);
            let t1 = t0 + Duration::from_millis(10);
            v.handle_transfer_failed(t1, id(20), 6, 0, true);
            drain(&mut v);
            let busy_until = t1 + BUSY_BACKOFF;
            if taken_elsewhere {
                // 30 has it too and is asked instead: 20 holds nothing wanted now.
                v.handle_control(t1, id(30), have);
                assert_eq!(requests(&drain(&mut v)), vec![(id(30), 6)]);
                assert!(v.poll_timeout() > busy_until);
            } else {
                assert_eq!(v.poll_timeout(), busy_until);
                v.handle_tick(busy_until);
                assert_eq!(requests(&drain(&mut v)), vec![(id(20), 6)]);
            }
        }
    }

    #[test]
    fn a_supplier_that_leaves_requests_unanswered_is_avoided_then_banned() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
        v.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 100,
                parts: ALL_PARTS,
            },
        );
        drain(&mut v);
        // The staller claims everything, including what does not exist yet.
        let mut t = t0;
        for n in 97..=100 {
            v.handle_control(
                t,
                id(20),
                Control::Have {
                    number: n,
                    parts: ALL_PARTS,
                },
            );
        }
        v.handle_control(
            t,
            id(20),
            Control::Have {
                number: 140,
                parts: ALL_PARTS,
            },
        );
        let first = requests(&drain(&mut v));
        assert!(first.iter().all(|(p, _)| *p == id(20)), "{first:?}");
        assert!(!first.is_empty());
        // A claimed future segment starts no deadline.
        let wake = v.poll_timeout();
        assert!(wake <= t0 + v.header_timeout(), "woken for the stall check");
        // No header in time: cancelled, asked elsewhere, and the staller is avoided.
        t += v.header_timeout();
        for n in 97..=100 {
            v.handle_control(
                t,
                id(30),
                Control::Have {
                    number: n,
                    parts: ALL_PARTS,
                },
            );
        }
        v.handle_tick(t);
        let acts = drain(&mut v);
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Cancel { peer, .. } if *peer == id(20))));
        let again = requests(&acts);
        // Asked of 30 instead (and of the origin for the join segment, held by nobody
        // else that answers), never of the staller.
        assert!(
            again.iter().any(|(p, _)| *p == id(30)) && again.iter().all(|(p, _)| *p != id(20)),
            "{again:?}"
        );
        assert_eq!(v.stats().missed_deadlines, 0);
        // Stalling again and again gets it dropped and banned.
        for _ in 0..MAX_STALLS {
            v.stalled(t, id(20));
        }
        assert!(v.is_banned(&id(20), t));
        // An answer (even Busy) in between resets the count.
        v.stalled(t, id(30));
        v.handle_transfer_failed(t, id(30), 99, 0, true);
        for _ in 0..MAX_STALLS - 1 {
            v.stalled(t, id(30));
        }
        assert!(!v.is_banned(&id(30), t));
    }

    proptest::proptest! {
        /// Under the mesh's use (members within a window of the newest known segment,
        /// pruned below the window as it moves), the ring of held segments answers as a
        /// `BTreeSet` does, jumps of the newest by more than its span included.
        #[test]
        fn the_held_ring_behaves_as_an_ordered_set(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..200), 0..300),
        ) {
            let w = 20u64;
            let (mut ring, mut model) = (HeldSet::new(w), BTreeSet::new());
            let mut newest = 1000u64;
            for &(advance, x) in &ops {
                if advance {
                    newest += x % (3 * w);
                    ring.remove_below(newest - w);
                    model.retain(|&n| n >= newest - w);
                } else {
                    let n = newest - w + x % (2 * w + 1);
                    proptest::prop_assert_eq!(ring.insert(n), model.insert(n));
                }
                for n in newest - 3 * w..newest + 3 * w {
                    proptest::prop_assert_eq!(ring.contains(n), model.contains(&n), "{}", n);
                }
                let got: Vec<u64> = ring.iter().collect();
                let want: Vec<u64> = model.iter().copied().collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    /// Viewer 10, which the origin never admitted, with `partners` connected.
    fn turned_away_viewer(t0: Instant, partners: &[u8]) -> Mesh {
        let mut v = viewer(10, t0);
        drain(&mut v);
        for &p in partners {
            v.handle_connected(t0, id(p), addr(u16::from(p)), Role::Viewer, true, None);
        }
        v
    }

    #[test]
    fn turned_away_by_a_full_origin_it_starts_from_partners() {
        let t0 = Instant::now();
        // The origin never admitted us; two partners did. One lies about the future.
        let mut v = turned_away_viewer(t0, &[20, 30]);
        announce(&mut v, t0, 30, 1_000_000, ALL_PARTS);
        announce(&mut v, t0, 20, 50, ALL_PARTS);
        let asked = requests(&drain(&mut v));
        assert!(asked.contains(&(id(20), 50)), "{asked:?}");
        // No partner holds an older segment whole: it waits at their live edge rather than
        // catch up (a crowd turned away by the origin has no spare upload for catch-up).
        assert_eq!(v.want_from(), Some(50));
        // With partners, the full origin is re-dialled only now and then.
        v.handle_connected(t0, id(40), addr(40), Role::Viewer, true, None);
        let dials_origin = |v: &mut Mesh| {
            drain(v)
                .iter()
                .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
        };
        let mut t = t0 + ORIGIN_RETRY * 2;
        v.handle_dial_failed(t, id(ORIGIN));
        t += ORIGIN_RETRY * 2;
        v.handle_tick(t);
        assert!(
            !dials_origin(&mut v),
            "not every {ORIGIN_RETRY:?} with partners"
        );
        t += ORIGIN_RETRY_WITH_PARTNERS.mul_f64(1.5);
        v.handle_tick(t);
        assert!(dials_origin(&mut v), "but again later");
    }

    #[test]
    fn turned_away_it_catches_up_only_on_segments_most_partners_hold_whole() {
        let t0 = Instant::now();
        let mut v = turned_away_viewer(t0, &[20, 30, 40]);
        // Partners 30 and 40 hold 48 to 50 whole and one part of 47; partner 20 is at 50.
        for p in [30, 40] {
            v.handle_control(
                t0,
                id(p),
                Control::BufferMap {
                    first: 48,
                    bits: vec![0b111],
                },
            );
            announce(&mut v, t0, p, 47, 0b1);
        }
        announce(&mut v, t0, 20, 50, ALL_PARTS);
        drain(&mut v);
        assert_eq!(v.want_from(), Some(48), "two of three hold 48 whole");
        // A fourth partner at 50 alone: half is not most, so it waits at live.
        v.handle_connected(t0, id(50), addr(50), Role::Viewer, true, None);
        announce(&mut v, t0, 50, 50, ALL_PARTS);
        drain(&mut v);
        assert_eq!(v.want_from(), Some(50), "two of four is not most");
    }

    #[test]
    fn a_refused_viewer_backs_off_the_origin_more_each_time() {
        // A flash crowd past the origin's caps, all redialling at one fixed period, keeps
        // the caps full: each refusal doubles the wait (jittered), up to the 30 s cap.
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        let mut dials = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(120) {
            v.handle_tick(t);
            if drain(&mut v)
                .iter()
                .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
            {
                dials.push(t);
                v.handle_dial_failed(t, id(ORIGIN));
            }
            t += Duration::from_millis(50);
        }
        let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 5, "{gaps:?}");
        assert!(gaps[4] >= gaps[0] * 8, "{gaps:?}");
        assert!(
            gaps.iter().all(|g| *g <= ORIGIN_RETRY_WITH_PARTNERS * 2),
            "{gaps:?}"
        );
        // A connection that lasted resets it: the next loss is retried at once (the first
        // wait, plus a maintenance period).
        v.handle_connected(t, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        t += ORIGIN_SHORT_LIVED * 2;
        v.handle_disconnected(t, id(ORIGIN));
        drain(&mut v);
        let lost = t;
        while !v.peers.contains_key(&id(ORIGIN)) && t < lost + Duration::from_secs(5) {
            t += Duration::from_millis(50);
            v.handle_tick(t);
            if drain(&mut v)
                .iter()
                .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
            {
                break;
            }
        }
        assert!(t - lost <= Duration::from_millis(1500), "{:?}", t - lost);
    }

    #[test]
    fn broadcaster_announces_to_all_and_seeds_each_part_to_different_viewers() {
        let t0 = Instant::now();
        let fanout = MeshConfig::broadcaster(id(ORIGIN), SEG).seed_fanout;
        let mut b = broadcaster_with(t0, 10..90);
        let pushes = |b: &mut Mesh, number: u64| -> (usize, Vec<(NodeId, u8)>) {
            b.handle_publish(t0, number);
            let acts = drain(b);
            let haves = acts
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Send {
                            msg: Control::Have {
                                parts: ALL_PARTS,
                                ..
                            },
                            ..
                        }
                    )
                })
                .count();
            let pushes = pushes_of(&acts)
                .into_iter()
                .map(|(peer, _, part)| (peer, part))
                .collect();
            (haves, pushes)
        };
        let (haves, first) = pushes(&mut b, 0);
        assert_eq!(haves, 80);
        // `seed_fanout` copies of each part, each to a different viewer.
        assert_eq!(first.len(), fanout * PARTS);
        for part in 0..PARTS as u8 {
            assert_eq!(first.iter().filter(|(_, p)| *p == part).count(), fanout);
        }
        let seeds: BTreeSet<NodeId> = first.iter().map(|(v, _)| *v).collect();
        assert_eq!(seeds.len(), fanout * PARTS);
        // The next segment seeds other viewers.
        let (_, next) = pushes(&mut b, 1);
        assert!(next.iter().all(|(v, _)| !seeds.contains(v)));
    }

    /// The pushes among `actions`: (to whom, segment, part).
    fn pushes_of(actions: &[Action]) -> Vec<(NodeId, u64, u8)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Push { peer, number, part } => Some((*peer, *number, *part)),
                _ => None,
            })
            .collect()
    }

    /// A broadcaster with uploading viewers `ids`.
    fn broadcaster_with(t0: Instant, ids: std::ops::Range<u8>) -> Mesh {
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        for v in ids {
            b.handle_connected(t0, id(v), addr(u16::from(v)), Role::Viewer, true, None);
        }
        drain(&mut b);
        b
    }

    #[test]
    fn an_unacknowledged_seed_goes_to_another_uploader_and_its_receiver_is_not_seeded_again() {
        let t0 = Instant::now();
        let mut b = broadcaster_with(t0, 10..13);
        b.handle_publish(t0, 0);
        let first = pushes_of(&drain(&mut b));
        let &(lost, _, part) = first.first().expect("a seed");
        // Its receiver vanished without a word: the same part goes to someone else.
        b.handle_push_unconfirmed(t0, lost, 0, part);
        let again = pushes_of(&drain(&mut b));
        assert_eq!(again.len(), 1);
        let (to, number, p) = again[0];
        assert_eq!((number, p), (0, part));
        assert_ne!(to, lost);
        // Later segments are seeded to the others only...
        for n in 1..4 {
            b.handle_publish(t0, n);
            let seeds = pushes_of(&drain(&mut b));
            assert_eq!(seeds.len(), PARTS);
            assert!(seeds.iter().all(|(v, _, _)| *v != lost), "{seeds:?}");
        }
        // ...until it is heard from: it is alive after all.
        b.handle_control(
            t0,
            lost,
            Control::Have {
                number: 3,
                parts: 1,
            },
        );
        b.handle_publish(t0, 4);
        assert!(pushes_of(&drain(&mut b)).iter().any(|(v, _, _)| *v == lost));
    }

    #[test]
    fn a_stale_or_unknown_seed_is_not_seeded_again_and_misses_end() {
        let t0 = Instant::now();
        let mut b = broadcaster_with(t0, 10..12);
        for n in 0..3 {
            b.handle_publish(t0, n);
        }
        drain(&mut b);
        // Segment 0 is two behind the newest: viewers missing it ask the origin anyway.
        b.handle_push_unconfirmed(t0, id(10), 0, 0);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // A part that does not exist, or a segment never published.
        b.handle_push_unconfirmed(t0, id(10), 2, PARTS as u8);
        b.handle_push_unconfirmed(t0, id(10), 9, 0);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // Every uploader missing in turn: once all are suspect, nobody is left to re-seed
        // to (no ping-pong between two vanished viewers).
        b.handle_push_unconfirmed(t0, id(10), 2, 1);
        let again = pushes_of(&drain(&mut b));
        assert_eq!(again, vec![(id(11), 2, 1)]);
        b.handle_push_unconfirmed(t0, id(11), 2, 1);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // With everyone suspect, seeding still goes on (to the suspects).
        b.handle_publish(t0, 3);
        assert_eq!(pushes_of(&drain(&mut b)).len(), PARTS);
    }

    /// A viewer never re-seeds: seeding is the broadcaster's.
    #[test]
    fn a_viewer_ignores_unconfirmed_seeds() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[10, 11]);
        drain(&mut v);
        v.handle_push_unconfirmed(t0, id(10), 0, 0);
        assert!(pushes_of(&drain(&mut v)).is_empty());
    }

    #[test]
    fn seeds_of_a_segment_published_to_nobody_go_to_the_first_viewers() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        b.handle_publish(t0, 0);
        assert!(!drain(&mut b)
            .iter()
            .any(|a| matches!(a, Action::Push { .. })));
        let mut parts = BTreeSet::new();
        for v in 10..10 + PARTS as u8 {
            b.handle_connected(t0, id(v), addr(v.into()), Role::Viewer, true, None);
            let pushed: Vec<u8> = drain(&mut b)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Push {
                        peer,
                        number: 0,
                        part,
                    } if peer == id(v) => Some(part),
                    _ => None,
                })
                .collect();
            assert_eq!(pushed.len(), 1, "one owed part per newcomer");
            parts.extend(pushed);
        }
        assert_eq!(parts.len(), PARTS, "every part seeded once");
        // Nothing more is owed.
        b.handle_connected(t0, id(99), addr(99), Role::Viewer, true, None);
        assert!(!drain(&mut b)
            .iter()
            .any(|a| matches!(a, Action::Push { .. })));
    }

    #[test]
    fn tracker_sample_leads_to_dials_and_full_sets_turn_peers_away() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        drain(&mut v);
        let peers: Vec<PeerInfo> = (20..40)
            .map(|i| PeerInfo {
                id: id(i),
                addr: addr(i as u16),
            })
            .collect();
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        // At once, not at the next maintenance tick: the join waits on these.
        let dialled = |acts: Vec<Action>| -> Vec<NodeId> {
            acts.into_iter()
                .filter_map(|a| match a {
                    Action::Dial {
                        peer,
                        addr: Some(_),
                    } => Some(peer),
                    _ => None,
                })
                .collect()
        };
        let dials = dialled(drain(&mut v));
        assert_eq!(dials.len(), 4, "bounded by max_pending_dials");
        // A failed dial is replaced at once by another candidate.
        v.handle_dial_failed(t0, dials[0]);
        let again = dialled(drain(&mut v));
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(!dials.contains(&again[0]));
        v.handle_tick(t0 + Duration::from_secs(1));
        assert!(dialled(drain(&mut v)).is_empty(), "still 4 pending");
        // Fill the partner set to its cap; the next one is turned away.
        let cap = MeshConfig::viewer(id(ORIGIN), SEG, 3).max_partners as u8;
        for i in 40..40 + cap {
            v.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, true, None);
        }
        drain(&mut v);
        assert_eq!(v.stats().partners, usize::from(cap));
        v.handle_connected(t0, id(60), addr(60), Role::Viewer, true, None);
        let acts = drain(&mut v);
        assert!(acts.contains(&Action::Disconnect {
            peer: id(60),
            reason: DisconnectReason::PartnerSetFull
        }));
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Send { peer, msg: Control::Peers { peers } } if *peer == id(60) && !peers.is_empty())));
    }

    #[test]
    fn a_full_broadcaster_hands_out_the_viewers_it_turned_away() {
        let t0 = Instant::now();
        let mut cfg = MeshConfig::broadcaster(id(ORIGIN), SEG);
        cfg.max_partners = 4;
        let mut b = Mesh::new(cfg, id(ORIGIN), 1, t0);
        for i in 20..24 {
            b.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, true, None);
        }
        // Full: 30..40 are turned away (a leech-only one is not worth handing out).
        for i in 30..40 {
            b.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, i != 39, None);
        }
        drain(&mut b);
        let sample_for = |b: &mut Mesh, who: u8| -> Vec<NodeId> {
            b.handle_connected(t0, id(who), addr(u16::from(who)), Role::Viewer, true, None);
            drain(b)
                .into_iter()
                .find_map(|a| match a {
                    Action::Send {
                        peer,
                        msg: Control::Peers { peers },
                    } if peer == id(who) => Some(peers.iter().map(|p| p.id).collect()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let got = sample_for(&mut b, 50);
        let turned_away: Vec<&NodeId> = got
            .iter()
            .filter(|p| (30..40).any(|i| id(i) == **p))
            .collect();
        // Half the sample is turned-away viewers with room, the rest its full partners.
        assert_eq!(turned_away.len(), OVERFLOW_IN_SAMPLE, "{got:?}");
        assert!(!got.contains(&id(39)) && !got.contains(&id(50)), "{got:?}");
        assert_eq!(got.len(), OVERFLOW_IN_SAMPLE + 4, "{got:?}");
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), got.len());
        // One that later becomes a partner leaves the turned-away list.
        b.handle_disconnected(t0, id(20));
        b.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
        assert!(b.overflow.iter().all(|p| p.id != id(30)));
    }

    #[test]
    fn wake_ups_are_never_in_the_past() {
        let t0 = Instant::now();
        let mut v = viewer_with_partners(t0, &[]);
        // The origin goes away: segments wait with their fallback moment passing.
        v.handle_disconnected(t0, id(ORIGIN));
        for secs in [1, 4, 7, 30] {
            let now = t0 + Duration::from_secs(secs);
            v.handle_tick(now);
            drain(&mut v);
            assert!(v.poll_timeout() > now, "at +{secs}s");
        }
    }

    #[test]
    fn missed_deadlines_are_counted_once() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 3,
                parts: ALL_PARTS,
            },
        );
        // Origin "busy" every time: nothing arrives.
        for step in 1..10 {
            let now = t0 + Duration::from_secs(step);
            v.handle_tick(now);
            for a in drain(&mut v) {
                if let Action::Request {
                    peer, number, part, ..
                } = a
                {
                    v.handle_transfer_failed(now, peer, number, part, true);
                }
            }
        }
        // 0..=3 were all wanted (join point 0, numbers are consecutive) and none arrived.
        assert_eq!(v.stats().missed_deadlines, 4);
    }

    /// What the broadcaster sent `who` when it connected: its Swarm, and whether that came
    /// before the buffer map.
    fn swarm_sent(b: &mut Mesh, who: u8) -> Option<(u32, u32, bool)> {
        let acts = drain(b);
        let at = |want: fn(&Control) -> bool| {
            acts.iter().position(
                |a| matches!(a, Action::Send { peer, msg } if *peer == id(who) && want(msg)),
            )
        };
        let map = at(|m| matches!(m, Control::BufferMap { .. }));
        let swarm = at(|m| matches!(m, Control::Swarm { .. }))?;
        match acts.get(swarm) {
            Some(Action::Send {
                msg:
                    Control::Swarm {
                        upload_pct,
                        joining_pct,
                    },
                ..
            }) => Some((*upload_pct, *joining_pct, map.is_some_and(|m| swarm < m))),
            _ => None,
        }
    }

    #[test]
    fn the_broadcaster_tells_each_joiner_the_swarms_upload() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        b.observe_capacity(2_000_000, Some(8_000_000));
        let join = |b: &mut Mesh, who: u8, at: Instant, uploads: bool, bps: Option<u64>| {
            b.handle_connected(
                at,
                id(who),
                addr(u16::from(who)),
                Role::Viewer,
                uploads,
                bps,
            );
            swarm_sent(b, who)
        };
        // Too few declared to say anything.
        for i in 20..27 {
            assert_eq!(join(&mut b, i, t0, true, Some(2_100_000)), None);
        }
        // One with no cap declares nothing and is left out.
        assert_eq!(join(&mut b, 27, t0, true, None), None);
        // The eighth: (8 + 8 × 2.1) / (8 × 2) = 155%, all of them just joined; sent
        // before the buffer map the joiner picks its start from.
        assert_eq!(
            join(&mut b, 28, t0, true, Some(2_100_000)),
            Some((155, 100, true))
        );
        // A leech-only viewer counts as no upload, whatever it claims: 24.8 / 18.
        assert_eq!(
            join(&mut b, 29, t0, false, Some(9_000_000)),
            Some((137, 100, true))
        );
        // Later, the first nine are no longer joining: 26.9 / 20, one in ten joining.
        let later = t0 + JOINING_WINDOW;
        assert_eq!(
            join(&mut b, 30, later, true, Some(2_100_000)),
            Some((134, 10, true))
        );
        // A viewer that leaves is no longer counted: 29 / 20, two in ten joining.
        b.handle_disconnected(later, id(29));
        assert_eq!(
            join(&mut b, 31, later, true, Some(2_100_000)),
            Some((145, 20, true))
        );
        // Without its own cap the broadcaster covers any catch-up: nothing to say.
        b.observe_capacity(2_000_000, None);
        assert_eq!(join(&mut b, 32, later, true, Some(2_100_000)), None);
    }

    #[test]
    fn a_joiner_starts_at_live_when_the_swarm_cannot_afford_its_catch_up() {
        let t0 = Instant::now();
        // (who says what in a Swarm; the join point for a live edge at 9). Delay 3:
        // 3 × joining / spare segment durations of catch-up against the 8 allowed.
        let cases = [
            (Some((ORIGIN, 105, 100)), 9), // 60: start at live
            (Some((ORIGIN, 100, 100)), 9), // no spare at all
            (Some((ORIGIN, 300, 100)), 6), // 1.5: catch up
            (Some((ORIGIN, 130, 100)), 9), // 10
            (Some((ORIGIN, 130, 50)), 6),  // 5
            (Some((ORIGIN, 130, 10)), 6),  // a few joining a steady swarm: 1
            (Some((20, 105, 100)), 6),     // only the broadcaster is believed
            (None, 6),                     // nothing said: catch up as always
        ];
        for (said, start) in cases {
            let mut v = viewer_connected(t0, &[20]);
            if let Some((who, upload_pct, joining_pct)) = said {
                let msg = Control::Swarm {
                    upload_pct,
                    joining_pct,
                };
                v.handle_control(t0, id(who), msg);
            }
            origin_announces_nine(&mut v, t0);
            assert_eq!(v.want_from(), Some(start), "{said:?}");
        }
    }
}
