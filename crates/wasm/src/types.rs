//! Every option bag and result that crosses into JavaScript, as Rust types. The package's
//! TypeScript types are generated from these (tsify, into `cairn_wasm.d.ts`), so the
//! types a web developer sees cannot drift from what the node takes and gives.

use serde::{Deserialize, Serialize};
use tsify::Tsify;
use wasm_bindgen::JsValue;

/// Where a block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The node's own store.
    Local,
    /// A cairn peer over `/cas`.
    Peers,
    /// An IPFS peer over bitswap.
    Ipfs,
    /// An HTTP trustless gateway.
    Gateway,
}

impl From<Source> for cairn_core::source::SourceKind {
    fn from(s: Source) -> Self {
        use cairn_core::source::SourceKind as K;
        match s {
            Source::Local => K::Local,
            Source::Peers => K::Peers,
            Source::Ipfs => K::Ipfs,
            Source::Gateway => K::Gateway,
        }
    }
}

impl From<cairn_core::source::SourceKind> for Source {
    fn from(k: cairn_core::source::SourceKind) -> Self {
        use cairn_core::source::SourceKind as K;
        match k {
            K::Local => Source::Local,
            K::Peers => Source::Peers,
            K::Ipfs => Source::Ipfs,
            K::Gateway => Source::Gateway,
        }
    }
}

/// The store a node keeps its blocks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// IndexedDB: kept across reloads (the default).
    #[default]
    Indexeddb,
    /// Memory: gone with the page.
    Memory,
}

/// `CairnNode.create`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateOptions {
    /// Multiaddrs of cairn relays (`/ip4/…/tcp/…/ws/p2p/12D3KooW…`). The node reserves a
    /// slot on each, so other browsers can reach it through any of them, and keeps them: a
    /// relay that goes away is dialed again with backoff (1 s doubling to 5 min) and the
    /// reservation asked for again. `create` fails only if none can be reserved on.
    #[tsify(optional)]
    pub relays: Vec<String>,
    /// Delegated Routing V1 endpoints (`https://…`; a cairn relay's HTTP address serves
    /// one) where the IPFS source finds providers, besides the relays' DHT; providers are
    /// asked over bitswap.
    #[tsify(optional)]
    pub routers: Vec<String>,
    /// IPFS trustless gateway base URLs (`https://…`), tried after peers and IPFS.
    #[tsify(optional)]
    pub gateways: Vec<String>,
    /// `"indexeddb"` (default; kept across reloads) or `"memory"`.
    #[tsify(optional)]
    pub storage: Option<Storage>,
    /// The IndexedDB database name (default `"default"`): two names, two stores.
    #[tsify(optional)]
    pub name: Option<String>,
    /// The most bytes of blocks the store may hold.
    #[tsify(optional)]
    pub quota: Option<u64>,
    /// The UnixFS import profile: `"default"` (256 KiB chunks, as Kubo) or
    /// `"unixfs-v1-2025"` (1 MiB chunks, as Helia 7).
    #[tsify(optional, type = "'default' | 'unixfs-v1-2025'")]
    pub profile: Option<String>,
    /// Move connections to other browsers from the relay to direct WebRTC (`/webrtc`) when
    /// possible (default: `true` where the browser has `RTCPeerConnection`, which Workers
    /// lack; `true` where it has none is refused with `UNSUPPORTED`).
    #[tsify(optional)]
    pub direct: Option<bool>,
    /// STUN/TURN URLs for direct connections (`stun:host:port`); default none: host
    /// candidates only, enough on one network.
    #[tsify(optional)]
    pub ice_servers: Vec<String>,
    /// The most WebRTC connections the node keeps open (default 64).
    #[tsify(optional)]
    pub max_webrtc: Option<u32>,
    /// A private network's swarm key: the text of its key file (`/key/swarm/psk/1.0.0/`,
    /// `/base16/`, 64 hex digits; `cairn-relay swarm-key` makes one). The node then connects
    /// only to members: its WebSocket connections to relays are protected with the key, and
    /// `/webrtc` connections to other browsers are signalled over those. `routers` and
    /// `gateways` are asked over HTTP, outside the network: leave them out to stay inside.
    #[tsify(optional)]
    pub swarm_key: Option<String>,
    /// The transfer queue's settings (see `enqueue`).
    #[tsify(optional)]
    pub transfers: Option<TransfersOptions>,
    /// Where `cairn_wasm_bg.wasm` is, when it is not served next to the bundle (read by the
    /// package's loader before the node starts).
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(
        optional,
        type = "string | URL | Response | BufferSource | WebAssembly.Module"
    )]
    pub wasm: JsValue,
}

/// `add`'s progress: after each 4 MiB stored, and at the end.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct AddProgress {
    /// Bytes read so far.
    pub bytes_done: u64,
    /// The input's size; absent when adding a `ReadableStream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub bytes_total: Option<u64>,
}

/// `add`'s and `addAll`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct AddOptions {
    /// Pin the root (default `true`): eviction never deletes a pinned file.
    #[tsify(optional)]
    pub pin: Option<bool>,
    /// Cancels the add: it rejects with an `AbortError` and keeps nothing of it.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "AbortSignal")]
    pub signal: JsValue,
    /// Called with each [`AddProgress`].
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "(progress: AddProgress) => void")]
    pub on_progress: JsValue,
}

/// Blocks so far from each source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Tsify)]
pub struct BySource {
    /// From the node's own store.
    pub local: u64,
    /// From cairn peers.
    pub peers: u64,
    /// From IPFS peers.
    pub ipfs: u64,
    /// From gateways.
    pub gateway: u64,
}

/// A fetch's progress: after each block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct FetchProgress {
    /// Blocks done.
    pub blocks_done: u64,
    /// Blocks known so far (grows as the DAG's inner nodes arrive).
    pub blocks_known: u64,
    /// Bytes of file data done.
    pub bytes_done: u64,
    /// The file's size in bytes (0 until its root block is read).
    pub bytes_total: u64,
    /// The block just done.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub cid: Option<String>,
    /// Where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub source: Option<Source>,
    /// Blocks so far from each source.
    pub by_source: BySource,
    /// Blocks that came from a source further down the chain because one before it failed
    /// (peers that timed out or could not be reached, say).
    pub detours: u64,
    /// Why the last of those went further down: the block, who served it, and what each
    /// source before that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub last_detour: Option<String>,
}

impl From<&cairn_core::dag::Progress> for FetchProgress {
    fn from(p: &cairn_core::dag::Progress) -> Self {
        let by = p.by_source;
        Self {
            blocks_done: p.blocks_done,
            blocks_known: p.blocks_known,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            cid: p.last.as_ref().map(|(cid, _)| cid.to_string()),
            source: p.last.as_ref().map(|(_, kind)| Source::from(*kind)),
            by_source: BySource {
                local: by[0],
                peers: by[1],
                ipfs: by[2],
                gateway: by[3],
            },
            detours: p.detours,
            last_detour: p.last_detour.clone(),
        }
    }
}

/// The last progress of a finished fetch, and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct FetchReport {
    /// The final progress.
    #[serde(flatten)]
    pub progress: FetchProgress,
    /// How long the fetch took, in milliseconds.
    pub elapsed_ms: f64,
}

/// `cat`, `fetch` and `pin`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct CatOptions {
    /// Cancels the call: it rejects with an `AbortError`; what arrived is kept.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "AbortSignal")]
    pub signal: JsValue,
    /// Called with each block's [`FetchProgress`].
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "(progress: FetchProgress) => void")]
    pub on_progress: JsValue,
}

/// `pin`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct PinOptions {
    /// Cancels the call: it rejects with an `AbortError`; what arrived is kept.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "AbortSignal")]
    pub signal: JsValue,
    /// Called with each block's [`FetchProgress`].
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "(progress: FetchProgress) => void")]
    pub on_progress: JsValue,
    /// Copies to have kept on connected peers (relays that keep content for others,
    /// `/cairn/pin/1.0.0`), besides this one: asked in turn, each checked with a random
    /// block, checked again every 10 minutes and replaced when lost (default 0).
    #[tsify(optional)]
    pub replicas: Option<u32>,
}

/// A peer keeping a copy of a pinned root.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    /// The peer.
    pub peer_id: String,
    /// Checks it passed (a random block asked for and verified).
    pub checks: u32,
    /// How much this node trusts it (0 to 1; 0: it failed a check and is not asked again).
    pub trust: f64,
}

/// The transfer queue's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct TransfersOptions {
    /// Transfers that run at once (default 3).
    #[tsify(optional)]
    pub concurrency: Option<u32>,
    /// A cap on the bytes all transfers receive per second, together.
    #[tsify(optional)]
    pub max_rate: Option<f64>,
    /// A cap on the bytes of blocks this node sends its peers per second, together.
    #[tsify(optional)]
    pub max_serve_rate: Option<f64>,
}

/// A transfer's urgency: queued transfers start by priority, then in the order they came,
/// and a more urgent one takes a running less urgent one's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Before everything.
    Critical,
    /// Before normal and low.
    High,
    /// The default.
    Normal,
    /// After everything else.
    Low,
}

impl From<Priority> for cairn_core::transfer::Priority {
    fn from(p: Priority) -> Self {
        use cairn_core::transfer::Priority as P;
        match p {
            Priority::Critical => P::Critical,
            Priority::High => P::High,
            Priority::Normal => P::Normal,
            Priority::Low => P::Low,
        }
    }
}

impl From<cairn_core::transfer::Priority> for Priority {
    fn from(p: cairn_core::transfer::Priority) -> Self {
        use cairn_core::transfer::Priority as P;
        match p {
            P::Critical => Priority::Critical,
            P::High => Priority::High,
            P::Normal => Priority::Normal,
            P::Low => Priority::Low,
        }
    }
}

/// `enqueue`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct EnqueueOptions {
    /// Its place in the queue (default `"normal"`).
    #[tsify(optional)]
    pub priority: Option<Priority>,
    /// At most this many bytes received per second (under `transfers.maxRate` too).
    #[tsify(optional)]
    pub max_rate: Option<f64>,
    /// The sources to use, in this order (default: all, local → peers → ipfs → gateway).
    #[tsify(optional)]
    pub sources: Option<Vec<Source>>,
    /// Give up this many milliseconds after it is queued.
    #[tsify(optional)]
    pub ttl: Option<f64>,
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Waiting for a slot.
    Queued,
    /// Fetching.
    Active,
    /// Waiting out a backoff before its next attempt.
    Retrying,
    /// Paused.
    Paused,
    /// Every block is in the store (and the root pinned).
    Done,
    /// Given up: see `error` and `code`.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<cairn_core::transfer::State> for TransferState {
    fn from(s: cairn_core::transfer::State) -> Self {
        use cairn_core::transfer::State as S;
        match s {
            S::Queued => Self::Queued,
            S::Active => Self::Active,
            S::Retrying => Self::Retrying,
            S::Paused => Self::Paused,
            S::Done => Self::Done,
            S::Failed => Self::Failed,
            S::Cancelled => Self::Cancelled,
        }
    }
}

/// A transfer as it stands.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    /// Its number (for `pauseTransfer` and the others).
    pub id: u32,
    /// The root it fetches.
    pub cid: String,
    /// Where it is.
    pub state: TransferState,
    /// Its priority.
    pub priority: Priority,
    /// Its cap, in bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub max_rate: Option<f64>,
    /// The sources it uses, in order (empty: all).
    pub sources: Vec<Source>,
    /// When it gives up (milliseconds since 1970), if it has a time to live.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub deadline: Option<f64>,
    /// Blocks and bytes done and known, and where the blocks came from.
    pub progress: FetchProgress,
    /// Bytes per second over the last few seconds.
    pub speed: f64,
    /// Milliseconds left at that speed, once the size is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub eta_ms: Option<f64>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Why the last attempt failed (while retrying), or why it was given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub error: Option<String>,
    /// What the failure came down to, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub code: Option<ErrorCode>,
    /// When retrying, milliseconds until the next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub retry_in_ms: Option<f64>,
}

/// `waitTransfer`'s and `watchTransfers`' options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchOptions {
    /// Stops waiting or watching: the call rejects with an `AbortError` (the transfers go on).
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "AbortSignal")]
    pub signal: JsValue,
    /// Called with each change ([`TransferStatus`]): every change of state, and progress at
    /// most ten times a second per transfer.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "(status: TransferStatus) => void")]
    pub on_progress: JsValue,
}

/// `catStream`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct CatStreamOptions {
    /// Cancels the stream.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(optional, type = "AbortSignal")]
    pub signal: JsValue,
    /// The first byte (default 0).
    #[tsify(optional)]
    pub offset: Option<u64>,
    /// How many bytes (default: to the end).
    #[tsify(optional)]
    pub length: Option<u64>,
}

/// `evict`'s options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase", default)]
pub struct EvictOptions {
    /// Delete until the store holds at most this many bytes (default 0).
    #[tsify(optional)]
    pub target_bytes: Option<u64>,
}

/// What `evict` deleted.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
pub struct Evicted {
    /// Blocks deleted.
    pub blocks: u64,
    /// Bytes deleted.
    pub bytes: u64,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// Whether every connection to it goes through a relay circuit.
    pub relayed: bool,
    /// Whether a direct WebRTC (`/webrtc`) connection to it is open.
    pub direct: bool,
    /// Whether a direct connection to it is being made (it is not asked for blocks
    /// meanwhile).
    pub upgrading: bool,
    /// Why it stays on the relay: the direct connection could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub direct_error: Option<String>,
    /// Whether the peer speaks `/cas/1.0.0` (a cairn node).
    pub cas: bool,
    /// Its software, as identify says.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub agent: Option<String>,
    /// The connection's remote address.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub addr: Option<String>,
    /// The last ping round trip, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub rtt_ms: Option<f64>,
}

/// What the store holds.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Blocks held.
    pub blocks: u64,
    /// Bytes of blocks held.
    pub bytes: u64,
    /// The store's own cap (`quota` option), or `null`.
    pub quota: Option<u64>,
    /// Pinned roots.
    pub pins: u64,
    /// `RTCPeerConnection`s this page has open through cairn.
    pub webrtc_connections: u64,
    /// The whole site's storage use, from `navigator.storage.estimate()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub browser_usage: Option<f64>,
    /// The whole site's storage quota, from `navigator.storage.estimate()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub browser_quota: Option<f64>,
}

/// What every `Error` a cairn call rejects with carries in `code`: what happened, in a form
/// to decide on (the `message` is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Nobody reachable has the content.
    NotFound,
    /// A source sent bytes that do not match the CID (they were refused) and none sent the
    /// right ones.
    InvalidData,
    /// The peers, relays or gateways that might have it could not be reached.
    Unreachable,
    /// It took longer than allowed.
    Timeout,
    /// The call was aborted through its `AbortSignal` (`name` is `"AbortError"`).
    Aborted,
    /// The store (or the browser's quota for the site) is full: unpin and evict, or allow
    /// more.
    StoreFull,
    /// The store failed otherwise.
    Store,
    /// An argument or option is not what it should be.
    InvalidArgument,
    /// This browser lacks something cairn needs.
    Unsupported,
    /// The node was stopped.
    Stopped,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The code as JavaScript sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InvalidData => "INVALID_DATA",
            ErrorCode::Unreachable => "UNREACHABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::StoreFull => "STORE_FULL",
            ErrorCode::Store => "STORE",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Stopped => "STOPPED",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// One entry of a directory, as `ls` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, Tsify)]
#[serde(rename_all = "camelCase")]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Its root CID.
    pub cid: String,
    /// The size of its DAG in bytes, as its directory's link records it (for a file: its
    /// bytes plus a little structure).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[tsify(optional)]
    pub size: Option<u64>,
    /// What it is.
    #[serde(rename = "type")]
    #[tsify(type = "\"file\" | \"directory\" | \"symlink\" | \"other\"")]
    pub kind: String,
}
