//! The browser node's store: IndexedDB (kept across reloads) or memory, with its pins, and
//! the roots in use by running calls (which eviction keeps).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use cairn_core::block::Block;
use cairn_core::cid::Cid;
use cairn_core::store::{self, BlockStore, Memory, Stat};

use crate::idb::IdbStore;

/// The node's store.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Memory(Arc<Memory>, Rc<RefCell<Vec<Cid>>>),
    Idb(IdbStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s, _) => $e,
            Store::Idb($s) => $e,
        }
    };
}

impl BlockStore for Store {
    async fn get(&self, cid: &Cid) -> store::Result<Option<Block>> {
        each!(self, s => s.get(cid).await)
    }
    async fn put(&self, block: Block) -> store::Result<bool> {
        each!(self, s => s.put(block).await)
    }
    async fn put_many(&self, blocks: Vec<Block>) -> store::Result<usize> {
        each!(self, s => s.put_many(blocks).await)
    }
    async fn has(&self, cid: &Cid) -> store::Result<bool> {
        each!(self, s => s.has(cid).await)
    }
    async fn delete(&self, cid: &Cid) -> store::Result<bool> {
        each!(self, s => s.delete(cid).await)
    }
    async fn list(&self, after: Option<&Cid>, limit: usize) -> store::Result<Vec<Cid>> {
        each!(self, s => s.list(after, limit).await)
    }
    async fn stat(&self) -> store::Result<Stat> {
        each!(self, s => s.stat().await)
    }
}

impl Store {
    /// A store in memory.
    pub(crate) fn memory() -> Self {
        Store::Memory(Arc::new(Memory::new()), Rc::default())
    }

    pub(crate) async fn pins(&self) -> store::Result<Vec<Cid>> {
        match self {
            Store::Memory(_, pins) => Ok(pins.borrow().clone()),
            Store::Idb(s) => s.pins().await,
        }
    }

    pub(crate) async fn set_pinned(&self, root: &Cid, pinned: bool) -> store::Result<bool> {
        match self {
            Store::Memory(_, pins) => {
                let mut pins = pins.borrow_mut();
                let had = pins.contains(root);
                if pinned && !had {
                    pins.push(*root);
                } else if !pinned {
                    pins.retain(|c| c != root);
                }
                Ok(had != pinned)
            }
            Store::Idb(s) => s.set_pinned(root, pinned).await,
        }
    }

    /// Closes the database (so that other tabs can upgrade or delete it).
    pub(crate) fn close(&self) {
        if let Store::Idb(s) = self {
            s.close();
        }
    }
}

/// Roots in use by a running call; eviction keeps their DAGs.
#[derive(Debug, Clone, Default)]
pub(crate) struct InUse(Rc<RefCell<HashMap<Cid, usize>>>);

/// Marks a root in use until dropped.
pub(crate) struct Using(InUse, Cid);

impl InUse {
    pub(crate) fn hold(&self, root: Cid) -> Using {
        *self.0.borrow_mut().entry(root).or_default() += 1;
        Using(self.clone(), root)
    }

    pub(crate) fn roots(&self) -> Vec<Cid> {
        self.0.borrow().keys().copied().collect()
    }
}

impl Drop for Using {
    fn drop(&mut self) {
        let mut map = (self.0).0.borrow_mut();
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}
