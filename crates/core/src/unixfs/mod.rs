//! UnixFS: files as DAG-PB trees of raw leaves, the way IPFS stores them.
//!
//! [`Importer`] turns a byte stream into blocks with a fixed-size chunker, raw leaves, CIDv1
//! and the balanced layout, so the root CID equals Helia's and Kubo's for the same
//! [`Profile`]. [`import`] drives it from an `AsyncRead` into a store without holding the file
//! in memory. [`export`] streams a file's bytes, or a byte range, back out of any
//! [`ContentSource`](crate::source::ContentSource), fetching only the leaves the range needs.
//! [`dir`] builds directories (plain and HAMT-sharded) from paths and reads them back.

pub mod dir;
mod export;
mod import;
mod murmur3;
pub mod pb;

use std::fmt;
use std::str::FromStr;

pub use export::{Error as ExportError, Range, export, file_size};
pub use import::{
    Error as ImportError, Imported, Importer, Inline, LeafHasher, import, import_hashing,
    import_with,
};

/// How files are cut into a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Bytes per leaf.
    pub chunk_size: usize,
    /// Links per inner node.
    pub max_links: usize,
    /// How a directory's size is reckoned to decide when it becomes a HAMT.
    pub shard_split: ShardSplit,
    /// Display name.
    pub name: &'static str,
}

/// How a directory's size is reckoned to decide when it becomes a HAMT shard: past
/// [`SHARD_THRESHOLD`] bytes (counting only the entries that are files or directories added
/// as such, as Helia and Kubo do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSplit {
    /// Each entry's name and CID bytes (Kubo's and Helia's default, the `unixfs-v0-2015`
    /// profile).
    LinksBytes,
    /// The directory block's exact encoded size (the IPIP-499 `unixfs-v1-2025` profile).
    BlockBytes,
}

/// Past this many bytes (as [`ShardSplit`] reckons them) a directory becomes a HAMT.
pub const SHARD_THRESHOLD: u64 = 262_144;

impl Profile {
    /// Helia's default: 256 KiB chunks, 174 links per node.
    pub const DEFAULT: Profile = Profile {
        chunk_size: 256 * 1024,
        max_links: 174,
        shard_split: ShardSplit::LinksBytes,
        name: "default",
    };
    /// The IPIP-499 `unixfs-v1-2025` profile: 1 MiB chunks, 1024 links per node.
    pub const UNIXFS_V1_2025: Profile = Profile {
        chunk_size: 1024 * 1024,
        max_links: 1024,
        shard_split: ShardSplit::BlockBytes,
        name: "unixfs-v1-2025",
    };
}

impl Default for Profile {
    fn default() -> Self {
        Profile::DEFAULT
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Profile::DEFAULT),
            "unixfs-v1-2025" => Ok(Profile::UNIXFS_V1_2025),
            other => Err(format!(
                "unknown profile `{other}`: use `default` (256 KiB chunks, 174 links) or `unixfs-v1-2025` (1 MiB, 1024)"
            )),
        }
    }
}
