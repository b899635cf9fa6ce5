// Types of serve.js: the page side of cairn's service worker (sw.js).
import type { CairnNodeApi } from './index.js'

/** One request of the service worker, as `serveIpfs` answered it. */
export interface ServedRequest {
  /** `cid/path/…` (percent-encoded, as in the URL), or the target of a download. */
  path: string
  /** The request's `Range` header, if any. */
  range: string | null
  /** The status it got (206 for a range). */
  status: number
}

export interface ServeOptions {
  /** The container whose worker asks (default `navigator.serviceWorker`). */
  serviceWorker?: ServiceWorkerContainer
  /** Called with each request answered. */
  onRequest?: (request: ServedRequest) => void
}

/**
 * Answers cairn's service worker (`cairn-cas/sw.js`, registered at your origin's root) from
 * `node`: `/ipfs/<cid>/<path>` URLs (files with Range support, a directory's index.html or
 * its listing) and streamed downloads. Returns a function that stops answering.
 */
export function serveIpfs (
  node: CairnNodeApi | (() => CairnNodeApi | null | undefined),
  options?: ServeOptions
): () => void

/** The type a file's name gives (by its extension), or `undefined`. */
export function typeOfName (name: string): string | undefined
/** The type a file's first bytes give. */
export function sniff (head: Uint8Array): string
/** The range a `Range` header asks of a `size`-byte file; throws (with `status` 416) when unsatisfiable. */
export function parseRange (header: string | null, size: number): { first: number, last: number } | null
