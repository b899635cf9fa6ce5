//! `CairnNode`: the browser node as JavaScript sees it. A cairn-p2p node (WebSocket to
//! relays, circuits through them, direct WebRTC between browsers) over an IndexedDB or
//! in-memory store. Reads go through the chain cairn-p2p assembles: local store → `/cas`
//! peers (connected, then found through the relays' DHT) → IPFS peers over bitswap →
//! HTTP gateways via `fetch()`, every block verified and kept locally as it arrives.
//!
//! Options and results are the types of [`crate::types`] (TypeScript generated from them);
//! every failure is an `Error` with a `code` ([`crate::error`]).

mod start;
mod store;
mod transfers;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use cairn_core::cid::Cid;
use cairn_core::source::Chain;
use cairn_core::source::Context;
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Profile, Range, dir};
use cairn_core::{HashAlg, dag, pin};
use cairn_p2p::sources::Sources;
use futures::{SinkExt, StreamExt};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use wasm_bindgen::prelude::*;

use self::store::{InUse, Store};
use crate::error::{ErrorCode, coded, invalid, js_error};
use crate::http::Fetch;
use crate::js::{self, Abort, present};
use crate::types::{
    AddOptions, AddProgress, CatOptions, CatStreamOptions, CreateOptions, DirEntry, EvictOptions,
    Evicted, FetchProgress, FetchReport, PeerInfo, PinOptions, ReplicaInfo, Stats,
};

fn parse_cid(cid: &str) -> Result<Cid, JsValue> {
    cairn_core::cid::parse(cid.trim()).map_err(|e| {
        coded(
            format!("\"{cid}\" is not a CID (expected something like bafy…)"),
            &e,
        )
    })
}

/// An `addAll` entry's `mode` (permission bits; the low 12 are kept) and `mtime` (a `Date`,
/// milliseconds since 1970, or Helia's `{ secs, nsecs }`), as Helia's importer takes them.
fn entry_metadata(i: usize, item: &JsValue) -> Result<dir::Metadata, JsValue> {
    use wasm_bindgen::JsCast;
    let field = |name: &str| present(item, name);
    let whole = |v: &JsValue| v.as_f64().filter(|n| n.fract() == 0.0 && n.is_finite());
    let mode = match field("mode") {
        None => None,
        Some(v) => match whole(&v).filter(|n| (0.0..=f64::from(u32::MAX)).contains(n)) {
            Some(n) => Some(n as u32),
            None => {
                return Err(invalid(format!(
                    "entry {i}: `mode` must be a whole number of permission bits, such as 0o644"
                )));
            }
        },
    };
    // Milliseconds since 1970 (of a Date, or given as a number): seconds down, the rest in
    // nanoseconds, as Helia turns a Date into an mtime.
    let from_ms = |ms: f64| {
        let secs = (ms / 1000.0).floor();
        let nsecs = ((ms - secs * 1000.0) * 1_000_000.0).round() as u32;
        unixfs::pb::Mtime {
            secs: secs as i64,
            nsecs: (nsecs > 0).then_some(nsecs),
        }
    };
    let bad_mtime = || {
        invalid(format!(
            "entry {i}: `mtime` must be a Date, milliseconds since 1970, or {{ secs, nsecs }} with nsecs under 1,000,000,000"
        ))
    };
    let mtime = match field("mtime") {
        None => None,
        Some(v) => Some(if let Some(d) = v.dyn_ref::<js_sys::Date>() {
            // An invalid Date's time is NaN.
            let ms = d.get_time();
            if !ms.is_finite() {
                return Err(bad_mtime());
            }
            from_ms(ms)
        } else if let Some(ms) = whole(&v) {
            from_ms(ms)
        } else if v.is_object() {
            let part = |name: &str| present(&v, name);
            let secs = match part("secs") {
                Some(s) if s.is_bigint() => {
                    i64::try_from(js_sys::BigInt::unchecked_from_js(s)).ok()
                }
                Some(s) => whole(&s).map(|n| n as i64),
                None => None,
            };
            let nsecs = match part("nsecs") {
                None => Some(None),
                Some(n) => whole(&n)
                    .filter(|n| (0.0..1e9).contains(n))
                    .map(|n| Some(n as u32)),
            };
            match (secs, nsecs) {
                (Some(secs), Some(nsecs)) => unixfs::pb::Mtime { secs, nsecs },
                _ => return Err(bad_mtime()),
            }
        } else {
            return Err(bad_mtime());
        }),
    };
    Ok(dir::Metadata { mode, mtime })
}

/// `CID`, `CID/path/in/it` or `/ipfs/CID/path`: the CID and the path.
fn parse_target(text: &str) -> Result<(Cid, String), JsValue> {
    let (c, path) = dir::split_target(text);
    Ok((parse_cid(c)?, path.to_owned()))
}

impl Inner {
    /// What `text` names: its root CID, and the CID its path leads to (the root itself
    /// without a path), read through the directories on the way (only their blocks).
    async fn resolve(&self, text: &str, ctx: &Context) -> Result<(Cid, Cid), JsValue> {
        let (root, path) = parse_target(text)?;
        if path.split('/').all(str::is_empty) {
            return Ok((root, root));
        }
        let chain = self.chain(root);
        let target = dir::resolve(&chain, ctx, root, &path)
            .await
            .map_err(|e| coded(format!("cannot follow {text}"), &e))?;
        Ok((root, target))
    }
}

impl Inner {
    /// Has `wanted` copies of the DAG under `root` (held here in full) kept on connected
    /// peers, or says why not.
    async fn replicate(&self, root: Cid, wanted: usize) -> Result<(), JsValue> {
        let local = Chain::new().local(self.store.clone());
        let mut blocks = Vec::new();
        let report = dag::fetch(
            &local,
            &self.store,
            root,
            dag::Options::default(),
            &Context::new(),
            |p| {
                if let Some((c, _)) = p.last {
                    blocks.push(c);
                }
            },
        )
        .await
        .map_err(|e| coded(format!("{root} is not held in full here"), &e))?;
        let candidates: Vec<libp2p::PeerId> = self.node.peers().into_keys().collect();
        let out = self
            .replicas
            .ensure(
                root,
                report.progress.bytes_done,
                &blocks,
                wanted,
                &candidates,
            )
            .await;
        if out.confirmed.len() >= wanted {
            return Ok(());
        }
        let why: Vec<String> = out.refused.into_iter().chain(out.failed_checks).collect();
        Err(js_error(
            ErrorCode::Unreachable,
            format!(
                "pinned here, but {} of {wanted} copies are kept elsewhere ({}); they are asked for again every 10 minutes",
                out.confirmed.len(),
                if why.is_empty() {
                    "no connected peer keeps content for others".to_owned()
                } else {
                    why.join("; ")
                }
            ),
        ))
    }

    /// The addresses through the relays that hold a reservation for this node now, each
    /// ending in `/p2p/<this node>`, sorted.
    fn addresses(&self) -> Vec<Multiaddr> {
        let me = self.node.peer_id();
        let mut out: Vec<Multiaddr> = self
            .node
            .listen_addrs()
            .into_iter()
            .filter(|a| a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
            .map(|a| a.with_p2p(me).unwrap_or_else(|a| a))
            .collect();
        out.sort_by_key(ToString::to_string);
        out.dedup();
        out
    }
}

/// What every call of a node shares.
#[derive(Debug, Clone)]
struct Inner {
    node: cairn_p2p::Node,
    store: Store,
    profile: Profile,
    sources: Sources,
    in_use: InUse,
    /// Whether the node was given relays.
    relayed: bool,
    /// Whether direct `/webrtc` connections to other browsers are made.
    direct: bool,
    /// The Web Lock on the kept identity, released by `stop`.
    lock: Rc<RefCell<Option<js::Lock>>>,
    /// The transfer queue (`enqueue`).
    transfers: cairn_core::transfer::Transfers,
    /// Copies kept on other peers (`pin`'s `replicas`).
    replicas: cairn_p2p::pinning::Replicas,
}

impl Inner {
    /// The source chain for reading part of the DAG under `root` (a path, a range, a size):
    /// blocks are asked for as they are wanted.
    fn chain(&self, root: Cid) -> Chain {
        self.sources
            .chain_below(Some(&self.node), self.store.clone(), &Fetch, root, None)
    }

    /// The source chain for reading `target` through (a fetch, a listing), under `top` (the
    /// CID the caller named, which providers are looked up by): the first peer asked for
    /// `target` is asked for the DAG's structure under it in one answer
    /// ([`Sources::chain_below`]).
    fn whole_chain(&self, top: Cid, target: Cid) -> Chain {
        self.sources.chain_below(
            Some(&self.node),
            self.store.clone(),
            &Fetch,
            top,
            Some(target),
        )
    }

    /// Fetches the whole DAG under `root` into the store, reporting to `on_progress`; `top`
    /// is the CID the caller named (`root`, or a directory `root` is under), whose providers
    /// the peers are looked up by.
    async fn fetch_dag(
        &self,
        top: Cid,
        root: Cid,
        abort: &Abort,
        on_progress: Option<&js_sys::Function>,
    ) -> Result<dag::Report, JsValue> {
        let chain = self.whole_chain(top, root);
        let ctx = abort.context();
        let report = |p: &dag::Progress| {
            if let Some(f) = on_progress {
                let _ = f.call1(&JsValue::NULL, &js::to_js(&FetchProgress::from(p)));
            }
        };
        dag::fetch(&chain, &self.store, root, dag::Options::default(), &ctx, report)
            .await
            .map_err(|e| {
                coded(
                    format!("cannot fetch {root}; the blocks fetched so far are kept, so asking again resumes"),
                    &e,
                )
            })
    }
}

/// A cairn node in the browser.
#[wasm_bindgen]
#[derive(Debug)]
pub struct CairnNode {
    inner: Inner,
}

#[wasm_bindgen]
impl CairnNode {
    /// Starts a node (see `CreateOptions`). Fails if no relay can be reached (when some are
    /// given), naming each and why.
    pub async fn create(
        #[wasm_bindgen(unchecked_optional_param_type = "CreateOptions")] options: JsValue,
    ) -> Result<CairnNode, JsValue> {
        let options: CreateOptions = js::options(options)?;
        Ok(CairnNode {
            inner: start::start(options).await?,
        })
    }

    /// Connects to a peer at `addr`, a multiaddr: a relay, a peer's circuit address
    /// (`…/p2p-circuit/p2p/<peer>`), or its `/webrtc` address through a relay
    /// (`…/p2p-circuit/webrtc/p2p/<peer>`): then the relayed connection is made first and
    /// moved to a direct one, and the call fails (saying why, the relayed connection kept)
    /// if no direct one could be made. Resolves with the peer's id; gives up after 30 s.
    pub async fn connect(&self, addr: String) -> Result<String, JsValue> {
        let ma: Multiaddr = addr.parse().map_err(|e| {
            crate::error::js_error_from(
                ErrorCode::InvalidArgument,
                format!("\"{addr}\" is not a multiaddr"),
                &e,
            )
        })?;
        let webrtc = ma.iter().any(|p| matches!(p, Protocol::WebRTC));
        if webrtc && !self.inner.direct {
            return Err(invalid(
                "direct connections are turned off (options.direct is false)",
            ));
        }
        let circuit: Multiaddr = ma
            .iter()
            .filter(|p| !matches!(p, Protocol::WebRTC))
            .collect();
        let limit = Duration::from_secs(30);
        let node = &self.inner.node;
        let work = async {
            let peer = node
                .dial(circuit)
                .await
                .map_err(|e| coded(format!("cannot connect to {addr}"), &e))?;
            if !webrtc {
                return Ok(peer.to_string());
            }
            // The driver tries `/webrtc` once identify says the peer speaks it.
            node.wait_for(&[peer], limit, |i| {
                i.identified() && !i.upgrading && (i.direct || i.direct_error.is_some())
            })
            .await;
            let info = node.peer(&peer).unwrap_or_default();
            if info.direct {
                Ok(peer.to_string())
            } else {
                Err(js_error(
                    ErrorCode::Unreachable,
                    format!(
                        "connected to {peer} through the relay, but not directly: {}",
                        info.direct_error.map_or_else(
                            || "the peer did not answer in time".into(),
                            |e| e.to_string()
                        )
                    ),
                ))
            }
        };
        cairn_core::rt::timeout(limit, work)
            .await
            .unwrap_or_else(|| {
                Err(js_error(
                    ErrorCode::Timeout,
                    format!("cannot connect to {addr} within 30 s"),
                ))
            })
    }

    /// This node's peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.inner.node.peer_id().to_string()
    }

    /// The addresses other nodes reach this one at: per relay that holds a reservation for
    /// it, its `/p2p-circuit` address and (unless `direct: false`) its
    /// `/p2p-circuit/webrtc` one.
    #[wasm_bindgen(getter)]
    pub fn addresses(&self) -> Vec<String> {
        self.inner
            .addresses()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Imports `data` (a `Uint8Array`, a `Blob` or `File`, or a `ReadableStream` of
    /// `Uint8Array`s) as a UnixFS file into the node's store, streaming: a large file is never
    /// held in memory whole. Pins the root (unless `options.pin` is `false`) and announces it
    /// through the relays' DHT (a provider record; failing that, the file is still added).
    /// Resolves to the root CID. A failed or cancelled add deletes the blocks it added (the
    /// importer's own clean-up), so the store holds no half-added file.
    pub async fn add(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | Blob | ReadableStream<Uint8Array>")]
        data: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "AddOptions")] options: JsValue,
    ) -> Result<String, JsValue> {
        let options: AddOptions = js::options(options)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "add")?;
        let (reader, total) = js::reader_of(data)?;
        let inner = &self.inner;
        let report = |done: u64| {
            if let Some(f) = &on_progress {
                let p = AddProgress {
                    bytes_done: done,
                    bytes_total: total,
                };
                let _ = f.call1(&JsValue::NULL, &js::to_js(&p));
            }
        };
        let reader = abort.reader(reader);
        // The import's blocks stay held until the root is pinned, so an eviction in between
        // cannot take them (`cairn_core::live`).
        let mut op = cairn_core::live::Live::global().operation();
        // Leaves are hashed by WebCrypto where the page has it (`webcrypto`).
        let imported = unixfs::import_hashing(
            &inner.store,
            reader,
            unixfs::Importer::new(inner.profile, HashAlg::Sha2_256),
            &crate::webcrypto::WebCrypto::new(),
            report,
            &mut op,
        )
        .await;
        let imported = match imported {
            Ok(i) => i,
            Err(e) => {
                op.abandon(&inner.store).await;
                return Err(if abort.is_aborted() {
                    abort.aborted("add")
                } else {
                    coded("cannot add the data", &e)
                });
            }
        };
        let root = imported.root;
        if options.pin.unwrap_or(true) {
            inner
                .store
                .set_pinned(&root, true)
                .await
                .map_err(|e| coded(format!("{root} was added but not pinned"), &e))?;
        }
        op.finish();
        let provided =
            cairn_core::rt::timeout(Duration::from_secs(10), inner.node.provide(root)).await;
        if !matches!(provided, Some(Ok(()))) && inner.relayed {
            let why = match provided {
                Some(Err(e)) => e.to_string(),
                _ => "no answer within 10 s".into(),
            };
            web_sys::console::warn_1(
                &format!("cairn: {root} added but not announced: {why}").into(),
            );
        }
        Ok(root.to_string())
    }

    /// Imports several files as one UnixFS directory tree and resolves to its root CID: the
    /// directory holding the entries' paths, so every name survives (as Helia's `addAll` with
    /// `wrapWithDirectory`). `entries` is a `FileList` (from `<input type="file" multiple>`,
    /// or `webkitdirectory`, whose files keep their `webkitRelativePath`), or an array of
    /// `File`s and of `{ path, content }` (`content` as `add` takes it; none for an empty
    /// directory). Files are streamed, one at a time. The root CID equals Helia's for the same
    /// tree and profile (a directory past 256 KiB of links becomes a HAMT). Paths with `..`,
    /// `.`, NUL, a name over 255 bytes or the same path twice are refused before anything is
    /// stored; a failed or cancelled add keeps nothing of it.
    #[wasm_bindgen(js_name = addAll)]
    pub async fn add_all(
        &self,
        #[wasm_bindgen(
            unchecked_param_type = "FileList | Array<File | { path: string, content?: Uint8Array | Blob | ReadableStream<Uint8Array>, mode?: number, mtime?: Date | number | { secs: number | bigint, nsecs?: number } }>"
        )]
        entries: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "AddOptions")] options: JsValue,
    ) -> Result<String, JsValue> {
        use wasm_bindgen::JsCast;
        let options: AddOptions = js::options(options)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "addAll")?;
        if entries.is_null() || entries.is_undefined() {
            return Err(invalid(
                "addAll takes a FileList or an array of files and { path, content }",
            ));
        }
        let list = js_sys::Array::from(&entries);
        // Every path is checked before anything is stored.
        let mut items = Vec::with_capacity(list.length() as usize);
        let mut check = dir::TreeBuilder::new(self.inner.profile, HashAlg::Sha2_256);
        let mut total = Some(0u64);
        let dummy = dir::Entry {
            cid: Cid::default(),
            tsize: 0,
        };
        for (i, item) in list.iter().enumerate() {
            let (path, content, meta) = if let Some(f) = item.dyn_ref::<web_sys::File>() {
                let rel = js_sys::Reflect::get(f, &"webkitRelativePath".into())
                    .ok()
                    .and_then(|v| v.as_string())
                    .filter(|p| !p.is_empty());
                (
                    rel.unwrap_or_else(|| f.name()),
                    Some(item.clone()),
                    dir::Metadata::default(),
                )
            } else if item.is_object() {
                let path = js_sys::Reflect::get(&item, &"path".into())
                    .ok()
                    .and_then(|v| v.as_string())
                    .ok_or_else(|| invalid(format!("entry {i} has no `path` string")))?;
                let content = present(&item, "content");
                (path, content, entry_metadata(i, &item)?)
            } else {
                return Err(invalid(format!(
                    "entry {i} is neither a File nor {{ path, content }}"
                )));
            };
            let checked = match &content {
                Some(_) => check.add(&path, dummy),
                None => check.add_dir(&path, meta),
            };
            checked.map_err(|e| coded(format!("entry {i}"), &e))?;
            total = match (&content, total) {
                (Some(c), Some(t)) => c
                    .dyn_ref::<web_sys::Blob>()
                    .map(|b| t + b.size() as u64)
                    .or_else(|| {
                        c.dyn_ref::<js_sys::Uint8Array>()
                            .map(|u| t + u64::from(u.length()))
                    }),
                (None, t) => t,
                _ => None,
            };
            items.push((path, content, meta));
        }
        if items.is_empty() {
            return Err(invalid("addAll was given no entries"));
        }
        let inner = &self.inner;
        let mut op = cairn_core::live::Live::global().operation();
        let result =
            abort
                .run("addAll", async {
                    let mut tree = dir::TreeBuilder::new(inner.profile, HashAlg::Sha2_256);
                    let mut before = 0u64;
                    for (path, content, meta) in items {
                        let Some(content) = content else {
                            tree.add_dir(&path, meta).map_err(|e| coded(&path, &e))?;
                            continue;
                        };
                        let (reader, _) = js::reader_of(content)?;
                        let reader = abort.reader(reader);
                        let report = |done: u64| {
                            if let Some(f) = &on_progress {
                                let p = AddProgress {
                                    bytes_done: before + done,
                                    bytes_total: total,
                                };
                                let _ = f.call1(&JsValue::NULL, &js::to_js(&p));
                            }
                        };
                        let imported = unixfs::import_hashing(
                            &inner.store,
                            reader,
                            unixfs::Importer::new(inner.profile, HashAlg::Sha2_256).metadata(meta),
                            &crate::webcrypto::WebCrypto::new(),
                            report,
                            &mut op,
                        )
                        .await
                        .map_err(|e| coded(format!("cannot add {path}"), &e))?;
                        before += imported.size;
                        tree.add(
                            &path,
                            dir::Entry {
                                cid: imported.root,
                                tsize: imported.dag_size,
                            },
                        )
                        .map_err(|e| coded(&path, &e))?;
                    }
                    let mut blocks = Vec::new();
                    let root = tree
                        .finish(&mut blocks)
                        .map_err(|e| invalid(e.to_string()))?;
                    op.put_many(&inner.store, blocks)
                        .await
                        .map_err(|e| coded("cannot store the directories", &e))?;
                    if options.pin.unwrap_or(true) {
                        inner.store.set_pinned(&root.cid, true).await.map_err(|e| {
                            coded(format!("{} was added but not pinned", root.cid), &e)
                        })?;
                    }
                    Ok(root.cid)
                })
                .await;
        let root = match result {
            Ok(r) => r,
            Err(e) => {
                op.abandon(&inner.store).await;
                return Err(e);
            }
        };
        op.finish();
        let provided =
            cairn_core::rt::timeout(Duration::from_secs(10), inner.node.provide(root)).await;
        if !matches!(provided, Some(Ok(()))) && inner.relayed {
            web_sys::console::warn_1(&format!("cairn: {root} added but not announced").into());
        }
        Ok(root.to_string())
    }

    /// The entries of a directory (`cid`, `cid/path`, or `/ipfs/cid/path`): each one's
    /// `name`, `cid`, `size` (its DAG's, as the link records it) and `type`, in the
    /// directory's order (by name; a HAMT's in hash order). Only the directory's own blocks
    /// and each entry's root block (for its type) are fetched, 32 entries' at a time.
    #[wasm_bindgen(unchecked_return_type = "DirEntry[]")]
    pub async fn ls(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CatOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let options: CatOptions = js::options(options)?;
        parse_target(&cid)?;
        let abort = Abort::new(&options.signal, "ls")?;
        abort
            .run("ls", async {
                let ctx = abort.context();
                let (top, target) = self.inner.resolve(&cid, &ctx).await?;
                let chain = self.inner.whole_chain(top, target);
                let out = js_sys::Array::new();
                let mut listing = std::pin::pin!(dir::ls_stat(&chain, &ctx, target));
                while let Some(item) = listing.next().await {
                    let dir::Stat { entry: e, stat } =
                        item.map_err(|e| coded(format!("cannot list {cid}"), &e))?;
                    let kind = match stat {
                        Ok((dir::Kind::File, _)) => "file",
                        Ok((dir::Kind::Directory, _)) => "directory",
                        Ok((dir::Kind::Symlink, _)) => "symlink",
                        Ok((dir::Kind::Other, _)) => "other",
                        Err(err) => {
                            return Err(coded(format!("cannot read {}", e.name), &err));
                        }
                    };
                    out.push(&js::to_js(&DirEntry {
                        name: e.name,
                        cid: e.cid.to_string(),
                        size: e.tsize,
                        kind: kind.into(),
                    }));
                }
                Ok(out.into())
            })
            .await
    }

    /// The bytes of a file, whole: from the local store, else fetched (local → peers → IPFS
    /// → gateways), verified, and kept locally as they arrive. When no connected peer has a
    /// block, the relays' DHT is asked who provides the file, and those peers are reached
    /// through relay circuits. An interrupted fetch resumes: blocks already stored are not
    /// fetched again. Rejects with an `AbortError` when aborted.
    pub async fn cat(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CatOptions")] options: JsValue,
    ) -> Result<js_sys::Uint8Array, JsValue> {
        let options: CatOptions = js::options(options)?;
        parse_target(&cid)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "cat")?;
        abort
            .run("cat", async {
                let (top, root) = self.inner.resolve(&cid, &abort.context()).await?;
                let _using = self.inner.in_use.hold(root);
                self.inner
                    .fetch_dag(top, root, &abort, on_progress.as_ref())
                    .await?;
                let local = Chain::new().local(self.inner.store.clone());
                crate::export_all(&local, root).await
            })
            .await
    }

    /// Fetches the whole DAG under `cid` into the local store (as `cat` does, with the same
    /// `options`), without returning its bytes: read them afterwards with `catStream`, from
    /// the store, without holding the file in memory.
    #[wasm_bindgen(unchecked_return_type = "FetchReport")]
    pub async fn fetch(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CatOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let options: CatOptions = js::options(options)?;
        parse_target(&cid)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "fetch")?;
        abort
            .run("fetch", async {
                let (top, root) = self.inner.resolve(&cid, &abort.context()).await?;
                let _using = self.inner.in_use.hold(root);
                let report = self
                    .inner
                    .fetch_dag(top, root, &abort, on_progress.as_ref())
                    .await?;
                Ok(js::to_js(&FetchReport {
                    progress: FetchProgress::from(&report.progress),
                    elapsed_ms: report.elapsed.as_secs_f64() * 1000.0,
                }))
            })
            .await
    }

    /// The bytes of a file (or of `length` bytes from `offset`) as a `ReadableStream` of
    /// `Uint8Array`s, fetched as they are read (only the blocks the range needs). Cancelling
    /// the stream, or `options.signal`, stops the fetch.
    #[wasm_bindgen(js_name = catStream, unchecked_return_type = "ReadableStream<Uint8Array>")]
    pub fn cat_stream(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CatStreamOptions")] options: JsValue,
    ) -> Result<web_sys::ReadableStream, JsValue> {
        let options: CatStreamOptions = js::options(options)?;
        parse_target(&cid)?;
        let range = Range {
            offset: options.offset.unwrap_or(0),
            length: options.length,
        };
        let abort = Abort::new(&options.signal, "catStream")?;
        let inner = self.inner.clone();
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<JsValue, JsValue>>(2);
        wasm_bindgen_futures::spawn_local(async move {
            let ctx = abort.context();
            let (top, root) = match inner.resolve(&cid, &ctx).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let _using = inner.in_use.hold(root);
            let chain = if range == Range::ALL {
                inner.whole_chain(top, root)
            } else {
                inner.chain(top)
            };
            let bytes = unixfs::export(&chain, root, range, cairn_core::dag::WINDOW, &ctx);
            futures::pin_mut!(bytes);
            while let Some(chunk) = bytes.next().await {
                let item = match chunk {
                    Ok(b) => Ok(JsValue::from(js_sys::Uint8Array::from(&b[..]))),
                    Err(_) if abort.is_aborted() => Err(abort.aborted("catStream")),
                    Err(e) => Err(coded(format!("cannot read {root}"), &e)),
                };
                let failed = item.is_err();
                // A send fails when the reader cancelled the stream: stop fetching.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(wasm_streams::ReadableStream::from_stream(rx).into_raw())
    }

    /// Fetches the whole DAG under `cid` (as `cat` does, with the same `options`) and pins
    /// it: eviction never deletes a pinned DAG. With `options.replicas`, connected peers
    /// that keep content for others are asked for that many copies too (each checked);
    /// the call rejects, the local pin kept, when fewer would.
    pub async fn pin(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "PinOptions")] options: JsValue,
    ) -> Result<(), JsValue> {
        let options: PinOptions = js::options(options)?;
        let wanted = options.replicas.unwrap_or(0) as usize;
        parse_target(&cid)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "pin")?;
        abort
            .run("pin", async {
                let (top, root) = self.inner.resolve(&cid, &abort.context()).await?;
                let _using = self.inner.in_use.hold(root);
                self.inner
                    .fetch_dag(top, root, &abort, on_progress.as_ref())
                    .await?;
                self.inner
                    .store
                    .set_pinned(&root, true)
                    .await
                    .map_err(|e| coded("cannot record the pin", &e))?;
                if wanted > 0 {
                    self.inner.replicate(root, wanted).await?;
                }
                Ok(())
            })
            .await
    }

    /// The peers keeping a copy of `cid` for this node (see `pin`'s `replicas`).
    #[wasm_bindgen(unchecked_return_type = "ReplicaInfo[]")]
    pub async fn replicas(&self, cid: String) -> Result<JsValue, JsValue> {
        let root = parse_cid(&cid)?;
        let trust = self.inner.replicas.trust();
        let list: Vec<ReplicaInfo> = self
            .inner
            .replicas
            .of(&root)
            .into_iter()
            .map(|r| ReplicaInfo {
                peer_id: r.peer.to_string(),
                checks: r.checks,
                trust: trust.of(&r.peer),
            })
            .collect();
        Ok(js::to_js(&list))
    }

    /// The size in bytes of the file under `cid`, read from its root block alone (from the
    /// local store, else fetched like any block): what a download's `Content-Length` or a
    /// progress bar needs without reading the file.
    pub async fn size(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CatOptions")] options: JsValue,
    ) -> Result<f64, JsValue> {
        let options: CatOptions = js::options(options)?;
        parse_target(&cid)?;
        let abort = Abort::new(&options.signal, "size")?;
        abort
            .run("size", async {
                let (top, root) = self.inner.resolve(&cid, &abort.context()).await?;
                let chain = self.inner.chain(top);
                let size = unixfs::file_size(&chain, &root, &abort.context())
                    .await
                    .map_err(|e| coded(format!("cannot read the size of {root}"), &e))?;
                Ok(size as f64)
            })
            .await
    }

    /// Unpins `cid` (its blocks stay until evicted), and asks the peers keeping copies of
    /// it to release them; resolves to whether it was pinned.
    pub async fn unpin(&self, cid: String) -> Result<bool, JsValue> {
        let root = parse_cid(&cid)?;
        let replicas = self.inner.replicas.clone();
        wasm_bindgen_futures::spawn_local(async move { replicas.forget(&root).await });
        self.inner
            .store
            .set_pinned(&root, false)
            .await
            .map_err(|e| coded("cannot remove the pin", &e))
    }

    /// The pinned roots, as CID strings.
    pub async fn pins(&self) -> Result<Vec<String>, JsValue> {
        Ok(self
            .inner
            .store
            .pins()
            .await
            .map_err(|e| coded("cannot read the pins", &e))?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Deletes blocks no pin (and no running call) needs until the store holds at most
    /// `options.targetBytes` (default 0: every such block).
    #[wasm_bindgen(unchecked_return_type = "Evicted")]
    pub async fn evict(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "EvictOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let options: EvictOptions = js::options(options)?;
        let inner = &self.inner;
        // Read once eviction holds writers off (see `pin::evict`).
        let keep = async {
            let mut keep = inner.store.pins().await?;
            keep.extend(inner.in_use.roots());
            Ok(keep)
        };
        let evicted = pin::evict(&inner.store, keep, options.target_bytes.unwrap_or(0))
            .await
            .map_err(|e| coded("eviction failed", &e))?;
        Ok(js::to_js(&Evicted {
            blocks: evicted.blocks,
            bytes: evicted.bytes,
        }))
    }

    /// Connected peers.
    #[wasm_bindgen(unchecked_return_type = "PeerInfo[]")]
    pub fn peers(&self) -> JsValue {
        let peers: Vec<PeerInfo> = self
            .inner
            .node
            .peers()
            .into_iter()
            .map(|(id, info)| PeerInfo {
                peer_id: id.to_string(),
                relayed: info.relayed,
                direct: info.direct,
                upgrading: info.upgrading,
                direct_error: info.direct_error.map(|e| e.to_string()),
                cas: info.cas,
                agent: info.agent,
                addr: info.addr.map(|a| a.to_string()),
                rtt_ms: info.rtt.map(|r| r.as_secs_f64() * 1000.0),
            })
            .collect();
        js::to_js(&peers)
    }

    /// What the store holds, with the store's own cap (`quota`, `null` when none) and,
    /// where the browser tells, the whole site's usage and quota.
    #[wasm_bindgen(unchecked_return_type = "Stats")]
    pub async fn stats(&self) -> Result<JsValue, JsValue> {
        let st = self
            .inner
            .store
            .stat()
            .await
            .map_err(|e| coded("cannot read the store's size", &e))?;
        let pins = self.inner.store.pins().await.map(|p| p.len()).unwrap_or(0);
        let estimate = storage_estimate().await;
        Ok(js::to_js(&Stats {
            blocks: st.blocks,
            bytes: st.bytes,
            quota: st.quota,
            pins: pins as u64,
            webrtc_connections: crate::webrtc::open_count() as u64,
            browser_usage: estimate.map(|(u, _)| u),
            browser_quota: estimate.map(|(_, q)| q),
        }))
    }

    /// Stops the node: closes its connections and its IndexedDB database (so that other
    /// tabs can upgrade or delete it). Calls after `stop` fail with code `STOPPED`.
    pub async fn stop(&self) {
        self.inner.transfers.stop();
        self.inner.node.stop().await;
        self.inner.store.close();
        self.inner.lock.borrow_mut().take();
    }
}

/// `navigator.storage.estimate()` as `(usage, quota)`, where the browser has it.
async fn storage_estimate() -> Option<(f64, f64)> {
    let global = js_sys::global();
    let navigator = js_sys::Reflect::get(&global, &"navigator".into()).ok()?;
    let storage = js_sys::Reflect::get(&navigator, &"storage".into()).ok()?;
    let estimate: js_sys::Function = js_sys::Reflect::get(&storage, &"estimate".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let promise: js_sys::Promise = estimate.call0(&storage).ok()?.dyn_into().ok()?;
    let v = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    let get = |k: &str| js_sys::Reflect::get(&v, &k.into()).ok()?.as_f64();
    Some((get("usage")?, get("quota")?))
}
