// The Worker side of `createWorkerNode`: a CairnNode living in a dedicated Worker, so that
// hashing and verifying never block the page. Load it as a module worker:
//   new Worker(new URL('cairn/worker', import.meta.url), { type: 'module' })
import { CairnNode } from './index.js'

let node = null
const running = new Map()

/** An error as plain data (name, message and the cause chain), for postMessage. */
function serialize (e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'message' in e)) {
    return {
      name: e.name ?? 'Error',
      message: String(e.message),
      cause: e.cause === undefined ? undefined : serialize(e.cause)
    }
  }
  return { name: 'Error', message: String(e) }
}

async function call (id, op, args) {
  const [first, options = {}] = args
  const signal = running.get(id).signal
  const onProgress = options.progress ? (p) => self.postMessage({ id, progress: p }) : undefined
  const opts = { ...options, progress: undefined, signal, onProgress }
  if (op === 'create') {
    if (node) throw new Error('this worker already runs a node; create another Worker for another node')
    node = await CairnNode.create(first)
    return { peerId: node.peerId, addresses: node.addresses }
  }
  if (!node) throw new Error('the node is not created yet (call createWorkerNode first)')
  switch (op) {
    case 'add': return [await node.add(first, opts)]
    case 'cat': {
      const bytes = await node.cat(first, opts)
      return [bytes, [bytes.buffer]]
    }
    case 'fetch': return [await node.fetch(first, opts)]
    case 'catStream': {
      const stream = node.catStream(first, opts)
      return [stream, [stream]]
    }
    case 'pin': return [await node.pin(first, opts)]
    case 'unpin': return [await node.unpin(first)]
    case 'pins': return [await node.pins()]
    case 'evict': return [await node.evict(first)]
    case 'peers': return [node.peers()]
    case 'connect': return [await node.connect(first)]
    case 'stats': return [await node.stats()]
    case 'stop': {
      await node.stop()
      return [undefined]
    }
    default: throw new Error(`unknown operation ${op}`)
  }
}

self.addEventListener('message', async ({ data }) => {
  if (data.abort !== undefined) {
    running.get(data.abort)?.abort()
    return
  }
  const { id, op, args } = data
  running.set(id, new AbortController())
  try {
    const out = await call(id, op, args)
    const [value, transfer] = Array.isArray(out) ? out : [out]
    self.postMessage({ id, ok: value }, transfer ?? [])
  } catch (e) {
    self.postMessage({ id, error: serialize(e) })
  } finally {
    running.delete(id)
  }
})
