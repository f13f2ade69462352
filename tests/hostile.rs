//! Hostile peers speaking the real protocol over real QUIC: an honest viewer must never
//! store (and so never serve, to its player or to a peer) a forged byte, must drop and ban
//! the sender, and must refuse it when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::nodes::{broadcaster, dial_with_hello, publish, viewer, wait_for, Dialled};
use ed25519_dalek::SigningKey;
use starling::mesh::MeshConfig;
use starling::store;
use starling::stream::{node_id, sign_segment, NodeId, SignedHeader};
use starling::wire::{self, Control, Reply, Role};
use std::net::SocketAddr;
use std::time::Duration;

const SEGMENT: Duration = Duration::from_millis(500);

fn payload(n: u64) -> Bytes {
    Bytes::from(
        (0..50_000u32)
            .map(|i| (i as u64 * 31 + n) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// A node that completes the Hello like a viewer and then does what it is told.
struct Hostile {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Hostile {
    async fn connect(
        key: &SigningKey,
        target: NodeId,
        addr: SocketAddr,
        stream: NodeId,
    ) -> Hostile {
        let hello = Control::Hello {
            version: wire::PROTOCOL_VERSION,
            stream,
            role: Role::Viewer,
            uploads: true,
            token: None,
            token_epoch: 0,
        };
        let Dialled {
            endpoint,
            conn,
            send,
            mut recv,
        } = dial_with_hello(key, target, addr, &hello).await;
        // Their Hello back (length prefix, then body).
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await.unwrap();
        let len = wire::frame_len(prefix, wire::MAX_CONTROL_FRAME).unwrap();
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.unwrap();
        // Keep the control stream open, as a real peer does.
        std::mem::forget(send);
        std::mem::forget(recv);
        Hostile {
            _endpoint: endpoint,
            conn,
        }
    }

    /// Pushes a segment: a header frame, then `data` as the segment's bytes.
    async fn push(&self, header: &SignedHeader, data: &[u8]) {
        let Ok(mut uni) = self.conn.open_uni().await else {
            return;
        };
        let mut frame = BytesMut::new();
        frame.put_slice(&wire::encode(&Reply::Segment(header.clone())));
        frame.put_slice(data);
        let _ = uni.write_all(&frame).await;
        let _ = uni.finish();
    }

    /// Whether the honest side closed the connection within `limit`.
    async fn closed_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.conn.closed())
            .await
            .is_ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pushes_are_rejected_and_the_sender_banned() {
    let key = SigningKey::from_bytes(&[61; 32]);
    let stream = node_id(&key);
    let broadcaster = broadcaster(&key, SEGMENT, None, 3).await;
    let viewer = viewer(
        SigningKey::from_bytes(&[62; 32]),
        &broadcaster,
        MeshConfig::viewer(stream, SEGMENT, 2),
        4,
    )
    .await;
    let viewer_addr: SocketAddr = format!("127.0.0.1:{}", viewer.local_addr().unwrap().port())
        .parse()
        .unwrap();

    // 1. A correctly signed header with corrupted bytes (a relay that flips one byte).
    let evil_key = SigningKey::from_bytes(&[66; 32]);
    let evil = Hostile::connect(&evil_key, viewer.id(), viewer_addr, stream).await;
    let real = payload(0);
    let header = sign_segment(&key, 0, 500, 0, false, &real).unwrap();
    let mut corrupted = real.to_vec();
    corrupted[10] ^= 0xff;
    evil.push(&header, &corrupted).await;
    assert!(
        evil.closed_within(Duration::from_secs(10)).await,
        "the viewer kept the corrupting peer"
    );

    // It comes back with the same key: refused for the ban period.
    let again = Hostile::connect(&evil_key, viewer.id(), viewer_addr, stream).await;
    assert!(
        again.closed_within(Duration::from_secs(10)).await,
        "a banned peer was let back in"
    );

    // 2. A header re-signed by the peer's own key (an impostor broadcaster).
    let other_key = SigningKey::from_bytes(&[67; 32]);
    let impostor = Hostile::connect(&other_key, viewer.id(), viewer_addr, stream).await;
    let resigned = sign_segment(&other_key, 1, 500, 0, false, &payload(1)).unwrap();
    impostor.push(&resigned, &payload(1)).await;
    assert!(
        impostor.closed_within(Duration::from_secs(10)).await,
        "the viewer kept a peer that sent a header signed by another key"
    );

    // Nothing forged was stored; the real stream still gets through, byte for byte.
    {
        let shared = viewer.store();
        let s = store::lock(&shared);
        assert!(
            !s.contains(0) && !s.contains(1),
            "a forged segment was stored"
        );
    }
    let stats = viewer.stats();
    assert_eq!(stats.rejected_segments, 2, "{stats:?}");
    assert!(stats.bans >= 2, "{stats:?}");
    for n in 0..4 {
        publish(&broadcaster, &key, n, SEGMENT, payload(n)).await;
        tokio::time::sleep(SEGMENT).await;
    }
    let viewers = [viewer];
    wait_for(&viewers, Duration::from_secs(20), |s| {
        (0..4).all(|n| s.contains(n))
    })
    .await;
    let [viewer] = viewers;
    let shared = viewer.store();
    let s = store::lock(&shared);
    for n in 0..4 {
        let got = s
            .get(n)
            .unwrap_or_else(|| panic!("segment {n} never arrived"));
        assert_eq!(
            got.data,
            payload(n),
            "segment {n} differs from the broadcaster's"
        );
    }
}
