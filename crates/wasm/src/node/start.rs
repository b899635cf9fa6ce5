//! Starting a browser node: checking its options, opening its store, taking its identity,
//! and reaching its relays.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use cairn_core::unixfs::Profile;
use cairn_p2p::sources::{self, IpfsRouting, Sources};
use libp2p::Multiaddr;
use wasm_bindgen::JsValue;

use super::Inner;
use super::store::{InUse, Store};
use crate::error::{Error, ErrorCode, coded, invalid, js_error};
use crate::idb::IdbStore;
use crate::js;
use crate::types::{CreateOptions, Storage};

/// Pinned roots announced again to the DHT when a node starts (the newest pins first).
const MAX_REPROVIDE: usize = 256;

/// How long one source may take for one block before the chain moves on.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's key: kept in the IndexedDB store (so the peer id, and the provider records that
/// name it, outlive reloads), or new for a memory store, or when another tab already runs a
/// node on this store (two nodes must not share a peer id). The returned lock, while held,
/// keeps other tabs off the kept identity.
async fn identity(store: &Store) -> Result<(libp2p::identity::Keypair, Option<js::Lock>), JsValue> {
    use libp2p::identity::Keypair;
    let Store::Idb(idb) = store else {
        return Ok((Keypair::generate_ed25519(), None));
    };
    let lock = match js::try_lock(&format!("cairn-identity-{}", idb.name())).await {
        js::Locked::Held(lock) => Some(lock),
        js::Locked::Taken => return Ok((Keypair::generate_ed25519(), None)),
        js::Locked::Unsupported => None,
    };
    let kept = idb
        .identity()
        .await
        .map_err(|e| coded("cannot read the node's identity", &e))?;
    if let Some(key) = kept.and_then(|k| Keypair::from_protobuf_encoding(&k).ok()) {
        return Ok((key, lock));
    }
    let key = Keypair::generate_ed25519();
    let encoded = key.to_protobuf_encoding().map_err(|e| {
        js_error(
            ErrorCode::Internal,
            format!("cannot encode the node's key: {e}"),
        )
    })?;
    idb.set_identity(&encoded)
        .await
        .map_err(|e| coded("cannot keep the node's identity", &e))?;
    Ok((key, lock))
}

/// The checked options.
struct Checked {
    profile: Profile,
    sources: Sources,
    relays: Vec<Multiaddr>,
    rtc: crate::webrtc::Config,
    direct: bool,
    swarm_key: Option<cairn_p2p::pnet::SwarmKey>,
    transfers: cairn_core::transfer::Config,
    serve_rate: Option<cairn_core::transfer::Rate>,
}

fn check(options: &CreateOptions) -> Result<Checked, JsValue> {
    let platform = crate::platform::check(options)?;
    let profile: Profile = options
        .profile
        .as_deref()
        .unwrap_or("default")
        .parse()
        .map_err(|e| invalid(format!("options.profile: {e}")))?;
    let urls = |what, list: &[String]| {
        list.iter()
            .map(|u| sources::http_url(what, u).map_err(invalid))
            .collect::<Result<Vec<_>, _>>()
    };
    let gateways = urls("gateway", &options.gateways)?;
    let routers = urls("router", &options.routers)?;
    let swarm_key = options
        .swarm_key
        .as_deref()
        .map(cairn_p2p::pnet::SwarmKey::parse)
        .transpose()
        .map_err(|e| invalid(format!("options.swarmKey: {e}")))?;
    if swarm_key.is_some() && !(gateways.is_empty() && routers.is_empty()) {
        web_sys::console::warn_1(
            &"cairn: in a private network, options.gateways and options.routers are still asked over HTTP, outside it"
                .into(),
        );
    }
    let relays = options
        .relays
        .iter()
        .map(|r| {
            r.parse::<Multiaddr>().map_err(|e| {
                Error::with_source(
                    ErrorCode::InvalidArgument,
                    format!("relay address \"{r}\" is not a multiaddr"),
                    &e,
                )
                .into()
            })
        })
        .collect::<Result<Vec<_>, JsValue>>()?;
    let mut rtc = crate::webrtc::Config {
        ice_servers: options.ice_servers.clone(),
        ..Default::default()
    };
    for s in &rtc.ice_servers {
        if !(s.starts_with("stun:") || s.starts_with("turn:") || s.starts_with("turns:")) {
            return Err(invalid(format!(
                "ICE server \"{s}\" is not a stun: or turn: URL (for example stun:stun.l.google.com:19302)"
            )));
        }
    }
    match options.max_webrtc {
        Some(0) => {
            return Err(invalid(
                "options.maxWebrtc is 0; use at least 1, or direct: false to turn /webrtc off",
            ));
        }
        Some(max) => rtc.max_connections = max as usize,
        None => {}
    }
    let sources = Sources {
        peers: true,
        // A fetch that starts, or resumes, without the right peer connected finds it.
        discover: true,
        named: Vec::new(),
        ipfs: Some(IpfsRouting {
            dht: true,
            routers,
            dialable: cairn_p2p::ipfs::browser_dialable,
        }),
        gateways,
        peer_timeout: SOURCE_TIMEOUT,
        ipfs_timeout: SOURCE_TIMEOUT,
        gateway_timeout: SOURCE_TIMEOUT,
        // What peers send is hashed by WebCrypto, several answers at once.
        verify: Some(std::sync::Arc::new(crate::webcrypto::WebCrypto::new())),
    };
    Ok(Checked {
        profile,
        sources,
        relays,
        rtc,
        direct: options.direct.unwrap_or_else(|| {
            if !platform.rtc {
                web_sys::console::info_1(
                    &"cairn: no RTCPeerConnection here (a Worker has none): connections to other browsers stay on the relay"
                        .into(),
                );
            }
            platform.rtc
        }),
        swarm_key,
        transfers: super::transfers::config(options.transfers.as_ref())?,
        serve_rate: super::transfers::serve_rate(options.transfers.as_ref())?,
    })
}

async fn open_store(options: &CreateOptions) -> Result<Store, JsValue> {
    Ok(match options.storage.unwrap_or_default() {
        Storage::Indexeddb => {
            let name = options.name.clone().unwrap_or_else(|| "default".into());
            Store::Idb(
                IdbStore::open(&name, options.quota)
                    .await
                    .map_err(|e| coded("cannot open the IndexedDB store", &e))?,
            )
        }
        Storage::Memory => Store::memory(),
    })
}

/// How long [`first_reservations`] waits for every relay's first outcome.
const RESERVE_WAIT: Duration = Duration::from_secs(15);

/// Once one relay holds a reservation, how long the others may still take before the node
/// starts without them (it keeps trying them in the background).
const OTHERS_GRACE: Duration = Duration::from_secs(2);

/// Waits until each relay has either accepted a reservation or failed once (to be dialed,
/// or to reserve) — at most [`RESERVE_WAIT`], and no more than [`OTHERS_GRACE`] once one
/// holds a reservation; returns what each relay without a reservation said. The node keeps
/// trying those in the background ([`cairn_p2p::node::Config::relays`]).
async fn first_reservations(node: &cairn_p2p::Node, relays: &[Multiaddr]) -> Vec<String> {
    use cairn_core::rt::Instant;
    use futures::StreamExt;
    if relays.is_empty() {
        return Vec::new();
    }
    let mut events = node.events();
    let settled = |p: &cairn_p2p::node::BootstrapPeer| {
        p.reserved || p.failures > 0 || p.reservation_error.is_some()
    };
    let started = Instant::now();
    let peers = loop {
        let peers = node.bootstrap_peers().await.unwrap_or_default();
        let relays = || peers.iter().filter(|p| p.relay);
        let one = relays().any(|p| p.reserved);
        let limit = if one { OTHERS_GRACE } else { RESERVE_WAIT };
        let left = limit.saturating_sub(started.elapsed());
        if relays().all(settled) || left.is_zero() {
            break peers;
        }
        if let Some(None) = cairn_core::rt::timeout(left, events.next()).await {
            break peers; // the node stopped
        }
    };
    peers
        .iter()
        .filter(|p| p.relay && !p.reserved)
        .map(|p| {
            let why = p
                .reservation_error
                .as_ref()
                .map(|e| format!("no reservation ({e})"))
                .or_else(|| p.last_error.clone())
                .unwrap_or_else(|| format!("no answer within {} s", started.elapsed().as_secs()));
            format!("{}: {why}", p.addr)
        })
        .collect()
}

/// Tells the DHT again what this node holds: its records name this peer id, which the
/// store keeps, and its new relayed addresses.
fn reprovide(node: cairn_p2p::Node, store: Store) {
    wasm_bindgen_futures::spawn_local(async move {
        let pins = store.pins().await.unwrap_or_default();
        for root in pins.into_iter().rev().take(MAX_REPROVIDE) {
            let provided =
                cairn_core::rt::timeout(Duration::from_secs(10), node.provide(root)).await;
            if !matches!(provided, Some(Ok(()))) {
                web_sys::console::warn_1(&format!("cairn: could not announce {root} again").into());
            }
        }
    });
}

/// Starts a node with `options`.
pub(super) async fn start(options: CreateOptions) -> Result<Inner, JsValue> {
    let checked = check(&options)?;
    let store = open_store(&options).await?;
    // The circuit listen addresses are announced as external ones (the default), so
    // provider records carry them.
    // Each relay is kept: dialed again with backoff while it is down, and a reservation
    // asked for again when one is lost; the node stays reachable through the others.
    let config = cairn_p2p::node::Config {
        upgrade_direct: checked.direct,
        relays: checked.relays.clone(),
        swarm_key: checked.swarm_key.clone(),
        budget: cairn_p2p::budget::Budget::new(cairn_p2p::budget::Caps {
            serve_rate: checked.serve_rate,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (key, lock) = identity(&store).await?;
    let node = crate::net::build(key, config, checked.rtc, store.clone())
        .map_err(|e| js_error(ErrorCode::Internal, format!("cannot start libp2p: {e}")))?;
    let failures = first_reservations(&node, &checked.relays).await;
    let reserved = failures.len() < checked.relays.len();
    if !checked.relays.is_empty() && !reserved {
        node.stop().await;
        return Err(js_error(
            ErrorCode::Unreachable,
            format!(
                "cannot reach any relay: {}. Check the addresses and that the relay runs",
                failures.join("; ")
            ),
        ));
    }
    for f in &failures {
        web_sys::console::warn_1(&format!("cairn: relay {f}").into());
    }
    if reserved {
        reprovide(node.clone(), store.clone());
    }
    let in_use = InUse::default();
    // The queue is kept with the store by the tab that holds its identity (another tab on
    // the same store runs its own, unkept).
    let journal: Option<std::sync::Arc<dyn cairn_core::transfer::Journal>> = match (&store, &lock) {
        (Store::Idb(idb), Some(_)) => Some(std::sync::Arc::new(crate::idb::IdbJournal(
            idb.clone(),
            crate::idb::TRANSFERS,
        ))),
        _ => None,
    };
    let fetcher = super::transfers::NodeFetcher {
        node: node.clone(),
        store: store.clone(),
        sources: checked.sources.clone(),
        in_use: in_use.clone(),
    };
    // The manager shares its fetcher as an `Arc` on every platform; nothing is Send here.
    #[allow(clippy::arc_with_non_send_sync)]
    let (transfers, driver) = cairn_core::transfer::Transfers::open(
        checked.transfers,
        std::sync::Arc::new(fetcher),
        journal,
    )
    .await
    .map_err(|e| coded("cannot read the transfer queue", &e))?;
    wasm_bindgen_futures::spawn_local(driver);
    // Kept with the store like the queue, by the tab that holds its identity.
    #[allow(clippy::arc_with_non_send_sync)]
    let replicas = match (&store, &lock) {
        (Store::Idb(idb), Some(_)) => cairn_p2p::pinning::Replicas::with_journal(
            node.clone(),
            std::sync::Arc::new(crate::idb::IdbJournal(idb.clone(), crate::idb::REPLICAS)),
        )
        .await
        .map_err(|e| coded("cannot read the replicas kept elsewhere", &e))?,
        _ => cairn_p2p::pinning::Replicas::new(node.clone()),
    };
    maintain_replicas(node.clone(), replicas.clone());
    Ok(Inner {
        node,
        store,
        profile: checked.profile,
        sources: checked.sources,
        in_use,
        relayed: !checked.relays.is_empty(),
        direct: checked.direct,
        lock: Rc::new(RefCell::new(lock)),
        transfers,
        replicas,
    })
}

/// How often the copies kept elsewhere are checked (and replaced when lost).
const REPLICA_CHECKS: Duration = Duration::from_secs(600);

/// Checks the copies kept on other peers every [`REPLICA_CHECKS`] until the node stops.
fn maintain_replicas(node: cairn_p2p::Node, replicas: cairn_p2p::pinning::Replicas) {
    use futures::{FutureExt, StreamExt};
    wasm_bindgen_futures::spawn_local(async move {
        let mut events = node.events();
        loop {
            let stopped = async { while events.next().await.is_some() {} };
            futures::select! {
                _ = cairn_core::rt::sleep(REPLICA_CHECKS).fuse() => {}
                _ = stopped.fuse() => return,
            }
            let candidates: Vec<libp2p::PeerId> = node.peers().into_keys().collect();
            for (root, out) in replicas.maintain(&candidates).await {
                for f in out.failed_checks {
                    web_sys::console::warn_1(
                        &format!("cairn: a copy of {root} was lost: {f}").into(),
                    );
                }
            }
        }
    });
}
