//! The flags of libp2p's WebRTC stream framing, as far as cairn's data channels need to read
//! them beside libp2p-webrtc-utils' `Stream`.
//!
//! A stream is a sequence of frames: a varint length, then a protobuf
//! `Message { Flag flag = 1; bytes message = 2; }` with `Flag` FIN = 0, STOP_SENDING = 1,
//! RESET = 2 and FIN_ACK = 3. Frames do not follow data-channel messages: js-libp2p sends a
//! frame's length and its body as two messages, so [`Deframer`] puts whole frames back
//! together first. libp2p-webrtc-utils 0.4 predates FIN_ACK: it never sends one
//! and decodes an incoming one as FIN (unknown enum values fall back to the first), which
//! would close the read half of a stream that has only closed its write half. js-libp2p's
//! `close()` waits for FIN_ACK (up to 10 s, or its caller's deadline, which for its
//! connection monitor is as little as 5 s, after which it drops the whole connection).
//!
//! So the data channel answers each FIN itself, the moment it arrives, and keeps FIN_ACKs
//! from reaching the framing layer. This module reads the flag; it is free of any platform so
//! that the parsing is tested natively.

use bytes::{Bytes, BytesMut};
use cairn_core::protobuf::Reader;

/// The longest frame body: the spec's 16 KiB message limit, which includes the length.
pub const MAX_FRAME: usize = 16 * 1024;

/// A frame that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadFrame {
    /// A frame longer than [`MAX_FRAME`] was announced: at least this many bytes.
    #[error(
        "the peer announced a WebRTC frame of at least {0} bytes, over the {MAX_FRAME}-byte limit"
    )]
    TooLong(u64),
    /// The length prefix is not a valid (minimal) unsigned varint.
    #[error("the peer sent a malformed WebRTC frame length")]
    Prefix,
}

/// Whole frames (length and body) out of the bytes of data-channel messages, however the
/// peer split them.
#[derive(Debug, Default)]
pub struct Deframer {
    partial: BytesMut,
}

impl Deframer {
    /// Takes one message's bytes; hands each frame it completes to `frame`. Bytes of an
    /// unfinished frame wait for the next message.
    pub fn push(&mut self, message: Bytes, mut frame: impl FnMut(Bytes)) -> Result<(), BadFrame> {
        let mut rest = if self.partial.is_empty() {
            message
        } else {
            self.partial.extend_from_slice(&message);
            self.partial.split().freeze()
        };
        while let Some(end) = frame_end(&rest)? {
            frame(rest.split_to(end));
        }
        if !rest.is_empty() {
            self.partial.extend_from_slice(&rest);
        }
        Ok(())
    }

    /// Bytes waiting for the rest of their frame.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// Where the first frame of `buf` ends, if `buf` holds it whole; an error if its length is
/// over [`MAX_FRAME`] (known as soon as the prefix's first bytes say so) or malformed.
pub fn frame_end(buf: &[u8]) -> Result<Option<usize>, BadFrame> {
    crate::framing::frame_end(buf, MAX_FRAME).map_err(|e| match e {
        crate::framing::Error::TooLarge { len, .. } => BadFrame::TooLong(len),
        _ => BadFrame::Prefix,
    })
}

/// A frame's flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The sender will write no more.
    Fin,
    /// The sender will read no more.
    StopSending,
    /// The sender dropped the stream.
    Reset,
    /// The sender received our FIN.
    FinAck,
}

/// A whole FIN_ACK frame: length 2, field 1 (varint) = 3.
pub const FIN_ACK_FRAME: [u8; 3] = [2, 0x08, 3];

/// The flag of `message`, if it is exactly one well-formed frame that carries one; `None`
/// for data, for anything malformed (the framing layer refuses it with its own error) and
/// for unknown flags.
pub fn flag(message: &Bytes) -> Option<Flag> {
    let mut outer = Reader::new(message, "WebRTC frame");
    let body = outer.bytes().ok()?;
    if !outer.done() {
        return None;
    }
    let mut r = Reader::new(&body, "WebRTC frame");
    let mut flag = None;
    while let Some((field, wire)) = r.key().ok()? {
        match (field, wire) {
            (1, 0) => {
                flag = match r.varint().ok()? {
                    0 => Some(Flag::Fin),
                    1 => Some(Flag::StopSending),
                    2 => Some(Flag::Reset),
                    3 => Some(Flag::FinAck),
                    _ => None,
                }
            }
            (_, w) => r.skip(w).ok()?,
        }
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::protobuf;

    fn frame(flag: Option<u64>, data: Option<&[u8]>) -> Bytes {
        let mut body = Vec::new();
        if let Some(f) = flag {
            protobuf::put_uint(&mut body, 1, f);
        }
        if let Some(d) = data {
            protobuf::put_bytes(&mut body, 2, d);
        }
        let mut out = Vec::new();
        cairn_core::varint::put(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
        Bytes::from(out)
    }

    fn deframe(messages: &[&[u8]]) -> Result<Vec<Bytes>, BadFrame> {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        for m in messages {
            d.push(Bytes::copy_from_slice(m), |f| out.push(f))?;
        }
        assert_eq!(d.pending(), 0, "bytes left over");
        Ok(out)
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let data = frame(None, Some(&[9u8; 300]));
        let fin = frame(Some(0), None);
        let all: Vec<u8> = [data.as_ref(), fin.as_ref(), &FIN_ACK_FRAME].concat();
        for cut in 0..=all.len() {
            let got = deframe(&[&all[..cut], &all[cut..]]).unwrap();
            assert_eq!(
                got,
                vec![
                    data.clone(),
                    fin.clone(),
                    Bytes::from_static(&FIN_ACK_FRAME)
                ],
                "cut at {cut}"
            );
        }
        // js-libp2p's way: the length, then the body, as two messages.
        let got = deframe(&[&fin[..1], &fin[1..], &data[..2], &data[2..]]).unwrap();
        assert_eq!(got, vec![fin.clone(), data.clone()]);
        // One byte per message.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(deframe(&bytes).unwrap().len(), 3);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_arrives() {
        let ok = frame(None, Some(&vec![1u8; MAX_FRAME - 4]));
        assert_eq!(deframe(&[&ok]).unwrap(), vec![ok.clone()]);
        // A length of MAX_FRAME + 1, announced alone.
        let n = MAX_FRAME as u64 + 1;
        let mut len = Vec::new();
        cairn_core::varint::put(&mut len, n);
        assert_eq!(deframe(&[&len]), Err(BadFrame::TooLong(n)));
        // A 1 GiB length, and a varint that never ends.
        assert_eq!(
            deframe(&[&[0x80, 0x80, 0x80, 0x80, 0x04]])
                .unwrap_err()
                .to_string(),
            "the peer announced a WebRTC frame of at least 1073741824 bytes, over the 16384-byte limit"
        );
        // Known as soon as the prefix's first two bytes say at least 2^15 - 1.
        assert_eq!(
            deframe(&[&[0xff], &[0xff], &[0xff]]),
            Err(BadFrame::TooLong((1 << 15) - 1))
        );
        // A length written with a needless zero byte.
        assert_eq!(deframe(&[&[0x81, 0x00]]), Err(BadFrame::Prefix));
    }

    #[test]
    fn each_flag_is_read_from_a_whole_frame() {
        assert_eq!(flag(&frame(Some(0), None)), Some(Flag::Fin));
        assert_eq!(flag(&frame(Some(1), None)), Some(Flag::StopSending));
        assert_eq!(flag(&frame(Some(2), None)), Some(Flag::Reset));
        assert_eq!(flag(&frame(Some(3), None)), Some(Flag::FinAck));
        assert_eq!(
            flag(&Bytes::from_static(&FIN_ACK_FRAME)),
            Some(Flag::FinAck)
        );
    }

    #[test]
    fn a_flag_beside_data_is_read_in_either_field_order() {
        let big = vec![7u8; 16 * 1024 - 10];
        assert_eq!(flag(&frame(Some(0), Some(&big))), Some(Flag::Fin));
        // Data first, then the flag.
        let mut body = Vec::new();
        protobuf::put_bytes(&mut body, 2, b"last bytes");
        protobuf::put_uint(&mut body, 1, 0);
        let mut msg = vec![body.len() as u8];
        msg.extend_from_slice(&body);
        assert_eq!(flag(&Bytes::from(msg)), Some(Flag::Fin));
    }

    #[test]
    fn data_unknown_flags_and_malformed_frames_have_none() {
        assert_eq!(flag(&frame(None, Some(b"hello"))), None);
        assert_eq!(flag(&frame(Some(9), None)), None);
        assert_eq!(flag(&Bytes::new()), None);
        // The length says more than there is, or less.
        assert_eq!(flag(&Bytes::from_static(&[5, 0x08, 0])), None);
        assert_eq!(flag(&Bytes::from_static(&[1, 0x08, 0])), None);
        // Two frames in one message: not one frame.
        let mut two = frame(Some(0), None).to_vec();
        two.extend_from_slice(&FIN_ACK_FRAME);
        assert_eq!(flag(&Bytes::from(two)), None);
        // A truncated varint, and an unsupported wire type.
        assert_eq!(flag(&Bytes::from_static(&[2, 0x08, 0x80])), None);
        assert_eq!(flag(&Bytes::from_static(&[2, 0x0b, 0])), None);
        // A length varint that never ends.
        assert_eq!(flag(&Bytes::from_static(&[0xff; 12])), None);
    }
}
