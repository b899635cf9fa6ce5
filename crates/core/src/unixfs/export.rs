use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt, TryStreamExt};

use super::pb::{DataType, Node, UnixFs};
use crate::block::Block;
use crate::cid::{Cid, Codec};
use crate::source::{ContentSource, Context, SourceError};

/// Why a file could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A block could not be retrieved.
    #[error("could not retrieve block {cid}: {source}")]
    Retrieve {
        /// The block.
        cid: Cid,
        /// What the source said.
        source: Box<SourceError>,
    },
    /// The DAG is not a well-formed UnixFS file.
    #[error("{cid} is not a valid UnixFS file: {reason}")]
    Malformed {
        /// The offending block.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// The root is a UnixFS directory or another non-file node.
    #[error(
        "{cid} is a UnixFS {kind}, not a file: list a directory with ls, or name a file in it (CID/path)"
    )]
    NotAFile {
        /// The root.
        cid: Cid,
        /// The node type.
        kind: &'static str,
    },
    /// The range starts beyond the end of the file.
    #[error("range starts at byte {start} but the file has only {size} bytes")]
    RangeNotSatisfiable {
        /// Requested start.
        start: u64,
        /// File size.
        size: u64,
    },
}

/// A byte range of a file: `offset` and an optional `length` (to the end when `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Number of bytes; `None` for the rest of the file.
    pub length: Option<u64>,
}

impl Range {
    /// The whole file.
    pub const ALL: Range = Range {
        offset: 0,
        length: None,
    };
}

/// What one node of a file tree holds.
struct Parsed {
    inline: Bytes,
    children: Vec<(Cid, u64)>,
    size: u64,
}

fn parse(block: &Block) -> Result<Parsed, Error> {
    let cid = *block.cid();
    let malformed = |reason: String| Error::Malformed { cid, reason };
    if block.codec() == Codec::Raw {
        return Ok(Parsed {
            inline: block.data().clone(),
            children: Vec::new(),
            size: block.len() as u64,
        });
    }
    let node = Node::decode(block.data()).map_err(|e| malformed(e.to_string()))?;
    let data = node
        .data
        .as_ref()
        .ok_or_else(|| malformed("dag-pb node has no UnixFS data".into()))?;
    let fs = UnixFs::decode(data).map_err(|e| malformed(e.to_string()))?;
    let kind = match fs.kind {
        DataType::File | DataType::Raw => None,
        DataType::Directory => Some("directory"),
        DataType::HamtShard => Some("sharded directory"),
        DataType::Symlink => Some("symlink"),
        DataType::Metadata => Some("metadata node"),
    };
    if let Some(kind) = kind {
        return Err(Error::NotAFile { cid, kind });
    }
    if fs.blocksizes.len() != node.links.len() {
        return Err(malformed(format!(
            "{} links but {} blocksizes",
            node.links.len(),
            fs.blocksizes.len()
        )));
    }
    let inline = fs.data.unwrap_or_default();
    let size = fs
        .blocksizes
        .iter()
        .try_fold(inline.len() as u64, |a, b| a.checked_add(*b));
    let size = size.ok_or_else(|| malformed("sizes overflow".into()))?;
    if let Some(fsz) = fs.filesize
        && fsz != size
    {
        return Err(malformed(format!(
            "filesize {fsz} but parts add up to {size}"
        )));
    }
    Ok(Parsed {
        inline,
        children: node
            .links
            .iter()
            .map(|l| l.cid)
            .zip(fs.blocksizes)
            .collect(),
        size,
    })
}

async fn fetch<S: ContentSource + ?Sized>(
    src: &S,
    cid: Cid,
    ctx: &Context,
) -> Result<Block, Error> {
    src.retrieve(&cid, ctx)
        .await
        .map_err(|source| Error::Retrieve {
            cid,
            source: Box::new(source),
        })
}

/// The size of the file at `root`, from its root block alone.
pub async fn file_size<S: ContentSource + ?Sized>(
    src: &S,
    root: &Cid,
    ctx: &Context,
) -> Result<u64, Error> {
    Ok(parse(&fetch(src, *root, ctx).await?)?.size)
}

/// A piece of output: bytes in hand, or a raw leaf to fetch and slice.
enum Piece {
    Bytes(Bytes),
    Leaf {
        cid: Cid,
        size: u64,
        skip: u64,
        take: u64,
    },
}

struct Frame {
    children: std::vec::IntoIter<(Cid, u64)>,
    offset: u64,
}

struct Walk<'a, S: ?Sized> {
    src: &'a S,
    ctx: &'a Context,
    start: u64,
    end: u64,
    stack: Vec<Frame>,
}

/// Streams the bytes of the UnixFS file (or raw block) at `root`, in order, limited to
/// `range`. Leaves outside the range are never fetched; up to `window` leaves are fetched in
/// parallel. Every block is verified by the source before its bytes are used.
pub fn export<'a, S: ContentSource + ?Sized>(
    src: &'a S,
    root: Cid,
    range: Range,
    window: usize,
    ctx: &'a Context,
) -> impl Stream<Item = Result<Bytes, Error>> + 'a {
    let first = async move {
        let block = fetch(src, root, ctx).await?;
        let parsed = parse(&block)?;
        if range.offset > parsed.size || (range.offset == parsed.size && parsed.size > 0) {
            return Err(Error::RangeNotSatisfiable {
                start: range.offset,
                size: parsed.size,
            });
        }
        let end = match range.length {
            Some(l) => range.offset.saturating_add(l).min(parsed.size),
            None => parsed.size,
        };
        let mut walk = Walk {
            src,
            ctx,
            start: range.offset,
            end,
            stack: Vec::new(),
        };
        let first = walk.enter(parsed, 0);
        Ok((first, walk))
    };
    stream::once(first)
        .map_ok(|(first, walk)| {
            let rest = stream::try_unfold(walk, |mut w| async move {
                let next = w.next().await?;
                Ok(next.map(|p| (p, w)))
            });
            stream::iter(first.map(Ok)).chain(rest)
        })
        .try_flatten()
        .map(move |piece| async move {
            match piece? {
                Piece::Bytes(b) => Ok(b),
                Piece::Leaf {
                    cid,
                    size,
                    skip,
                    take,
                } => {
                    let block = fetch(src, cid, ctx).await?;
                    let parsed = parse(&block)?;
                    if parsed.size != size || !parsed.children.is_empty() {
                        return Err(Error::Malformed {
                            cid,
                            reason: format!(
                                "leaf has {} bytes, its parent says {size}",
                                parsed.size
                            ),
                        });
                    }
                    Ok(parsed.inline.slice(skip as usize..(skip + take) as usize))
                }
            }
        })
        .buffered(window.max(1))
        .try_filter(|b| std::future::ready(!b.is_empty()))
}

impl<S: ContentSource + ?Sized> Walk<'_, S> {
    /// Pushes a node's children; returns its inline bytes within the range.
    fn enter(&mut self, node: Parsed, offset: u64) -> Option<Piece> {
        let inline_end = offset + node.inline.len() as u64;
        let piece = self.clip(offset, inline_end).map(|(skip, take)| {
            Piece::Bytes(node.inline.slice(skip as usize..(skip + take) as usize))
        });
        self.stack.push(Frame {
            children: node.children.into_iter(),
            offset: inline_end,
        });
        piece
    }

    /// (skip, take) of the part of [from, to) inside the range.
    fn clip(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let s = from.max(self.start);
        let e = to.min(self.end);
        (s < e).then(|| (s - from, e - s))
    }

    async fn next(&mut self) -> Result<Option<Piece>, Error> {
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some((cid, size)) = frame.children.next() else {
                self.stack.pop();
                continue;
            };
            let offset = frame.offset;
            frame.offset += size;
            let Some((skip, take)) = self.clip(offset, offset + size) else {
                if offset >= self.end {
                    self.stack.clear();
                }
                continue;
            };
            if cid.codec() == Codec::Raw.code() {
                return Ok(Some(Piece::Leaf {
                    cid,
                    size,
                    skip,
                    take,
                }));
            }
            let block = fetch(self.src, cid, self.ctx).await?;
            let parsed = parse(&block)?;
            if parsed.size != size {
                return Err(Error::Malformed {
                    cid,
                    reason: format!("node holds {} bytes, its parent says {size}", parsed.size),
                });
            }
            if let Some(p) = self.enter(parsed, offset) {
                return Ok(Some(p));
            }
        }
    }
}
