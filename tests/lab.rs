//! Multi-host tests in a network lab (see `tests/lab/mod.rs`): the real programs on hosts in
//! network namespaces, viewers behind home and office NAT routers with shaped links, checked
//! from outside as a user would (ffmpeg plays a viewer's playlist inside its namespace).
//!
//! The `lab_*` tests check the lab itself; the homes and offices tests check NAT traversal
//! (issue 27): viewers behind their own NATs find partners and play, and viewers of one office
//! pair over their LAN. That every office viewer plays is not yet true (ignored, with the
//! reason). Needs root, iproute2 and nft, else SKIP (on CI, fail).

mod common;
mod harness;
#[path = "lab/mod.rs"]
mod netlab;

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::players::{ffmpeg_reads_hls, require_tool};
use harness::{
    broadcaster_stats_url, count, one_stream_at_a_time, poll_until, wait_for_segments, Broadcaster,
    TempDir, Viewer,
};
use netlab::{clip, Host, Lab, Link, Nat, Site};

/// How long a fresh mesh may take to list its first segments in a viewer's playlist: start-up
/// of debug builds, the first segments cut, the hold-back, on a busy shared machine.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long viewers may take to find partners through their NATs (a behaviour awaited, not
/// a performance figure).
const PARTNERS_TIMEOUT: Duration = Duration::from_secs(90);
/// Seconds of media ffmpeg must decode from each viewer.
const PLAY_SECONDS: u32 = 8;
/// Length of the 1.3 Mbit/s clip the feature tests stream: longer than any of them runs.
const CLIP_SECONDS: u32 = 300;
/// How long a UDP probe waits for a datagram that should arrive.
const PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long a UDP probe listens for a datagram that must not arrive.
const PROBE_QUIET: Duration = Duration::from_secs(2);

/// A broadcaster on `host` with its own key in `dir`, stats on a free local port, `extra`.
fn start_broadcaster(host: &Host, dir: &TempDir, extra: &[&str]) -> Broadcaster {
    let key = dir.file("key");
    let mut args = vec!["--key", key.as_str(), "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    host.start_broadcaster(&args, Stdio::null())
}

#[test]
fn lab_home_viewer_plays_through_the_broadcaster() {
    if !require_tool("ffmpeg") {
        return;
    }
    let Some(mut lab) = Lab::new("lab_home_viewer_plays_through_the_broadcaster") else {
        return;
    };
    let _one = one_stream_at_a_time();
    let origin = lab.public_host("bc", Link::uplink(6.0));
    let home = lab.home(Link::mbit(3.0, 10.0), Nat::Cone);
    let host = &home.hosts[0];
    let dir = TempDir::new("lab-home");
    // The built-in demo clip: under 1 Mbit/s, well within every link.
    let broadcaster = start_broadcaster(&origin, &dir, &["--segment-duration", "1"]);
    let viewer = host.start_viewer(&broadcaster.ticket, &["--delay", "2"]);

    host.run(|| wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT));
    let report = host
        .run(|| ffmpeg_reads_hls(&viewer.url, PLAY_SECONDS))
        .unwrap_or_else(|e| panic!("ffmpeg in {}: {e}", host.ns));
    eprintln!("ffmpeg read the home viewer: {report:?}");

    let stats = host.stats(&viewer.url_of("/stats"));
    assert!(
        count(&stats, "bytes_from_origin") > 0,
        "the home viewer got nothing from the broadcaster: {stats}"
    );
    let origin_stats = origin.stats(&broadcaster_stats_url(&broadcaster));
    assert!(
        count(&origin_stats, "viewers") >= 1,
        "the broadcaster counts no viewer: {origin_stats}"
    );
}

#[test]
fn lab_nat_lets_replies_in_and_keeps_strangers_out() {
    let Some(mut lab) = Lab::new("lab_nat_lets_replies_in_and_keeps_strangers_out") else {
        return;
    };
    let public = lab.public_host("pub", Link::uplink(100.0));
    let stranger_home = lab.home(Link::mbit(3.0, 10.0), Nat::Cone);
    let home = lab.home(Link::mbit(3.0, 10.0), Nat::Cone);
    let echo = public.run(|| UdpSocket::bind("0.0.0.0:7000")).unwrap();
    let inside = home.hosts[0]
        .run(|| UdpSocket::bind("0.0.0.0:7001"))
        .unwrap();
    let stranger = stranger_home.hosts[0]
        .run(|| UdpSocket::bind("0.0.0.0:7002"))
        .unwrap();
    for socket in [&echo, &inside, &stranger] {
        socket.set_read_timeout(Some(PROBE_WAIT)).unwrap();
    }
    let mut buf = [0u8; 64];

    // The home host talks to a public host: that sees the router's address, and its reply
    // gets back in through the NAT.
    inside.send_to(b"hello", (public.addr, 7000)).unwrap();
    let (_, mapped) = echo
        .recv_from(&mut buf)
        .expect("the public host hears the home");
    assert_eq!(
        mapped.ip(),
        std::net::IpAddr::V4(home.wan),
        "the home's packet should leave with its router's public address"
    );
    echo.send_to(b"reply", mapped).unwrap();
    let (n, _) = inside.recv_from(&mut buf).expect("the reply gets in");
    assert_eq!(&buf[..n], b"reply");

    // Another home's host reaches the public host too...
    stranger.send_to(b"knock", (public.addr, 7000)).unwrap();
    let (_, from) = echo
        .recv_from(&mut buf)
        .expect("the public host hears the stranger");
    assert_eq!(from.ip(), std::net::IpAddr::V4(stranger_home.wan));
    // ...but not the first home's host through its router's open mapping: unsolicited.
    for _ in 0..5 {
        stranger.send_to(b"knock", mapped).unwrap();
    }
    inside.set_read_timeout(Some(PROBE_QUIET)).unwrap();
    let got = inside.recv_from(&mut buf);
    assert!(
        got.is_err(),
        "a packet from another home got through the NAT unsolicited: {got:?}"
    );
}

#[test]
fn lab_nat_kinds_map_ports_as_named() {
    let Some(mut lab) = Lab::new("lab_nat_kinds_map_ports_as_named") else {
        return;
    };
    let publics = [
        lab.public_host("p1", Link::uplink(100.0)),
        lab.public_host("p2", Link::uplink(100.0)),
    ];
    let cone = lab.home(Link::mbit(3.0, 10.0), Nat::Cone);
    let symmetric = lab.home(Link::mbit(3.0, 10.0), Nat::Symmetric);
    let echoes: Vec<(UdpSocket, SocketAddr)> = publics
        .iter()
        .flat_map(|p| [(p, 7000), (p, 7001)])
        .map(|(p, port)| {
            let socket = p.run(|| UdpSocket::bind(("0.0.0.0", port))).unwrap();
            socket.set_read_timeout(Some(PROBE_WAIT)).unwrap();
            (socket, SocketAddr::from((p.addr, port)))
        })
        .collect();
    // The public ports one LAN socket (port 40000) shows to each of the four destinations.
    let seen_ports = |site: &Site| -> Vec<u16> {
        let socket = site.hosts[0]
            .run(|| UdpSocket::bind("0.0.0.0:40000"))
            .unwrap();
        echoes
            .iter()
            .map(|(echo, to)| {
                socket.send_to(b"probe", to).unwrap();
                let mut buf = [0u8; 16];
                let (_, from) = echo.recv_from(&mut buf).expect("the probe arrives");
                assert_eq!(from.ip(), std::net::IpAddr::V4(site.wan));
                from.port()
            })
            .collect()
    };
    let cone_ports = seen_ports(&cone);
    assert!(
        cone_ports.iter().all(|&p| p == 40000),
        "masquerade should keep a free port for every destination: {cone_ports:?}"
    );
    let symmetric_ports = seen_ports(&symmetric);
    assert!(
        symmetric_ports.windows(2).any(|w| w[0] != w[1]),
        "a symmetric NAT should map destinations to different ports: {symmetric_ports:?}"
    );
}

/// The hosts of `sites`, each with a viewer of `ticket` started on it.
fn start_viewers<'a>(sites: &'a [Site], ticket: &str) -> Vec<(&'a Host, Viewer)> {
    start_viewers_with(sites, ticket, &[])
}

/// [`start_viewers`], each viewer with `args` too.
fn start_viewers_with<'a>(
    sites: &'a [Site],
    ticket: &str,
    args: &[&str],
) -> Vec<(&'a Host, Viewer)> {
    sites
        .iter()
        .flat_map(|site| &site.hosts)
        .map(|host| (host, host.start_viewer(ticket, args)))
        .collect()
}

/// Waits until every viewer's `/stats` shows `field` ≥ 1 (all within one deadline); panics
/// naming those that never do.
fn wait_for_each(viewers: &[(&Host, Viewer)], field: &str) {
    let mut last = vec![serde_json::Value::Null; viewers.len()];
    let mut done = vec![false; viewers.len()];
    poll_until(PARTNERS_TIMEOUT, || {
        for (i, (host, viewer)) in viewers.iter().enumerate() {
            if !done[i] {
                last[i] = host.stats(&viewer.url_of("/stats"));
                done[i] = count(&last[i], field) >= 1;
            }
        }
        done.iter().all(|d| *d).then_some(())
    });
    let late: Vec<String> = viewers
        .iter()
        .zip(&last)
        .zip(&done)
        .filter(|(_, done)| !**done)
        .map(|(((host, _), stats), _)| format!("{}: {stats}", host.ns))
        .collect();
    assert!(
        late.is_empty(),
        "{} of {} viewers had no {field} within {} s:\n{}",
        late.len(),
        viewers.len(),
        PARTNERS_TIMEOUT.as_secs(),
        late.join("\n")
    );
}

/// Asserts every viewer's `/stats` says `reachability` is `expected`.
fn assert_reachability(viewers: &[(&Host, Viewer)], expected: &str) {
    for (host, viewer) in viewers {
        let stats = host.stats(&viewer.url_of("/stats"));
        assert_eq!(
            stats.get("reachability").and_then(|r| r.as_str()),
            Some(expected),
            "{}: reachability should be {expected:?}: {stats}",
            host.ns
        );
    }
}

/// Asserts ffmpeg, inside each viewer's namespace, decodes its playlist (all at once).
fn assert_all_play(viewers: &[(&Host, Viewer)]) {
    // A player opened before the playlist lists its hold-back gets a 404 or a stub, as a
    // user would who pasted the URL that early: wait for each playlist's first three
    // segments, as a user retrying would.
    for (host, viewer) in viewers {
        let url = viewer.url.as_str();
        host.run(|| harness::wait_for_segments(url, 3, PARTNERS_TIMEOUT));
    }
    let results: Vec<(String, Result<u64, String>)> = thread::scope(|scope| {
        let runs: Vec<_> = viewers
            .iter()
            .map(|(host, viewer)| {
                let url = viewer.url.as_str();
                scope.spawn(move || {
                    let played = host
                        .run(|| ffmpeg_reads_hls(url, PLAY_SECONDS))
                        .map(|report| report.video_frames);
                    (host.ns.clone(), played)
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a player thread"))
            .collect()
    });
    for (ns, played) in &results {
        eprintln!("{ns}: {played:?}");
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(ns, played)| played.as_ref().err().map(|e| format!("{ns}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} viewers do not play:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}

#[test]
fn homes_behind_nats_find_partners_and_all_play() {
    if !require_tool("ffmpeg") {
        return;
    }
    let Some(mut lab) = Lab::new("homes_behind_nats_find_partners_and_all_play") else {
        return;
    };
    let _one = one_stream_at_a_time();
    let clip = clip(CLIP_SECONDS);
    let origin = lab.public_host("bc", Link::uplink(6.0));
    let homes: Vec<Site> = (0..8)
        .map(|_| lab.home(Link::mbit(3.0, 10.0), Nat::Cone))
        .collect();
    let dir = TempDir::new("lab-homes");
    let broadcaster = start_broadcaster(&origin, &dir, &["--input", &clip.to_string_lossy()]);
    let viewers = start_viewers(&homes, &broadcaster.ticket);

    wait_for_each(&viewers, "peers");
    assert_reachability(&viewers, "nat");
    assert_all_play(&viewers);
}

/// Three offices of four viewers, each office behind one NAT and a 3 Mbit/s WAN.
fn offices(lab: &mut Lab) -> Vec<Site> {
    (0..3)
        .map(|_| lab.office(4, Link::mbit(3.0, 3.0), Nat::Cone))
        .collect()
}

#[test]
fn office_viewers_pair_over_their_lan() {
    let Some(mut lab) = Lab::new("office_viewers_pair_over_their_lan") else {
        return;
    };
    let _one = one_stream_at_a_time();
    let clip = clip(CLIP_SECONDS);
    let origin = lab.public_host("bc", Link::uplink(8.0));
    let offices = offices(&mut lab);
    let dir = TempDir::new("lab-offices");
    let broadcaster = start_broadcaster(&origin, &dir, &["--input", &clip.to_string_lossy()]);
    let viewers = start_viewers(&offices, &broadcaster.ticket);

    wait_for_each(&viewers, "lan_partners");
    assert_reachability(&viewers, "nat");
}

/// An office that leaves through two routers (two public addresses): given one `--site`
/// name, its four viewers pair over their LAN, every one with all three others, and all
/// play. Without the name each pairs with the one neighbour behind its own exit over the LAN
/// (`[1, 1, 1, 1]` when tried), and reaches the other two by simultaneous open across the
/// internet.
#[test]
fn office_viewers_given_a_site_name_pair_over_their_lan_across_exits() {
    if !require_tool("ffmpeg") {
        return;
    }
    let Some(mut lab) =
        Lab::new("office_viewers_given_a_site_name_pair_over_their_lan_across_exits")
    else {
        return;
    };
    let _one = one_stream_at_a_time();
    let clip = clip(CLIP_SECONDS);
    let origin = lab.public_host("bc", Link::uplink(8.0));
    let exits = lab.office_with_exits(4, Link::mbit(3.0, 3.0), Nat::Cone, 2);
    assert_ne!(exits[0].wan, exits[1].wan);
    let dir = TempDir::new("lab-office-exits");
    let broadcaster = start_broadcaster(&origin, &dir, &["--input", &clip.to_string_lossy()]);
    let viewers = start_viewers_with(&exits, &broadcaster.ticket, &["--site", "head office"]);

    let mut last = Vec::new();
    let all_three = poll_until(PARTNERS_TIMEOUT, || {
        last = viewers
            .iter()
            .map(|(host, viewer)| count(&host.stats(&viewer.url_of("/stats")), "lan_partners"))
            .collect();
        last.iter().all(|&n| n == 3).then_some(())
    });
    assert!(
        all_three.is_some(),
        "each viewer should pair with its three neighbours over the LAN: {last:?}"
    );
    assert_reachability(&viewers, "nat");
    assert_all_play(&viewers);
}

/// Three offices of four behind one 3 Mbit/s WAN each: every viewer plays (ffmpeg decodes
/// its playlist). Their sites share what crosses the WAN; how much does is `benches/lab`'s.
#[test]
fn office_viewers_all_play() {
    if !require_tool("ffmpeg") {
        return;
    }
    let Some(mut lab) = Lab::new("office_viewers_all_play") else {
        return;
    };
    let _one = one_stream_at_a_time();
    let clip = clip(CLIP_SECONDS);
    let origin = lab.public_host("bc", Link::uplink(8.0));
    let offices = offices(&mut lab);
    let dir = TempDir::new("lab-offices-play");
    let broadcaster = start_broadcaster(&origin, &dir, &["--input", &clip.to_string_lossy()]);
    let viewers = start_viewers(&offices, &broadcaster.ticket);

    wait_for_each(&viewers, "lan_partners");
    assert_all_play(&viewers);
}
