//! WebRTC-direct as cairn uses it: libp2p-webrtc's native transport, with every libp2p
//! message in an SCTP message of its own.
//!
//! The libp2p WebRTC spec caps an encoded message at 16 KiB, and the native reader reads
//! each SCTP message into a 16 KiB buffer. But libp2p-webrtc 0.9.0-alpha.1 buffers encoded
//! messages and sends the buffer as one SCTP message when it passes 16 KiB, so a stream
//! that writes more than about 16 KiB at once sends an SCTP message over the cap, and the
//! reader fails with "Short buffer to be filled" (rust-libp2p issue #4049, still open; see
//! also #6557). Worse, the native reader's buffer is in fact webrtc-rs's 8 KiB default
//! (measured: "Short buffer (size: 8192)"; webrtc-rs issue #823), so a message between 8 and
//! 16 KiB fails too. Here each write carries at most [`MAX_WRITE`] bytes and is flushed
//! before the next, so every SCTP message holds exactly one libp2p message under 8 KiB.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// Payload bytes per libp2p message: 8 KiB less room for the length prefix and protobuf
/// framing (at most 7 bytes).
pub const MAX_WRITE: usize = 8 * 1024 - 16;

/// A WebRTC connection whose streams send one libp2p message per SCTP message.
#[allow(missing_debug_implementations)] // libp2p-webrtc's connection has no Debug
pub struct Connection(pub libp2p_webrtc::tokio::Connection);

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = <libp2p_webrtc::tokio::Connection as StreamMuxer>::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Stream, Self::Error>> {
        Pin::new(&mut self.0).poll_inbound(cx).map_ok(Stream::new)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Stream, Self::Error>> {
        Pin::new(&mut self.0).poll_outbound(cx).map_ok(Stream::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// libp2p-webrtc's stream type (not exported by name).
type Inner = <libp2p_webrtc::tokio::Connection as StreamMuxer>::Substream;

/// A WebRTC stream that flushes each message before it queues the next.
pub struct Stream {
    inner: Inner,
    unflushed: bool,
}

impl Stream {
    fn new(inner: Inner) -> Self {
        Self {
            inner,
            unflushed: false,
        }
    }

    fn poll_flushed(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("webrtc::Stream")
            .field("unflushed", &self.unflushed)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_flushed(cx))?;
        // The inner stream sends one message per call.
        let buf = &buf[..buf.len().min(MAX_WRITE)];
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.unflushed = true;
        // Start sending it now; if that cannot finish yet, the next call finishes it first.
        let _ = self.poll_flushed(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_flushed(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_flushed(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
