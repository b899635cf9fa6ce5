#![doc = include_str!("../README.md")]
#![cfg(target_arch = "wasm32")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod error;
pub mod http;
pub mod idb;
mod js;
pub mod net;
mod node;
mod platform;
pub mod types;
pub mod webcrypto;
pub mod webrtc;
pub mod websocket;

pub use error::ErrorCode;
pub use node::CairnNode;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, Context};
use cairn_core::unixfs::{self, Range};
use futures::TryStreamExt;
use wasm_bindgen::prelude::*;

use crate::error::coded;

/// The cairn version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// The whole file under `root`, read through `chain`, as one `Uint8Array`.
async fn export_all(chain: &Chain, root: cairn_core::Cid) -> Result<js_sys::Uint8Array, JsValue> {
    let bytes: Vec<u8> = unixfs::export(chain, root, Range::ALL, 8, &Context::new())
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .map_err(|e| coded(format!("cannot read {root}"), &e))?;
    Ok(js_sys::Uint8Array::from(&bytes[..]))
}

/// For `cargo xtask bench` (not part of the API): writes `count` blocks of `size` bytes into
/// a fresh IndexedDB store, in one batch or one transaction per block (as the `blockstore`
/// crate's IndexedDB backend does), then reads them back one by one; resolves to
/// `{ putMs, getMs, bytes }` and deletes the database.
#[doc(hidden)]
#[wasm_bindgen(js_name = benchIndexedDb)]
pub async fn bench_indexed_db(count: u32, size: u32, per_block: bool) -> Result<JsValue, JsValue> {
    use cairn_core::block::Block;
    use cairn_core::store::BlockStore;
    fn internal(e: impl std::fmt::Display) -> JsValue {
        crate::error::js_error(ErrorCode::Internal, e)
    }
    let store = idb::IdbStore::open(&format!("bench-{}", js_sys::Math::random()), None)
        .await
        .map_err(internal)?;
    let blocks: Vec<Block> = (0..count)
        .map(|i| {
            let mut data = vec![0u8; size as usize];
            data[..4].copy_from_slice(&i.to_le_bytes());
            Block::from_data(cairn_core::Codec::Raw, HashAlg::Sha2_256, data)
        })
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    let now = || js_sys::Date::now();
    let started = now();
    if per_block {
        for b in &blocks {
            store.put(b.clone()).await.map_err(internal)?;
        }
    } else {
        store.put_many(blocks.clone()).await.map_err(internal)?;
    }
    let put_ms = now() - started;
    let started = now();
    for b in &blocks {
        store.get(b.cid()).await.map_err(internal)?;
    }
    let get_ms = now() - started;
    store.destroy().await.map_err(internal)?;
    let out = js_sys::Object::new();
    js_sys::Reflect::set(&out, &"putMs".into(), &put_ms.into())?;
    js_sys::Reflect::set(&out, &"getMs".into(), &get_ms.into())?;
    js_sys::Reflect::set(
        &out,
        &"bytes".into(),
        &(f64::from(count) * f64::from(size)).into(),
    )?;
    Ok(out.into())
}
