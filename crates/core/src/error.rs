//! [`Reason`]: a lower layer's error kept whole inside cairn's own error kinds.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why something failed, as a lower layer (a transport, an HTTP client, a peer's refusal)
/// said it: the error itself, kept with its sources, cheap to clone.
///
/// Its text is the error's message followed by those of its sources that add something
/// (transport errors hide the useful part there); [`Error::source`] gives the error itself,
/// so a caller can still look inside. Errors that are only a message (a peer's refusal, a
/// JavaScript exception's text) are made with [`Reason::msg`].
#[derive(Clone)]
pub struct Reason(Arc<dyn Error + Send + Sync>);

/// A reason that is only a message.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

impl Reason {
    /// Keeps `e` (and its sources).
    pub fn new(e: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(e))
    }

    /// A reason that is only a message.
    pub fn msg(m: impl Into<String>) -> Self {
        Self(Arc::new(Message(m.into())))
    }

    /// The error itself.
    pub fn get(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The error's message and its sources', each once.
    pub fn flatten(e: &(dyn Error + 'static)) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            let msg = s.to_string();
            if !out.contains(&msg) {
                out.push_str(": ");
                out.push_str(&msg);
            }
            next = s.source();
        }
        out
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::flatten(&*self.0))
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({self})")
    }
}

impl Error for Reason {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        // The text already holds the whole chain; the source is the error itself, for
        // callers that downcast.
        Some(&*self.0)
    }
}

/// Reasons compare by what they say: two peers that refused with the same words failed
/// the same way.
impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Reason {}

impl From<String> for Reason {
    fn from(m: String) -> Self {
        Self::msg(m)
    }
}

impl From<&str> for Reason {
    fn from(m: &str) -> Self {
        Self::msg(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_text_holds_the_chain_and_the_error_stays_reachable() {
        let r = Reason::new(Outer(std::io::Error::other("inner cause")));
        assert_eq!(r.to_string(), "outer: inner cause");
        let inner = r.source().unwrap();
        assert!(inner.downcast_ref::<Outer>().is_some());
        assert_eq!(Reason::msg("x"), Reason::from("x"));
        assert_ne!(Reason::msg("x"), Reason::msg("y"));
    }
}
