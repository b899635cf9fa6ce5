// Prints the root CID Helia's UnixFS importer (ipfs-unixfs-importer, what `@helia/unixfs`
// `addAll` runs) gives a directory tree on disk, or a single file wrapped in a directory.
// Usage: node unixfs-tree-cid.mjs PROFILE PATH [wrap] [preserve]
// (PROFILE: default | unixfs-v1-2025)
// A directory is added as `<its name>/<relative path>` entries, files in name order, empty
// directories as entries of their own, as `addAll(globSource(...))` gives them; `wrap` sets
// wrapWithDirectory; `preserve` gives every file and directory its mode (low 12 bits) and
// mtime (to the nanosecond, as Kubo's --preserve-mode/--preserve-mtime do), each directory
// yielded before what is in it, as globSource does. Options are spelled out, so a change of defaults upstream cannot
// silently change the test.
import { createReadStream, readdirSync, statSync } from 'node:fs'
import { basename, join } from 'node:path'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const PROFILES = {
  default: { chunkSize: 262144, maxChildrenPerNode: 174, shardSplitStrategy: 'links-bytes' },
  'unixfs-v1-2025': { chunkSize: 1048576, maxChildrenPerNode: 1024, shardSplitStrategy: 'block-bytes' }
}

const discard = {
  async put (cid) { return cid },
  async has () { return false },
  async * putMany (source) { for await (const { cid } of source) yield cid }
}

/** A file's or directory's mode and mtime, when they are kept. */
function meta (path) {
  if (!preserve) return {}
  const st = statSync(path, { bigint: true })
  const secs = st.mtimeNs / 1_000_000_000n
  let nsecs = Number(st.mtimeNs % 1_000_000_000n)
  // Before 1970: whole seconds down, nanoseconds up from there.
  const mtime = nsecs < 0 ? { secs: secs - 1n, nsecs: nsecs + 1_000_000_000 } : { secs, nsecs }
  if (mtime.nsecs === 0) delete mtime.nsecs
  return { mode: Number(st.mode) & 0o7777, mtime }
}

function * walk (dir, prefix) {
  const names = readdirSync(dir).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
  if (names.length === 0 || preserve) yield { path: prefix, ...meta(dir) }
  for (const name of names) {
    const full = join(dir, name)
    if (statSync(full).isDirectory()) {
      yield * walk(full, `${prefix}/${name}`)
    } else {
      yield { path: `${prefix}/${name}`, content: createReadStream(full), ...meta(full) }
    }
  }
}

const [profileName, path, ...flags] = process.argv.slice(2)
const wrap = flags.includes('wrap') ? 'wrap' : undefined
const preserve = flags.includes('preserve')
const profile = PROFILES[profileName]
if (profile == null || path == null) {
  console.error(`usage: unixfs-tree-cid.mjs <${Object.keys(PROFILES).join('|')}> PATH [wrap]`)
  process.exit(2)
}
const entries = statSync(path).isDirectory()
  ? walk(path, basename(path))
  : [{ path: basename(path), content: createReadStream(path), ...meta(path) }]
let root
for await (const entry of importer(entries, discard, {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: profile.chunkSize }),
  layout: balanced({ maxChildrenPerNode: profile.maxChildrenPerNode }),
  shardSplitStrategy: profile.shardSplitStrategy,
  shardSplitThresholdBytes: 262144,
  shardFanoutBits: 8,
  wrapWithDirectory: wrap === 'wrap'
})) {
  root = entry.cid
}
console.log(root.toString())
