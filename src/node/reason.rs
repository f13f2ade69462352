//! Why a node closes a connection: one enum, so the driver's close frame, its log line and
//! the simulator's handling all read the same value.

use std::time::Duration;

/// Why the mesh (or the driver, through it) closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The peer is banned, or is this node itself.
    Refused,
    /// Every partner slot is taken; the peer was handed a sample of others to try.
    PartnerSetFull,
    /// The peer broke the protocol; it is banned for a while.
    Misbehaved(Misbehaviour),
}

impl DisconnectReason {
    /// The text of the close frame and the log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::Refused => "refused",
            DisconnectReason::PartnerSetFull => "partner set full",
            DisconnectReason::Misbehaved(m) => m.as_str(),
        }
    }

    /// How long the close waits: a peer turned away for a full set first gets the sample
    /// of others queued just before, which the close would otherwise race.
    pub fn close_delay(&self) -> Duration {
        match self {
            DisconnectReason::PartnerSetFull => Duration::from_millis(300),
            _ => Duration::ZERO,
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol violation that gets a peer disconnected and banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A second Hello on an established connection.
    SecondHello,
    /// It left requests unanswered again and again.
    LeavesRequestsUnanswered,
    /// A control message past the wire limits.
    ControlOverLimits,
    /// A control frame that does not decode.
    MalformedControlFrame,
    /// A transfer frame that does not decode, or is cut short on purpose.
    MalformedTransferFrame,
    /// A request stream left empty, cut short or out of range.
    BadOrStalledRequest,
    /// It stopped reading an upload and held the slot.
    StoppedReadingUpload,
    /// It sent control messages, or peer candidates, past its [`crate::node::ControlBudget`].
    ControlFlood,
    /// It sent data that fails verification.
    Forged(Forgery),
}

impl Misbehaviour {
    /// The text of the close frame and the log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Misbehaviour::SecondHello => "second hello",
            Misbehaviour::LeavesRequestsUnanswered => "leaves requests unanswered",
            Misbehaviour::ControlOverLimits => "control message over limits",
            Misbehaviour::MalformedControlFrame => "malformed control frame",
            Misbehaviour::MalformedTransferFrame => "malformed or truncated transfer frame",
            Misbehaviour::BadOrStalledRequest => "bad or stalled request",
            Misbehaviour::StoppedReadingUpload => "stopped reading an upload",
            Misbehaviour::ControlFlood => "control flood",
            Misbehaviour::Forged(f) => f.as_str(),
        }
    }
}

/// Data that fails verification, by what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A part number past [`crate::stream::PARTS`].
    PartOutOfRange,
    /// The segment header's signature does not verify under the stream key.
    HeaderSignature,
    /// The header is for another segment than the frame names.
    HeaderForAnotherSegment,
    /// A reply for another segment or part than the one asked for.
    NotRequested,
    /// A push that carries no header (honest pushes always do).
    PushWithoutHeader,
    /// Piece ranges that the signed header cannot have.
    Pieces,
    /// A piece whose digest is not the signed one.
    PieceDigest,
    /// The whole segment's digest is not the signed one.
    SegmentDigest,
}

impl Forgery {
    /// The text of the close frame and the log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Forgery::PartOutOfRange => "part out of range",
            Forgery::HeaderSignature => "bad header signature",
            Forgery::HeaderForAnotherSegment => "header is for another segment",
            Forgery::NotRequested => "segment is not the one requested",
            Forgery::PushWithoutHeader => "push without a header",
            Forgery::Pieces => "pieces",
            Forgery::PieceDigest => "piece digest mismatch",
            Forgery::SegmentDigest => "segment digest mismatch",
        }
    }
}
