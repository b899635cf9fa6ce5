//! Answering `/cas` requests from a store, on inbound streams, within bounds.
//!
//! A request goes through two stages, each bounded:
//! 1. **reading**: at most [`ServerConfig::max_reading`] requests are being read at once, and
//!    at most [`ServerConfig::max_reading_per_peer`] from one peer, each within
//!    [`ServerConfig::read_timeout`] (a peer that opens streams and sends nothing holds a
//!    slot for that long, and only its own share). Past these bounds a new stream is reset.
//! 2. **answering**: at most [`ServerConfig::max_answering`] answers are built and written at
//!    once, each within [`ServerConfig::answer_timeout`]; a request read while all are busy
//!    is answered `busy` (code 4) at once.
//!
//! Answers are also bounded in bytes: before building one the server reserves its bytes in
//! the node's answer [`Budget`] (per peer and in total) and holds them until the answer is
//! written. A request the budget has no room for is answered `busy` at once, so a peer that
//! does not read its answers gets no more of this node's memory; an answer whose peer reads
//! nothing of it for [`Caps::stall_timeout`](crate::budget::Caps) is abandoned and the
//! connection it stalled on is cut (closed; the peer's other connections are left alone).
//!
//! A malformed request is answered with its error (code 1 or 3); a frame over the limit is
//! reset unread. Streams come from [`crate::streams`], which also bounds them per
//! connection. While [`ServerHandle::drain`] runs, every new request is answered `busy`
//! ("shutting down") and the drain resolves once the answers in flight are written and their
//! requesters have read them (they close their side; each is waited for at most the stall
//! timeout): libp2p's yamux refuses to read a stream whose connection has closed, so closing
//! connections sooner loses answers still in the requesters' buffers.
//!
//! [`serve`] starts it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_core::CondSend;
use cairn_core::store::BlockStore;
use futures::channel::oneshot;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, FutureExt, StreamExt};
use libp2p::PeerId;

use super::{
    Below, CapsCache, GetFrame, Limits, PROTOCOL, Request, Response, answer, code, decode_request,
    error, get_frame, get_overhead,
};
use crate::budget::{self, Budget, Permit};
use crate::framing;
use crate::metrics::Metrics;
use crate::streams::{AlreadyRegistered, Control, Stream};

/// The server's bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests being read at once.
    pub max_reading: usize,
    /// Requests being read at once from one peer.
    pub max_reading_per_peer: usize,
    /// How long a request may take to arrive.
    pub read_timeout: Duration,
    /// Answers built and written at once; past that, `busy`.
    pub max_answering: usize,
    /// How long building and writing one answer may take (a peer reading nothing is cut
    /// sooner: the budget's stall timeout).
    pub answer_timeout: Duration,
    /// Inbound streams waiting for the server to take them; past that, new ones are reset.
    /// As many as may be read at once: a burst waits rather than being reset while the
    /// server is busy answering (each connection's streams are bounded on their own).
    pub queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_reading: 1024,
            max_reading_per_peer: 128,
            read_timeout: Duration::from_secs(10),
            max_answering: 256,
            answer_timeout: Duration::from_secs(30),
            queue: 1024,
        }
    }
}

/// Most `busy` and error answers being written at once; past that, streams are reset.
const MAX_REFUSING: usize = 256;

/// Stops the server [`serve`] started, gracefully; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    drain: Arc<Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>>,
}

impl ServerHandle {
    /// Refuses new requests (`busy`, "shutting down") and resolves once the answers in
    /// flight are written and read (at once if the server is not running).
    pub async fn drain(&self) {
        let sender = self
            .drain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let (done, drained) = oneshot::channel();
            if sender.send(done).is_ok() {
                let _ = drained.await;
            }
        }
    }
}

/// Told of each request the server starts answering: the peer and the request's type.
pub type OnRequest = Arc<dyn Fn(PeerId, &'static str) + Send + Sync>;

/// What the server answers from and reports to.
pub struct Serving<S> {
    /// The store answers come from.
    pub store: Arc<S>,
    /// What `caps` answers.
    pub caps: Arc<CapsCache>,
    /// The protocol's limits.
    pub limits: Limits,
    /// The server's bounds.
    pub config: ServerConfig,
    /// The answer bytes the node holds for its peers (shared with its other serving paths).
    pub budget: Budget,
    /// Where to count answers.
    pub metrics: Option<Arc<Metrics>>,
    /// Told of each request answered.
    pub on_request: Option<OnRequest>,
}

impl<S> std::fmt::Debug for Serving<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("limits", &self.limits)
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Accepts `/cas` streams on `streams` and returns a handle to drain the server and the
/// server's future (spawn or poll it; it ends when the swarm does).
pub fn serve<S: BlockStore + 'static>(
    streams: &mut Control,
    serving: Serving<S>,
) -> Result<(ServerHandle, impl Future<Output = ()> + CondSend + use<S>), AlreadyRegistered> {
    let incoming = streams.accept(PROTOCOL, serving.config.queue)?;
    let (drain_tx, drain_rx) = oneshot::channel();
    let handle = ServerHandle {
        drain: Arc::new(Mutex::new(Some(drain_tx))),
    };
    let run = run(incoming, streams.clone(), serving, drain_rx);
    Ok((handle, run))
}

/// What reading a request gave.
enum Read {
    Request(Request),
    /// The error answer a malformed request gets.
    Malformed(Response),
    /// Nothing to answer (the stream failed or broke the limits, or time ran out).
    Dropped,
}

async fn read(
    peer: PeerId,
    mut stream: Stream,
    limits: Limits,
    timeout: Duration,
) -> (PeerId, Stream, Read) {
    let body = cairn_core::rt::timeout(
        timeout,
        framing::read_frame(&mut stream, limits.max_request),
    )
    .await;
    let read = match body {
        Some(Ok(body)) => match decode_request(&body) {
            Ok(req) => Read::Request(req),
            Err(answer) => Read::Malformed(answer),
        },
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "/cas request not read");
            Read::Dropped
        }
        None => Read::Dropped,
    };
    (peer, stream, read)
}

/// Writes `response` and closes the stream, within `timeout`.
async fn reply(mut stream: Stream, response: &Response, timeout: Duration) {
    let write = async {
        framing::write_frame(&mut stream, &super::encode(response)).await?;
        stream.close().await
    };
    if let Some(Err(e)) = cairn_core::rt::timeout(timeout, write).await {
        tracing::debug!(error = %e, "/cas answer not delivered");
    }
}

/// How writing an answer ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Written and closed.
    Done,
    /// The stream failed (the peer reset it: it no longer wants the answer).
    Failed,
    /// The peer took nothing for the stall timeout.
    Stalled,
    /// The answer timeout passed.
    TimedOut,
    /// The requester sent more after its request.
    Stuffed,
}

/// Writes `frame` (a whole frame, prefix included) and closes the stream: each piece within
/// `stall`, the whole within `timeout`. A stream whose answer was written whole is given
/// back (see [`until_read`]).
///
/// Meanwhile the stream's inbound side is watched: the requester sends nothing after its
/// request (it may close its side), so bytes arriving now are a peer stuffing the stream
/// (they would sit in the muxer's buffer, up to a whole window, for as long as the answer
/// takes), and an error is a reset (nobody wants the answer any more). Either ends the
/// answer at once.
async fn write_answer(
    stream: Stream,
    frame: &super::Frame,
    stall: Duration,
    timeout: Duration,
) -> (Written, Option<Stream>) {
    use futures::AsyncReadExt as _;
    let (mut inbound, mut outbound) = stream.split();
    let write = async {
        match framing::write_paced(&mut outbound, &frame.parts(), stall).await {
            Ok(()) => {}
            Err(framing::PacedError::Stalled(_)) => return Written::Stalled,
            Err(_) => return Written::Failed,
        }
        match cairn_core::rt::timeout(stall, outbound.close()).await {
            Some(Ok(())) => Written::Done,
            Some(Err(_)) => Written::Failed,
            None => Written::Stalled,
        }
    };
    let watch = watch(&mut inbound);
    let written = {
        let answer = async {
            futures::pin_mut!(write, watch);
            futures::future::select(write, watch).await.factor_first().0
        };
        cairn_core::rt::timeout(timeout, answer)
            .await
            .unwrap_or(Written::TimedOut)
    };
    match written {
        Written::Done => (Written::Done, inbound.reunite(outbound).ok()),
        other => (other, None),
    }
}

/// Watches the inbound side of a stream being answered: resolves when the requester sends
/// more after its request ([`Written::Stuffed`]) or resets the stream ([`Written::Failed`]);
/// never when it closes its side.
async fn watch(inbound: &mut futures::io::ReadHalf<Stream>) -> Written {
    use futures::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    match inbound.read(&mut byte).await {
        // The requester closed its side: nothing more can come.
        Ok(0) => futures::future::pending().await,
        Ok(_) => Written::Stuffed,
        Err(_) => Written::Failed,
    }
}

/// Holds a stream whose answer was written whole until its requester is done with it: it
/// closes its side (cairn's client does once it has read the answer), resets it, or `stall`
/// passes. A node that is stopping waits for these before it closes its connections:
/// libp2p's yamux never lets a stream be read once its connection has closed, so an answer
/// written in full but still in the requester's buffers would be lost with the connection.
async fn until_read(mut stream: Stream, stall: Duration) {
    use futures::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    let _ = cairn_core::rt::timeout(stall, stream.read(&mut byte)).await;
}

/// The bytes to reserve for answering `req`: as many as it may need, and the least worth
/// answering with (a `get` gets fewer blocks, the rest `skipped`, when less is free).
fn estimate<S: BlockStore>(req: &Request, limits: &Limits, store: &S) -> (usize, usize) {
    match req {
        // Room to read the first block (its size if the store knows it); the permit grows
        // block by block (`get_frame`).
        Request::Get { cids } => {
            let first = cids
                .first()
                .and_then(super::WireCid::cid)
                .and_then(|c| store.size_hint(&c))
                .unwrap_or(cairn_core::MAX_BLOCK_SIZE);
            let n = limits.get_budget.min(first) + get_overhead(cids.len());
            (n, n)
        }
        // Its root first; each frame below is reserved as it is built.
        Request::Dag { root } => {
            let first = root
                .cid()
                .and_then(|c| store.size_hint(&c))
                .unwrap_or(cairn_core::MAX_BLOCK_SIZE);
            let n = limits.get_budget.min(first) + get_overhead(1);
            (n, n)
        }
        Request::Have { cids } => {
            let n = 1024 + cids.len() / 8;
            (n, n)
        }
        Request::List { limit, .. } => {
            let n = 1024
                + (*limit as usize).min(limits.max_list) * (cairn_core::cid::MAX_BINARY_LEN + 4);
            (n, n)
        }
        // The content index is at most 1 MiB.
        Request::Caps {} => (1024 * 1024 + 16 * 1024, 1024 * 1024 + 16 * 1024),
    }
}

/// What answering a request needs.
struct Answering<'a, S> {
    store: &'a S,
    caps: &'a CapsCache,
    limits: &'a Limits,
    config: &'a ServerConfig,
    budget: &'a Budget,
    metrics: Option<&'a Metrics>,
    control: &'a Control,
}

impl<S: BlockStore> Answering<'_, S> {
    /// Answers `req` from `peer` on `stream` within the bytes of `permit`; gives the stream
    /// back when the answer was written whole.
    async fn reply(
        self,
        peer: PeerId,
        req: Request,
        stream: Stream,
        mut permit: Permit,
    ) -> Option<Stream> {
        let kind = req.kind();
        if let Request::Dag { root } = req {
            return self.push(peer, root, stream, permit).await;
        }
        let reply = match req {
            Request::Get { cids } => {
                match get_frame(self.store, &cids, self.limits, &mut permit).await {
                    Ok(f) => f,
                    Err(resp) => framed(&resp),
                }
            }
            Request::Caps {} => framed(&Response::Caps(self.caps.get(self.store).await)),
            req => framed(&answer(self.store, req, self.limits, &Default::default()).await),
        };
        self.send(peer, kind, stream, reply, permit).await
    }

    /// Answers a `dag` request: its root as a `get` answer, then ([`Below`]) the blocks of
    /// the DAG below it that the store holds, breadth first, a frame at a time, each held
    /// in `permit` only while it is written; then closes. Each frame is written within the
    /// answer timeout, not the whole answer. A requester that stops reading (it has what it
    /// wanted, or its buffer of pushed blocks is full) is not cut off: the answer just ends
    /// after the stall timeout, as it does when the budget has no room for the next frame.
    async fn push(
        self,
        peer: PeerId,
        root: super::WireCid,
        stream: Stream,
        mut permit: Permit,
    ) -> Option<Stream> {
        const KIND: &str = "dag";
        let (first, below) = match Below::start(self.store, &root, self.limits, &mut permit).await {
            Ok(started) => started,
            Err(resp) => return self.send(peer, KIND, stream, framed(&resp), permit).await,
        };
        let Some(mut below) = below else {
            return self.send(peer, KIND, stream, first, permit).await;
        };
        let stall = self.budget.caps().stall_timeout;
        let timeout = self.config.answer_timeout;
        let (mut inbound, mut outbound) = futures::AsyncReadExt::split(stream);
        let written = {
            let write = async {
                let mut next = Some(first);
                let mut frames = 0;
                while let Some(f) = next.take() {
                    permit.shrink(f.frame.len());
                    match self.metrics {
                        Some(m) if frames == 0 => m.record_answer(KIND, f.blocks, f.block_bytes),
                        Some(m) => m.record_pushed(f.blocks, f.block_bytes),
                        None => {}
                    }
                    frames += 1;
                    if f.blocks > 0 {
                        self.budget.pace(f.block_bytes).await;
                    }
                    let parts = f.frame.parts();
                    let paced = framing::write_paced(&mut outbound, &parts, stall);
                    match cairn_core::rt::timeout(timeout, paced).await {
                        Some(Ok(())) => {}
                        Some(Err(framing::PacedError::Stalled(_))) => return Written::Stalled,
                        Some(Err(_)) => return Written::Failed,
                        None => return Written::TimedOut,
                    }
                    drop(f);
                    permit.shrink(0);
                    next = match below.next_frame(self.store, self.limits, &mut permit).await {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "/cas dag answer ends early");
                            None
                        }
                    };
                }
                match cairn_core::rt::timeout(stall, outbound.close()).await {
                    Some(Ok(())) => Written::Done,
                    Some(Err(_)) => Written::Failed,
                    None => Written::Stalled,
                }
            };
            let watch = watch(&mut inbound);
            futures::pin_mut!(write, watch);
            futures::future::select(write, watch).await.factor_first().0
        };
        match written {
            Written::Done => inbound.reunite(outbound).ok(),
            other => {
                tracing::debug!(%peer, how = ?other, "/cas dag answer ended before the whole DAG");
                None
            }
        }
    }

    /// Writes the one-frame answer `answer`, held in `permit`; gives the stream back when it
    /// was written whole.
    async fn send(
        &self,
        peer: PeerId,
        kind: &'static str,
        stream: Stream,
        answer: GetFrame,
        mut permit: Permit,
    ) -> Option<Stream> {
        let GetFrame {
            frame,
            blocks,
            block_bytes: bytes,
        } = answer;
        permit.shrink(frame.len());
        if let Some(m) = self.metrics {
            m.record_answer(kind, blocks, bytes);
        }
        if blocks > 0 {
            self.budget.pace(bytes).await;
        }
        let stall = self.budget.caps().stall_timeout;
        let connection = stream.connection();
        let (written, delivered) =
            write_answer(stream, &frame, stall, self.config.answer_timeout).await;
        match written {
            Written::Done => {}
            Written::Failed => {
                tracing::debug!(%peer, "/cas answer not delivered: the stream failed")
            }
            Written::TimedOut => {
                tracing::debug!(%peer, timeout = ?self.config.answer_timeout, "/cas answer not delivered in time");
            }
            Written::Stuffed => {
                tracing::debug!(%peer, "/cas: bytes after the request; resetting the stream");
            }
            Written::Stalled => {
                self.budget.record_cut(peer, budget::CAS);
                self.control.cut_connection(peer, connection);
            }
        }
        delivered
    }
}

/// `response`, an answer without blocks, as a whole frame.
fn framed(response: &Response) -> GetFrame {
    let body = super::encode(response);
    let mut frame = Vec::with_capacity(body.len() + 10);
    cairn_core::varint::put(&mut frame, body.len() as u64);
    frame.extend_from_slice(&body);
    GetFrame {
        frame: frame.into(),
        blocks: 0,
        block_bytes: 0,
    }
}

/// The `busy` answer to a request the budget has no room for.
fn no_room(budget: &Budget, peer: PeerId) -> Response {
    let held = budget.used_by(peer);
    if held + budget::MIN_PER_ASKER > budget.caps().per_asker {
        error(
            code::BUSY,
            format!(
                "{held} bytes of answers to you are not read yet; read them before asking for more"
            ),
        )
    } else {
        error(
            code::BUSY,
            "this node holds as many bytes of answers as it allows; retry later",
        )
    }
}

async fn run<S: BlockStore>(
    mut incoming: crate::streams::IncomingStreams,
    control: Control,
    serving: Serving<S>,
    drain: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let Serving {
        store,
        caps,
        limits,
        config,
        budget,
        metrics,
        on_request,
    } = serving;
    let (store, caps, limits, config, budget) = (&*store, &*caps, &limits, &config, &budget);
    let (metrics, control) = (metrics.as_deref(), &control);
    let mut reading = FuturesUnordered::new();
    let mut reading_per_peer: HashMap<PeerId, usize> = HashMap::new();
    let mut answering = FuturesUnordered::new();
    // While draining: answers written whole whose requesters are still reading them.
    let mut finishing = FuturesUnordered::new();
    let mut refusing = FuturesUnordered::new();
    let mut drain = drain.fuse();
    // Set while draining: told once the answers in flight are written.
    let mut drained: Option<oneshot::Sender<()>> = None;
    let mut draining = false;
    let refuse = |stream: Stream, response: Response, refusing: &mut FuturesUnordered<_>| {
        if refusing.len() < MAX_REFUSING {
            refusing.push(async move { reply(stream, &response, Duration::from_secs(5)).await });
        }
    };
    loop {
        if draining
            && answering.is_empty()
            && finishing.is_empty()
            && let Some(done) = drained.take()
        {
            tracing::debug!("/cas: every answer in flight was written and read");
            let _ = done.send(());
        }
        futures::select! {
            s = incoming.next() => {
                let Some(first) = s else {
                    // The swarm is gone.
                    break;
                };
                // Take every stream already waiting (at most a queue's worth), not one per
                // turn: under load the other branches win most turns, and a queue that
                // fills resets the streams that arrive next.
                let mut next = Some(first);
                let mut taken = 0;
                while let Some((peer, stream)) = next.take() {
                    taken += 1;
                    let n = reading_per_peer.entry(peer).or_default();
                    if reading.len() >= config.max_reading || *n >= config.max_reading_per_peer {
                        tracing::debug!(%peer, "/cas: too many requests being read; resetting one");
                        if *n == 0 {
                            reading_per_peer.remove(&peer);
                        }
                    } else {
                        *n += 1;
                        reading.push(read(peer, stream, *limits, config.read_timeout));
                    }
                    if taken < config.queue.max(1) {
                        next = incoming.next().now_or_never().flatten();
                    }
                }
            },
            (peer, stream, read) = reading.select_next_some() => {
                if let Some(n) = reading_per_peer.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        reading_per_peer.remove(&peer);
                    }
                }
                let req = match read {
                    Read::Request(req) => req,
                    Read::Malformed(answer) => {
                        tracing::debug!(%peer, ?answer, "malformed /cas request");
                        refuse(stream, answer, &mut refusing);
                        continue;
                    }
                    Read::Dropped => continue,
                };
                if draining {
                    refuse(stream, error(code::BUSY, "this node is shutting down; ask another"), &mut refusing);
                    continue;
                }
                if answering.len() >= config.max_answering {
                    tracing::debug!(%peer, "too many /cas requests in flight; answering busy");
                    refuse(stream, error(code::BUSY, "too many requests in flight; retry later"), &mut refusing);
                    continue;
                }
                let (want, at_least) = estimate(&req, limits, store);
                let Some(permit) = budget.try_reserve(peer, budget::CAS, want, at_least) else {
                    tracing::debug!(%peer, held = budget.used_by(peer), "no room for a /cas answer; answering busy");
                    refuse(stream, no_room(budget, peer), &mut refusing);
                    continue;
                };
                if let Some(f) = &on_request {
                    f(peer, req.kind());
                }
                let answered = Answering { store, caps, limits, config, budget, metrics, control };
                answering.push(answered.reply(peer, req, stream, permit));
            },
            delivered = answering.select_next_some() => {
                // Only a stopping node waits for requesters to finish reading; otherwise
                // the stream goes now, as it always has.
                if draining && let Some(stream) = delivered {
                    finishing.push(until_read(stream, budget.caps().stall_timeout));
                }
            },
            () = finishing.select_next_some() => {},
            () = refusing.select_next_some() => {},
            done = drain => {
                draining = true;
                drained = done.ok();
            },
        }
    }
}
