//! The source chain: where blocks come from.
//!
//! A [`ContentSource`] retrieves a verified [`Block`] for a CID. A [`Chain`] tries sources in
//! order (local store → peers → IPFS → gateway, any subset), writes blocks found further down
//! back to the local store, applies a timeout per source and the request's deadline and
//! cancellation from the [`Context`], and reports which source served each block and how long
//! each step took. [`PeerSource`] races peers, connected or found through content routing,
//! over whatever protocol a network speaks (`/cas` peers and IPFS peers over bitswap are the
//! same design: [`FindPeers`] and [`AskPeer`]); [`Gateway`] asks an IPFS trustless gateway
//! over a small [`HttpClient`] trait.

mod chain;
mod gateway;
mod peers;
pub mod routing;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;

pub use chain::{Attempt, Chain, ChainError, Retrieval, Step, WriteBack};
pub use gateway::{Gateway, HttpClient, HttpError, HttpResponse, RAW_BLOCK};
pub use peers::{
    AskPeer, FindPeers, LookupError, Peer, PeerError, PeerSource, ROOT_LOOKUPS, RaceConfig, Verify,
};

use crate::block::Block;
use crate::cid::Cid;
use crate::error::Reason;
use crate::rt::Instant;
use crate::store::BlockStore;
use crate::{CondSend, CondSync};

/// Which link of the chain a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// The node's own store.
    Local,
    /// Connected cairn peers.
    Peers,
    /// The IPFS network (bitswap).
    Ipfs,
    /// An HTTP trustless gateway.
    Gateway,
}

impl SourceKind {
    /// All kinds, in chain order.
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Local,
        SourceKind::Peers,
        SourceKind::Ipfs,
        SourceKind::Gateway,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Local => "local",
            SourceKind::Peers => "peers",
            SourceKind::Ipfs => "ipfs",
            SourceKind::Gateway => "gateway",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a single source answered when it had no block to give.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceError {
    /// The source does not have the block.
    #[error("not found")]
    NotFound,
    /// The source took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The request was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The source sent bytes that do not match the CID; they were discarded.
    #[error("sent invalid data: {0}")]
    Invalid(#[source] Reason),
    /// The source could not be reached or failed.
    #[error("unavailable: {0}")]
    Unavailable(#[source] Reason),
    /// Content routing found no provider that could be asked.
    #[error("no provider of {key}: {lookup}")]
    NoProvider {
        /// What was looked up (boxed: CIDs are large and errors travel in `Result`s).
        key: Box<Cid>,
        /// What the lookup found and each routing system said.
        lookup: LookupError,
    },
    /// Several sub-sources (peers) were asked and all failed.
    #[error("{}", list(.0))]
    AllFailed(Vec<(String, SourceError)>),
}

/// What a failed retrieval comes down to, for callers that act on it (exit codes, the error
/// codes JavaScript sees) rather than read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// Every source answered that it does not have the block (or there were none to ask).
    NotFound,
    /// A source sent bytes that do not match the CID (they were refused), and no other
    /// source served the block.
    InvalidData,
    /// Sources that might have had it could not be reached, failed or timed out.
    Unreachable,
    /// The request's deadline passed.
    Timeout,
    /// The request was cancelled.
    Cancelled,
}

impl SourceError {
    /// What this comes down to: bad bytes over unreachable sources over plain absence.
    pub fn failure(&self) -> Failure {
        match self {
            SourceError::NotFound => Failure::NotFound,
            SourceError::Invalid(_) => Failure::InvalidData,
            SourceError::Unavailable(_) | SourceError::Timeout(_) => Failure::Unreachable,
            SourceError::DeadlineExceeded => Failure::Timeout,
            SourceError::Cancelled => Failure::Cancelled,
            // Only a lookup that was answered can say that nobody has it; one that no
            // routing system answered (the relay went away, say) could not reach them.
            SourceError::NoProvider { lookup, .. } if lookup.found == 0 && lookup.answered > 0 => {
                Failure::NotFound
            }
            SourceError::NoProvider { .. } => Failure::Unreachable,
            SourceError::AllFailed(v) => worst(v.iter().map(|(_, e)| e.failure())),
        }
    }
}

/// The failure that matters most among several sources' (none: not found).
pub(crate) fn worst(failures: impl Iterator<Item = Failure>) -> Failure {
    let rank = |f: Failure| match f {
        Failure::NotFound => 0,
        Failure::Unreachable => 1,
        Failure::Timeout => 2,
        Failure::InvalidData => 3,
        Failure::Cancelled => 4,
    };
    failures
        .max_by_key(|f| rank(*f))
        .unwrap_or(Failure::NotFound)
}

fn list(items: &[(String, SourceError)]) -> String {
    if items.is_empty() {
        return "no candidates".into();
    }
    let parts: Vec<String> = items.iter().map(|(who, e)| format!("{who}: {e}")).collect();
    format!("every source failed ({})", parts.join("; "))
}

/// Something that can give verified blocks.
pub trait ContentSource: CondSync {
    /// Which link of the chain this is.
    fn kind(&self) -> SourceKind;

    /// A name for reports and errors, e.g. `gateway https://ipfs.example`.
    fn name(&self) -> String {
        self.kind().to_string()
    }

    /// Retrieves the block for `cid`. Implementations return only verified blocks.
    fn retrieve(
        &self,
        cid: &Cid,
        ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend;
}

/// A request's deadline and cancellation signal.
#[derive(Debug, Clone, Default)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
}

impl Context {
    /// No deadline, not cancellable.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a deadline `d` from now.
    pub fn with_timeout(self, d: Duration) -> Self {
        self.with_deadline(Instant::now() + d)
    }

    /// With an absolute deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Cancelled when `token`'s [`Canceller`] fires.
    pub fn with_cancel(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether cancellation has been signalled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| matches!(c.0.peek(), Some(Ok(()))))
    }

    /// Resolves when the request is cancelled (never, if it cannot be).
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Runs `fut` under this context and an optional extra `timeout`: cut by cancellation,
    /// by the deadline, or by the timeout, whichever comes first.
    pub async fn run<T>(
        &self,
        timeout: Option<Duration>,
        fut: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        if self.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let remaining = self.remaining();
        if remaining == Some(Duration::ZERO) {
            return Err(SourceError::DeadlineExceeded);
        }
        let (limit, err) = match (remaining, timeout) {
            (Some(r), Some(t)) if t < r => (Some(t), SourceError::Timeout(t)),
            (Some(r), _) => (Some(r), SourceError::DeadlineExceeded),
            (None, Some(t)) => (Some(t), SourceError::Timeout(t)),
            (None, None) => (None, SourceError::DeadlineExceeded),
        };
        let bounded = async {
            match limit {
                Some(l) => crate::rt::timeout(l, fut).await.unwrap_or(Err(err)),
                None => fut.await,
            }
        };
        futures::select_biased! {
            _ = self.cancelled().fuse() => Err(SourceError::Cancelled),
            out = bounded.fuse() => out,
        }
    }
}

/// The receiving side of a cancellation signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct CancelToken(Shared<oneshot::Receiver<()>>);

impl CancelToken {
    async fn cancelled(&self) {
        if self.0.clone().await.is_err() {
            // The canceller was dropped without firing: never cancelled.
            std::future::pending::<()>().await;
        }
    }
}

/// Fires a [`CancelToken`]. Dropping it without calling [`Canceller::cancel`] cancels nothing.
#[derive(Debug)]
pub struct Canceller(oneshot::Sender<()>);

impl Canceller {
    /// Cancels every request carrying the matching token.
    pub fn cancel(self) {
        let _ = self.0.send(());
    }
}

/// A new cancellation pair.
pub fn cancel_pair() -> (Canceller, CancelToken) {
    let (tx, rx) = oneshot::channel();
    (Canceller(tx), CancelToken(rx.shared()))
}

/// The node's own store as a source.
#[derive(Debug, Clone)]
pub struct Local<S>(pub S);

impl<S: BlockStore> ContentSource for Local<S> {
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }

    fn retrieve(
        &self,
        cid: &Cid,
        _ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        let get = self.0.get(cid);
        async move {
            match get.await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(SourceError::NotFound),
                Err(e) => Err(SourceError::Unavailable(Reason::new(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests;
