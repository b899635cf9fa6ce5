// The browser side of `cargo xtask bench`: each function runs one measurement and resolves
// to milliseconds (or a small object); tests/js/bench.mjs repeats them and writes JSON.
import { CairnNode, createWorkerNode, load } from '../../../pkg/index.js'
import { benchIndexedDb } from '../../../pkg/dist/cairn_wasm.js'

const MiB = 1024 * 1024

function bytes (len, seed) {
  const data = new Uint8Array(len)
  let x = seed >>> 0 || 1
  for (let i = 0; i < len; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    data[i] = x; data[i + 1] = x >>> 8; data[i + 2] = x >>> 16; data[i + 3] = x >>> 24
  }
  return data
}

let seed = 1

window.bench = {
  /** SHA-256 of `mib` MiB with WebCrypto: the ceiling for hashing in this browser. */
  async sha256 (mib) {
    const data = bytes(mib * MiB, seed++)
    const t = performance.now()
    await crypto.subtle.digest('SHA-256', data)
    return performance.now() - t
  },
  /** `add` of `mib` MiB (a Blob) into a node in this page, with `storage`. */
  async addPage (mib, storage) {
    const node = await CairnNode.create({ storage, name: `bench-${seed}` })
    const blob = new Blob([bytes(mib * MiB, seed++)])
    const t = performance.now()
    await node.add(blob)
    const ms = performance.now() - t
    await node.evict({ targetBytes: 0 })
    for (const cid of await node.pins()) await node.unpin(cid)
    await node.evict({ targetBytes: 0 })
    await node.stop()
    return ms
  },
  /** `add` of `mib` MiB (a Blob) into a node in a dedicated Worker. */
  async addWorker (mib, storage) {
    const node = await createWorkerNode({ storage, name: `bench-w-${seed}`, workerUrl: '/worker.js' })
    const blob = new Blob([bytes(mib * MiB, seed++)])
    const t = performance.now()
    await node.add(blob)
    const ms = performance.now() - t
    for (const cid of await node.pins()) await node.unpin(cid)
    await node.evict({ targetBytes: 0 })
    await node.stop()
    return ms
  },
  /** IndexedDB: `count` blocks of `size` bytes, batched or one transaction per block. */
  async idb (count, size, perBlock) {
    await load()
    return benchIndexedDb(count, size, perBlock)
  },
  /** `fetch` of `cid` from the relay over WebSocket into a fresh in-memory node. */
  async fetchRelay (relay, cid) {
    const node = await CairnNode.create({ relays: [relay], storage: 'memory' })
    const t = performance.now()
    const report = await node.fetch(cid)
    const ms = performance.now() - t
    await node.stop()
    if (report.bySource.peers !== report.blocksDone) throw new Error(`not all from the relay: ${JSON.stringify(report)}`)
    return ms
  },
  /** `total` bytes from a plain WebSocket server (see bench.mjs): the browser's WebSocket ceiling. */
  wsCeiling (url, total) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      ws.binaryType = 'arraybuffer'
      let got = 0
      let t = 0
      ws.onopen = () => { t = performance.now(); ws.send('go') }
      ws.onerror = () => reject(new Error(`WebSocket ${url} failed`))
      ws.onmessage = (e) => {
        got += e.data.byteLength
        if (got >= total) { resolve(performance.now() - t); ws.close() }
      }
    })
  },
  /** The same file fetched by a node whose only source is the relay's trustless gateway
   * (each block over HTTP, verified, kept in memory): what the gateway path gives. */
  async fetchGateway (cid) {
    const node = await CairnNode.create({ relays: [], routers: [], gateways: [location.origin], storage: 'memory' })
    const t = performance.now()
    const report = await node.fetch(cid)
    const ms = performance.now() - t
    await node.stop()
    if (report.bySource.gateway !== report.blocksDone) throw new Error(`not all from the gateway: ${JSON.stringify(report)}`)
    return ms
  },
  /** The same file over HTTP from the same relay's gateway (`/ipfs/{cid}`): the baseline. */
  async fetchHttp (cid) {
    const t = performance.now()
    const r = await fetch(`/ipfs/${cid}`, { cache: 'no-store' })
    const body = await r.arrayBuffer()
    if (!r.ok || !body.byteLength) throw new Error(`HTTP ${r.status}`)
    return performance.now() - t
  }
}
window.benchReady = true
document.body.dataset.benchReady = 'true'
