//! Swarm benchmark: a broadcaster and N viewers in one process over real QUIC on
//! loopback, each viewer behind its own upload limiter, fed a synthetic stream.
//!
//! `cargo bench --bench swarm -- --viewers 100 --seconds 60 --bitrate 2M --segment-ms 1000
//!  --viewer-upload 3M --origin-upload 8M [--join-window-ms 2000] [--join-after 0] [--churn 30]
//!  [--seed 1] [--delay 3] [--baseline http]`
//!
//! Viewers join a running stream, as real ones do: publishing starts first, and the
//! viewers start evenly spread over the `--join-window-ms` after segment `--join-after` is
//! published (from their own task, so the publishing schedule never waits for them). With
//! the default 0 they all arrive as the stream starts (a flash crowd at second zero, the
//! hardest case for join: nobody but the broadcaster holds anything yet); with
//! `--join-after 3` they join a stream that already fills a playlist. A viewer's
//! join time is from its start to the first moment its playlist is playable, checked
//! every 25 ms.
//!
//! Prints a human summary on stderr and one JSON object as the last stdout line.
//! `--baseline http` also runs the same stream and viewers as plain client/server
//! HLS-style pulls (every viewer fetches the newest segment number, then each segment
//! from `delay` behind it, from the broadcaster over HTTP; its clients start over the
//! same join window, and join is from start to the first segment fetched) and reports
//! it under `baseline`.

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use serde_json::json;
use starling::mesh::MeshConfig;
use starling::net::{Node, NodeConfig};
use starling::playlist::PlaylistConfig;
use starling::quantile::percentile;
use starling::rate::Rate;
use starling::store;
use starling::stream::{node_id, sign_segment, StreamId, VerifiedSegment};
use starling::wire::Role;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[allow(unreachable_pub)]
#[path = "../tests/common/payload.rs"]
mod payload;
use payload::payload;
#[path = "../tests/common/usage.rs"]
mod usage;

#[derive(Debug, Clone)]
struct Args {
    viewers: usize,
    seconds: u64,
    bitrate: u64,
    segment_ms: u64,
    viewer_upload: u64,
    origin_upload: u64,
    churn: f64,
    seed: u64,
    delay: u64,
    join_window_ms: u64,
    join_after: u64,
    baseline_http: bool,
}

/// How often viewers' playlists are checked for playability: the join figures'
/// resolution.
const JOIN_SAMPLE: Duration = Duration::from_millis(25);
/// Segments a viewer's playlist lists at most (what the real viewer uses).
const PLAYLIST_WINDOW: usize = 8;

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        viewers: 100,
        seconds: 60,
        bitrate: 2_000_000,
        segment_ms: 1000,
        viewer_upload: 3_000_000,
        origin_upload: 8_000_000,
        churn: 0.0,
        seed: 1,
        delay: 3,
        join_window_ms: 2000,
        join_after: 0,
        baseline_http: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let rate = |v: String| v.parse::<Rate>().map(|r| r.0).map_err(|e| e.to_string());
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--viewers" => a.viewers = num(val()?)? as usize,
            "--seconds" => a.seconds = num(val()?)?,
            "--bitrate" => a.bitrate = rate(val()?)?,
            "--segment-ms" => a.segment_ms = num(val()?)?.max(100),
            "--viewer-upload" => a.viewer_upload = rate(val()?)?,
            "--origin-upload" => a.origin_upload = rate(val()?)?,
            "--churn" => a.churn = val()?.parse().map_err(|e| format!("--churn: {e}"))?,
            "--seed" => a.seed = num(val()?)?,
            "--delay" => a.delay = num(val()?)?.max(1),
            "--join-window-ms" => a.join_window_ms = num(val()?)?,
            "--join-after" => a.join_after = num(val()?)?,
            "--baseline" => {
                let v = val()?;
                if v != "http" {
                    return Err(format!("unknown baseline {v:?} (only 'http')"));
                }
                a.baseline_http = true;
            }
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

struct Viewer {
    /// None once it left.
    node: Option<Node>,
    /// When it started (before its endpoint was set up).
    joined: Instant,
    /// First moment its playlist was playable.
    playable: Option<Instant>,
    /// Segment → arrival, sampled from the store before it is pruned.
    arrivals: BTreeMap<u64, Instant>,
    left: Option<Instant>,
    bytes_received: u64,
    control_bytes: u64,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The viewers of a run, shared by the publisher, the joiners and the join sampler.
type Viewers = Arc<Mutex<Vec<Viewer>>>;

/// Locks the viewers; a panicked holder leaves whole records behind, so the data stays usable.
fn lock(viewers: &Viewers) -> MutexGuard<'_, Vec<Viewer>> {
    viewers.lock().unwrap_or_else(|e| e.into_inner())
}

async fn spawn_viewer(a: &Args, stream: StreamId, origin: SocketAddr, seed: u64) -> Viewer {
    let seg = Duration::from_millis(a.segment_ms);
    let joined = Instant::now();
    let node = Node::spawn(NodeConfig {
        key: SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        stream,
        role: Role::Viewer,
        listen: loopback(),
        origin_addrs: vec![origin],
        upload_limit: Some(Rate(a.viewer_upload)),
        mesh: MeshConfig::viewer(stream, seg, a.delay),
        // What the real viewer keeps (window 8 + delay + 16, at least 32).
        store_capacity: (8 + a.delay as usize + 16).max(32),
        seed,
        max_connections: 64,
        admission: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("viewer: {e}"));
    Viewer {
        node: Some(node),
        joined,
        playable: None,
        arrivals: BTreeMap::new(),
        left: None,
        bytes_received: 0,
        control_bytes: 0,
    }
}

/// Records when each held segment arrived, before the store prunes it. The store
/// keeps the arrival time, so this only has to run more often than the store turns over.
fn sample_arrivals(v: &mut Viewer) {
    let Some(node) = &v.node else { return };
    let shared = node.store();
    let s = store::lock(&shared);
    for n in s.numbers() {
        if let Some(t) = s.arrival(n) {
            v.arrivals.entry(n).or_insert(t);
        }
    }
}

/// Notes the first moment the viewer's playlist is playable (lists a segment).
fn check_playable(v: &mut Viewer, delay: u64) {
    if v.playable.is_some() {
        return;
    }
    let Some(node) = &v.node else { return };
    let live = node.live_newest();
    let shared = node.store();
    let config = PlaylistConfig {
        delay,
        window: PLAYLIST_WINDOW,
    };
    if store::lock(&shared).playlist_at(config, live).is_some() {
        v.playable = Some(Instant::now());
    }
}

/// When the `i`-th joiner starts: the joiners spread evenly over the join window from `t0`.
fn join_at(a: &Args, t0: Instant, i: usize) -> tokio::time::Instant {
    let window = Duration::from_millis(a.join_window_ms);
    let at = t0 + window.mul_f64(i as f64 / a.viewers.max(1) as f64);
    tokio::time::Instant::from_std(at)
}

/// Runs `join(i)` for each of the `a.viewers` joiners, each in its own task started at
/// its moment in the join window after segment 0 is published (`t0`), so a slow start
/// delays neither the publisher nor the next joiner. Yields what the joiners returned.
fn spread_joins<T, F, Fut>(a: &Args, t0: oneshot::Receiver<Instant>, join: F) -> JoinHandle<Vec<T>>
where
    F: Fn(usize) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let a = a.clone();
    tokio::spawn(async move {
        let Ok(t0) = t0.await else {
            return Vec::new();
        };
        let mut started = Vec::with_capacity(a.viewers);
        for i in 0..a.viewers {
            tokio::time::sleep_until(join_at(&a, t0, i)).await;
            started.push(tokio::spawn(join(i)));
        }
        let mut out = Vec::with_capacity(started.len());
        for h in started {
            if let Ok(t) = h.await {
                out.push(t);
            }
        }
        out
    })
}

/// Starts a viewer and adds it to `viewers` once it is up.
async fn join_viewer(a: Args, stream: StreamId, origin: SocketAddr, seed: u64, viewers: Viewers) {
    let v = spawn_viewer(&a, stream, origin, seed).await;
    lock(&viewers).push(v);
}

/// Checks every [`JOIN_SAMPLE`] which viewers became playable, so join is measured to
/// that resolution rather than once per segment. Runs until aborted.
fn spawn_join_sampler(viewers: Viewers, delay: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(JOIN_SAMPLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for v in lock(&viewers).iter_mut() {
                check_playable(v, delay);
            }
        }
    })
}

struct Published {
    at: Instant,
    len: u64,
}

fn report(
    a: &Args,
    published: &BTreeMap<u64, Published>,
    viewers: &[Viewer],
    origin_bytes: u64,
    origin_control: u64,
) -> serde_json::Value {
    let seg = Duration::from_millis(a.segment_ms);
    let budget = seg * a.delay as u32;
    let stream_bytes: u64 = published.values().map(|p| p.len).sum();
    let delivered: u64 = viewers.iter().map(|v| v.bytes_received).sum();
    let control: u64 = viewers.iter().map(|v| v.control_bytes).sum::<u64>() + origin_control;
    let mut latencies = Vec::new();
    let mut on_time = 0u64;
    let mut counted = 0u64;
    for v in viewers {
        for (n, p) in published {
            // Present for this segment: joined at least one playout budget before it was
            // published, and had not left by its deadline.
            let deadline = p.at + budget;
            if p.at < v.joined + budget || v.left.is_some_and(|l| l < deadline) {
                continue;
            }
            counted += 1;
            if let Some(t) = v.arrivals.get(n) {
                latencies.push(t.saturating_duration_since(p.at).as_secs_f64() * 1000.0);
                if *t <= deadline {
                    on_time += 1;
                }
            }
        }
    }
    let mut joins: Vec<f64> = viewers
        .iter()
        .filter_map(|v| v.playable.map(|p| (p - v.joined).as_secs_f64() * 1000.0))
        .collect();
    let (cpu_s, peak_rss_mb) = usage::process_usage();
    json!({
        "viewers": a.viewers,
        "seconds": a.seconds,
        "bitrate_bps": a.bitrate,
        "segment_ms": a.segment_ms,
        "stream_bytes": stream_bytes,
        "origin_bytes": origin_bytes,
        "origin_copies": if stream_bytes == 0 { 0.0 } else { origin_bytes as f64 / stream_bytes as f64 },
        "delivered_bytes": delivered,
        "offload": if delivered == 0 { 0.0 } else { 1.0 - origin_bytes as f64 / delivered as f64 },
        "continuity": if counted == 0 { 0.0 } else { on_time as f64 / counted as f64 },
        "latency_ms": {
            "p50": percentile(&mut latencies, 0.50),
            "p95": percentile(&mut latencies, 0.95),
            "p99": percentile(&mut latencies, 0.99),
            "max": percentile(&mut latencies, 1.0),
        },
        "join_ms": { "p50": percentile(&mut joins, 0.50), "p99": percentile(&mut joins, 0.99) },
        "control_overhead": if delivered == 0 { 0.0 } else { control as f64 / delivered as f64 },
        "cpu_s": cpu_s,
        "peak_rss_mb": peak_rss_mb,
    })
}

async fn run_mesh(a: &Args) -> serde_json::Value {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let key = SigningKey::generate(&mut rng);
    let stream = node_id(&key);
    let seg = Duration::from_millis(a.segment_ms);
    let broadcaster = Node::spawn(NodeConfig {
        key: key.clone(),
        stream,
        role: Role::Broadcaster,
        listen: loopback(),
        origin_addrs: vec![],
        upload_limit: Some(Rate(a.origin_upload)),
        mesh: MeshConfig::broadcaster(stream, seg),
        store_capacity: 64,
        seed: a.seed,
        max_connections: 8192,
        admission: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("broadcaster: {e}"));
    let origin = broadcaster
        .local_addr()
        .unwrap_or_else(|e| panic!("local addr: {e}"));
    let viewers: Viewers = Default::default();
    let (first_published, t0) = oneshot::channel();
    let mut first_published = Some(first_published);
    let joiners = spread_joins(a, t0, {
        let (a, viewers) = (a.clone(), viewers.clone());
        move |i| {
            let seed = a.seed * 1000 + i as u64;
            join_viewer(a.clone(), stream, origin, seed, viewers.clone())
        }
    });
    let sampler = spawn_join_sampler(viewers.clone(), a.delay);
    let mut departed = Vec::new();
    let mut replacements = Vec::new();
    let seg_len = (a.bitrate * a.segment_ms / 8000) as usize;
    let mut published = BTreeMap::new();
    let start = Instant::now();
    let total = a.seconds * 1000 / a.segment_ms;
    // Churn: viewers leaving (abruptly) and as many joining, spread evenly.
    let churn_per_segment = a.churn / 100.0 * a.viewers as f64 * a.segment_ms as f64 / 60_000.0;
    let mut churn_debt = 0.0;
    let mut next_seed = a.seed * 1000 + a.viewers as u64;
    for n in 0..total {
        let at = start + seg * (n as u32 + 1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        let data = payload(n, seg_len);
        let h = sign_segment(&key, n, a.segment_ms as u32, 0, false, &data)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        let s = VerifiedSegment::verify(&stream, h, data).unwrap_or_else(|e| panic!("{e}"));
        published.insert(
            n,
            Published {
                at: Instant::now(),
                len: seg_len as u64,
            },
        );
        broadcaster.publish(s).await;
        if n >= a.join_after {
            if let Some(tx) = first_published.take() {
                let _ = tx.send(Instant::now());
            }
        }
        let mut vs = lock(&viewers);
        for v in vs.iter_mut() {
            sample_arrivals(v);
        }
        churn_debt += churn_per_segment;
        while churn_debt >= 1.0 && !vs.is_empty() {
            churn_debt -= 1.0;
            let idx = rng.gen_range(0..vs.len());
            let mut gone = vs.swap_remove(idx);
            sample_arrivals(&mut gone);
            check_playable(&mut gone, a.delay);
            gone.left = Some(Instant::now());
            if let Some(node) = gone.node.take() {
                let st = node.stats();
                gone.bytes_received = st.bytes_from_peers + st.bytes_from_origin;
                gone.control_bytes = st.control_bytes;
                node.kill();
            }
            departed.push(gone);
            // The newcomer is set up in its own task, so publishing stays on time.
            let newcomer = join_viewer(a.clone(), stream, origin, next_seed, viewers.clone());
            replacements.push(tokio::spawn(newcomer));
            next_seed += 1;
        }
    }
    // Joiners still starting (a window longer than the run) get the tail too.
    let _ = joiners.await;
    for r in replacements {
        let _ = r.await;
    }
    // Let the tail arrive.
    let tail = Instant::now() + seg * (a.delay as u32 + 1);
    while Instant::now() < tail {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for v in lock(&viewers).iter_mut() {
            sample_arrivals(v);
        }
    }
    sampler.abort();
    let _ = sampler.await;
    let mut viewers = std::mem::take(&mut *lock(&viewers));
    let (mut peers, mut busy, mut missed, mut bans, mut live) = (0, 0, 0, 0, 0);
    for v in viewers.iter_mut() {
        check_playable(v, a.delay);
        if let Some(node) = &v.node {
            let st = node.stats();
            v.bytes_received = st.bytes_from_peers + st.bytes_from_origin;
            v.control_bytes = st.control_bytes;
            peers += st.peers;
            busy += st.busy_replies;
            missed += st.missed_deadlines;
            bans += st.bans;
            live += 1;
        }
    }
    eprintln!(
        "swarm: mean partners {:.1}, busy replies {busy}, missed deadlines {missed}, bans {bans}",
        peers as f64 / live.max(1) as f64
    );
    let b = broadcaster.stats();
    viewers.extend(departed);
    let never = viewers.iter().filter(|v| v.playable.is_none()).count();
    if never > 0 {
        eprintln!("swarm: {never} viewers never had a playable playlist (left out of join_ms)");
    }
    let out = report(a, &published, &viewers, b.bytes_uploaded, b.control_bytes);
    for v in viewers {
        if let Some(node) = v.node {
            node.kill();
        }
    }
    broadcaster.kill();
    out
}

/// One HTTP/1.1 GET of `path` on a fresh connection: the body, if the answer is 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.ok()?;
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    Some(resp.split_off(head_end + 4))
}

/// One baseline client, started at its moment in the join window: like an HLS player
/// it reads where live is (`/newest`, in place of a playlist), starts `delay` segments
/// behind it, and polls for each next segment.
async fn http_client(
    addr: SocketAddr,
    delay: u64,
    total: u64,
    end: Instant,
) -> (Instant, Option<Instant>, BTreeMap<u64, Instant>, u64) {
    let joined = Instant::now();
    let mut arrivals = BTreeMap::new();
    let mut received = 0u64;
    let mut next = None;
    let mut playable = None;
    while Instant::now() < end && next.is_none_or(|n| n < total) {
        let Some(n) = next else {
            let newest = http_get(addr, "/newest")
                .await
                .and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok());
            match newest {
                Some(newest) => next = Some(newest.saturating_sub(delay)),
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        match http_get(addr, &format!("/seg/{n}.ts")).await {
            Some(body) => {
                arrivals.insert(n, Instant::now());
                received += body.len() as u64;
                playable.get_or_insert_with(Instant::now);
                next = Some(n + 1);
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    (joined, playable, arrivals, received)
}

/// The baseline: plain client/server, every viewer pulls every segment over HTTP.
async fn run_http_baseline(a: &Args) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seg = Duration::from_millis(a.segment_ms);
    let seg_len = (a.bitrate * a.segment_ms / 8000) as usize;
    let store: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, Bytes>>> = Default::default();
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (store, served) = (store.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (store, served) = (store.clone(), served.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 512];
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = req.split_whitespace().nth(1).unwrap_or("");
                    let num = path
                        .strip_prefix("/seg/")
                        .and_then(|p| p.strip_suffix(".ts"))
                        .and_then(|p| p.parse::<u64>().ok());
                    let (body, media) = match num {
                        Some(n) => (store.lock().ok().and_then(|s| s.get(&n).cloned()), true),
                        // Where live is, standing in for a playlist: not media, not counted.
                        None if path == "/newest" => {
                            let newest = store.lock().ok().and_then(|s| s.keys().last().copied());
                            (newest.map(|n| Bytes::from(n.to_string())), false)
                        }
                        None => (None, false),
                    };
                    match body {
                        Some(b) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            if sock.write_all(&b).await.is_ok() && media {
                                served.fetch_add(
                                    b.len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                            }
                        }
                        None => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                        }
                    }
                });
            }
        });
    }
    let start = Instant::now();
    let total = a.seconds * 1000 / a.segment_ms;
    let published: std::sync::Arc<std::sync::Mutex<BTreeMap<u64, Instant>>> = Default::default();
    let (first_published, t0) = oneshot::channel();
    let mut first_published = Some(first_published);
    let (delay, end) = (a.delay, start + seg * (total as u32 + 2));
    let clients = spread_joins(a, t0, move |_| http_client(addr, delay, total, end));
    for n in 0..total {
        let at = start + seg * (n as u32 + 1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        if let Ok(mut s) = store.lock() {
            s.insert(n, payload(n, seg_len));
        }
        if let Ok(mut p) = published.lock() {
            p.insert(n, Instant::now());
        }
        if n >= a.join_after {
            if let Some(tx) = first_published.take() {
                let _ = tx.send(Instant::now());
            }
        }
    }
    let viewers = clients.await.unwrap_or_default();
    let published: BTreeMap<u64, Published> = published
        .lock()
        .map(|p| {
            p.iter()
                .map(|(n, at)| {
                    (
                        *n,
                        Published {
                            at: *at,
                            len: seg_len as u64,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // The same records as the mesh run (with no node behind them), so one report serves both.
    let records: Vec<Viewer> = viewers
        .into_iter()
        .map(|(joined, playable, arrivals, received)| Viewer {
            node: None,
            joined,
            playable,
            arrivals,
            left: None,
            bytes_received: received,
            control_bytes: 0,
        })
        .collect();
    report(
        a,
        &published,
        &records,
        served.load(std::sync::atomic::Ordering::Relaxed),
        0,
    )
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("swarm: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarm: {e}");
            std::process::exit(1);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        starling::cli::init_logging();
    }
    let wall = Instant::now();
    let mut out = rt.block_on(run_mesh(&a));
    eprintln!(
        "swarm: mesh run took {:.1} s wall",
        wall.elapsed().as_secs_f64()
    );
    if a.baseline_http {
        let base = rt.block_on(run_http_baseline(&a));
        if let Some(obj) = out.as_object_mut() {
            obj.insert("baseline".into(), base);
        }
    }
    eprintln!(
        "swarm: {} viewers, origin copies {}, continuity {}, latency p99 {} ms, join p99 {} ms",
        a.viewers,
        out["origin_copies"],
        out["continuity"],
        out["latency_ms"]["p99"],
        out["join_ms"]["p99"]
    );
    println!("{out}");
    // Nodes were killed, not drained; exit without waiting for their tasks.
    std::process::exit(0);
}
