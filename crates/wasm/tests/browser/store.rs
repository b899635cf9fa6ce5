//! The stores and the core in the browser: the shared store suite on memory and
//! IndexedDB, the importer's CIDs, timeouts on the browser's timers.

use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, ChainError, ContentSource, Context, SourceError, SourceKind};
use cairn_core::store::{Memory, Null};
use cairn_core::unixfs::{self, Profile};
use wasm_bindgen_test::*;

use crate::support::fresh_name;

#[wasm_bindgen_test]
async fn memory_store_passes_the_suite_in_the_browser() {
    cairn_core::store::suite::run(|| async { Memory::new() }).await;
    cairn_core::store::suite::run_quota(|q| async move { Memory::with_quota(q) }).await;
}

#[wasm_bindgen_test]
async fn webcrypto_hashes_leaves_as_wasm_does_and_the_add_uses_it() {
    use cairn_core::unixfs::LeafHasher;
    use cairn_wasm::webcrypto::WebCrypto;
    let hasher = WebCrypto::new();
    assert!(hasher.available(), "a page on localhost has crypto.subtle");
    let chunks = [
        bytes::Bytes::from(
            (0..262_144u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        bytes::Bytes::from_static(b"abc"),
        bytes::Bytes::new(),
    ];
    let digests = hasher
        .digests(HashAlg::Sha2_256, &chunks)
        .await
        .unwrap()
        .expect("SHA-256 is WebCrypto's");
    assert_eq!(digests.len(), chunks.len());
    for (chunk, digest) in chunks.iter().zip(&digests) {
        assert_eq!(&digest[..], HashAlg::Sha2_256.digest(chunk).digest());
    }
    assert!(
        hasher
            .digests(HashAlg::Blake3, &chunks)
            .await
            .unwrap()
            .is_none(),
        "blake3 is hashed in wasm"
    );
    // What peers send: the right bytes pass, tampered ones do not, blake3 is checked in wasm.
    use cairn_core::source::Verify;
    for alg in [HashAlg::Sha2_256, HashAlg::Blake3] {
        let good = cairn_core::block::Block::from_data(
            cairn_core::cid::Codec::Raw,
            alg,
            chunks[0].clone(),
        )
        .unwrap();
        let before = cairn_core::cid::hashes();
        let got = hasher.verify(*good.cid(), chunks[0].clone()).await.unwrap();
        assert_eq!(got, good);
        assert_eq!(cairn_core::cid::hashes() - before, 1, "hashed once ({alg})");
        let mut tampered = chunks[0].to_vec();
        tampered[1000] ^= 1;
        let e = hasher
            .verify(*good.cid(), tampered.into())
            .await
            .unwrap_err();
        assert!(
            matches!(e, cairn_core::block::Error::HashMismatch { .. }),
            "{e}"
        );
    }
    // An import through it: the same root as hashed in wasm, over several batches.
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut op = cairn_core::live::Live::global().operation();
    let theirs = unixfs::import_hashing(
        &Null::new(),
        &data[..],
        unixfs::Importer::new(Profile::DEFAULT, HashAlg::Sha2_256),
        &hasher,
        |_| {},
        &mut op,
    )
    .await
    .unwrap();
    op.finish();
    let ours = unixfs::import(
        &Null::new(),
        &data[..],
        Profile::DEFAULT,
        HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(theirs, ours);
}

#[wasm_bindgen_test]
async fn importer_gives_the_same_cids_in_the_browser() {
    // Same as natively and in Helia (see tests/tests/unixfs_parity.rs).
    let empty = unixfs::import(
        &Null::new(),
        &b""[..],
        Profile::DEFAULT,
        HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        empty.root.to_string(),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let a = unixfs::import(
        &Null::new(),
        &data[..],
        Profile::DEFAULT,
        HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap();
    let b = unixfs::import(
        &Null::new(),
        &data[..],
        Profile::DEFAULT,
        HashAlg::Blake3,
        |_| {},
    )
    .await
    .unwrap();
    assert!(a.root.to_string().starts_with("bafybei"));
    assert_ne!(a.root, b.root);
}

/// A source that never answers.
struct Hang;
impl ContentSource for Hang {
    fn kind(&self) -> SourceKind {
        SourceKind::Gateway
    }
    fn retrieve(
        &self,
        _: &cairn_core::Cid,
        _: &Context,
    ) -> impl std::future::Future<Output = Result<cairn_core::Block, SourceError>> {
        std::future::pending()
    }
}

#[wasm_bindgen_test]
async fn timeouts_work_on_browser_timers() {
    let cid = cairn_core::cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"x");
    let chain = Chain::new().source(Hang, Some(Duration::from_millis(30)));
    let err = chain
        .retrieve_reported(&cid, &Context::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::NotFound { .. }), "{err}");
    assert_eq!(
        err.attempts()[0].error,
        SourceError::Timeout(Duration::from_millis(30))
    );
}

#[wasm_bindgen_test]
async fn indexeddb_store_passes_the_suite() {
    use cairn_wasm::idb::IdbStore;
    cairn_core::store::suite::run(|| async {
        IdbStore::open(&fresh_name("suite"), None).await.unwrap()
    })
    .await;
    cairn_core::store::suite::run_quota(|q| async move {
        IdbStore::open(&fresh_name("quota"), Some(q)).await.unwrap()
    })
    .await;
}

#[wasm_bindgen_test]
async fn indexeddb_store_keeps_blocks_after_it_is_closed_and_reopened() {
    use cairn_core::store::BlockStore;
    use cairn_wasm::idb::IdbStore;
    let name = fresh_name("reopen");
    let blocks: Vec<cairn_core::Block> = (0..20u32)
        .map(|i| {
            cairn_core::Block::from_data(
                cairn_core::Codec::Raw,
                HashAlg::Sha2_256,
                vec![i as u8; 10_000 + i as usize],
            )
            .unwrap()
        })
        .collect();
    let store = IdbStore::open(&name, None).await.unwrap();
    assert_eq!(store.put_many(blocks.clone()).await.unwrap(), 20);
    drop(store);
    let again = IdbStore::open(&name, None).await.unwrap();
    let st = again.stat().await.unwrap();
    assert_eq!(st.blocks, 20);
    assert_eq!(st.bytes, blocks.iter().map(|b| b.len() as u64).sum::<u64>());
    for b in &blocks {
        assert_eq!(again.get(b.cid()).await.unwrap().as_ref(), Some(b));
    }
    again.destroy().await.unwrap();
    let fresh = IdbStore::open(&name, None).await.unwrap();
    assert_eq!(
        fresh.stat().await.unwrap().blocks,
        0,
        "destroy removed it all"
    );
    fresh.destroy().await.unwrap();
}

/// "No data lost to concurrency" in the browser: 10 rounds of concurrent adds of files that
/// share blocks over IndexedDB, one failing at a random point, beside an eviction of
/// everything unpinned (`cairn_core::store::overlap`). Every completed add's file is whole
/// afterwards; a failed one leaves nothing only it needed.
#[wasm_bindgen_test]
async fn concurrent_adds_with_failures_lose_no_completed_file_in_indexeddb() {
    use cairn_wasm::idb::IdbStore;
    let store = IdbStore::open(&fresh_name("overlap"), None).await.unwrap();
    let mut x = (js_sys::Math::random() * 1e15) as u64 | 1;
    web_sys::console::log_1(&format!("overlap rounds from seed {x}").into());
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let shared: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut completed, mut failed, mut evicted) = (0, 0, 0);
    for round in 0..10 {
        let outcome = cairn_core::store::overlap::round(&store, &shared, &mut rand).await;
        if let Err(e) = outcome.check(&store).await {
            panic!("round {round}: {e}");
        }
        completed += outcome.completed.len();
        failed += outcome.failed.len();
        evicted += outcome.evicted;
    }
    web_sys::console::log_1(
        &format!("10 rounds: {completed} completed whole, {failed} failed cleanly, {evicted} blocks evicted").into(),
    );
    assert_eq!(completed + failed, 30);
    store.destroy().await.unwrap();
}
