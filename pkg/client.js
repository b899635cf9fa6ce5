// The page side of a CairnNode that runs in a dedicated Worker: the same methods (from the
// one list in ops.js), each a message to the worker (see worker.js).
import { OPERATIONS } from './ops.js'

/** An error rebuilt from what crossed postMessage: message, name, `code` and causes. */
function revive (e) {
  const error = new Error(e.message, e.cause === undefined ? undefined : { cause: revive(e.cause) })
  error.name = e.name
  if (e.code !== undefined) error.code = e.code
  return error
}

function abortError (op, reason) {
  const e = new Error(`${op} was aborted`, { cause: reason })
  e.name = 'AbortError'
  e.code = 'ABORTED'
  return e
}

/**
 * Starts a CairnNode in a dedicated Worker and resolves to a handle with the same methods as
 * `CairnNode` (each returns a promise; `catStream` returns a `ReadableStream` at once).
 * `options` are `CairnNode.create`'s, plus `worker`: a `Worker` already running
 * `cairn-cas/worker`, or `workerUrl`: where the worker module is (default: `worker.js` next
 * to this module).
 */
export async function createWorkerNode (options = {}) {
  const { worker: given, workerUrl, ...rest } = options ?? {}
  const worker = given ?? new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' })
  const pending = new Map()
  let next = 0
  let broken = null

  worker.addEventListener('message', ({ data }) => {
    const p = pending.get(data.id)
    if (!p) return
    if ('progress' in data) {
      p.onProgress?.(data.progress)
      return
    }
    pending.delete(data.id)
    p.cleanup()
    if ('error' in data) p.reject(revive(data.error))
    else p.resolve(data.ok)
  })
  worker.addEventListener('error', (e) => {
    broken = new Error(`the cairn worker failed: ${e.message ?? 'it did not load (check workerUrl)'}`)
    broken.code = 'INTERNAL'
    for (const p of pending.values()) {
      p.cleanup()
      p.reject(broken)
    }
    pending.clear()
  })

  function call (op, args) {
    if (broken) return Promise.reject(broken)
    const spec = OPERATIONS[op] ?? {}
    args = [...args]
    let signal, onProgress
    if (spec.options !== undefined) {
      const { signal: s, onProgress: p, ...plain } = args[spec.options] ?? {}
      signal = s
      onProgress = p
      args[spec.options] = { ...plain, progress: !!onProgress }
    }
    if (signal?.aborted) return Promise.reject(abortError(op, signal.reason))
    const isStream = (v) => typeof ReadableStream !== 'undefined' && v instanceof ReadableStream
    const transfer = spec.transfer === 'input' && isStream(args[0])
      ? [args[0]]
      : spec.transfer === 'inputs' && Array.isArray(args[0])
        ? args[0].map((e) => e?.content).filter(isStream)
        : []
    const id = next++
    return new Promise((resolve, reject) => {
      const onAbort = () => worker.postMessage({ abort: id })
      signal?.addEventListener('abort', onAbort)
      const cleanup = () => signal?.removeEventListener('abort', onAbort)
      pending.set(id, { resolve, reject, onProgress, cleanup })
      worker.postMessage({ id, op, args }, transfer)
    })
  }

  const info = await call('create', [rest])
  const node = { peerId: info.peerId, addresses: info.addresses, worker }
  for (const [op, spec] of Object.entries(OPERATIONS)) {
    node[op] = spec.transfer === 'stream'
      ? (...args) => {
          // A stream at once, filled from the worker's as it arrives.
          const { readable, writable } = new TransformStream()
          call(op, args).then(
            (stream) => stream.pipeTo(writable).catch(() => {}),
            (e) => writable.abort(e).catch(() => {})
          )
          return readable
        }
      : (...args) => call(op, args)
  }
  const stop = node.stop
  node.stop = async () => {
    try {
      await stop()
    } finally {
      worker.terminate()
    }
  }
  return node
}
