//! The browser's libp2p: WebSocket and WebRTC-direct to relays (the browser's own
//! `WebSocket` and `RTCPeerConnection`), and relay-v2 circuits through them, around
//! cairn-p2p's behaviour composition.

use std::time::Duration;

use cairn_p2p::{Behaviour, node::Config};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{Swarm, Transport as _, noise};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the browser's swarm for `key`; `config` is the one its driver will be given.
pub fn swarm(key: Keypair, config: &Config) -> Result<Swarm<Behaviour>, String> {
    let cas = config.cas.clone();
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| -> Result<_, BoxError> {
            Ok(libp2p::websocket_websys::Transport::default()
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(cairn_p2p::yamux_config()))
        })
        .map_err(|e| e.to_string())?
        .with_other_transport(|key| {
            libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(key))
        })
        .map_err(|e| e.to_string())?
        .with_relay_client(noise::Config::new, cairn_p2p::yamux_config)
        .map_err(|e| e.to_string())?
        .with_behaviour(|key, relay| -> Result<_, BoxError> {
            Ok(Behaviour::new(key, Some(relay), None, &cas)?)
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
