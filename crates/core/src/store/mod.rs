//! Block stores: the [`BlockStore`] trait, the in-memory backend [`Memory`] and a discarding
//! backend [`Null`] for `--only-hash`.
//!
//! Every backend holds only verified [`Block`]s and runs the same test suite
//! (`store::suite`, behind the `test-suite` feature).

use std::future::Future;
use std::sync::Arc;

use crate::block::Block;
use crate::cid::Cid;
use crate::{CondSend, CondSync};

mod memory;
mod null;
#[cfg(any(test, feature = "test-suite"))]
pub mod overlap;
#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

pub use memory::Memory;
pub use null::Null;

/// Errors from a block store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store would exceed its byte quota.
    #[error(
        "store is full: {needed} more bytes needed, {used} of {quota} bytes used; unpin or delete content, or raise the quota"
    )]
    Full {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// The medium under the store is full (the disk, the browser's quota for the site);
    /// nothing of the write was kept.
    #[error("block store {op} failed: {source}")]
    OutOfSpace {
        /// The operation (put, ...).
        op: &'static str,
        /// What the backend said, and what to do.
        source: crate::error::Reason,
    },
    /// The store found bytes that no longer match their CID (disk corruption).
    #[error("stored bytes for {cid} are corrupt: {source}")]
    Corrupt {
        /// The block.
        cid: Cid,
        /// What is wrong.
        source: crate::error::Reason,
    },
    /// The backend failed (I/O, database).
    #[error("block store {op} failed: {source}")]
    Backend {
        /// The operation (get, put, ...).
        op: &'static str,
        /// What the backend said, and what to do when known.
        source: crate::error::Reason,
    },
}

impl Error {
    /// Whether the write failed for lack of room (the store's quota or the medium's):
    /// freeing space, not retrying, is what helps.
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full { .. } | Error::OutOfSpace { .. })
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// Number of blocks.
    pub blocks: u64,
    /// Sum of the blocks' sizes in bytes.
    pub bytes: u64,
    /// The byte quota, if the store has one.
    pub quota: Option<u64>,
}

/// A store of verified blocks.
///
/// Methods return `impl Future + CondSend`: `Send` natively, not in the browser.
pub trait BlockStore: CondSync {
    /// The block with this CID, if held.
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + CondSend;

    /// Stores a block; `true` if it was not held before.
    fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + CondSend;

    /// Stores blocks in one batch (one transaction where the backend has them); returns how
    /// many were new. A batch that does not fit the quota stores nothing.
    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<usize>> + CondSend;

    /// Whether the block is held.
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend;

    /// Deletes a block; `true` if it was held.
    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend;

    /// Up to `limit` CIDs in the store's order (by CID bytes), starting after `after`.
    fn list(
        &self,
        after: Option<&Cid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Cid>>> + CondSend;

    /// Block and byte counts.
    fn stat(&self) -> impl Future<Output = Result<Stat>> + CondSend;

    /// The size of the block with this CID if the store knows it without reading it (an
    /// index in memory); `None` when it does not know or would have to read. Used to reserve
    /// exactly what an answer will hold before reading the block.
    fn size_hint(&self, cid: &Cid) -> Option<usize> {
        let _ = cid;
        None
    }
}

macro_rules! forward_store {
    ($ty:ty) => {
        impl<S: BlockStore + ?Sized> BlockStore for $ty {
            fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + CondSend {
                (**self).get(cid)
            }
            fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + CondSend {
                (**self).put(block)
            }
            fn put_many(
                &self,
                blocks: Vec<Block>,
            ) -> impl Future<Output = Result<usize>> + CondSend {
                (**self).put_many(blocks)
            }
            fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
                (**self).has(cid)
            }
            fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
                (**self).delete(cid)
            }
            fn list(
                &self,
                after: Option<&Cid>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<Cid>>> + CondSend {
                (**self).list(after, limit)
            }
            fn stat(&self) -> impl Future<Output = Result<Stat>> + CondSend {
                (**self).stat()
            }
            fn size_hint(&self, cid: &Cid) -> Option<usize> {
                (**self).size_hint(cid)
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(&S);
