//! Bitswap 1.2.0, client and server, over raw libp2p streams: how cairn trades blocks with
//! IPFS peers (Helia, Kubo, boxo) that do not speak `/cas`.
//!
//! ## Wire
//! Each side sends on a stream it opened (`/ipfs/bitswap/1.2.0`) a sequence of messages, each
//! an unsigned-varint length and a protobuf `Message`:
//! ```text
//! message Message {
//!   message Wantlist {
//!     message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3;
//!                     WantType wantType = 4; bool sendDontHave = 5; }   // Block = 0, Have = 1
//!     repeated Entry entries = 1; bool full = 2; }
//!   message Block { bytes prefix = 1; bytes data = 2; }   // prefix: CID version, codec,
//!                                                          // multihash code and length
//!   message BlockPresence { bytes cid = 1; Type type = 2; } // Have = 0, DontHave = 1
//!   Wantlist wantlist = 1; repeated bytes blocks = 2 /* 1.0.0 */; repeated Block payload = 3;
//!   repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5; }
//! ```
//! Answers come back on a stream the *other* side opened, so requests are matched to answers
//! by CID, not by stream.
//!
//! ## What cairn does differently from a stock bitswap client
//! - Wants are targeted: [`Bitswap::want`] asks one peer (the IPFS source picks providers and
//!   races a few), instead of broadcasting every want to every connected peer.
//! - Every block is hashed on arrival (the CID is rebuilt from the prefix and the data), so a
//!   block that matches no CID we asked for is caught at once: the peer's pending wants fail
//!   as invalid, and the source penalises it.
//! - Everything is bounded: messages ([`MAX_MESSAGE`]), wantlist entries per message
//!   ([`MAX_WANTLIST`]), inbound streams per peer and in all, the queue to each peer. A peer
//!   that sends malformed or oversized messages has its stream dropped and, after
//!   [`MAX_STRIKES`], is not served any more.
//! - The server answers from the store at once (a block, `Have`, or `DontHave` when asked);
//!   it keeps no wantlist for blocks it may get later.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cairn_core::CondSend;
use cairn_core::cid::{Cid, HashAlg};
use cairn_core::protobuf::{DecodeError, Reader, err};
use cairn_core::store::BlockStore;
use futures::channel::{mpsc, oneshot};
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, SinkExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};

use crate::budget::{self, Budget, Permit};
use crate::framing::{self, read_frame};

#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    rust_2018_idioms
)]
mod message;
use crate::streams::{Control, Stream};
use message::pb;

/// The protocol cairn speaks and answers.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
/// Also answered (same messages, without presences).
pub const PROTOCOL_1_1: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.1.0");
/// Largest message read or written (boxo's and Helia's limit): a 2 MiB block fits.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Most wantlist entries accepted in one message; more is refused as abuse.
pub const MAX_WANTLIST: usize = 1024;
/// Bytes of blocks packed into one answer (a single larger block still goes alone).
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;
/// Protocol violations after which a peer is no longer served.
pub const MAX_STRIKES: u32 = 3;
/// Cancelled wants remembered per peer, so that a block already on its way is not taken
/// for one nobody asked for.
const RECENT_CANCELS: usize = 1024;
/// Inbound streams from one peer held until a reader is free; past that they are dropped.
const MAX_WAITING_PER_PEER: usize = 8;
/// Inbound streams waiting for a reader, from all peers. A waiting stream is not read, so
/// the muxer buffers what its peer sends on it, up to a whole window: these bound that.
const MAX_WAITING: usize = 64;
/// Inbound streams of each bitswap protocol waiting for the engine to take them; past
/// that, new ones are reset. Room for a burst while the engine is busy (each connection's
/// streams are bounded on their own).
const ACCEPT_QUEUE: usize = 256;
/// How long a reader waits for the next message on its stream before it lets the stream go
/// (the peer opens another when it has more to say), so idle streams cannot hold the
/// reader slots.
const IDLE: Duration = Duration::from_secs(60);
/// Messages queued to one peer before senders wait.
const QUEUE: usize = 64;

/// A wantlist entry's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantType {
    /// Send the block.
    Block,
    /// Say whether you have it.
    Have,
}

/// A wantlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The wanted block.
    pub cid: Cid,
    /// Higher first.
    pub priority: i32,
    /// Withdraws an earlier want.
    pub cancel: bool,
    /// Block or have.
    pub want_type: WantType,
    /// Whether to answer `DontHave` when the peer lacks it.
    pub send_dont_have: bool,
}

impl Entry {
    /// A want for the block itself, asking for `DontHave` if absent.
    pub fn want_block(cid: Cid) -> Self {
        Self {
            cid,
            priority: 1,
            cancel: false,
            want_type: WantType::Block,
            send_dont_have: true,
        }
    }

    /// Withdraws the want for `cid`.
    pub fn cancel(cid: Cid) -> Self {
        Self {
            cid,
            priority: 0,
            cancel: true,
            want_type: WantType::Block,
            send_dont_have: false,
        }
    }
}

/// A block presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The peer has the block.
    Have,
    /// The peer does not have it.
    DontHave,
}

/// A block as bitswap carries it: a CID prefix and the data; the CID is the receiver's to
/// compute (which is what verifies the data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// CID version, codec, multihash code and digest length, as varints.
    pub prefix: Bytes,
    /// The block's bytes.
    pub data: Bytes,
}

impl Payload {
    /// The payload for `data` under `cid`.
    pub fn new(cid: &Cid, data: Bytes) -> Self {
        let mut prefix = Vec::with_capacity(8);
        cairn_core::varint::put(&mut prefix, u64::from(cid.version()));
        cairn_core::varint::put(&mut prefix, cid.codec());
        cairn_core::varint::put(&mut prefix, cid.hash().code());
        cairn_core::varint::put(&mut prefix, u64::from(cid.hash().size()));
        Self {
            prefix: prefix.into(),
            data,
        }
    }

    /// Hashes the data as the prefix says and returns the CID it makes: the CID this data
    /// really is, whatever the sender meant.
    pub fn cid(&self) -> Result<Cid, DecodeError> {
        const W: &str = "bitswap block prefix";
        let mut rest: &[u8] = &self.prefix;
        let mut next = || -> Result<u64, DecodeError> {
            let (v, tail) =
                unsigned_varint::decode::u64(rest).map_err(|_| err(W, "invalid varint"))?;
            rest = tail;
            Ok(v)
        };
        let version = next()?;
        let codec = next()?;
        let code = next()?;
        let len = next()?;
        let alg = HashAlg::from_code(code).map_err(|_| err(W, "unsupported hash function"))?;
        let mh = alg.digest(&self.data);
        if u64::from(mh.size()) != len {
            return Err(err(W, "unsupported digest length"));
        }
        match version {
            0 if codec == 0x70 && alg == HashAlg::Sha2_256 => {
                Cid::new_v0(mh).map_err(|_| err(W, "invalid CIDv0"))
            }
            1 => Ok(Cid::new_v1(codec, mh)),
            _ => Err(err(W, "unsupported CID version")),
        }
    }
}

/// One bitswap message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Wantlist entries.
    pub wantlist: Vec<Entry>,
    /// Whether the wantlist replaces the previous one.
    pub full: bool,
    /// Blocks (`payload`; 1.0.0's `blocks` are read into it as CIDv0 blocks).
    pub blocks: Vec<Payload>,
    /// Block presences.
    pub presences: Vec<(Cid, Presence)>,
    /// Bytes the sender still has queued for us.
    pub pending_bytes: i32,
}

impl Message {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.wantlist.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// Encodes the message (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        use pb::mod_Message::{self as m, mod_Wantlist as w};
        use std::borrow::Cow;
        let cids: Vec<Vec<u8>> = self.wantlist.iter().map(|e| e.cid.to_bytes()).collect();
        let presence_cids: Vec<Vec<u8>> =
            self.presences.iter().map(|(c, _)| c.to_bytes()).collect();
        let msg = pb::Message {
            wantlist: (!self.wantlist.is_empty() || self.full).then(|| m::Wantlist {
                entries: self
                    .wantlist
                    .iter()
                    .zip(&cids)
                    .map(|(e, cid)| w::Entry {
                        block: Cow::Borrowed(cid),
                        priority: e.priority,
                        cancel: e.cancel,
                        wantType: match e.want_type {
                            WantType::Block => w::WantType::Block,
                            WantType::Have => w::WantType::Have,
                        },
                        sendDontHave: e.send_dont_have,
                    })
                    .collect(),
                full: self.full,
            }),
            blocks: Vec::new(),
            payload: self
                .blocks
                .iter()
                .map(|b| m::Block {
                    prefix: Cow::Borrowed(&b.prefix),
                    data: Cow::Borrowed(&b.data),
                })
                .collect(),
            blockPresences: self
                .presences
                .iter()
                .zip(&presence_cids)
                .map(|((_, p), cid)| m::BlockPresence {
                    cid: Cow::Borrowed(cid),
                    type_pb: match p {
                        Presence::Have => m::BlockPresenceType::Have,
                        Presence::DontHave => m::BlockPresenceType::DontHave,
                    },
                })
                .collect(),
            pendingBytes: self.pending_bytes,
        };
        let mut out = Vec::with_capacity(quick_protobuf::MessageWrite::get_size(&msg));
        let mut writer = quick_protobuf::Writer::new(&mut out);
        // Writing into a Vec cannot fail.
        let _ = quick_protobuf::MessageWrite::write_message(&msg, &mut writer);
        out
    }

    /// Decodes a message (without the length prefix); `bytes` fields are slices of `buf`.
    ///
    /// Read with [`cairn_core::protobuf::Reader`], each nested message from its own slice:
    /// quick-protobuf 0.8's nested reads trust a nested length past its parent's end (an
    /// arithmetic overflow the fuzzer found), so the generated reader is used for writing
    /// only.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        const W: &str = "bitswap message";
        let mut out = Message::default();
        let mut r = Reader::new(buf, W);
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 2) => decode_wantlist(&r.bytes()?, &mut out)?,
                // 1.0.0: bare blocks, implicitly CIDv0 (dag-pb, sha2-256).
                (2, 2) => out.blocks.push(Payload {
                    prefix: Bytes::from_static(&[0, 0x70, 0x12, 0x20]),
                    data: r.bytes()?,
                }),
                (3, 2) => out.blocks.push(decode_block(&r.bytes()?)?),
                (4, 2) => out.presences.push(decode_presence(&r.bytes()?)?),
                // int32 on the wire: a varint, truncated as protobuf does.
                (5, 0) => out.pending_bytes = r.varint()? as i32,
                (_, wire) => r.skip(wire)?,
            }
        }
        Ok(out)
    }
}

fn decode_wantlist(buf: &Bytes, out: &mut Message) -> Result<(), DecodeError> {
    let mut r = Reader::new(buf, "bitswap wantlist");
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => {
                if out.wantlist.len() >= MAX_WANTLIST {
                    return Err(err("bitswap wantlist", "more than 1024 entries"));
                }
                out.wantlist.push(decode_entry(&r.bytes()?)?);
            }
            (2, 0) => out.full = r.varint()? != 0,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(())
}

fn decode_entry(buf: &Bytes) -> Result<Entry, DecodeError> {
    const W: &str = "bitswap wantlist entry";
    let mut r = Reader::new(buf, W);
    let mut cid = None;
    let mut entry = Entry {
        cid: Cid::default(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => cid = Some(parse_cid(&r.bytes()?)?),
            (2, 0) => entry.priority = r.varint()? as i32,
            (3, 0) => entry.cancel = r.varint()? != 0,
            (4, 0) => {
                entry.want_type = if r.varint()? == 1 {
                    WantType::Have
                } else {
                    WantType::Block
                }
            }
            (5, 0) => entry.send_dont_have = r.varint()? != 0,
            (_, wire) => r.skip(wire)?,
        }
    }
    entry.cid = cid.ok_or_else(|| err(W, "no CID"))?;
    Ok(entry)
}

fn decode_block(buf: &Bytes) -> Result<Payload, DecodeError> {
    let mut r = Reader::new(buf, "bitswap block");
    let (mut prefix, mut data) = (Bytes::new(), Bytes::new());
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => prefix = r.bytes()?,
            (2, 2) => data = r.bytes()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(Payload { prefix, data })
}

fn decode_presence(buf: &Bytes) -> Result<(Cid, Presence), DecodeError> {
    const W: &str = "bitswap block presence";
    let mut r = Reader::new(buf, W);
    let (mut cid, mut presence) = (None, Presence::Have);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => cid = Some(parse_cid(&r.bytes()?)?),
            (2, 0) => {
                presence = if r.varint()? == 1 {
                    Presence::DontHave
                } else {
                    Presence::Have
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((cid.ok_or_else(|| err(W, "no CID"))?, presence))
}

fn parse_cid(b: &[u8]) -> Result<Cid, DecodeError> {
    Cid::try_from(b).map_err(|_| err("bitswap message", "invalid CID"))
}

/// Why a want failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WantError {
    /// The peer said it does not have the block.
    #[error("does not have it")]
    DontHave,
    /// The peer sent blocks that match no CID we asked for (tampered, or garbage).
    #[error("sent invalid data: {0}")]
    Invalid(String),
    /// The peer could not be reached over bitswap, went away, or broke the protocol.
    #[error("{0}")]
    Failed(String),
}

enum Answer {
    Block(Bytes),
    DontHave,
    Invalid(String),
    Failed(String),
}

type Waiters = Vec<(u64, oneshot::Sender<Answer>)>;

#[derive(Default)]
struct Shared {
    /// Pending wants, by peer asked and CID.
    wants: HashMap<PeerId, HashMap<Cid, Waiters>>,
    /// The queue to each peer's sender.
    writers: HashMap<PeerId, mpsc::Sender<Queued>>,
    /// Recently cancelled wants, by peer.
    cancelled: HashMap<PeerId, VecDeque<Cid>>,
    /// Protocol violations, by peer.
    strikes: HashMap<PeerId, u32>,
    next_id: u64,
    stats: tokio::sync::watch::Sender<Stats>,
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks received that someone wanted.
    pub blocks_received: u64,
    /// Blocks sent to peers that wanted them.
    pub blocks_sent: u64,
    /// Bytes of those blocks.
    pub bytes_sent: u64,
    /// Blocks received that matched nothing asked for.
    pub unwanted_blocks: u64,
    /// Malformed or oversized messages received.
    pub bad_messages: u64,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether to answer other peers' wants from the store.
    pub serve: bool,
    /// Inbound streams read at once, in all.
    pub max_inbound_streams: usize,
    /// Inbound streams read at once from one peer.
    pub max_streams_per_peer: usize,
    /// How long opening a stream to a peer may take.
    pub open_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            serve: true,
            max_inbound_streams: 256,
            max_streams_per_peer: 8,
            open_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle on the bitswap engine: asks peers for blocks. Cheap to clone.
#[derive(Clone)]
pub struct Bitswap {
    shared: Arc<Mutex<Shared>>,
    new_writers: mpsc::Sender<(PeerId, mpsc::Receiver<Queued>)>,
    budget: Budget,
}

/// A message queued to a peer, with the answer bytes it holds in the [`Budget`] (none for
/// the node's own wants).
struct Queued {
    msg: Message,
    _permit: Option<Permit>,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitswap").finish_non_exhaustive()
    }
}

/// Removes a want when its future is dropped, and cancels it with the peer if nobody else
/// waits for it.
struct WantGuard<'a> {
    bitswap: &'a Bitswap,
    peer: PeerId,
    cid: Cid,
    id: u64,
}

impl Drop for WantGuard<'_> {
    fn drop(&mut self) {
        let mut sh = self.bitswap.lock();
        let Some(by_cid) = sh.wants.get_mut(&self.peer) else {
            return;
        };
        let Some(waiters) = by_cid.get_mut(&self.cid) else {
            return;
        };
        waiters.retain(|(id, _)| *id != self.id);
        if !waiters.is_empty() {
            return;
        }
        by_cid.remove(&self.cid);
        if by_cid.is_empty() {
            sh.wants.remove(&self.peer);
        }
        let recent = sh.cancelled.entry(self.peer).or_default();
        if recent.len() >= RECENT_CANCELS {
            recent.pop_front();
        }
        recent.push_back(self.cid);
        if let Some(w) = sh.writers.get_mut(&self.peer) {
            // Best effort: a full queue means the peer is slow anyway.
            let _ = w.try_send(Queued {
                msg: Message {
                    wantlist: vec![Entry::cancel(self.cid)],
                    ..Default::default()
                },
                _permit: None,
            });
        }
    }
}

impl Bitswap {
    /// A handle and the engine future that serves `store` and carries the handle's wants;
    /// the engine stops when `streams` is dropped by the swarm and every handle is gone.
    /// Blocks sent to peers hold their bytes in `budget` until written.
    pub fn new<S: BlockStore>(
        streams: Control,
        store: S,
        config: Config,
        budget: Budget,
    ) -> (Self, impl Future<Output = ()> + CondSend) {
        let (tx, rx) = mpsc::channel(16);
        let bitswap = Self {
            shared: Arc::default(),
            new_writers: tx,
            budget,
        };
        let engine = engine(bitswap.clone(), streams, store, config, rx);
        (bitswap, engine)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        *self.lock().stats.borrow()
    }

    /// The counters, told as they change (to wait for one without polling).
    pub fn watch_stats(&self) -> tokio::sync::watch::Receiver<Stats> {
        self.lock().stats.subscribe()
    }

    /// Asks `peer` for `cid` (want-block, send-dont-have) and waits for the verified block,
    /// its `DontHave`, or a failure. No timeout of its own: the caller bounds it, and
    /// dropping the future cancels the want with the peer.
    pub async fn want(&self, peer: PeerId, cid: Cid) -> Result<Bytes, WantError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut sh = self.lock();
            sh.next_id += 1;
            let id = sh.next_id;
            sh.wants
                .entry(peer)
                .or_default()
                .entry(cid)
                .or_default()
                .push((id, tx));
            id
        };
        let _guard = WantGuard {
            bitswap: self,
            peer,
            cid,
            id,
        };
        self.send_want(peer, cid).await?;
        match rx.await {
            Ok(Answer::Block(b)) => Ok(b),
            Ok(Answer::DontHave) => Err(WantError::DontHave),
            Ok(Answer::Invalid(m)) => Err(WantError::Invalid(m)),
            Ok(Answer::Failed(m)) => Err(WantError::Failed(m)),
            Err(_) => Err(WantError::Failed("the bitswap engine stopped".into())),
        }
    }

    /// Sends the want for `cid` to `peer` again, on a new stream (the next message to it
    /// opens one, on its best connection now: a direct one over a relayed one). For a want
    /// [`Bitswap::want`] is still waiting on: a want can be lost with no trace here, as when
    /// the stream it went out on was refused after optimistic protocol negotiation or the
    /// connection it used could not carry the answer back.
    pub async fn rewant(&self, peer: PeerId, cid: Cid) -> Result<(), WantError> {
        self.lock().writers.remove(&peer);
        self.send_want(peer, cid).await
    }

    /// Queues a want-block for `cid` to `peer`.
    async fn send_want(&self, peer: PeerId, cid: Cid) -> Result<(), WantError> {
        let msg = Message {
            wantlist: vec![Entry::want_block(cid)],
            ..Default::default()
        };
        self.send(peer, msg, None).await
    }

    /// Sends a raw message to `peer` (tools and tests; [`Bitswap::want`] is the client).
    pub async fn send_message(&self, peer: PeerId, msg: Message) -> Result<(), WantError> {
        self.send(peer, msg, None).await
    }

    /// Queues `msg` (holding `permit`) to `peer`, starting its sender if there is none.
    async fn send(
        &self,
        peer: PeerId,
        msg: Message,
        permit: Option<Permit>,
    ) -> Result<(), WantError> {
        let mut item = Queued {
            msg,
            _permit: permit,
        };
        for _ in 0..2 {
            let existing = self.lock().writers.get(&peer).cloned();
            let mut writer = match existing {
                Some(w) if !w.is_closed() => w,
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    self.lock().writers.insert(peer, tx.clone());
                    self.new_writers
                        .clone()
                        .send((peer, rx))
                        .await
                        .map_err(|_| WantError::Failed("the bitswap engine stopped".into()))?;
                    tx
                }
            };
            // Waits for room in the queue, keeping the item if the sender is gone.
            if futures::future::poll_fn(|cx| writer.poll_ready(cx))
                .await
                .is_ok()
            {
                match writer.try_send(item) {
                    Ok(()) => return Ok(()),
                    Err(e) => item = e.into_inner(),
                }
            }
        }
        Err(WantError::Failed(format!(
            "cannot send to {peer}: its bitswap sender stopped"
        )))
    }

    /// Fails every want pending with `peer` (it disconnected) and drops its sender.
    pub fn peer_gone(&self, peer: &PeerId) {
        let mut sh = self.lock();
        sh.writers.remove(peer);
        sh.cancelled.remove(peer);
        fail(&mut sh, peer, |_| Answer::Failed("disconnected".into()));
    }

    /// Records a protocol violation by `peer`; returns whether it is now past
    /// [`MAX_STRIKES`].
    fn strike(&self, peer: &PeerId) -> bool {
        let mut sh = self.lock();
        // Bounded: forget the oldest offenders' counts if a crowd misbehaves.
        if sh.strikes.len() >= 4096 && !sh.strikes.contains_key(peer) {
            sh.strikes.clear();
        }
        let s = sh.strikes.entry(*peer).or_default();
        *s += 1;
        *s >= MAX_STRIKES
    }

    fn banned(&self, peer: &PeerId) -> bool {
        self.lock()
            .strikes
            .get(peer)
            .is_some_and(|s| *s >= MAX_STRIKES)
    }

    /// Delivers what `peer` sent: blocks (verified by hashing) and presences.
    fn deliver(&self, peer: &PeerId, blocks: Vec<Payload>, presences: Vec<(Cid, Presence)>) {
        let mut sh = self.lock();
        for p in blocks {
            let cid = match p.cid() {
                Ok(c) => c,
                Err(e) => {
                    sh.stats.send_modify(|s| s.bad_messages += 1);
                    let m = format!("a block with an unusable prefix ({e})");
                    fail(&mut sh, peer, |_| Answer::Invalid(m.clone()));
                    continue;
                }
            };
            // Verified bytes are good from anyone: serve every peer's waiters for this CID.
            let mut delivered = false;
            for by_cid in sh.wants.values_mut() {
                if let Some(waiters) = by_cid.remove(&cid) {
                    for (_, tx) in waiters {
                        let _ = tx.send(Answer::Block(p.data.clone()));
                    }
                    delivered = true;
                }
            }
            sh.wants.retain(|_, w| !w.is_empty());
            if delivered {
                sh.stats.send_modify(|s| s.blocks_received += 1);
                continue;
            }
            let late = sh.cancelled.get(peer).is_some_and(|r| r.contains(&cid));
            if !late {
                sh.stats.send_modify(|s| s.unwanted_blocks += 1);
                tracing::debug!(%peer, %cid, "bitswap: a block nobody asked for");
                fail(&mut sh, peer, |_| {
                    Answer::Invalid(format!(
                        "sent a block ({cid}) that matches none of the CIDs asked for"
                    ))
                });
            }
        }
        for (cid, presence) in presences {
            if presence == Presence::DontHave
                && let Some(by_cid) = sh.wants.get_mut(peer)
                && let Some(waiters) = by_cid.remove(&cid)
            {
                for (_, tx) in waiters {
                    let _ = tx.send(Answer::DontHave);
                }
            }
        }
        sh.wants.retain(|_, w| !w.is_empty());
    }
}

/// Fails every want pending with `peer`.
fn fail(sh: &mut Shared, peer: &PeerId, answer: impl Fn(&Cid) -> Answer) {
    if let Some(by_cid) = sh.wants.remove(peer) {
        for (cid, waiters) in by_cid {
            for (_, tx) in waiters {
                let _ = tx.send(answer(&cid));
            }
        }
    }
}

async fn engine<S: BlockStore>(
    bitswap: Bitswap,
    mut control: Control,
    store: S,
    config: Config,
    mut new_writers: mpsc::Receiver<(PeerId, mpsc::Receiver<Queued>)>,
) {
    // Only this engine accepts these protocols, so registering cannot collide; if it did,
    // the node would still ask (its wants go out on streams it opens).
    let mut incoming =
        futures::stream::select_all([PROTOCOL, PROTOCOL_1_1].into_iter().filter_map(|p| {
            match control.accept(p.clone(), ACCEPT_QUEUE) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(protocol = %p, error = %e, "bitswap: cannot accept");
                    None
                }
            }
        }));
    let store = &store;
    let config = &config;
    let mut writers = FuturesUnordered::new();
    let mut readers = FuturesUnordered::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    // Streams over the per-peer limit wait here rather than being dropped: Helia opens a
    // stream per message, and a dropped one would be a lost block.
    let mut waiting: HashMap<PeerId, VecDeque<Stream>> = HashMap::new();
    let mut waiting_total = 0usize;
    let mut handles_gone = false;
    loop {
        futures::select! {
            new = new_writers.next() => match new {
                Some((peer, rx)) => writers.push(write_loop(&bitswap, control.clone(), peer, rx, config.open_timeout)),
                None => handles_gone = true,
            },
            inbound = incoming.next() => match inbound {
                Some((peer, stream)) => {
                    let n = per_peer.entry(peer).or_default();
                    if bitswap.banned(&peer) {
                        tracing::debug!(%peer, "bitswap: refusing a stream from a peer that broke the protocol");
                    } else if readers.len() >= config.max_inbound_streams || *n >= config.max_streams_per_peer {
                        let queue = waiting.entry(peer).or_default();
                        if queue.len() < MAX_WAITING_PER_PEER && waiting_total < MAX_WAITING {
                            queue.push_back(stream);
                            waiting_total += 1;
                        } else {
                            if queue.is_empty() {
                                waiting.remove(&peer);
                            }
                            tracing::debug!(%peer, "bitswap: too many inbound streams; dropping one");
                        }
                    } else {
                        *n += 1;
                        readers.push(read_from(&bitswap, store, config, peer, stream));
                    }
                }
                // The swarm is gone.
                None => break,
            },
            _ = writers.select_next_some() => {},
            peer = readers.select_next_some() => {
                if let Some(n) = per_peer.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_peer.remove(&peer);
                    }
                }
                // The free slot goes to a waiting stream: the same peer's first, else
                // another peer's that is under its own limit.
                let next = if waiting.contains_key(&peer) {
                    Some(peer)
                } else {
                    waiting
                        .keys()
                        .find(|p| per_peer.get(*p).copied().unwrap_or(0) < config.max_streams_per_peer)
                        .copied()
                };
                if let Some(p) = next
                    && let Some(stream) = waiting.get_mut(&p).and_then(VecDeque::pop_front)
                {
                    waiting_total -= 1;
                    if waiting.get(&p).is_some_and(VecDeque::is_empty) {
                        waiting.remove(&p);
                    }
                    *per_peer.entry(p).or_default() += 1;
                    readers.push(read_from(&bitswap, store, config, p, stream));
                }
            },
        }
        if handles_gone && writers.is_empty() && readers.is_empty() {
            break;
        }
    }
}

/// Sends the messages queued for `peer` on one stream, opened when first needed and again
/// after a failure. Queued wantlist-only messages are merged into one. A peer that takes
/// nothing of a message for the budget's stall timeout is cut, and the queue dropped with
/// the bytes it held.
async fn write_loop(
    bitswap: &Bitswap,
    mut control: Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Queued>,
    open_timeout: Duration,
) {
    let mut stream: Option<Stream> = None;
    let mut held: Option<Queued> = None;
    loop {
        let mut item = match held.take() {
            Some(m) => m,
            None => match queue.next().await {
                Some(m) => m,
                None => break,
            },
        };
        if item.msg.blocks.is_empty() {
            while item.msg.wantlist.len() < MAX_WANTLIST / 2 {
                match queue.try_recv() {
                    Ok(more) if more.msg.blocks.is_empty() => {
                        item.msg.wantlist.extend(more.msg.wantlist);
                        item.msg.presences.extend(more.msg.presences);
                    }
                    Ok(more) => {
                        held = Some(more);
                        break;
                    }
                    _ => break,
                }
            }
        }
        let block_bytes: usize = item.msg.blocks.iter().map(|b| b.data.len()).sum();
        if block_bytes > 0 {
            bitswap.budget.pace(block_bytes).await;
        }
        let stall = bitswap.budget.caps().stall_timeout;
        match send_one(
            &mut stream,
            &mut control,
            peer,
            &item.msg,
            open_timeout,
            stall,
        )
        .await
        {
            Ok(()) => {}
            Err(Unsent::Stalled) => {
                bitswap.budget.record_cut(peer, budget::BITSWAP);
                if let Some(s) = &stream {
                    control.cut_connection(peer, s.connection());
                }
                fail_wants(
                    bitswap,
                    peer,
                    &item.msg,
                    "stopped reading; disconnected".into(),
                );
                break;
            }
            Err(Unsent::Failed(reason)) => {
                tracing::debug!(%peer, %reason, "bitswap: cannot send");
                fail_wants(bitswap, peer, &item.msg, reason);
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Fails the wants `msg` carried to `peer`.
fn fail_wants(bitswap: &Bitswap, peer: PeerId, msg: &Message, reason: String) {
    let mut sh = bitswap.lock();
    for e in &msg.wantlist {
        if let Some(by_cid) = sh.wants.get_mut(&peer)
            && let Some(waiters) = by_cid.remove(&e.cid)
        {
            for (_, tx) in waiters {
                let _ = tx.send(Answer::Failed(reason.clone()));
            }
        }
    }
}

/// Why a message was not sent.
enum Unsent {
    /// The peer took nothing of it for the stall timeout.
    Stalled,
    /// The stream could not be opened or failed (twice).
    Failed(String),
}

/// Writes one message, opening the stream if needed; one retry on a fresh stream. Each piece
/// must be taken within `stall`.
async fn send_one(
    stream: &mut Option<Stream>,
    control: &mut Control,
    peer: PeerId,
    msg: &Message,
    open_timeout: Duration,
    stall: Duration,
) -> Result<(), Unsent> {
    let body = msg.encode();
    let prefix = framing::prefix(body.len());
    let mut last = String::new();
    for _ in 0..2 {
        if stream.is_none() {
            match cairn_core::rt::timeout(open_timeout, control.open_stream(peer, PROTOCOL)).await {
                Some(Ok(s)) => *stream = Some(s),
                Some(Err(e)) => {
                    return Err(Unsent::Failed(format!("cannot open a bitswap stream: {e}")));
                }
                None => {
                    return Err(Unsent::Failed(format!(
                        "cannot open a bitswap stream: no answer within {open_timeout:?}"
                    )));
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        match framing::write_paced(s, &[&prefix, &body], stall).await {
            Ok(()) => return Ok(()),
            Err(framing::PacedError::Stalled(_)) => return Err(Unsent::Stalled),
            Err(e) => {
                last = format!("bitswap stream failed: {e}");
                *stream = None;
            }
        }
    }
    Err(Unsent::Failed(last))
}

/// [`read_loop`], then the peer whose reader slot is free.
async fn read_from<S: BlockStore>(
    bitswap: &Bitswap,
    store: &S,
    config: &Config,
    peer: PeerId,
    stream: Stream,
) -> PeerId {
    read_loop(bitswap, store, config, peer, stream).await;
    peer
}

/// Reads messages from one inbound stream until it ends or breaks the protocol.
async fn read_loop<S: BlockStore>(
    bitswap: &Bitswap,
    store: &S,
    config: &Config,
    peer: PeerId,
    mut stream: Stream,
) {
    loop {
        let frame = match cairn_core::rt::timeout(IDLE, read_frame(&mut stream, MAX_MESSAGE)).await
        {
            None => {
                tracing::debug!(%peer, "bitswap: an inbound stream was idle for {IDLE:?}; letting it go");
                return;
            }
            Some(Ok(f)) => Bytes::from(f),
            Some(Err(e)) if e.is_closed() => return,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bitswap: dropping the stream");
                if matches!(
                    e,
                    framing::Error::TooLarge { .. } | framing::Error::Prefix(_)
                ) {
                    bitswap.lock().stats.send_modify(|s| s.bad_messages += 1);
                    bitswap.strike(&peer);
                }
                return;
            }
        };
        let msg = match Message::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bitswap: malformed message; dropping the stream");
                bitswap.lock().stats.send_modify(|s| s.bad_messages += 1);
                bitswap.strike(&peer);
                return;
            }
        };
        if !msg.blocks.is_empty() || !msg.presences.is_empty() {
            bitswap.deliver(&peer, msg.blocks, msg.presences);
        }
        if config.serve && !msg.wantlist.is_empty() {
            answer(bitswap, store, peer, msg.wantlist).await;
        }
    }
}

/// Bytes a message may need beyond its blocks: per entry a CID, a prefix and a little
/// protobuf, plus the envelope.
fn message_overhead(entries: usize) -> usize {
    1024 + entries * (cairn_core::cid::MAX_BINARY_LEN + 16)
}

/// The bytes a batch of an answer reserves: a full message, the block that overflows it
/// (read before the message is sent), and their framing.
const BATCH: usize = MAX_ANSWER_BYTES + cairn_core::MAX_BLOCK_SIZE;

/// Answers a wantlist from the store: blocks (packed up to [`MAX_ANSWER_BYTES`] per
/// message), `Have`, and `DontHave` where asked for.
///
/// Before reading a block it holds room for it in the answer [`Budget`], waiting when the
/// peer (or everyone) is at the cap: a peer that does not read its answers stops having its
/// wantlists read.
async fn answer<S: BlockStore>(bitswap: &Bitswap, store: &S, peer: PeerId, wants: Vec<Entry>) {
    let wants: Vec<Entry> = wants.into_iter().filter(|e| !e.cancel).collect();
    let overhead = message_overhead(wants.len());
    let blocks_wanted = wants.iter().any(|e| e.want_type == WantType::Block);
    let need = if blocks_wanted {
        BATCH + overhead
    } else {
        overhead
    };
    let mut permit = bitswap.budget.reserve(peer, budget::BITSWAP, need).await;
    let mut out = Message::default();
    let mut size = 0usize;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for e in wants {
        match e.want_type {
            WantType::Block => match store.get(&e.cid).await {
                Ok(Some(block)) => {
                    let data = block.data().clone();
                    if size + data.len() > MAX_ANSWER_BYTES && !out.blocks.is_empty() {
                        // What the message holds goes with it; the rest covers this block,
                        // and the batch is topped up for the next ones.
                        let sent = permit.split(size + overhead);
                        if bitswap
                            .send(peer, std::mem::take(&mut out), Some(sent))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        size = 0;
                        let top_up = (BATCH + overhead).saturating_sub(permit.bytes());
                        permit.merge(bitswap.budget.reserve(peer, budget::BITSWAP, top_up).await);
                    }
                    size += data.len();
                    blocks += 1;
                    bytes += data.len() as u64;
                    out.blocks.push(Payload::new(&e.cid, data));
                }
                Ok(None) | Err(_) => {
                    if e.send_dont_have {
                        out.presences.push((e.cid, Presence::DontHave));
                    }
                }
            },
            WantType::Have => match store.has(&e.cid).await {
                Ok(true) => out.presences.push((e.cid, Presence::Have)),
                Ok(false) | Err(_) => {
                    if e.send_dont_have {
                        out.presences.push((e.cid, Presence::DontHave));
                    }
                }
            },
        }
    }
    if !out.is_empty() {
        permit.shrink(size + overhead);
        if bitswap.send(peer, out, Some(permit)).await.is_err() {
            return;
        }
    }
    let sh = bitswap.lock();
    sh.stats.send_modify(|s| s.blocks_sent += blocks);
    sh.stats.send_modify(|s| s.bytes_sent += bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::cid::{Codec, of};

    fn cid(data: &[u8]) -> Cid {
        of(Codec::Raw, HashAlg::Sha2_256, data)
    }

    #[test]
    fn message_roundtrip() {
        let m = Message {
            wantlist: vec![
                Entry::want_block(cid(b"a")),
                Entry::cancel(cid(b"b")),
                Entry {
                    want_type: WantType::Have,
                    priority: -3,
                    ..Entry::want_block(cid(b"c"))
                },
            ],
            full: true,
            blocks: vec![Payload::new(&cid(b"d"), Bytes::from_static(b"d"))],
            presences: vec![(cid(b"e"), Presence::Have), (cid(b"f"), Presence::DontHave)],
            pending_bytes: 7,
        };
        let back = Message::decode(&Bytes::from(m.encode())).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn payload_cid_is_what_the_data_hashes_to() {
        let c = cid(b"hello");
        let p = Payload::new(&c, Bytes::from_static(b"hello"));
        assert_eq!(p.cid().unwrap(), c);
        let tampered = Payload {
            data: Bytes::from_static(b"hellO"),
            ..p.clone()
        };
        assert_ne!(tampered.cid().unwrap(), c);
        // CIDv0 (dag-pb, sha2-256), as 1.0.0 blocks imply.
        let v0 = Cid::new_v0(HashAlg::Sha2_256.digest(b"x")).unwrap();
        assert_eq!(
            Payload::new(&v0, Bytes::from_static(b"x")).cid().unwrap(),
            v0
        );
        let unknown_hash = Payload {
            prefix: Bytes::from_static(&[1, 0x55, 0x99, 0x20]),
            data: Bytes::new(),
        };
        assert!(unknown_hash.cid().is_err());
    }

    #[test]
    fn oversized_wantlists_are_refused() {
        let m = Message {
            wantlist: (0..=MAX_WANTLIST as u32)
                .map(|i| Entry::want_block(cid(&i.to_be_bytes())))
                .collect(),
            ..Default::default()
        };
        let e = Message::decode(&Bytes::from(m.encode())).unwrap_err();
        assert!(e.to_string().contains("more than 1024"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Message::decode(&Bytes::from(data));
        }
    }
}
