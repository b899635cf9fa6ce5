//! Trees too large to hold in memory (issue 16): 100,000 small files added with the heap's
//! peak measured, and 1,000,000 entries in one directory built, listed and resolved.
//!
//! The heap is measured by a counting global allocator, so this file is its own test binary
//! and its tests take turns (`ONE_AT_A_TIME`): the count is the whole process's.
#![allow(unsafe_code)] // the counting allocator only: it forwards every call to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use cairn_core::source::{ContentSource, Context, Local, SourceError, SourceKind};
use cairn_core::store::{BlockStore, Memory};
use cairn_core::unixfs::dir::{self, Entry, TreeBuilder};
use cairn_core::unixfs::{Importer, Profile};
use cairn_core::{Block, Cid, HashAlg};

/// Bytes allocated and not yet freed, and the most there were since the last reset.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Counting;

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `f`, returning what it returned and the heap's peak above where it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

const MIB: usize = 1024 * 1024;

#[test]
fn adding_100_000_small_files_holds_their_names_not_their_bytes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const FILES: usize = 100_000;
    const SIZE: usize = 1024;
    let ((root, entries, blocks), peak) = peak_during(|| {
        let mut tree = TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
        let mut content = vec![0u8; SIZE];
        let mut blocks = 0usize;
        for i in 0..FILES {
            // Every file different: nothing deduplicates.
            content[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let mut out = Vec::new();
            let mut imp = Importer::new(Profile::DEFAULT, HashAlg::Sha2_256);
            imp.push(&content, &mut out).unwrap();
            let file = imp.finish(&mut out).unwrap();
            // The blocks go to a store; a store that keeps nothing here, so that what is
            // measured is the adding alone.
            blocks += out.len();
            drop(out);
            let entry = Entry {
                cid: file.root,
                tsize: file.dag_size,
            };
            tree.add(&format!("dir{:03}/file-{i:06}.bin", i % 100), entry)
                .unwrap();
        }
        let entries = tree.entries();
        let mut out = Vec::new();
        let root = tree.finish(&mut out).unwrap();
        blocks += out.len();
        (root, entries, blocks)
    });
    assert_eq!(entries, FILES as u64, "every file");
    assert_eq!(
        blocks,
        FILES + 101,
        "a block per file, one per directory, the root"
    );
    assert!(root.tsize > (FILES * SIZE) as u64);
    // 100 MiB of content; the builder holds each entry's name, CID and size.
    let content = FILES * SIZE;
    eprintln!(
        "100,000 files of 1 KiB: heap peak {:.1} MiB ({} bytes an entry) for {} MiB of content",
        peak as f64 / MIB as f64,
        peak / FILES,
        content / MIB
    );
    assert!(
        peak < 48 * MIB,
        "the heap's peak was {} MiB: the tree must hold names, not content",
        peak / MIB
    );
}

/// A store as a source that counts the blocks asked for.
#[derive(Debug)]
struct Counted(Local<Arc<Memory>>, AtomicUsize);

impl ContentSource for Counted {
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }
    async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        self.1.fetch_add(1, Relaxed);
        self.0.retrieve(cid, ctx).await
    }
}

#[test]
fn a_directory_of_1_000_000_entries_is_sharded_listed_and_resolved_by_its_buckets() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(million_entries());
}

async fn million_entries() {
    const N: u64 = 1_000_000;
    let mut one = Vec::new();
    let mut imp = Importer::new(Profile::DEFAULT, HashAlg::Sha2_256);
    imp.push(b"the same small file", &mut one).unwrap();
    let file = imp.finish(&mut one).unwrap();
    let entry = Entry {
        cid: file.root,
        tsize: file.dag_size,
    };
    let ((root, blocks), peak) = peak_during(|| {
        let mut tree = TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
        for i in 0..N {
            tree.add(&format!("entry-{i:07}"), entry).unwrap();
        }
        let mut out = Vec::new();
        let root = tree.finish(&mut out).unwrap();
        (root, out)
    });
    eprintln!(
        "1,000,000 entries in one directory: {} shard blocks, heap peak {} MiB while building",
        blocks.len(),
        peak / MIB
    );
    assert!(
        blocks.len() > 256,
        "a HAMT of many shards: {}",
        blocks.len()
    );
    assert!(
        blocks.iter().all(|b| b.len() < 1024 * 1024),
        "every shard fits a block"
    );
    assert!(peak < 768 * MIB, "building took {} MiB", peak / MIB);

    let store = Arc::new(Memory::new());
    store.put_many(one).await.unwrap();
    store.put_many(blocks).await.unwrap();
    let src = Counted(Local(store), AtomicUsize::new(0));
    let ctx = Context::new();

    // One name: only the buckets on its way (a shard per level), never the whole listing.
    let found = dir::resolve(&src, &ctx, root.cid, "entry-0765432")
        .await
        .unwrap();
    assert_eq!(found, file.root);
    let read = src.1.swap(0, Relaxed);
    assert!(
        (2..=5).contains(&read),
        "resolving one name read {read} blocks"
    );
    let missing = dir::resolve(&src, &ctx, root.cid, "entry-1000000")
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("entry-1000000"), "{missing}");

    // The listing: every entry once, streamed.
    let (mut count, mut sum) = (0u64, 0u64);
    dir::ls(&src, &ctx, root.cid, |e| {
        count += 1;
        sum += e.name["entry-".len()..].parse::<u64>().unwrap();
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(count, N);
    assert_eq!(sum, N * (N - 1) / 2, "each name exactly once");
}
