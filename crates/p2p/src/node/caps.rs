//! The caps exchange: each peer identify shows speaking `/cas` is asked once for its
//! `caps`, and the content index it sends (a bloom filter of what it holds) goes into the
//! reputation table, where the peer race ranks peers by it.

use cairn_core::BoxFuture;
use cairn_core::source::routing::{ContentIndex, Reputations};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;

use crate::cas;

/// Most `caps` requests in flight; a peer identified past that has no index (it is still
/// asked for blocks, just not ranked by what it holds).
const MAX_ASKING: usize = 256;

type Answer = (PeerId, Result<cas::Response, cas::RequestError>);

/// `caps` requests in flight.
pub(crate) struct CapsExchange {
    client: cas::Client,
    asking: FuturesUnordered<BoxFuture<'static, Answer>>,
}

impl CapsExchange {
    pub(crate) fn new(client: cas::Client) -> Self {
        Self {
            client,
            asking: FuturesUnordered::new(),
        }
    }

    /// Asks `peer` for its caps.
    pub(crate) fn ask(&mut self, peer: PeerId) {
        if self.asking.len() >= MAX_ASKING {
            tracing::debug!(%peer, "too many caps requests in flight; not asking");
            return;
        }
        let client = self.client.clone();
        self.asking.push(cairn_core::boxed(async move {
            (peer, client.request(peer, &cas::Request::Caps {}).await)
        }));
    }

    /// The next answer (pending while none is in flight).
    pub(crate) async fn next(&mut self) -> Answer {
        match self.asking.next().await {
            Some(a) => a,
            None => futures::future::pending().await,
        }
    }

    /// Keeps what `answer` says `peer` holds; `true` if an index was kept.
    pub(crate) fn take(reputations: &Reputations<PeerId>, (peer, answer): Answer) -> bool {
        match answer {
            Ok(cas::Response::Caps(cas::Capabilities {
                bloom: Some(bloom), ..
            })) => match ContentIndex::try_from(bloom) {
                Ok(ix) => {
                    reputations.set_index(&peer, ix);
                    true
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "caps");
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "caps request failed");
                false
            }
        }
    }
}
