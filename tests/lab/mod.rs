//! A network lab for multi-host tests: Linux network namespaces standing for an internet (one
//! bridge), public hosts with a shaped uplink, and sites behind NAT routers (nftables
//! masquerade, a tbf-shaped WAN link each way) holding one host (a home) or several on one LAN
//! (an office). The real programs run inside with `ip netns exec`; the test reaches their
//! local HTTP servers, and runs players, from a thread that has entered the namespace.
//!
//! Everything a lab creates goes when it is dropped, on panic too; namespaces left by a test
//! process that was killed are removed by the next lab. Needs root, iproute2 (`ip`, `tc`) and
//! nft: without them [`Lab::new`] prints SKIP and gives nothing, except on CI (env `CI` set),
//! where it fails.
//!
//! Use, beside `mod harness;`: `#[path = "lab/mod.rs"] mod netlab;` (from `tests/`) or
//! `#[path = "../tests/lab/mod.rs"] mod netlab;` (from `benches/`).

// Each crate uses only part of this module.
#![allow(dead_code, unreachable_pub)]

use std::env;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use crate::harness::{self, Broadcaster, Viewer};

/// The internet's addresses: RFC 2544's benchmarking range, reserved for labs like this one.
/// Public hosts and routers' WAN sides are numbered in it from .1 up.
const INTERNET: [u8; 3] = [198, 18, 0];
/// Every home LAN uses the same prefix, as homes do: two hosts in different homes can hold
/// the same private address, and only the public one tells them apart.
const HOME_LAN: [u8; 3] = [192, 168, 1];
/// How long tbf may queue a packet before dropping it: a home router's modest buffer.
const QUEUE_LATENCY: &str = "200ms";
/// Names of interfaces and namespaces stay within Linux's 15 characters.
const MAX_NAME: usize = 15;
/// Prefix of every namespace a lab creates; then come the creating process id in base 36 (5
/// digits), a count of its labs, `-` and the namespace's role. A later lab reads the process
/// id to find the leftovers of a killed one.
const PREFIX: &str = "stl";
/// Digits of the process id in a namespace name: Linux process ids are below 36^5.
const PID_DIGITS: usize = 5;

/// A link's rates, in bits per second.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Towards the internet.
    pub up_bps: u64,
    /// From the internet; `None` leaves it unshaped.
    pub down_bps: Option<u64>,
}

impl Link {
    /// `up` and `down` Mbit/s.
    pub fn mbit(up: f64, down: f64) -> Self {
        Self {
            up_bps: mbit(up),
            down_bps: Some(mbit(down)),
        }
    }

    /// `up` Mbit/s, downlink unshaped (a server's).
    pub fn uplink(up: f64) -> Self {
        Self {
            up_bps: mbit(up),
            down_bps: None,
        }
    }
}

/// `rate` Mbit/s in bits per second.
pub fn mbit(rate: f64) -> u64 {
    (rate * 1e6) as u64
}

/// How a router maps its LAN's ports to its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Linux masquerade as home routers do it: one LAN socket keeps its port on the public side
    /// whatever it talks to (when the port is free), so hole punching works; unsolicited
    /// packets are dropped.
    Cone,
    /// `masquerade random`: a new public port for each destination, as symmetric NATs do.
    Symmetric,
}

/// One machine: a namespace with an `eth0` and a default route.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its address on `eth0`: public for public hosts, private behind a router.
    pub addr: Ipv4Addr,
}

/// The interface every host has towards its network.
pub const HOST_IF: &str = "eth0";
/// A router's interface towards the internet.
pub const WAN_IF: &str = "wan";
/// A router's interface towards its LAN.
pub const LAN_IF: &str = "lan";

/// A router and the hosts behind it.
#[derive(Debug, Clone)]
pub struct Site {
    /// The router's network namespace (interfaces [`WAN_IF`] and [`LAN_IF`]).
    pub router: String,
    /// The router's public address: what the internet sees of every host behind it.
    pub wan: Ipv4Addr,
    /// The hosts on its LAN.
    pub hosts: Vec<Host>,
}

/// Which way a byte counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Bytes the interface sent.
    Tx,
    /// Bytes the interface received.
    Rx,
}

/// A set of namespaces making one small internet, removed on drop.
pub struct Lab {
    /// Unique to this lab: the start of each of its namespace names.
    tag: String,
    /// The internet's namespace, holding the bridge `br0`.
    internet: String,
    /// Every namespace made, in order; removed in reverse.
    namespaces: Vec<String>,
    /// The last host number used in [`INTERNET`].
    public_hosts: u8,
    /// Sites made so far.
    sites: u8,
}

impl Lab {
    /// A new lab holding only the internet; `None` (after a loud SKIP line naming `test`)
    /// where this machine cannot make one. On CI a missing prerequisite panics instead.
    pub fn new(test: &str) -> Option<Self> {
        if let Err(why) = prerequisites() {
            return skip(test, &why);
        }
        remove_leftovers();
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{PREFIX}{:0>PID_DIGITS$}{}",
            base36(std::process::id()),
            base36(COUNT.fetch_add(1, Ordering::SeqCst))
        );
        let internet = format!("{tag}-net");
        // The first namespace tells whether namespaces can be made here at all.
        if let Err(why) = run(&["ip", "netns", "add", &internet]) {
            return skip(test, &format!("cannot create a network namespace: {why}"));
        }
        let lab = Self {
            tag,
            internet: internet.clone(),
            namespaces: vec![internet.clone()],
            public_hosts: 0,
            sites: 0,
        };
        lab.prepare(&internet);
        ok(&[
            "ip", "-n", &internet, "link", "add", "br0", "type", "bridge",
        ]);
        ok(&["ip", "-n", &internet, "link", "set", "br0", "up"]);
        Some(lab)
    }

    /// A host on the internet with a public address and an uplink shaped to `link`.
    pub fn public_host(&mut self, name: &str, link: Link) -> Host {
        let ns = self.namespace(name);
        let addr = self.plug_into_internet(&ns, HOST_IF);
        shape(&ns, HOST_IF, link.up_bps);
        if let Some(down) = link.down_bps {
            // Downloads arrive through the internet's port towards this host.
            shape(&self.internet, &self.port_name(addr), down);
        }
        Host { ns, addr }
    }

    /// A home: one host behind its own router doing `nat`, the WAN link shaped to `link`.
    /// Every home's LAN is 192.168.1.0/24, its host 192.168.1.2.
    pub fn home(&mut self, link: Link, nat: Nat) -> Site {
        self.sites += 1;
        let s = self.sites;
        let host = self.namespace(&format!("s{s}h"));
        let (router, wan) =
            self.router(&format!("s{s}r"), link, nat, (HOME_LAN, 1), &host, HOST_IF);
        let addr = Ipv4Addr::new(HOME_LAN[0], HOME_LAN[1], HOME_LAN[2], 2);
        address_host(&host, addr, (HOME_LAN, 1));
        Site {
            router,
            wan,
            hosts: vec![Host { ns: host, addr }],
        }
    }

    /// An office: `hosts` hosts on one LAN (a switch) behind one router doing `nat`, the WAN
    /// link shaped to `link`; traffic between the hosts stays on the LAN, unshaped. The
    /// office that is site `n` of the lab has LAN 10.n.0.0/24, hosts from 10.n.0.11.
    pub fn office(&mut self, hosts: usize, link: Link, nat: Nat) -> Site {
        self.office_with_exits(hosts, link, nat, 1)
            .pop()
            .expect("an office has an exit")
    }

    /// An office that leaves through `exits` routers (as networks with several uplinks or a
    /// pool of NAT addresses do), each doing `nat` with its own public address and WAN link
    /// shaped to `link`: router `e` (from 1) is the LAN's 10.n.0.e, and host `i` (from 1)
    /// goes out through router `(i - 1) % exits + 1`. One LAN, so the hosts reach each other
    /// directly. One [`Site`] per exit, with the hosts that leave through it.
    pub fn office_with_exits(
        &mut self,
        hosts: usize,
        link: Link,
        nat: Nat,
        exits: u8,
    ) -> Vec<Site> {
        assert!((1..=9).contains(&exits), "1 to 9 exits");
        self.sites += 1;
        let s = self.sites;
        let lan = [10, s, 0];
        let switch = self.namespace(&format!("s{s}sw"));
        ok(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ok(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        let mut sites = Vec::new();
        for e in 1..=exits {
            // The switch's port towards this router.
            let uplink = format!("rt{e}");
            let role = if exits == 1 {
                format!("s{s}r")
            } else {
                format!("s{s}r{e}")
            };
            let (router, wan) = self.router(&role, link, nat, (lan, e), &switch, &uplink);
            ok(&[
                "ip", "-n", &switch, "link", "set", &uplink, "master", "br0", "up",
            ]);
            sites.push(Site {
                router,
                wan,
                hosts: Vec::new(),
            });
        }
        for i in 1..=hosts {
            let i = u8::try_from(i)
                .ok()
                .filter(|i| *i <= 200)
                .expect("at most 200 hosts in an office");
            let ns = self.namespace(&format!("s{s}h{i}"));
            let port = format!("h{i}");
            link_pair(&switch, &port, &ns, HOST_IF);
            ok(&[
                "ip", "-n", &switch, "link", "set", &port, "master", "br0", "up",
            ]);
            let addr = Ipv4Addr::new(lan[0], lan[1], lan[2], 10 + i);
            let exit = (i - 1) % exits;
            address_host(&ns, addr, (lan, exit + 1));
            if let Some(site) = sites.get_mut(usize::from(exit)) {
                site.hosts.push(Host { ns, addr });
            }
        }
        sites
    }

    /// Runs `args` in namespace `ns` (`ip netns exec`), for its output; a failure to start
    /// or a non-zero exit is an error with what it said.
    pub fn exec(ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// The kernel's byte and packet counters of interface `iface` in namespace `ns`, one
    /// way: what `/sys/class/net/IF/statistics/{tx,rx}_{bytes,packets}` show, read from
    /// `/proc/thread-self/net/dev` on a thread inside the namespace (no process to start, so
    /// counters of many namespaces are read within a millisecond of each other).
    pub fn counters(ns: &str, iface: &str, dir: Dir) -> (u64, u64) {
        let table = in_namespace(ns, || fs::read_to_string("/proc/thread-self/net/dev"))
            .unwrap_or_else(|e| panic!("{ns}: /proc/thread-self/net/dev: {e}"));
        // `iface: rx_bytes packets errs drop fifo frame compressed multicast tx_bytes packets ...`
        let column = match dir {
            Dir::Rx => 0,
            Dir::Tx => 8,
        };
        table
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim() == iface)
            .and_then(|(_, counts)| {
                let mut c = counts.split_whitespace().skip(column);
                Some((c.next()?.parse().ok()?, c.next()?.parse().ok()?))
            })
            .unwrap_or_else(|| panic!("{ns}: no counters for {iface}:\n{table}"))
    }

    /// A new namespace named after `role`, loopback up, IPv6 off (so the byte counters hold
    /// only the traffic under test, not router solicitations).
    fn namespace(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.tag);
        assert!(ns.len() <= MAX_NAME, "namespace name too long: {ns}");
        ok(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.prepare(&ns);
        ns
    }

    fn prepare(&self, ns: &str) {
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // Kernels without IPv6 have no such keys; nothing to turn off then.
        let _ = Self::exec(
            ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }

    /// Links `iface` in `ns` to a new port of the internet's bridge, gives it the next public
    /// address and brings it up; returns the address.
    fn plug_into_internet(&mut self, ns: &str, iface: &str) -> Ipv4Addr {
        self.public_hosts = self
            .public_hosts
            .checked_add(1)
            .filter(|n| *n < 255)
            .expect("at most 254 public addresses in a lab");
        let addr = Ipv4Addr::new(INTERNET[0], INTERNET[1], INTERNET[2], self.public_hosts);
        let port = self.port_name(addr);
        link_pair(ns, iface, &self.internet, &port);
        ok(&[
            "ip",
            "-n",
            &self.internet,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ok(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            iface,
        ]);
        ok(&["ip", "-n", ns, "link", "set", iface, "up"]);
        addr
    }

    /// The internet's namespace, holding the bridge `br0`.
    pub fn internet(&self) -> &str {
        &self.internet
    }

    /// The name of the internet bridge's port towards public address `addr` (in
    /// [`Lab::internet`]).
    pub fn port_name(&self, addr: Ipv4Addr) -> String {
        format!("p{}", addr.octets()[3])
    }

    /// A router namespace for `role`: its WAN on the internet, its LAN interface linked to
    /// `peer_if` in `peer_ns` with address `lan`.1/24, forwarding and doing `nat`. The WAN
    /// link is shaped each way: `up` leaving by the WAN, `down` leaving by the LAN side.
    fn router(
        &mut self,
        role: &str,
        link: Link,
        nat: Nat,
        (lan, gateway): ([u8; 3], u8),
        peer_ns: &str,
        peer_if: &str,
    ) -> (String, Ipv4Addr) {
        let ns = self.namespace(role);
        let wan = self.plug_into_internet(&ns, WAN_IF);
        link_pair(&ns, LAN_IF, peer_ns, peer_if);
        let gateway = format!("{}.{}.{}.{gateway}/24", lan[0], lan[1], lan[2]);
        ok(&["ip", "-n", &ns, "addr", "add", &gateway, "dev", LAN_IF]);
        ok(&["ip", "-n", &ns, "link", "set", LAN_IF, "up"]);
        Self::exec(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
        let masquerade = match nat {
            Nat::Cone => "masquerade",
            Nat::Symmetric => "masquerade random",
        };
        // A home router: the LAN's traffic leaves with the router's address; from the
        // internet only replies to what went out get in, and what is not a reply is dropped
        // before the router's own connection tracking keeps it (as home routers' firewalls
        // do), so it cannot take the mapping a simultaneous open is about to make.
        let rules = format!(
            "table ip lab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{WAN_IF}\" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"{LAN_IF}\" oifname \"{WAN_IF}\" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"{WAN_IF}\" ct state new drop
    }}
}}
"
        );
        run_with_input(&["ip", "netns", "exec", &ns, "nft", "-f", "-"], &rules)
            .unwrap_or_else(|e| panic!("nft rules for {ns}: {e}\n{rules}"));
        shape(&ns, WAN_IF, link.up_bps);
        if let Some(down) = link.down_bps {
            shape(&ns, LAN_IF, down);
        }
        (ns, wan)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// `LAB_LOG_DIR`: a copy of every program's stderr goes to `DIR/<namespace>.log` too, with
/// `RUST_LOG` passed through, to see what the programs did in a benchmark's run.
static LOG_DIR: std::sync::LazyLock<Option<String>> = std::sync::LazyLock::new(|| {
    let dir = std::env::var("LAB_LOG_DIR").ok()?;
    Some(format!(
        "exec \"$@\" 2> >(tee -a \"{dir}/$(ip netns identify).log\" >&2)"
    ))
});

impl Host {
    /// The command prefix that runs a program in this host's namespace; the program is killed
    /// when the thread that started it ends (so a killed test leaves no program running).
    pub fn prefix(&self) -> Vec<&str> {
        let mut prefix = vec!["ip", "netns", "exec", self.ns.as_str()];
        if find_on_path("setpriv").is_some() {
            prefix.extend(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        if let Some(dir) = LOG_DIR.as_deref() {
            prefix.extend(["bash", "-c", dir, "bash"]);
        }
        prefix
    }

    /// Runs `f` on a thread inside this host's network namespace: its sockets, and the
    /// processes it starts, are this host's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.ns, f)
    }

    /// Starts the broadcaster on this host with `args` and `stdin`; waits for its ticket.
    pub fn start_broadcaster(&self, args: &[&str], stdin: Stdio) -> Broadcaster {
        harness::start_broadcaster_via(&self.prefix(), args, stdin)
    }

    /// Starts a viewer of `ticket` on this host (HTTP on a free local port, QUIC on any
    /// address) with `extra` flags; waits for its playlist URL.
    pub fn start_viewer(&self, ticket: &str, extra: &[&str]) -> Viewer {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        harness::start_viewer_via(&self.prefix(), ticket, &args)
    }

    /// `/stats` at `url` on this host, parsed.
    pub fn stats(&self, url: &str) -> serde_json::Value {
        self.run(|| harness::stats_at(url))
    }
}

/// Runs `f` on a new thread that has entered namespace `ns`, and returns what it returns (a
/// panic in `f` goes on in the caller).
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    thread::scope(|scope| {
        let entered = scope.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns with a valid namespace descriptor changes only this thread's
            // network namespace, and this thread ends when `f` does.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        });
        entered
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A clip for lab streams: `seconds` of H.264 at about 1.3 Mbit/s in all (640×360, 24 fps,
/// constant 1.15 Mbit/s video with a keyframe every 0.5 s, 64 kbit/s AAC, MPEG-TS), made
/// with ffmpeg once and kept in the target's temp dir.
pub fn clip(seconds: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("lab-clip-1300k-{seconds}s.ts"));
    if path.is_file() {
        return path;
    }
    let partial = dir.join(format!("lab-clip-{}.partial.ts", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=24"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", &seconds.to_string(), "-map", "0:v", "-map", "1:a"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ])
        .args(["-b:v", "1150k", "-minrate", "1150k", "-maxrate", "1150k"])
        .args(["-bufsize", "600k", "-x264-params", "nal-hrd=cbr"])
        .args([
            "-g",
            "12",
            "-keyint_min",
            "12",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-ac", "1", "-f", "mpegts"])
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg could not write the lab clip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &path).expect("keep the lab clip");
    path
}

/// Why this machine cannot make a lab, if it cannot.
fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need it)".into());
    }
    for tool in ["ip", "tc", "nft"] {
        if find_on_path(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

fn skip<T>(test: &str, why: &str) -> Option<T> {
    if env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test}: cannot build the network lab: {why}; CI must run it (see .ci/run)");
    }
    eprintln!("SKIP: {test}: cannot build the network lab: {why} (on CI this fails)");
    None
}

/// Removes the namespaces of labs whose process is gone (killed before it could clean up),
/// and any program still running in them.
fn remove_leftovers() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(PREFIX)
            .filter(|rest| {
                rest.split_once('-')
                    .is_some_and(|(t, _)| t.len() > PID_DIGITS)
            })
            .and_then(|rest| rest.get(..PID_DIGITS))
            .and_then(|pid| u32::from_str_radix(pid, 36).ok());
        if let Some(pid) = owner {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("lab: removing {name}, left by process {pid}");
                remove_namespace(&name);
            }
        }
    }
}

/// Kills what runs in `ns` (only programs a lab started there), then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-KILL", pid]);
        }
    }
    if let Err(e) = run(&["ip", "netns", "del", ns]) {
        eprintln!("lab: could not remove namespace {ns}: {e}");
    }
}

/// A veth pair: `a_if` in namespace `a`, `b_if` in namespace `b`.
///
/// Each end takes one packet per send (`gso_max_segs 1`): the sender's stack cuts a UDP GSO
/// batch (quinn sends them) into packets before the interface counts it, as a NIC cuts it
/// for the wire. Otherwise a batch passes whole through veths and bridges, and the byte
/// counters hold its IP and UDP headers once instead of once per packet (a few per cent).
fn link_pair(a: &str, a_if: &str, b: &str, b_if: &str) {
    ok(&[
        "ip",
        "-n",
        a,
        "link",
        "add",
        "name",
        a_if,
        "gso_max_segs",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "gso_max_segs",
        "1",
        "netns",
        b,
    ]);
}

/// Gives `host`'s [`HOST_IF`] `addr`/24 and a default route via `lan`.`gateway`.
fn address_host(host: &str, addr: Ipv4Addr, (lan, gateway): ([u8; 3], u8)) {
    ok(&[
        "ip",
        "-n",
        host,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        HOST_IF,
    ]);
    ok(&["ip", "-n", host, "link", "set", HOST_IF, "up"]);
    let gateway = Ipv4Addr::new(lan[0], lan[1], lan[2], gateway).to_string();
    ok(&["ip", "-n", host, "route", "add", "default", "via", &gateway]);
}

/// Shapes what leaves `iface` in `ns` to `bps` with a token bucket.
fn shape(ns: &str, iface: &str, bps: u64) {
    // A bucket of 20 ms at the rate, and never under a dozen full-size packets.
    let burst = (bps / 8 / 50).max(12 * 1514);
    ok(&[
        "tc",
        "-n",
        ns,
        "qdisc",
        "replace",
        "dev",
        iface,
        "root",
        "tbf",
        "rate",
        &format!("{bps}bit"),
        "burst",
        &burst.to_string(),
        "latency",
        QUEUE_LATENCY,
    ]);
}

/// Runs `args`, panicking with what it said if it fails: building the lab must work.
fn ok(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("lab: {e}");
    }
}

/// Runs `args` (no stdin) for its stdout; an error says the command and its stderr.
fn run(args: &[&str]) -> Result<String, String> {
    let (program, rest) = args.split_first().ok_or("empty command")?;
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    finished(args, &out)
}

/// Runs `args` with `input` on its stdin, for its stdout.
fn run_with_input(args: &[&str], input: &str) -> Result<String, String> {
    let (program, rest) = args.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{}: writing its input: {e}", args.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    finished(args, &out)
}

fn finished(args: &[&str], out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}
