//! cairn in the browser.
#![cfg(target_arch = "wasm32")]
