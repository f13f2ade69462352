//! Criterion benches of the pure paths a viewer runs for every segment: checking a
//! signed header, a whole segment and one piece (`stream`), and one step of a
//! viewer's `mesh` with 100 partners (a partner's announcement; a timer tick).
//!
//! Run: `cargo bench --bench hot` (each group warms up 1 s and measures 3 s, so the
//! run stays short on a shared machine).

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling::mesh::{Action, Mesh, MeshConfig};
use starling::stream::{node_id, sign_segment, NodeId, VerifiedSegment, ALL_PARTS, PARTS};
use starling::wire::{Control, Role};

#[allow(unreachable_pub)]
#[path = "../tests/common/payload.rs"]
mod payload;
use payload::payload;

/// One second of a 2 Mbit/s stream: the performance issue's reference segment.
const SEGMENT_LEN: usize = 2_000_000 / 8;
const SEGMENT: Duration = Duration::from_secs(1);
const DELAY: u64 = 3;
const PARTNERS: usize = 100;
/// Segments run before timing starts: more than the mesh's window (64), so every
/// partner's announced set and the viewer's segment table are at their steady size.
const WARM_UP_SEGMENTS: u64 = 80;

/// Short runs: the machine is shared.
fn short(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
}

fn verify(c: &mut Criterion) {
    let key = SigningKey::generate(&mut ChaCha8Rng::seed_from_u64(1));
    let stream = node_id(&key);
    let data = payload(7, SEGMENT_LEN);
    let header = sign_segment(&key, 7, 1000, 0, false, &data).unwrap_or_else(|e| panic!("{e}"));
    let piece_len = header.header.piece_size as usize;
    let piece = data.slice(..piece_len);
    // Each bench must time the success path, not an early rejection.
    header.verify(&stream).unwrap_or_else(|e| panic!("{e}"));
    header
        .check_piece(0, &piece)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "hot: segment {} bytes, {} pieces of {} bytes",
        data.len(),
        header.header.pieces.len(),
        piece_len
    );

    let mut g = c.benchmark_group("verify");
    short(&mut g);
    g.bench_function("header", |b| b.iter(|| header.verify(black_box(&stream))));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("segment", |b| {
        b.iter_batched(
            || header.clone(),
            |h| VerifiedSegment::verify(&stream, h, data.clone()),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Bytes(piece_len as u64));
    g.bench_function("piece", |b| {
        b.iter(|| header.check_piece(black_box(0), black_box(&piece)))
    });
    g.finish();
}

/// The one place that builds a partner's or the origin's announcement of a single new
/// segment, so a change to `Control::Have` is a one-line fix here.
fn announce(number: u64) -> Control {
    Control::Have {
        number,
        parts: ALL_PARTS,
    }
}

/// A buffer map holding exactly `held` (ascending, within 1024 of the first).
fn buffer_map(held: &[u64]) -> Control {
    let first = held.first().copied().unwrap_or(0);
    let mut bits = Vec::new();
    for n in held {
        let i = (n - first) as usize;
        if bits.len() <= i / 8 {
            bits.resize(i / 8 + 1, 0u8);
        }
        if let Some(b) = bits.get_mut(i / 8) {
            *b |= 1 << (i % 8);
        }
    }
    Control::BufferMap { first, bits }
}

/// A viewer's mesh in a steady live stream with [`PARTNERS`] partners, fed one event
/// at a time. A bench times one step on it and lets the stream move on, because
/// `Mesh` is not `Clone` and rebuilding it for every iteration would cost far more
/// than the step being timed.
struct Live {
    mesh: Mesh,
    origin: NodeId,
    partners: Vec<NodeId>,
    /// Segments each partner runs behind the live edge (0–2), so partners hold a
    /// mix of the last segments, as in a real swarm.
    lag: Vec<u64>,
    rng: ChaCha8Rng,
    now: Instant,
    /// The newest segment the origin has announced.
    newest: u64,
    /// Time between two partner announcements in this segment's second.
    spacing: Duration,
    /// Partner announcements still to come in this segment's second.
    due: VecDeque<(NodeId, u64)>,
    /// Requests the mesh made and the supplier has not started answering yet.
    fresh: Vec<(NodeId, u64, u8)>,
    /// Requests the mesh made, answered in full at the end of the second.
    asked: Vec<(NodeId, u64, u8)>,
    /// Parts landed of each segment not yet whole.
    parts: BTreeMap<u64, u32>,
    /// Requests that went to partners (the rest went to the origin).
    asked_partners: u64,
}

impl Live {
    fn new(seed: u64) -> Live {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let now = Instant::now();
        let origin = NodeId(rng.gen());
        let me = NodeId(rng.gen());
        let partners: Vec<NodeId> = (0..PARTNERS).map(|_| NodeId(rng.gen())).collect();
        let lag = (0..PARTNERS).map(|_| rng.gen_range(0..3)).collect();
        let mut cfg = MeshConfig::viewer(origin, SEGMENT, DELAY);
        // The defaults turn partners beyond 10 away; the bench wants 100.
        cfg.max_partners = PARTNERS + 1;
        let mut live = Live {
            mesh: Mesh::new(cfg, me, seed, now),
            origin,
            partners,
            lag,
            rng,
            now,
            newest: 20,
            spacing: Duration::ZERO,
            due: VecDeque::new(),
            fresh: Vec::new(),
            asked: Vec::new(),
            parts: BTreeMap::new(),
            asked_partners: 0,
        };
        let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
        live.mesh.handle_connected(
            now,
            contact(origin, addr(0)),
            Role::Broadcaster,
            true,
            None,
            false,
        );
        let all: Vec<u64> = (0..=live.newest).collect();
        live.mesh.handle_control(now, origin, buffer_map(&all));
        for (i, p) in live.partners.clone().into_iter().enumerate() {
            live.mesh.handle_connected(
                now,
                contact(p, addr(i + 1)),
                Role::Viewer,
                true,
                None,
                false,
            );
            let held: Vec<u64> = (0..=live.newest).filter(|n| live.holds(i, *n)).collect();
            live.mesh.handle_control(now, p, buffer_map(&held));
        }
        live.drain();
        while live.newest < 20 + WARM_UP_SEGMENTS {
            let (at, peer, n) = live.next_announcement();
            live.mesh.handle_control(at, peer, announce(n));
            live.drain();
        }
        live
    }

    /// Whether partner `i` holds segment `n` by now. About 1 in 10 never announces
    /// a given segment, so segments differ in rarity.
    fn holds(&self, i: usize, n: u64) -> bool {
        let x = (n ^ ((i as u64) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let lag = self.lag.get(i).copied().unwrap_or(0);
        (x >> 32) % 10 != 0 && n + lag <= self.newest
    }

    /// Takes the mesh's actions: requests are remembered to be answered, everything
    /// else (messages to peers) needs no reply here.
    fn drain(&mut self) -> usize {
        let mut count = 0;
        while let Some(a) = self.mesh.poll_action() {
            count += 1;
            if let Action::Request {
                peer, number, part, ..
            } = a
            {
                self.asked_partners += u64::from(peer != self.origin);
                self.fresh.push((peer, number, part));
            }
        }
        count
    }

    /// Suppliers answer a request at once with the signed header, as honest ones do;
    /// the bytes follow through the rest of the second. (Without this the mesh would
    /// rightly drop them as stalling.)
    fn start_answers(&mut self) {
        while !self.fresh.is_empty() {
            for (peer, n, part) in std::mem::take(&mut self.fresh) {
                self.mesh.handle_receiving(self.now, peer, n, part);
                self.asked.push((peer, n, part));
            }
            self.drain();
        }
    }

    /// Moves the stream on to the next partner announcement (answering requests,
    /// publishing the next segment and running due timers on the way) and returns it.
    fn next_announcement(&mut self) -> (Instant, NodeId, u64) {
        loop {
            self.start_answers();
            self.now += self.spacing;
            if self.now >= self.mesh.poll_timeout() {
                self.mesh.handle_tick(self.now);
                self.drain();
            }
            if let Some((peer, n)) = self.due.pop_front() {
                return (self.now, peer, n);
            }
            self.next_segment();
        }
    }

    /// Ends this segment's second: the requests made are answered (in a real swarm
    /// transfers take about this long), then the origin announces the next segment.
    fn next_segment(&mut self) {
        // Each answer may trigger new requests; the mesh caps those in flight, and a
        // few rounds settle them.
        for _ in 0..8 {
            self.start_answers();
            if self.asked.is_empty() {
                break;
            }
            // Parts land; a segment whose parts all came is whole.
            for (peer, n, part) in std::mem::take(&mut self.asked) {
                let len = (SEGMENT_LEN / PARTS) as u64;
                self.mesh.handle_part(self.now, peer, n, part, len);
                let got = {
                    let g = self.parts.entry(n).or_insert(0);
                    *g |= 1 << part;
                    *g
                };
                if got == ALL_PARTS {
                    self.parts.remove(&n);
                    self.mesh
                        .handle_segment(self.now, Some(peer), n, SEGMENT_LEN as u64);
                }
            }
            self.drain();
        }
        self.newest += 1;
        self.mesh
            .handle_control(self.now, self.origin, announce(self.newest));
        self.drain();
        for (i, (p, lag)) in self.partners.iter().zip(&self.lag).enumerate() {
            let n = self.newest.saturating_sub(*lag);
            if self.holds(i, n) {
                self.due.push_back((*p, n));
            }
        }
        self.due.make_contiguous().shuffle(&mut self.rng);
        self.spacing = SEGMENT / (self.due.len() as u32 + 1);
    }
}

fn schedule(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_100_partners");
    short(&mut g);

    let mut live = Live::new(1);
    let stats = live.mesh.stats();
    eprintln!(
        "hot: after warm-up: {} partners, {} requests to partners, {} missed deadlines",
        stats.partners, live.asked_partners, stats.missed_deadlines
    );
    // The steps timed below must be those of a working viewer fed by its partners.
    assert_eq!(stats.partners, PARTNERS);
    assert!(live.asked_partners > WARM_UP_SEGMENTS / 2);
    g.bench_function("announcement", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (at, peer, n) = live.next_announcement();
                let msg = announce(n);
                let t = Instant::now();
                live.mesh.handle_control(at, peer, msg);
                black_box(live.drain());
                spent += t.elapsed();
            }
            spent
        })
    });

    // The step that picks a supplier: the first partner to announce a new segment.
    let mut live = Live::new(3);
    let (mut heard, mut steps, mut requests) = (live.newest, 0u64, 0u64);
    g.bench_function("first_announcement", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                loop {
                    let (at, peer, n) = live.next_announcement();
                    let msg = announce(n);
                    if n <= heard {
                        live.mesh.handle_control(at, peer, msg);
                        live.drain();
                        continue;
                    }
                    heard = n;
                    let before = live.asked_partners;
                    let t = Instant::now();
                    live.mesh.handle_control(at, peer, msg);
                    black_box(live.drain());
                    spent += t.elapsed();
                    steps += 1;
                    requests += live.asked_partners - before;
                    break;
                }
            }
            spent
        })
    });
    eprintln!("hot: {requests} requests from {steps} first announcements");

    let mut live = Live::new(2);
    g.bench_function("tick", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (at, peer, n) = live.next_announcement();
                live.mesh.handle_control(at, peer, announce(n));
                live.drain();
                let t = Instant::now();
                live.mesh.handle_tick(at);
                black_box(live.drain());
                spent += t.elapsed();
            }
            spent
        })
    });
    g.finish();
}

// The macro defines an undocumented pub fn.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(group, super::verify, super::schedule);
}
use group::group;

criterion_main!(group);

/// A peer as a connection reports it, reachable at its address.
fn contact(id: NodeId, addr: std::net::SocketAddr) -> starling::wire::PeerInfo {
    starling::wire::PeerInfo {
        id,
        addr,
        local: None,
        reach: starling::wire::Reach::Public,
        site: None,
    }
}
