//! A round of concurrent adds of files that share blocks, one failing at a random point,
//! beside an eviction of everything unpinned: the scenario of "no data lost to
//! concurrency", run over any store (natively over the disk store 100 times, in the browser
//! over IndexedDB 10 times).
//!
//! Each add is what the browser node does: an import as part of a live operation, then a
//! pin of the root, then the end of the operation. The eviction keeps the pinned roots. After
//! the round, every add that completed must have its whole file in the store, and a failed
//! add must have left none of the blocks only it needed.
#![allow(clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Mutex;

use futures::{AsyncRead, TryStreamExt};

use crate::live::Live;
use crate::source::{Context, Local};
use crate::store::{BlockStore, Memory};
use crate::unixfs::{self, Profile, Range};
use crate::{Cid, HashAlg, pin};

/// Bytes of a chunk: the files are built from whole chunks so that they share blocks.
const CHUNK: usize = 256 * 1024;

/// What a round did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files whose add completed: root and bytes.
    pub completed: Vec<(Cid, Vec<u8>)>,
    /// Files whose add failed.
    pub failed: Vec<Vec<u8>>,
    /// Blocks the eviction deleted.
    pub evicted: u64,
}

/// The roots pinned so far (across rounds).
static PINNED: Mutex<Vec<Cid>> = Mutex::new(Vec::new());

/// A reader of `data` that fails after `fail_at` bytes, if given.
struct Failing<'a> {
    data: &'a [u8],
    at: usize,
    fail_at: Option<usize>,
}

impl AsyncRead for Failing<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(f) = self.fail_at
            && self.at >= f
        {
            return std::task::Poll::Ready(Err(std::io::Error::other("the reader failed")));
        }
        let end = self
            .data
            .len()
            .min(self.at + buf.len())
            .min(self.fail_at.unwrap_or(usize::MAX));
        let n = end - self.at;
        buf[..n].copy_from_slice(&self.data[self.at..end]);
        self.at = end;
        std::task::Poll::Ready(Ok(n))
    }
}

/// Chunks of pseudo-random bytes (xorshift from `rand`'s seed).
fn chunks(n: usize, rand: &mut dyn FnMut() -> u64) -> Vec<u8> {
    let mut x = rand() | 1;
    (0..n * CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Returns to the executor once (and asks to be polled again).
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Every block of the file `data` imports to.
async fn blocks_of(data: &[u8]) -> HashSet<Cid> {
    let m = Memory::new();
    unixfs::import(&m, data, Profile::DEFAULT, HashAlg::Sha2_256, |_| {})
        .await
        .expect("an import into memory");
    m.list(None, usize::MAX)
        .await
        .expect("a memory store lists")
        .into_iter()
        .collect()
}

/// One add: import as a live operation, pin (if `pin`), end the operation.
async fn add<S: BlockStore>(
    store: &S,
    data: &[u8],
    fail_at: Option<usize>,
    pin: bool,
) -> Option<Cid> {
    let mut op = Live::global().operation();
    let reader = Failing {
        data,
        at: 0,
        fail_at,
    };
    match unixfs::import_with(
        store,
        reader,
        Profile::DEFAULT,
        HashAlg::Sha2_256,
        |_| {},
        &mut op,
    )
    .await
    {
        Ok(imported) => {
            if pin {
                PINNED
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(imported.root);
            }
            op.finish();
            Some(imported.root)
        }
        Err(_) => {
            op.abandon(store).await;
            None
        }
    }
}

/// Runs one round over `store`: three pinned files sharing the chunks of `shared` (a whole
/// number of chunks), one of them failing at a random byte, a fourth file added without a
/// pin (a cache the eviction may take), and an eviction at a random moment.
pub async fn round<S: BlockStore>(
    store: &S,
    shared: &[u8],
    rand: &mut dyn FnMut() -> u64,
) -> Outcome {
    assert_eq!(shared.len() % CHUNK, 0, "shared data is whole chunks");
    let mut files = Vec::new();
    for i in 0..4 {
        let own = chunks(1 + (rand() % 6) as usize, rand);
        let cut = CHUNK * (rand() as usize % (shared.len() / CHUNK + 1));
        files.push(match i {
            0 => [shared, &own].concat(),
            1 | 3 => [&shared[..cut], &own].concat(),
            _ => [&own, shared].concat(),
        });
    }
    let failing = rand() as usize % 3;
    let fail_at = rand() as usize % files[failing].len();
    let evict_after = rand() % 4;
    let adds = futures::future::join_all(
        files
            .iter()
            .enumerate()
            .map(|(i, f)| add(store, f, (i == failing).then_some(fail_at), i < 3)),
    );
    let eviction = async {
        // Lets some batches land first: a random number of turns of the executor.
        for _ in 0..evict_after {
            yield_now().await;
        }
        let keep = async {
            Ok(PINNED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone())
        };
        pin::evict(store, keep, 0)
            .await
            .map(|e| e.blocks)
            .unwrap_or(0)
    };
    let (roots, evicted) = futures::future::join(adds, eviction).await;
    let mut out = Outcome {
        evicted,
        ..Outcome::default()
    };
    for (i, (root, data)) in roots.into_iter().zip(files).enumerate() {
        match root {
            // The unpinned file is a cache: nothing is promised about it.
            Some(_) if i == 3 => {}
            Some(r) => out.completed.push((r, data)),
            None => out.failed.push(data),
        }
    }
    out
}

impl Outcome {
    /// Checks the round: every completed file reads back whole from the store alone, and no
    /// block only a failed file needed is left.
    pub async fn check<S: BlockStore>(&self, store: &S) -> Result<(), String> {
        let ctx = Context::new();
        let local = Local(store);
        for (root, data) in &self.completed {
            let got: Vec<u8> = unixfs::export(&local, *root, Range::ALL, 8, &ctx)
                .map_ok(|b| b.to_vec())
                .try_concat()
                .await
                .map_err(|e| format!("completed file {root} is not whole: {e}"))?;
            if got != *data {
                return Err(format!("completed file {root} reads back wrong"));
            }
        }
        let mut needed = HashSet::new();
        let pinned = PINNED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let kept = pin::protected(store, &pinned)
            .await
            .map_err(|e| e.to_string())?;
        needed.extend(kept);
        for data in &self.failed {
            for c in blocks_of(data).await.difference(&needed) {
                if store.has(c).await.map_err(|e| e.to_string())? {
                    return Err(format!("{c}, needed only by a failed add, was left behind"));
                }
            }
        }
        Ok(())
    }
}
