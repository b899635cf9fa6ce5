//! The `cairn-relay` binary end to end: add, cat from the store and from a real local HTTP
//! gateway (honest, tampering, truncating, oversized, hanging), and bad input.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::cid::{self, Codec, HashAlg};
use cairn_core::store::{BlockStore, Memory};

mod common;
use common::bin;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run cairn-relay")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add((i >> 11) as u8))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    Tamper,
    Truncate,
    Oversize,
    Hang,
}

#[derive(Clone)]
struct Gw {
    store: Arc<Memory>,
    mode: Mode,
}

async fn block_handler(
    State(gw): State<Gw>,
    UrlPath(cid_text): UrlPath<String>,
    headers: HeaderMap,
    raw_query: axum::extract::RawQuery,
) -> Response {
    let wants_raw = raw_query.0.as_deref() == Some("format=raw")
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
            == Some("application/vnd.ipld.raw");
    if !wants_raw {
        return (StatusCode::BAD_REQUEST, "trustless requests only").into_response();
    }
    let Ok(c) = cid::parse(&cid_text) else {
        return (StatusCode::BAD_REQUEST, "bad cid").into_response();
    };
    if gw.mode == Mode::Hang {
        std::future::pending::<()>().await;
    }
    let Some(block) = gw.store.get(&c).await.unwrap() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut body = block.data().to_vec();
    match gw.mode {
        Mode::Tamper => {
            if let Some(b) = body.last_mut() {
                *b ^= 1;
            }
        }
        Mode::Truncate => body.truncate(body.len() / 2),
        Mode::Oversize => body = vec![0; 3 << 20],
        _ => {}
    }
    ([(header::CONTENT_TYPE, "application/vnd.ipld.raw")], body).into_response()
}

async fn gateway(store: Arc<Memory>, mode: Mode) -> SocketAddr {
    let app = axum::Router::new()
        .route("/ipfs/{cid}", axum::routing::get(block_handler))
        .with_state(Gw { store, mode });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// Imports `bytes` into a memory store the way `add` does, for the gateway to serve.
async fn gateway_store(bytes: &[u8]) -> (Arc<Memory>, String) {
    let store = Arc::new(Memory::new());
    let r = cairn_core::unixfs::import(
        &*store,
        bytes,
        Default::default(),
        HashAlg::Sha2_256,
        |_| {},
    )
    .await
    .unwrap();
    (store, r.root.to_string())
}

#[test]
fn add_then_cat_from_a_persistent_store() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("in.bin");
    let bytes = data(1_500_000, 7);
    std::fs::write(&file, &bytes).unwrap();
    let store = d.path().join("store");
    let s = store.to_str().unwrap();
    let add = run(&["add", file.to_str().unwrap(), "--store", s]);
    assert!(add.status.success(), "{}", stderr(&add));
    let cid = stdout(&add);
    assert!(
        cid.starts_with("bafybei"),
        "root CID alone on stdout: {cid}"
    );
    assert!(
        store.join("pins").join(&cid).is_file(),
        "add pins its root in the store (a relay serving it provides the root)"
    );
    let only = run(&["add", file.to_str().unwrap(), "--only-hash"]);
    assert_eq!(stdout(&only), cid, "--only-hash gives the same CID");
    // A second process sees what the first stored.
    let cat = run(&["cat", &cid, "--store", s]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_eq!(cat.stdout, bytes);
    let out = d.path().join("out.bin");
    let cat = run(&["cat", &cid, "--store", s, "-o", out.to_str().unwrap()]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // Other profile and hash give other CIDs, each stable.
    let b3 = run(&[
        "add",
        file.to_str().unwrap(),
        "--only-hash",
        "--hash",
        "blake3",
        "--profile",
        "unixfs-v1-2025",
    ]);
    assert!(stdout(&b3).starts_with("bafyb"), "{}", stdout(&b3));
    assert_ne!(stdout(&b3), cid);
}

#[tokio::test]
async fn cat_through_a_gateway_verifies_and_writes_back() {
    let bytes = data(900_000, 3);
    let (gstore, cid) = gateway_store(&bytes).await;
    let addr = gateway(gstore, Mode::Honest).await;
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("store");
    let url = format!("http://{addr}");
    let args: Vec<String> = vec![
        "cat".into(),
        cid.clone(),
        "--store".into(),
        s.to_string_lossy().into(),
        "--gateway".into(),
        url,
    ];
    let out = tokio::task::spawn_blocking(move || bin().args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, bytes);
    // Written back: the store alone now serves it.
    let again = run(&["cat", &cid, "--store", s.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(again.stdout, bytes);
}

async fn cat_via(mode: Mode, extra: &[&str]) -> (Output, String, String, tempfile::TempDir) {
    let bytes = data(600_000, 5);
    let (gstore, cid) = gateway_store(&bytes).await;
    let addr = gateway(gstore, mode).await;
    let d = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        "cat".into(),
        cid.clone(),
        "--store".into(),
        d.path().join("store").to_string_lossy().into(),
        "--gateway".into(),
        format!("http://{addr}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || bin().args(&args).output().unwrap())
        .await
        .unwrap();
    (out, cid, format!("http://{addr}"), d)
}

#[tokio::test]
async fn tampered_gateway_bytes_are_refused() {
    for mode in [Mode::Tamper, Mode::Truncate] {
        let d0 = tempfile::tempdir().unwrap();
        let dest = d0.path().join("out.bin");
        let (out, _root, url, d) = cat_via(mode, &["-o", dest.to_str().unwrap()]).await;
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("do not match"), "{err}");
        assert!(
            err.contains(&format!("gateway {url}")),
            "names the source: {err}"
        );
        assert!(
            err.contains("bafk") || err.contains("bafy"),
            "names the CID: {err}"
        );
        assert!(!dest.exists(), "no partial output file");
        assert_eq!(
            std::fs::read_dir(d0.path()).unwrap().count(),
            0,
            "no temp file left"
        );
        // Nothing unverified reached the store.
        let st = cairn_relay::store::Disk::open(d.path().join("store"))
            .await
            .unwrap()
            .stat()
            .await
            .unwrap();
        assert!(
            st.blocks <= 3,
            "only verified blocks stored ({} blocks)",
            st.blocks
        );
    }
}

#[tokio::test]
async fn oversized_missing_and_hanging_gateways_fail_clearly() {
    let (out, ..) = cat_via(Mode::Oversize, &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("exceeds"), "{}", stderr(&out));

    let empty = Arc::new(Memory::new());
    let addr = gateway(empty, Mode::Honest).await;
    let d = tempfile::tempdir().unwrap();
    let missing = cid::of(Codec::Raw, HashAlg::Sha2_256, b"nobody has this").to_string();
    let args = vec![
        "cat".to_string(),
        missing.clone(),
        "--store".into(),
        d.path().join("s").to_string_lossy().into(),
        "--gateway".into(),
        format!("http://{addr}"),
    ];
    let out = tokio::task::spawn_blocking(move || bin().args(&args).output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("local: not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("gateway http://{addr}: not found")),
        "{}",
        stderr(&out)
    );

    // The gateway never answers: only `--timeout` can end this.
    let (out, ..) = cat_via(Mode::Hang, &["--timeout", "2"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ran out of time") || stderr(&out).contains("deadline"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("store");
    let s = s.to_str().unwrap();
    let out = run(&["cat", "bafy-not-a-cid", "--store", s]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a valid CID"));

    let cbor = cid::Cid::new_v1(0x71, HashAlg::Sha2_256.digest(b"x")).to_string();
    let out = run(&["cat", &cbor, "--store", s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("codec 0x71"), "{}", stderr(&out));

    let out = run(&[
        "add",
        d.path().join("missing").to_str().unwrap(),
        "--store",
        s,
    ]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let out = run(&["add", d.path().to_str().unwrap(), "--store", s]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));

    let file = d.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&[
        "add",
        file.to_str().unwrap(),
        "--store",
        file.join("sub").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));

    let out = run(&["add", file.to_str().unwrap(), "--profile", "huge"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown profile"), "{}", stderr(&out));
    let out = run(&["add", file.to_str().unwrap(), "--hash", "md5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown hash"), "{}", stderr(&out));

    let out = run(&["cat", &cbor, "--store", s, "--gateway", "ftp://x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(target_os = "linux")]
#[test]
fn an_unreadable_file_mid_import_leaves_the_store_as_it_was() {
    // /proc/self/mem reads fail at offset 0: the import fails at its first read.
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("store");
    let out = run(&["add", "/proc/self/mem", "--store", s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let blocks: usize = std::fs::read_dir(s.join("blocks"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(blocks, 0, "nothing stored");
}

/// Every file under `root`, by relative path, with its bytes (directories as `None`).
fn tree_of(root: &std::path::Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn directories_add_list_cat_by_path_and_get_back_whole() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("site");
    std::fs::create_dir_all(src.join("photos/2026")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("index.html"), b"<h1>hi</h1>").unwrap();
    std::fs::write(src.join("photos/2026/a.jpg"), data(700_000, 3)).unwrap();
    std::fs::write(src.join("photos/ü.txt"), b"unicode").unwrap();
    let store = d.path().join("store");
    let s = store.to_str().unwrap();
    let site = src.to_str().unwrap();

    let no_r = run(&["add", site, "--store", s]);
    assert_eq!(no_r.status.code(), Some(6), "{}", stderr(&no_r));
    assert!(stderr(&no_r).contains("is a directory: add it with -r"));

    let add = run(&["add", "-r", site, "--store", s]);
    assert!(add.status.success(), "{}", stderr(&add));
    let cid = stdout(&add);
    assert!(
        store.join("pins").join(&cid).is_file(),
        "the root is pinned"
    );
    let only = run(&["add", "-r", site, "--only-hash"]);
    assert_eq!(stdout(&only), cid);

    let ls = run(&["ls", &cid, "--store", s]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let names: Vec<String> = stdout(&ls)
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["empty/", "index.html", "photos/"]);
    let ls = run(&["ls", &format!("/ipfs/{cid}/photos"), "--store", s]);
    assert_eq!(stdout(&ls).lines().count(), 2, "{}", stdout(&ls));

    let cat = run(&["cat", &format!("{cid}/photos/2026/a.jpg"), "--store", s]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_eq!(cat.stdout, data(700_000, 3));

    let out = d.path().join("copy");
    let get = run(&["get", &cid, "-o", out.to_str().unwrap(), "--store", s]);
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(tree_of(&out), tree_of(&src), "the tree, byte-identical");
    let one = d.path().join("one.txt");
    let get = run(&[
        "get",
        &format!("{cid}/photos/ü.txt"),
        "-o",
        one.to_str().unwrap(),
        "--store",
        s,
    ]);
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(std::fs::read(&one).unwrap(), b"unicode");

    // A wrapped file keeps its name.
    let wrap = run(&[
        "add",
        "--wrap",
        src.join("index.html").to_str().unwrap(),
        "--store",
        s,
    ]);
    let ls = run(&["ls", &stdout(&wrap), "--store", s]);
    assert!(stdout(&ls).ends_with(" 11 index.html"), "{}", stdout(&ls));

    // Bad paths and targets.
    for (args, code, says) in [
        (vec!["cat", &format!("{cid}/nope")], 3, "no `nope` in `/`"),
        (
            vec!["cat", &format!("{cid}/index.html/x")],
            2,
            "is a file, not a directory",
        ),
        (vec!["ls", &format!("{cid}/../x")], 2, "`..` is not allowed"),
        (
            vec!["get", &cid, "-o", out.to_str().unwrap()],
            2,
            "already exists",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--store", s]);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

/// `cairn-relay get CID -o target` with a store of its own and the gateway at `addr` as its
/// only source.
async fn get_through_gateway(
    cid: &cairn_core::Cid,
    target: &std::path::Path,
    store: &std::path::Path,
    addr: std::net::SocketAddr,
) -> std::process::Output {
    let args: Vec<String> = vec![
        "get".into(),
        cid.to_string(),
        "-o".into(),
        target.to_string_lossy().into(),
        "--store".into(),
        store.to_string_lossy().into(),
        "--gateway".into(),
        format!("http://{addr}"),
    ];
    tokio::task::spawn_blocking(move || bin().args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn get_refuses_a_directory_whose_names_would_leave_the_target() {
    use cairn_core::unixfs::pb;
    let store = Arc::new(Memory::new());
    let leaf =
        cairn_core::Block::from_data(Codec::Raw, HashAlg::Sha2_256, b"evil".to_vec()).unwrap();
    store.put(leaf.clone()).await.unwrap();
    let d = tempfile::tempdir().unwrap();
    let long = "n".repeat(10_000);
    for bad in ["../escaped", "a/b", "..", "nul\0name", long.as_str()] {
        let node = pb::Node {
            links: vec![pb::Link {
                cid: *leaf.cid(),
                name: bad.to_owned(),
                tsize: Some(4),
            }],
            data: Some(pb::UnixFs::of(pb::DataType::Directory).encode().into()),
        };
        let dir =
            cairn_core::Block::from_data(Codec::DagPb, HashAlg::Sha2_256, node.encode()).unwrap();
        store.put(dir.clone()).await.unwrap();
        let addr = gateway(store.clone(), Mode::Honest).await;
        let target = d.path().join("inside").join("out");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let o = get_through_gateway(dir.cid(), &target, &d.path().join("store"), addr).await;
        assert_eq!(o.status.code(), Some(1), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a valid UnixFS directory"),
            "{bad:?}: {}",
            stderr(&o)
        );
        assert!(!d.path().join("inside/escaped").exists());
        assert!(!d.path().join("escaped").exists());
        let _ = std::fs::remove_dir_all(&target);
    }
}

#[tokio::test]
async fn get_refuses_a_directory_that_lists_a_name_twice_rather_than_write_over_it() {
    use cairn_core::unixfs::pb;
    let store = Arc::new(Memory::new());
    let mut links = Vec::new();
    for body in [&b"the first"[..], b"the second"] {
        let leaf =
            cairn_core::Block::from_data(Codec::Raw, HashAlg::Sha2_256, body.to_vec()).unwrap();
        store.put(leaf.clone()).await.unwrap();
        links.push(pb::Link {
            cid: *leaf.cid(),
            name: "same".into(),
            tsize: Some(body.len() as u64),
        });
    }
    let node = pb::Node {
        links,
        data: Some(pb::UnixFs::of(pb::DataType::Directory).encode().into()),
    };
    let dir = cairn_core::Block::from_data(Codec::DagPb, HashAlg::Sha2_256, node.encode()).unwrap();
    store.put(dir.clone()).await.unwrap();
    let addr = gateway(store, Mode::Honest).await;
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("out");
    let o = get_through_gateway(dir.cid(), &target, &d.path().join("store"), addr).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("lists `same` twice"), "{}", stderr(&o));
    // Whatever was written is whole: the first entry's bytes, never a mix.
    if let Ok(bytes) = std::fs::read(target.join("same")) {
        assert_eq!(bytes, b"the first");
    }
    let names: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.len() <= 1, "no partial files left: {names:?}");
}

/// A tree under `at/top` whose files and directories have modes and times of every kind:
/// files of one block and of two, modes with and without the default (and a setuid bit),
/// times with and without nanoseconds, and one before 1970. Returns `at/top`.
#[cfg(unix)]
fn stamped_tree(at: &std::path::Path) -> std::path::PathBuf {
    use std::time::{Duration, UNIX_EPOCH};
    let top = at.join("top");
    std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(top.join("empty")).unwrap();
    let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
    let files: [(&str, usize, u32, std::time::SystemTime); 4] = [
        ("a.txt", 1024, 0o600, at(1_700_000_000, 123_456_789)),
        ("run.sh", 10, 0o755, at(1_600_000_000, 0)),
        ("sub/big.bin", 262_145, 0o644, at(1_650_000_000, 5)),
        (
            "sub/deeper/old.txt",
            3,
            0o4755,
            UNIX_EPOCH - Duration::new(86_400, 250_000_000),
        ),
    ];
    for (i, (name, len, mode, mtime)) in files.iter().enumerate() {
        let p = top.join(name);
        std::fs::write(&p, vec![i as u8 + 1; *len]).unwrap();
        stamp(&p, *mode, *mtime);
    }
    // Directories last: writing into one changes its time.
    for (name, mode, mtime) in [
        ("sub/deeper", 0o700, at(1_500_000_000, 42)),
        ("sub", 0o750, at(1_500_000_001, 0)),
        ("empty", 0o755, at(1_500_000_002, 7)),
        ("", 0o711, at(1_500_000_003, 999_999_999)),
    ] {
        stamp(&top.join(name), mode, mtime);
    }
    top
}

/// `get` gives back the modes (permission bits only: the setuid bit is dropped) and the
/// times `add --preserve-mode --preserve-mtime` kept, to the nanosecond, directories
/// included; `ls -l` shows them.
#[cfg(unix)]
#[test]
fn get_gives_back_the_modes_and_times_add_kept_and_ls_long_shows_them() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let top = stamped_tree(d.path());
    let store = d.path().join("store");
    let s = store.to_str().unwrap();
    let add = run(&[
        "add",
        "-r",
        "--preserve-mode",
        "--preserve-mtime",
        top.to_str().unwrap(),
        "--store",
        s,
    ]);
    assert!(add.status.success(), "{}", stderr(&add));
    let cid = stdout(&add);
    let out = d.path().join("copy");
    let get = run(&["get", &cid, "-o", out.to_str().unwrap(), "--store", s]);
    assert!(get.status.success(), "{}", stderr(&get));
    for rel in [
        "",
        "a.txt",
        "run.sh",
        "sub",
        "sub/big.bin",
        "sub/deeper",
        "sub/deeper/old.txt",
        "empty",
    ] {
        let (a, b) = (top.join(rel), out.join(rel));
        let (ma, mb) = (
            std::fs::metadata(&a).unwrap(),
            std::fs::metadata(&b).unwrap(),
        );
        assert_eq!(
            mb.permissions().mode() & 0o7777,
            ma.permissions().mode() & 0o777,
            "{rel:?}: the permission bits, and nothing above them"
        );
        assert_eq!(
            mb.modified().unwrap(),
            ma.modified().unwrap(),
            "{rel:?}: the time"
        );
    }
    assert_eq!(tree_of(&out), tree_of(&top), "the bytes");

    // Without the flags there is nothing to give back: what `get` writes is plain.
    let plain = stdout(&run(&["add", "-r", top.to_str().unwrap(), "--store", s]));
    let ls = stdout(&run(&["ls", "-l", &plain, "--store", s]));
    assert!(ls.lines().all(|l| l.contains(" - - ")), "{ls}");

    let ls = run(&["ls", "--long", &cid, "--store", s]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let ls = stdout(&ls);
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} in {ls}"))
            .to_owned()
    };
    assert!(
        line("a.txt").ends_with(" 0600 2023-11-14T22:13:20.123456789Z a.txt"),
        "{ls}"
    );
    assert!(
        line("sub/").ends_with(" 0750 2017-07-14T02:40:01Z sub/"),
        "{ls}"
    );
    assert!(
        line("empty/").ends_with(" - 2017-07-14T02:40:02.000000007Z empty/"),
        "the default mode is not stored: {ls}"
    );
    let deeper = stdout(&run(&[
        "ls",
        "-l",
        &format!("{cid}/sub/deeper"),
        "--store",
        s,
    ]));
    assert!(
        deeper.ends_with(" 4755 1969-12-30T23:59:59.750000000Z old.txt"),
        "the mode as stored; a time before 1970: {deeper}"
    );
}

/// Sets `path`'s permission bits and modification time.
#[cfg(unix)]
fn stamp(path: &std::path::Path, mode: u32, mtime: std::time::SystemTime) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::File::open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[cfg(unix)]
#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn add_preserving_mode_and_mtime_gives_helias_root() {
    let node = cairn_scenarios::node22("add_preserving_mode_and_mtime_gives_helias_root");
    let d = tempfile::tempdir().unwrap();
    let top = stamped_tree(d.path());
    let dir = top.to_str().unwrap();
    let plain = stdout(&run(&["add", "-r", "--only-hash", dir]));
    for wrap in [false, true] {
        let mut args = vec![
            "add",
            "-r",
            "--only-hash",
            "--preserve-mode",
            "--preserve-mtime",
        ];
        if wrap {
            args.push("--wrap");
        }
        args.push(dir);
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let ours = stdout(&out);
        let mut helia = std::process::Command::new(&node);
        helia
            .arg(cairn_scenarios::repo_root().join("tests/js/unixfs-tree-cid.mjs"))
            .args(["default", dir, "preserve"]);
        if wrap {
            helia.arg("wrap");
        }
        let theirs = helia.output().expect("run node");
        assert!(theirs.status.success(), "{}", stderr(&theirs));
        assert_eq!(ours, stdout(&theirs), "wrap: {wrap}");
        assert_ne!(ours, plain, "the metadata is in the DAG");
    }
    // Their metadata is not read without the flags: the plain root is Helia's plain one.
    let theirs = std::process::Command::new(&node)
        .arg(cairn_scenarios::repo_root().join("tests/js/unixfs-tree-cid.mjs"))
        .args(["default", dir])
        .output()
        .expect("run node");
    assert_eq!(plain, stdout(&theirs));
}
