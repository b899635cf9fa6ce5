// Benchmark (run by `cargo xtask bench`): 32 MiB fetched from one cairn-relay through a proxy
// that delays the relay's bytes by 0, 25, 50 and 100 ms, by `cairn-relay cat --peer` (cairn's
// /cas client) and by Helia (bitswap from the same relay, `helia-peer.mjs fetch`), both through
// the same proxy, alternating, 2 rounds each (the best is kept).
//
//   node bench-latency.mjs CAIRN_RELAY_BIN OUT_JSON
//
// The proxy adds no cost of its own: no Nagle on either socket, and every chunk that is due
// is written in one write. Only the relay-to-client direction is delayed (what a far relay
// looks like to a fetch). Whole commands are timed (process start to verified output).
//
// At 0 and 100 ms it also times a folder's round trips: `cairn-relay ls` of a directory of
// 200 subdirectories (each entry's root block is read for its type) and `get` of a
// directory of 200 small files.

import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { atExit, cleanup, freePort, pseudoRandomFile, startRelay, timed } from './harness.mjs'

const [bin, out] = process.argv.slice(2)
if (!bin || !out) {
  console.error('usage: node bench-latency.mjs <cairn-relay> <out.json>')
  process.exit(2)
}
const MiB = 1024 * 1024
const BYTES = 32 * MiB
const DELAYS = [0, 25, 50, 100]
const ROUNDS = 2
const node = process.execPath
const ENTRIES = 200
const FOLDER_DELAYS = [0, 100]

/** Writes `ENTRIES` subdirectories with a file each under `nested`, and `ENTRIES` files of
 * about 1 KiB under `flat`. */
function folders (nested, flat) {
  mkdirSync(flat, { recursive: true })
  for (let i = 0; i < ENTRIES; i++) {
    const n = String(i).padStart(3, '0')
    mkdirSync(join(nested, `d${n}`), { recursive: true })
    writeFileSync(join(nested, `d${n}`, 'f.txt'), `file ${i}\n`)
    writeFileSync(join(flat, `f${n}.txt`), `flat file ${i}\n`.repeat(64))
  }
}


/** A TCP proxy to `port` that holds each chunk from the target for `delay` ms. */
async function delayProxy (port, delay) {
  const server = createServer((client) => {
    client.setNoDelay(true)
    const upstream = connect(port, '127.0.0.1')
    upstream.setNoDelay(true)
    client.on('data', (d) => upstream.write(d))
    const queue = []
    let timer = null
    const flush = () => {
      timer = null
      const now = performance.now()
      const due = []
      while (queue.length && queue[0][0] <= now) due.push(queue.shift()[1])
      if (due.length) client.write(due.length === 1 ? due[0] : Buffer.concat(due))
      if (queue.length) timer = setTimeout(flush, Math.max(0, queue[0][0] - performance.now()))
    }
    upstream.on('data', (d) => {
      if (delay === 0) return client.write(d)
      queue.push([performance.now() + delay, d])
      timer ??= setTimeout(flush, delay)
    })
    const end = () => { client.destroy(); upstream.destroy() }
    client.on('close', end)
    upstream.on('close', end)
    client.on('error', end)
    upstream.on('error', end)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  atExit(() => server.close())
  return server
}

const work = mkdtempSync(join(tmpdir(), 'cairn-bench-latency-'))
atExit(() => rmSync(work, { recursive: true, force: true }))
try {
  pseudoRandomFile(join(work, 'file'), BYTES)
  const cid = (await timed(bin, ['add', join(work, 'file'), '--store', join(work, 'relay-store')])).stdout.trim()
  folders(join(work, 'nested'), join(work, 'flat'))
  const nestedCid = (await timed(bin, ['add', '-r', join(work, 'nested'), '--store', join(work, 'relay-store')])).stdout.trim()
  const flatCid = (await timed(bin, ['add', '-r', join(work, 'flat'), '--store', join(work, 'relay-store')])).stdout.trim()
  const http = `127.0.0.1:${await freePort()}`
  const relay = await startRelay(bin, http, ['--store', join(work, 'relay-store'), '--identity', join(work, 'relay.key')])
  const parts = relay.addr.split('/') // ['', 'ip4', IP, 'tcp', PORT, 'ws', 'p2p', PEER]
  const [relayPort, peer] = [parts[4], parts[7]]
  const rows = []
  for (const delay of DELAYS) {
    const proxy = await delayProxy(Number(relayPort), delay)
    const via = `/ip4/127.0.0.1/tcp/${proxy.address().port}/ws/p2p/${peer}`
    let cairn = Infinity
    let helia = Infinity
    for (let r = 0; r < ROUNDS; r++) {
      const store = join(work, `cat-store-${delay}-${r}`)
      const c = await timed(bin, ['cat', cid, '--peer', via, '--store', store, '-o', join(work, 'out'), '--timeout', '600'])
      cairn = Math.min(cairn, c.ms)
      rmSync(store, { recursive: true, force: true })
      const h = await timed(node, [join(import.meta.dirname, 'helia-peer.mjs'), 'fetch', via, cid])
      const got = JSON.parse(h.stdout.trim().split('\n').pop())
      if (got.bytes !== BYTES) throw new Error(`Helia fetched ${got.bytes} bytes, not ${BYTES}`)
      helia = Math.min(helia, h.ms)
    }
    let ls = null
    let get = null
    if (FOLDER_DELAYS.includes(delay)) {
      ls = Infinity
      get = Infinity
      for (let r = 0; r < ROUNDS; r++) {
        const store = join(work, `folder-store-${delay}-${r}`)
        const l = await timed(bin, ['ls', nestedCid, '--peer', via, '--store', store, '--timeout', '600'])
        const lines = l.stdout.trim().split('\n').length
        if (lines !== ENTRIES) throw new Error(`ls listed ${lines} entries, not ${ENTRIES}`)
        ls = Math.min(ls, l.ms)
        const dest = join(work, `got-${delay}-${r}`)
        const g = await timed(bin, ['get', flatCid, '-o', dest, '--peer', via, '--store', store, '--timeout', '600'])
        if (readdirSync(dest).length !== ENTRIES) throw new Error(`get wrote ${readdirSync(dest).length} files, not ${ENTRIES}`)
        get = Math.min(get, g.ms)
        rmSync(store, { recursive: true, force: true })
        rmSync(dest, { recursive: true, force: true })
      }
    }
    proxy.close()
    const row = {
      delay_ms: delay,
      cairn_s: cairn / 1000,
      cairn_mbps: BYTES / 1e6 / (cairn / 1000),
      helia_s: helia / 1000,
      helia_mbps: BYTES / 1e6 / (helia / 1000),
      ls_200_subdirectories_s: ls === null ? null : ls / 1000,
      get_200_files_s: get === null ? null : get / 1000
    }
    rows.push(row)
    console.log(`added delay ${String(delay).padStart(3)} ms: cairn cat --peer ${row.cairn_s.toFixed(2)} s (${row.cairn_mbps.toFixed(1)} MB/s), Helia bitswap ${row.helia_s.toFixed(2)} s (${row.helia_mbps.toFixed(1)} MB/s)` +
      (ls === null ? '' : `; ls of ${ENTRIES} subdirectories ${(ls / 1000).toFixed(2)} s, get of ${ENTRIES} files ${(get / 1000).toFixed(2)} s`))
  }
  const at = (d) => rows.find((r) => r.delay_ms === d)
  const ratios = {
    cairn_100_vs_0: at(100).cairn_mbps / at(0).cairn_mbps,
    cairn_vs_helia_at_100: at(100).cairn_mbps / at(100).helia_mbps
  }
  console.log(`ratio cairn at 100 ms / cairn at 0 ms: ${ratios.cairn_100_vs_0.toFixed(2)} (target ≥ 0.5)`)
  console.log(`ratio cairn / Helia at 100 ms: ${ratios.cairn_vs_helia_at_100.toFixed(2)} (target ≥ 1)`)
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({ bytes: BYTES, cid, rounds: ROUNDS, rows, ratios }, null, 2))
  console.log(`written to ${out}`)
  await cleanup()
  process.exit(0)
} catch (e) {
  console.error(`bench-latency: ${e.stack ?? e}`)
  await cleanup()
  process.exit(1)
}
