// Benchmark (run by `cargo xtask bench cat`): 256 MiB from one cairn-relay, natively.
// `cairn-relay cat --peer` (cairn's /cas client, over the relay's WebSocket listener) into a
// fresh store on disk and a file, beside `curl` of `/ipfs/{cid}` from the same relay's HTTP
// gateway into a file on the same disk. Two rows break the fetch down: the same `cat` with
// its store on tmpfs (/dev/shm: no disk writes), and `cat` from the local store alone (no
// network). Whole commands are timed, alternating, 3 rounds each; the best is kept.
//
//   node bench-cat.mjs CAIRN_RELAY_BIN OUT_JSON

import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { atExit, cleanup, freePort, pseudoRandomFile, startRelay, timed } from './harness.mjs'

const [bin, out] = process.argv.slice(2)
if (!bin || !out) {
  console.error('usage: node bench-cat.mjs <cairn-relay> <out.json>')
  process.exit(2)
}
const MiB = 1024 * 1024
const BYTES = 256 * MiB
const ROUNDS = 3


function sized (file) {
  const got = statSync(file).size
  if (got !== BYTES) throw new Error(`${file} holds ${got} bytes, not ${BYTES}`)
}

// A directory on the same disk as the relay's store (not a tmpfs /tmp, where there is one).
const base = join(dirname(out), 'bench-cat-work')
mkdirSync(base, { recursive: true })
const work = mkdtempSync(join(base, 'run-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
const shm = existsSync('/dev/shm') ? mkdtempSync(join('/dev/shm', 'cairn-bench-cat-')) : mkdtempSync(join(tmpdir(), 'cairn-bench-cat-'))
atExit(() => rmSync(shm, { recursive: true, force: true }))
try {
  pseudoRandomFile(join(work, 'file'), BYTES)
  const cid = (await timed(bin, ['add', join(work, 'file'), '--store', join(work, 'relay-store')])).stdout.trim()
  rmSync(join(work, 'file'))
  const http = `127.0.0.1:${await freePort()}`
  const relay = await startRelay(bin, http, ['--store', join(work, 'relay-store'), '--identity', join(work, 'relay.key')])
  const best = { cat_disk: Infinity, cat_tmpfs: Infinity, cat_local: Infinity, curl: Infinity }
  const output = join(work, 'out')
  for (let r = 0; r < ROUNDS; r++) {
    const store = join(work, 'cat-store')
    const c = await timed(bin, ['cat', cid, '--peer', relay.addr, '--store', store, '-o', output, '--timeout', '600'])
    sized(output)
    best.cat_disk = Math.min(best.cat_disk, c.ms)
    rmSync(output)
    const l = await timed(bin, ['cat', cid, '--store', store, '-o', output])
    sized(output)
    best.cat_local = Math.min(best.cat_local, l.ms)
    rmSync(output)
    rmSync(store, { recursive: true, force: true })

    const shmStore = join(shm, 'cat-store')
    const t = await timed(bin, ['cat', cid, '--peer', relay.addr, '--store', shmStore, '-o', output, '--timeout', '600'])
    sized(output)
    best.cat_tmpfs = Math.min(best.cat_tmpfs, t.ms)
    rmSync(output)
    rmSync(shmStore, { recursive: true, force: true })

    const h = await timed('curl', ['-sf', '-o', output, `http://${http}/ipfs/${cid}`])
    sized(output)
    best.curl = Math.min(best.curl, h.ms)
    rmSync(output)
  }
  const mbps = (ms) => BYTES / 1e6 / (ms / 1000)
  const rows = Object.fromEntries(Object.entries(best).map(([k, ms]) => [k, { s: ms / 1000, mbps: mbps(ms) }]))
  const line = (label, k) => console.log(`${label.padEnd(44)} ${rows[k].s.toFixed(2).padStart(6)} s ${rows[k].mbps.toFixed(0).padStart(6)} MB/s`)
  line('cat --peer into a fresh store on disk + file', 'cat_disk')
  line('cat --peer into a fresh store on tmpfs + file', 'cat_tmpfs')
  line('cat from the local store alone + file', 'cat_local')
  line('curl /ipfs/{cid} from the same relay + file', 'curl')
  const ratio = rows.cat_disk.mbps / rows.curl.mbps
  console.log(`ratio cat --peer (disk store) / curl: ${ratio.toFixed(2)} (target ≥ 0.5)`)
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({ bytes: BYTES, cid, rounds: ROUNDS, rows, ratio_cat_vs_curl: ratio }, null, 2))
  console.log(`written to ${out}`)
  await cleanup()
  process.exit(0)
} catch (e) {
  console.error(`bench-cat: ${e.stack ?? e}`)
  await cleanup()
  process.exit(1)
}
