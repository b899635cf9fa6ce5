//! Making a node. The platform supplies what only it has: its transports, its store and a
//! way to spawn tasks; the builder makes the behaviour, the swarm and the driver, and
//! spawns the driver. The browser node, the relay, the CLI and the tests all make nodes
//! this way.

use either::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::{TransportTimeout, TransportTimeoutError};
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport as _, transport};
use libp2p::identity::Keypair;
use libp2p::swarm::Swarm;
use libp2p::{PeerId, noise, relay};
use std::time::Duration;

use super::{Config, Node};
use crate::behaviour::Behaviour;
use crate::pnet::SwarmKey;
use cairn_core::store::BlockStore;

/// A node's transport, as the swarm takes it.
pub type Transport = transport::Boxed<(PeerId, StreamMuxerBox)>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs tasks on the platform's runtime: the driver, and the swarm's connection tasks.
/// (Natively `tokio::spawn`; in the browser `wasm_bindgen_futures::spawn_local`.)
pub trait Spawner: Clone + Send + Sync + 'static {
    /// Runs `task` to completion in the background.
    fn spawn(&self, task: cairn_core::BoxFuture<'static, ()>);
}

struct Exec<S>(S);

impl<S: Spawner> libp2p::swarm::Executor for Exec<S> {
    fn exec(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }
}

/// Why a node could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The platform's transports could not be set up.
    #[error("cannot set up the libp2p transports: {0}")]
    Transport(#[source] BoxError),
    /// The behaviour refused its configuration.
    #[error(transparent)]
    Behaviour(#[from] crate::behaviour::Error),
}

/// Makes a [`Node`].
#[derive(Debug)]
pub struct Builder {
    key: Keypair,
    config: Config,
    relay_server: Option<relay::Config>,
}

impl Builder {
    /// A node with identity `key` and the default [`Config`].
    pub fn new(key: Keypair) -> Self {
        Self {
            key,
            config: Config::default(),
            relay_server: None,
        }
    }

    /// Sets the node's settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Makes the node a circuit relay (v2) server with these limits, and a DHT server.
    pub fn relay_server(mut self, config: relay::Config) -> Self {
        self.relay_server = Some(config);
        self
    }

    /// Makes the node over `store`, spawning its driver with `spawner`. `transports` makes
    /// the node's transport from its [`Upgrader`] (its key, and its swarm key in a private
    /// network) and the relay client's transport, which it should include (upgraded like the
    /// others: [`Upgrader::authenticate`]) so circuits work.
    pub fn build<S, Sp, T>(self, store: S, spawner: Sp, transports: T) -> Result<Node, BuildError>
    where
        S: BlockStore + 'static,
        Sp: Spawner,
        T: FnOnce(&Upgrader, relay::client::Transport) -> Result<Transport, BoxError>,
    {
        let peer_id = self.key.public().to_peer_id();
        let (relay_transport, relay_client) = relay::client::new(peer_id);
        let upgrader = Upgrader::new(self.key.clone(), self.config.swarm_key.clone())
            .with_handshake_timeout(self.config.handshake_timeout);
        let transport = transports(&upgrader, relay_transport).map_err(BuildError::Transport)?;
        let behaviour = Behaviour::new(
            &self.key,
            Some(relay_client),
            self.relay_server,
            self.config.upgrade_direct,
            self.config.dht,
            self.config.nat,
            // A native node that announces its listen addresses says it is reachable.
            self.config.nat.is_some() && self.config.advertise_listen_addrs,
        )?;
        // Outbound streams are negotiated lazily: the dialer sends its protocol and its first
        // bytes together instead of waiting a round trip for the listener's agreement (every
        // stream cairn opens names one protocol the peer is known to speak). On a link with
        // 100 ms between peers, a `/cas` request takes one round trip instead of two.
        let swarm_config = libp2p::swarm::Config::with_executor(Exec(spawner.clone()))
            .with_idle_connection_timeout(self.config.idle_timeout)
            .with_substream_upgrade_protocol_override(Version::V1Lazy);
        let swarm = Swarm::new(transport, behaviour, peer_id, swarm_config);
        let (node, driver) = Node::new(swarm, store, self.config);
        spawner.spawn(cairn_core::boxed(driver));
        Ok(node)
    }
}

/// How a node secures its byte-stream connections: its identity for Noise, and in a
/// private network its swarm key ([`crate::pnet`]), which every connection starts with.
/// The platform's transports are upgraded with it; a transport that cannot carry pnet
/// (QUIC, WebRTC) must not be used when [`Upgrader::private`] says so.
#[derive(Clone)]
pub struct Upgrader {
    key: Keypair,
    swarm_key: Option<SwarmKey>,
    handshake_timeout: Duration,
}

/// How long a connection's handshake (pnet, security and multiplexer negotiation) may take
/// before it is dropped, unless [`Config::handshake_timeout`] says otherwise.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("peer", &self.key.public().to_peer_id())
            .field("swarm_key", &self.swarm_key)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Upgrader {
    /// Upgrades with `key`, in the private network of `swarm_key` if one is given.
    /// A handshake that takes longer than [`HANDSHAKE_TIMEOUT`] is dropped.
    pub fn new(key: Keypair, swarm_key: Option<SwarmKey>) -> Self {
        Self {
            key,
            swarm_key,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Drops a connection whose handshake takes longer than `timeout` (a peer that stalls
    /// it, or one that speaks another network's key and waits for an answer that cannot
    /// come).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The node's identity.
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// Whether the node is in a private network.
    pub fn private(&self) -> bool {
        self.swarm_key.is_some()
    }

    /// The private network's key.
    pub fn swarm_key(&self) -> Option<&SwarmKey> {
        self.swarm_key.as_ref()
    }

    /// Secures and multiplexes a raw transport as every cairn connection is: the swarm
    /// key's pnet handshake in a private network, then Noise, then cairn's yamux
    /// ([`crate::yamux_config`]).
    pub fn authenticate<T>(&self, transport: T) -> Result<Transport, BoxError>
    where
        T: libp2p::core::Transport + Send + Unpin + 'static,
        T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
        T::Dial: Send + 'static,
        T::ListenerUpgrade: Send + 'static,
        T::Error: Send + Sync + 'static,
    {
        self.authenticate_with(transport, crate::RECEIVE_WINDOW)
    }

    /// [`Upgrader::authenticate`] with another per-stream receive window
    /// ([`crate::yamux_config_with`]).
    pub fn authenticate_with<T>(
        &self,
        transport: T,
        receive_window: u32,
    ) -> Result<Transport, BoxError>
    where
        T: libp2p::core::Transport + Send + Unpin + 'static,
        T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
        T::Dial: Send + 'static,
        T::ListenerUpgrade: Send + 'static,
        T::Error: Send + Sync + 'static,
    {
        let lingering = transport.map(|io, _| super::linger::Lingering::new(io));
        let timeout = self.handshake_timeout;
        let Some(swarm_key) = &self.swarm_key else {
            let upgraded = lingering
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(&self.key)?)
                .multiplex(super::sendq::Bounded(crate::yamux_config_with(
                    receive_window,
                )))
                .map_err(open_error);
            return Ok(TransportTimeout::new(upgraded, timeout)
                .map_err(move |e| timed_out(e, timeout, Some(crate::pnet::HINT_OPEN)))
                .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
                .boxed());
        };
        let psk = swarm_key.psk();
        let upgraded = lingering
            .and_then(move |io, _| libp2p::pnet::PnetConfig::new(psk).handshake(io))
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(&self.key)?)
            .multiplex(super::sendq::Bounded(crate::yamux_config_with(
                receive_window,
            )))
            .map_err(private_error);
        Ok(TransportTimeout::new(upgraded, timeout)
            .map_err(move |e| timed_out(e, timeout, Some(crate::pnet::HINT_MEMBER)))
            .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
            .boxed())
    }
}

/// A handshake's error, saying so when it ran out of time (and, in a private network, what
/// that most likely means).
fn timed_out<E>(
    e: TransportTimeoutError<E>,
    timeout: Duration,
    hint: Option<&str>,
) -> std::io::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    match e {
        TransportTimeoutError::Timeout => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            match hint {
                Some(hint) => {
                    format!("the connection's handshake took longer than {timeout:?}: {hint}")
                }
                None => format!("the connection's handshake took longer than {timeout:?}"),
            },
        ),
        TransportTimeoutError::TimerError(e) => e,
        TransportTimeoutError::Other(e) => std::io::Error::other(e),
    }
}

/// A private-network connection's error: where the pnet handshake or the security
/// negotiation after it failed, the peer most likely has another swarm key (or none), and
/// the error says so.
fn private_error<T, P, S, M>(e: Either<Either<Either<T, P>, S>, M>) -> std::io::Error
where
    T: std::error::Error + Send + Sync + 'static,
    P: std::error::Error + Send + Sync + 'static,
    S: std::error::Error + Send + Sync + 'static,
    M: std::error::Error + Send + Sync + 'static,
{
    let hint = |e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{e}: {}", crate::pnet::HINT_MEMBER),
        )
    };
    match e {
        Either::Left(Either::Left(Either::Left(t))) => std::io::Error::other(t),
        Either::Left(Either::Left(Either::Right(p))) => hint(&p),
        Either::Left(Either::Right(s)) => hint(&s),
        Either::Right(m) => std::io::Error::other(m),
    }
}

/// An open-network connection's error: where the security negotiation failed, the peer
/// may be in a private network, and the error says so.
fn open_error<T, S, M>(e: Either<Either<T, S>, M>) -> std::io::Error
where
    T: std::error::Error + Send + Sync + 'static,
    S: std::error::Error + Send + Sync + 'static,
    M: std::error::Error + Send + Sync + 'static,
{
    match e {
        Either::Left(Either::Left(t)) => std::io::Error::other(t),
        Either::Left(Either::Right(s)) => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{s}: {}", crate::pnet::HINT_OPEN),
        ),
        Either::Right(m) => std::io::Error::other(m),
    }
}
