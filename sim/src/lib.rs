//! Discrete-event simulator: one broadcaster and many viewers, each running the product's
//! own node rules (the [`starling::mesh::Mesh`] that schedules, and [`starling::node`]'s
//! assembly, upload admission and disconnect reasons) over modelled links in virtual time.
//! Because the simulator copies none of those rules, a result here is a result of the
//! product's decisions.
//!
//! The driver plays the part of [`starling::net`]; what `net` does with sockets (QUIC, TLS,
//! bytes, signatures) is replaced by the model described here. Seeded RNGs (one for joins and
//! departures, one per node for its loss draws) make every run reproducible: same
//! [`SimConfig`] → same [`SimReport`].
//!
//! ## Model
//! - **Time.** Virtual nanoseconds from a base [`std::time::Instant`] captured once; events
//!   run in (time, key) order from a calendar queue (buckets of about a millisecond,
//!   the current one a heap; see `queue.rs`), which pops exactly as a binary heap would.
//!   The key is the scheduling node and its own count of events scheduled (joins,
//!   departures and judging first), so equal times run in an order that does not depend on
//!   how unrelated nodes' work interleaved: the groundwork for running it on two cores.
//! - **Nodes.** Node 0 is the broadcaster ([`starling::mesh::MeshConfig::broadcaster`]); viewers
//!   use [`starling::mesh::MeshConfig::viewer`]. Ids and addresses (`10.x.y.z:7000`) are derived
//!   from the node's index; addresses serve only as dial hints.
//! - **Latency.** Each node draws an access RTT uniformly in `[0.5, 1.5] × rtt_ms`, or with
//!   `--rtt-spread σ` `rtt_ms` times a log-normal factor (mean 1, σ, kept in [0.25, 8]); the
//!   RTT between two nodes is the mean of their two draws, one-way latency half of that.
//!   Two viewers of one site are `lan_rtt_ms` apart.
//! - **Sites** (`--sites 50x4,10x10`: 50 sites of 4 viewers and 10 of 10, within `--peers`;
//!   the rest are homes, and the initial viewers are placed in a shuffled order). A site is
//!   one NAT (`--site-nat`, cone by default) with one public address: each of its viewers is
//!   seen there at a port of its own and has a LAN address, which the mesh carries in its
//!   contacts and peer samples as `net` does; the mesh is told the public address
//!   (`observe_self`), from which it decides by itself who is of its site. A dial between
//!   two viewers of a site goes over the LAN (no NAT, `lan_rtt_ms`) when it names the LAN
//!   address, as `net` dials it first; the public address alone is a hairpin the NAT does not
//!   turn (it fails). The site shares one access RTT and one WAN link of `--site-wan` each
//!   way: a piece between the site and anyone else is booked on the link out (then crosses
//!   the internet) or on the link in, each a token bucket like a node's upload, after the
//!   sender's own link; between two of its viewers it crosses the LAN, unshaped. A link's
//!   queue holds at most 200 ms (the lab's tbf): a piece that would find it longer waits at
//!   its sender in that link's line, and the link lets the uploads in line send a piece each
//!   in turn as it drains, which is how congestion control shares a bottleneck (no loss is
//!   modelled). Site viewers' own uploads are a LAN port's, 100 Mbit/s (`--site-upload`;
//!   `homes`: drawn as the homes' are). A
//!   churn leaver on a site is replaced on that site. Reported: WAN download copies per site
//!   (bytes in by the run's end over the bytes of the segments the site needed: held by one
//!   of its viewers, or judged at one), and where they came from ([`SimDetails`]).
//! - **Upload** is `net`'s `Limiter`: one token bucket per node at its cap (bytes/s), a
//!   burst of `max(cap / 20, 64 KiB)`, starting full, debt allowed. Segment bodies go out in
//!   pieces of `stream::piece_size_for(len)` (16 KiB), and every piece books its bytes when
//!   its upload is ready for it: booked at `t`, it leaves at `max(t, when the debt is paid)`
//!   and lands one latency later. An upload books its next piece when the previous one has
//!   left, so concurrent uploads of a node interleave piece by piece and share the cap
//!   evenly (`--link shared`, the default). `--link fifo` is an ablation: the node sends the
//!   oldest upload with a piece ready first. A node's backlog is the bucket's debt in time.
//!   Headers, requests, replies and control messages travel at latency alone (as in
//!   `net`, only pieces pass the limiter) but count as overhead. Download is unlimited.
//! - **Parts.** A segment moves in [`starling::stream::PARTS`] parts (contiguous runs of
//!   pieces, [`starling::stream::part_pieces`]); every request, push, cancel and transfer is
//!   for one part, so a segment can arrive from several suppliers at once. A receiver
//!   keeps one *assembly* per segment (`net`'s partial): made when the first frame
//!   carrying the signed header lands, gone once the segment is whole or 64 behind the
//!   newest held (at most 16 at once, the oldest dropped first). It records which parts
//!   are complete and, per part, the transfer bringing it. A part is kept when its last
//!   piece lands (the mesh hears `handle_part`); the part that completes the segment
//!   stores it (latency, continuity and delivered bytes count then) and the mesh hears
//!   `handle_segment`. A part with no pieces (a segment of fewer pieces than parts) is
//!   held as soon as the segment's header is: the mesh hears `handle_part` for those at
//!   once, and a transfer of one is answered, never refused.
//! - **Cut-through.** When a part's first frame lands, the mesh hears `handle_receiving`
//!   (for a second copy of the part too). A request for a part the holder is receiving
//!   is relayed: first frame at once, then piece `i` is booked no earlier than it landed
//!   at the relay, so it reaches the requester at `max(landed at the relay, relay's
//!   bucket) + latency`. Each transfer records when each of its pieces lands, and a relay
//!   waiting for a piece is woken when its upstream sends it: one event per piece, with
//!   no fluid approximation. A relay follows one transfer of its part at the relay: the
//!   first whose first frame landed. When that one completes (or another copy completes
//!   the part first), its relays go on from what is here; when it fails (cancelled, its
//!   connection ended), they follow another copy of the part still arriving there, or,
//!   with none, are reset and their requester hears a transfer failure (not `Busy`) one
//!   latency later, which may in turn reset the relays that requester was serving.
//! - **Requests** (as `net` serves them): the request reaches the holder after one-way
//!   latency. A holder that does not upload, or holds neither the segment whole nor the
//!   part complete nor the part arriving, answers `Unavailable`; one with all its upload slots taken, or with more than
//!   1.5 s of limiter debt, answers `Busy`; both land one latency later. Upload slots
//!   (serves and relays, not pushes) are `clamp(cap / stream bitrate, 1, 8)`, the bitrate
//!   learned from headers received (`len × 8 / duration`, smoothed 7:1); 8 while unknown, so
//!   8 at the broadcaster, which receives none. Every home has its uplink as its cap (and
//!   declares it), as if each viewer passed `--upload-limit`; a site's viewers have none
//!   (nor declare one), and each of their paths (requesters on the site, and the others)
//!   learns its slots as `net`'s uncapped viewers do ([`starling::node::PathSlots`]: it
//!   starts at 2; every part served whole to the end reports its bytes, the time from its
//!   start to its last piece landing less the one-way latency, and the uploads sharing the
//!   path), while their LAN port's bucket still paces what they send. A join request
//!   may take one slot more, and so may a request for a part the origin pushed to this node
//!   (its last 16 such parts remembered): the node's [`starling::node::Uploads::admit`]
//!   decides. A slot is held until the last piece has left (or the upload stops; `net`
//!   holds it until the last byte is acknowledged, up to a round trip longer). Busy
//!   backoff is the mesh's own.
//! - **Pushes** need no slot; the origin skips one when its limiter debt is 1.5 s or more.
//!   The origin's pushes go before the requests it serves (`net`'s `UploadClass`): its
//!   link takes turns, pushes first, then served uploads oldest first (`net` shares the
//!   rate evenly among those; the difference is confined to the origin's fallback serving).
//! - **Unwanted** ([`starling::node::Assemblies::first_frame`]): a part of a segment the receiver
//!   holds, or holds 64 newer than, or a part already complete there, is refused when its
//!   first frame lands; the sender stops when that stop reaches it. For a request the mesh
//!   hears a transfer failure.
//! - **Headers.** A request asks for the signed header only when the requester has no
//!   assembly of the segment; a push always carries it. The first frame of a reply is a
//!   `Reply::Part`, with or without the header, sized by `wire::encode`.
//! - **Cancels.** A part request the mesh cancels is dropped by the requester at once (the
//!   relays following it follow another copy or are reset, as above); the holder stops
//!   when the cancel reaches it.
//! - **Loss.** QUIC is reliable, so loss shows as delay: a message (or piece) of `k` packets
//!   (1200 bytes each) takes one extra RTT with probability `1 − (1 − loss)^k`; the pieces
//!   of one stream land in order. Congestion-control slow-down is not modelled. Control
//!   streams stay in order.
//! - **Connections.** A dial to a live node completes after one RTT and both meshes get
//!   `handle_connected` at that instant (the acceptor sees the dialer's address). A dial to a
//!   departed node fails after `dial_timeout_ms` (10 s: `net`'s hello timeout × 2). A node
//!   with as many connections as its `net` cap (8192 broadcaster, 64 viewer) refuses: the
//!   dial fails after one RTT. On `Disconnect` the closer stops using the connection at
//!   once; the close takes effect at once, or 300 ms later for "partner set full" (so the
//!   peer sample queued just before lands first, as `net` does). What was sent before
//!   the close lands; the other side notices one latency after it. Transfers on a
//!   connection end at each side when that side closes or notices.
//! - **Churn.** Departures are a Poisson process of `churn_pct_per_min` % of the initial
//!   audience per minute; each leaver vanishes abruptly (nothing more leaves it) and a fresh
//!   viewer joins at the same instant. Partners notice after `leave_detect_ms` (10 s: the
//!   QUIC idle timeout in `tls.rs`). Until then, uploads to the vanished viewer go on and
//!   charge the sender's bucket, as in `net`, where quinn buffers what the limiter lets
//!   through.
//! - **Timers.** Each mesh is ticked at `poll_timeout()`, which is never in the past. A
//!   wake-up not in the future right after a tick would be a mesh bug: it is deferred by
//!   `tick_floor_ms` (1 ms) and counted in [`SimDetails::stale_wakeups`].
//! - **Publishing.** The origin publishes segment `k` (`bitrate × segment_ms` bytes) at
//!   `(k + 1) × segment_ms` for the first `seconds`, then the run drains for the hold-back so
//!   every published segment's deadline is judged.
//! - **Joining.** The initial viewers start uniformly within `join_window_ms` of segment
//!   `join_after` being published (0 by default), as `benches/swarm`'s do: they join a
//!   running stream rather than wait for it to begin. With −1 they start from time zero,
//!   before the first segment, and need no catch-up.
//! - **Not modelled:** control messages and reply headers queueing on a site's WAN (they take
//!   latency alone, as everywhere; their packets are counted in `site_wan_wire_copies`); loss and retransmission on it; per-connection limits on concurrent serves (8) and pushes (4), which
//!   the mesh's in-flight caps stay under; the 30 s upload timeout; a viewer's store size
//!   (every node keeps 64 segments); CPU time.
//!
//! ## Metrics
//! - `continuity`: over (viewer, segment) pairs where the viewer is present at the segment's
//!   deadline and joined at least `delay × segment` before it was published, the share held
//!   by the deadline `publish + delay × segment` (the playlist hold-back).
//! - `latency_ms`: publish → held, over the first copies viewers accept of the segments
//!   continuity judges them on (1 ms resolution), so the catch-up at join does not count.
//! - `join_ms`: viewer start → its playlist first lists a segment, as
//!   [`starling::playlist::listed_range`] cuts it: a held segment at or before the live edge,
//!   `delay` behind the newest held (segment 0 while fewer exist). Viewers that never get
//!   there are not sampled (see [`SimDetails`]).
//! - `origin_bytes`: segment bytes the origin's link sent, pushes and requests alike;
//!   `delivered_bytes`: segment bytes viewers accepted (first copies only: a second copy is
//!   counted in [`SimDetails::wasted_bytes`]).
//! - `control_overhead`: non-media bytes sent (control frames as `wire::encode` frames them,
//!   hellos, requests, replies' first frames, busy/unavailable replies) / segment bytes sent.
//! - `cpu_s`, `peak_rss_mb`: process figures; [`run`] leaves them zero for the caller
//!   (`benches/sim.rs` reads `/proc`).
//!
//! ## Speed
//! A 10,000-peer run is about 16.6 events per part received (announcements, requests and
//! their `Busy` answers, ticks); [`SimDetails::by_kind`] says where a run's events go.
//!
//! `--threads 2` puts the meshes' half of the work on a second core. The event loop hands
//! an event's mesh calls for a viewer to a worker thread (up to 8 at a time) and goes on
//! with the events after it that commute with it, running the handed-off event's actions
//! when the worker answers, as of that event's time. An event commutes with it when it
//! is at a viewer not linked to the other (not partners, nor until lately), so the two
//! touch no common state, and earlier than one least one-way latency after it, so nothing
//! the actions send can be due before it; events that do not commute wait, passed over
//! (up to 8) while later ones run. The origin's events, dials completing, joins,
//! departures and judging wait for the worker to be idle. Equal times run in the order of
//! per-node keys, so none of this moves the order of anything that does not commute: the
//! figures are the one-thread figures exactly (`tests/sim.rs` checks it).
//!
//! With sites, two viewers of one site count as linked (they share what the site keeps, and
//! are a LAN apart, so the least latency is taken between nodes of different sites), and the
//! events that book a site's WAN links (uploads across one, its line's wake-ups) wait for the
//! worker as the origin's do: those links are booked by uploads of viewers of every kind.
//!
//! Most of an event's time at scale is waiting for memory, so the loop asks the cache for
//! the next few events' slots, transfers, nodes and meshes while the current one runs
//! (`prefetch.rs`, this crate's only `unsafe`); the product carries no such hints. The
//! measured history is in BENCHMARKS.md.

mod engine;
mod link;
mod metrics;
mod prefetch;
mod queue;

use serde::Serialize;
use std::time::Duration;

/// Errors from reading a simulator configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A flag the simulator does not know.
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    /// A flag given without its value.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// A value that does not parse for its flag.
    #[error("bad value {value:?} for {flag}")]
    BadValue {
        /// The flag.
        flag: String,
        /// What was given.
        value: String,
    },
    /// A configuration the model cannot run (the reason says which limit).
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

/// One class of viewer upload capacity in a mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadClass {
    /// Share of viewers in this class (shares are normalised to sum to 1).
    pub share: f64,
    /// Upload capacity as a multiple of the stream's bitrate.
    pub multiple: f64,
}

/// The NAT in front of a simulated viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// None: anyone may dial it.
    Open,
    /// One public address for every destination (Linux masquerade, most home routers):
    /// dialled only once it has sent to the dialler, so two of them meet by a rendezvous.
    Cone,
    /// A public address per destination: it can only dial out, to open nodes.
    Symmetric,
}

/// One class of viewers' NATs in a mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NatClass {
    /// Share of viewers behind this kind (shares are normalised to sum to 1).
    pub share: f64,
    /// The kind.
    pub kind: NatKind,
}

/// One class of sites (offices) in a mix: `count` sites of `members` viewers each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteClass {
    /// Sites of this size.
    pub count: usize,
    /// Viewers on each.
    pub members: usize,
}

/// How a node's upload is shared between the transfers it has under way. Both book pieces
/// on `net`'s token bucket; they differ in whose piece goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkModel {
    /// The oldest upload with a piece ready goes first (an ablation: not what `net` does).
    Fifo,
    /// Every upload books its next piece as soon as the last has left, so they interleave
    /// and split the rate evenly, as `net`'s uploads behind its `Limiter` do (default).
    Shared,
}

/// Everything a run depends on. [`SimConfig::default`] gives the bench defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Viewers at the start (`--peers`); churn keeps the audience at this size.
    pub peers: usize,
    /// Seconds of stream published (`--seconds`).
    pub seconds: f64,
    /// Stream bitrate in bits/s (`--bitrate`).
    pub bitrate_bps: u64,
    /// Segment duration in ms (`--segment-ms`).
    pub segment_ms: u64,
    /// Every viewer's upload in bits/s (`--viewer-upload`); 0 makes viewers leech-only.
    pub viewer_upload_bps: u64,
    /// The broadcaster's upload in bits/s (`--origin-upload`).
    pub origin_upload_bps: u64,
    /// Viewers leaving (and as many joining) per minute, in % of `peers` (`--churn`).
    pub churn_pct_per_min: f64,
    /// Seed of every random choice (`--seed`): the coordinator's and each node's generators.
    pub seed: u64,
    /// Mean RTT between two nodes, ms (`--rtt-ms`).
    pub rtt_ms: f64,
    /// Packet loss in % (`--loss`).
    pub loss_pct: f64,
    /// Playlist hold-back in segments (`--delay`): the viewers' playout budget.
    pub delay_segments: u64,
    /// Viewer upload classes (`--upload-mix`); when non-empty, overrides `viewer_upload_bps`.
    pub upload_mix: Vec<UploadClass>,
    /// Viewers' NATs (`--nat-mix open:0.2,cone:0.6,symmetric:0.2`); empty: every viewer
    /// open, as on one flat network. The broadcaster is always open.
    pub nat_mix: Vec<NatClass>,
    /// Initial viewers start uniformly within this many ms (`--join-window-ms`)…
    pub join_window_ms: u64,
    /// …from the moment segment `join_after` is published (`--join-after`), so they join a
    /// running stream, as `benches/swarm`'s viewers do; −1 starts them at time zero, a
    /// second before the first segment: an audience waiting for a scheduled start.
    pub join_after: i64,
    /// How long partners take to notice an abrupt departure, ms (`--leave-detect-ms`).
    pub leave_detect_ms: u64,
    /// How long a dial to a departed node takes to fail, ms (`--dial-timeout-ms`).
    pub dial_timeout_ms: u64,
    /// How far a wake-up that is not in the future right after a tick is deferred, ms
    /// (`--tick-floor-ms`). The mesh never returns one; this only guards against spinning.
    pub tick_floor_ms: u64,
    /// How uploads are shared (`--link fifo|shared`).
    pub link: LinkModel,
    /// The broadcaster's partner cap (`--origin-partners`; default the product's), so the
    /// overflow path (turned away with a peer sample) can be exercised at small scale. Its
    /// connection cap stays [`ORIGIN_CONNECTION_HEADROOM`] above.
    pub origin_partners: Option<usize>,
    /// Threads (`--threads 1|2`): with 2, a worker runs viewers' mesh calls beside the event
    /// loop (see the module docs, "Speed"). The figures are the same either way.
    pub threads: usize,
    /// Sites (`--sites 50x4,10x8`: 50 sites of 4 viewers and 10 of 8), counted within
    /// `peers`; the other viewers are homes. Empty: no sites.
    pub sites: Vec<SiteClass>,
    /// Each site's WAN link, bits/s each way (`--site-wan`).
    pub site_wan_bps: u64,
    /// The NAT every site sits behind (`--site-nat cone|symmetric`).
    pub site_nat: NatKind,
    /// Site viewers' own upload caps, bits/s (`--site-upload`, by default
    /// [`SITE_LAN_UPLOAD`]); None (`--site-upload homes`): drawn as the homes' are
    /// (`--viewer-upload` or `--upload-mix`).
    pub site_upload_bps: Option<u64>,
    /// RTT between two viewers of one site, over their LAN, ms (`--lan-rtt-ms`).
    pub lan_rtt_ms: f64,
    /// Spread of access RTTs (`--rtt-spread SIGMA`): each node's access RTT is `rtt_ms`
    /// times a log-normal factor of mean 1 and this σ, kept within [0.25, 8]. 0: the
    /// uniform `[0.5, 1.5] × rtt_ms` draw.
    pub rtt_spread: f64,
}

/// How far the broadcaster's connection cap (`net`) sits above its mesh's partner cap.
pub const ORIGIN_CONNECTION_HEADROOM: usize =
    starling::broadcaster::MAX_CONNECTIONS - starling::mesh::BROADCASTER_MAX_PARTNERS;

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            peers: 100,
            seconds: 60.0,
            bitrate_bps: 2_000_000,
            segment_ms: 1000,
            viewer_upload_bps: 3_000_000,
            origin_upload_bps: 8_000_000,
            churn_pct_per_min: 0.0,
            seed: 1,
            rtt_ms: 40.0,
            loss_pct: 0.0,
            delay_segments: 3,
            upload_mix: Vec::new(),
            nat_mix: Vec::new(),
            join_window_ms: 5000,
            join_after: 0,
            leave_detect_ms: 10_000,
            dial_timeout_ms: 10_000,
            tick_floor_ms: 1,
            link: LinkModel::Shared,
            origin_partners: None,
            threads: 1,
            sites: Vec::new(),
            site_wan_bps: 3_000_000,
            site_nat: NatKind::Cone,
            site_upload_bps: Some(SITE_LAN_UPLOAD),
            lan_rtt_ms: 1.0,
            rtt_spread: 0.0,
        }
    }
}

/// Largest audience a run accepts (node ids carry the index in 32 bits; memory is the real limit).
pub const MAX_PEERS: usize = 1_000_000;
/// Longest run accepted, in seconds of stream.
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;
/// A site viewer's own upload by default: an office desktop's LAN port. What bounds a
/// site is its WAN, shared by all its viewers, and their LAN is what spreads a part through
/// the site (drawn as the homes' uplinks, half of a site's viewers could pass a part to
/// their neighbours at half the bitrate, as no office LAN does).
pub const SITE_LAN_UPLOAD: u64 = 100_000_000;

/// Most sites a run accepts.
pub const MAX_SITES: usize = 65_536;
/// Largest hold-back accepted: the model keeps 64 segments per node.
pub const MAX_DELAY_SEGMENTS: u64 = 32;

impl SimConfig {
    /// Reads `--flag value` pairs over the defaults. A bare `--bench` (added by `cargo bench`)
    /// is ignored. Rates take `k`/`M`/`G` suffixes (bits/s).
    pub fn from_args<I, S>(args: I) -> Result<SimConfig, SimError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut c = SimConfig::default();
        let mut it = args.into_iter().map(Into::into);
        while let Some(flag) = it.next() {
            if flag == "--bench" {
                continue;
            }
            let known = [
                "--peers",
                "--seconds",
                "--bitrate",
                "--segment-ms",
                "--viewer-upload",
                "--origin-upload",
                "--churn",
                "--seed",
                "--rtt-ms",
                "--loss",
                "--delay",
                "--upload-mix",
                "--nat-mix",
                "--join-window-ms",
                "--join-after",
                "--leave-detect-ms",
                "--dial-timeout-ms",
                "--tick-floor-ms",
                "--link",
                "--origin-partners",
                "--threads",
                "--sites",
                "--site-wan",
                "--site-nat",
                "--site-upload",
                "--lan-rtt-ms",
                "--rtt-spread",
            ];
            if !known.contains(&flag.as_str()) {
                return Err(SimError::UnknownFlag(flag));
            }
            let value = it
                .next()
                .ok_or_else(|| SimError::MissingValue(flag.clone()))?;
            let bad = || SimError::BadValue {
                flag: flag.clone(),
                value: value.clone(),
            };
            match flag.as_str() {
                "--peers" => c.peers = value.parse().map_err(|_| bad())?,
                "--seconds" => c.seconds = parse_f64(&value).ok_or_else(bad)?,
                "--bitrate" => c.bitrate_bps = parse_rate(&value).ok_or_else(bad)?,
                "--segment-ms" => c.segment_ms = value.parse().map_err(|_| bad())?,
                "--viewer-upload" => c.viewer_upload_bps = parse_rate(&value).ok_or_else(bad)?,
                "--origin-upload" => c.origin_upload_bps = parse_rate(&value).ok_or_else(bad)?,
                "--churn" => c.churn_pct_per_min = parse_f64(&value).ok_or_else(bad)?,
                "--seed" => c.seed = value.parse().map_err(|_| bad())?,
                "--rtt-ms" => c.rtt_ms = parse_f64(&value).ok_or_else(bad)?,
                "--loss" => c.loss_pct = parse_f64(&value).ok_or_else(bad)?,
                "--delay" => c.delay_segments = value.parse().map_err(|_| bad())?,
                "--upload-mix" => c.upload_mix = parse_mix(&value).ok_or_else(bad)?,
                "--nat-mix" => c.nat_mix = parse_nat_mix(&value).ok_or_else(bad)?,
                "--join-window-ms" => c.join_window_ms = value.parse().map_err(|_| bad())?,
                "--join-after" => c.join_after = value.parse().map_err(|_| bad())?,
                "--leave-detect-ms" => c.leave_detect_ms = value.parse().map_err(|_| bad())?,
                "--dial-timeout-ms" => c.dial_timeout_ms = value.parse().map_err(|_| bad())?,
                "--tick-floor-ms" => c.tick_floor_ms = value.parse().map_err(|_| bad())?,
                "--origin-partners" => c.origin_partners = Some(value.parse().map_err(|_| bad())?),
                "--threads" => c.threads = value.parse().map_err(|_| bad())?,
                "--sites" => c.sites = parse_sites(&value).ok_or_else(bad)?,
                "--site-wan" => c.site_wan_bps = parse_rate(&value).ok_or_else(bad)?,
                "--site-nat" => {
                    c.site_nat = match value.as_str() {
                        "cone" => NatKind::Cone,
                        "symmetric" => NatKind::Symmetric,
                        _ => return Err(bad()),
                    }
                }
                "--site-upload" if value == "homes" => c.site_upload_bps = None,
                "--site-upload" => c.site_upload_bps = Some(parse_rate(&value).ok_or_else(bad)?),
                "--lan-rtt-ms" => c.lan_rtt_ms = parse_f64(&value).ok_or_else(bad)?,
                "--rtt-spread" => c.rtt_spread = parse_f64(&value).ok_or_else(bad)?,
                _ => {
                    c.link = match value.as_str() {
                        "fifo" => LinkModel::Fifo,
                        "shared" => LinkModel::Shared,
                        _ => return Err(bad()),
                    }
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the limits the model needs.
    pub fn validate(&self) -> Result<(), SimError> {
        let err = |m| Err(SimError::Invalid(m));
        if self.peers > MAX_PEERS {
            return err("too many peers");
        }
        if !(1..=2).contains(&self.threads) {
            return err("threads must be 1 or 2");
        }
        if !(self.seconds > 0.0 && self.seconds <= MAX_SECONDS) {
            return err("seconds must be in (0, 86400]");
        }
        if self.segment_ms == 0 || self.segment_ms > 60_000 {
            return err("segment-ms must be in [1, 60000]");
        }
        if self.bitrate_bps == 0 {
            return err("bitrate must be positive");
        }
        if self.segment_bytes() > u64::from(starling::stream::MAX_SEGMENT_LEN) {
            return err("segments would exceed the 64 MiB segment limit");
        }
        if self.join_after < -1 {
            return err("join-after must be -1 or a segment number");
        }
        if self.delay_segments > MAX_DELAY_SEGMENTS {
            return err("delay must be at most 32 segments");
        }
        if !(self.rtt_ms >= 0.0 && self.rtt_ms <= 60_000.0) {
            return err("rtt-ms must be in [0, 60000]");
        }
        if !(0.0..100.0).contains(&self.loss_pct) {
            return err("loss must be in [0, 100)");
        }
        if !(0.0..=6000.0).contains(&self.churn_pct_per_min) {
            return err("churn must be in [0, 6000] % per minute");
        }
        if self.upload_mix.iter().any(|c| {
            !(c.share.is_finite() && c.share >= 0.0 && c.multiple.is_finite() && c.multiple >= 0.0)
        }) || (!self.upload_mix.is_empty() && self.upload_mix.iter().all(|c| c.share == 0.0))
        {
            return err("upload-mix shares and multiples must be non-negative, shares not all 0");
        }
        if self
            .nat_mix
            .iter()
            .any(|c| !(c.share.is_finite() && c.share >= 0.0))
            || (!self.nat_mix.is_empty() && self.nat_mix.iter().all(|c| c.share == 0.0))
        {
            return err("nat-mix shares must be non-negative and not all 0");
        }
        if self.site_members() > self.peers {
            return err("sites hold more viewers than --peers");
        }
        if self.sites.iter().any(|c| c.count == 0 || c.members == 0)
            || self.sites.iter().map(|c| c.count).sum::<usize>() > MAX_SITES
        {
            return err("sites need a count and members of at least 1, at most 65536 sites");
        }
        if self.site_wan_bps == 0 {
            return err("site-wan must be positive");
        }
        if self.site_nat == NatKind::Open {
            return err("a site sits behind a cone or symmetric NAT");
        }
        if !(self.lan_rtt_ms > 0.0 && self.lan_rtt_ms <= 1000.0) {
            return err("lan-rtt-ms must be in (0, 1000]");
        }
        if !(0.0..=3.0).contains(&self.rtt_spread) {
            return err("rtt-spread must be in [0, 3]");
        }
        Ok(())
    }

    /// Viewers on sites (the rest are homes).
    pub fn site_members(&self) -> usize {
        self.sites
            .iter()
            .map(|c| c.count.saturating_mul(c.members))
            .fold(0, usize::saturating_add)
    }

    /// Bytes in one segment: `bitrate × segment duration`.
    pub fn segment_bytes(&self) -> u64 {
        (self.bitrate_bps as u128 * self.segment_ms as u128 / 8000) as u64
    }

    /// Segment duration.
    pub fn segment(&self) -> Duration {
        Duration::from_millis(self.segment_ms)
    }

    /// Expected resource index: (origin upload + mean viewer upload × peers) / (peers × bitrate).
    pub fn resource_index(&self) -> f64 {
        let viewer = if self.upload_mix.is_empty() {
            self.viewer_upload_bps as f64
        } else {
            let total: f64 = self.upload_mix.iter().map(|c| c.share).sum();
            self.upload_mix
                .iter()
                .map(|c| c.share / total * c.multiple * self.bitrate_bps as f64)
                .sum()
        };
        let need = self.peers.max(1) as f64 * self.bitrate_bps as f64;
        (self.origin_upload_bps as f64 + viewer * self.peers as f64) / need
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `2M`, `500k`, `1.5G`, `64000` → bits/s: the programs' [`Rate`](starling::rate::Rate)
/// syntax, plus `0` (a peer that uploads nothing), which the simulator allows.
pub fn parse_rate(s: &str) -> Option<u64> {
    if parse_f64(s.trim()) == Some(0.0) {
        return Some(0);
    }
    s.parse::<starling::rate::Rate>().ok().map(|r| r.0)
}

/// `open:0.2,cone:0.6,symmetric:0.2` → NAT classes (kind : share).
pub fn parse_nat_mix(s: &str) -> Option<Vec<NatClass>> {
    let mut out = Vec::new();
    for part in s.split(',').take(16) {
        let (kind, share) = part.trim().split_once(':')?;
        let kind = match kind.trim() {
            "open" => NatKind::Open,
            "cone" => NatKind::Cone,
            "symmetric" => NatKind::Symmetric,
            _ => return None,
        };
        out.push(NatClass {
            share: parse_f64(share.trim())?,
            kind,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// `50x4,10x8` → site classes (count x members).
pub fn parse_sites(s: &str) -> Option<Vec<SiteClass>> {
    let mut out = Vec::new();
    for part in s.split(',').take(64) {
        let (count, members) = part.trim().split_once(['x', 'X'])?;
        out.push(SiteClass {
            count: count.trim().parse().ok()?,
            members: members.trim().parse().ok()?,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// `0.5:0.5x,0.3:1.5x,0.2:3x` → upload classes (share : multiple of the bitrate).
pub fn parse_mix(s: &str) -> Option<Vec<UploadClass>> {
    let mut out = Vec::new();
    for part in s.split(',').take(64) {
        let (share, mult) = part.trim().split_once(':')?;
        let mult = mult.trim();
        let mult = mult.strip_suffix(['x', 'X']).unwrap_or(mult);
        out.push(UploadClass {
            share: parse_f64(share.trim())?,
            multiple: parse_f64(mult)?,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Join-time percentiles, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct JoinMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Events processed, by what they were: where a run's time goes, since an event costs
/// about the same whatever it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// `Have` messages reaching a partner.
    pub have: u64,
    /// Buffer maps reaching a partner.
    pub buffer_map: u64,
    /// Other control messages (peer samples, swarm estimates) reaching a partner.
    pub other_control: u64,
    /// Part requests reaching the holder.
    pub request: u64,
    /// `Busy` answers reaching the requester.
    pub busy: u64,
    /// `Unavailable` answers and resets reaching the requester.
    pub failed: u64,
    /// A part's first frame reaching the receiver.
    pub first_frame: u64,
    /// A part's last piece reaching the receiver.
    pub last_piece: u64,
    /// Upload pumps (a piece leaves, or the next is here to send).
    pub pump: u64,
    /// A receiver's stop reaching the sender.
    pub stop: u64,
    /// Mesh ticks, superseded ones included.
    pub tick: u64,
    /// Dials completing or failing, closes and their notices.
    pub connection: u64,
    /// Publishing, joins, departures, deadlines judged, seed checks.
    pub other: u64,
}

impl EventCounts {
    /// Each kind with its name, for the bench's summary.
    pub fn named(&self) -> [(&'static str, u64); 13] {
        [
            ("have", self.have),
            ("buffer map", self.buffer_map),
            ("other control", self.other_control),
            ("request", self.request),
            ("busy", self.busy),
            ("failed", self.failed),
            ("first frame", self.first_frame),
            ("last piece", self.last_piece),
            ("pump", self.pump),
            ("stop", self.stop),
            ("tick", self.tick),
            ("connection", self.connection),
            ("other", self.other),
        ]
    }
}

/// Figures beyond the report's JSON, for the human summary and for tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimDetails {
    /// Segments published.
    pub segments: u64,
    /// Viewers that ever ran (initial plus churn joiners).
    pub viewers_started: u64,
    /// Viewers that left (churn).
    pub viewers_left: u64,
    /// Viewers whose playlist listed a segment.
    pub viewers_playable: u64,
    /// (viewer, segment) pairs judged for continuity.
    pub judged: u64,
    /// Of those, held by the deadline.
    pub on_time: u64,
    /// Segment bytes sent by all nodes (origin included), wasted copies included.
    pub media_sent_bytes: u64,
    /// Segment bytes sent in part transfers whose part the receiver did not keep: second
    /// copies, transfers cut short (cancel, unwanted, reset, disconnection) or sent to a
    /// vanished viewer.
    pub wasted_bytes: u64,
    /// Non-media bytes sent.
    pub control_bytes: u64,
    /// Part requests sent: each asks one supplier for one part, so a segment pulled whole
    /// takes [`starling::stream::PARTS`] of them (this and the counters below count parts).
    pub requests: u64,
    /// Of those, sent to the origin.
    pub origin_requests: u64,
    /// Parts pushed by the origin (seeding).
    pub pushes: u64,
    /// Part requests answered `Busy` (no upload slot free, or limiter backlog over 1.5 s).
    pub busy: u64,
    /// Of those, for the limiter backlog (a slot was free).
    pub busy_backlog: u64,
    /// Seeds the origin pushed that went unacknowledged (each seeded again elsewhere
    /// while fresh).
    pub seeds_unconfirmed: u64,
    /// Part pushes the origin skipped because its limiter backlog was 1.5 s or more.
    pub pushes_skipped: u64,
    /// Part requests served while that part was still arriving at the holder (cut-through
    /// relays).
    pub relayed: u64,
    /// Relays reset because the transfer bringing their part failed and no other copy of
    /// the part was arriving.
    pub relay_resets: u64,
    /// Part transfers refused at their first frame as unwanted (segment held, part already
    /// complete, or too old).
    pub unwanted: u64,
    /// Part requests answered `Unavailable`.
    pub unavailable: u64,
    /// Part requests the mesh cancelled (timed out, or the segment completed without them).
    pub cancels: u64,
    /// Segments viewers completed from parts kept from more than one supplier.
    pub multi_supplier_segments: u64,
    /// Dials attempted.
    pub dials: u64,
    /// Dials that failed (departed target, refused at the connection cap, or kept out by a
    /// NAT).
    pub dial_failures: u64,
    /// Of those, dials a NAT kept out until the dial timed out.
    pub nat_failures: u64,
    /// Dials that got through a NAT on a retry, after the other side had dialled back.
    pub nat_retried: u64,
    /// Mesh ticks run.
    pub ticks: u64,
    /// Tick events popped after an earlier wake-up had replaced them (nothing run).
    pub superseded_ticks: u64,
    /// Ticks after which `poll_timeout` was not in the future (deferred by the tick floor;
    /// 0 unless the mesh breaks its contract).
    pub stale_wakeups: u64,
    /// Events processed.
    pub events: u64,
    /// Events processed, by kind.
    pub by_kind: EventCounts,
    /// Mesh calls run on the worker thread (`--threads 2`; the only figures that differ
    /// from a one-thread run, with [`SimDetails::overlapped`]).
    pub handed_off: u64,
    /// Events the loop ran while the worker had mesh calls of other viewers in hand.
    pub overlapped: u64,
    /// Segments the meshes counted as missed (sum of `MeshStats::missed_deadlines`, live nodes).
    pub mesh_missed: u64,
    /// Viewer partners per live viewer at the end (`MeshStats::partners`).
    pub mean_partners: f64,
    /// Parts viewers kept (first copies), and the sum of the times from their first frame
    /// leaving the sender to their last piece landing, ms.
    pub parts_kept: u64,
    /// See [`SimDetails::parts_kept`].
    pub parts_kept_ms: f64,
    /// Of those, parts a site viewer sent to a viewer off its site (across its WAN), and
    /// the sum of their times, ms.
    pub site_served_parts: u64,
    /// See [`SimDetails::site_served_parts`].
    pub site_served_ms: f64,
    /// Of those, parts a viewer sent into a site (across its WAN), and the sum of their
    /// times, ms: about as long as the sender's upload slot is held.
    pub site_fed_parts: u64,
    /// See [`SimDetails::site_fed_parts`].
    pub site_fed_ms: f64,
    /// For the same parts, the sum of the times from the request (or the decision to push)
    /// to the sender writing the first frame, ms: the request's way there and the wait for
    /// an upload slot and for the sender's link.
    pub site_fed_wait_ms: f64,
    /// Part requests site viewers sent across their WAN (to the origin too).
    pub site_wan_requests: u64,
    /// Of those, sent while a partner of the requester's site held the part complete.
    pub site_wan_requests_partner_held: u64,
    /// Of the others, sent while a partner of its site was receiving the part.
    pub site_wan_requests_partner_arriving: u64,
    /// Of the rest, sent while a viewer of its site that is not its partner held or was
    /// receiving the part.
    pub site_wan_requests_elsewhere_on_site: u64,
    /// Sites run.
    pub sites: u64,
    /// Viewers that ever ran on a site.
    pub site_viewers_started: u64,
    /// (site viewer, segment) pairs judged for continuity, and of those held by the deadline.
    pub site_judged: u64,
    /// See [`SimDetails::site_judged`].
    pub site_on_time: u64,
    /// (viewer, segment) pairs judged and held on time, by the viewer's NAT (open, cone,
    /// symmetric; a site viewer counts as its site's NAT) and by whether its upload is
    /// below the bitrate: `[nat][below]`, as (judged, on time).
    pub judged_by_class: [[(u64, u64); 2]; 3],
    /// Segment bytes the origin sent to viewers behind each NAT kind (open, cone, symmetric).
    pub origin_bytes_by_nat: [u64; 3],
    /// Segment bytes viewers sent to viewers, `[sender's NAT][receiver's NAT]`.
    pub bytes_by_nat: [[u64; 3]; 3],
    /// Live viewers at the end behind each NAT kind, their viewer partners, and of those
    /// partners the ones with an open NAT: `[nat]` as (viewers, partners, open partners).
    pub partners_by_nat: [(u64, u64, u64); 3],
    /// Upload of the live viewers at the end behind each NAT kind, summed in bit/s: against
    /// the symmetric ones' need it shows whether the open viewers (the only ones symmetric
    /// viewers can reach) can carry them at all.
    pub upload_bps_by_nat: [u64; 3],
    /// Segment bytes sent across a site's WAN inwards (every site; wasted copies included,
    /// and bytes still queued on the link at the run's end).
    pub site_wan_down_bytes: u64,
    /// Of those, sent by the origin (pushes and served requests).
    pub site_wan_down_origin_bytes: u64,
    /// Of those, in transfers whose part the site viewer did not keep.
    pub site_wan_down_wasted_bytes: u64,
    /// Segment bytes that crossed a site's WAN outwards.
    pub site_wan_up_bytes: u64,
    /// Segment bytes between two viewers of one site, over their LAN.
    pub site_lan_bytes: u64,
    /// Parts a site viewer kept from across its WAN.
    pub site_wan_parts: u64,
    /// Of those, parts another viewer of the site had already kept from across the WAN (a
    /// second WAN copy of the part for the site).
    pub site_wan_dup_parts: u64,
    /// Of the second copies, the origin's seeding pushes.
    pub site_wan_dup_pushed: u64,
    /// Of the second copies, requests the origin served.
    pub site_wan_dup_origin_served: u64,
    /// WAN download copies per site: segment bytes in across its WAN that landed by the
    /// run's end, over the bytes of the segments it needed (held by one of its viewers or
    /// judged at one); mean over the sites; 0 without sites.
    pub site_wan_copies: f64,
    /// The largest of them.
    pub site_wan_copies_max: f64,
    /// As [`SimDetails::site_wan_copies`], of the bytes on the wire: every message's
    /// packets with their headers, and the acknowledgements coming back (a model of
    /// quinn's packets fitted to the lab's; QUIC handshakes, keep-alives, retransmissions
    /// and path MTU probes are not counted). The lab's offices figure is of this kind.
    pub site_wan_wire_copies: f64,
    /// The largest of them.
    pub site_wan_wire_copies_max: f64,
    /// Site viewer partners per live site viewer at the end, and of them on its own site.
    pub site_mean_partners: f64,
    /// See [`SimDetails::site_mean_partners`].
    pub site_mean_lan_partners: f64,
}

/// What a run measured; serialises to the bench's JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimReport {
    /// Viewers (initial audience).
    pub viewers: usize,
    /// Seconds of stream published.
    pub seconds: f64,
    /// Stream bitrate, bits/s.
    pub bitrate_bps: u64,
    /// Segment duration, ms.
    pub segment_ms: u64,
    /// Segment bytes published.
    pub stream_bytes: u64,
    /// Segment bytes the origin uploaded.
    pub origin_bytes: u64,
    /// `origin_bytes / stream_bytes`: copies of the stream the origin sent.
    pub origin_copies: f64,
    /// With sites: WAN download copies per site, mean over the sites (see
    /// [`SimDetails::site_wan_copies`]); absent without sites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_wan_copies: Option<f64>,
    /// With sites: the same of the bytes on the wire, packets and acknowledgements
    /// ([`SimDetails::site_wan_wire_copies`]); absent without sites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_wan_wire_copies: Option<f64>,
    /// Segment bytes viewers accepted (first copies).
    pub delivered_bytes: u64,
    /// `1 − origin_bytes / delivered_bytes`: share of delivery the viewers carried.
    pub offload: f64,
    /// Share of judged (viewer, segment) pairs held by the deadline; 0 when none were judged.
    pub continuity: f64,
    /// Publish → held.
    pub latency_ms: LatencyMs,
    /// Viewer start → playable.
    pub join_ms: JoinMs,
    /// Non-media bytes / segment bytes sent.
    pub control_overhead: f64,
    /// Process CPU seconds (zero from [`run`]; the bench fills it in).
    pub cpu_s: f64,
    /// Peak resident memory, MB (zero from [`run`]; the bench fills it in).
    pub peak_rss_mb: f64,
    /// Further figures, not part of the JSON.
    #[serde(skip)]
    pub details: SimDetails,
}

/// Runs one simulation. Invalid values are clamped into range (see [`SimConfig::validate`]
/// for the checked form).
pub fn run(config: &SimConfig) -> SimReport {
    engine::Sim::new(&clamped(config)).run()
}

fn clamped(c: &SimConfig) -> SimConfig {
    let mut c = c.clone();
    c.peers = c.peers.min(MAX_PEERS);
    c.seconds = if c.seconds.is_finite() {
        c.seconds.clamp(0.0, MAX_SECONDS)
    } else {
        0.0
    };
    c.segment_ms = c.segment_ms.clamp(1, 60_000);
    c.bitrate_bps = c.bitrate_bps.clamp(
        1,
        u64::from(starling::stream::MAX_SEGMENT_LEN) * 8000 / c.segment_ms,
    );
    c.delay_segments = c.delay_segments.min(MAX_DELAY_SEGMENTS);
    c.threads = c.threads.clamp(1, 2);
    let fin = |v: f64, hi: f64| if v.is_finite() { v.clamp(0.0, hi) } else { 0.0 };
    c.rtt_ms = fin(c.rtt_ms, 60_000.0);
    c.loss_pct = fin(c.loss_pct, 99.0);
    c.churn_pct_per_min = fin(c.churn_pct_per_min, 6000.0);
    c.rtt_spread = fin(c.rtt_spread, 3.0);
    c.lan_rtt_ms = if c.lan_rtt_ms.is_finite() && c.lan_rtt_ms > 0.0 {
        c.lan_rtt_ms.min(1000.0)
    } else {
        1.0
    };
    c.site_wan_bps = c.site_wan_bps.max(1);
    if c.site_nat == NatKind::Open {
        c.site_nat = NatKind::Cone;
    }
    // Sites beyond the audience or the limit are dropped.
    let mut room = c.peers;
    let mut sites = 0usize;
    for s in &mut c.sites {
        s.members = s.members.clamp(1, room.max(1));
        s.count = s.count.min(room / s.members).min(MAX_SITES - sites);
        room -= s.count * s.members;
        sites += s.count;
    }
    c.sites.retain(|s| s.count > 0);
    c.upload_mix
        .retain(|u| u.share.is_finite() && u.share > 0.0 && u.multiple.is_finite());
    for u in &mut c.upload_mix {
        u.multiple = u.multiple.max(0.0);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_over_defaults() {
        let c = SimConfig::from_args([
            "--bench",
            "--peers",
            "250",
            "--bitrate",
            "1.5M",
            "--viewer-upload",
            "500k",
            "--upload-mix",
            "0.5:0.5x,0.5:2x",
        ])
        .unwrap();
        assert_eq!(c.peers, 250);
        assert_eq!(c.bitrate_bps, 1_500_000);
        assert_eq!(c.viewer_upload_bps, 500_000);
        assert_eq!(c.upload_mix.len(), 2);
        assert_eq!(c.upload_mix[1].multiple, 2.0);
        assert_eq!(c.seconds, 60.0);
        assert!(matches!(
            SimConfig::from_args(["--peers"]),
            Err(SimError::MissingValue(_))
        ));
        assert!(matches!(
            SimConfig::from_args(["--nope", "1"]),
            Err(SimError::UnknownFlag(_))
        ));
        assert!(matches!(
            SimConfig::from_args(["--delay", "40"]),
            Err(SimError::Invalid(_))
        ));
        assert!(matches!(
            SimConfig::from_args(["--bitrate", "fast"]),
            Err(SimError::BadValue { .. })
        ));
        assert_eq!(
            SimConfig::from_args(["--join-after", "-1"]).map(|c| c.join_after),
            Ok(-1)
        );
        assert!(matches!(
            SimConfig::from_args(["--join-after", "-2"]),
            Err(SimError::Invalid(_))
        ));
        assert_eq!(c.threads, 1);
        assert_eq!(
            SimConfig::from_args(["--threads", "2"]).map(|c| c.threads),
            Ok(2)
        );
        for bad in ["0", "3"] {
            assert!(matches!(
                SimConfig::from_args(["--threads", bad]),
                Err(SimError::Invalid(_))
            ));
        }
    }

    #[test]
    fn rates_and_mixes() {
        assert_eq!(parse_rate("2M"), Some(2_000_000));
        assert_eq!(parse_rate("2.092M"), Some(2_092_000));
        assert_eq!(parse_rate("64000"), Some(64_000));
        assert_eq!(parse_rate("-1k"), None);
        assert_eq!(parse_rate("0"), Some(0));
        assert_eq!(parse_rate(""), None);
        assert_eq!(parse_mix("1:3x").map(|m| m[0].multiple), Some(3.0));
        assert_eq!(parse_mix("0.5"), None);
        let c = SimConfig {
            upload_mix: parse_mix("0.5:0.5x,0.5:1.5x").unwrap(),
            origin_upload_bps: 0,
            ..SimConfig::default()
        };
        assert!((c.resource_index() - 1.0).abs() < 1e-9);
    }
}
