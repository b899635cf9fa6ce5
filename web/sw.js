// The web app's service worker: downloads streamed to disk.
//
// A download link is `download/<cid>?name=…&type=…&size=…` under the app's scope. The
// relay has no such path: this worker answers it with a streamed response whose body is
// the file read from the node, block by block, so that a file of any size is saved without
// being assembled in the page's memory. The bytes come from a page of the app: the worker
// asks the page that made the request (or any open page of the app) over a MessageChannel,
// and the page answers with `node.catStream(cid)`, transferred.
const PREFIX = new URL('download/', self.registration.scope).pathname

self.addEventListener('install', () => self.skipWaiting())
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()))

/** Asks `client` for the bytes of `cid`: resolves to a ReadableStream, or rejects with the page's error. */
function ask (client, cid) {
  return new Promise((resolve, reject) => {
    const { port1, port2 } = new MessageChannel()
    const timer = setTimeout(() => reject(new Error('the app page did not answer within 10 s')), 10_000)
    port1.onmessage = ({ data }) => {
      clearTimeout(timer)
      port1.close()
      if (data?.stream) resolve(data.stream)
      else reject(new Error(data?.error ?? 'the app page could not read the file'))
    }
    client.postMessage({ cairnDownload: cid }, [port2])
  })
}

async function answer (event, url) {
  const cid = decodeURIComponent(url.pathname.slice(PREFIX.length).split('/')[0])
  const name = (url.searchParams.get('name') || cid).replace(/["\\\r\n]/g, '_')
  const type = url.searchParams.get('type') || 'application/octet-stream'
  const size = url.searchParams.get('size')
  // The page that asked (a fetch) or, for a navigation or a download, an open page of the app.
  const own = event.clientId ? await self.clients.get(event.clientId) : null
  const pages = own ? [own] : await self.clients.matchAll({ type: 'window' })
  if (pages.length === 0) {
    return new Response('No page of the app is open to read this file from: open the app, then download again.', { status: 503 })
  }
  let stream
  try {
    stream = await ask(pages.find((p) => p.focused) ?? pages[0], cid)
  } catch (e) {
    return new Response(`Cannot read ${cid}: ${e.message}`, { status: 502 })
  }
  const headers = {
    'Content-Type': type,
    'Content-Disposition': `attachment; filename="${name}"`,
    'X-Content-Type-Options': 'nosniff'
  }
  if (size && /^\d+$/.test(size)) headers['Content-Length'] = size
  return new Response(stream, { headers })
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url)
  if (url.origin !== self.location.origin || !url.pathname.startsWith(PREFIX) || event.request.method !== 'GET') return
  event.respondWith(answer(event, url))
})
