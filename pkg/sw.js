// cairn's service worker: `/ipfs/<cid>/<path>` URLs answered by a cairn node, and downloads
// streamed to disk. A classic script: register it at the root of your origin (its scope must
// cover `ipfs/`), or `importScripts()` it from your own worker; then call `serveIpfs(node)`
// (from the package) in your pages.
//
// - `<scope>ipfs/<cid>[/<path>]`: the file's bytes (or a directory's index.html, or its
//   listing), verified, read from the node of an open page of the origin (its store first,
//   then peers, IPFS and gateways), so `<img src="/ipfs/…">` and a `<video>` that seeks work
//   with no server holding the content. `Range` requests get 206 (416 when unsatisfiable).
//   With no page open to read from, the request goes on to the network unchanged.
// - `<scope>download/<cid or path>?name=…&type=…&size=…`: the file as an attachment, streamed
//   from the page's node: a file of any size is saved without being held in memory.
//
// The worker holds no node of its own (browsers do not give workers WebRTC): it asks a page
// over a MessageChannel, and the page answers with a transferred ReadableStream.
(() => {
  const scope = new URL(self.registration.scope)
  const IPFS = new URL('ipfs/', scope).pathname
  const DOWNLOAD = new URL('download/', scope).pathname
  const ANSWER_MS = 30_000

  self.addEventListener('install', () => self.skipWaiting())
  self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()))

  /** Posts `message` to `client`; resolves to its answer, or rejects with its error. */
  function ask (client, message) {
    return new Promise((resolve, reject) => {
      const { port1, port2 } = new MessageChannel()
      const timer = setTimeout(() => reject(new Error(`the page did not answer within ${ANSWER_MS / 1000} s`)), ANSWER_MS)
      port1.onmessage = ({ data }) => {
        clearTimeout(timer)
        port1.close()
        if (data?.error) reject(Object.assign(new Error(data.error), { status: data.status }))
        else resolve(data)
      }
      client.postMessage(message, [port2])
    })
  }

  /** The page to read from: the one that asked, else a focused page, else any. */
  async function page (event) {
    const own = event.clientId ? await self.clients.get(event.clientId) : null
    if (own) return own
    const pages = await self.clients.matchAll({ type: 'window' })
    return pages.find((p) => p.focused) ?? pages[0] ?? null
  }

  async function ipfs (event, url) {
    const client = await page(event)
    // No page to read from (a link opened in a new tab with the app closed): the network.
    if (!client) return fetch(event.request)
    const path = url.pathname.slice(IPFS.length)
    try {
      const a = await ask(client, {
        cairnIpfs: {
          path,
          range: event.request.headers.get('range'),
          query: url.search,
          head: event.request.method === 'HEAD'
        }
      })
      return new Response(a.stream ?? a.body ?? null, { status: a.status, headers: a.headers })
    } catch (e) {
      return new Response(`${e.message}\n`, {
        status: e.status ?? 502,
        headers: { 'Content-Type': 'text/plain; charset=utf-8' }
      })
    }
  }

  async function download (event, url) {
    const target = decodeURIComponent(url.pathname.slice(DOWNLOAD.length))
    const name = (url.searchParams.get('name') || target.split('/').pop()).replace(/["\\\r\n]/g, '_')
    const type = url.searchParams.get('type') || 'application/octet-stream'
    const size = url.searchParams.get('size')
    const client = await page(event)
    if (!client) {
      return new Response('No page of the app is open to read this file from: open the app, then download again.', { status: 503 })
    }
    let stream
    try {
      stream = (await ask(client, { cairnDownload: target })).stream
    } catch (e) {
      return new Response(`Cannot read ${target}: ${e.message}`, { status: 502 })
    }
    const headers = {
      'Content-Type': type,
      'Content-Disposition': `attachment; filename="${name}"; filename*=UTF-8''${encodeURIComponent(name)}`,
      'X-Content-Type-Options': 'nosniff'
    }
    if (size && /^\d+$/.test(size)) headers['Content-Length'] = size
    return new Response(stream, { headers })
  }

  self.addEventListener('fetch', (event) => {
    const url = new URL(event.request.url)
    if (url.origin !== self.location.origin) return
    const method = event.request.method
    if (url.pathname.startsWith(IPFS) && (method === 'GET' || method === 'HEAD')) {
      event.respondWith(ipfs(event, url))
    } else if (url.pathname.startsWith(DOWNLOAD) && method === 'GET') {
      event.respondWith(download(event, url))
    }
  })
})()
