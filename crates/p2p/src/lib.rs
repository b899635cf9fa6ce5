#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod announce;
pub mod behaviour;
pub mod cas;
pub mod metrics;
pub mod node;
pub mod perf;

pub use behaviour::{Behaviour, CasConfig};
pub use node::Node;
