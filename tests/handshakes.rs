//! Connections that finish the TLS handshake and never send a Hello, from a separate
//! process: 256 of them from 8 loopback addresses (the caps `MAX_HANDSHAKES` and
//! `MAX_HANDSHAKES_PER_IP`), each trying to make the real broadcaster buffer as much as
//! it can on every stream it may open. The broadcaster's resident memory stays within the
//! bound docs/SECURITY.md writes down. And the caps themselves, on a node in this process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use ed25519_dalek::SigningKey;
use harness::{one_stream_at_a_time, start_broadcaster, TempDir};
use starling::stream::{NodeId, Ticket};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loopback addresses the attack comes from.
const ADDRESSES: u8 = 8;
/// Connections held from each address: `MAX_HANDSHAKES_PER_IP`, so 256 in all, `MAX_HANDSHAKES`.
const PER_ADDRESS: usize = 32;
/// The bound docs/SECURITY.md states for all Hello-less connections together, in KiB
/// (256 connections of at most 256 KiB each).
const WRITTEN_BOUND_KIB: u64 = 64 * 1024;
/// How long the attack is kept up; a Hello-less connection lives 5 s, so every slot is
/// refilled a few times.
const ATTACK: Duration = Duration::from_secs(15);
/// Junk offered on each stream the attacker manages to open.
const JUNK_PER_STREAM: usize = 2 * 1024 * 1024;

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One slot of the attack: handshake, then offer junk on every stream quinn lets it open,
/// keep it until the broadcaster closes it, and start again. Returns when `stop` is set.
async fn hold_slot(
    endpoint: quinn::Endpoint,
    target: NodeId,
    addr: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    handshakes: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&round.to_le_bytes());
        let key = SigningKey::from_bytes(&bytes);
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            common::evil::handshake(&endpoint, &key, target, addr),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        handshakes.fetch_add(1, Ordering::Relaxed);
        let mut writers = tokio::task::JoinSet::new();
        // The stream the node reads the Hello from: a length prefix for the largest
        // control frame, and one byte short of its body.
        let first = tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await;
        if let Ok(Ok((mut send, _recv))) = first {
            let mut frame = vec![0u8; 4 + starling::wire::MAX_CONTROL_FRAME - 1];
            frame[..4].copy_from_slice(&(starling::wire::MAX_CONTROL_FRAME as u32).to_be_bytes());
            let accepted = accepted.clone();
            writers.spawn(async move {
                if send.write_all(&frame).await.is_ok() {
                    accepted.fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
                std::future::pending::<()>().await;
                drop(send);
            });
        }
        // Every further stream the node lets us open, each filled as far as flow control allows.
        for i in 0..128 {
            let conn = conn.clone();
            let accepted = accepted.clone();
            writers.spawn(async move {
                let send = if i % 2 == 0 {
                    conn.open_bi().await.ok().map(|(s, _)| s)
                } else {
                    conn.open_uni().await.ok()
                };
                let Some(mut send) = send else { return };
                let junk = vec![0xA5u8; 16 * 1024];
                let mut offered = 0;
                while offered < JUNK_PER_STREAM {
                    match send.write(&junk).await {
                        Ok(n) => {
                            offered += n;
                            accepted.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
                std::future::pending::<()>().await;
            });
        }
        tokio::select! {
            _ = conn.closed() => {}
            _ = async { while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            } } => {}
        }
        writers.abort_all();
        conn.close(0u32.into(), b"done");
    }
}

#[test]
fn hello_less_handshakes_keep_the_broadcasters_memory_within_the_written_bound() {
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("handshakes");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(
        &[
            "--key",
            &key,
            "--http",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ],
        Stdio::null(),
    );
    let ticket = Ticket::decode(&broadcaster.ticket).unwrap();
    let port = ticket
        .addrs
        .first()
        .expect("an address in the ticket")
        .port();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let pid = broadcaster.proc.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (baseline, peak, handshakes, accepted) = runtime.block_on(async {
        // Let the broadcaster settle before the baseline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let baseline = rss_kib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut slots = Vec::new();
        for a in 1..=ADDRESSES {
            let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, a)), 0);
            let endpoint = quinn::Endpoint::client(bind).unwrap();
            for s in 0..PER_ADDRESS {
                slots.push(tokio::spawn(hold_slot(
                    endpoint.clone(),
                    ticket.stream,
                    addr,
                    u64::from(a) * 1000 + s as u64 + 1,
                    stop.clone(),
                    handshakes.clone(),
                    accepted.clone(),
                )));
            }
        }
        let mut peak = baseline;
        let until = Instant::now() + ATTACK;
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for slot in slots {
            let _ = slot.await;
        }
        (
            baseline,
            peak,
            handshakes.load(Ordering::Relaxed),
            accepted.load(Ordering::Relaxed),
        )
    });
    eprintln!(
        "broadcaster RSS {baseline} KiB -> peak {peak} KiB; {handshakes} Hello-less \
         handshakes; {} KiB of junk let through flow control",
        accepted / 1024
    );
    // The attack really ran: every slot completed its handshake at least once.
    assert!(
        handshakes >= (usize::from(ADDRESSES) * PER_ADDRESS) as u64,
        "only {handshakes} handshakes completed"
    );
    assert!(
        peak.saturating_sub(baseline) < WRITTEN_BOUND_KIB,
        "RSS grew by {} KiB, over the written bound of {WRITTEN_BOUND_KIB} KiB",
        peak.saturating_sub(baseline)
    );
    // Nothing past the Hello stream's window is granted to an unadmitted peer.
    let per_connection = accepted / handshakes.max(1);
    assert!(
        per_connection <= u64::from(starling::tls::UNADMITTED_WINDOW),
        "{per_connection} bytes accepted per Hello-less connection"
    );
}

/// What became of one connection attempt.
enum Attempt {
    /// The handshake completed (the node took a slot for it); kept open, no Hello sent.
    Held(quinn::Connection),
    /// The node refused it at once (QUIC `CONNECTION_REFUSED`).
    Refused,
}

/// Dials `target` at `addr` from `endpoint` and reports the outcome; anything but a
/// completed handshake or a refusal fails the test.
async fn attempt(
    endpoint: quinn::Endpoint,
    target: NodeId,
    addr: SocketAddr,
    seed: u64,
) -> Attempt {
    let mut bytes = [9u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let key = SigningKey::from_bytes(&bytes);
    let config = starling::tls::client_config(&key, target.0).unwrap();
    let connecting = endpoint
        .connect_with(config, addr, starling::tls::SERVER_NAME)
        .unwrap();
    match connecting.await {
        Ok(conn) => Attempt::Held(conn),
        Err(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Attempt::Refused
        }
        Err(e) => panic!("attempt {seed}: neither held nor refused: {e}"),
    }
}

/// The per-address cap on a node over real QUIC: of 40 attempts at once from one
/// address, `MAX_HANDSHAKES_PER_IP` are taken into the handshake and the rest refused at
/// once, while another address still gets in. Once the node has closed the Hello-less
/// ones (after its Hello timeout), their slots are free again. The total cap,
/// `MAX_HANDSHAKES`, is checked on `HandshakeSlots` itself (`node::budget`): 256 attempts
/// at once take this machine longer to finish than a slot is held, so counting them here
/// would count the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_per_address_cap_are_refused_and_slots_come_back() {
    use starling::node::budget::MAX_HANDSHAKES_PER_IP;
    const ATTEMPTS: usize = 40;
    let key = SigningKey::from_bytes(&[121; 32]);
    let node = common::nodes::broadcaster(&key, Duration::from_secs(1), None, 1).await;
    let addr = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        node.local_addr().unwrap().port(),
    );
    let target = node.id();
    let from = |a: u8| {
        quinn::Endpoint::client(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, a)), 0))
            .unwrap()
    };
    let (crowd, other) = (from(2), from(3));
    let tasks: Vec<_> = (0..ATTEMPTS as u64)
        .map(|seed| tokio::spawn(attempt(crowd.clone(), target, addr, seed)))
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Attempt::Held(conn) => held.push(conn),
            Attempt::Refused => refused += 1,
        }
    }
    assert_eq!(
        held.len(),
        MAX_HANDSHAKES_PER_IP,
        "slots taken from one address"
    );
    assert_eq!(refused, ATTEMPTS - MAX_HANDSHAKES_PER_IP);
    let beside = attempt(other, target, addr, 1_000).await;
    assert!(
        matches!(beside, Attempt::Held(_)),
        "another address was refused"
    );

    // The node closes each one that sends no Hello; then the address gets in again.
    for conn in &held {
        conn.closed().await;
    }
    let again = attempt(crowd, target, addr, 2_000).await;
    assert!(
        matches!(again, Attempt::Held(_)),
        "a freed slot was not given back"
    );
    common::nodes::shutdown_all([node]).await;
}

/// The connection cap (`max_connections`: 64 for a viewer, 8192 for the broadcaster), at a
/// small number: with it reached, a new attempt is refused in the handshake; once one
/// connection leaves, a new one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused() {
    const CAP: usize = 3;
    let key = SigningKey::from_bytes(&[122; 32]);
    let stream = starling::stream::node_id(&key);
    let mut config = common::nodes::broadcaster_config(&key, Duration::from_secs(1), None, 2);
    config.max_connections = CAP;
    let node = starling::net::Node::spawn(config).await.unwrap();
    let addr = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        node.local_addr().unwrap().port(),
    );
    let mut members = Vec::new();
    for i in 0..CAP {
        let k = SigningKey::from_bytes(&[130 + i as u8; 32]);
        members.push(
            common::evil::Evil::connect(&k, stream, addr, stream)
                .await
                .unwrap(),
        );
    }
    // Every one of them counted (its Hello answered, its connection running).
    let mut counted = false;
    for _ in 0..300 {
        if node.stats().peers == CAP {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "{:?}", node.stats());
    let endpoint =
        quinn::Endpoint::client(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
    let over = attempt(endpoint.clone(), stream, addr, 3_000).await;
    assert!(
        matches!(over, Attempt::Refused),
        "a connection past the cap got in"
    );
    let left = members.pop().unwrap();
    left.conn.close(0u32.into(), b"bye");
    let mut back = false;
    for seed in 0..50 {
        if let Attempt::Held(_) = attempt(endpoint.clone(), stream, addr, 3_100 + seed).await {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the place of a connection that left was not given back"
    );
    common::nodes::shutdown_all([node]).await;
}
