//! The signalling messages of libp2p's WebRTC private-to-private transport (`/webrtc`):
//! SDP offer, SDP answer and ICE candidates, exchanged over a `/webrtc-signaling/0.0.1`
//! stream on the relayed connection between two peers. Each message is a protobuf
//! (`Message { Type type = 1; string data = 2; }`) behind a varint length.
//!
//! The codec is here, free of any platform, so that the limits and the refusal of malformed
//! messages are tested natively; the browser's transport (cairn-wasm) drives it.

use bytes::Bytes;
use cairn_core::protobuf::{self, Reader};
use futures::{AsyncRead, AsyncWrite};
use libp2p::StreamProtocol;

/// The signalling protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/webrtc-signaling/0.0.1");

/// The largest signalling message read. An SDP offer or answer for one data-channel section
/// is under 2 KiB and a candidate under 300 bytes; 16 KiB leaves room for long candidate
/// lists without letting a peer make us buffer much.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The most ICE candidates taken from one peer in one handshake.
pub const MAX_CANDIDATES: usize = 64;

/// What a signalling message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An SDP offer (from the dialer).
    Offer,
    /// An SDP answer (from the listener).
    Answer,
    /// An ICE candidate as JSON (`RTCIceCandidateInit`), or the end of candidates.
    Candidate,
}

impl Kind {
    fn number(self) -> u64 {
        match self {
            Kind::Offer => 0,
            Kind::Answer => 1,
            Kind::Candidate => 2,
        }
    }
}

/// One signalling message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What it is.
    pub kind: Kind,
    /// The SDP, or the candidate's JSON.
    pub data: String,
}

/// Why a signalling exchange failed on the wire.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream failed or a frame was over [`MAX_MESSAGE`].
    #[error("{0}")]
    Frame(#[from] crate::framing::Error),
    /// The frame was not a signalling message.
    #[error("{0}")]
    Decode(#[from] protobuf::DecodeError),
    /// The message's type is not one of the three.
    #[error("unknown signalling message type {0}")]
    UnknownType(u64),
    /// A message had no type (proto2 `optional` with no default sent).
    #[error("signalling message without a type")]
    NoType,
    /// The data was not UTF-8.
    #[error("signalling message data is not UTF-8")]
    NotUtf8,
}

/// The protobuf body of `m` (without its length).
pub fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.data.len() + 8);
    protobuf::put_uint(&mut out, 1, m.kind.number());
    protobuf::put_bytes(&mut out, 2, m.data.as_bytes());
    out
}

/// Decodes a protobuf body. Unknown fields are skipped; a missing `data` is empty.
pub fn decode(body: Bytes) -> Result<Message, Error> {
    let mut r = Reader::new(&body, "signalling message");
    let mut kind = None;
    let mut data = Bytes::new();
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 0) => {
                kind = Some(match r.varint()? {
                    0 => Kind::Offer,
                    1 => Kind::Answer,
                    2 => Kind::Candidate,
                    n => return Err(Error::UnknownType(n)),
                })
            }
            (2, 2) => data = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let data = String::from_utf8(data.to_vec()).map_err(|_| Error::NotUtf8)?;
    Ok(Message {
        kind: kind.ok_or(Error::NoType)?,
        data,
    })
}

/// Reads one message, refusing frames over [`MAX_MESSAGE`].
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, Error> {
    let body = crate::framing::read_frame(r, MAX_MESSAGE).await?;
    decode(Bytes::from(body))
}

/// Writes one message (and flushes).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), Error> {
    crate::framing::write_frame(w, &encode(m))
        .await
        .map_err(|e| Error::Frame(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn msg(kind: Kind, data: &str) -> Message {
        Message {
            kind,
            data: data.into(),
        }
    }

    #[test]
    fn messages_round_trip_through_a_stream() {
        let sent = [
            msg(Kind::Offer, "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"),
            msg(Kind::Answer, "v=0\r\n"),
            msg(
                Kind::Candidate,
                r#"{"candidate":"candidate:1 1 udp 1 192.0.2.2 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
            ),
            msg(Kind::Candidate, ""),
        ];
        let mut wire = Vec::new();
        block_on(async {
            for m in &sent {
                write(&mut wire, m).await.unwrap();
            }
            let mut r = futures::io::Cursor::new(wire);
            for m in &sent {
                assert_eq!(&read(&mut r).await.unwrap(), m);
            }
            assert!(read(&mut r).await.is_err(), "nothing after the last one");
        });
    }

    #[test]
    fn the_wire_form_is_the_specs_protobuf() {
        // type = SDP_ANSWER (1), data = "ab"
        assert_eq!(
            encode(&msg(Kind::Answer, "ab")),
            [0x08, 0x01, 0x12, 0x02, b'a', b'b']
        );
        // A type-0 message whose varint was written out (proto2 sends it) still decodes, and
        // an unknown field is skipped.
        let body = Bytes::from_static(&[0x08, 0x00, 0x18, 0x05, 0x12, 0x01, b'x']);
        assert_eq!(decode(body).unwrap(), msg(Kind::Offer, "x"));
    }

    #[test]
    fn malformed_and_oversized_messages_are_refused_with_a_reason() {
        let e = decode(Bytes::from_static(&[0x08, 0x07])).unwrap_err();
        assert!(
            e.to_string().contains("unknown signalling message type 7"),
            "{e}"
        );
        let e = decode(Bytes::from_static(&[0x12, 0x01, b'x'])).unwrap_err();
        assert!(e.to_string().contains("without a type"), "{e}");
        let e = decode(Bytes::from_static(&[0x08, 0x02, 0x12, 0x02, 0xff, 0xfe])).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        let e = decode(Bytes::from_static(&[0x08, 0x02, 0x12, 0x09, b'x'])).unwrap_err();
        assert!(e.to_string().contains("length past end"), "{e}");

        // A frame announcing more than the limit is refused before it is read.
        let mut wire = Vec::new();
        cairn_core::varint::put(&mut wire, MAX_MESSAGE as u64 + 1);
        let e = block_on(read(&mut futures::io::Cursor::new(wire))).unwrap_err();
        assert!(
            e.to_string().contains("exceeds the 16384-byte limit"),
            "{e}"
        );
        // A truncated frame is an I/O error, not a message.
        let mut wire = Vec::new();
        cairn_core::varint::put(&mut wire, 10);
        wire.extend_from_slice(b"abc");
        assert!(block_on(read(&mut futures::io::Cursor::new(wire))).is_err());
    }
}
