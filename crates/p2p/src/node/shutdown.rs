//! Stopping, in two steps within the grace period: first the listeners close, new
//! connections and requests are refused and the `/cas` answers in flight are written; then
//! every connection is closed gracefully (its muxer flushes what is queued, so the last
//! answers reach their peers), and the driver lets the swarm go.

use std::time::Duration;

use cairn_core::BoxFuture;
use cairn_core::rt::Instant;
use futures::FutureExt;
use futures::future::Fuse;
use libp2p::swarm::Swarm;

use super::connections::Connections;
use crate::behaviour::Behaviour;
use crate::cas::ServerHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Answers in flight are being finished.
    Draining,
    /// Connections are being closed.
    Closing,
}

/// The stop sequence's state.
pub(crate) struct Shutdown {
    phase: Phase,
    deadline: Option<Instant>,
    /// Resolves when the current phase is over (or out of time); never while running.
    pub(crate) done: Fuse<BoxFuture<'static, ()>>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self {
            phase: Phase::Running,
            deadline: None,
            done: Fuse::terminated(),
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Starts stopping (once): closes the listeners and drains the `/cas` server.
    pub(crate) fn begin(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        connections: &mut Connections,
        server: Option<ServerHandle>,
        grace: Duration,
    ) {
        if self.stopping() {
            return;
        }
        self.phase = Phase::Draining;
        let deadline = Instant::now() + grace;
        self.deadline = Some(deadline);
        connections.close_listeners(swarm);
        self.done = cairn_core::boxed(async move {
            let Some(server) = server else { return };
            match cairn_core::rt::timeout(grace, server.drain()).await {
                Some(()) => tracing::debug!("stopping: every answer was written"),
                None => tracing::warn!(
                    "stopping: cutting /cas answers still in flight after the grace period"
                ),
            }
        })
        .fuse();
    }

    /// The current phase is over: `true` when the driver may let the swarm go, else the
    /// connections are now being closed (and [`Self::connection_closed`] tells when the
    /// last one is).
    pub(crate) fn phase_over(&mut self, swarm: &mut Swarm<Behaviour>) -> bool {
        if self.phase != Phase::Draining {
            return true;
        }
        let peers: Vec<_> = swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return true;
        }
        self.phase = Phase::Closing;
        for p in peers {
            let _ = swarm.disconnect_peer_id(p);
        }
        // What is left of the grace period.
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        self.done = cairn_core::boxed(cairn_core::rt::sleep(left)).fuse();
        false
    }

    /// A connection closed: `true` when closing and it was the last.
    pub(crate) fn connection_closed(&self, swarm: &Swarm<Behaviour>) -> bool {
        self.phase == Phase::Closing && swarm.network_info().num_peers() == 0
    }
}
