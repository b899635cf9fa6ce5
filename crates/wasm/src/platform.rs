//! What a node needs of the browser, checked at `create` before anything starts: a missing
//! API is named (`UNSUPPORTED`) instead of surfacing later as a failed fetch or dial.
//!
//! Checked by feature, not by browser name: the same node runs in Chromium, Firefox and
//! Workers, and each lacks something somewhere (no `RTCPeerConnection` in Workers, no
//! IndexedDB where storage is turned off, no `crypto.subtle` outside secure contexts).

use wasm_bindgen::JsValue;

use crate::error::js_error;
use crate::types::{CreateOptions, ErrorCode, Storage};

/// What the platform offers beyond what every node needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Platform {
    /// `RTCPeerConnection`: direct connections to other browsers (`/webrtc`).
    pub rtc: bool,
}

/// The global object's property at `path` (`["crypto", "getRandomValues"]`), if it is
/// neither `undefined` nor `null`.
fn lookup(path: &[&str]) -> Option<JsValue> {
    let mut v: JsValue = js_sys::global().into();
    for key in path {
        v = js_sys::Reflect::get(&v, &(*key).into()).ok()?;
        if v.is_undefined() || v.is_null() {
            return None;
        }
    }
    Some(v)
}

fn has(path: &[&str]) -> bool {
    lookup(path).is_some()
}

fn unsupported(api: &str, why: &str, instead: &str) -> JsValue {
    js_error(
        ErrorCode::Unsupported,
        format!("this browser has no {api} here, which {why}; {instead}"),
    )
}

/// Checks that the browser has what `options` ask of it.
pub(crate) fn check(options: &CreateOptions) -> Result<Platform, JsValue> {
    if !has(&["crypto", "getRandomValues"]) {
        return Err(unsupported(
            "crypto.getRandomValues (Web Crypto)",
            "the node's key is made with",
            "cairn needs a browser with Web Crypto",
        ));
    }
    if !options.relays.is_empty() && !has(&["WebSocket"]) {
        return Err(unsupported(
            "WebSocket",
            "reaching relays (options.relays) needs",
            "leave options.relays empty to run without a relay",
        ));
    }
    if options.storage.unwrap_or_default() == Storage::Indexeddb && !has(&["indexedDB"]) {
        return Err(unsupported(
            "IndexedDB (it may be turned off, or this is a private window that has none)",
            "the default store keeps blocks in",
            "pass storage: 'memory' to keep blocks in memory instead",
        ));
    }
    let http = !(options.gateways.is_empty() && options.routers.is_empty());
    if http && !(has(&["fetch"]) && has(&["AbortController"])) {
        return Err(unsupported(
            "fetch",
            "asking gateways and routers (options.gateways, options.routers) needs",
            "leave them empty",
        ));
    }
    let rtc = has(&["RTCPeerConnection"]);
    if options.direct == Some(true) && !rtc {
        return Err(unsupported(
            "RTCPeerConnection (WebRTC; Workers have none)",
            "direct connections to other browsers (options.direct) need",
            "create the node in a page, or pass direct: false",
        ));
    }
    Ok(Platform { rtc })
}
