//! Peer admission: whether a peer's Hello is accepted, with the close code that tells a
//! refused peer why, and which of two connections to one peer is kept.

use crate::stream::{NodeId, StreamId};
use crate::token::{JoinToken, Side, TokenError, BINDING_LEN};
use crate::wire::{self, Control, Reach, Role};
use std::net::SocketAddr;

/// Seconds a token is still accepted past its expiry, and already accepted before its
/// start: the clocks of the node that checks it and of the broadcaster that set it are not
/// the same clock, and a viewer refused for a few seconds of drift would see a private
/// stream fail for no reason it can fix.
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
    /// This connection's TLS exporter bytes ([`crate::tls::token_binding`]), which the
    /// peer's token holder must have signed.
    pub binding: [u8; BINDING_LEN],
    /// Which end of this connection the peer is.
    pub peer_side: Side,
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
    /// The site it was given a name for, as it says.
    pub site: Option<wire::SiteTag>,
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
        TokenError::NotYetValid => 11,
        TokenError::Unbound => 12,
        TokenError::Malformed(_)
        | TokenError::OldFormat
        | TokenError::BadSignature
        | TokenError::BadLifetime(_) => 7,
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
        11 => Some(TokenError::NotYetValid),
        12 => Some(TokenError::Unbound),
        _ => None,
    }
}

/// Checks `peer`'s first control message. A peer refused here never sees a Have or a byte
/// of media: a private stream demands from every peer but the broadcaster, whose key the
/// TLS handshake has already proven, a valid token whose holder signed this connection's
/// exporter (so a token copied off another connection is refused).
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
        site,
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
        let proof = token.ok_or(Refusal::Token(TokenError::Missing))?;
        proof
            .verify(
                &policy.stream,
                policy.min_epoch,
                policy.now_unix_s,
                TOKEN_CLOCK_SKEW_S,
                &policy.binding,
                policy.peer_side,
            )
            .map_err(Refusal::Token)?;
        // Only the stream key signs tokens: a newer epoch means a rotation.
        epoch_seen = Some(proof.token.epoch);
    }
    Ok(PeerHello {
        role: *role,
        uploads: *uploads,
        upload_bps: *upload_bps,
        token: if policy.private {
            token.map(|p| p.token)
        } else {
            None
        },
        epoch_seen,
        observed: *observed,
        local: *local,
        public: *public,
        reach: *reach,
        site: *site,
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
    use crate::token::{Credential, TokenProof};
    use ed25519_dalek::SigningKey;

    /// This connection's exporter, as both ends see it.
    const HERE: [u8; BINDING_LEN] = [7; BINDING_LEN];
    const NOW: u64 = 1_000_000;

    fn hello(stream: StreamId, version: u16, token: Option<TokenProof>) -> Control {
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
            site: None,
        }))
    }

    fn stream_key() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    /// A private stream's policy at `now`, on the connection [`HERE`], for a peer that dialled.
    fn private(now: u64) -> Policy {
        Policy {
            stream: node_id(&stream_key()),
            private: true,
            min_epoch: 0,
            now_unix_s: now,
            binding: HERE,
            peer_side: Side::Dialler,
        }
    }

    /// A credential valid from `NOW` to `NOW + 60` at epoch 3.
    fn credential() -> Credential {
        Credential::issue(
            &stream_key(),
            &SigningKey::from_bytes(&[40; 32]),
            3,
            NOW,
            NOW + 60,
        )
    }

    /// What `policy` answers the credential's holder proving it on `binding` as `side`.
    fn knock(
        policy: &Policy,
        binding: [u8; BINDING_LEN],
        side: Side,
    ) -> Result<PeerHello, Refusal> {
        let proof = credential().prove(&binding, side);
        let msg = hello(policy.stream, wire::PROTOCOL_VERSION, Some(proof));
        check(policy, NodeId([9; 32]), &msg)
    }

    fn code(r: Result<PeerHello, Refusal>) -> Option<TokenError> {
        r.err().and_then(|r| token_refusal(r.close_code().into()))
    }

    #[test]
    fn wrong_version_stream_or_token_are_refused_with_their_codes() {
        let stream = node_id(&stream_key());
        let peer = NodeId([9; 32]);
        let open = Policy {
            private: false,
            ..private(NOW)
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
        let missing = check(
            &private(NOW),
            peer,
            &hello(stream, wire::PROTOCOL_VERSION, None),
        );
        assert_eq!(missing.map_err(|r| r.close_code()).err(), Some(6));
        let good = knock(&private(NOW), HERE, Side::Dialler);
        assert!(
            good.is_ok_and(|h| h.token == Some(*credential().token()) && h.epoch_seen == Some(3))
        );
        // Within the clock-skew tolerance past its expiry, still admitted; then not.
        let drift = knock(&private(NOW + 59 + TOKEN_CLOCK_SKEW_S), HERE, Side::Dialler);
        assert!(drift.is_ok());
        let late = knock(&private(NOW + 60 + TOKEN_CLOCK_SKEW_S), HERE, Side::Dialler);
        assert_eq!(code(late), Some(TokenError::Expired));
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_beyond_the_skew_only() {
        // A checker whose clock is behind the broadcaster's by less than the tolerance.
        let early = knock(&private(NOW - TOKEN_CLOCK_SKEW_S), HERE, Side::Dialler);
        assert!(early.is_ok());
        let too_early = knock(&private(NOW - TOKEN_CLOCK_SKEW_S - 1), HERE, Side::Dialler);
        assert_eq!(code(too_early), Some(TokenError::NotYetValid));
        // A token issued to start in a day, shown today.
        let tomorrow = Credential::issue(
            &stream_key(),
            &SigningKey::from_bytes(&[40; 32]),
            3,
            NOW + 86_400,
            NOW + 2 * 86_400,
        );
        let msg = hello(
            node_id(&stream_key()),
            wire::PROTOCOL_VERSION,
            Some(tomorrow.prove(&HERE, Side::Dialler)),
        );
        let r = check(&private(NOW), NodeId([9; 32]), &msg);
        assert_eq!(r.as_ref().map_err(Refusal::close_code).err(), Some(11));
        assert_eq!(code(r), Some(TokenError::NotYetValid));
    }

    #[test]
    fn a_proof_from_another_connection_or_side_is_refused() {
        // Made on the connection where a collector received it, shown on this one.
        let replayed = knock(&private(NOW), [8; BINDING_LEN], Side::Dialler);
        assert_eq!(
            replayed.as_ref().map_err(Refusal::close_code).err(),
            Some(12)
        );
        assert_eq!(code(replayed), Some(TokenError::Unbound));
        // The acceptor's proof on this connection, shown back to it as the dialler's.
        let reflected = knock(&private(NOW), HERE, Side::Acceptor);
        assert_eq!(code(reflected), Some(TokenError::Unbound));
        // The bare token under someone else's binding signature.
        let stolen = credential().prove(&[8; BINDING_LEN], Side::Dialler);
        let mine = Credential::issue(
            &stream_key(),
            &SigningKey::from_bytes(&[41; 32]),
            3,
            NOW,
            NOW + 60,
        );
        let spliced = TokenProof {
            token: stolen.token,
            binding: mine.prove(&HERE, Side::Dialler).binding,
        };
        let msg = hello(
            node_id(&stream_key()),
            wire::PROTOCOL_VERSION,
            Some(spliced),
        );
        assert_eq!(
            code(check(&private(NOW), NodeId([9; 32]), &msg)),
            Some(TokenError::Unbound)
        );
        // The broadcaster shows no token at all, and is still admitted by its key.
        let origin = check(
            &private(NOW),
            node_id(&stream_key()),
            &hello(node_id(&stream_key()), wire::PROTOCOL_VERSION, None),
        );
        assert!(origin.is_ok());
    }

    #[test]
    fn every_token_refusal_has_a_code_that_reads_back() {
        for e in [
            TokenError::Missing,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::Revoked,
            TokenError::WrongStream,
            TokenError::NotYetValid,
            TokenError::Unbound,
        ] {
            assert_eq!(
                token_refusal(token_close_code(&e).into()),
                Some(e.clone()),
                "{e}"
            );
        }
        assert_eq!(token_close_code(&TokenError::OldFormat), 7);
        assert_eq!(token_refusal(3), None);
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
