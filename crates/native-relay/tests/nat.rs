//! NAT traversal for real, inside this machine: two private networks behind NATs
//! (nftables masquerade, each in its own network namespace) and a relay on a "public" one
//! between them. Node A (behind NAT A) holds a file and a reservation on the relay; node B
//! (behind NAT B) dials A through the relay; hole punching (DCUtR) moves the connection to a
//! direct one, and the relay's own byte counters show the file did not cross it. AutoNAT
//! tells A it is not reachable from outside. With direct traffic between the NATs dropped,
//! a third node's hole punch fails: its connection stays relayed, `peers()` says why, and
//! the file still arrives, through the relay.
//!
//! Addresses: the public side 203.0.113.0/24, the private sides 198.51.100.0/25 and
//! 198.51.100.128/25 (documentation ranges); nothing leaves the namespaces this test makes
//! and removes. Needs root, `ip` and `nft`: where namespaces cannot be made the test says so
//! and passes; under `CI=true`, namespaces that can be made but no `nft` fail it (`cargo
//! xtask test` installs nftables).
//!
//! The nodes run in this process, each on a thread moved into its namespace (`setns`), with
//! a runtime of its own: every socket a node opens is in its namespace, and the test talks
//! to the nodes through their handles.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_p2p::behaviour::Nat;
use cairn_p2p::node::{Backoff, Reachability};
use cairn_p2p::{Event, Node};
use cairn_relay::relay::Config;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

const LEN: usize = 8 << 20;

/// The network namespaces (and host-side veths) of one test, removed when dropped.
struct Net {
    prefix: String,
    made: Vec<String>,
    veths: usize,
}

impl Net {
    /// `tag` tells the tests of one process apart (they run at once).
    fn new(tag: char) -> Self {
        Self {
            prefix: format!("c{tag}{}", std::process::id() % 100_000),
            made: Vec::new(),
            veths: 0,
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Makes namespace `name` (loopback up).
    fn add(&mut self, name: &str) -> String {
        let n = self.ns(name);
        sh(&["ip", "netns", "add", &n]);
        self.made.push(n.clone());
        in_ns(&n, &["ip", "link", "set", "dev", "lo", "up"]);
        n
    }

    /// A veth between `(ns1, if1, addr1)` and `(ns2, if2, addr2)`, up.
    fn link(&mut self, one: (&str, &str, &str), two: (&str, &str, &str)) {
        // Made in the host, then moved: names only need to be unique per namespace.
        let i = self.veths;
        self.veths += 1;
        let (h1, h2) = (
            format!("{}x{i}", self.prefix),
            format!("{}y{i}", self.prefix),
        );
        sh(&[
            "ip", "link", "add", &h1, "type", "veth", "peer", "name", &h2,
        ]);
        for (h, (n, name, addr)) in [(&h1, one), (&h2, two)] {
            sh(&["ip", "link", "set", h, "netns", n]);
            in_ns(n, &["ip", "link", "set", "dev", h, "name", name]);
            in_ns(n, &["ip", "addr", "add", addr, "dev", name]);
            in_ns(n, &["ip", "link", "set", "dev", name, "up"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A veth not yet moved into its namespace would be left in the host.
        for i in 0..self.veths {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}x{i}", self.prefix)])
                .stderr(Stdio::null())
                .status();
        }
        for n in &self.made {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all);
}

fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tests of this file take turns: run at once, the mDNS test's nodes missed each other
/// (1 run in 5), which they never did alone.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether this machine lets the test make namespaces (root, `ip`), and has `nft`.
fn capable() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: network namespaces need it".into());
    }
    // One name per probe: the tests of this file probe at the same time.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("cairn-probe-{}-{n}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return Err("`ip netns add` failed (no iproute2, or no namespace support)".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if Command::new("nft").arg("--version").output().is_err() {
        let why = "namespaces can be made but `nft` is missing (apt-get install nftables)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the NAT test must run here: {why}");
        }
        return Err(why.into());
    }
    Ok(())
}

/// The topology: P (public, the relay) routes between NA and NB; NA masquerades A's
/// 198.51.100.0/25 behind 203.0.113.2, NB masquerades B's 198.51.100.128/25 behind
/// 203.0.113.6.
fn build() -> Net {
    let mut net = Net::new('n');
    let (p, na, nb, a, b) = (
        net.add("p"),
        net.add("na"),
        net.add("nb"),
        net.add("a"),
        net.add("b"),
    );
    net.link((&p, "pa", "203.0.113.1/30"), (&na, "wan", "203.0.113.2/30"));
    net.link((&p, "pb", "203.0.113.5/30"), (&nb, "wan", "203.0.113.6/30"));
    net.link(
        (&na, "la", "198.51.100.1/25"),
        (&a, "eth0", "198.51.100.2/25"),
    );
    net.link(
        (&nb, "lb", "198.51.100.129/25"),
        (&b, "eth0", "198.51.100.130/25"),
    );
    in_ns(
        &na,
        &["ip", "route", "add", "default", "via", "203.0.113.1"],
    );
    in_ns(
        &nb,
        &["ip", "route", "add", "default", "via", "203.0.113.5"],
    );
    in_ns(
        &a,
        &["ip", "route", "add", "default", "via", "198.51.100.1"],
    );
    in_ns(
        &b,
        &["ip", "route", "add", "default", "via", "198.51.100.129"],
    );
    for n in [&p, &na, &nb] {
        in_ns(n, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    }
    // The NATs drop what they were not asked for, so a dial nobody answers (the relay's
    // AutoNAT dial-back to a node behind one, a hole punch through a blocked path) gives up
    // after one SYN retry (about 3 s), not Linux's two minutes.
    for n in [&p, &a, &b] {
        in_ns(
            n,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_syn_retries"],
        );
    }
    for n in [&na, &nb] {
        nft(
            n,
            concat!(
                "table ip nat {\n",
                " chain post {\n",
                "  type nat hook postrouting priority 100; policy accept;\n",
                "  oifname \"wan\" masquerade\n",
                " }\n",
                "}\n",
                // As home routers do: what arrives from outside unasked is dropped (not
                // answered with a reset).
                "table ip filter {\n",
                " chain input {\n",
                "  type filter hook input priority 0; policy accept;\n",
                "  iifname \"wan\" ct state new drop\n",
                " }\n",
                "}\n",
            ),
        );
    }
    net
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("the namespace");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

/// A relay or node started in namespace `ns` on a thread (and runtime) of its own; stopped
/// when dropped.
struct InNs {
    node: Node,
    peer_id: PeerId,
    http: std::net::SocketAddr,
    ns: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for InNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_in(ns: &str, config: Config) -> InNs {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let name = ns.to_owned();
    let thread = std::thread::spawn(move || {
        enter(&name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let running = cairn_relay::relay::start(Keypair::generate_ed25519(), config)
                .await
                .expect("start in the namespace");
            let _ = tx.send((running.node.clone(), running.peer_id, running.http));
            let _ = stopped.await;
            running.shutdown().await;
        });
    });
    let (node, peer_id, http) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("started within 30 s");
    InNs {
        node,
        peer_id,
        http,
        ns: ns.to_owned(),
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// `GET path` from a relay or node's HTTP listener, from inside its namespace: the body.
fn http_get(on: &InNs, path: &str) -> String {
    let (ns, http, path) = (on.ns.clone(), on.http, path.to_owned());
    let text = std::thread::spawn(move || {
        enter(&ns);
        let mut s = std::net::TcpStream::connect(http).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: cairn\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .join()
    .unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The bytes the relay's transports carried, both ways (its `/metrics`).
fn relay_bytes(relay: &InNs) -> u64 {
    http_get(relay, "/metrics")
        .lines()
        .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn nat() -> Nat {
    Nat {
        global_only: false, // the documentation ranges are not global
        first_probe: Duration::from_secs(1),
        refresh: Duration::from_secs(60),
        mdns: false,
        upnp: false,
    }
}

/// A node (no relay server) behind a NAT, listening on TCP and QUIC `port`, reserving on
/// `relay`.
fn node_config(port: u16, relay: Multiaddr, store: Option<cairn_relay::store::Disk>) -> Config {
    Config {
        relay_server: false,
        listen: vec![
            format!("/ip4/0.0.0.0/tcp/{port}").parse().unwrap(),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse().unwrap(),
        ],
        http: "127.0.0.1:0".parse().unwrap(),
        relays: vec![relay],
        store,
        nat: nat(),
        bootstrap_backoff: Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        ..Config::default()
    }
}

async fn until(node: &Node, what: &str, ok: impl AsyncFn(&Node) -> bool) {
    let mut events = node.events();
    let wait = async {
        loop {
            if ok(node).await {
                return;
            }
            events.next().await.expect("the node is running");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"));
}

/// Dials `target` through the relay (its circuit at `relay_addr`) from `from`, and waits for
/// what hole punching comes to, as either side tells it (DCUtR reports a failure on the side
/// that accepted the relayed connection): `Ok` once direct, `Err(reason)` if it failed.
async fn dial_and_punch(from: &Node, relay_addr: &Multiaddr, target: &Node) -> Result<(), String> {
    let ends = [from.peer_id(), target.peer_id()];
    let told = futures::stream::select(from.events(), target.events());
    let circuit = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(target.peer_id()));
    assert_eq!(from.dial(circuit).await.unwrap(), target.peer_id());
    let mut told = std::pin::pin!(told);
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match told.next().await.expect("running") {
                Event::HolePunched { peer } if ends.contains(&peer) => return Ok(()),
                Event::HolePunchFailed { peer, reason } if ends.contains(&peer) => {
                    return Err(reason);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("hole punching ends one way or the other")
}

#[test]
fn behind_two_nats_a_relayed_connection_becomes_direct_and_the_relay_carries_nothing() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(why) = capable() {
        eprintln!("SKIPPED: the NAT traversal test cannot run here: {why}");
        return;
    }
    common::logs();
    let net = build();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let relay = start_in(
        &net.ns("p"),
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().unwrap(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap(),
            ],
            http: "127.0.0.1:8080".parse().unwrap(),
            nat: nat(),
            ..Config::default()
        },
    );
    let relay_for = |public_ip: &str| -> Multiaddr {
        format!("/ip4/{public_ip}/tcp/4001/p2p/{}", relay.peer_id)
            .parse()
            .unwrap()
    };

    // A holds a file, behind NAT A.
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(cairn_relay::store::Disk::open(dir.path()))
        .unwrap();
    let content = common::data(LEN);
    let root = rt.block_on(common::import(&store, &content));
    // A also asks for UPnP: there is no gateway in its network, and it says so.
    let mut a_config = node_config(4001, relay_for("203.0.113.1"), Some(store));
    a_config.nat.upnp = true;
    let a = start_in(&net.ns("a"), a_config);
    let mut a_told = a.node.events();
    let b = start_in(
        &net.ns("b"),
        node_config(4001, relay_for("203.0.113.5"), None),
    );
    rt.block_on(async {
        until(&a.node, "A's reservation on the relay", async |n: &Node| {
            n.bootstrap_peers()
                .await
                .unwrap()
                .iter()
                .all(|p| p.reserved)
        })
        .await;
        // AutoNAT: the relay could not dial A back.
        until(
            &a.node,
            "AutoNAT finding A unreachable",
            async |n: &Node| n.reachability().await.unwrap() == Reachability::Private,
        )
        .await;
        let health = http_get(&a, "/health");
        assert!(
            health.contains("\"reachability\":\"private\""),
            "A's /health: {health}"
        );
        until(&b.node, "B's connection to the relay", async |n: &Node| {
            n.bootstrap_peers()
                .await
                .unwrap()
                .iter()
                .all(|p| p.connected)
        })
        .await;

        // B reaches A through the relay; hole punching makes it direct.
        let punched = dial_and_punch(&b.node, &relay_for("203.0.113.5"), &a.node).await;
        punched.expect("hole punching succeeds through two masquerading NATs");
        // Waited for on events: `common::until` gives up as soon as A is identified and not
        // being upgraded, which the peer table can say for a moment after the punch, before
        // it counts the new direct connection (seen once in CI).
        let a_id = a.peer_id;
        until(&b.node, "a direct connection to A", async |n: &Node| {
            n.peer(&a_id).is_some_and(|p| !p.relayed && p.cas)
        })
        .await;
        let before = relay_bytes(&relay);
        let (got, _) = common::fetch_all(&b.node, LEN, root).await;
        assert!(
            common::read_all(&got, root).await == content,
            "the file, byte-identical"
        );
        let carried = relay_bytes(&relay) - before;
        eprintln!("8 MiB over the punched connection; the relay carried {carried} bytes meanwhile");
        assert!(
            carried < (LEN / 16) as u64,
            "the relay carried {carried} bytes of an {LEN}-byte transfer"
        );
        let upnp = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Event::PortMappingUnavailable { reason } = a_told.next().await.unwrap() {
                    break reason;
                }
            }
        })
        .await
        .expect("A says UPnP could not map its ports");
        assert!(upnp.contains("no UPnP gateway"), "{upnp}");
    });

    // Direct traffic between the NATs is dropped: C (beside B) cannot punch through.
    nft(
        &net.ns("p"),
        "table ip filter {\n chain between {\n  type filter hook forward priority 0; policy accept;\n  ip saddr 203.0.113.2 ip daddr 203.0.113.6 drop\n  ip saddr 203.0.113.6 ip daddr 203.0.113.2 drop\n }\n}\n",
    );
    let c = start_in(
        &net.ns("b"),
        node_config(4002, relay_for("203.0.113.5"), None),
    );
    rt.block_on(async {
        until(&c.node, "C's connection to the relay", async |n: &Node| {
            n.bootstrap_peers()
                .await
                .unwrap()
                .iter()
                .all(|p| p.connected)
        })
        .await;
        let punched = dial_and_punch(&c.node, &relay_for("203.0.113.5"), &a.node).await;
        let reason = punched.expect_err("no direct path: hole punching fails");
        let info = c.node.peer(&a.peer_id).expect("still connected");
        assert!(info.relayed, "the connection stays relayed: {info:?}");
        // The side that made the attempts says why.
        let seen = a.node.peer(&c.node.peer_id()).expect("still connected");
        assert_eq!(seen.hole_punch_error.as_deref(), Some(reason.as_str()));
        assert!(reason.contains("3 dial attempts"), "{reason}");
        let before = relay_bytes(&relay);
        common::until_cas(&c.node, a.peer_id).await;
        common::fetch_all(&c.node, LEN, root).await;
        let carried = relay_bytes(&relay) - before;
        assert!(
            carried >= LEN as u64,
            "the file crossed the relay: {carried} bytes"
        );
        eprintln!(
            "hole punching failed as it should ({reason}); the relay carried {carried} bytes"
        );
    });
    drop((c, b, a, relay));
    drop(net);
}

#[test]
fn on_a_lan_two_nodes_find_each_other_by_mdns_with_no_relay() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(why) = capable() {
        eprintln!("SKIPPED: the mDNS test cannot run here: {why}");
        return;
    }
    common::logs();
    let mut net = Net::new('m');
    let (l1, l2) = (net.add("l1"), net.add("l2"));
    net.link(
        (&l1, "eth0", "198.51.100.2/25"),
        (&l2, "eth0", "198.51.100.3/25"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(cairn_relay::store::Disk::open(dir.path()))
        .unwrap();
    let content = common::data(LEN);
    let root = rt.block_on(common::import(&store, &content));
    let lan = |store| Config {
        relay_server: false,
        listen: vec!["/ip4/0.0.0.0/tcp/4001".parse().unwrap()],
        http: "127.0.0.1:0".parse().unwrap(),
        store,
        nat: Nat {
            mdns: true,
            ..nat()
        },
        ..Config::default()
    };
    let a = start_in(&l1, lan(Some(store)));
    let b = start_in(&l2, lan(None));
    rt.block_on(async {
        // Neither was told of the other, and there is no relay: mDNS finds them.
        common::until_cas(&b.node, a.peer_id).await;
        let info = b.node.peer(&a.peer_id).unwrap();
        assert!(!info.relayed, "{info:?}");
        let (got, _) = common::fetch_all(&b.node, LEN, root).await;
        assert!(
            common::read_all(&got, root).await == content,
            "the file, byte-identical"
        );
    });
    drop((b, a));
    drop(net);
}
