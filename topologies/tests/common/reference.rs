//! Sequential reference semantics of every collective, and the test data.
//!
//! Everything here is computed rank by rank with plain loops, independently
//! of any plan, so that a plan's simulated result can be compared with it
//! element for element.

use braid_topologies::{block_offsets, Collective};
use std::fmt::Debug;

/// The reduction ops the sweep uses. All are commutative and associative on
/// the integer types used, so every reduction order gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Wrapping sum.
    Sum,
    /// Wrapping product (inputs are odd so the product never collapses to 0).
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

/// Element types the sweep runs on.
pub trait Elem: Copy + Default + PartialEq + Debug + 'static {
    /// The test value of element `idx` of rank `rank`'s data for `op`.
    fn make(rank: usize, idx: u64, op: Op) -> Self;
    /// What non-root outputs start as; never equal to any result.
    fn sentinel() -> Self;
    /// `op(a, b)`.
    fn apply(op: Op, a: Self, b: Self) -> Self;
}

fn mix(rank: usize, idx: u64) -> u64 {
    // splitmix64 finaliser: spreads min/max winners across ranks.
    let mut z = (rank as u64) << 40 ^ idx ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn base_value(rank: usize, idx: u64, op: Op) -> u64 {
    match op {
        Op::Sum => rank as u64 * 1000 + idx % 997,
        // Odd, so products stay odd (and the sentinels are even).
        Op::Prod => 2 * ((rank as u64 * 31 + idx) % 50) + 1,
        Op::Min | Op::Max => mix(rank, idx) % 1_000_000,
    }
}

impl Elem for i64 {
    fn make(rank: usize, idx: u64, op: Op) -> Self {
        let v = base_value(rank, idx, op) as i64;
        // Exercise negative values too, keeping products odd.
        if op != Op::Prod && idx % 3 == 1 {
            -v
        } else {
            v
        }
    }
    fn sentinel() -> Self {
        i64::MIN + 6
    }
    fn apply(op: Op, a: Self, b: Self) -> Self {
        match op {
            Op::Sum => a.wrapping_add(b),
            Op::Prod => a.wrapping_mul(b),
            Op::Min => a.min(b),
            Op::Max => a.max(b),
        }
    }
}

impl Elem for u64 {
    fn make(rank: usize, idx: u64, op: Op) -> Self {
        base_value(rank, idx, op)
    }
    fn sentinel() -> Self {
        u64::MAX - 5
    }
    fn apply(op: Op, a: Self, b: Self) -> Self {
        match op {
            Op::Sum => a.wrapping_add(b),
            Op::Prod => a.wrapping_mul(b),
            Op::Min => a.min(b),
            Op::Max => a.max(b),
        }
    }
}

/// The counts of a case, with full knowledge of every rank (unlike a
/// partial all-to-all matrix, which the runner derives per rank from this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseCounts {
    /// Broadcast, reduce, all-reduce.
    Single(u64),
    /// Scatter, gather, all-gather, reduce-scatter.
    Blocks(Vec<u64>),
    /// All-to-all: row-major `n × n`; `partial` gives each rank only its row
    /// and column.
    Matrix {
        /// Counts `m[i * n + j]` from rank `i` to rank `j`.
        counts: Vec<u64>,
        /// Whether each rank's shape holds only its row and column.
        partial: bool,
    },
    /// Barrier.
    None,
}

/// Input and output lengths of `rank`, as the collective defines them.
pub fn lengths(
    coll: Collective,
    n: usize,
    root: usize,
    counts: &CaseCounts,
    rank: usize,
) -> (u64, u64) {
    let is_root = rank == root;
    match (coll, counts) {
        (Collective::Broadcast, CaseCounts::Single(c)) => (0, *c),
        (Collective::Reduce, CaseCounts::Single(c)) => (*c, if is_root { *c } else { 0 }),
        (Collective::AllReduce, CaseCounts::Single(c)) => (*c, *c),
        (Collective::Scatter, CaseCounts::Blocks(b)) => {
            (if is_root { b.iter().sum() } else { 0 }, b[rank])
        }
        (Collective::Gather, CaseCounts::Blocks(b)) => {
            (b[rank], if is_root { b.iter().sum() } else { 0 })
        }
        (Collective::AllGather, CaseCounts::Blocks(b)) => (b[rank], b.iter().sum()),
        (Collective::ReduceScatter, CaseCounts::Blocks(b)) => (b.iter().sum(), b[rank]),
        (Collective::AllToAll, CaseCounts::Matrix { counts, .. }) => (
            (0..n).map(|j| counts[rank * n + j]).sum(),
            (0..n).map(|i| counts[i * n + rank]).sum(),
        ),
        (Collective::Barrier, CaseCounts::None) => (0, 0),
        _ => panic!("counts {counts:?} do not fit {coll}"),
    }
}

/// Per-rank (input, initial output) buffers for a case. Inputs hold test
/// values; outputs hold the sentinel, except broadcast's root, whose output
/// is the data to broadcast.
pub fn initial_data<E: Elem>(
    coll: Collective,
    n: usize,
    root: usize,
    counts: &CaseCounts,
    op: Op,
) -> Vec<(Vec<E>, Vec<E>)> {
    (0..n)
        .map(|r| {
            let (ilen, olen) = lengths(coll, n, root, counts, r);
            let input: Vec<E> = (0..ilen).map(|i| E::make(r, i, op)).collect();
            let output: Vec<E> = if coll == Collective::Broadcast && r == root {
                (0..olen).map(|i| E::make(r, i, op)).collect()
            } else {
                vec![E::sentinel(); olen as usize]
            };
            (input, output)
        })
        .collect()
}

/// Element-wise `op` over every rank's input, in rank order.
fn reduce_all<E: Elem>(inputs: &[Vec<E>], op: Op) -> Vec<E> {
    let mut acc = inputs[0].clone();
    for input in &inputs[1..] {
        for (a, &b) in acc.iter_mut().zip(input) {
            *a = E::apply(op, *a, b);
        }
    }
    acc
}

fn range(off: &[u64], r: usize) -> std::ops::Range<usize> {
    off[r] as usize..off[r + 1] as usize
}

/// The output every rank must end with, computed sequentially from the
/// inputs and initial outputs.
pub fn expected_outputs<E: Elem>(
    coll: Collective,
    n: usize,
    root: usize,
    counts: &CaseCounts,
    op: Op,
    data: &[(Vec<E>, Vec<E>)],
) -> Vec<Vec<E>> {
    let inputs: Vec<Vec<E>> = data.iter().map(|(i, _)| i.clone()).collect();
    let empty = Vec::new();
    match (coll, counts) {
        (Collective::Broadcast, _) => vec![data[root].1.clone(); n],
        (Collective::Reduce, _) => {
            let red = reduce_all(&inputs, op);
            (0..n)
                .map(|r| {
                    if r == root {
                        red.clone()
                    } else {
                        empty.clone()
                    }
                })
                .collect()
        }
        (Collective::AllReduce, _) => vec![reduce_all(&inputs, op); n],
        (Collective::Scatter, CaseCounts::Blocks(b)) => {
            let off = block_offsets(b);
            (0..n)
                .map(|r| inputs[root][range(&off, r)].to_vec())
                .collect()
        }
        (Collective::Gather, _) => {
            let cat = inputs.concat();
            (0..n)
                .map(|r| {
                    if r == root {
                        cat.clone()
                    } else {
                        empty.clone()
                    }
                })
                .collect()
        }
        (Collective::AllGather, _) => vec![inputs.concat(); n],
        (Collective::ReduceScatter, CaseCounts::Blocks(b)) => {
            let off = block_offsets(b);
            let red = reduce_all(&inputs, op);
            (0..n).map(|r| red[range(&off, r)].to_vec()).collect()
        }
        (Collective::AllToAll, CaseCounts::Matrix { counts, .. }) => {
            // Rank i's input is its row's blocks in order j = 0..n; rank j's
            // output is its column's blocks in order i = 0..n.
            let in_off: Vec<Vec<u64>> = (0..n)
                .map(|i| block_offsets(&counts[i * n..(i + 1) * n]))
                .collect();
            (0..n)
                .map(|j| {
                    (0..n)
                        .flat_map(|i| inputs[i][range(&in_off[i], j)].iter().copied())
                        .collect()
                })
                .collect()
        }
        (Collective::Barrier, _) => vec![empty; n],
        _ => panic!("counts {counts:?} do not fit {coll}"),
    }
}
