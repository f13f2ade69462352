//! Integration tests for `starling::ts` on real ffmpeg output (see
//! tests/fixtures/make-fixtures.sh). The checks below parse the segments with
//! a small, separate TS reader so they do not trust the code under test.
// A failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use starling::ts::{pts_span, CutSegment, Restamper, Segmenter};

const TARGET: Duration = Duration::from_secs(2);
const FIXTURES: [&str; 4] = ["h264", "hevc", "gop4s", "audio_only"];
const TS_MOD: u64 = 1 << 33;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.ts"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn segment_chunks<'a>(
    target: Duration,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<CutSegment>, u64) {
    let mut s = Segmenter::new(target);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(s.push(c));
    }
    out.extend(s.finish());
    (out, s.packets_seen())
}

fn segment(data: &[u8], target: Duration) -> Vec<CutSegment> {
    segment_chunks(target, [data]).0
}

// ---------------------------------------------------------------- a tiny TS reader

fn pid(p: &[u8]) -> u16 {
    (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2])
}

fn pusi(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

fn rai(p: &[u8]) -> bool {
    p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x40 != 0
}

fn payload(p: &[u8]) -> &[u8] {
    if p[3] & 0x10 == 0 {
        return &[];
    }
    let start = if p[3] & 0x20 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    p.get(start..).unwrap_or(&[])
}

/// Packets of a buffer known to be aligned (our segments, our fixtures).
fn packets(data: &[u8]) -> Vec<&[u8]> {
    assert_eq!(data.len() % 188, 0, "not whole packets");
    let ps: Vec<&[u8]> = data.chunks(188).collect();
    assert!(
        ps.iter().all(|p| p[0] == 0x47),
        "a packet without sync byte"
    );
    ps
}

/// The section a PSI packet starts (pointer field honoured).
fn section(p: &[u8]) -> &[u8] {
    let pl = payload(p);
    &pl[1 + usize::from(pl[0])..]
}

fn pat_pmt_pids(p: &[u8]) -> Vec<u16> {
    let s = section(p);
    assert_eq!(s[0], 0x00, "PAT table id");
    let len = 3 + ((usize::from(s[1] & 0x0F) << 8) | usize::from(s[2]));
    s[8..len - 4]
        .chunks(4)
        .filter(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
        .map(|e| (u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]))
        .collect()
}

/// (stream_type, pid) of each stream in a PMT.
fn pmt_streams(p: &[u8]) -> Vec<(u8, u16)> {
    let s = section(p);
    assert_eq!(s[0], 0x02, "PMT table id");
    let len = 3 + ((usize::from(s[1] & 0x0F) << 8) | usize::from(s[2]));
    let info = (usize::from(s[10] & 0x0F) << 8) | usize::from(s[11]);
    let mut es = &s[12 + info..len - 4];
    let mut out = Vec::new();
    while es.len() >= 5 {
        let es_len = (usize::from(es[3] & 0x0F) << 8) | usize::from(es[4]);
        out.push((es[0], (u16::from(es[1] & 0x1F) << 8) | u16::from(es[2])));
        es = &es[5 + es_len..];
    }
    out
}

fn is_video(stream_type: u8) -> bool {
    matches!(stream_type, 0x1B | 0x24)
}

fn is_audio(stream_type: u8) -> bool {
    matches!(stream_type, 0x03 | 0x04 | 0x0F | 0x11 | 0x81)
}

/// The stream a segmenter should cut on, per the PMT: video first, else audio.
fn main_stream(streams: &[(u8, u16)]) -> Option<(u8, u16)> {
    streams
        .iter()
        .find(|s| is_video(s.0))
        .or_else(|| streams.iter().find(|s| is_audio(s.0)))
        .copied()
}

/// Payload of the PES that starts at packet `at` (until the next PES start
/// of the same PID).
fn pes_at(ps: &[&[u8]], at: usize) -> Vec<u8> {
    let id = pid(ps[at]);
    let mut out = payload(ps[at]).to_vec();
    for p in &ps[at + 1..] {
        if pid(p) == id {
            if pusi(p) {
                break;
            }
            out.extend_from_slice(payload(p));
        }
    }
    out
}

fn pes_pts(pes: &[u8]) -> Option<u64> {
    if pes.len() < 14 || pes[0..3] != [0, 0, 1] || pes[7] & 0x80 == 0 {
        return None;
    }
    let b = &pes[9..14];
    Some(
        (u64::from(b[0] >> 1 & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

/// What the elementary stream of a video PES says: the type of the first
/// slice NAL unit is IDR (H.264) or IRAP (HEVC).
fn es_starts_with_rap(pes: &[u8], stream_type: u8) -> bool {
    if pes.len() < 9 {
        return false;
    }
    let es = &pes[(9 + usize::from(pes[8])).min(pes.len())..];
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let h = es[i + 3];
            match stream_type {
                0x1B => match h & 0x1F {
                    5 => return true,
                    1..=4 => return false,
                    _ => {}
                },
                0x24 => match (h >> 1) & 0x3F {
                    16..=21 => return true,
                    0..=15 => return false,
                    _ => {}
                },
                _ => return false,
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// What a segment starts with, checked: PAT, then the PMTs it lists, then
/// the first packet of a PES of the main stream. Returns (stream_type, pid,
/// index of that packet).
fn check_start(seg: &[u8]) -> (u8, u16, usize) {
    let ps = packets(seg);
    assert!(ps.len() >= 3, "segment too short: {} packets", ps.len());
    assert_eq!(pid(ps[0]), 0, "first packet is not the PAT");
    assert!(pusi(ps[0]));
    let pmt_pids = pat_pmt_pids(ps[0]);
    assert!(!pmt_pids.is_empty(), "PAT lists no program");
    let mut at = 1;
    let mut streams = Vec::new();
    while at < ps.len() && pmt_pids.contains(&pid(ps[at])) {
        if pusi(ps[at]) {
            streams.extend(pmt_streams(ps[at]));
        }
        at += 1;
    }
    assert!(at > 1, "no PMT after the PAT");
    let (stream_type, main) = main_stream(&streams).expect("PMT lists no video or audio");
    assert_eq!(
        pid(ps[at]),
        main,
        "packet after the tables is not the main stream"
    );
    assert!(pusi(ps[at]), "main stream packet does not start a PES");
    (stream_type, main, at)
}

/// Full structural check of one segment; returns its main stream type.
fn check_segment(seg: &CutSegment, by_nal: bool) -> u8 {
    let (stream_type, _, at) = check_start(&seg.data);
    let ps = packets(&seg.data);
    let pes = pes_at(&ps, at);
    if is_video(stream_type) {
        if by_nal {
            assert!(
                es_starts_with_rap(&pes, stream_type),
                "first video PES is not an IDR/IRAP picture"
            );
        } else {
            assert!(
                rai(ps[at]) || es_starts_with_rap(&pes, stream_type),
                "first video PES is not a random-access point"
            );
        }
    }
    assert_eq!(
        seg.first_pts,
        pes_pts(&pes),
        "first_pts is not the first PES's PTS"
    );
    stream_type
}

/// PTS of every PES of `pid` in an aligned buffer, with whether the PES is a
/// random-access point by its NAL units.
fn pes_list(data: &[u8], pid_wanted: u16, stream_type: u8) -> Vec<(u64, bool)> {
    let ps = packets(data);
    (0..ps.len())
        .filter(|&i| pid(ps[i]) == pid_wanted && pusi(ps[i]))
        .filter_map(|i| {
            let pes = pes_at(&ps, i);
            let rap = !is_video(stream_type) || es_starts_with_rap(&pes, stream_type);
            pes_pts(&pes).map(|t| (t, rap))
        })
        .collect()
}

/// The main stream of a whole fixture (from its first PAT/PMT).
fn fixture_main(data: &[u8]) -> (u8, u16) {
    let ps = packets(data);
    let pat = ps.iter().find(|p| pid(p) == 0).expect("no PAT");
    let pmt_pid = pat_pmt_pids(pat)[0];
    let pmt = ps.iter().find(|p| pid(p) == pmt_pid).expect("no PMT");
    main_stream(&pmt_streams(pmt)).expect("no main stream")
}

fn diff(a: u64, b: u64) -> i64 {
    let d = (a.wrapping_sub(b)) % TS_MOD;
    if d >= TS_MOD / 2 {
        d as i64 - TS_MOD as i64
    } else {
        d as i64
    }
}

fn ticks(d: Duration) -> i64 {
    (d.as_nanos() * 9 / 100_000) as i64
}

/// Every PES in the segment is whole: each PID's first packet with payload
/// starts a PES (PSI aside), and each PES that declares its length has
/// exactly that many bytes before the next one starts or the segment ends.
fn check_whole_pes(seg: &[u8], label: &str) {
    let ps = packets(seg);
    let pat = pat_pmt_pids(ps[0]);
    let mut open: std::collections::BTreeMap<u16, (usize, usize)> = Default::default();
    let mut started = std::collections::BTreeSet::new();
    let close = |id: u16, (want, got): (usize, usize)| {
        if want > 0 {
            assert_eq!(
                got, want,
                "{label}: PID {id:#x} PES has {got} of {want} bytes"
            );
        }
    };
    for p in &ps {
        let id = pid(p);
        if id == 0 || pat.contains(&id) || payload(p).is_empty() {
            continue;
        }
        if pusi(p) {
            if let Some(prev) = open.remove(&id) {
                close(id, prev);
            }
            let pl = payload(p);
            let want = if pl.len() >= 6 && pl[..3] == [0, 0, 1] {
                let n = usize::from(u16::from_be_bytes([pl[4], pl[5]]));
                if n > 0 {
                    6 + n
                } else {
                    0
                }
            } else {
                0
            };
            open.insert(id, (want, pl.len()));
            started.insert(id);
        } else {
            assert!(started.contains(&id), "{label}: PID {id:#x} starts mid-PES");
            if let Some(e) = open.get_mut(&id) {
                e.1 += payload(p).len();
            }
        }
    }
    for (id, e) in open {
        close(id, e);
    }
}

/// Played back to back, the segments are one stream: continuity counters
/// advance by one per packet with payload on every PID.
fn check_continuity(segs: &[CutSegment], label: &str) {
    let mut last = std::collections::BTreeMap::new();
    for (i, seg) in segs.iter().enumerate() {
        for p in packets(&seg.data) {
            let cc = p[3] & 0x0F;
            if let Some(prev) = last.insert(pid(p), cc) {
                let want = if p[3] & 0x10 != 0 {
                    (prev + 1) & 0x0F
                } else {
                    prev
                };
                assert_eq!(cc, want, "{label}: segment {i}, PID {:#x}", pid(p));
            }
        }
    }
}

// ---------------------------------------------------------------- decoding with ffmpeg

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ffmpeg is required in CI (CI=true) but was not found");
        }
        eprintln!("\n*** SKIP: ffmpeg not found; segments were NOT decoded ***\n");
    }
    ok
}

/// Decodes one segment alone with ffmpeg; panics on any error output.
fn assert_decodes(seg: &[u8], label: &str) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "starling-ts-{}-{}.ts",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, seg).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-xerror", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{label}: ffmpeg failed ({}): {stderr}",
        out.status
    );
}

// ---------------------------------------------------------------- tests

#[test]
fn fixtures_cut_into_self_contained_segments_at_random_access_points() {
    for name in FIXTURES {
        let data = fixture(name);
        let (main_type, main_pid) = fixture_main(&data);
        let segs = segment(&data, TARGET);
        assert!(segs.len() >= 2, "{name}: {} segments", segs.len());

        for (i, seg) in segs.iter().enumerate() {
            assert_eq!(check_segment(seg, true), main_type, "{name}");
            check_whole_pes(&seg.data, &format!("{name} segment {i}"));
        }
        check_continuity(&segs, name);

        // Where the cuts must be: walk the random-access points of the
        // source and take the first one at least the target after the last cut.
        let all = pes_list(&data, main_pid, main_type);
        let mut want = Vec::new();
        for &(t, rap) in &all {
            let due = want
                .last()
                .is_none_or(|&last| diff(t, last) >= ticks(TARGET));
            if rap && due {
                want.push(t);
            }
        }
        let got: Vec<u64> = segs.iter().map(|s| s.first_pts.unwrap()).collect();
        assert_eq!(got, want, "{name}: cut points");

        // Durations: exact PTS differences between cuts, and in total the
        // span of the stream from the first cut to its last PTS, plus at
        // most one PES interval for the last one.
        for w in segs.windows(2) {
            let d = diff(w[1].first_pts.unwrap(), w[0].first_pts.unwrap());
            assert_eq!(ticks(w[0].duration), d, "{name}");
            assert!(
                w[0].duration >= TARGET,
                "{name}: a segment shorter than the target"
            );
        }
        let mut times: Vec<i64> = all.iter().map(|&(t, _)| diff(t, want[0])).collect();
        times.sort_unstable();
        let last = *times.last().unwrap();
        let max_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        let total: i64 = segs.iter().map(|s| ticks(s.duration)).sum();
        assert!(
            total > last && total <= last + max_gap + 1,
            "{name}: durations sum to {total} ticks, stream spans {last} (+ up to {max_gap})"
        );
    }
}

#[test]
fn gop4s_is_cut_at_its_4s_keyframes() {
    let data = fixture("gop4s");
    let (main_type, main_pid) = fixture_main(&data);
    let keyframes: Vec<u64> = pes_list(&data, main_pid, main_type)
        .into_iter()
        .filter(|&(_, rap)| rap)
        .map(|(t, _)| t)
        .collect();
    // The fixture itself: keyframes 4 s apart.
    assert!(keyframes.len() >= 3);
    for w in keyframes.windows(2) {
        assert_eq!(diff(w[1], w[0]), 4 * 90_000);
    }
    let segs = segment(&data, TARGET);
    let got: Vec<u64> = segs.iter().map(|s| s.first_pts.unwrap()).collect();
    assert_eq!(got, keyframes);
    for s in &segs[..segs.len() - 1] {
        assert_eq!(s.duration, Duration::from_secs(4));
    }
}

#[test]
fn every_segment_decodes_on_its_own() {
    if !have_ffmpeg() {
        return;
    }
    for name in FIXTURES {
        for (i, seg) in segment(&fixture(name), TARGET).iter().enumerate() {
            assert_decodes(&seg.data, &format!("{name} segment {i}"));
        }
    }
}

#[test]
fn keyframes_are_found_without_the_random_access_flag() {
    // Clear every random_access_indicator: the NAL scanner alone must find
    // the same keyframes, including x264's first IDR behind its large SEI.
    for name in ["h264", "hevc", "gop4s"] {
        let data = fixture(name);
        let mut bare = data.clone();
        for p in bare.chunks_mut(188) {
            if p[3] & 0x20 != 0 && p[4] > 0 {
                p[5] &= !0x40;
            }
        }
        let a = segment(&data, TARGET);
        let b = segment(&bare, TARGET);
        let firsts = |s: &[CutSegment]| s.iter().map(|s| s.first_pts).collect::<Vec<_>>();
        assert_eq!(firsts(&a), firsts(&b), "{name}");
        for seg in &b {
            check_segment(seg, true);
        }
    }
}

#[test]
fn chunking_does_not_change_the_segments() {
    for name in FIXTURES {
        let data = fixture(name);
        let whole = segment(&data, TARGET);
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut chunks = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                // Mostly small, sometimes tiny or large pieces.
                let max = match rng.gen_range(0..4) {
                    0 => 3,
                    1 => 200,
                    2 => 1000,
                    _ => 20_000,
                };
                let n = rng.gen_range(1..=max).min(rest.len());
                let (now, later) = rest.split_at(n);
                chunks.push(now);
                rest = later;
            }
            let (pieces, seen) = segment_chunks(TARGET, chunks);
            assert_eq!(seen, data.len() as u64 / 188);
            assert_eq!(pieces.len(), whole.len(), "{name} seed {seed}");
            for (a, b) in whole.iter().zip(&pieces) {
                assert_eq!(a.data, b.data, "{name} seed {seed}");
                assert_eq!(a.duration, b.duration);
                assert_eq!(a.first_pts, b.first_pts);
            }
        }
    }
}

/// Random junk that does not begin with a sync byte (junk that does, right
/// at a packet boundary, is indistinguishable from a packet).
fn junk(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut j: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if j.first() == Some(&0x47) {
        j[0] = 0;
    }
    j
}

#[test]
fn junk_before_and_between_packets_is_skipped() {
    for name in FIXTURES {
        let data = fixture(name);
        let clean = segment(&data, TARGET);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n_packets = data.len() / 188;
        let mut dirty = junk(&mut rng, 1000);
        for (i, p) in data.chunks(188).enumerate() {
            dirty.extend_from_slice(p);
            if i % 97 == 5 && i + 1 < n_packets {
                let len = rng.gen_range(1..400);
                dirty.extend(junk(&mut rng, len));
            }
        }
        let (segs, seen) = segment_chunks(TARGET, [&dirty[..]]);
        assert_eq!(seen, n_packets as u64, "{name}: packets found among junk");
        assert_eq!(segs.len(), clean.len(), "{name}");
        for (a, b) in clean.iter().zip(&segs) {
            assert_eq!(a.data, b.data, "{name}: junk changed a segment");
        }
    }
}

/// Re-muxes a fixture the way interleaving muxers write: each audio PES's
/// continuation packets move behind the next video keyframe's first packet
/// (or before the next audio PES, whichever comes first), so audio PES
/// straddle the cut points. (ffmpeg writes every PES's packets back to back.)
fn interleave(data: &[u8], video: u16, audio: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut delayed: Vec<&[u8]> = Vec::new();
    for p in packets(data) {
        let id = pid(p);
        if id == audio && !pusi(p) {
            delayed.push(p);
            continue;
        }
        if id == audio {
            // A new audio PES: the old one's tail must come first.
            for d in delayed.drain(..) {
                out.extend_from_slice(d);
            }
        }
        out.extend_from_slice(p);
        if id == video && pusi(p) && rai(p) {
            for d in delayed.drain(..) {
                out.extend_from_slice(d);
            }
        }
    }
    for d in delayed {
        out.extend_from_slice(d);
    }
    out
}

#[test]
fn audio_pes_straddling_a_cut_stays_whole() {
    let data = fixture("h264");
    let (main_type, video) = fixture_main(&data);
    let ps = packets(&data);
    let pmt_pid = pat_pmt_pids(ps.iter().find(|p| pid(p) == 0).unwrap())[0];
    let pmt = ps.iter().find(|p| pid(p) == pmt_pid).unwrap();
    let audio = pmt_streams(pmt).iter().find(|s| is_audio(s.0)).unwrap().1;
    let mixed = interleave(&data, video, audio);
    assert_eq!(mixed.len(), data.len());

    // The re-mux really puts audio tails behind the keyframes we cut at.
    let mixed_ps = packets(&mixed);
    let straddling = (1..mixed_ps.len())
        .filter(|&i| pid(mixed_ps[i]) == video && pusi(mixed_ps[i]) && rai(mixed_ps[i]))
        .filter(|&i| {
            mixed_ps
                .get(i + 1)
                .is_some_and(|p| pid(p) == audio && !pusi(p))
        })
        .count();
    assert!(
        straddling >= 2,
        "the re-mux left no audio PES open at a keyframe"
    );

    let segs = segment(&mixed, TARGET);
    let plain = segment(&data, TARGET);
    let firsts = |s: &[CutSegment]| s.iter().map(|s| s.first_pts).collect::<Vec<_>>();
    assert_eq!(firsts(&segs), firsts(&plain));
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(check_segment(seg, true), main_type);
        check_whole_pes(&seg.data, &format!("interleaved segment {i}"));
    }
    check_continuity(&segs, "interleaved");
    // No packet lost or duplicated: the segments hold every packet of the
    // source from the first cut on, tables aside.
    let body = |segs: &[CutSegment]| -> usize {
        segs.iter()
            .map(|s| {
                packets(&s.data)
                    .iter()
                    .filter(|p| pid(p) != 0 && pid(p) != pmt_pid)
                    .count()
            })
            .sum()
    };
    assert_eq!(body(&segs), body(&plain));
    if have_ffmpeg() {
        for (i, seg) in segs.iter().enumerate() {
            assert_decodes(&seg.data, &format!("interleaved segment {i}"));
        }
    }
}

#[test]
fn a_change_of_stream_in_the_pmt_is_followed() {
    // h264.ts then hevc.ts: same PIDs, same PMT version, different codec.
    let h264 = fixture("h264");
    let hevc = fixture("hevc");
    let mut both = h264.clone();
    both.extend_from_slice(&hevc);
    let segs = segment(&both, TARGET);
    let types: Vec<u8> = segs.iter().map(|s| check_segment(s, true)).collect();
    let n264 = segment(&h264, TARGET).len();
    let n265 = segment(&hevc, TARGET).len();
    let mut want = vec![0x1B; n264];
    want.extend(vec![0x24; n265]);
    assert_eq!(types, want);
    // The HEVC part is cut exactly as hevc.ts alone (tables aside, whose
    // continuity counters run on).
    let first_hevc = &segs[n264];
    assert_eq!(first_hevc.first_pts, segment(&hevc, TARGET)[0].first_pts);
    // The last H.264 segment ends at the change and keeps a sane duration.
    assert!(segs[n264 - 1].duration > Duration::ZERO);
    assert!(segs[n264 - 1].duration <= Duration::from_secs(3));
    if have_ffmpeg() {
        for (i, seg) in segs.iter().enumerate() {
            assert_decodes(&seg.data, &format!("h264+hevc segment {i}"));
        }
    }
}

#[test]
fn restamping_shifts_pts_span_exactly() {
    let data = fixture("h264");
    let (first, last) = pts_span(&data).unwrap();
    for offset in [90_000u64, 12_345_678, TS_MOD - 100_000] {
        let mut copy = data.clone();
        let mut r = Restamper::new();
        r.set_offset(offset);
        r.apply(&mut copy);
        assert_eq!(
            pts_span(&copy),
            Some(((first + offset) % TS_MOD, (last + offset) % TS_MOD)),
            "offset {offset}"
        );
    }
}

#[test]
fn looped_restamped_copies_form_one_continuous_stream() {
    let data = fixture("h264");
    let (first, last) = pts_span(&data).unwrap();
    let (main_type, main_pid) = fixture_main(&data);
    let list = pes_list(&data, main_pid, main_type);
    let mut ts: Vec<u64> = list.iter().map(|&(t, _)| t).collect();
    ts.sort_unstable();
    let frame = ts.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    let period = last - first + frame;

    let mut r = Restamper::new();
    let mut looped = Vec::new();
    for pass in 0..2 {
        let mut copy = data.clone();
        r.set_offset(pass * period);
        r.apply(&mut copy);
        looped.extend_from_slice(&copy);
    }
    // Continuity counters: +1 per packet with payload, on every PID.
    let mut last_cc = std::collections::BTreeMap::new();
    for p in packets(&looped) {
        let id = pid(p);
        if id == 0x1FFF {
            continue;
        }
        let cc = p[3] & 0x0F;
        if let Some(prev) = last_cc.insert(id, cc) {
            let want = if p[3] & 0x10 != 0 {
                (prev + 1) & 0x0F
            } else {
                prev
            };
            assert_eq!(cc, want, "PID {id:#x} discontinuous");
        }
    }
    // Timestamps run on: the loop spans two periods.
    assert_eq!(pts_span(&looped), Some((first, first + 2 * period - frame)));
    // And the segmenter sees one stream: segments of the target length
    // across the loop point, durations adding up to two periods.
    let segs = segment(&looped, TARGET);
    for seg in &segs {
        check_segment(seg, true);
    }
    for s in &segs[..segs.len() - 1] {
        assert_eq!(s.duration, TARGET);
    }
    let total: i64 = segs.iter().map(|s| ticks(s.duration)).sum();
    assert_eq!(total, 2 * period as i64);
}

#[test]
fn input_that_is_not_ts_yields_nothing() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let noise: Vec<u8> = (0..100_000).map(|_| rng.gen::<u8>() & 0x3F).collect();
    let (segs, seen) = segment_chunks(TARGET, [&noise[..]]);
    assert!(segs.is_empty());
    assert_eq!(seen, 0);
}

// ---------------------------------------------------------------- property tests

/// Mutations of a fixture: byte flips, junk inserted, truncation.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, xor: u8 },
    Insert { at: usize, junk: Vec<u8> },
    Truncate { keep_per_mille: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..300))
            .prop_map(|(at, junk)| Damage::Insert { at, junk }),
        1 => (0usize..1000).prop_map(|keep_per_mille| Damage::Truncate { keep_per_mille }),
    ]
}

fn apply(data: &mut Vec<u8>, d: &Damage) {
    if data.is_empty() {
        return;
    }
    match d {
        Damage::Flip { at, xor } => {
            let i = at % data.len();
            data[i] ^= xor;
        }
        Damage::Insert { at, junk } => {
            let i = at % data.len();
            data.splice(i..i, junk.iter().copied());
        }
        Damage::Truncate { keep_per_mille } => {
            let keep = data.len() * keep_per_mille / 1000;
            data.truncate(keep);
        }
    }
}

/// The invariants every emitted segment must keep, whatever the input.
fn check_invariants(segs: &[CutSegment]) {
    for seg in segs {
        check_segment(seg, false);
        assert!(seg.duration > Duration::ZERO);
        assert!(seg.duration <= Duration::from_secs(120));
    }
}

fn push_in_pieces(data: &[u8], cuts: &[usize]) -> Vec<CutSegment> {
    let mut pieces = Vec::new();
    let mut rest = data;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(c % (rest.len() + 1));
        pieces.push(now);
        rest = later;
    }
    pieces.push(rest);
    segment_chunks(TARGET, pieces).0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..6000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        check_invariants(&push_in_pieces(&data, &cuts));
    }

    #[test]
    fn random_packets_never_panic(
        // Sync bytes in place, everything else random: exercises the parsers
        // rather than the framer.
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 187), 0..60),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut data = Vec::new();
        for b in &bodies {
            data.push(0x47);
            data.extend_from_slice(b);
        }
        check_invariants(&push_in_pieces(&data, &cuts));
        let _ = pts_span(&data);
        let mut r = Restamper::new();
        r.set_offset(123_456);
        r.apply(&mut data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn damaged_fixtures_never_panic_and_keep_the_invariants(
        which in 0usize..4,
        damages in proptest::collection::vec(damage(), 1..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        offset in any::<u64>(),
    ) {
        let mut data = fixture(FIXTURES[which]);
        for d in &damages {
            apply(&mut data, d);
        }
        check_invariants(&push_in_pieces(&data, &cuts));
        let _ = pts_span(&data);
        let mut r = Restamper::new();
        r.set_offset(offset);
        r.apply(&mut data);
    }
}
