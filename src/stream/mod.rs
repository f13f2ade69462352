//! Identities, tickets and signed segment headers.
//!
//! A stream *is* its broadcaster's ed25519 public key: every segment travels
//! with a [`SignedHeader`] that key signed, and a node checks header, then bytes,
//! before it serves them to a player or a peer. Pure: no I/O except the key file.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;

pub(crate) mod codec;
mod header;
pub(crate) mod key;
mod ticket;

pub use header::{
    part_pieces, piece_range, piece_size_for, sign_segment, SegmentHeader, SignedHeader,
    VerifiedSegment,
};
pub use key::load_or_create_key;
pub use ticket::Ticket;

/// Largest segment a node accepts (bytes). Bounds every allocation made for a segment.
pub const MAX_SEGMENT_LEN: u32 = 64 * 1024 * 1024;
/// Largest number of pieces per segment; keeps a header under ~33 KiB.
pub const MAX_PIECES: usize = 1024;
/// Smallest piece size; pieces grow above it only to stay within [`MAX_PIECES`].
pub const MIN_PIECE_SIZE: u32 = 16 * 1024;
/// Parts a segment is split into for transfer: the unit a viewer asks one supplier for, so
/// one segment arrives from several suppliers at once and a relay's upload turns over
/// several times per segment. Part `j` is a contiguous run of pieces, see [`part_pieces`].
pub const PARTS: usize = 8;
/// A mask with one bit per part: every part of a segment.
pub const ALL_PARTS: u32 = (1 << PARTS) - 1;
/// Longest segment duration a header may claim.
pub const MAX_DURATION_MS: u32 = 60_000;
/// Most addresses a ticket may carry.
pub const MAX_TICKET_ADDRS: usize = 16;
/// Longest ticket string accepted (one with [`MAX_TICKET_ADDRS`] IPv6 addresses is about
/// 600 characters).
pub const MAX_TICKET_TEXT: usize = 4096;
/// Prefix of every ticket string; the digit is the ticket format version.
pub const TICKET_PREFIX: &str = "starling1";

/// Errors about identities, tickets and segment verification.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The key file exists but cannot be read.
    #[error("cannot read key file {path}: {source}")]
    KeyRead {
        /// The key file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds something other than a Starling key; it is left untouched.
    #[error("key file {path} is corrupt (expected 32 raw bytes or 64 hex characters); not overwriting it")]
    KeyCorrupt {
        /// The key file.
        path: String,
    },
    /// The key path is a symbolic link, which is never followed: a link planted there
    /// could swap the stream's identity.
    #[error("cannot read key file {path}: it is a symbolic link, which Starling does not follow; give the path of the file itself")]
    KeySymlink {
        /// The key file.
        path: String,
    },
    /// The key path is a directory, a device (such as /dev/zero) or a pipe.
    #[error("cannot read key file {path}: it is not a regular file (a directory, device or pipe)")]
    KeyNotRegular {
        /// The key file.
        path: String,
    },
    /// Others than its owner may read or write the key file; it is not used until fixed.
    #[error(
        "key file {path} is open to group or others (mode {mode:03o}): run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A new key could not be written.
    #[error("cannot write key file {path}: {source}")]
    KeyWrite {
        /// The key file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The ticket string is not a Starling ticket.
    #[error("malformed ticket: {0}")]
    BadTicket(&'static str),
    /// The header's signature does not verify under the stream key.
    #[error("segment header signature is invalid")]
    BadSignature,
    /// The header is internally inconsistent (sizes, piece count, duration).
    #[error("segment header is malformed: {0}")]
    BadHeader(&'static str),
    /// The bytes do not match the signed digests.
    #[error("segment bytes do not match the signed digest")]
    DigestMismatch,
}

/// A node's public identity: its ed25519 public key. The stream id is the broadcaster's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The key as four big-endian words: ordering them is ordering the bytes.
    fn words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (word, chunk) in w.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_be_bytes(b);
        }
        w
    }
}

/// Byte order, as a derived `Ord` would give, compared by words because ids key the
/// mesh's hottest maps.
impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.words().cmp(&other.words())
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The stream's identity: the broadcaster's public key.
pub type StreamId = NodeId;

impl NodeId {
    /// Short printable form for logs.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
    /// The ed25519 verifying key, if these bytes are a valid point.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The public id of a signing key.
pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

/// A public key with a signature that the lax ed25519 check accepts for every message: the
/// identity point, and R = identity, S = 0. Tests show the strict checks refuse them.
#[cfg(test)]
pub(crate) mod weak {
    use super::NodeId;
    use ed25519_dalek::Signature;

    /// The identity point, compressed: y = 1.
    pub(crate) const KEY: NodeId = {
        let mut k = [0u8; 32];
        k[0] = 1;
        NodeId(k)
    };

    /// R = the identity point, S = 0.
    pub(crate) fn signature() -> Signature {
        let mut sig = [0u8; 64];
        sig[0] = 1;
        Signature::from_bytes(&sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn node_ids_order_as_their_bytes(a in proptest::prelude::any::<[u8; 32]>(),
                                         b in proptest::prelude::any::<[u8; 32]>(),
                                         k in 0usize..32) {
            proptest::prop_assert_eq!(NodeId(a).cmp(&NodeId(b)), a.cmp(&b));
            // Ids sharing a prefix differ only at byte k.
            let mut c = a;
            c[k] = c[k].wrapping_add(1);
            proptest::prop_assert_eq!(NodeId(a).cmp(&NodeId(c)), a.cmp(&c));
        }
    }
}
