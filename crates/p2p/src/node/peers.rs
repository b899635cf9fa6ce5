//! The peer table: what the node knows of each connected peer, kept while it is connected
//! and dropped when its last connection closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, identify};

use crate::upgrade;

/// What we know of a connected peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Open connections.
    pub connections: usize,
    /// Whether identify says it speaks `/cas/1.0.0`.
    pub cas: bool,
    /// Whether identify says it speaks bitswap 1.2.0.
    pub bitswap: bool,
    /// Its agent string (`None` until identify answered).
    pub agent: Option<String>,
    /// Whether every connection to it goes through a relay circuit.
    pub relayed: bool,
    /// Whether a direct `/webrtc` connection to it is open.
    pub direct: bool,
    /// Whether a direct `/webrtc` connection to it is being made.
    pub upgrading: bool,
    /// Why traffic to it stays on the relay (no direct connection could be made).
    pub direct_error: Option<upgrade::Failure>,
    /// The remote address of the (last) connection.
    pub addr: Option<Multiaddr>,
    /// The last round trip measured by ping.
    pub rtt: Option<Duration>,
    /// The addresses it listens on, as identify said (at most 16).
    pub listen_addrs: Vec<Multiaddr>,
    /// Whether identify says it serves the DHT (relays do; nodes ask it as clients).
    pub dht_server: bool,
    /// Why hole punching to it failed (its connection stays relayed), if it did.
    pub hole_punch_error: Option<String>,
}

impl PeerInfo {
    /// Whether identify has answered.
    pub fn identified(&self) -> bool {
        self.agent.is_some()
    }

    /// Whether it may be asked for blocks over `/cas` now: it speaks it, and is not being
    /// moved to a direct connection (its bytes would cross the relay meanwhile).
    pub fn askable(&self) -> bool {
        self.cas && !self.upgrading
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    relayed: bool,
    webrtc: bool,
}

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<PeerId, PeerInfo>,
    conns: HashMap<ConnectionId, Conn>,
}

impl Table {
    /// Recomputes what the table says of `peer`'s connections.
    fn refresh(&mut self, peer: &PeerId) {
        let mine: Vec<Conn> = self
            .conns
            .values()
            .filter(|c| c.peer == *peer)
            .copied()
            .collect();
        if let Some(i) = self.peers.get_mut(peer) {
            i.connections = mine.len();
            i.relayed = !mine.is_empty() && mine.iter().all(|c| c.relayed);
            i.direct = mine.iter().any(|c| c.webrtc);
        }
    }
}

/// The shared table; the driver writes it, handles read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerTable(Arc<Mutex<Table>>);

impl PeerTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self) -> HashMap<PeerId, PeerInfo> {
        self.lock().peers.clone()
    }

    pub(crate) fn get(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.lock().peers.get(peer).cloned()
    }

    /// Peers that may be asked over `/cas` now.
    pub(crate) fn askable(&self) -> Vec<PeerId> {
        self.lock()
            .peers
            .iter()
            .filter(|(_, i)| i.askable())
            .map(|(p, _)| *p)
            .collect()
    }

    /// A connection opened; `true` if it is the peer's first.
    pub(crate) fn connected(&self, id: ConnectionId, peer: PeerId, remote: &Multiaddr) -> bool {
        let webrtc = remote.iter().any(|p| matches!(p, Protocol::WebRTC));
        let relayed = !webrtc && remote.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        let mut t = self.lock();
        t.conns.insert(
            id,
            Conn {
                peer,
                relayed,
                webrtc,
            },
        );
        let first = !t.peers.contains_key(&peer);
        let info = t.peers.entry(peer).or_default();
        info.addr = Some(remote.clone());
        if webrtc {
            info.upgrading = false;
            info.direct_error = None;
        }
        t.refresh(&peer);
        first
    }

    /// A connection closed; `true` if it was the peer's last (the peer is forgotten).
    pub(crate) fn closed(&self, id: ConnectionId, peer: PeerId) -> bool {
        let mut t = self.lock();
        t.conns.remove(&id);
        if t.conns.values().any(|c| c.peer == peer) {
            t.refresh(&peer);
            false
        } else {
            t.peers.remove(&peer);
            true
        }
    }

    /// What identify said; `true` if the peer newly turned out to speak `/cas`.
    pub(crate) fn identified(&self, peer: PeerId, info: &identify::Info) -> bool {
        let cas = info
            .protocols
            .iter()
            .any(|p| p.as_ref() == crate::cas::PROTOCOL_NAME);
        let mut t = self.lock();
        let Some(i) = t.peers.get_mut(&peer) else {
            return false;
        };
        let newly = cas && !i.cas;
        i.cas = cas;
        i.bitswap = info.protocols.contains(&crate::bitswap::PROTOCOL);
        i.agent = Some(info.agent_version.clone());
        i.listen_addrs = info.listen_addrs.iter().take(16).cloned().collect();
        i.dht_server = info.protocols.contains(&libp2p::kad::PROTOCOL_NAME);
        newly
    }

    /// What hole punching to `peer` came to (native nodes only).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn hole_punched(&self, peer: PeerId, error: Option<String>) {
        if let Some(i) = self.lock().peers.get_mut(&peer) {
            i.hole_punch_error = error;
        }
    }

    pub(crate) fn rtt(&self, peer: PeerId, rtt: Duration) {
        if let Some(i) = self.lock().peers.get_mut(&peer) {
            i.rtt = Some(rtt);
        }
    }

    /// What the direct-upgrade policy did.
    pub(crate) fn upgrade(&self, event: &upgrade::Event) {
        let mut t = self.lock();
        match event {
            upgrade::Event::Attempting { peer, .. } => {
                if let Some(i) = t.peers.get_mut(peer) {
                    i.upgrading = true;
                    i.direct_error = None;
                }
            }
            upgrade::Event::Upgraded { peer } => {
                if let Some(i) = t.peers.get_mut(peer) {
                    i.upgrading = false;
                    i.direct_error = None;
                }
            }
            upgrade::Event::Failed { peer, reason } => {
                if let Some(i) = t.peers.get_mut(peer) {
                    i.upgrading = false;
                    i.direct_error = Some(reason.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_kept_while_connected_and_described_by_its_connections() {
        let t = PeerTable::default();
        let p = PeerId::random();
        let relay: Multiaddr = format!(
            "/ip4/127.0.0.1/tcp/1/ws/p2p/{}/p2p-circuit/p2p/{p}",
            PeerId::random()
        )
        .parse()
        .unwrap();
        let direct: Multiaddr = format!("{relay}/webrtc").parse().unwrap();
        assert!(t.connected(ConnectionId::new_unchecked(1), p, &relay));
        assert!(t.get(&p).unwrap().relayed);
        assert!(!t.connected(ConnectionId::new_unchecked(2), p, &direct));
        let i = t.get(&p).unwrap();
        assert!(i.direct && !i.relayed && i.connections == 2);
        assert!(!t.closed(ConnectionId::new_unchecked(2), p));
        assert!(t.get(&p).unwrap().relayed);
        assert!(t.closed(ConnectionId::new_unchecked(1), p));
        assert!(t.snapshot().is_empty());
    }

    #[test]
    fn only_identified_cas_peers_not_being_upgraded_are_askable() {
        let t = PeerTable::default();
        let p = PeerId::random();
        t.connected(
            ConnectionId::new_unchecked(1),
            p,
            &"/ip4/127.0.0.1/tcp/1".parse().unwrap(),
        );
        assert!(t.askable().is_empty());
        let info = identify::Info {
            public_key: libp2p::identity::Keypair::generate_ed25519().public(),
            protocol_version: "x".into(),
            agent_version: "cairn/test".into(),
            listen_addrs: vec![],
            protocols: vec![crate::cas::PROTOCOL],
            observed_addr: Multiaddr::empty(),
            signed_peer_record: None,
        };
        assert!(t.identified(p, &info));
        assert!(!t.identified(p, &info), "newly only once");
        assert_eq!(t.askable(), vec![p]);
        t.upgrade(&upgrade::Event::Attempting {
            peer: p,
            via: Multiaddr::empty(),
        });
        assert!(t.askable().is_empty());
        t.upgrade(&upgrade::Event::Failed {
            peer: p,
            reason: upgrade::Failure::NotSupported,
        });
        assert_eq!(t.askable(), vec![p]);
    }
}
