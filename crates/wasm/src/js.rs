//! Reading what JavaScript passed: option bags, callbacks, `AbortSignal`s, and the kinds of
//! data `add` takes.

use std::cell::RefCell;
use std::rc::Rc;

use cairn_core::source::{CancelToken, Context, cancel_pair};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::error;

/// The property `name` of `o`, if it is there (not null or undefined).
pub(crate) fn present(o: &JsValue, name: &str) -> Option<JsValue> {
    js_sys::Reflect::get(o, &name.into())
        .ok()
        .filter(|v| !v.is_null() && !v.is_undefined())
}

/// An option bag of type `T`: its defaults when `undefined` or `null`; an
/// `INVALID_ARGUMENT` error naming the field when a field is of the wrong type.
pub(crate) fn options<T: serde::de::DeserializeOwned + Default>(
    value: JsValue,
) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    if !value.is_object() {
        return Err(error::invalid(format!(
            "options must be an object, got {}",
            value.js_typeof().as_string().unwrap_or_default()
        )));
    }
    let de = serde_wasm_bindgen::Deserializer::from(value);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        error::invalid(format!("options.{path}: {}", e.inner()))
    })
}

/// A result as plain JavaScript data (`null` for an absent field that is not skipped).
pub(crate) fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    // Plain objects, also for flattened structs (which serde writes as maps).
    let ser = serde_wasm_bindgen::Serializer::new()
        .serialize_missing_as_null(true)
        .serialize_maps_as_objects(true);
    value.serialize(&ser).unwrap_or(JsValue::UNDEFINED)
}

/// A callback option (`options[name]`), if one was given.
pub(crate) fn callback(name: &str, f: &JsValue) -> Result<Option<js_sys::Function>, JsValue> {
    if f.is_undefined() || f.is_null() {
        return Ok(None);
    }
    f.clone()
        .dyn_into::<js_sys::Function>()
        .map(Some)
        .map_err(|_| error::invalid(format!("options.{name} must be a function")))
}

/// What a thrown JavaScript value says: an `Error`'s message, or the value as a string.
pub(crate) fn describe(e: &JsValue) -> String {
    if let Some(e) = e.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    e.as_string()
        .or_else(|| js_sys::JSON::stringify(e).ok().and_then(|s| s.as_string()))
        .unwrap_or_else(|| "an unknown error".into())
}

/// An `options.signal` (`AbortSignal`), turned into a cancellation token for the sources.
/// Removes its listener when dropped.
pub(crate) struct Abort {
    token: Option<CancelToken>,
    signal: Option<web_sys::AbortSignal>,
    listener: Option<Closure<dyn FnMut()>>,
}

impl Abort {
    /// Takes `options.signal`; fails with an `AbortError` when it is already aborted.
    pub(crate) fn new(signal: &JsValue, what: &str) -> Result<Self, JsValue> {
        if signal.is_undefined() || signal.is_null() {
            return Ok(Self {
                token: None,
                signal: None,
                listener: None,
            });
        }
        let signal: web_sys::AbortSignal = signal
            .clone()
            .dyn_into()
            .map_err(|_| error::invalid("options.signal must be an AbortSignal"))?;
        if signal.aborted() {
            return Err(error::Error::aborted(what, signal.reason()).into());
        }
        let (canceller, token) = cancel_pair();
        let canceller = Rc::new(RefCell::new(Some(canceller)));
        let listener = Closure::<dyn FnMut()>::new(move || {
            if let Some(c) = canceller.borrow_mut().take() {
                c.cancel();
            }
        });
        signal
            .add_event_listener_with_callback("abort", listener.as_ref().unchecked_ref())
            .map_err(|_| error::invalid("cannot listen on options.signal"))?;
        Ok(Self {
            token: Some(token),
            signal: Some(signal),
            listener: Some(listener),
        })
    }

    /// A source context that is cancelled with the signal.
    pub(crate) fn context(&self) -> Context {
        match &self.token {
            Some(t) => Context::new().with_cancel(t.clone()),
            None => Context::new(),
        }
    }

    /// Runs `work`, giving up with an `AbortError` as soon as the signal fires (`work` is
    /// dropped, which cancels what it was doing).
    pub(crate) async fn run<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, JsValue>>,
    ) -> Result<T, JsValue> {
        let ctx = self.context();
        let cancelled = ctx.cancelled();
        futures::pin_mut!(work, cancelled);
        match futures::future::select(work, cancelled).await {
            // The work may notice the cancellation first (its sources stop with "cancelled").
            futures::future::Either::Left((Err(_), _)) if self.is_aborted() => {
                Err(self.aborted(what))
            }
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right(((), _)) => Err(self.aborted(what)),
        }
    }

    /// `reader`, failing its next read once the signal fires: a consumer that cleans up on
    /// a read error (the importer deletes the blocks it added) then does so on abort too.
    pub(crate) fn reader<R: futures::AsyncRead + Unpin>(&self, reader: R) -> AbortableRead<R> {
        let ctx = self.context();
        AbortableRead {
            inner: reader,
            cancelled: Box::pin(async move { ctx.cancelled().await }),
        }
    }

    /// Whether the signal has fired.
    pub(crate) fn is_aborted(&self) -> bool {
        self.signal
            .as_ref()
            .is_some_and(web_sys::AbortSignal::aborted)
    }

    /// The `AbortError` for `what`.
    pub(crate) fn aborted(&self, what: &str) -> JsValue {
        let reason = self
            .signal
            .as_ref()
            .map_or(JsValue::UNDEFINED, web_sys::AbortSignal::reason);
        error::Error::aborted(what, reason).into()
    }
}

impl Drop for Abort {
    fn drop(&mut self) {
        if let (Some(signal), Some(listener)) = (&self.signal, &self.listener) {
            let _ = signal
                .remove_event_listener_with_callback("abort", listener.as_ref().unchecked_ref());
        }
    }
}

/// See [`Abort::reader`].
pub(crate) struct AbortableRead<R> {
    inner: R,
    cancelled: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

impl<R: futures::AsyncRead + Unpin> futures::AsyncRead for AbortableRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Err(std::io::Error::other("aborted")));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// A reader over what `add` was given, and its length when known.
pub(crate) fn reader_of(
    data: JsValue,
) -> Result<(Box<dyn futures::AsyncRead + Unpin>, Option<u64>), JsValue> {
    use futures::TryStreamExt;
    if let Some(bytes) = data.dyn_ref::<js_sys::Uint8Array>() {
        let len = bytes.length() as u64;
        return Ok((
            Box::new(futures::io::Cursor::new(bytes.to_vec())),
            Some(len),
        ));
    }
    let (stream, len) = if let Some(blob) = data.dyn_ref::<web_sys::Blob>() {
        (blob.stream(), Some(blob.size() as u64))
    } else if let Ok(stream) = data.clone().dyn_into::<web_sys::ReadableStream>() {
        (stream, None)
    } else {
        return Err(error::invalid(format!(
            "add takes a Uint8Array, a Blob or File, or a ReadableStream; got {}",
            data.js_typeof().as_string().unwrap_or_default()
        )));
    };
    let chunks = wasm_streams::ReadableStream::from_raw(stream)
        .into_stream()
        .map_err(|e| {
            std::io::Error::other(format!(
                "the stream failed: {}",
                e.dyn_ref::<js_sys::Error>()
                    .map(|e| String::from(e.message()))
                    .or_else(|| e.as_string())
                    .unwrap_or_else(|| format!("{e:?}"))
            ))
        })
        .and_then(|chunk| async move {
            chunk
                .dyn_into::<js_sys::Uint8Array>()
                .map(|c| c.to_vec())
                .map_err(|_| {
                    std::io::Error::other("the stream gave something other than a Uint8Array")
                })
        });
    Ok((Box::new(Box::pin(chunks).into_async_read()), len))
}

/// A Web Lock held until dropped (`navigator.locks`).
#[derive(Debug)]
pub(crate) struct Lock {
    release: js_sys::Function,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.release.call0(&JsValue::NULL);
    }
}

/// What [`try_lock`] found.
pub(crate) enum Locked {
    /// The lock is ours until the guard is dropped.
    Held(Lock),
    /// Another tab or worker holds it.
    Taken,
    /// This browser has no Web Locks.
    Unsupported,
}

/// Takes the Web Lock `name` if no other tab or worker of this site holds it.
pub(crate) async fn try_lock(name: &str) -> Locked {
    let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).ok();
    let Some(locks) = get(&js_sys::global(), "navigator")
        .and_then(|n| get(&n, "locks"))
        .filter(|l| !l.is_undefined())
    else {
        return Locked::Unsupported;
    };
    let Some(request) = get(&locks, "request").and_then(|r| r.dyn_into::<js_sys::Function>().ok())
    else {
        return Locked::Unsupported;
    };
    let (tx, rx) = futures::channel::oneshot::channel::<Option<js_sys::Function>>();
    let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
        if lock.is_null() {
            let _ = tx.send(None);
            return JsValue::UNDEFINED;
        }
        // The lock is held until this promise settles: its resolve function is the guard.
        let mut release = None;
        let held = js_sys::Promise::new(&mut |resolve, _| release = Some(resolve));
        let _ = tx.send(release);
        held.into()
    });
    let options = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&options, &"ifAvailable".into(), &true.into());
    if request
        .call3(&locks, &name.into(), &options, &callback)
        .is_err()
    {
        return Locked::Unsupported;
    }
    match rx.await {
        Ok(Some(release)) => Locked::Held(Lock { release }),
        _ => Locked::Taken,
    }
}
