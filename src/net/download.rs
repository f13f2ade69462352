//! Downloads: a part arriving (asked for, or pushed) is verified piece by piece into its
//! segment's [`Assembly`], which relays read from while it fills, and the segment is stored
//! once whole. Whether a part is wanted, and the bound on assemblies, are
//! [`crate::node::Assemblies`]' rules.

use super::driver::Event;
use super::framing::{read_frame, read_steadily, TransferError};
use super::{add, Shared};
use crate::node::{
    Assemblies, FirstFrame, Forgery, Misbehaviour, LAN_PIECE_SILENCE, PIECE_SILENCE,
};
use crate::store;
use crate::stream::{part_pieces, piece_range, NodeId, SignedHeader, VerifiedSegment, PARTS};
use crate::wire::{self, Reply, Request, WireError};
use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A segment whose signed header is verified and whose pieces are still arriving, part by
/// part and possibly from several suppliers at once.
///
/// Pieces are stored only after their digest checks, so a peer served from here gets
/// verified bytes only. `progress` changes whenever a piece lands or a part's transfer
/// ends, which is what relays of this segment wait on.
pub(super) struct Assembly {
    pub(super) header: SignedHeader,
    state: Mutex<AssemblyState>,
    pub(super) progress: watch::Sender<u64>,
}

#[derive(Debug)]
pub(super) struct AssemblyState {
    pub(super) pieces: Vec<Option<Bytes>>,
    /// Transfers of each part writing into this partial right now.
    pub(super) arriving: [u8; PARTS],
}

impl Assembly {
    fn new(header: SignedHeader) -> Assembly {
        // The signed header vouches for the piece count (at most `MAX_PIECES`).
        let pieces = vec![None; header.header.pieces.len()];
        Assembly {
            header,
            state: Mutex::new(AssemblyState {
                pieces,
                arriving: [0; PARTS],
            }),
            progress: watch::channel(0).0,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, AssemblyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The verified pieces from the segment's first byte on, up to the first missing one
    /// (what the local HTTP server may hand a player before the segment is whole).
    pub(super) fn verified_prefix(&self) -> Vec<Bytes> {
        self.lock().pieces.iter().map_while(Clone::clone).collect()
    }

    /// Whether part `part` is here whole, or arriving: then a relay of it can be served.
    pub(super) fn servable(&self, part: usize) -> bool {
        let st = self.lock();
        st.arriving.get(part).is_some_and(|a| *a > 0) || part_complete(&st.pieces, part)
    }
}

fn part_complete(pieces: &[Option<Bytes>], part: usize) -> bool {
    part_pieces(pieces.len(), part).is_some_and(|r| {
        pieces
            .get(r)
            .is_some_and(|ps| ps.iter().all(Option::is_some))
    })
}

/// One transfer writing part `part` into a partial; ends its "arriving" mark on drop,
/// however the transfer ends, and wakes the relays so they notice.
struct Arriving {
    partial: Arc<Assembly>,
    part: usize,
}

impl Arriving {
    fn start(partial: Arc<Assembly>, part: usize) -> Arriving {
        if let Some(a) = partial.lock().arriving.get_mut(part) {
            *a = a.saturating_add(1);
        }
        Arriving { partial, part }
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if let Some(a) = self.partial.lock().arriving.get_mut(self.part) {
            *a = a.saturating_sub(1);
        }
        self.partial.bump();
    }
}

/// What one part transfer brought.
pub(super) struct PartDone {
    number: u64,
    part: u8,
    len: u64,
    /// The part completed the segment, of this duration; it is in the store.
    completed: Option<Duration>,
}

/// Receives one part (a reply to our request for `expected`, or a push), verifying the
/// header's signature if one comes and every piece's digest as it lands, into the
/// segment's partial; assembles and stores the segment when this part completes it.
pub(super) async fn receive_part(
    shared: &Shared,
    mut recv: RecvStream,
    (from, silence): (NodeId, Duration),
    expected: Option<(u64, u8)>,
) -> Result<PartDone, TransferError> {
    let reply = read_frame::<Reply>(&mut recv, wire::MAX_REPLY_FRAME)
        .await?
        .ok_or(TransferError::Wire(WireError::Truncated))?;
    let (number, part, header) = match reply {
        Reply::Busy => return Err(TransferError::Busy),
        Reply::Unavailable => return Err(TransferError::Unavailable),
        Reply::Part {
            number,
            part,
            header,
        } => (number, part, header),
    };
    let j = usize::from(part);
    if j >= PARTS {
        return Err(TransferError::Forged(Forgery::PartOutOfRange));
    }
    if let Some(h) = &header {
        h.verify(&shared.stream)
            .map_err(|_| TransferError::Forged(Forgery::HeaderSignature))?;
        if h.header.number != number {
            return Err(TransferError::Forged(Forgery::HeaderForAnotherSegment));
        }
        shared.upload().note_header(&h.header);
    }
    if expected.is_some_and(|e| e != (number, part)) {
        return Err(TransferError::Forged(Forgery::NotRequested));
    }
    let wanted = {
        let s = store::lock(&shared.store);
        Assemblies::<()>::wanted(number, s.contains(number), s.newest())
    };
    let (partial, created) = {
        let mut assemblies = shared.assemblies();
        let make = header.map(|h| || Arc::new(Assembly::new(h)));
        match assemblies.first_frame(number, wanted, expected.is_none(), make) {
            FirstFrame::Take { created } => (assemblies.get(number).cloned(), created),
            FirstFrame::Unwanted => (None, false),
            FirstFrame::PushWithoutHeader => {
                return Err(TransferError::Forged(Forgery::PushWithoutHeader))
            }
            FirstFrame::Lost => return Err(TransferError::Lost),
        }
    };
    let pieces = partial.as_ref().map_or(0, |p| p.header.header.pieces.len());
    let empty = part_pieces(pieces, j).is_none_or(|r| r.is_empty());
    let partial = match partial {
        // An empty part (a segment with fewer pieces than parts) is complete with its
        // header: it is answered, not refused, so the mesh counts it as held.
        Some(p) if empty || !part_complete(&p.lock().pieces, j) => p,
        _ => {
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return Err(TransferError::Unwanted);
        }
    };
    if expected.is_none() && from == shared.stream {
        shared.upload().note_seeded(number, part);
    }
    if created {
        // The other empty parts are held as of now too: the mesh need not ask for them.
        for k in (0..PARTS).filter(|k| *k != j) {
            if part_pieces(pieces, k).is_some_and(|r| r.is_empty()) {
                let _ = shared
                    .events
                    .send(Event::Part {
                        from,
                        number,
                        part: k as u8,
                        len: 0,
                        completed: None,
                    })
                    .await;
            }
        }
    }
    let _arriving = Arriving::start(partial.clone(), j);
    // Also for a second copy: its first frame is the supplier's answer, so the mesh does
    // not count the request as stalled (it announces a part only once).
    let _ = shared
        .events
        .send(Event::Receiving { from, number, part })
        .await;
    let h = &partial.header.header;
    let range = part_pieces(h.pieces.len(), j).ok_or(TransferError::Forged(Forgery::Pieces))?;
    let mut len = 0u64;
    for i in range {
        let bytes =
            piece_range(h.len, h.piece_size, i).ok_or(TransferError::Forged(Forgery::Pieces))?;
        let mut piece = BytesMut::zeroed(bytes.len());
        read_steadily(&mut recv, &mut piece, silence)
            .await
            .map_err(|e| match e {
                // Announced as arriving, so the mesh asks nobody else for it: it must hear.
                TransferError::Timeout => TransferError::Stalled { number, part },
                e => e,
            })?;
        partial
            .header
            .check_piece(i, &piece)
            .map_err(|_| TransferError::Forged(Forgery::PieceDigest))?;
        len += piece.len() as u64;
        if let Some(slot) = partial.lock().pieces.get_mut(i) {
            slot.get_or_insert(piece.freeze());
        }
        partial.bump();
        shared.note_arrival();
    }
    let counter = if from == shared.stream {
        &shared.counters.bytes_from_origin
    } else {
        &shared.counters.bytes_from_peers
    };
    add(counter, len);
    let completed = assemble(shared, number, &partial)?;
    Ok(PartDone {
        number,
        part,
        len,
        completed,
    })
}

/// Stores the segment if every piece of `partial` is here: the whole is checked against
/// the signed digest too. Returns its duration when this call stored it.
fn assemble(
    shared: &Shared,
    number: u64,
    partial: &Arc<Assembly>,
) -> Result<Option<Duration>, TransferError> {
    let data = {
        let st = partial.lock();
        if st.pieces.iter().any(Option::is_none) {
            return Ok(None);
        }
        let mut data = BytesMut::with_capacity(partial.header.header.len as usize);
        for p in st.pieces.iter().flatten() {
            data.extend_from_slice(p);
        }
        data.freeze()
    };
    {
        let mut assemblies = shared.assemblies();
        // Another transfer completing at the same moment stores it; only one does.
        match assemblies.get(number) {
            Some(p) if Arc::ptr_eq(p, partial) => {
                assemblies.remove(number);
            }
            _ => return Ok(None),
        }
    }
    let seg = VerifiedSegment::verify(&shared.stream, partial.header.clone(), data)
        .map_err(|_| TransferError::Forged(Forgery::SegmentDigest))?;
    let duration = Duration::from_millis(seg.header.header.duration_ms as u64);
    let newest = {
        let mut store = store::lock(&shared.store);
        if store.insert(seg) {
            add(&shared.counters.segments_verified, 1);
        }
        store.newest()
    };
    shared.note_arrival();
    if let Some(newest) = newest {
        shared.assemblies().keep_window(newest);
    }
    Ok(Some(duration))
}

pub(super) async fn report_transfer(
    shared: &Shared,
    peer: NodeId,
    requested: Option<(u64, u8)>,
    res: Result<PartDone, TransferError>,
) {
    let ev = match res {
        Ok(done) => Event::Part {
            from: peer,
            number: done.number,
            part: done.part,
            len: done.len,
            completed: done.completed,
        },
        Err(TransferError::Forged(forgery)) => {
            add(&shared.counters.rejected_segments, 1);
            Event::Misbehaved {
                peer,
                reason: Misbehaviour::Forged(forgery),
            }
        }
        // Honest senders reset an abandoned transfer; finishing it mid-frame is deliberate.
        Err(TransferError::Wire(
            WireError::Oversize { .. } | WireError::Malformed | WireError::Truncated,
        )) => Event::Misbehaved {
            peer,
            reason: Misbehaviour::MalformedTransferFrame,
        },
        // Pushed or asked for alike: the part was held up and must be asked elsewhere.
        Err(TransferError::Stalled { number, part }) => Event::PartStalled { peer, number, part },
        Err(e) => match requested {
            Some((number, part)) => Event::TransferFailed {
                peer,
                number,
                part,
                busy: matches!(e, TransferError::Busy),
            },
            None => return,
        },
    };
    let _ = shared.events.send(ev).await;
}

/// How long a part from `conn`'s peer may go silent: longer for a partner on our own
/// networks ([`LAN_PIECE_SILENCE`]).
pub(super) fn piece_silence(shared: &Shared, conn: &Connection) -> Duration {
    if shared
        .reachability()
        .on_our_networks(conn.remote_address().ip())
    {
        LAN_PIECE_SILENCE
    } else {
        PIECE_SILENCE
    }
}

pub(super) async fn request(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    (number, part): (u64, u8),
    join: bool,
) {
    let res = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| TransferError::Io(e.to_string()))?;
        // Ask for the signed header only if no transfer of this segment brought it yet.
        let header = !shared.assemblies().contains(number);
        let frame = wire::encode(&Request {
            number,
            part,
            header,
            join,
        });
        add(&shared.counters.control_bytes, frame.len() as u64);
        send.write_all(&frame)
            .await
            .map_err(|e| TransferError::Io(e.to_string()))?;
        let _ = send.finish();
        let silence = piece_silence(&shared, &conn);
        receive_part(&shared, recv, (peer, silence), Some((number, part))).await
    }
    .await;
    report_transfer(&shared, peer, Some((number, part)), res).await;
}
