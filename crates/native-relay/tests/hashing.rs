//! Every block is hashed exactly once on its way in (`cairn_core::cid::hashes` counts every
//! hash this process computes): an import hashes each block it makes once; a fetch from a
//! peer over `/cas` hashes each block it receives once (the peer source verifies; the chain,
//! the DAG walk and the store do not hash again); reading back what is stored hashes
//! nothing more. One test, its phases in order, so that nothing else hashes meanwhile.

mod common;

use std::sync::Arc;

use cairn_core::cid::hashes;
use cairn_core::store::{BlockStore, Memory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_is_hashed_exactly_once_on_its_way_in() {
    let content = common::data(3 * 1024 * 1024 + 1234);
    let held = Arc::new(Memory::new());
    let before = hashes();
    let root = common::import(&*held, &content).await;
    let blocks = held.stat().await.unwrap().blocks;
    assert_eq!(
        hashes() - before,
        blocks,
        "the import hashes each of its {blocks} blocks once"
    );

    let a = common::node(held).await;
    let b = common::node(Arc::new(Memory::new())).await;
    let addr = a
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    b.dial(addr.with_p2p(a.peer_id()).unwrap()).await.unwrap();
    common::until_cas(&b, a.peer_id()).await;

    // `fetch_all` walks the DAG into a fresh store over `/cas`, then exports the file from it.
    let before = hashes();
    let (store, report) = common::fetch_all(&b, content.len(), root).await;
    assert_eq!(report.progress.blocks_done, blocks);
    assert_eq!(store.stat().await.unwrap().blocks, blocks);
    assert_eq!(
        hashes() - before,
        blocks,
        "a fetch hashes each of its {blocks} blocks once, and reading them back none"
    );
}
