//! The [`Communicator`]: typed, blocking collective calls for one rank.

use std::collections::HashMap;
use std::sync::Arc;

use braid_topologies::cost::pipelines;
use braid_topologies::{
    generate, Algorithm, Collective, Counts, Plan, PlanError, PlanOptions, Shape,
};
use braid_transports::Transport;

use crate::calibrate::{self, Calibration};
use crate::dtype::{DType, Element, ReduceOp};
use crate::executor::{call_code, run_plan, Buffers, Fingerprint, RunOptions};
use crate::select::{self, Choice, ChosenBy};
use crate::{Config, Error, Result};

/// Plans are cached per call shape; a program with endlessly varying
/// all-to-all-v counts must not grow memory without bound.
const PLAN_CACHE_LIMIT: usize = 512;

type PlanKey = (Algorithm, Shape, u64, usize);
/// Plans remembered in front of the cache map: a loop's calls (a training
/// step's all-reduces of several sizes, a bench cycling through every
/// algorithm of a collective with its barrier and start broadcast) come
/// back to them. A look past them costs about 0.15 µs more per call.
const RECENT_PLANS: usize = 16;
/// The latest calls: shape, element size and forced algorithm, which decide
/// the plan and its chunk.
type RecentKey = (Shape, usize, Option<Algorithm>);
/// Choices per (collective, size bucket, element size, forced algorithm).
type ChoiceKey = (Collective, u64, u64, Option<Algorithm>);
const CHOICE_LIMIT: usize = 4096;

/// Whether `BRAID_DEBUG` asks for the tuning table (`tuning`, alone or in a
/// comma-separated list).
fn tuning_requested() -> bool {
    std::env::var("BRAID_DEBUG").is_ok_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("tuning"))
    })
}

/// One rank's handle on a group of ranks.
///
/// Every rank of the group makes the same collective calls in the same order;
/// each call blocks until this rank's part is done and returns
/// `Err(braid::Error)` on bad input, a mismatch between ranks, a dead peer or
/// a timeout (never a panic or an endless wait).
///
/// Reducing calls take a [`ReduceOp`]; `Avg` is for floating-point types only.
/// Variable-count calls (`*_v`) take the per-rank counts, identical on every
/// rank.
pub struct Communicator {
    rank: usize,
    size: usize,
    transport: Box<dyn Transport>,
    config: Config,
    seq: u64,
    sends_to: Vec<u64>,
    recvs_from: Vec<u64>,
    plans: HashMap<PlanKey, Arc<Plan>>,
    /// The latest calls' plans and chunks, looked up before anything else.
    recent_plans: Vec<(RecentKey, Arc<Plan>, usize)>,
    scratch: Vec<u64>,
    staging: Vec<u64>,
    /// The links' figures and the network the model prices, once measured.
    calibration: Option<Calibration>,
    /// Identifies the calibrated network exactly (for shared choices).
    net_key: Arc<str>,
    choices: HashMap<ChoiceKey, Choice>,
}

/// Lengths of one call's buffers, checked before anything moves.
fn expect_len(what: &str, got: usize, want: u64, why: &str) -> Result<()> {
    if got as u64 != want {
        return Err(Error::invalid(format!(
            "{what} has {got} elements, expected {want} ({why})"
        )));
    }
    Ok(())
}

fn as_u64(counts: &[usize]) -> Vec<u64> {
    counts.iter().map(|&c| c as u64).collect()
}

/// A `&mut [T]` view of a `u64` pool of at least `len` elements of `T`.
fn pool<T: Element>(pool: &mut Vec<u64>, len: usize) -> &mut [T] {
    let bytes = len * std::mem::size_of::<T>();
    let words = bytes.div_ceil(8);
    if pool.len() < words {
        pool.resize(words, 0);
    }
    let all: &mut [T] = bytemuck::cast_slice_mut(&mut pool[..]);
    &mut all[..len]
}

impl Communicator {
    /// A communicator over `transport` (one per rank; see
    /// [`crate::local_group`] for an in-process group).
    pub fn new(transport: Box<dyn Transport>, config: Config) -> Communicator {
        let size = transport.size();
        Communicator {
            rank: transport.rank(),
            size,
            transport,
            config,
            seq: 0,
            sends_to: vec![0; size],
            recvs_from: vec![0; size],
            plans: HashMap::new(),
            recent_plans: Vec::with_capacity(RECENT_PLANS),
            scratch: Vec::new(),
            staging: Vec::new(),
            calibration: None,
            net_key: Arc::from(""),
            choices: HashMap::new(),
        }
    }

    /// This rank, in `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The transport's name (`"local"`, ...).
    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// Forces `algorithm` for `collective` on this rank (every rank must force
    /// the same), or returns to automatic choice with `None`.
    pub fn set_algorithm(
        &mut self,
        collective: Collective,
        algorithm: Option<Algorithm>,
    ) -> Result<()> {
        match algorithm {
            Some(a) => self.config = self.config.clone().with_algorithm(collective, a)?,
            None => {
                self.config.algorithms.remove(&collective);
            }
        }
        Ok(())
    }

    /// The algorithm a call of `collective` moving `bytes` (largest per-rank
    /// buffer) of 4-byte elements (f32) would use: the forced one, else the
    /// cost model's choice ([`Communicator::choice`] for other element
    /// types). Before the communicator has calibrated (its first call that
    /// chooses, or [`Communicator::calibrate`]) this is the size rule's
    /// choice ([`crate::select::choose`]).
    pub fn algorithm_for(&self, collective: Collective, bytes: u64) -> Algorithm {
        self.choice(collective, bytes, DType::F32).algorithm
    }

    /// The algorithm, pipeline chunk and predicted time a call of
    /// `collective` moving `bytes` (largest per-rank buffer) of `dtype`
    /// would get, as [`Communicator::algorithm_for`] explains; the same on
    /// every rank. Answers from the size rule before calibration.
    pub fn choice(&self, collective: Collective, bytes: u64, dtype: DType) -> Choice {
        let forced = self.config.algorithms.get(&collective).copied();
        let elem = dtype.size() as u64;
        match self
            .choices
            .get(&(collective, select::bucket(bytes), elem, forced))
        {
            Some(c) => *c,
            None => self.compute_choice(collective, bytes, elem, forced),
        }
    }

    /// The model's predicted time in seconds of a call of `collective`
    /// moving `bytes` (largest per-rank buffer) of `dtype` with `algorithm`,
    /// run as this communicator would run it (the chunk it would pick for a
    /// pipelined algorithm), priced at the size's bucket on the calibrated
    /// network. `None` before calibration, when `algorithm` does not
    /// implement `collective`, or when the model cannot price it.
    pub fn predict(
        &self,
        collective: Collective,
        algorithm: Algorithm,
        bytes: u64,
        dtype: DType,
    ) -> Option<f64> {
        let cal = self.calibration.as_ref()?;
        if !algorithm.supports(collective) {
            return None;
        }
        let c = select::remembered_choice(
            &self.net_key,
            &cal.network,
            collective,
            bytes,
            self.size,
            dtype.size() as u64,
            Some(algorithm),
            self.pinned_chunk(),
        );
        c.predicted
    }

    /// Measures the links (or reads their figures from the cache or the
    /// config) so that the cost model can choose algorithms; see
    /// [`crate::calibrate`]. Collective: every rank calls it, at the same
    /// point of its calls. A communicator calibrates by itself at its first
    /// call whose algorithm is not forced; later calls return the figures
    /// at once.
    pub fn calibrate(&mut self) -> Result<&Calibration> {
        let (seq, rank, size) = (self.seq, self.rank, self.size);
        self.ensure_calibrated()
            .map_err(|e| e.at("calibrate", seq, rank, size))?;
        Ok(self.calibration.as_ref().expect("calibrated"))
    }

    /// The figures and network of the last calibration, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The tuning table `BRAID_DEBUG=tuning` prints on rank 0 after
    /// calibration: the predicted µs of every algorithm of every collective
    /// at a few sizes, 4-byte elements, `*` on the model's choice. `None`
    /// before calibration.
    pub fn tuning_table(&self) -> Option<String> {
        let cal = self.calibration.as_ref()?;
        let chunk = match self.pinned_chunk() {
            Some(c) => format!("chunk {c} B (BRAID_CHUNK_BYTES)"),
            None => "chunks chosen per size".to_string(),
        };
        let pairs = match cal.describe_pairs() {
            p if p.is_empty() => String::new(),
            p => format!("braid tuning pairs: {p}\n"),
        };
        Some(format!(
            "braid tuning table: {} ranks, transport {}, f32, predicted us per call (size = largest per-rank buffer; * = chosen; /64K = pipeline chunk; {chunk})\n\
             braid tuning network: {}\n{pairs}{}",
            self.size,
            self.transport.name(),
            cal.describe(),
            select::tuning_table(&cal.network, self.size, 4, self.pinned_chunk())
        ))
    }

    /// Copies `buf` of `root` into `buf` of every rank.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        let shape = Shape::new(
            Collective::Broadcast,
            self.size,
            root,
            Counts::Single(buf.len() as u64),
        );
        self.collective("broadcast", shape, None, &[], buf)
    }

    /// Reduces `send` of every rank with `op` into `recv` of `root`.
    /// On other ranks `recv` is not touched and may be empty.
    pub fn reduce<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let n = send.len();
        self.checked("reduce", |c| {
            c.check_root(root)?;
            if c.rank == root || !recv.is_empty() {
                expect_len(
                    "recv buffer",
                    recv.len(),
                    n as u64,
                    "the send buffer's length",
                )?;
            }
            Ok(())
        })?;
        let recv = if self.rank == root { recv } else { &mut [][..] };
        let shape = Shape::new(
            Collective::Reduce,
            self.size,
            root,
            Counts::Single(n as u64),
        );
        self.collective("reduce", shape, Some(op), send, recv)
    }

    /// Reduces `send` of every rank with `op` into `recv` of every rank.
    pub fn all_reduce<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        self.checked("all_reduce", |_| {
            expect_len(
                "recv buffer",
                recv.len(),
                send.len() as u64,
                "the send buffer's length",
            )
        })?;
        let shape = Shape::new(
            Collective::AllReduce,
            self.size,
            0,
            Counts::Single(send.len() as u64),
        );
        self.collective("all_reduce", shape, Some(op), send, recv)
    }

    /// [`Communicator::all_reduce`] with one buffer for input and result.
    pub fn all_reduce_in_place<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let mut staging = std::mem::take(&mut self.staging);
        let input = pool::<T>(&mut staging, buf.len());
        input.copy_from_slice(buf);
        let shape = Shape::new(
            Collective::AllReduce,
            self.size,
            0,
            Counts::Single(buf.len() as u64),
        );
        let result = self.collective("all_reduce", shape, Some(op), input, buf);
        self.staging = staging;
        result
    }

    /// Splits `send` of `root` into `size()` equal blocks; block `r` lands in
    /// `recv` of rank `r`. `send` is only read on the root (may be empty elsewhere).
    pub fn scatter<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        let counts = vec![recv.len(); self.size];
        self.scatter_impl("scatter", send, recv, &counts, root)
    }

    /// Scatter with per-rank counts: block `r` has `counts[r]` elements.
    pub fn scatter_v<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        self.scatter_impl("scatter_v", send, recv, counts, root)
    }

    fn scatter_impl<T: Element>(
        &mut self,
        call: &'static str,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        self.checked(call, |c| {
            c.check_root(root)?;
            c.check_counts(counts)?;
            let total: usize = counts.iter().sum();
            if c.rank == root || !send.is_empty() {
                expect_len(
                    "send buffer",
                    send.len(),
                    total as u64,
                    "the sum of all ranks' blocks",
                )?;
            }
            expect_len(
                "recv buffer",
                recv.len(),
                counts[c.rank] as u64,
                "this rank's block",
            )
        })?;
        let send = if self.rank == root { send } else { &[][..] };
        let shape = Shape::new(
            Collective::Scatter,
            self.size,
            root,
            Counts::Blocks(as_u64(counts)),
        );
        self.collective(call, shape, None, send, recv)
    }

    /// Concatenates `send` of every rank, in rank order, into `recv` of `root`
    /// (`size() * send.len()` elements; other ranks' `recv` may be empty).
    pub fn gather<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        let counts = vec![send.len(); self.size];
        self.gather_impl("gather", send, recv, &counts, root)
    }

    /// Gather with per-rank counts: rank `r` sends `counts[r]` elements.
    pub fn gather_v<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        self.gather_impl("gather_v", send, recv, counts, root)
    }

    fn gather_impl<T: Element>(
        &mut self,
        call: &'static str,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        root: usize,
    ) -> Result<()> {
        self.checked(call, |c| {
            c.check_root(root)?;
            c.check_counts(counts)?;
            expect_len(
                "send buffer",
                send.len(),
                counts[c.rank] as u64,
                "this rank's count",
            )?;
            let total: usize = counts.iter().sum();
            if c.rank == root || !recv.is_empty() {
                expect_len(
                    "recv buffer",
                    recv.len(),
                    total as u64,
                    "the sum of all ranks' counts",
                )?;
            }
            Ok(())
        })?;
        let recv = if self.rank == root { recv } else { &mut [][..] };
        let shape = Shape::new(
            Collective::Gather,
            self.size,
            root,
            Counts::Blocks(as_u64(counts)),
        );
        self.collective(call, shape, None, send, recv)
    }

    /// Concatenates `send` of every rank, in rank order, into `recv` of every
    /// rank (`size() * send.len()` elements).
    pub fn all_gather<T: Element>(&mut self, send: &[T], recv: &mut [T]) -> Result<()> {
        let counts = vec![send.len(); self.size];
        self.all_gather_impl("all_gather", send, recv, &counts)
    }

    /// All-gather with per-rank counts: rank `r` contributes `counts[r]` elements.
    pub fn all_gather_v<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        self.all_gather_impl("all_gather_v", send, recv, counts)
    }

    fn all_gather_impl<T: Element>(
        &mut self,
        call: &'static str,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        self.checked(call, |c| {
            c.check_counts(counts)?;
            expect_len(
                "send buffer",
                send.len(),
                counts[c.rank] as u64,
                "this rank's count",
            )?;
            let total: usize = counts.iter().sum();
            expect_len(
                "recv buffer",
                recv.len(),
                total as u64,
                "the sum of all ranks' counts",
            )
        })?;
        let shape = Shape::new(
            Collective::AllGather,
            self.size,
            0,
            Counts::Blocks(as_u64(counts)),
        );
        self.collective(call, shape, None, send, recv)
    }

    /// Reduces `send` (`size() * recv.len()` elements) of every rank with `op`;
    /// block `r` of the result lands in `recv` of rank `r`.
    pub fn reduce_scatter<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let counts = vec![recv.len(); self.size];
        self.reduce_scatter_impl("reduce_scatter", send, recv, &counts, op)
    }

    /// Reduce-scatter with per-rank counts: rank `r` receives `counts[r]` elements.
    pub fn reduce_scatter_v<T: Element>(
        &mut self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<()> {
        self.reduce_scatter_impl("reduce_scatter_v", send, recv, counts, op)
    }

    fn reduce_scatter_impl<T: Element>(
        &mut self,
        call: &'static str,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<()> {
        self.checked(call, |c| {
            c.check_counts(counts)?;
            let total: usize = counts.iter().sum();
            expect_len(
                "send buffer",
                send.len(),
                total as u64,
                "the sum of all ranks' counts",
            )?;
            expect_len(
                "recv buffer",
                recv.len(),
                counts[c.rank] as u64,
                "this rank's count",
            )
        })?;
        let shape = Shape::new(
            Collective::ReduceScatter,
            self.size,
            0,
            Counts::Blocks(as_u64(counts)),
        );
        self.collective(call, shape, Some(op), send, recv)
    }

    /// Block `j` of `send` goes to rank `j`, landing as block `i` (this rank)
    /// of its `recv`; both buffers hold `size()` equal blocks.
    pub fn all_to_all<T: Element>(&mut self, send: &[T], recv: &mut [T]) -> Result<()> {
        let n = self.size;
        self.checked("all_to_all", |_| {
            if send.len() % n != 0 {
                return Err(Error::invalid(format!(
                    "send buffer has {} elements, not a multiple of the {n} ranks; use all_to_all_v for uneven blocks",
                    send.len()
                )));
            }
            expect_len("recv buffer", recv.len(), send.len() as u64, "the send buffer's length")
        })?;
        let block = (send.len() / n) as u64;
        let shape = Shape::new(
            Collective::AllToAll,
            n,
            0,
            Counts::Matrix {
                counts: vec![block; n * n],
                partial: false,
            },
        );
        self.collective("all_to_all", shape, None, send, recv)
    }

    /// All-to-all with counts: `send_counts[j]` elements of `send` go to rank
    /// `j`; `recv_counts[i]` elements arrive from rank `i`, in rank order.
    /// `send_counts[j]` here must equal `recv_counts[this rank]` on rank `j`.
    pub fn all_to_all_v<T: Element>(
        &mut self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        let n = self.size;
        self.checked("all_to_all_v", |c| {
            c.check_counts(send_counts)?;
            c.check_counts(recv_counts)?;
            let sends: usize = send_counts.iter().sum();
            let recvs: usize = recv_counts.iter().sum();
            expect_len(
                "send buffer",
                send.len(),
                sends as u64,
                "the sum of send_counts",
            )?;
            expect_len(
                "recv buffer",
                recv.len(),
                recvs as u64,
                "the sum of recv_counts",
            )
        })?;
        // This rank knows its row (what it sends) and column (what it gets).
        let mut matrix = vec![0u64; n * n];
        for j in 0..n {
            matrix[self.rank * n + j] = send_counts[j] as u64;
            matrix[j * n + self.rank] = recv_counts[j] as u64;
        }
        let shape = Shape::new(
            Collective::AllToAll,
            n,
            0,
            Counts::Matrix {
                counts: matrix,
                partial: true,
            },
        );
        self.collective("all_to_all_v", shape, None, send, recv)
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&mut self) -> Result<()> {
        let shape = Shape::new(Collective::Barrier, self.size, 0, Counts::None);
        self.collective::<u8>("barrier", shape, None, &[], &mut [])
    }

    /// Sends `buf` to `peer`, which must call [`Communicator::recv`] with a
    /// buffer of the same length. Returns when the transport holds the data.
    pub fn send<T: Element>(&mut self, buf: &[T], peer: usize) -> Result<()> {
        self.checked("send", |c| {
            c.check_peer(peer)?;
            if peer == c.rank {
                return Err(Error::invalid(format!(
                    "send to its own rank {peer} can never be matched by a blocking receive; \
                     copy the data locally, or use send_recv(.., {peer}, .., {peer})"
                )));
            }
            Ok(())
        })?;
        self.point_to_point("send", buf, Some(peer), &mut [], None)
    }

    /// Receives from `peer` exactly `buf.len()` elements sent by its
    /// [`Communicator::send`].
    pub fn recv<T: Element>(&mut self, buf: &mut [T], peer: usize) -> Result<()> {
        self.checked("recv", |c| {
            c.check_peer(peer)?;
            if peer == c.rank {
                return Err(Error::invalid(format!(
                    "receive from its own rank {peer} can never be matched by a blocking send; \
                     copy the data locally, or use send_recv(.., {peer}, .., {peer})"
                )));
            }
            Ok(())
        })?;
        self.point_to_point("recv", &[], None, buf, Some(peer))
    }

    /// Sends `send` to `dest` while receiving `recv` from `source`, at once, so
    /// that ranks exchanging with each other cannot deadlock. Sending to and
    /// receiving from this rank itself is a local copy.
    pub fn send_recv<T: Element>(
        &mut self,
        send: &[T],
        dest: usize,
        recv: &mut [T],
        source: usize,
    ) -> Result<()> {
        self.checked("send_recv", |c| {
            c.check_peer(dest)?;
            c.check_peer(source)?;
            if (dest == c.rank) != (source == c.rank) {
                return Err(Error::invalid(format!(
                    "send_recv with this rank ({}) on one side only (dest {dest}, source {source}) \
                     would need a second, unmatched message to itself; make both self or neither",
                    c.rank
                )));
            }
            if dest == c.rank {
                expect_len(
                    "recv buffer",
                    recv.len(),
                    send.len() as u64,
                    "a message to itself",
                )?;
            }
            Ok(())
        })?;
        if dest == self.rank {
            recv.copy_from_slice(send);
            return Ok(());
        }
        self.point_to_point("send_recv", send, Some(dest), recv, Some(source))
    }

    // ---- internals ----

    /// Runs argument checks, attaching where the error happened.
    fn checked(&self, call: &'static str, check: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        check(self).map_err(|e| e.at(call, self.seq, self.rank, self.size))
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::invalid(format!(
                "root {root} is out of range: valid roots are 0..={} for {} ranks",
                self.size - 1,
                self.size
            )));
        }
        Ok(())
    }

    fn check_peer(&self, peer: usize) -> Result<()> {
        if peer >= self.size {
            return Err(Error::invalid(format!(
                "peer {peer} is out of range: valid ranks are 0..={} for {} ranks",
                self.size - 1,
                self.size
            )));
        }
        Ok(())
    }

    fn check_counts(&self, counts: &[usize]) -> Result<()> {
        if counts.len() != self.size {
            return Err(Error::invalid(format!(
                "{} counts given for {} ranks; pass one count per rank, the same on every rank",
                counts.len(),
                self.size
            )));
        }
        Ok(())
    }

    fn check_op<T: Element>(&self, op: ReduceOp) -> Result<()> {
        if op == ReduceOp::Avg && !T::DTYPE.is_float() {
            return Err(Error::unsupported(format!(
                "op avg is defined for floating-point dtypes only; on {} it would silently truncate: \
                 use sum and divide by the number of ranks as your program needs",
                T::DTYPE
            )));
        }
        Ok(())
    }

    /// The chunk the config fixes, if it does.
    fn pinned_chunk(&self) -> Option<u64> {
        (!self.config.tune_chunk).then_some(self.config.chunk_bytes as u64)
    }

    /// Calibrates unless done: collective, see [`Communicator::calibrate`].
    fn ensure_calibrated(&mut self) -> Result<()> {
        if self.calibration.is_some() {
            return Ok(());
        }
        let cal = calibrate::calibrate(self.transport.as_mut(), &self.config).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "while calibrating the links (all ranks do at their first call whose \
                     algorithm the cost model chooses; BRAID_ALGO forces algorithms): {}",
                    e.message()
                ),
            )
            .with_peers(e.peers().to_vec())
        })?;
        if self.rank == 0 {
            tracing::info!(rank = self.rank, elapsed = ?cal.elapsed, "calibrated: {}", cal.describe());
        } else {
            tracing::debug!(rank = self.rank, elapsed = ?cal.elapsed, "calibrated: {}", cal.describe());
        }
        self.net_key = Arc::from(format!("{:?}", cal.network));
        self.calibration = Some(cal);
        self.choices.clear();
        self.recent_plans.clear();
        if self.rank == 0 && tuning_requested() {
            if let Some(table) = self.tuning_table() {
                eprint!("{table}");
            }
        }
        Ok(())
    }

    /// What `collective` at `bytes` of `elem`-byte elements gets now.
    fn compute_choice(
        &self,
        collective: Collective,
        bytes: u64,
        elem: u64,
        forced: Option<Algorithm>,
    ) -> Choice {
        let cal = match &self.calibration {
            Some(cal) => cal,
            None => {
                return Choice::without_model(forced, || {
                    select::choose(collective, bytes, self.size)
                })
            }
        };
        if let Some(a) = forced {
            if !(self.config.tune_chunk && pipelines(a, collective)) {
                // Nothing to choose: skip pricing.
                return Choice::without_model(forced, || a);
            }
        }
        select::remembered_choice(
            &self.net_key,
            &cal.network,
            collective,
            bytes,
            self.size,
            elem,
            forced,
            self.pinned_chunk(),
        )
    }

    /// The choice for a call: calibrates first when the model must choose.
    fn choice_for_call(
        &mut self,
        shape: &Shape,
        elem_size: usize,
        forced: Option<Algorithm>,
    ) -> Result<Choice> {
        let collective = shape.collective;
        if let Counts::Matrix { partial: true, .. } = shape.counts {
            // all_to_all_v: each rank knows only its row and column, so the
            // ranks share no size to choose by.
            return Ok(Choice::without_model(forced, || Algorithm::Pairwise));
        }
        if forced.is_none() {
            self.ensure_calibrated()?;
        }
        let bytes = shape.largest_buffer().saturating_mul(elem_size as u64);
        let elem = elem_size as u64;
        let key = (collective, select::bucket(bytes), elem, forced);
        if let Some(c) = self.choices.get(&key) {
            return Ok(*c);
        }
        let c = self.compute_choice(collective, bytes, elem, forced);
        if self.choices.len() >= CHOICE_LIMIT {
            self.choices.clear();
        }
        self.choices.insert(key, c);
        Ok(c)
    }

    /// The plan of this rank for `shape` and the chunk to stream it in.
    fn plan_for(&mut self, call: &str, shape: &Shape, elem_size: usize) -> Result<usize> {
        let forced = self.config.algorithms.get(&shape.collective).copied();
        // Loops repeat a few calls: compare with the latest ones before
        // anything else. The plan stays there for the call (an index, not
        // a shared pointer: no reference count to touch per call).
        if let Some(slot) = self
            .recent_plans
            .iter()
            .position(|(k, ..)| k.1 == elem_size && k.2 == forced && k.0 == *shape)
        {
            return Ok(slot);
        }
        let choice = self.choice_for_call(shape, elem_size, forced)?;
        let (plan, chunk_bytes) = match self.plan_of(call, shape, elem_size, &choice) {
            Err(e) if choice.by == ChosenBy::Model => {
                // Priced on an even shape of the bucket; this call's own
                // shape may not suit it.
                let bytes = shape.largest_buffer().saturating_mul(elem_size as u64);
                let fallback = Choice::without_model(None, || {
                    select::choose(shape.collective, bytes, self.size)
                });
                tracing::warn!(rank = self.rank, call, "{e}; using {}", fallback.algorithm);
                self.plan_of(call, shape, elem_size, &fallback)?
            }
            other => other?,
        };
        if self.recent_plans.len() == RECENT_PLANS {
            self.recent_plans.remove(0);
        }
        self.recent_plans
            .push(((shape.clone(), elem_size, forced), plan, chunk_bytes));
        Ok(self.recent_plans.len() - 1)
    }

    fn plan_of(
        &mut self,
        call: &str,
        shape: &Shape,
        elem_size: usize,
        choice: &Choice,
    ) -> Result<(Arc<Plan>, usize)> {
        let algorithm = choice.algorithm;
        let chunk_bytes = choice
            .chunk_bytes
            .map_or(self.config.chunk_bytes, |b| b as usize)
            .max(1);
        let chunk_elems = (chunk_bytes / elem_size).max(1) as u64;
        let key = (algorithm, shape.clone(), chunk_elems, self.rank);
        if let Some(plan) = self.plans.get(&key) {
            return Ok((Arc::clone(plan), chunk_bytes));
        }
        let plan = generate(algorithm, shape, self.rank, &PlanOptions { chunk_elems }).map_err(
            |e| match e {
                PlanError::Unsupported { reason, .. } => Error::unsupported(format!(
                    "algorithm {algorithm} ({}) does not support {call}: {reason}",
                    match choice.by {
                        ChosenBy::Forced => "forced by BRAID_ALGO or the config",
                        ChosenBy::Model => "chosen by the cost model",
                        ChosenBy::Rule => "chosen by the size rule",
                    }
                )),
                PlanError::InvalidShape { reason, .. } => Error::invalid(reason),
            },
        )?;
        tracing::debug!(rank = self.rank, call, %algorithm, chunk_bytes, steps = plan.steps.len(), "new plan");
        if self.plans.len() >= PLAN_CACHE_LIMIT {
            self.plans.clear();
        }
        let plan = Arc::new(plan);
        self.plans.insert(key, Arc::clone(&plan));
        Ok((plan, chunk_bytes))
    }

    fn collective<T: Element>(
        &mut self,
        call: &'static str,
        shape: Shape,
        op: Option<ReduceOp>,
        input: &[T],
        output: &mut [T],
    ) -> Result<()> {
        let at = |e: Error, seq: u64, rank: usize, size: usize| e.at(call, seq, rank, size);
        let (seq, rank, size) = (self.seq, self.rank, self.size);
        if let Some(op) = op {
            self.check_op::<T>(op).map_err(|e| at(e, seq, rank, size))?;
        }
        if shape.collective.rooted() {
            self.check_root(shape.root)
                .map_err(|e| at(e, seq, rank, size))?;
        }
        let slot = self
            .plan_for(call, &shape, std::mem::size_of::<T>())
            .map_err(|e| at(e, seq, rank, size))?;
        self.seq += 1;
        let count = match &shape.counts {
            Counts::Matrix { partial: true, .. } => 0,
            _ => shape.largest_buffer(),
        };
        let fingerprint = Fingerprint {
            call: call_code(call),
            dtype: T::DTYPE,
            op: op.map_or(0, ReduceOp::code),
            root: if shape.collective.rooted() {
                shape.root as u32
            } else {
                0
            },
            count,
            seq,
        };
        let op = op.unwrap_or(ReduceOp::Sum);
        let mut scratch = std::mem::take(&mut self.scratch);
        let (_, plan, chunk_bytes) = &self.recent_plans[slot];
        let chunk_bytes = *chunk_bytes;
        let result = run_plan(
            self.transport.as_mut(),
            plan,
            Buffers {
                input,
                output: &mut *output,
                scratch: pool::<T>(&mut scratch, plan.scratch_len as usize),
            },
            &fingerprint,
            &fingerprint,
            &RunOptions {
                op,
                timeout: self.config.timeout,
                chunk_bytes,
            },
        );
        self.scratch = scratch;
        result.map_err(|e| at(e, seq, rank, size))?;
        if op == ReduceOp::Avg {
            // Each rank divides the reduced block it holds.
            T::divide(output, size);
        }
        Ok(())
    }

    fn point_to_point<T: Element>(
        &mut self,
        call: &'static str,
        send: &[T],
        dest: Option<usize>,
        recv: &mut [T],
        source: Option<usize>,
    ) -> Result<()> {
        let plan = point_to_point_plan(
            self.rank,
            self.size,
            dest.map(|d| (d, send.len() as u64)),
            source.map(|s| (s, recv.len() as u64)),
        );
        // Sends and receives are fingerprinted separately: each side checks
        // the header of what it receives against what its peer sent.
        let send_fp = |seq| Fingerprint {
            call: call_code("send"),
            dtype: T::DTYPE,
            op: 0,
            root: 0,
            count: send.len() as u64,
            seq,
        };
        let (seq, rank, size) = (self.seq, self.rank, self.size);
        let opts = RunOptions {
            op: ReduceOp::Sum,
            timeout: self.config.timeout,
            chunk_bytes: self.config.chunk_bytes,
        };
        let expected_recv_fp = source.map(|s| Fingerprint {
            call: call_code("send"),
            dtype: T::DTYPE,
            op: 0,
            root: 0,
            count: recv.len() as u64,
            seq: self.recvs_from[s],
        });
        let sent_fp = send_fp(dest.map_or(0, |d| self.sends_to[d]));
        let expected_fp = expected_recv_fp.unwrap_or(sent_fp);
        let result = run_plan(
            self.transport.as_mut(),
            &plan,
            Buffers {
                input: send,
                output: recv,
                scratch: &mut [],
            },
            &sent_fp,
            &expected_fp,
            &opts,
        );
        result.map_err(|e| e.at(call, seq, rank, size))?;
        if let Some(d) = dest {
            self.sends_to[d] += 1;
        }
        if let Some(s) = source {
            self.recvs_from[s] += 1;
        }
        Ok(())
    }
}

/// The plan `rank` of `size` runs for [`Communicator::send`],
/// [`Communicator::recv`] and [`Communicator::send_recv`]: one step that
/// sends `send`'s count of elements from the input to its peer and
/// receives `recv`'s count from its peer into the output, so that a
/// caller can price a pattern of them with the cost model
/// ([`braid_topologies::price`]) as the communicator runs it.
pub fn point_to_point_plan(
    rank: usize,
    size: usize,
    send: Option<(usize, u64)>,
    recv: Option<(usize, u64)>,
) -> Plan {
    use braid_topologies::{Action, BufferId, Region};
    let mut plan = Plan::new(Collective::AllToAll, Algorithm::Linear, rank, size);
    let mut actions = Vec::new();
    if let Some((peer, count)) = send {
        plan.input_len = count;
        actions.push(Action::Send {
            peer,
            src: Region::new(BufferId::Input, 0, count),
        });
    }
    if let Some((peer, count)) = recv {
        plan.output_len = count;
        actions.push(Action::Recv {
            peer,
            dst: Region::new(BufferId::Output, 0, count),
        });
    }
    // Zero-length messages still travel: the receiver must see them.
    plan.push_step_keep_empty(actions);
    plan
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("transport", &self.transport.name())
            .field("calls", &self.seq)
            .finish()
    }
}
