//! Making a node. The platform supplies what only it has: its transports, its store and a
//! way to spawn tasks; the builder makes the behaviour, the swarm and the driver, and
//! spawns the driver. The browser node, the relay, the CLI and the tests all make nodes
//! this way.

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport as _, transport};
use libp2p::identity::Keypair;
use libp2p::swarm::Swarm;
use libp2p::{PeerId, noise, relay};

use super::{Config, Node};
use crate::behaviour::Behaviour;
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
    /// the node's transport from its key and the relay client's transport, which it should
    /// include (upgraded like the others: [`authenticate`]) so circuits work.
    pub fn build<S, Sp, T>(self, store: S, spawner: Sp, transports: T) -> Result<Node, BuildError>
    where
        S: BlockStore + 'static,
        Sp: Spawner,
        T: FnOnce(&Keypair, relay::client::Transport) -> Result<Transport, BoxError>,
    {
        let peer_id = self.key.public().to_peer_id();
        let (relay_transport, relay_client) = relay::client::new(peer_id);
        let transport = transports(&self.key, relay_transport).map_err(BuildError::Transport)?;
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

/// Secures and multiplexes a raw transport as every cairn connection is: Noise, then
/// cairn's yamux ([`crate::yamux_config`]).
pub fn authenticate<T>(transport: T, key: &Keypair) -> Result<Transport, BoxError>
where
    T: libp2p::core::Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
    T::Error: Send + Sync + 'static,
{
    authenticate_with(transport, key, crate::RECEIVE_WINDOW)
}

/// [`authenticate`] with another per-stream receive window ([`crate::yamux_config_with`]).
pub fn authenticate_with<T>(
    transport: T,
    key: &Keypair,
    receive_window: u32,
) -> Result<Transport, BoxError>
where
    T: libp2p::core::Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
    T::Error: Send + Sync + 'static,
{
    Ok(transport
        .map(|io, _| super::linger::Lingering::new(io))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(crate::yamux_config_with(receive_window))
        .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
        .boxed())
}
