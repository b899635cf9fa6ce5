//! The page loads: `cairn-relay` serves the built web app (Trunk's `dist/`), and headless
//! Chromium runs its WebAssembly until the page says it is ready.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;
use common::Kill;

#[test]
fn the_web_app_loads_in_chromium() {
    let dist = std::env::var_os("CAIRN_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist"));
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !dist.join("index.html").exists() || !chromium.exists() {
        assert!(
            !cairn_scenarios::interop_required(),
            "dist/ ({}) or chromium missing; `cargo xtask test` builds and installs them",
            dist.display()
        );
        eprintln!(
            "\n*** SKIPPED the_web_app_loads_in_chromium: no dist/ or chromium (run `cargo xtask test`) ***\n"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
            "--http",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(d.path().join("id.key"))
        .arg("--web-root")
        .arg(&dist)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let relay = Kill(child);
    let url = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("serving the web app on ").map(str::to_owned))
        .expect("relay prints its URL");
    let profile = d.path().join("chromium");
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .output()
        .unwrap();
    drop(relay);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<h1>cairn</h1>"), "page served: {dom}");
    assert!(
        dom.contains("data-ready=\"true\""),
        "the wasm module started: {dom}"
    );
    assert!(
        dom.contains(env!("CARGO_PKG_VERSION")),
        "version from wasm shown: {dom}"
    );
}
