//! Peer admission: whether a peer's Hello is accepted, with the close code that tells a
//! refused peer why, and which of two connections to one peer is kept.

use crate::stream::{NodeId, StreamId};
use crate::token::{JoinToken, TokenError};
use crate::wire::{self, Control, Reach, Role};
use std::net::SocketAddr;

/// Seconds a token is still accepted past its expiry: the clocks of the node that checks
/// it and of the broadcaster that set it are not the same clock, and a viewer refused for
/// a few seconds of drift would see a private stream fail for no reason it can fix.
pub const TOKEN_CLOCK_SKEW_S: u64 = 60;

/// What this node demands of a peer's Hello.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The stream this node is in.
    pub stream: StreamId,
    /// The stream is private: every peer but the broadcaster shows a valid token.
    pub private: bool,
    /// The lowest token epoch not revoked.
    pub min_epoch: u32,
    /// The wall clock (token expiry), Unix seconds.
    pub now_unix_s: u64,
}

/// What an accepted Hello told us.
#[derive(Debug, Clone)]
pub struct PeerHello {
    /// Broadcaster or viewer.
    pub role: Role,
    /// It relays to others.
    pub uploads: bool,
    /// The upload cap it declared (bits/s).
    pub upload_bps: Option<u64>,
    /// Its join token, kept on private streams to close the connection when it expires.
    pub token: Option<JoinToken>,
    /// A token epoch the stream key vouches for (the broadcaster's Hello, or a valid
    /// token): older tokens are revoked from now on.
    pub epoch_seen: Option<u32>,
    /// Where it sees us ([`crate::node::nat::Reachability::observe`]).
    pub observed: SocketAddr,
    /// Its LAN address, for peers of its site.
    pub local: Option<SocketAddr>,
    /// Where peers off its networks see it, as it says.
    pub public: Option<SocketAddr>,
    /// How it says it can be reached.
    pub reach: Reach,
}

/// Why a Hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The first message was not a Hello.
    #[error("hello failed")]
    NotHello,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {theirs} (this node speaks {ours})")]
    Version {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer is in another stream.
    #[error("different stream")]
    OtherStream,
    /// A private stream's peer without a valid token.
    #[error("{0}")]
    Token(TokenError),
}

impl Refusal {
    /// The QUIC close code that carries it, one per token reason so the refused side can
    /// say which ([`token_refusal`] reads it back).
    pub fn close_code(&self) -> u32 {
        match self {
            Refusal::NotHello => 3,
            Refusal::Version { .. } => 4,
            Refusal::OtherStream => 5,
            Refusal::Token(e) => token_close_code(e),
        }
    }
}

/// The close code for a refused or expired token.
pub fn token_close_code(e: &TokenError) -> u32 {
    match e {
        TokenError::Missing => 6,
        TokenError::Expired => 8,
        TokenError::Revoked => 9,
        TokenError::WrongStream => 10,
        TokenError::Malformed(_) | TokenError::BadSignature | TokenError::BadLifetime(_) => 7,
    }
}

/// The token refusal a close code stands for (the inverse of [`token_close_code`]).
pub fn token_refusal(code: u64) -> Option<TokenError> {
    match code {
        6 => Some(TokenError::Missing),
        7 => Some(TokenError::BadSignature),
        8 => Some(TokenError::Expired),
        9 => Some(TokenError::Revoked),
        10 => Some(TokenError::WrongStream),
        _ => None,
    }
}

/// Checks `peer`'s first control message. A peer refused here never sees a Have or a byte
/// of media: a private stream demands a valid token from every peer but the broadcaster,
/// whose key the TLS handshake has already proven.
pub fn check(policy: &Policy, peer: NodeId, msg: &Control) -> Result<PeerHello, Refusal> {
    let Control::Hello(hello) = msg else {
        return Err(Refusal::NotHello);
    };
    let wire::Hello {
        version,
        stream,
        role,
        uploads,
        upload_bps,
        token,
        token_epoch,
        observed,
        local,
        public,
        reach,
    } = &**hello;
    if *version != wire::PROTOCOL_VERSION {
        return Err(Refusal::Version {
            theirs: *version,
            ours: wire::PROTOCOL_VERSION,
        });
    }
    if *stream != policy.stream {
        return Err(Refusal::OtherStream);
    }
    let mut epoch_seen = None;
    if peer == policy.stream {
        epoch_seen = Some(*token_epoch);
    } else if policy.private {
        let t = token.ok_or(Refusal::Token(TokenError::Missing))?;
        let now = policy.now_unix_s.saturating_sub(TOKEN_CLOCK_SKEW_S);
        t.verify(&policy.stream, policy.min_epoch, now)
            .map_err(Refusal::Token)?;
        // Only the stream key signs tokens: a newer epoch means a rotation.
        epoch_seen = Some(t.epoch);
    }
    Ok(PeerHello {
        role: *role,
        uploads: *uploads,
        upload_bps: *upload_bps,
        token: if policy.private { *token } else { None },
        epoch_seen,
        observed: *observed,
        local: *local,
        public: *public,
        reach: *reach,
    })
}

/// Both sides dialled at once and a second connection to `peer` is up: whether to keep the
/// new one (`new_dialed_by_me`) over the one already there. Both keep the connection
/// dialled by the smaller id, so they agree without talking.
pub fn keep_new(me: NodeId, peer: NodeId, new_dialed_by_me: bool, old_dialed_by_me: bool) -> bool {
    new_dialed_by_me == (me < peer) && old_dialed_by_me != new_dialed_by_me
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::node_id;
    use ed25519_dalek::SigningKey;

    fn hello(stream: StreamId, version: u16, token: Option<JoinToken>) -> Control {
        Control::Hello(Box::new(wire::Hello {
            version,
            stream,
            role: Role::Viewer,
            uploads: true,
            upload_bps: Some(3_000_000),
            token,
            token_epoch: 0,
            observed: "127.0.0.1:9".parse().unwrap(),
            local: None,
            public: None,
            reach: wire::Reach::Nat,
        }))
    }

    #[test]
    fn wrong_version_stream_or_token_are_refused_with_their_codes() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let stream = node_id(&key);
        let peer = NodeId([9; 32]);
        let now = 1_000_000;
        let open = Policy {
            stream,
            private: false,
            min_epoch: 0,
            now_unix_s: now,
        };
        let ok = check(&open, peer, &hello(stream, wire::PROTOCOL_VERSION, None));
        assert!(ok.is_ok_and(|h| h.uploads && h.token.is_none() && h.epoch_seen.is_none()));
        let v = check(&open, peer, &hello(stream, 999, None));
        assert_eq!(v.as_ref().map_err(Refusal::close_code).err(), Some(4));
        let other = check(
            &open,
            peer,
            &hello(NodeId([2; 32]), wire::PROTOCOL_VERSION, None),
        );
        assert_eq!(other.err(), Some(Refusal::OtherStream));
        let private = Policy {
            private: true,
            ..open
        };
        let missing = check(&private, peer, &hello(stream, wire::PROTOCOL_VERSION, None));
        assert_eq!(missing.map_err(|r| r.close_code()).err(), Some(6));
        let token = JoinToken::issue(&key, 3, now + 60);
        let good = check(
            &private,
            peer,
            &hello(stream, wire::PROTOCOL_VERSION, Some(token)),
        );
        assert!(good.is_ok_and(|h| h.token.is_some() && h.epoch_seen == Some(3)));
        // Within the clock-skew tolerance past its expiry, still admitted.
        let skewed = Policy {
            now_unix_s: now + 59 + TOKEN_CLOCK_SKEW_S,
            ..private
        };
        let drift = check(
            &skewed,
            peer,
            &hello(stream, wire::PROTOCOL_VERSION, Some(token)),
        );
        assert!(drift.is_ok());
        let expired = Policy {
            now_unix_s: now + 61 + TOKEN_CLOCK_SKEW_S,
            ..private
        };
        let late = check(
            &expired,
            peer,
            &hello(stream, wire::PROTOCOL_VERSION, Some(token)),
        );
        let code = late.map_err(|r| r.close_code()).err();
        assert_eq!(
            code.and_then(|c| token_refusal(c.into())),
            Some(TokenError::Expired)
        );
    }

    #[test]
    fn both_ends_keep_the_connection_dialled_by_the_smaller_id() {
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        // a dialled the new one, b the old: both keep the new one, a's.
        assert!(keep_new(a, b, true, false));
        assert!(keep_new(b, a, false, true));
        // b dialled the new one: both keep the old.
        assert!(!keep_new(a, b, false, true));
        assert!(!keep_new(b, a, true, false));
    }
}
