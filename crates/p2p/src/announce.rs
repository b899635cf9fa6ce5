//! Announcements of new roots on the GossipSub topic [`TOPIC`].
//!
//! A node that adds content may tell its peers: "I hold `root` (`size` bytes), for the next
//! `ttl` seconds". Each announcement is one GossipSub message, signed by the announcing
//! peer's libp2p key (GossipSub's strict mode: messages without a valid signature, author
//! or sequence number are dropped before cairn sees them), whose data is a CBOR map:
//!
//! ```text
//! { "root": bytes (a binary CID), "size": uint, "ts": uint (Unix seconds), "ttl": uint (seconds) }
//! ```
//!
//! [`validate`] is strict: the data must be at most [`MAX_SIZE`] bytes, decode exactly to
//! that map (unknown keys are refused), name a CID cairn can fetch, have a `ttl` between one
//! second and [`MAX_TTL`], and a `ts` no more than [`MAX_SKEW`] in the future. A message
//! that breaks these rules is rejected, which GossipSub counts against the peer that
//! forwarded it; one that is merely out of date is ignored (not forwarded, no penalty).

use std::time::Duration;

use cairn_core::cid::Cid;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The topic name.
pub const TOPIC: &str = "/cairn/announce/1.0.0";

/// Largest announcement (message data) accepted or sent, in bytes.
pub const MAX_SIZE: usize = 512;

/// Longest time-to-live an announcement may claim.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How far in the future an announcement's timestamp may be (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// A validated announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The peer that signed it.
    pub peer: PeerId,
    /// The root it holds.
    pub root: Cid,
    /// The content's size in bytes, as announced.
    pub size: u64,
    /// When it stops being true (Unix seconds).
    pub expires: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    root: ByteBuf,
    size: u64,
    ts: u64,
    ttl: u64,
}

/// Why an announcement was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// Malformed or out of bounds: the sender broke the rules.
    #[error("rejected announcement: {0}")]
    Rejected(String),
    /// Well-formed but expired: dropped without penalty.
    #[error("expired announcement")]
    Expired,
}

/// Encodes an announcement of `root` made at `now` (Unix seconds), valid for `ttl`.
pub fn encode(root: &Cid, size: u64, now: u64, ttl: Duration) -> Vec<u8> {
    crate::framing::to_cbor(&Wire {
        root: ByteBuf::from(root.to_bytes()),
        size,
        ts: now,
        ttl: ttl.as_secs().clamp(1, MAX_TTL.as_secs()),
    })
}

/// Checks a message's `data` from `source` at `now` (Unix seconds).
pub fn validate(source: Option<PeerId>, data: &[u8], now: u64) -> Result<Announcement, Invalid> {
    let reject = |why: String| Err(Invalid::Rejected(why));
    let Some(peer) = source else {
        return reject("no author".into());
    };
    if data.len() > MAX_SIZE {
        return reject(format!(
            "{} bytes, over the {MAX_SIZE}-byte limit",
            data.len()
        ));
    }
    let wire: Wire = match crate::framing::from_cbor(data) {
        Ok(w) => w,
        Err(e) => return reject(format!("not an announcement: {e}")),
    };
    let root = match Cid::try_from(wire.root.as_slice()) {
        Ok(c) => c,
        Err(e) => return reject(format!("bad root CID: {e}")),
    };
    if let Err(e) = cairn_core::cid::check(&root) {
        return reject(format!("root {root}: {e}"));
    }
    if wire.ttl == 0 || wire.ttl > MAX_TTL.as_secs() {
        return reject(format!(
            "ttl {} s is outside 1..={} s",
            wire.ttl,
            MAX_TTL.as_secs()
        ));
    }
    if wire.ts > now.saturating_add(MAX_SKEW.as_secs()) {
        return reject(format!(
            "timestamp {} is in the future (now {now})",
            wire.ts
        ));
    }
    let expires = wire.ts.saturating_add(wire.ttl);
    if expires < now {
        return Err(Invalid::Expired);
    }
    Ok(Announcement {
        peer,
        root,
        size: wire.size,
        expires,
    })
}

/// What to tell GossipSub of a message on the topic, and the announcement it holds when
/// it is one: a valid announcement is accepted (and forwarded), one that is merely out of
/// date is ignored, anything else is rejected (which GossipSub counts against the peer
/// that forwarded it).
pub(crate) fn judge(
    from: &PeerId,
    message: &libp2p::gossipsub::Message,
) -> (libp2p::gossipsub::MessageAcceptance, Option<Announcement>) {
    use libp2p::gossipsub::MessageAcceptance;
    if message.topic.as_str() != TOPIC {
        tracing::debug!(%from, topic = %message.topic, "message on an unknown topic");
        return (MessageAcceptance::Reject, None);
    }
    match validate(message.source, &message.data, now()) {
        Ok(a) => {
            tracing::debug!(peer = %a.peer, root = %a.root, "announcement");
            (MessageAcceptance::Accept, Some(a))
        }
        Err(Invalid::Expired) => (MessageAcceptance::Ignore, None),
        Err(e) => {
            tracing::debug!(%from, error = %e, "announcement");
            (MessageAcceptance::Reject, None)
        }
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    cairn_core::rt::SystemTime::now()
        .duration_since(cairn_core::rt::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::cid::{Codec, HashAlg};

    const NOW: u64 = 1_800_000_000;

    fn peer() -> Option<PeerId> {
        Some(PeerId::random())
    }

    fn root() -> Cid {
        cairn_core::cid::of(Codec::Raw, HashAlg::Sha2_256, b"root")
    }

    #[test]
    fn a_fresh_announcement_round_trips() {
        let data = encode(&root(), 42, NOW, Duration::from_secs(3600));
        assert!(data.len() <= MAX_SIZE);
        let p = peer();
        let a = validate(p, &data, NOW + 10).unwrap();
        assert_eq!(
            a,
            Announcement {
                peer: p.unwrap(),
                root: root(),
                size: 42,
                expires: NOW + 3600
            }
        );
    }

    #[test]
    fn expired_is_ignored_not_rejected() {
        let data = encode(&root(), 1, NOW, Duration::from_secs(60));
        assert_eq!(validate(peer(), &data, NOW + 61), Err(Invalid::Expired));
    }

    #[test]
    fn bad_announcements_are_rejected_with_a_reason() {
        let wire = |root: Vec<u8>, ts: u64, ttl: u64| {
            crate::framing::to_cbor(&Wire {
                root: ByteBuf::from(root),
                size: 1,
                ts,
                ttl,
            })
        };
        let good_root = root().to_bytes();
        let identity = Cid::new_v1(
            0x55,
            libp2p::multihash::Multihash::wrap(0x00, b"hi").unwrap(),
        );
        let cases: Vec<(Option<PeerId>, Vec<u8>, &str)> = vec![
            (None, wire(good_root.clone(), NOW, 60), "no author"),
            (peer(), vec![0u8; MAX_SIZE + 1], "over the"),
            (peer(), b"\xa1\x61x\x01".to_vec(), "not an announcement"),
            (peer(), vec![0xff, 0x00], "not an announcement"),
            (peer(), wire(b"not a cid".to_vec(), NOW, 60), "bad root CID"),
            (peer(), wire(identity.to_bytes(), NOW, 60), "root"),
            (peer(), wire(good_root.clone(), NOW, 0), "ttl 0"),
            (
                peer(),
                wire(good_root.clone(), NOW, MAX_TTL.as_secs() + 1),
                "outside",
            ),
            (
                peer(),
                wire(good_root.clone(), NOW + MAX_SKEW.as_secs() + 1, 60),
                "in the future",
            ),
        ];
        for (source, data, why) in cases {
            match validate(source, &data, NOW) {
                Err(Invalid::Rejected(msg)) => assert!(msg.contains(why), "{msg} / {why}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        // Unknown keys are refused too.
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("root", ciborium::Value::Bytes(good_root));
        extra.insert("size", 1.into());
        extra.insert("ts", NOW.into());
        extra.insert("ttl", 60.into());
        extra.insert("extra", 1.into());
        assert!(matches!(
            validate(peer(), &crate::framing::to_cbor(&extra), NOW),
            Err(Invalid::Rejected(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let _ = validate(peer(), &data, NOW);
        }
    }
}
