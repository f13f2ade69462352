//! The keyframe segmenter: cuts a transport stream at random-access points
//! near a target duration, so every segment starts with PAT + PMT and a
//! keyframe and decodes on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::packet::{
    payload, pes_remaining, random_access, ts_diff, Framer, Header, Packet, PesHead,
    PesHeaderReader, NULL_PID, TICKS_PER_SEC,
};
use super::psi::{EsKind, ProgramTable, Track};
use super::rap::RapScanner;

/// Hard cap on one segment's size. A segment that grows past it without
/// reaching a random-access point that is due is dropped whole (counted in
/// [`Segmenter::segments_dropped`]), and cutting resumes at the next
/// random-access point: memory stays bounded even for a stream without
/// keyframes.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// Longest duration a segment reports, and the longest target accepted.
/// Durations measured from timestamps are checked against it: a timestamp
/// jump (a source restart, a splice) would otherwise yield absurd values.
pub const MAX_SEGMENT_DURATION: Duration = Duration::from_secs(60);

/// Packets held back while deciding whether a PES is a random-access point
/// (its header, and the NAL units up to the first slice). ~190 KiB; past
/// it the PES is taken as not random access.
const MAX_PENDING_PACKETS: usize = 1024;

/// After a cut, packets during which the previous segment may still collect
/// the tails of PES packets it holds the start of (audio, mostly). Past it,
/// it is emitted anyway.
const MAX_TAIL_PACKETS: u32 = 2048;

/// A step back between consecutive main-track PES timestamps larger than
/// this is a discontinuity (B-frame reordering stays well below it).
const BACKWARD_JUMP_TICKS: i64 = TICKS_PER_SEC as i64;

/// A step forward between consecutive main-track PES timestamps larger than
/// this is a discontinuity.
const FORWARD_JUMP_TICKS: i64 = 10 * TICKS_PER_SEC as i64;

/// [`MAX_SEGMENT_DURATION`] in 90 kHz ticks.
const MAX_DURATION_TICKS: i64 = 60 * TICKS_PER_SEC as i64;

/// One segment cut by the [`Segmenter`]: starts with PAT+PMT and a random-access point.
#[derive(Debug, Clone)]
pub struct CutSegment {
    /// The segment's bytes: whole 188-byte TS packets, PAT and PMT first.
    pub data: Bytes,
    /// Duration measured from PTS (next segment's first PTS minus this one's).
    pub duration: Duration,
    /// The first presentation timestamp in the segment (90 kHz), when known.
    pub first_pts: Option<u64>,
}

/// Cuts an MPEG-TS byte stream into independently decodable segments.
///
/// Feed bytes with [`push`](Self::push) in chunks of any size; each call
/// returns the segments it completed. Call [`finish`](Self::finish) at the
/// end of input for the last one.
///
/// How it cuts:
/// - It follows the PAT and PMTs (new versions, moved PMT PIDs, changed
///   streams) and cuts on the first video stream (H.264, HEVC, MPEG-2) or,
///   without video, the first audio stream.
/// - A video PES is a random-access point when its first packet has the
///   random_access_indicator set or its elementary stream shows an IDR/IRAP
///   picture (or an MPEG-2 sequence header) before any other slice. With
///   audio, every PES is one.
/// - A segment ends at the first random-access point whose PTS is at least
///   the target after the segment's first PTS (33-bit wrap handled), or
///   at the first one after a timestamp jump (a step between consecutive
///   PES timestamps of more than 1 s back or 10 s forward). A cut needs a
///   PTS and tables that list the cut-on stream.
/// - Each segment starts with the latest PAT and PMTs, rewritten with
///   continuity counters that run on from segment to segment, then the
///   random-access PES. Packets of other PIDs that continue a PES begun
///   before the cut go to the earlier segment, so both hold whole PES packets
///   (the earlier segment is handed out once those tails are in). Input before
///   the first random-access point is dropped, as are null packets and
///   packets flagged with transport errors.
/// - A change of the cut-on stream (codec or PID) ends the current segment
///   at once and waits for a random-access point of the new stream.
///
/// Durations are next segment's first PTS minus this one's. Where that is
/// not in (0, 60 s] (the last segment, a change of stream, a timestamp jump),
/// it is the span of the segment's own PTS plus one frame interval (the
/// average gap between its PES timestamps, or the last one known),
/// capped at [`MAX_SEGMENT_DURATION`]; if even that is not positive, the
/// target duration is reported.
#[derive(Debug)]
pub struct Segmenter {
    /// Target duration in 90 kHz ticks.
    target_ticks: u64,
    /// Size above which a segment is dropped.
    max_segment_bytes: usize,
    /// Finds packets in the byte stream.
    framer: Framer,
    /// The latest PAT and PMTs.
    psi: ProgramTable,
    /// The stream we cut on, once the tables name one.
    track: Option<Track>,
    /// The main-track PES currently being examined, with held-back packets.
    probe: Option<Probe>,
    /// The segment being filled; `None` while waiting for a random-access point.
    current: Option<Building>,
    /// The previous segment, still collecting PES tails.
    closing: Option<Closing>,
    /// Per PID (other than PSI): which segment holds its open PES.
    routes: BTreeMap<u16, Route>,
    /// Next continuity counter per PSI PID, for the tables we write.
    psi_cc: BTreeMap<u16, u8>,
    /// Sequence number the next segment gets (internal bookkeeping only).
    next_seq: u64,
    /// The last known interval between main-track PES timestamps.
    frame_ticks: Option<i64>,
    /// The previous main-track PES timestamp, to notice jumps.
    last_pts: Option<u64>,
    /// Valid packets seen.
    packets_seen: u64,
    /// Segments dropped for exceeding the size cap.
    dropped: u64,
    /// Segments completed and not yet handed out.
    ready: Vec<CutSegment>,
}

/// A segment being filled.
#[derive(Debug)]
struct Building {
    seq: u64,
    data: Vec<u8>,
    first_pts: u64,
    /// Earliest and latest main-track PTS, relative to `first_pts`.
    min_off: i64,
    max_off: i64,
    /// Main-track PES timestamps seen (for the frame-interval estimate).
    pes_count: u32,
    /// Timestamps jumped inside the segment: its span is no longer
    /// measurable, and the next random-access point ends it.
    jumped: bool,
}

impl Building {
    fn note_pts(&mut self, pts: u64) {
        let off = ts_diff(pts, self.first_pts);
        if !self.jumped && off.abs() <= MAX_DURATION_TICKS {
            self.min_off = self.min_off.min(off);
            self.max_off = self.max_off.max(off);
            self.pes_count = self.pes_count.saturating_add(1);
        }
    }
}

/// A segment that has been cut but still collects tails of its PES packets.
#[derive(Debug)]
struct Closing {
    seg: Building,
    /// The first PTS of the segment after it.
    next_pts: Option<u64>,
    /// PIDs whose open PES started in this segment and has not ended yet.
    waiting: Vec<u16>,
    /// Packets routed since the cut.
    packets_since: u32,
}

/// Where a PID's open PES lives.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// The segment holding the PES start, if any was kept.
    owner: Option<u64>,
    /// Bytes still to come; `None` unbounded (ends at the next start).
    remaining: Option<usize>,
}

impl Route {
    fn open(&self) -> bool {
        self.remaining != Some(0)
    }
}

/// The main-track PES being examined, and the packets held back meanwhile.
#[derive(Debug)]
struct Probe {
    reader: PesHeaderReader,
    /// `Some(pts)` once the PES header has been read.
    header: Option<Option<u64>>,
    /// The first packet's random_access_indicator.
    rai: bool,
    /// Start-code scanner (video only; audio is always random access).
    scanner: Option<RapScanner>,
    /// Packets of all PIDs from the PES start on, in order.
    pending: Vec<Packet>,
}

impl Probe {
    fn new(kind: EsKind, first: &Packet) -> Self {
        Probe {
            reader: PesHeaderReader::default(),
            header: None,
            rai: random_access(first),
            scanner: match kind {
                EsKind::Video(codec) => Some(RapScanner::new(codec)),
                _ => None,
            },
            pending: Vec::new(),
        }
    }

    /// Reads the next payload of the PES (header first, then start codes).
    fn feed(&mut self, data: &[u8]) {
        let es = match self.header {
            Some(_) => data,
            None => match self.reader.feed(data) {
                PesHead::Incomplete => return,
                PesHead::NotPes => {
                    self.header = Some(None);
                    return;
                }
                PesHead::Done { pts, es } => {
                    self.header = Some(pts);
                    es
                }
            },
        };
        if let Some(s) = &mut self.scanner {
            s.feed(es);
        }
    }

    /// Random access: `Some` once known. Audio always is.
    fn random_access(&self) -> Option<bool> {
        if self.rai {
            return Some(true);
        }
        match &self.scanner {
            None => Some(true),
            Some(s) => s.verdict(),
        }
    }
}

fn ticks_to_duration(ticks: i64) -> Duration {
    let ticks = u64::try_from(ticks).unwrap_or(0);
    Duration::from_nanos(ticks.saturating_mul(100_000) / 9)
}

impl Segmenter {
    /// A segmenter that cuts at the first random-access point at or after `target`.
    ///
    /// `target` is capped at [`MAX_SEGMENT_DURATION`].
    pub fn new(target: Duration) -> Self {
        Self::with_max_segment_bytes(target, MAX_SEGMENT_BYTES)
    }

    /// Like [`new`](Self::new) with a smaller size cap than
    /// [`MAX_SEGMENT_BYTES`] (larger values are capped to it).
    pub fn with_max_segment_bytes(target: Duration, max_segment_bytes: usize) -> Self {
        let target = target.min(MAX_SEGMENT_DURATION);
        let target_ticks = target.as_nanos().saturating_mul(9) / 100_000;
        Segmenter {
            target_ticks: u64::try_from(target_ticks).unwrap_or(u64::MAX),
            max_segment_bytes: max_segment_bytes.min(MAX_SEGMENT_BYTES),
            framer: Framer::default(),
            psi: ProgramTable::default(),
            track: None,
            probe: None,
            current: None,
            closing: None,
            routes: BTreeMap::new(),
            psi_cc: BTreeMap::new(),
            next_seq: 0,
            frame_ticks: None,
            last_pts: None,
            packets_seen: 0,
            dropped: 0,
            ready: Vec::new(),
        }
    }

    /// Feeds bytes (any chunking); returns the segments completed by them.
    pub fn push(&mut self, input: &[u8]) -> Vec<CutSegment> {
        let mut framer = std::mem::take(&mut self.framer);
        framer.push(input, &mut |p| self.on_packet(p));
        self.framer = framer;
        std::mem::take(&mut self.ready)
    }

    /// Ends the input; returns the last, possibly short, segment.
    ///
    /// In the rare case that more than one segment completes here (the
    /// previous one was still collecting PES tails), they are returned
    /// joined as one segment: it still starts with PAT, PMT and a
    /// random-access point, and its duration is the sum. The segmenter can
    /// take new input afterwards, which starts at its next random-access point.
    pub fn finish(&mut self) -> Option<CutSegment> {
        let mut framer = std::mem::take(&mut self.framer);
        framer.finish(&mut |p| self.on_packet(p));
        self.framer = framer;
        // The last PES ends with the input: decide on what was seen of it.
        if let Some(probe) = &self.probe {
            if probe.header.is_some() {
                let cut = probe.random_access() == Some(true) && self.is_due(probe);
                self.release_probe(cut);
            } else {
                self.release_probe(false);
            }
        }
        self.end_segments();
        self.routes.clear();
        self.last_pts = None;
        let mut ready = std::mem::take(&mut self.ready).into_iter();
        let mut last = ready.next()?;
        while let Some(more) = ready.next() {
            // The join must respect the size cap too: what does not fit is
            // dropped, like any oversized segment (the earlier part is kept).
            if last.data.len() + more.data.len() > self.max_segment_bytes {
                self.dropped += 1 + ready.count() as u64;
                tracing::warn!(
                    cap = self.max_segment_bytes,
                    "last segments too large to join at the end of input; dropped the final one"
                );
                break;
            }
            let mut data = Vec::with_capacity(last.data.len() + more.data.len());
            data.extend_from_slice(&last.data);
            data.extend_from_slice(&more.data);
            last.data = Bytes::from(data);
            last.duration = last.duration.saturating_add(more.duration);
        }
        Some(last)
    }

    /// How many valid TS packets were seen so far (0 means: not MPEG-TS).
    pub fn packets_seen(&self) -> u64 {
        self.packets_seen
    }

    /// How many segments were dropped for growing past the size cap.
    pub fn segments_dropped(&self) -> u64 {
        self.dropped
    }

    /// One packet from the framer.
    fn on_packet(&mut self, p: &Packet) {
        self.packets_seen += 1;
        let h = Header::parse(p);
        if h.tei || h.pid == NULL_PID {
            return;
        }
        if self.psi.is_psi_pid(h.pid) {
            if self.psi.push(p) {
                self.on_tables_changed();
            }
            self.hold_or_route(p);
            return;
        }
        match self.track {
            Some(track) if track.pid == h.pid => self.on_main_packet(track, &h, p),
            _ => self.hold_or_route(p),
        }
    }

    /// The tables changed: follow a change of the stream we cut on.
    fn on_tables_changed(&mut self) {
        // While a new PMT has not arrived yet there is no answer: keep going.
        let Some(new) = self.psi.main_track() else {
            return;
        };
        if self.track == Some(new) {
            return;
        }
        tracing::debug!(pid = new.pid, kind = ?new.kind, "cutting on a new stream");
        if self.probe.is_some() {
            self.release_probe(false);
        }
        // Old and new streams do not belong in one segment.
        self.end_segments();
        self.track = Some(new);
        self.last_pts = None;
    }

    /// A packet of the stream we cut on.
    fn on_main_packet(&mut self, track: Track, h: &Header, p: &Packet) {
        if h.pusi {
            if self.probe.is_some() {
                // The previous PES ended without showing a random-access point.
                self.release_probe(false);
            }
            self.probe = Some(Probe::new(track.kind, p));
        }
        let Some(probe) = &mut self.probe else {
            self.route(p);
            return;
        };
        probe.pending.push(*p);
        if let Some(data) = payload(p) {
            probe.feed(data);
        }
        self.try_decide();
    }

    /// Holds a packet back while a probe is open, else routes it.
    fn hold_or_route(&mut self, p: &Packet) {
        match &mut self.probe {
            Some(probe) => {
                probe.pending.push(*p);
                self.try_decide();
            }
            None => self.route(p),
        }
    }

    /// Whether a PES with this probe's PTS would end the current segment.
    fn is_due(&self, probe: &Probe) -> bool {
        let (Some(Some(pts)), Some(track)) = (probe.header, self.track) else {
            return false;
        };
        if !self.psi.describes(track) {
            return false;
        }
        match &self.current {
            None => true,
            Some(cur) => {
                cur.jumped
                    || self.is_jump(pts)
                    || ts_diff(pts, cur.first_pts) >= self.target_ticks as i64
            }
        }
    }

    /// Whether `pts` is a discontinuity after the previous main-track PES.
    fn is_jump(&self, pts: u64) -> bool {
        self.last_pts.is_some_and(|last| {
            let step = ts_diff(pts, last);
            !(-BACKWARD_JUMP_TICKS..=FORWARD_JUMP_TICKS).contains(&step)
        })
    }

    /// Decides the open probe once enough is known.
    fn try_decide(&mut self) {
        let Some(probe) = &self.probe else { return };
        let overflow = probe.pending.len() >= MAX_PENDING_PACKETS;
        let decision = if probe.header.is_none() {
            None
        } else if !self.is_due(probe) {
            Some(false)
        } else {
            probe.random_access()
        };
        match decision {
            Some(cut) => self.release_probe(cut),
            None if overflow => self.release_probe(false),
            None => {}
        }
    }

    /// Ends the probe: cuts before its PES if `cut`, then routes the
    /// held-back packets.
    fn release_probe(&mut self, cut: bool) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let pts = probe.header.flatten();
        if let Some(pts) = pts {
            if cut {
                self.start_segment(pts);
            } else {
                let jump = self.is_jump(pts);
                if let Some(cur) = &mut self.current {
                    cur.jumped |= jump;
                    cur.note_pts(pts);
                }
            }
            self.last_pts = Some(pts);
        }
        for p in &probe.pending {
            self.route(p);
        }
    }

    /// Cuts: the current segment starts closing, a new one starts with the
    /// tables.
    fn start_segment(&mut self, pts: u64) {
        if let Some(old) = self.current.take() {
            if let Some(older) = self.closing.take() {
                self.emit(older.seg, older.next_pts);
            }
            let waiting = self
                .routes
                .iter()
                .filter(|(_, r)| r.owner == Some(old.seq) && r.open())
                .map(|(&pid, _)| pid)
                .collect();
            self.closing = Some(Closing {
                seg: old,
                next_pts: Some(pts),
                waiting,
                packets_since: 0,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut data = Vec::new();
        self.psi.write_tables(&mut self.psi_cc, &mut data);
        self.current = Some(Building {
            seq,
            data,
            first_pts: pts,
            min_off: 0,
            max_off: 0,
            pes_count: 1,
            jumped: false,
        });
    }

    /// Puts one packet into the segment it belongs to (or drops it).
    fn route(&mut self, p: &Packet) {
        let h = Header::parse(p);
        let current_seq = self.current.as_ref().map(|c| c.seq);
        let closing_seq = self.closing.as_ref().map(|c| c.seg.seq);
        if self.psi.is_psi_pid(h.pid) {
            if let Some(cur) = &mut self.current {
                // Our own counters: the tables we insert share these PIDs.
                let mut q = *p;
                let cc = if h.has_payload {
                    super::psi::next_cc(&mut self.psi_cc, h.pid)
                } else {
                    self.psi_cc
                        .get(&h.pid)
                        .map_or(0, |n| n.wrapping_sub(1) & 0x0F)
                };
                q[3] = (q[3] & 0xF0) | cc;
                cur.data.extend_from_slice(&q);
            }
        } else if !h.has_payload {
            if let Some(cur) = &mut self.current {
                cur.data.extend_from_slice(p);
            }
        } else if h.pusi {
            let remaining = payload(p).map_or(Some(0), pes_remaining);
            self.routes.insert(
                h.pid,
                Route {
                    owner: current_seq,
                    remaining,
                },
            );
            if let Some(cl) = &mut self.closing {
                cl.waiting.retain(|&pid| pid != h.pid);
            }
            if let Some(cur) = &mut self.current {
                cur.data.extend_from_slice(p);
            }
        } else if let Some(route) = self.routes.get_mut(&h.pid) {
            let len = payload(p).map_or(0, <[u8]>::len);
            if let Some(r) = &mut route.remaining {
                *r = r.saturating_sub(len);
            }
            let owner = route.owner;
            let done = !route.open();
            if owner.is_some() && owner == closing_seq {
                let fits = self
                    .closing
                    .as_ref()
                    .is_some_and(|cl| cl.seg.data.len() + p.len() <= self.max_segment_bytes);
                if fits {
                    if let Some(cl) = &mut self.closing {
                        cl.seg.data.extend_from_slice(p);
                        if done {
                            cl.waiting.retain(|&pid| pid != h.pid);
                        }
                    }
                } else if let Some(cl) = self.closing.take() {
                    // A tail that would break the size cap is left out: the
                    // segment goes as it is, as when its tails take too long.
                    self.emit(cl.seg, cl.next_pts);
                }
            } else if owner.is_some() && owner == current_seq {
                if let Some(cur) = &mut self.current {
                    cur.data.extend_from_slice(p);
                }
            }
            // Otherwise the PES start was dropped: so is its rest.
        }
        self.after_route();
    }

    /// Emits the closing segment when its tails are in; enforces the size cap.
    fn after_route(&mut self) {
        if let Some(cl) = &mut self.closing {
            cl.packets_since = cl.packets_since.saturating_add(1);
            if cl.waiting.is_empty()
                || cl.packets_since > MAX_TAIL_PACKETS
                || cl.seg.data.len() > self.max_segment_bytes
            {
                if let Some(cl) = self.closing.take() {
                    self.emit(cl.seg, cl.next_pts);
                }
            }
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.data.len() > self.max_segment_bytes)
        {
            self.current = None;
            self.dropped += 1;
            tracing::warn!(
                cap = self.max_segment_bytes,
                "segment grew past the size cap without a due random-access point; dropped"
            );
        }
    }

    /// Emits the closing and the current segment as they are.
    fn end_segments(&mut self) {
        if let Some(cl) = self.closing.take() {
            self.emit(cl.seg, cl.next_pts);
        }
        if let Some(cur) = self.current.take() {
            self.emit(cur, None);
        }
    }

    /// Hands a finished segment out with its duration.
    fn emit(&mut self, seg: Building, next_pts: Option<u64>) {
        let ticks = self.duration_ticks(&seg, next_pts);
        self.ready.push(CutSegment {
            data: Bytes::from(seg.data),
            duration: ticks_to_duration(ticks),
            first_pts: Some(seg.first_pts),
        });
    }

    /// The duration rules documented on [`Segmenter`], in 90 kHz ticks.
    fn duration_ticks(&mut self, seg: &Building, next_pts: Option<u64>) -> i64 {
        let span = seg.max_off - seg.min_off;
        if seg.pes_count >= 2 && span > 0 {
            self.frame_ticks = Some(span / i64::from(seg.pes_count - 1));
        }
        if let Some(next) = next_pts {
            let d = ts_diff(next, seg.first_pts);
            if d > 0 && d <= MAX_DURATION_TICKS {
                return d;
            }
        }
        let estimate = seg.max_off + self.frame_ticks.unwrap_or(0);
        if estimate > 0 {
            estimate.min(MAX_DURATION_TICKS)
        } else {
            // Nothing measurable: report the target (at least 1 ms).
            (self.target_ticks as i64).max(90)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{write_timestamp, PACKET_LEN, SYNC_BYTE};
    use super::super::psi::tests::{pat, pmt};
    use super::*;

    /// Builds a tiny synthetic stream: PAT/PMT, then H.264 PES packets of
    /// `packets_per_pes` packets each, keyframes every `gop` frames, 25 fps.
    struct Synth {
        cc: BTreeMap<u16, u8>,
        out: Vec<u8>,
        /// Where the PMT and the video travel (changeable mid-stream).
        pmt_pid: u16,
        video_pid: u16,
    }

    impl Synth {
        fn new() -> Self {
            Synth {
                cc: BTreeMap::new(),
                out: Vec::new(),
                pmt_pid: 0x1000,
                video_pid: 0x100,
            }
        }

        /// Writes one packet with as much of `body` as fits; returns how much.
        fn packet(&mut self, pid: u16, pusi: bool, rai: bool, body: &[u8]) -> usize {
            let mut p = [0xFFu8; PACKET_LEN];
            p[0] = SYNC_BYTE;
            p[1] = (if pusi { 0x40 } else { 0 }) | (pid >> 8) as u8;
            p[2] = pid as u8;
            let cc = super::super::psi::next_cc(&mut self.cc, pid);
            let room = PACKET_LEN - 4;
            let used = if !rai && body.len() >= room {
                p[3] = 0x10 | cc;
                p[4..].copy_from_slice(&body[..room]);
                room
            } else {
                // Adaptation field (length, flags, stuffing) fills the rest.
                let body = &body[..body.len().min(room - 2)];
                p[3] = 0x30 | cc;
                let af_len = room - body.len() - 1;
                p[4] = af_len as u8;
                p[5] = if rai { 0x40 } else { 0 };
                p[5 + af_len..].copy_from_slice(body);
                body.len()
            };
            self.out.extend_from_slice(&p);
            used
        }

        fn packets_cont(&mut self, pid: u16, mut body: &[u8]) {
            while !body.is_empty() {
                let n = self.packet(pid, false, false, body);
                body = &body[n..];
            }
        }

        fn packets(&mut self, pid: u16, rai: bool, mut body: &[u8]) {
            let mut first = true;
            while !body.is_empty() {
                let n = self.packet(pid, first, rai && first, body);
                body = &body[n..];
                first = false;
            }
        }

        fn tables(&mut self, video_type: u8) {
            let mut s = vec![0u8];
            s.extend_from_slice(&pat(&[(1, self.pmt_pid)]));
            self.packets(0, false, &s);
            let mut s = vec![0u8];
            s.extend_from_slice(&pmt(1, 0, &[(video_type, self.video_pid), (0x0F, 0x101)]));
            self.packets(self.pmt_pid, false, &s);
        }

        fn frame(&mut self, pts: u64, key: bool, rai: bool, packets: usize) {
            let mut pes = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
            write_timestamp(&mut pes[9..14], pts);
            pes.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
            pes.extend_from_slice(&[0, 0, 1, if key { 0x65 } else { 0x41 }]);
            pes.resize(packets * 184 - 8, 0xAB);
            self.packets(self.video_pid, rai, &pes);
        }

        fn audio_pes(pts: u64) -> Vec<u8> {
            let mut pes = vec![0, 0, 1, 0xC0, 0, 200, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
            write_timestamp(&mut pes[9..14], pts);
            pes.resize(206, 0x11);
            pes
        }
    }

    fn stream(frames: u64, gop: u64, rai: bool) -> Vec<u8> {
        let mut s = Synth::new();
        interleaved(&mut s, 0..frames, gop, rai);
        s.out
    }

    /// Appends frames `range` (25 fps, keyframe every `gop`) with audio.
    fn interleaved(s: &mut Synth, range: std::ops::Range<u64>, gop: u64, rai: bool) {
        for i in range {
            if i % 25 == 0 {
                s.tables(0x1B);
            }
            let key = i % gop == 0;
            // Each audio PES straddles the next video frame: its start goes
            // before it, its tail after, as interleaving muxers do.
            let audio = Synth::audio_pes(126_000 + i * 3600);
            let used = s.packet(0x101, true, false, &audio);
            s.frame(126_000 + i * 3600, key, rai && key, 2);
            s.packets_cont(0x101, &audio[used..]);
        }
    }

    /// The PIDs of a segment's packets, in order.
    fn pids(seg: &CutSegment) -> Vec<u16> {
        seg.data
            .chunks_exact(PACKET_LEN)
            .map(|p| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]))
            .collect()
    }

    #[test]
    fn follows_a_pmt_that_moves_to_a_new_pid() {
        // Same streams on a new PMT PID: nothing to end, cuts as before.
        let mut s = Synth::new();
        interleaved(&mut s, 0..50, 25, true);
        s.pmt_pid = 0x1100;
        interleaved(&mut s, 50..100, 25, true);
        let segs = segment(&s.out, Duration::from_secs(1));
        assert_eq!(segs.len(), 4);
        assert!(segs.iter().all(|g| g.duration == Duration::from_secs(1)));
        assert_eq!(pids(&segs[3])[..3], [0, 0x1100, 0x100]);

        // The video moves to a new PID with the PMT: the segment in progress
        // ends at the change, the next starts on the new PID's keyframe.
        let mut s = Synth::new();
        interleaved(&mut s, 0..40, 25, true);
        s.pmt_pid = 0x1100;
        s.video_pid = 0x200;
        s.tables(0x1B); // announced before the first packet on the new PID
        interleaved(&mut s, 40..100, 25, true);
        let segs = segment(&s.out, Duration::from_secs(1));
        let starts: Vec<(Vec<u16>, Option<u64>)> = segs
            .iter()
            .map(|g| (pids(g)[..3].to_vec(), g.first_pts))
            .collect();
        assert_eq!(
            starts,
            vec![
                (vec![0, 0x1000, 0x100], Some(126_000)),
                (vec![0, 0x1000, 0x100], Some(126_000 + 25 * 3600)),
                (vec![0, 0x1100, 0x200], Some(126_000 + 50 * 3600)),
                (vec![0, 0x1100, 0x200], Some(126_000 + 75 * 3600)),
            ]
        );
        // 15 frames of the old stream after its last keyframe.
        assert_eq!(segs[1].duration, Duration::from_millis(600));
        assert!(!pids(&segs[1]).contains(&0x200));
    }

    /// Two seconds of interleaved video and audio, then an audio PES just before the last
    /// keyframe that never gets its tail: the segment before it is still waiting at the end.
    fn tail_waiting_stream() -> Synth {
        let mut s = Synth::new();
        interleaved(&mut s, 0..50, 25, true);
        s.tables(0x1B);
        let audio = Synth::audio_pes(126_000 + 50 * 3600);
        s.packet(0x101, true, false, &audio);
        s.frame(126_000 + 50 * 3600, true, true, 2);
        s
    }

    #[test]
    fn finish_joins_a_segment_still_waiting_for_a_tail() {
        let s = tail_waiting_stream();
        let mut seg = Segmenter::new(Duration::from_secs(1));
        let pushed = seg.push(&s.out);
        assert_eq!(pushed.len(), 1);
        let last = seg.finish().expect("a final segment");
        // Second and third segment in one: both start with the tables.
        let ps = pids(&last);
        assert_eq!(ps[..3], [0, 0x1000, 0x100]);
        assert_eq!(ps.iter().filter(|&&p| p == 0).count(), 3); // 2 inserted, 1 in-stream
        assert_eq!(last.first_pts, Some(126_000 + 25 * 3600));
        // 1 s, then one frame (40 ms, the interval measured so far).
        assert_eq!(last.duration, Duration::from_millis(1040));
        assert!(seg.finish().is_none());
    }

    #[test]
    fn pes_tails_do_not_push_a_segment_past_the_size_cap() {
        // Found by the `segmenter` fuzz target: a closing segment took tails
        // past the cap and was emitted over it.
        let data = stream(100, 25, true);
        let uncapped = segment(&data, Duration::from_secs(1));
        let full = uncapped[0].data.len();
        // The first segment fits without the audio tail it collects after its cut.
        let cap = full - 1;
        let mut seg = Segmenter::with_max_segment_bytes(Duration::from_secs(1), cap);
        let first = seg.push(&data).remove(0);
        assert!(first.data.len() <= cap, "{} > {cap}", first.data.len());
        assert_eq!(first.data[..], uncapped[0].data[..full - PACKET_LEN]);
        assert_eq!(first.first_pts, uncapped[0].first_pts);
        assert_eq!(first.duration, uncapped[0].duration);
        assert_eq!(seg.segments_dropped(), 0);
    }

    #[test]
    fn finish_does_not_join_past_the_size_cap() {
        // Found by the `segmenter` fuzz target: the join ignored the cap.
        let s = tail_waiting_stream();
        let joined = {
            let mut seg = Segmenter::new(Duration::from_secs(1));
            seg.push(&s.out);
            seg.finish().expect("a joined final segment")
        };
        // Room for either part, not for both.
        let cap = joined.data.len() - PACKET_LEN;
        let mut seg = Segmenter::with_max_segment_bytes(Duration::from_secs(1), cap);
        assert_eq!(seg.push(&s.out).len(), 1);
        let last = seg.finish().expect("the earlier part");
        assert!(last.data.len() <= cap, "{} > {cap}", last.data.len());
        assert_eq!(last.first_pts, joined.first_pts);
        assert_eq!(last.duration, Duration::from_secs(1));
        assert_eq!(pids(&last)[..3], [0, 0x1000, 0x100]);
        assert_eq!(seg.segments_dropped(), 1);
    }

    fn segment(data: &[u8], target: Duration) -> Vec<CutSegment> {
        let mut seg = Segmenter::new(target);
        let mut out = seg.push(data);
        out.extend(seg.finish());
        out
    }

    #[test]
    fn cuts_at_keyframes_after_the_target() {
        // 10 s at 25 fps, keyframe every second, flagged or not.
        for rai in [true, false] {
            let segs = segment(&stream(250, 25, rai), Duration::from_secs(2));
            let firsts: Vec<u64> = segs.iter().filter_map(|s| s.first_pts).collect();
            let want: Vec<u64> = (0..5).map(|k| 126_000 + k * 2 * 90_000).collect();
            assert_eq!(firsts, want, "rai={rai}");
            for s in &segs {
                assert_eq!(s.duration, Duration::from_secs(2));
                assert_eq!(s.data.len() % PACKET_LEN, 0);
            }
        }
    }

    #[test]
    fn audio_tails_stay_with_their_segment() {
        let segs = segment(&stream(100, 25, true), Duration::from_secs(1));
        assert!(segs.len() >= 3);
        for s in &segs {
            // Every audio PES in a segment is whole: starts and continuations pair up.
            let mut starts = 0;
            let mut conts = 0;
            for p in s.data.chunks_exact(PACKET_LEN) {
                let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
                if pid == 0x101 {
                    if p[1] & 0x40 != 0 {
                        starts += 1;
                    } else {
                        conts += 1;
                    }
                }
            }
            assert_eq!(starts, conts);
        }
    }

    #[test]
    fn backwards_jump_cuts_at_the_next_keyframe() {
        let mut data = stream(50, 25, true);
        data.extend(stream(50, 25, true)); // timestamps restart
        let segs = segment(&data, Duration::from_secs(10));
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].duration, Duration::from_secs(2));
    }

    #[test]
    fn pts_wrap_is_measured_forward() {
        let mut s = Synth::new();
        let start = (1u64 << 33) - 90_000;
        for i in 0..100u64 {
            if i % 25 == 0 {
                s.tables(0x1B);
            }
            s.frame((start + i * 3600) & ((1 << 33) - 1), i % 25 == 0, true, 1);
        }
        let segs = segment(&s.out, Duration::from_secs(2));
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].duration, Duration::from_secs(2));
        assert_eq!(segs[1].duration, Duration::from_secs(2));
    }

    #[test]
    fn oversized_segments_are_dropped_and_cutting_resumes() {
        // Keyframes only every 4 s; a cap far below a 4 s segment's size.
        let data = stream(250, 100, true);
        let mut seg = Segmenter::with_max_segment_bytes(Duration::from_secs(1), 40 * PACKET_LEN);
        let mut out = seg.push(&data);
        out.extend(seg.finish());
        assert!(out.is_empty());
        assert!(seg.segments_dropped() >= 2);
        // With room, the same input yields segments.
        assert_eq!(segment(&data, Duration::from_secs(1)).len(), 3);
    }

    #[test]
    fn not_ts_sees_no_packets() {
        let mut seg = Segmenter::new(Duration::from_secs(2));
        assert!(seg.push(&[0x12; 5000]).is_empty());
        assert!(seg.finish().is_none());
        assert_eq!(seg.packets_seen(), 0);
    }

    #[test]
    fn durations_fall_back_when_timestamps_jump_forward() {
        let mut s = Synth::new();
        for i in 0..50u64 {
            if i % 25 == 0 {
                s.tables(0x1B);
            }
            // A 100 s forward jump after the first second.
            let jump = if i >= 25 { 9_000_000 } else { 0 };
            s.frame(126_000 + i * 3600 + jump, i % 25 == 0, true, 1);
        }
        let segs = segment(&s.out, Duration::from_secs(2));
        assert_eq!(segs.len(), 2);
        // 25 frames of 40 ms: span 24 frames plus one frame interval.
        assert_eq!(segs[0].duration, Duration::from_secs(1));
    }
}
