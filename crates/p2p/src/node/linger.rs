//! Closing a connection without losing what the peer has not read yet.
//!
//! A TCP socket closed while bytes from its peer sit unread in it sends a reset, and a
//! reset throws away what this side had written but the peer had not yet received. A
//! closing yamux connection writes its last frames, says goodbye and closes its socket —
//! while the peer is still reading those frames and sending window updates back. So a
//! `/cas` answer written in full could be cut at its end when a relay stopped (one run in
//! eight on loopback). [`Lingering`] closes as careful servers do: it shuts down the write
//! side (the peer reads everything, then sees the end) and then reads and drops what the
//! peer still sends until the peer closes too, for at most [`LINGER`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use futures_timer::Delay;

/// How long a closing connection waits for its peer to close too.
pub(super) const LINGER: Duration = Duration::from_secs(3);

/// Reads drained per poll while lingering, before yielding to other tasks.
const READS_PER_POLL: usize = 64;

/// A raw connection that lingers when closed (see the module).
pub(super) struct Lingering<T> {
    io: T,
    /// Set once the write side is shut: the end of lingering.
    until: Option<Delay>,
}

impl<T> Lingering<T> {
    /// Wraps `io`.
    pub(super) fn new(io: T) -> Self {
        Self { io, until: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.until.is_none() {
            std::task::ready!(Pin::new(&mut this.io).poll_close(cx))?;
            this.until = Some(Delay::new(LINGER));
        }
        let mut sink = [0u8; 4096];
        for _ in 0..READS_PER_POLL {
            if let Some(until) = &mut this.until
                && until.poll_unpin(cx).is_ready()
            {
                tracing::debug!("closing: the peer did not close in time");
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.io).poll_read(cx, &mut sink) {
                // The peer closed (or the connection failed): nothing more can be lost.
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::compat::TokioAsyncReadCompatExt as _;

    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, dialed.unwrap())
    }

    /// The case that lost answers: the closing side has written a lot, the peer is still
    /// reading it and writing back while it does. Everything written arrives, then the end.
    #[tokio::test]
    async fn a_peer_still_reading_and_writing_gets_everything_written() {
        const WRITTEN: usize = 8 << 20;
        let (server, client) = tcp_pair().await;
        let mut closing = Lingering::new(server.compat());
        let mut peer = client.compat();
        let serve = async move {
            closing.write_all(&vec![1u8; WRITTEN]).await.unwrap();
            closing.close().await.unwrap();
            // Closed for good, as a connection task does once the muxer has closed.
            drop(closing);
        };
        let read = async {
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // Acknowledgements, as yamux window updates are, while reading.
                let _ = peer.write_all(&[0u8; 12]).await;
                match peer.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("the read failed after {got} bytes: {e}"),
                }
                tokio::task::yield_now().await;
            }
            let _ = peer.close().await;
            got
        };
        let ((), got) = tokio::join!(serve, read);
        assert_eq!(got, WRITTEN);
    }

    /// A peer that never closes holds the closing side for `LINGER`, then no longer.
    #[tokio::test]
    async fn a_peer_that_never_closes_is_given_up_on() {
        let (server, _client) = tcp_pair().await;
        let mut closing = Lingering::new(server.compat());
        let started = std::time::Instant::now();
        closing.close().await.unwrap();
        assert!(started.elapsed() >= LINGER);
    }
}
