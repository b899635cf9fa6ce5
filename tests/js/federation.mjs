// Browsers on several relays, in headless Chromium (Playwright, Debian's chromium). Starts
// its own cairn-relays and stops them at the end, pass or fail.
//
// node federation.mjs <cairn-relay binary> <dist/ (the built app)> <artifacts dir>
//
// - Relay R2 federates with R1 (--bootstrap); each lists the other in /health.
// - X opens the app from R1 and reserves on R1 and on R2 (learned from R1's /health); Y,
//   on R2 only, fetches what X added: found through the relays' DHT. W, on R1 only, adds
//   a file; V, on R2 only, finds it in the DHT and fetches it.
// - R1 dies: X stays reachable through R2 (Z, on R2 with no direct connections, fetches a
//   file X adds afterwards); when R1 is back at its address, X reserves on it again by
//   itself, and the app never said it lost its relay.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { addFile as add, allFrom, assert, downloaded, openApp as open, randomFile, transferEnds } from './app.mjs'
import { cleanup, freePort, launchChromium, startRelay, step as say, WEBRTC_FLAGS, atExit } from './harness.mjs'

const [relayBin, dist, artifacts] = process.argv.slice(2)
if (!relayBin || !dist || !artifacts) {
  console.error('usage: node federation.mjs <cairn-relay> <dist> <artifacts>')
  process.exit(2)
}
const step = (what) => say('federation', what)
const MiB = 1024 * 1024
const work = mkdtempSync(join(tmpdir(), 'cairn-federation-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
mkdirSync(artifacts, { recursive: true })

/** R1's /health once `ok` holds for it. The relay is another process with nothing to
 * subscribe to: its /health is read every 100 ms, for at most 30 s. */
async function healthOnce (http, what, ok) {
  const deadline = Date.now() + 30_000
  let last = null
  while (Date.now() < deadline) {
    last = await (await fetch(`http://${http}/health`)).json()
    if (ok(last)) return last
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`${what} never showed in /health: ${JSON.stringify(last)}`)
}

/** Waits until the page's node lists circuit addresses through exactly the relays `want`
 * says (peer id → true: through it; false: not through it). */
async function until (p, want, what) {
  await p.page.waitForFunction((want) => {
    const addrs = window.cairnApp?.node?.addresses ?? []
    return Object.entries(want).every(([id, on]) => addrs.some((a) => a.includes(`/p2p/${id}/p2p-circuit`)) === on)
  }, want, { timeout: 60_000, polling: 100 })
    .catch(async (e) => {
      const addrs = await p.page.evaluate(() => window.cairnApp?.node?.addresses)
      throw new Error(`${p.name}: ${what}: ${e.message}: ${JSON.stringify(addrs)}\n${p.log.slice(-20).join('\n')}`)
    })
}

async function shot ({ page }, what) {
  await page.screenshot({ path: join(artifacts, `federation-${what}.png`), fullPage: true })
}

try {
  step('R1 and R2, R2 bootstrapping from R1')
  const r1Port = await freePort()
  const r1Http = `127.0.0.1:${await freePort()}`
  const r1Args = ['--listen', `/ip4/127.0.0.1/tcp/${r1Port}/ws`, '--web-root', dist, '--identity', join(work, 'r1.key')]
  let r1 = await startRelay(relayBin, r1Http, r1Args)
  const r2Http = `127.0.0.1:${await freePort()}`
  const r2 = await startRelay(relayBin, r2Http, ['--web-root', dist, '--identity', join(work, 'r2.key'), '--bootstrap', r1.addr])
  const h1 = await healthOnce(r1Http, 'R2 federated with R1', (h) => h.federation?.relays?.some((r) => r.peer_id === r2.peerId))
  const h2 = await healthOnce(r2Http, 'R2 connected to its bootstrap peer', (h) => h.federation?.bootstrap?.[0]?.connected === true)
  assert(h2.federation.relays.some((r) => r.peer_id === r1.peerId), `R2 lists R1: ${JSON.stringify(h2.federation)}`)
  assert(h1.federation.relays.find((r) => r.peer_id === r2.peerId).addrs.some((a) => a.includes('/ws/')), 'R1 lists where R2 listens')

  const browser = await launchChromium(WEBRTC_FLAGS)
  step('X opens the app from R1: reservations on R1 and on R2 (from R1\'s /health)')
  const x = await open(await browser.newContext(), `http://${r1Http}/`, 'X')
  await until(x, { [r1.peerId]: true, [r2.peerId]: true }, 'X reserves on both relays')
  const xStatus = await x.page.locator('#node-status').textContent()
  assert(/through 2 relays/.test(xStatus), `the app says so: ${xStatus}`)

  step('Y, on R2 only, fetches what X added')
  const f1 = randomFile(work, 'one.bin', 8 * MiB)
  const one = await add(x, f1)
  const onR2 = (cid, extra = '') => `http://${r2Http}/?relay=${encodeURIComponent(r2.addr)}${extra}#/cid/${cid}`
  const y = await open(await browser.newContext(), onR2(one.cid), 'Y')
  const got = await transferEnds(y)
  const dl = await downloaded(y)
  assert(dl.size === f1.size && dl.sha256 === f1.sha256, `Y's bytes are X's: ${JSON.stringify(dl)}`)
  assert(allFrom(got.last, 'peers'), `all from X: ${JSON.stringify(got.last)}`)
  await shot(x, '1-x-on-two-relays')

  step('W, on R1 only, adds; V, on R2 only, finds and fetches it (through R1\'s circuit)')
  const w = await open(await browser.newContext(), `http://${r1Http}/?relay=${encodeURIComponent(r1.addr)}`, 'W')
  await until(w, { [r1.peerId]: true, [r2.peerId]: false }, 'W reserves on R1 alone')
  const f3 = randomFile(work, 'three.bin', 4 * MiB)
  const three = await add(w, f3)
  const v = await open(await browser.newContext(), onR2(three.cid), 'V')
  const gotW = await transferEnds(v)
  const dlW = await downloaded(v)
  assert(dlW.size === f3.size && dlW.sha256 === f3.sha256, `V's bytes are W's: ${JSON.stringify(dlW)}`)
  assert(allFrom(gotW.last, 'peers'), `all from W: ${JSON.stringify(gotW.last)}`)
  await w.page.close()

  step('R1 dies: X stays reachable through R2')
  r1.proc.kill('SIGKILL')
  await until(x, { [r1.peerId]: false, [r2.peerId]: true }, 'X drops R1\'s circuit and keeps R2\'s')
  const f2 = randomFile(work, 'two.bin', 4 * MiB)
  const two = await add(x, f2)
  // Z makes no direct connection: the bytes cross R2's circuit to X.
  const z = await open(await browser.newContext(), onR2(two.cid, '&direct=off'), 'Z')
  const gotZ = await transferEnds(z)
  const dlZ = await downloaded(z)
  assert(dlZ.size === f2.size && dlZ.sha256 === f2.sha256, `Z's bytes are X's: ${JSON.stringify(dlZ)}`)
  assert(allFrom(gotZ.last, 'peers'), `all from X through R2: ${JSON.stringify(gotZ.last)}`)
  const during = await x.page.getAttribute('#node-status', 'data-state')
  assert(during === 'ready', `X still says it is connected (R2 is up): ${during}`)

  step('R1 comes back at its address: X reserves on it again by itself')
  r1 = await startRelay(relayBin, r1Http, r1Args)
  await until(x, { [r1.peerId]: true, [r2.peerId]: true }, 'X reserves on R1 again')
  await shot(x, '2-x-back-on-two-relays')
  const after = await x.page.getAttribute('#node-status', 'data-state')
  assert(after === 'ready', `X's status stayed ready: ${after}`)

  console.log('federation: all passed')
} catch (e) {
  console.error(`federation: FAILED: ${e.stack ?? e}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
