/** Where each block of a fetch came from. */
export type Source = 'local' | 'peers' | 'ipfs' | 'gateway'

export interface CreateOptions {
  /** Multiaddrs of cairn relays (`/ip4/…/tcp/…/ws/p2p/12D3KooW…`). The node reserves a slot on each. */
  relays?: string[]
  /** Delegated Routing V1 endpoints (`https://…`; a cairn relay's HTTP address serves one) where the IPFS source finds providers, besides the relays' DHT; providers are asked over bitswap. */
  routers?: string[]
  /** IPFS trustless gateway base URLs (`https://…`), tried after peers and IPFS. */
  gateways?: string[]
  /** `'indexeddb'` (default; kept across reloads) or `'memory'`. */
  storage?: 'indexeddb' | 'memory'
  /** The IndexedDB database name (default `'default'`): two names, two stores. */
  name?: string
  /** The most bytes of blocks the store may hold. */
  quota?: number
  /** The UnixFS import profile (default `'default'`: 256 KiB chunks, as Helia and Kubo). */
  profile?: 'default' | 'unixfs-v1-2025'
  /** Move connections to other browsers from the relay to direct WebRTC (`/webrtc`) when possible (default `true`). */
  direct?: boolean
  /** STUN/TURN URLs for direct connections (`stun:host:port`); default none: host candidates only. */
  iceServers?: string[]
  /** The most WebRTC connections the node keeps open (default 64). */
  maxWebrtc?: number
  /** Where `cairn_wasm_bg.wasm` is, when it is not served next to the bundle. */
  wasm?: string | URL | Response | BufferSource | WebAssembly.Module
}

export interface AddProgress {
  bytesDone: number
  /** Absent when adding a `ReadableStream`. */
  bytesTotal?: number
}

export interface AddOptions {
  /** Pin the root (default `true`): eviction never deletes a pinned file. */
  pin?: boolean
  signal?: AbortSignal
  onProgress?: (progress: AddProgress) => void
}

export interface FetchProgress {
  blocksDone: number
  /** Blocks known so far (grows as the DAG's inner nodes arrive). */
  blocksKnown: number
  bytesDone: number
  /** The file's size in bytes (0 until its root block is read). */
  bytesTotal: number
  /** The block just done, and where it came from. */
  cid: string
  source: Source
  /** Blocks so far from each source. */
  bySource: Record<Source, number>
}

/** The last progress of a finished fetch, and how long it took. */
export interface FetchReport extends FetchProgress {
  elapsedMs: number
}

export interface CatOptions {
  signal?: AbortSignal
  onProgress?: (progress: FetchProgress) => void
}

export interface CatStreamOptions {
  signal?: AbortSignal
  /** The first byte (default 0). */
  offset?: number
  /** How many bytes (default: to the end). */
  length?: number
}

export interface PeerInfo {
  peerId: string
  /** Whether every connection to it goes through a relay circuit. */
  relayed: boolean
  /** Whether a direct WebRTC (`/webrtc`) connection to it is open. */
  direct: boolean
  /** Whether a direct connection to it is being made (it is not asked for blocks meanwhile). */
  upgrading: boolean
  /** Why it stays on the relay: the direct connection could not be made. */
  directError?: string
  /** Whether the peer speaks `/cas/1.0.0` (a cairn node). */
  cas: boolean
  agent?: string
  /** The connection's remote address. */
  addr?: string
  /** The last ping round trip, in milliseconds. */
  rttMs?: number
}

export interface Stats {
  blocks: number
  bytes: number
  /** The store's own cap (`quota` option), or `null`. */
  quota: number | null
  pins: number
  /** `RTCPeerConnection`s this page has open through cairn. */
  webrtcConnections: number
  /** The whole site's storage use and quota, from `navigator.storage.estimate()`. */
  browserUsage?: number
  browserQuota?: number
}

export interface Evicted {
  blocks: number
  bytes: number
}

/** The operations of a node, in the page or in a Worker. */
export interface CairnNodeApi {
  readonly peerId: string
  /** This node's addresses: per relay that holds a reservation, its `/p2p-circuit` address and (unless `direct: false`) its `/p2p-circuit/webrtc` one. */
  readonly addresses: string[]
  /** Connects to a multiaddr (a relay, a circuit address, or a `/webrtc` one: then it resolves once the direct connection is open, and rejects saying why if it cannot be made). Resolves with the peer id. */
  connect(addr: string): Promise<string>
  /** Imports a file (UnixFS, the CID IPFS gives it); resolves to its root CID. */
  add(data: Uint8Array | Blob | ReadableStream<Uint8Array>, options?: AddOptions): Promise<string>
  /** The whole file, verified: local store, then peers, then gateways. Rejects with an `AbortError` when aborted. */
  cat(cid: string, options?: CatOptions): Promise<Uint8Array>
  /** Fetches the whole file into the local store (resumable), without returning its bytes. */
  fetch(cid: string, options?: CatOptions): Promise<FetchReport>
  /** The file (or a byte range of it) as a stream, fetched as it is read. */
  catStream(cid: string, options?: CatStreamOptions): ReadableStream<Uint8Array>
  /** Fetches the whole file and pins it. */
  pin(cid: string, options?: CatOptions): Promise<void>
  /** Resolves to whether it was pinned. */
  unpin(cid: string): Promise<boolean>
  pins(): Promise<string[]>
  /** Deletes unpinned blocks until the store holds at most `targetBytes` (default 0). */
  evict(options?: { targetBytes?: number }): Promise<Evicted>
  peers(): PeerInfo[] | Promise<PeerInfo[]>
  stats(): Promise<Stats>
  stop(): Promise<void>
}

/** A cairn node running in this thread. */
export declare class CairnNode {
  private constructor()
  /** Loads the wasm module (once), starts a node and connects it to its relays. */
  static create(options?: CreateOptions): Promise<CairnNode>
}
export interface CairnNode extends CairnNodeApi {
  peers(): PeerInfo[]
  /** Frees the wasm side of the handle (after `stop`). */
  free(): void
}

export interface WorkerNodeOptions extends CreateOptions {
  /** A Worker already running `cairn/worker`. */
  worker?: Worker
  /** Where the worker module is (default: `worker.js` next to the package's client module). */
  workerUrl?: string | URL
}

/** A node running in a dedicated Worker; every call is a message to it. */
export interface WorkerNode extends CairnNodeApi {
  readonly worker: Worker
  peers(): Promise<PeerInfo[]>
}

/** Starts a node in a dedicated Worker, so hashing large files never blocks the page. */
export declare function createWorkerNode(options?: WorkerNodeOptions): Promise<WorkerNode>

/** Loads the wasm module (once); `CairnNode.create` calls it for you. */
export declare function load(wasm?: CreateOptions['wasm']): Promise<unknown>

/** The cairn version. */
export declare function version(): Promise<string>
