//! Verified blocks.
//!
//! A [`Block`] is a CID and bytes whose hash has been checked against it. The only way to
//! build one from untrusted bytes is [`Block::new`], which verifies; [`Block::from_data`]
//! hashes bytes you produced yourself. No code path stores or returns unverified bytes.

use bytes::Bytes;

use crate::MAX_BLOCK_SIZE;
use crate::cid::{self, Cid, Codec, HashAlg};

/// Why bytes could not become a [`Block`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not hash to the CID.
    #[error(
        "bytes do not match {cid}: their {alg} hash differs (the data is corrupt or was tampered with)"
    )]
    HashMismatch {
        /// The CID that was expected.
        cid: Cid,
        /// The hash function used to check.
        alg: HashAlg,
    },
    /// Over the 2 MiB block limit.
    #[error(
        "block of {size} bytes exceeds the {MAX_BLOCK_SIZE}-byte limit; import large data as a file so it is chunked"
    )]
    TooLarge {
        /// Size of the rejected bytes.
        size: usize,
    },
    /// The CID itself cannot be handled.
    #[error(transparent)]
    Cid(#[from] cid::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CID with bytes whose hash matches it.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("cid", &self.cid.to_string())
            .field("len", &self.data.len())
            .finish()
    }
}

impl Block {
    /// Verifies that `data` hashes to `cid` and makes a block of them.
    pub fn new(cid: Cid, data: impl Into<Bytes>) -> Result<Self> {
        let data = data.into();
        if data.len() > MAX_BLOCK_SIZE {
            return Err(Error::TooLarge { size: data.len() });
        }
        let (_, alg) = cid::check(&cid)?;
        if alg.digest(&data).digest() != cid.hash().digest() {
            return Err(Error::HashMismatch { cid, alg });
        }
        Ok(Self { cid, data })
    }

    /// Verifies `data` against `cid` as [`Block::new`] does, with the digest computed by the
    /// caller (a platform hasher such as the browser's WebCrypto, off the calling thread):
    /// `digest` must be `data`'s digest under the CID's hash function, and must equal the
    /// CID's. Counted as a hash ([`cid::hashes`]).
    pub fn with_digest(cid: Cid, digest: &[u8], data: impl Into<Bytes>) -> Result<Self> {
        let data = data.into();
        if data.len() > MAX_BLOCK_SIZE {
            return Err(Error::TooLarge { size: data.len() });
        }
        let (_, alg) = cid::check(&cid)?;
        cid::count_hash();
        if digest != cid.hash().digest() {
            return Err(Error::HashMismatch { cid, alg });
        }
        Ok(Self { cid, data })
    }

    /// Hashes `data` (bytes you made) into a CIDv1 block.
    pub fn from_data(codec: Codec, alg: HashAlg, data: impl Into<Bytes>) -> Result<Self> {
        let data = data.into();
        if data.len() > MAX_BLOCK_SIZE {
            return Err(Error::TooLarge { size: data.len() });
        }
        let cid = cid::of(codec, alg, &data);
        Ok(Self { cid, data })
    }

    /// A CIDv1 block of `data` whose `alg` digest the caller computed itself (a platform
    /// hasher such as the browser's WebCrypto, which hashes off the calling thread). Only
    /// for bytes the caller made and hashed: the digest is not checked. Counted as a hash
    /// ([`cid::hashes`]).
    pub fn from_digest(
        codec: Codec,
        alg: HashAlg,
        digest: &[u8; 32],
        data: impl Into<Bytes>,
    ) -> Result<Self> {
        let data = data.into();
        if data.len() > MAX_BLOCK_SIZE {
            return Err(Error::TooLarge { size: data.len() });
        }
        Ok(Self {
            cid: cid::from_digest(codec, alg, digest),
            data,
        })
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block has no bytes (the empty raw block is valid).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The codec of the block's CID (checked at construction).
    pub fn codec(&self) -> Codec {
        Codec::from_code(self.cid.codec()).unwrap_or(Codec::Raw)
    }

    /// Splits the block into its CID and bytes.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_verifies() {
        let b = Block::from_data(Codec::Raw, HashAlg::Sha2_256, &b"hello"[..]).unwrap();
        assert!(Block::new(*b.cid(), &b"hello"[..]).is_ok());
        let err = Block::new(*b.cid(), &b"hellO"[..]).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
        let b3 = Block::from_data(Codec::Raw, HashAlg::Blake3, &b"hello"[..]).unwrap();
        assert!(Block::new(*b3.cid(), &b"hello"[..]).is_ok());
        assert!(Block::new(*b3.cid(), &b"jello"[..]).is_err());
    }

    #[test]
    fn over_two_mib_is_refused() {
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        assert!(matches!(
            Block::from_data(Codec::Raw, HashAlg::Sha2_256, big.clone()),
            Err(Error::TooLarge { .. })
        ));
        let cid = cid::of(Codec::Raw, HashAlg::Sha2_256, &big);
        assert!(matches!(Block::new(cid, big), Err(Error::TooLarge { .. })));
        let exact = vec![0u8; MAX_BLOCK_SIZE];
        assert!(Block::from_data(Codec::Raw, HashAlg::Sha2_256, exact).is_ok());
    }
}
