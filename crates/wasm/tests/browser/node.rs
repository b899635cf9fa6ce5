//! The browser node without a network: adding, pins and eviction, a full store, its
//! identity, aborting, and the codes its errors carry.

use cairn_wasm::CairnNode;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

use crate::support::{
    assert_code, assert_says, get, message, num, obj, options, recorder, test_bytes,
};

#[wasm_bindgen_test]
async fn a_memory_node_adds_and_cats_and_refuses_bad_input_by_code() {
    let node = CairnNode::create(options(&[])).await.unwrap();
    let data = js_sys::Uint8Array::from(&b"hello from the browser"[..]);
    let cid = node.add(data.into(), JsValue::UNDEFINED).await.unwrap();
    let back = node.cat(cid.clone(), JsValue::UNDEFINED).await.unwrap();
    assert_eq!(back.to_vec(), b"hello from the browser");
    // `fetch`'s report is a plain object: the final progress and the time it took.
    let report = node.fetch(cid.clone(), JsValue::UNDEFINED).await.unwrap();
    assert_eq!(
        num(&get(&report, "bySource"), "local"),
        num(&report, "blocksDone")
    );
    assert!(num(&report, "elapsedMs") >= 0.0);
    assert!(get(&report, "cid").is_string(), "{report:?}");
    let err = CairnNode::create(obj(&[
        ("storage", "memory".into()),
        ("profile", "nope".into()),
    ]))
    .await
    .unwrap_err();
    assert_says(&err, "unknown profile");
    assert_code(&err, "INVALID_ARGUMENT");
    let err = node
        .cat("garbage".into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_code(&err, "INVALID_ARGUMENT");
    // An option of the wrong type names the option.
    let err = CairnNode::create(obj(&[("quota", "lots".into())]))
        .await
        .unwrap_err();
    assert_says(&err, "options.quota");
    assert_code(&err, "INVALID_ARGUMENT");
    node.stop().await;
    // A stopped node says so.
    let err = node
        .connect("/ip4/127.0.0.1/tcp/9/ws".into())
        .await
        .unwrap_err();
    assert_code(&err, "STOPPED");
}

#[wasm_bindgen_test]
async fn add_takes_bytes_blobs_and_streams_alike_and_reports_progress() {
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
    assert_says(&err, "Uint8Array, a Blob or File, or a ReadableStream");
    assert_code(&err, "INVALID_ARGUMENT");
    node.stop().await;
}

#[wasm_bindgen_test]
async fn pins_keep_their_dags_through_eviction_and_errors_carry_a_cause() {
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
    assert_code(&err, "NOT_FOUND");

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
    assert_code(&err, "INVALID_ARGUMENT");
    let cause = get(&err, "cause");
    assert!(
        wasm_bindgen::JsCast::is_instance_of::<js_sys::Error>(&cause),
        "cause: {cause:?}"
    );
    node.stop().await;
}

#[wasm_bindgen_test]
async fn a_full_store_refuses_an_add_and_keeps_nothing_of_it() {
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
    assert_code(&err, "STORE_FULL");
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
    assert_code(&err, "ABORTED");
    let stats = node.stats().await.unwrap();
    assert_eq!(
        num(&stats, "blocks"),
        0.0,
        "the stored batch was deleted again"
    );
    assert_eq!(num(&stats, "pins"), 0.0);
    node.stop().await;
}

/// Reads a `ReadableStream<Uint8Array>` to its end.
async fn read_all(stream: web_sys::ReadableStream) -> Vec<u8> {
    use futures::StreamExt;
    let mut s = wasm_streams::ReadableStream::from_raw(stream).into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(js_sys::Uint8Array::new(&chunk.unwrap()).to_vec());
    }
    out
}

#[wasm_bindgen_test]
async fn add_all_keeps_modes_and_times_as_helia_does() {
    let node = CairnNode::create(options(&[])).await.unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| ((i * 13) % 251) as u8).collect();
    let secs = |s: f64, n: Option<f64>| {
        let mut fields = vec![("secs", JsValue::from(s))];
        if let Some(n) = n {
            fields.push(("nsecs", n.into()));
        }
        obj(&fields)
    };
    let entries = js_sys::Array::new();
    // The three ways to give a time: a Date, Helia's { secs, nsecs }, milliseconds.
    entries.push(&obj(&[
        ("path", "m".into()),
        ("mode", 0o700.into()),
        (
            "mtime",
            js_sys::Date::new(&1_600_000_000_123f64.into()).into(),
        ),
    ]));
    entries.push(&obj(&[
        ("path", "m/x.txt".into()),
        ("content", js_sys::Uint8Array::from(&b"x"[..]).into()),
        ("mode", 0o755.into()),
        ("mtime", secs(1_700_000_000.0, Some(5.0))),
    ]));
    entries.push(&obj(&[
        ("path", "y.bin".into()),
        ("content", js_sys::Uint8Array::from(&big[..]).into()),
        ("mtime", 1_500_000_000_000f64.into()),
    ]));
    let root = node
        .add_all(entries.into(), JsValue::UNDEFINED)
        .await
        .unwrap();
    // What Helia's importer (ipfs-unixfs-importer, default profile, wrapWithDirectory) gives
    // the same entries with mode 0o700 and mtime { secs: 1600000000n, nsecs: 123000000 },
    // mode 0o755 and { secs: 1700000000n, nsecs: 5 }, and { secs: 1500000000n }.
    assert_eq!(
        root,
        "bafybeiej6aulk4vfyapwucj2t54e6lwsua2wod4bjwegajprkpxw5546zu"
    );

    // Bad metadata is refused before anything is stored, naming the entry and the field.
    for (field, value) in [
        ("mode", JsValue::from("rw-r--r--")),
        ("mode", JsValue::from(-1)),
        ("mtime", secs(1.0, Some(2e9))),
        ("mtime", JsValue::from("yesterday")),
        ("mtime", js_sys::Date::new(&"not a date".into()).into()),
    ] {
        let bad = js_sys::Array::of1(&obj(&[
            ("path", "f".into()),
            ("content", js_sys::Uint8Array::from(&b"f"[..]).into()),
            (field, value),
        ]));
        let err = node
            .add_all(bad.into(), JsValue::UNDEFINED)
            .await
            .unwrap_err();
        let msg = get(&err, "message").as_string().unwrap();
        assert!(msg.contains(&format!("entry 0: `{field}`")), "{msg}");
    }
}

#[wasm_bindgen_test]
async fn add_all_makes_helias_directory_lists_it_and_reads_files_by_path() {
    let node = CairnNode::create(options(&[])).await.unwrap();
    let b: Vec<u8> = (0..600_000u32).map(|i| ((i * 7) % 251) as u8).collect();
    let blob = web_sys::Blob::new_with_u8_array_sequence(&js_sys::Array::of1(
        &js_sys::Uint8Array::from(&b[..]),
    ))
    .unwrap();
    let file = web_sys::File::new_with_str_sequence(
        &js_sys::Array::of1(&"a file from a FileList".into()),
        "c d.txt",
    )
    .unwrap();
    let entry = |path: &str, content: JsValue| obj(&[("path", path.into()), ("content", content)]);
    let entries = js_sys::Array::new();
    entries.push(&entry(
        "photos/a.txt",
        js_sys::Uint8Array::from(&b"alpha"[..]).into(),
    ));
    entries.push(&entry("photos/2026/b.bin", blob.into()));
    entries.push(&obj(&[("path", "empty".into())]));
    entries.push(&file);
    let (seen, on_progress) = recorder();
    let root = node
        .add_all(entries.into(), obj(&[("onProgress", on_progress.into())]))
        .await
        .unwrap();
    // What Helia's importer gives the same tree (tests/js/unixfs-tree-cid.mjs, default
    // profile, on a directory holding these four entries).
    assert_eq!(
        root,
        "bafybeifuf7qaihpykuu2rpina6uuzvky4vthvoinvgntmlfllupdyxdp4a"
    );
    let last = seen.get(seen.length() - 1);
    assert_eq!(num(&last, "bytesDone"), (5 + 600_000 + 22) as f64);
    assert_eq!(num(&last, "bytesTotal"), (5 + 600_000 + 22) as f64);

    let listed: js_sys::Array = node
        .ls(root.clone(), JsValue::UNDEFINED)
        .await
        .unwrap()
        .into();
    let names: Vec<(String, String)> = listed
        .iter()
        .map(|e| {
            (
                get(&e, "name").as_string().unwrap(),
                get(&e, "type").as_string().unwrap(),
            )
        })
        .collect();
    let want = [
        ("c d.txt", "file"),
        ("empty", "directory"),
        ("photos", "directory"),
    ];
    assert_eq!(names, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    let photos: js_sys::Array = node
        .ls(format!("/ipfs/{root}/photos"), JsValue::UNDEFINED)
        .await
        .unwrap()
        .into();
    assert_eq!(photos.length(), 2);

    let back = node
        .cat(format!("{root}/photos/a.txt"), JsValue::UNDEFINED)
        .await
        .unwrap();
    assert_eq!(back.to_vec(), b"alpha");
    let range = node
        .cat_stream(
            format!("{root}/photos/2026/b.bin"),
            obj(&[("offset", 100.into()), ("length", 100.into())]),
        )
        .unwrap();
    assert_eq!(read_all(range).await, &b[100..200]);
    let size = node
        .size(format!("{root}/photos/2026/b.bin"), JsValue::UNDEFINED)
        .await
        .unwrap();
    assert_eq!(size, 600_000.0);

    // Bad paths, by code.
    let err = node
        .cat(format!("{root}/nope"), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_code(&err, "NOT_FOUND");
    assert_says(&err, "no `nope` in `/`");
    let err = node
        .cat(format!("{root}/../x"), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_code(&err, "INVALID_ARGUMENT");
    let err = node
        .ls(format!("{root}/c d.txt"), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_says(&err, "not a directory");
    for bad in ["../up", "a/../b", "nul\u{0}", ""] {
        let one = js_sys::Array::of1(&entry(bad, js_sys::Uint8Array::from(&b"x"[..]).into()));
        let err = node
            .add_all(one.into(), JsValue::UNDEFINED)
            .await
            .unwrap_err();
        assert_code(&err, "INVALID_ARGUMENT");
    }
    let twice = js_sys::Array::new();
    twice.push(&entry("a", js_sys::Uint8Array::from(&b"1"[..]).into()));
    twice.push(&entry("a", js_sys::Uint8Array::from(&b"2"[..]).into()));
    let err = node
        .add_all(twice.into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_says(&err, "added twice");
    let err = node
        .add_all(js_sys::Array::new().into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_says(&err, "no entries");
    node.stop().await;
}

/// Hides the global `name` until dropped, pass or fail: an own property of the global
/// object holding `undefined`, in place of the browser's (an own property of the global in
/// Firefox, which is put back as it was; one on its prototype in Chromium, then shadowed).
struct Hidden(&'static str, JsValue);

impl Hidden {
    fn new(name: &'static str) -> Self {
        let global: js_sys::Object = js_sys::global();
        let was = js_sys::Object::get_own_property_descriptor(&global, &name.into());
        let desc = js_sys::Object::new();
        js_sys::Reflect::set(&desc, &"value".into(), &JsValue::UNDEFINED).unwrap();
        js_sys::Reflect::set(&desc, &"configurable".into(), &true.into()).unwrap();
        js_sys::Reflect::set(&desc, &"writable".into(), &true.into()).unwrap();
        js_sys::Object::define_property(&global, &name.into(), &desc);
        Hidden(name, was)
    }
}

impl Drop for Hidden {
    fn drop(&mut self) {
        let global = js_sys::global();
        if self.1.is_undefined() {
            js_sys::Reflect::delete_property(&global, &self.0.into()).unwrap();
        } else {
            use wasm_bindgen::JsCast;
            js_sys::Object::define_property(&global, &self.0.into(), self.1.unchecked_ref());
        }
    }
}

#[wasm_bindgen_test]
async fn a_missing_browser_api_is_named_at_create() {
    // No RTCPeerConnection (as in a Worker): asked for, refused by name; by default, the node
    // starts with direct connections off, and says so when one is asked for.
    {
        let _gone = Hidden::new("RTCPeerConnection");
        let err = CairnNode::create(obj(&[
            ("storage", "memory".into()),
            ("direct", true.into()),
        ]))
        .await
        .unwrap_err();
        assert_code(&err, "UNSUPPORTED");
        assert_says(&err, "RTCPeerConnection");
        assert_says(&err, "direct: false");
        let node = CairnNode::create(options(&[])).await.unwrap();
        let err = node
            .connect("/ip4/127.0.0.1/tcp/9/ws/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/webrtc/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into())
            .await
            .unwrap_err();
        assert_says(&err, "direct connections are turned off");
        node.stop().await;
    }
    // No IndexedDB: the default store is refused by name, a memory store still starts.
    {
        let _gone = Hidden::new("indexedDB");
        let err = CairnNode::create(JsValue::UNDEFINED).await.unwrap_err();
        assert_code(&err, "UNSUPPORTED");
        assert_says(&err, "IndexedDB");
        assert_says(&err, "storage: 'memory'");
        CairnNode::create(options(&[])).await.unwrap().stop().await;
    }
    // No WebSocket: relays cannot be reached, which is said before any dial.
    {
        let _gone = Hidden::new("WebSocket");
        let err = CairnNode::create(obj(&[
            ("storage", "memory".into()),
            (
                "relays",
                js_sys::Array::of1(&"/ip4/127.0.0.1/tcp/9/ws/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()).into(),
            ),
        ]))
        .await
        .unwrap_err();
        assert_code(&err, "UNSUPPORTED");
        assert_says(&err, "WebSocket");
    }
    // Everything back: the browser's own objects are seen again.
    for name in ["RTCPeerConnection", "indexedDB", "WebSocket"] {
        assert!(
            !js_sys::Reflect::get(&js_sys::global(), &name.into())
                .unwrap()
                .is_undefined(),
            "{name} is back"
        );
    }
}
