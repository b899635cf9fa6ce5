use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::race::{PeerClient, PeerError, PeerKey, PeerRace, RaceConfig};
use super::routing::Reputations;
use super::{ContentSource, Context, SourceError, SourceKind};
use crate::block::Block;
use crate::cid::Cid;
use crate::{CondSend, CondSync};

/// The network side of the [`Ipfs`] source: content routing and bitswap.
pub trait IpfsNetwork: CondSync {
    /// Finds providers of `cid` through every routing system the network has (the DHT,
    /// delegated routing endpoints), connects to those it can reach, and returns them.
    /// `Err` says what each routing system and provider answered when none could be used.
    /// Bounded in time by the implementation.
    fn providers(&self, cid: &Cid)
    -> impl Future<Output = Result<Vec<PeerKey>, String>> + CondSend;

    /// Asks `peer` for `cid` over bitswap. Dropping the future must cancel the want.
    fn want(
        &self,
        peer: &PeerKey,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend;

    /// A reputation table shared with the rest of the node, if any.
    fn reputations(&self) -> Option<Reputations> {
        None
    }
}

/// Adapts an [`IpfsNetwork`] to the peer race: the race's candidates are the session's
/// providers, passed in per call.
struct Wants<N>(N);

impl<N: IpfsNetwork> PeerClient for Wants<N> {
    fn candidates(&self, _cid: &Cid) -> Vec<PeerKey> {
        Vec::new()
    }

    fn fetch(
        &self,
        peer: &PeerKey,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        self.0.want(peer, cid)
    }

    fn reputations(&self) -> Option<Reputations> {
        self.0.reputations()
    }
}

/// What one fetch has learnt of the network: providers found (or why none), and which
/// CIDs have been looked up already.
#[derive(Default)]
struct Session {
    providers: Option<Result<Vec<PeerKey>, String>>,
    looked_up: HashSet<Cid>,
}

/// The IPFS network as a source: providers of the fetch's root are looked up once (a
/// session, as bitswap clients keep), raced over bitswap for every block, and a block none
/// of them has triggers one lookup of that block's own providers. With no reachable
/// provider, every block fails at once with what the lookup found, instead of asking again.
pub struct Ipfs<N> {
    race: PeerRace<Wants<N>>,
    root: Option<Cid>,
    session: futures::lock::Mutex<Session>,
}

impl<N> fmt::Debug for Ipfs<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipfs").field("root", &self.root).finish()
    }
}

impl<N: IpfsNetwork> Ipfs<N> {
    /// A source over `net` for the DAG under `root` (`None`: each block is looked up by its
    /// own CID, which suits single blocks).
    pub fn new(net: N, root: Option<Cid>) -> Self {
        Self {
            race: PeerRace::new(Wants(net)).config(RaceConfig {
                per_peer_timeout: Duration::from_secs(15),
                // Providers each get a want; a handful is enough to route around slow ones.
                max_parallel: 4,
            }),
            root,
            session: futures::lock::Mutex::default(),
        }
    }

    /// Sets the race limits (per-provider timeout, providers asked at once).
    pub fn config(mut self, config: RaceConfig) -> Self {
        self.race = self.race.config(config);
        self
    }

    /// The reputation table the source updates.
    pub fn reputations(&self) -> &Reputations {
        self.race.reputation_table()
    }

    /// The session's providers, looking up `key` first if it has not been.
    async fn providers(&self, key: &Cid, ctx: &Context) -> Result<Vec<PeerKey>, SourceError> {
        let mut s = self.session.lock().await;
        if !s.looked_up.contains(key) {
            // Cancelled or out of time: not marked as looked up, so a later call asks again.
            let found = ctx
                .run(None, async { Ok(self.net().providers(key).await) })
                .await?;
            s.looked_up.insert(*key);
            s.providers = Some(match (s.providers.take(), found) {
                (Some(Ok(mut had)), Ok(more)) => {
                    for p in more {
                        if !had.contains(&p) {
                            had.push(p);
                        }
                    }
                    Ok(had)
                }
                (Some(Ok(had)), Err(_)) if !had.is_empty() => Ok(had),
                (_, found) => found,
            });
        }
        match &s.providers {
            Some(Ok(p)) if !p.is_empty() => Ok(p.clone()),
            Some(Ok(_)) => Err(SourceError::Unavailable(format!(
                "no provider of {key} found"
            ))),
            Some(Err(why)) => Err(SourceError::Unavailable(format!(
                "no provider of {key}: {why}"
            ))),
            None => Err(SourceError::Unavailable("no lookup was made".into())),
        }
    }

    fn net(&self) -> &N {
        &self.race.client().0
    }

    async fn fetch(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        let key = self.root.unwrap_or(*cid);
        let providers = self.providers(&key, ctx).await?;
        let first = match self.race.race_among(cid, ctx, &providers).await {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        // The root's providers lack this block (or failed): once, ask who has the block.
        let retry = matches!(first, SourceError::AllFailed(_))
            && *cid != key
            && !self.session.lock().await.looked_up.contains(cid);
        if !retry {
            return Err(first);
        }
        match self.providers(cid, ctx).await {
            Ok(more) => {
                let fresh: Vec<PeerKey> = more
                    .into_iter()
                    .filter(|p| !providers.contains(p))
                    .collect();
                if fresh.is_empty() {
                    return Err(first);
                }
                self.race.race_among(cid, ctx, &fresh).await
            }
            Err(_) => Err(first),
        }
    }
}

impl<N: IpfsNetwork> ContentSource for Ipfs<N> {
    fn kind(&self) -> SourceKind {
        SourceKind::Ipfs
    }

    fn retrieve(
        &self,
        cid: &Cid,
        ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        self.fetch(cid, ctx)
    }
}
