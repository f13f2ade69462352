//! The viewer program's body: join the mesh from a ticket, serve local HLS, show status.
//!
//! [`run`] drives the node and the HTTP server; the `/stats` arithmetic is in `stats`, the
//! status line in `status`, and how it finishes an ended stream in `ending`, all pure but for
//! the status line's output.

mod ending;
mod open;
mod stats;
mod status;

pub use open::open_page;

use crate::clock;
use crate::http::{self, Catalog};
use crate::llhls;
use crate::mesh::MeshConfig;
use crate::metrics::{Metrics, MetricsError};
use crate::net::{Arriving, Node, NodeConfig, NodeView};
use crate::node::hello::TOKEN_CLOCK_SKEW_S;
use crate::playlist::{self, PlaylistConfig, SegmentInfo};
use crate::rate::Rate;
use crate::store;
use crate::stream::Ticket;
use crate::token::{Admission, Credential, TokenError};
use crate::wire::Role;
use bytes::Bytes;
use status::ViewerStatus;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections a viewer accepts (its partners are capped far lower by its mesh).
pub const MAX_CONNECTIONS: usize = 64;

/// Segments the live playlist lists.
///
/// Stock players (ffmpeg, ffplay, mpv) start a live playlist three entries from its end and
/// read at real speed from there, so the entries they find set how far behind the newest
/// segment they play. Two entries make them start at the older one: one segment of slack for
/// the next to arrive, and about two segment durations behind the camera, where the eight
/// listed until issue 28 (with three more held back) put them six behind.
pub const PLAYER_WINDOW: usize = 2;

/// Everything the viewer needs, from its flags.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// The stream to join.
    pub ticket: Ticket,
    /// Private streams: the join credential from the broadcaster.
    pub token: Option<Credential>,
    /// Address of the local HLS server.
    pub http: SocketAddr,
    /// QUIC address.
    pub listen: SocketAddr,
    /// Upload cap (None: uncapped).
    pub upload_limit: Option<Rate>,
    /// Leech-only: never upload to other viewers (metered links).
    pub no_upload: bool,
    /// The site (office) this viewer is on, by name: viewers of the stream given the same
    /// name pair over their LAN and pull each part across its WAN about once, as viewers
    /// behind one public address do without a name ([`site_name`] checks it).
    pub site: Option<String>,
    /// Segments held back behind the newest; a player then has this many segments of slack
    /// more than the one the short window gives it.
    pub delay: u64,
    /// Segments listed in the playlist.
    pub window: usize,
    /// Web origins granted cross-origin reads of the local server; ignored for a private
    /// stream (one joined with a token), whose video no other origin may read.
    pub allow_origins: Vec<http::AllowedOrigin>,
    /// Redraw a status line on stderr (a terminal); otherwise log now and then.
    pub status_line: bool,
    /// Once the stream ended: how long at most to wait for the player to fetch the last
    /// segment (or for the last segments to arrive) before exiting.
    pub linger_after_end: Duration,
}

/// Longest site name `--site` takes, in bytes.
pub const MAX_SITE_NAME: usize = 64;

/// A site name as `--site` takes it: 1 to [`MAX_SITE_NAME`] bytes, no control characters,
/// not only spaces. Names match exactly (case and spaces count).
pub fn site_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("a site name must not be empty".into());
    }
    if name.len() > MAX_SITE_NAME {
        return Err(format!("a site name takes at most {MAX_SITE_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("a site name must not hold control characters".into());
    }
    Ok(name.to_string())
}

/// Why the viewer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The ticket's address is held by a node with another key.
    #[error("the node at {addr} is not this ticket's broadcaster (it has a different key): the ticket is for another stream, or the broadcaster's key changed")]
    WrongStream {
        /// The address that answered.
        addr: SocketAddr,
    },
    /// The join token is unusable, or the broadcaster refused it (private streams).
    #[error("cannot join: {0}")]
    Token(#[from] TokenError),
    /// The HTTP address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The `/metrics` figures could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Runs a viewer until the stream has ended and the player fetched its end (or
/// `config.linger_after_end` passed), or `shutdown` resolves.
///
/// `on_url` is called once with the playlist URL, once the HTTP server listens and the
/// broadcaster (or a partner) accepted this viewer; a refused viewer never calls it.
pub async fn run(
    config: ViewerConfig,
    on_url: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ViewerError> {
    let started = clock::now();
    let stream = config.ticket.stream;
    // A token for another stream, not yet valid or expired is refused here, before any
    // dialling, with the tolerance peers give it.
    if let Some(cred) = &config.token {
        cred.token()
            .verify(&stream, 0, clock::unix_now_s(), TOKEN_CLOCK_SKEW_S)?;
    }
    // A private stream's video is for its invited viewers: no other web origin may read it.
    let private = config.token.is_some();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    // Until headers tell us the real segment length, assume the default 2 s. A player
    // starting at the older of the two listed segments needs the next one about a segment
    // (plus any hold-back) after it is announced. The mesh asks the broadcaster once half its
    // budget has passed, so a budget of two segments asks just as that slack runs out; one
    // segment took 1.7-1.8 broadcaster copies instead of 1.1 at 20 viewers (BENCHMARKS.md).
    let mut mesh = MeshConfig::viewer(
        stream,
        Duration::from_secs(2),
        config.delay.saturating_add(2),
    );
    mesh.uploads = !config.no_upload;
    mesh.site = config
        .site
        .as_deref()
        .map(|name| crate::wire::SiteTag::of(&stream, name));
    let node = Node::spawn(NodeConfig {
        key,
        stream,
        role: Role::Viewer,
        listen: config.listen,
        origin_addrs: config.ticket.addrs.clone(),
        upload_limit: config.upload_limit,
        mesh,
        store_capacity: (config.window + config.delay as usize + 16).max(32),
        seed: rand::random(),
        max_connections: MAX_CONNECTIONS,
        admission: config.token.map_or(Admission::Open, Admission::Invited),
    })
    .await?;

    let metrics = Arc::new(Metrics::viewer()?);
    let catalog = Arc::new(ViewerCatalog {
        node: node.view(),
        playlist: PlaylistConfig {
            delay: config.delay,
            window: config.window,
        },
        metrics: metrics.clone(),
        served: AtomicU64::new(0),
        listed: AtomicU64::new(0),
    });
    let cross_origin = if private {
        http::CrossOrigin::none()
    } else {
        http::CrossOrigin::granted(config.allow_origins.clone())
    };
    let http = http::Server::start(
        config.http,
        catalog.clone(),
        http::ServeConfig::granting(cross_origin),
    )
    .await
    .map_err(|source| ViewerError::Http {
        addr: config.http,
        source,
    })?;
    let url = format!("http://{}/live.m3u8", http.addr());
    tracing::info!(stream = %stream.short(), quic = ?node.local_addr().ok(), "joining");
    // The URL is printed once the swarm let this viewer in, so a refused viewer prints none.
    let mut on_url = Some(on_url);
    let mut admission_check = tokio::time::interval(Duration::from_millis(100));

    tokio::pin!(shutdown);
    let mut status = ViewerStatus::new(config.status_line, clock::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ending: Option<ending::Ending> = None;
    let mut ever_connected = false;
    let mut wrong_key_ticks = 0u32;
    let mut arrivals = stats::Arrivals::default();
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let stats = node.stats();
                ever_connected |= stats.origin_connected;
                // Only a ticket that never reached its broadcaster is wrong; a key
                // mismatch on one of several addresses is harmless once another works.
                match node.origin_wrong_key() {
                    Some(addr) if !ever_connected => {
                        wrong_key_ticks += 1;
                        if wrong_key_ticks >= 3 {
                            outcome = Err(ViewerError::WrongStream { addr });
                            break;
                        }
                    }
                    _ => wrong_key_ticks = 0,
                }
                // The broadcaster said no to our token: retrying would not change its mind.
                if let Some(refusal) = node.origin_refused() {
                    outcome = Err(ViewerError::Token(refusal));
                    break;
                }
                let found = {
                    let shared = node.store();
                    let store = store::lock(&shared);
                    arrivals.since_last(&store, started, clock::now(), stats::wall_clock_ms())
                };
                if let Some(join) = found.join {
                    metrics.observe_join(join);
                }
                for ms in found.latencies_ms {
                    // Latencies are finite and never negative; MAX only guards the conversion.
                    let latency = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX);
                    metrics.observe_delivery(latency);
                }
                if ending.is_none() {
                    ending = store::lock(&node.store())
                        .ended()
                        .map(|last| ending::Ending::new(last, clock::now()));
                }
                let Some(end) = ending.as_mut() else {
                    status.show(&stats, clock::now());
                    continue;
                };
                // Past the end the broadcaster leaves: no status line saying it is unreachable.
                let step = end.step(
                    clock::now(),
                    stats.newest_segment,
                    catalog.served_through(),
                    config.linger_after_end,
                );
                match step {
                    ending::Step::Wait => {}
                    ending::Step::Complete => {
                        status.clear();
                        tracing::info!(
                            "the broadcaster ended the stream: the playlist now lists every \
                             segment through {} and ends there",
                            end.last()
                        );
                    }
                    ending::Step::Exit(why) => {
                        status.clear();
                        tracing::info!("the stream has ended and {why}: exiting");
                        break;
                    }
                }
            }
            _ = admission_check.tick(), if on_url.is_some() => {
                let stats = node.stats();
                if stats.origin_connected || stats.peers > 0 {
                    if let Some(announce) = on_url.take() {
                        announce(&url);
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    status.clear();
    http.stop().await;
    node.shutdown().await;
    outcome
}

/// What the local HTTP server serves: the node's playlist, segments, `/stats` and `/metrics`.
struct ViewerCatalog {
    node: NodeView,
    playlist: PlaylistConfig,
    metrics: Arc<Metrics>,
    /// One more than the highest segment number served to a player, 0 before any: how far
    /// the player got, so an ended stream waits for it.
    served: AtomicU64,
    /// One more than the newest segment number the playlist listed, 0 before any: the list
    /// starts no later than this, so late segments arriving at once are all listed once.
    listed: AtomicU64,
}

impl ViewerCatalog {
    /// The highest segment number served to a player, if any.
    fn served_through(&self) -> Option<u64> {
        self.served.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The parts of segment `number` verified so far, with its bytes (whole or the prefix).
    fn parts_of(&self, number: u64) -> Option<(Bytes, Vec<llhls::Part>, bool)> {
        if let Some(data) = self.node.segment_data(number) {
            let parts = llhls::parts(&data, data.len(), self.duration_ms(number)?);
            return Some((data, parts, true));
        }
        let arriving = self
            .node
            .arriving()
            .into_iter()
            .find(|a| a.number == number)?;
        let data = joined(&arriving.prefix);
        let parts = llhls::parts(&data, arriving.len as usize, arriving.duration_ms);
        Some((data, parts, false))
    }

    /// The signed duration of held segment `number`.
    fn duration_ms(&self, number: u64) -> Option<u32> {
        store::lock(&self.node.store())
            .get(number)
            .map(|s| s.header.header.duration_ms)
    }
}

/// What the playlist needs of a segment still arriving.
fn arriving_info(a: &Arriving) -> SegmentInfo {
    SegmentInfo {
        duration: Duration::from_millis(u64::from(a.duration_ms)),
        published_unix_ms: a.published_unix_ms,
        discontinuity: a.discontinuity,
    }
}

/// The pieces of a verified prefix as one run of bytes.
fn joined(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [one] => one.clone(),
        _ => Bytes::from(pieces.concat()),
    }
}

impl Catalog for ViewerCatalog {
    fn playlist(&self) -> Option<String> {
        let live = self.node.live_newest();
        // Nothing listed yet: the window as usual, so a player starts near the newest.
        let listed = self.listed.load(Ordering::Relaxed);
        let keep_from = (listed > 0).then_some(listed);
        // Only whole segments: listing one still arriving (cut-through) gained nothing
        // measurable for stock players, and when it never completed (its broadcaster
        // restarted mid-segment) ffmpeg got a truncated segment, stalled on it and skipped
        // the next (docs/LATENCY.md).
        let (text, last) =
            store::lock(&self.node.store()).playlist_keeping(self.playlist, live, keep_from)?;
        self.listed
            .fetch_max(last.saturating_add(1), Ordering::Relaxed);
        Some(text)
    }

    fn segment(&self, number: u64) -> Option<Bytes> {
        let data = self.node.segment_data(number)?;
        self.served
            .fetch_max(number.saturating_add(1), Ordering::Relaxed);
        Some(data)
    }

    fn stats_json(&self) -> String {
        let n = self.node.stats();
        let mut latencies = {
            let shared = self.node.store();
            let store = store::lock(&shared);
            stats::recent_latencies_ms(&store, clock::now(), stats::wall_clock_ms())
        };
        stats::json(&n, &mut latencies)
    }

    fn index_html(&self) -> &'static str {
        http::VIEWER_INDEX_HTML
    }

    fn history_json(&self) -> Option<String> {
        None
    }

    fn ll_playlist(&self) -> Option<llhls::View> {
        // The complete segments: the stock window's, without hold-back (PART-HOLD-BACK
        // carries the slack `--delay` asks for).
        let (infos, ended) = {
            let shared = self.node.store();
            let store = store::lock(&shared);
            let infos: BTreeMap<u64, SegmentInfo> = store.infos().collect();
            let ended = store
                .ended()
                .is_some_and(|last| store.newest() >= Some(last));
            (infos, ended)
        };
        let config = PlaylistConfig {
            delay: 0,
            window: self.playlist.window,
        };
        let listed = playlist::listed_range(&infos, config, ended)?;
        let first = *listed.start();
        let mut previous = infos.range(..first).next_back().map(|(n, _)| *n);
        let mut entries = Vec::new();
        for (&number, info) in infos.range(listed) {
            let mut info = info.clone();
            info.discontinuity = playlist::starts_discontinuity(previous, number, &info);
            previous = Some(number);
            // Pruned since the look at the store: listed whole, without parts.
            let parts = self.parts_of(number).map(|(_, p, _)| p).unwrap_or_default();
            entries.push(llhls::Entry {
                number,
                info,
                parts,
                complete: true,
            });
        }
        // The segment after the last listed, while it arrives: its parts so far.
        let next = previous.and_then(|n| n.checked_add(1));
        let arriving = self
            .node
            .arriving()
            .into_iter()
            .find(|a| Some(a.number) == next);
        if let Some(a) = arriving.filter(|_| !ended) {
            let data = joined(&a.prefix);
            entries.push(llhls::Entry {
                number: a.number,
                info: arriving_info(&a),
                parts: llhls::parts(&data, a.len as usize, a.duration_ms),
                complete: false,
            });
        }
        Some(llhls::View {
            entries,
            discontinuity_sequence: playlist::discontinuities_before(&infos, first) as u64,
            ended,
            delay: self.playlist.delay,
        })
    }

    fn part(&self, number: u64, index: usize) -> Option<Bytes> {
        let (data, parts, complete) = self.parts_of(number)?;
        let part = parts.get(index)?;
        if complete && index + 1 == parts.len() {
            self.served
                .fetch_max(number.saturating_add(1), Ordering::Relaxed);
        }
        Some(data.slice(part.range.clone()))
    }

    fn arriving(&self, number: u64) -> Option<http::ArrivingSegment> {
        let a = self
            .node
            .arriving()
            .into_iter()
            .find(|a| a.number == number)?;
        Some(http::ArrivingSegment {
            len: a.len as usize,
            duration: Duration::from_millis(u64::from(a.duration_ms)),
            prefix: a.prefix,
        })
    }

    fn arrivals(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.node.arrivals())
    }

    fn metrics_text(&self) -> Option<String> {
        self.metrics
            .render(&self.node.stats(), None)
            .map_err(|e| tracing::warn!(error = %e, "cannot write /metrics"))
            .ok()
    }
}
