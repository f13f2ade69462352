//! The playout window rendered as an HLS media playlist (hls_m3u8 lives here only).
//!
//! Pure: the verified segments a node holds go in, `/live.m3u8` text comes out. The window
//! lists only held, contiguous segments, so a standard player never asks for one that isn't there.
//!
//! # Numbering and gaps
//!
//! HLS numbers a playlist's segments implicitly: `EXT-X-MEDIA-SEQUENCE` plus the position. So
//! that a player sees the same number for the same segment on every reload, the listed segments
//! are always one contiguous run and `EXT-X-MEDIA-SEQUENCE` is the first one's segment number.
//! A gap near the live edge ends the list (the segment is probably still on its way). A gap that
//! has fallen [`LOST_GRACE`] segments behind the live edge is given up: the list then starts
//! after it, with `EXT-X-DISCONTINUITY` on the segment following the gap. A player waiting on
//! the lost segment sees it slide out of the playlist and jumps ahead instead of stalling forever.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use hls_m3u8::tags::{ExtInf, ExtXProgramDateTime};
use hls_m3u8::{MediaPlaylist, MediaSegment};

/// How many segments behind the live edge a missing segment may fall before it is given up.
///
/// A gap at number `m` is skipped once the newest held segment is at least
/// `delay + LOST_GRACE` ahead of it, i.e. when a player listing up to the edge would have
/// been stuck on `m` for about `LOST_GRACE` segment durations while later segments sat ready.
/// Closer to the edge a gap just ends the list: the mesh is likely still fetching it.
pub const LOST_GRACE: u64 = 2;

/// What the playlist needs to know of one verified segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Duration from the signed header.
    pub duration: Duration,
    /// Broadcaster's wall clock when it published the segment (ms since the Unix epoch).
    pub published_unix_ms: u64,
    /// The broadcaster restarted (or the source jumped) before this segment.
    pub discontinuity: bool,
}

/// How the live window is cut.
#[derive(Debug, Clone, Copy)]
pub struct PlaylistConfig {
    /// Segments held back behind the newest verified one.
    pub delay: u64,
    /// Most segments listed at once.
    pub window: usize,
}

/// Renders `/live.m3u8` from the verified segments, or `None` when nothing is playable yet.
///
/// `segments` maps segment numbers (which are the HLS media sequence numbers) to what is known
/// of each verified segment. Segments up to the live edge (newest − `config.delay`) are
/// listed, at most `config.window` of them; see the module docs for how gaps are handled.
/// `ended` adds `EXT-X-ENDLIST`, drops the hold-back (listing up to `window + delay`
/// segments, so the list starts where it did) and gives up every gap, since nothing more will
/// come and a player does not reload an ended playlist.
///
/// `EXT-X-DISCONTINUITY-SEQUENCE` counts the discontinuities (flags and given-up gaps) among
/// the held segments before the first listed one. It is exact while `segments` still holds
/// every segment since the last discontinuity that slid out of the window; a caller that
/// prunes older segments loses those, and the count can then go down between reloads.
pub fn live_playlist(
    segments: &BTreeMap<u64, SegmentInfo>,
    config: PlaylistConfig,
    ended: bool,
) -> Option<String> {
    live_playlist_keeping(segments, config, ended, None)
}

/// [`live_playlist`] whose list starts no later than segment `keep_from` (when it is held and
/// in the listed run), however far the window would have slid.
///
/// The viewer passes the first segment it has not listed yet: when late segments arrive in a
/// burst, a short window would otherwise slide past a player still waiting on the first of
/// them, which then skips them all. The list shrinks back to the window on the next reload.
pub fn live_playlist_keeping(
    segments: &BTreeMap<u64, SegmentInfo>,
    config: PlaylistConfig,
    ended: bool,
    keep_from: Option<u64>,
) -> Option<String> {
    let listed = listed_range_keeping(segments, config, ended, keep_from)?;
    match render(segments, listed, ended) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::error!(%error, "could not build the live playlist");
            None
        }
    }
}

/// The segment numbers [`live_playlist`] lists (one contiguous run), or `None` if none.
pub fn listed_range(
    segments: &BTreeMap<u64, SegmentInfo>,
    config: PlaylistConfig,
    ended: bool,
) -> Option<RangeInclusive<u64>> {
    listed_range_keeping(segments, config, ended, None)
}

/// The segment numbers [`live_playlist_keeping`] lists.
pub fn listed_range_keeping(
    segments: &BTreeMap<u64, SegmentInfo>,
    config: PlaylistConfig,
    ended: bool,
    keep_from: Option<u64>,
) -> Option<RangeInclusive<u64>> {
    if config.window == 0 {
        return None;
    }
    let (&newest, _) = segments.last_key_value()?;
    let edge = if ended {
        newest
    } else {
        newest.saturating_sub(config.delay)
    };
    let gap_is_lost = |missing: u64| {
        ended || newest.saturating_sub(missing) >= config.delay.saturating_add(LOST_GRACE)
    };

    let mut run: Option<(u64, u64)> = None;
    for &number in segments.range(..=edge).map(|(n, _)| n) {
        run = match run {
            None => Some((number, number)),
            // Keys are strictly increasing, so `last < number` and `last + 1` cannot overflow.
            Some((first, last)) if number == last + 1 => Some((first, number)),
            Some(_) if gap_is_lost(number - 1) => Some((number, number)),
            // Later gaps are closer to the edge, so none of them is lost either.
            Some(_) => break,
        };
    }
    let (run_first, last) = run?;
    let mut window = u64::try_from(config.window).unwrap_or(u64::MAX);
    if ended {
        // The held-back segments join the list, which keeps its first entry: a player still
        // plays through them to the last, instead of finding its next one gone.
        window = window.saturating_add(config.delay);
    }
    let first = run_first.max(last.saturating_sub(window - 1));
    let first = keep_from.map_or(first, |keep| first.min(keep.max(run_first)));
    Some(first..=last)
}

/// Formats a Unix time in milliseconds as RFC 3339 UTC with milliseconds,
/// e.g. `2024-02-29T12:34:56.789Z`.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Counts in 400-year eras starting on 0000-03-01, so the leap day falls at the end of each
/// computed year and the month lengths from March on follow a fixed 153-days-per-5 pattern.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    const DAYS_PER_ERA: u64 = 146_097;
    // 0000-03-01 is 719_468 days before 1970-01-01.
    let since_epoch0 = days + 719_468;
    let era = since_epoch0 / DAYS_PER_ERA;
    let day_of_era = since_epoch0 % DAYS_PER_ERA;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Rounds to whole milliseconds, so EXTINF prints a short decimal.
fn round_to_millis(duration: Duration) -> Duration {
    let half_up = u128::from(duration.subsec_nanos() % 1_000_000 >= 500_000);
    let millis = duration.as_millis().saturating_add(half_up);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Whether a discontinuity precedes `number`: flagged by the broadcaster, or a gap after the
/// held segment `previous`.
pub fn starts_discontinuity(previous: Option<u64>, number: u64, info: &SegmentInfo) -> bool {
    info.discontinuity || previous.is_some_and(|p| p.checked_add(1) != Some(number))
}

/// `EXT-X-DISCONTINUITY-SEQUENCE` of a list starting at `first`: the discontinuities (flags
/// and gaps) among the held segments before it.
pub fn discontinuities_before(segments: &BTreeMap<u64, SegmentInfo>, first: u64) -> usize {
    let mut count = 0usize;
    let mut previous = None;
    for (&number, info) in segments.range(..first) {
        if starts_discontinuity(previous, number, info) {
            count += 1;
        }
        previous = Some(number);
    }
    count
}

/// Why a playlist could not be rendered; only a bug here (or a 32-bit target) leads to one.
#[derive(Debug, thiserror::Error)]
enum RenderError {
    /// hls_m3u8 rejected the playlist we built.
    #[error("hls_m3u8 rejected the playlist: {0}")]
    Build(#[from] hls_m3u8::Error),
    /// The first listed segment number does not fit hls_m3u8's `usize` media sequence.
    #[error("media sequence {0} does not fit in usize")]
    SequenceTooLarge(u64),
}

fn render(
    segments: &BTreeMap<u64, SegmentInfo>,
    listed: RangeInclusive<u64>,
    ended: bool,
) -> Result<String, RenderError> {
    let first = *listed.start();
    let discontinuity_sequence = discontinuities_before(segments, first);
    let mut previous = segments.range(..first).next_back().map(|(n, _)| *n);

    let mut entries = Vec::new();
    let mut longest = Duration::ZERO;
    for (&number, info) in segments.range(listed) {
        let duration = round_to_millis(info.duration);
        longest = longest.max(duration);
        // HLS dates a segment's first picture; the broadcaster publishes once the segment is
        // cut, a segment duration later.
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let first_picture_unix_ms = info.published_unix_ms.saturating_sub(duration_ms);
        entries.push(
            MediaSegment::builder()
                .has_discontinuity(starts_discontinuity(previous, number, info))
                .program_date_time(ExtXProgramDateTime::new(rfc3339_millis(
                    first_picture_unix_ms,
                )))
                .duration(ExtInf::new(duration))
                .uri(format!("seg/{number}.ts"))
                .build()?,
        );
        previous = Some(number);
    }

    // EXT-X-TARGETDURATION is whole seconds and no EXTINF may exceed it.
    let target_secs = longest.as_secs() + u64::from(longest.subsec_nanos() > 0);
    let playlist = MediaPlaylist::builder()
        .target_duration(Duration::from_secs(target_secs.max(1)))
        .media_sequence(usize::try_from(first).map_err(|_| RenderError::SequenceTooLarge(first))?)
        .discontinuity_sequence(discontinuity_sequence)
        .has_end_list(ended)
        .segments(entries)
        .build()?;
    Ok(playlist.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn info(duration_ms: u64, published_unix_ms: u64) -> SegmentInfo {
        SegmentInfo {
            duration: Duration::from_millis(duration_ms),
            published_unix_ms,
            discontinuity: false,
        }
    }

    /// Segments with the given numbers, each 2 s long, published 2 s apart.
    fn held(numbers: impl IntoIterator<Item = u64>) -> BTreeMap<u64, SegmentInfo> {
        numbers
            .into_iter()
            .map(|n| (n, info(2000, 1_700_000_000_000 + n * 2000)))
            .collect()
    }

    fn config(delay: u64, window: usize) -> PlaylistConfig {
        PlaylistConfig { delay, window }
    }

    /// Renders and parses the result back with hls_m3u8's own parser.
    fn parsed(
        segments: &BTreeMap<u64, SegmentInfo>,
        config: PlaylistConfig,
        ended: bool,
    ) -> MediaPlaylist<'static> {
        let text = live_playlist(segments, config, ended).unwrap();
        text.parse().unwrap()
    }

    fn uris(playlist: &MediaPlaylist<'_>) -> Vec<String> {
        playlist
            .segments
            .values()
            .map(|s| s.uri().to_string())
            .collect()
    }

    fn discontinuities(playlist: &MediaPlaylist<'_>) -> Vec<bool> {
        playlist
            .segments
            .values()
            .map(|s| s.has_discontinuity)
            .collect()
    }

    #[test]
    fn nothing_to_list() {
        assert_eq!(live_playlist(&BTreeMap::new(), config(0, 5), false), None);
        assert_eq!(live_playlist(&held(0..4), config(0, 0), false), None);
        assert_eq!(listed_range(&held(0..4), config(0, 0), true), None);
    }

    #[test]
    fn contiguous_segments_are_listed_in_order() {
        let segments = held(10..14);
        let text = live_playlist(&segments, config(0, 10), false).unwrap();
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:10\n"));
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"));
        assert!(!text.contains("#EXT-X-ENDLIST"));
        assert!(!text.contains("#EXT-X-DISCONTINUITY"));

        let playlist: MediaPlaylist<'_> = text.parse().unwrap();
        assert_eq!(playlist.media_sequence, 10);
        assert_eq!(playlist.discontinuity_sequence, 0);
        assert_eq!(playlist.target_duration, Duration::from_secs(2));
        assert_eq!(
            uris(&playlist),
            ["seg/10.ts", "seg/11.ts", "seg/12.ts", "seg/13.ts"]
        );
        for (segment, number) in playlist.segments.values().zip(10u64..) {
            assert_eq!(segment.number(), usize::try_from(number).unwrap());
            assert_eq!(segment.duration.duration(), Duration::from_secs(2));
            let pdt = segment.program_date_time.as_ref().unwrap();
            // The first picture's date: published once cut, 2 s after it.
            assert_eq!(
                pdt.date_time,
                rfc3339_millis(segments[&number].published_unix_ms - 2000)
            );
        }
    }

    #[test]
    fn delay_holds_back_the_newest_segments() {
        let playlist = parsed(&held(0..10), config(3, 100), false);
        assert_eq!(playlist.media_sequence, 0);
        assert_eq!(playlist.segments.num_elements(), 7);
        assert_eq!(uris(&playlist).last().unwrap(), "seg/6.ts");

        // Fewer segments than the delay: the edge saturates at 0.
        assert_eq!(listed_range(&held(0..3), config(5, 10), false), Some(0..=0));
        // A stream joined late holds nothing at or before its edge.
        assert_eq!(listed_range(&held(20..23), config(5, 10), false), None);
    }

    #[test]
    fn recent_gap_ends_the_list() {
        // 13 is missing; newest is 16, so 13 is only 3 behind newest < delay 2 + LOST_GRACE.
        let segments = held([10, 11, 12, 14, 15, 16]);
        let playlist = parsed(&segments, config(2, 10), false);
        assert_eq!(uris(&playlist), ["seg/10.ts", "seg/11.ts", "seg/12.ts"]);
        assert!(discontinuities(&playlist).iter().all(|d| !d));
    }

    #[test]
    fn lost_gap_is_skipped_with_a_discontinuity() {
        // 13 is missing and newest 17 is delay 2 + LOST_GRACE 2 ahead: 13 is given up.
        let segments = held([10, 11, 12, 14, 15, 16, 17]);
        assert_eq!(listed_range(&segments, config(2, 10), false), Some(14..=15));
        let playlist = parsed(&segments, config(2, 10), false);
        assert_eq!(playlist.media_sequence, 14);
        assert_eq!(uris(&playlist), ["seg/14.ts", "seg/15.ts"]);
        assert_eq!(discontinuities(&playlist), [true, false]);
        // The discontinuity is still listed, so it is not yet in the sequence count.
        assert_eq!(playlist.discontinuity_sequence, 0);

        // One segment less and 13 is still awaited.
        let segments = held([10, 11, 12, 14, 15, 16]);
        assert_eq!(listed_range(&segments, config(2, 10), false), Some(10..=12));
    }

    #[test]
    fn only_the_last_lost_gap_matters() {
        let segments = held([1, 2, 4, 5, 7, 8, 9, 10, 11, 12]);
        let playlist = parsed(&segments, config(1, 10), false);
        assert_eq!(
            uris(&playlist),
            ["seg/7.ts", "seg/8.ts", "seg/9.ts", "seg/10.ts", "seg/11.ts"]
        );
        assert!(discontinuities(&playlist)[0]);
        // Gaps before 4 and before 7 slid out: one counted, the other is on the first entry.
        assert_eq!(playlist.discontinuity_sequence, 1);
    }

    #[test]
    fn window_slides_and_counts_discontinuities_that_left() {
        let mut segments = held(0..10);
        segments.get_mut(&3).unwrap().discontinuity = true;
        segments.get_mut(&7).unwrap().discontinuity = true;

        let playlist = parsed(&segments, config(0, 5), false);
        assert_eq!(playlist.media_sequence, 5);
        assert_eq!(
            uris(&playlist),
            ["seg/5.ts", "seg/6.ts", "seg/7.ts", "seg/8.ts", "seg/9.ts"]
        );
        assert_eq!(
            discontinuities(&playlist),
            [false, false, true, false, false]
        );
        assert_eq!(playlist.discontinuity_sequence, 1);

        segments.extend(held(10..13));
        let playlist = parsed(&segments, config(0, 5), false);
        assert_eq!(playlist.media_sequence, 8);
        assert_eq!(playlist.discontinuity_sequence, 2);
        assert!(discontinuities(&playlist).iter().all(|d| !d));
    }

    #[test]
    fn a_burst_of_late_segments_stays_listed_from_the_first_not_yet_listed() {
        // Listed 8..=9 last time; 10 was late, and 10..=14 came at once.
        let segments = held(5..15);
        let config = config(0, 2);
        assert_eq!(listed_range(&segments, config, false), Some(13..=14));
        let keeping = |keep| listed_range_keeping(&segments, config, false, Some(keep));
        assert_eq!(keeping(10), Some(10..=14));
        // Nothing new since the last list: the window as usual.
        assert_eq!(keeping(15), Some(13..=14));
        // Kept only within the listed run: not before a lost gap, not before what is held.
        let gapped = held([5, 6, 7, 9, 10, 11, 12]);
        assert_eq!(
            listed_range_keeping(&gapped, config, false, Some(6)),
            Some(9..=12)
        );
        assert_eq!(keeping(0), Some(5..=14));
    }

    #[test]
    fn ended_lists_everything_with_endlist() {
        let segments = held(0..10);
        // Live, the list was 3..=6; ended, it still starts at 3 and runs to the newest.
        assert_eq!(listed_range(&segments, config(3, 4), false), Some(3..=6));
        let text = live_playlist(&segments, config(3, 4), true).unwrap();
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
        let playlist: MediaPlaylist<'_> = text.parse().unwrap();
        assert!(playlist.has_end_list);
        assert_eq!(
            uris(&playlist),
            ["seg/3.ts", "seg/4.ts", "seg/5.ts", "seg/6.ts", "seg/7.ts", "seg/8.ts", "seg/9.ts"]
        );

        // Nothing more will come, so even the gap right before the newest is given up.
        let segments = held([0, 1, 2, 4]);
        let playlist = parsed(&segments, config(3, 10), true);
        assert_eq!(uris(&playlist), ["seg/4.ts"]);
        assert_eq!(discontinuities(&playlist), [true]);
    }

    #[test]
    fn target_duration_rounds_up_and_extinf_to_millis() {
        let mut segments = BTreeMap::new();
        segments.insert(0, info(2000, 0));
        segments.insert(
            1,
            SegmentInfo {
                duration: Duration::from_nanos(4_000_600_000),
                published_unix_ms: 2000,
                discontinuity: false,
            },
        );
        segments.insert(2, info(1500, 6001));
        let text = live_playlist(&segments, config(0, 10), false).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:5\n"), "{text}");
        assert!(text.contains("#EXTINF:4.001,\n"), "{text}");
        assert!(text.contains("#EXTINF:1.5,\n"), "{text}");
        let playlist: MediaPlaylist<'_> = text.parse().unwrap();
        assert_eq!(playlist.target_duration, Duration::from_secs(5));

        // Very short segments still get a target of at least one second.
        let segments = BTreeMap::from([(0, info(200, 0))]);
        let text = live_playlist(&segments, config(0, 10), false).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:1\n"), "{text}");
    }

    #[test]
    fn program_date_time_is_rfc3339_utc_millis() {
        // Expected values from `date -u -d @<seconds>`.
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(rfc3339_millis(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_millis(94_694_399_001), "1972-12-31T23:59:59.001Z");
        // 2100 is not a leap year: the day after 28 February is 1 March.
        assert_eq!(
            rfc3339_millis(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(2_147_483_648_000),
            "2038-01-19T03:14:08.000Z"
        );

        // Published 2 s after its first picture.
        let segments = BTreeMap::from([(7, info(2000, 1_709_210_098_789))]);
        let text = live_playlist(&segments, config(0, 3), false).unwrap();
        assert!(
            text.contains(
                "#EXT-X-PROGRAM-DATE-TIME:2024-02-29T12:34:56.789Z\n#EXTINF:2,\nseg/7.ts\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn huge_segment_numbers_do_not_overflow() {
        let segments: BTreeMap<u64, SegmentInfo> = [u64::MAX - 3, u64::MAX - 1, u64::MAX]
            .into_iter()
            .map(|n| (n, info(2000, 0)))
            .collect();
        assert_eq!(
            listed_range(&segments, config(0, 10), false),
            Some(u64::MAX - 1..=u64::MAX)
        );
        assert_eq!(
            listed_range(&segments, config(u64::MAX, usize::MAX), true),
            Some(u64::MAX - 1..=u64::MAX)
        );
    }

    proptest::proptest! {
        /// Whatever is held, every listed entry is a held segment at or before the edge, the
        /// list is contiguous, and the HLS sequence number of each entry is its segment number,
        /// so reloads never renumber a segment.
        #[test]
        fn listed_entries_are_held_and_keep_their_numbers(
            numbers in proptest::collection::btree_set(0u64..60, 0..40),
            flags in proptest::collection::vec(proptest::bool::ANY, 60),
            delay in 0u64..6,
            window in 1usize..12,
            ended in proptest::bool::ANY,
        ) {
            let segments: BTreeMap<u64, SegmentInfo> = numbers
                .iter()
                .map(|&n| {
                    let mut segment = info(1000 + n * 37, 1_000 * n);
                    segment.discontinuity = flags[usize::try_from(n).unwrap()];
                    (n, segment)
                })
                .collect();
            let config = config(delay, window);
            let Some(text) = live_playlist(&segments, config, ended) else {
                proptest::prop_assert!(listed_range(&segments, config, ended).is_none());
                return Ok(());
            };
            let playlist: MediaPlaylist<'_> = text.parse().unwrap();
            let newest = *numbers.last().unwrap();
            let edge = if ended { newest } else { newest.saturating_sub(delay) };
            let most = if ended { window + usize::try_from(delay).unwrap() } else { window };
            proptest::prop_assert!(playlist.segments.num_elements() <= most);
            proptest::prop_assert_eq!(playlist.has_end_list, ended);
            for segment in playlist.segments.values() {
                let number: u64 = segment
                    .uri()
                    .strip_prefix("seg/")
                    .and_then(|s| s.strip_suffix(".ts"))
                    .unwrap()
                    .parse()
                    .unwrap();
                proptest::prop_assert!(segments.contains_key(&number));
                proptest::prop_assert!(number <= edge);
                proptest::prop_assert_eq!(u64::try_from(segment.number()).unwrap(), number);
            }
        }
    }
}
