//! Lab benchmark: the real `starling-broadcaster` and `starling-viewer` (release builds) on
//! hosts in a network lab of namespaces (`tests/lab/mod.rs`), measured by the kernel's
//! interface counters.
//!
//! `cargo bench --bench lab -- homes|offices [--warmup 30] [--window 60]` (as root)
//!
//! - `homes`: the broadcaster on a public host with a 6 Mbit/s uplink; 8 viewers, each behind
//!   its own NAT router (masquerade) with 3 Mbit/s up and 10 Mbit/s down.
//! - `offices`: the broadcaster with an 8 Mbit/s uplink; 3 offices of 4 viewers on one LAN
//!   behind one NAT router each, 3 Mbit/s WAN each way.
//!
//! The stream is the lab's 1.3 Mbit/s H.264 clip; every program runs with its defaults. After
//! `--warmup` seconds the window opens: the byte counters of the broadcaster's interface and
//! of each router's WAN interface are read at its start and end (`/sys/class/net/IF/
//! statistics`, inside the namespaces). The stream's bytes over the window are its rate
//! (bytes ÷ duration of every segment the broadcaster published in the window, read from its
//! HTTP server) times the window's length. So `origin_copies` = broadcaster sent ÷ stream
//! bytes, `wan_down_copies` = router WAN received ÷ stream bytes. The counters hold whole
//! frames (Ethernet, IP, UDP, QUIC) and control traffic: one copy of the stream reads about
//! 1.05. The packet counters beside them give each way's packets and bytes a packet (small
//! packets are control and acknowledgements). After the window ffmpeg reads 8 s of every viewer's playlist inside its namespace
//! (all at once); a viewer whose read succeeds is playing.
//!
//! With `LAB_LOG_DIR=DIR` every program's stderr is kept in `DIR/<namespace>.log` too (with
//! `RUST_LOG=starling::net::driver=debug`, each request, part, stall and disconnect).
//!
//! Prints a summary on stderr and one JSON object as the last stdout line. Without root,
//! namespaces or nft it prints SKIP and exits 0 (on CI, with `CI` set, it fails).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/lab/mod.rs"]
mod netlab;
#[path = "../tests/common/players.rs"]
mod players;

use harness::{count, poll_until, TempDir, Viewer};
use netlab::{Dir, Host, Lab, Link, Nat, Site, HOST_IF, WAN_IF};

/// Seconds of media ffmpeg reads from each viewer after the window.
const PLAY_SECONDS: u32 = 8;
/// How often the broadcaster's playlist is read for new segments during the window: well
/// under the 8 segments it lists.
const SEGMENT_POLL: Duration = Duration::from_secs(2);
/// How long every viewer may take to print its playlist URL and list a first segment.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Homes,
    Offices,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Homes => "homes",
            Self::Offices => "offices",
        }
    }
}

#[derive(Debug)]
struct Args {
    scenario: Scenario,
    warmup: u64,
    window: u64,
}

const USAGE: &str = "usage: cargo bench --bench lab -- homes|offices [--warmup S] [--window S]";

/// The flags; `Ok(None)` when no scenario is named (as in a plain `cargo bench`).
fn parse_args() -> Result<Option<Args>, String> {
    let mut scenario = None;
    let mut warmup = 30;
    let mut window = 60;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut seconds = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("{name} takes a number of seconds"))
        };
        match arg.as_str() {
            "homes" => scenario = Some(Scenario::Homes),
            "offices" => scenario = Some(Scenario::Offices),
            "--warmup" => warmup = seconds("--warmup")?,
            "--window" => window = seconds("--window")?,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    Ok(scenario.map(|scenario| Args {
        scenario,
        warmup,
        window,
    }))
}

/// The lab of a scenario: where the broadcaster runs, and the sites behind NATs.
fn build(lab: &mut Lab, scenario: Scenario) -> (Host, Vec<Site>) {
    match scenario {
        Scenario::Homes => {
            let origin = lab.public_host("bc", Link::uplink(6.0));
            let homes = (0..8)
                .map(|_| lab.home(Link::mbit(3.0, 10.0), Nat::Cone))
                .collect();
            (origin, homes)
        }
        Scenario::Offices => {
            let origin = lab.public_host("bc", Link::uplink(8.0));
            let offices = (0..3)
                .map(|_| lab.office(4, Link::mbit(3.0, 3.0), Nat::Cone))
                .collect();
            (origin, offices)
        }
    }
}

/// Counters at one moment, (bytes, packets): the broadcaster's interface and each router's
/// WAN.
#[derive(Debug, Clone)]
struct Counters {
    origin_tx: (u64, u64),
    origin_rx: (u64, u64),
    /// Per site: (WAN received, WAN sent).
    wan: Vec<((u64, u64), (u64, u64))>,
}

fn read_counters(origin: &Host, sites: &[Site]) -> Counters {
    Counters {
        origin_tx: Lab::counters(&origin.ns, HOST_IF, Dir::Tx),
        origin_rx: Lab::counters(&origin.ns, HOST_IF, Dir::Rx),
        wan: sites
            .iter()
            .map(|s| {
                (
                    Lab::counters(&s.router, WAN_IF, Dir::Rx),
                    Lab::counters(&s.router, WAN_IF, Dir::Tx),
                )
            })
            .collect(),
    }
}

/// What went through a counter between two readings: (bytes, packets).
fn between(before: (u64, u64), after: (u64, u64)) -> (u64, u64) {
    (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    )
}

/// Bytes a packet, on average.
fn packet_size((bytes, packets): (u64, u64)) -> u64 {
    bytes.checked_div(packets).unwrap_or(0)
}

/// The segments of the broadcaster's playlist text: number → duration in seconds.
fn playlist_durations(text: &str) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    let mut duration = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            duration = rest.split(',').next().and_then(|d| d.trim().parse().ok());
        } else if !line.is_empty() && !line.starts_with('#') {
            let number = line
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".ts"))
                .and_then(|n| n.parse().ok());
            if let (Some(number), Some(d)) = (number, duration.take()) {
                out.push((number, d));
            }
        }
    }
    out
}

/// What one viewer's `/stats` says, read on its host.
fn viewer_stats(host: &Host, viewer: &Viewer) -> Value {
    host.stats(&viewer.url_of("/stats"))
}

fn ratio(part: u64, whole: f64) -> f64 {
    if whole > 0.0 {
        round3(part as f64 / whole)
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        round3(values.iter().sum::<f64>() / values.len() as f64)
    }
}

fn run(args: &Args) -> Option<Value> {
    let mut lab = Lab::new(&format!("lab bench {}", args.scenario.name()))?;
    let clip_seconds = u32::try_from(args.warmup + args.window + 180).unwrap_or(u32::MAX);
    let clip = netlab::clip(clip_seconds);
    let (origin, sites) = build(&mut lab, args.scenario);
    let dir = TempDir::new("lab-bench");
    let key = dir.file("key");
    let clip_arg = clip.to_string_lossy();
    let broadcaster = origin.start_broadcaster(
        &["--key", &key, "--http", "127.0.0.1:0", "--input", &clip_arg],
        Stdio::null(),
    );
    let stats_url = harness::broadcaster_stats_url(&broadcaster);
    let base = stats_url.trim_end_matches("/stats").to_string();
    let hosts: Vec<&Host> = sites.iter().flat_map(|s| &s.hosts).collect();
    let viewers: Vec<Viewer> = hosts
        .iter()
        .map(|host| host.start_viewer(&broadcaster.ticket, &[]))
        .collect();
    eprintln!(
        "lab: {} viewers on {} sites started; warming up {} s",
        viewers.len(),
        sites.len(),
        args.warmup
    );
    thread::sleep(Duration::from_secs(args.warmup));

    let published = |stats: &Value| count(stats, "segments_published");
    let origin_before = origin.stats(&stats_url);
    let viewers_before: Vec<Value> = hosts
        .iter()
        .zip(&viewers)
        .map(|(h, v)| viewer_stats(h, v))
        .collect();
    let before = read_counters(&origin, &sites);
    let started = Instant::now();
    let first_in_window = count(&origin_before, "newest_segment") + 1;
    // Segment number → (duration s, bytes), for the segments published in the window.
    let mut segments: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    let window = Duration::from_secs(args.window);
    while started.elapsed() < window {
        let playlist = origin.run(|| harness::get(&format!("{base}/live.m3u8")));
        if let Some(response) = playlist.ok().filter(|r| r.status == 200) {
            for (number, duration) in playlist_durations(&response.text()) {
                if number < first_in_window || segments.contains_key(&number) {
                    continue;
                }
                let url = format!("{base}/seg/{number}.ts");
                let head = origin.run(|| harness::request("HEAD", &url));
                let bytes = head
                    .ok()
                    .and_then(|r| r.header("content-length")?.parse().ok());
                if let Some(bytes) = bytes {
                    segments.insert(number, (duration, bytes));
                }
            }
        }
        thread::sleep(SEGMENT_POLL.min(window.saturating_sub(started.elapsed())));
    }
    let after = read_counters(&origin, &sites);
    let elapsed = started.elapsed().as_secs_f64();
    let origin_after = origin.stats(&stats_url);
    let viewers_after: Vec<Value> = hosts
        .iter()
        .zip(&viewers)
        .map(|(h, v)| viewer_stats(h, v))
        .collect();

    let seconds: f64 = segments.values().map(|(d, _)| d).sum();
    let bytes: u64 = segments.values().map(|(_, b)| b).sum();
    let stream_bps = if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds
    } else {
        0.0
    };
    let stream_bytes = stream_bps / 8.0 * elapsed;
    let segments_in_window = published(&origin_after).saturating_sub(published(&origin_before));

    // Every viewer played, or not: ffmpeg on each, all at once, after the window.
    let frames: Vec<Result<u64, String>> = thread::scope(|scope| {
        let runs: Vec<_> = hosts
            .iter()
            .zip(&viewers)
            .map(|(host, viewer)| {
                let url = viewer.url.as_str();
                scope.spawn(move || {
                    let ready = host.run(|| {
                        poll_until(START_TIMEOUT, || harness::fetch_playlist(url)).is_some()
                    });
                    if !ready {
                        return Err("no playlist".to_string());
                    }
                    host.run(|| players::ffmpeg_reads_hls(url, PLAY_SECONDS))
                        .map(|r| r.video_frames)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err("player thread panicked".into()))
            })
            .collect()
    });
    let playing = frames.iter().filter(|f| f.is_ok()).count();

    let partners: Vec<u64> = viewers_after.iter().map(|s| count(s, "peers")).collect();
    let optional = |s: &Value, field: &str| s.get(field).cloned().unwrap_or(Value::Null);
    let per_viewer: Vec<Value> = hosts
        .iter()
        .zip(viewers_before.iter().zip(&viewers_after))
        .zip(&frames)
        .map(|((host, (b, a)), played)| {
            let delta = |field: &str| count(a, field).saturating_sub(count(b, field));
            // What its connections off its networks carried in the window (`/stats` `wire`).
            let wire = |field: &str| {
                let at = |s: &Value| s["wire"]["off_lan"][field].as_u64().unwrap_or(0);
                at(a).saturating_sub(at(b))
            };
            json!({
                "host": host.ns,
                "partners": count(a, "peers"),
                "lan_partners": optional(a, "lan_partners"),
                "reachability": optional(a, "reachability"),
                "segments_verified": delta("segments_verified"),
                "missed_deadlines": delta("missed_deadlines"),
                "bytes_from_origin": delta("bytes_from_origin"),
                "bytes_from_peers": delta("bytes_from_peers"),
                "bytes_uploaded": delta("bytes_uploaded"),
                "control_bytes": delta("control_bytes"),
                "dials_ok": delta("dials_ok"),
                "dials_failed": delta("dials_failed"),
                "upload_slots_at_start": optional(b, "upload_slots"),
                "upload_slots": optional(a, "upload_slots"),
                "busy_replies": delta("busy_replies"),
                "wire_off_lan_received": wire("bytes_received"),
                "wire_off_lan_sent": wire("bytes_sent"),
                "wire_off_lan_lost": wire("bytes_lost"),
                "ffmpeg_frames": played.as_ref().ok(),
                "ffmpeg_error": played.as_ref().err().map(|e| e.lines().next().unwrap_or("").to_string()),
            })
        })
        .collect();
    let per_site: Vec<Value> = before
        .wan
        .iter()
        .zip(&after.wan)
        .zip(&sites)
        .map(|(((rx0, tx0), (rx1, tx1)), site)| {
            let (down, up) = (between(*rx0, *rx1), between(*tx0, *tx1));
            json!({
                "router": site.router,
                "viewers": site.hosts.len(),
                "wan_down_copies": ratio(down.0, stream_bytes),
                "wan_up_copies": ratio(up.0, stream_bytes),
                "wan_down_packets": down.1,
                "wan_down_packet_bytes": packet_size(down),
                "wan_up_packets": up.1,
                "wan_up_packet_bytes": packet_size(up),
            })
        })
        .collect();
    let down_copies: Vec<f64> = per_site
        .iter()
        .filter_map(|s| s["wan_down_copies"].as_f64())
        .collect();
    let partner_counts: Vec<f64> = partners.iter().map(|&p| p as f64).collect();

    let origin_tx = between(before.origin_tx, after.origin_tx);
    let origin_rx = between(before.origin_rx, after.origin_rx);
    let mut out = json!({
        "bench": "lab",
        "scenario": args.scenario.name(),
        "viewers": viewers.len(),
        "sites": sites.len(),
        "warmup_s": args.warmup,
        "window_s": round3(elapsed),
        "segments_in_window": segments_in_window,
        "stream_bps": stream_bps.round(),
        "stream_bytes": stream_bytes.round(),
        "origin_tx_bytes": origin_tx.0,
        "origin_tx_packets": origin_tx.1,
        "origin_copies": ratio(origin_tx.0, stream_bytes),
        "origin_rx_bytes": origin_rx.0,
        "origin_rx_packets": origin_rx.1,
        "viewers_playing": playing,
        "partners_per_viewer": mean(&partner_counts),
        "viewers_without_partners": partners.iter().filter(|&&p| p == 0).count(),
        "per_viewer": per_viewer,
    });
    if let Some(obj) = out.as_object_mut() {
        if args.scenario == Scenario::Offices {
            obj.insert("wan_down_copies_mean".into(), mean(&down_copies).into());
        }
        obj.insert("per_site".into(), per_site.into());
    }
    Some(out)
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("lab: no scenario named, nothing run; {USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("lab: {e}");
            std::process::exit(2);
        }
    };
    let wall = Instant::now();
    let Some(out) = run(&args) else {
        return;
    };
    eprintln!(
        "lab {}: origin {} copies, {} of {} viewers playing, {} partners per viewer{} ({:.0} s wall)",
        args.scenario.name(),
        out["origin_copies"],
        out["viewers_playing"],
        out["viewers"],
        out["partners_per_viewer"],
        if args.scenario == Scenario::Offices {
            format!(", WAN down {} copies per site", out["wan_down_copies_mean"])
        } else {
            String::new()
        },
        wall.elapsed().as_secs_f64()
    );
    println!("{out}");
}
