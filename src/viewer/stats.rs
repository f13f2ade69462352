//! The viewer's `/stats` figures: its node's counters with the shares, continuity and
//! latency percentiles worked out from them. Pure arithmetic; the caller reads the node, the
//! store and the clocks.

use crate::net::NodeStats;
use crate::quantile::percentile;
use crate::store::Store;
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `/stats` body: the node's counters plus `role`, `share_from_peers`, `continuity` and
/// `latency_ms` over `latencies_ms` (the segments held now, in any order).
pub(super) fn json(n: &NodeStats, latencies_ms: &mut [f64]) -> String {
    let mut v = serde_json::to_value(n).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("role".into(), "viewer".into());
        obj.insert("share_from_peers".into(), share_from_peers(n).into());
        obj.insert("continuity".into(), continuity(n).into());
        obj.insert(
            "latency_ms".into(),
            serde_json::json!({
                "p50": percentile(latencies_ms, 0.5),
                "p99": percentile(latencies_ms, 0.99),
                "max": percentile(latencies_ms, 1.0),
                "segments": latencies_ms.len(),
            }),
        );
    }
    v.to_string()
}

/// The fraction of segment bytes received that came from other viewers, 0 before any.
pub(super) fn share_from_peers(n: &NodeStats) -> f64 {
    let received = n.bytes_from_peers + n.bytes_from_origin;
    if received == 0 {
        0.0
    } else {
        n.bytes_from_peers as f64 / received as f64
    }
}

/// The fraction of segments held by their playout deadline, 1 before any.
fn continuity(n: &NodeStats) -> f64 {
    let on_time = n.segments_verified.saturating_sub(n.missed_deadlines);
    // A segment missed and never verified still counts against continuity.
    let judged = n.segments_verified.max(on_time + n.missed_deadlines);
    if judged == 0 {
        1.0
    } else {
        on_time as f64 / judged as f64
    }
}

/// Milliseconds since the Unix epoch on this machine's wall clock (0 if it is set before 1970).
pub(super) fn wall_clock_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// For each segment in `store`: broadcaster publication (its wall clock, from the signed
/// header) → held verified here, in ms, in segment order.
///
/// `now` and `now_wall_ms` are the same moment on the driver's clock and on the wall clock,
/// so an arrival instant converts to wall time. Across machines this includes their clock
/// offset; an arrival that seems to precede publication counts as 0.
pub(super) fn recent_latencies_ms(store: &Store, now: Instant, now_wall_ms: f64) -> Vec<f64> {
    store
        .numbers()
        .filter_map(|n| latency_ms(store, n, now, now_wall_ms))
        .collect()
}

/// Segment `n`'s latency as [`recent_latencies_ms`] counts it, if held.
fn latency_ms(store: &Store, n: u64, now: Instant, now_wall_ms: f64) -> Option<f64> {
    let arrived = store.arrival(n)?;
    let published = store.get(n)?.header.header.published_unix_ms as f64;
    let arrived_wall = now_wall_ms - now.saturating_duration_since(arrived).as_secs_f64() * 1000.0;
    Some((arrived_wall - published).max(0.0))
}

/// What the viewer's histograms are told about arrivals, each segment once.
#[derive(Debug, Default)]
pub(super) struct Arrivals {
    /// Segments already reported, pruned to the store's window.
    reported: BTreeSet<u64>,
    /// The first segment's arrival was reported as the join time.
    joined: bool,
}

/// What [`Arrivals::since_last`] found.
#[derive(Debug, Default, PartialEq)]
pub(super) struct NewArrivals {
    /// From `started` to the first segment held, the first time one is.
    pub(super) join: Option<Duration>,
    /// Each newly held segment's latency, ms, in segment order.
    pub(super) latencies_ms: Vec<f64>,
}

impl Arrivals {
    /// The segments in `store` not reported before, and the join time once; `started` is
    /// when the viewer started, `now` and `now_wall_ms` one moment on both clocks.
    pub(super) fn since_last(
        &mut self,
        store: &Store,
        started: Instant,
        now: Instant,
        now_wall_ms: f64,
    ) -> NewArrivals {
        let mut found = NewArrivals::default();
        if !self.joined {
            // The earliest arrival, not the lowest number: a join may fetch out of order.
            if let Some(first) = store.numbers().filter_map(|n| store.arrival(n)).min() {
                found.join = Some(first.saturating_duration_since(started));
                self.joined = true;
            }
        }
        for n in store.numbers() {
            if self.reported.insert(n) {
                found
                    .latencies_ms
                    .extend(latency_ms(store, n, now, now_wall_ms));
            }
        }
        if let Some(oldest) = store.numbers().next() {
            self.reported.retain(|&n| n >= oldest);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{node_id, sign_segment, VerifiedSegment};
    use ed25519_dalek::SigningKey;
    use serde_json::Value;
    use std::time::Duration;

    fn seg(key: &SigningKey, n: u64, published_unix_ms: u64) -> VerifiedSegment {
        let data = vec![n as u8; 100];
        let h = sign_segment(key, n, 2000, published_unix_ms, false, &data).unwrap();
        VerifiedSegment::verify(&node_id(key), h, data.into()).unwrap()
    }

    fn parse(n: &NodeStats, latencies_ms: &mut [f64]) -> Value {
        serde_json::from_str(&json(n, latencies_ms)).unwrap()
    }

    #[test]
    fn share_counts_peer_bytes_against_all_received() {
        let none = NodeStats::default();
        assert_eq!(share_from_peers(&none), 0.0);
        let n = NodeStats {
            bytes_from_peers: 300,
            bytes_from_origin: 100,
            ..NodeStats::default()
        };
        assert_eq!(share_from_peers(&n), 0.75);
    }

    #[test]
    fn continuity_counts_missed_segments_even_when_never_verified() {
        assert_eq!(continuity(&NodeStats::default()), 1.0);
        let some_late = NodeStats {
            segments_verified: 10,
            missed_deadlines: 2,
            ..NodeStats::default()
        };
        assert_eq!(continuity(&some_late), 0.8);
        // Missed segments the viewer never got at all: more misses than verifications.
        let all_late = NodeStats {
            segments_verified: 3,
            missed_deadlines: 5,
            ..NodeStats::default()
        };
        assert_eq!(continuity(&all_late), 0.0);
    }

    #[test]
    fn json_adds_the_viewer_figures_to_the_counters() {
        let n = NodeStats {
            peers: 4,
            segments_verified: 10,
            missed_deadlines: 1,
            bytes_from_peers: 1,
            bytes_from_origin: 3,
            ..NodeStats::default()
        };
        let mut latencies = [300.0, 100.0, 200.0, 400.0];
        let v = parse(&n, &mut latencies);
        assert_eq!(v["role"], "viewer");
        assert_eq!(v["peers"], 4);
        assert_eq!(v["share_from_peers"], 0.25);
        assert_eq!(v["continuity"], 0.9);
        assert_eq!(v["latency_ms"]["max"], 400.0);
        assert_eq!(v["latency_ms"]["segments"], 4);
        // Nearest rank: of four, the median is the second.
        assert_eq!(v["latency_ms"]["p50"], 200.0);
        assert_eq!(v["latency_ms"]["p99"], 400.0);
    }

    #[test]
    fn json_with_no_segments_reports_zero_latency() {
        let v = parse(&NodeStats::default(), &mut []);
        assert_eq!(v["continuity"], 1.0);
        assert_eq!(
            v["latency_ms"],
            serde_json::json!({"p50": 0.0, "p99": 0.0, "max": 0.0, "segments": 0})
        );
    }

    #[test]
    fn arrivals_report_each_segment_once_and_the_join_once() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut store = Store::new(2);
        let started = Instant::now();
        let t0 = started + Duration::from_millis(1500);
        let wall_at_t0 = 20_000.0;
        let mut arrivals = Arrivals::default();
        let none = arrivals.since_last(&store, started, t0, wall_at_t0);
        assert_eq!(none, NewArrivals::default());
        // Segment 6 arrives first (published 300 ms earlier), then 5 (published 1 s earlier).
        store.insert_at(seg(&key, 6, 19_700), t0);
        store.insert_at(seg(&key, 5, 19_000), t0);
        let found = arrivals.since_last(&store, started, t0, wall_at_t0);
        assert_eq!(found.join, Some(Duration::from_millis(1500)));
        assert_eq!(found.latencies_ms, vec![1000.0, 300.0]);
        // Nothing new: nothing reported, and no second join.
        let again = arrivals.since_last(&store, started, t0, wall_at_t0);
        assert_eq!(again, NewArrivals::default());
        // 7 pushes 5 out of the window; only 7 is new.
        store.insert_at(seg(&key, 7, 20_000), t0 + Duration::from_millis(400));
        let later = t0 + Duration::from_secs(1);
        let found = arrivals.since_last(&store, started, later, wall_at_t0 + 1000.0);
        assert_eq!(found.join, None);
        assert_eq!(found.latencies_ms.len(), 1, "{:?}", found.latencies_ms);
        assert!((found.latencies_ms[0] - 400.0).abs() < 1e-6, "{found:?}");
    }

    #[test]
    fn latencies_convert_arrival_to_wall_time() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut store = Store::new(8);
        let t0 = Instant::now();
        // Published at wall 10_000 ms and held 150 ms later.
        store.insert_at(seg(&key, 1, 10_000), t0);
        // Published at wall 10_650 ms and held at t0 + 1 s (wall 11_150 ms).
        store.insert_at(seg(&key, 2, 10_650), t0 + Duration::from_secs(1));
        // The broadcaster's clock runs ahead of ours: an apparent arrival before publication.
        store.insert_at(seg(&key, 3, 12_000), t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_secs(2);
        let now_wall_ms = 10_150.0 + 2000.0;
        let got = recent_latencies_ms(&store, now, now_wall_ms);
        assert_eq!(got.len(), 3);
        for (got, want) in got.iter().zip([150.0, 500.0, 0.0]) {
            assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
        }
    }
}
