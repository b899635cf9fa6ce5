//! Helpers shared by cairn-relay's integration tests (each test file uses what it needs).
#![allow(dead_code)]

pub(crate) mod flood;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::unixfs::{self, Range};
use cairn_core::{Cid, dag};
use cairn_p2p::Node;
use futures::TryStreamExt;
use libp2p::identity::Keypair;

/// The `cairn-relay` binary, quiet (or logging as `CAIRN_RELAY_LOG` says), with no store
/// from the environment.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn-relay"));
    let log = std::env::var("CAIRN_RELAY_LOG").unwrap_or_else(|_| "warn".into());
    c.env("CAIRN_LOG", log).env_remove("CAIRN_STORE");
    c
}

/// Logs for `CAIRN_TEST_LOG=…`.
pub(crate) fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAIRN_TEST_LOG"))
        .with_test_writer()
        .try_init();
}

/// Pseudo-random bytes (xorshift), the same for the same length.
pub(crate) fn data(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
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
    relay_with(config).await
}

/// A loopback relay with a fresh identity.
pub(crate) async fn relay() -> cairn_relay::relay::Running {
    relay_with(cairn_relay::relay::Config::loopback()).await
}

/// A relay with `config` and a fresh identity.
pub(crate) async fn relay_with(config: cairn_relay::relay::Config) -> cairn_relay::relay::Running {
    logs();
    cairn_relay::relay::start(Keypair::generate_ed25519(), config)
        .await
        .unwrap()
}

/// The relay's `/metrics` page.
pub(crate) async fn metrics_of(relay: &cairn_relay::relay::Running) -> String {
    reqwest::get(format!("http://{}/metrics", relay.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A native node (no relay server) with a fresh identity over `store`.
pub(crate) async fn native_node<S: BlockStore + 'static>(
    store: S,
    config: cairn_p2p::node::Config,
) -> Node {
    logs();
    let builder = cairn_p2p::Builder::new(Keypair::generate_ed25519()).config(config);
    cairn_relay::node::build(builder, store, &Default::default(), &mut Default::default()).unwrap()
}

/// A native node with the default settings over `store`.
pub(crate) async fn node(store: Arc<Memory>) -> Node {
    native_node(store, Default::default()).await
}

/// Waits until what `node` knows of `peer` satisfies `ok`, or panics saying `what` never
/// happened.
pub(crate) async fn until(
    node: &Node,
    peer: libp2p::PeerId,
    what: &str,
    ok: impl Fn(&cairn_p2p::PeerInfo) -> bool,
) {
    if node
        .wait_for(&[peer], Duration::from_secs(20), ok)
        .await
        .is_none()
    {
        panic!("{peer}: {what} never happened");
    }
}

/// Waits until `node` knows `peer` speaks /cas.
pub(crate) async fn until_cas(node: &Node, peer: libp2p::PeerId) {
    until(node, peer, "identified as a /cas peer", |p| p.cas).await;
}

/// Waits until identify has run with `peer`.
pub(crate) async fn until_identified(node: &Node, peer: libp2p::PeerId) {
    until(node, peer, "identify", |p| p.identified()).await;
}

/// Imports `bytes` into `store` with the default profile and sha2-256; returns the root.
pub(crate) async fn import<S: BlockStore>(store: &S, bytes: &[u8]) -> Cid {
    unixfs::import(
        store,
        bytes,
        unixfs::Profile::DEFAULT,
        cairn_core::HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap()
    .root
}

/// A memory store holding a `len`-byte file: the store, the file's root and its bytes.
pub(crate) async fn holding(len: usize) -> (Arc<Memory>, Cid, Vec<u8>) {
    let content = data(len);
    let store = Arc::new(Memory::new());
    let root = import(&*store, &content).await;
    (store, root, content)
}

/// Fetches the `len`-byte file under `root` from `from`'s `/cas` peers into a new store,
/// checks its length, and returns the store and the fetch's report.
pub(crate) async fn fetch_all(from: &Node, len: usize, root: Cid) -> (Arc<Memory>, dag::Report) {
    let store = Arc::new(Memory::new());
    let race = cairn_p2p::sources::cas_source(
        from,
        Some(root),
        RaceConfig {
            per_peer_timeout: Some(Duration::from_secs(30)),
            max_parallel: 4,
            look_up: false,
            ..Default::default()
        },
    );
    let chain = Chain::new().local(store.clone()).source(race, None);
    let ctx = Context::new().with_timeout(Duration::from_secs(120));
    let options = dag::Options {
        window: 16,
        ..Default::default()
    };
    let report = dag::fetch(&chain, &*store, root, options, &ctx, |_| {})
        .await
        .expect("fetch through the peer race");
    let bytes: Vec<u8> = unixfs::export(&chain, root, Range::ALL, 16, &ctx)
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .unwrap();
    assert_eq!(bytes.len(), len);
    (store, report)
}

/// `addr` without its trailing `/p2p/<id>`.
pub(crate) fn without_p2p(addr: &libp2p::Multiaddr) -> libp2p::Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

/// The file under `root`, read whole from `store` alone.
pub(crate) async fn read_all(store: &Arc<Memory>, root: Cid) -> Vec<u8> {
    let local = cairn_core::source::Local(store.clone());
    unixfs::export(&local, root, Range::ALL, 16, &Context::new())
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .unwrap()
}

/// Kills the process when dropped, so a failing test leaves no stray relay behind.
pub(crate) struct Kill(pub(crate) Child);

impl Kill {
    /// Waits for the process to exit by itself, for at most `limit` (then it is killed).
    /// The wait is the operating system's, on a thread: no polling.
    pub(crate) fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.0.id();
        let mut child = std::mem::replace(&mut self.0, placeholder());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send((child, status));
        });
        match rx.recv_timeout(limit) {
            Ok((child, status)) => {
                self.0 = child;
                status.ok()
            }
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                None
            }
        }
    }
}

/// A finished child process, to stand in for one being waited on.
fn placeholder() -> Child {
    let mut c = Command::new("true").spawn().expect("run `true`");
    let _ = c.wait();
    c
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of `r`, read on a thread, so a test can wait for one with a timeout.
/// The rest of a finished process's output, read to its end (the reader may still be
/// behind when the process has exited), waiting at most 10 s for it.
#[allow(dead_code)]
pub(crate) fn rest(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
    {
        out.push(line);
    }
    out
}

/// A `cairn-relay serve` of `store` on TCP `port` (0: any), its identity kept in `dir`,
/// killed when the first value is dropped; its first address and its HTTP address.
pub(crate) fn serve_store(
    dir: &std::path::Path,
    store: &std::path::Path,
    port: u16,
) -> (Kill, String, String) {
    let mut child = bin()
        .env("CAIRN_LOG", "warn")
        .args(["serve", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"))
        .args(["--http", "127.0.0.1:0", "--identity"])
        .arg(dir.join("relay.key"))
        .arg("--store")
        .arg(store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let kill = Kill(child);
    let addr = out
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay's address");
    assert!(addr.contains("/p2p/"), "{addr}");
    let http = loop {
        let l = err
            .recv_timeout(Duration::from_secs(30))
            .expect("the relay's HTTP address");
        if let Some(rest) = l.strip_prefix("serving the web app on http://") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    (kill, addr, http)
}

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
