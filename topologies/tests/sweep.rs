//! The sweep: every (collective, algorithm) pair of
//! [`Collective::algorithms`] is generated for every rank, simulated, and
//! compared with the sequential reference in `common/reference.rs`.
//!
//! Each pair is one test: first a deterministic grid of edge cases (N 1..=9
//! and a few larger, all roots, counts 0, 1, around N, uneven blocks with
//! zeros, partial all-to-all matrices, chunk sizes 0, 1, 7), then random
//! cases (N up to 64, counts up to 100 000, primes, chunk sizes 0, 1, 7,
//! 1024, ops sum/product/min/max on i64 and u64). A failure prints the first
//! failing grid case, or proptest's shrunk case; either can be rerun with
//! `common::run_case`. `PROPTEST_CASES` sets the number of random cases.
//!
//! `cargo test -p braid-topologies --test sweep -- --ignored --nocapture`
//! prints a pass/fail table over all pairs instead.

mod common;

use braid_topologies::{Algorithm, Collective};
use common::{proptest_cases, run_grid, run_proptest};

/// Random cases per pair unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn check_pair(collective: Collective, algorithm: Algorithm) {
    if let Err(e) = run_grid(collective, algorithm) {
        panic!("{collective} / {algorithm}: {e}");
    }
    if let Err(e) = run_proptest(collective, algorithm, proptest_cases(CASES)) {
        panic!("{collective} / {algorithm}: {e}");
    }
}

macro_rules! pairs {
    ($($name:ident: $coll:ident, $alg:ident;)*) => {
        $(
            #[test]
            fn $name() {
                check_pair(Collective::$coll, Algorithm::$alg);
            }
        )*
        const PAIRS: &[(Collective, Algorithm)] = &[$((Collective::$coll, Algorithm::$alg)),*];
    };
}

pairs! {
    broadcast_tree: Broadcast, Tree;
    broadcast_ring: Broadcast, Ring;
    broadcast_star: Broadcast, Star;
    reduce_tree: Reduce, Tree;
    reduce_halving_doubling: Reduce, HalvingDoubling;
    reduce_star: Reduce, Star;
    all_reduce_ring: AllReduce, Ring;
    all_reduce_halving_doubling: AllReduce, HalvingDoubling;
    all_reduce_recursive_doubling: AllReduce, RecursiveDoubling;
    all_reduce_tree: AllReduce, Tree;
    all_reduce_double_binary_tree: AllReduce, DoubleBinaryTree;
    all_reduce_star: AllReduce, Star;
    scatter_tree: Scatter, Tree;
    scatter_star: Scatter, Star;
    gather_tree: Gather, Tree;
    gather_star: Gather, Star;
    all_gather_ring: AllGather, Ring;
    all_gather_halving_doubling: AllGather, HalvingDoubling;
    all_gather_bruck: AllGather, Bruck;
    all_gather_star: AllGather, Star;
    reduce_scatter_ring: ReduceScatter, Ring;
    reduce_scatter_halving_doubling: ReduceScatter, HalvingDoubling;
    reduce_scatter_star: ReduceScatter, Star;
    all_to_all_pairwise: AllToAll, Pairwise;
    all_to_all_linear: AllToAll, Linear;
    all_to_all_star: AllToAll, Star;
    barrier_dissemination: Barrier, Dissemination;
    barrier_tree: Barrier, Tree;
    barrier_star: Barrier, Star;
}

#[test]
fn sweep_covers_every_pair() {
    let mut listed: Vec<(Collective, Algorithm)> = PAIRS.to_vec();
    let mut all: Vec<(Collective, Algorithm)> = Collective::ALL
        .iter()
        .flat_map(|&c| c.algorithms().iter().map(move |&a| (c, a)))
        .collect();
    listed.sort();
    all.sort();
    assert_eq!(
        listed, all,
        "the sweep's pair list must match Collective::algorithms(); add a line to `pairs!`"
    );
}

/// Prints a pass/fail table over all pairs (never fails).
#[test]
#[ignore = "report, not a check: run with --ignored --nocapture"]
fn sweep_summary() {
    let cases = proptest_cases(CASES);
    for &(c, a) in PAIRS {
        let grid = run_grid(c, a);
        let random = if grid.is_ok() {
            run_proptest(c, a, cases)
        } else {
            Ok(())
        };
        let verdict = match (&grid, &random) {
            (Ok(n), Ok(())) => format!("PASS ({n} grid + {cases} random cases)"),
            (Err(e), _) | (_, Err(e)) => format!("FAIL: {}", e.replace('\n', "\n      ")),
        };
        println!("{:<16} {:<20} {verdict}", c.name(), a.name());
    }
}
