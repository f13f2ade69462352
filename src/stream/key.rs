//! The node's key file: a node's identity, and a broadcaster's stream, survive restarts.
//!
//! The file is read without following a link, only if it is a small regular file that only
//! its owner may read; a new one is created exclusively with mode 0600.

use super::{hex, StreamError};
use ed25519_dalek::SigningKey;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Longest key file read: a key is 64 hex characters and a newline, or 32 raw bytes.
const MAX_KEY_FILE: u64 = 256;

/// Loads the node key from `path`, or creates and saves a new one if the file does not exist.
///
/// An existing file that cannot be read or parsed is an error and is never overwritten:
/// losing a broadcaster's key loses its stream identity.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, StreamError> {
    let shown = path.display().to_string();
    match read_small_file(path, MAX_KEY_FILE) {
        Ok(file) => {
            let key = parse_key(&file.bytes).ok_or(StreamError::KeyCorrupt {
                path: shown.clone(),
            })?;
            // Checked after parsing, so a file that is no key at all says so first.
            if file.mode & 0o077 != 0 {
                return Err(StreamError::KeyPermissions {
                    path: shown,
                    mode: file.mode & 0o777,
                });
            }
            Ok(key)
        }
        Err(SmallFileError::Missing) => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            write_key(path, &key).map_err(|source| StreamError::KeyWrite {
                path: shown,
                source,
            })?;
            Ok(key)
        }
        Err(SmallFileError::Symlink) => Err(StreamError::KeySymlink { path: shown }),
        Err(SmallFileError::NotRegular) => Err(StreamError::KeyNotRegular { path: shown }),
        Err(SmallFileError::TooLarge) => Err(StreamError::KeyCorrupt { path: shown }),
        Err(SmallFileError::Io(source)) => Err(StreamError::KeyRead {
            path: shown,
            source,
        }),
    }
}

/// A small file's contents and permission bits.
pub(crate) struct SmallFile {
    /// Everything in it.
    pub(crate) bytes: Vec<u8>,
    /// Its mode's permission bits (0 where there are none).
    pub(crate) mode: u32,
}

/// Why a small file was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SmallFileError {
    /// Nothing is at the path.
    #[error("it does not exist")]
    Missing,
    /// The path is a symbolic link, which is not followed.
    #[error("it is a symbolic link, which is not followed")]
    Symlink,
    /// The path is a directory, a device or a pipe.
    #[error("it is not a regular file")]
    NotRegular,
    /// The file is longer than its limit.
    #[error("it is too large")]
    TooLarge,
    /// It could not be opened or read.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Reads a file of at most `max` bytes that sits at `path` itself: a link there is not
/// followed, and a directory, device or pipe is refused before a byte is read.
pub(crate) fn read_small_file(path: &Path, max: u64) -> Result<SmallFile, SmallFileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a pipe with no writer would otherwise wait forever.
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(not(unix))]
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(SmallFileError::Symlink);
    }
    let file = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SmallFileError::Missing,
        #[cfg(unix)]
        _ if e.raw_os_error() == Some(libc::ELOOP) => SmallFileError::Symlink,
        _ => SmallFileError::Io(e),
    })?;
    let meta = file.metadata().map_err(SmallFileError::Io)?;
    if !meta.is_file() {
        return Err(SmallFileError::NotRegular);
    }
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    #[cfg(not(unix))]
    let mode = 0;
    let mut bytes = Vec::new();
    // One byte over the limit tells a file at the limit from a longer one.
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(SmallFileError::Io)?;
    if bytes.len() as u64 > max {
        return Err(SmallFileError::TooLarge);
    }
    Ok(SmallFile { bytes, mode })
}

/// Creates a new file only its owner may read, failing if anything (a file, or a link
/// planted to redirect the write) is already at `path`.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    // create_new is O_CREAT | O_EXCL, which never follows a link at the path.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Replaces the file at `path` with `bytes` atomically (a temp file beside it, then a
/// rename), so a crash never leaves half a file. The temp file is created with
/// [`create_private`] after any leftover at its path is removed (a link there: the link, not
/// its target), so a link planted at it is never followed.
pub(crate) fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = create_private(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
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
    // Exclusive: never clobber a key that appeared between our read and this write.
    let mut f = create_private(path)?;
    f.write_all(format!("{}\n", hex(&key.to_bytes())).as_bytes())?;
    f.sync_all()
}

// The cases are files only unix has: modes, links, pipes, /dev/zero.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh, empty directory for one test, named after it.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const KEY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101\n";

    /// A valid key file with `mode`.
    fn key_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, KEY_HEX).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_file_is_created_kept_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("key-kept");
        let path = dir.join("sub/key");
        let a = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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

    #[test]
    fn a_key_others_may_read_is_refused_until_chmod_600() {
        let dir = scratch("key-mode");
        for mode in [0o640, 0o604, 0o620, 0o644] {
            let path = key_file(&dir, "key", mode);
            let err = load_or_create_key(&path).unwrap_err();
            assert!(
                matches!(err, StreamError::KeyPermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), KEY_HEX);
        }
        let path = key_file(&dir, "key", 0o600);
        assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), [1; 32]);
        let path = key_file(&dir, "read-only-key", 0o400);
        assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), [1; 32]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_link_at_the_key_path_is_never_followed() {
        let dir = scratch("key-link");
        let real = key_file(&dir, "real", 0o600);
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = load_or_create_key(&link).unwrap_err();
        assert!(matches!(err, StreamError::KeySymlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A dangling link is not a missing key: no key is written where it points.
        let planted = dir.join("planted");
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(matches!(
            load_or_create_key(&planted),
            Err(StreamError::KeySymlink { .. })
        ));
        assert!(!target.exists());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), KEY_HEX);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_regular_file_is_read() {
        let dir = scratch("key-kinds");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // /dev/zero would never end, and a pipe with no writer would block the open.
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.as_path()] {
            let err = load_or_create_key(path).unwrap_err();
            assert!(matches!(err, StreamError::KeyNotRegular { .. }), "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_longer_than_its_limit_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("key-long");
        let path = dir.join("key");
        let long = KEY_HEX.repeat(100);
        std::fs::write(&path, &long).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(StreamError::KeyCorrupt { .. })
        ));
        assert!(matches!(
            read_small_file(&path, MAX_KEY_FILE),
            Err(SmallFileError::TooLarge)
        ));
        let exact = read_small_file(&path, long.len() as u64).unwrap();
        assert_eq!(exact.bytes, long.as_bytes());
        assert_eq!(exact.mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_private_refuses_anything_already_there() {
        let dir = scratch("key-create");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.join("key.tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = create_private(&link).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(create_private(&victim).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
