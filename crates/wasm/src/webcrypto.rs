//! SHA-256 through the platform's WebCrypto (`crypto.subtle.digest`): for the leaves of an
//! add (every leaf of a batch handed over at once) and for the blocks peers send (each in
//! its request's future, so answers are checked side by side). It runs at several times
//! wasm's sha2 here, off the page's thread. Where there is no WebCrypto (a page on plain
//! `http:` other than localhost has no `crypto.subtle`) or for blake3, wasm hashes.

use bytes::Bytes;
use cairn_core::Reason;
use cairn_core::block::{self, Block};
use cairn_core::cid::{Cid, HashAlg};
use cairn_core::source::Verify;
use cairn_core::unixfs::LeafHasher;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// Blocks from peers at least this large are hashed by WebCrypto; smaller ones in wasm.
pub const WEBCRYPTO_FROM: usize = 16 * 1024;

/// The leaf hasher of the node's `add` and the verifier of what peers send: the context's
/// `crypto.subtle`, if it has one.
#[derive(Debug, Clone)]
pub struct WebCrypto {
    subtle: Option<web_sys::SubtleCrypto>,
}

impl WebCrypto {
    /// Finds the context's WebCrypto (a window's or a worker's).
    pub fn new() -> Self {
        let subtle = crate::js::present(&js_sys::global(), "crypto")
            .and_then(|c| crate::js::present(&c, "subtle"))
            .map(JsCast::unchecked_into::<web_sys::SubtleCrypto>);
        Self { subtle }
    }

    /// Whether this context has WebCrypto (else every leaf is hashed in wasm).
    pub fn available(&self) -> bool {
        self.subtle.is_some()
    }
}

impl Default for WebCrypto {
    fn default() -> Self {
        Self::new()
    }
}

fn failed(what: &str, e: JsValue) -> Reason {
    Reason::msg(format!("WebCrypto {what}: {}", crate::js::describe(&e)))
}

/// SHA-256 of `data` by `subtle`.
async fn sha256(subtle: &web_sys::SubtleCrypto, data: &[u8]) -> Result<[u8; 32], Reason> {
    let promise = subtle
        .digest_with_str_and_u8_array("SHA-256", data)
        .map_err(|e| failed("refused to hash", e))?;
    digest_of(promise).await
}

async fn digest_of(promise: js_sys::Promise) -> Result<[u8; 32], Reason> {
    let buf = JsFuture::from(promise)
        .await
        .map_err(|e| failed("failed to hash", e))?;
    let bytes = js_sys::Uint8Array::new(&buf);
    if bytes.length() != 32 {
        return Err(Reason::msg(format!(
            "WebCrypto gave a SHA-256 digest of {} bytes",
            bytes.length()
        )));
    }
    let mut digest = [0u8; 32];
    bytes.copy_to(&mut digest);
    Ok(digest)
}

impl Verify for WebCrypto {
    fn verify(
        &self,
        cid: Cid,
        bytes: Bytes,
    ) -> cairn_core::BoxFuture<'static, Result<Block, block::Error>> {
        // Small blocks are hashed here: a promise costs more than hashing them.
        let subtle = self.subtle.clone().filter(|_| {
            cid.hash().code() == HashAlg::Sha2_256.code() && bytes.len() >= WEBCRYPTO_FROM
        });
        Box::pin(async move {
            let Some(subtle) = subtle else {
                return Block::new(cid, bytes);
            };
            match sha256(&subtle, &bytes).await {
                Ok(digest) => Block::with_digest(cid, &digest, bytes),
                // WebCrypto failing says nothing about the bytes: check them here.
                Err(_) => Block::new(cid, bytes),
            }
        })
    }
}

impl LeafHasher for WebCrypto {
    async fn digests(
        &self,
        alg: HashAlg,
        chunks: &[Bytes],
    ) -> Result<Option<Vec<[u8; 32]>>, Reason> {
        let Some(subtle) = self.subtle.as_ref().filter(|_| alg == HashAlg::Sha2_256) else {
            return Ok(None);
        };
        // Every digest is started before any is awaited: WebCrypto copies the bytes when
        // called and hashes them in parallel, off this thread.
        let pending = chunks
            .iter()
            .map(|c| subtle.digest_with_str_and_u8_array("SHA-256", c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed("refused to hash", e))?;
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(digest_of(p).await?);
        }
        Ok(Some(out))
    }
}
