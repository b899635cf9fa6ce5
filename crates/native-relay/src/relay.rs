//! The relay server: a libp2p swarm holding circuit-relay-v2 reservations, and an HTTP
//! listener for the web app and `/health`.
//!
//! Limits are cairn's own ([`Config::default`]): the libp2p defaults (128 KiB and two minutes
//! per circuit, 16 circuits) would cut any real transfer. Every listen address is also
//! announced as an external address, so reservations work from the first connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, noise, ping, relay, yamux};
use tokio::sync::{mpsc, oneshot};

/// Protocol version announced over identify.
pub const PROTOCOL_VERSION: &str = "/cairn/1.0.0";

/// What the relay listens on and how much it carries.
#[derive(Debug, Clone)]
pub struct Config {
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// The HTTP listener (web app, `/health`).
    pub http: SocketAddr,
    /// Directory of the web app's files (`index.html` at its root), if any.
    pub web_root: Option<PathBuf>,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_root: None,
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 256,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(60 * 60),
            // A 1 GiB file plus protocol overhead, with room to spare.
            max_circuit_bytes: 4 << 30,
        }
    }
}

/// TCP on 4001 and WebSocket on 4002, on all interfaces.
pub fn default_listen() -> Vec<Multiaddr> {
    let tcp = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4001));
    let ws = Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4002))
        .with(Protocol::Ws("/".into()));
    vec![tcp, ws]
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
        reason: String,
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
    /// The web root is not a directory with an `index.html`.
    #[error(
        "web root {0} has no index.html; build the web app (`cargo xtask run` does) or drop --web-root"
    )]
    WebRoot(PathBuf),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
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
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, closes connections and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.done).await;
    }
}

/// Starts the relay: binds every listener (failing clearly if one cannot be bound) and
/// returns once all are up.
pub async fn start(key: Keypair, config: Config) -> Result<Running, Error> {
    let peer_id = key.public().to_peer_id();
    let relay_cfg = relay::Config {
        max_reservations: config.max_reservations,
        max_reservations_per_peer: config.max_reservations_per_peer,
        reservation_duration: config.reservation_duration,
        max_circuits: config.max_circuits,
        max_circuits_per_peer: config.max_circuits_per_peer,
        max_circuit_duration: config.max_circuit_duration,
        max_circuit_bytes: config.max_circuit_bytes,
        ..relay::Config::default()
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| Behaviour {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay_cfg),
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();

    let mut pending = Vec::new();
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        pending.push((id, addr.clone()));
    }
    // Wait until every listener reports an address (or fails); a listener on an unspecified
    // IP reports one address per interface in quick succession, so then collect until quiet.
    let mut addrs = Vec::new();
    let mut up = std::collections::HashSet::new();
    loop {
        let event = if up.len() < pending.len() {
            swarm.select_next_some().await
        } else {
            match tokio::time::timeout(Duration::from_millis(150), swarm.select_next_some()).await {
                Ok(e) => e,
                Err(_) => break,
            }
        };
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                up.insert(listener_id);
                swarm.add_external_address(address.clone());
                let order = pending.iter().position(|(id, _)| *id == listener_id);
                addrs.push((order, address.with_p2p(peer_id).unwrap_or_else(|a| a)));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let addr = pending
                    .iter()
                    .find(|(id, _)| *id == listener_id)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(Multiaddr::empty);
                let reason = match reason {
                    Err(e) => e.to_string(),
                    Ok(()) => "closed".into(),
                };
                return Err(Error::Listen { addr, reason });
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(Error::Transport(error.to_string()));
            }
            _ => {}
        }
    }
    // Print in the order the listeners were given.
    addrs.sort_by_key(|(order, a)| (*order, a.to_string()));
    let addrs: Vec<Multiaddr> = addrs.into_iter().map(|(_, a)| a).collect();

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
    let app = web_app(config.web_root.clone(), peer_id, addrs.clone())?;

    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = mpsc::channel::<()>(1);
    let http_task = tokio::spawn(async move {
        let mut rx = http_stop_rx;
        let shutdown = async move {
            let _ = rx.recv().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let done = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                event = swarm.select_next_some() => match event {
                    // Interfaces that come and go: keep the advertised addresses true.
                    SwarmEvent::NewListenAddr { address, .. } => {
                        tracing::info!(%address, "listening");
                        swarm.add_external_address(address);
                    }
                    SwarmEvent::ExpiredListenAddr { address, .. } => {
                        swarm.remove_external_address(&address);
                    }
                    other => log_event(other),
                },
            }
        }
        tracing::info!("relay stopping");
        let _ = http_stop_tx.send(()).await;
        let _ = http_task.await;
        drop(swarm);
    });
    Ok(Running {
        peer_id,
        addrs,
        http,
        stop: Some(stop_tx),
        done,
    })
}

fn log_event(event: SwarmEvent<BehaviourEvent>) {
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => tracing::info!(event = ?e, "relay"),
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
        }
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
            tracing::debug!(%peer_id, ?cause, "disconnected");
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

fn web_app(
    web_root: Option<PathBuf>,
    peer_id: PeerId,
    addrs: Vec<Multiaddr>,
) -> Result<axum::Router, Error> {
    use axum::routing::get;
    let info = format!(
        "{{\"status\":\"ok\",\"peer_id\":\"{peer_id}\",\"addrs\":[{}]}}",
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let health = move || {
        let info = info.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                info,
            )
        }
    };
    let router = axum::Router::new().route("/health", get(health));
    let router = match web_root {
        Some(dir) => {
            if !dir.join("index.html").is_file() {
                return Err(Error::WebRoot(dir));
            }
            router.fallback_service(tower_http::services::ServeDir::new(dir))
        }
        None => router.route("/", get(|| async { axum::response::Html(FALLBACK_PAGE) })),
    };
    Ok(router.layer(tower_http::cors::CorsLayer::permissive()))
}

const FALLBACK_PAGE: &str = "<!doctype html><meta charset=utf-8><title>cairn-relay</title>\
<h1>cairn-relay</h1><p>This relay is running without a web app. Start it with \
<code>--web-root DIR</code> (or run <code>cargo xtask run</code>) to serve one. \
<a href=/health>/health</a> lists its addresses.</p>";
