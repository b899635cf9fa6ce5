//! The network simulation, small (`tests/sim`): 5 relays, 20 nodes, each node fetching three
//! others' files found in the DHT, with one relay stopped halfway. Every fetch must succeed.
//! `cargo xtask bench network` runs it at 20, 100 and 300 nodes.

mod common;
mod sim;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_on_five_relays_find_and_fetch_each_others_files_through_a_relay_loss() {
    let report = sim::run(sim::Params {
        relays: 5,
        nodes: 20,
        fetches: 3,
        file_len: 300 * 1024,
        churn: true,
        parallel: 8,
        seed: 7,
        processes: 1,
    })
    .await;
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        report.not_provided.is_empty(),
        "every node provides its file: {:#?}",
        report.not_provided
    );
    assert_eq!(report.fetches, 60);
    assert!(
        report.failures.is_empty(),
        "every fetch succeeds, a relay lost halfway or not: {:#?}",
        report.failures
    );
    assert_eq!(report.relay_peers[4], None, "the fifth relay was stopped");
    // Connections nobody keeps close once idle: a node is left with its two bootstrap
    // relays and GossipSub's mesh (6 to 12), not every peer its DHT lookups and fetches
    // reached (23 of 24 each, measured with GossipSub's streams keeping connections). The
    // median, because one node now and then still holds many for a while (47 of 104 once
    // in the 100-node bench; not understood yet).
    assert!(
        report.idle_peers_median <= 12.0,
        "peers per node once idle: median {}, most {}",
        report.idle_peers_median,
        report.idle_peers_max
    );
    assert!(
        report.idle_open_files < report.peak_open_files / 2,
        "files open once idle {} of a peak of {}",
        report.idle_open_files,
        report.peak_open_files
    );
    assert!(
        report.relay_records.iter().filter(|&&n| n > 0).count() >= 3,
        "provider records spread over the relays: {:?}",
        report.relay_records
    );
}
