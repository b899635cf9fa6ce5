//! The driver: one future that owns the swarm, takes the handles' commands and routes every
//! swarm event to the module that deals with it.

use std::future::Future;
use std::sync::Arc;

use cairn_core::CondSend;
use cairn_core::source::routing::Reputations;
use cairn_core::store::BlockStore;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{PeerId, identify};

use super::bootstrap::Bootstrap;
use super::caps::CapsExchange;
use super::connections::Connections;
use super::discovery::Discovery;
use super::events::{Emitter, Event};
use super::peers::PeerTable;
use super::shutdown::Shutdown;
use super::{Command, Config, Error, Node};
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::bitswap::Bitswap;
use crate::{announce, cas, upgrade};

/// Builds the handle and the node's future: the driver, with bitswap's engine and the
/// `/cas` server beside it (both end with the swarm).
pub(super) fn start<S: BlockStore + 'static>(
    swarm: Swarm<Behaviour>,
    store: Arc<S>,
    config: Config,
) -> (Node, impl Future<Output = ()> + CondSend) {
    let peer_id = *swarm.local_peer_id();
    let (commands, rx) = mpsc::channel(64);
    let streams = swarm.behaviour().streams.new_control();
    let client = cas::Client::new(
        streams.clone(),
        config.cas.limits,
        config.cas.request_timeout,
    );
    let (bitswap, engine) = Bitswap::new(
        streams.clone(),
        store.clone(),
        config.bitswap.clone(),
        config.budget.clone(),
    );
    let emitter = Emitter::new(config.event_capacity);
    let (handle, serving) = match serve_cas(&streams, store, &config, &emitter) {
        Some((h, f)) => (Some(h), Some(f)),
        None => (None, None),
    };
    let reputations = Reputations::tracking();
    let peers = PeerTable::default();
    let listening = super::connections::ListenAddrs::default();
    let node = Node {
        peer_id,
        commands,
        peers: peers.clone(),
        listening: listening.clone(),
        cas: client.clone(),
        reputations: reputations.clone(),
        bitswap: bitswap.clone(),
        streams,
        events: emitter.downgrade(),
    };
    let driver = Driver {
        swarm,
        commands: rx,
        peers,
        connections: Connections::new(listening),
        discovery: Discovery::default(),
        bootstrap: Bootstrap::new(
            &config.bootstrap,
            &config.relays,
            config.bootstrap_backoff,
            config.upgrade_direct,
        ),
        caps: CapsExchange::new(client),
        shutdown: Shutdown::new(),
        emitter,
        reputations,
        bitswap,
        server: handle,
        config,
        stopped: false,
    };
    let run = async move {
        let serving = async move {
            match serving {
                Some(f) => f.await,
                None => futures::future::pending().await,
            }
        };
        let beside = futures::future::join(engine, serving);
        futures::pin_mut!(beside);
        let run = driver.run();
        futures::pin_mut!(run);
        // The driver decides when the node ends: dropping the swarm ends the others.
        futures::future::select(run, beside).await;
    };
    (node, run)
}

/// The `/cas` server over `store`, when the node serves; it tells subscribers of each
/// request it answers.
fn serve_cas<S: BlockStore + 'static>(
    streams: &crate::streams::Control,
    store: Arc<S>,
    config: &Config,
    emitter: &Emitter,
) -> Option<(
    cas::ServerHandle,
    impl Future<Output = ()> + CondSend + use<S>,
)> {
    if !config.cas.serve {
        return None;
    }
    let told = emitter.clone();
    let on_request: cas::OnRequest = Arc::new(move |peer, kind| {
        told.emit(Event::Answering { peer, kind });
    });
    let caps = Arc::new(cas::CapsCache::new(config.caps.clone()));
    let made = cas::serve(
        &mut streams.clone(),
        cas::Serving {
            store,
            caps,
            limits: config.cas.limits,
            config: config.cas.server.clone(),
            budget: config.budget.clone(),
            metrics: config.metrics.clone(),
            on_request: Some(on_request),
        },
    );
    made.map_err(|e| tracing::warn!(error = %e, "cannot serve /cas"))
        .ok()
}

struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    peers: PeerTable,
    connections: Connections,
    discovery: Discovery,
    bootstrap: Bootstrap,
    caps: CapsExchange,
    shutdown: Shutdown,
    emitter: Emitter,
    reputations: Reputations<PeerId>,
    bitswap: Bitswap,
    server: Option<cas::ServerHandle>,
    config: Config,
    /// Every connection closed while stopping: the loop ends.
    stopped: bool,
}

/// The next command, or never while `stopping` (commands are no longer taken then).
async fn next_unless(commands: &mut mpsc::Receiver<Command>, stopping: bool) -> Option<Command> {
    if stopping {
        futures::future::pending().await
    } else {
        commands.next().await
    }
}

impl Driver {
    async fn run(mut self) {
        while !self.stopped {
            let stopping = self.shutdown.stopping();
            futures::select! {
                cmd = next_unless(&mut self.commands, stopping).fuse() => self.command(cmd),
                event = self.swarm.select_next_some() => self.on_swarm(event),
                answer = self.caps.next().fuse() => {
                    let peer = answer.0;
                    if CapsExchange::take(&self.reputations, answer) {
                        self.emitter.emit(Event::CapsReceived { peer });
                    }
                },
                () = self.bootstrap.due().fuse() => {
                    self.bootstrap
                        .on_due(&mut self.swarm, &mut self.connections, &self.emitter);
                }
                () = &mut self.shutdown.done => {
                    if self.shutdown.phase_over(&mut self.swarm) {
                        break;
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Option<Command>) {
        let swarm = &mut self.swarm;
        match cmd {
            Some(Command::Dial(addr, reply)) => self.connections.dial(swarm, addr, reply),
            Some(Command::Listen(addr, reply)) => self.connections.listen(swarm, addr, reply),
            Some(Command::Provide(cid, reply)) => self.discovery.provide(swarm, cid, reply),
            Some(Command::FindProviders(cid, reply)) => self.discovery.find(swarm, cid, reply),
            Some(Command::Connect(peer, addrs, reply)) => {
                self.connections.connect(swarm, peer, addrs, reply)
            }
            Some(Command::Reachability(reply)) => {
                #[cfg(not(target_arch = "wasm32"))]
                let status = swarm
                    .behaviour()
                    .autonat
                    .as_ref()
                    .map(|a| a.nat_status().into())
                    .unwrap_or(super::Reachability::Unknown);
                #[cfg(target_arch = "wasm32")]
                let status = super::Reachability::Unknown;
                let _ = reply.send(Ok(status));
            }
            Some(Command::Keep(addrs, relays, reply)) => {
                self.bootstrap.add(&addrs, relays);
                let _ = reply.send(Ok(()));
            }
            Some(Command::BootstrapPeers(reply)) => {
                let _ = reply.send(Ok(self.bootstrap.status()));
            }
            Some(Command::Providers(cid, reply)) => {
                let _ = reply.send(Ok(Discovery::local(swarm, &cid)));
            }
            Some(Command::Announce(root, size, ttl, reply)) => {
                let data = announce::encode(&root, size, announce::now(), ttl);
                let topic = libp2p::gossipsub::IdentTopic::new(announce::TOPIC);
                let out = swarm.behaviour_mut().gossipsub.publish(topic, data);
                let _ = reply.send(out.map(|_| ()).map_err(|e| match e {
                    libp2p::gossipsub::PublishError::NoPeersSubscribedToTopic => {
                        Error::NoAnnouncementPeers
                    }
                    e => Error::Announce(cairn_core::Reason::new(e)),
                }));
            }
            // Every handle is gone, or one asked: stop.
            Some(Command::Stop) | None => {
                self.bootstrap.stop();
                self.shutdown.begin(
                    swarm,
                    &mut self.connections,
                    self.server.clone(),
                    self.config.shutdown_grace,
                )
            }
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.config.metrics {
            m.record_event(&event);
        }
        match event {
            SwarmEvent::ConnectionEstablished { connection_id, .. } if self.shutdown.stopping() => {
                // Stopping: no new connections (the listeners may be closing still).
                self.swarm.close_connection(connection_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                if self.peers.connected(connection_id, peer_id, &addr) {
                    self.reputations.admit(&peer_id);
                }
                self.connections.established(connection_id, peer_id);
                let joined = self.bootstrap.on_established(
                    &mut self.swarm,
                    &mut self.connections,
                    connection_id,
                    peer_id,
                    &self.emitter,
                );
                if joined {
                    self.discovery.announce_again(&mut self.swarm);
                }
                self.emitter.emit(Event::Connected {
                    peer: peer_id,
                    addr,
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if self.peers.closed(connection_id, peer_id) {
                    // Nothing is kept for a peer that left.
                    self.reputations.forget(&peer_id);
                    self.bitswap.peer_gone(&peer_id);
                    self.emitter.emit(Event::Disconnected { peer: peer_id });
                    if !self.shutdown.stopping() {
                        self.bootstrap.on_disconnected(peer_id);
                    }
                }
                if self.shutdown.connection_closed(&self.swarm) {
                    self.stopped = true;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                self.bootstrap
                    .on_dial_failed(&self.swarm, connection_id, &error, &self.emitter);
                let connected = peer_id.is_some_and(|p| self.swarm.is_connected(&p));
                self.connections
                    .dial_failed(connection_id, peer_id, error, connected);
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(e) => self.on_behaviour(e),
            e => self.on_listener(e),
        }
    }

    fn on_listener(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                self.connections.new_listen_addr(listener_id, &address);
                self.bootstrap.on_listen_addr(listener_id);
                let circuit = address
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
                if self.config.advertise_listen_addrs || circuit {
                    self.swarm.add_external_address(address.clone());
                }
                self.emitter.emit(Event::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } => {
                self.connections.expired_listen_addr(listener_id, &address);
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let error = reason.err().map(|e| e.to_string());
                let addrs = self.connections.listener_closed(listener_id, error.clone());
                if !self.shutdown.stopping() {
                    self.bootstrap.on_listener_closed(
                        &mut self.swarm,
                        listener_id,
                        error.as_deref(),
                        &self.emitter,
                    );
                }
                self.emitter.emit(Event::ListenerClosed { addrs, error });
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => self.peers.rtt(peer, rtt),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Upgrade(e) => self.on_upgrade(e),
            BehaviourEvent::Kad(e) => self.discovery.on_kad(&mut self.swarm, e, &self.emitter),
            BehaviourEvent::Gossipsub(libp2p::gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let (verdict, announced) = announce::judge(&propagation_source, &message);
                if let Some(a) = announced {
                    self.reputations.note_held(&a.peer, &a.root);
                    self.emitter.emit(Event::Announcement(a));
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            #[cfg(not(target_arch = "wasm32"))]
            BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id: peer,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(%peer, "hole punched: the connection is direct");
                    self.peers.hole_punched(peer, None);
                    self.emitter.emit(Event::HolePunched { peer });
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::info!(%peer, %reason, "hole punching failed: the connection stays relayed");
                    self.peers.hole_punched(peer, Some(reason.clone()));
                    self.emitter.emit(Event::HolePunchFailed { peer, reason });
                }
            },
            #[cfg(not(target_arch = "wasm32"))]
            BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found)) => {
                for (peer, addr) in found.into_iter().take(64) {
                    self.swarm.add_peer_address(peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        // From a new port: two nodes that find each other at the same moment
                        // dial each other at once, and from their listening ports (reused for
                        // hole punching) the two dials are one TCP connection opened from both
                        // ends, which both handshakes then refuse; mDNS would not say again
                        // for minutes (1 run in 6 of the LAN test).
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                            .addresses(vec![addr.clone()])
                            .condition(
                                libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing,
                            )
                            .allocate_new_port()
                            .build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(%peer, error = %e, "cannot dial a peer mDNS found");
                        }
                    }
                    self.emitter.emit(Event::Discovered { peer, addr });
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            BehaviourEvent::Upnp(e) => {
                use libp2p::upnp::Event as U;
                match e {
                    U::NewExternalAddr(addr) => {
                        tracing::info!(%addr, "UPnP: port mapped on the gateway");
                        self.emitter.emit(Event::PortMapped { addr });
                    }
                    U::ExpiredExternalAddr(addr) => {
                        tracing::warn!(%addr, "UPnP: the gateway's mapping expired");
                    }
                    U::GatewayNotFound | U::NonRoutableGateway => {
                        let reason = if matches!(e, U::GatewayNotFound) {
                            "no UPnP gateway found on the local network"
                        } else {
                            "the UPnP gateway is itself behind another NAT"
                        };
                        tracing::warn!(reason, "UPnP: no port mapping");
                        self.emitter.emit(Event::PortMappingUnavailable {
                            reason: reason.into(),
                        });
                    }
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            BehaviourEvent::Autonat(libp2p::autonat::Event::StatusChanged { new, .. }) => {
                let status: super::Reachability = new.into();
                tracing::info!(?status, "reachability");
                if matches!(status, super::Reachability::Public(_)) {
                    // Reachable from outside: it serves the DHT, as IPFS nodes do.
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .set_mode(Some(libp2p::kad::Mode::Server));
                }
                self.emitter.emit(Event::Reachability(status));
            }
            BehaviourEvent::RelayServer(e) => tracing::info!(event = ?e, "relay"),
            BehaviourEvent::RelayClient(e) => tracing::debug!(event = ?e, "relay client"),
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if self.peers.identified(peer, &info) {
            self.caps.ask(peer);
        }
        let speaks = info.protocols.contains(&crate::webrtc_signal::PROTOCOL);
        if let Some(decided) = self.swarm.behaviour_mut().upgrade.on_identify(peer, speaks) {
            self.on_upgrade(decided);
        }
        Discovery::on_identify(&mut self.swarm, peer, &info);
        self.emitter.emit(Event::Identified { peer });
    }

    fn on_upgrade(&mut self, event: upgrade::Event) {
        self.peers.upgrade(&event);
        self.emitter.emit(match event {
            upgrade::Event::Attempting { peer, .. } => Event::Upgrading { peer },
            upgrade::Event::Upgraded { peer } => Event::Upgraded { peer },
            upgrade::Event::Failed { peer, reason } => Event::UpgradeFailed { peer, reason },
        });
    }
}
