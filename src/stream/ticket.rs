//! The ticket: the one string a viewer pastes to join a stream.

use super::codec::{CodecError, TextCodec};
use super::{StreamError, StreamId, MAX_TICKET_ADDRS, MAX_TICKET_TEXT, TICKET_PREFIX};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// What a viewer needs to join: the stream key and where the broadcaster listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The stream id (broadcaster's public key).
    pub stream: StreamId,
    /// Addresses the broadcaster's QUIC endpoint is reachable at.
    pub addrs: Vec<SocketAddr>,
}

impl TextCodec for Ticket {
    const PREFIX: &'static str = TICKET_PREFIX;
    const MAX_TEXT: usize = MAX_TICKET_TEXT;
}

impl Ticket {
    /// The copy-pasteable form: `starling1` + lowercase base32 of the postcard encoding.
    pub fn encode(&self) -> String {
        self.to_text()
    }

    /// Parses a ticket string: exactly what [`Ticket::encode`] writes, with any whitespace
    /// around it ignored.
    pub fn decode(text: &str) -> Result<Ticket, StreamError> {
        let ticket = Ticket::from_text(text).map_err(|e| {
            StreamError::BadTicket(match e {
                CodecError::WrongPrefix => "it does not start with 'starling1'",
                other => other.reason(),
            })
        })?;
        if ticket.addrs.is_empty() || ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(StreamError::BadTicket("wrong number of addresses"));
        }
        match ticket.stream.verifying_key() {
            None => Err(StreamError::BadTicket(
                "stream key is not a valid ed25519 key",
            )),
            // A small-order key makes forgeries trivial under a lax check; no real key is one.
            Some(k) if k.is_weak() => Err(StreamError::BadTicket(
                "stream key is a weak (small-order) ed25519 key",
            )),
            Some(_) => Ok(ticket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::node_id;
    use ed25519_dalek::SigningKey;
    use rand::SeedableRng;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn ticket_round_trip_and_garbage() {
        let t = Ticket {
            stream: node_id(&key(3)),
            addrs: vec![
                "127.0.0.1:4433".parse().unwrap(),
                "[::1]:9".parse().unwrap(),
            ],
        };
        let s = t.encode();
        assert!(s.starts_with(TICKET_PREFIX));
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
        assert!(Ticket::decode("starling1").is_err());
        assert!(Ticket::decode("hello").is_err());
        assert!(Ticket::decode(&s[..s.len() - 3]).is_err());
        assert!(Ticket::decode(&format!("{s}0")).is_err());
    }

    fn ticket() -> Ticket {
        Ticket {
            stream: node_id(&key(3)),
            addrs: vec!["192.0.2.7:4433".parse().unwrap()],
        }
    }

    /// The text of arbitrary bytes, as a ticket would be written.
    fn text_of(bytes: &[u8]) -> String {
        let body = data_encoding::BASE32_NOPAD.encode(bytes);
        format!("{TICKET_PREFIX}{}", body.to_ascii_lowercase())
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = postcard::to_allocvec(&ticket()).unwrap();
        assert_eq!(Ticket::decode(&text_of(&bytes)).unwrap(), ticket());
        bytes.push(0);
        assert!(matches!(
            Ticket::decode(&text_of(&bytes)),
            Err(StreamError::BadTicket("trailing bytes"))
        ));
    }

    #[test]
    fn a_ticket_has_one_text() {
        let text = ticket().encode();
        let body = &text[TICKET_PREFIX.len()..];
        let upper = format!("{TICKET_PREFIX}{}", body.replace('a', "A"));
        assert_ne!(upper, text);
        assert!(matches!(
            Ticket::decode(&upper),
            Err(StreamError::BadTicket(
                "it has uppercase letters: paste it exactly as printed"
            ))
        ));
        // The address count (byte 32) written as a two-byte varint: same ticket, other text.
        let mut bytes = postcard::to_allocvec(&ticket()).unwrap();
        bytes.splice(32..33, [0x81, 0x00]);
        assert!(matches!(
            Ticket::decode(&text_of(&bytes)),
            Err(StreamError::BadTicket(
                "not in canonical form: paste it exactly as printed"
            ))
        ));
        // Any one character changed: refused, or the text of another ticket.
        for i in TICKET_PREFIX.len()..text.len() {
            for c in ['a', 'q', '7', 'A'] {
                let mut edited = text.clone();
                edited.replace_range(i..i + 1, &c.to_string());
                if let Ok(t) = Ticket::decode(&edited) {
                    assert_eq!(t.encode(), edited, "{i} {c}");
                }
            }
        }
    }

    #[test]
    fn the_largest_ticket_fits_the_text_limit() {
        let t = Ticket {
            stream: node_id(&key(4)),
            addrs: vec!["[ffff::1]:65535".parse().unwrap(); MAX_TICKET_ADDRS],
        };
        let text = t.encode();
        assert!(text.len() <= MAX_TICKET_TEXT, "{}", text.len());
        assert_eq!(Ticket::decode(&text).unwrap(), t);
    }

    proptest::proptest! {
        #[test]
        fn decode_inverts_encode(seed in 0u64..1000,
                                 addrs in proptest::collection::vec(
                                     proptest::prelude::any::<(std::net::IpAddr, u16)>(),
                                     1..=MAX_TICKET_ADDRS)) {
            let t = Ticket {
                stream: node_id(&key(seed)),
                addrs: addrs.into_iter().map(SocketAddr::from).collect(),
            };
            let text = t.encode();
            proptest::prop_assert_eq!(Ticket::decode(&text).ok(), Some(t));
        }
    }

    #[test]
    fn a_small_order_stream_key_is_refused() {
        let t = Ticket {
            stream: crate::stream::weak::KEY,
            ..ticket()
        };
        assert!(matches!(
            Ticket::decode(&t.encode()),
            Err(StreamError::BadTicket(
                "stream key is a weak (small-order) ed25519 key"
            ))
        ));
        // About half of all y coordinates have no point on the curve.
        let off_curve = (2..=u8::MAX)
            .map(|y| {
                let mut k = [0u8; 32];
                k[0] = y;
                crate::stream::NodeId(k)
            })
            .find(|id| id.verifying_key().is_none())
            .unwrap();
        let off_curve = Ticket {
            stream: off_curve,
            ..ticket()
        };
        assert!(matches!(
            Ticket::decode(&off_curve.encode()),
            Err(StreamError::BadTicket(
                "stream key is not a valid ed25519 key"
            ))
        ));
    }
}
