//! cairn-core in a real browser (headless Chromium): the shared store suite, the importer's
//! CIDs, timeouts on the browser's timers, and the JS-facing node.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, ChainError, ContentSource, Context, SourceError, SourceKind};
use cairn_core::store::{Memory, Null};
use cairn_core::unixfs::{self, Profile};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn memory_store_passes_the_suite_in_the_browser() {
    cairn_core::store::suite::run(|| async { Memory::new() }).await;
    cairn_core::store::suite::run_quota(|q| async move { Memory::with_quota(q) }).await;
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
async fn the_js_node_adds_and_cats() {
    let node = cairn_wasm::Node::new();
    let data = js_sys::Uint8Array::from(&b"hello from the browser"[..]);
    let cid = node.add(data, None, None).await.unwrap();
    let back = node.cat(cid.clone()).await.unwrap();
    assert_eq!(back.to_vec(), b"hello from the browser");
    let err = node
        .add(
            js_sys::Uint8Array::new_with_length(1),
            Some("nope".into()),
            None,
        )
        .await
        .unwrap_err();
    let msg = js_sys::Error::from(err).message();
    assert!(String::from(msg).contains("unknown profile"));
    assert!(node.cat("garbage".into()).await.is_err());
}
