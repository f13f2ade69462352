//! # Starling — peer-to-peer live webcasts
//!
//! A broadcaster cuts a live MPEG-TS source into numbered segments, signs a
//! header for each, and seeds them into a QUIC mesh of viewers. Viewers pull the
//! segments they miss from their partners and serve the verified stream as HLS
//! on localhost, so any standard player can play it.
//!
//! The crate keeps pure logic apart from I/O, the way quinn splits
//! `quinn-proto` from `quinn`:
//!
//! Pure (no sockets, no clock reads; time and randomness are arguments):
//! - [`ts`] — MPEG-TS scanning and the keyframe segmenter: bytes in, segments out.
//! - [`stream`] — identities, tickets, signed segment headers and verification.
//! - [`wire`] — the messages peers exchange and their bounded framing.
//! - [`mesh`] — one node's state machine: partners, buffer maps, scheduling.
//! - [`playlist`] — the playout window rendered as an HLS media playlist.
//! - [`rate`] — the token bucket both programs use to cap upload.
//! - [`token`] — join tokens for private streams: signed, expiring, revocable by epoch.
//! - [`sim`] — a discrete-event simulator driving many [`mesh`] nodes in virtual time.
//!
//! I/O (thin drivers around the pure parts):
//! - [`clock`] — the two clocks the drivers read: tokio's monotonic one (paused tests pause
//!   it) and the wall clock in Unix seconds.
//! - [`tls`] — QUIC/TLS configuration that authenticates peers by ed25519 key.
//! - [`source`] — stdin, a paced file, an ffmpeg child, the built-in demo clip.
//! - [`store`] — the verified segments a node holds, shared with HTTP.
//! - [`net`] — the quinn endpoint and per-connection tasks that drive [`mesh`].
//! - [`http`] — the local hyper server: playlist, segments, stats.
//!
//! The programs (thin binaries around these):
//! - [`broadcaster`] — source → signed segments → seeding node, ticket, `/stats`.
//! - [`viewer`] — ticket → mesh node → local HLS, status line.
//! - [`cli`] — logging, signals and defaults both programs share.
// Denied, not forbidden: `prefetch` holds the one exception, a cache hint.
#![deny(unsafe_code)]

pub mod broadcaster;
pub mod cli;
pub mod clock;
pub mod http;
pub mod mesh;
pub mod net;
pub mod playlist;
mod prefetch;
pub mod rate;
pub mod sim;
pub mod source;
pub mod store;
pub mod stream;
pub mod tls;
pub mod token;
pub mod ts;
pub mod viewer;
pub mod wire;
