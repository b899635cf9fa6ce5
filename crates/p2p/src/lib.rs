#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod announce;
pub mod behaviour;
pub mod bitswap;
pub mod cas;
pub mod ipfs;
pub mod metrics;
pub mod node;
pub mod perf;
pub mod routing_v1;
pub mod webrtc_signal;
pub mod webrtc_stream;

pub use behaviour::{Behaviour, CasConfig};

/// Yamux as cairn configures it.
///
/// rust-yamux 0.13 (libp2p's default) grows a stream's receive window past 1 MiB while it
/// refuses data frames over 1 MiB; js-libp2p's yamux sends frames as large as the window it
/// is granted, so a bulk upload from a js peer kills the connection (`FrameTooLarge`, seen
/// with 16 and 64 MiB uploads through the relay). The 0.12 implementation, selected by the
/// (deprecated) window setters, keeps a fixed window, and its frame limit is the receive
/// buffer size: a 4 MiB window under a 16 MiB limit means no peer that honours the window
/// can send a frame we refuse. Revisit when libp2p-yamux exposes 0.13's window limits.
#[allow(deprecated)]
pub fn yamux_config() -> libp2p::yamux::Config {
    let mut c = libp2p::yamux::Config::default();
    c.set_receive_window_size(4 * 1024 * 1024);
    c.set_max_buffer_size(16 * 1024 * 1024);
    c
}

pub use node::Node;
