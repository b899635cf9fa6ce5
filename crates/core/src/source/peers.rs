//! Asking peers for blocks: one design for every network cairn asks, `/cas` peers and IPFS
//! peers over bitswap alike.
//!
//! A network gives two things: a way to **find candidates** ([`FindPeers`]: the peers at
//! hand, and a lookup through content routing for more) and a way to **ask a candidate**
//! ([`AskPeer`]). [`PeerSource`] puts them together: it races the candidates (the first
//! verified answer wins, the other requests are dropped), orders them with a
//! [`RoutingStrategy`] over a shared [`Reputations`] table, and looks up more when those at
//! hand fail: the fetch's root (a session, as bitswap clients keep), and a block none of the
//! root's providers has, once. The root is looked up again only when the peers asked could
//! not be reached (a connection closed under a transfer: its relay died, say), at most
//! [`ROOT_LOOKUPS`] times a fetch, and the peers found are then asked again on the connection
//! the lookup made. A lookup that finds nobody is remembered, so the blocks of a fetch
//! nobody can serve fail at once instead of asking again.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::routing::{Reputations, RoutingStrategy, Scored};
use super::{ContentSource, Context, SourceError, SourceKind};
use crate::block::Block;
use crate::cid::Cid;
use crate::error::Reason;
use crate::rt::Instant;
use crate::{CondSend, CondSync};

/// A peer's identity, as a network names it (a libp2p `PeerId`; a plain string in tests).
pub trait Peer:
    Clone + Eq + Hash + Ord + fmt::Debug + fmt::Display + CondSend + CondSync + 'static
{
}

impl<T> Peer for T where
    T: Clone + Eq + Hash + Ord + fmt::Debug + fmt::Display + CondSend + CondSync + 'static
{
}

/// What one peer answered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// The peer does not have the block.
    #[error("not found")]
    NotFound,
    /// The request failed (unreachable, stream reset, disconnected, refused).
    #[error("{0}")]
    Failed(Reason),
    /// The peer sent data that does not match what was asked for.
    #[error("sent invalid data: {0}")]
    Invalid(Reason),
}

/// A lookup that found no usable peer: how many it found, and what each routing system
/// (and each peer found) answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({})", if *.found == 0 { "found none" } else { "none of those found could be reached" }, self.answers.iter().map(|(who, what)| format!("{who}: {what}")).collect::<Vec<_>>().join("; "))]
pub struct LookupError {
    /// Providers found (none of which could be used).
    pub found: usize,
    /// Routing systems that answered (with providers or with none): when none did, finding
    /// nobody says nothing about who has the content.
    pub answered: usize,
    /// `(who, what it said)`, in the order asked.
    pub answers: Vec<(String, String)>,
}

/// Finds the peers a block may be asked of.
pub trait FindPeers: CondSync {
    /// How the network names peers.
    type Peer: Peer;

    /// The peers that can be asked for `cid` at once (connected, speaking the protocol).
    fn at_hand(&self, cid: &Cid) -> Vec<Self::Peer>;

    /// Looks up who provides `key` through content routing, connects to those it can, and
    /// returns them once they can be asked. Bounded in time by the implementation. A
    /// network without routing returns an empty list.
    fn look_up(
        &self,
        key: &Cid,
    ) -> impl Future<Output = Result<Vec<Self::Peer>, LookupError>> + CondSend;

    /// A reputation table the network keeps up to date (with peers' content indexes, say),
    /// which the source then shares. `None`: the source keeps its own.
    fn reputations(&self) -> Option<Reputations<Self::Peer>> {
        None
    }

    /// Of `peers`, whose connections closed under a request, those that can be asked for
    /// `cid` again: waits up to `within` for one of them to be at hand (a relayed connection
    /// replaced by a direct one is at hand on neither for a moment). The default waits for
    /// nothing: those at hand now.
    fn regained(
        &self,
        cid: &Cid,
        peers: &[Self::Peer],
        within: Duration,
    ) -> impl Future<Output = Vec<Self::Peer>> + CondSend {
        let _ = within;
        std::future::ready(at_hand_among(self, cid, peers))
    }
}

/// Those of `peers` that `find` has at hand for `cid` now.
pub(super) fn at_hand_among<F: FindPeers + ?Sized>(
    find: &F,
    cid: &Cid,
    peers: &[F::Peer],
) -> Vec<F::Peer> {
    find.at_hand(cid)
        .into_iter()
        .filter(|p| peers.contains(p))
        .collect()
}

/// Asks one peer for one block.
pub trait AskPeer: CondSync {
    /// How the network names peers.
    type Peer: Peer;

    /// Asks `peer` for the bytes of `cid`. Dropping the future must cancel the request.
    fn ask(
        &self,
        peer: &Self::Peer,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend;
}

impl<T: FindPeers> FindPeers for std::sync::Arc<T> {
    type Peer = T::Peer;

    fn at_hand(&self, cid: &Cid) -> Vec<Self::Peer> {
        (**self).at_hand(cid)
    }

    fn look_up(
        &self,
        key: &Cid,
    ) -> impl Future<Output = Result<Vec<Self::Peer>, LookupError>> + CondSend {
        (**self).look_up(key)
    }

    fn reputations(&self) -> Option<Reputations<Self::Peer>> {
        (**self).reputations()
    }

    fn regained(
        &self,
        cid: &Cid,
        peers: &[Self::Peer],
        within: Duration,
    ) -> impl Future<Output = Vec<Self::Peer>> + CondSend {
        (**self).regained(cid, peers, within)
    }
}

impl<T: AskPeer> AskPeer for std::sync::Arc<T> {
    type Peer = T::Peer;

    fn ask(
        &self,
        peer: &Self::Peer,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        (**self).ask(peer, cid)
    }
}

/// Checks what a peer sent against the CID asked for. A [`PeerSource`] uses [`Block::new`]
/// unless given one (the browser's hashes with WebCrypto, off the page's thread).
pub trait Verify: fmt::Debug + CondSend + CondSync {
    /// The block of `bytes` if they are `cid`'s; [`block::Error::HashMismatch`] if not.
    ///
    /// [`block::Error::HashMismatch`]: crate::block::Error::HashMismatch
    fn verify(
        &self,
        cid: Cid,
        bytes: Bytes,
    ) -> crate::BoxFuture<'static, Result<Block, crate::block::Error>>;
}

/// Limits of a [`PeerSource`].
#[derive(Debug, Clone, Copy)]
pub struct RaceConfig {
    /// How long one peer may take for one block (`None`: the asker bounds its own requests,
    /// as `/cas` does by how long a peer sends nothing).
    pub per_peer_timeout: Option<Duration>,
    /// How many peers are asked at once; more are asked as earlier ones fail.
    pub max_parallel: usize,
    /// Whether to look up more peers when those at hand fail.
    pub look_up: bool,
    /// How long the peers whose connections closed under a request may take to be at hand
    /// again ([`FindPeers::regained`]) before the block is looked for elsewhere: one wait a
    /// fetch, shared by the blocks in flight, and again after they came back.
    pub regain: Duration,
}

impl Default for RaceConfig {
    fn default() -> Self {
        Self {
            per_peer_timeout: Some(Duration::from_secs(10)),
            max_parallel: 16,
            look_up: true,
            regain: Duration::from_secs(5),
        }
    }
}

/// How many times one fetch may look its root up: once, and again when the providers found
/// could not be reached (each lookup is bounded in time by the network).
pub const ROOT_LOOKUPS: u32 = 4;

/// How many rounds of "look the root up, ask who it found" one block may take.
const ROUNDS_PER_BLOCK: u32 = 3;

/// Which keys one fetch has looked up, and the failure when nothing was ever found. Held
/// across a lookup, so that the blocks in flight share it instead of each asking.
struct Lookups {
    done: HashSet<Cid>,
    root_failed: Option<LookupError>,
}

/// Peers as a source: candidates found by `F`, asked through `A`, raced.
pub struct PeerSource<F: FindPeers, A, R = Scored> {
    kind: SourceKind,
    find: F,
    ask: A,
    strategy: R,
    reputations: Reputations<F::Peer>,
    config: RaceConfig,
    root: Option<Cid>,
    verify: Option<std::sync::Arc<dyn Verify>>,
    lookups: futures::lock::Mutex<Lookups>,
    /// How many times the root was looked up (read without waiting on a lookup in flight).
    root_rounds: AtomicU32,
    /// Peers the lookups found (read without waiting on a lookup in flight).
    found: std::sync::Mutex<Vec<F::Peer>>,
    /// Until when blocks wait for peers whose connections closed to come back (set by the
    /// first such wait, cleared when they came back).
    regain_until: std::sync::Mutex<Option<Instant>>,
}

impl<F: FindPeers, A, R> fmt::Debug for PeerSource<F, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSource")
            .field("kind", &self.kind)
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F, A> PeerSource<F, A>
where
    F: FindPeers,
    A: AskPeer<Peer = F::Peer>,
{
    /// A source of `kind` ([`SourceKind::Peers`] or [`SourceKind::Ipfs`]) for the DAG under
    /// `root` (`None`: each block is looked up by its own CID), with the default
    /// [`Scored`] strategy.
    pub fn new(kind: SourceKind, find: F, ask: A, root: Option<Cid>) -> Self {
        Self::with_strategy(kind, find, ask, root, Scored::default())
    }
}

/// Every peer asked and what it answered, in order.
type Failures<P> = Vec<(P, SourceError)>;

impl<F, A, R> PeerSource<F, A, R>
where
    F: FindPeers,
    A: AskPeer<Peer = F::Peer>,
    R: RoutingStrategy,
{
    /// A source with a custom ordering strategy.
    pub fn with_strategy(
        kind: SourceKind,
        find: F,
        ask: A,
        root: Option<Cid>,
        strategy: R,
    ) -> Self {
        Self {
            kind,
            reputations: find.reputations().unwrap_or_default(),
            find,
            ask,
            strategy,
            config: RaceConfig::default(),
            root,
            verify: None,
            lookups: futures::lock::Mutex::new(Lookups {
                done: HashSet::new(),
                root_failed: None,
            }),
            root_rounds: AtomicU32::new(0),
            found: std::sync::Mutex::default(),
            regain_until: std::sync::Mutex::default(),
        }
    }

    /// Sets the limits.
    pub fn config(mut self, config: RaceConfig) -> Self {
        self.config = config;
        self
    }

    /// Checks what peers send with `verify` instead of [`Block::new`].
    pub fn verifier(mut self, verify: Option<std::sync::Arc<dyn Verify>>) -> Self {
        self.verify = verify;
        self
    }

    /// The reputation table this source updates.
    pub fn reputations(&self) -> &Reputations<F::Peer> {
        &self.reputations
    }

    /// The peers the lookups found.
    fn found(&self) -> std::sync::MutexGuard<'_, Vec<F::Peer>> {
        self.found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `peers` among those found; returns those that were not known.
    fn remember(&self, peers: Vec<F::Peer>) -> Vec<F::Peer> {
        let mut known = self.found();
        let fresh: Vec<F::Peer> = peers.into_iter().filter(|p| !known.contains(p)).collect();
        known.extend(fresh.iter().cloned());
        fresh
    }

    /// Looks `key` (a block's own CID, or any CID of a fetch without a root) up once per
    /// session; returns the peers it found that were not known, or, when nothing was ever
    /// found for the root, why.
    async fn look_up(&self, key: &Cid, ctx: &Context) -> Result<Vec<F::Peer>, SourceError> {
        let mut s = self.lookups.lock().await;
        if let (Some(root), Some(e)) = (self.root, &s.root_failed) {
            // Nobody provides the root: no block of it is worth its own lookup.
            return Err(SourceError::NoProvider {
                key: Box::new(root),
                lookup: e.clone(),
            });
        }
        if s.done.contains(key) {
            return match &s.root_failed {
                Some(e) if self.root.is_none() => Err(SourceError::NoProvider {
                    key: Box::new(*key),
                    lookup: e.clone(),
                }),
                _ => Ok(Vec::new()),
            };
        }
        // Cancelled or out of time: not marked as looked up, so a later call asks again.
        let found = ctx
            .run(None, async { Ok(self.find.look_up(key).await) })
            .await?;
        s.done.insert(*key);
        match found {
            Ok(peers) => Ok(self.remember(peers)),
            Err(e) => {
                if self.root.is_none() && self.found().is_empty() {
                    s.root_failed = Some(e.clone());
                }
                Err(SourceError::NoProvider {
                    key: Box::new(*key),
                    lookup: e,
                })
            }
        }
    }

    /// Looks the root up, unless another block has since this one last looked (`seen`
    /// lookups): then those found are used as they are. Returns how many lookups there have
    /// been and every peer found; the same count as `seen` when no more lookups are allowed.
    async fn look_up_root(
        &self,
        root: &Cid,
        seen: u32,
        ctx: &Context,
    ) -> Result<(u32, Vec<F::Peer>), SourceError> {
        let mut s = self.lookups.lock().await;
        let rounds = self.root_rounds.load(Ordering::Acquire);
        if let Some(e) = &s.root_failed {
            // Nobody was ever found: no block of it is worth asking again.
            return Err(SourceError::NoProvider {
                key: Box::new(*root),
                lookup: e.clone(),
            });
        }
        if rounds > seen || rounds >= ROOT_LOOKUPS {
            return Ok((rounds, self.found().clone()));
        }
        // Cancelled or out of time: not counted, so a later call asks again.
        let found = ctx
            .run(None, async { Ok(self.find.look_up(root).await) })
            .await?;
        self.root_rounds.store(rounds + 1, Ordering::Release);
        match found {
            Ok(peers) => {
                self.remember(peers.clone());
                Ok((rounds + 1, peers))
            }
            Err(e) => {
                if self.found().is_empty() {
                    s.root_failed = Some(e.clone());
                }
                Err(SourceError::NoProvider {
                    key: Box::new(*root),
                    lookup: e,
                })
            }
        }
    }

    /// Of the peers in `failures` whose connections closed under the request, those at hand
    /// again: at once if some are, else after waiting for them (up to `config.regain`, one
    /// wait a fetch shared by the blocks in flight, so a fetch whose peers are gone pays it
    /// once; it starts anew after they came back).
    async fn regained(
        &self,
        cid: &Cid,
        failures: &Failures<F::Peer>,
        ctx: &Context,
    ) -> Result<Vec<F::Peer>, SourceError> {
        let mut lost: Vec<F::Peer> = failures
            .iter()
            .filter(|(_, e)| matches!(e, SourceError::Unavailable(_)))
            .map(|(p, _)| p.clone())
            .collect();
        lost.sort();
        lost.dedup();
        if lost.is_empty() {
            return Ok(lost);
        }
        let now = at_hand_among(&self.find, cid, &lost);
        if !now.is_empty() {
            return Ok(now);
        }
        let until = || {
            self.regain_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let within = {
            let mut until = until();
            let deadline = *until.get_or_insert_with(|| Instant::now() + self.config.regain);
            deadline.saturating_duration_since(Instant::now())
        };
        if within.is_zero() {
            return Ok(Vec::new());
        }
        let back = ctx
            .run(None, async {
                Ok(self.find.regained(cid, &lost, within).await)
            })
            .await?;
        if !back.is_empty() {
            *until() = None;
        }
        Ok(back)
    }

    async fn fetch(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        let mut asked: HashSet<F::Peer> = HashSet::new();
        let mut failures: Failures<F::Peer> = Vec::new();
        let mut seen = self.root_rounds.load(Ordering::Acquire);
        let mut at_hand = self.find.at_hand(cid);
        at_hand.extend(self.found().iter().cloned());
        if let Some(b) = self
            .race(cid, ctx, at_hand, &mut asked, &mut failures)
            .await?
        {
            return Ok(b);
        }
        // A peer whose request failed as a closed connection does, and which is at hand
        // again, has another connection (a relayed one replaced by a direct one under the
        // request, say): asked once more on it, before any lookup or other source.
        let moved = self.regained(cid, &failures, ctx).await?;
        if !moved.is_empty() {
            for p in &moved {
                asked.remove(p);
            }
            if let Some(b) = self
                .race(cid, ctx, moved, &mut asked, &mut failures)
                .await?
            {
                return Ok(b);
            }
        }
        let mut lookup_error = None;
        if self.config.look_up {
            // The root's providers first: looked up once a fetch, and again when those asked
            // could not be reached (their connections closed: a relay died under the
            // transfer, say); then, if they lack this block, its own.
            let mut from = 0;
            if let Some(root) = self.root {
                for _ in 0..ROUNDS_PER_BLOCK {
                    let unreachable = failures[from..]
                        .iter()
                        .any(|(_, e)| matches!(e, SourceError::Unavailable(_)));
                    if seen > 0 && !unreachable {
                        break;
                    }
                    let (rounds, found) = match self.look_up_root(&root, seen, ctx).await {
                        Ok(r) => r,
                        Err(e @ (SourceError::Cancelled | SourceError::DeadlineExceeded)) => {
                            return Err(e);
                        }
                        Err(e) => {
                            lookup_error = Some(e);
                            break;
                        }
                    };
                    if rounds == seen {
                        break;
                    }
                    seen = rounds;
                    // The lookup reached them anew: those that could not be reached are
                    // asked again.
                    asked.retain(|p| {
                        !failures[from..]
                            .iter()
                            .any(|(q, e)| q == p && matches!(e, SourceError::Unavailable(_)))
                    });
                    from = failures.len();
                    let mut fresh = self.find.at_hand(cid);
                    fresh.extend(found);
                    if let Some(b) = self
                        .race(cid, ctx, fresh, &mut asked, &mut failures)
                        .await?
                    {
                        return Ok(b);
                    }
                }
            }
            if lookup_error.is_none() && self.root != Some(*cid) {
                match self.look_up(cid, ctx).await {
                    Ok(found) => {
                        let mut fresh = self.find.at_hand(cid);
                        fresh.extend(found);
                        if let Some(b) = self
                            .race(cid, ctx, fresh, &mut asked, &mut failures)
                            .await?
                        {
                            return Ok(b);
                        }
                    }
                    Err(e @ (SourceError::Cancelled | SourceError::DeadlineExceeded)) => {
                        return Err(e);
                    }
                    Err(e) => lookup_error = Some(e),
                }
            }
        }
        match lookup_error {
            Some(e) if failures.is_empty() => Err(e),
            _ => {
                if !failures.is_empty()
                    && failures
                        .iter()
                        .all(|(_, e)| *e == SourceError::DeadlineExceeded)
                {
                    return Err(SourceError::DeadlineExceeded);
                }
                // A peer asked again (after a lookup) that failed the same way is listed once.
                let mut all: Vec<(String, SourceError)> = Vec::with_capacity(failures.len());
                for (p, e) in failures {
                    let who = format!("peer {p}");
                    if !all.iter().any(|(w, f)| *w == who && *f == e) {
                        all.push((who, e));
                    }
                }
                if let Some(e) = lookup_error {
                    all.push(("lookup".into(), e));
                }
                Err(SourceError::AllFailed(all))
            }
        }
    }

    /// Races those of `candidates` not yet `asked`: `Some(block)` for the first verified
    /// answer (the other requests are dropped), `None` when every one failed.
    async fn race(
        &self,
        cid: &Cid,
        ctx: &Context,
        candidates: Vec<F::Peer>,
        asked: &mut HashSet<F::Peer>,
        failures: &mut Failures<F::Peer>,
    ) -> Result<Option<Block>, SourceError> {
        let mut fresh: Vec<F::Peer> = Vec::with_capacity(candidates.len());
        for p in candidates {
            if asked.insert(p.clone()) {
                fresh.push(p);
            }
        }
        let order = self.strategy.order(cid, &fresh, &self.reputations);
        let mut queue = order.into_iter();
        let mut inflight = FuturesUnordered::new();
        let ask = |peer: F::Peer| {
            let timeout = self.config.per_peer_timeout;
            async move {
                let started = Instant::now();
                let out = ctx
                    .run(timeout, async {
                        self.ask.ask(&peer, cid).await.map_err(|e| match e {
                            PeerError::NotFound => SourceError::NotFound,
                            PeerError::Failed(m) => SourceError::Unavailable(m),
                            PeerError::Invalid(m) => SourceError::Invalid(m),
                        })
                    })
                    .await;
                let elapsed = started.elapsed();
                // Verified here, in the request's own future: a platform hasher then checks
                // several answers at once.
                let out = match out {
                    Ok(bytes) => match &self.verify {
                        Some(v) => v.verify(*cid, bytes).await,
                        None => Block::new(*cid, bytes),
                    }
                    .map_err(|e| SourceError::Invalid(Reason::new(e))),
                    Err(e) => Err(e),
                };
                (peer, out, elapsed)
            }
        };
        for peer in queue.by_ref().take(self.config.max_parallel.max(1)) {
            inflight.push(ask(peer));
        }
        while let Some((peer, out, elapsed)) = inflight.next().await {
            match out {
                Ok(block) => {
                    self.reputations.record_success(&peer, elapsed);
                    // Returning drops `inflight`: every losing request is cancelled.
                    return Ok(Some(block));
                }
                Err(SourceError::Cancelled) => return Err(SourceError::Cancelled),
                Err(e) => {
                    match &e {
                        SourceError::Invalid(_) => self.reputations.record_lie(&peer),
                        SourceError::NotFound => self.reputations.record_miss(&peer),
                        _ => self.reputations.record_failure(&peer),
                    }
                    failures.push((peer, e));
                    if let Some(next) = queue.next() {
                        inflight.push(ask(next));
                    }
                }
            }
        }
        Ok(None)
    }
}

impl<F, A, R> ContentSource for PeerSource<F, A, R>
where
    F: FindPeers,
    A: AskPeer<Peer = F::Peer>,
    R: RoutingStrategy,
{
    fn kind(&self) -> SourceKind {
        self.kind
    }

    fn retrieve(
        &self,
        cid: &Cid,
        ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        self.fetch(cid, ctx)
    }
}
