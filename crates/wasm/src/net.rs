//! The browser's libp2p: WebSocket and WebRTC-direct to relays (the browser's own
//! `WebSocket` and `RTCPeerConnection`), relay-v2 circuits through them, and `/webrtc`
//! direct connections to other browsers ([`crate::webrtc`]), around cairn-p2p's behaviour
//! composition.

use std::time::Duration;

use cairn_p2p::{Behaviour, node::Config};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Swarm, Transport as _, noise};

use crate::webrtc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the browser's swarm for `key`; `config` is the one its driver will be given.
pub fn swarm(
    key: Keypair,
    config: &Config,
    rtc: webrtc::Config,
) -> Result<Swarm<Behaviour>, String> {
    let cas = config.cas.clone();
    let (relay_transport, relay) = libp2p::relay::client::new(key.public().to_peer_id());
    let (direct, handle) = webrtc::Transport::new(rtc);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| -> Result<_, BoxError> {
            let muxed = |(peer, m): (PeerId, StreamMuxerBox), _| (peer, m);
            // `/webrtc` first: the relay client would take its addresses (they contain
            // `/p2p-circuit`) for plain circuits.
            let relayed = relay_transport
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(cairn_p2p::yamux_config())
                .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)));
            let ws = libp2p::websocket_websys::Transport::default()
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(cairn_p2p::yamux_config())
                .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)));
            let webrtc_direct =
                libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(key))
                    .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)));
            Ok(direct
                .map(muxed)
                .or_transport(relayed)
                .map(|e, _| e.into_inner())
                .or_transport(ws)
                .map(|e, _| e.into_inner())
                .or_transport(webrtc_direct)
                .map(|e, _| e.into_inner()))
        })
        .map_err(|e| e.to_string())?
        .with_behaviour(|key| -> Result<_, BoxError> {
            Ok(Behaviour::new(key, Some(relay), None, &cas)?)
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    handle.attach(swarm.behaviour_mut().streams.new_control());
    Ok(swarm)
}
