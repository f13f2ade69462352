//! The event loop: nodes, upload links, connections and transfers, and the driver that turns
//! each mesh's actions into scheduled events the way `net` turns them into QUIC traffic.
//! The model is described in the parent module's docs.
//!
//! Here: the [`Sim`], its event queue and loop (scheduling, picking the next event, which
//! with a worker may run ahead of the jobs in its hands, dispatching it) and the report.
//! What an event does lives beside what it touches: `nodes` (joining, leaving,
//! publishing, keeping a segment), `links` (connections and control messages),
//! `transfers` (segment parts on the move) and `worker` (the second thread's mesh calls).

mod links;
mod nodes;
mod sites;
#[cfg(test)]
mod tests;
mod transfers;
mod worker;

use crate::metrics::{self, Histogram};
use crate::queue::EventQueue;
use crate::{JoinMs, LatencyMs, SimConfig, SimDetails, SimReport};
use links::{Conns, LinkRow};
use nodes::{node_id, Node};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rtrb::RingBuffer;
use starling::mesh::{Action, Mesh};
use starling::stream::{part_pieces, NodeId, PARTS};
use starling::wire::{self, Control, Reply, Role};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use transfers::{Slab, TRef, Transfer};
use worker::{worker, Call, Pending, Pipe, COLLECT_EVERY, MAX_PENDING};

/// Virtual time: nanoseconds since the run's base instant.
type Ns = u64;

const NS_PER_SEC: f64 = 1e9;
const NS_PER_MS: u64 = 1_000_000;
/// The broadcaster's index.
const ORIGIN: u32 = 0;
/// The source of events scheduled by joins, departures and judging (no node's own).
const COORDINATOR: u32 = u32::MAX;
/// The owner of an event that does nothing (its transfer is gone): it touches no state.
const NOBODY_NODE: u32 = u32::MAX - 1;
/// Events the loop may pass over, waiting for the worker, to run later ones meanwhile.
const MAX_HELD: usize = 8;
/// Bits of an event's ordering key given to the scheduling node's own counter; the node's
/// index (plus one) takes the bits above.
const KEY_COUNT_BITS: u32 = 38;

/// What the loop does next.
enum Pick {
    /// Run an event.
    Run {
        /// When it is due.
        at: Ns,
        /// Its slot.
        slot: u32,
        /// The node it runs at.
        owner: u32,
        /// Nothing may overlap it (see [`Sim::is_barrier`]).
        barrier: bool,
    },
    /// Wait for the worker.
    Wait,
    /// Nothing is left before the end.
    Done,
}

#[derive(Debug)]
enum Ev {
    Publish,
    Tick {
        node: u32,
    },
    Join,
    Leave,
    Deadline {
        number: u64,
    },
    DialDone {
        from: u32,
        to: u32,
        started: Ns,
    },
    DialFailed {
        from: u32,
        to: u32,
    },
    /// A dial `to`'s NAT kept out is retransmitted (QUIC's probe timeout, doubling).
    DialRetry {
        from: u32,
        to: u32,
        started: Ns,
        attempt: u32,
    },
    /// `node` learns that its connection `conn` to `peer` ended.
    Notice {
        node: u32,
        peer: u32,
        conn: u64,
    },
    /// `node`'s delayed close of its connection to `peer` takes effect.
    Close {
        node: u32,
        peer: u32,
        conn: u64,
    },
    Control {
        from: u32,
        to: u32,
        conn: u64,
        sent: Ns,
        msg: Control,
    },
    /// A request reaches the holder.
    RequestArrive {
        tr: TRef,
    },
    /// `Busy`, `Unavailable` or a reset (the relay's upstream failed) reaches the requester.
    Fail {
        tr: TRef,
        busy: bool,
    },
    /// A site's WAN link (`inwards`, or out) has room for the next upload waiting for it.
    WanRoom {
        site: u32,
        inwards: bool,
    },
    /// A part's first frame (with the signed header or without) reaches the receiver.
    HeaderArrive {
        tr: TRef,
    },
    /// The receiver's stop (cancel, unwanted) reaches the sender.
    StopArrive {
        tr: TRef,
    },
    /// The upload may go on: its booked piece leaves, or its next piece is here to book.
    Pump {
        tr: TRef,
        seq: u32,
    },
    /// The last piece reaches the receiver.
    Deliver {
        tr: TRef,
    },
    /// The origin's seed of (`number`, `part`) to `to`, sent whole, landing at `landed`:
    /// acknowledged if `to` took it on `conn`, however late (its connection acknowledges
    /// packets all the while, which is what `net`'s `push` watches); otherwise (it vanished)
    /// reported at `deadline`, when it has acknowledged nothing for the wait.
    SeedCheck {
        to: u32,
        conn: u64,
        number: u64,
        part: u8,
        landed: Ns,
        deadline: Ns,
    },
    /// The origin's driver reports the seed to `to` unacknowledged.
    SeedUnconfirmed {
        to: u32,
        number: u64,
        part: u8,
    },
}

impl Ev {
    /// The transfer a transfer's event is about, and whether it happens at the sender.
    fn transfer(&self) -> Option<(TRef, bool)> {
        match self {
            Ev::RequestArrive { tr } | Ev::StopArrive { tr } | Ev::Pump { tr, .. } => {
                Some((*tr, true))
            }
            Ev::Fail { tr, .. } | Ev::HeaderArrive { tr } | Ev::Deliver { tr } => {
                Some((*tr, false))
            }
            _ => None,
        }
    }
}

/// The whole simulated swarm.
#[derive(Debug)]
pub(super) struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Ns,
    end: Ns,
    rng: ChaCha8Rng,
    /// Pending events by (time, sequence): the sequence makes equal times run in the
    /// order they were scheduled. Entries stay small; the events wait in `slots`.
    queue: EventQueue,
    slots: Vec<Option<Ev>>,
    free_slots: Vec<u32>,
    seq: u64,
    nodes: Vec<Node>,
    /// Live viewers, for picking who leaves.
    live: Vec<u32>,
    /// Each node's links (see [`Sim::links`]), as a row unless spilled to the node.
    link_rows: Vec<LinkRow>,
    /// Each node's id and access RTT (the RTT between two nodes is the mean of theirs),
    /// apart from the nodes: every message sent reads both for its receiver, whose node
    /// is otherwise a cold line.
    ids: Vec<NodeId>,
    access: Vec<Ns>,
    /// Each node's site ([`sites::NO_SITE`]: none), apart from the nodes for the same reason.
    site_of: Vec<u32>,
    /// Per site, the number of the latest job for one of its viewers (see
    /// [`Sim::near_pending`]).
    site_marks: Vec<u64>,
    /// The sites, and the sites of the initial viewers yet to join (popped from the back).
    sites: Vec<sites::Site>,
    site_plan: Vec<u32>,
    /// RTT between two viewers of one site.
    lan_ns: Ns,
    /// Looked up on every message, by slot (see [`LinkRow`]).
    conns: Conns,
    transfers: Slab,
    /// The node whose event is running: events scheduled now are its (see [`Sim::at`]).
    cur: u32,
    /// With `--threads 2`: the channels to the worker.
    pipe: Option<Pipe>,
    /// Jobs in the worker's hands, oldest first (it answers in order).
    pending: VecDeque<Pending>,
    /// Per node, the number of the latest job for it, and of the latest job for one of its
    /// partners (see [`Sim::near_pending`]).
    marks: Vec<(u64, u64)>,
    /// The running event may hand its mesh calls to the worker (not a coordinator's or the
    /// origin's, nor one touching two meshes).
    may_hand_off: bool,
    /// The least one-way latency between any two nodes: nothing one node does reaches
    /// another sooner.
    lookahead: Ns,
    spare_actions: Vec<Vec<Action>>,
    /// Events passed over while the worker had jobs that they did not commute with, in
    /// (time, key) order: (time, key, slot, owner). An owner only ever turns into
    /// [`NOBODY_NODE`] (its transfer ends, and the event does nothing), so the one noted is
    /// safe to judge and run it by.
    held: Vec<(Ns, u64, u32, u32)>,
    /// [`Sim::pick`]'s list of the events it passed over: (owner, time).
    blockers: Vec<(u32, Ns)>,
    publish_at: Vec<Ns>,
    segments: u64,
    seg_ns: Ns,
    seg_bytes: u64,
    /// Piece size `net` sends (and books upload tokens) in.
    piece_bytes: u64,
    pieces: u32,
    /// Parts with no pieces (a segment of fewer pieces than parts): held with the header.
    empty_parts: u32,
    origin_id: NodeId,
    loss: f64,
    reply_header_bytes: u64,
    /// A part reply without the header.
    reply_part_bytes: u64,
    busy_bytes: u64,
    unavailable_bytes: u64,
    hello_bytes: u64,
    latency: Histogram,
    joins: Vec<f64>,
    stream_bytes: u64,
    origin_bytes: u64,
    delivered_bytes: u64,
    d: SimDetails,
}

impl Sim {
    pub(super) fn new(cfg: &SimConfig) -> Sim {
        let seg_ns = cfg.segment_ms * NS_PER_MS;
        let segments = (cfg.seconds * 1000.0 / cfg.segment_ms as f64).floor() as u64;
        let seg_bytes = cfg.segment_bytes();
        let piece_bytes = u64::from(starling::stream::piece_size_for(seg_bytes as u32)).max(1);
        let origin_id = node_id(ORIGIN);
        // Size a real signed header once: every reply carries one.
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let body = vec![0u8; seg_bytes as usize];
        let reply_header_bytes = starling::stream::sign_segment(
            &key,
            segments,
            cfg.segment_ms as u32,
            1_700_000_000_000,
            false,
            &body,
        )
        .map_or(0, |h| {
            wire::encode(&Reply::Part {
                number: segments,
                part: 0,
                header: Some(h),
            })
            .len() as u64
        });
        let reply_part_bytes = wire::encode(&Reply::Part {
            number: segments,
            part: 0,
            header: None,
        })
        .len() as u64;
        let hello_bytes = wire::encode(&Control::Hello(Box::new(wire::Hello {
            version: wire::PROTOCOL_VERSION,
            stream: origin_id,
            role: Role::Viewer,
            uploads: true,
            upload_bps: Some(cfg.viewer_upload_bps),
            token: None,
            token_epoch: 0,
            observed: nodes::node_addr(1),
            local: Some(nodes::node_addr(1)),
            public: None,
            reach: wire::Reach::Nat,
            site: None,
        })))
        .len() as u64;
        Sim {
            base: Instant::now(),
            now: 0,
            end: (segments + cfg.delay_segments) * seg_ns,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            queue: EventQueue::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            nodes: Vec::with_capacity(cfg.peers + 1),
            live: Vec::with_capacity(cfg.peers),
            link_rows: Vec::with_capacity(cfg.peers + 1),
            ids: Vec::with_capacity(cfg.peers + 1),
            access: Vec::with_capacity(cfg.peers + 1),
            site_of: Vec::with_capacity(cfg.peers + 1),
            site_marks: Vec::new(),
            sites: Vec::new(),
            site_plan: Vec::new(),
            lan_ns: (cfg.lan_rtt_ms * NS_PER_MS as f64) as Ns,
            conns: Conns::default(),
            transfers: Slab::default(),
            cur: COORDINATOR,
            pipe: None,
            pending: VecDeque::new(),
            marks: Vec::new(),
            may_hand_off: false,
            lookahead: Ns::MAX,
            spare_actions: Vec::new(),
            held: Vec::new(),
            blockers: Vec::new(),
            publish_at: Vec::with_capacity(segments as usize),
            segments,
            seg_ns,
            seg_bytes,
            piece_bytes,
            pieces: seg_bytes.div_ceil(piece_bytes) as u32,
            empty_parts: (0..PARTS)
                .filter(|j| {
                    let pieces = seg_bytes.div_ceil(piece_bytes) as usize;
                    part_pieces(pieces, *j).is_none_or(|r| r.is_empty())
                })
                .fold(0, |m, j| m | 1 << j),
            origin_id,
            loss: cfg.loss_pct / 100.0,
            reply_header_bytes,
            reply_part_bytes,
            busy_bytes: wire::encode(&Reply::Busy).len() as u64,
            unavailable_bytes: wire::encode(&Reply::Unavailable).len() as u64,
            hello_bytes,
            latency: Histogram::new(),
            joins: Vec::new(),
            stream_bytes: 0,
            origin_bytes: 0,
            delivered_bytes: 0,
            d: SimDetails::default(),
            cfg: cfg.clone(),
        }
    }

    pub(super) fn run(mut self) -> SimReport {
        if self.cfg.threads < 2 {
            self.start();
            self.run_until(self.end);
            return self.report();
        }
        let (jobs, inbox) = RingBuffer::new(MAX_PENDING);
        let (outbox, done) = RingBuffer::new(MAX_PENDING);
        std::thread::scope(|scope| {
            scope.spawn(move || worker(inbox, outbox));
            self.pipe = Some(Pipe { jobs, done });
            self.start();
            self.run_until(self.end);
            // Hanging up ends the worker.
            self.pipe = None;
        });
        self.report()
    }

    /// The origin, the stream's first publish, the initial audience and churn.
    fn start(&mut self) {
        self.spawn_origin();
        if self.segments > 0 {
            self.at(self.seg_ns, Ev::Publish);
        }
        // Segment k is published at (k + 1) segments (−1: time zero).
        let first = u64::try_from(self.cfg.join_after.saturating_add(1))
            .unwrap_or(0)
            .saturating_mul(self.seg_ns);
        let window = self.cfg.join_window_ms * NS_PER_MS;
        for _ in 0..self.cfg.peers {
            let t = first + self.rng.gen_range(0..=window);
            self.at(t, Ev::Join);
        }
        if self.cfg.churn_pct_per_min > 0.0 && self.cfg.peers > 0 {
            let gap = self.churn_gap();
            self.at((first + window).saturating_add(gap), Ev::Leave);
        }
        // Last, so that runs without sites draw what they always drew.
        self.setup_sites();
    }

    /// Asks the cache for the memory of the next few events, each a step further along
    /// the chain it will follow (its slot, then its transfer, its node, its mesh, and what
    /// the mesh reads first), so that by its turn most of it is there. At 10,000 peers
    /// these lines are cold, and an event otherwise waits for them one by one.
    fn prefetch_ahead(&self) {
        use crate::prefetch::prefetch;
        use std::mem::size_of;
        for (i, &(_, _, slot)) in self.queue.upcoming().iter().enumerate() {
            let Some(s) = self.slots.get(slot as usize) else {
                continue;
            };
            if i >= 4 {
                prefetch(s, size_of::<Option<Ev>>());
                continue;
            }
            // With a worker, meshes mostly run there, and it fetches its own.
            if i < 2 && self.pipe.is_some() {
                continue;
            }
            let Some(ev) = s else { continue };
            if i == 3 {
                if let Some((tr, _)) = ev.transfer() {
                    if let Some(t) = self.transfers.items.get(tr.idx as usize) {
                        prefetch(t, size_of::<Transfer>());
                    }
                }
                continue;
            }
            let owner = self.owner(ev) as usize;
            let Some(n) = self.nodes.get(owner) else {
                continue;
            };
            match (i, &n.mesh) {
                (2, _) => {
                    prefetch(n, size_of::<Node>());
                    if let Some(row) = self.link_rows.get(owner) {
                        prefetch(row, size_of::<LinkRow>());
                    }
                }
                (0 | 1, Some(m)) => prefetch(&**m, size_of::<Mesh>()),
                _ => {}
            }
        }
    }

    /// Runs every event due at or before `end`.
    ///
    /// With a worker, an event whose mesh calls go to it goes on at once with the events
    /// after it, its actions run when the worker answers; the events run meanwhile are
    /// ones that commute with it, so the figures are the one-thread figures (see
    /// [`Sim::runnable`]).
    fn run_until(&mut self, end: Ns) {
        let mut turn = 0u32;
        loop {
            // Answers are taken in every few turns, and whenever the worker is full: each
            // look at the channel is a cache line the worker writes.
            turn = turn.wrapping_add(1);
            if !self.pending.is_empty()
                && (turn % COLLECT_EVERY == 0 || self.pending.len() >= MAX_PENDING)
            {
                self.collect_done();
            }
            match self.pick(end) {
                Pick::Run {
                    at,
                    slot,
                    owner,
                    barrier,
                } => {
                    let Some(ev) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                        continue;
                    };
                    self.free_slots.push(slot);
                    if !self.pending.is_empty() {
                        self.d.overlapped += 1;
                    }
                    self.now = at;
                    self.cur = owner;
                    self.may_hand_off = self.pipe.is_some() && !barrier && owner != NOBODY_NODE;
                    self.d.events += 1;
                    self.count(&ev);
                    self.prefetch_ahead();
                    self.dispatch(ev);
                }
                Pick::Wait => self.wait_one(),
                Pick::Done => break,
            }
        }
    }

    /// The next event to run: the first, in (time, key) order over the held events and the
    /// queue, that may run now (see [`Sim::runnable`]). Events passed over are held, up to
    /// [`MAX_HELD`]; with nothing in the worker's hands the very first always runs.
    fn pick(&mut self, end: Ns) -> Pick {
        let mut blockers = std::mem::take(&mut self.blockers);
        blockers.clear();
        // The earliest time in the worker's hands or passed over.
        let mut first = self.pending.iter().map(|p| p.at).min().unwrap_or(Ns::MAX);
        let mut i = 0;
        let pick = loop {
            let held = self.held.get(i).map(|h| (h.0, h.1));
            let queued = self.queue.peek().filter(|e| e.0 <= end);
            let from_held = match (held, queued) {
                (Some(h), Some(q)) => h <= (q.0, q.1),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) if self.pending.is_empty() => break Pick::Done,
                (None, None) => break Pick::Wait,
            };
            if from_held {
                let Some(&(at, _, slot, owner)) = self.held.get(i) else {
                    break Pick::Wait;
                };
                // Held events are never barriers (those wait where they are).
                if self.runnable(at, owner, false, first, &blockers) {
                    self.held.remove(i);
                    break Pick::Run {
                        at,
                        slot,
                        owner,
                        barrier: false,
                    };
                }
                blockers.push((owner, at));
                first = first.min(at);
                i += 1;
                continue;
            }
            let Some((at, key, slot)) = queued else {
                break Pick::Wait;
            };
            let (owner, barrier) = match self.slots.get(slot as usize).and_then(Option::as_ref) {
                Some(ev) => {
                    let o = self.owner(ev);
                    (o, self.is_barrier(ev, o))
                }
                None => (NOBODY_NODE, false),
            };
            let run = self.runnable(at, owner, barrier, first, &blockers);
            if !run && (barrier || self.held.len() >= MAX_HELD) {
                break Pick::Wait;
            }
            self.queue.pop();
            if run {
                break Pick::Run {
                    at,
                    slot,
                    owner,
                    barrier,
                };
            }
            // Everything held past `i` is later than this one.
            self.held.insert(i, (at, key, slot, owner));
            blockers.push((owner, at));
            first = first.min(at);
            i += 1;
        };
        self.blockers = blockers;
        pick
    }

    // ---- scheduling ----

    /// Schedules `ev`. Equal times run in the order of a key made of the scheduling node
    /// and that node's own count of events scheduled, not one global count: the order of
    /// two nodes' events then does not depend on how the run interleaved the nodes'
    /// unrelated work, which a run on two cores needs to give the same figures.
    fn at(&mut self, at: Ns, ev: Ev) {
        let key = match self.nodes.get_mut(self.cur as usize) {
            Some(n) => {
                n.seq += 1;
                let src = u64::from(self.cur) + 1;
                (src << KEY_COUNT_BITS) | (n.seq & ((1 << KEY_COUNT_BITS) - 1))
            }
            None => {
                // The coordinator's events go first among equal times.
                self.seq += 1;
                self.seq & ((1 << KEY_COUNT_BITS) - 1)
            }
        };
        let slot = match self.free_slots.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = Some(ev);
                }
                i
            }
            None => {
                self.slots.push(Some(ev));
                (self.slots.len() - 1) as u32
            }
        };
        self.queue.push(at, key, slot);
    }

    fn count(&mut self, ev: &Ev) {
        let k = &mut self.d.by_kind;
        let c = match ev {
            Ev::Control { msg, .. } => match msg {
                Control::Have { .. } => &mut k.have,
                Control::BufferMap { .. } => &mut k.buffer_map,
                _ => &mut k.other_control,
            },
            Ev::RequestArrive { .. } => &mut k.request,
            Ev::Fail { busy: true, .. } => &mut k.busy,
            Ev::Fail { .. } => &mut k.failed,
            Ev::HeaderArrive { .. } => &mut k.first_frame,
            Ev::Deliver { .. } => &mut k.last_piece,
            Ev::Pump { .. } | Ev::WanRoom { .. } => &mut k.pump,
            Ev::StopArrive { .. } => &mut k.stop,
            Ev::Tick { .. } => &mut k.tick,
            Ev::DialDone { .. }
            | Ev::DialFailed { .. }
            | Ev::DialRetry { .. }
            | Ev::Notice { .. }
            | Ev::Close { .. } => &mut k.connection,
            Ev::Publish
            | Ev::Join
            | Ev::Leave
            | Ev::Deadline { .. }
            | Ev::SeedCheck { .. }
            | Ev::SeedUnconfirmed { .. } => &mut k.other,
        };
        *c += 1;
    }

    /// Events that run with nothing in the worker's hands: the coordinator's (joins,
    /// departures, judging, publishing, a site's WAN line), the origin's (thousands of
    /// partners: near everyone), dials completing (two meshes at once), and the uploads
    /// across a site's WAN that may book its links, which uploads of other sites' viewers and
    /// homes book too.
    fn is_barrier(&self, ev: &Ev, owner: u32) -> bool {
        owner == COORDINATOR
            || owner == ORIGIN
            || match ev {
                Ev::DialDone { .. } | Ev::DialRetry { .. } => true,
                Ev::Pump { tr, .. } | Ev::RequestArrive { tr } => self.crosses_wan(*tr),
                _ => false,
            }
    }

    /// Whether the event at `at` owned by `owner` may run now, before the actions of the
    /// worker's jobs (which run as of their own, earlier times) and before `blockers`, the
    /// earlier events passed over: only if it commutes with each of them:
    /// - it is earlier than one least latency after the earliest job's time: whatever a
    ///   job's actions (or a passed-over event) schedule at another node comes at least
    ///   that late, so after it in any case;
    /// - it touches none of what a job's actions touch. A viewer's event touches that node,
    ///   its connections and the transfers it sends or receives, and, on a site, what the site
    ///   keeps of its viewers (the WAN tally, what its viewers hold), so two viewers' events
    ///   touch nothing in common unless they are linked (one is the other's partner, or was
    ///   until a close not yet noticed) or on one site. (What books a site's WAN links is a
    ///   barrier.) (Pushes, which reach
    ///   into the receiver's node, come from the origin alone, whose events are barriers.)
    ///   The one reach further is a sender's pump waking the relays that follow its
    ///   transfer at the receiver: it clears their `waiting` and schedules their pump, and
    ///   what their own receivers do to them (finish or cancel their end) neither reads nor
    ///   writes that, so the two commute.
    ///
    /// Equal times are ordered per node (see [`Sim::at`]), so the order does not move.
    /// `first` is the earliest time among the jobs and `blockers`.
    fn runnable(
        &self,
        at: Ns,
        owner: u32,
        barrier: bool,
        first: Ns,
        blockers: &[(u32, Ns)],
    ) -> bool {
        if self.pending.is_empty() && blockers.is_empty() {
            return true;
        }
        if barrier {
            return false;
        }
        if owner == NOBODY_NODE {
            return true;
        }
        if at >= first.saturating_add(self.lookahead) || self.near_pending(owner) {
            return false;
        }
        !blockers.iter().any(|&(b, _)| self.adjacent(owner, b))
    }

    /// The node an event runs at (whose events it schedules); the coordinator for joins,
    /// departures and judging.
    fn owner(&self, ev: &Ev) -> u32 {
        if let Some((t, sender)) = ev.transfer() {
            return self
                .transfers
                .get(t)
                .map_or(NOBODY_NODE, |t| if sender { t.from } else { t.to });
        }
        match ev {
            Ev::Publish | Ev::SeedCheck { .. } | Ev::SeedUnconfirmed { .. } => ORIGIN,
            // Uploads of several nodes wait in a site's line: a barrier, as the coordinator's.
            Ev::Join | Ev::Leave | Ev::Deadline { .. } | Ev::WanRoom { .. } => COORDINATOR,
            Ev::Tick { node } | Ev::Notice { node, .. } | Ev::Close { node, .. } => *node,
            Ev::DialDone { from, .. }
            | Ev::DialFailed { from, .. }
            | Ev::DialRetry { from, .. } => *from,
            Ev::Control { to, .. } => *to,
            // Transfers' events are answered above.
            Ev::RequestArrive { .. }
            | Ev::StopArrive { .. }
            | Ev::Pump { .. }
            | Ev::Fail { .. }
            | Ev::HeaderArrive { .. }
            | Ev::Deliver { .. } => NOBODY_NODE,
        }
    }

    pub(super) fn instant(&self, t: Ns) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn ns_of(&self, t: Instant) -> Ns {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(Ns::MAX)
    }

    /// Runs a node's pending actions, then makes sure it is ticked at its next timeout.
    fn drain(&mut self, i: u32) {
        self.drain_after(i, false);
    }

    fn drain_after(&mut self, i: u32, ticked: bool) {
        while let Some(a) = self.mesh(i).and_then(Mesh::poll_action) {
            self.act(i, a);
        }
        // As `net`'s driver does after each turn of its loop.
        let Some(partners) = self.mesh(i).map(|m| m.symmetric_partners()) else {
            return;
        };
        if let Some(n) = self.node_mut(i) {
            n.upload.note_partners(partners);
        }
        let Some(wake) = self.mesh(i).map(|m| m.poll_timeout()) else {
            return;
        };
        self.wake_at(i, wake, ticked);
    }

    /// Makes sure node `i` is ticked by `wake`, its mesh's next timeout.
    fn wake_at(&mut self, i: u32, wake: Instant, ticked: bool) {
        let mut t = self.ns_of(wake);
        if t <= self.now {
            // The mesh never returns a past wake-up; a due one between ticks means a tick
            // is pending at this very instant. Right after a tick it would be a mesh bug:
            // defer it rather than spin (counted, so a regression shows).
            t = if ticked {
                self.d.stale_wakeups += 1;
                self.now + self.cfg.tick_floor_ms.max(1) * NS_PER_MS
            } else {
                self.now
            };
        }
        let Some(n) = self.node_mut(i) else { return };
        // A pending earlier tick stays; it reschedules when it runs.
        if t < n.next_tick {
            n.next_tick = t;
            self.at(t, Ev::Tick { node: i });
        }
    }

    // ---- events ----

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Publish => self.publish(),
            Ev::Tick { node } => self.tick(node),
            Ev::Join => self.join(),
            Ev::Leave => self.leave(),
            Ev::Deadline { number } => self.judge(number),
            Ev::DialDone { from, to, started } => self.dial_done(from, to, started),
            Ev::DialFailed { from, to } => self.dial_failed(from, to),
            Ev::DialRetry {
                from,
                to,
                started,
                attempt,
            } => self.dial_retry(from, to, started, attempt),
            Ev::Notice { node, peer, conn } => self.notice(node, peer, conn),
            Ev::Close { node, peer, conn } => self.close_conn(node, peer, conn),
            Ev::Control {
                from,
                to,
                conn,
                sent,
                msg,
            } => {
                if self.deliverable(from, to, conn, sent) {
                    let (now, id) = (self.instant(self.now), self.id_of(from));
                    self.mesh_job(to, false, Call::Control(now, id, msg));
                }
            }
            Ev::RequestArrive { tr } => self.request_arrive(tr),
            Ev::Fail { tr, busy } => self.fail(tr, busy),
            Ev::HeaderArrive { tr } => self.header_arrive(tr),
            Ev::StopArrive { tr } => self.end_upload(tr),
            Ev::Pump { tr, seq } => {
                if self
                    .transfers
                    .get(tr)
                    .is_some_and(|t| t.seq == seq && !t.sender_done)
                {
                    self.pump(tr);
                }
            }
            Ev::Deliver { tr } => self.deliver(tr),
            Ev::WanRoom { site, inwards } => self.wan_room(site, inwards),
            Ev::SeedCheck {
                to,
                conn,
                number,
                part,
                landed,
                deadline,
            } => {
                if !self.deliverable(ORIGIN, to, conn, landed) {
                    let at = deadline.max(self.now);
                    self.at(at, Ev::SeedUnconfirmed { to, number, part });
                }
            }
            Ev::SeedUnconfirmed { to, number, part } => {
                self.d.seeds_unconfirmed += 1;
                let (now, id) = (self.instant(self.now), self.id_of(to));
                if let Some(m) = self.mesh(ORIGIN) {
                    m.handle_push_unconfirmed(now, id, number, part);
                }
                self.drain(ORIGIN);
            }
        }
    }

    fn tick(&mut self, i: u32) {
        let now = self.now;
        match self.node_mut(i) {
            Some(n) if n.alive() && n.next_tick == now => n.next_tick = Ns::MAX,
            Some(n) if n.alive() => {
                // An earlier wake-up took its place; it stays queued until popped.
                self.d.superseded_ticks += 1;
                return;
            }
            _ => return,
        }
        self.d.ticks += 1;
        let t = self.instant(now);
        self.mesh_job(i, true, Call::Tick(t));
    }

    // ---- the driver: mesh actions ----

    fn act(&mut self, i: u32, a: Action) {
        match a {
            Action::Send { peer, msg } => self.send(i, peer, msg),
            Action::Request {
                peer,
                number,
                part,
                join,
            } => self.request(i, peer, (number, part), join),
            Action::Cancel { peer, number, part } => self.cancel(i, peer, number, part),
            Action::Push { peer, number, part } => self.push(i, peer, number, part),
            Action::Dial { peer, addr, local } => self.dial(i, peer, addr, local),
            Action::Disconnect { peer, reason } => self.disconnect(i, peer, reason),
        }
    }

    fn report(mut self) -> SimReport {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let live: Vec<_> = self
            .nodes
            .iter()
            .skip(1)
            .filter_map(|n| n.mesh.as_deref())
            .map(Mesh::stats)
            .collect();
        self.d.mesh_missed = live.iter().map(|s| s.missed_deadlines).sum();
        self.d.mean_partners = if live.is_empty() {
            0.0
        } else {
            live.iter().map(|s| s.partners).sum::<usize>() as f64 / live.len() as f64
        };
        for n in self.nodes.iter().skip(1).filter(|n| n.alive()) {
            let viewers = n.partners.iter().filter(|&&p| p != ORIGIN);
            let open = viewers
                .clone()
                .filter(|&&p| {
                    self.nodes
                        .get(p as usize)
                        .is_some_and(|q| q.nat == crate::NatKind::Open)
                })
                .count();
            if let Some(row) = self.d.partners_by_nat.get_mut(nodes::nat_index(n.nat)) {
                row.0 += 1;
                row.1 += viewers.count() as u64;
                row.2 += open as u64;
            }
            if let Some(up) = self.d.upload_bps_by_nat.get_mut(nodes::nat_index(n.nat)) {
                *up += n.cap_bps;
            }
        }
        let site_viewers: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, n)| n.alive() && self.site_of(*i as u32) != sites::NO_SITE)
            .map(|(i, n)| {
                let lan = n
                    .partners
                    .iter()
                    .filter(|&&p| self.same_site(i as u32, p))
                    .count();
                let viewers = n.partners.iter().filter(|&&p| p != ORIGIN).count();
                (viewers, lan)
            })
            .collect();
        if !site_viewers.is_empty() {
            let k = site_viewers.len() as f64;
            self.d.site_mean_partners = site_viewers.iter().map(|v| v.0).sum::<usize>() as f64 / k;
            self.d.site_mean_lan_partners =
                site_viewers.iter().map(|v| v.1).sum::<usize>() as f64 / k;
        }
        (self.d.site_wan_copies, self.d.site_wan_copies_max) = self.site_copies();
        (self.d.site_wan_wire_copies, self.d.site_wan_wire_copies_max) = self.site_wire_copies();
        let site_wan_copies = (!self.sites.is_empty()).then_some(self.d.site_wan_copies);
        let site_wan_wire_copies = (!self.sites.is_empty()).then_some(self.d.site_wan_wire_copies);
        let offload = if self.delivered_bytes == 0 {
            0.0
        } else {
            1.0 - ratio(self.origin_bytes, self.delivered_bytes)
        };
        SimReport {
            viewers: self.cfg.peers,
            seconds: self.cfg.seconds,
            bitrate_bps: self.cfg.bitrate_bps,
            segment_ms: self.cfg.segment_ms,
            stream_bytes: self.stream_bytes,
            origin_bytes: self.origin_bytes,
            origin_copies: ratio(self.origin_bytes, self.stream_bytes),
            delivered_bytes: self.delivered_bytes,
            offload,
            continuity: ratio(self.d.on_time, self.d.judged),
            latency_ms: LatencyMs {
                p50: self.latency.percentile(0.50),
                p95: self.latency.percentile(0.95),
                p99: self.latency.percentile(0.99),
                max: self.latency.max(),
            },
            join_ms: JoinMs {
                p50: metrics::percentile(&mut self.joins, 0.50),
                p99: metrics::percentile(&mut self.joins, 0.99),
            },
            control_overhead: ratio(self.d.control_bytes, self.d.media_sent_bytes),
            site_wan_copies,
            site_wan_wire_copies,
            cpu_s: 0.0,
            peak_rss_mb: 0.0,
            details: self.d,
        }
    }
}
