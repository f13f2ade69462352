//! Decides whether a video PES starts at a random-access point by scanning
//! its elementary stream for start codes. The scan runs across TS packets:
//! x264 puts a large SEI in front of the first IDR slice, so the slice can
//! begin several packets into the PES.

use super::psi::VideoCodec;

/// Reads elementary-stream bytes of one PES, fed in pieces, until the first
/// slice (or sequence header) tells whether the picture is a random-access point.
#[derive(Debug, Clone)]
pub(crate) struct RapScanner {
    codec: VideoCodec,
    /// Zero bytes seen in a row; a start code is two or more, then 0x01.
    zeros: u8,
    /// The previous bytes ended in a start code: the next byte is a NAL header.
    at_nal_header: bool,
    /// The answer, once known.
    verdict: Option<bool>,
}

impl RapScanner {
    /// A scanner for one PES of `codec`.
    pub(crate) fn new(codec: VideoCodec) -> Self {
        RapScanner {
            codec,
            zeros: 0,
            at_nal_header: false,
            verdict: None,
        }
    }

    /// The answer so far: `Some(true)` random access, `Some(false)` not,
    /// `None` no slice seen yet.
    pub(crate) fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Scans the next elementary-stream bytes; returns the verdict so far.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Option<bool> {
        for &b in data {
            if self.verdict.is_some() {
                break;
            }
            if self.at_nal_header {
                self.at_nal_header = false;
                self.verdict = classify_unit(self.codec, b);
                self.zeros = u8::from(b == 0);
                continue;
            }
            if b == 0 {
                self.zeros = self.zeros.saturating_add(1);
            } else {
                if b == 1 && self.zeros >= 2 {
                    self.at_nal_header = true;
                }
                self.zeros = 0;
            }
        }
        self.verdict
    }
}

/// What the first byte after a start code says about the picture.
fn classify_unit(codec: VideoCodec, b: u8) -> Option<bool> {
    match codec {
        VideoCodec::H264 => match b & 0x1F {
            5 => Some(true),      // IDR slice
            1..=4 => Some(false), // non-IDR slice or partition
            _ => None,            // SPS, PPS, SEI, AUD, ...: keep reading
        },
        VideoCodec::Hevc => match (b >> 1) & 0x3F {
            16..=21 => Some(true), // BLA, IDR, CRA: IRAP pictures
            0..=15 => Some(false), // other slices
            _ => None,             // parameter sets, SEI, AUD, reserved
        },
        VideoCodec::Mpeg2 => match b {
            0xB3 => Some(true),         // sequence header
            0x00..=0xAF => Some(false), // picture or slice without one
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idr_behind_sei_split_across_pieces() {
        // AUD, SPS, a long SEI, then the IDR slice, fed in small pieces.
        let mut es = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x64, 0x00];
        es.extend_from_slice(&[0, 0, 1, 0x06]);
        es.extend(std::iter::repeat_n(0x55, 700));
        es.extend_from_slice(&[0, 0, 1, 0x65, 0x88]);
        let mut s = RapScanner::new(VideoCodec::H264);
        let mut verdict = None;
        for piece in es.chunks(3) {
            verdict = s.feed(piece);
        }
        assert_eq!(verdict, Some(true));
    }

    #[test]
    fn non_idr_slice_is_not_random_access() {
        let mut s = RapScanner::new(VideoCodec::H264);
        assert_eq!(s.feed(&[0, 0, 0, 1, 0x09, 0xF0, 0, 0]), None);
        assert_eq!(s.feed(&[1, 0x41, 0x9A]), Some(false));
        // The verdict sticks even if an IDR-looking byte follows.
        assert_eq!(s.feed(&[0, 0, 1, 0x65]), Some(false));
    }

    #[test]
    fn hevc_irap_types() {
        for (nal_type, want) in [
            (19u8, Some(true)),
            (21, Some(true)),
            (1, Some(false)),
            (32, None),
        ] {
            let mut s = RapScanner::new(VideoCodec::Hevc);
            assert_eq!(
                s.feed(&[0, 0, 1, nal_type << 1, 1]),
                want,
                "type {nal_type}"
            );
        }
    }

    #[test]
    fn mpeg2_sequence_header_is_random_access() {
        let mut s = RapScanner::new(VideoCodec::Mpeg2);
        assert_eq!(s.feed(&[0, 0, 1, 0xB3]), Some(true));
        let mut s = RapScanner::new(VideoCodec::Mpeg2);
        assert_eq!(s.feed(&[0, 0, 1, 0x00]), Some(false));
    }
}
