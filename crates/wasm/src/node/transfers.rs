//! The transfer queue in the browser ([`cairn_core::transfer`]): `enqueue`, the calls that
//! steer a transfer, and its progress. The queue is kept in the IndexedDB store (while this
//! tab holds the store's identity), so a reload queues unfinished transfers again and each
//! fetches only what the store lacks. A finished transfer's root is pinned.

use cairn_core::cid::Cid;
use cairn_core::source::{Context, SourceKind};
use cairn_core::transfer::{self, Fetcher, Rate, Request, Sink, Throttle};
use cairn_core::{BoxFuture, dag};
use cairn_p2p::sources::Sources;
use futures::StreamExt;
use wasm_bindgen::prelude::*;

use super::store::{InUse, Store};
use super::{CairnNode, parse_cid};
use crate::error::{Coded, ErrorCode, invalid, js_error};
use crate::http::Fetch;
use crate::js::{self, Abort};
use crate::types::{EnqueueOptions, FetchProgress, Priority, TransferStatus, WatchOptions};

/// Fetches a transfer's DAG through the node's chain, keeps it from eviction meanwhile,
/// and pins it when complete.
pub(super) struct NodeFetcher {
    pub(super) node: cairn_p2p::Node,
    pub(super) store: Store,
    pub(super) sources: Sources,
    pub(super) in_use: InUse,
}

impl Fetcher for NodeFetcher {
    fn fetch<'a>(
        &'a self,
        root: Cid,
        sources: &'a [SourceKind],
        throttle: &'a Throttle,
        ctx: &'a Context,
        progress: Sink,
    ) -> BoxFuture<'a, Result<dag::Report, dag::Error>> {
        Box::pin(async move {
            let _using = self.in_use.hold(root);
            let chain = self
                .sources
                .chain(Some(&self.node), self.store.clone(), &Fetch, root);
            let chain = if sources.is_empty() {
                chain
            } else {
                chain.only(sources)
            };
            let report = dag::fetch_throttled(
                &chain,
                &self.store,
                root,
                dag::Options::default(),
                throttle,
                ctx,
                |p| progress.update(p),
            )
            .await?;
            self.store.set_pinned(&root, true).await?;
            Ok(report)
        })
    }
}

fn rate(what: &str, v: Option<f64>) -> Result<Option<Rate>, JsValue> {
    v.map(|v| Rate::from_f64(v).map_err(|e| invalid(format!("{what}: {e}"))))
        .transpose()
}

/// The transfer queue's settings from `CreateOptions.transfers`.
pub(super) fn config(
    o: Option<&crate::types::TransfersOptions>,
) -> Result<transfer::Config, JsValue> {
    let mut c = transfer::Config::default();
    if let Some(o) = o {
        match o.concurrency {
            Some(0) => return Err(invalid("options.transfers.concurrency must be at least 1")),
            Some(n) => c.concurrency = n as usize,
            None => {}
        }
        c.max_rate = rate("options.transfers.maxRate", o.max_rate)?;
    }
    Ok(c)
}

/// The cap on bytes served to peers from `CreateOptions.transfers.maxServeRate`.
pub(super) fn serve_rate(
    o: Option<&crate::types::TransfersOptions>,
) -> Result<Option<Rate>, JsValue> {
    rate(
        "options.transfers.maxServeRate",
        o.and_then(|o| o.max_serve_rate),
    )
}

/// A transfer's status as JavaScript sees it.
pub(super) fn status(s: &transfer::Status) -> TransferStatus {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    TransferStatus {
        id: s.id as u32,
        cid: s.request.root.to_string(),
        state: s.state.into(),
        priority: s.request.priority.into(),
        max_rate: s.request.max_rate.map(|r| r.bytes_per_sec() as f64),
        sources: s.request.sources.iter().map(|k| (*k).into()).collect(),
        deadline: s
            .request
            .deadline
            .map(|d| d.duration_since(cairn_core::rt::UNIX_EPOCH).map_or(0.0, ms)),
        progress: FetchProgress::from(&s.progress),
        speed: s.speed,
        eta_ms: s.eta.map(ms),
        attempts: s.attempts,
        error: s.error.clone(),
        code: s.failure.map(|f| f.code()),
        retry_in_ms: s.retry_in.map(ms),
    }
}

fn id_of(id: f64) -> Result<transfer::Id, JsValue> {
    if id.is_finite() && id >= 0.0 && id.fract() == 0.0 {
        Ok(id as transfer::Id)
    } else {
        Err(invalid(format!("{id} is not a transfer's number")))
    }
}

fn steer(e: transfer::Error) -> JsValue {
    let code = match e {
        transfer::Error::Unknown(_) => ErrorCode::NotFound,
        transfer::Error::Stopped => ErrorCode::Stopped,
        _ => ErrorCode::InvalidArgument,
    };
    js_error(code, e.to_string())
}

#[wasm_bindgen]
impl CairnNode {
    /// Queues a fetch of the DAG under `cid` into the store (see `EnqueueOptions`):
    /// transfers start by priority then in the order they came, `transfers.concurrency` at
    /// once, are retried with backoff when their sources fail, survive a reload, and pin
    /// their root when done. Resolves to the transfer's number; the same CID already
    /// queued gives the same number (at the higher of the two priorities).
    pub async fn enqueue(
        &self,
        cid: String,
        #[wasm_bindgen(unchecked_optional_param_type = "EnqueueOptions")] options: JsValue,
    ) -> Result<u32, JsValue> {
        let options: EnqueueOptions = js::options(options)?;
        let root = parse_cid(&cid)?;
        let mut request = Request::new(root)
            .priority(options.priority.unwrap_or(Priority::Normal).into())
            .max_rate(rate("options.maxRate", options.max_rate)?)
            .sources(
                options
                    .sources
                    .unwrap_or_default()
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            );
        if let Some(ttl) = options.ttl {
            if !(ttl.is_finite() && ttl >= 1.0) {
                return Err(invalid(format!(
                    "options.ttl is {ttl}: give a time to live of at least 1 ms"
                )));
            }
            request = request.ttl(std::time::Duration::from_secs_f64(ttl / 1000.0));
        }
        let id = self.inner.transfers.add(request).map_err(steer)?;
        Ok(id as u32)
    }

    /// Every transfer: those unfinished, and the last finished ones.
    #[wasm_bindgen(unchecked_return_type = "TransferStatus[]")]
    pub async fn transfers(&self) -> JsValue {
        let list: Vec<TransferStatus> = self.inner.transfers.list().iter().map(status).collect();
        js::to_js(&list)
    }

    /// Pauses a transfer (what it fetched stays in the store).
    #[wasm_bindgen(js_name = pauseTransfer)]
    pub async fn pause_transfer(&self, id: f64) -> Result<(), JsValue> {
        self.inner.transfers.pause(id_of(id)?).map_err(steer)
    }

    /// Queues a paused transfer again, or one that failed (its attempts counted anew).
    #[wasm_bindgen(js_name = resumeTransfer)]
    pub async fn resume_transfer(&self, id: f64) -> Result<(), JsValue> {
        self.inner.transfers.resume(id_of(id)?).map_err(steer)
    }

    /// Cancels a transfer (what it fetched stays in the store, unpinned).
    #[wasm_bindgen(js_name = cancelTransfer)]
    pub async fn cancel_transfer(&self, id: f64) -> Result<(), JsValue> {
        self.inner.transfers.cancel(id_of(id)?).map_err(steer)
    }

    /// Gives a transfer another priority.
    #[wasm_bindgen(js_name = setTransferPriority)]
    pub async fn set_transfer_priority(
        &self,
        id: f64,
        #[wasm_bindgen(unchecked_param_type = "Priority")] priority: JsValue,
    ) -> Result<(), JsValue> {
        let p: Priority = serde_wasm_bindgen::from_value(priority.clone()).map_err(|_| {
            invalid(format!(
                "{} is not a priority: use \"critical\", \"high\", \"normal\" or \"low\"",
                js::describe(&priority)
            ))
        })?;
        self.inner
            .transfers
            .set_priority(id_of(id)?, p.into())
            .map_err(steer)
    }

    /// Waits until transfer `id` has finished (done, failed or cancelled) and resolves to
    /// its last status; `options.onProgress` sees each change meanwhile.
    #[wasm_bindgen(js_name = waitTransfer, unchecked_return_type = "TransferStatus")]
    pub async fn wait_transfer(
        &self,
        id: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "WatchOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let options: WatchOptions = js::options(options)?;
        let id = id_of(id)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?;
        let abort = Abort::new(&options.signal, "waitTransfer")?;
        let transfers = self.inner.transfers.clone();
        abort
            .run("waitTransfer", async move {
                let mut updates = transfers.subscribe();
                loop {
                    let s = transfers.get(id).map_err(steer)?;
                    if s.state.finished() {
                        return Ok(js::to_js(&status(&s)));
                    }
                    match updates.next().await {
                        Some(u) if u.id == id => {
                            if let Some(f) = &on_progress {
                                let _ = f.call1(&JsValue::NULL, &js::to_js(&status(&u)));
                            }
                        }
                        Some(_) => {}
                        None => return Err(steer(transfer::Error::Stopped)),
                    }
                }
            })
            .await
    }

    /// Calls `options.onProgress` with every change of every transfer until
    /// `options.signal` fires (then rejects with an `AbortError`) or the node stops.
    #[wasm_bindgen(js_name = watchTransfers)]
    pub async fn watch_transfers(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "WatchOptions")] options: JsValue,
    ) -> Result<(), JsValue> {
        let options: WatchOptions = js::options(options)?;
        let on_progress = js::callback("onProgress", &options.on_progress)?
            .ok_or_else(|| invalid("watchTransfers needs options.onProgress"))?;
        let abort = Abort::new(&options.signal, "watchTransfers")?;
        let mut updates = self.inner.transfers.subscribe();
        abort
            .run("watchTransfers", async move {
                while let Some(u) = updates.next().await {
                    let _ = on_progress.call1(&JsValue::NULL, &js::to_js(&status(&u)));
                }
                Ok(())
            })
            .await
    }
}
