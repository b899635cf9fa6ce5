//! Collaborative pinning between real relays (in process, each with a store on disk): a
//! node asks for two copies and gets two, checked; when one relay goes away a third is
//! asked; a relay that deletes what it said it keeps is caught by the check and loses
//! trust; quotas, trust lists and relays that keep nothing refuse, leaving nothing pinned.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::source::{Chain, Context};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::{Cid, dag};
use cairn_p2p::pinning::{self, PinError, Policy, Refusal, Replicas};
use cairn_relay::relay::{Config, Running};
use cairn_relay::store::Disk;
use common::{holding, node, relay_with, until_identified};
use libp2p::PeerId;

async fn pinning_relay(
    dir: &std::path::Path,
    name: &str,
    policy: Option<Policy>,
) -> (Running, Disk) {
    let store = Disk::open(dir.join(name)).await.unwrap();
    let relay = relay_with(Config {
        store: Some(store.clone()),
        pinning: policy,
        ..Config::loopback()
    })
    .await;
    (relay, store)
}

/// The blocks of the DAG under `root` in `store`.
async fn blocks_of(store: &Arc<Memory>, root: Cid) -> (Vec<Cid>, u64) {
    let chain = Chain::new().local(store.clone());
    let mut blocks = Vec::new();
    let r = dag::fetch(
        &chain,
        &**store,
        root,
        Default::default(),
        &Context::new(),
        |p| {
            blocks.push(p.last.unwrap().0);
        },
    )
    .await
    .unwrap();
    (blocks, r.progress.bytes_done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_are_kept_checked_and_replaced() {
    let d = tempfile::tempdir().unwrap();
    let mut relays = Vec::new();
    for name in ["r1", "r2", "r3"] {
        relays.push(pinning_relay(d.path(), name, Some(Policy::default())).await);
    }
    let (held, root, _) = holding(3 << 20).await;
    let (blocks, bytes) = blocks_of(&held, root).await;
    let me = node(held).await;
    let ids: Vec<PeerId> = relays.iter().map(|(r, _)| r.peer_id).collect();
    for (r, _) in &relays {
        me.dial(r.addrs[0].clone()).await.unwrap();
        until_identified(&me, r.peer_id).await;
    }
    let replicas = Replicas::new(me.clone());

    // Two copies, on the first two asked; each relay pinned it in its store.
    let out = replicas.ensure(root, bytes, &blocks, 2, &ids).await;
    assert_eq!(out.confirmed, ids[..2], "{out:?}");
    for (_, store) in &relays[..2] {
        assert!(store.pins().await.unwrap().contains(&root));
        for b in &blocks {
            assert!(store.has(b).await.unwrap(), "{b} is held in full");
        }
    }
    assert!(
        relays[2].1.pins().await.unwrap().is_empty(),
        "the third was not asked"
    );

    // The first relay goes away: the check finds it gone, and the third is asked.
    let (r1, _) = relays.remove(0);
    r1.shutdown().await;
    let out = replicas.ensure(root, bytes, &blocks, 2, &ids).await;
    assert_eq!(out.confirmed, [ids[1], ids[2]], "{out:?}");
    assert_eq!(out.failed_checks.len(), 1, "{out:?}");
    assert!(replicas.trust().of(&ids[0]) > 0.0, "gone is not dishonest");

    // The second deletes what it said it keeps: caught, trusted no more, and (nobody left
    // to ask) one copy remains.
    for b in &blocks {
        relays[0].1.delete(b).await.unwrap();
    }
    let out = replicas.ensure(root, bytes, &blocks, 2, &ids).await;
    assert_eq!(out.confirmed, [ids[2]], "{out:?}");
    assert!(
        out.failed_checks
            .iter()
            .any(|f| f.contains(&ids[1].to_string()) && f.contains("does not have")),
        "{out:?}"
    );
    assert_eq!(
        replicas.trust().of(&ids[1]),
        0.0,
        "a peer that lied loses trust"
    );
    assert!(
        replicas.trust().of(&ids[2]) > 0.5,
        "a peer that passed checks gains it"
    );
    for (r, _) in relays {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_trust_and_relays_that_keep_nothing_refuse_and_pin_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (held, root, _) = holding(3 << 20).await;
    let (_, bytes) = blocks_of(&held, root).await;
    let me = node(held).await;
    let small = Policy {
        per_requester: 1 << 20,
        ..Policy::default()
    };
    let (quota, quota_store) = pinning_relay(d.path(), "quota", Some(small)).await;
    let (picky, picky_store) = pinning_relay(
        d.path(),
        "picky",
        Some(Policy {
            trusted: Some(HashSet::from([PeerId::random()])),
            ..Policy::default()
        }),
    )
    .await;
    let (none, _) = pinning_relay(d.path(), "none", None).await;
    for r in [&quota, &picky, &none] {
        me.dial(r.addrs[0].clone()).await.unwrap();
        until_identified(&me, r.peer_id).await;
    }
    let t = Duration::from_secs(60);

    // Larger than the asker's quota, said honestly: refused at once.
    let e = pinning::request(&me, quota.peer_id, root, bytes, t)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PinError::Refused {
                refusal: Some(Refusal::RequesterQuota),
                ..
            }
        ),
        "{e}"
    );
    // Said to be small: refused as soon as the root tells the real size.
    let e = pinning::request(&me, quota.peer_id, root, 1000, t)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PinError::Refused {
                refusal: Some(Refusal::RequesterQuota),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("at most 1048576 bytes"), "{e}");
    assert!(
        quota_store.pins().await.unwrap().is_empty(),
        "nothing half-fetched is pinned"
    );

    let e = pinning::request(&me, picky.peer_id, root, bytes, t)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PinError::Refused {
                refusal: Some(Refusal::Untrusted),
                ..
            }
        ),
        "{e}"
    );
    assert!(picky_store.pins().await.unwrap().is_empty());

    let e = pinning::request(&me, none.peer_id, root, bytes, t)
        .await
        .unwrap_err();
    assert!(matches!(e, PinError::Unreachable { .. }), "{e}");

    // What is asked for within the quota is kept, and released on request.
    let (held2, small_root, _) = holding(200_000).await;
    let me2 = node(held2).await;
    me2.dial(quota.addrs[0].clone()).await.unwrap();
    until_identified(&me2, quota.peer_id).await;
    let kept = pinning::request(&me2, quota.peer_id, small_root, 200_000, t)
        .await
        .unwrap();
    assert!(kept >= 200_000);
    assert!(quota_store.pins().await.unwrap().contains(&small_root));
    let record = std::fs::read_to_string(d.path().join("quota/pinned-for")).unwrap();
    assert!(record.contains(&small_root.to_string()), "{record}");
    pinning::release(&me2, quota.peer_id, small_root)
        .await
        .unwrap();
    assert!(!quota_store.pins().await.unwrap().contains(&small_root));
    for r in [quota, picky, none] {
        r.shutdown().await;
    }
}

#[test]
fn the_cli_asks_a_relay_to_keep_a_copy() {
    use std::process::Stdio;
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("f.bin");
    std::fs::write(&file, common::data(1_500_000)).unwrap();
    let mine = d.path().join("mine");
    let add = common::bin()
        .arg("add")
        .arg(&file)
        .arg("--store")
        .arg(&mine)
        .output()
        .unwrap();
    assert!(add.status.success());
    let cid = String::from_utf8(add.stdout).unwrap().trim().to_owned();
    // Quotas keep content in a store: none given is a usage error.
    let out = common::bin()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--pin-quota",
            "1GiB",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = d.path().join("served");
    let mut child = common::bin()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--pin-quota",
            "1GiB",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .arg("--store")
        .arg(&served)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::lines(child.stdout.take().unwrap());
    let _relay = common::Kill(child);
    let addr = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let relay_id = addr.rsplit("/p2p/").next().unwrap().to_owned();

    let out = common::bin()
        .args([
            "replicate",
            &cid,
            "--replicas",
            "1",
            "--peer",
            &addr,
            "--store",
        ])
        .arg(&mine)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("{relay_id} keeps {cid}")), "{said}");
    assert!(
        served.join("pins").join(&cid).exists(),
        "the relay pinned it"
    );

    // Two copies from one peer cannot be had: exit 3, saying how many were.
    let out = common::bin()
        .args([
            "replicate",
            &cid,
            "--replicas",
            "2",
            "--peer",
            &addr,
            "--store",
        ])
        .arg(&mine)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 2 copies"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Content the store does not hold is refused before anyone is asked.
    let out = common::bin()
        .args([
            "replicate",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--peer",
            &addr,
            "--store",
        ])
        .arg(&mine)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not held in full"));
}
