//! The one test suite every [`BlockStore`] backend runs.
//!
//! Call [`run`] with a function that makes a fresh, empty store (and [`run_quota`] for
//! backends with a byte quota) from a test of the backend's crate: natively in `#[tokio::test]`,
//! in the browser in `#[wasm_bindgen_test]`. A failing case panics with its name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;

use super::{BlockStore, Error};
use crate::block::Block;
use crate::cid::{Codec, HashAlg};

fn block(i: u32, len: usize) -> Block {
    let mut data = vec![0u8; len];
    for (j, b) in data.iter_mut().enumerate() {
        *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
    }
    data.extend_from_slice(&i.to_le_bytes());
    Block::from_data(Codec::Raw, HashAlg::Sha2_256, data).unwrap()
}

/// Runs every case against fresh stores made by `make`.
pub async fn run<S, F, Fut>(make: F)
where
    S: BlockStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    put_get_has(make().await).await;
    missing_is_none(make().await).await;
    duplicate_put_counts_once(make().await).await;
    put_many_and_stat(make().await).await;
    delete_updates_stat(make().await).await;
    list_pages_in_order(make().await).await;
    big_and_empty_blocks(make().await).await;
    blake3_blocks(make().await).await;
}

/// Runs the quota cases: `make(quota)` makes a fresh store with that byte quota.
pub async fn run_quota<S, F, Fut>(make: F)
where
    S: BlockStore,
    F: Fn(u64) -> Fut,
    Fut: Future<Output = S>,
{
    let store = make(10_000).await;
    let blocks: Vec<Block> = (0..3).map(|i| block(i, 3_000)).collect();
    assert_eq!(store.put_many(blocks).await.unwrap(), 3, "quota: fits");
    let over: Vec<Block> = (10..13).map(|i| block(i, 1_000)).collect();
    let err = store.put_many(over.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::Full { .. }),
        "quota: over gives Full, got {err}"
    );
    assert!(
        err.to_string().contains("full"),
        "quota: message says full: {err}"
    );
    for b in &over {
        assert!(
            !store.has(b.cid()).await.unwrap(),
            "quota: a refused batch stores nothing"
        );
    }
    let st = store.stat().await.unwrap();
    assert_eq!(
        (st.blocks, st.quota),
        (3, Some(10_000)),
        "quota: stat after refusal"
    );
    // Re-putting what is held needs no room.
    assert!(
        !store.put(block(0, 3_000)).await.unwrap(),
        "quota: duplicate"
    );
    assert!(store.delete(block(0, 3_000).cid()).await.unwrap());
    assert!(
        store.put(over[0].clone()).await.unwrap(),
        "quota: room after delete"
    );
}

async fn put_get_has<S: BlockStore>(s: S) {
    let b = block(1, 100);
    assert!(
        !s.has(b.cid()).await.unwrap(),
        "put_get_has: empty store has nothing"
    );
    assert!(
        s.put(b.clone()).await.unwrap(),
        "put_get_has: first put is new"
    );
    assert!(s.has(b.cid()).await.unwrap(), "put_get_has: has after put");
    let got = s
        .get(b.cid())
        .await
        .unwrap()
        .expect("put_get_has: get after put");
    assert_eq!(got, b, "put_get_has: same bytes back");
}

async fn missing_is_none<S: BlockStore>(s: S) {
    let b = block(2, 10);
    assert!(
        s.get(b.cid()).await.unwrap().is_none(),
        "missing: get is None"
    );
    assert!(
        !s.delete(b.cid()).await.unwrap(),
        "missing: delete is false"
    );
}

async fn duplicate_put_counts_once<S: BlockStore>(s: S) {
    let b = block(3, 1000);
    assert!(s.put(b.clone()).await.unwrap());
    assert!(
        !s.put(b.clone()).await.unwrap(),
        "duplicate: second put not new"
    );
    assert_eq!(s.put_many(vec![b.clone(), b.clone()]).await.unwrap(), 0);
    let st = s.stat().await.unwrap();
    assert_eq!(
        (st.blocks, st.bytes),
        (1, b.len() as u64),
        "duplicate: stat"
    );
}

async fn put_many_and_stat<S: BlockStore>(s: S) {
    let blocks: Vec<Block> = (0..50).map(|i| block(i, 64 + i as usize)).collect();
    let bytes: u64 = blocks.iter().map(|b| b.len() as u64).sum();
    assert_eq!(
        s.put_many(blocks.clone()).await.unwrap(),
        50,
        "put_many: all new"
    );
    let st = s.stat().await.unwrap();
    assert_eq!((st.blocks, st.bytes), (50, bytes), "put_many: stat");
    for b in &blocks {
        assert_eq!(
            s.get(b.cid()).await.unwrap().as_ref(),
            Some(b),
            "put_many: get"
        );
    }
    assert_eq!(
        s.put_many(Vec::new()).await.unwrap(),
        0,
        "put_many: empty batch"
    );
}

async fn delete_updates_stat<S: BlockStore>(s: S) {
    let a = block(4, 500);
    let b = block(5, 700);
    s.put_many(vec![a.clone(), b.clone()]).await.unwrap();
    assert!(s.delete(a.cid()).await.unwrap(), "delete: held");
    assert!(!s.has(a.cid()).await.unwrap(), "delete: gone");
    assert!(s.has(b.cid()).await.unwrap(), "delete: other kept");
    let st = s.stat().await.unwrap();
    assert_eq!((st.blocks, st.bytes), (1, b.len() as u64), "delete: stat");
}

async fn list_pages_in_order<S: BlockStore>(s: S) {
    let blocks: Vec<Block> = (0..25).map(|i| block(100 + i, 32)).collect();
    s.put_many(blocks.clone()).await.unwrap();
    let mut want: Vec<_> = blocks.iter().map(|b| b.cid().to_bytes()).collect();
    want.sort();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(after.as_ref(), 7).await.unwrap();
        assert!(page.len() <= 7, "list: page over limit");
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        got.extend(page.iter().map(|c| c.to_bytes()));
        assert!(got.len() <= 25, "list: pages repeat");
    }
    assert_eq!(got, want, "list: every CID once, in CID-byte order");
    assert!(s.list(None, 0).await.unwrap().is_empty(), "list: limit 0");
}

async fn big_and_empty_blocks<S: BlockStore>(s: S) {
    let big = Block::from_data(
        Codec::Raw,
        HashAlg::Sha2_256,
        vec![7u8; crate::MAX_BLOCK_SIZE],
    )
    .unwrap();
    let empty = Block::from_data(Codec::Raw, HashAlg::Sha2_256, Vec::new()).unwrap();
    s.put_many(vec![big.clone(), empty.clone()]).await.unwrap();
    assert_eq!(s.get(big.cid()).await.unwrap().unwrap(), big, "big block");
    assert_eq!(
        s.get(empty.cid()).await.unwrap().unwrap(),
        empty,
        "empty block"
    );
}

async fn blake3_blocks<S: BlockStore>(s: S) {
    let b = Block::from_data(Codec::DagPb, HashAlg::Blake3, vec![1, 2, 3]).unwrap();
    s.put(b.clone()).await.unwrap();
    assert_eq!(
        s.get(b.cid()).await.unwrap().unwrap(),
        b,
        "blake3 dag-pb block"
    );
}
