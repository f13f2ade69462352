//! Rates and the token bucket that caps upload, shared by both programs and the benchmarks.
//!
//! Pure: the bucket is told the time; the async driver in [`crate::net`] sleeps on
//! [`TokenBucket::wait_time`].

use crate::stream::PARTS;
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Most uploads a node runs at once, and how many while the cap or the bitrate is unknown.
pub const MAX_UPLOAD_SLOTS: u64 = 8;

/// How many uploads a node with upload cap `cap_bps` (None: uncapped) runs at once for a
/// stream of `stream_bps` (0: not known yet). Each downstream must get at least the stream's
/// bitrate or it falls behind live, so the cap is divided by the bitrate (at least one). A
/// `join` request (a joiner's player waits for it) gets one more where a quarter of the
/// bitrate is left over beyond the full slots: there it takes spare upload, while on a
/// barely sufficient uplink it would slow the live relaying everyone else waits on. Both
/// `net.rs` and the simulator count with this.
pub fn upload_slots(cap_bps: Option<u64>, stream_bps: u64, join: bool) -> u64 {
    let Some(cap) = cap_bps.filter(|_| stream_bps > 0) else {
        return MAX_UPLOAD_SLOTS + u64::from(join);
    };
    let slots = (cap / stream_bps).clamp(1, MAX_UPLOAD_SLOTS);
    let spare = cap.saturating_sub(slots.saturating_mul(stream_bps));
    slots + u64::from(join && spare.saturating_mul(4) >= stream_bps)
}

/// [`upload_slots`] for one request, with one slot more for a part the origin seeded to
/// this node ([`SeededParts`]), whatever the spare: the seed holds the swarm's only viewer
/// copy of it, and every other viewer waits on it. Both `net.rs` and the simulator admit
/// requests with this.
pub fn serving_slots(cap_bps: Option<u64>, stream_bps: u64, join: bool, seeded: bool) -> u64 {
    upload_slots(cap_bps, stream_bps, join) + u64::from(seeded)
}

/// The parts the origin pushed to this node lately, oldest first: two segments' worth.
#[derive(Debug, Default)]
pub struct SeededParts(VecDeque<(u64, u8)>);

impl SeededParts {
    /// Parts remembered; older ones are forgotten first.
    pub const CAPACITY: usize = 2 * PARTS;

    /// Part `part` of segment `number` was pushed here by the origin.
    pub fn note(&mut self, number: u64, part: u8) {
        if self.0.len() >= Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back((number, part));
    }

    /// Whether part `part` of segment `number` was pushed here by the origin lately.
    pub fn contains(&self, number: u64, part: u8) -> bool {
        self.0.contains(&(number, part))
    }
}

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
    fn upload_slots_divide_the_cap_by_the_bitrate_and_add_a_join_slot_only_with_room() {
        const M: u64 = 1_000_000;
        // 3 Mbit/s for a 2 Mbit/s stream: one slot, and half the bitrate spare for a joiner.
        assert_eq!(upload_slots(Some(3 * M), 2 * M, false), 1);
        assert_eq!(upload_slots(Some(3 * M), 2 * M, true), 2);
        // 2.1 Mbit/s: barely one stream's worth; a join slot would slow the live relaying.
        assert_eq!(upload_slots(Some(21 * M / 10), 2 * M, true), 1);
        // Below the bitrate: still one; exactly four streams: no spare, no join slot.
        assert_eq!(upload_slots(Some(M), 2 * M, true), 1);
        assert_eq!(upload_slots(Some(8 * M), 2 * M, true), 4);
        // At most eight, and eight while the cap or the bitrate is unknown.
        assert_eq!(upload_slots(Some(100 * M), 2 * M, false), MAX_UPLOAD_SLOTS);
        assert_eq!(
            upload_slots(Some(100 * M), 2 * M, true),
            MAX_UPLOAD_SLOTS + 1
        );
        assert_eq!(upload_slots(None, 2 * M, false), MAX_UPLOAD_SLOTS);
        assert_eq!(upload_slots(Some(3 * M), 0, false), MAX_UPLOAD_SLOTS);
        assert_eq!(upload_slots(Some(u64::MAX), 1, true), MAX_UPLOAD_SLOTS + 1);
    }

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
