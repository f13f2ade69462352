//! Program-specific information: reassembles PAT and PMT sections, checks
//! their CRC, keeps the latest of each, picks the track to cut on, and
//! packetizes the tables again for the start of every segment.

use std::collections::BTreeMap;

use super::packet::{payload, Header, Packet, PACKET_LEN, PAT_PID, SYNC_BYTE};
use super::TsError;

/// PAT and PMT sections are at most 1024 bytes (section_length ≤ 1021).
pub(crate) const MAX_SECTION_LEN: usize = 1024;
/// PAT table id.
const TABLE_PAT: u8 = 0x00;
/// PMT table id.
const TABLE_PMT: u8 = 0x02;

/// Codecs whose random-access points the NAL/start-code scanner recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VideoCodec {
    /// MPEG-1/2 video (stream types 0x01, 0x02).
    Mpeg2,
    /// H.264 / AVC (stream type 0x1B).
    H264,
    /// H.265 / HEVC (stream type 0x24).
    Hevc,
}

/// What an elementary stream carries, as far as cutting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EsKind {
    /// Video we can find keyframes in.
    Video(VideoCodec),
    /// Audio: every frame is a random-access point.
    Audio,
    /// Anything else (subtitles, data, unknown video).
    Other,
}

/// The track segments are cut on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Track {
    /// Its PID.
    pub(crate) pid: u16,
    /// Its kind (never [`EsKind::Other`]).
    pub(crate) kind: EsKind,
}

/// One elementary stream listed in a PMT.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Es {
    pid: u16,
    kind: EsKind,
}

/// The latest PAT: the raw section (re-emitted as is) and its programs.
#[derive(Debug, Clone)]
struct Pat {
    section: Vec<u8>,
    /// (program_number, PMT PID), in table order; program 0 (NIT) left out.
    programs: Vec<(u16, u16)>,
}

/// The latest PMT of one program.
#[derive(Debug, Clone)]
struct Pmt {
    /// The PID it arrived on (must match the PAT's entry).
    pid: u16,
    section: Vec<u8>,
    streams: Vec<Es>,
}

/// Which way a stream type points, given its ES descriptors.
fn classify(stream_type: u8, descriptors: &[u8]) -> EsKind {
    match stream_type {
        0x01 | 0x02 => EsKind::Video(VideoCodec::Mpeg2),
        0x1B => EsKind::Video(VideoCodec::H264),
        0x24 => EsKind::Video(VideoCodec::Hevc),
        // MPEG-1/2 audio, AAC (ADTS), AAC (LATM), AC-3, E-AC-3 (ATSC), DTS.
        0x03 | 0x04 | 0x0F | 0x11 | 0x81 | 0x82 | 0x87 => EsKind::Audio,
        // Private PES: DVB tags AC-3/E-AC-3/DTS/AAC, or a registration id.
        0x06 if private_audio(descriptors) => EsKind::Audio,
        _ => EsKind::Other,
    }
}

/// Whether a private (0x06) stream's descriptors declare an audio codec.
fn private_audio(mut descriptors: &[u8]) -> bool {
    while let [tag, len, rest @ ..] = descriptors {
        let Some(body) = rest.get(..usize::from(*len)) else {
            return false;
        };
        match *tag {
            0x6A | 0x7A | 0x7B | 0x7C => return true,
            0x05 if matches!(
                body.get(..4),
                Some(b"AC-3" | b"EAC3" | b"Opus" | b"DTS1" | b"DTS2" | b"DTS3")
            ) =>
            {
                return true
            }
            _ => {}
        }
        descriptors = rest.get(usize::from(*len)..).unwrap_or(&[]);
    }
    false
}

/// CRC-32/MPEG-2 lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// CRC-32/MPEG-2; over a whole section including its CRC it yields 0.
pub(crate) fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// Checks a long-form section and returns the bytes between its 8-byte
/// header and its CRC.
fn section_body(s: &[u8], table_id: u8) -> Result<&[u8], TsError> {
    if s.len() < 12 {
        return Err(TsError::SectionTruncated);
    }
    if s.len() > MAX_SECTION_LEN {
        return Err(TsError::SectionTooLong(s.len()));
    }
    let (Some(&id), Some(&b1), Some(&b2), Some(&b5), Some(&b6), Some(&b7)) =
        (s.first(), s.get(1), s.get(2), s.get(5), s.get(6), s.get(7))
    else {
        return Err(TsError::SectionTruncated);
    };
    if id != table_id {
        return Err(TsError::UnexpectedTable(id));
    }
    if b1 & 0x80 == 0 || 3 + ((usize::from(b1 & 0x0F) << 8) | usize::from(b2)) != s.len() {
        return Err(TsError::SectionTruncated);
    }
    if crc32_mpeg2(s) != 0 {
        return Err(TsError::BadCrc);
    }
    // A table announced for later, or split over several sections, is not
    // one we can re-emit as the current table in a single section.
    if b5 & 0x01 == 0 || b6 != 0 || b7 != 0 {
        return Err(TsError::NotApplicable);
    }
    s.get(8..s.len() - 4).ok_or(TsError::SectionTruncated)
}

fn be13(hi: u8, lo: u8) -> u16 {
    (u16::from(hi & 0x1F) << 8) | u16::from(lo)
}

fn be12(hi: u8, lo: u8) -> usize {
    (usize::from(hi & 0x0F) << 8) | usize::from(lo)
}

/// Parses a PAT section into (program_number, PMT PID) pairs.
fn parse_pat(s: &[u8]) -> Result<Vec<(u16, u16)>, TsError> {
    let body = section_body(s, TABLE_PAT)?;
    Ok(body
        .chunks_exact(4)
        .filter_map(|e| match e {
            [n0, n1, p0, p1] => {
                let number = u16::from_be_bytes([*n0, *n1]);
                (number != 0).then(|| (number, be13(*p0, *p1)))
            }
            _ => None,
        })
        .collect())
}

/// Parses a PMT section into its program number and elementary streams.
fn parse_pmt(s: &[u8]) -> Result<(u16, Vec<Es>), TsError> {
    let body = section_body(s, TABLE_PMT)?;
    let program = match s.get(3..5) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => return Err(TsError::SectionTruncated),
    };
    let info_len = match body.get(2..4) {
        Some(&[a, b]) => be12(a, b),
        _ => return Err(TsError::SectionTruncated),
    };
    let mut rest = body.get(4 + info_len..).ok_or(TsError::SectionTruncated)?;
    let mut streams = Vec::new();
    while let [stream_type, p0, p1, l0, l1, tail @ ..] = rest {
        let es_len = be12(*l0, *l1);
        let descriptors = tail.get(..es_len).ok_or(TsError::SectionTruncated)?;
        streams.push(Es {
            pid: be13(*p0, *p1),
            kind: classify(*stream_type, descriptors),
        });
        rest = tail.get(es_len..).unwrap_or(&[]);
    }
    Ok((program, streams))
}

/// Reassembles the sections carried on one PSI PID.
#[derive(Debug, Default)]
struct SectionAssembler {
    /// The section being gathered; never longer than [`MAX_SECTION_LEN`].
    buf: Vec<u8>,
    /// Whether `buf` holds the start of a section still being gathered.
    active: bool,
    /// CC of the last packet with payload, to notice lost packets.
    last_cc: Option<u8>,
}

impl SectionAssembler {
    /// Feeds one packet's payload; completed sections go to `out`.
    fn push(&mut self, h: &Header, payload: &[u8], out: &mut Vec<Vec<u8>>) {
        if let Some(last) = self.last_cc {
            if h.cc == last {
                return; // a duplicate packet
            }
            if h.cc != (last + 1) & 0x0F {
                self.active = false; // a packet was lost: the section is broken
            }
        }
        self.last_cc = Some(h.cc);
        if !h.pusi {
            if self.active {
                self.append(payload, out);
            }
            return;
        }
        let Some((&pointer, rest)) = payload.split_first() else {
            self.active = false;
            return;
        };
        let pointer = usize::from(pointer);
        let (Some(tail), Some(mut fresh)) = (rest.get(..pointer), rest.get(pointer..)) else {
            self.active = false;
            return;
        };
        if self.active {
            self.append(tail, out);
        }
        // Sections follow each other back to back until stuffing (0xFF).
        while fresh.first().is_some_and(|&b| b != 0xFF) {
            self.buf.clear();
            self.active = true;
            let used = self.append(fresh, out);
            if self.active {
                return; // continues in the next packet
            }
            fresh = fresh.get(used..).unwrap_or(&[]);
        }
        self.active = false;
    }

    /// Adds bytes to the active section; returns how many were used.
    fn append(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) -> usize {
        let mut used = 0;
        if self.buf.len() < 3 {
            let take = (3 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(data.get(..take).unwrap_or(&[]));
            used = take;
            if self.buf.len() < 3 {
                return used;
            }
        }
        let total = match (self.buf.get(1), self.buf.get(2)) {
            (Some(&hi), Some(&lo)) => 3 + be12(hi, lo),
            _ => return used,
        };
        if total > MAX_SECTION_LEN {
            self.active = false;
            self.buf.clear();
            return data.len();
        }
        let rest = data.get(used..).unwrap_or(&[]);
        let take = (total.saturating_sub(self.buf.len())).min(rest.len());
        self.buf.extend_from_slice(rest.get(..take).unwrap_or(&[]));
        used += take;
        if self.buf.len() >= total {
            out.push(std::mem::take(&mut self.buf));
            self.active = false;
        }
        used
    }
}

/// The latest PAT and PMTs of a stream.
#[derive(Debug, Default)]
pub(crate) struct ProgramTable {
    pat: Option<Pat>,
    /// PMTs by program number (at most one per PAT entry).
    pmts: BTreeMap<u16, Pmt>,
    /// Section reassembly per PSI PID (PID 0 and the PAT's PMT PIDs).
    assemblers: BTreeMap<u16, SectionAssembler>,
}

impl ProgramTable {
    /// Whether packets on `pid` carry PAT or PMT sections.
    pub(crate) fn is_psi_pid(&self, pid: u16) -> bool {
        pid == PAT_PID
            || self
                .pat
                .as_ref()
                .is_some_and(|pat| pat.programs.iter().any(|&(_, p)| p == pid))
    }

    /// Feeds a packet of a PSI PID; returns whether a table changed.
    pub(crate) fn push(&mut self, p: &Packet) -> bool {
        let h = Header::parse(p);
        let Some(data) = payload(p) else { return false };
        let mut sections = Vec::new();
        self.assemblers
            .entry(h.pid)
            .or_default()
            .push(&h, data, &mut sections);
        let mut changed = false;
        for s in sections {
            let result = if h.pid == PAT_PID {
                self.apply_pat(s)
            } else {
                self.apply_pmt(h.pid, s)
            };
            match result {
                Ok(c) => changed |= c,
                Err(e) => tracing::debug!(pid = h.pid, error = %e, "ignoring PSI section"),
            }
        }
        changed
    }

    fn apply_pat(&mut self, section: Vec<u8>) -> Result<bool, TsError> {
        if self.pat.as_ref().is_some_and(|p| p.section == section) {
            return Ok(false);
        }
        let programs = parse_pat(&section)?;
        self.pmts
            .retain(|number, pmt| programs.contains(&(*number, pmt.pid)));
        self.assemblers
            .retain(|pid, _| *pid == PAT_PID || programs.iter().any(|&(_, p)| p == *pid));
        self.pat = Some(Pat { section, programs });
        Ok(true)
    }

    fn apply_pmt(&mut self, pid: u16, section: Vec<u8>) -> Result<bool, TsError> {
        if section.first() != Some(&TABLE_PMT) {
            // Other tables may share a PMT PID; they are not ours to follow.
            return Ok(false);
        }
        let (program, streams) = parse_pmt(&section)?;
        let listed = self
            .pat
            .as_ref()
            .is_some_and(|pat| pat.programs.contains(&(program, pid)));
        if !listed {
            return Err(TsError::UnlistedProgram(program));
        }
        if self
            .pmts
            .get(&program)
            .is_some_and(|p| p.section == section)
        {
            return Ok(false);
        }
        self.pmts.insert(
            program,
            Pmt {
                pid,
                section,
                streams,
            },
        );
        Ok(true)
    }

    /// The PMTs in PAT order, for programs whose PMT has been seen.
    fn pmts_in_order(&self) -> impl Iterator<Item = &Pmt> {
        let programs = self
            .pat
            .as_ref()
            .map(|p| p.programs.as_slice())
            .unwrap_or(&[]);
        programs
            .iter()
            .filter_map(|(number, _)| self.pmts.get(number))
    }

    /// The track to cut on: the first video stream of any program (in PAT
    /// order), else the first audio stream.
    pub(crate) fn main_track(&self) -> Option<Track> {
        let all = || self.pmts_in_order().flat_map(|pmt| pmt.streams.iter());
        all()
            .find(|es| matches!(es.kind, EsKind::Video(_)))
            .or_else(|| all().find(|es| es.kind == EsKind::Audio))
            .map(|es| Track {
                pid: es.pid,
                kind: es.kind,
            })
    }

    /// Whether the current tables list `track`, so a segment starting now
    /// with these tables describes its own main stream.
    pub(crate) fn describes(&self, track: Track) -> bool {
        self.pmts_in_order().any(|pmt| {
            pmt.streams
                .iter()
                .any(|es| es.pid == track.pid && es.kind == track.kind)
        })
    }

    /// Writes the PAT and then every known PMT as fresh packets, numbering
    /// them from the per-PID counters in `cc`.
    pub(crate) fn write_tables(&self, cc: &mut BTreeMap<u16, u8>, out: &mut Vec<u8>) {
        let Some(pat) = &self.pat else { return };
        packetize(PAT_PID, &pat.section, cc, out);
        for pmt in self.pmts_in_order() {
            packetize(pmt.pid, &pmt.section, cc, out);
        }
    }
}

/// Takes the next continuity counter for `pid`.
pub(crate) fn next_cc(cc: &mut BTreeMap<u16, u8>, pid: u16) -> u8 {
    let slot = cc.entry(pid).or_insert(0);
    let now = *slot;
    *slot = (now + 1) & 0x0F;
    now
}

/// Splits one section into packets: pointer field 0, then 0xFF stuffing.
fn packetize(pid: u16, section: &[u8], cc: &mut BTreeMap<u16, u8>, out: &mut Vec<u8>) {
    let mut rest = section;
    let mut first = true;
    loop {
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (if first { 0x40 } else { 0 }) | ((pid >> 8) as u8 & 0x1F);
        p[2] = pid as u8;
        p[3] = 0x10 | next_cc(cc, pid);
        let mut at = 4;
        if first {
            p[4] = 0; // pointer_field
            at = 5;
        }
        let take = rest.len().min(PACKET_LEN - at);
        let (now, later) = rest.split_at(take);
        if let Some(dst) = p.get_mut(at..at + take) {
            dst.copy_from_slice(now);
        }
        out.extend_from_slice(&p);
        rest = later;
        first = false;
        if rest.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a long-form section with a valid CRC.
    pub(crate) fn section(table_id: u8, id_ext: u16, version: u8, body: &[u8]) -> Vec<u8> {
        let len = 5 + body.len() + 4;
        let mut s = vec![table_id, 0xB0 | (len >> 8) as u8, len as u8];
        s.extend_from_slice(&id_ext.to_be_bytes());
        s.extend_from_slice(&[0xC1 | (version << 1), 0, 0]);
        s.extend_from_slice(body);
        let crc = crc32_mpeg2(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }

    pub(crate) fn pat(programs: &[(u16, u16)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(n, pid) in programs {
            body.extend_from_slice(&n.to_be_bytes());
            body.extend_from_slice(&(0xE000 | pid).to_be_bytes());
        }
        section(0, 1, 0, &body)
    }

    pub(crate) fn pmt(program: u16, version: u8, streams: &[(u8, u16)]) -> Vec<u8> {
        let mut body = vec![0xE1, 0x00, 0xF0, 0x00];
        for &(st, pid) in streams {
            body.push(st);
            body.extend_from_slice(&(0xE000 | pid).to_be_bytes());
            body.extend_from_slice(&[0xF0, 0x00]);
        }
        section(2, program, version, &body)
    }

    fn packets_of(pid: u16, s: &[u8]) -> Vec<Packet> {
        let mut cc = BTreeMap::new();
        let mut out = Vec::new();
        packetize(pid, s, &mut cc, &mut out);
        out.chunks_exact(PACKET_LEN)
            .filter_map(|c| Packet::try_from(c).ok())
            .collect()
    }

    #[test]
    fn crc_matches_the_known_check_value() {
        // CRC-32/MPEG-2 of "123456789" is 0x0376E6E7.
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
        let s = pat(&[(1, 0x1000)]);
        assert_eq!(crc32_mpeg2(&s), 0);
    }

    #[test]
    fn follows_pat_and_pmt_and_picks_video_first() {
        let mut t = ProgramTable::default();
        for p in packets_of(0, &pat(&[(1, 0x1000)])) {
            assert!(t.push(&p));
        }
        assert!(t.is_psi_pid(0x1000));
        for p in packets_of(0x1000, &pmt(1, 0, &[(0x0F, 0x101), (0x1B, 0x100)])) {
            assert!(t.push(&p));
        }
        let video = t.main_track();
        assert_eq!(
            video,
            Some(Track {
                pid: 0x100,
                kind: EsKind::Video(VideoCodec::H264)
            })
        );
        // Re-sent identical tables change nothing.
        let again = packets_of(0x1000, &pmt(1, 0, &[(0x0F, 0x101), (0x1B, 0x100)]));
        let mut again = again[0];
        again[3] = (again[3] & 0xF0) | 1;
        assert!(!t.push(&again));
        // A new version with HEVC is followed.
        let mut p = packets_of(0x1000, &pmt(1, 1, &[(0x24, 0x200)]))[0];
        p[3] = (p[3] & 0xF0) | 2;
        assert!(t.push(&p));
        assert_eq!(
            t.main_track(),
            Some(Track {
                pid: 0x200,
                kind: EsKind::Video(VideoCodec::Hevc)
            })
        );
    }

    #[test]
    fn audio_only_programs_pick_the_first_audio() {
        let mut t = ProgramTable::default();
        t.push(&packets_of(0, &pat(&[(1, 0x1000)]))[0]);
        t.push(&packets_of(0x1000, &pmt(1, 0, &[(0x06, 0x300), (0x0F, 0x101)]))[0]);
        assert_eq!(t.main_track().map(|t| t.pid), Some(0x101));
    }

    #[test]
    fn corrupt_sections_are_ignored() {
        let mut t = ProgramTable::default();
        let mut s = pat(&[(1, 0x1000)]);
        s[9] ^= 0x01;
        assert!(!t.push(&packets_of(0, &s)[0]));
        assert!(!t.is_psi_pid(0x1000));
        assert_eq!(parse_pat(&s), Err(TsError::BadCrc));
    }

    #[test]
    fn long_sections_span_packets_and_round_trip() {
        let streams: Vec<(u8, u16)> = (0..60).map(|i| (0x06, 0x200 + i)).collect();
        let s = pmt(1, 0, &streams);
        assert!(s.len() > PACKET_LEN);
        let packets = packets_of(0x1000, &s);
        assert_eq!(packets.len(), 2);
        let mut a = SectionAssembler::default();
        let mut out = Vec::new();
        for p in &packets {
            a.push(&Header::parse(p), payload(p).unwrap_or(&[]), &mut out);
        }
        assert_eq!(out, vec![s]);
    }

    #[test]
    fn private_streams_with_audio_descriptors_count_as_audio() {
        assert_eq!(classify(0x06, &[0x6A, 0x01, 0x00]), EsKind::Audio);
        assert_eq!(
            classify(0x06, &[0x05, 0x04, b'O', b'p', b'u', b's']),
            EsKind::Audio
        );
        assert_eq!(classify(0x06, &[0x59, 0x02, 0x00]), EsKind::Other);
        assert_eq!(classify(0x06, &[0x05, 0x09, b'O']), EsKind::Other);
    }
}
