//! The swarm driver: one future owns the swarm; a cloneable [`Node`] handle dials, listens,
//! lists peers and sends `/cas` requests, and implements cairn-core's [`PeerClient`], so the
//! source chain's peer race runs over real libp2p streams.
//!
//! The driver is a future the caller spawns on its runtime ([`Node::new`] returns it):
//! nothing here picks a platform. Inbound `/cas` requests are answered inside that future,
//! at most [`Config::max_inbound`] at a time; past that they get a `busy` error at once.
//!
//! Outbound requests run in the caller's future, on a stream of their own: dropping the
//! future (a race that another peer won, a timeout, an aborted fetch) drops the stream,
//! which resets it, so the peer stops sending what nobody will read.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cairn_core::CondSend;
use cairn_core::cid::Cid;
use cairn_core::source::routing::{ContentIndex, Reputations};
use cairn_core::source::{PeerClient, PeerError, PeerKey};
use cairn_core::store::BlockStore;
use futures::channel::{mpsc, oneshot};
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, FutureExt, SinkExt, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::dial_opts::PeerCondition;
use libp2p::swarm::{ConnectionId, Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, kad};

use crate::announce::{self, Announcement};
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::bitswap::{self, Bitswap};
use crate::cas;
use crate::metrics::Metrics;

/// Driver settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Inbound `/cas` requests answered at once.
    pub max_inbound: usize,
    /// `/cas` settings; [`crate::Behaviour::new`] must be given the same.
    pub cas: crate::CasConfig,
    /// What `caps` answers.
    pub caps: cas::Capabilities,
    /// Whether each listen address is also announced as an external address (right for a
    /// relay on a public host and for circuit addresses; wrong behind NAT).
    pub advertise_listen_addrs: bool,
    /// Where to record metrics, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// How long [`Node::stop`] lets `/cas` answers in flight finish before it cuts them.
    pub shutdown_grace: Duration,
    /// Listeners opened on the swarm before it was handed to the driver; closed on stop
    /// with those opened through [`Node::listen`].
    pub listeners: Vec<ListenerId>,
    /// Bitswap settings (whether to serve the store to IPFS peers, limits).
    pub bitswap: bitswap::Config,
    /// Whether a relayed connection this node dialed is moved to a direct `/webrtc` one
    /// when the peer speaks [`crate::webrtc_signal::PROTOCOL`] (browsers; the transport is
    /// the caller's). The relayed connection is closed once the direct one is up; when the
    /// direct one cannot be made, traffic stays on the relay and
    /// [`PeerInfo::direct_error`] says why.
    pub upgrade_direct: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_inbound: 64,
            cas: crate::CasConfig::default(),
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
            listeners: Vec::new(),
            bitswap: bitswap::Config::default(),
            upgrade_direct: false,
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Dialing failed.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// An announcement could not be published.
    #[error("cannot announce: {0}")]
    Announce(String),
    /// A DHT operation failed.
    #[error("DHT {op} for {cid} failed: {reason}")]
    Dht {
        /// What was attempted.
        op: &'static str,
        /// The CID (boxed: CIDs are large and errors travel in `Result`s).
        cid: Box<Cid>,
        /// Why.
        reason: String,
    },
    /// A connection to a known peer could not be made.
    #[error("cannot connect to {peer}: {reason}")]
    Connect {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A `/cas` request failed.
    #[error("/cas request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The driver has stopped.
    #[error("the network driver has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Command {
    Dial(Multiaddr, Reply<PeerId>),
    Listen(Multiaddr, Reply<Multiaddr>),
    Provide(Cid, Reply<()>),
    FindProviders(Cid, Reply<Vec<PeerId>>),
    Connect(PeerId, Vec<Multiaddr>, Reply<()>),
    Providers(Cid, Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    Announce(Cid, u64, Duration, Reply<()>),
    Subscribe(mpsc::Sender<Announcement>),
    Stop,
}

fn dht_key(cid: &Cid) -> kad::RecordKey {
    // IPFS keys provider records by the multihash, so any codec of the same bytes matches.
    kad::RecordKey::new(&cid.hash().to_bytes())
}

/// What we know of a connected peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Open connections.
    pub connections: usize,
    /// Whether identify says it speaks `/cas/1.0.0`.
    pub cas: bool,
    /// Whether identify says it speaks bitswap 1.2.0.
    pub bitswap: bool,
    /// Its agent string.
    pub agent: Option<String>,
    /// Whether every connection to it goes through a relay circuit.
    pub relayed: bool,
    /// Whether a direct `/webrtc` connection to it is open.
    pub direct: bool,
    /// Whether a direct `/webrtc` connection to it is being made.
    pub upgrading: bool,
    /// Why traffic to it stays on the relay (no direct connection could be made).
    pub direct_error: Option<String>,
    /// The remote address of the (last) connection.
    pub addr: Option<Multiaddr>,
    /// The last round trip measured by ping.
    pub rtt: Option<Duration>,
}

type Peers = Arc<Mutex<HashMap<PeerId, PeerInfo>>>;

fn lock(p: &Peers) -> MutexGuard<'_, HashMap<PeerId, PeerInfo>> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error's message followed by its sources' (transport errors hide the cause there).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}

/// Sends `/cas` requests on streams of their own.
#[derive(Clone)]
struct Requester {
    streams: libp2p_stream::Control,
    limits: cas::Limits,
    timeout: Duration,
}

impl Requester {
    async fn request(&self, peer: PeerId, req: cas::Request) -> Result<cas::Response, Error> {
        let fail = |reason: String| Error::Request { peer, reason };
        let exchange = async {
            let mut control = self.streams.clone();
            let mut stream = control
                .open_stream(peer, cas::PROTOCOL)
                .await
                .map_err(|e| fail(with_sources(&e)))?;
            // The write side stays open until the answer is in: dropping an open stream
            // resets it, so a peer whose answer is no longer wanted stops sending at once
            // (dropping a half-closed one would not tell it).
            cas::write_frame(&mut stream, &cas::encode(&req))
                .await
                .map_err(|e| fail(with_sources(&e)))?;
            let body = cas::read_frame(&mut stream, self.limits.max_response)
                .await
                .map_err(|e| fail(with_sources(&e)))?;
            let _ = stream.close().await;
            cas::decode(&body).map_err(|e| fail(format!("undecodable response: {e}")))
        };
        cairn_core::rt::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|| Err(fail(format!("no answer within {:?}", self.timeout))))
    }
}

/// A handle on a running node.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    peers: Peers,
    requester: Requester,
    reputations: Reputations,
    bitswap: Bitswap,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Node {
    /// Wraps `swarm`; returns the handle and the driver future, which the caller must spawn.
    /// `store` answers inbound `/cas` requests and bitswap wants.
    pub fn new<S: BlockStore + 'static>(
        swarm: Swarm<Behaviour>,
        store: S,
        config: Config,
    ) -> (Node, impl Future<Output = ()> + CondSend) {
        let peer_id = *swarm.local_peer_id();
        let (tx, rx) = mpsc::channel(64);
        let peers: Peers = Arc::default();
        let store = Arc::new(store);
        let (bitswap, engine) = Bitswap::new(
            swarm.behaviour().streams.new_control(),
            store.clone(),
            config.bitswap.clone(),
        );
        let node = Node {
            peer_id,
            commands: tx,
            peers: peers.clone(),
            requester: Requester {
                streams: swarm.behaviour().streams.new_control(),
                limits: config.cas.limits,
                timeout: config.cas.request_timeout,
            },
            reputations: Reputations::default(),
            bitswap: bitswap.clone(),
        };
        let driver = drive(
            swarm,
            store,
            config,
            rx,
            peers,
            node.requester.clone(),
            node.reputations.clone(),
            bitswap,
        );
        // The engine runs as long as the driver: it ends with the swarm.
        let driver = async move {
            futures::pin_mut!(driver, engine);
            futures::future::select(driver, engine).await;
        };
        (node, driver)
    }

    /// The bitswap client: asks one peer for one block at a time (see [`crate::bitswap`]).
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    /// Connects to `peer` at `addrs` (added to those already known) unless already
    /// connected; resolves once connected. The caller bounds the wait.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), Error> {
        self.ask(|r| Command::Connect(peer, addrs, r)).await
    }

    /// The providers of `cid` this node's own DHT store holds records for (on a relay: what
    /// browsers and other peers announced to it), with the addresses the records and
    /// identify gave. Asks no other node.
    pub async fn local_providers(&self, cid: Cid) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, Error> {
        self.ask(|r| Command::Providers(cid, r)).await
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
    /// the first address the listener reports.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, Error> {
        self.ask(|r| Command::Listen(addr, r)).await
    }

    /// Sends one `/cas` request to `peer` (dialing it if needed, at addresses the node
    /// knows) on a new stream, and reads the answer, within the configured request timeout.
    /// Dropping the future resets the stream.
    pub async fn request(&self, peer: PeerId, req: cas::Request) -> Result<cas::Response, Error> {
        self.requester.request(peer, req).await
    }

    /// Announces in the DHT (through the relay) that this node provides `cid`; resolves once
    /// the record is stored on at least one DHT server.
    pub async fn provide(&self, cid: Cid) -> Result<(), Error> {
        self.ask(|r| Command::Provide(cid, r)).await
    }

    /// Asks the DHT who provides `cid`; providers found are dialed (at the addresses their
    /// records carry, relay circuits included) as they are found.
    pub async fn find_providers(&self, cid: Cid) -> Result<Vec<PeerId>, Error> {
        self.ask(|r| Command::FindProviders(cid, r)).await
    }

    /// Tells peers on [`crate::announce::TOPIC`] that this node holds `root` (`size` bytes)
    /// for the next `ttl` (at most [`crate::announce::MAX_TTL`]). Fails if no connected
    /// peer listens for announcements yet.
    pub async fn announce(&self, root: Cid, size: u64, ttl: Duration) -> Result<(), Error> {
        self.ask(|r| Command::Announce(root, size, ttl, r)).await
    }

    /// Announcements from other peers, validated, as they arrive. The stream holds up to
    /// `capacity` unread ones; past that, new ones are dropped for this subscriber (with a
    /// log line) until it catches up.
    pub async fn announcements(
        &self,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Announcement>, Error> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.commands
            .clone()
            .send(Command::Subscribe(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(rx)
    }

    /// Connected peers and what we know of them.
    pub fn peers(&self) -> HashMap<PeerId, PeerInfo> {
        lock(&self.peers).clone()
    }

    /// Stops the driver: it closes its listeners and refuses new connections and requests,
    /// lets the `/cas` answers in flight finish (for at most [`Config::shutdown_grace`]),
    /// then drops the swarm, closing every connection. Await the driver future to know
    /// when it is done.
    pub async fn stop(&self) {
        let _ = self.commands.clone().send(Command::Stop).await;
    }
}

impl PeerClient for Node {
    fn candidates(&self, _cid: &Cid) -> Vec<PeerKey> {
        lock(&self.peers)
            .iter()
            // A peer being moved to a direct connection is asked once it is there (or the
            // attempt failed), so that its bytes do not cross the relay meanwhile.
            .filter(|(_, i)| i.cas && !i.upgrading)
            .map(|(p, _)| PeerKey::new(p.to_string()))
            .collect()
    }

    fn fetch(
        &self,
        peer: &PeerKey,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        let peer = PeerId::from_str(peer.as_str());
        let node = self.clone();
        let cid = *cid;
        async move {
            let peer = peer.map_err(|e| PeerError::Failed(format!("bad peer id: {e}")))?;
            let req = cas::Request::Get {
                cids: vec![(&cid).into()],
            };
            match node.request(peer, req).await {
                Ok(cas::Response::Get { blocks, .. }) => blocks
                    .into_iter()
                    .find(|b| b.0.cid().as_ref() == Some(&cid))
                    .map(|b| Bytes::from(b.1.into_vec()))
                    .ok_or(PeerError::NotFound),
                Ok(cas::Response::Error { code, message }) => Err(PeerError::Failed(format!(
                    "refused (code {code}): {message}"
                ))),
                Ok(_) => Err(PeerError::Failed(
                    "answered get with another message type".into(),
                )),
                Err(e) => Err(PeerError::Failed(e.to_string())),
            }
        }
    }

    fn reputations(&self) -> Option<Reputations> {
        Some(self.reputations.clone())
    }
}

/// A provider lookup in flight: the providers found so far, and who is waiting.
type FindQuery = (Cid, Vec<PeerId>, Reply<Vec<PeerId>>);

struct State {
    peers: Peers,
    dials: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    listens: HashMap<ListenerId, (Multiaddr, Reply<Multiaddr>)>,
    provides: HashMap<kad::QueryId, (Cid, Reply<()>)>,
    finds: HashMap<kad::QueryId, FindQuery>,
    /// Who waits for a connection to a peer ([`Node::connect`]).
    connects: HashMap<PeerId, Vec<Reply<()>>>,
    bitswap: Bitswap,
    subscribers: Vec<mpsc::Sender<Announcement>>,
    reputations: Reputations,
    /// `/cas` peers just identified, whose `caps` (and content index) to ask for.
    ask_caps: Vec<PeerId>,
    listeners: std::collections::HashSet<ListenerId>,
    /// Responses handed to request-response and not yet sent (or failed).
    responding: usize,
    /// Set once stopping: when to give up on the answers in flight.
    draining: Option<cairn_core::rt::Instant>,
    advertise: bool,
    metrics: Option<Arc<Metrics>>,
    /// Open connections: peer, whether relayed, whether `/webrtc`.
    conns: HashMap<ConnectionId, Conn>,
    /// Relayed connections this node dialed, and the `/webrtc` address to try through each.
    upgradable: HashMap<ConnectionId, Multiaddr>,
    /// `/webrtc` dials in flight.
    upgrades: HashMap<ConnectionId, PeerId>,
    /// When a `/webrtc` dial to a peer last failed: not tried again for [`RETRY_DIRECT`].
    failed_upgrades: HashMap<PeerId, cairn_core::rt::Instant>,
    upgrade_direct: bool,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    relayed: bool,
    webrtc: bool,
    dialer: bool,
}

/// The `/webrtc` address through the relayed connection at `remote` (`…/p2p-circuit[/p2p/peer]`).
fn webrtc_through(remote: &Multiaddr, peer: PeerId) -> Option<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let mut a = remote.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    matches!(a.iter().last(), Some(Protocol::P2pCircuit))
        .then(|| a.with(Protocol::WebRTC).with(Protocol::P2p(peer)))
}

impl State {
    /// Recomputes what the peer table says of `peer`'s connections.
    fn refresh(&self, peer: &PeerId) {
        let mine: Vec<Conn> = self
            .conns
            .values()
            .filter(|c| c.peer == *peer)
            .copied()
            .collect();
        if let Some(i) = lock(&self.peers).get_mut(peer) {
            i.relayed = !mine.is_empty() && mine.iter().all(|c| c.relayed);
            i.direct = mine.iter().any(|c| c.webrtc);
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site, in `Node::new`
async fn drive<S: BlockStore>(
    mut swarm: Swarm<Behaviour>,
    store: Arc<S>,
    config: Config,
    mut commands: mpsc::Receiver<Command>,
    peers: Peers,
    requester: Requester,
    reputations: Reputations,
    bitswap: Bitswap,
) {
    let mut st = State {
        peers,
        dials: HashMap::new(),
        listens: HashMap::new(),
        provides: HashMap::new(),
        finds: HashMap::new(),
        connects: HashMap::new(),
        bitswap,
        subscribers: Vec::new(),
        reputations,
        ask_caps: Vec::new(),
        listeners: config.listeners.iter().copied().collect(),
        responding: 0,
        draining: None,
        advertise: config.advertise_listen_addrs,
        metrics: config.metrics.clone(),
        conns: HashMap::new(),
        upgradable: HashMap::new(),
        upgrades: HashMap::new(),
        failed_upgrades: HashMap::new(),
        upgrade_direct: config.upgrade_direct,
    };
    // Declared before the futures that borrow it, so it outlives them.
    let index_cache: IndexCache = Mutex::new(None);
    let mut answering = FuturesUnordered::new();
    let mut asking_caps = FuturesUnordered::new();
    let (store, config, index_cache) = (&*store, &config, &index_cache);
    loop {
        if let Some(deadline) = st.draining {
            if answering.is_empty() && st.responding == 0 {
                tracing::debug!("stopped: every answer was sent");
                break;
            }
            if cairn_core::rt::Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = answering.len() + st.responding,
                    "stopping: cutting /cas answers still in flight after the grace period"
                );
                break;
            }
        }
        let draining = st.draining.is_some();
        futures::select! {
            // Commands stop being read once stopping; a timer rechecks the deadline instead.
            cmd = next_unless(&mut commands, draining).fuse() => match cmd {
                Some(Command::Dial(addr, reply)) => {
                    let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => { st.dials.insert(id, (addr, reply)); }
                        Err(e) => { let _ = reply.send(Err(Error::Dial { addr, reason: e.to_string() })); }
                    }
                }
                Some(Command::Listen(addr, reply)) => match swarm.listen_on(addr.clone()) {
                    Ok(id) => { st.listens.insert(id, (addr, reply)); }
                    Err(e) => { let _ = reply.send(Err(Error::Listen { addr, reason: e.to_string() })); }
                },
                Some(Command::Provide(cid, reply)) => {
                    match swarm.behaviour_mut().kad.start_providing(dht_key(&cid)) {
                        Ok(q) => { st.provides.insert(q, (cid, reply)); }
                        Err(e) => { let _ = reply.send(Err(Error::Dht { op: "provide", cid: Box::new(cid), reason: e.to_string() })); }
                    }
                }
                Some(Command::FindProviders(cid, reply)) => {
                    let q = swarm.behaviour_mut().kad.get_providers(dht_key(&cid));
                    st.finds.insert(q, (cid, Vec::new(), reply));
                }
                Some(Command::Connect(peer, addrs, reply)) => connect(&mut swarm, &mut st, peer, addrs, reply),
                Some(Command::Providers(cid, reply)) => {
                    let _ = reply.send(Ok(local_providers(&mut swarm, &cid)));
                }
                Some(Command::Announce(root, size, ttl, reply)) => {
                    let data = announce::encode(&root, size, announce::now(), ttl);
                    let topic = libp2p::gossipsub::IdentTopic::new(announce::TOPIC);
                    let out = swarm.behaviour_mut().gossipsub.publish(topic, data);
                    let _ = reply.send(out.map(|_| ()).map_err(|e| Error::Announce(match e {
                        libp2p::gossipsub::PublishError::NoPeersSubscribedToTopic =>
                            "no connected peer listens for announcements yet".into(),
                        e => e.to_string(),
                    })));
                }
                Some(Command::Subscribe(tx)) => st.subscribers.push(tx),
                Some(Command::Stop) | None => {
                    for id in st.listeners.drain() {
                        swarm.remove_listener(id);
                    }
                    st.draining = Some(cairn_core::rt::Instant::now() + config.shutdown_grace);
                }
            },
            (peer, caps) = asking_caps.select_next_some() => {
                let (peer, caps): (PeerId, Result<cas::Response, Error>) = (peer, caps);
                let key = PeerKey::new(peer.to_string());
                match caps {
                    Ok(cas::Response::Caps(cas::Capabilities { bloom: Some(bloom), .. })) => {
                        match ContentIndex::try_from(bloom) {
                            Ok(ix) => st.reputations.set_index(&key, ix),
                            Err(e) => tracing::debug!(%peer, error = %e, "caps"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%peer, error = %e, "caps request failed"),
                }
            },
            (channel, response) = answering.select_next_some() => {
                let channel: ResponseChannel<cas::Response> = channel;
                // The requester may have gone; nothing to do then.
                if swarm.behaviour_mut().cas.send_response(channel, response).is_ok() {
                    st.responding += 1;
                }
            },
            () = tick_if(draining).fuse() => {},
            event = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(BehaviourEvent::Cas(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                })) = event {
                    match request {
                        Ok(_) if st.draining.is_some() => {
                            let stopping = cas::Response::Error {
                                code: cas::code::BUSY,
                                message: "this node is shutting down; ask another".into(),
                            };
                            if swarm.behaviour_mut().cas.send_response(channel, stopping).is_ok() {
                                st.responding += 1;
                            }
                        }
                        Ok(req) if answering.len() < config.max_inbound => {
                            answering.push(async move {
                                let kind = req.kind();
                                let resp = match req {
                                    cas::Request::Caps {} => {
                                        cas::Response::Caps(caps_with_index(store, index_cache, &config.caps).await)
                                    }
                                    req => cas::answer(store, req, &config.cas.limits, &config.caps).await,
                                };
                                if let Some(m) = &config.metrics {
                                    m.record_answer(kind, &resp);
                                }
                                (channel, resp)
                            });
                        }
                        Ok(_) => {
                            tracing::debug!(%peer, "too many /cas requests in flight; answering busy");
                            let busy = cas::Response::Error {
                                code: cas::code::BUSY,
                                message: "too many requests in flight; retry later".into(),
                            };
                            if swarm.behaviour_mut().cas.send_response(channel, busy).is_ok() {
                                st.responding += 1;
                            }
                        }
                        Err(refusal) => {
                            tracing::debug!(%peer, ?refusal, "malformed /cas request");
                            if swarm.behaviour_mut().cas.send_response(channel, refusal).is_ok() {
                                st.responding += 1;
                            }
                        }
                    }
                } else {
                    handle(&mut swarm, event, &mut st);
                    for peer in st.ask_caps.drain(..) {
                        let requester = requester.clone();
                        asking_caps.push(async move {
                            (peer, requester.request(peer, cas::Request::Caps {}).await)
                        });
                    }
                }
            },
        }
    }
}

/// How long after a failed `/webrtc` attempt another relayed connection to the same peer
/// stays relayed without trying again.
const RETRY_DIRECT: Duration = Duration::from_secs(300);

/// Dials `peer` over `/webrtc` through a relayed connection this node made to it, once, if
/// it `speaks` the signalling protocol and no direct connection is open or being made.
fn upgrade(swarm: &mut Swarm<Behaviour>, st: &mut State, peer: PeerId, speaks: bool) {
    let Some(conn) = st
        .upgradable
        .iter()
        .find(|(id, _)| st.conns.get(id).is_some_and(|c| c.peer == peer))
        .map(|(id, _)| *id)
    else {
        return;
    };
    let busy = st.upgrades.values().any(|p| *p == peer)
        || st.conns.values().any(|c| c.peer == peer && c.webrtc)
        || st
            .failed_upgrades
            .get(&peer)
            .is_some_and(|t| t.elapsed() < RETRY_DIRECT);
    let Some(addr) = st.upgradable.remove(&conn) else {
        return;
    };
    if busy {
        return;
    }
    if !speaks {
        if let Some(i) = lock(&st.peers).get_mut(&peer) {
            i.direct_error = Some(format!(
                "the peer does not speak {} (not a browser node?)",
                crate::webrtc_signal::PROTOCOL
            ));
        }
        return;
    }
    let opts = DialOpts::peer_id(peer)
        .addresses(vec![addr.clone()])
        .condition(PeerCondition::Always)
        .build();
    let id = opts.connection_id();
    match swarm.dial(opts) {
        Ok(()) => {
            tracing::info!(%peer, %addr, "trying a direct /webrtc connection");
            st.upgrades.insert(id, peer);
            if let Some(i) = lock(&st.peers).get_mut(&peer) {
                i.upgrading = true;
                i.direct_error = None;
            }
        }
        Err(e) => {
            if let Some(i) = lock(&st.peers).get_mut(&peer) {
                i.direct_error = Some(with_sources(&e));
            }
        }
    }
}

fn handle(swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>, st: &mut State) {
    if let Some(m) = &st.metrics {
        m.record(&event);
        match &event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record_relay(e),
            _ => {}
        }
    }
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
            peer,
            result: Ok(rtt),
            ..
        })) => {
            if let Some(info) = lock(&st.peers).get_mut(&peer) {
                info.rtt = Some(rtt);
            }
        }
        SwarmEvent::ConnectionEstablished { connection_id, .. } if st.draining.is_some() => {
            // Stopping: no new connections (the listeners may be closing still).
            swarm.close_connection(connection_id);
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } => {
            use libp2p::multiaddr::Protocol;
            let remote = endpoint.get_remote_address();
            let webrtc = remote.iter().any(|p| matches!(p, Protocol::WebRTC));
            let relayed = !webrtc && remote.iter().any(|p| matches!(p, Protocol::P2pCircuit));
            st.conns.insert(
                connection_id,
                Conn {
                    peer: peer_id,
                    relayed,
                    webrtc,
                    dialer: endpoint.is_dialer(),
                },
            );
            {
                let mut p = lock(&st.peers);
                let info = p.entry(peer_id).or_default();
                info.connections += 1;
                info.addr = Some(remote.clone());
                if webrtc {
                    info.upgrading = false;
                    info.direct_error = None;
                }
            }
            st.refresh(&peer_id);
            st.upgrades.remove(&connection_id);
            if webrtc {
                // Traffic moves to the direct connection: the relayed ones this node dialed
                // are closed. Those the peer dialed are its to close (js-libp2p keeps them,
                // and does not notice when the other end closes one).
                tracing::info!(peer = %peer_id, "direct /webrtc connection open; closing the relayed ones");
                let relayed: Vec<ConnectionId> = st
                    .conns
                    .iter()
                    .filter(|(_, c)| c.peer == peer_id && c.relayed && c.dialer)
                    .map(|(id, _)| *id)
                    .collect();
                for id in relayed {
                    swarm.close_connection(id);
                }
            } else if relayed
                && st.upgrade_direct
                && endpoint.is_dialer()
                && let Some(addr) = webrtc_through(remote, peer_id)
            {
                // Tried once identify says the peer speaks the signalling protocol.
                st.upgradable.insert(connection_id, addr);
            }
            if let Some((_, reply)) = st.dials.remove(&connection_id) {
                let _ = reply.send(Ok(peer_id));
            }
            for reply in st.connects.remove(&peer_id).unwrap_or_default() {
                let _ = reply.send(Ok(()));
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            ..
        } => {
            st.conns.remove(&connection_id);
            st.upgradable.remove(&connection_id);
            st.refresh(&peer_id);
            let mut p = lock(&st.peers);
            if num_established == 0 {
                p.remove(&peer_id);
                st.bitswap.peer_gone(&peer_id);
            } else if let Some(i) = p.get_mut(&peer_id) {
                i.connections = num_established as usize;
            }
        }
        SwarmEvent::OutgoingConnectionError {
            connection_id,
            error,
            peer_id,
        } => {
            if let Some(peer) = st.upgrades.remove(&connection_id) {
                // The transport's own words, without the address (the panel shows it).
                let reason = match &error {
                    libp2p::swarm::DialError::Transport(errs) => errs
                        .iter()
                        .map(|(_, e)| with_sources(e).trim_start_matches([':', ' ']).to_owned())
                        .collect::<Vec<_>>()
                        .join("; "),
                    e => with_sources(e),
                };
                tracing::warn!(%peer, %reason, "no direct /webrtc connection; staying on the relay");
                st.failed_upgrades.retain(|_, t| t.elapsed() < RETRY_DIRECT);
                st.failed_upgrades
                    .insert(peer, cairn_core::rt::Instant::now());
                if let Some(i) = lock(&st.peers).get_mut(&peer) {
                    i.upgrading = false;
                    i.direct_error = Some(reason);
                }
            }
            if let Some(peer) = peer_id
                && !swarm.is_connected(&peer)
            {
                let reason = with_sources(&error);
                for reply in st.connects.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(Error::Connect {
                        peer,
                        reason: reason.clone(),
                    }));
                }
            }
            if let Some((addr, reply)) = st.dials.remove(&connection_id) {
                let _ = reply.send(Err(Error::Dial {
                    addr,
                    reason: error.to_string(),
                }));
            }
        }
        SwarmEvent::NewListenAddr {
            listener_id,
            address,
        } => {
            tracing::info!(%address, "listening");
            st.listeners.insert(listener_id);
            if st.advertise {
                swarm.add_external_address(address.clone());
            }
            if let Some((_, reply)) = st.listens.remove(&listener_id) {
                let _ = reply.send(Ok(address));
            }
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            swarm.remove_external_address(&address);
        }
        SwarmEvent::ListenerClosed {
            listener_id,
            reason,
            ..
        } => {
            st.listeners.remove(&listener_id);
            if let Some((addr, reply)) = st.listens.remove(&listener_id) {
                let reason = match reason {
                    Err(e) => e.to_string(),
                    Ok(()) => "listener closed".into(),
                };
                let _ = reply.send(Err(Error::Listen { addr, reason }));
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Cas(request_response::Event::InboundFailure {
            peer,
            error,
            ..
        })) => {
            st.responding = st.responding.saturating_sub(1);
            tracing::debug!(%peer, %error, "inbound /cas request failed");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Cas(request_response::Event::ResponseSent {
            ..
        })) => {
            st.responding = st.responding.saturating_sub(1);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let cas = info
                .protocols
                .iter()
                .any(|p| p.as_ref() == cas::PROTOCOL_NAME);
            let speaks_bitswap = info.protocols.contains(&bitswap::PROTOCOL);
            if let Some(i) = lock(&st.peers).get_mut(&peer_id) {
                if cas && !i.cas {
                    st.ask_caps.push(peer_id);
                }
                i.cas = cas;
                i.bitswap = speaks_bitswap;
                i.agent = Some(info.agent_version);
            }
            if st.upgrade_direct {
                upgrade(
                    swarm,
                    st,
                    peer_id,
                    info.protocols.contains(&crate::webrtc_signal::PROTOCOL),
                );
            }
            let dht = info.protocols.contains(&kad::PROTOCOL_NAME);
            for a in info.listen_addrs.into_iter().take(16) {
                if dht {
                    swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                }
                swarm.add_peer_address(peer_id, a);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => {
            tracing::info!(event = ?e, "relay");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(libp2p::gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        })) => {
            use libp2p::gossipsub::MessageAcceptance;
            let verdict = if message.topic.as_str() != announce::TOPIC {
                tracing::debug!(%propagation_source, topic = %message.topic, "message on an unknown topic");
                MessageAcceptance::Reject
            } else {
                match announce::validate(message.source, &message.data, announce::now()) {
                    Ok(a) => {
                        tracing::debug!(peer = %a.peer, root = %a.root, "announcement");
                        st.reputations
                            .note_held(&PeerKey::new(a.peer.to_string()), &a.root);
                        st.subscribers.retain(|s| !s.is_closed());
                        for s in &mut st.subscribers {
                            if s.try_send(a.clone()).is_err() {
                                tracing::warn!(root = %a.root, "announcement subscriber is behind; dropped one");
                            }
                        }
                        MessageAcceptance::Accept
                    }
                    Err(announce::Invalid::Expired) => MessageAcceptance::Ignore,
                    Err(e) => {
                        tracing::debug!(%propagation_source, error = %e, "announcement");
                        MessageAcceptance::Reject
                    }
                }
            };
            swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&message_id, &propagation_source, verdict);
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            ..
        })) => match result {
            kad::QueryResult::StartProviding(out) => {
                if let Some((cid, reply)) = st.provides.remove(&id) {
                    let _ = reply.send(out.map(|_| ()).map_err(|e| Error::Dht {
                        op: "provide",
                        cid: Box::new(cid),
                        reason: e.to_string(),
                    }));
                }
            }
            kad::QueryResult::GetProviders(out) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &out
                    && let Some((_, found, _)) = st.finds.get_mut(&id)
                {
                    for p in providers {
                        if *p == *swarm.local_peer_id() || found.contains(p) {
                            continue;
                        }
                        found.push(*p);
                        // Dial now, while the query still holds the addresses the record
                        // carried (they are forgotten when it ends).
                        let opts = DialOpts::peer_id(*p)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(e) = swarm.dial(opts) {
                            tracing::debug!(peer = %p, error = %e, "cannot dial provider");
                        }
                    }
                }
                if step.last
                    && let Some((_, found, reply)) = st.finds.remove(&id)
                {
                    let _ = reply.send(Ok(found));
                }
            }
            _ => {}
        },
        SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => {
            tracing::debug!(event = ?e, "relay client");
        }
        SwarmEvent::IncomingConnectionError {
            error,
            send_back_addr,
            ..
        } => {
            tracing::debug!(%send_back_addr, %error, "incoming connection failed");
        }
        _ => {}
    }
}

/// Starts a connection to `peer` (or joins one being made) for [`Node::connect`].
fn connect(
    swarm: &mut Swarm<Behaviour>,
    st: &mut State,
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
        Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
            st.connects.entry(peer).or_default().push(reply);
        }
        Err(e) => {
            let _ = reply.send(Err(Error::Connect {
                peer,
                reason: with_sources(&e),
            }));
        }
    }
}

/// Provider records for `cid` in this node's own DHT store, with addresses.
fn local_providers(swarm: &mut Swarm<Behaviour>, cid: &Cid) -> Vec<(PeerId, Vec<Multiaddr>)> {
    use libp2p::kad::store::RecordStore;
    let records = swarm
        .behaviour_mut()
        .kad
        .store_mut()
        .providers(&dht_key(cid));
    let me = *swarm.local_peer_id();
    records
        .into_iter()
        .filter(|r| r.provider != me)
        .map(|r| (r.provider, r.addresses))
        .collect()
}

/// How long a computed content index is reused for `caps` answers.
const INDEX_REFRESH: Duration = Duration::from_secs(10);

/// Most CIDs put in the content index sent with `caps`.
const INDEX_MAX_CIDS: usize = 1 << 20;

type IndexCache = Mutex<Option<(cairn_core::rt::Instant, cas::WireBloom)>>;

/// `caps` with a bloom filter of what `store` holds, recomputed at most every
/// [`INDEX_REFRESH`]; without one if the store cannot be listed.
async fn caps_with_index<S: BlockStore>(
    store: &S,
    cache: &IndexCache,
    caps: &cas::Capabilities,
) -> cas::Capabilities {
    let cached = {
        let c = cache.lock().unwrap_or_else(PoisonError::into_inner);
        c.as_ref()
            .filter(|(at, _)| at.elapsed() < INDEX_REFRESH)
            .map(|(_, b)| b.clone())
    };
    let bloom = match cached {
        Some(b) => Some(b),
        None => match cas::held_index(store, INDEX_MAX_CIDS).await {
            Ok(ix) => {
                let b = cas::WireBloom::from(&ix);
                *cache.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((cairn_core::rt::Instant::now(), b.clone()));
                Some(b)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the store for the content index");
                None
            }
        },
    };
    cas::Capabilities {
        bloom,
        ..caps.clone()
    }
}

/// The next command, or never while `stopping` (commands are no longer taken then).
async fn next_unless(commands: &mut mpsc::Receiver<Command>, stopping: bool) -> Option<Command> {
    if stopping {
        futures::future::pending().await
    } else {
        commands.next().await
    }
}

/// A short tick while `draining` (to recheck the grace deadline), never otherwise.
async fn tick_if(draining: bool) {
    if draining {
        cairn_core::rt::sleep(Duration::from_millis(50)).await;
    } else {
        futures::future::pending::<()>().await;
    }
}
