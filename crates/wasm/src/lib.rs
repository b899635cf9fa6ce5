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
pub mod webrtc;

pub use node::CairnNode;

use std::sync::Arc;

use cairn_core::HashAlg;
use cairn_core::source::{Chain, Context};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::unixfs::{self, Profile, Range};
use futures::TryStreamExt;
use wasm_bindgen::prelude::*;

use crate::error::js_error;

/// The cairn version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// A cairn node with an in-memory store (the IndexedDB store comes with the browser node).
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct Node {
    store: Arc<Memory>,
}

#[wasm_bindgen]
impl Node {
    /// A new, empty node.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Node {
        Node::default()
    }

    /// Imports bytes as a UnixFS file; resolves to the root CID.
    ///
    /// `profile`: `"default"` (256 KiB chunks, 174 links) or `"unixfs-v1-2025"`; `hash`:
    /// `"sha2-256"` (default) or `"blake3"`.
    pub async fn add(
        &self,
        data: js_sys::Uint8Array,
        profile: Option<String>,
        hash: Option<String>,
    ) -> Result<String, JsValue> {
        let profile: Profile = profile
            .as_deref()
            .unwrap_or("default")
            .parse()
            .map_err(js_error)?;
        let hash: HashAlg = hash
            .as_deref()
            .unwrap_or("sha2-256")
            .parse()
            .map_err(js_error)?;
        let bytes = data.to_vec();
        let imported = unixfs::import(&*self.store, &bytes[..], profile, hash, |_| {})
            .await
            .map_err(js_error)?;
        Ok(imported.root.to_string())
    }

    /// The bytes of a file this node holds.
    pub async fn cat(&self, cid: String) -> Result<js_sys::Uint8Array, JsValue> {
        let root = cairn_core::cid::parse(&cid).map_err(js_error)?;
        let chain = Chain::new().local(self.store.clone());
        export_all(&chain, root).await
    }

    /// Blocks and bytes held.
    pub async fn stats(&self) -> Result<JsValue, JsValue> {
        stat_object(self.store.stat().await.map_err(js_error)?)
    }
}

/// The whole file under `root`, read through `chain`, as one `Uint8Array`.
async fn export_all(chain: &Chain, root: cairn_core::Cid) -> Result<js_sys::Uint8Array, JsValue> {
    let bytes: Vec<u8> = unixfs::export(chain, root, Range::ALL, 8, &Context::new())
        .map_ok(|b| b.to_vec())
        .try_concat()
        .await
        .map_err(js_error)?;
    Ok(js_sys::Uint8Array::from(&bytes[..]))
}

/// `{ blocks, bytes, quota }` for JS (`quota` is `null` when the store has none).
fn stat_object(st: cairn_core::store::Stat) -> Result<JsValue, JsValue> {
    let obj = js_sys::Object::new();
    js_sys::Reflect::set(&obj, &"blocks".into(), &(st.blocks as f64).into())?;
    js_sys::Reflect::set(&obj, &"bytes".into(), &(st.bytes as f64).into())?;
    let quota = st.quota.map_or(JsValue::NULL, |q| (q as f64).into());
    js_sys::Reflect::set(&obj, &"quota".into(), &quota)?;
    Ok(obj.into())
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
    let store = idb::IdbStore::open(&format!("bench-{}", js_sys::Math::random()), None)
        .await
        .map_err(js_error)?;
    let blocks: Vec<Block> = (0..count)
        .map(|i| {
            let mut data = vec![0u8; size as usize];
            data[..4].copy_from_slice(&i.to_le_bytes());
            Block::from_data(cairn_core::Codec::Raw, HashAlg::Sha2_256, data)
        })
        .collect::<Result<_, _>>()
        .map_err(js_error)?;
    let now = || js_sys::Date::now();
    let started = now();
    if per_block {
        for b in &blocks {
            store.put(b.clone()).await.map_err(js_error)?;
        }
    } else {
        store.put_many(blocks.clone()).await.map_err(js_error)?;
    }
    let put_ms = now() - started;
    let started = now();
    for b in &blocks {
        store.get(b.cid()).await.map_err(js_error)?;
    }
    let get_ms = now() - started;
    store.destroy().await.map_err(js_error)?;
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
