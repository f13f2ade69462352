//! The upload cap every upload of a node shares: one token bucket, async waiting, with
//! seeding pushes let through first.

use crate::clock::now;
use crate::rate::{Rate, TokenBucket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upload cap shared by every upload of a node: one token bucket, async waiting.
///
/// Seeding pushes (the broadcaster's first copies of a fresh segment) go before served
/// requests: while one is in progress, a served upload waits before booking each piece
/// (at most [`SEED_PRIORITY_WAIT`], so a stalled push cannot starve it): a seed is the
/// swarm's first copy of a part, and every viewer waits on it.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Option<TokenBucket>>,
    /// Seeding pushes in progress.
    seeding: AtomicUsize,
    seed_done: tokio::sync::Notify,
}

/// Longest a served upload waits on a seeding push before booking one piece anyway.
pub const SEED_PRIORITY_WAIT: Duration = Duration::from_millis(250);

/// Which uploads a [`Limiter`] lets go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadClass {
    /// A broadcaster's push of a fresh segment to a seed.
    Seed,
    /// An answer to a request (or a relay).
    Serve,
}

/// A seeding push in progress; its priority ends on drop.
#[derive(Debug)]
pub struct SeedGuard<'a>(&'a Limiter);

impl Drop for SeedGuard<'_> {
    fn drop(&mut self) {
        self.0.seeding.fetch_sub(1, Ordering::AcqRel);
        self.0.seed_done.notify_waiters();
    }
}

impl Limiter {
    /// A limiter at `rate` (None: unlimited).
    pub fn new(rate: Option<Rate>) -> Limiter {
        Limiter {
            bucket: Mutex::new(rate.map(|r| Self::bucket(r, now()))),
            seeding: AtomicUsize::new(0),
            seed_done: tokio::sync::Notify::new(),
        }
    }

    /// Marks a seeding push in progress until the guard drops.
    pub fn seeding(&self) -> SeedGuard<'_> {
        self.seeding.fetch_add(1, Ordering::AcqRel);
        SeedGuard(self)
    }

    /// [`Limiter::acquire`] for an upload of `class`: served uploads let seeding go first.
    pub async fn acquire_as(&self, class: UploadClass, bytes: u64) {
        if class == UploadClass::Serve && self.seeding.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(SEED_PRIORITY_WAIT, async {
                loop {
                    let done = self.seed_done.notified();
                    if self.seeding.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    done.await;
                }
            })
            .await;
        }
        self.acquire(bytes).await;
    }

    fn bucket(rate: Rate, now: Instant) -> TokenBucket {
        // A burst of ~50 ms: smooth, but one piece never waits on its own.
        let burst = (rate.bytes_per_sec() / 20).max(64 * 1024);
        TokenBucket::new(rate, burst, now)
    }

    /// Changes the rate (None: unlimited).
    pub fn set_rate(&self, rate: Option<Rate>) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        *b = rate.map(|r| Self::bucket(r, now()));
    }

    /// Waits until `bytes` may be sent, and books them.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            match b.as_mut() {
                None => Duration::ZERO,
                Some(bucket) => {
                    let t = now();
                    let w = bucket.wait_time(t);
                    bucket.take(bytes, t);
                    w
                }
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The current cap, if any.
    pub fn rate(&self) -> Option<Rate> {
        let b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.as_ref().map(|bucket| bucket.rate())
    }

    /// How long newly booked bytes would wait.
    pub fn backlog(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.as_mut()
            .map_or(Duration::ZERO, |bucket| bucket.backlog(now()))
    }
}
