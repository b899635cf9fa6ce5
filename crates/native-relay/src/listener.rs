//! The HTTP listener: TCP connections that are cut when the client stops reading.
//!
//! hyper writes a response as fast as the client reads it and holds what it could not write
//! yet. A client that stops reading would hold that (and the body's next chunk, and the
//! gateway's answer bytes) for as long as it keeps the connection open. Each connection
//! here fails its write once nothing could be written for the stall timeout; hyper then
//! drops the connection and everything it held, and the client is counted as cut
//! (`cairn_askers_cut_total{path="http"}`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use cairn_p2p::budget::{self, Budget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The listener.
#[derive(Debug)]
pub struct Watched {
    inner: TcpListener,
    budget: Budget,
}

impl Watched {
    /// Accepts on `inner`; cut clients are counted in `budget`, whose stall timeout applies.
    pub fn new(inner: TcpListener, budget: Budget) -> Self {
        Self { inner, budget }
    }
}

impl axum::serve::Listener for Watched {
    type Io = WatchedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let io = WatchedIo {
            inner: stream,
            stall: self.budget.caps().stall_timeout,
            deadline: None,
            budget: self.budget.clone(),
            client: addr,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, for handlers (`ConnectInfo<Client>`).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub SocketAddr);

impl Connected<IncomingStream<'_, Watched>> for Client {
    fn connect_info(stream: IncomingStream<'_, Watched>) -> Self {
        Client(*stream.remote_addr())
    }
}

/// A connection whose writes fail once they have made no progress for the stall timeout.
#[derive(Debug)]
pub struct WatchedIo {
    inner: TcpStream,
    stall: Duration,
    /// Set while a write is pending: when it fires, the client is cut.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    budget: Budget,
    client: SocketAddr,
}

impl WatchedIo {
    /// Passes a write's outcome through, arming the stall timer while it is pending.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match deadline.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        self.deadline = None;
                        self.budget.record_cut(self.client.ip(), budget::HTTP);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client read nothing for {stall:?}"),
                        )))
                    }
                }
            }
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
