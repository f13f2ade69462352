//! Helpers the mesh's tests share, and the tests of the timers (`poll_timeout`,
//! `handle_tick`).

use super::scheduling::BUSY_BACKOFF;
use super::segments::bit;
use super::*;

pub(super) fn id(b: u8) -> NodeId {
    NodeId([b; 32])
}
pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
pub(super) const ORIGIN: u8 = 1;
pub(super) const SEG: Duration = Duration::from_secs(2);

pub(super) fn viewer(me: u8, now: Instant) -> Mesh {
    Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 3), id(me), 7, now)
}

/// Viewer 10 with the origin and `partners` connected; the origin has announced all of
/// segment 9.
pub(super) fn viewer_with_partners(t0: Instant, partners: &[u8]) -> Mesh {
    let mut v = viewer_connected(t0, partners);
    origin_announces_nine(&mut v, t0);
    v
}

/// Viewer 10 with the origin and `partners` connected, told nothing yet.
pub(super) fn viewer_connected(t0: Instant, partners: &[u8]) -> Mesh {
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    for &p in partners {
        v.handle_connected(t0, id(p), addr(u16::from(p)), Role::Viewer, true, None);
    }
    v
}

pub(super) fn origin_announces_nine(v: &mut Mesh, t0: Instant) {
    announce(v, t0, ORIGIN, 9, ALL_PARTS);
}

/// `from` announces `parts` of segment `number` to `v`.
pub(super) fn announce(v: &mut Mesh, t0: Instant, from: u8, number: u64, parts: u32) {
    v.handle_control(t0, id(from), Control::Have { number, parts });
}

pub(super) fn drain(m: &mut Mesh) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

pub(super) fn requests(actions: &[Action]) -> Vec<(NodeId, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, number, .. } => Some((*peer, *number)),
            _ => None,
        })
        .collect()
}

#[test]
fn viewer_dials_origin_first() {
    let now = Instant::now();
    let mut v = viewer(10, now);
    assert_eq!(
        drain(&mut v),
        vec![Action::Dial {
            peer: id(ORIGIN),
            addr: None
        }]
    );
}

pub(super) fn parts_asked(actions: &[Action]) -> Vec<(NodeId, u64, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request {
                peer, number, part, ..
            } => Some((*peer, *number, *part)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_announcement_of_parts_held_or_asked_for_leaves_the_wake_up_alone() {
    let t0 = Instant::now();
    let mut v = viewer_with_partners(t0, &[20, 30]);
    let have = |number, parts| Control::Have { number, parts };
    // 20 holds all of segment 9: parts are asked of it.
    v.handle_control(t0, id(20), have(9, ALL_PARTS));
    let asked = parts_asked(&drain(&mut v));
    assert!(!asked.is_empty());
    let wake = v.poll_timeout();
    // 30 announcing the parts already asked for queues nothing and brings no wake-up
    // earlier.
    let mask = asked
        .iter()
        .fold(0, |m, &(_, _, j)| m | bit(usize::from(j)));
    let t1 = t0 + Duration::from_millis(10);
    v.handle_control(t1, id(30), have(9, mask));
    assert!(drain(&mut v).is_empty());
    assert!(v.poll_timeout() >= wake);
    // Nor does a partner's claim of a segment the origin has not announced.
    v.handle_control(t1, id(30), have(10, ALL_PARTS));
    assert!(parts_asked(&drain(&mut v)).is_empty());
    assert!(v.poll_timeout() >= wake);
    // The origin announcing it does: its parts are asked for.
    v.handle_control(t1, id(ORIGIN), have(10, ALL_PARTS));
    assert!(parts_asked(&drain(&mut v)).iter().any(|&(_, n, _)| n == 10));
}

/// A partner's `Busy` backoff wakes the viewer when it ends only if that partner could
/// then be asked for something: otherwise the tick would do nothing.
#[test]
fn a_busy_partner_is_woken_for_only_while_it_holds_a_part_still_wanted() {
    let t0 = Instant::now();
    for taken_elsewhere in [false, true] {
        let mut v = viewer_with_partners(t0, &[20, 30]);
        drain(&mut v);
        // 20 holds part 0 of the join segment (6) and is asked for it.
        let have = Control::Have {
            number: 6,
            parts: 1,
        };
        v.handle_control(t0, id(20), have.clone());
        assert_eq!(requests(&drain(&mut v)), vec![(id(20), 6)]);
        let t1 = t0 + Duration::from_millis(10);
        v.handle_transfer_failed(t1, id(20), 6, 0, true);
        drain(&mut v);
        let busy_until = t1 + BUSY_BACKOFF;
        if taken_elsewhere {
            // 30 has it too and is asked instead: 20 holds nothing wanted now.
            v.handle_control(t1, id(30), have);
            assert_eq!(requests(&drain(&mut v)), vec![(id(30), 6)]);
            assert!(v.poll_timeout() > busy_until);
        } else {
            assert_eq!(v.poll_timeout(), busy_until);
            v.handle_tick(busy_until);
            assert_eq!(requests(&drain(&mut v)), vec![(id(20), 6)]);
        }
    }
}

#[test]
fn a_refused_viewer_backs_off_the_origin_more_each_time() {
    // A flash crowd past the origin's caps, all redialling at one fixed period, keeps
    // the caps full: each refusal doubles the wait (jittered), up to the 30 s cap.
    let t0 = Instant::now();
    let mut v = viewer(10, t0);
    let mut dials = Vec::new();
    let mut t = t0;
    while t < t0 + Duration::from_secs(120) {
        v.handle_tick(t);
        if drain(&mut v)
            .iter()
            .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
        {
            dials.push(t);
            v.handle_dial_failed(t, id(ORIGIN));
        }
        t += Duration::from_millis(50);
    }
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(gaps[4] >= gaps[0] * 8, "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= ORIGIN_RETRY_WITH_PARTNERS * 2),
        "{gaps:?}"
    );
    // A connection that lasted resets it: the next loss is retried at once (the first
    // wait, plus a maintenance period).
    v.handle_connected(t, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    t += ORIGIN_SHORT_LIVED * 2;
    v.handle_disconnected(t, id(ORIGIN));
    drain(&mut v);
    let lost = t;
    while !v.peers.contains_key(&id(ORIGIN)) && t < lost + Duration::from_secs(5) {
        t += Duration::from_millis(50);
        v.handle_tick(t);
        if drain(&mut v)
            .iter()
            .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(ORIGIN)))
        {
            break;
        }
    }
    assert!(t - lost <= Duration::from_millis(1500), "{:?}", t - lost);
}

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
pub(super) fn pushes_of(actions: &[Action]) -> Vec<(NodeId, u64, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Push { peer, number, part } => Some((*peer, *number, *part)),
            _ => None,
        })
        .collect()
}

/// A broadcaster with uploading viewers `ids`.
pub(super) fn broadcaster_with(t0: Instant, ids: std::ops::Range<u8>) -> Mesh {
    let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
    for v in ids {
        b.handle_connected(t0, id(v), addr(u16::from(v)), Role::Viewer, true, None);
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
        b.handle_connected(t0, id(v), addr(v.into()), Role::Viewer, true, None);
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
    b.handle_connected(t0, id(99), addr(99), Role::Viewer, true, None);
    assert!(!drain(&mut b)
        .iter()
        .any(|a| matches!(a, Action::Push { .. })));
}

#[test]
fn tracker_sample_leads_to_dials_and_full_sets_turn_peers_away() {
    let t0 = Instant::now();
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    drain(&mut v);
    let peers: Vec<PeerInfo> = (20..40)
        .map(|i| PeerInfo {
            id: id(i),
            addr: addr(i as u16),
        })
        .collect();
    v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
    // At once, not at the next maintenance tick: the join waits on these.
    let dialled = |acts: Vec<Action>| -> Vec<NodeId> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Dial {
                    peer,
                    addr: Some(_),
                } => Some(peer),
                _ => None,
            })
            .collect()
    };
    let dials = dialled(drain(&mut v));
    assert_eq!(dials.len(), 4, "bounded by max_pending_dials");
    // A failed dial is replaced at once by another candidate.
    v.handle_dial_failed(t0, dials[0]);
    let again = dialled(drain(&mut v));
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(!dials.contains(&again[0]));
    v.handle_tick(t0 + Duration::from_secs(1));
    assert!(dialled(drain(&mut v)).is_empty(), "still 4 pending");
    // Fill the partner set to its cap; the next one is turned away.
    let cap = MeshConfig::viewer(id(ORIGIN), SEG, 3).max_partners as u8;
    for i in 40..40 + cap {
        v.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, true, None);
    }
    drain(&mut v);
    assert_eq!(v.stats().partners, usize::from(cap));
    v.handle_connected(t0, id(60), addr(60), Role::Viewer, true, None);
    let acts = drain(&mut v);
    assert!(acts.contains(&Action::Disconnect {
        peer: id(60),
        reason: DisconnectReason::PartnerSetFull
    }));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Send { peer, msg: Control::Peers { peers } } if *peer == id(60) && !peers.is_empty())));
}

#[test]
fn a_full_broadcaster_hands_out_the_viewers_it_turned_away() {
    let t0 = Instant::now();
    let mut cfg = MeshConfig::broadcaster(id(ORIGIN), SEG);
    cfg.max_partners = 4;
    let mut b = Mesh::new(cfg, id(ORIGIN), 1, t0);
    for i in 20..24 {
        b.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, true, None);
    }
    // Full: 30..40 are turned away (a leech-only one is not worth handing out).
    for i in 30..40 {
        b.handle_connected(t0, id(i), addr(u16::from(i)), Role::Viewer, i != 39, None);
    }
    drain(&mut b);
    let sample_for = |b: &mut Mesh, who: u8| -> Vec<NodeId> {
        b.handle_connected(t0, id(who), addr(u16::from(who)), Role::Viewer, true, None);
        drain(b)
            .into_iter()
            .find_map(|a| match a {
                Action::Send {
                    peer,
                    msg: Control::Peers { peers },
                } if peer == id(who) => Some(peers.iter().map(|p| p.id).collect()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let got = sample_for(&mut b, 50);
    let turned_away: Vec<&NodeId> = got
        .iter()
        .filter(|p| (30..40).any(|i| id(i) == **p))
        .collect();
    // Half the sample is turned-away viewers with room, the rest its full partners.
    assert_eq!(turned_away.len(), OVERFLOW_IN_SAMPLE, "{got:?}");
    assert!(!got.contains(&id(39)) && !got.contains(&id(50)), "{got:?}");
    assert_eq!(got.len(), OVERFLOW_IN_SAMPLE + 4, "{got:?}");
    let mut unique = got.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), got.len());
    // One that later becomes a partner leaves the turned-away list.
    b.handle_disconnected(t0, id(20));
    b.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
    assert!(b.overflow.iter().all(|p| p.id != id(30)));
}

#[test]
fn wake_ups_are_never_in_the_past() {
    let t0 = Instant::now();
    let mut v = viewer_with_partners(t0, &[]);
    // The origin goes away: segments wait with their fallback moment passing.
    v.handle_disconnected(t0, id(ORIGIN));
    for secs in [1, 4, 7, 30] {
        let now = t0 + Duration::from_secs(secs);
        v.handle_tick(now);
        drain(&mut v);
        assert!(v.poll_timeout() > now, "at +{secs}s");
    }
}

#[test]
fn missed_deadlines_are_counted_once() {
    let t0 = Instant::now();
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    v.handle_control(
        t0,
        id(ORIGIN),
        Control::Have {
            number: 3,
            parts: ALL_PARTS,
        },
    );
    // Origin "busy" every time: nothing arrives.
    for step in 1..10 {
        let now = t0 + Duration::from_secs(step);
        v.handle_tick(now);
        for a in drain(&mut v) {
            if let Action::Request {
                peer, number, part, ..
            } = a
            {
                v.handle_transfer_failed(now, peer, number, part, true);
            }
        }
    }
    // 0..=3 were all wanted (join point 0, numbers are consecutive) and none arrived.
    assert_eq!(v.stats().missed_deadlines, 4);
}

/// What the broadcaster sent `who` when it connected: its Swarm, and whether that came
/// before the buffer map.
pub(super) fn swarm_sent(b: &mut Mesh, who: u8) -> Option<(u32, u32, bool)> {
    let acts = drain(b);
    let at = |want: fn(&Control) -> bool| {
        acts.iter()
            .position(|a| matches!(a, Action::Send { peer, msg } if *peer == id(who) && want(msg)))
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
            id(who),
            addr(u16::from(who)),
            Role::Viewer,
            uploads,
            bps,
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
