// Uses the `cairn-cas` package the way an app would: its public exports only.
import { CairnNode, createWorkerNode, version } from 'cairn-cas'
import { OPERATIONS } from 'cairn-cas/ops'

const params = new URLSearchParams(location.search)
const relay = params.get('relay')
const LEN = 3 * 1024 * 1024 + 5

/** LEN pseudo-random bytes (xorshift32) from the page's `seed`, the same in every page
 * given it: no two chunks alike. */
function content () {
  const data = new Uint8Array(LEN)
  let x = (2463534242 + Number(params.get('seed') ?? 0)) >>> 0 || 1
  for (let i = 0; i < LEN; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    data[i] = x & 0xff
  }
  return data
}

function same (a, b, what) {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} bytes, expected ${b.length}`)
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) throw new Error(`${what}: byte ${i} differs`)
  }
}

async function readAll (stream) {
  const parts = []
  for await (const chunk of stream) parts.push(chunk)
  return new Uint8Array(await new Blob(parts).arrayBuffer())
}

async function expectError (promise, check, what) {
  try {
    await promise
  } catch (e) {
    if (!check(e)) throw new Error(`${what}: unexpected error ${e.name}: ${e.message}`)
    return e
  }
  throw new Error(`${what}: no error`)
}

/** The Worker protocol's list is exactly the node's methods (generated from the Rust). */
function operationsMatchTheNode () {
  const proto = CairnNode.prototype
  const methods = Object.getOwnPropertyNames(proto).filter((k) =>
    k !== 'constructor' && k !== 'free' && !k.startsWith('__') &&
    typeof Object.getOwnPropertyDescriptor(proto, k).value === 'function')
  const listed = Object.keys(OPERATIONS)
  const missing = methods.filter((m) => !listed.includes(m))
  const extra = listed.filter((m) => !methods.includes(m))
  if (missing.length || extra.length) throw new Error(`OPERATIONS lacks ${missing} and has ${extra} beyond CairnNode's methods`)
}

async function pageA () {
  operationsMatchTheNode()
  const data = content()
  const node = await CairnNode.create({ relays: [relay], storage: 'memory' })
  window.cairnNode = node // kept alive for page B
  const cid = await node.add(new Blob([data]))
  same(await node.cat(cid), data, 'cat in the page')
  same(await readAll(node.catStream(cid, { offset: 1000, length: 5000 })), data.slice(1000, 6000), 'catStream range')

  const worker = await createWorkerNode({ relays: [relay], storage: 'memory', workerUrl: '/worker.js' })
  const progress = []
  const fromWorker = await worker.add(new Blob([data]), { onProgress: (p) => progress.push(p) })
  if (fromWorker !== cid) throw new Error(`the worker gave ${fromWorker}, the page ${cid}`)
  if (!progress.length || progress.at(-1).bytesDone !== LEN) throw new Error(`worker progress: ${JSON.stringify(progress)}`)
  same(await worker.cat(cid), data, 'cat in the worker')
  same(await readAll(worker.catStream(cid, { offset: LEN - 10 })), data.slice(LEN - 10), 'catStream in the worker')
  const aborted = new AbortController()
  aborted.abort()
  await expectError(worker.cat(cid, { signal: aborted.signal }), (e) => e.name === 'AbortError', 'aborted cat')
  const bad = await expectError(worker.cat('not-a-cid'), (e) => /is not a CID/.test(e.message), 'bad CID')
  if (!(bad.cause instanceof Error)) throw new Error('the error lost its cause crossing the worker')
  if (bad.code !== 'INVALID_ARGUMENT') throw new Error(`the error lost its code crossing the worker: ${bad.code}`)
  const inPage = await expectError(node.cat('x'), (e) => e.code === 'INVALID_ARGUMENT', 'bad CID in the page')
  if (!(inPage.cause instanceof Error)) throw new Error('the page error has no cause')
  const stats = await worker.stats()
  if (stats.pins !== 1 || stats.blocks !== 14) throw new Error(`worker stats: ${JSON.stringify(stats)}`)
  await worker.stop()
  return { cid, peerId: node.peerId, version: await version(), workerProgressEvents: progress.length }
}

async function pageB (cid) {
  const node = await CairnNode.create({ relays: [relay], storage: 'memory' })
  const events = []
  const bytes = await node.cat(cid, { onProgress: (p) => events.push(p) })
  same(bytes, content(), 'cat from the other page')
  const last = events.at(-1)
  if (!last || last.bySource.peers < 1) throw new Error(`progress: ${JSON.stringify(last)}`)
  const peers = node.peers()
  await node.stop()
  return { blocks: last.blocksDone, fromPeers: last.bySource.peers, peers: peers.length }
}

function describe (e) {
  let out = `${e?.name ?? 'Error'}: ${e?.message ?? e}`
  for (let c = e?.cause; c; c = c.cause) out += ` <- ${c.message ?? c}`
  return out
}

const role = params.get('role')
const run = role === 'b' ? pageB(params.get('cid')) : pageA()
run.then(
  (result) => { window.cairnResult = { ok: true, ...result } },
  (e) => { window.cairnResult = { ok: false, error: describe(e) } }
).finally(() => {
  document.getElementById('status').textContent = JSON.stringify(window.cairnResult)
})
