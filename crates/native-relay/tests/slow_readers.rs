//! Peers that ask for a lot and read nothing: over `/cas`, bitswap and the HTTP gateway,
//! three of them each ask a `cairn-relay serve` process for 800 MiB and read nothing (or a
//! trickle). The relay's memory stays bounded (peak RSS under 384 MiB), honest peers are
//! served throughout, the slow readers are cut, and every answer byte held is freed.
//!
//! The relay runs as its own process so its RSS is its own. Slow readers read through a
//! proxy that passes the relay's bytes on at 2 KiB/s once the connection is set up (the
//! relay's socket fills, then its streams), or open `/cas` streams and never read them.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_core::store::Memory;
use cairn_p2p::{bitswap, cas, framing};
use common::flood::{
    ASKED, FILE, MAX_RSS, MIB, Relay, Rss, STALL_SECS, get_8_mib, slow_node, start_relay,
};
use common::{fetch_all, node, until_cas};
use tokio::io::AsyncWriteExt;

/// An honest peer fetching the file over `/cas`, verified, `rounds` times.
async fn honest_fetches(relay: &Relay, rounds: usize) {
    let honest = node(Arc::new(Memory::new())).await;
    honest.dial(relay.addr.clone()).await.unwrap();
    until_cas(&honest, relay.peer).await;
    for round in 0..rounds {
        let started = std::time::Instant::now();
        fetch_all(&honest, FILE, relay.root).await;
        eprintln!(
            "honest /cas fetch {round}: 32 MiB in {:.2?}",
            started.elapsed()
        );
    }
}

/// After the flood: the slow readers were cut, and once they are gone every answer byte is
/// given back and the peak RSS stayed under the bound.
async fn finish(relay: &Relay, rss: &Rss, path: &str) {
    relay
        .until_metric(
            &format!("cairn_askers_cut_total{{path=\"{path}\"}}"),
            Duration::from_secs(STALL_SECS * 6),
            |v| v >= 1.0,
        )
        .await;
    relay
        .until_metric(
            &format!("cairn_answer_bytes_queued{{path=\"{path}\"}}"),
            Duration::from_secs(STALL_SECS * 6),
            |v| v == 0.0,
        )
        .await;
    let peak = rss.peak();
    eprintln!(
        "{path} flood: relay peak RSS {} MiB (bound {} MiB)",
        peak / MIB as u64,
        MAX_RSS / MIB as u64
    );
    assert!(
        peak < MAX_RSS,
        "the relay's RSS reached {} MiB during the {path} flood",
        peak / MIB as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_cas_readers_get_bounded_memory_and_are_cut() {
    let relay = start_relay().await;
    let rss = Rss::watch(relay.pid());
    // Each opens 100 streams, asks for 8 MiB on each and reads none of them; the first two
    // read their connection only at a trickle, the third reads it freely.
    let mut readers = Vec::new();
    let mut open_streams = Vec::new();
    for reader in 0..3 {
        let (n, trickle) = slow_node(&relay).await;
        // The trickle starts before anything is asked: started after, it let the relay hand
        // the first answers over at loopback speed in 1 run in 5, and nobody stalled.
        if reader < 2 {
            trickle.store(true, Ordering::Relaxed);
        }
        for i in 0..ASKED / (8 * MIB) {
            let mut s = n
                .streams()
                .open_stream(relay.peer, cas::PROTOCOL)
                .await
                .unwrap();
            framing::write_frame(&mut s, &cas::encode(&get_8_mib(&relay, i)))
                .await
                .unwrap();
            open_streams.push(s);
        }
        readers.push(n);
    }
    honest_fetches(&relay, 3).await;
    finish(&relay, &rss, "cas").await;
    drop(open_streams);
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bitswap_readers_get_bounded_memory_and_are_cut() {
    let relay = start_relay().await;
    let rss = Rss::watch(relay.pid());
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (n, trickle) = slow_node(&relay).await;
        // 25 wantlists of the whole file: 800 MiB of want-blocks.
        for _ in 0..ASKED / FILE {
            let msg = bitswap::Message {
                wantlist: relay
                    .leaves
                    .iter()
                    .map(|c| bitswap::Entry::want_block(*c))
                    .collect(),
                ..Default::default()
            };
            n.bitswap().send_message(relay.peer, msg).await.unwrap();
        }
        trickle.store(true, Ordering::Relaxed);
        readers.push(n);
    }
    honest_fetches(&relay, 3).await;
    finish(&relay, &rss, "bitswap").await;
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_readers_get_bounded_memory_and_are_cut() {
    let relay = start_relay().await;
    let rss = Rss::watch(relay.pid());
    let mut conns = Vec::new();
    let mut refused = 0;
    // Three clients (127.0.0.2-4), each with 25 connections asking for the 32 MiB file and
    // reading nothing.
    for reader in 0..3u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + reader));
        for _ in 0..ASKED / FILE {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(from, 0)).unwrap();
            let mut c = socket.connect(relay.http).await.unwrap();
            c.write_all(
                format!("GET /ipfs/{} HTTP/1.1\r\nHost: relay\r\n\r\n", relay.root).as_bytes(),
            )
            .await
            .unwrap();
            conns.push(c);
        }
    }
    // An honest client from another address gets the whole file, verified by its length and
    // bytes, while the others hold their connections.
    let honest = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)))
        .build()
        .unwrap();
    for round in 0..3 {
        let resp = honest
            .get(format!("http://{}/ipfs/{}", relay.http, relay.root))
            .send()
            .await
            .unwrap();
        if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
            continue;
        }
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await.unwrap();
        assert!(
            body[..] == common::data(FILE)[..],
            "round {round}: wrong bytes"
        );
    }
    assert_eq!(refused, 0, "the honest client was refused");
    honest_fetches(&relay, 1).await;
    finish(&relay, &rss, "http").await;
    drop(conns);
}

/// Peers that push more than the relay reads: bitswap streams beyond what it reads at once,
/// and `/cas` streams that go on after their request. What the muxer buffers for them stays
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuffed_unread_streams_get_bounded_memory() {
    let relay = start_relay().await;
    let rss = Rss::watch(relay.pid());
    let mut floods = Vec::new();
    for _ in 0..3 {
        floods.push(common::flood::stuffer(&relay).await);
    }
    honest_fetches(&relay, 1).await;
    let peak = rss.peak();
    eprintln!("stuffed streams: relay peak RSS {} MiB", peak / MIB as u64);
    drop(floods);
    assert!(peak < MAX_RSS, "RSS {} MiB", peak / MIB as u64);
}
