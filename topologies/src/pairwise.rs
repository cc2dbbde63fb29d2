//! All-to-all by direct exchange: pairwise ([`Algorithm::Pairwise`]) and
//! linear ([`Algorithm::Linear`]). Both need only this rank's row and column
//! of the count matrix, so they serve all_to_all_v with a partial matrix.
//!
//! Costs, with α the per-message latency, β = 1/B the per-element transfer
//! time, N the rank count and S the elements one rank sends in all (its
//! input minus its own block):
//!
//! * **pairwise**: after copying its own block, rank r spends N−1 steps; at
//!   step k it sends to `(r + k) mod N` and receives from `(r − k) mod N`,
//!   so every rank has exactly one message in flight each way:
//!   `(N−1)α + Σ_k max(block sent, block received)·β` ≈ `(N−1)(α + S/(N−1)·β)`
//!   for even blocks. Contention-free on any network; wins for large blocks.
//! * **linear**: every send and receive posted in one step: `α + S·β` on a
//!   per-link model (N−1 messages overlap), but all N−1 peers hit each rank
//!   at once, so it wins for small messages where latency dominates and
//!   loses to pairwise once the incast congests the receiver's link.

use crate::{Action, Algorithm, BufferId, Collective, Plan, PlanError, PlanOptions, Region, Shape};

/// This rank's input offsets (by destination) and output offsets (by source),
/// from its row and column only.
fn layout(shape: &Shape, rank: usize) -> (Vec<u64>, Vec<u64>) {
    let n = shape.nranks;
    let prefix = |f: &dyn Fn(usize) -> u64| {
        let mut at = 0u64;
        let mut v: Vec<u64> = (0..n)
            .map(|k| {
                let o = at;
                at += f(k);
                o
            })
            .collect();
        v.push(at);
        v
    };
    (
        prefix(&|j| shape.matrix(rank, j)),
        prefix(&|i| shape.matrix(i, rank)),
    )
}

fn check(shape: &Shape, algorithm: Algorithm) -> Result<(), PlanError> {
    if shape.collective == Collective::AllToAll {
        Ok(())
    } else {
        Err(PlanError::Unsupported {
            algorithm,
            collective: shape.collective,
            reason: format!("{algorithm} implements all_to_all only"),
        })
    }
}

fn own_copy(shape: &Shape, rank: usize, ins: &[u64], outs: &[u64]) -> Action {
    let len = shape.matrix(rank, rank);
    Action::Copy {
        src: Region::new(BufferId::Input, ins[rank], len),
        dst: Region::new(BufferId::Output, outs[rank], len),
    }
}

fn send_to(shape: &Shape, rank: usize, ins: &[u64], to: usize) -> Action {
    Action::Send {
        peer: to,
        src: Region::new(BufferId::Input, ins[to], shape.matrix(rank, to)),
    }
}

fn recv_from(shape: &Shape, rank: usize, outs: &[u64], from: usize) -> Action {
    Action::Recv {
        peer: from,
        dst: Region::new(BufferId::Output, outs[from], shape.matrix(from, rank)),
    }
}

/// [`Algorithm::Pairwise`]: own block copied, then N−1 exchange steps.
pub(crate) fn plan(shape: &Shape, rank: usize, _options: &PlanOptions) -> Result<Plan, PlanError> {
    check(shape, Algorithm::Pairwise)?;
    let n = shape.nranks;
    let (ins, outs) = layout(shape, rank);
    let mut plan = Plan::new(shape.collective, Algorithm::Pairwise, rank, n);
    plan.push_step(vec![own_copy(shape, rank, &ins, &outs)]);
    for k in 1..n {
        let to = (rank + k) % n;
        let from = (rank + n - k) % n;
        plan.push_step(vec![
            send_to(shape, rank, &ins, to),
            recv_from(shape, rank, &outs, from),
        ]);
    }
    Ok(plan)
}

/// [`Algorithm::Linear`]: own block copied and every message posted in one
/// step.
pub(crate) fn linear_plan(
    shape: &Shape,
    rank: usize,
    _options: &PlanOptions,
) -> Result<Plan, PlanError> {
    check(shape, Algorithm::Linear)?;
    let n = shape.nranks;
    let (ins, outs) = layout(shape, rank);
    let mut plan = Plan::new(shape.collective, Algorithm::Linear, rank, n);
    let mut acts = vec![own_copy(shape, rank, &ins, &outs)];
    for k in 1..n {
        acts.push(send_to(shape, rank, &ins, (rank + k) % n));
        acts.push(recv_from(shape, rank, &outs, (rank + n - k) % n));
    }
    plan.push_step(acts);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{check as check_plans, matrix, COUNTS};
    use crate::{generate, Counts};

    #[test]
    fn all_to_all_all_n_counts() {
        for n in 1..=17 {
            for &count in &COUNTS {
                let mut mats = vec![vec![count; n * n]];
                mats.extend((0..3).map(|s| matrix(n, count.min(40), s)));
                for counts in mats {
                    for alg in [Algorithm::Pairwise, Algorithm::Linear, Algorithm::Star] {
                        let shape = Shape::new(
                            Collective::AllToAll,
                            n,
                            0,
                            Counts::Matrix {
                                counts: counts.clone(),
                                partial: false,
                            },
                        );
                        check_plans(alg, &shape, &Default::default());
                    }
                }
            }
        }
    }

    /// With a partial matrix each rank's plan may only depend on its row and
    /// column: scramble everything else and the plan must not change.
    #[test]
    fn partial_matrix_uses_only_row_and_column() {
        for n in 1..=9 {
            let full = matrix(n, 11, 1);
            for rank in 0..n {
                let mut scrambled = full.clone();
                for i in 0..n {
                    for j in 0..n {
                        if i != rank && j != rank {
                            scrambled[i * n + j] = 1000 + (i * n + j) as u64;
                        }
                    }
                }
                for alg in [Algorithm::Pairwise, Algorithm::Linear] {
                    let a = generate(
                        alg,
                        &Shape::new(
                            Collective::AllToAll,
                            n,
                            0,
                            Counts::Matrix {
                                counts: full.clone(),
                                partial: false,
                            },
                        ),
                        rank,
                        &Default::default(),
                    )
                    .unwrap();
                    let b = generate(
                        alg,
                        &Shape::new(
                            Collective::AllToAll,
                            n,
                            0,
                            Counts::Matrix {
                                counts: scrambled.clone(),
                                partial: true,
                            },
                        ),
                        rank,
                        &Default::default(),
                    )
                    .unwrap();
                    assert_eq!(a.steps, b.steps, "{alg} n {n} rank {rank}");
                }
            }
        }
    }

    #[test]
    fn pairwise_has_n_minus_one_exchange_steps() {
        let n = 6;
        let shape = Shape::new(
            Collective::AllToAll,
            n,
            0,
            Counts::Matrix {
                counts: vec![2; n * n],
                partial: false,
            },
        );
        let p = generate(Algorithm::Pairwise, &shape, 4, &Default::default()).unwrap();
        assert_eq!(p.steps.len(), n);
        assert_eq!(p.messages_sent(), n - 1);
        let l = generate(Algorithm::Linear, &shape, 4, &Default::default()).unwrap();
        assert_eq!(l.steps.len(), 1);
        assert_eq!(l.scratch_len + p.scratch_len, 0);
    }

    #[test]
    fn huge_counts_generate_without_overflow() {
        let count = 3 * (1u64 << 31) + 7;
        for n in [1, 2, 5] {
            let shape = Shape::new(
                Collective::AllToAll,
                n,
                0,
                Counts::Matrix {
                    counts: vec![count; n * n],
                    partial: true,
                },
            );
            for alg in [Algorithm::Pairwise, Algorithm::Linear] {
                let plans: Vec<Plan> = (0..n)
                    .map(|r| generate(alg, &shape, r, &Default::default()).unwrap())
                    .collect();
                let data = (0..n)
                    .map(|r| {
                        let (il, ol) = crate::buffer_lengths(&shape, r);
                        crate::RankData {
                            input: vec![(); il as usize],
                            output: vec![(); ol as usize],
                        }
                    })
                    .collect();
                crate::simulate::<()>(&plans, data, |_, _| ()).unwrap();
            }
        }
    }

    #[test]
    fn other_collectives_are_refused() {
        let shape = Shape::new(Collective::AllReduce, 2, 0, Counts::Single(3));
        assert!(plan(&shape, 0, &Default::default()).is_err());
        assert!(linear_plan(&shape, 0, &Default::default()).is_err());
    }
}
