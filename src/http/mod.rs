//! The local HTTP server: `/live.m3u8`, `/seg/<n>.ts`, `/stats`, `/metrics`, for players on
//! this machine and for monitoring, and `/` with `/hls.min.js`, `/ll.m3u8` and
//! `/part/<n>.<i>.ts` (LL-HLS, [`crate::llhls`]) for a browser.
//!
//! A few requests wait for bytes not verified yet, bounded in time and number
//! ([`MAX_WAITING`]): blocking playlist reloads, hinted parts, and a segment still arriving,
//! whose body streams its verified bytes as they come (cut-through).
//!
//! A thin hyper 1 driver around a pure request → response mapping: the node decides what exists
//! (through [`Catalog`]); this module only maps requests to it, with bounded connections and
//! timeouts. Who may ask (the `Host` check against DNS rebinding, and the origins granted
//! cross-origin reads) is in `access`; how slow clients are kept from holding the server is in
//! `guard`.

mod access;
mod guard;

pub use access::{host_allowed, AllowedOrigin, CrossOrigin, OriginError};
pub use guard::WRITE_STALL_TIMEOUT;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use crate::llhls::{self, Awaited};

use guard::{Activity, Watched};

/// What the HTTP server serves; implemented by the viewer's and broadcaster's nodes.
pub trait Catalog: Send + Sync + 'static {
    /// The page at `/` (the viewer's [`VIEWER_INDEX_HTML`], the broadcaster's dashboard).
    fn index_html(&self) -> &'static str;
    /// The current live playlist, or `None` (404) when nothing is playable.
    fn playlist(&self) -> Option<String>;
    /// The bytes of segment `number`, or `None` (404).
    fn segment(&self, number: u64) -> Option<Bytes>;
    /// The `/stats` body (a JSON object).
    fn stats_json(&self) -> String;
    /// The `/metrics` body in the Prometheus text format ([`crate::metrics::CONTENT_TYPE`]),
    /// or `None` (500) if it could not be written.
    fn metrics_text(&self) -> Option<String>;
    /// The `/history` body (JSON, for the broadcaster's dashboard), or `None` (404).
    fn history_json(&self) -> Option<String>;
    /// What `/ll.m3u8` lists (LL-HLS), or `None` (404): the viewer's; others have none.
    fn ll_playlist(&self) -> Option<llhls::View> {
        None
    }
    /// The verified bytes of part `index` of segment `number` (`/part/<n>.<i>.ts`), or `None`.
    fn part(&self, _number: u64, _index: usize) -> Option<Bytes> {
        None
    }
    /// Segment `number` while it is still arriving (not yet whole): what is verified of it,
    /// which `/seg/<n>.ts` streams to a player as it grows (cut-through).
    fn arriving(&self, _number: u64) -> Option<ArrivingSegment> {
        None
    }
    /// Changes whenever more is verified; what waiting requests (blocking reloads, hinted
    /// parts, cut-through) wake on. `None`: nothing here waits.
    fn arrivals(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// A segment still arriving, as [`Catalog::arriving`] shows it.
#[derive(Debug, Clone)]
pub struct ArrivingSegment {
    /// Its length in bytes, as signed.
    pub len: usize,
    /// Its duration, as signed.
    pub duration: Duration,
    /// Its verified bytes from the first on, in pieces.
    pub prefix: Vec<Bytes>,
}

/// Most requests waiting at once (blocking reloads, hinted parts, cut-through bodies); one
/// more is answered at once (a playlist as it is, a part or segment with 503).
pub const MAX_WAITING: usize = 64;

/// How often a waiting request looks again even if nothing was verified: a segment given up
/// or the end of the stream does not wake it.
const RECHECK: Duration = Duration::from_millis(250);

/// Bounds on how long a cut-through response waits for the next verified bytes before it
/// ends (cleanly, with what it sent): [`llhls::BLOCK_TARGETS`] segment durations, within these.
const CUT_THROUGH_SILENCE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// A response body: whole, or streamed as a segment's verified bytes arrive.
pub type Body = Either<Full<Bytes>, Growing>;

/// A body fed by a task as a segment's verified bytes arrive; it ends when the task drops
/// its sender (the segment is whole, or its bytes stopped coming).
#[derive(Debug)]
pub struct Growing {
    chunks: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Growing {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// Most connections served at once. A new connection beyond it is still accepted: the
/// connection whose socket moved a byte least recently is closed to make room (see `guard`).
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, which also ends idle keep-alives
/// (the idle timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight connections get to finish once shutdown is asked; then they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Largest request head accepted (players send a few hundred bytes); larger gets 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Per-connection read buffer cap (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 32 * 1024;

/// Consecutive failed `accept` calls (with back-off) after which the listener is deemed broken.
const MAX_ACCEPT_FAILURES: u32 = 50;

/// How a server treats its clients beyond what it serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The web origins granted cross-origin reads.
    pub cross_origin: CrossOrigin,
    /// How long a response may go without writing a byte before its connection is closed.
    pub write_stall_timeout: Duration,
}

impl Default for ServeConfig {
    /// No cross-origin grant; [`WRITE_STALL_TIMEOUT`].
    fn default() -> Self {
        Self {
            cross_origin: CrossOrigin::none(),
            write_stall_timeout: WRITE_STALL_TIMEOUT,
        }
    }
}

impl ServeConfig {
    /// The defaults, granting `cross_origin`.
    pub fn granting(cross_origin: CrossOrigin) -> Self {
        Self {
            cross_origin,
            ..Self::default()
        }
    }
}

/// A running server started by [`Server::start`]; [`Server::stop`] ends it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Server {
    /// Binds `addr` and serves `catalog` there in a task.
    pub async fn start(
        addr: SocketAddr,
        catalog: Arc<dyn Catalog>,
        config: ServeConfig,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, catalog, config, async move {
            let _ = stopped.await;
        }));
        Ok(Server { addr, stop, task })
    }

    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish briefly, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Serves the catalog on `listener` until `shutdown` completes.
///
/// HTTP/1.1 with keep-alive. Routes: `/` (an HTML page), `/hls.min.js` (the page's player),
/// `/live.m3u8`, `/ll.m3u8`, `/seg/<n>.ts`, `/part/<n>.<i>.ts`, `/stats`, `/metrics`, `/history`; `GET` and `HEAD`, `OPTIONS`
/// for CORS preflights, 405 for other methods, 404 for other paths. A request whose `Host` is
/// not this server ([`host_allowed`]) gets 421, one without a `Host` 400. Only an `Origin`
/// that `config.cross_origin` grants gets `Access-Control-Allow-Origin` (its own value).
///
/// At most [`MAX_CONNECTIONS`] are open: one more evicts the least recently active. A response
/// that cannot write for `config.write_stall_timeout` and a connection idle for
/// [`HEADER_READ_TIMEOUT`] are closed. Each connection holds one response at a time (pipelined
/// requests wait unread in a read buffer of at most 32 KiB), and a response body is the
/// store's own bytes, not a copy.
///
/// On shutdown it stops accepting, lets open connections finish their current response for up
/// to [`SHUTDOWN_GRACE`], then drops the rest, and returns once every connection task is gone.
///
/// # Errors
///
/// Only when `accept` keeps failing: per-connection errors are skipped at once, resource
/// errors (e.g. out of file descriptors) are retried with back-off, and after
/// 50 failures in a row (about a minute) the listener is deemed broken and the last error
/// is returned.
pub async fn serve(
    listener: TcpListener,
    catalog: Arc<dyn Catalog>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let config = Arc::new(config);
    let epoch = crate::clock::now();
    let mut connections = JoinSet::new();
    // The open connections' activity, by task, to choose whom to evict when full.
    let mut open: BTreeMap<tokio::task::Id, (AbortHandle, Arc<Activity>)> = BTreeMap::new();
    let mut failures = 0u32;
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections, so `open` holds only those still open.
            Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(error) => {
                        if !error.is_cancelled() {
                            tracing::error!(%error, "HTTP connection task failed");
                        }
                        error.id()
                    }
                };
                open.remove(&id);
            }
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _peer)) => {
                        failures = 0;
                        // Responses are written whole; don't let Nagle hold back their tail.
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, "HTTP: could not set TCP_NODELAY");
                        }
                        let Ok(local) = stream.local_addr() else {
                            continue;
                        };
                        // Full: rather than leave the newcomer in the backlog behind clients
                        // that read nothing, close the one that has been quiet longest.
                        if open.len() >= MAX_CONNECTIONS {
                            let quiet = open.iter().map(|(id, (_, a))| (*id, a.last_progress_ms()));
                            if let Some((abort, _)) = guard::least_recent(quiet).and_then(|id| open.remove(&id)) {
                                tracing::debug!("HTTP: all connections open; closing the quietest");
                                abort.abort();
                            }
                        }
                        let activity = Arc::new(Activity::new(epoch));
                        let connection = serve_connection(
                            Watched::new(stream, activity.clone()),
                            local,
                            catalog.clone(),
                            config.clone(),
                            activity.clone(),
                            stop_rx.clone(),
                            waiting.clone(),
                        );
                        let abort = connections.spawn(connection);
                        open.insert(abort.id(), (abort, activity));
                    }
                    Err(error) if is_connection_error(&error) => {
                        tracing::debug!(%error, "HTTP accept: a connection failed early");
                    }
                    Err(error) => {
                        failures += 1;
                        if failures >= MAX_ACCEPT_FAILURES {
                            return Err(error);
                        }
                        tracing::warn!(%error, failures, "HTTP accept failed; backing off");
                        // 20 ms doubling up to 1.28 s: ~1 min of failures before giving up.
                        let back_off = Duration::from_millis(10u64 << failures.min(7));
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(back_off) => {}
                        }
                    }
                }
            }
        }
    }

    drop(listener);
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "HTTP shutdown grace over; dropping connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Errors that concern one incoming connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves one HTTP/1 connection over any byte stream until the client leaves or a timeout
/// hits; `local` is the address the client reached (for the `Host` check). Shutdown is the
/// caller's: drop the future.
///
/// [`serve`] runs this for each accepted socket; tests and the fuzz target drive it through an
/// in-memory pipe.
pub async fn serve_stream<S>(
    stream: S,
    local: SocketAddr,
    catalog: Arc<dyn Catalog>,
    config: ServeConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(crate::clock::now()));
    let (_stop_tx, stop_rx) = watch::channel(false);
    let stream = Watched::new(stream, activity.clone());
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    serve_connection(
        stream,
        local,
        catalog,
        Arc::new(config),
        activity,
        stop_rx,
        waiting,
    )
    .await;
}

/// Runs one HTTP/1 connection until the client leaves, a timeout hits, or `stop` turns true.
async fn serve_connection<S>(
    stream: Watched<S>,
    local: SocketAddr,
    catalog: Arc<dyn Catalog>,
    config: Arc<ServeConfig>,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    waiting: Arc<Semaphore>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stall_timeout = config.write_stall_timeout;
    let service = service_fn(move |request: Request<Incoming>| {
        let (catalog, config, waiting) = (catalog.clone(), config.clone(), waiting.clone());
        async move {
            let response = respond_waiting(catalog, &request, local, &config, waiting).await;
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_BUF_BYTES);
    let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = activity.write_stalled(stall_timeout) => {
            tracing::debug!("HTTP: the client read nothing for {stall_timeout:?}; closing");
            return;
        }
        // The guard `wait_for` returns is not `Send`: drop it inside the block. A dropped
        // sender means `serve` is gone, which is a stop as well.
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            // Finish the response in progress (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// `/`: a page for a person who opened the port in a browser.
    Index,
    /// `/live.m3u8`.
    Playlist,
    /// `/seg/<n>.ts`.
    Segment(u64),
    /// `/stats`.
    Stats,
    /// `/metrics`.
    Metrics,
    /// `/history`.
    History,
    /// `/hls.min.js`: the player the viewer's page loads.
    HlsJs,
    /// `/ll.m3u8`: the LL-HLS playlist.
    LlPlaylist,
    /// `/part/<n>.<i>.ts`: part `i` of segment `n`.
    Part(u64, usize),
}

/// Plain decimal digits only (`u64::from_str` would also take a leading `+`).
fn number<T: std::str::FromStr>(digits: &str) -> Option<T> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/" => Some(Self::Index),
            "/live.m3u8" => Some(Self::Playlist),
            "/stats" => Some(Self::Stats),
            "/metrics" => Some(Self::Metrics),
            "/history" => Some(Self::History),
            "/hls.min.js" => Some(Self::HlsJs),
            "/ll.m3u8" => Some(Self::LlPlaylist),
            _ => {
                if let Some(name) = path.strip_prefix("/part/") {
                    let (segment, index) = name.strip_suffix(".ts")?.split_once('.')?;
                    return Some(Self::Part(number(segment)?, number(index)?));
                }
                number(path.strip_prefix("/seg/")?.strip_suffix(".ts")?).map(Self::Segment)
            }
        }
    }
}

/// The viewer's watch page at `/`: plays the stream (hls.js, or Safari's own HLS), shows
/// the viewer's `/stats` live and the commands for other players.
pub const VIEWER_INDEX_HTML: &str = include_str!("../../assets/watch.html");

/// hls.js 1.5.20 (`dist/hls.light.min.js` from npm, Apache-2.0, see
/// `assets/hls.js-LICENSE`), served at `/hls.min.js` from inside the binary so the page works
/// offline and needs no CDN.
pub const HLS_JS: &[u8] = include_bytes!("../../assets/hls.light.min.js");

/// The player script is fixed for a build, so a browser may keep it for a day.
const HLS_JS_CACHE_CONTROL: &str = "public, max-age=86400";

const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";

/// Segment bodies never change under their number, so players and proxies may keep them.
const SEGMENT_CACHE_CONTROL: &str = "public, max-age=3600";

/// Maps a request to its response: refuses a foreign `Host`, answers, then grants the
/// request's `Origin` cross-origin reads if `cross_origin` names it. Pure apart from asking the
/// catalog (it never waits: see [`respond_waiting`]); `local` is the address the connection
/// reached.
#[cfg(test)]
fn respond<B>(
    catalog: &dyn Catalog,
    request: &Request<B>,
    local: SocketAddr,
    cross_origin: &CrossOrigin,
) -> Response<Full<Bytes>> {
    if let Some(refused) = refuse_host(request, local) {
        return refused;
    }
    let uri = request.uri();
    let response = answer_query(catalog, request.method(), uri.path(), uri.query());
    grant(response, request, cross_origin)
}

/// [`respond`], but a request for something about to be verified waits for it (bounded):
/// a blocking playlist reload, a hinted part, a segment still arriving (whose body then
/// streams its verified bytes as they come). At most [`MAX_WAITING`] wait at once.
async fn respond_waiting<B>(
    catalog: Arc<dyn Catalog>,
    request: &Request<B>,
    local: SocketAddr,
    config: &ServeConfig,
    waiting: Arc<Semaphore>,
) -> Response<Body> {
    if let Some(refused) = refuse_host(request, local) {
        return refused.map(Either::Left);
    }
    let uri = request.uri();
    let (method, path, query) = (request.method(), uri.path(), uri.query());
    let response = match must_wait(catalog.as_ref(), method, path, query) {
        None => answer_query(catalog.as_ref(), method, path, query).map(Either::Left),
        Some(wait) => match waiting.try_acquire_owned() {
            Ok(permit) => wait_for(catalog, wait, permit, method, path, query).await,
            Err(_) => {
                tracing::debug!("HTTP: {MAX_WAITING} requests waiting already; answering now");
                match wait {
                    Wait::Playlist(_) => {
                        answer_query(catalog.as_ref(), method, path, query).map(Either::Left)
                    }
                    Wait::Part(..) | Wait::Segment(_) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests waiting\n",
                    )
                    .map(Either::Left),
                }
            }
        },
    };
    grant(response, request, &config.cross_origin)
}

/// What a request waits for before it is answered.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// A blocking reload of `/ll.m3u8`.
    Playlist(Awaited),
    /// A part not verified yet: the hinted one, or one of the segment after.
    Part(u64, usize),
    /// A segment still arriving: its body streams.
    Segment(u64),
}

/// Whether a `GET` must wait, and for what; `None` answers it at once.
fn must_wait(
    catalog: &dyn Catalog,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Wait> {
    if method != Method::GET {
        return None;
    }
    match Resource::from_path(path)? {
        Resource::LlPlaylist => {
            let awaited = llhls::awaited(query).ok()??;
            match catalog.ll_playlist() {
                Some(view) if awaited.met_by(&view) || awaited.too_far(&view) => None,
                _ => Some(Wait::Playlist(awaited)),
            }
        }
        Resource::Part(number, index) => {
            if catalog.part(number, index).is_some() {
                return None;
            }
            // Only the hinted part or later parts of its segment or the next one will come;
            // anything else missing is answered 404 at once.
            let (hinted, from) = catalog.ll_playlist()?.preload_hint()?;
            let coming = (number == hinted && index >= from) || number == hinted.checked_add(1)?;
            coming.then_some(Wait::Part(number, index))
        }
        Resource::Segment(number) => {
            if catalog.segment(number).is_some() {
                return None;
            }
            catalog.arriving(number).map(|_| Wait::Segment(number))
        }
        _ => None,
    }
}

/// How long a blocking reload or a hinted part waits: [`llhls::BLOCK_TARGETS`] target
/// durations of the playlist now (2 s segments assumed before there is one).
fn block_bound(catalog: &dyn Catalog) -> Duration {
    let target = catalog
        .ll_playlist()
        .map_or(Duration::from_secs(2), |v| v.target_duration());
    target.saturating_mul(llhls::BLOCK_TARGETS)
}

/// Answers a request that waits, holding its slot in the waiting bound (`permit`) until done.
async fn wait_for(
    catalog: Arc<dyn Catalog>,
    wait: Wait,
    permit: OwnedSemaphorePermit,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    match wait {
        Wait::Playlist(awaited) => {
            let bound = block_bound(catalog.as_ref());
            // Timed out: the playlist as it is; the player asks again.
            wait_until(catalog.as_ref(), bound, |c| {
                c.ll_playlist().filter(|v| awaited.met_by(v)).map(|_| ())
            })
            .await;
            drop(permit);
            answer_query(catalog.as_ref(), method, path, query).map(Either::Left)
        }
        Wait::Part(number, index) => {
            let bound = block_bound(catalog.as_ref());
            wait_until(catalog.as_ref(), bound, |c| c.part(number, index)).await;
            drop(permit);
            answer_query(catalog.as_ref(), method, path, query).map(Either::Left)
        }
        Wait::Segment(number) => cut_through(catalog, number, permit),
    }
}

/// Waits until `ready` finds something, waking as bytes are verified (and every [`RECHECK`]),
/// for at most `bound`; then what `ready` finds, if anything.
async fn wait_until<T>(
    catalog: &dyn Catalog,
    bound: Duration,
    mut ready: impl FnMut(&dyn Catalog) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut changes = catalog.arrivals();
    loop {
        // Marked seen before looking, so a change after the look wakes the wait below.
        if let Some(changes) = changes.as_mut() {
            changes.borrow_and_update();
        }
        if let Some(found) = ready(catalog) {
            return Some(found);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let until = deadline.min(now + RECHECK);
        match changes.as_mut() {
            Some(rx) => {
                if let Ok(Err(_)) = tokio::time::timeout_at(until, rx.changed()).await {
                    // The node is gone: nothing more will come.
                    changes = None;
                }
            }
            None => tokio::time::sleep_until(until).await,
        }
    }
}

/// Streams segment `number` while it arrives: every verified byte as it comes (whole TS
/// packets until the segment is whole), ending the body when the segment is whole, or cleanly
/// with what was sent when its bytes stop coming ([`CUT_THROUGH_SILENCE`]) or it is given up.
fn cut_through(
    catalog: Arc<dyn Catalog>,
    number: u64,
    permit: OwnedSemaphorePermit,
) -> Response<Body> {
    let (tx, chunks) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _permit = permit;
        let mut sent = 0usize;
        let mut silence = CUT_THROUGH_SILENCE.0;
        let mut changes = catalog.arrivals();
        let mut last_progress = tokio::time::Instant::now();
        loop {
            if let Some(changes) = changes.as_mut() {
                changes.borrow_and_update();
            }
            // What is verified now: the whole segment once stored, else the arriving prefix.
            let (chunks, len) = match catalog.segment(number) {
                Some(whole) => {
                    let len = whole.len();
                    (vec![whole], len)
                }
                None => match catalog.arriving(number) {
                    Some(arriving) => {
                        silence = arriving
                            .duration
                            .saturating_mul(llhls::BLOCK_TARGETS)
                            .clamp(CUT_THROUGH_SILENCE.0, CUT_THROUGH_SILENCE.1);
                        (arriving.prefix, arriving.len)
                    }
                    None => {
                        tracing::debug!(number, sent, "cut-through: the segment was given up");
                        return;
                    }
                },
            };
            let verified = chunks.iter().map(Bytes::len).sum::<usize>().min(len);
            let upto = if verified >= len {
                len
            } else {
                verified - verified % TS_PACKET
            };
            if upto > sent {
                for chunk in slices(&chunks, sent..upto) {
                    if tx.send(chunk).await.is_err() {
                        // The player left.
                        return;
                    }
                }
                sent = upto;
                last_progress = tokio::time::Instant::now();
            }
            if sent >= len {
                return;
            }
            let now = tokio::time::Instant::now();
            if now.duration_since(last_progress) >= silence {
                tracing::debug!(number, sent, len, "cut-through: no more bytes came; ending");
                return;
            }
            let until = (last_progress + silence).min(now + RECHECK);
            match changes.as_mut() {
                Some(rx) => {
                    if let Ok(Err(_)) = tokio::time::timeout_at(until, rx.changed()).await {
                        changes = None;
                    }
                }
                None => tokio::time::sleep_until(until).await,
            }
        }
    });
    let mut response = Response::new(Either::Right(Growing { chunks }));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    // Cut short if its bytes stop coming: no cache may keep it as the segment.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// MPEG-TS packet length: a cut-through body ends on one until the segment is whole.
const TS_PACKET: usize = 188;

/// The bytes `range` of the concatenation of `chunks`, as slices of them (no copy).
fn slices(chunks: &[Bytes], range: std::ops::Range<usize>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for chunk in chunks {
        let (start, end) = (at, at + chunk.len());
        at = end;
        let (from, to) = (range.start.max(start), range.end.min(end));
        if from < to {
            out.push(chunk.slice(from - start..to - start));
        }
    }
    out
}

/// 400 or 421 for a request whose `Host` is missing, repeated or not this server's.
fn refuse_host<B>(request: &Request<B>, local: SocketAddr) -> Option<Response<Full<Bytes>>> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().unwrap_or(""),
        (None, _) => {
            return Some(text(
                StatusCode::BAD_REQUEST,
                "a request needs a Host header\n",
            ))
        }
        (Some(_), Some(_)) => {
            return Some(text(StatusCode::BAD_REQUEST, "more than one Host header\n"))
        }
    };
    // A request in absolute form names its host in the target too (RFC 9112 §3.2.2).
    let target_host = request.uri().authority().map(|a| a.as_str());
    if !host_allowed(host, local) || target_host.is_some_and(|t| !host_allowed(t, local)) {
        // DNS rebinding: a page on another name that resolves here.
        return Some(text(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only to localhost, a loopback address or its own address\n",
        ));
    }
    None
}

/// Adds the CORS grant `cross_origin` gives the request's `Origin`, if any.
fn grant<B, T>(
    mut response: Response<T>,
    request: &Request<B>,
    cross_origin: &CrossOrigin,
) -> Response<T> {
    if cross_origin.grants_any() {
        // A cache must not give one origin's answer (with or without a grant) to another.
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    let origin = request.headers().get(header::ORIGIN);
    if let Some(origin) = origin.filter(|o| cross_origin.grants(o.to_str().unwrap_or(""))) {
        let preflight =
            request.method() == Method::OPTIONS && response.status() == StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("*"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
    }
    response
}

/// The response to a request from this server's own `Host`, without any CORS grant.
#[cfg(test)]
fn answer(catalog: &dyn Catalog, method: &Method, path: &str) -> Response<Full<Bytes>> {
    answer_query(catalog, method, path, None)
}

/// [`answer`] with the request's query (read by `/ll.m3u8` only). It never waits.
fn answer_query(
    catalog: &dyn Catalog,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let Some(resource) = Resource::from_path(path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if method == Method::OPTIONS {
        // A preflight: the grant, if any, is added by `respond`.
        let mut response = with_body(StatusCode::NO_CONTENT, Bytes::new());
        response.headers_mut().remove(header::CONTENT_LENGTH);
        return response;
    }
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return response;
    }

    // `Err` is a status other than 200 or 404, with its short text.
    let found: Result<Option<(Bytes, &'static str, &'static str)>, _> = match resource {
        Resource::Index => Ok(Some((
            Bytes::from_static(catalog.index_html().as_bytes()),
            "text/html; charset=utf-8",
            "no-cache",
        ))),
        Resource::Playlist => Ok(catalog.playlist().map(|m3u8| {
            (
                Bytes::from(m3u8),
                "application/vnd.apple.mpegurl",
                "no-cache",
            )
        })),
        Resource::Segment(number) => Ok(catalog
            .segment(number)
            .map(|bytes| (bytes, "video/mp2t", SEGMENT_CACHE_CONTROL))),
        Resource::Part(number, index) => Ok(catalog
            .part(number, index)
            .map(|bytes| (bytes, "video/mp2t", SEGMENT_CACHE_CONTROL))),
        Resource::LlPlaylist => match llhls::awaited(query) {
            Err(_) => Err((StatusCode::BAD_REQUEST, "bad _HLS_msn or _HLS_part\n")),
            Ok(awaited) => match catalog.ll_playlist() {
                Some(view) if awaited.is_some_and(|a| a.too_far(&view)) => Err((
                    StatusCode::BAD_REQUEST,
                    "_HLS_msn is more than two segments ahead\n",
                )),
                view => Ok(view.as_ref().and_then(llhls::render).map(|m3u8| {
                    (
                        Bytes::from(m3u8),
                        "application/vnd.apple.mpegurl",
                        "no-cache",
                    )
                })),
            },
        },
        Resource::Stats => Ok(Some((
            Bytes::from(catalog.stats_json()),
            "application/json",
            "no-cache",
        ))),
        Resource::HlsJs => Ok(Some((
            Bytes::from_static(HLS_JS),
            "text/javascript; charset=utf-8",
            HLS_JS_CACHE_CONTROL,
        ))),
        Resource::History => Ok(catalog
            .history_json()
            .map(|json| (Bytes::from(json), "application/json", "no-cache"))),
        Resource::Metrics => match catalog.metrics_text() {
            Some(text) => Ok(Some((
                Bytes::from(text),
                crate::metrics::CONTENT_TYPE,
                "no-cache",
            ))),
            None => Err((StatusCode::INTERNAL_SERVER_ERROR, "cannot write metrics\n")),
        },
    };
    let mut response = match found {
        Err((status, why)) => text(status, why),
        Ok(Some((body, content_type, cache_control))) => {
            let mut response = with_body(StatusCode::OK, body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            response
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if head {
        // Same headers, Content-Length included, without the body.
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// A short `text/plain` response that no cache keeps (a missing segment may arrive later).
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_body(status, Bytes::from_static(body.as_bytes()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A response with `body` and its Content-Length.
fn with_body(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, length);
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        assert_eq!(Resource::from_path("/"), Some(Resource::Index));
        assert_eq!(Resource::from_path("/live.m3u8"), Some(Resource::Playlist));
        assert_eq!(Resource::from_path("/stats"), Some(Resource::Stats));
        assert_eq!(Resource::from_path("/metrics"), Some(Resource::Metrics));
        assert_eq!(Resource::from_path("/history"), Some(Resource::History));
        assert_eq!(Resource::from_path("/hls.min.js"), Some(Resource::HlsJs));
        assert_eq!(Resource::from_path("/seg/0.ts"), Some(Resource::Segment(0)));
        assert_eq!(
            Resource::from_path("/seg/18446744073709551615.ts"),
            Some(Resource::Segment(u64::MAX))
        );
        for bad in [
            "/seg/.ts",
            "/seg/+1.ts",
            "/seg/-1.ts",
            "/seg/1.5.ts",
            "/seg/abc.ts",
            "/seg/18446744073709551616.ts",
            "/seg/1",
            "/seg/1.ts/",
            "/seg//1.ts",
            "/live.m3u8/",
            "/index.html",
            "",
            "*",
        ] {
            assert_eq!(Resource::from_path(bad), None, "{bad}");
        }
    }

    struct OneSegment;

    impl Catalog for OneSegment {
        fn playlist(&self) -> Option<String> {
            None
        }
        fn segment(&self, number: u64) -> Option<Bytes> {
            (number == 3).then(|| Bytes::from_static(b"three"))
        }
        fn stats_json(&self) -> String {
            "{}".to_owned()
        }
        fn metrics_text(&self) -> Option<String> {
            None
        }
        fn index_html(&self) -> &'static str {
            VIEWER_INDEX_HTML
        }
        fn history_json(&self) -> Option<String> {
            None
        }
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        use hyper::body::Body as _;

        let get = answer(&OneSegment, &Method::GET, "/seg/3.ts");
        let head = answer(&OneSegment, &Method::HEAD, "/seg/3.ts");
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers(), head.headers());
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(head.body().size_hint().exact(), Some(0));
        assert_eq!(get.body().size_hint().exact(), Some(5));
    }

    #[test]
    fn the_page_loads_the_bundled_player() {
        let page = answer(&OneSegment, &Method::GET, "/");
        assert!(VIEWER_INDEX_HTML.contains("<script src=\"hls.min.js\">"));
        assert!(page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let script = answer(&OneSegment, &Method::GET, "/hls.min.js");
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(
            script.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            script.headers()[header::CONTENT_LENGTH],
            HLS_JS.len().to_string().as_str()
        );
        // The bundled file is hls.js itself, the release the docs name.
        let head = std::str::from_utf8(&HLS_JS[..HLS_JS.len().min(4096)]).unwrap_or("");
        assert!(String::from_utf8_lossy(HLS_JS).contains("1.5.20"), "{head}");
    }

    #[test]
    fn method_and_presence_decide_the_status() {
        let status = |method: Method, path: &str| answer(&OneSegment, &method, path).status();
        assert_eq!(status(Method::GET, "/seg/4.ts"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/live.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/stats"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/history"), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Method::GET, "/metrics"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(Method::POST, "/stats"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::DELETE, "/seg/3.ts"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(Method::POST, "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::OPTIONS, "/seg/3.ts"), StatusCode::NO_CONTENT);
    }

    fn asked(method: Method, path: &str, host: Option<&str>, origin: Option<&str>) -> Request<()> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.body(()).unwrap()
    }

    const LOCAL: &str = "127.0.0.1:8080";

    #[test]
    fn a_foreign_host_is_refused_before_anything_is_looked_up() {
        let local = LOCAL.parse().unwrap();
        let none = CrossOrigin::none();
        let status = |host: Option<&str>| {
            let request = asked(Method::GET, "/seg/3.ts", host, None);
            respond(&OneSegment, &request, local, &none).status()
        };
        assert_eq!(status(Some("localhost:8080")), StatusCode::OK);
        assert_eq!(status(Some("127.0.0.1:8080")), StatusCode::OK);
        assert_eq!(status(Some("[::1]:8080")), StatusCode::OK);
        assert_eq!(
            status(Some("rebind.example:8080")),
            StatusCode::MISDIRECTED_REQUEST
        );
        assert_eq!(status(Some("")), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(status(None), StatusCode::BAD_REQUEST);
        let absolute = |target: &str| {
            let request = asked(Method::GET, target, Some("localhost"), None);
            respond(&OneSegment, &request, local, &none).status()
        };
        assert_eq!(absolute("http://localhost:8080/seg/3.ts"), StatusCode::OK);
        assert_eq!(
            absolute("http://rebind.example:8080/seg/3.ts"),
            StatusCode::MISDIRECTED_REQUEST
        );
        let two = Request::builder()
            .uri("/seg/3.ts")
            .header(header::HOST, "localhost")
            .header(header::HOST, "localhost")
            .body(())
            .unwrap();
        assert_eq!(
            respond(&OneSegment, &two, local, &none).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn only_a_granted_origin_gets_a_cors_header() {
        let local = LOCAL.parse().unwrap();
        let granted = CrossOrigin::granted(vec!["https://app.example".parse().unwrap()]);
        let cors = |cross_origin: &CrossOrigin, method: Method, origin: Option<&str>| {
            let request = asked(method, "/seg/3.ts", Some("localhost"), origin);
            let response = respond(&OneSegment, &request, local, cross_origin);
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            (
                header(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                header(header::ACCESS_CONTROL_ALLOW_METHODS),
                header(header::VARY),
            )
        };
        let none = CrossOrigin::none();
        assert_eq!(cors(&none, Method::GET, None), (None, None, None));
        assert_eq!(
            cors(&none, Method::GET, Some("https://app.example")),
            (None, None, None)
        );
        assert_eq!(
            cors(&none, Method::OPTIONS, Some("https://app.example")),
            (None, None, None)
        );
        let vary = Some("Origin".to_owned());
        assert_eq!(
            cors(&granted, Method::GET, Some("https://app.example")),
            (Some("https://app.example".to_owned()), None, vary.clone())
        );
        let (allow, methods, _) = cors(&granted, Method::OPTIONS, Some("https://app.example"));
        assert_eq!(allow.as_deref(), Some("https://app.example"));
        assert_eq!(methods.as_deref(), Some(ALLOWED_METHODS));
        assert_eq!(
            cors(&granted, Method::GET, Some("https://evil.example")),
            (None, None, vary.clone())
        );
        assert_eq!(
            cors(&granted, Method::GET, Some("null")),
            (None, None, vary)
        );
    }
}
