// The operations of a node and how each crosses the Worker boundary, written once: the page
// side (client.js) and the Worker side (worker.js) both work from this list. Each entry:
//   options:  the index of the argument that is the options bag (its `signal` and
//             `onProgress` cannot be posted: they are carried as an abort message and
//             progress messages instead);
//   transfer: what is transferred rather than copied: 'input' (a ReadableStream given to
//             `add`), 'inputs' (the ReadableStream contents of `addAll`'s entries), 'bytes'
//             (the Uint8Array `cat` returns), 'stream' (`catStream`'s);
//   sync:     the method is synchronous on the node (the Worker's copy returns a promise).
// The names are exactly the methods of `CairnNode` (generated from the Rust): the package
// test compares this list with the class, so neither can change without the other.
export const OPERATIONS = Object.freeze({
  connect: {},
  add: { options: 1, transfer: 'input' },
  addAll: { options: 1, transfer: 'inputs' },
  ls: { options: 1 },
  cat: { options: 1, transfer: 'bytes' },
  fetch: { options: 1 },
  catStream: { options: 1, transfer: 'stream', sync: true },
  size: { options: 1 },
  pin: { options: 1 },
  replicas: {},
  unpin: {},
  pins: {},
  evict: { options: 0 },
  peers: { sync: true },
  stats: {},
  enqueue: {},
  transfers: {},
  pauseTransfer: {},
  resumeTransfer: {},
  cancelTransfer: {},
  setTransferPriority: {},
  waitTransfer: { options: 1 },
  watchTransfers: { options: 0 },
  stop: {}
})
