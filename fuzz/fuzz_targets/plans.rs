//! Arbitrary collective, N (up to 256), counts, root, chunk size and algorithm
//! fed to the plan generators; every rank's plan is then simulated together and
//! the result compared with the sequential reference. Any failure to generate
//! (other than Star refusing a partial all-to-all matrix), any simulator error
//! (deadlock, unmatched or mismatched message, hazard, out of bounds) and any
//! wrong element is a crash.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run plans -- -max_total_time=300`
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use braid_topologies::{Algorithm, Collective};
use libfuzzer_sys::fuzz_target;

#[path = "../../topologies/tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::reference::{CaseCounts, Op};
use common::{run_case, Case, ElemType};

/// Total elements moved per case stay small so each input runs in milliseconds.
const ELEMENT_BUDGET: u64 = 1 << 16;

struct FuzzCase(Case);

impl<'a> Arbitrary<'a> for FuzzCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let collective = *u.choose(&Collective::ALL)?;
        let algorithm = *u.choose(collective.algorithms())?;
        let nranks = u.int_in_range(1..=256usize)?;
        let root = u.int_in_range(0..=nranks - 1)?;
        let per_rank_budget = (ELEMENT_BUDGET / nranks as u64).max(1);
        let counts = match collective {
            Collective::Broadcast | Collective::Reduce | Collective::AllReduce => {
                CaseCounts::Single(u.int_in_range(0..=per_rank_budget * 4)?)
            }
            Collective::Scatter
            | Collective::Gather
            | Collective::AllGather
            | Collective::ReduceScatter => {
                let max = u.int_in_range(0..=per_rank_budget)?;
                let blocks = (0..nranks)
                    .map(|_| u.int_in_range(0..=max))
                    .collect::<Result<Vec<u64>>>()?;
                CaseCounts::Blocks(blocks)
            }
            Collective::AllToAll => {
                let max = (ELEMENT_BUDGET / (nranks * nranks) as u64).min(u.int_in_range(0..=16)?);
                let counts = (0..nranks * nranks)
                    .map(|_| u.int_in_range(0..=max))
                    .collect::<Result<Vec<u64>>>()?;
                CaseCounts::Matrix { counts, partial: u.arbitrary()? }
            }
            Collective::Barrier => CaseCounts::None,
        };
        let chunk_elems = *u.choose(&[0u64, 1, 2, 3, 7, 64, 1024, 1 << 20])?;
        let op = *u.choose(&[Op::Sum, Op::Prod, Op::Min, Op::Max])?;
        let elem = if u.arbitrary()? { ElemType::I64 } else { ElemType::U64 };
        let _ = Algorithm::ALL; // every algorithm is reachable through collective.algorithms()
        Ok(FuzzCase(Case { collective, algorithm, nranks, root, counts, chunk_elems, op, elem }))
    }
}

impl std::fmt::Debug for FuzzCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fuzz_target!(|case: FuzzCase| {
    if let Err(e) = run_case(&case.0) {
        panic!("{e}\ncase: {:?}", case.0);
    }
});
