//! One address floods a viewer: 1,000 connection attempts (most finishing the handshake
//! with fresh keys, some abandoned half-way) and 10,000 requests. The viewer's memory
//! stays bounded and the stream keeps reaching another honest viewer. A control flooder is
//! banned. And each per-connection cap holds at its number: requests served at once
//! (`SERVES_PER_CONNECTION`), pushes taken at once (`PUSHES_PER_CONNECTION`), control
//! messages queued to a peer that does not read (the control queue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::evil::{handshake, Evil};
use common::nodes::{broadcaster, loopback, publish, shutdown_all, viewer, wait_for};
use ed25519_dalek::SigningKey;
use starling::mesh::MeshConfig;
use starling::stream::node_id;
use starling::tls;
use starling::wire::{self, Control, Reply};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SEGMENT: Duration = Duration::from_millis(500);

fn payload(n: u64) -> Bytes {
    common::payload::payload(n, 50_000)
}

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_leaves_memory_bounded_and_the_stream_playing() {
    let key = SigningKey::from_bytes(&[31; 32]);
    let stream = node_id(&key);
    let origin = broadcaster(&key, SEGMENT, None, 1).await;
    let mut viewers = Vec::new();
    for i in 0..2u8 {
        let mesh = MeshConfig::viewer(stream, SEGMENT, 3);
        viewers.push(
            viewer(
                SigningKey::from_bytes(&[32 + i; 32]),
                &origin,
                mesh,
                10 + i as u64,
            )
            .await,
        );
    }
    let target = viewers[0].id();
    let addr = SocketAddr::from(([127, 0, 0, 1], viewers[0].local_addr().unwrap().port()));
    let mut next = 0u64;
    for _ in 0..4 {
        publish(&origin, &key, next, SEGMENT, payload(next)).await;
        next += 1;
        tokio::time::sleep(SEGMENT).await;
    }
    let before = rss_kib();

    // The stream goes on during the flood.
    let pacer = {
        let (origin_view, key) = (origin.view(), key.clone());
        tokio::spawn(async move {
            let mut n = 4u64;
            loop {
                let h =
                    starling::stream::sign_segment(&key, n, 500, 0, false, &payload(n)).unwrap();
                let seg = starling::stream::VerifiedSegment::verify(&node_id(&key), h, payload(n))
                    .unwrap();
                origin_view.publish(seg).await;
                n += 1;
                tokio::time::sleep(SEGMENT).await;
            }
        })
    };

    // 1,000 connection attempts from one endpoint (one address): every tenth is dropped
    // half-way through the handshake, the rest finish it with a fresh key each and send
    // a Hello; 50 at a time.
    let mut peak = before;
    let endpoint = tls::endpoint(&SigningKey::from_bytes(&[40; 32]), loopback()).unwrap();
    let mut held = Vec::new();
    for wave in 0..20u32 {
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..50u32 {
            let endpoint = endpoint.clone();
            let fresh = SigningKey::from_bytes(&{
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&(wave * 50 + i).to_be_bytes());
                b[4] = 1;
                b
            });
            attempts.spawn(async move {
                if i % 10 == 0 {
                    let config = tls::client_config(&fresh, target.0).unwrap();
                    let connecting = endpoint
                        .connect_with(config, addr, tls::SERVER_NAME)
                        .unwrap();
                    // Abandon it before it completes.
                    drop(tokio::time::timeout(Duration::from_millis(1), connecting).await);
                    return None;
                }
                let conn = handshake(&endpoint, &fresh, target, addr).await.ok()?;
                let (mut send, recv) = conn.open_bi().await.ok()?;
                send.write_all(&starling::wire::encode(&common::evil::hello(stream)))
                    .await
                    .ok()?;
                Some((conn, send, recv))
            });
        }
        while let Some(r) = attempts.join_next().await {
            if let Some(c) = r.unwrap() {
                held.push(c);
            }
        }
        peak = peak.max(rss_kib());
    }

    // The handshake flood's connections leave (the viewer turned them away as its partner
    // set filled); then 10,000 requests over one connection, 100 at a time.
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooder = Arc::new(
        Evil::connect(&SigningKey::from_bytes(&[41; 32]), target, addr, stream)
            .await
            .unwrap(),
    );
    let mut answered = 0u32;
    for _ in 0..100 {
        let mut burst = tokio::task::JoinSet::new();
        for j in 0..100u64 {
            let flooder = flooder.clone();
            burst.spawn(async move { flooder.request(j % 4).await });
        }
        while let Some(r) = burst.join_next().await {
            if matches!(r.unwrap(), Some((Reply::Part { .. } | Reply::Busy, _))) {
                answered += 1;
            }
        }
        peak = peak.max(rss_kib());
    }
    let flood_end = next.max(4);
    // Valid requests, however many, are throttled (Busy), not punished.
    assert_eq!(flooder.conn.close_reason(), None, "the flooder was dropped");

    // The other honest viewer kept up: it holds segments published during and after the flood.
    let published = origin.live_newest().unwrap_or(flood_end);
    let honest = std::slice::from_ref(&viewers[1]);
    assert!(
        wait_for(honest, Duration::from_secs(20), |s| s
            .newest()
            .is_some_and(|n| n >= published + 2))
        .await,
        "the stream stopped for the other viewer"
    );
    assert!(
        wait_for(&viewers, Duration::from_secs(20), |s| s
            .newest()
            .is_some_and(|n| n >= published + 2))
        .await,
        "the flooded viewer stopped receiving"
    );
    pacer.abort();
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "rss before {} MiB, peak {} MiB (+{grown_mib} MiB), {answered} of 10000 requests answered",
        before / 1024,
        peak / 1024
    );
    assert!(
        answered > 5_000,
        "most of the flood was never answered (Busy or served): {answered}"
    );
    // Generous: the caps keep it to tens of MiB; with none, 1,000 live connections at
    // a few hundred KiB each plus their tasks and buffers pass this.
    assert!(
        grown_mib < 200,
        "memory grew by {grown_mib} MiB under the flood"
    );
    let stats = viewers[0].stats();
    assert_eq!(stats.rejected_segments, 0);
    // It served the flood without a cap: its slots were started (and learned from).
    let slots = stats.upload_slots;
    assert!(
        slots.off_lan.or(slots.lan).is_some(),
        "no upload path started: {stats:?}"
    );
    shutdown_all(viewers.into_iter().chain([origin])).await;
}

/// One admitted peer floods the broadcaster's control stream with `Have`s, buffer maps
/// and peer samples, as fast as QUIC carries them. It is disconnected and banned once
/// past its budget (`node::budget`), refused when it comes back, and an honest viewer
/// gets every segment published during and after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_flooder_is_banned_and_an_honest_viewer_keeps_every_segment() {
    let key = SigningKey::from_bytes(&[51; 32]);
    let stream = node_id(&key);
    let origin = broadcaster(&key, SEGMENT, None, 2).await;
    let honest = viewer(
        SigningKey::from_bytes(&[52; 32]),
        &origin,
        MeshConfig::viewer(stream, SEGMENT, 3),
        12,
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], origin.local_addr().unwrap().port()));
    for n in 0..2 {
        publish(&origin, &key, n, SEGMENT, payload(n)).await;
        tokio::time::sleep(SEGMENT).await;
    }

    let peer = wire::PeerInfo {
        id: starling::stream::NodeId([9; 32]),
        addr: "127.0.0.9:9".parse().unwrap(),
        local: None,
        reach: wire::Reach::Public,
        site: None,
    };
    let msgs = [
        Control::Have {
            number: 1,
            parts: 1,
        },
        Control::BufferMap {
            first: 0,
            bits: vec![0xff; 8],
        },
        Control::Peers {
            peers: vec![peer; wire::MAX_PEERS_PER_MESSAGE],
        },
    ];
    let flood_key = SigningKey::from_bytes(&[53; 32]);
    let mut flooder = Evil::connect(&flood_key, stream, addr, stream)
        .await
        .unwrap();
    let conn = flooder.conn.clone();
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        let sent = flooder.flood(&msgs).await;
        (sent, flooder)
    });
    // The stream goes on meanwhile.
    let mut n = 2;
    let closed = loop {
        if tokio::time::timeout(SEGMENT, conn.closed()).await.is_ok() {
            break true;
        }
        publish(&origin, &key, n, SEGMENT, payload(n)).await;
        n += 1;
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    let after = started.elapsed();
    assert!(closed, "the control flooder was never disconnected");
    let (sent, _flooder) = flood.await.unwrap();
    eprintln!(
        "control flooder closed after {} ms, {sent} messages written: {:?}",
        after.as_millis(),
        conn.close_reason()
    );
    // Banned: back under the same key it is let no further than the Hello.
    if let Ok(again) = Evil::connect(&flood_key, stream, addr, stream).await {
        assert!(
            again.closed_within(Duration::from_secs(20)).await,
            "a banned flooder was let back in"
        );
    }
    for m in n..n + 3 {
        publish(&origin, &key, m, SEGMENT, payload(m)).await;
        tokio::time::sleep(SEGMENT).await;
    }
    let last = n + 2;
    assert!(
        wait_for(
            std::slice::from_ref(&honest),
            Duration::from_secs(20),
            |s| { (0..=last).all(|m| s.contains(m)) }
        )
        .await,
        "the honest viewer missed segments during the flood"
    );
    assert!(origin.stats().bans >= 1, "{:?}", origin.stats());
    shutdown_all([honest, origin]).await;
}

/// Transport settings of a peer that reads nothing it asked for: 1 KiB of window per
/// stream, so every answer stalls after its first kilobyte, but room on the connection for
/// many such streams, so a short answer on a new stream (Busy) still gets through.
fn stalling_reader() -> quinn::TransportConfig {
    let mut transport = tls::transport_config();
    transport.stream_receive_window(quinn::VarInt::from_u32(1024));
    transport
}

/// A broadcaster with segment 0 published (parts of some 6 KB), and an admitted peer with
/// [`stalling_reader`] settings connected to it; `seed` picks the keys. The broadcaster has
/// the binary's default cap (4 Mbit/s): its upload slots start at the cap's (8 for this
/// stream) rather than the 2 an uncapped node starts with and learns from.
async fn origin_and_stalling_reader(seed: u8) -> (starling::net::Node, Evil) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let stream = node_id(&key);
    let cap = Some(starling::rate::Rate(4_000_000));
    let origin = broadcaster(&key, SEGMENT, cap, u64::from(seed)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], origin.local_addr().unwrap().port()));
    publish(&origin, &key, 0, SEGMENT, payload(0)).await;
    let hog = Evil::connect_with(
        &SigningKey::from_bytes(&[seed + 1; 32]),
        stream,
        addr,
        stream,
        stalling_reader(),
    )
    .await
    .unwrap();
    (origin, hog)
}

/// Asks `hog`'s node for the last part of segment 0 and waits for the answer's first byte:
/// the request is read and its serve is held open by the 1 KiB window.
async fn held_request(hog: &Evil) -> (quinn::SendStream, quinn::RecvStream) {
    let ask = wire::encode(&wire::Request {
        number: 0,
        part: starling::stream::PARTS as u8 - 1,
        header: true,
        join: false,
    });
    let (send, mut recv) = hog.open_and_hold(&ask).await.unwrap();
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.unwrap();
    (send, recv)
}

/// `SERVES_PER_CONNECTION` requests of one connection are served at once; the next is told
/// Busy while they last, and another connection is still served (the cap is the
/// connection's, not the node's). Once the held ones are given up, the connection is
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_per_connection_serve_cap_are_told_busy() {
    use starling::node::SERVES_PER_CONNECTION;
    let (origin, hog) = origin_and_stalling_reader(61).await;
    let stream = origin.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], origin.local_addr().unwrap().port()));
    let mut held = Vec::new();
    for _ in 0..SERVES_PER_CONNECTION {
        held.push(held_request(&hog).await);
    }
    assert!(
        matches!(hog.request(0).await, Some((Reply::Busy, _))),
        "a request past the connection's {SERVES_PER_CONNECTION} serves was not told Busy"
    );
    let other = Evil::connect(&SigningKey::from_bytes(&[63; 32]), stream, addr, stream)
        .await
        .unwrap();
    let (reply, data) = other.request(0).await.unwrap();
    assert!(
        matches!(reply, Reply::Part { number: 0, .. }) && !data.is_empty(),
        "another connection was refused: {reply:?}"
    );
    // Give the held requests up: their serves end and the connection is served again.
    for (mut send, mut recv) in held {
        let _ = send.reset(quinn::VarInt::from_u32(0));
        let _ = recv.stop(quinn::VarInt::from_u32(0));
    }
    let mut served_again = false;
    for _ in 0..50 {
        if let Some((Reply::Part { .. }, _)) = hog.request(0).await {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_again, "the serves given up never came back");
    shutdown_all([origin]).await;
}

/// `PUSHES_PER_CONNECTION` pushes of one connection are taken at once; the next is stopped
/// on arrival while they last. Once one of them ends, a new one is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_past_the_per_connection_cap_are_stopped() {
    use starling::node::PUSHES_PER_CONNECTION;
    let key = SigningKey::from_bytes(&[64; 32]);
    let stream = node_id(&key);
    let origin = broadcaster(&key, SEGMENT, None, 4).await;
    let target = viewer(
        SigningKey::from_bytes(&[65; 32]),
        &origin,
        MeshConfig::viewer(stream, SEGMENT, 3),
        14,
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], target.local_addr().unwrap().port()));
    let pusher = Evil::connect(
        &SigningKey::from_bytes(&[66; 32]),
        target.id(),
        addr,
        stream,
    )
    .await
    .unwrap();
    // Two bytes of a frame's length prefix: the push is taken and waits for the rest.
    let started = [0u8, 0u8];
    let mut held = Vec::new();
    for _ in 0..PUSHES_PER_CONNECTION {
        held.push(pusher.push_and_hold(&started).await.unwrap());
    }
    let extra = pusher.push_and_hold(&started).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), extra.stopped())
        .await
        .expect("the push past the cap was never stopped");
    assert_eq!(code.ok().flatten(), Some(quinn::VarInt::from_u32(0)));
    // Streams are taken in order: when the extra one was stopped, the held ones had been
    // taken, and none of them was stopped.
    for (i, send) in held.iter_mut().enumerate() {
        // A zero timeout polls once: a stop already received is seen, nothing is waited for.
        let seen = tokio::time::timeout(Duration::ZERO, send.stopped()).await;
        assert!(seen.is_err(), "held push {i} was stopped");
    }
    // One held push ends: a new one is taken (not stopped) in its place.
    let mut ended = held.pop().unwrap();
    let _ = ended.reset(quinn::VarInt::from_u32(0));
    let mut replacement = None;
    for _ in 0..50 {
        let next = pusher.push_and_hold(&started).await.unwrap();
        let stopped = tokio::time::timeout(Duration::from_millis(300), next.stopped()).await;
        if stopped.is_err() {
            replacement = Some(next);
            break;
        }
    }
    assert!(replacement.is_some(), "no push was taken after one ended");
    shutdown_all([target, origin]).await;
}

/// A peer that never reads its control stream: the node queues at most the control queue's
/// 512 messages for it, then closes the connection ("control queue full"), and an honest
/// viewer keeps getting the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_no_control_messages_is_let_go_when_its_queue_fills() {
    let key = SigningKey::from_bytes(&[67; 32]);
    let stream = node_id(&key);
    let origin = broadcaster(&key, SEGMENT, None, 5).await;
    let honest = viewer(
        SigningKey::from_bytes(&[68; 32]),
        &origin,
        MeshConfig::viewer(stream, SEGMENT, 3),
        15,
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], origin.local_addr().unwrap().port()));
    let deaf =
        common::evil::connect_tight(&SigningKey::from_bytes(&[69; 32]), stream, addr, stream)
            .await
            .unwrap();
    // Every segment makes the broadcaster announce it to each partner, so the queue of 512
    // (and the 1 KiB the deaf peer's window lets through) fills within some 600 segments.
    let mut n = 0;
    while n < 5_000 && deaf.conn.close_reason().is_none() {
        let data = common::payload::payload(n, 1_000);
        publish(&origin, &key, n, SEGMENT, data).await;
        n += 1;
        if n % 50 == 0 {
            // Time for the node to queue and write.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    deaf.closed_within(Duration::from_secs(5)).await;
    let reason = deaf.conn.close_reason();
    eprintln!("the deaf peer was closed after {n} segments: {reason:?}");
    match reason {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(1));
            assert_eq!(&close.reason[..], b"control queue full");
        }
        other => panic!("closed another way, or not at all after {n} segments: {other:?}"),
    }
    // One announcement a segment and a few other messages: the queue held hundreds first.
    assert!(n >= 256, "let go after {n} segments: a queue far under 512");
    let last = n.saturating_sub(1);
    assert!(
        wait_for(
            std::slice::from_ref(&honest),
            Duration::from_secs(30),
            |s| s.contains(last)
        )
        .await,
        "the honest viewer stopped getting the stream"
    );
    shutdown_all([honest, origin]).await;
}

/// Bytes an admitted peer sends after a request are refused, not buffered: the request
/// stream is stopped once the request is read, so a peer that makes its answers last
/// cannot also pin a stream window (2 MiB) of junk per request it has served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_request_are_refused_not_buffered() {
    let (origin, hog) = origin_and_stalling_reader(70).await;
    let (mut send, _recv) = held_request(&hog).await;
    // Junk until the node refuses it. Kept in the stream's window instead, it would be
    // taken up to the full 2 MiB and then wait for the serve's own timeout.
    let junk = vec![0xA5u8; 64 * 1024];
    let mut taken = 0usize;
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match send.write(&junk).await {
                Ok(n) => taken += n,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("junk after a request was neither refused nor taken");
    assert!(
        matches!(refused, quinn::WriteError::Stopped(_)),
        "{refused:?}"
    );
    assert!(
        taken < 2 * 1024 * 1024,
        "{taken} bytes after the request were buffered before the stream was stopped"
    );
    shutdown_all([origin]).await;
}
