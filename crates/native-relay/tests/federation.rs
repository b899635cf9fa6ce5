//! Relays federate: each is given others as bootstrap peers, their DHT servers find each
//! other, provider records land on the k closest servers of the whole network (and outlive
//! the relay they were published through), a relay provides the roots pinned in its store,
//! and a bootstrap peer that is down is retried with backoff without holding anything up.
//! All real libp2p, in process, on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::store::Memory;
use cairn_p2p::node::Backoff;
use cairn_p2p::{Event, Node};
use cairn_relay::relay::{Config, Running};
use common::{data, fetch_all, holding, import, node, relay_with, until_cas, until_identified};
use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;

/// A loopback relay with these bootstrap peers (and quick retries).
fn config(bootstrap: &[&Running]) -> Config {
    Config {
        bootstrap: bootstrap.iter().map(|r| r.addrs[0].clone()).collect(),
        bootstrap_backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        ..Config::loopback()
    }
}

/// Waits (on the node's events) until every bootstrap peer of `node` is connected.
async fn until_federated(node: &Node) {
    let mut events = node.events();
    let wait = async {
        loop {
            let peers = node.bootstrap_peers().await.unwrap();
            if peers.iter().all(|p| p.connected) {
                return;
            }
            events.next().await.expect("the node is running");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: its bootstrap peers never all connected",
                node.peer_id()
            )
        });
}

async fn health(relay: &Running) -> serde_json::Value {
    let text = reqwest::get(format!("http://{}/health", relay.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_one_relay_finds_and_fetches_what_a_relay_two_hops_away_holds() {
    const LEN: usize = 3 << 20;
    let a = relay_with(Config::loopback()).await;
    let b = relay_with(config(&[&a])).await;
    // C holds a file, pinned, and knows only B.
    let dir = tempfile::tempdir().unwrap();
    let store = cairn_relay::store::Disk::open(dir.path()).await.unwrap();
    let content = data(LEN);
    let root = import(&store, &content).await;
    store.pin(&root).await.unwrap();
    let c = relay_with(Config {
        store: Some(store),
        ..config(&[&b])
    })
    .await;
    until_federated(&b.node).await;
    until_federated(&c.node).await;
    // B knows each serves the DHT once identify has told it.
    until_identified(&b.node, a.peer_id).await;
    until_identified(&b.node, c.peer_id).await;

    // B lists both as federated relays; C's bootstrap entry says it is connected.
    let h = health(&b).await;
    let relays: Vec<&str> = h["federation"]["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["peer_id"].as_str().unwrap())
        .collect();
    assert!(relays.contains(&a.peer_id.to_string().as_str()), "{h}");
    assert!(relays.contains(&c.peer_id.to_string().as_str()), "{h}");
    let h = health(&c).await;
    assert_eq!(h["federation"]["bootstrap"][0]["connected"], true, "{h}");
    assert_eq!(
        h["federation"]["bootstrap"][0]["peer_id"],
        b.peer_id.to_string(),
        "{h}"
    );

    // N knows only A, which C never dialed: the DHT, spanning all three, finds C.
    let n = node(Arc::new(Memory::new())).await;
    n.dial(a.addrs[0].clone()).await.unwrap();
    until_identified(&n, a.peer_id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let providers = loop {
        // C provides its pins at start and again once B connects; the record may still be
        // on its way to the k closest servers.
        let found = n.find_providers(root).await.unwrap();
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            break found;
        }
        c.node.events().next().await;
    };
    assert_eq!(providers, vec![c.peer_id], "C, found through A's DHT");
    until_cas(&n, c.peer_id).await;
    let (got, _) = fetch_all(&n, LEN, root).await;
    let bytes = common::read_all(&got, root).await;
    assert!(bytes == content, "the file, byte-identical");

    for r in [a, b, c] {
        r.shutdown().await;
    }
}

/// Waits (30 s at most, else fails saying `what`) until the node whose `events` these are
/// stores a provider record of `provider`.
async fn until_record(events: &mut cairn_p2p::Events, provider: libp2p::PeerId, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::ProviderRecord {
                provider: p,
                stored,
                ..
            } = events.next().await.unwrap()
                && p == provider
            {
                assert!(stored);
                break;
            }
        }
    })
    .await
    .expect(what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_record_outlives_the_relay_it_was_published_through() {
    const LEN: usize = 1 << 20;
    let a = relay_with(Config::loopback()).await;
    let b = relay_with(config(&[&a])).await;
    until_federated(&b.node).await;
    // A has B in its DHT table once identify told it B serves the DHT.
    until_identified(&a.node, b.peer_id).await;

    // P is reachable directly and publishes through A only.
    let (store, root, _) = holding(LEN).await;
    let p = node(store).await;
    p.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    p.dial(a.addrs[0].clone()).await.unwrap();
    until_identified(&p, a.peer_id).await;
    // Stored on the closest servers of the network: A, and B, which P learned of from A.
    let mut told = b.node.events();
    p.provide(root).await.expect("the record is stored");
    until_record(
        &mut told,
        p.peer_id(),
        "B gets P's record, though P published through A",
    )
    .await;
    let on_b = b.node.local_providers(root).await.unwrap();
    assert!(
        on_b.iter().any(|(peer, _)| *peer == p.peer_id()),
        "{on_b:?}"
    );

    a.shutdown().await;
    let q = node(Arc::new(Memory::new())).await;
    q.dial(b.addrs[0].clone()).await.unwrap();
    until_identified(&q, b.peer_id).await;
    let providers = q.find_providers(root).await.unwrap();
    assert_eq!(providers, vec![p.peer_id()], "found through B with A gone");
    until_cas(&q, p.peer_id()).await;
    fetch_all(&q, LEN, root).await;
    b.shutdown().await;
}

/// A root provided while the node knew no DHT peer (its relay was not up yet, say) reached
/// nobody; it is announced again when a bootstrap peer joins, not 12 hours later when
/// Kademlia republishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_provided_while_no_dht_peer_was_known_is_announced_when_a_bootstrap_peer_joins() {
    let a = relay_with(Config::loopback()).await;
    let (store, root, _) = holding(1024).await;
    let p = node(store).await;
    // Nobody to tell: the query ends at once, having stored the record nowhere else.
    let _ = p.provide(root).await;
    assert!(a.node.local_providers(root).await.unwrap().is_empty());
    let mut told = a.node.events();
    p.keep(vec![a.addrs[0].clone()], false).await.unwrap();
    until_record(&mut told, p.peer_id(), "A gets P's record once P joins it").await;
    let on_a = a.node.local_providers(root).await.unwrap();
    assert!(
        on_a.iter().any(|(peer, _)| *peer == p.peer_id()),
        "{on_a:?}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_that_is_down_is_retried_with_backoff_and_joins_when_it_comes_up() {
    // A's port and identity are chosen now; A starts later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = Keypair::generate_ed25519();
    let a_id = key.public().to_peer_id();
    let a_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}")
        .parse()
        .unwrap();
    // And one that never comes up (nothing listens on port 1).
    let never: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", libp2p::PeerId::random())
        .parse()
        .unwrap();
    let b = relay_with(Config {
        bootstrap: vec![a_addr.clone(), never.clone()],
        bootstrap_backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        ..Config::loopback()
    })
    .await;
    // B started without waiting for either; it keeps trying A.
    let mut events = b.node.events();
    let retry = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.next().await.unwrap() {
                Event::BootstrapUnreachable {
                    addr,
                    error,
                    retry_in,
                } if addr == a_addr => break (error, retry_in),
                _ => {}
            }
        }
    })
    .await
    .expect("B retries A");
    assert!(retry.1 <= Duration::from_millis(400), "capped: {retry:?}");
    assert!(!retry.0.is_empty());
    let status = b.node.bootstrap_peers().await.unwrap();
    let of_a = status.iter().find(|s| s.addr == a_addr).unwrap();
    assert!(!of_a.connected);
    assert!(of_a.last_error.is_some());
    let h = health(&b).await;
    let listed = h["federation"]["bootstrap"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{h}");
    assert!(
        listed
            .iter()
            .all(|e| e["connected"] == false && e["error"].is_string()),
        "both down, with why: {h}"
    );

    // A comes up where B looks for it.
    let a = cairn_relay::relay::start(
        key,
        Config {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
            ..Config::loopback()
        },
    )
    .await
    .unwrap();
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::BootstrapConnected { peer, .. } = events.next().await.unwrap()
                && peer == a_id
            {
                break;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "B joined A once it came up");
    // The one that never comes up is still tried, at the capped interval.
    let again = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.next().await.unwrap() {
                Event::BootstrapUnreachable { addr, retry_in, .. } if addr == never => {
                    break retry_in;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("B goes on trying the peer that is down");
    assert!(again <= Duration::from_millis(400), "capped: {again:?}");
    let status = b.node.bootstrap_peers().await.unwrap();
    assert!(status.iter().find(|s| s.addr == a_addr).unwrap().connected);
    let down = status.iter().find(|s| s.addr == never).unwrap();
    assert!(!down.connected && down.failures >= 2, "{down:?}");
    // `None` while a dial is under way (the cap is 400 ms, so one may have begun since).
    assert!(
        down.retry_in
            .is_none_or(|d| d <= Duration::from_millis(400)),
        "{down:?}"
    );

    a.shutdown().await;
    b.shutdown().await;
}

/// Waits (on `node`'s events) until `ok` holds for its relays' state.
async fn until_relays(
    node: &Node,
    what: &str,
    ok: impl Fn(&[cairn_p2p::node::BootstrapPeer]) -> bool,
) {
    let mut events = node.events();
    let wait = async {
        loop {
            if ok(&node.bootstrap_peers().await.unwrap()) {
                return;
            }
            events.next().await.expect("the node is running");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"));
}

/// Whether `addrs` has a circuit address through `relay`.
fn through(addrs: &[Multiaddr], relay: libp2p::PeerId) -> bool {
    addrs.iter().any(|a| {
        let s = a.to_string();
        s.contains(&format!("/p2p/{relay}/p2p-circuit"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_two_relays_stays_reachable_through_one_and_reserves_again_when_the_other_returns()
 {
    const LEN: usize = 1 << 20;
    let key_a = Keypair::generate_ed25519();
    let a = cairn_relay::relay::start(key_a.clone(), Config::loopback())
        .await
        .unwrap();
    let a_addr = a.addrs[0].clone();
    let b = relay_with(Config::loopback()).await;
    let (store, root, _) = holding(LEN).await;
    let n = common::native_node(
        store,
        cairn_p2p::node::Config {
            relays: vec![a_addr.clone(), b.addrs[0].clone()],
            bootstrap_backoff: Backoff {
                first: Duration::from_millis(100),
                max: Duration::from_millis(400),
            },
            ..Default::default()
        },
    )
    .await;
    until_relays(&n, "reservations on both relays", |ps| {
        ps.len() == 2 && ps.iter().all(|p| p.relay && p.reserved)
    })
    .await;
    let addrs = n.listen_addrs();
    assert!(
        through(&addrs, a.peer_id) && through(&addrs, b.peer_id),
        "{addrs:?}"
    );

    // A goes away: N says so, and is still reachable through B.
    let mut told = n.events();
    let a_id = a.peer_id;
    a.shutdown().await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::ReservationLost { addr, .. } = told.next().await.unwrap()
                && addr == a_addr
            {
                break;
            }
        }
    })
    .await
    .expect("N hears its reservation on A is gone");
    let addrs = n.listen_addrs();
    assert!(
        !through(&addrs, a_id) && through(&addrs, b.peer_id),
        "{addrs:?}"
    );
    let via_b = b.addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit)
        .with(libp2p::multiaddr::Protocol::P2p(n.peer_id()));
    let q = node(Arc::new(Memory::new())).await;
    assert_eq!(q.dial(via_b).await.unwrap(), n.peer_id());
    until_cas(&q, n.peer_id()).await;
    fetch_all(&q, LEN, root).await;

    // A comes back at the same address: N reserves on it again by itself.
    let a = cairn_relay::relay::start(
        key_a,
        Config {
            listen: vec![common::without_p2p(&a_addr)],
            ..Config::loopback()
        },
    )
    .await
    .unwrap();
    until_relays(&n, "a reservation on A again", |ps| {
        ps.iter().all(|p| p.reserved)
    })
    .await;
    assert!(through(&n.listen_addrs(), a.peer_id));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_relay_dies_goes_on_through_another_fetching_only_what_is_missing() {
    use cairn_core::source::{Chain, Context, RaceConfig};
    const LEN: usize = 32 << 20;
    let fast = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    let r1 = relay_with(Config {
        shutdown_grace: Duration::from_millis(100),
        ..config(&[])
    })
    .await;
    let r2 = relay_with(config(&[&r1])).await;
    until_federated(&r2.node).await;
    let (r1_addr, r2_addr) = (r1.addrs[0].clone(), r2.addrs[0].clone());

    // A holds the file, reachable only through its reservations on R1 and R2.
    let (store, root, content) = holding(LEN).await;
    let a = common::native_node(
        store,
        cairn_p2p::node::Config {
            relays: vec![r1_addr.clone(), r2_addr.clone()],
            bootstrap_backoff: fast,
            ..Default::default()
        },
    )
    .await;
    until_relays(&a, "A's reservations on both relays", |ps| {
        ps.iter().all(|p| p.reserved)
    })
    .await;
    a.provide(root).await.unwrap();
    // Every block A is asked for, counted.
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut a_told = a.events();
    let count = asked.clone();
    tokio::spawn(async move {
        while let Some(e) = a_told.next().await {
            if let Event::Answering { kind: "get", .. } = e {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    // B knows both relays and reaches A through R1's circuit.
    let b = common::native_node(
        Arc::new(Memory::new()),
        cairn_p2p::node::Config {
            bootstrap: vec![r1_addr.clone(), r2_addr.clone()],
            bootstrap_backoff: fast,
            ..Default::default()
        },
    )
    .await;
    until_federated(&b).await;
    let via_r1 = r1_addr
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit)
        .with(libp2p::multiaddr::Protocol::P2p(a.peer_id()));
    b.dial(via_r1).await.unwrap();
    until_cas(&b, a.peer_id()).await;

    // R1 stops a quarter of the way through.
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let stopper = tokio::spawn(async move {
        if killed.await.is_ok() {
            r1.shutdown().await;
        }
    });
    let kill = std::sync::Mutex::new(Some(kill));
    let got = Arc::new(Memory::new());
    let race = cairn_p2p::sources::cas_source(
        &b,
        Some(root),
        RaceConfig {
            per_peer_timeout: Some(Duration::from_secs(10)),
            max_parallel: 4,
            // When the peers at hand fail, the DHT is asked again: A, at its R2 circuit.
            look_up: true,
            ..Default::default()
        },
    );
    let chain = Chain::new().local(got.clone()).source(race, None);
    let ctx = Context::new().with_timeout(Duration::from_secs(120));
    let report = cairn_core::dag::fetch(
        &chain,
        &*got,
        root,
        cairn_core::dag::Options {
            window: 16,
            ..Default::default()
        },
        &ctx,
        |p| {
            if p.blocks_done >= p.blocks_known.max(1) / 4
                && let Some(k) = kill.lock().unwrap().take()
            {
                let _ = k.send(());
            }
        },
    )
    .await
    .expect("the transfer completes through R2");
    stopper.await.unwrap();
    assert!(
        common::read_all(&got, root).await == content,
        "the file, byte-identical"
    );
    let info = b.peer(&a.peer_id()).expect("connected to A");
    let addr = info.addr.map(|a| a.to_string()).unwrap_or_default();
    assert!(
        addr.contains(&r2.peer_id.to_string()),
        "now through R2: {addr}"
    );
    let blocks = report.progress.blocks_done as usize;
    let gets = asked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{blocks} blocks; A answered {gets} gets");
    // Only what was in flight when R1 went (the window) is asked for twice.
    assert!(
        gets <= blocks + 16,
        "A was asked for {gets} blocks of a {blocks}-block file"
    );
    r2.shutdown().await;
}
