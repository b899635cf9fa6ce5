//! The soak: a `cairn-relay serve` process under a crowd of peers that come and go, native
//! and js-libp2p, beside the floods of `slow_readers.rs`, for a bounded time. Every period it
//! reports the relay's resident memory, open descriptors, threads, runtime tasks, connected
//! peers and answer bytes held; at the end these must be flat after the warm-up and every
//! legitimate request must have been served.
//!
//! `cargo xtask soak [MINUTES]` runs it for MINUTES (10 by default) with 200 peers, built for
//! release; `cargo xtask test` runs a 45-second version with 34 peers so it cannot rot.
//!
//! Each native peer, in a loop: a fresh identity dials the relay, reserves a slot, asks the
//! relay for 4 blocks over `/cas` (verified), asks another live peer for its block through a
//! relay circuit (verified), announces a root, and leaves. Each js-libp2p peer reserves, asks
//! the relay for a block, and leaves (`tests/js/libp2p-interop.mjs soak`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::store::{BlockStore, Memory};
use cairn_core::{Block, Cid, Codec, HashAlg};
use common::flood::{self, MIB, ProcStats, Relay};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

struct Plan {
    minutes: f64,
    native: usize,
    js: usize,
    sample: Duration,
}

fn plan() -> Plan {
    match std::env::var("CAIRN_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse::<f64>().ok())
    {
        Some(minutes) => Plan {
            minutes,
            native: 180,
            js: 20,
            sample: Duration::from_secs(60),
        },
        None => Plan {
            minutes: 0.75,
            native: 30,
            js: 4,
            sample: Duration::from_secs(15),
        },
    }
}

/// Peers that hold a block and listen on the relay, for others to ask through a circuit.
type Live = Arc<Mutex<HashMap<PeerId, (Multiaddr, Cid)>>>;

#[derive(Default)]
struct Counts {
    rounds: AtomicU64,
    blocks: AtomicU64,
    circuits: AtomicU64,
    announced: AtomicU64,
    failures: AtomicU64,
}

/// One round of a native peer; an error names what a legitimate request did not get.
async fn round(relay: &Relay, live: &Live, counts: &Counts, seq: u64) -> Result<(), String> {
    let store = Arc::new(Memory::new());
    let own = Block::from_data(
        Codec::Raw,
        HashAlg::Sha2_256,
        format!("soak block {seq} {:?}", Instant::now()).into_bytes(),
    )
    .map_err(|e| e.to_string())?;
    store.put(own.clone()).await.map_err(|e| e.to_string())?;
    let n = common::node(store).await;
    let result = async {
        n.dial(relay.addr.clone())
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let circuit = relay.addr.clone().with(Protocol::P2pCircuit);
        let listening = n
            .listen(circuit)
            .await
            .map_err(|e| format!("reservation: {e}"))?;
        live.lock()
            .unwrap()
            .insert(n.peer_id(), (listening, *own.cid()));
        common::until_cas(&n, relay.peer).await;
        for k in 0..4 {
            let cid = relay.leaves[(seq as usize * 4 + k) % relay.leaves.len()];
            let bytes = n
                .get(relay.peer, &cid)
                .await
                .map_err(|e| format!("get {cid} from the relay: {e}"))?;
            Block::new(cid, bytes).map_err(|e| format!("{cid} from the relay: {e}"))?;
            counts.blocks.fetch_add(1, Ordering::Relaxed);
        }
        // Another live peer's block, through a circuit (a different one each round, so no
        // peer gets more circuits than a relay allows one peer).
        let other = {
            let others: Vec<_> = live
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| **p != n.peer_id())
                .map(|(p, v)| (*p, v.clone()))
                .collect();
            (!others.is_empty()).then(|| others[seq as usize % others.len()].clone())
        };
        if let Some((peer, (addr, cid))) = other {
            let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
            let asked = async {
                n.dial(addr).await.map_err(|e| e.to_string())?;
                let bytes = n.get(peer, &cid).await.map_err(|e| e.to_string())?;
                Block::new(cid, bytes).map_err(|e| e.to_string())
            }
            .await;
            match asked {
                Ok(_) => {
                    counts.circuits.fetch_add(1, Ordering::Relaxed);
                }
                // It may have left meanwhile: only a peer still there had to answer.
                Err(e) if live.lock().unwrap().contains_key(&peer) => {
                    return Err(format!("{cid} from {peer} through a circuit: {e}"));
                }
                Err(_) => {}
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match n
                .announce(*own.cid(), own.len() as u64, Duration::from_secs(60))
                .await
            {
                Ok(()) => break,
                Err(cairn_p2p::node::Error::NoAnnouncementPeers) if Instant::now() < deadline => {
                    // GossipSub has not seen the relay's subscription yet.
                    let mut events = n.events();
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        use futures::StreamExt;
                        events.next().await
                    })
                    .await;
                }
                Err(e) => return Err(format!("announce: {e}")),
            }
        }
        counts.announced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    .await;
    live.lock().unwrap().remove(&n.peer_id());
    n.stop().await;
    result
}

/// Kills a child process (by its pid) when dropped before it has been waited for.
struct KillUnlessDone {
    pid: u32,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for KillUnlessDone {
    fn drop(&mut self) {
        if !self.done.load(Ordering::SeqCst) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// What one sample saw.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    proc: ProcStats,
    tasks: f64,
    peers: f64,
    queued: f64,
    cut: f64,
}

async fn sample(relay: &Relay, started: Instant) -> Sample {
    let m = |name: &'static str| relay.metric(name);
    let queued = m("cairn_answer_bytes_queued{path=\"cas\"}").await
        + m("cairn_answer_bytes_queued{path=\"bitswap\"}").await
        + m("cairn_answer_bytes_queued{path=\"http\"}").await;
    let cut = m("cairn_askers_cut_total{path=\"cas\"}").await
        + m("cairn_askers_cut_total{path=\"bitswap\"}").await
        + m("cairn_askers_cut_total{path=\"http\"}").await;
    Sample {
        at: started.elapsed(),
        proc: flood::proc_stats(relay.pid()),
        tasks: m("cairn_runtime_alive_tasks").await,
        peers: m("cairn_connected_peers").await,
        queued,
        cut,
    }
}

fn print(s: &Sample) {
    eprintln!(
        "soak {:>6.0}s  rss {:>4} MiB  fds {:>5}  threads {:>3}  tasks {:>6}  peers {:>4}  queued {:>4} MiB  cut {:>4}",
        s.at.as_secs_f64(),
        s.proc.rss / MIB as u64,
        s.proc.fds,
        s.proc.threads,
        s.tasks,
        s.peers,
        s.queued / MIB as f64,
        s.cut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 (js-libp2p peers); `cargo xtask test` runs it short, `cargo xtask soak` long"]
async fn the_relay_stays_flat_under_churn_and_floods() {
    common::logs();
    let plan = plan();
    // One address for every peer: lift the per-IP rate limits a public relay keeps.
    let relay = Arc::new(
        flood::start_relay_with(
            "reservations_per_ip_burst = 1000000\ncircuits_per_ip_burst = 1000000\nmax_reservations = 4096\n",
        )
        .await,
    );
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(plan.minutes * 60.0);
    let live: Live = Arc::default();
    let counts = Arc::new(Counts::default());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seq = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for _ in 0..plan.native {
        let (relay, live, counts, errors, seq) = (
            relay.clone(),
            live.clone(),
            counts.clone(),
            errors.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let s = seq.fetch_add(1, Ordering::Relaxed);
                match round(&relay, &live, &counts, s).await {
                    Ok(()) => {
                        counts.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                        let mut errs = errors.lock().unwrap();
                        if errs.len() < 10 {
                            errs.push(e);
                        }
                    }
                }
            }
        }));
    }

    // js-libp2p peers, in their own process.
    let js = {
        let node = cairn_scenarios::node22("soak js-libp2p peers");
        let secs = (plan.minutes * 60.0).ceil() as u64;
        let child = std::process::Command::new(node)
            .arg(cairn_scenarios::repo_root().join("tests/js/libp2p-interop.mjs"))
            .arg("soak")
            .arg(relay.ws.to_string())
            .arg(relay.leaves[0].to_string())
            .arg(secs.to_string())
            .arg(plan.js.to_string())
            .env("CAIRN_JS_TIMEOUT_MS", ((secs + 120) * 1000).to_string())
            .current_dir(cairn_scenarios::repo_root().join("tests/js"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the js peers");
        // Killed if the test fails before it ends (it ends by itself after SECONDS).
        let guard = KillUnlessDone {
            pid: child.id(),
            done: Arc::default(),
        };
        let done = guard.done.clone();
        let waited = tokio::task::spawn_blocking(move || {
            let out = child.wait_with_output();
            done.store(true, Ordering::SeqCst);
            out
        });
        (guard, waited)
    };
    let (_js_guard, js) = js;

    // The floods, again and again: a slow `/cas` reader held past the stall timeout, a peer
    // stuffing streams, garbage on the TCP port.
    let flooding = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut waves = 0u32;
            while std::env::var_os("CAIRN_SOAK_NO_FLOODS").is_none()
                && Instant::now() + Duration::from_secs(flood::STALL_SECS * 2) < until
            {
                let slow = flood::slow_cas_reader(&relay, 50).await;
                let stuff = flood::stuffer(&relay).await;
                flood::garbage(&relay, 30).await;
                tokio::time::sleep(Duration::from_secs(flood::STALL_SECS * 2)).await;
                drop((slow, stuff));
                waves += 1;
            }
            waves
        })
    };

    let mut samples = Vec::new();
    let mut next = started + plan.sample;
    while Instant::now() < until {
        tokio::time::sleep_until(next.into()).await;
        next += plan.sample;
        let s = sample(&relay, started).await;
        print(&s);
        samples.push(s);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let waves = flooding.await.unwrap();
    let js = js.await.unwrap().expect("the js peers ran");
    let js_out = String::from_utf8_lossy(&js.stdout).into_owned();
    let settled = sample(&relay, started).await;
    print(&settled);

    eprintln!(
        "soak: {} native rounds ({} blocks from the relay, {} through circuits, {} announcements), {} failed; {waves} flood waves; js: {}",
        counts.rounds.load(Ordering::Relaxed),
        counts.blocks.load(Ordering::Relaxed),
        counts.circuits.load(Ordering::Relaxed),
        counts.announced.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
        js_out.trim()
    );
    let errors = errors.lock().unwrap().clone();
    assert_eq!(
        counts.failures.load(Ordering::Relaxed),
        0,
        "legitimate requests failed: {errors:#?}"
    );
    assert!(
        js.status.success() && js_out.contains("\"failures\":0"),
        "the js peers: {js_out} {}",
        String::from_utf8_lossy(&js.stderr)
    );
    assert!(counts.rounds.load(Ordering::Relaxed) > 0);
    assert!(waves > 0, "the floods ran");
    // Flat after the warm-up (the first quarter): the last sample under load is not above the
    // warm-up's level by more than a margin, and once everyone has left the answer bytes
    // held are all given back.
    let warm = samples
        .get(samples.len() / 4)
        .copied()
        .expect("at least one sample");
    let end = *samples.last().expect("at least one sample");
    assert!(
        end.proc.rss <= warm.proc.rss * 3 / 2 + 64 * MIB as u64,
        "RSS grew from {} to {} MiB",
        warm.proc.rss / MIB as u64,
        end.proc.rss / MIB as u64
    );
    assert!(
        end.proc.fds <= warm.proc.fds * 3 / 2 + 64,
        "descriptors grew from {} to {}",
        warm.proc.fds,
        end.proc.fds
    );
    assert!(
        end.tasks <= warm.tasks * 1.5 + 200.0,
        "tasks grew from {} to {}",
        warm.tasks,
        end.tasks
    );
    relay
        .until_metric(
            "cairn_answer_bytes_queued{path=\"cas\"}",
            Duration::from_secs(60),
            |v| v == 0.0,
        )
        .await;
}
