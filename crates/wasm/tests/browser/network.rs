//! The browser node on the network, against the relay (and Helia peer) `cargo xtask test`
//! starts: fetching, resuming, ranges, gateways, IPFS peers, and another browser node found
//! through the relay's DHT.

use cairn_core::HashAlg;
use cairn_wasm::CairnNode;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

use crate::support::{
    assert_code, assert_says, cat_with_progress, get, message, num, obj, options, recorder,
    test_bytes, test_gateway, test_helia, test_private_relay, test_relay,
};

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn a_browser_node_fetches_a_file_from_a_relay_over_websocket() {
    let (relay, cid, len) = test_relay();
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
    assert_says(&err, "not found");
    assert_code(&err, "NOT_FOUND");
    node.stop().await;
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn a_browser_node_says_which_relay_it_cannot_reach() {
    let (relay, _, _) = test_relay();
    // The right peer id on a port where nothing listens.
    let id = relay.rsplit('/').next().unwrap();
    let nowhere = format!("/ip4/127.0.0.1/tcp/9/ws/p2p/{id}");
    let err = CairnNode::create(options(&[&nowhere])).await.unwrap_err();
    assert_says(&err, "cannot reach any relay");
    assert_says(&err, &nowhere);
    assert_code(&err, "UNREACHABLE");

    let err = CairnNode::create(options(&["not a multiaddr"]))
        .await
        .unwrap_err();
    assert_says(&err, "not a multiaddr");
    assert_code(&err, "INVALID_ARGUMENT");
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn one_browser_node_fetches_from_another_it_finds_through_the_relay() {
    let (relay, _, _) = test_relay();
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
    let peers = b.peers();
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
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn cat_reports_each_blocks_source_and_an_aborted_cat_resumes_where_it_stopped() {
    let (relay, cid, len) = test_relay();
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
    assert_code(&err, "ABORTED");

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
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn cat_stream_reads_a_byte_range_fetching_as_it_goes() {
    use futures::StreamExt;
    let (relay, cid, len) = test_relay();
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
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn the_gateway_source_fetches_and_verifies_over_fetch() {
    let (_, cid, len) = test_relay();
    let gateway = test_gateway();
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
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn a_browser_node_fetches_helia_content_over_bitswap() {
    let (relay, _, _) = test_relay();
    let gateway = test_gateway();
    let (cid, len) = test_helia();
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
    assert_eq!(bytes.len(), len);
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

/// `{ storage: "memory", relays: [relay], swarmKey }`.
fn private_options(relay: &str, swarm_key: &str) -> JsValue {
    let o = options(&[relay]);
    js_sys::Reflect::set(&o, &"swarmKey".into(), &swarm_key.into()).unwrap();
    o
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn members_of_a_private_network_reach_its_relay_and_each_other_and_no_one_else_does() {
    let (relay, key) = test_private_relay();
    let (_, cid, len) = test_relay();
    // A member fetches the relay's file over the protected WebSocket connection.
    let a = CairnNode::create(private_options(relay, key))
        .await
        .unwrap();
    let bytes = a
        .cat(cid.into(), JsValue::UNDEFINED)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(bytes.len(), len);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    // Another member finds A through the private relay's DHT and fetches what only A has.
    let b = CairnNode::create(private_options(relay, key))
        .await
        .unwrap();
    let content: Vec<u8> = (0..(1 << 20) + 99u32)
        .map(|i| (i * 11 % 251) as u8)
        .collect();
    let mine = a
        .add(
            js_sys::Uint8Array::from(&content[..]).into(),
            JsValue::UNDEFINED,
        )
        .await
        .unwrap();
    let got = b.cat(mine, JsValue::UNDEFINED).await.unwrap().to_vec();
    assert!(got == content, "byte-identical ({} bytes)", got.len());

    // Without the key, or with another network's, the relay cannot be reached, and the
    // error says why.
    let err = CairnNode::create(options(&[relay])).await.unwrap_err();
    assert_code(&err, "UNREACHABLE");
    assert_says(&err, "private network");
    let other = key
        .lines()
        .map(|l| {
            if l.len() == 64 {
                l.chars()
                    .map(|c| if c == '0' { '1' } else { '0' })
                    .collect()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<String>>()
        .join("\n");
    let err = CairnNode::create(private_options(relay, &other))
        .await
        .unwrap_err();
    assert_code(&err, "UNREACHABLE");
    assert_says(&err, "not be in this private network");

    // A key that is not one: refused before anything starts.
    let err = CairnNode::create(private_options(
        relay,
        "/key/swarm/psk/1.0.0/\n/base16/\nxyz",
    ))
    .await
    .unwrap_err();
    assert_code(&err, "INVALID_ARGUMENT");
    assert_says(&err, "swarmKey");
    a.stop().await;
    b.stop().await;
}
