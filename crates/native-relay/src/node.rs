//! Native libp2p nodes: the transports a native cairn node uses (TCP and WebSocket, each with
//! Noise and Yamux; WebSocket over TLS when given a certificate; QUIC; WebRTC-direct when
//! given a certificate; relay-v2 circuits), around cairn-p2p's behaviour composition.

use std::path::Path;

use cairn_p2p::node::Upgrader;
use libp2p::core::transport::OptionalTransport;
use libp2p::{Transport as _, relay, websocket};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The WebRTC-direct certificate type.
pub use libp2p_webrtc::tokio::Certificate as WebRtcCertificate;

/// Transports that need key material besides the identity (each is off when `None`), and
/// the muxer's per-stream receive window (`None`: [`cairn_p2p::RECEIVE_WINDOW`]).
#[derive(Clone, Default)]
pub struct Transports {
    /// Certificate and key for WebSocket listeners over TLS (`/tls/ws`, `/wss`).
    pub tls: Option<Tls>,
    /// The certificate whose hash every `/webrtc-direct` address carries.
    pub webrtc: Option<WebRtcCertificate>,
    /// Yamux's per-stream receive window on TCP and WebSocket connections.
    pub receive_window: Option<u32>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("tls", &self.tls.is_some())
            .field("webrtc", &self.webrtc.is_some())
            .finish()
    }
}

/// A TLS certificate chain and its private key, checked.
#[derive(Clone)]
pub struct Tls {
    certs: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error(format!("TLS certificate {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(Error(format!(
                "TLS certificate {} holds no PEM certificate",
                cert.display()
            )));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error(format!("TLS key {}: {e}", key.display())))?;
        let tls = Self {
            certs: certs.into_iter().map(|c| c.to_vec()).collect(),
            key: key_der.secret_der().to_vec(),
        };
        // Refuse a key that does not belong to the certificate now, not at the first client.
        tls.config().map_err(|e| {
            Error(format!(
                "TLS certificate {} and key {} do not work together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(tls)
    }

    fn config(&self) -> Result<websocket::tls::Config, String> {
        // `PrivateKey::new` panics on a key it cannot parse: parse it first.
        PrivateKeyDer::try_from(self.key.clone()).map_err(|e| e.to_string())?;
        websocket::tls::Config::new(
            websocket::tls::PrivateKey::new(self.key.clone()),
            self.certs
                .iter()
                .map(|c| websocket::tls::Certificate::new(c.clone())),
        )
        .map_err(|e| e.to_string())
    }
}

/// Loads the WebRTC-direct certificate at `path` (PEM), or creates one there (mode 0600),
/// so the relay's `/certhash` stays the same across restarts.
pub fn load_or_create_webrtc_cert(path: &Path) -> Result<WebRtcCertificate, Error> {
    match std::fs::read_to_string(path) {
        Ok(pem) => WebRtcCertificate::from_pem(&pem).map_err(|e| {
            Error(format!(
                "{} is not a WebRTC certificate ({e}); move it away to create a new one (the relay's /certhash changes)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = WebRtcCertificate::generate(&mut rand::thread_rng())
                .map_err(|e| Error(format!("cannot generate a WebRTC certificate: {e}")))?;
            crate::identity::write_private(path, cert.serialize_pem().as_bytes()).map_err(
                |e| Error(format!("cannot write WebRTC certificate {}: {e}", path.display())),
            )?;
            Ok(cert)
        }
        Err(e) => Err(Error(format!(
            "cannot read WebRTC certificate {}: {e}",
            path.display()
        ))),
    }
}

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the libp2p transports: {0}")]
pub struct Error(String);

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

pub use cairn_p2p::yamux_config;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a node's tasks on the tokio runtime.
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

impl cairn_p2p::node::Spawner for Tokio {
    fn spawn(&self, task: cairn_core::BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
}

/// The native transports around `relay` (the relay client's): TCP, QUIC, WebRTC-direct
/// and WebSocket over TLS when `transports` has their keys, DNS, plain WebSocket, and
/// circuits. In a private network ([`Upgrader::private`]) QUIC and WebRTC-direct are left
/// out: they cannot carry the swarm key's protection. Byte counters per protocol stack and
/// direction go into `registry`.
pub fn transports(
    upgrader: &Upgrader,
    relay: relay::client::Transport,
    transports: &Transports,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<cairn_p2p::node::Transport, BoxError> {
    use libp2p::core::muxing::StreamMuxerBox;
    let window = transports
        .receive_window
        .unwrap_or(cairn_p2p::RECEIVE_WINDOW);
    let key = upgrader.key();
    let open = !upgrader.private();
    let tcp = || libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true));
    let quic = match open {
        true => OptionalTransport::some(
            libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))),
        ),
        false => OptionalTransport::none(),
    };
    let webrtc = match transports.webrtc.clone().filter(|_| open) {
        Some(cert) => {
            OptionalTransport::some(libp2p_webrtc::tokio::Transport::new(key.clone(), cert).map(
                |(peer, conn), _| (peer, StreamMuxerBox::new(crate::webrtc::Connection(conn))),
            ))
        }
        None => OptionalTransport::none(),
    };
    // WebSocket over TLS, for listening: the plain WebSocket transport (below) serves `/ws`
    // and makes every outgoing dial, `/tls/ws` included.
    let wss = match transports.tls.as_ref().map(Tls::config).transpose()? {
        Some(tls) => {
            let mut ws = websocket::Config::new(tcp());
            ws.set_tls_config(tls);
            OptionalTransport::some(upgrader.authenticate_with(ws, window)?)
        }
        None => OptionalTransport::none(),
    };
    let direct = upgrader
        .authenticate_with(tcp(), window)?
        .or_transport(quic)
        .map(|e, _| e.into_inner())
        .or_transport(webrtc)
        .map(|e, _| e.into_inner())
        .or_transport(wss)
        .map(|e, _| e.into_inner());
    // Circuits and WebSocket first: the DNS wrapper dials asynchronously, so an address it
    // passes on cannot fall through to a transport after it (as libp2p's SwarmBuilder
    // orders them).
    let ws = websocket::Config::new(libp2p::dns::tokio::Transport::system(tcp())?);
    let all = upgrader
        .authenticate_with(relay, window)?
        .or_transport(upgrader.authenticate_with(ws, window)?)
        .map(|e, _| e.into_inner())
        .or_transport(libp2p::dns::tokio::Transport::system(direct)?)
        .map(|e, _| e.into_inner());
    Ok(libp2p::metrics::BandwidthTransport::new(all, registry)
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        .boxed())
}

/// A native node over `store`: `builder`'s settings, the native transports, tokio.
pub fn build<S: cairn_core::store::BlockStore + 'static>(
    builder: cairn_p2p::Builder,
    store: S,
    extra: &Transports,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<cairn_p2p::Node, Error> {
    builder
        .build(store, Tokio, |upgrader, relay| {
            transports(upgrader, relay, extra, registry)
        })
        .map_err(err)
}
