//! The DHT's record store, with bounds a stranger cannot push past.
//!
//! libp2p's `MemoryStore` caps provider records at 1,024 *keys in total*, shared by every
//! peer and by the node's own records, and forgets an expired record only when someone asks
//! for its key: one peer announcing 1,024 made-up CIDs would stop a relay from taking any
//! other record (its own included) for as long as the records live. This store keeps
//! provider records itself, bounded [per providing peer](Limits::per_provider) and
//! [in total](Limits::total_providers), with at most [`Limits::addresses`] addresses each; expired records
//! are swept when the store is full. The node's own records (what it provides) are never
//! refused. Value records (`PUT_VALUE`, which cairn does not use) go to a `MemoryStore` with
//! small bounds.
//!
//! A record for a peer other than the one sending it never gets here: Kademlia drops it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, hash_map};
use std::time::Duration;

use cairn_core::rt::Instant;
use libp2p::PeerId;
use libp2p::kad::store::{Error, MemoryStore, MemoryStoreConfig, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

/// How much the store takes from other peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Provider records held for one providing peer (one per key it provides).
    pub per_provider: usize,
    /// Provider records held for all other peers together.
    pub total_providers: usize,
    /// Providers kept for one key (more are ignored, as Kademlia's own store does: its
    /// replication factor, 20).
    pub providers_per_key: usize,
    /// Addresses kept per provider record (the rest are dropped).
    pub addresses: usize,
    /// Value records held (cairn does not use them; IPFS puts IPNS records there).
    pub values: usize,
    /// The largest value record taken, in bytes.
    pub value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_provider: 4096,
            total_providers: 65_536,
            providers_per_key: 20,
            addresses: 8,
            values: 1024,
            value_bytes: 4096,
        }
    }
}

/// How often, at most, a full store looks for expired records to make room.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The bounded store (see the module's documentation).
pub struct Bounded {
    me: PeerId,
    limits: Limits,
    values: MemoryStore,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Records held per providing peer (others only).
    per_provider: HashMap<PeerId, usize>,
    /// Records held for others, in total.
    others: usize,
    /// This node's own records (republished by Kademlia).
    provided: HashSet<ProviderRecord>,
    last_sweep: Option<Instant>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("limits", &self.limits)
            .field("keys", &self.providers.len())
            .field("others", &self.others)
            .field("provided", &self.provided.len())
            .finish_non_exhaustive()
    }
}

impl Bounded {
    /// A store for the node `me`.
    pub fn new(me: PeerId, limits: Limits) -> Self {
        let values = MemoryStore::with_config(
            me,
            MemoryStoreConfig {
                max_records: limits.values,
                max_value_bytes: limits.value_bytes,
                ..Default::default()
            },
        );
        Self {
            me,
            limits,
            values,
            providers: HashMap::new(),
            per_provider: HashMap::new(),
            others: 0,
            provided: HashSet::new(),
            last_sweep: None,
        }
    }

    /// Provider records held for other peers.
    pub fn others(&self) -> usize {
        self.others
    }

    fn forget(&mut self, provider: &PeerId) {
        if *provider == self.me {
            return;
        }
        self.others = self.others.saturating_sub(1);
        if let hash_map::Entry::Occupied(mut e) = self.per_provider.entry(*provider) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Drops expired records of other peers (at most once per [`SWEEP_EVERY`]).
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let mut gone = Vec::new();
        self.providers.retain(|_, records| {
            records.retain(|r| {
                let keep = !r.is_expired(now) || r.provider == self.me;
                if !keep {
                    gone.push(r.provider);
                }
                keep
            });
            !records.is_empty()
        });
        for p in gone {
            self.forget(&p);
        }
    }
}

impl RecordStore for Bounded {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_set::Iter<'a, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.values.get(k)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        self.values.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.values.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.values.records()
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> Result<()> {
        let mine = record.provider == self.me;
        if mine {
            self.provided.replace(record.clone());
        } else {
            record.addresses.truncate(self.limits.addresses);
        }
        if let Some(existing) = self
            .providers
            .get_mut(&record.key)
            .and_then(|rs| rs.iter_mut().find(|r| r.provider == record.provider))
        {
            // Renewed: it takes nothing more.
            *existing = record;
            return Ok(());
        }
        if !mine {
            if self
                .providers
                .get(&record.key)
                .is_some_and(|rs| rs.len() >= self.limits.providers_per_key)
            {
                // Enough providers of this key are known: ignored, as Kademlia does.
                return Ok(());
            }
            if self.others >= self.limits.total_providers {
                self.sweep(Instant::now());
            }
            if self
                .per_provider
                .get(&record.provider)
                .copied()
                .unwrap_or(0)
                >= self.limits.per_provider
            {
                tracing::debug!(peer = %record.provider, "provider record refused: the peer is at its limit");
                return Err(Error::MaxProvidedKeys);
            }
            if self.others >= self.limits.total_providers {
                tracing::debug!(peer = %record.provider, "provider record refused: the store is full");
                return Err(Error::MaxProvidedKeys);
            }
            self.others += 1;
            *self.per_provider.entry(record.provider).or_default() += 1;
        }
        self.providers
            .entry(record.key.clone())
            .or_default()
            .push(record);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.get(key).cloned().unwrap_or_default()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.provided.iter().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        let hash_map::Entry::Occupied(mut e) = self.providers.entry(key.clone()) else {
            return;
        };
        let before = e.get().len();
        e.get_mut().retain(|r| r.provider != *provider);
        let removed = before != e.get().len();
        if e.get().is_empty() {
            e.remove();
        }
        if *provider == self.me {
            self.provided.retain(|r| r.key != *key);
        } else if removed {
            self.forget(provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::Multiaddr;

    fn key(n: u32) -> RecordKey {
        RecordKey::new(&n.to_be_bytes())
    }

    fn record(n: u32, provider: PeerId, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            key: key(n),
            provider,
            expires,
            addresses: Vec::new(),
        }
    }

    fn small() -> Limits {
        Limits {
            per_provider: 3,
            total_providers: 5,
            providers_per_key: 2,
            addresses: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn one_peer_cannot_take_more_than_its_share_nor_crowd_out_others() {
        let me = PeerId::random();
        let (flood, other) = (PeerId::random(), PeerId::random());
        let mut s = Bounded::new(me, small());
        for n in 0..3 {
            s.add_provider(record(n, flood, None)).unwrap();
        }
        assert!(matches!(
            s.add_provider(record(3, flood, None)),
            Err(Error::MaxProvidedKeys)
        ));
        // Renewing a record it has is fine; another peer still gets in.
        s.add_provider(record(0, flood, None)).unwrap();
        s.add_provider(record(10, other, None)).unwrap();
        s.add_provider(record(11, other, None)).unwrap();
        assert_eq!(s.others(), 5);
        // Full in total now: a third peer is refused; the node's own records never are.
        let third = PeerId::random();
        assert!(s.add_provider(record(20, third, None)).is_err());
        for n in 100..200 {
            s.add_provider(record(n, me, None)).unwrap();
        }
        assert_eq!(s.provided().count(), 100);
        assert_eq!(s.providers(&key(150)).len(), 1);
        // Removing one frees its place.
        s.remove_provider(&key(10), &other);
        assert_eq!(s.others(), 4);
        s.add_provider(record(20, third, None)).unwrap();
    }

    #[test]
    fn a_full_store_sweeps_expired_records_to_make_room() {
        let me = PeerId::random();
        let mut s = Bounded::new(me, small());
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        for (n, p) in (0..5).map(|n| (n, PeerId::random())) {
            s.add_provider(record(n, p, past)).unwrap();
        }
        assert_eq!(s.others(), 5);
        s.add_provider(record(9, PeerId::random(), None)).unwrap();
        assert_eq!(s.others(), 1, "the five expired records were swept");
        assert!(s.providers(&key(0)).is_empty());
    }

    #[test]
    fn keys_keep_a_bounded_number_of_providers_and_records_few_addresses() {
        let me = PeerId::random();
        let mut s = Bounded::new(me, small());
        let addrs: Vec<Multiaddr> = (1..=5)
            .map(|i| format!("/ip4/198.51.100.{i}/tcp/4001").parse().unwrap())
            .collect();
        let mut r = record(1, PeerId::random(), None);
        r.addresses = addrs;
        s.add_provider(r).unwrap();
        s.add_provider(record(1, PeerId::random(), None)).unwrap();
        s.add_provider(record(1, PeerId::random(), None)).unwrap(); // ignored
        let held = s.providers(&key(1));
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].addresses.len(), 2);
        assert_eq!(s.others(), 2);
    }
}
