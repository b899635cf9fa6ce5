//! The disk store survives the machine failing under it: `cairn-relay add` and `cat` killed
//! (SIGKILL) at random points while they write, a file system that fills up during an add or
//! a fetch, a block file corrupted on disk. Afterwards the store opens, holds only whole,
//! verified blocks in whole batches, and its counts agree with its contents.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::Cid;
use cairn_core::block::Block;
use cairn_core::store::{self, BlockStore, Memory, Stat};
use cairn_relay::store::Disk;
use common::bin;

const MIB: usize = 1024 * 1024;

/// A store that records the batches written to it (to know which blocks land together).
#[derive(Default)]
struct Recording {
    inner: Memory,
    batches: Mutex<Vec<Vec<Cid>>>,
}

impl BlockStore for Recording {
    async fn get(&self, cid: &Cid) -> store::Result<Option<Block>> {
        self.inner.get(cid).await
    }
    async fn put(&self, block: Block) -> store::Result<bool> {
        self.batches.lock().unwrap().push(vec![*block.cid()]);
        self.inner.put(block).await
    }
    async fn put_many(&self, blocks: Vec<Block>) -> store::Result<usize> {
        if !blocks.is_empty() {
            self.batches
                .lock()
                .unwrap()
                .push(blocks.iter().map(|b| *b.cid()).collect());
        }
        self.inner.put_many(blocks).await
    }
    async fn has(&self, cid: &Cid) -> store::Result<bool> {
        self.inner.has(cid).await
    }
    async fn delete(&self, cid: &Cid) -> store::Result<bool> {
        self.inner.delete(cid).await
    }
    async fn list(&self, after: Option<&Cid>, limit: usize) -> store::Result<Vec<Cid>> {
        self.inner.list(after, limit).await
    }
    async fn stat(&self) -> store::Result<Stat> {
        self.inner.stat().await
    }
}

/// The batches an import of `data` writes, in order.
async fn batches_of(data: &[u8]) -> Vec<Vec<Cid>> {
    let rec = Recording::default();
    common::import(&rec, data).await;
    rec.batches.into_inner().unwrap()
}

/// Opens the store at `dir` and checks it: every block reads back verified, the counts
/// agree with the files, nothing is left in `tmp/` or `journal/`, and every batch of
/// `batches` is there whole or not at all. Returns the blocks held.
async fn check_store(dir: &Path, batches: &[Vec<Cid>]) -> HashSet<Cid> {
    let store = Disk::open(dir).await.expect("the store opens");
    let mut held = HashSet::new();
    let mut after = None;
    loop {
        let page = store.list(after.as_ref(), 1000).await.unwrap();
        let Some(last) = page.last().copied() else {
            break;
        };
        held.extend(page);
        after = Some(last);
    }
    let mut bytes = 0u64;
    for c in &held {
        let b = store
            .get(c)
            .await
            .unwrap_or_else(|e| panic!("{c} does not read back: {e}"))
            .unwrap_or_else(|| panic!("{c} is listed but not there"));
        bytes += b.len() as u64;
    }
    let stat = store.stat().await.unwrap();
    assert_eq!(
        stat.blocks,
        held.len() as u64,
        "the count agrees with the blocks"
    );
    assert_eq!(stat.bytes, bytes, "the byte count agrees with the blocks");
    let files: usize = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .flatten()
        .map(|shard| std::fs::read_dir(shard.path()).unwrap().count())
        .sum();
    assert_eq!(
        files,
        held.len(),
        "one file per block, none unaccounted for"
    );
    for leftover in ["tmp", "journal"] {
        let n = std::fs::read_dir(dir.join(leftover)).unwrap().count();
        assert_eq!(n, 0, "{leftover}/ is empty after opening");
    }
    for (i, batch) in batches.iter().enumerate() {
        let present = batch.iter().filter(|c| held.contains(c)).count();
        assert!(
            present == 0 || present == batch.len(),
            "batch {i} is partly there: {present} of {} blocks",
            batch.len()
        );
    }
    held
}

/// xorshift, for kill times that are random but reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn seed() -> u64 {
    let s = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    eprintln!("kill times from seed {s} (CAIRN_CRASH_SEED={s} repeats them)");
    s
}

fn add_command(file: &Path, store: &Path) -> std::process::Command {
    let mut c = bin();
    c.arg("add").arg(file).arg("--store").arg(store);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_killed_at_random_points_leaves_a_consistent_store() {
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let data = common::data(48 * MIB);
    let file = d.path().join("file");
    std::fs::write(&file, &data).unwrap();
    let batches = batches_of(&data).await;
    assert!(batches.len() > 4, "the file spans several batches");
    // How long a whole add takes, to kill within it.
    let started = Instant::now();
    let out = add_command(&file, &d.path().join("timing"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let whole = started.elapsed();
    let mut rng = Rng(seed());
    let mut partial = 0;
    for round in 0..12 {
        // A fresh store each round, so that each kill lands in a different place.
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut child = add_command(&file, &store_dir).spawn().unwrap();
        let at = Duration::from_micros(rng.below(whole.as_micros() as u64));
        // The kill time is the test's input, not a wait for something to happen.
        tokio::time::sleep(at).await;
        let _ = child.kill();
        let status = child.wait().unwrap();
        let held = check_store(&store_dir, &batches).await;
        let all: usize = batches.iter().map(Vec::len).sum();
        if !status.success() && held.len() < all {
            partial += 1;
        }
        eprintln!(
            "round {round}: killed after {at:.2?} ({}), {} of {all} blocks held",
            if status.success() {
                "had finished"
            } else {
                "mid-add"
            },
            held.len()
        );
    }
    eprintln!("{partial} of 12 rounds were killed with the file partly added");
    // A last, uninterrupted add completes the file on top of whatever the kills left.
    let out = add_command(&file, &store_dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = check_store(&store_dir, &batches).await;
    assert_eq!(held.len(), batches.iter().map(Vec::len).sum::<usize>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_killed_at_random_points_leaves_a_consistent_store() {
    let (relay, root, data) = gateway_holding(16 * MIB).await;
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let cat = |store: &Path| {
        let mut c = bin();
        c.arg("cat")
            .arg(root.to_string())
            .arg("--store")
            .arg(store)
            .arg("--gateway")
            .arg(format!("http://{}", relay.http))
            .arg("-o")
            .arg(d.path().join("out"));
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let started = Instant::now();
    let out = cat(&d.path().join("timing")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = started.elapsed();
    let mut rng = Rng(seed());
    for round in 0..8 {
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut child = cat(&store_dir).spawn().unwrap();
        let at = Duration::from_micros(rng.below(whole.as_micros() as u64));
        tokio::time::sleep(at).await;
        let _ = child.kill();
        let _ = child.wait();
        let held = check_store(&store_dir, &[]).await;
        eprintln!(
            "round {round}: killed after {at:.2?}, {} blocks held",
            held.len()
        );
    }
    // Resumed to the end (from what the last kill left), the output is the file.
    assert!(cat(&store_dir).status().unwrap().success());
    assert!(std::fs::read(d.path().join("out")).unwrap() == data);
    check_store(&store_dir, &[]).await;
    relay.shutdown().await;
}

/// An in-process relay whose HTTP gateway serves a `len`-byte file.
async fn gateway_holding(len: usize) -> (cairn_relay::relay::Running, Cid, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = Disk::open(&dir).await.unwrap();
    let data = common::data(len);
    let root = common::import(&store, &data).await;
    let relay = common::relay_with(cairn_relay::relay::Config {
        store: Some(store),
        ..cairn_relay::relay::Config::loopback()
    })
    .await;
    (relay, root, data)
}

/// A small tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    /// Mounts one of `size`, or says why it cannot (not root, no mount rights).
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_leaves_the_store_consistent() {
    let fs = match SmallFs::mount("6m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED a_full_disk_is_a_clear_error_and_leaves_the_store_consistent: \
                 it needs a small file system to fill, and mounting a 6 MiB tmpfs failed ({why}). \
                 Run the tests as root (or with CAP_SYS_ADMIN) to run it. ***\n"
            );
            return;
        }
    };
    let d = tempfile::tempdir().unwrap();
    let store_dir = fs.0.join("store");
    // A small file that fits, then one that does not.
    let small = common::data(MIB);
    std::fs::write(d.path().join("small"), &small).unwrap();
    let out = add_command(&d.path().join("small"), &store_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let small_root = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let before = check_store(&store_dir, &[]).await;

    // Other bytes than the small file's (common::data's bytes are the same for any length).
    let big: Vec<u8> = common::data(16 * MIB).iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(d.path().join("big"), &big).unwrap();
    let out = add_command(&d.path().join("big"), &store_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit 5, the store is not writable: {err}"
    );
    assert!(
        err.contains("No space left") || err.contains("full"),
        "the error says the disk is full: {err}"
    );
    let after = check_store(&store_dir, &batches_of(&big).await).await;
    assert_eq!(
        after, before,
        "the failed add left none of its blocks behind"
    );

    // A fetch into the full store: the file still comes out whole, verified; the store
    // says it could not keep the blocks, and holds only whole ones.
    let (relay, root, data) = gateway_holding(16 * MIB).await;
    let out = bin()
        .arg("cat")
        .arg(root.to_string())
        .arg("--store")
        .arg(&store_dir)
        .arg("--gateway")
        .arg(format!("http://{}", relay.http))
        .arg("-o")
        .arg(d.path().join("out"))
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(std::fs::read(d.path().join("out")).unwrap() == data);
    assert!(
        err.contains("cannot be kept in the local store"),
        "the full store is reported: {err}"
    );
    let held = check_store(&store_dir, &[]).await;
    assert!(held.is_superset(&before), "what was there stays");
    // The small file is still whole.
    let out = bin()
        .arg("cat")
        .arg(&small_root)
        .arg("--store")
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == small);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_is_never_served_and_is_fetched_again() {
    let (relay, root, data) = gateway_holding(2 * MIB).await;
    let d = tempfile::tempdir().unwrap();
    let store_dir = d.path().join("store");
    let store = Disk::open(&store_dir).await.unwrap();
    assert_eq!(common::import(&store, &data).await, root);
    // Flip bytes of one leaf on disk.
    let root_block = store.get(&root).await.unwrap().unwrap();
    let leaf = cairn_core::unixfs::pb::Node::decode(root_block.data())
        .unwrap()
        .links[3]
        .cid;
    let path = store.block_path(&leaf);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    drop(store);

    // Local only: the bad copy is refused, never returned.
    let out = bin()
        .arg("cat")
        .arg(root.to_string())
        .arg("--store")
        .arg(&store_dir)
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a file with a corrupt block is not output"
    );
    assert!(err.contains("corrupt"), "the corruption is reported: {err}");
    assert!(
        out.stdout.len() < data.len(),
        "the output stops before the bad block"
    );
    assert!(
        out.stdout[..] == data[..out.stdout.len()],
        "what came out is right"
    );

    // Corrupt again, then with a gateway: fetched again, verified, and the store repaired.
    std::fs::write(&path, &bytes).unwrap();
    let out = bin()
        .arg("cat")
        .arg(root.to_string())
        .arg("--store")
        .arg(&store_dir)
        .arg("--gateway")
        .arg(format!("http://{}", relay.http))
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout == data, "the whole file, right");
    assert!(err.contains("corrupt"), "the corruption is reported: {err}");
    let store = Disk::open(&store_dir).await.unwrap();
    assert_eq!(
        store.get(&leaf).await.unwrap().map(|b| b.cid().to_owned()),
        Some(leaf),
        "the store holds a good copy again"
    );
    relay.shutdown().await;
}

/// Rounds of concurrent adds of files that share blocks, through the disk store, one of
/// them failing at a random point, beside an eviction of everything unpinned: every add
/// that completed has its whole DAG afterwards, and a failed add leaves nothing only it
/// needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_with_failures_lose_no_completed_file() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(Disk::open(d.path()).await.unwrap());
    let mut rng = Rng(seed());
    let shared = common::data(3 * MIB);
    let (mut completed, mut failed, mut evicted) = (0, 0, 0);
    for round in 0..100u64 {
        let outcome =
            cairn_core::store::overlap::round(&*store, &shared, &mut || rng.below(u64::MAX)).await;
        outcome
            .check(&*store)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        completed += outcome.completed.len();
        failed += outcome.failed.len();
        evicted += outcome.evicted;
    }
    eprintln!(
        "100 rounds: {completed} adds completed whole, {failed} failed cleanly, {evicted} blocks evicted"
    );
    check_store(d.path(), &[]).await;
}
