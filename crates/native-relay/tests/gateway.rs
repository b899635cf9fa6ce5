//! The relay's trustless HTTP gateway: raw blocks, CARs, files, the probe, misses and
//! malformed requests; and cairn's own gateway source reading from it.

use std::time::{Duration, Instant};

use cairn_core::block::Block;
use cairn_core::cid::{self, Cid, HashAlg};
use cairn_core::source::{ContentSource, Context, Gateway};
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Profile};
use cairn_relay::store::Disk;
use libp2p::identity::Keypair;

async fn relay_with(bytes: &[u8]) -> (cairn_relay::relay::Running, Cid, Disk, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let store = Disk::open(d.path().join("store")).await.unwrap();
    let root = unixfs::import(&store, bytes, Profile::DEFAULT, HashAlg::Sha2_256, |_| {})
        .await
        .unwrap()
        .root;
    let config = cairn_relay::relay::Config {
        store: Some(store.clone()),
        ..cairn_relay::relay::Config::loopback()
    };
    let relay = cairn_relay::relay::start(Keypair::generate_ed25519(), config)
        .await
        .unwrap();
    (relay, root, store, d)
}

fn varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    panic!("truncated varint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
async fn the_reference_js_car_reader_reads_the_gateways_cars() {
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    let (relay, root, store, _d) = relay_with(&bytes).await;
    let car = reqwest::get(format!("http://{}/ipfs/{root}?format=car", relay.http))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let blocks = store.stat().await.unwrap().blocks;
    let node = cairn_scenarios::node22("gateway CAR check with @ipld/car");
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("dag.car");
    std::fs::write(&path, &car).unwrap();
    let out = std::process::Command::new(node)
        .arg(cairn_scenarios::repo_root().join("tests/js/car-check.mjs"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "@ipld/car refused the CAR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert_eq!(said.trim(), format!("roots={root} blocks={blocks}"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_raw_car_and_files() {
    let bytes: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let (relay, root, store, _d) = relay_with(&bytes).await;
    let base = format!("http://{}", relay.http);
    let http = reqwest::Client::new();

    // raw, by query and by Accept
    for req in [
        http.get(format!("{base}/ipfs/{root}?format=raw")),
        http.get(format!("{base}/ipfs/{root}"))
            .header("Accept", "application/vnd.ipld.raw"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/vnd.ipld.raw");
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        let body = r.bytes().await.unwrap();
        Block::new(root, body).expect("the raw block verifies");
    }
    let head = http
        .head(format!("{base}/ipfs/{root}?format=raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(
        head.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );

    // CAR: header with the root, then every block of the DAG, each verifying.
    let r = http
        .get(format!("{base}/ipfs/{root}?format=car"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.ipld.car; version=1"
    );
    let car = r.bytes().await.unwrap();
    let (hlen, n) = varint(&car);
    let header = &car[n..n + hlen as usize];
    assert!(
        header
            .windows(root.to_bytes().len())
            .any(|w| w == root.to_bytes()),
        "root in header"
    );
    let mut pos = n + hlen as usize;
    let mut seen = Vec::new();
    while pos < car.len() {
        let (len, n) = varint(&car[pos..]);
        let section = &car[pos + n..pos + n + len as usize];
        let c = Cid::read_bytes(section).unwrap();
        let data = &section[c.encoded_len()..];
        Block::new(c, data.to_vec()).expect("every CAR block verifies");
        seen.push(c);
        pos += n + len as usize;
    }
    assert_eq!(seen[0], root, "root first");
    assert_eq!(
        seen.len() as u64,
        store.stat().await.unwrap().blocks,
        "the whole DAG"
    );
    // plain GET: the file
    let r = http
        .get(format!("{base}/ipfs/{root}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), bytes);

    // the probe, misses, malformed requests, CORS
    let r = http
        .get(format!("{base}/ipfs/bafkqaaa?format=raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let missing = cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"absent");
    let started = Instant::now();
    let r = http
        .get(format!("{base}/ipfs/{missing}?format=raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a miss is answered at once"
    );
    let r = http
        .get(format!("{base}/ipfs/{missing}?format=car"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/ipfs/not-a-cid?format=raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not a valid CID"));
    let r = http
        .get(format!("{base}/ipfs/{root}?format=tar"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{base}/ipfs/{root}?format=raw"))
        .header("Origin", "https://example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    // cairn's own gateway source reads from it, verified.
    let gw = Gateway::new(cairn_relay::http::Client::new().unwrap(), base.clone());
    let got = gw.retrieve(&root, &Context::new()).await.unwrap();
    assert_eq!(got.cid(), &root);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_relay_without_a_store_says_so() {
    let config = cairn_relay::relay::Config::loopback();
    let relay = cairn_relay::relay::start(Keypair::generate_ed25519(), config)
        .await
        .unwrap();
    let c = cid::of(cairn_core::Codec::Raw, HashAlg::Sha2_256, b"x");
    let r = reqwest::get(format!("http://{}/ipfs/{c}?format=raw", relay.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("--store"));
    relay.shutdown().await;
}
