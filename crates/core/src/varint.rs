//! Unsigned LEB128 varints (the multiformats unsigned-varint), as protobuf, CAR and
//! `/cas/1.0.0` frames write them.

/// Appends `v` to `out` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_encodings() {
        for (v, bytes) in [
            (0u64, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
        ] {
            let mut out = Vec::new();
            super::put(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
        let mut out = Vec::new();
        super::put(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
    }
}
