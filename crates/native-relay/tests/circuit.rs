//! Real libp2p, in process: a relay and native nodes moving content. Node A holds a file;
//! node B, connected to A only through a circuit on the relay, fetches it with the peer race
//! over `/cas/1.0.0`, byte-identical. The same over direct TCP and QUIC, and with A found
//! only through the relay's DHT.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::unixfs::{self, Range};
use cairn_p2p::Node;
use cairn_p2p::sources::cas_source;
use common::{fetch_all, holding, metrics_of, node, relay, until_cas, until_identified};
use futures::TryStreamExt;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

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
        .source(
            cas_source(&b, None, RaceConfig::default()),
            Some(Duration::from_secs(10)),
        )
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
