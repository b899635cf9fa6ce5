// The page side of cairn's service worker (`sw.js`): `serveIpfs(node)` answers the worker's
// requests for `/ipfs/<cid>/<path>` URLs and streamed downloads from a node in this page (or
// in a Worker, from `createWorkerNode`).

const TYPES = {
  html: 'text/html; charset=utf-8',
  htm: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  mjs: 'text/javascript; charset=utf-8',
  json: 'application/json',
  txt: 'text/plain; charset=utf-8',
  md: 'text/markdown; charset=utf-8',
  csv: 'text/csv; charset=utf-8',
  xml: 'application/xml',
  svg: 'image/svg+xml',
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  gif: 'image/gif',
  webp: 'image/webp',
  avif: 'image/avif',
  ico: 'image/x-icon',
  bmp: 'image/bmp',
  mp4: 'video/mp4',
  m4v: 'video/mp4',
  webm: 'video/webm',
  ogv: 'video/ogg',
  mov: 'video/quicktime',
  mp3: 'audio/mpeg',
  m4a: 'audio/mp4',
  ogg: 'audio/ogg',
  oga: 'audio/ogg',
  opus: 'audio/ogg',
  wav: 'audio/wav',
  flac: 'audio/flac',
  pdf: 'application/pdf',
  wasm: 'application/wasm',
  zip: 'application/zip',
  gz: 'application/gzip',
  woff: 'font/woff',
  woff2: 'font/woff2',
  ttf: 'font/ttf',
  otf: 'font/otf'
}

/** The type a file's name gives, or `undefined`. */
export function typeOfName (name) {
  const m = /\.([a-z0-9]+)$/i.exec(name ?? '')
  return m ? TYPES[m[1].toLowerCase()] : undefined
}

const MAGIC = [
  ['image/png', [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]],
  ['image/jpeg', [0xff, 0xd8, 0xff]],
  ['image/gif', [0x47, 0x49, 0x46, 0x38]],
  ['image/webp', [0x52, 0x49, 0x46, 0x46], 8, [0x57, 0x45, 0x42, 0x50]],
  ['audio/wav', [0x52, 0x49, 0x46, 0x46], 8, [0x57, 0x41, 0x56, 0x45]],
  ['video/mp4', null, 4, [0x66, 0x74, 0x79, 0x70]],
  ['video/webm', [0x1a, 0x45, 0xdf, 0xa3]],
  ['audio/ogg', [0x4f, 0x67, 0x67, 0x53]],
  ['audio/mpeg', [0x49, 0x44, 0x33]],
  ['application/pdf', [0x25, 0x50, 0x44, 0x46, 0x2d]],
  ['application/zip', [0x50, 0x4b, 0x03, 0x04]],
  ['application/gzip', [0x1f, 0x8b]]
]

/** The type a file's first bytes give: images, audio, video, PDF, archives, HTML and text. */
export function sniff (head) {
  for (const [type, start, at, more] of MAGIC) {
    if ((!start || start.every((b, i) => head[i] === b)) && (!more || more.every((b, i) => head[at + i] === b))) return type
  }
  const text = new TextDecoder().decode(head.subarray(0, 256)).trimStart().toLowerCase()
  if (text.startsWith('<!doctype html') || text.startsWith('<html')) return 'text/html; charset=utf-8'
  if (text.startsWith('<svg')) return 'image/svg+xml'
  try {
    // A character cut at the end of the sample is not an error.
    new TextDecoder('utf-8', { fatal: true }).decode(head, { stream: true })
    if (!head.some((b) => b < 9 || (b > 13 && b < 32 && b !== 27))) return 'text/plain; charset=utf-8'
  } catch {}
  return 'application/octet-stream'
}

function fail (status, message) {
  return Object.assign(new Error(message), { status })
}

/**
 * The byte range a `Range` header asks of a `size`-byte file: `{ first, last }` (inclusive),
 * `null` for the whole file (no header, or several ranges, which are answered whole), or an
 * error with `status` 416 saying why it cannot be met.
 */
export function parseRange (header, size) {
  if (!header) return null
  const malformed = () => fail(416, `malformed Range header \`${header}\`: use bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX`)
  const m = /^\s*bytes=(.*)$/.exec(header)
  if (!m) throw malformed()
  if (m[1].includes(',')) return null
  const r = /^\s*(\d*)\s*-\s*(\d*)\s*$/.exec(m[1])
  if (!r || (r[1] === '' && r[2] === '')) throw malformed()
  if (r[1] === '') {
    const n = Number(r[2])
    if (n === 0 || size === 0) throw fail(416, `range \`${header}\` asks for no bytes of this ${size}-byte file`)
    return { first: size - Math.min(n, size), last: size - 1 }
  }
  const first = Number(r[1])
  if (first >= size) throw fail(416, `range \`${header}\` starts at byte ${first}, past the end of this ${size}-byte file`)
  const last = r[2] === '' ? size - 1 : Number(r[2])
  if (last < first) throw malformed()
  return { first, last: Math.min(last, size - 1) }
}

/** Every message of an error and its causes. */
function messages (e) {
  const out = []
  for (let c = e, i = 0; c && i < 6; c = c.cause, i++) out.push(c.message ?? String(c))
  return out.join(': ')
}

function statusOf (e) {
  if (e?.status) return e.status
  return { NOT_FOUND: 404, INVALID_ARGUMENT: 400, INVALID_DATA: 502, UNREACHABLE: 504, TIMEOUT: 504 }[e?.code] ?? 500
}

function isDirectory (e) {
  return e?.code === 'INVALID_ARGUMENT' && /is a UnixFS (sharded )?directory/.test(messages(e))
}

function escapeHtml (s) {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c])
}

function listing (url, entries) {
  const rows = entries.map((e) => {
    const slash = e.type === 'directory' ? '/' : ''
    return `<tr><td><a href="./${encodeURIComponent(e.name)}${slash}">${escapeHtml(e.name)}${slash}</a></td><td>${e.size ?? ''}</td><td><code>${e.cid}</code></td></tr>`
  })
  return `<!doctype html>\n<meta charset="utf-8"><title>${escapeHtml(url)}</title>\n<h1>Index of ${escapeHtml(url)}</h1>\n<table>\n<tr><td><a href="../">..</a></td></tr>\n${rows.join('\n')}\n</table>\n`
}

/** How long the first bytes read to tell a file's type are. */
const SNIFF_BYTES = 512

async function readHead (node, path, size) {
  const reader = node.catStream(path, { length: Math.min(size, SNIFF_BYTES) }).getReader()
  const parts = []
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    parts.push(value)
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

/** The answer to one `/ipfs/` request of the worker. */
async function answer (node, { path, range, query, head }) {
  let names
  try {
    names = path.split('/').filter(Boolean).map(decodeURIComponent)
  } catch {
    throw fail(400, `the path ${path} is not valid percent-encoded UTF-8`)
  }
  if (names.length === 0) throw fail(400, 'no CID: use /ipfs/<cid>/<path>')
  const target = names.join('/')
  let file = target
  let name = names.length > 1 ? names[names.length - 1] : null
  let size
  try {
    size = await node.size(file)
  } catch (e) {
    if (!isDirectory(e)) throw e
    // Relative links in a directory resolve under it only from its URL with a `/`.
    if (!path.endsWith('/')) {
      return { status: 301, headers: { Location: `${path.split('/').pop()}/${query ?? ''}` } }
    }
    try {
      size = await node.size(`${target}/index.html`)
      file = `${target}/index.html`
      name = 'index.html'
    } catch (e2) {
      if (e2?.code !== 'NOT_FOUND' && !isDirectory(e2)) throw e2
      const entries = await node.ls(target)
      const body = listing(`/ipfs/${target}/`, entries)
      return { status: 200, headers: { 'Content-Type': 'text/html; charset=utf-8' }, body: head ? null : body }
    }
  }
  const type = typeOfName(name) ?? sniff(await readHead(node, file, size))
  let r
  try {
    r = parseRange(range, size)
  } catch (e) {
    return {
      status: 416,
      headers: { 'Content-Range': `bytes */${size}`, 'Content-Type': 'text/plain; charset=utf-8' },
      body: `${e.message}\n`
    }
  }
  const headers = {
    'Content-Type': type,
    'Accept-Ranges': 'bytes',
    'Content-Length': String(r ? r.last - r.first + 1 : size),
    'Cache-Control': 'public, max-age=29030400, immutable',
    'X-Content-Type-Options': 'nosniff'
  }
  if (r) headers['Content-Range'] = `bytes ${r.first}-${r.last}/${size}`
  const stream = head ? null : node.catStream(file, r ? { offset: r.first, length: r.last - r.first + 1 } : {})
  return { status: r ? 206 : 200, headers, stream }
}

/**
 * Answers the requests of cairn's service worker (`sw.js`) from `node` (a `CairnNode`, a
 * Worker node from `createWorkerNode`, or a function returning the node, for a node made
 * later): `/ipfs/<cid>/<path>` URLs and streamed downloads. `onRequest`, if given, is called
 * with each request answered (`{ path, range, status }`). Returns a function that stops it.
 */
export function serveIpfs (node, { serviceWorker = globalThis.navigator?.serviceWorker, onRequest } = {}) {
  if (!serviceWorker) return () => {}
  const current = typeof node === 'function' ? node : () => node
  const onMessage = (event) => {
    const port = event.ports?.[0]
    const ipfs = event.data?.cairnIpfs
    const download = event.data?.cairnDownload
    if (!port || (!ipfs && !download)) return
    const n = current()
    const work = !n
      ? Promise.reject(fail(503, 'the cairn node in this page has not started yet'))
      : ipfs
        ? answer(n, ipfs)
        : Promise.resolve({ status: 200, stream: n.catStream(download) })
    work.then((a) => {
      onRequest?.({ path: ipfs?.path ?? download, range: ipfs?.range ?? null, status: a.status })
      port.postMessage(a, a.stream ? [a.stream] : [])
    }, (e) => {
      onRequest?.({ path: ipfs?.path ?? download, range: ipfs?.range ?? null, status: statusOf(e) })
      port.postMessage({ error: messages(e), status: statusOf(e) })
    })
  }
  serviceWorker.addEventListener('message', onMessage)
  serviceWorker.startMessages?.()
  return () => serviceWorker.removeEventListener('message', onMessage)
}
