//! A running node: one future (the driver) owns the swarm; a cloneable [`Node`] handle
//! dials, listens, asks the DHT, announces, lists peers, sends `/cas` requests and tells
//! what happens through [`Node::events`].
//!
//! Made by [`Builder`] (the platform supplies the transports, the store and a spawner), or
//! by [`Node::new`] from a swarm. The concerns of the driver each live in a module of their
//! own: [`peers`](PeerInfo) (the peer table), `connections` (dials and listeners),
//! `discovery` (the DHT), `caps` (the content-index exchange), `shutdown`, the direct-upgrade
//! policy ([`crate::upgrade`]) and `/cas` serving ([`crate::cas::serve`]); `driver` only
//! routes commands and swarm events to them.

mod bootstrap;
mod builder;
mod caps;
mod connections;
mod discovery;
mod driver;
mod events;
mod linger;
mod peers;
mod sendq;
mod shutdown;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_core::cid::Cid;
use cairn_core::source::PeerError;
use cairn_core::source::routing::Reputations;
use cairn_core::store::BlockStore;
use cairn_core::{CondSend, Reason};
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use libp2p::swarm::Swarm;
use libp2p::{Multiaddr, PeerId};

pub use bootstrap::{Backoff, BootstrapPeer, REFRESH as BOOTSTRAP_REFRESH, peer_of};
pub use builder::{BuildError, Builder, HANDSHAKE_TIMEOUT, Spawner, Transport, Upgrader};
pub use events::{Event, Events};
pub use peers::PeerInfo;

use crate::behaviour::Behaviour;
use crate::bitswap::{self, Bitswap};
use crate::cas;
use crate::metrics::Metrics;
use crate::streams::Control;

/// A node's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `/cas` settings (serving, limits, timeouts).
    pub cas: cas::Config,
    /// What `caps` answers.
    pub caps: cas::Capabilities,
    /// Whether each listen address is also announced as an external address (right for a
    /// relay on a public host; wrong behind NAT, where AutoNAT confirms the addresses that
    /// are). Relay circuit addresses are announced either way.
    pub advertise_listen_addrs: bool,
    /// Where to record metrics, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// How long [`Node::stop`] lets `/cas` answers in flight finish before it cuts them.
    pub shutdown_grace: Duration,
    /// Bitswap settings (whether to serve the store to IPFS peers, limits).
    pub bitswap: bitswap::Config,
    /// Whether a relayed connection this node dialed is moved to a direct `/webrtc` one
    /// when the peer speaks [`crate::webrtc_signal::PROTOCOL`] (browsers; the transport is
    /// the platform's). See [`crate::upgrade`].
    pub upgrade_direct: bool,
    /// How many events a subscriber may fall behind before it loses some.
    pub event_capacity: usize,
    /// How long a connection with nothing open on it stays.
    pub idle_timeout: Duration,
    /// The bytes of answers the node holds for its peers (`/cas` and bitswap; the relay's
    /// HTTP gateway shares it), per peer and in total.
    pub budget: crate::budget::Budget,
    /// Peers the node stays connected to and refreshes its DHT through (relays list each
    /// other here to federate): dialed at start without waiting, again with [`Backoff`]
    /// while unreachable, and again when they go away. See [`Node::bootstrap_peers`].
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to hold a reservation on (listen through, so peers reach this node by each):
    /// kept like [`Config::bootstrap`] peers, and a reservation refused or lost is asked for
    /// again with the same backoff. Where `upgrade_direct` is on, a `/webrtc` listener goes
    /// through each too. See [`Node::listen_addrs`].
    pub relays: Vec<Multiaddr>,
    /// How long an unreachable bootstrap peer or relay waits before it is dialed again, and
    /// a refused reservation before it is asked for again.
    pub bootstrap_backoff: Backoff,
    /// What the DHT store takes from other peers ([`crate::dht_store`]).
    pub dht: crate::dht_store::Limits,
    /// Hole punching and AutoNAT (native nodes; `None` in browsers). See
    /// [`Node::reachability`] and [`Event::HolePunched`].
    pub nat: Option<crate::behaviour::Nat>,
    /// The private network's key ([`crate::pnet`]): with one, every connection is protected
    /// with it and only its members can connect. `None`: the open network.
    pub swarm_key: Option<crate::pnet::SwarmKey>,
    /// How long a connection's handshake may take before it is dropped
    /// ([`builder::HANDSHAKE_TIMEOUT`] by default).
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cas: cas::Config::default(),
            caps: cas::Capabilities {
                agent: concat!("cairn/", env!("CARGO_PKG_VERSION")).into(),
                protocols: vec![cas::PROTOCOL_NAME.into()],
                ipfs: false,
                bandwidth: None,
                bloom: None,
            },
            advertise_listen_addrs: true,
            metrics: None,
            shutdown_grace: Duration::from_secs(10),
            bitswap: bitswap::Config::default(),
            upgrade_direct: false,
            event_capacity: 1024,
            idle_timeout: Duration::from_secs(60),
            budget: crate::budget::Budget::default(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            bootstrap_backoff: Backoff::default(),
            dht: crate::dht_store::Limits::default(),
            nat: None,
            swarm_key: None,
            handshake_timeout: builder::HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Dialing failed.
    #[error("cannot dial {addr}: {source}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why (the swarm's dial error).
        source: Reason,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        source: Reason,
    },
    /// No connected peer listens for announcements yet.
    #[error("cannot announce: no connected peer listens for announcements yet")]
    NoAnnouncementPeers,
    /// An announcement could not be published.
    #[error("cannot announce: {0}")]
    Announce(#[source] Reason),
    /// A DHT operation failed.
    #[error("DHT {op} for {cid} failed: {source}")]
    Dht {
        /// What was attempted.
        op: &'static str,
        /// The CID (boxed: CIDs are large and errors travel in `Result`s).
        cid: Box<Cid>,
        /// Why.
        source: Reason,
    },
    /// A connection to a known peer could not be made.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// The peer.
        peer: PeerId,
        /// Why.
        source: Reason,
    },
    /// The driver has stopped.
    #[error("the network driver has stopped")]
    Stopped,
}

/// A provider lookup's outcome ([`Node::lookup_providers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The providers found (each dialed as it was found).
    pub providers: Vec<PeerId>,
    /// DHT peers asked.
    pub requests: u32,
    /// DHT peers that answered.
    pub answered: u32,
}

/// Whether a node can be dialed from outside ([`Node::reachability`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Peers dialed it back at this address.
    Public(Multiaddr),
    /// Peers could not dial it back: it is behind a NAT or a firewall (relays and hole
    /// punching reach it).
    Private,
    /// Not known yet (or AutoNAT is off).
    Unknown,
}

#[cfg(not(target_arch = "wasm32"))]
impl From<libp2p::autonat::NatStatus> for Reachability {
    fn from(s: libp2p::autonat::NatStatus) -> Self {
        match s {
            libp2p::autonat::NatStatus::Public(a) => Self::Public(a),
            libp2p::autonat::NatStatus::Private => Self::Private,
            libp2p::autonat::NatStatus::Unknown => Self::Unknown,
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

pub(crate) enum Command {
    Dial(Multiaddr, Reply<PeerId>),
    Listen(Multiaddr, Reply<Multiaddr>),
    Provide(Cid, Reply<()>),
    FindProviders(Cid, Reply<Lookup>),
    Connect(PeerId, Vec<Multiaddr>, Reply<()>),
    Providers(Cid, Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    Announce(Cid, u64, Duration, Reply<()>),
    BootstrapPeers(Reply<Vec<BootstrapPeer>>),
    Keep(Vec<Multiaddr>, bool, Reply<()>),
    Reachability(Reply<Reachability>),
    Stop,
}

/// A handle on a running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    peers: peers::PeerTable,
    listening: connections::ListenAddrs,
    cas: cas::Client,
    reputations: Reputations<PeerId>,
    bitswap: Bitswap,
    streams: Control,
    events: tokio::sync::broadcast::WeakSender<Event>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Node {
    /// Wraps `swarm`; returns the handle and the driver future, which the caller must spawn
    /// (or let [`Builder`] do it all). `store` answers inbound `/cas` requests and bitswap
    /// wants.
    pub fn new<S: BlockStore + 'static>(
        swarm: Swarm<Behaviour>,
        store: S,
        config: Config,
    ) -> (Node, impl Future<Output = ()> + CondSend) {
        driver::start(swarm, Arc::new(store), config)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .clone()
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Dials `addr` and resolves once connected, with the peer's id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        self.ask(|r| Command::Dial(addr, r)).await
    }

    /// Listens on `addr` (for a relay circuit, `<relay addr>/p2p-circuit`) and resolves with
    /// the first address the listener reports; further ones come as [`Event::Listening`].
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, Error> {
        self.ask(|r| Command::Listen(addr, r)).await
    }

    /// Connects to `peer` at `addrs` (added to those already known) unless already
    /// connected; resolves once connected. The caller bounds the wait.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), Error> {
        self.ask(|r| Command::Connect(peer, addrs, r)).await
    }

    /// Announces in the DHT that this node provides `cid`; resolves once the record is
    /// stored on at least one DHT server.
    pub async fn provide(&self, cid: Cid) -> Result<(), Error> {
        self.ask(|r| Command::Provide(cid, r)).await
    }

    /// Asks the DHT who provides `cid`; providers found are dialed (at the addresses their
    /// records carry, relay circuits included) as they are found.
    pub async fn find_providers(&self, cid: Cid) -> Result<Vec<PeerId>, Error> {
        Ok(self.lookup_providers(cid).await?.providers)
    }

    /// [`Node::find_providers`], with what the lookup took: how many DHT peers were asked
    /// (the lookup's hops, in all) and how many answered.
    pub async fn lookup_providers(&self, cid: Cid) -> Result<Lookup, Error> {
        self.ask(|r| Command::FindProviders(cid, r)).await
    }

    /// The providers of `cid` this node's own DHT store holds records for (on a relay: what
    /// browsers and other peers announced to it), with the addresses the records and
    /// identify gave. Asks no other node.
    pub async fn local_providers(&self, cid: Cid) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, Error> {
        self.ask(|r| Command::Providers(cid, r)).await
    }

    /// Keeps `addrs` as bootstrap peers from now on (`relays`: and holds a reservation on
    /// each), as if they had been in [`Config::bootstrap`] (or [`Config::relays`]). A node
    /// that listens should be given them after its listeners are up: its first connections
    /// then leave from its listening port, which hole punching needs (the address the peer
    /// observes is then the one others can punch to).
    pub async fn keep(&self, addrs: Vec<Multiaddr>, relays: bool) -> Result<(), Error> {
        self.ask(|r| Command::Keep(addrs, relays, r)).await
    }

    /// The bootstrap peers ([`Config::bootstrap`]): which are connected, which are down and
    /// why, and when each is dialed next.
    pub async fn bootstrap_peers(&self) -> Result<Vec<BootstrapPeer>, Error> {
        self.ask(Command::BootstrapPeers).await
    }

    /// Whether this node can be dialed from outside, as AutoNAT found
    /// ([`Config::nat`]; always [`Reachability::Unknown`] without it).
    pub async fn reachability(&self) -> Result<Reachability, Error> {
        self.ask(Command::Reachability).await
    }

    /// Tells peers on [`crate::announce::TOPIC`] that this node holds `root` (`size` bytes)
    /// for the next `ttl` (at most [`crate::announce::MAX_TTL`]). Fails if no connected
    /// peer listens for announcements yet. Others' announcements arrive as
    /// [`Event::Announcement`].
    pub async fn announce(&self, root: Cid, size: u64, ttl: Duration) -> Result<(), Error> {
        self.ask(|r| Command::Announce(root, size, ttl, r)).await
    }

    /// Sends one `/cas` request to `peer` (dialing it if needed, at addresses the node
    /// knows) on a new stream, and reads the answer, within the configured request timeout.
    /// Dropping the future resets the stream.
    pub async fn request(
        &self,
        peer: PeerId,
        req: &cas::Request,
    ) -> Result<cas::Response, cas::RequestError> {
        self.cas.request(peer, req).await
    }

    /// Asks `peer` for one block over `/cas` (unverified: the caller checks it).
    pub async fn get(&self, peer: PeerId, cid: &Cid) -> Result<Bytes, PeerError> {
        self.cas.get(peer, cid).await
    }

    /// Asks `peer` for `root` and the blocks of the DAG below it over `/cas` (`dag`): the
    /// root's bytes and the rest of the answer to take blocks from (see
    /// [`cas::Client::dag`]; unverified: the caller checks every block).
    pub async fn dag(
        &self,
        peer: PeerId,
        root: &Cid,
    ) -> Result<(Bytes, Option<cas::Pushed>), PeerError> {
        self.cas.dag(peer, root).await
    }

    /// The bitswap client: asks one peer for one block at a time (see [`crate::bitswap`]).
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    /// A handle on the node's raw streams (for protocols of the caller's own).
    pub fn streams(&self) -> Control {
        self.streams.clone()
    }

    /// What the node knows of each peer (connections, latency, lies, content index),
    /// shared by every peer source made over it. Peers are dropped when they leave.
    pub fn reputations(&self) -> &Reputations<PeerId> {
        &self.reputations
    }

    /// The addresses the node listens on now, relay circuits included (each reported by its
    /// listener; without the trailing `/p2p/<this node>`).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listening.get()
    }

    /// Connected peers and what we know of them.
    pub fn peers(&self) -> HashMap<PeerId, PeerInfo> {
        self.peers.snapshot()
    }

    /// What we know of `peer`, if it is connected.
    pub fn peer(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.peers.get(peer)
    }

    /// Connected peers that may be asked for blocks over `/cas` now.
    pub fn askable_peers(&self) -> Vec<PeerId> {
        self.peers.askable()
    }

    /// A new subscriber to what happens from now on (see [`Event`]); the stream ends when
    /// the node stops.
    pub fn events(&self) -> Events {
        match self.events.upgrade() {
            Some(tx) => events::Emitter::from(tx).subscribe(),
            None => Events::ended(),
        }
    }

    /// Waits until one of `peers` (any peer when empty) satisfies `ok`, for at most
    /// `limit`; resolves to that peer's info. Gives up early (`None`) once every one of
    /// `peers` is connected and identified and none does (waiting longer would not help).
    pub async fn wait_for(
        &self,
        peers: &[PeerId],
        limit: Duration,
        ok: impl Fn(&PeerInfo) -> bool,
    ) -> Option<(PeerId, PeerInfo)> {
        // Subscribe first, then look: nothing can happen in between unseen.
        let mut events = self.events();
        let check = || {
            let table = self.peers.snapshot();
            let found = table
                .iter()
                .find(|(p, i)| (peers.is_empty() || peers.contains(p)) && ok(i))
                .map(|(p, i)| (*p, i.clone()));
            let hopeless = !peers.is_empty()
                && peers
                    .iter()
                    .all(|p| table.get(p).is_some_and(|i| i.identified() && !i.upgrading));
            (found, hopeless)
        };
        let wait = async {
            loop {
                match check() {
                    (Some(found), _) => return Some(found),
                    (None, true) => return None,
                    (None, false) => {}
                }
                events.next().await?;
            }
        };
        cairn_core::rt::timeout(limit, wait).await.flatten()
    }

    /// Stops the driver: it closes its listeners and refuses new connections and requests,
    /// lets the `/cas` answers in flight finish (for at most [`Config::shutdown_grace`]),
    /// then drops the swarm, closing every connection. Await the driver future (or
    /// [`Node::events`] ending) to know when it is done.
    pub async fn stop(&self) {
        let _ = self.commands.clone().send(Command::Stop).await;
    }
}
