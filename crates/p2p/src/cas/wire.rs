//! The bytes of a `get` answer, both ways, without copying its blocks.
//!
//! A responder writes the answer from parts ([`Frame`]): the CBOR around the blocks, and
//! each large block's bytes as its store gave them. A requester takes a block that is most
//! of the frame it read as a slice of that frame ([`decode_answer`]); smaller ones are
//! copied, so that no block kept holds on to a frame much larger than itself. The bytes are exactly what
//! [`super::encode`] writes and [`super::decode_response`] reads for the same
//! [`Response::Get`]; only a block's bytes are not copied on the way.

use bytes::Bytes;
use cairn_core::cid::Cid;
use serde_bytes::ByteBuf;

use super::{Error, Response, WireBlock, WireCid, decode_response};

const MAP: u8 = 5;
const ARRAY: u8 = 4;
const BYTES: u8 = 2;
const TEXT: u8 = 3;

/// Blocks shorter than this are copied into the CBOR around them rather than written as a
/// part of their own: every write to a stream is a muxer frame, and small ones cost more
/// than the copy.
const INLINE_MAX: usize = 16 * 1024;

/// A frame (length prefix and body) as the parts it is written from, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frame {
    parts: Vec<Bytes>,
    len: usize,
}

impl Frame {
    /// Its bytes in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts to write, in order.
    pub fn parts(&self) -> Vec<&[u8]> {
        self.parts.iter().map(|p| &p[..]).collect()
    }

    /// Its bytes in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

impl From<Vec<u8>> for Frame {
    fn from(v: Vec<u8>) -> Self {
        Self {
            len: v.len(),
            parts: vec![Bytes::from(v)],
        }
    }
}

/// Builds a [`Frame`]: small writes go into a buffer, large blocks become parts.
#[derive(Default)]
struct Parts {
    done: Vec<Bytes>,
    buf: Vec<u8>,
}

impl Parts {
    fn block(&mut self, b: &Bytes) {
        if b.len() < INLINE_MAX {
            return self.buf.extend_from_slice(b);
        }
        if !self.buf.is_empty() {
            self.done.push(Bytes::from(std::mem::take(&mut self.buf)));
        }
        self.done.push(b.clone());
    }

    fn head(&mut self, major: u8, n: u64) {
        head(&mut self.buf, major, n);
    }

    fn text(&mut self, t: &str) {
        self.head(TEXT, t.len() as u64);
        self.buf.extend_from_slice(t.as_bytes());
    }

    fn cid(&mut self, c: &Cid) {
        let b = c.to_bytes();
        self.head(BYTES, b.len() as u64);
        self.buf.extend_from_slice(&b);
    }

    fn cids(&mut self, cids: &[Cid]) {
        self.head(ARRAY, cids.len() as u64);
        for c in cids {
            self.cid(c);
        }
    }

    fn finish(mut self) -> Frame {
        if !self.buf.is_empty() {
            self.done.push(Bytes::from(self.buf));
        }
        Frame {
            len: self.done.iter().map(Bytes::len).sum(),
            parts: self.done,
        }
    }
}

/// The CBOR head of major type `major` with argument `n`, as RFC 8949 §3 writes it
/// (the shortest form, which is what serde's encoder writes).
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..24 => out.push(m | n as u8),
        24..0x100 => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..0x1_0000 => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..0x1_0000_0000 => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn head_len(n: u64) -> usize {
    match n {
        0..24 => 1,
        24..0x100 => 2,
        0x100..0x1_0000 => 3,
        0x1_0000..0x1_0000_0000 => 5,
        _ => 9,
    }
}

fn byte_string_len(n: usize) -> usize {
    head_len(n as u64) + n
}

fn cid_list_len(cids: &[Cid]) -> usize {
    head_len(cids.len() as u64)
        + cids
            .iter()
            .map(|c| byte_string_len(c.encoded_len()))
            .sum::<usize>()
}

/// `{"get": {"blocks": [[cid, data]…], "missing": [cid…], "skipped": [cid…]}}`, framed;
/// each block of [`INLINE_MAX`] bytes or more is a part of its own, not copied.
pub(super) fn encode_get(blocks: &[(Cid, Bytes)], missing: &[Cid], skipped: &[Cid]) -> Frame {
    let key = |t: &str| head_len(t.len() as u64) + t.len();
    let blocks_len = head_len(blocks.len() as u64)
        + blocks
            .iter()
            .map(|(c, d)| 1 + byte_string_len(c.encoded_len()) + byte_string_len(d.len()))
            .sum::<usize>();
    let body_len = 1
        + key("get")
        + 1
        + key("blocks")
        + blocks_len
        + key("missing")
        + cid_list_len(missing)
        + key("skipped")
        + cid_list_len(skipped);
    let mut out = Parts::default();
    cairn_core::varint::put(&mut out.buf, body_len as u64);
    let prefix = out.buf.len();
    out.head(MAP, 1);
    out.text("get");
    out.head(MAP, 3);
    out.text("blocks");
    out.head(ARRAY, blocks.len() as u64);
    for (c, d) in blocks {
        out.head(ARRAY, 2);
        out.cid(c);
        out.head(BYTES, d.len() as u64);
        out.block(d);
    }
    out.text("missing");
    out.cids(missing);
    out.text("skipped");
    out.cids(skipped);
    let frame = out.finish();
    debug_assert_eq!(frame.len(), prefix + body_len);
    frame
}

/// A `get` answer whose large blocks are slices of the frame they came in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetAnswer {
    /// Blocks held, in request order: their CIDs as sent, and their bytes (not verified).
    pub blocks: Vec<(WireCid, Bytes)>,
    /// CIDs not held.
    pub missing: Vec<WireCid>,
    /// CIDs held but left out to keep the answer within its size budget: ask again.
    pub skipped: Vec<WireCid>,
}

/// An answer as a requester reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A `get` answer (also the first frame of a `dag` answer, and each one after it).
    Get(GetAnswer),
    /// Any other response.
    Other(Response),
}

impl Answer {
    /// As a [`Response`] (a get answer's blocks copied out of the frame).
    pub fn into_response(self) -> Response {
        match self {
            Answer::Get(g) => Response::Get {
                blocks: g
                    .blocks
                    .into_iter()
                    .map(|(c, d)| WireBlock(c, ByteBuf::from(d.to_vec())))
                    .collect(),
                missing: g.missing,
                skipped: g.skipped,
            },
            Answer::Other(r) => r,
        }
    }
}

/// An answer from its CBOR body: what [`decode_response`] reads, with a get answer's large
/// blocks left in `body` (a get answer in the shortest form, keys in order, as every cairn peer
/// writes it, is read here; any other form the general decoder reads, at a copy per block).
pub fn decode_answer(body: Bytes) -> Result<Answer, Error> {
    if let Some(g) = (Reader { body: &body, at: 0 }).get_answer() {
        return Ok(Answer::Get(g));
    }
    Ok(match decode_response(&body)? {
        Response::Get {
            blocks,
            missing,
            skipped,
        } => Answer::Get(GetAnswer {
            blocks: blocks
                .into_iter()
                .map(|WireBlock(c, d)| (c, Bytes::from(d.into_vec())))
                .collect(),
            missing,
            skipped,
        }),
        other => Answer::Other(other),
    })
}

/// Reads the one shape [`encode_get`] writes; `None` at the first byte that is not it.
struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.body.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn take(&mut self, n: u64) -> Option<std::ops::Range<usize>> {
        let n = usize::try_from(n).ok()?;
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len())?;
        let r = self.at..end;
        self.at = end;
        Some(r)
    }

    /// The argument of a definite head of major type `major`.
    fn head(&mut self, major: u8) -> Option<u64> {
        let b = self.byte()?;
        if b >> 5 != major {
            return None;
        }
        let n = match b & 31 {
            i @ 0..24 => u64::from(i),
            i @ 24..28 => {
                let r = self.take(1 << (i - 24))?;
                self.body[r]
                    .iter()
                    .fold(0u64, |n, &b| (n << 8) | u64::from(b))
            }
            _ => return None,
        };
        Some(n)
    }

    fn key(&mut self, key: &str) -> Option<()> {
        let n = self.head(TEXT)?;
        let r = self.take(n)?;
        (&self.body[r] == key.as_bytes()).then_some(())
    }

    fn byte_string(&mut self) -> Option<std::ops::Range<usize>> {
        let n = self.head(BYTES)?;
        self.take(n)
    }

    fn cid(&mut self) -> Option<WireCid> {
        let r = self.byte_string()?;
        Some(WireCid(ByteBuf::from(self.body[r].to_vec())))
    }

    /// A block's bytes: a slice of the frame when the block is at least half of it, else a
    /// copy. A block kept (a store may keep it for good) thus never keeps alive more than
    /// twice its size of a frame, whatever else a peer put in it.
    fn block(&mut self) -> Option<Bytes> {
        let r = self.byte_string()?;
        Some(if 2 * r.len() >= self.body.len() {
            self.body.slice(r)
        } else {
            Bytes::copy_from_slice(&self.body[r])
        })
    }

    /// A count of items each at least one byte long, capped at what is left to read (so a
    /// count on the wire allocates no more than the frame holds).
    fn count(&mut self, major: u8) -> Option<usize> {
        let n = self.head(major)?;
        let left = self.body.len() - self.at;
        usize::try_from(n).ok().filter(|&n| n <= left)
    }

    fn cids(&mut self) -> Option<Vec<WireCid>> {
        let n = self.count(ARRAY)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.cid()?);
        }
        Some(out)
    }

    fn get_answer(mut self) -> Option<GetAnswer> {
        (self.head(MAP)? == 1).then_some(())?;
        self.key("get")?;
        (self.head(MAP)? == 3).then_some(())?;
        self.key("blocks")?;
        let n = self.count(ARRAY)?;
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            (self.head(ARRAY)? == 2).then_some(())?;
            let cid = self.cid()?;
            blocks.push((cid, self.block()?));
        }
        self.key("missing")?;
        let missing = self.cids()?;
        self.key("skipped")?;
        let skipped = self.cids()?;
        (self.at == self.body.len()).then_some(GetAnswer {
            blocks,
            missing,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cid as cid;

    fn response(blocks: &[(Cid, Bytes)], missing: &[Cid], skipped: &[Cid]) -> Response {
        Response::Get {
            blocks: blocks
                .iter()
                .map(|(c, d)| WireBlock(c.into(), ByteBuf::from(d.to_vec())))
                .collect(),
            missing: missing.iter().map(WireCid::from).collect(),
            skipped: skipped.iter().map(WireCid::from).collect(),
        }
    }

    #[test]
    fn a_get_answer_is_written_as_serde_writes_it_and_read_without_copying_its_blocks() {
        // Sizes on each side of every CBOR length form and of the inline limit.
        let sizes = [
            0usize, 1, 23, 24, 255, 256, 16_383, 16_384, 65_535, 65_536, 300_000,
        ];
        for k in 0..sizes.len() {
            let blocks: Vec<(Cid, Bytes)> = sizes[..=k]
                .iter()
                .enumerate()
                .map(|(i, &n)| (cid(i as u32), Bytes::from(vec![i as u8; n])))
                .collect();
            let (missing, skipped) = (vec![cid(100), cid(101)], vec![cid(102)]);
            let frame = encode_get(&blocks, &missing, &skipped);
            let expected = response(&blocks, &missing, &skipped);
            let body = super::super::encode(&expected);
            let mut framed = crate::framing::prefix(body.len());
            framed.extend_from_slice(&body);
            assert_eq!(frame.to_vec(), framed, "{k} blocks");
            assert_eq!(frame.len(), framed.len());
            // The large blocks are the store's bytes, not copies.
            for (_, d) in blocks.iter().filter(|(_, d)| d.len() >= INLINE_MAX) {
                assert!(
                    frame.parts.iter().any(|p| p.as_ptr() == d.as_ptr()),
                    "a {} byte block was copied",
                    d.len()
                );
            }

            let body = Bytes::from(body);
            let answer = decode_answer(body.clone()).unwrap();
            assert_eq!(answer.clone().into_response(), expected);
            let Answer::Get(g) = answer else {
                panic!("not a get answer")
            };
            // A block that is most of its frame is a slice of it; the others are copies, so
            // that none keeps the frame alive.
            let within = |d: &Bytes| {
                let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
                (start..end).contains(&(d.as_ptr() as usize))
            };
            for (_, d) in g.blocks.iter().filter(|(_, d)| !d.is_empty()) {
                assert_eq!(
                    within(d),
                    2 * d.len() >= body.len(),
                    "a {} byte block in a {} byte frame",
                    d.len(),
                    body.len()
                );
            }
        }
    }

    #[test]
    fn any_other_form_is_read_by_the_general_decoder_and_bad_bytes_are_an_error() {
        let expected = response(&[(cid(1), Bytes::from_static(b"abc"))], &[], &[cid(2)]);
        let body = super::super::encode(&expected);
        // The same answer with its keys in another order.
        let reordered = {
            let Response::Get {
                blocks,
                missing,
                skipped,
            } = expected.clone()
            else {
                unreachable!()
            };
            let v = ciborium::Value::Map(vec![(
                ciborium::Value::Text("get".into()),
                ciborium::Value::Map(vec![
                    (
                        ciborium::Value::Text("skipped".into()),
                        ciborium::Value::serialized(&skipped).unwrap(),
                    ),
                    (
                        ciborium::Value::Text("missing".into()),
                        ciborium::Value::serialized(&missing).unwrap(),
                    ),
                    (
                        ciborium::Value::Text("blocks".into()),
                        ciborium::Value::serialized(&blocks).unwrap(),
                    ),
                ]),
            )]);
            super::super::encode(&v)
        };
        assert_ne!(reordered, body);
        assert_eq!(
            decode_answer(Bytes::from(reordered))
                .unwrap()
                .into_response(),
            expected
        );
        // `blocks` as an indefinite-length array (0x9f … 0xff).
        let blocks_at = body.windows(7).position(|w| w == b"\x66blocks").unwrap() + 7;
        assert_eq!(body[blocks_at], 0x81);
        let mut indefinite = body[..blocks_at].to_vec();
        indefinite.push(0x9f);
        let end = body.windows(8).position(|w| w == b"\x67missing").unwrap();
        indefinite.extend_from_slice(&body[blocks_at + 1..end]);
        indefinite.push(0xff);
        indefinite.extend_from_slice(&body[end..]);
        assert_eq!(
            decode_answer(Bytes::from(indefinite))
                .unwrap()
                .into_response(),
            expected
        );
        // `blocks`' count in a longer form than needed (1 as a one-byte argument).
        let mut longer = body[..blocks_at].to_vec();
        longer.extend_from_slice(&[0x98, 0x01]);
        longer.extend_from_slice(&body[blocks_at + 1..]);
        assert_eq!(decode_response(&longer).unwrap(), expected);
        assert_eq!(
            decode_answer(Bytes::from(longer)).unwrap().into_response(),
            expected
        );

        // Other responses pass through.
        let err = super::super::error(4, "busy");
        assert_eq!(
            decode_answer(Bytes::from(super::super::encode(&err))).unwrap(),
            Answer::Other(err)
        );
        // Cut anywhere, or with a byte after it, it is an error, not a panic.
        for cut in 0..body.len() {
            assert!(decode_answer(Bytes::copy_from_slice(&body[..cut])).is_err());
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(decode_answer(Bytes::from(trailing)).is_err());
        // A count far past the frame is refused before anything is allocated for it.
        let mut huge = body[..blocks_at].to_vec();
        huge.extend_from_slice(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode_answer(Bytes::from(huge)).is_err());
    }
}
