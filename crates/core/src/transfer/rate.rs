//! Bandwidth caps: a rate in bytes per second, and the token bucket that holds fetches to it.
//!
//! A fetch asks its buckets for a block's expected size (from its parent's link) before it
//! asks any source for the block, and settles the difference when the block arrives: the
//! bytes that may arrive are admitted at the rate, so no more than a bucket's capacity is
//! ever in flight beyond it. A block found in the local store costs nothing.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::rt::Instant;

/// A rate in bytes per second, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(NonZeroU64);

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Zero, or negative.
    #[error(
        "a bandwidth cap must be at least 1 byte per second (`{0}` is not); leave it out for no cap"
    )]
    NotPositive(String),
    /// Not a number with a unit.
    #[error(
        "`{0}` is not a rate: write a number of bytes per second, with an optional unit (500K, 2MiB, 1.5M/s)"
    )]
    Malformed(String),
}

impl Rate {
    /// `bytes_per_sec` bytes per second (`None` for 0).
    pub fn new(bytes_per_sec: u64) -> Option<Self> {
        NonZeroU64::new(bytes_per_sec).map(Self)
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0.get()
    }

    /// A rate from a JS number (which may be anything): a clear error for 0, a negative
    /// number, NaN or infinity.
    pub fn from_f64(v: f64) -> Result<Self, RateError> {
        if !v.is_finite() {
            return Err(RateError::Malformed(v.to_string()));
        }
        if v < 1.0 {
            return Err(RateError::NotPositive(v.to_string()));
        }
        // Saturating: a cap beyond u64 is no cap worth telling apart.
        Ok(Self(NonZeroU64::new(v as u64).unwrap_or(NonZeroU64::MIN)))
    }
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    /// `2097152`, `2MiB`, `2M`, `2MB/s`, `500k`, `1.5G`: K, M and G (with or without `B`,
    /// `iB`) count in 1,024s; `/s` is optional.
    fn from_str(s: &str) -> Result<Self, RateError> {
        let t = s.trim();
        let body = t.strip_suffix("/s").unwrap_or(t).trim();
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(body.len());
        let (num, unit) = body.split_at(split);
        let value: f64 = num.parse().map_err(|_| RateError::Malformed(t.into()))?;
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => 1024.0 * 1024.0,
            "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(RateError::Malformed(t.into())),
        };
        if !value.is_finite() {
            return Err(RateError::Malformed(t.into()));
        }
        if value * scale < 1.0 {
            return Err(RateError::NotPositive(t.into()));
        }
        Self::from_f64(value * scale)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes_per_sec() as f64;
        if b >= 1024.0 * 1024.0 {
            write!(f, "{:.1} MiB/s", b / (1024.0 * 1024.0))
        } else if b >= 1024.0 {
            write!(f, "{:.1} KiB/s", b / 1024.0)
        } else {
            write!(f, "{b} B/s")
        }
    }
}

/// A token bucket: `rate` tokens (bytes) a second, holding at most `capacity`. Taking may
/// leave it in debt (a block larger than the capacity), which later takers wait out.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket for `rate`, holding half a second of it (at least 64 KiB): enough to
    /// keep a fetch's window moving, little enough that a 10 s average stays within 5 %.
    pub fn new(rate: Rate) -> Self {
        let r = rate.bytes_per_sec() as f64;
        let capacity = (r / 2.0).max(64.0 * 1024.0);
        Self {
            rate: r,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// The rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let add = now.saturating_duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + add).min(self.capacity);
        state.1 = now;
    }

    /// Takes `n` tokens if there are enough (or, for more than the capacity, a full
    /// bucket); else how long until there will be.
    fn try_take(&self, n: u64) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.refill(&mut s);
        let need = (n as f64).min(self.capacity);
        if s.0 >= need {
            s.0 -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - s.0) / self.rate))
        }
    }

    /// Gives back `n` tokens (a block smaller than expected, or found locally), or takes
    /// `-n` more (larger than expected), without waiting.
    fn settle(&self, n: i64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.refill(&mut s);
        s.0 = (s.0 + n as f64).min(self.capacity);
    }
}

/// The buckets one fetch answers to (its own cap, the node's global one), taken in order.
#[derive(Debug, Clone, Default)]
pub struct Throttle(Vec<Arc<Bucket>>);

impl Throttle {
    /// No cap.
    pub fn none() -> Self {
        Self::default()
    }

    /// Under every bucket in `buckets`.
    pub fn new(buckets: impl IntoIterator<Item = Arc<Bucket>>) -> Self {
        Self(buckets.into_iter().collect())
    }

    /// Whether any cap applies.
    pub fn is_limited(&self) -> bool {
        !self.0.is_empty()
    }

    /// Waits until `n` bytes may arrive under every cap, and takes them.
    pub async fn acquire(&self, n: u64) {
        for b in &self.0 {
            while let Err(wait) = b.try_take(n) {
                crate::rt::sleep(wait.max(Duration::from_millis(1))).await;
            }
        }
    }

    /// Corrects an [`acquire`](Self::acquire) of `expected` bytes once `actual` arrived.
    pub fn settle(&self, expected: u64, actual: u64) {
        let diff = expected as i64 - actual as i64;
        if diff != 0 {
            for b in &self.0 {
                b.settle(diff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_refuse_nonsense() {
        let r = |s: &str| s.parse::<Rate>().map(Rate::bytes_per_sec);
        assert_eq!(r("2097152"), Ok(2 << 20));
        assert_eq!(r("2MiB"), Ok(2 << 20));
        assert_eq!(r("2M/s"), Ok(2 << 20));
        assert_eq!(r("2 MB/s"), Ok(2 << 20));
        assert_eq!(r("500k"), Ok(500 << 10));
        assert_eq!(r("1.5G"), Ok(3 << 29));
        for bad in ["0", "-5", "0.2", "-1M", "0K"] {
            assert!(
                matches!(r(bad), Err(RateError::NotPositive(_))),
                "{bad}: {:?}",
                r(bad)
            );
        }
        for bad in ["", "fast", "2X", "M", "1e999"] {
            assert!(matches!(r(bad), Err(RateError::Malformed(_))), "{bad}");
        }
        assert!(r("0").unwrap_err().to_string().contains("at least 1 byte"));
        assert!(Rate::from_f64(f64::NAN).is_err());
        assert!(Rate::from_f64(-3.0).is_err());
        assert_eq!(Rate::new(0), None);
    }

    #[test]
    fn a_bucket_lends_its_capacity_then_the_rate() {
        let b = Bucket::new(Rate::new(1 << 20).unwrap());
        // Half a second of the rate at once, then not even one more byte.
        assert!(b.try_take(512 << 10).is_ok());
        let wait = b.try_take(256 << 10).unwrap_err();
        assert!(
            wait > Duration::from_millis(200) && wait <= Duration::from_millis(260),
            "{wait:?}"
        );
        // A refund lets the next one through at once.
        b.settle(256 << 10);
        assert!(b.try_take(256 << 10).is_ok());
        // More than the capacity: waits for a full bucket, then goes into debt.
        let big = Bucket::new(Rate::new(1024).unwrap());
        assert!(
            big.try_take(1 << 20).is_ok(),
            "a full bucket lets a big block through"
        );
        let debt = big.try_take(1).unwrap_err();
        assert!(debt > Duration::from_secs(900), "{debt:?}");
    }
}
