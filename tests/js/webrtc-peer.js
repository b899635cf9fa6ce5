// A js-libp2p browser node with @libp2p/webrtc, for cairn's /webrtc interop test
// (webrtc.mjs bundles it with esbuild). It listens on /webrtc behind a relay reservation,
// dials /webrtc addresses, and pings.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { webRTC } from '@libp2p/webrtc'
import { byteStream } from '@libp2p/utils'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

let node

/** How often js-libp2p's connection monitor pings each connection (its default is 10 s;
 * the test shortens it so that its rounds come quickly, and counts them). */
const MONITOR_INTERVAL_MS = 2_000

/** Starts the node with a reservation on `relay`; resolves with its id and /webrtc address. */
window.startPeer = async (relay) => {
  node = await createLibp2p({
    connectionMonitor: { pingInterval: MONITOR_INTERVAL_MS },
    addresses: { listen: [`${relay}/p2p-circuit`, '/webrtc'] },
    transports: [webSockets(), webRTC({ rtcConfiguration: { iceServers: [] } }), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // The browser default refuses ws:// and loopback addresses: this test lives on both.
    connectionGater: { denyDialMultiaddr: () => false },
    services: { identify: identify(), ping: ping() }
  })
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const addr = node.getMultiaddrs().map(String).find((a) => a.includes('/webrtc/'))
    if (addr) return { peerId: node.peerId.toString(), addr }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`no /webrtc address: ${node.getMultiaddrs().join(' ')}`)
}

/** Dials `addr`; resolves with the connection's remote address. */
window.dialPeer = async (addr) => String((await node.dial(multiaddr(addr))).remoteAddr)

/** Pings `peerId` over an open connection; resolves with the round trip in ms. */
window.pingPeer = async (peerId) => node.services.ping.ping(peerIdFromString(peerId))

/**
 * What js-libp2p's connection monitor does to every connection every 10 s, on the /webrtc
 * connection to `peerId`: a ping on a new stream, then `close()` under the monitor's 5 s
 * deadline (when that fails, the monitor drops the whole connection). `close()` sends FIN and
 * waits for the peer's FIN_ACK or for the channel to end. Resolves with the stream's status
 * right after `close()` ('reset' means it ended without a FIN_ACK) and whether the peer then
 * ended the stream within 5 s.
 */
/**
 * A ping stream on `conn`. js-libp2p allows one outbound ping stream per connection: when
 * its own connection monitor's ping is in flight, wait for that one to end (bounded) and
 * open ours after it.
 */
async function pingStream (conn, signal) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await conn.newStream('/ipfs/ping/1.0.0', { signal })
    } catch (e) {
      if (e.name !== 'TooManyOutboundProtocolStreamsError' || attempt >= 5) throw e
      const busy = conn.streams.filter((s) => s.protocol === '/ipfs/ping/1.0.0' && s.direction === 'outbound')
      await Promise.race([
        Promise.all(busy.map((s) => new Promise((resolve) => s.addEventListener('close', resolve, { once: true })))),
        new Promise((resolve) => setTimeout(resolve, 1_000))
      ])
    }
  }
}

window.monitorPing = async (peerId) => {
  const conn = node.getConnections(peerIdFromString(peerId)).find((c) => String(c.remoteAddr).includes('/webrtc'))
  if (!conn) throw new Error(`no /webrtc connection to ${peerId}`)
  const signal = AbortSignal.timeout(5_000)
  const stream = await pingStream(conn, signal)
  const bytes = byteStream(stream)
  const ping = crypto.getRandomValues(new Uint8Array(32))
  const [, pong] = await Promise.all([bytes.write(ping, { signal }), bytes.read({ bytes: 32, signal })])
  if (pong.subarray().some((b, i) => b !== ping[i])) throw new Error('the pong differs from the ping')
  await stream.close({ signal })
  const closeStatus = stream.status
  // Then the peer ends its side once it reads the FIN (its ping handler stops).
  const ended = ['closed', 'reset', 'aborted'].includes(stream.status) || await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 5_000)
    stream.addEventListener('close', () => { clearTimeout(timer); resolve(true) }, { once: true })
  })
  return { closeStatus, ended }
}

const rounds = new Map()

/**
 * Counts the connection monitor's successful rounds on the /webrtc connection to `peerId`
 * from now on: the monitor sets the connection's `rtt` after each ping it completed.
 */
window.watchMonitor = (peerId) => {
  const conn = node.getConnections(peerIdFromString(peerId)).find((c) => String(c.remoteAddr).includes('/webrtc'))
  if (!conn) throw new Error(`no /webrtc connection to ${peerId}`)
  rounds.set(peerId, 0)
  let rtt = conn.rtt
  Object.defineProperty(conn, 'rtt', {
    configurable: true,
    get: () => rtt,
    set: (v) => { rtt = v; rounds.set(peerId, rounds.get(peerId) + 1) }
  })
}

/** The monitor's successful rounds on the watched connection to `peerId`. */
window.monitorRounds = (peerId) => rounds.get(peerId) ?? 0

/** The open connections to `peerId`: their remote addresses. */
window.connectionsTo = (peerId) => node.getConnections(peerIdFromString(peerId)).map((c) => String(c.remoteAddr))

/**
 * A second js-libp2p node, reachable through `relay`, that speaks the signalling protocol
 * badly, for cairn's bad-input tests. `mode`: 'silent' reads the offer and never answers;
 * 'reset' reads it and resets the stream; 'garbage' answers with a frame claiming 1 GiB;
 * 'wrong' answers the offer with an offer. Resolves with its `/webrtc` address.
 */
window.startMisbehaving = async (relay, mode) => {
  const bad = await createLibp2p({
    addresses: { listen: [`${relay}/p2p-circuit`] },
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionGater: { denyDialMultiaddr: () => false },
    services: { identify: identify() }
  })
  await bad.handle('/webrtc-signaling/0.0.1', async (arg) => {
    const stream = arg.stream ?? arg
    const send = (bytes) => typeof stream.send === 'function' ? stream.send(bytes) : stream.sink([bytes])
    for await (const chunk of stream.source ?? stream) {
      if (!chunk) continue
      if (mode === 'reset') return stream.abort(new Error('dropped mid-handshake'))
      if (mode === 'garbage') return send(new Uint8Array([0x80, 0x80, 0x80, 0x80, 0x04, 1, 2, 3]))
      // type = SDP_OFFER (0), data = "v=0"
      if (mode === 'wrong') return send(new Uint8Array([7, 0x08, 0x00, 0x12, 0x03, 0x76, 0x3d, 0x30]))
    }
  }, { runOnLimitedConnection: true })
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const addr = bad.getMultiaddrs().map(String).find((a) => a.includes('/p2p-circuit/p2p/'))
    if (addr) return addr.replace('/p2p-circuit/', '/p2p-circuit/webrtc/')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`no circuit address: ${bad.getMultiaddrs().join(' ')}`)
}
