//! The broadcaster's dashboard: the page at `/`, and the recent history it charts, served at
//! `/history`. The page draws its own charts (inline SVG, no external script).

use serde::Serialize;
use std::collections::VecDeque;

/// Samples kept: ten minutes at one a second.
pub(super) const HISTORY_LEN: usize = 600;

/// The broadcaster's figures at one moment, as the dashboard charts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct Sample {
    /// Wall clock, ms since the Unix epoch.
    pub(super) unix_ms: u64,
    /// Viewers connected.
    pub(super) viewers: usize,
    /// Segment bytes the broadcaster uploaded so far.
    pub(super) uploaded_bytes: u64,
    /// Segment bytes viewers received so far (estimated; see `BroadcastStats`).
    pub(super) delivered_bytes: u64,
    /// Segments published so far.
    pub(super) segments_published: u64,
}

/// The last [`HISTORY_LEN`] samples, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a sample, dropping the oldest beyond [`HISTORY_LEN`].
    pub(super) fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while self.samples.len() > HISTORY_LEN {
            self.samples.pop_front();
        }
    }

    /// The `/history` body: `{"interval_ms": 1000, "samples": [...]}`, oldest first.
    pub(super) fn json(&self) -> String {
        serde_json::json!({ "interval_ms": 1000, "samples": self.samples }).to_string()
    }
}

/// The page at the broadcaster's `/`.
pub(super) const DASHBOARD_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Starling broadcaster</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.figure { border: 1px solid #ccc; border-radius: 6px; padding: .5em 1em; min-width: 8em; }
.figure b { display: block; font-size: 1.6em; }
svg { width: 100%; height: 200px; border: 1px solid #ddd; background: #fafafa; }
.legend span { margin-right: 1.5em; }
.up { color: #c0392b; } .got { color: #2471a3; } .vw { color: #1e8449; }
small { color: #666; }
</style>
</head>
<body>
<h1>Starling broadcaster</h1>
<small id="state">loading&hellip;</small>
<div class="figures">
  <div class="figure">viewers <b id="viewers">-</b></div>
  <div class="figure">offload <b id="offload">-</b></div>
  <div class="figure">upload <b id="upload">-</b></div>
  <div class="figure">viewers received <b id="received">-</b></div>
  <div class="figure">segment <b id="segment">-</b></div>
  <div class="figure">stream <b id="bitrate">-</b></div>
</div>
<h2>Upload against what viewers received, last minutes</h2>
<div class="legend"><span class="up">&#9632; broadcaster upload</span><span class="got">&#9632; viewers received (estimate)</span></div>
<svg id="rates" viewBox="0 0 600 200" preserveAspectRatio="none"></svg>
<h2>Viewers</h2>
<svg id="viewerchart" viewBox="0 0 600 200" preserveAspectRatio="none"></svg>
<h2>Live edge</h2>
<video id="live" muted autoplay playsinline controls style="width:100%;max-width:40em;background:#000"></video>
<script src="hls.min.js"></script>
<script>
"use strict";
// The broadcaster's own window, as its viewers' players get it (hls.js is served from the
// binary; Safari plays HLS itself).
(function () {
  const video = document.getElementById("live");
  if (window.Hls && Hls.isSupported()) {
    const hls = new Hls({ liveSyncDurationCount: 2 });
    hls.loadSource("live.m3u8");
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = "live.m3u8";
  }
})();
</script>
<p><small>What viewers received is estimated here as each segment's size times the viewers
connected when it was published; offload is the share of it the broadcaster did not send.
Raw figures: <a href="stats">stats</a> (JSON), <a href="metrics">metrics</a> (Prometheus),
<a href="history">history</a> (JSON); the broadcaster's own window: <a href="live.m3u8">live.m3u8</a>.</small></p>
<script>
"use strict";
function rate(bitsPerSecond) {
  if (!isFinite(bitsPerSecond)) return "-";
  if (bitsPerSecond >= 1e6) return (bitsPerSecond / 1e6).toFixed(2) + " Mbit/s";
  return (bitsPerSecond / 1e3).toFixed(0) + " kbit/s";
}
// One value per second from cumulative byte counters, as bits per second.
function rates(samples, field) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].unix_ms - samples[i - 1].unix_ms) / 1000;
    out.push(dt > 0 ? Math.max(0, samples[i][field] - samples[i - 1][field]) * 8 / dt : 0);
  }
  return out;
}
function line(svg, values, max, colour) {
  if (values.length < 2) return;
  const step = 600 / (values.length - 1);
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (195 - 190 * v / max).toFixed(1)).join(" ");
  const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  p.setAttribute("points", points);
  p.setAttribute("fill", "none");
  p.setAttribute("stroke", colour);
  p.setAttribute("stroke-width", "2");
  p.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(p);
}
function chart(id, series) {
  const svg = document.getElementById(id);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const max = Math.max(1, ...series.flatMap(s => s.values));
  for (const s of series) line(svg, s.values, max, s.colour);
  svg.setAttribute("data-points", String(Math.max(0, ...series.map(s => s.values.length))));
}
function show(id, text) { document.getElementById(id).textContent = text; }
async function refresh() {
  try {
    const [history, stats] = await Promise.all([
      fetch("history", { cache: "no-store" }).then(r => r.json()),
      fetch("stats", { cache: "no-store" }).then(r => r.json()),
    ]);
    const s = history.samples;
    const up = rates(s, "uploaded_bytes");
    const got = rates(s, "delivered_bytes");
    const last = s[s.length - 1];
    show("viewers", String(stats.viewers));
    show("segment", stats.newest_segment === null ? "-" : String(stats.newest_segment));
    show("bitrate", rate(stats.bitrate_bps));
    // Over the last ten seconds, so one segment's burst does not swing the figures.
    const recent = a => a.slice(-10).reduce((x, y) => x + y, 0) / Math.max(1, a.slice(-10).length);
    show("upload", rate(recent(up)));
    show("received", rate(recent(got)));
    show("offload", last && last.delivered_bytes > 0
      ? Math.round(100 * Math.max(0, 1 - last.uploaded_bytes / last.delivered_bytes)) + "%" : "-");
    chart("rates", [{ values: up, colour: "#c0392b" }, { values: got, colour: "#2471a3" }]);
    chart("viewerchart", [{ values: s.map(x => x.viewers), colour: "#1e8449" }]);
    show("state", "updated " + new Date().toLocaleTimeString() + ", " + s.length + " s of history");
  } catch (e) {
    show("state", "cannot reach the broadcaster (" + e + ")");
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_ten_minutes_oldest_first() {
        let mut h = History::default();
        for t in 0..(HISTORY_LEN as u64 + 5) {
            h.push(Sample {
                unix_ms: t * 1000,
                viewers: 2,
                ..Sample::default()
            });
        }
        let v: serde_json::Value = serde_json::from_str(&h.json()).unwrap();
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), HISTORY_LEN);
        assert_eq!(samples[0]["unix_ms"], 5000);
        assert_eq!(samples[HISTORY_LEN - 1]["viewers"], 2);
        assert_eq!(v["interval_ms"], 1000);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Its one script file is the player, served by the broadcaster itself.
        let sources: Vec<&str> = DASHBOARD_HTML
            .split("<script src=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(sources, ["hls.min.js"]);
        assert!(!DASHBOARD_HTML.contains("<link"));
        // The one absolute URL is SVG's namespace name, which is never fetched.
        let urls: Vec<&str> = DASHBOARD_HTML.matches("http").collect();
        assert_eq!(urls.len(), 1, "{urls:?}");
    }
}
