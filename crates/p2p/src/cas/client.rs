//! Sending `/cas` requests: each on a stream of its own, whose write side stays open until
//! the answer is in. Dropping the future (a race that another peer won, a timeout, an
//! aborted fetch) drops the open stream, which resets it, so the peer stops sending what
//! nobody will read (dropping a half-closed stream would not tell it).

use std::time::Duration;

use bytes::Bytes;
use cairn_core::Reason;
use cairn_core::cid::Cid;
use cairn_core::source::PeerError;
use futures::AsyncWriteExt;
use libp2p::PeerId;

use super::{
    Answer, Error, GetAnswer, Limits, PROTOCOL, Request, Response, WireCid, code, decode_answer,
    encode,
};
use crate::framing;
use crate::streams::{Control, OpenStreamError};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No stream could be opened (the peer is unreachable or does not speak `/cas`).
    #[error(transparent)]
    Open(#[from] OpenStreamError),
    /// The stream failed, or the answer was over the limits or malformed.
    #[error(transparent)]
    Exchange(#[from] Error),
    /// Nothing moved for this long: the peer sent nothing, on this request or another.
    #[error("the peer sent nothing for {0:?}")]
    Timeout(Duration),
}

/// A peer answered with an error message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused (code {code}): {message}")]
pub struct Refused {
    /// One of [`code`].
    pub code: u32,
    /// What the peer said.
    pub message: String,
}

impl Refused {
    /// Whether the peer is only overloaded (code 4): asking again later may work.
    pub fn is_busy(&self) -> bool {
        self.code == code::BUSY
    }
}

/// Sends requests over a node's streams; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    streams: Control,
    limits: Limits,
    timeout: Duration,
    /// When each peer last sent something on a request.
    activity: std::sync::Arc<Activity>,
}

impl Client {
    /// A client whose requests are bounded by `limits`, each given up when it has not moved
    /// and its peer has sent nothing on any request for `timeout` (an answer that keeps
    /// coming is not cut, however long it takes).
    pub fn new(streams: Control, limits: Limits, timeout: Duration) -> Self {
        Self {
            streams,
            limits,
            timeout,
            activity: std::sync::Arc::default(),
        }
    }

    /// Sends `req` to `peer` (dialing it if needed, at addresses the node knows) and reads
    /// the answer.
    pub async fn request(&self, peer: PeerId, req: &Request) -> Result<Response, RequestError> {
        self.ask(peer, req).await.map(Answer::into_response)
    }

    /// [`Client::request`], a get answer's large blocks left in the frame they came in.
    async fn ask(&self, peer: PeerId, req: &Request) -> Result<Answer, RequestError> {
        let progress = self.activity.request(peer);
        self.timed(&progress, async {
            let (answer, mut stream) = self.exchange(peer, req, &progress).await?;
            let _ = stream.close().await;
            Ok(answer)
        })
        .await
    }

    /// Opens a stream to `peer`, writes `req` and reads the first answer frame; the stream
    /// stays open.
    async fn exchange(
        &self,
        peer: PeerId,
        req: &Request,
        progress: &Watch,
    ) -> Result<(Answer, crate::streams::Stream), RequestError> {
        let mut control = self.streams.clone();
        let stream = control.open_stream(peer, PROTOCOL).await?;
        progress.moved();
        let mut stream = Watched {
            inner: stream,
            progress,
        };
        framing::write_frame(&mut stream, &encode(req))
            .await
            .map_err(|e| Error::Frame(e.into()))?;
        let body = framing::read_frame(&mut stream, self.limits.max_response)
            .await
            .map_err(Error::Frame)?;
        Ok((decode_answer(Bytes::from(body))?, stream.inner))
    }

    /// `exchange`, given up once it has not moved (its stream opened, its bytes sent or
    /// answered) and the peer has sent nothing on any request for the request timeout. An answer
    /// that keeps coming is not cut however long it takes: a window of answers shares the
    /// link, so on a slow one each takes the window's bytes over the link's rate (16 MiB at
    /// 1 MB/s is 16 s), and the bytes of one stream may wait behind the others' in the
    /// peer's queues for seconds while the connection is busy; a bound on the whole would
    /// give up on every request of a slow link at once. The caller's own deadline bounds
    /// the whole.
    async fn timed<T>(
        &self,
        progress: &Watch,
        exchange: impl std::future::Future<Output = Result<T, RequestError>>,
    ) -> Result<T, RequestError> {
        let mut exchange = std::pin::pin!(exchange);
        loop {
            let left = self.timeout.saturating_sub(progress.idle());
            if left.is_zero() {
                return Err(RequestError::Timeout(self.timeout));
            }
            if let Some(out) = cairn_core::rt::timeout(left, exchange.as_mut()).await {
                return out;
            }
        }
    }

    /// Asks `peer` for one block; the bytes are the caller's to verify. A `busy` answer is
    /// asked again after a pause (doubling from 20 ms to 1 s) until the request timeout has
    /// passed since the first ask; so, at most twice, is a stream that ended or was reset
    /// before its answer was whole (a responder past its accept queue resets new streams).
    pub async fn get(&self, peer: PeerId, cid: &Cid) -> Result<Bytes, PeerError> {
        const STREAM_RETRIES: u32 = 2;
        let req = Request::Get {
            cids: vec![WireCid::from(cid)],
        };
        let started = cairn_core::rt::Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut broken = 0;
        loop {
            let answer = self.ask(peer, &req).await;
            // A block `skipped` (the peer's answer budget had no room for it) is held there:
            // as good as busy, not missing.
            let busy = match &answer {
                Ok(Answer::Other(Response::Error { code, .. })) => *code == code::BUSY,
                Ok(Answer::Get(GetAnswer {
                    blocks, skipped, ..
                })) => {
                    skipped.iter().any(|c| c.cid().as_ref() == Some(cid))
                        && !blocks.iter().any(|b| b.0.cid().as_ref() == Some(cid))
                }
                _ => false,
            };
            let cut = matches!(
                &answer,
                Err(RequestError::Exchange(Error::Frame(
                    framing::Error::Closed | framing::Error::Io(_)
                )))
            ) && broken < STREAM_RETRIES;
            if (busy || cut) && started.elapsed() + pause < self.timeout {
                if cut {
                    broken += 1;
                    tracing::debug!(%peer, %cid, "/cas get: the stream ended before the answer; asking again");
                }
                cairn_core::rt::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            return Self::block(cid, answer);
        }
    }

    /// Asks `peer` for `root` with `dag`: the root's bytes (the caller's to verify) and the
    /// rest of the answer, a [`Pushed`] to take the blocks below it from as they are wanted.
    /// A peer that does not know `dag` (code 3), is busy or had no room to send the root,
    /// or whose stream broke before its first frame, is asked with [`Client::get`] instead
    /// (which asks again as it says), and there is no [`Pushed`].
    pub async fn dag(
        &self,
        peer: PeerId,
        root: &Cid,
    ) -> Result<(Bytes, Option<Pushed>), PeerError> {
        let req = Request::Dag {
            root: WireCid::from(root),
        };
        let progress = self.activity.request(peer);
        let answer = self
            .timed(&progress, self.exchange(peer, &req, &progress))
            .await;
        let ask_again = match &answer {
            Ok((Answer::Other(Response::Error { code, .. }), _)) => {
                *code == code::UNSUPPORTED || *code == code::BUSY
            }
            Ok((
                Answer::Get(GetAnswer {
                    blocks, skipped, ..
                }),
                _,
            )) => blocks.is_empty() && !skipped.is_empty(),
            Err(RequestError::Exchange(Error::Frame(
                framing::Error::Closed | framing::Error::Io(_),
            ))) => true,
            _ => false,
        };
        if ask_again {
            return self.get(peer, root).await.map(|b| (b, None));
        }
        let (response, stream) = match answer {
            Ok((response, stream)) => (Ok(response), Some(stream)),
            Err(e) => (Err(e), None),
        };
        let bytes = Self::block(root, response)?;
        let pushed = stream.map(|s| Pushed::new(peer, s, root, &bytes, self.limits.max_response));
        Ok((bytes, pushed))
    }

    fn block(cid: &Cid, answer: Result<Answer, RequestError>) -> Result<Bytes, PeerError> {
        match answer {
            Ok(Answer::Get(GetAnswer {
                blocks, skipped, ..
            })) => match blocks.into_iter().find(|b| b.0.cid().as_ref() == Some(cid)) {
                Some((_, data)) => Ok(data),
                None if skipped.iter().any(|c| c.cid().as_ref() == Some(cid)) => {
                    Err(PeerError::Failed(Reason::msg(
                        "the peer holds the block but had no room to send it (answer budget full); ask again later",
                    )))
                }
                None => Err(PeerError::NotFound),
            },
            Ok(Answer::Other(Response::Error { code, message })) => {
                Err(PeerError::Failed(Reason::new(Refused { code, message })))
            }
            Ok(_) => Err(PeerError::Failed(Reason::msg(
                "answered get with another message type",
            ))),
            Err(e) => Err(PeerError::Failed(Reason::new(e))),
        }
    }
}

/// When something last moved, in milliseconds since it was made.
#[derive(Debug)]
struct Progress {
    started: cairn_core::rt::Instant,
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: cairn_core::rt::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last move (or since it was made).
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// When each peer last sent something on a request. A peer no request is open to is
/// forgotten once 64 peers are kept.
#[derive(Debug, Default)]
struct Activity {
    peers: std::sync::Mutex<std::collections::HashMap<PeerId, std::sync::Arc<Progress>>>,
}

impl Activity {
    /// What a new request to `peer` marks and is timed by.
    fn request(&self, peer: PeerId) -> Watch {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Peers no request is open to any more are forgotten.
        if peers.len() >= 64 {
            peers.retain(|_, p| std::sync::Arc::strong_count(p) > 1);
        }
        let peer = peers
            .entry(peer)
            .or_insert_with(|| std::sync::Arc::new(Progress::new()))
            .clone();
        Watch {
            own: Progress::new(),
            peer,
        }
    }
}

/// One request's progress and its peer's.
struct Watch {
    own: Progress,
    peer: std::sync::Arc<Progress>,
}

impl Watch {
    /// The peer sent something: this request, and every other to it, are alive.
    fn heard(&self) {
        self.own.mark();
        self.peer.mark();
    }

    /// This request moved on our side (its stream opened, its bytes went out): that says
    /// nothing of the peer, so other requests to it are not kept alive by it.
    fn moved(&self) {
        self.own.mark();
    }

    /// How long since this request last moved or its peer last sent anything.
    fn idle(&self) -> Duration {
        self.own.idle().min(self.peer.idle())
    }
}

/// A stream that marks a request's [`Watch`] whenever bytes go through it.
struct Watched<'a, S> {
    inner: S,
    progress: &'a Watch,
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let out = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &out
            && *n > 0
        {
            self.progress.heard();
        }
        out
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let out = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &out
            && *n > 0
        {
            self.progress.moved();
        }
        out
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Most bytes of pushed blocks a [`Pushed`] holds that nobody has taken yet: past that the
/// push ends (what it holds is still given out), so a requester that does not want what is
/// pushed holds little.
pub const PUSH_HELD: usize = 16 * 1024 * 1024;

/// How long a push may bring nothing while a block expected from it is waited for before it
/// is given up (its blocks are then asked for one by one).
pub const PUSH_IDLE: Duration = Duration::from_secs(5);

/// Most CIDs a push is expected to bring at once (links of blocks it brought, not yet
/// brought); links past that are asked for one by one.
const PUSH_EXPECTED: usize = 1 << 20;

/// The rest of a `dag` answer: the blocks a peer pushes below a root, breadth first, read
/// as they are wanted. Only blocks linked from the root or from blocks the push brought are
/// kept (each once), and they are not verified here: [`Pushed::take`] hands out the bytes for
/// the caller to check against the CID, as an answer to `get` would be. Dropping it resets
/// the stream, and the peer stops sending.
pub struct Pushed {
    peer: PeerId,
    held: std::sync::Mutex<Held>,
    /// The stream and the bytes read from it not yet a whole frame; `None` once it ended.
    reader: futures::lock::Mutex<Option<Reader>>,
    limit: usize,
}

impl std::fmt::Debug for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pushed")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Held {
    blocks: std::collections::HashMap<Cid, Bytes>,
    bytes: usize,
    /// Linked from what the push brought, not brought yet.
    expected: std::collections::HashSet<Cid>,
    ended: bool,
}

impl Held {
    /// The blocks below the dag-pb block `cid` (bytes `data`, not verified: a link that
    /// is not real is never asked for) that the push brings ([`super::pushed_links`]) are
    /// expected, within [`PUSH_EXPECTED`].
    fn expect_links(&mut self, cid: &Cid, data: &Bytes) {
        for l in super::pushed_links(cid, data) {
            if self.expected.len() >= PUSH_EXPECTED {
                return;
            }
            self.expected.insert(l);
        }
    }

    /// `Some(Some(bytes))` when held (taken now), `Some(None)` when the push will not bring
    /// `cid`, `None` when it still may.
    fn take(&mut self, cid: &Cid) -> Option<Option<Bytes>> {
        if let Some(b) = self.blocks.remove(cid) {
            self.bytes -= b.len();
            return Some(Some(b));
        }
        (self.ended || !self.expected.contains(cid)).then_some(None)
    }

    /// Keeps those of `blocks` that are expected (each once), expecting what is below
    /// them in turn; `false` once more is held than [`PUSH_HELD`].
    fn accept(&mut self, blocks: Vec<(WireCid, Bytes)>) -> bool {
        for (cid, data) in blocks {
            let Some(cid) = cid.cid() else { continue };
            if !self.expected.remove(&cid) {
                continue;
            }
            self.expect_links(&cid, &data);
            self.bytes += data.len();
            self.blocks.insert(cid, data);
        }
        self.bytes <= PUSH_HELD
    }
}

struct Reader {
    stream: crate::streams::Stream,
    /// Bytes read that are not a whole frame yet.
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Reader {
    /// The next frame's body; `None` when the stream ended between frames. Safe to drop at
    /// any await: bytes read are kept in `buf`.
    async fn next_frame(&mut self, limit: usize) -> Result<Option<Vec<u8>>, framing::Error> {
        use futures::AsyncReadExt as _;
        loop {
            if let Some(body) = framing::take_frame(&mut self.buf, limit)? {
                return Ok(Some(body));
            }
            let n = self.stream.read(&mut self.chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

impl Pushed {
    fn new(
        peer: PeerId,
        stream: crate::streams::Stream,
        root: &Cid,
        data: &Bytes,
        limit: usize,
    ) -> Self {
        let mut held = Held::default();
        held.expect_links(root, data);
        Self {
            peer,
            held: std::sync::Mutex::new(held),
            reader: futures::lock::Mutex::new(Some(Reader {
                stream,
                buf: Vec::new(),
                chunk: vec![0; framing::PIECE],
            })),
            limit,
        }
    }

    /// The peer pushing.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes of `cid` (not verified) if the push brought them or brings them next;
    /// `None` when it will not (nothing it brought links to `cid`, it ended, or it brought
    /// nothing for [`PUSH_IDLE`]): ask for the block.
    pub async fn take(&self, cid: &Cid) -> Option<Bytes> {
        loop {
            if let Some(found) = self.held().take(cid) {
                return found;
            }
            // One caller reads for all; the others find what it read once they get here.
            let mut reader = self.reader.lock().await;
            if let Some(found) = self.held().take(cid) {
                return found;
            }
            let read = match reader.as_mut() {
                Some(r) => cairn_core::rt::timeout(PUSH_IDLE, r.next_frame(self.limit)).await,
                None => None,
            };
            let more = match read {
                Some(Ok(Some(body))) => self.accept(body),
                Some(Ok(None)) => false,
                Some(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "/cas dag answer broke off");
                    false
                }
                None => {
                    tracing::debug!(peer = %self.peer, "/cas dag answer brought nothing for a while; asking block by block");
                    false
                }
            };
            if !more {
                // Dropping the stream resets it: the peer stops sending.
                *reader = None;
                self.held().ended = true;
            }
        }
    }

    /// Keeps the expected blocks of one pushed frame; `false` when the push should end (the
    /// frame is not a `get` answer, or too much is held that nobody took).
    fn accept(&self, body: Vec<u8>) -> bool {
        let Ok(Answer::Get(GetAnswer { blocks, .. })) = decode_answer(Bytes::from(body)) else {
            tracing::debug!(peer = %self.peer, "/cas dag answer: a frame that is not a get answer");
            return false;
        };
        self.held().accept(blocks)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::cas::WireBlock;
    use crate::streams::tests::swarm;

    /// A peer that hands each `/cas` stream opened to it to `serve` (the next one is taken
    /// once that returns), and a client connected to it that gives a request up after
    /// 500 ms in which nothing moved.
    async fn peer_serving<F, Fut>(mut serve: F) -> (Client, PeerId)
    where
        F: FnMut(crate::streams::Stream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let mut server = swarm();
        let mut incoming = server
            .behaviour()
            .new_control()
            .accept(PROTOCOL, 8)
            .unwrap();
        let addr = crate::streams::tests::listening(&mut server).await;
        let id = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = server.select_next_some() => {}
                    Some((_, s)) = incoming.next() => serve(s).await,
                }
            }
        });
        let mut client = swarm();
        let control = client.behaviour().new_control();
        client.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
                break;
            }
        }
        tokio::spawn(async move {
            loop {
                client.select_next_some().await;
            }
        });
        (
            Client::new(control, Limits::default(), Duration::from_millis(500)),
            id,
        )
    }

    /// Reads a `get` from `s`: the CIDs it asks for.
    async fn read_get(s: &mut crate::streams::Stream) -> Vec<WireCid> {
        let body = framing::read_frame(s, 1 << 20).await.unwrap();
        match super::super::decode_request(&body) {
            Ok(Request::Get { cids }) => cids,
            Ok(Request::Dag { root }) => vec![root],
            other => panic!("not a get: {other:?}"),
        }
    }

    /// Answers `cid` with `data` on `s`, the frame written in `pieces` parts `gap` apart (a
    /// slow link), or only the first `stall_after` of them and then nothing more (a peer
    /// gone silent).
    async fn answer_paced(
        s: &mut crate::streams::Stream,
        cid: WireCid,
        data: Vec<u8>,
        pieces: usize,
        gap: Duration,
        stall_after: Option<usize>,
    ) {
        let answer = encode(&Response::Get {
            blocks: vec![WireBlock(cid, ByteBuf::from(data))],
            missing: vec![],
            skipped: vec![],
        });
        let mut frame = framing::prefix(answer.len());
        frame.extend_from_slice(&answer);
        for (i, piece) in frame.chunks(frame.len().div_ceil(pieces)).enumerate() {
            if stall_after == Some(i) {
                std::future::pending::<()>().await;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
        }
        let _ = s.close().await;
    }

    /// A `/cas` peer that answers each `get` with the block listed as `skipped` the first
    /// `skips` times, then with the block.
    async fn skipping_peer(
        skips: usize,
        data: &'static [u8],
    ) -> (Client, PeerId, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let (client, id) = peer_serving(move |mut s| {
            let count = count.clone();
            async move {
                let cids = read_get(&mut s).await;
                let n = count.fetch_add(1, Ordering::SeqCst);
                let answer = if n < skips {
                    Response::Get {
                        blocks: vec![],
                        missing: vec![],
                        skipped: cids,
                    }
                } else {
                    Response::Get {
                        blocks: vec![WireBlock(cids[0].clone(), ByteBuf::from(data.to_vec()))],
                        missing: vec![],
                        skipped: vec![],
                    }
                };
                framing::write_frame(&mut s, &encode(&answer))
                    .await
                    .unwrap();
                let _ = s.close().await;
            }
        })
        .await;
        (client, id, asked)
    }

    /// A `/cas` peer that answers each `get` with `data` as [`answer_paced`] writes it,
    /// many answers at once.
    async fn pacing_peer(
        data: &'static [u8],
        pieces: usize,
        gap: Duration,
        stall_after: Option<usize>,
    ) -> (Client, PeerId) {
        peer_serving(move |mut s| async move {
            tokio::spawn(async move {
                let cids = read_get(&mut s).await;
                answer_paced(
                    &mut s,
                    cids[0].clone(),
                    data.to_vec(),
                    pieces,
                    gap,
                    stall_after,
                )
                .await;
            });
        })
        .await
    }

    /// An answer that keeps coming is read to its end however long it takes (here three
    /// times the request timeout): on a slow link a window of answers shares the bytes, and
    /// each takes long without the peer ever going quiet.
    #[tokio::test]
    async fn an_answer_that_keeps_coming_is_not_cut_by_the_request_timeout() {
        let data: &[u8] = &[7; 40_000];
        let cid = raw_cid(data);
        let (client, peer) = pacing_peer(data, 8, Duration::from_millis(200), None).await;
        let started = std::time::Instant::now();
        let bytes = client.get(peer, &cid).await.unwrap();
        assert_eq!(bytes, Bytes::from_static(data));
        assert!(
            started.elapsed() > Duration::from_millis(1_400),
            "the answer was paced over 1.4 s, yet it came in {:?}",
            started.elapsed()
        );
    }

    /// A peer that stops sending in the middle of an answer is given up once it has sent
    /// nothing for the request timeout.
    #[tokio::test]
    async fn a_peer_gone_silent_mid_answer_is_given_up_after_the_request_timeout() {
        let data: &[u8] = &[9; 40_000];
        let cid = raw_cid(data);
        let (client, peer) = pacing_peer(data, 8, Duration::from_millis(50), Some(3)).await;
        let err = client.get(peer, &cid).await.unwrap_err();
        assert!(err.to_string().contains("sent nothing for 500ms"), "{err}");
    }

    /// A request whose answer waits behind another's (the peer writes one answer, paced over
    /// three times the request timeout, before it starts the next) is not given up while the
    /// other's bytes keep coming: the connection is busy, not gone.
    #[tokio::test]
    async fn a_request_waiting_behind_another_answer_to_the_same_peer_is_not_given_up() {
        // One answer at a time, each in 8 parts 200 ms apart; the first all zeros, the
        // second all ones.
        let mut answered = 0u8;
        let (client, id) = peer_serving(move |mut s| {
            let data = vec![answered; 40_000];
            answered += 1;
            async move {
                let cids = read_get(&mut s).await;
                answer_paced(
                    &mut s,
                    cids[0].clone(),
                    data,
                    8,
                    Duration::from_millis(200),
                    None,
                )
                .await;
            }
        })
        .await;
        let (a, b) = (raw_cid(&[0; 40_000]), raw_cid(&[1; 40_000]));
        // Whichever the peer reads second waits about 1.4 s behind the other's answer.
        let (first, second) = futures::join!(client.get(id, &a), client.get(id, &b));
        for got in [first, second] {
            assert_eq!(
                got.expect("a request waiting behind the other answer")
                    .len(),
                40_000
            );
        }
    }

    /// The CID of `data` as a raw block.
    fn raw_cid(data: &[u8]) -> Cid {
        *cairn_core::block::Block::from_data(
            cairn_core::cid::Codec::Raw,
            cairn_core::cid::HashAlg::Sha2_256,
            data.to_vec(),
        )
        .unwrap()
        .cid()
    }

    /// A `dag` whose root the peer had no room to send is asked again as a `get` (which
    /// asks until the block comes), and nothing is pushed.
    #[tokio::test]
    async fn a_dag_answer_without_room_for_the_root_is_asked_again_as_a_get() {
        let data: &[u8] = b"a root sent on the second ask";
        let cid = raw_cid(data);
        let (client, peer, asked) = skipping_peer(1, data).await;
        let (bytes, pushed) = client.dag(peer, &cid).await.unwrap();
        assert_eq!(bytes, Bytes::from_static(data));
        assert!(pushed.is_none(), "the get that brought it pushes nothing");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "dag, then get");
    }

    /// What a push brings is kept only when something it brought (or the root) links to it,
    /// once, and only the blocks [`super::super::pushed_links`] names: not a file's large
    /// chunks, not blocks nobody linked, not a second copy. What is held is handed out once;
    /// a block the push will not bring is asked for elsewhere.
    #[test]
    fn a_push_keeps_only_what_is_linked_and_expected() {
        use cairn_core::block::Block;
        use cairn_core::cid::{Codec, HashAlg};
        use cairn_core::unixfs::pb::{Link, Node};
        let raw = |data: Vec<u8>| Block::from_data(Codec::Raw, HashAlg::Sha2_256, data).unwrap();
        let small = raw(b"a small file".to_vec());
        let chunk = raw(vec![7; 100_000]);
        let stranger = raw(b"linked from nowhere".to_vec());
        let link = |b: &Block, tsize: u64| Link {
            cid: *b.cid(),
            name: String::new(),
            tsize: Some(tsize),
        };
        let inner = Node {
            links: vec![link(&small, small.len() as u64)],
            data: None,
        };
        let inner = Block::from_data(Codec::DagPb, HashAlg::Sha2_256, inner.encode()).unwrap();
        let root = Node {
            links: vec![link(&inner, 100), link(&chunk, chunk.len() as u64)],
            data: None,
        };
        let root = Block::from_data(Codec::DagPb, HashAlg::Sha2_256, root.encode()).unwrap();
        let wire = |b: &Block| (WireCid::from(b.cid()), b.data().clone());

        let mut held = Held::default();
        held.expect_links(root.cid(), root.data());
        assert_eq!(
            held.take(chunk.cid()),
            Some(None),
            "a large chunk is asked for with get"
        );
        assert_eq!(
            held.take(inner.cid()),
            None,
            "the inner node is still to come"
        );
        assert_eq!(
            held.take(small.cid()),
            Some(None),
            "nothing brought links to it yet"
        );
        assert!(held.accept(vec![
            wire(&stranger),
            wire(&inner),
            wire(&inner),
            wire(&small)
        ]));
        // `small` came in the same frame as the node that links to it, after it: kept.
        assert_eq!(
            held.blocks.len(),
            2,
            "the stranger and the second copy are dropped"
        );
        assert_eq!(held.take(stranger.cid()), Some(None));
        assert_eq!(held.take(inner.cid()), Some(Some(inner.data().clone())));
        assert_eq!(held.take(inner.cid()), Some(None), "handed out once");
        assert_eq!(held.take(small.cid()), Some(Some(small.data().clone())));
        assert_eq!(held.bytes, 0);
    }

    /// A block the peer skipped (its answer budget was full) is asked for again, not taken
    /// as missing; one it keeps skipping fails as unavailable, saying why.
    #[tokio::test]
    async fn a_skipped_block_is_asked_again_not_taken_as_missing() {
        let data: &[u8] = b"held but not sent at first";
        let cid = raw_cid(data);
        let (client, peer, asked) = skipping_peer(2, data).await;
        assert_eq!(
            client.get(peer, &cid).await.unwrap(),
            Bytes::from_static(data)
        );
        assert_eq!(asked.load(Ordering::SeqCst), 3, "asked until it was sent");

        let (client, peer, _) = skipping_peer(usize::MAX, data).await;
        match client.get(peer, &cid).await {
            Err(PeerError::Failed(why)) => {
                assert!(why.to_string().contains("no room to send it"), "{why}")
            }
            other => panic!("a block always skipped is unavailable, not {other:?}"),
        }
    }
}
