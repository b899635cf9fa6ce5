//! What live operations rely on, so that clean-up and eviction never take it from them.
//!
//! An import that fails deletes the blocks it wrote, and eviction deletes blocks no pin
//! needs. Either could delete a block another operation, still running, has just written or
//! found present and counts on: two imports of files that share blocks, an import beside an
//! eviction, a fetch beside a failed import. Every such operation is an [`Operation`] of the
//! process's [`Live`] registry: it *holds* each block it writes or relies on before it looks
//! at the store, and
//! - [`Operation::finish`]: it succeeded, so what it wrote stays; a block another live
//!   operation also holds is marked *kept*, and that operation's clean-up will not delete it;
//! - [`Operation::abandon`]: it failed, so it deletes the blocks it wrote itself, except
//!   those another live operation holds or a finished one kept;
//! - eviction ([`crate::pin::evict`]) skips every block a live operation holds.
//!
//! Deleting and writing exclude each other through a gate: a clean-up or an eviction
//! deletes only while no batch is between its "is it there?" and its write, so a block
//! found present is not deleted under the operation that found it.
//!
//! The registry is per process (one browser tab, one native process); processes that share a
//! store coordinate around it (the disk store's lock file, the browser's Web Locks).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::block::Block;
use crate::cid::Cid;
use crate::store::{BlockStore, Result};

/// A block's key in the registry: 16 bytes of its digest, mixed with the hash's code. An
/// import of 1 TiB holds 4 million blocks until its root is pinned, so the registry keeps
/// 16 bytes a block, not a whole CID (96). Two blocks sharing a key (for a cryptographic
/// hash, never in practice) would only be held together: kept from eviction and clean-up
/// alike, the safe side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u128);

impl Key {
    /// The key of `cid`.
    pub fn of(cid: &Cid) -> Self {
        let digest = cid.hash().digest();
        let mut b = [0u8; 16];
        let n = digest.len().min(16);
        b[..n].copy_from_slice(&digest[..n]);
        Key(u128::from_le_bytes(b) ^ u128::from(cid.hash().code()))
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Live operations holding the block.
    holders: u32,
    /// A finished operation relies on it: no clean-up deletes it.
    kept: bool,
    /// The operation that wrote it failed while others held it: the last of them to fail
    /// deletes it in its place.
    orphaned: Option<Box<Cid>>,
}

/// The registry of what live operations hold.
#[derive(Debug, Default)]
pub struct Live {
    held: Mutex<HashMap<Key, Entry>>,
    gate: tokio::sync::RwLock<()>,
}

static GLOBAL: OnceLock<Live> = OnceLock::new();

impl Live {
    /// A registry of its own (tests; everything else uses [`Live::global`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's registry.
    pub fn global() -> &'static Live {
        GLOBAL.get_or_init(Live::new)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an operation.
    pub fn operation(&self) -> Operation<'_> {
        Operation {
            live: self,
            held: HashSet::new(),
            created: Vec::new(),
            done: false,
        }
    }

    /// Whether a live operation holds `cid`.
    pub fn is_held(&self, cid: &Cid) -> bool {
        self.lock().contains_key(&Key::of(cid))
    }

    /// Blocks held by live operations.
    pub fn held_count(&self) -> usize {
        self.lock().len()
    }

    /// The keys of the blocks live operations hold now (see [`Key::of`]).
    pub fn held(&self) -> HashSet<Key> {
        self.lock().keys().copied().collect()
    }

    /// Waits until no batch is being written, then keeps writers out until the guard is
    /// dropped: for deleting (eviction) without deleting what a writer just found present.
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    fn release(&self, keys: &HashSet<Key>, kept: bool) {
        let mut held = self.lock();
        for key in keys {
            if let Some(e) = held.get_mut(key) {
                e.holders = e.holders.saturating_sub(1);
                if e.holders == 0 {
                    held.remove(key);
                } else if kept {
                    e.kept = true;
                }
            }
        }
    }
}

/// One live operation: what it holds and what it wrote. Dropped without
/// [`finish`](Operation::finish) or [`abandon`](Operation::abandon), it counts as finished
/// (what it wrote stays: the safe side).
#[derive(Debug)]
pub struct Operation<'a> {
    live: &'a Live,
    held: HashSet<Key>,
    /// Blocks that were not in the store when this operation wrote them, in order: each
    /// CID's bytes followed by their length in one byte (so the list reads backwards), 37
    /// bytes a block.
    created: Vec<u8>,
    done: bool,
}

impl Operation<'_> {
    /// Holds `cid`: no clean-up or eviction deletes it while this operation lives.
    pub fn hold(&mut self, cid: Cid) {
        let key = Key::of(&cid);
        if self.held.insert(key) {
            let mut held = self.live.lock();
            let e = held.entry(key).or_default();
            e.holders = e.holders.saturating_add(1);
        }
    }

    fn note_created(&mut self, cid: &Cid) {
        let at = self.created.len();
        if cid.write_bytes(&mut self.created).is_ok() {
            let len = self.created.len() - at;
            match u8::try_from(len) {
                Ok(n) => self.created.push(n),
                // A CID over 255 bytes (no hash cairn writes makes one): not noted, so a
                // failed operation leaves that block; never a list that cannot be read.
                Err(_) => self.created.truncate(at),
            }
        }
    }

    /// What [`created`](Self::created) lists, newest first.
    fn created_newest_first(&self) -> impl Iterator<Item = Cid> + '_ {
        let mut end = self.created.len();
        std::iter::from_fn(move || {
            while end > 0 {
                let len = usize::from(self.created[end - 1]);
                let start = (end - 1).checked_sub(len)?;
                let bytes = &self.created[start..end - 1];
                end = start;
                if let Ok(cid) = Cid::try_from(bytes) {
                    return Some(cid);
                }
            }
            None
        })
    }

    /// Writes `blocks` to `store` as part of this operation: holds each, notes which were
    /// not there yet (this operation's to delete if it fails), and writes them in one batch.
    /// Returns how many were new.
    pub async fn put_many<S: BlockStore + ?Sized>(
        &mut self,
        store: &S,
        blocks: Vec<Block>,
    ) -> Result<usize> {
        if blocks.is_empty() {
            return Ok(0);
        }
        let _writing = self.live.gate.read().await;
        for b in &blocks {
            self.hold(*b.cid());
        }
        let mut fresh = Vec::new();
        for b in &blocks {
            if !store.has(b.cid()).await? {
                fresh.push(*b.cid());
            }
        }
        let n = store.put_many(blocks).await?;
        for cid in &fresh {
            self.note_created(cid);
        }
        Ok(n)
    }

    /// Blocks this operation wrote that were not there before, in the order written.
    pub fn created(&self) -> Vec<Cid> {
        let mut v: Vec<Cid> = self.created_newest_first().collect();
        v.reverse();
        v
    }

    /// The operation succeeded: everything it wrote or relied on stays.
    pub fn finish(mut self) {
        self.done = true;
        self.live.release(&self.held, true);
    }

    /// The operation failed: deletes the blocks it wrote that no other live operation holds
    /// and no finished one kept, newest first, then lets go of the rest. Best effort: a
    /// delete that fails leaves its block (whole) in the store.
    pub async fn abandon<S: BlockStore + ?Sized>(mut self, store: &S) -> usize {
        self.done = true;
        let _deleting = self.live.gate.write().await;
        // What it wrote, newest first, then what failed writers left to it.
        let orphans: Vec<Cid> = {
            let held = self.live.lock();
            self.held
                .iter()
                .filter_map(|k| held.get(k).and_then(|e| e.orphaned.as_deref().copied()))
                .collect()
        };
        let mut deleted = 0;
        for cid in self.created_newest_first().chain(orphans) {
            let only_mine = {
                let mut held = self.live.lock();
                match held.get_mut(&Key::of(&cid)) {
                    Some(e) if e.holders == 1 && !e.kept => true,
                    Some(e) => {
                        // Others hold it: the last of them to fail deletes it.
                        if !e.kept {
                            e.orphaned = Some(Box::new(cid));
                        }
                        false
                    }
                    None => false,
                }
            };
            if only_mine && store.delete(&cid).await.unwrap_or(false) {
                deleted += 1;
            }
        }
        self.live.release(&self.held, false);
        deleted
    }
}

impl Drop for Operation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.live.release(&self.held, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{Codec, HashAlg};
    use crate::store::Memory;

    fn block(i: u8) -> Block {
        Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![i; 100]).unwrap()
    }

    #[tokio::test]
    async fn a_failed_operation_deletes_only_what_nobody_else_relies_on() {
        let live = Live::new();
        let store = Memory::new();
        let (shared, mine, theirs) = (block(1), block(2), block(3));
        let mut a = live.operation();
        let mut b = live.operation();
        a.put_many(&store, vec![shared.clone(), mine.clone()])
            .await
            .unwrap();
        // b finds `shared` present and relies on it.
        b.put_many(&store, vec![shared.clone(), theirs.clone()])
            .await
            .unwrap();
        assert_eq!(a.created(), [*shared.cid(), *mine.cid()]);
        assert_eq!(b.created(), [*theirs.cid()]);
        assert_eq!(a.abandon(&store).await, 1, "only `mine` goes");
        assert!(store.has(shared.cid()).await.unwrap(), "b still needs it");
        assert!(!store.has(mine.cid()).await.unwrap());
        b.finish();
        assert!(store.has(shared.cid()).await.unwrap());
        assert!(store.has(theirs.cid()).await.unwrap());
        assert_eq!(live.held_count(), 0, "nothing is held once both are done");
    }

    #[tokio::test]
    async fn what_a_finished_operation_wrote_is_kept_from_a_failing_one() {
        let live = Live::new();
        let store = Memory::new();
        let shared = block(1);
        let mut a = live.operation();
        let mut b = live.operation();
        // Both write `shared` before either is done, so both think they created it.
        a.put_many(&store, vec![shared.clone()]).await.unwrap();
        b.hold(*shared.cid());
        b.note_created(shared.cid());
        a.finish();
        assert_eq!(b.abandon(&store).await, 0);
        assert!(
            store.has(shared.cid()).await.unwrap(),
            "a's file keeps its block"
        );
    }

    #[tokio::test]
    async fn two_failures_leave_nothing_behind() {
        let live = Live::new();
        let store = Memory::new();
        let shared = block(1);
        let mut a = live.operation();
        let mut b = live.operation();
        a.put_many(&store, vec![shared.clone()]).await.unwrap();
        b.put_many(&store, vec![shared.clone()]).await.unwrap();
        // b found it present; a created it, and leaves it to b when it fails first.
        assert_eq!(a.abandon(&store).await, 0, "b still holds it");
        assert_eq!(b.abandon(&store).await, 1, "b deletes what a left to it");
        assert!(!store.has(shared.cid()).await.unwrap());
        assert_eq!(live.held_count(), 0);
    }

    #[tokio::test]
    async fn what_an_operation_created_reads_back_in_order_whatever_the_cid() {
        let live = Live::new();
        let store = Memory::new();
        let blocks = [
            Block::from_data(Codec::Raw, HashAlg::Sha2_256, b"raw".to_vec()).unwrap(),
            Block::from_data(Codec::DagPb, HashAlg::Sha2_256, vec![0x0a, 0x00]).unwrap(),
            Block::from_data(Codec::Raw, HashAlg::Blake3, b"blake3".to_vec()).unwrap(),
            Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![7; 300]).unwrap(),
        ];
        let cids: Vec<Cid> = blocks.iter().map(|b| *b.cid()).collect();
        let mut a = live.operation();
        a.put_many(&store, blocks[..2].to_vec()).await.unwrap();
        a.put_many(&store, blocks[2..].to_vec()).await.unwrap();
        assert_eq!(a.created(), cids);
        assert_eq!(live.held_count(), 4);
        assert_eq!(a.abandon(&store).await, 4);
        for c in &cids {
            assert!(!store.has(c).await.unwrap(), "{c} deleted");
        }
        assert_eq!(live.held_count(), 0);
    }

    #[tokio::test]
    async fn a_dropped_operation_keeps_what_it_wrote() {
        let live = Live::new();
        let store = Memory::new();
        let (x, y) = (block(1), block(2));
        let mut a = live.operation();
        let mut b = live.operation();
        a.put_many(&store, vec![x.clone(), y.clone()])
            .await
            .unwrap();
        b.put_many(&store, vec![x.clone()]).await.unwrap();
        drop(b);
        assert_eq!(a.abandon(&store).await, 1, "x was kept by b, y goes");
        assert!(store.has(x.cid()).await.unwrap());
    }
}
