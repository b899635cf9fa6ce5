//! Sending `/cas` requests: each on a stream of its own, whose write side stays open until
//! the answer is in. Dropping the future (a race that another peer won, a timeout, an
//! aborted fetch) drops the open stream, which resets it, so the peer stops sending what
//! nobody will read (dropping a half-closed stream would not tell it).

use std::time::Duration;

use bytes::Bytes;
use cairn_core::Reason;
use cairn_core::cid::Cid;
use cairn_core::source::PeerError;
use futures::AsyncWriteExt;
use libp2p::PeerId;

use super::{Error, Limits, PROTOCOL, Request, Response, WireCid, code, decode_response, encode};
use crate::framing;
use crate::streams::{Control, OpenStreamError};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No stream could be opened (the peer is unreachable or does not speak `/cas`).
    #[error(transparent)]
    Open(#[from] OpenStreamError),
    /// The stream failed, or the answer was over the limits or malformed.
    #[error(transparent)]
    Exchange(#[from] Error),
    /// No answer came in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A peer answered with an error message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused (code {code}): {message}")]
pub struct Refused {
    /// One of [`code`].
    pub code: u32,
    /// What the peer said.
    pub message: String,
}

impl Refused {
    /// Whether the peer is only overloaded (code 4): asking again later may work.
    pub fn is_busy(&self) -> bool {
        self.code == code::BUSY
    }
}

/// Sends requests over a node's streams; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    streams: Control,
    limits: Limits,
    timeout: Duration,
}

impl Client {
    /// A client whose requests are bounded by `limits` and answered within `timeout`.
    pub fn new(streams: Control, limits: Limits, timeout: Duration) -> Self {
        Self {
            streams,
            limits,
            timeout,
        }
    }

    /// Sends `req` to `peer` (dialing it if needed, at addresses the node knows) and reads
    /// the answer.
    pub async fn request(&self, peer: PeerId, req: &Request) -> Result<Response, RequestError> {
        let exchange = async {
            let mut control = self.streams.clone();
            let mut stream = control.open_stream(peer, PROTOCOL).await?;
            framing::write_frame(&mut stream, &encode(req))
                .await
                .map_err(|e| Error::Frame(e.into()))?;
            let body = framing::read_frame(&mut stream, self.limits.max_response)
                .await
                .map_err(Error::Frame)?;
            let _ = stream.close().await;
            Ok(decode_response(&body)?)
        };
        cairn_core::rt::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout(self.timeout)))
    }

    /// Asks `peer` for one block; the bytes are the caller's to verify. A `busy` answer is
    /// asked again after a pause (doubling from 20 ms to 1 s) until the request timeout has
    /// passed since the first ask; so, at most twice, is a stream that ended or was reset
    /// before its answer was whole (a responder past its accept queue resets new streams).
    pub async fn get(&self, peer: PeerId, cid: &Cid) -> Result<Bytes, PeerError> {
        const STREAM_RETRIES: u32 = 2;
        let req = Request::Get {
            cids: vec![WireCid::from(cid)],
        };
        let started = cairn_core::rt::Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut broken = 0;
        loop {
            let answer = self.request(peer, &req).await;
            let busy = matches!(&answer, Ok(Response::Error { code, .. }) if *code == code::BUSY);
            let cut = matches!(
                &answer,
                Err(RequestError::Exchange(Error::Frame(
                    framing::Error::Closed | framing::Error::Io(_)
                )))
            ) && broken < STREAM_RETRIES;
            if (busy || cut) && started.elapsed() + pause < self.timeout {
                if cut {
                    broken += 1;
                    tracing::debug!(%peer, %cid, "/cas get: the stream ended before the answer; asking again");
                }
                cairn_core::rt::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            return Self::block(cid, answer);
        }
    }

    fn block(cid: &Cid, answer: Result<Response, RequestError>) -> Result<Bytes, PeerError> {
        match answer {
            Ok(Response::Get { blocks, .. }) => blocks
                .into_iter()
                .find(|b| b.0.cid().as_ref() == Some(cid))
                .map(|b| Bytes::from(b.1.into_vec()))
                .ok_or(PeerError::NotFound),
            Ok(Response::Error { code, message }) => {
                Err(PeerError::Failed(Reason::new(Refused { code, message })))
            }
            Ok(_) => Err(PeerError::Failed(Reason::msg(
                "answered get with another message type",
            ))),
            Err(e) => Err(PeerError::Failed(Reason::new(e))),
        }
    }
}
