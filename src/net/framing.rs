//! Frames on QUIC streams, bounded in size and in time, and how a transfer or an upload
//! ends when they are not.

use crate::node::Forgery;
use crate::wire::{self, WireError};
use quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Longest one piece may wait for the receiver's flow-control credit. An honest
/// requester reads as data arrives (or drops the stream, which fails the write at
/// once); one whose window stays shut this long is holding an upload slot hostage.
pub(super) const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the body of a frame may take once it has begun.
pub(super) const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum TransferError {
    #[error("peer is busy")]
    Busy,
    #[error("peer does not hold the segment")]
    Unavailable,
    #[error("peer sent forged or corrupt data: {}", .0.as_str())]
    Forged(Forgery),
    #[error("unwanted segment")]
    Unwanted,
    #[error("the segment's assembly is gone")]
    Lost,
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("connection: {0}")]
    Io(String),
    #[error("timed out")]
    Timeout,
    /// The part began (its first frame checked out) and then no byte came for
    /// [`crate::node::PIECE_SILENCE`].
    #[error("part {part} of segment {number} went silent after its first frame")]
    Stalled {
        /// Segment number.
        number: u64,
        /// Part index.
        part: u8,
    },
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it.
pub(super) async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, TransferError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(TransferError::Wire(WireError::Truncated))
        }
        Err(e) => return Err(TransferError::Io(e.to_string())),
    }
    let len = wire::frame_len(prefix, max)?;
    let mut body = vec![0u8; len];
    read_within(recv, &mut body, FRAME_TIMEOUT).await?;
    Ok(Some(wire::decode_body(&body)?))
}

/// Fills `buf`, or fails if the sender finishes first or lets `limit` pass: a frame once
/// begun comes at once from an honest sender, so a trickle is a slowloris.
pub(super) async fn read_within(
    recv: &mut RecvStream,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), TransferError> {
    match tokio::time::timeout(limit, recv.read_exact(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            Err(TransferError::Wire(WireError::Truncated))
        }
        Ok(Err(e)) => Err(TransferError::Io(e.to_string())),
        Err(_) => Err(TransferError::Timeout),
    }
}

/// Fills `buf`, failing with [`TransferError::Timeout`] only when no byte comes for
/// `silence`: a piece crossing a congested link arrives slowly but steadily, and only silence
/// marks a stalled sender (the mesh bounds a trickle by its request timeout).
pub(super) async fn read_steadily(
    recv: &mut RecvStream,
    buf: &mut [u8],
    silence: Duration,
) -> Result<(), TransferError> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match tokio::time::timeout(silence, recv.read(rest)).await {
            Ok(Ok(Some(n))) => filled += n,
            Ok(Ok(None)) => return Err(TransferError::Wire(WireError::Truncated)),
            Ok(Err(e)) => return Err(TransferError::Io(e.to_string())),
            Err(_) => return Err(TransferError::Timeout),
        }
    }
    Ok(())
}

/// Why an upload stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    /// The receiver stopped the stream or the connection closed.
    #[error("stream closed")]
    Closed,
    /// The receiver's flow-control window stayed shut for [`STALL_TIMEOUT`].
    #[error("receiver stopped reading")]
    Stalled,
    /// The segment being relayed failed upstream.
    #[error("upstream transfer failed")]
    Upstream,
}

/// Writes `bytes`, giving up if the receiver withholds credit for [`STALL_TIMEOUT`].
pub(super) async fn write_within(send: &mut SendStream, bytes: &[u8]) -> Result<(), UploadError> {
    match tokio::time::timeout(STALL_TIMEOUT, send.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(UploadError::Closed),
        Err(_) => Err(UploadError::Stalled),
    }
}
