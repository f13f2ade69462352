//! Signed segment headers: what the broadcaster signs per segment, how pieces and parts
//! divide a segment, and the checks that make a [`VerifiedSegment`].

use super::{
    StreamError, StreamId, MAX_DURATION_MS, MAX_PIECES, MAX_SEGMENT_LEN, MIN_PIECE_SIZE, PARTS,
};
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

/// Domain separation: a segment signature can never be mistaken for another signed message.
const HEADER_CONTEXT: &[u8] = b"starling segment header v1\0";

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
        // Strict: a small-order key or R, which verify any message under the lax check, fail.
        key.verify_strict(&signed_bytes(h), &self.signature)
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
    use crate::stream::{node_id, weak};
    use rand::SeedableRng;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
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
    fn a_small_order_key_signs_nothing() {
        let mut h = sign_segment(&key(1), 7, 2000, 1234, false, &[5u8; 1000]).unwrap();
        h.signature = weak::signature();
        let weak = weak::KEY;
        let lax = weak.verifying_key().unwrap();
        assert!(lax.is_weak());
        assert!(
            ed25519_dalek::Verifier::verify(&lax, &signed_bytes(&h.header), &h.signature).is_ok(),
            "the lax check this replaced accepts it"
        );
        assert!(matches!(h.verify(&weak), Err(StreamError::BadSignature)));
    }
}
