//! all_reduce (f32 sum) at 4 in-process ranks, per size and per algorithm
//! (plus `auto`, the size rule's choice), in GB/s of algbw (size / time).
//!
//! The ranks are threads that live for the whole bench; for `iters` calls
//! criterion asks for, every rank passes a barrier, then makes the calls back
//! to back (nccl-tests style); the time is the slowest rank's.
//!
//! `cargo bench -p braid-bench --bench collectives`

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid::{local_group_with, Algorithm, Collective, Communicator, Config, ReduceOp};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const RANKS: usize = 4;
/// Sizes in bytes (the all_reduce buffer).
const SIZES: [usize; 3] = [4 << 10, 256 << 10, 4 << 20];

/// What the main thread asks every rank to do.
#[derive(Clone, Copy)]
struct Job {
    algorithm: Option<Algorithm>,
    count: usize,
    iters: u64,
}

/// Rank threads that run jobs on demand.
struct Group {
    jobs: Vec<mpsc::Sender<Job>>,
    done: mpsc::Receiver<braid::Result<Duration>>,
    threads: Vec<JoinHandle<()>>,
}

fn rank_thread(
    mut comm: Communicator,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<braid::Result<Duration>>,
) {
    let (mut send, mut recv) = (Vec::<f32>::new(), Vec::<f32>::new());
    for job in jobs {
        let result = (|| {
            comm.set_algorithm(Collective::AllReduce, job.algorithm)?;
            send.resize(job.count, 1.0);
            recv.resize(job.count, 0.0);
            comm.barrier()?;
            let t = Instant::now();
            for _ in 0..job.iters {
                comm.all_reduce(&send, &mut recv, ReduceOp::Sum)?;
            }
            Ok(t.elapsed())
        })();
        if done.send(result).is_err() {
            return;
        }
    }
}

impl Group {
    fn new(n: usize) -> Group {
        let (done_tx, done) = mpsc::channel();
        let (jobs, threads) = local_group_with(n, Config::default())
            .expect("an in-process group")
            .into_iter()
            .map(|comm| {
                let (tx, rx) = mpsc::channel();
                let done = done_tx.clone();
                (tx, std::thread::spawn(move || rank_thread(comm, rx, done)))
            })
            .unzip();
        Group {
            jobs,
            done,
            threads,
        }
    }

    /// Runs `job` on every rank; the slowest rank's time.
    fn run(&self, job: Job) -> Duration {
        for tx in &self.jobs {
            tx.send(job).expect("rank thread alive");
        }
        (0..self.jobs.len())
            .map(|_| {
                self.done
                    .recv()
                    .expect("rank thread alive")
                    .expect("all_reduce")
            })
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{}MiB", b >> 20),
        b => format!("{}KiB", b >> 10),
    }
}

fn all_reduce(c: &mut Criterion) {
    let group_of_ranks = Group::new(RANKS);
    let mut group = c.benchmark_group(format!("all_reduce_f32_{RANKS}ranks"));
    group.sample_size(10);
    for bytes in SIZES {
        group.throughput(Throughput::BytesDecimal(bytes as u64));
        let candidates = std::iter::once(None)
            .chain(Collective::AllReduce.algorithms().iter().copied().map(Some));
        for algorithm in candidates {
            let name = algorithm.map_or("auto", |a| a.name());
            let job = |iters| Job {
                algorithm,
                count: bytes / 4,
                iters,
            };
            group.bench_function(BenchmarkId::new(name, label(bytes)), |b| {
                b.iter_custom(|iters| group_of_ranks.run(job(iters)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = all_reduce
}
criterion_main!(benches);
