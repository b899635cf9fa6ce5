//! Choosing which peers to ask first: per-peer reputation records and ordering strategies.
//!
//! A [`Reputation`] tracks a peer's latency (moving average), how often it answered, missed,
//! failed or lied, a trust factor that lies cut sharply, and optionally a bloom filter of the
//! CIDs the peer says it holds ([`ContentIndex`]). A [`RoutingStrategy`] orders candidates;
//! [`Scored`] combines all of these and leaves out peers whose trust is spent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use growable_bloom_filter::GrowableBloom;

use super::PeerKey;
use crate::CondSync;
use crate::cid::Cid;

/// A bloom filter of CIDs: what a node holds, in a few bytes per CID.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentIndex(GrowableBloom);

impl ContentIndex {
    /// An empty index sized for about `expected` CIDs at a 1% false-positive rate.
    pub fn new(expected: usize) -> Self {
        Self(GrowableBloom::new(0.01, expected.max(16)))
    }
    /// Adds a CID.
    pub fn insert(&mut self, cid: &Cid) {
        self.0.insert(cid.hash().digest());
    }
    /// `false` means certainly absent; `true` means probably present.
    pub fn may_contain(&self, cid: &Cid) -> bool {
        self.0.contains(cid.hash().digest())
    }
    /// The underlying filter.
    pub fn filter(&self) -> &GrowableBloom {
        &self.0
    }
}

/// What we have seen of one peer.
#[derive(Debug, Clone, Default)]
pub struct Reputation {
    /// Blocks it served.
    pub successes: u64,
    /// Requests it answered "not found".
    pub misses: u64,
    /// Requests that failed or timed out.
    pub failures: u64,
    /// Times it sent bytes that did not match the CID.
    pub lies: u64,
    /// Moving average of its successful response time.
    pub latency: Option<Duration>,
    /// What it says it holds.
    pub index: Option<ContentIndex>,
}

impl Reputation {
    /// 1.0 for a peer that never lied; each lie divides it by ten.
    pub fn trust(&self) -> f64 {
        0.1f64.powi(i32::try_from(self.lies).unwrap_or(i32::MAX))
    }

    /// Laplace-smoothed share of requests that succeeded.
    pub fn success_rate(&self) -> f64 {
        (self.successes as f64 + 1.0)
            / ((self.successes + self.failures + self.misses) as f64 + 2.0)
    }
}

/// A shared table of reputations, keyed by peer.
#[derive(Debug, Clone, Default)]
pub struct Reputations(Arc<Mutex<HashMap<PeerKey, Reputation>>>);

impl Reputations {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerKey, Reputation>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of one peer's record.
    pub fn get(&self, peer: &PeerKey) -> Reputation {
        self.lock().get(peer).cloned().unwrap_or_default()
    }

    /// Records a served block and its latency.
    pub fn record_success(&self, peer: &PeerKey, latency: Duration) {
        let mut t = self.lock();
        let r = t.entry(peer.clone()).or_default();
        r.successes += 1;
        r.latency = Some(match r.latency {
            // Exponential moving average, weight 1/4 on the new sample.
            Some(old) => (old * 3 + latency) / 4,
            None => latency,
        });
    }
    /// Records a "not found".
    pub fn record_miss(&self, peer: &PeerKey) {
        self.lock().entry(peer.clone()).or_default().misses += 1;
    }
    /// Records a failure or timeout.
    pub fn record_failure(&self, peer: &PeerKey) {
        self.lock().entry(peer.clone()).or_default().failures += 1;
    }
    /// Records wrong bytes.
    pub fn record_lie(&self, peer: &PeerKey) {
        self.lock().entry(peer.clone()).or_default().lies += 1;
    }
    /// Sets what a peer says it holds.
    pub fn set_index(&self, peer: &PeerKey, index: ContentIndex) {
        self.lock().entry(peer.clone()).or_default().index = Some(index);
    }
    /// Forgets a peer.
    pub fn remove(&self, peer: &PeerKey) {
        self.lock().remove(peer);
    }
}

/// Orders the candidate peers for a CID, best first; peers left out are not asked.
pub trait RoutingStrategy: CondSync {
    /// The peers to ask, best first.
    fn order(&self, cid: &Cid, candidates: &[PeerKey], reputations: &Reputations) -> Vec<PeerKey>;
}

/// Scores peers by trust × success rate × latency, with a bloom-filter hint; drops peers
/// whose trust fell below `min_trust`.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Peers below this trust are not asked (the default drops a peer after two lies).
    pub min_trust: f64,
}

impl Default for Scored {
    fn default() -> Self {
        Self { min_trust: 0.05 }
    }
}

impl Scored {
    /// A peer's score for `cid` (higher is better).
    pub fn score(&self, cid: &Cid, r: &Reputation) -> f64 {
        let latency_ms = r.latency.map_or(100.0, |l| l.as_secs_f64() * 1000.0);
        let hint = match &r.index {
            Some(ix) if ix.may_contain(cid) => 4.0,
            Some(_) => 0.05,
            None => 1.0,
        };
        r.trust() * r.success_rate() * hint / (1.0 + latency_ms / 50.0)
    }
}

impl RoutingStrategy for Scored {
    fn order(&self, cid: &Cid, candidates: &[PeerKey], reputations: &Reputations) -> Vec<PeerKey> {
        let mut scored: Vec<(f64, PeerKey)> = candidates
            .iter()
            .map(|p| (reputations.get(p), p))
            .filter(|(r, _)| r.trust() >= self.min_trust)
            .map(|(r, p)| (self.score(cid, &r), p.clone()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, p)| p).collect()
    }
}

/// Asks peers in the order given, all of them: no reputation, no hints.
#[derive(Debug, Clone, Copy, Default)]
pub struct InOrder;

impl RoutingStrategy for InOrder {
    fn order(&self, _: &Cid, candidates: &[PeerKey], _: &Reputations) -> Vec<PeerKey> {
        candidates.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{Codec, HashAlg, of};

    #[test]
    fn scored_prefers_fast_honest_peers_with_the_content() {
        let cid = of(Codec::Raw, HashAlg::Sha2_256, b"x");
        let other = of(Codec::Raw, HashAlg::Sha2_256, b"y");
        let reps = Reputations::default();
        let (fast, slow, liar, hinted, lacking) = (
            PeerKey::new("fast"),
            PeerKey::new("slow"),
            PeerKey::new("liar"),
            PeerKey::new("hinted"),
            PeerKey::new("lacking"),
        );
        reps.record_success(&fast, Duration::from_millis(5));
        reps.record_success(&slow, Duration::from_millis(500));
        reps.record_success(&liar, Duration::from_millis(1));
        reps.record_lie(&liar);
        reps.record_lie(&liar);
        let mut has = ContentIndex::new(10);
        has.insert(&cid);
        reps.set_index(&hinted, has);
        let mut lacks = ContentIndex::new(10);
        lacks.insert(&other);
        reps.set_index(&lacking, lacks);
        let all = [&lacking, &slow, &liar, &fast, &hinted].map(Clone::clone);
        let order = Scored::default().order(&cid, &all, &reps);
        assert_eq!(order[0], hinted, "{order:?}");
        assert_eq!(order[1], fast, "{order:?}");
        assert!(
            !order.contains(&liar),
            "twice-lying peer dropped: {order:?}"
        );
        assert_eq!(order.last(), Some(&lacking), "{order:?}");
        assert_eq!(InOrder.order(&cid, &all, &reps).len(), 5);
    }
}
