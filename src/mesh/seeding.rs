//! The broadcaster's side: each segment it publishes is announced to every viewer and its
//! parts seeded to a few uploaders (again to others when a seed goes unacknowledged), and
//! each joiner is told how much upload the swarm has ([`Control::Swarm`]).

use super::{Action, Mesh, JOINING_WINDOW};
use crate::stream::{NodeId, ALL_PARTS, PARTS};
use crate::wire::{Control, Role};
use std::time::Instant;

/// Most parts the broadcaster owes as seeds (see [`Mesh::handle_publish`]).
const MAX_SEED_DEBT: usize = 4 * PARTS;

/// Fewest viewers with a declared upload before the broadcaster sends [`Control::Swarm`]:
/// below that the sample says little, and the broadcaster's own upload covers a few
/// viewers' catch-up anyway.
const MIN_DECLARED: usize = 8;

impl Mesh {
    /// The stream's bitrate (bits/s) and this node's own upload cap, as the driver last
    /// measured them: they size the broadcaster's [`Control::Swarm`] and a public viewer's
    /// places for peers behind symmetric NATs.
    pub fn observe_capacity(&mut self, stream_bps: u64, upload_bps: Option<u64>) {
        self.capacity = (stream_bps, upload_bps);
    }

    /// Broadcaster: the swarm's upload for a viewer connecting now, or None while it is
    /// not known (too few declared, the bitrate unknown, or its own upload unlimited, in
    /// which case it covers any catch-up).
    pub(super) fn swarm_estimate(&self, now: Instant) -> Option<Control> {
        let (stream_bps, own) = self.capacity;
        let own = own?;
        let n = self.declared.len();
        if stream_bps == 0 || n < MIN_DECLARED {
            return None;
        }
        // One walk: the upload in all, and how many connected within the window.
        let (total, joining) =
            self.declared
                .values()
                .fold((u128::from(own), 0usize), |(t, j), (bps, since)| {
                    let recent = now.saturating_duration_since(*since) < JOINING_WINDOW;
                    (t + u128::from(*bps), j + usize::from(recent))
                });
        let per = total * 100 / (n as u128 * u128::from(stream_bps));
        Some(Control::Swarm {
            upload_pct: u32::try_from(per).unwrap_or(u32::MAX),
            joining_pct: u32::try_from(joining * 100 / n).unwrap_or(100),
        })
    }

    /// Broadcaster: segment `number` was just cut and signed.
    pub fn handle_publish(&mut self, now: Instant, number: u64) {
        self.last_now = self.last_now.max(now);
        self.advance_newest(number);
        self.held.insert(number);
        self.segs.remove(&number);
        let viewers: Vec<NodeId> = self.peers.keys().copied().collect();
        for v in &viewers {
            self.send(
                *v,
                Control::Have {
                    number,
                    parts: ALL_PARTS,
                },
            );
        }
        // Seed a few uploaders, rotating so the relaying load spreads over the swarm.
        let uploaders = self.seed_targets(None, true);
        // Each part goes to different viewers: the origin sends `seed_fanout` copies of the
        // segment in all, spread over up to `seed_fanout × PARTS` relays that then trade parts.
        // With no uploader yet (the stream has just started), the seeds are owed: each
        // newcomer gets one owed part, so the first segments spread as later ones do.
        let seeds = self.cfg.seed_fanout * PARTS;
        for i in 0..seeds {
            let part = (i % PARTS) as u8;
            match uploaders.get((self.push_cursor + i) % uploaders.len().max(1)) {
                Some(peer) => self.actions.push_back(Action::Push {
                    peer: *peer,
                    number,
                    part,
                }),
                None if self.seed_debt.len() < MAX_SEED_DEBT => {
                    self.seed_debt.push_back((number, part))
                }
                None => {}
            }
        }
        self.push_cursor = self.push_cursor.wrapping_add(seeds.max(1));
        self.prune();
    }

    /// Uploaders to seed, `except` left out: those not suspected of having vanished, or
    /// (`fall_back`) every one if all are.
    fn seed_targets(&self, except: Option<NodeId>, fall_back: bool) -> Vec<NodeId> {
        let pick = |trusted: bool| -> Vec<NodeId> {
            self.peers
                .iter()
                .filter(|(id, p)| p.uploads && Some(**id) != except && !(trusted && p.seed_suspect))
                .map(|(id, _)| *id)
                .collect()
        };
        let trusted = pick(true);
        if trusted.is_empty() && fall_back {
            pick(false)
        } else {
            trusted
        }
    }

    /// Broadcaster: the seed of part `part` of segment `number` pushed to `peer` was not
    /// acknowledged in time (or its connection ended). `peer` may have vanished with the
    /// swarm's only viewer copy, and every viewer would then wait until it asks the origin
    /// itself at half its playout budget; so the part is seeded to another uploader while
    /// the segment is still among the newest two, and `peer` is not seeded until heard from.
    pub fn handle_push_unconfirmed(&mut self, now: Instant, peer: NodeId, number: u64, part: u8) {
        self.last_now = self.last_now.max(now);
        if self.cfg.role != Role::Broadcaster || usize::from(part) >= PARTS {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.seed_suspect = true;
        }
        let fresh = self.newest.is_some_and(|n| number.saturating_add(1) >= n);
        if !fresh || !self.held.contains(number) {
            return;
        }
        // Only to the unsuspected: each miss makes one more suspect, so this ends.
        let targets = self.seed_targets(Some(peer), false);
        if let Some(to) = targets.get(self.push_cursor % targets.len().max(1)) {
            self.actions.push_back(Action::Push {
                peer: *to,
                number,
                part,
            });
            self.push_cursor = self.push_cursor.wrapping_add(1);
        }
    }

    /// Broadcaster: the input ended after segment `last`.
    pub fn handle_end(&mut self, _now: Instant, last: u64) {
        self.ended = Some(last);
        let all: Vec<NodeId> = self.peers.keys().copied().collect();
        for p in all {
            self.send(p, Control::End { last });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::{
        addr, connect_contact, connect_viewer, contact, drain, id, viewer_connected, ORIGIN, SEG,
    };
    use crate::mesh::MeshConfig;
    use std::collections::BTreeSet;

    #[test]
    fn broadcaster_announces_to_all_and_seeds_each_part_to_different_viewers() {
        let t0 = Instant::now();
        let fanout = MeshConfig::broadcaster(id(ORIGIN), SEG).seed_fanout;
        let mut b = broadcaster_with(t0, 10..90);
        let pushes = |b: &mut Mesh, number: u64| -> (usize, Vec<(NodeId, u8)>) {
            b.handle_publish(t0, number);
            let acts = drain(b);
            let haves = acts
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Send {
                            msg: Control::Have {
                                parts: ALL_PARTS,
                                ..
                            },
                            ..
                        }
                    )
                })
                .count();
            let pushes = pushes_of(&acts)
                .into_iter()
                .map(|(peer, _, part)| (peer, part))
                .collect();
            (haves, pushes)
        };
        let (haves, first) = pushes(&mut b, 0);
        assert_eq!(haves, 80);
        // `seed_fanout` copies of each part, each to a different viewer.
        assert_eq!(first.len(), fanout * PARTS);
        for part in 0..PARTS as u8 {
            assert_eq!(first.iter().filter(|(_, p)| *p == part).count(), fanout);
        }
        let seeds: BTreeSet<NodeId> = first.iter().map(|(v, _)| *v).collect();
        assert_eq!(seeds.len(), fanout * PARTS);
        // The next segment seeds other viewers.
        let (_, next) = pushes(&mut b, 1);
        assert!(next.iter().all(|(v, _)| !seeds.contains(v)));
    }

    /// The pushes among `actions`: (to whom, segment, part).
    fn pushes_of(actions: &[Action]) -> Vec<(NodeId, u64, u8)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Push { peer, number, part } => Some((*peer, *number, *part)),
                _ => None,
            })
            .collect()
    }

    /// A broadcaster with uploading viewers `ids`.
    fn broadcaster_with(t0: Instant, ids: std::ops::Range<u8>) -> Mesh {
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        for v in ids {
            connect_contact(&mut b, t0, contact(id(v), addr(u16::from(v))));
        }
        drain(&mut b);
        b
    }

    #[test]
    fn an_unacknowledged_seed_goes_to_another_uploader_and_its_receiver_is_not_seeded_again() {
        let t0 = Instant::now();
        let mut b = broadcaster_with(t0, 10..13);
        b.handle_publish(t0, 0);
        let first = pushes_of(&drain(&mut b));
        let &(lost, _, part) = first.first().expect("a seed");
        // Its receiver vanished without a word: the same part goes to someone else.
        b.handle_push_unconfirmed(t0, lost, 0, part);
        let again = pushes_of(&drain(&mut b));
        assert_eq!(again.len(), 1);
        let (to, number, p) = again[0];
        assert_eq!((number, p), (0, part));
        assert_ne!(to, lost);
        // Later segments are seeded to the others only...
        for n in 1..4 {
            b.handle_publish(t0, n);
            let seeds = pushes_of(&drain(&mut b));
            assert_eq!(seeds.len(), PARTS);
            assert!(seeds.iter().all(|(v, _, _)| *v != lost), "{seeds:?}");
        }
        // ...until it is heard from: it is alive after all.
        b.handle_control(
            t0,
            lost,
            Control::Have {
                number: 3,
                parts: 1,
            },
        );
        b.handle_publish(t0, 4);
        assert!(pushes_of(&drain(&mut b)).iter().any(|(v, _, _)| *v == lost));
    }

    #[test]
    fn a_stale_or_unknown_seed_is_not_seeded_again_and_misses_end() {
        let t0 = Instant::now();
        let mut b = broadcaster_with(t0, 10..12);
        for n in 0..3 {
            b.handle_publish(t0, n);
        }
        drain(&mut b);
        // Segment 0 is two behind the newest: viewers missing it ask the origin anyway.
        b.handle_push_unconfirmed(t0, id(10), 0, 0);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // A part that does not exist, or a segment never published.
        b.handle_push_unconfirmed(t0, id(10), 2, PARTS as u8);
        b.handle_push_unconfirmed(t0, id(10), 9, 0);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // Every uploader missing in turn: once all are suspect, nobody is left to re-seed
        // to (no ping-pong between two vanished viewers).
        b.handle_push_unconfirmed(t0, id(10), 2, 1);
        let again = pushes_of(&drain(&mut b));
        assert_eq!(again, vec![(id(11), 2, 1)]);
        b.handle_push_unconfirmed(t0, id(11), 2, 1);
        assert!(pushes_of(&drain(&mut b)).is_empty());
        // With everyone suspect, seeding still goes on (to the suspects).
        b.handle_publish(t0, 3);
        assert_eq!(pushes_of(&drain(&mut b)).len(), PARTS);
    }

    /// A viewer never re-seeds: seeding is the broadcaster's.
    #[test]
    fn a_viewer_ignores_unconfirmed_seeds() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[10, 11]);
        drain(&mut v);
        v.handle_push_unconfirmed(t0, id(10), 0, 0);
        assert!(pushes_of(&drain(&mut v)).is_empty());
    }

    #[test]
    fn seeds_of_a_segment_published_to_nobody_go_to_the_first_viewers() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        b.handle_publish(t0, 0);
        assert!(!drain(&mut b)
            .iter()
            .any(|a| matches!(a, Action::Push { .. })));
        let mut parts = BTreeSet::new();
        for v in 10..10 + PARTS as u8 {
            connect_contact(&mut b, t0, contact(id(v), addr(v.into())));
            let pushed: Vec<u8> = drain(&mut b)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Push {
                        peer,
                        number: 0,
                        part,
                    } if peer == id(v) => Some(part),
                    _ => None,
                })
                .collect();
            assert_eq!(pushed.len(), 1, "one owed part per newcomer");
            parts.extend(pushed);
        }
        assert_eq!(parts.len(), PARTS, "every part seeded once");
        // Nothing more is owed.
        connect_viewer(&mut b, t0, 99);
        assert!(!drain(&mut b)
            .iter()
            .any(|a| matches!(a, Action::Push { .. })));
    }

    /// What the broadcaster sent `who` when it connected: its Swarm, and whether that came
    /// before the buffer map.
    fn swarm_sent(b: &mut Mesh, who: u8) -> Option<(u32, u32, bool)> {
        let acts = drain(b);
        let at = |want: fn(&Control) -> bool| {
            acts.iter().position(
                |a| matches!(a, Action::Send { peer, msg } if *peer == id(who) && want(msg)),
            )
        };
        let map = at(|m| matches!(m, Control::BufferMap { .. }));
        let swarm = at(|m| matches!(m, Control::Swarm { .. }))?;
        match acts.get(swarm) {
            Some(Action::Send {
                msg:
                    Control::Swarm {
                        upload_pct,
                        joining_pct,
                    },
                ..
            }) => Some((*upload_pct, *joining_pct, map.is_some_and(|m| swarm < m))),
            _ => None,
        }
    }

    #[test]
    fn the_broadcaster_tells_each_joiner_the_swarms_upload() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        b.observe_capacity(2_000_000, Some(8_000_000));
        let join = |b: &mut Mesh, who: u8, at: Instant, uploads: bool, bps: Option<u64>| {
            b.handle_connected(
                at,
                contact(id(who), addr(u16::from(who))),
                Role::Viewer,
                uploads,
                bps,
                false,
            );
            swarm_sent(b, who)
        };
        // Too few declared to say anything.
        for i in 20..27 {
            assert_eq!(join(&mut b, i, t0, true, Some(2_100_000)), None);
        }
        // One with no cap declares nothing and is left out.
        assert_eq!(join(&mut b, 27, t0, true, None), None);
        // The eighth: (8 + 8 × 2.1) / (8 × 2) = 155%, all of them just joined; sent
        // before the buffer map the joiner picks its start from.
        assert_eq!(
            join(&mut b, 28, t0, true, Some(2_100_000)),
            Some((155, 100, true))
        );
        // A leech-only viewer counts as no upload, whatever it claims: 24.8 / 18.
        assert_eq!(
            join(&mut b, 29, t0, false, Some(9_000_000)),
            Some((137, 100, true))
        );
        // Later, the first nine are no longer joining: 26.9 / 20, one in ten joining.
        let later = t0 + JOINING_WINDOW;
        assert_eq!(
            join(&mut b, 30, later, true, Some(2_100_000)),
            Some((134, 10, true))
        );
        // A viewer that leaves is no longer counted: 29 / 20, two in ten joining.
        b.handle_disconnected(later, id(29));
        assert_eq!(
            join(&mut b, 31, later, true, Some(2_100_000)),
            Some((145, 20, true))
        );
        // Without its own cap the broadcaster covers any catch-up: nothing to say.
        b.observe_capacity(2_000_000, None);
        assert_eq!(join(&mut b, 32, later, true, Some(2_100_000)), None);
    }
}
