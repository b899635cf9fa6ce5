//! Floods a stranger can make against a relay: reservations, circuits, garbage on its
//! ports, `/cas` requests. Each is refused within bounds, and honest peers are served
//! throughout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::store::Memory;
use cairn_core::unixfs::{self, Profile};
use common::{data, fetch_all, holding, metrics_of, node, relay_with, until_cas};
use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;

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
    let asking = futures::future::join_all((0..1000).map(|_| {
        let req = get();
        let flooder = flooder.clone();
        let peer = relay.peer_id;
        async move { flooder.request(peer, &req).await }
    }));
    // Each request is bounded by its own timeout; together they must end too.
    let answers = tokio::time::timeout(Duration::from_secs(120), asking)
        .await
        .expect("every request got its answer or its refusal");
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
    // A well-behaved peer is still served, and so is the flooder once it calms down.
    let polite = node(Arc::new(Memory::new())).await;
    polite.dial(relay.addrs[0].clone()).await.unwrap();
    assert!(
        matches!(polite.request(relay.peer_id, &get()).await, Ok(Response::Get { blocks, .. }) if blocks.len() == 1)
    );
    assert!(
        matches!(flooder.request(relay.peer_id, &get()).await, Ok(Response::Get { blocks, .. }) if blocks.len() == 1)
    );
    relay.shutdown().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_record_flood_takes_only_its_share_of_the_relays_dht() {
    const CAP: usize = 40;
    let relay = relay_with(cairn_relay::relay::Config {
        dht: cairn_p2p::dht_store::Limits {
            per_provider: CAP,
            ..Default::default()
        },
        ..cairn_relay::relay::Config::loopback()
    })
    .await;
    let addr = relay.addrs[0].clone();
    // One peer announces more CIDs than its share.
    let flood = node(Arc::new(Memory::new())).await;
    flood.dial(addr.clone()).await.unwrap();
    common::until_identified(&flood, relay.peer_id).await;
    let made_up: Vec<_> = (0..CAP as u32 + 20)
        .map(|i| cairn_core::cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, &i.to_le_bytes()))
        .collect();
    // Every record reaches the relay, which says of each whether it kept it.
    let mut told = relay.node.events();
    for c in &made_up {
        // The relay takes or drops each without answering: every publish "succeeds".
        flood.provide(*c).await.unwrap();
    }
    let (mut kept, mut refused) = (0, 0);
    tokio::time::timeout(Duration::from_secs(30), async {
        while kept + refused < made_up.len() {
            if let cairn_p2p::Event::ProviderRecord {
                provider, stored, ..
            } = told.next().await.unwrap()
                && provider == flood.peer_id()
            {
                if stored { kept += 1 } else { refused += 1 }
            }
        }
    })
    .await
    .expect("the relay hears every record");
    assert_eq!(
        (kept, refused),
        (CAP, 20),
        "the relay keeps {CAP} of the flood's records"
    );
    let mut held = 0;
    for c in &made_up {
        if !relay.node.local_providers(*c).await.unwrap().is_empty() {
            held += 1;
        }
    }
    assert_eq!(held, CAP);

    // An honest peer still publishes, and is found.
    let (store, root, _) = holding(1 << 20).await;
    let honest = node(store).await;
    // Reachable (a record with no address and no route to its peer is not handed out).
    honest
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    honest.dial(addr.clone()).await.unwrap();
    common::until_identified(&honest, relay.peer_id).await;
    honest.provide(root).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let cairn_p2p::Event::ProviderRecord {
                provider, stored, ..
            } = told.next().await.unwrap()
                && provider == honest.peer_id()
            {
                assert!(stored, "the honest peer's record is kept");
                break;
            }
        }
    })
    .await
    .expect("the relay hears the honest record");
    let asker = node(Arc::new(Memory::new())).await;
    asker.dial(addr).await.unwrap();
    common::until_identified(&asker, relay.peer_id).await;
    assert_eq!(
        asker.find_providers(root).await.unwrap(),
        vec![honest.peer_id()]
    );
    relay.shutdown().await;
}
