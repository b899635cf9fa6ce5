//! `/webrtc`: direct connections between browsers (the libp2p WebRTC spec's
//! private-to-private part), on the browser's own `RTCPeerConnection`.
//!
//! A node listens on `<relay>/p2p-circuit/webrtc` behind its relay reservation. A dialer
//! reaches it at `<relay>/p2p-circuit/webrtc/p2p/<peer>`: over the relayed connection it
//! opens a `/webrtc-signaling/0.0.1` stream ([`cairn_p2p::webrtc_signal`]), the two trade an
//! SDP offer and answer and their ICE candidates ([`handshake`]), and once the peer
//! connection is up, every libp2p stream is a data channel of it ([`connection`]). The result
//! is a libp2p connection like any other, to the peer the relayed one authenticated.
//!
//! Signalling streams are taken from libp2p-stream's control, which exists only once the
//! swarm is built: [`Handle::attach`] hands it over. Each inbound one becomes a pending
//! inbound connection whose upgrade is the answering handshake, so the swarm's own limits
//! and bookkeeping apply to it.

mod channel;
pub mod connection;
mod handshake;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cairn_p2p::webrtc_signal::PROTOCOL;
use futures::{FutureExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use send_wrapper::SendWrapper;

pub use connection::open_count;

/// Why a `/webrtc` connection could not be made or broke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The page already has as many peer connections open as allowed.
    #[error(
        "too many WebRTC connections: this page has {0} open (browsers cap them, Chrome at a \
         few hundred per page); close idle peers or raise the limit (options.maxWebrtc)"
    )]
    TooMany(usize),
    /// The browser refused something.
    #[error("the browser's WebRTC failed: {0}")]
    Browser(String),
    /// The signalling stream broke or carried a malformed message.
    #[error("WebRTC signalling failed: {0}")]
    Signal(cairn_p2p::webrtc_signal::Error),
    /// The peer broke the protocol.
    #[error("WebRTC signalling: {0}")]
    Protocol(String),
    /// ICE could not connect.
    #[error("no direct connection: {0}")]
    Ice(String),
    /// The handshake took too long.
    #[error("no direct connection within {0:?} (the peer did not answer, or ICE did not connect)")]
    Timeout(Duration),
    /// No signalling stream could be opened.
    #[error("cannot open a signalling stream over the relayed connection: {0}")]
    Stream(String),
    /// The connection closed.
    #[error("the WebRTC connection closed: {0}")]
    Closed(String),
    /// The transport is not attached to a swarm yet.
    #[error("the /webrtc transport is not attached to its swarm yet")]
    Detached,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// STUN/TURN servers (`stun:host:port` URLs); none means host candidates only.
    pub ice_servers: Vec<String>,
    /// The most `RTCPeerConnection`s this page opens at once through cairn.
    pub max_connections: usize,
    /// How long a handshake may take, either side.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            max_connections: 64,
            // Under the swarm's 10 s connection timeout, so that the error says what failed.
            handshake_timeout: Duration::from_secs(8),
        }
    }
}

impl Config {
    fn rtc(&self) -> web_sys::RtcConfiguration {
        let c = web_sys::RtcConfiguration::new();
        let servers = js_sys::Array::new();
        for url in &self.ice_servers {
            let s = web_sys::RtcIceServer::new();
            s.set_urls(&url.into());
            servers.push(&s);
        }
        c.set_ice_servers(&servers);
        c
    }
}

type Upgrade = Pin<Box<dyn Future<Output = Result<(PeerId, StreamMuxerBox), Error>> + Send>>;

#[derive(Default)]
struct Shared {
    control: Option<cairn_p2p::streams::Control>,
    waker: Option<Waker>,
}

/// What the node keeps of the transport to attach it to the swarm.
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)] // libp2p-stream's control is not Debug
pub struct Handle(Arc<Mutex<Shared>>);

impl Handle {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the transport the swarm's stream control, for signalling streams.
    pub fn attach(&self, control: cairn_p2p::streams::Control) {
        let mut s = self.shared();
        s.control = Some(control);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn control(&self) -> Option<cairn_p2p::streams::Control> {
        self.shared().control.clone()
    }
}

/// The `/webrtc` transport.
#[allow(missing_debug_implementations)] // libp2p-stream's streams are not Debug
pub struct Transport {
    config: Config,
    handle: Handle,
    incoming: Option<cairn_p2p::streams::IncomingStreams>,
    /// Listeners: id and the circuit address they listen behind.
    listeners: Vec<(ListenerId, Multiaddr)>,
    events: VecDeque<TransportEvent<Upgrade, Error>>,
}

impl Transport {
    /// A transport and the handle to attach it with.
    pub fn new(config: Config) -> (Self, Handle) {
        let handle = Handle::default();
        (
            Self {
                config,
                handle: handle.clone(),
                incoming: None,
                listeners: Vec::new(),
                events: VecDeque::new(),
            },
            handle,
        )
    }
}

/// `<circuit>/webrtc`, with `circuit` ending in `/p2p-circuit`.
fn split_listen(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut circuit = addr.clone();
    matches!(circuit.pop(), Some(Protocol::WebRTC))
        .then_some(())
        .filter(|()| matches!(circuit.iter().last(), Some(Protocol::P2pCircuit)))?;
    Some(circuit)
}

/// `<circuit>/webrtc/p2p/<peer>` → the peer.
fn split_dial(addr: &Multiaddr) -> Option<PeerId> {
    let mut a = addr.clone();
    let Some(Protocol::P2p(peer)) = a.pop() else {
        return None;
    };
    split_listen(&a).map(|_| peer)
}

fn with_timeout(
    limit: Duration,
    f: impl Future<Output = Result<(PeerId, StreamMuxerBox), Error>> + 'static,
) -> Upgrade {
    let f = async move {
        cairn_core::rt::timeout(limit, f)
            .await
            .unwrap_or(Err(Error::Timeout(limit)))
    };
    SendWrapper::new(f).boxed()
}

impl libp2p::core::Transport for Transport {
    type Output = (PeerId, StreamMuxerBox);
    type Error = Error;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        if split_listen(&addr).is_none() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        // The address is reachable as long as the relay reservation under it holds: the
        // caller listens here only after the circuit listener reported its address.
        self.listeners.push((id, addr.clone()));
        self.events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: addr,
        });
        if let Some(w) = self.handle.shared().waker.take() {
            w.wake();
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|(l, _)| *l == id) else {
            return false;
        };
        self.listeners.remove(i);
        self.events.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        true
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Upgrade, TransportError<Error>> {
        let Some(peer) = split_dial(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if opts.role.is_listener() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let control = self
            .handle
            .control()
            .ok_or(TransportError::Other(Error::Detached))?;
        let config = self.config.clone();
        Ok(with_timeout(config.handshake_timeout, async move {
            let mut control = control;
            // The relayed connection to the peer is open already; the stream goes over it.
            let stream = control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| Error::Stream(e.to_string()))?;
            let pc = handshake::dial(stream, &config).await?;
            Ok((peer, StreamMuxerBox::new(connection::Connection::new(pc))))
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Upgrade, Error>> {
        if let Some(e) = self.events.pop_front() {
            return Poll::Ready(e);
        }
        if self.incoming.is_none() {
            match self.handle.control() {
                Some(mut c) => match c.accept(PROTOCOL, 16) {
                    Ok(incoming) => self.incoming = Some(incoming),
                    Err(e) => {
                        web_sys::console::warn_1(
                            &format!("cairn: cannot take /webrtc signalling streams: {e}").into(),
                        );
                    }
                },
                None => {
                    let mut s = self.handle.shared();
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        loop {
            let Some(incoming) = self.incoming.as_mut() else {
                return Poll::Pending;
            };
            let Poll::Ready(next) = incoming.poll_next_unpin(cx) else {
                break;
            };
            let Some((peer, stream)) = next else {
                self.incoming = None;
                return Poll::Pending;
            };
            let Some((id, local)) = self.listeners.first().cloned() else {
                // Not listening: the stream is dropped (reset), and the dialer learns it.
                continue;
            };
            let config = self.config.clone();
            let upgrade = with_timeout(config.handshake_timeout, async move {
                let pc = handshake::answer(stream, &config).await?;
                Ok((peer, StreamMuxerBox::new(connection::Connection::new(pc))))
            });
            return Poll::Ready(TransportEvent::Incoming {
                listener_id: id,
                upgrade,
                local_addr: local,
                send_back_addr: Multiaddr::empty()
                    .with(Protocol::WebRTC)
                    .with(Protocol::P2p(peer)),
            });
        }
        // Registered by `listen_on` too, so a new listener's address goes out.
        self.handle.shared().waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn addresses_are_split_into_circuit_and_peer() {
        let peer = PeerId::random();
        let relay =
            "/ip4/127.0.0.1/tcp/4001/ws/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let listen: Multiaddr = format!("{relay}/p2p-circuit/webrtc").parse().unwrap();
        assert!(split_listen(&listen).is_some());
        let dial: Multiaddr = format!("{relay}/p2p-circuit/webrtc/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(split_dial(&dial), Some(peer));
        for other in [
            format!("{relay}/p2p-circuit"),
            format!("{relay}/p2p-circuit/p2p/{peer}"),
            format!("{relay}/webrtc"),
            "/ip4/127.0.0.1/udp/1/webrtc-direct".to_string(),
        ] {
            let a: Multiaddr = other.parse().unwrap();
            assert!(
                split_listen(&a).is_none() && split_dial(&a).is_none(),
                "{a}"
            );
        }
    }
}
