//! The browser's WebSocket transport (dial only), in place of libp2p-websocket-websys.
//!
//! What it changes, and why (each measured with `cargo xtask bench browser`):
//! - **Flushing does not wait.** websocket-websys finishes a flush only when the socket's
//!   `bufferedAmount` is back to 0, and looks at it on a 100 ms interval. noise and yamux
//!   flush after every frame they write, so each request and each window update the
//!   browser sent could sit up to 100 ms before the muxer moved on: the page idled about
//!   half of a fetch. Here a flush is done once the browser has the bytes (`send` copies
//!   them); nothing this side of the socket can push them out sooner.
//! - **Few messages out.** noise writes one frame per flush and yamux flushes after every
//!   frame, so a window of requests became hundreds of tiny `send` calls (130 ms of a 64 MiB
//!   fetch in the profile). Writes made in one turn of the event loop are gathered and sent
//!   as one message by a task the first of them spawns (it runs in the next microtask): no timer, no added
//!   latency beyond the turn.
//! - **One copy per message, each way.** A received `ArrayBuffer` stays in JavaScript and
//!   is copied once, straight into the reader's buffer.
//! - **Backpressure on writes only while it is needed.** A browser WebSocket has no event
//!   for "the send buffer drained". Writes go straight through while less than
//!   [`WRITE_HIGH`] is queued; past that a write waits, and only then is a short timer
//!   armed to look again. No interval runs while the connection is idle or reading.
//! - **Reads are bounded** by [`READ_LIMIT`] (the peer's yamux windows bound what it may
//!   send; a peer that ignores them is cut off with an error, not buffered without end).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{BoxFuture, Ready};
use futures::{AsyncRead, AsyncWrite, FutureExt, io};

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::{Multiaddr, Protocol};
use send_wrapper::SendWrapper;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

/// How much may sit in the socket's send buffer before a write waits: enough that a
/// browser serving blocks to a peer keeps the link busy between looks.
pub const WRITE_HIGH: usize = 4 << 20;

/// The most written bytes gathered into one message.
const GATHER: usize = 256 << 10;

/// How long a write that found the send buffer full waits before it looks again.
const WRITE_RETRY: Duration = Duration::from_millis(2);

/// The most received bytes kept unread before the connection is refused. The reader is
/// woken after every message and runs before the next one is delivered, so in practice
/// this holds one message; what a well-behaved peer can have in flight is bounded by the
/// windows cairn grants (64 requests of at most a 1 MiB block each).
pub const READ_LIMIT: usize = 96 << 20;

/// Why a WebSocket connection could not be made or went away.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The browser refused the URL (the message is the browser's).
    #[error("the browser refused the WebSocket URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// The socket closed or failed before it opened.
    #[error(
        "could not open a WebSocket to {url} (closed with code {code}{reason}); is the \
         relay running and listening for WebSocket on that port?"
    )]
    Refused {
        url: String,
        code: u16,
        reason: String,
    },
}

/// The dial-only browser WebSocket transport (`/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>`
/// followed by `/ws`, `/wss` or `/tls/ws`, and optionally `/p2p/<id>`).
#[derive(Debug, Default)]
pub struct Transport;

impl libp2p::core::Transport for Transport {
    type Output = Connection;
    type Error = Error;
    type ListenerUpgrade = Ready<Result<Connection, Error>>;
    type Dial = BoxFuture<'static, Result<Connection, Error>>;

    fn listen_on(&mut self, _: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Error>> {
        if opts.role.is_listener() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let Some(url) = url_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        Ok(SendWrapper::new(Connection::open(url)).boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Error>> {
        Poll::Pending
    }
}

/// The `ws://` or `wss://` URL of a WebSocket multiaddr, `None` for any other address
/// (circuits, `/webrtc`, DNS forms the browser cannot resolve such as `/dnsaddr`).
pub fn url_of(addr: &Multiaddr) -> Option<String> {
    let mut it = addr.iter();
    let host = match it.next()? {
        Protocol::Ip4(ip) => ip.to_string(),
        Protocol::Ip6(ip) => format!("[{ip}]"),
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => h.to_string(),
        _ => return None,
    };
    let Protocol::Tcp(port) = it.next()? else {
        return None;
    };
    let (scheme, path) = match it.next()? {
        Protocol::Ws(path) => ("ws", path),
        Protocol::Wss(path) => ("wss", path),
        Protocol::Tls => match it.next()? {
            Protocol::Ws(path) => ("wss", path),
            _ => return None,
        },
        _ => return None,
    };
    // Only the peer's id may follow: anything else (`/p2p-circuit`, `/webrtc`) is another
    // transport's address.
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => {}
        _ => return None,
    }
    Some(format!("{scheme}://{host}:{port}{path}"))
}

/// What the socket's callbacks and the connection share (one thread: the page's or the
/// Worker's).
#[derive(Default)]
struct Shared {
    /// Received messages not yet read, and how far into the first one the reader is.
    queue: VecDeque<js_sys::Uint8Array>,
    offset: u32,
    queued: usize,
    open: bool,
    /// The socket closed (or failed): what the reader sees once the queue is empty.
    closed: Option<(u16, String)>,
    /// The peer sent more than [`READ_LIMIT`] unread.
    overflowed: bool,
    /// Written bytes not yet handed to the socket, and whether a microtask will send them.
    out: Vec<u8>,
    send_queued: bool,
    /// Why the browser refused to send, if it did.
    send_failed: Option<String>,
    reader: Option<Waker>,
    /// Whoever waits for the socket to open or close.
    state: Option<Waker>,
}

impl Shared {
    /// Hands the gathered bytes to the socket as one message.
    fn send_out(&mut self, socket: &WebSocket) {
        self.send_queued = false;
        if self.out.is_empty() || self.send_failed.is_some() {
            return;
        }
        if let Err(e) = socket.send_with_u8_array(&self.out) {
            self.send_failed = Some(crate::js::describe(&e));
            self.wake_all();
        }
        self.out.clear();
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.state.take() {
            w.wake();
        }
    }
}

/// One WebSocket connection to a relay (or any peer listening for WebSocket).
pub struct Connection {
    inner: SendWrapper<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.inner.socket.url())
            .field("unread", &self.inner.shared.borrow().queued)
            .finish()
    }
}

struct Inner {
    socket: WebSocket,
    shared: Rc<RefCell<Shared>>,
    write_retry: Option<cairn_core::BoxFuture<'static, ()>>,
    closing: bool,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _on_error: Closure<dyn FnMut(Event)>,
}

impl Connection {
    /// Opens a socket to `url` and waits for it to open (or fail).
    async fn open(url: String) -> Result<Connection, Error> {
        let socket = WebSocket::new(&url).map_err(|e| Error::Url {
            url: url.clone(),
            reason: crate::js::describe(&e),
        })?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let shared = Rc::new(RefCell::new(Shared::default()));

        let on_open = Closure::<dyn FnMut(Event)>::new({
            let shared = shared.clone();
            move |_| {
                let mut s = shared.borrow_mut();
                s.open = true;
                s.wake_all();
            }
        });
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
            let shared = shared.clone();
            move |e: MessageEvent| {
                let mut s = shared.borrow_mut();
                // Text frames are not part of libp2p's WebSocket transport: refuse them
                // like an overflow rather than feed them to noise.
                let Ok(buffer) = e.data().dyn_into::<js_sys::ArrayBuffer>() else {
                    s.overflowed = true;
                    s.wake_all();
                    return;
                };
                let message = js_sys::Uint8Array::new(&buffer);
                let len = message.length() as usize;
                if s.queued + len > READ_LIMIT {
                    s.overflowed = true;
                } else if len > 0 {
                    s.queued += len;
                    s.queue.push_back(message);
                }
                s.wake_all();
            }
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new({
            let shared = shared.clone();
            move |e: CloseEvent| {
                let mut s = shared.borrow_mut();
                s.closed.get_or_insert((e.code(), e.reason()));
                s.wake_all();
            }
        });
        // An error is always followed by a close event, which carries the code.
        let on_error = Closure::<dyn FnMut(Event)>::new(|_| {});
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        socket.set_onerror(Some(on_error.as_ref().unchecked_ref()));

        let inner = Inner {
            socket,
            shared,
            write_retry: None,
            closing: false,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
            _on_error: on_error,
        };
        futures::future::poll_fn(|cx| {
            let mut s = inner.shared.borrow_mut();
            if s.open {
                Poll::Ready(Ok(()))
            } else if let Some((code, reason)) = &s.closed {
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                };
                Poll::Ready(Err(Error::Refused {
                    url: url.clone(),
                    code: *code,
                    reason,
                }))
            } else {
                s.state = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await?;
        Ok(Connection {
            inner: SendWrapper::new(inner),
        })
    }
}

fn broken(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what)
}

impl Inner {
    /// The error a read or write meets on a connection that can no longer carry bytes.
    fn failed(&self) -> Option<io::Error> {
        let s = self.shared.borrow();
        if let Some(why) = &s.send_failed {
            return Some(broken(format!(
                "the browser refused to send on the WebSocket: {why}"
            )));
        }
        if s.overflowed {
            return Some(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the peer sent more than {} MiB this node had not read yet, or a text \
                     message; the connection was dropped",
                    READ_LIMIT >> 20
                ),
            ));
        }
        None
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut *self.get_mut().inner;
        if let Some(e) = inner.failed() {
            return Poll::Ready(Err(e));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut s = inner.shared.borrow_mut();
        let mut filled = 0;
        while filled < buf.len() {
            let Some(front) = s.queue.front() else { break };
            let len = front.length();
            let take = (len - s.offset).min((buf.len() - filled) as u32);
            front
                .subarray(s.offset, s.offset + take)
                .copy_to(&mut buf[filled..filled + take as usize]);
            filled += take as usize;
            s.offset += take;
            if s.offset == len {
                s.queue.pop_front();
                s.offset = 0;
            }
        }
        s.queued -= filled;
        if filled > 0 {
            return Poll::Ready(Ok(filled));
        }
        if s.closed.is_some() {
            // End of stream: the peer (or the browser) closed the socket.
            return Poll::Ready(Ok(0));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut *self.get_mut().inner;
        if let Some(e) = inner.failed() {
            return Poll::Ready(Err(e));
        }
        if let Some((code, _)) = &inner.shared.borrow().closed {
            return Poll::Ready(Err(broken(format!("the WebSocket closed (code {code})"))));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let mut s = inner.shared.borrow_mut();
            let queued = inner.socket.buffered_amount() as usize + s.out.len();
            if queued < WRITE_HIGH {
                inner.write_retry = None;
                // Never more than fits under the mark, so that one write cannot queue
                // without bound; at least something, so that progress is made.
                let n = buf.len().min(WRITE_HIGH - queued);
                s.out.extend_from_slice(&buf[..n]);
                if s.out.len() >= GATHER {
                    s.send_out(&inner.socket);
                } else if !s.send_queued {
                    s.send_queued = true;
                    // A task, not a bare microtask callback: it owns what it needs, so it
                    // is safe to run after the connection is dropped.
                    let shared = inner.shared.clone();
                    let socket = inner.socket.clone();
                    wasm_bindgen_futures::spawn_local(async move {
                        shared.borrow_mut().send_out(&socket);
                    });
                }
                return Poll::Ready(Ok(n));
            }
            drop(s);
            let retry = inner
                .write_retry
                .get_or_insert_with(|| Box::pin(cairn_core::rt::sleep(WRITE_RETRY)));
            futures::ready!(retry.poll_unpin(cx));
            inner.write_retry = None;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What was written goes to the socket at the end of this turn of the event loop
        // (the microtask is queued), and the browser sends it as fast as the link allows;
        // waiting for its buffer to drain would only delay the next frame.
        match self.inner.failed() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = &mut *self.get_mut().inner;
        if !inner.closing {
            inner.closing = true;
            inner.shared.borrow_mut().send_out(&inner.socket);
            // The only code a page may send (RFC 6455 normal closure).
            let _ = inner.socket.close_with_code_and_reason(1000, "closed");
        }
        let mut s = inner.shared.borrow_mut();
        if s.closed.is_some() {
            return Poll::Ready(Ok(()));
        }
        s.state = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The callbacks die with this value: the socket must not call them afterwards.
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
        if matches!(
            self.socket.ready_state(),
            WebSocket::CONNECTING | WebSocket::OPEN
        ) {
            let _ = self.socket.close_with_code_and_reason(1000, "dropped");
        }
    }
}
