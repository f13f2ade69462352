//! The event loop: nodes, upload links, connections and transfers, and the driver that turns
//! each mesh's actions into scheduled events the way `net.rs` turns them into QUIC traffic.
//! The model is described in the parent module's docs.

use super::link::Link;
use super::metrics::{self, Histogram};
use super::{JoinMs, LatencyMs, SimConfig, SimDetails, SimReport};
use crate::mesh::{Action, Mesh, MeshConfig};
use crate::stream::NodeId;
use crate::wire::{self, Control, Reply, Role};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Virtual time: nanoseconds since the run's base instant.
type Ns = u64;

const NS_PER_SEC: f64 = 1e9;
const NS_PER_MS: u64 = 1_000_000;
/// Segments each node keeps to serve (the broadcaster's store capacity).
const STORE: u64 = 64;
/// `net.rs`'s `BUSY_BACKLOG`: above this much queued upload a request is answered `Busy`.
const BUSY_BACKLOG: Ns = 1_500_000_000;
/// `net.rs`'s `KEEP_BEHIND`: a segment this far behind the newest held is unwanted.
const KEEP_BEHIND: u64 = 64;
/// Connection caps `broadcaster.rs` and `viewer.rs` give `net.rs`.
const ORIGIN_MAX_CONNECTIONS: usize = 4096;
const VIEWER_MAX_CONNECTIONS: usize = 64;
/// Payload per packet, for the loss model.
const PACKET_BYTES: u64 = 1200;
/// The broadcaster's index.
const ORIGIN: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TRef {
    idx: u32,
    gen: u32,
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
    Control {
        from: u32,
        to: u32,
        conn: u64,
        sent: Ns,
        msg: Control,
    },
    RequestArrive {
        tr: TRef,
    },
    ReplyFail {
        tr: TRef,
        busy: bool,
        sent: Ns,
    },
    CancelArrive {
        tr: TRef,
    },
    LinkDone {
        node: u32,
        gen: u64,
    },
    Deliver {
        tr: TRef,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Push,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Request on its way to the holder.
    Asked,
    /// On the holder's upload link.
    Sending,
    /// Last byte sent; landing after the latency.
    Flying,
    /// Answered `Busy`/`Unavailable`; the answer is on its way.
    Replied,
    Free,
}

/// One segment on its way from `from` to `to`, pulled or pushed.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    gen: u32,
    stage: Stage,
    kind: Kind,
    from: u32,
    to: u32,
    number: u64,
    conn: u64,
    asked: Ns,
    sent_done: Ns,
    /// The requester gave up (cancel, or the connection ended): whatever lands is ignored.
    aborted: bool,
}

/// Transfers by generational index, so a stale event cannot touch a reused slot.
#[derive(Debug, Default)]
struct Slab {
    items: Vec<Transfer>,
    free: Vec<u32>,
}

impl Slab {
    fn alloc(&mut self, t: Transfer) -> TRef {
        if let Some(idx) = self.free.pop() {
            if let Some(slot) = self.items.get_mut(idx as usize) {
                let gen = slot.gen;
                *slot = Transfer { gen, ..t };
                return TRef { idx, gen };
            }
        }
        let idx = self.items.len() as u32;
        self.items.push(Transfer { gen: 0, ..t });
        TRef { idx, gen: 0 }
    }

    fn get(&self, r: TRef) -> Option<Transfer> {
        self.items
            .get(r.idx as usize)
            .filter(|t| t.gen == r.gen && t.stage != Stage::Free)
            .copied()
    }

    fn get_mut(&mut self, r: TRef) -> Option<&mut Transfer> {
        self.items
            .get_mut(r.idx as usize)
            .filter(|t| t.gen == r.gen && t.stage != Stage::Free)
    }

    fn release(&mut self, r: TRef) {
        if let Some(t) = self.get_mut(r) {
            t.gen = t.gen.wrapping_add(1);
            t.stage = Stage::Free;
            self.free.push(r.idx);
        }
    }
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    addr: SocketAddr,
    /// None once the viewer has left.
    mesh: Option<Mesh>,
    uploads: bool,
    /// This node's access RTT; the RTT between two nodes is the mean of theirs.
    access: Ns,
    joined: Ns,
    playable: bool,
    /// Ring of the last [`STORE`] segments held: (number, arrival); `u64::MAX` = empty.
    held: Vec<(u64, Ns)>,
    newest: Option<u64>,
    link: Link<TRef>,
    /// When this node's pending tick is due (`Ns::MAX`: none pending).
    next_tick: Ns,
    /// Nodes it has a connection with (open, or closed by the other side unnoticed).
    partners: Vec<u32>,
    /// Requests it is waiting on: (holder, number, transfer).
    outstanding: Vec<(u32, u64, TRef)>,
    /// Position in the live-viewer list.
    live_pos: usize,
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
    }

    fn alive(&self) -> bool {
        self.mesh.is_some()
    }
}

#[derive(Debug)]
struct Conn {
    id: u64,
    /// Closed by this side at this time; the other side has not noticed yet.
    closed: Option<(u32, Ns)>,
    /// When the last control message each way lands (index: sender is the larger id).
    ctl_free: [Ns; 2],
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
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
    queue: BinaryHeap<Reverse<(Ns, u64, u32)>>,
    slots: Vec<Option<Ev>>,
    free_slots: Vec<u32>,
    seq: u64,
    nodes: Vec<Node>,
    /// Live viewers, for picking who leaves.
    live: Vec<u32>,
    conns: BTreeMap<(u32, u32), Conn>,
    next_conn: u64,
    transfers: Slab,
    publish_at: Vec<Ns>,
    segments: u64,
    seg_ns: Ns,
    seg_bytes: u64,
    /// Piece size `net.rs` sends (and takes upload tokens) in.
    piece_bytes: u64,
    origin_id: NodeId,
    loss: f64,
    reply_header_bytes: u64,
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
        let origin_id = node_id(ORIGIN);
        // Size a real signed header once: every reply carries one.
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let body = vec![0u8; seg_bytes as usize];
        let reply_header_bytes = crate::stream::sign_segment(
            &key,
            segments,
            cfg.segment_ms as u32,
            1_700_000_000_000,
            false,
            &body,
        )
        .map_or(0, |h| wire::encode(&Reply::Segment(h)).len() as u64);
        let hello_bytes = wire::encode(&Control::Hello {
            version: wire::PROTOCOL_VERSION,
            stream: origin_id,
            role: Role::Viewer,
            uploads: true,
        })
        .len() as u64;
        Sim {
            base: Instant::now(),
            now: 0,
            end: (segments + cfg.delay_segments) * seg_ns,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            nodes: Vec::with_capacity(cfg.peers + 1),
            live: Vec::with_capacity(cfg.peers),
            conns: BTreeMap::new(),
            next_conn: 0,
            transfers: Slab::default(),
            publish_at: Vec::with_capacity(segments as usize),
            segments,
            seg_ns,
            seg_bytes,
            piece_bytes: u64::from(crate::stream::piece_size_for(seg_bytes as u32)),
            origin_id,
            loss: cfg.loss_pct / 100.0,
            reply_header_bytes,
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
        self.spawn_origin();
        if self.segments > 0 {
            self.at(self.seg_ns, Ev::Publish);
        }
        let window = self.cfg.join_window_ms * NS_PER_MS;
        for _ in 0..self.cfg.peers {
            let t = self.rng.gen_range(0..=window);
            self.at(t, Ev::Join);
        }
        if self.cfg.churn_pct_per_min > 0.0 && self.cfg.peers > 0 {
            let gap = self.churn_gap();
            self.at(window.saturating_add(gap), Ev::Leave);
        }
        while let Some(Reverse((at, _, slot))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            let Some(ev) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                continue;
            };
            self.free_slots.push(slot);
            self.now = at;
            self.d.events += 1;
            self.dispatch(ev);
        }
        self.report()
    }

    // ---- scheduling ----

    fn at(&mut self, at: Ns, ev: Ev) {
        self.seq += 1;
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
        self.queue.push(Reverse((at, self.seq, slot)));
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

    fn rtt(&self, a: u32, b: u32) -> Ns {
        let acc = |i: u32| self.nodes.get(i as usize).map_or(0, |n| n.access);
        (acc(a) + acc(b)) / 2
    }

    fn one_way(&self, a: u32, b: u32) -> Ns {
        self.rtt(a, b) / 2
    }

    /// One-way latency plus, with the loss model's probability, a retransmission RTT.
    fn flight(&mut self, a: u32, b: u32, bytes: u64) -> Ns {
        let mut t = self.one_way(a, b);
        if self.loss > 0.0 {
            let packets = bytes.div_ceil(PACKET_BYTES).max(1);
            let p = 1.0 - (1.0 - self.loss).powf(packets as f64);
            if self.rng.gen::<f64>() < p {
                t += self.rtt(a, b);
            }
        }
        t
    }

    fn resolve(&self, id: &NodeId) -> Option<u32> {
        let mut idx = [0u8; 4];
        idx.copy_from_slice(&id.0[28..]);
        let i = u32::from_be_bytes(idx);
        self.nodes
            .get(i as usize)
            .filter(|n| n.id == *id)
            .map(|_| i)
    }

    fn mesh(&mut self, i: u32) -> Option<&mut Mesh> {
        self.nodes.get_mut(i as usize).and_then(|n| n.mesh.as_mut())
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
        let mut t = self.ns_of(wake);
        if t <= self.now {
            if ticked {
                self.d.stale_wakeups += 1;
            }
            t = self.now + self.cfg.tick_floor_ms.max(1) * NS_PER_MS;
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
            Ev::Control {
                from,
                to,
                conn,
                sent,
                msg,
            } => {
                if self.deliverable(from, to, conn, sent) {
                    let (now, id) = (self.instant(self.now), self.nodes[from as usize].id);
                    if let Some(m) = self.mesh(to) {
                        m.handle_control(now, id, msg);
                    }
                    self.drain(to);
                }
            }
            Ev::RequestArrive { tr } => self.request_arrive(tr),
            Ev::ReplyFail { tr, busy, sent } => self.reply_fail(tr, busy, sent),
            Ev::CancelArrive { tr } => self.cancel_arrive(tr),
            Ev::LinkDone { node, gen } => self.link_done(node, gen),
            Ev::Deliver { tr } => self.deliver(tr),
        }
    }

    fn spawn_origin(&mut self) {
        let cfg = MeshConfig::broadcaster(self.origin_id, self.cfg.segment());
        let rate = self.cfg.origin_upload_bps as f64 / 8.0;
        let seed = self.rng.gen();
        self.spawn(cfg, rate, seed);
    }

    fn spawn(&mut self, mut cfg: MeshConfig, rate: f64, seed: u64) -> u32 {
        let i = self.nodes.len() as u32;
        let access = (self.cfg.rtt_ms * self.rng.gen_range(0.5..1.5) * 1e6) as Ns;
        let uploads = i == ORIGIN || rate > 0.0;
        cfg.uploads = uploads;
        let id = node_id(i);
        let mesh = Mesh::new(cfg, id, seed, self.instant(self.now));
        self.nodes.push(Node {
            id,
            addr: node_addr(i),
            mesh: Some(mesh),
            uploads,
            access,
            joined: self.now,
            playable: false,
            held: vec![(u64::MAX, 0); STORE as usize],
            newest: None,
            link: Link::new(self.cfg.link, rate, self.piece_bytes),
            next_tick: Ns::MAX,
            partners: Vec::new(),
            outstanding: Vec::new(),
            live_pos: usize::MAX,
        });
        self.drain(i);
        i
    }

    fn join(&mut self) {
        let bitrate = self.cfg.bitrate_bps as f64;
        let bps = if self.cfg.upload_mix.is_empty() {
            self.cfg.viewer_upload_bps as f64
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
            chosen * bitrate
        };
        let mut cfg =
            MeshConfig::viewer(self.origin_id, self.cfg.segment(), self.cfg.delay_segments);
        cfg.uploads = bps > 0.0;
        let seed = self.rng.gen();
        let i = self.spawn(cfg, bps / 8.0, seed);
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
        self.d.viewers_left += 1;
        let Some(n) = self.nodes.get_mut(x as usize) else {
            return;
        };
        n.mesh = None;
        n.next_tick = Ns::MAX;
        let partners = std::mem::take(&mut n.partners);
        let outstanding = std::mem::take(&mut n.outstanding);
        let on_link = n.link.clear();
        for (_, _, tr) in outstanding {
            if let Some(t) = self.transfers.get_mut(tr) {
                t.aborted = true;
            }
        }
        for tr in on_link {
            self.transfers.release(tr);
        }
        let detect = self.cfg.leave_detect_ms * NS_PER_MS;
        for &p in &partners {
            // A vanished receiver acknowledges nothing: its streams stop taking bandwidth.
            self.drop_to(p, x);
        }
        for p in partners {
            let Some(c) = self.conns.get_mut(&pair(x, p)) else {
                continue;
            };
            if c.closed.is_none() {
                c.closed = Some((x, self.now));
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
        // Churn keeps the audience size: a newcomer replaces the leaver.
        self.join();
    }

    fn publish(&mut self) {
        let number = self.publish_at.len() as u64;
        self.publish_at.push(self.now);
        self.stream_bytes += self.seg_bytes;
        self.d.segments += 1;
        let now = self.now;
        if let Some(o) = self.node_mut(ORIGIN) {
            o.store(number, now);
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
            _ => return,
        }
        self.d.ticks += 1;
        let t = self.instant(now);
        if let Some(m) = self.mesh(i) {
            m.handle_tick(t);
        }
        self.drain_after(i, true);
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

    // ---- connections ----

    /// Whether a message `from` sent at `sent` on `conn` reaches `to` now.
    fn deliverable(&self, from: u32, to: u32, conn: u64, sent: Ns) -> bool {
        if !self.alive(to) {
            return false;
        }
        match self.conns.get(&pair(from, to)) {
            Some(c) if c.id == conn => match c.closed {
                None => true,
                // Like quinn's close: what was sent before closing still lands; nothing after.
                Some((closer, at)) => closer == from && sent < at,
            },
            _ => false,
        }
    }

    /// The connection `from` may send on to `to`: open, or closed by `to` unnoticed.
    fn usable(&self, from: u32, to: u32) -> Option<u64> {
        self.conns
            .get(&pair(from, to))
            .filter(|c| c.closed.is_none_or(|(closer, _)| closer != from))
            .map(|c| c.id)
    }

    fn dial(&mut self, i: u32, peer: NodeId, addr: Option<SocketAddr>) {
        self.d.dials += 1;
        let target = self.resolve(&peer).filter(|&j| match addr {
            Some(a) => self.node(j).is_some_and(|n| n.addr == a),
            // `None` dials the ticket's addresses: only the origin answers there.
            None => j == ORIGIN,
        });
        match target {
            Some(j) if self.alive(j) && j != i => {
                let rtt = self.rtt(i, j);
                self.at(
                    self.now + rtt,
                    Ev::DialDone {
                        from: i,
                        to: j,
                        started: self.now,
                    },
                );
            }
            _ => {
                let to = target.unwrap_or(u32::MAX);
                self.at(
                    self.now + self.cfg.dial_timeout_ms * NS_PER_MS,
                    Ev::DialFailed { from: i, to },
                );
            }
        }
    }

    fn dial_done(&mut self, a: u32, b: u32, started: Ns) {
        if !self.alive(a) {
            return;
        }
        if !self.alive(b) {
            let t = (started + self.cfg.dial_timeout_ms * NS_PER_MS).max(self.now);
            self.at(t, Ev::DialFailed { from: a, to: b });
            return;
        }
        match self.conns.get(&pair(a, b)) {
            // Both dialled at once; the other connection already told both meshes.
            Some(c) if c.closed.is_none() => return,
            Some(_) => return self.dial_failed(a, b),
            None => {}
        }
        let cap = if b == ORIGIN {
            ORIGIN_MAX_CONNECTIONS
        } else {
            VIEWER_MAX_CONNECTIONS
        };
        if self.node(b).is_some_and(|n| n.partners.len() >= cap) {
            // net.rs refuses incoming connections at its cap.
            return self.dial_failed(a, b);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            pair(a, b),
            Conn {
                id,
                closed: None,
                ctl_free: [0, 0],
            },
        );
        self.d.control_bytes += 2 * self.hello_bytes;
        let now = self.instant(self.now);
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        let role = |i: u32| {
            if i == ORIGIN {
                Role::Broadcaster
            } else {
                Role::Viewer
            }
        };
        let (ida, addra, upa) = (na.id, na.addr, na.uploads);
        let (idb, addrb, upb) = (nb.id, nb.addr, nb.uploads);
        for (me, other) in [(a, b), (b, a)] {
            if let Some(n) = self.node_mut(me) {
                n.partners.push(other);
            }
        }
        if let Some(m) = self.mesh(a) {
            m.handle_connected(now, idb, addrb, role(b), upb);
        }
        if let Some(m) = self.mesh(b) {
            m.handle_connected(now, ida, addra, role(a), upa);
        }
        self.drain(a);
        self.drain(b);
    }

    fn dial_failed(&mut self, a: u32, b: u32) {
        if !self.alive(a) {
            return;
        }
        self.d.dial_failures += 1;
        let peer = self.node(b).map_or(NodeId([0; 32]), |n| n.id);
        let now = self.instant(self.now);
        if let Some(m) = self.mesh(a) {
            m.handle_dial_failed(now, peer);
        }
        self.drain(a);
    }

    fn disconnect(&mut self, i: u32, peer: NodeId) {
        let Some(j) = self.resolve(&peer) else { return };
        let now = self.now;
        let Some(c) = self.conns.get_mut(&pair(i, j)) else {
            return;
        };
        if c.closed.is_some() {
            return;
        }
        c.closed = Some((i, now));
        let conn = c.id;
        self.forget_partner(i, j);
        self.drop_to(i, j);
        let lat = self.one_way(i, j);
        self.at(
            now + lat,
            Ev::Notice {
                node: j,
                peer: i,
                conn,
            },
        );
    }

    /// Drops `peer` from `i`'s partners and abandons `i`'s requests to it (net.rs aborts them).
    fn forget_partner(&mut self, i: u32, peer: u32) {
        let Some(n) = self.nodes.get_mut(i as usize) else {
            return;
        };
        n.partners.retain(|p| *p != peer);
        let mut dropped = Vec::new();
        n.outstanding.retain(|(p, _, tr)| {
            if *p == peer {
                dropped.push(*tr);
            }
            *p != peer
        });
        for tr in dropped {
            if let Some(t) = self.transfers.get_mut(tr) {
                t.aborted = true;
            }
        }
    }

    fn notice(&mut self, n: u32, peer: u32, conn: u64) {
        if self.conns.get(&pair(n, peer)).is_some_and(|c| c.id == conn) {
            self.conns.remove(&pair(n, peer));
        }
        // A mesh hears of the end only if it had not closed the connection itself.
        let listed = self
            .node(n)
            .is_some_and(|x| x.alive() && x.partners.contains(&peer));
        if !listed {
            return;
        }
        self.forget_partner(n, peer);
        self.drop_to(n, peer);
        let (now, id) = (self.instant(self.now), self.nodes[peer as usize].id);
        if let Some(m) = self.mesh(n) {
            m.handle_disconnected(now, id);
        }
        self.drain(n);
    }

    // ---- the driver: mesh actions ----

    fn act(&mut self, i: u32, a: Action) {
        match a {
            Action::Send { peer, msg } => self.send(i, peer, msg),
            Action::Request { peer, number } => self.request(i, peer, number),
            Action::Cancel { peer, number } => self.cancel(i, peer, number),
            Action::Push { peer, number } => self.push(i, peer, number),
            Action::Dial { peer, addr } => self.dial(i, peer, addr),
            Action::Disconnect { peer, .. } => self.disconnect(i, peer),
        }
    }

    fn send(&mut self, i: u32, peer: NodeId, msg: Control) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        let bytes = wire::encode(&msg).len() as u64;
        self.d.control_bytes += bytes;
        let arrive = self.now + self.flight(i, j, bytes);
        let Some(c) = self.conns.get_mut(&pair(i, j)) else {
            return;
        };
        // One ordered control stream each way: a delayed message holds back later ones.
        let slot = usize::from(i > j);
        let arrive = arrive.max(c.ctl_free[slot]);
        c.ctl_free[slot] = arrive;
        self.at(
            arrive,
            Ev::Control {
                from: i,
                to: j,
                conn,
                sent: self.now,
                msg,
            },
        );
    }

    fn request(&mut self, i: u32, peer: NodeId, number: u64) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        let bytes = wire::encode(&wire::Request { number }).len() as u64;
        self.d.control_bytes += bytes;
        self.d.requests += 1;
        if j == ORIGIN {
            self.d.origin_requests += 1;
        }
        let tr = self.transfers.alloc(Transfer {
            gen: 0,
            stage: Stage::Asked,
            kind: Kind::Request,
            from: j,
            to: i,
            number,
            conn,
            asked: self.now,
            sent_done: 0,
            aborted: false,
        });
        if let Some(n) = self.node_mut(i) {
            n.outstanding.push((j, number, tr));
        }
        let t = self.now + self.flight(i, j, bytes);
        self.at(t, Ev::RequestArrive { tr });
    }

    fn cancel(&mut self, i: u32, peer: NodeId, number: u64) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(n) = self.node_mut(i) else { return };
        let Some(pos) = n
            .outstanding
            .iter()
            .position(|(p, k, _)| *p == j && *k == number)
        else {
            return;
        };
        let (_, _, tr) = n.outstanding.swap_remove(pos);
        self.d.cancels += 1;
        if let Some(t) = self.transfers.get_mut(tr) {
            t.aborted = true;
        }
        if self.usable(i, j).is_some() {
            let t = self.now + self.flight(i, j, 1);
            self.at(t, Ev::CancelArrive { tr });
        }
    }

    fn push(&mut self, i: u32, peer: NodeId, number: u64) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        let now = self.now;
        let ok = self
            .node(i)
            .is_some_and(|n| n.holds(number) && n.link.backlog(now) < BUSY_BACKLOG);
        if !ok {
            return;
        }
        self.d.pushes += 1;
        let tr = self.transfers.alloc(Transfer {
            gen: 0,
            stage: Stage::Sending,
            kind: Kind::Push,
            from: i,
            to: j,
            number,
            conn,
            asked: now,
            sent_done: 0,
            aborted: false,
        });
        self.enqueue(i, tr);
    }

    // ---- transfers ----

    fn request_arrive(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        if t.stage != Stage::Asked || !self.deliverable(t.to, t.from, t.conn, t.asked) {
            return self.transfers.release(tr);
        }
        let now = self.now;
        let (has, backlog) = self.node(t.from).map_or((false, Ns::MAX), |n| {
            (n.uploads && n.holds(t.number), n.link.backlog(now))
        });
        if !has {
            self.d.unavailable += 1;
            self.reply(tr, t, false);
        } else if backlog > BUSY_BACKLOG {
            self.d.busy += 1;
            self.reply(tr, t, true);
        } else {
            self.enqueue(t.from, tr);
        }
    }

    fn reply(&mut self, tr: TRef, t: Transfer, busy: bool) {
        let bytes = if busy {
            self.busy_bytes
        } else {
            self.unavailable_bytes
        };
        self.d.control_bytes += bytes;
        if let Some(x) = self.transfers.get_mut(tr) {
            x.stage = Stage::Replied;
        }
        let at = self.now + self.flight(t.from, t.to, bytes);
        self.at(
            at,
            Ev::ReplyFail {
                tr,
                busy,
                sent: self.now,
            },
        );
    }

    fn reply_fail(&mut self, tr: TRef, busy: bool, sent: Ns) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        self.transfers.release(tr);
        if t.aborted || !self.deliverable(t.from, t.to, t.conn, sent) {
            return;
        }
        self.settle(t.to, t.from, t.number);
        let (now, id) = (self.instant(self.now), self.nodes[t.from as usize].id);
        if let Some(m) = self.mesh(t.to) {
            m.handle_transfer_failed(now, id, t.number, busy);
        }
        self.drain(t.to);
    }

    /// The request `i` made to `holder` for `number` is answered.
    fn settle(&mut self, i: u32, holder: u32, number: u64) {
        if let Some(n) = self.node_mut(i) {
            if let Some(pos) = n
                .outstanding
                .iter()
                .position(|(p, k, _)| *p == holder && *k == number)
            {
                n.outstanding.swap_remove(pos);
            }
        }
    }

    /// Puts `tr`'s body on holder `s`'s upload link.
    fn enqueue(&mut self, s: u32, tr: TRef) {
        self.d.control_bytes += self.reply_header_bytes;
        if let Some(t) = self.transfers.get_mut(tr) {
            t.stage = Stage::Sending;
        }
        let (now, bytes) = (self.now, self.seg_bytes);
        let Some(n) = self.nodes.get_mut(s as usize) else {
            return;
        };
        let wake = n.link.add(now, tr, bytes);
        self.wake_link(s, wake);
    }

    fn wake_link(&mut self, s: u32, wake: Option<Ns>) {
        if let (Some(t), Some(n)) = (wake, self.node(s)) {
            let gen = n.link.gen();
            self.at(t, Ev::LinkDone { node: s, gen });
        }
    }

    fn link_done(&mut self, s: u32, gen: u64) {
        let now = self.now;
        let Some((done, wake)) = self
            .nodes
            .get_mut(s as usize)
            .and_then(|n| n.link.complete(now, gen))
        else {
            return;
        };
        self.wake_link(s, wake);
        for tr in done {
            self.count_sent(s, self.seg_bytes);
            let Some(t) = self.transfers.get_mut(tr) else {
                continue;
            };
            t.stage = Stage::Flying;
            t.sent_done = now;
            let (from, to) = (t.from, t.to);
            let at = now + self.flight(from, to, self.seg_bytes);
            self.at(at, Ev::Deliver { tr });
        }
    }

    fn count_sent(&mut self, s: u32, bytes: u64) {
        self.d.media_sent_bytes += bytes;
        if s == ORIGIN {
            self.origin_bytes += bytes;
        }
    }

    /// Takes `tr` off holder `s`'s link; what it had sent is waste.
    fn unlink(&mut self, s: u32, tr: TRef) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(s as usize) else {
            return;
        };
        if let Some((sent, wake)) = n.link.remove(now, tr) {
            self.count_sent(s, sent);
            self.d.wasted_bytes += sent;
            self.wake_link(s, wake);
        }
        self.transfers.release(tr);
    }

    /// Stops everything `s` is sending to `peer` (the connection between them ended).
    fn drop_to(&mut self, s: u32, peer: u32) {
        let Some(n) = self.node(s) else { return };
        let going: Vec<TRef> = n
            .link
            .ids()
            .filter(|tr| self.transfers.get(*tr).is_some_and(|t| t.to == peer))
            .collect();
        for tr in going {
            self.unlink(s, tr);
        }
    }

    fn cancel_arrive(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        match t.stage {
            // The request was delayed past its cancel: it will find nothing.
            Stage::Asked => self.transfers.release(tr),
            Stage::Sending => self.unlink(t.from, tr),
            Stage::Flying | Stage::Replied | Stage::Free => {}
        }
    }

    fn deliver(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        self.transfers.release(tr);
        let (s, r, number) = (t.from, t.to, t.number);
        if t.aborted || !self.deliverable(s, r, t.conn, t.sent_done) {
            self.d.wasted_bytes += self.seg_bytes;
            return;
        }
        if t.kind == Kind::Request {
            self.settle(r, s, number);
        }
        let now_i = self.instant(self.now);
        let sid = self.nodes[s as usize].id;
        let unwanted = self.node(r).is_none_or(|n| {
            n.holds(number)
                || n.newest
                    .is_some_and(|k| number.saturating_add(KEEP_BEHIND) < k)
        });
        if unwanted {
            self.d.wasted_bytes += self.seg_bytes;
            if t.kind == Kind::Request {
                if let Some(m) = self.mesh(r) {
                    m.handle_transfer_failed(now_i, sid, number, false);
                }
                self.drain(r);
            }
            return;
        }
        self.accept(r, number);
        let seg = self.cfg.segment();
        let bytes = self.seg_bytes;
        if let Some(m) = self.mesh(r) {
            m.observe_segment_duration(seg);
            m.handle_segment(now_i, Some(sid), number, bytes);
        }
        self.drain(r);
    }

    /// Viewer `r` now holds `number`: store it and take the measurements.
    fn accept(&mut self, r: u32, number: u64) {
        let now = self.now;
        self.delivered_bytes += self.seg_bytes;
        let allowance = self.cfg.delay_segments * self.seg_ns;
        let need = self.cfg.delay_segments + 1;
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
        if n.playable {
            return;
        }
        // A playable playlist: `delay + 1` consecutive segments around the new one.
        let mut run = 1;
        let mut k = number;
        while run < need && k > 0 && n.holds(k - 1) {
            run += 1;
            k -= 1;
        }
        let mut k = number;
        while run < need && n.holds(k + 1) {
            run += 1;
            k += 1;
        }
        if run >= need {
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
            .filter_map(|n| n.mesh.as_ref())
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
