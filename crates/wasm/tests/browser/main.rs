//! cairn in a real browser (headless Chromium): the stores, the node, and the node on the
//! network, one scenario per module.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::wasm_bindgen_test_configure;

wasm_bindgen_test_configure!(run_in_browser);

mod network;
mod node;
mod store;
mod support;
mod transfers;
mod websocket;
