//! One broadcaster per key: an exclusive `flock` on `<key>.lock`, held while it runs.
//!
//! Two broadcasters on one key would sign different segments under the same numbers, a fork
//! of the stream for every viewer. The kernel releases the lock when its holder exits or
//! dies, so a crash leaves no stale lock; the file itself stays, holding the last pid.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Longest lock file read for the holder's pid.
const MAX_LOCK_FILE: u64 = 64;

/// A held lock on a key; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct KeyLock {
    /// The open lock file, which carries the lock.
    _file: File,
}

/// Why the lock on a key was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another broadcaster{} is already running with the key {key}: one key is one stream; \
         stop that one first, or give this one its own --key",
        holder(.pid)
    )]
    Held {
        /// The key file.
        key: String,
        /// The holder's process id, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path} (beside the key file): {source}")]
    Io {
        /// The lock file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn holder(pid: &Option<u32>) -> String {
    pid.map_or(String::new(), |pid| format!(" (pid {pid})"))
}

impl KeyLock {
    /// The lock file for a key file.
    pub fn path_for(key_path: &Path) -> PathBuf {
        let mut p = key_path.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Takes the lock on `key_path` without waiting, and writes this process's id in it.
    /// Creates the key's directory if needed, as creating the key would.
    pub fn acquire(key_path: &Path) -> Result<KeyLock, LockError> {
        let path = Self::path_for(key_path);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = open(&path).map_err(io)?;
        if !try_lock(&file).map_err(io)? {
            return Err(LockError::Held {
                key: key_path.display().to_string(),
                pid: read_pid(&mut file),
            });
        }
        // Only the holder writes, so a reader sees this pid or an older holder's.
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(io)?;
        Ok(KeyLock { _file: file })
    }
}

/// Opens (creating if needed) the lock file, never through a link, readable by its owner only.
fn open(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(path)
}

/// Takes an exclusive lock without waiting: false if another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere no lock is taken (the programs are built and tested for unix).
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// The pid a holder wrote, if the file holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(MAX_LOCK_FILE).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-lock-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_on_one_key_is_refused_until_the_first_is_dropped() {
        let dir = scratch("twice");
        let key = dir.join("sub").join("key");
        let first = KeyLock::acquire(&key).unwrap();
        match KeyLock::acquire(&key) {
            Err(LockError::Held { key: k, pid }) => {
                assert_eq!(k, key.display().to_string());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = KeyLock::acquire(&key).unwrap();
        // Another key in the same directory is another stream.
        let other = KeyLock::acquire(&dir.join("sub").join("other-key")).unwrap();
        drop((again, other));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_holder_does_not_block() {
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        // A crash leaves the file with a pid in it, and no lock.
        std::fs::write(KeyLock::path_for(&key), "999999999\n").unwrap();
        let lock = KeyLock::acquire(&key).unwrap();
        let written = std::fs::read_to_string(KeyLock::path_for(&key)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_link_at_the_lock_path_is_not_followed() {
        let dir = scratch("link");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, KeyLock::path_for(&key)).unwrap();
        assert!(matches!(KeyLock::acquire(&key), Err(LockError::Io { .. })));
        assert!(!target.exists(), "the link was followed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_refusal_is_one_line_naming_the_holder() {
        let e = LockError::Held {
            key: "/k".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "another broadcaster (pid 42) is already running with the key /k: one key is one \
             stream; stop that one first, or give this one its own --key"
        );
    }
}
