use std::future::{Future, ready};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{BlockStore, Result, Stat};
use crate::CondSend;
use crate::block::Block;
use crate::cid::Cid;

/// A store that keeps nothing: puts are counted and forgotten. For computing a CID without
/// storing (`add --only-hash`) and for measuring the importer alone.
#[derive(Debug, Default)]
pub struct Null {
    blocks: AtomicU64,
    bytes: AtomicU64,
}

impl Null {
    /// A new discarding store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BlockStore for Null {
    fn get(&self, _cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + CondSend {
        ready(Ok(None))
    }
    fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + CondSend {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
        ready(Ok(true))
    }
    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<usize>> + CondSend {
        let n = blocks.len();
        let bytes: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        self.blocks.fetch_add(n as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        ready(Ok(n))
    }
    fn has(&self, _cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
        ready(Ok(false))
    }
    fn delete(&self, _cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
        ready(Ok(false))
    }
    fn list(
        &self,
        _after: Option<&Cid>,
        _limit: usize,
    ) -> impl Future<Output = Result<Vec<Cid>>> + CondSend {
        ready(Ok(Vec::new()))
    }
    /// Counts of what was put (and discarded).
    fn stat(&self) -> impl Future<Output = Result<Stat>> + CondSend {
        ready(Ok(Stat {
            blocks: self.blocks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            quota: None,
        }))
    }
}
