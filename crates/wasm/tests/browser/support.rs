//! What the browser tests share: option bags, reading results, asserting errors, test data,
//! and the peers `cargo xtask test` starts for them.

use wasm_bindgen::JsValue;

/// A database name no other test (or earlier run in the same profile) uses.
pub(crate) fn fresh_name(what: &str) -> String {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    let n = N.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    format!("{what}-{}-{n}", js_sys::Date::now())
}

/// A compile-time setting `cargo xtask test` gives: the tests that need it are `#[ignore]`d
/// outside it, and when run anyway without it they fail (they cannot pass quietly).
fn required(value: Option<&'static str>, name: &str) -> &'static str {
    value.unwrap_or_else(|| {
        panic!("{name} is not set: this test needs the peers `cargo xtask test` starts")
    })
}

/// The relay `cargo xtask test` starts for these tests, the CID of the file it holds and
/// the file's length.
pub(crate) fn test_relay() -> (&'static str, &'static str, usize) {
    (
        required(option_env!("CAIRN_TEST_RELAY"), "CAIRN_TEST_RELAY"),
        required(option_env!("CAIRN_TEST_CID"), "CAIRN_TEST_CID"),
        required(option_env!("CAIRN_TEST_LEN"), "CAIRN_TEST_LEN")
            .parse()
            .unwrap(),
    )
}

/// The relay of a private network `cargo xtask test` starts (holding the same file as
/// [`test_relay`]) and the text of its swarm key file.
pub(crate) fn test_private_relay() -> (&'static str, &'static str) {
    (
        required(
            option_env!("CAIRN_TEST_PRIVATE_RELAY"),
            "CAIRN_TEST_PRIVATE_RELAY",
        ),
        required(option_env!("CAIRN_TEST_SWARM_KEY"), "CAIRN_TEST_SWARM_KEY"),
    )
}

/// The test relay's HTTP trustless gateway (`http://127.0.0.1:PORT`).
pub(crate) fn test_gateway() -> &'static str {
    required(option_env!("CAIRN_TEST_GATEWAY"), "CAIRN_TEST_GATEWAY")
}

/// The file a Helia peer holds (provided through the test relay's DHT) and its length.
pub(crate) fn test_helia() -> (&'static str, usize) {
    (
        required(option_env!("CAIRN_TEST_HELIA_CID"), "CAIRN_TEST_HELIA_CID"),
        required(option_env!("CAIRN_TEST_HELIA_LEN"), "CAIRN_TEST_HELIA_LEN")
            .parse()
            .unwrap(),
    )
}

/// `{ storage: "memory", relays }`.
pub(crate) fn options(relays: &[&str]) -> JsValue {
    let list = js_sys::Array::new();
    for r in relays {
        list.push(&(*r).into());
    }
    obj(&[("relays", list.into()), ("storage", "memory".into())])
}

pub(crate) fn get(o: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(o, &key.into()).unwrap()
}

pub(crate) fn num(o: &JsValue, key: &str) -> f64 {
    get(o, key)
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {o:?}"))
}

pub(crate) fn message(e: &JsValue) -> String {
    js_sys::Error::from(e.clone()).message().into()
}

/// Asserts that `err`'s message contains `needle`.
#[track_caller]
pub(crate) fn assert_says(err: &JsValue, needle: &str) {
    let m = message(err);
    assert!(m.contains(needle), "expected \"{needle}\" in: {m}");
}

/// Asserts that `err` carries `code`.
#[track_caller]
pub(crate) fn assert_code(err: &JsValue, code: &str) {
    let got = get(err, "code").as_string();
    assert_eq!(got.as_deref(), Some(code), "{}", message(err));
}

/// `{ key: value, … }`.
pub(crate) fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = js_sys::Object::new();
    for (k, v) in pairs {
        js_sys::Reflect::set(&o, &(*k).into(), v).unwrap();
    }
    o.into()
}

/// A JS function that pushes its argument onto the returned array.
pub(crate) fn recorder() -> (js_sys::Array, js_sys::Function) {
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
pub(crate) async fn cat_with_progress(
    node: &cairn_wasm::CairnNode,
    cid: &str,
) -> (Vec<u8>, JsValue) {
    let (events, on_progress) = recorder();
    let bytes = node
        .cat(cid.into(), obj(&[("onProgress", on_progress.into())]))
        .await
        .unwrap()
        .to_vec();
    (bytes, events.get(events.length() - 1))
}

/// The test file's bytes: byte `i` is `i % 251`.
pub(crate) fn test_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
