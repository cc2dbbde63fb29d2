//! Running the rows: one thread per rank over braid's in-process group (or a
//! group of threads connected by TCP or shared memory); the main thread
//! gathers each rank's samples and reports rows in order as soon as every
//! rank has finished them. Every group calibrates first (collectively), so
//! that the rows can name the cost model's choice and prediction.

use std::sync::mpsc;
use std::time::Instant;

use braid::launch::{LaunchInfo, Launcher};
use braid::store::MemoryStore;
use braid::{
    bf16, f16, local_group_with, point_to_point_plan, Algorithm, Collective, Communicator, Config,
    DType, Element, ErrorKind,
};

use crate::args::{AlgoChoice, Bench, Options, StartMode, DEFAULT_ITERS, DEFAULT_WARMUP};
use crate::check::{count_wrong, fill, Values, SENTINEL};
use crate::layout::{layout, scaled_iters, size_list, Layout};
use crate::report::{combine, Row, RowContext};

/// One row to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct RowSpec {
    /// Counts and size.
    pub layout: Layout,
    /// The algorithm forced for this row (`None`: the communicator chooses).
    pub forced: Option<Algorithm>,
    /// The algorithm the row runs (`None` for send/recv).
    pub algorithm: Option<Algorithm>,
    /// Whether `algorithm` is what automatic choice picks at this size.
    pub auto_choice: bool,
    /// The cost model's time for `algorithm` at this size, in seconds.
    pub predicted: Option<f64>,
    /// Untimed calls before the samples.
    pub warmup: usize,
    /// Timed calls (samples).
    pub iters: usize,
}

/// The rows of a run, in output order: sizes ascending (sizes that round to
/// the same count appear once), and with `-a all` every algorithm of the
/// collective per size. `auto` says which algorithm automatic choice takes
/// for a collective at a size in bytes.
pub fn plan_rows(o: &Options, auto: impl Fn(Collective, u64) -> Algorithm) -> Vec<RowSpec> {
    let elem = o.dtype.size();
    let mut layouts: Vec<Layout> = Vec::new();
    let sizes = match &o.sizes {
        Some(list) => list.clone(),
        None => size_list(o.min_bytes, o.max_bytes, o.factor),
    };
    for s in sizes {
        let l = layout(o.bench, s, o.ranks, elem);
        if layouts.last() != Some(&l) {
            layouts.push(l);
        }
    }
    let mut rows = Vec::new();
    for l in layouts {
        let warmup = scaled_iters(o.warmup, DEFAULT_WARMUP, 1, l.bytes);
        let iters = scaled_iters(o.iters, DEFAULT_ITERS, 5, l.bytes);
        let picked = o.bench.collective().map(|c| auto(c, l.bytes));
        let row = |forced: Option<Algorithm>| RowSpec {
            layout: l,
            forced,
            algorithm: forced.or(picked),
            auto_choice: forced.is_none() || forced == picked,
            predicted: None,
            warmup,
            iters,
        };
        match o.algo {
            AlgoChoice::Auto => rows.push(row(None)),
            AlgoChoice::Force(a) => rows.push(row(Some(a))),
            AlgoChoice::All if o.bench == Bench::SendRecv => rows.push(row(None)),
            AlgoChoice::All => rows.extend(o.bench.algorithms().iter().map(|&a| row(Some(a)))),
        }
    }
    rows
}

/// One rank's part of one row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RankResult {
    /// Seconds of each timed call on this rank.
    pub samples: Vec<f64>,
    /// Wrong output elements on this rank (with `-c`).
    pub wrong: u64,
    /// Why the row failed on this rank.
    pub error: Option<String>,
    /// Whether the error only follows from a failure elsewhere (a dead peer,
    /// a row skipped after an earlier failure).
    pub consequential: bool,
}

/// Errors raised while the plan is made, before any message moves: every
/// rank raises them alike, so the group can go on to the next row.
fn group_survives(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidArgument | ErrorKind::Unsupported | ErrorKind::Config
    )
}

/// Fills in each row's prediction from `comm` (calibrated).
pub fn predict_rows(rows: &mut [RowSpec], o: &Options, comm: &Communicator) {
    for row in rows {
        if let (Some(c), Some(a)) = (o.bench.collective(), row.algorithm) {
            row.predicted = comm.predict(c, a, row.layout.bytes, o.dtype);
        } else if o.bench == Bench::SendRecv {
            row.predicted = shift_prediction(comm, row.layout.count, o.dtype.size() as u64);
        }
    }
}

/// The cost model's time for the bench's send_recv on `comm`'s calibrated
/// network: every rank sends `count` elements of `elem` bytes to the next
/// rank and receives as many from the previous one, in one step, as
/// `Communicator::send_recv` runs it. `None` before calibrating, or alone.
fn shift_prediction(comm: &Communicator, count: u64, elem: u64) -> Option<f64> {
    let network = &comm.calibration()?.network;
    let n = comm.size();
    if n < 2 {
        return None;
    }
    let plans: Vec<_> = (0..n)
        .map(|r| {
            point_to_point_plan(
                r,
                n,
                Some(((r + 1) % n, count)),
                Some(((r + n - 1) % n, count)),
            )
        })
        .collect();
    braid_topologies::price(&plans, network, elem)
        .ok()
        .map(|e| e.time)
}

/// Calibrates `comm` (collectively) and plans the rows with its choices and
/// predictions; every rank gets the same rows.
fn calibrated_rows(o: &Options, comm: &mut Communicator) -> braid::Result<Vec<RowSpec>> {
    comm.calibrate()?;
    let mut rows = plan_rows(o, |c, bytes| comm.choice(c, bytes, o.dtype).algorithm);
    predict_rows(&mut rows, o, comm);
    Ok(rows)
}

/// Measures every row of `o` in a new in-process group, calling `on_row` for
/// each finished row in order. Errors only if the group cannot be made or
/// calibrated.
pub fn run(o: &Options, config: Config, on_row: impl FnMut(&Row)) -> braid::Result<()> {
    run_group(o, local_group_with(o.ranks, config)?, on_row)
}

/// `n` ranks as threads of this process, connected as `BRAID_TRANSPORT`
/// says (`auto`, `tcp`, `shm`; the caller sets it) through a store in
/// memory, as [`Communicator::connect`] connects the ranks of a job.
pub fn connect_group(n: usize, config: &Config) -> braid::Result<Vec<Communicator>> {
    let store = MemoryStore::new();
    let results: Vec<braid::Result<Communicator>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let store = &store;
                s.spawn(move || {
                    let info = LaunchInfo {
                        rank,
                        size: n,
                        local_rank: rank,
                        local_size: n,
                        master_addr: "127.0.0.1".into(),
                        master_port: 0,
                        launcher: Launcher::Torchrun,
                    };
                    Communicator::connect(&info, store, config.clone())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a connecting rank panicked"))
            .collect()
    });
    results.into_iter().collect()
}

/// How the ranks of a sample start the timed call together.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// Rank threads of one process: a [`StartLine`].
    Line(&'a StartLine),
    /// Processes on one host: rank 0 names a moment on the shared clock a
    /// little ahead, every rank spins until it (yielding the core between
    /// looks where the ranks outnumber the host's cores).
    Clock {
        /// More ranks than cores on the host.
        crowded: bool,
    },
    /// Ranks on several hosts: the barrier alone.
    Barrier,
}

/// How rank threads of one process start each sample, as `--start` says.
fn thread_start<'a>(o: &Options, line: &'a StartLine) -> Start<'a> {
    match o.start {
        StartMode::Barrier => Start::Barrier,
        StartMode::Together => Start::Line(line),
    }
}

/// Nanoseconds on the host's real-time clock (shared by its processes).
fn clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This host's identity, hashed (as braid tells hosts apart).
fn host_hash() -> u64 {
    use std::hash::{Hash, Hasher};
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    read("/proc/sys/kernel/hostname").hash(&mut h);
    read("/proc/sys/kernel/random/boot_id").hash(&mut h);
    std::env::var("BRAID_HOST_ID")
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// How long a rank thread waits at the common start for the others.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Measures every row of `o` over `group` (one communicator per rank, rank
/// `r` at index `r`), one thread per rank, calling `on_row` for each
/// finished row in order. Errors only if the group cannot be calibrated.
pub fn run_group(
    o: &Options,
    group: Vec<Communicator>,
    mut on_row: impl FnMut(&Row),
) -> braid::Result<()> {
    let mut o = o.clone();
    o.ranks = group.len();
    let o = &o;
    let ctx = RowContext::new(o, group[0].transport_name());
    let (tx, rx) = mpsc::channel::<(usize, usize, RankResult)>();
    let (rows_tx, rows_rx) = mpsc::channel::<braid::Result<Vec<RowSpec>>>();
    let start = &StartLine::new(o.ranks, START_TIMEOUT);
    std::thread::scope(|s| {
        for comm in group {
            let tx = tx.clone();
            let rows_tx = (comm.rank() == 0).then(|| rows_tx.clone());
            std::thread::Builder::new()
                .name(format!("bench-rank-{}", comm.rank()))
                .spawn_scoped(s, move || rank_main(o.dtype, comm, o, start, rows_tx, tx))
                .expect("spawning a rank thread");
        }
        drop(tx);
        drop(rows_tx);
        let rows = match rows_rx.recv() {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut pending: Vec<Vec<Option<RankResult>>> = vec![vec![None; o.ranks]; rows.len()];
        let mut next = 0;
        for (row, rank, result) in rx {
            pending[row][rank] = Some(result);
            while next < rows.len() && pending[next].iter().all(Option::is_some) {
                let results: Vec<RankResult> = pending[next]
                    .iter_mut()
                    .map(|r| r.take().unwrap_or_default())
                    .collect();
                on_row(&combine(&ctx, &rows[next], &results));
                next += 1;
            }
        }
        Ok(())
    })
}

/// Measures every row with this process as one rank of a launched job
/// (`comm` from [`Communicator::from_env`]); each row's samples are combined
/// across ranks (slowest rank per sample, wrong elements summed) and rank 0
/// calls `on_row`. A failure that breaks the group ends the run with its error.
pub fn run_distributed(
    o: &Options,
    mut comm: Communicator,
    mut on_row: impl FnMut(&Row),
) -> braid::Result<()> {
    let mut o = o.clone();
    o.ranks = comm.size();
    let rows = calibrated_rows(&o, &mut comm)?;
    let ctx = RowContext::new(&o, comm.transport_name());
    // One host (one clock): samples start at a moment rank 0 names.
    let mine = [host_hash()];
    let (mut low, mut high) = ([0u64], [0u64]);
    comm.all_reduce(&mine, &mut low, braid::ReduceOp::Min)?;
    comm.all_reduce(&mine, &mut high, braid::ReduceOp::Max)?;
    let start = match o.start {
        StartMode::Together if low == high => Start::Clock {
            crowded: comm.size() > braid_transports::shm::online_cpus(),
        },
        _ => Start::Barrier,
    };
    let mut each_row = |comm: &mut Communicator,
                        i: usize,
                        result: braid::Result<RankResult>|
     -> braid::Result<()> {
        let mine = match result {
            Ok(r) => r,
            Err(e) if group_survives(e.kind()) => RankResult {
                error: Some(e.to_string()),
                ..RankResult::default()
            },
            Err(e) => return Err(e),
        };
        // Every rank ran the same row: combine samples and counts at rank 0.
        let failed = [u64::from(mine.error.is_some())];
        let mut any_failed = [0u64];
        comm.all_reduce(&failed, &mut any_failed, braid::ReduceOp::Max)?;
        let combined = if any_failed[0] == 0 {
            let mut slowest = vec![0f64; mine.samples.len()];
            comm.reduce(&mine.samples, &mut slowest, braid::ReduceOp::Max, 0)?;
            let mut wrong = [0u64];
            comm.reduce(&[mine.wrong], &mut wrong, braid::ReduceOp::Sum, 0)?;
            RankResult {
                samples: slowest,
                wrong: wrong[0],
                ..RankResult::default()
            }
        } else {
            RankResult {
                error: mine.error.or_else(|| Some("failed on another rank".into())),
                ..RankResult::default()
            }
        };
        if comm.rank() == 0 {
            on_row(&combine(&ctx, &rows[i], &[combined]));
        }
        Ok(())
    };
    macro_rules! rows_of {
        ($t:ty) => {
            for (first, block) in blocks(&rows) {
                let outcomes = run_block::<$t>(&mut comm, block, &o, start);
                // Rows after a failure that broke the group were not run:
                // each_row has already returned that failure.
                for (k, result) in outcomes.into_iter().map_while(|r| r).enumerate() {
                    each_row(&mut comm, first + k, result)?;
                }
            }
        };
    }
    match o.dtype {
        DType::F32 => rows_of!(f32),
        DType::F64 => rows_of!(f64),
        DType::F16 => rows_of!(f16),
        DType::BF16 => rows_of!(bf16),
        DType::I8 => rows_of!(i8),
        DType::U8 => rows_of!(u8),
        DType::I32 => rows_of!(i32),
        DType::U32 => rows_of!(u32),
        DType::I64 => rows_of!(i64),
        DType::U64 => rows_of!(u64),
    }
    Ok(())
}

/// A common start for the rank threads of one process: after the
/// communicator's barrier (which leaves ranks up to one message latency
/// apart, as much as α on a shaped link), every thread waits here and all
/// start the timed call together, so a sample measures the call from one
/// start to the slowest rank's end, as the cost model prices it. Waiters spin
/// for up to [`StartLine::SPIN`] before they sleep: a thread woken from a
/// sleep starts 15–70 µs after the last arrival on the 2-vCPU VM, as late as
/// a shaped link's α, and the sample would measure that skew. A rank that
/// leaves the group breaks the line; waits give up after `timeout`.
pub struct StartLine {
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicU64,
    released_ns: std::sync::atomic::AtomicU64,
    broken: std::sync::atomic::AtomicBool,
    sleep: std::sync::Mutex<()>,
    turn: std::sync::Condvar,
    ranks: usize,
    /// More rank threads than this host's online cores (not the cores this
    /// process may use: `braid-run` pins each rank to one). Found once:
    /// reading it means reading a file, which between the release and the
    /// call would make this thread start late.
    crowded: bool,
    timeout: std::time::Duration,
}

impl StartLine {
    /// More rank threads than this host's online cores.
    pub fn crowded(&self) -> bool {
        self.crowded
    }

    /// How long a waiter spins before it sleeps: longer than the skew a
    /// barrier leaves on links of tens of microseconds; slower links' waits
    /// end in a sleep, whose wake-up is small beside their α.
    pub const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

    /// A line for `ranks` threads.
    pub fn new(ranks: usize, timeout: std::time::Duration) -> Self {
        StartLine {
            arrived: 0.into(),
            generation: 0.into(),
            released_ns: 0.into(),
            broken: false.into(),
            sleep: std::sync::Mutex::new(()),
            turn: std::sync::Condvar::new(),
            ranks,
            crowded: ranks > braid_transports::shm::online_cpus(),
            timeout,
        }
    }

    /// Waits until every rank has arrived; false if the line broke or the
    /// wait timed out (the sample then starts at once).
    pub fn wait(&self) -> bool {
        self.wait_for_start().is_some()
    }

    /// As [`wait`](Self::wait), giving the moment the line let the ranks go
    /// (`clock_ns`): a sample runs from there, so a thread that got its
    /// core late (more ranks than cores) counts the wait, as the model's
    /// common start does.
    pub fn wait_for_start(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        if self.broken.load(Acquire) {
            return None;
        }
        let generation = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.ranks {
            // Reset before the new generation shows: nobody arrives for the
            // next round before seeing it.
            self.arrived.store(0, Release);
            let released = clock_ns();
            self.released_ns.store(released, Release);
            let _held = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Release);
            self.turn.notify_all();
            return Some(released);
        }
        let gone = || self.generation.load(Acquire) != generation;
        let released = || Some(self.released_ns.load(Acquire));
        let now = Instant::now();
        let spin_until = now + Self::SPIN;
        let mut spins = 0u32;
        while Instant::now() < spin_until {
            if gone() {
                return released();
            }
            if self.broken.load(Acquire) {
                return None;
            }
            spins += 1;
            if spins % 64 == 0 {
                // Crowded cores: let the ranks still to come run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let deadline = now + self.timeout;
        let mut held = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        while !gone() && !self.broken.load(Acquire) {
            let now = Instant::now();
            if now >= deadline {
                self.broken.store(true, Release);
                self.turn.notify_all();
                return None;
            }
            held = match self.turn.wait_timeout(held, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        if gone() {
            released()
        } else {
            None
        }
    }

    /// A rank left the group: nobody waits for it any more.
    pub fn break_line(&self) {
        let _held = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.broken
            .store(true, std::sync::atomic::Ordering::Release);
        self.turn.notify_all();
    }
}

/// One rank's thread: calibrates with the others, plans the rows (rank 0
/// hands them to the main thread through `rows_tx`), then runs them.
fn rank_main(
    dtype: DType,
    mut comm: Communicator,
    o: &Options,
    start: &StartLine,
    rows_tx: Option<mpsc::Sender<braid::Result<Vec<RowSpec>>>>,
    tx: mpsc::Sender<(usize, usize, RankResult)>,
) {
    let rows = calibrated_rows(o, &mut comm);
    if let Some(rows_tx) = rows_tx {
        let _ = rows_tx.send(rows.clone());
    }
    let Ok(rows) = rows else {
        return;
    };
    let rows = &rows[..];
    match dtype {
        DType::F32 => rank_loop::<f32>(comm, rows, o, start, tx),
        DType::F64 => rank_loop::<f64>(comm, rows, o, start, tx),
        DType::F16 => rank_loop::<f16>(comm, rows, o, start, tx),
        DType::BF16 => rank_loop::<bf16>(comm, rows, o, start, tx),
        DType::I8 => rank_loop::<i8>(comm, rows, o, start, tx),
        DType::U8 => rank_loop::<u8>(comm, rows, o, start, tx),
        DType::I32 => rank_loop::<i32>(comm, rows, o, start, tx),
        DType::U32 => rank_loop::<u32>(comm, rows, o, start, tx),
        DType::I64 => rank_loop::<i64>(comm, rows, o, start, tx),
        DType::U64 => rank_loop::<u64>(comm, rows, o, start, tx),
    }
}

fn rank_loop<T: Element>(
    comm: Communicator,
    rows: &[RowSpec],
    o: &Options,
    start: &StartLine,
    tx: mpsc::Sender<(usize, usize, RankResult)>,
) {
    let rank = comm.rank();
    let mut comm = Some(comm);
    let mut stopped: Option<String> = None;
    for (first, block) in blocks(rows) {
        let outcomes: Vec<Outcome> = match comm.as_mut() {
            None => block.iter().map(|_| None).collect(),
            Some(c) => run_block::<T>(c, block, o, thread_start(o, start)),
        };
        for (k, outcome) in outcomes.into_iter().enumerate() {
            let result = match outcome {
                None => RankResult {
                    error: stopped.clone(),
                    consequential: true,
                    ..RankResult::default()
                },
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    if !group_survives(e.kind()) {
                        // Leave the group at once: peers see a dead peer
                        // instead of waiting for their deadline.
                        comm = None;
                        start.break_line();
                        stopped = Some(format!("not run: rank {rank} left the group after: {e}"));
                    }
                    RankResult {
                        error: Some(e.to_string()),
                        consequential: e.kind() == ErrorKind::PeerFailed,
                        ..RankResult::default()
                    }
                }
            };
            if tx.send((first + k, rank, result)).is_err() {
                return;
            }
        }
    }
}

/// The rows in blocks of one size, each with the index of its first row.
fn blocks(rows: &[RowSpec]) -> impl Iterator<Item = (usize, &[RowSpec])> {
    rows.chunk_by(|a, b| a.layout == b.layout)
        .scan(0, |first, block| {
            let at = *first;
            *first += block.len();
            Some((at, block))
        })
}

/// One rank's buffers for one row.
struct Buffers<T> {
    send: Vec<T>,
    recv: Vec<T>,
}

impl<T: Element> Buffers<T> {
    fn new(bench: Bench, count: u64, n: usize, rank: usize, root: usize) -> Self {
        let c = count as usize;
        let nb = c * n;
        let on_root = |len: usize| if rank == root { len } else { 0 };
        let (send, recv) = match bench {
            Bench::SendRecv => (c, c),
            Bench::Collective(coll) => match coll {
                Collective::AllReduce => (c, c),
                Collective::Broadcast => (0, c),
                Collective::Reduce => (c, on_root(c)),
                Collective::AllGather => (c, nb),
                Collective::ReduceScatter => (nb, c),
                Collective::Gather => (c, on_root(nb)),
                Collective::Scatter => (on_root(nb), c),
                Collective::AllToAll => (nb, nb),
                Collective::Barrier => (0, 0),
            },
        };
        let zero = T::from_i64(SENTINEL);
        Buffers {
            send: vec![zero; send],
            recv: vec![zero; recv],
        }
    }

    fn call(&mut self, comm: &mut Communicator, o: &Options) -> braid::Result<()> {
        let (send, recv) = (&self.send[..], &mut self.recv[..]);
        let (n, r) = (comm.size(), comm.rank());
        match o.bench {
            Bench::SendRecv => comm.send_recv(send, (r + 1) % n, recv, (r + n - 1) % n),
            Bench::Collective(c) => match c {
                Collective::AllReduce => comm.all_reduce(send, recv, o.op),
                Collective::Broadcast => comm.broadcast(recv, o.root),
                Collective::Reduce => comm.reduce(send, recv, o.op, o.root),
                Collective::AllGather => comm.all_gather(send, recv),
                Collective::ReduceScatter => comm.reduce_scatter(send, recv, o.op),
                Collective::Gather => comm.gather(send, recv, o.root),
                Collective::Scatter => comm.scatter(send, recv, o.root),
                Collective::AllToAll => comm.all_to_all(send, recv),
                Collective::Barrier => comm.barrier(),
            },
        }
    }
}

/// What became of one row of a block on this rank: `None` when an earlier
/// row's failure broke the group before this row was run.
type Outcome = Option<braid::Result<RankResult>>;

/// Measures a block of rows of one size on this rank (one row per algorithm
/// with `-a all`, else one row). Each row first gets, with `-c`, one checked
/// call on fresh buffers, then its warm-up calls; then the samples are taken
/// in rounds, one sample of each row in turn (each a barrier, a common start
/// as `start` says, and one timed call; barrier itself is timed without a
/// barrier before it). Interleaving puts the host's fast and slow spells,
/// which last seconds here, on every algorithm alike, so that the rows of
/// one size compare algorithms rather than moments. A row that fails with
/// an error every rank raises alike leaves the rotation; any other failure
/// ends the block.
fn run_block<T: Element>(
    comm: &mut Communicator,
    rows: &[RowSpec],
    o: &Options,
    start: Start<'_>,
) -> Vec<Outcome> {
    let (n, rank) = (comm.size(), comm.rank());
    let count = rows[0].layout.count;
    let values = Values::new(o.bench, o.op, o.dtype, n);
    let fresh = || {
        let mut bufs = Buffers::<T>::new(o.bench, count, n, rank, o.root);
        fill(&values, rank, &mut bufs.send);
        if o.bench == Bench::Collective(Collective::Broadcast) && rank == o.root {
            fill(&values, rank, &mut bufs.recv);
        }
        bufs
    };
    let mut bufs = fresh();
    let mut outcomes: Vec<Outcome> = rows.iter().map(|_| None).collect();
    // Ends the block at a failure that breaks the group.
    macro_rules! record_failure {
        ($i:expr, $e:expr) => {{
            let e: braid::Error = $e;
            let fatal = !group_survives(e.kind());
            outcomes[$i] = Some(Err(e));
            if fatal {
                return outcomes;
            }
        }};
    }
    for (i, row) in rows.iter().enumerate() {
        let prepared = (|| {
            use_algorithm(comm, row, o)?;
            let mut result = RankResult::default();
            if o.check {
                bufs = fresh();
                bufs.call(comm, o)?;
                result.wrong = count_wrong(&values, o.bench, n, rank, o.root, count, &bufs.recv);
            }
            for _ in 0..row.warmup {
                bufs.call(comm, o)?;
            }
            result.samples.reserve(row.iters);
            Ok(result)
        })();
        match prepared {
            Ok(result) => outcomes[i] = Some(Ok(result)),
            Err(e) => record_failure!(i, e),
        }
    }
    let barrier_first = o.bench != Bench::Collective(Collective::Barrier);
    for _ in 0..rows[0].iters {
        for (i, row) in rows.iter().enumerate() {
            if !matches!(outcomes[i], Some(Ok(_))) {
                continue;
            }
            // A block of one row keeps the algorithm its preparation set.
            let switched = if rows.len() > 1 {
                use_algorithm(comm, row, o)
            } else {
                Ok(())
            };
            match switched.and_then(|()| sample(comm, o, start, barrier_first, &mut bufs)) {
                Ok(seconds) => {
                    if let Some(Ok(result)) = &mut outcomes[i] {
                        result.samples.push(seconds);
                    }
                }
                Err(e) => record_failure!(i, e),
            }
        }
    }
    outcomes
}

/// Makes the communicator run `row`'s algorithm (a forced row; an automatic
/// row leaves the choice to it).
fn use_algorithm(comm: &mut Communicator, row: &RowSpec, o: &Options) -> braid::Result<()> {
    if let (Some(c), Some(a)) = (o.bench.collective(), row.forced) {
        comm.set_algorithm(c, Some(a))?;
    }
    Ok(())
}

/// One timed call, in seconds, started as `start` says.
fn sample<T: Element>(
    comm: &mut Communicator,
    o: &Options,
    start: Start<'_>,
    barrier_first: bool,
    bufs: &mut Buffers<T>,
) -> braid::Result<f64> {
    // The common start (clock_ns), where there is one.
    let mut common = None;
    if barrier_first {
        let barrier_began = Instant::now();
        comm.barrier()?;
        match start {
            Start::Line(line) => {
                let start = line.wait_for_start();
                if line.crowded() {
                    common = start;
                }
            }
            Start::Clock { crowded } => {
                // Far enough ahead that the broadcast has reached every
                // rank: four barriers' time and 100 µs.
                let ahead = 100_000 + 4 * barrier_began.elapsed().as_nanos() as u64;
                let mut at = [clock_ns() + ahead];
                comm.broadcast(&mut at, 0)?;
                // A rank that learns the moment after it passed starts when
                // it learns it (that much of the broadcast is not the call's).
                if crowded {
                    common = Some(at[0].max(clock_ns()));
                }
                let give_up = Instant::now() + std::time::Duration::from_secs(1);
                while clock_ns() < at[0] && Instant::now() < give_up {
                    if crowded {
                        // Let the ranks not yet at the line run.
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            Start::Barrier => {}
        }
    }
    let t = Instant::now();
    // With more ranks than cores, a rank that got its core after the common
    // start counts that wait: the call's time is from the common start to
    // this rank's end, as the model prices it. (Not with a core per rank:
    // there every rank runs at the start, and what it would count is how
    // late it saw the moment; with yields between looks, 0.1–0.4 µs on the
    // 2-vCPU VM, as much as a sub-microsecond call.)
    let late = common.map_or(0, |c| clock_ns().saturating_sub(c));
    bufs.call(comm, o)?;
    Ok(t.elapsed().as_secs_f64() + late as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_lets_everyone_go_together_or_gives_up() {
        use std::time::Duration;
        // Three threads, two rounds: every wait returns true.
        let line = StartLine::new(3, Duration::from_secs(20));
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| s.spawn(|| (0..2).all(|_| line.wait())))
                .collect();
            assert!(hs.into_iter().all(|h| h.join().unwrap()));
        });
        // Every thread of a round learns the same start, the moment the
        // last one arrived: after the first arrival, before any return.
        let line = StartLine::new(3, Duration::from_secs(20));
        let first = clock_ns();
        let starts: Vec<(u64, u64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|i| {
                    let line = &line;
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(5 * i));
                        let start = line.wait_for_start().expect("the line holds");
                        (start, clock_ns())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let start = starts[0].0;
        assert!(starts.iter().all(|&(s, _)| s == start), "{starts:?}");
        assert!(start >= first + 10_000_000, "the last came 10 ms later");
        assert!(starts.iter().all(|&(_, back)| back >= start), "{starts:?}");
        // A rank that leaves releases the waiting one, and the line stays broken.
        let line = StartLine::new(2, Duration::from_secs(20));
        std::thread::scope(|s| {
            let h = s.spawn(|| line.wait());
            std::thread::sleep(Duration::from_millis(20));
            line.break_line();
            assert!(!h.join().unwrap());
        });
        assert!(!line.wait());
        // Nobody else comes: the wait gives up at its timeout.
        let line = StartLine::new(2, Duration::from_millis(50));
        let t = Instant::now();
        assert!(!line.wait());
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
    use crate::args::parse;

    fn auto(c: Collective, bytes: u64) -> Algorithm {
        braid::select::choose(c, bytes, 4)
    }

    #[test]
    fn auto_rows_name_the_choice() {
        let o = parse(["all_reduce", "-b", "8", "-e", "1M", "-f", "32"]).unwrap();
        let rows = plan_rows(&o, auto);
        let got: Vec<(u64, Option<Algorithm>)> =
            rows.iter().map(|r| (r.layout.bytes, r.algorithm)).collect();
        assert_eq!(
            got,
            [
                (8, Some(Algorithm::RecursiveDoubling)),
                (256, Some(Algorithm::RecursiveDoubling)),
                (8192, Some(Algorithm::RecursiveDoubling)),
                (262144, Some(Algorithm::HalvingDoubling)),
            ]
        );
        assert!(rows.iter().all(|r| r.auto_choice && r.forced.is_none()));
        let counts: Vec<(usize, usize)> = rows.iter().map(|r| (r.warmup, r.iters)).collect();
        // More samples of small sizes (50x at most, by 64 KiB / size).
        assert_eq!(counts, [(250, 1000), (250, 1000), (40, 160), (5, 20)]);
    }

    #[test]
    fn all_gives_a_row_per_algorithm_and_marks_auto() {
        let o = parse(["all_gather", "-b", "8", "-e", "16", "-f", "2", "-a", "all"]).unwrap();
        let rows = plan_rows(&o, auto);
        // 8 B and 16 B both round to one f32 per block at 4 ranks: one size.
        assert_eq!(rows.len(), Collective::AllGather.algorithms().len());
        assert!(rows.iter().all(|r| r.layout
            == Layout {
                count: 1,
                bytes: 16
            }));
        let marked: Vec<Algorithm> = rows
            .iter()
            .filter(|r| r.auto_choice)
            .filter_map(|r| r.algorithm)
            .collect();
        assert_eq!(marked, [Algorithm::Bruck]);
    }

    #[test]
    fn large_rows_take_fewer_calls_unless_asked() {
        let o = parse(["broadcast", "-b", "64M", "-e", "64M"]).unwrap();
        let r = &plan_rows(&o, auto)[0];
        assert_eq!((r.warmup, r.iters), (1, 5));
        let o = parse(["broadcast", "-b", "64M", "-e", "64M", "-n", "3", "-w", "2"]).unwrap();
        let r = &plan_rows(&o, auto)[0];
        assert_eq!((r.warmup, r.iters), (2, 3));
    }

    #[test]
    fn send_recv_and_barrier_rows() {
        let o = parse(["send_recv", "-a", "all", "-e", "64"]).unwrap();
        let rows = plan_rows(&o, auto);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.algorithm.is_none()));
        let o = parse(["barrier", "-a", "all"]).unwrap();
        let rows = plan_rows(&o, auto);
        assert_eq!(
            rows.len(),
            Collective::Barrier.algorithms().len(),
            "one size for barrier"
        );
    }

    #[test]
    fn refused_calls_fail_their_rows_and_the_group_goes_on() {
        // parse() refuses avg on integers; braid must refuse it too, on every
        // rank alike, so every row reports the error and none hangs.
        let mut o = parse(["all_reduce", "--ranks", "3", "-e", "128", "-c"]).unwrap();
        (o.dtype, o.op) = (DType::I32, braid::ReduceOp::Avg);
        let mut rows = Vec::new();
        run(&o, Config::default(), |r| rows.push(r.clone())).unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            let e = r.error.as_deref().unwrap_or_default();
            assert!(e.contains("avg") && e.contains("unsupported"), "{r:?}");
            assert!(r.time_us.is_nan() && r.wrong.is_none());
        }
    }

    #[test]
    fn every_algorithm_of_a_size_is_measured_in_one_block() {
        let o = parse([
            "all_gather",
            "--ranks",
            "3",
            "-a",
            "all",
            "--sizes",
            "8,1K,5K",
        ])
        .unwrap();
        let rows = plan_rows(&o, auto);
        let got: Vec<(usize, usize, u64)> = blocks(&rows)
            .map(|(first, block)| {
                assert!(block.iter().all(|r| r.layout == block[0].layout));
                (first, block.len(), block[0].layout.bytes)
            })
            .collect();
        let per = o.bench.algorithms().len();
        assert!(per > 1);
        let sizes: Vec<u64> = got.iter().map(|g| g.2).collect();
        assert_eq!(sizes.len(), 3, "{got:?}");
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            vec![(0, per), (per, per), (2 * per, per)]
        );
    }

    #[test]
    fn interleaved_rows_check_clean_and_refused_ones_leave_the_rotation() {
        // Every algorithm of each size, checked, 4 samples each.
        let o = parse([
            "all_reduce",
            "--ranks",
            "3",
            "-a",
            "all",
            "--sizes",
            "8,1K,13K",
            "-c",
            "-n",
            "4",
            "-w",
            "1",
            "-d",
            "i32",
        ])
        .unwrap();
        let mut rows = Vec::new();
        run(&o, Config::default(), |r| rows.push(r.clone())).unwrap();
        assert_eq!(rows.len(), 3 * o.bench.algorithms().len());
        for r in &rows {
            assert_eq!((r.error.as_deref(), r.wrong), (None, Some(0)), "{r:?}");
            assert!(r.time_us > 0.0 && r.iters == 4, "{r:?}");
        }
        // avg on integers is refused on every rank alike: each row of
        // every block fails, and the run goes on to the next block.
        let mut o = o;
        o.op = braid::ReduceOp::Avg;
        let mut rows = Vec::new();
        run(&o, Config::default(), |r| rows.push(r.clone())).unwrap();
        assert_eq!(rows.len(), 3 * o.bench.algorithms().len());
        assert!(rows
            .iter()
            .all(|r| r.error.as_deref().unwrap_or_default().contains("avg")));
    }

    #[test]
    fn a_small_run_checks_clean() {
        let o = parse([
            "reduce_scatter",
            "--ranks",
            "3",
            "-b",
            "8",
            "-e",
            "4K",
            "-c",
            "-d",
            "bf16",
            "-o",
            "avg",
            "-n",
            "2",
            "-w",
            "1",
        ])
        .unwrap();
        let mut rows = Vec::new();
        run(&o, Config::default(), |r| rows.push(r.clone())).unwrap();
        assert_eq!(rows.len(), 5);
        for r in &rows {
            assert_eq!(r.error, None);
            assert_eq!(r.wrong, Some(0));
            assert!(r.time_us > 0.0);
        }
    }
}
