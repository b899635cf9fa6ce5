use std::future::Future;

use bytes::Bytes;

use super::{ContentSource, Context, SourceError, SourceKind};
use crate::block::Block;
use crate::cid::Cid;
use crate::{CondSend, CondSync, MAX_BLOCK_SIZE};

/// An HTTP response, as much of it as the gateway source needs.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// The body (at most the requested limit).
    pub body: Bytes,
}

/// Why an HTTP request failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// Connecting or transferring failed.
    #[error("{0}")]
    Transport(#[source] crate::error::Reason),
    /// The body was longer than allowed.
    #[error("response body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// The small HTTP client the gateway source needs: one GET with an `Accept` header and a body
/// size limit. Implemented natively on reqwest (`cairn-relay`) and in the browser on `fetch()`.
pub trait HttpClient: CondSync {
    /// GETs `url` with `Accept: accept`; bodies longer than `max_body` are an error.
    fn get(
        &self,
        url: &str,
        accept: &str,
        max_body: usize,
    ) -> impl Future<Output = Result<HttpResponse, HttpError>> + CondSend;
}

/// An IPFS trustless gateway as a source: `GET {base}/ipfs/{cid}?format=raw` with
/// `Accept: application/vnd.ipld.raw`, every answer verified against the CID.
#[derive(Debug, Clone)]
pub struct Gateway<H> {
    http: H,
    base: String,
}

/// How many times a busy gateway (503, 429) is asked again for one block.
const BUSY_RETRIES: u32 = 8;

/// A busy answer, and the error it is if the retries run out.
struct Busy(SourceError);

/// The media type of a raw block.
pub const RAW_BLOCK: &str = "application/vnd.ipld.raw";

impl<H: HttpClient> Gateway<H> {
    /// A gateway at `base` (for example `https://trustless-gateway.link`).
    pub fn new(http: H, base: impl Into<String>) -> Self {
        let base = base.into().trim_end_matches('/').to_owned();
        Self { http, base }
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs the block; a gateway that is only busy (503, 429) is asked again after a pause
    /// (doubling from 20 ms to 1 s, [`BUSY_RETRIES`] times).
    async fn fetch(&self, cid: &Cid) -> Result<Block, SourceError> {
        let mut pause = std::time::Duration::from_millis(20);
        let mut tries = 0;
        loop {
            match self.fetch_once(cid).await {
                Err(Busy(_)) if tries < BUSY_RETRIES => {
                    tries += 1;
                    crate::rt::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(Busy(e)) => return Err(e),
                Ok(r) => return r,
            }
        }
    }

    async fn fetch_once(&self, cid: &Cid) -> Result<Result<Block, SourceError>, Busy> {
        let url = format!("{}/ipfs/{cid}?format=raw", self.base);
        let resp = self
            .http
            .get(&url, RAW_BLOCK, MAX_BLOCK_SIZE)
            .await
            .map_err(|e| match e {
                HttpError::TooLarge { .. } => SourceError::Invalid(
                    format!("{e}: no valid block is larger than {MAX_BLOCK_SIZE} bytes").into(),
                ),
                HttpError::Transport(m) => SourceError::Unavailable(m),
            });
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match resp.status {
            200 => Block::new(*cid, resp.body)
                .map_err(|e| SourceError::Invalid(crate::error::Reason::new(e))),
            404 | 410 => Err(SourceError::NotFound),
            s @ (429 | 503) => {
                return Err(Busy(SourceError::Unavailable(
                    format!("HTTP {s} (busy) from {url}").into(),
                )));
            }
            s => Err(SourceError::Unavailable(
                format!("HTTP {s} from {url}").into(),
            )),
        })
    }
}

impl<H: HttpClient> ContentSource for Gateway<H> {
    fn kind(&self) -> SourceKind {
        SourceKind::Gateway
    }

    fn name(&self) -> String {
        format!("gateway {}", self.base)
    }

    fn retrieve(
        &self,
        cid: &Cid,
        _ctx: &Context,
    ) -> impl Future<Output = Result<Block, SourceError>> + CondSend {
        self.fetch(cid)
    }
}
