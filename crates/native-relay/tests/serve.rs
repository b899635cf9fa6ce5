//! `cairn-relay serve` as a newcomer meets it: it starts, prints its multiaddrs, serves the
//! web app and `/health`, refuses a port in use clearly, and stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{Kill, lines};

fn start(
    dir: &std::path::Path,
    http: &str,
) -> (Kill, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
        ])
        .args(["--http", http, "--identity"])
        .arg(dir.join("id.key"))
        .arg("--web-root")
        .arg(dir.join("web"))
        .env("CAIRN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn-relay");
    let out = lines(child.stdout.take().expect("stdout"));
    let err = lines(child.stderr.take().expect("stderr"));
    (Kill(child), out, err)
}

#[tokio::test]
async fn serve_prints_addresses_serves_the_app_and_stops_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("web")).unwrap();
    std::fs::write(d.path().join("web/index.html"), "<h1>cairn test page</h1>").unwrap();
    let (mut relay, out, err) = start(d.path(), "127.0.0.1:0");

    let addrs: Vec<String> = (0..2)
        .map(|_| {
            out.recv_timeout(Duration::from_secs(30))
                .expect("a multiaddr on stdout")
        })
        .collect();
    let id = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["id", "--identity"])
        .arg(d.path().join("id.key"))
        .output()
        .unwrap();
    let peer_id = String::from_utf8(id.stdout).unwrap().trim().to_owned();
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    assert!(addrs[0].starts_with("/ip4/127.0.0.1/tcp/"), "{addrs:?}");
    assert!(!addrs[0].contains("/ws"), "TCP first, as given: {addrs:?}");
    assert!(addrs[1].contains("/ws/p2p/"), "{addrs:?}");
    for a in &addrs {
        assert!(a.ends_with(&format!("/p2p/{peer_id}")), "{a}");
    }

    let url = loop {
        let line = err
            .recv_timeout(Duration::from_secs(30))
            .expect("the URL on stderr");
        if let Some(u) = line.strip_prefix("serving the web app on ") {
            break u.to_owned();
        }
    };
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("cairn test page"));
    let health = reqwest::get(format!("{url}health"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(health.contains(&peer_id), "{health}");

    // A second relay on the same HTTP port fails at start-up, naming the problem.
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let busy = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--identity",
        ])
        .arg(d.path().join("id2.key"))
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(7));
    let msg = String::from_utf8_lossy(&busy.stderr);
    assert!(msg.contains("already in use"), "{msg}");

    // SIGTERM: a clean exit.
    let pid = relay.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = relay.exit_within(Duration::from_secs(10));
    assert!(status.expect("exited within 10 s").success());
}

#[test]
fn a_bad_web_root_or_identity_is_a_startup_error() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .arg("--web-root")
        .arg(d.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no index.html"));

    std::fs::write(d.path().join("bad.key"), b"not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["id", "--identity"])
        .arg(d.path().join("bad.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold a libp2p private key"));
}

#[test]
fn a_config_file_sets_what_flags_do_not() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "listen = [\"/ip4/127.0.0.1/tcp/0/ws\"]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_circuits = 5\nrate_interval_secs = 10\n",
    )
    .unwrap();
    // The flag's --http wins over the file's (port 1 would fail to bind).
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--identity")
        .arg(d.path().join("id.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let relay = Kill(child);
    let first = out
        .recv_timeout(Duration::from_secs(30))
        .expect("an address");
    assert!(first.contains("/ws/p2p/"), "the file's listener: {first}");
    assert!(
        out.recv_timeout(Duration::from_millis(500)).is_err(),
        "only the file's one listener"
    );
    drop(relay);

    std::fs::write(&cfg, "colour = \"red\"\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(7));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("relay.toml") && msg.contains("unknown field"),
        "{msg}"
    );
}

#[test]
fn bootstrap_peers_come_from_the_config_file_are_checked_and_never_hold_up_the_start() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("relay.toml");
    let nobody = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", libp2p::PeerId::random());
    std::fs::write(
        &cfg,
        format!("listen = [\"/ip4/127.0.0.1/tcp/0\"]\nbootstrap = [\"{nobody}\"]\n"),
    )
    .unwrap();
    // Nothing listens at the bootstrap address: the relay serves anyway, and says so.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--identity")
        .arg(d.path().join("id.key"))
        .env("CAIRN_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let relay = Kill(child);
    let first = out
        .recv_timeout(Duration::from_secs(30))
        .expect("an address");
    assert!(first.contains("/tcp/"), "{first}");
    let said = (0..50)
        .map_while(|_| err.recv_timeout(Duration::from_secs(20)).ok())
        .find(|l| l.contains("bootstrap peer unreachable"));
    let said = said.expect("the log names the bootstrap peer that is down");
    assert!(said.contains("tcp/1/p2p/"), "{said}");
    assert!(said.contains("retry_in"), "{said}");
    drop(relay);

    // A bootstrap address that is not a multiaddr: refused before anything starts.
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--bootstrap", "relay.example:4001"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("--bootstrap"), "{msg}");
    std::fs::write(&cfg, "bootstrap = [\"relay.example:4001\"]\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(7));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("relay.toml") && msg.contains("bootstrap"),
        "{msg}"
    );
}
