//! The transfer queue in the browser, against the relay `cargo xtask test` starts: a capped
//! transfer holds its rate, a reload resumes an unfinished one with only the missing
//! blocks, and bad calls say what is wrong.

use cairn_wasm::CairnNode;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

use crate::support::{assert_code, assert_says, get, num, obj, options, recorder, test_relay};

fn now_ms() -> f64 {
    js_sys::Date::now()
}

fn status_of(list: &JsValue, id: u32) -> JsValue {
    js_sys::Array::from(list)
        .iter()
        .find(|t| num(t, "id") as u32 == id)
        .unwrap_or_else(|| panic!("transfer {id} is not listed"))
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn a_capped_transfer_holds_its_rate_and_pins_what_it_fetched() {
    let (relay, cid, len) = test_relay();
    let node = CairnNode::create(options(&[relay])).await.unwrap();
    // 3 MiB at 300 KiB/s: about 10 s (less the half second a full bucket lends).
    let cap = 300.0 * 1024.0;
    let started = now_ms();
    let id = node
        .enqueue(
            cid.into(),
            obj(&[("maxRate", cap.into()), ("priority", "low".into())]),
        )
        .await
        .unwrap();
    let (events, on_progress) = recorder();
    let done = node
        .wait_transfer(id as f64, obj(&[("onProgress", on_progress.into())]))
        .await
        .unwrap();
    let secs = (now_ms() - started) / 1000.0;
    assert_eq!(get(&done, "state").as_string().as_deref(), Some("done"));
    let progress = get(&done, "progress");
    let bytes = num(&progress, "bytesDone");
    assert_eq!(bytes, num(&progress, "bytesTotal"), "the whole DAG");
    assert!(bytes as usize >= len);
    let rate = bytes / secs;
    web_sys::console::log_1(
        &format!("{bytes} bytes under a {cap} B/s cap in {secs:.2} s: {rate:.0} B/s").into(),
    );
    assert!(
        rate >= cap * 0.85 && rate <= cap * 1.15,
        "{rate:.0} B/s is not within 15 % of the {cap} B/s cap"
    );
    // Progress came while it ran, with a speed and an ETA.
    let active = events
        .iter()
        .filter(|e| get(e, "state").as_string().as_deref() == Some("active"))
        .collect::<Vec<_>>();
    assert!(active.len() > 5, "{} progress events", active.len());
    assert!(
        active
            .iter()
            .any(|e| num(e, "speed") > 0.0 && get(e, "etaMs").as_f64().is_some())
    );
    let pins = node.pins().await.unwrap();
    assert!(
        pins.contains(&cid.to_owned()),
        "a finished transfer's root is pinned"
    );
    let listed = node.transfers().await;
    assert_eq!(
        get(&status_of(&listed, id), "priority")
            .as_string()
            .as_deref(),
        Some("low")
    );

    // Bad calls say what is wrong.
    let e = node
        .enqueue(cid.into(), obj(&[("maxRate", 0.into())]))
        .await
        .unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    assert_says(&e, "maxRate");
    let e = node
        .enqueue(cid.into(), obj(&[("maxRate", (-5).into())]))
        .await
        .unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    let e = node
        .enqueue(cid.into(), obj(&[("priority", "urgent".into())]))
        .await
        .unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    let e = node
        .enqueue("nonsense".into(), JsValue::UNDEFINED)
        .await
        .unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    let e = node.pause_transfer(9999.0).await.unwrap_err();
    assert_code(&e, "NOT_FOUND");
    let e = node.cancel_transfer(id as f64).await.unwrap_err();
    assert_says(&e, "done");
    let e = node
        .set_transfer_priority(id as f64, "urgent".into())
        .await
        .unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    node.stop().await;
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn a_reload_resumes_an_unfinished_transfer_with_only_the_missing_blocks() {
    let (relay, cid, len) = test_relay();
    let name = format!("transfers-{}", js_sys::Math::random());
    let opts = || {
        let o = options(&[relay]);
        js_sys::Reflect::set(&o, &"storage".into(), &"indexeddb".into()).unwrap();
        js_sys::Reflect::set(&o, &"name".into(), &name.clone().into()).unwrap();
        o
    };
    let first = CairnNode::create(opts()).await.unwrap();
    let id = first
        .enqueue(cid.into(), obj(&[("maxRate", (1024.0 * 1024.0).into())]))
        .await
        .unwrap();
    // Stopped (the page goes away) once a third of it is in.
    let controller = web_sys::AbortController::new().unwrap();
    let (events, on_progress) = {
        let (events, record) = recorder();
        let controller = controller.clone();
        let f = wasm_bindgen::closure::Closure::<dyn Fn(JsValue)>::new(move |s: JsValue| {
            let _ = record.call1(&JsValue::NULL, &s);
            if num(&get(&s, "progress"), "bytesDone") as usize > len / 3 {
                controller.abort();
            }
        });
        let func: js_sys::Function =
            wasm_bindgen::JsCast::unchecked_ref::<js_sys::Function>(f.as_ref()).clone();
        f.forget();
        (events, func)
    };
    let cut = first
        .wait_transfer(
            id as f64,
            obj(&[
                ("onProgress", on_progress.into()),
                ("signal", controller.signal().into()),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(get(&cut, "name").as_string().as_deref(), Some("AbortError"));
    assert!(events.length() > 0);
    first.stop().await;

    // The reload: the same store, the transfer queued again, the kept blocks read locally.
    let again = CairnNode::create(opts()).await.unwrap();
    let listed = again.transfers().await;
    let restored = status_of(&listed, id);
    assert_eq!(get(&restored, "cid").as_string().as_deref(), Some(cid));
    assert_eq!(num(&restored, "maxRate"), 1024.0 * 1024.0);
    let done = again
        .wait_transfer(id as f64, JsValue::UNDEFINED)
        .await
        .unwrap();
    assert_eq!(get(&done, "state").as_string().as_deref(), Some("done"));
    let by = get(&get(&done, "progress"), "bySource");
    let (local, peers) = (num(&by, "local"), num(&by, "peers"));
    let total = num(&get(&done, "progress"), "blocksDone");
    assert!(
        local >= 3.0,
        "the kept blocks were read locally: {local} of {total}"
    );
    assert_eq!(local + peers, total, "the rest came from the relay");
    let bytes = again
        .cat(cid.into(), JsValue::UNDEFINED)
        .await
        .unwrap()
        .to_vec();
    assert!(
        bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8) && bytes.len() == len,
        "byte-identical"
    );
    again.stop().await;
    cairn_wasm::idb::IdbStore::open(&name, None)
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}

#[wasm_bindgen_test]
#[ignore = "needs the test relay: run through `cargo xtask test`"]
async fn pin_keeps_a_checked_copy_on_the_relay() {
    let (relay, _, _) = test_relay();
    let node = CairnNode::create(options(&[relay])).await.unwrap();
    let content: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let cid = node
        .add(
            js_sys::Uint8Array::from(&content[..]).into(),
            obj(&[("pin", false.into())]),
        )
        .await
        .unwrap();
    node.pin(cid.clone(), obj(&[("replicas", 1.into())]))
        .await
        .unwrap();
    let relay_id = relay.rsplit("/p2p/").next().unwrap();
    let copies = js_sys::Array::from(&node.replicas(cid.clone()).await.unwrap());
    assert_eq!(copies.length(), 1);
    let copy = copies.get(0);
    assert_eq!(get(&copy, "peerId").as_string().as_deref(), Some(relay_id));
    assert!(num(&copy, "checks") >= 1.0, "the copy was checked");
    // Two copies from one relay cannot be had: the call says so, the local pin stays.
    let e = node
        .pin(cid.clone(), obj(&[("replicas", 2.into())]))
        .await
        .unwrap_err();
    assert_code(&e, "UNREACHABLE");
    assert_says(&e, "1 of 2 copies");
    assert!(node.pins().await.unwrap().contains(&cid));
    let e = node.replicas("nonsense".into()).await.unwrap_err();
    assert_code(&e, "INVALID_ARGUMENT");
    node.stop().await;

    // Kept with an IndexedDB store, the copies are known after a reload.
    let name = format!("replicas-{}", js_sys::Math::random());
    let opts = || {
        let o = options(&[relay]);
        js_sys::Reflect::set(&o, &"storage".into(), &"indexeddb".into()).unwrap();
        js_sys::Reflect::set(&o, &"name".into(), &name.clone().into()).unwrap();
        o
    };
    let first = CairnNode::create(opts()).await.unwrap();
    let cid = first
        .add(
            js_sys::Uint8Array::from(&content[..10_000]).into(),
            JsValue::UNDEFINED,
        )
        .await
        .unwrap();
    first
        .pin(cid.clone(), obj(&[("replicas", 1.into())]))
        .await
        .unwrap();
    first.stop().await;
    let again = CairnNode::create(opts()).await.unwrap();
    let copies = js_sys::Array::from(&again.replicas(cid.clone()).await.unwrap());
    assert_eq!(copies.length(), 1, "the copy is remembered across a reload");
    assert_eq!(
        get(&copies.get(0), "peerId").as_string().as_deref(),
        Some(relay_id)
    );
    again.stop().await;
    cairn_wasm::idb::IdbStore::open(&name, None)
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
}
