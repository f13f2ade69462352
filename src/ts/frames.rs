//! Where the frames of a segment start ([`frame_starts`]), so a segment can be split into
//! LL-HLS parts that each end on a frame boundary.

use std::collections::BTreeMap;

use super::packet::{
    payload, pes_layout_in, pes_remaining, read_timestamp, Header, Packet, PACKET_LEN, SYNC_BYTE,
};
use super::psi::ProgramTable;

/// A packet that starts a PES (one frame, or a few audio frames) of the segment's main track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStart {
    /// Byte offset of the packet in the segment (a multiple of 188).
    pub offset: usize,
    /// The frame's decode time (its DTS, else its PTS), 90 kHz.
    pub dts: u64,
    /// Every PES of the other streams (audio) that started before it has ended before it, as
    /// far as their lengths tell: cutting here splits no audio frame.
    pub clean: bool,
}

/// The PES starts of the main track (the first video stream, else the first audio one, as the
/// segmenter cuts on) in `data`, a segment's bytes from its start, in byte order.
///
/// Only whole packets are read and the scan stops at the first one that is not in sync:
/// segments are whole packets from offset 0, and the bytes may be a verified prefix that ends
/// mid-packet. A PES start whose header does not sit in its first packet is not listed.
pub fn frame_starts(data: &[u8]) -> Vec<FrameStart> {
    let mut psi = ProgramTable::default();
    let mut starts = Vec::new();
    // Bytes still to come of the PES in progress on each other stream with a bounded PES
    // length (audio); at most one entry per PID seen.
    let mut pending: BTreeMap<u16, usize> = BTreeMap::new();
    for (index, chunk) in data.chunks_exact(PACKET_LEN).enumerate() {
        let Ok(p) = <&Packet>::try_from(chunk) else {
            break;
        };
        if p[0] != SYNC_BYTE {
            break;
        }
        let h = Header::parse(p);
        if h.tei {
            continue;
        }
        if psi.is_psi_pid(h.pid) {
            psi.push(p);
            continue;
        }
        let main = psi.main_track().is_some_and(|t| t.pid == h.pid);
        if !main {
            let carried = payload(p).unwrap_or(&[]);
            if h.pusi {
                // Unbounded (or no PES at all): nothing to wait for.
                match pes_remaining(carried) {
                    Some(left) => pending.insert(h.pid, left),
                    None => pending.remove(&h.pid),
                };
            } else if let Some(left) = pending.get_mut(&h.pid) {
                *left = left.saturating_sub(carried.len());
            }
            continue;
        }
        if !h.pusi {
            continue;
        }
        let dts = payload(p).and_then(|pl| {
            let layout = pes_layout_in(pl)?;
            read_timestamp(pl.get(layout.dts_at.or(layout.pts_at)?..)?)
        });
        if let Some(dts) = dts {
            starts.push(FrameStart {
                offset: index * PACKET_LEN,
                dts,
                clean: pending.values().all(|left| *left == 0),
            });
        }
    }
    starts
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;
    use crate::ts::packet::write_timestamp;
    use crate::ts::psi::tests::{pat, pmt};

    /// A packet on `pid` whose payload is `payload` (padded with 0xFF stuffing).
    fn packet(pid: u16, pusi: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (if pusi { 0x40 } else { 0 }) | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10;
        p[4..4 + payload.len()].copy_from_slice(payload);
        p
    }

    /// A PSI packet carrying `section` (pointer field 0).
    fn psi(pid: u16, section: &[u8]) -> Vec<u8> {
        let mut payload = vec![0u8];
        payload.extend_from_slice(section);
        packet(pid, true, &payload)
    }

    /// A video PES start with PTS and DTS.
    fn video_start(pts: u64, dts: u64) -> Vec<u8> {
        let mut pes = vec![
            0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10, 0x31, 0, 1, 0, 1, 0x11, 0, 1, 0, 1,
        ];
        write_timestamp(&mut pes[9..14], pts);
        write_timestamp(&mut pes[14..19], dts);
        packet(0x100, true, &pes)
    }

    /// A segment of `frames` video frames `step` ticks apart from `dts0`, each a PES start and
    /// `extra` more packets, after a PAT and a PMT listing H.264 on PID 0x100.
    pub(crate) fn segment(frames: usize, dts0: u64, step: u64, extra: usize) -> Vec<u8> {
        let mut data = psi(0, &pat(&[(1, 0x1000)]));
        data.extend(psi(0x1000, &pmt(1, 0, &[(0x1B, 0x100)])));
        for i in 0..frames as u64 {
            data.extend(video_start(dts0 + i * step + 3000, dts0 + i * step));
            for _ in 0..extra {
                data.extend(packet(0x100, false, &[]));
            }
        }
        data
    }

    #[test]
    fn video_pes_starts_are_found_with_their_decode_times() {
        let data = segment(5, 1000, 3600, 2);
        let starts = frame_starts(&data);
        assert_eq!(starts.len(), 5);
        for (i, s) in starts.iter().enumerate() {
            assert_eq!(s.offset, (2 + i * 3) * PACKET_LEN);
            assert_eq!(s.dts, 1000 + i as u64 * 3600);
        }
        // A prefix ending mid-packet lists only the starts in its whole packets.
        // Frame 1's packet is the sixth: a prefix with six whole packets holds its start.
        let cut = 6 * PACKET_LEN + 100;
        assert_eq!(frame_starts(&data[..cut]).len(), 2);
        assert_eq!(frame_starts(&data[..cut - 100 - PACKET_LEN + 1]).len(), 1);
    }

    #[test]
    fn a_frame_inside_an_audio_pes_is_not_clean() {
        let mut data = psi(0, &pat(&[(1, 0x1000)]));
        data.extend(psi(0x1000, &pmt(1, 0, &[(0x1B, 0x100), (0x0F, 0x101)])));
        data.extend(video_start(3000, 0));
        // An audio PES of 300 bytes after its 6-byte head: its first packet carries 178.
        let mut audio = vec![0, 0, 1, 0xC0, 0x01, 0x2C, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        audio.resize(184, 0xAA);
        data.extend(packet(0x101, true, &audio));
        data.extend(video_start(6600, 3600));
        data.extend(packet(0x101, false, &[0xAA; 184]));
        data.extend(video_start(10_200, 7200));
        let starts = frame_starts(&data);
        let clean: Vec<bool> = starts.iter().map(|s| s.clean).collect();
        assert_eq!(clean, [true, false, true]);
    }

    #[test]
    fn junk_and_streams_without_tables_yield_nothing() {
        assert!(frame_starts(&[]).is_empty());
        assert!(frame_starts(&[0u8; 5 * PACKET_LEN]).is_empty());
        // Without a PMT nothing is known to be the main track.
        let data = segment(3, 0, 3600, 0);
        assert!(frame_starts(&data[2 * PACKET_LEN..]).is_empty());
        // Out of sync from the start of the junk on.
        let mut junk = data.clone();
        junk[3 * PACKET_LEN] = 0;
        assert_eq!(frame_starts(&junk).len(), 1);
    }
}
