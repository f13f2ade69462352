//! The QUIC driver: one quinn endpoint, one task per connection, and a main loop
//! that feeds [`Mesh`] and carries out its [`Action`]s.
//!
//! Each partner pair shares one connection: the dialler opens the control stream
//! (Hello, then buffer maps, haves, peer lists); every transfer gets its own
//! stream (a bidirectional one per request, a unidirectional one per push), so
//! one slow segment never blocks another. Every segment is verified — header
//! signature first, then each piece as it arrives — before it enters the
//! [`Store`], the only place the HTTP server and peers read from.

use crate::mesh::{Action, Mesh, MeshConfig, MeshStats};
use crate::rate::{serving_slots, Rate, SeededParts, TokenBucket};
use crate::store::{self, SharedStore, Store};
use crate::stream::{
    node_id, part_pieces, piece_range, NodeId, SignedHeader, StreamId, VerifiedSegment, PARTS,
};
use crate::tls;
use crate::token::{Admission, JoinToken, TokenError};
use crate::wire::{self, Control, Reply, Request, Role, WireError};
use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use quinn::{Connection, RecvStream, SendStream};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

/// How long a peer has to complete the Hello exchange.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer has to send its request on a transfer stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a single upload (serve or push) may take before it is abandoned.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Upload backlog beyond which requests are answered `Busy` (ask someone else).
const BUSY_BACKLOG: Duration = Duration::from_millis(1500);
/// Control messages queued per connection; a peer that lets it fill is not reading.
const CONTROL_QUEUE: usize = 512;
/// Requests a peer may have us serve at once; more are answered `Busy`. An honest
/// viewer asks one partner for at most 2 segments at a time (the origin for 3), so
/// this is never reached by one, while a flooder holds at most this many slots.
const SERVES_PER_CONNECTION: usize = 4;
/// Longest one piece may wait for the receiver's flow-control credit. An honest
/// requester reads as data arrives (or drops the stream, which fails the write at
/// once); one whose window stays shut this long is holding an upload slot hostage.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the body of a frame may take once it has begun.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a part's reply may go silent: its first piece after the header, or one piece
/// after the last. A supplier that vanished (crashed, or lost its network) is noticed only
/// at the QUIC idle timeout, 10 s; the part is asked elsewhere after this instead. Honest
/// gaps are a piece's time on the supplier's uplink: under 0.4 s in every transfer of
/// the simulator (BENCHMARKS.md, tenth session). With 30% churn a minute, 1 s took the
/// simulator's continuity from 0.9962 to 0.9999.
pub const PIECE_SILENCE: Duration = Duration::from_secs(1);
/// Connections still in their handshake or Hello, in all: each costs state before
/// the peer has proved anything, so a flood of half-open attempts is refused beyond it.
const MAX_HANDSHAKES: usize = 256;
/// Connections in their handshake or Hello from one IP address. Established
/// connections are not capped per address (many honest viewers can share one, behind
/// NAT or on loopback); they are bounded by `max_connections` and the mesh's partner cap.
const MAX_HANDSHAKES_PER_IP: usize = 32;
/// Longest the accept loop waits to tell a peer over its serve cap that we are busy.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Segments behind the newest still worth receiving.
const KEEP_BEHIND: u64 = 64;
/// Pushes we accept at once from one connection: every part of two segments, since a
/// broadcaster with few viewers seeds each of them several parts of every segment.
const PUSHES_PER_CONNECTION: usize = 2 * PARTS;
/// Longest a connection's token expiry is waited for (tokens live at most 366 days).
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(400 * 24 * 3600);

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The QUIC endpoint could not be set up (e.g. the port is in use).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("peer is busy")]
    Busy,
    #[error("peer does not hold the segment")]
    Unavailable,
    #[error("peer sent forged or corrupt data: {0}")]
    Forged(&'static str),
    #[error("unwanted segment")]
    Unwanted,
    #[error("the segment's partial is gone")]
    Lost,
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(String),
    #[error("timed out")]
    Timeout,
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
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Upload cap shared by every upload of a node: one token bucket, async waiting.
///
/// Seeding pushes (the broadcaster's first copies of a fresh segment) go before served
/// requests: while one is in progress, a served upload waits before booking each piece
/// (at most [`SEED_PRIORITY_WAIT`], so a stalled push cannot starve it). Shared evenly,
/// a push crawled behind the fallback requests and reached its seed ~2 s late at 40 ms
/// RTT in the simulator; with priority it lands in a quarter of a second.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Option<TokenBucket>>,
    /// Seeding pushes in progress.
    seeding: AtomicUsize,
    seed_done: tokio::sync::Notify,
}

/// Longest a served upload waits on a seeding push before booking one piece anyway.
pub const SEED_PRIORITY_WAIT: Duration = Duration::from_millis(250);

/// Which uploads a [`Limiter`] lets go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadClass {
    /// A broadcaster's push of a fresh segment to a seed.
    Seed,
    /// An answer to a request (or a relay).
    Serve,
}

/// A seeding push in progress; its priority ends on drop.
#[derive(Debug)]
pub struct SeedGuard<'a>(&'a Limiter);

impl Drop for SeedGuard<'_> {
    fn drop(&mut self) {
        self.0.seeding.fetch_sub(1, Ordering::AcqRel);
        self.0.seed_done.notify_waiters();
    }
}

impl Limiter {
    /// A limiter at `rate` (None: unlimited).
    pub fn new(rate: Option<Rate>) -> Limiter {
        Limiter {
            bucket: Mutex::new(rate.map(|r| Self::bucket(r, now()))),
            seeding: AtomicUsize::new(0),
            seed_done: tokio::sync::Notify::new(),
        }
    }

    /// Marks a seeding push in progress until the guard drops.
    pub fn seeding(&self) -> SeedGuard<'_> {
        self.seeding.fetch_add(1, Ordering::AcqRel);
        SeedGuard(self)
    }

    /// [`Limiter::acquire`] for an upload of `class`: served uploads let seeding go first.
    pub async fn acquire_as(&self, class: UploadClass, bytes: u64) {
        if class == UploadClass::Serve && self.seeding.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(SEED_PRIORITY_WAIT, async {
                loop {
                    let done = self.seed_done.notified();
                    if self.seeding.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    done.await;
                }
            })
            .await;
        }
        self.acquire(bytes).await;
    }

    fn bucket(rate: Rate, now: Instant) -> TokenBucket {
        // A burst of ~50 ms: smooth, but one piece never waits on its own.
        let burst = (rate.bytes_per_sec() / 20).max(64 * 1024);
        TokenBucket::new(rate, burst, now)
    }

    /// Changes the rate (None: unlimited).
    pub fn set_rate(&self, rate: Option<Rate>) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        *b = rate.map(|r| Self::bucket(r, now()));
    }

    /// Waits until `bytes` may be sent, and books them.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            match b.as_mut() {
                None => Duration::ZERO,
                Some(bucket) => {
                    let t = now();
                    let w = bucket.wait_time(t);
                    bucket.take(bytes, t);
                    w
                }
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The current cap, if any.
    pub fn rate(&self) -> Option<Rate> {
        let b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.as_ref().map(|bucket| bucket.rate())
    }

    /// How long newly booked bytes would wait.
    pub fn backlog(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.as_mut()
            .map_or(Duration::ZERO, |bucket| bucket.backlog(now()))
    }
}

/// The clock every driver reads (tokio's, so paused-time tests work).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A segment whose signed header is verified and whose pieces are still arriving, part by
/// part and possibly from several suppliers at once.
///
/// Pieces are stored only after their digest checks, so a peer served from here gets
/// verified bytes only. `progress` changes whenever a piece lands or a part's transfer
/// ends, which is what relays of this segment wait on.
struct Partial {
    header: SignedHeader,
    state: Mutex<PartialState>,
    progress: watch::Sender<u64>,
}

#[derive(Debug)]
struct PartialState {
    pieces: Vec<Option<Bytes>>,
    /// Transfers of each part writing into this partial right now.
    arriving: [u8; PARTS],
}

impl Partial {
    fn new(header: SignedHeader) -> Partial {
        // The signed header vouches for the piece count (at most `MAX_PIECES`).
        let pieces = vec![None; header.header.pieces.len()];
        Partial {
            header,
            state: Mutex::new(PartialState {
                pieces,
                arriving: [0; PARTS],
            }),
            progress: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartialState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether part `part` is here whole, or arriving: then a relay of it can be served.
    fn servable(&self, part: usize) -> bool {
        let st = self.lock();
        st.arriving.get(part).is_some_and(|a| *a > 0) || part_complete(&st.pieces, part)
    }
}

fn part_complete(pieces: &[Option<Bytes>], part: usize) -> bool {
    part_pieces(pieces.len(), part).is_some_and(|r| {
        pieces
            .get(r)
            .is_some_and(|ps| ps.iter().all(Option::is_some))
    })
}

/// Most segments assembled at once; the oldest partial goes first beyond it.
const MAX_PARTIALS: usize = 16;

/// One transfer writing part `part` into a partial; ends its "arriving" mark on drop,
/// however the transfer ends, and wakes the relays so they notice.
struct Arriving {
    partial: Arc<Partial>,
    part: usize,
}

impl Arriving {
    fn start(partial: Arc<Partial>, part: usize) -> Arriving {
        if let Some(a) = partial.lock().arriving.get_mut(part) {
            *a = a.saturating_add(1);
        }
        Arriving { partial, part }
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if let Some(a) = self.partial.lock().arriving.get_mut(self.part) {
            *a = a.saturating_sub(1);
        }
        self.partial.bump();
    }
}

/// What the tasks tell the main loop.
enum Event {
    Connected {
        peer: NodeId,
        conn: Connection,
        control: mpsc::Sender<Control>,
        role: Role,
        uploads: bool,
        upload_bps: Option<u64>,
        dialed_by_me: bool,
    },
    Disconnected {
        peer: NodeId,
        conn_id: usize,
    },
    DialFailed {
        peer: NodeId,
    },
    Control {
        peer: NodeId,
        msg: Control,
    },
    Part {
        from: NodeId,
        number: u64,
        part: u8,
        len: u64,
        /// The part completed the segment, of this duration.
        completed: Option<Duration>,
    },
    TransferFailed {
        peer: NodeId,
        number: u64,
        part: u8,
        busy: bool,
    },
    Receiving {
        from: NodeId,
        number: u64,
        part: u8,
    },
    /// A seeding push `peer` did not acknowledge in time.
    PushUnconfirmed {
        peer: NodeId,
        number: u64,
        part: u8,
    },
    Misbehaved {
        peer: NodeId,
        reason: &'static str,
    },
    Publish {
        number: u64,
    },
    End {
        last: u64,
    },
}

/// State shared by the main loop and the connection tasks.
struct Shared {
    key: SigningKey,
    me: NodeId,
    stream: StreamId,
    role: Role,
    uploads: bool,
    origin_addrs: Vec<SocketAddr>,
    endpoint: quinn::Endpoint,
    store: SharedStore,
    counters: Arc<Counters>,
    limiter: Arc<Limiter>,
    mesh_stats: Mutex<MeshStats>,
    /// Segments arriving right now, servable piece by piece (cut-through relaying).
    partials: Mutex<HashMap<u64, Arc<Partial>>>,
    /// Uploads (serves and relays) in progress.
    uploads_active: AtomicUsize,
    /// Parts the origin pushed here lately: requests for them get a slot more.
    seeded: Mutex<SeededParts>,
    /// An address from the ticket answered with a key other than the stream's.
    origin_wrong_key: Mutex<Option<SocketAddr>>,
    /// Private streams: what this node shows and demands.
    admission: Admission,
    /// The newest token epoch known to be signed by the broadcaster; older tokens are
    /// revoked, and connections holding them watch this and close.
    token_epoch: watch::Sender<u32>,
    /// The broadcaster refused our token, and why.
    origin_refused: Mutex<Option<TokenError>>,
    /// The stream's bitrate as seen in segment headers (bits/s; 0 until known).
    stream_bps: AtomicU64,
    events: mpsc::Sender<Event>,
    connections: AtomicUsize,
    max_connections: usize,
    /// Connections in their handshake or Hello, per source address (capped; see
    /// [`MAX_HANDSHAKES`] and [`MAX_HANDSHAKES_PER_IP`]).
    handshakes: Mutex<HashMap<IpAddr, usize>>,
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
}

impl Node {
    /// Binds the endpoint and starts the node's tasks.
    pub async fn spawn(config: NodeConfig) -> Result<Node, NetError> {
        let endpoint = tls::endpoint(&config.key, config.listen)?;
        let (events_tx, events_rx) = mpsc::channel(4096);
        let me = node_id(&config.key);
        let shared = Arc::new(Shared {
            key: config.key.clone(),
            me,
            stream: config.stream,
            role: config.role,
            uploads: config.mesh.uploads,
            origin_addrs: config.origin_addrs.clone(),
            endpoint,
            store: Store::shared(config.store_capacity),
            counters: Arc::new(Counters::default()),
            limiter: Arc::new(Limiter::new(config.upload_limit)),
            mesh_stats: Mutex::new(MeshStats::default()),
            partials: Mutex::new(HashMap::new()),
            uploads_active: AtomicUsize::new(0),
            seeded: Mutex::new(SeededParts::default()),
            origin_wrong_key: Mutex::new(None),
            admission: config.admission,
            token_epoch: watch::Sender::new(config.admission.epoch()),
            origin_refused: Mutex::new(None),
            stream_bps: AtomicU64::new(0),
            events: events_tx,
            connections: AtomicUsize::new(0),
            max_connections: config.max_connections,
            handshakes: Mutex::new(HashMap::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mesh = Mesh::new(config.mesh.clone(), me, config.seed, now());
        tokio::spawn(accept_loop(shared.clone(), shutdown_rx.clone()));
        let task = tokio::spawn(main_loop(shared.clone(), mesh, events_rx, shutdown_rx));
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
        raise_epoch(&self.shared, epoch);
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
        }
    }

    /// Broadcaster: stores a freshly signed segment and announces it.
    pub async fn publish(&self, seg: VerifiedSegment) {
        let number = seg.number();
        // The origin sizes its upload slots by the stream's bitrate like every node.
        note_bitrate(&self.shared, &seg.header);
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

struct ConnEntry {
    conn: Connection,
    control: mpsc::Sender<Control>,
    dialed_by_me: bool,
}

struct Driver {
    shared: Arc<Shared>,
    mesh: Mesh,
    conns: BTreeMap<NodeId, ConnEntry>,
    transfers: HashMap<(NodeId, u64, u8), AbortHandle>,
}

async fn main_loop(
    shared: Arc<Shared>,
    mesh: Mesh,
    mut events: mpsc::Receiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut d = Driver {
        shared,
        mesh,
        conns: BTreeMap::new(),
        transfers: HashMap::new(),
    };
    loop {
        d.run_actions();
        d.publish_stats();
        let wake = tokio::time::Instant::from_std(d.mesh.poll_timeout());
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => d.handle(ev),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => d.mesh.handle_tick(now()),
            _ = shutdown.changed() => break,
        }
    }
    for (_, c) in std::mem::take(&mut d.conns) {
        c.conn.close(quinn::VarInt::from_u32(0), b"shutting down");
    }
    for (_, t) in d.transfers.drain() {
        t.abort();
    }
}

impl Driver {
    fn publish_stats(&self) {
        let mut s = self
            .shared
            .mesh_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s = self.mesh.stats();
    }

    fn handle(&mut self, ev: Event) {
        let t = now();
        match ev {
            Event::Connected {
                peer,
                conn,
                control,
                role,
                uploads,
                upload_bps,
                dialed_by_me,
            } => {
                if let Some(existing) = self.conns.get(&peer) {
                    // Both sides dialled at once: both keep the connection dialled by the
                    // smaller id, so they agree without talking.
                    let keep_new = dialed_by_me == (self.shared.me < peer)
                        && existing.dialed_by_me != dialed_by_me;
                    if keep_new {
                        if let Some(old) = self.conns.insert(
                            peer,
                            ConnEntry {
                                conn,
                                control,
                                dialed_by_me,
                            },
                        ) {
                            old.conn
                                .close(quinn::VarInt::from_u32(0), b"duplicate connection");
                        }
                    } else {
                        conn.close(quinn::VarInt::from_u32(0), b"duplicate connection");
                    }
                    return;
                }
                let addr = conn.remote_address();
                self.conns.insert(
                    peer,
                    ConnEntry {
                        conn,
                        control,
                        dialed_by_me,
                    },
                );
                let bps = self.shared.stream_bps.load(Ordering::Relaxed);
                let cap = self.shared.limiter.rate().map(|r| r.0);
                self.mesh.observe_capacity(bps, cap);
                self.mesh
                    .handle_connected(t, peer, addr, role, uploads, upload_bps);
            }
            Event::Disconnected { peer, conn_id } => {
                if self
                    .conns
                    .get(&peer)
                    .is_some_and(|c| c.conn.stable_id() == conn_id)
                {
                    self.conns.remove(&peer);
                    self.transfers.retain(|(p, _, _), h| {
                        if *p == peer {
                            h.abort();
                        }
                        *p != peer
                    });
                    self.mesh.handle_disconnected(t, peer);
                }
            }
            Event::DialFailed { peer } => self.mesh.handle_dial_failed(t, peer),
            Event::Control { peer, msg } => {
                if let Control::End { last } = msg {
                    if peer == self.shared.stream {
                        store::lock(&self.shared.store).set_ended(last);
                    }
                }
                // The real node drains and polls after every input: it has no need of
                // the hint this returns.
                self.mesh.handle_control(t, peer, msg);
            }
            Event::Part {
                from,
                number,
                part,
                len,
                completed,
            } => {
                self.transfers.remove(&(from, number, part));
                self.mesh.handle_part(t, from, number, part, len);
                if let Some(duration) = completed {
                    self.mesh.observe_segment_duration(duration);
                    let len = store::lock(&self.shared.store)
                        .get(number)
                        .map_or(len, |s| s.data.len() as u64);
                    self.mesh.handle_segment(t, Some(from), number, len);
                }
            }
            Event::TransferFailed {
                peer,
                number,
                part,
                busy,
            } => {
                self.transfers.remove(&(peer, number, part));
                self.mesh
                    .handle_transfer_failed(t, peer, number, part, busy);
            }
            Event::Receiving { from, number, part } => {
                self.mesh.handle_receiving(t, from, number, part)
            }
            Event::PushUnconfirmed { peer, number, part } => {
                self.push_unconfirmed(t, peer, number, part)
            }
            Event::Misbehaved { peer, reason } => {
                tracing::warn!(peer = %peer.short(), reason, "dropping misbehaving peer");
                self.mesh.handle_misbehaviour(t, peer, reason);
            }
            Event::Publish { number } => self.mesh.handle_publish(t, number),
            Event::End { last } => self.mesh.handle_end(t, last),
        }
    }

    /// A seed `peer` did not acknowledge, or could not be sent: counted, and the mesh
    /// seeds it elsewhere.
    fn push_unconfirmed(&mut self, t: Instant, peer: NodeId, number: u64, part: u8) {
        add(&self.shared.counters.seeds_unconfirmed, 1);
        self.mesh.handle_push_unconfirmed(t, peer, number, part);
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.mesh.poll_action() {
            match action {
                Action::Send { peer, msg } => {
                    if let Some(c) = self.conns.get(&peer) {
                        if c.control.try_send(msg).is_err() {
                            // Its queue is full: it is not reading. Let it go.
                            c.conn
                                .close(quinn::VarInt::from_u32(1), b"control queue full");
                        }
                    }
                }
                Action::Request {
                    peer,
                    number,
                    part,
                    join,
                } => {
                    if let Some(c) = self.conns.get(&peer) {
                        let h = tokio::spawn(request(
                            self.shared.clone(),
                            c.conn.clone(),
                            peer,
                            (number, part),
                            join,
                        ));
                        self.transfers
                            .insert((peer, number, part), h.abort_handle());
                    }
                }
                Action::Cancel { peer, number, part } => {
                    if let Some(h) = self.transfers.remove(&(peer, number, part)) {
                        h.abort();
                    }
                }
                Action::Push { peer, number, part } => {
                    // Seeding is optional: skip it when the uplink is already queued up.
                    if self.shared.limiter.backlog() >= BUSY_BACKLOG {
                        continue;
                    }
                    match self.conns.get(&peer) {
                        Some(c) => {
                            tokio::spawn(push(
                                self.shared.clone(),
                                c.conn.clone(),
                                peer,
                                number,
                                part,
                            ));
                        }
                        // Gone already: the part goes to someone else.
                        None => self.push_unconfirmed(now(), peer, number, part),
                    }
                }
                Action::Dial { peer, addr } => {
                    let addrs = match addr {
                        Some(a) => vec![a],
                        None => self.shared.origin_addrs.clone(),
                    };
                    tokio::spawn(dial(self.shared.clone(), peer, addrs));
                }
                Action::Disconnect { peer, reason } => {
                    if let Some(c) = self.conns.remove(&peer) {
                        if reason == "partner set full" {
                            // Let the peer sample queued just before reach it first.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                c.conn.close(quinn::VarInt::from_u32(2), reason.as_bytes());
                            });
                        } else {
                            c.conn.close(quinn::VarInt::from_u32(2), reason.as_bytes());
                        }
                    }
                }
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        if shared.connections.load(Ordering::Relaxed) >= shared.max_connections {
            incoming.refuse();
            continue;
        }
        let Some(handshake) = Handshake::start(&shared, incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                _ => return,
            };
            let Some(peer) = tls::peer_key(&conn).map(NodeId) else {
                return;
            };
            let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
                let (mut send, mut recv) = conn.accept_bi().await.ok()?;
                let theirs = read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME)
                    .await
                    .ok()??;
                let checked = check_hello(&shared, &conn, peer, &theirs)?;
                send.write_all(&wire::encode(&our_hello(&shared)))
                    .await
                    .ok()?;
                Some((send, recv, checked))
            })
            .await;
            // Established (or failed): no longer a half-open attempt.
            drop(handshake);
            if let Ok(Some((send, recv, checked))) = hello {
                run_connection(shared, conn, peer, send, recv, checked, false).await;
            } else {
                conn.close(quinn::VarInt::from_u32(3), b"hello failed");
            }
        });
    }
}

/// One connection in its handshake or Hello, counted against the caps until dropped.
struct Handshake {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Handshake {
    /// Counts a new attempt from `ip`; `None` if that would pass a cap.
    fn start(shared: &Arc<Shared>, ip: IpAddr) -> Option<Handshake> {
        let mut map = shared.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = map.values().sum();
        let from_ip = map.get(&ip).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || from_ip >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        map.insert(ip, from_ip + 1);
        Some(Handshake {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn our_hello(shared: &Shared) -> Control {
    Control::Hello(Box::new(wire::Hello {
        version: wire::PROTOCOL_VERSION,
        stream: shared.stream,
        role: shared.role,
        uploads: shared.uploads,
        upload_bps: shared.limiter.rate().map(|r| r.0),
        token: shared.admission.token(),
        token_epoch: *shared.token_epoch.borrow(),
    }))
}

/// What a peer's accepted Hello told us.
struct PeerHello {
    role: Role,
    uploads: bool,
    /// The upload cap it declared (bits/s).
    upload_bps: Option<u64>,
    /// Its join token (private streams; the broadcaster shows none).
    token: Option<JoinToken>,
}

/// Checks the peer's Hello; closes the connection with the reason if it is wrong.
///
/// Runs before [`run_connection`], so a peer refused here never sees a Have or a byte of
/// media: a private stream's node demands a valid token from every peer but the
/// broadcaster, whose key the TLS handshake has already proven.
fn check_hello(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    msg: &Control,
) -> Option<PeerHello> {
    match msg {
        Control::Hello(hello) => {
            let wire::Hello {
                version,
                stream,
                role,
                uploads,
                upload_bps,
                token,
                token_epoch,
            } = &**hello;
            if *version != wire::PROTOCOL_VERSION {
                let reason = format!(
                    "unsupported protocol version {version} (this node speaks {})",
                    wire::PROTOCOL_VERSION
                );
                conn.close(quinn::VarInt::from_u32(4), reason.as_bytes());
                return None;
            }
            if *stream != shared.stream {
                conn.close(quinn::VarInt::from_u32(5), b"different stream");
                return None;
            }
            if peer == shared.stream {
                raise_epoch(shared, *token_epoch);
            } else if shared.admission.is_private() {
                let min_epoch = *shared.token_epoch.borrow();
                let checked = token
                    .ok_or(TokenError::Missing)
                    .and_then(|t| t.verify(&shared.stream, min_epoch, unix_now_s()));
                if let Err(e) = checked {
                    tracing::debug!(peer = %peer.short(), error = %e, "refusing a peer's token");
                    let code = quinn::VarInt::from_u32(token_close_code(&e));
                    conn.close(code, e.to_string().as_bytes());
                    return None;
                }
                if let Some(t) = token {
                    // Only the stream key signs tokens: a newer epoch means a rotation.
                    raise_epoch(shared, t.epoch);
                }
            }
            Some(PeerHello {
                role: *role,
                uploads: *uploads,
                upload_bps: *upload_bps,
                token: if shared.admission.is_private() {
                    *token
                } else {
                    None
                },
            })
        }
        _ => None,
    }
}

/// Close codes for a refused token, one per reason so the refused side can say which.
fn token_close_code(e: &TokenError) -> u32 {
    match e {
        TokenError::Missing => 6,
        TokenError::Expired => 8,
        TokenError::Revoked => 9,
        TokenError::WrongStream => 10,
        TokenError::Malformed(_) | TokenError::BadSignature | TokenError::BadLifetime(_) => 7,
    }
}

/// The refusal a close code stands for (the inverse of [`token_close_code`]).
fn token_refusal(code: u64) -> Option<TokenError> {
    match code {
        6 => Some(TokenError::Missing),
        7 => Some(TokenError::BadSignature),
        8 => Some(TokenError::Expired),
        9 => Some(TokenError::Revoked),
        10 => Some(TokenError::WrongStream),
        _ => None,
    }
}

fn raise_epoch(shared: &Shared, epoch: u32) {
    shared.token_epoch.send_if_modified(|e| {
        let raised = epoch > *e;
        *e = (*e).max(epoch);
        raised
    });
}

/// Seconds since the Unix epoch by the wall clock (token expiry is wall-clock time).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Closes the connection when the peer's token expires or is revoked by a newer epoch.
async fn expire_token(shared: &Shared, conn: &Connection, token: JoinToken) {
    let left = Duration::from_secs(token.expires_unix_s.saturating_sub(unix_now_s()));
    let mut epoch = shared.token_epoch.subscribe();
    let e = tokio::select! {
        _ = tokio::time::sleep(left.min(MAX_EXPIRY_WAIT)) => TokenError::Expired,
        Ok(_) = epoch.wait_for(|e| *e > token.epoch) => TokenError::Revoked,
        else => return,
    };
    conn.close(
        quinn::VarInt::from_u32(token_close_code(&e)),
        e.to_string().as_bytes(),
    );
}

async fn dial(shared: Arc<Shared>, peer: NodeId, addrs: Vec<SocketAddr>) {
    // Try every address at once; the first to complete a handshake wins.
    let mut attempts = tokio::task::JoinSet::new();
    for addr in addrs.into_iter().take(crate::stream::MAX_TICKET_ADDRS) {
        let shared = shared.clone();
        attempts.spawn(async move { connect(&shared, peer, addr).await });
    }
    while let Some(res) = attempts.join_next().await {
        if let Ok(Some((conn, send, recv, checked))) = res {
            attempts.abort_all();
            run_connection(shared, conn, peer, send, recv, checked, true).await;
            return;
        }
    }
    let _ = shared.events.send(Event::DialFailed { peer }).await;
}

async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
) -> Option<(Connection, SendStream, RecvStream, PeerHello)> {
    let config = tls::client_config(&shared.key, peer.0).ok()?;
    let connecting = shared
        .endpoint
        .connect_with(config, addr, tls::SERVER_NAME)
        .ok()?;
    tokio::time::timeout(HELLO_TIMEOUT * 2, async {
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%addr, peer = %peer.short(), error = %e, "dial failed");
                // Our own TLS check failed: whoever answers there is not the key we pinned.
                if let quinn::ConnectionError::TransportError(te) = &e {
                    let code = u64::from(te.code);
                    if peer == shared.stream && (0x100..0x200).contains(&code) {
                        *shared
                            .origin_wrong_key
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(addr);
                    }
                }
                return None;
            }
        };
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&wire::encode(&our_hello(shared)))
            .await
            .ok()?;
        let theirs = match read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await {
            Ok(Some(m)) => m,
            _ => {
                if let Some(reason) = conn.close_reason() {
                    tracing::warn!(%addr, peer = %peer.short(), %reason, "peer refused us");
                    if let quinn::ConnectionError::ApplicationClosed(close) = &reason {
                        let refusal = token_refusal(close.error_code.into_inner());
                        if peer == shared.stream && refusal.is_some() {
                            *shared
                                .origin_refused
                                .lock()
                                .unwrap_or_else(|e| e.into_inner()) = refusal;
                        }
                    }
                }
                return None;
            }
        };
        let checked = check_hello(shared, &conn, peer, &theirs)?;
        Some((conn, send, recv, checked))
    })
    .await
    .ok()
    .flatten()
}

/// Runs one established connection until it closes.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    hello: PeerHello,
    dialed_by_me: bool,
) {
    let PeerHello {
        role,
        uploads,
        upload_bps,
        token,
    } = hello;
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    if shared
        .events
        .send(Event::Connected {
            peer,
            conn: conn.clone(),
            control: control_tx,
            role,
            uploads,
            upload_bps,
            dialed_by_me,
        })
        .await
        .is_err()
    {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    // Control writer.
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = control_rx.recv().await {
            let frame = wire::encode(&msg);
            add(&writer_shared.counters.control_bytes, frame.len() as u64);
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    // Control reader.
    let reader_shared = shared.clone();
    let reader_conn = conn.clone();
    let reader = tokio::spawn(async move {
        loop {
            match read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await {
                Ok(Some(msg)) => {
                    if msg.validate().is_err() {
                        let _ = reader_shared
                            .events
                            .send(Event::Misbehaved {
                                peer,
                                reason: "control message over limits",
                            })
                            .await;
                        break;
                    }
                    if reader_shared
                        .events
                        .send(Event::Control { peer, msg })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(TransferError::Wire(_)) => {
                    let _ = reader_shared
                        .events
                        .send(Event::Misbehaved {
                            peer,
                            reason: "malformed control frame",
                        })
                        .await;
                    break;
                }
                Err(_) => break,
            }
        }
        reader_conn.close(quinn::VarInt::from_u32(0), b"control stream ended");
    });
    // Incoming requests (bidirectional streams) and pushes (unidirectional).
    let serves = Arc::new(tokio::sync::Semaphore::new(SERVES_PER_CONNECTION));
    let pushes = Arc::new(tokio::sync::Semaphore::new(PUSHES_PER_CONNECTION));
    let bi = {
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                match serves.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let mut send = send;
                            let served = tokio::time::timeout(
                                UPLOAD_TIMEOUT,
                                serve(&shared, peer, &mut send, recv),
                            )
                            .await;
                            if served.is_err() {
                                // Abandoned mid-segment: reset, so the requester sees a failed
                                // transfer rather than a stream finished mid-frame (a violation).
                                let _ = send.reset(quinn::VarInt::from_u32(1));
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // Over its cap of concurrent requests: a flooder is told Busy, cheaply.
                        let mut send = send;
                        add(&shared.counters.busy_replies, 1);
                        let busy = wire::encode(&Reply::Busy);
                        let write = send.write_all(&busy);
                        if tokio::time::timeout(BUSY_WRITE_TIMEOUT, write)
                            .await
                            .is_ok()
                        {
                            let _ = send.finish();
                        } else {
                            let _ = send.reset(quinn::VarInt::from_u32(1));
                        }
                    }
                }
            }
        })
    };
    let uni = {
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let Ok(permit) = pushes.clone().try_acquire_owned() else {
                    let mut recv = recv;
                    let _ = recv.stop(quinn::VarInt::from_u32(0));
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let res = tokio::time::timeout(
                        UPLOAD_TIMEOUT,
                        receive_part(&shared, recv, peer, None),
                    )
                    .await
                    .unwrap_or(Err(TransferError::Timeout));
                    report_transfer(&shared, peer, None, res).await;
                    drop(permit);
                });
            }
        })
    };
    match token {
        Some(token) => {
            tokio::select! {
                _ = conn.closed() => {}
                _ = expire_token(&shared, &conn, token) => { conn.closed().await; }
            }
        }
        None => {
            conn.closed().await;
        }
    }
    writer.abort();
    reader.abort();
    bi.abort();
    uni.abort();
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    let _ = shared
        .events
        .send(Event::Disconnected {
            peer,
            conn_id: conn.stable_id(),
        })
        .await;
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it.
async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, TransferError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(TransferError::Wire(WireError::Truncated))
        }
        Err(e) => return Err(TransferError::Io(e.to_string())),
    }
    let len = wire::frame_len(prefix, max)?;
    let mut body = vec![0u8; len];
    read_within(recv, &mut body, FRAME_TIMEOUT).await?;
    Ok(Some(wire::decode_body(&body)?))
}

/// Fills `buf`, or fails if the sender finishes first or lets `limit` pass: a frame once
/// begun comes at once from an honest sender, so a trickle is a slowloris.
async fn read_within(
    recv: &mut RecvStream,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), TransferError> {
    match tokio::time::timeout(limit, recv.read_exact(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            Err(TransferError::Wire(WireError::Truncated))
        }
        Ok(Err(e)) => Err(TransferError::Io(e.to_string())),
        Err(_) => Err(TransferError::Timeout),
    }
}

/// Reads a reply and, if it is a segment, verifies and stores it.
/// What one part transfer brought.
struct PartDone {
    number: u64,
    part: u8,
    len: u64,
    /// The part completed the segment, of this duration; it is in the store.
    completed: Option<Duration>,
}

/// Receives one part (a reply to our request for `expected`, or a push), verifying the
/// header's signature if one comes and every piece's digest as it lands, into the
/// segment's partial; assembles and stores the segment when this part completes it.
async fn receive_part(
    shared: &Shared,
    mut recv: RecvStream,
    from: NodeId,
    expected: Option<(u64, u8)>,
) -> Result<PartDone, TransferError> {
    let reply = read_frame::<Reply>(&mut recv, wire::MAX_REPLY_FRAME)
        .await?
        .ok_or(TransferError::Wire(WireError::Truncated))?;
    let (number, part, header) = match reply {
        Reply::Busy => return Err(TransferError::Busy),
        Reply::Unavailable => return Err(TransferError::Unavailable),
        Reply::Part {
            number,
            part,
            header,
        } => (number, part, header),
    };
    let j = usize::from(part);
    if j >= PARTS {
        return Err(TransferError::Forged("part out of range"));
    }
    if let Some(h) = &header {
        h.verify(&shared.stream)
            .map_err(|_| TransferError::Forged("bad header signature"))?;
        if h.header.number != number {
            return Err(TransferError::Forged("header is for another segment"));
        }
        note_bitrate(shared, h);
    }
    if expected.is_some_and(|e| e != (number, part)) {
        return Err(TransferError::Forged("segment is not the one requested"));
    }
    let unwanted = {
        let s = store::lock(&shared.store);
        s.contains(number)
            || s.newest()
                .is_some_and(|n| number.saturating_add(KEEP_BEHIND) < n)
    };
    let mut created = false;
    let partial = if unwanted {
        None
    } else {
        let mut map = shared.partials.lock().unwrap_or_else(|e| e.into_inner());
        match (map.get(&number), header) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(h)) => {
                created = true;
                let p = Arc::new(Partial::new(h));
                map.insert(number, p.clone());
                // Bounded: the oldest unfinished segments are the first to go.
                while map.len() > MAX_PARTIALS {
                    let Some(oldest) = map.keys().min().copied() else {
                        break;
                    };
                    map.remove(&oldest);
                }
                Some(p)
            }
            // A push always carries the header; a reply lacks it only when we said we had
            // one, and ours is gone since (completed or dropped).
            (None, None) if expected.is_none() => {
                return Err(TransferError::Forged("push without a header"))
            }
            (None, None) => return Err(TransferError::Lost),
        }
    };
    let pieces = partial.as_ref().map_or(0, |p| p.header.header.pieces.len());
    let empty = part_pieces(pieces, j).is_none_or(|r| r.is_empty());
    let partial = match partial {
        // An empty part (a segment with fewer pieces than parts) is complete with its
        // header: it is answered, not refused, so the mesh counts it as held.
        Some(p) if empty || !part_complete(&p.lock().pieces, j) => p,
        _ => {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return Err(TransferError::Unwanted);
        }
    };
    if expected.is_none() && from == shared.stream {
        lock_seeded(shared).note(number, part);
    }
    if created {
        // The other empty parts are held as of now too: the mesh need not ask for them.
        for k in (0..PARTS).filter(|k| *k != j) {
            if part_pieces(pieces, k).is_some_and(|r| r.is_empty()) {
                let _ = shared
                    .events
                    .send(Event::Part {
                        from,
                        number,
                        part: k as u8,
                        len: 0,
                        completed: None,
                    })
                    .await;
            }
        }
    }
    let _arriving = Arriving::start(partial.clone(), j);
    // Also for a second copy: its first frame is the supplier's answer, so the mesh does
    // not count the request as stalled (it announces a part only once).
    let _ = shared
        .events
        .send(Event::Receiving { from, number, part })
        .await;
    let h = &partial.header.header;
    let range = part_pieces(h.pieces.len(), j).ok_or(TransferError::Forged("pieces"))?;
    let mut len = 0u64;
    for i in range {
        let bytes = piece_range(h.len, h.piece_size, i).ok_or(TransferError::Forged("pieces"))?;
        let mut piece = BytesMut::zeroed(bytes.len());
        read_within(&mut recv, &mut piece, PIECE_SILENCE).await?;
        partial
            .header
            .check_piece(i, &piece)
            .map_err(|_| TransferError::Forged("piece digest mismatch"))?;
        len += piece.len() as u64;
        if let Some(slot) = partial.lock().pieces.get_mut(i) {
            slot.get_or_insert(piece.freeze());
        }
        partial.bump();
    }
    let counter = if from == shared.stream {
        &shared.counters.bytes_from_origin
    } else {
        &shared.counters.bytes_from_peers
    };
    add(counter, len);
    let completed = assemble(shared, number, &partial)?;
    Ok(PartDone {
        number,
        part,
        len,
        completed,
    })
}

/// Stores the segment if every piece of `partial` is here: the whole is checked against
/// the signed digest too. Returns its duration when this call stored it.
fn assemble(
    shared: &Shared,
    number: u64,
    partial: &Arc<Partial>,
) -> Result<Option<Duration>, TransferError> {
    let data = {
        let st = partial.lock();
        if st.pieces.iter().any(Option::is_none) {
            return Ok(None);
        }
        let mut data = BytesMut::with_capacity(partial.header.header.len as usize);
        for p in st.pieces.iter().flatten() {
            data.extend_from_slice(p);
        }
        data.freeze()
    };
    {
        let mut map = shared.partials.lock().unwrap_or_else(|e| e.into_inner());
        // Another transfer completing at the same moment stores it; only one does.
        match map.get(&number) {
            Some(p) if Arc::ptr_eq(p, partial) => {
                map.remove(&number);
            }
            _ => return Ok(None),
        }
    }
    let seg = VerifiedSegment::verify(&shared.stream, partial.header.clone(), data)
        .map_err(|_| TransferError::Forged("segment digest mismatch"))?;
    let duration = Duration::from_millis(seg.header.header.duration_ms as u64);
    if store::lock(&shared.store).insert(seg) {
        add(&shared.counters.segments_verified, 1);
    }
    Ok(Some(duration))
}

async fn report_transfer(
    shared: &Shared,
    peer: NodeId,
    requested: Option<(u64, u8)>,
    res: Result<PartDone, TransferError>,
) {
    let ev = match res {
        Ok(done) => Event::Part {
            from: peer,
            number: done.number,
            part: done.part,
            len: done.len,
            completed: done.completed,
        },
        Err(TransferError::Forged(reason)) => {
            add(&shared.counters.rejected_segments, 1);
            Event::Misbehaved { peer, reason }
        }
        // Honest senders reset an abandoned transfer; finishing it mid-frame is deliberate.
        Err(TransferError::Wire(
            WireError::Oversize { .. } | WireError::Malformed | WireError::Truncated,
        )) => Event::Misbehaved {
            peer,
            reason: "malformed or truncated transfer frame",
        },
        Err(e) => match requested {
            Some((number, part)) => Event::TransferFailed {
                peer,
                number,
                part,
                busy: matches!(e, TransferError::Busy),
            },
            None => return,
        },
    };
    let _ = shared.events.send(ev).await;
}

async fn request(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    (number, part): (u64, u8),
    join: bool,
) {
    let res = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| TransferError::Io(e.to_string()))?;
        // Ask for the signed header only if no transfer of this segment brought it yet.
        let header = !shared
            .partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&number);
        let frame = wire::encode(&Request {
            number,
            part,
            header,
            join,
        });
        add(&shared.counters.control_bytes, frame.len() as u64);
        send.write_all(&frame)
            .await
            .map_err(|e| TransferError::Io(e.to_string()))?;
        let _ = send.finish();
        receive_part(&shared, recv, peer, Some((number, part))).await
    }
    .await;
    report_transfer(&shared, peer, Some((number, part)), res).await;
}

/// Answers one request stream from `peer`.
async fn serve(shared: &Shared, peer: NodeId, send: &mut SendStream, mut recv: RecvStream) {
    let req = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<Request>(&mut recv, wire::MAX_REQUEST_FRAME),
    )
    .await
    {
        Ok(Ok(Some(r))) if r.validate().is_ok() => r,
        Ok(Err(TransferError::Io(_))) => {
            // Never leave the reply finished empty: that reads as a truncated reply.
            let _ = send.reset(quinn::VarInt::from_u32(1));
            return;
        }
        // An honest requester writes its whole request at once, right after opening the
        // stream: a stream left empty (slowloris), cut short, oversize or out of range is
        // deliberate.
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            let _ = shared
                .events
                .send(Event::Misbehaved {
                    peer,
                    reason: "bad or stalled request",
                })
                .await;
            return;
        }
    };
    let seg = if shared.uploads {
        store::lock(&shared.store).get(req.number).cloned()
    } else {
        None
    };
    let part = usize::from(req.part);
    let partial = match (&seg, shared.uploads) {
        (None, true) => shared
            .partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.number)
            .cloned()
            // Only a part that is here or on its way: anything else would wait on nothing.
            .filter(|p| p.servable(part)),
        _ => None,
    };
    if seg.is_none() && partial.is_none() {
        let _ = send.write_all(&wire::encode(&Reply::Unavailable)).await;
        let _ = send.finish();
        return;
    }
    let seeded = lock_seeded(shared).contains(req.number, req.part);
    let slot = UploadSlot::take(shared, req.join, seeded);
    if slot.is_none() || shared.limiter.backlog() > BUSY_BACKLOG {
        add(&shared.counters.busy_replies, 1);
        let _ = send.write_all(&wire::encode(&Reply::Busy)).await;
        let _ = send.finish();
        return;
    }
    let sent = match (seg, partial) {
        (Some(seg), _) => send_part(shared, send, &seg, req, UploadClass::Serve).await,
        (None, Some(partial)) => relay_part(shared, send, &partial, req).await,
        (None, None) => Ok(()),
    };
    end_upload(shared, peer, send, sent).await;
}

/// Why an upload stopped early.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// The receiver stopped the stream or the connection closed.
    #[error("stream closed")]
    Closed,
    /// The receiver's flow-control window stayed shut for [`STALL_TIMEOUT`].
    #[error("receiver stopped reading")]
    Stalled,
    /// The segment being relayed failed upstream.
    #[error("upstream transfer failed")]
    Upstream,
}

/// Writes `bytes`, giving up if the receiver withholds credit for [`STALL_TIMEOUT`].
async fn write_within(send: &mut SendStream, bytes: &[u8]) -> Result<(), UploadError> {
    match tokio::time::timeout(STALL_TIMEOUT, send.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(UploadError::Closed),
        Err(_) => Err(UploadError::Stalled),
    }
}

/// Closes an upload's stream after `sent`: an unfinished one is reset (never finished
/// mid-frame, which the receiver treats as a violation), and a receiver that stalled it
/// is reported.
async fn end_upload(
    shared: &Shared,
    peer: NodeId,
    send: &mut SendStream,
    sent: Result<(), UploadError>,
) {
    match sent {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            if matches!(e, UploadError::Stalled) {
                let _ = shared
                    .events
                    .send(Event::Misbehaved {
                        peer,
                        reason: "stopped reading an upload",
                    })
                    .await;
            }
        }
    }
}

/// The parts seeded here; a poisoned lock still yields them (each update is one push).
fn lock_seeded(shared: &Shared) -> std::sync::MutexGuard<'_, SeededParts> {
    shared.seeded.lock().unwrap_or_else(|e| e.into_inner())
}

/// One upload in progress; released on drop.
struct UploadSlot<'a>(&'a Shared);

impl<'a> UploadSlot<'a> {
    /// A slot if fewer uploads run than [`serving_slots`] allows; otherwise better to say
    /// Busy and let the requester ask someone else.
    fn take(shared: &'a Shared, join: bool, seeded: bool) -> Option<UploadSlot<'a>> {
        let bps = shared.stream_bps.load(Ordering::Relaxed);
        let slots = serving_slots(shared.limiter.rate().map(|r| r.0), bps, join, seeded);
        let slots = usize::try_from(slots).unwrap_or(usize::MAX);
        let prev = shared.uploads_active.fetch_add(1, Ordering::AcqRel);
        if prev >= slots {
            shared.uploads_active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(UploadSlot(shared))
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.0.uploads_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a relay waits for the next piece of its part to land here.
const RELAY_WAIT: Duration = Duration::from_secs(5);

/// The first frame of a part transfer, with the signed header when it is wanted.
fn part_reply(shared: &Shared, header: &SignedHeader, req: Request) -> Bytes {
    let frame = wire::encode(&Reply::Part {
        number: req.number,
        part: req.part,
        header: req.header.then(|| header.clone()),
    });
    add(&shared.counters.control_bytes, frame.len() as u64);
    frame
}

/// Streams a part of a segment that is still arriving: each piece goes out once it is
/// verified here. The caller finishes (or resets) the stream; see [`end_upload`].
async fn relay_part(
    shared: &Shared,
    send: &mut SendStream,
    partial: &Partial,
    req: Request,
) -> Result<(), UploadError> {
    write_within(send, &part_reply(shared, &partial.header, req)).await?;
    let part = usize::from(req.part);
    let mut progress = partial.progress.subscribe();
    let range = part_pieces(partial.header.header.pieces.len(), part).unwrap_or(0..0);
    for i in range {
        let piece = loop {
            {
                let st = partial.lock();
                if let Some(p) = st.pieces.get(i).cloned().flatten() {
                    break p;
                }
                // Nothing brings this part here any more: stop, the requester asks elsewhere.
                if st.arriving.get(part).is_none_or(|a| *a == 0) {
                    return Err(UploadError::Upstream);
                }
            }
            match tokio::time::timeout(RELAY_WAIT, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(UploadError::Upstream),
            }
        };
        shared
            .limiter
            .acquire_as(UploadClass::Serve, piece.len() as u64)
            .await;
        write_within(send, &piece).await?;
        add(&shared.counters.bytes_uploaded, piece.len() as u64);
    }
    Ok(())
}

/// Sends part `req.part` of a held segment. The caller finishes (or resets) the stream;
/// see [`end_upload`].
async fn send_part(
    shared: &Shared,
    send: &mut SendStream,
    seg: &VerifiedSegment,
    req: Request,
    class: UploadClass,
) -> Result<(), UploadError> {
    write_within(send, &part_reply(shared, &seg.header, req)).await?;
    let h = &seg.header.header;
    let range = part_pieces(h.pieces.len(), usize::from(req.part)).unwrap_or(0..0);
    for i in range {
        let Some(range) = piece_range(h.len, h.piece_size, i) else {
            break;
        };
        let piece = seg.data.slice(range);
        shared.limiter.acquire_as(class, piece.len() as u64).await;
        write_within(send, &piece).await?;
        add(&shared.counters.bytes_uploaded, piece.len() as u64);
    }
    Ok(())
}

async fn push(shared: Arc<Shared>, conn: Connection, peer: NodeId, number: u64, part: u8) {
    let seg = store::lock(&shared.store).get(number).cloned();
    let Some(seg) = seg else { return };
    if !seed(&shared, &conn, peer, &seg, part).await {
        let _ = shared
            .events
            .send(Event::PushUnconfirmed { peer, number, part })
            .await;
    }
}

/// Pushes one part of `seg` to `peer`; true if `peer` answered within
/// [`seed_confirm_wait`] of the last byte written: it acknowledged every byte, or
/// stopped the stream (it had the part already). A vanished receiver does neither.
async fn seed(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    seg: &VerifiedSegment,
    part: u8,
) -> bool {
    let Ok(mut send) = conn.open_uni().await else {
        return false;
    };
    let seeding = shared.limiter.seeding();
    let req = Request {
        number: seg.header.header.number,
        part,
        header: true,
        join: false,
    };
    let sent = tokio::time::timeout(
        UPLOAD_TIMEOUT,
        send_part(shared, &mut send, seg, req, UploadClass::Seed),
    )
    .await
    .unwrap_or(Err(UploadError::Closed));
    end_upload(shared, peer, &mut send, sent).await;
    drop(seeding);
    // `stopped` yields once the stream is stopped by the receiver or its every byte (or
    // its reset) is acknowledged, and fails if the connection is lost.
    let wait = seed_confirm_wait(conn.rtt());
    matches!(tokio::time::timeout(wait, send.stopped()).await, Ok(Ok(_)))
}

/// How long after its last byte is written a seeding push may go unacknowledged: four
/// round trips, and at least [`SEED_CONFIRM_MIN`]. The simulator waits the same.
pub fn seed_confirm_wait(rtt: Duration) -> Duration {
    (rtt * 4).max(SEED_CONFIRM_MIN)
}

/// The least [`seed_confirm_wait`]: above an ack delay and scheduling noise, and well
/// inside half a playout budget, when viewers would ask the origin themselves.
pub const SEED_CONFIRM_MIN: Duration = Duration::from_millis(250);

/// Folds a signed header's length/duration into the node's smoothed stream bitrate.
fn note_bitrate(shared: &Shared, header: &SignedHeader) {
    let h = &header.header;
    if h.duration_ms > 0 {
        let bps = h.len as u64 * 8000 / h.duration_ms as u64;
        let old = shared.stream_bps.load(Ordering::Relaxed);
        let smoothed = if old == 0 { bps } else { (old * 7 + bps) / 8 };
        shared.stream_bps.store(smoothed, Ordering::Relaxed);
    }
}
