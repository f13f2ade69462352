//! The event loop: nodes, upload links, connections and transfers, and the driver that turns
//! each mesh's actions into scheduled events the way `net` turns them into QUIC traffic.
//! The model is described in the parent module's docs.

mod links;
#[cfg(test)]
mod tests;
mod transfers;
mod worker;

use crate::link::Link;
use crate::metrics::{self, Histogram};
use crate::queue::EventQueue;
use crate::{JoinMs, LatencyMs, LinkModel, SimConfig, SimDetails, SimReport};
use links::{Conns, LinkRow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rtrb::RingBuffer;
use starling::mesh::{Action, Mesh, MeshConfig};
use starling::node::{Assemblies, Uploads};
use starling::stream::{part_pieces, NodeId, ALL_PARTS, PARTS};
use starling::wire::{self, Control, Reply, Role};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use transfers::{Slab, TRef, Transfer};
use worker::{worker, Call, Pending, Pipe, COLLECT_EVERY, MAX_PENDING};

/// Virtual time: nanoseconds since the run's base instant.
type Ns = u64;

const NS_PER_SEC: f64 = 1e9;
const NS_PER_MS: u64 = 1_000_000;
/// Segments each node keeps to serve (the broadcaster's store capacity).
const STORE: u64 = 64;
/// No supplier yet (an [`Assembly`]'s `first_from`).
const NOBODY: u32 = u32::MAX;
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
    /// acknowledged if `acked` (the ack is back by `deadline`, now) and `to` took it on
    /// `conn`; otherwise reported at `deadline`, as `net`'s `push` waits.
    SeedCheck {
        to: u32,
        conn: u64,
        number: u64,
        part: u8,
        landed: Ns,
        acked: bool,
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

#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    /// None once the viewer has left, or while the worker thread runs its calls.
    mesh: Option<Box<Mesh>>,
    /// Still in the swarm (false once it has left).
    present: bool,
    uploads: bool,
    joined: Ns,
    playable: bool,
    /// Ring of the last [`STORE`] segments held: (number, arrival); `u64::MAX` = empty.
    held: Vec<(u64, Ns)>,
    newest: Option<u64>,
    /// Lowest segment it ever accepted (for the playlist's first listing).
    lowest: Option<u64>,
    link: Link<TRef>,
    /// Upload cap in bits/s, as `net`'s limiter reports it.
    cap_bps: u64,
    /// Upload admission, as the product's node keeps it: slots in use, the stream's
    /// bitrate from headers, the parts the origin seeded here.
    upload: Uploads,
    /// When this node's pending tick is due (`Ns::MAX`: none pending).
    next_tick: Ns,
    /// Nodes it has a connection with (open, or closed by the other side unnoticed).
    partners: Vec<u32>,
    /// Its links (see [`Sim::links`]) when there are more than a [`LinkRow`] holds, and
    /// each one's connection slot; empty otherwise.
    spilled_links: Vec<u32>,
    spilled_conns: Vec<u32>,
    /// Transfers it receives (asked for, or arriving) and has not finished with.
    downs: Vec<TRef>,
    /// Transfers it sends and has not finished.
    ups: Vec<TRef>,
    /// Segments being assembled here, bounded as the product's node bounds them.
    assembling: Assemblies<Assembly>,
    /// Position in the live-viewer list.
    live_pos: usize,
    /// Events this node scheduled (the low bits of their ordering key).
    seq: u64,
    /// Uploads it started (their order on its FIFO link).
    uploads_started: u64,
    /// Its draws of the loss model, apart from every other node's. Boxed: its 300-odd
    /// bytes of block buffer would be most of the node's lines, which the loop prefetches
    /// for every event, and a run without loss never reads it.
    rng: Box<ChaCha8Rng>,
}

impl Node {
    fn holds(&self, number: u64) -> bool {
        self.held
            .get((number % STORE) as usize)
            .is_some_and(|(n, _)| *n == number)
    }

    fn store(&mut self, number: u64, at: Ns) {
        if let Some(slot) = self.held.get_mut((number % STORE) as usize) {
            *slot = (number, at);
        }
        self.newest = self.newest.max(Some(number));
        // Bounded by the window: what is too old to be wanted is given up.
        if let Some(k) = self.newest {
            self.assembling.keep_window(k);
        }
    }

    fn alive(&self) -> bool {
        self.present
    }

    /// Upload slots for a plain request: cap / bitrate in [1, 8]; 8 while the bitrate is
    /// unknown.
    #[cfg(test)]
    fn slots(&self) -> u64 {
        starling::node::upload::serving_slots(
            Some(self.cap_bps),
            self.upload.stream_bps(),
            false,
            false,
        )
    }

    fn assembly(&self, number: u64) -> Option<&Assembly> {
        self.assembling.get(number)
    }

    fn assembly_mut(&mut self, number: u64) -> Option<&mut Assembly> {
        self.assembling.get_mut(number)
    }

    /// The transfer bringing part `part` of `number` here, which a relay of it follows.
    fn partial(&self, number: u64, part: u8) -> Option<TRef> {
        self.assembly(number)
            .and_then(|a| a.arriving.get(usize::from(part)).copied().flatten())
    }

    /// Parts of `number` complete here.
    fn got(&self, number: u64) -> u32 {
        if self.holds(number) {
            return ALL_PARTS;
        }
        self.assembly(number).map_or(0, |a| a.got)
    }
}

/// What the simulator keeps for a segment in the node's [`Assemblies`]: it lives from the
/// first frame with the header until the segment is whole or given up (so later requests
/// for its other parts ask for no header), as `net`'s assembly of verified pieces does.
#[derive(Debug, Clone, Copy)]
struct Assembly {
    /// Parts complete here.
    got: u32,
    /// Per part, the transfer bringing it that relays of it follow (`net`'s relays read
    /// the pieces whichever transfer lands them; the sim follows one, see `finish_download`).
    arriving: [Option<TRef>; PARTS],
    /// Who sent the first part kept; [`NOBODY`] before.
    first_from: u32,
    /// A part kept came from someone other than `first_from`.
    several: bool,
}

impl Assembly {
    fn new() -> Assembly {
        Assembly {
            got: 0,
            arriving: [None; PARTS],
            first_from: NOBODY,
            several: false,
        }
    }
}

fn node_id(i: u32) -> NodeId {
    let mut seed = b"starling-sim-node".to_vec();
    seed.extend_from_slice(&i.to_le_bytes());
    let mut b = *blake3::hash(&seed).as_bytes();
    // The index rides in the last bytes so a peer id maps back to its node in O(1);
    // the hashed prefix keeps the mesh's id order unrelated to join order.
    b[28..].copy_from_slice(&i.to_be_bytes());
    NodeId(b)
}

fn node_addr(i: u32) -> SocketAddr {
    let [_, x, y, z] = (i + 1).to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, x, y, z), 7000))
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
            Ev::Pump { .. } => &mut k.pump,
            Ev::StopArrive { .. } => &mut k.stop,
            Ev::Tick { .. } => &mut k.tick,
            Ev::DialDone { .. } | Ev::DialFailed { .. } | Ev::Notice { .. } | Ev::Close { .. } => {
                &mut k.connection
            }
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
    /// departures, judging, publishing) and the origin's (thousands of partners: near
    /// everyone), and dials completing (two meshes at once).
    fn is_barrier(&self, ev: &Ev, owner: u32) -> bool {
        owner == COORDINATOR || owner == ORIGIN || matches!(ev, Ev::DialDone { .. })
    }

    /// Whether the event at `at` owned by `owner` may run now, before the actions of the
    /// worker's jobs (which run as of their own, earlier times) and before `blockers`, the
    /// earlier events passed over: only if it commutes with each of them:
    /// - it is earlier than one least latency after the earliest job's time: whatever a
    ///   job's actions (or a passed-over event) schedule at another node comes at least
    ///   that late, so after it in any case;
    /// - it touches none of what a job's actions touch. A viewer's event touches that node,
    ///   its connections and the transfers it sends or receives, so two viewers' events
    ///   touch nothing in common unless they are linked (one is the other's partner, or was
    ///   until a close not yet noticed). (Pushes, which reach
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
            Ev::Join | Ev::Leave | Ev::Deadline { .. } => COORDINATOR,
            Ev::Tick { node } | Ev::Notice { node, .. } | Ev::Close { node, .. } => *node,
            Ev::DialDone { from, .. } | Ev::DialFailed { from, .. } => *from,
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

    fn instant(&self, t: Ns) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn ns_of(&self, t: Instant) -> Ns {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(Ns::MAX)
    }

    fn churn_gap(&mut self) -> Ns {
        let per_sec = self.cfg.churn_pct_per_min / 100.0 * self.cfg.peers as f64 / 60.0;
        let u: f64 = self.rng.gen();
        let secs = -(1.0 - u).ln() / per_sec;
        (secs * NS_PER_SEC).min(1e18) as Ns
    }

    fn resolve(&self, id: &NodeId) -> Option<u32> {
        let mut idx = [0u8; 4];
        idx.copy_from_slice(&id.0[28..]);
        let i = u32::from_be_bytes(idx);
        self.ids.get(i as usize).filter(|x| *x == id).map(|_| i)
    }

    fn mesh(&mut self, i: u32) -> Option<&mut Mesh> {
        self.nodes
            .get_mut(i as usize)
            .and_then(|n| n.mesh.as_deref_mut())
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(i as usize)
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut Node> {
        self.nodes.get_mut(i as usize)
    }

    fn alive(&self, i: u32) -> bool {
        self.node(i).is_some_and(Node::alive)
    }

    fn id_of(&self, i: u32) -> NodeId {
        self.ids.get(i as usize).copied().unwrap_or(NodeId([0; 32]))
    }

    /// Runs a node's pending actions, then makes sure it is ticked at its next timeout.
    fn drain(&mut self, i: u32) {
        self.drain_after(i, false);
    }

    fn drain_after(&mut self, i: u32, ticked: bool) {
        while let Some(a) = self.mesh(i).and_then(Mesh::poll_action) {
            self.act(i, a);
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
            Ev::SeedCheck {
                to,
                conn,
                number,
                part,
                landed,
                acked,
                deadline,
            } => {
                if !(acked && self.deliverable(ORIGIN, to, conn, landed)) {
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

    fn spawn_origin(&mut self) {
        let mut cfg = MeshConfig::broadcaster(self.origin_id, self.cfg.segment());
        if let Some(p) = self.cfg.origin_partners {
            cfg.max_partners = p;
        }
        let bps = self.cfg.origin_upload_bps;
        let seed = self.rng.gen();
        self.spawn(cfg, bps, seed);
    }

    fn spawn(&mut self, mut cfg: MeshConfig, bps: u64, seed: u64) -> u32 {
        let i = self.nodes.len() as u32;
        let access = (self.cfg.rtt_ms * self.rng.gen_range(0.5..1.5) * 1e6) as Ns;
        // The one-way latency between two nodes is a quarter of their two access RTTs.
        self.lookahead = self.lookahead.min(access / 2);
        self.marks.push((0, 0));
        self.link_rows.push(LinkRow::default());
        let uploads = i == ORIGIN || bps > 0;
        cfg.uploads = uploads;
        let id = node_id(i);
        self.ids.push(id);
        self.access.push(access);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(u64::from(i));
        let mesh = Mesh::new(cfg, id, seed, self.instant(self.now));
        // The limiter works in whole bytes per second and reports the cap back in bits.
        let rate = bps / 8;
        self.nodes.push(Node {
            addr: node_addr(i),
            mesh: Some(Box::new(mesh)),
            present: true,
            uploads,
            joined: self.now,
            playable: false,
            held: vec![(u64::MAX, 0); STORE as usize],
            newest: None,
            lowest: None,
            // The origin's seeding pushes go before the requests it serves (`net`'s
            // `UploadClass`): its link takes turns, pushes first (see `start_upload`).
            link: Link::new(
                if i == ORIGIN {
                    LinkModel::Fifo
                } else {
                    self.cfg.link
                },
                rate as f64,
            ),
            cap_bps: rate * 8,
            upload: Uploads::default(),
            next_tick: Ns::MAX,
            partners: Vec::new(),
            spilled_links: Vec::new(),
            spilled_conns: Vec::new(),
            downs: Vec::new(),
            ups: Vec::new(),
            assembling: Assemblies::default(),
            live_pos: usize::MAX,
            seq: 0,
            uploads_started: 0,
            rng: Box::new(rng),
        });
        self.drain(i);
        i
    }

    fn join(&mut self) {
        let bitrate = self.cfg.bitrate_bps as f64;
        let bps = if self.cfg.upload_mix.is_empty() {
            self.cfg.viewer_upload_bps
        } else {
            let total: f64 = self.cfg.upload_mix.iter().map(|c| c.share).sum();
            let mut pick = self.rng.gen::<f64>() * total;
            let mut chosen = self.cfg.upload_mix.last().map_or(0.0, |c| c.multiple);
            for c in &self.cfg.upload_mix {
                if pick < c.share {
                    chosen = c.multiple;
                    break;
                }
                pick -= c.share;
            }
            (chosen * bitrate).round() as u64
        };
        let mut cfg =
            MeshConfig::viewer(self.origin_id, self.cfg.segment(), self.cfg.delay_segments);
        cfg.uploads = bps > 0;
        let seed = self.rng.gen();
        let i = self.spawn(cfg, bps, seed);
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.live_pos = self.live.len();
        }
        self.live.push(i);
        self.d.viewers_started += 1;
    }

    fn leave(&mut self) {
        let next = self.churn_gap();
        self.at(self.now.saturating_add(next), Ev::Leave);
        if self.live.is_empty() {
            return;
        }
        let pos = self.rng.gen_range(0..self.live.len());
        let x = self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            if let Some(n) = self.node_mut(moved) {
                n.live_pos = pos;
            }
        }
        self.vanish(x);
        // Churn keeps the audience size: a newcomer replaces the leaver.
        self.join();
    }

    /// Viewer `x` leaves abruptly (it crashed, or lost its network).
    fn vanish(&mut self, x: u32) {
        self.d.viewers_left += 1;
        let Some(n) = self.nodes.get_mut(x as usize) else {
            return;
        };
        n.mesh = None;
        n.present = false;
        n.next_tick = Ns::MAX;
        let partners = n.partners.clone();
        let ups = std::mem::take(&mut n.ups);
        let downs = std::mem::take(&mut n.downs);
        // It vanishes: nothing more leaves it. Its senders do not know and go on sending
        // (their limiters are charged, as net's are) until they notice. Its receivers
        // give up on a part once it has been silent for `PIECE_SILENCE`, as net's do
        // (honest gaps here are far shorter, so only a vanished sender's are modelled).
        let silence = starling::node::PIECE_SILENCE.as_nanos() as Ns;
        for tr in ups {
            if let Some(t) = self.transfers.get(tr).filter(|t| !t.receiver_done) {
                let at = self.now.max(t.landed()) + silence;
                self.at(at, Ev::Fail { tr, busy: false });
            }
            self.end_upload(tr);
        }
        for tr in downs {
            self.finish_download(tr, false);
        }
        let detect = self.cfg.leave_detect_ms * NS_PER_MS;
        let now = self.now;
        for p in partners {
            let Some(c) = self.conn_mut(x, p) else {
                continue;
            };
            if c.closed.is_none() {
                c.closed = Some((x, now));
                let conn = c.id;
                self.at(
                    self.now + detect,
                    Ev::Notice {
                        node: p,
                        peer: x,
                        conn,
                    },
                );
            }
        }
    }

    fn publish(&mut self) {
        let number = self.publish_at.len() as u64;
        self.publish_at.push(self.now);
        self.stream_bytes += self.seg_bytes;
        self.d.segments += 1;
        let now = self.now;
        let bps = self.seg_bytes * 8000 / self.cfg.segment_ms.max(1);
        if let Some(o) = self.node_mut(ORIGIN) {
            o.store(number, now);
            // As `net` does at publish: the origin sizes its upload slots by the bitrate.
            o.upload.note_bitrate(bps);
        }
        let t = self.instant(now);
        if let Some(m) = self.mesh(ORIGIN) {
            m.handle_publish(t, number);
        }
        self.drain(ORIGIN);
        self.at(
            now + self.cfg.delay_segments * self.seg_ns,
            Ev::Deadline { number },
        );
        if number + 1 < self.segments {
            self.at(now + self.seg_ns, Ev::Publish);
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

    /// Continuity for segment `number`, at its deadline.
    fn judge(&mut self, number: u64) {
        let Some(&published) = self.publish_at.get(number as usize) else {
            return;
        };
        let allowance = self.cfg.delay_segments * self.seg_ns;
        for n in self.nodes.iter().skip(1) {
            if n.alive() && n.joined + allowance <= published {
                self.d.judged += 1;
                if n.holds(number) {
                    self.d.on_time += 1;
                }
            }
        }
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
            Action::Dial { peer, addr } => self.dial(i, peer, addr),
            Action::Disconnect { peer, reason } => self.disconnect(i, peer, reason),
        }
    }

    /// Viewer `r` now holds `number`: store it and take the measurements.
    fn accept(&mut self, r: u32, number: u64) {
        let now = self.now;
        self.delivered_bytes += self.seg_bytes;
        let allowance = self.cfg.delay_segments * self.seg_ns;
        let delay = self.cfg.delay_segments;
        let Some(n) = self.nodes.get_mut(r as usize) else {
            return;
        };
        if let Some(&p) = self.publish_at.get(number as usize) {
            // Live-edge latency: the segments continuity judges, not the catch-up at join.
            if n.joined + allowance <= p {
                self.latency.record((now - p) as f64 / NS_PER_MS as f64);
            }
        }
        n.store(number, now);
        n.lowest = n.lowest.min(Some(number)).or(Some(number));
        if n.playable {
            return;
        }
        // `Store::playlist_at` lists something once a held segment is at or before the live
        // edge, `delay` behind the newest known to exist (segment 0 while fewer exist).
        let live = n.mesh.as_deref().and_then(Mesh::newest);
        let edge = n.newest.max(live).map_or(0, |k| k.saturating_sub(delay));
        if n.lowest.is_some_and(|l| l <= edge) {
            n.playable = true;
            let ms = (now - n.joined) as f64 / NS_PER_MS as f64;
            self.joins.push(ms);
            self.d.viewers_playable += 1;
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
            cpu_s: 0.0,
            peak_rss_mb: 0.0,
            details: self.d,
        }
    }
}
