//! What peers learn of each other and how they are asked: a race whose losers' streams are
//! reset, the content index that comes with `caps` and grows with announcements, and
//! announcements through a relay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::{BlockStore, Memory};
use cairn_p2p::sources::cas_source;
use cairn_p2p::streams::{IncomingStreams, Stream};
use cairn_p2p::{Event, Node};
use common::{data, holding, node, relay, until_cas};
use futures::StreamExt;
use libp2p::Multiaddr;

/// A peer that speaks `/cas` through hand-driven streams: the test decides what each
/// request gets. Returns its node (for its id and address) and its incoming streams.
async fn hand_driven_peer() -> (Node, Multiaddr, IncomingStreams) {
    let config = cairn_p2p::node::Config {
        cas: cairn_p2p::cas::Config {
            serve: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let node = common::native_node(cairn_core::store::Null::new(), config).await;
    let incoming = node.streams().accept(cairn_p2p::cas::PROTOCOL, 16).unwrap();
    let addr = node
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    (node, addr, incoming)
}

/// The next `get` a hand-driven peer receives, with its stream; the `caps` requests peers
/// send on connecting are answered on the way (without a content index).
async fn next_get(incoming: &mut IncomingStreams) -> (Stream, cairn_p2p::cas::Request) {
    use cairn_p2p::{cas, framing};
    use futures::AsyncWriteExt;
    loop {
        let (_, mut s) = incoming.next().await.unwrap();
        let body = framing::read_frame(&mut s, cas::Limits::default().max_request)
            .await
            .unwrap();
        match cas::decode_request(&body).unwrap() {
            cas::Request::Caps {} => {
                let caps = cas::Response::Caps(Default::default());
                let _ = framing::write_frame(&mut s, &cas::encode(&caps)).await;
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
        cairn_p2p::framing::write_frame(&mut s, &cairn_p2p::cas::encode(&resp))
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
        .source(
            cas_source(&client, None, RaceConfig::default()),
            Some(Duration::from_secs(10)),
        )
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
    let heard = b.events().filter_map(|e| async move {
        match e {
            Event::Announcement(a) => Some(a),
            _ => None,
        }
    });
    let mut heard = std::pin::pin!(heard);
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
    let (store_a, root, _) = holding(1 << 20).await;
    let a = node(store_a.clone()).await;
    let addr = a
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let b = node(Arc::new(Memory::new())).await;
    let mut events = b.events();
    b.dial(addr).await.unwrap();
    let peer = a.peer_id();
    let got_caps = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.next().await {
            if matches!(e, Event::CapsReceived { peer: p } if p == peer) {
                return;
            }
        }
    })
    .await;
    assert!(got_caps.is_ok(), "B asked A for caps");
    let reps = b.reputations();
    let index = reps.get(&peer).index.expect("B kept A's content index");
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

    // GossipSub learns who listens within a heartbeat or two: announce once a second
    // until B hears it (bounded); B notes it in A's index before telling its subscribers.
    store_a.put(later.clone()).await.unwrap();
    let mut heard = false;
    for _ in 0..20 {
        let _ = a.announce(*later.cid(), 11, Duration::from_secs(60)).await;
        let wait = async {
            while let Some(e) = events.next().await {
                if matches!(e, Event::Announcement(ref x) if x.root == *later.cid()) {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "B never heard A's announcement");
    assert!(
        reps.get(&peer)
            .index
            .is_some_and(|ix| ix.may_contain(later.cid())),
        "A's announcement added the new root to the index B keeps for A"
    );
}
