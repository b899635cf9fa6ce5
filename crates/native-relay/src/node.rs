//! Native libp2p nodes: the transports a native cairn node uses (TCP and WebSocket, each with
//! Noise and Yamux; WebSocket over TLS when given a certificate; QUIC; WebRTC-direct when
//! given a certificate; relay-v2 circuits), around cairn-p2p's behaviour composition.

use std::path::Path;
use std::time::Duration;

use cairn_p2p::Behaviour;
use libp2p::core::transport::OptionalTransport;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{Swarm, Transport as _, noise, relay, websocket};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The WebRTC-direct certificate type.
pub use libp2p_webrtc::tokio::Certificate as WebRtcCertificate;

/// Transports that need key material besides the identity; each is off when `None`.
#[derive(Clone, Default)]
pub struct Transports {
    /// Certificate and key for WebSocket listeners over TLS (`/tls/ws`, `/wss`).
    pub tls: Option<Tls>,
    /// The certificate whose hash every `/webrtc-direct` address carries.
    pub webrtc: Option<WebRtcCertificate>,
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

/// Builds a swarm for `key` on the tokio runtime; `relay_server` makes it a relay. `config`
/// is the one its [`cairn_p2p::Node`] driver will be given.
/// Transport byte counters (per protocol stack and direction) go into `registry`.
pub async fn swarm(
    key: Keypair,
    relay_server: Option<relay::Config>,
    config: &cairn_p2p::node::Config,
    transports: &Transports,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, Error> {
    let tls = transports
        .tls
        .as_ref()
        .map(Tls::config)
        .transpose()
        .map_err(Error)?;
    let webrtc = transports.webrtc.clone();
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )
        .map_err(err)?
        .with_quic()
        .with_other_transport(|key| match webrtc {
            Some(cert) => OptionalTransport::some(
                libp2p_webrtc::tokio::Transport::new(key.clone(), cert)
                    .map(|(peer, conn), _| (peer, crate::webrtc::Connection(conn))),
            ),
            None => OptionalTransport::none(),
        })
        .map_err(err)?
        // WebSocket over TLS, for listening: the builder's own WebSocket transport (below)
        // serves plain `/ws` and makes every outgoing dial, `/tls/ws` included.
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(match tls {
                    Some(tls) => {
                        let mut ws = websocket::Config::new(libp2p::tcp::tokio::Transport::new(
                            libp2p::tcp::Config::default().nodelay(true),
                        ));
                        ws.set_tls_config(tls);
                        OptionalTransport::some(
                            ws.upgrade(Version::V1Lazy)
                                .authenticate(noise::Config::new(key)?)
                                .multiplex(yamux_config()),
                        )
                    }
                    None => OptionalTransport::none(),
                })
            },
        )
        .map_err(err)?
        .with_dns()
        .map_err(err)?
        .with_websocket(noise::Config::new, yamux_config)
        .await
        .map_err(err)?
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(err)?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, client| {
            Behaviour::new(key, Some(client), relay_server, &config.cas)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
