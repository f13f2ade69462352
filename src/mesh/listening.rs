//! One listener a site for each partner off it. Every viewer of an office keeps partners at
//! other sites, and each of them announces its parts to every one of the office's viewers
//! it partners: the same news crosses the office's WAN once per viewer, each message a
//! packet plus its acknowledgement. So a viewer relays what its partners off the site
//! announce to its neighbours on the site ([`Control::Heard`], a LAN away), and a neighbour
//! that hears a partner's news that way, from a neighbour ranked before it for that partner,
//! asks the partner to send it no more ([`Control::Quiet`]). The first-ranked neighbour of a
//! partner keeps listening; the news reaches the site once. A relay that stops for
//! [`QUIET_LAPSE`] (the relaying neighbour left, or dropped the partner) ends the quiet.

use super::{Action, Mesh};
use crate::stream::NodeId;
use crate::wire::Control;
use std::time::{Duration, Instant};

/// How long a partner stays quiet with no relay of its news: several segments' worth, since
/// a partner announces nothing to a neighbour that already holds what it gets, and each end
/// of a quiet costs two messages across the WAN.
const QUIET_LAPSE: Duration = Duration::from_secs(10);

impl Mesh {
    /// Partner `from` announced `parts` of `number`: if it is off our site, our neighbours
    /// on the site hear of it from us.
    pub(super) fn relay_have(&mut self, from: NodeId, number: u64, parts: u32) {
        if self
            .peers
            .get(&from)
            .is_none_or(|p| p.same_site || p.is_origin())
        {
            return;
        }
        // Queued while the partners are walked: this runs on every `Have`, so no list of
        // neighbours is gathered first.
        for (n, _) in self.peers.iter().filter(|(_, p)| p.same_site) {
            let msg = Control::Heard {
                peer: from,
                number,
                parts,
            };
            self.actions.push_back(Action::Send { peer: *n, msg });
        }
    }

    /// Neighbour `from` says partner `peer` announced `parts` of `number`. Taken as
    /// `peer`'s own announcement when `from` is of our site and `peer` a partner of ours off
    /// it; then, if `from` ranks before us for `peer`, `peer` is asked to tell us nothing
    /// more. True when it is worth scheduling (as [`Mesh::learn`]).
    pub(super) fn heard(
        &mut self,
        now: Instant,
        from: NodeId,
        peer: NodeId,
        number: u64,
        parts: u32,
    ) -> bool {
        if self.peers.get(&from).is_none_or(|n| !n.same_site) {
            return false;
        }
        let before_us = listen_rank(&from, &peer) < listen_rank(&self.me, &peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.same_site || p.is_origin() {
            return false;
        }
        if before_us {
            let asked = p.relayed_by.is_some();
            p.relayed_by = Some((from, now));
            if !asked {
                self.send(peer, Control::Quiet { on: true });
            }
        }
        self.learn(now, peer, &[(number, parts)])
    }

    /// Partner `from` asks for no `Have`s (`on`), or for them again.
    pub(super) fn quiet(&mut self, now: Instant, from: NodeId, on: bool) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.quiet = on;
        if on {
            p.held_have = None;
        } else {
            // What it missed meanwhile comes with the next full buffer map, sent at once.
            p.next_buffer_map = now;
        }
    }

    /// Asks again for the `Have`s of each partner whose relay stopped for [`QUIET_LAPSE`]
    /// or whose relaying neighbour is gone from our site.
    pub(super) fn end_lapsed_quiet(&mut self, now: Instant) {
        let mut lapsed = Vec::new();
        for (id, p) in self.peers.iter() {
            let Some((by, at)) = p.relayed_by else {
                continue;
            };
            let relayer_here = self.peers.get(&by).is_some_and(|n| n.same_site);
            if !relayer_here || now.saturating_duration_since(at) >= QUIET_LAPSE {
                lapsed.push(*id);
            }
        }
        for id in lapsed {
            if let Some(p) = self.peers.get_mut(&id) {
                p.relayed_by = None;
            }
            self.send(id, Control::Quiet { on: false });
        }
    }
}

/// Where `node` ranks among its site's viewers to listen to `partner`: a hash of the two,
/// so each partner has its own first listener and the listening spreads over the site.
fn listen_rank(node: &NodeId, partner: &NodeId) -> u64 {
    let word = |id: &NodeId| {
        let [a, b, c, d, e, f, g, h, ..] = id.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    };
    super::scramble(word(node) ^ word(partner).rotate_left(32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::{
        announce, contact, drain, haves, id, origin_announces_nine, sent, viewer_connected, ORIGIN,
    };
    use crate::mesh::Action;
    use crate::stream::ALL_PARTS;
    use crate::wire::Role;
    use std::net::SocketAddr;

    /// Viewer 10 with the origin, partners `far` off its site, and neighbours 20 and 30 on
    /// its LAN.
    fn office(t0: Instant, far: &[u8]) -> Mesh {
        let mut v = viewer_connected(t0, far);
        for n in [20u8, 30] {
            let lan = contact(id(n), SocketAddr::from(([192, 168, 1, n], 4433)));
            v.handle_connected(t0, lan, Role::Viewer, true, None, true);
        }
        origin_announces_nine(&mut v, t0);
        drain(&mut v);
        v
    }

    fn heard(actions: &[Action]) -> Vec<(NodeId, NodeId, u64, u32)> {
        sent(actions, |to, msg| match msg {
            Control::Heard {
                peer,
                number,
                parts,
            } => Some((to, *peer, *number, *parts)),
            _ => None,
        })
    }

    fn quiets(actions: &[Action]) -> Vec<(NodeId, bool)> {
        sent(actions, |to, msg| match msg {
            Control::Quiet { on } => Some((to, *on)),
            _ => None,
        })
    }

    /// A partner number for which neighbour 20 ranks before us (10), or after us.
    fn partner_where_20_ranks(before: bool) -> u8 {
        (40..=250)
            .find(|&p| (listen_rank(&id(20), &id(p)) < listen_rank(&id(10), &id(p))) == before)
            .unwrap_or(40)
    }

    #[test]
    fn a_site_viewer_relays_its_partners_announcements_from_off_the_site_to_its_neighbours() {
        let t0 = Instant::now();
        let mut v = office(t0, &[40]);
        announce(&mut v, t0, 40, 9, 0b11);
        let mut sent = heard(&drain(&mut v));
        sent.sort();
        assert_eq!(
            sent,
            vec![(id(20), id(40), 9, 0b11), (id(30), id(40), 9, 0b11)]
        );
        // The origin's news and a neighbour's are the site's own already.
        announce(&mut v, t0, ORIGIN, 10, ALL_PARTS);
        announce(&mut v, t0, 20, 9, 0b100);
        assert!(heard(&drain(&mut v)).is_empty());
        // A viewer with no neighbours relays nothing.
        let mut home = viewer_connected(t0, &[40]);
        origin_announces_nine(&mut home, t0);
        announce(&mut home, t0, 40, 9, 0b11);
        assert!(heard(&drain(&mut home)).is_empty());
    }

    #[test]
    fn news_relayed_by_a_neighbour_ranked_first_quiets_the_partner_and_counts_as_its_own() {
        let t0 = Instant::now();
        let (first, after) = (partner_where_20_ranks(true), partner_where_20_ranks(false));
        let mut v = office(t0, &[first, after]);
        for p in [first, after] {
            v.handle_control(
                t0,
                id(20),
                Control::Heard {
                    peer: id(p),
                    number: 9,
                    parts: 0b101,
                },
            );
        }
        // Only the partner neighbour 20 listens to before us is asked for quiet, once.
        assert_eq!(quiets(&drain(&mut v)), vec![(id(first), true)]);
        let again = Control::Heard {
            peer: id(first),
            number: 9,
            parts: 0b1000,
        };
        v.handle_control(t0, id(20), again);
        assert!(quiets(&drain(&mut v)).is_empty());
        // What was heard is what each partner holds.
        for (p, parts) in [(first, 0b1101), (after, 0b101)] {
            let held = v.peers.get(&id(p)).map(|q| q.have.get(9));
            assert_eq!(held, Some(parts), "partner {p}");
        }
    }

    #[test]
    fn news_heard_from_off_the_site_or_about_the_site_is_ignored() {
        let t0 = Instant::now();
        let mut v = office(t0, &[40, 41]);
        let cases = [(40, 41), (20, 30), (20, ORIGIN), (20, 99)];
        for (from, about) in cases {
            let msg = Control::Heard {
                peer: id(about),
                number: 9,
                parts: 0b1,
            };
            v.handle_control(t0, id(from), msg);
        }
        assert!(quiets(&drain(&mut v)).is_empty());
        for p in [41, 30] {
            let held = v.peers.get(&id(p)).map(|q| q.have.get(9));
            assert_eq!(
                held,
                Some(0),
                "{p} heard of through a partner not able to tell"
            );
        }
    }

    #[test]
    fn a_quiet_partner_is_told_nothing_until_it_asks_again() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[40, 41]);
        origin_announces_nine(&mut v, t0);
        v.handle_control(t0, id(40), Control::Quiet { on: true });
        drain(&mut v);
        v.handle_receiving(t0, id(ORIGIN), 9, 0);
        assert_eq!(haves(&drain(&mut v)), vec![(id(41), 9, 1)]);
        // Asked again, it gets a full buffer map at the next maintenance and news again.
        v.handle_control(t0, id(40), Control::Quiet { on: false });
        v.handle_segment(t0, Some(id(ORIGIN)), 8, 1000);
        v.handle_tick(t0 + Duration::from_secs(1));
        let maps = sent(&drain(&mut v), |to, msg| {
            matches!(msg, Control::BufferMap { .. }).then_some(to)
        });
        assert!(maps.contains(&id(40)), "{maps:?}");
        v.handle_receiving(t0, id(ORIGIN), 9, 1);
        let to_40 = haves(&drain(&mut v))
            .into_iter()
            .filter(|(p, ..)| *p == id(40))
            .count();
        assert_eq!(to_40, 1);
    }

    #[test]
    fn the_quiet_ends_when_the_relay_lapses_or_the_relaying_neighbour_leaves() {
        let t0 = Instant::now();
        let p = partner_where_20_ranks(true);
        for leaves in [false, true] {
            let mut v = office(t0, &[p]);
            let msg = Control::Heard {
                peer: id(p),
                number: 9,
                parts: 0b1,
            };
            v.handle_control(t0, id(20), msg);
            drain(&mut v);
            let t1 = t0 + Duration::from_secs(1);
            v.handle_tick(t1);
            assert!(quiets(&drain(&mut v)).is_empty(), "relayed a second ago");
            let t2 = if leaves {
                v.handle_disconnected(t1, id(20));
                t1 + Duration::from_secs(1)
            } else {
                t0 + QUIET_LAPSE + Duration::from_secs(1)
            };
            v.handle_tick(t2);
            assert_eq!(quiets(&drain(&mut v)), vec![(id(p), false)], "{leaves}");
            v.handle_tick(t2 + Duration::from_secs(1));
            assert!(quiets(&drain(&mut v)).is_empty(), "asked again once");
        }
    }
}
