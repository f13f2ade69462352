//! Support code shared by the integration tests; each test crate pulls it in
//! with `mod common;` and uses the parts it needs.

pub mod players;
