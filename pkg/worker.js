// The Worker side of `createWorkerNode`: a CairnNode living in a dedicated Worker, so that
// hashing and verifying never block the page. Load it as a module worker:
//   new Worker(new URL('cairn-cas/worker', import.meta.url), { type: 'module' })
import { CairnNode } from './index.js'
import { OPERATIONS } from './ops.js'

let node = null
const running = new Map()

/** An error as plain data (name, message, code and the cause chain), for postMessage. */
function serialize (e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'message' in e)) {
    return {
      name: e.name ?? 'Error',
      message: String(e.message),
      code: e.code,
      cause: e.cause === undefined ? undefined : serialize(e.cause)
    }
  }
  return { name: 'Error', message: String(e), code: 'INTERNAL' }
}

function fail (message) {
  const e = new Error(message)
  e.code = 'INVALID_ARGUMENT'
  return e
}

async function call (id, op, args) {
  if (op === 'create') {
    if (node) throw fail('this worker already runs a node; create another Worker for another node')
    node = await CairnNode.create(args[0])
    return [{ peerId: node.peerId, addresses: node.addresses }]
  }
  const spec = OPERATIONS[op]
  if (!spec) throw fail(`unknown operation ${op}`)
  if (!node) throw fail('the node is not created yet (call createWorkerNode first)')
  args = [...args]
  if (spec.options !== undefined) {
    const { progress, ...plain } = args[spec.options] ?? {}
    args[spec.options] = {
      ...plain,
      signal: running.get(id).signal,
      onProgress: progress ? (p) => self.postMessage({ id, progress: p }) : undefined
    }
  }
  const out = await node[op](...args)
  if (spec.transfer === 'bytes') return [out, [out.buffer]]
  if (spec.transfer === 'stream') return [out, [out]]
  return [out]
}

self.addEventListener('message', async ({ data }) => {
  if (data.abort !== undefined) {
    running.get(data.abort)?.abort()
    return
  }
  const { id, op, args } = data
  running.set(id, new AbortController())
  try {
    const [value, transfer] = await call(id, op, args)
    self.postMessage({ id, ok: value }, transfer ?? [])
  } catch (e) {
    self.postMessage({ id, error: serialize(e) })
  } finally {
    running.delete(id)
  }
})
