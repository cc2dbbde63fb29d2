//! Plan generation and pricing by the cost model at N = 8, 64, 512 and 4096.
//!
//! - `generate/<alg>/<N>`: every rank's plan for a 64 MiB f32 call, one
//!   rank after another (what a pricer has to produce);
//! - `price/<alg>/<N>`: `braid_topologies::price_call` on the same call
//!   (generation, compaction and the event simulation together), on a
//!   20 µs / 10 Gbit/s network;
//! - `tune/all_reduce/<N>`: every all_reduce candidate at 1 MiB.
//!
//! Ring all-reduce at N = 4096 is 33.5 million messages, so its samples take
//! seconds; the group runs few samples.
//!
//! `cargo bench -p braid-bench --bench plans -- --warm-up-time 1`

use std::hint::black_box;
use std::time::Duration;

use braid_topologies::{
    generate, price_call, tune, Algorithm, Collective, Counts, Network, PlanOptions, Shape,
    TuneOptions,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

const RANKS: [usize; 4] = [8, 64, 512, 4096];
const COUNT: u64 = 16 << 20; // 64 MiB of f32

fn cases() -> [(Algorithm, Collective); 4] {
    [
        (Algorithm::Ring, Collective::AllReduce),
        (Algorithm::HalvingDoubling, Collective::AllReduce),
        (Algorithm::Tree, Collective::Broadcast),
        (Algorithm::Bruck, Collective::AllGather),
    ]
}

fn shape(c: Collective, n: usize) -> Shape {
    let counts = match c {
        Collective::AllGather => Counts::Blocks(vec![COUNT / n as u64; n]),
        _ => Counts::Single(COUNT),
    };
    Shape::new(c, n, 0, counts)
}

fn net() -> Network {
    Network::uniform(20e-6, 1.25e9)
        .with_gamma(0.05e-9)
        .with_copy(0.05e-9)
        .with_overhead(1e-6)
}

fn slow<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    g
}

fn generation(c: &mut Criterion) {
    let mut g = slow(c, "generate");
    let options = PlanOptions::default();
    for (alg, coll) in cases() {
        for n in RANKS {
            let s = shape(coll, n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(alg.name(), n), &s, |b, s| {
                b.iter(|| {
                    let mut steps = 0;
                    for r in 0..n {
                        steps += generate(alg, s, r, &options).unwrap().steps.len();
                    }
                    black_box(steps)
                })
            });
        }
    }
    g.finish();
}

fn pricing(c: &mut Criterion) {
    let mut g = slow(c, "price");
    let (options, net) = (PlanOptions::default(), net());
    for (alg, coll) in cases() {
        for n in RANKS {
            let s = shape(coll, n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(alg.name(), n), &s, |b, s| {
                b.iter(|| black_box(price_call(alg, s, &options, &net, 4).unwrap().time))
            });
        }
    }
    g.finish();
}

fn tuning(c: &mut Criterion) {
    let mut g = slow(c, "tune");
    let (opts, net) = (TuneOptions::default(), net());
    for n in RANKS {
        g.bench_with_input(BenchmarkId::new("all_reduce_1MiB", n), &n, |b, &n| {
            b.iter(|| {
                let t = tune(Collective::AllReduce, 1 << 20, n, 4, &net, &opts).unwrap();
                black_box(t.best().map(|c| c.algorithm))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, generation, pricing, tuning);
criterion_main!(benches);
