// What the browser tests share: free ports, a cairn-relay started and always stopped,
// Debian's Chromium through playwright-core, Debian's Firefox ESR through puppeteer-core
// (WebDriver BiDi: no patched browser), and cleanup on every exit path.
import { spawn } from 'node:child_process'
import { createCipheriv } from 'node:crypto'
import { cpSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'
import * as esbuild from 'esbuild'
import { chromium } from 'playwright-core'
import puppeteer from 'puppeteer-core'

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort () {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

const cleanups = []
let cleaning = null
/** How long one cleanup step may take: a browser that hangs on close must not hang the test. */
const CLEANUP_STEP_MS = 15_000

/** Runs `fn` when the test ends, pass or fail (or on SIGINT/SIGTERM), last added first. */
export function atExit (fn) {
  cleanups.push(fn)
}

/** Runs the cleanups, each given CLEANUP_STEP_MS at most; what hangs is named and left to
 * the process's exit (Playwright's Chromium ends with its pipe; puppeteer kills Firefox). */
export async function cleanup () {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const fn = cleanups.pop()
      let timer
      const late = new Promise((resolve) => { timer = setTimeout(() => resolve('late'), CLEANUP_STEP_MS) })
      const r = await Promise.race([Promise.resolve().then(fn).catch(() => {}), late])
      clearTimeout(timer)
      if (r === 'late') console.error(`harness: a cleanup step did not end within ${CLEANUP_STEP_MS / 1000} s (left to the exit): ${fn.toString().slice(0, 80)}`)
    }
  })()
  return cleaning
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    console.error(`harness: ${sig}: stopping what this test started`)
    cleanup().finally(() => process.exit(130))
  })
}

// No test may run on for ever: past CAIRN_TEST_LIMIT_S (20 min unless set) it fails, after
// stopping what it started. `cargo xtask test` also stops a script that outlives its limit.
const LIMIT_S = Number(process.env.CAIRN_TEST_LIMIT_S || 1200)
setTimeout(() => {
  console.error(`harness: the test ran past its limit of ${LIMIT_S} s (CAIRN_TEST_LIMIT_S): failing it`)
  cleanup().finally(() => process.exit(1))
}, LIMIT_S * 1000).unref()

/**
 * Runs `cmd args` to the end (killed past `limitMs`), timing it from start to exit:
 * resolves `{ ms, stdout }` on exit code 0, rejects with the end of its stderr otherwise.
 * The benchmarks time whole commands with it.
 */
export function timed (cmd, args, limitMs = 600_000) {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAIRN_LOG: 'error' } })
    atExit(() => { if (p.exitCode === null) p.kill('SIGKILL') })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d) => { stdout += d })
    p.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000) })
    const timer = setTimeout(() => p.kill('SIGKILL'), limitMs)
    p.on('error', (e) => { clearTimeout(timer); reject(e) })
    p.on('exit', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve({ ms: performance.now() - started, stdout })
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr}`))
    })
  })
}

/** Writes `bytes` deterministic pseudo-random bytes (AES-CTR of zeros: nothing deduplicates). */
export function pseudoRandomFile (path, bytes) {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 9))
  writeFileSync(path, cipher.update(Buffer.alloc(bytes)))
}

/**
 * Starts `cairn-relay serve` with `args` (plus HTTP on `http` and, unless `args` has a
 * `--listen`, a WebSocket listener on a free port), and resolves once it printed its first address: `{ addr, peerId, http, proc }`.
 */
export async function startRelay (bin, http, args) {
  // A WebSocket listener on a free port, unless `args` names its own listeners.
  const listen = args.includes('--listen') ? [] : ['--listen', '/ip4/127.0.0.1/tcp/0/ws']
  const proc = spawn(bin, ['serve', ...listen, '--http', http, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CAIRN_LOG: 'error' }
  })
  atExit(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') })
  let stderr = ''
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000) })
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the relay printed no address within 30 s: ${stderr}`)), 30_000)
    proc.once('exit', (code) => reject(new Error(`the relay exited (${code}): ${stderr}`)))
    createInterface({ input: proc.stdout }).once('line', (l) => { clearTimeout(timer); resolve(l.trim()) })
  })
  if (!addr.includes('/ws/p2p/')) throw new Error(`unexpected relay address ${addr}`)
  return { addr, peerId: addr.split('/p2p/').pop(), http, proc }
}

/** Debian's Chromium, headless, with `args` besides the usual ones; closed at exit. */
export async function launchChromium (args = []) {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', ...args]
  })
  watchClose(browser, 'Chromium')
  return browser
}

/** Closes `browser` at exit, and says so when it goes away before the test closed it (a
 * crash, or a kill from outside): a test's later steps then fail with "closed". */
function watchClose (browser, name) {
  let closing = false
  const close = browser.close.bind(browser)
  browser.close = (...args) => { closing = true; return close(...args) }
  browser.on('disconnected', () => {
    if (!closing) console.error(`harness: ${name} went away before the test closed it (it crashed or was killed) at ${new Date().toISOString()}`)
  })
  atExit(() => browser.close())
}

/**
 * Chromium with a profile on disk (`dir`), closed at exit. Playwright's `newContext()` is
 * off the record: its IndexedDB lives in memory with a quota of about 1.3 GiB here.
 */
export async function launchPersistent (dir) {
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage']
  })
  atExit(() => context.close())
  return context
}

/** Where Debian's Firefox ESR is (`cargo xtask test` installs it). */
export const FIREFOX = '/usr/bin/firefox-esr'

/** Firefox preferences for WebRTC between pages of one machine, as WEBRTC_FLAGS are for
 * Chromium: real host candidates (no mDNS names), loopback ones included. */
export const FIREFOX_PREFS = {
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.peerconnection.ice.loopback': true
}

/** Debian's Firefox ESR, headless, driven over WebDriver BiDi by puppeteer-core; closed at
 * exit. Its pages are puppeteer's, not Playwright's (`page.evaluate`, `waitForSelector`,
 * `waitForFunction(fn, options, ...args)`). */
export async function launchFirefox () {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: FIREFOX_PREFS
  })
  watchClose(browser, 'Firefox')
  return browser
}

/** Collects a page's console and errors, for failure messages. */
export function capture (page) {
  const log = []
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`))
  page.on('crash', () => {
    log.push('crash: the page crashed')
    console.error(`harness: the page at ${page.url()} crashed`)
  })
  return log
}

/** Chromium flags for WebRTC between pages of one machine: real host candidates instead
 * of mDNS names (which need a resolver the sandbox does not have). */
export const WEBRTC_FLAGS = ['--disable-features=WebRtcHideLocalIpsWithMdns']

/** The bytes a cairn-relay's transports carried so far, both ways (from its /metrics). */
export async function relayBytes (http) {
  const text = await (await fetch(`http://${http}/metrics`)).text()
  let total = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('libp2p_bandwidth_bytes_total')) total += Number(line.split(' ').pop())
  }
  return total
}

export function step (name, what) {
  console.error(`${name}: ${what}`)
}

/**
 * A static site in `outdir`: `entryPoints` ({ name: file }) bundled by esbuild as ES
 * modules, cairn's wasm beside them (where the package's loader looks by default), and
 * `html` as index.html.
 */
export async function bundleSite ({ entryPoints, wasm, html, outdir }) {
  mkdirSync(outdir, { recursive: true })
  await esbuild.build({ entryPoints, bundle: true, format: 'esm', outdir, logLevel: 'warning' })
  cpSync(wasm, join(outdir, 'cairn_wasm_bg.wasm'))
  cpSync(html, join(outdir, 'index.html'))
}

/**
 * Serves the js-libp2p browser node of webrtc-peer.js (bundled with esbuild) on 127.0.0.1
 * until exit; resolves to its page's URL. Served from 127.0.0.1 like the app: a page the
 * browser itself fulfils counts as public, and Chromium then refuses its connections to a
 * loopback relay.
 */
export async function serveJsPeer () {
  const here = dirname(fileURLToPath(import.meta.url))
  const bundle = await esbuild.build({ entryPoints: [join(here, 'webrtc-peer.js')], bundle: true, format: 'esm', write: false, logLevel: 'warning' })
  const port = await freePort()
  const server = createHttpServer((req, res) => {
    if (req.url.endsWith('.js')) {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      res.end(bundle.outputFiles[0].text)
    } else {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end('<!doctype html><script type="module" src="/peer.js"></script>')
    }
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  atExit(() => new Promise((resolve) => server.close(resolve)))
  return `http://127.0.0.1:${port}/`
}
