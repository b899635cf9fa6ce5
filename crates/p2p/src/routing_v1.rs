//! Delegated Routing V1 HTTP API, providers only: `GET {base}/routing/v1/providers/{cid}`.
//!
//! The client asks for NDJSON or JSON (`Accept: application/x-ndjson, application/json`)
//! and reads either, whichever the server chose: a JSON object `{"Providers": [...]}` or one
//! record per line. Each record is `{"Schema": "peer", "ID": "<peer id>", "Addrs": [...],
//! "Protocols": [...]}` (the older `"Schema": "bitswap"` records carry the same fields).
//! `404` means no provider. Unknown fields and schemas are ignored, and so are records whose
//! peer id or addresses do not parse; at most [`MAX_PROVIDERS`] records and [`MAX_BODY`]
//! bytes are read. The same module writes both forms for cairn-relay's endpoint.

use cairn_core::cid::Cid;
use cairn_core::source::{HttpClient, HttpError};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Most provider records read from one answer.
pub const MAX_PROVIDERS: usize = 100;
/// Largest answer read.
pub const MAX_BODY: usize = 1024 * 1024;
/// What the client asks for.
pub const ACCEPT: &str = "application/x-ndjson, application/json";
/// The NDJSON media type.
pub const NDJSON: &str = "application/x-ndjson";

/// A provider record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The provider.
    pub peer: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// The transfer protocols it offers (`transport-bitswap`, ...); may be empty.
    pub protocols: Vec<String>,
}

/// Why a lookup failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The request failed.
    #[error("{0}")]
    Http(#[from] HttpError),
    /// The server answered with an error status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The answer is neither JSON nor NDJSON provider records.
    #[error("answered something that is not provider records: {0}")]
    Malformed(String),
}

#[derive(Deserialize, Serialize)]
struct Record {
    #[serde(rename = "Schema")]
    schema: String,
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "Addrs", default, skip_serializing_if = "Option::is_none")]
    addrs: Option<Vec<String>>,
    #[serde(rename = "Protocols", default, skip_serializing_if = "Option::is_none")]
    protocols: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Answer {
    #[serde(rename = "Providers")]
    providers: Vec<serde_json::Value>,
}

fn provider(v: serde_json::Value) -> Option<Provider> {
    let r: Record = serde_json::from_value(v).ok()?;
    if r.schema != "peer" && r.schema != "bitswap" {
        return None;
    }
    let peer = r.id?.parse().ok()?;
    let addrs = r
        .addrs
        .unwrap_or_default()
        .iter()
        .take(32)
        .filter_map(|a| a.parse().ok())
        .collect();
    Some(Provider {
        peer,
        addrs,
        protocols: r.protocols.unwrap_or_default(),
    })
}

/// Reads a JSON or NDJSON answer.
pub fn parse(body: &[u8]) -> Result<Vec<Provider>, Error> {
    let text = std::str::from_utf8(body).map_err(|_| Error::Malformed("not UTF-8".into()))?;
    // JSON: one object with a `Providers` array (null when empty). Anything else that is
    // one JSON value must be a single NDJSON record.
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(mut o)) if o.contains_key("Providers") => {
            return match o.remove("Providers") {
                Some(serde_json::Value::Array(items)) => Ok(items
                    .into_iter()
                    .take(MAX_PROVIDERS)
                    .filter_map(provider)
                    .collect()),
                Some(serde_json::Value::Null) | None => Ok(Vec::new()),
                Some(_) => Err(Error::Malformed("`Providers` is not an array".into())),
            };
        }
        Ok(serde_json::Value::Object(o)) => {
            return Ok(provider(serde_json::Value::Object(o)).into_iter().collect());
        }
        Ok(_) => return Err(Error::Malformed("not a JSON object".into())),
        Err(_) => {}
    }
    // NDJSON: one record per line; every non-empty line must be a JSON object.
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Malformed(format!("line {}: {e}", n + 1)))?;
        if !v.is_object() {
            return Err(Error::Malformed(format!(
                "line {}: not a JSON object",
                n + 1
            )));
        }
        if out.len() < MAX_PROVIDERS
            && let Some(p) = provider(v)
        {
            out.push(p);
        }
    }
    Ok(out)
}

fn record(p: &Provider) -> Record {
    Record {
        schema: "peer".into(),
        id: Some(p.peer.to_string()),
        addrs: Some(p.addrs.iter().map(|a| a.to_string()).collect()),
        protocols: Some(p.protocols.clone()),
    }
}

/// The JSON form of an answer.
pub fn to_json(providers: &[Provider]) -> String {
    let records: Vec<serde_json::Value> = providers
        .iter()
        .filter_map(|p| serde_json::to_value(record(p)).ok())
        .collect();
    serde_json::to_string(&Answer { providers: records }).unwrap_or_default()
}

/// The NDJSON form of an answer.
pub fn to_ndjson(providers: &[Provider]) -> String {
    let mut out = String::new();
    for p in providers {
        if let Ok(line) = serde_json::to_string(&record(p)) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A delegated routing endpoint.
#[derive(Debug, Clone)]
pub struct Client<H> {
    http: H,
    base: String,
}

impl<H> Client<H> {
    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl<H: HttpClient> Client<H> {
    /// The endpoint at `base` (for example `https://delegated-ipfs.dev`; a trailing
    /// `/routing/v1` is accepted too).
    pub fn new(http: H, base: &str) -> Self {
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/routing/v1").unwrap_or(base);
        Self {
            http,
            base: base.to_owned(),
        }
    }

    /// The providers of `cid` the endpoint knows (none on `404`). Not bounded in time here:
    /// the caller bounds it.
    pub async fn providers(&self, cid: &Cid) -> Result<Vec<Provider>, Error> {
        let url = format!("{}/routing/v1/providers/{cid}", self.base);
        let resp = self.http.get(&url, ACCEPT, MAX_BODY).await?;
        match resp.status {
            200 => parse(&resp.body),
            404 => Ok(Vec::new()),
            s => Err(Error::Status(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    #[test]
    fn reads_json_and_ndjson_and_ignores_what_it_does_not_know() {
        let json = format!(
            r#"{{"Providers":[{{"Schema":"peer","ID":"{PEER}","Addrs":["/ip4/127.0.0.1/tcp/4001","not an addr"],"Protocols":["transport-bitswap"],"Extra":1}},{{"Schema":"unknown-schema","ID":"x"}},{{"Schema":"peer","ID":"not a peer"}}],"Other":true}}"#
        );
        let p = parse(json.as_bytes()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].peer.to_string(), PEER);
        assert_eq!(p[0].addrs.len(), 1);
        assert_eq!(p[0].protocols, ["transport-bitswap"]);

        let nd = format!(
            "{{\"Schema\":\"peer\",\"ID\":\"{PEER}\",\"Addrs\":[]}}\n\n{{\"Schema\":\"bitswap\",\"ID\":\"{PEER}\",\"Protocol\":\"transport-bitswap\"}}\n"
        );
        assert_eq!(parse(nd.as_bytes()).unwrap().len(), 2);
        assert_eq!(parse(br#"{"Providers":null}"#).unwrap(), vec![]);
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_answer() {
        for bad in [
            &b"<html>oops</html>"[..],
            b"[1,2,3]",
            b"{\"a\":1}\n42\n",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_are_bounded() {
        let line = format!("{{\"Schema\":\"peer\",\"ID\":\"{PEER}\"}}\n");
        let many = line.repeat(MAX_PROVIDERS * 3);
        assert_eq!(parse(many.as_bytes()).unwrap().len(), MAX_PROVIDERS);
    }

    #[test]
    fn what_the_server_writes_the_client_reads() {
        let p = vec![Provider {
            peer: PEER.parse().unwrap(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1/ws".parse().unwrap()],
            protocols: vec!["transport-bitswap".into()],
        }];
        assert_eq!(parse(to_json(&p).as_bytes()).unwrap(), p);
        assert_eq!(parse(to_ndjson(&p).as_bytes()).unwrap(), p);
    }
}
