//! CID parity with a real implementation: Helia's UnixFS importer (ipfs-unixfs-importer under
//! Node 22) and cairn import the same files, for both profiles, and must give the same root.

use std::path::PathBuf;
use std::process::Command;

use cairn_core::HashAlg;
use cairn_core::store::Null;
use cairn_core::unixfs::{self, Profile};
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
    let out = Command::new(node)
        .arg(repo_root().join("tests/js/unixfs-cid.mjs"))
        .arg(profile.name)
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
        let file = futures::io::AllowStdIo::new(std::fs::File::open(path).expect("open"));
        let ours = futures::executor::block_on(unixfs::import(
            &Null::new(),
            futures::io::BufReader::new(file),
            profile,
            HashAlg::Sha2_256,
            |_| {},
        ))
        .expect("cairn import");
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
