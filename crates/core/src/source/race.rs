use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::routing::{Reputations, RoutingStrategy, Scored};
use super::{ContentSource, Context, SourceError, SourceKind};
use crate::block::Block;
use crate::cid::Cid;
use crate::rt::Instant;
use crate::{CondSend, CondSync};

/// A peer's identity as the core sees it: an opaque string (a libp2p peer id in practice).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(Arc<str>);

impl PeerKey {
    /// A key from its text form.
    pub fn new(s: impl AsRef<str>) -> Self {
        Self(Arc::from(s.as_ref()))
    }
    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({})", self.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one peer answered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer does not have the block.
    #[error("not found")]
    NotFound,
    /// The request failed (stream reset, disconnected, protocol error).
    #[error("{0}")]
    Failed(String),
    /// The peer sent data that does not match what was asked for.
    #[error("sent invalid data: {0}")]
    Invalid(String),
}

/// The network side of a [`PeerRace`]: who may be asked, and how to ask one peer.
pub trait PeerClient: CondSync {
    /// The connected peers that could be asked for `cid`.
    fn candidates(&self, cid: &Cid) -> Vec<PeerKey>;

    /// Asks `peer` for the bytes of `cid`. Dropping the future must cancel the request.
    fn fetch(
        &self,
        peer: &PeerKey,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend;

    /// A reputation table the client keeps up to date (with peers' content indexes, say),
    /// which a race over this client then shares. `None`: the race keeps its own.
    fn reputations(&self) -> Option<Reputations> {
        None
    }
}

/// Limits of a race.
#[derive(Debug, Clone, Copy)]
pub struct RaceConfig {
    /// How long one peer may take.
    pub per_peer_timeout: Duration,
    /// How many peers are asked at once; more are asked as earlier ones fail.
    pub max_parallel: usize,
}

impl Default for RaceConfig {
    fn default() -> Self {
        Self {
            per_peer_timeout: Duration::from_secs(10),
            max_parallel: 16,
        }
    }
}

/// Asks candidate peers in parallel: the first verified answer wins and the other requests
/// are dropped (cancelled). A peer that sends wrong bytes is penalised and the race goes on
/// without it; the race fails only when every peer failed.
pub struct PeerRace<C, R = Scored> {
    client: C,
    strategy: R,
    reputations: Reputations,
    config: RaceConfig,
}

impl<C, R> fmt::Debug for PeerRace<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerRace")
            .field("config", &self.config)
            .finish()
    }
}

impl<C: PeerClient> PeerRace<C> {
    /// A race over `client` with the default [`Scored`] strategy.
    pub fn new(client: C) -> Self {
        Self::with_strategy(client, Scored::default())
    }
}

impl<C: PeerClient, R: RoutingStrategy> PeerRace<C, R> {
    /// A race with a custom strategy.
    pub fn with_strategy(client: C, strategy: R) -> Self {
        Self {
            reputations: client.reputations().unwrap_or_default(),
            client,
            strategy,
            config: RaceConfig::default(),
        }
    }

    /// Sets the limits.
    pub fn config(mut self, config: RaceConfig) -> Self {
        self.config = config;
        self
    }

    /// Shares a reputation table (for example with the node that fills in peers' filters).
    pub fn reputations(mut self, reputations: Reputations) -> Self {
        self.reputations = reputations;
        self
    }

    /// The client the race asks.
    pub(crate) fn client(&self) -> &C {
        &self.client
    }

    /// The reputation table this race updates.
    pub fn reputation_table(&self) -> &Reputations {
        &self.reputations
    }

    async fn race(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        self.race_among(cid, ctx, &self.client.candidates(cid))
            .await
    }

    /// Races `candidates` (instead of the client's own) for `cid`, with the same ordering,
    /// penalties and limits.
    pub(crate) async fn race_among(
        &self,
        cid: &Cid,
        ctx: &Context,
        candidates: &[PeerKey],
    ) -> Result<Block, SourceError> {
        let order = self.strategy.order(cid, candidates, &self.reputations);
        if order.is_empty() {
            return Err(SourceError::AllFailed(Vec::new()));
        }
        let mut queue = order.into_iter();
        let mut inflight = FuturesUnordered::new();
        let mut failures = Vec::new();
        let ask = |peer: PeerKey| {
            let timeout = self.config.per_peer_timeout;
            async move {
                let started = Instant::now();
                let out = ctx.run(Some(timeout), async {
                    self.client.fetch(&peer, cid).await.map_err(|e| match e {
                        PeerError::NotFound => SourceError::NotFound,
                        PeerError::Failed(m) => SourceError::Unavailable(m),
                        PeerError::Invalid(m) => SourceError::Invalid(m),
                    })
                });
                let out = out.await;
                (peer, out, started.elapsed())
            }
        };
        for peer in queue.by_ref().take(self.config.max_parallel.max(1)) {
            inflight.push(ask(peer));
        }
        while let Some((peer, out, elapsed)) = inflight.next().await {
            match out.and_then(|bytes| {
                Block::new(*cid, bytes).map_err(|e| SourceError::Invalid(e.to_string()))
            }) {
                Ok(block) => {
                    self.reputations.record_success(&peer, elapsed);
                    // Returning drops `inflight`: every losing request is cancelled.
                    return Ok(block);
                }
                Err(SourceError::Cancelled) => return Err(SourceError::Cancelled),
                Err(e) => {
                    match &e {
                        SourceError::Invalid(_) => self.reputations.record_lie(&peer),
                        SourceError::NotFound => self.reputations.record_miss(&peer),
                        _ => self.reputations.record_failure(&peer),
                    }
                    failures.push((format!("peer {peer}"), e));
                    if let Some(next) = queue.next() {
                        inflight.push(ask(next));
                    }
                }
            }
        }
        if failures
            .iter()
            .all(|(_, e)| *e == SourceError::DeadlineExceeded)
        {
            return Err(SourceError::DeadlineExceeded);
        }
        Err(SourceError::AllFailed(failures))
    }
}

impl<C: PeerClient, R: RoutingStrategy> ContentSource for PeerRace<C, R> {
    fn kind(&self) -> SourceKind {
        SourceKind::Peers
    }

    fn retrieve(
        &self,
        cid: &Cid,
        ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        self.race(cid, ctx)
    }
}
