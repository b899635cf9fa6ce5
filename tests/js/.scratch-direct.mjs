// throwaway: js writes bulk data straight to the relay's /ipfs/ping/1.0.0 (rust echoes 32-byte pings)
import { createLibp2p } from 'libp2p'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import { multiaddr } from '@multiformats/multiaddr'
let largest = 0
const orig = YamuxStream.prototype.sendData
YamuxStream.prototype.sendData = function (buf) { const f = Math.min(this.sendWindowCapacity, buf.byteLength); if (this.protocol === '/ipfs/ping/1.0.0' && f > largest) largest = f; return orig.call(this, buf) }
const win = process.env.WIN ? Number(process.env.WIN) : undefined
const node = await createLibp2p({ transports: [webSockets()], connectionEncrypters: [noise()], streamMuxers: [yamux(win ? { streamOptions: { maxStreamWindowSize: win } } : {})], connectionMonitor: { enabled: false } })
const total = Number(process.argv[3])
const s = await node.dialProtocol(multiaddr(process.argv[2]), '/ipfs/ping/1.0.0')
let got = 0
const reader = (async () => { for await (const c of s) got += c.byteLength })().catch(e => e)
const chunk = new Uint8Array(256 * 1024)
const t0 = performance.now()
let err = null
try {
  for (let sent = 0; sent < total; sent += chunk.length) { if (!s.send(chunk)) await s.onDrain({ signal: AbortSignal.timeout(60000) }) }
  while (got < total && s.status === 'open') await new Promise(r => setTimeout(r, 20))
} catch (e) { err = e }
console.log(JSON.stringify({ total, echoed: got, status: s.status, largest_frame: largest, ms: Math.round(performance.now() - t0), err: err ? String(err.name) : null }))
await node.stop()
