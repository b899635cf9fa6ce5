//! CID parity with a real implementation: Helia's UnixFS importer (ipfs-unixfs-importer under
//! Node 22) and cairn import the same files and directory trees, for both profiles, and must
//! give the same root.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use cairn_core::source::{Context, Local};
use cairn_core::store::{BlockStore, Memory, Null};
use cairn_core::unixfs::dir::Metadata;
use cairn_core::unixfs::{self, Profile};
use cairn_core::{Cid, HashAlg};
use cairn_scenarios::{Data, node22, repo_root};

fn sizes(p: Profile) -> Vec<(String, u64)> {
    let c = p.chunk_size as u64;
    let l = p.max_links as u64;
    let mut v = vec![
        ("empty".into(), 0),
        ("one byte".into(), 1),
        ("chunk-1".into(), c - 1),
        ("chunk".into(), c),
        ("chunk+1".into(), c + 1),
        ("174 chunks".into(), 174 * c),
        ("175 chunks".into(), 175 * c),
        ("174 chunks + 1".into(), 174 * c + 1),
    ];
    if l != 174 {
        // This profile's own second tree level.
        v.push((format!("{l} chunks"), l * c));
        v.push((format!("{l} chunks + 1"), l * c + 1));
    }
    // A few random sizes up to 64 MiB, from a fixed seed so a failure can be reproduced.
    let mut rng = Data::new(0xCA1 + c);
    for i in 0..3 {
        let r = u64::from_le_bytes(rng.bytes(8).try_into().unwrap_or_default());
        v.push((format!("random #{i}"), r % (64 << 20)));
    }
    v
}

fn helia_cids(node: &PathBuf, profile: Profile, files: &[PathBuf]) -> Vec<String> {
    helia_cids_with(node, profile, &[], files)
}

/// Helia's roots for `files`, each given the metadata that `flags` (`--mode`, `--mtime`) say.
fn helia_cids_with(
    node: &PathBuf,
    profile: Profile,
    flags: &[String],
    files: &[PathBuf],
) -> Vec<String> {
    let out = Command::new(node)
        .arg(repo_root().join("tests/js/unixfs-cid.mjs"))
        .arg(profile.name)
        .args(flags)
        .args(files)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "Helia importer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines()
        .map(|l| l.split_once(' ').expect("`cid path`").0.to_owned())
        .collect()
}

/// cairn's import of the file at `path` with `meta`, its blocks written to `store`.
fn import_file<S: BlockStore>(
    store: &S,
    profile: Profile,
    meta: Metadata,
    path: &Path,
) -> unixfs::Imported {
    let f = futures::io::AllowStdIo::new(std::fs::File::open(path).expect("open"));
    let mut op = cairn_core::live::Live::global().operation();
    let imported = futures::executor::block_on(unixfs::import_hashing(
        store,
        futures::io::BufReader::new(f),
        unixfs::Importer::new(profile, HashAlg::Sha2_256).metadata(meta),
        &unixfs::Inline,
        |_| {},
        &mut op,
    ))
    .expect("cairn import");
    op.finish();
    imported
}

fn parity(profile: Profile) {
    let node = node22("unixfs_parity");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = sizes(profile);
    let mut files = Vec::new();
    for (i, (_, len)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        Data::new(i as u64)
            .write_file(&path, *len)
            .expect("write test file");
        files.push(path);
    }
    let theirs = helia_cids(&node, profile, &files);
    assert_eq!(theirs.len(), files.len());
    let mut failures = Vec::new();
    for (((name, len), path), their) in cases.iter().zip(&files).zip(&theirs) {
        let ours = import_file(&Null::new(), profile, Metadata::default(), path);
        assert_eq!(ours.size, *len);
        eprintln!(
            "{profile} {name:>16} ({len:>10} B): cairn {} helia {their}",
            ours.root
        );
        if ours.root.to_string() != *their {
            failures.push(format!(
                "{name} ({len} bytes): cairn {} != helia {their}",
                ours.root
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{profile}: CIDs differ:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn default_profile_matches_helia() {
    parity(Profile::DEFAULT);
}

#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn unixfs_v1_2025_profile_matches_helia() {
    parity(Profile::UNIXFS_V1_2025);
}

#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn file_mode_and_mtime_match_helia() {
    use cairn_core::unixfs::pb::Mtime;
    let node = node22("unixfs_parity");
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = Profile::DEFAULT;
    let c = profile.chunk_size as u64;
    // One block (raw leaf without metadata, a file node with it), two, and two levels.
    let mut files = Vec::new();
    for (i, len) in [0, 1, c, c + 1, 175 * c].into_iter().enumerate() {
        let path = dir.path().join(format!("m{i}"));
        Data::new(100 + i as u64).write_file(&path, len).unwrap();
        files.push(path);
    }
    let mtime = |secs, nsecs| Some(Mtime { secs, nsecs });
    let cases: [(&[&str], Metadata); 6] = [
        (
            &["--mode", "755"],
            Metadata {
                mode: Some(0o755),
                mtime: None,
            },
        ),
        // The default mode is not written, but a one-block file still becomes a file node.
        (
            &["--mode", "644"],
            Metadata {
                mode: Some(0o644),
                mtime: None,
            },
        ),
        // Only the low 12 bits are kept.
        (
            &["--mode", "100600"],
            Metadata {
                mode: Some(0o100600),
                mtime: None,
            },
        ),
        (
            &["--mtime", "1700000000"],
            Metadata {
                mode: None,
                mtime: mtime(1_700_000_000, None),
            },
        ),
        (
            &["--mtime", "1700000000.123456789"],
            Metadata {
                mode: None,
                mtime: mtime(1_700_000_000, Some(123_456_789)),
            },
        ),
        (
            &["--mode", "4755", "--mtime", "-86400"],
            Metadata {
                mode: Some(0o4755),
                mtime: mtime(-86_400, None),
            },
        ),
    ];
    let mut failures = Vec::new();
    for (flags, meta) in cases {
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        let theirs = helia_cids_with(&node, profile, &flags, &files);
        for (path, their) in files.iter().zip(&theirs) {
            let ours = import_file(&Null::new(), profile, meta, path);
            let len = std::fs::metadata(path).unwrap().len();
            eprintln!("{flags:?} {len:>10} B: cairn {} helia {their}", ours.root);
            if ours.root.to_string() != *their {
                failures.push(format!(
                    "{flags:?}, {len} bytes: cairn {} != helia {their}",
                    ours.root
                ));
            }
        }
    }
    assert!(failures.is_empty(), "CIDs differ:\n{}", failures.join("\n"));
}

// ---- Directories ----

/// cairn's root for the tree at `path` (a directory added as `<name>/…`, or one file),
/// walked as the JS side walks it; its blocks are kept in `store`.
fn cairn_tree(profile: Profile, path: &Path, wrap: bool, store: &Arc<Memory>) -> Cid {
    use cairn_core::unixfs::dir::{Entry, TreeBuilder};
    fn import(profile: Profile, file: &Path, store: &Memory) -> Entry {
        let i = import_file(store, profile, Metadata::default(), file);
        Entry {
            cid: i.root,
            tsize: i.dag_size,
        }
    }
    fn walk(profile: Profile, dir: &Path, prefix: &str, t: &mut TreeBuilder, store: &Memory) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        if names.is_empty() {
            t.add_dir(prefix, Metadata::default()).expect("add dir");
        }
        for name in names {
            let full = dir.join(&name);
            let p = format!("{prefix}/{name}");
            if full.is_dir() {
                walk(profile, &full, &p, t, store);
            } else {
                t.add(&p, import(profile, &full, store)).expect("add");
            }
        }
    }
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut t = TreeBuilder::new(profile, HashAlg::Sha2_256);
    if path.is_dir() {
        walk(profile, path, name, &mut t, store);
    } else {
        t.add(name, import(profile, path, store)).expect("add");
    }
    let mut blocks = Vec::new();
    let root = t.finish(&mut blocks).expect("finish");
    for b in blocks {
        futures::executor::block_on(store.put(b)).expect("put");
    }
    if wrap {
        return root.cid;
    }
    // Not wrapped: the one entry at the top is the root, as Helia yields it.
    let mut only = None;
    futures::executor::block_on(unixfs::dir::ls(
        &Local(store.clone()),
        &Context::new(),
        root.cid,
        |e| {
            only = Some(e.cid);
            std::ops::ControlFlow::Continue(())
        },
    ))
    .expect("ls");
    only.expect("one entry")
}

fn helia_tree(node: &Path, profile: Profile, path: &Path, wrap: bool) -> String {
    let mut cmd = Command::new(node);
    cmd.arg(repo_root().join("tests/js/unixfs-tree-cid.mjs"))
        .arg(profile.name)
        .arg(path);
    if wrap {
        cmd.arg("wrap");
    }
    let out = cmd.output().expect("run node");
    assert!(
        out.status.success(),
        "Helia importer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// How many 6-byte-named, 1-byte files one directory holds before it becomes a HAMT.
fn most_unsharded(profile: Profile) -> usize {
    // A CIDv1 raw sha2-256 is 36 bytes; a link of a 6-byte name to it, with Tsize 1, is
    // 48 bytes and 50 with its own tag and length; a directory's data field is 4 bytes.
    let (per, base) = match profile.shard_split {
        unixfs::ShardSplit::LinksBytes => (6 + 36, 0),
        unixfs::ShardSplit::BlockBytes => (50, 4),
    };
    ((unixfs::SHARD_THRESHOLD - base) / per) as usize
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The trees both importers are given: `(name, wrap)`, written under `root`.
fn trees(profile: Profile, root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let c = profile.chunk_size as u64;
    // Flat: files of many sizes, names that sort differently as bytes and as text.
    let flat = root.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for (i, len) in [0, 1, 100, c - 1, c, c + 1, 3 * c + 7]
        .into_iter()
        .enumerate()
    {
        Data::new(i as u64)
            .write_file(&flat.join(format!("file-{i}.bin")), len)
            .unwrap();
    }
    for name in ["B", "a", "ä.txt", "Z-last", "_", "a.b.c", "日本語.md"] {
        write(&flat.join(name), name.as_bytes());
    }
    out.push((flat.clone(), false));
    out.push((flat, true));
    // Deep: 40 levels, a file at every fifth.
    let mut deep = root.join("deep");
    let top = deep.clone();
    for level in 0..40 {
        deep = deep.join(format!("d{level}"));
        if level % 5 == 0 {
            write(&deep.join("here.txt"), format!("level {level}").as_bytes());
        }
    }
    out.push((top, false));
    // Empty directories: alone, nested, beside files.
    let empty = root.join("empties");
    std::fs::create_dir_all(empty.join("nothing")).unwrap();
    std::fs::create_dir_all(empty.join("a/b/c")).unwrap();
    write(&empty.join("a/file"), b"beside an empty directory");
    out.push((empty, false));
    out.push((root.join("empties/nothing"), false));
    // A single file, wrapped so that its name survives.
    let single = root.join("single.txt");
    write(&single, b"a file whose name must survive");
    out.push((single, true));
    // The sharding threshold: the most entries a plain directory holds, then one more.
    let n = most_unsharded(profile);
    for (name, count) in [("at-threshold", n), ("past-threshold", n + 1)] {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..count {
            std::fs::write(d.join(format!("f{i:05}")), [(i % 251) as u8]).unwrap();
        }
        out.push((d, false));
    }
    // A HAMT under a plain directory, with a subdirectory inside the HAMT.
    let nested = root.join("nested");
    let big = nested.join("big");
    for i in 0..(n + 500) {
        std::fs::create_dir_all(&big).unwrap();
        std::fs::write(big.join(format!("f{i:05}")), (i as u32).to_le_bytes()).unwrap();
    }
    write(&big.join("sub/inside.txt"), b"a directory inside a HAMT");
    write(&nested.join("readme"), b"beside the HAMT");
    out.push((nested.clone(), false));
    out.push((nested, true));
    out
}

fn tree_parity(profile: Profile) {
    let node = node22("unixfs_parity");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (path, wrap) in trees(profile, dir.path()) {
        let store = Arc::new(Memory::new());
        let ours = cairn_tree(profile, &path, wrap, &store);
        let theirs = helia_tree(&node, profile, &path, wrap);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        eprintln!("{profile} {name:>16} wrap={wrap:<5}: cairn {ours} helia {theirs}");
        // The threshold cases test what they say: one entry more makes the HAMT.
        if let Some(sharded) = match name.as_str() {
            "at-threshold" => Some(false),
            "past-threshold" => Some(true),
            _ => None,
        } {
            let block = futures::executor::block_on(store.get(&ours))
                .unwrap()
                .expect("root stored");
            let node = unixfs::pb::Node::decode(block.data()).unwrap();
            let kind = unixfs::pb::UnixFs::decode(node.data.as_ref().unwrap())
                .unwrap()
                .kind;
            assert_eq!(
                kind == unixfs::pb::DataType::HamtShard,
                sharded,
                "{name}: {kind:?} with {} links",
                node.links.len()
            );
        }
        if ours.to_string() != theirs {
            failures.push(format!(
                "{name} (wrap {wrap}): cairn {ours} != helia {theirs}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{profile}: directory CIDs differ:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn default_profile_directories_match_helia() {
    tree_parity(Profile::DEFAULT);
}

#[test]
#[ignore = "needs Node 22 and the npm packages of tests/js: run through `cargo xtask test`"]
fn unixfs_v1_2025_profile_directories_match_helia() {
    tree_parity(Profile::UNIXFS_V1_2025);
}
