//! The one error type JavaScript sees: a JS `Error` whose `code` says what happened in a
//! form to decide on ([`ErrorCode`], documented in the package's types), whose `message`
//! says it for people, with what to do, whose `name` is `"AbortError"` for a cancelled call,
//! and whose `cause` chain holds the underlying errors, outermost first.
//!
//! Codes come from the errors' kinds (a fetch's [`Failure`], a store's fullness), never
//! from their text.

use cairn_core::source::{ChainError, Failure, SourceError};
use cairn_core::unixfs::{ExportError, ImportError};
use cairn_core::{dag, store};
use wasm_bindgen::JsValue;

pub use crate::types::ErrorCode;

/// An error on its way to JavaScript.
#[derive(Debug)]
pub(crate) struct Error {
    code: ErrorCode,
    name: &'static str,
    message: String,
    cause: Option<JsValue>,
}

impl Error {
    /// An `Error` with `code` and `message`.
    pub(crate) fn new(code: ErrorCode, message: impl std::fmt::Display) -> Self {
        Self {
            code,
            name: "Error",
            message: message.to_string(),
            cause: None,
        }
    }

    /// `context: e` as the message, with `e` and its sources as the `cause` chain.
    pub(crate) fn with_source(
        code: ErrorCode,
        context: impl std::fmt::Display,
        e: &(dyn std::error::Error + 'static),
    ) -> Self {
        Self {
            cause: Some(chain(e, None)),
            ..Self::new(code, format!("{context}: {e}"))
        }
    }

    /// An `AbortError` (the call was cancelled through its `AbortSignal`), with the signal's
    /// reason as its cause.
    pub(crate) fn aborted(what: &str, reason: JsValue) -> Self {
        Self {
            code: ErrorCode::Aborted,
            name: "AbortError",
            message: format!("{what} was aborted"),
            cause: (!reason.is_undefined()).then_some(reason),
        }
    }
}

/// `e` and its sources as nested JS `Error`s; a source whose words its parent already
/// holds is skipped (the messages carry their sources' text).
fn chain(e: &(dyn std::error::Error + 'static), parent: Option<&str>) -> JsValue {
    let msg = e.to_string();
    let next = e.source();
    if let Some(p) = parent
        && p == msg
        && let Some(s) = next
    {
        return chain(s, parent);
    }
    let this = js_sys::Error::new(&msg);
    if let Some(source) = next {
        let _ = js_sys::Reflect::set(&this, &"cause".into(), &chain(source, Some(&msg)));
    }
    this.into()
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        let js = js_sys::Error::new(&e.message);
        js.set_name(e.name);
        let _ = js_sys::Reflect::set(&js, &"code".into(), &e.code.as_str().into());
        if let Some(cause) = e.cause {
            let _ = js_sys::Reflect::set(&js, &"cause".into(), &cause);
        }
        js.into()
    }
}

/// A JS `Error` with `code` and a readable message.
pub(crate) fn js_error(code: ErrorCode, message: impl std::fmt::Display) -> JsValue {
    Error::new(code, message).into()
}

/// A JS `Error` for a bad argument or option.
pub(crate) fn invalid(message: impl std::fmt::Display) -> JsValue {
    js_error(ErrorCode::InvalidArgument, message)
}

/// A JS `Error` saying `context: e`, with `e`'s source chain as its `cause`.
pub(crate) fn js_error_from(
    code: ErrorCode,
    context: impl std::fmt::Display,
    e: &(dyn std::error::Error + 'static),
) -> JsValue {
    Error::with_source(code, context, e).into()
}

/// What an error of a kind cairn knows comes down to.
pub(crate) trait Coded {
    /// Its code.
    fn code(&self) -> ErrorCode;
}

impl Coded for Failure {
    fn code(&self) -> ErrorCode {
        match self {
            Failure::NotFound => ErrorCode::NotFound,
            Failure::InvalidData => ErrorCode::InvalidData,
            Failure::Unreachable => ErrorCode::Unreachable,
            Failure::Timeout => ErrorCode::Timeout,
            Failure::Cancelled => ErrorCode::Aborted,
            _ => ErrorCode::Internal,
        }
    }
}

impl Coded for SourceError {
    fn code(&self) -> ErrorCode {
        self.failure().code()
    }
}

impl Coded for ChainError {
    fn code(&self) -> ErrorCode {
        self.failure().code()
    }
}

impl Coded for store::Error {
    fn code(&self) -> ErrorCode {
        if self.is_full() {
            ErrorCode::StoreFull
        } else {
            ErrorCode::Store
        }
    }
}

impl Coded for dag::Error {
    fn code(&self) -> ErrorCode {
        match self {
            dag::Error::Retrieve(e) => e.code(),
            dag::Error::Store(e) => e.code(),
            dag::Error::Malformed { .. } => ErrorCode::InvalidData,
            _ => ErrorCode::Internal,
        }
    }
}

impl Coded for ExportError {
    fn code(&self) -> ErrorCode {
        match self {
            ExportError::Retrieve { source, .. } => source.code(),
            ExportError::Malformed { .. } => ErrorCode::InvalidData,
            ExportError::NotAFile { .. } | ExportError::RangeNotSatisfiable { .. } => {
                ErrorCode::InvalidArgument
            }
            _ => ErrorCode::Internal,
        }
    }
}

impl Coded for ImportError {
    fn code(&self) -> ErrorCode {
        match self {
            ImportError::Store(e) => e.code(),
            ImportError::Read { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        }
    }
}

impl Coded for cairn_p2p::node::Error {
    fn code(&self) -> ErrorCode {
        match self {
            cairn_p2p::node::Error::Stopped => ErrorCode::Stopped,
            cairn_p2p::node::Error::Listen { .. } | cairn_p2p::node::Error::Dht { .. } => {
                ErrorCode::Unreachable
            }
            _ => ErrorCode::Unreachable,
        }
    }
}

impl Coded for cairn_core::unixfs::dir::ReadError {
    fn code(&self) -> ErrorCode {
        use cairn_core::unixfs::dir::ReadError as E;
        match self {
            E::Retrieve { source, .. } => source.code(),
            E::NotFound { .. } => ErrorCode::NotFound,
            E::Malformed { .. } => ErrorCode::InvalidData,
            _ => ErrorCode::InvalidArgument,
        }
    }
}

impl Coded for cairn_core::unixfs::dir::PathError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

impl Coded for cairn_core::cid::Error {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// A JS `Error` for `e` under `context`, coded by its kind.
pub(crate) fn coded<E: Coded + std::error::Error + 'static>(
    context: impl std::fmt::Display,
    e: &E,
) -> JsValue {
    js_error_from(e.code(), context, e)
}
