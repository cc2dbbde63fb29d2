//! The reduction kernel `braid::reduce_into` (sum) against a plain memcpy of
//! the same size, in GB/s (10^9 B/s, `Throughput::BytesDecimal`) of the destination buffer, so that each group reads
//! as a ratio to memcpy. For sizes at or above `braid::PARALLEL_REDUCE_BYTES`
//! (where `reduce_into` splits the work across cores with rayon) the same
//! reduction also runs on one thread, in pieces below the threshold.
//!
//! `cargo bench -p braid-bench --bench reduce -- --measurement-time 1 --warm-up-time 0.5`

use std::hint::black_box;
use std::time::Duration;

use braid::{bf16, reduce_into, Element, ReduceOp, PARALLEL_REDUCE_BYTES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Destination buffer sizes in bytes.
const SIZES: [usize; 4] = [4 << 10, 256 << 10, 4 << 20, 64 << 20];

/// Pieces of the one-thread path: rayon's task size in `reduce_into`, well
/// below the threshold, so that each call stays on the calling thread.
const ONE_THREAD_PIECE: usize = PARALLEL_REDUCE_BYTES / 4;

fn label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{}MiB", b >> 20),
        b => format!("{}KiB", b >> 10),
    }
}

fn sum_kernel<T: Element>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("reduce_sum_{}", T::DTYPE));
    for bytes in SIZES {
        let n = bytes / std::mem::size_of::<T>();
        // Small integers: sums stay finite and never denormal in every type.
        let src: Vec<T> = (0..n).map(|i| T::from_i64((i % 7) as i64 + 1)).collect();
        let mut dst: Vec<T> = vec![T::from_i64(1); n];
        group.throughput(Throughput::BytesDecimal(bytes as u64));
        group.sample_size(if bytes >= PARALLEL_REDUCE_BYTES {
            10
        } else {
            50
        });
        let id = label(bytes);
        group.bench_function(BenchmarkId::new("memcpy", &id), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
        group.bench_function(BenchmarkId::new("reduce_into", &id), |b| {
            b.iter(|| reduce_into(ReduceOp::Sum, black_box(&mut dst), black_box(&src)))
        });
        if bytes >= PARALLEL_REDUCE_BYTES {
            let piece = ONE_THREAD_PIECE / std::mem::size_of::<T>();
            group.bench_function(BenchmarkId::new("reduce_into_1thread", &id), |b| {
                b.iter(|| {
                    for (d, s) in dst.chunks_mut(piece).zip(src.chunks(piece)) {
                        reduce_into(ReduceOp::Sum, black_box(d), black_box(s));
                    }
                })
            });
        }
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    sum_kernel::<f32>(c);
    sum_kernel::<f64>(c);
    sum_kernel::<bf16>(c);
    sum_kernel::<i32>(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = kernels
}
criterion_main!(benches);
