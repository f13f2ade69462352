//! Helpers the mesh's tests share, and the tests of the timers (`poll_timeout`,
//! `handle_tick`).

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

/// A viewer that joins at the live edge (no hold-back), budget one segment.
pub(super) fn edge_viewer(me: u8, now: Instant) -> Mesh {
    Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 0), id(me), 7, now)
}

pub(super) fn drain(m: &mut Mesh) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// The `Have`s of segment `number` among `actions`: (partner, parts).
pub(super) fn haves_of(actions: &[Action], number: u64) -> Vec<(NodeId, u32)> {
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
fn prefers_partners_and_falls_back_to_origin_after_the_wait() {
    let t0 = Instant::now();
    assert_eq!(viewer(10, t0).want_from(), None);
    let mut v = edge_viewer(10, t0);
    drain(&mut v);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
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
pub(super) fn joined_at_20(t0: Instant) -> Mesh {
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
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
pub(super) fn partner_holding(v: &mut Mesh, t0: Instant, p: u8, bits: u8) {
    v.handle_connected(t0, id(p), addr(u16::from(p)), Role::Viewer, true, None);
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
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
    v.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
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
fn a_supplier_that_leaves_requests_unanswered_is_avoided_then_banned() {
    let t0 = Instant::now();
    let mut v = viewer(10, t0);
    v.handle_connected(t0, id(ORIGIN), addr(1), Role::Broadcaster, true, None);
    v.handle_connected(t0, id(20), addr(20), Role::Viewer, true, None);
    v.handle_connected(t0, id(30), addr(30), Role::Viewer, true, None);
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
    // Stalling again and again gets it dropped and banned.
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
