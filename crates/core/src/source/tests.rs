//! Source-chain tests with simulated peers: fast, slow, failing, hanging and lying.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::cid::{Codec, HashAlg};
use crate::store::Memory;
use routing::RoutingStrategy as _;

#[derive(Clone, Copy, Debug)]
enum Sim {
    Honest(u64),
    Lying(u64),
    Failing,
    Missing,
    Hanging,
}

#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    completed: AtomicUsize,
    dropped: AtomicUsize,
}

struct SimClient {
    peers: Vec<(PeerKey, Sim)>,
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

impl PeerClient for SimClient {
    fn candidates(&self, _: &Cid) -> Vec<PeerKey> {
        self.peers.iter().map(|(p, _)| p.clone()).collect()
    }
    fn fetch(
        &self,
        peer: &PeerKey,
        cid: &Cid,
    ) -> impl Future<Output = Result<Bytes, PeerError>> + CondSend {
        let sim = self.peers.iter().find(|(p, _)| p == peer).map(|(_, s)| *s);
        let data = self.data.get(cid).cloned();
        let counters = self.counters.clone();
        async move {
            counters.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = Guard(counters.clone(), false);
            let out = match sim {
                Some(Sim::Honest(ms)) => {
                    crate::rt::sleep(Duration::from_millis(ms)).await;
                    data.ok_or(PeerError::NotFound)
                }
                Some(Sim::Lying(ms)) => {
                    crate::rt::sleep(Duration::from_millis(ms)).await;
                    Ok(Bytes::from_static(b"definitely not what you asked for"))
                }
                Some(Sim::Failing) => Err(PeerError::Failed("connection reset".into())),
                Some(Sim::Missing) | None => Err(PeerError::NotFound),
                Some(Sim::Hanging) => std::future::pending().await,
            };
            guard.1 = true;
            counters.completed.fetch_add(1, Ordering::SeqCst);
            out
        }
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

fn client(peers: &[(&str, Sim)], blocks: &[&Block]) -> (SimClient, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let c = SimClient {
        peers: peers.iter().map(|(n, s)| (PeerKey::new(n), *s)).collect(),
        data: blocks
            .iter()
            .map(|b| (*b.cid(), b.data().clone()))
            .collect(),
        counters: counters.clone(),
    };
    (c, counters)
}

#[tokio::test]
async fn race_returns_the_fastest_honest_answer_and_cancels_the_rest() {
    let b = block("hello race");
    let (c, counters) = client(
        &[
            ("slow", Sim::Honest(400)),
            ("liar", Sim::Lying(1)),
            ("failing", Sim::Failing),
            ("hanging", Sim::Hanging),
            ("fast", Sim::Honest(30)),
            ("missing", Sim::Missing),
        ],
        &[&b],
    );
    let race = PeerRace::with_strategy(c, routing::InOrder);
    let reps = race.reputation_table().clone();
    let store = Arc::new(Memory::new());
    let chain = Chain::new().local(store.clone()).source(race, None);
    let started = Instant::now();
    let r = chain
        .retrieve_reported(b.cid(), &Context::new())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "did not wait for the slow peer"
    );
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
    assert_eq!(reps.get(&PeerKey::new("liar")).lies, 1);
    assert_eq!(reps.get(&PeerKey::new("fast")).successes, 1);
    assert_eq!(reps.get(&PeerKey::new("missing")).misses, 1);
    assert_eq!(reps.get(&PeerKey::new("failing")).failures, 1);
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
    let (c, _) = client(
        &[("liar", Sim::Lying(0)), ("honest", Sim::Honest(50))],
        &[&b],
    );
    let race = PeerRace::new(c);
    let reps = race.reputation_table().clone();
    for _ in 0..2 {
        let got = race.retrieve(b.cid(), &Context::new()).await.unwrap();
        assert_eq!(got, b);
    }
    let liar = PeerKey::new("liar");
    assert_eq!(reps.get(&liar).lies, 2);
    let order = routing::Scored::default().order(b.cid(), std::slice::from_ref(&liar), &reps);
    assert!(order.is_empty(), "a twice-lying peer is no longer asked");
}

#[tokio::test]
async fn when_all_peers_fail_the_error_lists_each() {
    let b = block("nobody has this");
    let (c, _) = client(
        &[
            ("a", Sim::Missing),
            ("b", Sim::Failing),
            ("c", Sim::Lying(0)),
        ],
        &[],
    );
    let race = PeerRace::with_strategy(c, routing::InOrder).config(RaceConfig {
        per_peer_timeout: Duration::from_millis(100),
        max_parallel: 1,
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
}

#[tokio::test]
async fn no_peers_is_a_clear_failure() {
    let b = block("x");
    let (c, _) = client(&[], &[]);
    let err = PeerRace::new(c)
        .retrieve(b.cid(), &Context::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no candidates");
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
        matches!(r.write_back, WriteBack::Failed(ref m) if m.contains("full")),
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
