//! The on-disk block store.
//!
//! Layout under the store directory:
//! ```text
//! blocks/<xy>/<cid>   one file per block, named by its base32 CIDv1; <xy> = the CID's last
//!                     two characters, so no directory grows past a few thousand entries
//! tmp/                writes land here first and are renamed into place, so a crash never
//!                     leaves a partial block under blocks/
//! ```
//! An index of CIDs and sizes is read at open (for `has`, `list` and `stat` without disk
//! access). Reads re-verify the bytes: a block corrupted on disk is reported and removed,
//! never returned.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
}

#[derive(Debug, Default)]
struct Index {
    sizes: BTreeMap<Vec<u8>, u64>,
    bytes: u64,
}

fn backend(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        op,
        reason: format!("{}: {e}", path.display()),
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
                reason: e.to_string(),
            })?
    }

    fn open_blocking(root: PathBuf) -> Result<Self> {
        let blocks = root.join("blocks");
        let tmp = root.join("tmp");
        for d in [&root, &blocks, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| Error::Backend {
                op: "open",
                reason: format!(
                    "cannot create store directory {}: {e}; choose a writable directory with --store",
                    d.display()
                ),
            })?;
        }
        // Prove we can write before anyone relies on it.
        let probe = tmp.join(".write-test");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| Error::Backend {
                op: "open",
                reason: format!(
                    "store directory {} is not writable: {e}; choose a writable directory with --store",
                    root.display()
                ),
            })?;
        // Leftovers of interrupted writes.
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
            }),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }
}

impl Inner {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path_of(&self, cid: &Cid) -> PathBuf {
        let name = cid::to_base32(cid);
        let shard = &name[name.len().saturating_sub(2)..];
        self.root.join("blocks").join(shard).join(name)
    }

    fn get(&self, cid: &Cid) -> Result<Option<Block>> {
        let path = self.path_of(cid);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend("get", &path, e)),
        };
        match Block::new(*cid, data) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                // Never serve it again; the next put of the right bytes repairs it.
                let _ = self.delete(cid);
                Err(Error::Corrupt {
                    cid: *cid,
                    reason: format!("{e} (file {} removed)", path.display()),
                })
            }
        }
    }

    fn put(&self, block: &Block) -> Result<bool> {
        let key = block.cid().to_bytes();
        if self.index().sizes.contains_key(&key) {
            return Ok(false);
        }
        let path = self.path_of(block.cid());
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(block.data())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(backend("put", &path, e));
        }
        let mut ix = self.index();
        if ix.sizes.insert(key, block.len() as u64).is_none() {
            ix.bytes += block.len() as u64;
            Ok(true)
        } else {
            Ok(false)
        }
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
            reason: e.to_string(),
        })?
}

impl BlockStore for Disk {
    fn get(&self, cid: &Cid) -> impl Future<Output = Result<Option<Block>>> + Send {
        let (inner, cid) = (self.inner.clone(), *cid);
        blocking("get", move || inner.get(&cid))
    }

    fn put(&self, block: Block) -> impl Future<Output = Result<bool>> + Send {
        let inner = self.inner.clone();
        blocking("put", move || inner.put(&block))
    }

    /// Writes each block atomically; on an error, blocks written before it stay.
    fn put_many(&self, blocks: Vec<Block>) -> impl Future<Output = Result<usize>> + Send {
        let inner = self.inner.clone();
        blocking("put_many", move || {
            let mut new = 0;
            for b in &blocks {
                new += usize::from(inner.put(b)?);
            }
            Ok(new)
        })
    }

    fn has(&self, cid: &Cid) -> impl Future<Output = Result<bool>> + Send {
        std::future::ready(Ok(self.inner.index().sizes.contains_key(&cid.to_bytes())))
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
