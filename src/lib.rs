//! # Starling — peer-to-peer live webcasts
//!
//! A broadcaster cuts a live MPEG-TS source into numbered segments, signs a
//! header for each, and seeds them into a QUIC mesh of viewers. Viewers pull the
//! segments they miss from their partners and serve the verified stream as HLS
//! on localhost, so any standard player can play it.
//!
//! ## A segment's path
//!
//! ```text
//! source → ts → stream → node (mesh) → net → store → playlist → http
//! ```
//!
//! - [`source`] — stdin, a paced file, an ffmpeg child, the built-in demo clip: bytes.
//! - [`ts`] — MPEG-TS scanning and the keyframe segmenter: bytes in, numbered segments out.
//! - [`stream`] — keys, tickets, the signed segment header and its verification.
//! - [`node`] — what a node decides: [`mesh`] schedules (partners, buffer maps, whom to ask
//!   for which part, seeding, whom to dial); [`node`] holds the rest (assembly bounds, upload
//!   admission, Hello admission, disconnect reasons). The simulator drives both.
//! - [`net`] — the QUIC driver: endpoint, connections, transfers, the upload [`net::Limiter`];
//!   it moves bytes and asks [`node`] and [`mesh`] what to do. [`wire`] frames its messages.
//! - [`store`] — the verified segments a node holds; only verified bytes enter it.
//! - [`playlist`] — the playout window as an HLS media playlist.
//! - [`http`] — the local hyper server: playlist, segments, stats, [`metrics`].
//!
//! Pure (no sockets, no clock reads; time and randomness are arguments): `ts`, `stream`,
//! `wire`, `mesh`, `node`, `playlist`, [`rate`] (the token bucket), [`token`] (join tokens
//! for private streams), [`quantile`] (the one percentile convention). I/O: `source`, `net`,
//! [`tls`] (QUIC/TLS authenticating peers by ed25519 key), `store`, `http`, `metrics`, and [`clock`]
//! (the one place that reads the clocks: tokio's, so paused tests pause it, and the wall clock).
//!
//! The programs are thin binaries around [`broadcaster`] (source → signed segments →
//! seeding node, ticket, `/stats`) and [`viewer`] (ticket → node → local HLS, status
//! line), with [`cli`] (logging, signals, defaults) shared.
#![forbid(unsafe_code)]

pub mod broadcaster;
pub mod cli;
pub mod clock;
pub mod http;
pub mod llhls;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
pub mod playlist;
pub mod quantile;
pub mod rate;
pub mod source;
pub mod store;
pub mod stream;
pub mod tls;
pub mod token;
pub mod ts;
pub mod viewer;
pub mod wire;
