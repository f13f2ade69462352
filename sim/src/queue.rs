//! The simulator's pending events: a calendar queue that pops in exactly the order of a
//! binary heap on (time, sequence), without one heap of every pending event.
//!
//! A heap of a million pending events costs a cache miss per level on every pop, and
//! nearly every event is due within a few seconds, so events go into buckets of about a
//! millisecond on a ring; the current bucket is sorted once when the clock reaches it and
//! taken from its end, and events scheduled into it meanwhile wait in a small heap beside
//! it. Events beyond the ring's horizon wait in a heap of their own and join the current
//! bucket when it reaches theirs.
//!
//! The first few pending events are also kept apart, in order, so the engine can see what
//! comes next and have its memory fetched while the current event runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// log2 of a bucket's width in nanoseconds (about 1 ms).
const BUCKET_SHIFT: u32 = 20;
/// Buckets on the ring (a horizon of about 4.4 s).
const RING: u64 = 4096;

/// Virtual time: nanoseconds since the run started (as in the engine).
type Ns = u64;

/// One pending event: (time, sequence, payload).
type Entry = (Ns, u64, u32);

/// Events kept in order at the front, for the engine to look ahead at (and prefetch).
const AHEAD: usize = 8;

/// Pending events, popped in (time, sequence) order.
#[derive(Debug)]
pub(super) struct EventQueue {
    /// The earliest pending events, in order: each is before every event elsewhere.
    ahead: VecDeque<Entry>,
    /// The current bucket's events as it was reached, latest first.
    current: Vec<Entry>,
    /// Events scheduled into the current bucket (or before it) since it was reached.
    late: BinaryHeap<Reverse<Entry>>,
    /// Absolute bucket number of `current`.
    bucket: u64,
    /// Buckets `bucket + 1 ..= bucket + RING - 1`, at their number modulo `RING`.
    ring: Vec<Vec<Entry>>,
    /// Entries on the ring.
    on_ring: usize,
    /// Beyond the ring's horizon.
    far: BinaryHeap<Reverse<Entry>>,
    /// Emptied bucket vectors, reused: only buckets holding entries hold memory, so the
    /// ring costs what is pending rather than every bucket's largest load.
    spare: Vec<Vec<Entry>>,
}

impl EventQueue {
    pub(super) fn new() -> EventQueue {
        EventQueue {
            ahead: VecDeque::with_capacity(AHEAD + 1),
            current: Vec::new(),
            late: BinaryHeap::new(),
            bucket: 0,
            ring: (0..RING).map(|_| Vec::new()).collect(),
            on_ring: 0,
            far: BinaryHeap::new(),
            spare: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, at: Ns, seq: u64, payload: u32) {
        let e = (at, seq, payload);
        if self.ahead.back().is_some_and(|last| e < *last) {
            let i = self.ahead.partition_point(|x| *x < e);
            self.ahead.insert(i, e);
            if self.ahead.len() > AHEAD {
                if let Some((at, seq, payload)) = self.ahead.pop_back() {
                    self.file(at, seq, payload);
                }
            }
            return;
        }
        self.file(at, seq, payload);
    }

    /// The next few events, in order (the first is what [`EventQueue::pop`] returns).
    pub(super) fn upcoming(&self) -> &VecDeque<Entry> {
        &self.ahead
    }

    /// Tops `ahead` up from the rest, earliest first.
    fn fill(&mut self) {
        while self.ahead.len() < AHEAD {
            if self.current.is_empty() && self.late.is_empty() {
                self.advance();
            }
            let from_late = match (self.current.last(), self.late.peek()) {
                (Some(c), Some(l)) => l.0 < *c,
                (None, late) => late.is_some(),
                (Some(_), None) => false,
            };
            let next = if from_late {
                self.late.pop().map(|r| r.0)
            } else {
                self.current.pop()
            };
            match next {
                Some(e) => self.ahead.push_back(e),
                None => break,
            }
        }
    }

    /// Files an entry no earlier than any in `ahead`: beside the current bucket, on the
    /// ring, or beyond it.
    fn file(&mut self, at: Ns, seq: u64, payload: u32) {
        let b = at >> BUCKET_SHIFT;
        if b <= self.bucket {
            self.late.push(Reverse((at, seq, payload)));
        } else if b - self.bucket < RING {
            if let Some(slot) = self.ring.get_mut((b % RING) as usize) {
                if slot.capacity() == 0 {
                    *slot = self.spare.pop().unwrap_or_default();
                }
                slot.push((at, seq, payload));
                self.on_ring += 1;
            }
        } else {
            self.far.push(Reverse((at, seq, payload)));
        }
    }

    /// The earliest pending entry, without removing it.
    pub(super) fn peek(&mut self) -> Option<Entry> {
        self.fill();
        self.ahead.front().copied()
    }

    /// Removes and returns the earliest pending entry.
    pub(super) fn pop(&mut self) -> Option<Entry> {
        self.fill();
        self.ahead.pop_front()
    }

    /// Moves the clock's bucket on to the next that has entries, and fills `current`.
    fn advance(&mut self) {
        while self.current.is_empty() && self.late.is_empty() {
            if self.on_ring == 0 {
                // Nothing within the horizon: jump straight to the far heap's first.
                match self.far.peek() {
                    Some(Reverse((at, _, _))) => self.bucket = self.bucket.max(at >> BUCKET_SHIFT),
                    None => return,
                }
            } else {
                self.bucket += 1;
                if let Some(slot) = self.ring.get_mut((self.bucket % RING) as usize) {
                    let entries = std::mem::take(slot);
                    self.on_ring -= entries.len();
                    let done = std::mem::replace(&mut self.current, entries);
                    if done.capacity() > 0 {
                        self.spare.push(done);
                    }
                }
            }
            while let Some(Reverse(e)) = self.far.peek().copied() {
                if e.0 >> BUCKET_SHIFT > self.bucket {
                    break;
                }
                self.far.pop();
                self.current.push(e);
            }
            // Latest first, so the next is taken from the end. Entries are distinct.
            self.current.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Pushes and pops interleaved, times near and far (beyond the ring), ties in time:
    /// the order is exactly a heap's on (time, sequence).
    #[test]
    fn pops_in_the_order_of_a_heap_on_time_then_sequence() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut q = EventQueue::new();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for step in 0..200_000u32 {
            if rng.gen_bool(0.55) {
                let ahead = match rng.gen_range(0..10) {
                    0 => 0,
                    1 => rng.gen_range(0..20 * 1_000_000_000),
                    _ => rng.gen_range(0..50_000_000),
                };
                seq += 1;
                q.push(now + ahead, seq, step);
                heap.push(Reverse((now + ahead, seq, step)));
            } else {
                let want = heap.pop().map(|Reverse(e)| e);
                // What it shows of the upcoming ones are exactly the heap's next ones.
                let shown: Vec<Entry> = q.upcoming().iter().skip(1).copied().collect();
                let mut next = heap.clone();
                for e in shown {
                    assert_eq!(next.pop().map(|Reverse(x)| x), Some(e));
                }
                assert_eq!(q.peek(), want);
                assert_eq!(q.pop(), want);
                if let Some((at, _, _)) = want {
                    now = at;
                }
            }
        }
        while let Some(Reverse(e)) = heap.pop() {
            assert_eq!(q.pop(), Some(e));
        }
        assert_eq!(q.pop(), None);
    }
}
