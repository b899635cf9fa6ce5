//! Native libp2p nodes: the transports a native cairn node uses (TCP and WebSocket, each with
//! Noise and Yamux, plus relay-v2 circuits), around cairn-p2p's behaviour composition.

use std::time::Duration;

use cairn_p2p::{Behaviour, CasConfig};
use libp2p::identity::Keypair;
use libp2p::{Swarm, noise, relay, yamux};

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the libp2p transports: {0}")]
pub struct Error(String);

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

/// Builds a swarm for `key` on the tokio runtime; `relay_server` makes it a relay.
/// Transport byte counters (per protocol stack and direction) go into `registry`.
pub async fn swarm(
    key: Keypair,
    relay_server: Option<relay::Config>,
    cas: CasConfig,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, Error> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(err)?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(err)?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(err)?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, client| Behaviour::new(key, Some(client), relay_server, &cas))
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
