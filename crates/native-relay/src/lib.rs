#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod node;
pub mod relay;
pub mod routing;
pub mod store;
pub mod webrtc;

use cairn_core::HashAlg;
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Imported, Profile};

/// Imports a file (any `tokio` reader) into `store` as UnixFS; returns the root.
pub async fn add_file<S: BlockStore, R: tokio::io::AsyncRead + Unpin>(
    store: &S,
    reader: R,
    profile: Profile,
    hash: HashAlg,
) -> Result<Imported, unixfs::ImportError> {
    unixfs::import(store, TokioRead(reader), profile, hash, |_| {}).await
}

/// Adapts a tokio reader to `futures::io::AsyncRead`.
struct TokioRead<R>(R);

impl<R: tokio::io::AsyncRead + Unpin> futures::io::AsyncRead for TokioRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match std::pin::Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(rb.filled().len())),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
