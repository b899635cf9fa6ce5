//! `cargo xtask bench`: import throughput beside raw hashing of the same bytes (the
//! importer's ceiling), for both hashes and profiles on 256 MiB; and memory-store rates.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use cairn_core::store::{BlockStore, Memory, Null};
use cairn_core::unixfs::{self, Profile};
use cairn_core::{Block, Codec, HashAlg};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const INPUT: usize = 256 << 20;

fn input() -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut v = vec![0u8; INPUT];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

fn import(c: &mut Criterion) {
    let data = input();
    let mut hash = c.benchmark_group("hash");
    hash.throughput(Throughput::Bytes(INPUT as u64))
        .sample_size(10);
    for alg in [HashAlg::Sha2_256, HashAlg::Blake3] {
        hash.bench_function(alg.to_string(), |b| {
            b.iter(|| {
                for chunk in data.chunks(Profile::DEFAULT.chunk_size) {
                    black_box(alg.digest(chunk));
                }
            })
        });
    }
    hash.finish();
    let mut g = c.benchmark_group("import");
    g.throughput(Throughput::Bytes(INPUT as u64))
        .sample_size(10);
    for alg in [HashAlg::Sha2_256, HashAlg::Blake3] {
        for profile in [Profile::DEFAULT, Profile::UNIXFS_V1_2025] {
            g.bench_function(format!("{alg}/{profile}"), |b| {
                b.iter(|| {
                    futures::executor::block_on(unixfs::import(
                        &Null::new(),
                        &data[..],
                        profile,
                        alg,
                        |_| {},
                    ))
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

fn memory_store(c: &mut Criterion) {
    let blocks: Vec<Block> = (0..1000u32)
        .map(|i| {
            let mut d = vec![0u8; 4096];
            d[..4].copy_from_slice(&i.to_le_bytes());
            Block::from_data(Codec::Raw, HashAlg::Sha2_256, d).unwrap()
        })
        .collect();
    let mut g = c.benchmark_group("memory-store");
    g.throughput(Throughput::Elements(blocks.len() as u64));
    g.bench_function("put_many", |b| {
        b.iter(|| {
            let s = Memory::new();
            futures::executor::block_on(s.put_many(blocks.clone())).unwrap()
        })
    });
    let s = Memory::new();
    futures::executor::block_on(s.put_many(blocks.clone())).unwrap();
    g.bench_function("get", |b| {
        b.iter(|| {
            for blk in &blocks {
                black_box(futures::executor::block_on(s.get(blk.cid())).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = import, memory_store
}
criterion_main!(benches);
