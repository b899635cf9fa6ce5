//! `CairnNode`: the browser node as JavaScript sees it. A libp2p node (WebSocket and
//! WebRTC-direct to relays, circuits through them) over an IndexedDB or in-memory store.
//! Reads go local store → connected peers raced over `/cas/1.0.0` → HTTP gateways via
//! `fetch()`, every block verified and kept locally as it arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::block::Block;
use cairn_core::cid::Cid;
use cairn_core::source::{
    Chain, ContentSource, Context, Gateway, Ipfs, PeerRace, SourceError, SourceKind,
};
use cairn_core::store::{self, BlockStore, Memory, Stat};
use cairn_core::unixfs::{self, Profile, Range};
use cairn_core::{HashAlg, dag, pin};
use futures::future::{LocalBoxFuture, Shared};
use futures::{FutureExt, SinkExt, StreamExt};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use wasm_bindgen::prelude::*;

use crate::error::{js_error, js_error_from};
use crate::http::Fetch;
use crate::idb::IdbStore;
use crate::js::{self, Abort, set};

/// Pinned roots announced again to the DHT when a node starts (the newest pins first).
const MAX_REPROVIDE: usize = 256;

/// The node's key: kept in the IndexedDB store (so the peer id, and the provider records that
/// name it, outlive reloads), or new for a memory store, or when another tab already runs a
/// node on this store (two nodes must not share a peer id). The returned lock, while held,
/// keeps other tabs off the kept identity.
async fn identity(store: &Store) -> Result<(libp2p::identity::Keypair, Option<js::Lock>), JsValue> {
    use libp2p::identity::Keypair;
    let Store::Idb(idb) = store else {
        return Ok((Keypair::generate_ed25519(), None));
    };
    let lock = match js::try_lock(&format!("cairn-identity-{}", idb.name())).await {
        js::Locked::Held(lock) => Some(lock),
        js::Locked::Taken => return Ok((Keypair::generate_ed25519(), None)),
        js::Locked::Unsupported => None,
    };
    let kept = idb
        .identity()
        .await
        .map_err(|e| js_error_from("cannot read the node's identity", &e))?;
    if let Some(key) = kept.and_then(|k| Keypair::from_protobuf_encoding(&k).ok()) {
        return Ok((key, lock));
    }
    let key = Keypair::generate_ed25519();
    let encoded = key
        .to_protobuf_encoding()
        .map_err(|e| js_error(format!("cannot encode the node's key: {e}")))?;
    idb.set_identity(&encoded)
        .await
        .map_err(|e| js_error_from("cannot keep the node's identity", &e))?;
    Ok((key, lock))
}

/// How long one source may take for one block before the chain moves on.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's store: IndexedDB (kept across reloads) or memory, with its pins.
#[derive(Debug, Clone)]
enum Store {
    Memory(Arc<Memory>, Rc<RefCell<Vec<Cid>>>),
    Idb(IdbStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s, _) => $e,
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

impl Store {
    async fn pins(&self) -> store::Result<Vec<Cid>> {
        match self {
            Store::Memory(_, pins) => Ok(pins.borrow().clone()),
            Store::Idb(s) => s.pins().await,
        }
    }

    async fn set_pinned(&self, root: &Cid, pinned: bool) -> store::Result<bool> {
        match self {
            Store::Memory(_, pins) => {
                let mut pins = pins.borrow_mut();
                let had = pins.contains(root);
                if pinned && !had {
                    pins.push(*root);
                } else if !pinned {
                    pins.retain(|c| c != root);
                }
                Ok(had != pinned)
            }
            Store::Idb(s) => s.set_pinned(root, pinned).await,
        }
    }
}

/// Roots in use by a running call; eviction keeps their DAGs.
#[derive(Debug, Clone, Default)]
struct InUse(Rc<RefCell<HashMap<Cid, usize>>>);

/// Marks a root in use until dropped.
struct Using(InUse, Cid);

impl InUse {
    fn hold(&self, root: Cid) -> Using {
        *self.0.borrow_mut().entry(root).or_default() += 1;
        Using(self.clone(), root)
    }

    fn roots(&self) -> Vec<Cid> {
        self.0.borrow().keys().copied().collect()
    }
}

impl Drop for Using {
    fn drop(&mut self) {
        let mut map = (self.0).0.borrow_mut();
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
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
        // Every provider connected and identified, and none will do (IPFS peers that do not
        // speak /cas, say): no point waiting out the limit.
        if peers.iter().all(|p| {
            table
                .get(p)
                .is_some_and(|i| i.agent.is_some() && !i.upgrading)
        }) {
            return false;
        }
        if started.elapsed() >= limit {
            return false;
        }
        cairn_core::rt::sleep(Duration::from_millis(50)).await;
    }
}

/// The peer race, which asks the relays' DHT who provides the root (once per call, shared
/// by the blocks in flight) when no connected peer gives a block: a fetch that starts, or
/// resumes, without the right peer connected finds it.
struct Discovering {
    race: PeerRace<cairn_p2p::Node>,
    node: cairn_p2p::Node,
    root: Cid,
    lookup: RefCell<Option<Shared<LocalBoxFuture<'static, bool>>>>,
}

impl Discovering {
    fn new(node: cairn_p2p::Node, root: Cid) -> Self {
        Self {
            race: PeerRace::new(node.clone()),
            node,
            root,
            lookup: RefCell::default(),
        }
    }

    /// Asks the DHT for providers of the root and waits (briefly) until one is connected
    /// and speaks `/cas` (and, if a direct `/webrtc` connection to it is being made, until
    /// that is open or has failed); resolves to whether one is.
    fn lookup(&self) -> Shared<LocalBoxFuture<'static, bool>> {
        self.lookup
            .borrow_mut()
            .get_or_insert_with(|| {
                let (node, root) = (self.node.clone(), self.root);
                async move {
                    let found =
                        cairn_core::rt::timeout(Duration::from_secs(10), node.find_providers(root))
                            .await;
                    match found {
                        // A provider reached through a relay is moved to a direct connection
                        // first, when it can be: the transfer then never loads the relay.
                        Some(Ok(providers)) if !providers.is_empty() => {
                            until_peer(&node, &providers, Duration::from_secs(25), |p| {
                                p.cas && !p.upgrading
                            })
                            .await
                        }
                        _ => false,
                    }
                }
                .boxed_local()
                .shared()
            })
            .clone()
    }
}

impl ContentSource for Discovering {
    fn kind(&self) -> SourceKind {
        SourceKind::Peers
    }

    fn name(&self) -> String {
        self.race.name()
    }

    async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        match self.race.retrieve(cid, ctx).await {
            Ok(block) => Ok(block),
            Err(first) => {
                if self.lookup().await {
                    self.race.retrieve(cid, ctx).await
                } else {
                    Err(first)
                }
            }
        }
    }
}

fn parse_cid(cid: &str) -> Result<Cid, JsValue> {
    cairn_core::cid::parse(cid.trim()).map_err(|e| {
        js_error_from(
            format!("\"{cid}\" is not a CID (expected something like bafy…)"),
            &e,
        )
    })
}

/// A fetch's progress for JS: `{ blocksDone, blocksKnown, bytesDone, bytesTotal, source,
/// bySource: { local, peers, ipfs, gateway } }`.
fn progress_object(p: &dag::Progress) -> js_sys::Object {
    let o = js_sys::Object::new();
    set(&o, "blocksDone", p.blocks_done as f64);
    set(&o, "blocksKnown", p.blocks_known as f64);
    set(&o, "bytesDone", p.bytes_done as f64);
    set(&o, "bytesTotal", p.bytes_total as f64);
    if let Some((cid, kind)) = &p.last {
        set(&o, "cid", cid.to_string());
        set(&o, "source", kind.as_str());
    }
    let by = js_sys::Object::new();
    for (kind, n) in SourceKind::ALL.iter().zip(p.by_source) {
        set(&by, kind.as_str(), n as f64);
    }
    set(&o, "bySource", by);
    o
}

/// What every call of a node shares.
#[derive(Debug, Clone)]
struct Inner {
    node: cairn_p2p::Node,
    store: Store,
    profile: Profile,
    gateways: Vec<String>,
    /// Delegated Routing V1 endpoints for the IPFS source.
    routers: Vec<String>,
    in_use: InUse,
    addresses: Vec<Multiaddr>,
    /// Whether direct `/webrtc` connections to other browsers are made.
    direct: bool,
    /// The Web Lock on the kept identity, released by `stop`.
    lock: Rc<RefCell<Option<js::Lock>>>,
}

impl Inner {
    /// The source chain for the DAG under `root`: local store, peers (found through the DHT
    /// when the connected ones do not have it), IPFS peers over bitswap (providers from the
    /// relays' DHT and the routing endpoints, dialed where a browser can), then each gateway.
    fn chain(&self, root: Cid) -> Chain {
        let routers = self
            .routers
            .iter()
            .map(|r| cairn_p2p::routing_v1::Client::new(Fetch, r))
            .collect();
        let ipfs = cairn_p2p::ipfs::Network::new(
            self.node.clone(),
            routers,
            true,
            cairn_p2p::ipfs::browser_dialable,
        );
        let mut chain = Chain::new()
            .local(self.store.clone())
            .source(
                Discovering::new(self.node.clone(), root),
                Some(SOURCE_TIMEOUT),
            )
            .source(Ipfs::new(ipfs, Some(root)), Some(SOURCE_TIMEOUT));
        for g in &self.gateways {
            chain = chain.source(Gateway::new(Fetch, g.clone()), Some(SOURCE_TIMEOUT));
        }
        chain
    }

    /// Fetches the whole DAG under `root` into the store, reporting to `on_progress`.
    async fn fetch_dag(
        &self,
        root: Cid,
        abort: &Abort,
        on_progress: Option<&js_sys::Function>,
    ) -> Result<dag::Report, JsValue> {
        let chain = self.chain(root);
        let ctx = abort.context();
        let report = |p: &dag::Progress| {
            if let Some(f) = on_progress {
                let _ = f.call1(&JsValue::NULL, &progress_object(p));
            }
        };
        dag::fetch(&chain, &self.store, root, dag::Options::default(), &ctx, report)
            .await
            .map_err(|e| {
                js_error_from(
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
    /// Starts a node. `options`:
    /// - `relays`: multiaddrs of cairn relays (`/ip4/…/tcp/…/ws/p2p/…`, or
    ///   `/webrtc-direct/certhash/…`); the node connects to each and reserves a slot, so
    ///   other browsers can reach it through the relay;
    /// - `routers`: Delegated Routing V1 endpoints (`https://…`; a cairn relay's HTTP
    ///   address serves one) where the IPFS source looks for providers, besides the relays'
    ///   DHT; providers are then asked over bitswap;
    /// - `gateways`: IPFS trustless gateway URLs (`https://…`), tried after peers;
    /// - `storage`: `"indexeddb"` (default; kept across reloads) or `"memory"`;
    /// - `name`: the IndexedDB database's name (default `"default"`);
    /// - `quota`: the most bytes of blocks the store may hold (IndexedDB only);
    /// - `profile`: the UnixFS import profile, `"default"` or `"unixfs-v1-2025"`;
    /// - `direct`: whether connections to other browsers move from the relay to a direct
    ///   WebRTC connection (`/webrtc`) when one can be made (default `true`);
    /// - `iceServers`: STUN/TURN URLs for those (`stun:host:port`; default none: host
    ///   candidates only, enough on one network);
    /// - `maxWebrtc`: the most WebRTC connections the node keeps open (default 64; browsers
    ///   cap them per page).
    ///
    /// Fails if no relay can be reached (when some are given), naming each and why.
    pub async fn create(options: JsValue) -> Result<CairnNode, JsValue> {
        let options = js::or_empty(options);
        let profile: Profile = js::opt_string(&options, "profile")?
            .as_deref()
            .unwrap_or("default")
            .parse()
            .map_err(|e| js_error(format!("options.profile: {e}")))?;
        let gateways = js::opt_strings(&options, "gateways")?;
        for g in &gateways {
            if !(g.starts_with("https://") || g.starts_with("http://")) {
                return Err(js_error(format!(
                    "gateway \"{g}\" is not an http(s) URL (for example https://trustless-gateway.link)"
                )));
            }
        }
        let routers = js::opt_strings(&options, "routers")?;
        for r in &routers {
            if !(r.starts_with("https://") || r.starts_with("http://")) {
                return Err(js_error(format!(
                    "router \"{r}\" is not an http(s) URL (for example https://delegated-ipfs.dev)"
                )));
            }
        }
        let quota = js::opt_u64(&options, "quota")?;
        let store = match js::opt_string(&options, "storage")?.as_deref() {
            None | Some("indexeddb") => {
                let name = js::opt_string(&options, "name")?.unwrap_or_else(|| "default".into());
                Store::Idb(
                    IdbStore::open(&name, quota)
                        .await
                        .map_err(|e| js_error_from("cannot open the IndexedDB store", &e))?,
                )
            }
            Some("memory") => Store::Memory(Arc::new(Memory::new()), Rc::default()),
            Some(other) => {
                return Err(js_error(format!(
                    "options.storage is \"{other}\"; use \"indexeddb\" or \"memory\""
                )));
            }
        };
        let relays: Vec<Multiaddr> = js::opt_strings(&options, "relays")?
            .iter()
            .map(|r| {
                r.parse::<Multiaddr>().map_err(|e| {
                    js_error_from(format!("relay address \"{r}\" is not a multiaddr"), &e)
                })
            })
            .collect::<Result<_, _>>()?;

        let mut rtc = crate::webrtc::Config {
            ice_servers: js::opt_strings(&options, "iceServers")?,
            ..Default::default()
        };
        for s in &rtc.ice_servers {
            if !(s.starts_with("stun:") || s.starts_with("turn:") || s.starts_with("turns:")) {
                return Err(js_error(format!(
                    "ICE server \"{s}\" is not a stun: or turn: URL (for example stun:stun.l.google.com:19302)"
                )));
            }
        }
        if let Some(max) = js::opt_u64(&options, "maxWebrtc")? {
            if max == 0 {
                return Err(js_error(
                    "options.maxWebrtc is 0; use at least 1, or direct: false to turn /webrtc off",
                ));
            }
            rtc.max_connections = usize::try_from(max).unwrap_or(usize::MAX);
        }
        let direct = js::opt_bool(&options, "direct")?.unwrap_or(true);

        // The circuit listen addresses are announced as external ones (the default), so
        // provider records carry them.
        let config = cairn_p2p::node::Config {
            upgrade_direct: direct,
            ..Default::default()
        };
        let (key, lock) = identity(&store).await?;
        let swarm = crate::net::swarm(key, &config, rtc)
            .map_err(|e| js_error(format!("cannot start libp2p: {e}")))?;
        let (node, driver) = cairn_p2p::Node::new(swarm, store.clone(), config);
        wasm_bindgen_futures::spawn_local(driver);

        let mut failures = Vec::new();
        let mut addresses = Vec::new();
        for relay in &relays {
            let dialed =
                cairn_core::rt::timeout(Duration::from_secs(15), node.dial(relay.clone())).await;
            match dialed {
                Some(Ok(peer)) => {
                    // Identify puts the relay in the DHT table; provider records need it.
                    until_peer(&node, &[peer], Duration::from_secs(5), |p| {
                        p.agent.is_some()
                    })
                    .await;
                    let circuit = relay.clone().with(Protocol::P2pCircuit);
                    match node.listen(circuit.clone()).await {
                        Ok(_) => {
                            addresses.push(circuit.clone().with(Protocol::P2p(node.peer_id())));
                            // Other browsers reach this one directly through the circuit.
                            let webrtc = circuit.with(Protocol::WebRTC);
                            if direct {
                                match node.listen(webrtc.clone()).await {
                                    Ok(_) => {
                                        addresses.push(webrtc.with(Protocol::P2p(node.peer_id())))
                                    }
                                    Err(e) => web_sys::console::warn_1(
                                        &format!("cairn: cannot listen on {webrtc}: {e}").into(),
                                    ),
                                }
                            }
                        }
                        Err(e) => failures.push(format!("{relay}: no reservation ({e})")),
                    }
                }
                Some(Err(e)) => failures.push(format!("{relay}: {e}")),
                None => failures.push(format!("{relay}: no answer within 15 s")),
            }
        }
        if !relays.is_empty() && addresses.is_empty() {
            node.stop().await;
            return Err(js_error(format!(
                "cannot reach any relay: {}. Check the addresses and that the relay runs",
                failures.join("; ")
            )));
        }
        for f in &failures {
            web_sys::console::warn_1(&format!("cairn: relay {f}").into());
        }
        if !addresses.is_empty() {
            // Tell the DHT again what this node holds: its records name this peer id, which
            // the store keeps, and its new relayed addresses.
            let (node, store) = (node.clone(), store.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let pins = store.pins().await.unwrap_or_default();
                for root in pins.into_iter().rev().take(MAX_REPROVIDE) {
                    let provided =
                        cairn_core::rt::timeout(Duration::from_secs(10), node.provide(root)).await;
                    if !matches!(provided, Some(Ok(()))) {
                        web_sys::console::warn_1(
                            &format!("cairn: could not announce {root} again").into(),
                        );
                    }
                }
            });
        }
        Ok(CairnNode {
            inner: Inner {
                node,
                store,
                profile,
                gateways,
                routers,
                in_use: InUse::default(),
                addresses,
                direct,
                lock: Rc::new(RefCell::new(lock)),
            },
        })
    }

    /// Connects to a peer at `addr`, a multiaddr: a relay, a peer's circuit address
    /// (`…/p2p-circuit/p2p/<peer>`), or its `/webrtc` address through a relay
    /// (`…/p2p-circuit/webrtc/p2p/<peer>`): then the relayed connection is made first and
    /// moved to a direct one, and the call fails (saying why, the relayed connection kept)
    /// if no direct one could be made. Resolves with the peer's id; gives up after 30 s.
    pub async fn connect(&self, addr: String) -> Result<String, JsValue> {
        let ma: Multiaddr = addr
            .parse()
            .map_err(|e| js_error_from(format!("\"{addr}\" is not a multiaddr"), &e))?;
        let webrtc = ma.iter().any(|p| matches!(p, Protocol::WebRTC));
        if webrtc && !self.inner.direct {
            return Err(js_error(
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
                .map_err(|e| js_error_from(format!("cannot connect to {addr}"), &e))?;
            if !webrtc {
                return Ok(peer.to_string());
            }
            // The driver tries `/webrtc` once identify says the peer speaks it.
            until_peer(node, &[peer], limit, |i| {
                i.agent.is_some() && !i.upgrading && (i.direct || i.direct_error.is_some())
            })
            .await;
            let info = node.peers().remove(&peer).unwrap_or_default();
            if info.direct {
                Ok(peer.to_string())
            } else {
                Err(js_error(format!(
                    "connected to {peer} through the relay, but not directly: {}",
                    info.direct_error
                        .unwrap_or_else(|| "the peer did not answer in time".into())
                )))
            }
        };
        cairn_core::rt::timeout(limit, work)
            .await
            .unwrap_or_else(|| Err(js_error(format!("cannot connect to {addr} within 30 s"))))
    }

    /// This node's peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.inner.node.peer_id().to_string()
    }

    /// The addresses other nodes reach this one at: one `/p2p-circuit` address per relay
    /// that holds a reservation for it.
    #[wasm_bindgen(getter)]
    pub fn addresses(&self) -> Vec<String> {
        self.inner
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Imports `data` (a `Uint8Array`, a `Blob` or `File`, or a `ReadableStream` of
    /// `Uint8Array`s) as a UnixFS file into the node's store, streaming: a large file is never
    /// held in memory whole. Pins the root (unless `options.pin` is `false`) and announces it
    /// through the relays' DHT (a provider record; failing that, the file is still added).
    /// Resolves to the root CID.
    ///
    /// `options.onProgress`, if given, is called with `{ bytesDone, bytesTotal }` after
    /// each 4 MiB stored and at the end (`bytesTotal` is absent for a stream).
    /// `options.signal` (an `AbortSignal`) cancels it. A failed or cancelled add deletes the
    /// blocks it added (the importer's own clean-up), so the store holds no half-added file.
    pub async fn add(&self, data: JsValue, options: JsValue) -> Result<String, JsValue> {
        let options = js::or_empty(options);
        let on_progress = js::progress_callback(&options)?;
        let pin_it = js::opt_bool(&options, "pin")?.unwrap_or(true);
        let abort = Abort::from_options(&options, "add")?;
        let (reader, total) = js::reader_of(data)?;
        let inner = &self.inner;
        let report = |done: u64| {
            if let Some(f) = &on_progress {
                let event = js_sys::Object::new();
                set(&event, "bytesDone", done as f64);
                if let Some(t) = total {
                    set(&event, "bytesTotal", t as f64);
                }
                let _ = f.call1(&JsValue::NULL, &event);
            }
        };
        let reader = abort.reader(reader);
        let imported = unixfs::import(
            &inner.store,
            reader,
            inner.profile,
            HashAlg::Sha2_256,
            report,
        )
        .await
        .map_err(|e| {
            if abort.is_aborted() {
                abort.aborted("add")
            } else {
                js_error_from("cannot add the data", &e)
            }
        })?;
        let root = imported.root;
        if pin_it {
            inner
                .store
                .set_pinned(&root, true)
                .await
                .map_err(|e| js_error_from(format!("{root} was added but not pinned"), &e))?;
        }
        let provided =
            cairn_core::rt::timeout(Duration::from_secs(10), inner.node.provide(root)).await;
        if !matches!(provided, Some(Ok(()))) && !inner.addresses.is_empty() {
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

    /// The bytes of a file, whole: from the local store, else fetched (local → peers →
    /// gateways), verified, and kept locally as they arrive. When no connected peer has a
    /// block, the relays' DHT is asked who provides the file, and those peers are reached
    /// through relay circuits. An interrupted fetch resumes: blocks already stored are not
    /// fetched again.
    ///
    /// `options.onProgress` gets `{ blocksDone, blocksKnown, bytesDone, bytesTotal, cid,
    /// source, bySource: { local, peers, ipfs, gateway } }` after each block;
    /// `options.signal` cancels (rejecting with an `AbortError`).
    pub async fn cat(&self, cid: String, options: JsValue) -> Result<js_sys::Uint8Array, JsValue> {
        let options = js::or_empty(options);
        let root = parse_cid(&cid)?;
        let on_progress = js::progress_callback(&options)?;
        let abort = Abort::from_options(&options, "cat")?;
        let _using = self.inner.in_use.hold(root);
        abort
            .run("cat", async {
                self.inner
                    .fetch_dag(root, &abort, on_progress.as_ref())
                    .await?;
                let local = Chain::new().local(self.inner.store.clone());
                crate::export_all(&local, root).await
            })
            .await
    }

    /// Fetches the whole DAG under `cid` into the local store (as `cat` does, with the same
    /// `options`), without returning its bytes: read them afterwards with `catStream`, from
    /// the store, without holding the file in memory. Resolves to the final progress (as
    /// `onProgress` gets it) plus `elapsedMs`.
    pub async fn fetch(&self, cid: String, options: JsValue) -> Result<JsValue, JsValue> {
        let options = js::or_empty(options);
        let root = parse_cid(&cid)?;
        let on_progress = js::progress_callback(&options)?;
        let abort = Abort::from_options(&options, "fetch")?;
        let _using = self.inner.in_use.hold(root);
        abort
            .run("fetch", async {
                let report = self
                    .inner
                    .fetch_dag(root, &abort, on_progress.as_ref())
                    .await?;
                let o = progress_object(&report.progress);
                set(&o, "elapsedMs", report.elapsed.as_secs_f64() * 1000.0);
                Ok(o.into())
            })
            .await
    }

    /// The bytes of a file (or of `length` bytes from `offset`) as a `ReadableStream` of
    /// `Uint8Array`s, fetched as they are read (only the blocks the range needs). Cancelling
    /// the stream, or `options.signal`, stops the fetch.
    #[wasm_bindgen(js_name = catStream)]
    pub fn cat_stream(
        &self,
        cid: String,
        options: JsValue,
    ) -> Result<web_sys::ReadableStream, JsValue> {
        let options = js::or_empty(options);
        let root = parse_cid(&cid)?;
        let range = Range {
            offset: js::opt_u64(&options, "offset")?.unwrap_or(0),
            length: js::opt_u64(&options, "length")?,
        };
        let abort = Abort::from_options(&options, "catStream")?;
        let inner = self.inner.clone();
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<JsValue, JsValue>>(2);
        wasm_bindgen_futures::spawn_local(async move {
            let _using = inner.in_use.hold(root);
            let chain = inner.chain(root);
            let ctx = abort.context();
            let bytes = unixfs::export(&chain, root, range, 8, &ctx);
            futures::pin_mut!(bytes);
            while let Some(chunk) = bytes.next().await {
                let item = match chunk {
                    Ok(b) => Ok(JsValue::from(js_sys::Uint8Array::from(&b[..]))),
                    Err(_) if abort.is_aborted() => Err(abort.aborted("catStream")),
                    Err(e) => Err(js_error_from(format!("cannot read {root}"), &e)),
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
    /// it: eviction never deletes a pinned DAG.
    pub async fn pin(&self, cid: String, options: JsValue) -> Result<(), JsValue> {
        let options = js::or_empty(options);
        let root = parse_cid(&cid)?;
        let on_progress = js::progress_callback(&options)?;
        let abort = Abort::from_options(&options, "pin")?;
        let _using = self.inner.in_use.hold(root);
        abort
            .run("pin", async {
                self.inner
                    .fetch_dag(root, &abort, on_progress.as_ref())
                    .await?;
                self.inner
                    .store
                    .set_pinned(&root, true)
                    .await
                    .map_err(|e| js_error_from("cannot record the pin", &e))?;
                Ok(())
            })
            .await
    }

    /// Unpins `cid` (its blocks stay until evicted); resolves to whether it was pinned.
    pub async fn unpin(&self, cid: String) -> Result<bool, JsValue> {
        let root = parse_cid(&cid)?;
        self.inner
            .store
            .set_pinned(&root, false)
            .await
            .map_err(|e| js_error_from("cannot remove the pin", &e))
    }

    /// The pinned roots, as CID strings.
    pub async fn pins(&self) -> Result<Vec<String>, JsValue> {
        Ok(self
            .inner
            .store
            .pins()
            .await
            .map_err(|e| js_error_from("cannot read the pins", &e))?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Deletes blocks no pin (and no running call) needs until the store holds at most
    /// `options.targetBytes` (default 0: every such block). Resolves to `{ blocks, bytes }`
    /// deleted.
    pub async fn evict(&self, options: JsValue) -> Result<JsValue, JsValue> {
        let options = js::or_empty(options);
        let target = js::opt_u64(&options, "targetBytes")?.unwrap_or(0);
        let mut keep = self
            .inner
            .store
            .pins()
            .await
            .map_err(|e| js_error_from("cannot read the pins", &e))?;
        keep.extend(self.inner.in_use.roots());
        let evicted = pin::evict(&self.inner.store, &keep, target)
            .await
            .map_err(|e| js_error_from("eviction failed", &e))?;
        let o = js_sys::Object::new();
        set(&o, "blocks", evicted.blocks as f64);
        set(&o, "bytes", evicted.bytes as f64);
        Ok(o.into())
    }

    /// Connected peers: `[{ peerId, relayed, cas, agent, addr, rttMs }]`.
    pub fn peers(&self) -> Result<JsValue, JsValue> {
        let out = js_sys::Array::new();
        for (id, info) in self.inner.node.peers() {
            let o = js_sys::Object::new();
            set(&o, "peerId", id.to_string());
            set(&o, "relayed", info.relayed);
            set(&o, "direct", info.direct);
            set(&o, "upgrading", info.upgrading);
            if let Some(e) = info.direct_error {
                set(&o, "directError", e);
            }
            set(&o, "cas", info.cas);
            if let Some(a) = info.agent {
                set(&o, "agent", a);
            }
            if let Some(a) = info.addr {
                set(&o, "addr", a.to_string());
            }
            if let Some(rtt) = info.rtt {
                set(&o, "rttMs", rtt.as_secs_f64() * 1000.0);
            }
            out.push(&o);
        }
        Ok(out.into())
    }

    /// What the store holds: `{ blocks, bytes, quota, pins }`, with `quota` the store's
    /// own cap (`null` when none) and, where the browser tells, `browserUsage` and
    /// `browserQuota` (the whole site's, from `navigator.storage.estimate()`).
    pub async fn stats(&self) -> Result<JsValue, JsValue> {
        let st = self
            .inner
            .store
            .stat()
            .await
            .map_err(|e| js_error_from("cannot read the store's size", &e))?;
        let pins = self.inner.store.pins().await.map(|p| p.len()).unwrap_or(0);
        let o: js_sys::Object = crate::stat_object(st)?.into();
        set(&o, "pins", pins as f64);
        set(&o, "webrtcConnections", crate::webrtc::open_count() as f64);
        if let Some((usage, quota)) = storage_estimate().await {
            set(&o, "browserUsage", usage);
            set(&o, "browserQuota", quota);
        }
        Ok(o.into())
    }

    /// Stops the node: closes its connections and its IndexedDB database (so that other
    /// tabs can upgrade or delete it). Calls after `stop` fail.
    pub async fn stop(&self) {
        self.inner.node.stop().await;
        if let Store::Idb(s) = &self.inner.store {
            s.close();
        }
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
