//! Interop with js-libp2p (npm, Node 22), peers no one here wrote, against an in-process
//! cairn-relay: two js nodes meet through a relay-v2 circuit over WebSocket and move 64 MiB
//! (the bulk upload that kills rust-yamux 0.13 connections with stock js settings; see
//! `cairn_relay::node::yamux_config`), and a js client fetches a block over `/cas/1.0.0`
//! written from `docs/protocol.md` alone. The script is `tests/js/libp2p-interop.mjs`.

mod common;

use std::process::Command;

use cairn_core::store::BlockStore;
use cairn_relay::store::Disk;
use cairn_scenarios::{node22, repo_root};

/// The script's one JSON line.
fn run_js(args: &[&str]) -> String {
    let node = node22("js_interop");
    let out = Command::new(node)
        .arg(repo_root().join("tests/js/libp2p-interop.mjs"))
        .args(args)
        .env("CAIRN_JS_TIMEOUT_MS", "120000")
        // js-libp2p's connection monitor aborts a connection whose ping takes over 5 s; on a
        // loaded 2-core machine, pings queue behind megabytes of relayed data and a long
        // upload is cut ~15 s in (seen in 3 of ~30 runs). That is a js-side policy, not the
        // yamux frame bug this test guards against, so it is switched off here.
        .env("CAIRN_JS_PING_ABORT", "0")
        .current_dir(repo_root().join("tests/js"))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "js-libp2p {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the one-line JSON answer has `"key":value` (just enough JSON for these answers).
fn has(json: &str, key: &str, value: &str) -> bool {
    json.contains(&format!("\"{key}\":{value}"))
}

async fn relay(store: Option<Disk>) -> cairn_relay::relay::Running {
    common::relay_on("/ip4/127.0.0.1/tcp/0/ws", store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn js_nodes_move_64_mib_through_a_circuit_on_cairn_relay() {
    let relay = relay(None).await;
    let ws = relay.addrs[0].to_string();
    let answer = tokio::task::spawn_blocking(move || run_js(&["circuit", &ws, "67108864"]))
        .await
        .unwrap();
    let json = answer;
    assert!(has(&json, "ok", "true"), "{json}");
    assert!(has(&json, "bytes", "67108864"), "{json}");
    assert!(
        has(&json, "limited", "true"),
        "the js peers met over a relayed (limited) connection: {json}"
    );
    assert!(
        has(&json, "yamux_max_frame", "null"),
        "stock js-libp2p settings: {json}"
    );
    eprintln!("{}", json.trim());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn a_js_client_fetches_a_block_over_cas() {
    let d = tempfile::tempdir().unwrap();
    let store = Disk::open(d.path()).await.unwrap();
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    let cid = common::import(&store, &bytes).await;
    assert_eq!(store.stat().await.unwrap().blocks, 1, "one raw block");
    let relay = relay(Some(store)).await;
    let addr = relay.addrs[0].to_string();
    let cid_text = cid.to_string();
    let answer = tokio::task::spawn_blocking(move || run_js(&["cas", &addr, &cid_text]))
        .await
        .unwrap();
    let json = answer;
    assert!(has(&json, "ok", "true"), "{json}");
    assert!(has(&json, "bytes", "200000"), "{json}");
    assert!(json.contains(&cid.to_string()), "{json}");
    relay.shutdown().await;
}
