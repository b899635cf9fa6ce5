//! The relay's Delegated Routing V1 endpoint: `GET /routing/v1/providers/{cid}`, answered
//! from what the relay's DHT holds (provider records peers stored on it) and from its own
//! store (the relay itself, when it holds the block and serves it over bitswap).
//!
//! `Accept: application/x-ndjson` gets NDJSON, anything else JSON; no provider is a `404`;
//! a malformed CID is a `400`. Browsers, which cannot speak the DHT themselves, ask here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::cid;
use cairn_core::store::BlockStore;
use cairn_p2p::Node;
use cairn_p2p::routing_v1::{self, Provider};
use libp2p::Multiaddr;

use crate::store::Disk;

/// What the endpoint needs: the node, the store, the relay's addresses.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The relay's node.
    pub node: Node,
    /// The relay's store, if any.
    pub store: Option<Disk>,
    /// The relay's own addresses, given for itself as a provider.
    pub addrs: Vec<Multiaddr>,
}

impl Routing {
    /// The routes, to merge into the relay's router.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/routing/v1/providers/{cid}", axum::routing::get(providers))
            .with_state(Arc::new(self))
    }
}

fn text(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg + "\n",
    )
        .into_response()
}

async fn providers(
    State(r): State<Arc<Routing>>,
    Path(cid_text): Path<String>,
    headers: HeaderMap,
) -> Response {
    let cid = match cid::parse(&cid_text) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("`{cid_text}`: {e}")),
    };
    let node = &r.node;
    let mut found: Vec<Provider> = Vec::new();
    if let Some(store) = &r.store
        && store.has(&cid).await.unwrap_or(false)
    {
        found.push(Provider {
            peer: node.peer_id(),
            addrs: r.addrs.clone(),
            protocols: vec!["transport-bitswap".into()],
        });
    }
    match tokio::time::timeout(Duration::from_secs(5), node.local_providers(cid)).await {
        Ok(Ok(list)) => found.extend(list.into_iter().map(|(peer, addrs)| Provider {
            peer,
            addrs,
            protocols: vec!["transport-bitswap".into()],
        })),
        Ok(Err(e)) => tracing::warn!(error = %e, "routing: cannot read provider records"),
        Err(_) => tracing::warn!("routing: provider records took over 5 s"),
    }
    found.truncate(routing_v1::MAX_PROVIDERS);
    if found.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("no provider of {cid} is known here"),
        );
    }
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains(routing_v1::NDJSON));
    let (kind, body) = if ndjson {
        (routing_v1::NDJSON, routing_v1::to_ndjson(&found))
    } else {
        ("application/json", routing_v1::to_json(&found))
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=15"),
        ],
        body,
    )
        .into_response()
}
