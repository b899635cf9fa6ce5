//! The protobuf wire format: what DAG-PB, UnixFS and the WebRTC messages need. Writing is by
//! hand (DAG-PB's field order is part of CID parity); reading goes through
//! `quick-protobuf`'s reader, wrapped so that `bytes` fields are zero-copy slices of a
//! shared buffer. The reader never panics and never reads past its buffer; unknown fields
//! are skipped.

use bytes::Bytes;
use quick_protobuf::BytesReader;

/// Why a protobuf message could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed {what}: {reason}")]
pub struct DecodeError {
    what: &'static str,
    reason: &'static str,
}

/// A decode error about `what` (the message being read).
pub fn err(what: &'static str, reason: &'static str) -> DecodeError {
    DecodeError { what, reason }
}

/// Appends a length-delimited field (wire type 2).
pub fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    out.push(field << 3 | 2);
    crate::varint::put(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a fixed32 field (wire type 5).
pub fn put_fixed32(out: &mut Vec<u8>, field: u8, v: u32) {
    out.push(field << 3 | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a varint field (wire type 0).
pub fn put_uint(out: &mut Vec<u8>, field: u8, v: u64) {
    out.push(field << 3);
    crate::varint::put(out, v);
}

/// Reads fields from a message in a shared buffer; `bytes` fields are zero-copy slices.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    inner: BytesReader,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; errors name `what`.
    pub fn new(buf: &'a Bytes, what: &'static str) -> Self {
        Self {
            buf,
            inner: BytesReader::from_bytes(buf),
            what,
        }
    }

    fn fail(&self, e: quick_protobuf::Error) -> DecodeError {
        use quick_protobuf::Error as E;
        err(
            self.what,
            match e {
                E::UnexpectedEndOfBuffer => "length past end",
                E::Varint => "invalid varint",
                E::UnknownWireType(_) | E::Deprecated(_) => "unsupported wire type",
                _ => "malformed field",
            },
        )
    }

    /// Whether the whole buffer has been read.
    pub fn done(&self) -> bool {
        self.inner.is_eof()
    }

    /// A varint.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        self.inner.read_varint64(self.buf).map_err(|e| self.fail(e))
    }

    /// The next field's number and wire type, or `None` at the end.
    pub fn key(&mut self) -> Result<Option<(u64, u8)>, DecodeError> {
        if self.done() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, (k & 7) as u8)))
    }

    /// A length-delimited field's contents.
    pub fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        match self.inner.read_bytes(self.buf) {
            Ok(b) => Ok(self.buf.slice_ref(b)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A fixed32 field's value.
    pub fn fixed32(&mut self) -> Result<u32, DecodeError> {
        self.inner.read_fixed32(self.buf).map_err(|e| self.fail(e))
    }

    /// Skips a field of wire type `wire`.
    pub fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        self.inner
            .read_unknown(self.buf, u32::from(wire & 7))
            .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_and_bad_input_is_refused() {
        let mut out = Vec::new();
        put_uint(&mut out, 1, 300);
        put_bytes(&mut out, 2, b"abc");
        put_uint(&mut out, 9, u64::MAX);
        let buf = Bytes::from(out);
        let mut r = Reader::new(&buf, "test");
        assert_eq!(r.key().unwrap(), Some((1, 0)));
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.key().unwrap(), Some((2, 2)));
        assert_eq!(&r.bytes().unwrap()[..], b"abc");
        assert_eq!(r.key().unwrap(), Some((9, 0)));
        r.skip(0).unwrap();
        assert_eq!(r.key().unwrap(), None);

        for bad in [&[0x12, 0x05, 1][..], &[0x08, 0x80], &[0x0b], &[0x08; 1]] {
            let buf = Bytes::copy_from_slice(bad);
            let mut r = Reader::new(&buf, "test");
            let out = (|| {
                while let Some((_, wire)) = r.key()? {
                    r.skip(wire)?;
                }
                Ok::<_, DecodeError>(())
            })();
            assert!(out.is_err(), "{bad:?}");
        }
    }
}
