//! MurmurHash3 x64 128 (seed 0), the hash UnixFS HAMT shards place names with. Only the
//! first 64 bits are used (multicodec `0x22`, "murmur3-x64-64"), big-endian, as Kubo and
//! Helia do.

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// MurmurHash3 x64 128 of `data` with seed 0: `(h1, h2)`.
pub(super) fn x64_128(data: &[u8]) -> (u64, u64) {
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for b in blocks.by_ref() {
        let mut k1 = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let mut k2 = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(*b) << (8 * i);
        } else {
            k2 |= u64::from(*b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The HAMT hash of `name`: the bytes whose successive values pick a name's slot at each
/// level of a 256-wide shard. Levels past the eighth hash the name again with the round
/// appended, as `hamt-sharding` and go-unixfs do.
pub(super) fn slot(name: &[u8], level: usize) -> u8 {
    let round = level / 8;
    let h1 = if round == 0 {
        x64_128(name).0
    } else {
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name);
        // A name needing more than 255 rounds (2,040 levels) would need 2^16320 entries.
        v.push(round as u8);
        x64_128(&v).0
    };
    h1.to_be_bytes()[level % 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        let (h1, h2) = x64_128(data);
        format!("{h1:016x}{h2:016x}")
    }

    #[test]
    fn matches_the_reference_vectors() {
        // From @multiformats/murmur3 (what Helia's HAMT uses), each length class covered:
        // empty, a tail only, one block and a tail of each half, two blocks and a tail.
        assert_eq!(hex(b""), "00000000000000000000000000000000");
        assert_eq!(hex(b"hello"), "cbd8a7b341bd9b025b1e906a48ae1d19");
        assert_eq!(hex(b"a.txt"), "59a0c469955470894b857882b21c4d46");
        assert_eq!(
            hex(b"The quick brown fox jumps over the lazy dog"),
            "e34bbc7bbc071b6c7a433ca9c49a9347"
        );
        assert_eq!(hex(&[b'x'; 33]), "b73a0f22cbd8f47deb4972f1ee3e1064");
    }

    #[test]
    fn slots_read_the_first_half_big_endian() {
        assert_eq!(slot(b"hello", 0), 0xcb);
        assert_eq!(slot(b"hello", 1), 0xd8);
        assert_eq!(slot(b"hello", 7), 0x02);
        let mut again = b"hello".to_vec();
        again.push(1);
        assert_eq!(slot(b"hello", 8), x64_128(&again).0.to_be_bytes()[0]);
    }
}
