//! Who this node is connected to: admitting or turning away connections, losing them,
//! dialling more of the peers it has heard of, re-dialling the origin, peer exchange, and
//! bans.

use super::peers::{Announced, Peer};
use super::{Action, Mesh};
use crate::node::nat::needs_rendezvous;
use crate::node::{DisconnectReason, Misbehaviour};
use crate::stream::{NodeId, PARTS};
use crate::wire::{Control, PeerInfo, Reach, Role, SiteTag, MAX_PEERS_PER_MESSAGE};
use rand::seq::SliceRandom;
use rand::Rng;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Broadcaster: turned-away viewers remembered for its peer samples.
const MAX_OVERFLOW: usize = 64;

/// Peers just turned away that may still ask for rendezvous ([`Mesh::introduce`]).
const MAX_INTRODUCING: usize = 64;

/// How long a peer turned away may still ask for a rendezvous: its connection closes
/// [`DisconnectReason::close_delay`] after the turn-away, 300 ms.
const INTRODUCE_WINDOW: Duration = Duration::from_secs(1);

/// Places a public viewer gives to peers behind symmetric NATs ([`Mesh::place_for`]).
const SYMMETRIC_RESERVE: usize = 5;

/// A rendezvous between the same two peers is passed on once in this long.
const RENDEZVOUS_REPEAT: Duration = Duration::from_secs(5);

/// How long after a missed deadline a viewer still seeks more partners ([`Mesh::starving`]).
const STARVING: Duration = Duration::from_secs(10);

/// How long a direct dial holds a place among the dials in progress: as long as it can
/// take (the transport's handshake timeout).
const DIAL_HELD: Duration = Duration::from_secs(10);

/// How long a dial through a rendezvous holds such a place ([`Mesh::dialling`]).
const RENDEZVOUS_HELD: Duration = Duration::from_secs(2);

/// Places for symmetric peers per stream's worth of a public viewer's upload
/// ([`Mesh::symmetric_places`]): a symmetric peer keeps about six partners, so this many
/// shares a stream's worth about as six partners of mean upload would.
const SYMMETRIC_PLACES_PER_STREAM: f64 = 5.0;

/// The first peer sample to a new partner goes this long after it connected; the gap then
/// doubles up to [`MeshConfig::pex_interval`].
const PEX_FIRST: Duration = Duration::from_secs(1);

/// Partners of a viewer's own site (behind its public address) it takes beyond the partner
/// caps, which count only partners off its site. A LAN away, they cost its WAN nothing, and
/// a site whose viewers all pair pulls each part across its WAN about once: each viewer
/// decides which parts it fetches for the site among the neighbours it is connected to, so
/// with a few of them each, several fetch the same part (the simulator's sites of 10 pulled
/// 2.4 copies across their WANs).
pub(super) const MAX_SITE_PARTNERS: usize = 12;

/// Broadcaster: how many of a peer sample's 16 are turned-away viewers.
const OVERFLOW_IN_SAMPLE: usize = 8;
/// Viewers of one site the broadcaster remembers ([`SiteBook`]): a sample holds at most
/// this many of them, enough to dial into the site's mesh.
const SITE_BOOK_PER_SITE: usize = 8;
/// Sites (public addresses) the broadcaster remembers; the one heard of least lately goes.
const SITE_BOOK_SITES: usize = 4096;

/// Broadcaster: viewers that gave a LAN address, by the public address they came from and
/// by the site name they gave, newest last, whether it took them as partners or turned them
/// away. A joiner of a site is handed its neighbours from here: in a large swarm most
/// viewers are turned away by the broadcaster, and a random sample seldom holds a neighbour
/// (the simulator's 10,000 with 350 sites: 0.9 partners of its own site a site viewer, each
/// site pulling 2.4 copies across its WAN and continuity 0.002 there). Bounded:
/// [`SITE_BOOK_PER_SITE`] viewers a site, [`SITE_BOOK_SITES`] sites (addresses and names).
#[derive(Debug, Default)]
pub(super) struct SiteBook {
    sites: std::collections::BTreeMap<SiteKey, (u64, std::collections::VecDeque<PeerInfo>)>,
    /// Counts notes, so the site heard of least lately can be found.
    seq: u64,
}

/// What the [`SiteBook`] files a viewer under: its public address, and its site's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SiteKey {
    Ip(IpAddr),
    Tag(SiteTag),
}

impl SiteBook {
    /// A viewer connected from `p.addr` with LAN address `p.local` (none: nothing noted).
    pub(super) fn note(&mut self, p: PeerInfo) {
        if p.local.is_none() {
            return;
        }
        self.file(SiteKey::Ip(p.addr.ip()), p);
        if let Some(tag) = p.site {
            self.file(SiteKey::Tag(tag), p);
        }
    }

    fn file(&mut self, key: SiteKey, p: PeerInfo) {
        if !self.sites.contains_key(&key) && self.sites.len() >= SITE_BOOK_SITES {
            let stalest = self.sites.iter().min_by_key(|(_, (seq, _))| *seq);
            if let Some(old) = stalest.map(|(key, _)| *key) {
                self.sites.remove(&old);
            }
        }
        self.seq += 1;
        let (seq, members) = self.sites.entry(key).or_default();
        *seq = self.seq;
        members.retain(|m| m.id != p.id);
        if members.len() >= SITE_BOOK_PER_SITE {
            members.pop_front();
        }
        members.push_back(p);
    }

    /// The viewers remembered of `site`, newest first: those given its name, then those
    /// behind its public address (a viewer may be in both).
    pub(super) fn of(&self, site: Site) -> impl Iterator<Item = &PeerInfo> {
        let tag = site.tag.map(SiteKey::Tag);
        let ip = site.ip.map(SiteKey::Ip);
        [tag, ip]
            .into_iter()
            .flatten()
            .filter_map(|key| self.sites.get(&key))
            .flat_map(|(_, members)| members.iter().rev())
    }
}

/// Re-dial period for the origin while this viewer has few partners.
pub(super) const ORIGIN_RETRY: Duration = Duration::from_secs(2);

/// A connection that ends sooner than this was a refusal, not a loss.
pub(super) const SHORT_LIVED: Duration = Duration::from_secs(5);

/// Re-dial period for the origin once this viewer has partners to pull from.
pub(super) const ORIGIN_RETRY_WITH_PARTNERS: Duration = Duration::from_secs(30);

/// A peer heard of (in a peer sample) that this node may dial.
#[derive(Debug)]
pub(super) struct Known {
    /// Where to dial it.
    addr: SocketAddr,
    /// Its LAN address, dialled too when it shares our public address.
    local: Option<SocketAddr>,
    /// How it said it can be reached.
    reach: Reach,
    /// The site it was given a name for, as it said.
    site: Option<SiteTag>,
    /// The partner whose sample named it: behind a NAT, it is dialled through a
    /// rendezvous this partner arranges (see [`Mesh::dial_more`]).
    pub(super) via: Option<NodeId>,
    /// Dials to it that failed in a row; it is forgotten after five.
    failures: u32,
    /// Not picked again before this moment (a dial in progress, or a backoff).
    retry_at: Option<Instant>,
}

impl Mesh {
    /// A connection finished its Hello exchange. `contact` is the peer's endpoint address
    /// as we see it, with the LAN address and reachability its Hello gave; `uploads` and
    /// `upload_bps` are what its Hello said; `lan`: the connection runs over one of our own
    /// networks (not this host), so the peer is of our site whatever either of us knows of
    /// our public addresses yet.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        contact: PeerInfo,
        claimed_role: Role,
        uploads: bool,
        upload_bps: Option<u64>,
        lan: bool,
    ) {
        let PeerInfo {
            id: peer,
            addr,
            local,
            reach,
            site,
        } = contact;
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        // The claim is informational: only the stream's key is ever treated as the origin.
        let _ = claimed_role;
        if peer == self.me || self.is_banned(&peer, now) {
            self.actions.push_back(Action::Disconnect {
                peer,
                reason: DisconnectReason::Refused,
            });
            return;
        }
        // Only the stream's key may claim to be the broadcaster.
        let role = if self.is_origin(&peer) {
            Role::Broadcaster
        } else {
            Role::Viewer
        };
        if self.cfg.role == Role::Broadcaster && role == Role::Viewer && uploads {
            self.site_book.note(contact);
        }
        // A connected peer is of our site over our LAN, or seen behind our public address
        // (which a peer off our LAN cannot fake). A site name alone does not make it one:
        // anyone who saw our site's tag in a sample could claim it, and a neighbour given
        // the name is dialled on its LAN address, so it connects over our LAN anyway.
        let of_our_site = self.site().neighbour(role, lan, addr);
        if role == Role::Viewer && self.full_for(of_our_site) {
            if let Some(out) = self.place_for(reach) {
                self.actions.push_back(Action::Disconnect {
                    peer: out,
                    reason: DisconnectReason::PartnerSetFull,
                });
                self.handle_disconnected(now, out);
            }
        }
        if role == Role::Viewer && self.full_for(of_our_site) {
            // Turn it away, but hand it some peers so it can find room elsewhere.
            let sample = self.peer_sample(Some(peer), (reach, Site::of(addr, site)));
            // Only viewers anyone can dial are handed out once turned away: a NAT's needs a
            // rendezvous, which needs a partner of both.
            if self.cfg.role == Role::Broadcaster
                && uploads
                && matches!(reach, Reach::Public | Reach::Unknown)
            {
                self.overflow.retain(|p| p.id != peer);
                if self.overflow.len() >= MAX_OVERFLOW {
                    self.overflow.pop_front();
                }
                self.overflow.push_back(contact);
            }
            self.send_sample(contact, sample);
            if self.introducing.len() >= MAX_INTRODUCING {
                self.introducing.pop_front();
            }
            self.introducing.push_back((contact, now));
            self.actions.push_back(Action::Disconnect {
                peer,
                reason: DisconnectReason::PartnerSetFull,
            });
            return;
        }
        if role == Role::Broadcaster {
            self.start_from_partners = false;
            self.origin_since = Some(now);
        }
        // A partner now: no longer one of the broadcaster's turned-away. Its dial record is
        // settled when the connection ends ([`Mesh::handle_disconnected`]).
        self.overflow.retain(|p| p.id != peer);
        self.peers.insert(
            peer,
            Peer {
                role,
                addr,
                local,
                reach,
                lan,
                site,
                same_site: of_our_site,
                uploads,
                have: Announced::new(),
                inflight: 0,
                throughput: None,
                busy_until: None,
                stalls: 0,
                seed_suspect: false,
                since: now,
                next_pex: now + PEX_FIRST.min(self.cfg.pex_interval),
                next_buffer_map: now + self.cfg.buffer_map_interval,
                held_have: None,
                quiet: false,
                relayed_by: None,
            },
        );
        if self.cfg.role == Role::Broadcaster {
            // Before the buffer map: the viewer picks its join point on reading that.
            let declared = if uploads { upload_bps } else { Some(0) };
            if let Some(bps) = declared {
                self.declared.insert(peer, (bps, now));
            }
            if let Some(msg) = self.swarm_estimate(now) {
                self.send(peer, msg);
            }
        }
        if self.cfg.uploads || self.cfg.role == Role::Broadcaster {
            let map = self.buffer_map();
            self.send(peer, map);
        }
        if self.cfg.role == Role::Broadcaster && uploads {
            // Owed seeds of segments still within a newcomer's join window.
            let oldest = self
                .newest
                .map_or(0, |n| n.saturating_sub(self.cfg.delay_segments));
            while let Some((number, part)) = self.seed_debt.pop_front() {
                if number >= oldest && self.held.contains(number) {
                    self.actions.push_back(Action::Push { peer, number, part });
                    break;
                }
            }
        }
        if self.cfg.role == Role::Broadcaster {
            // The tracker's answer: a random sample of the swarm.
            let sample = self.peer_sample(Some(peer), (reach, Site::of(addr, site)));
            if !sample.is_empty() {
                self.send_sample(contact, sample);
            }
            if let Some(last) = self.ended {
                self.send(peer, Control::End { last });
            }
        }
        self.schedule(now);
    }

    /// The connection to `peer` ended.
    pub fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        let Some(gone) = self.peers.remove(&peer) else {
            return;
        };
        // A connection that ended at once was a refusal (a ban, a full partner set, a
        // duplicate): it backs off as a failed dial does, or two peers a LAN apart redial
        // each other a thousand times a second.
        if now.saturating_duration_since(gone.since) < SHORT_LIVED {
            self.dial_failed(now, peer);
        } else if let Some(k) = self.known.get_mut(&peer) {
            k.failures = 0;
            k.retry_at = None;
        }
        self.declared.remove(&peer);
        for s in self.segs.values_mut() {
            for j in 0..PARTS {
                let Some(part) = s.parts.get(j) else { continue };
                let (asked, sending) = (
                    part.inflight.is_some_and(|i| i.peer == peer),
                    part.receiving_from == Some(peer),
                );
                if asked {
                    s.set_inflight(j, None);
                }
                // What it was sending dies with the connection: ask elsewhere at once rather
                // than wait out the request timeout (by then the segment may be given up).
                if sending {
                    s.set_arriving(j, None);
                }
            }
        }
        if self.is_origin(&peer) {
            let short = self
                .origin_since
                .take()
                .is_none_or(|t| now.saturating_duration_since(t) < SHORT_LIVED);
            self.origin_failed(now, short);
        }
        self.dial_more_if_viewer(now);
        self.schedule(now);
    }

    /// A partner a full viewer lets go to take a newcomer reachable as `reach`: a public
    /// viewer gives up to [`SYMMETRIC_RESERVE`] of its places to peers behind symmetric NATs,
    /// each in place of a partner that can pair elsewhere. Those can reach public peers alone,
    /// while the others also pair by rendezvous; once the others fill the public peers, the
    /// symmetric ones fall back on the broadcaster (BENCHMARKS.md, 2026-12-07).
    fn place_for(&self, reach: Reach) -> Option<NodeId> {
        if self.cfg.role != Role::Viewer || self.reach != Reach::Public || reach != Reach::Symmetric
        {
            return None;
        }
        let viewers = || self.peers.iter().filter(|(_, p)| !p.is_origin());
        let symmetric = viewers()
            .filter(|(_, p)| p.reach == Reach::Symmetric)
            .count();
        if symmetric >= self.symmetric_places() {
            return None;
        }
        viewers()
            .filter(|(_, p)| p.reach != Reach::Symmetric && !p.same_site)
            .map(|(id, _)| *id)
            .next()
    }

    /// How many of its places a public viewer gives to peers behind symmetric NATs: in
    /// proportion to its upload, [`SYMMETRIC_PLACES_PER_STREAM`] for each stream's worth
    /// of it (at least one, leaving two places for others); [`SYMMETRIC_RESERVE`] while its
    /// upload or the bitrate is unknown, and as many as it can when its upload is unlimited.
    /// A symmetric peer is fed by its public partners alone: a public peer with half a
    /// stream's upload, shared among five of them, gave each a tenth of a stream, and those
    /// whose partners were all such fell back on the broadcaster (the simulator at 10,000,
    /// upload mix M1: 996 viewers still missing every segment 40 s in).
    pub(super) fn symmetric_places(&self) -> usize {
        let most = self.cfg.max_partners.saturating_sub(2).max(1);
        match self.capacity {
            (0, _) => SYMMETRIC_RESERVE.min(most),
            (_, None) => most,
            (stream, Some(up)) => {
                let places = (up as f64 / stream as f64 * SYMMETRIC_PLACES_PER_STREAM).round();
                (places as usize).clamp(1, most)
            }
        }
    }

    /// A dial to `peer` failed.
    pub fn handle_dial_failed(&mut self, now: Instant, peer: NodeId) {
        self.last_now = self.last_now.max(now);
        self.pending_dials.remove(&peer);
        if self.is_origin(&peer) {
            self.origin_failed(now, true);
        }
        self.dial_failed(now, peer);
        self.dial_more_if_viewer(now);
    }

    /// Backs off from dialling `peer` again, doubling with each failure in a row, and
    /// forgets it after five.
    fn dial_failed(&mut self, now: Instant, peer: NodeId) {
        if let Some(k) = self.known.get_mut(&peer) {
            k.failures += 1;
            let backoff = Duration::from_secs(2u64.saturating_pow(k.failures.min(6)));
            k.retry_at = Some(now + backoff);
            if k.failures >= 5 {
                self.known.remove(&peer);
            }
        }
    }

    /// `peer` sent bytes or messages that failed verification: drop and ban it.
    pub fn handle_misbehaviour(&mut self, now: Instant, peer: NodeId, reason: Misbehaviour) {
        self.last_now = self.last_now.max(now);
        self.misbehaved(now, peer, reason);
        self.schedule(now);
    }

    pub(super) fn misbehaved(&mut self, now: Instant, peer: NodeId, reason: Misbehaviour) {
        if self.is_origin(&peer) {
            // The origin's key signs the stream; it cannot be banned from its own stream.
            return;
        }
        self.banned.insert(peer, now + self.cfg.ban);
        self.stats.bans += 1;
        self.known.remove(&peer);
        self.actions.push_back(Action::Disconnect {
            peer,
            reason: DisconnectReason::Misbehaved(reason),
        });
        self.handle_disconnected(now, peer);
    }

    pub(super) fn maintain(&mut self, now: Instant) {
        self.next_maintenance = now + self.cfg.maintenance_interval;
        self.end_lapsed_quiet(now);
        self.banned.retain(|_, until| *until > now);
        let viewers = self.peers.values().filter(|p| !p.is_origin());
        self.symmetric_partners = (
            viewers
                .clone()
                .filter(|p| p.reach == Reach::Symmetric && !p.same_site)
                .count(),
            viewers.count(),
        );
        if self.cfg.role == Role::Viewer {
            let origin = self.cfg.origin;
            if !self.peers.contains_key(&origin)
                && !self.pending_dials.contains_key(&origin)
                && now >= self.origin_retry_at
            {
                self.pending_dials.insert(origin, now + DIAL_HELD);
                // With partners, the origin is only a fallback: a full origin is not asked
                // again every 2 s by thousands of turned-away viewers.
                let retry = if self.viewer_count() >= self.cfg.target_partners / 2 {
                    ORIGIN_RETRY_WITH_PARTNERS
                } else {
                    ORIGIN_RETRY
                };
                self.origin_retry_at = now + retry;
                self.actions.push_back(Action::Dial {
                    peer: origin,
                    addr: None,
                    local: None,
                });
            }
            self.dial_more(now);
        }
        // Periodic peer exchange and buffer-map resync.
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let (pex_due, map_due) = match self.peers.get(&id) {
                Some(p) => (now >= p.next_pex, now >= p.next_buffer_map),
                None => continue,
            };
            if pex_due {
                let Some(to) = self
                    .peers
                    .get(&id)
                    .map(|p| (p.reach, Site::of(p.addr, p.site)))
                else {
                    continue;
                };
                let sample = self.peer_sample(Some(id), to);
                if let (false, Some(to)) = (sample.is_empty(), self.contact(&id)) {
                    self.send_sample(to, sample);
                }
            }
            if map_due && (self.cfg.uploads || self.cfg.role == Role::Broadcaster) {
                let map = self.buffer_map();
                self.send(id, map);
            }
            let (pex, bm) = (self.cfg.pex_interval, self.cfg.buffer_map_interval);
            if let Some(p) = self.peers.get_mut(&id) {
                if pex_due {
                    // A young partnership exchanges samples sooner (1, 2, 4, 8 s in): the
                    // swarm grows fastest at the start, and an early joiner otherwise knows
                    // only the few peers that were there when it came, for a whole period.
                    p.next_pex = now
                        + now
                            .saturating_duration_since(p.since)
                            .clamp(PEX_FIRST.min(pex), pex);
                }
                if map_due {
                    p.next_buffer_map = now + bm;
                }
            }
        }
    }

    /// The origin was lost (`failed`: turned away or never reached): when to dial it again.
    /// A flash crowd beyond the origin's partner cap is turned away (or, past its connection
    /// cap, refused) every time; redialling all at a fixed period kept the cap full and left
    /// thousands of viewers with no way in. Each failure doubles the wait, with jitter, so
    /// the crowd spreads out and joins through the peers it is handed.
    fn origin_failed(&mut self, now: Instant, failed: bool) {
        if failed {
            self.origin_failures = self.origin_failures.saturating_add(1);
        } else {
            self.origin_failures = 0;
        }
        let base = Duration::from_millis(500) * 2u32.saturating_pow(self.origin_failures.min(6));
        let mut wait = base.min(ORIGIN_RETRY_WITH_PARTNERS);
        if failed && self.viewer_count() >= self.cfg.target_partners / 2 {
            // With partners, the origin is only a fallback.
            wait = ORIGIN_RETRY_WITH_PARTNERS;
        }
        self.origin_retry_at = now + wait.mul_f64(self.rng.gen_range(1.0..1.5));
    }

    /// [`Mesh::dial_more`] for a viewer (the broadcaster dials nobody).
    pub(super) fn dial_more_if_viewer(&mut self, now: Instant) {
        if self.cfg.role == Role::Viewer {
            self.dial_more(now);
        }
    }

    /// Whether a viewer finds no place: one of our own site (a viewer's) counts against
    /// [`MAX_SITE_PARTNERS`], any other against the partner cap.
    fn full_for(&self, of_our_site: bool) -> bool {
        if self.cfg.role == Role::Viewer && of_our_site {
            self.site_count() >= MAX_SITE_PARTNERS
        } else {
            self.far_count() >= self.cfg.max_partners
        }
    }

    fn dial_more(&mut self, now: Instant) {
        let target = if self.starving(now) {
            self.cfg.max_partners - 1
        } else {
            self.cfg.target_partners
        };
        let far_room = target.saturating_sub(self.far_count() + self.dialling(now));
        let site_room = MAX_SITE_PARTNERS.saturating_sub(self.site_count());
        let site = self.site();
        let site_known = || {
            self.known
                .iter()
                .any(|(id, k)| k.on_lan_of(site) && !self.peers.contains_key(id))
        };
        if far_room == 0 && (site_room == 0 || !site_known()) {
            return;
        }
        let mut candidates: Vec<(NodeId, SocketAddr, Option<SocketAddr>, bool)> = self
            .known
            .iter()
            .filter(|(id, k)| {
                !self.peers.contains_key(id)
                    && !self.pending_dials.contains_key(id)
                    && **id != self.me
                    && !self.is_origin(id)
                    && k.retry_at.is_none_or(|t| now >= t)
                    && self.can_dial(k)
            })
            .map(|(id, k)| (*id, k.addr, k.local, k.on_lan_of(site)))
            .collect();
        candidates.shuffle(&mut self.rng);
        // Peers of our own site first: they are a LAN away, and a site that pairs within
        // itself pulls each part across its WAN about once.
        candidates.sort_by_key(|&(.., near)| !near);
        let room = self
            .cfg
            .max_pending_dials
            .saturating_sub(self.dialling(now));
        let (mut site_room, mut far_room) = (site_room, far_room);
        let picked: Vec<(NodeId, SocketAddr, Option<SocketAddr>, bool)> = candidates
            .into_iter()
            .filter(|&(.., near)| {
                let room = if near { &mut site_room } else { &mut far_room };
                let take = *room > 0;
                *room = room.saturating_sub(1);
                take
            })
            .take(room)
            .collect();
        for (id, addr, local, near) in picked {
            let mut introducer = None;
            if let Some(k) = self.known.get_mut(&id) {
                // Until it answers, do not pick it again.
                k.retry_at = Some(now + Duration::from_secs(10));
                if k.reach == Reach::Nat && !near {
                    introducer = k.via;
                }
            }
            let held = if introducer.is_some() {
                RENDEZVOUS_HELD
            } else {
                DIAL_HELD
            };
            self.pending_dials.insert(id, now + held);
            // Behind a NAT it lets in only whom it dialled: the partner that named it asks
            // it to dial us back while we dial it (a simultaneous open).
            if let Some(via) = introducer {
                if let Some(target) = self.contact_of_known(id) {
                    self.send(
                        via,
                        Control::Rendezvous {
                            peer: Box::new(target),
                        },
                    );
                }
            }
            self.actions.push_back(Action::Dial {
                peer: id,
                addr: Some(addr),
                local: local.filter(|_| near),
            });
        }
    }

    /// Whether a segment missed its deadline here lately ([`STARVING`]): then a viewer
    /// seeks partners up to one short of its cap rather than its target. Viewers that join
    /// together behind NATs pair by rendezvous mostly with one another; at 10,000 peers
    /// some such clusters reached their target among themselves with one or two links
    /// beyond, too few to feed them, and missed nearly every segment for good.
    fn starving(&self, now: Instant) -> bool {
        self.last_missed
            .is_some_and(|t| now.saturating_duration_since(t) < STARVING)
    }

    /// Dials in progress that still hold a place: a dial through a rendezvous holds one for
    /// [`RENDEZVOUS_HELD`] only. Had the other side dialled back, the connection would be up
    /// by then; otherwise its NAT keeps our packets out until the dial times out (10 s),
    /// which at 10,000 peers left joiners with every dial place held by such dials and no
    /// partner to fetch from (a rendezvous is lost when the peer that passes it on has
    /// lost the other side meanwhile).
    pub(super) fn dialling(&self, now: Instant) -> usize {
        self.pending_dials.values().filter(|&&t| t > now).count()
    }

    /// Whether a dial of ours can get into `k`'s NAT: a public (or unknown) one always; one
    /// behind a NAT when the partner that named it is still there to arrange a rendezvous
    /// and our own NAT does not map per destination; one behind a symmetric NAT never.
    fn can_dial(&self, k: &Known) -> bool {
        // Behind our own public address, with a LAN address: dialled over the LAN, where no
        // NAT stands between us, whatever kind ours is (offices often map per destination).
        if k.on_lan_of(self.site()) {
            return true;
        }
        match k.reach {
            Reach::Public | Reach::Unknown => true,
            Reach::Nat => {
                self.reach != Reach::Symmetric
                    && k.via.is_some_and(|v| self.peers.contains_key(&v))
                    && needs_rendezvous(self.reach, k.reach)
            }
            Reach::Symmetric => false,
        }
    }

    /// Our public address's host, which the peers of our site share (none on loopback,
    /// where every peer shares one).
    /// Our own site: our public address as peers told it, and the name we were given.
    pub(super) fn site(&self) -> Site {
        Site {
            ip: self.public.map(|a| a.ip()).filter(|ip| !ip.is_loopback()),
            tag: self.cfg.site,
        }
    }

    /// A known peer as a rendezvous names it.
    fn contact_of_known(&self, id: NodeId) -> Option<PeerInfo> {
        self.known.get(&id).map(|k| PeerInfo {
            id,
            addr: k.addr,
            local: k.local,
            reach: k.reach,
            site: k.site,
        })
    }

    /// A rendezvous asked by `from`, a peer we turned away within [`INTRODUCE_WINDOW`],
    /// with `peer`, one of the partners we handed it: passed on as for a partner, so a crowd
    /// the full ones turn away can still reach the partners behind NATs they name.
    pub(super) fn introduce(&mut self, now: Instant, from: NodeId, peer: PeerInfo) {
        self.introducing
            .retain(|(_, t)| now.saturating_duration_since(*t) < INTRODUCE_WINDOW);
        let Some(caller) = self
            .introducing
            .iter()
            .find(|(c, _)| c.id == from)
            .map(|(c, _)| *c)
        else {
            return;
        };
        if peer.id != from && self.peers.contains_key(&peer.id) {
            self.send(
                peer.id,
                Control::Rendezvous {
                    peer: Box::new(caller),
                },
            );
        }
    }

    /// A rendezvous from partner `from` naming `peer`. If `peer` is our partner too, `from`
    /// is about to dial it: we pass `from` on to it. Otherwise `peer` is dialling us now,
    /// having asked a partner of both to tell us: we dial it back at once, so both NATs see
    /// traffic go out first.
    pub(super) fn rendezvous(&mut self, now: Instant, from: NodeId, peer: PeerInfo) {
        if peer.id != from && self.peers.contains_key(&peer.id) {
            // Among three peers that are all partners of one another, a pass-on reads to its
            // receiver as a new request to pass on, and the three passed it round for good
            // (the lab's offices: 1.8 MB of control a minute from such viewers, a copy of
            // the stream across each WAN both ways). The same pair is passed on once a while.
            self.passed
                .retain(|(_, _, t)| now.saturating_duration_since(*t) < RENDEZVOUS_REPEAT);
            if self
                .passed
                .iter()
                .any(|(f, p, _)| *f == from && *p == peer.id)
            {
                return;
            }
            if self.passed.len() >= MAX_INTRODUCING {
                self.passed.pop_front();
            }
            self.passed.push_back((from, peer.id, now));
            if let Some(caller) = self.contact(&from) {
                self.send(
                    peer.id,
                    Control::Rendezvous {
                        peer: Box::new(caller),
                    },
                );
            }
            return;
        }
        // Dialled back even with no partner slot left, so the caller is turned away with a
        // sample at once rather than wait out its dial's timeout at our shut NAT; dial-backs
        // may take as many dials again as our own dialling.
        let room = self.dialling(now) < 2 * self.cfg.max_pending_dials;
        if self.cfg.role != Role::Viewer
            || !room
            || peer.id == from
            || self.pending_dials.contains_key(&peer.id)
        {
            return;
        }
        self.add_known(peer);
        if !self.known.contains_key(&peer.id) {
            // Ourselves, the origin, banned or connected already.
            return;
        }
        self.pending_dials.insert(peer.id, now + RENDEZVOUS_HELD);
        if let Some(k) = self.known.get_mut(&peer.id) {
            k.retry_at = Some(now + Duration::from_secs(10));
        }
        let near = self.site().holds(peer.addr, peer.site);
        self.actions.push_back(Action::Dial {
            peer: peer.id,
            addr: Some(peer.addr),
            local: peer.local.filter(|_| near),
        });
    }

    /// Sends `to` a peer sample. Those behind a NAT are reached through us: `to` asks us for
    /// a rendezvous when it dials one (see [`Mesh::rendezvous`]).
    fn send_sample(&mut self, to: PeerInfo, sample: Vec<PeerInfo>) {
        self.send(to.id, Control::Peers { peers: sample });
    }

    /// A connected peer as samples carry it.
    pub(super) fn contact(&self, id: &NodeId) -> Option<PeerInfo> {
        self.peers.get(id).map(|p| PeerInfo {
            id: *id,
            addr: p.addr,
            local: p.local,
            reach: p.reach,
            site: p.site,
        })
    }

    pub(super) fn add_known(&mut self, p: PeerInfo) {
        if p.id == self.me
            || self.is_origin(&p.id)
            || self.banned.contains_key(&p.id)
            || self.peers.contains_key(&p.id)
        {
            return;
        }
        if let Some(k) = self.known.get_mut(&p.id) {
            k.addr = p.addr;
            k.local = p.local;
            k.reach = p.reach;
            k.site = p.site;
            return;
        }
        if self.known.len() >= self.cfg.max_known {
            // Forget a random candidate: a flood of fake peers cannot pin the table.
            let idx = self.rng.gen_range(0..self.known.len());
            if let Some(victim) = self.known.keys().nth(idx).copied() {
                self.known.remove(&victim);
            }
        }
        self.known.insert(
            p.id,
            Known {
                addr: p.addr,
                local: p.local,
                reach: p.reach,
                site: p.site,
                via: None,
                failures: 0,
                retry_at: None,
            },
        );
    }

    /// A random sample of connected uploading viewers (never everyone: PPSPP's advice). The
    /// broadcaster's (the tracker's) also lists the viewers it turned away last: with a
    /// crowd beyond its partner cap, its partners' sets are full, and a sample of them alone
    /// sends newcomers from one full viewer to the next, while the turned-away ones still
    /// have room for each other.
    /// `exclude`: the recipient. `to`: how it is reached, and the address we see it at.
    fn peer_sample(
        &mut self,
        exclude: Option<NodeId>,
        (to, to_site): (Reach, Site),
    ) -> Vec<PeerInfo> {
        // Behind a symmetric NAT the recipient can dial public peers alone: the others would
        // fill its sample for nothing.
        let dialable =
            |r: Reach| to != Reach::Symmetric || matches!(r, Reach::Public | Reach::Unknown);
        // Peers of the recipient's site (behind its public address or given its site's
        // name), with a LAN address, it dials over the LAN whatever their NATs: they go
        // first, since a site that pairs within itself pulls each part across its WAN about
        // once, and in a large swarm a random sample seldom holds one (the simulator's
        // sites: 0.1-0.3 partners of their own site).
        let near = |p: &Peer| to_site.on_lan(p.local, p.addr, p.site);
        let to_ours = exclude
            .and_then(|id| self.peers.get(&id))
            .is_some_and(|p| p.same_site);
        let mut sample: Vec<PeerInfo> = Vec::new();
        if self.cfg.role == Role::Broadcaster {
            // The recipient's neighbours first, partners of ours or not ([`SiteBook`]).
            let mut neighbours: Vec<PeerInfo> = Vec::new();
            for p in self.site_book.of(to_site) {
                if Some(p.id) != exclude && neighbours.iter().all(|n| n.id != p.id) {
                    neighbours.push(*p);
                }
            }
            neighbours.truncate(SITE_BOOK_PER_SITE);
            sample.extend(neighbours);
        }
        let neighbours = sample.len();
        if self.cfg.role == Role::Broadcaster {
            // Random ones among the last turned away, so a crowd is not herded onto the few
            // newest.
            let candidates: Vec<&PeerInfo> = self
                .overflow
                .iter()
                .filter(|p| Some(p.id) != exclude && dialable(p.reach))
                .filter(|p| sample.iter().all(|s| s.id != p.id))
                .collect();
            sample.extend(
                candidates
                    .choose_multiple(&mut self.rng, OVERFLOW_IN_SAMPLE)
                    .map(|p| **p),
            );
        }
        let mut all: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(id, p)| Some(**id) != exclude && p.role == Role::Viewer && p.uploads)
            // Nobody can dial into a NAT that maps each destination apart.
            .filter(|(_, p)| near(p) || (p.reach != Reach::Symmetric && dialable(p.reach)))
            // A neighbour that connected before it knew its public address is known at its
            // LAN address alone, which nobody off our LAN can dial.
            .filter(|(_, p)| !p.lan || to_ours || near(p) || p.local.is_some_and(|l| l != p.addr))
            .filter(|(id, _)| sample.iter().all(|s| s.id != **id))
            .map(|(id, p)| PeerInfo {
                id: *id,
                addr: p.addr,
                local: p.local,
                reach: p.reach,
                site: p.site,
            })
            .collect();
        all.shuffle(&mut self.rng);
        all.sort_by_key(|p| !to_site.on_lan(p.local, p.addr, p.site));
        // The recipient's neighbours come on top: they replace none of the swarm's sample.
        let cap = if self.cfg.role == Role::Broadcaster {
            16 + neighbours
        } else {
            8
        };
        all.truncate(cap.min(MAX_PEERS_PER_MESSAGE).saturating_sub(sample.len()));
        sample.extend(all);
        sample
    }
}

/// Where a node sits, to tell who shares its site: the public address it is seen at (not
/// loopback, where a whole test swarm sits) and the site name it was given, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Site {
    ip: Option<IpAddr>,
    tag: Option<SiteTag>,
}

impl Site {
    /// The site of a node seen at `addr` that named `tag`.
    pub(super) fn of(addr: SocketAddr, tag: Option<SiteTag>) -> Site {
        Site {
            ip: Some(addr.ip()).filter(|ip| !ip.is_loopback()),
            tag,
        }
    }

    /// Whether a node seen at `addr` that named `tag` is of this site, to be dialled on its
    /// LAN address: behind its public address, or given its name.
    pub(super) fn holds(self, addr: SocketAddr, tag: Option<SiteTag>) -> bool {
        self.behind(addr) || (self.tag.is_some() && self.tag == tag)
    }

    /// Whether a node seen at `addr` with LAN address `local` that named `tag` is of this
    /// site and so dialled over its LAN.
    pub(super) fn on_lan(
        self,
        local: Option<SocketAddr>,
        addr: SocketAddr,
        tag: Option<SiteTag>,
    ) -> bool {
        local.is_some() && self.holds(addr, tag)
    }

    /// Whether a connected peer in `role`, seen at `addr`, over our LAN or not (`lan`), is
    /// of this site: a viewer over our LAN or behind our public address, never on a name
    /// alone (see [`Mesh::handle_connected`]).
    pub(super) fn neighbour(self, role: Role, lan: bool, addr: SocketAddr) -> bool {
        role == Role::Viewer && (lan || self.behind(addr))
    }

    /// Whether a node seen at `addr` is behind this site's public address.
    pub(super) fn behind(self, addr: SocketAddr) -> bool {
        self.ip.is_some() && self.ip == Some(addr.ip())
    }
}

impl Known {
    /// Whether it is of `site`, with a LAN address to dial it at there.
    fn on_lan_of(&self, site: Site) -> bool {
        site.on_lan(self.local, self.addr, self.site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::{
        addr, connect_contact, connect_origin, connect_viewer, contact, drain, id, viewer,
        viewer_connected, ORIGIN, SEG,
    };
    use crate::mesh::MeshConfig;

    #[test]
    fn viewer_dials_origin_first() {
        let now = Instant::now();
        let mut v = viewer(10, now);
        assert_eq!(
            drain(&mut v),
            vec![Action::Dial {
                peer: id(ORIGIN),
                addr: None,
                local: None,
            }]
        );
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
        connect_origin(&mut v, t);
        t += SHORT_LIVED * 2;
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
    fn a_viewer_that_misses_a_deadline_seeks_partners_beyond_its_target() {
        let t0 = Instant::now();
        let target = MeshConfig::viewer(id(ORIGIN), SEG, 3).target_partners as u8;
        let mut v = viewer_connected(t0, &(20..20 + target).collect::<Vec<u8>>());
        let peers = (40..60)
            .map(|i| contact(id(i), addr(u16::from(i))))
            .collect();
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        // At its target: nobody is dialled.
        assert_eq!(dials(drain(&mut v)), 0);
        // The origin announces a segment no partner has, and every request for it fails.
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Have {
                number: 3,
                parts: crate::stream::ALL_PARTS,
            },
        );
        let mut dialled = 0;
        for step in 1..10 {
            let now = t0 + Duration::from_secs(step);
            v.handle_tick(now);
            for a in drain(&mut v) {
                match a {
                    Action::Request {
                        peer, number, part, ..
                    } => v.handle_transfer_failed(now, peer, number, part, true),
                    Action::Dial { addr: Some(_), .. } => dialled += 1,
                    _ => {}
                }
            }
        }
        assert!(v.stats().missed_deadlines > 0);
        // Its deadline passed unheld: it dials more, up to one short of its cap.
        let most = MeshConfig::viewer(id(ORIGIN), SEG, 3).max_partners - 1;
        assert!(dialled > 0, "no dial after a missed deadline");
        assert!(dialled <= most - usize::from(target), "{dialled}");
    }

    #[test]
    fn a_peer_that_drops_us_at_once_is_not_redialled_at_once() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        drain(&mut v);
        let dials_of_20 = |acts: Vec<Action>| {
            acts.iter()
                .filter(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(20)))
                .count()
        };
        let peers = vec![contact(id(20), addr(20))];
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        assert_eq!(dials_of_20(drain(&mut v)), 1);
        // It connects and closes at once (it had banned us, or is full): a refusal.
        let t = t0 + Duration::from_millis(5);
        connect_viewer(&mut v, t, 20);
        v.handle_disconnected(t, id(20));
        assert_eq!(dials_of_20(drain(&mut v)), 0, "redialled at once");
        v.handle_tick(t + Duration::from_millis(500));
        assert_eq!(
            dials_of_20(drain(&mut v)),
            0,
            "redialled within the backoff"
        );
        v.handle_tick(t + Duration::from_secs(3));
        assert_eq!(dials_of_20(drain(&mut v)), 1, "never redialled");
        // A connection that lasted is a loss, not a refusal: redialled at once.
        let t = t + Duration::from_secs(4);
        connect_viewer(&mut v, t, 20);
        let t = t + SHORT_LIVED;
        v.handle_disconnected(t, id(20));
        assert_eq!(dials_of_20(drain(&mut v)), 1);
    }

    #[test]
    fn tracker_sample_leads_to_dials_and_full_sets_turn_peers_away() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        drain(&mut v);
        let peers: Vec<PeerInfo> = (20..40).map(|i| contact(id(i), addr(i as u16))).collect();
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        // At once, not at the next maintenance tick: the join waits on these.
        let dialled = |acts: Vec<Action>| -> Vec<NodeId> {
            acts.into_iter()
                .filter_map(|a| match a {
                    Action::Dial {
                        peer,
                        addr: Some(_),
                        ..
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
            connect_contact(&mut v, t0, contact(id(i), addr(u16::from(i))));
        }
        drain(&mut v);
        assert_eq!(v.stats().partners, usize::from(cap));
        connect_viewer(&mut v, t0, 60);
        let acts = drain(&mut v);
        assert!(acts.contains(&Action::Disconnect {
            peer: id(60),
            reason: DisconnectReason::PartnerSetFull
        }));
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Send { peer, msg: Control::Peers { peers } } if *peer == id(60) && !peers.is_empty())));
    }

    /// A broadcaster that takes `partners` viewers as partners and turns the rest away.
    fn broadcaster_with_room_for(partners: usize, t0: Instant) -> Mesh {
        let mut cfg = MeshConfig::broadcaster(id(ORIGIN), SEG);
        cfg.max_partners = partners;
        Mesh::new(cfg, id(ORIGIN), 1, t0)
    }

    #[test]
    fn a_full_broadcaster_hands_out_the_viewers_it_turned_away() {
        let t0 = Instant::now();
        let mut b = broadcaster_with_room_for(4, t0);
        for i in 20..24 {
            connect_contact(&mut b, t0, contact(id(i), addr(u16::from(i))));
        }
        // Full: 30..40 are turned away (a leech-only one is not worth handing out).
        for i in 30..40 {
            b.handle_connected(
                t0,
                contact(id(i), addr(u16::from(i))),
                Role::Viewer,
                i != 39,
                None,
                false,
            );
        }
        drain(&mut b);
        let sample_for = |b: &mut Mesh, who: u8| -> Vec<NodeId> {
            connect_contact(b, t0, contact(id(who), addr(u16::from(who))));
            peers_handed(drain(b), who).iter().map(|p| p.id).collect()
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
        connect_viewer(&mut b, t0, 30);
        assert!(b.overflow.iter().all(|p| p.id != id(30)));
    }

    #[test]
    fn a_full_broadcaster_hands_a_joiner_the_neighbours_it_turned_away_too() {
        let t0 = Instant::now();
        let mut b = broadcaster_with_room_for(2, t0);
        let office = |port: u16| SocketAddr::from(([198, 51, 100, 1], port));
        let site_contact = |i: u8| PeerInfo {
            id: id(i),
            addr: office(7000 + u16::from(i)),
            local: Some(SocketAddr::from(([10, 0, 0, i], 7000))),
            reach: Reach::Nat,
            site: None,
        };
        let home = |i: u8| PeerInfo {
            id: id(i),
            addr: SocketAddr::from(([203, 0, 113, i], 7000)),
            local: None,
            reach: Reach::Nat,
            site: None,
        };
        for p in [home(20), home(21)] {
            b.handle_connected(t0, p, Role::Viewer, true, None, false);
        }
        // Full: the office's first two viewers (and a home) are turned away.
        for p in [site_contact(30), home(22), site_contact(31)] {
            b.handle_connected(t0, p, Role::Viewer, true, None, false);
        }
        drain(&mut b);
        let sample_for = |b: &mut Mesh, p: PeerInfo| -> Vec<PeerInfo> {
            b.handle_connected(t0, p, Role::Viewer, true, None, false);
            peers_handed(drain(b), p.id.0[0])
        };
        // The office's third viewer is handed its two neighbours, with their LAN
        // addresses, before the swarm's sample.
        let got = sample_for(&mut b, site_contact(32));
        let first: Vec<NodeId> = got.iter().take(2).map(|p| p.id).collect();
        assert_eq!(first, vec![id(31), id(30)], "{got:?}");
        assert_eq!(got[1].local, site_contact(30).local);
        // A home is handed no office viewer: they are behind a NAT it cannot dial, and
        // were turned away.
        let got = sample_for(&mut b, home(40));
        assert!(got.iter().all(|p| p.local.is_none()), "{got:?}");
        // Bounded per site: the newest are kept.
        for i in 50..50 + SITE_BOOK_PER_SITE as u8 + 3 {
            b.site_book.note(site_contact(i));
        }
        let kept: Vec<NodeId> = b
            .site_book
            .of(Site::of(office(0), None))
            .map(|p| p.id)
            .collect();
        assert_eq!(kept.len(), SITE_BOOK_PER_SITE);
        assert_eq!(kept.first(), Some(&id(50 + SITE_BOOK_PER_SITE as u8 + 2)));
    }

    /// An office whose desktops leave through several public addresses (`--site NAME`):
    /// the broadcaster hands a joiner the viewers given its site's name, and the joiner
    /// dials them at their LAN addresses first, as neighbours behind one address.
    #[test]
    fn viewers_given_one_site_name_find_each_other_across_public_addresses() {
        let t0 = Instant::now();
        let mut b = broadcaster_with_room_for(2, t0);
        let tag = SiteTag::of(&id(ORIGIN), "leeds");
        let desk = |i: u8, public: [u8; 4], site: Option<SiteTag>| PeerInfo {
            id: id(i),
            addr: SocketAddr::from((public, 7000)),
            local: Some(SocketAddr::from(([10, 0, 0, i], 7000))),
            reach: Reach::Nat,
            site,
        };
        // The broadcaster's places go to others; then two of the office, at two public
        // addresses, and unnamed desks elsewhere are turned away.
        for i in [20, 21] {
            connect_contact(&mut b, t0, desk(i, [203, 0, 113, i], None));
        }
        let mut turned_away = vec![
            desk(30, [198, 51, 100, 1], Some(tag)),
            desk(31, [198, 51, 100, 2], Some(tag)),
        ];
        turned_away.extend((32..38).map(|i| desk(i, [203, 0, 113, i], None)));
        for p in turned_away {
            b.handle_connected(t0, p, Role::Viewer, true, None, false);
        }
        drain(&mut b);
        let joiner = desk(33, [198, 51, 100, 3], Some(tag));
        b.handle_connected(t0, joiner, Role::Viewer, true, None, false);
        let got = peers_handed(drain(&mut b), 33);
        let first: std::collections::BTreeSet<NodeId> = got.iter().take(2).map(|p| p.id).collect();
        assert_eq!(first, [id(30), id(31)].into(), "{got:?}");

        // The joiner, given the name, dials them over the LAN, and the unnamed one (behind
        // a NAT, not of its site) not at its LAN address.
        let mut v = viewer_connected(t0, &[]);
        v.cfg.site = Some(tag);
        v.observe_self(Some(joiner.addr), Reach::Nat);
        drain(&mut v);
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers: got });
        v.handle_tick(t0 + Duration::from_millis(600));
        let dials: Vec<(NodeId, Option<SocketAddr>)> = drain(&mut v)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial { peer, local, .. } => Some((peer, local)),
                _ => None,
            })
            .collect();
        for n in [30, 31] {
            assert!(
                dials.contains(&(id(n), desk(n, [0; 4], None).local)),
                "{dials:?}"
            );
        }
        assert!(
            dials.iter().all(|&(p, l)| p != id(32) || l.is_none()),
            "{dials:?}"
        );
        // Connected: the one that came over our LAN is a neighbour; one off our LAN naming
        // our site's tag (anyone who saw it in a sample can) is not.
        let liar = desk(40, [203, 0, 113, 40], Some(tag));
        v.handle_connected(t0, liar, Role::Viewer, true, None, false);
        assert_eq!(v.site_count(), 0);
        v.handle_connected(
            t0,
            desk(30, [198, 51, 100, 1], Some(tag)),
            Role::Viewer,
            true,
            None,
            true,
        );
        assert_eq!(v.site_count(), 1);
        // Without the name, the same two are strangers: no LAN address dialled.
        let mut w = viewer_connected(t0, &[]);
        w.observe_self(Some(joiner.addr), Reach::Nat);
        drain(&mut w);
        let strangers = vec![desk(30, [198, 51, 100, 1], Some(tag))];
        w.handle_control(t0, id(ORIGIN), Control::Peers { peers: strangers });
        w.handle_tick(t0 + Duration::from_millis(600));
        assert!(!drain(&mut w)
            .iter()
            .any(|a| matches!(a, Action::Dial { local: Some(_), .. })));
    }

    #[test]
    fn a_public_viewer_gives_symmetric_peers_places_in_proportion_to_its_upload() {
        const M: u64 = 1_000_000;
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        v.observe_self(
            Some(SocketAddr::from(([203, 0, 113, 9], 7000))),
            Reach::Public,
        );
        // Unknown upload or bitrate: the fixed reserve; unlimited: all but two places.
        assert_eq!(v.symmetric_places(), SYMMETRIC_RESERVE);
        v.observe_capacity(2 * M, None);
        assert_eq!(v.symmetric_places(), v.cfg.max_partners - 2);
        // Five a stream's worth, at least one.
        v.observe_capacity(2 * M, Some(M));
        assert_eq!(v.symmetric_places(), 3);
        v.observe_capacity(2 * M, Some(2 * M));
        assert_eq!(v.symmetric_places(), 5);
        v.observe_capacity(2 * M, Some(M / 10));
        assert_eq!(v.symmetric_places(), 1);
        v.observe_capacity(2 * M, Some(6 * M));
        assert_eq!(v.symmetric_places(), v.cfg.max_partners - 2);
        // With half a stream's upload, a fourth symmetric peer finds no place.
        v.observe_capacity(2 * M, Some(M));
        for i in 20..20 + v.cfg.max_partners as u8 {
            connect_contact(&mut v, t0, behind(i, Reach::Nat, None));
        }
        for who in 100..104 {
            connect_contact(&mut v, t0, behind(who, Reach::Symmetric, None));
            assert_eq!(v.peers.contains_key(&id(who)), who < 103, "peer {who}");
        }
    }

    /// Dials of peers (not of the origin) among `acts`.
    fn dials(acts: Vec<Action>) -> usize {
        acts.iter()
            .filter(|a| matches!(a, Action::Dial { addr: Some(_), .. }))
            .count()
    }

    /// Viewer 10, reached as `reach`, with the origin connected and its actions drained.
    fn viewer_behind(reach: Reach, t0: Instant) -> Mesh {
        let mut v = viewer_connected(t0, &[]);
        v.observe_self(None, reach);
        drain(&mut v);
        v
    }

    /// A peer as a connection reports it, with its reachability and LAN address.
    fn behind(i: u8, reach: Reach, local: Option<u16>) -> PeerInfo {
        PeerInfo {
            reach,
            local: local.map(|port| SocketAddr::from(([192, 168, 0, i], port))),
            ..contact(id(i), addr(u16::from(i)))
        }
    }

    /// The peers the actions hand to `who` in `Peers` messages.
    fn peers_handed(acts: Vec<Action>, who: u8) -> Vec<PeerInfo> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    peer,
                    msg: Control::Peers { peers },
                } if peer == id(who) => Some(peers),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_full_public_viewer_makes_room_for_peers_behind_symmetric_nats() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        let public = SocketAddr::from(([198, 51, 100, 1], 7000));
        v.observe_self(Some(public), Reach::Public);
        let cap = v.cfg.max_partners as u8;
        for i in 20..20 + cap {
            connect_contact(&mut v, t0, behind(i, Reach::Nat, None));
        }
        drain(&mut v);
        let let_go = |acts: &[Action]| {
            acts.iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Disconnect {
                            reason: DisconnectReason::PartnerSetFull,
                            ..
                        }
                    )
                })
                .count()
        };
        // Another that can pair by rendezvous is turned away...
        connect_contact(&mut v, t0, behind(90, Reach::Nat, None));
        assert!(!v.peers.contains_key(&id(90)));
        drain(&mut v);
        // ...one behind a symmetric NAT takes a place, up to the reserve, each in place of
        // one of the others.
        for i in 0..SYMMETRIC_RESERVE as u8 {
            let who = 100 + i;
            connect_contact(&mut v, t0, behind(who, Reach::Symmetric, None));
            assert!(v.peers.contains_key(&id(who)));
            assert_eq!(let_go(&drain(&mut v)), 1);
            assert_eq!(v.viewer_count(), usize::from(cap));
        }
        connect_contact(&mut v, t0, behind(120, Reach::Symmetric, None));
        assert!(!v.peers.contains_key(&id(120)));
        // A viewer behind a NAT itself keeps no such places.
        let mut n = viewer_connected(t0, &[]);
        n.observe_self(Some(public), Reach::Nat);
        for i in 20..20 + cap {
            connect_contact(&mut n, t0, behind(i, Reach::Nat, None));
        }
        connect_contact(&mut n, t0, behind(100, Reach::Symmetric, None));
        assert!(!n.peers.contains_key(&id(100)));
    }

    #[test]
    fn peers_of_ones_own_site_are_handed_first_and_dialled_over_the_lan_whatever_their_nat() {
        let t0 = Instant::now();
        let office = |i: u8| PeerInfo {
            reach: Reach::Symmetric,
            local: Some(SocketAddr::from(([10, 1, 0, i], 7000))),
            ..contact(
                id(i),
                SocketAddr::from(([198, 51, 100, 7], 7000 + u16::from(i))),
            )
        };
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        for i in 20..40 {
            connect_contact(&mut b, t0, behind(i, Reach::Public, None));
        }
        b.handle_connected(t0, office(50), Role::Viewer, true, None, false);
        drain(&mut b);
        b.handle_connected(t0, office(51), Role::Viewer, true, None, false);
        let handed = peers_handed(drain(&mut b), 51);
        assert_eq!(handed.first().map(|p| p.id), Some(id(50)), "{handed:?}");

        // The symmetric office viewer dials its neighbour's LAN address, no rendezvous.
        let mut v = viewer_connected(t0, &[]);
        v.observe_self(Some(office(51).addr), Reach::Symmetric);
        drain(&mut v);
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Peers {
                peers: vec![office(50)],
            },
        );
        let acts = drain(&mut v);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Dial { peer, local: Some(l), .. }
                if *peer == id(50) && l.ip() == std::net::IpAddr::from([10, 1, 0, 50]))),
            "{acts:?}"
        );
        assert!(
            !acts.iter().any(|a| matches!(
                a,
                Action::Send {
                    msg: Control::Rendezvous { .. },
                    ..
                }
            )),
            "{acts:?}"
        );
    }

    #[test]
    fn a_full_viewer_still_takes_peers_of_its_own_site() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        let public = |port: u16| SocketAddr::from(([198, 51, 100, 7], port));
        v.observe_self(Some(public(7000)), Reach::Nat);
        let cap = v.cfg.max_partners as u8;
        for i in 20..20 + cap {
            connect_contact(&mut v, t0, behind(i, Reach::Public, None));
        }
        drain(&mut v);
        let neighbour = |i: u8| PeerInfo {
            reach: Reach::Nat,
            local: Some(SocketAddr::from(([10, 1, 0, i], 7000))),
            ..contact(id(i), public(7000 + u16::from(i)))
        };
        for i in 60..60 + MAX_SITE_PARTNERS as u8 {
            v.handle_connected(t0, neighbour(i), Role::Viewer, true, None, false);
        }
        let refused = |acts: &[Action], who: u8| {
            acts.iter()
                .any(|a| matches!(a, Action::Disconnect { peer, .. } if *peer == id(who)))
        };
        let acts = drain(&mut v);
        assert!(
            (60..60 + MAX_SITE_PARTNERS as u8).all(|i| !refused(&acts, i)),
            "{acts:?}"
        );
        // Beyond its site's own cap, and for one more far peer, it is full.
        let last = 60 + MAX_SITE_PARTNERS as u8;
        v.handle_connected(t0, neighbour(last), Role::Viewer, true, None, false);
        connect_contact(&mut v, t0, behind(50, Reach::Public, None));
        let acts = drain(&mut v);
        assert!(refused(&acts, last) && refused(&acts, 50), "{acts:?}");
    }

    #[test]
    fn a_peer_behind_a_symmetric_nat_is_handed_only_public_peers() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        for i in 20..26 {
            let reach = if i % 2 == 0 {
                Reach::Public
            } else {
                Reach::Nat
            };
            b.handle_connected(t0, behind(i, reach, None), Role::Viewer, true, None, false);
        }
        drain(&mut b);
        connect_contact(&mut b, t0, behind(40, Reach::Symmetric, None));
        let handed = peers_handed(drain(&mut b), 40);
        assert!(!handed.is_empty());
        assert!(
            handed.iter().all(|p| p.reach == Reach::Public),
            "{handed:?}"
        );
    }

    #[test]
    fn a_full_peer_still_passes_on_rendezvous_for_those_it_turned_away() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        let cap = v.cfg.max_partners as u8;
        for i in 20..20 + cap {
            connect_contact(&mut v, t0, behind(i, Reach::Nat, Some(u16::from(i))));
        }
        drain(&mut v);
        // Turned away with a sample of its partners behind NATs...
        let joiner = behind(90, Reach::Nat, Some(90));
        v.handle_connected(t0, joiner, Role::Viewer, true, None, false);
        assert!(!v.peers.contains_key(&id(90)));
        drain(&mut v);
        // ...it asks, before its connection closes, for a rendezvous with one of them.
        let ask = |v: &mut Mesh, t: Instant| {
            v.handle_control(
                t,
                id(90),
                Control::Rendezvous {
                    peer: Box::new(behind(20, Reach::Nat, Some(20))),
                },
            );
            drain(v)
        };
        let passed = Action::Send {
            peer: id(20),
            msg: Control::Rendezvous {
                peer: Box::new(joiner),
            },
        };
        assert_eq!(ask(&mut v, t0 + Duration::from_millis(50)), vec![passed]);
        // Not once the window is over, nor for a stranger.
        assert!(ask(&mut v, t0 + INTRODUCE_WINDOW).is_empty());
        v.handle_control(
            t0,
            id(91),
            Control::Rendezvous {
                peer: Box::new(behind(20, Reach::Nat, Some(20))),
            },
        );
        assert!(drain(&mut v).is_empty());
    }

    #[test]
    fn a_partner_of_both_passes_a_rendezvous_on_and_symmetric_peers_are_not_handed_out() {
        let t0 = Instant::now();
        let mut b = Mesh::new(MeshConfig::broadcaster(id(ORIGIN), SEG), id(ORIGIN), 1, t0);
        connect_contact(&mut b, t0, behind(20, Reach::Nat, Some(20)));
        connect_contact(&mut b, t0, behind(21, Reach::Public, None));
        connect_contact(&mut b, t0, behind(22, Reach::Symmetric, Some(22)));
        drain(&mut b);
        let newcomer = behind(30, Reach::Nat, Some(30));
        b.handle_connected(t0, newcomer, Role::Viewer, true, None, false);
        let sample: Vec<NodeId> = peers_handed(drain(&mut b), 30)
            .iter()
            .map(|p| p.id)
            .collect();
        // The symmetric one is not handed out: nobody can dial it.
        assert!(
            sample.contains(&id(20)) && sample.contains(&id(21)),
            "{sample:?}"
        );
        assert!(!sample.contains(&id(22)), "{sample:?}");
        // The newcomer dials 20 and asks for a rendezvous: 20 is told to dial it back.
        let target = behind(20, Reach::Nat, Some(20));
        b.handle_control(
            t0,
            id(30),
            Control::Rendezvous {
                peer: Box::new(target),
            },
        );
        assert_eq!(
            drain(&mut b),
            vec![Action::Send {
                peer: id(20),
                msg: Control::Rendezvous {
                    peer: Box::new(newcomer)
                },
            }]
        );
    }

    #[test]
    fn a_dial_through_a_rendezvous_holds_its_place_for_two_seconds_only() {
        let t0 = Instant::now();
        let mut v = viewer_behind(Reach::Nat, t0);
        let peers = (40..50)
            .map(|i| behind(i, Reach::Nat, Some(u16::from(i))))
            .collect();
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        let most = v.cfg.max_pending_dials;
        assert_eq!(dials(drain(&mut v)), most);
        // Nobody dialled back (the rendezvous was lost): the dials hang, but after two
        // seconds they no longer keep others from being dialled.
        v.handle_tick(t0 + Duration::from_millis(1900));
        assert_eq!(dials(drain(&mut v)), 0);
        v.handle_tick(t0 + RENDEZVOUS_HELD + Duration::from_millis(600));
        assert_eq!(dials(drain(&mut v)), most);
        // A public peer's dial holds its place until it ends.
        let mut p = viewer_behind(Reach::Unknown, t0);
        let peers = (40..50).map(|i| behind(i, Reach::Public, None)).collect();
        p.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        assert_eq!(dials(drain(&mut p)), most);
        p.handle_tick(t0 + Duration::from_secs(5));
        assert_eq!(dials(drain(&mut p)), 0);
    }

    #[test]
    fn a_neighbour_known_at_its_lan_address_alone_is_handed_to_its_site_alone() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[20]);
        v.observe_self(
            Some(SocketAddr::from(([198, 51, 100, 7], 7000))),
            Reach::Nat,
        );
        // Neighbour 30 connected over our LAN before it knew its public address; 31 after.
        let lan = |i: u8| SocketAddr::from(([10, 1, 0, i], 7000));
        let at_lan = PeerInfo {
            local: Some(lan(30)),
            ..contact(id(30), lan(30))
        };
        let with_public = PeerInfo {
            local: Some(lan(31)),
            ..contact(id(31), SocketAddr::from(([198, 51, 100, 7], 7031)))
        };
        v.handle_connected(t0, at_lan, Role::Viewer, true, None, true);
        v.handle_connected(t0, with_public, Role::Viewer, true, None, true);
        drain(&mut v);
        let (mut to_far, mut to_site) = (Vec::new(), Vec::new());
        for step in 1..=30 {
            v.handle_tick(t0 + Duration::from_millis(100 * step));
            let acts = drain(&mut v);
            to_far.extend(peers_handed(acts.clone(), 20).into_iter().map(|p| p.id));
            to_site.extend(peers_handed(acts, 31).into_iter().map(|p| p.id));
        }
        assert!(
            to_far.contains(&id(31)) && !to_far.contains(&id(30)),
            "{to_far:?}"
        );
        assert!(to_site.contains(&id(30)), "{to_site:?}");
    }

    #[test]
    fn a_new_partner_is_sent_peer_samples_after_one_two_four_and_eight_seconds() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[20, 21, 22]);
        drain(&mut v);
        let mut sent = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(30) {
            t += Duration::from_millis(100);
            v.handle_tick(t);
            if !peers_handed(drain(&mut v), 20).is_empty() {
                sent.push((t - t0).as_millis() / 100);
            }
        }
        // Then every pex interval (10 s), give or take a maintenance period (0.5 s).
        assert_eq!(&sent[..4], &[10, 20, 40, 80], "{sent:?}");
        assert!(
            sent[4..]
                .windows(2)
                .all(|w| (100..=105).contains(&(w[1] - w[0]))),
            "{sent:?}"
        );
    }

    #[test]
    fn three_partners_of_one_another_do_not_pass_a_rendezvous_round_for_good() {
        let t0 = Instant::now();
        // Viewers 20, 21 and 22, each with the other two as partners.
        let ids = [20u8, 21, 22];
        let mut meshes: Vec<Mesh> = ids
            .iter()
            .map(|&me| {
                let mut m = Mesh::new(MeshConfig::viewer(id(ORIGIN), SEG, 3), id(me), 7, t0);
                for &other in ids.iter().filter(|&&o| o != me) {
                    connect_contact(&mut m, t0, behind(other, Reach::Nat, None));
                }
                drain(&mut m);
                m
            })
            .collect();
        // 20 asks 21 for a rendezvous with 22 (it is dialling 22 as they connect anyway).
        let mut inbox = vec![(1usize, id(20), behind(22, Reach::Nat, None))];
        let mut passed = 0;
        while let Some((to, from, peer)) = inbox.pop() {
            passed += 1;
            assert!(passed < 20, "passed round for good");
            let m = &mut meshes[to];
            m.handle_control(
                t0,
                from,
                Control::Rendezvous {
                    peer: Box::new(peer),
                },
            );
            for a in drain(m) {
                if let Action::Send {
                    peer: next,
                    msg: Control::Rendezvous { peer },
                } = a
                {
                    let k = ids.iter().position(|&i| id(i) == next).unwrap_or(0);
                    inbox.push((k, id(ids[to]), *peer));
                }
            }
        }
        assert!(passed >= 2, "not passed on at all");
    }

    #[test]
    fn a_peer_behind_a_nat_is_dialled_with_a_rendezvous_through_the_partner_that_named_it() {
        let t0 = Instant::now();
        let mut v = viewer_behind(Reach::Nat, t0);
        let target = behind(40, Reach::Nat, Some(40));
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Peers {
                peers: vec![target],
            },
        );
        let acts = drain(&mut v);
        // Not of our site: its LAN address is not for us to dial.
        assert!(acts.contains(&Action::Dial {
            peer: id(40),
            addr: Some(target.addr),
            local: None,
        }));
        assert!(acts.contains(&Action::Send {
            peer: id(ORIGIN),
            msg: Control::Rendezvous {
                peer: Box::new(target)
            },
        }));
        // Behind a symmetric NAT it would not try: the other NAT expects another port.
        let mut s = viewer_behind(Reach::Symmetric, t0);
        s.handle_control(
            t0,
            id(ORIGIN),
            Control::Peers {
                peers: vec![target],
            },
        );
        assert!(!drain(&mut s)
            .iter()
            .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == id(40))));
    }

    #[test]
    fn told_of_a_rendezvous_a_viewer_dials_back_at_once_if_it_has_room() {
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[]);
        drain(&mut v);
        let caller = behind(30, Reach::Nat, Some(30));
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Rendezvous {
                peer: Box::new(caller),
            },
        );
        assert!(drain(&mut v).contains(&Action::Dial {
            peer: id(30),
            addr: Some(caller.addr),
            local: None,
        }));
        // Told again while that dial is out: no second one.
        v.handle_control(
            t0,
            id(ORIGIN),
            Control::Rendezvous {
                peer: Box::new(caller),
            },
        );
        assert!(!drain(&mut v)
            .iter()
            .any(|a| matches!(a, Action::Dial { .. })));
        // Nor about itself.
        let me = behind(10, Reach::Nat, None);
        v.handle_control(t0, id(ORIGIN), Control::Rendezvous { peer: Box::new(me) });
        assert!(drain(&mut v).is_empty());
    }

    #[test]
    fn peers_of_its_own_site_are_dialled_first() {
        let t0 = Instant::now();
        let mut v = viewer(10, t0);
        let public = SocketAddr::from(([198, 51, 100, 1], 7000));
        v.observe_self(Some(public), Reach::Nat);
        connect_origin(&mut v, t0);
        drain(&mut v);
        // Twenty candidates, two of them behind our public address.
        let at = |i: u8, ip: [u8; 4]| PeerInfo {
            addr: SocketAddr::from((ip, 7000 + u16::from(i))),
            ..behind(i, Reach::Nat, Some(7000))
        };
        let site = |i: u8| at(i, [198, 51, 100, 1]);
        let mut peers: Vec<PeerInfo> = (20..38).map(|i| at(i, [203, 0, 113, i])).collect();
        peers.push(site(40));
        peers.push(site(41));
        v.handle_control(t0, id(ORIGIN), Control::Peers { peers });
        let dialled: Vec<NodeId> = drain(&mut v)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial {
                    peer,
                    addr: Some(_),
                    ..
                } => Some(peer),
                _ => None,
            })
            .collect();
        assert!(dialled.len() >= 2, "{dialled:?}");
        assert_eq!(&dialled[..2], &[id(40), id(41)][..], "{dialled:?}");
    }

    #[test]
    fn a_flood_of_candidates_stays_within_the_table() {
        // 3,200 made-up peers from one partner, 32 a message (the budget in `node::budget`
        // stops a real flood far earlier; this is what the table does with what gets in).
        let t0 = Instant::now();
        let mut v = viewer_connected(t0, &[20]);
        let cap = v.cfg.max_known;
        assert_eq!(cap, 256);
        let made_up = |i: u16| {
            let mut b = [0xee; 32];
            b[..2].copy_from_slice(&i.to_le_bytes());
            NodeId(b)
        };
        for m in 0..100u16 {
            let peers = (0..MAX_PEERS_PER_MESSAGE as u16)
                .map(|k| contact(made_up(m * 32 + k), addr(9)))
                .collect();
            v.handle_control(t0, id(20), Control::Peers { peers });
            drain(&mut v);
            assert!(v.known.len() <= cap, "{} candidates", v.known.len());
        }
        assert_eq!(v.known.len(), cap);
        // A real peer named after the flood is kept: a full table forgets one at random.
        v.handle_control(
            t0,
            id(20),
            Control::Peers {
                peers: vec![contact(id(77), addr(77))],
            },
        );
        assert!(v.known.contains_key(&id(77)));
        assert!(v.known.len() <= cap);
    }
}
