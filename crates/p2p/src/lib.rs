#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod announce;
pub mod behaviour;
pub mod bitswap;
pub mod budget;
pub mod cas;
pub mod dht_store;
pub mod framing;
pub mod gossip;
pub mod ipfs;
pub mod keep;
pub mod metrics;
pub mod node;
pub mod perf;
pub mod pinning;
pub mod pnet;
pub mod routing_v1;
pub mod sources;
pub mod streams;
pub mod upgrade;
pub mod webrtc_signal;
pub mod webrtc_stream;

pub use behaviour::Behaviour;

/// Yamux as cairn configures it.
///
/// rust-yamux 0.13 (libp2p's default) grows a stream's receive window past 1 MiB while it
/// refuses data frames over 1 MiB; js-libp2p's yamux sends frames as large as the window it
/// is granted, so a bulk upload from a js peer kills the connection (`FrameTooLarge`, seen
/// with 16 and 64 MiB uploads through the relay). The 0.12 implementation, selected by the
/// (deprecated) window setters, keeps a fixed window, and its frame limit is the receive
/// buffer size: a 4 MiB window under a 16 MiB limit means no peer that honours the window
/// can send a frame we refuse. Revisit when libp2p-yamux exposes 0.13's window limits.
pub fn yamux_config() -> libp2p::yamux::Config {
    yamux_config_with(RECEIVE_WINDOW)
}

/// A stream's receive window in [`yamux_config`]: what a peer may send on one stream before
/// it is read, and so what one unread stream can make the muxer hold.
pub const RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// [`yamux_config`] with another per-stream receive window (at least yamux's 256 KiB, at
/// most the 16 MiB frame limit). A relay, which reads little of what it receives except
/// circuits it forwards, uses a smaller one so that peers stuffing streams it has not read
/// yet get less of its memory.
#[allow(deprecated)]
pub fn yamux_config_with(receive_window: u32) -> libp2p::yamux::Config {
    let mut c = libp2p::yamux::Config::default();
    c.set_receive_window_size(receive_window.clamp(256 * 1024, 16 * 1024 * 1024));
    c.set_max_buffer_size(16 * 1024 * 1024);
    c
}

pub use node::{Builder, Event, Events, Node, PeerInfo};

/// The CID of a small `raw` block that is `i` (tests).
#[cfg(test)]
pub(crate) fn test_cid(i: u32) -> cairn_core::Cid {
    use cairn_core::cid::{Codec, HashAlg};
    *cairn_core::block::Block::from_data(Codec::Raw, HashAlg::Sha2_256, i.to_le_bytes().to_vec())
        .expect("a small block")
        .cid()
}
