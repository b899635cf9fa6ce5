//! Time, runtime-free: sleeping and timeouts that work natively and in the browser.
//!
//! Everything in cairn-core that waits goes through here, so the core never names a runtime.

use std::future::Future;
use std::time::Duration;

pub use web_time::{Instant, SystemTime, UNIX_EPOCH};

/// Sleeps for `d`.
pub async fn sleep(d: Duration) {
    futures_timer::Delay::new(d).await;
}

/// Runs `fut` for at most `d`; `None` if the time ran out (the future is dropped).
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    use futures::future::{Either, select};
    let fut = std::pin::pin!(fut);
    let delay = futures_timer::Delay::new(d);
    match select(fut, delay).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Where the time comes from, for logic that waits minutes (retry windows, refresh
/// intervals): production uses [`SystemClock`]; a test gives its own and moves it forward,
/// so nothing is decided by how long a loaded machine took.
pub trait Clock: crate::CondSend + crate::CondSync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
