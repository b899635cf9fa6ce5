//! The bytes of answers a node holds for the peers it serves, bounded per asker and in total.
//!
//! Every serving path (`/cas` answers, bitswap blocks, the relay's HTTP gateway) reserves
//! the bytes of an answer here before it builds it and holds the [`Permit`] until the answer
//! has been handed to the connection; dropping the permit gives the bytes back. An asker
//! that does not read its answers therefore holds at most [`Caps::per_asker`] bytes of this
//! node's memory, and all askers together at most [`Caps::total`]: past those, `/cas`
//! answers `busy`, bitswap stops reading the asker's wantlists until its queue drains, and
//! the gateway answers 503. A path that sees an asker stop reading for
//! [`Caps::stall_timeout`] cuts it ([`Budget::record_cut`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libp2p::PeerId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Who an answer is for: a libp2p peer, or an HTTP client by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asker {
    /// A peer asking over `/cas` or bitswap.
    Peer(PeerId),
    /// An HTTP client.
    Ip(IpAddr),
}

impl From<PeerId> for Asker {
    fn from(p: PeerId) -> Self {
        Asker::Peer(p)
    }
}

impl From<IpAddr> for Asker {
    fn from(ip: IpAddr) -> Self {
        Asker::Ip(ip)
    }
}

/// The serving path an answer takes (a label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Path {
    /// `cas`, `bitswap` or `http`.
    pub path: &'static str,
}

/// `/cas` answers.
pub const CAS: Path = Path { path: "cas" };
/// Bitswap blocks.
pub const BITSWAP: Path = Path { path: "bitswap" };
/// The HTTP gateway's bodies.
pub const HTTP: Path = Path { path: "http" };

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Answer bytes held for one asker.
    pub per_asker: usize,
    /// Answer bytes held for all askers together.
    pub total: usize,
    /// How long an answer may make no progress (the asker reads nothing) before the asker
    /// is cut.
    pub stall_timeout: Duration,
    /// Bytes of blocks sent to peers per second, to all of them together (`/cas` answers
    /// and bitswap blocks; `None`: no cap). Each answer waits for its bytes before it is
    /// written ([`Budget::pace`]).
    pub serve_rate: Option<cairn_core::transfer::Rate>,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            per_asker: 32 * 1024 * 1024,
            total: 128 * 1024 * 1024,
            stall_timeout: Duration::from_secs(20),
            serve_rate: None,
        }
    }
}

impl Caps {
    /// Checks that the caps make sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.per_asker < MIN_PER_ASKER {
            return Err(format!(
                "the per-asker answer cap ({} bytes) is below {MIN_PER_ASKER} bytes, the largest block plus its framing: no block could be served",
                self.per_asker
            ));
        }
        if self.total < self.per_asker {
            return Err(format!(
                "the total answer cap ({} bytes) is below the per-asker cap ({} bytes)",
                self.total, self.per_asker
            ));
        }
        if self.stall_timeout.is_zero() {
            return Err("the stall timeout must be more than 0 s".into());
        }
        Ok(())
    }
}

/// The smallest per-asker cap: one largest block (2 MiB) and its framing.
pub const MIN_PER_ASKER: usize = cairn_core::MAX_BLOCK_SIZE + 64 * 1024;

#[derive(Default)]
struct State {
    used: usize,
    by_asker: HashMap<Asker, usize>,
}

struct Inner {
    caps: Caps,
    /// The serve rate's bucket (no buckets: no cap).
    serve: cairn_core::transfer::Throttle,
    state: Mutex<State>,
    freed: tokio::sync::Notify,
    queued: Family<Path, Gauge>,
    cut: Family<Path, Counter>,
}

/// The shared budget; cheap to clone.
#[derive(Clone)]
pub struct Budget(Arc<Inner>);

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Budget")
            .field("caps", &self.0.caps)
            .field("used", &s.used)
            .field("askers", &s.by_asker.len())
            .finish()
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(Caps::default())
    }
}

impl Budget {
    /// A budget with `caps`.
    pub fn new(caps: Caps) -> Self {
        Self(Arc::new(Inner {
            caps,
            serve: cairn_core::transfer::Throttle::new(
                caps.serve_rate
                    .map(|r| Arc::new(cairn_core::transfer::Bucket::new(r))),
            ),
            state: Mutex::default(),
            freed: tokio::sync::Notify::new(),
            queued: Family::default(),
            cut: Family::default(),
        }))
    }

    /// Registers the gauge of bytes held (`cairn_answer_bytes_queued{path}`) and the counter
    /// of askers cut (`cairn_askers_cut_total{path}`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let cairn = registry.sub_registry_with_prefix("cairn");
        cairn.register(
            "answer_bytes_queued",
            "bytes of answers built for peers and not yet handed to their connections",
            self.0.queued.clone(),
        );
        cairn.register(
            "askers_cut",
            "peers and HTTP clients cut because they stopped reading their answers",
            self.0.cut.clone(),
        );
    }

    /// Waits until `bytes` more may be sent under [`Caps::serve_rate`] (at once without a
    /// cap), and takes them.
    pub async fn pace(&self, bytes: usize) {
        self.0.serve.acquire(bytes as u64).await;
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.0.caps
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes held for everyone.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Bytes held for `asker`.
    pub fn used_by(&self, asker: impl Into<Asker>) -> usize {
        self.lock()
            .by_asker
            .get(&asker.into())
            .copied()
            .unwrap_or(0)
    }

    /// Reserves up to `want` bytes for `asker`: as many as the caps leave, if that is at
    /// least `at_least` (and at least 1); otherwise nothing.
    pub fn try_reserve(
        &self,
        asker: impl Into<Asker>,
        path: Path,
        want: usize,
        at_least: usize,
    ) -> Option<Permit> {
        let asker = asker.into();
        let caps = self.0.caps;
        let mut s = self.lock();
        let mine = s.by_asker.get(&asker).copied().unwrap_or(0);
        let room = caps
            .total
            .saturating_sub(s.used)
            .min(caps.per_asker.saturating_sub(mine));
        let bytes = want.min(room);
        if bytes == 0 || bytes < at_least {
            return None;
        }
        s.used += bytes;
        *s.by_asker.entry(asker).or_default() += bytes;
        drop(s);
        self.0.queued.get_or_create(&path).inc_by(bytes as i64);
        Some(Permit {
            budget: self.clone(),
            asker,
            path,
            bytes,
        })
    }

    /// Reserves `bytes` for `asker` (capped at [`Caps::per_asker`]), waiting until the caps
    /// leave room.
    pub async fn reserve(&self, asker: impl Into<Asker>, path: Path, bytes: usize) -> Permit {
        let asker = asker.into();
        let bytes = bytes.clamp(1, self.0.caps.per_asker);
        loop {
            let freed = self.0.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before trying, so a release in between is not missed.
            freed.as_mut().enable();
            if let Some(p) = self.try_reserve(asker, path, bytes, bytes) {
                return p;
            }
            freed.await;
        }
    }

    /// Counts `asker` as cut on `path` for not reading its answers.
    pub fn record_cut(&self, asker: impl Into<Asker>, path: Path) {
        let asker = asker.into();
        tracing::info!(?asker, path = path.path, stall = ?self.0.caps.stall_timeout, "cut an asker that stopped reading its answers");
        self.0.cut.get_or_create(&path).inc();
    }

    /// Askers cut on `path` so far.
    pub fn cut_count(&self, path: Path) -> u64 {
        self.0.cut.get_or_create(&path).get()
    }

    fn release(&self, asker: &Asker, path: Path, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut s = self.lock();
        s.used = s.used.saturating_sub(bytes);
        if let Some(mine) = s.by_asker.get_mut(asker) {
            *mine = mine.saturating_sub(bytes);
            if *mine == 0 {
                s.by_asker.remove(asker);
            }
        }
        drop(s);
        self.0.queued.get_or_create(&path).dec_by(bytes as i64);
        self.0.freed.notify_waiters();
    }
}

/// Bytes reserved in a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Budget,
    asker: Asker,
    path: Path,
    bytes: usize,
}

impl Permit {
    /// The bytes reserved.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `bytes` of this permit (at most all it holds) into a new one.
    pub fn split(&mut self, bytes: usize) -> Permit {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Permit {
            budget: self.budget.clone(),
            asker: self.asker,
            path: self.path,
            bytes,
        }
    }

    /// Adds `other`'s bytes to this permit (both must be for the same asker and path; if
    /// they are not, `other` is simply given back).
    pub fn merge(&mut self, mut other: Permit) {
        if other.asker == self.asker && other.path == self.path {
            self.bytes += std::mem::take(&mut other.bytes);
        }
    }

    /// Reserves `bytes` more for the same asker, if the caps leave room for all of them.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        match self.budget.try_reserve(self.asker, self.path, bytes, bytes) {
            Some(more) => {
                self.merge(more);
                true
            }
            None => false,
        }
    }

    /// Gives back all but `to` bytes (nothing when `to` is not smaller).
    pub fn shrink(&mut self, to: usize) {
        if to < self.bytes {
            self.budget.release(&self.asker, self.path, self.bytes - to);
            self.bytes = to;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(&self.asker, self.path, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(per_asker: usize, total: usize) -> Caps {
        Caps {
            per_asker,
            total,
            stall_timeout: Duration::from_secs(1),
            serve_rate: None,
        }
    }

    #[test]
    fn an_asker_gets_at_most_its_share_and_everyone_at_most_the_total() {
        let b = Budget::new(caps(10, 25));
        let (p, q, r) = (PeerId::random(), PeerId::random(), PeerId::random());
        let a = b.try_reserve(p, CAS, 8, 1).unwrap();
        // Only 2 left for p: partial grants down to `at_least`.
        assert!(b.try_reserve(p, CAS, 8, 3).is_none());
        let a2 = b.try_reserve(p, CAS, 8, 2).unwrap();
        assert_eq!(a2.bytes(), 2);
        assert!(b.try_reserve(p, CAS, 1, 1).is_none(), "p is at its cap");
        let c = b.try_reserve(q, BITSWAP, 10, 10).unwrap();
        // 5 left in total.
        assert_eq!(b.try_reserve(r, HTTP, 10, 1).unwrap().bytes(), 5);
        assert_eq!(b.used(), 20, "the temporary grant to r was given back");
        assert_eq!(b.used_by(p), 10);
        drop((a, a2, c));
        assert_eq!(b.used(), 0);
        assert_eq!(b.used_by(p), 0);
        assert!(
            b.lock().by_asker.is_empty(),
            "no entry is kept for askers with nothing held"
        );
    }

    #[test]
    fn shrinking_gives_bytes_back() {
        let b = Budget::new(caps(10, 10));
        let p = PeerId::random();
        let mut a = b.try_reserve(p, CAS, 10, 10).unwrap();
        a.shrink(3);
        assert_eq!((a.bytes(), b.used()), (3, 3));
        a.shrink(5);
        assert_eq!(a.bytes(), 3, "shrinking never grows");
        drop(a);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn split_and_merged_permits_hold_the_same_bytes() {
        let b = Budget::new(caps(10, 10));
        let p = PeerId::random();
        let mut a = b.try_reserve(p, BITSWAP, 10, 10).unwrap();
        let part = a.split(4);
        assert_eq!((a.bytes(), part.bytes(), b.used()), (6, 4, 10));
        drop(part);
        assert_eq!(b.used(), 6);
        let more = b.try_reserve(p, BITSWAP, 3, 3).unwrap();
        a.merge(more);
        assert_eq!((a.bytes(), b.used()), (9, 9));
        assert!(a.try_grow(1));
        assert!(!a.try_grow(1), "p is at its cap");
        assert_eq!((a.bytes(), b.used()), (10, 10));
        a.shrink(9);
        let other = b.try_reserve(PeerId::random(), BITSWAP, 1, 1).unwrap();
        a.merge(other);
        assert_eq!(
            (a.bytes(), b.used()),
            (9, 9),
            "another asker's permit is given back, not merged"
        );
        drop(a);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_waiting_reservation_gets_the_bytes_once_freed() {
        let b = Budget::new(caps(10, 10));
        let p = PeerId::random();
        let held = b.try_reserve(p, BITSWAP, 10, 10).unwrap();
        let mut waiting = std::pin::pin!(b.reserve(p, BITSWAP, 4));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(held);
        match waiting.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(p) => assert_eq!(p.bytes(), 4),
            std::task::Poll::Pending => panic!("the freed bytes were not granted"),
        }
    }

    #[test]
    fn the_gauge_follows_what_is_held() {
        let b = Budget::new(caps(100, 100));
        let mut registry = Registry::default();
        b.register(&mut registry);
        let p = PeerId::random();
        let a = b.try_reserve(p, CAS, 40, 1).unwrap();
        b.record_cut(p, CAS);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("cairn_answer_bytes_queued{path=\"cas\"} 40"),
            "{text}"
        );
        assert!(
            text.contains("cairn_askers_cut_total{path=\"cas\"} 1"),
            "{text}"
        );
        drop(a);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("cairn_answer_bytes_queued{path=\"cas\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn caps_are_checked() {
        assert!(Caps::default().check().is_ok());
        assert!(caps(1024, 1 << 30).check().unwrap_err().contains("below"));
        assert!(
            caps(MIN_PER_ASKER * 2, MIN_PER_ASKER)
                .check()
                .unwrap_err()
                .contains("total")
        );
    }
}
