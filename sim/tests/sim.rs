//! The simulator drives the real mesh: deterministic for a seed, able to succeed when
//! capacity is ample and to fail when it is not.

use starling_sim::{self as sim, SimConfig};

fn small(peers: usize, seconds: f64) -> SimConfig {
    SimConfig {
        peers,
        seconds,
        join_window_ms: 2000,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_same_report() {
    let c = SimConfig {
        seed: 5,
        loss_pct: 1.0,
        churn_pct_per_min: 20.0,
        viewer_upload_bps: 8_000_000,
        ..small(30, 15.0)
    };
    let a = sim::run(&c);
    let b = sim::run(&c);
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert!(a.details.events > 0);
    // Every event is counted once, under the kind it was.
    let k = &a.details.by_kind;
    let total: u64 = k.named().iter().map(|(_, n)| n).sum();
    assert_eq!(total, a.details.events);
    assert!(k.have > 0 && k.request > 0 && k.first_frame > 0 && k.last_piece > 0);
    // The seed is really used: another one changes the run.
    let other = sim::run(&SimConfig { seed: 6, ..c });
    assert_ne!(a.details, other.details);
}

#[test]
fn ample_capacity_plays_everything_and_the_mesh_carries_it() {
    let c = SimConfig {
        viewer_upload_bps: 20_000_000,
        origin_upload_bps: 50_000_000,
        ..small(20, 20.0)
    };
    let r = sim::run(&c);
    assert!(r.details.judged > 0);
    assert_eq!(r.continuity, 1.0, "{r:?}");
    assert!(r.origin_copies < 20.0, "{r:?}");
    assert!(r.offload > 0.0, "{r:?}");
    assert_eq!(r.details.viewers_playable, 20);
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.max);
    assert!(r.join_ms.p50 > 0.0);
    assert!(r.control_overhead > 0.0);
    // Segments are relayed while they arrive, and the mesh never asked to be woken in the past.
    assert!(r.details.relayed > 0, "{:?}", r.details);
    // Segments move in parts, and some are put together from several suppliers.
    assert!(r.details.multi_supplier_segments > 0, "{:?}", r.details);
    assert_eq!(r.details.stale_wakeups, 0);
}

#[test]
fn too_little_upload_misses_deadlines() {
    // The origin can send half a copy; viewers upload nothing.
    let c = SimConfig {
        viewer_upload_bps: 0,
        origin_upload_bps: 1_000_000,
        ..small(10, 20.0)
    };
    let r = sim::run(&c);
    assert!(r.details.judged > 0);
    assert!(r.continuity < 1.0, "{r:?}");
    // Nothing but the origin can have delivered anything.
    assert_eq!(r.origin_bytes, r.details.media_sent_bytes);
    // Half a copy per second of stream, over the stream plus the 3 s drain, plus the one
    // burst (64 KiB) its limiter's bucket banks when idle.
    let most = 125_000.0 * 23.0 + 65_536.0;
    assert!(r.origin_bytes as f64 <= most, "{r:?}");
    assert!(r.origin_copies > 0.0);
}

#[test]
fn churn_replaces_leavers() {
    let c = SimConfig {
        churn_pct_per_min: 60.0,
        viewer_upload_bps: 8_000_000,
        ..small(20, 30.0)
    };
    let r = sim::run(&c);
    let d = &r.details;
    assert!(d.viewers_left > 0, "{d:?}");
    assert_eq!(d.viewers_started, 20 + d.viewers_left);
    assert!(r.continuity > 0.0);
}

#[test]
fn viewers_a_full_origin_turns_away_still_play_through_partners() {
    // The origin admits 10 viewers; the other 30 get a peer sample and join through them.
    let c = SimConfig {
        viewer_upload_bps: 20_000_000,
        origin_upload_bps: 50_000_000,
        origin_partners: Some(10),
        ..small(40, 20.0)
    };
    let r = sim::run(&c);
    assert_eq!(r.details.viewers_playable, 40, "{:?}", r.details);
    assert!(r.continuity > 0.9, "{r:?}");
}

/// Runs `c` on one thread and on two, checks that the worker ran mesh calls beside other
/// events and that the figures are the same; returns the one-thread report.
fn one_and_two_threads_agree(c: &SimConfig) -> sim::SimReport {
    let one = sim::run(c);
    let mut two = sim::run(&SimConfig {
        threads: 2,
        ..c.clone()
    });
    assert_eq!(one.details.handed_off, 0);
    assert!(two.details.handed_off > 0, "the worker ran mesh calls");
    assert!(two.details.overlapped > 0, "events ran beside them");
    two.details.handed_off = 0;
    two.details.overlapped = 0;
    assert_eq!(one, two);
    one
}

#[test]
fn two_threads_give_the_one_thread_figures() {
    // Enough viewers that many are not each other's partners, with loss and churn, so
    // the worker's jobs overlap other events and departures interrupt them.
    let c = SimConfig {
        seed: 3,
        loss_pct: 1.0,
        churn_pct_per_min: 20.0,
        ..small(300, 8.0)
    };
    one_and_two_threads_agree(&c);
}

/// Sites of `members` viewers beside `homes` home viewers, with room to spare everywhere but
/// the sites' WAN links of `wan_bps`.
fn offices(sites: usize, members: usize, homes: usize, wan_bps: u64) -> SimConfig {
    SimConfig {
        viewer_upload_bps: 8_000_000,
        origin_upload_bps: 20_000_000,
        sites: vec![sim::SiteClass {
            count: sites,
            members,
        }],
        site_wan_bps: wan_bps,
        site_upload_bps: Some(50_000_000),
        ..small(sites * members + homes, 20.0)
    }
}

#[test]
fn a_site_pairs_over_its_lan_and_pulls_fewer_wan_copies_than_it_has_viewers() {
    let c = offices(3, 4, 6, 6_000_000);
    let r = sim::run(&c);
    let d = &r.details;
    assert_eq!((d.sites, d.site_viewers_started), (3, 12), "{d:?}");
    // The mesh saw its neighbours as such and took them as partners, over the LAN.
    assert!(d.site_mean_lan_partners > 0.0, "{d:?}");
    assert!(d.site_lan_bytes > 0, "{d:?}");
    // Every viewer plays, homes and sites alike.
    assert_eq!(d.viewers_playable, 18, "{d:?}");
    assert!(d.site_on_time > 0 && d.on_time > d.site_on_time, "{d:?}");
    // Each site pulls fewer copies across its WAN than it has viewers: the rest comes
    // over the LAN.
    let copies = r.site_wan_copies.expect("reported with sites");
    assert!(copies > 0.0 && copies < 4.0, "{copies} {d:?}");
    assert!(d.site_wan_down_bytes < d.site_lan_bytes, "{d:?}");
    // Reported in the JSON line next to the origin's copies; absent without sites.
    let line = serde_json::to_string(&r).unwrap();
    assert!(line.contains("\"site_wan_copies\""), "{line}");
    let plain = sim::run(&small(6, 5.0));
    assert!(plain.site_wan_copies.is_none());
    assert!(!serde_json::to_string(&plain).unwrap().contains("site_wan"));
}

#[test]
fn a_site_wan_below_the_bitrate_starves_the_site_and_not_the_homes() {
    // 0.5 Mbit/s each way for a 2 Mbit/s stream: a quarter of a copy gets in.
    let r = sim::run(&offices(2, 3, 10, 500_000));
    let d = &r.details;
    let site = d.site_on_time as f64 / d.site_judged as f64;
    let homes = (d.on_time - d.site_on_time) as f64 / (d.judged - d.site_judged) as f64;
    assert!(site < 0.5, "{site} {d:?}");
    assert!(homes > site, "{homes} {site} {d:?}");
    // What landed by the end fits the link: a quarter of a copy a second, over the 23 s of
    // run and drain, for the 17 or so segments a site joining at 0-2 s needs, plus a burst.
    assert!(d.site_wan_copies > 0.0 && d.site_wan_copies < 0.45, "{d:?}");
}

#[test]
fn with_sites_two_threads_give_the_one_thread_figures() {
    // Sites of two sizes among homes, a WAN thin enough to queue, loss and churn: the
    // worker's jobs overlap other events while the sites' links are booked from everywhere.
    let c = SimConfig {
        seed: 7,
        loss_pct: 1.0,
        churn_pct_per_min: 30.0,
        sites: vec![
            sim::SiteClass {
                count: 6,
                members: 4,
            },
            sim::SiteClass {
                count: 2,
                members: 10,
            },
        ],
        site_wan_bps: 4_000_000,
        ..small(200, 8.0)
    };
    let one = one_and_two_threads_agree(&c);
    assert!(one.details.site_wan_down_bytes > 0 && one.details.site_lan_bytes > 0);
    // Churn keeps each site's size: a leaver's replacement joins on its site.
    let d = &one.details;
    assert!(d.viewers_left > 0, "{d:?}");
    assert_eq!(d.viewers_started, 200 + d.viewers_left);
    assert!(d.site_viewers_started >= 44, "{d:?}");
    // Same seed, same report.
    assert_eq!(one, sim::run(&c));
}

#[test]
fn an_rtt_spread_changes_the_run_and_none_keeps_it() {
    let c = small(30, 8.0);
    let plain = sim::run(&c);
    assert_eq!(
        plain,
        sim::run(&SimConfig {
            rtt_spread: 0.0,
            ..c.clone()
        })
    );
    let spread = sim::run(&SimConfig {
        rtt_spread: 1.0,
        ..c.clone()
    });
    assert_ne!(plain.latency_ms, spread.latency_ms);
    assert!(spread.continuity > 0.0);
}

#[test]
fn site_and_rtt_flags_parse_and_bad_values_are_refused() {
    let c = SimConfig::from_args([
        "--peers",
        "100",
        "--sites",
        "10x4,2x8",
        "--site-wan",
        "3M",
        "--site-nat",
        "symmetric",
        "--site-upload",
        "10M",
        "--lan-rtt-ms",
        "0.5",
        "--rtt-spread",
        "0.8",
    ])
    .unwrap();
    assert_eq!(c.sites.len(), 2);
    assert_eq!((c.sites[1].count, c.sites[1].members), (2, 8));
    assert_eq!(c.site_members(), 56);
    assert_eq!(c.site_wan_bps, 3_000_000);
    assert_eq!(c.site_nat, sim::NatKind::Symmetric);
    assert_eq!(c.site_upload_bps, Some(10_000_000));
    assert_eq!((c.lan_rtt_ms, c.rtt_spread), (0.5, 0.8));
    for (flag, value) in [
        ("--sites", "4"),
        ("--sites", "4x"),
        ("--sites", "x4"),
        ("--sites", "-1x4"),
        ("--site-nat", "open"),
        ("--site-nat", "home"),
        ("--site-wan", "fast"),
        ("--rtt-spread", "wide"),
        ("--lan-rtt-ms", "NaN"),
    ] {
        assert!(
            matches!(
                SimConfig::from_args([flag, value]),
                Err(sim::SimError::BadValue { .. })
            ),
            "{flag} {value}"
        );
    }
    for args in [
        ["--sites", "0x4"],
        ["--sites", "5x0"],
        ["--sites", "30x4"],
        ["--site-wan", "0"],
        ["--rtt-spread", "-1"],
        ["--rtt-spread", "4"],
        ["--lan-rtt-ms", "0"],
    ] {
        // 30 sites of 4 are more viewers than the default 100.
        assert!(
            matches!(SimConfig::from_args(args), Err(sim::SimError::Invalid(_))),
            "{args:?}"
        );
    }
}
