//! Answering requests from a store, and the content index sent with `caps`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cairn_core::cid::Cid;
use cairn_core::source::routing::ContentIndex;
use cairn_core::store::BlockStore;
use serde_bytes::ByteBuf;

use crate::budget::Permit;

use super::{Capabilities, Limits, Request, Response, WireBlock, WireBloom, WireCid, code, error};

/// A bloom filter of up to `max` CIDs held in `store` (the first `max` in its order).
pub async fn held_index<S: BlockStore>(
    store: &S,
    max: usize,
) -> Result<ContentIndex, cairn_core::store::Error> {
    let total = store.stat().await?.blocks;
    let mut ix = ContentIndex::new((total as usize).min(max));
    let mut after: Option<Cid> = None;
    let mut seen = 0;
    while seen < max {
        let page = store.list(after.as_ref(), 4096.min(max - seen)).await?;
        let Some(last) = page.last().copied() else {
            break;
        };
        for c in &page {
            ix.insert(c);
        }
        seen += page.len();
        after = Some(last);
    }
    Ok(ix)
}

/// How long a computed content index is reused for `caps` answers.
const INDEX_REFRESH: Duration = Duration::from_secs(10);

/// Most CIDs put in the content index sent with `caps`.
const INDEX_MAX_CIDS: usize = 1 << 20;

/// The `caps` answer: the node's capabilities with a bloom filter of what its store holds,
/// recomputed at most every 10 s (listing a large store is not free).
#[derive(Debug)]
pub struct CapsCache {
    caps: Capabilities,
    index: Mutex<Option<(cairn_core::rt::Instant, WireBloom)>>,
}

impl CapsCache {
    /// Answers `caps` with `caps` plus a fresh enough index.
    pub fn new(caps: Capabilities) -> Self {
        Self {
            caps,
            index: Mutex::new(None),
        }
    }

    /// The answer; without an index if the store cannot be listed.
    pub async fn get<S: BlockStore>(&self, store: &S) -> Capabilities {
        let cached = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < INDEX_REFRESH)
            .map(|(_, b)| b.clone());
        let bloom = match cached {
            Some(b) => Some(b),
            None => match held_index(store, INDEX_MAX_CIDS).await {
                Ok(ix) => {
                    let b = WireBloom::from(&ix);
                    *self.index.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((cairn_core::rt::Instant::now(), b.clone()));
                    Some(b)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the store for the content index");
                    None
                }
            },
        };
        Capabilities {
            bloom,
            ..self.caps.clone()
        }
    }
}

fn cids(list: &[WireCid]) -> Result<Vec<Cid>, Response> {
    list.iter()
        .map(|c| {
            c.cid().ok_or_else(|| {
                error(
                    code::BAD_REQUEST,
                    "a CID in the request is not a valid binary CID",
                )
            })
        })
        .collect()
}

/// Answers one request from `store` (`caps` with `caps` as given).
pub async fn answer<S: BlockStore>(
    store: &S,
    req: Request,
    limits: &Limits,
    caps: &Capabilities,
) -> Response {
    let out = match req {
        Request::Get { cids: wanted } => get(store, &wanted, limits).await,
        Request::Have { cids: asked } => have(store, &asked, limits).await,
        Request::List { after, limit } => list(store, after, limit, limits).await,
        Request::Caps {} => Ok(Response::Caps(caps.clone())),
        // Answered in one frame here (its root only); the server pushes what is below it.
        Request::Dag { root } => get(store, std::slice::from_ref(&root), limits).await,
    };
    out.unwrap_or_else(|refusal| refusal)
}

/// Refuses a list of more than `max` CIDs.
fn at_most(kind: &str, max: usize, got: usize) -> Result<(), Response> {
    if got > max {
        return Err(error(
            code::TOO_MANY,
            format!("{kind} takes at most {max} CIDs, got {got}"),
        ));
    }
    Ok(())
}

fn internal(e: cairn_core::store::Error) -> Response {
    error(code::INTERNAL, e.to_string())
}

/// What a `get` gathered: blocks within the budget, in request order, and the rest.
struct Gathered {
    blocks: Vec<(Cid, bytes::Bytes)>,
    missing: Vec<Cid>,
    skipped: Vec<Cid>,
}

/// Gathers the blocks of a `get`, at most `limits.get_budget` bytes of them. With `room`
/// (the answer's permit and the framing it must also cover), each block is read only once
/// the permit holds room for it beyond those gathered (its size when the store knows it
/// without reading, [`BlockStore::size_hint`], else the largest a block can be): the permit
/// grows as the answer does, and a block it cannot grow for is `skipped`.
async fn gather<S: BlockStore>(
    store: &S,
    wanted: &[WireCid],
    limits: &Limits,
    mut room: Option<(&mut Permit, usize)>,
) -> Result<Gathered, Response> {
    at_most("get", limits.max_get, wanted.len())?;
    let wanted = cids(wanted)?;
    let mut out = Gathered {
        blocks: Vec::new(),
        missing: Vec::new(),
        skipped: Vec::new(),
    };
    let cap = limits.get_budget;
    let mut used = 0usize;
    for cid in wanted {
        let left = cap - used;
        if left == 0 {
            out.skipped.push(cid);
            continue;
        }
        if let Some((permit, overhead)) = room.as_mut() {
            // Room for this block: its size when the store knows it, else the largest.
            let next = store
                .size_hint(&cid)
                .unwrap_or(cairn_core::MAX_BLOCK_SIZE)
                .min(left);
            let need = used + next + *overhead;
            if !permit.try_grow(need.saturating_sub(permit.bytes())) {
                out.skipped.push(cid);
                continue;
            }
        }
        let held = match store.get(&cid).await {
            // A corrupt copy is never served (the store removed it): not held any more.
            Err(cairn_core::store::Error::Corrupt { .. }) => None,
            other => other.map_err(internal)?,
        };
        match held {
            Some(b) if b.len() <= left => {
                used += b.len();
                out.blocks.push((cid, b.data().clone()));
            }
            Some(_) => out.skipped.push(cid),
            None => out.missing.push(cid),
        }
    }
    if let Some((permit, overhead)) = room {
        permit.shrink(used + overhead);
    }
    Ok(out)
}

async fn get<S: BlockStore>(
    store: &S,
    wanted: &[WireCid],
    limits: &Limits,
) -> Result<Response, Response> {
    let g = gather(store, wanted, limits, None).await?;
    Ok(Response::Get {
        blocks: g
            .blocks
            .into_iter()
            .map(|(c, d)| WireBlock((&c).into(), ByteBuf::from(d.to_vec())))
            .collect(),
        missing: g.missing.iter().map(WireCid::from).collect(),
        skipped: g.skipped.iter().map(WireCid::from).collect(),
    })
}

/// Answers a `get` as its whole frame (length prefix and CBOR body, the same bytes
/// [`super::encode`] gives for the [`Response`]), or the error [`Response`] to send instead.
/// The blocks' bytes are held in `permit`, which grows block by block (blocks it cannot
/// grow for are `skipped`) and ends holding the frame's size.
///
/// The frame's large blocks are the store's bytes, not copies ([`super::Frame`]), so the
/// answer holds each block once: building the [`Response`] and encoding it would hold
/// every block twice and copy it twice.
pub async fn get_frame<S: BlockStore>(
    store: &S,
    wanted: &[WireCid],
    limits: &Limits,
    permit: &mut Permit,
) -> Result<GetFrame, Response> {
    let overhead = get_overhead(wanted.len());
    let g = gather(store, wanted, limits, Some((permit, overhead))).await?;
    Ok(framed_get(g, permit))
}

/// The frame of what a `get` gathered, held in `permit`.
fn framed_get(g: Gathered, permit: &mut Permit) -> GetFrame {
    let blocks = g.blocks.len();
    let block_bytes = g.blocks.iter().map(|(_, d)| d.len()).sum();
    let frame = super::wire::encode_get(&g.blocks, &g.missing, &g.skipped);
    // Lists of CIDs alone can outgrow what was reserved for reading; the frame is what is
    // held from here on (best effort if the budget is full: it is small and short-lived).
    let _ = permit.try_grow(frame.len().saturating_sub(permit.bytes()));
    permit.shrink(frame.len());
    GetFrame {
        frame,
        blocks,
        block_bytes,
    }
}

/// Block bytes a frame pushed below a `dag` root holds at most (one block more when the
/// first is larger): small enough that the requester has blocks to verify while the next
/// frames arrive.
pub const BELOW_FRAME: usize = 1024 * 1024;

/// Most blocks one `dag` answer pushes: past that, the requester asks for the rest.
pub const BELOW_MAX_BLOCKS: usize = 4_000_000;

/// The blocks of a DAG below its root that a `dag` answer pushes ([`super::pushed_links`]:
/// its structure and its small files, not a file's chunks), breadth first, as the frames
/// after its first: what the store holds of each level (a block it lacks, and what is below
/// that block, is left out: the requester asks for them elsewhere).
#[derive(Debug)]
pub struct Below {
    queue: std::collections::VecDeque<Cid>,
    /// Blocks queued so far (at most [`BELOW_MAX_BLOCKS`]).
    queued: usize,
}

/// Why a `dag` answer stops before the end of the DAG.
#[derive(Debug, thiserror::Error)]
pub enum BelowError {
    /// The answer budget has no room for the next block.
    #[error("no room in the answer budget")]
    NoRoom,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] cairn_core::store::Error),
}

impl Below {
    /// The first frame of a `dag` answer for `root`, the answer `get [root]` gets (held in
    /// `permit` as [`get_frame`] holds it), and, when it carries the root, what is below it:
    /// the root is read once for both.
    pub async fn start<S: BlockStore>(
        store: &S,
        root: &WireCid,
        limits: &Limits,
        permit: &mut Permit,
    ) -> Result<(GetFrame, Option<Self>), Response> {
        let wanted = std::slice::from_ref(root);
        let g = gather(store, wanted, limits, Some((permit, get_overhead(1)))).await?;
        let below = g.blocks.first().map(|(cid, data)| {
            let mut below = Self {
                queue: std::collections::VecDeque::new(),
                queued: 0,
            };
            below.links(cid, data);
            below
        });
        Ok((framed_get(g, permit), below))
    }

    fn links(&mut self, cid: &Cid, data: &bytes::Bytes) {
        for l in super::pushed_links(cid, data) {
            if self.queued >= BELOW_MAX_BLOCKS {
                return;
            }
            self.queued += 1;
            self.queue.push_back(l);
        }
    }

    /// The next frame: blocks next in breadth-first order, [`BELOW_FRAME`] bytes of them,
    /// held in `permit` (grown block by block, ending at the frame's size); `None` once
    /// every block below the root was sent or left out.
    pub async fn next_frame<S: BlockStore>(
        &mut self,
        store: &S,
        limits: &Limits,
        permit: &mut Permit,
    ) -> Result<Option<GetFrame>, BelowError> {
        let mut blocks = Vec::new();
        let mut used = 0usize;
        while used < BELOW_FRAME && blocks.len() < limits.max_get {
            let Some(cid) = self.queue.pop_front() else {
                break;
            };
            let next = store
                .size_hint(&cid)
                .unwrap_or(cairn_core::MAX_BLOCK_SIZE)
                .min(limits.get_budget);
            let need = used + next + get_overhead(blocks.len() + 1);
            if !permit.try_grow(need.saturating_sub(permit.bytes())) {
                self.queue.push_front(cid);
                if blocks.is_empty() {
                    return Err(BelowError::NoRoom);
                }
                break;
            }
            let held = match store.get(&cid).await {
                Err(cairn_core::store::Error::Corrupt { .. }) => None,
                other => other?,
            };
            let Some(b) = held else { continue };
            let raw = cid.codec() == cairn_core::cid::Codec::Raw.code();
            if (raw && b.len() as u64 > super::PUSHED_RAW_MAX)
                || b.len() > limits.get_budget.saturating_sub(used)
            {
                // Its link understated its size (the requester asks for it with `get`), or
                // it is larger than a frame may carry.
                continue;
            }
            self.links(&cid, b.data());
            used += b.len();
            blocks.push((cid, b.data().clone()));
        }
        if blocks.is_empty() {
            permit.shrink(0);
            return Ok(None);
        }
        let count = blocks.len();
        let frame = super::wire::encode_get(&blocks, &[], &[]);
        permit.shrink(frame.len());
        Ok(Some(GetFrame {
            frame,
            blocks: count,
            block_bytes: used,
        }))
    }
}

/// Framing bytes a `get` answer of `cids` CIDs may need beyond its blocks: each CID at most
/// twice (in a block and in a list) with its CBOR head, plus the envelope.
pub fn get_overhead(cids: usize) -> usize {
    1024 + cids * 2 * (cairn_core::cid::MAX_BINARY_LEN + 4)
}

/// A `get` answer as [`get_frame`] builds it.
#[derive(Debug)]
pub struct GetFrame {
    /// The frame: length prefix and CBOR body.
    pub frame: super::Frame,
    /// Blocks in it.
    pub blocks: usize,
    /// Their bytes.
    pub block_bytes: usize,
}

async fn have<S: BlockStore>(
    store: &S,
    asked: &[WireCid],
    limits: &Limits,
) -> Result<Response, Response> {
    at_most("have", limits.max_have, asked.len())?;
    let asked = cids(asked)?;
    let mut bitmap = vec![0u8; asked.len().div_ceil(8)];
    for (i, cid) in asked.iter().enumerate() {
        if store.has(cid).await.map_err(internal)? {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    Ok(Response::Have {
        bitmap: ByteBuf::from(bitmap),
    })
}

async fn list<S: BlockStore>(
    store: &S,
    after: Option<WireCid>,
    limit: u32,
    limits: &Limits,
) -> Result<Response, Response> {
    let after = match after.map(|a| a.cid()) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            return Err(error(
                code::BAD_REQUEST,
                "`after` is not a valid binary CID",
            ));
        }
    };
    let limit = (limit as usize).min(limits.max_list);
    let mut page = store
        .list(after.as_ref(), limit + 1)
        .await
        .map_err(internal)?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok(Response::List {
        cids: page.iter().map(WireCid::from).collect(),
        more,
    })
}
