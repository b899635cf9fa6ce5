#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// The `/cas/1.0.0` peer protocol (specified in `docs/protocol.md`).
pub mod cas {
    /// The protocol id cairn peers negotiate.
    pub const PROTOCOL_NAME: &str = "/cas/1.0.0";
    /// The largest block a `/cas` response may carry (the core's block limit).
    pub const MAX_BLOCK_SIZE: usize = cairn_core::MAX_BLOCK_SIZE;
}
