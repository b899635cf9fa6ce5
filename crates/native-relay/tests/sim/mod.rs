//! A network simulation, in process on loopback: R relays federated through the first one,
//! N native nodes each given two of them as bootstrap peers (the DHT then spans relays and
//! nodes: nodes that announce reachable addresses serve it too, as IPFS nodes do). Every node
//! adds a file and provides it; every node then fetches three random others' files: a
//! provider lookup in the DHT, a connection to the provider, the file over `/cas`. With
//! churn, one relay is stopped halfway through the fetches. Used by `tests/network.rs`
//! (small) and `benches/network.rs` (N = 20, 100, 300).
//!
//! The nodes run in this process, or spread over `processes` child processes of the
//! running binary (whose `main` calls [`shard_main`] first) while the relays stay here:
//! both ends of every loopback connection are then no longer in one process, whose open
//! files the machine caps (20,000 here: 300 nodes in one process need more).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::Memory;
use cairn_core::{Cid, dag};
use cairn_p2p::{Event, Node};
use cairn_relay::relay::{Config, Running};
use futures::StreamExt;
use libp2p::Multiaddr;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Params {
    pub relays: usize,
    pub nodes: usize,
    /// Files each node fetches (of others, at random).
    pub fetches: usize,
    /// The size of each node's file.
    pub file_len: usize,
    /// Whether one relay is stopped halfway through the fetches.
    pub churn: bool,
    /// Fetches under way at once.
    pub parallel: usize,
    pub seed: u64,
    /// Processes the nodes run in: 1, this one; more, children of this binary, node `i`
    /// in child `i % processes` (see [`shard_main`]).
    pub processes: usize,
}

/// What it came to.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Report {
    pub relays: usize,
    pub nodes: usize,
    pub fetches: usize,
    pub succeeded: usize,
    pub failures: Vec<String>,
    pub find_ms_median: f64,
    pub find_ms_p95: f64,
    pub first_byte_ms_median: f64,
    pub first_byte_ms_p95: f64,
    /// DHT peers asked per lookup.
    pub dht_requests_median: f64,
    pub dht_requests_p95: f64,
    /// Per relay: the provider records it stored, and its peers at the end (`None`: the
    /// relay stopped for churn).
    pub relay_records: Vec<usize>,
    pub relay_peers: Vec<Option<usize>>,
    /// Each node's provide of its file (a Kademlia query for the closest peers, then the
    /// record sent to each): how long it took, and those that did not complete, with why.
    pub provide_ms_median: f64,
    pub provide_ms_p95: f64,
    pub not_provided: Vec<String>,
    pub setup_s: f64,
    pub provide_s: f64,
    pub fetch_s: f64,
    pub processes: usize,
    /// The most files (sockets, mostly: both ends of a connection between two nodes of one
    /// process are in it) open at once, sampled every second through the run: in each
    /// process (the relays' first), and their sum (an upper bound on the total at once).
    pub peak_open_files: usize,
    pub peak_open_files_by_process: Vec<usize>,
    /// Once every fetch is done and the idle timeout has passed: the files still open, and
    /// each node's connected peers (median, most). What is left is what nodes keep (their
    /// bootstrap relays, GossipSub's mesh), not every peer they ever reached.
    pub idle_open_files: usize,
    pub idle_peers: Vec<usize>,
    pub idle_peers_median: f64,
    pub idle_peers_max: usize,
}

/// The nodes' idle timeout: sooner than the default minute, because every connection's two
/// ends are sockets of this one process; not so soon that a connection made for a fetch
/// closes before the fetch starts on a loaded machine (3 s did, 7 fetches of 600).
const IDLE: Duration = Duration::from_secs(10);

/// Files this process holds open now.
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// Node `i`'s file: from the seed and `i` alone, so every process knows every root.
fn file_of(p: &Params, i: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        p.seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64),
    );
    let mut v = vec![0u8; p.file_len];
    rng.fill(&mut v[..]);
    v
}

/// Every node's root, in order.
async fn roots_of(p: &Params) -> Vec<Cid> {
    let mut roots = Vec::with_capacity(p.nodes);
    for i in 0..p.nodes {
        roots.push(super::common::import(&Memory::new(), &file_of(p, i)).await);
    }
    roots
}

/// The fetches, node `i` fetching node `j`'s file, in the order they start: two halves
/// with churn (a relay is stopped between them), else one.
fn plan(p: &Params) -> Vec<Vec<(usize, usize)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut plan = Vec::new();
    for i in 0..p.nodes {
        let mut others: Vec<usize> = (0..p.nodes).filter(|&j| j != i).collect();
        others.shuffle(&mut rng);
        for &j in others.iter().take(p.fetches) {
            plan.push((i, j));
        }
    }
    plan.shuffle(&mut rng);
    if p.churn {
        let second = plan.split_off(plan.len() / 2);
        vec![plan, second]
    } else {
        vec![plan]
    }
}

/// Starts the nodes numbered `hosted`, each holding its file and bootstrapping from two
/// relays, on loopback TCP (serving the DHT once its listen address is announced).
async fn start_nodes(p: &Params, relays: &[Multiaddr], hosted: &[usize]) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(hosted.len());
    for (n, &i) in hosted.iter().enumerate() {
        let store = Arc::new(Memory::new());
        super::common::import(&*store, &file_of(p, i)).await;
        let config = cairn_p2p::node::Config {
            bootstrap: vec![
                relays[i % relays.len()].clone(),
                relays[(i + 1) % relays.len()].clone(),
            ],
            nat: Some(cairn_p2p::behaviour::Nat {
                global_only: false,
                // No AutoNAT probing during the run: the nodes announce their addresses.
                first_probe: Duration::from_secs(3600),
                refresh: Duration::from_secs(3600),
                mdns: false,
                upnp: false,
            }),
            idle_timeout: IDLE,
            ..Default::default()
        };
        let node = super::common::native_node(store, config).await;
        node.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
        nodes.push(node);
        if (n + 1) % 50 == 0 {
            eprintln!("sim: {} nodes started, {} files open", n + 1, open_files());
        }
    }
    for n in &nodes {
        until_bootstrapped(n, Duration::from_secs(120)).await;
    }
    nodes
}

/// One node's provide of its file: how long it took, or why it did not complete.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Provided {
    i: usize,
    result: Result<f64, String>,
}

/// Every node provides its own file, `parallel` at once (two minutes each at most: the DHT
/// gives up on a query after one).
async fn provide_all(nodes: &[(usize, &Node)], roots: &[Cid], parallel: usize) -> Vec<Provided> {
    futures::stream::iter(nodes)
        .map(|&(i, n)| async move {
            let t = Instant::now();
            let result =
                match tokio::time::timeout(Duration::from_secs(120), n.provide(roots[i])).await {
                    Ok(Ok(())) => Ok(t.elapsed().as_secs_f64() * 1e3),
                    Ok(Err(e)) => Err(format!("after {:.1} s: {e}", t.elapsed().as_secs_f64())),
                    Err(_) => Err("not done in 120 s".to_string()),
                };
            Provided { i, result }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// The fetches of `plan` whose fetching node is among `nodes`, `parallel` at once.
async fn fetch_among(
    nodes: &HashMap<usize, &Node>,
    roots: &[Cid],
    plan: &[(usize, usize)],
    p: &Params,
    parallel: usize,
) -> Vec<Outcome> {
    futures::stream::iter(plan.iter().filter(|(i, _)| nodes.contains_key(i)))
        .map(|&(i, j)| async move {
            Outcome {
                i,
                j,
                result: fetch_one(nodes[&i], roots[j], p.file_len).await,
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// Once idle connections had their time to close (this wait is what is measured: the idle
/// timeout, and a little for the closes to land): the files this process holds open, and
/// each node's connected peers.
async fn once_idle(nodes: &[Node]) -> (usize, Vec<usize>) {
    tokio::time::sleep(IDLE + Duration::from_secs(3)).await;
    (
        open_files(),
        nodes.iter().map(|n| n.peers().len()).collect(),
    )
}

/// Samples this process's open files every second (reading `/proc/self/fd` costs: every
/// 200 ms, it took 5 % of a 100-node process's time); the most seen so far.
fn sample_open_files() -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicUsize::new(open_files()));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(open_files(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    (peak, sampler)
}

/// Waits (on its events) until every bootstrap peer of `node` is connected, for at most
/// `limit`.
async fn until_bootstrapped(node: &Node, limit: Duration) {
    let mut events = node.events();
    let wait = async {
        loop {
            if node
                .bootstrap_peers()
                .await
                .unwrap()
                .iter()
                .all(|p| p.connected)
            {
                return;
            }
            events.next().await.expect("running");
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("{}: bootstrap peers never all connected", node.peer_id()));
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sample {
    find_ms: f64,
    first_byte_ms: f64,
    requests: u32,
}

/// One fetch of the plan: node `i` fetching node `j`'s file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Outcome {
    i: usize,
    j: usize,
    result: Result<Sample, String>,
}

/// One fetch: the provider lookup, then the file; what it took, or why it failed.
async fn fetch_one(node: &Node, root: Cid, len: usize) -> Result<Sample, String> {
    let t0 = Instant::now();
    let lookup = node
        .lookup_providers(root)
        .await
        .map_err(|e| format!("lookup: {e}"))?;
    let find_ms = t0.elapsed().as_secs_f64() * 1e3;
    let Some(&provider) = lookup.providers.first() else {
        return Err(format!(
            "no provider found ({} DHT peers asked)",
            lookup.requests
        ));
    };
    // The provider is being dialed; wait until it can be asked.
    if node
        .wait_for(&[provider], Duration::from_secs(20), |p| p.askable())
        .await
        .is_none()
    {
        return Err(format!("provider {provider} never became askable"));
    }
    let store = Arc::new(Memory::new());
    let race = cairn_p2p::sources::cas_source(
        node,
        Some(root),
        RaceConfig {
            per_peer_timeout: Some(Duration::from_secs(20)),
            max_parallel: 4,
            // As every node does: a block no connected peer has sends the node back to the
            // DHT. Connections close once idle, and one closing between two of a fetch's
            // requests left the fetch with no peer that had its blocks (2 of 300 fetches
            // at 100 nodes, with this off).
            look_up: true,
            ..Default::default()
        },
    );
    let chain = Chain::new().local(store.clone()).source(race, None);
    let ctx = Context::new().with_timeout(Duration::from_secs(60));
    let first = Arc::new(Mutex::new(None::<Instant>));
    let seen = first.clone();
    let report = dag::fetch(
        &chain,
        &*store,
        root,
        dag::Options {
            window: 16,
            ..Default::default()
        },
        &ctx,
        move |_| {
            let mut f = seen.lock().unwrap();
            f.get_or_insert_with(Instant::now);
        },
    )
    .await
    .map_err(|e| format!("fetch: {e}"))?;
    if report.progress.bytes_done < len as u64 {
        return Err(format!(
            "fetched {} of {len} bytes",
            report.progress.bytes_done
        ));
    }
    let first_byte_ms = first
        .lock()
        .unwrap()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1e3)
        .unwrap_or(f64::NAN);
    Ok(Sample {
        find_ms,
        first_byte_ms,
        requests: lookup.requests,
    })
}

/// Runs the simulation.
pub(crate) async fn run(p: Params) -> Report {
    assert!(p.relays >= 2 && p.nodes >= 2 && p.processes >= 1);
    let started = Instant::now();
    let (peak, sampler) = sample_open_files();

    // Relays: the first, then the others bootstrapping from it.
    let first = super::common::relay_with(Config::loopback()).await;
    let mut relays: Vec<Option<Running>> = vec![Some(first)];
    for _ in 1..p.relays {
        let boot = relays[0].as_ref().unwrap().addrs[0].clone();
        relays.push(Some(
            super::common::relay_with(Config {
                bootstrap: vec![boot],
                ..Config::loopback()
            })
            .await,
        ));
    }
    let relay_addrs: Vec<_> = relays
        .iter()
        .map(|r| r.as_ref().unwrap().addrs[0].clone())
        .collect();
    for r in relays.iter().skip(1) {
        until_bootstrapped(&r.as_ref().unwrap().node, Duration::from_secs(30)).await;
    }
    // Provider records each relay stores.
    let records: Vec<Arc<Mutex<usize>>> = relays.iter().map(|_| Arc::default()).collect();
    for (r, count) in relays.iter().zip(&records) {
        let mut events = r.as_ref().unwrap().node.events();
        let count = count.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let Event::ProviderRecord { stored: true, .. } = e {
                    *count.lock().unwrap() += 1;
                }
            }
        });
    }

    // Nodes: here, or in child processes.
    let roots = roots_of(&p).await;
    let plan = plan(&p);
    let mut here = Vec::new();
    let mut children = Vec::new();
    if p.processes == 1 {
        here = start_nodes(&p, &relay_addrs, &(0..p.nodes).collect::<Vec<_>>()).await;
    } else {
        children = (0..p.processes)
            .map(|k| Child::start(k, &p, &relay_addrs))
            .collect();
        for c in &mut children {
            c.expect("ready", Duration::from_secs(900));
        }
    }
    let here_by_index: HashMap<usize, &Node> = here.iter().enumerate().collect();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "sim: {} nodes bootstrapped in {setup_s:.1} s ({} process(es)), {} files open here (peak {})",
        p.nodes,
        p.processes,
        open_files(),
        peak.load(Ordering::Relaxed)
    );

    // Every node provides its file.
    let t = Instant::now();
    let provided = if children.is_empty() {
        let all: Vec<_> = here.iter().enumerate().collect();
        provide_all(&all, &roots, p.parallel).await
    } else {
        for c in &mut children {
            c.send("provide");
        }
        answers::<Vec<Provided>>(&mut children, "provided", Duration::from_secs(1800))
            .into_iter()
            .flatten()
            .collect()
    };
    let mut provide_ms = Vec::new();
    let mut not_provided = Vec::new();
    for d in &provided {
        match &d.result {
            Ok(ms) => provide_ms.push(*ms),
            Err(e) => not_provided.push(format!("node {}: {e}", d.i)),
        }
    }
    let provide_s = t.elapsed().as_secs_f64();

    // Every node fetches `fetches` random others' files.
    let t = Instant::now();
    let mut outcomes = Vec::new();
    let last = p.relays - 1;
    for (h, half) in plan.iter().enumerate() {
        if h == 1 {
            // Churn: the last relay goes away halfway.
            if let Some(r) = relays[last].take() {
                r.shutdown().await;
            }
        }
        if children.is_empty() {
            outcomes.extend(fetch_among(&here_by_index, &roots, half, &p, p.parallel).await);
        } else {
            for c in &mut children {
                c.send(&format!("fetch {h}"));
            }
            let done = answers::<Vec<Outcome>>(&mut children, "fetched", Duration::from_secs(1800));
            outcomes.extend(done.into_iter().flatten());
        }
    }
    let fetch_s = t.elapsed().as_secs_f64();

    let mut find = Vec::new();
    let mut ttfb = Vec::new();
    let mut reqs = Vec::new();
    let mut failures = Vec::new();
    for o in &outcomes {
        match &o.result {
            Ok(s) => {
                find.push(s.find_ms);
                ttfb.push(s.first_byte_ms);
                reqs.push(f64::from(s.requests));
            }
            Err(e) => failures.push(format!("node {} fetching node {}'s file: {e}", o.i, o.j)),
        }
    }

    // What is left once idle, in every process.
    for c in &mut children {
        c.send("idle");
    }
    let (mut idle_open_files, mut idle_peers) = once_idle(&here).await;
    let mut peaks = vec![peak.load(Ordering::Relaxed)];
    for idle in answers::<ChildIdle>(&mut children, "idle", Duration::from_secs(120)) {
        idle_open_files += idle.files;
        idle_peers.extend(idle.peers);
        peaks.push(idle.peak);
    }
    let idle_peers_max = idle_peers.iter().copied().max().unwrap_or(0);
    let idle_peers_median = percentile(
        &mut idle_peers.iter().map(|&n| n as f64).collect::<Vec<_>>(),
        0.5,
    );
    eprintln!(
        "sim: idle: {idle_open_files} files open; peers per node median {idle_peers_median}, most {idle_peers_max}"
    );
    let relay_peers = relays
        .iter()
        .map(|r| r.as_ref().map(|r| r.node.peers().len()))
        .collect();
    let relay_records = records.iter().map(|c| *c.lock().unwrap()).collect();
    let report = Report {
        relays: p.relays,
        nodes: p.nodes,
        fetches: outcomes.len(),
        succeeded: outcomes.len() - failures.len(),
        failures,
        find_ms_median: percentile(&mut find.clone(), 0.5),
        find_ms_p95: percentile(&mut find, 0.95),
        first_byte_ms_median: percentile(&mut ttfb.clone(), 0.5),
        first_byte_ms_p95: percentile(&mut ttfb, 0.95),
        dht_requests_median: percentile(&mut reqs.clone(), 0.5),
        dht_requests_p95: percentile(&mut reqs, 0.95),
        relay_records,
        relay_peers,
        provide_ms_median: percentile(&mut provide_ms.clone(), 0.5),
        provide_ms_p95: percentile(&mut provide_ms, 0.95),
        not_provided,
        setup_s,
        provide_s,
        fetch_s,
        processes: p.processes,
        peak_open_files: peaks.iter().sum(),
        peak_open_files_by_process: peaks,
        idle_open_files,
        idle_peers,
        idle_peers_median,
        idle_peers_max,
    };
    sampler.abort();
    for n in &here {
        n.stop().await;
    }
    for mut c in children {
        c.stop();
    }
    for r in relays.into_iter().flatten() {
        r.shutdown().await;
    }
    report
}

/// Every child's `what` answer, read as JSON, in the children's order.
fn answers<T: serde::de::DeserializeOwned>(
    children: &mut [Child],
    what: &str,
    limit: Duration,
) -> Vec<T> {
    children
        .iter_mut()
        .map(|c| {
            let json = c.expect(what, limit);
            serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("process {}: {what} {json:?}: {e}", c.k))
        })
        .collect()
}

/// A child process's nodes once idle, and the most files it held open.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildIdle {
    files: usize,
    peers: Vec<usize>,
    peak: usize,
}

/// The environment that makes this binary a simulation's child process: its number, the
/// [`Params`] (JSON) and the relays' addresses (space-separated).
const CHILD: &str = "CAIRN_SIM_PROCESS";
const CHILD_PARAMS: &str = "CAIRN_SIM_PARAMS";
const CHILD_RELAYS: &str = "CAIRN_SIM_RELAYS";
/// What starts a child's answer on its stdout (anything else there is passed on).
const ANSWER: &str = "cairn-sim: ";

/// A child process running some of the nodes, directed a line at a time on its stdin
/// (`provide`, `fetch H`, `idle`); it answers a line on its stdout. Killed when dropped.
struct Child {
    k: usize,
    process: super::common::Kill,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::mpsc::Receiver<String>,
}

impl Child {
    fn start(k: usize, p: &Params, relays: &[Multiaddr]) -> Child {
        let exe = std::env::current_exe().expect("the running binary's path");
        let mut process = std::process::Command::new(exe)
            .env(CHILD, k.to_string())
            .env(CHILD_PARAMS, serde_json::to_string(p).unwrap())
            .env(
                CHILD_RELAYS,
                relays
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start simulation process {k}: {e}"));
        let stdin = process.stdin.take();
        let out = super::common::lines(process.stdout.take().unwrap());
        Child {
            k,
            process: super::common::Kill(process),
            stdin,
            out,
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("not stopped");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("simulation process {}: {command}: {e}", self.k));
    }

    /// Waits for its `what` answer and returns what follows the word. The wait blocks this
    /// worker thread (the runtime moves its other tasks away).
    fn expect(&mut self, what: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        let word = format!("{ANSWER}{what}");
        tokio::task::block_in_place(|| {
            loop {
                match self
                    .out
                    .recv_timeout(until.saturating_duration_since(Instant::now()))
                {
                    Ok(line) => match line.strip_prefix(&word) {
                        Some(rest) => return rest.trim().to_string(),
                        None => eprintln!("sim process {}: {line}", self.k),
                    },
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        panic!(
                            "simulation process {}: no `{what}` within {limit:?}",
                            self.k
                        )
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!(
                        "simulation process {} ended before `{what}` (its stderr, above, says why)",
                        self.k
                    ),
                }
            }
        })
    }

    /// Closes its stdin, which ends it; waits for that (30 s at most, then kills it).
    fn stop(&mut self) {
        self.stdin = None;
        let _ = self.process.exit_within(Duration::from_secs(30));
    }
}

/// When this process is a simulation's child ([`CHILD`] is set): runs its share of the
/// nodes as the parent directs and returns true once the parent closes its stdin. Else
/// returns false at once. A binary that runs [`run`] with `processes > 1` calls it first.
pub(crate) fn shard_main() -> bool {
    let Ok(k) = std::env::var(CHILD) else {
        return false;
    };
    let k: usize = k.parse().expect("CAIRN_SIM_PROCESS: a number");
    let p: Params = serde_json::from_str(&std::env::var(CHILD_PARAMS).expect(CHILD_PARAMS))
        .expect("CAIRN_SIM_PARAMS: JSON");
    let relays: Vec<Multiaddr> = std::env::var(CHILD_RELAYS)
        .expect(CHILD_RELAYS)
        .split(' ')
        .map(|a| a.parse().expect("CAIRN_SIM_RELAYS: multiaddrs"))
        .collect();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(child(k, p, relays));
    true
}

fn answer(what: &str, rest: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ANSWER}{what} {rest}")
        .and_then(|()| out.flush())
        .expect("answer the parent");
}

/// A child's share: nodes `k`, `k + processes`, …
async fn child(k: usize, p: Params, relays: Vec<Multiaddr>) {
    // The parent's commands, a line each (it sends one and waits for the answer); its
    // closing stdin (or going away) ends them.
    let (tx, mut commands) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let (peak, sampler) = sample_open_files();
    let hosted: Vec<usize> = (k..p.nodes).step_by(p.processes).collect();
    let roots = roots_of(&p).await;
    let plan = plan(&p);
    let nodes = start_nodes(&p, &relays, &hosted).await;
    let by_index: HashMap<usize, &Node> = hosted.iter().copied().zip(&nodes).collect();
    let parallel = p.parallel.div_ceil(p.processes);
    answer("ready", "");
    while let Some(command) = commands.recv().await {
        match command.split_once(' ').unwrap_or((&command, "")) {
            ("provide", _) => {
                let mine: Vec<(usize, &Node)> = hosted.iter().copied().zip(&nodes).collect();
                let done = provide_all(&mine, &roots, parallel).await;
                answer("provided", &serde_json::to_string(&done).unwrap());
            }
            ("fetch", h) => {
                let half = &plan[h.parse::<usize>().expect("fetch H")];
                let done = fetch_among(&by_index, &roots, half, &p, parallel).await;
                answer("fetched", &serde_json::to_string(&done).unwrap());
            }
            ("idle", _) => {
                let (files, peers) = once_idle(&nodes).await;
                let idle = ChildIdle {
                    files,
                    peers,
                    peak: peak.load(Ordering::Relaxed),
                };
                answer("idle", &serde_json::to_string(&idle).unwrap());
            }
            (other, _) => panic!("simulation process {k}: no such command: {other:?}"),
        }
    }
    sampler.abort();
    for n in &nodes {
        n.stop().await;
    }
}
