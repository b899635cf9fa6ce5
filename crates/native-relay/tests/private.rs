//! Private networks: `cairn-relay swarm-key` makes a key in the IPFS format; a relay started
//! with `--swarm-key` serves members only (over TCP, WebSocket and its circuits), refuses
//! outsiders with an error that says why, keeps its HTTP gateway shut, and refuses what a
//! private network cannot do (QUIC listeners, the public IPFS DHT).

mod common;

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::store::Memory;
use cairn_p2p::pnet::SwarmKey;
use common::{Kill, bin, fetch_all, holding, lines, native_node, relay_with, until_cas};
use libp2p::multiaddr::Protocol;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn swarm_key_files_are_made_once_and_read_strictly() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("swarm.key");
    let made = bin().args(["swarm-key", "-o"]).arg(&path).output().unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let text = std::fs::read_to_string(&path).unwrap();
    let key = SwarmKey::parse(&text).expect("the file it wrote is a swarm key");
    assert!(
        stderr(&made).contains(&key.fingerprint()),
        "{}",
        stderr(&made)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"]);
    assert_eq!(lines[2].len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only its owner reads a network's key");
    }

    // A network's key is never replaced by accident.
    let again = bin().args(["swarm-key", "-o"]).arg(&path).output().unwrap();
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "untouched");

    // To stdout: another key each time.
    let printed = bin().arg("swarm-key").output().unwrap();
    assert!(printed.status.success());
    let other = SwarmKey::parse(&String::from_utf8(printed.stdout).unwrap()).unwrap();
    assert_ne!(other, key);

    // A file that is not a key: refused with what is wrong, by serve (cannot start) and by
    // a fetch (usage).
    let junk = d.path().join("junk.key");
    std::fs::write(&junk, "/key/swarm/psk/1.0.0/\n/base16/\n0123\n").unwrap();
    let serve = bin()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .arg("--identity")
        .arg(d.path().join("id.key"))
        .arg("--swarm-key")
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(7), "{}", stderr(&serve));
    assert!(
        stderr(&serve).contains("64 hex digits"),
        "{}",
        stderr(&serve)
    );
    let cat = bin()
        .args([
            "cat",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--peer",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBQDMu494fHqGEMKKpJ3bJJNw6optciW9yatUS1Hg9yme",
            "--swarm-key",
        ])
        .arg(d.path().join("missing.key"))
        .arg("--store")
        .arg(d.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(cat.status.code(), Some(2), "{}", stderr(&cat));
    assert!(
        stderr(&cat).contains("cannot read the swarm key"),
        "{}",
        stderr(&cat)
    );

    // What a private network cannot do is refused at start, saying why.
    for (extra, code, says) in [
        (
            &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"][..],
            7,
            "private network",
        ),
        (
            &["--ipfs-dht", "--listen", "/ip4/127.0.0.1/tcp/0"][..],
            2,
            "--ipfs-dht",
        ),
    ] {
        let out = bin()
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(extra)
            .arg("--identity")
            .arg(d.path().join("id.key"))
            .arg("--swarm-key")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{extra:?}: {}", stderr(&out));
    }
}

#[test]
fn a_private_relay_serves_its_members_only() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("swarm.key");
    let other = d.path().join("other.key");
    for k in [&key, &other] {
        assert!(
            bin()
                .args(["swarm-key", "-o"])
                .arg(k)
                .status()
                .unwrap()
                .success()
        );
    }
    let file = d.path().join("f.bin");
    let bytes = common::data(2_500_000);
    std::fs::write(&file, &bytes).unwrap();
    let served = d.path().join("served");
    let add = bin()
        .arg("add")
        .arg(&file)
        .arg("--store")
        .arg(&served)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    let cid = String::from_utf8(add.stdout).unwrap().trim().to_owned();

    let mut child = bin()
        .env("CAIRN_LOG", "info")
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/tcp/0/ws",
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .arg("--store")
        .arg(&served)
        .arg("--swarm-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let _relay = Kill(child);
    let wait = Duration::from_secs(30);
    let tcp = out
        .recv_timeout(wait)
        .expect("the relay prints its addresses");
    let ws = out.recv_timeout(wait).expect("and its WebSocket address");
    assert!(tcp.contains("/tcp/") && !tcp.contains("/ws"), "{tcp}");
    assert!(ws.contains("/ws/p2p/"), "{ws}");
    let mut logged = Vec::new();
    let http = loop {
        let line = err
            .recv_timeout(wait)
            .expect("the relay says where it serves HTTP");
        if let Some(rest) = line.strip_prefix("serving the web app on http://") {
            break rest.trim_end_matches('/').to_owned();
        }
        logged.push(line);
    };
    let fingerprint = SwarmKey::parse(&std::fs::read_to_string(&key).unwrap())
        .unwrap()
        .fingerprint();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("private network") && l.contains(&fingerprint)),
        "the log names the network by its fingerprint: {logged:?}"
    );

    // Members fetch, over TCP and over WebSocket.
    for addr in [&tcp, &ws] {
        let got = bin()
            .args([
                "cat",
                &cid,
                "--peer",
                addr,
                "--timeout",
                "30",
                "--swarm-key",
            ])
            .arg(&key)
            .arg("--store")
            .arg(d.path().join(format!("member-{}", addr.len())))
            .output()
            .unwrap();
        assert!(got.status.success(), "{addr}: {}", stderr(&got));
        assert_eq!(got.stdout, bytes, "byte-identical over {addr}");
    }

    // Outsiders, with another key or none, get nothing and are told why.
    for (swarm_key, says) in [
        (Some(&other), "may not be in this private network"),
        (None, "may be in a private network"),
    ] {
        let mut cmd = bin();
        cmd.args(["cat", &cid, "--peer", &tcp, "--timeout", "20", "--store"])
            .arg(d.path().join("outsider"));
        if let Some(k) = swarm_key {
            cmd.arg("--swarm-key").arg(k);
        }
        let got = cmd.output().unwrap();
        assert_eq!(got.status.code(), Some(3), "{}", stderr(&got));
        assert!(got.stdout.is_empty());
        assert!(stderr(&got).contains(says), "{}", stderr(&got));
    }

    // The HTTP gateway and delegated routing would hand the content to anyone: shut.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for path in [
            format!("/ipfs/{cid}?format=raw"),
            format!("/routing/v1/providers/{cid}"),
        ] {
            let r = reqwest::get(format!("http://{http}{path}")).await.unwrap();
            assert_eq!(r.status(), 403, "{path}");
            assert!(r.text().await.unwrap().contains("private network"));
        }
        let health = reqwest::get(format!("http://{http}/health"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(health["private_network"], fingerprint.as_str());
        assert_eq!(health["gateway"], false);
    });
}

/// In process: members reach each other through a private relay's circuit (the relayed
/// connection protected end to end as well), and an outsider can neither reserve on the
/// relay nor reach a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_meet_through_a_private_relays_circuit() {
    const LEN: usize = 4 << 20;
    let key = SwarmKey::generate().unwrap();
    let relay = relay_with(cairn_relay::relay::Config {
        swarm_key: Some(key.clone()),
        ..cairn_relay::relay::Config::loopback()
    })
    .await;
    let relay_addr = relay.addrs[0].clone();
    let member = |store| {
        native_node(
            store,
            cairn_p2p::node::Config {
                swarm_key: Some(key.clone()),
                ..Default::default()
            },
        )
    };
    let (store_a, root, _) = holding(LEN).await;
    let a = member(store_a).await;
    let b = member(Arc::new(Memory::new())).await;
    a.dial(relay_addr.clone()).await.unwrap();
    a.listen(relay_addr.clone().with(Protocol::P2pCircuit))
        .await
        .expect("a member reserves on the private relay");
    let via_relay = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a.peer_id()));
    b.dial(relay_addr.clone()).await.unwrap();
    assert_eq!(b.dial(via_relay.clone()).await.unwrap(), a.peer_id());
    until_cas(&b, a.peer_id()).await;
    assert!(b.peers()[&a.peer_id()].relayed);
    fetch_all(&b, LEN, root).await;

    let outsider = native_node(
        Arc::new(Memory::new()),
        cairn_p2p::node::Config {
            swarm_key: Some(SwarmKey::generate().unwrap()),
            ..Default::default()
        },
    )
    .await;
    let e = outsider
        .dial(relay_addr.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("private network"), "{e}");
    assert!(outsider.dial(via_relay).await.is_err());
    assert!(outsider.peers().is_empty(), "nothing connected");
    relay.shutdown().await;
}
