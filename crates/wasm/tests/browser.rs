//! cairn-core in a real browser (headless Chromium): the shared store suite, the importer's
//! CIDs, timeouts on the browser's timers, and the JS-facing node.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, ChainError, ContentSource, Context, SourceError, SourceKind};
use cairn_core::store::{Memory, Null};
use cairn_core::unixfs::{self, Profile};
use wasm_bindgen::JsValue;
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

/// A database name no other test (or earlier run in the same profile) uses.
fn fresh_name(what: &str) -> String {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    let n = N.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    format!("{what}-{}-{n}", js_sys::Date::now())
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

/// The relay `cargo xtask test` starts for these tests, the CID of the file it holds and
/// the file's length; `None` (and a loud skip) when run without it.
fn test_relay() -> Option<(&'static str, &'static str, usize)> {
    match (
        option_env!("CAIRN_TEST_RELAY"),
        option_env!("CAIRN_TEST_CID"),
        option_env!("CAIRN_TEST_LEN"),
    ) {
        (Some(relay), Some(cid), Some(len)) => Some((relay, cid, len.parse().unwrap())),
        _ => {
            assert!(
                option_env!("CAIRN_REQUIRE_INTEROP").is_none(),
                "CAIRN_TEST_RELAY, CAIRN_TEST_CID and CAIRN_TEST_LEN must be set (cargo xtask test does)"
            );
            web_sys_log("SKIPPED: no test relay (run through `cargo xtask test`)");
            None
        }
    }
}

/// The test relay's HTTP trustless gateway (`http://127.0.0.1:PORT`).
fn test_gateway() -> Option<&'static str> {
    test_relay()?;
    option_env!("CAIRN_TEST_GATEWAY").or_else(|| {
        assert!(
            option_env!("CAIRN_REQUIRE_INTEROP").is_none(),
            "CAIRN_TEST_GATEWAY must be set (cargo xtask test does)"
        );
        None
    })
}

fn web_sys_log(msg: &str) {
    wasm_bindgen_test::console_log!("{msg}");
}

fn options(relays: &[&str]) -> wasm_bindgen::JsValue {
    let o = js_sys::Object::new();
    let list = js_sys::Array::new();
    for r in relays {
        list.push(&(*r).into());
    }
    js_sys::Reflect::set(&o, &"relays".into(), &list).unwrap();
    js_sys::Reflect::set(&o, &"storage".into(), &"memory".into()).unwrap();
    o.into()
}

#[wasm_bindgen_test]
async fn a_browser_node_fetches_a_file_from_a_relay_over_websocket() {
    use cairn_wasm::CairnNode;
    let Some((relay, cid, len)) = test_relay() else {
        return;
    };
    let node = CairnNode::create(options(&[relay])).await.unwrap();
    assert!(node.peer_id().starts_with("12D3KooW"));
    let bytes = node
        .cat(cid.into(), JsValue::UNDEFINED)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(bytes.len(), len);
    assert!(
        bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "byte-identical"
    );
    let stats = node.stats().await.unwrap();
    let blocks = js_sys::Reflect::get(&stats, &"blocks".into())
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        blocks > 1.0,
        "the file's blocks were kept locally: {blocks}"
    );

    // A CID nobody has: a clear error, not a hang.
    let missing = cairn_core::cid::of(
        cairn_core::Codec::Raw,
        HashAlg::Sha2_256,
        b"nobody has this",
    );
    let err = node
        .cat(missing.to_string(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    let msg = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(msg.contains("not found"), "{msg}");
    node.stop().await;
}

#[wasm_bindgen_test]
async fn a_browser_node_says_which_relay_it_cannot_reach() {
    use cairn_wasm::CairnNode;
    let Some((relay, _, _)) = test_relay() else {
        return;
    };
    // The right peer id on a port where nothing listens.
    let id = relay.rsplit('/').next().unwrap();
    let nowhere = format!("/ip4/127.0.0.1/tcp/9/ws/p2p/{id}");
    let err = CairnNode::create(options(&[&nowhere])).await.unwrap_err();
    let msg = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(
        msg.contains("cannot reach any relay") && msg.contains(&nowhere),
        "{msg}"
    );

    let err = CairnNode::create(options(&["not a multiaddr"]))
        .await
        .unwrap_err();
    let msg = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(msg.contains("not a multiaddr"), "{msg}");
}

#[wasm_bindgen_test]
async fn one_browser_node_fetches_from_another_it_finds_through_the_relay() {
    use cairn_wasm::CairnNode;
    let Some((relay, _, _)) = test_relay() else {
        return;
    };
    let a = CairnNode::create(options(&[relay])).await.unwrap();
    let b = CairnNode::create(options(&[relay])).await.unwrap();
    let content: Vec<u8> = (0..(1 << 20) + 77u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let cid = a
        .add(
            js_sys::Uint8Array::from(&content[..]).into(),
            wasm_bindgen::JsValue::UNDEFINED,
        )
        .await
        .unwrap();
    // B was never told about A: the relay's DHT names A, and B reaches A through a circuit.
    let got = b.cat(cid, JsValue::UNDEFINED).await.unwrap().to_vec();
    assert!(got == content, "byte-identical ({} bytes)", got.len());
    let peers = b.peers().unwrap();
    let a_id = a.peer_id();
    // Through the circuit, or the direct `/webrtc` connection made through it (whose
    // address is the circuit's plus `/webrtc`), depending on whether this browser's ICE
    // finds a path.
    let via_circuit = js_sys::Array::from(&peers).iter().any(|p| {
        js_sys::Reflect::get(&p, &"peerId".into())
            .unwrap()
            .as_string()
            == Some(a_id.clone())
            && js_sys::Reflect::get(&p, &"addr".into())
                .unwrap()
                .as_string()
                .is_some_and(|a| a.contains("/p2p-circuit"))
    });
    assert!(via_circuit, "B reached A through the relay circuit");
    a.stop().await;
    b.stop().await;
}

#[wasm_bindgen_test]
async fn add_takes_bytes_blobs_and_streams_alike_and_reports_progress() {
    use cairn_wasm::CairnNode;
    use wasm_bindgen::JsCast;
    let node = CairnNode::create(options(&[])).await.unwrap();
    // 9 MiB: the importer reports after each 4 MiB batch it stores, and at the end.
    let content: Vec<u8> = (0..(9 << 20) + 5u32).map(|i| (i % 241) as u8).collect();
    let bytes = js_sys::Uint8Array::from(&content[..]);
    let from_bytes = node
        .add(bytes.clone().into(), wasm_bindgen::JsValue::UNDEFINED)
        .await
        .unwrap();

    // A Blob, with progress events.
    let parts = js_sys::Array::of1(&bytes);
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).unwrap();
    let events = js_sys::Array::new();
    let sink = events.clone();
    let record = wasm_bindgen::closure::Closure::<dyn Fn(wasm_bindgen::JsValue)>::new(
        move |e: wasm_bindgen::JsValue| {
            sink.push(&e);
        },
    );
    let opts = js_sys::Object::new();
    js_sys::Reflect::set(&opts, &"onProgress".into(), record.as_ref().unchecked_ref()).unwrap();
    let from_blob = node.add(blob.clone().into(), opts.into()).await.unwrap();
    assert_eq!(from_blob, from_bytes, "same CID from a Blob");
    assert!(
        events.length() >= 3,
        "progress was reported: {} events",
        events.length()
    );
    let last = events.get(events.length() - 1);
    let field = |k: &str| js_sys::Reflect::get(&last, &k.into()).unwrap().as_f64();
    assert_eq!(field("bytesDone"), Some(content.len() as f64));
    assert_eq!(field("bytesTotal"), Some(content.len() as f64));

    // A ReadableStream (the Blob's), with no known total.
    let from_stream = node
        .add(blob.stream().into(), wasm_bindgen::JsValue::UNDEFINED)
        .await
        .unwrap();
    assert_eq!(from_stream, from_bytes, "same CID from a stream");

    // Anything else is refused, saying what is accepted.
    let err = node
        .add(
            wasm_bindgen::JsValue::from(42),
            wasm_bindgen::JsValue::UNDEFINED,
        )
        .await
        .unwrap_err();
    let msg = js_sys::Error::from(err).message().as_string().unwrap();
    assert!(
        msg.contains("Uint8Array, a Blob or File, or a ReadableStream"),
        "{msg}"
    );
    node.stop().await;
}

fn get(o: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(o, &key.into()).unwrap()
}

fn num(o: &JsValue, key: &str) -> f64 {
    get(o, key)
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {o:?}"))
}

fn message(e: &JsValue) -> String {
    js_sys::Error::from(e.clone()).message().into()
}

/// Asserts that `err`'s message contains `needle`.
#[track_caller]
fn assert_says(err: &JsValue, needle: &str) {
    let m = message(err);
    assert!(m.contains(needle), "expected \"{needle}\" in: {m}");
}

/// `{ key: value, … }`.
fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = js_sys::Object::new();
    for (k, v) in pairs {
        js_sys::Reflect::set(&o, &(*k).into(), v).unwrap();
    }
    o.into()
}

/// A JS function that pushes its argument onto the returned array.
fn recorder() -> (js_sys::Array, js_sys::Function) {
    use wasm_bindgen::JsCast;
    let events = js_sys::Array::new();
    let sink = events.clone();
    let f = wasm_bindgen::closure::Closure::<dyn Fn(JsValue)>::new(move |e: JsValue| {
        sink.push(&e);
    });
    let func: js_sys::Function = f.as_ref().unchecked_ref::<js_sys::Function>().clone();
    f.forget();
    (events, func)
}

/// `node.cat(cid)` with progress: the bytes and the last progress event.
async fn cat_with_progress(node: &cairn_wasm::CairnNode, cid: &str) -> (Vec<u8>, JsValue) {
    let (events, on_progress) = recorder();
    let bytes = node
        .cat(cid.into(), obj(&[("onProgress", on_progress.into())]))
        .await
        .unwrap()
        .to_vec();
    (bytes, events.get(events.length() - 1))
}

fn test_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[wasm_bindgen_test]
async fn cat_reports_each_blocks_source_and_an_aborted_cat_resumes_where_it_stopped() {
    use cairn_wasm::CairnNode;
    let Some((relay, cid, len)) = test_relay() else {
        return;
    };
    let node = CairnNode::create(options(&[relay])).await.unwrap();

    // An already-aborted signal: refused at once.
    let controller = web_sys::AbortController::new().unwrap();
    controller.abort();
    let err = node
        .cat(cid.into(), obj(&[("signal", controller.signal().into())]))
        .await
        .unwrap_err();
    assert_eq!(js_sys::Error::from(err.clone()).name(), "AbortError");
    assert_says(&err, "aborted");

    // Aborted after the fifth block: an AbortError, and the blocks fetched so far are kept.
    let controller = web_sys::AbortController::new().unwrap();
    let (events, on_progress) = recorder();
    let abort_after = {
        let events = events.clone();
        let controller = controller.clone();
        let f = wasm_bindgen::closure::Closure::<dyn Fn(JsValue)>::new(move |e: JsValue| {
            events.push(&e);
            if events.length() == 5 {
                controller.abort();
            }
        });
        let func: js_sys::Function =
            wasm_bindgen::JsCast::unchecked_ref::<js_sys::Function>(f.as_ref()).clone();
        f.forget();
        func
    };
    drop(on_progress);
    let err = node
        .cat(
            cid.into(),
            obj(&[
                ("signal", controller.signal().into()),
                ("onProgress", abort_after.into()),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        js_sys::Error::from(err.clone()).name(),
        "AbortError",
        "{}",
        message(&err)
    );
    let kept = num(&node.stats().await.unwrap(), "blocks");
    assert!(
        kept >= 5.0,
        "the blocks fetched before the abort are kept: {kept}"
    );

    // Again, to the end: the kept blocks come from the local store, the rest from the peer.
    let (bytes, last) = cat_with_progress(&node, cid).await;
    assert_eq!(bytes, test_bytes(len));
    let by = get(&last, "bySource");
    let done = num(&last, "blocksDone");
    assert_eq!(num(&last, "bytesDone"), num(&last, "bytesTotal"));
    assert_eq!(num(&by, "local"), kept, "{last:?}");
    assert_eq!(num(&by, "local") + num(&by, "peers"), done, "{last:?}");
    assert!(num(&by, "peers") > 0.0);
    assert_eq!(
        get(&last, "source")
            .as_string()
            .as_deref()
            .map(|s| s == "local" || s == "peers"),
        Some(true)
    );
    node.stop().await;
}

#[wasm_bindgen_test]
async fn cat_stream_reads_a_byte_range_fetching_as_it_goes() {
    use cairn_wasm::CairnNode;
    use futures::StreamExt;
    let Some((relay, cid, len)) = test_relay() else {
        return;
    };
    let node = CairnNode::create(options(&[relay])).await.unwrap();
    let (offset, length) = (1_000_003usize, 700_001usize);
    let stream = node
        .cat_stream(
            cid.into(),
            obj(&[
                ("offset", (offset as f64).into()),
                ("length", (length as f64).into()),
            ]),
        )
        .unwrap();
    let mut chunks = wasm_streams::ReadableStream::from_raw(stream).into_stream();
    let mut got = Vec::new();
    while let Some(chunk) = chunks.next().await {
        got.extend(js_sys::Uint8Array::new(&chunk.unwrap()).to_vec());
    }
    assert_eq!(got, test_bytes(len)[offset..offset + length]);
    // Only the blocks the range needs were fetched: not the whole 3 MiB file.
    let held = num(&node.stats().await.unwrap(), "bytes");
    assert!(
        held < (len as f64) * 0.6,
        "{held} bytes fetched for a {length}-byte range"
    );

    // Bad input is refused before anything starts.
    let err = node
        .cat_stream(cid.into(), obj(&[("offset", (-1.0).into())]))
        .unwrap_err();
    assert_says(&err, "options.offset");
    node.stop().await;
}

#[wasm_bindgen_test]
async fn the_gateway_source_fetches_and_verifies_over_fetch() {
    use cairn_wasm::CairnNode;
    let (Some((_, cid, len)), Some(gateway)) = (test_relay(), test_gateway()) else {
        return;
    };
    let node = CairnNode::create(obj(&[
        ("storage", "memory".into()),
        ("gateways", js_sys::Array::of1(&gateway.into()).into()),
    ]))
    .await
    .unwrap();
    let (bytes, last) = cat_with_progress(&node, cid).await;
    assert_eq!(bytes, test_bytes(len));
    assert_eq!(
        num(&get(&last, "bySource"), "gateway"),
        num(&last, "blocksDone"),
        "every block came from the gateway: {last:?}"
    );

    let err = CairnNode::create(obj(&[(
        "gateways",
        js_sys::Array::of1(&"ftp://example".into()).into(),
    )]))
    .await
    .unwrap_err();
    assert_says(&err, "not an http(s) URL");
    node.stop().await;
}

#[wasm_bindgen_test]
async fn a_browser_node_fetches_helia_content_over_bitswap() {
    use cairn_wasm::CairnNode;
    let (Some((relay, _, _)), Some(gateway)) = (test_relay(), test_gateway()) else {
        return;
    };
    let (Some(cid), Some(len)) = (
        option_env!("CAIRN_TEST_HELIA_CID"),
        option_env!("CAIRN_TEST_HELIA_LEN"),
    ) else {
        assert!(
            option_env!("CAIRN_REQUIRE_INTEROP").is_none(),
            "CAIRN_TEST_HELIA_CID must be set (cargo xtask test does)"
        );
        return;
    };
    // Helia (a js IPFS node that does not speak /cas) holds the file and provided it through
    // the relay's DHT; the relay's HTTP address also answers Delegated Routing V1.
    let node = CairnNode::create(obj(&[
        ("storage", "memory".into()),
        ("relays", js_sys::Array::of1(&relay.into()).into()),
        ("routers", js_sys::Array::of1(&gateway.into()).into()),
    ]))
    .await
    .unwrap();
    let (bytes, last) = cat_with_progress(&node, cid).await;
    assert_eq!(bytes.len(), len.parse::<usize>().unwrap());
    let by = get(&last, "bySource");
    assert_eq!(
        num(&by, "ipfs"),
        num(&last, "blocksDone"),
        "every block came over bitswap: {last:?}"
    );
    assert_eq!(num(&by, "gateway"), 0.0);

    let err = CairnNode::create(obj(&[(
        "routers",
        js_sys::Array::of1(&"ws://example".into()).into(),
    )]))
    .await
    .unwrap_err();
    assert_says(&err, "not an http(s) URL");
    node.stop().await;
}

#[wasm_bindgen_test]
async fn pins_keep_their_dags_through_eviction_and_errors_carry_a_cause() {
    use cairn_wasm::CairnNode;
    let node = CairnNode::create(options(&[])).await.unwrap();
    let kept = node
        .add(
            js_sys::Uint8Array::from(&test_bytes(1 << 20)[..]).into(),
            JsValue::UNDEFINED,
        )
        .await
        .unwrap();
    let cached: Vec<u8> = (0..(1 << 20)).map(|i| (i % 239) as u8).collect();
    let cache = node
        .add(
            js_sys::Uint8Array::from(&cached[..]).into(),
            obj(&[("pin", false.into())]),
        )
        .await
        .unwrap();
    assert_eq!(node.pins().await.unwrap(), vec![kept.clone()]);
    let before = num(&node.stats().await.unwrap(), "bytes");

    let evicted = node.evict(JsValue::UNDEFINED).await.unwrap();
    assert!(num(&evicted, "blocks") >= 5.0, "{evicted:?}");
    let stats = node.stats().await.unwrap();
    assert_eq!(num(&stats, "bytes"), before - num(&evicted, "bytes"));
    assert_eq!(num(&stats, "pins"), 1.0);
    let bytes = node
        .cat(kept.clone(), JsValue::UNDEFINED)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(bytes, test_bytes(1 << 20), "the pinned file is whole");
    let err = node.cat(cache, JsValue::UNDEFINED).await.unwrap_err();
    assert_says(&err, "cannot fetch");

    assert!(node.unpin(kept.clone()).await.unwrap());
    assert!(!node.unpin(kept).await.unwrap(), "already unpinned");
    node.evict(JsValue::UNDEFINED).await.unwrap();
    assert_eq!(num(&node.stats().await.unwrap(), "blocks"), 0.0);

    // A malformed CID: the message says what was expected; the parser's error is the cause.
    let err = node
        .cat("bafynot-a-cid".into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_says(&err, "is not a CID");
    let cause = get(&err, "cause");
    assert!(
        wasm_bindgen::JsCast::is_instance_of::<js_sys::Error>(&cause),
        "cause: {cause:?}"
    );
    node.stop().await;
}

#[wasm_bindgen_test]
async fn a_full_store_refuses_an_add_and_keeps_nothing_of_it() {
    use cairn_wasm::CairnNode;
    let name = format!("quota-{}", js_sys::Math::random());
    let node = CairnNode::create(obj(&[
        ("name", name.clone().into()),
        ("quota", ((6 << 20) as f64).into()),
    ]))
    .await
    .unwrap();
    let small = node
        .add(
            js_sys::Uint8Array::from(&test_bytes(1 << 20)[..]).into(),
            JsValue::UNDEFINED,
        )
        .await
        .unwrap();
    let before = node.stats().await.unwrap();
    // 9 MiB, stored in 4 MiB batches: the first lands, the second does not fit; the add
    // fails and takes back what it wrote.
    let big: Vec<u8> = (0..9 << 20).map(|i| (i % 233) as u8).collect();
    let (events, on_progress) = recorder();
    let err = node
        .add(
            js_sys::Uint8Array::from(&big[..]).into(),
            obj(&[("onProgress", on_progress.into())]),
        )
        .await
        .unwrap_err();
    assert_says(&err, "store is full");
    assert!(
        events.length() >= 1,
        "a first batch was stored before the failure"
    );
    let after = node.stats().await.unwrap();
    assert_eq!(
        num(&after, "bytes"),
        num(&before, "bytes"),
        "nothing of it was kept"
    );
    assert_eq!(num(&after, "quota"), (6 << 20) as f64);
    assert_eq!(node.pins().await.unwrap(), vec![small.clone()]);
    let again = node.cat(small, JsValue::UNDEFINED).await.unwrap().to_vec();
    assert_eq!(again, test_bytes(1 << 20), "the earlier file is untouched");
    node.stop().await;
    cairn_wasm::idb::IdbStore::open(&name, None)
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}

#[wasm_bindgen_test]
async fn an_indexeddb_node_keeps_its_peer_id_and_a_second_tab_gets_its_own() {
    use cairn_wasm::CairnNode;
    let name = format!("identity-{}", js_sys::Math::random());
    let opts = || obj(&[("name", name.clone().into())]);
    let first = CairnNode::create(opts()).await.unwrap();
    let id = first.peer_id();
    // The same store while the first node runs (another tab): a peer id of its own.
    let second = CairnNode::create(opts()).await.unwrap();
    assert_ne!(
        second.peer_id(),
        id,
        "two running nodes never share a peer id"
    );
    second.stop().await;
    first.stop().await;
    // Reopened (a reload): the kept identity.
    let again = CairnNode::create(opts()).await.unwrap();
    assert_eq!(again.peer_id(), id, "the peer id outlives a reload");
    again.stop().await;
    // A memory node has a fresh one each time.
    let a = CairnNode::create(options(&[])).await.unwrap();
    let b = CairnNode::create(options(&[])).await.unwrap();
    assert_ne!(a.peer_id(), b.peer_id());
    cairn_wasm::idb::IdbStore::open(&name, None)
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}

#[wasm_bindgen_test]
async fn an_aborted_add_rejects_and_keeps_nothing_of_it() {
    use cairn_wasm::CairnNode;
    let node = CairnNode::create(options(&[])).await.unwrap();
    // 9 MiB: aborted when the first 4 MiB batch is stored.
    let content: Vec<u8> = (0..9 << 20).map(|i| (i % 227) as u8).collect();
    let controller = web_sys::AbortController::new().unwrap();
    let abort_now = {
        let controller = controller.clone();
        let f = wasm_bindgen::closure::Closure::<dyn Fn(JsValue)>::new(move |_: JsValue| {
            controller.abort();
        });
        let func: js_sys::Function =
            wasm_bindgen::JsCast::unchecked_ref::<js_sys::Function>(f.as_ref()).clone();
        f.forget();
        func
    };
    let err = node
        .add(
            js_sys::Uint8Array::from(&content[..]).into(),
            obj(&[
                ("signal", controller.signal().into()),
                ("onProgress", abort_now.into()),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        js_sys::Error::from(err.clone()).name(),
        "AbortError",
        "{}",
        message(&err)
    );
    let stats = node.stats().await.unwrap();
    assert_eq!(
        num(&stats, "blocks"),
        0.0,
        "the stored batch was deleted again"
    );
    assert_eq!(num(&stats, "pins"), 0.0);
    node.stop().await;
}
