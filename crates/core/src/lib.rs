#![doc = include_str!("../README.md")]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod block;
pub mod cid;
pub mod dag;
pub mod error;
pub mod live;
pub mod pin;
pub mod protobuf;
pub mod rt;
pub mod source;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod transfer;
pub mod unixfs;
pub mod varint;

pub use crate::block::Block;
pub use crate::cid::{Cid, Codec, HashAlg};
pub use crate::error::Reason;

/// `Send` natively; nothing in the browser, where futures and handles are not `Send`.
#[cfg(not(wasm_browser))]
pub trait CondSend: Send {}
#[cfg(not(wasm_browser))]
impl<T: Send> CondSend for T {}
/// `Send` natively; nothing in the browser, where futures and handles are not `Send`.
#[cfg(wasm_browser)]
pub trait CondSend {}
#[cfg(wasm_browser)]
impl<T> CondSend for T {}

/// `Send + Sync` natively; nothing in the browser.
#[cfg(not(wasm_browser))]
pub trait CondSync: Send + Sync {}
#[cfg(not(wasm_browser))]
impl<T: Send + Sync> CondSync for T {}
/// `Send + Sync` natively; nothing in the browser.
#[cfg(wasm_browser)]
pub trait CondSync {}
#[cfg(wasm_browser)]
impl<T> CondSync for T {}

/// The largest block cairn creates, stores or accepts: 2 MiB, the IPFS/bitswap convention.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// A boxed future that is `Send` natively and not in the browser, where nothing is.
#[cfg(not(wasm_browser))]
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;
/// A boxed future that is `Send` natively and not in the browser, where nothing is.
#[cfg(wasm_browser)]
pub type BoxFuture<'a, T> = futures::future::LocalBoxFuture<'a, T>;

/// Boxes a future as a [`BoxFuture`].
#[cfg(not(wasm_browser))]
pub fn boxed<'a, T>(f: impl std::future::Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(f)
}
/// Boxes a future as a [`BoxFuture`].
#[cfg(wasm_browser)]
pub fn boxed<'a, T>(f: impl std::future::Future<Output = T> + 'a) -> BoxFuture<'a, T> {
    Box::pin(f)
}
