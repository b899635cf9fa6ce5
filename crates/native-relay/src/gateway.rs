//! The relay's HTTP trustless gateway over its store: `GET`/`HEAD /ipfs/{cid}`.
//!
//! - `?format=raw` or `Accept: application/vnd.ipld.raw`: the block itself.
//! - `?format=car` or `Accept: application/vnd.ipld.car`: a CARv1 of the whole DAG under the
//!   CID (root first, then depth-first in link order), streamed.
//! - neither: the UnixFS file's bytes (`application/octet-stream`), for plain browsers.
//! - `bafkqaaa` (the empty identity CID) answers 200 with an empty body: the probe clients
//!   use to check that a gateway is trustless-capable.
//!
//! A CID the store lacks is a 404 at once (never a wait); a malformed CID is a 400.
//! Responses are immutable and CORS-open (the router adds CORS).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_core::block::Block;
use cairn_core::cid::{self, Cid, Codec};
use cairn_core::source::{Context, Local};
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Range, pb::Node};
use futures::StreamExt;

use crate::store::Disk;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
/// The empty identity CID used as a trustless-gateway probe.
pub const PROBE: &str = "bafkqaaa";
/// Most blocks a CAR response walks before it refuses (a bound on work per request).
const MAX_CAR_BLOCKS: usize = 1 << 20;

/// The gateway's state: the store, if the relay has one.
#[derive(Debug, Clone)]
pub struct Gateway {
    store: Option<Disk>,
}

impl Gateway {
    /// A gateway over `store` (`None`: every content request is a 404 that says why).
    pub fn new(store: Option<Disk>) -> Self {
        Self { store }
    }

    /// The routes, to merge into the relay's router.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/ipfs/{cid}", axum::routing::get(handle).head(handle))
            .with_state(Arc::new(self))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Raw,
    Car,
    File,
}

fn format(query: Option<&str>, headers: &HeaderMap) -> Result<Format, String> {
    let from_query = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("format="));
    match from_query {
        Some("raw") => return Ok(Format::Raw),
        Some("car") => return Ok(Format::Car),
        Some(other) => return Err(format!("format `{other}` is not supported: use raw or car")),
        None => {}
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(RAW) {
        Ok(Format::Raw)
    } else if accept.contains(CAR) {
        Ok(Format::Car)
    } else {
        Ok(Format::File)
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn immutable(mut resp: Response, cid: &str, etag_suffix: &str, content_type: &str) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, content_type.to_owned());
    set(
        h,
        header::CACHE_CONTROL,
        "public, max-age=29030400, immutable".into(),
    );
    set(h, header::ETAG, format!("\"{cid}{etag_suffix}\""));
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    resp
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    Path(cid_text): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let fmt = match format(query.as_deref(), &headers) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let head = method == Method::HEAD;
    if cid_text == PROBE {
        let ct = if fmt == Format::Car { CAR } else { RAW };
        return immutable(StatusCode::OK.into_response(), PROBE, "", ct);
    }
    let cid = match cid::parse(&cid_text) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(store) = gw.store.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "this relay holds no content (start it with --store DIR to serve a store)",
        );
    };
    let root = match store.get(&cid).await {
        Ok(Some(b)) => b,
        Ok(None) => return text(StatusCode::NOT_FOUND, format!("{cid} is not held here")),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match fmt {
        Format::Raw => {
            let len = root.len();
            let body = if head {
                Body::empty()
            } else {
                Body::from(root.data().clone())
            };
            let mut resp = Response::new(body);
            if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
                resp.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            immutable(resp, &cid_text, ".raw", RAW)
        }
        Format::Car => match dag_cids(&store, &root).await {
            Ok(cids) => {
                let body = if head {
                    Body::empty()
                } else {
                    Body::from_stream(car_stream(store, cid, cids))
                };
                immutable(
                    Response::new(body),
                    &cid_text,
                    ".car",
                    &format!("{CAR}; version=1"),
                )
            }
            Err(resp) => resp,
        },
        Format::File => {
            let src = Local(store);
            let size = match unixfs::file_size(&src, &cid, &Context::new()).await {
                Ok(s) => s,
                Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            };
            let mut resp = if head {
                Response::new(Body::empty())
            } else {
                let stream = file_body(src, cid);
                Response::new(Body::from_stream(stream))
            };
            if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
                resp.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            immutable(resp, &cid_text, "", "application/octet-stream")
        }
    }
}

/// The file's bytes as a body stream (it owns its source and context).
fn file_body(
    src: Local<Disk>,
    cid: Cid,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let ctx = Context::new();
        let mut tx = tx;
        let mut s = std::pin::pin!(unixfs::export(&src, cid, Range::ALL, 8, &ctx));
        while let Some(piece) = s.next().await {
            let item = piece.map_err(|e| std::io::Error::other(e.to_string()));
            let stop = item.is_err();
            if futures::SinkExt::send(&mut tx, item).await.is_err() || stop {
                break; // the client went away, or the DAG is broken: end the body
            }
        }
    });
    rx
}

/// Every CID of the DAG under `root`, root first then depth-first, if all are held.
async fn dag_cids(store: &Disk, root: &Block) -> Result<Vec<Cid>, Response> {
    let mut out = Vec::new();
    let mut stack = vec![*root.cid()];
    while let Some(c) = stack.pop() {
        if out.len() >= MAX_CAR_BLOCKS {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the DAG has more than {MAX_CAR_BLOCKS} blocks"),
            ));
        }
        if c.codec() == Codec::DagPb.code() {
            let b = match store.get(&c).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(text(
                        StatusCode::NOT_FOUND,
                        format!("the DAG is incomplete here: {c} is missing"),
                    ));
                }
                Err(e) => return Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            };
            let node = Node::decode(b.data())
                .map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("{c}: {e}")))?;
            stack.extend(node.links.iter().rev().map(|l| l.cid));
        } else if !store.has(&c).await.unwrap_or(false) {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("the DAG is incomplete here: {c} is missing"),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// The CARv1 header: dag-cbor `{"roots": [root], "version": 1}`, length-prefixed.
pub fn car_header(root: &Cid) -> Vec<u8> {
    let cid = root.to_bytes();
    let mut cbor = vec![0xa2, 0x65];
    cbor.extend_from_slice(b"roots");
    cbor.push(0x81); // array of 1
    cbor.extend_from_slice(&[0xd8, 0x2a]); // tag 42 (CID)
    let len = cid.len() + 1; // the 0x00 multibase-identity prefix
    if len < 24 {
        cbor.push(0x40 | len as u8);
    } else {
        cbor.extend_from_slice(&[0x58, len as u8]);
    }
    cbor.push(0x00);
    cbor.extend_from_slice(&cid);
    cbor.push(0x67);
    cbor.extend_from_slice(b"version");
    cbor.push(0x01);
    let mut out = Vec::with_capacity(cbor.len() + 2);
    cairn_core::varint::put(&mut out, cbor.len() as u64);
    out.extend_from_slice(&cbor);
    out
}

fn car_stream(
    store: Disk,
    root: Cid,
    cids: Vec<Cid>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let header = futures::stream::once(async move { Ok(Bytes::from(car_header(&root))) });
    let sections = futures::stream::iter(cids).then(move |c| {
        let store = store.clone();
        async move {
            let b = store
                .get(&c)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .ok_or_else(|| std::io::Error::other(format!("{c} vanished while streaming")))?;
            let cid = c.to_bytes();
            let mut out = Vec::with_capacity(cid.len() + b.len() + 10);
            cairn_core::varint::put(&mut out, (cid.len() + b.len()) as u64);
            out.extend_from_slice(&cid);
            out.extend_from_slice(b.data());
            Ok(Bytes::from(out))
        }
    });
    header.chain(sections)
}
