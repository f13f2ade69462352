//! The clocks both programs read: one place, so a test that pauses tokio's time pauses
//! every reader, and nothing else in the library calls `Instant::now` for a decision.

use std::time::Instant;

/// The monotonic clock every driver reads (tokio's, so paused-time tests work).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Seconds since the Unix epoch by the wall clock (token expiry is wall-clock time).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn now_follows_paused_tokio_time() {
        let before = now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(now() - before, Duration::from_secs(30));
    }

    #[test]
    fn unix_now_is_after_2023() {
        assert!(unix_now_s() > 1_700_000_000);
    }
}
