//! Timestamp rewriting for looped playback ([`Restamper`]) and the PTS span
//! of a buffer ([`pts_span`]), which together let a clip be replayed forever
//! as one continuous stream.

use std::collections::BTreeMap;

use super::packet::{
    payload, payload_offset, pes_layout_in, read_timestamp, ts_diff, write_timestamp, Framer,
    Header, Packet, NULL_PID, PACKET_LEN, SYNC_BYTE, TS_MASK,
};
use super::psi::{EsKind, ProgramTable};

/// Rewrites PCR, PTS and DTS by a fixed offset and keeps continuity counters
/// continuous, so a clip can be replayed in a loop without a timestamp jump.
///
/// Timestamps wrap at 33 bits; the PCR extension (27 MHz remainder) is kept.
/// PTS/DTS are rewritten when the PES header lies in the packet that starts
/// the PES (as every muxer in practice writes it). Continuity counters are
/// renumbered per PID from the first packet seen on it, so the last packet of
/// one pass and the first of the next follow each other (a source's
/// duplicate packets, which repeat a counter, are numbered on as new ones).
#[derive(Debug, Default)]
pub struct Restamper {
    /// Added to every timestamp, already reduced to 33 bits.
    offset: u64,
    /// The last continuity counter written per PID.
    last_cc: BTreeMap<u16, u8>,
}

impl Restamper {
    /// A restamper with offset 0.
    pub fn new() -> Self {
        Restamper::default()
    }

    /// Sets the offset (90 kHz ticks) added to every following timestamp.
    pub fn set_offset(&mut self, offset_90k: u64) {
        self.offset = offset_90k & TS_MASK;
    }

    /// Rewrites whole 188-byte packets in place; a trailing partial packet is left alone.
    ///
    /// `packets` is taken as aligned: a 188-byte block that does not start
    /// with the sync byte is left untouched.
    pub fn apply(&mut self, packets: &mut [u8]) {
        for chunk in packets.chunks_exact_mut(PACKET_LEN) {
            let Ok(p) = <&mut Packet>::try_from(chunk) else {
                continue;
            };
            if p[0] != SYNC_BYTE {
                continue;
            }
            let h = Header::parse(p);
            if h.pid == NULL_PID {
                continue;
            }
            self.shift_clock_references(p);
            if h.pusi {
                self.shift_pes_timestamps(p);
            }
            self.renumber(p, &h);
        }
    }

    fn shift_clock_references(&self, p: &mut Packet) {
        if p[3] & 0x20 == 0 {
            return;
        }
        let af_len = usize::from(p[4]);
        let Some(af) = p.get_mut(5..5 + af_len) else {
            return;
        };
        let Some(&flags) = af.first() else { return };
        let mut at = 1;
        // PCR, then OPCR: 6 bytes each, in that order when present.
        for flag in [0x10, 0x08] {
            if flags & flag != 0 {
                if let Some(field) = af.get_mut(at..at + 6) {
                    shift_pcr(field, self.offset);
                }
                at += 6;
            }
        }
    }

    fn shift_pes_timestamps(&self, p: &mut Packet) {
        let Some(start) = payload_offset(p) else {
            return;
        };
        let Some(pes) = p.get_mut(start..) else {
            return;
        };
        let Some(layout) = pes_layout_in(pes) else {
            return;
        };
        for at in [layout.pts_at, layout.dts_at].into_iter().flatten() {
            if let Some(field) = pes.get_mut(at..at + 5) {
                if let Some(t) = read_timestamp(field) {
                    write_timestamp(field, t.wrapping_add(self.offset));
                }
            }
        }
    }

    fn renumber(&mut self, p: &mut Packet, h: &Header) {
        let cc = match self.last_cc.get(&h.pid) {
            None => h.cc,
            // Only packets with payload advance the counter.
            Some(&last) if h.has_payload => (last + 1) & 0x0F,
            Some(&last) => last,
        };
        self.last_cc.insert(h.pid, cc);
        p[3] = (p[3] & 0xF0) | cc;
    }
}

/// Adds `offset` to the 33-bit base of a 6-byte PCR field, keeping the
/// reserved bits and the 9-bit extension.
fn shift_pcr(field: &mut [u8], offset: u64) {
    let Some(b) = field.get_mut(0..6) else { return };
    let base = (u64::from(b[0]) << 25)
        | (u64::from(b[1]) << 17)
        | (u64::from(b[2]) << 9)
        | (u64::from(b[3]) << 1)
        | u64::from(b[4] >> 7);
    let base = base.wrapping_add(offset) & TS_MASK;
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = (b[4] & 0x7F) | (((base & 1) as u8) << 7);
}

/// Reads a PCR base (for tests and diagnostics).
#[cfg(test)]
fn pcr_base(b: &[u8]) -> Option<u64> {
    let b = b.get(0..6)?;
    Some(
        (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | u64::from(b[4] >> 7),
    )
}

/// Earliest and latest PTS seen on one PID, relative to its first PTS.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: u64,
    min_off: i64,
    max_off: i64,
}

/// First and last PTS (90 kHz) of the video stream (or the first PES stream if no video).
///
/// "First" and "last" are in presentation order: the earliest and latest
/// PTS of that stream's PES packets (which differ from the first and last
/// in the byte order when B-frames reorder pictures), compared across the
/// 33-bit wrap relative to the first PTS met. The video stream is the one
/// the PMT lists; without a PMT or video, the first PID whose PES carries a
/// PTS is used. `None` when there is no such PTS.
pub fn pts_span(data: &[u8]) -> Option<(u64, u64)> {
    let mut psi = ProgramTable::default();
    let mut spans: BTreeMap<u16, Span> = BTreeMap::new();
    let mut first_pid = None;
    let mut framer = Framer::default();
    let mut on_packet = |p: &Packet| {
        let h = Header::parse(p);
        if h.tei || h.pid == NULL_PID {
            return;
        }
        if psi.is_psi_pid(h.pid) {
            psi.push(p);
            return;
        }
        if !h.pusi {
            return;
        }
        let pts = payload(p).and_then(|pl| {
            let at = pes_layout_in(pl)?.pts_at?;
            read_timestamp(pl.get(at..)?)
        });
        let Some(pts) = pts else { return };
        first_pid.get_or_insert(h.pid);
        let span = spans.entry(h.pid).or_insert(Span {
            first: pts,
            min_off: 0,
            max_off: 0,
        });
        let off = ts_diff(pts, span.first);
        span.min_off = span.min_off.min(off);
        span.max_off = span.max_off.max(off);
    };
    framer.push(data, &mut on_packet);
    framer.finish(&mut on_packet);
    let video = psi
        .main_track()
        .filter(|t| matches!(t.kind, EsKind::Video(_)))
        .map(|t| t.pid);
    let span = spans.get(&video.or(first_pid)?)?;
    let at = |off: i64| span.first.wrapping_add_signed(off) & TS_MASK;
    Some((at(span.min_off), at(span.max_off)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet with a PCR, and a PES start with PTS and DTS.
    fn sample(pcr: u64, pts: u64, dts: u64, cc: u8) -> Packet {
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = 0x41;
        p[2] = 0x00;
        p[3] = 0x30 | cc;
        p[4] = 7;
        p[5] = 0x10;
        let mut field = [0u8, 0, 0, 0, 0x7E, 0x2A];
        shift_pcr(&mut field, pcr);
        p[6..12].copy_from_slice(&field);
        let mut pes = [
            0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10, 0x31, 0, 1, 0, 1, 0x11, 0, 1, 0, 1,
        ];
        write_timestamp(&mut pes[9..14], pts);
        write_timestamp(&mut pes[14..19], dts);
        p[12..31].copy_from_slice(&pes);
        p
    }

    #[test]
    fn shifts_pcr_pts_dts_with_wrap_and_keeps_the_pcr_extension() {
        let mut p = sample(TS_MASK - 10, TS_MASK - 5, 100, 3);
        let mut r = Restamper::new();
        r.set_offset(20);
        r.apply(&mut p);
        assert_eq!(pcr_base(&p[6..12]), Some(9));
        // Reserved bits and the 9-bit extension (0x02A, top bit 0) are unchanged.
        assert_eq!(p[10] & 0x7F, 0x7E);
        assert_eq!(p[11], 0x2A);
        assert_eq!(read_timestamp(&p[21..26]), Some(14));
        assert_eq!(read_timestamp(&p[26..31]), Some(120));
        assert_eq!(p[21] & 0xF1, 0x31);
    }

    #[test]
    fn continuity_counters_run_on_across_passes() {
        let mut r = Restamper::new();
        let mut out = Vec::new();
        for _pass in 0..3 {
            for cc in [5u8, 6, 7] {
                let mut p = sample(0, 0, 0, cc);
                r.apply(&mut p);
                out.push(p[3] & 0x0F);
            }
        }
        assert_eq!(out, vec![5, 6, 7, 8, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn partial_and_unsynced_blocks_are_left_alone() {
        let mut buf = sample(1, 2, 3, 0).to_vec();
        buf[0] = 0x00;
        buf.extend_from_slice(&[0x47; 50]);
        let before = buf.clone();
        let mut r = Restamper::new();
        r.set_offset(1000);
        r.apply(&mut buf);
        assert_eq!(buf, before);
    }

    #[test]
    fn span_is_earliest_to_latest() {
        let mut buf = Vec::new();
        for (i, pts) in [300u64, 100, 200, 700, 500].into_iter().enumerate() {
            buf.extend_from_slice(&sample(0, pts, pts, i as u8));
        }
        assert_eq!(pts_span(&buf), Some((100, 700)));
        assert_eq!(pts_span(&[0u8; 1000]), None);
    }
}
