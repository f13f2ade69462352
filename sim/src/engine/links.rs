//! Who is connected to whom: each node's links (a cache-line row, spilled to the node past
//! [`LINK_ROW`]), the connections between them with their delayed closes, latency and the
//! loss model, dialling and disconnecting, and control messages on each connection's
//! ordered stream.

use super::nodes::{reach_of, Node, NOBODY};
use super::transfers::TRef;
use super::worker::Call;
use super::{Ev, Ns, Sim, NS_PER_MS, ORIGIN};
use crate::{NatKind, ORIGIN_CONNECTION_HEADROOM};
use rand::Rng;
use starling::node::DisconnectReason;
use starling::stream::NodeId;
use starling::wire::{self, Control, PeerInfo, Role};
use std::net::SocketAddr;

/// Connection caps `broadcaster.rs` and `viewer.rs` give `net`.
const ORIGIN_MAX_CONNECTIONS: usize = starling::broadcaster::MAX_CONNECTIONS;
const VIEWER_MAX_CONNECTIONS: usize = starling::viewer::MAX_CONNECTIONS;

/// Payload per packet, for the loss model.
const PACKET_BYTES: u64 = 1200;

/// Links a [`LinkRow`] holds; a node with more (the origin) keeps them in its node.
pub(super) const LINK_ROW: usize = 15;

/// A node's links in one cache line, with each link's connection slot in a second, in a
/// table of their own: the loop checks links for every event it considers and looks a
/// connection up for every message.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(super) struct LinkRow {
    /// How many of `ids` are links; [`LinkRow::SPILLED`] when there are too many.
    len: u32,
    ids: [u32; LINK_ROW],
    /// `ids[k]`'s connection slot in [`Conns`].
    conns: [u32; LINK_ROW],
}

impl LinkRow {
    const SPILLED: u32 = u32::MAX;

    /// A row of `links` with connection slots `conns`, or a spilled one if they are too many.
    fn new(links: &[u32], conns: &[u32]) -> LinkRow {
        let mut row = LinkRow::default();
        match (
            row.ids.get_mut(..links.len()),
            row.conns.get_mut(..conns.len()),
        ) {
            (Some(ids), Some(slots)) if links.len() == conns.len() => {
                ids.copy_from_slice(links);
                slots.copy_from_slice(conns);
                row.len = links.len() as u32;
            }
            _ => row.len = LinkRow::SPILLED,
        }
        row
    }

    /// The links, unless there are more than a row holds.
    fn get(&self) -> Option<&[u32]> {
        self.ids.get(..self.len as usize)
    }

    /// The connection slot of the link to `y` (None: not linked), unless spilled.
    fn conn_to(&self, y: u32) -> Option<Option<u32>> {
        let ids = self.get()?;
        Some(
            ids.iter()
                .position(|&z| z == y)
                .and_then(|k| self.conns.get(k).copied()),
        )
    }

    /// Adds `y` on connection slot `conn`; false (and nothing added) when the row is full
    /// or spilled.
    fn push(&mut self, y: u32, conn: u32) -> bool {
        let k = self.len as usize;
        match (self.ids.get_mut(k), self.conns.get_mut(k)) {
            (Some(slot), Some(c)) => {
                *slot = y;
                *c = conn;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    /// Removes `y` (the row not spilled).
    fn remove(&mut self, y: u32) {
        let len = self.len as usize;
        if let (Some(ids), Some(conns)) = (self.ids.get_mut(..len), self.conns.get_mut(..len)) {
            if let Some(k) = ids.iter().position(|&z| z == y) {
                ids.copy_within(k + 1.., k);
                conns.copy_within(k + 1.., k);
                self.len -= 1;
            }
        }
    }
}

/// A connection between two nodes.
#[derive(Debug)]
#[repr(align(64))]
pub(super) struct Conn {
    /// Its slot (low 32 bits) and the slot's generation: unique over the run.
    pub(super) id: u64,
    /// Its two nodes, as [`pair`] orders them.
    ends: (u32, u32),
    /// Closed by this side, taking effect at this time; the other side has not noticed yet.
    pub(super) closed: Option<(u32, Ns)>,
    /// When the last control message each way lands (index: sender is the larger id).
    ctl_free: [Ns; 2],
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

/// Connections by slot, reached from the link rows of their ends or, from an event that
/// names one, by its id; a freed slot's generation moves on so old ids go stale.
#[derive(Debug, Default)]
pub(super) struct Conns {
    items: Vec<Conn>,
    free: Vec<u32>,
}

impl Conns {
    /// A new open connection between `a` and `b`: its slot.
    fn insert(&mut self, a: u32, b: u32) -> u32 {
        let open = |id| Conn {
            id,
            ends: pair(a, b),
            closed: None,
            ctl_free: [0, 0],
        };
        if let Some(idx) = self.free.pop() {
            if let Some(c) = self.items.get_mut(idx as usize) {
                *c = open(c.id);
                return idx;
            }
        }
        let idx = self.items.len() as u32;
        self.items.push(open(u64::from(idx)));
        idx
    }

    fn get(&self, slot: u32) -> Option<&Conn> {
        self.items.get(slot as usize)
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.items.get_mut(slot as usize)
    }

    /// The open connection with id `id`, between `a` and `b`.
    fn by_id(&self, id: u64, a: u32, b: u32) -> Option<&Conn> {
        self.get(id as u32)
            .filter(|c| c.id == id && c.ends == pair(a, b))
    }

    fn free(&mut self, slot: u32) {
        if let Some(c) = self.items.get_mut(slot as usize) {
            c.id = c.id.wrapping_add(1 << 32);
            c.ends = (NOBODY, NOBODY);
            self.free.push(slot);
        }
    }
}

impl Sim {
    /// The same node, on one site, or linked.
    pub(super) fn adjacent(&self, x: u32, y: u32) -> bool {
        x == y || self.same_site(x, y) || self.links(x).contains(&y)
    }

    /// The nodes `x` shares a connection entry with: its partners and those that still
    /// list it (a close not yet noticed), the same list at both ends. What one node's event
    /// may touch of another's is within these (see [`Sim::runnable`]).
    pub(super) fn links(&self, x: u32) -> &[u32] {
        match self.link_rows.get(x as usize).and_then(LinkRow::get) {
            Some(row) => row,
            None => self.node(x).map_or(&[], |n| &n.spilled_links),
        }
    }

    /// Node `x`'s row and its spilled lists, the two places its links may be.
    fn link_store(&mut self, x: u32) -> Option<(&mut LinkRow, &mut Node)> {
        let row = self.link_rows.get_mut(x as usize)?;
        let n = self.nodes.get_mut(x as usize)?;
        Some((row, n))
    }

    /// Links `x` to `y` over connection slot `conn`.
    pub(super) fn link(&mut self, x: u32, y: u32, conn: u32) {
        let Some((row, n)) = self.link_store(x) else {
            return;
        };
        if row.len == LinkRow::SPILLED {
            n.spilled_links.push(y);
            n.spilled_conns.push(conn);
        } else if !row.push(y, conn) {
            n.spilled_links.extend_from_slice(&row.ids);
            n.spilled_links.push(y);
            n.spilled_conns.extend_from_slice(&row.conns);
            n.spilled_conns.push(conn);
            row.len = LinkRow::SPILLED;
        }
    }

    pub(super) fn unlink(&mut self, x: u32, y: u32) {
        let Some((row, n)) = self.link_store(x) else {
            return;
        };
        if row.len != LinkRow::SPILLED {
            row.remove(y);
            return;
        }
        if let Some(k) = n.spilled_links.iter().position(|&z| z == y) {
            n.spilled_links.remove(k);
            if k < n.spilled_conns.len() {
                n.spilled_conns.remove(k);
            }
        }
        if n.spilled_links.len() <= LINK_ROW {
            *row = LinkRow::new(&n.spilled_links, &n.spilled_conns);
            n.spilled_links.clear();
            n.spilled_conns.clear();
        }
    }

    /// The slot of the connection between `a` and `b`, found in the row of an end whose
    /// links fit one.
    pub(super) fn conn_slot(&self, a: u32, b: u32) -> Option<u32> {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(found) = self.link_rows.get(x as usize).and_then(|r| r.conn_to(y)) {
                return found;
            }
        }
        // Both ends spilled.
        let n = self.node(a)?;
        let k = n.spilled_links.iter().position(|&z| z == b)?;
        n.spilled_conns.get(k).copied()
    }

    /// The connection between `a` and `b`.
    pub(super) fn conn(&self, a: u32, b: u32) -> Option<&Conn> {
        self.conn_slot(a, b).and_then(|k| self.conns.get(k))
    }

    pub(super) fn conn_mut(&mut self, a: u32, b: u32) -> Option<&mut Conn> {
        self.conn_slot(a, b).and_then(|k| self.conns.get_mut(k))
    }

    pub(super) fn rtt(&self, a: u32, b: u32) -> Ns {
        if self.same_site(a, b) {
            return self.lan_ns;
        }
        let acc = |i: u32| self.access.get(i as usize).copied().unwrap_or(0);
        (acc(a) + acc(b)) / 2
    }

    pub(super) fn one_way(&self, a: u32, b: u32) -> Ns {
        self.rtt(a, b) / 2
    }

    /// One-way latency plus, with the loss model's probability, a retransmission RTT.
    pub(super) fn flight(&mut self, a: u32, b: u32, bytes: u64) -> Ns {
        let mut t = self.one_way(a, b);
        if self.loss > 0.0 {
            let packets = bytes.div_ceil(PACKET_BYTES).max(1);
            let p = 1.0 - (1.0 - self.loss).powf(packets as f64);
            let lost = self
                .nodes
                .get_mut(a as usize)
                .is_some_and(|n| n.rng.gen::<f64>() < p);
            if lost {
                t += self.rtt(a, b);
            }
        }
        t
    }

    /// Whether a message `from` sent at `sent` on `conn` reaches `to` now.
    pub(super) fn deliverable(&self, from: u32, to: u32, conn: u64, sent: Ns) -> bool {
        if !self.alive(to) {
            return false;
        }
        match self.conns.by_id(conn, from, to) {
            Some(c) => match c.closed {
                None => true,
                // Like quinn's close: what was sent before closing still lands; nothing after.
                Some((closer, at)) if closer == from => sent < at,
                // To the closer: only while its (delayed) close has not taken effect.
                Some((_, at)) => self.now < at,
            },
            _ => false,
        }
    }

    /// The connection `from` may send on to `to`: open, or closed by `to` unnoticed.
    pub(super) fn usable(&self, from: u32, to: u32) -> Option<u64> {
        self.conn(from, to)
            .filter(|c| c.closed.is_none_or(|(closer, _)| closer != from))
            .map(|c| c.id)
    }

    pub(super) fn dial(
        &mut self,
        i: u32,
        peer: NodeId,
        addr: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) {
        self.d.dials += 1;
        let target = self.resolve(&peer).filter(|&j| match addr {
            Some(a) => self.node(j).is_some_and(|n| n.addr == a),
            // `None` dials the ticket's addresses: only the origin answers there.
            None => j == ORIGIN,
        });
        // On one site, `net` dials the LAN address it was handed as well (and that one
        // answers); the public one alone is a hairpin the site's NAT does not turn.
        let hairpin = target.is_some_and(|j| {
            self.same_site(i, j) && (local.is_none() || self.node(j).and_then(|n| n.local) != local)
        });
        match target {
            Some(j) if self.alive(j) && j != i && !hairpin => {
                // Its NAT now lets `j` answer; whether `j`'s lets it in is decided when the
                // dial lands (see `dial_done`).
                let now = self.now;
                if let Some(n) = self.node_mut(i) {
                    n.open_pinhole(j, now);
                }
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
                self.d.nat_failures += u64::from(hairpin);
                self.at(
                    self.now + self.cfg.dial_timeout_ms * NS_PER_MS,
                    Ev::DialFailed { from: i, to },
                );
            }
        }
    }

    /// Schedules retransmission `attempt` of `a`'s dial to `b`: QUIC's probe timeout starts
    /// at a second and doubles; past the dial timeout the dial fails.
    fn schedule_retry(&mut self, a: u32, b: u32, started: Ns, attempt: u32) {
        let pto = 1000 * NS_PER_MS;
        let at = started + pto * ((1u64 << attempt.min(16)) * 2 - 1);
        let timeout = started + self.cfg.dial_timeout_ms * NS_PER_MS;
        if at >= timeout {
            self.d.nat_failures += 1;
            let t = timeout.max(self.now);
            return self.at(t, Ev::DialFailed { from: a, to: b });
        }
        self.at(
            at,
            Ev::DialRetry {
                from: a,
                to: b,
                started,
                attempt,
            },
        );
    }

    /// A retransmission of `a`'s dial to `b`: through if `b`'s NAT lets it in now.
    pub(super) fn dial_retry(&mut self, a: u32, b: u32, started: Ns, attempt: u32) {
        if !self.alive(a) {
            return;
        }
        let from_nat = self.node(a).map_or(NatKind::Open, |n| n.nat);
        let through = self.alive(b)
            && (self.same_site(a, b)
                || self
                    .node(b)
                    .is_some_and(|n| n.admits(a, from_nat, self.now)));
        if through {
            self.d.nat_retried += 1;
            let rtt = self.rtt(a, b);
            self.at(
                self.now + rtt,
                Ev::DialDone {
                    from: a,
                    to: b,
                    started,
                },
            );
        } else {
            self.schedule_retry(a, b, started, attempt + 1);
        }
    }

    pub(super) fn dial_done(&mut self, a: u32, b: u32, started: Ns) {
        if !self.alive(a) {
            return;
        }
        if !self.alive(b) {
            let t = (started + self.cfg.dial_timeout_ms * NS_PER_MS).max(self.now);
            self.at(t, Ev::DialFailed { from: a, to: b });
            return;
        }
        match self.conn(a, b) {
            // Both dialled at once; the other connection already told both meshes.
            Some(c) if c.closed.is_none() => return,
            Some(_) => return self.dial_failed(a, b),
            None => {}
        }
        let from_nat = self.node(a).map_or(NatKind::Open, |n| n.nat);
        // A LAN dial meets no NAT.
        if !self.same_site(a, b)
            && !self
                .node(b)
                .is_some_and(|n| n.admits(a, from_nat, self.now))
        {
            // Kept out: QUIC sends its Initial again after a probe timeout, and gets in
            // if `b` has dialled `a` meanwhile (a rendezvous).
            return self.schedule_retry(a, b, started, 0);
        }
        let cap = if b == ORIGIN {
            self.cfg
                .origin_partners
                .map_or(ORIGIN_MAX_CONNECTIONS, |p| p + ORIGIN_CONNECTION_HEADROOM)
        } else {
            VIEWER_MAX_CONNECTIONS
        };
        if self.node(b).is_some_and(|n| n.partners.len() >= cap) {
            // net refuses incoming connections at its cap.
            return self.dial_failed(a, b);
        }
        let slot = self.conns.insert(a, b);
        self.d.control_bytes += 2 * self.hello_bytes;
        self.count_wire(a, b, self.hello_bytes, true);
        self.count_wire(b, a, self.hello_bytes, true);
        let now = self.instant(self.now);
        let role = |i: u32| {
            if i == ORIGIN {
                Role::Broadcaster
            } else {
                Role::Viewer
            }
        };
        // A node declares its cap, as net's do ([`Sim::cap_of`]: none on a site).
        let info = |n: &Node, cap: Option<u64>| {
            let at = (n.addr, n.nat, n.local);
            (at, n.uploads, cap, n.upload.stream_bps())
        };
        let (Some((ata, upa, capa, bpsa)), Some((atb, upb, capb, bpsb))) = (
            self.node(a).map(|n| info(n, self.cap_of(a))),
            self.node(b).map(|n| info(n, self.cap_of(b))),
        ) else {
            return;
        };
        let (ida, idb) = (self.id_of(a), self.id_of(b));
        for (me, other) in [(a, b), (b, a)] {
            if let Some(n) = self.node_mut(me) {
                n.partners.push(other);
            }
            self.link(me, other, slot);
        }
        // On one site the link runs over its LAN, as net's does.
        let lan = self.same_site(a, b);
        if let Some(m) = self.mesh(a) {
            m.observe_capacity(bpsa, capa);
            m.handle_connected(now, contact(idb, atb), role(b), upb, capb, lan);
        }
        if let Some(m) = self.mesh(b) {
            m.observe_capacity(bpsb, capb);
            m.handle_connected(now, contact(ida, ata), role(a), upa, capa, lan);
        }
        self.drain(a);
        self.drain(b);
    }

    pub(super) fn dial_failed(&mut self, a: u32, b: u32) {
        if !self.alive(a) {
            return;
        }
        self.d.dial_failures += 1;
        let peer = self.id_of(b);
        let now = self.instant(self.now);
        self.mesh_job(a, false, Call::DialFailed(now, peer));
    }

    pub(super) fn disconnect(&mut self, i: u32, peer: NodeId, reason: DisconnectReason) {
        let Some(j) = self.resolve(&peer) else { return };
        let now = self.now;
        let Some(c) = self.conn_mut(i, j) else {
            return;
        };
        if c.closed.is_some() {
            return;
        }
        // The connection is forgotten at once, and closed after the reason's delay.
        let delay = u64::try_from(reason.close_delay().as_nanos()).unwrap_or(Ns::MAX);
        c.closed = Some((i, now + delay));
        let conn = c.id;
        if delay == 0 {
            self.close_conn(i, j, conn);
        } else {
            self.at(
                now + delay,
                Ev::Close {
                    node: i,
                    peer: j,
                    conn,
                },
            );
        }
    }

    /// `i`'s close of its connection to `j` takes effect: what ran on it stops at `i`;
    /// `j` notices one latency later.
    pub(super) fn close_conn(&mut self, i: u32, j: u32, conn: u64) {
        if self.conns.by_id(conn, i, j).is_none() {
            return;
        }
        self.end_transfers_on(i, conn);
        if let Some(n) = self.node_mut(i) {
            n.partners.retain(|p| *p != j);
        }
        let lat = self.one_way(i, j);
        self.at(
            self.now + lat,
            Ev::Notice {
                node: j,
                peer: i,
                conn,
            },
        );
    }

    /// Node `n`'s transfers on connection `conn` end (its streams break).
    fn end_transfers_on(&mut self, n: u32, conn: u64) {
        let Some(x) = self.node(n) else { return };
        let on = |tr: &TRef| self.transfers.get(*tr).is_some_and(|t| t.conn == conn);
        let downs: Vec<TRef> = x.downs.iter().copied().filter(on).collect();
        let ups: Vec<TRef> = x.ups.iter().copied().filter(on).collect();
        // net aborts the requests silently; the mesh hears of the disconnection instead.
        for tr in downs {
            self.finish_download(tr, false);
        }
        for tr in ups {
            self.end_upload(tr);
        }
    }

    pub(super) fn notice(&mut self, n: u32, peer: u32, conn: u64) {
        if self.conns.by_id(conn, n, peer).is_some() {
            self.conns.free(conn as u32);
            for (me, other) in [(n, peer), (peer, n)] {
                self.unlink(me, other);
            }
        }
        if !self.alive(n) {
            return;
        }
        self.end_transfers_on(n, conn);
        // A mesh hears of the end only if it had not closed the connection itself.
        let listed = self.node(n).is_some_and(|x| x.partners.contains(&peer));
        if !listed {
            return;
        }
        if let Some(x) = self.node_mut(n) {
            x.partners.retain(|p| *p != peer);
        }
        let (now, id) = (self.instant(self.now), self.id_of(peer));
        self.mesh_job(n, false, Call::Disconnected(now, id));
    }

    pub(super) fn send(&mut self, i: u32, peer: NodeId, msg: Control) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        let bytes = wire::encoded_len(&msg) as u64;
        self.d.control_bytes += bytes;
        self.count_wire(i, j, bytes, true);
        let arrive = self.now + self.flight(i, j, bytes);
        let Some(c) = self.conn_mut(i, j) else {
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
}

/// A simulated peer as a connection reports it: at its public address (`net` reports that
/// one for a peer met over the LAN too), with its LAN address, reachable as its NAT allows.
fn contact(id: NodeId, (addr, nat, local): (SocketAddr, NatKind, Option<SocketAddr>)) -> PeerInfo {
    PeerInfo {
        id,
        addr,
        local,
        reach: reach_of(nat),
        site: None,
    }
}
