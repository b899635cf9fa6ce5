//! `cargo xtask bench`: a 256 MiB UnixFS file fetched native→native with the peer race over
//! `/cas/1.0.0`, directly over TCP and through a relay circuit, beside a raw stream copy of
//! the same bytes on the same kind of connection (the ceiling); the same directly over TCP in
//! a private network (pnet under Noise); and time to the first block.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_core::source::{Chain, Context, RaceConfig};
use cairn_core::store::Memory;
use cairn_core::{Cid, HashAlg, dag, unixfs};
use cairn_p2p::Node;
use cairn_p2p::sources::cas_source;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

const LEN: usize = 256 << 20;

struct Peer {
    node: Node,
    perf: cairn_p2p::streams::Control,
}

async fn peer(store: Arc<Memory>) -> Peer {
    peer_in(store, None).await
}

/// A peer in the private network of `swarm_key` (`None`: the open network).
async fn peer_in(store: Arc<Memory>, swarm_key: Option<cairn_p2p::pnet::SwarmKey>) -> Peer {
    let node = cairn_relay::node::build(
        cairn_p2p::Builder::new(Keypair::generate_ed25519()).config(cairn_p2p::node::Config {
            swarm_key,
            ..Default::default()
        }),
        store,
        &Default::default(),
        &mut Default::default(),
    )
    .unwrap();
    let perf = node.streams();
    tokio::spawn(cairn_p2p::perf::serve(perf.clone()));
    Peer { node, perf }
}

async fn until_cas(node: &Node, peer: PeerId) {
    node.wait_for(&[peer], Duration::from_secs(10), |p| p.cas)
        .await
        .unwrap_or_else(|| panic!("no identify from {peer}"));
}

async fn fetch(from: &Node, root: Cid) {
    let store = Arc::new(Memory::new());
    let race = cas_source(
        from,
        Some(root),
        RaceConfig {
            per_peer_timeout: Some(Duration::from_secs(60)),
            max_parallel: 4,
            look_up: false,
            ..Default::default()
        },
    );
    let chain = Chain::new().local(store.clone()).source(race, None);
    let opts = dag::Options {
        window: 32,
        ..Default::default()
    };
    let report = dag::fetch(&chain, &*store, root, opts, &Context::new(), |_| {})
        .await
        .unwrap();
    assert!(report.progress.bytes_done >= LEN as u64);
}

fn transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_relay, a, direct, relayed, root, tcp, circuit, (a_private, private, private_tcp)) = rt
        .block_on(async {
            let relay = cairn_relay::relay::start(
                Keypair::generate_ed25519(),
                cairn_relay::relay::Config {
                    // A benchmark moves many GiB over one circuit; production caps it at 4 GiB.
                    max_circuit_bytes: u64::MAX,
                    ..cairn_relay::relay::Config::loopback()
                },
            )
            .await
            .unwrap();
            let mut x = 0x9e37_79b9u64;
            let data: Vec<u8> = (0..LEN / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            let store = Arc::new(Memory::new());
            let root = unixfs::import(
                &*store,
                &data[..],
                Default::default(),
                HashAlg::Sha2_256,
                |_| {},
            )
            .await
            .unwrap()
            .root;
            let key = cairn_p2p::pnet::SwarmKey::generate().unwrap();
            let a_private = peer_in(store.clone(), Some(key.clone())).await;
            let private_tcp: Multiaddr = a_private
                .node
                .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .await
                .unwrap();
            let private = peer_in(Arc::new(Memory::new()), Some(key)).await;
            let a = peer(store).await;
            let tcp: Multiaddr = a
                .node
                .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .await
                .unwrap();
            a.node.dial(relay.addrs[0].clone()).await.unwrap();
            a.node
                .listen(relay.addrs[0].clone().with(Protocol::P2pCircuit))
                .await
                .unwrap();
            let direct = peer(Arc::new(Memory::new())).await;
            let relayed = peer(Arc::new(Memory::new())).await;
            relayed.node.dial(relay.addrs[0].clone()).await.unwrap();
            let circuit = relay.addrs[0]
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(a.node.peer_id()));
            (
                relay,
                a,
                direct,
                relayed,
                root,
                tcp,
                circuit,
                (a_private, private, private_tcp),
            )
        });
    // (Re)connects just before a path is measured: an idle connection closes after 60 s.
    let connect = |p: &Peer, to: &Peer, addr: &Multiaddr| {
        let id = to.node.peer_id();
        rt.block_on(async {
            if !p.node.peers().contains_key(&id) {
                p.node.dial(addr.clone()).await.unwrap();
            }
            until_cas(&p.node, id).await;
        })
    };

    let mut g = c.benchmark_group("transfer");
    g.throughput(Throughput::Bytes(LEN as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (name, p, to, addr) in [
        ("direct", &direct, &a, &tcp),
        ("circuit", &relayed, &a, &circuit),
        ("private", &private, &a_private, &private_tcp),
    ] {
        connect(p, to, addr);
        let to_id = to.node.peer_id();
        g.bench_function(format!("{name}/cas-fetch"), |b| {
            b.iter(|| rt.block_on(fetch(&p.node, root)))
        });
        let mut control = p.perf.clone();
        g.bench_function(format!("{name}/stream-copy"), |b| {
            b.iter(|| {
                assert_eq!(
                    rt.block_on(cairn_p2p::perf::send(&mut control, to_id, LEN as u64))
                        .unwrap(),
                    LEN as u64
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("first-block");
    g.sample_size(20);
    for (name, p, addr) in [("direct", &direct, &tcp), ("circuit", &relayed, &circuit)] {
        connect(p, &a, addr);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let race = cas_source(&p.node, None, RaceConfig::default());
                    let chain = Chain::new().source(race, None);
                    chain
                        .retrieve_reported(&root, &Context::new())
                        .await
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, transfer);
criterion_main!(benches);
