use std::collections::BTreeMap;
use std::future::{Future, ready};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{BlockStore, Error, Result, Stat};
use crate::CondSend;
use crate::block::Block;
use crate::cid::Cid;

/// An in-memory block store with an optional byte quota.
#[derive(Debug, Default)]
pub struct Memory {
    inner: Mutex<Inner>,
    quota: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    // Keyed by CID bytes so `list` has a stable order shared with other backends.
    blocks: BTreeMap<Vec<u8>, Block>,
    bytes: u64,
}

impl Memory {
    /// An empty store without a quota.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that refuses writes past `quota` bytes.
    pub fn with_quota(quota: u64) -> Self {
        Self {
            quota: Some(quota),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the map consistent (every update is
        // a single insert/remove plus a counter), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put_all(&self, blocks: Vec<Block>) -> Result<usize> {
        let mut inner = self.lock();
        let mut needed = 0u64;
        let mut seen = std::collections::HashSet::new();
        for b in &blocks {
            let key = b.cid().to_bytes();
            if !inner.blocks.contains_key(&key) && seen.insert(key) {
                needed += b.len() as u64;
            }
        }
        if let Some(quota) = self.quota
            && inner.bytes + needed > quota
        {
            return Err(Error::Full {
                needed,
                used: inner.bytes,
                quota,
            });
        }
        let mut new = 0;
        for b in blocks {
            let key = b.cid().to_bytes();
            if !inner.blocks.contains_key(&key) {
                inner.bytes += b.len() as u64;
                inner.blocks.insert(key, b);
                new += 1;
            }
        }
        Ok(new)
    }
}

impl BlockStore for Memory {
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + CondSend {
        ready(Ok(self.lock().blocks.get(&cid.to_bytes()).cloned()))
    }

    fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + CondSend {
        ready(self.put_all(vec![block]).map(|n| n == 1))
    }

    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<usize>> + CondSend {
        ready(self.put_all(blocks))
    }

    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
        ready(Ok(self.lock().blocks.contains_key(&cid.to_bytes())))
    }

    fn size_hint(&self, cid: &Cid) -> Option<usize> {
        self.lock().blocks.get(&cid.to_bytes()).map(Block::len)
    }

    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + CondSend {
        let mut inner = self.lock();
        let removed = inner.blocks.remove(&cid.to_bytes());
        if let Some(b) = &removed {
            inner.bytes -= b.len() as u64;
        }
        ready(Ok(removed.is_some()))
    }

    fn list(
        &self,
        after: Option<&Cid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Cid>>> + CondSend {
        use std::ops::Bound;
        let inner = self.lock();
        let start = match after {
            Some(c) => Bound::Excluded(c.to_bytes()),
            None => Bound::Unbounded,
        };
        let out = inner
            .blocks
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, b)| *b.cid())
            .collect();
        ready(Ok(out))
    }

    fn stat(&self) -> impl Future<Output = Result<Stat>> + CondSend {
        let inner = self.lock();
        ready(Ok(Stat {
            blocks: inner.blocks.len() as u64,
            bytes: inner.bytes,
            quota: self.quota,
        }))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_suite() {
        super::super::suite::run(|| async { super::Memory::new() }).await;
    }

    #[tokio::test]
    async fn memory_store_quota_passes_the_quota_suite() {
        super::super::suite::run_quota(|quota| async move { super::Memory::with_quota(quota) })
            .await;
    }
}
