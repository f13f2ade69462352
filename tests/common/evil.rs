//! A misbehaving node for the hostile-peer tests. It speaks the real protocol — QUIC with
//! raw-key TLS, the real Hello, real frames — and then lies, forges, floods or stalls.
//!
//! Two shapes: [`Evil`] is one connection the test drives step by step (push this, request
//! that, open a stream and never read it); [`Liar`] is a whole node that joins the swarm
//! through the broadcaster, advertises every segment it hears of, and answers requests
//! with a chosen [`Answer`], so honest viewers find it through peer exchange and pull from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use starling::stream::{part_pieces, NodeId, SignedHeader, PARTS};
use starling::tls;
use starling::token::{Credential, Side, TokenProof};
use starling::wire::{self, Control, Reply, Request, Role};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use super::nodes::loopback;

/// One connection to an honest node, past the Hello.
pub struct Evil {
    /// Kept so the endpoint lives as long as the connection.
    pub endpoint: quinn::Endpoint,
    /// The connection itself.
    pub conn: quinn::Connection,
    control: quinn::SendStream,
    /// Read by nobody: the honest side's control messages pile up in flow control.
    _control_in: quinn::RecvStream,
}

/// The completed TLS handshake with `target` at `addr`, before any Hello.
pub async fn handshake(
    endpoint: &quinn::Endpoint,
    key: &SigningKey,
    target: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let config = tls::client_config(key, target.0).map_err(|e| e.to_string())?;
    dial(endpoint, config, addr).await
}

/// The completed TLS handshake to `addr` with `config`.
async fn dial(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    endpoint
        .connect_with(config, addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// A viewer's Hello for `stream`.
pub fn hello(stream: NodeId) -> Control {
    hello_declaring(stream, None)
}

/// A viewer's Hello for `stream` showing `token` (a proof made for some connection).
pub fn hello_showing(stream: NodeId, token: Option<TokenProof>) -> Control {
    let mut hello = hello(stream);
    if let Control::Hello(h) = &mut hello {
        h.token = token;
    }
    hello
}

/// The proof of `cred` on `conn`, made by the node that dialled it.
pub fn proof_on(conn: &quinn::Connection, cred: &Credential) -> TokenProof {
    cred.prove(&tls::token_binding(conn).unwrap(), Side::Dialler)
}

/// A viewer's Hello for `stream` that declares an upload cap.
pub fn hello_declaring(stream: NodeId, upload_bps: Option<u64>) -> Control {
    Control::Hello(Box::new(wire::Hello {
        version: wire::PROTOCOL_VERSION,
        stream,
        role: Role::Viewer,
        uploads: true,
        upload_bps,
        token: None,
        token_epoch: 0,
        observed: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
        local: None,
        public: None,
        reach: wire::Reach::Nat,
        site: None,
    }))
}

/// Reads one frame of at most `max` bytes (panics on anything unexpected: test code).
async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Option<T> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.ok()?;
    let len = wire::frame_len(prefix, max).ok()?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    wire::decode_body(&body).ok()
}

/// Opens the control stream, sends our Hello and reads theirs.
async fn greet(
    conn: &quinn::Connection,
    stream: NodeId,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    greet_with(conn, &hello(stream)).await
}

/// Opens the control stream, sends `hello` and reads theirs.
async fn greet_with(
    conn: &quinn::Connection,
    hello: &Control,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    greet_reading(conn, hello).await.map(|(s, r, _)| (s, r))
}

/// Opens the control stream, sends `hello` and reads theirs, which it returns too.
async fn greet_reading(
    conn: &quinn::Connection,
    hello: &Control,
) -> Result<(quinn::SendStream, quinn::RecvStream, wire::Hello), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&wire::encode(hello))
        .await
        .map_err(|e| e.to_string())?;
    match read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await {
        Some(Control::Hello(theirs)) => Ok((send, recv, *theirs)),
        _ => Err(format!("no hello back: {:?}", conn.close_reason())),
    }
}

/// A fake peer that a hostile member hands out in peer exchange: an endpoint holding the
/// key it advertised, which keeps the Hello of everyone who dials it and answers nothing.
pub struct Collector {
    /// Its endpoint (the key it was started with).
    pub endpoint: quinn::Endpoint,
    hellos: Arc<Mutex<Vec<wire::Hello>>>,
}

impl Collector {
    /// Listens on loopback with `key`.
    pub fn start(key: &SigningKey) -> Collector {
        let endpoint = tls::endpoint(key, loopback()).unwrap();
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let (accepting, kept) = (endpoint.clone(), hellos.clone());
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok((_send, mut recv)) = conn.accept_bi().await else {
                        return;
                    };
                    if let Some(Control::Hello(h)) =
                        read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await
                    {
                        kept.lock().unwrap().push(*h);
                    }
                });
            }
        });
        Collector { endpoint, hellos }
    }

    /// Its QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// The Hellos dialled into it so far.
    pub fn collected(&self) -> Vec<wire::Hello> {
        self.hellos.lock().unwrap().clone()
    }
}

/// A connection that declares an upload cap in its Hello and reads what the honest side
/// sends on the control stream.
pub struct Listener {
    /// Kept so the endpoint lives as long as the connection.
    pub endpoint: quinn::Endpoint,
    /// The connection itself.
    pub conn: quinn::Connection,
    _control: quinn::SendStream,
    control_in: quinn::RecvStream,
}

impl Listener {
    /// Connects with `key` to the node `target` at `addr`, declaring `upload_bps`.
    pub async fn connect(
        key: &SigningKey,
        target: NodeId,
        addr: SocketAddr,
        upload_bps: Option<u64>,
    ) -> Result<Listener, String> {
        let endpoint = tls::endpoint(key, loopback()).map_err(|e| e.to_string())?;
        let conn = handshake(&endpoint, key, target, addr).await?;
        let (control, control_in) = greet_with(&conn, &hello_declaring(target, upload_bps)).await?;
        // Both Hellos are out: it takes the pushes an admitted node takes.
        tls::admit(&conn);
        Ok(Listener {
            endpoint,
            conn,
            _control: control,
            control_in,
        })
    }

    /// The next control message, if one comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Control> {
        let read = read_frame::<Control>(&mut self.control_in, wire::MAX_CONTROL_FRAME);
        tokio::time::timeout(limit, read).await.ok().flatten()
    }

    /// The parts pushed to it (segment, part) until `want` of them came or `limit` ran
    /// out. It asks for nothing, so every stream opened to it is a push; each is read to
    /// its end.
    pub async fn pushes(&self, want: usize, limit: Duration) -> Vec<(u64, u8)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while got.len() < want {
            let Ok(Ok(mut uni)) = tokio::time::timeout_at(deadline, self.conn.accept_uni()).await
            else {
                break;
            };
            if let Some(Reply::Part { number, part, .. }) =
                read_frame::<Reply>(&mut uni, wire::MAX_REPLY_FRAME).await
            {
                let _ = uni.read_to_end(1 << 20).await;
                got.push((number, part));
            }
        }
        got
    }
}

/// A UDP relay between one client and `target` that can go silent at once: a peer that
/// vanished without a close frame (no acknowledgements, nothing), as a crashed host or a
/// dropped link looks from the other side.
pub struct Blackhole {
    /// Where the client should send: the relay's client-side address.
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    /// Relays datagrams between the first client to send to [`Blackhole::addr`] and `target`.
    pub async fn start(target: SocketAddr) -> Blackhole {
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
        back.connect(target).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (client_tx, mut client_rx) = watch::channel(None::<SocketAddr>);
        {
            let (front, back, cut) = (front.clone(), back.clone(), cut.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    client_tx.send_replace(Some(from));
                    if !cut.load(Ordering::Relaxed) {
                        let _ = back.send(&buf[..n]).await;
                    }
                }
            });
        }
        {
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    let client = *client_rx.borrow_and_update();
                    if let (Some(c), false) = (client, cut.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], c).await;
                    }
                }
            });
        }
        Blackhole { addr, cut }
    }

    /// From now on every datagram, either way, is dropped.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Evil {
    /// Connects with `key` to the node `target` at `addr` and completes the Hello.
    pub async fn connect(
        key: &SigningKey,
        target: NodeId,
        addr: SocketAddr,
        stream: NodeId,
    ) -> Result<Evil, String> {
        Self::connect_with(key, target, addr, stream, tls::transport_config()).await
    }

    /// As [`Evil::connect`], with `transport` settings of its own choosing.
    pub async fn connect_with(
        key: &SigningKey,
        target: NodeId,
        addr: SocketAddr,
        stream: NodeId,
        transport: quinn::TransportConfig,
    ) -> Result<Evil, String> {
        let endpoint = tls::endpoint(key, loopback()).map_err(|e| e.to_string())?;
        let mut config = tls::client_config(key, target.0).map_err(|e| e.to_string())?;
        config.transport_config(Arc::new(transport));
        let conn = dial(&endpoint, config, addr).await?;
        let (control, control_in) = greet(&conn, stream).await?;
        Ok(Evil {
            endpoint,
            conn,
            control,
            _control_in: control_in,
        })
    }

    /// Connects with `key` to the node `target` at `addr` of a private stream, proving
    /// `cred` in its Hello; also returns the Hello the node answered with.
    pub async fn connect_invited(
        key: &SigningKey,
        target: NodeId,
        addr: SocketAddr,
        stream: NodeId,
        cred: &Credential,
    ) -> Result<(Evil, wire::Hello), String> {
        let endpoint = tls::endpoint(key, loopback()).map_err(|e| e.to_string())?;
        let conn = handshake(&endpoint, key, target, addr).await?;
        let hello = hello_showing(stream, Some(proof_on(&conn, cred)));
        let (control, control_in, theirs) = greet_reading(&conn, &hello).await?;
        tls::admit(&conn);
        let evil = Evil {
            endpoint,
            conn,
            control,
            _control_in: control_in,
        };
        Ok((evil, theirs))
    }

    /// Sends `bytes` as they are on the control stream.
    pub async fn control_raw(&mut self, bytes: &[u8]) {
        let _ = self.control.write_all(bytes).await;
    }

    /// Sends a control message.
    pub async fn control(&mut self, msg: &Control) {
        self.control_raw(&wire::encode(msg)).await;
    }

    /// Sends `msgs` round and round on the control stream, in batches, as fast as flow
    /// control lets it, until the connection is closed; returns how many it wrote.
    pub async fn flood(&mut self, msgs: &[Control]) -> u64 {
        let mut batch = BytesMut::new();
        let mut per_batch = 0u64;
        while batch.len() < 64 * 1024 {
            for m in msgs {
                batch.extend_from_slice(&wire::encode(m));
                per_batch += 1;
            }
        }
        let mut sent = 0;
        while self.control.write_all(&batch).await.is_ok() {
            sent += per_batch;
        }
        sent
    }

    /// Pushes a segment unasked, as the broadcaster seeds: each part on its own stream,
    /// the header, then that part's share of `data` as its bytes.
    pub async fn push(&self, header: &SignedHeader, data: &[u8]) {
        for part in 0..PARTS as u8 {
            self.push_raw(&part_frame(header, part, data, true)).await;
        }
    }

    /// Pushes the first frame of part `part` of `header`'s segment (the reply with the
    /// signed header) and nothing more, keeping the stream open: a push-squatter. `None` if
    /// the stream could not be opened or written.
    pub async fn push_first_frame(
        &self,
        header: &SignedHeader,
        part: u8,
    ) -> Option<quinn::SendStream> {
        let mut uni = self.conn.open_uni().await.ok()?;
        let frame = wire::encode(&Reply::Part {
            number: header.header.number,
            part,
            header: Some(header.clone()),
        });
        uni.write_all(&frame).await.ok()?;
        Some(uni)
    }

    /// Opens a unidirectional stream (a push), writes `bytes` and keeps it open: the
    /// caller holds the stream. `None` if it could not be opened or written.
    pub async fn push_and_hold(&self, bytes: &[u8]) -> Option<quinn::SendStream> {
        let mut uni = self.conn.open_uni().await.ok()?;
        uni.write_all(bytes).await.ok()?;
        Some(uni)
    }

    /// Pushes `bytes` as they are on a new unidirectional stream, then finishes it.
    pub async fn push_raw(&self, bytes: &[u8]) {
        let Ok(mut uni) = self.conn.open_uni().await else {
            return;
        };
        let _ = uni.write_all(bytes).await;
        let _ = uni.finish();
    }

    /// Asks for the last part of segment `number` (never empty), with its header, and
    /// reads the whole answer: the reply, and the part's bytes if it is one. `None` if the
    /// stream failed.
    pub async fn request(&self, number: u64) -> Option<(Reply, Bytes)> {
        let (mut send, mut recv) = self.conn.open_bi().await.ok()?;
        let req = Request {
            number,
            part: PARTS as u8 - 1,
            header: true,
            join: false,
        };
        send.write_all(&wire::encode(&req)).await.ok()?;
        let _ = send.finish();
        let reply = read_frame::<Reply>(&mut recv, wire::MAX_REPLY_FRAME).await?;
        let data = match &reply {
            Reply::Part {
                header: Some(h),
                part,
                ..
            } => {
                let mut data = vec![0u8; part_bytes(h, *part).len()];
                recv.read_exact(&mut data).await.ok()?;
                Bytes::from(data)
            }
            _ => Bytes::new(),
        };
        Some((reply, data))
    }

    /// Opens a request stream, sends `bytes` and never reads the answer nor finishes:
    /// the caller keeps the streams so they stay open (slowloris).
    pub async fn open_and_hold(
        &self,
        bytes: &[u8],
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await.ok()?;
        send.write_all(bytes).await.ok()?;
        Some((send, recv))
    }

    /// Whether the honest side closed the connection within `limit`.
    pub async fn closed_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.conn.closed())
            .await
            .is_ok()
    }
}

/// The byte range part `part` of the segment `header` describes covers.
pub fn part_bytes(header: &SignedHeader, part: u8) -> std::ops::Range<usize> {
    let h = &header.header;
    let pieces = part_pieces(h.pieces.len(), usize::from(part)).unwrap_or(0..0);
    let size = h.piece_size as usize;
    let len = h.len as usize;
    (pieces.start * size).min(len)..(pieces.end * size).min(len)
}

/// A transfer's bytes for part `part`: the reply frame (with `header` if `with_header`),
/// then that part's share of `data` (cut short if `data` is).
pub fn part_frame(header: &SignedHeader, part: u8, data: &[u8], with_header: bool) -> BytesMut {
    let mut frame = BytesMut::new();
    frame.put_slice(&wire::encode(&Reply::Part {
        number: header.header.number,
        part,
        header: with_header.then(|| header.clone()),
    }));
    let r = part_bytes(header, part);
    frame.put_slice(
        data.get(r.start.min(data.len())..r.end.min(data.len()))
            .unwrap_or(&[]),
    );
    frame
}

/// As [`Evil::connect`], but with tiny receive windows: whatever it asks for, the
/// sender must wait on it after the first kilobyte (a slowloris that never reads).
pub async fn connect_tight(
    key: &SigningKey,
    target: NodeId,
    addr: SocketAddr,
    stream: NodeId,
) -> Result<Evil, String> {
    let mut transport = tls::transport_config();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(1024))
        .receive_window(quinn::VarInt::from_u32(4096));
    Evil::connect_with(key, target, addr, stream, transport).await
}

/// How a [`Liar`] answers a request for segment `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The genuine header with one byte of the data flipped.
    Corrupt,
    /// The genuine, validly signed segment `n - 1` (an old segment replayed under a new number).
    Replay,
    /// Reads the request and never answers (a stalling supplier).
    Stall,
}

/// Where a [`Liar`] gets genuine segments to corrupt or replay (the test reads the
/// broadcaster's store).
pub type Source = Arc<dyn Fn(u64) -> Option<(SignedHeader, Bytes)> + Send + Sync>;

/// A hostile node in the swarm: joins through the broadcaster like a viewer (so peer
/// exchange hands it to honest viewers), accepts their connections, claims every
/// segment it hears of, and answers requests with its [`Answer`].
pub struct Liar {
    endpoint: quinn::Endpoint,
    /// Requests it has been sent (how much honest traffic it drew).
    pub requests: Arc<Mutex<u64>>,
}

impl Liar {
    /// Starts a liar with `key` and connects it to the broadcaster `origin` at `addr`.
    pub async fn join(
        key: &SigningKey,
        origin: NodeId,
        addr: SocketAddr,
        answer: Answer,
        source: Source,
    ) -> Liar {
        let endpoint = tls::endpoint(key, loopback()).unwrap();
        let (newest, _) = watch::channel(None::<u64>);
        let newest = Arc::new(newest);
        let requests = Arc::new(Mutex::new(0u64));
        let ctx = Ctx {
            stream: origin,
            answer,
            source,
            newest,
            requests: requests.clone(),
        };
        // Incoming connections from honest viewers that heard of us.
        {
            let (endpoint, ctx) = (endpoint.clone(), ctx.clone());
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                            return;
                        };
                        if read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME)
                            .await
                            .is_none()
                        {
                            return;
                        }
                        // Admitted, as a real node admits after the Hello: viewers may now
                        // open their requests.
                        tls::admit(&conn);
                        if send
                            .write_all(&wire::encode(&hello(ctx.stream)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        ctx.run(conn, send, recv).await;
                    });
                }
            });
        }
        // And the broadcaster, which announces segments to us and lists us to viewers.
        let conn = handshake(&endpoint, key, origin, addr).await.unwrap();
        let (send, recv) = greet(&conn, origin).await.unwrap();
        tls::admit(&conn);
        tokio::spawn(ctx.run(conn, send, recv));
        Liar { endpoint, requests }
    }

    /// Its QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// Leaves at once.
    pub fn kill(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

#[derive(Clone)]
struct Ctx {
    stream: NodeId,
    answer: Answer,
    source: Source,
    /// The newest segment heard of, from any connection: claimed to every partner.
    newest: Arc<watch::Sender<Option<u64>>>,
    requests: Arc<Mutex<u64>>,
}

impl Ctx {
    async fn run(
        self,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        // Hear what exists (the broadcaster's Haves and buffer maps, partners' Haves).
        let heard = {
            let newest = self.newest.clone();
            tokio::spawn(async move {
                while let Some(msg) =
                    read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await
                {
                    let n = match msg {
                        Control::Have { number, .. } => Some(number),
                        Control::BufferMap { first, bits } if !bits.is_empty() => {
                            Some(first + bits.len() as u64 * 8 - 1)
                        }
                        _ => None,
                    };
                    if let Some(n) = n {
                        newest.send_if_modified(|old| {
                            let newer = old.is_none_or(|o| n > o);
                            if newer {
                                *old = Some(n);
                            }
                            newer
                        });
                    }
                }
            })
        };
        // Claim everything heard of, at once.
        let claims = {
            let mut newest = self.newest.subscribe();
            tokio::spawn(async move {
                loop {
                    let n = *newest.borrow_and_update();
                    if let Some(n) = n {
                        let map = Control::BufferMap {
                            first: n.saturating_sub(15),
                            bits: vec![0xff, 0xff],
                        };
                        if send.write_all(&wire::encode(&map)).await.is_err() {
                            return;
                        }
                    }
                    if newest.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        // Answer requests.
        let mut held = Vec::new();
        while let Ok((mut tx, mut rx)) = conn.accept_bi().await {
            let Some(Request { number, part, .. }) =
                read_frame::<Request>(&mut rx, wire::MAX_REQUEST_FRAME).await
            else {
                continue;
            };
            *self.requests.lock().unwrap() += 1;
            let genuine = match self.answer {
                // The genuine header, with the last byte of the asked part flipped.
                Answer::Corrupt => (self.source)(number).map(|(h, d)| {
                    let mut d = d.to_vec();
                    let r = part_bytes(&h, part);
                    if let Some(b) = r.end.checked_sub(1).and_then(|i| d.get_mut(i)) {
                        *b ^= 0x5a;
                    }
                    (h, Bytes::from(d))
                }),
                Answer::Replay => number.checked_sub(1).and_then(|old| (self.source)(old)),
                Answer::Stall => None,
            };
            match genuine {
                Some((h, d)) => {
                    let frame = part_frame(&h, part, &d, true);
                    tokio::spawn(async move {
                        let _ = tx.write_all(&frame).await;
                        let _ = tx.finish();
                    });
                }
                // Stall (or nothing to forge from yet): keep the stream open, say nothing.
                None => held.push((tx, rx)),
            }
        }
        heard.abort();
        claims.abort();
    }
}
