//! Fetching a whole DAG into a store: a bounded window of parallel block requests through a
//! [`Chain`], progress as it goes, and resumption after an interruption (blocks already in
//! the store are read locally, not fetched again).

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::block::Block;
use crate::cid::{Cid, Codec};
use crate::rt::Instant;
use crate::source::{Chain, ChainError, Context, SourceKind, WriteBack};
use crate::store::{self, BlockStore};
use crate::transfer::rate::Throttle;
use crate::unixfs::pb::Node;

/// Why a DAG fetch stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A block could not be retrieved from any source.
    #[error(transparent)]
    Retrieve(#[from] ChainError),
    /// The local store failed or is full; what was fetched so far is kept for a resume.
    #[error("could not store fetched blocks: {0}")]
    Store(#[from] store::Error),
    /// A dag-pb block could not be decoded.
    #[error("{cid} is not a valid dag-pb block: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// The DAG has more blocks than the limit.
    #[error("the DAG has more than {0} blocks; refusing to walk it")]
    TooLarge(u64),
}

/// Where a fetch stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Blocks done (fetched or found locally).
    pub blocks_done: u64,
    /// Blocks known so far (grows as inner nodes are read).
    pub blocks_known: u64,
    /// Bytes of blocks done.
    pub bytes_done: u64,
    /// Total DAG bytes, from the root's links' cumulative sizes (0 until the root is read).
    pub bytes_total: u64,
    /// Blocks served by each source kind, indexed like [`SourceKind::ALL`]; local counts
    /// blocks that were already in the store.
    pub by_source: [u64; 4],
    /// The last block done and where it came from.
    pub last: Option<(Cid, SourceKind)>,
    /// Blocks served by a source further down the chain after one before it failed (peers
    /// that timed out or were unreachable, say, so the block came from a gateway).
    pub detours: u64,
    /// Why the last such block went further down: the block, who served it, and what each
    /// source before that answered.
    pub last_detour: Option<String>,
}

/// Options for [`fetch`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Blocks requested at once.
    pub window: usize,
    /// Refuse DAGs with more blocks than this.
    pub max_blocks: u64,
}

/// Blocks asked for at once by a fetch or an export: enough to keep a link with 100 ms between
/// peers busy (64 blocks of 256 KiB is 16 MiB in flight, 160 MB/s per round trip of 100 ms).
pub const WINDOW: usize = 64;

impl Default for Options {
    fn default() -> Self {
        Self {
            window: WINDOW,
            max_blocks: 10_000_000,
        }
    }
}

/// What a finished fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Final progress.
    pub progress: Progress,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why `r`'s block came from further down the chain than a source that could have served
/// it (`None`: it came from the first source beyond the local store, or from the store).
fn detour(r: &crate::source::Retrieval) -> Option<String> {
    let failed: Vec<String> = r
        .steps
        .iter()
        .filter(|s| s.kind != SourceKind::Local)
        .filter_map(|s| Some(format!("{}: {}", s.source, s.error.as_ref()?)))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} came from {} after {}",
            r.block.cid(),
            r.served_by,
            failed.join("; ")
        )
    })
}

fn kind_index(k: SourceKind) -> usize {
    SourceKind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// Fetches every block of the DAG under `root` into `store`, through `chain`.
pub async fn fetch<S: BlockStore>(
    chain: &Chain,
    store: &S,
    root: Cid,
    options: Options,
    ctx: &Context,
    on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    fetch_throttled(
        chain,
        store,
        root,
        options,
        &Throttle::none(),
        ctx,
        on_progress,
    )
    .await
}

/// What a block is expected to weigh before it arrives when its link says nothing.
const UNKNOWN_SIZE: u64 = 256 * 1024;

/// [`fetch`] under bandwidth caps: before a block missing from the store is asked for, the
/// bytes its parent's link says it weighs are taken from `throttle` (the difference settled
/// when it arrives), so bytes arrive at no more than the caps allow.
pub async fn fetch_throttled<S: BlockStore>(
    chain: &Chain,
    store: &S,
    root: Cid,
    options: Options,
    throttle: &Throttle,
    ctx: &Context,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let started = Instant::now();
    let mut progress = Progress {
        blocks_known: 1,
        ..Progress::default()
    };
    // Each block to fetch, with what its link says it weighs (a leaf's exact size; an inner
    // node's whole subtree, so capped at the largest block).
    let mut queue = VecDeque::from([(root, None::<u64>)]);
    let mut inflight = FuturesUnordered::new();
    // Every block of the DAG is held from before it is looked for until the fetch ends, so
    // no failing import's clean-up or eviction deletes it meanwhile.
    let mut op = crate::live::Live::global().operation();
    let one = |cid: Cid, size: Option<u64>| async move {
        match store.get(&cid).await {
            Ok(Some(b)) => return Ok::<_, Error>((b, SourceKind::Local, None)),
            Ok(None) => {}
            // The store removed the bad copy (and said so): fetch a good one.
            Err(store::Error::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let expected = size
            .unwrap_or(UNKNOWN_SIZE)
            .min(crate::MAX_BLOCK_SIZE as u64);
        if throttle.is_limited() {
            futures::select_biased! {
                _ = ctx.cancelled().fuse() => {
                    return Err(Error::Retrieve(ChainError::Cancelled { cid }));
                }
                _ = throttle.acquire(expected).fuse() => {}
            }
        }
        let r = match chain.retrieve_reported(&cid, ctx).await {
            Ok(r) => r,
            Err(e) => {
                throttle.settle(expected, 0);
                return Err(e.into());
            }
        };
        let arrived = if r.served_by == SourceKind::Local {
            0
        } else {
            r.block.len() as u64
        };
        throttle.settle(expected, arrived);
        let detour = detour(&r);
        match r.write_back {
            WriteBack::Stored => {}
            WriteBack::Failed(e) => return Err(Error::Store(e)),
            WriteBack::NotNeeded => {
                store.put(r.block.clone()).await?;
            }
        }
        Ok((r.block, r.served_by, detour))
    };
    loop {
        while inflight.len() < options.window.max(1) {
            let Some((cid, size)) = queue.pop_front() else {
                break;
            };
            op.hold(cid);
            inflight.push(one(cid, size));
        }
        let Some(result) = inflight.next().await else {
            break;
        };
        let (block, kind, detour): (Block, SourceKind, Option<String>) = result?;
        if block.codec() == Codec::DagPb {
            let node = Node::decode(block.data()).map_err(|e| Error::Malformed {
                cid: *block.cid(),
                reason: e.to_string(),
            })?;
            if block.cid() == &root {
                progress.bytes_total =
                    block.len() as u64 + node.links.iter().filter_map(|l| l.tsize).sum::<u64>();
            }
            progress.blocks_known += node.links.len() as u64;
            if progress.blocks_known > options.max_blocks {
                return Err(Error::TooLarge(options.max_blocks));
            }
            queue.extend(node.links.iter().map(|l| (l.cid, l.tsize)));
        } else if block.cid() == &root {
            progress.bytes_total = block.len() as u64;
        }
        progress.blocks_done += 1;
        progress.bytes_done += block.len() as u64;
        progress.by_source[kind_index(kind)] += 1;
        progress.last = Some((*block.cid(), kind));
        if detour.is_some() {
            progress.detours += 1;
            progress.last_detour = detour;
        }
        on_progress(&progress);
    }
    Ok(Report {
        progress,
        elapsed: started.elapsed(),
    })
}
