//! Replays the fuzz corpus on the stable toolchain: every input under `fuzz/corpus/<target>/`
//! (what `cargo xtask fuzz` found worth keeping, and its seeds) and every crash found so far
//! under `fuzz/regressions/<target>/` goes through its target's body, which panics on any
//! broken invariant. The seeds themselves are run too, so the replay is never empty.

use std::path::Path;

use cairn_scenarios::fuzz::{TARGETS, seeds};

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("a corpus file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_seeds_and_they_pass() {
    let seeds = seeds();
    for (name, run) in TARGETS {
        let mine: Vec<_> = seeds.iter().filter(|(t, _)| t == name).collect();
        assert!(!mine.is_empty(), "target {name} has no seed");
        for (_, s) in mine {
            run(s);
        }
    }
    for (t, _) in &seeds {
        assert!(
            TARGETS.iter().any(|(name, _)| name == t),
            "a seed for an unknown target {t}"
        );
    }
}

#[test]
fn the_corpus_and_every_crash_found_so_far_pass() {
    let fuzz = cairn_scenarios::repo_root().join("fuzz");
    let mut replayed = 0;
    for (name, run) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for (file, bytes) in inputs(&fuzz.join(kind).join(name)) {
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(
                    outcome.is_ok(),
                    "fuzz/{kind}/{name}/{file} fails its target again"
                );
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} fuzz inputs");
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-<n>` (`cargo xtask fuzz` runs this
/// before fuzzing, with `CAIRN_WRITE_FUZZ_SEEDS=1`; without it, it writes nothing).
#[test]
#[ignore = "writes the fuzz seeds; run by `cargo xtask fuzz`"]
fn write_seeds() {
    if std::env::var_os("CAIRN_WRITE_FUZZ_SEEDS").is_none() {
        eprintln!("CAIRN_WRITE_FUZZ_SEEDS is not set: not writing the seeds");
        return;
    }
    let corpus = cairn_scenarios::repo_root().join("fuzz/corpus");
    let mut n = std::collections::HashMap::<&str, usize>::new();
    for (target, bytes) in seeds() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        let i = n.entry(target).or_default();
        std::fs::write(dir.join(format!("seed-{i}")), bytes).expect("a seed file");
        *i += 1;
    }
}
