//! GossipSub whose streams do not keep connections open.
//!
//! libp2p-gossipsub keeps one inbound and one outbound stream open on every connection to a
//! peer that speaks it, and the swarm keeps a connection while any stream on it is open:
//! so a connection, once made, never closed (rust-libp2p#5190, open). A relay kept every
//! peer that ever reached it; a node kept every peer a DHT lookup touched (at 100 nodes each
//! held 96-101 connections, and 300 did not fit in one process's open files). GossipSub
//! itself means to keep only its mesh peers (its handler's `connection_keep_alive`); this
//! wrapper makes it so, by marking its streams [`ignore_for_keep_alive`]. Everything else
//! goes to [`gossipsub::Behaviour`] unchanged (it is reached through `Deref`). The
//! connections cairn means to keep (bootstrap peers, relays) are kept by [`crate::keep`],
//! which this accidental keep-alive used to hide.
//!
//! [`ignore_for_keep_alive`]: libp2p::Stream::ignore_for_keep_alive

use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::gossipsub;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

type Inner = <gossipsub::Behaviour as NetworkBehaviour>::ConnectionHandler;

/// [`gossipsub::Behaviour`], its streams left out of connection keep-alive.
pub struct Gossip(gossipsub::Behaviour);

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip").finish_non_exhaustive()
    }
}

impl Gossip {
    /// Wraps `inner`.
    pub fn new(inner: gossipsub::Behaviour) -> Self {
        Self(inner)
    }
}

impl std::ops::Deref for Gossip {
    type Target = gossipsub::Behaviour;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Gossip {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// GossipSub's connection handler, its streams marked as they are negotiated.
pub struct Handler(Inner);

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("gossip::Handler").finish_non_exhaustive()
    }
}

impl NetworkBehaviour for Gossip {
    type ConnectionHandler = Handler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(Handler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.0
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(Handler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        self.0.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.0.on_connection_handler_event(peer, id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = <Inner as ConnectionHandler>::FromBehaviour;
    type ToBehaviour = <Inner as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <Inner as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <Inner as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <Inner as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <Inner as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.0.listen_protocol()
    }

    /// GossipSub's own say: while the peer is in its mesh.
    fn connection_keep_alive(&self) -> bool {
        self.0.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.0.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.0.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.0.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            '_,
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                mut protocol,
                info,
            }) => {
                if let futures::future::Either::Left((framed, _)) = &mut protocol {
                    framed.ignore_for_keep_alive();
                }
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                mut protocol,
                info,
            }) => {
                protocol.0.ignore_for_keep_alive();
                ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info })
            }
            other => other,
        };
        self.0.on_connection_event(event);
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use std::time::Duration;

    use libp2p::identity::Keypair;
    use libp2p::swarm::Swarm;

    use super::*;

    /// A swarm of `B` alone on the memory transport, closing connections idle for 1 s.
    pub(crate) fn swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
        crate::streams::tests::swarm_with(Duration::from_secs(1), behaviour)
    }

    /// GossipSub subscribed to `topic` (so that it tells each new peer, over a stream).
    fn gossipsub(key: &Keypair, topic: &str) -> gossipsub::Behaviour {
        let mut g = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::Config::default(),
        )
        .unwrap();
        g.subscribe(&gossipsub::IdentTopic::new(topic)).unwrap();
        g
    }

    /// Connects two swarms and says whether their connection closed within `within`.
    async fn closes_within<B: NetworkBehaviour>(
        mut a: Swarm<B>,
        mut b: Swarm<B>,
        within: Duration,
    ) -> bool {
        crate::streams::tests::connected(&mut a, &mut b).await;
        crate::streams::tests::closed_within(&mut a, &mut b, within).await
    }

    /// Peers on different topics are in no mesh: their connection closes once idle, though
    /// GossipSub keeps a stream open on it each way. Unwrapped, it never does.
    #[tokio::test]
    async fn a_connection_with_only_gossipsub_streams_closes_when_idle() {
        let wrapped = |topic: &'static str| swarm(move |k| Gossip::new(gossipsub(k, topic)));
        assert!(
            closes_within(wrapped("a"), wrapped("b"), Duration::from_secs(20)).await,
            "the idle connection closed"
        );
        // Without the wrapper the streams hold it open (rust-libp2p#5190). When this fails,
        // libp2p-gossipsub has been fixed and this module can go.
        let plain = |topic: &'static str| swarm(move |k| gossipsub(k, topic));
        assert!(
            !closes_within(plain("a"), plain("b"), Duration::from_secs(5)).await,
            "libp2p-gossipsub's own streams no longer keep connections open"
        );
    }
}
