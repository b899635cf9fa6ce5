//! The source chain a node fetches through, assembled once for every platform: the local
//! store, `/cas` peers (connected ones, and providers found in the DHT), IPFS peers over
//! bitswap, then HTTP gateways. The browser node and the CLI both describe what they want
//! as [`Sources`] and get the same chain.

use std::time::Duration;

use bytes::Bytes;
use cairn_core::cid::Cid;
use cairn_core::source::routing::Reputations;
use cairn_core::source::{
    AskPeer, Chain, FindPeers, Gateway, HttpClient, LookupError, PeerError, PeerSource, RaceConfig,
    SourceKind, Verify,
};
use cairn_core::store::BlockStore;
use libp2p::{Multiaddr, PeerId};

use crate::Node;
use crate::{ipfs, routing_v1};

/// An HTTP(S) base URL that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} \"{url}\" is not an http(s) URL (for example {example})")]
pub struct NotHttp {
    /// What it was given as (`gateway`, `router`, …).
    pub what: &'static str,
    /// What was given.
    pub url: String,
    /// What one looks like.
    pub example: &'static str,
}

/// Checks that `url` is an `http://` or `https://` URL, for the error to name `what`.
pub fn http_url(what: &'static str, url: &str) -> Result<String, NotHttp> {
    let url = url.trim();
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    if scheme_ok && !host.is_empty() && !host.starts_with('/') {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(NotHttp {
            what,
            url: url.to_owned(),
            example: match what {
                "gateway" => "https://trustless-gateway.link",
                _ => "https://delegated-ipfs.dev",
            },
        })
    }
}

/// `/cas` peers: those connected that speak it, and (when looking up) providers of the
/// fetch's root found in the DHT and reached through their records' addresses.
#[derive(Debug, Clone)]
pub struct CasPeers {
    node: Node,
    /// How long a lookup waits for the providers it found to connect and identify.
    pub wait: Duration,
    /// Peers the user named as `/cas` peers: asked as soon as they are connected, before
    /// identify has said what they speak (a round trip sooner); not once it says they do
    /// not speak `/cas`.
    named: Vec<PeerId>,
    /// The root whose DAG the first peer asked for it pushes (`dag`), and that push.
    below: Option<Cid>,
    push: std::sync::Arc<std::sync::Mutex<Push>>,
}

/// Where the push of a fetch's DAG stands.
#[derive(Debug, Default)]
enum Push {
    /// Nobody was asked yet (or the one asked failed).
    #[default]
    Idle,
    /// A peer is being asked.
    Asking,
    /// A peer answered: its blocks are taken from here.
    Pushing(std::sync::Arc<crate::cas::Pushed>),
    /// A peer answered with the root alone.
    Done,
}

/// Puts a push that is being asked for back to [`Push::Idle`] unless it got an answer (the
/// ask failed, or lost its race and was dropped).
struct Asking<'a>(&'a std::sync::Mutex<Push>, bool);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let mut push = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(*push, Push::Asking) {
                *push = Push::Idle;
            }
        }
    }
}

impl CasPeers {
    /// The `/cas` peers of `node`.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            wait: Duration::from_secs(25),
            named: Vec::new(),
            below: None,
            push: std::sync::Arc::default(),
        }
    }

    /// Asks the first peer asked for `root` for the DAG's structure too (`dag`: its dag-pb
    /// blocks and small `raw` ones, [`crate::cas::pushed_links`]), in one answer that the
    /// fetch then takes those blocks from as it wants them: a folder or a deep file fetched
    /// from a peer far away costs a round trip or two, not one per level or per small file
    /// (a file's chunks are still asked for with `get`, many at once). For reading through
    /// what `root` names (a file, a folder, a listing), not a path in it or a part of it:
    /// what is pushed and never wanted is bounded ([`crate::cas::PUSH_HELD`]) but wasted.
    pub fn push_below(mut self, root: Option<Cid>) -> Self {
        self.below = root;
        self
    }

    fn push(&self) -> std::sync::MutexGuard<'_, Push> {
        self.push
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Those of `peers` that may be asked over `/cas` now.
    fn askable_among(&self, peers: &[PeerId]) -> Vec<PeerId> {
        peers
            .iter()
            .filter(|p| self.node.peer(p).is_some_and(|i| i.askable()))
            .copied()
            .collect()
    }

    /// With `peers` named by the user as `/cas` peers (see [`Sources::named`]).
    pub fn named(mut self, peers: Vec<PeerId>) -> Self {
        self.named = peers;
        self
    }
}

impl FindPeers for CasPeers {
    type Peer = PeerId;

    fn at_hand(&self, _: &Cid) -> Vec<PeerId> {
        let mut out = self.node.askable_peers();
        for p in &self.named {
            if !out.contains(p) && self.node.peer(p).is_some_and(|i| !i.identified()) {
                out.push(*p);
            }
        }
        out
    }

    async fn look_up(&self, key: &Cid) -> Result<Vec<PeerId>, LookupError> {
        let fail = |found: usize, answered: usize, what: String| LookupError {
            found,
            answered,
            answers: vec![("DHT".into(), what)],
        };
        let t = Duration::from_secs(10);
        let providers = match cairn_core::rt::timeout(t, self.node.find_providers(*key)).await {
            Some(Ok(p)) if !p.is_empty() => p,
            Some(Ok(_)) => return Err(fail(0, 1, "0 provider(s)".into())),
            Some(Err(e)) => return Err(fail(0, 0, e.to_string())),
            None => return Err(fail(0, 0, format!("no answer within {t:?}"))),
        };
        // A provider reached through a relay is moved to a direct connection first, when
        // it can be (`askable` waits for that): the transfer then never loads the relay.
        if self
            .node
            .wait_for(&providers, self.wait, |i| i.askable())
            .await
            .is_none()
        {
            return Err(fail(
                providers.len(),
                1,
                format!("{} provider(s), none askable over /cas", providers.len()),
            ));
        }
        Ok(self.askable_among(&providers))
    }

    fn reputations(&self) -> Option<Reputations<PeerId>> {
        Some(self.node.reputations().clone())
    }

    /// Waits for one of `peers` to be askable again: connected, identified, not being moved
    /// to a direct connection (gone from the peer table while its relayed connection has
    /// closed and its direct one is not yet identified).
    async fn regained(&self, _: &Cid, peers: &[PeerId], within: Duration) -> Vec<PeerId> {
        self.node.wait_for(peers, within, |i| i.askable()).await;
        self.askable_among(peers)
    }
}

impl AskPeer for CasPeers {
    type Peer = PeerId;

    async fn ask(&self, peer: &PeerId, cid: &Cid) -> Result<Bytes, PeerError> {
        let pushing = match &*self.push() {
            Push::Pushing(p) if p.peer() == *peer => Some(p.clone()),
            _ => None,
        };
        if let Some(p) = pushing
            && let Some(bytes) = p.take(cid).await
        {
            return Ok(bytes);
        }
        if self.below == Some(*cid) {
            let ask = {
                let mut push = self.push();
                let idle = matches!(*push, Push::Idle);
                if idle {
                    *push = Push::Asking;
                }
                idle
            };
            if ask {
                let mut asking = Asking(&self.push, false);
                let (bytes, pushed) = self.node.dag(*peer, cid).await?;
                asking.1 = true;
                *self.push() = match pushed {
                    Some(p) => Push::Pushing(std::sync::Arc::new(p)),
                    None => Push::Done,
                };
                return Ok(bytes);
            }
        }
        self.node.get(*peer, cid).await
    }
}

/// A source of the `/cas` peers of `node` for the DAG under `root`, racing them within
/// `config` (with `config.look_up`, providers of the root are looked up in the DHT when
/// the connected peers fail).
pub fn cas_source(
    node: &Node,
    root: Option<Cid>,
    config: RaceConfig,
) -> PeerSource<CasPeers, CasPeers> {
    cas_source_of(CasPeers::new(node.clone()), root, config)
}

/// [`cas_source`] over `peers`.
fn cas_source_of(
    peers: CasPeers,
    root: Option<Cid>,
    config: RaceConfig,
) -> PeerSource<CasPeers, CasPeers> {
    PeerSource::new(SourceKind::Peers, peers.clone(), peers, root).config(config)
}

/// The IPFS source over `net` for the DAG under `root`: providers looked up once per
/// fetch, each asked over bitswap, a handful at a time.
pub fn ipfs_source<H: HttpClient + 'static>(
    net: ipfs::Network<H>,
    root: Option<Cid>,
) -> PeerSource<std::sync::Arc<ipfs::Network<H>>, std::sync::Arc<ipfs::Network<H>>> {
    let net = std::sync::Arc::new(net);
    PeerSource::new(SourceKind::Ipfs, net.clone(), net, root).config(RaceConfig {
        per_peer_timeout: Some(Duration::from_secs(15)),
        // Providers each get a want; a handful is enough to route around slow ones.
        max_parallel: 4,
        look_up: true,
        ..Default::default()
    })
}

/// Where the IPFS source finds providers.
#[derive(Debug, Clone)]
pub struct IpfsRouting {
    /// Whether to ask the DHT (the relays').
    pub dht: bool,
    /// Delegated Routing V1 endpoints (checked with [`http_url`]).
    pub routers: Vec<String>,
    /// Which provider addresses this node can dial.
    pub dialable: fn(&Multiaddr) -> bool,
}

/// What a fetch may use beyond the local store.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Connected `/cas` peers (with a node).
    pub peers: bool,
    /// Also look up `/cas` providers of the root in the DHT when the connected peers fail.
    pub discover: bool,
    /// Peers named as `/cas` peers (`cairn-relay cat --peer`): asked as soon as they are
    /// connected, without waiting for identify to say that they speak `/cas`.
    pub named: Vec<PeerId>,
    /// The IPFS network over bitswap (with a node).
    pub ipfs: Option<IpfsRouting>,
    /// Trustless gateways, in order (checked with [`http_url`]).
    pub gateways: Vec<String>,
    /// How long each source may take for one block before the chain moves on.
    pub peer_timeout: Duration,
    /// The same, for the IPFS source (its first block includes the provider lookup).
    pub ipfs_timeout: Duration,
    /// The same, for each gateway.
    pub gateway_timeout: Duration,
    /// Checks what `/cas` and IPFS peers send (`None`: `Block::new`, here); the browser's
    /// hashes with WebCrypto.
    pub verify: Option<std::sync::Arc<dyn Verify>>,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            peers: true,
            discover: false,
            named: Vec::new(),
            ipfs: None,
            gateways: Vec::new(),
            peer_timeout: Duration::from_secs(30),
            ipfs_timeout: Duration::from_secs(60),
            gateway_timeout: Duration::from_secs(30),
            verify: None,
        }
    }
}

impl Sources {
    /// The chain for the DAG under `root`: `store`, then (with a `node`) its `/cas` peers
    /// and IPFS, then each gateway over `http`. The `/cas` peer first asked for `root` is
    /// asked for the DAG's structure ([`CasPeers::push_below`]): right for reading through
    /// what the root names (a file, a folder, a listing), as the transfer queue does; a
    /// reader of a part chooses with [`Sources::chain_below`].
    pub fn chain<S, H>(&self, node: Option<&Node>, store: S, http: &H, root: Cid) -> Chain
    where
        S: BlockStore + Clone + 'static,
        H: HttpClient + Clone + 'static,
    {
        self.chain_below(node, store, http, root, Some(root))
    }

    /// [`Sources::chain`], with the `/cas` peer first asked for `below` (the root, or what a
    /// path in it leads to) asked for the DAG's structure under it ([`CasPeers::push_below`];
    /// `None`: nobody is). Providers are still looked up by `root`.
    pub fn chain_below<S, H>(
        &self,
        node: Option<&Node>,
        store: S,
        http: &H,
        root: Cid,
        below: Option<Cid>,
    ) -> Chain
    where
        S: BlockStore + Clone + 'static,
        H: HttpClient + Clone + 'static,
    {
        let mut chain = Chain::new().local(store);
        if let Some(node) = node {
            if self.peers {
                // Each request gives up on its own when the peer sends nothing for a while
                // (`cas::Config::request_timeout`): a bound on the whole answer would cut
                // every request of a window on a slow link at once.
                let config = RaceConfig {
                    look_up: self.discover,
                    per_peer_timeout: None,
                    ..RaceConfig::default()
                };
                let peers = CasPeers::new(node.clone())
                    .named(self.named.clone())
                    .push_below(below);
                chain = chain.source(
                    cas_source_of(peers, Some(root), config).verifier(self.verify.clone()),
                    Some(self.peer_timeout),
                );
            }
            if let Some(routing) = &self.ipfs {
                let routers = routing
                    .routers
                    .iter()
                    .map(|r| routing_v1::Client::new(http.clone(), r))
                    .collect();
                let net = ipfs::Network::new(node.clone(), routers, routing.dht, routing.dialable);
                chain = chain.source(
                    ipfs_source(net, Some(root)).verifier(self.verify.clone()),
                    Some(self.ipfs_timeout),
                );
            }
        }
        for g in &self.gateways {
            chain = chain.source(
                Gateway::new(http.clone(), g.clone()),
                Some(self.gateway_timeout),
            );
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_in_one_place() {
        assert_eq!(
            http_url("gateway", " https://x.example/ ").unwrap(),
            "https://x.example"
        );
        assert_eq!(
            http_url("router", "http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in ["ftp://x", "x.example", "https://", "http:///path", ""] {
            let e = http_url("gateway", bad).unwrap_err();
            assert!(e.to_string().contains("trustless-gateway.link"), "{e}");
        }
        assert!(
            http_url("router", "nope")
                .unwrap_err()
                .to_string()
                .starts_with("router \"nope\" is not an http(s) URL")
        );
    }
}
