//! The browser's [`HttpClient`] for the gateway source, on `fetch()` (in a page or a
//! Worker). A dropped request is aborted; a body past the limit stops being read.

use cairn_core::source::{HttpClient, HttpError, HttpResponse};
use futures::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// The global `fetch`, present in pages and Workers alike.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &web_sys::Request) -> js_sys::Promise;
}

/// `fetch()` as an [`HttpClient`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Fetch;

/// Aborts the request when dropped (a cancelled block retrieval stops its download).
struct AbortOnDrop(web_sys::AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn transport(what: &str, e: JsValue) -> HttpError {
    let why = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    HttpError::Transport(format!("{what}: {why}").into())
}

impl HttpClient for Fetch {
    async fn get(
        &self,
        url: &str,
        accept: &str,
        max_body: usize,
    ) -> Result<HttpResponse, HttpError> {
        let abort = AbortOnDrop(
            web_sys::AbortController::new().map_err(|e| transport("fetch unavailable", e))?,
        );
        let init = web_sys::RequestInit::new();
        init.set_method("GET");
        init.set_signal(Some(&abort.0.signal()));
        let request = web_sys::Request::new_with_str_and_init(url, &init)
            .map_err(|e| transport("bad request", e))?;
        request
            .headers()
            .set("Accept", accept)
            .map_err(|e| transport("bad header", e))?;
        let response: web_sys::Response =
            wasm_bindgen_futures::JsFuture::from(global_fetch(&request))
                .await
                .map_err(|e| transport("request failed", e))?
                .unchecked_into();
        let status = response.status();
        let mut body = Vec::new();
        if let Some(stream) = response.body() {
            let mut chunks = wasm_streams::ReadableStream::from_raw(stream).into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| transport("reading the body failed", e))?;
                let chunk: js_sys::Uint8Array = chunk.unchecked_into();
                if body.len() + chunk.length() as usize > max_body {
                    return Err(HttpError::TooLarge { limit: max_body });
                }
                body.extend_from_slice(&chunk.to_vec());
            }
        }
        drop(abort);
        Ok(HttpResponse {
            status,
            body: body.into(),
        })
    }
}
