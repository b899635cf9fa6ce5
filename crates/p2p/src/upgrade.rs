//! The direct-upgrade policy: moving a relayed connection to a direct `/webrtc` one, as
//! DCUtR moves one to a hole-punched connection.
//!
//! When this node dialed a relayed connection to a peer, and identify says the peer speaks
//! [`crate::webrtc_signal::PROTOCOL`], the behaviour dials `/webrtc` through that connection
//! once (the transport is the platform's: browsers have one). When the direct connection
//! opens, the relayed connections this node dialed are closed; those the peer dialed are
//! its to close (js-libp2p keeps them, and does not notice when the other end closes one).
//! When it cannot be made, traffic stays on the relay, the [`Event::Failed`] says why, and
//! the peer is not tried again for [`RETRY_DIRECT`].
//!
//! The behaviour only decides and dials; the node's driver tells it what identify found
//! ([`Behaviour::on_identify`]) and turns its events into what `peers()` shows.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_core::rt::{Clock, Instant, SystemClock};
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// How long after a failed `/webrtc` attempt another relayed connection to the same peer
/// stays relayed without trying again.
pub const RETRY_DIRECT: Duration = Duration::from_secs(300);

/// Why no direct connection was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The peer does not speak the signalling protocol.
    #[error(
        "the peer does not speak {} (not a browser node?)",
        crate::webrtc_signal::PROTOCOL
    )]
    NotSupported,
    /// The `/webrtc` dial failed: what the transport said.
    #[error("{0}")]
    Dial(cairn_core::Reason),
}

/// What the policy did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A direct connection to `peer` is being made through `via`.
    Attempting {
        /// The peer.
        peer: PeerId,
        /// The `/webrtc` address dialed.
        via: Multiaddr,
    },
    /// A direct `/webrtc` connection to `peer` is open.
    Upgraded {
        /// The peer.
        peer: PeerId,
    },
    /// No direct connection to `peer` could be made; traffic stays on the relay.
    Failed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: Failure,
    },
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    relayed: bool,
    webrtc: bool,
    dialer: bool,
}

/// The policy's network behaviour (no protocol of its own).
pub struct Behaviour {
    enabled: bool,
    clock: Box<dyn Clock>,
    conns: HashMap<ConnectionId, Conn>,
    /// Relayed connections this node dialed, and the `/webrtc` address to try through each.
    upgradable: HashMap<ConnectionId, Multiaddr>,
    /// `/webrtc` dials in flight.
    attempts: HashMap<ConnectionId, PeerId>,
    /// When a `/webrtc` dial to a peer last failed.
    failed: HashMap<PeerId, Instant>,
    out: VecDeque<ToSwarm<Event, Infallible>>,
}

/// The `/webrtc` address through the relayed connection at `remote` (`…/p2p-circuit[/p2p/peer]`).
fn webrtc_through(remote: &Multiaddr, peer: PeerId) -> Option<Multiaddr> {
    let mut a = remote.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    matches!(a.iter().last(), Some(Protocol::P2pCircuit))
        .then(|| a.with(Protocol::WebRTC).with(Protocol::P2p(peer)))
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("upgrade::Behaviour")
            .field("enabled", &self.enabled)
            .field("connections", &self.conns.len())
            .field("attempts", &self.attempts.len())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// The policy, on (`enabled`: browsers) or off.
    pub fn new(enabled: bool) -> Self {
        Self::with_clock(enabled, SystemClock)
    }

    /// The policy, timing its retry window on `clock`.
    pub fn with_clock(enabled: bool, clock: impl Clock) -> Self {
        Self {
            enabled,
            clock: Box::new(clock),
            conns: HashMap::new(),
            upgradable: HashMap::new(),
            attempts: HashMap::new(),
            failed: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Peers with any state here (for tests that check nothing outlives a peer).
    pub fn tracked_peers(&self) -> usize {
        let mut peers: Vec<PeerId> = self.conns.values().map(|c| c.peer).collect();
        peers.extend(self.failed.keys());
        peers.sort();
        peers.dedup();
        peers.len()
    }

    /// Identify reports the peer's protocols: tries the upgrade if it `speaks` signalling.
    /// Returns what it decided ([`Event::Attempting`] or [`Event::Failed`]) at once, so the
    /// caller's view of the peer never lags behind the dial; later outcomes come from
    /// polling the behaviour.
    pub fn on_identify(&mut self, peer: PeerId, speaks: bool) -> Option<Event> {
        if !self.enabled {
            return None;
        }
        let conn = self
            .upgradable
            .keys()
            .find(|id| self.conns.get(id).is_some_and(|c| c.peer == peer))
            .copied()?;
        let addr = self.upgradable.remove(&conn)?;
        let busy = self.attempts.values().any(|p| *p == peer)
            || self.conns.values().any(|c| c.peer == peer && c.webrtc)
            || self
                .failed
                .get(&peer)
                .is_some_and(|t| self.clock.now().saturating_duration_since(*t) < RETRY_DIRECT);
        if busy {
            return None;
        }
        if !speaks {
            return Some(Event::Failed {
                peer,
                reason: Failure::NotSupported,
            });
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        self.attempts.insert(opts.connection_id(), peer);
        tracing::info!(%peer, %addr, "trying a direct /webrtc connection");
        self.out.push_back(ToSwarm::Dial { opts });
        Some(Event::Attempting { peer, via: addr })
    }

    fn established(&mut self, id: ConnectionId, peer: PeerId, endpoint: &ConnectedPoint) {
        let remote = endpoint.get_remote_address();
        let webrtc = remote.iter().any(|p| matches!(p, Protocol::WebRTC));
        let relayed = !webrtc && remote.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        let dialer = endpoint.is_dialer();
        self.conns.insert(
            id,
            Conn {
                peer,
                relayed,
                webrtc,
                dialer,
            },
        );
        self.attempts.remove(&id);
        if webrtc {
            self.failed.remove(&peer);
            tracing::info!(%peer, "direct /webrtc connection open; closing the relayed ones");
            for (cid, _) in self
                .conns
                .iter()
                .filter(|(_, c)| c.peer == peer && c.relayed && c.dialer)
            {
                self.out.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(*cid),
                });
            }
            self.out
                .push_back(ToSwarm::GenerateEvent(Event::Upgraded { peer }));
        } else if relayed
            && self.enabled
            && dialer
            && let Some(addr) = webrtc_through(remote, peer)
        {
            // Tried once identify says the peer speaks the signalling protocol.
            self.upgradable.insert(id, addr);
        }
    }

    fn closed(&mut self, id: ConnectionId, peer: PeerId, remaining: usize) {
        self.conns.remove(&id);
        self.upgradable.remove(&id);
        if remaining == 0 {
            // The failure is remembered only while the peer is around; it is bounded by
            // the peers connected, not by every peer ever seen.
            self.failed.remove(&peer);
        }
    }

    fn dial_failed(&mut self, id: ConnectionId, reason: String) {
        if let Some(peer) = self.attempts.remove(&id) {
            tracing::warn!(%peer, %reason, "no direct /webrtc connection; staying on the relay");
            if self.conns.values().any(|c| c.peer == peer) {
                self.failed.insert(peer, self.clock.now());
            }
            self.out.push_back(ToSwarm::GenerateEvent(Event::Failed {
                peer,
                reason: Failure::Dial(reason.into()),
            }));
        }
    }
}

/// The transport's own words for a failed dial, without the address (the peers panel
/// shows it).
fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    match error {
        libp2p::swarm::DialError::Transport(errs) => errs
            .iter()
            .map(|(_, e)| {
                cairn_core::Reason::flatten(e)
                    .trim_start_matches([':', ' '])
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join("; "),
        e => cairn_core::Reason::flatten(e),
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.established(e.connection_id, e.peer_id, e.endpoint)
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                connection_id,
                peer_id,
                remaining_established,
                ..
            }) => self.closed(connection_id, peer_id, remaining_established),
            FromSwarm::DialFailure(DialFailure {
                connection_id,
                error,
                ..
            }) => self.dial_failed(connection_id, dial_reason(error)),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.out.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::behaviour::ConnectionEstablished;

    fn circuit(peer: PeerId) -> Multiaddr {
        format!(
            "/ip4/127.0.0.1/tcp/1/ws/p2p/{}/p2p-circuit/p2p/{peer}",
            PeerId::random()
        )
        .parse()
        .unwrap()
    }

    fn dialer(address: Multiaddr) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address,
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    fn establish(b: &mut Behaviour, id: ConnectionId, peer: PeerId, endpoint: &ConnectedPoint) {
        b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    fn drain(b: &mut Behaviour) -> Vec<ToSwarm<Event, Infallible>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(e) = b.poll(&mut cx) {
            out.push(e);
        }
        out
    }

    #[test]
    fn a_relayed_connection_we_dialed_is_upgraded_once_identify_allows_it() {
        let mut b = Behaviour::new(true);
        let peer = PeerId::random();
        let relayed = ConnectionId::new_unchecked(1);
        establish(&mut b, relayed, peer, &dialer(circuit(peer)));
        assert!(drain(&mut b).is_empty(), "nothing before identify");
        let decided = b.on_identify(peer, true);
        assert!(
            matches!(decided, Some(Event::Attempting { peer: p, ref via }) if p == peer && via.to_string().contains("/p2p-circuit/webrtc/p2p/")),
            "{decided:?}"
        );
        let dial = drain(&mut b)
            .into_iter()
            .find_map(|e| match e {
                ToSwarm::Dial { opts } => Some(opts.connection_id()),
                _ => None,
            })
            .expect("a /webrtc dial");
        // Identify again: no second attempt.
        assert_eq!(b.on_identify(peer, true), None);
        assert!(drain(&mut b).is_empty());
        // The direct connection opens: the relayed one we dialed is closed.
        let direct: Multiaddr = format!("{}/webrtc/p2p/{peer}", circuit(peer))
            .parse()
            .unwrap();
        establish(&mut b, dial, peer, &dialer(direct));
        let out = drain(&mut b);
        assert!(out.iter().any(|e| matches!(e, ToSwarm::CloseConnection { connection: CloseConnection::One(c), .. } if *c == relayed)));
        assert!(out.iter().any(
            |e| matches!(e, ToSwarm::GenerateEvent(Event::Upgraded { peer: p }) if *p == peer)
        ));
    }

    /// A clock the test moves.
    #[derive(Clone)]
    struct Manual(std::sync::Arc<std::sync::Mutex<Instant>>);

    impl Manual {
        fn new() -> Self {
            Self(std::sync::Arc::new(std::sync::Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn a_failed_attempt_is_reported_and_not_retried_until_the_window_passes() {
        let clock = Manual::new();
        let mut b = Behaviour::with_clock(true, clock.clone());
        let peer = PeerId::random();
        let relayed = ConnectionId::new_unchecked(1);
        establish(&mut b, relayed, peer, &dialer(circuit(peer)));
        assert!(b.on_identify(peer, true).is_some());
        let dial = drain(&mut b)
            .into_iter()
            .find_map(|e| match e {
                ToSwarm::Dial { opts } => Some(opts.connection_id()),
                _ => None,
            })
            .unwrap();
        b.dial_failed(dial, "ICE failed".into());
        let out = drain(&mut b);
        assert!(
            matches!(&out[..], [ToSwarm::GenerateEvent(Event::Failed { peer: p, reason: Failure::Dial(r) })] if *p == peer && r.to_string() == "ICE failed"),
            "{out:?}"
        );
        // Another relayed connection within the retry window: no attempt.
        let again = ConnectionId::new_unchecked(2);
        establish(&mut b, again, peer, &dialer(circuit(peer)));
        clock.advance(RETRY_DIRECT - Duration::from_secs(1));
        assert_eq!(b.on_identify(peer, true), None);
        assert!(drain(&mut b).is_empty());
        // Once the window has passed, a new relayed connection is tried again.
        clock.advance(Duration::from_secs(1));
        let third = ConnectionId::new_unchecked(3);
        establish(&mut b, third, peer, &dialer(circuit(peer)));
        assert!(matches!(
            b.on_identify(peer, true),
            Some(Event::Attempting { .. })
        ));
        // Gone: nothing is kept for the peer.
        b.closed(relayed, peer, 2);
        b.closed(again, peer, 1);
        b.closed(third, peer, 0);
        assert_eq!(b.tracked_peers(), 0);
    }

    #[test]
    fn peers_that_cannot_signal_and_connections_we_did_not_dial_stay_relayed() {
        let mut b = Behaviour::new(true);
        let (a, c) = (PeerId::random(), PeerId::random());
        establish(
            &mut b,
            ConnectionId::new_unchecked(1),
            a,
            &dialer(circuit(a)),
        );
        assert_eq!(
            b.on_identify(a, false),
            Some(Event::Failed {
                peer: a,
                reason: Failure::NotSupported
            })
        );
        assert!(drain(&mut b).is_empty());
        let listener = ConnectedPoint::Listener {
            local_addr: circuit(c),
            send_back_addr: circuit(c),
        };
        establish(&mut b, ConnectionId::new_unchecked(2), c, &listener);
        assert_eq!(
            b.on_identify(c, true),
            None,
            "the peer dialed it: its to upgrade"
        );
        assert!(drain(&mut b).is_empty());
        // Off: nothing at all.
        let mut off = Behaviour::new(false);
        establish(
            &mut off,
            ConnectionId::new_unchecked(3),
            a,
            &dialer(circuit(a)),
        );
        assert_eq!(off.on_identify(a, true), None);
        assert!(drain(&mut off).is_empty());
    }
}
