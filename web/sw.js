// The web app's service worker: the package's (cairn-cas/sw.js), which answers
// `/ipfs/<cid>/<path>` URLs (images, video that seeks) and streamed downloads from the node
// in an open page of the app (`serveIpfs(node)` in app.js). It lives here, at the root,
// so that its scope covers `/ipfs/` and `download/`.
importScripts('cairn-cas/sw.js')
