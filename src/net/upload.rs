//! Uploads: answering requests (from the store, or relayed from an assembly while it
//! fills) and seeding pushes, each through the node's upload cap. Whether a request is
//! served is [`crate::node::Uploads`]' rule.

use super::download::Assembly;
use super::driver::Event;
use super::framing::{read_frame, write_within, TransferError, UploadError};
use super::{add, Shared, UploadClass};
use crate::node::upload::peer_tag;
use crate::node::{seed_confirm_wait, Answer, Misbehaviour, Requester};
use crate::store;
use crate::stream::{part_pieces, piece_range, NodeId, SignedHeader, VerifiedSegment};
use crate::wire::{self, Reach, Reply, Request};
use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a peer has to send its request on a transfer stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a single upload (serve or push) may take before it is abandoned.
pub(super) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers one request stream from `peer` on `conn`, which its Hello said is reached as
/// `reach`.
pub(super) async fn serve(
    shared: &Shared,
    (peer, reach, conn): (NodeId, Reach, &Connection),
    send: &mut SendStream,
    mut recv: RecvStream,
) {
    let req = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<Request>(&mut recv, wire::MAX_REQUEST_FRAME),
    )
    .await
    {
        Ok(Ok(Some(r))) if r.validate().is_ok() => r,
        Ok(Err(TransferError::Io(_))) => {
            // Never leave the reply finished empty: that reads as a truncated reply.
            let _ = send.reset(quinn::VarInt::from_u32(1));
            return;
        }
        // An honest requester writes its whole request at once, right after opening the
        // stream: a stream left empty (slowloris), cut short, oversize or out of range is
        // deliberate.
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            let _ = shared
                .events
                .send(Event::Misbehaved {
                    peer,
                    reason: Misbehaviour::BadOrStalledRequest,
                })
                .await;
            return;
        }
    };
    // Nothing follows a request: bytes sent after it are discarded rather than held in the
    // stream's 2 MiB window for as long as the answer takes (a pinned-memory attack).
    let _ = recv.stop(quinn::VarInt::from_u32(0));
    let seg = if shared.uploads {
        store::lock(&shared.store).get(req.number).cloned()
    } else {
        None
    };
    let part = usize::from(req.part);
    let partial = match (&seg, shared.uploads) {
        (None, true) => shared
            .assemblies()
            .get(req.number)
            .cloned()
            // Only a part that is here or on its way: anything else would wait on nothing.
            .filter(|p| p.servable(part)),
        _ => None,
    };
    let servable = seg.is_some() || partial.is_some();
    let cap = shared.limiter.rate().map(|r| r.0);
    let backlog = shared.limiter.backlog();
    let who = Requester {
        symmetric: reach == Reach::Symmetric,
        lan: shared
            .reachability()
            .on_our_networks(conn.remote_address().ip()),
        peer: peer_tag(&peer),
    };
    let (answer, sharing) = {
        let mut up = shared.upload();
        let answer = up.admit(
            std::time::Instant::now(),
            servable,
            (req.number, req.part),
            req.join,
            (cap, backlog),
            who,
        );
        (answer, up.path(who.lan).active())
    };
    let reply = match answer {
        Answer::Serve => None,
        Answer::Unavailable => Some(Reply::Unavailable),
        Answer::BusySlots | Answer::BusyBacklog => {
            add(&shared.counters.busy_replies, 1);
            Some(Reply::Busy)
        }
    };
    if let Some(reply) = reply {
        let _ = send.write_all(&wire::encode(&reply)).await;
        let _ = send.finish();
        return;
    }
    let mut slot = UploadSlot(shared, who, None);
    let started = tokio::time::Instant::now();
    let (sent, whole) = match (seg, partial) {
        (Some(seg), _) => {
            let sent = send_part(shared, send, &seg, req, UploadClass::Serve).await;
            (sent, part_len(&seg, req.part))
        }
        (None, Some(partial)) => (relay_part(shared, send, &partial, req).await, None),
        (None, None) => (Ok(()), None),
    };
    let complete = sent.is_ok();
    end_upload(shared, peer, send, sent).await;
    // The slot is held until the receiver has every byte: written is only queued here
    // (the connection's send window holds megabytes), and an uplink counted free while its
    // queue grows takes on uploads it cannot carry. How long that took teaches the path's
    // slots (`PathSlots`); a relay's pace was its upstream's and teaches nothing.
    let acked = while_heard(conn, send.stopped(), started + UPLOAD_TIMEOUT).await;
    if let (true, Some(Ok(None)), Some(bytes)) = (complete, acked, whole) {
        let elapsed = started.elapsed().saturating_sub(conn.rtt());
        slot.2 = Some((bytes, elapsed, sharing));
    }
}

/// The bytes of part `part` of a held segment.
fn part_len(seg: &VerifiedSegment, part: u8) -> Option<u64> {
    let h = &seg.header.header;
    let range = part_pieces(h.pieces.len(), usize::from(part))?;
    let bytes = range
        .filter_map(|i| piece_range(h.len, h.piece_size, i))
        .map(|r| r.len() as u64)
        .sum();
    Some(bytes)
}

/// Closes an upload's stream after `sent`: an unfinished one is reset (never finished
/// mid-frame, which the receiver treats as a violation), and a receiver that stalled it
/// is reported.
async fn end_upload(
    shared: &Shared,
    peer: NodeId,
    send: &mut SendStream,
    sent: Result<(), UploadError>,
) {
    match sent {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            if matches!(e, UploadError::Stalled) {
                let _ = shared
                    .events
                    .send(Event::Misbehaved {
                        peer,
                        reason: Misbehaviour::StoppedReadingUpload,
                    })
                    .await;
            }
        }
    }
}

/// An upload [`crate::node::Uploads::admit`] let in for a requester; its slot is given
/// back on drop, however the upload ends, with what it measured if it went to the end
/// ([`crate::node::Uploads::finish`]).
struct UploadSlot<'a>(&'a Shared, Requester, Option<(u64, Duration, u64)>);

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.0
            .upload()
            .finish(std::time::Instant::now(), self.1, self.2);
    }
}

/// How long a relay waits for the next piece of its part to land here.
const RELAY_WAIT: Duration = Duration::from_secs(5);

/// The first frame of a part transfer, with the signed header when it is wanted.
fn part_reply(shared: &Shared, header: &SignedHeader, req: Request) -> Bytes {
    let frame = wire::encode(&Reply::Part {
        number: req.number,
        part: req.part,
        header: req.header.then(|| header.clone()),
    });
    add(&shared.counters.control_bytes, frame.len() as u64);
    frame
}

/// Streams a part of a segment that is still arriving: each piece goes out once it is
/// verified here. The caller finishes (or resets) the stream; see [`end_upload`].
async fn relay_part(
    shared: &Shared,
    send: &mut SendStream,
    partial: &Assembly,
    req: Request,
) -> Result<(), UploadError> {
    write_within(send, &part_reply(shared, &partial.header, req)).await?;
    let part = usize::from(req.part);
    let mut progress = partial.progress.subscribe();
    let range = part_pieces(partial.header.header.pieces.len(), part).unwrap_or(0..0);
    for i in range {
        let piece = loop {
            {
                let st = partial.lock();
                if let Some(p) = st.pieces.get(i).cloned().flatten() {
                    break p;
                }
                // Nothing brings this part here any more: stop, the requester asks elsewhere.
                if st.arriving.get(part).is_none_or(|a| *a == 0) {
                    return Err(UploadError::Upstream);
                }
            }
            match tokio::time::timeout(RELAY_WAIT, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(UploadError::Upstream),
            }
        };
        shared
            .limiter
            .acquire_as(UploadClass::Serve, piece.len() as u64)
            .await;
        write_within(send, &piece).await?;
        add(&shared.counters.bytes_uploaded, piece.len() as u64);
    }
    Ok(())
}

/// Sends part `req.part` of a held segment. The caller finishes (or resets) the stream;
/// see [`end_upload`].
async fn send_part(
    shared: &Shared,
    send: &mut SendStream,
    seg: &VerifiedSegment,
    req: Request,
    class: UploadClass,
) -> Result<(), UploadError> {
    write_within(send, &part_reply(shared, &seg.header, req)).await?;
    let h = &seg.header.header;
    let range = part_pieces(h.pieces.len(), usize::from(req.part)).unwrap_or(0..0);
    for i in range {
        let Some(range) = piece_range(h.len, h.piece_size, i) else {
            break;
        };
        let piece = seg.data.slice(range);
        shared.limiter.acquire_as(class, piece.len() as u64).await;
        write_within(send, &piece).await?;
        add(&shared.counters.bytes_uploaded, piece.len() as u64);
    }
    Ok(())
}

pub(super) async fn push(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    number: u64,
    part: u8,
) {
    let seg = store::lock(&shared.store).get(number).cloned();
    let Some(seg) = seg else { return };
    if !seed(&shared, &conn, peer, &seg, part).await {
        let _ = shared
            .events
            .send(Event::PushUnconfirmed { peer, number, part })
            .await;
    }
}

/// What changes on a connection only when its peer acknowledges packets it had not
/// acknowledged before: the RTT estimate takes a sample, the congestion window moves, or
/// packets are declared lost. (Counting ACK frames would not do: a peer that only sends
/// repeats its old acknowledgements in its own packets.)
fn path_state(conn: &Connection) -> (Duration, u64, u64) {
    let p = conn.stats().path;
    (p.rtt, p.cwnd, p.lost_packets)
}

/// Pushes one part of `seg` to `peer`; true if `peer` acknowledged every byte or stopped
/// the stream (it had the part already) before its connection went a whole
/// [`seed_confirm_wait`] acknowledging no new packet (or [`UPLOAD_TIMEOUT`] passed). A vanished
/// receiver does neither. Opening the stream is watched the same way: a receiver that
/// vanished before its grant of streams reached us would otherwise hold its seeds unsent
/// until the connection timed out (`tests/loopback.rs` met it on a loaded machine).
async fn seed(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    seg: &VerifiedSegment,
    part: u8,
) -> bool {
    let give_up = tokio::time::Instant::now() + UPLOAD_TIMEOUT;
    let Some(Ok(mut send)) = while_heard(conn, conn.open_uni(), give_up).await else {
        return false;
    };
    let seeding = shared.limiter.seeding();
    let req = Request {
        number: seg.header.header.number,
        part,
        header: true,
        join: false,
    };
    // Not watched: the uplink's limiter may hold the writes while nothing is in flight.
    let sent = tokio::time::timeout_at(
        give_up,
        send_part(shared, &mut send, seg, req, UploadClass::Seed),
    )
    .await
    .unwrap_or(Err(UploadError::Closed));
    end_upload(shared, peer, &mut send, sent).await;
    drop(seeding);
    // `stopped` yields once the stream is stopped by the receiver or its every byte (or
    // its reset) is acknowledged, and fails if the connection is lost.
    let stopped = send.stopped();
    while_heard(conn, stopped, give_up)
        .await
        .is_some_and(|answer| answer.is_ok())
}

/// Awaits `fut` while `conn`'s peer is heard from: None once its connection acknowledged
/// no new packet for a whole [`seed_confirm_wait`], or at `give_up`.
async fn while_heard<F: std::future::Future>(
    conn: &Connection,
    fut: F,
    give_up: tokio::time::Instant,
) -> Option<F::Output> {
    tokio::pin!(fut);
    let mut path = path_state(conn);
    loop {
        let wait = seed_confirm_wait(conn.rtt());
        match tokio::time::timeout_at(give_up.min(tokio::time::Instant::now() + wait), &mut fut)
            .await
        {
            Ok(out) => return Some(out),
            Err(_) => {
                // Written is not sent: on a congested path the part may still be queued
                // here or in the network, and re-seeding it would only add to the queue
                // (lab runs showed re-seeds feeding on themselves until every site's WAN
                // was full). A receiver that still acknowledges new packets is there; one
                // that acknowledged none for the whole wait has vanished.
                let now = path_state(conn);
                if now == path || tokio::time::Instant::now() >= give_up {
                    return None;
                }
                path = now;
            }
        }
    }
}
