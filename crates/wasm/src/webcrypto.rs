//! SHA-256 through the platform's WebCrypto (`crypto.subtle.digest`) for the leaves of an
//! add: it runs at several times wasm's sha2 here and off the page's thread, and every leaf
//! of a batch is handed over at once. Where there is no WebCrypto (a page on plain `http:`
//! other than localhost has no `crypto.subtle`) or for blake3, the importer hashes in wasm.

use bytes::Bytes;
use cairn_core::Reason;
use cairn_core::cid::HashAlg;
use cairn_core::unixfs::LeafHasher;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The leaf hasher of the node's `add`: the context's `crypto.subtle`, if it has one.
#[derive(Debug, Clone)]
pub struct WebCrypto {
    subtle: Option<web_sys::SubtleCrypto>,
}

impl WebCrypto {
    /// Finds the context's WebCrypto (a window's or a worker's).
    pub fn new() -> Self {
        let field = |of: &JsValue, name: &str| {
            js_sys::Reflect::get(of, &JsValue::from_str(name))
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_null())
        };
        let subtle = field(&js_sys::global(), "crypto")
            .and_then(|c| field(&c, "subtle"))
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
            let buf = JsFuture::from(p)
                .await
                .map_err(|e| failed("failed to hash", e))?;
            let bytes = js_sys::Uint8Array::new(&buf);
            let mut digest = [0u8; 32];
            if bytes.length() != 32 {
                return Err(Reason::msg(format!(
                    "WebCrypto gave a SHA-256 digest of {} bytes",
                    bytes.length()
                )));
            }
            bytes.copy_to(&mut digest);
            out.push(digest);
        }
        Ok(Some(out))
    }
}
