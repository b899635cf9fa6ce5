//! `/cas/1.0.0`: cairn's peer protocol for blocks.
//!
//! One request per stream: the dialer opens a stream with [`PROTOCOL_NAME`], writes one
//! request frame and closes its write side; the listener answers with one response frame and
//! closes. A frame is an unsigned LEB128 varint length followed by that many bytes of CBOR
//! holding one message: a map with a single key naming the message type. The full
//! specification, with examples, is `docs/protocol.md`.
//!
//! Limits ([`Limits`]) are enforced on both sides before anything is allocated: a frame
//! longer than the limit is refused without reading it.

use std::io;

use cairn_core::cid::Cid;
use cairn_core::source::routing::ContentIndex;
use cairn_core::store::BlockStore;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol id.
pub const PROTOCOL_NAME: &str = "/cas/1.0.0";

/// The libp2p protocol id.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new(PROTOCOL_NAME);

/// The largest block a `/cas` response may carry (the core's block limit).
pub const MAX_BLOCK_SIZE: usize = cairn_core::MAX_BLOCK_SIZE;

/// Size and count limits of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request frame (bytes of CBOR).
    pub max_request: usize,
    /// Largest response frame.
    pub max_response: usize,
    /// CIDs in one `get`.
    pub max_get: usize,
    /// CIDs in one `have`.
    pub max_have: usize,
    /// CIDs in one `list` page.
    pub max_list: usize,
    /// Block bytes in one `get` response; blocks past it are listed as `skipped`.
    pub get_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request: 64 * 1024,
            max_response: 8 * 1024 * 1024 + 64 * 1024,
            max_get: 256,
            max_have: 1024,
            max_list: 1024,
            get_budget: 8 * 1024 * 1024,
        }
    }
}

/// A CID on the wire: its binary form as a CBOR byte string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireCid(pub ByteBuf);

impl From<&Cid> for WireCid {
    fn from(c: &Cid) -> Self {
        WireCid(ByteBuf::from(c.to_bytes()))
    }
}

impl WireCid {
    /// The CID, if the bytes are one.
    pub fn cid(&self) -> Option<Cid> {
        Cid::try_from(self.0.as_slice()).ok()
    }
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Blocks by CID.
    Get {
        /// The CIDs wanted.
        cids: Vec<WireCid>,
    },
    /// Which of these CIDs the peer holds.
    Have {
        /// The CIDs asked about.
        cids: Vec<WireCid>,
    },
    /// A page of the CIDs the peer holds.
    List {
        /// Start after this CID (`None`: from the start).
        after: Option<WireCid>,
        /// At most this many.
        limit: u32,
    },
    /// The peer's capabilities.
    Caps {},
}

impl Request {
    /// The message type's name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::Have { .. } => "have",
            Request::List { .. } => "list",
            Request::Caps {} => "caps",
        }
    }
}

/// A block on the wire: `[cid, data]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlock(pub WireCid, pub ByteBuf);

/// What a peer can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capabilities {
    /// Software name and version.
    pub agent: String,
    /// Protocols it serves.
    pub protocols: Vec<String>,
    /// Whether it can fetch from the IPFS network for others.
    pub ipfs: bool,
    /// Bytes per second it is willing to serve, if limited.
    pub bandwidth: Option<u64>,
    /// A bloom filter of the CIDs it holds (absent from peers that do not send one).
    #[serde(default)]
    pub bloom: Option<WireBloom>,
}

/// A bloom filter of held CIDs: `k` hash functions over `bits`, laid out as
/// [`cairn_core::source::routing::ContentIndex`] describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBloom {
    /// Hash functions per CID (1 to 16).
    pub k: u8,
    /// The filter (1 byte to 1 MiB).
    pub bits: ByteBuf,
}

impl From<&ContentIndex> for WireBloom {
    fn from(ix: &ContentIndex) -> Self {
        Self {
            k: ix.k(),
            bits: ByteBuf::from(ix.bits().to_vec()),
        }
    }
}

impl TryFrom<WireBloom> for ContentIndex {
    type Error = cairn_core::source::routing::IndexError;
    fn try_from(w: WireBloom) -> Result<Self, Self::Error> {
        ContentIndex::from_parts(w.k, w.bits.into_vec())
    }
}

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

/// Error codes of [`Response::Error`].
pub mod code {
    /// The request was malformed.
    pub const BAD_REQUEST: u32 = 1;
    /// The request asked for more items than the limits allow.
    pub const TOO_MANY: u32 = 2;
    /// The message type is unknown.
    pub const UNSUPPORTED: u32 = 3;
    /// The peer is overloaded; retry later.
    pub const BUSY: u32 = 4;
    /// The peer failed internally (its store).
    pub const INTERNAL: u32 = 5;
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// Answer to `get`.
    Get {
        /// Blocks held, in request order.
        blocks: Vec<WireBlock>,
        /// CIDs not held.
        missing: Vec<WireCid>,
        /// CIDs held but left out to keep the response within its size budget: ask again.
        skipped: Vec<WireCid>,
    },
    /// Answer to `have`: bit `i` (byte `i / 8`, bit `i % 8` from the least significant)
    /// says whether `cids[i]` is held.
    Have {
        /// The bitmap.
        bitmap: ByteBuf,
    },
    /// Answer to `list`.
    List {
        /// CIDs, in the peer's order.
        cids: Vec<WireCid>,
        /// Whether more follow.
        more: bool,
    },
    /// Answer to `caps`.
    Caps(Capabilities),
    /// The request could not be served.
    Error {
        /// One of [`code`].
        code: u32,
        /// What was wrong.
        message: String,
    },
}

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// A frame was longer than allowed.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit.
        limit: usize,
    },
    /// The frame is not valid CBOR for a message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Reads one frame (varint length, then the bytes), refusing frames over `limit`.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Vec<u8>, Error> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 9 {
            return Err(Error::Malformed("length varint too long".into()));
        }
    }
    if len > limit as u64 {
        return Err(Error::TooLarge { len, limit });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), Error> {
    let mut head = Vec::with_capacity(10);
    cairn_core::varint::put(&mut head, body.len() as u64);
    w.write_all(&head).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Encodes a message as CBOR.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and our types always serialize.
    let _ = ciborium::into_writer(msg, &mut out);
    out
}

/// Decodes a CBOR message.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    ciborium::from_reader(bytes).map_err(|e| Error::Malformed(e.to_string()))
}

fn error(code: u32, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
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

/// Answers one request from `store`.
pub async fn answer<S: BlockStore>(
    store: &S,
    req: Request,
    limits: &Limits,
    caps: &Capabilities,
) -> Response {
    match req {
        Request::Get { cids: wanted } => {
            if wanted.len() > limits.max_get {
                return error(
                    code::TOO_MANY,
                    format!(
                        "get takes at most {} CIDs, got {}",
                        limits.max_get,
                        wanted.len()
                    ),
                );
            }
            let wanted = match cids(&wanted) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let (mut blocks, mut missing, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
            let mut budget = limits.get_budget;
            for cid in &wanted {
                if budget == 0 {
                    skipped.push(cid.into());
                    continue;
                }
                match store.get(cid).await {
                    Ok(Some(b)) if b.len() <= budget => {
                        budget -= b.len();
                        blocks.push(WireBlock(cid.into(), ByteBuf::from(b.data().to_vec())));
                    }
                    Ok(Some(_)) => skipped.push(cid.into()),
                    Ok(None) => missing.push(cid.into()),
                    Err(e) => return error(code::INTERNAL, e.to_string()),
                }
            }
            Response::Get {
                blocks,
                missing,
                skipped,
            }
        }
        Request::Have { cids: asked } => {
            if asked.len() > limits.max_have {
                return error(
                    code::TOO_MANY,
                    format!(
                        "have takes at most {} CIDs, got {}",
                        limits.max_have,
                        asked.len()
                    ),
                );
            }
            let asked = match cids(&asked) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let mut bitmap = vec![0u8; asked.len().div_ceil(8)];
            for (i, cid) in asked.iter().enumerate() {
                match store.has(cid).await {
                    Ok(true) => bitmap[i / 8] |= 1 << (i % 8),
                    Ok(false) => {}
                    Err(e) => return error(code::INTERNAL, e.to_string()),
                }
            }
            Response::Have {
                bitmap: ByteBuf::from(bitmap),
            }
        }
        Request::List { after, limit } => {
            let after = match after.map(|a| a.cid()) {
                None => None,
                Some(Some(c)) => Some(c),
                Some(None) => return error(code::BAD_REQUEST, "`after` is not a valid binary CID"),
            };
            let limit = (limit as usize).min(limits.max_list);
            match store.list(after.as_ref(), limit + 1).await {
                Ok(mut page) => {
                    let more = page.len() > limit;
                    page.truncate(limit);
                    Response::List {
                        cids: page.iter().map(WireCid::from).collect(),
                        more,
                    }
                }
                Err(e) => error(code::INTERNAL, e.to_string()),
            }
        }
        Request::Caps {} => Response::Caps(caps.clone()),
    }
}

/// What the listener read: a request, or the error response a malformed one gets.
pub type Inbound = Result<Request, Response>;

/// The `/cas/1.0.0` codec for libp2p's request-response: varint-length-prefixed CBOR frames,
/// limits checked before anything is allocated. A request that is not valid CBOR for a known
/// message is still read whole and answered with an error response; a frame over the limit
/// resets the stream.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    /// The limits.
    pub limits: Limits,
}

fn io_err(e: Error) -> io::Error {
    match e {
        Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for Codec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Inbound;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.limits.max_request)
            .await
            .map_err(io_err)?;
        Ok(decode::<Request>(&body).map_err(|e| {
            let known_cbor = decode::<ciborium::Value>(&body).is_ok();
            let code = if known_cbor {
                code::UNSUPPORTED
            } else {
                code::BAD_REQUEST
            };
            error(code, format!("cannot decode the request: {e}"))
        }))
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.limits.max_response)
            .await
            .map_err(io_err)?;
        decode(&body).map_err(io_err)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = match req {
            Ok(r) => encode(&r),
            Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a request")),
        };
        write_frame(io, &body).await.map_err(io_err)?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res)).await.map_err(io_err)?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::block::Block;
    use cairn_core::cid::{Codec as CidCodec, HashAlg};
    use cairn_core::store::Memory;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    fn block(i: u32) -> Block {
        Block::from_data(
            CidCodec::Raw,
            HashAlg::Sha2_256,
            i.to_le_bytes().repeat(100),
        )
        .unwrap()
    }

    async fn store(n: u32) -> Memory {
        let s = Memory::new();
        s.put_many((0..n).map(block).collect()).await.unwrap();
        s
    }

    #[test]
    fn wire_bytes_are_as_documented() {
        // docs/protocol.md shows these exact bytes.
        assert_eq!(encode(&Request::Caps {}), hex("a16463617073a0"));
        assert_eq!(
            encode(&Request::Get { cids: vec![] }),
            hex("a163676574a1646369647380")
        );
        let c = block(0);
        let wire = encode(&Request::Get {
            cids: vec![c.cid().into()],
        });
        let cid_bytes = c.cid().to_bytes();
        assert_eq!(&wire[..12], &hex("a163676574a1646369647381")[..]);
        assert_eq!(wire[12], 0x58, "a byte string with a 1-byte length");
        assert_eq!(wire[13] as usize, cid_bytes.len());
        assert_eq!(&wire[14..], &cid_bytes[..]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn every_message_roundtrips() {
        let c: WireCid = block(1).cid().into();
        let reqs = [
            Request::Get {
                cids: vec![c.clone()],
            },
            Request::Have {
                cids: vec![c.clone(), c.clone()],
            },
            Request::List {
                after: Some(c.clone()),
                limit: 5,
            },
            Request::List {
                after: None,
                limit: 0,
            },
            Request::Caps {},
        ];
        for r in reqs {
            assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
        }
        let resps = [
            Response::Get {
                blocks: vec![WireBlock(c.clone(), ByteBuf::from(vec![1, 2]))],
                missing: vec![c.clone()],
                skipped: vec![],
            },
            Response::Have {
                bitmap: ByteBuf::from(vec![0b101]),
            },
            Response::List {
                cids: vec![c.clone()],
                more: true,
            },
            Response::Caps(Capabilities {
                agent: "x".into(),
                protocols: vec![PROTOCOL_NAME.into()],
                ipfs: true,
                bandwidth: Some(9),
                bloom: Some(WireBloom {
                    k: 7,
                    bits: ByteBuf::from(vec![1, 2, 3]),
                }),
            }),
            Response::Error {
                code: code::BUSY,
                message: "later".into(),
            },
        ];
        for r in resps {
            assert_eq!(decode::<Response>(&encode(&r)).unwrap(), r);
        }
    }

    #[tokio::test]
    async fn answers_follow_the_limits() {
        let s = store(10).await;
        let limits = Limits {
            get_budget: 1000,
            ..Limits::default()
        };
        let caps = Capabilities::default();
        let cids: Vec<WireCid> = (0..10).map(|i| block(i).cid().into()).collect();
        let absent: WireCid = block(99).cid().into();

        // get: blocks within the budget (400 bytes each: 2 fit), the rest skipped, absent missing.
        let mut wanted = cids[..5].to_vec();
        wanted.push(absent.clone());
        match answer(&s, Request::Get { cids: wanted }, &limits, &caps).await {
            Response::Get {
                blocks,
                missing,
                skipped,
            } => {
                assert_eq!(blocks.len(), 2);
                for WireBlock(c, data) in blocks.iter().take(2) {
                    Block::new(c.cid().unwrap(), data.to_vec()).expect("served blocks verify");
                }
                assert_eq!(blocks.len(), 2);
                assert_eq!(skipped, cids[2..5].to_vec());
                assert_eq!(missing, vec![absent.clone()]);
            }
            other => panic!("{other:?}"),
        }
        // Too many CIDs at once.
        let many = vec![cids[0].clone(); limits.max_get + 1];
        assert!(matches!(
            answer(&s, Request::Get { cids: many }, &limits, &caps).await,
            Response::Error {
                code: code::TOO_MANY,
                ..
            }
        ));
        // Bad CID bytes.
        let bad = WireCid(ByteBuf::from(vec![1, 2, 3]));
        assert!(matches!(
            answer(&s, Request::Have { cids: vec![bad] }, &limits, &caps).await,
            Response::Error {
                code: code::BAD_REQUEST,
                ..
            }
        ));
        // have: a bitmap, LSB first.
        let asked = vec![cids[0].clone(), absent.clone(), cids[1].clone()];
        assert_eq!(
            answer(&s, Request::Have { cids: asked }, &limits, &caps).await,
            Response::Have {
                bitmap: ByteBuf::from(vec![0b101])
            }
        );
        // list: pages with `more`.
        let mut seen = 0;
        let mut after = None;
        loop {
            match answer(
                &s,
                Request::List {
                    after: after.clone(),
                    limit: 4,
                },
                &limits,
                &caps,
            )
            .await
            {
                Response::List { cids, more } => {
                    seen += cids.len();
                    after = cids.last().cloned();
                    if !more {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, 10);
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_unread() {
        let mut frame = Vec::new();
        write_frame(&mut frame, &[0u8; 100]).await.unwrap();
        let err = read_frame(&mut Cursor::new(frame.clone()), 99)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    len: 100,
                    limit: 99
                }
            ),
            "{err}"
        );
        assert_eq!(
            read_frame(&mut Cursor::new(frame.clone()), 100)
                .await
                .unwrap()
                .len(),
            100
        );
        // A length of 2^60 announced by a 9-byte varint: refused, nothing allocated.
        let huge = [0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(matches!(
            read_frame(&mut Cursor::new(huge.to_vec()), 1 << 20).await,
            Err(Error::TooLarge { .. })
        ));
        let endless = [0xffu8; 11];
        assert!(matches!(
            read_frame(&mut Cursor::new(endless.to_vec()), 1 << 20).await,
            Err(Error::Malformed(_))
        ));
        frame.truncate(50);
        assert!(matches!(
            read_frame(&mut Cursor::new(frame), 100).await,
            Err(Error::Io(_))
        ));
    }

    #[tokio::test]
    async fn the_codec_answers_unknown_and_malformed_requests_with_errors() {
        let mut codec = Codec::default();
        let proto = PROTOCOL;
        for (body, want) in [
            (
                encode(&ciborium::Value::Map(vec![(
                    ciborium::Value::Text("delete".into()),
                    ciborium::Value::Map(vec![]),
                )])),
                code::UNSUPPORTED,
            ),
            (vec![0xff, 0x00, 0x13], code::BAD_REQUEST),
        ] {
            let mut frame = Vec::new();
            write_frame(&mut frame, &body).await.unwrap();
            let got = codec
                .read_request(&proto, &mut Cursor::new(frame))
                .await
                .unwrap();
            assert!(
                matches!(got, Err(Response::Error { code, .. }) if code == want),
                "{got:?}"
            );
        }
        let mut frame = Vec::new();
        write_frame(&mut frame, &encode(&Request::Caps {}))
            .await
            .unwrap();
        assert_eq!(
            codec
                .read_request(&proto, &mut Cursor::new(frame))
                .await
                .unwrap(),
            Ok(Request::Caps {})
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode::<Request>(&data);
            let _ = decode::<Response>(&data);
            let _ = futures::executor::block_on(read_frame(&mut Cursor::new(data.clone()), 256));
        }
    }
}
