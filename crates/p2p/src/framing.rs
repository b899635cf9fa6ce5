//! Length-prefixed frames and CBOR bodies: the one framing every framed protocol cairn
//! speaks uses (`/cas/1.0.0`, bitswap, `/webrtc-signaling/0.0.1`, and the frames of WebRTC
//! data channels).
//!
//! A frame is an unsigned varint (the multiformats unsigned-varint: LEB128, minimally
//! encoded, at most 9 bytes) giving the body's length, then that many bytes. Lengths are
//! read with the `unsigned-varint` crate's decoder, so a 10-byte prefix and a non-minimal
//! one are refused, never silently truncated. A frame longer than the reader's limit is
//! refused before a byte of its body is read or allocated.
//!
//! CBOR bodies ([`to_cbor`], [`from_cbor`]) hold exactly one message: bytes after it are an
//! error, not something to ignore.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use unsigned_varint::decode;

/// The longest length prefix: 9 bytes (63 bits), as the multiformats spec allows.
pub const MAX_PREFIX: usize = 9;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream ended cleanly before a frame began.
    #[error("the stream ended")]
    Closed,
    /// The stream failed, or ended inside a frame.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// A frame was announced longer than the reader allows.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit.
        limit: usize,
    },
    /// The length prefix is not a valid unsigned varint.
    #[error("invalid frame length: {0}")]
    Prefix(#[source] decode::Error),
}

impl Error {
    /// Whether the stream simply ended between frames.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }
}

/// The length prefix of `len`.
pub fn prefix(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_PREFIX);
    cairn_core::varint::put(&mut out, len as u64);
    out
}

/// Where the first frame in `buf` ends, if `buf` holds all of it (`None`: more bytes are
/// needed); an error if its prefix is invalid or announces more than `limit` bytes.
pub fn frame_end(buf: &[u8], limit: usize) -> Result<Option<usize>, Error> {
    match decode::u64(buf) {
        Ok((len, rest)) => {
            if len > limit as u64 {
                return Err(Error::TooLarge { len, limit });
            }
            let end = buf.len() - rest.len() + len as usize;
            Ok((end <= buf.len()).then_some(end))
        }
        Err(decode::Error::Insufficient) => {
            // Judge an unfinished prefix by what it already announces: a limit of 16 KiB
            // needs no more than 3 bytes, so a peer cannot make us wait on a fourth.
            let shown = buf
                .iter()
                .enumerate()
                .fold(0u64, |n, (i, b)| n | u64::from(b & 0x7f) << (7 * i));
            let at_least = shown | 1u64.checked_shl(7 * buf.len() as u32).unwrap_or(0);
            if !buf.is_empty() && at_least > limit as u64 {
                return Err(Error::TooLarge {
                    len: at_least,
                    limit,
                });
            }
            if buf.len() >= MAX_PREFIX {
                return Err(Error::Prefix(decode::Error::Overflow));
            }
            Ok(None)
        }
        Err(e) => Err(Error::Prefix(e)),
    }
}

/// Takes the first frame off the front of `buf` and returns its body, if `buf` holds all of
/// it (`None`: more bytes are needed); an error as [`frame_end`] gives one.
pub fn take_frame(buf: &mut Vec<u8>, limit: usize) -> Result<Option<Vec<u8>>, Error> {
    let Some(end) = frame_end(buf, limit)? else {
        return Ok(None);
    };
    let (_, rest) = decode::u64(buf).map_err(Error::Prefix)?;
    let start = buf.len() - rest.len();
    let body = buf[start..end].to_vec();
    buf.drain(..end);
    Ok(Some(body))
}

/// Reads one frame's length, refusing lengths over `limit`.
async fn read_len<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<usize, Error> {
    let mut buf = [0u8; MAX_PREFIX + 1];
    for i in 0..buf.len() {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Err(if i == 0 {
                Error::Closed
            } else {
                io::Error::from(io::ErrorKind::UnexpectedEof).into()
            });
        }
        buf[i] = b[0];
        if let Some(end) = frame_end(&buf[..=i], limit)? {
            // A zero-length frame: the prefix is all there is.
            debug_assert_eq!(end, i + 1);
            return Ok(0);
        }
        if decode::is_last(b[0]) {
            let (len, _) = decode::u64(&buf[..=i]).map_err(Error::Prefix)?;
            return Ok(len as usize);
        }
    }
    Err(Error::Prefix(decode::Error::Overflow))
}

/// Reads one frame (its length, then its body), refusing frames over `limit` unread.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Vec<u8>, Error> {
    let len = read_len(r, limit).await?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    w.write_all(&prefix(body.len())).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// How much [`write_paced`] hands to the writer at a time.
pub const PIECE: usize = 64 * 1024;

/// Why [`write_paced`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacedError {
    /// The writer failed (for a stream: the peer reset it, or the connection closed).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The reader took nothing for this long.
    #[error("the peer read nothing for {0:?}")]
    Stalled(std::time::Duration),
}

/// Writes `parts` in pieces of at most [`PIECE`] bytes and flushes, failing with
/// [`PacedError::Stalled`] when one piece is not taken within `stall`: on a libp2p stream,
/// when the peer has read nothing for that long (its window is full).
pub async fn write_paced<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
    stall: std::time::Duration,
) -> Result<(), PacedError> {
    for part in parts {
        for piece in part.chunks(PIECE) {
            cairn_core::rt::timeout(stall, w.write_all(piece))
                .await
                .ok_or(PacedError::Stalled(stall))??;
        }
    }
    cairn_core::rt::timeout(stall, w.flush())
        .await
        .ok_or(PacedError::Stalled(stall))??;
    Ok(())
}

/// Why a CBOR body is not the message expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// Not CBOR, or CBOR of another shape.
    #[error("malformed CBOR: {0}")]
    Malformed(#[source] cairn_core::Reason),
    /// Bytes follow the message.
    #[error("{0} bytes follow the CBOR message")]
    Trailing(usize),
}

/// Encodes `msg` as CBOR.
pub fn to_cbor<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and cairn's messages always serialize.
    let _ = ciborium::into_writer(msg, &mut out);
    out
}

/// Decodes exactly one CBOR message from `body`.
pub fn from_cbor<T: DeserializeOwned>(body: &[u8]) -> Result<T, CborError> {
    let mut rest = body;
    let msg =
        ciborium::from_reader(&mut rest).map_err(|e: ciborium::de::Error<std::io::Error>| {
            CborError::Malformed(cairn_core::Reason::new(e))
        })?;
    if !rest.is_empty() {
        return Err(CborError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn read(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
        block_on(read_frame(&mut Cursor::new(bytes.to_vec()), limit))
    }

    #[test]
    fn frames_round_trip() {
        for len in [0usize, 1, 127, 128, 300, 16_384, 70_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            block_on(write_frame(&mut out, &body)).unwrap();
            assert_eq!(read(&out, 1 << 20).unwrap(), body, "{len}");
            assert_eq!(frame_end(&out, 1 << 20).unwrap(), Some(out.len()));
            assert_eq!(frame_end(&out[..out.len() - 1], 1 << 20).unwrap(), None);
        }
    }

    #[test]
    fn over_the_limit_is_refused_unread() {
        let mut frame = Vec::new();
        block_on(write_frame(&mut frame, &[0u8; 100])).unwrap();
        assert!(matches!(
            read(&frame, 99),
            Err(Error::TooLarge {
                len: 100,
                limit: 99
            })
        ));
        // 2^60 announced in 9 bytes: refused, nothing allocated.
        let huge = [0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(matches!(read(&huge, 1 << 20), Err(Error::TooLarge { .. })));
        // Known too large after the first bytes of a prefix, before it ends.
        assert!(matches!(
            frame_end(&[0x80, 0x80, 0x80], 16 * 1024),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn prefixes_are_strict() {
        // A 10-byte prefix (under the limit's reach only if its high bits are dropped).
        let ten = [0x81u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert!(read(&ten, usize::MAX).is_err());
        // Non-minimal: 1 written as two bytes.
        assert!(matches!(
            read(&[0x81, 0x00, 0xaa], 1 << 20),
            Err(Error::Prefix(decode::Error::NotMinimal))
        ));
        assert!(matches!(
            frame_end(&[0x81, 0x00, 0xaa], 1 << 20),
            Err(Error::Prefix(decode::Error::NotMinimal))
        ));
    }

    #[test]
    fn a_clean_end_is_told_from_a_cut_frame() {
        assert!(read(&[], 10).unwrap_err().is_closed());
        assert!(matches!(read(&[0x80], 1 << 20), Err(Error::Io(_))));
        assert!(matches!(read(&[5, 1, 2], 10), Err(Error::Io(_))));
    }

    #[test]
    fn cbor_bodies_hold_exactly_one_message() {
        let body = to_cbor(&("a", 1u8));
        assert_eq!(from_cbor::<(String, u8)>(&body).unwrap(), ("a".into(), 1));
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(matches!(
            from_cbor::<(String, u8)>(&trailing),
            Err(CborError::Trailing(1))
        ));
        assert!(matches!(
            from_cbor::<(String, u8)>(&[0xff]),
            Err(CborError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn reading_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = read(&data, 256);
            let _ = frame_end(&data, 256);
            let _ = from_cbor::<ciborium::Value>(&data);
        }
    }
}
