//! Real libp2p, in process: a relay and native nodes. Node A holds a 64 MiB file; node B,
//! connected to A only through a circuit on the relay, fetches it with the peer race over
//! `/cas/1.0.0`, byte-identical. The same over a direct TCP connection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::dag;
use cairn_core::source::{Chain, Context, PeerRace, RaceConfig};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::unixfs::{self, Profile, Range};
use cairn_p2p::Node;
use futures::{StreamExt as _, TryStreamExt};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;

fn data(len: usize) -> Vec<u8> {
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

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CAIRN_TEST_LOG"))
        .with_test_writer()
        .try_init();
}

async fn node(store: Arc<Memory>) -> Node {
    logs();
    common::native_node(store, Default::default()).await
}

async fn relay() -> cairn_relay::relay::Running {
    relay_with(cairn_relay::relay::Config::loopback()).await
}

/// A relay with `config` and a fresh identity.
async fn relay_with(config: cairn_relay::relay::Config) -> cairn_relay::relay::Running {
    cairn_relay::relay::start(Keypair::generate_ed25519(), config)
        .await
        .unwrap()
}

/// The relay's `/metrics` page.
async fn metrics_of(relay: &cairn_relay::relay::Running) -> String {
    reqwest::get(format!("http://{}/metrics", relay.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until what `node` knows of `peer` satisfies `ok` (identify has run), or panics.
async fn until(
    node: &Node,
    peer: libp2p::PeerId,
    what: &str,
    ok: impl Fn(&cairn_p2p::node::PeerInfo) -> bool,
) {
    for _ in 0..200 {
        if node.peers().get(&peer).is_some_and(&ok) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{peer}: {what} never happened");
}

/// Waits until `node` knows `peer` speaks /cas.
async fn until_cas(node: &Node, peer: libp2p::PeerId) {
    until(node, peer, "identified as a /cas peer", |p| p.cas).await;
}

/// Waits until identify has run with `peer`.
async fn until_identified(node: &Node, peer: libp2p::PeerId) {
    until(node, peer, "identify", |p| p.agent.is_some()).await;
}

/// A memory store holding a `len`-byte file: the store, the file's root and its bytes.
async fn holding(len: usize) -> (Arc<Memory>, cairn_core::Cid, Vec<u8>) {
    let content = data(len);
    let store = Arc::new(Memory::new());
    let root = common::import(&*store, &content).await;
    (store, root, content)
}

/// A holds a `len`-byte file and listens on `listen`; B dials that address directly (no
/// relay) and fetches the file with the peer race. Returns (A, B), still connected.
async fn direct_transfer(listen: &str, len: usize) -> (Node, Node) {
    let (store_a, root, _) = holding(len).await;
    let a = node(store_a).await;
    let addr = a.listen(listen.parse().unwrap()).await.unwrap();
    let transport = listen.rsplit('/').nth(1).unwrap_or_default();
    assert!(
        addr.to_string().contains(transport),
        "{addr} is a {transport} address"
    );
    let b = node(Arc::new(Memory::new())).await;
    assert_eq!(b.dial(addr).await.unwrap(), a.peer_id());
    until_cas(&b, a.peer_id()).await;
    assert!(!b.peers()[&a.peer_id()].relayed, "a direct connection");
    fetch_all(&b, len, root).await;
    (a, b)
}

async fn fetch_all(from: &Node, len: usize, root: cairn_core::Cid) -> (Arc<Memory>, dag::Report) {
    let store = Arc::new(Memory::new());
    let race = PeerRace::new(from.clone()).config(RaceConfig {
        per_peer_timeout: Duration::from_secs(30),
        max_parallel: 4,
    });
    let chain = Chain::new().local(store.clone()).source(race, None);
    let ctx = Context::new().with_timeout(Duration::from_secs(120));
    let report = dag::fetch(
        &chain,
        &*store,
        root,
        dag::Options {
            window: 16,
            ..Default::default()
        },
        &ctx,
        |_| {},
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_moves_through_a_relay_circuit() {
    const LEN: usize = 64 << 20;
    let relay = relay().await;
    let relay_addr = relay.addrs[0].clone();

    let (store_a, root, content) = holding(LEN).await;
    let a = node(store_a.clone()).await;
    let b = node(Arc::new(Memory::new())).await;

    assert_eq!(a.dial(relay_addr.clone()).await.unwrap(), relay.peer_id);
    let circuit = a
        .listen(relay_addr.clone().with(Protocol::P2pCircuit))
        .await
        .expect("reservation");
    assert!(circuit.to_string().contains("/p2p-circuit"), "{circuit}");

    b.dial(relay_addr.clone()).await.unwrap();
    let via_relay: Multiaddr = relay_addr
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a.peer_id()));
    assert_eq!(b.dial(via_relay).await.unwrap(), a.peer_id());
    until_cas(&b, a.peer_id()).await;
    assert!(
        b.peers()[&a.peer_id()].relayed,
        "B reaches A only through the circuit"
    );

    let (store_b, report) = fetch_all(&b, LEN, root).await;
    assert_eq!(store_b.stat().await.unwrap(), store_a.stat().await.unwrap());
    assert_eq!(
        report.progress.by_source[1], report.progress.blocks_done,
        "every block from peers"
    );
    let local = cairn_core::source::Local(store_b);
    let ctx = Context::new();
    let mut stream = std::pin::pin!(unixfs::export(&local, root, Range::ALL, 8, &ctx));
    let mut offset = 0;
    while let Some(piece) = stream.try_next().await.unwrap() {
        assert_eq!(
            &piece[..],
            &content[offset..offset + piece.len()],
            "byte-identical at {offset}"
        );
        offset += piece.len();
    }
    assert_eq!(offset, LEN);
    eprintln!("64 MiB through the relay circuit in {:.2?}", report.elapsed);

    // The relay's own counters show it carried the bytes, both ways.
    let metrics = metrics_of(&relay).await;
    let total = |direction: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("libp2p_bandwidth_bytes_total")
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (inbound, outbound) = (total("Inbound"), total("Outbound"));
    eprintln!("relay carried {inbound} bytes in, {outbound} bytes out");
    assert!(
        inbound >= LEN as u64,
        "relay inbound {inbound} < 64 MiB:\n{metrics}"
    );
    assert!(outbound >= LEN as u64, "relay outbound {outbound} < 64 MiB");
    assert!(
        metrics.contains("libp2p_relay_events_total"),
        "relay events are counted"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tcp_transfer_and_missing_content() {
    let (a, b) = direct_transfer("/ip4/127.0.0.1/tcp/0", 8 << 20).await;

    // Content nobody has: the race says so, naming the peer, without hanging.
    let missing = cairn_core::cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"nobody");
    let err = Chain::new()
        .source(PeerRace::new(b.clone()), Some(Duration::from_secs(10)))
        .retrieve_reported(&missing, &Context::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("peer {}: not found", a.peer_id())),
        "{err}"
    );

    // Dialing nowhere is a clear error.
    let err = b
        .dial("/ip4/127.0.0.1/tcp/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot dial"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_flood_is_refused_and_others_are_still_served() {
    let config = cairn_relay::relay::Config {
        reservations_per_peer_burst: 2,
        rate_interval: Duration::from_secs(3600),
        ..cairn_relay::relay::Config::loopback()
    };
    let relay = relay_with(config).await;
    let addr = relay.addrs[0].clone();
    let greedy = node(Arc::new(Memory::new())).await;
    greedy.dial(addr.clone()).await.unwrap();
    let circuit = addr.clone().with(Protocol::P2pCircuit);
    let mut refused = 0;
    for _ in 0..6 {
        if greedy.listen(circuit.clone()).await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 4,
        "2 reservation requests per peer per hour: the other 4 are refused"
    );
    // Another peer still gets its reservation.
    let polite = node(Arc::new(Memory::new())).await;
    polite.dial(addr).await.unwrap();
    polite
        .listen(circuit)
        .await
        .expect("the relay still serves other peers");
    let metrics = metrics_of(&relay).await;
    assert!(
        metrics.contains("ReservationReqDenied"),
        "denials are counted:\n{metrics}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_ports_does_not_disturb_the_relay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = cairn_relay::relay::Config {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/tcp/0/ws".parse().unwrap(),
        ],
        http: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let relay = relay_with(config).await;
    let port = |a: &Multiaddr| {
        a.iter()
            .find_map(|p| {
                if let Protocol::Tcp(port) = p {
                    Some(port)
                } else {
                    None
                }
            })
            .unwrap()
    };
    // 50 connections of junk on each port: HTTP nonsense on the WebSocket port, random bytes
    // and a half-open connection on the TCP port. Each is bounded: the relay closes them.
    let mut junk = Vec::new();
    for addr in &relay.addrs {
        for i in 0..50u32 {
            let port = port(addr);
            junk.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let payload: Vec<u8> = if i % 2 == 0 {
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: nonsense\r\n\r\n".to_vec()
                } else {
                    (0..4096u32)
                        .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
                        .collect()
                };
                let _ = s.write_all(&payload).await;
                let mut buf = [0u8; 1024];
                // The relay answers or closes; it never leaves us hanging for long.
                let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
            }));
        }
    }
    for j in junk {
        j.await.unwrap();
    }
    // Real peers are still served.
    let a = node(Arc::new(Memory::new())).await;
    assert_eq!(a.dial(relay.addrs[1].clone()).await.unwrap(), relay.peer_id);
    a.listen(relay.addrs[1].clone().with(Protocol::P2pCircuit))
        .await
        .expect("reservation after the junk");
    let health = reqwest::get(format!("http://{}/health", relay.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_gets_bounded_answers_and_the_relay_keeps_serving() {
    use cairn_p2p::cas::{Request, Response};
    let d = tempfile::tempdir().unwrap();
    let store = cairn_relay::store::Disk::open(d.path()).await.unwrap();
    let root = unixfs::import(
        &store,
        &data(300_000)[..],
        Profile::DEFAULT,
        HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap()
    .root;
    let relay = cairn_relay::relay::start(
        Keypair::generate_ed25519(),
        cairn_relay::relay::Config {
            store: Some(store),
            ..cairn_relay::relay::Config::loopback()
        },
    )
    .await
    .unwrap();
    let flooder = node(Arc::new(Memory::new())).await;
    flooder.dial(relay.addrs[0].clone()).await.unwrap();
    let get = || Request::Get {
        cids: vec![(&root).into()],
    };
    // 1000 requests at once on one connection: each gets an answer (a block, `busy`, or a
    // refused stream) within bounded time; none hangs.
    let started = std::time::Instant::now();
    let answers =
        futures::future::join_all((0..1000).map(|_| flooder.request(relay.peer_id, get()))).await;
    let served = answers
        .iter()
        .filter(|a| matches!(a, Ok(Response::Get { blocks, .. }) if blocks.len() == 1))
        .count();
    let busy = answers
        .iter()
        .filter(|a| matches!(a, Ok(Response::Error { code, .. }) if *code == cairn_p2p::cas::code::BUSY))
        .count();
    let refused = answers.iter().filter(|a| a.is_err()).count();
    eprintln!(
        "1000 requests in {:.2?}: {served} served, {busy} busy, {refused} refused",
        started.elapsed()
    );
    assert_eq!(served + busy + refused, 1000);
    assert!(served > 0, "some requests were served");
    assert!(started.elapsed() < Duration::from_secs(60));
    // A well-behaved peer is still served, and so is the flooder once it calms down.
    let polite = node(Arc::new(Memory::new())).await;
    polite.dial(relay.addrs[0].clone()).await.unwrap();
    assert!(
        matches!(polite.request(relay.peer_id, get()).await, Ok(Response::Get { blocks, .. }) if blocks.len() == 1)
    );
    assert!(
        matches!(flooder.request(relay.peer_id, get()).await, Ok(Response::Get { blocks, .. }) if blocks.len() == 1)
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_moves_over_quic() {
    direct_transfer("/ip4/127.0.0.1/udp/0/quic-v1", 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_finds_a_provider_it_was_never_told_about_through_the_relay_dht() {
    const LEN: usize = 2 << 20;
    let relay = relay().await;
    let relay_addr = relay.addrs[0].clone();
    let (store_a, root, _) = holding(LEN).await;
    let a = node(store_a).await;
    a.dial(relay_addr.clone()).await.unwrap();
    a.listen(relay_addr.clone().with(Protocol::P2pCircuit))
        .await
        .unwrap();
    until_identified(&a, relay.peer_id).await; // the relay is now in A's DHT table
    a.provide(root)
        .await
        .expect("provider record stored on the relay");

    // B knows only the relay.
    let b = node(Arc::new(Memory::new())).await;
    b.dial(relay_addr).await.unwrap();
    until_identified(&b, relay.peer_id).await;
    let providers = b.find_providers(root).await.unwrap();
    assert_eq!(
        providers,
        vec![a.peer_id()],
        "A is found through the relay's DHT"
    );
    until_cas(&b, a.peer_id()).await; // dialed at the circuit address A's record carries
    assert!(b.peers()[&a.peer_id()].relayed);
    fetch_all(&b, LEN, root).await;

    // Nobody provides this: an empty answer, not a hang.
    let nobody = cairn_core::cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"nobody");
    let none = tokio::time::timeout(Duration::from_secs(30), b.find_providers(nobody)).await;
    assert_eq!(
        none.expect("answers in bounded time").unwrap(),
        Vec::<libp2p::PeerId>::new()
    );
    relay.shutdown().await;
}

/// A peer that speaks `/cas` through hand-driven streams: the test decides what each
/// request gets. Returns its node (for its id and address) and its incoming streams.
async fn hand_driven_peer() -> (Node, Multiaddr, libp2p_stream::IncomingStreams) {
    logs();
    let config = cairn_p2p::node::Config {
        cas: cairn_p2p::CasConfig {
            serve: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let swarm = cairn_relay::node::swarm(
        Keypair::generate_ed25519(),
        None,
        &config,
        &Default::default(),
        &mut Default::default(),
    )
    .await
    .unwrap();
    let incoming = cairn_p2p::perf::control(&swarm)
        .accept(cairn_p2p::cas::PROTOCOL)
        .unwrap();
    let (node, driver) = Node::new(swarm, cairn_core::store::Null::new(), config);
    tokio::spawn(driver);
    let addr = node
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    (node, addr, incoming)
}

/// The next `get` a hand-driven peer receives, with its stream; the `caps` requests peers
/// send on connecting are answered on the way (without a content index).
async fn next_get(
    incoming: &mut libp2p_stream::IncomingStreams,
) -> (libp2p::Stream, cairn_p2p::cas::Request) {
    use cairn_p2p::cas;
    use futures::{AsyncWriteExt, StreamExt};
    loop {
        let (_, mut s) = incoming.next().await.unwrap();
        let body = cas::read_frame(&mut s, cas::Limits::default().max_request)
            .await
            .unwrap();
        match cas::decode(&body).unwrap() {
            cas::Request::Caps {} => {
                let caps = cas::Response::Caps(Default::default());
                let _ = cas::write_frame(&mut s, &cas::encode(&caps)).await;
                let _ = s.close().await;
            }
            req => return (s, req),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_won_race_resets_the_losing_peers_stream() {
    use futures::AsyncWriteExt;
    use tokio::sync::{Notify, oneshot};

    let block = cairn_core::Block::from_data(
        cairn_core::Codec::Raw,
        HashAlg::Sha2_256,
        bytes::Bytes::from(data(64 << 10)),
    )
    .unwrap();
    let cid = *block.cid();
    let limits = cairn_p2p::cas::Limits::default();

    // The loser reads the request, promises a 4 MiB response and trickles it out; it
    // reports how much it wrote before a write failed (or that none ever did).
    let (loser, loser_addr, mut loser_in) = hand_driven_peer().await;
    let asked = Arc::new(Notify::new());
    let (report, reported) = oneshot::channel::<(usize, Option<std::io::Error>)>();
    let loser_asked = asked.clone();
    tokio::spawn(async move {
        let (mut s, _) = next_get(&mut loser_in).await;
        loser_asked.notify_one();
        let mut header = Vec::new();
        cairn_core::varint::put(&mut header, 4 << 20);
        s.write_all(&header).await.unwrap();
        let mut sent = 0;
        for _ in 0..1000 {
            if let Err(e) = s.write_all(&[0u8; 4096]).await {
                let _ = report.send((sent, Some(e)));
                return;
            }
            let _ = s.flush().await;
            sent += 4096;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = report.send((sent, None));
    });

    // The winner answers properly, but only once the loser has the request too, so both
    // streams are open when the race is decided.
    let (winner, winner_addr, mut winner_in) = hand_driven_peer().await;
    let store = Memory::new();
    store.put(block.clone()).await.unwrap();
    tokio::spawn(async move {
        let (mut s, req) = next_get(&mut winner_in).await;
        asked.notified().await;
        let resp = cairn_p2p::cas::answer(&store, req, &limits, &Default::default()).await;
        cairn_p2p::cas::write_frame(&mut s, &cairn_p2p::cas::encode(&resp))
            .await
            .unwrap();
        let _ = s.close().await;
    });

    let client = node(Arc::new(Memory::new())).await;
    client.dial(loser_addr).await.unwrap();
    client.dial(winner_addr).await.unwrap();
    until_cas(&client, loser.peer_id()).await;
    until_cas(&client, winner.peer_id()).await;

    let got = Chain::new()
        .source(PeerRace::new(client.clone()), Some(Duration::from_secs(10)))
        .retrieve_reported(&cid, &Context::new())
        .await
        .unwrap();
    assert_eq!(got.block.data(), block.data(), "the winner's block");
    assert_eq!(got.served_by, cairn_core::source::SourceKind::Peers);

    let (sent, error) = tokio::time::timeout(Duration::from_secs(30), reported)
        .await
        .expect("the loser's writes end")
        .unwrap();
    let error = error.expect("the loser's stream was reset, not read to the end");
    assert!(
        sent < 4 << 20,
        "the loser stopped after {sent} bytes of 4 MiB ({error})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_a_peer_through_the_relay() {
    let relay = relay().await;
    let a = node(Arc::new(Memory::new())).await;
    let b = node(Arc::new(Memory::new())).await;
    let mut heard = b.announcements(8).await.unwrap();
    a.dial(relay.addrs[0].clone()).await.unwrap();
    b.dial(relay.addrs[0].clone()).await.unwrap();
    let root = cairn_core::cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"announced");

    // GossipSub learns who listens within a heartbeat or two; until then publishing fails
    // or reaches only the relay, so announce once a second until B hears it (bounded).
    let mut last_error = None;
    let mut got = None;
    for _ in 0..20 {
        match a.announce(root, 9, Duration::from_secs(600)).await {
            Ok(()) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
        if let Ok(Some(ann)) = tokio::time::timeout(Duration::from_secs(1), heard.next()).await {
            got = Some(ann);
            break;
        }
    }
    let got = got.unwrap_or_else(|| panic!("B never heard A's announcement ({last_error:?})"));
    assert_eq!(
        got.peer,
        a.peer_id(),
        "signed by A, though the relay forwarded it"
    );
    assert_eq!(got.root, root);
    assert_eq!(got.size, 9);
    let now = cairn_p2p::announce::now();
    assert!(
        (now + 590..=now + 600).contains(&got.expires),
        "{}",
        got.expires
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_content_index_arrives_with_caps_and_grows_with_its_announcements() {
    use cairn_core::source::PeerClient;
    let (store_a, root, _) = holding(1 << 20).await;
    let a = node(store_a.clone()).await;
    let addr = a
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let b = node(Arc::new(Memory::new())).await;
    b.dial(addr).await.unwrap();
    let key = cairn_core::source::PeerKey::new(a.peer_id().to_string());
    let reps = b.reputations().expect("the node keeps a reputation table");
    let mut index = None;
    for _ in 0..200 {
        index = reps.get(&key).index;
        if index.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let index = index.expect("B asked A for caps and kept its content index");
    assert!(
        index.may_contain(&root),
        "A's index lists the root it holds"
    );
    let later = cairn_core::Block::from_data(
        cairn_core::Codec::Raw,
        HashAlg::Sha2_256,
        bytes::Bytes::from_static(b"added later"),
    )
    .unwrap();
    assert!(!index.may_contain(later.cid()), "not yet held");

    store_a.put(later.clone()).await.unwrap();
    let mut heard = false;
    for _ in 0..20 {
        let _ = a.announce(*later.cid(), 11, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if reps
            .get(&key)
            .index
            .is_some_and(|ix| ix.may_contain(later.cid()))
        {
            heard = true;
            break;
        }
    }
    assert!(
        heard,
        "A's announcement added the new root to the index B keeps for A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_relay_lets_an_answer_in_flight_finish_then_refuses_new_peers() {
    let d = tempfile::tempdir().unwrap();
    let store = cairn_relay::store::Disk::open(d.path()).await.unwrap();
    let mut cids = Vec::new();
    for i in 0..7u8 {
        let b = cairn_core::Block::from_data(
            cairn_core::Codec::Raw,
            HashAlg::Sha2_256,
            bytes::Bytes::from(vec![i; 1 << 20]),
        )
        .unwrap();
        cids.push(cairn_p2p::cas::WireCid::from(b.cid()));
        store.put(b).await.unwrap();
    }
    // With no grace (shutdown_grace: 0) this answer is cut: "unexpected end of file".
    let grace = Duration::from_secs(10);
    let config = cairn_relay::relay::Config {
        store: Some(store),
        shutdown_grace: grace,
        ..cairn_relay::relay::Config::loopback()
    };
    let relay = relay_with(config).await;
    let client = node(Arc::new(Memory::new())).await;
    let addr = relay.addrs[0].clone();
    client.dial(addr.clone()).await.unwrap();
    let relay_id = relay.peer_id;

    // 7 MiB asked for, and the relay told to stop while it reads and sends them.
    let asking = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(relay_id, cairn_p2p::cas::Request::Get { cids })
                .await
        })
    };
    // Stopped once the relay has read the blocks and is answering (a fixed sleep lost the
    // race on a loaded machine: the request had not arrived yet).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !metrics_of(&relay)
        .await
        .contains("cairn_cas_requests_total{")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never answered the request"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.shutdown().await;
    match asking.await.unwrap() {
        Ok(cairn_p2p::cas::Response::Get { blocks, .. }) => assert_eq!(blocks.len(), 7),
        other => panic!("the answer in flight was cut: {other:?}"),
    }

    let late = node(Arc::new(Memory::new())).await;
    assert!(
        late.dial(addr).await.is_err(),
        "a stopped relay accepts no one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_flood_is_refused_and_others_still_get_circuits() {
    let config = cairn_relay::relay::Config {
        circuits_per_peer_burst: 5,
        rate_interval: Duration::from_secs(3600),
        ..cairn_relay::relay::Config::loopback()
    };
    let relay = relay_with(config).await;
    let relay_addr = relay.addrs[0].clone();
    let (store_a, root, _) = holding(256 << 10).await;
    let a = node(store_a).await;
    a.dial(relay_addr.clone()).await.unwrap();
    a.listen(relay_addr.clone().with(Protocol::P2pCircuit))
        .await
        .expect("reservation");
    let via_relay: Multiaddr = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a.peer_id()));

    // One peer opens 30 circuits to A at once (each dial without a known peer id is a new
    // connection, so a new circuit).
    let flood = node(Arc::new(Memory::new())).await;
    flood.dial(relay_addr.clone()).await.unwrap();
    let dials = (0..30).map(|_| {
        let flood = flood.clone();
        let addr = via_relay.clone();
        async move { tokio::time::timeout(Duration::from_secs(20), flood.dial(addr)).await }
    });
    let results = futures::future::join_all(dials).await;
    let opened = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Err(e)) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "every dial got an answer, none hung"
    );
    assert!(
        opened <= 5,
        "at most the burst of 5 circuits: {opened} opened"
    );
    assert!(
        refused.len() >= 25,
        "{} refused: {refused:?}",
        refused.len()
    );
    // Past the burst the relay says why; the relay client also drops circuit requests
    // past its own limit of outstanding ones ("canceled"), before they reach the relay.
    assert!(
        refused
            .iter()
            .any(|e| e.contains("resource limit exceeded")),
        "the relay says why: {refused:?}"
    );

    // Another peer still reaches A through the relay and fetches its content.
    let b = node(Arc::new(Memory::new())).await;
    b.dial(relay_addr).await.unwrap();
    assert_eq!(b.dial(via_relay).await.unwrap(), a.peer_id());
    until_cas(&b, a.peer_id()).await;
    fetch_all(&b, 256 << 10, root).await;

    let metrics = metrics_of(&relay).await;
    assert!(
        metrics.contains("CircuitReqDenied"),
        "denials are counted:\n{metrics}"
    );
    relay.shutdown().await;
}
