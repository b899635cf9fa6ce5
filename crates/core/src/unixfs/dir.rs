//! UnixFS directories: building them from paths ([`TreeBuilder`]), with root CIDs equal to
//! Helia's (`ipfs-unixfs-importer`) and Kubo's for the same tree and [`Profile`], and reading
//! them ([`ls`], [`resolve`]) from any [`ContentSource`], fetching only the blocks a path
//! needs.
//!
//! A directory is one DAG-PB node whose links, sorted by name bytes, name its entries. Past
//! [`SHARD_THRESHOLD`] bytes (as the profile's [`ShardSplit`] reckons them) it becomes a HAMT:
//! a tree of 256-wide shards in which each name sits at the slots its murmur3 hash picks, so
//! that finding one name reads one shard per level, never the whole directory.
//!
//! The builder holds each entry's name, CID and size (not its content) until
//! [`TreeBuilder::finish`]: about 300 bytes an entry (29 MiB for 100,000 files of 1 KiB;
//! `tests/tests/streaming_memory.rs` measures it, and builds, lists and resolves a
//! directory of 1,000,000 entries).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::pb::{self, DataType, Link, Mtime, UnixFs};
use super::{Profile, SHARD_THRESHOLD, ShardSplit, murmur3};
use crate::block::Block;
use crate::cid::{Cid, Codec, HashAlg};
use crate::source::{ContentSource, Context, SourceError};

/// The longest name an entry may have, in bytes (what Linux, macOS and Windows file systems
/// allow).
pub const MAX_NAME_BYTES: usize = 255;
/// The deepest path, in names.
pub const MAX_DEPTH: usize = 512;
/// HAMT width: 256 slots a shard (8 bits of hash a level), as Kubo and Helia write them.
pub const HAMT_FANOUT: u64 = 256;
/// The multicodec of the hash HAMT shards use: murmur3-x64-64.
pub const HAMT_HASH: u64 = 0x22;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Empty, or only slashes.
    #[error("the path is empty: give a name such as `photos/a.jpg`")]
    Empty,
    /// `.` or `..`, which would point outside the entry's directory.
    #[error("`{path}`: `{name}` is not allowed in a path (names must stay inside the directory)")]
    Dots {
        /// The whole path.
        path: String,
        /// The component.
        name: String,
    },
    /// A NUL byte.
    #[error("`{}`: a name contains a NUL byte", .0.escape_debug())]
    Nul(String),
    /// A name longer than [`MAX_NAME_BYTES`].
    #[error("a name of {len} bytes in `{}…`: names are at most {MAX_NAME_BYTES} bytes", .path.chars().take(40).collect::<String>())]
    TooLong {
        /// The start of the path.
        path: String,
        /// The name's length.
        len: usize,
    },
    /// More than [`MAX_DEPTH`] names.
    #[error("a path {depth} names deep: at most {MAX_DEPTH}")]
    TooDeep {
        /// How deep.
        depth: usize,
    },
    /// A name added as a file and as a directory (or as a file twice).
    #[error("`{path}` was added twice ({what})")]
    Conflict {
        /// The path.
        path: String,
        /// What clashed.
        what: &'static str,
    },
}

/// `CID`, `CID/path/in/it` or `/ipfs/CID/path/in/it` (spaces around it ignored): the CID's
/// text and the path under it, neither checked yet. The CLI, the JS API, the gateway and
/// queue files all split what they are given here, so they read the same text the same way.
pub fn split_target(text: &str) -> (&str, &str) {
    let t = text.trim();
    let t = t.strip_prefix("/ipfs/").unwrap_or(t);
    t.split_once('/').unwrap_or((t, ""))
}

/// [`split_target`], with the CID parsed (and checked: a codec and hash cairn handles).
pub fn parse_target(text: &str) -> Result<(Cid, &str), crate::cid::Error> {
    let (c, path) = split_target(text);
    Ok((crate::cid::parse(c)?, path))
}

/// Splits `path` into its names, refusing anything that could leave the directory.
/// Leading, trailing and repeated slashes are ignored (`/a//b/` is `a/b`), as Helia does.
pub fn components(path: &str) -> Result<Vec<&str>, PathError> {
    let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if names.is_empty() {
        return Err(PathError::Empty);
    }
    if names.len() > MAX_DEPTH {
        return Err(PathError::TooDeep { depth: names.len() });
    }
    for n in &names {
        check_name(n).map_err(|e| match e {
            PathError::Dots { name, .. } => PathError::Dots {
                path: path.to_owned(),
                name,
            },
            PathError::Nul(_) => PathError::Nul(path.to_owned()),
            PathError::TooLong { len, .. } => PathError::TooLong {
                path: path.to_owned(),
                len,
            },
            other => other,
        })?;
    }
    Ok(names)
}

/// Whether `name` may be one entry's name: not empty, `.` or `..`, no `/` or NUL, at most
/// [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name == "." || name == ".." || name.contains('/') {
        return Err(PathError::Dots {
            path: name.to_owned(),
            name: name.to_owned(),
        });
    }
    if name.contains('\0') {
        return Err(PathError::Nul(name.to_owned()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(PathError::TooLong {
            path: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Optional UnixFS metadata of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits (the low 12 bits are kept).
    pub mode: Option<u32>,
    /// Modification time.
    pub mtime: Option<Mtime>,
}

/// An entry already in the store: its root CID and the cumulative size of its DAG (the
/// `Tsize` its parent's link records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Root CID.
    pub cid: Cid,
    /// Cumulative DAG size in bytes.
    pub tsize: u64,
}

/// A directory block over the 2 MiB limit: too many entries that are directories (those
/// are not counted towards sharding, as in Helia and Kubo).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "directory `{path}` would be a block of {size} bytes, over the 2 MiB limit: it has too many subdirectories to fit one block"
)]
pub struct TooLarge {
    /// The directory (`""`: the root).
    pub path: String,
    /// The block's size.
    pub size: usize,
}

#[derive(Debug)]
enum Node {
    /// A file or any DAG linked as it is; with `Some(metadata)`, an empty directory added
    /// as such (which becomes a [`Node::Dir`] when entries are added under it).
    Leaf(Entry, Option<Metadata>),
    Dir(Box<Dir>),
}

#[derive(Debug, Default)]
struct Dir {
    children: BTreeMap<String, Node>,
    meta: Metadata,
    sharded: bool,
    /// The size [`ShardSplit`] reckons from the leaves (`None`: not reckoned yet).
    estimate: Option<u64>,
}

/// Builds a directory tree from entries added by path, then writes its directory blocks.
#[derive(Debug)]
pub struct TreeBuilder {
    root: Dir,
    split: ShardSplit,
    hash: HashAlg,
    entries: u64,
}

impl TreeBuilder {
    /// An empty tree, sharded as `profile` says, its blocks hashed with `hash`.
    pub fn new(profile: Profile, hash: HashAlg) -> Self {
        Self {
            root: Dir::default(),
            split: profile.shard_split,
            hash,
            entries: 0,
        }
    }

    /// How many entries have been added.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Sets the root directory's metadata.
    pub fn root_metadata(&mut self, meta: Metadata) {
        self.root.meta = meta;
    }

    /// Adds a file (or any DAG, linked as it is) at `path`; the directories on the way are
    /// made as needed.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), PathError> {
        self.put(path, Node::Leaf(entry, None))
    }

    /// Adds a directory at `path` with `meta`: an empty one, unless entries are added under
    /// it. A directory already there only takes the metadata.
    pub fn add_dir(&mut self, path: &str, meta: Metadata) -> Result<(), PathError> {
        let empty = flat_node(Vec::new(), meta);
        let entry = Entry {
            cid: crate::cid::of(Codec::DagPb, self.hash, &empty),
            tsize: empty.len() as u64,
        };
        self.put(path, Node::Leaf(entry, Some(meta)))
    }

    fn put(&mut self, path: &str, node: Node) -> Result<(), PathError> {
        let names = components(path)?;
        let (last, dirs) = names.split_last().ok_or(PathError::Empty)?;
        let split = self.split;
        let clash = |what| PathError::Conflict {
            path: path.to_owned(),
            what,
        };
        let mut dir = &mut self.root;
        for name in dirs {
            match dir.children.get(*name) {
                Some(Node::Dir(_)) => {}
                Some(Node::Leaf(_, None)) => return Err(clash("as a file and as a directory")),
                Some(Node::Leaf(_, Some(meta))) => {
                    // An empty directory added as such now holds entries: it no longer
                    // counts as a leaf (as in Helia).
                    let meta = *meta;
                    dir.unreckon(name, split);
                    dir.children.insert(
                        (*name).to_owned(),
                        Node::Dir(Box::new(Dir {
                            meta,
                            ..Dir::default()
                        })),
                    );
                }
                None => {
                    dir.children
                        .insert((*name).to_owned(), Node::Dir(Box::default()));
                }
            }
            dir = match dir.children.get_mut(*name) {
                Some(Node::Dir(d)) => d,
                _ => return Err(clash("as a file and as a directory")),
            };
        }
        match (dir.children.get_mut(*last), node) {
            (None, node) => {
                dir.children.insert((*last).to_owned(), node);
                dir.reckon(last, split);
                if !dir.sharded && dir.estimate.unwrap_or(0) > SHARD_THRESHOLD {
                    dir.sharded = true;
                }
                self.entries += 1;
                Ok(())
            }
            (Some(Node::Dir(d)), Node::Leaf(_, Some(meta))) => {
                d.meta = meta;
                Ok(())
            }
            (Some(Node::Leaf(_, Some(_))), Node::Leaf(_, Some(_))) => Ok(()),
            (Some(Node::Leaf(_, None)), Node::Leaf(_, None)) => Err(clash("as a file both times")),
            _ => Err(clash("as a file and as a directory")),
        }
    }

    /// Writes the directory blocks into `out` (children before parents) and returns the
    /// root directory.
    pub fn finish(self, out: &mut Vec<Block>) -> Result<Entry, TooLarge> {
        let mut path = String::new();
        self.root.flush(self.hash, &mut path, out)
    }
}

/// What one leaf adds to its directory's size, as `split` reckons it.
fn leaf_size(split: ShardSplit, name: &str, e: &Entry) -> u64 {
    let cid_len = e.cid.encoded_len() as u64;
    let name_len = name.len() as u64;
    match split {
        ShardSplit::LinksBytes => name_len + cid_len,
        ShardSplit::BlockBytes => {
            let link = 1
                + varint_len(cid_len)
                + cid_len
                + 1
                + varint_len(name_len)
                + name_len
                + 1
                + varint_len(e.tsize);
            1 + varint_len(link) + link
        }
    }
}

fn varint_len(v: u64) -> u64 {
    u64::from((64 - (v | 1).leading_zeros()).div_ceil(7))
}

impl Dir {
    fn estimate(&mut self, split: ShardSplit) -> &mut u64 {
        let base = match split {
            ShardSplit::LinksBytes => 0,
            ShardSplit::BlockBytes => {
                let data = dir_data(self.meta).len() as u64;
                1 + varint_len(data) + data
            }
        };
        let children = &self.children;
        self.estimate.get_or_insert_with(|| {
            base + children
                .iter()
                .map(|(name, n)| match n {
                    Node::Leaf(e, _) => leaf_size(split, name, e),
                    Node::Dir(_) => 0,
                })
                .sum::<u64>()
        })
    }

    /// Counts the leaf `name` (just inserted) in the estimate.
    fn reckon(&mut self, name: &str, split: ShardSplit) {
        let add = match self.children.get(name) {
            Some(Node::Leaf(e, _)) => leaf_size(split, name, e),
            _ => 0,
        };
        if self.estimate.is_some() {
            *self.estimate(split) += add;
        } else {
            self.estimate(split);
        }
    }

    /// Stops counting the leaf `name` (about to be replaced).
    fn unreckon(&mut self, name: &str, split: ShardSplit) {
        let sub = match self.children.get(name) {
            Some(Node::Leaf(e, _)) => leaf_size(split, name, e),
            _ => 0,
        };
        if let Some(est) = &mut self.estimate {
            *est = est.saturating_sub(sub);
        }
    }

    fn flush(
        self,
        hash: HashAlg,
        path: &mut String,
        out: &mut Vec<Block>,
    ) -> Result<Entry, TooLarge> {
        let mut links = Vec::with_capacity(self.children.len());
        for (name, node) in self.children {
            let e = match node {
                Node::Leaf(e, None) => e,
                // An empty directory added as such: its block is written here.
                Node::Leaf(_, Some(meta)) => emit(flat_node(Vec::new(), meta), 0, hash, path, out)?,
                Node::Dir(d) => {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('/');
                    }
                    path.push_str(&name);
                    let e = d.flush(hash, path, out)?;
                    path.truncate(len);
                    e
                }
            };
            links.push((name, e));
        }
        if self.sharded {
            let mut root = Bucket::default();
            for (name, e) in links {
                root.insert(name, e, 0);
            }
            return root.flush(Some(self.meta), hash, path, out);
        }
        let sum: u64 = links.iter().map(|(_, e)| e.tsize).sum();
        let data = flat_node(links, self.meta);
        emit(data, sum, hash, path, out)
    }
}

fn emit(
    node: Vec<u8>,
    children: u64,
    hash: HashAlg,
    path: &str,
    out: &mut Vec<Block>,
) -> Result<Entry, TooLarge> {
    let size = node.len();
    let block = Block::from_data(Codec::DagPb, hash, node).map_err(|_| TooLarge {
        path: path.to_owned(),
        size,
    })?;
    let e = Entry {
        cid: *block.cid(),
        tsize: size as u64 + children,
    };
    out.push(block);
    Ok(e)
}

/// A directory's UnixFS data: the mode only when not the default 0755, as Helia writes it.
fn dir_data(meta: Metadata) -> Vec<u8> {
    UnixFs {
        mode: meta.mode.map(|m| m & 0o7777).filter(|m| *m != 0o755),
        mtime: meta.mtime,
        ..UnixFs::of(DataType::Directory)
    }
    .encode()
}

/// A plain directory node of `links` (sorted by name bytes, as a `BTreeMap` of `String`
/// gives them).
fn flat_node(links: Vec<(String, Entry)>, meta: Metadata) -> Vec<u8> {
    pb::Node {
        links: links
            .into_iter()
            .map(|(name, e)| Link {
                cid: e.cid,
                name,
                tsize: Some(e.tsize),
            })
            .collect(),
        data: Some(Bytes::from(dir_data(meta))),
    }
    .encode()
}

#[derive(Debug)]
enum Slot {
    Leaf(String, Entry),
    Bucket(Box<Bucket>),
}

/// One shard of a HAMT: up to 256 slots.
#[derive(Debug, Default)]
struct Bucket {
    slots: BTreeMap<u8, Slot>,
}

impl Bucket {
    fn insert(&mut self, name: String, e: Entry, level: usize) {
        let i = murmur3::slot(name.as_bytes(), level);
        let slot = match self.slots.remove(&i) {
            None => Slot::Leaf(name, e),
            Some(Slot::Leaf(other, _)) if other == name => Slot::Leaf(name, e),
            Some(Slot::Leaf(other, oe)) => {
                let mut b = Bucket::default();
                b.insert(other, oe, level + 1);
                b.insert(name, e, level + 1);
                Slot::Bucket(Box::new(b))
            }
            Some(Slot::Bucket(mut b)) => {
                b.insert(name, e, level + 1);
                Slot::Bucket(b)
            }
        };
        self.slots.insert(i, slot);
    }

    fn flush(
        self,
        meta: Option<Metadata>,
        hash: HashAlg,
        path: &str,
        out: &mut Vec<Block>,
    ) -> Result<Entry, TooLarge> {
        let mut bits = [0u8; (HAMT_FANOUT / 8) as usize];
        let mut links = Vec::with_capacity(self.slots.len());
        let mut sum = 0;
        for (i, slot) in self.slots {
            bits[usize::from(i / 8)] |= 1 << (i % 8);
            let (name, e) = match slot {
                Slot::Leaf(name, e) => (format!("{i:02X}{name}"), e),
                Slot::Bucket(b) => (format!("{i:02X}"), b.flush(None, hash, path, out)?),
            };
            sum += e.tsize;
            links.push(Link {
                cid: e.cid,
                name,
                tsize: Some(e.tsize),
            });
        }
        // The bitfield as Helia and Kubo write it: big-endian, without leading zero bytes.
        let used = bits.iter().rposition(|b| *b != 0).map_or(1, |p| p + 1);
        let data: Vec<u8> = bits[..used].iter().rev().copied().collect();
        let meta = meta.unwrap_or_default();
        let fs = UnixFs {
            data: Some(Bytes::from(data)),
            hash_type: Some(HAMT_HASH),
            fanout: Some(HAMT_FANOUT),
            mode: meta.mode.map(|m| m & 0o7777).filter(|m| *m != 0o755),
            mtime: meta.mtime,
            ..UnixFs::of(DataType::HamtShard)
        };
        let node = pb::Node {
            links,
            data: Some(Bytes::from(fs.encode())),
        }
        .encode();
        emit(node, sum, hash, path, out)
    }
}

/// The most HAMT levels a name may be looked up through (a shard deeper than this is
/// refused as malformed: 8 levels already hold 2^64 slots).
pub const MAX_HAMT_LEVELS: usize = 64;

/// Why a directory could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A block could not be retrieved.
    #[error("could not retrieve block {cid}: {source}")]
    Retrieve {
        /// The block.
        cid: Cid,
        /// What the source said.
        source: Box<SourceError>,
    },
    /// A block is not a well-formed UnixFS directory or HAMT shard.
    #[error("{cid} is not a valid UnixFS directory: {reason}")]
    Malformed {
        /// The offending block.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// A path goes through something that is not a directory.
    #[error("`{path}` is a {kind}, not a directory")]
    NotADirectory {
        /// The path up to it (`""`: the root).
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A directory has no entry of that name.
    #[error("no `{name}` in `/{path}`")]
    NotFound {
        /// The directory's path (`""`: the root).
        path: String,
        /// The missing name.
        name: String,
    },
    /// The path itself is not valid.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// One entry of a directory, as its link gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Its root CID.
    pub cid: Cid,
    /// The cumulative size of its DAG, as the link records it.
    pub tsize: Option<u64>,
}

/// What a node is, decoded.
enum Decoded {
    Dir(pb::Node),
    Shard(pb::Node),
    Other(&'static str),
}

async fn load<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    cid: Cid,
) -> Result<Decoded, ReadError> {
    Ok(load_with_metadata(src, ctx, cid).await?.0)
}

/// [`load`], with the node's UnixFS metadata (none for a raw block).
async fn load_with_metadata<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    cid: Cid,
) -> Result<(Decoded, Metadata), ReadError> {
    let none = Metadata::default();
    if cid.codec() == Codec::Raw.code() {
        return Ok((Decoded::Other("file"), none));
    }
    if cid.codec() != Codec::DagPb.code() {
        return Ok((Decoded::Other("non-UnixFS node"), none));
    }
    let block = src
        .retrieve(&cid, ctx)
        .await
        .map_err(|source| ReadError::Retrieve {
            cid,
            source: Box::new(source),
        })?;
    let bad = |reason: String| ReadError::Malformed { cid, reason };
    let node = pb::Node::decode(block.data()).map_err(|e| bad(e.to_string()))?;
    let Some(data) = &node.data else {
        return Ok((Decoded::Other("DAG-PB node without UnixFS data"), none));
    };
    let fs = UnixFs::decode(data).map_err(|e| bad(e.to_string()))?;
    let meta = Metadata {
        mode: fs.mode.map(|m| m & 0o7777),
        mtime: fs.mtime,
    };
    let decoded = match fs.kind {
        DataType::Directory => Decoded::Dir(node),
        DataType::HamtShard => {
            if fs.fanout != Some(HAMT_FANOUT) || fs.hash_type != Some(HAMT_HASH) {
                return Err(bad(format!(
                    "a HAMT shard of fanout {:?} hashed with {:?}: cairn reads the 256-wide murmur3 (0x22) shards Kubo and Helia write",
                    fs.fanout, fs.hash_type
                )));
            }
            Decoded::Shard(node)
        }
        DataType::File | DataType::Raw => Decoded::Other("file"),
        DataType::Symlink => Decoded::Other("symlink"),
        DataType::Metadata => Decoded::Other("metadata node"),
    };
    Ok((decoded, meta))
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A UnixFS file (or a raw block).
    File,
    /// A directory, plain or HAMT-sharded.
    Directory,
    /// A UnixFS symlink.
    Symlink,
    /// Anything else (another codec, a metadata node).
    Other,
}

/// What the node `cid` is (reading its root block, unless its CID says: a raw block is a
/// file).
pub async fn kind<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    cid: Cid,
) -> Result<Kind, ReadError> {
    Ok(stat(src, ctx, cid).await?.0)
}

/// What the node `cid` is and the metadata it carries (`mode` as stored, its low 12 bits;
/// none for a raw block or a node without).
pub async fn stat<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    cid: Cid,
) -> Result<(Kind, Metadata), ReadError> {
    let (decoded, meta) = load_with_metadata(src, ctx, cid).await?;
    let kind = match decoded {
        Decoded::Dir(_) | Decoded::Shard(_) => Kind::Directory,
        Decoded::Other("file") => Kind::File,
        Decoded::Other("symlink") => Kind::Symlink,
        Decoded::Other(_) => Kind::Other,
    };
    Ok((kind, meta))
}

/// The slot a HAMT link names (its first two characters, upper-case hex) and the rest.
fn shard_label(cid: Cid, name: &str) -> Result<(u8, &str), ReadError> {
    let bad = || ReadError::Malformed {
        cid,
        reason: format!(
            "HAMT link `{}` does not start with a two-digit hex slot",
            name.escape_debug()
        ),
    };
    let prefix = name.get(..2).ok_or_else(bad)?;
    if prefix.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(bad());
    }
    let slot = u8::from_str_radix(prefix, 16).map_err(|_| bad())?;
    Ok((slot, &name[2..]))
}

/// Calls `each` with every entry of the directory `cid` (a plain directory, or every shard
/// of a HAMT, depth first), without holding the listing; `each` stops it by returning
/// [`ControlFlow::Break`](std::ops::ControlFlow::Break). Names that could not be a file's
/// (`..`, `/`, NUL) are refused as malformed.
pub async fn ls<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    cid: Cid,
    mut each: impl FnMut(DirEntry) -> std::ops::ControlFlow<()>,
) -> Result<(), ReadError> {
    let mut listing = Listing::new(src, ctx, cid);
    while let Some(e) = listing.next().await? {
        if each(e).is_break() {
            break;
        }
    }
    Ok(())
}

/// How many entries' root blocks [`ls_stat`] reads at once.
pub const STAT_WIDTH: usize = 32;

/// Every entry of the directory `cid`, in [`ls`]'s order, each with what it is and its
/// metadata ([`stat`]). The entries' root blocks are read [`STAT_WIDTH`] at a time, so over
/// a network a listing costs a round trip per 32 entries, not per entry; nothing but that
/// window is held. An entry whose root block cannot be read comes with that error (the
/// listing goes on); an error in the directory itself ends the stream.
pub fn ls_stat<'a, S: ContentSource + ?Sized>(
    src: &'a S,
    ctx: &'a Context,
    cid: Cid,
) -> impl futures::Stream<Item = Result<Stat, ReadError>> + 'a {
    use futures::TryStreamExt as _;
    futures::stream::try_unfold(Listing::new(src, ctx, cid), |mut listing| async move {
        Ok(listing.next().await?.map(|e| (e, listing)))
    })
    .map_ok(move |entry| async move {
        let stat = stat(src, ctx, entry.cid).await;
        Ok(Stat { entry, stat })
    })
    .try_buffered(STAT_WIDTH)
}

/// An entry of a listing with what its root block says ([`ls_stat`]).
#[derive(Debug)]
pub struct Stat {
    /// The entry, as its link gives it.
    pub entry: DirEntry,
    /// What it is and its metadata, or why its root block could not be read.
    pub stat: Result<(Kind, Metadata), ReadError>,
}

/// A directory's entries one at a time ([`ls`]): a plain directory's links, or a HAMT's
/// shards depth first in slot order, each shard read when the walk reaches it.
struct Listing<'a, S: ?Sized> {
    src: &'a S,
    ctx: &'a Context,
    at: Walk,
}

enum Walk {
    Start(Cid),
    Flat(Cid, std::vec::IntoIter<Link>),
    Hamt {
        /// Shards met so far: one met twice is refused (a DAG that shares sub-shards could
        /// otherwise list one block exponentially many times).
        seen: std::collections::HashSet<Cid>,
        /// Each open shard, its links left, and its level.
        stack: Vec<(Cid, std::vec::IntoIter<Link>, usize)>,
    },
}

impl<'a, S: ContentSource + ?Sized> Listing<'a, S> {
    fn new(src: &'a S, ctx: &'a Context, cid: Cid) -> Self {
        Self {
            src,
            ctx,
            at: Walk::Start(cid),
        }
    }

    fn checked(cid: Cid, name: String, l: Link) -> Result<DirEntry, ReadError> {
        check_name(&name).map_err(|e| ReadError::Malformed {
            cid,
            reason: format!("entry `{}`: {e}", name.escape_debug()),
        })?;
        Ok(DirEntry {
            name,
            cid: l.cid,
            tsize: l.tsize,
        })
    }

    /// The next entry; `None` once every one was given.
    async fn next(&mut self) -> Result<Option<DirEntry>, ReadError> {
        let Self { src, ctx, at } = self;
        loop {
            match at {
                Walk::Start(cid) => {
                    let cid = *cid;
                    *at = match load(*src, ctx, cid).await? {
                        Decoded::Other(kind) => {
                            return Err(ReadError::NotADirectory {
                                path: String::new(),
                                kind,
                            });
                        }
                        Decoded::Dir(node) => Walk::Flat(cid, node.links.into_iter()),
                        Decoded::Shard(node) => Walk::Hamt {
                            seen: std::collections::HashSet::from([cid]),
                            stack: vec![(cid, node.links.into_iter(), 0)],
                        },
                    };
                }
                Walk::Flat(cid, links) => {
                    let Some(mut l) = links.next() else {
                        return Ok(None);
                    };
                    let name = std::mem::take(&mut l.name);
                    return Self::checked(*cid, name, l).map(Some);
                }
                Walk::Hamt { seen, stack } => {
                    let Some((at, links, level)) = stack.last_mut() else {
                        return Ok(None);
                    };
                    let (at, level) = (*at, *level);
                    let Some(mut l) = links.next() else {
                        stack.pop();
                        continue;
                    };
                    let name = std::mem::take(&mut l.name);
                    let (_, rest) = shard_label(at, &name)?;
                    if !rest.is_empty() {
                        let rest = rest.to_owned();
                        return Self::checked(at, rest, l).map(Some);
                    }
                    if level + 1 >= MAX_HAMT_LEVELS {
                        return Err(ReadError::Malformed {
                            cid: at,
                            reason: format!("HAMT deeper than {MAX_HAMT_LEVELS} levels"),
                        });
                    }
                    if !seen.insert(l.cid) {
                        return Err(ReadError::Malformed {
                            cid: at,
                            reason: format!("HAMT shard {} is linked twice", l.cid),
                        });
                    }
                    match load(*src, ctx, l.cid).await? {
                        Decoded::Shard(sub) => {
                            stack.push((l.cid, sub.links.into_iter(), level + 1));
                        }
                        _ => {
                            return Err(ReadError::Malformed {
                                cid: at,
                                reason: format!(
                                    "HAMT bucket `{name}` points at {}, which is not a HAMT shard",
                                    l.cid
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// The entry at `path` under the directory `root` (`""`: the root itself), fetching only the
/// blocks on the way: one per plain directory, and in a HAMT only the shards the name's
/// hash leads through.
pub async fn resolve<S: ContentSource + ?Sized>(
    src: &S,
    ctx: &Context,
    root: Cid,
    path: &str,
) -> Result<Cid, ReadError> {
    if path.split('/').all(str::is_empty) {
        return Ok(root);
    }
    let names = components(path)?;
    let mut cur = root;
    for (depth, name) in names.iter().enumerate() {
        let here = names[..depth].join("/");
        let not_found = || ReadError::NotFound {
            path: here.clone(),
            name: (*name).to_owned(),
        };
        cur = match load(src, ctx, cur).await? {
            Decoded::Other(kind) => {
                return Err(ReadError::NotADirectory { path: here, kind });
            }
            Decoded::Dir(node) => {
                node.links
                    .iter()
                    .find(|l| l.name == *name)
                    .ok_or_else(not_found)?
                    .cid
            }
            Decoded::Shard(mut node) => {
                let mut at = cur;
                let mut level = 0;
                loop {
                    let want = murmur3::slot(name.as_bytes(), level);
                    let mut found = None;
                    for l in &node.links {
                        let (slot, rest) = shard_label(at, &l.name)?;
                        if slot == want && (rest.is_empty() || rest == *name) {
                            found = Some((l.cid, rest.is_empty()));
                            break;
                        }
                    }
                    match found {
                        None => return Err(not_found()),
                        Some((cid, false)) => break cid,
                        Some((sub, true)) => {
                            level += 1;
                            if level >= MAX_HAMT_LEVELS {
                                return Err(ReadError::Malformed {
                                    cid: at,
                                    reason: format!("HAMT deeper than {MAX_HAMT_LEVELS} levels"),
                                });
                            }
                            node = match load(src, ctx, sub).await? {
                                Decoded::Shard(n) => n,
                                _ => {
                                    return Err(ReadError::Malformed {
                                        cid: at,
                                        reason: format!(
                                            "HAMT bucket {want:02X} points at {sub}, which is not a HAMT shard"
                                        ),
                                    });
                                }
                            };
                            at = sub;
                        }
                    }
                }
            }
        };
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::block::Block;
    use crate::source::{Local, SourceKind};
    use crate::store::{BlockStore, Memory};

    /// A store as a source that counts the blocks asked for.
    struct Counting(Local<Arc<Memory>>, AtomicUsize);
    impl ContentSource for Counting {
        fn kind(&self) -> SourceKind {
            SourceKind::Local
        }
        async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.retrieve(cid, ctx).await
        }
    }

    fn file(data: &[u8]) -> (Block, Entry) {
        let b = Block::from_data(Codec::Raw, HashAlg::Sha2_256, data.to_vec()).unwrap();
        let e = Entry {
            cid: *b.cid(),
            tsize: data.len() as u64,
        };
        (b, e)
    }

    async fn build(paths: &[String]) -> (Counting, Entry) {
        let store = Arc::new(Memory::new());
        let mut t = TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
        for p in paths {
            let (b, e) = file(p.as_bytes());
            store.put(b).await.unwrap();
            t.add(p, e).unwrap();
        }
        let mut blocks = Vec::new();
        let root = t.finish(&mut blocks).unwrap();
        for b in blocks {
            store.put(b).await.unwrap();
        }
        (Counting(Local(store), AtomicUsize::new(0)), root)
    }

    async fn names(src: &Counting, cid: Cid) -> Vec<String> {
        let mut v = Vec::new();
        ls(src, &Context::new(), cid, |e| {
            v.push(e.name);
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
        v
    }

    #[tokio::test]
    async fn plain_directories_list_sorted_and_resolve_paths() {
        let paths: Vec<String> = ["b.txt", "a/x", "a/y/z", "c"].map(String::from).to_vec();
        let (src, root) = build(&paths).await;
        assert_eq!(names(&src, root.cid).await, ["a", "b.txt", "c"]);
        let ctx = Context::new();
        for p in &paths {
            let cid = resolve(&src, &ctx, root.cid, p).await.unwrap();
            assert_eq!(cid, file(p.as_bytes()).1.cid, "{p}");
        }
        assert_eq!(resolve(&src, &ctx, root.cid, "/").await.unwrap(), root.cid);
        let e = resolve(&src, &ctx, root.cid, "a/nope").await.unwrap_err();
        assert_eq!(e.to_string(), "no `nope` in `/a`");
        let e = resolve(&src, &ctx, root.cid, "b.txt/more")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "`b.txt` is a file, not a directory");
        let e = resolve(&src, &ctx, root.cid, "a/../b.txt")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("`..` is not allowed"), "{e}");
    }

    #[tokio::test]
    async fn a_hamt_lists_every_name_and_a_lookup_reads_only_its_shards() {
        // 8,000 entries of 40-byte names: far past the threshold, two levels of shards.
        let paths: Vec<String> = (0..8000).map(|i| format!("{i:040}")).collect();
        let (src, root) = build(&paths).await;
        let mut listed = names(&src, root.cid).await;
        let shards = src.1.swap(0, Ordering::SeqCst);
        assert!(shards > 1, "a HAMT: {shards} shard(s)");
        listed.sort();
        let mut want = paths.clone();
        want.sort();
        assert_eq!(listed, want);
        let ctx = Context::new();
        for p in paths.iter().step_by(997) {
            src.1.store(0, Ordering::SeqCst);
            assert_eq!(
                resolve(&src, &ctx, root.cid, p).await.unwrap(),
                file(p.as_bytes()).1.cid
            );
            let read = src.1.load(Ordering::SeqCst);
            assert!(read <= 3, "{p}: {read} of {shards} shards read");
        }
        let e = resolve(&src, &ctx, root.cid, "absent").await.unwrap_err();
        assert!(matches!(e, ReadError::NotFound { .. }), "{e}");
    }

    /// A source that counts how many of its reads are in flight at once, each taking a few
    /// turns of the executor as a network read would.
    struct Overlapping(Counting, AtomicUsize, AtomicUsize);
    impl ContentSource for Overlapping {
        fn kind(&self) -> SourceKind {
            SourceKind::Local
        }
        async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
            let now = self.1.fetch_add(1, Ordering::SeqCst) + 1;
            self.2.fetch_max(now, Ordering::SeqCst);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            self.1.fetch_sub(1, Ordering::SeqCst);
            self.0.retrieve(cid, ctx).await
        }
    }

    #[tokio::test]
    async fn a_listing_with_kinds_reads_its_entries_roots_side_by_side_in_order() {
        use futures::StreamExt as _;
        // 100 subdirectories (each a DAG-PB root to read) and 3 files (raw: nothing to read).
        let mut paths: Vec<String> = (0..100).map(|i| format!("d{i:03}/f")).collect();
        paths.extend(["x", "y", "z"].map(String::from));
        let (counting, root) = build(&paths).await;
        // One subdirectory's root is gone: its entry says so, and the listing goes on.
        let gone = resolve(&counting, &Context::new(), root.cid, "d042")
            .await
            .unwrap();
        assert!(counting.0.0.delete(&gone).await.unwrap());
        let src = Overlapping(counting, AtomicUsize::new(0), AtomicUsize::new(0));
        let ctx = Context::new();
        let listed: Vec<Stat> = ls_stat(&src, &ctx, root.cid)
            .map(Result::unwrap)
            .collect()
            .await;
        let names: Vec<&str> = listed.iter().map(|s| s.entry.name.as_str()).collect();
        let mut want: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
        want.extend(["x", "y", "z"].map(String::from));
        assert_eq!(names, want, "every entry once, in the directory's order");
        for s in &listed {
            match s.entry.name.as_str() {
                "d042" => assert!(
                    matches!(s.stat, Err(ReadError::Retrieve { cid, .. }) if cid == gone),
                    "{:?}",
                    s.stat
                ),
                n if n.starts_with('d') => {
                    assert_eq!(s.stat.as_ref().unwrap().0, Kind::Directory, "{n}")
                }
                n => assert_eq!(s.stat.as_ref().unwrap().0, Kind::File, "{n}"),
            }
        }
        let widest = src.2.load(Ordering::SeqCst);
        assert_eq!(
            widest, STAT_WIDTH,
            "the entries' roots are read {STAT_WIDTH} at a time"
        );
        // A file is not a directory to list.
        let x = resolve(&src, &ctx, root.cid, "x").await.unwrap();
        let first = std::pin::pin!(ls_stat(&src, &ctx, x)).next().await.unwrap();
        assert!(
            matches!(first, Err(ReadError::NotADirectory { .. })),
            "{first:?}"
        );
    }

    #[test]
    fn bad_paths_are_refused_with_what_was_wrong() {
        let mut t = TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
        let e = file(b"x").1;
        let long = "n".repeat(10_000);
        for (path, want) in [
            ("", "the path is empty"),
            ("//", "the path is empty"),
            ("a/../b", "`..` is not allowed"),
            ("./a", "`.` is not allowed"),
            ("a\0b", "NUL"),
            (long.as_str(), "a name of 10000 bytes"),
        ] {
            let err = t.add(path, e).unwrap_err().to_string();
            assert!(err.contains(want), "{path:?}: {err}");
        }
        let deep = "d/".repeat(MAX_DEPTH + 1);
        assert!(t.add(&deep, e).unwrap_err().to_string().contains("deep"));
        t.add("a/b", e).unwrap();
        assert!(t.add("a/b", e).is_err(), "the same file twice");
        assert!(t.add("a/b/c", e).is_err(), "a file used as a directory");
        assert!(t.add("a", e).is_err(), "a directory replaced by a file");
        t.add_dir("a", Metadata::default()).unwrap();
        assert_eq!(t.entries(), 1, "nothing half-added");
    }

    #[test]
    fn every_way_of_naming_a_target_splits_the_same() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        for (text, path) in [
            (cid.to_owned(), ""),
            (format!("{cid}/a/b.txt"), "a/b.txt"),
            (format!("/ipfs/{cid}/a/b.txt"), "a/b.txt"),
            (format!("  /ipfs/{cid}/ \n"), ""),
            (format!("{cid}//x"), "/x"),
        ] {
            let (c, p) = parse_target(&text).unwrap();
            assert_eq!((c.to_string().as_str(), p), (cid, path), "{text:?}");
        }
        let e = parse_target("/ipfs/nonsense/a").unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
        assert_eq!(
            split_target("/ipns/x/y"),
            ("", "ipns/x/y"),
            "only /ipfs/ is a prefix"
        );
    }

    #[tokio::test]
    async fn a_bucket_pointing_at_a_non_hamt_node_and_odd_labels_are_malformed() {
        let store = Arc::new(Memory::new());
        let (leaf, e) = file(b"not a shard");
        store.put(leaf).await.unwrap();
        let shard = |links: Vec<Link>| {
            let fs = UnixFs {
                data: Some(Bytes::from_static(&[0xff])),
                hash_type: Some(HAMT_HASH),
                fanout: Some(HAMT_FANOUT),
                ..UnixFs::of(DataType::HamtShard)
            };
            let node = pb::Node {
                links,
                data: Some(Bytes::from(fs.encode())),
            };
            Block::from_data(Codec::DagPb, HashAlg::Sha2_256, node.encode()).unwrap()
        };
        let link = |name: &str| Link {
            cid: e.cid,
            name: name.into(),
            tsize: Some(1),
        };
        let src = Local(store.clone());
        let ctx = Context::new();
        // Every slot a name could hash to, as a bucket pointing at a file.
        let all = shard((0..=255u8).map(|i| link(&format!("{i:02X}"))).collect());
        store.put(all.clone()).await.unwrap();
        let e1 = resolve(&src, &ctx, *all.cid(), "anything")
            .await
            .unwrap_err();
        assert!(e1.to_string().contains("which is not a HAMT shard"), "{e1}");
        let e2 = ls(&src, &ctx, *all.cid(), |_| ControlFlow::Continue(()))
            .await
            .unwrap_err();
        assert!(e2.to_string().contains("which is not a HAMT shard"), "{e2}");
        for bad in ["G1name", "a", "0a", "FF..", "FFx/y"] {
            let b = shard(vec![link(bad)]);
            store.put(b.clone()).await.unwrap();
            let err = ls(&src, &ctx, *b.cid(), |_| ControlFlow::Continue(()))
                .await
                .unwrap_err();
            assert!(matches!(err, ReadError::Malformed { .. }), "{bad}: {err}");
        }
    }
}
