//! Floods and measurements shared by the slow-reader tests and the soak: a `cairn-relay serve`
//! process holding a test file, its resident memory and descriptors, a proxy that turns a
//! connection into a trickle, and peers that ask much and read nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_core::Cid;
use cairn_core::store::{BlockStore, Memory};
use cairn_p2p::cas::{self, Request};
use cairn_p2p::{Node, bitswap, framing};
use libp2p::{Multiaddr, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Kill, bin, lines, node, until_cas};

pub(crate) const MIB: usize = 1024 * 1024;
/// The file every slow reader asks for, over and over: 128 leaves of 256 KiB.
pub(crate) const FILE: usize = 32 * MIB;
/// What each slow reader asks for in all.
pub(crate) const ASKED: usize = 800 * MIB;
/// The bound on the relay's peak RSS. The `/cas` flood peaks at 178–197 MiB here (16 runs;
/// bitswap 158–167, HTTP 133–137), the relay's answer budget, its connections' send queues
/// (`node::sendq`) and allocator included. Before the send queues were bounded it peaked
/// at 196–330 MiB (30 runs); a relay that held what it was asked would reach the 2.4 GiB
/// the flood asks for (it reached 1.2 GiB before the answer budget).
pub(crate) const MAX_RSS: u64 = 288 * MIB as u64;
/// The stall timeout the relay runs with (its default is 20 s; shorter keeps the test short).
pub(crate) const STALL_SECS: u64 = 5;

/// A `cairn-relay serve` process holding the test file, and what the test needs of it.
pub(crate) struct Relay {
    pub(crate) process: Kill,
    pub(crate) addr: Multiaddr,
    /// Its WebSocket address (for js-libp2p peers).
    pub(crate) ws: Multiaddr,
    pub(crate) peer: PeerId,
    pub(crate) http: SocketAddr,
    pub(crate) root: Cid,
    pub(crate) leaves: Vec<Cid>,
    /// The last lines the relay logged (its stderr is read all along: a pipe nobody reads
    /// would stop the relay once full).
    pub(crate) log: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start_relay() -> Relay {
    start_relay_with("").await
}

/// [`start_relay`] with more `[limits]` lines for its config file.
pub(crate) async fn start_relay_with(limits: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let store = cairn_relay::store::Disk::open(dir.path().join("store"))
        .await
        .unwrap();
    let root = super::import(&store, &super::data(FILE)).await;
    let root_block = store.get(&root).await.unwrap().unwrap();
    let leaves: Vec<Cid> = cairn_core::unixfs::pb::Node::decode(root_block.data())
        .unwrap()
        .links
        .iter()
        .map(|l| l.cid)
        .collect();
    assert_eq!(
        leaves.len(),
        FILE / (256 * 1024),
        "one level of 256 KiB leaves"
    );
    drop(store);
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!("[limits]\nstall_timeout_secs = {STALL_SECS}\n{limits}"),
    )
    .unwrap();
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--identity")
        .arg(dir.path().join("id.key"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cairn-relay");
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let process = Kill(child);
    let mut addrs = (0..2).map(|_| -> Multiaddr {
        out.recv_timeout(Duration::from_secs(30))
            .expect("the relay's addresses")
            .parse()
            .unwrap()
    });
    let (addr, ws) = (addrs.next().unwrap(), addrs.next().unwrap());
    let http = loop {
        let line = err
            .recv_timeout(Duration::from_secs(30))
            .expect("the relay's HTTP address");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim_end_matches('/').parse().unwrap();
        }
    };
    let peer = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("{addr} does not end in /p2p/"),
    };
    let log: Arc<std::sync::Mutex<std::collections::VecDeque<String>>> = Arc::default();
    let keep = log.clone();
    // To see what the relay did: CAIRN_RELAY_LOG=<filter> with CAIRN_RELAY_LOG_FILE=<path>
    // keeps every line it prints, not only the last 200.
    let mut file = std::env::var_os("CAIRN_RELAY_LOG_FILE")
        .map(|p| std::fs::File::create(&p).expect("CAIRN_RELAY_LOG_FILE: create the file"));
    std::thread::spawn(move || {
        for line in err.iter().chain(out.iter()) {
            if let Some(f) = &mut file {
                use std::io::Write as _;
                let _ = writeln!(f, "{line}");
            }
            let mut l = keep.lock().unwrap();
            if l.len() >= 200 {
                l.pop_front();
            }
            l.push_back(line);
        }
    });
    Relay {
        process,
        addr,
        ws,
        peer,
        http,
        root,
        leaves,
        log,
        _dir: dir,
    }
}

impl Relay {
    pub(crate) fn pid(&self) -> u32 {
        self.process.0.id()
    }

    pub(crate) fn tcp_port(&self) -> u16 {
        self.addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap()
    }

    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the metric line starting with `name`, 0 if absent.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to `limit`) until the metric `name` satisfies `ok`.
    pub(crate) async fn until_metric(&self, name: &str, limit: Duration, ok: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {v}:\n{}",
                self.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Samples a process's resident memory until stopped; the peak is read from the kernel's
/// own high-water mark (`VmHWM`), the samples give the curve.
pub(crate) struct Rss {
    pid: u32,
    stop: Arc<AtomicBool>,
    max_sampled: Arc<AtomicU64>,
}

pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Rss {
    pub(crate) fn watch(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_sampled = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_sampled.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    m.fetch_max(kib * 1024, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            pid,
            stop,
            max_sampled,
        }
    }

    /// The peak so far, in bytes.
    pub(crate) fn peak(&self) -> u64 {
        let hwm = status_kib(self.pid, "VmHWM:").unwrap_or(0) * 1024;
        hwm.max(self.max_sampled.load(Ordering::Relaxed))
    }
}

impl Drop for Rss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP proxy to `target` that passes the target's bytes on freely until `trickle` is set,
/// then at 2 KiB/s. Returns its address.
pub(crate) async fn trickle_proxy(target: u16, trickle: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let trickle = trickle.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let slow = trickle.load(Ordering::Relaxed);
                    let max = if slow { 512 } else { buf.len() };
                    let n = match sr.read(&mut buf[..max]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if slow {
                        // The rate limit of the trickle: 512 bytes per 250 ms.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            });
        }
    });
    addr
}

/// A node connected to the relay through a proxy, and the switch that turns the proxy's
/// relay-to-node direction to a trickle.
pub(crate) async fn slow_node(relay: &Relay) -> (Node, Arc<AtomicBool>) {
    let trickle = Arc::new(AtomicBool::new(false));
    let proxy = trickle_proxy(relay.tcp_port(), trickle.clone()).await;
    let n = node(Arc::new(Memory::new())).await;
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", proxy.port(), relay.peer)
        .parse()
        .unwrap();
    n.dial(addr).await.unwrap();
    until_cas(&n, relay.peer).await;
    (n, trickle)
}

/// A `get` for 32 leaves (8 MiB) starting at leaf `i`.
pub(crate) fn get_8_mib(relay: &Relay, i: usize) -> Request {
    let n = relay.leaves.len();
    Request::Get {
        cids: (0..32)
            .map(|k| (&relay.leaves[(i * 32 + k) % n]).into())
            .collect(),
    }
}

/// What a flooding peer holds: its node, its open streams and its writing tasks. Dropping
/// it ends the flood.
pub(crate) struct Flood {
    _node: Node,
    _streams: Vec<cairn_p2p::streams::Stream>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A peer that asks for `requests` answers of 8 MiB over `/cas` and reads none of them.
pub(crate) async fn slow_cas_reader(relay: &Relay, requests: usize) -> Flood {
    let (n, _) = slow_node(relay).await;
    let mut streams = Vec::new();
    for i in 0..requests {
        let Ok(mut s) = n.streams().open_stream(relay.peer, cas::PROTOCOL).await else {
            continue;
        };
        if framing::write_frame(&mut s, &cas::encode(&get_8_mib(relay, i)))
            .await
            .is_ok()
        {
            streams.push(s);
        }
    }
    Flood {
        _node: n,
        _streams: streams,
        tasks: Vec::new(),
    }
}

/// A peer that stuffs streams the relay does not read at once: 128 bitswap streams of
/// cancels and `/cas` requests followed by junk.
pub(crate) async fn stuffer(relay: &Relay) -> Flood {
    let cancels = bitswap::Message {
        wantlist: relay
            .leaves
            .iter()
            .cycle()
            .take(1000)
            .map(|c| bitswap::Entry::cancel(*c))
            .collect(),
        ..Default::default()
    }
    .encode();
    let n = node(Arc::new(Memory::new())).await;
    let mut tasks = Vec::new();
    if n.dial(relay.addr.clone()).await.is_ok() {
        for i in 0..160 {
            let protocol = if i < 128 {
                bitswap::PROTOCOL
            } else {
                cas::PROTOCOL
            };
            let Ok(mut s) = n.streams().open_stream(relay.peer, protocol).await else {
                continue;
            };
            let first = if i < 128 {
                cancels.clone()
            } else {
                cas::encode(&get_8_mib(relay, i))
            };
            tasks.push(tokio::spawn(async move {
                let _ = framing::write_frame(&mut s, &first).await;
                let junk = vec![7u8; 64 * 1024];
                for _ in 0..64 {
                    if futures::AsyncWriteExt::write_all(&mut s, &junk)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                futures::future::pending::<()>().await;
            }));
        }
    }
    Flood {
        _node: n,
        _streams: Vec::new(),
        tasks,
    }
}

/// `n` connections of junk to the relay's TCP port, each closed by the relay (or after 15 s).
pub(crate) async fn garbage(relay: &Relay, n: u32) {
    let port = relay.tcp_port();
    let junk = futures::future::join_all((0..n).map(|i| async move {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return;
        };
        let payload: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        let _ = s.write_all(&payload).await;
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    }));
    junk.await;
}

/// A process's resident memory, open descriptors and threads.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStats {
    pub(crate) rss: u64,
    pub(crate) fds: usize,
    pub(crate) threads: u64,
}

pub(crate) fn proc_stats(pid: u32) -> ProcStats {
    ProcStats {
        rss: status_kib(pid, "VmRSS:").unwrap_or(0) * 1024,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Threads:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0),
    }
}
