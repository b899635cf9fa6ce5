// What the tests of the web app share: opening it in a page, adding a file through its file
// picker, waiting for a transfer, and reading back what it downloaded.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { capture } from './harness.mjs'

export function assert (ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`)
}

/** Whether every block of a fetch's progress `p` came from `source`, but the file's root,
 * which opening a share link read already (to tell a file from a directory) and kept.
 * From `peers`, a few blocks (1 %, at least 1) may come through the IPFS source instead:
 * in these tests only the pages hold the content, so that is bitswap from the same page,
 * after a `/cas` request failed (it happens about once in 15 runs, over a connection
 * being replaced; the fetch's `lastDetour` says why, and is printed). */
export function allFrom (p, source) {
  const by = p.bySource
  const spare = source === 'peers' ? Math.max(1, Math.floor(p.blocksDone / 100)) : 0
  const detoured = source === 'peers' ? by.ipfs : 0
  noteDetours(p)
  return by[source] + detoured + by.local === p.blocksDone && by.local <= 1 && by[source] > 0 && detoured <= spare
}

/** A script for a page, run before the app's own: it keeps a timeline of the page's
 * `RTCDataChannel`s in `window.__channels`, sampled every 250 ms (the last 2 minutes):
 * `[ms since the page started, channels this page opened that are not closed yet, of them
 * still connecting, channels the peer opened that are not closed yet, bytes queued to send
 * on all of them, bytes received so far]`. When a transfer over /webrtc stalls, the two
 * pages' timelines tell whether the sender's queue stopped draining, the receiver's
 * channels never opened, or no request arrived ([`channelTimeline`]). */
export const CHANNEL_PROBE = `(() => {
  const live = new Set()
  const st = { samples: [], received: 0 }
  window.__channels = st
  const track = (dc, ours) => {
    const c = { dc, ours }
    live.add(c)
    dc.addEventListener('message', (e) => { st.received += e.data?.byteLength ?? 0 })
    dc.addEventListener('close', () => live.delete(c))
  }
  const Base = window.RTCPeerConnection
  if (!Base) return
  const create = Base.prototype.createDataChannel
  Base.prototype.createDataChannel = function (...args) {
    const dc = create.apply(this, args)
    track(dc, true)
    return dc
  }
  window.RTCPeerConnection = class extends Base {
    constructor (...args) {
      super(...args)
      this.addEventListener('datachannel', (e) => track(e.channel, false))
    }
  }
  setInterval(() => {
    let out = 0, connecting = 0, inbound = 0, queued = 0
    for (const { dc, ours } of live) {
      if (ours) out++; else inbound++
      if (dc.readyState === 'connecting') connecting++
      queued += dc.bufferedAmount
    }
    st.samples.push([Math.round(performance.now()), out, connecting, inbound, queued, st.received])
    if (st.samples.length > 480) st.samples.shift()
  }, 250)
})()`

/** A page's [`CHANNEL_PROBE`] timeline as text, a line a second (every fourth sample), for
 * a failure's message. */
export async function channelTimeline (page, name) {
  const samples = await page.evaluate(() => window.__channels?.samples ?? null).catch((e) => `unreadable: ${e.message}`)
  if (!Array.isArray(samples)) return `${name}: no channel timeline (${samples})`
  const lines = samples.filter((_, i) => i % 4 === 0).map(([t, out, connecting, inbound, queued, received]) =>
    `  ${(t / 1000).toFixed(1)} s: ours ${out} (${connecting} connecting), theirs ${inbound}, queued ${queued} B, received ${received} B`)
  return `${name}'s data channels (time, channels open, bytes):\n${lines.join('\n')}`
}

/** Prints why blocks of the fetch `p` came from further down the chain, if any did. */
export function noteDetours (p) {
  if (p.detours > 0) console.error(`note: ${p.detours} block(s) came from further down the chain than the first source; the last: ${p.lastDetour}`)
}

/** `size` random bytes in `dir/name`: `{ path, name, size, sha256 }`. */
export function randomFile (dir, name, size) {
  const path = join(dir, name)
  const bytes = randomBytes(size)
  writeFileSync(path, bytes)
  return { path, name, size, sha256: createHash('sha256').update(bytes).digest('hex') }
}

/** Opens the app at `url` in a new page of `context` and waits until it is ready; `init`
 * (a function) runs in the page before the app's own scripts. */
export async function openApp (context, url, name, init) {
  const page = await context.newPage()
  const log = capture(page)
  if (init) await page.addInitScript(init)
  await page.goto(url)
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 })
    .catch((e) => { throw new Error(`${name}: the app did not start: ${e.message}\n${log.join('\n')}`) })
  return { page, log, name }
}

/** Adds file `f` through the picker; resolves to the new entry's `{ cid, fileCid, link }`
 * (`cid` the directory that keeps its name, `fileCid` the file's own). */
export async function addFile (p, f) {
  const before = await p.page.locator('#files li[data-cid]').count()
  await p.page.setInputFiles('#file', f.path)
  await p.page.waitForFunction((n) => document.querySelectorAll('#files li[data-cid]').length > n ||
    document.querySelector('#files li.error'), before, { timeout: 300_000 })
    .catch(async (e) => {
      const state = await p.page.locator('#files li').first().textContent().catch(() => '?')
      throw new Error(`${p.name}: adding ${f.name} did not finish: ${e.message}: ${state}\n${p.log.join('\n')}`)
    })
  const failed = await p.page.locator('#files li.error').first().textContent({ timeout: 100 }).catch(() => null)
  if (failed) throw new Error(`${p.name}: adding ${f.name} failed: ${failed}`)
  const li = p.page.locator('#files li[data-cid]').first()
  return {
    cid: await li.getAttribute('data-cid'),
    fileCid: await li.getAttribute('data-file-cid'),
    link: await li.locator('.share').getAttribute('href')
  }
}

/** Adds the folder at `dir` through the folder picker; resolves to the entry's `{ cid, link }`. */
export async function addFolder (p, dir) {
  const before = await p.page.locator('#files li[data-cid]').count()
  await p.page.setInputFiles('#folder', dir)
  await p.page.waitForFunction((n) => document.querySelectorAll('#files li[data-cid]').length > n ||
    document.querySelector('#files li.error'), before, { timeout: 300_000 })
  const failed = await p.page.locator('#files li.error').first().textContent({ timeout: 100 }).catch(() => null)
  if (failed) throw new Error(`${p.name}: adding the folder ${dir} failed: ${failed}`)
  const li = p.page.locator('#files li[data-cid]').first()
  return { cid: await li.getAttribute('data-cid'), link: await li.locator('.share').getAttribute('href') }
}

/** Waits for the transfer to end; returns its last progress, or throws with the app's error. */
export async function transferEnds (p, want = 'done') {
  await p.page.waitForSelector('#transfer[data-state="done"], #transfer[data-state="error"], #transfer[data-state="cancelled"]', { timeout: 300_000 })
  const state = await p.page.getAttribute('#transfer', 'data-state')
  const error = await p.page.locator('#fetch-error').textContent()
  if (state !== want) throw new Error(`${p.name}: the transfer ended ${state}, expected ${want}: ${error}\n${p.log.slice(-20).join('\n')}`)
  return { last: await p.page.evaluate(() => window.cairnApp.last), error }
}

/** Saves the result through the app's download link, as a user's click would (streamed to
 * disk by the app's service worker): `{ size, sha256, name, via }`, the bytes hashed here. */
export async function downloaded (p) {
  const via = await p.page.getAttribute('#download', 'data-via')
  const [download] = await Promise.all([
    p.page.waitForEvent('download', { timeout: 300_000 }),
    p.page.click('#download')
  ])
  const path = await download.path()
    .catch(async (e) => { throw new Error(`${p.name}: the download failed: ${await download.failure()}: ${e.message}\n${p.log.slice(-20).join('\n')}`) })
  const { size, sha256 } = await hashFile(path)
  const name = download.suggestedFilename()
  await download.delete()
  return { size, sha256, name, via }
}

/** The length and SHA-256 of the file at `path`, read as a stream. */
export async function hashFile (path) {
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk)
    size += chunk.length
  }
  return { size, sha256: hash.digest('hex') }
}

/** js-libp2p's connection-monitor ping from page `j` to cairn peer `id` (webrtc-peer.js):
 * it must succeed, its `close()` must end on cairn's FIN_ACK, and cairn must then end the
 * stream. */
export async function monitorPing (j, id) {
  const closed = await j.evaluate((p) => window.monitorPing(p), id)
    .catch((err) => { throw new Error(`js-libp2p's connection-monitor ping to cairn failed (it would drop the connection): ${err.message}`) })
  assert(closed.closeStatus !== 'reset', `js-libp2p's close() ended on cairn's FIN_ACK, before the stream ended: ${closed.closeStatus}`)
  assert(closed.ended, 'cairn then ended the stream (it read the FIN and let the channel go)')
}
