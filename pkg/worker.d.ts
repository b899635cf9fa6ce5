// `cairn-cas/worker` is a module to run as a dedicated Worker (see createWorkerNode); it
// exports nothing.
export {}
