//! The one error type JavaScript sees: a JS `Error` whose `message` says what happened and
//! what to do, whose `name` tells kinds apart (`"AbortError"` for a cancelled call), and
//! whose `cause` chain holds the underlying errors, outermost first.

use wasm_bindgen::JsValue;

/// An error on its way to JavaScript.
#[derive(Debug)]
pub(crate) struct Error {
    name: &'static str,
    message: String,
    cause: Option<JsValue>,
}

impl Error {
    /// An `Error` with `message`.
    pub(crate) fn new(message: impl std::fmt::Display) -> Self {
        Self {
            name: "Error",
            message: message.to_string(),
            cause: None,
        }
    }

    /// `context` as the message, with `e` and its sources as the `cause` chain.
    pub(crate) fn with_source(context: impl std::fmt::Display, e: &dyn std::error::Error) -> Self {
        Self {
            cause: Some(chain(e)),
            ..Self::new(format!("{context}: {e}"))
        }
    }

    /// An `AbortError` (the call was cancelled through its `AbortSignal`), with the signal's
    /// reason as its cause.
    pub(crate) fn aborted(what: &str, reason: JsValue) -> Self {
        Self {
            name: "AbortError",
            message: format!("{what} was aborted"),
            cause: (!reason.is_undefined()).then_some(reason),
        }
    }
}

/// `e` and its sources as nested JS `Error`s.
fn chain(e: &dyn std::error::Error) -> JsValue {
    let this = js_sys::Error::new(&e.to_string());
    if let Some(source) = e.source() {
        let _ = js_sys::Reflect::set(&this, &"cause".into(), &chain(source));
    }
    this.into()
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        let js = js_sys::Error::new(&e.message);
        js.set_name(e.name);
        if let Some(cause) = e.cause {
            let _ = js_sys::Reflect::set(&js, &"cause".into(), &cause);
        }
        js.into()
    }
}

/// Makes a JS `Error` with a readable message.
pub(crate) fn js_error(message: impl std::fmt::Display) -> JsValue {
    Error::new(message).into()
}

/// Makes a JS `Error` saying `context: e`, with `e`'s source chain as its `cause`.
pub(crate) fn js_error_from(context: impl std::fmt::Display, e: &dyn std::error::Error) -> JsValue {
    Error::with_source(context, e).into()
}
