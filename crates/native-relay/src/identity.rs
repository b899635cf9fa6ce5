//! The relay's persistent identity: an Ed25519 key in a file, created with mode 0600 on first
//! use and reused after.

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but cannot be read.
    #[error(
        "cannot read identity file {path}: {source}; fix its permissions or pass another --identity"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a key.
    #[error(
        "identity file {path} does not hold a libp2p private key ({source}); move it away to create a new identity"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        source: libp2p::identity::DecodingError,
    },
    /// The new key could not be written.
    #[error("cannot create identity file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Creates `path` (and its directory) holding `bytes`, readable by its owner only; fails if
/// it already exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Loads the key at `path`, or creates one there.
pub fn load_or_create(path: &Path) -> Result<Keypair, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            source: e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let write = |path: &Path| -> std::io::Result<()> {
                let bytes = key
                    .to_protobuf_encoding()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                write_private(path, &bytes)
            };
            write(path).map_err(|source| Error::Write {
                path: path.to_owned(),
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_private_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/identity.key");
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&p, b"garbage").unwrap();
        let err = load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("does not hold a libp2p private key"), "{err}");
    }
}
