//! Segment parts on the move: requests, pushes and relays as transfers in a generational
//! slab, each paced piece by piece over its sender's upload link, refused, reset or
//! stopped, and taken into the receiver's assembly when its first frame and last piece land.

use super::nodes::{Assembly, Node, NOBODY, STORE};
use super::sites::NO_SITE;
use super::worker::{Call, Whole};
use super::{Ev, Ns, Sim, NS_PER_MS, ORIGIN};
use crate::NatKind;
use starling::node::{Answer, Assemblies, FirstFrame, Requester, Uploads};
use starling::stream::{part_pieces, NodeId, ALL_PARTS};
use starling::wire;
use std::time::Duration;

/// Added to the start order of the origin's served uploads, so its pushes go first.
const SERVE_AFTER_SEEDS: u64 = 1 << 48;

/// Size of a stop/reset frame, for the loss model.
const STOP_BYTES: u64 = 16;

/// A transfer's slot in the slab; `gen` makes references to a reused slot go stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TRef {
    pub(super) idx: u32,
    gen: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Kind {
    Push,
    #[default]
    Request,
}

/// One part of a segment on its way from `from` to `to`, pulled or pushed. Each end
/// finishes on its own (the sender when the last piece leaves or it stops, the receiver
/// when the part lands or it gives up); the slot is freed when both have.
#[derive(Debug, Default)]
pub(super) struct Transfer {
    gen: u32,
    pub(super) live: bool,
    pub(super) kind: Kind,
    pub(super) from: u32,
    pub(super) to: u32,
    pub(super) number: u64,
    part: u8,
    /// Its pieces: `[lo, hi)`.
    lo: u32,
    hi: u32,
    /// The reply carries the signed header (asked for, or a push).
    with_header: bool,
    /// A joiner's request for its join segment: served beyond the slot cap, as in net.
    join: bool,
    pub(super) conn: u64,
    /// Upload start order: the FIFO link serves older uploads first.
    order: u64,
    /// The holder started sending (first frame written).
    started: bool,
    /// Relaying: the transfer bringing this part to `from`, whose pieces bound ours.
    source: Option<TRef>,
    /// The next piece to book on the link.
    next: u32,
    /// Piece `next` is booked and leaves at the pending pump.
    booked: bool,
    /// Waiting for the upstream's piece `next` to arrive.
    waiting: bool,
    /// Bumped per scheduled pump, so older pumps go stale.
    pub(super) seq: u32,
    /// Holds one of `from`'s upload slots, for a requester of this kind.
    slot: bool,
    who: Requester,
    /// Uploads on its path at `from` once it was admitted, itself included.
    sharing: u64,
    /// Piece bytes sent.
    sent: u64,
    /// When the first frame lands at `to`.
    header_at: Ns,
    /// When each piece sent so far lands at `to` (in stream order, from `lo`).
    arrivals: Vec<Ns>,
    /// Uploads from `to` relaying this transfer while it arrives.
    relays: Vec<TRef>,
    /// Its first frame was taken at `to`: its pieces are flowing into `to`'s assembly.
    arriving: bool,
    /// It is the transfer `to`'s relays of (`number`, `part`) follow.
    partial: bool,
    pub(super) sender_done: bool,
    pub(super) receiver_done: bool,
    /// The receiver kept it as its first copy (its bytes are not waste).
    accepted: bool,
    /// It comes in across the receiver's site's WAN.
    wan_in: bool,
    /// It crosses a site's WAN, in or out.
    wan: bool,
    /// When its sender started it (wrote its first frame).
    began: Ns,
    /// When it was asked for (a request) or decided on (a push).
    asked: Ns,
}

impl Transfer {
    /// When the latest piece sent lands (the first frame, before any): pieces land in order.
    pub(super) fn landed(&self) -> Ns {
        self.arrivals.last().copied().unwrap_or(self.header_at)
    }
}

/// Transfers by generational index; a freed slot keeps its vectors' capacity.
#[derive(Debug, Default)]
pub(super) struct Slab {
    pub(super) items: Vec<Transfer>,
    free: Vec<u32>,
}

impl Slab {
    fn alloc(&mut self) -> TRef {
        if let Some(idx) = self.free.pop() {
            if let Some(t) = self.items.get_mut(idx as usize) {
                let (gen, mut arrivals, mut relays) = (
                    t.gen,
                    std::mem::take(&mut t.arrivals),
                    std::mem::take(&mut t.relays),
                );
                arrivals.clear();
                relays.clear();
                *t = Transfer {
                    gen,
                    live: true,
                    arrivals,
                    relays,
                    ..Transfer::default()
                };
                return TRef { idx, gen };
            }
        }
        let idx = self.items.len() as u32;
        self.items.push(Transfer {
            live: true,
            ..Transfer::default()
        });
        TRef { idx, gen: 0 }
    }

    pub(super) fn get(&self, r: TRef) -> Option<&Transfer> {
        self.items
            .get(r.idx as usize)
            .filter(|t| t.gen == r.gen && t.live)
    }

    fn get_mut(&mut self, r: TRef) -> Option<&mut Transfer> {
        self.items
            .get_mut(r.idx as usize)
            .filter(|t| t.gen == r.gen && t.live)
    }

    fn free(&mut self, r: TRef) {
        if let Some(t) = self.get_mut(r) {
            t.gen = t.gen.wrapping_add(1);
            t.live = false;
            self.free.push(r.idx);
        }
    }
}

impl Sim {
    /// A transfer of part `part` of `number` from `from` to `to` on `conn`, nothing sent yet.
    fn new_transfer(
        &mut self,
        kind: Kind,
        (from, to): (u32, u32),
        (number, part): (u64, u8),
        conn: u64,
    ) -> TRef {
        let tr = self.transfers.alloc();
        let receiving = self.alive(to);
        let wan_in = self.crosses_into_site(from, to);
        let wan = wan_in || self.crosses_into_site(to, from);
        let pieces = part_pieces(self.pieces as usize, usize::from(part)).unwrap_or(0..0);
        if let Some(t) = self.transfers.get_mut(tr) {
            t.kind = kind;
            t.from = from;
            t.to = to;
            t.number = number;
            t.part = part;
            t.lo = pieces.start as u32;
            t.hi = pieces.end as u32;
            t.next = t.lo;
            t.conn = conn;
            t.wan_in = wan_in;
            t.wan = wan;
            t.asked = self.now;
            // Nobody is there to receive a push to a vanished viewer.
            t.receiver_done = !receiving;
        }
        if receiving {
            if let Some(n) = self.node_mut(to) {
                n.downs.push(tr);
            }
        }
        tr
    }

    pub(super) fn request(&mut self, i: u32, peer: NodeId, (number, part): (u64, u8), join: bool) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        // As net: the header is asked for unless a transfer of this segment brought it.
        let header = self.node(i).is_none_or(|n| n.assembly(number).is_none());
        let req = wire::Request {
            number,
            part,
            header,
            join,
        };
        let bytes = wire::encoded_len(&req) as u64;
        self.d.control_bytes += bytes;
        self.count_wire(i, j, bytes, true);
        self.d.requests += 1;
        if j == ORIGIN {
            self.d.origin_requests += 1;
        }
        let tr = self.new_transfer(Kind::Request, (j, i), (number, part), conn);
        if let Some(t) = self.transfers.get_mut(tr) {
            t.with_header = header;
            t.join = join;
        }
        if self.crosses_into_site(j, i) {
            self.note_wan_request(i, (number, part));
        }
        let t = self.now + self.flight(i, j, bytes);
        self.at(t, Ev::RequestArrive { tr });
    }

    pub(super) fn cancel(&mut self, i: u32, peer: NodeId, number: u64, part: u8) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(tr) = self.node(i).and_then(|n| {
            n.downs.iter().copied().find(|tr| {
                self.transfers.get(*tr).is_some_and(|t| {
                    t.kind == Kind::Request && t.from == j && t.number == number && t.part == part
                })
            })
        }) else {
            return;
        };
        self.d.cancels += 1;
        // net aborts the request task: its partial (if it was one) dies with it, and the
        // dropped stream tells the holder to stop.
        self.finish_download(tr, false);
        if self.usable(i, j).is_some() {
            let t = self.now + self.flight(i, j, STOP_BYTES);
            self.at(t, Ev::StopArrive { tr });
        }
    }

    pub(super) fn push(&mut self, i: u32, peer: NodeId, number: u64, part: u8) {
        let Some(j) = self.resolve(&peer) else { return };
        let Some(conn) = self.usable(i, j) else {
            return;
        };
        let now = self.now;
        let Some(n) = self.node(i) else { return };
        if !n.holds(number) {
            return;
        }
        // Seeding is optional: net skips it when the uplink is already queued up.
        if !Uploads::may_push(Duration::from_nanos(n.link.backlog(now))) {
            self.d.pushes_skipped += 1;
            return;
        }
        self.d.pushes += 1;
        let tr = self.new_transfer(Kind::Push, (i, j), (number, part), conn);
        if let Some(t) = self.transfers.get_mut(tr) {
            t.with_header = true;
        }
        self.start_upload(tr);
    }

    /// The request reaches holder `s`: refuse it (`Unavailable`, `Busy`) or start serving,
    /// from the store or, while it still arrives, from the partial (cut-through).
    pub(super) fn request_arrive(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        let (s, r, number, part, conn) = (t.from, t.to, t.number, t.part, t.conn);
        let join = t.join;
        // Cancelled before it got here (or the connection ended): nothing to serve.
        if t.sender_done || t.receiver_done || !self.deliverable(r, s, conn, 0) {
            return self.end_upload(tr);
        }
        let now = self.now;
        let Some(n) = self.node(s) else { return };
        // Served from what is here (the whole segment, or this part complete), or relayed
        // while this part arrives; anything else is Unavailable, as in net.
        let full = n.uploads && n.got(number) & (1 << part) != 0;
        let partial = if n.uploads && !full {
            n.partial(number, part)
        } else {
            None
        };
        if !full && partial.is_none() {
            self.d.unavailable += 1;
            return self.refuse(tr, false);
        }
        let (cap, backlog) = (self.cap_of(s), Duration::from_nanos(n.link.backlog(now)));
        let who = Requester {
            symmetric: self.node(r).is_some_and(|x| x.nat == NatKind::Symmetric),
            lan: self.same_site(s, r),
            peer: u64::from(r),
        };
        let at = self.instant(now);
        let Some((answer, sharing)) = self.node_mut(s).map(|n| {
            let a = n
                .upload
                .admit(at, true, (number, part), join, (cap, backlog), who);
            (a, n.upload.path(who.lan).active())
        }) else {
            return;
        };
        match answer {
            Answer::Serve => {}
            Answer::BusySlots => {
                self.d.busy += 1;
                return self.refuse(tr, true);
            }
            Answer::BusyBacklog => {
                self.d.busy += 1;
                self.d.busy_backlog += 1;
                return self.refuse(tr, true);
            }
            Answer::Unavailable => return,
        }
        if let Some(t) = self.transfers.get_mut(tr) {
            t.slot = true;
            t.who = who;
            t.sharing = sharing;
            t.source = partial;
        }
        if let Some(u) = partial {
            self.d.relayed += 1;
            let alive = |x: &TRef, slab: &Slab| slab.get(*x).is_some_and(|t| !t.sender_done);
            let mut relays = self
                .transfers
                .get_mut(u)
                .map(|t| std::mem::take(&mut t.relays))
                .unwrap_or_default();
            relays.retain(|x| alive(x, &self.transfers));
            relays.push(tr);
            if let Some(t) = self.transfers.get_mut(u) {
                t.relays = relays;
            }
        }
        self.start_upload(tr);
    }

    /// Holder answers `Busy` or `Unavailable`.
    fn refuse(&mut self, tr: TRef, busy: bool) {
        let Some(t) = self.transfers.get_mut(tr) else {
            return;
        };
        t.sender_done = true;
        let (s, r) = (t.from, t.to);
        let bytes = if busy {
            self.busy_bytes
        } else {
            self.unavailable_bytes
        };
        self.d.control_bytes += bytes;
        self.count_wire(s, r, bytes, true);
        let at = self.now + self.flight(s, r, bytes);
        self.at(at, Ev::Fail { tr, busy });
    }

    /// The holder writes the reply (not rate-limited in net) and starts on the pieces.
    fn start_upload(&mut self, tr: TRef) {
        let with_header = self.transfers.get(tr).is_some_and(|t| t.with_header);
        let reply_bytes = if with_header {
            self.reply_header_bytes
        } else {
            self.reply_part_bytes
        };
        self.d.control_bytes += reply_bytes;
        let Some((from, to)) = self.transfers.get(tr).map(|t| (t.from, t.to)) else {
            return;
        };
        // It goes out with the first piece, in its packets.
        self.count_wire(from, to, reply_bytes, false);
        let mut order = self.node_mut(from).map_or(0, |n| {
            n.uploads_started += 1;
            n.uploads_started
        });
        let Some(t) = self.transfers.get_mut(tr) else {
            return;
        };
        if t.from == ORIGIN && t.kind != Kind::Push {
            // Served after every seeding push (`UploadClass::Serve`).
            order += SERVE_AFTER_SEEDS;
        }
        t.started = true;
        t.began = self.now;
        t.order = order;
        let (s, r) = (t.from, t.to);
        if let Some(n) = self.node_mut(s) {
            n.ups.push(tr);
        }
        let header_at = self.now + self.flight(s, r, reply_bytes);
        if let Some(t) = self.transfers.get_mut(tr) {
            t.header_at = header_at;
        }
        self.at(header_at, Ev::HeaderArrive { tr });
        self.pump(tr);
    }

    fn schedule_pump(&mut self, tr: TRef, at: Ns) {
        if let Some(t) = self.transfers.get_mut(tr) {
            t.seq = t.seq.wrapping_add(1);
            let seq = t.seq;
            self.at(at, Ev::Pump { tr, seq });
        }
    }

    pub(super) fn piece_len(&self, i: u32) -> u64 {
        let start = u64::from(i) * self.piece_bytes;
        self.seg_bytes.saturating_sub(start).min(self.piece_bytes)
    }

    /// Moves upload `tr` on at `now`, as `send_segment`/`relay_partial` do: the booked piece
    /// leaves; the next one is booked on the link once it is here (a relay waits for its
    /// upstream's piece to land). Loops while pieces leave at once (burst tokens).
    pub(super) fn pump(&mut self, tr: TRef) {
        loop {
            let now = self.now;
            let Some(t) = self.transfers.get(tr) else {
                return;
            };
            if t.sender_done {
                return;
            }
            let (s, r, order, source, hi, wan) = (t.from, t.to, t.order, t.source, t.hi, t.wan);
            let sent_one = t.booked;
            if t.booked {
                let i = t.next;
                let bytes = self.piece_len(i);
                let lands = self.carry(s, r, bytes);
                let Some(t) = self.transfers.get_mut(tr) else {
                    return;
                };
                // One stream: a piece cannot overtake the one before it.
                let lands = lands.max(t.landed());
                t.arrivals.push(lands);
                t.sent += bytes;
                t.next += 1;
                t.booked = false;
                self.count_sent(s, r, bytes);
                self.wake_relays(tr, lands);
            }
            let Some(t) = self.transfers.get(tr) else {
                return;
            };
            let i = t.next;
            if i >= hi {
                let lands = t.landed();
                self.end_upload(tr);
                self.at(lands, Ev::Deliver { tr });
                return;
            }
            if sent_one {
                // FIFO: an older upload with a piece ready takes its turn.
                if let Some(other) = self
                    .node_mut(s)
                    .and_then(|n| n.link.yield_to_older(tr, order))
                {
                    self.schedule_pump(other, now);
                    return;
                }
            }
            // Piece `i` is here to send: at once from the store, or when it lands upstream.
            let here = match source.and_then(|u| self.transfers.get(u)) {
                None => Some(now),
                Some(u) => u.arrivals.get(i.saturating_sub(u.lo) as usize).copied(),
            };
            let Some(here) = here else {
                if let Some(t) = self.transfers.get_mut(tr) {
                    t.waiting = true;
                }
                self.yield_link(s, tr);
                return;
            };
            if here > now {
                self.yield_link(s, tr);
                self.schedule_pump(tr, here);
                return;
            }
            // A site's WAN link on the way is full: the piece waits its turn here.
            if let Some((site, inwards)) = wan.then(|| self.wan_full(s, r)).flatten() {
                self.yield_link(s, tr);
                self.wait_for_wan(tr, site, inwards);
                return;
            }
            let bytes = self.piece_len(i);
            let Some(n) = self.node_mut(s) else { return };
            if !n.link.may_send(tr, order) {
                return;
            }
            let leaves = n.link.book(now, bytes);
            if let Some(t) = self.transfers.get_mut(tr) {
                t.booked = true;
            }
            if leaves > now {
                self.schedule_pump(tr, leaves);
                return;
            }
        }
    }

    /// Whether transfer `tr` crosses a site's WAN.
    pub(super) fn crosses_wan(&self, tr: TRef) -> bool {
        self.transfers.get(tr).is_some_and(|t| t.wan)
    }

    /// Whether upload `tr` is still sending and has no piece booked (as one waiting in a
    /// site's WAN line).
    pub(super) fn waits_for_wan(&self, tr: TRef) -> bool {
        self.transfers
            .get(tr)
            .is_some_and(|t| !t.sender_done && !t.booked)
    }

    /// FIFO: `tr` waits for data, so the next upload in line may use the link.
    fn yield_link(&mut self, s: u32, tr: TRef) {
        if let Some(next) = self.node_mut(s).and_then(|n| n.link.release(tr)) {
            self.schedule_pump(next, self.now);
        }
    }

    /// Upstream `u` sent a piece landing at `lands`: relays waiting for it go on then.
    fn wake_relays(&mut self, u: TRef, lands: Ns) {
        let relays = match self.transfers.get_mut(u) {
            Some(t) if !t.relays.is_empty() => std::mem::take(&mut t.relays),
            _ => return,
        };
        for &d in &relays {
            let wake = self.transfers.get_mut(d).is_some_and(|t| {
                let w = t.waiting && !t.sender_done && t.source == Some(u);
                if w {
                    t.waiting = false;
                }
                w
            });
            if wake {
                self.schedule_pump(d, lands);
            }
        }
        if let Some(t) = self.transfers.get_mut(u) {
            t.relays = relays;
        }
    }

    /// Node `i`'s row in the per-NAT counters ([`super::nodes::nat_index`]).
    fn nat_row(&self, i: u32) -> Option<usize> {
        self.node(i).map(|n| super::nodes::nat_index(n.nat))
    }

    fn count_sent(&mut self, s: u32, r: u32, bytes: u64) {
        self.d.media_sent_bytes += bytes;
        let to = self.nat_row(r);
        if s == ORIGIN {
            self.origin_bytes += bytes;
            if let Some(b) = to.and_then(|k| self.d.origin_bytes_by_nat.get_mut(k)) {
                *b += bytes;
            }
        } else if let Some(from) = self.nat_row(s) {
            if let Some(b) = to.and_then(|k| {
                self.d
                    .bytes_by_nat
                    .get_mut(from)
                    .and_then(|row| row.get_mut(k))
            }) {
                *b += bytes;
            }
        }
    }

    /// The sender is done with `tr` (all sent, stopped, reset, or gone): its slot and its
    /// turn on the link go to others.
    pub(super) fn end_upload(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get_mut(tr) else {
            return;
        };
        if t.sender_done {
            return self.maybe_free(tr);
        }
        t.sender_done = true;
        let seed = (t.kind == Kind::Push && t.from == ORIGIN)
            .then(|| (t.to, t.conn, t.number, t.part, t.next >= t.hi, t.landed()));
        let (s, slot, source, started) = (t.from, t.slot, t.source.take(), t.started);
        t.slot = false;
        // A part held whole here and sent to the end teaches its path's slots: how long
        // its bytes took to land, less the one-way latency (net's round trip excluded).
        let measured = (source.is_none() && t.next >= t.hi && t.hi > t.lo)
            .then(|| (t.sent, t.landed().saturating_sub(t.began), t.to));
        let (who, sharing) = (t.who, t.sharing);
        if let Some(u) = source {
            if let Some(ut) = self.transfers.get_mut(u) {
                ut.relays.retain(|x| *x != tr);
            }
        }
        let sent = measured.map(|(bytes, took, to)| {
            let took = took.saturating_sub(self.one_way(s, to));
            (bytes, Duration::from_nanos(took), sharing)
        });
        let at = self.instant(self.now);
        if started {
            if let Some(n) = self.node_mut(s) {
                if slot {
                    n.upload.finish(at, who, sent);
                }
                n.ups.retain(|x| *x != tr);
            }
            self.yield_link(s, tr);
        }
        if let Some((to, conn, number, part, whole, landed)) = seed {
            self.check_seed(to, conn, (number, part), whole, landed);
        }
        self.maybe_free(tr);
    }

    /// The origin's push to `to` ended (`whole`: every piece sent): as `net`'s `push`,
    /// it waits up to `seed_confirm_wait` for the acknowledgement. One cut short was
    /// stopped by its live receiver (confirmed), or its connection ended (reported now).
    fn check_seed(
        &mut self,
        to: u32,
        conn: u64,
        (number, part): (u64, u8),
        whole: bool,
        landed: Ns,
    ) {
        if !whole {
            if !self.deliverable(ORIGIN, to, conn, self.now) {
                self.at(self.now, Ev::SeedUnconfirmed { to, number, part });
            }
            return;
        }
        let rtt = Duration::from_nanos(self.rtt(ORIGIN, to));
        let wait =
            u64::try_from(starling::node::seed_confirm_wait(rtt).as_nanos()).unwrap_or(Ns::MAX);
        let deadline = self.now.saturating_add(wait);
        let back = landed.max(self.now) + self.one_way(to, ORIGIN);
        let ev = Ev::SeedCheck {
            to,
            conn,
            number,
            part,
            landed,
            deadline,
        };
        self.at(back.min(deadline), ev);
    }

    /// The receiver is done with `tr` (`ok`: its part landed). If relays followed it: on
    /// success they have every piece; otherwise they follow another copy of the part still
    /// arriving here, or, with none, are reset (`net`'s `relay_part` stops once nothing
    /// brings its part, and the stream is reset). A new source may land the pieces the
    /// failed one had already brought later than they were here: the sim keeps no pieces
    /// of a part that is not complete.
    pub(super) fn finish_download(&mut self, tr: TRef, ok: bool) {
        let Some(t) = self.transfers.get_mut(tr) else {
            return;
        };
        if t.receiver_done {
            return;
        }
        t.receiver_done = true;
        t.arriving = false;
        let (r, number, part, partial) = (t.to, t.number, t.part, t.partial);
        if let Some(n) = self.node_mut(r) {
            n.downs.retain(|x| *x != tr);
        }
        if partial {
            if let Some(slot) = self
                .node_mut(r)
                .and_then(|n| n.assembly_mut(number))
                .and_then(|a| a.arriving.get_mut(usize::from(part)))
            {
                if *slot == Some(tr) {
                    *slot = None;
                }
            }
            let heir = if ok {
                None
            } else {
                self.other_copy(r, number, part)
            };
            match heir {
                Some(x) => self.hand_over(tr, x),
                None => self.release_relays(tr, ok),
            }
        }
        self.maybe_free(tr);
    }

    /// Another transfer of (`number`, `part`) whose pieces are flowing into `r`.
    fn other_copy(&self, r: u32, number: u64, part: u8) -> Option<TRef> {
        let n = self.node(r)?;
        n.downs.iter().copied().find(|x| {
            self.transfers
                .get(*x)
                .is_some_and(|t| t.arriving && t.number == number && t.part == part)
        })
    }

    /// Relays following `from` follow `to` instead, which becomes `to`'s node's partial.
    fn hand_over(&mut self, from: TRef, to: TRef) {
        let relays = match self.transfers.get_mut(from) {
            Some(t) => {
                t.partial = false;
                std::mem::take(&mut t.relays)
            }
            None => Vec::new(),
        };
        let Some(t) = self.transfers.get_mut(to) else {
            return;
        };
        t.partial = true;
        let (r, number, part) = (t.to, t.number, t.part);
        if let Some(slot) = self
            .node_mut(r)
            .and_then(|n| n.assembly_mut(number))
            .and_then(|a| a.arriving.get_mut(usize::from(part)))
        {
            *slot = Some(to);
        }
        for &d in &relays {
            let waiting = self.transfers.get_mut(d).is_some_and(|dt| {
                dt.source = Some(to);
                std::mem::take(&mut dt.waiting) && !dt.sender_done
            });
            // It looks for its next piece in the new source (and waits again if not sent).
            if waiting {
                self.schedule_pump(d, self.now);
            }
        }
        if let Some(t) = self.transfers.get_mut(to) {
            t.relays.extend(relays);
        }
    }

    /// Relays following `u` stop following it: with its part here (`ok`) they go on from
    /// what is here; otherwise they are reset.
    fn release_relays(&mut self, u: TRef, ok: bool) {
        let relays = match self.transfers.get_mut(u) {
            Some(t) => {
                t.partial = false;
                std::mem::take(&mut t.relays)
            }
            None => return,
        };
        for d in relays {
            if ok {
                // Every piece is here, so none waits; should one, it goes on at once.
                let waiting = self.transfers.get_mut(d).is_some_and(|dt| {
                    if dt.source == Some(u) {
                        dt.source = None;
                    }
                    std::mem::take(&mut dt.waiting) && !dt.sender_done
                });
                if waiting {
                    self.schedule_pump(d, self.now);
                }
            } else {
                self.reset_relay(d);
            }
        }
    }

    /// Relay `d`'s upstream failed: its stream is reset, and the requester hears of it.
    fn reset_relay(&mut self, d: TRef) {
        let Some(t) = self.transfers.get_mut(d) else {
            return;
        };
        if t.sender_done {
            return;
        }
        t.source = None;
        let (s, r, receiving) = (t.from, t.to, !t.receiver_done);
        self.d.relay_resets += 1;
        self.end_upload(d);
        if receiving {
            let at = self.now + self.flight(s, r, STOP_BYTES);
            self.at(at, Ev::Fail { tr: d, busy: false });
        }
    }

    /// Frees the slot once both ends are done; bytes nobody kept are waste.
    fn maybe_free(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        if !(t.sender_done && t.receiver_done) {
            return;
        }
        if !t.accepted {
            self.d.wasted_bytes += t.sent;
            if t.wan_in {
                self.d.site_wan_down_wasted_bytes += t.sent;
            }
        }
        self.transfers.free(tr);
    }

    /// A failure answer reaches the requester: the mesh hears of it.
    pub(super) fn fail(&mut self, tr: TRef, busy: bool) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        if t.receiver_done {
            return self.maybe_free(tr);
        }
        let (s, r, number, part) = (t.from, t.to, t.number, t.part);
        self.finish_download(tr, false);
        let (now, id) = (self.instant(self.now), self.id_of(s));
        self.mesh_job(
            r,
            false,
            Call::Failed {
                now,
                from: id,
                number,
                part,
                busy,
            },
        );
    }

    /// A part's first frame lands: the receiver learns the bitrate (from a header), refuses
    /// an unwanted part, or takes it into the segment's assembly and tells the mesh it is
    /// receiving, as `net`'s `receive_part` does.
    pub(super) fn header_arrive(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        if t.receiver_done {
            return;
        }
        let (s, r, number, part, kind, with_header) =
            (t.from, t.to, t.number, t.part, t.kind, t.with_header);
        let bps = self.seg_bytes * 8000 / self.cfg.segment_ms.max(1);
        let (now, sid) = (self.instant(self.now), self.id_of(s));
        let (bit, empty) = (1u32 << part, self.empty_parts);
        let Some(n) = self.node_mut(r) else { return };
        if with_header {
            n.upload.note_bitrate(bps);
        }
        let wanted = Assemblies::<Assembly>::wanted(number, n.holds(number), n.newest);
        let make = with_header.then_some(Assembly::new);
        let first = n
            .assembling
            .first_frame(number, wanted, kind == Kind::Push, make);
        // The segment's other empty parts are held as of its header (net reports them).
        let mut empties = 0;
        let assembly = match first {
            FirstFrame::Take { created } => {
                let a = n.assembly_mut(number);
                if let Some(a) = a.filter(|_| created) {
                    empties = empty & !bit;
                    a.got |= empties;
                }
                n.assembly_mut(number)
            }
            // Lost, given up or unwanted: the transfer stops (pushes always carry a header).
            FirstFrame::Unwanted | FirstFrame::Lost | FirstFrame::PushWithoutHeader => None,
        };
        let accepted = match assembly {
            // An empty part is answered even when held: the mesh counts it as held.
            Some(a) if a.got & bit == 0 || empty & bit != 0 => {
                let slot = a.arriving.get_mut(usize::from(part));
                // One transfer per part for relays to follow; a second copy only lands.
                let follow = slot.as_ref().is_some_and(|x| x.is_none());
                if let Some(x) = slot.filter(|x| x.is_none()) {
                    *x = Some(tr);
                }
                Some(follow)
            }
            _ => None,
        };
        let Some(follow) = accepted else {
            self.d.unwanted += 1;
            self.finish_download(tr, false);
            let at = self.now + self.flight(r, s, STOP_BYTES);
            self.at(at, Ev::StopArrive { tr });
            if kind == Kind::Request {
                self.mesh_job(
                    r,
                    false,
                    Call::Failed {
                        now,
                        from: sid,
                        number,
                        part,
                        busy: false,
                    },
                );
            }
            return;
        };
        if let Some(t) = self.transfers.get_mut(tr) {
            t.arriving = true;
            t.partial = follow;
        }
        if kind == Kind::Push && s == ORIGIN {
            if let Some(n) = self.node_mut(r) {
                n.upload.note_seeded(number, part);
            }
        }
        // The mesh hears of a second copy too: its first frame is the supplier's answer, so
        // the request is not counted as stalled.
        self.mesh_job(
            r,
            false,
            Call::Receiving {
                now,
                from: sid,
                number,
                part,
                empties,
            },
        );
    }

    /// A part's last piece lands: the part is kept unless it is here already, and the
    /// segment is stored when this part completes it.
    pub(super) fn deliver(&mut self, tr: TRef) {
        let Some(t) = self.transfers.get(tr) else {
            return;
        };
        if t.receiver_done {
            return self.maybe_free(tr);
        }
        let (s, r, number, part, bytes) = (t.from, t.to, t.number, t.part, t.sent);
        let (wan_in, pushed, took) = (t.wan_in, t.kind == Kind::Push, self.now - t.began);
        let waited = t.began.saturating_sub(t.asked);
        let (bit, empty) = (1u32 << part, self.empty_parts);
        // (kept, whole, from several suppliers, the part's other copy relays followed)
        let mut kept = (false, false, false, None);
        // Its slot in the store ring must not be the newest's.
        let room = |n: &Node| n.newest.is_none_or(|k| number.saturating_add(STORE) > k);
        if let Some(n) = self
            .node_mut(r)
            .filter(|n| n.alive() && !n.holds(number) && room(n))
        {
            if let Some(a) = n.assembly_mut(number).filter(|a| a.got & bit == 0) {
                a.got |= bit;
                // Suppliers count by the pieces they brought.
                if empty & bit == 0 {
                    if a.first_from == NOBODY {
                        a.first_from = s;
                    }
                    a.several |= a.first_from != s;
                }
                let other = a
                    .arriving
                    .get_mut(usize::from(part))
                    .and_then(|x| x.take_if(|x| *x != tr));
                kept = (true, a.got == ALL_PARTS, a.several, other);
            }
        }
        let (fresh, whole, several, other) = kept;
        if fresh {
            if let Some(t) = self.transfers.get_mut(tr) {
                t.accepted = true;
            }
            // An empty part crossed nothing.
            if wan_in && empty & bit == 0 {
                self.kept_across_wan(r, (number, part), s == ORIGIN, pushed);
            }
            self.d.parts_kept += 1;
            self.d.parts_kept_ms += took as f64 / NS_PER_MS as f64;
            if wan_in && s != ORIGIN {
                self.d.site_fed_parts += 1;
                self.d.site_fed_ms += took as f64 / NS_PER_MS as f64;
                self.d.site_fed_wait_ms += waited as f64 / NS_PER_MS as f64;
            }
            if self.site_of(s) != NO_SITE && !self.same_site(s, r) {
                self.d.site_served_parts += 1;
                self.d.site_served_ms += took as f64 / NS_PER_MS as f64;
            }
        }
        // A second copy landed first: relays following the other go on from what is here.
        if let Some(u) = other {
            self.release_relays(u, true);
        }
        self.finish_download(tr, true);
        if whole {
            if let Some(n) = self.node_mut(r) {
                n.assembling.remove(number);
            }
            self.d.multi_supplier_segments += u64::from(several);
            self.accept(r, number);
        }
        // Every verified part is reported, a second copy too, then the whole.
        let (now, sid) = (self.instant(self.now), self.id_of(s));
        let whole = whole.then_some(Whole {
            duration: self.cfg.segment(),
            bytes: self.seg_bytes,
        });
        self.mesh_job(
            r,
            false,
            Call::Delivered {
                now,
                from: sid,
                number,
                part,
                bytes,
                whole,
            },
        );
    }
}
