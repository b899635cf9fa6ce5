//! One `RTCDataChannel` as a byte stream (`AsyncRead` + `AsyncWrite`), the layer under
//! libp2p-webrtc-utils' framed [`libp2p_webrtc_utils::Stream`].
//!
//! Writes go out one frame per data-channel message (the framing layer hands us whole
//! frames; we send the first one whole), and stop while more than [`WRITE_HIGH`] bytes wait
//! in the browser's send buffer, resuming when it drains to [`WRITE_LOW`]: a single 16 KiB
//! message in flight (what libp2p-webrtc-websys allows) caps a stream at a few MB/s.
//!
//! Data channels have no receive-side flow control; what arrives waits in a buffer of at most
//! [`READ_MAX`] bytes, past which the channel fails (the stream is reset) rather than grow.
//!
//! What arrives is put back together into whole frames first (js-libp2p sends a frame's
//! length and body as two messages), so that two things the framing layer
//! (libp2p-webrtc-utils 0.4) does not do are done here, as each frame arrives: a FIN is
//! answered with a FIN_ACK, and a FIN_ACK is kept from the framing layer, which would take it
//! for a FIN ([`cairn_p2p::webrtc_stream`]). A frame announced over 16 KiB fails the channel.
//!
//! Every event also wakes the connection's task, not only the stream's reader: a protocol
//! handler may start reading a stream without polling it (libp2p-ping re-arms its inbound
//! ping so), and then only a wake of the whole connection gets the read going. Over yamux
//! that comes for free, since all streams share one socket; here each stream has its own.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use cairn_p2p::webrtc_stream::{Deframer, FIN_ACK_FRAME, Flag, frame_end};
use futures::task::AtomicWaker;
use futures::{AsyncRead, AsyncWrite};
use libp2p_webrtc_utils::MAX_MSG_LEN;
use wasm_bindgen::prelude::*;
use web_sys::{Event, MessageEvent, RtcDataChannel, RtcDataChannelState, RtcDataChannelType};

/// Bytes queued in the browser past which writes wait.
pub(crate) const WRITE_HIGH: u32 = 1024 * 1024;
/// Queued bytes at which waiting writes resume.
pub(crate) const WRITE_LOW: u32 = 256 * 1024;
/// Unread bytes past which the channel fails.
pub(crate) const READ_MAX: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct State {
    read: VecDeque<Bytes>,
    buffered: usize,
    /// Why the channel can no longer be read (the peer broke the protocol or overran us).
    failed: Option<String>,
    deframer: Deframer,
    closed: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The task of the connection the channel belongs to.
    task: Arc<AtomicWaker>,
}

impl State {
    fn wake_all(&mut self) {
        for w in [self.read_waker.take(), self.write_waker.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
        self.task.wake();
    }

    fn fail(&mut self, why: &str) {
        self.failed.get_or_insert_with(|| why.to_owned());
        self.read.clear();
        self.buffered = 0;
        self.wake_all();
    }
}

struct Inner {
    dc: RtcDataChannel,
    state: Rc<RefCell<State>>,
    _closures: [Closure<dyn FnMut(Event)>; 4],
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dc.set_onopen(None);
        self.dc.set_onmessage(None);
        self.dc.set_onclose(None);
        self.dc.set_onbufferedamountlow(None);
        self.dc.close();
    }
}

/// A data channel as a byte stream; clones share the channel.
#[derive(Clone)]
pub(crate) struct DataChannel(Rc<Inner>);

impl DataChannel {
    /// Wraps `dc`; its events also wake `task` (the connection's).
    pub(crate) fn new(dc: RtcDataChannel, task: Arc<AtomicWaker>) -> Self {
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        dc.set_buffered_amount_low_threshold(WRITE_LOW);
        let state = Rc::new(RefCell::new(State {
            task,
            ..State::default()
        }));
        let wake = |state: &Rc<RefCell<State>>| {
            let state = state.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| state.borrow_mut().wake_all())
        };
        let on_message = {
            let state = state.clone();
            let dc = dc.clone();
            Closure::<dyn FnMut(Event)>::new(move |ev: Event| {
                let Ok(ev) = ev.dyn_into::<MessageEvent>() else {
                    return;
                };
                let data = ev.data();
                let mut s = state.borrow_mut();
                let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() else {
                    s.fail("the peer sent a text message, which is not part of the protocol");
                    return;
                };
                let bytes = Bytes::from(js_sys::Uint8Array::new(buf).to_vec());
                let State {
                    deframer,
                    read,
                    buffered,
                    ..
                } = &mut *s;
                let mut over = false;
                let framed = deframer.push(bytes, |frame| {
                    match cairn_p2p::webrtc_stream::flag(&frame) {
                        // Our FIN arrived; nothing for the framing layer.
                        Some(Flag::FinAck) => return,
                        // The peer's: acknowledged now, read as the end of the stream below.
                        // A channel that can no longer send ends soon, which the peer also
                        // takes as acknowledged.
                        Some(Flag::Fin) => {
                            let _ = dc.send_with_u8_array(&FIN_ACK_FRAME);
                        }
                        _ => {}
                    }
                    *buffered += frame.len();
                    over |= *buffered > READ_MAX;
                    read.push_back(frame);
                });
                match framed {
                    Err(e) => s.fail(&e.to_string()),
                    Ok(()) if over => s.fail(&format!(
                        "the peer sent more than {} MiB that was not read yet",
                        READ_MAX >> 20
                    )),
                    Ok(()) => s.wake_all(),
                }
            })
        };
        let on_close = {
            let state = state.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                let mut s = state.borrow_mut();
                s.closed = true;
                s.wake_all();
            })
        };
        let on_open = wake(&state);
        let on_low = wake(&state);
        dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        DataChannel(Rc::new(Inner {
            dc,
            state,
            _closures: [on_open, on_message, on_close, on_low],
        }))
    }

    /// Ready once the channel is open; an error once it closed or was overrun.
    fn poll_ready(&self, cx: &mut Context<'_>, reading: bool) -> Poll<io::Result<()>> {
        let mut s = self.0.state.borrow_mut();
        if let Some(why) = &s.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())));
        }
        // What arrived before a close can still be read.
        let unread = reading && !s.read.is_empty();
        match self.0.dc.ready_state() {
            RtcDataChannelState::Connecting => {
                s.read_waker = Some(cx.waker().clone());
                if !reading {
                    s.write_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            RtcDataChannelState::Closing | RtcDataChannelState::Closed if !unread => {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            _ if s.closed && !unread => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for DataChannel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        futures::ready!(self.poll_ready(cx, true))?;
        let mut s = self.0.state.borrow_mut();
        let Some(front) = s.read.front_mut() else {
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = front.len().min(buf.len());
        buf[..n].copy_from_slice(&front[..n]);
        if n == front.len() {
            s.read.pop_front();
        } else {
            let rest = front.slice(n..);
            *front = rest;
        }
        s.buffered -= n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for DataChannel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::ready!(self.poll_ready(cx, false))?;
        if self.0.dc.buffered_amount() > WRITE_HIGH {
            let mut s = self.0.state.borrow_mut();
            s.write_waker = Some(cx.waker().clone());
            // The event may have fired between the check and the registration.
            if self.0.dc.buffered_amount() > WRITE_HIGH {
                return Poll::Pending;
            }
        }
        // Our framing layer hands us whole frames of at most 16 KiB; anything else goes out
        // as it is, cut at the message limit.
        let n = frame_end(buf)
            .ok()
            .flatten()
            .unwrap_or(buf.len())
            .min(MAX_MSG_LEN);
        self.0
            .dc
            .send_with_u8_array(&buf[..n])
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes handed to `send` are the browser's to deliver; waiting for the send buffer to
        // empty would stall every flush behind the whole window.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.dc.ready_state() {
            RtcDataChannelState::Closed => Poll::Ready(Ok(())),
            state => {
                if state != RtcDataChannelState::Closing {
                    self.0.dc.close();
                }
                let mut s = self.0.state.borrow_mut();
                if s.closed {
                    return Poll::Ready(Ok(()));
                }
                s.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
