//! Identities, tickets and signed segment headers.
//!
//! A stream *is* its broadcaster's ed25519 public key: every segment travels
//! with a [`SignedHeader`] that key signed, and a node checks header, then bytes,
//! before it serves them to a player or a peer. Pure: no I/O except the key file.

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

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
/// Prefix of every ticket string; the digit is the ticket format version.
pub const TICKET_PREFIX: &str = "starling1";

/// Domain separation: a segment signature can never be mistaken for another signed message.
const HEADER_CONTEXT: &[u8] = b"starling segment header v1\0";

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

/// Byte order, as a derived `Ord` would give, by words: ids are the keys of the mesh's
/// maps, and the byte-wise `memcmp` was 4% of a simulation's instructions.
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

/// Loads the node key from `path`, or creates and saves a new one if the file does not exist.
///
/// An existing file that cannot be read or parsed is an error and is never overwritten:
/// losing a broadcaster's key loses its stream identity.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, StreamError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => parse_key(&bytes).ok_or(StreamError::KeyCorrupt { path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            write_key(path, &key).map_err(|source| StreamError::KeyWrite {
                path: shown,
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(StreamError::KeyRead {
            path: shown,
            source,
        }),
    }
}

fn parse_key(bytes: &[u8]) -> Option<SigningKey> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let raw: Vec<u8> = match text {
        Some(t) if t.len() == 64 => data_encoding::HEXLOWER_PERMISSIVE
            .decode(t.as_bytes())
            .ok()?,
        _ if bytes.len() == 32 => bytes.to_vec(),
        _ => return None,
    };
    let arr: [u8; 32] = raw.try_into().ok()?;
    Some(SigningKey::from_bytes(&arr))
}

fn write_key(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    // create_new: never clobber a key that appeared between our read and this write.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{}\n", hex(&key.to_bytes())).as_bytes())?;
    f.sync_all()
}

/// The public id of a signing key.
pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

/// What a viewer needs to join: the stream key and where the broadcaster listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The stream id (broadcaster's public key).
    pub stream: StreamId,
    /// Addresses the broadcaster's QUIC endpoint is reachable at.
    pub addrs: Vec<SocketAddr>,
}

impl Ticket {
    /// The copy-pasteable form: `starling1` + lowercase base32 of the postcard encoding.
    pub fn encode(&self) -> String {
        // A Vec-backed postcard encoding of plain data cannot fail.
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!(
            "{TICKET_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    /// Parses a ticket string (surrounding whitespace is ignored).
    pub fn decode(text: &str) -> Result<Ticket, StreamError> {
        let text = text.trim();
        if text.len() > 4096 {
            return Err(StreamError::BadTicket("too long"));
        }
        let body = text
            .strip_prefix(TICKET_PREFIX)
            .ok_or(StreamError::BadTicket("it does not start with 'starling1'"))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| StreamError::BadTicket("not valid base32"))?;
        let ticket: Ticket =
            postcard::from_bytes(&bytes).map_err(|_| StreamError::BadTicket("garbled contents"))?;
        if ticket.addrs.is_empty() || ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(StreamError::BadTicket("wrong number of addresses"));
        }
        if ticket.stream.verifying_key().is_none() {
            return Err(StreamError::BadTicket(
                "stream key is not a valid ed25519 key",
            ));
        }
        Ok(ticket)
    }
}

/// The facts about one segment that the broadcaster signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Sequence number: consecutive, continues across broadcaster restarts.
    pub number: u64,
    /// Duration in milliseconds, from the source's timestamps.
    pub duration_ms: u32,
    /// Length of the segment in bytes.
    pub len: u32,
    /// blake3 of the whole segment.
    pub digest: [u8; 32],
    /// The broadcaster's wall clock at publication (ms since the Unix epoch).
    pub published_unix_ms: u64,
    /// The broadcaster restarted (or the source jumped) just before this segment.
    pub discontinuity: bool,
    /// Size of every piece but the last.
    pub piece_size: u32,
    /// blake3 of each piece, so pieces can be checked (and relayed) as they arrive.
    pub pieces: Vec<[u8; 32]>,
}

/// A segment header with the stream key's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The signed facts.
    pub header: SegmentHeader,
    /// ed25519 signature over the context string `starling segment header v1\0` followed
    /// by postcard(header).
    pub signature: Signature,
}

/// The piece size for a segment of `len` bytes.
pub fn piece_size_for(len: u32) -> u32 {
    let need = len.div_ceil(MAX_PIECES as u32);
    need.max(MIN_PIECE_SIZE).next_multiple_of(1024)
}

/// The byte range of piece `index` in a segment of `len` bytes.
pub fn piece_range(len: u32, piece_size: u32, index: usize) -> Option<std::ops::Range<usize>> {
    let start = (index as u64).checked_mul(piece_size as u64)?;
    if start >= len as u64 || piece_size == 0 {
        return None;
    }
    let end = (start + piece_size as u64).min(len as u64);
    Some(start as usize..end as usize)
}

/// The piece indices of part `part` (of [`PARTS`]) in a segment of `pieces` pieces:
/// contiguous, in order, and together covering every piece once. Empty when the segment
/// has fewer pieces than parts; `None` for a part number out of range.
pub fn part_pieces(pieces: usize, part: usize) -> Option<std::ops::Range<usize>> {
    if part >= PARTS {
        return None;
    }
    Some(part * pieces / PARTS..(part + 1) * pieces / PARTS)
}

fn signed_bytes(header: &SegmentHeader) -> Vec<u8> {
    let mut out = HEADER_CONTEXT.to_vec();
    // Encoding plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(header).unwrap_or_default());
    out
}

/// Builds and signs the header for `data` (broadcaster side).
pub fn sign_segment(
    key: &SigningKey,
    number: u64,
    duration_ms: u32,
    published_unix_ms: u64,
    discontinuity: bool,
    data: &[u8],
) -> Result<SignedHeader, StreamError> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l <= MAX_SEGMENT_LEN)
        .ok_or(StreamError::BadHeader("segment too large"))?;
    let piece_size = piece_size_for(len);
    let pieces = data
        .chunks(piece_size as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();
    let header = SegmentHeader {
        number,
        duration_ms: duration_ms.min(MAX_DURATION_MS),
        len,
        digest: *blake3::hash(data).as_bytes(),
        published_unix_ms,
        discontinuity,
        piece_size,
        pieces,
    };
    let signature = key.sign(&signed_bytes(&header));
    Ok(SignedHeader { header, signature })
}

impl SignedHeader {
    /// Checks the signature and the header's internal consistency.
    pub fn verify(&self, stream: &StreamId) -> Result<(), StreamError> {
        let h = &self.header;
        if h.len > MAX_SEGMENT_LEN {
            return Err(StreamError::BadHeader("segment too large"));
        }
        if h.duration_ms > MAX_DURATION_MS {
            return Err(StreamError::BadHeader("duration too long"));
        }
        if h.piece_size != piece_size_for(h.len) {
            return Err(StreamError::BadHeader("unexpected piece size"));
        }
        if h.pieces.len() != (h.len as usize).div_ceil(h.piece_size as usize) {
            return Err(StreamError::BadHeader("piece count does not match length"));
        }
        let key = stream.verifying_key().ok_or(StreamError::BadSignature)?;
        key.verify(&signed_bytes(h), &self.signature)
            .map_err(|_| StreamError::BadSignature)
    }

    /// Checks piece `index` against its signed digest.
    pub fn check_piece(&self, index: usize, bytes: &[u8]) -> Result<(), StreamError> {
        let h = &self.header;
        let range = piece_range(h.len, h.piece_size, index).ok_or(StreamError::DigestMismatch)?;
        let want = h.pieces.get(index).ok_or(StreamError::DigestMismatch)?;
        if range.len() != bytes.len() || blake3::hash(bytes).as_bytes() != want {
            return Err(StreamError::DigestMismatch);
        }
        Ok(())
    }

    /// Checks a whole segment's bytes against the signed length and digest.
    pub fn check_data(&self, data: &[u8]) -> Result<(), StreamError> {
        if data.len() != self.header.len as usize
            || blake3::hash(data).as_bytes() != &self.header.digest
        {
            return Err(StreamError::DigestMismatch);
        }
        Ok(())
    }
}

/// A segment whose header and bytes have both been verified against the stream key.
#[derive(Debug, Clone)]
pub struct VerifiedSegment {
    /// The signed header.
    pub header: SignedHeader,
    /// Exactly the bytes the broadcaster cut.
    pub data: Bytes,
}

impl VerifiedSegment {
    /// Verifies header and bytes; the only way to build one from untrusted parts.
    pub fn verify(
        stream: &StreamId,
        header: SignedHeader,
        data: Bytes,
    ) -> Result<VerifiedSegment, StreamError> {
        header.verify(stream)?;
        header.check_data(&data)?;
        Ok(VerifiedSegment { header, data })
    }

    /// The segment number.
    pub fn number(&self) -> u64 {
        self.header.header.number
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

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

    #[test]
    fn parts_cover_every_piece_once_in_order() {
        for pieces in [0, 1, 3, 7, 8, 9, 16, 100, MAX_PIECES] {
            let mut next = 0;
            for part in 0..PARTS {
                let r = part_pieces(pieces, part).unwrap();
                assert_eq!(r.start, next, "{pieces} pieces, part {part}");
                next = r.end;
            }
            assert_eq!(next, pieces);
            assert!(part_pieces(pieces, PARTS).is_none());
        }
        // With at least PARTS pieces, no part is empty.
        assert!((0..PARTS).all(|j| !part_pieces(16, j).unwrap().is_empty()));
    }

    #[test]
    fn header_round_trip_and_verify() {
        let k = key(1);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let h = sign_segment(&k, 7, 2000, 1234, false, &data).unwrap();
        let wire = postcard::to_allocvec(&h).unwrap();
        let back: SignedHeader = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, h);
        let seg = VerifiedSegment::verify(&node_id(&k), back.clone(), Bytes::from(data.clone()));
        assert!(seg.is_ok());
        for (i, chunk) in data.chunks(h.header.piece_size as usize).enumerate() {
            back.check_piece(i, chunk).unwrap();
        }
        assert!(back.check_piece(h.header.pieces.len(), &[]).is_err());
    }

    #[test]
    fn forged_headers_and_bytes_are_rejected() {
        let k = key(1);
        let other = key(2);
        let data = vec![5u8; 40_000];
        let h = sign_segment(&k, 7, 2000, 1234, false, &data).unwrap();
        let stream = node_id(&k);
        // Re-signed by another key.
        let resigned = sign_segment(&other, 7, 2000, 1234, false, &data).unwrap();
        assert!(matches!(
            resigned.verify(&stream),
            Err(StreamError::BadSignature)
        ));
        // Number changed (replay under a new number).
        let mut renumbered = h.clone();
        renumbered.header.number = 8;
        assert!(renumbered.verify(&stream).is_err());
        // Bytes flipped.
        let mut bad = data.clone();
        bad[100] ^= 1;
        assert!(VerifiedSegment::verify(&stream, h.clone(), Bytes::from(bad.clone())).is_err());
        assert!(h.check_piece(0, &bad[..16 * 1024]).is_err());
        // Truncated.
        assert!(h.check_data(&data[..data.len() - 1]).is_err());
    }

    #[test]
    fn piece_sizes_bound_piece_count() {
        for len in [
            0u32,
            1,
            16 * 1024,
            16 * 1024 + 1,
            20_000_000,
            MAX_SEGMENT_LEN,
        ] {
            let ps = piece_size_for(len);
            assert!(ps >= MIN_PIECE_SIZE);
            assert!(
                (len as usize).div_ceil(ps as usize) <= MAX_PIECES,
                "len {len}"
            );
        }
    }

    #[test]
    fn ticket_round_trip_and_garbage() {
        let t = Ticket {
            stream: node_id(&key(3)),
            addrs: vec![
                "127.0.0.1:4433".parse().unwrap(),
                "[::1]:9".parse().unwrap(),
            ],
        };
        let s = t.encode();
        assert!(s.starts_with(TICKET_PREFIX));
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
        assert!(Ticket::decode("starling1").is_err());
        assert!(Ticket::decode("hello").is_err());
        assert!(Ticket::decode(&s[..s.len() - 3]).is_err());
        assert!(Ticket::decode(&format!("{s}0")).is_err());
    }

    #[test]
    fn key_file_is_created_kept_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("starling-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(StreamError::KeyCorrupt { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
