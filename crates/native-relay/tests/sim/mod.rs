//! A network simulation, in process on loopback: R relays federated through the first one,
//! N native nodes each given two of them as bootstrap peers (the DHT then spans relays and
//! nodes: nodes that announce reachable addresses serve it too, as IPFS nodes do). Every node
//! adds a file and provides it; every node then fetches three random others' files: a
//! provider lookup in the DHT, a connection to the provider, the file over `/cas`. With
//! churn, one relay is stopped halfway through the fetches. Used by `tests/network.rs`
//! (small) and `benches/network.rs` (N = 20, 100, 300).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::Memory;
use cairn_core::{Cid, dag};
use cairn_p2p::{Event, Node};
use cairn_relay::relay::{Config, Running};
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
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
    pub setup_s: f64,
    pub provide_s: f64,
    pub fetch_s: f64,
    /// The most files (sockets, mostly: both ends of every connection are in this process)
    /// open at once, sampled every 200 ms through the run.
    pub peak_open_files: usize,
    /// Once every fetch is done and the idle timeout has passed: the files still open, and
    /// each node's connected peers (median, most). What is left is what nodes keep (their
    /// bootstrap relays, GossipSub's mesh), not every peer they ever reached.
    pub idle_open_files: usize,
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

fn random_file(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
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

struct Sample {
    find_ms: f64,
    first_byte_ms: f64,
    requests: u32,
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
            per_peer_timeout: Duration::from_secs(20),
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
    assert!(p.relays >= 2 && p.nodes >= 2);
    let started = Instant::now();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(open_files()));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(open_files(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);

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

    // Nodes: each on loopback TCP, bootstrapping from two relays, serving the DHT once its
    // listen address is announced.
    let mut nodes = Vec::with_capacity(p.nodes);
    let mut roots = Vec::with_capacity(p.nodes);
    for i in 0..p.nodes {
        let store = Arc::new(Memory::new());
        let root = super::common::import(&*store, &random_file(&mut rng, p.file_len)).await;
        let config = cairn_p2p::node::Config {
            bootstrap: vec![
                relay_addrs[i % p.relays].clone(),
                relay_addrs[(i + 1) % p.relays].clone(),
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
        roots.push(root);
        if (i + 1) % 50 == 0 {
            eprintln!("sim: {} nodes started, {} files open", i + 1, open_files());
        }
    }
    for n in &nodes {
        until_bootstrapped(n, Duration::from_secs(60)).await;
    }
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "sim: {} nodes bootstrapped in {setup_s:.1} s, {} files open (peak {})",
        p.nodes,
        open_files(),
        peak.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Every node provides its file.
    let t = Instant::now();
    let provided =
        futures::stream::iter(nodes.iter().zip(&roots))
            .map(|(n, r)| async move {
                tokio::time::timeout(Duration::from_secs(60), n.provide(*r)).await
            })
            .buffer_unordered(p.parallel)
            .collect::<Vec<_>>()
            .await;
    assert!(
        provided.iter().all(|r| matches!(r, Ok(Ok(())))),
        "every provide completes: {:?}",
        provided.iter().filter(|r| !matches!(r, Ok(Ok(())))).count()
    );
    let provide_s = t.elapsed().as_secs_f64();

    // Every node fetches `fetches` random others' files.
    let mut plan = Vec::new();
    for i in 0..p.nodes {
        let mut others: Vec<usize> = (0..p.nodes).filter(|&j| j != i).collect();
        others.shuffle(&mut rng);
        for &j in others.iter().take(p.fetches) {
            plan.push((i, j));
        }
    }
    plan.shuffle(&mut rng);
    let t = Instant::now();
    let halves = if p.churn {
        let mid = plan.len() / 2;
        vec![plan[..mid].to_vec(), plan[mid..].to_vec()]
    } else {
        vec![plan.clone()]
    };
    let mut outcomes = Vec::new();
    let last = p.relays - 1;
    for (h, half) in halves.into_iter().enumerate() {
        if h == 1 {
            // Churn: the last relay goes away halfway.
            if let Some(r) = relays[last].take() {
                r.shutdown().await;
            }
        }
        let nodes = &nodes;
        let roots = &roots;
        let done = futures::stream::iter(half)
            .map(|(i, j)| async move { (i, j, fetch_one(&nodes[i], roots[j], p.file_len).await) })
            .buffer_unordered(p.parallel)
            .collect::<Vec<_>>()
            .await;
        outcomes.extend(done);
    }
    let fetch_s = t.elapsed().as_secs_f64();

    let mut find = Vec::new();
    let mut ttfb = Vec::new();
    let mut reqs = Vec::new();
    let mut failures = Vec::new();
    for (i, j, o) in &outcomes {
        match o {
            Ok(s) => {
                find.push(s.find_ms);
                ttfb.push(s.first_byte_ms);
                reqs.push(f64::from(s.requests));
            }
            Err(e) => failures.push(format!("node {i} fetching node {j}'s file: {e}")),
        }
    }
    // What is left once idle connections had their time to close (this wait is what is
    // measured: the idle timeout, and a little for the closes to land).
    tokio::time::sleep(IDLE + Duration::from_secs(3)).await;
    let idle_open_files = open_files();
    let idle_peers: Vec<usize> = nodes.iter().map(|n| n.peers().len()).collect();
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
        setup_s,
        provide_s,
        fetch_s,
        peak_open_files: peak.load(std::sync::atomic::Ordering::Relaxed),
        idle_open_files,
        idle_peers_median,
        idle_peers_max,
    };
    sampler.abort();
    for n in &nodes {
        n.stop().await;
    }
    for r in relays.into_iter().flatten() {
        r.shutdown().await;
    }
    report
}
