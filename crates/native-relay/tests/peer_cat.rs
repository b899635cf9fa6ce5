//! `cat --peer`: a relay started with `--store` serves its content over `/cas/1.0.0`, and
//! another process fetches it through the source chain's peer race, verified.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod common;
use common::{Kill, bin};

#[test]
fn cat_from_a_relay_that_serves_its_store() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("f.bin");
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let served = d.path().join("served");
    let add = bin()
        .args(["add"])
        .arg(&file)
        .arg("--store")
        .arg(&served)
        .output()
        .unwrap();
    assert!(add.status.success());
    let cid = String::from_utf8(add.stdout).unwrap().trim().to_owned();

    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .arg("--store")
        .arg(&served)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _relay = Kill(child);
    let addr = BufReader::new(stdout).lines().next().unwrap().unwrap();
    assert!(addr.contains("/p2p/"), "{addr}");

    let mine = d.path().join("mine");
    let out = bin()
        .args(["cat", &cid, "--peer", &addr, "--store"])
        .arg(&mine)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, bytes, "byte-identical from the peer");

    // No /p2p/ suffix: usage error.
    let bare = addr.split("/p2p/").next().unwrap();
    let out = bin()
        .args(["cat", &cid, "--peer", bare, "--store"])
        .arg(d.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/p2p/<peer id>"));

    // Unreachable peer and nothing else: a warning and "not found", not a hang.
    let peer_id = addr.rsplit("/p2p/").next().unwrap();
    let dead = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer_id}");
    let missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let out = bin()
        .args([
            "cat",
            missing,
            "--peer",
            &dead,
            "--timeout",
            "10",
            "--store",
        ])
        .arg(d.path().join("y"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot dial"), "{err}");
    assert!(err.contains("peers: no candidates"), "{err}");
}
