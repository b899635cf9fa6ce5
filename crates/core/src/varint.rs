//! Unsigned varints (the multiformats unsigned-varint, LEB128), as protobuf, CAR, CID
//! prefixes and cairn's frames write them. Writing only: every reader of varints is a
//! library's (`unsigned-varint` for frames, `quick-protobuf` for protobuf, `cid` for CIDs).

/// Appends `v` to `out` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
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
