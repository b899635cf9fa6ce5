// The page side of a CairnNode that runs in a dedicated Worker: the same methods, each a
// message to the worker (see worker.js).

function revive (e) {
  const error = new Error(e.message, e.cause === undefined ? undefined : { cause: revive(e.cause) })
  error.name = e.name
  return error
}

/**
 * Starts a CairnNode in a dedicated Worker and resolves to a handle with the same methods as
 * `CairnNode` (each returns a promise; `catStream` returns a `ReadableStream` at once).
 * `options` are `CairnNode.create`'s, plus `worker`: a `Worker` already running
 * `cairn/worker`, or `workerUrl`: where the worker module is (default: `worker.js` next to
 * this module).
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
    for (const p of pending.values()) {
      p.cleanup()
      p.reject(broken)
    }
    pending.clear()
  })

  function call (op, first, options = {}, transfer = []) {
    if (broken) return Promise.reject(broken)
    const { signal, onProgress, ...plain } = options ?? {}
    if (signal?.aborted) {
      const e = new Error(`${op} was aborted`, { cause: signal.reason })
      e.name = 'AbortError'
      return Promise.reject(e)
    }
    const id = next++
    return new Promise((resolve, reject) => {
      const onAbort = () => worker.postMessage({ abort: id })
      signal?.addEventListener('abort', onAbort)
      const cleanup = () => signal?.removeEventListener('abort', onAbort)
      pending.set(id, { resolve, reject, onProgress, cleanup })
      worker.postMessage({ id, op, args: [first, { ...plain, progress: !!onProgress }] }, transfer)
    })
  }

  const info = await call('create', rest)
  return {
    peerId: info.peerId,
    addresses: info.addresses,
    worker,
    add: (data, options) =>
      call('add', data, options, typeof ReadableStream !== 'undefined' && data instanceof ReadableStream ? [data] : []),
    cat: (cid, options) => call('cat', cid, options),
    fetch: (cid, options) => call('fetch', cid, options),
    catStream (cid, options) {
      const { readable, writable } = new TransformStream()
      call('catStream', cid, options).then(
        (stream) => stream.pipeTo(writable).catch(() => {}),
        (e) => writable.abort(e).catch(() => {})
      )
      return readable
    },
    pin: (cid, options) => call('pin', cid, options),
    unpin: (cid) => call('unpin', cid),
    pins: () => call('pins'),
    evict: (options) => call('evict', options),
    peers: () => call('peers'),
    connect: (addr) => call('connect', addr),
    stats: () => call('stats'),
    async stop () {
      try {
        await call('stop')
      } finally {
        worker.terminate()
      }
    }
  }
}
