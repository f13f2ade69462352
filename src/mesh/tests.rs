//! Helpers the mesh's tests share, and the tests of the timers (`poll_timeout`,
//! `handle_tick`).

use super::scheduling::BUSY_BACKOFF;
use super::segments::bit;
use super::*;

pub(super) fn id(b: u8) -> NodeId {
    NodeId([b; 32])
}
/// A peer as a connection reports it, with no LAN address and unknown reachability.
pub(super) fn contact(id: NodeId, addr: SocketAddr) -> PeerInfo {
    PeerInfo {
        id,
        addr,
        local: None,
        reach: Reach::Unknown,
        site: None,
    }
}

/// Viewer `n` (at loopback port `n`, uploading, no cap) connects to `m` at `t`, off its LAN.
pub(super) fn connect_viewer(m: &mut Mesh, t: Instant, n: u8) {
    connect_contact(m, t, contact(id(n), addr(u16::from(n))));
}

/// A viewer seen as `c` (uploading, no cap) connects to `m` at `t`, off its LAN.
pub(super) fn connect_contact(m: &mut Mesh, t: Instant, c: PeerInfo) {
    m.handle_connected(t, c, Role::Viewer, true, None, false);
}

/// The origin (at loopback port 1) connects to `m` at `t`.
pub(super) fn connect_origin(m: &mut Mesh, t: Instant) {
    let at = addr(1);
    m.handle_connected(
        t,
        contact(id(ORIGIN), at),
        Role::Broadcaster,
        true,
        None,
        false,
    );
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
    connect_origin(&mut v, t0);
    for &p in partners {
        v.handle_connected(
            t0,
            contact(id(p), addr(u16::from(p))),
            Role::Viewer,
            true,
            None,
            false,
        );
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
    connect_origin(&mut v, t0);
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

/// What `pick` makes of each control message a node sent (to whom, what), where it makes
/// something.
pub(super) fn sent<T>(actions: &[Action], pick: impl Fn(NodeId, &Control) -> Option<T>) -> Vec<T> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { peer, msg } => pick(*peer, msg),
            _ => None,
        })
        .collect()
}

/// The announcements a node sent, as (to, segment, parts).
pub(super) fn haves(actions: &[Action]) -> Vec<(NodeId, u64, u32)> {
    sent(actions, |to, msg| match msg {
        Control::Have { number, parts } => Some((to, *number, *parts)),
        _ => None,
    })
}

#[test]
fn a_site_viewer_tells_partners_off_its_site_about_parts_arriving_together_at_once() {
    let t0 = Instant::now();
    let (site, far, other) = (20, 30, 31);
    let mut v = viewer_connected(t0, &[far, other]);
    let lan = contact(id(site), SocketAddr::from(([192, 168, 1, 20], 4433)));
    v.handle_connected(t0, lan, Role::Viewer, true, None, true);
    origin_announces_nine(&mut v, t0);
    drain(&mut v);
    let t1 = t0 + Duration::from_millis(5);
    v.handle_receiving(t0, id(ORIGIN), 9, 0);
    v.handle_receiving(t1, id(ORIGIN), 9, 1);
    // One partner off the site announces part 1 itself meanwhile: it is not told of it.
    announce(&mut v, t1, other, 9, bit(1));
    // The neighbour hears of each part as it comes; the others not yet.
    let sent = haves(&drain(&mut v));
    assert_eq!(sent, vec![(id(site), 9, bit(0)), (id(site), 9, bit(1))]);
    let due = v.poll_timeout();
    assert!(due <= t0 + HAVE_HOLD, "the held news must wake the node");
    v.handle_tick(due);
    let mut sent = haves(&drain(&mut v));
    sent.sort();
    assert_eq!(
        sent,
        vec![(id(far), 9, bit(0) | bit(1)), (id(other), 9, bit(0))]
    );
    // News of the next segment sends what is held of the last at once, and is held itself.
    announce(&mut v, t1, ORIGIN, 10, ALL_PARTS);
    drain(&mut v);
    let t2 = due + Duration::from_millis(1);
    v.handle_receiving(t2, id(ORIGIN), 9, 2);
    v.handle_receiving(t2, id(ORIGIN), 10, 0);
    let mut sent: Vec<_> = haves(&drain(&mut v))
        .into_iter()
        .filter(|(to, ..)| *to == id(far))
        .collect();
    sent.sort();
    assert_eq!(sent, vec![(id(far), 9, bit(2))]);
    v.handle_tick(t2 + HAVE_HOLD);
    let sent: Vec<_> = haves(&drain(&mut v))
        .into_iter()
        .filter(|(to, ..)| *to == id(far))
        .collect();
    assert_eq!(sent, vec![(id(far), 10, bit(0))]);
    // A viewer without neighbours tells everyone at once.
    let mut home = viewer_with_partners(t0, &[far]);
    drain(&mut home);
    home.handle_receiving(t0, id(ORIGIN), 9, 0);
    assert_eq!(haves(&drain(&mut home)), vec![(id(far), 9, bit(0))]);
}
