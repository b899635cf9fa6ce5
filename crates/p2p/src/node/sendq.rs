//! A bound on what one connection holds to send.
//!
//! The yamux implementation cairn runs (0.12, see [`crate::yamux_config`]) moves every frame
//! a stream writes into its connection's queue at once, whether the socket can take it or
//! not: a stream's write completes as soon as the peer's window allows it, not when its
//! bytes leave. A peer that reads nothing from its socket could so make a node hold a whole
//! window per stream (4 MiB × 128 streams on a relay) outside the answer budget: the answer
//! counted as handed over, its bytes still in memory, and no stall ever seen, so the peer
//! never cut.
//!
//! [`Bounded`] wraps the muxer: it counts the bytes streams hand to yamux (each write is one
//! data frame, its 12-byte header included) and the bytes yamux hands to the socket, and a
//! stream's write waits while the difference is [`SEND_QUEUE`] or more (until half of it is
//! free again). A peer that stops reading now stops every write on its connection once that
//! much is queued: the answer writers see the stall and cut it. The socket's own buffers
//! (the kernel's, Noise's frame) come on top, as they did.
//!
//! Frames yamux writes on its own (window updates, pings, resets, a stream's closing frame)
//! count as sent and were never handed: the difference errs low by their 12 bytes each, so
//! the bound loosens by a few bytes per megabyte received, never tightens.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::{AsyncRead, AsyncWrite, ready};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent, StreamMuxerExt as _};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// The bytes one connection may hold written by its streams and not yet taken by its socket.
/// Writes that wait for room are woken once half of it is free, not at every frame the
/// socket takes, so that a writer streaming as fast as it can refills the queue in a batch
/// instead of one frame per wake-up.
pub(crate) const SEND_QUEUE: u64 = 4 * 1024 * 1024;

/// A yamux frame's header: what each stream write adds to the connection's bytes.
const FRAME_HEADER: u64 = 12;

/// The yamux upgrade, its connections' send queue bounded (see the module).
#[derive(Clone)]
pub(crate) struct Bounded(pub(crate) libp2p::yamux::Config);

impl UpgradeInfo for Bounded {
    type Info = <libp2p::yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <libp2p::yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl Bounded {
    fn wrap<C>(
        io: C,
        upgrade: impl FnOnce(Counted<C>) -> Result<libp2p::yamux::Muxer<Counted<C>>, io::Error>,
    ) -> futures::future::Ready<Result<Muxer<C>, io::Error>> {
        let queue = Arc::new(Queue::default());
        let io = Counted {
            io,
            queue: queue.clone(),
        };
        futures::future::ready(upgrade(io).map(|inner| Muxer { inner, queue }))
    }
}

impl<C> InboundConnectionUpgrade<C> for Bounded
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        Self::wrap(io, |io| self.0.upgrade_inbound(io, info).into_inner())
    }
}

impl<C> OutboundConnectionUpgrade<C> for Bounded
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        Self::wrap(io, |io| self.0.upgrade_outbound(io, info).into_inner())
    }
}

/// One connection's count of bytes handed and sent, and the writes waiting for room.
#[derive(Default)]
struct Queue(Mutex<State>);

#[derive(Default)]
struct State {
    /// Bytes streams have written into yamux, frame headers included.
    handed: u64,
    /// Bytes yamux has written into the socket.
    sent: u64,
    /// The socket failed, closed or is gone: nothing waits any more.
    closed: bool,
    waiting: Vec<Waker>,
}

impl State {
    fn held(&self) -> u64 {
        self.handed.saturating_sub(self.sent)
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready when a stream may write: less than [`SEND_QUEUE`] held, or the connection is
    /// over (the write then fails as yamux says).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.closed || s.held() < SEND_QUEUE {
            return Poll::Ready(());
        }
        if !s.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            s.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn handed(&self, n: u64) {
        self.lock().handed += n;
    }

    fn sent(&self, n: u64) {
        let waiting = {
            let mut s = self.lock();
            s.sent += n;
            if s.waiting.is_empty() || s.held() >= SEND_QUEUE / 2 {
                return;
            }
            std::mem::take(&mut s.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    fn close(&self) {
        let waiting = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// The connection's socket, as yamux sees it: counts what yamux writes into it.
pub(crate) struct Counted<C> {
    io: C,
    queue: Arc<Queue>,
}

impl<C> Counted<C> {
    fn count(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &written {
            Poll::Ready(Ok(n)) => self.queue.sent(*n as u64),
            Poll::Ready(Err(_)) => self.queue.close(),
            Poll::Pending => {}
        }
        written
    }
}

impl<C> Drop for Counted<C> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Counted<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counted<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let closed = Pin::new(&mut self.io).poll_close(cx);
        if closed.is_ready() {
            self.queue.close();
        }
        closed
    }
}

/// A yamux connection whose streams wait while its socket is [`SEND_QUEUE`] behind.
pub(crate) struct Muxer<C> {
    inner: libp2p::yamux::Muxer<Counted<C>>,
    queue: Arc<Queue>,
}

impl<C> Muxer<C> {
    fn stream(&self, inner: libp2p::yamux::Stream) -> Substream {
        Substream {
            inner,
            queue: self.queue.clone(),
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Substream = Substream;
    type Error = libp2p::yamux::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Substream, Self::Error>> {
        let this = self.get_mut();
        let s = ready!(this.inner.poll_inbound_unpin(cx))?;
        Poll::Ready(Ok(this.stream(s)))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Substream, Self::Error>> {
        let this = self.get_mut();
        let s = ready!(this.inner.poll_outbound_unpin(cx))?;
        Poll::Ready(Ok(this.stream(s)))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_close_unpin(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        self.get_mut().inner.poll_unpin(cx)
    }
}

/// A yamux stream whose writes wait for room in its connection's send queue.
#[derive(Debug)]
pub(crate) struct Substream {
    inner: libp2p::yamux::Stream,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Queue")
            .field("held", &s.held())
            .field("closed", &s.closed)
            .finish()
    }
}

impl AsyncRead for Substream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Substream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.queue.poll_room(cx));
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.queue.handed(n as u64 + FRAME_HEADER);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Not counted: a close writes a frame only when the stream is still open (yamux says
    /// nothing of which), and a count that errs high would block the connection for good.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use futures::{AsyncWriteExt as _, FutureExt as _};
    use tokio_util::compat::TokioAsyncReadCompatExt as _;

    const PIPE: usize = 64 * 1024;
    const STREAMS: usize = 32;
    /// What yamux lets a stream send before its peer grants more: its initial window.
    const WINDOW: usize = 256 * 1024;

    /// Writes on every stream until none can take more without the socket moving;
    /// returns the bytes written.
    fn write_all_that_fits(streams: &mut [Substream]) -> usize {
        let chunk = vec![7u8; 16 * 1024];
        let mut written = 0;
        loop {
            let mut moved = false;
            for s in streams.iter_mut() {
                if let Some(Ok(n)) = s.write(&chunk).now_or_never() {
                    written += n;
                    moved |= n > 0;
                }
            }
            if !moved {
                return written;
            }
        }
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_stops_the_writes_of_every_stream_at_the_bound() {
        let (ours, mut theirs) = tokio::io::duplex(PIPE);
        let muxer = Bounded(crate::yamux_config())
            .upgrade_outbound(ours.compat(), "/yamux/1.0.0")
            .await
            .unwrap();
        let mut muxer = Box::pin(muxer);
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let s = futures::future::poll_fn(|cx| muxer.as_mut().poll_outbound(cx))
                .await
                .unwrap();
            streams.push(s);
        }
        // The connection runs beside the writers, as the swarm's connection task does.
        let driver = tokio::spawn(async move {
            let _ = futures::future::poll_fn(|cx| muxer.as_mut().poll(cx)).await;
            futures::future::pending::<()>().await;
        });
        // Let the connection take what it will.
        let mut written = 0;
        for _ in 0..50 {
            written += write_all_that_fits(&mut streams);
            tokio::task::yield_now().await;
        }
        let unbounded = STREAMS * WINDOW;
        let bound = SEND_QUEUE as usize + PIPE + STREAMS * 16 * 1024;
        assert!(
            written <= bound,
            "{written} bytes were taken with the peer reading nothing (bound {bound}; \
             the windows alone allow {unbounded})"
        );
        assert!(
            written >= SEND_QUEUE as usize - STREAMS * 16 * 1024,
            "only {written} bytes were taken before the bound"
        );
        // A write waiting for room waits while the peer reads nothing, and is woken once
        // the peer has read enough for half the queue to be free.
        let mut waiting = streams.pop().unwrap();
        let writer = tokio::spawn(async move {
            let n = waiting.write(&[7u8; 16 * 1024]).await;
            (n, waiting)
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "a write went on with the queue full");
        let mut sink = vec![0u8; 3 * 1024 * 1024];
        tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut sink)
            .await
            .unwrap();
        let (n, waiting) = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .expect("the waiting write was not woken once the peer read 3 MiB")
            .unwrap();
        assert!(n.unwrap() > 0);
        streams.push(waiting);
        // A connection that is gone leaves no writer waiting: its writes fail.
        while write_all_that_fits(&mut streams) > 0 {}
        driver.abort();
        let _ = driver.await;
        let write = streams[0].write(b"more").now_or_never();
        assert!(
            matches!(write, Some(Err(_))),
            "a write on a closed connection gave {write:?}"
        );
        drop(theirs);
    }
}
