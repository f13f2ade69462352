//! Crowd benchmark: what a flash crowd costs the broadcaster's memory.
//!
//! `cargo bench --bench crowd -- [--viewers 8000] [--rate 4000] [--hold-s 10]`
//!
//! This process runs a real broadcaster node (its real connection cap,
//! [`starling::broadcaster::MAX_CONNECTIONS`], and partner cap). A second process (this
//! binary again, with `--crowd PORT`) dials it `--viewers` times at `--rate` dials a second,
//! each with a fresh key: it finishes the handshake, sends a viewer's `Hello`, opens its
//! flow control as an admitted viewer does (so the broadcaster may open streams to it) and
//! holds the connection for `--hold-s` seconds, reading nothing. The broadcaster keeps partners up to
//! its cap and turns the rest away with a peer sample, as it does for real viewers. The
//! crowd runs in its own process so the broadcaster's resident memory is measured alone,
//! every 20 ms.
//!
//! Nothing is published: a crowd that reads nothing would stall the seeding pushes, and
//! the question here is the cost of the connections themselves.
//!
//! Prints a human summary on stderr and one JSON object as the last stdout line.

use ed25519_dalek::SigningKey;
use serde_json::json;
use starling::mesh::MeshConfig;
use starling::net::{Node, NodeConfig};
use starling::stream::node_id;
use starling::tls;
use starling::wire::{self, Control, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Loopback addresses the crowd dials from.
const SOURCE_ADDRESSES: u8 = 128;

/// The broadcaster's key: fixed, so the crowd process can pin it without being told.
const KEY: [u8; 32] = [7; 32];

#[derive(Debug, Clone, Copy)]
struct Args {
    viewers: u32,
    rate: u32,
    hold_s: u64,
    /// Set in the crowd process: the broadcaster's port.
    crowd: Option<u16>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        viewers: 8000,
        rate: 4000,
        hold_s: 10,
        crowd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--viewers" => a.viewers = value.parse().map_err(|_| bad())?,
            "--rate" => a.rate = value.parse().map_err(|_| bad())?,
            "--hold-s" => a.hold_s = value.parse().map_err(|_| bad())?,
            "--crowd" => a.crowd = Some(value.parse().map_err(|_| bad())?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.rate == 0 {
        return Err("--rate must be above 0".into());
    }
    Ok(a)
}

/// This process's resident memory in KiB (0 if /proc is unreadable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crowd: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crowd: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let ok = match a.crowd {
        Some(port) => rt.block_on(crowd(a, port)),
        None => rt.block_on(broadcast(a)),
    };
    if !ok {
        std::process::exit(1);
    }
}

/// The crowd process: dials, says Hello, holds; prints how many handshakes completed.
async fn crowd(a: Args, port: u16) -> bool {
    let target = node_id(&SigningKey::from_bytes(&KEY));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The broadcaster lets one address have only a few handshakes in progress, as a
    // flood guard: the crowd dials from many loopback addresses, as a real crowd would.
    let mut endpoints = Vec::new();
    for k in 0..SOURCE_ADDRESSES {
        let bind = SocketAddr::from(([127, 0, 1, k + 1], 0));
        match tls::endpoint(&SigningKey::from_bytes(&[8; 32]), bind) {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                eprintln!("crowd: endpoint at {bind}: {e}");
                return false;
            }
        }
    }
    let hello = wire::encode(&Control::Hello(Box::new(wire::Hello {
        version: wire::PROTOCOL_VERSION,
        stream: target,
        role: Role::Viewer,
        uploads: true,
        upload_bps: None,
        token: None,
        token_epoch: 0,
        observed: addr,
        local: None,
        public: None,
        reach: wire::Reach::Unknown,
        site: None,
    })));
    let start = tokio::time::Instant::now();
    let hold = Duration::from_secs(a.hold_s);
    let mut dials = tokio::task::JoinSet::new();
    for i in 0..a.viewers {
        let at = start + Duration::from_secs_f64(f64::from(i) / f64::from(a.rate));
        let endpoint = endpoints[i as usize % endpoints.len()].clone();
        let hello = hello.clone();
        dials.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[4] = 9;
            let config = tls::client_config(&SigningKey::from_bytes(&key), target.0).ok()?;
            let conn = endpoint
                .connect_with(config, addr, tls::SERVER_NAME)
                .ok()?
                .await
                .ok()?;
            let (mut send, _recv) = conn.open_bi().await.ok()?;
            send.write_all(&hello).await.ok()?;
            // Its Hello is out: open flow control as a real viewer does once admitted, so the
            // broadcaster may open streams to it (pushes, requests) as it would to one.
            tls::admit(&conn);
            // Held open (or until the broadcaster closes it), reading nothing.
            let _ = tokio::time::timeout(hold, conn.closed()).await;
            Some(())
        });
    }
    let mut handshakes = 0u32;
    while let Some(r) = dials.join_next().await {
        if matches!(r, Ok(Some(()))) {
            handshakes += 1;
        }
    }
    println!("{handshakes}");
    true
}

/// The broadcaster process: runs the node, starts the crowd, samples its own memory.
async fn broadcast(a: Args) -> bool {
    let key = SigningKey::from_bytes(&KEY);
    let stream = node_id(&key);
    let node = match Node::spawn(NodeConfig {
        key,
        stream,
        role: Role::Broadcaster,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        origin_addrs: vec![],
        upload_limit: None,
        mesh: MeshConfig::broadcaster(stream, Duration::from_secs(1)),
        store_capacity: 64,
        seed: 1,
        max_connections: starling::broadcaster::MAX_CONNECTIONS,
        admission: Default::default(),
    })
    .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("crowd: broadcaster: {e}");
            return false;
        }
    };
    let port = match node.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => {
            eprintln!("crowd: local addr: {e}");
            return false;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("crowd: own path: {e}");
            return false;
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut child = match tokio::process::Command::new(exe)
        .args(["--viewers", &a.viewers.to_string()])
        .args(["--rate", &a.rate.to_string()])
        .args(["--hold-s", &a.hold_s.to_string()])
        .args(["--crowd", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crowd: starting the crowd: {e}");
            return false;
        }
    };
    let stdout = child.stdout.take();
    let started = Instant::now();
    let (mut peak, mut partners_peak, mut peak_at) = (before, 0usize, Duration::ZERO);
    loop {
        tokio::select! {
            _ = child.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let rss = rss_kib();
                if rss > peak {
                    (peak, peak_at) = (rss, started.elapsed());
                }
                partners_peak = partners_peak.max(node.stats().peers);
            }
        }
    }
    let handshakes: u32 = match stdout {
        Some(mut out) => {
            use tokio::io::AsyncReadExt;
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s.trim().parse().unwrap_or(0)
        }
        None => 0,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let partners_after = node.stats().peers;
    let mb = |kib: u64| kib as f64 / 1024.0;
    // Partners are most of what is held at the peak (turned-away viewers hold on for
    // 300 ms each), so this bounds one connection's cost from above.
    let per_partner_kb = if partners_peak == 0 {
        0.0
    } else {
        peak.saturating_sub(before) as f64 / partners_peak as f64
    };
    eprintln!(
        "crowd: {} dials at {}/s, {handshakes} handshakes; broadcaster rss {:.1} MB before, \
         peak {:.1} MB at {:.1} s ({partners_peak} partners at most), {:.1} MB 2 s after the \
         crowd left ({partners_after} partners)",
        a.viewers,
        a.rate,
        mb(before),
        mb(peak),
        peak_at.as_secs_f64(),
        mb(after)
    );
    println!(
        "{}",
        json!({
            "viewers": a.viewers,
            "rate": a.rate,
            "handshakes": handshakes,
            "partners_peak": partners_peak,
            "rss_before_mb": mb(before),
            "rss_peak_mb": mb(peak),
            "rss_after_mb": mb(after),
            "peak_kb_per_partner": per_partner_kb,
        })
    );
    true
}
