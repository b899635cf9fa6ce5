// End-to-end tests of the web app in headless Chromium (Playwright, Debian's chromium).
// Starts its own cairn-relays and stops them at the end, pass or fail.
//
// node e2e.mjs <cairn-relay binary> <dist/ (the built app)> <artifacts dir>
//
// - A (one browser context) adds 32 MiB; B (another context, its own storage, a narrow
//   screen) opens A's share link and gets the same bytes through the relay, no gateway.
// - B reloads in the middle of a 128 MiB transfer; after the reload only the missing blocks
//   are fetched (the counts say so).
// - Content only a gateway has (a second relay's store, behind a test gateway) arrives
//   through the gateway source; a gateway that tampers with bytes is refused, visibly.
// - A's content survives closing and reopening the page (IndexedDB); a tab closed in the
//   middle of an add leaves whole batches only.
// - 1 GiB fetched from a relay and saved through the download link: streamed to disk by the
//   app's service worker, the page's JS heap stays under 64 MiB, the saved file is whole.
// - A folder (an image, a text in a subfolder, a 30 s WAV, 8 MiB of noise) added through the
//   folder picker makes one share link; opened in B it shows a listing, the image displays
//   through an /ipfs/ URL the service worker answers, one file is fetched without the rest,
//   and the sound, in a <video>, seeks through Range requests (206).
// - A folder dropped on the page (250 files, a subfolder, an empty one; its entries given 100
//   at a time, as the browser does) makes one share link whose root is the CLI's (Helia's).
// - The transfers panel: B queues A's file under a 2 MiB/s cap (a cap of 0 refused),
//   pauses it, raises its priority, resumes it; it finishes, pinned, with the blocks
//   fetched before the pause read locally.
// - Bad input: a malformed CID, an unreachable relay, a 0-byte file, a full store, a
//   cancelled fetch, and the relay going away in the middle of a transfer.
// Screenshots of each moment go to the artifacts directory.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32, deflateSync } from 'node:zlib'
import { addFile as add, addFolder, allFrom, assert, downloaded, hashFile, noteDetours, openApp as open, randomFile, transferEnds } from './app.mjs'
import { atExit, cleanup, freePort, launchChromium, launchPersistent, startRelay, step as say } from './harness.mjs'

const [relayBin, dist, artifacts] = process.argv.slice(2)
if (!relayBin || !dist || !artifacts) {
  console.error('usage: node e2e.mjs <cairn-relay> <dist> <artifacts>')
  process.exit(2)
}
const step = (what) => say('e2e', what)
const MiB = 1024 * 1024
const work = mkdtempSync(join(tmpdir(), 'cairn-e2e-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
mkdirSync(artifacts, { recursive: true })

/** A `gib` GiB file written in 1 MiB pieces, never held whole: a random MiB with a counter at
 * every 256 KiB, so that no two chunks are alike (and nothing deduplicates). */
function hugeFile (name, gib) {
  const path = join(work, name)
  const fd = openSync(path, 'w')
  const piece = randomBytes(MiB)
  for (let i = 0; i < gib * 1024; i++) {
    for (let q = 0; q < 4; q++) piece.writeUInt32LE(i * 4 + q, q * 256 * 1024)
    writeSync(fd, piece)
  }
  closeSync(fd)
  return { path, name, size: gib * 1024 * MiB }
}

/** A gateway in front of `upstream` (a relay's HTTP), CORS-open; `tamper` flips a byte of every block. */
async function testGateway (upstream, tamper) {
  const port = await freePort()
  const server = createServer(async (req, res) => {
    res.setHeader('Access-Control-Allow-Origin', '*')
    res.setHeader('Access-Control-Allow-Headers', '*')
    if (req.method === 'OPTIONS') return res.end()
    try {
      const r = await fetch(`http://${upstream}${req.url}`, { headers: { accept: req.headers.accept ?? '*/*' } })
      const body = Buffer.from(await r.arrayBuffer())
      if (tamper && r.status === 200 && body.length) body[body.length >> 1] ^= 0xff
      res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/octet-stream' })
      res.end(body)
    } catch (e) {
      res.writeHead(502)
      res.end(String(e))
    }
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  atExit(() => new Promise((resolve) => server.close(resolve)))
  return `http://127.0.0.1:${port}`
}

/** A `w`×`h` PNG of a colour gradient. */
function png (w, h) {
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length)
    out.writeUInt32BE(data.length, 0)
    out.write(type, 4, 'latin1')
    data.copy(out, 8)
    out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
    return out
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  const rows = Buffer.alloc(h * (1 + 3 * w))
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) rows.set([x * 4 % 256, y * 4 % 256, 128], y * (1 + 3 * w) + 1 + 3 * x)
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))])
}

/** `secs` seconds of a 440 Hz tone: 16-bit stereo PCM at 44.1 kHz, as a WAV file. */
function wav (secs) {
  const rate = 44100
  const frames = rate * secs
  const out = Buffer.alloc(44 + frames * 4)
  out.write('RIFF', 0, 'latin1')
  out.writeUInt32LE(36 + frames * 4, 4)
  out.write('WAVEfmt ', 8, 'latin1')
  out.writeUInt32LE(16, 16)
  out.writeUInt16LE(1, 20)
  out.writeUInt16LE(2, 22)
  out.writeUInt32LE(rate, 24)
  out.writeUInt32LE(rate * 4, 28)
  out.writeUInt16LE(4, 32)
  out.writeUInt16LE(16, 34)
  out.write('data', 36, 'latin1')
  out.writeUInt32LE(frames * 4, 40)
  for (let i = 0; i < frames; i++) {
    const v = Math.round(8000 * Math.sin(2 * Math.PI * 440 * i / rate))
    out.writeInt16LE(v, 44 + i * 4)
    out.writeInt16LE(v, 46 + i * 4)
  }
  return out
}

async function shot ({ page }, what) {
  await page.screenshot({ path: join(artifacts, `${what}.png`), fullPage: true })
}

try {
  step('starting the relay that serves the app (no store: no gateway)')
  const http = `127.0.0.1:${await freePort()}`
  const relay = await startRelay(relayBin, http, ['--web-root', dist, '--identity', join(work, 'relay.key')])
  const origin = `http://${http}/`

  const browser = await launchChromium()
  const ctxA = await browser.newContext()
  const ctxB = await browser.newContext({ viewport: { width: 390, height: 844 } })

  step('A adds 32 MiB and a 0-byte file')
  const a = await open(ctxA, origin, 'A')
  const status = await a.page.locator('#node-status').textContent()
  assert(await a.page.getAttribute('#node-status', 'data-state') === 'ready', `A connected: ${status}`)
  const f32 = randomFile(work, 'thirty-two.bin', 32 * MiB)
  const shared = await add(a, f32)
  const empty = await add(a, randomFile(work, 'empty.txt', 0))
  assert(empty.fileCid === 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku', `the empty file's CID is IPFS's: ${empty.fileCid}`)
  await shot(a, '01-a-added')

  step('B opens the share link (another context, narrow screen)')
  const b = await open(ctxB, shared.link, 'B')
  const got = await transferEnds(b)
  const dl = await downloaded(b)
  assert(dl.size === f32.size && dl.sha256 === f32.sha256, `B's bytes are A's: ${JSON.stringify(dl)}`)
  assert(dl.via === 'stream' && dl.name === f32.name, `saved through the service worker's stream, under its name: ${JSON.stringify(dl)}`)
  assert(allFrom(got.last, 'peers'), `all from peers: ${JSON.stringify(got.last)}`)
  const peerRows = await b.page.locator('#peers tr').count()
  assert(peerRows >= 2, `B's peers panel lists the relay and A: ${peerRows}`)
  await shot(b, '02-b-fetched-narrow')
  step(`B got ${got.last.blocksDone} blocks from peers`)

  step('A adds a folder; B opens its link: a listing, an image through /ipfs/, one file alone, a seek')
  const trip = join(work, 'trip')
  mkdirSync(join(trip, 'notes'), { recursive: true })
  writeFileSync(join(trip, 'photo.png'), png(64, 48))
  writeFileSync(join(trip, 'notes', 'readme.txt'), 'what we saw on the trip\n')
  const sound = wav(30)
  writeFileSync(join(trip, 'tone.wav'), sound)
  const noise = randomFile(trip, 'noise.bin', 8 * MiB)
  const folder = await addFolder(a, trip)
  const bf = await open(await browser.newContext(), folder.link, 'B (folder)')
  await bf.page.waitForSelector('#listing:not([hidden])', { timeout: 120_000 })
  const names = await bf.page.$$eval('#listing-rows tr', (rows) => rows.map((r) => `${r.dataset.name}:${r.dataset.type}`))
  assert(JSON.stringify(names) === JSON.stringify(['trip:directory']), `the share is the folder, by name: ${names}`)
  await bf.page.click('#listing-rows tr[data-name="trip"] a')
  await bf.page.waitForFunction(() => document.querySelectorAll('#listing-rows tr').length === 4, null, { timeout: 60_000 })
  const inner = await bf.page.$$eval('#listing-rows tr', (rows) => rows.map((r) => `${r.dataset.name}:${r.dataset.type}`))
  assert(JSON.stringify(inner) === JSON.stringify(['noise.bin:file', 'notes:directory', 'photo.png:file', 'tone.wav:file']), `the listing: ${inner}`)
  // The image's preview is an /ipfs/ URL, answered by the service worker from B's node.
  await bf.page.waitForFunction(() => document.querySelector('#listing-rows tr[data-name="photo.png"] img')?.naturalWidth === 64, null, { timeout: 60_000 })
  const servedImage = await bf.page.evaluate(() => window.cairnApp.served.filter((r) => r.path.endsWith('/photo.png')))
  assert(servedImage.length > 0 && servedImage.every((r) => r.status === 200), `the image came through the service worker: ${JSON.stringify(servedImage)}`)
  await shot(bf, '02b-folder-listing')
  await bf.page.click('#listing-rows tr[data-name="notes"] a')
  await bf.page.waitForSelector('#listing-rows tr[data-name="readme.txt"]', { timeout: 60_000 })
  await bf.page.click('#listing-rows tr[data-name="readme.txt"] a')
  await transferEnds(bf)
  const text = await bf.page.locator('#preview pre').textContent()
  assert(text.startsWith('what we saw on the trip'), `the text file: ${text}`)
  const heldAfterOne = await bf.page.evaluate(async () => (await window.cairnApp.node.stats()).bytes)
  assert(heldAfterOne < noise.size / 4, `one file was fetched without the rest: ${heldAfterOne} bytes held, the folder has ${noise.size + sound.length}`)
  // A Range from the page, as a <video> or curl would send it: exactly those bytes, 206.
  const rangeCheck = await bf.page.evaluate(async (root) => {
    const r = await fetch(`/ipfs/${root}/trip/noise.bin`, { headers: { Range: 'bytes=100-199' } })
    return { status: r.status, range: r.headers.get('content-range'), bytes: [...new Uint8Array(await r.arrayBuffer())] }
  }, folder.cid)
  const want = [...(await import('node:fs')).readFileSync(noise.path).subarray(100, 200)]
  assert(rangeCheck.status === 206 && rangeCheck.range === `bytes 100-199/${noise.size}` && JSON.stringify(rangeCheck.bytes) === JSON.stringify(want), `a range through the worker: ${rangeCheck.status} ${rangeCheck.range}`)
  // The sound, in a <video> that asks for ranges as it seeks.
  await bf.page.goto(`${origin}#/cid/${folder.cid}/trip/tone.wav`)
  await bf.page.waitForSelector('body[data-ready="true"]')
  await transferEnds(bf)
  await bf.page.waitForFunction(() => document.querySelector('#preview video')?.readyState >= 1, null, { timeout: 60_000 })
  const duration = await bf.page.evaluate(() => document.querySelector('#preview video').duration)
  assert(Math.abs(duration - 30) < 0.5, `the media's duration: ${duration}`)
  const seeked = await bf.page.evaluate(() => new Promise((resolve, reject) => {
    const v = document.querySelector('#preview video')
    const timer = setTimeout(() => reject(new Error(`no seeked event; currentTime ${v.currentTime}`)), 30_000)
    v.addEventListener('seeked', () => { clearTimeout(timer); resolve(v.currentTime) }, { once: true })
    v.currentTime = 25
  }))
  assert(Math.abs(seeked - 25) < 0.5, `the video seeked to 25 s: ${seeked}`)
  const ranges = await bf.page.evaluate(() => window.cairnApp.served.filter((r) => r.path.endsWith('/tone.wav')))
  assert(ranges.some((r) => r.status === 206 && /^bytes=\d+-/.test(r.range ?? '') && Number(/\d+/.exec(r.range)[0]) > 0),
    `the seek was answered with a range past the start: ${JSON.stringify(ranges)}`)
  await shot(bf, '02c-folder-seeked')
  step(`folder: ${names.length} top entry, ${inner.length} inside; one file alone held ${heldAfterOne} bytes; ranges asked: ${ranges.map((r) => r.range).join(' ')}`)
  await bf.page.context().close()

  step('A drops a folder (250 files, a subfolder, an empty one): one share link, the root the CLI and Helia make')
  // A drag and drop cannot be made from outside the page with folders in it, so the drop
  // event carries the entries as the browser's DataTransferItem API gives them
  // (webkitGetAsEntry; readEntries 100 at a time, in no particular order), over real File
  // objects; everything from the drop handler on is the app's.
  const dropped = join(work, 'dropped')
  const tree = { 'top.txt': 'at the top\n', 'empty/': null }
  for (let i = 0; i < 250; i++) tree[`many/f${String(i).padStart(3, '0')}.txt`] = `file ${i}\n`.repeat(i % 7 + 1)
  for (const [path, text] of Object.entries(tree)) {
    mkdirSync(join(dropped, path.endsWith('/') ? path : join(path, '..')), { recursive: true })
    if (text !== null) writeFileSync(join(dropped, path), text)
  }
  const wantDrop = execFileSync(relayBin, ['add', '-r', '--wrap', '--only-hash', dropped]).toString().trim()
  const listed = await a.page.locator('#files li[data-cid]').count()
  await a.page.evaluate((tree) => {
    const file = (name, text) => ({ isFile: true, isDirectory: false, name, file: (ok) => setTimeout(() => ok(new File([text], name))) })
    const dir = (name) => {
      const children = []
      return {
        isFile: false,
        isDirectory: true,
        name,
        children,
        createReader () {
          let given = 0
          // Reversed: the app must not rely on the order entries come in.
          return { readEntries: (ok) => setTimeout(() => { const batch = children.slice().reverse().slice(given, given + 100); given += batch.length; ok(batch) }) }
        }
      }
    }
    const root = dir('dropped')
    for (const [path, text] of Object.entries(tree)) {
      const parts = path.split('/').filter(Boolean)
      let at = root
      for (const [i, name] of parts.entries()) {
        const last = i === parts.length - 1
        let next = at.children.find((c) => c.name === name)
        if (!next) {
          next = last && text !== null ? file(name, text) : dir(name)
          at.children.push(next)
        }
        at = next
      }
    }
    const drop = new Event('drop', { bubbles: true, cancelable: true })
    Object.defineProperty(drop, 'dataTransfer', { value: { items: [{ webkitGetAsEntry: () => root }], files: [] } })
    document.getElementById('drop').dispatchEvent(drop)
  }, tree)
  await a.page.waitForFunction((n) => document.querySelectorAll('#files li[data-cid]').length > n || document.querySelector('#files li.error'), listed, { timeout: 120_000 })
  const dropFailed = await a.page.locator('#files li.error').first().textContent({ timeout: 100 }).catch(() => null)
  if (dropFailed) throw new Error(`A: adding the dropped folder failed: ${dropFailed}\n${a.log.slice(-20).join('\n')}`)
  const droppedLi = a.page.locator('#files li[data-cid]').first()
  const droppedCid = await droppedLi.getAttribute('data-cid')
  const droppedTitle = await droppedLi.textContent()
  assert(droppedCid === wantDrop, `the dropped folder's root is the CLI's (Helia's) for the same tree, wrapped: ${droppedCid}, want ${wantDrop}`)
  assert(droppedTitle.includes('dropped/ (252 files)'), `one entry, named for the folder: ${droppedTitle}`)
  step(`dropped: ${droppedCid}`)

  step('B reloads in the middle of a 128 MiB transfer')
  const f128 = randomFile(work, 'big.bin', 128 * MiB)
  const big = await add(a, f128)
  await b.page.goto(big.link)
  await b.page.waitForFunction(() => (window.cairnApp?.last?.blocksDone ?? 0) >= 100, null, { timeout: 300_000, polling: 20 })
  const before = await b.page.evaluate(() => window.cairnApp.last.blocksDone)
  await shot(b, '03-b-mid-transfer')
  await b.page.reload()
  await b.page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 })
  const resumed = await transferEnds(b)
  const { bySource, blocksDone } = resumed.last
  step(`before the reload: ${before} blocks; after: ${JSON.stringify(bySource)} of ${blocksDone}`)
  assert(bySource.local >= before, `the ${before} blocks stored before the reload were read locally (${bySource.local})`)
  // A block or two may come through the IPFS source: bitswap from A, after a /cas request
  // failed (see allFrom).
  noteDetours(resumed.last)
  assert(bySource.local + bySource.peers + bySource.ipfs === blocksDone && bySource.ipfs <= 5, `every block was local or from A; ${resumed.last.detours} went further: ${resumed.last.lastDetour}`)
  assert(bySource.peers > 0 && bySource.peers + bySource.ipfs <= blocksDone - before, `only the missing blocks were fetched: ${bySource.peers}`)
  const dlBig = await downloaded(b)
  assert(dlBig.size === f128.size && dlBig.sha256 === f128.sha256, 'the resumed 128 MiB file is whole')
  await shot(b, '04-b-resumed')

  step('the transfers panel: B queues A\'s file under a cap, pauses, changes its priority, resumes')
  const fq = randomFile(work, 'queued.bin', 16 * MiB)
  const queued = await add(a, fq)
  const bp = b.page
  await bp.fill('#queue-cid', queued.fileCid)
  await bp.selectOption('#queue-priority', 'low')
  await bp.fill('#queue-rate', '0')
  await bp.click('#queue-button')
  await bp.waitForSelector('#queue-error:not([hidden])')
  const rateError = await bp.locator('#queue-error').textContent()
  assert(/at least 1 byte/.test(rateError), `a cap of 0 is refused, saying why: ${rateError}`)
  await bp.fill('#queue-rate', '2')
  await bp.click('#queue-button')
  const row = bp.locator(`#transfers tr:has(code[title="${queued.fileCid}"])`)
  await bp.waitForFunction((cid) => {
    const r = document.querySelector(`#transfers tr:has(code[title="${cid}"])`)
    return r?.dataset.state === 'active' && /MiB of/.test(r.querySelector('.done span').textContent)
  }, queued.fileCid, { timeout: 60_000 })
  const speedText = await row.locator('.speed').textContent()
  assert(/cap 2\.00 MiB\/s/.test(speedText), `the row shows its cap: ${speedText}`)
  await shot(b, '04b-b-transfer-active')
  await row.locator('button[data-action="pause"]').click()
  await bp.waitForFunction((cid) => document.querySelector(`#transfers tr:has(code[title="${cid}"])`)?.dataset.state === 'paused', queued.fileCid)
  await row.locator('select').selectOption('high')
  await bp.waitForFunction(async (cid) => (await window.cairnApp.node.transfers()).find((t) => t.cid === cid)?.priority === 'high', queued.fileCid)
  await shot(b, '04c-b-transfer-paused')
  const queuedAt = Date.now()
  await row.locator('button[data-action="resume"]').click()
  await bp.waitForFunction((cid) => document.querySelector(`#transfers tr:has(code[title="${cid}"])`)?.dataset.state === 'done', queued.fileCid, { timeout: 120_000 })
  const finished = await bp.evaluate(async (cid) => (await window.cairnApp.node.transfers()).find((t) => t.cid === cid), queued.fileCid)
  assert(finished.progress.bytesDone === finished.progress.bytesTotal && finished.progress.bytesDone >= fq.size, `the whole DAG: ${JSON.stringify(finished.progress)}`)
  assert(finished.attempts === 2, `paused once, resumed once: ${finished.attempts} attempts`)
  assert(finished.progress.bySource.local > 0, `what came before the pause was read locally: ${JSON.stringify(finished.progress.bySource)}`)
  assert((await bp.evaluate(() => window.cairnApp.node.pins())).includes(queued.fileCid), 'a finished transfer is pinned')
  await shot(b, '04d-b-transfer-done')
  step(`transfers panel: 16 MiB under a 2 MiB/s cap, paused and resumed, done ${((Date.now() - queuedAt) / 1000).toFixed(1)} s after the resume`)

  step('content only a gateway has: through the gateway source, and refused when tampered with')
  const store = join(work, 'gateway-store')
  const gf = randomFile(work, 'gateway.bin', 5 * MiB + 3)
  const gcid = execFileSync(relayBin, ['add', gf.path, '--store', store]).toString().trim()
  const http2 = `127.0.0.1:${await freePort()}`
  await startRelay(relayBin, http2, ['--store', store, '--identity', join(work, 'store.key')])
  const honest = await testGateway(http2, false)
  const liar = await testGateway(http2, true)
  const c = await open(await browser.newContext(), `${origin}?gateway=${encodeURIComponent(honest)}#/cid/${gcid}`, 'C')
  const viaGateway = await transferEnds(c)
  assert(allFrom(viaGateway.last, 'gateway'), `all from the gateway: ${JSON.stringify(viaGateway.last)}`)
  const dlG = await downloaded(c)
  assert(dlG.sha256 === gf.sha256, 'the gateway\'s bytes are the file')
  await shot(c, '05-c-gateway')
  const d = await open(await browser.newContext(), `${origin}?gateway=${encodeURIComponent(liar)}#/cid/${gcid}`, 'D')
  const refused = await transferEnds(d, 'error')
  assert(await d.page.locator('#fetch-error').isVisible(), 'the error is shown')
  assert(/do not match the CID/.test(refused.error) && /invalid data/.test(refused.error), `the error says the bytes were wrong: ${refused.error}`)
  await shot(d, '06-d-tampered-refused')

  step('A closes and reopens the page: the content is still there')
  await a.page.close()
  const a2 = await open(ctxA, origin, 'A again')
  assert(await a2.page.locator(`#pins li[data-cid="${shared.cid}"]`).count() === 1, 'the 32 MiB file is still pinned')
  await a2.page.goto(shared.link)
  const local = await transferEnds(a2)
  assert(local.last.bySource.local === local.last.blocksDone, `all from IndexedDB: ${JSON.stringify(local.last)}`)
  await shot(a2, '07-a-reopened')

  step('bad input: a malformed CID, an unreachable relay')
  await a2.page.fill('#cid-input', 'bafy-not-a-cid')
  await a2.page.press('#cid-input', 'Enter')
  await a2.page.waitForSelector('#fetch-error:not([hidden])', { timeout: 30_000 })
  const bad = await a2.page.locator('#fetch-error').textContent()
  assert(/is not a CID/.test(bad), `a malformed CID is named: ${bad}`)
  const badCode = await a2.page.locator('#fetch-error').getAttribute('data-code')
  assert(badCode === 'INVALID_ARGUMENT', `the app decided on the error's code: ${badCode}`)
  await shot(a2, '08-bad-cid')
  const nowhere = `/ip4/127.0.0.1/tcp/9/ws/p2p/${relay.peerId}`
  const e = await open(await browser.newContext(), `${origin}?relay=${encodeURIComponent(nowhere)}`, 'E')
  const st = await e.page.locator('#node-status').textContent()
  assert(await e.page.getAttribute('#node-status', 'data-state') === 'error' && /cannot be reached/.test(st), `unreachable relay: ${st}`)
  await shot(e, '09-relay-unreachable')

  step('a full store: the add fails with a clear message and keeps nothing')
  const q = await open(await browser.newContext(), `${origin}?quota=${10 * MiB}`, 'Q')
  await q.page.setInputFiles('#file', f32.path)
  await q.page.waitForSelector('#files li.error', { timeout: 120_000 })
  const full = await q.page.locator('#files li.error').textContent()
  assert(/store is full/.test(full), `the add says the store is full: ${full}`)
  const held = await q.page.evaluate(async () => (await window.cairnApp.node.stats()).bytes)
  assert(held === 0, `nothing of the failed add was kept: ${held} bytes`)
  await shot(q, '10-store-full')

  step('a tab closed in the middle of an add leaves whole batches only')
  const kctx = await browser.newContext()
  const k = await open(kctx, origin, 'K')
  const f64 = randomFile(work, 'f64.bin', 64 * MiB)
  await k.page.setInputFiles('#file', f64.path)
  // Somewhere past the first batches (4 MiB each), never at the end.
  const cut = 0.2 + Math.random() * 0.5
  await k.page.waitForFunction((at) => (document.querySelector('#files li progress')?.value ?? 0) >= at, cut, { timeout: 120_000 })
  await k.page.close()
  const k2 = await open(kctx, origin, 'K2')
  const left = await k2.page.evaluate(async () => window.cairnApp.node.stats())
  step(`closed at ${(cut * 100).toFixed(0)} %: ${left.blocks} blocks, ${left.bytes} bytes kept, ${left.pins} pins`)
  // A batch is 16 leaves of 256 KiB, plus the interior node (under 10 KB) the importer
  // writes beside the 174th leaf of each run: whole batches mean a multiple of 16 leaves and
  // exactly the interior nodes those leaves complete.
  const leaves = Math.floor(left.bytes / (256 * 1024))
  const interior = left.blocks - leaves
  assert(leaves % 16 === 0 && interior === Math.floor(leaves / 174) && left.bytes - leaves * 256 * 1024 < 10_000 * (interior + 1),
    `only whole 4 MiB batches are in the store: ${left.blocks} blocks, ${left.bytes} bytes (${leaves} leaves, ${interior} interior)`)
  assert(left.bytes > 0 && left.bytes < 64 * MiB, `the add was cut in the middle: ${left.bytes} bytes`)
  assert(left.pins === 0, 'the unfinished add pinned nothing')
  const swept = await k2.page.evaluate(async () => window.cairnApp.node.evict())
  const after = await k2.page.evaluate(async () => window.cairnApp.node.stats())
  assert(swept.blocks === left.blocks && after.blocks === 0 && after.bytes === 0,
    `the counts agree with the contents: evicted ${swept.blocks} of ${left.blocks}, ${after.blocks} left`)
  await kctx.close()

  step('a 2 GiB file: added by streaming, the page never freezes, the CID is the native one')
  const huge = hugeFile('huge.bin', 2)
  const hugeCid = execFileSync(relayBin, ['add', huge.path, '--store', join(work, 'native-store')]).toString().trim()
  // A profile on disk: an off-the-record context's IndexedDB holds about 1.3 GiB.
  const h = await open(await launchPersistent(join(work, 'profile-h')), origin, 'H')
  // The longest gap between timer ticks while the add runs: a frozen tab would show seconds.
  await h.page.evaluate(() => {
    window.maxGap = 0
    let last = performance.now()
    window.ticker = setInterval(() => {
      const now = performance.now()
      window.maxGap = Math.max(window.maxGap, now - last)
      last = now
    }, 50)
  })
  const added = await add(h, huge)
  const maxGap = await h.page.evaluate(() => { clearInterval(window.ticker); return window.maxGap })
  step(`2 GiB added in the page; the longest pause of the page's timers was ${maxGap.toFixed(0)} ms`)
  assert(added.fileCid === hugeCid, `the browser's CID ${added.fileCid} is cairn-relay's ${hugeCid}`)
  assert(maxGap < 5000, `the page kept running while it hashed 2 GiB (longest pause ${maxGap.toFixed(0)} ms)`)
  const hugeStats = await h.page.evaluate(async () => (await window.cairnApp.node.stats()).bytes)
  assert(hugeStats > huge.size, `all of it is in IndexedDB: ${hugeStats} bytes`)
  await shot(h, '11-two-gib-added')
  await h.page.context().close()
  rmSync(huge.path)
  rmSync(join(work, 'native-store'), { recursive: true, force: true })
  rmSync(join(work, 'profile-h'), { recursive: true, force: true })

  step('1 GiB fetched from a relay and saved: streamed to disk, the page\'s heap stays small')
  const gib = hugeFile('gib.bin', 1)
  const gibStore = join(work, 'gib-store')
  const gibCid = execFileSync(relayBin, ['add', gib.path, '--store', gibStore]).toString().trim()
  const gibHash = await hashFile(gib.path)
  const holder = await startRelay(relayBin, `127.0.0.1:${await freePort()}`, ['--store', gibStore, '--identity', join(work, 'gib.key')])
  const sctx = await launchPersistent(join(work, 'profile-s'))
  // Long tasks are counted from the first script on (the fetch starts as the app loads).
  const s = await open(sctx, `${origin}?relay=${encodeURIComponent(holder.addr)}&gateway=none#/cid/${gibCid}`, 'S', () => {
    window.longTasks = []
    new PerformanceObserver((list) => { for (const e of list.getEntries()) window.longTasks.push(Math.round(e.duration)) })
      .observe({ type: 'longtask', buffered: true })
  })
  // The page's JS heap (V8's used size) sampled every 200 ms until the file is saved.
  const cdp = await sctx.newCDPSession(s.page)
  let peakHeap = 0
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const { usedSize } = await cdp.send('Runtime.getHeapUsage').catch(() => ({ usedSize: 0 }))
      peakHeap = Math.max(peakHeap, usedSize)
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  })()
  const gibStarted = Date.now()
  const gibGot = await transferEnds(s)
  const fetchedMs = Date.now() - gibStarted
  const savedStarted = Date.now()
  const gibSaved = await downloaded(s).finally(() => { sampling = false })
  const savedMs = Date.now() - savedStarted
  await sampler
  const longTasks = await s.page.evaluate(() => [...window.longTasks])
  // The count means something only if the observer sees long tasks at all: make one (in a
  // task of the page's own; what DevTools evaluates is not counted).
  await s.page.evaluate(() => setTimeout(() => { const t = performance.now(); while (performance.now() - t < 80); }, 0))
  await s.page.waitForFunction((n) => window.longTasks.length > n, longTasks.length, { timeout: 10_000 })
    .catch(() => { throw new Error('the long-task observer saw no 80 ms task: its count would mean nothing') })
  step(`1 GiB: fetched in ${(fetchedMs / 1000).toFixed(1)} s (${gibGot.last.blocksDone} blocks), saved in ${(savedMs / 1000).toFixed(1)} s; ` +
    `the page's heap peaked at ${(peakHeap / 1048576).toFixed(1)} MiB; ${longTasks.length} long tasks (longest ${Math.max(0, ...longTasks)} ms, node in the page)`)
  assert(gibSaved.size === gib.size && gibSaved.sha256 === gibHash.sha256, `the saved 1 GiB file is the file: ${JSON.stringify(gibSaved)}`)
  assert(gibSaved.via === 'stream', 'it was streamed to disk by the service worker')
  assert(peakHeap > 0 && peakHeap < 64 * 1048576, `the page's JS heap stayed under 64 MiB while 1 GiB was fetched and saved: ${peakHeap} bytes`)
  await sctx.close()
  holder.proc.kill('SIGKILL')
  rmSync(gib.path)
  rmSync(gibStore, { recursive: true, force: true })
  rmSync(join(work, 'profile-s'), { recursive: true, force: true })

  step('a cancelled fetch, then the relay going away in the middle of a transfer')
  // Kept on the relay (?direct=off): a direct WebRTC connection would outlive it.
  const g = await open(await browser.newContext(), big.link.replace('#', '?direct=off#'), 'G')
  await g.page.waitForFunction(() => (window.cairnApp?.last?.blocksDone ?? 0) >= 20, null, { timeout: 120_000, polling: 20 })
  await g.page.click('#cancel-button')
  await transferEnds(g, 'cancelled')
  const cancelled = await g.page.locator('#transfer-status').textContent()
  assert(/Cancelled/.test(cancelled), `the cancel is said: ${cancelled}`)
  await shot(g, '12-cancelled')
  await g.page.click('#fetch-button')
  await g.page.waitForFunction(() => (window.cairnApp?.last?.bySource?.peers ?? 0) >= 20, null, { timeout: 120_000, polling: 20 })
    .catch(async (e) => {
      const state = await g.page.evaluate(() => [window.cairnApp.last, document.getElementById('transfer').dataset.state, document.getElementById('transfer-status').textContent, document.getElementById('fetch-error').textContent])
      throw new Error(`G did not resume: ${e.message}: ${JSON.stringify(state)}\n${g.log.slice(-20).join('\n')}`)
    })
  relay.proc.kill('SIGKILL')
  const lost = await transferEnds(g, 'error')
  assert(await g.page.locator('#fetch-error').isVisible(), 'the failure is shown')
  step(`with the relay gone: ${lost.error}`)
  assert(/could not be reached/.test(lost.error), `the failure says the source went away: ${lost.error}`)
  const lostCode = await g.page.locator('#fetch-error').getAttribute('data-code')
  assert(['UNREACHABLE', 'TIMEOUT'].includes(lostCode), `the failure's code: ${lostCode}`)
  await g.page.waitForSelector('#node-status[data-state="error"]', { timeout: 30_000 })
  await shot(g, '13-relay-gone')

  console.log(`e2e: all passed; screenshots in ${artifacts}`)
} catch (e) {
  console.error(`e2e: FAILED: ${e.stack ?? e}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
