//! Stress: 10 000 random collectives across 4 processes over the
//! shared-memory transport (`BRAID_TRANSPORT=shm`), every result checked
//! exactly, element by element.
//!
//! Every rank draws the same sequence of calls from one seed (splitmix64, in
//! this file): per call the kind (broadcast, reduce, all_reduce and its
//! in-place form, scatter, gather, all_gather, reduce_scatter, all_to_all,
//! each -v form, barrier, send/recv between a random pair, send_recv over a
//! random permutation), a size of 0 to 4 MiB in bytes, a dtype, an op valid
//! for it, a root, and half of the time a forced algorithm (any that
//! implements the collective) instead of the automatic choice.
//!
//! Sizes (of the largest per-rank buffer; blocked calls split it into
//! `ranks` blocks, -v forms into random uneven counts with zeros) are 5 %
//! exactly zero, 5 % one element, else log-uniform in bytes over 1 B..4 MiB:
//! median about 2 KiB, a quarter of the calls above the 64 KiB algorithm
//! switch, mean about 250 KiB. Every size class (zero, one element, below
//! and above the 64 KiB switch and the 256 KiB chunk, up to the 4 MiB shm
//! ring) is hit hundreds of times, while 10 000 calls take about 10 s on 2
//! cores.
//!
//! Inputs are small integers (products of 1s and 2s, see `common::input`),
//! shifted by a per-call salt, so every dtype holds every partial result
//! exactly and each rank computes the expected result itself. A wrong
//! element or an error ends the rank with a line naming iteration, seed,
//! call, dtype, op, root, count, algorithm and the first wrong index.
//!
//! The seed comes from `BRAID_STRESS_SEED`, else from the clock; the test
//! prints it (`stress seed = ...`), each rank echoes it, and a failure says
//! how to rerun with it. `BRAID_STRESS_CALLS` overrides the 10 000 calls.
//! Ranks run with `BRAID_TIMEOUT=30` and are killed at a wall-clock limit;
//! afterwards no `/dev/shm/braid-*` segment may remain.
//!
//! This test binary is also the rank program: started with BRAID_TEST_ROLE
//! set, `rank_main` plays that role instead of testing.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use braid::{bf16, f16, Algorithm, Collective, Communicator, DType, Element, ErrorKind, ReduceOp};
use common::ranks::{braid_segments, spawn_ranks, wait_all};
use common::{input, reduced, sentinel};

/// Ranks in the job.
const RANKS: usize = 4;
/// Calls per run unless `BRAID_STRESS_CALLS` says otherwise.
const DEFAULT_CALLS: usize = 10_000;
/// Largest per-rank buffer of one call, in bytes.
const MAX_BYTES: usize = 4 << 20;
/// Sizes are drawn log-uniform in bytes over 2^0 .. 2^LOG2_MAX_BYTES.
const LOG2_MAX_BYTES: f64 = 22.0;

// ---- the shared random sequence ----

/// splitmix64: small, fast, and the same on every rank for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A random split of `total` into `n` counts summing to it; a third of
    /// the time one rank's share moves to another, leaving a zero.
    fn split(&mut self, total: usize, n: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..n - 1).map(|_| self.below(total + 1)).collect();
        cuts.sort_unstable();
        cuts.insert(0, 0);
        cuts.push(total);
        let mut counts: Vec<usize> = cuts.windows(2).map(|w| w[1] - w[0]).collect();
        if self.percent(33) {
            let (from, to) = (self.below(n), self.below(n));
            if from != to {
                counts[to] += counts[from];
                counts[from] = 0;
            }
        }
        counts
    }

    /// A random permutation of `0..n`.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

// ---- one call ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Broadcast,
    Reduce,
    AllReduce,
    AllReduceInPlace,
    Scatter,
    ScatterV,
    Gather,
    GatherV,
    AllGather,
    AllGatherV,
    ReduceScatter,
    ReduceScatterV,
    AllToAll,
    AllToAllV,
    Barrier,
    /// One random pair: `send` on one rank, `recv` on the other.
    SendRecvPair,
    /// `send_recv` on every rank along a random permutation (self included).
    SendRecv,
}

impl Kind {
    const ALL: [Kind; 17] = [
        Kind::Broadcast,
        Kind::Reduce,
        Kind::AllReduce,
        Kind::AllReduceInPlace,
        Kind::Scatter,
        Kind::ScatterV,
        Kind::Gather,
        Kind::GatherV,
        Kind::AllGather,
        Kind::AllGatherV,
        Kind::ReduceScatter,
        Kind::ReduceScatterV,
        Kind::AllToAll,
        Kind::AllToAllV,
        Kind::Barrier,
        Kind::SendRecvPair,
        Kind::SendRecv,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::Reduce => "reduce",
            Kind::AllReduce => "all_reduce",
            Kind::AllReduceInPlace => "all_reduce_in_place",
            Kind::Scatter => "scatter",
            Kind::ScatterV => "scatter_v",
            Kind::Gather => "gather",
            Kind::GatherV => "gather_v",
            Kind::AllGather => "all_gather",
            Kind::AllGatherV => "all_gather_v",
            Kind::ReduceScatter => "reduce_scatter",
            Kind::ReduceScatterV => "reduce_scatter_v",
            Kind::AllToAll => "all_to_all",
            Kind::AllToAllV => "all_to_all_v",
            Kind::Barrier => "barrier",
            Kind::SendRecvPair => "send/recv",
            Kind::SendRecv => "send_recv",
        }
    }

    /// The collective whose algorithm applies; `None` for point-to-point.
    fn collective(self) -> Option<Collective> {
        Some(match self {
            Kind::Broadcast => Collective::Broadcast,
            Kind::Reduce => Collective::Reduce,
            Kind::AllReduce | Kind::AllReduceInPlace => Collective::AllReduce,
            Kind::Scatter | Kind::ScatterV => Collective::Scatter,
            Kind::Gather | Kind::GatherV => Collective::Gather,
            Kind::AllGather | Kind::AllGatherV => Collective::AllGather,
            Kind::ReduceScatter | Kind::ReduceScatterV => Collective::ReduceScatter,
            Kind::AllToAll | Kind::AllToAllV => Collective::AllToAll,
            Kind::Barrier => Collective::Barrier,
            Kind::SendRecvPair | Kind::SendRecv => return None,
        })
    }

    fn reduces(self) -> bool {
        matches!(
            self,
            Kind::Reduce
                | Kind::AllReduce
                | Kind::AllReduceInPlace
                | Kind::ReduceScatter
                | Kind::ReduceScatterV
        )
    }

    fn rooted(self) -> bool {
        matches!(
            self,
            Kind::Broadcast
                | Kind::Reduce
                | Kind::Scatter
                | Kind::ScatterV
                | Kind::Gather
                | Kind::GatherV
        )
    }
}

/// Everything every rank agrees on about one call.
struct Call {
    kind: Kind,
    dtype: DType,
    op: ReduceOp,
    root: usize,
    /// Elements of the largest per-rank buffer (blocked calls: `blocks * block`).
    count: usize,
    /// Per-rank block of the blocked calls (`count / ranks`, rounded up).
    block: usize,
    /// Per-rank counts of the -v forms (sum `count`); all_to_all_v: the
    /// row-major count matrix (each row sums to `count`).
    counts: Vec<usize>,
    /// send/recv: `[sender, receiver]`; send_recv: rank r sends to `peers[r]`.
    peers: Vec<usize>,
    algorithm: Option<Algorithm>,
    /// Shifts the input pattern so that consecutive calls differ.
    salt: usize,
}

impl Call {
    fn draw(rng: &mut Rng, n: usize) -> Call {
        let kind = rng.pick(&Kind::ALL);
        let dtype = rng.pick(&DType::ALL);
        let op = if dtype.is_float() {
            rng.pick(&ReduceOp::ALL)
        } else {
            rng.pick(&ReduceOp::ALL[..4])
        };
        let root = rng.below(n);
        let elem = dtype.size();
        let count = match rng.below(100) {
            0..=4 => 0,
            5..=9 => 1,
            _ => {
                let bytes = 2f64.powf(rng.unit() * LOG2_MAX_BYTES) as usize;
                (bytes / elem).clamp(1, MAX_BYTES / elem)
            }
        };
        let block = count.div_ceil(n);
        let counts = match kind {
            Kind::ScatterV | Kind::GatherV | Kind::AllGatherV | Kind::ReduceScatterV => {
                rng.split(count, n)
            }
            Kind::AllToAllV => (0..n).flat_map(|_| rng.split(count, n)).collect(),
            _ => Vec::new(),
        };
        let peers = match kind {
            Kind::SendRecvPair => {
                let from = rng.below(n);
                let to = (from + 1 + rng.below(n - 1)) % n;
                vec![from, to]
            }
            Kind::SendRecv => rng.permutation(n),
            _ => Vec::new(),
        };
        let algorithm = match kind.collective() {
            Some(c) if rng.percent(50) => Some(rng.pick(c.algorithms())),
            _ => None,
        };
        let salt = rng.below(22);
        Call {
            kind,
            dtype,
            op,
            root,
            count,
            block,
            counts,
            peers,
            algorithm,
            salt,
        }
    }

    fn describe(&self) -> String {
        if self.kind == Kind::Barrier {
            let a = self
                .algorithm
                .map_or("automatic".into(), |a| format!("{a} (forced)"));
            return format!("call barrier algorithm {a}");
        }
        let mut s = format!("call {} dtype {}", self.kind.name(), self.dtype);
        if self.kind.reduces() {
            s += &format!(" op {}", self.op);
        }
        if self.kind.rooted() {
            s += &format!(" root {}", self.root);
        }
        s += &format!(" count {}", self.count);
        if !self.counts.is_empty() {
            s += &format!(" counts {:?}", self.counts);
        } else if self.largest_buffer() != self.count {
            s += &format!(" (block {})", self.block);
        }
        if !self.peers.is_empty() {
            s += &format!(" peers {:?}", self.peers);
        }
        match (self.kind.collective(), self.algorithm) {
            (None, _) => {}
            (Some(_), Some(a)) => s += &format!(" algorithm {a} (forced)"),
            (Some(c), None) => {
                let bytes = (self.largest_buffer() * self.dtype.size()) as u64;
                s += &format!(
                    " algorithm automatic ({})",
                    braid::select::choose(c, bytes, RANKS)
                );
            }
        }
        s + &format!(" salt {}", self.salt)
    }

    /// Elements of the largest per-rank buffer, as the size rule sees it.
    fn largest_buffer(&self) -> usize {
        match self.kind {
            Kind::Scatter
            | Kind::Gather
            | Kind::AllGather
            | Kind::ReduceScatter
            | Kind::AllToAll => self.block * RANKS,
            _ => self.count,
        }
    }
}

// ---- exact inputs and checks ----

/// `len` inputs of `rank` for `op`, starting at index `start` of the pattern.
fn vals<T: Element>(op: ReduceOp, rank: usize, start: usize, len: usize) -> Vec<T> {
    (start..start + len)
        .map(|i| T::from_i64(input(op, rank, i)))
        .collect()
}

/// Element `k` of the all-to-all block from rank `i` to rank `j`.
fn a2a<T: Element>(i: usize, j: usize, k: usize, salt: usize) -> T {
    T::from_i64(((i * 10 + j) % 50 + (k + salt) % 7) as i64)
}

fn check<T: Element>(what: &str, got: &[T], want: &[T]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: first wrong index {i} of {} (got {:?}, want {:?})",
            got.len(),
            got[i],
            want[i]
        )),
    }
}

fn failed(e: braid::Error) -> String {
    format!("error {:?}: {e}", e.kind())
}

/// Runs `call` on this rank and checks every element it produced here.
fn run<T: Element>(comm: &mut Communicator, c: &Call) -> Result<(), String> {
    let n = comm.size();
    let me = comm.rank();
    let (op, s, count, block) = (c.op, c.salt, c.count, c.block);
    match c.kind {
        Kind::Broadcast => {
            let want = vals::<T>(ReduceOp::Sum, c.root, s, count);
            let mut buf = if me == c.root {
                want.clone()
            } else {
                sentinel(count)
            };
            comm.broadcast(&mut buf, c.root).map_err(failed)?;
            check("buffer", &buf, &want)
        }
        Kind::Reduce => {
            let mut out = sentinel::<T>(if me == c.root { count } else { 0 });
            comm.reduce(&vals::<T>(op, me, s, count), &mut out, op, c.root)
                .map_err(failed)?;
            if me == c.root {
                check("recv", &out, &reduced(op, n, count, s))?;
            }
            Ok(())
        }
        Kind::AllReduce => {
            let mut out = sentinel::<T>(count);
            comm.all_reduce(&vals::<T>(op, me, s, count), &mut out, op)
                .map_err(failed)?;
            check("recv", &out, &reduced(op, n, count, s))
        }
        Kind::AllReduceInPlace => {
            let mut buf = vals::<T>(op, me, s, count);
            comm.all_reduce_in_place(&mut buf, op).map_err(failed)?;
            check("buffer", &buf, &reduced(op, n, count, s))
        }
        Kind::Scatter | Kind::ScatterV => {
            let counts = if c.kind == Kind::Scatter {
                vec![block; n]
            } else {
                c.counts.clone()
            };
            let total: usize = counts.iter().sum();
            let at: usize = counts[..me].iter().sum();
            let send = if me == c.root {
                vals::<T>(ReduceOp::Sum, c.root, s, total)
            } else {
                Vec::new()
            };
            let mut out = sentinel::<T>(counts[me]);
            if c.kind == Kind::Scatter {
                comm.scatter(&send, &mut out, c.root)
            } else {
                comm.scatter_v(&send, &mut out, &counts, c.root)
            }
            .map_err(failed)?;
            check(
                "recv",
                &out,
                &vals::<T>(ReduceOp::Sum, c.root, s + at, counts[me]),
            )
        }
        Kind::Gather | Kind::GatherV | Kind::AllGather | Kind::AllGatherV => {
            let counts = if matches!(c.kind, Kind::Gather | Kind::AllGather) {
                vec![block; n]
            } else {
                c.counts.clone()
            };
            let send = vals::<T>(ReduceOp::Sum, me, s, counts[me]);
            let want: Vec<T> = (0..n)
                .flat_map(|r| vals::<T>(ReduceOp::Sum, r, s, counts[r]))
                .collect();
            let all = matches!(c.kind, Kind::AllGather | Kind::AllGatherV);
            let gets = all || me == c.root;
            let mut out = sentinel::<T>(if gets { want.len() } else { 0 });
            match c.kind {
                Kind::Gather => comm.gather(&send, &mut out, c.root),
                Kind::GatherV => comm.gather_v(&send, &mut out, &counts, c.root),
                Kind::AllGather => comm.all_gather(&send, &mut out),
                _ => comm.all_gather_v(&send, &mut out, &counts),
            }
            .map_err(failed)?;
            if gets {
                check("recv", &out, &want)?;
            }
            Ok(())
        }
        Kind::ReduceScatter | Kind::ReduceScatterV => {
            let counts = if c.kind == Kind::ReduceScatter {
                vec![block; n]
            } else {
                c.counts.clone()
            };
            let total: usize = counts.iter().sum();
            let at: usize = counts[..me].iter().sum();
            let send = vals::<T>(op, me, s, total);
            let mut out = sentinel::<T>(counts[me]);
            if c.kind == Kind::ReduceScatter {
                comm.reduce_scatter(&send, &mut out, op)
            } else {
                comm.reduce_scatter_v(&send, &mut out, &counts, op)
            }
            .map_err(failed)?;
            check("recv", &out, &reduced(op, n, counts[me], s + at))
        }
        Kind::AllToAll | Kind::AllToAllV => {
            // cnt(i, j): elements rank i sends to rank j.
            let cnt = |i: usize, j: usize| {
                if c.kind == Kind::AllToAll {
                    block
                } else {
                    c.counts[i * n + j]
                }
            };
            let send: Vec<T> = (0..n)
                .flat_map(|j| (0..cnt(me, j)).map(move |k| a2a::<T>(me, j, k, s)))
                .collect();
            let want: Vec<T> = (0..n)
                .flat_map(|i| (0..cnt(i, me)).map(move |k| a2a::<T>(i, me, k, s)))
                .collect();
            let mut out = sentinel::<T>(want.len());
            if c.kind == Kind::AllToAll {
                comm.all_to_all(&send, &mut out).map_err(failed)?;
            } else {
                let send_counts: Vec<usize> = (0..n).map(|j| cnt(me, j)).collect();
                let recv_counts: Vec<usize> = (0..n).map(|i| cnt(i, me)).collect();
                let res = comm.all_to_all_v(&send, &send_counts, &mut out, &recv_counts);
                if c.algorithm == Some(Algorithm::Star) {
                    // The star hub needs the whole matrix; a -v call knows
                    // only its row and column: refused alike on every rank.
                    return match res {
                        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(()),
                        Err(e) => Err(failed(e)),
                        Ok(()) => Err("star all_to_all_v succeeded; expected Unsupported".into()),
                    };
                }
                res.map_err(failed)?;
            }
            check("recv", &out, &want)
        }
        Kind::Barrier => comm.barrier().map_err(failed),
        Kind::SendRecvPair => {
            let (from, to) = (c.peers[0], c.peers[1]);
            if me == from {
                comm.send(&vals::<T>(ReduceOp::Sum, from, s, count), to)
                    .map_err(failed)?;
            } else if me == to {
                let mut out = sentinel::<T>(count);
                comm.recv(&mut out, from).map_err(failed)?;
                check("recv", &out, &vals::<T>(ReduceOp::Sum, from, s, count))?;
            }
            Ok(())
        }
        Kind::SendRecv => {
            let dest = c.peers[me];
            let source = c.peers.iter().position(|&d| d == me).unwrap();
            let mut out = sentinel::<T>(count);
            comm.send_recv(
                &vals::<T>(ReduceOp::Sum, me, s, count),
                dest,
                &mut out,
                source,
            )
            .map_err(failed)?;
            check("recv", &out, &vals::<T>(ReduceOp::Sum, source, s, count))
        }
    }
}

fn run_any(comm: &mut Communicator, call: &Call) -> Result<(), String> {
    match call.dtype {
        DType::F32 => run::<f32>(comm, call),
        DType::F64 => run::<f64>(comm, call),
        DType::F16 => run::<f16>(comm, call),
        DType::BF16 => run::<bf16>(comm, call),
        DType::I8 => run::<i8>(comm, call),
        DType::U8 => run::<u8>(comm, call),
        DType::I32 => run::<i32>(comm, call),
        DType::U32 => run::<u32>(comm, call),
        DType::I64 => run::<i64>(comm, call),
        DType::U64 => run::<u64>(comm, call),
    }
}

// ---- settings ----

fn rerun_hint(seed: u64) -> String {
    format!("rerun with: BRAID_STRESS_SEED={seed} cargo test --test stress")
}

/// `BRAID_STRESS_SEED`, else a fresh seed from the clock and the process id.
fn seed() -> u64 {
    match std::env::var("BRAID_STRESS_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BRAID_STRESS_SEED='{v}' is not a u64")),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            Rng(nanos ^ u64::from(std::process::id()).rotate_left(32)).next()
        }
    }
}

fn calls() -> usize {
    match std::env::var("BRAID_STRESS_CALLS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BRAID_STRESS_CALLS='{v}' is not a count")),
        Err(_) => DEFAULT_CALLS,
    }
}

// ---- the rank ----

/// One rank's part, when this binary runs as a rank.
#[test]
fn rank_main() {
    let Ok(role) = std::env::var("BRAID_TEST_ROLE") else {
        return;
    };
    assert_eq!(role, "stress", "unknown BRAID_TEST_ROLE");
    let code = stress_rank();
    std::io::stdout().flush().unwrap();
    std::process::exit(code);
}

fn stress_rank() -> i32 {
    let (seed, calls) = (seed(), calls());
    let mut comm = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            println!("INIT ERROR: {e}");
            return 4;
        }
    };
    let (rank, n) = (comm.rank(), comm.size());
    println!(
        "rank {rank}: stress seed = {seed}, {calls} calls, transport {}",
        comm.transport_name()
    );
    let mut rng = Rng(seed);
    let mut per_kind = [0usize; Kind::ALL.len()];
    let (mut forced, mut bytes, mut largest) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    for it in 0..calls {
        let call = Call::draw(&mut rng, n);
        if let Some(c) = call.kind.collective() {
            if let Err(e) = comm.set_algorithm(c, call.algorithm) {
                println!("STRESS FAIL rank {rank} iteration {it} seed {seed}: set_algorithm: {e}");
                return 1;
            }
        }
        if let Err(what) = run_any(&mut comm, &call) {
            println!(
                "STRESS FAIL rank {rank} iteration {it} seed {seed}: {}: {what}\n{} \
                 (add BRAID_STRESS_CALLS={} to stop right after this call)",
                call.describe(),
                rerun_hint(seed),
                it + 1
            );
            return 1;
        }
        per_kind[Kind::ALL.iter().position(|k| *k == call.kind).unwrap()] += 1;
        forced += usize::from(call.algorithm.is_some());
        let b = call.largest_buffer() * call.dtype.size();
        bytes += b;
        largest = largest.max(b);
    }
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .zip(per_kind)
        .map(|(k, c)| format!("{} {c}", k.name()))
        .collect();
    println!(
        "STRESS OK rank {rank}: {calls} calls in {:.1} s, {forced} with a forced algorithm, \
         {:.1} MiB in largest buffers (largest {} B); {}",
        start.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        largest,
        kinds.join(", ")
    );
    0
}

// ---- the test ----

#[test]
fn random_collectives_over_shared_memory_are_exact() {
    let (seed, calls) = (seed(), calls());
    // Straight to stderr, past the harness's capture: shown even on success.
    let _ = writeln!(
        std::io::stderr(),
        "stress seed = {seed} ({calls} calls, {RANKS} ranks over shm); {}",
        rerun_hint(seed)
    );
    let env = [
        ("BRAID_TRANSPORT", "shm".to_string()),
        ("BRAID_TIMEOUT", "30".to_string()),
        ("BRAID_STRESS_SEED", seed.to_string()),
        ("BRAID_STRESS_CALLS", calls.to_string()),
    ];
    let limit = Duration::from_secs(120 + (calls / 50) as u64);
    let start = Instant::now();
    let children = spawn_ranks(RANKS, "stress", &env);
    let results =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_all(children, limit)))
            .unwrap_or_else(|p| {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("stress seed = {seed}: {why}; {}", rerun_hint(seed))
            });
    let elapsed = start.elapsed();
    let mut failures = Vec::new();
    for (rank, (code, out, err)) in results.iter().enumerate() {
        let echoed = out.contains(&format!("rank {rank}: stress seed = {seed},"));
        let ok = out.contains(&format!("STRESS OK rank {rank}:"));
        let shm = out.contains("calls, transport shm");
        if *code != Some(0) || !echoed || !ok || !shm {
            failures.push(format!("rank {rank} exited with {code:?}:\n{out}{err}"));
        }
    }
    if !failures.is_empty() {
        // The first wrong call first: ranks that merely lost a peer come last.
        let mut lines: Vec<&str> = results
            .iter()
            .flat_map(|(_, out, _)| out.lines())
            .filter(|l| l.starts_with("STRESS FAIL"))
            .collect();
        lines.sort_by_key(|l| {
            let it: usize = l
                .split(" iteration ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|i| i.parse().ok())
                .unwrap_or(usize::MAX);
            (l.contains("error PeerFailed"), it)
        });
        panic!(
            "stress seed = {seed}: {} of {RANKS} ranks failed after {elapsed:.1?}; {}\n\
             failures, first cause first:\n{}\n\nranks' output:\n{}",
            failures.len(),
            rerun_hint(seed),
            lines.join("\n"),
            failures.join("\n")
        );
    }
    assert_eq!(
        braid_segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm after the stress job (seed {seed})"
    );
    let summary = results[0]
        .1
        .lines()
        .find(|l| l.contains("STRESS OK"))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "stress seed = {seed}: {calls} calls exact on {RANKS} ranks in {elapsed:.1?}\n  {summary}"
    );
}
