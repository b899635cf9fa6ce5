//! The fuzz targets' bodies: every decoder that takes bytes from the network or the disk,
//! driven with arbitrary input. `fuzz/` (cargo-fuzz, nightly) calls these from its targets;
//! `tests/fuzz_corpus.rs` replays the committed corpus and every crash found so far through
//! them on the stable toolchain, in `cargo xtask test`.
//!
//! Each function must never panic and must hold its decoder's invariants (what decodes,
//! re-encodes to something that decodes the same).

use bytes::Bytes;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name (the name is the corpus directory's).
pub const TARGETS: &[(&str, Target)] = &[
    ("cid", cid),
    ("dag_pb", dag_pb),
    ("unixfs", unixfs),
    ("cas_frame", cas_frame),
    ("bitswap", bitswap),
    ("webrtc_signal", webrtc_signal),
    ("webrtc_frames", webrtc_frames),
    ("announce", announce),
    ("routing_v1", routing_v1),
    ("block_file", block_file),
];

/// CIDs and multihashes, as text and as bytes.
pub fn cid(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = cairn_core::cid::parse(text)
    {
        let again = cairn_core::cid::parse(&c.to_string()).expect("a CID's text parses back");
        assert_eq!(again, c);
    }
    if let Ok(c) = cairn_core::Cid::try_from(data) {
        assert_eq!(cairn_core::Cid::try_from(&c.to_bytes()[..]).ok(), Some(c));
        let _ = cairn_core::cid::check(&c);
    }
}

/// DAG-PB nodes.
pub fn dag_pb(data: &[u8]) {
    let buf = Bytes::copy_from_slice(data);
    if let Ok(node) = cairn_core::unixfs::pb::Node::decode(&buf) {
        let again = cairn_core::unixfs::pb::Node::decode(&Bytes::from(node.encode()))
            .expect("an encoded node decodes");
        assert_eq!(again.links.len(), node.links.len());
        assert_eq!(again.data, node.data);
    }
}

/// UnixFS `Data` messages.
pub fn unixfs(data: &[u8]) {
    let buf = Bytes::copy_from_slice(data);
    if let Ok(d) = cairn_core::unixfs::pb::UnixFs::decode(&buf) {
        let again = cairn_core::unixfs::pb::UnixFs::decode(&Bytes::from(d.encode()))
            .expect("encoded UnixFS data decodes");
        assert_eq!(again.blocksizes, d.blocksizes);
        assert_eq!(again.filesize, d.filesize);
    }
}

/// `/cas` frames: a length prefix and a CBOR request or response.
pub fn cas_frame(data: &[u8]) {
    use cairn_p2p::{cas, framing};
    let limits = cas::Limits::default();
    let mut cursor = futures::io::Cursor::new(data.to_vec());
    if let Ok(body) =
        futures::executor::block_on(framing::read_frame(&mut cursor, limits.max_request))
        && let Ok(req) = cas::decode_request(&body)
    {
        assert_eq!(cas::decode_request(&cas::encode(&req)), Ok(req));
    }
    let resp = cas::decode_response(data);
    if let Ok(resp) = &resp {
        assert_eq!(
            cas::decode_response(&cas::encode(resp)).ok().as_ref(),
            Some(resp)
        );
    }
    // The requester's reader, which leaves a get answer's blocks in the frame, reads what
    // the general decoder reads.
    let answer = cas::decode_answer(Bytes::copy_from_slice(data));
    assert_eq!(
        answer.map(cas::Answer::into_response).ok(),
        resp.ok(),
        "the two decoders disagree"
    );
    let _ = framing::frame_end(data, limits.max_response);
}

/// Bitswap messages.
pub fn bitswap(data: &[u8]) {
    use cairn_p2p::bitswap::Message;
    if let Ok(m) = Message::decode(&Bytes::copy_from_slice(data)) {
        for b in &m.blocks {
            let _ = b.cid();
        }
        let again = Message::decode(&Bytes::from(m.encode())).expect("an encoded message decodes");
        assert_eq!(again.wantlist, m.wantlist);
        assert_eq!(again.presences, m.presences);
    }
}

/// `/webrtc-signaling` messages, framed.
pub fn webrtc_signal(data: &[u8]) {
    use cairn_p2p::webrtc_signal as sig;
    if let Ok(m) = sig::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(sig::decode(Bytes::from(sig::encode(&m))).ok(), Some(m));
    }
    let mut cursor = futures::io::Cursor::new(data.to_vec());
    let _ = futures::executor::block_on(sig::read(&mut cursor));
}

/// WebRTC data-channel frames, split across messages anywhere.
pub fn webrtc_frames(data: &[u8]) {
    use cairn_p2p::webrtc_stream::{Deframer, flag};
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut d = Deframer::default();
    let mut frames = Vec::new();
    for part in [&data[..cut], &data[cut..]] {
        if d.push(Bytes::copy_from_slice(part), |f| frames.push(f))
            .is_err()
        {
            return;
        }
    }
    for f in &frames {
        let _ = flag(f);
        assert!(
            f.len() <= cairn_p2p::webrtc_stream::MAX_FRAME + 3,
            "a frame over the limit"
        );
    }
    assert!(
        d.pending() <= cairn_p2p::webrtc_stream::MAX_FRAME + 3,
        "an unfinished frame holds more than a frame can"
    );
}

/// GossipSub announcements.
pub fn announce(data: &[u8]) {
    let peer = libp2p::PeerId::from_public_key(
        &libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32])
            .expect("a fixed key")
            .public(),
    );
    let _ = cairn_p2p::announce::validate(Some(peer), data, 1_800_000_000);
}

/// Delegated Routing V1 answers (JSON and NDJSON).
pub fn routing_v1(data: &[u8]) {
    if let Ok(providers) = cairn_p2p::routing_v1::parse(data) {
        assert!(providers.len() <= cairn_p2p::routing_v1::MAX_PROVIDERS);
        let again =
            cairn_p2p::routing_v1::parse(cairn_p2p::routing_v1::to_json(&providers).as_bytes())
                .expect("written providers parse");
        assert_eq!(again.len(), providers.len());
    }
}

/// A block file on disk holding arbitrary bytes: read back, it is either the block its name
/// says (the bytes hash to it) or refused as corrupt, never served.
pub fn block_file(data: &[u8]) {
    use cairn_core::store::BlockStore;
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    // A CID the file is stored under: sometimes the right one, sometimes not.
    let honest = split % 2 == 0;
    let cid = if honest {
        cairn_core::cid::of(cairn_core::Codec::Raw, cairn_core::HashAlg::Sha2_256, body)
    } else {
        cairn_core::cid::of(
            cairn_core::Codec::Raw,
            cairn_core::HashAlg::Sha2_256,
            b"other",
        )
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let store = cairn_relay::store::Disk::open(dir.path())
            .await
            .expect("a store");
        let path = store.block_path(&cid);
        std::fs::create_dir_all(path.parent().expect("a shard")).expect("the shard");
        std::fs::write(&path, body).expect("the block file");
        // Reopened: the index counts the file.
        let store = cairn_relay::store::Disk::open(dir.path())
            .await
            .expect("a store");
        match store.get(&cid).await {
            Ok(Some(b)) => {
                assert!(honest || body == b"other", "wrong bytes were served");
                assert_eq!(&b.data()[..], body);
            }
            Ok(None) => panic!("the file was not found"),
            Err(cairn_core::store::Error::Corrupt { .. }) => {
                assert!(!honest, "a good block was refused");
                assert!(
                    !store.has(&cid).await.expect("has"),
                    "a corrupt block is forgotten"
                );
            }
            Err(e) => panic!("{e}"),
        }
    });
}

/// Valid inputs for each target, to start the fuzzer from (`cargo xtask fuzz` writes them
/// into `fuzz/corpus/<target>/` as `seed-<n>`; the corpus replay runs them too).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use cairn_core::unixfs::pb;
    use cairn_core::{Codec, HashAlg, cid};
    use cairn_p2p::{bitswap, cas, framing, webrtc_signal};
    let raw = cid::of(Codec::Raw, HashAlg::Sha2_256, b"hello");
    let blake = cid::of(Codec::Raw, HashAlg::Blake3, b"hello");
    let node_cid = cid::of(Codec::DagPb, HashAlg::Sha2_256, b"node");
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("cid", raw.to_string().into_bytes()),
        ("cid", blake.to_string().into_bytes()),
        (
            "cid",
            b"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG".to_vec(),
        ),
        ("cid", raw.to_bytes()),
    ];
    let data = pb::UnixFs::file(vec![262_144; 3]);
    let node = pb::Node {
        links: (0..3)
            .map(|i| pb::Link {
                cid: raw,
                name: format!("{i}"),
                tsize: Some(262_144),
            })
            .collect(),
        data: Some(bytes::Bytes::from(data.encode())),
    };
    out.push(("dag_pb", node.encode()));
    out.push(("unixfs", data.encode()));
    let requests = [
        cas::Request::Get {
            cids: vec![(&raw).into(), (&node_cid).into()],
        },
        cas::Request::Have {
            cids: vec![(&raw).into()],
        },
        cas::Request::List {
            after: Some((&raw).into()),
            limit: 10,
        },
        cas::Request::Caps {},
    ];
    for r in &requests {
        let body = cas::encode(r);
        let mut frame = framing::prefix(body.len());
        frame.extend_from_slice(&body);
        out.push(("cas_frame", frame));
    }
    out.push((
        "cas_frame",
        cas::encode(&cas::Response::Get {
            blocks: vec![cas::WireBlock((&raw).into(), b"hello".to_vec().into())],
            missing: vec![(&node_cid).into()],
            skipped: vec![],
        }),
    ));
    out.push((
        "bitswap",
        bitswap::Message {
            wantlist: vec![
                bitswap::Entry::want_block(raw),
                bitswap::Entry::cancel(blake),
            ],
            full: true,
            blocks: vec![bitswap::Payload::new(
                &raw,
                bytes::Bytes::from_static(b"hello"),
            )],
            presences: vec![(node_cid, bitswap::Presence::DontHave)],
            pending_bytes: 0,
        }
        .encode(),
    ));
    let offer = webrtc_signal::Message {
        kind: webrtc_signal::Kind::Offer,
        data: "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n".into(),
    };
    let body = webrtc_signal::encode(&offer);
    out.push(("webrtc_signal", body.clone()));
    let mut framed = framing::prefix(body.len());
    framed.extend_from_slice(&body);
    out.push(("webrtc_signal", framed));
    // A FIN_ACK, then a data frame split after its length (as js-libp2p sends them).
    let mut frames = vec![3u8];
    frames.extend_from_slice(&cairn_p2p::webrtc_stream::FIN_ACK_FRAME);
    frames.extend_from_slice(&[7, 0x12, 5, b'h', b'e', b'l', b'l', b'o']);
    out.push(("webrtc_frames", frames));
    out.push((
        "announce",
        cairn_p2p::announce::encode(&raw, 5, 1_800_000_000, std::time::Duration::from_secs(600)),
    ));
    let provider = cairn_p2p::routing_v1::Provider {
        peer: libp2p::PeerId::from_public_key(
            &libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32])
                .expect("a fixed key")
                .public(),
        ),
        addrs: vec!["/ip4/198.51.100.7/tcp/4001".parse().expect("an address")],
        protocols: vec!["transport-bitswap".into()],
    };
    let json = cairn_p2p::routing_v1::to_json(std::slice::from_ref(&provider));
    out.push(("routing_v1", json.into_bytes()));
    out.push((
        "routing_v1",
        br#"{"Schema":"peer","ID":"12D3KooWAbc","Addrs":[],"Protocols":["transport-bitswap"]}"#
            .to_vec(),
    ));
    let mut honest = vec![0u8];
    honest.extend_from_slice(b"a block's bytes");
    out.push(("block_file", honest));
    out.push(("block_file", b"\x01other".to_vec()));
    out
}
