//! TS packet framing with resync, header and adaptation-field access, PES
//! headers and 33-bit timestamp arithmetic. Everything here is bounds-checked:
//! packets come from the network or a file.

/// Every TS packet is 188 bytes.
pub(crate) const PACKET_LEN: usize = 188;
/// First byte of every packet.
pub(crate) const SYNC_BYTE: u8 = 0x47;
/// Stuffing packets; carry nothing.
pub(crate) const NULL_PID: u16 = 0x1FFF;
/// The PAT always travels on PID 0.
pub(crate) const PAT_PID: u16 = 0;
/// PTS, DTS and the PCR base are 33-bit counters of a 90 kHz clock.
pub(crate) const TS_MASK: u64 = (1 << 33) - 1;
/// Ticks of the 90 kHz clock per second.
pub(crate) const TICKS_PER_SEC: u64 = 90_000;
/// Sync bytes that must line up 188 bytes apart before we trust an offset
/// again after losing sync (random junk rarely fakes three in a row).
const RESYNC_PACKETS: usize = 3;
/// Longest PES header: 9 fixed bytes plus at most 255 bytes of optional fields.
const PES_HEADER_MAX: usize = 9 + 255;

/// One whole transport packet.
pub(crate) type Packet = [u8; PACKET_LEN];

/// The fixed 4-byte packet header. Indexing a `[u8; 188]` with constant
/// indices below 188 cannot fail, so the accessors index directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// transport_error_indicator: a demodulator marked the packet corrupt.
    pub(crate) tei: bool,
    /// payload_unit_start_indicator: a PES or PSI section starts here.
    pub(crate) pusi: bool,
    /// The 13-bit packet id.
    pub(crate) pid: u16,
    /// The packet carries payload bytes (and so advances the CC).
    pub(crate) has_payload: bool,
    /// continuity_counter.
    pub(crate) cc: u8,
}

impl Header {
    /// Reads the header fields of a packet.
    pub(crate) fn parse(p: &Packet) -> Header {
        Header {
            tei: p[1] & 0x80 != 0,
            pusi: p[1] & 0x40 != 0,
            pid: (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]),
            has_payload: p[3] & 0x10 != 0,
            cc: p[3] & 0x0F,
        }
    }
}

/// The adaptation field after its length byte, when present and in bounds.
pub(crate) fn adaptation(p: &Packet) -> Option<&[u8]> {
    if p[3] & 0x20 == 0 {
        return None;
    }
    p.get(5..5 + usize::from(p[4]))
}

/// The adaptation field's random_access_indicator.
pub(crate) fn random_access(p: &Packet) -> bool {
    adaptation(p)
        .and_then(|af| af.first())
        .is_some_and(|flags| flags & 0x40 != 0)
}

/// Where the payload starts, when the packet has one that fits.
pub(crate) fn payload_offset(p: &Packet) -> Option<usize> {
    if p[3] & 0x10 == 0 {
        return None;
    }
    let start = if p[3] & 0x20 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    (start <= PACKET_LEN).then_some(start)
}

/// The payload bytes (possibly empty), when the packet has a payload.
pub(crate) fn payload(p: &Packet) -> Option<&[u8]> {
    payload_offset(p).and_then(|start| p.get(start..))
}

/// For the first packet of a PES: how many PES bytes are still to come after
/// this packet's payload. `None` means unbounded (PES_packet_length 0, as
/// video uses); a payload that is not a PES at all counts as complete.
pub(crate) fn pes_remaining(payload: &[u8]) -> Option<usize> {
    if payload.get(0..3) != Some(&[0, 0, 1]) {
        return Some(0);
    }
    let len = payload
        .get(4..6)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))?;
    if len == 0 {
        return None;
    }
    Some((6 + len).saturating_sub(payload.len()))
}

/// Signed distance `a - b` between two 33-bit timestamps, taking the shorter
/// way round the wrap.
pub(crate) fn ts_diff(a: u64, b: u64) -> i64 {
    let d = a.wrapping_sub(b) & TS_MASK;
    let half = 1u64 << 32;
    if d >= half {
        // `d - 2^33` is negative and fits i64 comfortably.
        d as i64 - (TS_MASK as i64 + 1)
    } else {
        d as i64
    }
}

/// Reads a 5-byte PTS/DTS field.
pub(crate) fn read_timestamp(b: &[u8]) -> Option<u64> {
    let b = b.get(0..5)?;
    Some(
        (u64::from(b[0] >> 1 & 0x07) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

/// Writes a 5-byte PTS/DTS field, keeping its prefix nibble and marker bits.
pub(crate) fn write_timestamp(b: &mut [u8], value: u64) {
    let Some(b) = b.get_mut(0..5) else { return };
    let v = value & TS_MASK;
    b[0] = (b[0] & 0xF1) | ((v >> 29) as u8 & 0x0E);
    b[1] = (v >> 22) as u8;
    b[2] = (b[2] & 0x01) | ((v >> 14) as u8 & 0xFE);
    b[3] = (v >> 7) as u8;
    b[4] = (b[4] & 0x01) | ((v << 1) as u8 & 0xFE);
}

/// Stream ids whose PES packets have no optional header (hence no PTS).
fn has_optional_header(stream_id: u8) -> bool {
    !matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    )
}

/// Where the PTS and DTS fields sit inside a complete PES header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PesLayout {
    /// Offset of the 5-byte PTS field, if present.
    pub(crate) pts_at: Option<usize>,
    /// Offset of the 5-byte DTS field, if present.
    pub(crate) dts_at: Option<usize>,
    /// Offset of the first elementary-stream byte.
    pub(crate) es_at: usize,
}

/// The PES header length implied by the bytes seen so far: `Ok(n)` asks for
/// at least `n` bytes (it may grow as more is read), `Err` means not a PES.
fn pes_header_need(head: &[u8]) -> Result<usize, ()> {
    if head.len() < 6 {
        // Checking the start code early rejects non-PES quickly.
        return match head.iter().zip([0u8, 0, 1]).all(|(a, b)| *a == b) {
            true => Ok(6),
            false => Err(()),
        };
    }
    if head.get(0..3) != Some(&[0, 0, 1]) {
        return Err(());
    }
    let stream_id = head.get(3).copied().ok_or(())?;
    if !has_optional_header(stream_id) {
        return Ok(6);
    }
    match head.get(8) {
        None => Ok(9),
        Some(&n) => Ok(9 + usize::from(n)),
    }
}

/// Locates the timestamps in a complete PES header (`head` holds at least
/// the length [`pes_header_need`] asked for).
fn pes_layout(head: &[u8]) -> PesLayout {
    let sid = head.get(3).copied().unwrap_or(0);
    if !has_optional_header(sid) {
        return PesLayout {
            pts_at: None,
            dts_at: None,
            es_at: 6,
        };
    }
    let flags = head.get(7).copied().unwrap_or(0);
    let header_len = usize::from(head.get(8).copied().unwrap_or(0));
    let pts_at = (flags & 0x80 != 0 && header_len >= 5).then_some(9);
    let dts_at = (flags & 0xC0 == 0xC0 && header_len >= 10).then_some(14);
    PesLayout {
        pts_at,
        dts_at,
        es_at: 9 + header_len,
    }
}

/// The layout of a PES header that lies wholly in `payload` (as it does in
/// practice; used by the restamper, which rewrites packets in place).
pub(crate) fn pes_layout_in(payload: &[u8]) -> Option<PesLayout> {
    let mut need = 0;
    loop {
        let now = pes_header_need(payload.get(..need.min(payload.len()))?).ok()?;
        if now == need {
            break;
        }
        if now > payload.len() {
            return None;
        }
        need = now;
    }
    Some(pes_layout(payload.get(..need)?))
}

/// What reading the start of a PES yielded so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PesHead<'a> {
    /// The header continues in the next packet of this PID.
    Incomplete,
    /// The payload does not start with a PES header.
    NotPes,
    /// The header is complete.
    Done {
        /// Presentation timestamp, if the header has one.
        pts: Option<u64>,
        /// The elementary-stream bytes of this chunk after the header.
        es: &'a [u8],
    },
}

/// Collects a PES header that may straddle TS packets (bounded to the
/// largest legal header) and reports its PTS.
#[derive(Debug, Default, Clone)]
pub(crate) struct PesHeaderReader {
    /// Header bytes gathered so far; never more than [`PES_HEADER_MAX`].
    head: Vec<u8>,
}

impl PesHeaderReader {
    /// Feeds the next payload bytes of the PES.
    pub(crate) fn feed<'a>(&mut self, mut data: &'a [u8]) -> PesHead<'a> {
        loop {
            let need = match pes_header_need(&self.head) {
                Ok(n) => n.min(PES_HEADER_MAX),
                Err(()) => return PesHead::NotPes,
            };
            if self.head.len() >= need {
                let layout = pes_layout(&self.head);
                let pts = layout
                    .pts_at
                    .and_then(|at| self.head.get(at..))
                    .and_then(read_timestamp);
                return PesHead::Done { pts, es: data };
            }
            if data.is_empty() {
                return PesHead::Incomplete;
            }
            let take = (need - self.head.len()).min(data.len());
            let (now, rest) = data.split_at(take);
            self.head.extend_from_slice(now);
            data = rest;
        }
    }
}

/// Finds packet boundaries in a byte stream of any chunking, skipping junk.
///
/// While in sync, a packet is accepted when it starts with 0x47. After a
/// miss, an offset is trusted again only when [`RESYNC_PACKETS`] sync bytes
/// line up 188 bytes apart; the decision waits until those bytes have arrived
/// (or the input ends), so the packets found never depend on how the input
/// was split.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    /// Unconsumed input: less than `RESYNC_PACKETS` packets' worth between calls.
    buf: Vec<u8>,
    /// Whether the next byte of `buf` is known to start a packet.
    locked: bool,
}

impl Framer {
    /// Feeds bytes; calls `sink` for every whole packet found.
    pub(crate) fn push(&mut self, input: &[u8], sink: &mut impl FnMut(&Packet)) {
        self.buf.extend_from_slice(input);
        let used = self.scan(false, sink);
        self.buf.drain(..used.min(self.buf.len()));
    }

    /// Ends the input: delivers any packets still held back for lookahead
    /// and forgets the rest.
    pub(crate) fn finish(&mut self, sink: &mut impl FnMut(&Packet)) {
        self.scan(true, sink);
        self.buf.clear();
        self.locked = false;
    }

    /// Delivers packets from `buf`; returns how many bytes are consumed.
    fn scan(&mut self, at_end: bool, sink: &mut impl FnMut(&Packet)) -> usize {
        let Framer { buf, locked } = self;
        let mut pos = 0;
        loop {
            if *locked {
                let Some(chunk) = buf.get(pos..pos + PACKET_LEN) else {
                    return pos;
                };
                if let Ok(packet) = <&Packet>::try_from(chunk) {
                    if packet[0] == SYNC_BYTE {
                        sink(packet);
                        pos += PACKET_LEN;
                        continue;
                    }
                }
                *locked = false;
            }
            match find_sync(buf, pos, at_end) {
                Ok(start) => {
                    pos = start;
                    *locked = true;
                }
                Err(keep_from) => return keep_from,
            }
        }
    }
}

/// The first offset at or after `from` where sync bytes line up, or
/// `Err(offset)` from which bytes must be kept until more input arrives.
fn find_sync(buf: &[u8], from: usize, at_end: bool) -> Result<usize, usize> {
    let mut i = from;
    while let Some(rel) = buf
        .get(i..)
        .and_then(|b| b.iter().position(|&x| x == SYNC_BYTE))
    {
        i += rel;
        if at_end && i + PACKET_LEN > buf.len() {
            // No whole packet can start here or later.
            return Err(buf.len());
        }
        let mut lined_up = true;
        for k in 1..RESYNC_PACKETS {
            match buf.get(i + k * PACKET_LEN) {
                Some(&SYNC_BYTE) => {}
                Some(_) => {
                    lined_up = false;
                    break;
                }
                // Past the end: at the end of input the sync bytes that
                // exist are all we can check; otherwise wait for more.
                None if at_end => break,
                None => return Err(i),
            }
        }
        if lined_up {
            return Ok(i);
        }
        i += 1;
    }
    Err(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, cc: u8, fill: u8) -> Packet {
        let mut p = [fill; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (pid >> 8) as u8 & 0x1F;
        p[2] = pid as u8;
        p[3] = 0x10 | cc;
        p
    }

    fn frame_all(chunks: &[&[u8]]) -> Vec<Packet> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut |p| out.push(*p));
        }
        f.finish(&mut |p| out.push(*p));
        out
    }

    #[test]
    fn timestamps_round_trip_and_keep_marker_bits() {
        for v in [0u64, 1, 126_000, (1 << 32) + 12345, TS_MASK] {
            let mut b = [0x21, 0, 1, 0, 1];
            write_timestamp(&mut b, v);
            assert_eq!(read_timestamp(&b), Some(v));
            assert_eq!(b[0] & 0xF1, 0x21);
            assert_eq!(b[2] & 1, 1);
            assert_eq!(b[4] & 1, 1);
        }
    }

    #[test]
    fn ts_diff_takes_the_short_way_round_the_wrap() {
        assert_eq!(ts_diff(100, 40), 60);
        assert_eq!(ts_diff(40, 100), -60);
        assert_eq!(ts_diff(5, TS_MASK - 4), 10);
        assert_eq!(ts_diff(TS_MASK - 4, 5), -10);
    }

    #[test]
    fn framer_skips_junk_and_resyncs() {
        let good: Vec<Packet> = (0..6).map(|i| packet(0x100, i, 0x11 * (i + 1))).collect();
        // Junk that even contains lone sync bytes.
        let junk = [0x00, 0x47, 0x13, 0x99, 0x47];
        let mut input = Vec::new();
        input.extend_from_slice(&junk);
        for p in &good[..3] {
            input.extend_from_slice(p);
        }
        input.extend_from_slice(&junk);
        for p in &good[3..] {
            input.extend_from_slice(p);
        }
        assert_eq!(frame_all(&[&input]), good);
        // Same packets whatever the chunking.
        for size in [1, 7, 187, 188, 189, 400] {
            let chunks: Vec<&[u8]> = input.chunks(size).collect();
            assert_eq!(frame_all(&chunks), good, "chunk size {size}");
        }
    }

    #[test]
    fn framer_needs_aligned_sync_bytes_to_trust_an_offset() {
        // Two packets then junk: while unlocked, two aligned sync bytes are
        // not enough (junk could fake them), so they are skipped.
        let a = packet(1, 0, 0x11);
        let mut input = a.to_vec();
        input.extend_from_slice(&a);
        input.extend_from_slice(&[0u8; 200]);
        assert!(frame_all(&[&input]).is_empty());
        // At the end of input, the sync bytes present are all there is to check.
        assert_eq!(frame_all(&[&a, &a]), vec![a, a]);
    }

    #[test]
    fn framer_drops_a_trailing_partial_packet() {
        let a = packet(1, 0, 0);
        let mut input = a.to_vec();
        input.extend_from_slice(&a[..100]);
        assert_eq!(frame_all(&[&input]), vec![a]);
    }

    #[test]
    fn pes_header_split_across_packets_is_reassembled() {
        let mut pes = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5];
        let mut ts = [0u8; 5];
        ts[0] = 0x21;
        ts[2] = 1;
        ts[4] = 1;
        write_timestamp(&mut ts, 123_456);
        pes.extend_from_slice(&ts);
        pes.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        let mut r = PesHeaderReader::default();
        assert_eq!(r.feed(&pes[..4]), PesHead::Incomplete);
        assert_eq!(r.feed(&pes[4..11]), PesHead::Incomplete);
        assert_eq!(
            r.feed(&pes[11..]),
            PesHead::Done {
                pts: Some(123_456),
                es: &[0, 0, 0, 1, 0x65]
            }
        );
        assert_eq!(
            PesHeaderReader::default().feed(&[0, 0, 2, 0]),
            PesHead::NotPes
        );
        assert_eq!(pes_layout_in(&pes).map(|l| l.es_at), Some(14));
        assert_eq!(pes_layout_in(&pes[..10]), None);
    }

    #[test]
    fn pes_remaining_counts_down_bounded_pes() {
        let mut p = vec![0, 0, 1, 0xC0, 0x01, 0x00];
        p.resize(100, 0);
        assert_eq!(pes_remaining(&p), Some(6 + 256 - 100));
        assert_eq!(pes_remaining(&[0, 0, 1, 0xE0, 0, 0]), None);
        assert_eq!(pes_remaining(&[0x00, 0xB0, 0x11]), Some(0));
    }
}
