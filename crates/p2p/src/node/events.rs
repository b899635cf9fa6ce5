//! What happened, as it happens: [`Node::events`](super::Node::events) gives every
//! subscriber its own bounded queue of [`Event`]s. A subscriber that falls behind by more
//! than the queue holds loses the oldest and is told how many with [`Event::Lagged`]; it
//! never slows the node down or makes it hold more.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;

use crate::announce::Announcement;
use crate::upgrade::Failure;

/// Something the node saw or did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection to `peer` opened (its first, or another).
    Connected {
        /// The peer.
        peer: PeerId,
        /// The connection's remote address.
        addr: Multiaddr,
    },
    /// The last connection to `peer` closed; nothing is kept about it.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// Identify told what `peer` is and speaks ([`super::Node::peers`] has it now).
    Identified {
        /// The peer.
        peer: PeerId,
    },
    /// `peer`'s content index arrived with its `caps`.
    CapsReceived {
        /// The peer.
        peer: PeerId,
    },
    /// A direct `/webrtc` connection to `peer` is being made.
    Upgrading {
        /// The peer.
        peer: PeerId,
    },
    /// A direct `/webrtc` connection to `peer` is open; the relayed ones this node dialed
    /// are closed.
    Upgraded {
        /// The peer.
        peer: PeerId,
    },
    /// No direct connection to `peer` could be made; it stays on the relay.
    UpgradeFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: Failure,
    },
    /// The node listens on a new address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// A listener closed.
    ListenerClosed {
        /// Its addresses.
        addrs: Vec<Multiaddr>,
        /// Why, when it failed.
        error: Option<String>,
    },
    /// This node started answering a `/cas` request of `peer`'s.
    Answering {
        /// The peer.
        peer: PeerId,
        /// The request's type (`get`, `have`, `list`, `caps`).
        kind: &'static str,
    },
    /// A bootstrap peer ([`super::Config::bootstrap`]) is connected; the DHT is being
    /// refreshed through it.
    BootstrapConnected {
        /// The peer.
        peer: PeerId,
        /// The address it was given as.
        addr: Multiaddr,
    },
    /// A bootstrap peer could not be dialed; it is tried again after `retry_in`.
    BootstrapUnreachable {
        /// The address it was given as.
        addr: Multiaddr,
        /// Why the dial failed.
        error: String,
        /// When it is dialed next.
        retry_in: std::time::Duration,
    },
    /// A reservation on a relay ([`super::Config::relays`]) was refused or lost: the node
    /// no longer listens through it. Asked for again after `retry_in` while the relay is
    /// connected (`None`: once it is back).
    ReservationLost {
        /// The relay's address, as it was given.
        addr: Multiaddr,
        /// Why.
        error: String,
        /// When it is asked for again.
        retry_in: Option<std::time::Duration>,
    },
    /// A relayed connection to `peer` was moved to a direct one by hole punching (DCUtR).
    HolePunched {
        /// The peer.
        peer: PeerId,
    },
    /// Hole punching to `peer` failed; its connection stays relayed
    /// ([`super::PeerInfo::hole_punch_error`] says why).
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// mDNS found `peer` on the local network at `addr`; it is dialed.
    Discovered {
        /// The peer.
        peer: PeerId,
        /// Where.
        addr: Multiaddr,
    },
    /// UPnP mapped a listening port on the local gateway: this address is reachable from
    /// outside (announced as an external address).
    PortMapped {
        /// The address.
        addr: Multiaddr,
    },
    /// UPnP cannot map ports: `reason` says why (no gateway found, or the gateway is itself
    /// behind another NAT). The node works as without it.
    PortMappingUnavailable {
        /// Why.
        reason: String,
    },
    /// AutoNAT changed its mind about whether this node can be dialed from outside.
    Reachability(super::Reachability),
    /// A peer published a provider record to this node's DHT store (a DHT server's):
    /// `stored` unless the store's bounds refused it ([`crate::dht_store`]).
    ProviderRecord {
        /// The providing peer (always the one that sent it).
        provider: PeerId,
        /// The record's key: the multihash of the CID provided.
        key: Vec<u8>,
        /// Whether it was stored.
        stored: bool,
    },
    /// A peer announced a root (validated).
    Announcement(Announcement),
    /// This subscriber fell behind: `missed` events were dropped for it.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// The sending side, owned by the driver.
#[derive(Debug, Clone)]
pub(crate) struct Emitter(broadcast::Sender<Event>);

impl Emitter {
    pub(crate) fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity.max(1)).0)
    }

    /// Tells every subscriber (nobody listening is fine).
    pub(crate) fn emit(&self, event: Event) {
        let _ = self.0.send(event);
    }

    pub(crate) fn subscribe(&self) -> Events {
        Events::new(self.0.subscribe())
    }

    /// A weak handle (subscribing through it does not keep the channel open).
    pub(crate) fn downgrade(&self) -> broadcast::WeakSender<Event> {
        self.0.downgrade()
    }
}

impl From<broadcast::Sender<Event>> for Emitter {
    fn from(tx: broadcast::Sender<Event>) -> Self {
        Self(tx)
    }
}

/// A subscriber's events, oldest first; ends when the node stops.
pub struct Events(futures::stream::BoxStream<'static, Event>);

impl Events {
    /// A stream that has already ended (the node is gone).
    pub(crate) fn ended() -> Self {
        Self(Box::pin(futures::stream::empty()))
    }

    fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((Event::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.as_mut().poll_next(cx)
    }
}
