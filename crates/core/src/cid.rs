//! Content identifiers: the codecs and hashes cairn speaks, parsing with clear errors, and
//! hashing bytes into a CID.
//!
//! cairn makes CIDv1 with the `raw` (0x55) or `dag-pb` (0x70) codec and a `sha2-256` (default)
//! or `blake3` multihash, written in multibase base32 (`b…`). CIDv0 (`Qm…`, always dag-pb +
//! sha2-256) is accepted on input.

use std::fmt;
use std::str::FromStr;

pub use ::cid::Cid;
use multihash::Multihash;
use sha2::Digest as _;

/// Hashes computed by this process ([`HashAlg::digest`] is the only place cairn hashes
/// block bytes): tests count them to check that every block is hashed exactly once on its
/// way in.
static HASHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times this process has hashed bytes so far.
pub fn hashes() -> u64 {
    HASHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The longest binary CID there is to read: a version, a codec and a hash code (each a
/// varint of at most 10 bytes), a digest length and a digest of at most 64 bytes (the most
/// the `cid` crate holds).
pub const MAX_BINARY_LEN: usize = 1 + 10 + 10 + 1 + 64;

/// Errors about CIDs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a CID at all.
    #[error("`{input}` is not a valid CID ({source}); a CID looks like `bafkrei…` or `Qm…`")]
    Malformed {
        /// What was given (shortened when long).
        input: String,
        /// What the parser said.
        source: ::cid::Error,
    },
    /// A CID with a codec cairn does not handle.
    #[error("CID codec 0x{0:x} is not supported; cairn handles raw (0x55) and dag-pb (0x70)")]
    UnknownCodec(u64),
    /// A CID with a hash function cairn does not handle.
    #[error("multihash 0x{0:x} is not supported; cairn handles sha2-256 (0x12) and blake3 (0x1e)")]
    UnknownHash(u64),
    /// A multihash whose digest has the wrong length for its function.
    #[error("multihash digest is {got} bytes, {alg} digests are 32")]
    BadDigestLength {
        /// The hash function.
        alg: HashAlg,
        /// The digest length found.
        got: usize,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The IPLD codecs cairn reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Plain bytes (0x55): UnixFS leaves.
    Raw,
    /// DAG-PB (0x70): UnixFS inner nodes.
    DagPb,
}

impl Codec {
    /// The multicodec code.
    pub const fn code(self) -> u64 {
        match self {
            Codec::Raw => 0x55,
            Codec::DagPb => 0x70,
        }
    }

    /// The codec with this multicodec code.
    pub fn from_code(code: u64) -> Result<Self> {
        match code {
            0x55 => Ok(Codec::Raw),
            0x70 => Ok(Codec::DagPb),
            other => Err(Error::UnknownCodec(other)),
        }
    }
}

/// The hash functions cairn reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashAlg {
    /// sha2-256 (0x12), IPFS's default.
    #[default]
    Sha2_256,
    /// blake3 (0x1e) with a 32-byte digest.
    Blake3,
}

impl HashAlg {
    /// The multihash code.
    pub const fn code(self) -> u64 {
        match self {
            HashAlg::Sha2_256 => 0x12,
            HashAlg::Blake3 => 0x1e,
        }
    }

    /// The hash function with this multihash code.
    pub fn from_code(code: u64) -> Result<Self> {
        match code {
            0x12 => Ok(HashAlg::Sha2_256),
            0x1e => Ok(HashAlg::Blake3),
            other => Err(Error::UnknownHash(other)),
        }
    }

    /// Hashes `data` into a multihash.
    pub fn digest(self, data: &[u8]) -> Multihash<64> {
        HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let digest: [u8; 32] = match self {
            HashAlg::Sha2_256 => sha2::Sha256::digest(data).into(),
            HashAlg::Blake3 => *blake3::hash(data).as_bytes(),
        };
        // A 32-byte digest always fits a 64-byte multihash.
        Multihash::wrap(self.code(), &digest).unwrap_or_default()
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashAlg::Sha2_256 => "sha2-256",
            HashAlg::Blake3 => "blake3",
        })
    }
}

impl FromStr for HashAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha2-256" | "sha256" => Ok(HashAlg::Sha2_256),
            "blake3" => Ok(HashAlg::Blake3),
            other => Err(format!("unknown hash `{other}`: use sha2-256 or blake3")),
        }
    }
}

/// Makes the CIDv1 of `data` under `codec` and `hash`.
pub fn of(codec: Codec, hash: HashAlg, data: &[u8]) -> Cid {
    Cid::new_v1(codec.code(), hash.digest(data))
}

/// Counts a hash computed elsewhere (the platform's hasher) for [`hashes`].
pub(crate) fn count_hash() {
    HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The CIDv1 of bytes whose `hash` digest was computed elsewhere (see
/// [`Block::from_digest`](crate::block::Block::from_digest)); counted as a hash.
pub fn from_digest(codec: Codec, hash: HashAlg, digest: &[u8; 32]) -> Cid {
    count_hash();
    // A 32-byte digest always fits a 64-byte multihash.
    Cid::new_v1(
        codec.code(),
        Multihash::wrap(hash.code(), digest).unwrap_or_default(),
    )
}

/// Parses a CID from text and checks that cairn can handle its codec and hash.
///
/// Accepts CIDv1 in any multibase and CIDv0 (`Qm…`).
pub fn parse(input: &str) -> Result<Cid> {
    let trimmed = input.trim();
    let cid = Cid::try_from(trimmed).map_err(|source| Error::Malformed {
        input: shorten(trimmed),
        source,
    })?;
    check(&cid)?;
    Ok(cid)
}

/// Checks that cairn can handle `cid`'s codec and hash, and returns them.
pub fn check(cid: &Cid) -> Result<(Codec, HashAlg)> {
    let codec = Codec::from_code(cid.codec())?;
    let alg = HashAlg::from_code(cid.hash().code())?;
    if cid.hash().size() != 32 {
        return Err(Error::BadDigestLength {
            alg,
            got: usize::from(cid.hash().size()),
        });
    }
    Ok((codec, alg))
}

/// The CID as text in base32 (CIDv0 is upgraded to the equivalent CIDv1).
pub fn to_base32(cid: &Cid) -> String {
    match cid.into_v1() {
        Ok(v1) => v1.to_string(),
        Err(_) => cid.to_string(),
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        let head: String = s.chars().take(77).collect();
        format!("{head}...")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_raw_sha256_is_the_well_known_cid() {
        let cid = of(Codec::Raw, HashAlg::Sha2_256, b"");
        assert_eq!(
            cid.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn blake3_cid_uses_code_0x1e() {
        let cid = of(Codec::Raw, HashAlg::Blake3, b"hello");
        assert_eq!(cid.hash().code(), 0x1e);
        assert_eq!(cid.hash().digest(), blake3::hash(b"hello").as_bytes());
        assert_eq!(parse(&cid.to_string()).unwrap(), cid);
    }

    #[test]
    fn v0_is_accepted_and_printed_as_v1() {
        let cid = parse("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n").unwrap();
        assert_eq!(cid.version(), ::cid::Version::V0);
        assert!(to_base32(&cid).starts_with("bafybei"));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        let err = parse("not-a-cid").unwrap_err().to_string();
        assert!(err.contains("not a valid CID"), "{err}");
        // dag-cbor (0x71) is a real codec cairn does not handle.
        let cbor = Cid::new_v1(0x71, HashAlg::Sha2_256.digest(b"x"));
        let err = parse(&cbor.to_string()).unwrap_err().to_string();
        assert!(err.contains("0x71"), "{err}");
        // identity hash (0x00)
        let ident = Cid::new_v1(0x55, Multihash::<64>::wrap(0, b"abc").unwrap());
        let err = parse(&ident.to_string()).unwrap_err().to_string();
        assert!(err.contains("multihash 0x0"), "{err}");
        let long = "b".repeat(500);
        assert!(parse(&long).unwrap_err().to_string().len() < 300);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = parse(&s);
        }

        #[test]
        fn roundtrip(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256), blake in proptest::bool::ANY) {
            let alg = if blake { HashAlg::Blake3 } else { HashAlg::Sha2_256 };
            let cid = of(Codec::Raw, alg, &data);
            proptest::prop_assert_eq!(parse(&to_base32(&cid)).unwrap(), cid);
        }
    }
}
