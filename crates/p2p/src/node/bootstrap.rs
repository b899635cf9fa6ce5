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

use std::time::Duration;

use cairn_core::rt::Instant;
use futures_timer::Delay;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, Swarm};
use libp2p::{Multiaddr, PeerId};

use super::events::{Emitter, Event};
use crate::behaviour::Behaviour;

/// How often the DHT is refreshed through the bootstrap peers while one is connected.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

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
}

/// The bootstrap peers and the timer that dials them.
pub(crate) struct Bootstrap {
    entries: Vec<Entry>,
    backoff: Backoff,
    /// When the DHT is refreshed next (while a bootstrap peer is connected).
    refresh_at: Option<Instant>,
    /// The timer, and the instant it was armed for.
    timer: Option<(Instant, Delay)>,
}

/// The peer id an address ends with, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
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
    pub(crate) fn new(addrs: &[Multiaddr], backoff: Backoff) -> Self {
        let now = Instant::now();
        let mut entries: Vec<Entry> = Vec::new();
        for addr in addrs {
            if entries.iter().any(|e| e.addr == *addr) {
                continue;
            }
            entries.push(Entry {
                addr: addr.clone(),
                peer: peer_of(addr),
                state: State::Waiting(now),
                failures: 0,
                last_error: None,
            });
        }
        let mut b = Self {
            entries,
            backoff,
            refresh_at: None,
            timer: None,
        };
        b.arm();
        b
    }

    /// The earliest instant something is due, and (re)arms the timer for it.
    fn arm(&mut self) {
        let next = self
            .entries
            .iter()
            .filter_map(|e| match e.state {
                State::Waiting(at) => Some(at),
                _ => None,
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

    /// Dials the peers whose wait is over and refreshes the DHT if it is time.
    pub(crate) fn on_due(&mut self, swarm: &mut Swarm<Behaviour>, emitter: &Emitter) {
        self.timer = None;
        let now = Instant::now();
        for i in 0..self.entries.len() {
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
                self.joined(swarm, i, emitter);
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
            if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
                tracing::debug!(error = %e, "cannot refresh the DHT");
            }
            self.refresh_at = Some(Instant::now() + REFRESH);
        } else {
            self.refresh_at = None;
        }
    }

    /// Entry `i` is connected now: its address goes into the DHT (bootstrap peers are
    /// taken to be DHT servers, as IPFS takes its own) and the DHT is refreshed through it.
    fn joined(&mut self, swarm: &mut Swarm<Behaviour>, i: usize, emitter: &Emitter) {
        let e = &mut self.entries[i];
        e.failures = 0;
        e.last_error = None;
        let Some(peer) = e.peer else { return };
        let addr = e.addr.clone();
        tracing::info!(%addr, %peer, "bootstrap peer connected");
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(&addr));
        emitter.emit(Event::BootstrapConnected { peer, addr });
        self.refresh(swarm);
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
    pub(crate) fn on_established(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        connection: ConnectionId,
        peer: PeerId,
        emitter: &Emitter,
    ) {
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
                self.joined(swarm, i, emitter);
                changed = true;
            }
        }
        if changed {
            self.arm();
        }
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
        let b = Bootstrap::new(&[addr.clone(), addr], Backoff::default());
        assert_eq!(b.status().len(), 1);
        assert!(b.timer.is_some(), "armed for the first dial");
    }
}
