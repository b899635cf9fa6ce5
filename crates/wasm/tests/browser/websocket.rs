//! The browser's WebSocket transport: which addresses it takes, and what it makes of them.

use cairn_wasm::websocket::url_of;
use wasm_bindgen_test::*;

fn url(addr: &str) -> Option<String> {
    url_of(&addr.parse().unwrap())
}

#[wasm_bindgen_test]
fn websocket_addresses_become_urls_and_others_are_left_to_other_transports() {
    let id = "12D3KooWGZSN2LnVo7eqhLx8hydmjqanTwqWEg3qqX2yHh9JLhwL";
    assert_eq!(
        url("/ip4/127.0.0.1/tcp/4001/ws").as_deref(),
        Some("ws://127.0.0.1:4001/")
    );
    assert_eq!(
        url(&format!("/ip4/127.0.0.1/tcp/4001/ws/p2p/{id}")).as_deref(),
        Some("ws://127.0.0.1:4001/")
    );
    assert_eq!(
        url("/ip6/::1/tcp/443/wss").as_deref(),
        Some("wss://[::1]:443/")
    );
    assert_eq!(
        url("/dns4/relay.example/tcp/443/tls/ws").as_deref(),
        Some("wss://relay.example:443/")
    );
    assert_eq!(
        url("/dns/relay.example/tcp/443/x-parity-ws/%2Fcairn").as_deref(),
        Some("ws://relay.example:443/cairn")
    );
    // Circuits and `/webrtc` through a WebSocket relay belong to the relay client and the
    // `/webrtc` transport, not to this one.
    assert_eq!(
        url(&format!(
            "/ip4/127.0.0.1/tcp/4001/ws/p2p/{id}/p2p-circuit/p2p/{id}"
        )),
        None
    );
    assert_eq!(url("/ip4/127.0.0.1/tcp/4001"), None);
    assert_eq!(url("/dnsaddr/relay.example/tcp/443/wss"), None);
    assert_eq!(url("/ip4/127.0.0.1/tcp/4001/tls/wss"), None);
    assert_eq!(url("/ip4/127.0.0.1/udp/4001/webrtc-direct"), None);
}
