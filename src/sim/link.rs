//! A node's upload link in virtual time: transfers sent one after another (FIFO), or sharing
//! the rate evenly (as concurrent QUIC streams behind `net.rs`'s token bucket do). The link
//! only does arithmetic; the engine schedules a wake-up whenever an operation returns one.

use super::LinkModel;
use std::collections::VecDeque;

/// Virtual nanoseconds.
type Ns = u64;

const NS_PER_SEC: f64 = 1e9;
/// Bytes below which a transfer counts as sent (float rounding).
const DONE: f64 = 0.01;

#[derive(Debug)]
struct Job<T> {
    id: T,
    bytes: u64,
    left: f64,
}

/// One upload link; `T` names a transfer.
#[derive(Debug)]
pub(super) struct Link<T> {
    model: LinkModel,
    /// Bytes per second; 0: the node does not upload.
    rate: f64,
    /// `net.rs` takes tokens a piece at a time: the debt one active transfer holds.
    piece: u64,
    /// FIFO: the front job is the one being sent. Shared: all jobs are being sent.
    jobs: VecDeque<Job<T>>,
    /// Bytes not yet sent, all jobs.
    total_left: f64,
    /// When `left` was last brought up to date.
    last: Ns,
    /// Bumped whenever the next completion time changes, so older wake-ups go stale.
    gen: u64,
}

impl<T: Copy + PartialEq> Link<T> {
    pub(super) fn new(model: LinkModel, rate: f64, piece: u64) -> Link<T> {
        Link {
            model,
            rate: rate.max(0.0),
            piece,
            jobs: VecDeque::new(),
            total_left: 0.0,
            last: 0,
            gen: 0,
        }
    }

    /// The generation a wake-up returned now belongs to.
    pub(super) fn gen(&self) -> u64 {
        self.gen
    }

    fn ns(&self, bytes: f64) -> Ns {
        if self.rate <= 0.0 {
            return Ns::MAX / 4;
        }
        (bytes.max(0.0) / self.rate * NS_PER_SEC).ceil().min(1e18) as Ns
    }

    /// The backlog `net.rs` would see: queued bytes (FIFO), or one piece of token debt per
    /// transfer under way (shared: the limiter takes tokens a piece at a time).
    pub(super) fn backlog(&self, now: Ns) -> Ns {
        if self.rate <= 0.0 {
            return Ns::MAX;
        }
        match self.model {
            LinkModel::Fifo => {
                let served = now.saturating_sub(self.last) as f64 * self.rate / NS_PER_SEC;
                self.ns(self.total_left - served.min(self.front_left()))
            }
            LinkModel::Shared => self.ns((self.jobs.len() as u64 * self.piece) as f64),
        }
    }

    fn front_left(&self) -> f64 {
        self.jobs.front().map_or(0.0, |j| j.left)
    }

    /// Brings `left` up to `now`.
    fn advance(&mut self, now: Ns) {
        let dt = now.saturating_sub(self.last) as f64;
        self.last = now;
        if dt <= 0.0 || self.jobs.is_empty() {
            return;
        }
        let served = dt * self.rate / NS_PER_SEC;
        match self.model {
            LinkModel::Fifo => {
                if let Some(j) = self.jobs.front_mut() {
                    let s = served.min(j.left);
                    j.left -= s;
                    self.total_left -= s;
                }
            }
            LinkModel::Shared => {
                let each = served / self.jobs.len() as f64;
                for j in &mut self.jobs {
                    let s = each.min(j.left);
                    j.left -= s;
                    self.total_left -= s;
                }
            }
        }
    }

    /// When the next transfer completes (a new generation), if any is under way.
    fn reschedule(&mut self, now: Ns) -> Option<Ns> {
        self.gen += 1;
        let next = match self.model {
            LinkModel::Fifo => self.jobs.front().map(|j| self.ns(j.left)),
            LinkModel::Shared => {
                let k = self.jobs.len() as f64;
                self.jobs
                    .iter()
                    .map(|j| j.left)
                    .min_by(f64::total_cmp)
                    .map(|left| self.ns(left * k))
            }
        }?;
        Some(now.saturating_add(next))
    }

    /// Adds a transfer of `bytes`; returns the wake-up to schedule, if it changed.
    pub(super) fn add(&mut self, now: Ns, id: T, bytes: u64) -> Option<Ns> {
        self.advance(now);
        let was_idle = self.jobs.is_empty();
        self.jobs.push_back(Job {
            id,
            bytes,
            left: bytes as f64,
        });
        self.total_left += bytes as f64;
        // FIFO: a job behind another changes nothing until the front completes.
        if self.model == LinkModel::Fifo && !was_idle {
            return None;
        }
        self.reschedule(now)
    }

    /// The wake-up of generation `gen` fired: the transfers now fully sent, and the next
    /// wake-up. `None` for a stale wake-up.
    pub(super) fn complete(&mut self, now: Ns, gen: u64) -> Option<(Vec<T>, Option<Ns>)> {
        if gen != self.gen {
            return None;
        }
        self.advance(now);
        let mut done = Vec::new();
        match self.model {
            LinkModel::Fifo => {
                // The front was due now; rounding must not leave it stuck.
                if let Some(j) = self.jobs.pop_front() {
                    self.total_left -= j.left;
                    done.push(j.id);
                }
            }
            LinkModel::Shared => {
                let min = self
                    .jobs
                    .iter()
                    .map(|j| j.left)
                    .min_by(f64::total_cmp)
                    .unwrap_or(0.0);
                let cut = min.max(DONE);
                let mut kept = VecDeque::with_capacity(self.jobs.len());
                for j in self.jobs.drain(..) {
                    if j.left <= cut {
                        self.total_left -= j.left;
                        done.push(j.id);
                    } else {
                        kept.push_back(j);
                    }
                }
                self.jobs = kept;
            }
        }
        if self.jobs.is_empty() {
            self.total_left = 0.0;
        }
        Some((done, self.reschedule(now)))
    }

    /// Stops transfer `id`: the bytes it had sent, and the wake-up to schedule if it changed.
    pub(super) fn remove(&mut self, now: Ns, id: T) -> Option<(u64, Option<Ns>)> {
        let pos = self.jobs.iter().position(|j| j.id == id)?;
        self.advance(now);
        let j = self.jobs.remove(pos)?;
        self.total_left -= j.left;
        if self.jobs.is_empty() {
            self.total_left = 0.0;
        }
        let sent = (j.bytes as f64 - j.left).max(0.0) as u64;
        let changes = self.model == LinkModel::Shared || pos == 0;
        let wake = if changes { self.reschedule(now) } else { None };
        Some((sent, wake))
    }

    /// The transfers on the link (for dropping those to a vanished peer).
    pub(super) fn ids(&self) -> impl Iterator<Item = T> + '_ {
        self.jobs.iter().map(|j| j.id)
    }

    /// Empties the link (its node left).
    pub(super) fn clear(&mut self) -> Vec<T> {
        self.gen += 1;
        self.total_left = 0.0;
        self.jobs.drain(..).map(|j| j.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Ns = 1_000_000;

    #[test]
    fn fifo_sends_in_turn() {
        // 1000 bytes/s: a 100-byte job takes 100 ms.
        let mut l: Link<u8> = Link::new(LinkModel::Fifo, 1000.0, 16);
        assert_eq!(l.add(0, 1, 100), Some(100 * MS));
        assert_eq!(l.add(10 * MS, 2, 100), None);
        assert_eq!(l.backlog(10 * MS), 190 * MS);
        let (done, wake) = l.complete(100 * MS, l.gen()).unwrap();
        assert_eq!(done, vec![1]);
        assert_eq!(wake, Some(200 * MS));
        // Cancelling the job under way frees the link at once.
        let (sent, wake) = l.remove(150 * MS, 2).unwrap();
        assert_eq!(sent, 50);
        assert_eq!(wake, None);
        assert_eq!(l.backlog(150 * MS), 0);
        assert!(l.complete(200 * MS, 1).is_none(), "stale generation");
    }

    #[test]
    fn shared_splits_the_rate() {
        let mut l: Link<u8> = Link::new(LinkModel::Shared, 1000.0, 16);
        l.add(0, 1, 100);
        // Two jobs at 500 bytes/s each: job 2 (50 bytes) done at 100 ms, job 1 has 50 left.
        let wake = l.add(0, 2, 50).unwrap();
        assert_eq!(wake, 100 * MS);
        assert_eq!(l.backlog(0), 32 * MS, "one piece of debt per transfer");
        let (done, wake) = l.complete(wake, l.gen()).unwrap();
        assert_eq!(done, vec![2]);
        assert_eq!(wake, Some(150 * MS));
        let (done, wake) = l.complete(150 * MS, l.gen()).unwrap();
        assert_eq!(done, vec![1]);
        assert_eq!(wake, None);
        assert_eq!(l.backlog(150 * MS), 0);
    }

    #[test]
    fn no_rate_means_no_upload() {
        let l: Link<u8> = Link::new(LinkModel::Shared, 0.0, 16);
        assert_eq!(l.backlog(0), Ns::MAX);
    }
}
