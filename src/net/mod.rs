//! The QUIC driver: one quinn endpoint, one task per connection, and a main loop
//! that feeds [`Mesh`] and carries out its [`Action`](crate::mesh::Action)s.
//!
//! Each partner pair shares one connection: the dialler opens the control stream
//! (Hello, then buffer maps, haves, peer lists); every transfer gets its own
//! stream (a bidirectional one per request, a unidirectional one per push), so
//! one slow segment never blocks another. Every segment is verified — header
//! signature first, then each piece as it arrives — before it enters the
//! [`Store`], the only place the HTTP server and peers read from.
//!
//! Every decision that is not about sockets (which parts are wanted, whether a request is
//! served, whether a Hello is accepted, why a connection closes) is asked of
//! [`crate::node`] and [`Mesh`], which the simulator drives too. The files here:
//! `connection` (accept, dial, Hello, one task per connection), `driver` (the main loop
//! around the mesh), `download` (receiving parts into assemblies), `upload` (serving,
//! relaying and seeding), `framing` (bounded frame reads and writes), `limiter` (the
//! upload cap).

mod connection;
mod download;
mod driver;
mod framing;
mod limiter;
mod upload;

pub use limiter::{Limiter, SeedGuard, UploadClass, SEED_PRIORITY_WAIT};

use crate::clock::now;
use crate::mesh::{Mesh, MeshConfig, MeshStats};
use crate::node::nat::{Interface, Reachability};
use crate::node::{Assemblies, Uploads};
use crate::rate::Rate;
use crate::store::{self, SharedStore, Store};
use crate::stream::{node_id, NodeId, StreamId, VerifiedSegment};
use crate::tls;
use crate::token::{Admission, TokenError};
use crate::wire::Role;
use bytes::Bytes;
use download::Assembly;
use driver::Event;
use ed25519_dalek::SigningKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The QUIC endpoint could not be set up (e.g. the port is in use).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// What a node is and how it behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's key (for the broadcaster: the stream key).
    pub key: SigningKey,
    /// The stream.
    pub stream: StreamId,
    /// Broadcaster or viewer.
    pub role: Role,
    /// UDP address for the QUIC endpoint.
    pub listen: SocketAddr,
    /// Viewers: the broadcaster's addresses from the ticket.
    pub origin_addrs: Vec<SocketAddr>,
    /// Upload cap (None: uncapped). Viewers: `--upload-limit`; broadcaster: `--max-upload`.
    pub upload_limit: Option<Rate>,
    /// Mesh tuning.
    pub mesh: MeshConfig,
    /// Segments held in memory.
    pub store_capacity: usize,
    /// Seed for the mesh's random choices.
    pub seed: u64,
    /// Most simultaneous connections accepted.
    pub max_connections: usize,
    /// Public, or private: the token this node shows and the tokens it demands.
    pub admission: Admission,
}

/// Byte and segment counters, readable at any time.
#[derive(Debug, Default)]
pub struct Counters {
    /// Segments verified and stored (received, or published by the broadcaster).
    pub segments_verified: AtomicU64,
    /// Segment bytes received from viewers.
    pub bytes_from_peers: AtomicU64,
    /// Segment bytes received from the broadcaster.
    pub bytes_from_origin: AtomicU64,
    /// Segment bytes sent to peers.
    pub bytes_uploaded: AtomicU64,
    /// Segments rejected because they failed verification.
    pub rejected_segments: AtomicU64,
    /// Non-media bytes sent: control messages, requests, segment headers (overhead figure).
    pub control_bytes: AtomicU64,
    /// Requests answered `Busy` because the upload cap was saturated.
    pub busy_replies: AtomicU64,
    /// Broadcaster: seeding pushes the receiver did not acknowledge in time (each seeded
    /// again elsewhere while fresh).
    pub seeds_unconfirmed: AtomicU64,
    /// Dials that connected (to the broadcaster or a peer).
    pub dials_ok: AtomicU64,
    /// Dials that failed at every address tried.
    pub dials_failed: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// State shared by the main loop and the connection tasks.
struct Shared {
    key: SigningKey,
    me: NodeId,
    stream: StreamId,
    role: Role,
    uploads: bool,
    /// The site this node was given a name for (`--site`), told in its Hello.
    site: Option<crate::wire::SiteTag>,
    origin_addrs: Vec<SocketAddr>,
    endpoint: quinn::Endpoint,
    store: SharedStore,
    counters: Arc<Counters>,
    limiter: Arc<Limiter>,
    mesh_stats: Mutex<MeshStats>,
    /// Segments arriving right now, servable piece by piece (cut-through relaying).
    assemblies: Mutex<Assemblies<Arc<Assembly>>>,
    /// Bumped whenever a piece is verified into an assembly or a segment is stored: what
    /// the local HTTP server's waiting requests (blocking reloads, cut-through) wake on.
    arrivals: watch::Sender<u64>,
    /// Upload admission: slots in use, the stream's bitrate, parts seeded here.
    upload: Mutex<Uploads>,
    /// Where peers see us, and so how we can be reached.
    reachability: Mutex<Reachability>,
    /// Partners connected over one of our own networks (kept by the driver).
    lan_partners: AtomicUsize,
    /// What the connections carried (kept by the driver, refreshed every second).
    wire: Mutex<WireStats>,
    /// An address from the ticket answered with a key other than the stream's.
    origin_wrong_key: Mutex<Option<SocketAddr>>,
    /// Private streams: what this node shows and demands.
    admission: Admission,
    /// The newest token epoch known to be signed by the broadcaster; older tokens are
    /// revoked, and connections holding them watch this and close.
    token_epoch: watch::Sender<u32>,
    /// The broadcaster refused our token, and why.
    origin_refused: Mutex<Option<TokenError>>,
    events: mpsc::Sender<Event>,
    connections: AtomicUsize,
    max_connections: usize,
    /// Connections in their handshake or Hello, per source address (capped; see
    /// [`crate::node::budget::MAX_HANDSHAKES`]).
    handshakes: Mutex<crate::node::budget::HandshakeSlots>,
}

impl Shared {
    fn assemblies(&self) -> MutexGuard<'_, Assemblies<Arc<Assembly>>> {
        self.assemblies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_arrival(&self) {
        self.arrivals.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn upload(&self) -> MutexGuard<'_, Uploads> {
        self.upload.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reachability(&self) -> MutexGuard<'_, Reachability> {
        self.reachability.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A segment a node is still assembling, as the local HTTP server may show it: facts from
/// its verified signed header and the verified pieces from its first byte on.
#[derive(Debug, Clone)]
pub struct Arriving {
    /// The segment number.
    pub number: u64,
    /// Its length in bytes, as signed.
    pub len: u32,
    /// How many pieces it has, as signed.
    pub pieces: usize,
    /// Its duration in milliseconds, as signed.
    pub duration_ms: u32,
    /// The broadcaster's wall clock at publication (ms since the Unix epoch).
    pub published_unix_ms: u64,
    /// A discontinuity precedes it.
    pub discontinuity: bool,
    /// The verified pieces from the first byte on, up to the first one missing.
    pub prefix: Vec<Bytes>,
}

/// A running node (broadcaster or viewer). Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    view: NodeView,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A cheap, clonable handle on a running node: its store, figures and upload cap.
#[derive(Clone)]
pub struct NodeView {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Node {
    type Target = NodeView;
    fn deref(&self) -> &NodeView {
        &self.view
    }
}

/// A point-in-time summary of a node, for `/stats` and status lines.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStats {
    /// Connected viewer partners (the broadcaster excluded).
    pub peers: usize,
    /// Connected to the broadcaster (viewers).
    pub origin_connected: bool,
    /// Segments verified and held or published.
    pub segments_verified: u64,
    /// Segments currently held in memory.
    pub buffered_segments: usize,
    /// Newest segment held.
    pub newest_segment: Option<u64>,
    /// Newest segment known to exist (the live edge as the broadcaster announced it).
    pub live_newest: Option<u64>,
    /// Segment bytes received from viewers.
    pub bytes_from_peers: u64,
    /// Segment bytes received from the broadcaster.
    pub bytes_from_origin: u64,
    /// Segment bytes sent to peers.
    pub bytes_uploaded: u64,
    /// Segments not held by their playout deadline.
    pub missed_deadlines: u64,
    /// Segments rejected by verification.
    pub rejected_segments: u64,
    /// Non-media bytes sent (control messages, requests, segment headers).
    pub control_bytes: u64,
    /// Requests turned away because upload was saturated.
    pub busy_replies: u64,
    /// Seeding pushes not acknowledged in time (broadcaster).
    pub seeds_unconfirmed: u64,
    /// Peers banned for misbehaviour.
    pub bans: u64,
    /// How peers reach this node: `public`, `nat`, `symmetric` or `unknown`.
    pub reachability: &'static str,
    /// The address peers off this node's networks see it at.
    pub public_addr: Option<SocketAddr>,
    /// Partners connected over one of this node's own networks (the same site).
    pub lan_partners: usize,
    /// Dials that connected.
    pub dials_ok: u64,
    /// Dials that failed at every address tried.
    pub dials_failed: u64,
    /// The upload slots each path runs with now.
    pub upload_slots: SlotStats,
    /// What its QUIC connections carried, per path.
    pub wire: WireStats,
}

/// What a node's QUIC connections carried, per path: the connections open now and those
/// closed before (as they stood when they were dropped), refreshed every second.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WireStats {
    /// Connections to peers off this node's own networks (the broadcaster's among them).
    pub off_lan: PathWire,
    /// Connections to peers on them (its site).
    pub lan: PathWire,
}

/// One path's share of [`WireStats`]. Bytes are UDP payloads (QUIC packets: headers,
/// acknowledgements, control and retransmissions included; IP and UDP headers not).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PathWire {
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Bytes of the packets sent that were declared lost (so sent again, if they held data).
    pub bytes_lost: u64,
}

impl PathWire {
    /// Adds what one connection carried.
    fn add(&mut self, c: &quinn::ConnectionStats) {
        self.datagrams_sent += c.udp_tx.datagrams;
        self.bytes_sent += c.udp_tx.bytes;
        self.datagrams_received += c.udp_rx.datagrams;
        self.bytes_received += c.udp_rx.bytes;
        self.bytes_lost += c.path.lost_bytes;
    }
}

impl WireStats {
    /// Adds what connection `conn` carried to its path's figures.
    fn add(&mut self, conn: &quinn::Connection, lan: bool) {
        let path = if lan {
            &mut self.lan
        } else {
            &mut self.off_lan
        };
        path.add(&conn.stats());
    }
}

/// Upload slots a node runs with now, per path ([`crate::node::PathSlots`]): the cap's
/// with `--upload-limit`, learned without; None until the path's first request.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SlotStats {
    /// For peers off this node's own networks.
    pub off_lan: Option<u64>,
    /// For peers on them (its site).
    pub lan: Option<u64>,
}

impl Node {
    /// Binds the endpoint and starts the node's tasks.
    pub async fn spawn(config: NodeConfig) -> Result<Node, NetError> {
        let endpoint = tls::endpoint(&config.key, config.listen)?;
        let port = endpoint
            .local_addr()
            .map_or(config.listen.port(), |a| a.port());
        let (events_tx, events_rx) = mpsc::channel(4096);
        let me = node_id(&config.key);
        let shared = Arc::new(Shared {
            key: config.key.clone(),
            me,
            stream: config.stream,
            role: config.role,
            uploads: config.mesh.uploads,
            site: config.mesh.site,
            origin_addrs: config.origin_addrs.clone(),
            endpoint,
            store: Store::shared(config.store_capacity),
            counters: Arc::new(Counters::default()),
            limiter: Arc::new(Limiter::new(config.upload_limit)),
            mesh_stats: Mutex::new(MeshStats::default()),
            assemblies: Mutex::new(Assemblies::default()),
            arrivals: watch::Sender::new(0),
            upload: Mutex::new(Uploads::default()),
            reachability: Mutex::new(Reachability::new(interfaces(), port)),
            lan_partners: AtomicUsize::new(0),
            wire: Mutex::new(WireStats::default()),
            origin_wrong_key: Mutex::new(None),
            token_epoch: watch::Sender::new(config.admission.epoch()),
            admission: config.admission,
            origin_refused: Mutex::new(None),
            events: events_tx,
            connections: AtomicUsize::new(0),
            max_connections: config.max_connections,
            handshakes: Mutex::new(Default::default()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mesh = Mesh::new(config.mesh.clone(), me, config.seed, now());
        tokio::spawn(connection::accept_loop(shared.clone(), shutdown_rx.clone()));
        let task = tokio::spawn(driver::main_loop(
            shared.clone(),
            mesh,
            events_rx,
            shutdown_rx,
        ));
        Ok(Node {
            view: NodeView { shared },
            shutdown,
            task,
        })
    }

    /// Stops at once without waiting for anything (benchmarks' churn, tests).
    ///
    /// Connections are closed with a close frame, so peers notice immediately; a
    /// process that dies without one is noticed after the QUIC idle timeout instead.
    pub fn kill(self) {
        self.task.abort();
        self.view
            .shared
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"left");
    }

    /// A clonable handle on this node.
    pub fn view(&self) -> NodeView {
        self.view.clone()
    }

    /// Closes every connection (telling peers why) and stops the tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let endpoint = &self.view.shared.endpoint;
        endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}

impl NodeView {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.me
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// The segments this node holds.
    pub fn store(&self) -> SharedStore {
        self.shared.store.clone()
    }

    /// The raw counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// The bytes of segment `n`, if held (what `/seg/<n>.ts` serves).
    pub fn segment_data(&self, n: u64) -> Option<Bytes> {
        store::lock(&self.shared.store)
            .get(n)
            .map(|s| s.data.clone())
    }

    /// The segments being assembled now, by number, with their verified prefixes: read
    /// only, for the local HTTP server (cut-through and LL-HLS parts).
    pub fn arriving(&self) -> Vec<Arriving> {
        let assemblies: Vec<_> = self
            .shared
            .assemblies()
            .iter()
            .map(|(n, a)| (n, a.clone()))
            .collect();
        let mut arriving: Vec<Arriving> = assemblies
            .into_iter()
            .map(|(number, a)| {
                let h = &a.header.header;
                Arriving {
                    number,
                    len: h.len,
                    pieces: h.pieces.len(),
                    duration_ms: h.duration_ms,
                    published_unix_ms: h.published_unix_ms,
                    discontinuity: h.discontinuity,
                    prefix: a.verified_prefix(),
                }
            })
            .collect();
        arriving.sort_by_key(|a| a.number);
        arriving
    }

    /// Changes whenever a piece is verified or a segment stored (see [`NodeView::arriving`]).
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.shared.arrivals.subscribe()
    }

    /// The newest segment known to exist, as the mesh last reported it.
    pub fn live_newest(&self) -> Option<u64> {
        self.shared
            .mesh_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .newest
    }

    /// A ticket address where a node with another key answered (the ticket is for a
    /// different stream, or the broadcaster's key changed).
    pub fn origin_wrong_key(&self) -> Option<SocketAddr> {
        *self
            .shared
            .origin_wrong_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Private streams: why the broadcaster refused this node's token, if it did.
    pub fn origin_refused(&self) -> Option<TokenError> {
        self.shared
            .origin_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Private streams: raises the token epoch (the broadcaster, after a rotation). New
    /// connections with older tokens are refused, and connected holders are dropped.
    pub fn raise_token_epoch(&self, epoch: u32) {
        connection::raise_epoch(&self.shared, epoch);
    }

    /// Changes the upload cap (the broadcaster follows the stream's measured bitrate).
    pub fn set_upload_limit(&self, rate: Option<Rate>) {
        self.shared.limiter.set_rate(rate);
    }

    /// A summary for `/stats`.
    pub fn stats(&self) -> NodeStats {
        let c = &self.shared.counters;
        let m = self
            .shared
            .mesh_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (buffered, newest) = {
            let s = store::lock(&self.shared.store);
            (s.len(), s.newest())
        };
        let (reach, public_addr) = {
            let r = self.shared.reachability();
            (r.reach(), r.public_addr())
        };
        NodeStats {
            peers: m.partners,
            origin_connected: m.origin_connected,
            segments_verified: get(&c.segments_verified),
            buffered_segments: buffered,
            newest_segment: newest,
            live_newest: m.newest.max(newest),
            bytes_from_peers: get(&c.bytes_from_peers),
            bytes_from_origin: get(&c.bytes_from_origin),
            bytes_uploaded: get(&c.bytes_uploaded),
            missed_deadlines: m.missed_deadlines,
            rejected_segments: get(&c.rejected_segments),
            control_bytes: get(&c.control_bytes),
            busy_replies: get(&c.busy_replies),
            seeds_unconfirmed: get(&c.seeds_unconfirmed),
            bans: m.bans,
            reachability: reach.as_str(),
            public_addr,
            lan_partners: self.shared.lan_partners.load(Ordering::Relaxed),
            dials_ok: get(&c.dials_ok),
            dials_failed: get(&c.dials_failed),
            upload_slots: {
                let up = self.shared.upload();
                SlotStats {
                    off_lan: up.path(false).slots(),
                    lan: up.path(true).slots(),
                }
            },
            wire: *self.shared.wire.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Broadcaster: stores a freshly signed segment and announces it.
    pub async fn publish(&self, seg: VerifiedSegment) {
        let number = seg.number();
        // The origin sizes its upload slots by the stream's bitrate like every node.
        self.shared.upload().note_header(&seg.header.header);
        if store::lock(&self.shared.store).insert(seg) {
            add(&self.shared.counters.segments_verified, 1);
            let _ = self.shared.events.send(Event::Publish { number }).await;
        }
    }

    /// Broadcaster: the stream ended after `last`.
    pub async fn end(&self, last: u64) {
        store::lock(&self.shared.store).set_ended(last);
        let _ = self.shared.events.send(Event::End { last }).await;
    }
}

/// This host's interfaces with their prefix lengths (loopback left out by
/// [`Reachability::new`]); none if they cannot be listed.
fn interfaces() -> Vec<Interface> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => Interface {
                ip: IpAddr::V4(a.ip),
                prefix: a.prefixlen,
            },
            if_addrs::IfAddr::V6(a) => Interface {
                ip: IpAddr::V6(a.ip),
                prefix: a.prefixlen,
            },
        })
        .collect()
}

/// The addresses to put in a ticket for an endpoint bound to `local`.
///
/// A wildcard bind is reachable on every interface address; loopback goes last so a
/// viewer on another host tries the routable ones first (all are tried at once anyway).
pub fn advertised_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == local.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .map(|ip| SocketAddr::new(ip, local.port()))
        .take(crate::stream::MAX_TICKET_ADDRS - 1)
        .collect();
    let lo = if local.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    addrs.push(SocketAddr::new(lo, local.port()));
    addrs
}
