// What the tests of the web app share: opening it in a page, adding a file through its file
// picker, waiting for a transfer, and reading back what it downloaded.
import { createHash, randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { capture } from './harness.mjs'

export function assert (ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`)
}

/** `size` random bytes in `dir/name`: `{ path, name, size, sha256 }`. */
export function randomFile (dir, name, size) {
  const path = join(dir, name)
  const bytes = randomBytes(size)
  writeFileSync(path, bytes)
  return { path, name, size, sha256: createHash('sha256').update(bytes).digest('hex') }
}

/** Opens the app at `url` in a new page of `context` and waits until it is ready. */
export async function openApp (context, url, name) {
  const page = await context.newPage()
  const log = capture(page)
  await page.goto(url)
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 })
    .catch((e) => { throw new Error(`${name}: the app did not start: ${e.message}\n${log.join('\n')}`) })
  return { page, log, name }
}

/** Adds file `f` through the picker; resolves to the new entry's `{ cid, link }`. */
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

/** The downloadable result's length and SHA-256, computed in the page. */
export async function downloaded (p) {
  return p.page.evaluate(async () => {
    const bytes = await (await fetch(document.getElementById('download').href)).arrayBuffer()
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
    return { size: bytes.byteLength, sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join('') }
  })
}
