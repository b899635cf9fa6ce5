//! The driver on libp2p's in-memory transport: no sockets, no network.

use std::time::Duration;

use cairn_core::block::Block;
use cairn_core::cid::{Codec, HashAlg};
use cairn_core::store::{BlockStore, Memory};
use futures::StreamExt;
use libp2p::core::transport::MemoryTransport;
use libp2p::identity::Keypair;

use super::*;

#[derive(Clone)]
struct Tokio;

impl Spawner for Tokio {
    fn spawn(&self, task: cairn_core::BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
}

fn memory_node(store: Memory, config: Config) -> Node {
    Builder::new(Keypair::generate_ed25519())
        .config(config)
        .build(store, Tokio, |upgrader, relay| {
            use libp2p::core::Transport as _;
            let memory = MemoryTransport::default().or_transport(relay);
            upgrader.authenticate(memory)
        })
        .unwrap()
}

async fn listening(store: Memory) -> (Node, Multiaddr) {
    let node = memory_node(store, Config::default());
    let addr = node.listen("/memory/0".parse().unwrap()).await.unwrap();
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(node.peer_id()));
    (node, addr)
}

fn block(i: u32) -> Block {
    Block::from_data(Codec::Raw, HashAlg::Sha2_256, i.to_le_bytes().repeat(64)).unwrap()
}

/// Waits (bounded) for the first event `pick` accepts.
async fn next_event<T>(events: &mut Events, pick: impl Fn(&Event) -> Option<T>) -> T {
    let wait = async {
        while let Some(e) = events.next().await {
            if let Some(t) = pick(&e) {
                return t;
            }
        }
        panic!("the node stopped before the event came");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("no such event within 20 s")
}

#[tokio::test]
async fn peers_meet_exchange_caps_and_serve_blocks() {
    let held = Memory::new();
    held.put_many((0..8).map(block).collect()).await.unwrap();
    let (server, addr) = listening(held).await;
    let client = memory_node(Memory::new(), Config::default());
    let mut events = client.events();
    let peer = client.dial(addr).await.unwrap();
    assert_eq!(peer, server.peer_id());
    next_event(&mut events, |e| {
        matches!(e, Event::Identified { peer: p } if *p == peer).then_some(())
    })
    .await;
    next_event(&mut events, |e| {
        matches!(e, Event::CapsReceived { peer: p } if *p == peer).then_some(())
    })
    .await;
    let info = client.peer(&peer).unwrap();
    assert!(info.cas && info.askable() && !info.relayed, "{info:?}");
    assert_eq!(client.askable_peers(), vec![peer]);
    // The index it sent says what it holds.
    let ix = client
        .reputations()
        .get(&peer)
        .index
        .expect("a content index");
    assert!(ix.may_contain(block(3).cid()));
    // Blocks come back; absent ones are not found.
    let got = client.get(peer, block(3).cid()).await.unwrap();
    assert_eq!(&got[..], &block(3).data()[..]);
    assert_eq!(
        client.get(peer, block(99).cid()).await,
        Err(PeerError::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_kept_for_thousands_of_peers_that_came_and_went() {
    let (hub, addr) = listening(Memory::new()).await;
    let mut events = hub.events();
    const PEERS: usize = 5_000;
    const AT_ONCE: usize = 50;
    for wave in 0..PEERS / AT_ONCE {
        let visitors: Vec<Node> = (0..AT_ONCE)
            .map(|_| memory_node(Memory::new(), Config::default()))
            .collect();
        let dials = visitors.iter().map(|v| v.dial(addr.clone()));
        for d in futures::future::join_all(dials).await {
            d.unwrap();
        }
        // Each visitor is known while connected…
        for _ in 0..AT_ONCE {
            next_event(&mut events, |e| {
                matches!(e, Event::Connected { .. }).then_some(())
            })
            .await;
        }
        assert_eq!(hub.reputations().len(), AT_ONCE, "wave {wave}");
        for v in &visitors {
            v.stop().await;
        }
        drop(visitors);
        // …and forgotten once gone.
        for _ in 0..AT_ONCE {
            next_event(&mut events, |e| {
                matches!(e, Event::Disconnected { .. }).then_some(())
            })
            .await;
        }
    }
    assert_eq!(hub.peers().len(), 0);
    assert_eq!(hub.reputations().len(), 0, "a reputation outlived its peer");
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged() {
    let config = Config {
        event_capacity: 4,
        ..Config::default()
    };
    let node = memory_node(Memory::new(), config);
    let mut events = node.events();
    for _ in 0..8 {
        node.listen("/memory/0".parse().unwrap()).await.unwrap();
    }
    let first = events.next().await.unwrap();
    assert!(
        matches!(first, Event::Lagged { missed } if missed >= 4),
        "{first:?}"
    );
    // It goes on from the oldest it still has.
    assert!(matches!(events.next().await, Some(Event::Listening { .. })));
}

#[tokio::test]
async fn stopping_ends_the_events_and_refuses_new_work() {
    let node = memory_node(Memory::new(), Config::default());
    let mut events = node.events();
    node.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "events end when the driver does");
    assert!(matches!(
        node.listen("/memory/0".parse().unwrap()).await,
        Err(Error::Stopped)
    ));
    assert!(node.events().next().await.is_none());
}

#[tokio::test]
async fn waiting_for_a_peer_ends_on_its_event_or_when_hopeless() {
    let (server, addr) = listening(Memory::new()).await;
    let client = memory_node(Memory::new(), Config::default());
    let peer = [server.peer_id()];
    let (found, dialed) = futures::join!(
        client.wait_for(&peer, Duration::from_secs(20), |i| i.cas),
        client.dial(addr)
    );
    dialed.unwrap();
    assert_eq!(found.map(|(p, _)| p), Some(peer[0]));
    // Identified, and never direct: no point waiting out the hour.
    let none = tokio::time::timeout(
        Duration::from_secs(20),
        client.wait_for(&peer, Duration::from_secs(3600), |i| i.direct),
    )
    .await
    .expect("gave up as soon as waiting could not help");
    assert!(none.is_none());
}

/// A node in the private network of `key` (or the open one), listening on memory.
/// Handshakes that cannot finish (an open node and a private one) fail this soon.
const SHORT_HANDSHAKE: Duration = Duration::from_secs(2);

async fn private_listening(
    store: Memory,
    key: Option<&crate::pnet::SwarmKey>,
) -> (Node, Multiaddr) {
    let node = memory_node(
        store,
        Config {
            swarm_key: key.cloned(),
            handshake_timeout: SHORT_HANDSHAKE,
            ..Config::default()
        },
    );
    let addr = node.listen("/memory/0".parse().unwrap()).await.unwrap();
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(node.peer_id()));
    (node, addr)
}

#[tokio::test]
async fn only_members_of_a_private_network_connect() {
    use crate::pnet::SwarmKey;
    let ours = SwarmKey::generate().unwrap();
    let theirs = SwarmKey::generate().unwrap();
    let held = Memory::new();
    held.put_many((0..4).map(block).collect()).await.unwrap();
    let (server, addr) = private_listening(held, Some(&ours)).await;

    // A member connects and fetches.
    let member = memory_node(
        Memory::new(),
        Config {
            swarm_key: Some(ours.clone()),
            handshake_timeout: SHORT_HANDSHAKE,
            ..Config::default()
        },
    );
    assert_eq!(member.dial(addr.clone()).await.unwrap(), server.peer_id());
    let got = member.get(server.peer_id(), block(2).cid()).await.unwrap();
    assert_eq!(&got[..], &block(2).data()[..]);

    // Another network's node and an open-network node are refused, with an error that
    // says why; nothing is connected and the server goes on serving its member.
    for key in [Some(theirs), None] {
        let outsider = memory_node(
            Memory::new(),
            Config {
                swarm_key: key.clone(),
                handshake_timeout: SHORT_HANDSHAKE,
                ..Config::default()
            },
        );
        let err = outsider.dial(addr.clone()).await.unwrap_err().to_string();
        if key.is_some() {
            assert!(err.contains("private network"), "{err}");
        } else {
            // An open node cannot be sure, but says what it may mean (the handshake failed
            // on the private node's nonce, or waited for an answer until it timed out).
            assert!(err.contains("may be in a private network"), "{err}");
        }
        assert!(outsider.peer(&server.peer_id()).is_none());
        assert!(
            outsider
                .get(server.peer_id(), block(1).cid())
                .await
                .is_err()
        );
    }
    // And the other way: the member cannot reach an open node, and says why.
    let (open, open_addr) = private_listening(Memory::new(), None).await;
    let err = member.dial(open_addr).await.unwrap_err().to_string();
    assert!(err.contains("private network"), "{err}");
    assert!(member.peer(&open.peer_id()).is_none());
    let got = member.get(server.peer_id(), block(3).cid()).await.unwrap();
    assert_eq!(&got[..], &block(3).data()[..]);
}

#[tokio::test]
async fn a_serve_rate_caps_what_a_node_sends() {
    let rate = cairn_core::transfer::Rate::new(1 << 20).unwrap();
    let held = Memory::new();
    let blocks: Vec<Block> = (0..12u8)
        .map(|i| Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![i; 256 * 1024]).unwrap())
        .collect();
    held.put_many(blocks.clone()).await.unwrap();
    let server = memory_node(
        held,
        Config {
            budget: crate::budget::Budget::new(crate::budget::Caps {
                serve_rate: Some(rate),
                ..Default::default()
            }),
            ..Config::default()
        },
    );
    let addr = server.listen("/memory/0".parse().unwrap()).await.unwrap();
    let client = memory_node(Memory::new(), Config::default());
    client
        .dial(addr.with(libp2p::multiaddr::Protocol::P2p(server.peer_id())))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got =
        futures::future::join_all(blocks.iter().map(|b| client.get(server.peer_id(), b.cid())))
            .await;
    let took = started.elapsed();
    for (g, b) in got.into_iter().zip(&blocks) {
        assert_eq!(&g.unwrap()[..], &b.data()[..]);
    }
    // 3 MiB at 1 MiB/s, less the half second a full bucket lends: 2.5 s at least.
    assert!(
        took >= Duration::from_millis(2400),
        "3 MiB served in {took:?}"
    );
}
