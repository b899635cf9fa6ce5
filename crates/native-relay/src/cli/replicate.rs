//! `cairn-relay replicate`: asks peers to keep copies of a DAG this store holds
//! ([`cairn_p2p::pinning`]), checks them, and (with `--watch`) keeps the count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_core::source::{Chain, Context};
use cairn_core::store::BlockStore;
use cairn_p2p::pinning::Replicas;
use libp2p::{Multiaddr, PeerId};

use super::{Exit, Failure, fail, load_swarm_key, open_store};

/// The DAG's blocks and its size, read from the store alone.
async fn blocks_of<S: BlockStore + Clone + 'static>(
    store: &S,
    root: cairn_core::Cid,
) -> Result<(Vec<cairn_core::Cid>, u64), Failure> {
    let chain = Chain::new().local(store.clone());
    let mut blocks = Vec::new();
    let report = cairn_core::dag::fetch(
        &chain,
        store,
        root,
        Default::default(),
        &Context::new(),
        |p| {
            if let Some((c, _)) = p.last {
                blocks.push(c);
            }
        },
    )
    .await
    .map_err(|e| {
        fail(
            Exit::NotFound,
            format!("{root} is not held in full in the store (fetch it first): {e}"),
        )
    })?;
    Ok((blocks, report.progress.bytes_done))
}

pub(super) async fn run(
    cid: &str,
    replicas: usize,
    peers: &[Multiaddr],
    store: Option<PathBuf>,
    swarm_key: Option<&Path>,
    watch: Option<u64>,
) -> Result<(), Failure> {
    if replicas == 0 {
        return Err(fail(Exit::Usage, "--replicas must be at least 1"));
    }
    if watch == Some(0) {
        return Err(fail(Exit::Usage, "--watch must be at least 1 second"));
    }
    let root = cairn_core::cid::parse(cid.trim_start_matches("/ipfs/"))
        .map_err(|e| fail(Exit::Usage, e))?;
    let mut ids = Vec::new();
    for p in peers {
        match p.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(id)) => ids.push(id),
            _ => {
                return Err(fail(
                    Exit::Usage,
                    format!("peer address {p} does not end in /p2p/<peer id>"),
                ));
            }
        }
    }
    let store = open_store(store).await?;
    let (blocks, bytes) = blocks_of(&store, root).await?;
    let swarm_key = match swarm_key {
        Some(p) => Some(load_swarm_key(p, Exit::Usage)?),
        None => None,
    };
    // This node serves its store over /cas: the peers fetch the copies from it.
    let config = cairn_p2p::node::Config {
        advertise_listen_addrs: false,
        swarm_key,
        ..Default::default()
    };
    let builder =
        cairn_p2p::Builder::new(libp2p::identity::Keypair::generate_ed25519()).config(config);
    let node = crate::node::build(
        builder,
        store.clone(),
        &Default::default(),
        &mut Default::default(),
    )
    .map_err(|e| fail(Exit::Failure, e))?;
    // Peers that go away are dialed again with backoff (one that comes back can be asked).
    let _ = node.keep(peers.to_vec(), false).await;
    node.wait_for(&ids, Duration::from_secs(20), |p| p.identified())
        .await;
    let replicator = Replicas::new(node.clone());
    let mut last: Vec<PeerId> = Vec::new();
    loop {
        let out = replicator
            .ensure(root, bytes, &blocks, replicas, &ids)
            .await;
        for f in out.failed_checks.iter().chain(&out.refused) {
            eprintln!("warning: {f}");
        }
        if out.confirmed != last {
            for p in &out.confirmed {
                println!("{p} keeps {root} (trust {:.1})", replicator.trust().of(p));
            }
            last = out.confirmed.clone();
        }
        let Some(every) = watch else {
            node.stop().await;
            return if out.confirmed.len() >= replicas {
                Ok(())
            } else {
                Err(fail(
                    Exit::NotFound,
                    format!(
                        "{} of {replicas} copies confirmed: no other peer would keep one (see the warnings)",
                        out.confirmed.len()
                    ),
                ))
            };
        };
        if out.confirmed.len() < replicas {
            eprintln!(
                "warning: {} of {replicas} copies; trying again in {every} s",
                out.confirmed.len()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = super::shutdown_signal() => {
                node.stop().await;
                return Ok(());
            }
        }
    }
}
