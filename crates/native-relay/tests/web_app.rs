//! `cairn-relay` serves the built web app (`dist/`: `web/` on the npm package's files in
//! `dist/cairn-cas/`): the page, its module script, the package and its wasm (as
//! `application/wasm`, which streaming compilation needs), and `/health`, which the app reads
//! to find the relay. The app itself runs in Chromium in the Playwright tests
//! (`tests/js/e2e.mjs`, run by `cargo xtask test`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;
use common::Kill;

#[tokio::test]
#[ignore = "needs the web app built (dist/): run through `cargo xtask test`"]
async fn the_relay_serves_the_web_app_its_wasm_and_its_health() {
    let dist = std::env::var_os("CAIRN_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist"));
    assert!(
        dist.join("index.html").exists(),
        "dist/ ({}) is missing; `cargo xtask test` builds it",
        dist.display()
    );
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
    let _relay = Kill(child);
    let url = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("serving the web app on ").map(str::to_owned))
        .expect("relay prints its URL");

    let http = reqwest::Client::new();
    let page = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<h1>cairn</h1>"), "the page: {page}");
    assert!(
        page.contains(r#"<script type="module" src="app.js">"#),
        "the page loads its module: {page}"
    );
    let app = http
        .get(format!("{url}app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        app.contains("from './cairn-cas/index.js'"),
        "the app runs on the npm package"
    );
    let package = http
        .get(format!("{url}cairn-cas/package.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(package.contains("\"name\": \"cairn-cas\""), "{package}");
    let resp = http
        .get(format!("{url}cairn-cas/dist/cairn_wasm_bg.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/wasm",
        "served so that browsers compile it while it streams"
    );
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[..4], b"\0asm");

    let health: String = http
        .get(format!("{url}health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.contains("\"gateway\":false") && health.contains("/ws/p2p/12D3KooW"),
        "/health names the WebSocket address and that there is no store: {health}"
    );
}
