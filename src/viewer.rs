//! The viewer program's body: join the mesh from a ticket, serve local HLS, show status.

use crate::cli::human_bytes;
use crate::http::{self, Catalog};
use crate::mesh::MeshConfig;
use crate::net::{self, Node, NodeConfig, NodeStats, NodeView};
use crate::playlist::PlaylistConfig;
use crate::rate::Rate;
use crate::store;
use crate::stream::Ticket;
use crate::token::{Admission, JoinToken, TokenError};
use crate::wire::Role;
use bytes::Bytes;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections a viewer accepts (its partners are capped far lower by its mesh).
pub const MAX_CONNECTIONS: usize = 64;

/// Everything the viewer needs, from its flags.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// The stream to join.
    pub ticket: Ticket,
    /// Private streams: the join token from the broadcaster.
    pub token: Option<JoinToken>,
    /// Address of the local HLS server.
    pub http: SocketAddr,
    /// QUIC address.
    pub listen: SocketAddr,
    /// Upload cap (None: uncapped).
    pub upload_limit: Option<Rate>,
    /// Leech-only: never upload to other viewers (metered links).
    pub no_upload: bool,
    /// Segments held back behind the newest.
    pub delay: u64,
    /// Segments listed in the playlist.
    pub window: usize,
    /// Redraw a status line on stderr (a terminal); otherwise log now and then.
    pub status_line: bool,
    /// How long to keep serving after the stream ended, so the player can finish.
    pub linger_after_end: Duration,
}

/// Why the viewer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Net(#[from] net::NetError),
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
}

/// Runs a viewer until the stream has ended (and the linger passed) or `shutdown` resolves.
///
/// `on_url` is called once with the playlist URL, as soon as the HTTP server listens.
pub async fn run(
    config: ViewerConfig,
    on_url: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ViewerError> {
    let stream = config.ticket.stream;
    // A token for another stream or already expired is refused here, before any dialling.
    if let Some(token) = &config.token {
        token.verify(&stream, 0, crate::clock::unix_now_s())?;
    }
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    // Until headers tell us the real segment length, assume the default 2 s.
    let mut mesh = MeshConfig::viewer(stream, Duration::from_secs(2), config.delay);
    mesh.uploads = !config.no_upload;
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

    let catalog = Arc::new(ViewerCatalog {
        node: node.view(),
        playlist: PlaylistConfig {
            delay: config.delay,
            window: config.window,
        },
    });
    let http = http::Server::start(config.http, catalog)
        .await
        .map_err(|source| ViewerError::Http {
            addr: config.http,
            source,
        })?;
    let http_addr = http.addr();
    on_url(&format!("http://{http_addr}/live.m3u8"));
    tracing::info!(stream = %stream.short(), quic = ?node.local_addr().ok(), "joining");

    tokio::pin!(shutdown);
    let mut status = StatusLine::new(config.status_line);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ended_at: Option<tokio::time::Instant> = None;
    let mut ever_connected = false;
    let mut wrong_key_ticks = 0u32;
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
                status.show(&stats, node.local_addr().ok());
                let ended = store::lock(&node.store()).ended();
                let complete = ended.is_some_and(|last| stats.newest_segment >= Some(last));
                if complete && ended_at.is_none() {
                    status.clear();
                    tracing::info!("the broadcaster ended the stream");
                    ended_at = Some(tokio::time::Instant::now());
                }
                if ended_at.is_some_and(|t| t.elapsed() >= config.linger_after_end) {
                    break;
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

struct ViewerCatalog {
    node: NodeView,
    playlist: PlaylistConfig,
}

impl Catalog for ViewerCatalog {
    fn playlist(&self) -> Option<String> {
        let live = self.node.live_newest();
        store::lock(&self.node.store()).playlist_at(self.playlist, live)
    }

    fn segment(&self, number: u64) -> Option<Bytes> {
        self.node.segment_data(number)
    }

    fn stats_json(&self) -> String {
        let n = self.node.stats();
        let mut v = serde_json::to_value(&n).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("role".into(), "viewer".into());
            let received = n.bytes_from_peers + n.bytes_from_origin;
            let share = if received == 0 {
                0.0
            } else {
                n.bytes_from_peers as f64 / received as f64
            };
            obj.insert("share_from_peers".into(), share.into());
            let on_time = n.segments_verified.saturating_sub(n.missed_deadlines);
            let judged = n.segments_verified.max(on_time + n.missed_deadlines);
            let continuity = if judged == 0 {
                1.0
            } else {
                on_time as f64 / judged as f64
            };
            obj.insert("continuity".into(), continuity.into());
            let lat = recent_latencies_ms(&self.node);
            obj.insert(
                "latency_ms".into(),
                serde_json::json!({
                    "p50": percentile(&lat, 0.5),
                    "p99": percentile(&lat, 0.99),
                    "max": lat.last().copied().unwrap_or(0.0),
                    "segments": lat.len(),
                }),
            );
        }
        v.to_string()
    }
}

/// For the segments held now: broadcaster publication (its wall clock, from the signed
/// header) → held verified here. Across machines this includes their clock offset.
fn recent_latencies_ms(node: &NodeView) -> Vec<f64> {
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let now = crate::clock::now();
    let shared = node.store();
    let store = store::lock(&shared);
    let mut out: Vec<f64> = store
        .numbers()
        .filter_map(|n| {
            let arrived = store.arrival(n)?;
            let published = store.get(n)?.header.header.published_unix_ms as f64;
            let arrived_wall =
                now_wall - now.saturating_duration_since(arrived).as_secs_f64() * 1000.0;
            Some((arrived_wall - published).max(0.0))
        })
        .collect();
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

/// The one-line status on a terminal, or an occasional log line otherwise.
struct StatusLine {
    terminal: bool,
    last_log: Option<Instant>,
    last_uploaded: (Instant, u64),
    drawn: bool,
    ever_connected: bool,
}

impl StatusLine {
    fn new(terminal: bool) -> StatusLine {
        StatusLine {
            terminal,
            last_log: None,
            last_uploaded: (Instant::now(), 0),
            drawn: false,
            ever_connected: false,
        }
    }

    fn show(&mut self, s: &NodeStats, _quic: Option<SocketAddr>) {
        let now = Instant::now();
        let (t0, up0) = self.last_uploaded;
        let secs = now.duration_since(t0).as_secs_f64().max(0.001);
        let up_rate = Rate(((s.bytes_uploaded.saturating_sub(up0)) as f64 * 8.0 / secs) as u64);
        self.last_uploaded = (now, s.bytes_uploaded);
        let received = s.bytes_from_peers + s.bytes_from_origin;
        let share = if received == 0 {
            0.0
        } else {
            100.0 * s.bytes_from_peers as f64 / received as f64
        };
        self.ever_connected |= s.origin_connected;
        let origin = match (s.origin_connected, self.ever_connected) {
            (true, _) => "",
            (false, false) => " (connecting to the broadcaster)",
            (false, true) => " (broadcaster unreachable, retrying)",
        };
        let line = format!(
            "peers {}{} | buffered {} seg | from peers {:.0}% | up {} ({} total) | missed {}",
            s.peers,
            origin,
            s.buffered_segments,
            share,
            if up_rate.0 == 0 {
                "0 kbit/s".to_string()
            } else {
                up_rate.to_string()
            },
            human_bytes(s.bytes_uploaded),
            s.missed_deadlines,
        );
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_log = Some(now);
            tracing::info!("{line}");
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}
