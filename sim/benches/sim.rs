//! The swarm simulator as a benchmark: many viewers running the real mesh in virtual time.
//! Run: `cargo bench -p starling-sim --bench sim -- --peers 1000 --seconds 60`
//! (flags: see `starling_sim`).
//! Prints a human summary on stderr and one JSON object as the last line of stdout.

use starling_sim::{self as sim, SimConfig, SimReport};
#[path = "../../tests/common/usage.rs"]
mod usage;
use std::time::Instant;

/// The simulator allocates and frees per-segment state in every mesh all the time, over
/// two threads; glibc's allocator kept trimming its heap and faulting fresh pages back in,
/// and mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = match SimConfig::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sim: {e}");
            eprintln!(
                "flags: --peers N --seconds S --bitrate BPS --segment-ms MS --viewer-upload BPS \
                 --origin-upload BPS --churn PCT_PER_MIN --seed K --rtt-ms MS --loss PCT \
                 --delay SEGMENTS --upload-mix SHARE:MULTx,... --nat-mix KIND:SHARE,... --join-window-ms MS --join-after K \
                 --leave-detect-ms MS --dial-timeout-ms MS --tick-floor-ms MS --link shared|fifo \
                 --origin-partners N --threads 1|2 --sites COUNTxMEMBERS,... --site-wan BPS \
                 --site-nat cone|symmetric --site-upload BPS|homes --lan-rtt-ms MS --rtt-spread SIGMA"
            );
            std::process::exit(2);
        }
    };
    let wall = Instant::now();
    let mut report = sim::run(&config);
    let wall = wall.elapsed();
    let (cpu, rss) = usage::process_usage();
    report.cpu_s = cpu;
    report.peak_rss_mb = rss;
    summary(&config, &report, wall.as_secs_f64());
    match serde_json::to_string(&report) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("sim: cannot encode the report: {e}");
            std::process::exit(1);
        }
    }
}

fn summary(c: &SimConfig, r: &SimReport, wall_s: f64) {
    let d = &r.details;
    eprintln!(
        "sim: {} viewers, {} s of {:.2} Mbit/s in {} ms segments, delay {}, rtt {} ms, loss {}%, \
         churn {}%/min, resource index {:.2}",
        c.peers,
        c.seconds,
        c.bitrate_bps as f64 / 1e6,
        c.segment_ms,
        c.delay_segments,
        c.rtt_ms,
        c.loss_pct,
        c.churn_pct_per_min,
        c.resource_index()
    );
    eprintln!(
        "  continuity {:.4} ({}/{} on time; meshes counted {} missed), latency p50 {} ms \
         p99 {} ms max {:.0} ms",
        r.continuity,
        d.on_time,
        d.judged,
        d.mesh_missed,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.max
    );
    eprintln!(
        "  origin sent {:.2} copies (offload {:.3}); joins p50 {} ms p99 {} ms, {}/{} viewers \
         playable ({} left), {:.1} partners each",
        r.origin_copies,
        r.offload,
        r.join_ms.p50,
        r.join_ms.p99,
        d.viewers_playable,
        d.viewers_started,
        d.viewers_left,
        d.mean_partners
    );
    eprintln!(
        "  part requests {} ({} to origin), part pushes {}, busy {}, unavailable {}, \
         cancels {}, dials {} ({} failed), wasted {:.1} MB, control overhead {:.4}",
        d.requests,
        d.origin_requests,
        d.pushes,
        d.busy,
        d.unavailable,
        d.cancels,
        d.dials,
        d.dial_failures,
        d.wasted_bytes as f64 / 1e6,
        r.control_overhead
    );
    eprintln!(
        "  relayed {} (reset {}), unwanted {}, busy for backlog {}, pushes skipped {}, seeds unconfirmed {}, \
         segments from several suppliers {}",
        d.relayed,
        d.relay_resets,
        d.unwanted,
        d.busy_backlog,
        d.pushes_skipped,
        d.seeds_unconfirmed,
        d.multi_supplier_segments
    );
    eprintln!(
        "  {} events, {} ticks ({} superseded, {} stale wake-ups); wall {:.2} s, cpu {:.2} s, \
         peak rss {:.0} MB",
        d.events, d.ticks, d.superseded_ticks, d.stale_wakeups, wall_s, r.cpu_s, r.peak_rss_mb
    );
    let classes: Vec<String> = ["open", "cone", "symmetric"]
        .iter()
        .zip(&d.judged_by_class)
        .flat_map(|(nat, row)| {
            ["at or above", "below"]
                .iter()
                .zip(row)
                .filter(|(_, (judged, _))| *judged > 0)
                .map(move |(up, (judged, on))| {
                    format!("{nat} {up}: {:.4} of {judged}", *on as f64 / *judged as f64)
                })
        })
        .collect();
    eprintln!(
        "  continuity by NAT and upload against the bitrate: {}",
        classes.join("; ")
    );
    let per_nat: Vec<String> = ["open", "cone", "symmetric"]
        .iter()
        .enumerate()
        .filter_map(|(k, nat)| {
            let (viewers, partners, open) = *d.partners_by_nat.get(k)?;
            let origin = *d.origin_bytes_by_nat.get(k)?;
            (viewers > 0).then(|| {
                let copies = |b: u64| b as f64 / r.stream_bytes.max(1) as f64;
                let sent = d.bytes_by_nat.get(k).copied().unwrap_or_default();
                let upload = d.upload_bps_by_nat.get(k).copied().unwrap_or_default();
                format!(
                    "{nat}: {viewers} with {:.1} partners ({:.1} open), upload {:.1} streams, \
                     {:.2} origin copies, sent {:.1}/{:.1}/{:.1} copies to open/cone/symmetric",
                    partners as f64 / viewers as f64,
                    open as f64 / viewers as f64,
                    upload as f64 / r.bitrate_bps.max(1) as f64,
                    copies(origin),
                    copies(sent[0]),
                    copies(sent[1]),
                    copies(sent[2]),
                )
            })
        })
        .collect();
    eprintln!("  by NAT: {}", per_nat.join("; "));
    // Symmetric viewers reach only open ones and the origin: what those can upload against
    // what the symmetric ones need. Near 1, no mesh can carry them (a mix that breaks).
    let [_, _, symmetric] = d.partners_by_nat;
    if symmetric.0 > 0 {
        let [open_up, _, _] = d.upload_bps_by_nat;
        let need = symmetric.0 as f64 * c.bitrate_bps as f64;
        eprintln!(
            "  symmetric viewers' resource index {:.2} (open viewers' and origin's upload over \
             their need)",
            (open_up + c.origin_upload_bps) as f64 / need
        );
    }
    let kinds: Vec<String> = d
        .by_kind
        .named()
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    eprintln!("  events: {}", kinds.join(", "));
    if !c.sites.is_empty() {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "none".to_string()
            } else {
                format!("{:.4}", a as f64 / b as f64)
            }
        };
        let mb = |b: u64| b as f64 / 1e6;
        eprintln!(
            "  sites: {} with {} viewers ever (WAN {:.2} Mbit/s each way, {:?} NAT): WAN download \
             {:.3} copies a site on average (max {:.3}; on the wire, packets and \
             acknowledgements, {:.3}, max {:.3}; origin sent {:.2} copies); continuity {} on \
             sites, {} at home",
            d.sites,
            d.site_viewers_started,
            c.site_wan_bps as f64 / 1e6,
            c.site_nat,
            d.site_wan_copies,
            d.site_wan_copies_max,
            d.site_wan_wire_copies,
            d.site_wan_wire_copies_max,
            r.origin_copies,
            ratio(d.site_on_time, d.site_judged),
            ratio(d.on_time - d.site_on_time, d.judged - d.site_judged),
        );
        eprintln!(
            "  site WAN in {:.1} MB ({:.1} MB from the origin, {:.1} MB wasted), out {:.1} MB, \
             LAN {:.1} MB; parts kept across a WAN {} ({} a second copy for the site: {} origin \
             pushes, {} served by the origin); partners {:.1} a site viewer, {:.1} of its site",
            mb(d.site_wan_down_bytes),
            mb(d.site_wan_down_origin_bytes),
            mb(d.site_wan_down_wasted_bytes),
            mb(d.site_wan_up_bytes),
            mb(d.site_lan_bytes),
            d.site_wan_parts,
            d.site_wan_dup_parts,
            d.site_wan_dup_pushed,
            d.site_wan_dup_origin_served,
            d.site_mean_partners,
            d.site_mean_lan_partners,
        );
        eprintln!(
            "  part requests across a site's WAN {}: {} while a partner of the site held the \
             part, {} while one was receiving it, {} while only a viewer of the site that is \
             not a partner had it",
            d.site_wan_requests,
            d.site_wan_requests_partner_held,
            d.site_wan_requests_partner_arriving,
            d.site_wan_requests_elsewhere_on_site,
        );
        let mean = |ms: f64, n: u64| if n == 0 { 0.0 } else { ms / n as f64 };
        eprintln!(
            "  a part takes {:.0} ms on average from its first frame to its last piece ({} parts); \
             {:.0} ms from a site viewer to a viewer off its site ({} parts), {:.0} ms from a \
             viewer into a site ({} parts, after {:.0} ms from the request to the first frame \
             leaving)",
            mean(d.parts_kept_ms, d.parts_kept),
            d.parts_kept,
            mean(d.site_served_ms, d.site_served_parts),
            d.site_served_parts,
            mean(d.site_fed_ms, d.site_fed_parts),
            d.site_fed_parts,
            mean(d.site_fed_wait_ms, d.site_fed_parts),
        );
    }
    if c.threads > 1 {
        eprintln!(
            "  worker: {} mesh calls handed off, {} events run beside them",
            d.handed_off, d.overlapped
        );
    }
}
