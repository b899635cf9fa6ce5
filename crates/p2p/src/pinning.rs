//! Collaborative pinning: `/cairn/pin/1.0.0`, by which a node asks a peer to keep a copy
//! of a DAG, and the peer accepts or refuses by its [`Policy`], fetches, pins and confirms.
//!
//! One request per stream, framed and CBOR-encoded like `/cas` ([`crate::framing`]):
//! `{"pin": {"root": "<cid>", "bytes": N}}` is answered, once the DAG is held in full (or
//! not), with `{"pinned": {"bytes": N}}` or `{"refused": {"code": C, "reason": "…"}}`;
//! `{"unpin": {"root": "<cid>"}}` with `{"unpinned": {}}`. A request is at most
//! [`MAX_MESSAGE`] bytes. The server fetches through the platform's [`Transfers`] (from the
//! asker and anyone else who has it, retried, resumable), checks the DAG's real size
//! against the quotas as soon as its root is read (cancelling what does not fit: nothing
//! of it is pinned), and keeps a record of who asked for what ([`Journal`]).
//!
//! The asker ([`Replicas`]) tracks the peers that confirmed, checks them now and then
//! (a random block of the DAG asked for over `/cas` and verified, so a peer cannot just say
//! yes), cuts the trust of a peer that fails a check, and asks another.

#![cfg_attr(wasm_browser, allow(clippy::arc_with_non_send_sync))]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_core::Cid;
use cairn_core::block::Block;
use cairn_core::transfer::{Journal, Request as Fetch, State, Transfers};
use cairn_core::{BoxFuture, CondSync};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::Node;
use crate::framing;

/// The protocol's name.
pub const PROTOCOL_NAME: &str = "/cairn/pin/1.0.0";
/// The protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL_NAME);
/// The largest request or answer.
pub const MAX_MESSAGE: usize = 4 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Keep the DAG under `root` (the asker says it weighs `bytes`).
    Pin {
        /// The root, as a CID string.
        root: String,
        /// The DAG's size as the asker knows it.
        bytes: u64,
    },
    /// Stop keeping it for this asker.
    Unpin {
        /// The root.
        root: String,
    },
}

/// Why a pin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// This peer keeps nothing for others.
    NotAccepting = 1,
    /// The asker is not among the peers this one keeps content for.
    Untrusted = 2,
    /// Past the asker's quota.
    RequesterQuota = 3,
    /// Past the peer's total quota.
    TotalQuota = 4,
    /// Too many pins in progress.
    Busy = 5,
    /// The DAG could not be fetched.
    FetchFailed = 6,
    /// The request was malformed.
    BadRequest = 7,
}

impl Refusal {
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::NotAccepting,
            2 => Self::Untrusted,
            3 => Self::RequesterQuota,
            4 => Self::TotalQuota,
            5 => Self::Busy,
            6 => Self::FetchFailed,
            7 => Self::BadRequest,
            _ => return None,
        })
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// Held in full and pinned.
    Pinned {
        /// The DAG's size.
        bytes: u64,
    },
    /// Not kept.
    Refused {
        /// [`Refusal`] as a number.
        code: u8,
        /// Why, for people.
        reason: String,
    },
    /// Released.
    Unpinned {},
}

/// What a peer keeps for others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Bytes kept for one asker.
    pub per_requester: u64,
    /// Bytes kept for all askers together.
    pub total: u64,
    /// The askers it keeps content for (`None`: anyone).
    pub trusted: Option<HashSet<PeerId>>,
    /// Pins fetched at once.
    pub at_once: usize,
    /// How long one pin may take to fetch.
    pub timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            per_requester: 1 << 30,
            total: 16 << 30,
            trusted: None,
            at_once: 4,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Where the server's pins are made and removed (the platform's store).
pub trait Pins: CondSync + 'static {
    /// Pins `root` (held in full).
    fn pin(&self, root: Cid) -> BoxFuture<'_, Result<(), cairn_core::store::Error>>;
    /// Removes the pin on `root`.
    fn unpin(&self, root: Cid) -> BoxFuture<'_, Result<(), cairn_core::store::Error>>;
    /// Whether `root` is pinned already (by this node's owner, say).
    fn pinned(&self, root: Cid) -> BoxFuture<'_, bool>;
}

/// Who asked for what, and whether the pin was the server's to make.
#[derive(Debug, Default)]
struct Book {
    held: BTreeMap<PeerId, BTreeMap<Cid, u64>>,
    /// Roots pinned because of askers (others were pinned before and stay when they go).
    ours: HashSet<Cid>,
}

impl Book {
    fn used_by(&self, peer: &PeerId) -> u64 {
        self.held.get(peer).map_or(0, |m| m.values().sum())
    }

    fn used(&self) -> u64 {
        // A root kept for several askers is held once.
        let mut seen = HashMap::new();
        for m in self.held.values() {
            for (c, b) in m {
                seen.insert(*c, *b);
            }
        }
        seen.values().sum()
    }

    fn holders(&self, root: &Cid) -> usize {
        self.held.values().filter(|m| m.contains_key(root)).count()
    }

    fn record(&self) -> String {
        let mut out = String::from("cairn-pins 1\n");
        for (peer, m) in &self.held {
            for (c, b) in m {
                let own = if self.ours.contains(c) {
                    "ours"
                } else {
                    "kept"
                };
                out.push_str(&format!("{peer} {c} {b} {own}\n"));
            }
        }
        out
    }

    fn restore(text: &str) -> Self {
        let mut book = Book::default();
        let mut lines = text.lines();
        if lines.next() != Some("cairn-pins 1") {
            return book;
        }
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let parsed = (|| {
                let peer: PeerId = f.first()?.parse().ok()?;
                let root = cairn_core::cid::parse(f.get(1)?).ok()?;
                let bytes: u64 = f.get(2)?.parse().ok()?;
                Some((peer, root, bytes, f.get(3) == Some(&"ours")))
            })();
            match parsed {
                Some((peer, root, bytes, ours)) => {
                    book.held.entry(peer).or_default().insert(root, bytes);
                    if ours {
                        book.ours.insert(root);
                    }
                }
                None => tracing::warn!(line, "skipped a pin record it cannot read"),
            }
        }
        book
    }
}

/// The server's state: its policy, its book, and the transfers it fetches with.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // holds the platform's handles
pub struct Server {
    policy: Arc<Policy>,
    book: Arc<Mutex<Book>>,
    transfers: Transfers,
    pins: Arc<dyn Pins>,
    journal: Option<Arc<dyn Journal>>,
    busy: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Server {
    /// A server keeping content by `policy`, fetching with `transfers`, pinning in `pins`
    /// and recording who asked for what in `journal`.
    pub async fn new(
        policy: Policy,
        transfers: Transfers,
        pins: Arc<dyn Pins>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<Self, cairn_core::store::Error> {
        let book = match &journal {
            Some(j) => j
                .load()
                .await?
                .map(|t| Book::restore(&t))
                .unwrap_or_default(),
            None => Book::default(),
        };
        Ok(Self {
            policy: Arc::new(policy),
            book: Arc::new(Mutex::new(book)),
            transfers,
            pins,
            journal,
            busy: Arc::default(),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes kept for `peer`, and for everyone.
    pub fn usage(&self, peer: &PeerId) -> (u64, u64) {
        let b = self.book();
        (b.used_by(peer), b.used())
    }

    /// The roots kept for `peer`.
    pub fn kept_for(&self, peer: &PeerId) -> Vec<Cid> {
        self.book()
            .held
            .get(peer)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    async fn save(&self) {
        let record = self.book().record();
        if let Some(j) = &self.journal
            && let Err(e) = j.save(record).await
        {
            tracing::warn!(error = %e, "the pin record could not be saved");
        }
    }

    fn refuse(code: Refusal, reason: impl Into<String>) -> Response {
        Response::Refused {
            code: code as u8,
            reason: reason.into(),
        }
    }

    /// Room for `bytes` more for `peer`, or why not.
    fn room(&self, peer: &PeerId, root: &Cid, bytes: u64) -> Result<(), Response> {
        let b = self.book();
        let already = b.held.values().any(|m| m.contains_key(root));
        let mine = b.used_by(peer);
        if mine + bytes > self.policy.per_requester {
            return Err(Self::refuse(
                Refusal::RequesterQuota,
                format!(
                    "{root} is {bytes} bytes; this peer keeps at most {} bytes for you and holds {mine}",
                    self.policy.per_requester
                ),
            ));
        }
        let all = b.used();
        if !already && all + bytes > self.policy.total {
            return Err(Self::refuse(
                Refusal::TotalQuota,
                format!(
                    "{root} is {bytes} bytes; this peer keeps at most {} bytes for others and holds {all}",
                    self.policy.total
                ),
            ));
        }
        Ok(())
    }

    /// Answers one request from `peer`.
    pub async fn answer(&self, peer: PeerId, req: Request) -> Response {
        match req {
            Request::Pin { root, bytes } => self.pin(peer, &root, bytes).await,
            Request::Unpin { root } => {
                let Ok(root) = cairn_core::cid::parse(&root) else {
                    return Self::refuse(Refusal::BadRequest, format!("{root:?} is not a CID"));
                };
                let release = {
                    let mut b = self.book();
                    if let Some(m) = b.held.get_mut(&peer) {
                        m.remove(&root);
                    }
                    b.held.retain(|_, m| !m.is_empty());
                    b.holders(&root) == 0 && b.ours.remove(&root)
                };
                if release && let Err(e) = self.pins.unpin(root).await {
                    tracing::warn!(%root, error = %e, "cannot remove a pin");
                }
                self.save().await;
                Response::Unpinned {}
            }
        }
    }

    async fn pin(&self, peer: PeerId, root: &str, bytes: u64) -> Response {
        let Ok(root) = cairn_core::cid::parse(root) else {
            return Self::refuse(Refusal::BadRequest, format!("{root:?} is not a CID"));
        };
        if self.policy.per_requester == 0 || self.policy.total == 0 {
            return Self::refuse(
                Refusal::NotAccepting,
                "this peer keeps no content for others",
            );
        }
        if let Some(t) = &self.policy.trusted
            && !t.contains(&peer)
        {
            return Self::refuse(
                Refusal::Untrusted,
                "this peer keeps content only for the peers it trusts, and you are not one",
            );
        }
        if self
            .book()
            .held
            .get(&peer)
            .is_some_and(|m| m.contains_key(&root))
        {
            let bytes = self.book().held[&peer][&root];
            return Response::Pinned { bytes };
        }
        if let Err(r) = self.room(&peer, &root, bytes) {
            return r;
        }
        // Bounded work: so many pins at once in all, half of them for one asker.
        {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            let all: usize = busy.values().sum();
            let mine = busy.get(&peer).copied().unwrap_or(0);
            if all >= self.policy.at_once || mine >= self.policy.at_once.div_ceil(2) {
                return Self::refuse(Refusal::Busy, "too many pins in progress; ask again later");
            }
            *busy.entry(peer).or_default() += 1;
        }
        let out = self.fetch_and_pin(peer, root).await;
        {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = busy.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(&peer);
                }
            }
        }
        out
    }

    async fn fetch_and_pin(&self, peer: PeerId, root: Cid) -> Response {
        let was_pinned = self.pins.pinned(root).await;
        let mut updates = self.transfers.subscribe();
        let id = match self
            .transfers
            .add(Fetch::new(root).ttl(self.policy.timeout))
        {
            Ok(id) => id,
            Err(e) => return Self::refuse(Refusal::FetchFailed, e.to_string()),
        };
        let status = loop {
            let Ok(s) = self.transfers.get(id) else {
                return Self::refuse(Refusal::FetchFailed, "the transfer was forgotten");
            };
            // The real size, as soon as the root is read: refuse what does not fit before
            // fetching it.
            if s.progress.bytes_total > 0
                && let Err(r) = self.room(&peer, &root, s.progress.bytes_total)
            {
                let _ = self.transfers.cancel(id);
                return r;
            }
            if s.state.finished() {
                break s;
            }
            if updates.next().await.is_none() {
                return Self::refuse(Refusal::FetchFailed, "this peer is stopping");
            }
        };
        if status.state != State::Done {
            return Self::refuse(
                Refusal::FetchFailed,
                format!(
                    "cannot fetch {root}: {}",
                    status.error.unwrap_or_else(|| status.state.to_string())
                ),
            );
        }
        if let Err(e) = self.pins.pin(root).await {
            return Self::refuse(Refusal::FetchFailed, format!("cannot pin {root}: {e}"));
        }
        let bytes = status.progress.bytes_total;
        {
            let mut b = self.book();
            b.held.entry(peer).or_default().insert(root, bytes);
            if !was_pinned {
                b.ours.insert(root);
            }
        }
        self.save().await;
        Response::Pinned { bytes }
    }

    /// Answers `/cairn/pin/1.0.0` on `node` until it stops.
    pub async fn serve(self, node: Node) {
        let mut control = node.streams();
        let Ok(mut incoming) = control.accept(PROTOCOL, 16) else {
            tracing::warn!("{PROTOCOL_NAME} is served already");
            return;
        };
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            futures::select! {
                s = incoming.next() => {
                    let Some((peer, mut stream)) = s else { break };
                    let server = self.clone();
                    running.push(async move {
                        let answer = match read_request(&mut stream).await {
                            Ok(req) => server.answer(peer, req).await,
                            Err(e) => Self::refuse(Refusal::BadRequest, e),
                        };
                        let _ = framing::write_frame(&mut stream, &framing::to_cbor(&answer)).await;
                        let _ = stream.close().await;
                    });
                }
                _ = running.select_next_some() => {}
            }
        }
    }
}

async fn read_request(stream: &mut crate::streams::Stream) -> Result<Request, String> {
    let body = cairn_core::rt::timeout(
        Duration::from_secs(10),
        framing::read_frame(stream, MAX_MESSAGE),
    )
    .await
    .ok_or("no request within 10 s")?
    .map_err(|e| e.to_string())?;
    framing::from_cbor(&body).map_err(|e| format!("not a pin request: {e}"))
}

/// Why asking a peer to pin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The peer refused, saying why.
    #[error("{peer} refused to keep a copy: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its code.
        refusal: Option<Refusal>,
        /// Its reason.
        reason: String,
    },
    /// The peer could not be asked, or did not answer.
    #[error("cannot ask {peer} to keep a copy: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
}

/// Asks `peer` to keep the DAG under `root` (`bytes` as known here); resolves once it holds
/// it in full, with the size it counted.
pub async fn request(
    node: &Node,
    peer: PeerId,
    root: Cid,
    bytes: u64,
    timeout: Duration,
) -> Result<u64, PinError> {
    let unreachable = |reason: String| PinError::Unreachable { peer, reason };
    let ask = async {
        let mut control = node.streams();
        let mut stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let req = Request::Pin {
            root: root.to_string(),
            bytes,
        };
        framing::write_frame(&mut stream, &framing::to_cbor(&req))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let body = framing::read_frame(&mut stream, MAX_MESSAGE)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        framing::from_cbor::<Response>(&body)
            .map_err(|e| unreachable(format!("a malformed answer: {e}")))
    };
    match cairn_core::rt::timeout(timeout, ask).await {
        None => Err(unreachable(format!("no answer within {timeout:?}"))),
        Some(Err(e)) => Err(e),
        Some(Ok(Response::Pinned { bytes })) => Ok(bytes),
        Some(Ok(Response::Refused { code, reason })) => Err(PinError::Refused {
            peer,
            refusal: Refusal::from_code(code),
            reason,
        }),
        Some(Ok(other)) => Err(unreachable(format!(
            "an answer that is not one to a pin: {other:?}"
        ))),
    }
}

/// Asks `peer` to release its copy for this node.
pub async fn release(node: &Node, peer: PeerId, root: Cid) -> Result<(), PinError> {
    let unreachable = |reason: String| PinError::Unreachable { peer, reason };
    let mut control = node.streams();
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    framing::write_frame(
        &mut stream,
        &framing::to_cbor(&Request::Unpin {
            root: root.to_string(),
        }),
    )
    .await
    .map_err(|e| unreachable(e.to_string()))?;
    let body = cairn_core::rt::timeout(
        Duration::from_secs(30),
        framing::read_frame(&mut stream, MAX_MESSAGE),
    )
    .await
    .ok_or_else(|| unreachable("no answer within 30 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    match framing::from_cbor::<Response>(&body) {
        Ok(Response::Unpinned {}) => Ok(()),
        other => Err(unreachable(format!("an unexpected answer: {other:?}"))),
    }
}

/// A replica's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// The peer.
    pub peer: PeerId,
    /// Checks passed since it confirmed.
    pub checks: u32,
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{peer} failed the check of {root}: {reason}")]
pub struct CheckFailed {
    /// The peer.
    pub peer: PeerId,
    /// The root.
    pub root: Cid,
    /// What it did.
    pub reason: String,
    /// It answered, without the block or with other bytes: it does not hold what it said
    /// (else it could not be reached, which says nothing of its honesty).
    pub lied: bool,
}

/// Asks `peer` for `block` (one of the DAG's, chosen by the caller at random) over `/cas`
/// and verifies it: a peer that said it keeps a copy must be able to give any of it.
pub async fn check(node: &Node, peer: PeerId, root: Cid, block: Cid) -> Result<(), CheckFailed> {
    let failed = |reason: String, lied: bool| CheckFailed {
        peer,
        root,
        reason,
        lied,
    };
    let got = cairn_core::rt::timeout(Duration::from_secs(30), node.get(peer, &block))
        .await
        .ok_or_else(|| failed(format!("no answer for {block} within 30 s"), false))?
        .map_err(|e| match e {
            cairn_core::source::PeerError::NotFound => failed(
                format!("it does not have {block}, which it said it keeps"),
                true,
            ),
            cairn_core::source::PeerError::Invalid(r) => {
                failed(format!("it sent other bytes for {block}: {r}"), true)
            }
            e => failed(format!("cannot be asked for {block}: {e}"), false),
        })?;
    Block::new(block, got)
        .map_err(|e| failed(format!("it sent other bytes for {block}: {e}"), true))?;
    Ok(())
}

/// How much a node trusts each peer with its copies: starts at 0.5, grows with each check
/// passed, falls to 0 on one failed (and a peer at 0 is not asked again).
#[derive(Debug, Default, Clone)]
pub struct Trust(Arc<Mutex<HashMap<PeerId, f64>>>);

impl Trust {
    /// A peer's trust.
    pub fn of(&self, peer: &PeerId) -> f64 {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .unwrap_or(&0.5)
    }

    /// A check passed.
    pub fn passed(&self, peer: PeerId) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let t = m.entry(peer).or_insert(0.5);
        *t = (*t + 0.1).min(1.0);
    }

    /// A peer that held a copy could not be reached: a little less trust.
    pub fn lost(&self, peer: PeerId) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let t = m.entry(peer).or_insert(0.5);
        *t = (*t - 0.2).max(0.05);
    }

    /// A check failed (or a pin was claimed and not held): no more trust.
    pub fn cut(&self, peer: PeerId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, 0.0);
    }
}

/// What a root's replicas came to after [`Replicas::ensure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The peers holding a confirmed copy.
    pub confirmed: Vec<PeerId>,
    /// Peers that refused or could not be asked, and why.
    pub refused: Vec<String>,
    /// Peers that failed a check: their trust was cut if they answered without the copy,
    /// lowered if they could not be reached; either way they were replaced if possible.
    pub failed_checks: Vec<String>,
}

/// A root's copies wanted, its DAG's blocks and its size.
type Target = (usize, Arc<Vec<Cid>>, u64);

/// Keeps `wanted` confirmed copies of roots on peers: asks, checks, replaces.
#[derive(Clone)]
pub struct Replicas {
    node: Node,
    trust: Trust,
    held: Arc<Mutex<HashMap<Cid, Vec<Replica>>>>,
    /// What [`Replicas::maintain`] keeps: per root, the copies wanted, the DAG's blocks and
    /// size.
    targets: Arc<Mutex<HashMap<Cid, Target>>>,
    /// How long one peer may take to fetch and pin.
    pub pin_timeout: Duration,
    /// Where the replicas, targets and trust are kept between runs.
    journal: Option<Arc<dyn Journal>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field(
                "roots",
                &self
                    .targets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .field("kept", &self.journal.is_some())
            .finish()
    }
}

impl Replicas {
    /// Replicas made through `node`.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            trust: Trust::default(),
            held: Arc::default(),
            targets: Arc::default(),
            pin_timeout: Duration::from_secs(600),
            journal: None,
        }
    }

    /// Replicas kept in `journal`: what it holds is restored (the copies, what is wanted
    /// of each root, the trust in each peer), and every change is written to it.
    pub async fn with_journal(
        node: Node,
        journal: Arc<dyn Journal>,
    ) -> Result<Self, cairn_core::store::Error> {
        let mut r = Self::new(node);
        if let Some(text) = journal.load().await? {
            r.restore(&text);
        }
        r.journal = Some(journal);
        Ok(r)
    }

    fn restore(&mut self, text: &str) {
        let mut lines = text.lines();
        if lines.next() != Some("cairn-replicas 1") {
            return;
        }
        let mut held = HashMap::new();
        let mut targets = HashMap::new();
        let mut trust = HashMap::new();
        let mut last: Option<Cid> = None;
        for line in lines {
            let mut f = line.split(' ');
            match f.next() {
                Some("trust") => {
                    if let (Some(Ok(p)), Some(Ok(t))) = (
                        f.next().map(str::parse::<PeerId>),
                        f.next().map(str::parse::<f64>),
                    ) {
                        trust.insert(p, t.clamp(0.0, 1.0));
                    }
                }
                Some("root") => {
                    let parsed = (|| {
                        let root = cairn_core::cid::parse(f.next()?).ok()?;
                        let wanted: usize = f.next()?.parse().ok()?;
                        let bytes: u64 = f.next()?.parse().ok()?;
                        let mut copies = Vec::new();
                        for c in f.next()?.split(',').filter(|c| *c != "-") {
                            let (p, n) = c.split_once(':')?;
                            copies.push(Replica {
                                peer: p.parse().ok()?,
                                checks: n.parse().ok()?,
                            });
                        }
                        Some((root, wanted, bytes, copies))
                    })();
                    last = None;
                    if let Some((root, wanted, bytes, copies)) = parsed {
                        held.insert(root, copies);
                        targets.insert(root, (wanted, Arc::new(Vec::new()), bytes));
                        last = Some(root);
                    }
                }
                Some("blocks") => {
                    if let Some(root) = last {
                        let blocks: Vec<Cid> =
                            f.filter_map(|c| cairn_core::cid::parse(c).ok()).collect();
                        if let Some(t) = targets.get_mut(&root) {
                            t.1 = Arc::new(blocks);
                        }
                    }
                }
                _ => {}
            }
        }
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = held;
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = targets;
        *self.trust.0.lock().unwrap_or_else(PoisonError::into_inner) = trust;
    }

    fn record(&self) -> String {
        let mut out = String::from("cairn-replicas 1\n");
        for (p, t) in self
            .trust
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.push_str(&format!("trust {p} {t}\n"));
        }
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for (root, (wanted, blocks, bytes)) in self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let copies: Vec<String> = held
                .get(root)
                .map(|v| {
                    v.iter()
                        .map(|r| format!("{}:{}", r.peer, r.checks))
                        .collect()
                })
                .unwrap_or_default();
            let copies = if copies.is_empty() {
                "-".to_owned()
            } else {
                copies.join(",")
            };
            out.push_str(&format!("root {root} {wanted} {bytes} {copies}\n"));
            out.push_str("blocks");
            for b in blocks.iter() {
                out.push(' ');
                out.push_str(&b.to_string());
            }
            out.push('\n');
        }
        out
    }

    async fn save(&self) {
        if let Some(j) = &self.journal {
            let record = self.record();
            if let Err(e) = j.save(record).await {
                tracing::warn!(error = %e, "the replicas could not be saved");
            }
        }
    }

    /// The trust kept of peers.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The confirmed replicas of `root`.
    pub fn of(&self, root: &Cid) -> Vec<Replica> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(root)
            .cloned()
            .unwrap_or_default()
    }

    /// Checks and completes the replicas of every root [`Replicas::ensure`] was asked for,
    /// asking `candidates` for copies that are missing.
    pub async fn maintain(&self, candidates: &[PeerId]) -> Vec<(Cid, Outcome)> {
        let targets: Vec<(Cid, Target)> = self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(c, t)| (*c, t.clone()))
            .collect();
        let mut out = Vec::new();
        for (root, (wanted, blocks, bytes)) in targets {
            out.push((
                root,
                self.ensure(root, bytes, &blocks, wanted, candidates).await,
            ));
        }
        out
    }

    /// Stops keeping copies of `root` (each peer that kept one is asked to release it).
    pub async fn forget(&self, root: &Cid) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(root);
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(root)
            .unwrap_or_default();
        self.save().await;
        for r in held {
            if let Err(e) = release(&self.node, r.peer, *root).await {
                tracing::debug!(error = %e, "a peer could not be asked to release its copy");
            }
        }
    }

    /// Checks every confirmed replica of `root` with one random block of `blocks` (the
    /// DAG's CIDs), then asks `candidates` (most trusted first; a peer whose trust was cut
    /// is never asked) until `wanted` hold a confirmed copy or none is left to ask.
    pub async fn ensure(
        &self,
        root: Cid,
        bytes: u64,
        blocks: &[Cid],
        wanted: usize,
        candidates: &[PeerId],
    ) -> Outcome {
        let mut out = Outcome::default();
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(root, (wanted, Arc::new(blocks.to_vec()), bytes));
        // Check what is held.
        let current = self.of(&root);
        let mut kept = Vec::new();
        let mut just_failed = Vec::new();
        for mut r in current {
            let block = pick(root, blocks, r.checks as usize);
            match check(&self.node, r.peer, root, block).await {
                Ok(()) => {
                    self.trust.passed(r.peer);
                    r.checks += 1;
                    kept.push(r);
                }
                Err(e) => {
                    if e.lied {
                        self.trust.cut(r.peer);
                    } else {
                        self.trust.lost(r.peer);
                    }
                    just_failed.push(r.peer);
                    out.failed_checks.push(e.to_string());
                }
            }
        }
        // Ask others until enough hold it.
        let mut order: Vec<PeerId> = candidates
            .iter()
            .copied()
            .filter(|p| self.trust.of(p) > 0.0 && !kept.iter().any(|r| r.peer == *p))
            // A replica that just failed its check is not asked again now.
            .filter(|p| !just_failed.contains(p))
            .collect();
        order.sort_by(|a, b| self.trust.of(b).total_cmp(&self.trust.of(a)));
        for peer in order {
            if kept.len() >= wanted {
                break;
            }
            match request(&self.node, peer, root, bytes, self.pin_timeout).await {
                Ok(_) => {
                    // Said yes: take its word only after a first check.
                    let block = pick(root, blocks, 1);
                    match check(&self.node, peer, root, block).await {
                        Ok(()) => kept.push(Replica { peer, checks: 1 }),
                        Err(e) => {
                            if e.lied {
                                self.trust.cut(peer);
                            }
                            out.failed_checks.push(e.to_string());
                        }
                    }
                }
                Err(e) => out.refused.push(e.to_string()),
            }
        }
        out.confirmed = kept.iter().map(|r| r.peer).collect();
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(root, kept);
        self.save().await;
        out
    }
}

/// One of `blocks` (the root when none are given), chosen by `seed` and the clock: a peer
/// cannot tell which comes next.
fn pick(root: Cid, blocks: &[Cid], seed: usize) -> Cid {
    let now = cairn_core::rt::SystemTime::now()
        .duration_since(cairn_core::rt::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    if blocks.is_empty() {
        return root;
    }
    blocks[(seed.wrapping_mul(2_654_435_761) ^ now) % blocks.len()]
}
