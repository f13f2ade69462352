//! Rates and the token bucket that caps upload, shared by both programs and the benchmarks.
//!
//! Pure: the bucket is told the time; the async driver in [`crate::net`] sleeps on
//! [`TokenBucket::wait_time`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A rate in bits per second, parsed from `3M`, `500k`, `1.5G` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

/// A rate string that is not a number with an optional k/M/G suffix.
#[derive(Debug, thiserror::Error)]
#[error("invalid rate {0:?}: expected bits per second with an optional k/M/G suffix, e.g. 3M")]
pub struct RateError(String);

impl Rate {
    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }
}

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1e3),
            Some((i, 'm' | 'M')) => (&t[..i], 1e6),
            Some((i, 'g' | 'G')) => (&t[..i], 1e9),
            _ => (t, 1.0),
        };
        let v: f64 = num.parse().map_err(|_| RateError(s.to_string()))?;
        let bits = v * mult;
        if !bits.is_finite() || !(1.0..=1e12).contains(&bits) {
            return Err(RateError(s.to_string()));
        }
        Ok(Rate(bits.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        if v >= 1e9 {
            write!(f, "{:.2} Gbit/s", v / 1e9)
        } else if v >= 1e6 {
            write!(f, "{:.2} Mbit/s", v / 1e6)
        } else {
            write!(f, "{:.0} kbit/s", v / 1e3)
        }
    }
}

/// A token bucket in bytes. Debt is allowed (a large write takes the tokens it needs and
/// later writers wait), so a write never has to be split to pass.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `rate` with up to `burst` bytes banked; starts full.
    pub fn new(rate: Rate, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate.bytes_per_sec().max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// The refill rate.
    pub fn rate(&self) -> Rate {
        Rate((self.rate * 8.0) as u64)
    }

    /// How long until a write may start (zero when tokens are available).
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens > 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes `bytes` tokens (may go into debt).
    pub fn take(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// Seconds of debt queued behind the bucket (0 when tokens are available).
    pub fn backlog(&mut self, now: Instant) -> Duration {
        self.wait_time(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!("3M".parse::<Rate>().unwrap(), Rate(3_000_000));
        assert_eq!("500k".parse::<Rate>().unwrap(), Rate(500_000));
        assert_eq!("1.5G".parse::<Rate>().unwrap(), Rate(1_500_000_000));
        assert_eq!("64000".parse::<Rate>().unwrap(), Rate(64_000));
        for bad in ["", "M", "-3M", "3X", "nan", "0", "1e30"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate(8_000), 1000, t0); // 1000 B/s
        assert_eq!(b.wait_time(t0), Duration::ZERO);
        b.take(3000, t0); // 1000 banked, 2000 in debt
        let w = b.wait_time(t0);
        assert!((w.as_secs_f64() - 2.0).abs() < 1e-6, "{w:?}");
        // Over 10 s of simulated sending, throughput converges to the rate.
        let mut now = t0 + w;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(12) {
            now += b.wait_time(now);
            b.take(100, now);
            sent += 100;
        }
        let secs = (now - t0).as_secs_f64();
        let rate = (sent + 3000) as f64 / secs;
        assert!((rate - 1000.0).abs() < 120.0, "{rate}");
    }
}
