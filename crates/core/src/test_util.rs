//! Helpers for cairn-core's unit tests.

/// `len` pseudo-random bytes (xorshift64 from `seed`): no two chunks of a file alike, so
/// nothing deduplicates by accident.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
