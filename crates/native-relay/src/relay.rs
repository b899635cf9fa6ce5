//! The relay server: a libp2p swarm holding circuit-relay-v2 reservations, and an HTTP
//! listener for the web app and `/health`.
//!
//! Limits are cairn's own ([`Config::default`]): the libp2p defaults (128 KiB and two minutes
//! per circuit, 16 circuits) would cut any real transfer. Every listen address is also
//! announced as an external address, so reservations work from the first connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::cid::Cid;
use cairn_core::store::Null;
use cairn_p2p::Node;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, relay};
use tokio::sync::mpsc;

use crate::store::Disk;

/// What the relay listens on and how much it carries.
#[derive(Debug, Clone)]
pub struct Config {
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// The HTTP listener (web app, `/health`).
    pub http: SocketAddr,
    /// Directory of the web app's files (`index.html` at its root), if any.
    pub web_root: Option<PathBuf>,
    /// The store whose blocks the relay serves over `/cas` (none: it only relays).
    pub store: Option<Disk>,
    /// Certificate and key for `/tls/ws` listeners.
    pub tls: Option<crate::node::Tls>,
    /// The WebRTC-direct certificate; one is generated for this run if a `/webrtc-direct`
    /// listener needs it and none is given (`cairn-relay serve` keeps one next to the
    /// identity, so the address stays the same).
    pub webrtc: Option<crate::node::WebRtcCertificate>,
    /// Reservations held at once, in total.
    pub max_reservations: usize,
    /// Reservations per peer.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration: Duration,
    /// Circuits open at once, in total.
    pub max_circuits: usize,
    /// Circuits per peer.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry (both directions).
    pub max_circuit_bytes: u64,
    /// Reservation requests per peer: a burst of this many, then one per `rate_interval`.
    pub reservations_per_peer_burst: u32,
    /// Reservation requests per IP address: a burst, then one per `rate_interval`.
    pub reservations_per_ip_burst: u32,
    /// Circuits opened per source peer: a burst, then one per `rate_interval`.
    pub circuits_per_peer_burst: u32,
    /// Circuits opened per source IP address: a burst, then one per `rate_interval`.
    pub circuits_per_ip_burst: u32,
    /// The refill interval of the rate limits above.
    pub rate_interval: Duration,
    /// On shutdown, how long `/cas` answers in flight may take to finish.
    pub shutdown_grace: Duration,
    /// Bytes of answers (`/cas`, bitswap, the HTTP gateway) held for one peer or HTTP
    /// client and for all together, and how long one may read nothing before it is cut.
    pub answers: cairn_p2p::budget::Caps,
    /// What a peer may send on one stream before the relay reads it (yamux's window, on TCP
    /// and WebSocket connections): the most one stream the relay has not read yet can make
    /// it hold. Smaller than a client's ([`cairn_p2p::RECEIVE_WINDOW`]) because a relay reads
    /// little of what it receives; circuits it forwards at up to this much per round trip.
    pub receive_window: u32,
    /// Other relays (or any DHT servers) to federate with: dialed at start without waiting,
    /// again with `bootstrap_backoff` while unreachable, and again when they go away; the DHT
    /// is refreshed through them. See [`cairn_p2p::node::Config::bootstrap`].
    pub bootstrap: Vec<Multiaddr>,
    /// How long an unreachable bootstrap peer waits before it is dialed again.
    pub bootstrap_backoff: cairn_p2p::node::Backoff,
    /// What the relay's DHT store takes from other peers: provider records per peer and in
    /// total ([`cairn_p2p::dht_store::Limits`]).
    pub dht: cairn_p2p::dht_store::Limits,
    /// Whether it is a relay (holds reservations and circuits for others, serves the DHT).
    /// Off: a native node (`serve --no-relay`) that may sit behind a NAT: a DHT client that
    /// announces only the addresses AutoNAT confirms and its circuits through `relays`.
    pub relay_server: bool,
    /// Relays to hold a reservation on while AutoNAT does not find this node reachable
    /// ([`cairn_p2p::node::Config::relays`]): for a node behind a NAT.
    pub relays: Vec<Multiaddr>,
    /// Hole punching, AutoNAT and mDNS ([`cairn_p2p::behaviour::Nat`]; mDNS is off
    /// unless asked for: `serve --no-relay` turns it on, `--no-mdns` off).
    pub nat: cairn_p2p::behaviour::Nat,
    /// The private network's key: every connection is protected with it and only members
    /// connect ([`cairn_p2p::pnet`]). The relay then listens on no QUIC or WebRTC-direct
    /// address (they cannot carry the protection: [`default_listen_private`]), and its HTTP
    /// gateway and delegated routing answer 403 (they would serve the network's content
    /// and peers to anyone).
    pub swarm_key: Option<cairn_p2p::pnet::SwarmKey>,
    /// What the relay keeps for peers that ask it to (`/cairn/pin/1.0.0`, needs a `store`):
    /// `None` refuses every request.
    pub pinning: Option<cairn_p2p::pinning::Policy>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_root: None,
            store: None,
            tls: None,
            webrtc: None,
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 256,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(60 * 60),
            // A 1 GiB file plus protocol overhead, with room to spare.
            max_circuit_bytes: 4 << 30,
            reservations_per_peer_burst: 30,
            reservations_per_ip_burst: 120,
            circuits_per_peer_burst: 60,
            circuits_per_ip_burst: 240,
            rate_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            answers: cairn_p2p::budget::Caps::default(),
            receive_window: 1024 * 1024,
            bootstrap: Vec::new(),
            bootstrap_backoff: cairn_p2p::node::Backoff::default(),
            dht: cairn_p2p::dht_store::Limits::default(),
            relay_server: true,
            relays: Vec::new(),
            nat: cairn_p2p::behaviour::Nat::default(),
            swarm_key: None,
            pinning: None,
        }
    }
}

impl Config {
    /// The defaults, but listening only on loopback, on ports the system picks (TCP for
    /// libp2p, and HTTP): for tests, benchmarks and local experiments.
    pub fn loopback() -> Self {
        Self {
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4([127, 0, 0, 1].into()))
                    .with(Protocol::Tcp(0)),
            ],
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// WebSocket over TLS on 4003, on all interfaces: added to the defaults when a certificate
/// is given.
pub fn default_tls_listen() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4003))
        .with(Protocol::Tls)
        .with(Protocol::Ws("/".into()))
}

/// TCP on 4001, WebSocket on 4002, QUIC on UDP 4001 and WebRTC-direct on UDP 4002, on all
/// interfaces.
pub fn default_listen() -> Vec<Multiaddr> {
    let tcp = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4001));
    let quic = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Udp(4001))
        .with(Protocol::QuicV1);
    let ws = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4002))
        .with(Protocol::Ws("/".into()));
    let webrtc = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Udp(4002))
        .with(Protocol::WebRTCDirect);
    vec![tcp, ws, quic, webrtc]
}

/// [`default_listen`] without the transports a private network cannot use: TCP on 4001 and
/// WebSocket on 4002.
pub fn default_listen_private() -> Vec<Multiaddr> {
    default_listen().into_iter().filter(carries_pnet).collect()
}

/// Whether connections on `addr` can be protected with a swarm key: byte streams (TCP,
/// WebSocket, circuits) can; QUIC and WebRTC bring their own encryption and cannot.
pub fn carries_pnet(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| {
        matches!(
            p,
            Protocol::QuicV1
                | Protocol::Quic
                | Protocol::WebRTCDirect
                | Protocol::WebRTC
                | Protocol::WebTransport
        )
    })
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A transport could not be set up.
    #[error("cannot set up the libp2p transports: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {reason}; is the port already in use? pass another with --listen"
    )]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        reason: cairn_core::Reason,
    },
    /// The HTTP listener could not be bound.
    #[error(
        "cannot serve HTTP on {addr}: {source}; is the port already in use? pass another with --http"
    )]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A `/tls/ws` or `/wss` listener without a certificate.
    #[error("cannot listen on {0}: WebSocket over TLS needs --tls-cert and --tls-key")]
    NeedsTls(Multiaddr),
    /// A setting is out of range.
    #[error("invalid relay configuration: {0}")]
    Config(&'static str),
    /// The answer caps do not fit together.
    #[error("invalid answer caps: {0}")]
    Answers(String),
    /// A listen address whose transport cannot carry the private network's protection.
    #[error(
        "cannot listen on {0} in a private network: QUIC and WebRTC-direct cannot carry the swarm key's protection; listen on TCP or WebSocket"
    )]
    Private(Multiaddr),
    /// The web root is not a directory with an `index.html`.
    #[error(
        "web root {0} has no index.html; build the web app (`cargo xtask run` does) or drop --web-root"
    )]
    WebRoot(PathBuf),
}

/// A started relay.
#[derive(Debug)]
pub struct Running {
    /// The relay's peer id.
    pub peer_id: PeerId,
    /// Full listen multiaddrs, each ending in `/p2p/<id>`.
    pub addrs: Vec<Multiaddr>,
    /// The bound HTTP address.
    pub http: SocketAddr,
    /// The relay's own node handle.
    pub node: Node,
    http_stop: mpsc::Sender<()>,
    http_task: tokio::task::JoinHandle<()>,
    /// Provides the store's pinned roots in the DHT, if the relay has a store.
    providing: Option<tokio::task::JoinHandle<()>>,
    /// The pin server's tasks, if it keeps content for others.
    pinning: Option<Vec<tokio::task::JoinHandle<()>>>,
    /// Ends when the node's driver has stopped.
    ended: cairn_p2p::Events,
}

impl Running {
    /// Stops accepting (HTTP and libp2p), lets `/cas` answers in flight finish (within the
    /// node's grace period), closes connections and waits for the tasks to end. The store
    /// needs no flushing: each block is in place (written whole, then renamed) before a put
    /// returns.
    pub async fn shutdown(mut self) {
        let _ = self.http_stop.send(()).await;
        if let Some(p) = self.providing.take() {
            p.abort();
        }
        for t in self.pinning.take().unwrap_or_default() {
            t.abort();
        }
        self.node.stop().await;
        while self.ended.next().await.is_some() {}
        let _ = self.http_task.await;
    }
}

/// The relay v2 server's settings from the relay's.
fn relay_config(config: &Config) -> Result<relay::Config, Error> {
    let relay_cfg = relay::Config {
        max_reservations: config.max_reservations,
        max_reservations_per_peer: config.max_reservations_per_peer,
        reservation_duration: config.reservation_duration,
        max_circuits: config.max_circuits,
        max_circuits_per_peer: config.max_circuits_per_peer,
        max_circuit_duration: config.max_circuit_duration,
        max_circuit_bytes: config.max_circuit_bytes,
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
    };
    let rate = |n: u32| {
        std::num::NonZeroU32::new(n).ok_or(Error::Config("rate-limit bursts must be at least 1"))
    };
    Ok(relay_cfg
        .reservation_rate_per_peer(
            rate(config.reservations_per_peer_burst)?,
            config.rate_interval,
        )
        .reservation_rate_per_ip(
            rate(config.reservations_per_ip_burst)?,
            config.rate_interval,
        )
        .circuit_src_per_peer(rate(config.circuits_per_peer_burst)?, config.rate_interval)
        .circuit_src_per_ip(rate(config.circuits_per_ip_burst)?, config.rate_interval))
}

/// The transports' key material for `config`'s listeners: a `/tls/ws` listener needs a
/// certificate; a `/webrtc-direct` one gets a certificate for this run if none is given.
fn transports_for(config: &Config) -> Result<crate::node::Transports, Error> {
    let is = |a: &Multiaddr, f: fn(&Protocol<'_>) -> bool| a.iter().any(|p| f(&p));
    let mut transports = crate::node::Transports {
        tls: config.tls.clone(),
        webrtc: config.webrtc.clone(),
        receive_window: Some(config.receive_window),
    };
    if let Some(a) = config
        .listen
        .iter()
        .find(|a| is(a, |p| matches!(p, Protocol::Tls | Protocol::Wss(_))))
        && transports.tls.is_none()
    {
        return Err(Error::NeedsTls(a.clone()));
    }
    if transports.webrtc.is_none()
        && config
            .listen
            .iter()
            .any(|a| is(a, |p| matches!(p, Protocol::WebRTCDirect)))
    {
        tracing::warn!(
            "no WebRTC certificate given: this run's /certhash will not survive a restart"
        );
        transports.webrtc = Some(
            crate::node::WebRtcCertificate::generate(&mut rand::thread_rng())
                .map_err(|e| Error::Transport(e.to_string()))?,
        );
    }
    Ok(transports)
}

/// Which of `specs` (the configured listen addresses) `addr` came from: same protocols,
/// and the same port unless the spec asked for any.
fn spec_of(specs: &[Multiaddr], addr: &Multiaddr) -> Option<usize> {
    fn tag(p: &Protocol<'_>) -> String {
        p.tag().to_owned()
    }
    fn port(p: &Protocol<'_>) -> Option<u16> {
        match p {
            Protocol::Tcp(n) | Protocol::Udp(n) => Some(*n),
            _ => None,
        }
    }
    let tags: Vec<String> = addr.iter().map(|p| tag(&p)).collect();
    specs.iter().position(|s| {
        let same_shape = s.iter().map(|p| tag(&p)).collect::<Vec<_>>() == tags;
        let same_port = s
            .iter()
            .zip(addr.iter())
            .all(|(a, b)| match (port(&a), port(&b)) {
                (Some(0), _) | (None, None) => true,
                (Some(x), Some(y)) => x == y,
                _ => false,
            });
        same_shape && same_port
    })
}

/// Opens every listener and collects the addresses they report, in the order they were
/// given (a listener on an unspecified IP reports one address per interface in quick
/// succession, so the collection ends once quiet).
async fn listen_all(node: &Node, specs: &[Multiaddr]) -> Result<Vec<Multiaddr>, Error> {
    let mut events = node.events();
    let mut addrs = Vec::new();
    for spec in specs {
        let first = node.listen(spec.clone()).await.map_err(|e| Error::Listen {
            addr: spec.clone(),
            reason: cairn_core::Reason::new(e),
        })?;
        addrs.push(first);
    }
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(150), events.next()).await {
        match e {
            cairn_p2p::Event::Listening { addr } if !addrs.contains(&addr) => addrs.push(addr),
            cairn_p2p::Event::ListenerClosed { addrs: gone, error } => {
                return Err(Error::Listen {
                    addr: gone.first().cloned().unwrap_or_else(Multiaddr::empty),
                    reason: error.unwrap_or_else(|| "closed".into()).into(),
                });
            }
            _ => {}
        }
    }
    let peer_id = node.peer_id();
    let mut addrs: Vec<(Option<usize>, Multiaddr)> = addrs
        .into_iter()
        .map(|a| {
            (
                spec_of(specs, &a),
                a.with_p2p(peer_id).unwrap_or_else(|a| a),
            )
        })
        .collect();
    addrs.sort_by_key(|(order, a)| (*order, a.to_string()));
    Ok(addrs.into_iter().map(|(_, a)| a).collect())
}

/// Starts the relay: binds every listener (failing clearly if one cannot be bound) and
/// returns once all are up.
pub async fn start(key: Keypair, config: Config) -> Result<Running, Error> {
    let peer_id = key.public().to_peer_id();
    if config.swarm_key.is_some()
        && let Some(a) = config.listen.iter().find(|a| !carries_pnet(a))
    {
        return Err(Error::Private(a.clone()));
    }
    let relay_cfg = relay_config(&config)?;
    let transports = transports_for(&config)?;
    config.answers.check().map_err(Error::Answers)?;
    let mut registry = prometheus_client::registry::Registry::default();
    let budget = cairn_p2p::budget::Budget::new(config.answers);
    budget.register(&mut registry);
    let p2p = cairn_p2p::node::Config {
        cas: cairn_p2p::cas::Config {
            serve: config.store.is_some(),
            ..Default::default()
        },
        metrics: Some(Arc::new(cairn_p2p::metrics::Metrics::new(&mut registry))),
        shutdown_grace: config.shutdown_grace,
        budget: budget.clone(),
        // Bootstrap peers and relays are given once the listeners are up (`Node::keep`).
        bootstrap_backoff: config.bootstrap_backoff,
        dht: config.dht,
        nat: Some(config.nat),
        // A relay is on a public host; a node may be behind a NAT (AutoNAT says).
        advertise_listen_addrs: config.relay_server,
        swarm_key: config.swarm_key.clone(),
        ..Default::default()
    };
    let builder = cairn_p2p::Builder::new(key).config(p2p);
    let builder = if config.relay_server {
        builder.relay_server(relay_cfg)
    } else {
        builder
    };
    let built = match config.store.clone() {
        Some(store) => crate::node::build(builder, store, &transports, &mut registry),
        None => crate::node::build(builder, Null::new(), &transports, &mut registry),
    };
    let node = built.map_err(|e| Error::Transport(e.to_string()))?;
    let ended = node.events();
    let addrs = match listen_all(&node, &config.listen).await {
        Ok(a) => a,
        Err(e) => {
            node.stop().await;
            return Err(e);
        }
    };
    // Now that it listens, its connections to these leave from its listening ports.
    for (addrs, relays) in [(&config.bootstrap, false), (&config.relays, true)] {
        if !addrs.is_empty() {
            let _ = node.keep(addrs.clone(), relays).await;
        }
    }

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| Error::Http {
            addr: config.http,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| Error::Http {
        addr: config.http,
        source,
    })?;
    let refresh = gauges(&mut registry, node.clone());
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let gateway = crate::gateway::Gateway::new(config.store.clone(), budget.clone());
    let private = config
        .swarm_key
        .as_ref()
        .map(cairn_p2p::pnet::SwarmKey::fingerprint);
    let app = web_app(
        config.web_root.clone(),
        gateway.clone(),
        (registry, refresh),
        node.clone(),
        addrs.clone(),
        private.clone(),
    )?;
    let app = match &private {
        None => app.merge(gateway.router()).merge(
            crate::routing::Routing {
                node: node.clone(),
                store: config.store.clone(),
                addrs: addrs.clone(),
            }
            .router(),
        ),
        Some(_) => app.merge(private_http()),
    }
    .layer(tower_http::cors::CorsLayer::permissive());

    let (http_stop, mut http_stop_rx) = mpsc::channel::<()>(1);
    let http_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stop_rx.recv().await;
        };
        let listener = crate::listener::Watched::new(listener, budget);
        let app = app.into_make_service_with_connect_info::<crate::listener::Client>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    // Roots the pin server pins for peers, announced at once rather than at the next scan.
    let (pinned_tx, pinned_rx) = mpsc::channel::<Cid>(PINNED_QUEUE);
    let providing = config
        .store
        .clone()
        .map(|store| tokio::spawn(provide_pins(node.clone(), store, pinned_rx)));
    let pinning = match (&config.pinning, &config.store) {
        (Some(policy), Some(store)) => Some(
            start_pinning(
                policy.clone(),
                node.clone(),
                AnnouncedPins {
                    store: store.clone(),
                    pinned: pinned_tx,
                },
            )
            .await?,
        ),
        _ => None,
    };
    Ok(Running {
        peer_id,
        addrs,
        http,
        node,
        http_stop,
        http_task,
        providing,
        pinning,
        ended,
    })
}

/// Starts the collaborative pinning server: a transfer queue over the store that fetches
/// from the relay's peers (the asker first among them), and the protocol's answers.
async fn start_pinning(
    policy: cairn_p2p::pinning::Policy,
    node: Node,
    pins: AnnouncedPins,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let store = pins.store.clone();
    let http = crate::http::Client::new().map_err(|e| Error::Transport(e.to_string()))?;
    let sources = cairn_p2p::sources::Sources {
        peers: true,
        discover: true,
        ipfs: None,
        gateways: Vec::new(),
        ..Default::default()
    };
    let fetcher = {
        let (node, store) = (node.clone(), store.clone());
        cairn_core::transfer::ChainFetcher::new(store.clone(), move |root| {
            sources.chain(Some(&node), store.clone(), &http, root)
        })
    };
    let (transfers, driver) = cairn_core::transfer::Transfers::open(
        cairn_core::transfer::Config {
            concurrency: policy.at_once.max(1),
            ..Default::default()
        },
        Arc::new(fetcher),
        None,
    )
    .await
    .map_err(|e| Error::Transport(format!("cannot start the pin server: {e}")))?;
    let server = cairn_p2p::pinning::Server::new(
        policy,
        transfers,
        Arc::new(pins),
        Some(Arc::new(store.pin_record())),
    )
    .await
    .map_err(|e| Error::Transport(format!("cannot read the pin record: {e}")))?;
    Ok(vec![tokio::spawn(driver), tokio::spawn(server.serve(node))])
}

/// How often the store's `pins/` is looked at for roots pinned since (by `cairn-relay add`
/// while the relay runs).
const PIN_SCAN: Duration = Duration::from_secs(60);

/// Roots pinned for peers waiting to be announced; past it, the next scan finds them.
const PINNED_QUEUE: usize = 256;

/// The pin server's pins: the store's, each new one told to [`provide_pins`] so that a copy
/// kept for a peer is in the DHT within moments (a browser that asked can close its tab,
/// and any IPFS node that knows only the DHT still finds the content).
struct AnnouncedPins {
    store: Disk,
    pinned: mpsc::Sender<Cid>,
}

impl cairn_p2p::pinning::Pins for AnnouncedPins {
    fn pin(&self, root: Cid) -> cairn_core::BoxFuture<'_, Result<(), cairn_core::store::Error>> {
        Box::pin(async move {
            cairn_p2p::pinning::Pins::pin(&self.store, root).await?;
            // Full or closed: the next scan announces it.
            let _ = self.pinned.try_send(root);
            Ok(())
        })
    }

    fn unpin(&self, root: Cid) -> cairn_core::BoxFuture<'_, Result<(), cairn_core::store::Error>> {
        cairn_p2p::pinning::Pins::unpin(&self.store, root)
    }

    fn pinned(&self, root: Cid) -> cairn_core::BoxFuture<'_, bool> {
        cairn_p2p::pinning::Pins::pinned(&self.store, root)
    }
}

/// DHT announcements made at once.
const PROVIDING_AT_ONCE: usize = 8;

/// Provides the store's pinned roots in the DHT: every one at start and whenever a bootstrap
/// peer connects (the network it reaches has changed), roots the pin server pinned as soon
/// as it says so (`pinned`), and other roots pinned since every [`PIN_SCAN`]. Kademlia
/// republishes the records itself before they expire (every 12 hours; a record lives 48).
/// Ends when the node stops.
async fn provide_pins(node: Node, store: Disk, mut pinned: mpsc::Receiver<Cid>) {
    let mut events = node.events();
    let mut provided = std::collections::HashSet::new();
    let mut all = true;
    loop {
        match store.pins().await {
            Ok(pins) => {
                let todo: Vec<_> = pins
                    .into_iter()
                    .filter(|c| all || !provided.contains(c))
                    .collect();
                if !todo.is_empty() {
                    let stored = futures::stream::iter(todo.iter().copied())
                        .map(|root| {
                            let node = node.clone();
                            async move {
                                let out = tokio::time::timeout(
                                    Duration::from_secs(60),
                                    node.provide(root),
                                )
                                .await;
                                match out {
                                    Ok(Ok(())) => true,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%root, error = %e, "cannot provide");
                                        false
                                    }
                                    Err(_) => false,
                                }
                            }
                        })
                        .buffer_unordered(PROVIDING_AT_ONCE)
                        .filter(|ok| futures::future::ready(*ok))
                        .count()
                        .await;
                    tracing::info!(
                        roots = todo.len(),
                        stored_remotely = stored,
                        "provided the store's pinned roots in the DHT"
                    );
                    provided.extend(todo);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the store's pins"),
        }
        all = false;
        let next = tokio::time::sleep(PIN_SCAN);
        tokio::pin!(next);
        loop {
            tokio::select! {
                () = &mut next => break,
                Some(_) = pinned.recv() => break,
                e = events.next() => match e {
                    None => return,
                    Some(cairn_p2p::Event::BootstrapConnected { .. }) => {
                        all = true;
                        break;
                    }
                    Some(_) => {}
                },
            }
        }
    }
}

/// Sets gauges read at scrape time.
type Refresh = Arc<dyn Fn() + Send + Sync>;

/// The gauges `/metrics` reads when scraped: the runtime's live tasks and the connected
/// peers (for the soak's curves and for operators).
fn gauges(registry: &mut prometheus_client::registry::Registry, node: Node) -> Refresh {
    use prometheus_client::metrics::gauge::Gauge;
    let cairn = registry.sub_registry_with_prefix("cairn");
    let tasks: Gauge = Gauge::default();
    cairn.register(
        "runtime_alive_tasks",
        "tasks alive in the relay's async runtime",
        tasks.clone(),
    );
    let peers: Gauge = Gauge::default();
    cairn.register("connected_peers", "peers connected now", peers.clone());
    Arc::new(move || {
        let alive = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks())
            .unwrap_or(0);
        tasks.set(alive as i64);
        peers.set(node.peers().len() as i64);
    })
}

fn web_app(
    web_root: Option<PathBuf>,
    gateway: crate::gateway::Gateway,
    (registry, refresh): (
        Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
        Refresh,
    ),
    node: Node,
    addrs: Vec<Multiaddr>,
    private: Option<String>,
) -> Result<axum::Router, Error> {
    use axum::routing::get;
    let has_store = gateway.has_store() && private.is_none();
    let health = move || {
        let node = node.clone();
        let addrs = addrs.clone();
        let private = private.clone();
        async move {
            let info = health(&node, &addrs, has_store, private.as_deref()).await;
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                info.to_string(),
            )
        }
    };
    let metrics = move || {
        let registry = registry.clone();
        refresh();
        async move {
            let mut text = String::new();
            let reg = registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Encoding into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut text, &reg);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
        }
    };
    let router = axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    let router = match web_root {
        Some(dir) => {
            if !dir.join("index.html").is_file() {
                return Err(Error::WebRoot(dir));
            }
            router.fallback_service(tower_http::services::ServeDir::new(dir))
        }
        None => router.route("/", get(|| async { axum::response::Html(FALLBACK_PAGE) })),
    };
    Ok(router)
}

/// A private relay's answer to `/ipfs/…` and `/routing/v1/…`: 403, saying why (they would
/// serve the network's content and peers to anyone who can reach the HTTP port).
fn private_http() -> axum::Router {
    async fn refuse() -> (axum::http::StatusCode, &'static str) {
        (
            axum::http::StatusCode::FORBIDDEN,
            "this relay is in a private network: its content and peers are served only to members, over libp2p with the swarm key; the HTTP gateway and delegated routing are off\n",
        )
    }
    axum::Router::new()
        .route("/ipfs/{*rest}", axum::routing::any(refuse))
        .route("/routing/v1/{*rest}", axum::routing::any(refuse))
}

/// `/health`: the relay's addresses, whether it serves a gateway, and its federation: each
/// bootstrap peer's state, and the other DHT servers (relays) it is connected to, with the
/// addresses they listen on (a browser can reserve on those too).
async fn health(
    node: &Node,
    addrs: &[Multiaddr],
    gateway: bool,
    private: Option<&str>,
) -> serde_json::Value {
    let bootstrap = node.bootstrap_peers().await.unwrap_or_default();
    let mut relays: Vec<serde_json::Value> = node
        .peers()
        .into_iter()
        .filter(|(_, info)| info.dht_server)
        .map(|(peer, info)| {
            let addrs: Vec<String> = info
                .listen_addrs
                .iter()
                .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a).to_string())
                .collect();
            serde_json::json!({ "peer_id": peer.to_string(), "addrs": addrs })
        })
        .collect();
    relays.sort_by(|a, b| a["peer_id"].as_str().cmp(&b["peer_id"].as_str()));
    let reachability = match node.reachability().await {
        Ok(cairn_p2p::node::Reachability::Public(a)) => {
            serde_json::json!({ "public": a.to_string() })
        }
        Ok(cairn_p2p::node::Reachability::Private) => serde_json::json!("private"),
        _ => serde_json::json!("unknown"),
    };
    serde_json::json!({
        "status": "ok",
        "peer_id": node.peer_id().to_string(),
        "gateway": gateway,
        "private_network": private,
        "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "reachability": reachability,
        "federation": {
            "bootstrap": bootstrap.iter().map(|b| serde_json::json!({
                "addr": b.addr.to_string(),
                "peer_id": b.peer.map(|p| p.to_string()),
                "connected": b.connected,
                "failures": b.failures,
                "error": b.last_error,
                "retry_in_secs": b.retry_in.map(|d| d.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "relays": relays,
        },
    })
}

const FALLBACK_PAGE: &str = "<!doctype html><meta charset=utf-8><title>cairn-relay</title>\
<h1>cairn-relay</h1><p>This relay is running without a web app. Start it with \
<code>--web-root DIR</code> (or run <code>cargo xtask run</code>) to serve one. \
<a href=/health>/health</a> lists its addresses.</p>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_relay_listens_on_byte_streams_only() {
        let private = default_listen_private();
        assert_eq!(private.len(), 2, "{private:?}");
        assert!(private.iter().all(carries_pnet));
        let all = default_listen();
        assert!(
            all.iter().any(|a| !carries_pnet(a)),
            "QUIC and WebRTC-direct"
        );
        assert!(carries_pnet(&"/ip4/127.0.0.1/tcp/1/ws".parse().unwrap()));
        assert!(carries_pnet(
            &"/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBQDMu494fHqGEMKKpJ3bJJNw6optciW9yatUS1Hg9yme/p2p-circuit"
                .parse()
                .unwrap()
        ));
        assert!(!carries_pnet(
            &"/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()
        ));
    }
}
