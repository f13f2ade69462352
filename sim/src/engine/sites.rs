//! Sites (offices): viewers behind one NAT and one public address, on one LAN, sharing one
//! WAN link capped each way. Which viewers are on which site, their addresses, the path a
//! piece takes (over the LAN, or out through the sender's WAN and in through the
//! receiver's), and what each site pulled across its WAN.

use super::transfers::TRef;
use super::{Ev, Ns, Sim, NS_PER_MS};
use crate::link::Link;
use crate::LinkModel;
use rand::seq::SliceRandom;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A node on no site (a home, or the origin).
pub(super) const NO_SITE: u32 = u32::MAX;

/// The longest a site's WAN link queues a piece (the lab's routers: tbf with 200 ms).
const WAN_QUEUE: Ns = 200 * NS_PER_MS;

/// Segments a site's WAN tally remembers (the store's window: nothing older is taken).
const TALLY: usize = 64;

/// Media bytes in a full packet: quinn's path MTU discovery grows datagrams to 1472 bytes
/// ([`starling::tls::MTU_UPPER_BOUND`]), of which QUIC's header, tag and frame take ~40.
pub(super) const WIRE_PAYLOAD: u64 = 1430;
/// A packet's headers as the lab's interface counters see them: Ethernet, IPv4, UDP, QUIC.
pub(super) const WIRE_HEADERS: u64 = 80;
/// A packet of acknowledgements alone, headers included (36-38 bytes of UDP payload).
pub(super) const WIRE_ACK: u64 = 80;
/// Packets acknowledged by one acknowledgement ([`starling::tls::ACK_EVERY`]).
pub(super) const WIRE_ACK_EVERY: u64 = starling::tls::ACK_EVERY as u64;

/// One site.
#[derive(Debug)]
pub(super) struct Site {
    /// Its NAT's public address: its viewers are seen there, each at a port of its own.
    ip: Ipv4Addr,
    /// Its access RTT to the internet, which every viewer on it shares.
    pub(super) access: Ns,
    /// Its WAN link out and in, each a token bucket booked piece by piece as a node's
    /// upload is, queueing at most [`WAN_QUEUE`].
    pub(super) up: Link<TRef>,
    pub(super) down: Link<TRef>,
    /// Uploads whose next piece waits for room on each link, in turn, and when the next
    /// is woken (`Ns::MAX`: not scheduled).
    up_line: VecDeque<TRef>,
    down_line: VecDeque<TRef>,
    up_wake: Ns,
    down_wake: Ns,
    /// Viewers placed on it so far (their ports and LAN addresses).
    placed: u32,
    /// The nodes placed on it (departed ones included).
    members: Vec<u32>,
    /// Segment bytes that came in across its WAN within the run (landed by its end).
    down_bytes: u64,
    /// Bytes on the wire that came in across its WAN within the run ([`Sim::count_wire`]).
    pub(super) down_wire_bytes: u64,
    /// Segments the site needed, each counted once: held by one of its viewers, or judged
    /// for continuity at one.
    segments_needed: u64,
    /// Per segment in the window: its number, the parts kept across the WAN by any of its
    /// viewers, and whether it was counted as needed.
    tally: Vec<(u64, u32, bool)>,
}

impl Site {
    /// The tally of `number`, made fresh if its slot holds an older one; None if the slot
    /// holds a newer one (a viewer more than the window behind the site's others).
    fn tally(&mut self, number: u64) -> Option<&mut (u64, u32, bool)> {
        let slot = self.tally.get_mut((number % TALLY as u64) as usize)?;
        if slot.0 == u64::MAX || slot.0 < number {
            *slot = (number, 0, false);
        }
        (slot.0 == number).then_some(slot)
    }
}

impl Sim {
    /// Makes the configured sites, and the order in which the initial viewers are placed:
    /// site by site as many as they hold, the rest homes, shuffled. Draws from the run's
    /// generator only when there are sites, so runs without keep their sequence.
    pub(super) fn setup_sites(&mut self) {
        if self.cfg.sites.is_empty() {
            return;
        }
        let rate = (self.cfg.site_wan_bps / 8) as f64;
        let classes = self.cfg.sites.clone();
        let mut plan = Vec::with_capacity(self.cfg.peers);
        for class in classes {
            for _ in 0..class.count {
                let k = self.sites.len() as u32;
                let [_, a, b, c] = k.to_be_bytes();
                let access = self.draw_access();
                self.sites.push(Site {
                    ip: Ipv4Addr::new(100, 64 + a, b, c),
                    access,
                    up: Link::new(LinkModel::Shared, rate),
                    down: Link::new(LinkModel::Shared, rate),
                    up_line: VecDeque::new(),
                    down_line: VecDeque::new(),
                    up_wake: Ns::MAX,
                    down_wake: Ns::MAX,
                    placed: 0,
                    members: Vec::new(),
                    down_bytes: 0,
                    down_wire_bytes: 0,
                    segments_needed: 0,
                    tally: vec![(u64::MAX, 0, false); TALLY],
                });
                plan.extend(std::iter::repeat_n(k, class.members));
            }
        }
        plan.resize(self.cfg.peers.max(plan.len()), NO_SITE);
        plan.shuffle(&mut self.rng);
        // Joins take from the back.
        plan.reverse();
        self.site_plan = plan;
        self.site_marks = vec![0; self.sites.len()];
        self.d.sites = self.sites.len() as u64;
    }

    /// The site of the next initial viewer to join.
    pub(super) fn next_planned_site(&mut self) -> u32 {
        self.site_plan.pop().unwrap_or(NO_SITE)
    }

    /// A viewer placed on `site`: its public address (the site's, at a port of its own) and
    /// its LAN address.
    pub(super) fn place(&mut self, site: u32) -> Option<(SocketAddr, SocketAddr)> {
        let s = self.sites.get_mut(site as usize)?;
        s.placed = s.placed.wrapping_add(1);
        let p = s.placed;
        let port = 1024 + (p % 64_000) as u16;
        let public = SocketAddr::V4(SocketAddrV4::new(s.ip, port));
        let [_, _, hi, lo] = (p % 65_000 + 1).to_be_bytes();
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 168, hi, lo), 7000));
        self.d.site_viewers_started += 1;
        Some((public, local))
    }

    /// Node `i` is on `site`.
    pub(super) fn add_member(&mut self, site: u32, i: u32) {
        if let Some(s) = self.sites.get_mut(site as usize) {
            s.members.push(i);
        }
    }

    /// Site viewer `i` asks across its WAN for part `part` of `number`: what its site had of
    /// the part then, for the report (a partner of its site held it, or was receiving it, or
    /// only a viewer of its site that is not its partner held or received it).
    pub(super) fn note_wan_request(&mut self, i: u32, (number, part): (u64, u8)) {
        let site = self.site_of(i);
        let Some(s) = self.sites.get(site as usize) else {
            return;
        };
        let bit = 1u32 << part;
        let has = |j: u32| {
            self.node(j)
                .filter(|n| n.alive())
                .map_or((false, false), |n| {
                    (n.got(number) & bit != 0, n.partial(number, part).is_some())
                })
        };
        let partners = self.node(i).map_or(&[][..], |n| &n.partners[..]);
        let lan: Vec<u32> = partners
            .iter()
            .copied()
            .filter(|&p| self.site_of(p) == site)
            .collect();
        let kind = if lan.iter().any(|&p| has(p).0) {
            1
        } else if lan.iter().any(|&p| has(p).1) {
            2
        } else if s.members.iter().any(|&j| {
            let (held, arriving) = has(j);
            j != i && !lan.contains(&j) && (held || arriving)
        }) {
            3
        } else {
            0
        };
        let d = &mut self.d;
        d.site_wan_requests += 1;
        match kind {
            1 => d.site_wan_requests_partner_held += 1,
            2 => d.site_wan_requests_partner_arriving += 1,
            3 => d.site_wan_requests_elsewhere_on_site += 1,
            _ => {}
        }
    }

    pub(super) fn site_of(&self, i: u32) -> u32 {
        self.site_of.get(i as usize).copied().unwrap_or(NO_SITE)
    }

    /// The upload cap node `i` runs with and declares, as `--upload-limit` would set it: a
    /// home's uplink; none on a site, whose viewers (office desktops) know their LAN port
    /// but not the WAN they share, and learn their slots ([`starling::node::PathSlots`]).
    pub(super) fn cap_of(&self, i: u32) -> Option<u64> {
        let n = self.node(i)?;
        (self.site_of(i) == NO_SITE).then_some(n.cap_bps)
    }

    /// Both on one site: a LAN apart.
    pub(super) fn same_site(&self, a: u32, b: u32) -> bool {
        let s = self.site_of(a);
        s != NO_SITE && s == self.site_of(b)
    }

    /// A piece of `bytes` leaves `s` for `r` now: when it lands. Between two viewers of one
    /// site it crosses the LAN; otherwise it leaves through `s`'s site's WAN (if any),
    /// crosses the internet, and comes in through `r`'s site's WAN (if any), each link
    /// booked when the piece reaches it.
    pub(super) fn carry(&mut self, s: u32, r: u32, bytes: u64) -> Ns {
        let now = self.now;
        let (from, to) = (self.site_of(s), self.site_of(r));
        if from == NO_SITE && to == NO_SITE {
            return now + self.flight(s, r, bytes);
        }
        if from == to {
            self.d.site_lan_bytes += bytes;
            return now + self.flight(s, r, bytes);
        }
        self.count_wire(s, r, bytes, false);
        let mut t = now;
        if let Some(site) = self.sites.get_mut(from as usize) {
            t = site.up.book(t, bytes);
            self.d.site_wan_up_bytes += bytes;
        }
        t += self.flight(s, r, bytes);
        if let Some(site) = self.sites.get_mut(to as usize) {
            t = site.down.book(t, bytes);
            if t <= self.end {
                site.down_bytes += bytes;
            }
            self.d.site_wan_down_bytes += bytes;
            if s == super::ORIGIN {
                self.d.site_wan_down_origin_bytes += bytes;
            }
        }
        t
    }

    /// `payload` bytes go from `s` to `r` in one write (a piece, or a control message when
    /// `lone`): counts what crosses the sites' WANs on the way for it in packets, by the
    /// lab's wire (2026-12-07, `tcpdump` on an office's WAN): the media in packets of
    /// [`WIRE_PAYLOAD`] bytes, each with [`WIRE_HEADERS`] of headers, and acknowledgements
    /// back of [`WIRE_ACK`] bytes, one per [`WIRE_ACK_EVERY`] packets or one for a lone
    /// message. Counted, not queued on the links: the model of their timing is unchanged.
    pub(super) fn count_wire(&mut self, s: u32, r: u32, payload: u64, lone: bool) {
        let (from, to) = (self.site_of(s), self.site_of(r));
        if from == to || self.now > self.end {
            return;
        }
        let packets = payload.div_ceil(WIRE_PAYLOAD).max(1);
        let acks = if lone {
            1
        } else {
            packets.div_ceil(WIRE_ACK_EVERY)
        };
        if let Some(site) = self.sites.get_mut(to as usize) {
            site.down_wire_bytes += payload + packets * WIRE_HEADERS;
        }
        if let Some(site) = self.sites.get_mut(from as usize) {
            site.down_wire_bytes += acks * WIRE_ACK;
        }
    }

    /// The WAN link on the way from `s` to `r` whose queue is longer than [`WAN_QUEUE`]
    /// when a piece sent now would reach it: (site, inwards), the way out first.
    pub(super) fn wan_full(&self, s: u32, r: u32) -> Option<(u32, bool)> {
        let now = self.now;
        let (from, to) = (self.site_of(s), self.site_of(r));
        if from == to {
            return None;
        }
        if let Some(site) = self.sites.get(from as usize) {
            if site.up.backlog(now) > WAN_QUEUE {
                return Some((from, false));
            }
        }
        let site = self.sites.get(to as usize)?;
        // It reaches the link a one-way latency after it leaves.
        (site.down.backlog(now) > WAN_QUEUE + self.one_way(s, r)).then_some((to, true))
    }

    /// Upload `tr`'s next piece waits for `site`'s WAN link (`inwards`, or out) to have
    /// room, in line behind those waiting already: the link takes one piece from each in
    /// turn, as congestion control shares a bottleneck between flows.
    pub(super) fn wait_for_wan(&mut self, tr: TRef, site: u32, inwards: bool) {
        let Some(s) = self.sites.get_mut(site as usize) else {
            return;
        };
        let line = if inwards {
            &mut s.down_line
        } else {
            &mut s.up_line
        };
        if !line.contains(&tr) {
            line.push_back(tr);
        }
        self.wake_wan_line(site, inwards);
    }

    /// `site`'s WAN link (`inwards`, or out) has room: the first upload in line sends its
    /// piece, and the next is woken when there is room again.
    pub(super) fn wan_room(&mut self, site: u32, inwards: bool) {
        let Some(s) = self.sites.get_mut(site as usize) else {
            return;
        };
        let next = if inwards {
            s.down_wake = Ns::MAX;
            s.down_line.pop_front()
        } else {
            s.up_wake = Ns::MAX;
            s.up_line.pop_front()
        };
        // It books its piece (or, held by its own link or the other WAN, waits there). One
        // in line has no piece booked (it queued instead), so no pump of it is pending.
        if let Some(tr) = next.filter(|tr| self.waits_for_wan(*tr)) {
            self.pump(tr);
        }
        self.wake_wan_line(site, inwards);
    }

    /// Schedules the wake-up of `site`'s WAN line (`inwards`, or out) for when its link's
    /// queue is down to [`WAN_QUEUE`], unless it is empty or one is scheduled.
    fn wake_wan_line(&mut self, site: u32, inwards: bool) {
        let now = self.now;
        let Some(s) = self.sites.get_mut(site as usize) else {
            return;
        };
        let (link, waiting, wake) = if inwards {
            (&s.down, !s.down_line.is_empty(), &mut s.down_wake)
        } else {
            (&s.up, !s.up_line.is_empty(), &mut s.up_wake)
        };
        if waiting && *wake == Ns::MAX {
            let at = (now + link.backlog(now)).saturating_sub(WAN_QUEUE).max(now);
            *wake = at;
            self.at(at, Ev::WanRoom { site, inwards });
        }
    }

    /// Whether a transfer from `s` to `r` comes in across `r`'s site's WAN.
    pub(super) fn crosses_into_site(&self, s: u32, r: u32) -> bool {
        let to = self.site_of(r);
        to != NO_SITE && to != self.site_of(s)
    }

    /// Viewer `r` kept part `part` of `number` from across its site's WAN, from the origin
    /// if `origin` (`pushed`: a seeding push): tallied, a second WAN copy for the site noted.
    pub(super) fn kept_across_wan(
        &mut self,
        r: u32,
        (number, part): (u64, u8),
        origin: bool,
        pushed: bool,
    ) {
        let site = self.site_of(r);
        let Some(t) = self
            .sites
            .get_mut(site as usize)
            .and_then(|s| s.tally(number))
        else {
            return;
        };
        let bit = 1u32 << part;
        let again = t.1 & bit != 0;
        t.1 |= bit;
        self.d.site_wan_parts += 1;
        if again {
            self.d.site_wan_dup_parts += 1;
            if pushed {
                self.d.site_wan_dup_pushed += 1;
            } else if origin {
                self.d.site_wan_dup_origin_served += 1;
            }
        }
    }

    /// `site` needed segment `number` (one of its viewers held it, or was judged on it):
    /// counted once.
    pub(super) fn site_needed(&mut self, site: u32, number: u64) {
        let Some(s) = self.sites.get_mut(site as usize) else {
            return;
        };
        if let Some(t) = s.tally(number) {
            if !t.2 {
                t.2 = true;
                s.segments_needed += 1;
            }
        }
    }

    /// WAN download copies per site: bytes in by the run's end over the bytes of the
    /// segments it needed; (mean, max) over the sites that needed any.
    pub(super) fn site_copies(&self) -> (f64, f64) {
        self.copies_of(|s| s.down_bytes)
    }

    /// [`Sim::site_copies`] of the bytes on the wire ([`Sim::count_wire`]): mean and largest.
    pub(super) fn site_wire_copies(&self) -> (f64, f64) {
        self.copies_of(|s| s.down_wire_bytes)
    }

    fn copies_of(&self, bytes: impl Fn(&Site) -> u64) -> (f64, f64) {
        let copies: Vec<f64> = self
            .sites
            .iter()
            .filter(|s| s.segments_needed > 0)
            .map(|s| bytes(s) as f64 / (s.segments_needed * self.seg_bytes.max(1)) as f64)
            .collect();
        if copies.is_empty() {
            return (0.0, 0.0);
        }
        let mean = copies.iter().sum::<f64>() / copies.len() as f64;
        (mean, copies.iter().copied().fold(0.0, f64::max))
    }

    /// A node's access RTT: uniform in `[0.5, 1.5] × rtt_ms`, or with `--rtt-spread σ`
    /// `rtt_ms` times a log-normal factor of mean 1, kept within [0.25, 8].
    pub(super) fn draw_access(&mut self) -> Ns {
        use rand::Rng;
        let factor = if self.cfg.rtt_spread > 0.0 {
            let sigma = self.cfg.rtt_spread;
            // Box–Muller: one standard normal from two uniforms.
            let u1: f64 = 1.0 - self.rng.gen::<f64>();
            let u2: f64 = self.rng.gen();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (sigma * z - sigma * sigma / 2.0).exp().clamp(0.25, 8.0)
        } else {
            self.rng.gen_range(0.5..1.5)
        };
        (self.cfg.rtt_ms * factor * NS_PER_MS as f64) as Ns
    }
}
