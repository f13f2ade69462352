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
mod scheduling;
mod segments;

use crate::node::{DisconnectReason, Misbehaviour};
use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Control, PeerInfo, Role, MAX_PEERS_PER_MESSAGE};
use peers::{Announced, Peer, PeerMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scheduling::Scratch;
use segments::{bits, HeldSet, Tracked};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

    /// `peer` sent bytes or messages that failed verification: drop and ban it.
    pub fn handle_misbehaviour(&mut self, now: Instant, peer: NodeId, reason: Misbehaviour) {
        self.last_now = self.last_now.max(now);
        self.misbehaved(now, peer, reason);
        self.schedule(now);
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

    fn send(&mut self, peer: NodeId, msg: Control) {
        self.actions.push_back(Action::Send { peer, msg });
    }
}

#[cfg(test)]
mod tests;
