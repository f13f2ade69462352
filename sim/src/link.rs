//! A node's upload in virtual time: `net`'s token bucket (rate, a burst of
//! `max(rate / 20, 64 KiB)`, debt allowed), which every upload of the node books its pieces
//! on, one piece at a time. In the `fifo` model the link also decides whose turn it is: the
//! oldest upload with a piece ready goes first. The link only does arithmetic; the engine
//! schedules the events.

use super::LinkModel;

/// Virtual nanoseconds.
type Ns = u64;

const NS_PER_SEC: f64 = 1e9;
/// `net`'s `Limiter` banks at least this many bytes.
const MIN_BURST: f64 = 64.0 * 1024.0;

/// One upload link; `T` names a transfer.
#[derive(Debug)]
pub(super) struct Link<T> {
    model: LinkModel,
    /// Bytes per second; 0: the node does not upload.
    rate: f64,
    /// Bytes the bucket banks when idle.
    burst: f64,
    /// When the bucket's debt is paid (ns, fractional): tokens at `t` are
    /// `min(burst, (t − clear) × rate)`, so a piece booked at `t` leaves at `max(t, clear)`.
    clear: f64,
    /// FIFO: the upload whose turn it is.
    owner: Option<T>,
    /// FIFO: uploads with a piece ready, waiting for their turn, with their start order.
    queue: Vec<(u64, T)>,
}

impl<T: Copy + PartialEq> Link<T> {
    /// A link of `rate` bytes/s; its bucket starts full, as `net`'s does.
    pub(super) fn new(model: LinkModel, rate: f64) -> Link<T> {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        let burst = (rate / 20.0).max(MIN_BURST);
        let mut link = Link {
            model,
            rate,
            burst,
            clear: 0.0,
            owner: None,
            queue: Vec::new(),
        };
        link.clear = -link.ns(burst);
        link
    }

    /// Nanoseconds to pay for `bytes` (computed per booking, so no rate rounding accumulates).
    fn ns(&self, bytes: f64) -> f64 {
        bytes * NS_PER_SEC / self.rate
    }

    /// How long bytes booked now would wait (`Limiter::backlog`); `Ns::MAX` without upload.
    pub(super) fn backlog(&self, now: Ns) -> Ns {
        if self.rate <= 0.0 {
            return Ns::MAX;
        }
        (self.clear - now as f64).max(0.0).ceil() as Ns
    }

    /// Books a piece of `bytes` at `now` (`Limiter::acquire`): when it leaves.
    pub(super) fn book(&mut self, now: Ns, bytes: u64) -> Ns {
        if self.rate <= 0.0 {
            return Ns::MAX / 4;
        }
        let t = now as f64;
        // Idle time refills the bucket, up to the burst.
        self.clear = self.clear.max(t - self.ns(self.burst));
        let leave = if self.clear <= t {
            now
        } else {
            self.clear.ceil().min(1e18) as Ns
        };
        self.clear += self.ns(bytes as f64);
        leave
    }

    /// Whether upload `id` (started `order`-th) may book its next piece now. FIFO: only when
    /// it is its turn; otherwise it joins the queue and is handed the turn later.
    pub(super) fn may_send(&mut self, id: T, order: u64) -> bool {
        if self.model == LinkModel::Shared {
            return true;
        }
        match self.owner {
            None => {
                self.owner = Some(id);
                true
            }
            Some(o) if o == id => true,
            Some(_) => {
                if !self.queue.iter().any(|(_, q)| *q == id) {
                    self.queue.push((order, id));
                }
                false
            }
        }
    }

    /// FIFO: after `id` sent a piece, an older upload that is waiting takes the turn; `id`
    /// queues. Returns the upload to wake.
    pub(super) fn yield_to_older(&mut self, id: T, order: u64) -> Option<T> {
        if self.model == LinkModel::Shared || self.owner != Some(id) {
            return None;
        }
        let (pos, _) = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, (o, _))| *o < order)
            .min_by_key(|(_, (o, _))| *o)?;
        let (_, next) = self.queue.swap_remove(pos);
        self.queue.push((order, id));
        self.owner = Some(next);
        Some(next)
    }

    /// `id` stops competing (done, or waiting for data). FIFO: the oldest waiting upload
    /// takes the turn if it was `id`'s; returns it to wake.
    pub(super) fn release(&mut self, id: T) -> Option<T> {
        if self.model == LinkModel::Shared {
            return None;
        }
        self.queue.retain(|(_, q)| *q != id);
        if self.owner != Some(id) {
            return None;
        }
        self.owner = None;
        let (pos, _) = self.queue.iter().enumerate().min_by_key(|(_, (o, _))| *o)?;
        let (_, next) = self.queue.swap_remove(pos);
        self.owner = Some(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Ns = 1_000_000;

    #[test]
    fn bucket_sends_a_burst_then_paces() {
        // 100 000 bytes/s, burst 64 KiB: four 16 KiB pieces and a fifth leave at once
        // (the fifth finds the bucket at exactly zero), then one per 16 384 / 100 000 s.
        let mut l: Link<u8> = Link::new(LinkModel::Shared, 100_000.0);
        let piece = 16_384;
        let leaves: Vec<Ns> = (0..7).map(|_| l.book(0, piece)).collect();
        assert_eq!(&leaves[..5], &[0, 0, 0, 0, 0]);
        assert_eq!(leaves[5], 163_840_000);
        assert_eq!(leaves[6], 327_680_000);
        // Three pieces of debt (the fifth, sixth and seventh) are queued behind the bucket.
        assert_eq!(l.backlog(0), 491_520_000);
        // Idle time refills the bucket, but never beyond the burst.
        let later = 10_000 * MS;
        assert_eq!(l.backlog(later), 0);
        let again: Vec<Ns> = (0..6).map(|_| l.book(later, piece)).collect();
        assert_eq!(&again[..5], &[later; 5]);
        assert_eq!(again[5], later + 163_840_000);
    }

    #[test]
    fn shared_bookings_interleave_per_piece() {
        // Two uploads booking alternately split the rate: each gets every other slot.
        let mut l: Link<u8> = Link::new(LinkModel::Shared, 100_000.0);
        for _ in 0..5 {
            l.book(0, 16_384);
        }
        let a = l.book(0, 16_384);
        let b = l.book(0, 16_384);
        assert_eq!(b - a, 163_840_000);
        assert!(l.may_send(1, 0) && l.may_send(2, 1));
    }

    #[test]
    fn fifo_serves_the_oldest_ready_upload() {
        let mut l: Link<u8> = Link::new(LinkModel::Fifo, 100_000.0);
        assert!(l.may_send(2, 5));
        assert!(!l.may_send(1, 3), "not its turn");
        assert!(!l.may_send(3, 9));
        // After a piece, the older waiting upload takes over; 2 waits.
        assert_eq!(l.yield_to_older(2, 5), Some(1));
        assert!(l.may_send(1, 3));
        assert!(!l.may_send(2, 5));
        // 1 finishes: the oldest waiting (2, before 3) goes next.
        assert_eq!(l.release(1), Some(2));
        assert_eq!(l.yield_to_older(2, 5), None, "3 is younger");
        assert_eq!(l.release(2), Some(3));
        assert_eq!(l.release(3), None);
        assert!(l.may_send(4, 10));
    }

    #[test]
    fn no_rate_means_no_upload() {
        let mut l: Link<u8> = Link::new(LinkModel::Shared, 0.0);
        assert_eq!(l.backlog(0), Ns::MAX);
        assert!(l.book(0, 1) > 1_000_000 * MS);
    }
}
