//! What to ask for, and of whom: [`Mesh::schedule`] ranks the wanted parts ([`PartRank`])
//! and picks a supplier for each; the reports of how requests went (a part arriving,
//! arrived, failed, or left unanswered) feed back into it.

use super::peers::Peer;
use super::segments::{bit, bits, Inflight};
use super::{Action, Mesh, HAVE_HOLD};
use crate::node::Misbehaviour;
use crate::stream::{NodeId, PARTS};
use crate::wire::{Control, Reach, Role};
use rand::Rng;
use std::time::{Duration, Instant};

/// How long a peer that answered Busy is left alone.
pub(super) const BUSY_BACKOFF: Duration = Duration::from_millis(100);

/// Shortest wait for a request's header before the supplier counts as stalled.
const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a supplier that stalled a request is not asked.
const STALL_BACKOFF: Duration = Duration::from_secs(2);

/// Requests left unanswered in a row that get a peer dropped and banned.
const MAX_STALLS: u32 = 3;

/// Requests a node keeps in flight across its site's WAN for parts a neighbour of its site
/// fetches ([`Mesh::may_fetch_for_a_neighbour`]).
const SITE_EXTRA_INFLIGHT: usize = 1;

/// How recently another supplier must have delivered a part for a stall to count against
/// the peer that stalled.
const STALL_WITNESS: Duration = Duration::from_secs(2);

/// [`Mesh::schedule`]'s work lists, kept between calls.
#[derive(Debug, Default)]
pub(super) struct Scratch {
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
        // Its stall count is reset when the part completes, not here: a first frame alone
        // is how a squatter holds a part, and must not clear its record.
        if !self.peers.contains_key(&from) {
            return;
        }
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
    ///
    /// A viewer with partners on its site holds what it tells partners off it for
    /// [`HAVE_HOLD`], so parts arriving together cross the site's WAN in one message: every
    /// viewer of the site announces to its own partners elsewhere, and each message costs a
    /// packet and its acknowledgement on the WAN the site shares. The first news of a
    /// segment's parts comes within tens of milliseconds of each other (lab, 2026-12-07).
    pub(super) fn announce(&mut self, number: u64, parts: u32, except: Option<NodeId>) {
        let origin = self.cfg.origin;
        let due = self.last_now + HAVE_HOLD;
        let in_site = self.peers.values().any(|p| p.same_site);
        let mut news = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let m = parts & !p.have.get(number);
            if *id == origin || Some(*id) == except || m == 0 || p.quiet {
                continue;
            }
            if !in_site || p.same_site {
                news.push((*id, number, m));
                continue;
            }
            match &mut p.held_have {
                Some((n, held, _)) if *n == number => *held |= m,
                held => {
                    // One segment held at a time: news of the next sends the last.
                    if let Some((n, h, _)) = held.replace((number, m, due)) {
                        news.push((*id, n, h & !p.have.get(n)));
                    }
                    self.have_due = Some(self.have_due.map_or(due, |d| d.min(due)));
                }
            }
        }
        self.send_haves(news);
    }

    /// Sends each `(partner, segment, parts)` that still names a part.
    fn send_haves(&mut self, news: Vec<(NodeId, u64, u32)>) {
        for (p, number, parts) in news {
            if parts != 0 {
                self.send(p, Control::Have { number, parts });
            }
        }
    }

    /// Sends the held announcements ([`Mesh::announce`]) whose time has come.
    pub(super) fn send_held_haves(&mut self, now: Instant) {
        if self.have_due.is_none_or(|d| now < d) {
            return;
        }
        let mut next: Option<Instant> = None;
        let mut news = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            match p.held_have {
                Some((n, m, due)) if now >= due => {
                    p.held_have = None;
                    news.push((*id, n, m & !p.have.get(n)));
                }
                Some((_, _, due)) => next = Some(next.map_or(due, |t| t.min(due))),
                None => {}
            }
        }
        self.have_due = next;
        self.send_haves(news);
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
            // It delivered bytes: not a stall. An empty part (a segment with fewer pieces
            // than parts) is whole with its first frame, so it proves nothing.
            if len > 0 {
                p.stalls = 0;
            }
        }
        if len > 0 {
            self.last_delivery = Some((now, from));
        }
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
        // A partner of our own site that fails a part was relaying it from across the WAN
        // we share and lost it there: it is still our best supplier of the segment's other
        // parts, so only this part is no longer asked of it.
        let same_site = self.peers.get(&peer).is_some_and(|p| p.same_site);
        self.give_up(peer, number, j, !busy && !same_site);
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

    /// Part `part` of `number` from `peer` (asked for or pushed) began and then went silent
    /// ([`crate::node::PIECE_SILENCE`]): it is asked elsewhere at once, as an unanswered
    /// request would be, and counts as a stall of `peer`'s, which gets it banned if repeated.
    pub fn handle_part_stalled(&mut self, now: Instant, peer: NodeId, number: u64, part: u8) {
        self.last_now = self.last_now.max(now);
        let j = usize::from(part);
        let same_site = self.peers.get(&peer).is_some_and(|p| p.same_site);
        self.give_up(peer, number, j, !same_site);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.have.remove(number, bit(j));
        }
        // The origin's pushes are re-asked too, but it is never backed off from: it is the
        // fallback of every urgent part.
        if !self.is_origin(&peer) {
            self.stalled(now, peer);
        }
        self.schedule(now);
    }

    /// Forgets that part `j` of `number` is arriving from, or asked of, `peer`; `failed`: and
    /// asks `peer` for nothing more of that segment.
    fn give_up(&mut self, peer: NodeId, number: u64, j: usize, failed: bool) {
        let mut was_ours = false;
        if let Some(s) = self.segs.get_mut(&number) {
            if let Some(&ps) = s.parts.get(j) {
                if ps.receiving_from.is_none_or(|f| f == peer) {
                    s.set_arriving(j, None);
                    // Announced as it began arriving, and now it is not: announce it again
                    // when it next begins, for partners that asked and were refused
                    // meanwhile forget it.
                    if s.held & bit(j) == 0 {
                        s.announced &= !bit(j);
                    }
                }
                was_ours = ps.inflight.is_some_and(|i| i.peer == peer);
                if was_ours {
                    s.set_inflight(j, None);
                }
            }
            if failed && !s.failed.contains(&peer) && s.failed.len() < 16 {
                s.failed.push(peer);
            }
        }
        if was_ours {
            self.release(peer);
        }
    }

    /// How long a request may go without its header before the supplier counts as stalled.
    pub(super) fn header_timeout(&self) -> Duration {
        (self.cfg.playout_budget / 4)
            .max(MIN_HEADER_TIMEOUT)
            .min(self.cfg.request_timeout)
    }

    /// `peer` left a request unanswered: back off from it (unless it is of our own site),
    /// and after
    /// [`MAX_STALLS`] in a row (no answer in between) drop and ban it. A stall counts only
    /// when another supplier delivered within [`STALL_WITNESS`]: when nothing arrives from
    /// anyone, our own congested link is the likelier cause, and banning honest partners
    /// for it would cut a congested site off for good. Nor does a partner of our own site's
    /// stall count: it relays what crosses the WAN we share, so its silence is that link's.
    pub(super) fn stalled(&mut self, now: Instant, peer: NodeId) {
        let witnessed = self.last_delivery.is_some_and(|(t, from)| {
            from != peer && now.saturating_duration_since(t) <= STALL_WITNESS
        });
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.same_site {
            // Backing off would send our requests across the WAN whose slowness it shows.
            return;
        }
        p.busy_until = Some(now + STALL_BACKOFF);
        if !witnessed {
            return;
        }
        p.stalls += 1;
        if p.stalls >= MAX_STALLS && !self.is_origin(&peer) {
            self.misbehaved(now, peer, Misbehaviour::LeavesRequestsUnanswered);
        }
    }

    /// Decides what to request now, part by part. Most urgent first; otherwise rarest first.
    pub(super) fn schedule(&mut self, now: Instant) {
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
        // Nothing can be asked of a partner, nor of the origin: ordering is not worth it,
        // and this is the common case.
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
            late,
            ..
        } in order.iter()
        {
            if inflight >= self.cfg.max_inflight_total && join_segment != Some(n) {
                continue;
            }
            let j = (k + self.part_offset) % PARTS;
            let pick = self.pick_supplier(n, j, (urgent, late));
            let chosen = match pick {
                Some(p) => Some(p),
                // No partner can deliver: go to the origin once the wait is over; on a site,
                // only the neighbour that fetches this part does, until it is late (and then
                // one such part at a time).
                None if urgent
                    && (self.fetches_for_site(n, j)
                        || (late && self.may_fetch_for_a_neighbour())) =>
                {
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

    /// The partner to ask for part `part` of segment `n`: one of our own site first (a LAN
    /// away), then one not public (unless we are behind a symmetric NAT), the least loaded,
    /// the fastest, a random one. One of another site is asked
    /// only by the neighbour that fetches this part for the site
    /// ([`Mesh::fetches_for_site`]), or by another once the part is `urgent`, one part at a
    /// time ([`Mesh::may_fetch_for_a_neighbour`]): the others get it from that neighbour over
    /// the LAN, so a site pulls each part across its WAN about once.
    fn pick_supplier(
        &mut self,
        n: u64,
        part: usize,
        (urgent, late): (bool, bool),
    ) -> Option<NodeId> {
        let failed: &[NodeId] = self.segs.get(&n).map_or(&[], |s| s.failed.as_slice());
        let max = self.cfg.max_inflight_per_partner;
        let mut best: Option<(bool, bool, usize, i64, u32, NodeId)> = None;
        for (id, p) in &self.peers {
            if p.is_origin()
                || !p.uploads
                || !p.askable(max, self.last_now)
                || p.have.get(n) & bit(part) == 0
                || failed.contains(id)
            {
                continue;
            }
            let speed = -(p.throughput.unwrap_or(0.0) as i64);
            // A public partner is asked after the others by whoever can pair with others:
            // peers behind symmetric NATs can be fed by public ones alone.
            let spare = self.reach != Reach::Symmetric && p.reach == Reach::Public;
            let key = (
                !p.same_site,
                spare,
                p.inflight,
                speed,
                self.rng.gen::<u32>(),
                *id,
            );
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let (cross_site, .., id) = best?;
        // Across the WAN only by the neighbour that fetches this part for the site (or by
        // another once it is urgent, one at a time), and never while a neighbour has it.
        let ours = self.fetches_for_site(n, part) || (urgent && self.may_fetch_for_a_neighbour());
        if cross_site && (!ours || (!late && self.a_neighbour_has(n, part))) {
            return None;
        }
        Some(id)
    }

    /// Whether a partner of our own site holds part `part` of `n` or is receiving it (it
    /// announces a part as it begins to arrive). Then, until the part is late, it is asked
    /// over the LAN once it can take the request, rather than a second copy fetched across
    /// the WAN: a busy neighbour frees up, while a second copy adds to the WAN whose load
    /// made the site late (in the simulator's sites, 61,325 of 268,880 requests across a
    /// WAN went out while a neighbour held the part). Past the deadline the part is fetched
    /// wherever it can be, so a neighbour saturated for good cannot hold the site back.
    fn a_neighbour_has(&self, n: u64, part: usize) -> bool {
        self.peers
            .values()
            .any(|p| p.same_site && p.uploads && p.have.get(n) & bit(part) != 0)
    }

    /// Whether this node may fetch, across the WAN, a part a neighbour of its site fetches
    /// for it: once the part is urgent, and one at a time. Unbounded, a site that falls
    /// behind has every node fetch every late part at once, its WAN carries a copy per node,
    /// and everything stays late; one at a time, the site's nodes share its WAN again.
    fn may_fetch_for_a_neighbour(&self) -> bool {
        let mut extra = 0;
        for (&n, s) in self.unsettled() {
            for (j, ps) in s.parts.iter().enumerate() {
                let Some(inf) = ps.inflight else { continue };
                let across = self.peers.get(&inf.peer).is_some_and(|p| !p.same_site);
                if across && !self.fetches_for_site(n, j) {
                    extra += 1;
                    if extra >= SITE_EXTRA_INFLIGHT {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Whether this node is the one of its site that fetches part `part` of segment `n`
    /// across the WAN: the one among it and its uploading neighbours (partners behind the
    /// same public address) whose id ranks first for that part, so the neighbours split the
    /// parts between them and each part crosses the WAN once. Alone on its site, always.
    fn fetches_for_site(&self, n: u64, part: usize) -> bool {
        let mine = site_rank(&self.me, n, part);
        !self
            .peers
            .iter()
            .any(|(id, p)| p.same_site && p.uploads && site_rank(id, n, part) < mine)
    }
}

/// A node's rank for fetching part `part` of segment `n` for its site: a hash of the three,
/// so every part has one first node and each node is first for its share of parts.
fn site_rank(id: &NodeId, n: u64, part: usize) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    let x = u64::from_le_bytes([a, b, c, d, e, f, g, h])
        ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (part as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    super::scramble(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::{
        addr, announce, connect_contact, connect_origin, connect_viewer, contact, drain, id,
        parts_asked, requests, viewer, viewer_connected, viewer_with_partners, ORIGIN, SEG,
    };
    use crate::mesh::{MeshConfig, JOIN_ORIGIN_WAIT};
    use crate::stream::ALL_PARTS;
    use std::collections::{BTreeMap, BTreeSet};

    /// Viewer 10 behind public address 198.51.100.1 with neighbours 20 and 30 there, the
    /// origin, and partners `far` elsewhere.
    fn site_viewer(t0: Instant, far: &[u8]) -> Mesh {
        site_viewer_met(t0, far, Met::KnownPublic)
    }

    /// How a viewer came to know its neighbours 20 and 30 are of its site.
    #[derive(Debug, Clone, Copy)]
    enum Met {
        /// It knew its public address, and theirs matched, when they connected.
        KnownPublic,
        /// They connected before it knew its public address; it learned it after.
        PublicLearnedLater,
        /// Over its LAN, neither public address known to it.
        Lan,
    }

    /// A viewer (10) with neighbours 20 and 30 of its site and partners `far` off it.
    fn site_viewer_met(t0: Instant, far: &[u8], met: Met) -> Mesh {
        let public = |port: u16| std::net::SocketAddr::from(([198, 51, 100, 1], port));
        let mut v = viewer_connected(t0, &[]);
        if let Met::KnownPublic = met {
            v.observe_self(Some(public(7010)), crate::wire::Reach::Nat);
        }
        for n in [20u8, 30] {
            let (at, lan) = match met {
                Met::Lan => (std::net::SocketAddr::from(([10, 0, 0, n], 7000)), true),
                _ => (public(7000 + u16::from(n)), false),
            };
            v.handle_connected(t0, contact(id(n), at), Role::Viewer, true, None, lan);
        }
        for &n in far {
            let at = std::net::SocketAddr::from(([203, 0, 113, n], 7000));
            v.handle_connected(t0, contact(id(n), at), Role::Viewer, true, None, false);
        }
        if let Met::PublicLearnedLater = met {
            v.observe_self(Some(public(7010)), crate::wire::Reach::Nat);
        }
        drain(&mut v);
        v
    }

    /// [`site_viewer`] playing already: the segments before 9 are held.
    fn playing_site_viewer(t0: Instant, far: &[u8]) -> Mesh {
        let mut v = site_viewer(t0, far);
        for n in 6..9 {
            v.handle_segment(t0, Some(id(ORIGIN)), n, 1000);
        }
        v
    }

    /// The parts of segment `n` node 10 fetches across the WAN for its site of 10, 20, 30.
    fn my_share(n: u64) -> BTreeSet<u8> {
        (0..PARTS)
            .filter(|&j| {
                let me = site_rank(&id(10), n, j);
                me < site_rank(&id(20), n, j) && me < site_rank(&id(30), n, j)
            })
            .map(|j| j as u8)
            .collect()
    }

    #[test]
    fn a_neighbour_of_our_site_is_never_banned_for_stalls() {
        let t0 = Instant::now();
        let mut v = playing_site_viewer(t0, &[40, 41]);
        announce(&mut v, t0, ORIGIN, 9, ALL_PARTS);
        announce(&mut v, t0, 41, 9, ALL_PARTS);
        // Others deliver meanwhile, so stalls are not our own link's.
        v.handle_part(t0, id(41), 9, 0, 1000);
        for _ in 0..MAX_STALLS {
            v.stalled(t0, id(20));
            v.stalled(t0, id(40));
        }
        assert!(!v.is_banned(&id(20), t0), "a neighbour relaying our WAN");
        assert!(v.is_banned(&id(40), t0));
    }

    #[test]
    fn a_neighbour_that_loses_a_part_is_still_asked_for_the_others() {
        let t0 = Instant::now();
        let mut v = playing_site_viewer(t0, &[40]);
        announce(&mut v, t0, ORIGIN, 9, ALL_PARTS);
        announce(&mut v, t0, 20, 9, ALL_PARTS);
        let of_20 = |acts: &[Action]| -> Vec<u8> {
            parts_asked(acts)
                .into_iter()
                .filter(|(p, n, _)| *p == id(20) && *n == 9)
                .map(|(_, _, j)| j)
                .collect()
        };
        let first = of_20(&drain(&mut v));
        let [stalled, failed, ..] = first[..] else {
            panic!("two parts asked of the neighbour: {first:?}");
        };
        // Its relay goes silent, then it fails the other (it lost them across the WAN).
        v.handle_receiving(t0, id(20), 9, stalled);
        v.handle_part_stalled(t0, id(20), 9, stalled);
        v.handle_transfer_failed(t0, id(20), 9, failed, false);
        let again = of_20(&drain(&mut v));
        assert_eq!(
            again.len(),
            2,
            "not backed off from, nor dropped for the segment"
        );
        assert!(
            !again.contains(&stalled) && !again.contains(&failed),
            "{again:?}"
        );
        // A far partner is dropped for the segment after one failure, as before.
        announce(&mut v, t0, 40, 10, ALL_PARTS);
        announce(&mut v, t0, ORIGIN, 10, ALL_PARTS);
        let asked_40: Vec<u8> = parts_asked(&drain(&mut v))
            .into_iter()
            .filter(|(p, n, _)| *p == id(40) && *n == 10)
            .map(|(_, _, j)| j)
            .collect();
        if let Some(&j) = asked_40.first() {
            v.handle_transfer_failed(t0, id(40), 10, j, false);
            let later = parts_asked(&drain(&mut v));
            assert!(
                !later.iter().any(|(p, n, _)| *p == id(40) && *n == 10),
                "{later:?}"
            );
        }
    }

    #[test]
    fn a_part_that_stops_arriving_is_announced_again_when_it_restarts() {
        let t0 = Instant::now();
        let mut v = playing_site_viewer(t0, &[40, 41]);
        announce(&mut v, t0, ORIGIN, 9, ALL_PARTS);
        drain(&mut v);
        let haves_to_20 = |acts: &[Action]| {
            acts.iter()
                .filter(|a| {
                    matches!(a, Action::Send { peer, msg: Control::Have { number: 9, parts } }
                        if *peer == id(20) && *parts == bit(3))
                })
                .count()
        };
        v.handle_receiving(t0, id(40), 9, 3);
        assert_eq!(haves_to_20(&drain(&mut v)), 1);
        v.handle_part_stalled(t0, id(40), 9, 3);
        drain(&mut v);
        v.handle_receiving(t0, id(41), 9, 3);
        assert_eq!(haves_to_20(&drain(&mut v)), 1, "announced again");
        // While it keeps arriving, once is enough.
        v.handle_receiving(t0, id(41), 9, 3);
        assert_eq!(haves_to_20(&drain(&mut v)), 0);
    }

    #[test]
    fn a_part_a_neighbour_has_waits_for_it_rather_than_crossing_the_wan() {
        let t0 = Instant::now();
        let mut v = site_viewer(t0, &[40]);
        // A segment of which this node fetches at least 4 parts for its site.
        let n = (9..200u64)
            .find(|&n| my_share(n).len() >= 4)
            .expect("such a segment");
        for k in n - 3..n {
            v.handle_segment(t0, Some(id(ORIGIN)), k, 1000);
        }
        drain(&mut v);
        // Neighbour 20 and far partner 40 hold all of it: 20 is asked up to its in-flight
        // cap, and the rest waits for it rather than crossing the WAN to 40.
        for p in [ORIGIN, 20, 40] {
            announce(&mut v, t0, p, n, ALL_PARTS);
        }
        let asked = parts_asked(&drain(&mut v));
        let of = |who: u8| asked.iter().filter(|(p, _, _)| *p == id(who)).count();
        assert_eq!(of(20), v.cfg.max_inflight_per_partner, "{asked:?}");
        assert_eq!(of(40), 0, "{asked:?}");
        // Even a neighbour that answers Busy is waited for, until the part is late: then the
        // far partner is asked.
        let (_, _, j) = asked[0];
        v.handle_transfer_failed(t0, id(20), n, j, true);
        let asked = parts_asked(&drain(&mut v));
        assert!(!asked.iter().any(|(p, _, _)| *p == id(40)), "{asked:?}");
        v.handle_tick(t0 + v.cfg.playout_budget);
        let asked = parts_asked(&drain(&mut v));
        assert!(asked.iter().any(|(p, _, _)| *p == id(40)), "{asked:?}");
    }

    #[test]
    fn a_site_behind_fetches_its_neighbours_parts_one_at_a_time() {
        let t0 = Instant::now();
        let far = [40, 41, 42, 43, 44, 45];
        let mut v = playing_site_viewer(t0, &far);
        for p in [ORIGIN].into_iter().chain(far) {
            announce(&mut v, t0, p, 9, ALL_PARTS);
        }
        let mine = my_share(9);
        let theirs = |acts: &[(NodeId, u64, u8)]| {
            acts.iter()
                .filter(|(_, n, j)| *n == 9 && !mine.contains(j))
                .count()
        };
        assert_eq!(theirs(&parts_asked(&drain(&mut v))), 0);
        // Late, and no neighbour has announced a part: still one of theirs at a time.
        let late = t0 + v.cfg.playout_budget;
        v.handle_tick(late);
        let asked = parts_asked(&drain(&mut v));
        assert_eq!(
            theirs(&asked),
            SITE_EXTRA_INFLIGHT,
            "{asked:?} mine {mine:?}"
        );
    }

    /// However the neighbours were recognised (in the lab, an office viewer that one of
    /// its neighbours dialled before the broadcaster told it its public address fetched its
    /// neighbours' shares across the WAN as well: 1.6 copies over that site's WAN).
    #[test]
    fn a_site_splits_the_parts_it_fetches_across_its_wan() {
        for met in [Met::KnownPublic, Met::PublicLearnedLater, Met::Lan] {
            splits_its_parts(met);
        }
    }

    fn splits_its_parts(met: Met) {
        let t0 = Instant::now();
        let mut v = site_viewer_met(t0, &[40], met);
        // Only the far partner holds segment 9: this node asks it for its own share alone.
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 9,
                parts: ALL_PARTS,
            },
        );
        v.handle_control(
            t0,
            id(40),
            Control::Have {
                number: 9,
                parts: ALL_PARTS,
            },
        );
        let asked: BTreeSet<u8> = parts_asked(&drain(&mut v))
            .into_iter()
            .filter(|(p, n, _)| *p == id(40) && *n == 9)
            .map(|(_, _, j)| j)
            .collect();
        let mine = my_share(9);
        // (At most two at once from one partner, so a subset of its share.)
        assert!(
            !asked.is_empty() && asked.is_subset(&mine),
            "{met:?}: {asked:?} of {mine:?}"
        );
        assert!(mine.len() < PARTS, "{mine:?}");
        // A neighbour announcing a part it fetched: asked for it over the LAN.
        let theirs = (0..PARTS as u8)
            .find(|j| !mine.contains(j))
            .expect("a neighbour's part");
        v.handle_control(
            t0,
            id(20),
            Control::Have {
                number: 9,
                parts: 1 << theirs,
            },
        );
        assert!(parts_asked(&drain(&mut v)).contains(&(id(20), 9, theirs)));
    }

    /// A viewer that joins at the live edge (no hold-back), budget one segment.
    fn edge_viewer(me: u8, now: Instant) -> Mesh {
        Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 0), id(me), 7, now)
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

    #[test]
    fn prefers_partners_and_falls_back_to_origin_after_the_wait() {
        let t0 = Instant::now();
        assert_eq!(viewer(10, t0).want_from(), None);
        let mut v = edge_viewer(10, t0);
        drain(&mut v);
        connect_origin(&mut v, t0);
        connect_viewer(&mut v, t0, 20);
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
        let mut v = viewer_connected(t0, &[]);
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
        connect_contact(v, t0, contact(id(p), addr(u16::from(p))));
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
        let mut v = viewer_connected(t0, &[]);
        connect_viewer(&mut v, t0, 20);
        connect_viewer(&mut v, t0, 30);
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
    fn a_supplier_that_leaves_requests_unanswered_is_avoided_then_banned() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        connect_viewer(&mut v, t0, 20);
        connect_viewer(&mut v, t0, 30);
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
        // While nothing arrives from anyone, stalls are our own link's: nobody is banned.
        for _ in 0..MAX_STALLS {
            v.stalled(t, id(20));
        }
        assert!(!v.is_banned(&id(20), t));
        // While others deliver, stalling again and again gets it dropped and banned.
        v.handle_part(t, id(30), 100, 0, 1000);
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

    #[test]
    fn a_part_that_stalls_after_its_first_frame_is_asked_elsewhere_and_counts_as_a_stall() {
        let t0 = Instant::now();
        let mut v = edge_viewer(10, t0);
        connect_origin(&mut v, t0);
        let partners = [20, 30, 40, 50, 60, 70];
        for p in partners {
            connect_contact(&mut v, t0, contact(id(p), addr(p.into())));
        }
        // 20 pushes the first frame of part 1 of segment 9; then 9 is announced by all.
        v.handle_receiving(t0, id(20), 9, 1);
        for p in [ORIGIN].into_iter().chain(partners) {
            announce(&mut v, t0, p, 9, ALL_PARTS);
        }
        let asked = parts_asked(&drain(&mut v));
        assert!(!asked.is_empty());
        assert!(
            asked.iter().all(|&(_, n, j)| (n, j) != (9, 1)),
            "an arriving part was asked for: {asked:?}"
        );
        // Silent past the piece silence while another supplier delivers: asked of another
        // supplier at once.
        let t = t0 + crate::node::PIECE_SILENCE;
        v.handle_part(t, id(30), 9, 2, 1000);
        v.handle_part_stalled(t, id(20), 9, 1);
        let asked = parts_asked(&drain(&mut v));
        assert!(
            asked
                .iter()
                .any(|&(p, n, j)| (n, j) == (9, 1) && p != id(20)),
            "{asked:?}"
        );
        // Neither a first frame nor an empty part clears the record: a third stall bans.
        v.handle_receiving(t, id(20), 11, 1);
        v.handle_part_stalled(t, id(20), 11, 1);
        v.handle_part(t, id(20), 12, 0, 0);
        assert!(!v.is_banned(&id(20), t));
        v.handle_receiving(t, id(20), 12, 1);
        v.handle_part_stalled(t, id(20), 12, 1);
        assert!(v.is_banned(&id(20), t));
    }
}
