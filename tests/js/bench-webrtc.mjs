// Browser-to-browser benchmark for `cargo xtask bench webrtc`: 64 MiB from one app page to
// another over a direct WebRTC connection (`/webrtc`), beside the same transfer through the
// relay over WebSocket (`?direct=off`) and a plain RTCDataChannel between two pages (the
// ceiling), in one run; and the Firefox rows: Firefox (ESR, puppeteer over BiDi) fetching from
// a Chromium page and a Chromium page fetching from Firefox over /webrtc, and Firefox through
// the relay. Each fetch is a fresh page (its own store); the clock runs from the connected
// page's `cat` call to the last byte.
//
// node bench-webrtc.mjs <cairn-relay (release)> <dist/ (the app, release)> <out.json>
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { openApp } from './app.mjs'
import { WEBRTC_FLAGS, atExit, cleanup, freePort, launchChromium, launchFirefox, relayBytes, startRelay, step as say } from './harness.mjs'

const [relayBin, dist, outJson] = process.argv.slice(2)
if (!relayBin || !dist || !outJson) {
  console.error('usage: node bench-webrtc.mjs <cairn-relay> <dist> <out.json>')
  process.exit(2)
}
const step = (what) => say('bench-webrtc', what)
const RUNS = 3
const MIB = 64
const work = mkdtempSync(join(tmpdir(), 'cairn-bench-webrtc-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]

/** Milliseconds to move `mib` MiB over one RTCDataChannel from one page to another (the
 * offer and answer carried by this script, ICE gathered first). */
async function rawChannel (browser, origin, mib) {
  const [tx, rx] = await Promise.all([0, 1].map(async () => {
    const page = await (await browser.newContext()).newPage()
    await page.goto(`${origin}health`)
    return page
  }))
  const gathered = () => new Promise((resolve) => {
    if (window.pc.iceGatheringState === 'complete') resolve()
    else window.pc.addEventListener('icegatheringstatechange', () => window.pc.iceGatheringState === 'complete' && resolve())
  })
  const offer = await tx.evaluate(async (gathered) => {
    window.pc = new RTCPeerConnection()
    window.dc = window.pc.createDataChannel('bench')
    await window.pc.setLocalDescription()
    await eval(`(${gathered})`)()
    return window.pc.localDescription.toJSON()
  }, gathered.toString())
  const answer = await rx.evaluate(async ([offer, gathered]) => {
    window.pc = new RTCPeerConnection()
    window.arrived = new Promise((resolve) => {
      window.pc.ondatachannel = ({ channel }) => {
        channel.binaryType = 'arraybuffer'
        let got = 0
        let t = 0
        channel.onmessage = (e) => {
          if (!t) t = performance.now()
          got += e.data.byteLength
          if (got >= window.expect) resolve(performance.now() - t)
        }
      }
    })
    await window.pc.setRemoteDescription(offer)
    await window.pc.setLocalDescription()
    await eval(`(${gathered})`)()
    return window.pc.localDescription.toJSON()
  }, [offer, gathered.toString()])
  await rx.evaluate((n) => { window.expect = n }, mib * 1048576)
  await tx.evaluate(async ([answer, total]) => {
    await window.pc.setRemoteDescription(answer)
    const dc = window.dc
    await new Promise((resolve) => dc.readyState === 'open' ? resolve() : (dc.onopen = resolve))
    const msg = new Uint8Array(16384)
    let sent = 0
    dc.bufferedAmountLowThreshold = 1 << 20
    const pump = () => { while (sent < total && dc.bufferedAmount < 4 << 20) { dc.send(msg); sent += msg.length } }
    dc.onbufferedamountlow = pump
    pump()
  }, [answer, mib * 1048576])
  const ms = await rx.evaluate(() => window.arrived)
  await tx.context().close()
  await rx.context().close()
  return ms
}

try {
  const http = `127.0.0.1:${await freePort()}`
  await startRelay(relayBin, http, ['--web-root', dist, '--identity', join(work, 'relay.key')])
  const origin = `http://${http}/`
  const browser = await launchChromium(WEBRTC_FLAGS)
  const firefox = await launchFirefox()
  const contextIn = (engine) => engine === 'firefox' ? firefox.createBrowserContext() : browser.newContext()

  step(`A adds ${MIB} MiB`)
  const file = join(work, 'file.bin')
  writeFileSync(file, randomBytes(MIB * 1024 * 1024))
  const a = await openApp(await browser.newContext(), origin, 'A')
  await a.page.setInputFiles('#file', file)
  await a.page.waitForSelector('#files li[data-cid]', { timeout: 300_000 })
  // The file by its path in the directory the app wraps it in (the root the app provides).
  const cid = `${await a.page.locator('#files li[data-cid]').first().getAttribute('data-cid')}/file.bin`
  const addrs = await a.page.evaluate(() => window.cairnApp.node.addresses)
  const circuit = addrs.find((x) => !x.includes('/webrtc/'))
  const webrtc = addrs.find((x) => x.includes('/webrtc/'))

  const fetchOnce = async (query, addr, cid, engine = 'chromium') => {
    const context = await contextIn(engine)
    const p = await openApp(context, `${origin}${query}`, `${query} in ${engine}`)
    const before = await relayBytes(http)
    const ms = await p.page.evaluate(async ({ addr, cid }) => {
      await window.cairnApp.node.connect(addr)
      const t = performance.now()
      const bytes = await window.cairnApp.node.cat(cid)
      const ms = performance.now() - t
      if (bytes.length !== 64 * 1024 * 1024) throw new Error(`got ${bytes.length} bytes`)
      return ms
    }, { addr, cid }).catch((e) => { throw new Error(`${query}: ${e.message}\n${p.log.slice(-10).join('\n')}`) })
    const relayed = (await relayBytes(http)) - before
    await context.close()
    return { ms, relayed }
  }

  step(`Firefox F adds ${MIB} MiB (made in the page)`)
  const f = await openApp(await contextIn('firefox'), origin, 'F')
  const fCid = await f.page.evaluate(async (mib) => {
    const bytes = new Uint8Array(mib << 20)
    for (let i = 0; i < bytes.length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536))
    return window.cairnApp.node.add(bytes)
  }, MIB)
  const fAddrs = await f.page.evaluate(() => window.cairnApp.node.addresses)
  const fWebrtc = fAddrs.find((x) => x.includes('/webrtc/'))

  const results = {}
  for (const [name, query, addr, from, engine] of [
    ['webrtc', '?', webrtc, cid, 'chromium'],
    ['relay_ws', '?direct=off', circuit, cid, 'chromium'],
    ['firefox_from_chromium_webrtc', '?', webrtc, cid, 'firefox'],
    ['chromium_from_firefox_webrtc', '?', fWebrtc, fCid, 'chromium'],
    ['firefox_relay_ws', '?direct=off', circuit, cid, 'firefox']
  ]) {
    const runs = []
    for (let i = 0; i < RUNS; i++) runs.push(await fetchOnce(query, addr, from, engine))
    step(`${name}: ${runs.map((r) => `${r.ms.toFixed(0)} ms (relay carried ${(r.relayed / 1048576).toFixed(1)} MiB)`).join(', ')}`)
    const ms = median(runs.map((r) => r.ms))
    results[name] = { ms, mbps: MIB * 1.048576 / (ms / 1000), relay_mib: median(runs.map((r) => r.relayed)) / 1048576 }
  }
  // The ceiling: a plain RTCDataChannel between two pages of the same browser (no libp2p,
  // no cairn), the same 64 MiB in 16 KiB messages, the sender kept under 4 MiB queued.
  step('ceiling: a plain RTCDataChannel between two pages')
  const ceiling = []
  for (let i = 0; i < RUNS; i++) ceiling.push(await rawChannel(browser, origin, MIB))
  step(`raw data channel: ${ceiling.map((ms) => `${ms.toFixed(0)} ms`).join(', ')}`)
  results.raw_channel = { ms: median(ceiling), mbps: MIB * 1.048576 / (median(ceiling) / 1000) }
  mkdirSync(dirname(outJson), { recursive: true })
  writeFileSync(outJson, JSON.stringify({ runs: RUNS, mib: MIB, chromium: browser.version(), firefox: await firefox.version(), results }, null, 2))
  const n = (x) => x.toFixed(0).padStart(6)
  console.log(`\nbrowser → browser (Chromium ${browser.version()}), ${MIB} MiB, median of ${RUNS}:`)
  console.log(`direct /webrtc       ${n(results.webrtc.mbps)} MB/s  (relay carried ${results.webrtc.relay_mib.toFixed(1)} MiB)`)
  console.log(`relay over WebSocket ${n(results.relay_ws.mbps)} MB/s  (relay carried ${results.relay_ws.relay_mib.toFixed(1)} MiB)`)
  console.log(`ratio webrtc/relay   ${(results.webrtc.mbps / results.relay_ws.mbps).toFixed(2)}`)
  console.log(`a plain data channel ${n(results.raw_channel.mbps)} MB/s  (two pages, no libp2p)  ratio webrtc/it ${(results.webrtc.mbps / results.raw_channel.mbps).toFixed(2)}`)
  console.log(`${await firefox.version()}:`)
  for (const [k, label] of [['firefox_from_chromium_webrtc', 'Firefox ← Chromium, /webrtc'], ['chromium_from_firefox_webrtc', 'Chromium ← Firefox, /webrtc'], ['firefox_relay_ws', 'Firefox ← relay over WebSocket']]) {
    console.log(`${label.padEnd(31)} ${n(results[k].mbps)} MB/s  (relay carried ${results[k].relay_mib.toFixed(1)} MiB)  ratio to Chromium's direct ${(results[k].mbps / results.webrtc.mbps).toFixed(2)}`)
  }
  console.log(`(JSON: ${outJson})`)
} catch (e) {
  console.error(`bench-webrtc: FAILED: ${e.stack ?? e}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
