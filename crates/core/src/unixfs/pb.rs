//! The two protobuf messages UnixFS needs, encoded and decoded by hand: DAG-PB's `PBNode`
//! (with `PBLink`) and UnixFS's `Data`.
//!
//! ```text
//! message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
//! message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }   // Links written first
//! message Data { required DataType Type = 1; optional bytes Data = 2; optional uint64 filesize = 3;
//!                repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
//!                optional uint32 mode = 7; optional UnixTime mtime = 8; }
//! ```
//! Encoding follows what the reference implementations write (links before data, fields in
//! number order, `blocksizes` unpacked, an empty `Name` present), so that CIDs agree. Decoding
//! accepts any field order and packed `blocksizes`, and never panics on malformed input.

use bytes::Bytes;

use crate::cid::Cid;

pub use crate::protobuf::DecodeError;
use crate::protobuf::{Reader, err, put_bytes, put_fixed32, put_uint};

/// A DAG-PB link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The child's CID.
    pub cid: Cid,
    /// The link name (empty for file chunks).
    pub name: String,
    /// Cumulative size of the child's DAG in bytes.
    pub tsize: Option<u64>,
}

/// A DAG-PB node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Links, in order.
    pub links: Vec<Link>,
    /// The node's data (a UnixFS `Data` message for UnixFS).
    pub data: Option<Bytes>,
}

/// UnixFS node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DataType {
    Raw = 0,
    Directory = 1,
    File = 2,
    Metadata = 3,
    Symlink = 4,
    HamtShard = 5,
}

/// The UnixFS `Data` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixFs {
    /// Node type.
    pub kind: DataType,
    /// Inline file bytes; for a HAMT shard, its bitfield.
    pub data: Option<Bytes>,
    /// Total file size under this node.
    pub filesize: Option<u64>,
    /// File size of each child, in link order.
    pub blocksizes: Vec<u64>,
    /// A HAMT shard's hash function (multicodec: `0x22`, murmur3-x64-64).
    pub hash_type: Option<u64>,
    /// A HAMT shard's width.
    pub fanout: Option<u64>,
    /// Unix permission bits, when given (`None`: 0644 for files, 0755 for directories).
    pub mode: Option<u32>,
    /// Modification time, when given.
    pub mtime: Option<Mtime>,
}

/// A UnixFS modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mtime {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds past `secs` (1 to 999,999,999; `None` for none).
    pub nsecs: Option<u32>,
}

impl Mtime {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        // int64: a negative number is its two's complement, ten bytes as a varint.
        put_uint(&mut out, 1, self.secs as u64);
        if let Some(n) = self.nsecs {
            put_fixed32(&mut out, 2, n);
        }
        out
    }

    fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        const W: &str = "UnixFS mtime";
        let mut r = Reader::new(buf, W);
        let mut t = Mtime::default();
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 0) => t.secs = r.varint()? as i64,
                (2, 5) => t.nsecs = Some(r.fixed32()?),
                (_, w) => r.skip(w)?,
            }
        }
        Ok(t)
    }
}

impl Node {
    /// Encodes the node in canonical DAG-PB form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.links.len() * 48 + 64);
        let mut link_buf = Vec::with_capacity(64);
        for l in &self.links {
            link_buf.clear();
            put_bytes(&mut link_buf, 1, &l.cid.to_bytes());
            put_bytes(&mut link_buf, 2, l.name.as_bytes());
            if let Some(t) = l.tsize {
                put_uint(&mut link_buf, 3, t);
            }
            put_bytes(&mut out, 2, &link_buf);
        }
        if let Some(d) = &self.data {
            put_bytes(&mut out, 1, d);
        }
        out
    }

    /// Decodes a DAG-PB node.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        const W: &str = "dag-pb node";
        let mut r = Reader::new(buf, W);
        let mut node = Node::default();
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 2) => node.data = Some(r.bytes()?),
                (2, 2) => {
                    let lb = r.bytes()?;
                    node.links.push(decode_link(&lb)?);
                }
                _ => return Err(err(W, "unknown field")),
            }
        }
        Ok(node)
    }
}

fn decode_link(buf: &Bytes) -> Result<Link, DecodeError> {
    const W: &str = "dag-pb link";
    let mut r = Reader::new(buf, W);
    let (mut cid, mut name, mut tsize) = (None, String::new(), None);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => {
                let b = r.bytes()?;
                cid = Some(Cid::try_from(&b[..]).map_err(|_| err(W, "invalid CID in Hash"))?);
            }
            (2, 2) => {
                name = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| err(W, "Name is not UTF-8"))?;
            }
            (3, 0) => tsize = Some(r.varint()?),
            _ => return Err(err(W, "unknown field")),
        }
    }
    Ok(Link {
        cid: cid.ok_or(err(W, "missing Hash"))?,
        name,
        tsize,
    })
}

impl UnixFs {
    /// A file node with these children sizes and no inline data.
    pub fn file(blocksizes: Vec<u64>) -> Self {
        Self {
            filesize: Some(blocksizes.iter().sum()),
            blocksizes,
            ..Self::of(DataType::File)
        }
    }

    /// A message of `kind` with no other field set.
    pub fn of(kind: DataType) -> Self {
        Self {
            kind,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
            mode: None,
            mtime: None,
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.blocksizes.len() * 5);
        put_uint(&mut out, 1, self.kind as u64);
        if let Some(d) = self.data.as_ref().filter(|d| !d.is_empty()) {
            put_bytes(&mut out, 2, d);
        }
        if let Some(fs) = self.filesize {
            put_uint(&mut out, 3, fs);
        }
        for b in &self.blocksizes {
            put_uint(&mut out, 4, *b);
        }
        if let Some(h) = self.hash_type {
            put_uint(&mut out, 5, h);
        }
        if let Some(f) = self.fanout {
            put_uint(&mut out, 6, f);
        }
        if let Some(m) = self.mode {
            put_uint(&mut out, 7, u64::from(m));
        }
        if let Some(t) = &self.mtime {
            put_bytes(&mut out, 8, &t.encode());
        }
        out
    }

    /// Decodes the message, skipping fields it does not know.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        const W: &str = "UnixFS data";
        let mut r = Reader::new(buf, W);
        let (mut kind, mut data, mut filesize, mut blocksizes) = (None, None, None, Vec::new());
        let mut m = Self::of(DataType::Raw);
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 0) => {
                    kind = Some(match r.varint()? {
                        0 => DataType::Raw,
                        1 => DataType::Directory,
                        2 => DataType::File,
                        3 => DataType::Metadata,
                        4 => DataType::Symlink,
                        5 => DataType::HamtShard,
                        _ => return Err(err(W, "unknown Type")),
                    })
                }
                (2, 2) => data = Some(r.bytes()?),
                (3, 0) => filesize = Some(r.varint()?),
                (4, 0) => blocksizes.push(r.varint()?),
                (4, 2) => {
                    let packed = r.bytes()?;
                    let mut pr = Reader::new(&packed, W);
                    while !pr.done() {
                        blocksizes.push(pr.varint()?);
                    }
                }
                (5, 0) => m.hash_type = Some(r.varint()?),
                (6, 0) => m.fanout = Some(r.varint()?),
                (7, 0) => m.mode = Some(r.varint()? as u32),
                (8, 2) => m.mtime = Some(Mtime::decode(&r.bytes()?)?),
                (_, w) => r.skip(w)?,
            }
        }
        Ok(Self {
            kind: kind.ok_or(err(W, "missing Type"))?,
            data,
            filesize,
            blocksizes,
            ..m
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{Codec, HashAlg, of};

    #[test]
    fn node_roundtrip() {
        let c = of(Codec::Raw, HashAlg::Sha2_256, b"a");
        let n = Node {
            links: vec![Link {
                cid: c,
                name: String::new(),
                tsize: Some(1),
            }],
            data: Some(Bytes::from(UnixFs::file(vec![1]).encode())),
        };
        let enc = Bytes::from(n.encode());
        assert_eq!(Node::decode(&enc).unwrap(), n);
        let u = UnixFs::decode(n.data.as_ref().unwrap()).unwrap();
        assert_eq!(
            (u.kind, u.filesize, u.blocksizes),
            (DataType::File, Some(1), vec![1])
        );
    }

    #[test]
    fn empty_file_unixfs_bytes_match_reference() {
        // The well-known encoding of an empty UnixFS file: Type=File, filesize=0.
        assert_eq!(UnixFs::file(vec![]).encode(), vec![0x08, 0x02, 0x18, 0x00]);
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let b = Bytes::from(data);
            let _ = Node::decode(&b);
            let _ = UnixFs::decode(&b);
        }
    }
}
