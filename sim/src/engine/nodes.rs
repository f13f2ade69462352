//! The simulated nodes: each one's mesh, store ring of segments, assemblies, upload link
//! and admission; how they join, leave or vanish; the origin's publishing; and what a
//! viewer's segment counts for (latency, join time, continuity at its deadline).

use super::links::LinkRow;
use super::sites::NO_SITE;
use super::transfers::TRef;
use super::{Ev, Ns, Sim, NS_PER_MS, NS_PER_SEC, ORIGIN};
use crate::link::Link;
use crate::{LinkModel, NatKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling::mesh::{Mesh, MeshConfig};
use starling::node::{Assemblies, Uploads};
use starling::stream::{NodeId, ALL_PARTS, PARTS};
use starling::wire::Reach;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Segments each node keeps to serve (the broadcaster's store capacity).
pub(super) const STORE: u64 = 64;

/// No supplier yet (an [`Assembly`]'s `first_from`).
pub(super) const NOBODY: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct Node {
    /// Where peers off its network see it (on a site, the site's NAT).
    pub(super) addr: SocketAddr,
    /// Its LAN address, which it hands out (site viewers only, as the mesh then carries it).
    pub(super) local: Option<SocketAddr>,
    /// None once the viewer has left, or while the worker thread runs its calls.
    pub(super) mesh: Option<Box<Mesh>>,
    /// Still in the swarm (false once it has left).
    present: bool,
    pub(super) uploads: bool,
    joined: Ns,
    playable: bool,
    /// Ring of the last [`STORE`] segments held: (number, arrival); `u64::MAX` = empty.
    pub(super) held: Vec<(u64, Ns)>,
    pub(super) newest: Option<u64>,
    /// Lowest segment it ever accepted (for the playlist's first listing).
    lowest: Option<u64>,
    pub(super) link: Link<TRef>,
    /// Upload cap in bits/s, as `net`'s limiter reports it.
    pub(super) cap_bps: u64,
    /// Upload admission, as the product's node keeps it: slots in use, the stream's
    /// bitrate from headers, the parts the origin seeded here.
    pub(super) upload: Uploads,
    /// When this node's pending tick is due (`Ns::MAX`: none pending).
    pub(super) next_tick: Ns,
    /// Nodes it has a connection with (open, or closed by the other side unnoticed).
    pub(super) partners: Vec<u32>,
    /// Its links (see [`Sim::links`]) when there are more than a [`LinkRow`] holds, and
    /// each one's connection slot; empty otherwise.
    pub(super) spilled_links: Vec<u32>,
    pub(super) spilled_conns: Vec<u32>,
    /// Transfers it receives (asked for, or arriving) and has not finished with.
    pub(super) downs: Vec<TRef>,
    /// Transfers it sends and has not finished.
    pub(super) ups: Vec<TRef>,
    /// Segments being assembled here, bounded as the product's node bounds them.
    pub(super) assembling: Assemblies<Assembly>,
    /// Position in the live-viewer list.
    live_pos: usize,
    /// Events this node scheduled (the low bits of their ordering key).
    pub(super) seq: u64,
    /// Uploads it started (their order on its FIFO link).
    pub(super) uploads_started: u64,
    /// Its draws of the loss model, apart from every other node's. Boxed: its 300-odd
    /// bytes of block buffer would be most of the node's lines, which the loop prefetches
    /// for every event, and a run without loss never reads it.
    pub(super) rng: Box<ChaCha8Rng>,
    /// The NAT in front of it.
    pub(super) nat: NatKind,
    /// Nodes its NAT has seen it send to lately, and until when that lets them in (a
    /// connection tracker's unreplied entry); a cone NAT admits only these.
    pub(super) pinholes: Vec<(u32, Ns)>,
}

/// Pinholes kept per node; the oldest goes first beyond it.
const MAX_PINHOLES: usize = 64;
/// How long a NAT keeps an outgoing mapping nobody answered (Linux conntrack's UDP default).
const PINHOLE_NS: Ns = 30_000 * NS_PER_MS;

/// `nat`'s row in the per-NAT counters: open, cone, symmetric.
pub(super) fn nat_index(nat: NatKind) -> usize {
    match nat {
        NatKind::Open => 0,
        NatKind::Cone => 1,
        NatKind::Symmetric => 2,
    }
}

/// What a node behind `nat` reports of itself in its Hello.
pub(super) fn reach_of(nat: NatKind) -> Reach {
    match nat {
        NatKind::Open => Reach::Public,
        NatKind::Cone => Reach::Nat,
        NatKind::Symmetric => Reach::Symmetric,
    }
}

impl Node {
    /// Its NAT saw it send to `to` at `now`.
    pub(super) fn open_pinhole(&mut self, to: u32, now: Ns) {
        self.pinholes.retain(|(p, until)| *p != to && *until > now);
        if self.pinholes.len() >= MAX_PINHOLES {
            self.pinholes.remove(0);
        }
        self.pinholes.push((to, now + PINHOLE_NS));
    }

    /// Whether a dial from `from`, behind `from_nat`, gets in through this node's NAT now.
    pub(super) fn admits(&self, from: u32, from_nat: NatKind, now: Ns) -> bool {
        match self.nat {
            NatKind::Open => true,
            NatKind::Symmetric => false,
            // A symmetric dialler comes from another port than the one this NAT expects.
            NatKind::Cone => {
                from_nat != NatKind::Symmetric
                    && self
                        .pinholes
                        .iter()
                        .any(|(p, until)| *p == from && *until > now)
            }
        }
    }

    pub(super) fn holds(&self, number: u64) -> bool {
        self.held
            .get((number % STORE) as usize)
            .is_some_and(|(n, _)| *n == number)
    }

    pub(super) fn store(&mut self, number: u64, at: Ns) {
        if let Some(slot) = self.held.get_mut((number % STORE) as usize) {
            *slot = (number, at);
        }
        self.newest = self.newest.max(Some(number));
        // Bounded by the window: what is too old to be wanted is given up.
        if let Some(k) = self.newest {
            self.assembling.keep_window(k);
        }
    }

    pub(super) fn alive(&self) -> bool {
        self.present
    }

    /// Upload slots for a plain request: cap / bitrate in [1, 8]; 8 while the bitrate is
    /// unknown.
    #[cfg(test)]
    pub(super) fn slots(&self) -> u64 {
        starling::node::upload::serving_slots(
            Some(self.cap_bps),
            self.upload.stream_bps(),
            false,
            false,
        )
    }

    pub(super) fn assembly(&self, number: u64) -> Option<&Assembly> {
        self.assembling.get(number)
    }

    pub(super) fn assembly_mut(&mut self, number: u64) -> Option<&mut Assembly> {
        self.assembling.get_mut(number)
    }

    /// The transfer bringing part `part` of `number` here, which a relay of it follows.
    pub(super) fn partial(&self, number: u64, part: u8) -> Option<TRef> {
        self.assembly(number)
            .and_then(|a| a.arriving.get(usize::from(part)).copied().flatten())
    }

    /// Parts of `number` complete here.
    pub(super) fn got(&self, number: u64) -> u32 {
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
pub(super) struct Assembly {
    /// Parts complete here.
    pub(super) got: u32,
    /// Per part, the transfer bringing it that relays of it follow (`net`'s relays read
    /// the pieces whichever transfer lands them; the sim follows one, see `finish_download`).
    pub(super) arriving: [Option<TRef>; PARTS],
    /// Who sent the first part kept; [`NOBODY`] before.
    pub(super) first_from: u32,
    /// A part kept came from someone other than `first_from`.
    pub(super) several: bool,
}

impl Assembly {
    pub(super) fn new() -> Assembly {
        Assembly {
            got: 0,
            arriving: [None; PARTS],
            first_from: NOBODY,
            several: false,
        }
    }
}

pub(super) fn node_id(i: u32) -> NodeId {
    let mut seed = b"starling-sim-node".to_vec();
    seed.extend_from_slice(&i.to_le_bytes());
    let mut b = *blake3::hash(&seed).as_bytes();
    // The index rides in the last bytes so a peer id maps back to its node in O(1);
    // the hashed prefix keeps the mesh's id order unrelated to join order.
    b[28..].copy_from_slice(&i.to_be_bytes());
    NodeId(b)
}

pub(super) fn node_addr(i: u32) -> SocketAddr {
    let [_, x, y, z] = (i + 1).to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, x, y, z), 7000))
}

impl Sim {
    pub(super) fn resolve(&self, id: &NodeId) -> Option<u32> {
        let mut idx = [0u8; 4];
        idx.copy_from_slice(&id.0[28..]);
        let i = u32::from_be_bytes(idx);
        self.ids.get(i as usize).filter(|x| *x == id).map(|_| i)
    }

    pub(super) fn mesh(&mut self, i: u32) -> Option<&mut Mesh> {
        self.nodes
            .get_mut(i as usize)
            .and_then(|n| n.mesh.as_deref_mut())
    }

    pub(super) fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(i as usize)
    }

    pub(super) fn node_mut(&mut self, i: u32) -> Option<&mut Node> {
        self.nodes.get_mut(i as usize)
    }

    pub(super) fn alive(&self, i: u32) -> bool {
        self.node(i).is_some_and(Node::alive)
    }

    pub(super) fn id_of(&self, i: u32) -> NodeId {
        self.ids.get(i as usize).copied().unwrap_or(NodeId([0; 32]))
    }

    pub(super) fn spawn_origin(&mut self) {
        let mut cfg = MeshConfig::broadcaster(self.origin_id, self.cfg.segment());
        if let Some(p) = self.cfg.origin_partners {
            cfg.max_partners = p;
        }
        let bps = self.cfg.origin_upload_bps;
        let seed = self.rng.gen();
        self.spawn(cfg, bps, seed, NatKind::Open, NO_SITE);
    }

    fn spawn(&mut self, mut cfg: MeshConfig, bps: u64, seed: u64, nat: NatKind, site: u32) -> u32 {
        let i = self.nodes.len() as u32;
        let placed = self.place(site);
        let access = match (placed, self.sites.get(site as usize)) {
            (Some(_), Some(s)) => s.access,
            _ => self.draw_access(),
        };
        // The one-way latency between two nodes is a quarter of their two access RTTs. (Two
        // viewers of one site are closer, but their events never overlap: see `runnable`.)
        self.lookahead = self.lookahead.min(access / 2);
        let (addr, local) = match placed {
            Some((public, local)) => (public, Some(local)),
            None => (node_addr(i), None),
        };
        self.site_of
            .push(if placed.is_some() { site } else { NO_SITE });
        if placed.is_some() {
            self.add_member(site, i);
        }
        self.marks.push((0, 0));
        self.link_rows.push(LinkRow::default());
        let uploads = i == ORIGIN || bps > 0;
        cfg.uploads = uploads;
        let id = node_id(i);
        self.ids.push(id);
        self.access.push(access);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(u64::from(i));
        let mut mesh = Mesh::new(cfg, id, seed, self.instant(self.now));
        // It knows from the start where it is seen and how it can be reached.
        mesh.observe_self(Some(addr), reach_of(nat));
        // The limiter works in whole bytes per second and reports the cap back in bits.
        let rate = bps / 8;
        self.nodes.push(Node {
            addr,
            local,
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
            nat,
            pinholes: Vec::new(),
        });
        self.drain(i);
        i
    }

    /// An initial viewer joins, on the site planned for it (or at home).
    pub(super) fn join(&mut self) {
        let site = self.next_planned_site();
        self.join_on(site);
    }

    /// A viewer joins on `site` ([`NO_SITE`]: at home).
    pub(super) fn join_on(&mut self, site: u32) {
        let bitrate = self.cfg.bitrate_bps as f64;
        let on_site = (site as usize) < self.sites.len();
        // Drawn only with a mix, so runs without one keep their random sequence.
        let nat = if on_site {
            self.cfg.site_nat
        } else if self.cfg.nat_mix.is_empty() {
            NatKind::Open
        } else {
            let total: f64 = self.cfg.nat_mix.iter().map(|c| c.share).sum();
            let mut pick = self.rng.gen::<f64>() * total;
            let mut chosen = self.cfg.nat_mix.last().map_or(NatKind::Open, |c| c.kind);
            for c in &self.cfg.nat_mix {
                if pick < c.share {
                    chosen = c.kind;
                    break;
                }
                pick -= c.share;
            }
            chosen
        };
        let bps = if let Some(bps) = self.cfg.site_upload_bps.filter(|_| on_site) {
            bps
        } else if self.cfg.upload_mix.is_empty() {
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
        let i = self.spawn(cfg, bps, seed, nat, site);
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.live_pos = self.live.len();
        }
        self.live.push(i);
        self.d.viewers_started += 1;
    }

    pub(super) fn churn_gap(&mut self) -> Ns {
        let per_sec = self.cfg.churn_pct_per_min / 100.0 * self.cfg.peers as f64 / 60.0;
        let u: f64 = self.rng.gen();
        let secs = -(1.0 - u).ln() / per_sec;
        (secs * NS_PER_SEC).min(1e18) as Ns
    }

    pub(super) fn leave(&mut self) {
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
        let site = self.site_of(x);
        self.vanish(x);
        // Churn keeps the audience size: a newcomer replaces the leaver, on its site.
        self.join_on(site);
    }

    /// Viewer `x` leaves abruptly (it crashed, or lost its network).
    pub(super) fn vanish(&mut self, x: u32) {
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

    pub(super) fn publish(&mut self) {
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

    /// Continuity for segment `number`, at its deadline.
    pub(super) fn judge(&mut self, number: u64) {
        let Some(&published) = self.publish_at.get(number as usize) else {
            return;
        };
        let allowance = self.cfg.delay_segments * self.seg_ns;
        let mut sites = Vec::new();
        for (n, &site) in self.nodes.iter().zip(&self.site_of).skip(1) {
            if n.alive() && n.joined + allowance <= published {
                let held = n.holds(number);
                self.d.judged += 1;
                self.d.on_time += u64::from(held);
                let nat = nat_index(n.nat);
                let below = usize::from(n.cap_bps < self.cfg.bitrate_bps);
                if let Some(c) = self
                    .d
                    .judged_by_class
                    .get_mut(nat)
                    .and_then(|r| r.get_mut(below))
                {
                    c.0 += 1;
                    c.1 += u64::from(held);
                }
                if site != NO_SITE {
                    self.d.site_judged += 1;
                    self.d.site_on_time += u64::from(held);
                    sites.push(site);
                }
            }
        }
        for site in sites {
            self.site_needed(site, number);
        }
    }

    /// Viewer `r` now holds `number`: store it and take the measurements.
    pub(super) fn accept(&mut self, r: u32, number: u64) {
        self.site_needed(self.site_of(r), number);
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
}
