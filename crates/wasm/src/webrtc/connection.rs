//! An `RTCPeerConnection` as a libp2p connection: every libp2p stream is a data channel of
//! its own, framed as the WebRTC spec says (libp2p-webrtc-utils' `Stream`), with
//! multistream-select on top as on any connection.
//!
//! [`PeerConnection`] owns the browser object: the page-wide count of open ones goes up when
//! it is made and down when it is dropped, which closes it, so a failed handshake or a
//! dropped connection never leaves one behind.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use send_wrapper::SendWrapper;
use wasm_bindgen::prelude::*;
use web_sys::{
    Event, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelState,
    RtcPeerConnectionIceEvent, RtcPeerConnectionState,
};

use super::Error;
use super::channel::DataChannel;

thread_local! {
    static OPEN: Cell<usize> = const { Cell::new(0) };
}

/// `RTCPeerConnection`s this page has open through cairn.
pub fn open_count() -> usize {
    OPEN.with(Cell::get)
}

/// The label of the channel the dialer opens to start ICE (before any libp2p stream).
pub(crate) const INIT_LABEL: &str = "init";

/// How long the listener leaves the dialer's `init` channel open before closing it itself
/// (see `PeerConnection::new`): well after a js-libp2p dialer has seen it open, and well
/// within its 5 s dial timeout.
const INIT_CLOSE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The browser's events of one peer connection, as channels (set up when it is made, so
/// nothing that fires during the handshake is lost).
pub(crate) struct Events {
    /// Local ICE candidates as JSON; `None` when gathering is complete.
    pub(crate) candidates: mpsc::Receiver<Option<String>>,
    /// A tick on connection state changes (one pending tick stands for any number).
    pub(crate) state: mpsc::Receiver<()>,
    /// Data channels the peer opened.
    inbound: mpsc::Receiver<RtcDataChannel>,
    _on_candidate: Closure<dyn FnMut(RtcPeerConnectionIceEvent)>,
    _on_channel: Closure<dyn FnMut(RtcDataChannelEvent)>,
    _on_state: Closure<dyn FnMut(Event)>,
}

/// An `RTCPeerConnection`, closed on drop.
pub(crate) struct PeerConnection {
    pub(crate) pc: web_sys::RtcPeerConnection,
    pub(crate) events: Events,
}

/// Inbound data channels waiting to be taken as streams, past which new ones are refused.
const MAX_PENDING_CHANNELS: usize = 64;

impl PeerConnection {
    /// A new peer connection, unless `max` are open already.
    pub(crate) fn new(max: usize, config: &RtcConfiguration) -> Result<Self, Error> {
        if open_count() >= max {
            return Err(Error::TooMany(max));
        }
        let pc = web_sys::RtcPeerConnection::new_with_configuration(config)
            .map_err(|e| Error::Browser(crate::js::describe(&e)))?;
        OPEN.with(|n| n.set(n.get() + 1));

        // More local candidates than this (one per interface and kind) are not sent.
        let (mut cand_tx, candidates) = mpsc::channel(cairn_p2p::webrtc_signal::MAX_CANDIDATES);
        let on_candidate = Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new(
            move |ev: RtcPeerConnectionIceEvent| {
                let json = match ev.candidate() {
                    // An end-of-generation marker: not a candidate, and not to be sent
                    // (an empty candidate stops js-libp2p reading).
                    Some(c) if c.candidate().is_empty() => return,
                    Some(c) => js_sys::JSON::stringify(&c.to_json())
                        .ok()
                        .and_then(|s| s.as_string()),
                    None => None,
                };
                let _ = cand_tx.try_send(json);
            },
        );
        pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));

        let (mut tx, inbound) = mpsc::channel(MAX_PENDING_CHANNELS);
        let on_channel = Closure::<dyn FnMut(RtcDataChannelEvent)>::new(
            move |ev: RtcDataChannelEvent| {
                let dc = ev.channel();
                if dc.label() == INIT_LABEL {
                    // The dialer's ICE starter carries no libp2p stream. js-libp2p's dialer
                    // closes it once connected and waits for the close to complete (and,
                    // before that, for it to open). When that close reaches Firefox just
                    // after the channel opened, Firefox loses it: its side stays open, and
                    // the dial hangs until js-libp2p's timeout. So a channel still open
                    // `INIT_CLOSE_AFTER` after it arrived is closed from here, which
                    // completes the dialer's close. Not at once: a close that reaches
                    // js-libp2p before it looks at the channel leaves it waiting for an
                    // `open` that has passed.
                    wasm_bindgen_futures::spawn_local(async move {
                        cairn_core::rt::sleep(INIT_CLOSE_AFTER).await;
                        if dc.ready_state() == RtcDataChannelState::Open {
                            dc.close();
                        }
                    });
                    return;
                }
                if tx.try_send(dc.clone()).is_err() {
                    web_sys::console::warn_1(
                        &"cairn: a WebRTC peer opens data channels faster than they are taken; refusing one".into(),
                    );
                    dc.close();
                }
            },
        );
        pc.set_ondatachannel(Some(on_channel.as_ref().unchecked_ref()));

        let (mut state_tx, state) = mpsc::channel(1);
        let on_state = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            let _ = state_tx.try_send(());
        });
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        Ok(Self {
            pc,
            events: Events {
                candidates,
                state,
                inbound,
                _on_candidate: on_candidate,
                _on_channel: on_channel,
                _on_state: on_state,
            },
        })
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.pc.set_onicecandidate(None);
        self.pc.set_onconnectionstatechange(None);
        self.pc.set_ondatachannel(None);
        self.pc.close();
        OPEN.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

type DropListener = SendWrapper<libp2p_webrtc_utils::DropListener<DataChannel>>;

/// A stream: one data channel.
#[allow(missing_debug_implementations)] // wraps browser objects
pub struct Stream(SendWrapper<libp2p_webrtc_utils::Stream<DataChannel>>);

impl futures::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_close(cx)
    }
}

/// A WebRTC connection between two browsers, as a libp2p stream muxer.
#[allow(missing_debug_implementations)] // wraps browser objects
pub struct Connection {
    pc: SendWrapper<PeerConnection>,
    /// Woken by every data channel's events (see [`DataChannel`]).
    task: Arc<AtomicWaker>,
    drop_listeners: FuturesUnordered<DropListener>,
}

impl Connection {
    /// Takes over `pc` once its handshake is done.
    pub(crate) fn new(pc: PeerConnection) -> Self {
        Self {
            pc: SendWrapper::new(pc),
            task: Arc::new(AtomicWaker::new()),
            drop_listeners: FuturesUnordered::new(),
        }
    }

    fn stream(&mut self, dc: RtcDataChannel) -> Stream {
        let (stream, listener) =
            libp2p_webrtc_utils::Stream::new(DataChannel::new(dc, self.task.clone()));
        self.drop_listeners.push(SendWrapper::new(listener));
        // `poll` stopped polling the listeners when there were none.
        self.task.wake();
        Stream(SendWrapper::new(stream))
    }

    fn failed(&self) -> Option<Error> {
        match self.pc.pc.connection_state() {
            RtcPeerConnectionState::Failed => Some(Error::Closed("ICE failed".into())),
            RtcPeerConnectionState::Closed => Some(Error::Closed("closed".into())),
            _ => None,
        }
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        match futures::ready!(self.pc.events.inbound.poll_next_unpin(cx)) {
            Some(dc) => Poll::Ready(Ok(self.stream(dc))),
            None => Poll::Ready(Err(Error::Closed("closed".into()))),
        }
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Stream, Error>> {
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        let dc = self.pc.pc.create_data_channel("");
        Poll::Ready(Ok(self.stream(dc)))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.pc.pc.close();
        Poll::Ready(Ok(()))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Error>> {
        self.task.register(cx.waker());
        // A connection the browser gave up on ends here, so the swarm drops it.
        while let Poll::Ready(Some(())) = self.pc.events.state.poll_next_unpin(cx) {}
        if let Some(e) = self.failed() {
            return Poll::Ready(Err(e));
        }
        // With none left, `stream` wakes the task when one is added.
        while let Poll::Ready(Some(_)) = self.drop_listeners.poll_next_unpin(cx) {}
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::channel::oneshot;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
    use web_sys::RtcSdpType;

    use super::super::Config;
    use super::super::handshake::{local, remote};
    use super::*;

    wasm_bindgen_test_configure!(run_in_browser);

    /// js-libp2p's dialer closes its `init` channel once connected and waits for the close
    /// to complete; Firefox loses a close that comes right after the channel opened, and
    /// never completes it. The answerer closes an `init` left open itself: here the dialer
    /// never closes it, and its channel must end closed all the same.
    #[wasm_bindgen_test]
    async fn the_answerer_closes_the_dialers_init_channel() {
        let rtc = Config::default().rtc();
        // The dialer makes `init` and never closes it. Each side's SDP is sent once its
        // gathering is over, with every candidate in it.
        let mut dialer = PeerConnection::new(usize::MAX, &rtc).unwrap();
        let init = dialer.pc.create_data_channel(INIT_LABEL);
        let (closed_tx, closed) = oneshot::channel();
        let mut closed_tx = Some(closed_tx);
        let on_close = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            if let Some(tx) = closed_tx.take() {
                let _ = tx.send(());
            }
        });
        init.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        local(&dialer.pc, RtcSdpType::Offer).await.unwrap();
        while let Some(Some(_)) = dialer.events.candidates.next().await {}
        let offer = dialer.pc.local_description().unwrap().sdp();

        let mut answerer = PeerConnection::new(usize::MAX, &rtc).unwrap();
        remote(&answerer.pc, RtcSdpType::Offer, &offer)
            .await
            .unwrap();
        local(&answerer.pc, RtcSdpType::Answer).await.unwrap();
        while let Some(Some(_)) = answerer.events.candidates.next().await {}
        let answer = answerer.pc.local_description().unwrap().sdp();
        remote(&dialer.pc, RtcSdpType::Answer, &answer)
            .await
            .unwrap();

        // Within js-libp2p's dial timeout. (Firefox closes a channel its page dropped after
        // about 8 s on its own: too late for a dialer waiting on it.)
        let ended = cairn_core::rt::timeout(Duration::from_secs(5), closed).await;
        assert!(
            ended.is_some(),
            "the dialer's init channel is still {:?} 5 s after the answer, past js-libp2p's \
             dial timeout (connection {:?})",
            init.ready_state(),
            dialer.pc.connection_state()
        );
        assert_eq!(init.ready_state(), RtcDataChannelState::Closed);
        drop((dialer, answerer));
    }
}
