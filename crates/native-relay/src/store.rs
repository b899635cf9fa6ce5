//! The on-disk block store.
//!
//! Layout under the store directory:
//! ```text
//! blocks/<xy>/<cid>   one file per block, named by its CID (base32 for CIDv1, `Qm…` for
//!                     CIDv0); <xy> = the name's last two characters, so no directory grows
//!                     past a few thousand entries
//! tmp/                writes land here first and are renamed into place, so a crash never
//!                     leaves a partial block under blocks/
//! journal/            one file per batch being moved into place (see below)
//! pins/<cid>          one empty file per pinned root (`cairn-relay add` pins what it adds;
//!                     a relay serving the store provides its pinned roots in the DHT)
//! lock                held (flock) by `cairn-relay add` while it imports, so that two adds
//!                     on one store take turns (each one's clean-up is then its own)
//! ```
//! An index of CIDs and sizes is read at open (for `has`, `list` and `stat` without disk
//! access). Reads re-verify the bytes: a block corrupted on disk is reported, removed and
//! never returned (a chain then fetches it again from elsewhere).
//!
//! **A batch lands whole or not at all.** `put_many` writes each new block to `tmp/` and
//! syncs it, then commits the batch by writing (and syncing) `journal/<id>`, which names
//! every temporary file and its block, then renames each file into place, syncs the
//! directories and removes the journal. Opening the store first finishes every journal it
//! finds (the batch was committed: its files are moved into place) and then empties `tmp/`
//! (those batches were not: none of their blocks appears). A process killed at any point
//! leaves whole batches.
//!
//! **Single puts are committed in groups.** A fetch writes back one block at a time, many at
//! once; each `put` waits for a batch that holds its block to be durable, and the puts that
//! arrive while one batch is being synced go into the next one (at most [`GROUP_BLOCKS`]).
//! The syncs are then paid once per group, not once per block (which made a 256 MiB fetch
//! into a disk store spend most of its time in `syncfs`). A group needs no journal: its
//! puts are independent, so each block is staged and synced, then renamed into place and
//! the names synced; a crash in between leaves some of its blocks, each one whole.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::channel::oneshot;

use cairn_core::Reason;
use cairn_core::block::Block;
use cairn_core::cid::{self, Cid};
use cairn_core::store::{BlockStore, Error, Result, Stat};

/// A block store in a directory.
#[derive(Debug, Clone)]
pub struct Disk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    group: Mutex<Group>,
    /// Batches committed since the store was opened.
    commits: AtomicU64,
}

/// Most blocks committed as one group of single puts.
pub const GROUP_BLOCKS: usize = 256;

/// Single puts waiting to be committed, and whether a writer is committing them.
#[derive(Debug, Default)]
struct Group {
    waiting: Vec<(Block, oneshot::Sender<Result<bool>>)>,
    writing: bool,
}

#[derive(Debug, Default)]
struct Index {
    sizes: BTreeMap<Vec<u8>, u64>,
    bytes: u64,
}

fn backend(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    let source = Reason::msg(format!("{}: {e}", path.display()));
    if e.kind() == std::io::ErrorKind::StorageFull {
        Error::OutOfSpace { op, source }
    } else {
        Error::Backend { op, source }
    }
}

impl Disk {
    /// Opens (creating if needed) the store in `dir`. Fails clearly if the directory cannot
    /// be created or written.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let root = dir.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(root))
            .await
            .map_err(|e| Error::Backend {
                op: "open",
                source: Reason::new(e),
            })?
    }

    fn open_blocking(root: PathBuf) -> Result<Self> {
        let blocks = root.join("blocks");
        let tmp = root.join("tmp");
        let journal = root.join("journal");
        for d in [&root, &blocks, &tmp, &journal] {
            std::fs::create_dir_all(d).map_err(|e| Error::Backend {
                op: "open",
                source: Reason::msg(format!(
                    "cannot create store directory {}: {e}; choose a writable directory with --store",
                    d.display()
                )),
            })?;
        }
        // Prove we can write before anyone relies on it.
        let probe = tmp.join(".write-test");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| Error::Backend {
                op: "open",
                source: Reason::msg(format!(
                    "store directory {} is not writable: {e}; choose a writable directory with --store",
                    root.display()
                )),
            })?;
        // Batches that were committed but not all moved into place: finish them.
        for entry in std::fs::read_dir(&journal)
            .map_err(|e| backend("open", &journal, e))?
            .flatten()
        {
            finish_journal(&root, &entry.path(), Sync::EachDir)
                .map_err(|e| backend("open", &entry.path(), e))?;
        }
        // Leftovers of interrupted writes (batches never committed).
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut index = Index::default();
        for shard in std::fs::read_dir(&blocks).map_err(|e| backend("open", &blocks, e))? {
            let shard = shard.map_err(|e| backend("open", &blocks, e))?;
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(c) = name.to_str().and_then(|n| cid::parse(n).ok()) else {
                    continue; // not ours; ignore
                };
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                index.bytes += size;
                index.sizes.insert(c.to_bytes(), size);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                index: Mutex::new(index),
                tmp_seq: AtomicU64::new(0),
                group: Mutex::default(),
                commits: AtomicU64::new(0),
            }),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Takes the store's import lock (`lock` in its directory), waiting while another
    /// process holds it; held until the guard is dropped. `cairn-relay add` holds it, so
    /// that two adds to one store never clean up each other's blocks.
    pub async fn lock_for_import(&self) -> Result<ImportLock> {
        let path = self.inner.root.join("lock");
        blocking("lock", move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| backend("lock", &path, e))?;
            if file.try_lock().is_err() {
                tracing::info!(
                    "another add is writing to this store ({}); waiting for it",
                    path.display()
                );
                file.lock().map_err(|e| backend("lock", &path, e))?;
            }
            Ok(ImportLock { _file: file })
        })
        .await
    }

    /// Pins `root`: `pins/<root>` is made (durably). Idempotent.
    pub async fn pin(&self, root: &Cid) -> Result<()> {
        let dir = self.inner.root.join("pins");
        let path = dir.join(root.to_string());
        blocking("pin", move || {
            std::fs::create_dir_all(&dir).map_err(|e| backend("pin", &dir, e))?;
            std::fs::File::create(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| backend("pin", &path, e))?;
            sync_dir(&dir);
            Ok(())
        })
        .await
    }

    /// The pinned roots, in no particular order. A file in `pins/` whose name is not a CID
    /// is skipped with a warning.
    pub async fn pins(&self) -> Result<Vec<Cid>> {
        let dir = self.inner.root.join("pins");
        blocking("pins", move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(backend("pins", &dir, e)),
            };
            let mut pins = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| backend("pins", &dir, e))?;
                let name = entry.file_name();
                match name.to_str().map(cid::parse) {
                    Some(Ok(c)) => pins.push(c),
                    _ => tracing::warn!(
                        file = %entry.path().display(),
                        "not a CID: ignored in the store's pins"
                    ),
                }
            }
            Ok(pins)
        })
        .await
    }

    /// The size of `cid`'s block, if held (from the index, else the file system), without
    /// reading it.
    pub async fn size_of(&self, cid: &Cid) -> Option<u64> {
        if let Some(n) = self.inner.index().sizes.get(&cid.to_bytes()) {
            return Some(*n);
        }
        let (inner, cid) = (self.inner.clone(), *cid);
        blocking("size", move || {
            Ok(inner
                .has(&cid)
                .then(|| inner.index().sizes.get(&cid.to_bytes()).copied())
                .flatten())
        })
        .await
        .ok()
        .flatten()
    }

    /// The transfer queue's journal (`transfers` in the store's directory, written whole to a
    /// temporary file and renamed, durably).
    pub fn transfer_journal(&self) -> RecordFile {
        RecordFile(self.inner.root.join("transfers"))
    }

    /// The record of what this store keeps for other peers (`pinned-for`), as the
    /// collaborative pinning server writes it.
    pub fn pin_record(&self) -> RecordFile {
        RecordFile(self.inner.root.join("pinned-for"))
    }

    /// Removes the pin on `root` (its blocks stay until deleted). Idempotent.
    pub async fn unpin(&self, root: &Cid) -> Result<()> {
        let dir = self.inner.root.join("pins");
        let path = dir.join(root.to_string());
        blocking("unpin", move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(backend("unpin", &path, e)),
            }
            sync_dir(&dir);
            Ok(())
        })
        .await
    }

    /// The file `cid`'s block is kept in (whether or not it is there).
    pub fn block_path(&self, cid: &Cid) -> PathBuf {
        self.inner.path_of(cid)
    }
}

/// The store's import lock; released on drop (and by the system if the process dies).
#[derive(Debug)]
pub struct ImportLock {
    _file: std::fs::File,
}

/// How [`finish_journal`] makes its renames durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Each directory it renamed into (opening a store: few journals, any platform).
    EachDir,
    /// Once for the whole file system where the system can, else each directory.
    Once,
}

/// Makes `files` (written into `dir`) durable: one `syncfs` of `dir`'s file system on Linux,
/// a `sync_data` per file elsewhere.
fn sync_files(
    dir: &Path,
    files: &[(PathBuf, std::fs::File)],
) -> std::result::Result<(), (PathBuf, std::io::Error)> {
    #[cfg(target_os = "linux")]
    {
        let _ = files;
        sync_fs(dir).map_err(|e| (dir.to_owned(), e))
    }
    #[cfg(not(target_os = "linux"))]
    {
        for (path, f) in files {
            f.sync_data().map_err(|e| (path.clone(), e))?;
        }
        // Their names too: a journal replayed after a crash needs the files there.
        sync_dir(dir);
        Ok(())
    }
}

/// `syncfs(2)` on the file system holding `dir`: every dirty page and directory entry on it
/// reaches the medium.
#[cfg(target_os = "linux")]
fn sync_fs(dir: &Path) -> std::io::Result<()> {
    let d = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(std::io::Error::from)
}

/// Moves a committed batch's files into place and removes its journal. A line is
/// `<temporary file name> <block file path, relative to the store>`; a temporary file that
/// is gone was moved already.
fn finish_journal(root: &Path, journal: &Path, sync: Sync) -> std::io::Result<()> {
    let text = std::fs::read_to_string(journal)?;
    let moves = text.lines().filter_map(|line| {
        let (tmp, dest) = line.split_once(' ')?;
        // Only names this store writes: no separators in the temporary name, and the
        // destination under blocks/.
        if tmp.contains('/') || !dest.starts_with("blocks/") || dest.contains("..") {
            return None;
        }
        Some((root.join("tmp").join(tmp), root.join(dest)))
    });
    place(root, moves, sync)?;
    // A journal left by a crash after this point is finished again at open: its renames
    // are done, so it only goes away.
    std::fs::remove_file(journal)?;
    Ok(())
}

/// Renames each staged file (whose bytes are durable already) into place, skipping those
/// moved before, then makes the new names durable.
fn place(
    root: &Path,
    moves: impl Iterator<Item = (PathBuf, PathBuf)>,
    sync: Sync,
) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for (from, to) in moves {
        if from.exists() {
            if let Some(parent) = to.parent()
                && dirs.insert(parent.to_owned())
            {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&from, &to)?;
        }
    }
    #[cfg(target_os = "linux")]
    let once = sync == Sync::Once && sync_fs(root).is_ok();
    #[cfg(not(target_os = "linux"))]
    let once = false;
    if !once {
        for d in &dirs {
            sync_dir(d);
        }
    }
    Ok(())
}

/// A text record kept beside a [`Disk`] store (the transfer queue's, the pins kept for
/// others), rewritten whole: a temporary file, synced, then renamed.
#[derive(Debug, Clone)]
pub struct RecordFile(PathBuf);

impl cairn_core::transfer::Journal for RecordFile {
    fn load(&self) -> cairn_core::BoxFuture<'_, Result<Option<String>>> {
        let path = self.0.clone();
        Box::pin(blocking(
            "load record",
            move || match std::fs::read_to_string(&path) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(backend("load record", &path, e)),
            },
        ))
    }

    fn save(&self, record: String) -> cairn_core::BoxFuture<'_, Result<()>> {
        let path = self.0.clone();
        Box::pin(blocking("save record", move || {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, record.as_bytes())
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| backend("save record", &path, e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            Ok(())
        }))
    }
}

impl cairn_p2p::pinning::Pins for Disk {
    fn pin(&self, root: Cid) -> cairn_core::BoxFuture<'_, Result<()>> {
        Box::pin(async move { Disk::pin(self, &root).await })
    }

    fn unpin(&self, root: Cid) -> cairn_core::BoxFuture<'_, Result<()>> {
        Box::pin(async move { Disk::unpin(self, &root).await })
    }

    fn pinned(&self, root: Cid) -> cairn_core::BoxFuture<'_, bool> {
        Box::pin(async move { self.pins().await.is_ok_and(|p| p.contains(&root)) })
    }
}

/// Makes a directory's entries (renames, removals) durable; best effort (not every
/// platform or file system can open a directory for it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Inner {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits waiting single puts, a group at a time, until none waits (on a blocking
    /// thread). Each put is answered once its group is durable, or failed with its group.
    fn write_groups(&self) {
        /// Should a commit panic, the puts still waiting are failed (their senders dropped)
        /// and the next put starts a writer again.
        struct Stop<'a>(&'a Inner);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut g = self.0.group();
                    g.writing = false;
                    g.waiting.clear();
                }
            }
        }
        let _stop = Stop(self);
        loop {
            let batch: Vec<_> = {
                let mut g = self.group();
                // A put whose caller gave up is not written.
                g.waiting.retain(|(_, tx)| !tx.is_canceled());
                if g.waiting.is_empty() {
                    g.writing = false;
                    return;
                }
                let n = g.waiting.len().min(GROUP_BLOCKS);
                g.waiting.drain(..n).collect()
            };
            let blocks: Vec<Block> = batch.iter().map(|(b, _)| b.clone()).collect();
            match self.put_batch(&blocks, false) {
                Ok(new) => {
                    for ((_, tx), new) in batch.into_iter().zip(new) {
                        let _ = tx.send(Ok(new));
                    }
                }
                Err(e) => {
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn path_of(&self, cid: &Cid) -> PathBuf {
        // The CID's own text (base32 for CIDv1, `Qm…` for CIDv0): opening the store parses
        // names back into the very CIDs, so index keys match across opens.
        let name = cid.to_string();
        let shard = &name[name.len().saturating_sub(2)..];
        self.root.join("blocks").join(shard).join(name)
    }

    /// Notes a block file another process put in place (a `cairn-relay add` beside a
    /// running `serve`), found on a read the index could not answer.
    fn adopt(&self, cid: &Cid, size: u64) {
        let mut ix = self.index();
        if ix.sizes.insert(cid.to_bytes(), size).is_none() {
            ix.bytes += size;
        }
    }

    fn has(&self, cid: &Cid) -> bool {
        if self.index().sizes.contains_key(&cid.to_bytes()) {
            return true;
        }
        match std::fs::metadata(self.path_of(cid)) {
            Ok(m) if m.is_file() => {
                self.adopt(cid, m.len());
                true
            }
            _ => false,
        }
    }

    fn get(&self, cid: &Cid) -> Result<Option<Block>> {
        let path = self.path_of(cid);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend("get", &path, e)),
        };
        let size = data.len() as u64;
        match Block::new(*cid, data) {
            Ok(b) => {
                self.adopt(cid, size);
                Ok(Some(b))
            }
            Err(e) => {
                // Never serve it again; the next put of the right bytes repairs it.
                tracing::warn!(%cid, file = %path.display(), error = %e, "a stored block is corrupt; removing it");
                let _ = self.delete(cid);
                Err(Error::Corrupt {
                    cid: *cid,
                    source: Reason::msg(format!("{e} (file {} removed)", path.display())),
                })
            }
        }
    }

    fn tmp_name(&self) -> String {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{seq}", std::process::id())
    }

    /// Writes the new blocks of `blocks` as one batch (see the module's docs); says of each
    /// block whether this batch added it. On an error nothing of the batch is in place.
    ///
    /// `whole`: the batch lands whole or not at all, through a journal (`put_many`). A group
    /// of single puts needs no journal: each block is staged and synced, then renamed into
    /// place, and a crash in between leaves some of them, each one whole.
    fn put_batch(&self, blocks: &[Block], whole: bool) -> Result<Vec<bool>> {
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<&Block> = {
            let ix = self.index();
            blocks
                .iter()
                .filter(|b| !ix.sizes.contains_key(&b.cid().to_bytes()) && seen.insert(*b.cid()))
                .collect()
        };
        let mut added = vec![false; blocks.len()];
        if fresh.is_empty() {
            return Ok(added);
        }
        let tmp_dir = self.root.join("tmp");
        let mut written: Vec<(String, PathBuf)> = Vec::with_capacity(fresh.len());
        let outcome = (|| -> std::result::Result<(), (PathBuf, std::io::Error)> {
            let mut files = Vec::with_capacity(fresh.len());
            for b in &fresh {
                let name = self.tmp_name();
                let path = tmp_dir.join(&name);
                written.push((name, self.path_of(b.cid())));
                let mut f = std::fs::File::create(&path).map_err(|e| (path.clone(), e))?;
                f.write_all(b.data()).map_err(|e| (path.clone(), e))?;
                files.push((path, f));
            }
            // The blocks' bytes are on the medium before the journal names them: once per
            // batch where the system can (a sync per block cost 40 % of a fetch).
            sync_files(&tmp_dir, &files)?;
            if !whole {
                let moves = written
                    .iter()
                    .map(|(name, dest)| (tmp_dir.join(name), dest.clone()));
                return place(&self.root, moves, Sync::Once).map_err(|e| (tmp_dir.clone(), e));
            }
            // Commit: the journal names every file; once it is in place the batch is
            // finished even if this process dies now.
            let mut text = String::new();
            for (name, dest) in &written {
                let rel = dest.strip_prefix(&self.root).unwrap_or(dest);
                text.push_str(&format!("{name} {}\n", rel.display()));
            }
            let staged = tmp_dir.join(format!("{}.journal", self.tmp_name()));
            let journal = self.root.join("journal").join(self.tmp_name());
            let mut f = std::fs::File::create(&staged).map_err(|e| (staged.clone(), e))?;
            f.write_all(text.as_bytes())
                .map_err(|e| (staged.clone(), e))?;
            f.sync_data().map_err(|e| (staged.clone(), e))?;
            std::fs::rename(&staged, &journal).map_err(|e| (journal.clone(), e))?;
            sync_dir(&self.root.join("journal"));
            finish_journal(&self.root, &journal, Sync::Once).map_err(|e| (journal.clone(), e))
        })();
        if let Err((path, e)) = outcome {
            for (name, _) in &written {
                let _ = std::fs::remove_file(tmp_dir.join(name));
            }
            return Err(backend("put", &path, e));
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut ix = self.index();
        let mut new = std::collections::HashSet::new();
        for b in fresh {
            if ix
                .sizes
                .insert(b.cid().to_bytes(), b.len() as u64)
                .is_none()
            {
                ix.bytes += b.len() as u64;
                new.insert(*b.cid());
            }
        }
        for (i, b) in blocks.iter().enumerate() {
            // The first of duplicates within the batch is the one that added it.
            added[i] = new.remove(b.cid());
        }
        Ok(added)
    }

    fn delete(&self, cid: &Cid) -> Result<bool> {
        let path = self.path_of(cid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(backend("delete", &path, e)),
        }
        let mut ix = self.index();
        match ix.sizes.remove(&cid.to_bytes()) {
            Some(size) => {
                ix.bytes -= size;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backend {
            op,
            source: Reason::new(e),
        })?
}

impl BlockStore for Disk {
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + Send {
        let (inner, cid) = (self.inner.clone(), *cid);
        blocking("get", move || inner.get(&cid))
    }

    /// Durable when it returns, committed in a group with the puts made meanwhile (see the
    /// module's docs).
    fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + Send {
        let inner = self.inner.clone();
        async move {
            if inner.index().sizes.contains_key(&block.cid().to_bytes()) {
                return Ok(false);
            }
            let (tx, rx) = oneshot::channel();
            let lead = {
                let mut g = inner.group();
                g.waiting.push((block, tx));
                !std::mem::replace(&mut g.writing, true)
            };
            if lead {
                let writer = inner.clone();
                tokio::task::spawn_blocking(move || writer.write_groups());
            }
            rx.await.unwrap_or_else(|_| {
                Err(Error::Backend {
                    op: "put",
                    source: Reason::msg("the store's writer stopped before the block was written"),
                })
            })
        }
    }

    /// Writes the blocks as one batch: all of them are in place, or (on an error, or a
    /// crash) none.
    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<usize>> + Send {
        let inner = self.inner.clone();
        blocking("put_many", move || {
            Ok(inner
                .put_batch(&blocks, true)?
                .into_iter()
                .filter(|a| *a)
                .count())
        })
    }

    /// From the index; a block the index lacks is looked for on disk (another process may
    /// have added it since the store was opened).
    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + Send {
        if self.inner.index().sizes.contains_key(&cid.to_bytes()) {
            return futures::future::Either::Left(std::future::ready(Ok(true)));
        }
        let (inner, cid) = (self.inner.clone(), *cid);
        futures::future::Either::Right(blocking("has", move || Ok(inner.has(&cid))))
    }

    fn delete(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + Send {
        let (inner, cid) = (self.inner.clone(), *cid);
        blocking("delete", move || inner.delete(&cid))
    }

    fn list(
        &self,
        after: Option<&Cid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Cid>>> + Send {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_bytes()));
        let ix = self.inner.index();
        let out = ix
            .sizes
            .range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|(k, _)| Cid::try_from(&k[..]).ok())
            .collect();
        std::future::ready(Ok(out))
    }

    fn size_hint(&self, cid: &Cid) -> Option<usize> {
        self.inner
            .index()
            .sizes
            .get(&cid.to_bytes())
            .map(|n| *n as usize)
    }

    fn stat(&self) -> impl Future<Output = Result<Stat>> + Send {
        let ix = self.inner.index();
        std::future::ready(Ok(Stat {
            blocks: ix.sizes.len() as u64,
            bytes: ix.bytes,
            quota: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::cid::{Codec, HashAlg};

    #[tokio::test]
    async fn disk_store_passes_the_suite() {
        let dirs = Arc::new(Mutex::new(Vec::new()));
        cairn_core::store::suite::run(|| {
            let dirs = dirs.clone();
            async move {
                let d = tempfile::tempdir().unwrap();
                let s = Disk::open(d.path()).await.unwrap();
                dirs.lock().unwrap().push(d);
                s
            }
        })
        .await;
    }

    #[tokio::test]
    async fn contents_persist_across_opens_and_corruption_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let b = Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![5u8; 1000]).unwrap();
        let c = Block::from_data(Codec::Raw, HashAlg::Blake3, vec![6u8; 10]).unwrap();
        {
            let s = Disk::open(d.path()).await.unwrap();
            s.put_many(vec![b.clone(), c.clone()]).await.unwrap();
        }
        let s = Disk::open(d.path()).await.unwrap();
        assert_eq!(s.stat().await.unwrap().blocks, 2);
        assert_eq!(s.get(b.cid()).await.unwrap(), Some(b.clone()));
        // Flip a byte on disk: the read is refused and the file removed.
        let path = s.inner.path_of(b.cid());
        std::fs::write(&path, vec![4u8; 1000]).unwrap();
        let err = s.get(b.cid()).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!s.has(b.cid()).await.unwrap());
        assert!(s.put(b.clone()).await.unwrap(), "a good put repairs it");
        assert_eq!(s.get(b.cid()).await.unwrap(), Some(b));
    }

    #[tokio::test]
    async fn a_cidv0_block_and_its_cidv1_twin_are_kept_apart_across_opens() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![9u8; 500];
        let v1 = Block::from_data(Codec::DagPb, HashAlg::Sha2_256, data.clone()).unwrap();
        let v0 = Block::new(
            Cid::new_v0(*v1.cid().hash()).unwrap(),
            bytes::Bytes::from(data),
        )
        .unwrap();
        {
            let s = Disk::open(d.path()).await.unwrap();
            s.put(v0.clone()).await.unwrap();
            assert!(s.has(v0.cid()).await.unwrap());
            assert!(!s.has(v1.cid()).await.unwrap(), "CIDs match exactly");
        }
        let s = Disk::open(d.path()).await.unwrap();
        assert!(
            s.has(v0.cid()).await.unwrap(),
            "found again after reopening"
        );
        assert_eq!(s.list(None, 10).await.unwrap(), vec![*v0.cid()]);
        assert_eq!(s.stat().await.unwrap().bytes, 500);
    }

    fn numbered(i: u32) -> Block {
        Block::from_data(Codec::Raw, HashAlg::Sha2_256, i.to_le_bytes().repeat(256)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn puts_made_together_are_committed_in_groups_and_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let blocks: Vec<Block> = (0..64).map(numbered).collect();
        {
            let s = Disk::open(d.path()).await.unwrap();
            let added = futures::future::join_all(blocks.iter().map(|b| s.put(b.clone()))).await;
            assert!(added.iter().all(|a| matches!(a, Ok(true))), "{added:?}");
            let commits = s.inner.commits.load(Ordering::Relaxed);
            assert!(commits < 64, "64 puts at once took {commits} commits");
            // Each put was durable when it returned: nothing is left waiting or staged.
            assert!(s.inner.group().waiting.is_empty());
            assert_eq!(
                std::fs::read_dir(d.path().join("journal")).unwrap().count()
                    + std::fs::read_dir(d.path().join("tmp")).unwrap().count(),
                0
            );
            // Put again: already there.
            assert!(!s.put(blocks[0].clone()).await.unwrap());
        }
        let s = Disk::open(d.path()).await.unwrap();
        assert_eq!(s.stat().await.unwrap().blocks, 64);
        for b in &blocks {
            assert_eq!(s.get(b.cid()).await.unwrap().as_ref(), Some(b));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_cannot_be_written_fails_each_of_its_puts_and_the_next_one_works() {
        let d = tempfile::tempdir().unwrap();
        let s = Disk::open(d.path()).await.unwrap();
        // No tmp/ to stage into: every write of the group fails.
        std::fs::remove_dir_all(d.path().join("tmp")).unwrap();
        let tried = futures::future::join_all((0..8).map(|i| s.put(numbered(i)))).await;
        for r in &tried {
            let e = r.as_ref().unwrap_err();
            assert!(matches!(e, Error::Backend { op: "put", .. }), "{e}");
        }
        assert_eq!(
            s.stat().await.unwrap().blocks,
            0,
            "nothing of a failed group is kept"
        );
        std::fs::create_dir(d.path().join("tmp")).unwrap();
        assert!(s.put(numbered(0)).await.unwrap(), "a writer starts again");
        assert_eq!(s.get(numbered(0).cid()).await.unwrap(), Some(numbered(0)));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_unwritable_directory_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let ro = d.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        // root ignores permissions; use a path under a regular file instead, which fails for all.
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Disk::open(file.join("store"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot create store directory"), "{err}");
        assert!(err.contains("--store"), "{err}");
    }
}
