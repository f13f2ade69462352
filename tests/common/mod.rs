//! Support code shared by the integration tests; each test crate pulls it in
//! with `mod common;` and uses the parts it needs.

#[allow(dead_code, unreachable_pub)]
pub mod evil;
#[allow(dead_code, unreachable_pub)]
pub mod nodes;
#[allow(dead_code, unreachable_pub)]
pub mod payload;
pub mod players;
