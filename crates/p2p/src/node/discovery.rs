//! Discovery: provider records in the Kademlia DHT (publishing what this node holds,
//! finding who holds a CID, and what this node's own DHT store knows), and the addresses
//! identify teaches the DHT.

use std::collections::{HashMap, VecDeque};

use cairn_core::cid::Cid;
use libp2p::swarm::Swarm;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, identify, kad};

use super::{Error, Reply};
use crate::behaviour::Behaviour;

/// The DHT key of a CID: its multihash, as IPFS keys provider records, so any codec of
/// the same bytes matches.
pub(crate) fn dht_key(cid: &Cid) -> kad::RecordKey {
    kad::RecordKey::new(&cid.hash().to_bytes())
}

/// A provider lookup in flight: the CID, the providers found so far, and who is waiting.
type FindQuery = (Cid, Vec<PeerId>, Reply<super::Lookup>);

/// Most roots kept to be announced again ([`Discovery::announce_again`]): the oldest go
/// first past that (Kademlia still republishes them with its own records).
const UNANNOUNCED_MAX: usize = 4096;

/// Announcements made again at once.
const AGAIN_AT_ONCE: usize = 16;

/// DHT queries in flight, and the roots whose announcement reached nobody.
#[derive(Default)]
pub(crate) struct Discovery {
    /// Provides in flight: the CID, and who waits for it (`None`: an announcement made
    /// again).
    provides: HashMap<kad::QueryId, (Cid, Option<Reply<()>>)>,
    finds: HashMap<kad::QueryId, FindQuery>,
    /// Roots whose last provide stored a record on no other peer (no DHT peer was known,
    /// none answered, or the query failed): provided again when a bootstrap peer joins,
    /// instead of waiting for Kademlia's republication 12 hours later.
    unannounced: Unannounced,
    /// Of those, the ones still to be provided again in this round.
    again: VecDeque<Cid>,
}

/// Roots to announce again, oldest first, at most [`UNANNOUNCED_MAX`]; each found in
/// constant time (a relay provides every pinned root, and each answer is looked up here).
#[derive(Default)]
struct Unannounced {
    by_age: std::collections::BTreeMap<u64, Cid>,
    age: HashMap<Cid, u64>,
    next: u64,
}

impl Unannounced {
    fn add(&mut self, cid: Cid) {
        if self.age.contains_key(&cid) {
            return;
        }
        self.age.insert(cid, self.next);
        self.by_age.insert(self.next, cid);
        self.next += 1;
        if self.age.len() > UNANNOUNCED_MAX
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.age.remove(&oldest);
        }
    }

    fn remove(&mut self, cid: &Cid) {
        if let Some(at) = self.age.remove(cid) {
            self.by_age.remove(&at);
        }
    }

    fn oldest_first(&self) -> VecDeque<Cid> {
        self.by_age.values().copied().collect()
    }
}

fn dht_error(
    op: &'static str,
    cid: Cid,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Dht {
        op,
        cid: Box::new(cid),
        source: cairn_core::Reason::new(e),
    }
}

impl Discovery {
    /// Publishes a provider record for `cid`; `reply` hears once it is stored somewhere.
    pub(crate) fn provide(&mut self, swarm: &mut Swarm<Behaviour>, cid: Cid, reply: Reply<()>) {
        match swarm.behaviour_mut().kad.start_providing(dht_key(&cid)) {
            Ok(q) => {
                self.provides.insert(q, (cid, Some(reply)));
            }
            Err(e) => {
                let _ = reply.send(Err(dht_error("provide", cid, e)));
            }
        }
    }

    /// A bootstrap peer joined: the roots whose announcement reached nobody are provided
    /// again, [`AGAIN_AT_ONCE`] at a time.
    pub(crate) fn announce_again(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.unannounced.age.is_empty() {
            return;
        }
        tracing::info!(
            roots = self.unannounced.age.len(),
            "announcing again what reached no DHT peer"
        );
        self.again = self.unannounced.oldest_first();
        self.next_again(swarm);
    }

    /// Starts announcements of [`Self::again`] while fewer than [`AGAIN_AT_ONCE`] run.
    fn next_again(&mut self, swarm: &mut Swarm<Behaviour>) {
        let mut running = self.provides.values().filter(|(_, r)| r.is_none()).count();
        while running < AGAIN_AT_ONCE {
            let Some(cid) = self.again.pop_front() else {
                return;
            };
            if let Ok(q) = swarm.behaviour_mut().kad.start_providing(dht_key(&cid)) {
                self.provides.insert(q, (cid, None));
                running += 1;
            }
        }
    }

    /// Asks the DHT who provides `cid`; each provider is dialed as the query finds it.
    pub(crate) fn find(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        cid: Cid,
        reply: Reply<super::Lookup>,
    ) {
        let q = swarm.behaviour_mut().kad.get_providers(dht_key(&cid));
        self.finds.insert(q, (cid, Vec::new(), reply));
    }

    /// Provider records for `cid` in this node's own DHT store, with addresses.
    pub(crate) fn local(swarm: &mut Swarm<Behaviour>, cid: &Cid) -> Vec<(PeerId, Vec<Multiaddr>)> {
        use libp2p::kad::store::RecordStore;
        let me = *swarm.local_peer_id();
        swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .providers(&dht_key(cid))
            .into_iter()
            .filter(|r| r.provider != me)
            .map(|r| (r.provider, r.addresses))
            .collect()
    }

    pub(crate) fn on_kad(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: kad::Event,
        emitter: &super::events::Emitter,
    ) {
        use libp2p::kad::store::RecordStore;
        if let kad::Event::InboundRequest { request } = event {
            match request {
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => {
                    let provider = record.provider;
                    let key = record.key.to_vec();
                    let stored = swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                        .is_ok();
                    emitter.emit(super::Event::ProviderRecord {
                        provider,
                        key,
                        stored,
                    });
                }
                kad::InboundRequest::PutRecord {
                    record: Some(record),
                    ..
                } => {
                    if let Err(e) = swarm.behaviour_mut().kad.store_mut().put(record) {
                        tracing::debug!(error = %e, "DHT value record not stored");
                    }
                }
                _ => {}
            }
            return;
        }
        let kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            stats,
        } = event
        else {
            return;
        };
        match result {
            kad::QueryResult::StartProviding(out) => {
                if let Some((cid, reply)) = self.provides.remove(&id) {
                    // Kademlia sends the record to the closest peers that answered: none
                    // answered, none has it.
                    if out.is_ok() && stats.num_successes() > 0 {
                        self.unannounced.remove(&cid);
                    } else {
                        self.unannounced.add(cid);
                    }
                    if let Some(reply) = reply {
                        let _ =
                            reply.send(out.map(|_| ()).map_err(|e| dht_error("provide", cid, e)));
                    }
                    self.next_again(swarm);
                }
            }
            kad::QueryResult::GetProviders(out) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &out
                    && let Some((_, found, _)) = self.finds.get_mut(&id)
                {
                    for p in providers {
                        if *p == *swarm.local_peer_id() || found.contains(p) {
                            continue;
                        }
                        found.push(*p);
                        // Dial now, while the query still holds the addresses the record
                        // carried (they are forgotten when it ends).
                        let opts = DialOpts::peer_id(*p)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(e) = swarm.dial(opts) {
                            tracing::debug!(peer = %p, error = %e, "cannot dial provider");
                        }
                    }
                    // A record holder answered with providers: that answer is the lookup's
                    // (each record holder keeps every provider it was told of), so the query
                    // ends here instead of asking the rest of the k closest peers.
                    if !found.is_empty()
                        && !step.last
                        && let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id)
                    {
                        q.finish();
                    }
                }
                if step.last
                    && let Some((cid, found, reply)) = self.finds.remove(&id)
                {
                    // Peers were asked and none answered (the relay went away, say): that
                    // is no answer, not an answer of none. With no peer to ask at all,
                    // nobody known has it.
                    let unanswered =
                        found.is_empty() && stats.num_requests() > 0 && stats.num_successes() == 0;
                    let lookup = super::Lookup {
                        providers: found,
                        requests: stats.num_requests(),
                        answered: stats.num_successes(),
                    };
                    let _ = reply.send(if unanswered {
                        Err(Error::Dht {
                            op: "find providers",
                            cid: Box::new(cid),
                            source: cairn_core::Reason::msg(format!(
                                "none of the {} DHT peer(s) asked answered",
                                stats.num_requests()
                            )),
                        })
                    } else {
                        Ok(lookup)
                    });
                }
            }
            _ => {}
        }
    }

    /// Identify told `peer`'s listen addresses: the swarm may dial them, and the DHT keeps
    /// them when the peer serves it.
    pub(crate) fn on_identify(swarm: &mut Swarm<Behaviour>, peer: PeerId, info: &identify::Info) {
        let dht = info.protocols.contains(&kad::PROTOCOL_NAME);
        for a in info.listen_addrs.iter().take(16) {
            if dht {
                swarm.behaviour_mut().kad.add_address(&peer, a.clone());
            }
            swarm.add_peer_address(peer, a.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_cid as cid;

    /// At most 4,096 roots are kept, the oldest dropped first; one announced is forgotten,
    /// one added twice is kept once, and the rest come back oldest first.
    #[test]
    fn unannounced_roots_are_bounded_and_oldest_first() {
        let mut u = Unannounced::default();
        for i in 0..=UNANNOUNCED_MAX as u32 {
            u.add(cid(i));
        }
        u.add(cid(5));
        assert_eq!(u.age.len(), UNANNOUNCED_MAX);
        u.remove(&cid(2));
        let order = u.oldest_first();
        assert_eq!(order.len(), UNANNOUNCED_MAX - 1);
        assert_eq!(order[0], cid(1), "the oldest (0) went, and 2 was announced");
        assert_eq!(order[1], cid(3));
        assert_eq!(order.iter().filter(|c| **c == cid(5)).count(), 1);
        assert_eq!(order.back(), Some(&cid(UNANNOUNCED_MAX as u32)));
    }
}
