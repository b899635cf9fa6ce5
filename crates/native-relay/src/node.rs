//! Native libp2p nodes: the transports a native cairn node uses (TCP and WebSocket, each with
//! Noise and Yamux; QUIC; relay-v2 circuits), around cairn-p2p's behaviour composition.

use std::time::Duration;

use cairn_p2p::Behaviour;
use libp2p::identity::Keypair;
use libp2p::{Swarm, noise, relay, yamux};

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the libp2p transports: {0}")]
pub struct Error(String);

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

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
pub fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_receive_window_size(4 * 1024 * 1024);
    c.set_max_buffer_size(16 * 1024 * 1024);
    c
}

/// Builds a swarm for `key` on the tokio runtime; `relay_server` makes it a relay. `config`
/// is the one its [`cairn_p2p::Node`] driver will be given.
/// Transport byte counters (per protocol stack and direction) go into `registry`.
pub async fn swarm(
    key: Keypair,
    relay_server: Option<relay::Config>,
    config: &cairn_p2p::node::Config,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, Error> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )
        .map_err(err)?
        .with_quic()
        .with_dns()
        .map_err(err)?
        .with_websocket(noise::Config::new, yamux_config)
        .await
        .map_err(err)?
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(err)?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, client| {
            Behaviour::new(key, Some(client), relay_server, &config.cas)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
