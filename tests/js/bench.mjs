// Browser benchmarks for `cargo xtask bench`: a release cairn-relay serves a bench page
// (the `cairn` package, bundled by esbuild) and a 64 MiB file; headless Chromium runs each
// measurement a few times beside its baseline, and Firefox ESR (puppeteer over WebDriver
// BiDi) the add and fetch rows; the medians go to a JSON file and a table.
//
// node bench.mjs <cairn-relay (release)> <dist/ (the app, release)> <out.json>
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createServer } from 'node:http'
import { gzipSync } from 'node:zlib'
import { WebSocketServer } from 'ws'
import { atExit, bundleSite, capture, cleanup, freePort, launchChromium, launchFirefox, startRelay, step as say } from './harness.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const [relayBin, dist, outJson] = process.argv.slice(2)
if (!relayBin || !dist || !outJson) {
  console.error('usage: node bench.mjs <cairn-relay> <dist> <out.json>')
  process.exit(2)
}
const step = (what) => say('bench', what)
const RUNS = 3
const MIB = 64
const work = mkdtempSync(join(tmpdir(), 'cairn-bench-'))
atExit(() => rmSync(work, { recursive: true, force: true }))

/** A WebSocket server on loopback that sends `total` bytes in 64 KiB messages to whoever says so. */
async function wsServer (total) {
  const server = createServer((_, res) => res.end())
  const wss = new WebSocketServer({ server, perMessageDeflate: false })
  wss.on('connection', (sock) => sock.on('message', () => {
    const msg = Buffer.alloc(64 * 1024, 7)
    let sent = 0
    const pump = () => {
      while (sent < total) {
        if (sock.bufferedAmount > 8 * 1024 * 1024) return setTimeout(pump, 1)
        sock.send(msg)
        sent += msg.length
      }
    }
    pump()
  }))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  atExit(() => { wss.close(); server.close() })
  return `ws://127.0.0.1:${server.address().port}/`
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]
const mbps = (bytes, ms) => bytes / 1e6 / (ms / 1000)

try {
  step('bundling the bench page (esbuild)')
  const site = join(work, 'site')
  await bundleSite({
    entryPoints: { bench: join(here, 'bench-app/bench.js'), worker: join(here, '../../pkg/worker.js') },
    wasm: join(here, '../../pkg/dist/cairn_wasm_bg.wasm'),
    html: join(here, 'bench-app/index.html'),
    outdir: site
  })

  step(`a release relay holding a ${MIB} MiB file`)
  const store = join(work, 'store')
  const file = join(work, 'file')
  writeFileSync(file, randomBytes(MIB * 1024 * 1024))
  const cid = execFileSync(relayBin, ['add', file, '--store', store]).toString().trim()
  const http = `127.0.0.1:${await freePort()}`
  const relay = await startRelay(relayBin, http, ['--store', store, '--web-root', site, '--identity', join(work, 'id.key')])

  const browser = await launchChromium()
  /** A bench page in `context` (Playwright's or puppeteer's) and a runner of its measurements. */
  const benchPage = async (context, engine) => {
    const page = await context.newPage()
    const log = capture(page)
    await page.goto(`http://${http}/`)
    await page.waitForSelector('body[data-bench-ready="true"]', { timeout: 60_000 })
      .catch((e) => { throw new Error(`${engine}: the bench page did not start: ${e.message}\n${log.join('\n')}`) })
    return async (what, fn, ...args) => {
      const times = []
      for (let i = 0; i < RUNS; i++) {
        times.push(await page.evaluate(({ fn, args }) => window.bench[fn](...args), { fn, args })
          .catch((e) => { throw new Error(`${engine}: ${what}: ${e.message}\n${log.slice(-10).join('\n')}`) }))
      }
      step(`${engine}: ${what}: ${times.map((t) => typeof t === 'number' ? t.toFixed(0) : JSON.stringify(t)).join(', ')}`)
      return times
    }
  }
  const run = await benchPage(await browser.newContext(), 'Chromium')
  const bytes = MIB * 1024 * 1024
  const results = {}

  step('add')
  const hash = median(await run('WebCrypto SHA-256', 'sha256', MIB))
  for (const storage of ['memory', 'indexeddb']) {
    const inPage = median(await run(`add in the page (${storage})`, 'addPage', MIB, storage))
    const inWorker = median(await run(`add in a Worker (${storage})`, 'addWorker', MIB, storage))
    results[`add_${storage}`] = { page_mbps: mbps(bytes, inPage), worker_mbps: mbps(bytes, inWorker), sha256_mbps: mbps(bytes, hash) }
  }

  step('IndexedDB: batched vs one transaction per block')
  for (const [count, size] of [[256, 256 * 1024], [4096, 4096]]) {
    const batched = await run(`idb batched ${count}x${size}`, 'idb', count, size, false)
    const perBlock = await run(`idb per-block ${count}x${size}`, 'idb', count, size, true)
    const m = (xs, k) => median(xs.map((x) => x[k]))
    const total = count * size
    results[`idb_${count}x${size}`] = {
      put_batched_mbps: mbps(total, m(batched, 'putMs')),
      put_per_block_mbps: mbps(total, m(perBlock, 'putMs')),
      get_mbps: mbps(total, m(batched, 'getMs'))
    }
  }

  step('fetch browser <- relay over WebSocket, beside HTTP from the same relay')
  const ws = median(await run('fetch over /cas', 'fetchRelay', relay.addr, cid))
  const plain = median(await run('HTTP /ipfs/{cid}', 'fetchHttp', cid))
  const viaGateway = median(await run('a node on the relay\'s gateway alone (verified)', 'fetchGateway', cid))
  // The browser's own WebSocket ceiling: the same bytes from a plain WebSocket server on
  // loopback (Node's ws, 64 KiB messages, nothing done with them in the page).
  const rawWs = median(await run('plain WebSocket, 64 KiB messages', 'wsCeiling', await wsServer(bytes), bytes))
  results.fetch = { cas_ws_mbps: mbps(bytes, ws), http_mbps: mbps(bytes, plain), raw_ws_mbps: mbps(bytes, rawWs), gateway_mbps: mbps(bytes, viaGateway) }

  step('Firefox: add and fetch')
  const firefox = await launchFirefox()
  const ffRun = await benchPage(await firefox.createBrowserContext(), 'Firefox')
  const ffHash = median(await ffRun('WebCrypto SHA-256', 'sha256', MIB))
  const ff = {}
  for (const storage of ['memory', 'indexeddb']) {
    const inPage = median(await ffRun(`add in the page (${storage})`, 'addPage', MIB, storage))
    const inWorker = median(await ffRun(`add in a Worker (${storage})`, 'addWorker', MIB, storage))
    ff[`add_${storage}`] = { page_mbps: mbps(bytes, inPage), worker_mbps: mbps(bytes, inWorker), sha256_mbps: mbps(bytes, ffHash) }
  }
  const ffWs = median(await ffRun('fetch over /cas', 'fetchRelay', relay.addr, cid))
  const ffPlain = median(await ffRun('HTTP /ipfs/{cid}', 'fetchHttp', cid))
  ff.fetch = { cas_ws_mbps: mbps(bytes, ffWs), http_mbps: mbps(bytes, ffPlain) }
  results.firefox = ff

  step('what the app loads, gzipped')
  const sizes = {}
  // The app's own script and the package's files it loads (worker.js only for Workers).
  for (const f of readdirSync(dist, { recursive: true })) {
    if (/\.(wasm|js)$/.test(f) && !f.endsWith('worker.js')) {
      const raw = readFileSync(join(dist, f))
      sizes[f] = { bytes: raw.length, gzip: gzipSync(raw, { level: 9 }).length }
    }
  }
  results.app_size = sizes

  mkdirSync(dirname(outJson), { recursive: true })
  const ffVersion = await firefox.version()
  writeFileSync(outJson, JSON.stringify({ runs: RUNS, mib: MIB, chromium: browser.version(), firefox: ffVersion, results }, null, 2))
  const r = results
  const f = (x) => x.toFixed(0).padStart(8)
  console.log(`\nbrowser (Chromium ${browser.version()}), ${MIB} MiB, median of ${RUNS}:`)
  console.log(`add, memory store:     page ${f(r.add_memory.page_mbps)} MB/s  worker ${f(r.add_memory.worker_mbps)} MB/s  WebCrypto SHA-256 ${f(r.add_memory.sha256_mbps)} MB/s  ratio page/sha ${(r.add_memory.page_mbps / r.add_memory.sha256_mbps).toFixed(2)}`)
  console.log(`add, IndexedDB:        page ${f(r.add_indexeddb.page_mbps)} MB/s  worker ${f(r.add_indexeddb.worker_mbps)} MB/s  ratio worker/page ${(r.add_indexeddb.worker_mbps / r.add_indexeddb.page_mbps).toFixed(2)}`)
  for (const k of Object.keys(r).filter((k) => k.startsWith('idb_'))) {
    const x = r[k]
    console.log(`IndexedDB ${k.slice(4).padEnd(12)} put batched ${f(x.put_batched_mbps)} MB/s  per block ${f(x.put_per_block_mbps)} MB/s  ratio ${(x.put_batched_mbps / x.put_per_block_mbps).toFixed(1)}x  get ${f(x.get_mbps)} MB/s`)
  }
  console.log(`fetch from the relay:  /cas over WebSocket ${f(r.fetch.cas_ws_mbps)} MB/s  HTTP ${f(r.fetch.http_mbps)} MB/s  ratio ${(r.fetch.cas_ws_mbps / r.fetch.http_mbps).toFixed(2)}`)
  console.log(`fetch, gateway source:  the relay's gateway, block by block ${f(r.fetch.gateway_mbps)} MB/s  ratio to HTTP ${(r.fetch.gateway_mbps / r.fetch.http_mbps).toFixed(2)}`)
  console.log(`WebSocket ceiling:     a plain WebSocket ${f(r.fetch.raw_ws_mbps)} MB/s  ratio to HTTP ${(r.fetch.raw_ws_mbps / r.fetch.http_mbps).toFixed(2)}  cairn /cas to it ${(r.fetch.cas_ws_mbps / r.fetch.raw_ws_mbps).toFixed(2)}`)
  console.log(`${ffVersion}, the same rows:`)
  console.log(`add, memory store:     page ${f(ff.add_memory.page_mbps)} MB/s  worker ${f(ff.add_memory.worker_mbps)} MB/s  WebCrypto SHA-256 ${f(ff.add_memory.sha256_mbps)} MB/s  ratio page/sha ${(ff.add_memory.page_mbps / ff.add_memory.sha256_mbps).toFixed(2)}`)
  console.log(`add, IndexedDB:        page ${f(ff.add_indexeddb.page_mbps)} MB/s  worker ${f(ff.add_indexeddb.worker_mbps)} MB/s`)
  console.log(`fetch from the relay:  /cas over WebSocket ${f(ff.fetch.cas_ws_mbps)} MB/s  HTTP ${f(ff.fetch.http_mbps)} MB/s  ratio ${(ff.fetch.cas_ws_mbps / ff.fetch.http_mbps).toFixed(2)}`)
  for (const [name, s] of Object.entries(sizes)) console.log(`app loads ${name.padEnd(22)} ${(s.bytes / 1024).toFixed(0).padStart(6)} KiB, gzipped ${(s.gzip / 1024).toFixed(0).padStart(6)} KiB`)
  console.log(`(JSON: ${outJson})`)
} catch (e) {
  console.error(`bench: FAILED: ${e.stack ?? e}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
