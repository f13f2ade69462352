//! The connected peers: each one's role, how it answers, and the parts it announced
//! ([`Announced`]), kept in id order ([`PeerMap`]) for the scans nearly every input makes.

use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Reach, Role};
use std::net::SocketAddr;
use std::time::Instant;

/// A partner: what it announced, how it answers, and when it is next told things.
#[derive(Debug)]
pub(super) struct Peer {
    /// Parts (bit masks) of the segments it announced.
    pub(super) have: Announced,
    /// It said Busy: not asked again before this moment.
    pub(super) busy_until: Option<Instant>,
    /// Smoothed transfer throughput, bytes/s (None until a transfer completes).
    pub(super) throughput: Option<f64>,
    /// Requests outstanding to it.
    pub(super) inflight: usize,
    /// Requests it left unanswered in a row.
    pub(super) stalls: u32,
    /// Broadcaster for the stream's key alone, Viewer for every other.
    pub(super) role: Role,
    /// It serves parts (false: leech-only): only uploaders are asked, seeded or sampled.
    pub(super) uploads: bool,
    /// Broadcaster: a seed pushed to it went unacknowledged, so it may have vanished; it
    /// is not seeded again until it is heard from.
    pub(super) seed_suspect: bool,
    /// Its endpoint address as we see it (behind a NAT, its public one), handed out in
    /// peer samples.
    pub(super) addr: SocketAddr,
    /// Its LAN address, handed to peers of its site.
    pub(super) local: Option<SocketAddr>,
    /// How it said it can be reached: symmetric ones are not handed out.
    pub(super) reach: Reach,
    /// The connection runs over one of our own networks.
    pub(super) lan: bool,
    /// The site it was given a name for, as it said.
    pub(super) site: Option<crate::wire::SiteTag>,
    /// It sits behind our public address or on our LAN (our site): asked first, a LAN
    /// away. Follows our public address as we learn it ([`super::Mesh::observe_self`]).
    /// (A site name alone does not make it so: see [`super::Mesh::handle_connected`].)
    pub(super) same_site: bool,
    /// When the connection opened: one that ends soon after was a refusal, not a loss.
    pub(super) since: Instant,
    /// When it is next sent a peer sample.
    pub(super) next_pex: Instant,
    /// When it is next sent a full buffer map.
    pub(super) next_buffer_map: Instant,
    /// Parts announced while it was off our site and we had partners on it, not yet sent:
    /// (segment, parts, when they go) ([`super::HAVE_HOLD`]).
    pub(super) held_have: Option<(u64, u32, Instant)>,
    /// It asked for no `Have`s: a partner of its site relays ours ([`Control::Quiet`]).
    ///
    /// [`Control::Quiet`]: crate::wire::Control::Quiet
    pub(super) quiet: bool,
    /// We asked it for no `Have`s: the neighbour of our site that relays them, and when it
    /// last did ([`super::listening`]).
    pub(super) relayed_by: Option<(NodeId, Instant)>,
}

impl Peer {
    /// The stream's origin: `handle_connected` gives the Broadcaster role to the stream's
    /// key alone, and a flag is cheaper to test than a 32-byte key on the hot paths.
    pub(super) fn is_origin(&self) -> bool {
        self.role == Role::Broadcaster
    }

    /// Below its in-flight cap and not backed off after a `Busy`.
    pub(super) fn askable(&self, max_inflight: usize, now: Instant) -> bool {
        self.inflight < max_inflight && self.busy_until.is_none_or(|t| now >= t)
    }
}

/// The connected peers in id order, ids and entries in two vectors found by bisection:
/// nearly every input scans all partners, and contiguous entries scan fastest.
#[derive(Debug, Default)]
pub(super) struct PeerMap {
    ids: Vec<NodeId>,
    /// Each id's first eight bytes, big-endian, in the ids' order: searched first, since
    /// ids are keys or hashes and prefixes all but never repeat.
    prefixes: Vec<u64>,
    entries: Vec<Peer>,
}

/// An id's first eight bytes as a number that orders as the id does.
fn prefix(id: &NodeId) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    u64::from_be_bytes([a, b, c, d, e, f, g, h])
}

impl PeerMap {
    fn position(&self, id: &NodeId) -> Option<usize> {
        let p = prefix(id);
        let first = self.prefixes.partition_point(|&x| x < p);
        // Equal prefixes sit together from `first`.
        (first..self.prefixes.len())
            .take_while(|&i| self.prefixes.get(i) == Some(&p))
            .find(|&i| self.ids.get(i) == Some(id))
    }

    pub(super) fn contains_key(&self, id: &NodeId) -> bool {
        self.position(id).is_some()
    }

    pub(super) fn get(&self, id: &NodeId) -> Option<&Peer> {
        self.position(id).and_then(|i| self.entries.get(i))
    }

    pub(super) fn get_mut(&mut self, id: &NodeId) -> Option<&mut Peer> {
        self.position(id).and_then(|i| self.entries.get_mut(i))
    }

    /// Adds or replaces `id`'s entry.
    pub(super) fn insert(&mut self, id: NodeId, peer: Peer) {
        match self.ids.binary_search(&id) {
            Ok(i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    *e = peer;
                }
            }
            Err(i) => {
                self.ids.insert(i, id);
                self.prefixes.insert(i, prefix(&id));
                self.entries.insert(i, peer);
            }
        }
    }

    pub(super) fn remove(&mut self, id: &NodeId) -> Option<Peer> {
        let i = self.position(id)?;
        self.ids.remove(i);
        self.prefixes.remove(i);
        Some(self.entries.remove(i))
    }

    pub(super) fn keys(&self) -> std::slice::Iter<'_, NodeId> {
        self.ids.iter()
    }

    pub(super) fn values(&self) -> std::slice::Iter<'_, Peer> {
        self.entries.iter()
    }

    pub(super) fn values_mut(&mut self) -> std::slice::IterMut<'_, Peer> {
        self.entries.iter_mut()
    }

    pub(super) fn iter(
        &self,
    ) -> std::iter::Zip<std::slice::Iter<'_, NodeId>, std::slice::Iter<'_, Peer>> {
        self.ids.iter().zip(self.entries.iter())
    }

    pub(super) fn iter_mut(
        &mut self,
    ) -> std::iter::Zip<std::slice::Iter<'_, NodeId>, std::slice::IterMut<'_, Peer>> {
        self.ids.iter().zip(self.entries.iter_mut())
    }
}

impl<'a> IntoIterator for &'a PeerMap {
    type Item = (&'a NodeId, &'a Peer);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, NodeId>, std::slice::Iter<'a, Peer>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Segments a partner's [`Announced`] covers, ending at the newest it announced: the
/// segments in play at once fit many times.
const ANNOUNCED: usize = 64;

// A part mask fits a byte.
const _: () = assert!(PARTS <= 8);

/// What a partner announced: a mask of parts for each of the [`ANNOUNCED`] segments up
/// to the newest it announced, as a ring of bytes (slot `number % ANNOUNCED`), kept
/// inline because the scheduler reads it for every partner and segment in play.
#[derive(Debug, Clone)]
pub(super) struct Announced {
    masks: [u8; ANNOUNCED],
    pub(super) newest: Option<u64>,
}

impl Announced {
    pub(super) fn new() -> Announced {
        Announced {
            masks: [0; ANNOUNCED],
            newest: None,
        }
    }

    fn slot(n: u64) -> usize {
        (n % ANNOUNCED as u64) as usize
    }

    /// Whether `n` is in the covered span.
    fn covers(&self, n: u64) -> bool {
        self.newest
            .is_some_and(|k| n <= k && n.saturating_add(ANNOUNCED as u64) > k)
    }

    /// The parts of `n` announced (0: none, or `n` is out of the span).
    pub(super) fn get(&self, n: u64) -> u32 {
        if !self.covers(n) {
            return 0;
        }
        self.masks.get(Self::slot(n)).map_or(0, |&m| u32::from(m))
    }

    /// Adds `parts` of `n`. A newer `n` moves the span on, forgetting what falls out of it;
    /// one older than the span is ignored.
    pub(super) fn add(&mut self, n: u64, parts: u32) {
        match self.newest {
            Some(k) if n > k => {
                // Clear the slots of the numbers the span drops: those of k+1 ..= n
                // (all of them when the span moves by a whole ring or more).
                let step = (n - k).min(ANNOUNCED as u64);
                for x in n + 1 - step..=n {
                    if let Some(m) = self.masks.get_mut(Self::slot(x)) {
                        *m = 0;
                    }
                }
                self.newest = Some(n);
            }
            None => self.newest = Some(n),
            Some(_) if !self.covers(n) => return,
            Some(_) => {}
        }
        if let Some(m) = self.masks.get_mut(Self::slot(n)) {
            *m |= (parts & ALL_PARTS) as u8;
        }
    }

    /// Forgets `parts` of `n` (the partner said it does not have them after all).
    pub(super) fn remove(&mut self, n: u64, parts: u32) {
        if self.covers(n) {
            if let Some(m) = self.masks.get_mut(Self::slot(n)) {
                *m &= !((parts & ALL_PARTS) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::addr;
    use std::collections::BTreeMap;

    #[test]
    fn a_partners_announcements_keep_the_newest_segments_in_a_bounded_ring() {
        let mut a = Announced::new();
        assert_eq!((a.get(5), a.newest), (0, None));
        a.add(5, 0b01);
        a.add(5, 0b10);
        assert_eq!(a.get(5), 0b11);
        a.add(7, 0b1);
        assert_eq!(
            (a.get(5), a.get(6), a.get(7), a.newest),
            (0b11, 0, 0b1, Some(7))
        );
        // 5 + ANNOUNCED shares 5's slot: the span moves on past 5, which cannot come back.
        let later = 5 + ANNOUNCED as u64;
        a.add(later, 0b100);
        a.add(5, 0b1);
        assert_eq!((a.get(5), a.get(later), a.newest), (0, 0b100, Some(later)));
        // 7 is still in the span, and kept; what falls out of it reads as nothing.
        assert_eq!(a.get(7), 0b1);
        a.remove(later, 0b100);
        assert_eq!(a.get(later), 0);
        // A jump of more than the span forgets everything before it.
        a.add(later + 3 * ANNOUNCED as u64, 0b1);
        assert_eq!((a.get(7), a.get(later)), (0, 0));
        // Bits beyond the parts are not kept.
        a.add(later + 3 * ANNOUNCED as u64, u32::MAX);
        assert_eq!(a.get(later + 3 * ANNOUNCED as u64), ALL_PARTS);
    }

    fn test_peer(stalls: u32) -> Peer {
        Peer {
            role: Role::Viewer,
            addr: addr(1),
            local: None,
            reach: Reach::Unknown,
            lan: false,
            site: None,
            same_site: false,
            uploads: true,
            have: Announced::new(),
            inflight: 0,
            throughput: None,
            busy_until: None,
            stalls,
            seed_suspect: false,
            since: Instant::now(),
            next_pex: Instant::now(),
            next_buffer_map: Instant::now(),
            held_have: None,
            quiet: false,
            relayed_by: None,
        }
    }

    proptest::proptest! {
        /// Inserts and removes of ids, some sharing their first eight bytes: the same
        /// lookups and the same order as a `BTreeMap`.
        #[test]
        fn the_partner_map_behaves_as_an_ordered_map(
            ops in proptest::collection::vec((0u8..24, proptest::bool::ANY), 0..200),
        ) {
            let key = |k: u8| {
                // Ids 0..24 in three groups of eight sharing a prefix, differing after it.
                let mut b = [k / 8; 32];
                b[31] = k;
                NodeId(b)
            };
            let (mut map, mut model) = (PeerMap::default(), BTreeMap::new());
            for (step, &(k, add)) in ops.iter().enumerate() {
                let id = key(k);
                if add {
                    map.insert(id, test_peer(step as u32));
                    model.insert(id, step as u32);
                } else {
                    proptest::prop_assert_eq!(
                        map.remove(&id).map(|p| p.stalls),
                        model.remove(&id)
                    );
                }
                for k in 0..24 {
                    let id = key(k);
                    proptest::prop_assert_eq!(map.get(&id).map(|p| p.stalls), model.get(&id).copied());
                    proptest::prop_assert_eq!(map.contains_key(&id), model.contains_key(&id));
                }
                let got: Vec<(NodeId, u32)> = map.iter().map(|(id, p)| (*id, p.stalls)).collect();
                let want: Vec<(NodeId, u32)> = model.iter().map(|(id, s)| (*id, *s)).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
