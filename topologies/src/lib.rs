//! # braid-topologies
//!
//! Algorithms as data. A topology is a pure function
//! `(algorithm, call shape, rank, options) -> Plan`; see [`generate`].
//! The same plans are run by braid's executor, checked by [`simulate`] and
//! priced by the cost model.
//!
//! ```
//! use braid_topologies::{generate, Algorithm, Collective, Counts, PlanOptions, Shape};
//! let shape = Shape::new(Collective::AllReduce, 4, 0, Counts::Single(1000));
//! let plan = generate(Algorithm::Ring, &shape, 2, &PlanOptions::default()).unwrap();
//! assert_eq!(plan.output_len, 1000);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

mod plan;
pub use plan::{Action, BufferId, Plan, Region, Step};

mod sim;
pub use sim::{
    simulate, simulate_with_stats, RankData, SimError, SimStats, StuckRank, UnmatchedPair,
};

mod blocks;
pub use blocks::{block_offsets, even_blocks};

pub mod cost;
pub use cost::{
    lower_bound, price, price_call, price_call_within, shape_for, tune, Breakdown, Candidate,
    CostError, Estimate, Hosts, Injection, Link, Network, SizeCurve, TuneOptions, Tuning,
};

mod bruck;
mod halving_doubling;
mod pairwise;
mod ring;
mod star;
mod tree;
mod validate;
pub use validate::{validate_plan, PlanDefect};

/// The collective operations a plan can implement. Variable-count forms
/// (all-gather-v, ...) are the same collective with uneven [`Counts::Blocks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Collective {
    /// Root's buffer copied to every rank (in place, [`BufferId::Output`]).
    Broadcast,
    /// Element-wise reduction of every rank's input into root's output.
    Reduce,
    /// Element-wise reduction of every rank's input into every rank's output.
    AllReduce,
    /// Root's input split into blocks, block `r` to rank `r`.
    Scatter,
    /// Every rank's input concatenated, in rank order, into root's output.
    Gather,
    /// Every rank's input concatenated, in rank order, into every rank's output.
    AllGather,
    /// Reduction of every rank's input; block `r` of the result lands on rank `r`.
    ReduceScatter,
    /// Block `j` of rank `i`'s input lands as block `i` of rank `j`'s output.
    AllToAll,
    /// No data; no rank leaves before every rank has entered.
    Barrier,
}

impl Collective {
    /// Every collective, in a fixed order.
    pub const ALL: [Collective; 9] = [
        Collective::Broadcast,
        Collective::Reduce,
        Collective::AllReduce,
        Collective::Scatter,
        Collective::Gather,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Barrier,
    ];

    /// The snake_case name used in `BRAID_ALGO`, logs and the bench.
    pub fn name(self) -> &'static str {
        match self {
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::AllReduce => "all_reduce",
            Collective::Scatter => "scatter",
            Collective::Gather => "gather",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllToAll => "all_to_all",
            Collective::Barrier => "barrier",
        }
    }

    /// Whether the collective combines data with a reduction op.
    pub fn reduces(self) -> bool {
        matches!(
            self,
            Collective::Reduce | Collective::AllReduce | Collective::ReduceScatter
        )
    }

    /// Whether the collective has a root rank.
    pub fn rooted(self) -> bool {
        matches!(
            self,
            Collective::Broadcast | Collective::Reduce | Collective::Scatter | Collective::Gather
        )
    }

    /// The algorithms that implement this collective, the first being the
    /// most generally useful.
    pub fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            Collective::Broadcast => &[Tree, Ring, Star],
            Collective::Reduce => &[Tree, HalvingDoubling, Star],
            Collective::AllReduce => &[
                Ring,
                HalvingDoubling,
                RecursiveDoubling,
                Tree,
                DoubleBinaryTree,
                Star,
            ],
            Collective::Scatter => &[Tree, Star],
            Collective::Gather => &[Tree, Star],
            Collective::AllGather => &[Ring, HalvingDoubling, Bruck, Star],
            Collective::ReduceScatter => &[Ring, HalvingDoubling, Star],
            Collective::AllToAll => &[Pairwise, Linear, Star],
            Collective::Barrier => &[Dissemination, Tree, Star],
        }
    }
}

impl fmt::Display for Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Collective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Collective::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Collective::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown collective '{s}'; valid collectives: {}",
                    names.join(", ")
                )
            })
    }
}

/// The algorithm families. Which collectives each implements is
/// [`Collective::algorithms`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ring: N−1 neighbour steps per phase; all-reduce = reduce-scatter + all-gather;
    /// broadcast is a pipelined chain.
    Ring,
    /// Binomial tree (⌈log2 N⌉ rounds), pipelined in chunks for large messages;
    /// all-reduce = tree reduce + tree broadcast.
    Tree,
    /// Two complementary binary trees each carrying half the data (all-reduce).
    DoubleBinaryTree,
    /// Parameter-server shape: everything goes through the root (rank 0 when unrooted).
    Star,
    /// Recursive halving then doubling (Rabenseifner); non-powers of two fold
    /// the extra ranks in first.
    HalvingDoubling,
    /// Recursive doubling: log2 N exchanges of the whole vector (small all-reduce).
    RecursiveDoubling,
    /// Bruck's all-gather: ⌈log2 N⌉ steps for any N, then a local rotation.
    Bruck,
    /// Pairwise exchange: N−1 steps, step k pairs rank r with r+k and r−k.
    Pairwise,
    /// Every message posted at once (all-to-all for small messages).
    Linear,
    /// Dissemination barrier: ⌈log2 N⌉ rounds of zero-byte messages.
    Dissemination,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 10] = [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::DoubleBinaryTree,
        Algorithm::Star,
        Algorithm::HalvingDoubling,
        Algorithm::RecursiveDoubling,
        Algorithm::Bruck,
        Algorithm::Pairwise,
        Algorithm::Linear,
        Algorithm::Dissemination,
    ];

    /// The snake_case name used in `BRAID_ALGO`, logs and the bench.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Tree => "tree",
            Algorithm::DoubleBinaryTree => "double_binary_tree",
            Algorithm::Star => "star",
            Algorithm::HalvingDoubling => "halving_doubling",
            Algorithm::RecursiveDoubling => "recursive_doubling",
            Algorithm::Bruck => "bruck",
            Algorithm::Pairwise => "pairwise",
            Algorithm::Linear => "linear",
            Algorithm::Dissemination => "dissemination",
        }
    }

    /// Whether this algorithm implements `collective`.
    pub fn supports(self, collective: Collective) -> bool {
        collective.algorithms().contains(&self)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown algorithm '{s}'; valid algorithms: {}",
                    names.join(", ")
                )
            })
    }
}

/// Element counts of a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Counts {
    /// Broadcast, reduce, all-reduce: the length of every rank's buffer.
    Single(u64),
    /// Scatter, gather, all-gather, reduce-scatter (and their -v forms):
    /// `blocks[r]` elements belong to rank `r`; the full buffer is their
    /// concatenation in rank order.
    Blocks(Vec<u64>),
    /// All-to-all(-v): `m[i * n + j]` elements go from rank `i` to rank `j`.
    /// At run time a rank knows only its own row and column; algorithms that
    /// need more ([`Algorithm::Star`]) refuse a matrix marked partial.
    Matrix {
        /// Row-major n×n counts.
        counts: Vec<u64>,
        /// Whether only this rank's row and column are meaningful.
        partial: bool,
    },
    /// Barrier: no data.
    None,
}

/// Everything the ranks agree on about one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// Which collective.
    pub collective: Collective,
    /// Ranks in the group (≥ 1).
    pub nranks: usize,
    /// Root rank (ignored by unrooted collectives; Star uses rank 0 then).
    pub root: usize,
    /// Element counts.
    pub counts: Counts,
}

impl Shape {
    /// A call shape.
    pub fn new(collective: Collective, nranks: usize, root: usize, counts: Counts) -> Self {
        Shape {
            collective,
            nranks,
            root,
            counts,
        }
    }

    /// The single count of broadcast / reduce / all-reduce (0 otherwise).
    pub fn single(&self) -> u64 {
        match self.counts {
            Counts::Single(c) => c,
            _ => 0,
        }
    }

    /// The per-rank blocks (empty slice unless [`Counts::Blocks`]).
    pub fn blocks(&self) -> &[u64] {
        match &self.counts {
            Counts::Blocks(b) => b,
            _ => &[],
        }
    }

    /// The all-to-all count from rank `from` to rank `to` (0 otherwise).
    pub fn matrix(&self, from: usize, to: usize) -> u64 {
        match &self.counts {
            Counts::Matrix { counts, .. } => counts[from * self.nranks + to],
            _ => 0,
        }
    }

    /// Total bytes-relevant size: the largest per-rank buffer in elements
    /// (nccl-tests' "size" convention).
    pub fn largest_buffer(&self) -> u64 {
        match &self.counts {
            Counts::Single(c) => *c,
            Counts::Blocks(b) => b.iter().sum(),
            Counts::Matrix { counts, .. } => counts
                .chunks(self.nranks.max(1))
                .map(|row| row.iter().sum::<u64>())
                .max()
                .unwrap_or(0),
            Counts::None => 0,
        }
    }
}

/// Tuning knobs that do not change a plan's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Pipeline chunk in elements for algorithms that pipeline (tree, ring
    /// broadcast); 0 means the algorithm's default.
    pub chunk_elems: u64,
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The algorithm does not implement this collective or call shape.
    #[error("algorithm '{algorithm}' does not support {collective}: {reason}")]
    Unsupported {
        /// The algorithm asked for.
        algorithm: Algorithm,
        /// The collective asked for.
        collective: Collective,
        /// Why, and what to use instead.
        reason: String,
    },
    /// The call shape itself is inconsistent.
    #[error("invalid {collective} call: {reason}")]
    InvalidShape {
        /// The collective asked for.
        collective: Collective,
        /// What is wrong.
        reason: String,
    },
}

/// Checks that `shape` is self-consistent for `rank`.
pub fn check_shape(shape: &Shape, rank: usize) -> Result<(), PlanError> {
    let bad = |reason: String| {
        Err(PlanError::InvalidShape {
            collective: shape.collective,
            reason,
        })
    };
    let n = shape.nranks;
    if n == 0 {
        return bad("a group needs at least one rank".into());
    }
    if rank >= n {
        return bad(format!("rank {rank} is out of range for {n} ranks"));
    }
    if shape.collective.rooted() && shape.root >= n {
        return bad(format!(
            "root {} is out of range: valid roots are 0..{}",
            shape.root,
            n - 1
        ));
    }
    let counts_ok = match (&shape.collective, &shape.counts) {
        (Collective::Broadcast | Collective::Reduce | Collective::AllReduce, Counts::Single(_)) => {
            true
        }
        (
            Collective::Scatter
            | Collective::Gather
            | Collective::AllGather
            | Collective::ReduceScatter,
            Counts::Blocks(b),
        ) => {
            if b.len() != n {
                return bad(format!("{} block counts given for {n} ranks", b.len()));
            }
            true
        }
        (Collective::AllToAll, Counts::Matrix { counts, .. }) => {
            if counts.len() != n * n {
                return bad(format!(
                    "{} all-to-all counts given, expected {n}×{n} = {}",
                    counts.len(),
                    n * n
                ));
            }
            true
        }
        (Collective::Barrier, Counts::None) => true,
        _ => false,
    };
    if !counts_ok {
        return bad(format!(
            "counts {:?} do not fit this collective",
            shape.counts
        ));
    }
    Ok(())
}

/// Makes `rank`'s plan for `shape` with `algorithm`.
///
/// Every rank calls this with the same `shape` (and options) and gets its own
/// part; together the plans implement the collective. Errors when the
/// algorithm does not implement the collective or the shape is inconsistent.
pub fn generate(
    algorithm: Algorithm,
    shape: &Shape,
    rank: usize,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    check_shape(shape, rank)?;
    if !algorithm.supports(shape.collective) {
        let valid: Vec<&str> = shape
            .collective
            .algorithms()
            .iter()
            .map(|a| a.name())
            .collect();
        return Err(PlanError::Unsupported {
            algorithm,
            collective: shape.collective,
            reason: format!("valid algorithms for it: {}", valid.join(", ")),
        });
    }
    let mut plan = match algorithm {
        Algorithm::Ring => ring::plan(shape, rank, options),
        Algorithm::Tree => tree::plan(shape, rank, options),
        Algorithm::DoubleBinaryTree => tree::double_binary_plan(shape, rank, options),
        Algorithm::Star => star::plan(shape, rank, options),
        Algorithm::HalvingDoubling => halving_doubling::plan(shape, rank, options),
        Algorithm::RecursiveDoubling => {
            halving_doubling::recursive_doubling_plan(shape, rank, options)
        }
        Algorithm::Bruck => bruck::plan(shape, rank, options),
        Algorithm::Pairwise => pairwise::plan(shape, rank, options),
        Algorithm::Linear => pairwise::linear_plan(shape, rank, options),
        Algorithm::Dissemination => bruck::dissemination_plan(shape, rank, options),
    }?;
    (plan.input_len, plan.output_len) = buffer_lengths(shape, rank);
    Ok(plan)
}

/// The buffer lengths (input, output) that `rank` must pass for `shape`.
pub fn buffer_lengths(shape: &Shape, rank: usize) -> (u64, u64) {
    let n = shape.nranks;
    match shape.collective {
        Collective::Broadcast => (0, shape.single()),
        Collective::Reduce => (
            shape.single(),
            if rank == shape.root {
                shape.single()
            } else {
                0
            },
        ),
        Collective::AllReduce => (shape.single(), shape.single()),
        Collective::Scatter => (
            if rank == shape.root {
                shape.blocks().iter().sum()
            } else {
                0
            },
            shape.blocks()[rank],
        ),
        Collective::Gather => (
            shape.blocks()[rank],
            if rank == shape.root {
                shape.blocks().iter().sum()
            } else {
                0
            },
        ),
        Collective::AllGather => (shape.blocks()[rank], shape.blocks().iter().sum()),
        Collective::ReduceScatter => (shape.blocks().iter().sum(), shape.blocks()[rank]),
        Collective::AllToAll => (
            (0..n).map(|j| shape.matrix(rank, j)).sum(),
            (0..n).map(|i| shape.matrix(i, rank)).sum(),
        ),
        Collective::Barrier => (0, 0),
    }
}
