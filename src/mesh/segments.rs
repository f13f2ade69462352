//! The segments this node knows of: each tracked part by part until it is held
//! ([`Tracked`]), the held ones ([`HeldSet`]), and the window they live in (its floor, the
//! live edge, what is given up); also what partners' announcements add, and where a joiner
//! starts.

use super::{Action, Mesh};
use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Control, Role, MAX_BUFFER_MAP_BITS};
use std::time::Instant;

/// Longest the swarm's spare upload may need to serve the joiners' catch-up, in segment
/// durations, for a joiner to catch up at all ([`Mesh::catch_up`]); beyond it a crowd's
/// catch-up would push everyone's latency up (BENCHMARKS.md).
const CATCH_UP_ABSORB_SEGMENTS: u64 = 8;

/// A request in flight for one part.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inflight {
    /// The supplier asked.
    pub(super) peer: NodeId,
    /// When it was asked.
    pub(super) since: Instant,
}

/// One part of a segment: the unit asked of one supplier. Written only through
/// [`Tracked`]'s setters, which keep its masks.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PartState {
    /// Bytes are arriving (pulled or pushed) since this moment.
    pub(super) receiving_since: Option<Instant>,
    /// From whom they are arriving.
    pub(super) receiving_from: Option<NodeId>,
    pub(super) inflight: Option<Inflight>,
}

/// A segment tracked and not yet held: the scheduler's view of each part (held, asked of
/// whom, arriving from whom), with no bytes, while [`crate::node::Assemblies`] is where the
/// driver keeps the segment's verified pieces. Its parts' flags are also kept as masks, so
/// the scans after every event read a part's own state only where a bit is set.
#[derive(Debug, Default)]
pub(super) struct Tracked {
    /// When this node first learned the segment exists.
    pub(super) first_heard: Option<Instant>,
    /// Parts already announced to partners (as each starts arriving, or when held).
    pub(super) announced: u32,
    /// Parts held.
    pub(super) held: u32,
    /// Parts whose `inflight` is set.
    pub(super) asked: u32,
    /// Parts whose `receiving_since` is set.
    pub(super) arriving: u32,
    pub(super) missed: bool,
    /// Peers that failed us for this segment (not asked again for it).
    pub(super) failed: Vec<NodeId>,
    pub(super) parts: [PartState; PARTS],
}

impl Tracked {
    pub(super) fn inflight(&self) -> usize {
        self.asked.count_ones() as usize
    }

    /// The parts neither held nor asked for.
    pub(super) fn unasked(&self) -> u32 {
        ALL_PARTS & !self.held & !self.asked
    }

    /// Part `j`'s request (None: none in flight).
    pub(super) fn set_inflight(&mut self, j: usize, inf: Option<Inflight>) {
        if let Some(ps) = self.parts.get_mut(j) {
            ps.inflight = inf;
            self.asked = set_bit(self.asked, j, inf.is_some());
        }
    }

    /// Part `j`'s bytes arriving since a moment, from a peer (None: not arriving).
    pub(super) fn set_arriving(&mut self, j: usize, arriving: Option<(Instant, NodeId)>) {
        if let Some(ps) = self.parts.get_mut(j) {
            ps.receiving_since = arriving.map(|a| a.0);
            ps.receiving_from = arriving.map(|a| a.1);
            self.arriving = set_bit(self.arriving, j, arriving.is_some());
        }
    }

    /// Whether the masks say what the parts say.
    pub(super) fn consistent(&self) -> bool {
        self.parts.iter().enumerate().all(|(j, ps)| {
            (self.asked & bit(j) != 0) == ps.inflight.is_some()
                && (self.arriving & bit(j) != 0) == ps.receiving_since.is_some()
        })
    }
}

/// `mask` with bit `j` set to `on`.
fn set_bit(mask: u32, j: usize, on: bool) -> u32 {
    if on {
        mask | bit(j)
    } else {
        mask & !bit(j)
    }
}

/// The parts in `mask`, lowest first.
pub(super) fn bits(mask: u32) -> impl Iterator<Item = usize> {
    (0..PARTS).filter(move |&j| mask & bit(j) != 0)
}

pub(super) fn bit(part: usize) -> u32 {
    1 << part
}

/// The segments a node holds: a ring of bits ending at the newest held, inline but for
/// one short allocation, because every announcement asks whether its segment is held.
/// Members stay within the window of the newest known segment, and a
/// verified one is at most a window ahead of it, so a span of two windows holds them all
/// (up to a window of 32,767 segments, nine hours of 1 s segments; a larger one gets that
/// span, and what falls out of it counts as not held).
#[derive(Debug)]
pub(super) struct HeldSet {
    /// The newest member ever inserted; None before the first.
    top: Option<u64>,
    /// Bit `n % span` of member `n`, for `n` within `span` of `top`.
    words: Vec<u64>,
}

impl HeldSet {
    pub(super) fn new(window: u64) -> HeldSet {
        let bits = window
            .saturating_mul(2)
            .saturating_add(2)
            .clamp(64, 1 << 16);
        HeldSet {
            top: None,
            words: vec![0; bits.div_ceil(64) as usize],
        }
    }

    fn span(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The oldest number the ring can tell about.
    fn low(&self) -> Option<u64> {
        self.top.map(|t| t.saturating_sub(self.span() - 1))
    }

    fn bit(&self, n: u64) -> (usize, u64) {
        let i = n % self.span();
        ((i / 64) as usize, 1 << (i % 64))
    }

    pub(super) fn contains(&self, n: u64) -> bool {
        match (self.top, self.low()) {
            (Some(t), Some(lo)) if n >= lo && n <= t => {
                let (w, b) = self.bit(n);
                self.words.get(w).is_some_and(|x| x & b != 0)
            }
            _ => false,
        }
    }

    fn set(&mut self, n: u64, on: bool) {
        let (w, b) = self.bit(n);
        if let Some(x) = self.words.get_mut(w) {
            if on {
                *x |= b;
            } else {
                *x &= !b;
            }
        }
    }

    /// Adds `n`; false if it was there. One older than the span is not kept (it is far
    /// below the window, so no one asks).
    pub(super) fn insert(&mut self, n: u64) -> bool {
        match self.top {
            Some(t) if n > t => {
                // The slots of t+1 ..= n held numbers that now fall out of the span.
                let step = (n - t).min(self.span());
                for x in n + 1 - step..=n {
                    self.set(x, false);
                }
                self.top = Some(n);
            }
            None => self.top = Some(n),
            Some(_) if self.low().is_some_and(|lo| n < lo) => return true,
            Some(_) if self.contains(n) => return false,
            Some(_) => {}
        }
        self.set(n, true);
        true
    }

    /// Forgets the members below `floor`.
    pub(super) fn remove_below(&mut self, floor: u64) {
        if let (Some(lo), Some(t)) = (self.low(), self.top) {
            for x in lo..floor.min(t.saturating_add(1)) {
                self.set(x, false);
            }
        }
    }

    /// The members, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let range = match (self.low(), self.top) {
            (Some(lo), Some(t)) => lo..t.saturating_add(1),
            _ => 0..0,
        };
        range.filter(|&n| self.contains(n))
    }
}

impl Mesh {
    /// Records which parts of which segments `from` holds; only the origin (or verified
    /// data) moves our notion of newest. True when it is worth scheduling: a part neither
    /// held nor asked for has a supplier now, or the join point or the live edge moved.
    pub(super) fn learn(&mut self, now: Instant, from: NodeId, announced: &[(u64, u32)]) -> bool {
        let from_origin = self.is_origin(&from);
        let mut news = false;
        if self.cfg.role == Role::Viewer
            && !from_origin
            && (self.start_from_partners
                || (self.want_from.is_none() && !self.peers.contains_key(&self.cfg.origin)))
        {
            // The origin turned us away (full): start from what partners hold, the lowest of
            // their newest, redone as partners announce until data arrives, so a liar
            // announcing the future cannot park us past the stream.
            let others = self
                .peers
                .iter()
                .filter(|(id, _)| !self.is_origin(id) && **id != from)
                .filter_map(|(_, p)| p.have.newest);
            let start = others.chain(announced.iter().map(|(n, _)| *n).max()).min();
            if let Some(s) = start {
                news = true;
                // Join `delay` segments back only if most partners hold them whole: the
                // catch-up then comes from established viewers with upload to spare. A
                // viewer the origin turned away whose partners lack them is in a crowd of
                // joiners, where every joiner's catch-up comes out of the upload the live
                // segments need. It waits at their live edge instead: its playlist fills as
                // the stream goes on, a start about 2 s later, with no late segments.
                let whole = |k: u64| {
                    let theirs = announced
                        .iter()
                        .any(|&(n, m)| n == k && m & ALL_PARTS == ALL_PARTS);
                    let (mut with, mut all) = (usize::from(theirs), 1usize);
                    for (id, p) in &self.peers {
                        if !p.is_origin() && *id != from {
                            all += 1;
                            with += usize::from(p.have.get(k) == ALL_PARTS);
                        }
                    }
                    2 * with > all
                };
                let from_k = (s.saturating_sub(self.cfg.delay_segments)..s)
                    .find(|&k| whole(k))
                    .unwrap_or(s);
                self.want_from = Some(from_k);
                self.start_from_partners = true;
            }
        }
        let mut max_seen = None;
        news |= from_origin;
        // While the join point is picked from partners, what they hold up to `delay` below
        // it is kept: it decides the pick as more of them announce.
        let below = if self.start_from_partners {
            self.cfg.delay_segments
        } else {
            0
        };
        let lo = self.floor().saturating_sub(below);
        // A peer may announce at most a window ahead of what we know, so a liar cannot
        // make us track an unbounded set.
        let hi = self
            .newest
            .map_or(u64::MAX, |n| n.saturating_add(self.cfg.window));
        // Walked again below rather than collected: nearly every call is one `Have`, and
        // collecting would allocate each time.
        let learned = move || {
            announced
                .iter()
                .filter(move |&&(n, parts)| {
                    n >= lo && (from_origin || n <= hi) && parts & ALL_PARTS != 0
                })
                .map(|&(n, parts)| (n, parts & ALL_PARTS))
        };
        for (n, _) in learned() {
            max_seen = max_seen.max(Some(n));
        }
        if from_origin {
            if let Some(m) = max_seen {
                self.advance_newest(m);
            }
        }
        let lo = self.floor().saturating_sub(below);
        let Some(peer) = self.peers.get_mut(&from) else {
            return news;
        };
        let uploads = peer.uploads;
        for (n, parts) in learned().filter(|(n, _)| *n >= lo) {
            peer.have.add(n, parts);
        }
        if self.cfg.role == Role::Broadcaster {
            return news;
        }
        // With the origin connected, a partner's claim does not start a deadline for a
        // segment the origin has not announced: a liar announcing the future would make it
        // look late before it is published. Without the origin, partners are all we have.
        let origin_says = self.peers.contains_key(&self.cfg.origin);
        let newest = self.newest;
        let exists = |n: u64| from_origin || !origin_says || newest.is_none_or(|k| n <= k);
        for (n, _) in learned() {
            if n >= lo && self.want_from.is_some_and(|w| n >= w) && exists(n) {
                if let Some(s) = self.track(n) {
                    s.first_heard.get_or_insert(now);
                }
            }
        }
        if from_origin {
            // Numbers are consecutive: everything up to the origin's newest exists.
            if let (Some(w), Some(n)) = (self.want_from, self.newest) {
                for k in w.max(self.floor())..=n {
                    if let Some(s) = self.track(k) {
                        s.first_heard.get_or_insert(now);
                    }
                }
            }
        }
        self.prune();
        // A part we neither hold nor have asked for now has a supplier.
        news || (uploads
            && learned()
                .any(|(n, parts)| self.segs.get(&n).is_some_and(|s| s.unasked() & parts != 0)))
    }

    pub(super) fn advance_newest(&mut self, n: u64) {
        if self.newest.is_none_or(|old| n > old) {
            self.newest = Some(n);
        }
        if self.want_from.is_none() && self.cfg.role == Role::Viewer {
            self.want_from = Some(n.saturating_sub(self.catch_up()));
        }
    }

    /// How many segments behind live a joiner starts. `delay` fills the playlist's
    /// hold-back at once, so the player starts about as soon as those arrive. But they
    /// come out of the swarm's spare upload: each joiner wants `delay` segments beyond
    /// the live ones, and each viewer's spare serves (upload share − 1) of a segment per
    /// segment duration, so a crowd needs (joining share × `delay`) / (spare share)
    /// segment durations for them all. When the broadcaster's [`Control::Swarm`] puts that
    /// above [`CATCH_UP_ABSORB_SEGMENTS`], the joiner starts at live instead, and its
    /// playlist fills as the stream goes on (a start about `delay` segments later), so the
    /// catch-up does not take the upload the live segments need (BENCHMARKS.md). Counted in segments, not seconds: a viewer
    /// learns the segment duration only from the first header, after this choice.
    fn catch_up(&self) -> u64 {
        let delay = self.cfg.delay_segments;
        let Some((upload_pct, joining_pct)) = self.swarm else {
            return delay;
        };
        let spare = u64::from(upload_pct.saturating_sub(100));
        let need = delay.saturating_mul(u64::from(joining_pct));
        if need > CATCH_UP_ABSORB_SEGMENTS.saturating_mul(spare) {
            0
        } else {
            delay
        }
    }

    /// The state of segment `n`, tracked from now on if it was not; None if it is held.
    pub(super) fn track(&mut self, n: u64) -> Option<&mut Tracked> {
        if self.held.contains(n) {
            return None;
        }
        self.settled_below = self.settled_below.min(n);
        Some(self.segs.entry(n).or_default())
    }

    /// Raises [`Mesh::settled_below`] past the segments settled since it was last raised.
    /// A given-up segment is never asked for again (the live edge only moves on), so this
    /// only rises.
    pub(super) fn advance_settled(&mut self) {
        self.settled_below = self.settled_start();
    }

    /// Where [`Mesh::advance_settled`] would move [`Mesh::settled_below`] to now.
    pub(super) fn settled_start(&self) -> u64 {
        let lost_before = self.lost_before();
        let settled = |n: u64, s: &Tracked| n < lost_before && s.missed && s.inflight() == 0;
        match self
            .segs
            .range(self.settled_below..)
            .find(|(n, s)| !settled(**n, s))
        {
            Some((&n, _)) => n,
            None => self
                .segs
                .last_key_value()
                .map_or(self.settled_below, |(&n, _)| n.saturating_add(1)),
        }
    }

    /// The segments still being fetched or waited for (with a few settled ones among them).
    pub(super) fn unsettled(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.segs.range(self.settled_below..)
    }

    /// Segments below this are given up: too far behind the newest to be worth fetching
    /// (the playlist skips them at the same point).
    pub(super) fn lost_before(&self) -> u64 {
        self.newest
            .map_or(0, |n| n.saturating_sub(self.cfg.delay_segments + 2))
    }

    /// Lowest number worth tracking.
    pub(super) fn floor(&self) -> u64 {
        self.newest
            .map_or(0, |n| n.saturating_sub(self.cfg.window))
            .max(self.want_from.unwrap_or(0))
    }

    /// Forgets what fell below the floor; true if the floor rose.
    pub(super) fn prune(&mut self) -> bool {
        let floor = self.floor();
        // Nothing below the floor is ever added, so a floor that has not risen has nothing
        // to prune (this runs on every announcement).
        if floor <= self.pruned_floor && self.pruned_floor != 0 {
            return false;
        }
        self.pruned_floor = floor;
        self.held.remove_below(floor);
        while let Some((&n, _)) = self.segs.first_key_value() {
            if n >= floor {
                break;
            }
            if let Some(s) = self.segs.remove(&n) {
                for inf in s.parts.iter().filter_map(|p| p.inflight) {
                    self.release(inf.peer);
                }
            }
        }
        true
    }

    pub(super) fn release(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
    }

    /// Segment `number` (`len` bytes) is now held verified; `from` is who sent its last
    /// part (None: ourselves).
    pub fn handle_segment(&mut self, now: Instant, from: Option<NodeId>, number: u64, len: u64) {
        self.last_now = self.last_now.max(now);
        let _ = len;
        if self.want_from.is_none() && self.cfg.role == Role::Viewer {
            self.want_from = Some(number);
        }
        self.start_from_partners = false;
        self.started = true;
        if number < self.floor() {
            return;
        }
        self.advance_newest(number);
        let was_held = !self.held.insert(number);
        let s = self.segs.remove(&number).unwrap_or_default();
        let unannounced = if was_held {
            0
        } else {
            ALL_PARTS & !s.announced
        };
        let mut abandoned = Vec::new();
        for (j, ps) in s.parts.iter().enumerate() {
            // A second copy of a part still coming: the segment is whole without it.
            if let Some(inf) = ps.inflight {
                abandoned.push((inf.peer, j as u8));
            }
        }
        for (peer, part) in abandoned {
            self.release(peer);
            self.actions
                .push_back(Action::Cancel { peer, number, part });
        }
        if unannounced != 0 && self.cfg.uploads {
            self.announce(number, unannounced, from);
        }
        self.prune();
        self.schedule(now);
    }

    pub(super) fn buffer_map(&self) -> Control {
        let held: Vec<u64> = self.held.iter().collect();
        let first = held.first().copied().unwrap_or(0);
        let mut bits = Vec::new();
        for n in held {
            let i = (n - first) as usize;
            if i >= MAX_BUFFER_MAP_BITS {
                break;
            }
            if bits.len() <= i / 8 {
                bits.resize(i / 8 + 1, 0u8);
            }
            if let Some(b) = bits.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        Control::BufferMap { first, bits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::membership::{ORIGIN_RETRY, ORIGIN_RETRY_WITH_PARTNERS};
    use crate::mesh::tests::{
        addr, announce, connect_contact, connect_origin, connect_viewer, contact, drain, id,
        origin_announces_nine, requests, viewer, viewer_connected, ORIGIN,
    };
    use crate::node::{DisconnectReason, Misbehaviour};
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn a_joiner_does_not_start_below_what_a_restarted_origin_holds() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        drain(&mut v);
        // The origin restarted two segments ago: it holds 40 and 41 only.
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::BufferMap {
                first: 40,
                bits: vec![0b11],
            },
        );
        assert_eq!(v.want_from(), Some(40));
        // With its window full, the joiner starts `delay` behind as always.
        let mut w = viewer(11, t0);
        connect_origin(&mut w, t0);
        w.handle_control(
            t0,
            id(ORIGIN),
            Control::BufferMap {
                first: 30,
                bits: vec![0xff, 0x0f],
            },
        );
        assert_eq!(w.want_from(), Some(41 - 3));
    }

    #[test]
    fn liars_cannot_move_the_live_edge_and_get_banned() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        connect_viewer(&mut v, t0, 20);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 50,
                parts: ALL_PARTS,
            },
        );
        v.handle_control(
            t0,
            id(20),
            Control::Have {
                number: u64::MAX,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.newest(), Some(50));
        // A viewer claiming to be the broadcaster is still a viewer.
        v.handle_connected(
            t0,
            contact(id(30), addr(30)),
            Role::Broadcaster,
            true,
            None,
            false,
        );
        v.handle_control(
            t0,
            id(30),
            Control::Have {
                number: 60,
                parts: ALL_PARTS,
            },
        );
        assert_eq!(v.newest(), Some(50));
        drain(&mut v);
        let bad_digest = Misbehaviour::Forged(crate::node::Forgery::SegmentDigest);
        v.handle_misbehaviour(t0, id(20), bad_digest);
        assert!(drain(&mut v).contains(&Action::Disconnect {
            peer: id(20),
            reason: DisconnectReason::Misbehaved(bad_digest)
        }));
        assert!(v.is_banned(&id(20), t0));
        connect_viewer(&mut v, t0, 20);
        assert!(drain(&mut v).contains(&Action::Disconnect {
            peer: id(20),
            reason: DisconnectReason::Refused
        }));
        assert!(!v.is_banned(&id(20), t0 + Duration::from_secs(301)));
    }

    proptest::proptest! {
        /// Under the mesh's use (members within a window of the newest known segment,
        /// pruned below the window as it moves), the ring of held segments answers as a
        /// `BTreeSet` does, jumps of the newest by more than its span included.
        #[test]
        fn the_held_ring_behaves_as_an_ordered_set(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..200), 0..300),
        ) {
            let w = 20u64;
            let (mut ring, mut model) = (HeldSet::new(w), BTreeSet::new());
            let mut newest = 1000u64;
            for &(advance, x) in &ops {
                if advance {
                    newest += x % (3 * w);
                    ring.remove_below(newest - w);
                    model.retain(|&n| n >= newest - w);
                } else {
                    let n = newest - w + x % (2 * w + 1);
                    proptest::prop_assert_eq!(ring.insert(n), model.insert(n));
                }
                for n in newest - 3 * w..newest + 3 * w {
                    proptest::prop_assert_eq!(ring.contains(n), model.contains(&n), "{}", n);
                }
                let got: Vec<u64> = ring.iter().collect();
                let want: Vec<u64> = model.iter().copied().collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    /// Viewer 10, which the origin never admitted, with `partners` connected.
    fn turned_away_viewer(t0: Instant, partners: &[u8]) -> Mesh {
        let mut v = viewer(10, t0);
        drain(&mut v);
        for &p in partners {
            connect_contact(&mut v, t0, contact(id(p), addr(u16::from(p))));
        }
        v
    }

    #[test]
    fn turned_away_by_a_full_origin_it_starts_from_partners() {
        let t0 = Instant::now();
        // The origin never admitted us; two partners did. One lies about the future.
        let mut v = turned_away_viewer(t0, &[20, 30]);
        announce(&mut v, t0, 30, 1_000_000, ALL_PARTS);
        announce(&mut v, t0, 20, 50, ALL_PARTS);
        let asked = requests(&drain(&mut v));
        assert!(asked.contains(&(id(20), 50)), "{asked:?}");
        // No partner holds an older segment whole: it waits at their live edge rather than
        // catch up (a crowd turned away by the origin has no spare upload for catch-up).
        assert_eq!(v.want_from(), Some(50));
        // With partners, the full origin is re-dialled only now and then.
        connect_viewer(&mut v, t0, 40);
        let dials_origin = |v: &mut Mesh| {
            drain(v)
                .iter()
                .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
        };
        let mut t = t0 + ORIGIN_RETRY * 2;
        v.handle_dial_failed(t, id(ORIGIN));
        t += ORIGIN_RETRY * 2;
        v.handle_tick(t);
        assert!(
            !dials_origin(&mut v),
            "not every {ORIGIN_RETRY:?} with partners"
        );
        t += ORIGIN_RETRY_WITH_PARTNERS.mul_f64(1.5);
        v.handle_tick(t);
        assert!(dials_origin(&mut v), "but again later");
    }

    #[test]
    fn turned_away_it_catches_up_only_on_segments_most_partners_hold_whole() {
        let t0 = Instant::now();
        let mut v = turned_away_viewer(t0, &[20, 30, 40]);
        // Partners 30 and 40 hold 48 to 50 whole and one part of 47; partner 20 is at 50.
        for p in [30, 40] {
            v.handle_control(
                t0,
                id(p),
                Control::BufferMap {
                    first: 48,
                    bits: vec![0b111],
                },
            );
            announce(&mut v, t0, p, 47, 0b1);
        }
        announce(&mut v, t0, 20, 50, ALL_PARTS);
        drain(&mut v);
        assert_eq!(v.want_from(), Some(48), "two of three hold 48 whole");
        // A fourth partner at 50 alone: half is not most, so it waits at live.
        connect_viewer(&mut v, t0, 50);
        announce(&mut v, t0, 50, 50, ALL_PARTS);
        drain(&mut v);
        assert_eq!(v.want_from(), Some(50), "two of four is not most");
    }

    #[test]
    fn a_joiner_starts_at_live_when_the_swarm_cannot_afford_its_catch_up() {
        let t0 = Instant::now();
        // (who says what in a Swarm; the join point for a live edge at 9). Delay 3:
        // 3 × joining / spare segment durations of catch-up against the 8 allowed.
        let cases = [
            (Some((ORIGIN, 105, 100)), 9), // 60: start at live
            (Some((ORIGIN, 100, 100)), 9), // no spare at all
            (Some((ORIGIN, 300, 100)), 6), // 1.5: catch up
            (Some((ORIGIN, 130, 100)), 9), // 10
            (Some((ORIGIN, 130, 50)), 6),  // 5
            (Some((ORIGIN, 130, 10)), 6),  // a few joining a steady swarm: 1
            (Some((20, 105, 100)), 6),     // only the broadcaster is believed
            (None, 6),                     // nothing said: catch up as always
        ];
        for (said, start) in cases {
            let mut v = viewer_connected(t0, &[20]);
            if let Some((who, upload_pct, joining_pct)) = said {
                let msg = Control::Swarm {
                    upload_pct,
                    joining_pct,
                };
                v.handle_control(t0, id(who), msg);
            }
            origin_announces_nine(&mut v, t0);
            assert_eq!(v.want_from(), Some(start), "{said:?}");
        }
    }
}
