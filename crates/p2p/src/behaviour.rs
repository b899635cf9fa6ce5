//! The one libp2p behaviour composition used by the relay, native nodes and browsers: raw
//! streams for cairn's own protocols (`/cas`, bitswap, signalling), identify, ping,
//! Kademlia, GossipSub, the direct-upgrade policy, and relay v2 client and server as
//! options. Transports are built by the caller; nothing here picks a platform.

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{gossipsub, identify, kad, ping, relay};

/// NAT traversal: libp2p's hole punching and AutoNAT natively; placeholders in the browser,
/// which has no socket of its own to punch through or to be probed at (its [`Nat`] is
/// `None`), so that none of their code is in the wasm.
#[cfg(not(target_arch = "wasm32"))]
pub mod nat {
    /// Hole punching.
    pub type Dcutr = libp2p::dcutr::Behaviour;
    /// AutoNAT v1.
    pub type Autonat = libp2p::autonat::Behaviour;
    /// mDNS discovery on the local network.
    pub type Mdns = libp2p::mdns::tokio::Behaviour;
    /// UPnP port mapping on the local gateway.
    pub type Upnp = libp2p::upnp::tokio::Behaviour;
}

/// NAT traversal (see the native build): placeholders in the browser.
#[cfg(target_arch = "wasm32")]
pub mod nat {
    /// Hole punching: nothing here.
    pub type Dcutr = libp2p::swarm::dummy::Behaviour;
    /// AutoNAT: nothing here.
    pub type Autonat = libp2p::swarm::dummy::Behaviour;
    /// mDNS: nothing here.
    pub type Mdns = libp2p::swarm::dummy::Behaviour;
    /// UPnP: nothing here.
    pub type Upnp = libp2p::swarm::dummy::Behaviour;
}

/// Protocol version announced over identify.
pub const PROTOCOL_VERSION: &str = "/cairn/1.0.0";

/// cairn's behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // several libp2p behaviours do not implement Debug
pub struct Behaviour {
    /// identify.
    pub identify: identify::Behaviour,
    /// ping.
    pub ping: ping::Behaviour,
    /// Relay v2 server (the relay only).
    pub relay_server: Toggle<relay::Behaviour>,
    /// Relay v2 client (nodes that reserve slots and dial circuits).
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// Kademlia: a server on the relay, a client elsewhere; provider records for roots.
    pub kad: kad::Behaviour<crate::dht_store::Bounded>,
    /// GossipSub, for signed announcements on [`crate::announce::TOPIC`] (its streams do
    /// not keep connections open: [`crate::gossip`]).
    pub gossipsub: crate::gossip::Gossip,
    /// The connections the node means to keep (bootstrap peers, relays, direct `/webrtc`),
    /// kept open on both sides: [`crate::keep`].
    pub keep: crate::keep::Behaviour,
    /// Raw streams: `/cas` both ways, bitswap, `/webrtc` signalling, [`crate::perf`].
    pub streams: crate::streams::Behaviour,
    /// Moving relayed connections to direct `/webrtc` ones (browsers).
    pub upgrade: crate::upgrade::Behaviour,
    /// Hole punching (DCUtR, native nodes): a relayed connection moved to a direct one.
    pub dcutr: Toggle<nat::Dcutr>,
    /// AutoNAT v1 (native nodes): whether this node can be dialed from outside; every native
    /// node (relays first) also answers others' probes.
    pub autonat: Toggle<nat::Autonat>,
    /// mDNS (native nodes that ask for it): peers on the local network, found and dialed
    /// without any relay.
    pub mdns: Toggle<nat::Mdns>,
    /// UPnP (native nodes that ask for it): the listening ports mapped on the local
    /// gateway, which makes the node reachable from outside where the gateway allows.
    pub upnp: Toggle<nat::Upnp>,
}

/// NAT traversal for native nodes: hole punching and AutoNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    /// Only public (global) IP addresses are probed and dialed back: right on the internet;
    /// off for tests and for networks that use other ranges.
    pub global_only: bool,
    /// When the first AutoNAT probe is made, after start.
    pub first_probe: std::time::Duration,
    /// How often the probes are repeated once the status is known.
    pub refresh: std::time::Duration,
    /// Whether peers on the local network are found by mDNS and dialed.
    pub mdns: bool,
    /// Whether the listening ports are mapped on the local gateway by UPnP.
    pub upnp: bool,
}

impl Default for Nat {
    fn default() -> Self {
        Self {
            global_only: true,
            first_probe: std::time::Duration::from_secs(15),
            refresh: std::time::Duration::from_secs(15 * 60),
            mdns: false,
            upnp: false,
        }
    }
}

impl Behaviour {
    /// The composition for `key`; `relay_client` comes with the relay transport.
    /// `upgrade_direct` turns the direct-upgrade policy on; `dht` bounds what the DHT store
    /// takes from other peers; `nat` turns hole punching and AutoNAT on; `dht_server` makes
    /// a node that is not a relay serve the DHT from the start.
    pub fn new(
        key: &Keypair,
        relay_client: Option<relay::client::Behaviour>,
        relay_server: Option<relay::Config>,
        upgrade_direct: bool,
        dht: crate::dht_store::Limits,
        nat: Option<Nat>,
        dht_server: bool,
    ) -> Result<Self, Error> {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
        // cairn's DHT is the relays': tables are filled by identify when a node connects to
        // one, so there is nothing to bootstrap on a timer (it only logs "no known peers").
        kad_config.set_periodic_bootstrap_interval(None);
        // Records peers send are handed to the driver, which stores them (bounded by
        // `dht_store`) and tells subscribers ([`crate::Event::ProviderRecord`]).
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kad = kad::Behaviour::with_config(
            peer_id,
            crate::dht_store::Bounded::new(peer_id, dht),
            kad_config,
        );
        // The relay serves the DHT. Browsers only ask it (they cannot be dialed directly, so
        // they must not sit in others' routing tables). A native node serves it when it
        // announces its listen addresses as reachable (`dht_server`), or once AutoNAT finds
        // it reachable (the driver switches it then). Not Kademlia's automatic mode: that
        // would serve from behind a NAT with only a relay circuit as its address, putting
        // a relayed peer in everyone's table.
        kad.set_mode(Some(if relay_server.is_some() || dht_server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));
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
            .map_err(|e| Error::Gossipsub(cairn_core::Reason::msg(e.to_string())))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| Error::Gossipsub(cairn_core::Reason::msg(e.to_string())))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(crate::announce::TOPIC))
            .map_err(|e| Error::Gossipsub(cairn_core::Reason::msg(e.to_string())))?;
        Ok(Self {
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
            gossipsub: crate::gossip::Gossip::new(gossipsub),
            keep: crate::keep::Behaviour::new(),
            streams: crate::streams::Behaviour::new(crate::streams::Config::default()),
            upgrade: crate::upgrade::Behaviour::new(upgrade_direct),
            dcutr: dcutr(peer_id, nat).into(),
            autonat: autonat(peer_id, nat).into(),
            mdns: mdns(peer_id, nat)?.into(),
            upnp: upnp(nat).into(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn dcutr(peer_id: libp2p::PeerId, nat: Option<Nat>) -> Option<nat::Dcutr> {
    nat.map(|_| libp2p::dcutr::Behaviour::new(peer_id))
}

#[cfg(not(target_arch = "wasm32"))]
fn autonat(peer_id: libp2p::PeerId, nat: Option<Nat>) -> Option<nat::Autonat> {
    nat.map(|n| {
        libp2p::autonat::Behaviour::new(
            peer_id,
            libp2p::autonat::Config {
                boot_delay: n.first_probe,
                refresh_interval: n.refresh,
                retry_interval: n.first_probe.max(std::time::Duration::from_secs(1)),
                only_global_ips: n.global_only,
                ..Default::default()
            },
        )
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn mdns(peer_id: libp2p::PeerId, nat: Option<Nat>) -> Result<Option<nat::Mdns>, Error> {
    if !nat.is_some_and(|n| n.mdns) {
        return Ok(None);
    }
    libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer_id)
        .map(Some)
        .map_err(|e| Error::Mdns(cairn_core::Reason::new(e)))
}

#[cfg(not(target_arch = "wasm32"))]
fn upnp(nat: Option<Nat>) -> Option<nat::Upnp> {
    nat.is_some_and(|n| n.upnp)
        .then(libp2p::upnp::tokio::Behaviour::default)
}

#[cfg(target_arch = "wasm32")]
fn upnp(_: Option<Nat>) -> Option<nat::Upnp> {
    None
}

#[cfg(target_arch = "wasm32")]
fn mdns(_: libp2p::PeerId, _: Option<Nat>) -> Result<Option<nat::Mdns>, Error> {
    Ok(None)
}

#[cfg(target_arch = "wasm32")]
fn dcutr(_: libp2p::PeerId, _: Option<Nat>) -> Option<nat::Dcutr> {
    None
}

#[cfg(target_arch = "wasm32")]
fn autonat(_: libp2p::PeerId, _: Option<Nat>) -> Option<nat::Autonat> {
    None
}

/// Why the behaviour could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// GossipSub refused its configuration.
    #[error("cannot set up GossipSub: {0}")]
    Gossipsub(#[source] cairn_core::Reason),
    /// mDNS could not open its sockets.
    #[error("cannot start mDNS (turn it off with --no-mdns): {0}")]
    Mdns(#[source] cairn_core::Reason),
}
