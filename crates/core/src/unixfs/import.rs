use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt};

use super::Profile;
use super::dir::Metadata;
use super::pb::{Link, Node, UnixFs};
use crate::block::Block;
use crate::cid::{Cid, Codec, HashAlg};
use crate::store::{self, BlockStore};

/// Why an import failed. Nothing it wrote is left behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the input failed.
    #[error("reading the input failed after {read} bytes: {source}")]
    Read {
        /// Bytes read before the failure.
        read: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store refused a write.
    #[error("storing blocks failed: {0}")]
    Store(#[from] store::Error),
    /// A block could not be made (cannot happen with the built-in profiles).
    #[error(transparent)]
    Block(#[from] crate::block::Error),
    /// The platform's hasher failed (see [`LeafHasher`]).
    #[error("hashing the input failed: {0}")]
    Hash(crate::error::Reason),
}

/// Hashes an import's leaves, a batch at a time: the browser hands them to WebCrypto, which
/// hashes off the page's thread and several at once; [`Inline`] hashes here, one by one.
pub trait LeafHasher {
    /// The `alg` digest of each chunk, in order; `Ok(None)` to have them hashed inline (an
    /// algorithm or a context the platform's hasher lacks).
    fn digests(
        &self,
        alg: HashAlg,
        chunks: &[Bytes],
    ) -> impl Future<Output = Result<Option<Vec<[u8; 32]>>, crate::error::Reason>>;
}

/// Hashes leaves in the calling thread ([`import_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inline;

impl LeafHasher for Inline {
    #[allow(refining_impl_trait)]
    fn digests(
        &self,
        _: HashAlg,
        _: &[Bytes],
    ) -> std::future::Ready<Result<Option<Vec<[u8; 32]>>, crate::error::Reason>> {
        std::future::ready(Ok(None))
    }
}

#[derive(Debug, Clone)]
struct Child {
    cid: Cid,
    tsize: u64,
    filesize: u64,
}

/// The streaming UnixFS importer: push bytes, collect blocks (children before parents), and
/// finish to get the root. Holds at most one chunk plus one pending link list per tree level.
#[derive(Debug)]
pub struct Importer {
    profile: Profile,
    hash: HashAlg,
    buf: BytesMut,
    levels: Vec<(Vec<Child>, u64)>,
    bytes: u64,
    meta: Metadata,
    /// The first leaf's bytes while it is the only one: a one-block file with metadata
    /// becomes a DAG-PB file node holding them.
    first: Option<Bytes>,
}

impl Importer {
    /// A new importer.
    pub fn new(profile: Profile, hash: HashAlg) -> Self {
        Self {
            profile,
            hash,
            buf: BytesMut::with_capacity(profile.chunk_size),
            levels: Vec::new(),
            bytes: 0,
            meta: Metadata::default(),
            first: None,
        }
    }

    /// Gives the file a mode and a modification time, as Helia's importer writes them: in
    /// every file node of its tree (the mode only when it is not 0644), and a one-block file
    /// becomes a DAG-PB file node holding its bytes (a raw leaf has nowhere to keep them).
    pub fn metadata(mut self, meta: Metadata) -> Self {
        self.meta = meta;
        self
    }

    /// Bytes pushed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Feeds bytes; completed blocks are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Block>) -> Result<(), Error> {
        let mut chunks = Vec::new();
        self.chunk(data, &mut chunks);
        self.hash_and_add(chunks, out)
    }

    /// Hashes each chunk here and adds it as the next leaf.
    fn hash_and_add(&mut self, chunks: Vec<Bytes>, out: &mut Vec<Block>) -> Result<(), Error> {
        for chunk in chunks {
            self.add_leaf(Block::from_data(Codec::Raw, self.hash, chunk)?, out)?;
        }
        Ok(())
    }

    /// Feeds bytes, cut into the chunks that become leaves, unhashed: the caller hashes each
    /// (with [`LeafHasher`]) and hands it back, in order, to [`add_leaf`](Self::add_leaf).
    pub fn chunk(&mut self, mut data: &[u8], chunks: &mut Vec<Bytes>) {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let room = self.profile.chunk_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.profile.chunk_size {
                // Hand the chunk's buffer over (no copy) and start a fresh one.
                chunks.push(self.buf.split().freeze());
                self.buf.reserve(self.profile.chunk_size);
            }
        }
    }

    /// The last, short chunk of the input, once it is all fed (`None` if there is none).
    pub fn last_chunk(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    /// Adds the next leaf: a raw block of the next chunk, in input order.
    pub fn add_leaf(&mut self, leaf: Block, out: &mut Vec<Block>) -> Result<(), Error> {
        let child = Child {
            cid: *leaf.cid(),
            tsize: leaf.len() as u64,
            filesize: leaf.len() as u64,
        };
        self.first = self.levels.is_empty().then(|| leaf.data().clone());
        out.push(leaf);
        self.add(0, child, out)
    }

    fn add(&mut self, level: usize, child: Child, out: &mut Vec<Block>) -> Result<(), Error> {
        if self.levels.len() <= level {
            self.levels
                .push((Vec::with_capacity(self.profile.max_links), 0));
        }
        let (pending, total) = &mut self.levels[level];
        pending.push(child);
        *total += 1;
        if pending.len() == self.profile.max_links {
            let children = std::mem::take(pending);
            let parent = self.node(children, out)?;
            self.add(level + 1, parent, out)?;
        }
        Ok(())
    }

    /// A file node's UnixFS data, with the file's metadata.
    fn file_data(&self, mut data: UnixFs) -> UnixFs {
        data.mode = self.meta.mode.map(|m| m & 0o7777).filter(|m| *m != 0o644);
        data.mtime = self.meta.mtime;
        data
    }

    fn node(&self, children: Vec<Child>, out: &mut Vec<Block>) -> Result<Child, Error> {
        let data = self.file_data(UnixFs::file(children.iter().map(|c| c.filesize).collect()));
        let filesize = data.filesize.unwrap_or(0);
        let links: Vec<Link> = children
            .iter()
            .map(|c| Link {
                cid: c.cid,
                name: String::new(),
                tsize: Some(c.tsize),
            })
            .collect();
        let child_tsize: u64 = children.iter().map(|c| c.tsize).sum();
        let node = Node {
            links,
            data: Some(Bytes::from(data.encode())),
        };
        let block = Block::from_data(Codec::DagPb, self.hash, node.encode())?;
        let child = Child {
            cid: *block.cid(),
            tsize: block.len() as u64 + child_tsize,
            filesize,
        };
        out.push(block);
        Ok(child)
    }

    /// Flushes the last chunk and the tree; returns the root (its last blocks go to `out`).
    ///
    /// Matches the reference balanced builder: a one-chunk file is its raw leaf; otherwise
    /// every level is cut into nodes of at most `max_links`, until one node remains.
    pub fn finish(mut self, out: &mut Vec<Block>) -> Result<Imported, Error> {
        if let Some(chunk) = self.last_chunk() {
            self.add_leaf(Block::from_data(Codec::Raw, self.hash, chunk)?, out)?;
        } else if self.levels.is_empty() {
            // An empty file is the empty raw leaf.
            self.add_leaf(Block::from_data(Codec::Raw, self.hash, Bytes::new())?, out)?;
        }
        let mut level = 0;
        let root = loop {
            let top = level + 1 >= self.levels.len();
            let (pending, total) = &mut self.levels[level];
            if top && *total == 1 {
                let Some(root) = pending.pop() else {
                    return Err(lost_root());
                };
                break root;
            }
            if !pending.is_empty() {
                let children = std::mem::take(pending);
                let parent = self.node(children, out)?;
                self.add(level + 1, parent, out)?;
            }
            level += 1;
        };
        let with_meta = self.meta.mode.is_some() || self.meta.mtime.is_some();
        let root = match self.first.take() {
            // One block with metadata: a file node holding the bytes (Helia's reducer).
            Some(bytes) if with_meta && root.cid.codec() == Codec::Raw.code() => {
                let data = self.file_data(UnixFs {
                    data: Some(bytes.clone()),
                    filesize: Some(bytes.len() as u64),
                    ..UnixFs::of(super::pb::DataType::File)
                });
                let node = Node {
                    links: Vec::new(),
                    data: Some(Bytes::from(data.encode())),
                };
                let block = Block::from_data(Codec::DagPb, self.hash, node.encode())?;
                let child = Child {
                    cid: *block.cid(),
                    tsize: block.len() as u64,
                    filesize: bytes.len() as u64,
                };
                out.push(block);
                child
            }
            _ => root,
        };
        Ok(Imported {
            root: root.cid,
            size: self.bytes,
            dag_size: root.tsize,
        })
    }
}

// The level with a total of one always holds that one child; this keeps the code panic-free.
fn lost_root() -> Error {
    Error::Read {
        read: 0,
        source: std::io::Error::other("importer lost its root (a bug in cairn)"),
    }
}

/// The result of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The root CID.
    pub root: Cid,
    /// The file's size in bytes.
    pub size: u64,
    /// The DAG's total size in bytes (the root's cumulative size).
    pub dag_size: u64,
}

/// Imports everything `reader` yields into `store` as a UnixFS file, in batches of blocks.
///
/// Memory stays bounded by one read buffer plus one batch, whatever the input size.
/// `on_progress(bytes_read)` is called after each batch. On failure (a read error, a full
/// store), the blocks this import added are deleted again, except those another live
/// operation relies on ([`crate::live`]), and the error is returned.
pub async fn import<S, R>(
    store: &S,
    reader: R,
    profile: Profile,
    hash: HashAlg,
    on_progress: impl FnMut(u64),
) -> Result<Imported, Error>
where
    S: BlockStore,
    R: AsyncRead + Unpin,
{
    let mut op = crate::live::Live::global().operation();
    let result = import_with(store, reader, profile, hash, on_progress, &mut op).await;
    match &result {
        Ok(_) => op.finish(),
        // Best effort: the store failed already; an error here changes nothing for the
        // caller, who gets the original error.
        Err(_) => {
            op.abandon(store).await;
        }
    }
    result
}

/// [`import`] as part of the caller's live operation `op`, which holds every block written
/// and is the caller's to [`finish`](crate::live::Operation::finish) (after pinning the
/// root, say, so that no eviction comes between) or
/// [`abandon`](crate::live::Operation::abandon).
pub async fn import_with<S, R>(
    store: &S,
    reader: R,
    profile: Profile,
    hash: HashAlg,
    on_progress: impl FnMut(u64),
    op: &mut crate::live::Operation<'_>,
) -> Result<Imported, Error>
where
    S: BlockStore,
    R: AsyncRead + Unpin,
{
    import_hashing(
        store,
        reader,
        Importer::new(profile, hash),
        &Inline,
        on_progress,
        op,
    )
    .await
}

/// [`import_with`] into `importer` (a profile, a hash, and the file's [`Metadata`]), with
/// the leaves hashed by `hasher`, a batch (4 MiB) at a time.
pub async fn import_hashing<S, R, H>(
    store: &S,
    mut reader: R,
    mut importer: Importer,
    hasher: &H,
    mut on_progress: impl FnMut(u64),
    op: &mut crate::live::Operation<'_>,
) -> Result<Imported, Error>
where
    S: BlockStore,
    R: AsyncRead + Unpin,
    H: LeafHasher,
{
    const BATCH_BYTES: usize = 4 * 1024 * 1024;
    let mut chunks = Vec::new();
    let mut batch = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Read {
                    read: importer.bytes(),
                    source,
                });
            }
        };
        importer.chunk(&buf[..n], &mut chunks);
        if chunks.iter().map(Bytes::len).sum::<usize>() >= BATCH_BYTES {
            add_leaves(
                &mut importer,
                hasher,
                std::mem::take(&mut chunks),
                &mut batch,
            )
            .await?;
            op.put_many(store, std::mem::take(&mut batch)).await?;
            on_progress(importer.bytes());
        }
    }
    chunks.extend(importer.last_chunk());
    add_leaves(&mut importer, hasher, chunks, &mut batch).await?;
    let imported = importer.finish(&mut batch)?;
    op.put_many(store, batch).await?;
    on_progress(imported.size);
    Ok(imported)
}

/// Hashes `chunks` with `hasher` (or inline, when it declines) and adds them as leaves.
async fn add_leaves<H: LeafHasher>(
    importer: &mut Importer,
    hasher: &H,
    chunks: Vec<Bytes>,
    out: &mut Vec<Block>,
) -> Result<(), Error> {
    if chunks.is_empty() {
        return Ok(());
    }
    let alg = importer.hash;
    match hasher.digests(alg, &chunks).await.map_err(Error::Hash)? {
        Some(digests) if digests.len() == chunks.len() => {
            for (chunk, digest) in chunks.into_iter().zip(&digests) {
                importer.add_leaf(Block::from_digest(Codec::Raw, alg, digest, chunk)?, out)?;
            }
        }
        Some(digests) => {
            return Err(Error::Hash(crate::error::Reason::msg(format!(
                "{} digests for {} chunks",
                digests.len(),
                chunks.len()
            ))));
        }
        None => importer.hash_and_add(chunks, out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Memory;

    fn import_bytes(data: &[u8], profile: Profile) -> (Imported, Vec<Block>) {
        let mut imp = Importer::new(profile, HashAlg::Sha2_256);
        let mut out = Vec::new();
        imp.push(data, &mut out).unwrap();
        let r = imp.finish(&mut out).unwrap();
        (r, out)
    }

    const SMALL: Profile = Profile {
        chunk_size: 4,
        max_links: 3,
        shard_split: crate::unixfs::ShardSplit::LinksBytes,
        name: "test",
    };

    #[test]
    fn empty_file_is_the_empty_raw_block() {
        let (r, blocks) = import_bytes(b"", Profile::DEFAULT);
        assert_eq!(
            r.root.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(blocks.len(), 1);
    }

    #[test]
    fn one_chunk_is_its_leaf() {
        let (r, blocks) = import_bytes(b"abcd", SMALL);
        assert_eq!(r.root.codec(), 0x55);
        assert_eq!(blocks.len(), 1);
    }

    #[test]
    fn tree_shapes_follow_the_balanced_layout() {
        // chunks -> blocks: leaves + inner nodes
        for (chunks, inner) in [(2, 1), (3, 1), (4, 3), (9, 4), (10, 7), (27, 13), (28, 17)] {
            let data = vec![1u8; chunks * 4];
            let (r, blocks) = import_bytes(&data, SMALL);
            assert_eq!(blocks.len(), chunks + inner, "{chunks} chunks");
            assert_eq!(
                blocks.last().unwrap().cid(),
                &r.root,
                "root is written last"
            );
            assert_eq!(r.size, data.len() as u64);
        }
    }

    #[test]
    fn pushing_in_pieces_gives_the_same_root() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let (whole, _) = import_bytes(&data, SMALL);
        let mut imp = Importer::new(SMALL, HashAlg::Sha2_256);
        let mut out = Vec::new();
        for piece in data.chunks(3) {
            imp.push(piece, &mut out).unwrap();
        }
        assert_eq!(imp.finish(&mut out).unwrap(), whole);
    }

    struct FailAfter(usize);
    impl AsyncRead for FailAfter {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(9);
            self.0 -= n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn a_failed_import_leaves_nothing_behind() {
        let store = Memory::new();
        // A block the store already had, which the failed import also produces: kept.
        let pre = Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![9u8; 256 * 1024]).unwrap();
        store.put(pre.clone()).await.unwrap();
        let err = import(
            &store,
            FailAfter(20 << 20),
            Profile::DEFAULT,
            HashAlg::Sha2_256,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(err.to_string().contains("20971520 bytes"), "{err}");
        let st = store.stat().await.unwrap();
        assert_eq!(st.blocks, 1, "only the block held before remains");
        assert!(store.has(pre.cid()).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_store_refuses_and_keeps_nothing() {
        let store = Memory::with_quota(3 << 20);
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let err = import(
            &store,
            &data[..],
            Profile::DEFAULT,
            HashAlg::Sha2_256,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::Store(store::Error::Full { .. })),
            "{err}"
        );
        assert_eq!(store.stat().await.unwrap().blocks, 0);
    }
}

#[cfg(test)]
mod hashing_tests {
    use super::*;
    use crate::store::Memory;

    /// Hashes the batch itself, as a platform hasher would; counts the chunks it saw.
    struct Outside(std::sync::atomic::AtomicUsize);
    impl LeafHasher for Outside {
        async fn digests(
            &self,
            alg: HashAlg,
            chunks: &[Bytes],
        ) -> Result<Option<Vec<[u8; 32]>>, crate::error::Reason> {
            self.0
                .fetch_add(chunks.len(), std::sync::atomic::Ordering::Relaxed);
            let digest =
                |c: &Bytes| -> [u8; 32] { alg.digest(c).digest().try_into().expect("32 bytes") };
            Ok(Some(chunks.iter().map(digest).collect()))
        }
    }

    struct Broken(Option<usize>);
    impl LeafHasher for Broken {
        async fn digests(
            &self,
            _: HashAlg,
            chunks: &[Bytes],
        ) -> Result<Option<Vec<[u8; 32]>>, crate::error::Reason> {
            match self.0 {
                Some(short) => Ok(Some(vec![[0; 32]; chunks.len().saturating_sub(short)])),
                None => Err(crate::error::Reason::msg("no crypto here")),
            }
        }
    }

    async fn import_by(
        hasher: &impl LeafHasher,
        data: &[u8],
        profile: Profile,
    ) -> (Result<Imported, Error>, Memory) {
        let store = Memory::new();
        let mut op = crate::live::Live::global().operation();
        let r = import_hashing(
            &store,
            data,
            Importer::new(profile, HashAlg::Sha2_256),
            hasher,
            |_| {},
            &mut op,
        )
        .await;
        op.finish();
        (r, store)
    }

    #[tokio::test]
    async fn leaves_hashed_by_the_platform_make_the_same_dag_as_leaves_hashed_inline() {
        // Several 4 MiB batches, a short last chunk, and both profiles; and the edge sizes.
        let big: Vec<u8> = (0..9 * 1024 * 1024 + 12_345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for profile in [Profile::DEFAULT, Profile::UNIXFS_V1_2025] {
            for len in [0, 1, profile.chunk_size, profile.chunk_size + 1, big.len()] {
                let data = &big[..len];
                let outside = Outside(Default::default());
                let (theirs, held) = import_by(&outside, data, profile).await;
                let (ours, _) = import_by(&Inline, data, profile).await;
                let (theirs, ours) = (theirs.unwrap(), ours.unwrap());
                assert_eq!(theirs, ours, "{} bytes, {}", len, profile.name);
                let leaves = len.div_ceil(profile.chunk_size);
                assert_eq!(
                    outside.0.load(std::sync::atomic::Ordering::Relaxed),
                    leaves,
                    "every leaf of {len} bytes went to the hasher"
                );
                assert!(held.has(&theirs.root).await.unwrap(), "the root is stored");
            }
        }
    }

    #[tokio::test]
    async fn a_hasher_that_fails_or_loses_digests_fails_the_import_and_keeps_nothing() {
        let data = vec![7u8; 5 * 1024 * 1024];
        for (hasher, says) in [
            (Broken(None), "no crypto here"),
            (Broken(Some(1)), "digests for"),
        ] {
            let store = Memory::new();
            let r = import(
                &store,
                &data[..],
                Profile::DEFAULT,
                HashAlg::Sha2_256,
                |_| {},
            )
            .await;
            assert!(r.is_ok());
            let store = Memory::new();
            let mut op = crate::live::Live::global().operation();
            let e = import_hashing(
                &store,
                &data[..],
                Importer::new(Profile::DEFAULT, HashAlg::Sha2_256),
                &hasher,
                |_| {},
                &mut op,
            )
            .await
            .unwrap_err();
            op.abandon(&store).await;
            assert!(matches!(e, Error::Hash(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(store.stat().await.unwrap().blocks, 0);
        }
    }
}
