//! The main loop: feeds every event from the connection tasks to the [`Mesh`], and carries
//! out the mesh's [`Action`]s by spawning transfers, dials and closes.

use super::connection::dial;
use super::download::request;
use super::upload::push;
use super::{add, Shared, WireStats};
use crate::clock::now;
use crate::mesh::{Action, Mesh};
use crate::node::{hello, DisconnectReason, Misbehaviour, Uploads};
use crate::store;
use crate::stream::NodeId;
use crate::wire::{Control, PeerInfo, Role};
use quinn::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

/// What the tasks tell the main loop.
pub(super) enum Event {
    Connected {
        contact: PeerInfo,
        conn: Connection,
        control: mpsc::Sender<Control>,
        role: Role,
        uploads: bool,
        upload_bps: Option<u64>,
        dialed_by_me: bool,
    },
    Disconnected {
        peer: NodeId,
        conn_id: usize,
    },
    DialFailed {
        peer: NodeId,
    },
    Control {
        peer: NodeId,
        msg: Control,
    },
    Part {
        from: NodeId,
        number: u64,
        part: u8,
        len: u64,
        /// The part completed the segment, of this duration.
        completed: Option<Duration>,
    },
    TransferFailed {
        peer: NodeId,
        number: u64,
        part: u8,
        busy: bool,
    },
    Receiving {
        from: NodeId,
        number: u64,
        part: u8,
    },
    /// A part from `peer` went silent after its first frame.
    PartStalled {
        peer: NodeId,
        number: u64,
        part: u8,
    },
    /// A seeding push `peer` did not acknowledge in time.
    PushUnconfirmed {
        peer: NodeId,
        number: u64,
        part: u8,
    },
    Misbehaved {
        peer: NodeId,
        reason: Misbehaviour,
    },
    Publish {
        number: u64,
    },
    End {
        last: u64,
    },
}

struct ConnEntry {
    conn: Connection,
    control: mpsc::Sender<Control>,
    dialed_by_me: bool,
    /// It runs over one of our own networks.
    lan: bool,
}

/// How often the connections' wire figures are summed for `/stats`.
const WIRE_EVERY: Duration = Duration::from_secs(1);

struct Driver {
    shared: Arc<Shared>,
    mesh: Mesh,
    conns: BTreeMap<NodeId, ConnEntry>,
    transfers: HashMap<(NodeId, u64, u8), AbortHandle>,
    /// What connections dropped already carried.
    wire_closed: WireStats,
    /// When the wire figures are next summed.
    next_wire: Instant,
}

pub(super) async fn main_loop(
    shared: Arc<Shared>,
    mesh: Mesh,
    mut events: mpsc::Receiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut d = Driver {
        shared,
        mesh,
        conns: BTreeMap::new(),
        transfers: HashMap::new(),
        wire_closed: WireStats::default(),
        next_wire: now(),
    };
    loop {
        d.run_actions();
        d.publish_stats();
        let wake = tokio::time::Instant::from_std(d.mesh.poll_timeout());
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => d.handle(ev),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => d.mesh.handle_tick(now()),
            _ = shutdown.changed() => break,
        }
    }
    for (_, c) in std::mem::take(&mut d.conns) {
        c.conn.close(quinn::VarInt::from_u32(0), b"shutting down");
    }
    for (_, t) in d.transfers.drain() {
        t.abort();
    }
}

impl Driver {
    fn publish_stats(&mut self) {
        let mut s = self
            .shared
            .mesh_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s = self.mesh.stats();
        drop(s);
        self.shared
            .upload()
            .note_partners(self.mesh.symmetric_partners());
        let t = now();
        if t >= self.next_wire {
            self.next_wire = t + WIRE_EVERY;
            let mut wire = self.wire_closed;
            for c in self.conns.values() {
                wire.add(&c.conn, c.lan);
            }
            *self.shared.wire.lock().unwrap_or_else(|e| e.into_inner()) = wire;
        }
    }

    /// A connection leaves the table: what it carried stays counted.
    fn retire(&mut self, conn: &Connection, lan: bool) {
        self.wire_closed.add(conn, lan);
    }

    /// Counts the partners reached over one of our own networks, for `/stats`.
    fn count_lan_partners(&self) {
        let n = self
            .conns
            .iter()
            .filter(|(id, c)| **id != self.shared.stream && c.lan)
            .count();
        self.shared.lan_partners.store(n, Ordering::Relaxed);
    }

    fn handle(&mut self, ev: Event) {
        let t = now();
        match ev {
            Event::Connected {
                contact,
                conn,
                control,
                role,
                uploads,
                upload_bps,
                dialed_by_me,
            } => {
                let peer = contact.id;
                let remote = conn.remote_address().ip();
                let lan =
                    !remote.is_loopback() && self.shared.reachability().on_our_networks(remote);
                tracing::debug!(
                    me = %self.shared.me.short(),
                    peer = %peer.short(),
                    addr = %conn.remote_address(),
                    ?role,
                    uploads,
                    "connected"
                );
                if let Some(existing) = self.conns.get(&peer) {
                    // Both sides dialled at once: both keep the connection dialled by the
                    // smaller id, so they agree without talking.
                    if hello::keep_new(self.shared.me, peer, dialed_by_me, existing.dialed_by_me) {
                        if let Some(old) = self.conns.insert(
                            peer,
                            ConnEntry {
                                conn,
                                control,
                                dialed_by_me,
                                lan,
                            },
                        ) {
                            old.conn
                                .close(quinn::VarInt::from_u32(0), b"duplicate connection");
                            self.retire(&old.conn, old.lan);
                        }
                    } else {
                        conn.close(quinn::VarInt::from_u32(0), b"duplicate connection");
                        self.retire(&conn, lan);
                    }
                    return;
                }
                self.conns.insert(
                    peer,
                    ConnEntry {
                        conn,
                        control,
                        dialed_by_me,
                        lan,
                    },
                );
                let bps = self.shared.upload().stream_bps();
                let cap = self.shared.limiter.rate().map(|r| r.0);
                self.mesh.observe_capacity(bps, cap);
                let (public, reach) = {
                    let r = self.shared.reachability();
                    (r.public_addr(), r.reach())
                };
                self.mesh.observe_self(public, reach);
                self.mesh
                    .handle_connected(t, contact, role, uploads, upload_bps, lan);
                self.count_lan_partners();
            }
            Event::Disconnected { peer, conn_id } => {
                if self
                    .conns
                    .get(&peer)
                    .is_some_and(|c| c.conn.stable_id() == conn_id)
                {
                    if let Some(c) = self.conns.remove(&peer) {
                        self.retire(&c.conn, c.lan);
                    }
                    self.transfers.retain(|(p, _, _), h| {
                        if *p == peer {
                            h.abort();
                        }
                        *p != peer
                    });
                    tracing::debug!(peer = %peer.short(), "disconnected");
                    self.mesh.handle_disconnected(t, peer);
                    self.count_lan_partners();
                }
            }
            Event::DialFailed { peer } => self.mesh.handle_dial_failed(t, peer),
            Event::Control { peer, msg } => {
                if let Control::End { last } = msg {
                    if peer == self.shared.stream {
                        store::lock(&self.shared.store).set_ended(last);
                    }
                }
                self.mesh.handle_control(t, peer, msg);
            }
            Event::Part {
                from,
                number,
                part,
                len,
                completed,
            } => {
                self.transfers.remove(&(from, number, part));
                tracing::debug!(peer = %from.short(), number, part, len, whole = completed.is_some(), "part");
                self.mesh.handle_part(t, from, number, part, len);
                if let Some(duration) = completed {
                    self.mesh.observe_segment_duration(duration);
                    let len = store::lock(&self.shared.store)
                        .get(number)
                        .map_or(len, |s| s.data.len() as u64);
                    self.mesh.handle_segment(t, Some(from), number, len);
                }
            }
            Event::TransferFailed {
                peer,
                number,
                part,
                busy,
            } => {
                self.transfers.remove(&(peer, number, part));
                tracing::debug!(peer = %peer.short(), number, part, busy, "transfer failed");
                self.mesh
                    .handle_transfer_failed(t, peer, number, part, busy);
            }
            Event::Receiving { from, number, part } => {
                self.mesh.handle_receiving(t, from, number, part)
            }
            Event::PartStalled { peer, number, part } => {
                tracing::debug!(peer = %peer.short(), number, part, "part stalled");
                self.mesh.handle_part_stalled(t, peer, number, part)
            }
            Event::PushUnconfirmed { peer, number, part } => {
                self.push_unconfirmed(t, peer, number, part)
            }
            Event::Misbehaved { peer, reason } => {
                tracing::warn!(peer = %peer.short(), reason = reason.as_str(), "dropping misbehaving peer");
                self.mesh.handle_misbehaviour(t, peer, reason);
            }
            Event::Publish { number } => self.mesh.handle_publish(t, number),
            Event::End { last } => self.mesh.handle_end(t, last),
        }
    }

    /// A seed `peer` did not acknowledge, or could not be sent: counted, and the mesh
    /// seeds it elsewhere.
    fn push_unconfirmed(&mut self, t: Instant, peer: NodeId, number: u64, part: u8) {
        add(&self.shared.counters.seeds_unconfirmed, 1);
        self.mesh.handle_push_unconfirmed(t, peer, number, part);
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.mesh.poll_action() {
            match action {
                Action::Send { peer, msg } => {
                    if let Some(c) = self.conns.get(&peer) {
                        if c.control.try_send(msg).is_err() {
                            // Its queue is full: it is not reading. Let it go.
                            c.conn
                                .close(quinn::VarInt::from_u32(1), b"control queue full");
                        }
                    }
                }
                Action::Request {
                    peer,
                    number,
                    part,
                    join,
                } => {
                    tracing::debug!(peer = %peer.short(), number, part, join, "request");
                    if let Some(c) = self.conns.get(&peer) {
                        let h = tokio::spawn(request(
                            self.shared.clone(),
                            c.conn.clone(),
                            peer,
                            (number, part),
                            join,
                        ));
                        self.transfers
                            .insert((peer, number, part), h.abort_handle());
                    }
                }
                Action::Cancel { peer, number, part } => {
                    if let Some(h) = self.transfers.remove(&(peer, number, part)) {
                        h.abort();
                    }
                }
                Action::Push { peer, number, part } => {
                    // Seeding is optional: skip it when the uplink is already queued up.
                    if !Uploads::may_push(self.shared.limiter.backlog()) {
                        continue;
                    }
                    match self.conns.get(&peer) {
                        Some(c) => {
                            tokio::spawn(push(
                                self.shared.clone(),
                                c.conn.clone(),
                                peer,
                                number,
                                part,
                            ));
                        }
                        // Gone already: the part goes to someone else.
                        None => self.push_unconfirmed(now(), peer, number, part),
                    }
                }
                Action::Dial { peer, addr, local } => {
                    let addrs = match addr {
                        Some(a) => self.shared.reachability().dial_addrs(a, local),
                        None => self.shared.origin_addrs.clone(),
                    };
                    tokio::spawn(dial(self.shared.clone(), peer, addrs));
                }
                Action::Disconnect { peer, reason } => {
                    tracing::debug!(peer = %peer.short(), reason = reason.as_str(), "disconnecting");
                    if let Some(c) = self.conns.remove(&peer) {
                        self.retire(&c.conn, c.lan);
                        close_after(c.conn, reason);
                    }
                }
            }
        }
    }
}

/// Closes `conn` for `reason`, after the delay the reason asks for.
fn close_after(conn: Connection, reason: DisconnectReason) {
    let delay = reason.close_delay();
    let close = move || conn.close(quinn::VarInt::from_u32(2), reason.as_str().as_bytes());
    if delay.is_zero() {
        close();
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            close();
        });
    }
}
