//! The browser's side of a node: its transports (WebSocket, [`crate::websocket`], and
//! WebRTC-direct to relays, the browser's own `WebSocket` and `RTCPeerConnection`; relay-v2 circuits through them;
//! `/webrtc` direct connections to other browsers, [`crate::webrtc`]) and its spawner,
//! given to cairn-p2p's node builder.

use cairn_core::store::BlockStore;
use cairn_p2p::node::{Builder, Config, Spawner, Transport, Upgrader};
use libp2p::core::Transport as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::OptionalTransport;
use libp2p::identity::Keypair;
use libp2p::{PeerId, relay};

use crate::webrtc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a node's tasks on the page's (or Worker's) event loop.
#[derive(Debug, Clone, Copy)]
pub struct Local;

impl Spawner for Local {
    fn spawn(&self, task: cairn_core::BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }
}

/// The browser's transports around `relay` (the relay client's), with `direct` (the
/// `/webrtc` transport) first: the relay client would take its addresses (they contain
/// `/p2p-circuit`) for plain circuits. In a private network WebRTC-direct to relays is
/// left out (it cannot carry the swarm key's protection); `/webrtc` to other browsers
/// stays, since it can only be signalled over a protected relayed connection.
pub fn transports(
    upgrader: &Upgrader,
    relay: relay::client::Transport,
    direct: webrtc::Transport,
) -> Result<Transport, BoxError> {
    let muxed = |(peer, m): (PeerId, StreamMuxerBox), _| (peer, m);
    let webrtc_direct = match upgrader.private() {
        false => OptionalTransport::some(
            libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(
                upgrader.key(),
            ))
            .map(|(peer, m), _| (peer, StreamMuxerBox::new(m))),
        ),
        true => OptionalTransport::none(),
    };
    Ok(direct
        .map(muxed)
        .or_transport(upgrader.authenticate(relay)?)
        .map(|e, _| e.into_inner())
        .or_transport(upgrader.authenticate(crate::websocket::Transport)?)
        .map(|e, _| e.into_inner())
        .or_transport(webrtc_direct)
        .map(|e, _| e.into_inner())
        .boxed())
}

/// A browser node for `key` over `store`, with `rtc`'s settings for `/webrtc`.
pub fn build<S: BlockStore + 'static>(
    key: Keypair,
    config: Config,
    rtc: webrtc::Config,
    store: S,
) -> Result<cairn_p2p::Node, cairn_p2p::node::BuildError> {
    let (direct, handle) = webrtc::Transport::new(rtc);
    let node = Builder::new(key)
        .config(config)
        .build(store, Local, |upgrader, relay| {
            transports(upgrader, relay, direct)
        })?;
    // Signalling streams go over the node's own streams.
    handle.attach(node.streams());
    Ok(node)
}
