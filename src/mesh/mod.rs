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
//! [`PARTS`] runs of pieces, and the part is the unit a viewer asks one supplier for. Every
//! node announces what it holds (a buffer map on connect, then a `Have` with a mask of
//! parts as each part *starts* arriving, so partners pull it piece by piece while it
//! arrives: cut-through; a partner is not told of parts it announced itself); a viewer asks
//! partners for the parts it misses, most urgent first and otherwise rarest first, from the
//! least-loaded, fastest supplier. The broadcaster announces every segment to every viewer
//! (so everyone knows at once what exists and when it was published) but pushes each part
//! to one different viewer (`seed_fanout` copies in all, one by default), so the segment
//! enters the swarm at several points at once and the origin's upload stays near one copy
//! (a seed its receiver does not acknowledge is pushed to another viewer:
//! [`Mesh::handle_push_unconfirmed`]); a viewer asks the broadcaster itself only when no
//! partner has a part by the time half of its playout budget is spent (200 ms for a joining
//! viewer's first segment, which the player is waiting for). A joiner asks for every part
//! of that first segment at once, flagged `join`, and suppliers with spare upload serve it
//! in a slot beyond their cap ([`crate::node::upload::upload_slots`]), so a flash crowd's
//! first segments do not wait for the live relaying; a part the origin seeded to a viewer
//! is served in a slot beyond its cap too, since that viewer holds the swarm's first copy
//! (the drivers decide both). The broadcaster is also the tracker: its peer samples list
//! its partners and, once it is full, the viewers it turned away lately, which still have
//! room for each other.
//!
//! A joiner starts `delay` segments behind live, so its player starts at once, unless
//! the broadcaster's [`Control::Swarm`] says the swarm's spare upload cannot serve the
//! joining crowd's catch-up soon enough (`Mesh::catch_up`): then it starts at live,
//! since that catch-up would come out of the upload the live segments need.
//!
//! Why parts: with whole-segment requests a viewer whose upload is below twice the
//! bitrate serves one downstream at a time for a whole segment, so the relay tree branches
//! once per segment-time; a part turns that slot over eight times as often, and a segment
//! arrives over several suppliers' uplinks at once (BENCHMARKS.md).
//!
//! ## Files
//! One [`Mesh`], its `impl` spread over the files by job: here the call order's entry
//! points (`poll_*`, `handle_control`, `handle_tick`) and accessors; `peers` (the connected
//! peers and what each announced), `segments` (the segments tracked and held, the window,
//! the join point), `scheduling` (what to ask of whom, and how requests went),
//! `membership` (connections, dialling, peer exchange, bans) and `seeding` (the
//! broadcaster's publishing and seeding).

mod listening;
mod membership;
mod peers;
mod scheduling;
mod seeding;
mod segments;
#[cfg(test)]
mod tests;

use crate::node::{DisconnectReason, Misbehaviour};
use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Control, PeerInfo, Reach, Role, MAX_PEERS_PER_MESSAGE};
use membership::Known;
use peers::PeerMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scheduling::Scratch;
use segments::{bits, HeldSet, Tracked};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a joining viewer waits for partners to announce its first segment before it
/// asks the origin: long enough for the tracker's sample to be dialled and buffer maps to
/// arrive, short next to the wait for the stream's later segments (docs/DESIGN.md).
const JOIN_ORIGIN_WAIT: Duration = Duration::from_millis(200);

/// The broadcaster's partner cap ([`MeshConfig::broadcaster`]).
pub const BROADCASTER_MAX_PARTNERS: usize = 3072;
/// How recently a viewer must have connected to count as joining in [`Control::Swarm`].
pub const JOINING_WINDOW: Duration = Duration::from_secs(10);
/// How long a viewer with partners on its site holds announcements to partners off it, so
/// that parts arriving together go in one message ([`Mesh::announce`]).
const HAVE_HOLD: Duration = Duration::from_millis(25);

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
    /// The site this viewer was given a name for (`--site`): peers given the same one are
    /// of its site wherever their public addresses.
    pub site: Option<crate::wire::SiteTag>,
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
            site: None,
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
        /// Where it was seen (behind a NAT, its public address).
        addr: Option<SocketAddr>,
        /// Its LAN address, given only when it is of our site (behind our public address or
        /// given our site's name), and dialled first
        /// ([`crate::node::nat::Reachability::dial_addrs`]).
        local: Option<SocketAddr>,
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

/// One node's view of the mesh. See the module docs for the call order.
#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    me: NodeId,
    rng: ChaCha8Rng,
    peers: PeerMap,
    known: BTreeMap<NodeId, Known>,
    /// Dials in progress, each with the moment from which it no longer holds one of the
    /// [`MeshConfig::max_pending_dials`] places ([`Mesh::dialling`]).
    pending_dials: BTreeMap<NodeId, Instant>,
    banned: BTreeMap<NodeId, Instant>,
    /// Segments tracked and not yet held. Held ones move to `held`, since their per-part
    /// state is done with.
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
    /// When a part last came whole with bytes, and from whom: the witness that our own link
    /// works when another supplier stalls ([`Mesh::stalled`]).
    last_delivery: Option<(Instant, NodeId)>,
    origin_retry_at: Instant,
    /// Dials to the origin that failed, and connections to it that ended within
    /// [`SHORT_LIVED`](membership::SHORT_LIVED) (turned away: its partner
    /// set is full), since the last that lasted; each doubles the wait before the next dial.
    origin_failures: u32,
    /// When a segment last passed its deadline here unheld ([`Mesh::starving`]).
    last_missed: Option<Instant>,
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
    /// Broadcaster: viewers with a LAN address, by the public address they came from.
    site_book: membership::SiteBook,
    /// Peers just turned away for a full partner set, with when: until their connection
    /// closes they may still ask us for a rendezvous with the partners we handed them.
    introducing: VecDeque<(PeerInfo, Instant)>,
    /// Rendezvous passed on lately: (asked by, passed to, when) ([`Mesh::rendezvous`]).
    passed: VecDeque<(NodeId, NodeId, Instant)>,
    /// A segment has been held: the join is over.
    started: bool,
    /// When the earliest held announcement to a partner goes ([`Mesh::announce`]).
    have_due: Option<Instant>,
    /// This node's rotation of part order among equally rare parts, so viewers that hear
    /// of a segment at the same moment do not all ask for part 0 first.
    part_offset: usize,
    stats: MeshStats,
    /// Where peers off our networks see us ([`Mesh::observe_self`]): peers at the same
    /// public address are of our site.
    public: Option<SocketAddr>,
    /// How we can be reached ([`Mesh::observe_self`]).
    reach: Reach,
    /// Viewer partners off our site behind symmetric NATs, and all viewer partners, as of
    /// the last maintenance ([`Mesh::symmetric_partners`]).
    symmetric_partners: (usize, usize),
    scratch: Scratch,
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
            pending_dials: BTreeMap::new(),
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
            last_delivery: None,
            origin_retry_at: now,
            origin_failures: 0,
            last_missed: None,
            origin_since: None,
            push_cursor: 0,
            start_from_partners: false,
            swarm: None,
            declared: BTreeMap::new(),
            capacity: (0, None),
            part_offset: 0,
            started: false,
            have_due: None,
            seed_debt: VecDeque::new(),
            overflow: VecDeque::new(),
            site_book: membership::SiteBook::default(),
            introducing: VecDeque::new(),
            passed: VecDeque::new(),
            stats: MeshStats::default(),
            public: None,
            reach: Reach::Unknown,
            symmetric_partners: (0, 0),
            scratch: Scratch::default(),
        };
        mesh.part_offset = mesh.rng.gen_range(0..PARTS);
        mesh.maintain(now);
        mesh
    }

    /// What the driver learned of our own address from peers' Hellos
    /// ([`crate::node::nat::Reachability`]): where we are seen, and how we can be reached.
    pub fn observe_self(&mut self, public: Option<SocketAddr>, reach: Reach) {
        let moved = self.public.map(|a| a.ip()) != public.map(|a| a.ip());
        self.public = public;
        self.reach = reach;
        // Who is of our site follows our public address: a neighbour that connected before
        // anyone told us where we are seen would otherwise stay a stranger for good, and
        // both of us would fetch its share of the parts across the site's WAN.
        if moved {
            let site = self.site();
            for p in self.peers.values_mut() {
                p.same_site = site.neighbour(p.role, p.lan, p.addr);
            }
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Mesh::handle_tick`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_maintenance;
        if let Some(d) = self.have_due {
            // Passed already if inputs other than ticks moved the clock on: tick at once.
            t = t.min(d.max(self.last_now));
        }
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
        // the tick it would cause does nothing otherwise. Whatever changes that (an announcement, a request ending) is an
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

    /// Viewer partners off our site behind symmetric NATs, and all viewer partners (counted
    /// at each maintenance, every half second): upload admission holds slots back for the
    /// former ([`crate::node::Uploads::note_partners`]), since they can be served by public
    /// peers alone while everyone else has other suppliers.
    pub fn symmetric_partners(&self) -> (usize, usize) {
        self.symmetric_partners
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

    /// Viewer partners of our own site (behind our public address).
    fn site_count(&self) -> usize {
        self.peers.values().filter(|p| p.same_site).count()
    }

    /// Viewer partners off our site: what the partner caps count (see
    /// [`membership::MAX_SITE_PARTNERS`]).
    fn far_count(&self) -> usize {
        self.viewer_count() - self.site_count()
    }

    /// A control message from a connected peer (after [`Control::validate`]).
    pub fn handle_control(&mut self, now: Instant, from: NodeId, msg: Control) {
        self.last_now = self.last_now.max(now);
        let Some(p) = self.peers.get_mut(&from) else {
            if let Control::Rendezvous { peer } = msg {
                self.introduce(now, from, *peer);
            }
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
                self.relay_have(from, number, parts);
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
                let news = self.learn(now, from, &numbers);
                // A restarted origin holds only what it published since: a joiner does not
                // start below the oldest of those, which nobody may hold any more.
                if let (true, false, Some(&(oldest, _))) =
                    (self.is_origin(&from), self.started, numbers.first())
                {
                    if self.want_from.is_some_and(|w| w < oldest) {
                        self.want_from = Some(oldest);
                    }
                }
                if !news {
                    return;
                }
            }
            Control::Peers { peers } => {
                for p in peers.into_iter().take(MAX_PEERS_PER_MESSAGE) {
                    self.add_known(p);
                    // Its sender can arrange a rendezvous with it.
                    if let Some(k) = self.known.get_mut(&p.id) {
                        k.via = Some(from);
                    }
                }
                // A joining viewer dials the tracker's sample at once rather than at the
                // next maintenance: half a second of a join is spent otherwise.
                self.dial_more_if_viewer(now);
            }
            Control::Rendezvous { peer } => {
                self.rendezvous(now, from, *peer);
                return;
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
            Control::Heard {
                peer,
                number,
                parts,
            } => {
                if !self.heard(now, from, peer, number, parts) {
                    return;
                }
            }
            Control::Quiet { on } => {
                self.quiet(now, from, on);
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

    /// Timers: request timeouts, deadlines, maintenance, scheduling.
    pub fn handle_tick(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.send_held_haves(now);
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
                self.last_missed = Some(now);
            }
        }
        if now >= self.next_maintenance {
            self.maintain(now);
        }
        self.schedule(now);
    }

    fn send(&mut self, peer: NodeId, msg: Control) {
        self.actions.push_back(Action::Send { peer, msg });
    }
}

/// SplitMix64's finaliser: ranks computed from nearby inputs come out unrelated.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
