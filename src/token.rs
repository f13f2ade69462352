//! Join tokens for private streams: who may join, until when, and how to revoke.
//!
//! A [`JoinToken`] is signed by the stream key, names the stream, an *epoch* and an
//! expiry. The broadcaster keeps its current epoch in a file beside its key
//! ([`TokenEpoch`]); bumping it revokes every token of an older epoch without changing
//! the stream's identity. Pure apart from that file: checks take the time as an argument.

use crate::stream::codec::{CodecError, TextCodec};
use crate::stream::key::{read_small_file, write_private_atomically, SmallFileError};
use crate::stream::StreamId;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every token string; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "starlingtok1";
/// Longest token string accepted (a real one is about 190 characters).
pub const MAX_TOKEN_TEXT: usize = 512;
/// Longest lifetime a token may be issued for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// Longest token epoch file read (it holds one `epoch=N` line).
const MAX_EPOCH_FILE: u64 = 256;

/// Domain separation: a token signature can never pass for a segment header's or any other.
const TOKEN_CONTEXT: &[u8] = b"starling join token v1\0";

/// Why a token is not accepted, or cannot be read or issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A private stream's node was reached without a token.
    #[error("this stream is private: ask the broadcaster for a token and pass --token")]
    Missing,
    /// The text is not a Starling join token.
    #[error("malformed join token: {0}")]
    Malformed(&'static str),
    /// The token names another stream.
    #[error("the join token is for another stream")]
    WrongStream,
    /// The signature does not verify under the stream key (forged or altered).
    #[error("the join token's signature is invalid")]
    BadSignature,
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

/// The signed facts of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct TokenClaims {
    stream: StreamId,
    epoch: u32,
    expires_unix_s: u64,
}

/// Permission to join one private stream until an expiry, signed by the stream key.
///
/// A bearer credential: whoever holds it may join. The ticket is not a secret; this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The stream it admits to.
    pub stream: StreamId,
    /// The broadcaster's token epoch when it was issued; older epochs are revoked.
    pub epoch: u32,
    /// Seconds since the Unix epoch after which it is refused.
    pub expires_unix_s: u64,
    /// ed25519 signature by the stream key over the context string
    /// `starling join token v1\0` followed by postcard(claims).
    pub signature: Signature,
}

impl JoinToken {
    /// Issues a token for `key`'s stream.
    pub fn issue(key: &SigningKey, epoch: u32, expires_unix_s: u64) -> JoinToken {
        let claims = TokenClaims {
            stream: crate::stream::node_id(key),
            epoch,
            expires_unix_s,
        };
        JoinToken {
            stream: claims.stream,
            epoch,
            expires_unix_s,
            signature: key.sign(&signed_bytes(&claims)),
        }
    }

    /// Checks that the token admits to `stream` at `now_unix_s`, given that the newest
    /// epoch known to be signed by the broadcaster is `min_epoch`.
    pub fn verify(
        &self,
        stream: &StreamId,
        min_epoch: u32,
        now_unix_s: u64,
    ) -> Result<(), TokenError> {
        if self.stream != *stream {
            return Err(TokenError::WrongStream);
        }
        let claims = TokenClaims {
            stream: self.stream,
            epoch: self.epoch,
            expires_unix_s: self.expires_unix_s,
        };
        let key = stream.verifying_key().ok_or(TokenError::BadSignature)?;
        // Strict: a small-order key or R, which verify any message under the lax check, fail.
        key.verify_strict(&signed_bytes(&claims), &self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Signature first: an unsigned token must not learn whether its dates would pass.
        if now_unix_s >= self.expires_unix_s {
            return Err(TokenError::Expired);
        }
        if self.epoch < min_epoch {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }

    /// The copy-pasteable form: `starlingtok1` + lowercase base32 of the postcard encoding.
    pub fn encode(&self) -> String {
        self.to_text()
    }

    /// Parses a token string: exactly what [`JoinToken::encode`] writes, with any whitespace
    /// around it ignored. Says nothing about whether it is valid: that is
    /// [`JoinToken::verify`].
    pub fn decode(text: &str) -> Result<JoinToken, TokenError> {
        let token = JoinToken::from_text(text).map_err(|e| {
            TokenError::Malformed(match e {
                CodecError::WrongPrefix => "it does not start with 'starlingtok1'",
                other => other.reason(),
            })
        })?;
        match token.stream.verifying_key() {
            None => Err(TokenError::Malformed(
                "stream key is not a valid ed25519 key",
            )),
            // A small-order key makes forgeries trivial under a lax check; no real key is one.
            Some(k) if k.is_weak() => Err(TokenError::Malformed(
                "stream key is a weak (small-order) ed25519 key",
            )),
            Some(_) => Ok(token),
        }
    }
}

impl TextCodec for JoinToken {
    const PREFIX: &'static str = TOKEN_PREFIX;
    const MAX_TEXT: usize = MAX_TOKEN_TEXT;
}

fn signed_bytes(claims: &TokenClaims) -> Vec<u8> {
    let mut out = TOKEN_CONTEXT.to_vec();
    // Encoding plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(claims).unwrap_or_default());
    out
}

/// What a node of a stream must show, and demand, to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// A viewer of a private stream, holding this token.
    Invited(JoinToken),
}

impl Admission {
    /// Whether peers must present a valid token.
    pub fn is_private(&self) -> bool {
        !matches!(self, Admission::Open)
    }

    /// The token this node presents, if any.
    pub fn token(&self) -> Option<JoinToken> {
        match self {
            Admission::Invited(t) => Some(*t),
            _ => None,
        }
    }

    /// The newest token epoch this node knows from its own configuration.
    pub fn epoch(&self) -> u32 {
        match self {
            Admission::Open => 0,
            Admission::Broadcaster { epoch } => *epoch,
            Admission::Invited(t) => t.epoch,
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

    #[test]
    fn round_trip_and_verify() {
        let k = key(1);
        let t = JoinToken::issue(&k, 3, NOW + 60);
        let s = t.encode();
        assert!(s.starts_with(TOKEN_PREFIX));
        assert!(s.len() < MAX_TOKEN_TEXT, "{}", s.len());
        let back = JoinToken::decode(&format!(" {s}\n")).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.verify(&node_id(&k), 3, NOW), Ok(()));
        assert_eq!(back.verify(&node_id(&k), 0, NOW + 59), Ok(()));
    }

    #[test]
    fn tampered_tokens_fail_their_signature() {
        let k = key(1);
        let stream = node_id(&k);
        let t = JoinToken::issue(&k, 3, NOW + 60);
        let mut later = t;
        later.expires_unix_s += 3600;
        assert_eq!(later.verify(&stream, 0, NOW), Err(TokenError::BadSignature));
        let mut newer = t;
        newer.epoch = 4;
        assert_eq!(newer.verify(&stream, 0, NOW), Err(TokenError::BadSignature));
        // Signed by someone else for this stream's id.
        let mut forged = JoinToken::issue(&key(2), 3, NOW + 60);
        forged.stream = stream;
        assert_eq!(
            forged.verify(&stream, 0, NOW),
            Err(TokenError::BadSignature)
        );
        // Flipping any character of the text either fails to parse or fails to verify.
        let text = t.encode();
        for i in TOKEN_PREFIX.len()..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let edited: String = chars.into_iter().collect();
            if let Ok(tok) = JoinToken::decode(&edited) {
                assert!(tok == t || tok.verify(&stream, 0, NOW).is_err(), "{i}");
            }
        }
    }

    #[test]
    fn expiry_wrong_stream_and_older_epoch_are_refused() {
        let k = key(1);
        let stream = node_id(&k);
        let t = JoinToken::issue(&k, 3, NOW + 60);
        assert_eq!(t.verify(&stream, 0, NOW + 60), Err(TokenError::Expired));
        assert_eq!(t.verify(&stream, 0, u64::MAX), Err(TokenError::Expired));
        assert_eq!(
            t.verify(&node_id(&key(2)), 0, NOW),
            Err(TokenError::WrongStream)
        );
        assert_eq!(t.verify(&stream, 4, NOW), Err(TokenError::Revoked));
        assert_eq!(t.verify(&stream, u32::MAX, NOW), Err(TokenError::Revoked));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let t = JoinToken::issue(&key(1), 0, NOW).encode();
        for bad in [
            "",
            "starlingtok1",
            "starling1abc",
            "starlingtok1!!!",
            &t[..t.len() - 2],
            &format!("{t}aa"),
            &"a".repeat(MAX_TOKEN_TEXT + 1),
        ] {
            assert!(
                matches!(JoinToken::decode(bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// The text of arbitrary bytes, as a token would be written.
    fn text_of(bytes: &[u8]) -> String {
        let body = data_encoding::BASE32_NOPAD.encode(bytes);
        format!("{TOKEN_PREFIX}{}", body.to_ascii_lowercase())
    }

    #[test]
    fn a_token_has_one_text() {
        let k = key(1);
        let t = JoinToken::issue(&k, 3, NOW + 60);
        let text = t.encode();
        assert_eq!(
            JoinToken::decode(&text).map(|b| b.encode()),
            Ok(text.clone())
        );
        assert_eq!(
            JoinToken::decode(&text.to_ascii_uppercase()),
            Err(TokenError::Malformed(
                "it does not start with 'starlingtok1'"
            ))
        );
        let body_upper = format!(
            "{TOKEN_PREFIX}{}",
            text[TOKEN_PREFIX.len()..].to_ascii_uppercase()
        );
        assert_eq!(
            JoinToken::decode(&body_upper),
            Err(TokenError::Malformed(
                "it has uppercase letters: paste it exactly as printed"
            ))
        );
        let mut bytes = postcard::to_allocvec(&t).unwrap();
        bytes.push(0);
        assert_eq!(
            JoinToken::decode(&text_of(&bytes)),
            Err(TokenError::Malformed("trailing bytes"))
        );
        // The epoch (byte 32) as a two-byte varint: the same signed token, another text.
        let mut bytes = postcard::to_allocvec(&t).unwrap();
        bytes.splice(32..33, [0x83, 0x00]);
        let same: JoinToken = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(same.verify(&node_id(&k), 3, NOW), Ok(()));
        assert_eq!(
            JoinToken::decode(&text_of(&bytes)),
            Err(TokenError::Malformed(
                "not in canonical form: paste it exactly as printed"
            ))
        );
    }

    #[test]
    fn a_small_order_stream_key_admits_nobody() {
        let weak = crate::stream::weak::KEY;
        let t = JoinToken {
            stream: weak,
            epoch: 0,
            expires_unix_s: NOW + 60,
            signature: crate::stream::weak::signature(),
        };
        let claims = TokenClaims {
            stream: weak,
            epoch: 0,
            expires_unix_s: NOW + 60,
        };
        let lax = weak.verifying_key().unwrap();
        assert!(
            Verifier::verify(&lax, &signed_bytes(&claims), &t.signature).is_ok(),
            "the lax check this replaced accepts it"
        );
        assert_eq!(t.verify(&weak, 0, NOW), Err(TokenError::BadSignature));
        assert_eq!(
            JoinToken::decode(&t.encode()),
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
        let t = JoinToken::issue(&key(1), 5, NOW);
        assert!(!Admission::Open.is_private());
        assert_eq!(Admission::Broadcaster { epoch: 2 }.token(), None);
        assert_eq!(Admission::Broadcaster { epoch: 2 }.epoch(), 2);
        assert_eq!(Admission::Invited(t).token(), Some(t));
        assert_eq!(Admission::Invited(t).epoch(), 5);
    }
}
