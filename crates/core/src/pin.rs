//! Pins and eviction: a pinned root keeps its whole DAG; every other block is a cache that
//! [`evict`] may delete to bring a store under a byte budget.
//!
//! Where the set of pinned roots is kept is up to the store's owner (the browser node keeps
//! it in IndexedDB beside the blocks); this module decides what the pins protect and deletes
//! the rest. A block shared by a pinned DAG and an unpinned one is protected.

use std::collections::HashSet;

use crate::cid::{Cid, Codec};
use crate::store::{BlockStore, Result};
use crate::unixfs::pb::Node;

/// Every block reachable from `roots` that the store holds: the roots themselves and,
/// through dag-pb links, their descendants. Blocks the store lacks are not followed (a pin
/// of a DAG that is not complete protects what is there).
pub async fn protected<S: BlockStore>(store: &S, roots: &[Cid]) -> Result<HashSet<Cid>> {
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut queue: Vec<Cid> = roots.to_vec();
    while let Some(cid) = queue.pop() {
        if !seen.insert(cid) {
            continue;
        }
        if cid.codec() != Codec::DagPb.code() {
            continue;
        }
        let Some(block) = store.get(&cid).await? else {
            continue;
        };
        // A block that does not decode has no links to follow; it is still kept.
        if let Ok(node) = Node::decode(block.data()) {
            queue.extend(
                node.links
                    .iter()
                    .map(|l| l.cid)
                    .filter(|c| !seen.contains(c)),
            );
        }
    }
    Ok(seen)
}

/// What [`evict`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Blocks deleted.
    pub blocks: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// Deletes blocks that no root in `keep` reaches until the store holds at most
/// `target_bytes` (or nothing unprotected is left). `keep` gives the pinned roots plus any
/// root the caller is using right now; it is read once writers are held off, so a root
/// pinned just before counts. Blocks a live operation holds (an import under way, a fetch:
/// [`crate::live`]) when eviction starts, or comes to hold while it runs, are left alone
/// too: an import pins its root before it lets go of its blocks. Returns what was deleted.
pub async fn evict<S, K>(store: &S, keep: K, target_bytes: u64) -> Result<Evicted>
where
    S: BlockStore,
    K: std::future::Future<Output = Result<Vec<Cid>>>,
{
    let before = store.stat().await?;
    if before.bytes <= target_bytes {
        return Ok(Evicted::default());
    }
    let live = crate::live::Live::global();
    // No batch is written while eviction deletes: a block a writer has just found present
    // stays.
    let _deleting = live.exclusive().await;
    // What live operations hold now, then the roots to keep: an operation that lets go of
    // its blocks after this has pinned its root before, so one of the two protects them.
    let held = live.held();
    let keep = keep.await?;
    let protect = protected(store, &keep).await?;
    let mut deleted = 0u64;
    let mut after: Option<Cid> = None;
    'pages: loop {
        let page = store.list(after.as_ref(), 512).await?;
        let Some(last) = page.last().copied() else {
            break;
        };
        for cid in page.iter().filter(|c| {
            !protect.contains(c) && !held.contains(&crate::live::Key::of(c)) && !live.is_held(c)
        }) {
            if store.delete(cid).await? {
                deleted += 1;
                if store.stat().await?.bytes <= target_bytes {
                    break 'pages;
                }
            }
        }
        after = Some(last);
    }
    let now = store.stat().await?;
    Ok(Evicted {
        blocks: deleted,
        bytes: before.bytes.saturating_sub(now.bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlg;
    use crate::store::Memory;
    use crate::unixfs::{self, Profile};

    async fn add(store: &Memory, bytes: &[u8]) -> Cid {
        unixfs::import(store, bytes, Profile::default(), HashAlg::Sha2_256, |_| {})
            .await
            .unwrap()
            .root
    }

    fn file(len: usize, seed: u8) -> Vec<u8> {
        crate::test_util::pseudo_random(len, u64::from(seed))
    }

    #[tokio::test]
    async fn eviction_keeps_every_block_of_a_pinned_dag_and_frees_the_rest() {
        let store = Memory::new();
        let pinned = add(&store, &file(3 << 20, 1)).await;
        let cache = add(&store, &file(2 << 20, 2)).await;
        let pinned_blocks = protected(&store, &[pinned]).await.unwrap();
        assert_eq!(
            pinned_blocks.len(),
            1 + 12,
            "root and twelve 256 KiB leaves"
        );
        let cache_root_len = store.get(&cache).await.unwrap().unwrap().len() as u64;

        let evicted = evict(&store, async { Ok(vec![pinned]) }, 0).await.unwrap();
        assert_eq!(
            evicted.blocks,
            1 + 8,
            "the unpinned file's root and its eight leaves"
        );
        assert!(!store.has(&cache).await.unwrap());
        for cid in &pinned_blocks {
            assert!(
                store.has(cid).await.unwrap(),
                "{cid} of the pinned DAG is gone"
            );
        }
        let stat = store.stat().await.unwrap();
        assert_eq!(stat.blocks, pinned_blocks.len() as u64);
        assert_eq!(evicted.bytes, (2 << 20) + cache_root_len);
    }

    #[tokio::test]
    async fn eviction_stops_at_the_budget_and_does_nothing_under_it() {
        let store = Memory::new();
        add(&store, &file(4 << 20, 3)).await;
        let full = store.stat().await.unwrap().bytes;
        assert_eq!(
            evict(&store, async { Ok(vec![]) }, full).await.unwrap(),
            Evicted::default()
        );

        let evicted = evict(&store, async { Ok(vec![]) }, full / 2).await.unwrap();
        let now = store.stat().await.unwrap().bytes;
        assert!(now <= full / 2, "{now} bytes left, budget {}", full / 2);
        assert!(now > 0, "it deleted more than it needed to");
        assert_eq!(evicted.bytes, full - now);
    }

    #[tokio::test]
    async fn a_block_shared_with_a_pinned_dag_is_kept() {
        let store = Memory::new();
        // The same first MiB in both files: their first four leaves are the same blocks.
        let a = file(2 << 20, 5);
        let mut b = a[..1 << 20].to_vec();
        b.extend(file(1 << 20, 6));
        let pinned = add(&store, &a).await;
        add(&store, &b).await;
        evict(&store, async { Ok(vec![pinned]) }, 0).await.unwrap();
        let kept = protected(&store, &[pinned]).await.unwrap();
        assert_eq!(kept.len(), 1 + 8);
        assert_eq!(store.stat().await.unwrap().blocks, 9);
    }
}
