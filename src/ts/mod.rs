//! MPEG-TS scanning and the keyframe segmenter (pure: bytes in, segments out).
//!
//! [`Segmenter`] cuts a transport stream, fed in chunks of any size, into
//! segments that each start with PAT + PMT and a random-access point, so each
//! decodes alone. [`Restamper`] and [`pts_span`] let a clip loop as one
//! continuous stream. No I/O and no clock here; all input is untrusted.

pub(crate) mod frames;
mod packet;
mod psi;
mod rap;
mod restamp;
mod segmenter;

pub use frames::{frame_starts, FrameStart};
pub use restamp::{pts_span, Restamper};
pub use segmenter::{CutSegment, Segmenter, MAX_SEGMENT_BYTES, MAX_SEGMENT_DURATION};

/// Why a PSI section was not taken. The segmenter never fails: it skips such
/// sections (and logs them at debug level) and keeps the last good tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    /// The section is shorter than its header says or than its fields need.
    #[error("PSI section truncated")]
    SectionTruncated,
    /// The section is longer than PAT/PMT sections may be (1024 bytes).
    #[error("PSI section too long: {0} bytes")]
    SectionTooLong(usize),
    /// The section's CRC-32 does not match its bytes.
    #[error("PSI section CRC mismatch")]
    BadCrc,
    /// A table other than the one this PID carries.
    #[error("unexpected table id {0:#04x}")]
    UnexpectedTable(u8),
    /// A table not yet in force (current_next_indicator 0) or split over
    /// several sections, which the segmenter does not re-emit.
    #[error("PSI section not applicable (next version or multi-section table)")]
    NotApplicable,
    /// A PMT for a program the PAT does not list on that PID.
    #[error("PMT for program {0} not listed in the PAT on this PID")]
    UnlistedProgram(u16),
}
