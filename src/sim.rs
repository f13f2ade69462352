//! Discrete-event simulator: many [`crate::mesh`] nodes over modelled links in virtual time (being written).
