//! Choosing which peers to ask first: per-peer reputation records and ordering strategies.
//!
//! A [`Reputation`] tracks a peer's latency (moving average), how often it answered, missed,
//! failed or lied, a trust factor that lies cut sharply, and optionally a bloom filter of the
//! CIDs the peer says it holds ([`ContentIndex`]). A [`RoutingStrategy`] orders candidates;
//! [`Scored`] combines all of these and leaves out peers whose trust is spent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::Peer;
use crate::CondSync;
use crate::cid::Cid;

/// A bloom filter of CIDs: what a node holds, in about 1.2 bytes per CID at a 1%
/// false-positive rate. Its bits travel in `/cas` `caps` answers, so the layout is fixed
/// (see `docs/protocol.md`):
///
/// - a CID's key is SHA-256 of its multihash (so the same bytes under another codec match);
///   `h1` and `h2` are that key's first and second 8 bytes as little-endian integers, `h2`
///   with its lowest bit set;
/// - with `m` bits (8 × the byte length), the CID sets bits `(h1 + i·h2) mod m` for
///   `i` in `0..k` (wrapping 64-bit arithmetic); bit `j` is bit `j % 8`, counted from the
///   least significant, of byte `j / 8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentIndex {
    k: u8,
    bits: Vec<u8>,
}

/// Why bloom bits from a peer are not a [`ContentIndex`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid content index: {0}")]
pub struct IndexError(&'static str);

impl ContentIndex {
    /// Largest filter, in bytes (about 870 000 CIDs at 1%).
    pub const MAX_BYTES: usize = 1 << 20;
    /// Hash functions per CID.
    pub const K: u8 = 7;

    /// An empty index sized for about `expected` CIDs at a 1% false-positive rate (the rate
    /// grows past [`Self::MAX_BYTES`]).
    pub fn new(expected: usize) -> Self {
        let bits = (expected.max(16) as f64 * 9.6).ceil() as usize;
        Self {
            k: Self::K,
            bits: vec![0; bits.div_ceil(8).min(Self::MAX_BYTES)],
        }
    }

    /// An index from a peer's `k` and bits, checked: `k` in 1..=16, 1 to
    /// [`Self::MAX_BYTES`] bytes.
    pub fn from_parts(k: u8, bits: Vec<u8>) -> Result<Self, IndexError> {
        if !(1..=16).contains(&k) {
            return Err(IndexError("k must be between 1 and 16"));
        }
        if bits.is_empty() || bits.len() > Self::MAX_BYTES {
            return Err(IndexError("the filter must have 1 byte to 1 MiB"));
        }
        Ok(Self { k, bits })
    }

    /// Hash functions per CID.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// The filter's bits.
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }

    fn positions(&self, cid: &Cid) -> impl Iterator<Item = usize> + use<> {
        use sha2::Digest;
        let key = sha2::Sha256::digest(cid.hash().to_bytes());
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let (h1, h2) = (word(0), word(8) | 1);
        let m = self.bits.len() as u64 * 8;
        (0..u64::from(self.k)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    /// Adds a CID.
    pub fn insert(&mut self, cid: &Cid) {
        for j in self.positions(cid) {
            self.bits[j / 8] |= 1 << (j % 8);
        }
    }

    /// `false` means certainly absent; `true` means probably present.
    pub fn may_contain(&self, cid: &Cid) -> bool {
        self.positions(cid)
            .all(|j| self.bits[j / 8] & (1 << (j % 8)) != 0)
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
///
/// A table made with [`Reputations::tracking`] keeps records only for peers it was told
/// are present ([`Reputations::admit`]) and drops a peer's record ([`Reputations::forget`])
/// when it leaves: a node keeps no state for peers it saw once, however many come and go.
/// Results that arrive for a peer after it left are ignored.
#[derive(Debug)]
pub struct Reputations<P>(Arc<Mutex<Table<P>>>);

#[derive(Debug)]
struct Table<P> {
    records: HashMap<P, Reputation>,
    tracking: bool,
}

impl<P> Clone for Reputations<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P: Peer> Default for Reputations<P> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Table {
            records: HashMap::new(),
            tracking: false,
        })))
    }
}

impl<P: Peer> Reputations<P> {
    /// A table that records any peer it hears of (for a fixed set of peers).
    pub fn new() -> Self {
        Self::default()
    }

    /// A table that records only admitted peers, until they are forgotten.
    pub fn tracking() -> Self {
        let t = Self::default();
        t.lock().tracking = true;
        t
    }

    fn lock(&self) -> MutexGuard<'_, Table<P>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, peer: &P, f: impl FnOnce(&mut Reputation)) {
        let mut t = self.lock();
        if t.tracking {
            if let Some(r) = t.records.get_mut(peer) {
                f(r);
            }
        } else {
            f(t.records.entry(peer.clone()).or_default());
        }
    }

    /// Starts keeping a record for `peer` (a tracking table ignores peers not admitted).
    pub fn admit(&self, peer: &P) {
        self.lock().records.entry(peer.clone()).or_default();
    }

    /// Forgets a peer: its record and content index are dropped.
    pub fn forget(&self, peer: &P) {
        self.lock().records.remove(peer);
    }

    /// How many peers have a record.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether no peer has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one peer's record.
    pub fn get(&self, peer: &P) -> Reputation {
        self.lock().records.get(peer).cloned().unwrap_or_default()
    }

    /// Records a served block and its latency.
    pub fn record_success(&self, peer: &P, latency: Duration) {
        self.update(peer, |r| {
            r.successes += 1;
            r.latency = Some(match r.latency {
                // Exponential moving average, weight 1/4 on the new sample.
                Some(old) => (old * 3 + latency) / 4,
                None => latency,
            });
        });
    }
    /// Records a "not found".
    pub fn record_miss(&self, peer: &P) {
        self.update(peer, |r| r.misses += 1);
    }
    /// Records a failure or timeout.
    pub fn record_failure(&self, peer: &P) {
        self.update(peer, |r| r.failures += 1);
    }
    /// Records wrong bytes.
    pub fn record_lie(&self, peer: &P) {
        self.update(peer, |r| r.lies += 1);
    }
    /// Sets what a peer says it holds.
    pub fn set_index(&self, peer: &P, index: ContentIndex) {
        self.update(peer, |r| r.index = Some(index));
    }

    /// Notes that `peer` now holds `cid` (it announced it), in the index it sent earlier.
    /// A peer without an index needs none: it is not ranked down for lacking anything.
    pub fn note_held(&self, peer: &P, cid: &Cid) {
        if let Some(ix) = self
            .lock()
            .records
            .get_mut(peer)
            .and_then(|r| r.index.as_mut())
        {
            ix.insert(cid);
        }
    }
}

/// Orders the candidate peers for a CID, best first; peers left out are not asked.
pub trait RoutingStrategy: CondSync {
    /// The peers to ask, best first.
    fn order<P: Peer>(&self, cid: &Cid, candidates: &[P], reputations: &Reputations<P>) -> Vec<P>;
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
    fn order<P: Peer>(&self, cid: &Cid, candidates: &[P], reputations: &Reputations<P>) -> Vec<P> {
        let mut scored: Vec<(f64, P)> = candidates
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
    fn order<P: Peer>(&self, _: &Cid, candidates: &[P], _: &Reputations<P>) -> Vec<P> {
        candidates.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{Codec, HashAlg, of};

    #[test]
    fn the_index_layout_is_the_documented_one() {
        // Worked out independently (Python's hashlib) from the rules in the type's docs:
        // key = SHA-256(0x1220 ‖ SHA-256("a")), m = 64, k = 3.
        let mut ix = ContentIndex::from_parts(3, vec![0; 8]).unwrap();
        let cid = of(Codec::Raw, HashAlg::Sha2_256, b"a");
        ix.insert(&cid);
        assert_eq!(ix.bits(), [0, 0, 0, 0, 0, 0x38, 0, 0]);
        // Keyed by the multihash: the same bytes as dag-pb match too.
        assert!(ix.may_contain(&of(Codec::DagPb, HashAlg::Sha2_256, b"a")));
    }

    #[test]
    fn the_index_has_no_false_negatives_and_few_false_positives() {
        let mut ix = ContentIndex::new(10_000);
        let held: Vec<Cid> = (0..10_000u32)
            .map(|i| of(Codec::Raw, HashAlg::Blake3, &i.to_le_bytes()))
            .collect();
        for c in &held {
            ix.insert(c);
        }
        assert!(held.iter().all(|c| ix.may_contain(c)));
        let false_positives = (10_000..20_000u32)
            .filter(|i| ix.may_contain(&of(Codec::Raw, HashAlg::Blake3, &i.to_le_bytes())))
            .count();
        assert!(false_positives < 200, "{false_positives} of 10000");
        assert!(ix.bits().len() < 13_000, "{} bytes", ix.bits().len());
    }

    #[test]
    fn index_parts_from_a_peer_are_checked() {
        assert!(ContentIndex::from_parts(0, vec![0; 8]).is_err());
        assert!(ContentIndex::from_parts(17, vec![0; 8]).is_err());
        assert!(ContentIndex::from_parts(7, Vec::new()).is_err());
        assert!(ContentIndex::from_parts(7, vec![0; ContentIndex::MAX_BYTES + 1]).is_err());
        let huge = ContentIndex::new(usize::MAX / 16);
        assert_eq!(huge.bits().len(), ContentIndex::MAX_BYTES);
    }

    #[test]
    fn scored_prefers_fast_honest_peers_with_the_content() {
        let cid = of(Codec::Raw, HashAlg::Sha2_256, b"x");
        let other = of(Codec::Raw, HashAlg::Sha2_256, b"y");
        let reps = Reputations::new();
        let (fast, slow, liar, hinted, lacking) = ("fast", "slow", "liar", "hinted", "lacking");
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
        let all = [lacking, slow, liar, fast, hinted];
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

#[cfg(test)]
mod tracking_tests {
    use super::*;

    #[test]
    fn a_tracking_table_keeps_only_present_peers() {
        let t = Reputations::tracking();
        t.record_success(&"gone", Duration::from_millis(5));
        assert!(t.is_empty(), "a result for a peer not admitted is ignored");
        t.admit(&"here");
        t.set_index(&"here", ContentIndex::new(10));
        t.record_lie(&"here");
        assert_eq!(t.get(&"here").lies, 1);
        assert_eq!(t.len(), 1);
        t.forget(&"here");
        assert!(t.is_empty());
        t.record_miss(&"here");
        assert!(t.is_empty(), "nothing comes back after the peer left");
    }
}
