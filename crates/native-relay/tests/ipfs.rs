//! The IPFS source and bitswap.
//!
//! Against Helia (npm, Node 22; `tests/js/helia-peer.mjs`), a peer no one here wrote, in both
//! directions and in bulk (64 MiB, which also covers js-libp2p's large yamux frames): Helia
//! adds and provides through cairn-relay's DHT, a native cairn node fetches it through the
//! IPFS source alone; cairn-relay adds, Helia fetches it over bitswap.
//!
//! Against bad peers and bad routing endpoints, in process: a provider that sends blocks that
//! do not match their CIDs, a routing endpoint that answers garbage or never answers, a
//! provider record pointing at an address nobody listens on, oversized wantlists.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_core::block::Block;
use cairn_core::cid::{Cid, Codec, HashAlg};
use cairn_core::source::{ContentSource, Context, SourceError};
use cairn_core::store::{self, BlockStore, Memory, Stat};
use cairn_p2p::Node;
use cairn_p2p::bitswap::{Entry, Message, WantError};
use cairn_p2p::ipfs::Network;
use cairn_p2p::routing_v1;
use cairn_p2p::sources::ipfs_source;
use cairn_relay::store::Disk;
use cairn_scenarios::{Data, node22, repo_root};
use common::{Kill, bin, lines};
use libp2p::{Multiaddr, PeerId};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// The tests that run Helia processes take turns: Node under load beside another such test
/// made a 64 MiB bitswap fetch miss its 15 s per-block timeout once in CI.
static HELIA_TURN: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();

async fn helia_turn() -> tokio::sync::MutexGuard<'static, ()> {
    HELIA_TURN.get_or_init(Default::default).lock().await
}

fn sha256_hex(b: &[u8]) -> String {
    let d = sha2::Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

async fn relay(store: Option<Disk>) -> cairn_relay::relay::Running {
    common::relay_on("/ip4/127.0.0.1/tcp/0", store).await
}

/// The relay's TCP address (with its `/p2p/` id).
fn full(relay: &cairn_relay::relay::Running) -> String {
    relay.addrs[0].to_string()
}

/// A Helia node serving `bytes` it added and provided through `relay`; stops when dropped.
struct Helia {
    _child: Kill,
    info: serde_json::Value,
}

fn helia_serve(relay: &str, bytes: u64, seed: &str) -> Helia {
    helia(&["serve", relay, &bytes.to_string(), seed])
}

/// A Helia process in mode `args[0]` that prints one JSON line and then serves until
/// dropped.
fn helia(args: &[&str]) -> Helia {
    let node = node22("ipfs (Helia)");
    let mut child = Command::new(node)
        .arg(repo_root().join("tests/js/helia-peer.mjs"))
        .args(args)
        .env("CAIRN_JS_TIMEOUT_MS", "300000")
        .current_dir(repo_root().join("tests/js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start Helia");
    let out = lines(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let child = Kill(child);
    match out.recv_timeout(Duration::from_secs(120)) {
        Ok(line) => Helia {
            _child: child,
            info: serde_json::from_str(&line).expect("Helia's JSON line"),
        },
        Err(_) => {
            drop(child);
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            panic!("Helia ({}) did not start serving:\n{err}", args[0]);
        }
    }
}

fn helia_fetch(peer: &str, cid: &str) -> serde_json::Value {
    let node = node22("ipfs (Helia)");
    let out = Command::new(node)
        .arg(repo_root().join("tests/js/helia-peer.mjs"))
        .args(["fetch", peer, cid])
        .env("CAIRN_JS_TIMEOUT_MS", "240000")
        .current_dir(repo_root().join("tests/js"))
        .output()
        .expect("run Helia");
    assert!(
        out.status.success(),
        "Helia fetch failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("Helia's JSON line")
}

/// A Helia peer's first TCP address, with its `/p2p/` id.
fn tcp_addr(h: &Helia) -> String {
    h.info["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .find(|a| a.contains("/tcp/") && !a.contains("/ws") && !a.contains("p2p-circuit"))
        .expect("a TCP address")
}

fn cat(args: &[&str]) -> std::process::Output {
    bin()
        .arg("cat")
        .args(args)
        // A failed fetch's message (its stderr) then tells how each peer was reached and
        // what was asked of it.
        .env("CAIRN_LOG", "warn,cairn_p2p=debug")
        .output()
        .expect("run cairn-relay cat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn helia_content_reaches_cairn_through_the_ipfs_source_alone() {
    let _turn = helia_turn().await;
    let relay = relay(None).await;
    let addr = full(&relay);
    let helia = tokio::task::spawn_blocking(move || helia_serve(&addr, 64 * MIB, "a"))
        .await
        .unwrap();
    let cid = helia.info["cid"].as_str().unwrap().to_owned();
    let want_sha = helia.info["sha256"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let relay_addr = full(&relay);
    let routing = format!("http://{}", relay.http);

    // Providers from the relay's DHT; blocks over bitswap from Helia. No /cas, no gateway.
    let out_dht = dir.path().join("via-dht");
    let started = Instant::now();
    let store = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let o = cat(&[
        &cid,
        "--store",
        &store("s1"),
        "--ipfs-via",
        &relay_addr,
        "-o",
        out_dht.to_str().unwrap(),
    ]);
    let dht_time = started.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&out_dht).unwrap();
    assert_eq!(got.len() as u64, 64 * MIB);
    assert_eq!(
        sha256_hex(&got),
        want_sha,
        "byte-identical to what Helia added"
    );

    // The same root CID: Helia's default import is cairn's unixfs-v1-2025 profile.
    let o = bin()
        .args(["add", "--only-hash", "--profile", "unixfs-v1-2025"])
        .arg(&out_dht)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), cid);

    // Providers from the relay's Delegated Routing V1 endpoint instead.
    let out_http = dir.path().join("via-routing");
    let started = Instant::now();
    let o = cat(&[
        &cid,
        "--store",
        &store("s2"),
        "--routing",
        &routing,
        "-o",
        out_http.to_str().unwrap(),
    ]);
    let http_time = started.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_hex(&std::fs::read(&out_http).unwrap()), want_sha);
    eprintln!(
        "64 MiB from Helia: providers by DHT {dht_time:?}, by delegated routing {http_time:?}"
    );

    // Content nobody provides: a clear, prompt failure, not a retry loop.
    let nobody = cairn_core::cid::of(Codec::Raw, HashAlg::Sha2_256, b"held by nobody");
    let o = cat(&[
        &nobody.to_string(),
        "--store",
        &store("s3"),
        "--ipfs-via",
        &relay_addr,
        "--routing",
        &routing,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "no provider of {nobody}: found none (DHT: 0 provider(s); {routing}: 0 provider(s))"
        )),
        "{err}"
    );
    drop(helia);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn a_helia_node_fetches_what_cairn_relay_added() {
    let _turn = helia_turn().await;
    let d = tempfile::tempdir().unwrap();
    let store = Disk::open(d.path()).await.unwrap();
    let bytes = Data::new(5).bytes(64 * MIB as usize);
    let root = common::import(&store, &bytes).await;
    let relay = relay(Some(store)).await;
    let addr = full(&relay);
    let cid = root.to_string();
    let got = tokio::task::spawn_blocking(move || helia_fetch(&addr, &cid))
        .await
        .unwrap();
    assert_eq!(got["bytes"].as_u64(), Some(64 * MIB), "{got}");
    assert_eq!(got["sha256"].as_str().unwrap(), sha256_hex(&bytes), "{got}");
    eprintln!("Helia fetched 64 MiB from cairn-relay over bitswap: {got}");
    let served = relay.node.bitswap().stats();
    assert!(served.blocks_sent >= 256, "{served:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn helia_fetches_a_file_in_a_cairn_directory_by_path() {
    let _turn = helia_turn().await;
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("site");
    std::fs::create_dir_all(tree.join("media")).unwrap();
    std::fs::create_dir_all(tree.join("big")).unwrap();
    let clip = Data::new(9).bytes(3 << 20);
    std::fs::write(tree.join("media/clip.bin"), &clip).unwrap();
    // 6,000 names of 14 bytes: 300,000 bytes of names and CIDs, past the 262,144 at which
    // a directory becomes a HAMT.
    for i in 0..6000 {
        std::fs::write(tree.join(format!("big/file-{i:05}.txt")), format!("{i}")).unwrap();
    }
    let store_dir = d.path().join("store");
    let o = bin()
        .args(["add", "-r"])
        .arg(&tree)
        .arg("--store")
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let store = Disk::open(&store_dir).await.unwrap();
    let relay = relay(Some(store)).await;
    let addr = full(&relay);
    for (path, want) in [
        ("media/clip.bin", sha256_hex(&clip)),
        ("big/file-04321.txt", sha256_hex(b"4321")),
    ] {
        let (addr, target) = (addr.clone(), format!("{root}/{path}"));
        let got = tokio::task::spawn_blocking(move || helia_fetch(&addr, &target))
            .await
            .unwrap();
        assert_eq!(got["sha256"].as_str().unwrap(), want, "{path}: {got}");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn cairn_fetches_a_file_in_a_helia_directory_by_path() {
    let _turn = helia_turn().await;
    let relay = relay(None).await;
    let addr = full(&relay);
    let helia = tokio::task::spawn_blocking(move || helia(&["serve-tree", &addr, "t"]))
        .await
        .unwrap();
    let root = helia.info["cid"].as_str().unwrap().to_owned();
    let want = helia.info["sha256"].as_str().unwrap().to_owned();
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let relay_addr = full(&relay);
    let fetch = |path: &str| {
        cat(&[
            &format!("{root}/{path}"),
            "--store",
            store.to_str().unwrap(),
            "--ipfs-via",
            &relay_addr,
        ])
    };
    let o = fetch("media/clip.bin");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sha256_hex(&o.stdout),
        want,
        "byte-identical to what Helia added"
    );
    // Through Helia's HAMT (6,000 entries): only the shards on the way are fetched.
    let o = fetch("big/file-04321.txt");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"4321");
    let held = Disk::open(&store)
        .await
        .unwrap()
        .stat()
        .await
        .unwrap()
        .blocks;
    assert!(
        held < 6000 / 4,
        "{held} blocks held: the path alone, not the whole directory"
    );
    let o = fetch("big/absent");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(helia);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn cairn_and_helia_find_each_other_on_an_ipfs_dht_with_no_cairn_relay_between_them() {
    let _turn = helia_turn().await;
    // The stand-in for the public IPFS DHT: two Helia DHT servers.
    let h1 = tokio::task::spawn_blocking(|| helia(&["dht"]))
        .await
        .unwrap();
    let h1_addr = tcp_addr(&h1);
    let boot = h1_addr.clone();
    let h2 = tokio::task::spawn_blocking(move || helia(&["dht", &boot]))
        .await
        .unwrap();
    let h2_addr = tcp_addr(&h2);

    // cairn-relay joins it (`--ipfs-dht`, bootstrapping from H1 instead of the public
    // peers) with a file pinned in its store.
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let file = d.path().join("cairn.bin");
    let bytes = Data::new(11).bytes(4 * MIB as usize);
    std::fs::write(&file, &bytes).unwrap();
    let added = bin()
        .args(["add", "--store"])
        .arg(&store)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let cid = String::from_utf8_lossy(&added.stdout).trim().to_owned();
    let mut child = bin()
        .args(["serve", "--ipfs-dht", "--bootstrap", &h1_addr])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"])
        .arg("--store")
        .arg(&store)
        .arg("--identity")
        .arg(d.path().join("id.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let relay = Kill(child);
    let relay_addr = out
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay's address");
    let relay_id = relay_addr.rsplit('/').next().unwrap().to_owned();

    // cairn → IPFS: a Helia node that knows only H2 finds the relay in the DHT (the record
    // it published through H1) and fetches the file over bitswap.
    let (h2a, c) = (h2_addr.clone(), cid.clone());
    let got = tokio::task::spawn_blocking(move || {
        let node = node22("ipfs (Helia)");
        let out = Command::new(node)
            .arg(repo_root().join("tests/js/helia-peer.mjs"))
            .args(["find-fetch", &h2a, &c])
            .env("CAIRN_JS_TIMEOUT_MS", "120000")
            .current_dir(repo_root().join("tests/js"))
            .output()
            .expect("run Helia");
        assert!(
            out.status.success(),
            "Helia find-fetch failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("Helia's JSON line")
    })
    .await
    .unwrap();
    assert_eq!(got["provider"].as_str(), Some(relay_id.as_str()), "{got}");
    assert_eq!(got["sha256"].as_str().unwrap(), sha256_hex(&bytes), "{got}");

    // IPFS → cairn: Helia provides through H1; cairn, asking only H2, finds and fetches it.
    let boot = h1_addr.clone();
    let h3 = tokio::task::spawn_blocking(move || {
        helia(&["provide", &boot, &(2 * MIB).to_string(), "dht"])
    })
    .await
    .unwrap();
    let their = h3.info["cid"].as_str().unwrap().to_owned();
    // Helia's provide resolves once its messages are sent; the DHT servers (other processes,
    // with nothing to subscribe to) store the record moments later, and under load later
    // still (2.5 s of lookups once came up empty in CI): lookups, each a new `cat`, until
    // one finds a provider or 30 s have passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = cat(&[
            &their,
            "--store",
            d.path().join("s2").to_str().unwrap(),
            "--ipfs-via",
            &h2_addr,
            "-o",
            d.path().join("theirs.bin").to_str().unwrap(),
        ]);
        let none = String::from_utf8_lossy(&o.stderr).contains("found none");
        if o.status.success() || !none || std::time::Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sha256_hex(&std::fs::read(d.path().join("theirs.bin")).unwrap()),
        h3.info["sha256"].as_str().unwrap()
    );
    drop(relay);
    drop((h1, h2, h3));
}

// ---------------------------------------------------------------------------------------
// Bad peers and bad routing, in process

/// A native node on loopback TCP serving `store` over bitswap.
async fn node<S: BlockStore + 'static>(store: S) -> (Node, Multiaddr) {
    let config = cairn_p2p::node::Config {
        advertise_listen_addrs: false,
        ..Default::default()
    };
    let node = common::native_node(store, config).await;
    let addr = node
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let full = addr.with(libp2p::multiaddr::Protocol::P2p(node.peer_id()));
    (node, full)
}

/// A store that answers every `get` with the same wrong block: a provider that lies.
#[derive(Default)]
struct Liar(Memory);

impl BlockStore for Liar {
    async fn get(&self, _cid: &Cid) -> store::Result<Option<Block>> {
        Ok(Some(
            Block::from_data(Codec::Raw, HashAlg::Sha2_256, Bytes::from_static(b"lies")).unwrap(),
        ))
    }
    async fn put(&self, block: Block) -> store::Result<bool> {
        self.0.put(block).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> store::Result<usize> {
        self.0.put_many(blocks).await
    }
    async fn has(&self, _cid: &Cid) -> store::Result<bool> {
        Ok(true)
    }
    async fn delete(&self, cid: &Cid) -> store::Result<bool> {
        self.0.delete(cid).await
    }
    async fn list(&self, after: Option<&Cid>, limit: usize) -> store::Result<Vec<Cid>> {
        self.0.list(after, limit).await
    }
    async fn stat(&self) -> store::Result<Stat> {
        self.0.stat().await
    }
}

/// A store whose first `get` never ends: a provider that loses the first want it is sent,
/// without a word (as one does when the stream the want came on was refused, or its answer
/// had no connection to go back on).
#[derive(Default)]
struct Deaf {
    inner: Memory,
    gets: std::sync::atomic::AtomicUsize,
}

impl BlockStore for Deaf {
    async fn get(&self, cid: &Cid) -> store::Result<Option<Block>> {
        if self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        self.inner.get(cid).await
    }
    async fn put(&self, block: Block) -> store::Result<bool> {
        self.inner.put(block).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> store::Result<usize> {
        self.inner.put_many(blocks).await
    }
    async fn has(&self, cid: &Cid) -> store::Result<bool> {
        self.inner.has(cid).await
    }
    async fn delete(&self, cid: &Cid) -> store::Result<bool> {
        self.inner.delete(cid).await
    }
    async fn list(&self, after: Option<&Cid>, limit: usize) -> store::Result<Vec<Cid>> {
        self.inner.list(after, limit).await
    }
    async fn stat(&self) -> store::Result<Stat> {
        self.inner.stat().await
    }
}

/// What a fake routing endpoint does.
#[derive(Clone)]
enum Fake {
    /// Answers 200 with this body.
    Body(String),
    /// Accepts and never answers.
    Hang,
}

/// A one-route HTTP server on loopback; returns its base URL.
async fn fake_routing(mode: Fake) -> String {
    counted_routing(mode, Arc::default()).await
}

/// [`fake_routing`], counting the requests it gets in `asked`.
async fn counted_routing(mode: Fake, asked: Arc<std::sync::atomic::AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            match &mode {
                Fake::Body(body) => {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                }
                Fake::Hang => held.push(sock),
            }
        }
    });
    format!("http://{addr}")
}

async fn client(routing: &str) -> (Node, Network<cairn_relay::http::Client>) {
    let (node, _) = node(Memory::new()).await;
    let http = cairn_relay::http::Client::new().unwrap();
    let mut net = Network::new(
        node.clone(),
        vec![routing_v1::Client::new(http, routing)],
        false,
        cairn_p2p::ipfs::any_address,
    );
    net.lookup_timeout = Duration::from_secs(2);
    net.connect_timeout = Duration::from_secs(5);
    (node, net)
}

fn record(peer: PeerId, addr: &Multiaddr) -> String {
    routing_v1::to_json(&[routing_v1::Provider {
        peer,
        addrs: vec![addr.clone()],
        protocols: vec!["transport-bitswap".into()],
    }])
}

fn some_cid() -> Cid {
    cairn_core::cid::of(Codec::Raw, HashAlg::Sha2_256, b"wanted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_sends_blocks_not_matching_their_cids_is_refused_and_penalised() {
    let (liar, liar_addr) = node(Liar::default()).await;
    let routing = fake_routing(Fake::Body(record(liar.peer_id(), &liar_addr))).await;
    let (_client, net) = client(&routing).await;
    let source = ipfs_source(net, None);
    let started = Instant::now();
    let err = source
        .retrieve(
            &some_cid(),
            &Context::new().with_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("invalid data"), "{text}");
    assert!(text.contains("matches none of the CIDs"), "{text}");
    assert!(
        source.reputations().get(&liar.peer_id()).trust() < 1.0,
        "the liar lost trust"
    );
    eprintln!("tampered block refused in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_met_with_silence_is_sent_again_and_answered() {
    let deaf = Arc::new(Deaf::default());
    let block =
        Block::from_data(Codec::Raw, HashAlg::Sha2_256, Bytes::from_static(b"wanted")).unwrap();
    deaf.inner.put(block.clone()).await.unwrap();
    let (provider, provider_addr) = node(deaf.clone()).await;
    let routing = fake_routing(Fake::Body(record(provider.peer_id(), &provider_addr))).await;
    let (_client, net) = client(&routing).await;
    let started = Instant::now();
    let got = ipfs_source(net, None)
        .retrieve(
            block.cid(),
            &Context::new().with_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(got.data(), block.data());
    assert_eq!(
        deaf.gets.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the lost want, then the one sent again"
    );
    assert!(
        started.elapsed() >= cairn_p2p::ipfs::REWANT,
        "answered by the want sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routing_answers_and_unreachable_providers_fail_clearly_and_in_bounded_time() {
    let cid = some_cid();
    let ctx = || Context::new().with_timeout(Duration::from_secs(30));

    let garbage = fake_routing(Fake::Body("<html>busy</html>".into())).await;
    let (_c, net) = client(&garbage).await;
    let err = ipfs_source(net, None)
        .retrieve(&cid, &ctx())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not provider records"), "{err}");

    let hang = fake_routing(Fake::Hang).await;
    let (_c, net) = client(&hang).await;
    let started = Instant::now();
    let err = ipfs_source(net, None)
        .retrieve(&cid, &ctx())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no answer within 2s"), "{err}");
    assert!(
        !matches!(err, SourceError::DeadlineExceeded),
        "the lookup's own bound cut it, not the request's deadline: {err}"
    );
    eprintln!(
        "hanging routing endpoint given up after {:?}",
        started.elapsed()
    );

    // A record pointing at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nobody: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let ghost = PeerId::random();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let unreachable = counted_routing(Fake::Body(record(ghost, &nobody)), asked.clone()).await;
    let (_c, net) = client(&unreachable).await;
    let source = ipfs_source(net, None);
    let err = source.retrieve(&cid, &ctx()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("none of those found could be reached"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("cannot connect to {ghost}")),
        "{err}"
    );
    // The session remembers: the next block fails at once, without asking again.
    let lookups = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(lookups, 1, "one lookup");
    let again = source.retrieve(&cid, &ctx()).await.unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        lookups,
        "no second lookup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_oversized_wantlists_is_cut_off_and_others_are_still_served() {
    let store = Arc::new(Memory::new());
    let block =
        Block::from_data(Codec::Raw, HashAlg::Sha2_256, Bytes::from_static(b"held")).unwrap();
    store.put(block.clone()).await.unwrap();
    let (server, server_addr) = node(store).await;
    let (abuser, _) = node(Memory::new()).await;
    let (honest, _) = node(Memory::new()).await;
    for n in [&abuser, &honest] {
        n.dial(server_addr.clone()).await.unwrap();
    }
    let spam = Message {
        wantlist: (0..=cairn_p2p::bitswap::MAX_WANTLIST as u32)
            .map(|i| {
                Entry::want_block(cairn_core::cid::of(
                    Codec::Raw,
                    HashAlg::Sha2_256,
                    &i.to_be_bytes(),
                ))
            })
            .collect(),
        ..Default::default()
    };
    // Each refused message drops the stream it came on. A message the abuser writes before
    // it notices the reset is lost with that stream, so each strike is sent until counted.
    let mut stats = server.bitswap().watch_stats();
    for strike in 1..=u64::from(cairn_p2p::bitswap::MAX_STRIKES) {
        for _ in 0..10 {
            abuser
                .bitswap()
                .send_message(server.peer_id(), spam.clone())
                .await
                .unwrap();
            let counted = stats.wait_for(|s| s.bad_messages >= strike);
            if tokio::time::timeout(Duration::from_secs(2), counted)
                .await
                .is_ok()
            {
                break;
            }
        }
    }
    assert_eq!(
        server.bitswap().stats().bad_messages,
        u64::from(cairn_p2p::bitswap::MAX_STRIKES)
    );
    // The abuser is no longer served…
    let cut_off = tokio::time::timeout(
        Duration::from_secs(3),
        abuser.bitswap().want(server.peer_id(), *block.cid()),
    )
    .await;
    assert!(
        !matches!(cut_off, Ok(Ok(_))),
        "a peer past its strikes got a block: {cut_off:?}"
    );
    // …while an honest peer is, and a missing block is a prompt DontHave.
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        honest.bitswap().want(server.peer_id(), *block.cid()),
    )
    .await
    .expect("answered")
    .expect("the block");
    assert_eq!(&got[..], b"held");
    let missing = tokio::time::timeout(
        Duration::from_secs(10),
        honest.bitswap().want(server.peer_id(), some_cid()),
    )
    .await
    .expect("answered");
    assert_eq!(missing, Err(WantError::DontHave));
}
