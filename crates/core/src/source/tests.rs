//! Source-chain tests with simulated peers: fast, slow, failing, hanging and lying. Nothing
//! here waits on the wall clock to decide an outcome: a "slow" peer is one whose answer is
//! held until the test releases it (or never), so a loaded machine cannot change a result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::Shared;

use super::*;
use crate::cid::{Codec, HashAlg};
use crate::store::Memory;
use routing::RoutingStrategy as _;

/// A simulated peer's behaviour.
#[derive(Clone, Debug)]
enum Sim {
    /// Answers with the block once `Gate` opens (at once for [`Gate::open`]).
    Honest(Gate),
    /// Answers with wrong bytes once `Gate` opens.
    Lying(Gate),
    Failing,
    Missing,
    Hanging,
    /// Cannot be reached (its connection closed) until the network has been looked up in
    /// this many times: a lookup reaches it anew.
    Unreachable(usize),
    /// Its first request fails as a closed connection does (a relayed connection replaced
    /// by a direct one under the request); it answers on the connection it still has.
    MovedOnce(Arc<std::sync::atomic::AtomicBool>),
}

/// A release the test controls: a peer behind a closed gate answers only when it opens.
#[derive(Clone)]
struct Gate(
    Shared<futures::channel::oneshot::Receiver<()>>,
    Arc<Mutex<Option<futures::channel::oneshot::Sender<()>>>>,
);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Gate {
    fn closed() -> Self {
        let (tx, rx) = futures::channel::oneshot::channel();
        Gate(rx.shared(), Arc::new(Mutex::new(Some(tx))))
    }
    fn open() -> Self {
        let g = Self::closed();
        g.release();
        g
    }
    fn release(&self) {
        if let Some(tx) = self.1.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
    async fn passed(&self) {
        if self.0.clone().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    completed: AtomicUsize,
    dropped: AtomicUsize,
    lookups: AtomicUsize,
}

/// A network of simulated peers: `at_hand` ones, and `providers` a lookup finds.
struct SimNet {
    peers: Vec<(&'static str, Sim)>,
    providers: HashMap<Cid, Vec<&'static str>>,
    data: HashMap<Cid, Bytes>,
    counters: Arc<Counters>,
}

struct Guard(Arc<Counters>, bool);
impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl FindPeers for SimNet {
    type Peer = &'static str;
    fn at_hand(&self, _: &Cid) -> Vec<&'static str> {
        self.peers.iter().map(|(p, _)| *p).collect()
    }
    fn look_up(
        &self,
        key: &Cid,
    ) -> impl Future<Output = Result<Vec<&'static str>, LookupError>> + CondSend {
        self.counters.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.providers.get(key).cloned().unwrap_or_default();
        async move {
            if found.is_empty() {
                Err(LookupError {
                    found: 0,
                    answered: 1,
                    answers: vec![("DHT".into(), "0 provider(s)".into())],
                })
            } else {
                Ok(found)
            }
        }
    }
}

impl AskPeer for SimNet {
    type Peer = &'static str;
    fn ask(
        &self,
        peer: &&'static str,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        let sim = self
            .peers
            .iter()
            .find(|(p, _)| p == peer)
            .map(|(_, s)| s.clone())
            .or_else(|| {
                self.providers
                    .values()
                    .any(|v| v.contains(peer))
                    .then(|| Sim::Honest(Gate::open()))
            });
        let data = self.data.get(cid).cloned();
        let counters = self.counters.clone();
        async move {
            counters.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = Guard(counters.clone(), false);
            let out = match sim {
                Some(Sim::Honest(gate)) => {
                    gate.passed().await;
                    data.ok_or(PeerError::NotFound)
                }
                Some(Sim::Lying(gate)) => {
                    gate.passed().await;
                    Ok(Bytes::from_static(b"definitely not what you asked for"))
                }
                Some(Sim::Failing) => Err(PeerError::Failed("connection reset".into())),
                Some(Sim::Missing) | None => Err(PeerError::NotFound),
                Some(Sim::Hanging) => std::future::pending().await,
                Some(Sim::MovedOnce(moved)) => {
                    if moved.swap(true, Ordering::SeqCst) {
                        data.ok_or(PeerError::NotFound)
                    } else {
                        Err(PeerError::Failed("the connection closed".into()))
                    }
                }
                Some(Sim::Unreachable(n)) => {
                    if counters.lookups.load(Ordering::SeqCst) >= n {
                        data.ok_or(PeerError::NotFound)
                    } else {
                        Err(PeerError::Failed(
                            "the connection closed before the stream was open".into(),
                        ))
                    }
                }
            };
            guard.1 = true;
            counters.completed.fetch_add(1, Ordering::SeqCst);
            out
        }
    }
}

/// Both halves of a [`SimNet`], shared.
#[derive(Clone)]
struct Sims(Arc<SimNet>);

impl FindPeers for Sims {
    type Peer = &'static str;
    fn at_hand(&self, cid: &Cid) -> Vec<&'static str> {
        self.0.at_hand(cid)
    }
    fn look_up(
        &self,
        key: &Cid,
    ) -> impl Future<Output = Result<Vec<&'static str>, LookupError>> + CondSend {
        self.0.look_up(key)
    }
}

impl AskPeer for Sims {
    type Peer = &'static str;
    fn ask(
        &self,
        peer: &&'static str,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        self.0.ask(peer, cid)
    }
}

fn block(s: &str) -> Block {
    Block::from_data(
        Codec::Raw,
        HashAlg::Sha2_256,
        Bytes::copy_from_slice(s.as_bytes()),
    )
    .unwrap()
}

fn net(peers: &[(&'static str, Sim)], blocks: &[&Block]) -> (Sims, Arc<Counters>) {
    net_with(peers, HashMap::new(), blocks)
}

fn net_with(
    peers: &[(&'static str, Sim)],
    providers: HashMap<Cid, Vec<&'static str>>,
    blocks: &[&Block],
) -> (Sims, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let n = SimNet {
        peers: peers.to_vec(),
        providers,
        data: blocks
            .iter()
            .map(|b| (*b.cid(), b.data().clone()))
            .collect(),
        counters: counters.clone(),
    };
    (Sims(Arc::new(n)), counters)
}

/// A `/cas`-style source over `n` that does not look up.
fn race<R: routing::RoutingStrategy>(n: Sims, strategy: R) -> PeerSource<Sims, Sims, R> {
    PeerSource::with_strategy(SourceKind::Peers, n.clone(), n, None, strategy).config(RaceConfig {
        look_up: false,
        ..Default::default()
    })
}

#[tokio::test]
async fn race_returns_the_first_honest_answer_and_cancels_the_rest() {
    let b = block("hello race");
    let fast = Gate::closed();
    let (n, counters) = net(
        &[
            ("slow", Sim::Honest(Gate::closed())),
            ("liar", Sim::Lying(Gate::open())),
            ("failing", Sim::Failing),
            ("hanging", Sim::Hanging),
            ("fast", Sim::Honest(fast.clone())),
            ("missing", Sim::Missing),
        ],
        &[&b],
    );
    let race = race(n, routing::InOrder);
    let reps = race.reputations().clone();
    let store = Arc::new(Memory::new());
    let chain = Chain::new().local(store.clone()).source(race, None);
    // "fast" answers once every other peer has been asked; "slow" never does: the race
    // can only finish by not waiting for it.
    let release = {
        let counters = counters.clone();
        async move {
            while counters.started.load(Ordering::SeqCst) < 6 {
                tokio::task::yield_now().await;
            }
            fast.release();
        }
    };
    let ctx = Context::new();
    let (r, ()) = futures::join!(chain.retrieve_reported(b.cid(), &ctx), release);
    let r = r.unwrap();
    assert_eq!(r.block, b);
    assert_eq!(r.served_by, SourceKind::Peers);
    assert_eq!(r.write_back, WriteBack::Stored);
    assert_eq!(
        r.steps.len(),
        2,
        "local missed, peers served: {:?}",
        r.steps
    );
    assert_eq!(r.steps[0].error, Some(SourceError::NotFound));
    // The slow and hanging requests were in flight and were dropped, not left running.
    assert_eq!(counters.started.load(Ordering::SeqCst), 6);
    assert_eq!(
        counters.dropped.load(Ordering::SeqCst),
        2,
        "slow + hanging cancelled"
    );
    // The liar is penalised, the winner credited.
    assert_eq!(reps.get(&"liar").lies, 1);
    assert_eq!(reps.get(&"fast").successes, 1);
    assert_eq!(reps.get(&"missing").misses, 1);
    assert_eq!(reps.get(&"failing").failures, 1);
    // Only the verified block reached the store.
    let st = store.stat().await.unwrap();
    assert_eq!((st.blocks, st.bytes), (1, b.len() as u64));
    let lie = block("definitely not what you asked for");
    assert!(!store.has(lie.cid()).await.unwrap());
    // A second retrieval is served locally.
    let again = chain
        .retrieve_reported(b.cid(), &Context::new())
        .await
        .unwrap();
    assert_eq!(again.served_by, SourceKind::Local);
    assert_eq!(again.write_back, WriteBack::NotNeeded);
}

#[tokio::test]
async fn lying_peers_never_win_and_are_dropped_after_two_lies() {
    let b = block("truth");
    let (n, _) = net(
        &[
            ("liar", Sim::Lying(Gate::open())),
            ("honest", Sim::Honest(Gate::open())),
        ],
        &[&b],
    );
    // One at a time, the liar first: it answers, is refused, and the honest peer serves.
    let race = race(n, routing::InOrder).config(RaceConfig {
        max_parallel: 1,
        look_up: false,
        ..Default::default()
    });
    let reps = race.reputations().clone();
    for _ in 0..2 {
        let got = race.retrieve(b.cid(), &Context::new()).await.unwrap();
        assert_eq!(got, b);
    }
    assert_eq!(reps.get(&"liar").lies, 2);
    assert_eq!(reps.get(&"honest").successes, 2);
    let order = routing::Scored::default().order(b.cid(), &["liar"], &reps);
    assert!(order.is_empty(), "a twice-lying peer is no longer asked");
}

/// Hashes what peers send "elsewhere" (here, in a task of its own), as the browser's
/// WebCrypto verifier does; counts the answers it checked.
#[derive(Debug, Default)]
struct Elsewhere(AtomicUsize);
impl super::Verify for Elsewhere {
    fn verify(
        &self,
        cid: Cid,
        bytes: Bytes,
    ) -> crate::BoxFuture<'static, Result<Block, crate::block::Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let data = bytes.clone();
            let digest = tokio::spawn(async move { HashAlg::Sha2_256.digest(&data) })
                .await
                .unwrap();
            Block::with_digest(cid, digest.digest(), bytes)
        })
    }
}

#[tokio::test]
async fn a_platform_verifier_checks_every_answer_and_liars_are_still_refused() {
    let b = block("verified elsewhere");
    let (n, _) = net(
        &[
            ("liar", Sim::Lying(Gate::open())),
            ("honest", Sim::Honest(Gate::open())),
        ],
        &[&b],
    );
    let verify = Arc::new(Elsewhere::default());
    let race = race(n, routing::InOrder)
        .config(RaceConfig {
            max_parallel: 1,
            look_up: false,
            ..Default::default()
        })
        .verifier(Some(verify.clone()));
    let reps = race.reputations().clone();
    let got = race.retrieve(b.cid(), &Context::new()).await.unwrap();
    assert_eq!(got, b);
    assert_eq!(
        verify.0.load(Ordering::SeqCst),
        2,
        "the lie and the truth were both checked"
    );
    assert_eq!(reps.get(&"liar").lies, 1);
    assert_eq!(reps.get(&"honest").successes, 1);
    // A digest that is not the CID's is a mismatch, whatever the bytes.
    let e = Block::with_digest(*b.cid(), &[0; 32], b.data().clone()).unwrap_err();
    assert!(matches!(e, crate::block::Error::HashMismatch { .. }), "{e}");
}

#[tokio::test]
async fn when_all_peers_fail_the_error_lists_each() {
    let b = block("nobody has this");
    let (n, _) = net(
        &[
            ("a", Sim::Missing),
            ("b", Sim::Failing),
            ("c", Sim::Lying(Gate::open())),
        ],
        &[],
    );
    let race = race(n, routing::InOrder).config(RaceConfig {
        per_peer_timeout: Some(Duration::from_secs(10)),
        max_parallel: 1,
        look_up: false,
        ..Default::default()
    });
    let err = Chain::new()
        .local(Arc::new(Memory::new()))
        .source(race, None)
        .retrieve_reported(b.cid(), &Context::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    for needle in [
        "local: not found",
        "peer a: not found",
        "peer b: unavailable: connection reset",
        "peer c: sent invalid data",
    ] {
        assert!(msg.contains(needle), "missing `{needle}` in: {msg}");
    }
    assert!(matches!(err, ChainError::NotFound { .. }));
    assert_eq!(
        err.failure(),
        Failure::InvalidData,
        "a lie outranks the rest"
    );
}

#[tokio::test]
async fn no_peers_is_a_clear_failure() {
    let b = block("x");
    let (n, _) = net(&[], &[]);
    let err = race(n, routing::Scored::default())
        .retrieve(b.cid(), &Context::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no candidates");
    assert_eq!(err.failure(), Failure::NotFound);
}

#[tokio::test]
async fn lookups_find_the_roots_providers_once_and_a_blocks_own_when_they_lack_it() {
    let (a, b, c) = (block("a"), block("b"), block("c"));
    let root = *a.cid();
    // "p1" provides the root and has a and b; c is only with "p2", found by c's own lookup.
    let providers = HashMap::from([(root, vec!["p1"]), (*c.cid(), vec!["p2"])]);
    let (n, counters) = net_with(&[], providers, &[&a, &b]);
    let src = PeerSource::new(SourceKind::Ipfs, n.clone(), n, Some(root));
    let ctx = Context::new();
    assert_eq!(src.retrieve(a.cid(), &ctx).await.unwrap(), a);
    assert_eq!(src.retrieve(b.cid(), &ctx).await.unwrap(), b);
    assert_eq!(
        counters.lookups.load(Ordering::SeqCst),
        1,
        "one root lookup"
    );
    // p1 has no c, p2 (found for c) has none either in this network: c fails, after one
    // lookup of c itself.
    let err = src.retrieve(c.cid(), &ctx).await.unwrap_err();
    assert_eq!(counters.lookups.load(Ordering::SeqCst), 2);
    assert!(err.to_string().contains("peer p2: not found"), "{err}");
    let _ = src.retrieve(c.cid(), &ctx).await.unwrap_err();
    assert_eq!(
        counters.lookups.load(Ordering::SeqCst),
        2,
        "c is not looked up again"
    );
}

#[tokio::test]
async fn a_provider_whose_connection_closed_is_looked_up_and_asked_again() {
    let (a, b, c) = (block("a"), block("b"), block("c"));
    let root = *a.cid();
    // "p1" holds everything, but its connection closed under the transfer: only a lookup
    // (the second) reaches it again.
    let (n, counters) = net_with(
        &[("p1", Sim::Unreachable(2))],
        HashMap::from([(root, vec!["p1"])]),
        &[&a, &b, &c],
    );
    let src = PeerSource::new(SourceKind::Peers, n.clone(), n, Some(root));
    let ctx = Context::new();
    assert_eq!(src.retrieve(b.cid(), &ctx).await.unwrap(), b);
    assert_eq!(
        counters.lookups.load(Ordering::SeqCst),
        2,
        "the root, looked up again when the provider it found could not be reached"
    );
    assert_eq!(src.retrieve(c.cid(), &ctx).await.unwrap(), c);
    assert_eq!(src.retrieve(a.cid(), &ctx).await.unwrap(), a);
    assert_eq!(
        counters.lookups.load(Ordering::SeqCst),
        2,
        "no lookup once it answers"
    );
}

#[tokio::test]
async fn a_provider_that_stays_unreachable_costs_a_bounded_number_of_lookups() {
    let blocks: Vec<Block> = (0..10).map(|i| block(&format!("block {i}"))).collect();
    let root = *blocks[0].cid();
    let (n, counters) = net_with(
        &[("p1", Sim::Failing)],
        HashMap::from([(root, vec!["p1"])]),
        &blocks.iter().collect::<Vec<_>>(),
    );
    let src = PeerSource::new(SourceKind::Peers, n.clone(), n, Some(root));
    let ctx = Context::new();
    for b in &blocks {
        let err = src.retrieve(b.cid(), &ctx).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("every source failed (peer p1: unavailable: connection reset"),
            "{err}"
        );
    }
    // The root at most ROOT_LOOKUPS times, and each block but the root once by its own CID.
    let lookups = counters.lookups.load(Ordering::SeqCst);
    assert!(
        lookups < peers::ROOT_LOOKUPS as usize + blocks.len(),
        "{lookups} lookups"
    );
}

#[tokio::test]
async fn a_lookup_that_finds_nobody_fails_every_block_at_once() {
    let (a, b) = (block("a"), block("b"));
    let (n, counters) = net_with(&[], HashMap::new(), &[]);
    let src = PeerSource::new(SourceKind::Ipfs, n.clone(), n, Some(*a.cid()));
    let ctx = Context::new();
    for cid in [a.cid(), b.cid(), b.cid()] {
        let err = src.retrieve(cid, &ctx).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(": found none (DHT: 0 provider(s))"),
            "{err}"
        );
        assert_eq!(err.failure(), Failure::NotFound, "nobody provides it");
    }
    assert_eq!(counters.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_peer_at_hand_whose_connection_moved_is_asked_again_before_any_lookup() {
    let b = block("asked twice");
    // It is still at hand (a new connection came up) after its request failed: asked once
    // more, on that connection, with no lookup and no other source needed.
    let (n, counters) = net_with(
        &[("p1", Sim::MovedOnce(Default::default()))],
        HashMap::new(),
        &[&b],
    );
    let src = PeerSource::new(SourceKind::Peers, n.clone(), n, Some(*b.cid()));
    assert_eq!(src.retrieve(b.cid(), &Context::new()).await.unwrap(), b);
    assert_eq!(counters.lookups.load(Ordering::SeqCst), 0);
    assert_eq!(
        counters.started.load(Ordering::SeqCst),
        2,
        "asked twice, no more"
    );
    // A peer that keeps failing so is asked again once per block, not more.
    let (n, counters) = net(&[("p1", Sim::Failing)], &[&b]);
    let src = race(n, routing::InOrder);
    src.retrieve(b.cid(), &Context::new()).await.unwrap_err();
    assert_eq!(counters.started.load(Ordering::SeqCst), 2);
}

/// One peer, "p1", whose connection closes under the first request for each block: it is
/// then at hand on no connection until `regained` is asked for it, which brings it back
/// at once (`comes_back`) or never (waiting out what it is given).
struct Flaky {
    data: HashMap<Cid, Bytes>,
    away: std::sync::atomic::AtomicBool,
    failed_once: Mutex<std::collections::HashSet<Cid>>,
    comes_back: bool,
    /// What each `regained` call was given to wait.
    waits: Mutex<Vec<Duration>>,
    lookups: AtomicUsize,
}

impl Flaky {
    fn new(blocks: &[&Block], comes_back: bool) -> Arc<Self> {
        Arc::new(Flaky {
            data: blocks
                .iter()
                .map(|b| (*b.cid(), b.data().clone()))
                .collect(),
            away: Default::default(),
            failed_once: Default::default(),
            comes_back,
            waits: Default::default(),
            lookups: Default::default(),
        })
    }
}

impl FindPeers for Flaky {
    type Peer = &'static str;
    fn at_hand(&self, _: &Cid) -> Vec<&'static str> {
        if self.away.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            vec!["p1"]
        }
    }
    async fn look_up(&self, _: &Cid) -> Result<Vec<&'static str>, LookupError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Err(LookupError {
            found: 0,
            answered: 1,
            answers: vec![("DHT".into(), "0 provider(s)".into())],
        })
    }
    async fn regained(
        &self,
        cid: &Cid,
        peers: &[&'static str],
        within: Duration,
    ) -> Vec<&'static str> {
        self.waits.lock().unwrap().push(within);
        if self.comes_back {
            self.away.store(false, Ordering::SeqCst);
        } else {
            crate::rt::sleep(within).await;
        }
        super::peers::at_hand_among(self, cid, peers)
    }
}

impl AskPeer for Flaky {
    type Peer = &'static str;
    async fn ask(&self, _: &&'static str, cid: &Cid) -> Result<Bytes, PeerError> {
        if self.away.load(Ordering::SeqCst) {
            return Err(PeerError::Failed("not connected".into()));
        }
        if self.failed_once.lock().unwrap().insert(*cid) {
            self.away.store(true, Ordering::SeqCst);
            return Err(PeerError::Failed("the connection closed".into()));
        }
        self.data.get(cid).cloned().ok_or(PeerError::NotFound)
    }
}

#[tokio::test]
async fn a_peer_whose_connection_closed_is_waited_for_and_asked_again_when_it_is_back() {
    // The relayed connection closed under the request and the direct one is not yet at
    // hand: the block waits for the peer instead of looking elsewhere (it used to fail over
    // to the IPFS source, which fetched it from the same peer over bitswap).
    let (a, b) = (block("first"), block("second"));
    let net = Flaky::new(&[&a, &b], true);
    let src = PeerSource::new(SourceKind::Peers, net.clone(), net.clone(), Some(*a.cid()));
    assert_eq!(src.retrieve(a.cid(), &Context::new()).await.unwrap(), a);
    // Lost again on the next block: it came back, so this loss gets a wait of its own.
    assert_eq!(src.retrieve(b.cid(), &Context::new()).await.unwrap(), b);
    let waits = net.waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 2, "{waits:?}");
    let full = RaceConfig::default().regain;
    assert!(
        waits.iter().all(|w| *w > full / 2 && *w <= full),
        "{waits:?}"
    );
    assert_eq!(
        net.lookups.load(Ordering::SeqCst),
        0,
        "no lookup was needed"
    );
}

#[tokio::test]
async fn a_peer_that_does_not_come_back_costs_one_wait_a_fetch() {
    let (a, b) = (block("first"), block("second"));
    let net = Flaky::new(&[&a, &b], false);
    let src = PeerSource::new(SourceKind::Peers, net.clone(), net.clone(), Some(*a.cid())).config(
        RaceConfig {
            regain: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let err = src.retrieve(a.cid(), &Context::new()).await.unwrap_err();
    assert!(err.to_string().contains("found none"), "{err}");
    // The next block finds the peer gone as well, and does not wait for it again.
    src.retrieve(b.cid(), &Context::new()).await.unwrap_err();
    assert_eq!(
        net.waits.lock().unwrap().len(),
        1,
        "one wait for the whole fetch"
    );
}

#[tokio::test]
async fn peers_at_hand_are_asked_before_any_lookup() {
    let b = block("held nearby");
    let (n, counters) = net_with(
        &[("near", Sim::Honest(Gate::open()))],
        HashMap::from([(*b.cid(), vec!["far"])]),
        &[&b],
    );
    let src = PeerSource::new(SourceKind::Peers, n.clone(), n, Some(*b.cid()));
    assert_eq!(src.retrieve(b.cid(), &Context::new()).await.unwrap(), b);
    assert_eq!(counters.lookups.load(Ordering::SeqCst), 0);
}

/// A source that never answers.
struct Hang;
impl ContentSource for Hang {
    fn kind(&self) -> SourceKind {
        SourceKind::Ipfs
    }
    fn retrieve(
        &self,
        _: &Cid,
        _: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        std::future::pending()
    }
}

/// A source that serves from a store after a delay, counting requests.
struct Serve(Arc<Memory>, Arc<AtomicUsize>, SourceKind);
impl ContentSource for Serve {
    fn kind(&self) -> SourceKind {
        self.2
    }
    fn retrieve(
        &self,
        cid: &Cid,
        _: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        self.1.fetch_add(1, Ordering::SeqCst);
        let get = self.0.get(cid);
        async move { get.await.ok().flatten().ok_or(SourceError::NotFound) }
    }
}

#[tokio::test]
async fn a_hanging_source_is_cut_by_its_timeout() {
    let b = block("behind the hang");
    let remote = Arc::new(Memory::new());
    remote.put(b.clone()).await.unwrap();
    let chain = Chain::new()
        .source(Hang, Some(Duration::from_millis(50)))
        .source(Serve(remote, Arc::default(), SourceKind::Gateway), None);
    let r = chain
        .retrieve_reported(b.cid(), &Context::new())
        .await
        .unwrap();
    assert_eq!(r.served_by, SourceKind::Gateway);
    assert_eq!(
        r.steps[0].error,
        Some(SourceError::Timeout(Duration::from_millis(50)))
    );
    assert!(r.steps[0].elapsed >= Duration::from_millis(50));
    assert_eq!(
        r.write_back,
        WriteBack::NotNeeded,
        "no local store, no write-back"
    );
}

#[tokio::test]
async fn the_deadline_and_cancellation_stop_a_request() {
    let b = block("never");
    let chain = Chain::new().source(Hang, None);
    let err = chain
        .retrieve_reported(
            b.cid(),
            &Context::new().with_timeout(Duration::from_millis(40)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ChainError::DeadlineExceeded { .. }), "{err}");
    assert!(err.to_string().contains("ran out of time"), "{err}");

    let (canceller, token) = cancel_pair();
    let ctx = Context::new().with_cancel(token);
    let req = chain.retrieve_reported(b.cid(), &ctx);
    let cancel = async {
        crate::rt::sleep(Duration::from_millis(30)).await;
        canceller.cancel();
    };
    let (out, ()) = futures::join!(req, cancel);
    assert!(matches!(out, Err(ChainError::Cancelled { .. })), "{out:?}");
    // An already-cancelled context is refused at once.
    assert!(matches!(
        chain.retrieve_reported(b.cid(), &ctx).await,
        Err(ChainError::Cancelled { .. })
    ));
    // A dropped canceller cancels nothing.
    let (c2, t2) = cancel_pair();
    drop(c2);
    let ctx2 = Context::new()
        .with_cancel(t2)
        .with_timeout(Duration::from_millis(20));
    assert!(matches!(
        chain.retrieve_reported(b.cid(), &ctx2).await,
        Err(ChainError::DeadlineExceeded { .. })
    ));
}

#[tokio::test]
async fn a_full_local_store_reports_failed_write_back() {
    let b = block("too big for the store");
    let remote = Arc::new(Memory::new());
    remote.put(b.clone()).await.unwrap();
    let chain = Chain::new()
        .local(Arc::new(Memory::with_quota(4)))
        .source(Serve(remote, Arc::default(), SourceKind::Peers), None);
    let r = chain
        .retrieve_reported(b.cid(), &Context::new())
        .await
        .unwrap();
    assert!(
        matches!(r.write_back, WriteBack::Failed(ref e) if e.is_full()),
        "{:?}",
        r.write_back
    );
}

mod dag_and_export {
    use super::*;
    use crate::dag;
    use crate::unixfs::{self, Profile, Range};
    use futures::TryStreamExt as _;

    async fn cat<S: ContentSource>(
        src: &S,
        root: Cid,
        range: Range,
        ctx: &Context,
    ) -> Result<Vec<u8>, unixfs::ExportError> {
        unixfs::export(src, root, range, 8, ctx)
            .try_fold(Vec::new(), |mut acc, b| async move {
                acc.extend_from_slice(&b);
                Ok(acc)
            })
            .await
    }

    fn data(len: usize) -> Vec<u8> {
        crate::test_util::pseudo_random(len, 0)
    }

    const SMALL: Profile = Profile {
        chunk_size: 1000,
        max_links: 5,
        shard_split: crate::unixfs::ShardSplit::LinksBytes,
        name: "small",
    };

    async fn remote_with(len: usize) -> (Arc<Memory>, Cid, Vec<u8>) {
        let remote = Arc::new(Memory::new());
        let bytes = data(len);
        let imported = unixfs::import(&*remote, &bytes[..], SMALL, HashAlg::Sha2_256, |_| {})
            .await
            .unwrap();
        (remote, imported.root, bytes)
    }

    #[tokio::test]
    async fn dag_fetch_reports_progress_and_resumes_with_only_missing_blocks() {
        let (remote, root, _) = remote_with(57_000).await; // 57 leaves + inner nodes
        let total = remote.stat().await.unwrap().blocks;
        let served = Arc::new(AtomicUsize::new(0));
        let local = Arc::new(Memory::new());
        let chain = Chain::new().local(local.clone()).source(
            Serve(remote.clone(), served.clone(), SourceKind::Peers),
            None,
        );

        // First attempt: cancelled after 20 blocks.
        let (canceller, token) = cancel_pair();
        let mut canceller = Some(canceller);
        let ctx = Context::new().with_cancel(token);
        let opts = dag::Options {
            window: 4,
            ..Default::default()
        };
        let err = dag::fetch(&chain, &*local, root, opts, &ctx, |p| {
            if p.blocks_done >= 20
                && let Some(c) = canceller.take()
            {
                c.cancel();
            }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        let have = local.stat().await.unwrap().blocks;
        assert!((20..total).contains(&have), "partial: {have} of {total}");

        // Resume: only the missing blocks are fetched.
        served.store(0, Ordering::SeqCst);
        let mut last = dag::Progress::default();
        let report = dag::fetch(&chain, &*local, root, opts, &Context::new(), |p| {
            last = p.clone()
        })
        .await
        .unwrap();
        assert_eq!(served.load(Ordering::SeqCst) as u64, total - have);
        assert_eq!(report.progress.blocks_done, total);
        assert_eq!(report.progress.blocks_known, total);
        assert_eq!(
            report.progress.by_source[0], have,
            "already-held blocks counted as local"
        );
        assert_eq!(report.progress.by_source[1], total - have);
        assert_eq!(report.progress.bytes_done, report.progress.bytes_total);
        assert_eq!(last, report.progress);
        assert_eq!(local.stat().await.unwrap(), remote.stat().await.unwrap());
    }

    #[tokio::test]
    async fn dag_fetch_says_which_blocks_came_from_further_down_the_chain_and_why() {
        let (remote, root, _) = remote_with(5_500).await;
        let total = remote.stat().await.unwrap().blocks;
        let local = Arc::new(Memory::new());
        // The peers hold only the root; every other block goes on to the gateway.
        let peers = Arc::new(Memory::new());
        peers
            .put(remote.get(&root).await.unwrap().unwrap())
            .await
            .unwrap();
        let chain = Chain::new()
            .local(local.clone())
            .source(Serve(peers, Arc::default(), SourceKind::Peers), None)
            .source(Serve(remote, Arc::default(), SourceKind::Gateway), None);
        let report = dag::fetch(
            &chain,
            &*local,
            root,
            dag::Options::default(),
            &Context::new(),
            |_| {},
        )
        .await
        .unwrap();
        let p = &report.progress;
        assert_eq!(p.by_source, [0, 1, 0, total - 1]);
        assert_eq!(
            p.detours,
            total - 1,
            "the root came from the first peer source"
        );
        let why = p.last_detour.as_deref().unwrap();
        assert!(
            why.ends_with("came from gateway after peers: not found"),
            "{why}"
        );
        assert!(why.starts_with("bafk"), "names the block: {why}");
    }

    #[tokio::test]
    async fn export_streams_the_file_and_ranges_fetch_only_their_leaves() {
        let (remote, root, bytes) = remote_with(57_321).await;
        let count = Arc::new(AtomicUsize::new(0));
        let src = Serve(remote, count.clone(), SourceKind::Peers);
        let ctx = Context::new();
        let all: Vec<u8> = cat(&src, root, Range::ALL, &ctx).await.unwrap();
        assert_eq!(all, bytes);
        assert_eq!(unixfs::file_size(&src, &root, &ctx).await.unwrap(), 57_321);
        for (off, len) in [
            (0u64, 10u64),
            (999, 2),
            (1000, 1000),
            (12_345, 20_000),
            (57_000, 999),
            (57_320, 1),
        ] {
            count.store(0, Ordering::SeqCst);
            let got: Vec<u8> = cat(
                &src,
                root,
                Range {
                    offset: off,
                    length: Some(len),
                },
                &ctx,
            )
            .await
            .unwrap();
            let end = (off + len).min(57_321) as usize;
            assert_eq!(got, &bytes[off as usize..end], "range {off}+{len}");
            // leaves touched + the inner nodes on their paths (depth 3 for 58 leaves / 5 links)
            let leaves = (end as u64 - 1) / 1000 - off / 1000 + 1;
            let fetched = count.load(Ordering::SeqCst) as u64;
            assert!(
                fetched <= leaves + 2 * leaves.max(1) + 3,
                "range {off}+{len}: {fetched} blocks for {leaves} leaves"
            );
        }
        let err = cat(
            &src,
            root,
            Range {
                offset: 57_321,
                length: None,
            },
            &ctx,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("only 57321 bytes"), "{err}");
    }

    #[tokio::test]
    async fn export_refuses_a_leaf_of_the_wrong_size() {
        // A parent that claims a leaf of 5 bytes for a 3-byte block.
        use crate::unixfs::pb::{Link, Node, UnixFs};
        let store = Arc::new(Memory::new());
        let leaf = block("abc");
        let node = Node {
            links: vec![
                Link {
                    cid: *leaf.cid(),
                    name: String::new(),
                    tsize: Some(3),
                },
                Link {
                    cid: *leaf.cid(),
                    name: String::new(),
                    tsize: Some(3),
                },
            ],
            data: Some(UnixFs::file(vec![5, 3]).encode().into()),
        };
        let root = Block::from_data(Codec::DagPb, HashAlg::Sha2_256, node.encode()).unwrap();
        store.put_many(vec![leaf, root.clone()]).await.unwrap();
        let src = Local(store);
        let err = cat(&src, *root.cid(), Range::ALL, &Context::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("its parent says 5"), "{err}");
    }
}

#[test]
fn finding_nobody_is_not_found_only_when_a_routing_system_answered() {
    let key = Box::new(*block("looked up").cid());
    let lookup = |answered| SourceError::NoProvider {
        key: key.clone(),
        lookup: LookupError {
            found: 0,
            answered,
            answers: vec![("DHT".into(), "no answer within 10s".into())],
        },
    };
    assert_eq!(lookup(1).failure(), Failure::NotFound);
    assert_eq!(
        lookup(0).failure(),
        Failure::Unreachable,
        "no routing system answered: the content's holders could not be reached"
    );
}
