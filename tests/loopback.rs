//! A broadcaster and eight viewers in one process over real QUIC on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use starling::mesh::MeshConfig;
use starling::net::{Node, NodeConfig};
use starling::rate::Rate;
use starling::store;
use starling::stream::{node_id, sign_segment, VerifiedSegment};
use starling::wire::Role;
use std::time::Duration;

const SEGMENTS: u64 = 16;
const SEGMENT: Duration = Duration::from_millis(400);
const SEGMENT_BYTES: usize = 120_000;

fn payload(n: u64) -> Bytes {
    // Distinct, non-trivial bytes per segment.
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Bytes::from(
        (0..SEGMENT_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_viewers_get_identical_bytes_mostly_from_peers() {
    let key = SigningKey::from_bytes(&[42; 32]);
    let stream = node_id(&key);
    let bitrate = SEGMENT_BYTES as f64 * 8.0 / SEGMENT.as_secs_f64();
    let broadcaster = Node::spawn(NodeConfig {
        key: key.clone(),
        stream,
        role: Role::Broadcaster,
        listen: loopback(),
        origin_addrs: vec![],
        // Enough for about three copies of the stream: the mesh must carry the rest.
        upload_limit: Some(Rate((bitrate * 3.0) as u64)),
        mesh: MeshConfig::broadcaster(stream, SEGMENT),
        store_capacity: 64,
        seed: 1,
        max_connections: 64,
    })
    .await
    .unwrap();
    let origin = broadcaster.local_addr().unwrap();

    let mut viewers = Vec::new();
    for i in 0..8u8 {
        let vkey = SigningKey::from_bytes(&[i + 1; 32]);
        let node = Node::spawn(NodeConfig {
            key: vkey,
            stream,
            role: Role::Viewer,
            listen: loopback(),
            origin_addrs: vec![origin],
            upload_limit: None,
            mesh: MeshConfig::viewer(stream, SEGMENT, 3),
            store_capacity: 64,
            seed: 100 + i as u64,
            max_connections: 64,
        })
        .await
        .unwrap();
        viewers.push(node);
    }
    // Let the mesh form before the stream starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut published = Vec::new();
    for n in 0..SEGMENTS {
        let data = payload(n);
        let h = sign_segment(&key, n, SEGMENT.as_millis() as u32, 0, n == 0, &data).unwrap();
        let seg = VerifiedSegment::verify(&stream, h, data.clone()).unwrap();
        broadcaster.publish(seg).await;
        published.push(data);
        tokio::time::sleep(SEGMENT).await;
    }
    broadcaster.end(SEGMENTS - 1).await;

    // Wait (bounded) until every viewer holds every segment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = viewers.iter().all(|v| {
            let shared = v.store();
            let s = store::lock(&shared);
            (0..SEGMENTS).all(|n| s.contains(n)) && s.ended().is_some()
        });
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut from_peers = 0;
    let mut from_origin = 0;
    for (i, v) in viewers.iter().enumerate() {
        let shared = v.store();
        let s = store::lock(&shared);
        for n in 0..SEGMENTS {
            let got = s
                .get(n)
                .unwrap_or_else(|| panic!("viewer {i} lacks segment {n}"));
            assert_eq!(got.data, published[n as usize], "viewer {i} segment {n}");
        }
        assert_eq!(s.ended(), Some(SEGMENTS - 1), "viewer {i} saw the end");
        drop(s);
        let st = v.stats();
        assert!(st.peers > 0, "viewer {i} has partners");
        assert_eq!(st.rejected_segments, 0);
        from_peers += st.bytes_from_peers;
        from_origin += st.bytes_from_origin;
    }
    let b = broadcaster.stats();
    eprintln!(
        "from peers {from_peers}, from origin {from_origin}, origin uploaded {}",
        b.bytes_uploaded
    );
    assert!(
        from_peers > from_origin,
        "most viewer bytes must come from peers: peers {from_peers} vs origin {from_origin}"
    );
    let mut closing = tokio::task::JoinSet::new();
    for v in viewers {
        closing.spawn(v.shutdown());
    }
    closing.spawn(broadcaster.shutdown());
    while closing.join_next().await.is_some() {}
}

/// A leech-only viewer (`--no-upload`) still gets the whole stream and uploads nothing:
/// it announces nothing and answers no request, so partners never pull from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leech_only_viewer_downloads_and_never_uploads() {
    let key = SigningKey::from_bytes(&[43; 32]);
    let stream = node_id(&key);
    let broadcaster = Node::spawn(NodeConfig {
        key: key.clone(),
        stream,
        role: Role::Broadcaster,
        listen: loopback(),
        origin_addrs: vec![],
        upload_limit: None,
        mesh: MeshConfig::broadcaster(stream, SEGMENT),
        store_capacity: 64,
        seed: 2,
        max_connections: 64,
    })
    .await
    .unwrap();
    let origin = broadcaster.local_addr().unwrap();
    let mut viewers = Vec::new();
    for i in 0..4u8 {
        let mut mesh = MeshConfig::viewer(stream, SEGMENT, 3);
        // Viewer 0 is the leech.
        mesh.uploads = i != 0;
        viewers.push(
            Node::spawn(NodeConfig {
                key: SigningKey::from_bytes(&[i + 50; 32]),
                stream,
                role: Role::Viewer,
                listen: loopback(),
                origin_addrs: vec![origin],
                upload_limit: None,
                mesh,
                store_capacity: 64,
                seed: 200 + i as u64,
                max_connections: 64,
            })
            .await
            .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    const N: u64 = 8;
    for n in 0..N {
        let data = payload(n);
        let h = sign_segment(&key, n, SEGMENT.as_millis() as u32, 0, false, &data).unwrap();
        broadcaster
            .publish(VerifiedSegment::verify(&stream, h, data).unwrap())
            .await;
        tokio::time::sleep(SEGMENT).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let done = viewers.iter().all(|v| {
            let shared = v.store();
            let s = store::lock(&shared);
            (0..N).all(|n| s.contains(n))
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, v) in viewers.iter().enumerate() {
        let shared = v.store();
        let missing: Vec<u64> = {
            let s = store::lock(&shared);
            (0..N).filter(|n| !s.contains(*n)).collect()
        };
        assert!(missing.is_empty(), "viewer {i} lacks {missing:?}");
    }
    let leech = viewers[0].stats();
    assert_eq!(leech.bytes_uploaded, 0, "the leech uploaded");
    assert!(leech.bytes_from_peers + leech.bytes_from_origin > 0);
    let mut closing = tokio::task::JoinSet::new();
    for v in viewers {
        closing.spawn(v.shutdown());
    }
    closing.spawn(broadcaster.shutdown());
    while closing.join_next().await.is_some() {}
}
