//! Percentiles by one convention, nearest rank, so the viewer's `/stats`, the simulator and
//! the benches report figures that compare.
//!
//! The percentile `p` (in [0, 1]) of `n` samples is the sample of rank ⌈p·n⌉ in ascending
//! order, the rank kept within 1..=n: always a sample, never an interpolation; p = 0 is the
//! smallest and p = 1 the largest. No samples give 0.

/// The 1-based rank of percentile `p` among `count` samples: ⌈p·count⌉ kept within
/// 1..=count; 0 when `count` is 0.
///
/// For tallies that keep counts rather than samples (a histogram walks its buckets to this
/// rank); [`percentile`] uses it on a slice.
pub fn nearest_rank(p: f64, count: u64) -> u64 {
    if count == 0 {
        return 0;
    }
    // A NaN or negative `p` casts to 0 and is clamped to the smallest sample.
    ((p * count as f64).ceil() as u64).clamp(1, count)
}

/// The nearest-rank percentile `p` (in [0, 1]) of `samples`, which need not be sorted; 0 for
/// no samples.
///
/// Sorts `samples` in place (ascending by [`f64::total_cmp`]), so a caller taking several
/// percentiles of one set pays for one real sort.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    let rank = nearest_rank(p, samples.len() as u64);
    if rank == 0 {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples.get(rank as usize - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_to(n: u32) -> Vec<f64> {
        (1..=n).map(f64::from).collect()
    }

    #[test]
    fn no_samples_give_zero() {
        assert_eq!(percentile(&mut [], 0.0), 0.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
        assert_eq!(percentile(&mut [], 1.0), 0.0);
        assert_eq!(nearest_rank(0.5, 0), 0);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        for p in [0.0, 0.01, 0.5, 0.99, 1.0] {
            assert_eq!(percentile(&mut [7.5], p), 7.5, "p = {p}");
        }
    }

    #[test]
    fn ends_are_the_smallest_and_largest() {
        let mut s = one_to(10);
        assert_eq!(percentile(&mut s, 0.0), 1.0);
        assert_eq!(percentile(&mut s, 1.0), 10.0);
        // Out of range is held to the ends.
        assert_eq!(percentile(&mut s, -0.5), 1.0);
        assert_eq!(percentile(&mut s, 1.5), 10.0);
        assert_eq!(percentile(&mut s, f64::NAN), 1.0);
    }

    #[test]
    fn picks_the_sample_of_rank_p_times_n_rounded_up() {
        let mut ten = one_to(10);
        assert_eq!(percentile(&mut ten, 0.5), 5.0);
        assert_eq!(percentile(&mut ten, 0.51), 6.0);
        assert_eq!(percentile(&mut ten, 0.99), 10.0);
        let mut hundred = one_to(100);
        assert_eq!(percentile(&mut hundred, 0.5), 50.0);
        assert_eq!(percentile(&mut hundred, 0.95), 95.0);
        assert_eq!(percentile(&mut hundred, 0.99), 99.0);
        // Of an even count, the median is the lower middle sample, not an average.
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }

    #[test]
    fn unsorted_samples_are_sorted_first() {
        let mut s = vec![9.0, -1.0, 4.0, 0.0, 16.0, 1.0];
        assert_eq!(percentile(&mut s, 0.5), 1.0);
        assert_eq!(s, vec![-1.0, 0.0, 1.0, 4.0, 9.0, 16.0]);
        let mut reversed: Vec<f64> = one_to(10).into_iter().rev().collect();
        assert_eq!(percentile(&mut reversed, 0.99), 10.0);
    }

    #[test]
    fn rank_counts_from_one() {
        assert_eq!(nearest_rank(0.0, 4), 1);
        assert_eq!(nearest_rank(0.25, 4), 1);
        assert_eq!(nearest_rank(0.26, 4), 2);
        assert_eq!(nearest_rank(1.0, 4), 4);
        assert_eq!(nearest_rank(0.99, 1_000_000), 990_000);
    }
}
