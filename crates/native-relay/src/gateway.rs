//! The relay's HTTP gateway over its store: `GET`/`HEAD /ipfs/{cid}[/{path}]`.
//!
//! - A path is resolved through directories (plain and HAMT-sharded), reading only the
//!   blocks on it; `..`, NUL and names with `/` are a 400, a missing name a 404.
//! - `?format=raw` or `Accept: application/vnd.ipld.raw`: the (resolved) block itself.
//! - `?format=car` or `Accept: application/vnd.ipld.car`: a CARv1 rooted at the URL's CID:
//!   the blocks on the path, then, by `dag-scope`, the whole DAG under the target (`all`,
//!   the default), the target alone (`block`), or the target as an entity (`entity`: a
//!   file's blocks, only those of `entity-bytes=FROM:TO` when given; a directory's own
//!   blocks, every shard of a HAMT), depth-first in link order, streamed.
//! - neither: a file's bytes, with `Content-Type` from its name (or `?filename=`) and, when
//!   that says nothing, from its first bytes; `Range: bytes=…` is answered with 206 (one
//!   range; a malformed one or one past the end is a 416 that says why); `?filename=` and
//!   `?download=true` set `Content-Disposition`. A directory redirects to its URL with a
//!   trailing `/`, then serves its `index.html` if it has one, or an HTML listing (names,
//!   sizes, links; the first 10,000 entries).
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
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_core::block::Block;
use cairn_core::cid::{self, Cid, Codec};
use cairn_core::source::{ContentSource, Context, Local, SourceError, SourceKind};
use cairn_core::store::BlockStore;
use cairn_core::unixfs::{self, Range, dir, pb::Node};
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
            .route("/ipfs/{cid}/", axum::routing::get(handle).head(handle))
            .route(
                "/ipfs/{cid}/{*path}",
                axum::routing::get(handle).head(handle),
            )
            .with_state(Arc::new(self))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Raw,
    Car,
    File,
}

/// The query parameters the gateway reads (others are ignored).
#[derive(Debug, Default)]
struct Query {
    format: Option<String>,
    filename: Option<String>,
    download: bool,
    dag_scope: Option<String>,
    entity_bytes: Option<String>,
}

fn decode_component(v: &str) -> Option<String> {
    let v = v.replace('+', " ");
    percent_encoding::percent_decode_str(&v)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query::default();
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = decode_component(v).ok_or_else(|| format!("query parameter `{k}` is not UTF-8"))?;
        match k {
            "format" => q.format = Some(v),
            "filename" => q.filename = Some(v),
            "download" => q.download = v == "true",
            "dag-scope" => q.dag_scope = Some(v),
            "entity-bytes" => q.entity_bytes = Some(v),
            _ => {}
        }
    }
    Ok(q)
}

fn format(from_query: Option<&str>, headers: &HeaderMap) -> Result<Format, String> {
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

/// The CID and the decoded path of a `/ipfs/…` URL path, and whether it ends in `/`.
fn split_url(path: &str) -> Result<(String, String, bool), String> {
    let (cid, tail) = dir::split_target(path);
    let mut names = Vec::new();
    for seg in tail.split('/').filter(|s| !s.is_empty()) {
        let name = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| format!("path segment `{seg}` is not UTF-8"))?;
        dir::check_name(&name).map_err(|e| e.to_string())?;
        names.push(name.into_owned());
    }
    Ok((cid.to_owned(), names.join("/"), path.ends_with('/')))
}

/// The response for a path that could not be followed.
fn read_error(e: &dir::ReadError) -> Response {
    let status = match e {
        dir::ReadError::Retrieve { .. } | dir::ReadError::NotFound { .. } => StatusCode::NOT_FOUND,
        dir::ReadError::NotADirectory { .. } => StatusCode::NOT_FOUND,
        dir::ReadError::Path(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let msg = match e {
        dir::ReadError::Retrieve { cid, .. } => format!("{cid} is not held here"),
        other => other.to_string(),
    };
    text(status, msg)
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<Client>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let q = match parse_query(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let fmt = match format(q.format.as_deref(), &headers) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (cid_text, path, slash) = match split_url(uri.path()) {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let head = method == Method::HEAD;
    if cid_text == PROBE && path.is_empty() {
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
    let ctx = Context::new();
    // The blocks on the path, in the order they were read (a CAR sends them first).
    let on_path = Recording::new(Local(store.clone()));
    let target = match dir::resolve(&on_path, &ctx, cid, &path).await {
        Ok(t) => t,
        Err(e) => return read_error(&e),
    };
    let target_text = target.to_string();
    match fmt {
        Format::Raw => {
            // Exactly the block's size, known from the store's index before it is read.
            let Some(len) = store.size_of(&target).await else {
                return text(StatusCode::NOT_FOUND, format!("{target} is not held here"));
            };
            let want = if head { 1 } else { len as usize };
            let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, want, want) else {
                return no_room(&gw.budget, &client);
            };
            let root = match get_root(&store, &target).await {
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
            immutable(resp, &target_text, ".raw", RAW)
        }
        Format::Car => {
            let scope = match Scope::parse(q.dag_scope.as_deref(), q.entity_bytes.as_deref()) {
                Ok(s) => s,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            // The walk reads one block at a time, each reserved as it goes out.
            let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, 1, 1) else {
                return no_room(&gw.budget, &client);
            };
            let root = match get_root(&store, &target).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let plan = match plan_car(&store, on_path.take(), &root, scope).await {
                Ok(p) => p,
                Err(resp) => return resp,
            };
            let body = if head {
                Body::empty()
            } else {
                let pieces = car_stream(store, cid, plan);
                Body::from_stream(reserving(pieces, gw.budget.clone(), ip, permit))
            };
            let etag = format!(".{}.car", q.dag_scope.as_deref().unwrap_or("all"));
            immutable(
                Response::new(body),
                &format!(
                    "{cid_text}/{path}{}",
                    q.entity_bytes.as_deref().unwrap_or("")
                ),
                &etag,
                &format!("{CAR}; version=1"),
            )
        }
        Format::File => {
            let src = Local(store.clone());
            let kind = match dir::kind(&src, &ctx, target).await {
                Ok(k) => k,
                Err(e) => return read_error(&e),
            };
            let name = path.rsplit('/').next().filter(|n| !n.is_empty());
            match kind {
                dir::Kind::Directory => {
                    if !slash {
                        // Relative links in the listing and the index resolve under it.
                        let mut to = format!("{}/", uri.path());
                        if let Some(q) = &query {
                            to.push('?');
                            to.push_str(q);
                        }
                        let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
                        if let Ok(v) = HeaderValue::from_str(&to) {
                            resp.headers_mut().insert(header::LOCATION, v);
                        }
                        return resp;
                    }
                    if let Ok(index) = dir::resolve(&src, &ctx, target, "index.html").await
                        && matches!(dir::kind(&src, &ctx, index).await, Ok(dir::Kind::File))
                    {
                        let file = FileRequest {
                            cid: index,
                            name: Some("index.html"),
                            q: &q,
                            headers: &headers,
                            head,
                        };
                        return serve_file(&gw, &client, store, file).await;
                    }
                    listing(
                        &gw,
                        &client,
                        &src,
                        &ctx,
                        target,
                        &format!("/ipfs/{cid_text}/{path}"),
                        head,
                    )
                    .await
                }
                dir::Kind::File => {
                    let file = FileRequest {
                        cid: target,
                        name,
                        q: &q,
                        headers: &headers,
                        head,
                    };
                    serve_file(&gw, &client, store, file).await
                }
                other => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "{target} is a {other:?} node: the gateway serves files and directories"
                    ),
                ),
            }
        }
    }
}

/// A file to answer with.
struct FileRequest<'a> {
    cid: Cid,
    name: Option<&'a str>,
    q: &'a Query,
    headers: &'a HeaderMap,
    head: bool,
}

/// The first bytes' type, for a file whose name says nothing.
fn sniff(b: &[u8]) -> &'static str {
    let starts = |p: &[u8]| b.starts_with(p);
    let lower: Vec<u8> = b.iter().take(64).map(u8::to_ascii_lowercase).collect();
    let trimmed: &[u8] = {
        let start = lower
            .iter()
            .position(|c| !c.is_ascii_whitespace())
            .unwrap_or(lower.len());
        &lower[start..]
    };
    if starts(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if starts(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "image/gif"
    } else if starts(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        "image/webp"
    } else if b.get(4..8) == Some(b"ftyp") {
        "video/mp4"
    } else if starts(&[0x1a, 0x45, 0xdf, 0xa3]) {
        "video/webm"
    } else if starts(b"OggS") {
        "audio/ogg"
    } else if starts(b"ID3") {
        "audio/mpeg"
    } else if starts(b"%PDF-") {
        "application/pdf"
    } else if starts(b"PK\x03\x04") {
        "application/zip"
    } else if starts(&[0x1f, 0x8b]) {
        "application/gzip"
    } else if trimmed.starts_with(b"<!doctype html") || trimmed.starts_with(b"<html") {
        "text/html; charset=utf-8"
    } else if trimmed.starts_with(b"<svg") {
        "image/svg+xml"
    } else if std::str::from_utf8(b)
        .is_ok_and(|t| !t.chars().any(|c| c.is_control() && !c.is_whitespace()))
        || b.len() >= 509 && std::str::from_utf8(&b[..b.len() - 3]).is_ok()
    {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// A single byte range of a `size`-byte file, as `(first, last)` inclusive; `Ok(None)` for
/// several ranges (answered whole, as RFC 9110 allows).
fn parse_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, String> {
    let malformed = || {
        format!("malformed Range header `{v}`: use bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX")
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(malformed)?;
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().map_err(|_| malformed());
    let beyond = |first: u64| {
        format!("range `{v}` starts at byte {first}, past the end of this {size}-byte file")
    };
    if a.is_empty() {
        let n = num(b)?;
        if n == 0 || size == 0 {
            return Err(format!(
                "range `{v}` asks for no bytes of this {size}-byte file"
            ));
        }
        return Ok(Some((size - n.min(size), size - 1)));
    }
    let first = num(a)?;
    if first >= size {
        return Err(beyond(first));
    }
    let last = if b.is_empty() { size - 1 } else { num(b)? };
    if last < first {
        return Err(malformed());
    }
    Ok(Some((first, last.min(size - 1))))
}

/// `inline` or `attachment`, with the name in both the plain and the UTF-8 form.
fn disposition(kind: &str, name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let utf8 = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename=\"{plain}\"; filename*=UTF-8''{utf8}")
}

async fn serve_file(gw: &Gateway, client: &Client, store: Disk, f: FileRequest<'_>) -> Response {
    let ip = client.0.ip();
    let ctx = Context::new();
    let src = Local(store);
    let size = match unixfs::file_size(&src, &f.cid, &ctx).await {
        Ok(s) => s,
        Err(cairn_core::unixfs::ExportError::Retrieve { .. }) => {
            return text(StatusCode::NOT_FOUND, format!("{} is not held here", f.cid));
        }
        Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let named = f.q.filename.as_deref().or(f.name);
    let by_name = named
        .and_then(|n| mime_guess::from_path(n).first_raw())
        .map(|m| {
            if m.starts_with("text/") {
                format!("{m}; charset=utf-8")
            } else {
                m.to_owned()
            }
        });
    let content_type = match by_name {
        Some(t) => t,
        None => {
            // The first bytes (one leaf at most) say what it is.
            let first = unixfs::Range {
                offset: 0,
                length: Some(size.min(512)),
            };
            let mut head_bytes = Vec::new();
            let mut s = std::pin::pin!(unixfs::export(&src, f.cid, first, 1, &ctx));
            while let Some(Ok(p)) = s.next().await {
                head_bytes.extend_from_slice(&p);
            }
            sniff(&head_bytes).to_owned()
        }
    };
    let range = match f
        .headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => None,
        Some(v) => match parse_range(v, size) {
            Ok(r) => r,
            Err(msg) => {
                let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, msg);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
    };
    let (want, len) = match range {
        Some((a, b)) => (
            unixfs::Range {
                offset: a,
                length: Some(b - a + 1),
            },
            b - a + 1,
        ),
        None => (unixfs::Range::ALL, size),
    };
    // The leaves read ahead (typically 256 KiB each), then each piece as it goes out.
    let ahead = FILE_WINDOW * 256 * 1024;
    let reserve = if f.head { 1 } else { ahead };
    let Some(permit) = gw.budget.try_reserve(ip, budget::HTTP, reserve, reserve) else {
        return no_room(&gw.budget, client);
    };
    let mut resp = if f.head {
        Response::new(Body::empty())
    } else {
        let pieces = file_body(src, f.cid, want);
        Response::new(Body::from_stream(reserving(
            pieces,
            gw.budget.clone(),
            ip,
            permit,
        )))
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((a, b)) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    if f.q.download || f.q.filename.is_some() {
        let kind = if f.q.download { "attachment" } else { "inline" };
        let cid_name = f.cid.to_string();
        let name = named.unwrap_or(&cid_name);
        if let Ok(v) = HeaderValue::from_str(&disposition(kind, name)) {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    immutable(resp, &f.cid.to_string(), "", &content_type)
}

/// Most entries a directory listing shows.
const MAX_LISTED: usize = 10_000;

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An HTML listing of the directory `cid` (at `url`, which ends in `/`).
async fn listing(
    gw: &Gateway,
    client: &Client,
    src: &Local<Disk>,
    ctx: &Context,
    cid: Cid,
    url: &str,
    head: bool,
) -> Response {
    let mut shown = Vec::new();
    let mut total = 0usize;
    if let Err(e) = dir::ls(src, ctx, cid, |e| {
        total += 1;
        if shown.len() < MAX_LISTED {
            shown.push(e);
        }
        std::ops::ControlFlow::Continue(())
    })
    .await
    {
        return read_error(&e);
    }
    let title = escape_html(url);
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2em}}td{{padding:.2em 1em .2em 0}}td.size{{text-align:right}}code{{color:#666}}</style></head>\n<body><h1>Index of {title}</h1>\n<p><code>{cid}</code> · {total} entr{}</p>\n<table>\n<tr><td><a href=\"../\">..</a></td><td></td><td></td></tr>\n",
        if total == 1 { "y" } else { "ies" }
    );
    for e in &shown {
        let is_dir = e.cid.codec() == Codec::DagPb.code()
            && matches!(dir::kind(src, ctx, e.cid).await, Ok(dir::Kind::Directory));
        let href =
            percent_encoding::utf8_percent_encode(&e.name, percent_encoding::NON_ALPHANUMERIC);
        let slash = if is_dir { "/" } else { "" };
        let size = e.tsize.map(human).unwrap_or_default();
        html.push_str(&format!(
            "<tr><td><a href=\"./{href}{slash}\">{}{slash}</a></td><td class=\"size\">{size}</td><td><a href=\"/ipfs/{c}\"><code>{c}</code></a></td></tr>\n",
            escape_html(&e.name),
            c = e.cid
        ));
    }
    html.push_str("</table>\n");
    if total > shown.len() {
        html.push_str(&format!(
            "<p>The first {} of {total} entries are shown.</p>\n",
            shown.len()
        ));
    }
    html.push_str("</body></html>\n");
    let len = html.len();
    let want = if head { 1 } else { len };
    let Some(permit) = gw
        .budget
        .try_reserve(client.0.ip(), budget::HTTP, want, want)
    else {
        return no_room(&gw.budget, client);
    };
    let body = if head {
        Body::empty()
    } else {
        let bytes = Bytes::from(html);
        Body::from_stream(holding(
            futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) }),
            permit,
        ))
    };
    let mut resp = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        resp.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    immutable(
        resp,
        &format!("DirIndex-{cid}"),
        "",
        "text/html; charset=utf-8",
    )
}

/// A source over the store that remembers which blocks were read, in order.
struct Recording {
    inner: Local<Disk>,
    read: std::sync::Mutex<Vec<Cid>>,
}

impl Recording {
    fn new(inner: Local<Disk>) -> Self {
        Self {
            inner,
            read: std::sync::Mutex::default(),
        }
    }

    fn take(&self) -> Vec<Cid> {
        std::mem::take(
            &mut *self
                .read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ContentSource for Recording {
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }

    async fn retrieve(&self, cid: &Cid, ctx: &Context) -> Result<Block, SourceError> {
        let b = self.inner.retrieve(cid, ctx).await?;
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read.last() != Some(cid) {
            read.push(*cid);
        }
        Ok(b)
    }
}

/// What a CAR carries of its target (`dag-scope`, and `entity-bytes` with `entity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Entity(Option<(i64, Option<i64>)>),
    Block,
}

impl Scope {
    fn parse(scope: Option<&str>, bytes: Option<&str>) -> Result<Self, String> {
        let range = match bytes {
            None => None,
            Some(b) => {
                let bad = || {
                    format!(
                        "entity-bytes `{b}` is not FROM:TO (integers, negative from the end, TO may be *)"
                    )
                };
                let (from, to) = b.split_once(':').ok_or_else(bad)?;
                let from: i64 = from.parse().map_err(|_| bad())?;
                let to = if to == "*" {
                    None
                } else {
                    Some(to.parse::<i64>().map_err(|_| bad())?)
                };
                Some((from, to))
            }
        };
        match (scope.unwrap_or("all"), range) {
            ("all", None) => Ok(Scope::All),
            ("block", None) => Ok(Scope::Block),
            ("entity", r) => Ok(Scope::Entity(r)),
            ("all" | "block", Some(_)) => Err("entity-bytes needs dag-scope=entity".into()),
            (other, _) => Err(format!(
                "dag-scope `{other}` is not one of all, entity, block"
            )),
        }
    }
}

/// The blocks of a CAR: those on the path, then the target's as its scope says.
struct CarPlan {
    listed: Vec<Cid>,
    /// Then the whole DAG under this CID, walked as it streams.
    walk: Option<Cid>,
}

/// Plans a CAR of `target` (reached through the blocks `path`), checking that every block
/// it will carry is held, so that a missing one is a clean 404 rather than a cut-off body.
async fn plan_car(
    store: &Disk,
    path: Vec<Cid>,
    target: &Block,
    scope: Scope,
) -> Result<CarPlan, Response> {
    let t = *target.cid();
    let mut listed = path;
    listed.retain(|c| *c != t);
    let ctx = Context::new();
    let whole = |listed| async move {
        check_dag(store, target).await?;
        Ok(CarPlan {
            listed,
            walk: Some(t),
        })
    };
    match scope {
        Scope::All => whole(listed).await,
        Scope::Block => {
            listed.push(t);
            Ok(CarPlan { listed, walk: None })
        }
        Scope::Entity(range) => {
            let src = Recording::new(Local(store.clone()));
            match dir::kind(&src, &ctx, t).await {
                Ok(dir::Kind::Directory) => {
                    // The directory's own blocks: every shard of a HAMT, not its entries.
                    if let Err(e) =
                        dir::ls(&src, &ctx, t, |_| std::ops::ControlFlow::Continue(())).await
                    {
                        return Err(read_error(&e));
                    }
                    listed.extend(src.take());
                    dedup_keep_order(&mut listed);
                    Ok(CarPlan { listed, walk: None })
                }
                Ok(dir::Kind::File) => {
                    let Some((from, to)) = range else {
                        return whole(listed).await;
                    };
                    let size = match unixfs::file_size(&src, &t, &ctx).await {
                        Ok(s) => s as i64,
                        Err(e) => {
                            return Err(text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
                        }
                    };
                    let at = |v: i64| {
                        if v < 0 {
                            (size + v).max(0)
                        } else {
                            v.min(size)
                        }
                    };
                    let first = at(from);
                    let end = to.map_or(size, |v| (at(v) + 1).min(size));
                    src.take();
                    listed.push(t);
                    if first < end {
                        let want = unixfs::Range {
                            offset: first as u64,
                            length: Some((end - first) as u64),
                        };
                        // One block at a time, so they are read in the walk's order.
                        let mut s = std::pin::pin!(unixfs::export(&src, t, want, 1, &ctx));
                        while let Some(piece) = s.next().await {
                            if let Err(e) = piece {
                                return Err(text(StatusCode::NOT_FOUND, e.to_string()));
                            }
                        }
                        listed.extend(src.take());
                        dedup_keep_order(&mut listed);
                    }
                    Ok(CarPlan { listed, walk: None })
                }
                Ok(_) => {
                    listed.push(t);
                    Ok(CarPlan { listed, walk: None })
                }
                Err(e) => Err(read_error(&e)),
            }
        }
    }
}

/// Drops repeated CIDs, keeping each one's first place.
fn dedup_keep_order(v: &mut Vec<Cid>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|c| seen.insert(*c));
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
    range: Range,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    // One piece waits in the channel (a sender's slot) while hyper writes another.
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(0);
    tokio::spawn(async move {
        let ctx = Context::new();
        let mut tx = tx;
        let mut s = std::pin::pin!(unixfs::export(&src, cid, range, FILE_WINDOW, &ctx));
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
    plan: CarPlan,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let header = futures::stream::once(async move { Ok(Bytes::from(car_header(&root))) });
    let section = |c: Cid, b: &Block| {
        let cid = c.to_bytes();
        let mut out = Vec::with_capacity(cid.len() + b.len() + 10);
        cairn_core::varint::put(&mut out, (cid.len() + b.len()) as u64);
        out.extend_from_slice(&cid);
        out.extend_from_slice(b.data());
        Bytes::from(out)
    };
    let listed_store = store.clone();
    let listed = futures::stream::iter(plan.listed).then(move |c| {
        let store = listed_store.clone();
        async move {
            match store.get(&c).await {
                Ok(Some(b)) => Ok(section(c, &b)),
                Ok(None) => Err(std::io::Error::other(format!(
                    "{c} vanished while streaming"
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        }
    });
    let first = plan.walk.map(|t| Walk { stack: vec![t] });
    let walked = futures::stream::unfold(first, move |walk| {
        let store = store.clone();
        async move {
            let mut walk = walk?;
            match walk.next(&store, true).await {
                Ok(Some((c, Some(b)))) => Some((Ok(section(c, &b)), Some(walk))),
                Ok(Some((_, None)) | None) => None,
                // The body ends with an error: the client sees a cut-off CAR, never a
                // wrong one.
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    header.chain(listed).chain(walked)
}
