// The golden path (helia#182): content added in a browser stays retrievable by any IPFS
// node that knows only the DHT, after the tab is closed. In headless Chromium (Playwright,
// Debian's chromium), with Helia processes (Node 22) as the IPFS network; everything it
// starts is stopped at the end, pass or fail.
//
// node dht-keep.mjs <cairn-relay binary> <dist/ (the built app)> <artifacts dir>
//
// - H1 and H2, two Helia DHT servers, stand in for the public IPFS DHT.
// - R, a cairn-relay serving the app, joins it (--ipfs-dht, bootstrapping from H1) and keeps
//   copies for the peers that ask (--pin-quota).
// - A page of the app on R adds a file and, in the storage panel, asks for a copy on the
//   relay: R fetches it from the page, verifies it, pins it and provides it in the DHT.
// - The browser closes. A Helia node that knows only H2 finds R in the DHT and fetches the
//   file from it over bitswap, byte for byte, within 30 s: R announces a copy it keeps as it
//   pins it, not at its next scan of the store (every 60 s).
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { addFile, assert, openApp, randomFile } from './app.mjs'
import { atExit, cleanup, freePort, launchChromium, startRelay, step as say } from './harness.mjs'

const [relayBin, dist, artifacts] = process.argv.slice(2)
if (!relayBin || !dist || !artifacts) {
  console.error('usage: node dht-keep.mjs <cairn-relay> <dist> <artifacts>')
  process.exit(2)
}
const step = (what) => say('dht-keep', what)
const MiB = 1024 * 1024
const work = mkdtempSync(join(tmpdir(), 'cairn-dht-keep-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
mkdirSync(artifacts, { recursive: true })

/** Runs `helia-peer.mjs mode ...args` under this Node (22), stopped at exit; resolves to
 * `{ proc, info }` once it printed its JSON line (`untilExit`: and exited 0). */
function helia (mode, args, { limitMs, untilExit = false } = {}) {
  const proc = spawn(process.execPath, [join(import.meta.dirname, 'helia-peer.mjs'), mode, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, CAIRN_JS_TIMEOUT_MS: String(limitMs ?? 300_000) }
  })
  atExit(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
  let stderr = ''
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000) })
  return new Promise((resolve, reject) => {
    let info = null
    proc.once('exit', (code) => {
      if (untilExit && code === 0 && info) resolve({ proc, info })
      else reject(new Error(`helia-peer.mjs ${mode} exited (${code}): ${stderr}`))
    })
    createInterface({ input: proc.stdout }).once('line', (l) => {
      try { info = JSON.parse(l) } catch (e) { reject(new Error(`helia-peer.mjs ${mode} printed ${l}: ${e.message}`)) }
      if (!untilExit) resolve({ proc, info })
    })
  })
}

try {
  step('H1 and H2, two Helia DHT servers: the stand-in for the IPFS DHT')
  const h1 = await helia('dht', [])
  const h1Addr = h1.info.addrs[0]
  const h2 = await helia('dht', [h1Addr])
  const h2Addr = h2.info.addrs[0]

  step('R joins it (--ipfs-dht from H1) and keeps copies for peers (--pin-quota)')
  const http = `127.0.0.1:${await freePort()}`
  const r = await startRelay(relayBin, http, [
    '--listen', '/ip4/127.0.0.1/tcp/0/ws', '--listen', '/ip4/127.0.0.1/tcp/0',
    '--ipfs-dht', '--bootstrap', h1Addr,
    '--pin-quota', '256MiB',
    '--web-root', dist, '--store', join(work, 'store'), '--identity', join(work, 'r.key')
  ])

  step('a page adds a file and asks, in its storage panel, for a copy on the relay')
  const browser = await launchChromium()
  const a = await openApp(await browser.newContext(), `http://${http}/`, 'A')
  const f = randomFile(work, 'kept.bin', 3 * MiB + 4321)
  const added = await addFile(a, f)
  const pin = a.page.locator(`#pins li[data-cid="${added.cid}"]`)
  await pin.waitFor({ timeout: 30_000 })
    .catch((e) => { throw new Error(`the added file is not among the pins: ${e.message}`) })
  await pin.locator('button[data-action="replicate"]').click()
  await a.page.waitForSelector(`#pins li[data-cid="${added.cid}"][data-copies="1"]`, { timeout: 120_000 })
    .catch(async (e) => {
      const status = await a.page.locator('#storage-status').textContent()
      throw new Error(`no copy was kept: ${e.message}: ${status}\n${a.log.slice(-20).join('\n')}`)
    })
  const copies = await a.page.evaluate((cid) => window.cairnApp.node.replicas(cid), added.cid)
  assert(copies.length === 1 && copies[0].peerId === r.peerId, `the relay keeps the copy: ${JSON.stringify(copies)}`)
  await a.page.screenshot({ path: join(artifacts, 'dht-keep-copy.png'), fullPage: true })

  step('the browser closes; a Helia node that knows only H2 finds the file in the DHT and fetches it')
  await browser.close()
  const started = Date.now()
  const got = await helia('find-fetch', [h2Addr, `${added.cid}/${f.name}`], { limitMs: 30_000, untilExit: true })
  assert(got.info.provider === r.peerId, `the provider found is the relay: ${JSON.stringify(got.info)}`)
  assert(got.info.bytes === f.size && got.info.sha256 === f.sha256, `byte for byte: ${JSON.stringify(got.info)} vs ${f.size} ${f.sha256}`)
  step(`fetched ${f.size} bytes in ${Date.now() - started} ms from ${got.info.provider}; providers found but closed: ${JSON.stringify(got.info.unreachable)}`)
  h1.proc.stdin.end()
  h2.proc.stdin.end()
  step('passed')
} catch (e) {
  console.error(e)
  process.exitCode = 1
} finally {
  await cleanup()
}
