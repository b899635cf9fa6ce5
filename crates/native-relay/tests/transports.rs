//! The relay's key-material transports: WebRTC-direct (a certificate kept next to the
//! identity, so the `/certhash` survives restarts) and WebSocket over TLS (a certificate and
//! key given by the operator). Content moves over both; bad key material stops start-up
//! with a message that names the file.

use std::process::Stdio;
use std::time::Duration;

use cairn_core::store::BlockStore;
use cairn_core::{Block, Codec, HashAlg};
use cairn_p2p::{Node, cas};
use cairn_relay::node::{Transports, WebRtcCertificate};
use cairn_relay::relay;
use cairn_relay::store::Disk;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;

mod common;
use common::{Kill, bin, lines, logs};

/// A relay holding one 1 MiB block in its store (a response far over WebRTC's 16 KiB
/// message cap), listening on `listen` only.
async fn relay_with_a_block(
    dir: &std::path::Path,
    listen: &str,
    tls: Option<cairn_relay::node::Tls>,
) -> (relay::Running, Block) {
    logs();
    let store = Disk::open(dir.join("store")).await.unwrap();
    let block = Block::from_data(
        Codec::Raw,
        HashAlg::Sha2_256,
        bytes::Bytes::from(vec![7u8; 1 << 20]),
    )
    .unwrap();
    store.put(block.clone()).await.unwrap();
    let config = relay::Config {
        listen: vec![listen.parse().unwrap()],
        store: Some(store),
        tls,
        ..relay::Config::loopback()
    };
    let running = relay::start(Keypair::generate_ed25519(), config)
        .await
        .unwrap();
    (running, block)
}

/// Asks `relay` for `block` over `/cas` and checks the bytes.
async fn fetch_block(node: &Node, relay: &relay::Running, block: &Block) {
    let resp = node
        .request(
            relay.peer_id,
            &cas::Request::Get {
                cids: vec![block.cid().into()],
            },
        )
        .await
        .unwrap();
    match resp {
        cas::Response::Get { blocks, .. } => {
            assert_eq!(blocks.len(), 1);
            assert_eq!(&blocks[0].1[..], block.data());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_moves_over_webrtc_direct() {
    let d = tempfile::tempdir().unwrap();
    let (relay, block) =
        relay_with_a_block(d.path(), "/ip4/127.0.0.1/udp/0/webrtc-direct", None).await;
    let addr = relay.addrs[0].clone();
    assert!(
        addr.to_string().contains("/webrtc-direct/certhash/"),
        "{addr}"
    );

    // libp2p-webrtc's native dial sometimes never sees its first data channel open ("data
    // channel opening took longer than 10 seconds": rust-libp2p#3223, about 1 test run in
    // 6 here). Once a dialing node hit it, its later dials hit it too (2 runs of 12 failed
    // all three dials on one node), so each try is a new node. Up to three, and any other
    // error fails at once.
    let mut tries = 0;
    let (node, peer) = loop {
        tries += 1;
        let node = webrtc_node().await;
        let out = tokio::time::timeout(Duration::from_secs(30), node.dial(addr.clone()))
            .await
            .expect("dialed within 30 s");
        match out {
            Err(e) if tries < 3 && e.to_string().contains("data channel opening took longer") => {
                eprintln!(
                    "webrtc-direct dial {tries} hit rust-libp2p#3223; dialing again from a new node"
                );
                node.stop().await;
            }
            other => break (node, other.unwrap()),
        }
    };
    assert_eq!(peer, relay.peer_id);
    fetch_block(&node, &relay, &block).await;
    node.stop().await;
    relay.shutdown().await;
}

/// A node with the native WebRTC transport, listening on loopback (it dials only while it
/// listens itself).
async fn webrtc_node() -> Node {
    let transports = Transports {
        webrtc: Some(WebRtcCertificate::generate(&mut rand::thread_rng()).unwrap()),
        ..Default::default()
    };
    let node = cairn_relay::node::build(
        cairn_p2p::Builder::new(Keypair::generate_ed25519())
            .config(cairn_p2p::node::Config::default()),
        cairn_core::store::Null::new(),
        &transports,
        &mut Default::default(),
    )
    .unwrap();
    node.listen("/ip4/127.0.0.1/udp/0/webrtc-direct".parse().unwrap())
        .await
        .unwrap();
    node
}

/// The relay's first stdout line when it listens only on `listen` with identity `id`.
fn first_address(dir: &std::path::Path, listen: &str) -> String {
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            listen,
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(dir.join("id.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let _relay = Kill(child);
    out.recv_timeout(Duration::from_secs(30))
        .expect("an address on stdout")
}

fn certhash(addr: &str) -> String {
    addr.split("/certhash/")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no certhash in {addr}"))
        .to_owned()
}

#[test]
fn the_webrtc_certhash_survives_a_restart_and_a_bad_certificate_stops_start_up() {
    let d = tempfile::tempdir().unwrap();
    let listen = "/ip4/127.0.0.1/udp/0/webrtc-direct";
    let first = first_address(d.path(), listen);
    let second = first_address(d.path(), listen);
    assert_eq!(certhash(&first), certhash(&second), "{first} / {second}");
    let pem = d.path().join("id.webrtc.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the certificate's key is private");
    }

    std::fs::write(&pem, "not a certificate").unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            listen,
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("id.webrtc.pem") && msg.contains("not a WebRTC certificate"),
        "{msg}"
    );
}

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key_pair.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_moves_over_websocket_with_tls() {
    use libp2p::websocket;
    let d = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(d.path());
    let tls = cairn_relay::node::Tls::from_pem_files(&cert, &key).unwrap();
    let (relay, block) =
        relay_with_a_block(d.path(), "/ip4/127.0.0.1/tcp/0/tls/ws", Some(tls)).await;
    let addr: Multiaddr = relay.addrs[0].clone();
    assert!(addr.to_string().contains("/tls/ws/p2p/"), "{addr}");

    // A client that trusts this one certificate (the stock one trusts public CAs only).
    let node = cairn_p2p::Builder::new(Keypair::generate_ed25519())
        .build(
            cairn_core::store::Null::new(),
            cairn_relay::node::Tokio,
            |upgrader, relay| {
                use libp2p::Transport as _;
                let mut ws = websocket::Config::new(libp2p::tcp::tokio::Transport::new(
                    libp2p::tcp::Config::default(),
                ));
                let mut trust = websocket::tls::Config::builder();
                trust.add_trust(&websocket::tls::Certificate::new(der.clone()))?;
                ws.set_tls_config(trust.finish());
                // The relay client's transport must stay with its behaviour, used or not.
                let relay = upgrader.authenticate(relay)?;
                Ok(relay
                    .or_transport(upgrader.authenticate(ws)?)
                    .map(|e, _| e.into_inner())
                    .boxed())
            },
        )
        .unwrap();
    assert_eq!(node.dial(addr).await.unwrap(), relay.peer_id);
    fetch_block(&node, &relay, &block).await;
    node.stop().await;
    relay.shutdown().await;
}

#[test]
fn bad_tls_material_stops_start_up_naming_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(d.path());
    let (_, other_key, _) = {
        let o = d.path().join("other");
        std::fs::create_dir(&o).unwrap();
        self_signed(&o)
    };
    let garbage = d.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = bin()
            .args(["serve", "--http", "127.0.0.1:0", "--identity"])
            .arg(d.path().join("id.key"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let listen = std::ffi::OsStr::new("/ip4/127.0.0.1/tcp/0/tls/ws");
    let flag = |s: &'static str| std::ffi::OsStr::new(s);

    let (code, msg) = run(&[flag("--listen"), listen]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("needs --tls-cert and --tls-key"), "{msg}");

    let (code, msg) = run(&[
        flag("--listen"),
        listen,
        flag("--tls-cert"),
        garbage.as_os_str(),
        flag("--tls-key"),
        key.as_os_str(),
    ]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("garbage.pem"), "{msg}");

    let (code, msg) = run(&[
        flag("--listen"),
        listen,
        flag("--tls-cert"),
        cert.as_os_str(),
        flag("--tls-key"),
        other_key.as_os_str(),
    ]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("do not work together"), "{msg}");

    let (code, msg) = run(&[flag("--tls-cert"), cert.as_os_str()]);
    assert_eq!(
        code,
        Some(2),
        "a certificate without a key is a usage error: {msg}"
    );
}
