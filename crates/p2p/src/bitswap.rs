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
use cairn_core::protobuf::{DecodeError, Reader, err, put_bytes, put_uint};
use cairn_core::store::BlockStore;
use futures::channel::{mpsc, oneshot};
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, SinkExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};

use crate::cas::{read_frame, write_frame};

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
const MAX_WAITING_STREAMS: usize = 256;
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
        let mut r = Reader::new(&self.prefix, W);
        let version = r.varint()?;
        let codec = r.varint()?;
        let code = r.varint()?;
        let len = r.varint()?;
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
        let mut out = Vec::with_capacity(
            64 + self.wantlist.len() * 48
                + self.blocks.iter().map(|b| b.data.len() + 16).sum::<usize>(),
        );
        if !self.wantlist.is_empty() || self.full {
            let mut wl = Vec::with_capacity(self.wantlist.len() * 48);
            for e in &self.wantlist {
                let mut en = Vec::with_capacity(48);
                put_bytes(&mut en, 1, &e.cid.to_bytes());
                put_uint(&mut en, 2, e.priority as i64 as u64);
                if e.cancel {
                    put_uint(&mut en, 3, 1);
                }
                if e.want_type == WantType::Have {
                    put_uint(&mut en, 4, 1);
                }
                if e.send_dont_have {
                    put_uint(&mut en, 5, 1);
                }
                put_bytes(&mut wl, 1, &en);
            }
            if self.full {
                put_uint(&mut wl, 2, 1);
            }
            put_bytes(&mut out, 1, &wl);
        }
        for b in &self.blocks {
            let mut pb = Vec::with_capacity(b.data.len() + 16);
            put_bytes(&mut pb, 1, &b.prefix);
            put_bytes(&mut pb, 2, &b.data);
            put_bytes(&mut out, 3, &pb);
        }
        for (cid, p) in &self.presences {
            let mut pb = Vec::with_capacity(48);
            put_bytes(&mut pb, 1, &cid.to_bytes());
            if *p == Presence::DontHave {
                put_uint(&mut pb, 2, 1);
            }
            put_bytes(&mut out, 4, &pb);
        }
        if self.pending_bytes != 0 {
            put_uint(&mut out, 5, self.pending_bytes as i64 as u64);
        }
        out
    }

    /// Decodes a message; refuses more than [`MAX_WANTLIST`] entries.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        const W: &str = "bitswap message";
        let mut m = Message::default();
        let mut r = Reader::new(buf, W);
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 2) => decode_wantlist(&r.bytes()?, &mut m)?,
                (2, 2) => {
                    // 1.0.0: bare blocks, implicitly CIDv0 (dag-pb, sha2-256).
                    let data = r.bytes()?;
                    m.blocks.push(Payload {
                        prefix: Bytes::from_static(&[0, 0x70, 0x12, 0x20]),
                        data,
                    });
                }
                (3, 2) => {
                    let b = r.bytes()?;
                    let mut br = Reader::new(&b, "bitswap block");
                    let (mut prefix, mut data) = (Bytes::new(), Bytes::new());
                    while let Some((f, w)) = br.key()? {
                        match (f, w) {
                            (1, 2) => prefix = br.bytes()?,
                            (2, 2) => data = br.bytes()?,
                            (_, w) => br.skip(w)?,
                        }
                    }
                    m.blocks.push(Payload { prefix, data });
                }
                (4, 2) => {
                    let b = r.bytes()?;
                    let mut pr = Reader::new(&b, "bitswap block presence");
                    let (mut cid, mut presence) = (None, Presence::Have);
                    while let Some((f, w)) = pr.key()? {
                        match (f, w) {
                            (1, 2) => cid = Some(parse_cid(&pr.bytes()?)?),
                            (2, 0) => {
                                presence = if pr.varint()? == 1 {
                                    Presence::DontHave
                                } else {
                                    Presence::Have
                                }
                            }
                            (_, w) => pr.skip(w)?,
                        }
                    }
                    let cid = cid.ok_or(err("bitswap block presence", "no CID"))?;
                    m.presences.push((cid, presence));
                }
                (5, 0) => m.pending_bytes = r.varint()? as i32,
                (_, w) => r.skip(w)?,
            }
        }
        Ok(m)
    }
}

fn parse_cid(b: &[u8]) -> Result<Cid, DecodeError> {
    Cid::try_from(b).map_err(|_| err("bitswap message", "invalid CID"))
}

fn decode_wantlist(buf: &Bytes, m: &mut Message) -> Result<(), DecodeError> {
    const W: &str = "bitswap wantlist";
    let mut r = Reader::new(buf, W);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => {
                if m.wantlist.len() >= MAX_WANTLIST {
                    return Err(err(W, "more than 1024 entries"));
                }
                let b = r.bytes()?;
                let mut er = Reader::new(&b, "bitswap wantlist entry");
                let (mut cid, mut priority, mut cancel) = (None, 0, false);
                let (mut want_type, mut send_dont_have) = (WantType::Block, false);
                while let Some((f, w)) = er.key()? {
                    match (f, w) {
                        (1, 2) => cid = Some(parse_cid(&er.bytes()?)?),
                        (2, 0) => priority = er.varint()? as i32,
                        (3, 0) => cancel = er.varint()? != 0,
                        (4, 0) => {
                            want_type = if er.varint()? == 1 {
                                WantType::Have
                            } else {
                                WantType::Block
                            }
                        }
                        (5, 0) => send_dont_have = er.varint()? != 0,
                        (_, w) => er.skip(w)?,
                    }
                }
                m.wantlist.push(Entry {
                    cid: cid.ok_or(err("bitswap wantlist entry", "no CID"))?,
                    priority,
                    cancel,
                    want_type,
                    send_dont_have,
                });
            }
            (2, 0) => m.full = r.varint()? != 0,
            (_, w) => r.skip(w)?,
        }
    }
    Ok(())
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
    writers: HashMap<PeerId, mpsc::Sender<Message>>,
    /// Recently cancelled wants, by peer.
    cancelled: HashMap<PeerId, VecDeque<Cid>>,
    /// Protocol violations, by peer.
    strikes: HashMap<PeerId, u32>,
    next_id: u64,
    stats: Stats,
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
    new_writers: mpsc::Sender<(PeerId, mpsc::Receiver<Message>)>,
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
            let _ = w.try_send(Message {
                wantlist: vec![Entry::cancel(self.cid)],
                ..Default::default()
            });
        }
    }
}

impl Bitswap {
    /// A handle and the engine future that serves `store` and carries the handle's wants;
    /// the engine stops when `streams` is dropped by the swarm and every handle is gone.
    pub fn new<S: BlockStore>(
        streams: libp2p_stream::Control,
        store: S,
        config: Config,
    ) -> (Self, impl Future<Output = ()> + CondSend) {
        let (tx, rx) = mpsc::channel(16);
        let bitswap = Self {
            shared: Arc::default(),
            new_writers: tx,
        };
        let engine = engine(bitswap.clone(), streams, store, config, rx);
        (bitswap, engine)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats
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
        self.send(
            peer,
            Message {
                wantlist: vec![Entry::want_block(cid)],
                ..Default::default()
            },
        )
        .await?;
        match rx.await {
            Ok(Answer::Block(b)) => Ok(b),
            Ok(Answer::DontHave) => Err(WantError::DontHave),
            Ok(Answer::Invalid(m)) => Err(WantError::Invalid(m)),
            Ok(Answer::Failed(m)) => Err(WantError::Failed(m)),
            Err(_) => Err(WantError::Failed("the bitswap engine stopped".into())),
        }
    }

    /// Sends a raw message to `peer` (tools and tests; [`Bitswap::want`] is the client).
    pub async fn send_message(&self, peer: PeerId, msg: Message) -> Result<(), WantError> {
        self.send(peer, msg).await
    }

    /// Queues `msg` to `peer`, starting its sender if there is none.
    async fn send(&self, peer: PeerId, msg: Message) -> Result<(), WantError> {
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
            if writer.send(msg.clone()).await.is_ok() {
                return Ok(());
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
                    sh.stats.bad_messages += 1;
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
                sh.stats.blocks_received += 1;
                continue;
            }
            let late = sh.cancelled.get(peer).is_some_and(|r| r.contains(&cid));
            if !late {
                sh.stats.unwanted_blocks += 1;
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
    mut control: libp2p_stream::Control,
    store: S,
    config: Config,
    mut new_writers: mpsc::Receiver<(PeerId, mpsc::Receiver<Message>)>,
) {
    // Only this engine accepts these protocols, so registering cannot collide; if it did,
    // the node would still ask (its wants go out on streams it opens).
    let mut incoming =
        futures::stream::select_all([PROTOCOL, PROTOCOL_1_1].into_iter().filter_map(|p| {
            match control.accept(p.clone()) {
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
                        if queue.len() < MAX_WAITING_STREAMS {
                            queue.push_back(stream);
                        } else {
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
                let next = waiting.get_mut(&peer).and_then(VecDeque::pop_front);
                if waiting.get(&peer).is_some_and(VecDeque::is_empty) {
                    waiting.remove(&peer);
                }
                match next {
                    // The slot passes to the next stream from the same peer.
                    Some(stream) => readers.push(read_from(&bitswap, store, config, peer, stream)),
                    None => {
                        if let Some(n) = per_peer.get_mut(&peer) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                per_peer.remove(&peer);
                            }
                        }
                    }
                }
            },
        }
        if handles_gone && writers.is_empty() && readers.is_empty() {
            break;
        }
    }
}

/// Sends the messages queued for `peer` on one stream, opened when first needed and again
/// after a failure. Queued wantlist-only messages are merged into one.
async fn write_loop(
    bitswap: &Bitswap,
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Message>,
    open_timeout: Duration,
) {
    let mut stream: Option<Stream> = None;
    let mut held: Option<Message> = None;
    loop {
        let mut msg = match held.take() {
            Some(m) => m,
            None => match queue.next().await {
                Some(m) => m,
                None => break,
            },
        };
        if msg.blocks.is_empty() {
            while msg.wantlist.len() < MAX_WANTLIST / 2 {
                match queue.try_recv() {
                    Ok(more) if more.blocks.is_empty() => {
                        msg.wantlist.extend(more.wantlist);
                        msg.presences.extend(more.presences);
                    }
                    Ok(more) => {
                        held = Some(more);
                        break;
                    }
                    _ => break,
                }
            }
        }
        if let Err(reason) = send_one(&mut stream, &mut control, peer, &msg, open_timeout).await {
            tracing::debug!(%peer, %reason, "bitswap: cannot send");
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
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Writes one message, opening the stream if needed; one retry on a fresh stream.
async fn send_one(
    stream: &mut Option<Stream>,
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    msg: &Message,
    open_timeout: Duration,
) -> Result<(), String> {
    let body = msg.encode();
    let mut last = String::new();
    for _ in 0..2 {
        if stream.is_none() {
            match cairn_core::rt::timeout(open_timeout, control.open_stream(peer, PROTOCOL)).await {
                Some(Ok(s)) => *stream = Some(s),
                Some(Err(e)) => return Err(format!("cannot open a bitswap stream: {e}")),
                None => {
                    return Err(format!(
                        "cannot open a bitswap stream: no answer within {open_timeout:?}"
                    ));
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        match write_frame(s, &body).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = format!("bitswap stream failed: {e}");
                *stream = None;
            }
        }
    }
    Err(last)
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
        let frame = match read_frame(&mut stream, MAX_MESSAGE).await {
            Ok(f) => Bytes::from(f),
            Err(crate::cas::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bitswap: dropping the stream");
                if matches!(e, crate::cas::Error::TooLarge { .. }) {
                    bitswap.lock().stats.bad_messages += 1;
                    bitswap.strike(&peer);
                }
                return;
            }
        };
        let msg = match Message::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bitswap: malformed message; dropping the stream");
                bitswap.lock().stats.bad_messages += 1;
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

/// Answers a wantlist from the store: blocks (packed up to [`MAX_ANSWER_BYTES`] per
/// message), `Have`, and `DontHave` where asked for.
async fn answer<S: BlockStore>(bitswap: &Bitswap, store: &S, peer: PeerId, wants: Vec<Entry>) {
    let mut out = Message::default();
    let mut size = 0usize;
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for e in wants.into_iter().filter(|e| !e.cancel) {
        match e.want_type {
            WantType::Block => match store.get(&e.cid).await {
                Ok(Some(block)) => {
                    let data = block.data().clone();
                    if size + data.len() > MAX_ANSWER_BYTES && !out.blocks.is_empty() {
                        if bitswap.send(peer, std::mem::take(&mut out)).await.is_err() {
                            return;
                        }
                        size = 0;
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
    if !out.is_empty() && bitswap.send(peer, out).await.is_err() {
        return;
    }
    let mut sh = bitswap.lock();
    sh.stats.blocks_sent += blocks;
    sh.stats.bytes_sent += bytes;
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
