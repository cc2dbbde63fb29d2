//! Shared by the sweep: test cases, their generation, and the runner that
//! checks one case through `generate` + `simulate_with_stats` against the
//! sequential reference.
#![allow(dead_code)]

pub mod reference;

use braid_topologies::{
    even_blocks, generate, simulate_with_stats, Algorithm, Collective, Counts, PlanError,
    PlanOptions, RankData, Shape,
};
use proptest::prelude::*;
use reference::{expected_outputs, initial_data, CaseCounts, Elem, Op};

/// Which element type a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// `i64`.
    I64,
    /// `u64`.
    U64,
}

/// One call: everything needed to rerun it (`run_case(&case)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The collective.
    pub collective: Collective,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Ranks.
    pub nranks: usize,
    /// Root (used by rooted collectives only).
    pub root: usize,
    /// Counts, with full knowledge.
    pub counts: CaseCounts,
    /// `PlanOptions::chunk_elems`.
    pub chunk_elems: u64,
    /// Reduction op (ignored by non-reducing collectives).
    pub op: Op,
    /// Element type.
    pub elem: ElemType,
}

/// How a case that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Simulated and matched the reference.
    Passed,
    /// `Star` refused a partial all-to-all matrix with `PlanError::Unsupported`.
    RefusedPartial,
}

impl Case {
    /// The shape rank `rank` passes to `generate` (a partial all-to-all
    /// matrix keeps only the rank's row and column, zeros elsewhere).
    pub fn shape_for(&self, rank: usize) -> Shape {
        let n = self.nranks;
        let counts = match &self.counts {
            CaseCounts::Single(c) => Counts::Single(*c),
            CaseCounts::Blocks(b) => Counts::Blocks(b.clone()),
            CaseCounts::Matrix { counts, partial } => Counts::Matrix {
                counts: if *partial {
                    (0..n * n)
                        .map(|k| {
                            let (i, j) = (k / n, k % n);
                            if i == rank || j == rank {
                                counts[k]
                            } else {
                                0
                            }
                        })
                        .collect()
                } else {
                    counts.clone()
                },
                partial: *partial,
            },
            CaseCounts::None => Counts::None,
        };
        Shape::new(self.collective, n, self.root, counts)
    }
}

/// Runs one case; `Err` says what went wrong.
pub fn run_case(case: &Case) -> Result<Outcome, String> {
    match case.elem {
        ElemType::I64 => run_typed::<i64>(case),
        ElemType::U64 => run_typed::<u64>(case),
    }
}

fn run_typed<E: Elem>(case: &Case) -> Result<Outcome, String> {
    let n = case.nranks;
    let options = PlanOptions {
        chunk_elems: case.chunk_elems,
    };
    let partial = matches!(case.counts, CaseCounts::Matrix { partial: true, .. });
    let mut plans = Vec::with_capacity(n);
    for r in 0..n {
        match generate(case.algorithm, &case.shape_for(r), r, &options) {
            Ok(p) => {
                if p.collective != case.collective || p.algorithm != case.algorithm {
                    return Err(format!(
                        "generate(rank {r}) returned a plan labelled {} / {}",
                        p.collective, p.algorithm
                    ));
                }
                plans.push(p);
            }
            Err(PlanError::Unsupported { .. }) if partial && case.algorithm == Algorithm::Star => {
                return Ok(Outcome::RefusedPartial)
            }
            Err(e) => return Err(format!("generate(rank {r}) failed: {e}")),
        }
    }
    let data = initial_data::<E>(case.collective, n, case.root, &case.counts, case.op);
    let expected = expected_outputs(case.collective, n, case.root, &case.counts, case.op, &data);
    let sim_data: Vec<RankData<E>> = data
        .iter()
        .map(|(i, o)| RankData {
            input: i.clone(),
            output: o.clone(),
        })
        .collect();
    let op = case.op;
    let (out, stats) = simulate_with_stats(&plans, sim_data, |a, b| E::apply(op, a, b))
        .map_err(|e| format!("simulation failed: {e}"))?;
    for r in 0..n {
        if out[r].input != data[r].0 {
            return Err(format!("rank {r}'s input buffer was modified"));
        }
        let (got, want) = (&out[r].output, &expected[r]);
        if got != want {
            let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
            let i = bad[0];
            let what = if got[i] == E::sentinel() {
                "never written".to_string()
            } else {
                format!("{:?}", got[i])
            };
            return Err(format!(
                "rank {r}: output differs from the reference at {} of {} elements; \
                 first at index {i}: expected {:?}, got {what}",
                bad.len(),
                want.len(),
                want[i]
            ));
        }
    }
    if case.collective == Collective::Barrier && n > 1 {
        for r in 0..n {
            if stats.sent_messages[r] == 0 || stats.received_messages[r] == 0 {
                return Err(format!(
                    "barrier: rank {r} sent {} and received {} messages; every rank must do both",
                    stats.sent_messages[r], stats.received_messages[r]
                ));
            }
            if let Some(s) = (0..n).find(|&s| !stats.depends_on[r][s]) {
                return Err(format!(
                    "barrier: rank {r} can leave before rank {s} has entered \
                     (no chain of messages from {s} to {r})"
                ));
            }
        }
    }
    Ok(Outcome::Passed)
}

/// Keeps a case's work bounded: roughly the elements held by all ranks.
pub const BUDGET: u64 = 1 << 21;
/// The largest count the sweep uses.
pub const MAX_COUNT: u64 = 100_000;
const PRIMES: [u64; 14] = [
    2, 3, 5, 7, 11, 13, 31, 97, 101, 1009, 4099, 10007, 65537, 99991,
];
const OPS: [Op; 4] = [Op::Sum, Op::Prod, Op::Min, Op::Max];

/// Counts up to `max`: 0, 1, around `n`, primes, and anything.
fn count_strategy(n: usize, max: u64) -> BoxedStrategy<u64> {
    let n = n as u64;
    let primes: Vec<u64> = PRIMES.iter().copied().filter(|&p| p <= max).collect();
    prop_oneof![
        2 => Just(0u64),
        2 => Just(1u64),
        2 => prop::sample::select(vec![n.saturating_sub(1), n + 1, 2 * n + 3, 3 * n]).prop_map(move |c| c.min(max)),
        3 => prop::sample::select(primes),
        3 => 0..=64u64.min(max),
        6 => 0..=max,
    ]
    .boxed()
}

/// Block vectors for `n` ranks with total at most `max_total`: even splits
/// (including non-multiples of `n`) or arbitrary sizes with zeros.
fn blocks_strategy(n: usize, max_total: u64) -> BoxedStrategy<Vec<u64>> {
    let per = (max_total / n as u64).max(1);
    let block = prop_oneof![3 => Just(0u64), 2 => Just(1u64), 5 => 0..=per.min(64), 3 => 0..=per];
    prop_oneof![
        count_strategy(n, max_total).prop_map(move |c| even_blocks(c, n)),
        prop::collection::vec(block, n),
        // One rank holds everything.
        (0..n, 0..=max_total).prop_map(move |(r, c)| {
            let mut b = vec![0; n];
            b[r] = c;
            b
        }),
    ]
    .boxed()
}

/// All-to-all matrices with total at most `max_total`.
fn matrix_strategy(n: usize, max_total: u64) -> BoxedStrategy<Vec<u64>> {
    let per = (max_total / (n * n) as u64).max(1);
    let entry = prop_oneof![3 => Just(0u64), 2 => Just(1u64), 5 => 0..=per];
    prop_oneof![
        (0..=per).prop_map(move |c| vec![c; n * n]),
        prop::collection::vec(entry, n * n),
    ]
    .boxed()
}

/// Random cases for one (collective, algorithm) pair.
pub fn case_strategy(collective: Collective, algorithm: Algorithm) -> BoxedStrategy<Case> {
    let nranks = prop_oneof![
        3 => 1usize..=9,
        2 => prop::sample::select(vec![2usize, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64]),
        3 => 1usize..=64,
    ];
    let chunks = prop::sample::select(vec![0u64, 1, 7, 1024]);
    (nranks, chunks)
        .prop_flat_map(move |(n, chunk)| {
            // Tiny chunks mean many steps: shrink the data to match.
            let slow = match chunk {
                1 => 16,
                7 => 4,
                _ => 1,
            };
            let budget = BUDGET / slow;
            let counts: BoxedStrategy<CaseCounts> = match collective {
                Collective::Broadcast | Collective::Reduce | Collective::AllReduce => {
                    count_strategy(n, (budget / n as u64).min(MAX_COUNT))
                        .prop_map(CaseCounts::Single)
                        .boxed()
                }
                Collective::Scatter
                | Collective::Gather
                | Collective::AllGather
                | Collective::ReduceScatter => {
                    blocks_strategy(n, (budget / n as u64).min(MAX_COUNT))
                        .prop_map(CaseCounts::Blocks)
                        .boxed()
                }
                Collective::AllToAll => (matrix_strategy(n, budget), any::<bool>())
                    .prop_map(|(counts, partial)| CaseCounts::Matrix { counts, partial })
                    .boxed(),
                Collective::Barrier => Just(CaseCounts::None).boxed(),
            };
            let elem = prop_oneof![Just(ElemType::I64), Just(ElemType::U64)];
            (
                Just(n),
                0..n,
                counts,
                Just(chunk),
                prop::sample::select(OPS.to_vec()),
                elem,
            )
        })
        .prop_map(move |(nranks, root, counts, chunk_elems, op, elem)| Case {
            collective,
            algorithm,
            nranks,
            root,
            counts,
            chunk_elems,
            op,
            elem,
        })
        .boxed()
}

/// A deterministic grid of small edge cases for one pair: every N in 1..=9
/// and a few larger, every root for small N, counts 0, 1, around N and a
/// prime, chunk sizes 0, 1, 7, even and uneven blocks (with zeros), uniform
/// and irregular matrices, full and partial.
pub fn grid_cases(collective: Collective, algorithm: Algorithm) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut k = 0usize;
    for n in (1..=9).chain([12, 16, 17]) {
        let roots: Vec<usize> = if !collective.rooted() {
            vec![0]
        } else if n <= 9 {
            (0..n).collect()
        } else {
            vec![0, n / 2, n - 1]
        };
        let n64 = n as u64;
        let singles = [0, 1, 2, n64 - 1, n64, n64 + 1, 2 * n64 + 3, 97];
        let mut counts: Vec<CaseCounts> = Vec::new();
        match collective {
            Collective::Broadcast | Collective::Reduce | Collective::AllReduce => {
                counts.extend(singles.iter().map(|&c| CaseCounts::Single(c)));
            }
            Collective::Scatter
            | Collective::Gather
            | Collective::AllGather
            | Collective::ReduceScatter => {
                counts.extend(
                    singles
                        .iter()
                        .map(|&c| CaseCounts::Blocks(even_blocks(c, n))),
                );
                counts.push(CaseCounts::Blocks(
                    (0..n as u64).map(|r| (r * 7 + 3) % 5).collect(),
                ));
                counts.push(CaseCounts::Blocks(
                    (0..n as u64).map(|r| (r * 3) % 4).collect(),
                ));
                let mut one = vec![0; n];
                one[n - 1] = 5;
                counts.push(CaseCounts::Blocks(one));
            }
            Collective::AllToAll => {
                for partial in [false, true] {
                    for c in [0, 1, 3] {
                        counts.push(CaseCounts::Matrix {
                            counts: vec![c; n * n],
                            partial,
                        });
                    }
                    counts.push(CaseCounts::Matrix {
                        counts: (0..n * n)
                            .map(|x| ((x / n) * 3 + (x % n) * 5) as u64 % 4)
                            .collect(),
                        partial,
                    });
                    counts.push(CaseCounts::Matrix {
                        counts: (0..n * n).map(|x| u64::from(x % n == 0)).collect(),
                        partial,
                    });
                }
            }
            Collective::Barrier => counts.push(CaseCounts::None),
        }
        for &root in &roots {
            for c in &counts {
                for chunk in [0, 1, 7] {
                    k += 1;
                    cases.push(Case {
                        collective,
                        algorithm,
                        nranks: n,
                        root,
                        counts: c.clone(),
                        chunk_elems: chunk,
                        op: OPS[k % 4],
                        elem: if k % 3 == 0 {
                            ElemType::U64
                        } else {
                            ElemType::I64
                        },
                    });
                }
            }
        }
    }
    cases
}

/// Runs `case`, turning a panic in generation or simulation into an error.
pub fn run_case_catching(case: &Case) -> Result<Outcome, String> {
    match std::panic::catch_unwind(|| run_case(case)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

/// Runs the grid; returns the number of cases, or the first failure with
/// the number of failing cases.
pub fn run_grid(collective: Collective, algorithm: Algorithm) -> Result<usize, String> {
    let cases = grid_cases(collective, algorithm);
    let mut failures = 0;
    let mut first: Option<String> = None;
    for case in &cases {
        if let Err(e) = run_case_catching(case) {
            failures += 1;
            first.get_or_insert_with(|| format!("{e}\n  case: {case:?}"));
        }
    }
    match first {
        None => Ok(cases.len()),
        Some(f) => Err(format!(
            "{failures} of {} grid cases fail; first: {f}",
            cases.len()
        )),
    }
}

/// The number of random cases per pair: `PROPTEST_CASES` if set, else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `cases` random cases; on failure returns the reason and the shrunk case.
pub fn run_proptest(
    collective: Collective,
    algorithm: Algorithm,
    cases: u32,
) -> Result<(), String> {
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 10_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case_strategy(collective, algorithm), |case| {
        run_case(&case).map(|_| ()).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, case)) => {
            Err(format!("{reason}\n  minimal failing case: {case:?}"))
        }
        Err(TestError::Abort(reason)) => Err(format!("proptest aborted: {reason}")),
    }
}
