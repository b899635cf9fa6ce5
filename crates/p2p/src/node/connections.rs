//! Dialing, listening and connecting on a handle's behalf: the requests in flight and who
//! waits for them, answered from the swarm's connection and listener events.

use std::collections::{HashMap, HashSet};

use libp2p::core::transport::ListenerId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, Swarm};
use libp2p::{Multiaddr, PeerId};

use super::{Error, Reply};
use crate::behaviour::Behaviour;

/// Dials, listens and connects in flight.
#[derive(Default)]
pub(crate) struct Connections {
    dials: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    listens: HashMap<ListenerId, (Multiaddr, Reply<Multiaddr>)>,
    /// Who waits for a connection to a peer ([`super::Node::connect`]).
    connects: HashMap<PeerId, Vec<Reply<()>>>,
    /// Every listener opened, closed on stop.
    listeners: HashSet<ListenerId>,
    /// Addresses each listener reported.
    listen_addrs: HashMap<ListenerId, Vec<Multiaddr>>,
    /// All of them, for [`super::Node::listen_addrs`].
    shared: ListenAddrs,
}

/// The addresses a node listens on now, shared with its handles.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenAddrs(std::sync::Arc<std::sync::Mutex<Vec<Multiaddr>>>);

impl ListenAddrs {
    pub(crate) fn get(&self) -> Vec<Multiaddr> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, addrs: Vec<Multiaddr>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addrs;
    }
}

impl Connections {
    pub(crate) fn new(shared: ListenAddrs) -> Self {
        Self {
            shared,
            ..Self::default()
        }
    }

    fn publish(&self) {
        self.shared
            .set(self.listen_addrs.values().flatten().cloned().collect());
    }

    pub(crate) fn dial(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        addr: Multiaddr,
        reply: Reply<PeerId>,
    ) {
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (addr, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Dial {
                    addr,
                    source: cairn_core::Reason::new(e),
                }));
            }
        }
    }

    pub(crate) fn listen(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        addr: Multiaddr,
        reply: Reply<Multiaddr>,
    ) {
        match swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.listeners.insert(id);
                self.listens.insert(id, (addr, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Listen {
                    addr,
                    source: cairn_core::Reason::new(e),
                }));
            }
        }
    }

    /// Starts a connection to `peer` (or joins one being made) unless already connected.
    pub(crate) fn connect(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<()>,
    ) {
        if swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match swarm.dial(opts) {
            // A dial already under way resolves the waiters when it ends.
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                self.connects.entry(peer).or_default().push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Connect {
                    peer,
                    source: cairn_core::Reason::new(e),
                }));
            }
        }
    }

    pub(crate) fn established(&mut self, id: ConnectionId, peer: PeerId) {
        if let Some((_, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Ok(peer));
        }
        for reply in self.connects.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Ok(()));
        }
    }

    pub(crate) fn dial_failed(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        error: DialError,
        connected: bool,
    ) {
        let error = cairn_core::Reason::new(error);
        if let Some(peer) = peer
            && !connected
        {
            for reply in self.connects.remove(&peer).unwrap_or_default() {
                let _ = reply.send(Err(Error::Connect {
                    peer,
                    source: error.clone(),
                }));
            }
        }
        if let Some((addr, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Err(Error::Dial {
                addr,
                source: error,
            }));
        }
    }

    pub(crate) fn new_listen_addr(&mut self, id: ListenerId, addr: &Multiaddr) {
        self.listen_addrs.entry(id).or_default().push(addr.clone());
        self.publish();
        if let Some((_, reply)) = self.listens.remove(&id) {
            let _ = reply.send(Ok(addr.clone()));
        }
    }

    pub(crate) fn expired_listen_addr(&mut self, id: ListenerId, addr: &Multiaddr) {
        if let Some(a) = self.listen_addrs.get_mut(&id) {
            a.retain(|x| x != addr);
        }
        self.publish();
    }

    /// A listener closed; returns the addresses it had.
    pub(crate) fn listener_closed(
        &mut self,
        id: ListenerId,
        error: Option<String>,
    ) -> Vec<Multiaddr> {
        self.listeners.remove(&id);
        if let Some((addr, reply)) = self.listens.remove(&id) {
            let _ = reply.send(Err(Error::Listen {
                addr,
                source: error.unwrap_or_else(|| "listener closed".into()).into(),
            }));
        }
        let gone = self.listen_addrs.remove(&id).unwrap_or_default();
        self.publish();
        gone
    }

    /// Listens on `addr` for the node itself (no handle waits): the listener is closed on
    /// stop like the others.
    pub(crate) fn listen_for_node(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        addr: Multiaddr,
    ) -> Result<ListenerId, libp2p::TransportError<std::io::Error>> {
        let id = swarm.listen_on(addr)?;
        self.listeners.insert(id);
        Ok(id)
    }

    /// Closes every listener (stopping).
    pub(crate) fn close_listeners(&mut self, swarm: &mut Swarm<Behaviour>) {
        for id in self.listeners.drain() {
            swarm.remove_listener(id);
        }
    }
}
