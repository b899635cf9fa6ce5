//! `CairnNode`: the browser node as JavaScript sees it. A libp2p node (WebSocket and
//! WebRTC-direct to relays, circuits through them) over an IndexedDB or in-memory store,
//! whose `cat` asks the local store first and then races the connected peers over
//! `/cas/1.0.0`, verifying every block.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::block::Block;
use cairn_core::cid::Cid;
use cairn_core::source::{Chain, Context, PeerRace};
use cairn_core::store::{self, BlockStore, Memory, Stat};
use cairn_core::unixfs::{self, Profile};
use cairn_core::{HashAlg, dag};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::idb::IdbStore;
use crate::js_error;

/// The node's store: IndexedDB (kept across reloads) or memory.
#[derive(Debug, Clone)]
enum Store {
    Memory(Arc<Memory>),
    Idb(IdbStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s) => $e,
            Store::Idb($s) => $e,
        }
    };
}

impl BlockStore for Store {
    async fn get(&self, cid: &Cid) -> store::Result<Option<Block>> {
        each!(self, s => s.get(cid).await)
    }
    async fn put(&self, block: Block) -> store::Result<bool> {
        each!(self, s => s.put(block).await)
    }
    async fn put_many(&self, blocks: Vec<Block>) -> store::Result<usize> {
        each!(self, s => s.put_many(blocks).await)
    }
    async fn has(&self, cid: &Cid) -> store::Result<bool> {
        each!(self, s => s.has(cid).await)
    }
    async fn delete(&self, cid: &Cid) -> store::Result<bool> {
        each!(self, s => s.delete(cid).await)
    }
    async fn list(&self, after: Option<&Cid>, limit: usize) -> store::Result<Vec<Cid>> {
        each!(self, s => s.list(after, limit).await)
    }
    async fn stat(&self) -> store::Result<Stat> {
        each!(self, s => s.stat().await)
    }
}

/// Reads `options[key]` as a string, if set.
fn opt_string(options: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    let v = js_sys::Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| js_error(format!("options.{key} must be a string")))
}

/// Reads `options[key]` as an array of strings (empty if unset).
fn opt_strings(options: &JsValue, key: &str) -> Result<Vec<String>, JsValue> {
    let v = js_sys::Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(Vec::new());
    }
    if !js_sys::Array::is_array(&v) {
        return Err(js_error(format!(
            "options.{key} must be an array of strings"
        )));
    }
    js_sys::Array::from(&v)
        .iter()
        .map(|s| {
            s.as_string()
                .ok_or_else(|| js_error(format!("options.{key} must hold strings only")))
        })
        .collect()
}

/// Polls `node`'s peer table until `ok` holds for one of `peers` (or any peer when empty),
/// for at most `limit`.
async fn until_peer(
    node: &cairn_p2p::Node,
    peers: &[libp2p::PeerId],
    limit: Duration,
    ok: impl Fn(&cairn_p2p::node::PeerInfo) -> bool,
) -> bool {
    let started = cairn_core::rt::Instant::now();
    loop {
        let table = node.peers();
        if peers.iter().any(|p| table.get(p).is_some_and(&ok)) {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        cairn_core::rt::sleep(Duration::from_millis(50)).await;
    }
}

/// `options.onProgress`, if it is a function.
fn progress_callback(options: &JsValue) -> Result<Option<js_sys::Function>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let f = js_sys::Reflect::get(options, &"onProgress".into()).unwrap_or(JsValue::UNDEFINED);
    if f.is_undefined() || f.is_null() {
        return Ok(None);
    }
    f.dyn_into::<js_sys::Function>()
        .map(Some)
        .map_err(|_| js_error("options.onProgress must be a function"))
}

/// A reader over what `add` was given, and its length when known.
fn reader_of(data: JsValue) -> Result<(Box<dyn futures::AsyncRead + Unpin>, Option<u64>), JsValue> {
    use futures::TryStreamExt;
    if let Some(bytes) = data.dyn_ref::<js_sys::Uint8Array>() {
        let len = bytes.length() as u64;
        return Ok((
            Box::new(futures::io::Cursor::new(bytes.to_vec())),
            Some(len),
        ));
    }
    let (stream, len) = if let Some(blob) = data.dyn_ref::<web_sys::Blob>() {
        (blob.stream(), Some(blob.size() as u64))
    } else if let Ok(stream) = data.clone().dyn_into::<web_sys::ReadableStream>() {
        (stream, None)
    } else {
        return Err(js_error(format!(
            "add takes a Uint8Array, a Blob or File, or a ReadableStream; got {}",
            data.js_typeof().as_string().unwrap_or_default()
        )));
    };
    let chunks = wasm_streams::ReadableStream::from_raw(stream)
        .into_stream()
        .map_err(|e| {
            std::io::Error::other(format!(
                "the stream failed: {}",
                e.as_string().unwrap_or_else(|| format!("{e:?}"))
            ))
        })
        .and_then(|chunk| async move {
            chunk
                .dyn_into::<js_sys::Uint8Array>()
                .map(|c| c.to_vec())
                .map_err(|_| {
                    std::io::Error::other("the stream gave something other than a Uint8Array")
                })
        });
    Ok((Box::new(Box::pin(chunks).into_async_read()), len))
}

/// A cairn node in the browser.
#[wasm_bindgen]
#[derive(Debug)]
pub struct CairnNode {
    node: cairn_p2p::Node,
    store: Store,
    profile: Profile,
}

#[wasm_bindgen]
impl CairnNode {
    /// Starts a node. `options`:
    /// - `relays`: multiaddrs of cairn relays (`/ip4/…/tcp/…/ws/p2p/…`, or
    ///   `/webrtc-direct/certhash/…`); the node connects to each and reserves a slot, so
    ///   other browsers can reach it through the relay;
    /// - `storage`: `"indexeddb"` (default; kept across reloads) or `"memory"`;
    /// - `name`: the IndexedDB database's name (default `"default"`);
    /// - `profile`: the UnixFS import profile, `"default"` or `"unixfs-v1-2025"`.
    ///
    /// Fails if no relay can be reached (when some are given), naming each and why.
    pub async fn create(options: JsValue) -> Result<CairnNode, JsValue> {
        let options = if options.is_undefined() || options.is_null() {
            js_sys::Object::new().into()
        } else {
            options
        };
        let profile: Profile = opt_string(&options, "profile")?
            .as_deref()
            .unwrap_or("default")
            .parse()
            .map_err(js_error)?;
        let store = match opt_string(&options, "storage")?.as_deref() {
            None | Some("indexeddb") => {
                let name = opt_string(&options, "name")?.unwrap_or_else(|| "default".into());
                Store::Idb(IdbStore::open(&name, None).await.map_err(js_error)?)
            }
            Some("memory") => Store::Memory(Arc::new(Memory::new())),
            Some(other) => {
                return Err(js_error(format!(
                    "options.storage is \"{other}\"; use \"indexeddb\" or \"memory\""
                )));
            }
        };
        let relays: Vec<Multiaddr> = opt_strings(&options, "relays")?
            .iter()
            .map(|r| {
                r.parse::<Multiaddr>()
                    .map_err(|e| js_error(format!("relay address {r} is not a multiaddr: {e}")))
            })
            .collect::<Result<_, _>>()?;

        // The circuit listen addresses are announced as external ones (the default), so
        // provider records carry them.
        let config = cairn_p2p::node::Config::default();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let swarm = crate::net::swarm(key, &config).map_err(js_error)?;
        let (node, driver) = cairn_p2p::Node::new(swarm, store.clone(), config);
        wasm_bindgen_futures::spawn_local(driver);

        let mut failures = Vec::new();
        let mut reached = 0;
        for relay in &relays {
            let dialed =
                cairn_core::rt::timeout(Duration::from_secs(15), node.dial(relay.clone())).await;
            match dialed {
                Some(Ok(peer)) => {
                    reached += 1;
                    // Identify puts the relay in the DHT table; provider records need it.
                    until_peer(&node, &[peer], Duration::from_secs(5), |p| {
                        p.agent.is_some()
                    })
                    .await;
                    let circuit = relay.clone().with(Protocol::P2pCircuit);
                    if let Err(e) = node.listen(circuit).await {
                        failures.push(format!("{relay}: no reservation ({e})"));
                    }
                }
                Some(Err(e)) => failures.push(format!("{relay}: {e}")),
                None => failures.push(format!("{relay}: no answer within 15 s")),
            }
        }
        if !relays.is_empty() && reached == 0 {
            node.stop().await;
            return Err(js_error(format!(
                "cannot reach any relay: {}. Check the addresses and that the relay runs",
                failures.join("; ")
            )));
        }
        for f in &failures {
            web_sys::console::warn_1(&format!("cairn: relay {f}").into());
        }
        Ok(CairnNode {
            node,
            store,
            profile,
        })
    }

    /// This node's peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.node.peer_id().to_string()
    }

    /// Imports `data` (a `Uint8Array`, a `Blob` or `File`, or a `ReadableStream` of
    /// `Uint8Array`s) as a UnixFS file into the node's store, streaming: a large file is never
    /// held in memory whole. Then announces it through the relays' DHT (a provider record;
    /// failing that, the file is still added). Resolves to the root CID.
    ///
    /// `options.onProgress`, if given, is called with `{ bytesDone, bytesTotal }` as the
    /// import goes: after each 4 MiB stored, and at the end (`bytesTotal` is absent for a
    /// stream).
    pub async fn add(&self, data: JsValue, options: JsValue) -> Result<String, JsValue> {
        let on_progress = progress_callback(&options)?;
        let (reader, total) = reader_of(data)?;
        let report = |done: u64| {
            if let Some(f) = &on_progress {
                let event = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&event, &"bytesDone".into(), &(done as f64).into());
                if let Some(t) = total {
                    let _ = js_sys::Reflect::set(&event, &"bytesTotal".into(), &(t as f64).into());
                }
                let _ = f.call1(&JsValue::NULL, &event);
            }
        };
        let imported = unixfs::import(&self.store, reader, self.profile, HashAlg::Sha2_256, report)
            .await
            .map_err(js_error)?;
        let provided =
            cairn_core::rt::timeout(Duration::from_secs(10), self.node.provide(imported.root))
                .await;
        if !matches!(provided, Some(Ok(()))) {
            let why = match provided {
                Some(Err(e)) => e.to_string(),
                _ => "no answer within 10 s".into(),
            };
            web_sys::console::warn_1(
                &format!("cairn: {} added but not announced: {why}", imported.root).into(),
            );
        }
        Ok(imported.root.to_string())
    }

    /// The bytes of a file: from the local store, else from peers (raced, verified, kept
    /// locally as they arrive). When the root is not held, the relays' DHT is asked who
    /// provides it, and those peers are reached (through relay circuits) first.
    pub async fn cat(&self, cid: String) -> Result<js_sys::Uint8Array, JsValue> {
        let root = cairn_core::cid::parse(&cid).map_err(js_error)?;
        if !self.store.has(&root).await.map_err(js_error)? {
            let found =
                cairn_core::rt::timeout(Duration::from_secs(10), self.node.find_providers(root))
                    .await;
            if let Some(Ok(providers)) = found
                && !providers.is_empty()
            {
                // They are being dialed; wait until one speaks /cas.
                until_peer(&self.node, &providers, Duration::from_secs(10), |p| p.cas).await;
            }
        }
        let chain = Chain::new().local(self.store.clone()).source(
            PeerRace::new(self.node.clone()),
            Some(Duration::from_secs(30)),
        );
        let ctx = Context::new();
        dag::fetch(
            &chain,
            &self.store,
            root,
            dag::Options::default(),
            &ctx,
            |_| {},
        )
        .await
        .map_err(js_error)?;
        crate::export_all(&chain, root).await
    }

    /// Connected peers: `[{ peerId, relayed, cas, agent }]`.
    pub fn peers(&self) -> Result<JsValue, JsValue> {
        let out = js_sys::Array::new();
        for (id, info) in self.node.peers() {
            let o = js_sys::Object::new();
            js_sys::Reflect::set(&o, &"peerId".into(), &id.to_string().into())?;
            js_sys::Reflect::set(&o, &"relayed".into(), &info.relayed.into())?;
            js_sys::Reflect::set(&o, &"cas".into(), &info.cas.into())?;
            if let Some(a) = info.agent {
                js_sys::Reflect::set(&o, &"agent".into(), &a.into())?;
            }
            out.push(&o);
        }
        Ok(out.into())
    }

    /// Blocks and bytes held: `{ blocks, bytes }`.
    pub async fn stats(&self) -> Result<JsValue, JsValue> {
        crate::stat_object(self.store.stat().await.map_err(js_error)?)
    }

    /// Stops the node: closes its connections.
    pub async fn stop(&self) {
        self.node.stop().await;
    }
}
