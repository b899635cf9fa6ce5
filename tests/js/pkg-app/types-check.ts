// Compiled with `tsc --noEmit` against the packed package's types: the API as documented.
import { CairnNode, createWorkerNode, version, type CairnError, type ErrorCode, type FetchProgress, type Stats } from 'cairn-cas'

async function use (file: File): Promise<void> {
  const node: CairnNode = await CairnNode.create({ relays: ['/ip4/127.0.0.1/tcp/1/ws'], storage: 'memory', gateways: [] })
  const cid: string = await node.add(file, { pin: false, onProgress: (p) => console.log(p.bytesDone, p.bytesTotal) })
  const controller = new AbortController()
  const bytes: Uint8Array = await node.cat(cid, {
    signal: controller.signal,
    onProgress: (p: FetchProgress) => console.log(p.bySource.peers + p.bySource.gateway, p.source)
  })
  const stream: ReadableStream<Uint8Array> = node.catStream(cid, { offset: 0, length: bytes.length })
  await stream.cancel()
  await node.pin(cid)
  const was: boolean = await node.unpin(cid)
  const pins: string[] = await node.pins()
  const evicted = await node.evict({ targetBytes: 0 })
  const stats: Stats = await node.stats()
  console.log(was, pins, evicted.bytes, stats.quota ?? 'no quota', node.peers()[0]?.rttMs, node.addresses)
  const worker = await createWorkerNode({ workerUrl: '/worker.js', storage: 'memory' })
  console.log((await worker.peers()).length, await version())
  await worker.stop()
  await node.stop()
  try {
    await node.cat('not-a-cid')
  } catch (e) {
    const code: ErrorCode = (e as CairnError).code
    if (code === 'NOT_FOUND' || code === 'INVALID_ARGUMENT') console.log(code)
  }
}

export { use }
