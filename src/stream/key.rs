//! The node's key file: a node's identity, and a broadcaster's stream, survive restarts.

use super::{hex, StreamError};
use ed25519_dalek::SigningKey;
use std::path::Path;

/// Loads the node key from `path`, or creates and saves a new one if the file does not exist.
///
/// An existing file that cannot be read or parsed is an error and is never overwritten:
/// losing a broadcaster's key loses its stream identity.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, StreamError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => parse_key(&bytes).ok_or(StreamError::KeyCorrupt { path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            write_key(path, &key).map_err(|source| StreamError::KeyWrite {
                path: shown,
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(StreamError::KeyRead {
            path: shown,
            source,
        }),
    }
}

fn parse_key(bytes: &[u8]) -> Option<SigningKey> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let raw: Vec<u8> = match text {
        Some(t) if t.len() == 64 => data_encoding::HEXLOWER_PERMISSIVE
            .decode(t.as_bytes())
            .ok()?,
        _ if bytes.len() == 32 => bytes.to_vec(),
        _ => return None,
    };
    let arr: [u8; 32] = raw.try_into().ok()?;
    Some(SigningKey::from_bytes(&arr))
}

fn write_key(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    // create_new: never clobber a key that appeared between our read and this write.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{}\n", hex(&key.to_bytes())).as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_kept_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("starling-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(StreamError::KeyCorrupt { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
