#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod listener;
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
    use tokio_util::compat::TokioAsyncReadCompatExt;
    unixfs::import(store, reader.compat(), profile, hash, |_| {}).await
}
