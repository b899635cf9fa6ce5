//! Stopping a relay: answers in flight finish within the grace period; nobody new gets in.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::store::{BlockStore, Memory};
use cairn_p2p::Event;
use common::{node, relay_with};
use futures::StreamExt;

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
    let mut events = relay.node.events();

    // 7 MiB asked for, and the relay told to stop while it reads and sends them.
    let asking = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(relay_id, &cairn_p2p::cas::Request::Get { cids })
                .await
        })
    };
    // Stopped once the relay is answering (a fixed sleep lost the race on a loaded machine:
    // the request had not arrived yet).
    let answering = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.next().await {
            if matches!(e, Event::Answering { kind: "get", .. }) {
                return;
            }
        }
    })
    .await;
    assert!(answering.is_ok(), "the relay never answered the request");
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
