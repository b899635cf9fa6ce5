//! The native [`HttpClient`] for the gateway source, on reqwest (rustls, HTTP/1.1 and 2).

use std::time::Duration;

use bytes::BytesMut;
use cairn_core::source::{HttpClient, HttpError, HttpResponse};

/// A pooled HTTP client.
#[derive(Debug, Clone)]
pub struct Client(reqwest::Client);

impl Client {
    /// A client with a connect timeout; overall time is bounded by the source chain.
    pub fn new() -> Result<Self, HttpError> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(Self)
            .map_err(|e| HttpError::Transport(cairn_core::Reason::new(e)))
    }
}

/// A request that failed, with its URL.
#[derive(Debug, thiserror::Error)]
#[error("GET {url}: {source}")]
struct Failed {
    url: String,
    source: reqwest::Error,
}

impl HttpClient for Client {
    async fn get(
        &self,
        url: &str,
        accept: &str,
        max_body: usize,
    ) -> Result<HttpResponse, HttpError> {
        let transport = |source: reqwest::Error| {
            HttpError::Transport(cairn_core::Reason::new(Failed {
                url: url.to_owned(),
                source,
            }))
        };
        let mut resp = self
            .0
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if resp.content_length().is_some_and(|l| l > max_body as u64) {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > max_body {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            body: body.freeze(),
        })
    }
}
