// The cairn web app: a CairnNode in this page (IndexedDB storage), connected to the relay
// that serves the page. It runs on the npm package `cairn-cas`, as any app would: `cargo
// xtask` packs it and unpacks it into `dist/cairn-cas/` beside this file. Downloads are
// streamed to disk by the service worker beside it (sw.js), from the store, block by block.
//
// URL parameters (all optional): relay=<multiaddr> (repeatable; "none" for none; default:
// the serving relay's WebSocket address from /health, and up to three relays it federates
// with), gateway=<url> (repeatable; "none"
// for none; default: the serving relay's own gateway when it has a store), store=<name>
// (the IndexedDB database; default "app"), quota=<bytes> (a cap on the store).
import { CairnNode, serveIpfs, version } from './cairn-cas/index.js'
import { sniff, typeOfName } from './cairn-cas/serve.js'

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
let node = null
/** The peer ids of the relays the node was given, and whether all of them were lost. */
let relayPeers = []
let relaysLost = false
let current = null

function fmtBytes (n) {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let u = -1
  do { n /= 1024; u++ } while (n >= 1024 && u < units.length - 1)
  return `${n.toFixed(n < 10 ? 2 : 1)} ${units[u]}`
}

function short (id) {
  return id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id
}

/** An error and its causes, outermost first. */
function describe (e) {
  let out = e?.message ?? String(e)
  for (let c = e?.cause, i = 0; c && i < 4; c = c.cause, i++) {
    const m = c.message ?? String(c)
    if (!out.includes(m)) out += ` (${m})`
  }
  return out
}

/** A one-line reading of a failed fetch, from the error's `code` (the full chain goes
 * below it). */
const HEADLINES = {
  INVALID_ARGUMENT: 'That is not a CID or a share link.',
  INVALID_DATA: 'A source sent bytes that do not match the CID; they were refused.',
  UNREACHABLE: 'The peers or gateways that had it could not be reached (they went away or did not answer). What arrived is kept: fetching again resumes.',
  TIMEOUT: 'The peers or gateways that had it could not be reached in time. What arrived is kept: fetching again resumes.',
  NOT_FOUND: 'Nobody reachable has this content: no connected peer, no peer known to the relay, and no gateway.',
  STORE_FULL: 'This browser\'s storage for the site is full: free space in the storage panel, then fetch again.',
  STOPPED: 'The node has stopped: reload the page.'
}

function headline (error) {
  return HEADLINES[error?.code] ?? 'Could not fetch it.'
}

function nodeStatus (text, state) {
  const el = $('node-status')
  el.textContent = text
  el.dataset.state = state
}

/** The CID (and path under it) in what the user typed or pasted: a CID, `CID/path`, a share
 * link, or an /ipfs/ path. */
function cidFrom (text) {
  const t = text.trim()
  const m = t.match(/#\/cid\/([^?#\s]+)/) ?? t.match(/\/ipfs\/([^?#\s]+)/)
  const raw = m ? m[1] : t
  try {
    return raw.split('/').filter(Boolean).map(decodeURIComponent).join('/')
  } catch {
    return raw
  }
}

/** `cid/path` for a URL: each name percent-encoded. */
function encodePath (target) {
  return target.split('/').map(encodeURIComponent).join('/')
}

function shareLink (cid) {
  return `${location.origin}${location.pathname}${location.search}#/cid/${encodePath(cid)}`
}

/** The relay's WebSocket address for this page, from /health's list. */
function pickRelay (addrs) {
  const secure = location.protocol === 'https:'
  const usable = addrs.filter((a) => /\/p2p\//.test(a) &&
    (secure ? /\/(tls\/ws|wss)\//.test(a) : /\/ws\//.test(a) && !/\/(tls|wss)\//.test(a)))
  const host = location.hostname
  const exact = usable.find((a) => a.includes(`/${host}/`))
  if (exact) return exact
  const first = usable.find((a) => !a.startsWith('/ip6/')) ?? usable[0]
  if (!first) return null
  // Reach it under the name this page was loaded from.
  const proto = /^\d+\.\d+\.\d+\.\d+$/.test(host) ? 'ip4' : (host.includes(':') ? 'ip6' : 'dns4')
  return first.replace(/^\/(ip4|ip6|dns4|dns6|dns)\/[^/]+/, `/${proto}/${host.replace(/^\[|\]$/g, '')}`)
}

/**
 * Further relays the serving relay federates with (`federation.relays` in its /health), each
 * at a WebSocket address it listens on: the node reserves on these too and stays reachable
 * through the others if one goes away.
 */
function federatedRelays (health, max = 3) {
  const secure = location.protocol === 'https:'
  const loopback = (a) => /^\/ip4\/127\.|^\/ip6\/::1\//.test(a)
  const pageOnLoopback = /^(localhost|127\.|\[::1\])/.test(location.hostname)
  const out = []
  for (const r of health?.federation?.relays ?? []) {
    const usable = (r.addrs ?? []).filter((a) => /\/p2p\//.test(a) &&
      (secure ? /\/(tls\/ws|wss)\//.test(a) : /\/ws\//.test(a) && !/\/(tls|wss)\//.test(a)) &&
      (pageOnLoopback || !loopback(a)))
    const a = usable.find((a) => !a.startsWith('/ip6/')) ?? usable[0]
    if (a) out.push(a)
    if (out.length >= max) break
  }
  return out
}

async function config () {
  let health = null
  try {
    const r = await fetch('/health')
    if (r.ok) health = await r.json()
  } catch {}
  let relays = params.getAll('relay')
  if (relays.length === 0 && health) {
    const r = pickRelay(health.addrs ?? [])
    if (r) relays = [r, ...federatedRelays(health)]
  }
  relays = relays.filter((r) => r && r !== 'none')
  let gateways = params.getAll('gateway')
  if (gateways.length === 0 && health?.gateway) gateways = [location.origin]
  gateways = gateways.filter((g) => g && g !== 'none')
  // The relay serving this page answers Delegated Routing V1 for the IPFS source.
  let routers = params.getAll('routing')
  if (routers.length === 0 && health) routers = [location.origin]
  routers = routers.filter((r) => r && r !== 'none')
  const quota = params.get('quota')
  // ?direct=off keeps connections to other browsers on the relay (no WebRTC).
  const direct = params.get('direct') !== 'off'
  return { relays, routers, gateways, direct, name: params.get('store') ?? 'app', quota: quota ? Number(quota) : undefined }
}

// ---------------------------------------------------------------------------------------
// Adding

/**
 * Adds what was picked or dropped as one directory (so every name survives, and one link
 * shares it all): `entries` are `{ path, content }` (`content` a File; none for an empty
 * folder), `title` what the list shows.
 */
async function addFiles (entries, title) {
  const li = document.createElement('li')
  li.innerHTML = '<strong class="name"></strong> <span class="size"></span><br><progress max="1" value="0"></progress><span class="state">hashing…</span>'
  const total = entries.reduce((n, e) => n + (e.content?.size ?? 0), 0)
  li.querySelector('.name').textContent = title
  li.querySelector('.size').textContent = fmtBytes(total)
  $('files').prepend(li)
  const bar = li.querySelector('progress')
  const state = li.querySelector('.state')
  const started = performance.now()
  try {
    const cid = await node.addAll(entries, {
      onProgress: (p) => {
        bar.value = p.bytesTotal ? p.bytesDone / p.bytesTotal : 0
        state.textContent = ` ${fmtBytes(p.bytesDone)}`
      }
    })
    const secs = (performance.now() - started) / 1000
    bar.remove()
    li.dataset.cid = cid
    // One file: its own CID too (what `cairn-relay add` or Helia gives the file alone).
    const files = entries.filter((e) => e.content)
    if (files.length === 1 && !files[0].path.includes('/')) {
      const [only] = await node.ls(cid)
      if (only) li.dataset.fileCid = only.cid
    }
    state.innerHTML = '<br><code class="cid"></code><br><a class="share">share link</a> <button type="button" class="copy">copy link</button> <span class="took"></span>'
    state.querySelector('.cid').textContent = cid
    const link = state.querySelector('.share')
    link.href = shareLink(cid)
    state.querySelector('.copy').addEventListener('click', async (e) => {
      try {
        await navigator.clipboard.writeText(shareLink(cid))
        e.target.textContent = 'copied'
      } catch {
        e.target.textContent = 'select the link to copy it'
      }
    })
    state.querySelector('.took').textContent = `added in ${secs.toFixed(1)} s (${fmtBytes(total / Math.max(secs, 0.001))}/s)`
  } catch (e) {
    bar.remove()
    li.classList.add('error')
    state.textContent = ` could not be added: ${describe(e)}`
  }
  refreshStorage()
}

/** What a `FileList` (a picker's, folders keeping `webkitRelativePath`) adds. */
function fromFileList (files) {
  const entries = [...files].map((f) => ({ path: f.webkitRelativePath || f.name, content: f }))
  const tops = new Set(entries.map((e) => e.path.split('/')[0]))
  const title = entries.length === 1 ? entries[0].path : tops.size === 1 && entries[0].path.includes('/') ? `${[...tops][0]}/ (${entries.length} files)` : `${entries.length} files`
  return { entries, title }
}

/** The files under a dropped folder (`FileSystemDirectoryEntry`), empty folders kept. */
async function walkEntry (entry, prefix, out) {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name
  if (entry.isFile) {
    out.push({ path, content: await new Promise((resolve, reject) => entry.file(resolve, reject)) })
    return
  }
  const reader = entry.createReader()
  let any = false
  for (;;) {
    // readEntries gives at most 100 at a time: call it until it gives none.
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject))
    if (batch.length === 0) break
    any = true
    for (const child of batch) await walkEntry(child, path, out)
  }
  if (!any) out.push({ path })
}

/** What a drop adds: files and whole folders. */
async function fromDrop (dataTransfer) {
  const items = [...(dataTransfer.items ?? [])].map((i) => i.webkitGetAsEntry?.()).filter(Boolean)
  if (items.length === 0) return fromFileList(dataTransfer.files)
  const entries = []
  for (const entry of items) await walkEntry(entry, '', entries)
  const title = items.length === 1 ? (items[0].isDirectory ? `${items[0].name}/ (${entries.length} files)` : items[0].name) : `${items.length} items`
  return { entries, title }
}

// ---------------------------------------------------------------------------------------
// Fetching

function showProgress (p, started, firstByte) {
  const elapsed = (performance.now() - started) / 1000
  const total = p.bytesTotal || 0
  $('progress').value = total ? Math.min(p.bytesDone / total, 1) : 0
  $('transfer-status').textContent = `${p.blocksDone} of ${Math.max(p.blocksKnown, p.blocksDone)} blocks, ${fmtBytes(p.bytesDone)}${total ? ` of ${fmtBytes(total)}` : ''}`
  for (const k of ['local', 'peers', 'ipfs', 'gateway']) $(`by-${k}`).textContent = p.bySource?.[k] ?? 0
  // Why blocks came from further down the chain than they might have (on hover).
  $('by-ipfs').parentElement.parentElement.title = p.detours ? `${p.detours} block(s) came from further down the chain; the last: ${p.lastDetour}` : ''
  $('throughput').textContent = elapsed > 0 ? `${fmtBytes(p.bytesDone / elapsed)}/s` : ''
  $('ttfb').textContent = firstByte !== null ? `· first byte after ${firstByte.toFixed(0)} ms` : ''
}

/** Images up to this size are shown (read whole into memory); larger ones are only saved. */
const PREVIEW_MAX = 32 * 1024 * 1024

function concat (parts) {
  if (parts.length === 1) return parts[0]
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

async function readAll (stream) {
  const parts = []
  const reader = stream.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) return parts
    parts.push(value)
  }
}

/** Shows a failed fetch or listing: a headline from its code, the full chain below. */
function showError (e, last, started, firstByte) {
  const transfer = $('transfer')
  const error = $('fetch-error')
  if (e.name === 'AbortError') {
    transfer.dataset.state = 'cancelled'
    $('transfer-status').textContent = 'Cancelled. What arrived is kept: fetching again resumes.'
    return
  }
  transfer.dataset.state = 'error'
  error.textContent = headline(e)
  error.dataset.code = e.code ?? ''
  const details = document.createElement('details')
  details.innerHTML = '<summary>details</summary><code></code>'
  details.querySelector('code').textContent = describe(e)
  error.append(details)
  error.hidden = false
  $('transfer-status').textContent = 'Failed.'
  if (last) showProgress(last, started, firstByte)
}

/** Starts a transfer in the UI: cancels the one running, returns its controller. */
function beginTransfer (what) {
  $('fetch-error').hidden = true
  $('result').hidden = true
  $('listing').hidden = true
  current?.abort()
  const controller = new AbortController()
  current = controller
  const transfer = $('transfer')
  transfer.hidden = false
  transfer.dataset.state = 'running'
  $('cancel-button').hidden = false
  window.cairnApp.last = null
  showProgress({ blocksDone: 0, blocksKnown: 1, bytesDone: 0, bytesTotal: 0, bySource: {} }, performance.now(), null)
  $('transfer-status').textContent = `Looking for ${what}…`
  return controller
}

function endTransfer (controller) {
  if (current === controller) {
    current = null
    $('cancel-button').hidden = true
  }
  refreshStorage()
}

/** Whether the service worker answers `/ipfs/` URLs for this page. */
async function ipfsUrls () {
  return (await downloadsReady) && !!navigator.serviceWorker.controller
}

/** Opens what a link or the input names: a directory's listing, or a file. A link to a
 * directory holding one file (what sharing one file makes) opens that file. */
async function openTarget (text) {
  const target = cidFrom(text)
  if (!target) return
  if (!node) {
    const error = $('fetch-error')
    error.textContent = 'The node has not started (see the status above).'
    error.hidden = false
    return
  }
  const controller = beginTransfer(short(target.split('/')[0]))
  let entries
  try {
    entries = await node.ls(target, { signal: controller.signal })
  } catch (e) {
    endTransfer(controller)
    if (e.code === 'INVALID_ARGUMENT' && /not a directory/.test(describe(e))) return fetchCid(target)
    return showError(e, null, performance.now(), null)
  }
  endTransfer(controller)
  // A shared file (a directory of one file, at the top of a link) opens as the file.
  if (!target.includes('/') && entries.length === 1 && entries[0].type === 'file') return fetchCid(`${target}/${entries[0].name}`)
  return showListing(target, entries)
}

/** A directory's entries: names (links into it), sizes, types, and image previews. */
async function showListing (target, entries) {
  $('transfer').hidden = true
  $('transfer').dataset.state = 'listed'
  const listing = $('listing')
  const parts = target.split('/')
  const crumbs = parts.map((name, i) => {
    const a = document.createElement('a')
    a.href = `#/cid/${encodePath(parts.slice(0, i + 1).join('/'))}`
    a.textContent = i === 0 ? short(name) : name
    return a
  })
  $('listing-path').replaceChildren(...crumbs.flatMap((a, i) => (i ? [' / ', a] : [a])))
  const previews = await ipfsUrls()
  const rows = entries.map((e) => {
    const tr = document.createElement('tr')
    tr.dataset.name = e.name
    tr.dataset.type = e.type
    const name = document.createElement('td')
    const a = document.createElement('a')
    a.href = `#/cid/${encodePath(`${target}/${e.name}`)}`
    a.textContent = e.type === 'directory' ? `${e.name}/` : e.name
    name.append(a)
    const size = document.createElement('td')
    size.className = 'size'
    size.textContent = e.size !== undefined ? fmtBytes(e.size) : ''
    const preview = document.createElement('td')
    const type = typeOfName(e.name)
    if (previews && e.type === 'file' && type?.startsWith('image/')) {
      // Fetched only when shown (lazy), through the service worker, verified.
      const img = document.createElement('img')
      img.loading = 'lazy'
      img.alt = e.name
      img.src = `ipfs/${encodePath(`${target}/${e.name}`)}`
      preview.append(img)
    }
    tr.append(name, size, preview)
    return tr
  })
  $('listing-rows').replaceChildren(...rows)
  $('listing-count').textContent = `${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}`
  listing.hidden = false
  listing.dataset.cid = target
}

/** Fetches a file (a CID, or `cid/path` in a directory) into the store, then offers it. */
async function fetchCid (target) {
  const controller = beginTransfer(short(target))
  const transfer = $('transfer')
  const started = performance.now()
  let firstByte = null
  let last = null
  const name = target.includes('/') ? target.split('/').pop() : target
  try {
    const report = await node.fetch(target, {
      signal: controller.signal,
      onProgress: (p) => {
        if (firstByte === null && p.bytesDone > 0) firstByte = performance.now() - started
        last = p
        window.cairnApp.last = p
        showProgress(p, started, firstByte)
      }
    })
    last = report
    window.cairnApp.last = report
    showProgress(report, started, firstByte)
    const size = await node.size(target)
    const head = concat(await readAll(node.catStream(target, { length: Math.min(size, 65536) })))
    const type = typeOfName(name) ?? sniff(head)
    const link = $('download')
    if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href)
    const streamed = await ipfsUrls()
    if (streamed) {
      // Streamed to disk by the service worker (sw.js), read from the store as it is saved:
      // the page never holds the file.
      link.href = `download/${encodePath(target)}?${new URLSearchParams({ name, type, size: String(size) })}`
      link.removeAttribute('download')
      link.dataset.via = 'stream'
    } else {
      // No service worker (it is not installed yet, or the browser has none): the file is
      // assembled in memory.
      link.href = URL.createObjectURL(new Blob(await readAll(node.catStream(target)), { type }))
      link.download = name
      link.dataset.via = 'memory'
    }
    $('result-size').textContent = `${name === target ? '' : `${name} · `}${fmtBytes(size)} (${type})`
    const preview = $('preview')
    preview.replaceChildren()
    const url = `ipfs/${encodePath(target)}`
    if (type.startsWith('image/') && size <= PREVIEW_MAX) {
      const img = document.createElement('img')
      const blob = streamed ? null : new Blob(await readAll(node.catStream(target)), { type })
      // Through the service worker: an /ipfs/ URL like any other image.
      img.src = blob ? URL.createObjectURL(blob) : url
      if (blob) img.onload = () => URL.revokeObjectURL(img.src)
      img.alt = `preview of ${name}`
      preview.append(img)
    } else if ((type.startsWith('video/') || type.startsWith('audio/')) && streamed) {
      // The element asks for ranges as it plays and seeks; the worker answers each from the
      // store.
      const media = document.createElement('video')
      media.controls = true
      media.preload = 'metadata'
      media.src = url
      preview.append(media)
    } else if (type.startsWith('text/plain')) {
      const pre = document.createElement('pre')
      pre.textContent = new TextDecoder().decode(head) + (size > head.length ? '\n…' : '')
      preview.append(pre)
    }
    $('result').hidden = false
    $('result').dataset.size = String(size)
    const secs = report.elapsedMs / 1000
    $('transfer-status').textContent = `Done: ${report.blocksDone} blocks, ${fmtBytes(size)} in ${secs.toFixed(1)} s`
    transfer.dataset.state = 'done'
  } catch (e) {
    showError(e, last, started, firstByte)
  } finally {
    endTransfer(controller)
  }
}

function route () {
  const m = location.hash.match(/^#\/cid\/(.+)$/)
  if (!m) return
  const target = cidFrom(location.hash)
  $('cid-input').value = target
  openTarget(target)
}

// ---------------------------------------------------------------------------------------
// Panels

// Peers whose failed direct connection was logged already.
const warned = new Set()

function refreshPeers () {
  if (!node) return
  const peers = node.peers()
  $('peer-count').textContent = peers.length
  const rows = peers.map((p) => {
    const tr = document.createElement('tr')
    const transport = /webrtc/.test(p.addr ?? '') ? 'WebRTC' : /\/ws/.test(p.addr ?? '') ? 'WebSocket' : 'other'
    let path, state
    if (p.direct) {
      [path, state] = ['direct (WebRTC)', 'direct']
    } else if (p.upgrading) {
      [path, state] = ['relayed, going direct…', 'upgrading']
    } else if (p.relayed) {
      [path, state] = [p.directError ? `relayed: ${p.directError}` : `relayed (${transport})`, 'relayed']
      if (p.directError && !warned.has(p.peerId)) {
        warned.add(p.peerId)
        console.warn(`cairn: ${p.peerId} stays on the relay: ${p.directError}`)
      }
    } else {
      [path, state] = [`direct (${transport})`, 'direct']
    }
    for (const [text, title] of [[short(p.peerId), p.peerId], [path, p.addr ?? ''], [p.rttMs !== undefined ? `${p.rttMs.toFixed(0)} ms` : '…', ''], [p.agent ?? '', '']]) {
      const td = document.createElement('td')
      td.textContent = text
      if (title) td.title = title
      tr.append(td)
    }
    tr.dataset.peer = p.peerId
    tr.dataset.path = state
    return tr
  })
  $('peers').replaceChildren(...rows)
  if (relayPeers.length) {
    // The node keeps trying every relay it was given; the app says when none is left, and
    // when one is back.
    const up = relayPeers.filter((id) => peers.some((p) => p.peerId === id)).length
    const state = $('node-status').dataset.state
    if (up === 0 && state === 'ready') {
      relaysLost = true
      nodeStatus('Lost the relay: sharing and fetching from others stop until it is back (cairn keeps trying to reach it). Your files stay here.', 'error')
    } else if (up > 0 && relaysLost) {
      relaysLost = false
      nodeStatus(connectedText(Math.max(1, reservedRelays())), 'ready')
    }
    $('my-address').textContent = node.addresses.join(' ') || 'none (no relay reservation)'
  }
}

/** How many relays hold a reservation for the node now (its circuit addresses). */
function reservedRelays () {
  return new Set(node.addresses.map((a) => a.split('/p2p-circuit')[0])).size
}

function connectedText (relays) {
  const through = relays > 1 ? `Connected through ${relays} relays` : 'Connected to the relay'
  return `${through}: files you add can be fetched by others.`
}

async function refreshStorage () {
  if (!node) return
  try {
    const s = await node.stats()
    $('used').textContent = fmtBytes(s.bytes)
    $('blocks').textContent = s.blocks
    $('quota').textContent = s.quota != null
      ? ` (quota ${fmtBytes(s.quota)})`
      : s.browserQuota ? ` (this site may use up to ${fmtBytes(s.browserQuota)})` : ''
    const pins = await node.pins()
    const copies = await Promise.all(pins.map((cid) => node.replicas(cid).catch(() => [])))
    $('pins').replaceChildren(...pins.map((cid, i) => {
      const li = document.createElement('li')
      li.dataset.cid = cid
      li.dataset.copies = copies[i].length
      const a = document.createElement('a')
      a.href = shareLink(cid)
      a.textContent = cid
      const b = document.createElement('button')
      b.type = 'button'
      b.textContent = 'unpin'
      b.addEventListener('click', async () => {
        await node.unpin(cid)
        refreshStorage()
      })
      const n = copies[i].length
      const held = document.createElement('span')
      held.className = 'copies'
      held.textContent = n ? ` · ${n} ${n === 1 ? 'copy' : 'copies'} elsewhere (${copies[i].map((r) => `${short(r.peerId)}, ${r.checks} checks`).join('; ')})` : ' · only here'
      const keep = document.createElement('button')
      keep.type = 'button'
      keep.dataset.action = 'replicate'
      keep.textContent = n ? 'one more copy' : 'keep a copy on the relay'
      keep.addEventListener('click', async () => {
        keep.disabled = true
        $('storage-status').textContent = 'Asking connected peers to keep a copy…'
        try {
          await node.pin(cid, { replicas: n + 1 })
          $('storage-status').textContent = `${n + 1} ${n + 1 === 1 ? 'copy is' : 'copies are'} kept elsewhere, each checked.`
        } catch (e) {
          $('storage-status').textContent = describe(e)
        }
        refreshStorage()
      })
      li.append(a, ' ', b, ' ', keep, held)
      return li
    }))
    if (!pins.length) $('pins').innerHTML = '<li class="hint">nothing pinned</li>'
  } catch (e) {
    $('storage-status').textContent = `Cannot read the store: ${describe(e)}`
  }
}

// ---------------------------------------------------------------------------------------
// The transfers panel: the node's queue (enqueue), with each transfer's state, progress,
// speed and ETA, its priority to change, and pause/resume/cancel.

const transferRows = new Map()

function fmtEta (ms) {
  if (ms == null) return ''
  const s = Math.round(ms / 1000)
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`
}

function transferButton (label, action) {
  const b = document.createElement('button')
  b.type = 'button'
  b.textContent = label
  b.dataset.action = label
  b.addEventListener('click', async () => {
    try {
      await action()
      $('queue-error').hidden = true
    } catch (e) {
      $('queue-error').textContent = describe(e)
      $('queue-error').hidden = false
    }
  })
  return b
}

/** Shows (or updates) one transfer's row. */
function showTransfer (t) {
  let tr = transferRows.get(t.id)
  if (!tr) {
    tr = document.createElement('tr')
    tr.dataset.id = t.id
    tr.innerHTML = '<td class="cid"><code></code></td><td class="state"></td><td class="done"><progress max="1" value="0"></progress> <span></span></td><td class="speed"></td><td class="priority"></td><td class="actions"></td>'
    tr.querySelector('code').textContent = short(t.cid)
    tr.querySelector('code').title = t.cid
    const select = document.createElement('select')
    select.setAttribute('aria-label', 'priority')
    for (const p of ['critical', 'high', 'normal', 'low']) select.append(new Option(p, p))
    select.addEventListener('change', async () => {
      try {
        await node.setTransferPriority(t.id, select.value)
      } catch (e) {
        $('queue-error').textContent = describe(e)
        $('queue-error').hidden = false
      }
    })
    tr.querySelector('.priority').append(select)
    $('transfers').prepend(tr)
    transferRows.set(t.id, tr)
  }
  tr.dataset.state = t.state
  const p = t.progress
  const state = t.state === 'retrying'
    ? `retrying in ${fmtEta(t.retryInMs)} (attempt ${t.attempts}): ${t.error ?? ''}`
    : t.state === 'failed'
      ? `failed: ${t.error ?? ''}`
      : t.state
  tr.querySelector('.state').textContent = state
  const bar = tr.querySelector('progress')
  bar.value = p.bytesTotal ? p.bytesDone / p.bytesTotal : (t.state === 'done' ? 1 : 0)
  tr.querySelector('.done span').textContent = p.bytesTotal ? `${fmtBytes(p.bytesDone)} of ${fmtBytes(p.bytesTotal)}` : ''
  tr.querySelector('.speed').textContent = t.state === 'active' && t.speed > 0
    ? `${fmtBytes(t.speed)}/s · ${fmtEta(t.etaMs)}${t.maxRate ? ` (cap ${fmtBytes(t.maxRate)}/s)` : ''}`
    : (t.maxRate ? `cap ${fmtBytes(t.maxRate)}/s` : '')
  const select = tr.querySelector('select')
  if (document.activeElement !== select) select.value = t.priority
  const finished = ['done', 'failed', 'cancelled'].includes(t.state)
  select.disabled = finished
  const actions = []
  if (['queued', 'active', 'retrying'].includes(t.state)) actions.push(transferButton('pause', () => node.pauseTransfer(t.id)))
  if (t.state === 'paused' || t.state === 'failed') actions.push(transferButton('resume', () => node.resumeTransfer(t.id)))
  if (!finished) actions.push(transferButton('cancel', () => node.cancelTransfer(t.id)))
  if (t.state === 'done') {
    const a = document.createElement('a')
    a.href = shareLink(t.cid)
    a.textContent = 'open'
    actions.push(a)
  }
  const cell = tr.querySelector('.actions')
  const now = [...cell.children].map((c) => c.dataset.action ?? 'open').join()
  const next = actions.map((c) => c.dataset.action ?? 'open').join()
  if (now !== next) cell.replaceChildren(...actions)
  $('transfer-count').textContent = [...transferRows.values()].filter((r) => !['done', 'failed', 'cancelled'].includes(r.dataset.state)).length
  if (t.state === 'done') refreshStorage()
}

async function startTransfers () {
  for (const t of await node.transfers()) showTransfer(t)
  node.watchTransfers({ onProgress: showTransfer }).catch((e) => console.warn(`cairn: transfers are no longer watched: ${describe(e)}`))
  $('queue-form').addEventListener('submit', async (e) => {
    e.preventDefault()
    const cid = cidFrom($('queue-cid').value)
    if (!cid) return
    const rate = $('queue-rate').value.trim()
    try {
      const id = await node.enqueue(cid, {
        priority: $('queue-priority').value,
        maxRate: rate === '' ? undefined : Number(rate) * 1024 * 1024
      })
      $('queue-error').hidden = true
      $('queue-cid').value = ''
      const [t] = (await node.transfers()).filter((x) => x.id === id)
      if (t) showTransfer(t)
    } catch (err) {
      $('queue-error').textContent = describe(err)
      $('queue-error').hidden = false
    }
  })
}

// ---------------------------------------------------------------------------------------

/** Resolves to whether downloads are streamed (the service worker controls this page). */
let downloadsReady = Promise.resolve(false)

/** The service worker (sw.js, the package's): `/ipfs/` URLs and streamed downloads, read
 * from this page's node. */
function startDownloads () {
  if (!('serviceWorker' in navigator)) return
  serveIpfs(() => node, { onRequest: (r) => window.cairnApp.served.push(r) })
  downloadsReady = navigator.serviceWorker.register('sw.js').then(() => new Promise((resolve) => {
    // The worker takes this page over as soon as it is active (clients.claim()).
    if (navigator.serviceWorker.controller) return resolve(true)
    const timer = setTimeout(() => resolve(false), 5000)
    navigator.serviceWorker.addEventListener('controllerchange', () => {
      clearTimeout(timer)
      resolve(true)
    }, { once: true })
  }), (e) => {
    console.warn(`cairn: downloads will be assembled in memory and /ipfs/ URLs go to the relay: the service worker did not start: ${describe(e)}`)
    return false
  })
}

async function start () {
  window.cairnApp = { last: null, served: [] }
  startDownloads()
  $('version').textContent = await version()
  const cfg = await config()
  $('relay-addr').textContent = cfg.relays.join(' ') || 'none'
  $('gateways').textContent = cfg.gateways.join(' ') || 'none'
  nodeStatus(cfg.relays.length ? 'Connecting to the relay…' : 'Starting (no relay configured)…', 'starting')
  const options = { relays: cfg.relays, routers: cfg.routers, gateways: cfg.gateways, direct: cfg.direct, storage: 'indexeddb', name: cfg.name, quota: cfg.quota }
  try {
    node = await CairnNode.create(options)
    relayPeers = cfg.relays.map((r) => r.split('/p2p/').pop()?.split('/')[0]).filter(Boolean)
    nodeStatus(cfg.relays.length ? connectedText(Math.max(1, reservedRelays())) : 'Running without a relay: files stay in this browser.', 'ready')
  } catch (e) {
    try {
      node = await CairnNode.create({ ...options, relays: [] })
      nodeStatus(`The relay cannot be reached: ${describe(e)}. Files you add stay in this browser; reload to try again.`, 'error')
    } catch (e2) {
      nodeStatus(`cairn cannot start: ${describe(e2)}`, 'error')
      document.body.dataset.ready = 'failed'
      return
    }
  }
  window.cairnApp.node = node
  $('peer-id').textContent = node.peerId
  $('my-address').textContent = node.addresses.join(' ') || 'none (no relay reservation)'

  for (const id of ['file', 'folder']) {
    $(id).addEventListener('change', (e) => {
      const { entries, title } = fromFileList(e.target.files)
      if (entries.length) addFiles(entries, title)
      e.target.value = ''
    })
  }
  const drop = $('drop')
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (e) => {
    e.preventDefault()
    drop.classList.remove('over')
    fromDrop(e.dataTransfer).then(({ entries, title }) => {
      if (entries.length) addFiles(entries, title)
    }, (err) => console.warn(`cairn: cannot read what was dropped: ${describe(err)}`))
  })
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') $('file').click()
  })
  $('fetch-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const target = cidFrom($('cid-input').value)
    if (!target) return
    const hash = `#/cid/${encodePath(target)}`
    if (location.hash !== hash) location.hash = hash
    else openTarget(target)
  })
  $('cancel-button').addEventListener('click', () => current?.abort())
  $('evict').addEventListener('click', async () => {
    try {
      const r = await node.evict()
      $('storage-status').textContent = `Freed ${fmtBytes(r.bytes)} (${r.blocks} blocks).`
    } catch (e) {
      $('storage-status').textContent = `Could not free space: ${describe(e)}`
    }
    refreshStorage()
  })
  addEventListener('hashchange', route)
  setInterval(refreshPeers, 2000)
  setInterval(refreshStorage, 5000)
  refreshPeers()
  await refreshStorage()
  await startTransfers()
  document.body.dataset.ready = 'true'
  route()
}

start()
