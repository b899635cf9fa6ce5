// The `cairn` package: the browser node (wasm-bindgen build of crates/wasm) behind a loader
// that fetches and instantiates the wasm once, on first use.
import init, { CairnNode, version as wasmVersion } from './dist/cairn_wasm.js'

export { createWorkerNode } from './client.js'
export { serveIpfs } from './serve.js'

let loading = null

/**
 * Loads the wasm module (once). `wasm` is where `cairn_wasm_bg.wasm` is (a URL, a
 * `Response`, a `WebAssembly.Module` or its bytes); by default it is looked up next to this
 * module (`new URL('cairn_wasm_bg.wasm', import.meta.url)` inside `dist/`).
 */
export function load (wasm) {
  loading ??= init(wasm === undefined ? undefined : { module_or_path: wasm }).catch((e) => {
    loading = null
    throw new Error(
      'cannot load cairn\'s wasm module: serve cairn_wasm_bg.wasm next to your bundle, ' +
      'or pass its URL as the `wasm` option', { cause: e })
  })
  return loading
}

/** The cairn version (loads the wasm module first). */
export async function version () {
  await load()
  return wasmVersion()
}

// `CairnNode.create` loads the module first, so that it is the only call a user makes.
const create = CairnNode.create
CairnNode.create = async function (options = {}) {
  const { wasm, ...rest } = options ?? {}
  await load(wasm)
  return create.call(CairnNode, rest)
}

export { CairnNode }
