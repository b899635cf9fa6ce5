//! Bootstrap peers ([`Config::bootstrap`](super::Config::bootstrap)): the node keeps a
//! connection to each one. An unreachable one is dialed again with exponential backoff
//! (start-up never waits on it; the log and [`Event::BootstrapUnreachable`] say which is down
//! and when it is tried next), one that goes away is dialed again soon, and every time one
//! connects the DHT is refreshed through it (a Kademlia bootstrap: the node looks itself up,
//! filling its routing table with the network's servers), then again every
//! [`REFRESH`] while any is connected.
//!
//! This is how relays federate: each lists some of the others, and their DHT servers find
//! each other; provider records then land on the k closest servers of the whole network.
//!
//! Relays ([`Config::relays`](super::Config::relays)) are kept the same way, and the node
//! also holds a reservation on each (listens through it: `<relay>/p2p-circuit`, and
//! `…/p2p-circuit/webrtc` where direct connections are on), so that it stays reachable
//! through every relay still up. A reservation refused or lost while the relay is connected
//! is asked for again with the same backoff; one lost with the relay is asked for again when
//! the relay is back.

use std::time::Duration;

use cairn_core::rt::Instant;
use futures_timer::Delay;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, Swarm};
use libp2p::{Multiaddr, PeerId};

use super::connections::Connections;
use super::events::{Emitter, Event};
use crate::behaviour::Behaviour;

/// How often the DHT is refreshed through the bootstrap peers while one is connected.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

/// At most one refresh this often: bootstrap peers that connect moments apart share one.
const REFRESH_AT_MOST: Duration = Duration::from_secs(10);

/// How long to wait before dialing an unreachable bootstrap peer again: `first` after the
/// first failure, doubling after each further one, never more than `max`. A peer that was
/// connected and went away is dialed again after `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failures in a row (at least one).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// What the node knows of one bootstrap peer ([`Node::bootstrap_peers`](super::Node::bootstrap_peers)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// The address it was given as.
    pub addr: Multiaddr,
    /// Its peer id: from the address's `/p2p/…`, or learned when it connected.
    pub peer: Option<PeerId>,
    /// Whether the node is connected to it now.
    pub connected: bool,
    /// Failed dials since it was last connected.
    pub failures: u32,
    /// Why the last dial failed (kept until it connects).
    pub last_error: Option<String>,
    /// When it is dialed next, if it is waiting to be.
    pub retry_in: Option<Duration>,
    /// Whether the node holds (or asks for) a reservation on it: a relay it listens through.
    pub relay: bool,
    /// Whether the node listens through it now (a reservation is held).
    pub reserved: bool,
    /// Why the last reservation on it was refused or lost (kept until one is held).
    pub reservation_error: Option<String>,
}

#[derive(Debug)]
enum State {
    Waiting(Instant),
    Dialing(ConnectionId),
    Connected,
}

#[derive(Debug)]
struct Entry {
    addr: Multiaddr,
    peer: Option<PeerId>,
    state: State,
    failures: u32,
    last_error: Option<String>,
    /// A relay to listen through.
    relay: bool,
    /// The listeners made through it (the circuit, and its `/webrtc`).
    listeners: Vec<ListenerId>,
    /// Whether a listener through it reported an address (the reservation was accepted).
    reserved: bool,
    /// When to ask for a reservation again (connected, none held).
    relisten_at: Option<Instant>,
    /// Reservations refused or lost in a row.
    refusals: u32,
    /// Why the last one was.
    refusal: Option<String>,
}

/// The bootstrap peers and the timer that dials them.
pub(crate) struct Bootstrap {
    entries: Vec<Entry>,
    backoff: Backoff,
    /// Whether a reservation also gets a `/webrtc` listener (direct connections are on).
    webrtc: bool,
    /// When the DHT is refreshed next (while a bootstrap peer is connected).
    refresh_at: Option<Instant>,
    /// When it was last refreshed.
    last_refresh: Option<Instant>,
    /// The timer, and the instant it was armed for.
    timer: Option<(Instant, Delay)>,
}

/// The peer id an address ends with, if any (a circuit address's target, not its relay).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// `addr` without its trailing `/p2p/…`, as the DHT keeps addresses.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if peer_of(&a).is_some() {
        a.pop();
    }
    a
}

impl Bootstrap {
    /// Keeps `bootstrap` peers, and `relays` with a reservation on each (`webrtc`: a
    /// `/webrtc` listener through each too).
    pub(crate) fn new(
        bootstrap: &[Multiaddr],
        relays: &[Multiaddr],
        backoff: Backoff,
        webrtc: bool,
    ) -> Self {
        let mut b = Self {
            entries: Vec::new(),
            backoff,
            webrtc,
            refresh_at: None,
            last_refresh: None,
            timer: None,
        };
        b.add(relays, true);
        b.add(bootstrap, false);
        b
    }

    /// Keeps `addrs` too (`relay`: with a reservation on each), dialing them now. An address
    /// kept already is not added again (given as a relay, it becomes one).
    pub(crate) fn add(&mut self, addrs: &[Multiaddr], relay: bool) {
        let now = Instant::now();
        for addr in addrs {
            if let Some(e) = self.entries.iter_mut().find(|e| e.addr == *addr) {
                e.relay |= relay;
                continue;
            }
            self.entries.push(Entry {
                addr: addr.clone(),
                peer: peer_of(addr),
                state: State::Waiting(now),
                failures: 0,
                last_error: None,
                relay,
                listeners: Vec::new(),
                reserved: false,
                relisten_at: None,
                refusals: 0,
                refusal: None,
            });
        }
        self.arm();
    }

    /// The earliest instant something is due, and (re)arms the timer for it.
    fn arm(&mut self) {
        let next = self
            .entries
            .iter()
            .filter_map(|e| match e.state {
                State::Waiting(at) => Some(at),
                State::Connected => e.relisten_at,
                State::Dialing(_) => None,
            })
            .chain(self.refresh_at)
            .min();
        match next {
            None => self.timer = None,
            Some(at) if self.timer.as_ref().is_some_and(|(t, _)| *t == at) => {}
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                self.timer = Some((at, Delay::new(wait)));
            }
        }
    }

    /// Resolves when a dial or a refresh is due (never, when nothing is).
    pub(crate) async fn due(&mut self) {
        match &mut self.timer {
            Some((_, delay)) => delay.await,
            None => futures::future::pending().await,
        }
    }

    /// Dials the peers whose wait is over, asks again for reservations refused or lost, and
    /// refreshes the DHT if it is time.
    pub(crate) fn on_due(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        conns: &mut Connections,
        emitter: &Emitter,
    ) {
        self.timer = None;
        let now = Instant::now();
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            if matches!(e.state, State::Connected) && e.relisten_at.is_some_and(|at| at <= now) {
                e.relisten_at = None;
                self.reserve(swarm, conns, i);
                continue;
            }
            let State::Waiting(at) = self.entries[i].state else {
                continue;
            };
            if at > now {
                continue;
            }
            let e = &mut self.entries[i];
            if let Some(p) = e.peer
                && swarm.is_connected(&p)
            {
                // It dialed us meanwhile.
                e.state = State::Connected;
                self.joined(swarm, conns, i, emitter);
                continue;
            }
            let opts = match e.peer {
                Some(p) => DialOpts::peer_id(p).addresses(vec![e.addr.clone()]).build(),
                None => DialOpts::unknown_peer_id().address(e.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => e.state = State::Dialing(id),
                Err(err) => self.failed(i, &err, emitter),
            }
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh(swarm);
        }
        self.arm();
    }

    fn refresh(&mut self, swarm: &mut Swarm<Behaviour>) {
        let connected = self
            .entries
            .iter()
            .any(|e| matches!(e.state, State::Connected));
        if connected {
            // Bootstrap peers connecting moments apart (at start, all of them) share one
            // lookup: each lookup opens connections to the k closest peers.
            let now = Instant::now();
            let recent = self
                .last_refresh
                .is_some_and(|t| now.saturating_duration_since(t) < REFRESH_AT_MOST);
            if !recent {
                if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
                    tracing::debug!(error = %e, "cannot refresh the DHT");
                }
                self.last_refresh = Some(now);
            }
            self.refresh_at = Some(now + REFRESH);
        } else {
            self.refresh_at = None;
        }
    }

    /// Entry `i` is connected now: its address goes into the DHT (bootstrap peers are
    /// taken to be DHT servers, as IPFS takes its own), the DHT is refreshed through it, and
    /// a relay is listened through.
    fn joined(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        conns: &mut Connections,
        i: usize,
        emitter: &Emitter,
    ) {
        let e = &mut self.entries[i];
        e.failures = 0;
        e.last_error = None;
        let Some(peer) = e.peer else { return };
        let addr = e.addr.clone();
        tracing::info!(%addr, %peer, "bootstrap peer connected");
        // Its connections stay open on both sides (nothing else keeps them: crate::keep).
        swarm.behaviour_mut().keep.keep(peer);
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(&addr));
        emitter.emit(Event::BootstrapConnected {
            peer,
            addr: addr.clone(),
        });
        if e.relay {
            self.reserve(swarm, conns, i);
        }
        self.refresh(swarm);
    }

    /// Listens through relay `i` (asking it for a reservation), dropping listeners left
    /// from an earlier connection to it.
    fn reserve(&mut self, swarm: &mut Swarm<Behaviour>, conns: &mut Connections, i: usize) {
        #[cfg(not(target_arch = "wasm32"))]
        let public = swarm
            .behaviour()
            .autonat
            .as_ref()
            .is_some_and(|a| a.nat_status().is_public());
        #[cfg(target_arch = "wasm32")]
        let public = false;
        let e = &mut self.entries[i];
        let Some(peer) = e.peer else { return };
        if public {
            // AutoNAT found this node reachable from outside: it needs no relay.
            tracing::info!(addr = %e.addr, "reachable from outside: no reservation asked");
            return;
        }
        for id in e.listeners.drain(..) {
            swarm.remove_listener(id);
        }
        e.reserved = false;
        let circuit = without_peer(&e.addr)
            .with(Protocol::P2p(peer))
            .with(Protocol::P2pCircuit);
        let mut wanted = vec![circuit.clone()];
        if self.webrtc {
            wanted.push(circuit.with(Protocol::WebRTC));
        }
        for a in wanted {
            match conns.listen_for_node(swarm, a.clone()) {
                Ok(id) => e.listeners.push(id),
                Err(err) => {
                    tracing::warn!(addr = %a, error = %err, "cannot listen through the relay")
                }
            }
        }
    }

    /// A listener reported an address: if it is the circuit through a relay (the first of
    /// its listeners), the reservation was accepted.
    pub(crate) fn on_listen_addr(&mut self, listener: ListenerId) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.listeners.first() == Some(&listener))
        {
            e.reserved = true;
            e.refusals = 0;
            e.refusal = None;
        }
    }

    /// A listener closed: if it was one through a relay, its reservation was refused or
    /// lost. While the relay is connected it is asked for again after the backoff;
    /// otherwise once the relay is back.
    pub(crate) fn on_listener_closed(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        listener: ListenerId,
        error: Option<&str>,
        emitter: &Emitter,
    ) {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.listeners.contains(&listener))
        else {
            return;
        };
        let backoff = self.backoff;
        let e = &mut self.entries[i];
        // The circuit and its /webrtc go together: the rest of them are closed as well.
        for id in e.listeners.drain(..) {
            if id != listener {
                swarm.remove_listener(id);
            }
        }
        e.reserved = false;
        let error = error.unwrap_or("closed").to_owned();
        e.refusal = Some(error.clone());
        let retry_in = if matches!(e.state, State::Connected) {
            e.refusals = e.refusals.saturating_add(1);
            let wait = backoff.after(e.refusals);
            e.relisten_at = Some(Instant::now() + wait);
            Some(wait)
        } else {
            None
        };
        tracing::warn!(addr = %e.addr, %error, ?retry_in, "reservation on the relay lost");
        emitter.emit(Event::ReservationLost {
            addr: e.addr.clone(),
            error,
            retry_in,
        });
        self.arm();
    }

    fn failed(&mut self, i: usize, error: &DialError, emitter: &Emitter) {
        let e = &mut self.entries[i];
        e.failures = e.failures.saturating_add(1);
        let wait = self.backoff.after(e.failures);
        // libp2p's dial errors span lines (one per address tried): one line, for the log.
        let error = error
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            addr = %e.addr,
            %error,
            retry_in = ?wait,
            failures = e.failures,
            "bootstrap peer unreachable"
        );
        e.state = State::Waiting(Instant::now() + wait);
        e.last_error = Some(error.clone());
        emitter.emit(Event::BootstrapUnreachable {
            addr: e.addr.clone(),
            error,
            retry_in: wait,
        });
    }

    /// A connection opened: a bootstrap dial succeeded, or a bootstrap peer dialed us.
    /// Returns whether a bootstrap peer joined.
    pub(crate) fn on_established(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        conns: &mut Connections,
        connection: ConnectionId,
        peer: PeerId,
        emitter: &Emitter,
    ) -> bool {
        let mut changed = false;
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            let ours = match e.state {
                State::Dialing(id) => id == connection || e.peer == Some(peer),
                State::Waiting(_) => e.peer == Some(peer),
                State::Connected => false,
            };
            if ours {
                e.peer = Some(peer);
                e.state = State::Connected;
                self.joined(swarm, conns, i, emitter);
                changed = true;
            }
        }
        if changed {
            self.arm();
        }
        changed
    }

    /// A dial failed; if it was a bootstrap dial, that peer waits its backoff.
    pub(crate) fn on_dial_failed(
        &mut self,
        swarm: &Swarm<Behaviour>,
        connection: ConnectionId,
        error: &DialError,
        emitter: &Emitter,
    ) {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| matches!(e.state, State::Dialing(id) if id == connection))
        else {
            return;
        };
        if self.entries[i].peer.is_some_and(|p| swarm.is_connected(&p)) {
            // Another connection to it is open (it dialed us meanwhile): that one counts.
            self.entries[i].state = State::Connected;
        } else {
            self.failed(i, error, emitter);
        }
        self.arm();
    }

    /// `peer`'s last connection closed: if it is a bootstrap peer, it is dialed again after
    /// the first backoff step (not counted as a failure).
    pub(crate) fn on_disconnected(&mut self, peer: PeerId) {
        let mut changed = false;
        for e in &mut self.entries {
            if e.peer == Some(peer) && matches!(e.state, State::Connected) {
                tracing::info!(addr = %e.addr, %peer, "bootstrap peer went away; dialing it again");
                e.state = State::Waiting(Instant::now() + self.backoff.first);
                e.relisten_at = None;
                changed = true;
            }
        }
        if changed {
            self.arm();
        }
    }

    /// Stops dialing (the node is stopping).
    pub(crate) fn stop(&mut self) {
        self.entries.clear();
        self.refresh_at = None;
        self.timer = None;
    }

    pub(crate) fn status(&self) -> Vec<BootstrapPeer> {
        let now = Instant::now();
        self.entries
            .iter()
            .map(|e| BootstrapPeer {
                addr: e.addr.clone(),
                peer: e.peer,
                connected: matches!(e.state, State::Connected),
                failures: e.failures,
                last_error: e.last_error.clone(),
                retry_in: match e.state {
                    State::Waiting(at) => Some(at.saturating_duration_since(now)),
                    _ => None,
                },
                relay: e.relay,
                reserved: e.reserved,
                reservation_error: e.refusal.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let waits: Vec<u64> = (1..=9).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.after(0), Duration::from_secs(1));
        assert_eq!(b.after(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_peer_id_is_taken_from_the_address_and_dropped_for_the_dht() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/198.51.100.7/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(peer_of(&addr), Some(peer));
        assert_eq!(
            without_peer(&addr),
            "/ip4/198.51.100.7/tcp/4001".parse::<Multiaddr>().unwrap()
        );
        let bare: Multiaddr = "/ip4/198.51.100.7/tcp/4001".parse().unwrap();
        assert_eq!(peer_of(&bare), None);
        assert_eq!(without_peer(&bare), bare);
    }

    #[test]
    fn the_same_address_given_twice_is_dialed_once() {
        let addr: Multiaddr = "/ip4/198.51.100.7/tcp/4001".parse().unwrap();
        let b = Bootstrap::new(
            &[addr.clone(), addr.clone()],
            &[addr],
            Backoff::default(),
            false,
        );
        let status = b.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].relay, "given as a relay too: reserved on");
        assert!(b.timer.is_some(), "armed for the first dial");
    }
}
