//! Unit tests of the event loop: links, ordering, relays, seeding and upload slots.

use super::links::LINK_ROW;
use super::sites::{NO_SITE, WIRE_ACK, WIRE_ACK_EVERY, WIRE_HEADERS, WIRE_PAYLOAD};
use super::transfers::Kind;
use super::*;
use starling::node::DisconnectReason;

const MS: Ns = NS_PER_MS;

/// An origin and `viewers` viewers, all connected, with no stream running: the tests
/// hand the origin a segment and drive the transfers themselves.
fn swarm(viewers: usize, origin_bps: u64, viewer_bps: u64) -> Sim {
    swarm_at(2_000_000, viewers, origin_bps, viewer_bps)
}

/// [`swarm`] for a stream of `bitrate` bits/s: 16 Mbit/s gives 16 pieces per part, so
/// a part outlasts a link's burst.
fn swarm_at(bitrate: u64, viewers: usize, origin_bps: u64, viewer_bps: u64) -> Sim {
    let cfg = SimConfig {
        peers: 0,
        rtt_ms: 10.0,
        bitrate_bps: bitrate,
        origin_upload_bps: origin_bps,
        viewer_upload_bps: viewer_bps,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(&cfg);
    sim.spawn_origin();
    for _ in 0..viewers {
        sim.join();
    }
    let n = sim.nodes.len() as u32;
    for a in 0..n {
        for b in a + 1..n {
            sim.dial_done(b, a, 0);
        }
    }
    sim.run_until(100 * MS);
    let now = sim.now;
    sim.node_mut(ORIGIN).unwrap().store(0, now);
    sim
}

#[test]
fn links_spill_from_the_row_and_come_back() {
    let mut sim = Sim::new(&SimConfig {
        peers: 0,
        ..SimConfig::default()
    });
    sim.spawn_origin();
    for _ in 0..24 {
        sim.join();
    }
    let sorted = |v: &[u32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    let mut model: Vec<u32> = Vec::new();
    // Up past a row's 15 and back down, then up again.
    let steps = (1..=20)
        .map(|y| (true, y))
        .chain((3..=12).map(|y| (false, y)));
    // Links are the same at both ends; each is given a made-up connection slot.
    let slot = |y: u32| 100 + y;
    for (add, y) in steps.chain((3..=8).map(|y| (true, y))) {
        if add {
            sim.link(0, y, slot(y));
            sim.link(y, 0, slot(y));
            model.push(y);
        } else {
            sim.unlink(0, y);
            sim.unlink(y, 0);
            model.retain(|&z| z != y);
        }
        assert_eq!(sorted(sim.links(0)), sorted(&model), "after {y}");
        let spilled = model.len() > LINK_ROW;
        assert_eq!(sim.node(0).unwrap().spilled_links.is_empty(), !spilled);
        for z in 1..=24 {
            let linked = model.contains(&z);
            assert_eq!(sim.adjacent(0, z), linked);
            let want = linked.then(|| slot(z));
            assert_eq!(sim.conn_slot(0, z), want, "0 to {z} after {y}");
            assert_eq!(sim.conn_slot(z, 0), want, "{z} to 0 after {y}");
        }
    }
    // Two spilled nodes find their connection in the spilled lists.
    for z in 1..=LINK_ROW as u32 + 1 {
        sim.link(24, z, 200 + z);
        sim.link(z, 24, 200 + z);
    }
    sim.link(0, 24, 999);
    sim.link(24, 0, 999);
    assert!(!sim.node(24).unwrap().spilled_links.is_empty());
    assert_eq!(sim.conn_slot(0, 24), Some(999));
    assert_eq!(sim.conn_slot(24, 0), Some(999));
    assert_eq!(sim.conn_slot(24, 2), Some(202));
}

#[test]
fn equal_times_run_by_scheduling_node_then_in_its_order() {
    let mut sim = swarm(3, 8_000_000, 8_000_000);
    let t = sim.now + 50 * MS;
    // Node 2 schedules first, then node 1, then node 2 again, all for the same moment.
    for (src, mark) in [(2, 20), (1, 10), (2, 21)] {
        sim.cur = src;
        sim.at(t, Ev::Tick { node: mark });
    }
    sim.cur = COORDINATOR;
    let mut order = Vec::new();
    while let Some((at, _, slot)) = sim.queue.pop() {
        if at != t {
            continue;
        }
        if let Some(Some(Ev::Tick { node })) = sim.slots.get(slot as usize) {
            if *node >= 10 {
                order.push(*node);
            }
        }
    }
    // Node 1's first, as it would be had node 2's work run later; node 2's in its order.
    assert_eq!(order, vec![10, 20, 21]);
}

/// The last part: never empty.
const LAST: u8 = PARTS as u8 - 1;

/// The origin seeds every part of segment 0 to `to`.
fn push_all(sim: &mut Sim, to: u32) {
    for part in 0..PARTS as u8 {
        sim.push(ORIGIN, sim.id_of(to), 0, part);
    }
}

/// `from` asks `to` for every part of segment 0.
fn request_all(sim: &mut Sim, from: u32, to: u32) {
    for part in 0..PARTS as u8 {
        sim.request(from, sim.id_of(to), (0, part), false);
    }
}

/// When node `i` accepted segment 0.
fn arrival(sim: &Sim, i: u32) -> Option<Ns> {
    let (k, t) = sim.node(i)?.held[0];
    (k == 0).then_some(t)
}

fn has_part(sim: &Sim, i: u32, part: u8) -> bool {
    sim.node(i).unwrap().got(0) & (1 << part) != 0
}

/// Runs to `until`, noting when each of `nodes` first had part `part` of segment 0.
fn part_times(sim: &mut Sim, until: Ns, nodes: &[u32], part: u8) -> Vec<Option<Ns>> {
    let mut times = vec![None; nodes.len()];
    while let Some((t, _, _)) = sim.queue.peek() {
        if t > until {
            break;
        }
        sim.run_until(t);
        for (at, &i) in times.iter_mut().zip(nodes) {
            if at.is_none() && has_part(sim, i, part) {
                *at = Some(sim.now);
            }
        }
    }
    sim.run_until(until);
    times
}

/// Bytes of part `part` of a segment.
fn part_bytes(sim: &Sim, part: u8) -> u64 {
    let pieces = part_pieces(sim.pieces as usize, usize::from(part)).unwrap();
    pieces.map(|i| sim.piece_len(i as u32)).sum()
}

fn all_freed(sim: &Sim) -> bool {
    sim.transfers.items.iter().all(|t| !t.live)
}

#[test]
fn a_seed_whose_receiver_vanished_is_seeded_again_before_anyone_asks_the_origin() {
    let mut sim = swarm(3, 8_000_000, 3_000_000);
    // Two segments: the first starts the viewers (joiners ask the origin early for it),
    // the second is published to a running swarm.
    sim.segments = 2;
    sim.publish();
    let published = sim.now + sim.seg_ns;
    sim.run_until(published);
    let asked_before = sim.d.origin_requests;
    let seeded: Vec<u32> = sim
        .transfers
        .items
        .iter()
        .filter(|t| t.live && t.kind == Kind::Push && t.number == 1)
        .map(|t| t.to)
        .collect();
    assert_eq!(seeded.len(), PARTS, "{seeded:?}");
    let gone = seeded[0];
    let lost = seeded.iter().filter(|to| **to == gone).count() as u64;
    sim.vanish(gone);
    // Viewers missing a part ask the origin only at half their playout budget.
    let half_budget = sim.cfg.delay_segments * sim.seg_ns / 2;
    sim.run_until(published + half_budget);
    assert_eq!(sim.d.seeds_unconfirmed, lost);
    assert_eq!(sim.d.pushes, 2 * PARTS as u64 + lost);
    assert_eq!(sim.d.origin_requests, asked_before);
    for v in (1..=3).filter(|v| *v != gone) {
        let at = sim.node(v).and_then(|n| n.held.get(1)).copied();
        assert!(
            matches!(at, Some((1, t)) if t < published + half_budget),
            "{v}: {at:?}"
        );
    }
}

#[test]
fn a_relay_forwards_each_piece_as_it_lands() {
    // The origin's push (2 Mbit/s) is slower than B's upload (16 Mbit/s, slots for every
    // part): B relays every piece the moment it lands, so C's last piece lands one
    // latency after B's.
    let mut sim = swarm(2, 2_000_000, 16_000_000);
    let (b, c) = (1, 2);
    let t0 = sim.now;
    push_all(&mut sim, b);
    sim.run_until(t0 + sim.one_way(ORIGIN, b));
    // The first parts fit the link's burst and are here already; the last is arriving.
    assert!(
        sim.node(b).unwrap().partial(0, LAST).is_some(),
        "header landed"
    );
    assert!(arrival(&sim, b).is_none());
    request_all(&mut sim, c, b);
    sim.run_until(t0 + 5000 * MS);
    let (tb, tc) = (arrival(&sim, b).unwrap(), arrival(&sim, c).unwrap());
    assert!(sim.d.relayed > 0);
    assert_eq!(tc, tb + sim.one_way(b, c));
    assert!(all_freed(&sim));
    assert_eq!(sim.node(b).unwrap().upload.active(), 0);
    assert!(sim.node(b).unwrap().assembling.is_empty());
}

#[test]
fn a_relay_is_paced_by_its_own_link_but_starts_early() {
    // B uploads at 3 Mbit/s, slower than the push of a part (16 pieces) reaches it: C's
    // copy is bound by B's bucket, yet done well before B could have sent it whole
    // after holding it.
    let mut sim = swarm_at(16_000_000, 2, 8_000_000, 3_000_000);
    let (b, c) = (1, 2);
    let t0 = sim.now;
    sim.push(ORIGIN, sim.id_of(b), 0, LAST);
    sim.run_until(t0 + sim.one_way(ORIGIN, b));
    let t1 = sim.now;
    sim.request(c, sim.id_of(b), (0, LAST), false);
    let times = part_times(&mut sim, t0 + 5000 * MS, &[b, c], LAST);
    let (tb, tc) = (times[0].unwrap(), times[1].unwrap());
    assert_eq!(sim.d.relayed, 1);
    let (bytes, rate) = (part_bytes(&sim, LAST), 3_000_000 / 8);
    let store_and_forward = tb + (bytes - 65_536) * 1_000_000_000 / rate;
    assert!(tc > tb + sim.one_way(b, c), "bound by B's link");
    assert!(tc < store_and_forward, "{tc} vs {store_and_forward}");
    // B's bucket let through at most a burst, its rate over the upload, and the piece
    // that found it just paid up.
    let (started, last_left) = (t1 + sim.one_way(c, b), tc - sim.one_way(b, c));
    let allowed = 65_536.0 + 16_384.0 + rate as f64 * (last_left - started) as f64 / 1e9;
    assert!(bytes as f64 <= allowed, "{bytes} > {allowed}");
    assert!(bytes as f64 > allowed - 2.0 * 16_384.0, "and no slower");
}

#[test]
fn a_failed_upstream_resets_its_relays() {
    let mut sim = swarm_at(16_000_000, 2, 8_000_000, 3_000_000);
    let (b, c) = (1, 2);
    let t0 = sim.now;
    sim.request(b, sim.origin_id, (0, LAST), false);
    sim.run_until(t0 + sim.rtt(b, ORIGIN));
    assert!(sim.node(b).unwrap().partial(0, LAST).is_some());
    let t1 = sim.now;
    sim.request(c, sim.id_of(b), (0, LAST), false);
    sim.run_until(t1 + sim.rtt(b, c));
    assert_eq!(sim.d.relayed, 1);
    // B gives up on its upstream: C's relay is reset, and nothing is left running.
    sim.cancel(b, sim.origin_id, 0, LAST);
    sim.run_until(t1 + 5000 * MS);
    assert_eq!(sim.d.relay_resets, 1);
    assert!(!has_part(&sim, b, LAST) && !has_part(&sim, c, LAST));
    assert_eq!(sim.node(b).unwrap().upload.active(), 0);
    assert_eq!(sim.node(ORIGIN).unwrap().upload.active(), 0);
    assert_eq!(sim.node(b).unwrap().partial(0, LAST), None);
    assert!(all_freed(&sim));
    assert!(sim.d.wasted_bytes > 0);
}

#[test]
fn a_part_from_a_supplier_that_vanished_is_given_up_once_silent() {
    // C pulls a part from B, which uploads it slowly; B vanishes midway. C's partners
    // notice only after `leave_detect_ms`, but C gives the part up `PIECE_SILENCE` after
    // its last piece landed, long before the mesh's request timeout.
    let mut sim = swarm_at(16_000_000, 2, 8_000_000, 3_000_000);
    let (b, c) = (1, 2);
    let now = sim.now;
    sim.node_mut(b).unwrap().store(0, now);
    sim.request(c, sim.id_of(b), (0, LAST), false);
    sim.run_until(now + sim.rtt(b, c) + 100 * MS);
    let tr = sim.node(c).unwrap().partial(0, LAST).expect("arriving");
    sim.vanish(b);
    let last = sim.transfers.get(tr).unwrap().landed();
    let silence = starling::node::PIECE_SILENCE.as_nanos() as Ns;
    assert!(
        last + silence < now + 3000 * MS,
        "before the request timeout"
    );
    sim.run_until(last + silence - MS);
    assert!(
        !sim.transfers.get(tr).unwrap().receiver_done,
        "not yet silent"
    );
    sim.run_until(last + silence);
    assert!(sim.transfers.get(tr).is_none_or(|t| t.receiver_done));
    assert_eq!(sim.node(c).unwrap().partial(0, LAST), None);
    assert!(!has_part(&sim, c, LAST));
    assert!(sim.node(c).unwrap().downs.is_empty());
}

#[test]
fn a_second_copy_arriving_takes_over_the_relays() {
    // B gets part LAST from the origin and from D at once; C's relay follows whichever
    // landed first. When B drops that one, the relay follows the other copy instead of
    // being reset, as `net`'s relay reads the pieces whichever transfer lands them.
    let mut sim = swarm_at(16_000_000, 3, 8_000_000, 8_000_000);
    let (b, c, d) = (1, 2, 3);
    let now = sim.now;
    sim.node_mut(d).unwrap().store(0, now);
    sim.request(b, sim.origin_id, (0, LAST), false);
    sim.request(b, sim.id_of(d), (0, LAST), false);
    sim.run_until(now + sim.rtt(b, ORIGIN).max(sim.rtt(b, d)));
    let first = sim.node(b).unwrap().partial(0, LAST).unwrap();
    let supplier = sim.transfers.get(first).unwrap().from;
    let t1 = sim.now;
    sim.request(c, sim.id_of(b), (0, LAST), false);
    sim.run_until(t1 + sim.rtt(b, c));
    assert_eq!(sim.d.relayed, 1);
    sim.cancel(b, sim.id_of(supplier), 0, LAST);
    let after = sim.node(b).unwrap().partial(0, LAST).unwrap();
    assert_ne!(after, first);
    assert_ne!(sim.transfers.get(after).unwrap().from, supplier);
    sim.run_until(t1 + 5000 * MS);
    assert_eq!(sim.d.relay_resets, 0);
    assert!(has_part(&sim, b, LAST) && has_part(&sim, c, LAST));
    assert_eq!(sim.node(b).unwrap().upload.active(), 0);
    assert!(all_freed(&sim));
}

#[test]
fn empty_parts_are_held_with_the_header() {
    // 4 pieces in 8 parts: every other part is empty, held once a header is here.
    let mut sim = swarm_at(500_000, 2, 8_000_000, 8_000_000);
    assert_eq!((sim.pieces, sim.empty_parts.count_ones()), (4, 4));
    let (b, c) = (1, 2);
    let t0 = sim.now;
    sim.push(ORIGIN, sim.id_of(b), 0, 1);
    sim.run_until(t0 + sim.one_way(ORIGIN, b));
    let empty = sim.empty_parts;
    assert_eq!(sim.node(b).unwrap().got(0) & empty, empty);
    for part in [3, 5, 7] {
        sim.request(b, sim.origin_id, (0, part), false);
    }
    // An empty part is answered from what is here, not refused.
    sim.request(c, sim.id_of(b), (0, 0), false);
    sim.run_until(t0 + 1000 * MS);
    assert!(arrival(&sim, b).is_some());
    assert!(has_part(&sim, c, 0));
    assert_eq!((sim.d.unavailable, sim.d.unwanted), (0, 0));
    assert!(all_freed(&sim));
}

/// Node `b` of a [`swarm_at`] 16 Mbit/s swarm holds segment 0 and knows the bitrate, so
/// its 3 Mbit/s give it one upload slot. Returns the time.
fn one_slot_holder(sim: &mut Sim, b: u32) -> Ns {
    let now = sim.now;
    let n = sim.node_mut(b).unwrap();
    n.store(0, now);
    n.upload.note_bitrate(16_000_000);
    assert_eq!(n.slots(), 1);
    now
}

#[test]
fn upload_slots_turn_extra_requests_away() {
    // 3 Mbit/s for a 16 Mbit/s stream: one slot once the bitrate is known; 8 before.
    let mut sim = swarm_at(16_000_000, 3, 8_000_000, 3_000_000);
    let b = 1;
    assert_eq!(sim.node(ORIGIN).unwrap().slots(), 8);
    assert_eq!(sim.node(b).unwrap().slots(), 8);
    let now = one_slot_holder(&mut sim, b);
    // A part (16 pieces) outlasts B's burst, so its slot is still taken.
    sim.request(2, sim.id_of(b), (0, LAST), false);
    sim.request(3, sim.id_of(b), (0, LAST), false);
    sim.run_until(now + 5000 * MS);
    assert_eq!((sim.d.busy, sim.d.busy_backlog), (1, 0));
    assert!(has_part(&sim, 2, LAST) != has_part(&sim, 3, LAST));
    assert!(all_freed(&sim));
}

#[test]
fn a_join_request_is_served_beyond_the_slot_cap() {
    // 24 Mbit/s for a 16 Mbit/s stream: one slot, and half a stream spare for a joiner.
    let mut sim = swarm_at(16_000_000, 4, 8_000_000, 24_000_000);
    let b = 1;
    let now = one_slot_holder(&mut sim, b);
    // B's one slot is taken by the first request; the join request gets a slot of its
    // own, the third plain one is told Busy.
    sim.request(2, sim.id_of(b), (0, LAST), false);
    sim.run_until(now + 20 * MS);
    sim.request(3, sim.id_of(b), (0, LAST), true);
    sim.run_until(now + 40 * MS);
    sim.request(4, sim.id_of(b), (0, LAST), false);
    sim.run_until(now + 5000 * MS);
    assert_eq!(sim.d.busy, 1);
    assert!(has_part(&sim, 2, LAST) && has_part(&sim, 3, LAST));
    assert!(!has_part(&sim, 4, LAST));
    assert!(all_freed(&sim));
}

#[test]
fn a_part_the_origin_seeded_is_served_beyond_the_slot_cap() {
    // 3 Mbit/s for a 16 Mbit/s stream: one slot, and nothing spare for a joiner.
    let mut sim = swarm_at(16_000_000, 5, 8_000_000, 3_000_000);
    let b = 1;
    let t0 = sim.now;
    sim.push(ORIGIN, sim.id_of(b), 0, LAST);
    sim.run_until(t0 + 2000 * MS);
    assert!(has_part(&sim, b, LAST));
    let now = one_slot_holder(&mut sim, b);
    // B's one slot goes to a plain part; the part B is the swarm's first copy of gets a
    // slot beyond it; another plain part is told Busy.
    sim.request(2, sim.id_of(b), (0, 0), false);
    sim.run_until(now + 20 * MS);
    sim.request(3, sim.id_of(b), (0, LAST), false);
    sim.run_until(now + 40 * MS);
    sim.request(4, sim.id_of(b), (0, 1), false);
    sim.run_until(now + 5000 * MS);
    assert_eq!(sim.d.busy, 1);
    assert!(has_part(&sim, 2, 0) && has_part(&sim, 3, LAST));
    assert!(!has_part(&sim, 4, 1));
    assert!(all_freed(&sim));
}

#[test]
fn a_segment_comes_in_parts_from_several_suppliers() {
    // A healthy small swarm, all present before the first segment: every viewer ends
    // with every segment, and some segments were put together from several suppliers.
    let cfg = SimConfig {
        peers: 8,
        seconds: 10.0,
        rtt_ms: 20.0,
        join_window_ms: 200,
        viewer_upload_bps: 6_000_000,
        origin_upload_bps: 8_000_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(&cfg);
    sim.start();
    sim.run_until(sim.end);
    for i in 1..=cfg.peers as u32 {
        let missing: Vec<u64> = (0..sim.segments)
            .filter(|k| !sim.node(i).unwrap().holds(*k))
            .collect();
        assert!(missing.is_empty(), "viewer {i} lacks {missing:?}");
        assert!(sim.node(i).unwrap().assembling.is_empty());
    }
    assert!(sim.d.multi_supplier_segments > 0, "{:?}", sim.d);
}

#[test]
fn a_full_partner_set_closes_after_the_peer_sample() {
    let mut sim = swarm(2, 8_000_000, 3_000_000);
    let (b, c) = (1, 2);
    let t0 = sim.now;
    sim.disconnect(b, sim.id_of(c), DisconnectReason::PartnerSetFull);
    // The closer stops using it at once; the other side may still send until the close.
    assert_eq!(sim.usable(b, c), None);
    assert!(sim.usable(c, b).is_some());
    let delay = DisconnectReason::PartnerSetFull.close_delay().as_nanos() as Ns;
    sim.run_until(t0 + delay - 1);
    assert!(sim.conn(b, c).is_some());
    assert!(sim.node(c).unwrap().partners.contains(&b));
    sim.run_until(t0 + delay + sim.one_way(b, c));
    assert!(sim.conn(b, c).is_none());
    assert!(!sim.node(c).unwrap().partners.contains(&b));
    // Any other reason closes at once.
    let t1 = sim.now;
    sim.disconnect(ORIGIN, sim.id_of(c), DisconnectReason::Refused);
    sim.run_until(t1 + sim.one_way(ORIGIN, c));
    assert!(sim.conn(ORIGIN, c).is_none());
}

/// An origin and `homes + members` viewers, `members` of them on one site with a WAN of
/// `wan_bps` each way, nobody connected yet: (site viewers, homes).
fn site_and_homes(members: usize, homes: usize, wan_bps: u64) -> (Sim, Vec<u32>, Vec<u32>) {
    let cfg = SimConfig {
        peers: members + homes,
        rtt_ms: 10.0,
        sites: vec![crate::SiteClass { count: 1, members }],
        site_wan_bps: wan_bps,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(&cfg);
    sim.spawn_origin();
    sim.setup_sites();
    for _ in 0..members + homes {
        sim.join();
    }
    let all = 1..=(members + homes) as u32;
    let on_site = all.clone().filter(|&i| sim.site_of(i) != NO_SITE).collect();
    let at_home = all.filter(|&i| sim.site_of(i) == NO_SITE).collect();
    (sim, on_site, at_home)
}

#[test]
fn site_viewers_share_a_public_address_and_meet_over_their_lan() {
    let (mut sim, site, homes) = site_and_homes(3, 2, 3_000_000);
    assert_eq!((site.len(), homes.len()), (3, 2));
    let (a, b, h) = (site[0], site[1], homes[0]);
    let (na, nb) = (sim.node(a).unwrap(), sim.node(b).unwrap());
    // One public address (a port each), a LAN address each; homes have none.
    assert_eq!(na.addr.ip(), nb.addr.ip());
    assert_ne!(na.addr, nb.addr);
    assert!(na.local.is_some() && na.local != nb.local);
    assert!(sim.node(h).unwrap().local.is_none());
    assert_eq!(sim.rtt(a, b), sim.lan_ns);
    assert!(sim.rtt(a, h) > sim.lan_ns);
    let addr_b = nb.addr;
    // Its public address alone is a hairpin the site's NAT does not turn.
    let failures = sim.d.nat_failures;
    sim.dial(a, sim.id_of(b), Some(addr_b), None);
    assert_eq!(sim.d.nat_failures, failures + 1);
    // Dialled on its LAN address too, it gets in, though b's NAT saw nothing from a.
    sim.dial_done(a, b, 0);
    assert!(sim.conn(a, b).is_some(), "a LAN dial meets no NAT");
    // From home, the site's cone NAT keeps a dial out until the viewer has sent there.
    sim.dial_done(h, a, 0);
    assert!(sim.conn(h, a).is_none());
    sim.node_mut(a).unwrap().open_pinhole(h, 0);
    sim.dial_done(h, a, 0);
    assert!(sim.conn(h, a).is_some());
    // Both dial on the LAN address the mesh carries for a site viewer.
    let (c, nc) = (site[2], sim.node(site[2]).unwrap());
    let (addr_c, local_c) = (nc.addr, nc.local);
    sim.dial(b, sim.id_of(c), Some(addr_c), local_c);
    assert_eq!(sim.d.nat_failures, failures + 1);
}

#[test]
fn a_sites_wan_caps_what_comes_in_and_out_but_not_its_lan() {
    // 1 Mbit/s: 125,000 bytes/s behind a 64 KiB burst.
    let (mut sim, site, homes) = site_and_homes(2, 1, 1_000_000);
    let (a, b, h) = (site[0], site[1], homes[0]);
    let piece = 16_384;
    let start = sim.now;
    let into: Vec<Ns> = (0..12).map(|_| sim.carry(h, a, piece)).collect();
    let one_way = sim.one_way(h, a);
    // The first four leave on the burst; the rest are paced at the WAN's rate.
    assert_eq!(into[0], start + one_way);
    let paced = (piece as f64 * 1e9 / 125_000.0) as Ns;
    let gap = into[11] - into[10];
    assert!(gap.abs_diff(paced) <= 1, "{gap} vs {paced}");
    // The LAN is not behind that queue.
    let lan = sim.carry(b, a, piece);
    assert_eq!(lan, start + sim.lan_ns / 2);
    // Out of the site, the other way's link is free still.
    assert_eq!(sim.carry(a, h, piece), start + one_way);
    let d = &sim.d;
    assert_eq!(d.site_wan_down_bytes, 12 * piece);
    assert_eq!(d.site_wan_up_bytes, piece);
    assert_eq!(d.site_lan_bytes, piece);
}

#[test]
fn a_sites_wire_counts_packet_headers_and_acknowledgements_across_its_wan_alone() {
    let (mut sim, site, homes) = site_and_homes(2, 1, 1_000_000);
    let (a, b, h) = (site[0], site[1], homes[0]);
    let wire = |sim: &Sim| sim.sites.first().map_or(0, |s| s.down_wire_bytes);
    // A 16 KiB piece from home: its 12 packets with their headers come in.
    let piece = 16_384;
    sim.carry(h, a, piece);
    let packets = piece.div_ceil(WIRE_PAYLOAD);
    assert_eq!(wire(&sim), piece + packets * WIRE_HEADERS);
    // One going out brings back only its acknowledgements: one for each few packets.
    sim.carry(a, h, piece);
    let acks = packets.div_ceil(WIRE_ACK_EVERY) * WIRE_ACK;
    assert_eq!(wire(&sim), piece + packets * WIRE_HEADERS + acks);
    // A lone message out is acknowledged alone; the LAN counts for nothing.
    sim.count_wire(a, h, 20, true);
    sim.carry(b, a, piece);
    assert_eq!(wire(&sim), piece + packets * WIRE_HEADERS + acks + WIRE_ACK);
}

#[test]
fn access_rtts_spread_log_normally_when_asked() {
    let spread = |sigma: f64| {
        let mut sim = Sim::new(&SimConfig {
            peers: 0,
            rtt_ms: 40.0,
            rtt_spread: sigma,
            ..SimConfig::default()
        });
        let draws: Vec<f64> = (0..2000).map(|_| sim.draw_access() as f64 / 1e6).collect();
        let lo = draws.iter().copied().fold(f64::MAX, f64::min);
        let hi = draws.iter().copied().fold(0.0, f64::max);
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        (lo, hi, mean)
    };
    // Without: uniform in [20, 60] ms.
    let (lo, hi, _) = spread(0.0);
    assert!(lo >= 20.0 && hi < 60.0, "{lo} {hi}");
    // σ 1: a far wider spread, within [10, 320] ms, about the same mean.
    let (lo, hi, mean) = spread(1.0);
    assert!(lo >= 10.0 && hi <= 320.0, "{lo} {hi}");
    assert!(hi / lo > 10.0, "{lo} {hi}");
    assert!((30.0..50.0).contains(&mean), "{mean}");
}

#[test]
fn a_full_site_wan_queues_briefly_and_takes_its_flows_in_turn() {
    // The origin (50 Mbit/s) pushes a whole segment to each of two viewers of a site whose
    // WAN brings in 1 Mbit/s: 500 kB through 125 kB/s.
    let (mut sim, site, _) = site_and_homes(2, 0, 1_000_000);
    let cfg = SimConfig {
        origin_upload_bps: 50_000_000,
        ..sim.cfg.clone()
    };
    sim.cfg = cfg;
    sim.nodes[ORIGIN as usize].link = crate::link::Link::new(crate::LinkModel::Fifo, 6.25e6);
    let (a, b) = (site[0], site[1]);
    for v in [a, b] {
        sim.dial_done(v, ORIGIN, 0);
    }
    sim.run_until(100 * MS);
    let t0 = sim.now;
    sim.node_mut(ORIGIN).unwrap().store(0, t0);
    push_all(&mut sim, a);
    push_all(&mut sim, b);
    // The link's queue never holds much more than 200 ms (plus the piece let in last).
    let mut longest = 0;
    while let Some((t, _, _)) = sim.queue.peek() {
        if t > t0 + 8000 * MS {
            break;
        }
        sim.run_until(t);
        longest = longest.max(sim.sites[0].down.backlog(sim.now));
    }
    let piece = (16_384.0 * 1e9 / 125_000.0) as Ns;
    assert!(longest <= 200 * MS + 2 * piece, "{longest}");
    let (ta, tb) = (arrival(&sim, a).unwrap(), arrival(&sim, b).unwrap());
    // About 3.5 s of link for the two (4 s less the 64 KiB burst). Taken in turn, the
    // first finishes well past halfway though its pushes went first and filled the burst;
    // one after the other, it would finish before halfway.
    let total = ta.max(tb) - t0;
    assert!(total >= 3400 * MS, "{total}");
    let first = ta.min(tb) - t0;
    assert!(first * 3 > total * 2, "{first} of {total}");
    assert!(all_freed(&sim));
}
