//! Star ([`Algorithm::Star`]): the parameter-server shape. Every message goes
//! to or from one hub, the root for rooted collectives and rank 0 otherwise;
//! the hub posts all its receives (or sends) in one step.
//!
//! Costs, with α the per-message latency, β = 1/B the per-element transfer
//! time, γ the per-element reduce time, S the element count of the full
//! vector and N the rank count. The hub's link carries everything, so on a
//! per-NIC model its (N−1) messages serialise:
//!
//! * **broadcast**: `α + (N−1)·S·β` at the hub (one step).
//! * **reduce**: `α + (N−1)·S·β + (N−1)·S·γ`; the hub stages every input in
//!   scratch ((N−1)·S elements) and folds them in rank order, so the result
//!   is bit-identical to a sequential left fold (reproducible floating point).
//! * **all-reduce** = reduce + broadcast: `2α + 2(N−1)·S·β + (N−1)·S·γ`.
//! * **scatter / gather**: `α + (N−1)/N·S·β` (even blocks).
//! * **all-gather** = gather + broadcast of the whole: `2α + (N−1)(1 + 1/N)·S·β`.
//! * **reduce-scatter** = reduce + scatter at the hub:
//!   `2α + (N−1)·S·β(1 + 1/N) + (N−1)·S·γ`.
//! * **all-to-all**: every row to rank 0, which regroups and sends every
//!   column: `2α + 2·(elements not on rank 0)·β`. Needs the full count matrix.
//! * **barrier**: `2α`.
//!
//! It wins only when latency dominates and N is small (two message hops
//! whatever N, and a single step per phase), or when the hub really is
//! faster than the other ranks; otherwise trees and rings beat it.

use crate::{block_offsets, Action, Algorithm, Collective, Plan, PlanError, PlanOptions, Shape};

use crate::plan::{input, output, scratch, EMPTY};

/// `a * b`, or an error saying the scratch the hub needs does not fit 64 bits.
fn mul(shape: &Shape, a: u64, b: u64) -> Result<u64, PlanError> {
    a.checked_mul(b).ok_or_else(|| PlanError::InvalidShape {
        collective: shape.collective,
        reason: format!("the star hub would need {a}×{b} scratch elements, past 2^64"),
    })
}

/// [`Algorithm::Star`] for every collective.
pub(crate) fn plan(shape: &Shape, rank: usize, _options: &PlanOptions) -> Result<Plan, PlanError> {
    let n = shape.nranks;
    let hub = if shape.collective.rooted() {
        shape.root
    } else {
        0
    };
    let mut plan = Plan::new(shape.collective, Algorithm::Star, rank, n);
    let peers = || (0..n).filter(move |&p| p != hub);
    // Index of a non-hub rank among the peers (its staging slot).
    let slot = |p: usize| (if p < hub { p } else { p - 1 }) as u64;
    let blocks = shape.blocks();
    let off = block_offsets(blocks);
    let total = off.last().copied().unwrap_or(0);
    match shape.collective {
        Collective::Broadcast => {
            let buf = output(0, shape.single());
            if rank == hub {
                plan.push_step(
                    peers()
                        .map(|p| Action::Send { peer: p, src: buf })
                        .collect(),
                );
            } else {
                plan.push_step(vec![Action::Recv {
                    peer: hub,
                    dst: buf,
                }]);
            }
        }
        Collective::Reduce | Collective::AllReduce | Collective::ReduceScatter => {
            let rs = shape.collective == Collective::ReduceScatter;
            let c = if rs { total } else { shape.single() };
            if rank != hub {
                plan.push_step(vec![Action::Send {
                    peer: hub,
                    src: input(0, c),
                }]);
                let back = match shape.collective {
                    Collective::AllReduce => c,
                    Collective::ReduceScatter => blocks[rank],
                    _ => 0,
                };
                plan.push_step(vec![Action::Recv {
                    peer: hub,
                    dst: output(0, back),
                }]);
                return Ok(plan);
            }
            // Hub: stage every peer's input, then fold all inputs in rank
            // order into the accumulator (the output; scratch for
            // reduce-scatter, whose output holds only the hub's block).
            let staged = mul(shape, n as u64 - 1, c)?;
            let (acc, slots_at) = if rs {
                (scratch(0, c), c)
            } else {
                (output(0, c), 0)
            };
            plan.scratch_len = slots_at + staged;
            let src_of = |p: usize| {
                if p == hub {
                    input(0, c)
                } else {
                    scratch(slots_at + slot(p) * c, c)
                }
            };
            plan.push_step(
                peers()
                    .map(|p| Action::Recv {
                        peer: p,
                        dst: src_of(p),
                    })
                    .collect(),
            );
            let mut acts = vec![Action::Copy {
                src: src_of(0),
                dst: acc,
            }];
            acts.extend((1..n).map(|p| Action::Reduce {
                src: src_of(p),
                dst: acc,
            }));
            match shape.collective {
                Collective::AllReduce => {
                    acts.extend(peers().map(|p| Action::Send { peer: p, src: acc }));
                }
                Collective::ReduceScatter => {
                    acts.push(Action::Copy {
                        src: acc.slice(off[hub], blocks[hub]),
                        dst: output(0, blocks[hub]),
                    });
                    acts.extend(peers().map(|p| Action::Send {
                        peer: p,
                        src: acc.slice(off[p], blocks[p]),
                    }));
                }
                _ => {}
            }
            plan.push_step(acts);
        }
        Collective::Scatter => {
            if rank == hub {
                let mut acts = vec![Action::Copy {
                    src: input(off[hub], blocks[hub]),
                    dst: output(0, blocks[hub]),
                }];
                acts.extend(peers().map(|p| Action::Send {
                    peer: p,
                    src: input(off[p], blocks[p]),
                }));
                plan.push_step(acts);
            } else {
                plan.push_step(vec![Action::Recv {
                    peer: hub,
                    dst: output(0, blocks[rank]),
                }]);
            }
        }
        Collective::Gather | Collective::AllGather => {
            let all = shape.collective == Collective::AllGather;
            if rank == hub {
                let mut acts = vec![Action::Copy {
                    src: input(0, blocks[hub]),
                    dst: output(off[hub], blocks[hub]),
                }];
                acts.extend(peers().map(|p| Action::Recv {
                    peer: p,
                    dst: output(off[p], blocks[p]),
                }));
                plan.push_step(acts);
                if all {
                    let whole = output(0, total);
                    plan.push_step(
                        peers()
                            .map(|p| Action::Send {
                                peer: p,
                                src: whole,
                            })
                            .collect(),
                    );
                }
            } else {
                plan.push_step(vec![Action::Send {
                    peer: hub,
                    src: input(0, blocks[rank]),
                }]);
                if all {
                    plan.push_step(vec![Action::Recv {
                        peer: hub,
                        dst: output(0, total),
                    }]);
                }
            }
        }
        Collective::AllToAll => {
            if let crate::Counts::Matrix { partial: true, .. } = shape.counts {
                return Err(PlanError::Unsupported {
                    algorithm: Algorithm::Star,
                    collective: shape.collective,
                    reason: "the star hub must know the whole count matrix, but this call \
                             gives only each rank's row and column (all_to_all_v); use \
                             pairwise or linear, which need only those"
                        .into(),
                });
            }
            all_to_all(&mut plan, shape, rank);
        }
        Collective::Barrier => {
            if rank == hub {
                plan.push_step_keep_empty(
                    peers()
                        .map(|p| Action::Recv {
                            peer: p,
                            dst: EMPTY,
                        })
                        .collect(),
                );
                plan.push_step_keep_empty(
                    peers()
                        .map(|p| Action::Send {
                            peer: p,
                            src: EMPTY,
                        })
                        .collect(),
                );
            } else {
                plan.push_step_keep_empty(vec![Action::Send {
                    peer: hub,
                    src: EMPTY,
                }]);
                plan.push_step_keep_empty(vec![Action::Recv {
                    peer: hub,
                    dst: EMPTY,
                }]);
            }
        }
    }
    Ok(plan)
}

/// All-to-all through rank 0: every other rank sends its whole input (its
/// row) to rank 0, which stages the rows in scratch, regroups them into
/// columns with local copies and sends rank j its column (its whole output).
fn all_to_all(plan: &mut Plan, shape: &Shape, rank: usize) {
    let n = shape.nranks;
    let m = |i: usize, j: usize| shape.matrix(i, j);
    let row_len = |i: usize| (0..n).map(|j| m(i, j)).sum::<u64>();
    let col_len = |j: usize| (0..n).map(|i| m(i, j)).sum::<u64>();
    if rank != 0 {
        plan.push_step(vec![Action::Send {
            peer: 0,
            src: input(0, row_len(rank)),
        }]);
        plan.push_step(vec![Action::Recv {
            peer: 0,
            dst: output(0, col_len(rank)),
        }]);
        return;
    }
    // Scratch: rows 1..n, then columns 1..n.
    let rows = block_offsets(
        &(0..n)
            .map(|i| if i == 0 { 0 } else { row_len(i) })
            .collect::<Vec<_>>(),
    );
    let cols = block_offsets(
        &(0..n)
            .map(|j| if j == 0 { 0 } else { col_len(j) })
            .collect::<Vec<_>>(),
    );
    let cols_at = rows[n];
    plan.scratch_len = cols_at + cols[n];
    plan.push_step(
        (1..n)
            .map(|i| Action::Recv {
                peer: i,
                dst: scratch(rows[i], row_len(i)),
            })
            .collect(),
    );
    let mut acts = Vec::new();
    // Offset of block (i, j) inside row i.
    let mut in_row = vec![0u64; n];
    for (j, &col) in cols[..n].iter().enumerate() {
        let mut at = if j == 0 { 0 } else { cols_at + col };
        for (i, pos) in in_row.iter_mut().enumerate() {
            let len = m(i, j);
            let src = if i == 0 {
                input(*pos, len)
            } else {
                scratch(rows[i] + *pos, len)
            };
            let dst = if j == 0 {
                output(at, len)
            } else {
                scratch(at, len)
            };
            acts.push(Action::Copy { src, dst });
            at += len;
            *pos += len;
        }
    }
    acts.extend((1..n).map(|j| Action::Send {
        peer: j,
        src: scratch(cols_at + cols[j], col_len(j)),
    }));
    plan.push_step(acts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{block_patterns, check, matrix, COUNTS};
    use crate::{generate, Counts};

    #[test]
    fn every_collective_all_n_roots_counts() {
        let opts = PlanOptions::default();
        for n in 1..=17 {
            for &count in &COUNTS {
                for root in 0..n {
                    for coll in [Collective::Broadcast, Collective::Reduce] {
                        check(
                            Algorithm::Star,
                            &Shape::new(coll, n, root, Counts::Single(count)),
                            &opts,
                        );
                    }
                }
                check(
                    Algorithm::Star,
                    &Shape::new(Collective::AllReduce, n, 0, Counts::Single(count)),
                    &opts,
                );
                for blocks in block_patterns(n, count) {
                    for root in 0..n {
                        for coll in [Collective::Scatter, Collective::Gather] {
                            let shape = Shape::new(coll, n, root, Counts::Blocks(blocks.clone()));
                            check(Algorithm::Star, &shape, &opts);
                        }
                    }
                    for coll in [Collective::AllGather, Collective::ReduceScatter] {
                        let shape = Shape::new(coll, n, 0, Counts::Blocks(blocks.clone()));
                        check(Algorithm::Star, &shape, &opts);
                    }
                }
                for seed in 0..3 {
                    let counts = matrix(n, count.min(20), seed);
                    let shape = Shape::new(
                        Collective::AllToAll,
                        n,
                        0,
                        Counts::Matrix {
                            counts,
                            partial: false,
                        },
                    );
                    check(Algorithm::Star, &shape, &opts);
                }
            }
            check(
                Algorithm::Star,
                &Shape::new(Collective::Barrier, n, 0, Counts::None),
                &opts,
            );
        }
    }

    #[test]
    fn partial_matrix_is_refused_with_a_pointer() {
        let shape = Shape::new(
            Collective::AllToAll,
            3,
            0,
            Counts::Matrix {
                counts: vec![1; 9],
                partial: true,
            },
        );
        match generate(Algorithm::Star, &shape, 1, &PlanOptions::default()) {
            Err(PlanError::Unsupported { reason, .. }) => {
                assert!(
                    reason.contains("pairwise") && reason.contains("linear"),
                    "{reason}"
                );
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn huge_counts_generate_without_overflow() {
        let count = 3 * (1u64 << 31) + 7;
        let opts = PlanOptions::default();
        for n in [1, 2, 5] {
            let mut shapes = Vec::new();
            for coll in [
                Collective::Broadcast,
                Collective::Reduce,
                Collective::AllReduce,
            ] {
                shapes.push(Shape::new(coll, n, n - 1, Counts::Single(count)));
            }
            for coll in [
                Collective::Scatter,
                Collective::Gather,
                Collective::AllGather,
                Collective::ReduceScatter,
            ] {
                shapes.push(Shape::new(coll, n, n / 2, Counts::Blocks(vec![count; n])));
            }
            shapes.push(Shape::new(
                Collective::AllToAll,
                n,
                0,
                Counts::Matrix {
                    counts: vec![count; n * n],
                    partial: false,
                },
            ));
            for shape in shapes {
                let plans: Vec<Plan> = (0..n)
                    .map(|r| generate(Algorithm::Star, &shape, r, &opts).unwrap())
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
                crate::simulate::<()>(&plans, data, |_, _| ())
                    .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            }
        }
        let shape = Shape::new(Collective::Reduce, 3, 0, Counts::Single(u64::MAX / 2 + 1));
        assert!(matches!(
            generate(Algorithm::Star, &shape, 0, &opts),
            Err(PlanError::InvalidShape { .. })
        ));
    }
}
