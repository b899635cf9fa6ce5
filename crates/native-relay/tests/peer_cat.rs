//! `cat --peer`: a relay started with `--store` serves its content over `/cas/1.0.0`, and
//! another process fetches it through the source chain's peer race, verified.

mod common;
use common::{bin, serve_store};

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

    let (_relay, addr, _) = serve_store(d.path(), &served, 0);

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

/// A folder from a peer (`get`, `ls`, `cat` of a path), its structure asked for with `dag`:
/// the whole tree, a subfolder by its path and a file in it all come back byte-identical,
/// each fetch into a fresh store.
#[test]
fn a_folder_and_paths_in_it_from_a_relay_that_serves_its_store() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"a small file\n".to_vec()),
        ("sub/b.txt", b"in a subfolder\n".to_vec()),
        ("sub/deeper/c.bin", big),
        ("sub/deeper/d.txt", b"deep\n".to_vec()),
    ];
    for (path, bytes) in &files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let served = d.path().join("served");
    let add = bin()
        .args(["add", "-r"])
        .arg(&tree)
        .arg("--store")
        .arg(&served)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let cid = String::from_utf8(add.stdout).unwrap().trim().to_owned();
    let (_relay, addr, _) = serve_store(d.path(), &served, 0);
    let run = |args: &[&str], store: &str| {
        let out = bin()
            .args(args)
            .args(["--peer", &addr, "--store"])
            .arg(d.path().join(store))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    let whole = d.path().join("whole");
    run(&["get", &cid, "-o", whole.to_str().unwrap()], "s1");
    for (path, bytes) in &files {
        assert_eq!(&std::fs::read(whole.join(path)).unwrap(), bytes, "{path}");
    }
    let sub = d.path().join("sub");
    run(
        &["get", &format!("{cid}/sub"), "-o", sub.to_str().unwrap()],
        "s2",
    );
    for (path, bytes) in &files {
        if let Some(rest) = path.strip_prefix("sub/") {
            assert_eq!(&std::fs::read(sub.join(rest)).unwrap(), bytes, "{path}");
        }
    }
    let listed = String::from_utf8(run(&["ls", &cid], "s3")).unwrap();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    assert_eq!(names, ["a.txt", "sub/"], "{listed}");
    let c = run(&["cat", &format!("{cid}/sub/deeper/c.bin")], "s4");
    assert_eq!(c, files[2].1, "a file by its path");
}
