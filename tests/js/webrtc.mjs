// Browser-to-browser WebRTC (`/webrtc`) in headless Chromium (Playwright, Debian's chromium).
// Starts its own cairn-relay and stops it at the end, pass or fail.
//
// node webrtc.mjs <cairn-relay binary> <dist/ (the built app)> <artifacts dir>
//
// - A adds 64 MiB; B opens A's share link: B reaches A through the relay, the connection
//   moves to a direct WebRTC one, and the relay carries almost none of the 64 MiB (its own
//   byte counters say so). The peers panel says direct.
// - C cannot make a direct connection (its ICE is blocked: no candidates): the transfer
//   completes through the relay, and the app says it is relayed, and why.
// - Interop: a js-libp2p browser node with @libp2p/webrtc (webrtc-peer.js, bundled with
//   esbuild) and cairn pages connect over /webrtc both ways, ping each other over it, and
//   the connections outlive js-libp2p's connection monitor (cairn answers FIN with FIN_ACK).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { addFile as add, allFrom, assert, downloaded, monitorPing, openApp as open, randomFile, transferEnds } from './app.mjs'
import { WEBRTC_FLAGS, atExit, capture, cleanup, freePort, launchChromium, relayBytes, serveJsPeer, startRelay, step as say } from './harness.mjs'

const [relayBin, dist, artifacts] = process.argv.slice(2)
if (!relayBin || !dist || !artifacts) {
  console.error('usage: node webrtc.mjs <cairn-relay> <dist> <artifacts>')
  process.exit(2)
}
const step = (what) => say('webrtc', what)
const MiB = 1024 * 1024
const work = mkdtempSync(join(tmpdir(), 'cairn-webrtc-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
mkdirSync(artifacts, { recursive: true })

/** The peers panel's row for `peerId` once it shows `path` (the panel refreshes on a timer),
 * or as it is after 30 s: `{ path, text }`. */
async function peerRow (p, peerId, path) {
  const row = p.page.locator(`#peers tr[data-peer="${peerId}"]`)
  await p.page.locator(`#peers tr[data-peer="${peerId}"][data-path="${path}"]`).waitFor({ timeout: 30_000 }).catch(() => {})
  return { path: await row.getAttribute('data-path'), text: await row.locator('td').nth(1).textContent() }
}

try {
  step('starting the relay that serves the app')
  const http = `127.0.0.1:${await freePort()}`
  await startRelay(relayBin, http, ['--web-root', dist, '--identity', join(work, 'relay.key')])
  const origin = `http://${http}/`
  const browser = await launchChromium(WEBRTC_FLAGS)

  step('A adds 64 MiB')
  const a = await open(await browser.newContext(), origin, 'A')
  const f = randomFile(work, 'sixty-four.bin', 64 * MiB)
  const shared = await add(a, f)
  const aId = await a.page.evaluate(() => window.cairnApp.node.peerId)

  step('B opens the share link: relayed first, then direct')
  const before = await relayBytes(http)
  const b = await open(await browser.newContext(), shared.link, 'B')
  const got = (await transferEnds(b)).last
  const after = await relayBytes(http)
  const dl = await downloaded(b)
  assert(dl.size === f.size && dl.sha256 === f.sha256, `B's bytes are A's: ${JSON.stringify(dl)}`)
  assert(allFrom(got, 'peers'), `all from peers: ${JSON.stringify(got)}`)
  const row = await peerRow(b, aId, 'direct')
  assert(row.path === 'direct' && /WebRTC/.test(row.text), `B's peers panel says A is direct over WebRTC: ${JSON.stringify(row)}`)
  const relayed = after - before
  step(`64 MiB moved; the relay carried ${(relayed / MiB).toFixed(2)} MiB meanwhile`)
  assert(relayed < 4 * MiB, `the relay carried almost none of the 64 MiB: ${relayed} bytes`)
  const open1 = await b.page.evaluate(async () => (await window.cairnApp.node.stats()).webrtcConnections)
  assert(open1 === 1, `B has one RTCPeerConnection open: ${open1}`)
  await b.page.screenshot({ path: join(artifacts, 'webrtc-01-direct.png'), fullPage: true })

  step('C cannot connect directly (ICE blocked): the transfer goes through the relay, and says so')
  const ctxC = await browser.newContext()
  // No host candidates and no servers: ICE has nothing to try.
  await ctxC.addInitScript(() => {
    const Real = window.RTCPeerConnection
    window.RTCPeerConnection = function (config) {
      return new Real({ ...(config ?? {}), iceServers: [], iceTransportPolicy: 'relay' })
    }
    window.RTCPeerConnection.prototype = Real.prototype
    window.RTCPeerConnection.generateCertificate = Real.generateCertificate
  })
  const small = randomFile(work, 'eight.bin', 8 * MiB)
  const shared2 = await add(a, small)
  const before2 = await relayBytes(http)
  const c = await open(ctxC, shared2.link, 'C')
  const got2 = (await transferEnds(c)).last
  const after2 = await relayBytes(http)
  const dl2 = await downloaded(c)
  assert(dl2.sha256 === small.sha256, 'C\'s bytes are A\'s')
  assert(allFrom(got2, 'peers'), `all from peers: ${JSON.stringify(got2)}`)
  assert(after2 - before2 > small.size, `the relay carried the file: ${after2 - before2} bytes`)
  const row2 = await peerRow(c, aId, 'relayed')
  // C has no ICE candidate at all, which its handshake reports at once (not at the timeout).
  assert(row2.path === 'relayed' && /relayed: .*gathered no ICE candidates/.test(row2.text), `C's peers panel says relayed, and why: ${JSON.stringify(row2)}`)
  assert(c.log.some((l) => /stays on the relay/.test(l)), 'C logged why it stays on the relay')
  step(`C's peers panel: ${row2.text}`)
  const open2 = await c.page.evaluate(async () => (await window.cairnApp.node.stats()).webrtcConnections)
  assert(open2 === 0, `the failed attempt left no RTCPeerConnection open: ${open2}`)
  await c.page.screenshot({ path: join(artifacts, 'webrtc-02-relayed.png'), fullPage: true })
  step('interop: a js-libp2p page (@libp2p/webrtc) and cairn pages, over /webrtc both ways')
  const jsOrigin = await serveJsPeer()
  const j = await (await browser.newContext()).newPage()
  const jLog = capture(j)
  await j.goto(jsOrigin)
  await j.waitForFunction(() => typeof window.startPeer === 'function', null, { timeout: 30_000 })
  const relayAddr = await a.page.evaluate(() => window.cairnApp.node.addresses[0].split('/p2p-circuit')[0])
  const js = await j.evaluate((r) => window.startPeer(r), relayAddr)
    .catch((e) => { throw new Error(`the js-libp2p node did not start: ${e.message}\n${jLog.join('\n')}`) })
  step(`js-libp2p listens at ${js.addr}`)

  // cairn dials js-libp2p.
  const d = await open(await browser.newContext(), origin, 'D')
  const dId = await d.page.evaluate(() => window.cairnApp.node.peerId)
  const reached = await d.page.evaluate((addr) => window.cairnApp.node.connect(addr), js.addr)
    .catch((e) => { throw new Error(`cairn could not dial js-libp2p over /webrtc: ${e.message}\n${d.log.slice(-20).join('\n')}\n${jLog.slice(-20).join('\n')}`) })
  assert(reached === js.peerId, `cairn reached the js node: ${reached}`)
  // cairn's side of the connection is up when it sent the last Noise message; js-libp2p's
  // when that message arrived: wait for it rather than look once.
  await j.waitForFunction((p) => window.connectionsTo(p).some((c) => c.includes('/webrtc')), dId, { timeout: 15_000 })
    .catch(async () => { throw new Error(`js-libp2p has no /webrtc connection from cairn: ${await j.evaluate((p) => window.connectionsTo(p), dId)}`) })
  const rtt1 = await j.evaluate((p) => window.pingPeer(p), dId)
  await d.page.waitForFunction((p) => window.cairnApp.node.peers().some((x) => x.peerId === p && x.direct && x.rttMs !== undefined), js.peerId, { timeout: 30_000 })
  // cairn closed the relayed connection: what js and cairn exchanged went over /webrtc.
  await j.waitForFunction((p) => window.connectionsTo(p).every((c) => c.includes('/webrtc')), dId, { timeout: 15_000 })
    .catch(async () => { throw new Error(`the relayed connection to cairn stayed open: ${await j.evaluate((p) => window.connectionsTo(p), dId)}; cairn: ${JSON.stringify(await d.page.evaluate(() => window.cairnApp.node.peers()))}`) })
  await monitorPing(j, dId)
  step(`cairn → js-libp2p: direct; js pinged cairn in ${rtt1} ms, and cairn pinged js; cairn acknowledged js's FIN`)

  // js-libp2p dials cairn.
  const e = await open(await browser.newContext(), origin, 'E')
  const eId = await e.page.evaluate(() => window.cairnApp.node.peerId)
  const eAddr = await e.page.evaluate(() => window.cairnApp.node.addresses.find((x) => x.includes('/webrtc/')))
  assert(eAddr, 'cairn lists a /webrtc address')
  const remote = await j.evaluate((addr) => window.dialPeer(addr), eAddr)
    .catch((err) => { throw new Error(`js-libp2p could not dial cairn over /webrtc: ${err.message}\n${e.log.slice(-20).join('\n')}\n${jLog.slice(-20).join('\n')}`) })
  assert(remote.includes('/webrtc'), `js-libp2p's connection to cairn is /webrtc: ${remote}`)
  const rtt2 = await j.evaluate((p) => window.pingPeer(p), eId)
  await e.page.waitForFunction((p) => window.cairnApp.node.peers().some((x) => x.peerId === p && x.direct && x.rttMs !== undefined), js.peerId, { timeout: 30_000 })
  await monitorPing(j, eId)
  // The relayed connection js-libp2p dialed is its own to close (it keeps it); the direct one
  // must stay up through js-libp2p's connection monitor (a ping on each connection every
  // round, which drops the connection when one fails), so past two of its rounds, counted
  // as they complete.
  for (const id of [eId, dId]) await j.evaluate((p) => window.watchMonitor(p), id)
  await j.waitForFunction(([a, b]) => window.monitorRounds(a) >= 2 && window.monitorRounds(b) >= 2, [eId, dId], { timeout: 60_000 })
    .catch(async () => { throw new Error(`js-libp2p's monitor did not complete two rounds: ${await j.evaluate(([a, b]) => [window.monitorRounds(a), window.monitorRounds(b)], [eId, dId])}`) })
  for (const [who, id] of [['E', eId], ['D', dId]]) {
    const later = await j.evaluate((p) => window.connectionsTo(p), id)
    assert(later.some((c) => c.includes('/webrtc')), `js-libp2p's /webrtc connection to ${who} is still open after two monitor rounds: ${later}`)
  }
  step(`js-libp2p → cairn: direct; js pinged cairn in ${rtt2} ms, and cairn pinged js; both connections outlived js-libp2p's monitor`)
  step('bad signalling: no answer, a reset mid-handshake, an oversized frame, a wrong message')
  for (const [mode, want] of [['silent', /no direct connection within/], ['reset', /signalling failed|no direct connection/], ['garbage', /exceeds the 16384-byte limit/], ['wrong', /expected an SDP answer/]]) {
    const addr = await j.evaluate(([r, m]) => window.startMisbehaving(r, m), [relayAddr, mode])
    const t = Date.now()
    const err = await e.page.evaluate((x) => window.cairnApp.node.connect(x).then(() => null, (err) => String(err.message ?? err)), addr)
    const took = Date.now() - t
    assert(err && want.test(err), `${mode}: connect fails with a clear error: ${err}`)
    assert(took < 25_000, `${mode}: within bounded time: ${took} ms`)
    const rtc = await e.page.evaluate(async () => (await window.cairnApp.node.stats()).webrtcConnections)
    assert(rtc === 1, `${mode}: no RTCPeerConnection leaked (only js-libp2p's direct one is open): ${rtc}`)
    step(`${mode}: refused in ${took} ms: ${err}`)
  }
  step('passed')
} finally {
  await cleanup()
}
