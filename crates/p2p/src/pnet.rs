//! Private networks: a swarm key shared by the members, in the format IPFS uses
//! (`/key/swarm/psk/1.0.0/`, as Kubo's `ipfs-swarm-key-gen` writes it).
//!
//! With a key, every connection a node makes or takes over a byte-stream transport (TCP,
//! WebSocket, relay circuits) starts with libp2p's pnet handshake: each side sends a
//! 24-byte nonce, and everything after, Noise included, is encrypted with XSalsa20 under the
//! key. A peer without the same key cannot get past the first message, so it cannot
//! connect at all. QUIC and WebRTC-direct bring their own encryption and cannot carry pnet:
//! a node with a key does not use them (as Kubo). See [`crate::node::Upgrader`].

use std::fmt;

use libp2p::pnet::PreSharedKey;

const HEADER: &str = "/key/swarm/psk/1.0.0/";
const BASE16: &str = "/base16/";
const KEY_BYTES: usize = 32;

/// A private network's key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; KEY_BYTES]);

/// Why a swarm key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmKeyError {
    /// The first line is not the swarm key header.
    #[error(
        "not a swarm key: the first line must be `{HEADER}` (make one with `cairn-relay swarm-key`)"
    )]
    NotASwarmKey,
    /// The encoding line names an encoding other than base16.
    #[error("swarm key encoding `{0}` is not supported: the second line must be `{BASE16}`")]
    Encoding(String),
    /// The key line is missing or has the wrong length.
    #[error("the swarm key must be 64 hex digits on the third line, found {0}")]
    Length(usize),
    /// The key line holds something that is not a hex digit.
    #[error("the swarm key's third line holds `{0}`, which is not a hex digit")]
    NotHex(char),
}

impl SwarmKey {
    /// A new random key.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; KEY_BYTES];
        getrandom::fill(&mut k)?;
        Ok(Self(k))
    }

    /// The key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Reads a key file's text: the header, `/base16/`, and 64 hex digits, one per line
    /// (trailing spaces and `\r` are ignored, as is anything after the third line).
    pub fn parse(text: &str) -> Result<Self, SwarmKeyError> {
        let mut lines = text.lines().map(str::trim_end);
        if lines.next().map(str::trim_start) != Some(HEADER) {
            return Err(SwarmKeyError::NotASwarmKey);
        }
        match lines.next().map(str::trim_start) {
            Some(BASE16) => {}
            Some(other) => return Err(SwarmKeyError::Encoding(other.chars().take(40).collect())),
            None => return Err(SwarmKeyError::Length(0)),
        }
        let hex = lines.next().map(str::trim_start).unwrap_or("");
        if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(SwarmKeyError::NotHex(c));
        }
        if hex.len() != KEY_BYTES * 2 {
            return Err(SwarmKeyError::Length(hex.len()));
        }
        let mut k = [0u8; KEY_BYTES];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| SwarmKeyError::Length(hex.len()))?;
        }
        Ok(Self(k))
    }

    /// The key as a key file holds it (three lines), for Kubo and go-libp2p too.
    pub fn to_file(&self) -> String {
        PreSharedKey::new(self.0).to_string()
    }

    /// A short public name for the key (16 bytes of hex: libp2p's fingerprint), to tell
    /// networks apart in logs without showing the key.
    pub fn fingerprint(&self) -> String {
        PreSharedKey::new(self.0).fingerprint().to_string()
    }

    pub(crate) fn psk(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKey({})", self.fingerprint())
    }
}

impl std::str::FromStr for SwarmKey {
    type Err = SwarmKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a failed handshake means in a private network: appended to the dial error.
pub(crate) const HINT_MEMBER: &str = "the peer may not be in this private network (a different swarm key, or none): it could not read what was sent under this node's swarm key";

/// What an open-network node's failed security negotiation may mean.
pub(crate) const HINT_OPEN: &str = "the peer may be in a private network (start this node with its swarm key) or may not speak libp2p at this address";

#[cfg(test)]
mod tests {
    use super::*;

    const KUBO: &str = "/key/swarm/psk/1.0.0/\n/base16/\n\
        a0f3a37b28bd1ec0bba2f6fe8ea8e56c4bd8f2b0d95b3e6c6e3e3c1d1f6b9a01\n";

    #[test]
    fn reads_and_writes_the_ipfs_format() {
        let k = SwarmKey::parse(KUBO).unwrap();
        assert_eq!(k.to_file(), KUBO);
        assert_eq!(libp2p::pnet::PreSharedKey::new(k.0).to_string(), KUBO);
        // What libp2p reads, we read the same.
        let theirs: libp2p::pnet::PreSharedKey = KUBO.parse().unwrap();
        assert_eq!(theirs.fingerprint().to_string(), k.fingerprint());
        // CRLF and trailing blanks.
        let crlf = KUBO.replace('\n', " \r\n");
        assert_eq!(SwarmKey::parse(&crlf).unwrap(), k);
        assert!(
            !format!("{k:?}").contains("a0f3a37b"),
            "Debug shows the key"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert_eq!(SwarmKey::parse("hello\n"), Err(SwarmKeyError::NotASwarmKey));
        assert_eq!(SwarmKey::parse(""), Err(SwarmKeyError::NotASwarmKey));
        assert_eq!(
            SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n"),
            Err(SwarmKeyError::Encoding("/base64/".into()))
        );
        assert_eq!(
            SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n"),
            Err(SwarmKeyError::Length(4))
        );
        assert_eq!(
            SwarmKey::parse("/key/swarm/psk/1.0.0/\n/base16/\n"),
            Err(SwarmKeyError::Length(0))
        );
        let bad = KUBO.replace("a0f3", "a0g3");
        assert_eq!(SwarmKey::parse(&bad), Err(SwarmKeyError::NotHex('g')));
        // Multi-byte text never slices a char in half.
        let wide = format!("{HEADER}\n{BASE16}\n{}\n", "é".repeat(32));
        assert_eq!(SwarmKey::parse(&wide), Err(SwarmKeyError::NotHex('é')));
        assert!(
            SwarmKeyError::NotASwarmKey
                .to_string()
                .contains("cairn-relay swarm-key")
        );
    }

    #[test]
    fn generated_keys_differ_and_round_trip() {
        let a = SwarmKey::generate().unwrap();
        let b = SwarmKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(SwarmKey::parse(&a.to_file()).unwrap(), a);
        assert_eq!(a.fingerprint().len(), 32);
    }
}
