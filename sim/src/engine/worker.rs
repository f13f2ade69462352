//! The worker thread of a `--threads 2` run: viewers' mesh calls handed to it with their
//! mesh, its answers taken back in order, and the marks that say which events may run
//! meanwhile. With one thread the same calls run in place.

use super::{Ns, Sim, ORIGIN};
use rtrb::{Consumer, Producer, PushError};
use starling::mesh::{Action, Mesh};
use starling::stream::{NodeId, PARTS};
use starling::wire::Control;
use std::time::{Duration, Instant};

/// Mesh calls the worker thread may have in hand at once.
pub(super) const MAX_PENDING: usize = 8;

/// Turns of the event loop between looks for the worker's answers.
pub(super) const COLLECT_EVERY: u32 = 4;

/// One event's calls on one viewer's mesh (run on the worker thread, or here).
#[derive(Debug)]
pub(super) enum Call {
    Control(Instant, NodeId, Control),
    Tick(Instant),
    DialFailed(Instant, NodeId),
    Disconnected(Instant, NodeId),
    /// A transfer failed (`busy`: the supplier said Busy).
    Failed {
        now: Instant,
        from: NodeId,
        number: u64,
        part: u8,
        busy: bool,
    },
    /// A part's first frame landed; `empties` are the segment's empty parts, held as of now.
    Receiving {
        now: Instant,
        from: NodeId,
        number: u64,
        part: u8,
        empties: u32,
    },
    /// A part's last piece landed, of `bytes`; `whole` when it completed the segment.
    Delivered {
        now: Instant,
        from: NodeId,
        number: u64,
        part: u8,
        bytes: u64,
        whole: Option<Whole>,
    },
}

/// A segment a part completed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Whole {
    pub(super) duration: Duration,
    pub(super) bytes: u64,
}

impl Call {
    /// Makes the calls.
    fn apply(self, m: &mut Mesh) {
        match self {
            Call::Control(now, from, msg) => m.handle_control(now, from, msg),
            Call::Tick(now) => m.handle_tick(now),
            Call::DialFailed(now, peer) => m.handle_dial_failed(now, peer),
            Call::Disconnected(now, peer) => m.handle_disconnected(now, peer),
            Call::Failed {
                now,
                from,
                number,
                part,
                busy,
            } => m.handle_transfer_failed(now, from, number, part, busy),
            Call::Receiving {
                now,
                from,
                number,
                part,
                empties,
            } => {
                for k in (0..PARTS as u8).filter(|k| empties & 1 << k != 0) {
                    m.handle_part(now, from, number, k, 0);
                }
                m.handle_receiving(now, from, number, part);
            }
            Call::Delivered {
                now,
                from,
                number,
                part,
                bytes,
                whole,
            } => {
                m.handle_part(now, from, number, part, bytes);
                if let Some(w) = whole {
                    m.observe_segment_duration(w.duration);
                    m.handle_segment(now, Some(from), number, w.bytes);
                }
            }
        }
    }
}

/// A mesh handed to the worker with the calls to make on it.
#[derive(Debug)]
pub(super) struct Job {
    node: u32,
    mesh: Box<Mesh>,
    call: Call,
    /// Filled with the mesh's actions (a spare vector, reused).
    actions: Vec<Action>,
}

/// The worker's answer: the mesh back, its actions and its next timeout.
#[derive(Debug)]
pub(super) struct Done {
    node: u32,
    mesh: Box<Mesh>,
    actions: Vec<Action>,
    wake: Instant,
}

/// A job in the worker's hands, in the order handed over.
#[derive(Debug)]
pub(super) struct Pending {
    node: u32,
    /// The event's time: its actions run as of then.
    pub(super) at: Ns,
    ticked: bool,
    /// Its number, which marks the nodes it may touch (see [`Sim::near_pending`]).
    seq: u64,
}

/// The event loop's ends of the rings to the worker. Each is single-producer,
/// single-consumer and bounded by [`MAX_PENDING`] (no more jobs are ever in flight), so a
/// hand-over is a slot write and an index store, with no allocation.
#[derive(Debug)]
pub(super) struct Pipe {
    pub(super) jobs: Producer<Job>,
    pub(super) done: Consumer<Done>,
}

/// The worker thread: runs each job's mesh calls, drains the mesh's actions, and sends
/// the lot back, until the event loop hangs up. It spins between jobs rather than sleep:
/// a job is a few microseconds, and waking a sleeping thread takes longer.
pub(super) fn worker(mut jobs: Consumer<Job>, mut done: Producer<Done>) {
    let mut idle = 0u32;
    // The job after the one running, taken early so that its mesh is fetched meanwhile.
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take().map_or_else(|| jobs.pop(), Ok) {
            Ok(job) => job,
            Err(_) if jobs.is_abandoned() => return,
            Err(_) => {
                pause(&mut idle);
                continue;
            }
        };
        idle = 0;
        next = jobs.pop().ok();
        if let Some(n) = &next {
            crate::prefetch::prefetch(&*n.mesh, std::mem::size_of::<Mesh>());
        }
        let Job {
            node,
            mut mesh,
            call,
            mut actions,
        } = job;
        call.apply(&mut mesh);
        while let Some(a) = mesh.poll_action() {
            actions.push(a);
        }
        let wake = mesh.poll_timeout();
        let answer = Done {
            node,
            mesh,
            actions,
            wake,
        };
        // The ring holds every job in flight, so it is full only if the loop is gone.
        if done.push(answer).is_err() {
            return;
        }
    }
}

/// One wait of a thread polling the other: a spin at first, then, after a while, the core
/// given up, should the two threads share one.
fn pause(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < 256 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl Sim {
    /// Makes `call` on node `i`'s mesh, then runs its actions and its next wake-up: on the
    /// worker when the running event allows it and the worker has room, here otherwise.
    pub(super) fn mesh_job(&mut self, i: u32, ticked: bool, call: Call) {
        if self.may_hand_off && i != ORIGIN && self.pending.len() < MAX_PENDING {
            if let (Some(pipe), Some(n)) = (&mut self.pipe, self.nodes.get_mut(i as usize)) {
                if let Some(mesh) = n.mesh.take() {
                    let job = Job {
                        node: i,
                        mesh,
                        call,
                        actions: self.spare_actions.pop().unwrap_or_default(),
                    };
                    // The ring has room for every job in flight, so it is full only if the
                    // worker stopped taking them (it panicked; the scope re-raises that):
                    // go on here.
                    if let Err(PushError::Full(job)) = pipe.jobs.push(job) {
                        n.mesh = Some(job.mesh);
                        self.pipe = None;
                        self.pending.clear();
                    } else {
                        // Jobs are numbered by the count of hand-offs.
                        self.d.handed_off += 1;
                        let seq = self.d.handed_off;
                        self.mark(i, seq);
                        self.pending.push_back(Pending {
                            node: i,
                            at: self.now,
                            ticked,
                            seq,
                        });
                    }
                    return;
                }
            }
        }
        if let Some(m) = self.mesh(i) {
            call.apply(m);
        }
        self.drain_after(i, ticked);
    }

    /// Whether a job in the worker's hands is for node `y` or for one of its links.
    pub(super) fn near_pending(&self, y: u32) -> bool {
        let Some(lo) = self.pending.front().map(|p| p.seq) else {
            return false;
        };
        // Links are the same list at both ends: `y` links to a job's node if and only if it
        // is among that node's links, which the job marked. A job on a site marks the site.
        self.marks
            .get(y as usize)
            .is_some_and(|&(own, linked)| own >= lo || linked >= lo)
            || self
                .site_marks
                .get(self.site_of(y) as usize)
                .is_some_and(|&m| m >= lo)
    }

    /// Marks node `i`, its links and its site with job `seq`.
    fn mark(&mut self, i: u32, seq: u64) {
        let site = self.site_of(i) as usize;
        if let Some(m) = self.site_marks.get_mut(site) {
            *m = seq;
        }
        let mut marks = std::mem::take(&mut self.marks);
        if let Some(m) = marks.get_mut(i as usize) {
            m.0 = seq;
        }
        for &z in self.links(i) {
            if let Some(m) = marks.get_mut(z as usize) {
                m.1 = seq;
            }
        }
        self.marks = marks;
    }

    /// Takes in whatever the worker has finished.
    pub(super) fn collect_done(&mut self) {
        while self.take_answer(false) {}
    }

    /// Waits for the worker's oldest job and takes it in.
    pub(super) fn wait_one(&mut self) {
        // Nothing to wait for (`pick` never asks then: with nothing in the worker's hands
        // the first event runs).
        if !self.pending.is_empty() {
            self.take_answer(true);
        }
    }

    /// Takes in one answer from the worker, waiting for it if `wait`; false if none was
    /// there to take.
    fn take_answer(&mut self, wait: bool) -> bool {
        let mut spins = 0u32;
        while let Some(pipe) = self.pipe.as_mut() {
            match pipe.done.pop() {
                Ok(d) => {
                    self.finish_job(d);
                    return true;
                }
                Err(_) if pipe.done.is_abandoned() => break,
                Err(_) if !wait => return false,
                Err(_) => pause(&mut spins),
            }
        }
        // The worker is gone (it panicked; the scope re-raises that): go on here.
        self.pipe = None;
        self.pending.clear();
        false
    }

    /// A job is back: its mesh goes home, and its actions run as of its event's time.
    fn finish_job(&mut self, d: Done) {
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        debug_assert_eq!(p.node, d.node, "the worker answers in order");
        if let Some(n) = self.nodes.get_mut(d.node as usize) {
            n.mesh = Some(d.mesh);
        }
        let saved = (self.now, self.cur, self.may_hand_off);
        (self.now, self.cur, self.may_hand_off) = (p.at, d.node, false);
        let mut actions = d.actions;
        for a in actions.drain(..) {
            self.act(d.node, a);
        }
        self.spare_actions.push(actions);
        self.wake_at(d.node, d.wake, p.ticked);
        (self.now, self.cur, self.may_hand_off) = saved;
    }
}
