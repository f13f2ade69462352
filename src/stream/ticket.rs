//! The ticket: the one string a viewer pastes to join a stream.

use super::{StreamError, StreamId, MAX_TICKET_ADDRS, TICKET_PREFIX};
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

impl Ticket {
    /// The copy-pasteable form: `starling1` + lowercase base32 of the postcard encoding.
    pub fn encode(&self) -> String {
        // A Vec-backed postcard encoding of plain data cannot fail.
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!(
            "{TICKET_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    /// Parses a ticket string (surrounding whitespace is ignored).
    pub fn decode(text: &str) -> Result<Ticket, StreamError> {
        let text = text.trim();
        if text.len() > 4096 {
            return Err(StreamError::BadTicket("too long"));
        }
        let body = text
            .strip_prefix(TICKET_PREFIX)
            .ok_or(StreamError::BadTicket("it does not start with 'starling1'"))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| StreamError::BadTicket("not valid base32"))?;
        let ticket: Ticket =
            postcard::from_bytes(&bytes).map_err(|_| StreamError::BadTicket("garbled contents"))?;
        if ticket.addrs.is_empty() || ticket.addrs.len() > MAX_TICKET_ADDRS {
            return Err(StreamError::BadTicket("wrong number of addresses"));
        }
        if ticket.stream.verifying_key().is_none() {
            return Err(StreamError::BadTicket(
                "stream key is not a valid ed25519 key",
            ));
        }
        Ok(ticket)
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
}
