//! The broadcaster program's body: source → segmenter → signed segments → seeding node.
//!
//! Besides seeding, it tells its operator what happens: a status line (`status`), a log line
//! per viewer joining or leaving, and `/stats` and `/metrics` over HTTP.
//!
//! The key file's sibling `<key>.lock` keeps a second broadcaster off the key (see `lock`);
//! `<key>.state` remembers the next segment number and the last UDP port, so a restart with
//! the same key continues the same stream: the numbering goes on, the first new segment
//! carries the discontinuity flag, and viewers that hold the old ticket find the
//! broadcaster at the same address.

mod dashboard;
mod lock;
mod status;

pub use lock::{KeyLock, LockError};

use crate::clock;
use crate::http::{self, Catalog};
use crate::mesh::MeshConfig;
use crate::metrics::{BroadcastFigures, Metrics, MetricsError};
use crate::net::{self, Node, NodeConfig, NodeView};
use crate::playlist::PlaylistConfig;
use crate::rate::Rate;
use crate::source::{self, Encode, Input, SourceConfig, SourceError};
use crate::store;
use crate::stream::{self, node_id, sign_segment, StreamError, Ticket, VerifiedSegment};
use crate::token::{Admission, Credential, EpochFileError, TokenEpoch};
use crate::ts::CutSegment;
use crate::wire::Role;
use bytes::Bytes;
use status::BroadcasterStatus;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Connections the broadcaster accepts: its mesh's partners
/// ([`crate::mesh::BROADCASTER_MAX_PARTNERS`]) and room to turn a flash crowd away with a
/// peer sample rather than refuse it in the handshake (see `MeshConfig::broadcaster`).
pub const MAX_CONNECTIONS: usize = 8192;

/// Everything the broadcaster needs, from its flags.
#[derive(Debug, Clone)]
pub struct BroadcasterConfig {
    /// What to broadcast.
    pub input: Input,
    /// Target segment length.
    pub segment_duration: Duration,
    /// The stream key file (created on first run).
    pub key_path: PathBuf,
    /// QUIC address; None: the previous port if free, else any.
    pub listen: Option<SocketAddr>,
    /// Address of the `/stats` HTTP server.
    pub http: SocketAddr,
    /// Where to also write the ticket.
    pub ticket_file: Option<PathBuf>,
    /// Upload cap; None: 4× the measured stream bitrate.
    pub max_upload: Option<Rate>,
    /// Only viewers with a join token may join (see [`issue_token`]).
    pub private: bool,
    /// Redraw a status line on stderr (a terminal); otherwise log it now and then.
    pub status_line: bool,
    /// Re-encode the input (through ffmpeg), with a keyframe every segment duration.
    pub encode: Option<Encode>,
}

/// Why the broadcaster stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] StreamError),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The HTTP address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The ticket file could not be written.
    #[error("cannot write ticket file {path}: {source}")]
    TicketFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The token epoch file is unusable.
    #[error(transparent)]
    Epoch(#[from] EpochFileError),
    /// The `/metrics` figures could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Another broadcaster runs with this key, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The input ended without giving one segment.
    #[error("{input} ended before giving a single segment: nothing to broadcast")]
    NoSegment {
        /// The input as the user named it.
        input: String,
    },
    /// A token was asked for a key that does not exist yet.
    #[error("no key file at {path}: run the broadcaster once to create the stream, or pass --key")]
    NoKey {
        /// The key file.
        path: String,
    },
}

/// Numbering and address kept across restarts, beside the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastState {
    /// The number the next segment gets.
    pub next_number: u64,
    /// The UDP port last used.
    pub port: Option<u16>,
}

/// Longest `.state` file read: two short `name=value` lines.
const MAX_STATE_FILE: u64 = 1024;

impl BroadcastState {
    /// The state file for a key file.
    pub fn path_for(key_path: &Path) -> PathBuf {
        let mut p = key_path.as_os_str().to_owned();
        p.push(".state");
        PathBuf::from(p)
    }

    /// Reads the state; a missing or unreadable file gives the initial state. Read as the
    /// key is: a link is not followed, and a pipe, device or file over 1 KiB is refused at
    /// once (a FIFO there would hang the start, `/dev/zero` exhaust memory).
    pub fn load(path: &Path) -> BroadcastState {
        let Ok(file) = crate::stream::key::read_small_file(path, MAX_STATE_FILE) else {
            return BroadcastState::default();
        };
        let Ok(text) = String::from_utf8(file.bytes) else {
            return BroadcastState::default();
        };
        let mut state = BroadcastState::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("next_number", v)) => state.next_number = v.trim().parse().unwrap_or(0),
                Some(("port", v)) => state.port = v.trim().parse().ok(),
                _ => {}
            }
        }
        state
    }

    /// Writes the state atomically (temp file + rename), so a crash never leaves half a file;
    /// the temp file is created exclusively, so a link planted at its path is never followed.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = format!("next_number={}\n", self.next_number);
        if let Some(port) = self.port {
            text.push_str(&format!("port={port}\n"));
        }
        crate::stream::key::write_private_atomically(path, text.as_bytes())
    }
}

/// How the broadcaster is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// End the stream: viewers are told, list every segment they hold and finish.
    EndStream,
    /// Stop without ending the stream, for a restart: viewers keep waiting, and a
    /// broadcaster started again with the same key continues the stream.
    KeepStream,
}

/// Runs the broadcaster until the input ends or `shutdown` resolves.
///
/// `on_ticket` is called once, as soon as the ticket is known (the program prints it).
pub async fn run(
    config: BroadcasterConfig,
    on_ticket: impl FnOnce(&Ticket),
    shutdown: impl Future<Output = Stop>,
) -> Result<(), BroadcastError> {
    let input = match config.encode {
        Some(_) => config.input.clone().encoded()?,
        None => config.input.clone(),
    };
    source::check_input(&input)?;
    let key_existed = std::fs::symlink_metadata(&config.key_path).is_ok();
    let key = stream::load_or_create_key(&config.key_path)?;
    // Held until this function returns. Taken once the key is known good, so a key's own
    // problem is what the user is told; two first runs at once cannot both create a key
    // anyway (it is created exclusively).
    let _lock = KeyLock::acquire(&config.key_path)?;
    if !key_existed {
        tracing::info!(
            "created a new stream key at {}: keep it to keep this stream's ticket",
            config.key_path.display()
        );
    }
    let stream_id = node_id(&key);
    let state_path = BroadcastState::path_for(&config.key_path);
    let mut state = BroadcastState::load(&state_path);
    let epoch_path = TokenEpoch::path_for(&config.key_path);
    let admission = if config.private {
        Admission::Broadcaster {
            epoch: TokenEpoch::load(&epoch_path)?.0,
        }
    } else {
        Admission::Open
    };

    let node = spawn_node(&config, &key, state.port, admission).await?;
    let local = node.local_addr().map_err(|e| {
        BroadcastError::Net(net::NetError::Tls(crate::tls::TlsError::Bind {
            addr: config.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            source: e,
        }))
    })?;
    state.port = Some(local.port());
    if let Err(e) = state.save(&state_path) {
        tracing::warn!(path = %state_path.display(), error = %e, "cannot save broadcaster state");
    }

    let ticket = Ticket {
        stream: stream_id,
        addrs: net::advertised_addrs(local),
    };
    let stats = Arc::new(BroadcastStats::default());
    let catalog = Arc::new(BroadcasterCatalog {
        node: node.view(),
        stats: stats.clone(),
        metrics: Metrics::broadcaster()?,
    });
    // The dashboard is served by the same server, so it needs no cross-origin grant.
    let http = http::Server::start(config.http, catalog, http::ServeConfig::default())
        .await
        .map_err(|source| BroadcastError::Http {
            addr: config.http,
            source,
        })?;
    let http_addr = http.addr();

    let (tx, mut rx) = mpsc::channel(4);
    let mut source_config = SourceConfig::new(input.clone(), config.segment_duration);
    source_config.encode = config.encode;
    let mut source_task = tokio::spawn(source::run(source_config, tx));
    tokio::pin!(shutdown);
    // Only an input that works is announced: the ticket waits for its first segment.
    tracing::info!("reading {input}: the ticket follows its first segment");
    let first = tokio::select! {
        seg = rx.recv() => Some(seg),
        _ = &mut shutdown => None,
    };
    let first = match first {
        Some(Some(cut)) => cut,
        Some(None) => {
            // The source finished without a segment: its result says why.
            let res = (&mut source_task).await;
            http.stop().await;
            node.shutdown().await;
            return Err(match res {
                Ok(Err(e)) => BroadcastError::Source(e),
                Ok(Ok(())) | Err(_) => BroadcastError::NoSegment {
                    input: input.to_string(),
                },
            });
        }
        None => {
            // Asked to stop before anything was announced.
            source_task.abort();
            http.stop().await;
            node.shutdown().await;
            return Ok(());
        }
    };
    let mut first = Some(first);

    if let Some(path) = &config.ticket_file {
        std::fs::write(path, format!("{}\n", ticket.encode())).map_err(|source| {
            BroadcastError::TicketFile {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    on_ticket(&ticket);
    tracing::info!(
        stream = %stream_id,
        quic = %local,
        dashboard = %format!("http://{http_addr}/"),
        stats = %format!("http://{http_addr}/stats"),
        first_segment = state.next_number,
        "broadcasting"
    );
    if config.private {
        tracing::info!(
            "private stream: only viewers with a join token can join; make one with \
             `starling-broadcaster token --key {}`",
            config.key_path.display()
        );
    }
    let mut status = BroadcasterStatus::new(config.status_line, clock::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    let mut restarted = state.next_number > 0;
    let mut last: Option<u64> = None;
    let mut bitrate = BitrateMeter::default();

    // Ok(None): the input ended; Ok(Some(stop)): asked to stop.
    let outcome: Result<Option<Stop>, BroadcastError> = loop {
        tokio::select! {
            seg = next_cut(&mut first, &mut rx) => {
                let Some(cut) = seg else {
                    // The source finished: its result says whether it ended well.
                    let res = (&mut source_task).await;
                    break match res {
                        Ok(Ok(())) => Ok(None),
                        Ok(Err(e)) => Err(BroadcastError::Source(e)),
                        Err(_) => Ok(None),
                    };
                };
                let number = state.next_number;
                let duration_ms = cut.duration.as_millis().min(u32::MAX as u128) as u32;
                let data: Bytes = cut.data;
                let header = match sign_segment(&key, number, duration_ms, unix_ms(), restarted, &data) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping segment");
                        continue;
                    }
                };
                let seg = match VerifiedSegment::verify(&stream_id, header, data) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping segment that fails its own check");
                        continue;
                    }
                };
                restarted = false;
                let len = seg.data.len() as u64;
                node.publish(seg).await;
                stats.segments_published.fetch_add(1, Ordering::Relaxed);
                let viewers = node.stats().peers as u64;
                stats.delivered_bytes.fetch_add(len.saturating_mul(viewers), Ordering::Relaxed);
                last = Some(number);
                state.next_number = number + 1;
                if let Err(e) = state.save(&state_path) {
                    tracing::warn!(path = %state_path.display(), error = %e, "cannot save broadcaster state");
                }
                let bps = bitrate.add(len, cut.duration);
                stats.bitrate_bps.store(bps, Ordering::Relaxed);
                let cap = config.max_upload.unwrap_or(Rate((bps * 4).max(1_000_000)));
                stats.upload_limit_bps.store(cap.0, Ordering::Relaxed);
                node.set_upload_limit(Some(cap));
                if config.private {
                    // A rotation (`token --rotate`) takes effect without a restart.
                    match TokenEpoch::load(&epoch_path) {
                        Ok(e) => node.raise_token_epoch(e.0),
                        Err(e) => tracing::warn!(error = %e, "keeping the token epoch in force"),
                    }
                }
                tracing::debug!(number, bytes = len, ms = duration_ms, "published");
            }
            _ = tick.tick() => {
                let n = node.stats();
                let figures = status::Figures {
                    viewers: n.peers,
                    uploaded: n.bytes_uploaded,
                    delivered: stats.delivered_bytes.load(Ordering::Relaxed),
                    newest: last,
                    stream_bps: stats.bitrate_bps.load(Ordering::Relaxed),
                };
                status.show(&figures, clock::now());
                let sample = dashboard::Sample {
                    unix_ms: unix_ms(),
                    viewers: figures.viewers,
                    uploaded_bytes: figures.uploaded,
                    delivered_bytes: figures.delivered,
                    segments_published: stats.segments_published.load(Ordering::Relaxed),
                };
                stats
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(sample);
            }
            stop = &mut shutdown => break Ok(Some(stop)),
        }
    };
    status.clear();
    source_task.abort();

    // However the stream stops (input ended, input failed, Ctrl-C or SIGTERM), viewers are
    // told, so they list every segment they hold and end their playlists; the error, if
    // any, comes after. Only a stop for a restart leaves the stream open.
    let last = last.filter(|_| !matches!(outcome, Ok(Some(Stop::KeepStream))));
    if matches!(outcome, Ok(Some(Stop::KeepStream))) {
        tracing::info!(
            "stopping without ending the stream: viewers wait, and a broadcaster started \
             with the same key continues it"
        );
    }
    if let Some(last) = last {
        node.end(last).await;
        let linger = (config.segment_duration * 3).max(Duration::from_secs(3));
        let why = match &outcome {
            Ok(None) => "the input ended",
            Ok(Some(_)) => "asked to stop",
            Err(_) => "the input failed",
        };
        tracing::info!(
            "{why}: the stream ends after segment {last}; staying up to {} s while viewers \
             fetch the last segments",
            linger.as_secs()
        );
        let signalled = matches!(outcome, Ok(Some(_)));
        let until = tokio::time::Instant::now() + linger;
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = check.tick() => {
                    // Once every viewer has left there is nobody to wait for.
                    if node.stats().peers == 0 || tokio::time::Instant::now() >= until {
                        break;
                    }
                }
                // A stop signal during the wait ends it (unless the signal began it).
                _ = &mut shutdown, if !signalled => break,
            }
        }
    }
    http.stop().await;
    node.shutdown().await;
    outcome.map(|_| ())
}

/// The segment held back from the announcement wait, else the next from the source.
async fn next_cut(
    held: &mut Option<CutSegment>,
    source: &mut mpsc::Receiver<CutSegment>,
) -> Option<CutSegment> {
    match held.take() {
        Some(cut) => Some(cut),
        None => source.recv().await,
    }
}

async fn spawn_node(
    config: &BroadcasterConfig,
    key: &ed25519_dalek::SigningKey,
    previous_port: Option<u16>,
    admission: Admission,
) -> Result<Node, net::NetError> {
    let stream_id = node_id(key);
    let make = |listen| NodeConfig {
        key: key.clone(),
        stream: stream_id,
        role: Role::Broadcaster,
        listen,
        origin_addrs: Vec::new(),
        upload_limit: config.max_upload.or(Some(Rate(4_000_000))),
        mesh: MeshConfig::broadcaster(stream_id, config.segment_duration),
        store_capacity: 64,
        seed: rand::random(),
        max_connections: MAX_CONNECTIONS,
        admission: admission.clone(),
    };
    if let Some(addr) = config.listen {
        return Node::spawn(make(addr)).await;
    }
    // No address given: reuse the last port so old tickets keep working, if it is free.
    if let Some(port) = previous_port {
        if let Ok(node) = Node::spawn(make(SocketAddr::from(([0, 0, 0, 0], port)))).await {
            return Ok(node);
        }
    }
    Node::spawn(make(SocketAddr::from(([0, 0, 0, 0], 0)))).await
}

/// Issues a join credential for the stream of the key at `key_path`, valid for `lifetime`
/// from `starts_in` after `now_unix_s`, held by a fresh random key. With `rotate`, first
/// moves to a new token epoch, which revokes every token issued before; the stream (key,
/// ticket) stays the same.
pub fn issue_token(
    key_path: &Path,
    lifetime: Duration,
    starts_in: Duration,
    rotate: bool,
    now_unix_s: u64,
) -> Result<Credential, BroadcastError> {
    // A mistyped path must not quietly create a new stream whose tokens fit nothing.
    if !key_path.exists() {
        return Err(BroadcastError::NoKey {
            path: key_path.display().to_string(),
        });
    }
    let key = stream::load_or_create_key(key_path)?;
    let epoch_path = TokenEpoch::path_for(key_path);
    let mut epoch = TokenEpoch::load(&epoch_path)?;
    if rotate {
        epoch = epoch.rotated()?;
        epoch.save(&epoch_path)?;
    }
    let not_before = now_unix_s.saturating_add(starts_in.as_secs());
    // A holder key of its own: were it shared, any holder could prove a token collected from another.
    let holder = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    Ok(Credential::issue(
        &key,
        &holder,
        epoch.0,
        not_before,
        not_before.saturating_add(lifetime.as_secs()),
    ))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The stream's bitrate over the last several segments.
#[derive(Debug, Default)]
struct BitrateMeter {
    recent: std::collections::VecDeque<(u64, Duration)>,
}

impl BitrateMeter {
    fn add(&mut self, bytes: u64, duration: Duration) -> u64 {
        self.recent.push_back((bytes, duration));
        if self.recent.len() > 8 {
            self.recent.pop_front();
        }
        let bytes: u64 = self.recent.iter().map(|(b, _)| b).sum();
        let secs: f64 = self.recent.iter().map(|(_, d)| d.as_secs_f64()).sum();
        if secs <= 0.0 {
            return 0;
        }
        (bytes as f64 * 8.0 / secs) as u64
    }
}

/// The broadcaster's own figures, beside its node's counters.
#[derive(Debug, Default)]
struct BroadcastStats {
    /// The dashboard's chart data, a sample a second.
    history: std::sync::Mutex<dashboard::History>,
    segments_published: AtomicU64,
    bitrate_bps: AtomicU64,
    upload_limit_bps: AtomicU64,
    /// Each segment's size times the viewers connected when it was published: what viewers
    /// received, as the broadcaster can tell without asking them.
    delivered_bytes: AtomicU64,
}

impl BroadcastStats {
    fn figures(&self) -> BroadcastFigures {
        BroadcastFigures {
            segments_published: self.segments_published.load(Ordering::Relaxed),
            stream_bps: self.bitrate_bps.load(Ordering::Relaxed),
            upload_limit_bps: self.upload_limit_bps.load(Ordering::Relaxed),
            delivered_bytes: self.delivered_bytes.load(Ordering::Relaxed),
        }
    }
}

struct BroadcasterCatalog {
    node: NodeView,
    stats: Arc<BroadcastStats>,
    metrics: Metrics,
}

impl Catalog for BroadcasterCatalog {
    fn playlist(&self) -> Option<String> {
        // The broadcaster's own window, at the live edge: handy to check the source.
        store::lock(&self.node.store()).playlist(PlaylistConfig {
            delay: 0,
            window: 8,
        })
    }

    fn segment(&self, number: u64) -> Option<Bytes> {
        self.node.segment_data(number)
    }

    fn stats_json(&self) -> String {
        let n = self.node.stats();
        serde_json::json!({
            "role": "broadcaster",
            "viewers": n.peers,
            "segments_published": self.stats.segments_published.load(Ordering::Relaxed),
            "newest_segment": n.newest_segment,
            "bytes_uploaded": n.bytes_uploaded,
            "bitrate_bps": self.stats.bitrate_bps.load(Ordering::Relaxed),
            "upload_limit_bps": self.stats.upload_limit_bps.load(Ordering::Relaxed),
            "busy_replies": n.busy_replies,
            "seeds_unconfirmed": n.seeds_unconfirmed,
            "control_bytes": n.control_bytes,
            "bytes_delivered_estimate": self.stats.delivered_bytes.load(Ordering::Relaxed),
            "wire": n.wire,
        })
        .to_string()
    }

    fn index_html(&self) -> &'static str {
        dashboard::DASHBOARD_HTML
    }

    fn history_json(&self) -> Option<String> {
        let history = self
            .stats
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(history.json())
    }

    fn metrics_text(&self) -> Option<String> {
        self.metrics
            .render(&self.node.stats(), Some(&self.stats.figures()))
            .map_err(|e| tracing::warn!(error = %e, "cannot write /metrics"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn state_writes_follow_no_planted_link() {
        let dir = std::env::temp_dir().join(format!("starling-state-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = BroadcastState::path_for(&dir.join("key"));
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let state = BroadcastState {
            next_number: 7,
            port: Some(4433),
        };
        state.save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(BroadcastState::load(&path).next_number, 7);
        // A leftover temp file of a crash does not block the next save.
        std::fs::write(&tmp, "next_number=1\n").unwrap();
        BroadcastState {
            next_number: 8,
            port: None,
        }
        .save(&path)
        .unwrap();
        assert_eq!(BroadcastState::load(&path).next_number, 8);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_state_file_that_is_no_small_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("starling-state-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real");
        std::fs::write(&real, "next_number=9\n").unwrap();
        assert_eq!(BroadcastState::load(&real).next_number, 9);
        let link = dir.join("link.state");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let zero = dir.join("zero.state");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.join("fifo.state");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let long = dir.join("long.state");
        std::fs::write(&long, "next_number=9\n".repeat(100)).unwrap();
        // Each returns at once (a FIFO with no writer would block a plain read forever).
        for path in [&link, &zero, &fifo, &long, &dir] {
            assert_eq!(
                BroadcastState::load(path),
                BroadcastState::default(),
                "{}",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_round_trips_and_tolerates_garbage() {
        let dir = std::env::temp_dir().join(format!("starling-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = BroadcastState::path_for(&dir.join("key"));
        assert_eq!(BroadcastState::load(&path), BroadcastState::default());
        let s = BroadcastState {
            next_number: 42,
            port: Some(4433),
        };
        s.save(&path).unwrap();
        assert_eq!(BroadcastState::load(&path), s);
        std::fs::write(&path, "next_number=zz\nport=99999\n").unwrap();
        assert_eq!(BroadcastState::load(&path), BroadcastState::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bitrate_meter_averages_recent_segments() {
        let mut m = BitrateMeter::default();
        assert_eq!(m.add(250_000, Duration::from_secs(1)), 2_000_000);
        assert_eq!(m.add(750_000, Duration::from_secs(1)), 4_000_000);
        for _ in 0..10 {
            m.add(125_000, Duration::from_secs(1));
        }
        assert_eq!(m.add(125_000, Duration::from_secs(1)), 1_000_000);
    }
}
