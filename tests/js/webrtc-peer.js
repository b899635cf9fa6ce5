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
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

let node

/** Starts the node with a reservation on `relay`; resolves with its id and /webrtc address. */
window.startPeer = async (relay) => {
  node = await createLibp2p({
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

/** The open connections to `peerId`: their remote addresses. */
window.connectionsTo = (peerId) => node.getConnections(peerIdFromString(peerId)).map((c) => String(c.remoteAddr))
