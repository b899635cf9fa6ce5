//! `/cas/1.0.0`: cairn's peer protocol for blocks.
//!
//! One request per stream: the requester opens a stream with [`PROTOCOL_NAME`] and writes
//! one request frame; the responder answers with one response frame and closes. A frame is
//! [`crate::framing`]'s (a varint length, then that many bytes) holding one CBOR message: a
//! map with a single key naming the message type. The full specification, with examples, is
//! `docs/protocol.md`.
//!
//! Both directions run on raw libp2p streams with the one codec below: [`Client`] sends
//! requests (each on a stream of its own, reset when the caller gives up), [`serve`]
//! answers them, bounded per peer and in total. Limits ([`Limits`]) are enforced on both
//! sides before anything is allocated: a frame longer than the limit is refused unread.

mod answer;
mod client;
mod server;
mod wire;

pub use answer::{
    BELOW_FRAME, BELOW_MAX_BLOCKS, Below, BelowError, CapsCache, GetFrame, answer, get_frame,
    get_overhead, held_index,
};
pub use client::{Client, PUSH_HELD, PUSH_IDLE, Pushed, Refused, RequestError};
pub use server::{OnRequest, ServerConfig, ServerHandle, Serving, serve};
pub use wire::{Answer, Frame, GetAnswer, decode_answer};

use cairn_core::cid::Cid;
use cairn_core::source::routing::ContentIndex;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::framing;

/// The protocol id.
pub const PROTOCOL_NAME: &str = "/cas/1.0.0";

/// The libp2p protocol id.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new(PROTOCOL_NAME);

/// The largest block a `/cas` response may carry (the core's block limit).
pub const MAX_BLOCK_SIZE: usize = cairn_core::MAX_BLOCK_SIZE;

/// `/cas` settings of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether to answer requests (a node with nothing to serve does not claim the
    /// protocol).
    pub serve: bool,
    /// Frame and count limits, both ways.
    pub limits: Limits,
    /// How long a request may go without moving while its peer sends nothing on any
    /// request before it is given up; an answer that keeps coming is not cut.
    pub request_timeout: std::time::Duration,
    /// The server's bounds.
    pub server: ServerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            serve: true,
            limits: Limits::default(),
            request_timeout: std::time::Duration::from_secs(10),
            server: ServerConfig::default(),
        }
    }
}

/// The largest `raw` block a `dag` answer pushes: larger ones (a file's chunks) are asked
/// for with `get`, many streams at once, rather than queued behind each other on one.
pub const PUSHED_RAW_MAX: u64 = 64 * 1024;

/// The links of the dag-pb block `cid` (bytes `data`) whose blocks a `dag` answer pushes,
/// in order: every dag-pb child, and every `raw` child whose link gives its size as at most
/// [`PUSHED_RAW_MAX`]. Nothing for a block of another codec or one that does not decode.
/// Responder and requester both go by this, so the requester knows what to wait for.
pub fn pushed_links(cid: &Cid, data: &bytes::Bytes) -> Vec<Cid> {
    use cairn_core::cid::Codec;
    if cid.codec() != Codec::DagPb.code() {
        return Vec::new();
    }
    let Ok(node) = cairn_core::unixfs::pb::Node::decode(data) else {
        return Vec::new();
    };
    node.links
        .into_iter()
        .filter(|l| {
            l.cid.codec() == Codec::DagPb.code()
                || (l.cid.codec() == Codec::Raw.code()
                    && l.tsize.is_some_and(|t| t <= PUSHED_RAW_MAX))
        })
        .map(|l| l.cid)
        .collect()
}

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
    /// The block `root` and, in further answer frames on the same stream, the blocks of the
    /// DAG below it that the peer holds, breadth first (see `docs/protocol.md`).
    Dag {
        /// The DAG's root.
        root: WireCid,
    },
}

impl Request {
    /// The message type's name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::Have { .. } => "have",
            Request::List { .. } => "list",
            Request::Caps {} => "caps",
            Request::Dag { .. } => "dag",
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

/// Why a request got no usable answer, or why a request could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream failed, or a frame broke the limits.
    #[error(transparent)]
    Frame(#[from] framing::Error),
    /// The frame is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] framing::CborError),
}

/// The CBOR body of a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    framing::to_cbor(msg)
}

/// A response from its CBOR body.
pub fn decode_response(body: &[u8]) -> Result<Response, Error> {
    Ok(framing::from_cbor(body)?)
}

/// A request from its CBOR body, or the error response a responder sends for it: code 1
/// when it is not CBOR or not a well-formed message, code 3 when it is a well-formed map
/// naming a message type this responder does not know.
pub fn decode_request(body: &[u8]) -> Result<Request, Response> {
    framing::from_cbor::<Request>(body).map_err(|e| {
        let unknown_type = matches!(
            framing::from_cbor::<ciborium::Value>(body),
            Ok(ciborium::Value::Map(ref m))
                if m.len() == 1
                    && matches!(&m[0].0, ciborium::Value::Text(t)
                        if !["get", "have", "list", "caps", "dag"].contains(&t.as_str()))
        );
        let code = if unknown_type {
            code::UNSUPPORTED
        } else {
            code::BAD_REQUEST
        };
        error(code, format!("cannot decode the request: {e}"))
    })
}

/// An error response.
pub fn error(code: u32, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::block::Block;
    use cairn_core::cid::{Codec as CidCodec, HashAlg};
    use cairn_core::store::{BlockStore, Memory};

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
            Request::Dag { root: c.clone() },
        ];
        for r in reqs {
            assert_eq!(decode_request(&encode(&r)).unwrap(), r);
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
            assert_eq!(decode_response(&encode(&r)).unwrap(), r);
        }
    }

    #[tokio::test]
    async fn a_get_frame_is_the_encoded_get_answer() {
        let s = store(40).await;
        let caps = Capabilities::default();
        // Lists long enough for every CBOR length form the frame writes (1 and 2 bytes).
        let mut wanted: Vec<WireCid> = (0..40).map(|i| block(i).cid().into()).collect();
        wanted.extend((100..130).map(|i| WireCid::from(block(i).cid())));
        for budget in [0, 400, 1000, 4000, 16_000] {
            let limits = Limits {
                get_budget: budget,
                ..Limits::default()
            };
            let resp = answer(
                &s,
                Request::Get {
                    cids: wanted.clone(),
                },
                &limits,
                &caps,
            )
            .await;
            let b = crate::budget::Budget::new(crate::budget::Caps {
                per_asker: 1 << 30,
                total: 1 << 30,
                ..Default::default()
            });
            let mut permit = b
                .try_reserve(libp2p::PeerId::random(), crate::budget::CAS, 1, 1)
                .unwrap();
            let framed = get_frame(&s, &wanted, &limits, &mut permit).await.unwrap();
            assert_eq!(
                permit.bytes(),
                framed.frame.len(),
                "the permit ends holding the frame"
            );
            let body = encode(&resp);
            let mut expected = framing::prefix(body.len());
            expected.extend_from_slice(&body);
            assert_eq!(framed.frame.to_vec(), expected, "budget {budget}");
            let Response::Get { blocks, .. } = resp else {
                panic!("not a get answer");
            };
            assert_eq!(framed.blocks, blocks.len());
            assert_eq!(
                framed.block_bytes,
                blocks.iter().map(|b| b.1.len()).sum::<usize>()
            );
        }
        // Errors come back as the response to send.
        let bad = WireCid(ByteBuf::from(vec![1, 2, 3]));
        let b = crate::budget::Budget::default();
        let mut permit = b
            .try_reserve(libp2p::PeerId::random(), crate::budget::CAS, 1, 1)
            .unwrap();
        assert!(matches!(
            get_frame(&s, &[bad], &Limits::default(), &mut permit).await,
            Err(Response::Error {
                code: code::BAD_REQUEST,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_get_answer_grows_only_as_far_as_the_budget_lets_it() {
        let s = store(10).await;
        let wanted: Vec<WireCid> = (0..10).map(|i| block(i).cid().into()).collect();
        let overhead = get_overhead(wanted.len());
        // Room for three of the 400-byte blocks and a little: each read needs what is held
        // plus the next block's size (the memory store knows it), so the fourth and the
        // rest are skipped.
        let b = crate::budget::Budget::new(crate::budget::Caps {
            per_asker: overhead + 3 * 400 + 100,
            total: 1 << 30,
            ..Default::default()
        });
        let peer = libp2p::PeerId::random();
        let mut permit = b.try_reserve(peer, crate::budget::CAS, 1, 1).unwrap();
        let framed = get_frame(&s, &wanted, &Limits::default(), &mut permit)
            .await
            .unwrap();
        assert_eq!(framed.blocks, 3);
        let frame = framed.frame.to_vec();
        let mut frame = futures::io::Cursor::new(&frame[..]);
        let body = framing::read_frame(&mut frame, usize::MAX).await.unwrap();
        match decode_response(&body).unwrap() {
            Response::Get {
                blocks,
                skipped,
                missing,
            } => {
                assert_eq!((blocks.len(), skipped.len(), missing.len()), (3, 7, 0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(permit.bytes(), framed.frame.len());
        assert_eq!(b.used_by(peer), framed.frame.len());
        drop(permit);
        assert_eq!(b.used(), 0);
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

    #[test]
    fn unknown_and_malformed_requests_get_error_answers() {
        let map = |key: &str, fields: Vec<(ciborium::Value, ciborium::Value)>| {
            encode(&ciborium::Value::Map(vec![(
                ciborium::Value::Text(key.into()),
                ciborium::Value::Map(fields),
            )]))
        };
        for (body, want) in [
            (map("delete", vec![]), code::UNSUPPORTED),
            (vec![0xff, 0x00, 0x13], code::BAD_REQUEST),
            // A known type with a field of the wrong type is malformed, not unsupported.
            (
                map(
                    "get",
                    vec![(
                        ciborium::Value::Text("cids".into()),
                        ciborium::Value::Integer(7.into()),
                    )],
                ),
                code::BAD_REQUEST,
            ),
            // Bytes after the message.
            (
                [encode(&Request::Caps {}), vec![0]].concat(),
                code::BAD_REQUEST,
            ),
        ] {
            let got = decode_request(&body);
            assert!(
                matches!(got, Err(Response::Error { code, .. }) if code == want),
                "{got:?}"
            );
        }
        assert_eq!(
            decode_request(&encode(&Request::Caps {})),
            Ok(Request::Caps {})
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode_request(&data);
            let _ = decode_response(&data);
        }
    }
}
