//! The messages peers exchange and their framing.
//!
//! Every frame is a 4-byte big-endian length followed by a postcard body. The
//! length is checked against a per-kind maximum *before* anything is allocated,
//! so a peer claiming a 4 GiB frame costs us four bytes of reading. Pure: the
//! decoder works on a byte buffer ("incomplete" means read more).

use crate::stream::{NodeId, SignedHeader, StreamId, ALL_PARTS, PARTS};
use crate::token::TokenProof;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::SocketAddr;

/// Protocol version spoken in [`Control::Hello`]; a different one is refused.
pub const PROTOCOL_VERSION: u16 = 8;
/// Largest control frame (buffer maps, haves, peer lists).
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;
/// Largest transfer-reply frame: a signed header with up to 1024 piece digests.
pub const MAX_REPLY_FRAME: usize = 40 * 1024;
/// Largest transfer request frame.
pub const MAX_REQUEST_FRAME: usize = 64;
/// Most segments a buffer map describes (bits).
pub const MAX_BUFFER_MAP_BITS: usize = 1024;
/// Most peers in one peer-exchange message.
pub const MAX_PEERS_PER_MESSAGE: usize = 32;

/// Wire errors; each one ends the stream (and usually the connection) it came on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix exceeds the maximum for this frame kind.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Claimed length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame")]
    Malformed,
    /// A message broke a protocol limit (e.g. too many peers).
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// The stream ended in the middle of a frame.
    #[error("truncated frame")]
    Truncated,
}

/// Which program a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The stream's origin: tracker and seed.
    Broadcaster,
    /// A viewer: pulls, relays and serves HLS.
    Viewer,
}

/// How a node can be reached, as it worked out from what its peers saw
/// ([`crate::node::nat::Reachability`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reach {
    /// Not known yet (no peer off its own networks has seen it).
    #[default]
    Unknown,
    /// Reachable at its own address.
    Public,
    /// Behind a NAT that keeps one public address for every destination: reachable by a
    /// simultaneous open.
    Nat,
    /// Behind a NAT that maps each destination apart: it can only dial out.
    Symmetric,
}

impl Reach {
    /// The name `/stats` shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reach::Unknown => "unknown",
            Reach::Public => "public",
            Reach::Nat => "nat",
            Reach::Symmetric => "symmetric",
        }
    }
}

/// A site's name as peers compare it (`--site NAME`): the first bytes of a digest of the
/// stream and the name, so peers of one stream given the same name match, and the name
/// itself is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SiteTag(pub [u8; 8]);

impl SiteTag {
    /// The tag of site `name` in stream `stream`.
    pub fn of(stream: &StreamId, name: &str) -> SiteTag {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-12 site tag");
        h.update(&stream.0);
        h.update(name.as_bytes());
        let mut tag = [0u8; 8];
        h.finalize_xof().fill(&mut tag);
        SiteTag(tag)
    }
}

/// A peer as passed around by the tracker and peer exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its key (dialled by key; the address is only a hint).
    pub id: NodeId,
    /// Where the sender sees it: behind a NAT, its public address.
    pub addr: SocketAddr,
    /// Its address on its own LAN, for peers behind the same public address.
    pub local: Option<SocketAddr>,
    /// How it can be reached, as it said.
    pub reach: Reach,
    /// The site it was given a name for (`--site`), if any.
    pub site: Option<SiteTag>,
}

/// The first message each way on a connection's control stream ([`Control::Hello`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The stream both sides must be in.
    pub stream: StreamId,
    /// What the sender is.
    pub role: Role,
    /// The sender relays to others (false for leech-only viewers).
    pub uploads: bool,
    /// The sender's upload cap in bits/s, if it has one: the broadcaster sums what its
    /// viewers declare to tell joiners whether the swarm can afford their catch-up.
    pub upload_bps: Option<u64>,
    /// Private streams: the sender's join token with its holder's signature over this
    /// connection's TLS exporter (a fixed-size, signed value, useless on any other
    /// connection).
    pub token: Option<TokenProof>,
    /// Private streams: the newest token epoch the sender knows. Believed only from
    /// the broadcaster (the TLS handshake proves who that is); older tokens are revoked.
    pub token_epoch: u32,
    /// The address the sender sees the receiver at: behind a NAT, its public one.
    pub observed: SocketAddr,
    /// The sender's address on its own LAN, for peers behind the same NAT.
    pub local: Option<SocketAddr>,
    /// The address peers off the sender's networks see it at, once one has said.
    pub public: Option<SocketAddr>,
    /// How the sender can be reached, as far as it knows.
    pub reach: Reach,
    /// The site the sender was given a name for (`--site`), if any.
    pub site: Option<SiteTag>,
}

/// Messages on a connection's control stream (the first bidirectional stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// First message each way. A mismatched version or stream closes the connection.
    /// Boxed: it is sent once per connection, and inline it would make every control
    /// message its size; the bytes on the wire are the same.
    Hello(Box<Hello>),
    /// The sender holds, or is receiving, these parts of segment `number` (verified
    /// piece by piece as they arrive, so they can be relayed at once).
    Have {
        /// Segment number.
        number: u64,
        /// Bit `j` set: part `j` (see [`crate::stream::part_pieces`]); never zero.
        parts: u32,
    },
    /// Which segments the sender holds: bit i of `bits` (LSB first) is `first + i`.
    BufferMap {
        /// Number of the first bit.
        first: u64,
        /// Bitmap, at most [`MAX_BUFFER_MAP_BITS`] bits.
        bits: Vec<u8>,
    },
    /// Some peers the sender knows (tracker reply, or peer exchange).
    Peers {
        /// At most [`MAX_PEERS_PER_MESSAGE`].
        peers: Vec<PeerInfo>,
    },
    /// The stream ended after segment `last` (the broadcaster's input ended).
    End {
        /// Number of the last segment.
        last: u64,
    },
    /// From a partner connected to both: `peer` is dialling the receiver right now, so the
    /// receiver dials it back at once and both NATs see traffic go out first (a
    /// simultaneous open).
    Rendezvous {
        /// Whom to dial. Boxed, like the Hello, so it does not make every control message
        /// its size.
        peer: Box<PeerInfo>,
    },
    /// Broadcaster to a viewer as it connects: the swarm's upload, so the viewer can tell
    /// whether catching up behind live would take upload the live segments need.
    Swarm {
        /// The upload the broadcaster and the viewers that declared one have, per such
        /// viewer, as a percentage of the stream's bitrate (a leech-only viewer counts 0).
        upload_pct: u32,
        /// The share of those viewers that connected within the last
        /// [`crate::mesh::JOINING_WINDOW`], in percent (at most 100).
        joining_pct: u32,
    },
    /// From a partner of the receiver's own site: `peer`, a partner of both off the site,
    /// announced these parts to the sender ([`crate::mesh`]'s one listener a site).
    Heard {
        /// The partner that announced them.
        peer: NodeId,
        /// Segment number.
        number: u64,
        /// As in [`Control::Have`]; never zero.
        parts: u32,
    },
    /// `on`: send the sender no more `Have`s, a partner of its site tells it yours;
    /// otherwise send them again.
    Quiet {
        /// Whether to stop.
        on: bool,
    },
}

impl Control {
    /// Enforces the limits serde cannot express.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Control::BufferMap { bits, .. } if bits.len() * 8 > MAX_BUFFER_MAP_BITS => {
                Err(WireError::Violation("buffer map too large"))
            }
            Control::Peers { peers } if peers.len() > MAX_PEERS_PER_MESSAGE => {
                Err(WireError::Violation("too many peers"))
            }
            Control::Have { parts, .. } | Control::Heard { parts, .. }
                if *parts == 0 || *parts & !ALL_PARTS != 0 =>
            {
                Err(WireError::Violation("announced parts out of range"))
            }
            Control::Swarm { joining_pct, .. } if *joining_pct > 100 => {
                Err(WireError::Violation("joining share above 100%"))
            }
            _ => Ok(()),
        }
    }
}

/// The first frame on a transfer stream opened by a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The segment wanted.
    pub number: u64,
    /// Which of its [`PARTS`] parts.
    pub part: u8,
    /// Send the signed header too (the requester does not have it yet).
    pub header: bool,
    /// The requester has just joined and its player waits for this segment: it is served
    /// in a slot beyond the supplier's cap, so a flash crowd's first segments do not queue
    /// behind the live relaying (every slot busy with it) a round of `Busy` at a time. A
    /// requester that claims it on every request gains one slot, no more.
    pub join: bool,
}

impl Request {
    /// Enforces the limits serde cannot express.
    pub fn validate(&self) -> Result<(), WireError> {
        if usize::from(self.part) >= PARTS {
            return Err(WireError::Violation("part out of range"));
        }
        Ok(())
    }
}

/// The answer on a transfer stream (or the first frame of a pushed uni stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The raw bytes of part `part` of segment `number` follow, piece after piece.
    Part {
        /// Segment number.
        number: u64,
        /// Which part.
        part: u8,
        /// The segment's signed header: when the request asked for it, and on every push.
        header: Option<SignedHeader>,
    },
    /// The sender does not hold it (any more).
    Unavailable,
    /// The sender's upload is saturated; ask someone else.
    Busy,
}

/// Encodes one frame: length prefix plus postcard body.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Encoding our own plain data types into a Vec cannot fail.
    let body = postcard::to_allocvec(msg).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// The length of the frame [`encode`] makes of `msg`, without making it: the simulator
/// counts the bytes of every message it models.
pub fn encoded_len<T: Serialize>(msg: &T) -> usize {
    let size = postcard::ser_flavors::Size::default();
    4 + postcard::serialize_with_flavor::<T, _, usize>(msg, size).unwrap_or(0)
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)`: not enough bytes yet (nothing consumed). An oversize length prefix
/// is an error as soon as the prefix is read, before waiting for (or allocating) the body.
pub fn decode<T: DeserializeOwned>(buf: &mut BytesMut, max: usize) -> Result<Option<T>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(prefix);
    let len = u32::from_be_bytes(p) as usize;
    if len > max {
        return Err(WireError::Oversize { len, max });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    let msg = postcard::from_bytes(&body).map_err(|_| WireError::Malformed)?;
    Ok(Some(msg))
}

/// Decodes a length prefix alone, checking it against `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::Oversize { len, max });
    }
    Ok(len)
}

/// Decodes a complete body (after [`frame_len`]).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(body).map_err(|_| WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{node_id, sign_segment};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn samples() -> Vec<Control> {
        vec![
            Control::Hello(Box::new(Hello {
                version: PROTOCOL_VERSION,
                stream: id(1),
                role: Role::Viewer,
                uploads: true,
                upload_bps: Some(3_000_000),
                token: Some(
                    crate::token::Credential::issue(
                        &SigningKey::from_bytes(&[3; 32]),
                        &SigningKey::from_bytes(&[4; 32]),
                        2,
                        9,
                        99,
                    )
                    .prove(&[5; crate::token::BINDING_LEN], crate::token::Side::Dialler),
                ),
                token_epoch: 2,
                observed: "127.0.0.1:9".parse().unwrap(),
                local: None,
                public: None,
                reach: Reach::Unknown,
                site: None,
            })),
            Control::Swarm {
                upload_pct: 130,
                joining_pct: 100,
            },
            Control::Have {
                number: u64::MAX,
                parts: ALL_PARTS,
            },
            Control::BufferMap {
                first: 10,
                bits: vec![0xff, 0x01],
            },
            Control::Peers {
                peers: vec![PeerInfo {
                    id: id(2),
                    addr: "127.0.0.1:9".parse().unwrap(),
                    local: Some("192.168.1.2:9".parse().unwrap()),
                    reach: Reach::Nat,
                    site: None,
                }],
            },
            Control::Rendezvous {
                peer: Box::new(PeerInfo {
                    id: id(3),
                    addr: "[2001:db8::1]:9".parse().unwrap(),
                    local: None,
                    reach: Reach::Unknown,
                    site: None,
                }),
            },
            Control::End { last: 3 },
        ]
    }

    #[test]
    fn control_round_trips_in_one_buffer() {
        let mut buf = BytesMut::new();
        for m in samples() {
            buf.extend_from_slice(&encode(&m));
        }
        for m in samples() {
            let got: Control = decode(&mut buf, MAX_CONTROL_FRAME).unwrap().unwrap();
            assert_eq!(got, m);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn encoded_len_is_the_frame_length() {
        for m in samples() {
            assert_eq!(encoded_len(&m), encode(&m).len(), "{m:?}");
        }
        let req = Request {
            number: 1 << 40,
            part: 7,
            header: true,
            join: false,
        };
        assert_eq!(encoded_len(&req), encode(&req).len());
        assert_eq!(encoded_len(&Reply::Busy), encode(&Reply::Busy).len());
    }

    #[test]
    fn reply_with_header_round_trips_and_fits() {
        let key = SigningKey::from_bytes(&[9; 32]);
        // 16 MiB at the minimum piece size already gives the maximum piece count.
        let data = vec![1u8; 16 * 1024 * 1024];
        let h = sign_segment(&key, 1, 2000, 5, true, &data).unwrap();
        let reply = Reply::Part {
            number: u64::MAX,
            part: PARTS as u8 - 1,
            header: Some(h.clone()),
        };
        let frame = encode(&reply);
        assert!(frame.len() <= MAX_REPLY_FRAME + 4, "{}", frame.len());
        let mut buf = BytesMut::from(&frame[..]);
        let got: Reply = decode(&mut buf, MAX_REPLY_FRAME).unwrap().unwrap();
        assert_eq!(got, reply);
        if let Reply::Part {
            header: Some(h), ..
        } = got
        {
            assert!(h.verify(&node_id(&key)).is_ok());
        }
        let req = Request {
            number: u64::MAX,
            part: PARTS as u8 - 1,
            header: true,
            join: true,
        };
        assert!(encode(&req).len() <= MAX_REQUEST_FRAME + 4);
        assert!(req.validate().is_ok());
        assert!(Request {
            part: PARTS as u8,
            ..req
        }
        .validate()
        .is_err());
    }

    #[test]
    fn oversize_is_rejected_from_the_prefix_alone() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let r: Result<Option<Control>, _> = decode(&mut buf, MAX_CONTROL_FRAME);
        assert_eq!(
            r,
            Err(WireError::Oversize {
                len: u32::MAX as usize,
                max: MAX_CONTROL_FRAME
            })
        );
        assert!(frame_len(u32::MAX.to_be_bytes(), MAX_REPLY_FRAME).is_err());
    }

    #[test]
    fn truncated_waits_and_garbage_fails() {
        let frame = encode(&Control::Have {
            number: 300,
            parts: 1,
        });
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            let r: Option<Control> = decode(&mut buf, MAX_CONTROL_FRAME).unwrap();
            assert!(r.is_none());
            assert_eq!(buf.len(), cut, "nothing consumed while incomplete");
        }
        let mut garbage = BytesMut::new();
        garbage.put_u32(3);
        garbage.put_slice(&[0xff, 0xff, 0xff]);
        let r: Result<Option<Control>, _> = decode(&mut garbage, MAX_CONTROL_FRAME);
        assert_eq!(r, Err(WireError::Malformed));
    }

    #[test]
    fn limits_beyond_serde_are_enforced() {
        let big = Control::BufferMap {
            first: 0,
            bits: vec![0; MAX_BUFFER_MAP_BITS / 8 + 1],
        };
        assert!(big.validate().is_err());
        let many = Control::Peers {
            peers: vec![
                PeerInfo {
                    id: id(1),
                    addr: "1.2.3.4:5".parse().unwrap(),
                    local: None,
                    reach: Reach::Unknown,
                    site: None,
                };
                MAX_PEERS_PER_MESSAGE + 1
            ],
        };
        assert!(many.validate().is_err());
        for parts in [0, ALL_PARTS + 1, u32::MAX] {
            assert!(Control::Have { number: 1, parts }.validate().is_err());
        }
        let over = Control::Swarm {
            upload_pct: 100,
            joining_pct: 101,
        };
        assert!(over.validate().is_err());
        for m in samples() {
            assert!(m.validate().is_ok());
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            // Either an error, "need more", or a message that re-encodes to a frame.
            while let Ok(Some(m)) = decode::<Control>(&mut buf, MAX_CONTROL_FRAME) {
                let _ = m.validate();
            }
            let mut buf = BytesMut::from(&data[..]);
            let _ = decode::<Reply>(&mut buf, MAX_REPLY_FRAME);
            let _ = decode::<Request>(&mut buf, MAX_REQUEST_FRAME);
        }
    }
}
