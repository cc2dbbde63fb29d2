//! `BRAID_SHAPE`: communicators over shaped links stay exact, are no faster
//! than the cost model says such a network allows, and the setting reaches
//! in-process groups and `Communicator::connect` (shared memory) alike.

mod common;

use std::time::{Duration, Instant};

use braid::store::MemoryStore;
use braid::{local_group_with, Algorithm, Collective, Communicator, Config, ErrorKind, ReduceOp};
use braid_topologies::{price_call, Counts, Injection, Network, PlanOptions, Shape};
use braid_transports::local::{endpoints, DEFAULT_PAIR_CAPACITY};
use braid_transports::shape::{LinkShape, Ports, ShapedTransport};
use common::ranks::local_launch;
use common::{sweep_comm, MOVING, REDUCING};

/// Runs `f` on every rank of an in-process group of `n` whose links are
/// shaped by `shape`; results in rank order.
fn run_shaped<R: Send>(
    n: usize,
    shape: LinkShape,
    config: Config,
    f: impl Fn(&mut Communicator) -> R + Sync,
) -> Vec<R> {
    let group: Vec<Communicator> = endpoints(n, DEFAULT_PAIR_CAPACITY)
        .into_iter()
        .map(|ep| {
            let t = ShapedTransport::new(Box::new(ep), shape);
            Communicator::new(Box::new(t), config.clone())
        })
        .collect();
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|mut c| s.spawn(move || f(&mut c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn config() -> Config {
    Config::default().with_timeout(Duration::from_secs(20))
}

fn assert_no_failures(failures: Vec<Vec<String>>) {
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn every_collective_is_exact_over_shaped_links() {
    let counts = [0, 1, 13, 1031];
    for (n, shape) in [
        (3, LinkShape::new(Duration::from_micros(100), 1.0)),
        (
            4,
            LinkShape::new(Duration::from_micros(50), 2.0).with_ports(Ports::PerRank),
        ),
    ] {
        let start = Instant::now();
        let failures = run_shaped(n, shape, config(), |comm| {
            let mut f = sweep_comm(comm, &REDUCING, false, &counts);
            f.extend(sweep_comm(comm, &MOVING, false, &counts));
            f
        });
        assert_no_failures(failures);
        eprintln!(
            "n = {n}, {shape}: every collective exact in {:?}",
            start.elapsed()
        );
    }
}

/// How long one call of `algorithm` (all-reduce of `count` f32, after a
/// barrier) took over shaped links, from the first rank entering to the last
/// leaving (the model's measure: ranks leave a barrier at different times),
/// for each of `runs` runs.
fn time_all_reduce(
    n: usize,
    shape: LinkShape,
    algorithm: Algorithm,
    count: usize,
    runs: usize,
) -> Vec<Duration> {
    let per_rank = run_shaped(n, shape, config(), |comm| {
        comm.set_algorithm(Collective::AllReduce, Some(algorithm))
            .unwrap();
        let input = vec![comm.rank() as f32 + 1.0; count];
        let mut out = vec![0.0f32; count];
        let mut spans = Vec::new();
        for _ in 0..runs {
            comm.barrier().unwrap();
            let start = Instant::now();
            comm.all_reduce(&input, &mut out, ReduceOp::Sum).unwrap();
            spans.push((start, Instant::now()));
            let want = (n * (n + 1) / 2) as f32;
            assert!(out.iter().all(|&x| x == want));
        }
        spans
    });
    (0..runs)
        .map(|i| span(per_rank.iter().map(|s| s[i])))
        .collect()
}

/// From the first start to the last end.
fn span(spans: impl Iterator<Item = (Instant, Instant)>) -> Duration {
    let (starts, ends): (Vec<Instant>, Vec<Instant>) = spans.unzip();
    *ends.iter().max().unwrap() - *starts.iter().min().unwrap()
}

/// The cost model's time for `algorithm` on a network of `shape`, with no
/// reduction or copy cost (what the emulation cannot beat).
fn model(n: usize, shape: &LinkShape, algorithm: Algorithm, count: usize) -> Duration {
    let injection = match shape.ports {
        Ports::PerLink => Injection::Unlimited,
        Ports::PerRank => Injection::Link,
    };
    let net =
        Network::uniform(shape.alpha.as_secs_f64(), shape.bandwidth).with_injection(injection);
    let call = Shape::new(Collective::AllReduce, n, 0, Counts::Single(count as u64));
    let e = price_call(algorithm, &call, &PlanOptions::default(), &net, 4).unwrap();
    Duration::from_secs_f64(e.time)
}

#[test]
fn a_shaped_all_reduce_is_no_faster_than_the_model() {
    let n = 4;
    // Ring, per link: 2(N−1) dependent steps, each at least α + S/(N·B).
    let shape = LinkShape::new(Duration::from_millis(2), 1.0);
    let count = 1 << 16; // 256 KiB
    let want = model(n, &shape, Algorithm::Ring, count);
    let alphas = shape.alpha * 2 * (n as u32 - 1);
    assert!(want >= alphas, "model {want:?} < 2(N−1)α {alphas:?}");
    let times = time_all_reduce(n, shape, Algorithm::Ring, count, 3);
    eprintln!("ring all-reduce of 256 KiB, N = 4, {shape}: {times:?}, model {want:?}");
    for &t in &times {
        assert!(t >= alphas, "{t:?} < 2(N−1)α = {alphas:?}");
        assert!(
            t >= want.mul_f64(0.95),
            "{t:?} faster than the model's {want:?}"
        );
        assert!(
            t < want + Duration::from_secs(3),
            "{t:?}: slept past releases?"
        );
    }

    // Star, per-rank ports: the hub takes in N−1 messages and sends N−1
    // through one port each way: at least 2(N−1)·S/B.
    let shape = LinkShape::new(Duration::from_micros(200), 1.0).with_ports(Ports::PerRank);
    let count = 1 << 15; // 128 KiB
    let want = model(n, &shape, Algorithm::Star, count);
    let wire = Duration::from_secs_f64((count * 4) as f64 / shape.bandwidth) * 2 * (n as u32 - 1);
    assert!(want >= wire, "model {want:?} < {wire:?}");
    let times = time_all_reduce(n, shape, Algorithm::Star, count, 2);
    eprintln!("star all-reduce of 128 KiB, N = 4, {shape}: {times:?}, model {want:?}");
    for &t in &times {
        assert!(
            t >= want.mul_f64(0.95),
            "{t:?} faster than the model's {want:?}"
        );
        assert!(t < want + Duration::from_secs(3), "{t:?}");
    }
}

/// The only test that sets `BRAID_SHAPE` (the others build shaped groups by
/// hand, so they do not race with it).
#[test]
fn braid_shape_reaches_local_groups_and_connect() {
    // Invalid: an error naming the variable, the value and the form, before
    // any rendezvous (rank 1 of 2 would otherwise wait for rank 0's token).
    std::env::set_var("BRAID_SHAPE", "500;1");
    let e = local_group_with(2, config()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    for part in ["BRAID_SHAPE", "'500;1'", "alpha_us,gbps"] {
        assert!(e.to_string().contains(part), "{e}");
    }
    let start = Instant::now();
    let e = Communicator::connect(&local_launch(1, 2, 1), &MemoryStore::new(), config())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("BRAID_SHAPE='500;1'"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // Valid: in-process groups are shaped.
    std::env::set_var("BRAID_SHAPE", "3000,10");
    let spans = braid::run_local(2, config(), |comm| {
        assert_eq!(comm.transport_name(), "local+shape");
        comm.barrier().unwrap();
        let start = Instant::now();
        let mut x = [comm.rank() as u64; 4];
        comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        assert_eq!(x, [1; 4]);
        (start, Instant::now())
    })
    .unwrap();
    let took = span(spans.into_iter());
    assert!(took >= Duration::from_millis(3), "{took:?}");

    // And so are communicators from `connect` (shared memory between these
    // threads: they share a host).
    let store = MemoryStore::new();
    let ranks = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let store = store.clone();
                s.spawn(move || {
                    let mut comm =
                        Communicator::connect(&local_launch(rank, 2, 1), &store, config()).unwrap();
                    let start = Instant::now();
                    let mut x = [rank as u32 + 1; 3];
                    comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
                    assert_eq!(x, [3; 3]);
                    (comm.transport_name(), (start, Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    std::env::remove_var("BRAID_SHAPE");
    let names: Vec<&str> = ranks.iter().map(|r| r.0).collect();
    assert_eq!(names, ["shm+shape", "shm+shape"]);
    let took = span(ranks.iter().map(|r| r.1));
    assert!(took >= Duration::from_millis(3), "{took:?}");
}
