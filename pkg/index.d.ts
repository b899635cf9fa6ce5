// The package's types. Every option bag, result and error code is generated from the Rust
// types (crates/wasm/src/types.rs, through tsify, into dist/cairn_wasm.d.ts), and so is
// `CairnNode` itself; only what the JavaScript wrappers add is written here.
import type { CairnNode, CreateOptions, ErrorCode } from './dist/cairn_wasm.js'

export { CairnNode } from './dist/cairn_wasm.js'
export { serveIpfs } from './serve.js'
export type { ServeOptions, ServedRequest } from './serve.js'
export type {
  AddOptions,
  AddProgress,
  BySource,
  CatOptions,
  CatStreamOptions,
  CreateOptions,
  DirEntry,
  EnqueueOptions,
  ErrorCode,
  EvictOptions,
  Evicted,
  FetchProgress,
  FetchReport,
  PeerInfo,
  PinOptions,
  Priority,
  ReplicaInfo,
  Source,
  Stats,
  Storage,
  TransferState,
  TransferStatus,
  TransfersOptions,
  WatchOptions
} from './dist/cairn_wasm.js'

/** What every cairn call rejects with: an `Error` whose `code` says what happened. */
export interface CairnError extends Error {
  /** Stable across versions; decide on this, not on the message. */
  code: ErrorCode
  /** The underlying errors, outermost first. */
  cause?: unknown
}

/** The methods a node has in the page and in a Worker (`OPERATIONS` in ops.js). */
export type Operation =
  Exclude<keyof CairnNode, 'free' | 'peerId' | 'addresses' | typeof Symbol.dispose>

/** The operations of a node, in the page or in a Worker. */
export type CairnNodeApi = Pick<CairnNode, Operation | 'peerId' | 'addresses'>

type Promised<F> = F extends (...args: infer A) => infer R
  ? (...args: A) => Promise<Awaited<R>>
  : never

export interface WorkerNodeOptions extends CreateOptions {
  /** A Worker already running `cairn-cas/worker`. */
  worker?: Worker
  /** Where the worker module is (default: `worker.js` next to the package's client module). */
  workerUrl?: string | URL
}

/** A node running in a dedicated Worker; every call is a message to it (and returns a
 * promise), except `catStream`, which returns its stream at once. */
export type WorkerNode = {
  readonly peerId: string
  readonly addresses: string[]
  readonly worker: Worker
} & {
  [K in Operation]: K extends 'catStream' ? CairnNode[K] : Promised<CairnNode[K]>
}

/** Starts a node in a dedicated Worker, so hashing large files never blocks the page. */
export declare function createWorkerNode(options?: WorkerNodeOptions): Promise<WorkerNode>

/** Loads the wasm module (once); `CairnNode.create` calls it for you. */
export declare function load(wasm?: CreateOptions['wasm']): Promise<unknown>

/** The cairn version. */
export declare function version(): Promise<string>
