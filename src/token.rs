//! Join tokens for private streams: who may join, from when until when, and how to revoke.
//!
//! A [`JoinToken`] is signed by the stream key and names the stream, an *epoch*, a validity
//! window and a *holder key*. The viewer is given a [`Credential`]: the token plus the
//! holder key's secret half. On the wire a node never shows the bare token: it shows a
//! [`TokenProof`], the token plus the holder's signature over the TLS exporter of that very
//! connection, so a token copied off one connection proves nothing on any other.
//!
//! Why bind the token to the connection rather than only show it to a peer that has shown
//! its own first: the collector the review found is itself an admitted member, so it can
//! always show its own token first; ordering would cost a round trip and stop nothing.
//! With the binding, whatever a member collects (from peers that dial it, or that it dials)
//! is a signature over a secret of a connection that no longer matters.
//!
//! The broadcaster keeps its current epoch in a file beside its key ([`TokenEpoch`]);
//! bumping it revokes every token of an older epoch without changing the stream's identity.
//! Pure apart from that file: checks take the time and the connection's exporter bytes as
//! arguments.

use crate::stream::codec::{CodecError, TextCodec};
use crate::stream::key::{read_small_file, write_private_atomically, SmallFileError};
use crate::stream::{NodeId, StreamId};
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every credential string; the digit is the format version.
pub const TOKEN_PREFIX: &str = "starlingtok2";
/// Prefix of the version-1 bearer tokens, refused with their own error: they name no
/// holder, so any node that saw one could reuse it.
pub const OLD_TOKEN_PREFIX: &str = "starlingtok1";
/// Longest credential string accepted (a real one is about 300 characters).
pub const MAX_TOKEN_TEXT: usize = 512;
/// Longest lifetime a token may be issued for, and longest it may wait to start.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// The TLS exporter label (RFC 8446 section 7.5) of the bytes a holder signs.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-starling-token-binding";
/// Length of the exporter value a holder signs.
pub const BINDING_LEN: usize = 32;

/// Longest token epoch file read (it holds one `epoch=N` line).
const MAX_EPOCH_FILE: u64 = 256;

/// Domain separation: a token signature can never pass for a segment header's or any other.
const TOKEN_CONTEXT: &[u8] = b"starling join token v2\0";
/// Domain separation of the holder's signature over a connection's exporter.
const BINDING_CONTEXT: &[u8] = b"starling token binding v1\0";

/// Why a token is not accepted, or cannot be read or issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A private stream's node was reached without a token.
    #[error("this stream is private: ask the broadcaster for a token and pass --token")]
    Missing,
    /// The text is not a Starling join token.
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    /// A version-1 token (`starlingtok1…`), which this version no longer accepts.
    #[error("this join token (starlingtok1…) is of an older format that is no longer accepted: ask the broadcaster for a new one")]
    OldFormat,
    /// The token names another stream.
    #[error("the join token is for another stream")]
    WrongStream,
    /// The signature does not verify under the stream key (forged or altered).
    #[error("the join token's signature is invalid")]
    BadSignature,
    /// The token came without its holder's signature over this connection: a copy.
    #[error("the join token was not proven by its holder on this connection (a copied token is refused)")]
    Unbound,
    /// The token's start time has not come yet.
    #[error(
        "the join token is not valid yet: wait for its start time, or check this computer's clock"
    )]
    NotYetValid,
    /// The token's expiry has passed.
    #[error("the join token has expired: ask the broadcaster for a new one")]
    Expired,
    /// The broadcaster has rotated its token epoch past this token's.
    #[error("the join token was revoked: ask the broadcaster for a new one")]
    Revoked,
    /// A lifetime such as `2h` could not be read.
    #[error("bad lifetime {0:?}: use a number with s, m, h or d (e.g. 30m, 2h, 7d), at most 366d")]
    BadLifetime(String),
}

/// Which end of a connection signed a [`TokenProof`]: part of what is signed, so a proof
/// cannot be reflected back to the node that made it on the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node that dialled.
    Dialler,
    /// The node that accepted.
    Acceptor,
}

/// The signed facts of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct TokenClaims {
    stream: StreamId,
    epoch: u32,
    holder: NodeId,
    not_before_unix_s: u64,
    expires_unix_s: u64,
}

/// Permission for the holder of one key to join one private stream within a time window,
/// signed by the stream key.
///
/// Not a secret by itself: it admits only with a [`TokenProof`] made with the holder key's
/// secret, which only the [`Credential`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The stream it admits to.
    pub stream: StreamId,
    /// The broadcaster's token epoch when it was issued; older epochs are revoked.
    pub epoch: u32,
    /// The public half of the holder key, which must sign each connection's exporter.
    pub holder: NodeId,
    /// Seconds since the Unix epoch before which it is refused.
    pub not_before_unix_s: u64,
    /// Seconds since the Unix epoch after which it is refused.
    pub expires_unix_s: u64,
    /// ed25519 signature by the stream key over the context string
    /// `starling join token v2\0` followed by postcard(claims).
    pub signature: Signature,
}

impl JoinToken {
    /// Issues a token for `key`'s stream, held by `holder`.
    pub fn issue(
        key: &SigningKey,
        holder: NodeId,
        epoch: u32,
        not_before_unix_s: u64,
        expires_unix_s: u64,
    ) -> JoinToken {
        let claims = TokenClaims {
            stream: crate::stream::node_id(key),
            epoch,
            holder,
            not_before_unix_s,
            expires_unix_s,
        };
        JoinToken {
            stream: claims.stream,
            epoch,
            holder,
            not_before_unix_s,
            expires_unix_s,
            signature: key.sign(&signed_bytes(&claims)),
        }
    }

    /// Checks that the token admits to `stream` at `now_unix_s`, give or take `skew_s`
    /// seconds of clock difference, given that the newest epoch known to be signed by the
    /// broadcaster is `min_epoch`. Says nothing about who shows it: that is
    /// [`TokenProof::verify`].
    pub fn verify(
        &self,
        stream: &StreamId,
        min_epoch: u32,
        now_unix_s: u64,
        skew_s: u64,
    ) -> Result<(), TokenError> {
        self.verify_signature(stream)?;
        self.verify_dates(min_epoch, now_unix_s, skew_s)
    }

    /// The stream key signed it, for `stream`.
    fn verify_signature(&self, stream: &StreamId) -> Result<(), TokenError> {
        if self.stream != *stream {
            return Err(TokenError::WrongStream);
        }
        let claims = TokenClaims {
            stream: self.stream,
            epoch: self.epoch,
            holder: self.holder,
            not_before_unix_s: self.not_before_unix_s,
            expires_unix_s: self.expires_unix_s,
        };
        let key = stream.verifying_key().ok_or(TokenError::BadSignature)?;
        // Strict: a small-order key or R, which verify any message under the lax check, fail.
        key.verify_strict(&signed_bytes(&claims), &self.signature)
            .map_err(|_| TokenError::BadSignature)
    }

    /// Its window and epoch admit at `now_unix_s`, give or take `skew_s`.
    fn verify_dates(&self, min_epoch: u32, now_unix_s: u64, skew_s: u64) -> Result<(), TokenError> {
        if now_unix_s.saturating_add(skew_s) < self.not_before_unix_s {
            return Err(TokenError::NotYetValid);
        }
        if now_unix_s.saturating_sub(skew_s) >= self.expires_unix_s {
            return Err(TokenError::Expired);
        }
        if self.epoch < min_epoch {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }
}

/// A token as shown on one connection: with its holder's signature over that connection's
/// TLS exporter ([`BINDING_LABEL`]) and the signer's [`Side`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenProof {
    /// The token.
    pub token: JoinToken,
    /// ed25519 signature by the token's holder key over `starling token binding v1\0`, the
    /// signer's side (0 dialler, 1 acceptor) and the connection's exporter bytes.
    pub binding: Signature,
}

impl TokenProof {
    /// Checks the token as [`JoinToken::verify`] does, and that its holder signed `binding`
    /// (this connection's exporter) as the `side` the peer is on. The stream's signature
    /// first, then the holder's, then the dates: nobody learns whether dates would pass
    /// without both.
    pub fn verify(
        &self,
        stream: &StreamId,
        min_epoch: u32,
        now_unix_s: u64,
        skew_s: u64,
        binding: &[u8; BINDING_LEN],
        side: Side,
    ) -> Result<(), TokenError> {
        self.token.verify_signature(stream)?;
        let holder = self
            .token
            .holder
            .verifying_key()
            .ok_or(TokenError::Unbound)?;
        holder
            .verify_strict(&binding_bytes(binding, side), &self.binding)
            .map_err(|_| TokenError::Unbound)?;
        self.token.verify_dates(min_epoch, now_unix_s, skew_s)
    }
}

/// What a viewer of a private stream is given: its token and the holder key's secret.
/// The secret never goes on the wire; it signs each connection's exporter.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    token: JoinToken,
    holder_secret: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and panic messages.
        f.debug_struct("Credential")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Issues a credential for `key`'s stream held by `holder` (a fresh random key for each
    /// one the broadcaster hands out), valid from `not_before_unix_s` to `expires_unix_s`.
    pub fn issue(
        key: &SigningKey,
        holder: &SigningKey,
        epoch: u32,
        not_before_unix_s: u64,
        expires_unix_s: u64,
    ) -> Credential {
        let holder_id = crate::stream::node_id(holder);
        Credential {
            token: JoinToken::issue(key, holder_id, epoch, not_before_unix_s, expires_unix_s),
            holder_secret: holder.to_bytes(),
        }
    }

    /// The token it holds.
    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    /// The token with the holder's signature over this connection's exporter `binding`,
    /// signed as `side`.
    pub fn prove(&self, binding: &[u8; BINDING_LEN], side: Side) -> TokenProof {
        let holder = SigningKey::from_bytes(&self.holder_secret);
        TokenProof {
            token: self.token,
            binding: holder.sign(&binding_bytes(binding, side)),
        }
    }

    /// The copy-pasteable form: `starlingtok2` + lowercase base32 of the postcard encoding.
    pub fn encode(&self) -> String {
        self.to_text()
    }

    /// Parses a credential string: exactly what [`Credential::encode`] writes, with any
    /// whitespace around it ignored. Says nothing about whether its token is valid: that is
    /// [`JoinToken::verify`].
    pub fn decode(text: &str) -> Result<Credential, TokenError> {
        if text.trim().starts_with(OLD_TOKEN_PREFIX) {
            return Err(TokenError::OldFormat);
        }
        let cred = Credential::from_text(text).map_err(|e| {
            TokenError::Malformed(match e {
                CodecError::WrongPrefix => "it does not start with 'starlingtok2'",
                other => other.reason(),
            })
        })?;
        match cred.token.stream.verifying_key() {
            None => {
                return Err(TokenError::Malformed(
                    "stream key is not a valid ed25519 key",
                ))
            }
            // A small-order key makes forgeries trivial under a lax check; no real key is one.
            Some(k) if k.is_weak() => {
                return Err(TokenError::Malformed(
                    "stream key is a weak (small-order) ed25519 key",
                ))
            }
            Some(_) => {}
        }
        let holder = SigningKey::from_bytes(&cred.holder_secret);
        if crate::stream::node_id(&holder) != cred.token.holder {
            return Err(TokenError::Malformed(
                "its secret does not match the key the token names",
            ));
        }
        Ok(cred)
    }
}

impl TextCodec for Credential {
    const PREFIX: &'static str = TOKEN_PREFIX;
    const MAX_TEXT: usize = MAX_TOKEN_TEXT;
}

fn signed_bytes(claims: &TokenClaims) -> Vec<u8> {
    let mut out = TOKEN_CONTEXT.to_vec();
    // Encoding plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(claims).unwrap_or_default());
    out
}

fn binding_bytes(binding: &[u8; BINDING_LEN], side: Side) -> Vec<u8> {
    let mut out = BINDING_CONTEXT.to_vec();
    out.push(match side {
        Side::Dialler => 0,
        Side::Acceptor => 1,
    });
    out.extend_from_slice(binding);
    out
}

/// What a node of a stream must show, and demand, to connect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Admission {
    /// A public stream: anyone with the ticket may join.
    #[default]
    Open,
    /// The broadcaster of a private stream at this token epoch. It shows no token (the
    /// TLS handshake proves it holds the stream key) and tells peers its epoch.
    Broadcaster {
        /// Tokens of older epochs are revoked.
        epoch: u32,
    },
    /// A viewer of a private stream, holding this credential.
    Invited(Credential),
}

impl Admission {
    /// Whether peers must present a valid token.
    pub fn is_private(&self) -> bool {
        !matches!(self, Admission::Open)
    }

    /// The credential this node proves its admission with, if any.
    pub fn credential(&self) -> Option<&Credential> {
        match self {
            Admission::Invited(c) => Some(c),
            _ => None,
        }
    }

    /// The newest token epoch this node knows from its own configuration.
    pub fn epoch(&self) -> u32 {
        match self {
            Admission::Open => 0,
            Admission::Broadcaster { epoch } => *epoch,
            Admission::Invited(c) => c.token.epoch,
        }
    }
}

/// Parses a token lifetime: a whole number with a unit, `s`, `m`, `h` or `d` (`30m`, `2h`, `7d`).
pub fn parse_lifetime(text: &str) -> Result<Duration, TokenError> {
    let bad = || TokenError::BadLifetime(text.to_string());
    let t = text.trim();
    let unit_at = t.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = (t.get(..unit_at).ok_or_else(bad)?, t.get(unit_at..));
    let per = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3600,
        Some("d") => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = n.checked_mul(per).ok_or_else(bad)?;
    let d = Duration::from_secs(secs);
    if secs == 0 || d > MAX_LIFETIME {
        return Err(bad());
    }
    Ok(d)
}

/// The broadcaster's token epoch, kept in `<key>.tokens` beside the key file.
///
/// Tokens whose epoch is below the current one are revoked. The file never goes back:
/// an unreadable file is an error, never "epoch 0", which would revive revoked tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenEpoch(pub u32);

/// Errors reading or writing the token epoch file.
#[derive(Debug, thiserror::Error)]
pub enum EpochFileError {
    /// The file exists but cannot be read or parsed; it is left untouched.
    #[error("token epoch file {path} is unreadable or corrupt ({why}); fix or restore it: deleting it would revive revoked tokens")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The file could not be written.
    #[error("cannot write token epoch file {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The epoch cannot go higher.
    #[error("the token epoch is already at its maximum")]
    Exhausted,
}

impl TokenEpoch {
    /// The epoch file for a key file.
    pub fn path_for(key_path: &Path) -> PathBuf {
        let mut p = key_path.as_os_str().to_owned();
        p.push(".tokens");
        PathBuf::from(p)
    }

    /// Reads the epoch; a missing file is epoch 0.
    pub fn load(path: &Path) -> Result<TokenEpoch, EpochFileError> {
        let corrupt = |why: String| EpochFileError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        let bytes = match read_small_file(path, MAX_EPOCH_FILE) {
            Ok(file) => file.bytes,
            Err(SmallFileError::Missing) => return Ok(TokenEpoch(0)),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not text".into()))?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("epoch="))
            .and_then(|v| v.trim().parse().ok())
            .map(TokenEpoch)
            .ok_or_else(|| corrupt("no epoch=N line".into()))
    }

    /// Writes the epoch atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), EpochFileError> {
        let text = format!("epoch={}\n", self.0);
        write_private_atomically(path, text.as_bytes()).map_err(|source| EpochFileError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The next epoch: every token issued before it is revoked.
    pub fn rotated(self) -> Result<TokenEpoch, EpochFileError> {
        self.0
            .checked_add(1)
            .map(TokenEpoch)
            .ok_or(EpochFileError::Exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::node_id;
    use ed25519_dalek::Verifier;

    const NOW: u64 = 1_700_000_000;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    /// A credential of `key(1)`'s stream held by `key(50)`, valid from `NOW` for 60 s.
    fn credential(epoch: u32) -> Credential {
        Credential::issue(&key(1), &key(50), epoch, NOW, NOW + 60)
    }

    #[test]
    fn round_trip_and_verify() {
        let c = credential(3);
        let s = c.encode();
        assert!(s.starts_with(TOKEN_PREFIX));
        assert!(s.len() < MAX_TOKEN_TEXT, "{}", s.len());
        let back = Credential::decode(&format!(" {s}\n")).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.token().holder, node_id(&key(50)));
        let stream = node_id(&key(1));
        assert_eq!(back.token().verify(&stream, 3, NOW, 0), Ok(()));
        assert_eq!(back.token().verify(&stream, 0, NOW + 59, 0), Ok(()));
    }

    #[test]
    fn tampered_tokens_fail_their_signature() {
        let k = key(1);
        let stream = node_id(&k);
        let t = *credential(3).token();
        let edits: [fn(&mut JoinToken); 5] = [
            |t| t.expires_unix_s += 3600,
            |t| t.not_before_unix_s -= 3600,
            |t| t.epoch = 4,
            |t| t.holder = node_id(&key(51)),
            |t| t.stream = node_id(&key(2)),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut changed = t;
            edit(&mut changed);
            let want = if changed.stream == stream {
                TokenError::BadSignature
            } else {
                TokenError::WrongStream
            };
            assert_eq!(changed.verify(&stream, 0, NOW, 0), Err(want), "{i}");
        }
        // Signed by someone else for this stream's id.
        let mut forged = JoinToken::issue(&key(2), t.holder, 3, NOW, NOW + 60);
        forged.stream = stream;
        assert_eq!(
            forged.verify(&stream, 0, NOW, 0),
            Err(TokenError::BadSignature)
        );
        // Flipping any character of the text either fails to parse or fails to verify.
        let c = credential(3);
        let text = c.encode();
        for i in TOKEN_PREFIX.len()..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let edited: String = chars.into_iter().collect();
            if let Ok(back) = Credential::decode(&edited) {
                assert!(
                    back == c || back.token().verify(&stream, 0, NOW, 0).is_err(),
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn the_window_wrong_stream_and_older_epoch_are_refused() {
        let k = key(1);
        let stream = node_id(&k);
        let t = *credential(3).token();
        assert_eq!(t.verify(&stream, 0, NOW + 60, 0), Err(TokenError::Expired));
        assert_eq!(t.verify(&stream, 0, u64::MAX, 0), Err(TokenError::Expired));
        assert_eq!(
            t.verify(&stream, 0, NOW - 1, 0),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(t.verify(&stream, 0, 0, 0), Err(TokenError::NotYetValid));
        assert_eq!(
            t.verify(&node_id(&key(2)), 0, NOW, 0),
            Err(TokenError::WrongStream)
        );
        assert_eq!(t.verify(&stream, 4, NOW, 0), Err(TokenError::Revoked));
        assert_eq!(
            t.verify(&stream, u32::MAX, NOW, 0),
            Err(TokenError::Revoked)
        );
    }

    #[test]
    fn the_skew_widens_the_window_on_both_sides_and_no_further() {
        let stream = node_id(&key(1));
        let t = *credential(0).token();
        // A checker whose clock is 30 s behind the issuer's, or 30 s past the expiry.
        assert_eq!(t.verify(&stream, 0, NOW - 30, 60), Ok(()));
        assert_eq!(t.verify(&stream, 0, NOW - 60, 60), Ok(()));
        assert_eq!(
            t.verify(&stream, 0, NOW - 61, 60),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(t.verify(&stream, 0, NOW + 60 + 59, 60), Ok(()));
        assert_eq!(
            t.verify(&stream, 0, NOW + 60 + 60, 60),
            Err(TokenError::Expired)
        );
        // The extremes of the clock do not wrap around.
        let forever = Credential::issue(&key(1), &key(50), 0, 0, u64::MAX);
        assert_eq!(forever.token().verify(&stream, 0, 0, 60), Ok(()));
        assert_eq!(forever.token().verify(&stream, 0, u64::MAX, 60), Ok(()));
    }

    #[test]
    fn a_proof_holds_on_its_own_connection_and_side_only() {
        let stream = node_id(&key(1));
        let c = credential(0);
        let here = [7u8; BINDING_LEN];
        let proof = c.prove(&here, Side::Dialler);
        let check = |p: &TokenProof, binding: &[u8; BINDING_LEN], side| {
            p.verify(&stream, 0, NOW, 0, binding, side)
        };
        assert_eq!(check(&proof, &here, Side::Dialler), Ok(()));
        // Replayed on another connection, or reflected back to its maker on this one.
        assert_eq!(
            check(&proof, &[8u8; BINDING_LEN], Side::Dialler),
            Err(TokenError::Unbound)
        );
        assert_eq!(
            check(&proof, &here, Side::Acceptor),
            Err(TokenError::Unbound)
        );
        // The token of one holder with the binding of another.
        let other = Credential::issue(&key(1), &key(51), 0, NOW, NOW + 60);
        let mixed = TokenProof {
            token: *c.token(),
            binding: other.prove(&here, Side::Dialler).binding,
        };
        assert_eq!(
            check(&mixed, &here, Side::Dialler),
            Err(TokenError::Unbound)
        );
        // A proof checks the token too, signature before dates.
        let mut altered = proof;
        altered.token.expires_unix_s += 1;
        assert_eq!(
            check(&altered, &here, Side::Dialler),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            proof.verify(&stream, 0, NOW + 60, 0, &here, Side::Dialler),
            Err(TokenError::Expired)
        );
        assert_eq!(
            proof.verify(&stream, 0, NOW + 60, 0, &[8u8; BINDING_LEN], Side::Dialler),
            Err(TokenError::Unbound)
        );
    }

    #[test]
    fn a_small_order_holder_key_proves_nothing() {
        let stream = node_id(&key(1));
        let weak = crate::stream::weak::KEY;
        let token = JoinToken::issue(&key(1), weak, 0, NOW, NOW + 60);
        let proof = TokenProof {
            token,
            binding: crate::stream::weak::signature(),
        };
        let here = [7u8; BINDING_LEN];
        let lax = weak.verifying_key().unwrap();
        assert!(
            Verifier::verify(&lax, &binding_bytes(&here, Side::Dialler), &proof.binding).is_ok(),
            "the lax check accepts it"
        );
        assert_eq!(
            proof.verify(&stream, 0, NOW, 0, &here, Side::Dialler),
            Err(TokenError::Unbound)
        );
    }

    #[test]
    fn garbage_and_old_tokens_are_one_clear_error() {
        let t = credential(0).encode();
        for bad in [
            "",
            "starlingtok2",
            "starling1abc",
            "starlingtok2!!!",
            &t[..t.len() - 2],
            &format!("{t}aa"),
            &"a".repeat(MAX_TOKEN_TEXT + 1),
        ] {
            assert!(
                matches!(Credential::decode(bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A version-1 token, as the previous release printed them.
        for old in [
            "starlingtok1",
            " starlingtok1abcdef\n",
            &t.replace("tok2", "tok1"),
        ] {
            assert_eq!(
                Credential::decode(old),
                Err(TokenError::OldFormat),
                "{old:?}"
            );
        }
        assert!(TokenError::OldFormat
            .to_string()
            .contains("ask the broadcaster"));
    }

    /// The text of arbitrary bytes, as a credential would be written.
    fn text_of(bytes: &[u8]) -> String {
        let body = data_encoding::BASE32_NOPAD.encode(bytes);
        format!("{TOKEN_PREFIX}{}", body.to_ascii_lowercase())
    }

    #[test]
    fn a_credential_has_one_text() {
        let c = credential(3);
        let text = c.encode();
        assert_eq!(
            Credential::decode(&text).map(|b| b.encode()),
            Ok(text.clone())
        );
        assert_eq!(
            Credential::decode(&text.to_ascii_uppercase()),
            Err(TokenError::Malformed(
                "it does not start with 'starlingtok2'"
            ))
        );
        let body_upper = format!(
            "{TOKEN_PREFIX}{}",
            text[TOKEN_PREFIX.len()..].to_ascii_uppercase()
        );
        assert_eq!(
            Credential::decode(&body_upper),
            Err(TokenError::Malformed(
                "it has uppercase letters: paste it exactly as printed"
            ))
        );
        let mut bytes = postcard::to_allocvec(&c).unwrap();
        bytes.push(0);
        assert_eq!(
            Credential::decode(&text_of(&bytes)),
            Err(TokenError::Malformed("trailing bytes"))
        );
        // The epoch (byte 32) as a two-byte varint: the same signed token, another text.
        let mut bytes = postcard::to_allocvec(&c).unwrap();
        bytes.splice(32..33, [0x83, 0x00]);
        let same: Credential = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(same, c);
        assert_eq!(
            Credential::decode(&text_of(&bytes)),
            Err(TokenError::Malformed(
                "not in canonical form: paste it exactly as printed"
            ))
        );
    }

    #[test]
    fn a_credential_whose_secret_is_not_its_holder_is_refused() {
        let mut c = credential(0);
        c.holder_secret = key(51).to_bytes();
        assert_eq!(
            Credential::decode(&c.encode()),
            Err(TokenError::Malformed(
                "its secret does not match the key the token names"
            ))
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let c = credential(0);
        let shown = format!("{c:?} {:?}", Admission::Invited(c.clone()));
        let secret = format!("{:?}", key(50).to_bytes());
        assert!(!shown.contains(&secret[1..20]), "{shown}");
        assert!(shown.contains("Credential"));
    }

    #[test]
    fn a_small_order_stream_key_admits_nobody() {
        let weak = crate::stream::weak::KEY;
        let holder = node_id(&key(50));
        let t = JoinToken {
            stream: weak,
            epoch: 0,
            holder,
            not_before_unix_s: NOW,
            expires_unix_s: NOW + 60,
            signature: crate::stream::weak::signature(),
        };
        let claims = TokenClaims {
            stream: weak,
            epoch: 0,
            holder,
            not_before_unix_s: NOW,
            expires_unix_s: NOW + 60,
        };
        let lax = weak.verifying_key().unwrap();
        assert!(
            Verifier::verify(&lax, &signed_bytes(&claims), &t.signature).is_ok(),
            "the lax check this replaced accepts it"
        );
        assert_eq!(t.verify(&weak, 0, NOW, 0), Err(TokenError::BadSignature));
        let c = Credential {
            token: t,
            holder_secret: key(50).to_bytes(),
        };
        assert_eq!(
            Credential::decode(&c.encode()),
            Err(TokenError::Malformed(
                "stream key is a weak (small-order) ed25519 key"
            ))
        );
    }

    #[test]
    fn lifetimes_parse_with_units_and_bounds() {
        assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_lifetime("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_lifetime("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_lifetime("366d"), Ok(MAX_LIFETIME));
        for bad in [
            "",
            "h",
            "2",
            "0h",
            "-1h",
            "+1h",
            "1.5h",
            "2 h",
            "367d",
            "2w",
            "99999999999999999999d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn epoch_file_rotates_and_never_silently_resets() {
        let dir = std::env::temp_dir().join(format!("starling-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = TokenEpoch::path_for(&dir.join("key"));
        assert_eq!(TokenEpoch::load(&path).unwrap(), TokenEpoch(0));
        let next = TokenEpoch(0).rotated().unwrap();
        next.save(&path).unwrap();
        assert_eq!(TokenEpoch::load(&path).unwrap(), TokenEpoch(1));
        std::fs::write(&path, "epoch=banana\n").unwrap();
        assert!(matches!(
            TokenEpoch::load(&path),
            Err(EpochFileError::Corrupt { .. })
        ));
        assert!(TokenEpoch(u32::MAX).rotated().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn epoch_file_writes_follow_no_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("starling-epoch-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = TokenEpoch::path_for(&dir.join("key"));
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        TokenEpoch(4).save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(TokenEpoch::load(&path).unwrap(), TokenEpoch(4));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A leftover temp file of a crash does not block the next save.
        std::fs::write(&tmp, "epoch=9\n").unwrap();
        TokenEpoch(5).save(&path).unwrap();
        assert_eq!(TokenEpoch::load(&path).unwrap(), TokenEpoch(5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn an_epoch_file_that_is_no_file_is_refused_not_read() {
        let dir = std::env::temp_dir().join(format!("starling-epoch-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real");
        std::fs::write(&real, "epoch=3\n").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let long = dir.join("long");
        std::fs::write(&long, "epoch=3\n".repeat(100)).unwrap();
        for (path, why) in [
            (link.as_path(), "symbolic link"),
            (Path::new("/dev/zero"), "not a regular file"),
            (long.as_path(), "too large"),
        ] {
            match TokenEpoch::load(path) {
                Err(e @ EpochFileError::Corrupt { .. }) => {
                    assert!(e.to_string().contains(why), "{e}")
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admission_says_what_a_node_shows() {
        let c = credential(5);
        assert!(!Admission::Open.is_private());
        assert_eq!(Admission::Broadcaster { epoch: 2 }.credential(), None);
        assert_eq!(Admission::Broadcaster { epoch: 2 }.epoch(), 2);
        assert_eq!(Admission::Invited(c.clone()).credential(), Some(&c));
        assert_eq!(Admission::Invited(c).epoch(), 5);
    }
}
