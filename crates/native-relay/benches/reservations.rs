//! Relay memory per reservation: a `cairn-relay` process (the release binary) holds 1,000
//! reservations from 1,000 peers; its resident memory is read from `/proc` when idle, with
//! the 1,000 connections open, and with a reservation on each. Prints one JSON line and a
//! summary. Not a criterion benchmark: one measured run, bounded in time (it gives up after
//! 120 s).
//!
//! Run with `cargo xtask bench` (or `cargo bench -p cairn-relay --bench reservations`).

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, relay, tcp};

const PEERS: usize = 1000;

#[path = "../tests/common/mod.rs"]
mod common;
use common::Kill;

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Lets the relay settle (allocations from handshakes finish) before reading its memory.
async fn settled(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss(pid)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Connected,
    Reserved,
}

/// One peer: connects to `relay`, reports, waits for `reserve`, then reserves a slot and
/// reports again; holds the connection until `stop`.
async fn peer(
    relay: Multiaddr,
    report: tokio::sync::mpsc::Sender<Stage>,
    mut reserve: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            cairn_relay::node::yamux_config,
        )
        .unwrap()
        .with_relay_client(noise::Config::new, cairn_relay::node::yamux_config)
        .unwrap()
        .with_behaviour(|_, client| client)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.dial(relay.clone()).unwrap();
    let mut reserving = false;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => {
                    let _ = report.send(Stage::Connected).await;
                }
                SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { renewal: false, .. }) => {
                    let _ = report.send(Stage::Reserved).await;
                }
                _ => {}
            },
            Ok(()) = reserve.changed(), if !reserving => {
                reserving = true;
                swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)).unwrap();
            }
            _ = stop.changed() => return,
        }
    }
}

async fn wait_for(
    rx: &mut tokio::sync::mpsc::Receiver<Stage>,
    stage: Stage,
    deadline: Instant,
) -> usize {
    let mut n = 0;
    while n < PEERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(s)) if s == stage => n += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    n
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmax_reservations = {}\nreservations_per_ip_burst = {}\n",
            PEERS * 2,
            PEERS * 2
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--identity")
        .arg(dir.path().join("id.key"))
        .arg("--config")
        .arg(&config)
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let relay = Kill(child);
    let pid = relay.0.id();
    let addr: Multiaddr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("/ip"))
        .expect("the relay prints its address")
        .parse()
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let idle = settled(pid).await;
        let (report, mut reports) = tokio::sync::mpsc::channel(PEERS * 2);
        let (reserve_tx, reserve) = tokio::sync::watch::channel(false);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        for _ in 0..PEERS {
            tokio::spawn(peer(
                addr.clone(),
                report.clone(),
                reserve.clone(),
                stop.clone(),
            ));
        }
        let connected = wait_for(&mut reports, Stage::Connected, deadline).await;
        let with_connections = settled(pid).await;
        reserve_tx.send(true).unwrap();
        let reserved = wait_for(&mut reports, Stage::Reserved, deadline).await;
        let with_reservations = settled(pid).await;
        let _ = stop_tx.send(true);

        let per = |a: u64, b: u64, n: usize| (a.saturating_sub(b)) as f64 / n.max(1) as f64;
        let per_connection = per(with_connections, idle, connected);
        let per_reservation = per(with_reservations, with_connections, reserved);
        let json = format!(
            "{{\"peers\":{PEERS},\"connected\":{connected},\"reserved\":{reserved},\"rss_idle\":{idle},\"rss_connected\":{with_connections},\"rss_reserved\":{with_reservations},\"bytes_per_connection\":{per_connection:.0},\"bytes_per_reservation\":{per_reservation:.0}}}"
        );
        println!("{json}");
        println!(
            "relay RSS: idle {:.1} MiB; {connected} connections {:.1} MiB ({:.1} KiB each); \
             {reserved} reservations on them {:.1} MiB ({:.1} KiB more each)",
            idle as f64 / 1048576.0,
            with_connections as f64 / 1048576.0,
            per_connection / 1024.0,
            with_reservations as f64 / 1048576.0,
            per_reservation / 1024.0,
        );
        assert_eq!(reserved, PEERS, "every peer got its reservation");
    });
    drop(relay);
}
