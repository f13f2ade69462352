//! Everything a node decides that is not a socket, beside the [`Mesh`](crate::mesh::Mesh)
//! that schedules: whether a segment's parts are still wanted and where they assemble,
//! whether a request is served or answered Busy, whether a peer's Hello is accepted, why a
//! connection is closed. Pure: time, backlog and verification results are arguments.
//!
//! Two drivers ask these pieces and nothing else for those answers: [`crate::net`], over
//! QUIC, and the simulator (the `starling-sim` crate), over modelled links. So a rule
//! changed here changes both, and a simulated figure is a figure of the product.
//!
//! The pieces are separate values rather than one struct because the two drivers hold
//! them differently: `net` consults assembly and upload admission from its transfer tasks
//! (under a lock, as quinn's driver holds its connection state), while the simulator runs
//! meshes on a worker thread and keeps these beside them on its event loop.
//!
//! Call order for a driver, per event:
//! - a control message arrives → [`ControlBudget::charge`] on its connection's budget;
//! - a peer connects → [`hello::check`], then [`hello::keep_new`] if it already had one;
//!   its Hello's view of our address → [`nat::Reachability::observe`];
//! - the mesh says dial → [`nat::Reachability::dial_addrs`];
//! - a part's first frame lands → [`Assemblies::wanted`] and [`Assemblies::first_frame`],
//!   then `Mesh::handle_receiving`;
//! - a request arrives → [`Uploads::admit`]; its upload ends → [`Uploads::finish`];
//! - the mesh says push → [`Uploads::may_push`];
//! - a segment is stored → [`Assemblies::remove`] and [`Assemblies::keep_window`].

pub mod assembly;
pub mod budget;
pub mod hello;
pub mod nat;
pub mod reason;
pub mod upload;

pub use assembly::{
    Assemblies, FirstFrame, KEEP_BEHIND, LAN_PIECE_SILENCE, MAX_ASSEMBLIES, PIECE_SILENCE,
};
pub use budget::ControlBudget;
pub use reason::{DisconnectReason, Forgery, Misbehaviour};
pub use upload::{
    seed_confirm_wait, Answer, PathSlots, Requester, Uploads, BUSY_BACKLOG, FIRST_SLOTS,
    PUSHES_PER_CONNECTION, SEED_CONFIRM_MIN, SERVES_PER_CONNECTION,
};
