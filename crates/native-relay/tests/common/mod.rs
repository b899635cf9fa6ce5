//! Helpers shared by cairn-relay's integration tests (each test file uses what it needs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;

/// The `cairn-relay` binary, quiet, with no store from the environment.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn-relay"));
    c.env("CAIRN_LOG", "warn").env_remove("CAIRN_STORE");
    c
}

/// A relay with a fresh identity listening on `listen` (loopback) with `store`.
pub(crate) async fn relay_on(
    listen: &str,
    store: Option<cairn_relay::store::Disk>,
) -> cairn_relay::relay::Running {
    let config = cairn_relay::relay::Config {
        listen: vec![listen.parse().unwrap()],
        http: "127.0.0.1:0".parse().unwrap(),
        store,
        ..Default::default()
    };
    cairn_relay::relay::start(libp2p::identity::Keypair::generate_ed25519(), config)
        .await
        .unwrap()
}

/// A native node (no relay server) with a fresh identity over `store`; its driver spawned.
pub(crate) async fn native_node<S: cairn_core::store::BlockStore + 'static>(
    store: S,
    config: cairn_p2p::node::Config,
) -> cairn_p2p::Node {
    let mut registry = Default::default();
    let swarm = cairn_relay::node::swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        None,
        &config,
        &Default::default(),
        &mut registry,
    )
    .await
    .unwrap();
    let (node, driver) = cairn_p2p::Node::new(swarm, store, config);
    tokio::spawn(driver);
    node
}

/// Imports `bytes` into `store` with the default profile and sha2-256; returns the root.
pub(crate) async fn import<S: cairn_core::store::BlockStore>(
    store: &S,
    bytes: &[u8],
) -> cairn_core::cid::Cid {
    cairn_core::unixfs::import(
        store,
        bytes,
        cairn_core::unixfs::Profile::DEFAULT,
        cairn_core::HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap()
    .root
}

/// Kills the process when dropped, so a failing test leaves no stray relay behind.
pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of `r`, read on a thread, so a test can wait for one with a timeout.
pub(crate) fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
