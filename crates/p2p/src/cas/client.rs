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
            // A block `skipped` (the peer's answer budget had no room for it) is held there:
            // as good as busy, not missing.
            let busy = match &answer {
                Ok(Response::Error { code, .. }) => *code == code::BUSY,
                Ok(Response::Get {
                    blocks, skipped, ..
                }) => {
                    skipped.iter().any(|c| c.cid().as_ref() == Some(cid))
                        && !blocks.iter().any(|b| b.0.cid().as_ref() == Some(cid))
                }
                _ => false,
            };
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
            Ok(Response::Get {
                blocks, skipped, ..
            }) => match blocks.into_iter().find(|b| b.0.cid().as_ref() == Some(cid)) {
                Some(b) => Ok(Bytes::from(b.1.into_vec())),
                None if skipped.iter().any(|c| c.cid().as_ref() == Some(cid)) => {
                    Err(PeerError::Failed(Reason::msg(
                        "the peer holds the block but had no room to send it (answer budget full); ask again later",
                    )))
                }
                None => Err(PeerError::NotFound),
            },
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::cas::WireBlock;
    use crate::streams::tests::swarm;

    /// A `/cas` peer that answers each `get` with the block listed as `skipped` the first
    /// `skips` times, then with the block.
    async fn skipping_peer(
        skips: usize,
        data: &'static [u8],
    ) -> (Client, PeerId, Arc<AtomicUsize>) {
        let mut server = swarm();
        let mut incoming = server
            .behaviour()
            .new_control()
            .accept(PROTOCOL, 8)
            .unwrap();
        let addr = crate::streams::tests::listening(&mut server).await;
        let id = *server.local_peer_id();
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = server.select_next_some() => {}
                    Some((_, mut s)) = incoming.next() => {
                        let body = framing::read_frame(&mut s, 1 << 20).await.unwrap();
                        let Ok(Request::Get { cids }) = super::super::decode_request(&body) else {
                            panic!("not a get")
                        };
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let answer = if n < skips {
                            Response::Get { blocks: vec![], missing: vec![], skipped: cids }
                        } else {
                            Response::Get {
                                blocks: vec![WireBlock(cids[0].clone(), ByteBuf::from(data.to_vec()))],
                                missing: vec![],
                                skipped: vec![],
                            }
                        };
                        framing::write_frame(&mut s, &encode(&answer)).await.unwrap();
                        let _ = s.close().await;
                    }
                }
            }
        });
        let mut client = swarm();
        let control = client.behaviour().new_control();
        client.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
                break;
            }
        }
        tokio::spawn(async move {
            loop {
                client.select_next_some().await;
            }
        });
        let client = Client::new(control, Limits::default(), Duration::from_millis(500));
        (client, id, asked)
    }

    /// A block the peer skipped (its answer budget was full) is asked for again, not taken
    /// as missing; one it keeps skipping fails as unavailable, saying why.
    #[tokio::test]
    async fn a_skipped_block_is_asked_again_not_taken_as_missing() {
        let data: &[u8] = b"held but not sent at first";
        let cid = *cairn_core::block::Block::from_data(
            cairn_core::cid::Codec::Raw,
            cairn_core::cid::HashAlg::Sha2_256,
            data,
        )
        .unwrap()
        .cid();
        let (client, peer, asked) = skipping_peer(2, data).await;
        assert_eq!(
            client.get(peer, &cid).await.unwrap(),
            Bytes::from_static(data)
        );
        assert_eq!(asked.load(Ordering::SeqCst), 3, "asked until it was sent");

        let (client, peer, _) = skipping_peer(usize::MAX, data).await;
        match client.get(peer, &cid).await {
            Err(PeerError::Failed(why)) => {
                assert!(why.to_string().contains("no room to send it"), "{why}")
            }
            other => panic!("a block always skipped is unavailable, not {other:?}"),
        }
    }
}
