//! The IPFS network as cairn-core's peers see it ([`FindPeers`] and [`AskPeer`] for a
//! [`cairn_core::source::PeerSource`] of kind `ipfs`): providers from the Kademlia DHT
//! (through the relay) and from Delegated Routing V1 endpoints, connected to at the
//! addresses this node can dial, then asked over [`crate::bitswap`].

use std::time::Duration;

use bytes::Bytes;
use cairn_core::Reason;
use cairn_core::cid::Cid;
use cairn_core::source::routing::Reputations;
use cairn_core::source::{AskPeer, FindPeers, HttpClient, LookupError, PeerError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::Node;
use crate::bitswap::WantError;
use crate::routing_v1;

/// Most providers connected to per lookup.
pub const MAX_PROVIDERS: usize = 16;

/// How long a want to an IPFS peer waits in silence before it is sent once more
/// ([`crate::bitswap::Bitswap::rewant`]); Helia answers a want on loopback in milliseconds.
pub const REWANT: Duration = Duration::from_secs(4);

/// Whether a browser can dial `addr`: WebSocket (plain or TLS), WebRTC-direct, or a relay
/// circuit. Everything else (TCP, QUIC) is out of a page's reach.
/// The public IPFS network's bootstrap peers (Kubo's defaults): where a node joining the
/// IPFS DHT starts (`cairn-relay serve --ipfs-dht`).
pub const PUBLIC_BOOTSTRAP: &[&str] = &[
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

/// [`PUBLIC_BOOTSTRAP`], parsed.
pub fn public_bootstrap() -> Vec<Multiaddr> {
    PUBLIC_BOOTSTRAP
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

pub fn browser_dialable(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| {
        matches!(
            p,
            Protocol::Ws(_) | Protocol::Wss(_) | Protocol::WebRTCDirect | Protocol::P2pCircuit
        )
    })
}

/// Every address (a native node has every transport).
pub fn any_address(_: &Multiaddr) -> bool {
    true
}

/// Content routing plus bitswap over a [`Node`].
pub struct Network<H> {
    node: Node,
    routers: Vec<routing_v1::Client<H>>,
    dht: bool,
    dialable: fn(&Multiaddr) -> bool,
    /// How long one routing system may take to answer.
    pub lookup_timeout: Duration,
    /// How long connecting to one provider may take.
    pub connect_timeout: Duration,
}

impl<H> std::fmt::Debug for Network<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field(
                "routers",
                &self.routers.iter().map(|r| r.base()).collect::<Vec<_>>(),
            )
            .field("dht", &self.dht)
            .finish_non_exhaustive()
    }
}

impl<H: HttpClient> Network<H> {
    /// When the only connection to `peer` goes through a relay and it has `direct`
    /// addresses, connects directly too: js-libp2p (Helia, Kubo's peers in JS) never opens
    /// a stream on a limited (relayed) connection, so bitswap's answers could not come back
    /// over the circuit (the first direct address that answers is enough).
    async fn also_direct(&self, peer: PeerId, direct: &[Multiaddr]) {
        for a in direct {
            let relayed_only = self.node.peer(&peer).is_none_or(|i| i.relayed);
            if !relayed_only {
                return;
            }
            let addr = a.clone().with_p2p(peer).unwrap_or_else(|a| a);
            if let Err(e) = self.node.dial(addr).await {
                tracing::debug!(%peer, error = %e, "no direct connection at this address");
            }
        }
    }

    /// Lookups through `routers`, and through the DHT if `dht`; only addresses `dialable`
    /// accepts are dialed.
    pub fn new(
        node: Node,
        routers: Vec<routing_v1::Client<H>>,
        dht: bool,
        dialable: fn(&Multiaddr) -> bool,
    ) -> Self {
        Self {
            node,
            routers,
            dht,
            dialable,
            lookup_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Providers from every routing system, with what each said and how many answered.
    async fn lookup(
        &self,
        cid: &Cid,
    ) -> (Vec<(PeerId, Vec<Multiaddr>)>, Vec<(String, String)>, usize) {
        let t = self.lookup_timeout;
        let dht = async {
            if !self.dht {
                return None;
            }
            Some(
                match cairn_core::rt::timeout(t, self.node.find_providers(*cid)).await {
                    Some(Ok(p)) => Ok(p.into_iter().map(|p| (p, Vec::new())).collect::<Vec<_>>()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err(format!("no answer within {t:?}")),
                },
            )
        };
        let routers = futures::future::join_all(self.routers.iter().map(|r| async move {
            let out = match cairn_core::rt::timeout(t, r.providers(cid)).await {
                Some(Ok(p)) => Ok(p.into_iter().map(|p| (p.peer, p.addrs)).collect()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err(format!("no answer within {t:?}")),
            };
            (r.base().to_owned(), out)
        }));
        let (dht, routers) = futures::future::join(dht, routers).await;
        let mut found: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        let mut notes = Vec::new();
        let mut answered = 0;
        let answers = dht
            .map(|d| ("DHT".to_owned(), d))
            .into_iter()
            .chain(routers);
        for (who, out) in answers {
            match out {
                Ok(list) => {
                    answered += 1;
                    notes.push((who, format!("{} provider(s)", list.len())));
                    for (peer, addrs) in list {
                        if peer == self.node.peer_id() {
                            continue;
                        }
                        match found.iter_mut().find(|(p, _)| *p == peer) {
                            Some((_, a)) => a.extend(addrs),
                            None => found.push((peer, addrs)),
                        }
                    }
                }
                Err(e) => notes.push((who, e)),
            }
        }
        (found, notes, answered)
    }
}

impl<H: HttpClient> FindPeers for Network<H> {
    type Peer = PeerId;

    /// None at hand: IPFS peers are the providers a lookup finds.
    fn at_hand(&self, _: &Cid) -> Vec<PeerId> {
        Vec::new()
    }

    async fn look_up(&self, cid: &Cid) -> Result<Vec<PeerId>, LookupError> {
        let (found, mut notes, answered) = self.lookup(cid).await;
        if found.is_empty() {
            return Err(LookupError {
                found: 0,
                answered,
                answers: notes,
            });
        }
        let total = found.len();
        let mut connecting = FuturesUnordered::new();
        for (peer, addrs) in found.into_iter().take(MAX_PROVIDERS) {
            let total = addrs.len();
            let addrs: Vec<Multiaddr> = addrs.into_iter().filter(self.dialable).collect();
            if total > 0 && addrs.is_empty() && self.node.peer(&peer).is_none() {
                notes.push((
                    peer.to_string(),
                    format!("none of its {total} address(es) can be dialed from here"),
                ));
                continue;
            }
            let t = self.connect_timeout;
            connecting.push(async move {
                let direct: Vec<Multiaddr> = addrs
                    .iter()
                    .filter(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
                    .cloned()
                    .collect();
                let out = match cairn_core::rt::timeout(t, self.node.connect(peer, addrs)).await {
                    Some(r) => r.map_err(|e| e.to_string()),
                    None => Err(format!("no answer within {t:?}")),
                };
                if out.is_ok() {
                    cairn_core::rt::timeout(t, self.also_direct(peer, &direct)).await;
                }
                (peer, out)
            });
        }
        let mut connected = Vec::new();
        while let Some((peer, out)) = connecting.next().await {
            match out {
                Ok(()) => connected.push(peer),
                Err(e) => notes.push((peer.to_string(), e)),
            }
        }
        if connected.is_empty() {
            return Err(LookupError {
                found: total,
                answered,
                answers: notes,
            });
        }
        tracing::debug!(%cid, providers = connected.len(), "IPFS providers");
        Ok(connected)
    }

    fn reputations(&self) -> Option<Reputations<PeerId>> {
        Some(self.node.reputations().clone())
    }
}

impl<H: HttpClient> AskPeer for Network<H> {
    type Peer = PeerId;

    async fn ask(&self, peer: &PeerId, cid: &Cid) -> Result<Bytes, PeerError> {
        let bitswap = self.node.bitswap();
        let want = bitswap.want(*peer, *cid);
        futures::pin_mut!(want);
        // Bitswap has no acknowledgement: a want that met silence is sent once more, on a
        // new stream over the best connection now (the caller's timeout bounds the whole).
        let out = match futures::future::select(
            want.as_mut(),
            Box::pin(cairn_core::rt::sleep(REWANT)),
        )
        .await
        {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right(((), _)) => {
                let relayed = self.node.peer(peer).is_none_or(|i| i.relayed);
                tracing::debug!(%peer, %cid, relayed, "no answer to a want within {REWANT:?}: asking again on a new stream");
                match bitswap.rewant(*peer, *cid).await {
                    Ok(()) => want.await,
                    Err(e) => Err(e),
                }
            }
        };
        out.map_err(|e| match e {
            WantError::DontHave => PeerError::NotFound,
            WantError::Invalid(m) => PeerError::Invalid(Reason::msg(m)),
            e => PeerError::Failed(Reason::new(e)),
        })
    }
}
