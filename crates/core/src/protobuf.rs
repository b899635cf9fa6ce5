//! The protobuf wire format, by hand: what DAG-PB, UnixFS and bitswap messages need. Field
//! numbers under 16 only (one-byte keys), which is all those messages use. The reader never
//! panics and never reads past its buffer; unknown fields are skipped.

use bytes::Bytes;

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

/// Appends a varint field (wire type 0).
pub fn put_uint(out: &mut Vec<u8>, field: u8, v: u64) {
    out.push(field << 3);
    crate::varint::put(out, v);
}

/// Reads fields from a message in a shared buffer; `bytes` fields are zero-copy slices.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; errors name `what`.
    pub fn new(buf: &'a Bytes, what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    /// Whether the whole buffer has been read.
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A varint.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(err(self.what, "truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(err(self.what, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err(self.what, "varint too long"))
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
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| err(self.what, "length too large"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or(err(self.what, "length past end"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// Skips a field of wire type `wire`.
    pub fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed(8),
            2 => self.bytes().map(drop),
            5 => self.fixed(4),
            _ => Err(err(self.what, "unsupported wire type")),
        }
    }

    /// Skips `n` bytes of a fixed-size field.
    pub fn fixed(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.pos + n > self.buf.len() {
            return Err(err(self.what, "truncated fixed field"));
        }
        self.pos += n;
        Ok(())
    }
}
