// Benchmark (run by `cargo xtask bench`): 64 MiB of UnixFS fetched from one Helia provider,
// by cairn's IPFS source (`cairn-relay cat --ipfs-via RELAY`: a provider lookup in the relay's
// DHT, then bitswap) beside a second Helia node fetching the same file from the same
// provider (dialed directly; Helia's bitswap), in one run, alternating, 3 rounds each.
//
//   node bench-ipfs.mjs CAIRN_RELAY_BIN OUT_JSON
//
// Both are timed as whole commands (process start to verified output), and Helia's own
// figure for the transfer alone (after its dial) is reported beside them.

import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { atExit, cleanup, freePort, startRelay, timed } from './harness.mjs'

const [bin, out] = process.argv.slice(2)
const BYTES = 64 * 1024 * 1024
const ROUNDS = 3
const node = process.execPath


const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const mbs = (ms) => Number((BYTES / 1e6 / (ms / 1000)).toFixed(1))

async function main () {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-bench-ipfs-'))
  atExit(() => rmSync(dir, { recursive: true, force: true }))
  const relay = await startRelay(bin, `127.0.0.1:${await freePort()}`, ['--identity', join(dir, 'id.key')])

  const provider = spawn(node, ['helia-peer.mjs', 'serve', relay.addr, String(BYTES), 'bench'], {
    stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, CAIRN_JS_TIMEOUT_MS: '900000' }
  })
  atExit(() => { if (provider.exitCode === null) provider.kill('SIGKILL') })
  let perr = ''
  provider.stderr.on('data', (d) => { perr = (perr + d).slice(-4000) })
  const info = JSON.parse(await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the Helia provider did not start: ${perr}`)), 120_000)
    provider.once('exit', (code) => reject(new Error(`the Helia provider exited (${code}): ${perr}`)))
    createInterface({ input: provider.stdout }).once('line', (l) => { clearTimeout(timer); resolve(l) })
  }))
  const direct = info.addrs.find((a) => a.includes('/tcp/') && !a.includes('/ws') && !a.includes('p2p-circuit'))
  console.log(`Helia provider ${info.peer} holds ${info.cid} (${BYTES} bytes)`)

  const cairn = []
  const helia = []
  const heliaTransfer = []
  for (let i = 0; i < ROUNDS; i++) {
    const file = join(dir, `out-${i}`)
    const c = await timed(bin, ['cat', info.cid, '--ipfs-via', relay.addr, '--store', join(dir, `store-${i}`), '-o', file], 300_000)
    const sha = createHash('sha256').update(readFileSync(file)).digest('hex')
    if (sha !== info.sha256) throw new Error(`cairn's copy differs from what Helia added (${sha})`)
    rmSync(file)
    cairn.push(c.ms)
    const h = await timed(node, ['helia-peer.mjs', 'fetch', direct, info.cid], 300_000)
    const j = JSON.parse(h.stdout)
    if (j.sha256 !== info.sha256) throw new Error('the second Helia node got different bytes')
    helia.push(h.ms)
    heliaTransfer.push(j.ms)
    console.log(`round ${i + 1}: cairn ${c.ms.toFixed(0)} ms; Helia ${h.ms.toFixed(0)} ms (transfer ${j.ms} ms)`)
  }
  const result = {
    bytes: BYTES,
    cid: info.cid,
    rounds: ROUNDS,
    cairn_ipfs_source_ms: cairn.map(Math.round),
    helia_ms: helia.map(Math.round),
    helia_transfer_only_ms: heliaTransfer,
    cairn_mb_per_s: mbs(median(cairn)),
    helia_mb_per_s: mbs(median(helia)),
    helia_transfer_only_mb_per_s: mbs(median(heliaTransfer)),
    ratio_cairn_over_helia: Number((median(helia) / median(cairn)).toFixed(2))
  }
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify(result, null, 2) + '\n')
  console.log(`\n64 MiB from one Helia provider (median of ${ROUNDS}, whole commands):`)
  console.log(`  cairn IPFS source (DHT lookup + bitswap) ${result.cairn_mb_per_s} MB/s`)
  console.log(`  Helia bitswap (provider dialed directly) ${result.helia_mb_per_s} MB/s (transfer alone ${result.helia_transfer_only_mb_per_s} MB/s)`)
  console.log(`  ratio cairn / Helia ${result.ratio_cairn_over_helia}`)
  console.log(`  written to ${out}`)
}

main().then(() => cleanup().then(() => process.exit(0)), async (e) => {
  console.error(`bench-ipfs: ${e?.stack ?? e}`)
  await cleanup()
  process.exit(1)
})
