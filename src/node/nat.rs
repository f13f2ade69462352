//! Reachability behind NATs: what this node learns of its own address from the peers that
//! see it, how its NAT is classified from that, which of a peer's addresses to dial, and
//! when a common partner should arrange a simultaneous open (a rendezvous).
//!
//! A peer behind an endpoint-independent-mapping NAT (Linux masquerade, most home
//! routers) keeps one public address for every destination, so what the broadcaster saw
//! is what anyone may dial, once that NAT has seen a packet go out to them: both sides
//! dial at once, told to by a party connected to both. A symmetric NAT maps per
//! destination, so no address learned elsewhere reaches it: such a peer dials out to
//! public peers only, and is not handed out.

use crate::stream::NodeId;
use crate::wire::{PeerInfo, Reach, SiteTag};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// Observations kept (the newest ones).
const MAX_OBSERVATIONS: usize = 8;
/// Local interfaces considered.
const MAX_INTERFACES: usize = 8;

/// One of this node's interface addresses with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// The address.
    pub ip: IpAddr,
    /// Its network prefix length, in bits.
    pub prefix: u8,
}

impl Interface {
    /// Whether `ip` is on this interface's network (a peer on the same LAN sees our LAN
    /// address and says nothing about our NAT).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// What this node knows of its own reachability.
#[derive(Debug, Clone, Default)]
pub struct Reachability {
    /// Its interfaces (not loopback).
    interfaces: Vec<Interface>,
    /// The UDP port it listens on.
    port: u16,
    /// (the observer's address, the address it saw us at), newest last, from peers off
    /// our own networks.
    observed: VecDeque<(IpAddr, SocketAddr)>,
}

impl Reachability {
    /// A node listening on `port` with these interfaces.
    pub fn new(interfaces: Vec<Interface>, port: u16) -> Reachability {
        let mut interfaces = interfaces;
        interfaces.retain(|i| !i.ip.is_loopback() && !i.ip.is_unspecified());
        interfaces.truncate(MAX_INTERFACES);
        Reachability {
            interfaces,
            port,
            observed: VecDeque::new(),
        }
    }

    /// A peer at `observer` saw us at `observed` (its Hello says so). Peers on one of our
    /// own networks (or on this host) are ignored: they see our LAN address whatever our NAT.
    pub fn observe(&mut self, observer: IpAddr, observed: SocketAddr) {
        if observer.is_loopback() || self.interfaces.iter().any(|i| i.contains(observer)) {
            return;
        }
        if self.observed.len() >= MAX_OBSERVATIONS {
            self.observed.pop_front();
        }
        self.observed.push_back((observer, observed));
    }

    /// How others reach us: [`Reach::Public`] when a peer off our networks saw one of our
    /// own addresses, [`Reach::Symmetric`] when two peers at different addresses saw
    /// different public addresses, [`Reach::Nat`] otherwise, [`Reach::Unknown`] with no
    /// such peer yet.
    pub fn reach(&self) -> Reach {
        if self.observed.is_empty() {
            return Reach::Unknown;
        }
        let own =
            |a: SocketAddr| a.port() == self.port && self.interfaces.iter().any(|i| i.ip == a.ip());
        if self.observed.iter().any(|(_, a)| own(*a)) {
            return Reach::Public;
        }
        let differs = self
            .observed
            .iter()
            .any(|(o, a)| self.observed.iter().any(|(o2, a2)| o2 != o && a2 != a));
        if differs {
            return Reach::Symmetric;
        }
        Reach::Nat
    }

    /// Whether `ip` is on one of our own networks (a partner there is on our site).
    pub fn on_our_networks(&self, ip: IpAddr) -> bool {
        self.interfaces.iter().any(|i| i.contains(ip))
    }

    /// The address peers off our networks see us at, the newest seen.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.observed.back().map(|(_, a)| *a)
    }

    /// This node's LAN address to hand to same-site peers: its first interface, on the
    /// listening port.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.interfaces
            .first()
            .map(|i| SocketAddr::new(i.ip, self.port))
    }

    /// Whether a peer seen at `addr` sits behind the same public address as we do (the
    /// same site), so its LAN address is the one to dial.
    pub fn same_site(&self, addr: SocketAddr) -> bool {
        self.public_addr().is_some_and(|me| me.ip() == addr.ip())
    }

    /// The addresses to dial a peer seen at `addr` at, all tried at once: its LAN address
    /// `local` first, given when the mesh found it of our site (behind our public address,
    /// where its public one is a hairpin most NATs do not turn, or given our site's name),
    /// then the address it was seen at.
    pub fn dial_addrs(&self, addr: SocketAddr, local: Option<SocketAddr>) -> Vec<SocketAddr> {
        let mut addrs = Vec::with_capacity(2);
        if let Some(local) = local {
            addrs.push(local);
        }
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        addrs
    }
}

/// Whether a party connected to both `a` and `b` should tell `b` to dial `a` at the same
/// time as `a` dials `b`: only when `b` is behind a NAT that a simultaneous open gets
/// through (a public `b` lets `a`'s dial in alone), and not for a symmetric `a`, whose NAT
/// would map its dial to a port `b` does not expect.
pub fn needs_rendezvous(a: Reach, b: Reach) -> bool {
    b == Reach::Nat && a != Reach::Symmetric
}

impl Reachability {
    /// A connected peer as this node hands it out, from the address we see it at and what
    /// its Hello said: seen over one of our own networks (or this host), its LAN address
    /// says nothing to others, so the public address it reported goes out instead; seen
    /// at another address than its LAN one, from outside, it is behind a NAT even if it
    /// does not know yet.
    pub fn contact_of(
        &self,
        id: NodeId,
        observed: SocketAddr,
        hello_public: Option<SocketAddr>,
        hello_local: Option<SocketAddr>,
        (hello_reach, hello_site): (Reach, Option<SiteTag>),
    ) -> PeerInfo {
        let nearby = observed.ip().is_loopback() || self.on_our_networks(observed.ip());
        let addr = if nearby {
            hello_public.unwrap_or(observed)
        } else {
            observed
        };
        let reach = match hello_reach {
            Reach::Unknown if !nearby && hello_local.is_some_and(|l| l != observed) => Reach::Nat,
            Reach::Unknown if !nearby && hello_local == Some(observed) => Reach::Public,
            r => r,
        };
        PeerInfo {
            id,
            addr,
            local: hello_local,
            reach,
            site: hello_site,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn home() -> Reachability {
        Reachability::new(
            vec![Interface {
                ip: ip("192.168.1.10"),
                prefix: 24,
            }],
            7000,
        )
    }

    #[test]
    fn a_peer_behind_masquerade_is_seen_at_one_public_address() {
        let mut r = home();
        assert_eq!(r.reach(), Reach::Unknown);
        // A neighbour on the LAN says nothing about the NAT.
        r.observe(ip("192.168.1.20"), sa("192.168.1.10:7000"));
        assert_eq!(r.reach(), Reach::Unknown);
        r.observe(ip("203.0.113.1"), sa("198.51.100.7:7000"));
        assert_eq!(r.reach(), Reach::Nat);
        // A second observer elsewhere sees the same mapping: still a cone NAT.
        r.observe(ip("203.0.113.9"), sa("198.51.100.7:7000"));
        assert_eq!(r.reach(), Reach::Nat);
        assert_eq!(r.public_addr(), Some(sa("198.51.100.7:7000")));
    }

    #[test]
    fn a_mapping_per_destination_is_symmetric() {
        let mut r = home();
        r.observe(ip("203.0.113.1"), sa("198.51.100.7:40001"));
        r.observe(ip("203.0.113.9"), sa("198.51.100.7:40002"));
        assert_eq!(r.reach(), Reach::Symmetric);
        assert!(!needs_rendezvous(Reach::Nat, Reach::Symmetric));
        assert!(!needs_rendezvous(Reach::Symmetric, Reach::Nat));
    }

    #[test]
    fn seen_at_its_own_address_it_is_public() {
        let mut r = Reachability::new(
            vec![Interface {
                ip: ip("203.0.113.5"),
                prefix: 24,
            }],
            7000,
        );
        r.observe(ip("198.51.100.1"), sa("203.0.113.5:7000"));
        assert_eq!(r.reach(), Reach::Public);
        assert!(!needs_rendezvous(Reach::Nat, Reach::Public));
        assert!(needs_rendezvous(Reach::Nat, Reach::Nat));
        assert!(needs_rendezvous(Reach::Public, Reach::Nat));
        assert!(needs_rendezvous(Reach::Unknown, Reach::Nat));
    }

    #[test]
    fn a_peer_of_the_same_site_is_dialled_on_its_lan_address_first() {
        let mut r = home();
        r.observe(ip("203.0.113.1"), sa("198.51.100.7:7000"));
        let local = Some(sa("192.168.1.11:7001"));
        assert!(r.same_site(sa("198.51.100.7:7001")));
        assert_eq!(
            r.dial_addrs(sa("198.51.100.7:7001"), local),
            vec![sa("192.168.1.11:7001"), sa("198.51.100.7:7001")]
        );
        // Elsewhere (the mesh gives no LAN address): its public address only.
        assert_eq!(
            r.dial_addrs(sa("198.51.100.99:7001"), None),
            vec![sa("198.51.100.99:7001")]
        );
    }

    #[test]
    fn peers_are_handed_out_at_addresses_others_can_dial() {
        let r = home();
        let id = NodeId([3; 32]);
        // From outside, at another address than its LAN one: behind a NAT.
        let c = r.contact_of(
            id,
            sa("198.51.100.9:7002"),
            None,
            Some(sa("10.0.0.2:7002")),
            (Reach::Unknown, None),
        );
        assert_eq!((c.addr, c.reach), (sa("198.51.100.9:7002"), Reach::Nat));
        // A neighbour on our LAN goes out at the public address it reported.
        let c = r.contact_of(
            id,
            sa("192.168.1.11:7001"),
            Some(sa("198.51.100.7:7001")),
            Some(sa("192.168.1.11:7001")),
            (Reach::Nat, None),
        );
        assert_eq!((c.addr, c.reach), (sa("198.51.100.7:7001"), Reach::Nat));
        assert_eq!(c.local, Some(sa("192.168.1.11:7001")));
        // On loopback nothing is known, and nothing needs a rendezvous.
        let c = r.contact_of(
            id,
            sa("127.0.0.1:9"),
            None,
            Some(sa("192.168.1.10:9")),
            (Reach::Unknown, None),
        );
        assert_eq!(c.reach, Reach::Unknown);
        assert!(!needs_rendezvous(Reach::Unknown, c.reach));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let lan = Interface {
            ip: ip("10.1.2.3"),
            prefix: 16,
        };
        assert!(lan.contains(ip("10.1.200.1")));
        assert!(!lan.contains(ip("10.2.0.1")));
        assert!(!lan.contains(ip("::1")));
        let all = Interface {
            ip: ip("10.1.2.3"),
            prefix: 0,
        };
        assert!(all.contains(ip("1.2.3.4")));
    }
}
