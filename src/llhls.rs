//! LL-HLS from the local server, pure: a segment cut into parts at frame boundaries from its
//! verified bytes ([`parts`]), the `/ll.m3u8` playlist with `EXT-X-PART`,
//! `EXT-X-PRELOAD-HINT` and `EXT-X-SERVER-CONTROL` ([`render`]), and what a blocking reload
//! (`_HLS_msn`, `_HLS_part`) waits for ([`Awaited`]).
//!
//! # Parts
//!
//! A part ends where a frame of the segment's main track starts (a TS packet that starts a
//! video PES): hls.js flushes its demuxer at the end of what it loaded, so a frame cut in two
//! would reach the decoder as two broken ones. A part closes at the first frame starting at
//! least [`PART_NOMINAL`] after the part's own first frame, so the cut depends only on the bytes
//! before it: a part listed from a verified prefix is the same part once the segment is whole.
//! The last part runs to the segment's end, its duration what the signed segment duration
//! leaves. A frame start inside an audio PES is no boundary (see [`crate::ts::FrameStart`]).

use std::fmt::Write as _;
use std::ops::Range;
use std::time::Duration;

use crate::playlist::{rfc3339_millis, SegmentInfo};
use crate::ts::frame_starts;

/// A part closes at the first frame at least this long after its first frame.
pub const PART_NOMINAL: Duration = Duration::from_millis(200);

/// The smallest `PART-TARGET` declared; longer only if a part is (frames further apart than
/// a tenth of a second).
pub const MIN_PART_TARGET: Duration = Duration::from_millis(300);

/// A blocking reload or a hinted part is answered after at most this many target durations.
pub const BLOCK_TARGETS: u32 = 3;

/// Ticks of the 90 kHz MPEG clock per millisecond.
const TICKS_PER_MS: u64 = 90;

/// One part of a segment: its bytes and its media duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's bytes within the segment.
    pub range: Range<usize>,
    /// Its media duration.
    pub duration: Duration,
}

/// Converts 90 kHz ticks to a duration.
fn ticks(t: u64) -> Duration {
    Duration::from_nanos(t.saturating_mul(100_000) / 9)
}

/// The parts of a segment of `len` bytes lasting `duration_ms` (both as signed) that `data`,
/// its verified bytes from the first on, holds whole. When `data` is the whole segment, the
/// parts cover it; before, only parts whose end is known (the next part's first frame is in)
/// are listed. A segment without frames found is one part, listed once it is whole.
pub fn parts(data: &[u8], len: usize, duration_ms: u32) -> Vec<Part> {
    let whole = data.len() >= len;
    let data = data.get(..len).unwrap_or(data);
    let starts = frame_starts(data);
    let Some(first) = starts.first() else {
        return if whole {
            vec![Part {
                range: 0..len,
                duration: Duration::from_millis(u64::from(duration_ms)),
            }]
        } else {
            Vec::new()
        };
    };
    let nominal = PART_NOMINAL.as_millis() as u64 * TICKS_PER_MS;
    let mut parts = Vec::new();
    // The open part: where it starts in the bytes, and its first frame's decode time counted
    // from the segment's first frame (so the 33-bit wrap does not matter within a segment).
    let (mut start, mut elapsed_at_start) = (0usize, 0u64);
    for frame in starts.iter().skip(1) {
        let elapsed = frame.dts.wrapping_sub(first.dts) & ((1 << 33) - 1);
        // Decode times only grow within a segment; a frame that goes back is not a boundary,
        // nor one inside an audio PES (hls.js would drop the rest of that PES).
        if !frame.clean
            || elapsed <= elapsed_at_start
            || elapsed.saturating_sub(elapsed_at_start) < nominal
        {
            continue;
        }
        parts.push(Part {
            range: start..frame.offset,
            duration: ticks(elapsed - elapsed_at_start),
        });
        start = frame.offset;
        elapsed_at_start = elapsed;
    }
    if whole {
        let total = u64::from(duration_ms) * TICKS_PER_MS;
        parts.push(Part {
            range: start..len,
            duration: ticks(total.saturating_sub(elapsed_at_start)),
        });
    }
    parts
}

/// One segment of the LL-HLS playlist.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its number (the media sequence number).
    pub number: u64,
    /// What its signed header says; `discontinuity` also when a gap precedes it.
    pub info: SegmentInfo,
    /// Its parts known so far (all of them when complete).
    pub parts: Vec<Part>,
    /// The whole segment is held; only the last entry may be incomplete.
    pub complete: bool,
}

/// What `/ll.m3u8` lists.
#[derive(Debug, Clone)]
pub struct View {
    /// Contiguous, ascending; only the last may be incomplete (the segment arriving).
    pub entries: Vec<Entry>,
    /// Discontinuities before the first entry.
    pub discontinuity_sequence: u64,
    /// The stream ended and its last segment is listed.
    pub ended: bool,
    /// Segments of slack the player is asked to keep beyond one (the viewer's `--delay`).
    pub delay: u64,
}

/// Where a playlist's newest part is: `(segment, part)`; `part` is `u64::MAX` for a complete
/// segment listed without its parts.
pub type Position = (u64, u64);

impl View {
    /// The newest part listed, if any.
    pub fn newest_part(&self) -> Option<Position> {
        self.entries
            .iter()
            .rev()
            .find_map(|e| match (e.complete, e.parts.len()) {
                (true, 0) => Some((e.number, u64::MAX)),
                (_, 0) => None,
                (_, n) => Some((e.number, n as u64 - 1)),
            })
    }

    /// The newest complete segment listed.
    pub fn newest_complete(&self) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.complete)
            .map(|e| e.number)
    }

    /// `EXT-X-TARGETDURATION`: the longest listed segment, rounded up to whole seconds.
    pub fn target_duration(&self) -> Duration {
        let longest = self
            .entries
            .iter()
            .map(|e| round_to_millis(e.info.duration))
            .max()
            .unwrap_or_default();
        let secs = longest.as_secs() + u64::from(longest.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
    }

    /// `PART-TARGET`: [`MIN_PART_TARGET`], or the longest listed part if longer.
    pub fn part_target(&self) -> Duration {
        self.entries
            .iter()
            .flat_map(|e| e.parts.iter())
            .map(|p| round_up_to_millis(p.duration))
            .fold(MIN_PART_TARGET, Duration::max)
    }

    /// `PART-HOLD-BACK`: the segment-sized steps the live edge moves in (the broadcaster signs
    /// whole segments, so a segment's parts arrive together), `delay` more segments, and a part.
    pub fn part_hold_back(&self) -> Duration {
        let segments = u32::try_from(self.delay.saturating_add(1)).unwrap_or(u32::MAX);
        self.target_duration()
            .saturating_mul(segments)
            .saturating_add(self.part_target())
    }

    /// The part a player will want next (`EXT-X-PRELOAD-HINT`), unless the stream ended.
    pub fn preload_hint(&self) -> Option<(u64, usize)> {
        if self.ended {
            return None;
        }
        let last = self.entries.last()?;
        if last.complete {
            Some((last.number.checked_add(1)?, 0))
        } else {
            Some((last.number, last.parts.len()))
        }
    }
}

/// Rounds to whole milliseconds.
fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(((d.as_nanos() + 500_000) / 1_000_000) as u64)
}

/// Rounds up to whole milliseconds.
fn round_up_to_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)
}

/// Seconds with at most three decimals and no trailing zeros (`2`, `0.2`, `1.234`).
fn seconds(d: Duration) -> String {
    let ms = round_to_millis(d).as_millis();
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{frac:03}");
    text.trim_end_matches('0').to_owned()
}

/// The URI of part `index` of segment `number`, relative to the playlist.
pub fn part_uri(number: u64, index: usize) -> String {
    format!("part/{number}.{index}.ts")
}

/// Renders `/ll.m3u8`, or `None` when nothing is listed.
///
/// Parts are listed for the segments ending within [`BLOCK_TARGETS`] target durations of the
/// playlist's end (RFC 8216bis drops older ones), complete segments with `EXTINF` and their URI.
/// The arriving segment, if any, is listed by its parts alone, and `EXT-X-PRELOAD-HINT` names
/// the part to come.
pub fn render(view: &View) -> Option<String> {
    let first = view.entries.first()?;
    let target = view.target_duration();
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:{}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}\n\
         #EXT-X-PART-INF:PART-TARGET={}\n#EXT-X-MEDIA-SEQUENCE:{}\n\
         #EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
        target.as_secs(),
        seconds(view.part_hold_back()),
        seconds(view.part_target()),
        first.number,
        view.discontinuity_sequence,
    );
    // The entries whose parts are listed: those ending within BLOCK_TARGETS target durations.
    let horizon = target.saturating_mul(BLOCK_TARGETS);
    let mut from_end = Duration::ZERO;
    let mut with_parts = view.entries.len();
    for (i, entry) in view.entries.iter().enumerate().rev() {
        if from_end > horizon {
            break;
        }
        with_parts = i;
        from_end = from_end.saturating_add(entry.info.duration);
    }
    for (i, entry) in view.entries.iter().enumerate() {
        if !entry.complete && entry.parts.is_empty() {
            continue;
        }
        if entry.info.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        // The date of the arriving segment follows from the one before and the durations.
        if entry.complete {
            let duration_ms = entry.info.duration.as_millis() as u64;
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                rfc3339_millis(entry.info.published_unix_ms.saturating_sub(duration_ms))
            );
        }
        if i >= with_parts || !entry.complete {
            for (index, part) in entry.parts.iter().enumerate() {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{}\"",
                    seconds(part.duration),
                    part_uri(entry.number, index)
                );
                out.push_str(if index == 0 {
                    ",INDEPENDENT=YES\n"
                } else {
                    "\n"
                });
            }
        }
        if entry.complete {
            let _ = write!(
                out,
                "#EXTINF:{},\nseg/{}.ts\n",
                seconds(entry.info.duration),
                entry.number
            );
        }
    }
    if let Some((number, index)) = view.preload_hint() {
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
            part_uri(number, index)
        );
    }
    if view.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    Some(out)
}

/// What a blocking playlist reload waits for: `_HLS_msn`, and `_HLS_part` if given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    /// The media sequence number.
    pub msn: u64,
    /// The part of it, if asked.
    pub part: Option<u64>,
}

/// Why a blocking reload's query was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value is not a plain decimal number, or a directive is repeated.
    #[error("_HLS_msn and _HLS_part take one decimal number each")]
    Malformed,
    /// `_HLS_part` without `_HLS_msn`.
    #[error("_HLS_part needs _HLS_msn")]
    PartWithoutMsn,
}

/// Reads `_HLS_msn` and `_HLS_part` from a query string; other parameters are ignored.
/// `Ok(None)` for a plain reload.
pub fn awaited(query: Option<&str>) -> Result<Option<Awaited>, QueryError> {
    let (mut msn, mut part) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "_HLS_msn" => &mut msn,
            "_HLS_part" => &mut part,
            _ => continue,
        };
        // `u64::from_str` would take a leading `+`; only plain digits are numbers here.
        if slot.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QueryError::Malformed);
        }
        *slot = Some(value.parse().map_err(|_| QueryError::Malformed)?);
    }
    match (msn, part) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(QueryError::PartWithoutMsn),
        (Some(msn), part) => Ok(Some(Awaited { msn, part })),
    }
}

impl Awaited {
    /// Whether `view` holds what is awaited: segment `msn` whole (no part asked), or part
    /// `part` of it or anything later. An ended stream answers every wait.
    pub fn met_by(&self, view: &View) -> bool {
        if view.ended {
            return true;
        }
        match self.part {
            None => view.newest_complete().is_some_and(|n| n >= self.msn),
            Some(part) => view.newest_part().is_some_and(|p| p >= (self.msn, part)),
        }
    }

    /// Asks for a segment more than two beyond the newest listed: answered 400 at once, as
    /// RFC 8216bis asks.
    pub fn too_far(&self, view: &View) -> bool {
        let newest = view.entries.last().map_or(0, |e| e.number);
        self.msn > newest.saturating_add(2)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ts::frames::tests::segment;

    const P: usize = 188;

    /// 25 frames 40 ms apart (3600 ticks), two packets each after the PAT and PMT: 1 s.
    fn one_second() -> Vec<u8> {
        segment(25, 900_000, 3600, 1)
    }

    #[test]
    fn parts_end_on_frames_and_add_up_to_the_segment() {
        let data = one_second();
        let all = parts(&data, data.len(), 1000);
        // Frames every 40 ms: a part closes at the first frame 200 ms on, so five frames each.
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].range, 0..(2 + 5 * 2) * P);
        for pair in all.windows(2) {
            assert_eq!(pair[0].range.end, pair[1].range.start);
        }
        assert_eq!(all.last().unwrap().range.end, data.len());
        for part in &all {
            assert_eq!(part.duration, Duration::from_millis(200), "{part:?}");
            // Every part but the first starts with a frame.
            assert!(part.range.start == 0 || (part.range.start / P - 2) % 2 == 0);
        }
        let total: Duration = all.iter().map(|p| p.duration).sum();
        assert_eq!(total, Duration::from_secs(1));
    }

    #[test]
    fn a_prefix_lists_the_same_parts_as_far_as_they_are_known() {
        let data = one_second();
        let all = parts(&data, data.len(), 1000);
        for cut in (0..data.len()).step_by(97) {
            let some = parts(&data[..cut], data.len(), 1000);
            assert!(some.len() < all.len(), "cut {cut}");
            assert_eq!(some[..], all[..some.len()], "cut {cut}");
            // Only whole parts: each listed part's bytes are all in the prefix.
            assert!(some.iter().all(|p| p.range.end <= cut));
        }
        // Nothing known: nothing listed; a segment without frames is one part once whole.
        assert!(parts(&[], 10_000, 1000).is_empty());
        let junk = vec![0u8; 10 * P];
        assert!(parts(&junk[..5 * P], junk.len(), 700).is_empty());
        assert_eq!(
            parts(&junk, junk.len(), 700),
            [Part {
                range: 0..junk.len(),
                duration: Duration::from_millis(700)
            }]
        );
    }

    fn info(duration_ms: u64) -> SegmentInfo {
        SegmentInfo {
            duration: Duration::from_millis(duration_ms),
            published_unix_ms: 1_700_000_000_000,
            discontinuity: false,
        }
    }

    /// Segments 10 and 11 whole, 12 arriving with two parts.
    fn view() -> View {
        let data = one_second();
        let all = parts(&data, data.len(), 1000);
        let entry = |number, complete, parts: &[Part]| Entry {
            number,
            info: info(1000),
            parts: parts.to_vec(),
            complete,
        };
        View {
            entries: vec![
                entry(10, true, &all),
                entry(11, true, &all),
                entry(12, false, &all[..2]),
            ],
            discontinuity_sequence: 0,
            ended: false,
            delay: 0,
        }
    }

    #[test]
    fn the_playlist_carries_parts_hints_and_server_control() {
        let text = render(&view()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#EXTM3U");
        assert!(lines.contains(&"#EXT-X-TARGETDURATION:1"), "{text}");
        assert!(
            lines.contains(&"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.3"),
            "{text}"
        );
        assert!(lines.contains(&"#EXT-X-PART-INF:PART-TARGET=0.3"), "{text}");
        assert!(lines.contains(&"#EXT-X-MEDIA-SEQUENCE:10"), "{text}");
        // Complete segments: their parts, then EXTINF and the URI; the arriving one: parts only.
        let segment_11 = lines.iter().position(|l| *l == "seg/11.ts").unwrap();
        assert_eq!(lines[segment_11 - 1], "#EXTINF:1,");
        assert_eq!(
            lines[segment_11 - 2],
            "#EXT-X-PART:DURATION=0.2,URI=\"part/11.4.ts\""
        );
        assert!(lines.contains(&"#EXT-X-PART:DURATION=0.2,URI=\"part/11.0.ts\",INDEPENDENT=YES"));
        assert!(!text.contains("seg/12.ts"));
        let tail = &lines[lines.len() - 3..];
        assert_eq!(
            tail,
            [
                "#EXT-X-PART:DURATION=0.2,URI=\"part/12.0.ts\",INDEPENDENT=YES",
                "#EXT-X-PART:DURATION=0.2,URI=\"part/12.1.ts\"",
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/12.2.ts\"",
            ]
        );
        strict_check(&text);
        // hls_m3u8 reads it (keeping the LL tags as unknown) with the right segments.
        let parsed: hls_m3u8::MediaPlaylist<'_> = text.parse().unwrap();
        assert_eq!(parsed.media_sequence, 10);
        assert_eq!(parsed.segments.num_elements(), 2);
    }

    /// The LL-HLS rules of RFC 8216bis a player checks: every part within PART-TARGET, the
    /// parts of a complete segment adding up to its EXTINF, PART-HOLD-BACK at least twice
    /// PART-TARGET, and each URI once.
    fn strict_check(text: &str) {
        let value = |line: &str, key: &str| -> f64 {
            let at = line.find(key).unwrap() + key.len();
            line[at..].split(',').next().unwrap().parse().unwrap()
        };
        let part_target = text
            .lines()
            .find(|l| l.starts_with("#EXT-X-PART-INF:"))
            .map(|l| value(l, "PART-TARGET="))
            .unwrap();
        let hold_back = text
            .lines()
            .find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:"))
            .map(|l| value(l, "PART-HOLD-BACK="))
            .unwrap();
        assert!(hold_back >= 2.0 * part_target);
        let mut sum = 0.0;
        let mut uris = std::collections::BTreeSet::new();
        let mut extinf = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("#EXT-X-PART:") {
                let d = value(rest, "DURATION=");
                assert!(d <= part_target, "{line}");
                sum += d;
                assert!(uris.insert(rest.split('"').nth(1).unwrap().to_owned()));
            } else if let Some(rest) = line.strip_prefix("#EXTINF:") {
                extinf = Some(rest.trim_end_matches(',').parse::<f64>().unwrap());
            } else if !line.starts_with('#') {
                if sum > 0.0 {
                    assert!((sum - extinf.unwrap()).abs() < 0.002, "{line}: {sum}");
                }
                assert!(uris.insert(line.to_owned()));
                sum = 0.0;
            }
        }
    }

    #[test]
    fn older_segments_drop_their_parts_and_an_ended_stream_hints_nothing() {
        let mut v = view();
        let data = one_second();
        let all = parts(&data, data.len(), 1000);
        v.entries = (20..26)
            .map(|number| Entry {
                number,
                info: info(1000),
                parts: all.clone(),
                complete: true,
            })
            .collect();
        v.ended = true;
        let text = render(&v).unwrap();
        // Three target durations from the end: 23, 24, 25 (and 22, ending at the horizon).
        assert!(!text.contains("part/21."), "{text}");
        assert!(text.contains("part/23.0.ts"));
        assert!(!text.contains("PRELOAD-HINT"));
        assert!(text.ends_with("seg/25.ts\n#EXT-X-ENDLIST\n"));
        strict_check(&text);
        assert_eq!(v.preload_hint(), None);
        // Live, the hint is the next segment's first part.
        v.ended = false;
        assert_eq!(v.preload_hint(), Some((26, 0)));
        // More slack: the hold-back grows by a segment per segment of delay.
        v.delay = 2;
        assert_eq!(v.part_hold_back(), Duration::from_millis(3300));
    }

    #[test]
    fn blocking_queries_parse_strictly() {
        assert_eq!(awaited(None), Ok(None));
        assert_eq!(awaited(Some("x=1")), Ok(None));
        assert_eq!(
            awaited(Some("_HLS_msn=12&_HLS_part=3")),
            Ok(Some(Awaited {
                msn: 12,
                part: Some(3)
            }))
        );
        assert_eq!(
            awaited(Some("_HLS_msn=12&_HLS_skip=YES")),
            Ok(Some(Awaited {
                msn: 12,
                part: None
            }))
        );
        for bad in [
            "_HLS_msn=",
            "_HLS_msn=+1",
            "_HLS_msn=-1",
            "_HLS_msn=1&_HLS_msn=2",
            "_HLS_msn=99999999999999999999",
            "_HLS_msn",
        ] {
            assert_eq!(awaited(Some(bad)), Err(QueryError::Malformed), "{bad}");
        }
        assert_eq!(
            awaited(Some("_HLS_part=1")),
            Err(QueryError::PartWithoutMsn)
        );
    }

    #[test]
    fn a_wait_is_met_by_its_part_or_anything_later() {
        let v = view();
        let wait = |msn, part| Awaited { msn, part };
        assert!(wait(12, Some(1)).met_by(&v));
        assert!(!wait(12, Some(2)).met_by(&v));
        assert!(wait(11, Some(4)).met_by(&v));
        assert!(wait(11, None).met_by(&v));
        assert!(!wait(12, None).met_by(&v));
        assert!(!wait(13, Some(0)).met_by(&v));
        assert!(!wait(14, None).too_far(&v));
        assert!(wait(15, None).too_far(&v));
        let mut ended = v.clone();
        ended.ended = true;
        assert!(wait(13, Some(0)).met_by(&ended));
    }
}
