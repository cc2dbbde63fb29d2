//! Inputs and expected results for `-c`: small integers that every dtype
//! holds exactly, chosen so that any reduction of them (in any order) is
//! exact too, so every element of every result can be compared with `==`.

use braid::{Collective, DType, Element, ReduceOp};

use crate::args::Bench;

/// What an output element is unless the call wrote it (every input and every
/// expected result is at least 1, barring integer wrap-around).
pub const SENTINEL: i64 = 0;

/// The input values of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Values {
    /// The op, for reducing calls.
    op: Option<ReduceOp>,
    /// Inputs of sums lie in `1..=span`, so that n of them stay exact.
    span: u64,
}

/// The largest integer up to which every integer is exact in `dtype`
/// (integer types wrap, which conversion from i64 reproduces exactly).
fn exact_limit(dtype: DType) -> u64 {
    match dtype {
        DType::BF16 => 1 << 8,
        DType::F16 => 1 << 11,
        DType::F32 => 1 << 24,
        DType::F64 => 1 << 53,
        _ => u64::MAX,
    }
}

impl Values {
    /// Values for `bench` with `op` on `dtype` at `nranks` ranks.
    pub fn new(bench: Bench, op: ReduceOp, dtype: DType, nranks: usize) -> Values {
        let op = bench.reduces().then_some(op);
        let span = (exact_limit(dtype) / nranks.max(1) as u64).clamp(1, 7);
        Values { op, span }
    }

    /// Input element `i` of `rank`'s send buffer (for broadcast: of root's buffer).
    ///
    /// Products multiply 1s and 2s, at most one 2 in three ranks, so that
    /// 2^⌈n/3⌉ stays finite in f16 up to 45 ranks; sums, min and max use
    /// `1..=span`; data-moving calls use `1..=97`, which every dtype holds
    /// (i8 and bf16 included) and which differs between neighbouring ranks
    /// and elements.
    pub fn input(&self, rank: usize, i: u64) -> i64 {
        let r = rank as u64;
        let v = match self.op {
            None => 1 + (r.wrapping_mul(37) + i.wrapping_mul(11) + (i / 97) * 5) % 97,
            Some(ReduceOp::Prod) => 1 + u64::from((r + i) % 3 == 0),
            Some(_) => 1 + (r.wrapping_mul(3) + i) % self.span,
        };
        v as i64
    }

    /// Element `i` of every rank's inputs, reduced with the op, in i64
    /// (wrapping like the integer kernels; `Avg` sums, the caller divides).
    fn reduced(&self, nranks: usize, i: u64) -> i64 {
        let vals = (0..nranks).map(|q| self.input(q, i));
        match self.op.unwrap_or(ReduceOp::Sum) {
            ReduceOp::Sum | ReduceOp::Avg => vals.fold(0, i64::wrapping_add),
            ReduceOp::Prod => vals.fold(1, i64::wrapping_mul),
            ReduceOp::Min => vals.min().unwrap_or(0),
            ReduceOp::Max => vals.max().unwrap_or(0),
        }
    }

    /// What element `idx` of `rank`'s output must hold after the call, as an
    /// integer (before `Avg`'s division). `count` is the call's count (one
    /// rank's block for chunked calls).
    pub fn expected(
        &self,
        bench: Bench,
        nranks: usize,
        rank: usize,
        root: usize,
        count: u64,
        idx: u64,
    ) -> i64 {
        let n = nranks;
        let block = |q: usize| q as u64 * count;
        match bench {
            Bench::SendRecv => self.input((rank + n - 1) % n, idx),
            Bench::Collective(c) => match c {
                Collective::AllReduce | Collective::Reduce => self.reduced(n, idx),
                Collective::Broadcast => self.input(root, idx),
                Collective::AllGather | Collective::Gather => {
                    self.input((idx / count) as usize, idx % count)
                }
                Collective::Scatter => self.input(root, block(rank) + idx),
                Collective::ReduceScatter => self.reduced(n, block(rank) + idx),
                Collective::AllToAll => {
                    self.input((idx / count) as usize, block(rank) + idx % count)
                }
                Collective::Barrier => SENTINEL,
            },
        }
    }

    /// Whether results are divided by the number of ranks (`Avg`).
    pub fn averages(&self) -> bool {
        self.op == Some(ReduceOp::Avg)
    }
}

/// Fills `buf` with `rank`'s inputs.
pub fn fill<T: Element>(values: &Values, rank: usize, buf: &mut [T]) {
    for (i, x) in buf.iter_mut().enumerate() {
        *x = T::from_i64(values.input(rank, i as u64));
    }
}

/// Counts the elements of `rank`'s output `got` that differ from what the
/// call must produce.
pub fn count_wrong<T: Element>(
    values: &Values,
    bench: Bench,
    nranks: usize,
    rank: usize,
    root: usize,
    count: u64,
    got: &[T],
) -> u64 {
    let mut wrong = 0;
    for (idx, g) in got.iter().enumerate() {
        let mut want = [T::from_i64(
            values.expected(bench, nranks, rank, root, count, idx as u64),
        )];
        if values.averages() {
            T::divide(&mut want, nranks);
        }
        if *g != want[0] {
            wrong += 1;
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid::bf16;

    #[test]
    fn inputs_are_small_and_differ_between_ranks() {
        let v = Values::new(
            Bench::Collective(Collective::AllGather),
            ReduceOp::Sum,
            DType::I8,
            4,
        );
        assert!((0..4).all(|r| (0..10_000).all(|i| (1..=97).contains(&v.input(r, i)))));
        assert_ne!(v.input(0, 5), v.input(1, 5));
        let v = Values::new(
            Bench::Collective(Collective::AllReduce),
            ReduceOp::Sum,
            DType::BF16,
            64,
        );
        assert!(
            (0..64).all(|r| v.input(r, 3) <= 4),
            "64 ranks of bf16 sum to at most 256"
        );
        let v = Values::new(
            Bench::Collective(Collective::AllReduce),
            ReduceOp::Prod,
            DType::F16,
            4,
        );
        assert!((0..100).all(|i| v.reduced(4, i) <= 4));
    }

    #[test]
    fn expected_results_follow_each_collective() {
        let ar = Values::new(
            Bench::Collective(Collective::AllReduce),
            ReduceOp::Max,
            DType::F32,
            3,
        );
        let want = (0..3).map(|q| ar.input(q, 4)).max().unwrap();
        assert_eq!(
            ar.expected(Bench::Collective(Collective::AllReduce), 3, 1, 0, 10, 4),
            want
        );
        let rs = Bench::Collective(Collective::ReduceScatter);
        let v = Values::new(rs, ReduceOp::Sum, DType::F32, 3);
        let want: i64 = (0..3).map(|q| v.input(q, 2 * 5 + 1)).sum();
        assert_eq!(v.expected(rs, 3, 2, 0, 5, 1), want);
        let a2a = Bench::Collective(Collective::AllToAll);
        let v = Values::new(a2a, ReduceOp::Sum, DType::F32, 3);
        // Rank 1's block 2 comes from rank 2's block 1.
        assert_eq!(v.expected(a2a, 3, 1, 0, 4, 2 * 4 + 3), v.input(2, 4 + 3));
        let sc = Bench::Collective(Collective::Scatter);
        assert_eq!(v.expected(sc, 3, 2, 1, 4, 3), v.input(1, 2 * 4 + 3));
        assert_eq!(v.expected(Bench::SendRecv, 3, 0, 0, 4, 3), v.input(2, 3));
    }

    #[test]
    fn count_wrong_counts_elements() {
        let b = Bench::Collective(Collective::AllReduce);
        let v = Values::new(b, ReduceOp::Avg, DType::BF16, 3);
        let mut good: Vec<bf16> = (0..50)
            .map(|i| bf16::from_i64(v.expected(b, 3, 0, 0, 50, i)))
            .collect();
        bf16::divide(&mut good, 3);
        assert_eq!(count_wrong(&v, b, 3, 0, 0, 50, &good), 0);
        good[7] = bf16::from_i64(SENTINEL);
        good[9] = bf16::from_i64(SENTINEL);
        assert_eq!(count_wrong(&v, b, 3, 0, 0, 50, &good), 2);
    }
}
