//! The connections a node means to keep, kept open on both sides.
//!
//! libp2p closes a connection once it has been idle for the swarm's idle timeout, *on each
//! side by its own rule*: a connection stays only while both sides want it. Until
//! [`crate::gossip`], GossipSub's streams kept every connection open forever, which also kept
//! the ones cairn means to keep: to its bootstrap peers and relays (the node dials those
//! again whenever they go away). This behaviour keeps those on purpose:
//! - the node marks a peer [kept](Behaviour::keep) (the bootstrap module does, for every
//!   bootstrap peer and relay it connects to): its connections to that peer stay open
//!   (`connection_keep_alive`), and on each direct one it opens one [`PROTOCOL`] stream and
//!   holds it, so that the peer's side, which counts the stream as activity, keeps the
//!   connection open too. A peer that does not speak the protocol (js-libp2p, Kubo) keeps it
//!   by its own rule, as before;
//! - a direct `/webrtc` connection (browser to browser) is kept on both sides by the same
//!   rule: it costs a signalling exchange through a relay to make one again;
//! - at most one [`PROTOCOL`] stream from the peer is held per connection (a new one
//!   replaces the old), so a peer cannot make it hold more; it is read only to learn when
//!   the peer lets go.
//!
//! Everything else (a peer a DHT lookup touched, a Helia node that fetched, a finished
//! circuit) closes once idle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::AsyncRead;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};

/// The stream a keeping side holds open on the connection.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/keep/1");

/// The behaviour: which peers are kept, and their connections.
#[derive(Debug, Default)]
pub struct Behaviour {
    kept: HashSet<PeerId>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    events: VecDeque<ToSwarm<Infallible, bool>>,
}

impl Behaviour {
    /// Nothing kept yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps every connection to `peer`, now and later, on both sides.
    pub fn keep(&mut self, peer: PeerId) {
        if self.kept.insert(peer) {
            self.tell(peer, true);
        }
    }

    /// Lets `peer`'s connections close when idle again.
    pub fn let_go(&mut self, peer: PeerId) {
        if self.kept.remove(&peer) {
            self.tell(peer, false);
        }
    }

    /// Whether `peer` is kept.
    pub fn is_kept(&self, peer: &PeerId) -> bool {
        self.kept.contains(peer)
    }

    fn tell(&mut self, peer: PeerId, keep: bool) {
        for id in self.connections.get(&peer).into_iter().flatten() {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*id),
                event: keep,
            });
        }
    }

    fn handler(&self, peer: PeerId, remote: &Multiaddr) -> Handler {
        let webrtc = remote.iter().any(|p| matches!(p, Protocol::WebRTC));
        let relayed = !webrtc && remote.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        Handler {
            keep: self.kept.contains(&peer),
            webrtc,
            relayed,
            outbound: None,
            requested: false,
            refused: false,
            inbound: None,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, remote))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, addr))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(ids) = self.connections.get_mut(&e.peer_id) {
                    ids.retain(|id| *id != e.connection_id);
                    if ids.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// One connection's side.
pub struct Handler {
    /// The node keeps this peer.
    keep: bool,
    /// A direct `/webrtc` connection, kept for its own sake.
    webrtc: bool,
    /// Through a relay's circuit: no stream is opened over it (a circuit is limited, and the
    /// node keeps the relay, not the circuit).
    relayed: bool,
    /// The stream this side holds open while it keeps the peer.
    outbound: Option<Stream>,
    requested: bool,
    /// The peer does not speak [`PROTOCOL`], or ended the stream: not asked again on this
    /// connection.
    refused: bool,
    /// The peer's stream, held while the peer holds it.
    inbound: Option<Stream>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("keep::Handler")
            .field("keep", &self.keep)
            .field("webrtc", &self.webrtc)
            .field("holding", &self.outbound.is_some())
            .field("held", &self.inbound.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether `stream` is still open: reads and drops what the peer sends (it sends nothing),
/// and says `false` once it ends or fails.
fn still_open(stream: &mut Stream, cx: &mut Context<'_>) -> bool {
    let mut buf = [0u8; 64];
    // A few reads at most per poll: a peer that writes into it cannot hold the task.
    for _ in 0..16 {
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return true,
        }
    }
    cx.waker().wake_by_ref();
    true
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep || self.webrtc
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Infallible>> {
        if let Some(s) = &mut self.inbound
            && !still_open(s, cx)
        {
            self.inbound = None;
        }
        if let Some(s) = &mut self.outbound
            && !still_open(s, cx)
        {
            self.outbound = None;
            self.refused = true;
        }
        if self.keep && !self.relayed && !self.refused && !self.requested && self.outbound.is_none()
        {
            self.requested = true;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
        if !keep {
            // Dropped: the peer sees the stream end and lets the connection idle too.
            self.outbound = None;
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => self.inbound = Some(protocol),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => {
                self.requested = false;
                if self.keep {
                    self.outbound = Some(protocol);
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { .. }) => {
                self.requested = false;
                self.refused = true;
            }
            _ => {}
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gossip::tests::swarm;
    use crate::streams::tests::{closed_within, connected};

    /// The swarms close connections idle for 1 s. A peer `a` keeps stays connected though
    /// `b` does not keep `a` (the stream `a` holds keeps `b`'s side open), and the connection
    /// closes once `a` lets go. One nobody keeps closes when idle.
    #[tokio::test]
    async fn a_kept_peer_stays_connected_on_both_sides_until_let_go() {
        let (mut a, mut b) = (swarm(|_| Behaviour::new()), swarm(|_| Behaviour::new()));
        connected(&mut a, &mut b).await;
        assert!(
            closed_within(&mut a, &mut b, Duration::from_secs(10)).await,
            "a connection nobody keeps closes when idle"
        );

        let (mut a, mut b) = (swarm(|_| Behaviour::new()), swarm(|_| Behaviour::new()));
        a.behaviour_mut().keep(*b.local_peer_id());
        connected(&mut a, &mut b).await;
        assert!(
            !closed_within(&mut a, &mut b, Duration::from_secs(4)).await,
            "kept: open after four idle timeouts"
        );
        assert!(a.is_connected(b.local_peer_id()) && b.is_connected(a.local_peer_id()));
        a.behaviour_mut().let_go(*b.local_peer_id());
        assert!(
            closed_within(&mut a, &mut b, Duration::from_secs(10)).await,
            "let go: it closes when idle"
        );
    }

    /// Kept after connecting works the same: the handler is told, and opens its stream.
    #[tokio::test]
    async fn a_peer_kept_once_connected_is_kept_too() {
        let (mut a, mut b) = (swarm(|_| Behaviour::new()), swarm(|_| Behaviour::new()));
        connected(&mut a, &mut b).await;
        a.behaviour_mut().keep(*b.local_peer_id());
        assert!(
            !closed_within(&mut a, &mut b, Duration::from_secs(4)).await,
            "kept: open after four idle timeouts"
        );
        assert!(b.is_connected(a.local_peer_id()));
    }
}
