// Reads a CAR file with @ipld/car (the reference JS implementation) and checks every block
// against its CID with multiformats' hashers. Prints `roots=<cid,...> blocks=<n>`.
// Usage: node car-check.mjs FILE.car
import { readFile } from 'node:fs/promises'
import { CarReader } from '@ipld/car'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

const reader = await CarReader.fromBytes(await readFile(process.argv[2]))
const roots = await reader.getRoots()
let blocks = 0
for await (const { cid, bytes } of reader.blocks()) {
  if (cid.multihash.code !== sha256.code) throw new Error(`unexpected hash in ${cid}`)
  const digest = await sha256.digest(bytes)
  if (!equals(digest.bytes, cid.multihash.bytes)) throw new Error(`block ${cid} does not match its CID`)
  blocks++
}
console.log(`roots=${roots.map(String).join(',')} blocks=${blocks}`)
