//! The `/metrics` figures of both programs, in the Prometheus text format.
//!
//! A node's counters live in [`crate::net`] and its mesh; at each scrape [`Metrics::render`]
//! copies a [`NodeStats`] snapshot (and the broadcaster's own figures) into `prometheus`
//! counters and gauges. The two histograms, delivery latency and join time, are observed by
//! the viewer as segments arrive, since no snapshot could rebuild them. Every name starts
//! with `starling_` and ends with its unit.

use crate::net::NodeStats;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics could not be set up or written.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The broadcaster's figures beyond its node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastFigures {
    /// Segments signed and published since start.
    pub segments_published: u64,
    /// The stream's bitrate over its last segments, bits/s.
    pub stream_bps: u64,
    /// The upload cap in force, bits/s.
    pub upload_limit_bps: u64,
    /// Segment bytes viewers received, estimated: each segment's size times the viewers
    /// connected when it was published.
    pub delivered_bytes: u64,
}

/// Every figure a node exports, registered once; [`Metrics::render`] writes them out.
pub struct Metrics {
    registry: Registry,
    node: NodeFamilies,
    viewer: Option<ViewerFamilies>,
    broadcaster: Option<BroadcasterFamilies>,
    /// Held while a scrape copies the snapshot in, so two scrapes at once cannot both add
    /// the same increase to a counter.
    scrape: Mutex<()>,
}

/// Figures both programs have, from [`NodeStats`].
struct NodeFamilies {
    partners: IntGauge,
    segments_verified: IntCounter,
    segments_rejected: IntCounter,
    segments_buffered: IntGauge,
    newest_segment: IntGauge,
    received_bytes: IntCounterVec,
    uploaded_bytes: IntCounter,
    control_bytes: IntCounter,
    deadlines_missed: IntCounter,
    busy_replies: IntCounter,
    bans: IntCounter,
}

/// Figures only a viewer has.
struct ViewerFamilies {
    origin_connected: IntGauge,
    delivery_latency: Histogram,
    join: Histogram,
}

/// Figures only the broadcaster has.
struct BroadcasterFamilies {
    viewers: IntGauge,
    segments_published: IntCounter,
    stream_rate: IntGauge,
    upload_limit: IntGauge,
    delivered_bytes: IntCounter,
    seeds_unconfirmed: IntCounter,
}

/// Delivery latency buckets, seconds: a hop is well under a second, a stalled one many.
const LATENCY_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0];

/// Join time buckets, seconds: the first segment comes within one or two segment lengths.
const JOIN_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0, 60.0];

impl Metrics {
    /// The viewer's metrics: the node's, its link to the broadcaster, latency and join time.
    pub fn viewer() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let node = NodeFamilies::register(&registry)?;
        let viewer = ViewerFamilies {
            origin_connected: gauge(
                &registry,
                "starling_origin_connected",
                "1 while connected to the broadcaster, else 0.",
            )?,
            delivery_latency: histogram(
                &registry,
                "starling_delivery_latency_seconds",
                "From the broadcaster signing a segment (its clock) to this viewer holding it \
                 verified (this clock).",
                &LATENCY_BUCKETS,
            )?,
            join: histogram(
                &registry,
                "starling_join_seconds",
                "From the viewer's start to its first verified segment.",
                &JOIN_BUCKETS,
            )?,
        };
        Ok(Metrics {
            registry,
            node,
            viewer: Some(viewer),
            broadcaster: None,
            scrape: Mutex::new(()),
        })
    }

    /// The broadcaster's metrics: the node's, viewers, publication and upload figures.
    pub fn broadcaster() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let node = NodeFamilies::register(&registry)?;
        let broadcaster = BroadcasterFamilies {
            viewers: gauge(&registry, "starling_viewers", "Viewers connected.")?,
            segments_published: counter(
                &registry,
                "starling_segments_published_total",
                "Segments signed and published.",
            )?,
            stream_rate: gauge(
                &registry,
                "starling_stream_bytes_per_second",
                "The stream's rate over its last segments.",
            )?,
            upload_limit: gauge(
                &registry,
                "starling_upload_limit_bytes_per_second",
                "The upload cap in force.",
            )?,
            delivered_bytes: counter(
                &registry,
                "starling_delivered_bytes_total",
                "Segment bytes viewers received, estimated as each segment's size times the \
                 viewers connected when it was published.",
            )?,
            seeds_unconfirmed: counter(
                &registry,
                "starling_seeds_unconfirmed_total",
                "Seeding pushes a viewer did not acknowledge in time.",
            )?,
        };
        Ok(Metrics {
            registry,
            node,
            viewer: None,
            broadcaster: Some(broadcaster),
            scrape: Mutex::new(()),
        })
    }

    /// Viewers: one segment held `latency` after the broadcaster signed it.
    pub fn observe_delivery(&self, latency: Duration) {
        if let Some(v) = &self.viewer {
            v.delivery_latency.observe(latency.as_secs_f64());
        }
    }

    /// Viewers: the first segment came `after` the start.
    pub fn observe_join(&self, after: Duration) {
        if let Some(v) = &self.viewer {
            v.join.observe(after.as_secs_f64());
        }
    }

    /// The text for `/metrics`: `node` and, for the broadcaster, `broadcast` copied in.
    pub fn render(
        &self,
        node: &NodeStats,
        broadcast: Option<&BroadcastFigures>,
    ) -> Result<String, MetricsError> {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.node.copy(node);
        if let Some(v) = &self.viewer {
            v.origin_connected.set(i64::from(node.origin_connected));
        }
        if let Some(b) = &self.broadcaster {
            b.viewers.set(clamp(node.peers as u64));
            advance(&b.seeds_unconfirmed, node.seeds_unconfirmed);
            if let Some(f) = broadcast {
                advance(&b.segments_published, f.segments_published);
                b.stream_rate.set(clamp(f.stream_bps / 8));
                b.upload_limit.set(clamp(f.upload_limit_bps / 8));
                advance(&b.delivered_bytes, f.delivered_bytes);
            }
        }
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

impl NodeFamilies {
    fn register(r: &Registry) -> Result<NodeFamilies, MetricsError> {
        let received_bytes = IntCounterVec::new(
            Opts::new(
                "starling_received_bytes_total",
                "Segment bytes received, by sender: other viewers (peers) or the broadcaster \
                 (origin).",
            ),
            &["from"],
        )?;
        r.register(Box::new(received_bytes.clone()))?;
        // Both series exist from the start, so a rate over them never begins with a gap.
        for from in ["peers", "origin"] {
            received_bytes.with_label_values(&[from]).inc_by(0);
        }
        Ok(NodeFamilies {
            partners: gauge(r, "starling_partners", "Connected viewer partners.")?,
            segments_verified: counter(
                r,
                "starling_segments_verified_total",
                "Segments verified and stored (or, on the broadcaster, published).",
            )?,
            segments_rejected: counter(
                r,
                "starling_segments_rejected_total",
                "Segments that failed verification.",
            )?,
            segments_buffered: gauge(r, "starling_segments_buffered", "Segments held in memory.")?,
            newest_segment: gauge(
                r,
                "starling_newest_segment",
                "Number of the newest segment held (-1 before any).",
            )?,
            received_bytes,
            uploaded_bytes: counter(
                r,
                "starling_uploaded_bytes_total",
                "Segment bytes sent to peers.",
            )?,
            control_bytes: counter(
                r,
                "starling_control_sent_bytes_total",
                "Non-media bytes sent: control messages, requests, segment headers.",
            )?,
            deadlines_missed: counter(
                r,
                "starling_deadlines_missed_total",
                "Segments not held by their playout deadline.",
            )?,
            busy_replies: counter(
                r,
                "starling_busy_replies_total",
                "Requests turned away because upload was saturated.",
            )?,
            bans: counter(r, "starling_bans_total", "Peers banned for misbehaviour.")?,
        })
    }

    fn copy(&self, n: &NodeStats) {
        self.partners.set(clamp(n.peers as u64));
        advance(&self.segments_verified, n.segments_verified);
        advance(&self.segments_rejected, n.rejected_segments);
        self.segments_buffered
            .set(clamp(n.buffered_segments as u64));
        self.newest_segment.set(n.newest_segment.map_or(-1, clamp));
        advance(
            &self.received_bytes.with_label_values(&["peers"]),
            n.bytes_from_peers,
        );
        advance(
            &self.received_bytes.with_label_values(&["origin"]),
            n.bytes_from_origin,
        );
        advance(&self.uploaded_bytes, n.bytes_uploaded);
        advance(&self.control_bytes, n.control_bytes);
        advance(&self.deadlines_missed, n.missed_deadlines);
        advance(&self.busy_replies, n.busy_replies);
        advance(&self.bans, n.bans);
    }
}

/// Raises `counter` to `total`; a counter never goes down, so a lower total is ignored.
fn advance(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// A count as a gauge value (gauges are signed).
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, MetricsError> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn viewer_text_carries_the_node_figures() {
        let m = Metrics::viewer().unwrap();
        let n = NodeStats {
            peers: 4,
            origin_connected: true,
            segments_verified: 12,
            rejected_segments: 1,
            newest_segment: Some(41),
            bytes_from_peers: 3000,
            bytes_from_origin: 1000,
            bytes_uploaded: 2500,
            missed_deadlines: 2,
            busy_replies: 5,
            bans: 1,
            ..NodeStats::default()
        };
        m.observe_delivery(Duration::from_millis(700));
        m.observe_join(Duration::from_millis(1500));
        let text = m.render(&n, None).unwrap();
        assert_eq!(sample(&text, "starling_partners"), Some(4.0));
        assert_eq!(sample(&text, "starling_origin_connected"), Some(1.0));
        assert_eq!(
            sample(&text, "starling_segments_verified_total"),
            Some(12.0)
        );
        assert_eq!(sample(&text, "starling_segments_rejected_total"), Some(1.0));
        assert_eq!(sample(&text, "starling_newest_segment"), Some(41.0));
        let peers = "starling_received_bytes_total{from=\"peers\"}";
        assert_eq!(sample(&text, peers), Some(3000.0));
        assert_eq!(
            sample(&text, "starling_received_bytes_total{from=\"origin\"}"),
            Some(1000.0)
        );
        assert_eq!(sample(&text, "starling_uploaded_bytes_total"), Some(2500.0));
        assert_eq!(sample(&text, "starling_deadlines_missed_total"), Some(2.0));
        assert_eq!(sample(&text, "starling_busy_replies_total"), Some(5.0));
        assert_eq!(sample(&text, "starling_bans_total"), Some(1.0));
        let le1 = "starling_delivery_latency_seconds_bucket{le=\"1\"}";
        assert_eq!(sample(&text, le1), Some(1.0));
        let le05 = "starling_delivery_latency_seconds_bucket{le=\"0.5\"}";
        assert_eq!(sample(&text, le05), Some(0.0));
        assert_eq!(sample(&text, "starling_join_seconds_count"), Some(1.0));
        assert!(!text.contains("starling_viewers"), "{text}");
    }

    #[test]
    fn counters_follow_the_snapshot_and_never_go_back() {
        let m = Metrics::viewer().unwrap();
        let mut n = NodeStats {
            bytes_uploaded: 100,
            ..NodeStats::default()
        };
        m.render(&n, None).unwrap();
        n.bytes_uploaded = 250;
        let text = m.render(&n, None).unwrap();
        assert_eq!(sample(&text, "starling_uploaded_bytes_total"), Some(250.0));
        n.bytes_uploaded = 10;
        let text = m.render(&n, None).unwrap();
        assert_eq!(sample(&text, "starling_uploaded_bytes_total"), Some(250.0));
    }

    #[test]
    fn broadcaster_text_has_viewers_and_rates_in_bytes() {
        let m = Metrics::broadcaster().unwrap();
        let n = NodeStats {
            peers: 7,
            ..NodeStats::default()
        };
        let f = BroadcastFigures {
            segments_published: 30,
            stream_bps: 2_000_000,
            upload_limit_bps: 8_000_000,
            delivered_bytes: 9_000,
        };
        let text = m.render(&n, Some(&f)).unwrap();
        assert_eq!(sample(&text, "starling_viewers"), Some(7.0));
        assert_eq!(
            sample(&text, "starling_segments_published_total"),
            Some(30.0)
        );
        assert_eq!(
            sample(&text, "starling_stream_bytes_per_second"),
            Some(250_000.0)
        );
        assert_eq!(
            sample(&text, "starling_upload_limit_bytes_per_second"),
            Some(1_000_000.0)
        );
        assert_eq!(
            sample(&text, "starling_delivered_bytes_total"),
            Some(9000.0)
        );
        assert_eq!(sample(&text, "starling_newest_segment"), Some(-1.0));
        assert!(!text.contains("starling_join_seconds"), "{text}");
    }
}
