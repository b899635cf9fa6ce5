//! The one libp2p behaviour composition used by the relay, native nodes and (later) the
//! browser: `/cas` streams, identify, ping, Kademlia, and relay v2 client and server as
//! options. Transports are built by the caller; nothing here picks a platform.
//!
//! `/cas` is answered through libp2p's request-response (inbound only); requests this node
//! sends go over raw streams ([`libp2p_stream`]) that [`crate::Node`] drives itself, so that
//! dropping a request resets its stream and the peer stops sending.

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{gossipsub, identify, kad, ping, relay};

use crate::cas;

/// Protocol version announced over identify.
pub const PROTOCOL_VERSION: &str = "/cairn/1.0.0";

/// cairn's behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // several libp2p behaviours do not implement Debug
pub struct Behaviour {
    /// `/cas/1.0.0`, one request per stream.
    pub cas: request_response::Behaviour<cas::Codec>,
    /// identify.
    pub identify: identify::Behaviour,
    /// ping.
    pub ping: ping::Behaviour,
    /// Relay v2 server (the relay only).
    pub relay_server: Toggle<relay::Behaviour>,
    /// Relay v2 client (nodes that reserve slots and dial circuits).
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// Kademlia: a server on the relay, a client elsewhere; provider records for roots.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// GossipSub, for signed announcements on [`crate::announce::TOPIC`].
    pub gossipsub: gossipsub::Behaviour,
    /// Raw streams: outbound `/cas` requests, and [`crate::perf`] where it is served.
    pub streams: libp2p_stream::Behaviour,
}

impl Behaviour {
    /// The composition for `key`; `relay_client` comes from the transport builder. `cas`
    /// must be the `cas` of the [`crate::node::Config`] the swarm's driver is given.
    pub fn new(
        key: &Keypair,
        relay_client: Option<relay::client::Behaviour>,
        relay_server: Option<relay::Config>,
        cas: &CasConfig,
    ) -> Result<Self, Error> {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
        // cairn's DHT is the relays': tables are filled by identify when a node connects to
        // one, so there is nothing to bootstrap on a timer (it only logs "no known peers").
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // The relay serves the DHT; everyone else only asks it (browsers cannot be dialed
        // directly, so they must not sit in others' routing tables).
        kad.set_mode(Some(if relay_server.is_some() {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));
        // Outbound requests go over `streams`; request-response only answers. A node that does
        // not serve registers nothing for inbound, so it does not claim the protocol.
        let support = if cas.serve {
            ProtocolSupport::Inbound
        } else {
            ProtocolSupport::Outbound
        };
        let rr = request_response::Config::default()
            .with_request_timeout(cas.request_timeout)
            .with_max_concurrent_streams(cas.max_streams);
        let gossip_config = gossipsub::ConfigBuilder::default()
            // Signature, author and sequence number required and checked by GossipSub.
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Nothing is forwarded until cairn has checked it (`announce::validate`).
            .validate_messages()
            .max_transmit_size(crate::announce::MAX_SIZE + 256)
            // GossipSub preallocates half this many message slots per connection: its
            // default (5000) cost the relay 630 KiB per connected peer (measured with 1,000
            // peers; `cargo xtask bench`). Announcements are few and small.
            .connection_handler_queue_len(128)
            .build()
            .map_err(|e| Error::Gossipsub(e.to_string()))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| Error::Gossipsub(e.to_string()))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(crate::announce::TOPIC))
            .map_err(|e| Error::Gossipsub(e.to_string()))?;
        Ok(Self {
            cas: request_response::Behaviour::with_codec(
                cas::Codec { limits: cas.limits },
                [(cas::PROTOCOL, support)],
                rr,
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                    .with_agent_version(concat!("cairn/", env!("CARGO_PKG_VERSION")).into()),
            ),
            ping: ping::Behaviour::default(),
            relay_server: relay_server
                .map(|c| relay::Behaviour::new(peer_id, c))
                .into(),
            relay_client: relay_client.into(),
            kad,
            gossipsub,
            streams: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Why the behaviour could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// GossipSub refused its configuration.
    #[error("cannot set up GossipSub: {0}")]
    Gossipsub(String),
}

/// `/cas` settings of the behaviour.
#[derive(Debug, Clone)]
pub struct CasConfig {
    /// Whether to answer requests.
    pub serve: bool,
    /// Frame and count limits.
    pub limits: cas::Limits,
    /// How long a request may take, either way: answering one, or waiting for an answer.
    pub request_timeout: std::time::Duration,
    /// Concurrent inbound `/cas` streams per connection.
    pub max_streams: usize,
}

impl Default for CasConfig {
    fn default() -> Self {
        Self {
            serve: true,
            limits: cas::Limits::default(),
            request_timeout: std::time::Duration::from_secs(30),
            max_streams: 128,
        }
    }
}
