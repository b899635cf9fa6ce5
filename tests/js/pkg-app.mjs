// The npm package test: installs the packed `cairn-cas` tarball into pkg-app/, type-checks an
// app against its types, bundles the app with esbuild, starts a cairn-relay serving it, and
// runs it in headless Chromium and headless Firefox: page A adds and fetches (in the page and
// in a Worker); page B, in the other browser, fetches A's file through the relay — once with
// A in Chromium, once with A in Firefox.
//
// node pkg-app.mjs <cairn-cas-x.y.z.tgz> <cairn-relay binary>
// The relay and the browser are stopped at the end, pass or fail.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { atExit, bundleSite, cleanup, freePort, launchChromium, launchFirefox, startRelay, step as say } from './harness.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const app = join(here, 'pkg-app')
const [tarball, relayBin] = process.argv.slice(2)
if (!tarball || !relayBin) {
  console.error('usage: node pkg-app.mjs <cairn-cas.tgz> <cairn-relay>')
  process.exit(2)
}
const step = (what) => say('pkg-app', what)
const work = mkdtempSync(join(tmpdir(), 'cairn-pkg-app-'))
atExit(() => rmSync(work, { recursive: true, force: true }))

try {
  step(`installing ${tarball}`)
  rmSync(join(app, 'node_modules'), { recursive: true, force: true })
  execFileSync('npm', ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--offline', tarball], { cwd: app, stdio: 'inherit' })

  step('type-checking an app against the package\'s types (tsc --noEmit)')
  execFileSync(process.execPath, [join(here, 'node_modules/typescript/bin/tsc'), '-p', app], { stdio: 'inherit' })

  step('bundling with esbuild')
  const out = join(work, 'site')
  await bundleSite({
    entryPoints: { app: join(app, 'app.js'), worker: join(app, 'node_modules/cairn-cas/worker.js') },
    wasm: join(app, 'node_modules/cairn-cas/dist/cairn_wasm_bg.wasm'),
    html: join(app, 'index.html'),
    outdir: out
  })

  step('starting cairn-relay')
  const http = `127.0.0.1:${await freePort()}`
  const { addr } = await startRelay(relayBin, http, ['--web-root', out, '--identity', join(work, 'id.key')])

  step('running the app in Chromium and Firefox')
  const browsers = { Chromium: await launchChromium(), Firefox: await launchFirefox() }
  // Playwright (Chromium) and puppeteer (Firefox) differ only in how a context is made and
  // in waitForFunction's arguments.
  const open = async (engine, query) => {
    const browser = browsers[engine]
    const context = engine === 'Firefox' ? await browser.createBrowserContext() : await browser.newContext()
    const page = await context.newPage()
    const log = []
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`))
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`))
    await page.goto(`http://${http}/?relay=${encodeURIComponent(addr)}&${query}`)
    const ready = () => window.cairnResult !== undefined
    await (engine === 'Firefox' ? page.waitForFunction(ready, { timeout: 180_000 }) : page.waitForFunction(ready, null, { timeout: 180_000 }))
      .catch((e) => { throw new Error(`${engine}: ${e.message}\n${log.join('\n')}`) })
    const result = await page.evaluate(() => window.cairnResult)
    if (!result.ok) throw new Error(`${engine} ${query}: ${result.error}\n${log.join('\n')}`)
    return result
  }
  // Other bytes each round: B can only have them from this round's A.
  for (const [seed, first, second] of [[1, 'Chromium', 'Firefox'], [2, 'Firefox', 'Chromium']]) {
    const a = await open(first, `role=a&seed=${seed}`)
    step(`page A in ${first}: ${JSON.stringify(a)}`)
    const b = await open(second, `role=b&seed=${seed}&cid=${a.cid}`)
    step(`page B in ${second}: ${JSON.stringify(b)}`)
    if (b.fromPeers < 1) throw new Error(`page B in ${second} fetched nothing from peers`)
    console.log(`the npm package works: ${a.cid} added in page A and its Worker in ${first}, fetched by page B in ${second} (${b.blocks} blocks, ${b.fromPeers} from peers)`)
  }
} catch (e) {
  console.error(`pkg-app: FAILED: ${e.stack ?? e}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
