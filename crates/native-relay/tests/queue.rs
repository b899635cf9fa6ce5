//! The transfer queue from the command line, against a real relay process: `cat
//! --max-rate` holds the cap; `queue FILE` refuses junk lines by number and fetches the
//! rest by priority; a run interrupted resumes and fetches only what it lacks; a relay
//! killed mid-transfer is waited for and the transfer completes when it is back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{Kill, bin, lines, rest, serve_store};

const MIB: usize = 1 << 20;

/// A store with files of `sizes` bytes added; their CIDs and contents.
fn served(dir: &Path, sizes: &[usize]) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let store = dir.join("served");
    let mut files = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = common::data(*len + 8)[..*len]
            .iter()
            .map(|b| b.wrapping_add(i as u8))
            .collect();
        let f = dir.join(format!("f{i}"));
        std::fs::write(&f, &bytes).unwrap();
        let out = bin()
            .arg("add")
            .arg(&f)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        assert!(out.status.success());
        files.push((
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            bytes,
        ));
    }
    (store, files)
}

/// Bytes of blocks the relay has served (its `/metrics`).
fn served_bytes(http: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        reqwest::get(format!("http://{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .filter(|l| l.starts_with("cairn_block_bytes_served_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits for a progress line of an active transfer past `mib` MiB.
fn until_past(rx: &Receiver<String>, mib: f64, seen: &mut Vec<String>) {
    loop {
        let l = until(rx, "active", seen);
        let done: f64 = l
            .split(": ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        if done >= mib {
            return;
        }
    }
}

/// Waits for a line of `rx` containing `needle` (bounded), returning it.
fn until(rx: &Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
            Err(_) => panic!("no line with {needle:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

fn local_cat(store: &Path, cid: &str) -> Vec<u8> {
    let out = bin()
        .args(["cat", cid, "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn queue(file: Option<&Path>, store: &Path, peer: &str, extra: &[&str]) -> Child {
    let mut c = bin();
    c.arg("queue");
    if let Some(f) = file {
        c.arg(f);
    }
    c.args(["--peer", peer, "--store"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn cat_with_a_rate_cap_holds_it() {
    let d = tempfile::tempdir().unwrap();
    let (store, files) = served(d.path(), &[20 * MIB]);
    let (_relay, addr, _) = serve_store(d.path(), &store, 0);
    let (cid, bytes) = &files[0];
    let started = Instant::now();
    let out = bin()
        .args(["cat", cid, "--peer", &addr, "--max-rate", "2MiB", "--store"])
        .arg(d.path().join("mine"))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == *bytes, "byte-identical");
    let rate = 20.0 / took.as_secs_f64();
    eprintln!("20 MiB under a 2 MiB/s cap in {took:.2?}: {rate:.2} MiB/s");
    assert!(
        (1.7..=2.3).contains(&rate),
        "{rate:.2} MiB/s is not within 15 % of the 2 MiB/s cap"
    );
    // Bad caps are usage errors that say what is wrong.
    for bad in ["0", "-2M", "fast"] {
        let out = bin()
            .args([
                "cat",
                cid,
                "--peer",
                &addr,
                &format!("--max-rate={bad}"),
                "--store",
            ])
            .arg(d.path().join("mine"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("byte per second") || err.contains("not a rate"),
            "{err}"
        );
    }
}

#[test]
fn a_queue_file_runs_by_priority_and_refuses_junk_lines_by_number() {
    let d = tempfile::tempdir().unwrap();
    let (store, files) = served(d.path(), &[3 * MIB, MIB, 2 * MIB]);
    let (_relay, addr, _) = serve_store(d.path(), &store, 0);
    let list = d.path().join("list");
    std::fs::write(
        &list,
        format!(
            "# what to fetch\n{} low max-rate=4MiB\nthis is not a cid\n{} critical\n{} sources=bittorrent\n{}\n",
            files[0].0, files[1].0, files[2].0, files[2].0
        ),
    )
    .unwrap();
    let mine = d.path().join("mine");
    let mut child = queue(Some(&list), &mine, &addr, &["--concurrency", "1", "--pin"]);
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let mut kill = Kill(child);
    let status = kill
        .exit_within(Duration::from_secs(120))
        .expect("the queue ends");
    let stdout: Vec<String> = rest(&out);
    let stderr: Vec<String> = rest(&err);
    assert_eq!(
        status.code(),
        Some(2),
        "junk lines make it a usage error:\n{}",
        stderr.join("\n")
    );
    let warned = |n: usize| stderr.iter().any(|l| l.contains(&format!("list:{n}:")));
    assert!(warned(3) && warned(5), "{stderr:?}");
    assert!(!warned(2) && !warned(4) && !warned(6), "{stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("not a source")),
        "{stderr:?}"
    );
    for (cid, bytes) in &files {
        assert!(stdout.contains(&format!("{cid} done")), "{stdout:?}");
        assert!(
            local_cat(&mine, cid) == *bytes,
            "{cid} byte-identical from the store"
        );
        assert!(mine.join("pins").join(cid).exists(), "--pin pinned {cid}");
    }
    // The critical one ran first once it was there: it finished before the low one.
    let done_at = |cid: &str| {
        stderr
            .iter()
            .position(|l| l.contains(cid) && l.contains(" done:"))
            .unwrap_or_else(|| panic!("no done line for {cid}: {stderr:?}"))
    };
    assert!(done_at(&files[1].0) < done_at(&files[0].0), "{stderr:?}");
    // Nothing is left in the store's queue.
    let journal = std::fs::read_to_string(mine.join("transfers")).unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");
}

#[test]
fn an_interrupted_queue_resumes_and_fetches_only_what_it_lacks() {
    let d = tempfile::tempdir().unwrap();
    let (store, files) = served(d.path(), &[8 * MIB]);
    let (_relay, addr, http) = serve_store(d.path(), &store, 0);
    let (cid, bytes) = &files[0];
    let list = d.path().join("list");
    std::fs::write(&list, format!("{cid} max-rate=2MiB\n")).unwrap();
    let mine = d.path().join("mine");
    let mut child = queue(Some(&list), &mine, &addr, &[]);
    let err = lines(child.stderr.take().unwrap());
    let pid = child.id();
    let mut kill = Kill(child);
    let mut seen = Vec::new();
    // Past 3 MiB, interrupt it as a person would.
    until_past(&err, 3.0, &mut seen);
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = kill.exit_within(Duration::from_secs(30)).expect("it stops");
    assert_eq!(status.code(), Some(1));
    until(&err, "interrupted: 1 transfer(s) kept", &mut seen);
    let before = served_bytes(&http);
    assert!(before < bytes.len() as u64, "it stopped part way: {before}");

    // The next run, with no file, resumes it from the store's queue.
    let mut child = queue(None, &mine, &addr, &[]);
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let mut kill = Kill(child);
    let status = kill
        .exit_within(Duration::from_secs(60))
        .expect("the queue ends");
    let stderr: Vec<String> = rest(&err);
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("resuming 1 transfer(s)")),
        "{stderr:?}"
    );
    assert_eq!(rest(&out), [format!("{cid} done")]);
    assert!(local_cat(&mine, cid) == *bytes, "byte-identical");
    let total = served_bytes(&http);
    eprintln!(
        "served {before} bytes before the interruption, {total} in all, for {} bytes",
        bytes.len()
    );
    // Each block once, but for the few cut in flight by the interruption.
    assert!(
        total <= bytes.len() as u64 + 2 * MIB as u64,
        "the resumed run fetched what it had: {total} bytes served for {}",
        bytes.len()
    );
}

#[test]
fn a_relay_killed_mid_transfer_is_waited_for_and_the_transfer_completes() {
    let d = tempfile::tempdir().unwrap();
    let (store, files) = served(d.path(), &[8 * MIB]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (relay1, addr, _) = serve_store(d.path(), &store, port);
    let (cid, bytes) = &files[0];
    let list = d.path().join("list");
    std::fs::write(&list, format!("{cid} max-rate=2MiB\n")).unwrap();
    let mine = d.path().join("mine");
    let mut child = queue(Some(&list), &mine, &addr, &[]);
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let mut kill = Kill(child);
    let mut seen = Vec::new();
    until_past(&err, 2.0, &mut seen);
    drop(relay1);
    until(&err, "retrying", &mut seen);
    let (_relay2, addr2, _) = serve_store(d.path(), &store, port);
    assert_eq!(addr2, addr, "the same relay, back");
    let status = kill
        .exit_within(Duration::from_secs(90))
        .expect("the queue ends");
    let tail: Vec<String> = rest(&err);
    assert_eq!(status.code(), Some(0), "{seen:?}\n{tail:?}");
    assert_eq!(rest(&out), [format!("{cid} done")]);
    assert!(local_cat(&mine, cid) == *bytes, "byte-identical");
}
