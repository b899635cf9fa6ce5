//! Raw libp2p streams for cairn's own protocols (`/cas`, bitswap, `/webrtc-signaling`, the
//! benchmarks' perf probe): a [`Control`] opens streams to a peer and accepts them for a
//! protocol; the [`Behaviour`] and its connection handler negotiate them.
//!
//! It does what `libp2p-stream` does, with the bounds and the concurrency a block protocol
//! needs:
//! - **Outbound streams are negotiated concurrently**, up to
//!   [`Config::max_negotiating_outbound`] per connection: a fetch window of 32 requests is
//!   32 negotiations in flight, not one after another (libp2p-stream negotiates one at a
//!   time per connection, so every request waited a round trip for the one before).
//! - **A direct connection is preferred** over a relayed one when a peer has both, so bytes
//!   do not cross a relay once a direct path exists.
//! - **Inbound streams are bounded per connection** ([`Config::max_inbound_per_connection`],
//!   counted until the accepted [`Stream`] is dropped) and queue for their protocol's
//!   reader up to the capacity given to [`Control::accept`]; past either bound a new
//!   stream is reset at once instead of piling up.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::channel::{mpsc, oneshot};
use futures::{AsyncRead, AsyncWrite, SinkExt, StreamExt};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, StreamUpgradeError,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

/// Limits of the stream layer.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Inbound streams open at once on one connection (queued or being read).
    pub max_inbound_per_connection: usize,
    /// Outbound streams being negotiated at once on one connection; more wait their turn.
    pub max_negotiating_outbound: usize,
    /// Outbound stream requests waiting on one connection; past that, they fail at once.
    pub max_waiting_outbound: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_inbound_per_connection: 128,
            max_negotiating_outbound: 64,
            max_waiting_outbound: 1024,
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStreamError {
    /// The peer does not speak the protocol.
    #[error("the peer does not support {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// No connection to the peer could be made.
    #[error("cannot connect: {0}")]
    Unreachable(#[source] cairn_core::Reason),
    /// The connection closed, or negotiating failed.
    #[error("stream negotiation failed: {0}")]
    Io(#[from] io::Error),
    /// Too many streams are waiting to be opened to this peer.
    #[error("too many streams are waiting to be opened to this peer")]
    Busy,
}

/// How many times [`Control::open_stream`] asks for a stream when the connection it went to
/// closes before the stream is open.
pub const OPEN_ATTEMPTS: usize = 3;

/// The connection a request went to closed before answering it.
struct Closed;

/// The protocol is already accepted by another reader.
#[derive(Debug, thiserror::Error)]
#[error("{0} is already accepted elsewhere")]
pub struct AlreadyRegistered(pub StreamProtocol);

/// A negotiated stream. An inbound one counts against its connection's bound until dropped.
#[derive(Debug)]
pub struct Stream {
    inner: libp2p::Stream,
    _permit: Option<Permit>,
    connection: ConnectionId,
}

impl Stream {
    /// The connection the stream runs on (for [`Control::cut_connection`]).
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// Lets the connection close when idle even while this stream is open (long-lived
    /// streams that should not keep a peer connected on their own).
    pub fn ignore_for_keep_alive(&mut self) {
        self.inner.ignore_for_keep_alive();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// One inbound stream's place in its connection's count.
#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Reply = oneshot::Sender<Result<Stream, OpenStreamError>>;

/// A request to open a stream (from a [`Control`] to a connection's handler).
#[derive(Debug)]
pub struct Open {
    peer: PeerId,
    protocol: StreamProtocol,
    reply: Reply,
}

/// Inbound streams of one protocol, as they arrive: `(peer, stream)`.
pub type IncomingStreams = mpsc::Receiver<(PeerId, Stream)>;

#[derive(Default)]
struct Shared {
    /// Readers by protocol.
    accepting: HashMap<StreamProtocol, mpsc::Sender<(PeerId, Stream)>>,
}

impl Shared {
    fn protocols(&mut self) -> Vec<StreamProtocol> {
        self.accepting.retain(|_, s| !s.is_closed());
        self.accepting.keys().cloned().collect()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens and accepts streams; cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Mutex<Shared>>,
    opens: mpsc::Sender<Open>,
    cuts: mpsc::Sender<(PeerId, ConnectionId)>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Opens a stream to `peer` for `protocol`, dialing the peer if it is not connected
    /// (at addresses the swarm knows). The negotiation itself is bounded by the swarm's
    /// substream timeout (10 s).
    ///
    /// A connection that closes while a stream is being opened on it is not the peer's
    /// answer: a hole punch can leave a second direct connection that a NAT then resets, a
    /// relayed connection closes once a direct one is open. The request then goes again to
    /// the connection left, or dials the peer, up to [`OPEN_ATTEMPTS`] times in all.
    pub async fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let mut attempt = 1;
        loop {
            match self.open_once(peer, protocol.clone()).await {
                Ok(out) => return out,
                Err(Closed) if attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(%peer, %protocol, "the connection closed while a stream was being opened on it; trying again");
                }
                Err(Closed) => {
                    return Err(OpenStreamError::Io(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the connection closed before the stream was open",
                    )));
                }
            }
        }
    }

    async fn open_once(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Result<Stream, OpenStreamError>, Closed> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .opens
            .send(Open {
                peer,
                protocol,
                reply,
            })
            .await;
        if sent.is_err() {
            return Ok(Err(OpenStreamError::Io(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the node has stopped",
            ))));
        }
        answer.await.map_err(|_| Closed)
    }

    /// Closes `peer`'s connection `connection` (one that broke a protocol's bounds, such as
    /// one whose reader stopped reading its answers). Only that one: the peer's other
    /// connections may be healthy (a page that reloaded comes back as the same peer on a new
    /// connection while the old one still looks open). Best effort: when many cuts are
    /// pending already, this one is dropped, and the connection is cut the next time it
    /// misbehaves.
    pub fn cut_connection(&self, peer: PeerId, connection: ConnectionId) {
        if let Err(e) = self.cuts.clone().try_send((peer, connection))
            && e.is_full()
        {
            tracing::debug!(%peer, "too many cuts pending; not cutting this connection now");
        }
    }

    /// Accepts inbound streams for `protocol`; up to `capacity` wait for the reader, past
    /// that new ones are reset. Dropping the receiver stops accepting.
    pub fn accept(
        &mut self,
        protocol: StreamProtocol,
        capacity: usize,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        let mut shared = lock(&self.shared);
        shared.protocols();
        if shared.accepting.contains_key(&protocol) {
            return Err(AlreadyRegistered(protocol));
        }
        // `mpsc::channel(n)` holds n + 1 (one per sender): the one sender is ours.
        let (tx, rx) = mpsc::channel(capacity.saturating_sub(1));
        shared.accepting.insert(protocol, tx);
        Ok(rx)
    }
}

/// What the behaviour knows of a connection.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: PeerId,
    /// Through a relay circuit (and not `/webrtc`, which only signals through one).
    relayed: bool,
}

fn relayed(addr: &Multiaddr) -> bool {
    let mut circuit = false;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => circuit = true,
            Protocol::WebRTC => return false,
            _ => {}
        }
    }
    circuit
}

/// The stream layer's network behaviour.
pub struct Behaviour {
    shared: Arc<Mutex<Shared>>,
    config: Config,
    opens: mpsc::Receiver<Open>,
    opens_tx: mpsc::Sender<Open>,
    cuts: mpsc::Receiver<(PeerId, ConnectionId)>,
    cuts_tx: mpsc::Sender<(PeerId, ConnectionId)>,
    /// Open connections, oldest first.
    connections: Vec<(ConnectionId, Conn)>,
    /// Requests for peers being dialed.
    waiting: HashMap<PeerId, Vec<Open>>,
    out: VecDeque<ToSwarm<Infallible, Open>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("streams::Behaviour")
            .field("connections", &self.connections.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// A stream layer with `config`'s limits.
    pub fn new(config: Config) -> Self {
        let (opens_tx, opens) = mpsc::channel(64);
        let (cuts_tx, cuts) = mpsc::channel(64);
        Self {
            shared: Arc::default(),
            config,
            opens,
            opens_tx,
            cuts,
            cuts_tx,
            connections: Vec::new(),
            waiting: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// A handle to open and accept streams.
    pub fn new_control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
            opens: self.opens_tx.clone(),
            cuts: self.cuts_tx.clone(),
        }
    }

    /// The connection a new stream to `peer` should use: a direct one over a relayed one,
    /// the newest among equals.
    fn connection_for(&self, peer: &PeerId) -> Option<ConnectionId> {
        self.connections
            .iter()
            .rev()
            .filter(|(_, c)| c.peer == *peer)
            .min_by_key(|(_, c)| c.relayed)
            .map(|(id, _)| *id)
    }

    fn route(&mut self, open: Open) {
        if open.reply.is_canceled() {
            return;
        }
        match self.connection_for(&open.peer) {
            Some(connection) => self.out.push_back(ToSwarm::NotifyHandler {
                peer_id: open.peer,
                handler: NotifyHandler::One(connection),
                event: open,
            }),
            None => {
                let peer = open.peer;
                let waiting = self.waiting.entry(peer).or_default();
                if waiting.len() >= self.config.max_waiting_outbound {
                    let _ = open.reply.send(Err(OpenStreamError::Busy));
                    return;
                }
                let first = waiting.is_empty();
                waiting.push(open);
                if first {
                    self.out.push_back(ToSwarm::Dial {
                        opts: DialOpts::peer_id(peer)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build(),
                    });
                }
            }
        }
    }

    fn handler(&self, connection: ConnectionId, peer: PeerId, relayed: bool) -> Handler {
        Handler {
            peer,
            connection,
            relayed,
            shared: self.shared.clone(),
            config: self.config,
            inbound: Arc::default(),
            queued: VecDeque::new(),
            negotiating: 0,
            waker: None,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(id, peer, relayed(remote)))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(id, peer, relayed(addr)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let remote = match e.endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                self.connections.push((
                    e.connection_id,
                    Conn {
                        peer: e.peer_id,
                        relayed: relayed(remote),
                    },
                ));
                for open in self.waiting.remove(&e.peer_id).unwrap_or_default() {
                    self.route(open);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.connections.retain(|(id, _)| *id != connection_id);
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error:
                    error @ (DialError::Transport(_)
                    | DialError::Denied { .. }
                    | DialError::NoAddresses
                    | DialError::WrongPeerId { .. }
                    | DialError::LocalPeerId { .. }),
                ..
            }) => {
                // A dial refused because another is under way is not a failure: the
                // requests wait for that one.
                if self.connection_for(&peer).is_some() {
                    return;
                }
                let reason = cairn_core::Reason::msg(cairn_core::Reason::flatten(error));
                for open in self.waiting.remove(&peer).unwrap_or_default() {
                    let _ = open
                        .reply
                        .send(Err(OpenStreamError::Unreachable(reason.clone())));
                }
            }
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

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(open)) = self.opens.poll_next_unpin(cx) {
            self.route(open);
        }
        while let Poll::Ready(Some((peer, connection))) = self.cuts.poll_next_unpin(cx) {
            if self.connections.iter().any(|(id, _)| *id == connection) {
                tracing::debug!(%peer, ?connection, "closing a connection that broke a bound");
                self.out.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: libp2p::swarm::CloseConnection::One(connection),
                });
            }
        }
        match self.out.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// The protocols of a negotiation, and what each side gets: the stream and the protocol.
#[derive(Debug)]
pub struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<libp2p::Stream> for Upgrade {
    type Output = (libp2p::Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, socket: libp2p::Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((socket, info)))
    }
}

impl OutboundUpgrade<libp2p::Stream> for Upgrade {
    type Output = (libp2p::Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, socket: libp2p::Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((socket, info)))
    }
}

/// One connection's side of the stream layer.
pub struct Handler {
    peer: PeerId,
    connection: ConnectionId,
    relayed: bool,
    shared: Arc<Mutex<Shared>>,
    config: Config,
    /// Inbound streams of this connection still held by their readers.
    inbound: Arc<AtomicUsize>,
    /// Outbound requests waiting for a negotiation slot.
    queued: VecDeque<Open>,
    negotiating: usize,
    waker: Option<std::task::Waker>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("streams::Handler")
            .field("peer", &self.peer)
            .field("relayed", &self.relayed)
            .finish_non_exhaustive()
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = (StreamProtocol, Reply);

    /// A connection with streams waiting to be opened on it is not idle.
    fn connection_keep_alive(&self) -> bool {
        self.negotiating > 0 || !self.queued.is_empty()
    }

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade> {
        SubstreamProtocol::new(Upgrade(lock(&self.shared).protocols()), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, (StreamProtocol, Reply), Infallible>> {
        self.waker = Some(cx.waker().clone());
        while self.negotiating < self.config.max_negotiating_outbound {
            let Some(open) = self.queued.pop_front() else {
                break;
            };
            if open.reply.is_canceled() {
                continue;
            }
            self.negotiating += 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(
                    Upgrade(vec![open.protocol.clone()]),
                    (open.protocol, open.reply),
                ),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, open: Open) {
        if self.queued.len() >= self.config.max_waiting_outbound {
            let _ = open.reply.send(Err(OpenStreamError::Busy));
        } else {
            self.queued.push_back(open);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Upgrade, Upgrade, (), (StreamProtocol, Reply)>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.on_inbound(stream, protocol),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: (_, reply),
            }) => {
                self.negotiating = self.negotiating.saturating_sub(1);
                let _ = reply.send(Ok(Stream {
                    inner: stream,
                    _permit: None,
                    connection: self.connection,
                }));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError {
                info: (protocol, reply),
                error,
            }) => {
                self.negotiating = self.negotiating.saturating_sub(1);
                let error = match error {
                    StreamUpgradeError::Timeout => {
                        OpenStreamError::Io(io::Error::from(io::ErrorKind::TimedOut))
                    }
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(protocol)
                    }
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e),
                    StreamUpgradeError::Apply(e) => match e {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

impl Handler {
    fn on_inbound(&mut self, stream: libp2p::Stream, protocol: StreamProtocol) {
        let held = self.inbound.fetch_add(1, Ordering::Relaxed);
        let permit = Permit(self.inbound.clone());
        if held >= self.config.max_inbound_per_connection {
            tracing::debug!(peer = %self.peer, %protocol, "too many inbound streams on one connection; resetting one");
            return;
        }
        let stream = Stream {
            inner: stream,
            _permit: Some(permit),
            connection: self.connection,
        };
        let mut shared = lock(&self.shared);
        let Some(reader) = shared.accepting.get_mut(&protocol) else {
            return;
        };
        if let Err(e) = reader.try_send((self.peer, stream)) {
            if e.is_disconnected() {
                shared.accepting.remove(&protocol);
            } else {
                tracing::debug!(peer = %self.peer, %protocol, "the reader is behind; resetting an inbound stream");
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::transport::MemoryTransport;
    use libp2p::core::{Transport, upgrade};
    use libp2p::swarm::{Swarm, SwarmEvent};
    use libp2p::{identity::Keypair, noise};

    use super::*;

    const ECHO: StreamProtocol = StreamProtocol::new("/test/echo");

    pub(crate) fn swarm() -> Swarm<Behaviour> {
        swarm_with(Duration::from_secs(60), |_| {
            Behaviour::new(Config::default())
        })
    }

    /// A swarm of `B` alone on the memory transport, closing connections idle for `idle`.
    pub(crate) fn swarm_with<B: NetworkBehaviour>(
        idle: Duration,
        behaviour: impl FnOnce(&Keypair) -> B,
    ) -> Swarm<B> {
        let key = Keypair::generate_ed25519();
        let transport = MemoryTransport::default()
            .upgrade(upgrade::Version::V1)
            .authenticate(noise::Config::new(&key).unwrap())
            .multiplex(crate::yamux_config_with(1 << 20))
            .boxed();
        Swarm::new(
            transport,
            behaviour(&key),
            key.public().to_peer_id(),
            libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(idle),
        )
    }

    /// Listens `server` on the memory transport; its address.
    pub(crate) async fn listening<B: NetworkBehaviour>(server: &mut Swarm<B>) -> Multiaddr {
        server.listen_on("/memory/0".parse().unwrap()).unwrap();
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                return address;
            }
        }
    }

    /// Connects `a` to `b` (listening on the memory transport), running both until `a`
    /// has the connection.
    pub(crate) async fn connected<B: NetworkBehaviour>(a: &mut Swarm<B>, b: &mut Swarm<B>) {
        let addr = listening(b).await;
        a.dial(addr).unwrap();
        loop {
            tokio::select! {
                e = a.select_next_some() => if let SwarmEvent::ConnectionEstablished { .. } = e {
                    return;
                },
                _ = b.select_next_some() => {}
            }
        }
    }

    /// Runs both swarms until `a` sees a connection close (`true`) or `within` passes.
    pub(crate) async fn closed_within<B: NetworkBehaviour>(
        a: &mut Swarm<B>,
        b: &mut Swarm<B>,
        within: Duration,
    ) -> bool {
        let run = async {
            loop {
                tokio::select! {
                    e = a.select_next_some() => if let SwarmEvent::ConnectionClosed { .. } = e {
                        return;
                    },
                    _ = b.select_next_some() => {}
                }
            }
        };
        tokio::time::timeout(within, run).await.is_ok()
    }

    /// Two connections from `client` to `addr`, in the order they opened.
    async fn connected_twice(client: &mut Swarm<Behaviour>, addr: Multiaddr) -> Vec<ConnectionId> {
        client.dial(addr.clone()).unwrap();
        client.dial(addr).unwrap();
        let mut open = Vec::new();
        while open.len() < 2 {
            if let SwarmEvent::ConnectionEstablished { connection_id, .. } =
                client.select_next_some().await
            {
                open.push(connection_id);
            }
        }
        open
    }

    /// A connection cut for breaking a bound is the one its stream ran on; the peer's other
    /// connection stays (a reloaded page is the same peer on a new connection).
    #[tokio::test]
    async fn cutting_a_streams_connection_leaves_the_peers_others_open() {
        let mut server = swarm();
        let _incoming = server.behaviour().new_control().accept(ECHO, 8).unwrap();
        let addr = listening(&mut server).await;
        let server_id = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                server.select_next_some().await;
            }
        });
        let mut client = swarm();
        let control = client.behaviour().new_control();
        let open = connected_twice(&mut client, addr).await;
        let (tx, mut stream) = oneshot::channel();
        let opener = control.clone();
        tokio::spawn(async move {
            let _ = tx.send(opener.clone().open_stream(server_id, ECHO).await);
        });
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut cut = None;
            loop {
                tokio::select! {
                    e = client.select_next_some() => {
                        if let SwarmEvent::ConnectionClosed { connection_id, .. } = e {
                            break (connection_id, cut);
                        }
                    }
                    s = &mut stream, if cut.is_none() => {
                        let s = s.unwrap().expect("a stream opens");
                        control.cut_connection(server_id, s.connection());
                        cut = Some(s.connection());
                    }
                }
            }
        })
        .await
        .expect("a connection closed within 20 s");
        assert_eq!(
            Some(closed.0),
            closed.1,
            "the stream's connection was the one cut"
        );
        assert_eq!(closed.0, open[1], "new streams go to the newer connection");
        assert!(
            client.is_connected(&server_id),
            "the other connection stays"
        );
        assert_eq!(
            client
                .network_info()
                .connection_counters()
                .num_established(),
            1
        );
    }

    /// A connection closed between the request and the stream: the request goes to the
    /// peer again, here over its other connection, instead of failing the caller.
    #[tokio::test]
    async fn a_stream_asked_for_on_a_connection_that_closes_opens_on_another() {
        let mut server = swarm();
        let mut incoming = server.behaviour().new_control().accept(ECHO, 8).unwrap();
        let addr = listening(&mut server).await;
        let server_id = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = server.select_next_some() => {}
                    Some((_, mut s)) = incoming.next() => {
                        let mut buf = [0u8; 4];
                        if s.read_exact(&mut buf).await.is_ok() {
                            let _ = s.write_all(&buf).await;
                            let _ = s.close().await;
                        }
                    }
                }
            }
        });

        // Two connections to the server; a new stream goes to the newer one.
        let mut client = swarm();
        let mut control = client.behaviour().new_control();
        let open = connected_twice(&mut client, addr).await;
        let newer = open[1];
        // The request is sent before the swarm runs again, and the connection it will be
        // routed to is told to close first.
        let (done_tx, mut done) = oneshot::channel();
        tokio::spawn(async move {
            let out = async {
                let mut s = control.open_stream(server_id, ECHO).await?;
                s.write_all(b"ping").await?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(buf)
            };
            let _ = done_tx.send(out.await.map_err(|e| e.to_string()));
        });
        tokio::task::yield_now().await;
        assert!(client.close_connection(newer), "the connection was open");
        let mut closed = false;
        let answer = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    e = client.select_next_some() => {
                        if let SwarmEvent::ConnectionClosed { connection_id, .. } = e {
                            closed |= connection_id == newer;
                        }
                    }
                    out = &mut done => break out.unwrap(),
                }
            }
        })
        .await
        .expect("an answer within 20 s");
        assert_eq!(
            answer.as_ref().map(|b| &b[..]),
            Ok(&b"ping"[..]),
            "{answer:?}"
        );
        assert!(closed, "the newer connection closed");
        assert_eq!(
            client
                .network_info()
                .connection_counters()
                .num_established(),
            1,
            "the other connection, still open, carried it"
        );
    }
}
