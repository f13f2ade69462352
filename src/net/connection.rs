//! Connections: the accept loop with its caps on half-open attempts, dialling, the Hello
//! exchange (decided by [`crate::node::hello`]), and one task set per established
//! connection: control reader and writer, request and push acceptors, token expiry.

use super::download::{piece_silence, receive_part, report_transfer};
use super::driver::Event;
use super::framing::{read_frame, TransferError};
use super::upload::{serve, UPLOAD_TIMEOUT};
use super::{add, Shared};
use crate::clock::unix_now_s;
use crate::node::hello::{self, PeerHello, Policy};
use crate::node::{ControlBudget, Misbehaviour, PUSHES_PER_CONNECTION, SERVES_PER_CONNECTION};
use crate::stream::NodeId;
use crate::tls;
use crate::token::{JoinToken, Side, TokenError};
use crate::wire::{self, Control, Reply};
use quinn::{Connection, RecvStream, SendStream};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long a peer has to complete the Hello exchange.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Control messages queued per connection; a peer that lets it fill is not reading.
const CONTROL_QUEUE: usize = 512;

/// Longest the accept loop waits to tell a peer over its serve cap that we are busy.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a connection's token expiry is waited for (tokens live at most 366 days).
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(400 * 24 * 3600);

pub(super) async fn accept_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        if shared.connections.load(Ordering::Relaxed) >= shared.max_connections {
            incoming.refuse();
            continue;
        }
        let Some(handshake) = Handshake::start(&shared, incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                _ => return,
            };
            let Some(peer) = tls::peer_key(&conn).map(NodeId) else {
                return;
            };
            let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
                let (mut send, mut recv) = conn.accept_bi().await.ok()?;
                let theirs = read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME)
                    .await
                    .ok()??;
                let checked = check_hello(&shared, &conn, peer, &theirs, Side::Dialler)?;
                tls::admit(&conn);
                send.write_all(&wire::encode(&our_hello(&shared, &conn, Side::Acceptor)))
                    .await
                    .ok()?;
                Some((send, recv, checked))
            })
            .await;
            // Established (or failed): no longer a half-open attempt.
            drop(handshake);
            if let Ok(Some((send, recv, checked))) = hello {
                run_connection(shared, conn, peer, send, recv, checked, false).await;
            } else {
                conn.close(quinn::VarInt::from_u32(3), b"hello failed");
            }
        });
    }
}

/// One connection in its handshake or Hello, counted against the caps until dropped.
struct Handshake {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Handshake {
    /// Counts a new attempt from `ip`; `None` if that would pass a cap
    /// ([`crate::node::budget::HandshakeSlots`]).
    fn start(shared: &Arc<Shared>, ip: IpAddr) -> Option<Handshake> {
        let mut slots = shared.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.take(ip) {
            return None;
        }
        Some(Handshake {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.shared
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .give_back(self.ip);
    }
}

/// Our Hello to the peer at the other end of `conn`, telling it where we see it; on a
/// private stream, with our token proven on this connection as the `side` we are.
fn our_hello(shared: &Shared, conn: &Connection, side: Side) -> Control {
    let (local, public, reach) = {
        let r = shared.reachability();
        (r.local_addr(), r.public_addr(), r.reach())
    };
    Control::Hello(Box::new(wire::Hello {
        version: wire::PROTOCOL_VERSION,
        stream: shared.stream,
        role: shared.role,
        uploads: shared.uploads,
        upload_bps: shared.limiter.rate().map(|r| r.0),
        // No exporter (never after a completed handshake): no proof, and the peer says why.
        token: shared
            .admission
            .credential()
            .and_then(|c| Some(c.prove(&tls::token_binding(conn)?, side))),
        token_epoch: *shared.token_epoch.borrow(),
        observed: conn.remote_address(),
        local,
        public,
        reach,
        site: shared.site,
    }))
}

/// Checks the peer's Hello ([`hello::check`]); closes the connection with the reason if it
/// is refused, and learns the token epoch it vouches for if accepted.
///
/// Runs before [`run_connection`], so a peer refused here never sees a Have or a byte of
/// media.
fn check_hello(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    msg: &Control,
    peer_side: Side,
) -> Option<PeerHello> {
    let policy = Policy {
        stream: shared.stream,
        private: shared.admission.is_private(),
        min_epoch: *shared.token_epoch.borrow(),
        now_unix_s: unix_now_s(),
        // Zeros when there is no exporter: no holder signed them, so a token is refused.
        binding: tls::token_binding(conn).unwrap_or_default(),
        peer_side,
    };
    match hello::check(&policy, peer, msg) {
        Ok(checked) => {
            if let Some(epoch) = checked.epoch_seen {
                raise_epoch(shared, epoch);
            }
            shared
                .reachability()
                .observe(conn.remote_address().ip(), checked.observed);
            Some(checked)
        }
        Err(refusal) => {
            tracing::debug!(peer = %peer.short(), %refusal, "refusing a peer's hello");
            let code = quinn::VarInt::from_u32(refusal.close_code());
            conn.close(code, refusal.to_string().as_bytes());
            None
        }
    }
}

pub(super) fn raise_epoch(shared: &Shared, epoch: u32) {
    shared.token_epoch.send_if_modified(|e| {
        let raised = epoch > *e;
        *e = (*e).max(epoch);
        raised
    });
}

/// Closes the connection when the peer's token expires or is revoked by a newer epoch.
async fn expire_token(shared: &Shared, conn: &Connection, token: JoinToken) {
    let expiry = token
        .expires_unix_s
        .saturating_add(hello::TOKEN_CLOCK_SKEW_S);
    let left = Duration::from_secs(expiry.saturating_sub(unix_now_s()));
    let mut epoch = shared.token_epoch.subscribe();
    let e = tokio::select! {
        _ = tokio::time::sleep(left.min(MAX_EXPIRY_WAIT)) => TokenError::Expired,
        Ok(_) = epoch.wait_for(|e| *e > token.epoch) => TokenError::Revoked,
        else => return,
    };
    conn.close(
        quinn::VarInt::from_u32(hello::token_close_code(&e)),
        e.to_string().as_bytes(),
    );
}

pub(super) async fn dial(shared: Arc<Shared>, peer: NodeId, addrs: Vec<SocketAddr>) {
    // Try every address at once; the first to complete a handshake wins.
    let mut attempts = tokio::task::JoinSet::new();
    for addr in addrs.into_iter().take(crate::stream::MAX_TICKET_ADDRS) {
        let shared = shared.clone();
        attempts.spawn(async move { connect(&shared, peer, addr).await });
    }
    while let Some(res) = attempts.join_next().await {
        if let Ok(Some((conn, send, recv, checked))) = res {
            attempts.abort_all();
            add(&shared.counters.dials_ok, 1);
            run_connection(shared, conn, peer, send, recv, checked, true).await;
            return;
        }
    }
    add(&shared.counters.dials_failed, 1);
    let _ = shared.events.send(Event::DialFailed { peer }).await;
}

async fn connect(
    shared: &Shared,
    peer: NodeId,
    addr: SocketAddr,
) -> Option<(Connection, SendStream, RecvStream, PeerHello)> {
    let config = tls::client_config(&shared.key, peer.0).ok()?;
    let connecting = shared
        .endpoint
        .connect_with(config, addr, tls::SERVER_NAME)
        .ok()?;
    tokio::time::timeout(HELLO_TIMEOUT * 2, async {
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%addr, peer = %peer.short(), error = %e, "dial failed");
                // Our own TLS check failed: whoever answers there is not the key we pinned.
                if let quinn::ConnectionError::TransportError(te) = &e {
                    let code = u64::from(te.code);
                    if peer == shared.stream && (0x100..0x200).contains(&code) {
                        *shared
                            .origin_wrong_key
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(addr);
                    }
                }
                return None;
            }
        };
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&wire::encode(&our_hello(shared, &conn, Side::Dialler)))
            .await
            .ok()?;
        let theirs = match read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await {
            Ok(Some(m)) => m,
            _ => {
                if let Some(reason) = conn.close_reason() {
                    tracing::warn!(%addr, peer = %peer.short(), %reason, "peer refused us");
                    if let quinn::ConnectionError::ApplicationClosed(close) = &reason {
                        let refusal = hello::token_refusal(close.error_code.into_inner());
                        if peer == shared.stream && refusal.is_some() {
                            *shared
                                .origin_refused
                                .lock()
                                .unwrap_or_else(|e| e.into_inner()) = refusal;
                        }
                    }
                }
                return None;
            }
        };
        let checked = check_hello(shared, &conn, peer, &theirs, Side::Acceptor)?;
        tls::admit(&conn);
        Some((conn, send, recv, checked))
    })
    .await
    .ok()
    .flatten()
}

/// Runs one established connection until it closes.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    hello: PeerHello,
    dialed_by_me: bool,
) {
    let PeerHello {
        role,
        uploads,
        upload_bps,
        token,
        local,
        public,
        reach,
        site,
        ..
    } = hello;
    let contact =
        shared
            .reachability()
            .contact_of(peer, conn.remote_address(), public, local, (reach, site));
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    if shared
        .events
        .send(Event::Connected {
            contact,
            conn: conn.clone(),
            control: control_tx,
            role,
            uploads,
            upload_bps,
            dialed_by_me,
        })
        .await
        .is_err()
    {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    // Control writer.
    let writer_shared = shared.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = control_rx.recv().await {
            let frame = wire::encode(&msg);
            add(&writer_shared.counters.control_bytes, frame.len() as u64);
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    // Control reader.
    let reader_shared = shared.clone();
    let reader_conn = conn.clone();
    let reader = tokio::spawn(async move {
        let mut budget = ControlBudget::new(Instant::now());
        loop {
            match read_frame::<Control>(&mut recv, wire::MAX_CONTROL_FRAME).await {
                Ok(Some(msg)) => {
                    let verdict = match msg.validate() {
                        Err(_) => Err(Misbehaviour::ControlOverLimits),
                        Ok(()) => budget.charge(&msg, Instant::now()),
                    };
                    if let Err(reason) = verdict {
                        let _ = reader_shared
                            .events
                            .send(Event::Misbehaved { peer, reason })
                            .await;
                        break;
                    }
                    if reader_shared
                        .events
                        .send(Event::Control { peer, msg })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(TransferError::Wire(_)) => {
                    let _ = reader_shared
                        .events
                        .send(Event::Misbehaved {
                            peer,
                            reason: Misbehaviour::MalformedControlFrame,
                        })
                        .await;
                    break;
                }
                Err(_) => break,
            }
        }
        reader_conn.close(quinn::VarInt::from_u32(0), b"control stream ended");
    });
    // Incoming requests (bidirectional streams) and pushes (unidirectional).
    let serves = Arc::new(tokio::sync::Semaphore::new(SERVES_PER_CONNECTION));
    let pushes = Arc::new(tokio::sync::Semaphore::new(PUSHES_PER_CONNECTION));
    let bi = {
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                match serves.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (shared, conn) = (shared.clone(), conn.clone());
                        tokio::spawn(async move {
                            let mut send = send;
                            let served = tokio::time::timeout(
                                UPLOAD_TIMEOUT,
                                serve(&shared, (peer, reach, &conn), &mut send, recv),
                            )
                            .await;
                            if served.is_err() {
                                // Abandoned mid-segment: reset, so the requester sees a failed
                                // transfer rather than a stream finished mid-frame (a violation).
                                let _ = send.reset(quinn::VarInt::from_u32(1));
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // Over its cap of concurrent requests: a flooder is told Busy, cheaply.
                        let mut send = send;
                        add(&shared.counters.busy_replies, 1);
                        let busy = wire::encode(&Reply::Busy);
                        let write = send.write_all(&busy);
                        if tokio::time::timeout(BUSY_WRITE_TIMEOUT, write)
                            .await
                            .is_ok()
                        {
                            let _ = send.finish();
                        } else {
                            let _ = send.reset(quinn::VarInt::from_u32(1));
                        }
                    }
                }
            }
        })
    };
    let uni = {
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let Ok(permit) = pushes.clone().try_acquire_owned() else {
                    let mut recv = recv;
                    let _ = recv.stop(quinn::VarInt::from_u32(0));
                    continue;
                };
                let shared = shared.clone();
                let silence = piece_silence(&shared, &conn);
                tokio::spawn(async move {
                    let res = tokio::time::timeout(
                        UPLOAD_TIMEOUT,
                        receive_part(&shared, recv, (peer, silence), None),
                    )
                    .await
                    .unwrap_or(Err(TransferError::Timeout));
                    report_transfer(&shared, peer, None, res).await;
                    drop(permit);
                });
            }
        })
    };
    match token {
        Some(token) => {
            tokio::select! {
                _ = conn.closed() => {}
                _ = expire_token(&shared, &conn, token) => { conn.closed().await; }
            }
        }
        None => {
            conn.closed().await;
        }
    }
    writer.abort();
    reader.abort();
    bi.abort();
    uni.abort();
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    let _ = shared
        .events
        .send(Event::Disconnected {
            peer,
            conn_id: conn.stable_id(),
        })
        .await;
}
