#![cfg_attr(wasm_browser, allow(clippy::arc_with_non_send_sync))] // nothing is Send in the browser; Arc is for sharing, not threads

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{ContentSource, Context, Local, SourceError, SourceKind};
use crate::block::Block;
use crate::cid::Cid;
use crate::rt::Instant;
use crate::store::{self, BlockStore};
use crate::{BoxFuture, CondSync, boxed};

/// One source's part in a retrieval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The source's name.
    pub source: String,
    /// Its kind.
    pub kind: SourceKind,
    /// How long it took.
    pub elapsed: Duration,
    /// `None` if it served the block, else what it answered.
    pub error: Option<SourceError>,
}

/// What happened to a block found beyond the local store.
#[derive(Debug, Clone)]
pub enum WriteBack {
    /// No write-back: the block came from the local store, or the chain has none.
    NotNeeded,
    /// Written to the local store.
    Stored,
    /// The local store refused it (for example, it is full).
    Failed(store::Error),
}

impl PartialEq for WriteBack {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (WriteBack::NotNeeded, WriteBack::NotNeeded)
            | (WriteBack::Stored, WriteBack::Stored) => true,
            (WriteBack::Failed(a), WriteBack::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for WriteBack {}

/// A successful retrieval: the block and how it was found.
#[derive(Debug, Clone)]
pub struct Retrieval {
    /// The verified block.
    pub block: Block,
    /// The kind of source that served it.
    pub served_by: SourceKind,
    /// Every source tried, in order; the last one served the block.
    pub steps: Vec<Step>,
    /// What happened to the block in the local store.
    pub write_back: WriteBack,
}

/// One failed attempt, for [`ChainError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The source's name.
    pub source: String,
    /// What it answered.
    pub error: SourceError,
}

/// Every source failed (or the request was cancelled or ran out of time).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainError {
    /// No source had the block.
    #[error("{cid} could not be retrieved from any source: {}", list(.attempts))]
    NotFound {
        /// The CID.
        cid: Cid,
        /// What each source answered.
        attempts: Vec<Attempt>,
    },
    /// The request was cancelled.
    #[error("retrieving {cid} was cancelled")]
    Cancelled {
        /// The CID.
        cid: Cid,
    },
    /// The deadline passed.
    #[error("retrieving {cid} ran out of time: {}", list(.attempts))]
    DeadlineExceeded {
        /// The CID.
        cid: Cid,
        /// What each source answered before time ran out.
        attempts: Vec<Attempt>,
    },
}

impl ChainError {
    /// What the failure comes down to (see [`super::Failure`]).
    pub fn failure(&self) -> super::Failure {
        match self {
            ChainError::Cancelled { .. } => super::Failure::Cancelled,
            ChainError::DeadlineExceeded { .. } => super::Failure::Timeout,
            ChainError::NotFound { attempts, .. } => {
                super::worst(attempts.iter().map(|a| a.error.failure()))
            }
        }
    }

    /// What each source answered.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            ChainError::NotFound { attempts, .. }
            | ChainError::DeadlineExceeded { attempts, .. } => attempts,
            ChainError::Cancelled { .. } => &[],
        }
    }
}

fn list(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no sources are configured".into();
    }
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.source, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

trait DynSource: CondSync {
    fn kind(&self) -> SourceKind;
    fn retrieve_boxed<'a>(
        &'a self,
        cid: &'a Cid,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Block, SourceError>>;
}

impl<T: ContentSource> DynSource for T {
    fn kind(&self) -> SourceKind {
        ContentSource::kind(self)
    }
    fn retrieve_boxed<'a>(
        &'a self,
        cid: &'a Cid,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Block, SourceError>> {
        boxed(self.retrieve(cid, ctx))
    }
}

trait DynStore: CondSync {
    fn put_boxed(&self, block: Block) -> BoxFuture<'_, store::Result<bool>>;
}

impl<S: BlockStore> DynStore for S {
    fn put_boxed(&self, block: Block) -> BoxFuture<'_, store::Result<bool>> {
        boxed(self.put(block))
    }
}

struct Entry {
    source: Arc<dyn DynSource>,
    name: String,
    timeout: Option<Duration>,
}

/// Sources tried in order until one gives a verified block.
#[derive(Default, Clone)]
pub struct Chain {
    entries: Vec<Arc<Entry>>,
    write_back: Option<Arc<dyn DynStore>>,
    /// A write-back has failed (reported once).
    write_back_failed: Arc<AtomicBool>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field(
                "sources",
                &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .field("write_back", &self.write_back.is_some())
            .finish()
    }
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the local store as the first source and the target of write-back.
    pub fn local<S: BlockStore + Clone + 'static>(mut self, store: S) -> Self {
        let entry = Arc::new(Entry {
            name: "local".into(),
            source: Arc::new(Local(store.clone())),
            timeout: None,
        });
        self.entries.insert(0, entry);
        self.write_back = Some(Arc::new(store));
        self
    }

    /// Appends a source with its own timeout (`None`: only the request's deadline applies).
    pub fn source<T: ContentSource + 'static>(mut self, src: T, timeout: Option<Duration>) -> Self {
        let name = ContentSource::name(&src);
        self.entries.push(Arc::new(Entry {
            source: Arc::new(src),
            name,
            timeout,
        }));
        self
    }

    /// The chain with only the sources of `kinds`, in that order (a transfer's preferred
    /// sources); blocks found are still written back to the local store.
    pub fn only(&self, kinds: &[SourceKind]) -> Chain {
        let mut entries = Vec::new();
        for k in kinds {
            entries.extend(
                self.entries
                    .iter()
                    .filter(|e| e.source.kind() == *k && !entries.iter().any(|x| Arc::ptr_eq(x, e)))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        Chain {
            entries,
            write_back: self.write_back.clone(),
            write_back_failed: self.write_back_failed.clone(),
        }
    }

    /// The sources' names, in order.
    pub fn sources(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Tries each source in turn; the first verified block wins and, when it came from beyond
    /// the local store, is written back.
    pub async fn retrieve_reported(
        &self,
        cid: &Cid,
        ctx: &Context,
    ) -> Result<Retrieval, ChainError> {
        let mut steps = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let started = Instant::now();
            let out = ctx
                .run(entry.timeout, entry.source.retrieve_boxed(cid, ctx))
                .await
                .and_then(|b| {
                    // Defence in depth: a source must verify, but never trust that it did.
                    if b.cid() == cid {
                        Ok(b)
                    } else {
                        Block::new(*cid, b.data().clone())
                            .map_err(|e| SourceError::Invalid(crate::error::Reason::new(e)))
                    }
                });
            let elapsed = started.elapsed();
            match out {
                Ok(block) => {
                    steps.push(Step {
                        source: entry.name.clone(),
                        kind: entry.source.kind(),
                        elapsed,
                        error: None,
                    });
                    let kind = entry.source.kind();
                    let write_back = match (&self.write_back, kind) {
                        (Some(store), k) if k != SourceKind::Local => {
                            match store.put_boxed(block.clone()).await {
                                Ok(_) => WriteBack::Stored,
                                Err(e) => {
                                    // Said once per chain: the block is still returned.
                                    if !self.write_back_failed.swap(true, Ordering::Relaxed) {
                                        tracing::warn!(%cid, error = %e, "fetched blocks cannot be kept in the local store");
                                    }
                                    WriteBack::Failed(e)
                                }
                            }
                        }
                        _ => WriteBack::NotNeeded,
                    };
                    return Ok(Retrieval {
                        block,
                        served_by: kind,
                        steps,
                        write_back,
                    });
                }
                Err(SourceError::Cancelled) => return Err(ChainError::Cancelled { cid: *cid }),
                Err(error) => {
                    let stop = error == SourceError::DeadlineExceeded;
                    steps.push(Step {
                        source: entry.name.clone(),
                        kind: entry.source.kind(),
                        elapsed,
                        error: Some(error),
                    });
                    if stop {
                        break;
                    }
                }
            }
        }
        let attempts: Vec<Attempt> = steps
            .into_iter()
            .filter_map(|s| {
                s.error.map(|error| Attempt {
                    source: s.source,
                    error,
                })
            })
            .collect();
        if attempts
            .iter()
            .any(|a| a.error == SourceError::DeadlineExceeded)
        {
            Err(ChainError::DeadlineExceeded {
                cid: *cid,
                attempts,
            })
        } else {
            Err(ChainError::NotFound {
                cid: *cid,
                attempts,
            })
        }
    }
}

impl ContentSource for Chain {
    fn kind(&self) -> SourceKind {
        self.entries
            .last()
            .map_or(SourceKind::Local, |e| e.source.kind())
    }

    fn name(&self) -> String {
        format!("chain [{}]", self.sources().join(" → "))
    }

    async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        match self.retrieve_reported(cid, ctx).await {
            Ok(r) => Ok(r.block),
            Err(ChainError::Cancelled { .. }) => Err(SourceError::Cancelled),
            Err(ChainError::DeadlineExceeded { .. }) => Err(SourceError::DeadlineExceeded),
            Err(ChainError::NotFound { attempts, .. }) => Err(SourceError::AllFailed(
                attempts.into_iter().map(|a| (a.source, a.error)).collect(),
            )),
        }
    }
}
