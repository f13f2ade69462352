//! Running tallies for a simulation: a millisecond histogram for latencies and a sample
//! list for join times, with nearest-rank percentiles.

/// Latencies at 1 ms resolution up to this many ms; longer ones land in the last bucket
/// (the exact maximum is kept apart).
const HISTOGRAM_MS: usize = 600_000;

/// A millisecond histogram.
#[derive(Debug)]
pub(super) struct Histogram {
    buckets: Vec<u32>,
    count: u64,
    max_ms: f64,
}

impl Histogram {
    pub(super) fn new() -> Histogram {
        Histogram {
            buckets: Vec::new(),
            count: 0,
            max_ms: 0.0,
        }
    }

    pub(super) fn record(&mut self, ms: f64) {
        let ms = ms.max(0.0);
        let i = (ms as usize).min(HISTOGRAM_MS - 1);
        if self.buckets.len() <= i {
            // Grows only as far as the longest latency seen.
            self.buckets.resize(i + 1, 0);
        }
        if let Some(b) = self.buckets.get_mut(i) {
            *b = b.saturating_add(1);
        }
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    /// Nearest-rank percentile `p` in [0, 1], ms (the bucket's lower edge); 0 when empty.
    pub(super) fn percentile(&self, p: f64) -> f64 {
        let rank = starling::quantile::nearest_rank(p, self.count);
        if rank == 0 {
            return 0.0;
        }
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += u64::from(*b);
            if seen >= rank {
                return i as f64;
            }
        }
        self.max_ms
    }

    pub(super) fn max(&self) -> f64 {
        self.max_ms
    }
}

/// Nearest-rank percentile of unsorted samples ([`starling::quantile::percentile`]).
pub(super) use starling::quantile::percentile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut h = Histogram::new();
        for ms in 1..=100 {
            h.record(ms as f64 + 0.5);
        }
        assert_eq!(h.percentile(0.5), 50.0);
        assert_eq!(h.percentile(0.99), 99.0);
        assert_eq!(h.percentile(1.0), 100.0);
        assert_eq!(h.max(), 100.5);
        assert_eq!(Histogram::new().percentile(0.5), 0.0);
        let mut s: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut s, 0.5), 5.0);
        assert_eq!(percentile(&mut s, 0.99), 10.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
