//! The `/webrtc-signaling/0.0.1` exchange on a relayed stream, both ends: the dialer offers,
//! the listener answers, both send their ICE candidates as they are gathered and add the
//! other's, until the browser reports the peer connection connected.
//!
//! The relayed connection the stream runs on is already authenticated (Noise), and the SDP
//! carries each side's DTLS certificate fingerprint, which DTLS then checks: the direct
//! connection is the peer the relayed one is, without another handshake (as js-libp2p does).

use cairn_p2p::streams::Stream;
use cairn_p2p::webrtc_signal::{self, Kind, MAX_CANDIDATES, Message};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{RtcIceCandidateInit, RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit};

use super::connection::{INIT_LABEL, PeerConnection};
use super::{Config, Error};

fn description(kind: RtcSdpType, sdp: &str) -> RtcSessionDescriptionInit {
    let d = RtcSessionDescriptionInit::new(kind);
    d.set_sdp(sdp);
    d
}

/// The SDP of a resolved `createOffer()` / `createAnswer()`.
fn sdp_of(v: &wasm_bindgen::JsValue) -> Result<String, Error> {
    js_sys::Reflect::get(v, &"sdp".into())
        .ok()
        .and_then(|s| s.as_string())
        .ok_or_else(|| Error::Browser("the browser's session description has no SDP".into()))
}

async fn read(r: &mut ReadHalf<Stream>) -> Result<Message, Error> {
    webrtc_signal::read(r).await.map_err(Error::Signal)
}

async fn write(w: &mut WriteHalf<Stream>, kind: Kind, data: String) -> Result<(), Error> {
    webrtc_signal::write(w, &Message { kind, data })
        .await
        .map_err(Error::Signal)
}

/// Reads the next message, which must be `want` (an SDP); its SDP.
async fn expect(r: &mut ReadHalf<Stream>, want: Kind) -> Result<String, Error> {
    let m = read(r).await?;
    if m.kind != want {
        let what = if want == Kind::Offer {
            "offer"
        } else {
            "answer"
        };
        return Err(Error::Protocol(format!(
            "expected an SDP {what}, got {:?}",
            m.kind
        )));
    }
    Ok(m.data)
}

/// Creates our offer or answer (`kind`) and makes it the local description; its SDP.
pub(super) async fn local(
    pc: &web_sys::RtcPeerConnection,
    kind: RtcSdpType,
) -> Result<String, Error> {
    let (made, what) = match kind {
        RtcSdpType::Offer => (pc.create_offer(), "offer"),
        _ => (pc.create_answer(), "answer"),
    };
    let made = JsFuture::from(made).await.map_err(|e| {
        Error::Browser(format!(
            "cannot create an {what}: {}",
            crate::js::describe(&e)
        ))
    })?;
    let sdp = sdp_of(&made)?;
    JsFuture::from(pc.set_local_description(&description(kind, &sdp)))
        .await
        .map_err(|e| {
            Error::Browser(format!(
                "the browser refused its own {what}: {}",
                crate::js::describe(&e)
            ))
        })?;
    Ok(sdp)
}

/// Makes the peer's offer or answer (`kind`) the remote description.
pub(super) async fn remote(
    pc: &web_sys::RtcPeerConnection,
    kind: RtcSdpType,
    sdp: &str,
) -> Result<(), Error> {
    let what = if kind == RtcSdpType::Offer {
        "offer"
    } else {
        "answer"
    };
    JsFuture::from(pc.set_remote_description(&description(kind, sdp)))
        .await
        .map_err(|e| {
            Error::Protocol(format!(
                "the peer's {what} was refused: {}",
                crate::js::describe(&e)
            ))
        })?;
    Ok(())
}

/// The dialer's side: offer, answer, candidates. Bound it with a timeout; dropping it closes
/// the peer connection.
pub(crate) async fn dial(stream: Stream, config: &Config) -> Result<PeerConnection, Error> {
    let mut pc = PeerConnection::new(config.max_connections, &config.rtc())?;
    // A data channel, so that the offer has an application section to gather ICE for.
    let init = pc.pc.create_data_channel(INIT_LABEL);
    let offer = local(&pc.pc, RtcSdpType::Offer).await?;
    let (mut r, mut w) = stream.split();
    write(&mut w, Kind::Offer, offer).await?;
    let answer = expect(&mut r, Kind::Answer).await?;
    remote(&pc.pc, RtcSdpType::Answer, &answer).await?;
    exchange(&mut pc, r, w).await?;
    // It has done its work; closing it frees its id (the listener never takes it as a stream).
    init.close();
    Ok(pc)
}

/// The listener's side: takes the offer, answers, trades candidates.
pub(crate) async fn answer(stream: Stream, config: &Config) -> Result<PeerConnection, Error> {
    let (mut r, mut w) = stream.split();
    let offer = expect(&mut r, Kind::Offer).await?;
    let mut pc = PeerConnection::new(config.max_connections, &config.rtc())?;
    remote(&pc.pc, RtcSdpType::Offer, &offer).await?;
    let answer = local(&pc.pc, RtcSdpType::Answer).await?;
    write(&mut w, Kind::Answer, answer).await?;
    exchange(&mut pc, r, w).await?;
    Ok(pc)
}

/// Sends our candidates and adds the peer's until the connection is up (or failed).
async fn exchange(
    pc: &mut PeerConnection,
    mut r: ReadHalf<Stream>,
    mut w: WriteHalf<Stream>,
) -> Result<(), Error> {
    let conn = pc.pc.clone();
    let candidates = &mut pc.events.candidates;
    let states = &mut pc.events.state;

    let send = async {
        // The end of our candidates is not sent: js-libp2p takes no word for it (an empty
        // candidate stops its reading), and ICE does not need one.
        let mut sent = 0;
        loop {
            match candidates.next().await {
                Some(Some(c)) => {
                    sent += 1;
                    if write(&mut w, Kind::Candidate, c).await.is_err() {
                        break;
                    }
                }
                // Without a single local candidate ICE has no pair to try: say so now
                // rather than at the timeout.
                Some(None) if sent == 0 => {
                    return Err(Error::Ice(
                        "this browser gathered no ICE candidates (its RTCPeerConnection \
                         configuration allows none: check iceServers and iceTransportPolicy)"
                            .into(),
                    ));
                }
                Some(None) | None => break,
            }
        }
        // The peer may close the stream once it is connected: nothing more to send then.
        futures::future::pending::<Result<(), Error>>().await
    };
    let receive = async {
        let mut taken = 0;
        loop {
            let Ok(m) = read(&mut r).await else {
                // The peer closed the stream (it is connected) or it broke: either way,
                // the connection state decides.
                return futures::future::pending::<Result<(), Error>>().await;
            };
            if m.kind != Kind::Candidate {
                return Err(Error::Protocol(format!(
                    "expected an ICE candidate, got {:?}",
                    m.kind
                )));
            }
            taken += 1;
            if taken > MAX_CANDIDATES {
                return Err(Error::Protocol(format!(
                    "the peer sent more than {MAX_CANDIDATES} ICE candidates"
                )));
            }
            add_candidate(&conn, &m.data).await?;
        }
    };
    let connected = async {
        loop {
            match conn.connection_state() {
                RtcPeerConnectionState::Connected => return Ok(()),
                RtcPeerConnectionState::Failed => {
                    return Err(Error::Ice("ICE found no working path to the peer".into()));
                }
                RtcPeerConnectionState::Closed => {
                    return Err(Error::Closed("closed during the handshake".into()));
                }
                _ => {}
            }
            if states.next().await.is_none() {
                return Err(Error::Closed("closed during the handshake".into()));
            }
        }
    };
    let outcome = futures::select! {
        r = connected.fuse() => r,
        r = receive.fuse() => r,
        r = send.fuse() => r,
    };
    outcome?;
    // Signalling is over: the stream is closed, as the spec says.
    let mut stream = r
        .reunite(w)
        .map_err(|_| Error::Closed("stream halves".into()))?;
    let _ = stream.close().await;
    Ok(())
}

/// Adds one of the peer's candidates; an empty or `null` one ends its candidates.
async fn add_candidate(pc: &web_sys::RtcPeerConnection, data: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::Protocol(format!("malformed ICE candidate {data:?}: {why}"));
    let value = if data.is_empty() {
        wasm_bindgen::JsValue::NULL
    } else {
        js_sys::JSON::parse(data).map_err(|_| bad("not JSON"))?
    };
    let candidate = js_sys::Reflect::get(&value, &"candidate".into())
        .ok()
        .and_then(|c| c.as_string());
    let init = match candidate {
        // End of candidates: the browser needs no word of it.
        _ if value.is_null() => return Ok(()),
        Some(c) if c.is_empty() => return Ok(()),
        Some(_) => value.unchecked_into::<RtcIceCandidateInit>(),
        None => return Err(bad("no \"candidate\" string")),
    };
    JsFuture::from(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init)))
        .await
        .map_err(|e| bad(&crate::js::describe(&e)))?;
    Ok(())
}
