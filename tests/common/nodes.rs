//! In-process nodes for the loopback tests: a broadcaster and viewers on 127.0.0.1,
//! the segments they publish, and bounded waits on what the viewers hold.

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use starling::mesh::MeshConfig;
use starling::net::{Node, NodeConfig};
use starling::rate::Rate;
use starling::store::{self, Store};
use starling::stream::{node_id, sign_segment, NodeId, VerifiedSegment};
use starling::tls;
use starling::wire::{self, Control, Role};
use std::net::SocketAddr;
use std::time::Duration;

/// Any free UDP port on loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The config of a public broadcaster for `key`'s stream with segments of about `segment`.
pub fn broadcaster_config(
    key: &SigningKey,
    segment: Duration,
    upload: Option<Rate>,
    seed: u64,
) -> NodeConfig {
    let stream = node_id(key);
    NodeConfig {
        key: key.clone(),
        stream,
        role: Role::Broadcaster,
        listen: loopback(),
        origin_addrs: vec![],
        upload_limit: upload,
        mesh: MeshConfig::broadcaster(stream, segment),
        store_capacity: 64,
        seed,
        max_connections: 64,
        admission: Default::default(),
    }
}

/// Starts a broadcaster for `key`'s stream with segments of about `segment`.
pub async fn broadcaster(
    key: &SigningKey,
    segment: Duration,
    upload: Option<Rate>,
    seed: u64,
) -> Node {
    Node::spawn(broadcaster_config(key, segment, upload, seed))
        .await
        .expect("broadcaster starts")
}

/// The config of a public viewer of `origin`'s stream with mesh settings `mesh` (upload uncapped).
pub fn viewer_config(key: SigningKey, origin: &Node, mesh: MeshConfig, seed: u64) -> NodeConfig {
    NodeConfig {
        key,
        stream: origin.id(),
        role: Role::Viewer,
        listen: loopback(),
        origin_addrs: vec![origin.local_addr().expect("origin address")],
        upload_limit: None,
        mesh,
        store_capacity: 64,
        seed,
        max_connections: 64,
        admission: Default::default(),
    }
}

/// Starts a viewer of `origin`'s stream with mesh settings `mesh` (upload uncapped).
pub async fn viewer(key: SigningKey, origin: &Node, mesh: MeshConfig, seed: u64) -> Node {
    Node::spawn(viewer_config(key, origin, mesh, seed))
        .await
        .expect("viewer starts")
}

/// Signs `data` as segment `n` of `key`'s stream and publishes it.
pub async fn publish(broadcaster: &Node, key: &SigningKey, n: u64, segment: Duration, data: Bytes) {
    let stream = node_id(key);
    let h = sign_segment(key, n, segment.as_millis() as u32, 0, n == 0, &data).expect("sign");
    let seg = VerifiedSegment::verify(&stream, h, data).expect("own segment verifies");
    broadcaster.publish(seg).await;
}

/// Waits (at most `limit`) until `done` holds for every node's store; returns whether it did.
pub async fn wait_for(nodes: &[Node], limit: Duration, done: impl Fn(&Store) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let all = nodes.iter().all(|v| {
            let shared = v.store();
            let s = store::lock(&shared);
            done(&s)
        });
        if all {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shuts every node down at once (each waits up to 2 s for its peers).
pub async fn shutdown_all(nodes: impl IntoIterator<Item = Node>) {
    let mut closing = tokio::task::JoinSet::new();
    for n in nodes {
        closing.spawn(n.shutdown());
    }
    while closing.join_next().await.is_some() {}
}

/// A raw connection opened the way a viewer opens one: the endpoint, the connection, and
/// the control stream the Hello went out on.
pub struct Dialled {
    /// Keep it alive as long as the connection.
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    /// Our side of the control stream.
    pub send: quinn::SendStream,
    /// Their side of the control stream.
    pub recv: quinn::RecvStream,
}

/// Dials `target` at `addr` as `key` (pinning the target's key) and sends the Hello that
/// `hello` makes for the connection first on the control stream, as a viewer does; what
/// happens next is up to the test.
pub async fn dial_with_hello(
    key: &SigningKey,
    target: NodeId,
    addr: SocketAddr,
    hello: impl FnOnce(&quinn::Connection) -> Control,
) -> Dialled {
    let endpoint = tls::endpoint(key, loopback()).expect("endpoint");
    let conn = super::evil::handshake(&endpoint, key, target, addr)
        .await
        .expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("control stream");
    send.write_all(&wire::encode(&hello(&conn)))
        .await
        .expect("send hello");
    Dialled {
        endpoint,
        conn,
        send,
        recv,
    }
}
