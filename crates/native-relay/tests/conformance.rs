//! docs/protocol.md, case by case, against a running relay (its `/cas` server and its
//! bitswap engine) over raw streams, and against the `/webrtc-signaling` and WebRTC frame
//! readers: every framed protocol refuses a 10-byte length prefix, a non-minimal one and a
//! frame over its limit; `/cas` answers trailing bytes and malformed known messages with code
//! 1 and unknown types with code 3; and the cases the spec settles (`have`'s bitmap length,
//! `list` past its limit or after a CID not held, exact CID matching) answer as it says.

mod common;

use std::time::Duration;

use bytes::Bytes;
use cairn_core::store::BlockStore;
use cairn_core::{Block, Cid, Codec, HashAlg};
use cairn_p2p::cas::{self, Request, Response, WireCid, code};
use cairn_p2p::{Node, bitswap, framing, webrtc_signal, webrtc_stream};
use ciborium::Value;
use futures::{AsyncReadExt, AsyncWriteExt};

/// A 10-byte prefix: 1 with its high bits spread over continuation bytes.
const TEN_BYTES: [u8; 10] = [0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
/// 1 written as two bytes.
const NOT_MINIMAL: [u8; 2] = [0x81, 0x00];

struct Fixture {
    relay: cairn_relay::relay::Running,
    node: Node,
    held: Vec<Cid>,
}

/// A relay serving `store`, and a node connected to it that can ask it over `/cas`.
async fn serving(store: cairn_relay::store::Disk) -> (cairn_relay::relay::Running, Node) {
    let relay = common::relay_with(cairn_relay::relay::Config {
        store: Some(store),
        ..cairn_relay::relay::Config::loopback()
    })
    .await;
    let node = common::node(std::sync::Arc::new(cairn_core::store::Memory::new())).await;
    node.dial(relay.addrs[0].clone()).await.unwrap();
    common::until_cas(&node, relay.peer_id).await;
    (relay, node)
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = cairn_relay::store::Disk::open(&dir).await.unwrap();
    let mut held = Vec::new();
    for i in 0..20u8 {
        let b = Block::from_data(Codec::Raw, HashAlg::Sha2_256, vec![i; 100]).unwrap();
        held.push(*b.cid());
        store.put(b).await.unwrap();
    }
    held.sort_by_key(Cid::to_bytes);
    let (relay, node) = serving(store).await;
    Fixture { relay, node, held }
}

impl Fixture {
    /// Sends `bytes` raw on a new `/cas` stream and reads what comes back: the answer, or
    /// `None` if the stream ends without one (reset or closed).
    async fn cas_raw(&self, bytes: &[u8]) -> Option<Response> {
        let mut s = self
            .node
            .streams()
            .open_stream(self.relay.peer_id, cas::PROTOCOL)
            .await
            .unwrap();
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(15),
            framing::read_frame(&mut s, cas::Limits::default().max_response),
        )
        .await
        .expect("the relay answers or ends the stream in time");
        answer.ok().map(|body| cas::decode_response(&body).unwrap())
    }

    async fn cas_body(&self, body: &[u8]) -> Option<Response> {
        let mut frame = framing::prefix(body.len());
        frame.extend_from_slice(body);
        self.cas_raw(&frame).await
    }

    async fn ask(&self, req: &Request) -> Response {
        self.node.request(self.relay.peer_id, req).await.unwrap()
    }
}

fn error_code(r: &Option<Response>) -> Option<u32> {
    match r {
        Some(Response::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

fn map(key: &str, fields: Vec<(Value, Value)>) -> Vec<u8> {
    cas::encode(&Value::Map(vec![(
        Value::Text(key.into()),
        Value::Map(fields),
    )]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_refuses_a_ten_byte_length_prefix_unanswered() {
    let f = fixture().await;
    assert_eq!(f.cas_raw(&TEN_BYTES).await, None);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_refuses_a_non_minimal_length_prefix_unanswered() {
    let f = fixture().await;
    let mut frame = NOT_MINIMAL.to_vec();
    frame.push(0xa0);
    assert_eq!(f.cas_raw(&frame).await, None);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_resets_a_frame_over_its_limit_unread() {
    let f = fixture().await;
    let limit = cas::Limits::default().max_request;
    assert_eq!(f.cas_raw(&framing::prefix(limit + 1)).await, None);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_answers_trailing_bytes_with_code_1() {
    let f = fixture().await;
    let body = [cas::encode(&Request::Caps {}), vec![0xf6]].concat();
    assert_eq!(
        error_code(&f.cas_body(&body).await),
        Some(code::BAD_REQUEST)
    );
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_answers_a_known_type_with_malformed_fields_with_code_1() {
    let f = fixture().await;
    let body = map(
        "get",
        vec![(Value::Text("cids".into()), Value::Integer(7.into()))],
    );
    assert_eq!(
        error_code(&f.cas_body(&body).await),
        Some(code::BAD_REQUEST)
    );
    let body = map(
        "list",
        vec![(Value::Text("limit".into()), Value::Text("ten".into()))],
    );
    assert_eq!(
        error_code(&f.cas_body(&body).await),
        Some(code::BAD_REQUEST)
    );
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_answers_an_unknown_type_with_code_3() {
    let f = fixture().await;
    assert_eq!(
        error_code(&f.cas_body(&map("delete", vec![])).await),
        Some(code::UNSUPPORTED)
    );
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_have_bitmaps_are_exactly_as_long_as_needed_with_zero_padding() {
    let f = fixture().await;
    let absent = Block::from_data(Codec::Raw, HashAlg::Sha2_256, b"absent".to_vec()).unwrap();
    for n in [0usize, 1, 7, 8, 9, 20] {
        // Every other CID held.
        let cids: Vec<WireCid> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    (&f.held[i % f.held.len()]).into()
                } else {
                    absent.cid().into()
                }
            })
            .collect();
        match f.ask(&Request::Have { cids }).await {
            Response::Have { bitmap } => {
                assert_eq!(bitmap.len(), n.div_ceil(8), "{n} CIDs");
                for i in 0..bitmap.len() * 8 {
                    let set = bitmap[i / 8] >> (i % 8) & 1 == 1;
                    assert_eq!(set, i < n && i % 2 == 0, "bit {i} of {n}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_list_clamps_a_limit_over_the_maximum() {
    let f = fixture().await;
    // The relay's maximum is 1024; it holds 20: a limit of a million is not an error.
    match f
        .ask(&Request::List {
            after: None,
            limit: 1_000_000,
        })
        .await
    {
        Response::List { cids, more } => {
            assert_eq!(cids.len(), 20);
            assert!(!more);
        }
        other => panic!("{other:?}"),
    }
    // Limit 0: no CIDs; `more` says whether any follow.
    match f
        .ask(&Request::List {
            after: None,
            limit: 0,
        })
        .await
    {
        Response::List { cids, more } => assert!(cids.is_empty() && more),
        other => panic!("{other:?}"),
    }
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_list_after_a_cid_not_held_starts_where_it_would_sort() {
    let f = fixture().await;
    let absent = Block::from_data(Codec::Raw, HashAlg::Sha2_256, b"absent".to_vec()).unwrap();
    let after = *absent.cid();
    let expected: Vec<Cid> = f
        .held
        .iter()
        .filter(|c| c.to_bytes() > after.to_bytes())
        .copied()
        .collect();
    match f
        .ask(&Request::List {
            after: Some((&after).into()),
            limit: 100,
        })
        .await
    {
        Response::List { cids, more } => {
            let got: Vec<Cid> = cids.iter().map(|c| c.cid().unwrap()).collect();
            assert_eq!(
                got, expected,
                "in binary CID order, after where `after` would be"
            );
            assert!(!more);
        }
        other => panic!("{other:?}"),
    }
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_cids_match_exactly_not_by_multihash() {
    let f = fixture().await;
    let held = f.held[0];
    // The same multihash under another codec, and as CIDv0's dag-pb: other blocks.
    let dag_pb = Cid::new_v1(Codec::DagPb.code(), *held.hash());
    let v0 = Cid::new_v0(*held.hash()).unwrap();
    match f
        .ask(&Request::Get {
            cids: vec![(&held).into(), (&dag_pb).into(), (&v0).into()],
        })
        .await
    {
        Response::Get {
            blocks, missing, ..
        } => {
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].0.cid(), Some(held));
            assert_eq!(missing, vec![(&dag_pb).into(), (&v0).into()]);
        }
        other => panic!("{other:?}"),
    }
    f.relay.shutdown().await;
}

/// Sends `bytes` on a new bitswap stream and waits until the relay has counted the message
/// as bad and dropped the stream.
async fn bitswap_refuses(f: &Fixture, bytes: &[u8]) {
    let stats = f.relay.node.bitswap().watch_stats();
    let before = stats.borrow().bad_messages;
    let mut s = f
        .node
        .streams()
        .open_stream(f.relay.peer_id, bitswap::PROTOCOL)
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut stats = stats;
    tokio::time::timeout(
        Duration::from_secs(15),
        stats.wait_for(|st| st.bad_messages > before),
    )
    .await
    .expect("the relay counts the bad message")
    .unwrap();
    // The stream is dropped: reading ends.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("the stream ends");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitswap_refuses_a_ten_byte_length_prefix() {
    let f = fixture().await;
    bitswap_refuses(&f, &TEN_BYTES).await;
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitswap_refuses_a_non_minimal_length_prefix() {
    let f = fixture().await;
    bitswap_refuses(&f, &[NOT_MINIMAL[0], NOT_MINIMAL[1], 0x00]).await;
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitswap_refuses_a_frame_over_its_limit_unread() {
    let f = fixture().await;
    bitswap_refuses(&f, &framing::prefix(bitswap::MAX_MESSAGE + 1)).await;
    f.relay.shutdown().await;
}

/// `/webrtc-signaling` (read by browsers, not the relay): the same framing, through its
/// reader.
#[tokio::test]
async fn webrtc_signaling_refuses_bad_prefixes_and_oversized_frames() {
    for (what, bytes) in [
        ("a 10-byte prefix", TEN_BYTES.to_vec()),
        ("a non-minimal prefix", [&NOT_MINIMAL[..], &[0]].concat()),
        ("a frame over the limit", framing::prefix(1 << 20)),
    ] {
        let mut r = futures::io::Cursor::new(bytes);
        assert!(
            webrtc_signal::read(&mut r).await.is_err(),
            "{what} was read"
        );
    }
    // A well-formed one reads.
    let m = webrtc_signal::Message {
        kind: webrtc_signal::Kind::Offer,
        data: "v=0".into(),
    };
    let mut framed = Vec::new();
    webrtc_signal::write(&mut framed, &m).await.unwrap();
    let mut r = futures::io::Cursor::new(framed);
    assert_eq!(webrtc_signal::read(&mut r).await.unwrap(), m);
}

/// WebRTC data-channel frames: the same framing, through the deframer.
#[test]
fn webrtc_frames_refuse_bad_prefixes_and_oversized_frames() {
    for (what, bytes) in [
        ("a 10-byte prefix", TEN_BYTES.to_vec()),
        ("a non-minimal prefix", [&NOT_MINIMAL[..], &[0]].concat()),
        (
            "a frame over the limit",
            framing::prefix(webrtc_stream::MAX_FRAME + 1),
        ),
    ] {
        let mut d = webrtc_stream::Deframer::default();
        assert!(
            d.push(Bytes::from(bytes), |_| {}).is_err(),
            "{what} was accepted"
        );
    }
}

/// A relay whose store holds a folder: `a.txt` (small), `big.bin` (1 MiB: a dag-pb node
/// over four 256 KiB chunks) and `sub/s.txt` (small). Returns the relay, a node connected
/// to it, the folder's root and the CIDs of `a.txt`, `big.bin`, `sub`, `sub/s.txt` and of
/// `big.bin`'s chunks.
async fn folder() -> (cairn_relay::relay::Running, Node, Cid, [Cid; 4], Vec<Cid>) {
    use cairn_core::unixfs::{self, Profile, dir};
    let dir = tempfile::tempdir().unwrap().keep();
    let store = cairn_relay::store::Disk::open(&dir).await.unwrap();
    let mut t = dir::TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
    let mut files = Vec::new();
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
    for (path, bytes) in [
        ("a.txt", &b"a small file"[..]),
        ("big.bin", &big[..]),
        ("sub/s.txt", &b"another small file"[..]),
    ] {
        let i = unixfs::import(&store, bytes, Profile::DEFAULT, HashAlg::Sha2_256, |_| {})
            .await
            .unwrap();
        files.push(i.root);
        t.add(
            path,
            dir::Entry {
                cid: i.root,
                tsize: i.dag_size,
            },
        )
        .unwrap();
    }
    let mut blocks = Vec::new();
    let root = t.finish(&mut blocks).unwrap().cid;
    let mut sub = None;
    for b in blocks {
        if b.cid() != &root {
            sub = Some(*b.cid());
        }
        store.put(b).await.unwrap();
    }
    let big_node = store.get(&files[1]).await.unwrap().unwrap();
    let chunks: Vec<Cid> = cairn_core::unixfs::pb::Node::decode(big_node.data())
        .unwrap()
        .links
        .iter()
        .map(|l| l.cid)
        .collect();
    assert_eq!(chunks.len(), 4);
    let (relay, node) = serving(store).await;
    (
        relay,
        node,
        root,
        [files[0], files[1], sub.unwrap(), files[2]],
        chunks,
    )
}

/// Every frame of the answer to `req` on a new `/cas` stream, until the responder closes.
async fn frames(node: &Node, to: libp2p::PeerId, req: &Request) -> Vec<Response> {
    let mut s = node.streams().open_stream(to, cas::PROTOCOL).await.unwrap();
    framing::write_frame(&mut s, &cas::encode(req))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(
            Duration::from_secs(15),
            framing::read_frame(&mut s, cas::Limits::default().max_response),
        )
        .await
        .expect("the relay answers and closes in time");
        match next {
            Ok(body) => out.push(cas::decode_response(&body).unwrap()),
            Err(e) if e.is_closed() => return out,
            Err(e) => panic!("the answer broke off: {e}"),
        }
    }
}

/// `dag` (docs/protocol.md): the root as a `get` answer, then the DAG's structure and its
/// small files breadth first (every dag-pb block, `raw` blocks of at most 64 KiB), never a
/// file's large chunks, then the end of the stream. A root not held is `missing`, alone.
#[tokio::test]
async fn cas_dag_pushes_the_structure_and_small_files_breadth_first() {
    let (relay, node, root, [a, big, sub, s], chunks) = folder().await;
    let answer = frames(
        &node,
        relay.peer_id,
        &Request::Dag {
            root: (&root).into(),
        },
    )
    .await;
    let mut cids = Vec::new();
    for (i, r) in answer.iter().enumerate() {
        let Response::Get {
            blocks,
            missing,
            skipped,
        } = r
        else {
            panic!("frame {i} is not a get answer: {r:?}")
        };
        assert!(missing.is_empty() && skipped.is_empty(), "frame {i}: {r:?}");
        for cas::WireBlock(c, data) in blocks {
            let c = c.cid().unwrap();
            Block::new(c, data.to_vec()).expect("each pushed block is the CID's");
            cids.push(c);
        }
    }
    assert!(matches!(&answer[0], Response::Get { blocks, .. } if blocks.len() == 1));
    assert_eq!(
        cids,
        vec![root, a, big, sub, s],
        "breadth first, links in order"
    );
    assert!(
        chunks.iter().all(|c| !cids.contains(c)),
        "no large chunk is pushed"
    );

    let absent = Block::from_data(Codec::Raw, HashAlg::Sha2_256, b"not held".to_vec()).unwrap();
    let answer = frames(
        &node,
        relay.peer_id,
        &Request::Dag {
            root: absent.cid().into(),
        },
    )
    .await;
    assert_eq!(
        answer,
        vec![Response::Get {
            blocks: vec![],
            missing: vec![absent.cid().into()],
            skipped: vec![],
        }]
    );
}

/// A fetch of the folder that asks for the structure (`CasPeers::push_below`) sends one
/// `dag` request and a `get` for each large chunk only: the blocks pushed are taken from the
/// answer, verified, as they are wanted.
#[tokio::test]
async fn a_folder_fetch_takes_what_dag_pushes_and_gets_only_the_large_chunks() {
    use cairn_core::source::{Chain, Context, PeerSource, SourceKind};
    let (relay, node, root, _, chunks) = folder().await;
    let requests = |m: &str, kind: &str| -> u64 {
        m.lines()
            .find(|l| l.contains("cas_requests") && l.contains(&format!("kind=\"{kind}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = common::metrics_of(&relay).await;
    let peers = cairn_p2p::sources::CasPeers::new(node.clone()).push_below(Some(root));
    let source = PeerSource::new(SourceKind::Peers, peers.clone(), peers, Some(root));
    let store = std::sync::Arc::new(cairn_core::store::Memory::new());
    let chain = Chain::new().local(store.clone()).source(source, None);
    let ctx = Context::new().with_timeout(Duration::from_secs(60));
    let report = cairn_core::dag::fetch(&chain, &*store, root, Default::default(), &ctx, |_| {})
        .await
        .unwrap();
    assert_eq!(
        report.progress.blocks_done, 9,
        "the root, 4 below it and 4 chunks"
    );
    let after = common::metrics_of(&relay).await;
    assert_eq!(requests(&after, "dag") - requests(&before, "dag"), 1);
    assert_eq!(
        requests(&after, "get") - requests(&before, "get"),
        chunks.len() as u64,
        "one get per large chunk, none for what was pushed"
    );
}

/// A `dag` answer whose requester stops reading (it has what it wanted) is ended by the
/// responder after the stall timeout, and only the answer: the connection is not cut (as
/// it is for a `get` answer nobody reads), and the requester's next request is answered.
#[tokio::test]
async fn a_dag_answer_nobody_reads_ends_and_the_connection_stays() {
    use cairn_core::unixfs::{self, Profile, dir};
    let dir = tempfile::tempdir().unwrap().keep();
    let store = cairn_relay::store::Disk::open(&dir).await.unwrap();
    // 8 MiB of small files: more than the requester's stream window, so the responder
    // waits on a reader that reads nothing.
    let mut t = dir::TreeBuilder::new(Profile::DEFAULT, HashAlg::Sha2_256);
    let mut first = None;
    for i in 0..256u32 {
        let bytes: Vec<u8> = (0..32 * 1024u32).map(|j| (i * 7 + j) as u8).collect();
        let f = unixfs::import(
            &store,
            &bytes[..],
            Profile::DEFAULT,
            HashAlg::Sha2_256,
            |_| {},
        )
        .await
        .unwrap();
        first.get_or_insert(f.root);
        t.add(
            &format!("f{i:03}"),
            dir::Entry {
                cid: f.root,
                tsize: f.dag_size,
            },
        )
        .unwrap();
    }
    let mut blocks = Vec::new();
    let root = t.finish(&mut blocks).unwrap().cid;
    for b in blocks {
        store.put(b).await.unwrap();
    }
    let relay = common::relay_with(cairn_relay::relay::Config {
        store: Some(store),
        answers: cairn_p2p::budget::Caps {
            stall_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..cairn_relay::relay::Config::loopback()
    })
    .await;
    let node = common::node(std::sync::Arc::new(cairn_core::store::Memory::new())).await;
    node.dial(relay.addrs[0].clone()).await.unwrap();
    common::until_cas(&node, relay.peer_id).await;

    let mut s = node
        .streams()
        .open_stream(relay.peer_id, cas::PROTOCOL)
        .await
        .unwrap();
    framing::write_frame(
        &mut s,
        &cas::encode(&Request::Dag {
            root: (&root).into(),
        }),
    )
    .await
    .unwrap();
    let limit = cas::Limits::default().max_response;
    let body = framing::read_frame(&mut s, limit).await.unwrap();
    assert!(
        matches!(cas::decode_response(&body).unwrap(), Response::Get { blocks, .. } if blocks.len() == 1)
    );
    // Read nothing for well past the stall timeout, then find the answer ended early.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut pushed = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), framing::read_frame(&mut s, limit))
            .await
            .expect("the stream ends")
        {
            Ok(body) => match cas::decode_response(&body).unwrap() {
                Response::Get { blocks, .. } => pushed += blocks.len(),
                other => panic!("not a get answer: {other:?}"),
            },
            Err(e) => break e,
        }
    };
    assert!(
        pushed < 256,
        "the answer ended before the whole folder ({pushed} blocks pushed; {ended})"
    );
    assert!(node.peer(&relay.peer_id).is_some(), "still connected");
    let Response::Get { blocks, .. } = node
        .request(
            relay.peer_id,
            &Request::Get {
                cids: vec![(&first.unwrap()).into()],
            },
        )
        .await
        .unwrap()
    else {
        panic!("get answered with another message")
    };
    assert_eq!(blocks.len(), 1, "the same connection still serves");
}
