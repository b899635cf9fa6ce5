//! The transfer manager: a queue of DAG fetches that people control.
//!
//! Transfers wait in a queue ordered by [`Priority`] (Critical > High > Normal > Low), then
//! by arrival; at most [`Config::concurrency`] run at once, and a transfer that arrives with
//! a higher priority than a running one takes its place (the one it displaces goes back to
//! the queue, keeping its place among its equals, and later fetches only what it lacks).
//! Each may be capped in bytes received per second, under a global cap too ([`rate`]); each
//! may name the sources it uses and in which order, and a deadline. A failed attempt is
//! tried again after an exponential backoff, a bounded number of times; content that
//! nobody has is reported after [`Retry::not_found_attempts`]. Transfers can be paused,
//! resumed, cancelled and given another priority, and their progress (bytes, blocks, speed,
//! ETA, where the blocks came from, attempts) is published as [`Update`]s.
//!
//! The queue is kept in a [`Journal`] (a file beside the native store, a record in the
//! browser's IndexedDB): after a restart, unfinished transfers are queued again, and each
//! fetches only the blocks its store lacks.
//!
//! The manager has no runtime of its own: [`Transfers::open`] returns the handle and the
//! driver future, which the platform spawns (or awaits).

#![cfg_attr(wasm_browser, allow(clippy::arc_with_non_send_sync))] // nothing is Send in the browser

pub mod rate;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::channel::mpsc;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

pub use rate::{Bucket, Rate, RateError, Throttle};

use crate::cid::Cid;
use crate::dag::{self, Progress, Report};
use crate::rt::{Instant, SystemTime, UNIX_EPOCH};
use crate::source::{Canceller, Chain, Context, Failure, SourceKind, cancel_pair};
use crate::store::{self, BlockStore};
use crate::{BoxFuture, CondSync, boxed};

/// A transfer's number, unique for its manager (and across restarts with a journal).
pub type Id = u64;

/// How urgent a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// After everything else.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before Normal and Low.
    High,
    /// Before everything; displaces a running transfer of lower priority.
    Critical,
}

impl Priority {
    /// All, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::Priority(s.chars().take(40).collect()))
    }
}

/// What to fetch, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The DAG's root.
    pub root: Cid,
    /// Its place in the queue.
    pub priority: Priority,
    /// At most this many bytes received per second (under the global cap too).
    pub max_rate: Option<Rate>,
    /// The sources to use, in this order (empty: every source, in the chain's order).
    pub sources: Vec<SourceKind>,
    /// Give up at this time (a time to live, made absolute when the transfer is added).
    pub deadline: Option<SystemTime>,
}

impl Request {
    /// `root` at Normal priority, uncapped, from every source, with no deadline.
    pub fn new(root: Cid) -> Self {
        Self {
            root,
            priority: Priority::Normal,
            max_rate: None,
            sources: Vec::new(),
            deadline: None,
        }
    }

    /// At `priority`.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Capped at `rate`.
    pub fn max_rate(mut self, rate: Option<Rate>) -> Self {
        self.max_rate = rate;
        self
    }

    /// From `sources` only, in that order.
    pub fn sources(mut self, sources: Vec<SourceKind>) -> Self {
        self.sources = sources;
        self
    }

    /// Giving up `ttl` from now.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.deadline = Some(SystemTime::now() + ttl);
        self
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for a slot.
    Queued,
    /// Fetching.
    Active,
    /// Waiting out a backoff before its next attempt.
    Retrying,
    /// Paused by its owner.
    Paused,
    /// Every block is in the store.
    Done,
    /// Given up: see [`Status::error`].
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Active => "active",
            State::Retrying => "retrying",
            State::Paused => "paused",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Whether it will not change again by itself.
    pub fn finished(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transfer as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Its number.
    pub id: Id,
    /// What was asked.
    pub request: Request,
    /// Where it is.
    pub state: State,
    /// Blocks and bytes done and known, and where the blocks came from
    /// ([`Progress::by_source`]).
    pub progress: Progress,
    /// Bytes per second over the last few seconds (0 when not active).
    pub speed: f64,
    /// Time left at that speed, once the total is known.
    pub eta: Option<Duration>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Why the last attempt failed (while retrying), or why it was given up.
    pub error: Option<String>,
    /// What the failure came down to, when it failed.
    pub failure: Option<Failure>,
    /// When retrying, how long until the next attempt.
    pub retry_in: Option<Duration>,
}

/// A change in a transfer: every state change, and progress at most ten times a second.
pub type Update = Status;

/// Why a call on [`Transfers`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No transfer has this number.
    #[error("there is no transfer {0}")]
    Unknown(Id),
    /// The transfer has finished; it cannot be changed.
    #[error("transfer {id} is {state}: it cannot be changed")]
    Finished {
        /// The transfer.
        id: Id,
        /// How it finished.
        state: State,
    },
    /// The deadline is already past.
    #[error("the deadline is already past; give a time to live of at least 1 ms")]
    DeadlinePassed,
    /// Not a priority.
    #[error("`{0}` is not a priority: use critical, high, normal or low")]
    Priority(String),
    /// The manager has stopped.
    #[error("the transfer manager has stopped")]
    Stopped,
}

/// How failed attempts are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all before a transfer is given up (sources unreachable, timing out, or
    /// sending bad bytes).
    pub attempts: u32,
    /// Attempts in all when the sources answered that nobody has the content.
    pub not_found_attempts: u32,
    /// The wait before the second attempt; it doubles for each one after.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            not_found_attempts: 2,
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// The wait after `attempt` failed attempts.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max)
    }
}

/// The manager's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Transfers that run at once (at least 1).
    pub concurrency: usize,
    /// A cap on the bytes all transfers receive per second, together.
    pub max_rate: Option<Rate>,
    /// Retries.
    pub retry: Retry,
    /// Finished transfers kept for [`Transfers::list`] (the oldest are forgotten first).
    pub keep_finished: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrency: 3,
            max_rate: None,
            retry: Retry::default(),
            keep_finished: 256,
        }
    }
}

/// Fetches a DAG into the node's store: what the platform gives the manager.
pub trait Fetcher: CondSync + 'static {
    /// Fetches every block under `root` that the store lacks, from `sources` in that order
    /// (all, in the chain's order, when empty), under `throttle`, reporting to `progress`.
    fn fetch<'a>(
        &'a self,
        root: Cid,
        sources: &'a [SourceKind],
        throttle: &'a Throttle,
        ctx: &'a Context,
        progress: Sink,
    ) -> BoxFuture<'a, Result<Report, dag::Error>>;
}

/// The usual [`Fetcher`]: [`dag::fetch_throttled`] into `store` through the chain `chain`
/// makes for a root (narrowed to the transfer's sources).
#[allow(missing_debug_implementations)] // holds a closure
pub struct ChainFetcher<S, F> {
    store: S,
    chain: F,
    options: dag::Options,
}

impl<S, F> ChainFetcher<S, F>
where
    S: BlockStore + CondSync + 'static,
    F: Fn(Cid) -> Chain + CondSync + 'static,
{
    /// Fetches into `store` through `chain(root)`.
    pub fn new(store: S, chain: F) -> Self {
        Self {
            store,
            chain,
            options: dag::Options::default(),
        }
    }
}

impl<S, F> Fetcher for ChainFetcher<S, F>
where
    S: BlockStore + CondSync + 'static,
    F: Fn(Cid) -> Chain + CondSync + 'static,
{
    fn fetch<'a>(
        &'a self,
        root: Cid,
        sources: &'a [SourceKind],
        throttle: &'a Throttle,
        ctx: &'a Context,
        progress: Sink,
    ) -> BoxFuture<'a, Result<Report, dag::Error>> {
        boxed(async move {
            let chain = (self.chain)(root);
            let chain = if sources.is_empty() {
                chain
            } else {
                chain.only(sources)
            };
            dag::fetch_throttled(
                &chain,
                &self.store,
                root,
                self.options,
                throttle,
                ctx,
                |p| progress.update(p),
            )
            .await
        })
    }
}

/// Where the queue is kept between runs: one text record, rewritten whole when the queue
/// changes (not on progress).
pub trait Journal: CondSync + 'static {
    /// The record last saved (`None`: never saved).
    fn load(&self) -> BoxFuture<'_, Result<Option<String>, store::Error>>;
    /// Replaces the record.
    fn save(&self, record: String) -> BoxFuture<'_, Result<(), store::Error>>;
}

const JOURNAL_HEADER: &str = "cairn-transfers 1";

/// How many samples the speed is measured over.
const SPEED_WINDOW: Duration = Duration::from_secs(3);
/// Progress updates per transfer per second, at most.
const UPDATE_EVERY: Duration = Duration::from_millis(100);
/// Updates a subscriber may fall behind before it misses some.
const SUBSCRIBER_CAPACITY: usize = 1024;

struct Entry {
    request: Request,
    state: State,
    /// Arrival order (ties within a priority).
    seq: u64,
    progress: Progress,
    samples: VecDeque<(Instant, u64)>,
    attempts: u32,
    error: Option<String>,
    failure: Option<Failure>,
    retry_at: Option<Instant>,
    /// Its attempt's future is running (it may be on its way out: paused or displaced).
    running: bool,
    cancel: Option<Canceller>,
    last_update: Option<Instant>,
}

impl Entry {
    fn new(request: Request, seq: u64) -> Self {
        Self {
            request,
            state: State::Queued,
            seq,
            progress: Progress::default(),
            samples: VecDeque::new(),
            attempts: 0,
            error: None,
            failure: None,
            retry_at: None,
            running: false,
            cancel: None,
            last_update: None,
        }
    }

    fn status(&self, id: Id) -> Status {
        let now = Instant::now();
        let speed = match (self.state, self.samples.front(), self.samples.back()) {
            (State::Active, Some(a), Some(b)) if b.0 > a.0 => {
                let dt = b.0.saturating_duration_since(a.0).as_secs_f64();
                if dt >= 0.2 {
                    b.1.saturating_sub(a.1) as f64 / dt
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let left = self
            .progress
            .bytes_total
            .saturating_sub(self.progress.bytes_done);
        let eta = (speed > 0.0 && self.progress.bytes_total > 0)
            .then(|| Duration::from_secs_f64(left as f64 / speed));
        Status {
            id,
            request: self.request.clone(),
            state: self.state,
            progress: self.progress.clone(),
            speed,
            eta,
            attempts: self.attempts,
            error: self.error.clone(),
            failure: self.failure,
            retry_in: self
                .retry_at
                .filter(|_| self.state == State::Retrying)
                .map(|at| at.saturating_duration_since(now)),
        }
    }

    fn stop_attempt(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.cancel();
        }
    }
}

struct Inner {
    entries: BTreeMap<Id, Entry>,
    next_id: Id,
    next_seq: u64,
    config: Config,
    global: Option<Arc<Bucket>>,
    subscribers: Vec<mpsc::Sender<Update>>,
    /// The queue changed since it was last saved.
    dirty: bool,
    stopping: bool,
    stopped: bool,
    /// Wakes the driver (a full channel has a wake-up pending already).
    wake: mpsc::Sender<()>,
}

impl Inner {
    fn publish(&mut self, id: Id) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        let status = e.status(id);
        self.subscribers
            .retain_mut(|s| match s.try_send(status.clone()) {
                Ok(()) => true,
                Err(e) => !e.is_disconnected(),
            });
    }

    fn entry(&mut self, id: Id) -> Result<&mut Entry, Error> {
        self.entries.get_mut(&id).ok_or(Error::Unknown(id))
    }

    fn unfinished(&mut self, id: Id) -> Result<&mut Entry, Error> {
        let e = self.entry(id)?;
        if e.state.finished() {
            return Err(Error::Finished { id, state: e.state });
        }
        Ok(e)
    }

    /// Forgets the oldest finished transfers past the limit.
    fn trim(&mut self) {
        let finished: Vec<Id> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state.finished())
            .map(|(id, _)| *id)
            .collect();
        let excess = finished.len().saturating_sub(self.config.keep_finished);
        for id in finished.into_iter().take(excess) {
            self.entries.remove(&id);
        }
    }

    /// The queue as the journal keeps it: unfinished transfers only.
    fn record(&self) -> String {
        let mut out = String::from(JOURNAL_HEADER);
        out.push('\n');
        for (id, e) in &self.entries {
            if e.state.finished() {
                continue;
            }
            let r = &e.request;
            let rate = r
                .max_rate
                .map_or_else(|| "-".to_owned(), |r| r.bytes_per_sec().to_string());
            let sources = if r.sources.is_empty() {
                "-".to_owned()
            } else {
                r.sources
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let deadline = r.deadline.map_or_else(
                || "-".to_owned(),
                |d| {
                    d.duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                        .to_string()
                },
            );
            let paused = if e.state == State::Paused {
                "paused"
            } else {
                "queued"
            };
            out.push_str(&format!(
                "{id} {} {} {rate} {sources} {deadline} {paused} {}\n",
                r.root, r.priority, e.attempts
            ));
        }
        out
    }

    /// Restores a saved queue; lines it cannot read are skipped, with a warning.
    fn restore(&mut self, record: &str) {
        let mut lines = record.lines();
        if lines.next() != Some(JOURNAL_HEADER) {
            tracing::warn!("the transfer journal is not one this version reads; starting empty");
            return;
        }
        for (n, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_journal_line(line) {
                Some((id, request, paused, attempts)) => {
                    let mut e = Entry::new(request, id);
                    e.attempts = attempts;
                    if paused {
                        e.state = State::Paused;
                    }
                    self.next_id = self.next_id.max(id + 1);
                    self.next_seq = self.next_seq.max(id + 1);
                    self.entries.insert(id, e);
                }
                None => {
                    tracing::warn!(
                        line = n + 2,
                        "skipped a transfer journal line it cannot read"
                    )
                }
            }
        }
    }

    /// Starts what may start and displaces what must make way; returns the attempts to run.
    fn schedule(&mut self) -> Vec<(Id, Attempt)> {
        let now = Instant::now();
        for e in self.entries.values_mut() {
            if e.state == State::Retrying && e.retry_at.is_none_or(|at| at <= now) {
                e.state = State::Queued;
                e.retry_at = None;
            }
        }
        if self.stopping {
            return Vec::new();
        }
        let running = self.entries.values().filter(|e| e.running).count();
        let mut slots = self.config.concurrency.max(1).saturating_sub(running);
        // Slots that attempts on their way out (paused, displaced) will free.
        let mut freeing = self
            .entries
            .values()
            .filter(|e| e.running && e.state != State::Active)
            .count();
        let mut ready: Vec<(Priority, u64, Id)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == State::Queued && !e.running)
            .map(|(id, e)| (e.request.priority, e.seq, *id))
            .collect();
        ready.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut starts = Vec::new();
        for (priority, _, id) in ready {
            if slots > 0 {
                slots -= 1;
                if let Some(a) = self.start(id, now) {
                    starts.push((id, a));
                }
            } else if freeing > 0 {
                freeing -= 1;
            } else {
                // Displace the least urgent running transfer (the latest among equals) if it
                // is less urgent than this one.
                let victim = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.state == State::Active && e.request.priority < priority)
                    .min_by(|a, b| {
                        a.1.request
                            .priority
                            .cmp(&b.1.request.priority)
                            .then(b.1.seq.cmp(&a.1.seq))
                    })
                    .map(|(id, _)| *id);
                let Some(victim) = victim else { break };
                if let Some(e) = self.entries.get_mut(&victim) {
                    e.state = State::Queued;
                    e.stop_attempt();
                }
                self.publish(victim);
            }
        }
        starts
    }

    fn start(&mut self, id: Id, now: Instant) -> Option<Attempt> {
        let global = self.global.clone();
        let e = self.entries.get_mut(&id)?;
        let (cancel, token) = cancel_pair();
        let mut ctx = Context::new().with_cancel(token);
        if let Some(deadline) = e.request.deadline {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            ctx = ctx.with_deadline(now + left);
        }
        let throttle = Throttle::new(
            e.request
                .max_rate
                .map(|r| Arc::new(Bucket::new(r)))
                .into_iter()
                .chain(global),
        );
        e.state = State::Active;
        e.running = true;
        e.cancel = Some(cancel);
        e.attempts += 1;
        e.samples.clear();
        let attempt = Attempt {
            root: e.request.root,
            sources: e.request.sources.clone(),
            throttle,
            ctx,
        };
        self.publish(id);
        Some(attempt)
    }

    /// An attempt's end.
    fn finish(&mut self, id: Id, result: Result<Report, dag::Error>) {
        let retry = self.config.retry;
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.running = false;
        e.cancel = None;
        e.samples.clear();
        match result {
            Ok(report) => {
                e.progress = report.progress;
                e.state = State::Done;
                e.error = None;
                e.failure = None;
                self.dirty = true;
            }
            // Paused, displaced, cancelled or stopped: the state says which already.
            Err(_) if e.state != State::Active => {}
            Err(err) => {
                let past_deadline = e.request.deadline.is_some_and(|d| d <= SystemTime::now());
                let (failure, permanent) = match &err {
                    dag::Error::Retrieve(c) => (c.failure(), false),
                    dag::Error::Store(
                        store::Error::Full { .. } | store::Error::OutOfSpace { .. },
                    ) => (Failure::Unreachable, true),
                    dag::Error::Store(_) => (Failure::Unreachable, false),
                    dag::Error::Malformed { .. } | dag::Error::TooLarge(_) => {
                        (Failure::InvalidData, true)
                    }
                };
                let limit = if failure == Failure::NotFound {
                    retry.not_found_attempts
                } else {
                    retry.attempts
                };
                e.error = Some(err.to_string());
                e.failure = Some(failure);
                if past_deadline {
                    e.state = State::Failed;
                    e.failure = Some(Failure::Timeout);
                    e.error = Some(format!("its deadline passed: {err}"));
                    self.dirty = true;
                } else if permanent || e.attempts >= limit.max(1) {
                    e.state = State::Failed;
                    if failure == Failure::NotFound {
                        e.error = Some(format!(
                            "nobody reachable has it (asked {} time(s)): {err}",
                            e.attempts
                        ));
                    } else if !permanent {
                        e.error = Some(format!("gave up after {} attempts: {err}", e.attempts));
                    }
                    self.dirty = true;
                } else {
                    e.state = State::Retrying;
                    e.retry_at = Some(Instant::now() + retry.backoff(e.attempts));
                }
            }
        }
        self.publish(id);
        self.trim();
    }
}

fn parse_journal_line(line: &str) -> Option<(Id, Request, bool, u32)> {
    let mut f = line.split(' ');
    let id: Id = f.next()?.parse().ok()?;
    let root = crate::cid::parse(f.next()?).ok()?;
    let priority: Priority = f.next()?.parse().ok()?;
    let max_rate = match f.next()? {
        "-" => None,
        n => Some(Rate::new(n.parse().ok()?)?),
    };
    let sources = match f.next()? {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(|s| SourceKind::ALL.into_iter().find(|k| k.as_str() == s))
            .collect::<Option<Vec<_>>>()?,
    };
    let deadline = match f.next()? {
        "-" => None,
        ms => Some(UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?)),
    };
    let paused = match f.next()? {
        "paused" => true,
        "queued" => false,
        _ => return None,
    };
    let attempts = f.next()?.parse().ok()?;
    Some((
        id,
        Request {
            root,
            priority,
            max_rate,
            sources,
            deadline,
        },
        paused,
        attempts,
    ))
}

/// One attempt's inputs.
struct Attempt {
    root: Cid,
    sources: Vec<SourceKind>,
    throttle: Throttle,
    ctx: Context,
}

/// Where an attempt reports its progress (given to [`Fetcher::fetch`]).
#[derive(Clone)]
#[allow(missing_debug_implementations)] // a handle into the manager
pub struct Sink {
    inner: Arc<Mutex<Inner>>,
    id: Id,
}

impl Sink {
    /// Records the attempt's progress (published at most ten times a second).
    pub fn update(&self, p: &Progress) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let Some(e) = inner.entries.get_mut(&self.id) else {
            return;
        };
        if e.state != State::Active {
            return;
        }
        e.progress = p.clone();
        e.samples.push_back((now, p.bytes_done));
        while e
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SPEED_WINDOW)
        {
            e.samples.pop_front();
        }
        if e.last_update
            .is_none_or(|t| now.saturating_duration_since(t) >= UPDATE_EVERY)
        {
            e.last_update = Some(now);
            inner.publish(self.id);
        }
    }
}

/// The manager's handle: cheap to clone.
#[derive(Clone)]
pub struct Transfers {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Transfers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Transfers")
            .field("config", &inner.config)
            .field("transfers", &inner.entries.len())
            .finish()
    }
}

impl Transfers {
    /// Opens a manager that fetches with `fetcher`, restoring the queue `journal` kept (if
    /// any). Returns the handle and the driver, which must be spawned (or awaited) for
    /// anything to run; it ends after [`Transfers::stop`] (and only then).
    pub async fn open(
        config: Config,
        fetcher: Arc<dyn Fetcher>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<(Transfers, BoxFuture<'static, ()>), store::Error> {
        let (wake, woken) = mpsc::channel(1);
        let mut inner = Inner {
            entries: BTreeMap::new(),
            next_id: 1,
            next_seq: 1,
            config,
            global: config.max_rate.map(|r| Arc::new(Bucket::new(r))),
            subscribers: Vec::new(),
            dirty: false,
            stopping: false,
            stopped: false,
            wake,
        };
        if let Some(j) = &journal
            && let Some(record) = j.load().await?
        {
            inner.restore(&record);
        }
        let inner = Arc::new(Mutex::new(inner));
        let driver = drive(inner.clone(), woken, fetcher, journal);
        Ok((Transfers { inner }, boxed(driver)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        let _ = self.lock().wake.try_send(());
    }

    /// Queues a transfer; returns its number. The same root already queued or running is
    /// not queued twice: its number is returned (and it takes the higher priority).
    pub fn add(&self, request: Request) -> Result<Id, Error> {
        if request.deadline.is_some_and(|d| d <= SystemTime::now()) {
            return Err(Error::DeadlinePassed);
        }
        let mut inner = self.lock();
        if inner.stopped || inner.stopping {
            return Err(Error::Stopped);
        }
        let same = inner
            .entries
            .iter_mut()
            .find(|(_, e)| e.request.root == request.root && !e.state.finished());
        if let Some((id, e)) = same {
            let id = *id;
            if request.priority > e.request.priority {
                e.request.priority = request.priority;
                inner.dirty = true;
                inner.publish(id);
                drop(inner);
                self.changed();
            }
            return Ok(id);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let mut sources = Vec::new();
        for s in request.sources.iter().copied() {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        inner
            .entries
            .insert(id, Entry::new(Request { sources, ..request }, seq));
        inner.dirty = true;
        inner.publish(id);
        drop(inner);
        self.changed();
        Ok(id)
    }

    /// Every transfer known (unfinished, and the last finished ones), in order of number.
    pub fn list(&self) -> Vec<Status> {
        let inner = self.lock();
        inner.entries.iter().map(|(id, e)| e.status(*id)).collect()
    }

    /// One transfer.
    pub fn get(&self, id: Id) -> Result<Status, Error> {
        let inner = self.lock();
        inner
            .entries
            .get(&id)
            .map(|e| e.status(id))
            .ok_or(Error::Unknown(id))
    }

    /// Pauses a transfer (a running one stops; what it fetched stays in the store).
    pub fn pause(&self, id: Id) -> Result<(), Error> {
        let mut inner = self.lock();
        let e = inner.unfinished(id)?;
        if e.state != State::Paused {
            e.state = State::Paused;
            e.retry_at = None;
            e.stop_attempt();
            inner.dirty = true;
            inner.publish(id);
        }
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Queues a paused transfer again, or one that failed (with its attempts counted anew).
    pub fn resume(&self, id: Id) -> Result<(), Error> {
        let mut inner = self.lock();
        let e = inner.entry(id)?;
        match e.state {
            State::Paused => e.state = State::Queued,
            State::Failed => {
                e.state = State::Queued;
                e.attempts = 0;
                e.error = None;
                e.failure = None;
            }
            State::Done | State::Cancelled => {
                return Err(Error::Finished { id, state: e.state });
            }
            _ => return Ok(()),
        }
        inner.dirty = true;
        inner.publish(id);
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Cancels a transfer (what it fetched stays in the store, unpinned).
    pub fn cancel(&self, id: Id) -> Result<(), Error> {
        let mut inner = self.lock();
        let e = inner.unfinished(id)?;
        e.state = State::Cancelled;
        e.retry_at = None;
        e.stop_attempt();
        inner.dirty = true;
        inner.publish(id);
        inner.trim();
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Gives a transfer another priority (a running one may be displaced, or displace).
    pub fn set_priority(&self, id: Id, priority: Priority) -> Result<(), Error> {
        let mut inner = self.lock();
        let e = inner.unfinished(id)?;
        if e.request.priority != priority {
            e.request.priority = priority;
            // A running transfer made less urgent than a waiting one makes way for it.
            let demoted = e.state == State::Active;
            inner.dirty = true;
            inner.publish(id);
            if demoted {
                let waiting_more_urgent = inner.entries.values().any(|w| {
                    w.state == State::Queued && !w.running && w.request.priority > priority
                });
                if waiting_more_urgent && let Some(e) = inner.entries.get_mut(&id) {
                    e.state = State::Queued;
                    e.stop_attempt();
                }
            }
        }
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Forgets finished transfers.
    pub fn clear_finished(&self) {
        self.lock().entries.retain(|_, e| !e.state.finished());
    }

    /// Every [`Update`] from now on (a subscriber that falls 1,024 behind misses some).
    pub fn subscribe(&self) -> mpsc::Receiver<Update> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        self.lock().subscribers.push(tx);
        rx
    }

    /// Waits until transfer `id` has finished; its last status.
    pub async fn wait(&self, id: Id) -> Result<Status, Error> {
        let mut updates = self.subscribe();
        loop {
            let s = self.get(id)?;
            if s.state.finished() {
                return Ok(s);
            }
            if self.lock().stopped {
                return Err(Error::Stopped);
            }
            // An update for any transfer is a reason to look again.
            if updates.next().await.is_none() {
                return Err(Error::Stopped);
            }
        }
    }

    /// Stops: running transfers stop (and stay queued in the journal, to resume at the next
    /// start), and the driver ends once they have.
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.stopping = true;
        for e in inner.entries.values_mut() {
            if e.state == State::Active {
                e.state = State::Queued;
            }
            e.stop_attempt();
        }
        drop(inner);
        self.changed();
    }
}

async fn drive(
    inner: Arc<Mutex<Inner>>,
    mut woken: mpsc::Receiver<()>,
    fetcher: Arc<dyn Fetcher>,
    journal: Option<Arc<dyn Journal>>,
) {
    let lock = || inner.lock().unwrap_or_else(PoisonError::into_inner);
    let mut running = FuturesUnordered::new();
    loop {
        let starts = lock().schedule();
        for (id, attempt) in starts {
            let fetcher = fetcher.clone();
            let sink = Sink {
                inner: inner.clone(),
                id,
            };
            running.push(boxed(async move {
                let out = fetcher
                    .fetch(
                        attempt.root,
                        &attempt.sources,
                        &attempt.throttle,
                        &attempt.ctx,
                        sink,
                    )
                    .await;
                (id, out)
            }));
        }
        let (record, stop, next_retry) = {
            let mut i = lock();
            let record = std::mem::take(&mut i.dirty).then(|| i.record());
            let next_retry = i
                .entries
                .values()
                .filter(|e| e.state == State::Retrying)
                .filter_map(|e| e.retry_at)
                .min();
            (record, i.stopping && running.is_empty(), next_retry)
        };
        if let (Some(record), Some(j)) = (record, &journal)
            && let Err(e) = j.save(record).await
        {
            tracing::warn!(error = %e, "the transfer queue could not be saved");
        }
        if stop {
            let mut i = lock();
            i.stopped = true;
            i.subscribers.clear();
            return;
        }
        let retry = async {
            match next_retry {
                Some(at) => crate::rt::sleep(at.saturating_duration_since(Instant::now())).await,
                None => std::future::pending::<()>().await,
            }
        };
        futures::select_biased! {
            done = running.select_next_some() => {
                let (id, out): (Id, Result<Report, dag::Error>) = done;
                lock().finish(id, out);
            }
            _ = woken.next() => {}
            _ = retry.fuse() => {}
        }
    }
}

#[cfg(test)]
mod tests;
