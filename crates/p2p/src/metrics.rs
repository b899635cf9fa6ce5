//! Prometheus metrics of a node: libp2p's own (connections, identify, ping, relay events)
//! and cairn's `/cas` counters (requests by type, blocks and bytes served).

use libp2p::metrics::Recorder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// The metrics a [`crate::Node`] records.
pub struct Metrics {
    libp2p: libp2p::metrics::Metrics,
    requests: Family<Kind, Counter>,
    blocks_served: Counter,
    bytes_served: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers everything in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(registry);
        let cairn = registry.sub_registry_with_prefix("cairn");
        let requests = Family::default();
        cairn.register(
            "cas_requests",
            "/cas requests answered, by type",
            requests.clone(),
        );
        let blocks_served = Counter::default();
        cairn.register(
            "blocks_served",
            "blocks sent to peers over /cas",
            blocks_served.clone(),
        );
        let bytes_served = Counter::default();
        cairn.register(
            "block_bytes_served",
            "block bytes sent to peers over /cas",
            bytes_served.clone(),
        );
        Self {
            libp2p,
            requests,
            blocks_served,
            bytes_served,
        }
    }

    /// Records a swarm event (and the behaviour events libp2p has metrics for).
    pub(crate) fn record_event(
        &self,
        event: &libp2p::swarm::SwarmEvent<crate::behaviour::BehaviourEvent>,
    ) {
        use crate::behaviour::BehaviourEvent;
        use libp2p::swarm::SwarmEvent;
        self.libp2p.record(event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => self.libp2p.record(e),
            _ => {}
        }
    }

    /// Records an answered request of type `kind` ([`crate::cas::Request::kind`]) that carried
    /// `blocks` blocks of `bytes` bytes.
    pub(crate) fn record_answer(&self, kind: &'static str, blocks: usize, bytes: usize) {
        self.requests.get_or_create(&Kind { kind }).inc();
        self.blocks_served.inc_by(blocks as u64);
        self.bytes_served.inc_by(bytes as u64);
    }

    /// Records `blocks` blocks of `bytes` bytes pushed in a `dag` answer after its first
    /// frame (the request was recorded with that frame).
    pub(crate) fn record_pushed(&self, blocks: usize, bytes: usize) {
        self.blocks_served.inc_by(blocks as u64);
        self.bytes_served.inc_by(bytes as u64);
    }
}
