use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::CondSend;
use crate::block::Block;
use crate::cid::HashAlg;
use crate::source::{ContentSource, SourceError};
use crate::store::Memory;
use crate::test_util::pseudo_random;
use crate::unixfs;

/// Stands in for the network: serves blocks from a store, as a source of `kind`, after
/// `delay` per block; while `down`, answers that it cannot be reached; counts requests.
#[derive(Clone)]
struct Remote {
    store: Arc<Memory>,
    kind: SourceKind,
    delay: Duration,
    down: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
}

impl Remote {
    fn new(kind: SourceKind) -> Self {
        Self {
            store: Arc::new(Memory::new()),
            kind,
            delay: Duration::ZERO,
            down: Arc::default(),
            asked: Arc::default(),
        }
    }

    fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    async fn holding(&self, len: usize, seed: u64) -> (Cid, usize) {
        let imported = unixfs::import(
            &*self.store,
            &pseudo_random(len, seed)[..],
            Default::default(),
            HashAlg::Sha2_256,
            |_| {},
        )
        .await
        .unwrap();
        let blocks = len.div_ceil(256 * 1024) + usize::from(len > 256 * 1024);
        (imported.root, blocks)
    }
}

impl ContentSource for Remote {
    fn kind(&self) -> SourceKind {
        self.kind
    }
    fn retrieve(
        &self,
        cid: &Cid,
        _: &Context,
    ) -> impl std::future::Future<Output = Result<Block, SourceError>> + CondSend {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        let get = self.store.get(cid);
        let delay = self.delay;
        async move {
            if down {
                return Err(SourceError::Unavailable("the test remote is down".into()));
            }
            if !delay.is_zero() {
                crate::rt::sleep(delay).await;
            }
            get.await.ok().flatten().ok_or(SourceError::NotFound)
        }
    }
}

/// A manager fetching into `local` from `remotes` (in order), its driver spawned.
async fn manager(
    config: Config,
    local: Arc<Memory>,
    remotes: Vec<Remote>,
    journal: Option<Arc<dyn Journal>>,
) -> (Transfers, tokio::task::JoinHandle<()>) {
    let fetcher = ChainFetcher::new(local.clone(), move |_| {
        let mut chain = Chain::new().local(local.clone());
        for r in &remotes {
            chain = chain.source(r.clone(), None);
        }
        chain
    });
    let (t, driver) = Transfers::open(config, Arc::new(fetcher), journal)
        .await
        .unwrap();
    (t, tokio::spawn(driver))
}

fn quick_retry() -> Retry {
    Retry {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
        ..Retry::default()
    }
}

/// Waits (bounded) for the first update `pick` accepts.
async fn until(updates: &mut mpsc::Receiver<Update>, pick: impl Fn(&Update) -> bool) -> Update {
    let wait = async {
        while let Some(u) = updates.next().await {
            if pick(&u) {
                return u;
            }
        }
        panic!("updates ended");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the update never came")
}

#[tokio::test]
async fn with_one_slot_transfers_run_by_priority_then_arrival() {
    let remote = Remote::new(SourceKind::Peers);
    let mut roots = Vec::new();
    for seed in 0..5 {
        roots.push(remote.holding(300_000, seed).await.0);
    }
    let local = Arc::new(Memory::new());
    let fetcher = {
        let (local, remote) = (local.clone(), remote.clone());
        ChainFetcher::new(local.clone(), move |_| {
            Chain::new()
                .local(local.clone())
                .source(remote.clone(), None)
        })
    };
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    let (t, driver) = Transfers::open(config, Arc::new(fetcher), None)
        .await
        .unwrap();
    // Everything is queued before the driver runs, so the order is the queue's alone.
    let asked = [
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::Normal,
        Priority::High,
    ];
    let ids: Vec<Id> = roots
        .iter()
        .zip(asked)
        .map(|(r, p)| t.add(Request::new(*r).priority(p)).unwrap())
        .collect();
    let mut updates = t.subscribe();
    let driver = tokio::spawn(driver);
    let mut order = Vec::new();
    while order.len() < 5 {
        let u = until(&mut updates, |u| u.state == State::Done).await;
        order.push(u.id);
    }
    assert_eq!(order, [ids[2], ids[4], ids[1], ids[3], ids[0]]);
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn a_critical_transfer_displaces_a_low_one_and_finishes_first() {
    let remote = Remote::new(SourceKind::Peers);
    let (big, big_blocks) = remote.holding(16 << 20, 1).await;
    let (small, _) = remote.holding(1 << 20, 2).await;
    let local = Arc::new(Memory::new());
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    let (t, driver) = manager(config, local.clone(), vec![remote.clone()], None).await;
    let mut updates = t.subscribe();
    // Capped, so that it is still running when the critical one comes (16 MiB in 4 s).
    let low = t
        .add(
            Request::new(big)
                .priority(Priority::Low)
                .max_rate(Rate::new(4 << 20)),
        )
        .unwrap();
    until(&mut updates, |u| {
        u.id == low && u.state == State::Active && u.progress.blocks_done > 4
    })
    .await;
    let critical = t
        .add(Request::new(small).priority(Priority::Critical))
        .unwrap();
    let first = until(&mut updates, |u| u.state == State::Done).await;
    assert_eq!(first.id, critical, "the critical transfer finishes first");
    let low_done = until(&mut updates, |u| u.id == low && u.state.finished()).await;
    assert_eq!(low_done.state, State::Done);
    assert_eq!(low_done.attempts, 2, "displaced once, then resumed");
    assert_eq!(low_done.progress.bytes_done, low_done.progress.bytes_total);
    // The resumed attempt fetched only what was missing (the window's requests cut when it
    // was displaced may be asked again; nothing else is).
    let asked = remote.asked.load(Ordering::SeqCst);
    let small_blocks = 5;
    assert!(
        asked <= big_blocks + small_blocks + dag::WINDOW,
        "{asked} requests for {big_blocks} + {small_blocks} blocks"
    );
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn a_rate_cap_holds_bytes_to_it() {
    let remote = Remote::new(SourceKind::Gateway);
    let (root, _) = remote.holding(3 << 20, 3).await;
    let local = Arc::new(Memory::new());
    let (t, driver) = manager(Config::default(), local, vec![remote], None).await;
    let rate = Rate::new(1 << 20).unwrap();
    let started = Instant::now();
    let id = t.add(Request::new(root).max_rate(Some(rate))).unwrap();
    let done = t.wait(id).await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.state, State::Done);
    // A full bucket holds half a second of the rate: 3 MiB at 1 MiB/s takes 2.5 s at least.
    assert!(
        took >= Duration::from_millis(2400),
        "3 MiB under a 1 MiB/s cap took {took:?}"
    );
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn nobody_has_it_is_reported_after_a_bounded_number_of_attempts() {
    let remote = Remote::new(SourceKind::Peers);
    let missing =
        Block::from_data(crate::cid::Codec::Raw, HashAlg::Sha2_256, &b"nowhere"[..]).unwrap();
    let config = Config {
        retry: quick_retry(),
        ..Config::default()
    };
    let (t, driver) = manager(config, Arc::new(Memory::new()), vec![remote.clone()], None).await;
    let mut updates = t.subscribe();
    let id = t.add(Request::new(*missing.cid())).unwrap();
    let retrying = until(&mut updates, |u| u.state == State::Retrying).await;
    assert!(retrying.retry_in.is_some());
    assert!(retrying.error.is_some());
    let failed = t.wait(id).await.unwrap();
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.failure, Some(Failure::NotFound));
    assert_eq!(failed.attempts, 2);
    let why = failed.error.unwrap();
    assert!(why.contains("nobody reachable has it"), "{why}");
    assert_eq!(remote.asked.load(Ordering::SeqCst), 2);
    // A failed transfer can be tried again by hand.
    t.resume(id).unwrap();
    assert_eq!(t.wait(id).await.unwrap().attempts, 2, "counted anew");
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_source_is_retried_and_the_transfer_completes() {
    let remote = Remote::new(SourceKind::Peers);
    let (root, _) = remote.holding(600_000, 4).await;
    remote.down.store(true, Ordering::SeqCst);
    let config = Config {
        retry: quick_retry(),
        ..Config::default()
    };
    let (t, driver) = manager(config, Arc::new(Memory::new()), vec![remote.clone()], None).await;
    let mut updates = t.subscribe();
    let id = t.add(Request::new(root)).unwrap();
    let r = until(&mut updates, |u| u.state == State::Retrying).await;
    assert_eq!(r.failure, Some(Failure::Unreachable));
    remote.down.store(false, Ordering::SeqCst);
    let done = t.wait(id).await.unwrap();
    assert_eq!(done.state, State::Done);
    assert!(done.attempts >= 2);
    // Five attempts at most, when it never comes back.
    let other = Remote::new(SourceKind::Peers);
    let (root, _) = other.holding(1000, 5).await;
    other.down.store(true, Ordering::SeqCst);
    let (t2, driver2) = manager(config, Arc::new(Memory::new()), vec![other], None).await;
    let id = t2.add(Request::new(root)).unwrap();
    let failed = t2.wait(id).await.unwrap();
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.attempts, 5);
    assert!(failed.error.unwrap().contains("gave up after 5 attempts"));
    for (t, d) in [(t, driver), (t2, driver2)] {
        t.stop();
        d.await.unwrap();
    }
}

#[tokio::test]
async fn transfers_pause_resume_cancel_and_change_priority() {
    let remote = Remote::new(SourceKind::Peers);
    let (root, _) = remote.holding(8 << 20, 6).await;
    let (other, _) = remote.holding(1 << 20, 7).await;
    let local = Arc::new(Memory::new());
    let (t, driver) = manager(Config::default(), local.clone(), vec![remote.clone()], None).await;
    let mut updates = t.subscribe();
    // Capped, so that it is still running when it is paused (8 MiB in 4 s).
    let id = t
        .add(Request::new(root).max_rate(Rate::new(2 << 20)))
        .unwrap();
    until(&mut updates, |u| {
        u.id == id && u.state == State::Active && u.progress.blocks_done > 3
    })
    .await;
    t.pause(id).unwrap();
    let paused = until(&mut updates, |u| u.id == id && u.state == State::Paused).await;
    let asked = remote.asked.load(Ordering::SeqCst);
    // Paused stays paused: another transfer runs to the end meanwhile, and nothing more of
    // the paused one is asked for.
    let o = t.add(Request::new(other)).unwrap();
    assert_eq!(t.wait(o).await.unwrap().state, State::Done);
    assert_eq!(t.get(id).unwrap().state, State::Paused);
    assert!(remote.asked.load(Ordering::SeqCst) <= asked + 5 + dag::WINDOW);
    t.set_priority(id, Priority::High).unwrap();
    assert_eq!(t.get(id).unwrap().request.priority, Priority::High);
    t.resume(id).unwrap();
    let done = t.wait(id).await.unwrap();
    assert_eq!(done.state, State::Done);
    assert!(done.progress.by_source[0] >= paused.progress.blocks_done.min(1));
    // The same root again is the same transfer while it is unfinished; a new one after.
    let again = t.add(Request::new(other)).unwrap();
    assert_ne!(again, o, "a finished transfer is not reused");
    assert_eq!(t.add(Request::new(other)).unwrap(), again);
    // What cannot be done says why.
    assert_eq!(t.pause(999), Err(Error::Unknown(999)));
    let c = t.add(Request::new(root).priority(Priority::Low)).unwrap();
    t.cancel(c).unwrap();
    assert_eq!(t.get(c).unwrap().state, State::Cancelled);
    assert_eq!(
        t.cancel(c),
        Err(Error::Finished {
            id: c,
            state: State::Cancelled
        })
    );
    assert!(t.resume(c).is_err());
    assert_eq!(
        t.add(Request {
            deadline: Some(SystemTime::now() - Duration::from_secs(1)),
            ..Request::new(root)
        }),
        Err(Error::DeadlinePassed)
    );
    assert!("urgent".parse::<Priority>().is_err());
    assert_eq!("CRITICAL".parse::<Priority>(), Ok(Priority::Critical));
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn a_deadline_ends_a_transfer_that_cannot_finish_in_time() {
    let remote = Remote::new(SourceKind::Peers).slow(Duration::from_secs(3600));
    let (root, _) = remote.holding(1000, 8).await;
    let (t, driver) = manager(
        Config::default(),
        Arc::new(Memory::new()),
        vec![remote],
        None,
    )
    .await;
    let id = t
        .add(Request::new(root).ttl(Duration::from_millis(200)))
        .unwrap();
    let failed = t.wait(id).await.unwrap();
    assert_eq!(failed.state, State::Failed);
    assert_eq!(failed.failure, Some(Failure::Timeout));
    assert!(failed.error.unwrap().contains("deadline"));
    t.stop();
    driver.await.unwrap();
}

#[tokio::test]
async fn preferred_sources_are_used_in_their_order() {
    let peers = Remote::new(SourceKind::Peers);
    let gateway = Remote::new(SourceKind::Gateway);
    let (root, blocks) = peers.holding(700_000, 9).await;
    gateway.holding(700_000, 9).await;
    let (t, driver) = manager(
        Config::default(),
        Arc::new(Memory::new()),
        vec![peers.clone(), gateway.clone()],
        None,
    )
    .await;
    let id = t
        .add(Request::new(root).sources(vec![SourceKind::Gateway, SourceKind::Gateway]))
        .unwrap();
    let done = t.wait(id).await.unwrap();
    assert_eq!(done.request.sources, [SourceKind::Gateway], "deduplicated");
    assert_eq!(
        done.progress.by_source[3], blocks as u64,
        "every block from the gateway"
    );
    assert_eq!(peers.asked.load(Ordering::SeqCst), 0);
    t.stop();
    driver.await.unwrap();
}

#[derive(Default)]
struct MemoryJournal(Mutex<Option<String>>);

impl Journal for MemoryJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<String>, store::Error>> {
        let v = self.0.lock().unwrap().clone();
        boxed(async move { Ok(v) })
    }
    fn save(&self, record: String) -> BoxFuture<'_, Result<(), store::Error>> {
        *self.0.lock().unwrap() = Some(record);
        boxed(async { Ok(()) })
    }
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_resumes_only_what_is_missing() {
    let remote = Remote::new(SourceKind::Peers);
    let (a, a_blocks) = remote.holding(4 << 20, 10).await;
    let (b, _) = remote.holding(300_000, 11).await;
    let (c, _) = remote.holding(300_000, 12).await;
    let local = Arc::new(Memory::new());
    let journal = Arc::new(MemoryJournal::default());
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    let (t, driver) = manager(
        config,
        local.clone(),
        vec![remote.clone()],
        Some(journal.clone()),
    )
    .await;
    let mut updates = t.subscribe();
    // Capped, so that it is still running when the process stops (4 MiB in 3.5 s).
    let ia = t
        .add(
            Request::new(a)
                .priority(Priority::High)
                .max_rate(Rate::new(1 << 20)),
        )
        .unwrap();
    let ib = t
        .add(Request::new(b).sources(vec![SourceKind::Peers]))
        .unwrap();
    let ic = t
        .add(
            Request::new(c)
                .priority(Priority::Low)
                .ttl(Duration::from_secs(3600)),
        )
        .unwrap();
    t.pause(ic).unwrap();
    until(&mut updates, |u| {
        u.id == ia && u.state == State::Active && u.progress.blocks_done > 3
    })
    .await;
    t.stop();
    driver.await.unwrap();
    assert!(
        t.add(Request::new(a)).is_err(),
        "a stopped manager takes nothing"
    );
    let before = remote.asked.load(Ordering::SeqCst);
    let had = t.get(ia).unwrap().progress.blocks_done;

    // A new process: the same ids, requests and states.
    let (t, driver) = manager(
        config,
        local.clone(),
        vec![remote.clone()],
        Some(journal.clone()),
    )
    .await;
    let restored = t.list();
    assert_eq!(
        restored.iter().map(|s| s.id).collect::<Vec<_>>(),
        [ia, ib, ic]
    );
    assert_eq!(restored[0].request.priority, Priority::High);
    assert_eq!(restored[0].request.max_rate, Rate::new(1 << 20));
    assert_eq!(restored[1].request.sources, [SourceKind::Peers]);
    assert!(restored[2].request.deadline.is_some());
    assert_eq!(restored[2].state, State::Paused);
    let done = t.wait(ia).await.unwrap();
    assert_eq!(done.state, State::Done);
    let fetched_again = remote.asked.load(Ordering::SeqCst) - before;
    assert!(
        fetched_again as u64 <= a_blocks as u64 - had + dag::WINDOW as u64 + 2,
        "asked {fetched_again} of {a_blocks} blocks after {had} were kept"
    );
    assert!(
        done.progress.by_source[0] >= had,
        "the kept blocks were read locally"
    );
    assert_eq!(t.wait(ib).await.unwrap().state, State::Done);
    assert_eq!(t.get(ic).unwrap().state, State::Paused);
    let record = journal.0.lock().unwrap().clone().unwrap();
    assert_eq!(
        record.lines().count(),
        2,
        "only the paused one is left: {record}"
    );
    // A journal line that cannot be read is skipped, not fatal.
    *journal.0.lock().unwrap() = Some(format!("{record}junk line\n"));
    t.stop();
    driver.await.unwrap();
    let (t, driver) = manager(config, local, vec![remote], Some(journal)).await;
    assert_eq!(t.list().len(), 1);
    t.stop();
    driver.await.unwrap();
}
