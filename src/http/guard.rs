//! Keeping slow and silent clients from holding the server: each connection's last progress,
//! a write-stall timeout, and which connection to drop when all slots are taken.
//!
//! A player that stops reading (or a client that pipelines requests and never reads) leaves
//! its response stuck in a full socket buffer, and hyper's header-read timeout does not run
//! while a response is being written. Without this, 256 such clients held every slot for as
//! long as they liked and the playlist stopped answering.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a response may make no write progress (the client reads nothing) before the
/// connection is closed, by default.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a connection checks itself for a stalled write.
const STALL_CHECK: Duration = Duration::from_millis(500);

/// "Not blocked" in [`Activity::blocked_since_ms`].
const NOT_BLOCKED: u64 = u64::MAX;

/// What a connection's socket did last, shared between its task and the accept loop.
#[derive(Debug)]
pub(super) struct Activity {
    /// The server's start, from which the milliseconds below count.
    epoch: Instant,
    /// When a byte last went either way (accepting counts).
    last_progress_ms: AtomicU64,
    /// When a write first found the socket full with nothing written since, or
    /// [`NOT_BLOCKED`].
    blocked_since_ms: AtomicU64,
}

impl Activity {
    /// A connection accepted now.
    pub(super) fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            last_progress_ms: AtomicU64::new(0),
            blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
        };
        activity.progressed();
        activity
    }

    fn now_ms(&self) -> u64 {
        let elapsed = crate::clock::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the server's start at which this connection last moved a byte.
    pub(super) fn last_progress_ms(&self) -> u64 {
        self.last_progress_ms.load(Ordering::Relaxed)
    }

    /// How long a write has been waiting on a full socket, if one is.
    fn blocked_for(&self) -> Option<Duration> {
        let since = self.blocked_since_ms.load(Ordering::Relaxed);
        (since != NOT_BLOCKED).then(|| Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Resolves once a write has been stuck for `timeout`.
    pub(super) async fn write_stalled(&self, timeout: Duration) {
        let check = STALL_CHECK.min(timeout / 4).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(check).await;
            if self.blocked_for().is_some_and(|b| b >= timeout) {
                return;
            }
        }
    }

    fn note_write<T>(&self, polled: &Poll<io::Result<T>>, wrote: bool) {
        match polled {
            Poll::Pending => {
                // Keep the first moment it blocked; later pending writes don't reset it.
                let _ = self.blocked_since_ms.compare_exchange(
                    NOT_BLOCKED,
                    self.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => {
                self.blocked_since_ms.store(NOT_BLOCKED, Ordering::Relaxed);
                if wrote {
                    self.progressed();
                }
            }
        }
    }
}

/// A socket that records its progress in an [`Activity`].
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    activity: std::sync::Arc<Activity>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, activity: std::sync::Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        let wrote = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.activity.note_write(&polled, wrote);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let wrote = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.activity.note_write(&polled, wrote);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection to drop so a new one fits: the one whose socket moved a byte least
/// recently (stalled writers and idle keep-alives before anyone being served). Ties go to
/// the first listed.
pub(super) fn least_recent<K: Copy>(connections: impl IntoIterator<Item = (K, u64)>) -> Option<K> {
    let mut oldest: Option<(K, u64)> = None;
    for (key, last) in connections {
        if oldest.is_none_or(|(_, o)| last < o) {
            oldest = Some((key, last));
        }
    }
    oldest.map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_least_recently_active_connection_goes() {
        assert_eq!(least_recent::<u32>([]), None);
        assert_eq!(least_recent([(1, 50), (2, 10), (3, 70), (4, 10)]), Some(2));
        assert_eq!(least_recent([(9, 0)]), Some(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_into_a_full_pipe_counts_as_stalled_until_it_moves() {
        let epoch = crate::clock::now();
        let activity = Arc::new(Activity::new(epoch));
        // A 64-byte pipe whose far end reads nothing.
        let (near, mut far) = tokio::io::duplex(64);
        let mut watched = Watched::new(near, activity.clone());
        watched.write_all(&[1; 64]).await.unwrap();
        assert_eq!(activity.blocked_for(), None);

        let write = tokio::spawn(async move {
            watched.write_all(&[2; 64]).await.unwrap();
            watched
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(activity.blocked_for() >= Some(Duration::from_secs(3)));
        let stalled = tokio::time::timeout(
            WRITE_STALL_TIMEOUT,
            activity.write_stalled(WRITE_STALL_TIMEOUT),
        )
        .await;
        assert!(stalled.is_ok(), "a 10 s stall is reported");

        // The reader wakes up: the write moves and is no longer blocked.
        let mut sink = [0u8; 128];
        far.read_exact(&mut sink).await.unwrap();
        let _watched = write.await.unwrap();
        assert_eq!(activity.blocked_for(), None);
        assert!(activity.last_progress_ms() >= 10_000);
    }
}
