//! `cargo xtask bench network`: the network simulation (`tests/sim`) at 20, 100 and 300
//! nodes on 5 relays, the 100-node run with a relay stopped halfway; writes
//! `target/bench/network.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/sim/mod.rs"]
mod sim;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    for (nodes, churn) in [(20, false), (100, false), (100, true), (300, false)] {
        let report = rt.block_on(sim::run(sim::Params {
            relays: 5,
            nodes,
            fetches: 3,
            file_len: 300 * 1024,
            churn,
            parallel: 16,
            seed: 11,
        }));
        println!(
            "network: {nodes:>3} nodes{}: {}/{} fetches; provider lookup median {:.0} ms, p95 {:.0} ms; \
             first byte median {:.0} ms, p95 {:.0} ms; DHT peers asked per lookup median {:.0}, p95 {:.0}; \
             records per relay {:?}; set-up {:.1} s",
            if churn {
                " (a relay of 5 stopped halfway)"
            } else {
                ""
            },
            report.succeeded,
            report.fetches,
            report.find_ms_median,
            report.find_ms_p95,
            report.first_byte_ms_median,
            report.first_byte_ms_p95,
            report.dht_requests_median,
            report.dht_requests_p95,
            report.relay_records,
            report.setup_s,
        );
        runs.push(serde_json::json!({ "churn": churn, "report": report }));
    }
    // Where `cargo xtask bench` wants the JSON (CAIRN_BENCH_OUT), else target/bench/.
    let out = std::env::var_os("CAIRN_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/network.json")
        });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&runs).unwrap()).unwrap();
}
