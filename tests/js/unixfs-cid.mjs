// Prints the root CID that Helia's UnixFS importer (ipfs-unixfs-importer) gives each file.
// Usage: node unixfs-cid.mjs PROFILE [--mode OCTAL] [--mtime SECS[.NSECS]] FILE...
// (PROFILE: default | unixfs-v1-2025; --mode and --mtime give every file that metadata)
// Output: one line per file, `<cid> <file>`. Options are spelled out rather than left to the
// importer's defaults, so a change of defaults upstream cannot silently change the test.
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const PROFILES = {
  default: { chunkSize: 262144, maxChildrenPerNode: 174 },
  'unixfs-v1-2025': { chunkSize: 1048576, maxChildrenPerNode: 1024 }
}

// Keeps nothing: the test compares root CIDs, and files go up to 1 GiB.
const discard = {
  async put (cid) { return cid },
  async has () { return false },
  async * putMany (source) { for await (const { cid } of source) yield cid }
}

const [profileName, ...args] = process.argv.slice(2)
const profile = PROFILES[profileName]
const meta = {}
while (args[0]?.startsWith('--')) {
  const [flag, value] = args.splice(0, 2)
  if (flag === '--mode') meta.mode = parseInt(value, 8)
  else if (flag === '--mtime') {
    const [secs, nsecs] = value.split('.')
    meta.mtime = nsecs === undefined ? { secs: BigInt(secs) } : { secs: BigInt(secs), nsecs: Number(nsecs) }
  } else {
    console.error(`unknown option ${flag}`)
    process.exit(2)
  }
}
const files = args
if (profile == null || files.length === 0) {
  console.error(`usage: unixfs-cid.mjs <${Object.keys(PROFILES).join('|')}> FILE...`)
  process.exit(2)
}
for (const path of files) {
  let root
  for await (const entry of importer([{ content: createReadStream(path), ...meta }], discard, {
    cidVersion: 1,
    rawLeaves: true,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: profile.chunkSize }),
    layout: balanced({ maxChildrenPerNode: profile.maxChildrenPerNode })
  })) {
    root = entry.cid
  }
  console.log(`${root.toString()} ${path}`)
}
