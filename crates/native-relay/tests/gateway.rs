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

/// `GET path` over a plain connection, the path exactly as given: the status and the body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The CIDs of a CAR's blocks, in order, each checked against its bytes; and its root.
fn car_blocks(car: &[u8]) -> (Cid, Vec<Cid>) {
    use ciborium::Value;
    let (hlen, mut at) = varint(car);
    let header = &car[at..at + hlen as usize];
    let Value::Map(fields) = ciborium::from_reader(header).unwrap() else {
        panic!("the header is a map")
    };
    let roots = fields
        .iter()
        .find(|(k, _)| *k == Value::Text("roots".into()))
        .map(|(_, v)| v.clone());
    let Some(Value::Array(roots)) = roots else {
        panic!("roots")
    };
    let [Value::Tag(42, b)] = &roots[..] else {
        panic!("one root")
    };
    let Value::Bytes(b) = &**b else {
        panic!("a CID")
    };
    let root = Cid::try_from(&b[1..]).unwrap();
    at += hlen as usize;
    let mut out = Vec::new();
    while at < car.len() {
        let (len, n) = varint(&car[at..]);
        at += n;
        let section = &car[at..at + len as usize];
        let c = Cid::try_from(section).unwrap();
        let clen = c.to_bytes().len();
        Block::new(c, section[clen..].to_vec()).expect("each block verifies");
        out.push(c);
        at += len as usize;
    }
    (root, out)
}

/// A site in the relay's store: a file in a folder with a space in its name, an index, a
/// HAMT of 4,000 entries, a 1 MiB file of four leaves.
async fn site(store: &Disk) -> (Cid, Vec<u8>) {
    use cairn_core::unixfs::dir::{Entry, TreeBuilder};
    let mut t = TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
    let video: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let add = async |t: &mut TreeBuilder, path: &str, bytes: &[u8]| {
        let i = unixfs::import(store, bytes, Profile::DEFAULT, HashAlg::Sha2_256, |_| {})
            .await
            .unwrap();
        t.add(
            path,
            Entry {
                cid: i.root,
                tsize: i.dag_size,
            },
        )
        .unwrap();
    };
    add(&mut t, "docs/b c.txt", b"hello from a folder").await;
    add(&mut t, "docs/ü.md", "# ü".as_bytes()).await;
    add(&mut t, "site/index.html", b"<!doctype html><h1>home</h1>").await;
    add(&mut t, "media/clip.bin", &video).await;
    add(
        &mut t,
        "media/photo",
        b"\xff\xd8\xff\xe0 a jpeg by its bytes",
    )
    .await;
    for i in 0..4000 {
        let name = format!("big/a-rather-long-entry-name-number-{i:05}.txt");
        add(&mut t, &name, format!("{i}").as_bytes()).await;
    }
    let mut blocks = Vec::new();
    let root = t.finish(&mut blocks).unwrap();
    for b in blocks {
        store.put(b).await.unwrap();
    }
    (root.cid, video)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_listings_index_types_ranges_and_names() {
    let (relay, _, store, _d) = relay_with(b"unused").await;
    let (root, video) = site(&store).await;
    let base = format!("http://{}/ipfs/{root}", relay.http);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: String| http.get(url);

    let r = get(format!("{base}/docs/b%20c.txt")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.bytes().await.unwrap(), &b"hello from a folder"[..]);
    let r = get(format!("{base}/media/photo")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "image/jpeg",
        "sniffed from the bytes"
    );
    let r = get(format!(
        "{base}/big/a-rather-long-entry-name-number-02999.txt"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.bytes().await.unwrap(), &b"2999"[..], "through the HAMT");

    // A directory: redirected to its `/` URL, then listed, or its index.html served.
    let r = get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], format!("/ipfs/{root}/docs/"));
    let r = get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(
        html.contains("href=\"./b%20c%2Etxt\">b c.txt</a>"),
        "{html}"
    );
    assert!(
        html.contains(">ü.md</a>") && html.contains("2 entries"),
        "{html}"
    );
    let html = get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(">big/</a>") && html.contains(">site/</a>"),
        "{html}"
    );
    let r = get(format!("{base}/site/")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "<!doctype html><h1>home</h1>");

    // Ranges.
    let clip = format!("{base}/media/clip.bin");
    let r = get(clip.clone())
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/1048576");
    assert_eq!(r.bytes().await.unwrap(), &video[100..200]);
    let r = get(clip.clone())
        .header("Range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.bytes().await.unwrap(),
        &video[300_000..],
        "across leaves to the end"
    );
    let r = get(clip.clone())
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), &video[video.len() - 10..]);
    let r = get(clip.clone())
        .header("Range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "several ranges: the whole file");
    for (range, says) in [
        ("bytes=1048576-", "past the end"),
        ("bytes=abc", "malformed Range header"),
        ("bytes=9-3", "malformed Range header"),
        ("items=0-1", "malformed Range header"),
    ] {
        let r = get(clip.clone())
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(r.headers()["content-range"], "bytes */1048576");
        let t = r.text().await.unwrap();
        assert!(t.contains(says), "{range}: {t}");
    }
    // What `curl -r` sends, from curl itself where it is installed.
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-s", "-r", "100-199", "-w", "\n%{http_code}", &clip])
        .output()
    {
        let (body, code) = out.stdout.split_at(out.stdout.len() - 4);
        assert_eq!(code, b"\n206");
        assert_eq!(body, &video[100..200]);
    }

    // Names.
    let r = get(format!(
        "{base}/docs/b%20c.txt?filename=r%C3%A9sum%C3%A9.pdf&download=true"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%2Epdf"
    );

    // Bad paths (sent as they are: an HTTP client would fold `%2e%2e` away).
    for (path, status, says) in [
        ("/docs/%2e%2e/x", 400, "`..` is not allowed"),
        ("/docs/a%00b", 400, "NUL"),
        ("/docs/a%2Fb", 400, "not allowed"),
        ("/docs/nope", 404, "no `nope` in `/docs`"),
        ("/docs/b%20c.txt/more", 404, "is a file, not a directory"),
        ("/big/absent", 404, "no `absent` in `/big`"),
    ] {
        let (code, t) = raw_get(relay.http, &format!("/ipfs/{root}{path}")).await;
        assert_eq!(code, status, "{path}: {t}");
        assert!(t.contains(says), "{path}: {t}");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cars_carry_the_path_and_what_dag_scope_and_entity_bytes_ask_for() {
    let (relay, _, store, _d) = relay_with(b"unused").await;
    let (root, _) = site(&store).await;
    let base = format!("http://{}/ipfs/{root}", relay.http);
    let car = async |q: &str| {
        let r = reqwest::get(format!("{base}{q}")).await.unwrap();
        assert_eq!(r.status(), 200, "{q}: {}", r.status());
        car_blocks(&r.bytes().await.unwrap())
    };
    let ctx = Context::new();
    let src = cairn_core::source::Local(store.clone());
    let clip = unixfs::dir::resolve(&src, &ctx, root, "media/clip.bin")
        .await
        .unwrap();
    let media = unixfs::dir::resolve(&src, &ctx, root, "media")
        .await
        .unwrap();

    let (header, blocks) = car("/media/clip.bin?format=car&dag-scope=block").await;
    assert_eq!(header, root, "the CAR is rooted at the URL's CID");
    assert_eq!(
        blocks,
        [root, media, clip],
        "the path, then the file's root alone"
    );
    let (_, blocks) = car("/media/clip.bin?format=car").await;
    assert_eq!(
        blocks.len(),
        3 + 4,
        "the path, the file's root and its four leaves"
    );
    let (_, blocks) = car("/media/clip.bin?format=car&dag-scope=entity&entity-bytes=0:99").await;
    assert_eq!(blocks.len(), 3 + 1, "only the first leaf: {blocks:?}");
    let (_, blocks) = car("/media/clip.bin?format=car&dag-scope=entity&entity-bytes=-1:*").await;
    assert_eq!(blocks.len(), 3 + 1, "only the last leaf");
    let (_, blocks) =
        car("/media/clip.bin?format=car&dag-scope=entity&entity-bytes=262143:262144").await;
    assert_eq!(
        blocks.len(),
        3 + 2,
        "two leaves: the range crosses one boundary"
    );
    // A HAMT directory as an entity: its shards, none of its 4,000 entries.
    let (_, blocks) = car("/big?format=car&dag-scope=entity").await;
    assert!(
        blocks.len() > 2 && blocks.len() < 1000,
        "{} blocks",
        blocks.len()
    );
    assert!(blocks.iter().all(|c| c.codec() == 0x70), "shards only");
    // A name in the HAMT: the root, the shards on its way, the file.
    let (_, blocks) =
        car("/big/a-rather-long-entry-name-number-00042.txt?format=car&dag-scope=block").await;
    assert!(blocks.len() >= 3 && blocks.len() <= 5, "{blocks:?}");
    for q in [
        "?format=car&dag-scope=some",
        "?format=car&entity-bytes=0:1",
        "?format=car&dag-scope=entity&entity-bytes=a:b",
    ] {
        let r = reqwest::get(format!("{base}/media/clip.bin{q}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    relay.shutdown().await;
}
