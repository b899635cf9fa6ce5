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
//!
//! Each response holds its bytes in the relay's answer [`Budget`], per client address and in
//! total: a raw block its size; a file the leaves it reads ahead, and each piece from before
//! it is handed to hyper until the next is asked for; a CAR each block likewise. A request
//! past the caps is a 503 with `Retry-After`, and a body whose client reads nothing waits
//! for room rather than growing, until the listener cuts the client ([`crate::listener`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_core::block::Block;
use cairn_core::cid::{self, Cid, Codec};
use cairn_core::source::{Context, Local};
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Range, pb::Node};
use cairn_p2p::budget::{self, Budget, Permit};
use futures::StreamExt;

use crate::listener::Client;
use crate::store::Disk;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
/// The empty identity CID used as a trustless-gateway probe.
pub const PROBE: &str = "bafkqaaa";
/// Most blocks a CAR response walks before it refuses (a bound on work per request).
const MAX_CAR_BLOCKS: usize = 1 << 20;
/// Leaves a file response reads ahead.
const FILE_WINDOW: usize = 2;

/// The gateway's state: the store, if the relay has one, and the answer budget.
#[derive(Debug, Clone)]
pub struct Gateway {
    store: Option<Disk>,
    budget: Budget,
}

impl Gateway {
    /// A gateway over `store` (`None`: every content request is a 404 that says why), whose
    /// responses hold their bytes in `budget`.
    pub fn new(store: Option<Disk>, budget: Budget) -> Self {
        Self { store, budget }
    }

    /// Whether it serves a store.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
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

/// The 503 for a request the budget has no room for.
fn no_room(budget: &Budget, client: &Client) -> Response {
    let held = budget.used_by(client.0.ip());
    let msg = if held > budget.caps().per_asker / 2 {
        format!(
            "{held} bytes of responses to {} are not read yet; read them before asking for more",
            client.0.ip()
        )
    } else {
        "this relay holds as many bytes of responses as it allows; retry later".to_owned()
    };
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// `stream`, holding `permit` until it ends or is dropped.
fn holding<S: futures::Stream + Send + 'static>(
    stream: S,
    permit: Permit,
) -> impl futures::Stream<Item = S::Item> + Send {
    stream.map(move |item| {
        let _held = &permit;
        item
    })
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<Client>,
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
    let ip = client.0.ip();
    match fmt {
        Format::Raw => {
            // Exactly the block's size, known from the store's index before it is read.
            let Some(len) = store.size_of(&cid).await else {
                return text(StatusCode::NOT_FOUND, format!("{cid} is not held here"));
            };
            let want = if head { 1 } else { len as usize };
            let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, want, want) else {
                return no_room(&gw.budget, &client);
            };
            let root = match get_root(&store, &cid).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let body = if head {
                Body::empty()
            } else {
                let data = root.data().clone();
                Body::from_stream(holding(
                    futures::stream::once(async move { Ok::<_, std::io::Error>(data) }),
                    permit,
                ))
            };
            let mut resp = Response::new(body);
            if let Ok(v) = HeaderValue::from_str(&root.len().to_string()) {
                resp.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            immutable(resp, &cid_text, ".raw", RAW)
        }
        Format::Car => {
            // The walk reads one block at a time, each reserved as it goes out.
            let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, 1, 1) else {
                return no_room(&gw.budget, &client);
            };
            let root = match get_root(&store, &cid).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match check_dag(&store, &root).await {
                Ok(()) => {
                    let body = if head {
                        Body::empty()
                    } else {
                        let pieces = car_stream(store, cid);
                        Body::from_stream(reserving(pieces, gw.budget.clone(), ip, permit))
                    };
                    immutable(
                        Response::new(body),
                        &cid_text,
                        ".car",
                        &format!("{CAR}; version=1"),
                    )
                }
                Err(resp) => resp,
            }
        }
        Format::File => {
            // The leaves read ahead (typically 256 KiB each), then each piece as it goes out.
            let ahead = FILE_WINDOW * 256 * 1024;
            let want = if head { 1 } else { ahead };
            let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, want, want) else {
                return no_room(&gw.budget, &client);
            };
            let src = Local(store);
            let size = match unixfs::file_size(&src, &cid, &Context::new()).await {
                Ok(s) => s,
                Err(cairn_core::unixfs::ExportError::Retrieve { .. }) => {
                    return text(StatusCode::NOT_FOUND, format!("{cid} is not held here"));
                }
                Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            };
            let mut resp = if head {
                Response::new(Body::empty())
            } else {
                let pieces = file_body(src, cid);
                Response::new(Body::from_stream(reserving(
                    pieces,
                    gw.budget.clone(),
                    ip,
                    permit,
                )))
            };
            if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
                resp.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            immutable(resp, &cid_text, "", "application/octet-stream")
        }
    }
}

/// The block `cid`, or the response saying why not.
async fn get_root(store: &Disk, cid: &Cid) -> Result<Block, Response> {
    match store.get(cid).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) | Err(cairn_core::store::Error::Corrupt { .. }) => Err(text(
            StatusCode::NOT_FOUND,
            format!("{cid} is not held here"),
        )),
        Err(e) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `pieces`, each holding its bytes in `budget` from before it is handed on until the next
/// one is asked for (by then hyper has taken it); `base` is held throughout. A client that
/// reads nothing makes the next reservation wait (the listener cuts it after the stall
/// timeout), so it holds no more than its share.
fn reserving<S>(
    pieces: S,
    budget: Budget,
    ip: std::net::IpAddr,
    base: Permit,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let state = (Box::pin(pieces), None::<Permit>, base);
    futures::stream::unfold(state, move |(mut pieces, last, base)| {
        let budget = budget.clone();
        async move {
            drop(last);
            let piece = pieces.next().await?;
            let held = match &piece {
                Ok(b) => Some(budget.reserve(ip, budget::HTTP, b.len()).await),
                Err(_) => None,
            };
            Some((piece, (pieces, held, base)))
        }
    })
}

/// The file's bytes as a body stream (it owns its source and context).
fn file_body(
    src: Local<Disk>,
    cid: Cid,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    // One piece waits in the channel (a sender's slot) while hyper writes another.
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(0);
    tokio::spawn(async move {
        let ctx = Context::new();
        let mut tx = tx;
        let mut s = std::pin::pin!(unixfs::export(&src, cid, Range::ALL, FILE_WINDOW, &ctx));
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

/// Checks that the whole DAG under `root` is held (and not over [`MAX_CAR_BLOCKS`]) before
/// a CAR response starts, so a missing block is a clean 404 rather than a cut-off body.
/// It keeps only the walk's stack, not the DAG's CIDs.
async fn check_dag(store: &Disk, root: &Block) -> Result<(), Response> {
    let mut walk = Walk::new(root);
    let mut seen = 0;
    loop {
        match walk.next(store, false).await {
            Ok(Some(_)) => {
                seen += 1;
                if seen > MAX_CAR_BLOCKS {
                    return Err(text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the DAG has more than {MAX_CAR_BLOCKS} blocks"),
                    ));
                }
            }
            Ok(None) => return Ok(()),
            Err(Missing::Block(c)) => {
                return Err(text(
                    StatusCode::NOT_FOUND,
                    format!("the DAG is incomplete here: {c} is missing"),
                ));
            }
            Err(Missing::Malformed(c, e)) => {
                return Err(text(StatusCode::UNPROCESSABLE_ENTITY, format!("{c}: {e}")));
            }
            Err(Missing::Store(e)) => {
                return Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
            }
        }
    }
}

/// Why a walk stopped.
#[derive(Debug)]
enum Missing {
    Block(Cid),
    Malformed(Cid, cairn_core::protobuf::DecodeError),
    Store(cairn_core::store::Error),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Block(c) => write!(f, "{c} vanished while streaming"),
            Missing::Malformed(c, e) => write!(f, "{c}: {e}"),
            Missing::Store(e) => write!(f, "{e}"),
        }
    }
}

/// A depth-first walk of a DAG in link order, root first.
struct Walk {
    stack: Vec<Cid>,
}

impl Walk {
    fn new(root: &Block) -> Self {
        Self {
            stack: vec![*root.cid()],
        }
    }

    /// The next CID of the DAG, with its block if `blocks` (dag-pb blocks are read anyway,
    /// for their links; raw leaves only if asked for).
    async fn next(
        &mut self,
        store: &Disk,
        blocks: bool,
    ) -> Result<Option<(Cid, Option<Block>)>, Missing> {
        let Some(c) = self.stack.pop() else {
            return Ok(None);
        };
        if c.codec() == Codec::DagPb.code() || blocks {
            let b = store
                .get(&c)
                .await
                .map_err(Missing::Store)?
                .ok_or(Missing::Block(c))?;
            if c.codec() == Codec::DagPb.code() {
                let node = Node::decode(b.data()).map_err(|e| Missing::Malformed(c, e))?;
                self.stack.extend(node.links.iter().rev().map(|l| l.cid));
            }
            Ok(Some((c, blocks.then_some(b))))
        } else if store.has(&c).await.map_err(Missing::Store)? {
            Ok(Some((c, None)))
        } else {
            Err(Missing::Block(c))
        }
    }
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
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let header = futures::stream::once(async move { Ok(Bytes::from(car_header(&root))) });
    let first = Walk { stack: vec![root] };
    let sections = futures::stream::unfold(Some(first), move |walk| {
        let store = store.clone();
        async move {
            let mut walk = walk?;
            match walk.next(&store, true).await {
                Ok(Some((c, Some(b)))) => {
                    let cid = c.to_bytes();
                    let mut out = Vec::with_capacity(cid.len() + b.len() + 10);
                    cairn_core::varint::put(&mut out, (cid.len() + b.len()) as u64);
                    out.extend_from_slice(&cid);
                    out.extend_from_slice(b.data());
                    Some((Ok(Bytes::from(out)), Some(walk)))
                }
                Ok(Some((_, None)) | None) => None,
                // The body ends with an error: the client sees a cut-off CAR, never a
                // wrong one.
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    header.chain(sections)
}
