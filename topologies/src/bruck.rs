//! Bruck's all-gather and the dissemination barrier: ⌈log2 N⌉ rounds for
//! any N, with distances 1, 2, 4, … around the rank circle.
//!
//! Costs (α latency per message, β per element moved, S elements in the
//! gathered vector):
//!
//! * **Bruck all-gather**: `⌈log2 N⌉·α + (N−1)/N·S·β`, plus a local
//!   rotation that copies S elements. Same volume as the ring but
//!   logarithmic latency and, unlike recursive doubling, no fold penalty for
//!   a non-power-of-two N: it wins for small and medium S. Rank r keeps the
//!   blocks in rotated order (position j holds block r + j mod N) in
//!   scratch; at round k it sends positions `[0, min(2^k, N − 2^k))` to
//!   rank r − 2^k and receives the same count of positions from rank r + 2^k
//!   at position 2^k, so everything it sends and receives is contiguous even
//!   with uneven blocks.
//! * **dissemination barrier**: `⌈log2 N⌉·α`; round k sends a zero-byte
//!   message to rank r + 2^k and waits for one from rank r − 2^k. After the
//!   last round every rank has (transitively) heard from every other rank.

use crate::{Action, Algorithm, BufferId, Collective, Plan, PlanError, PlanOptions, Region, Shape};

/// `rank`'s Bruck all-gather plan for `shape`.
pub(crate) fn plan(shape: &Shape, rank: usize, _options: &PlanOptions) -> Result<Plan, PlanError> {
    if shape.collective != Collective::AllGather {
        return Err(PlanError::Unsupported {
            algorithm: Algorithm::Bruck,
            collective: shape.collective,
            reason: "Bruck's algorithm implements all_gather only".into(),
        });
    }
    let n = shape.nranks;
    let blocks = shape.blocks();
    let mut plan = Plan::new(shape.collective, Algorithm::Bruck, rank, n);
    let input = Region::new(BufferId::Input, 0, blocks[rank]);
    if n == 1 {
        plan.push_step(vec![Action::Copy {
            src: input,
            dst: Region::new(BufferId::Output, 0, blocks[0]),
        }]);
        return Ok(plan);
    }
    // rot[j]: where position j (block rank + j mod N) starts in scratch.
    let mut rot = Vec::with_capacity(n + 1);
    let mut at = 0u64;
    rot.push(0);
    for j in 0..n {
        at += blocks[(rank + j) % n];
        rot.push(at);
    }
    let total = at;
    plan.scratch_len = total;
    let positions =
        |lo: usize, hi: usize| Region::new(BufferId::Scratch, rot[lo], rot[hi] - rot[lo]);
    let mut d = 1;
    while d < n {
        let cnt = d.min(n - d);
        let mut actions = Vec::with_capacity(3);
        if d == 1 {
            actions.push(Action::Copy {
                src: input,
                dst: positions(0, 1),
            });
        }
        actions.push(Action::Send {
            peer: (rank + n - d) % n,
            src: positions(0, cnt),
        });
        actions.push(Action::Recv {
            peer: (rank + d) % n,
            dst: positions(d, d + cnt),
        });
        plan.push_step(actions);
        d *= 2;
    }
    // Rotate: positions [0, N − rank) are blocks rank..N, which start at the
    // rank's own offset in Output; positions [N − rank, N) are blocks 0..rank.
    let own_offset = total - rot[n - rank];
    plan.push_step(vec![
        Action::Copy {
            src: positions(0, n - rank),
            dst: Region::new(BufferId::Output, own_offset, rot[n - rank]),
        },
        Action::Copy {
            src: positions(n - rank, n),
            dst: Region::new(BufferId::Output, 0, own_offset),
        },
    ]);
    Ok(plan)
}

/// `rank`'s dissemination barrier plan: ⌈log2 N⌉ rounds of zero-length
/// messages (none for N = 1).
pub(crate) fn dissemination_plan(
    shape: &Shape,
    rank: usize,
    _options: &PlanOptions,
) -> Result<Plan, PlanError> {
    if shape.collective != Collective::Barrier {
        return Err(PlanError::Unsupported {
            algorithm: Algorithm::Dissemination,
            collective: shape.collective,
            reason: "the dissemination algorithm implements barrier only".into(),
        });
    }
    let n = shape.nranks;
    let mut plan = Plan::new(shape.collective, Algorithm::Dissemination, rank, n);
    let nothing = Region::new(BufferId::Output, 0, 0);
    let mut d = 1;
    while d < n {
        plan.push_step_keep_empty(vec![
            Action::Send {
                peer: (rank + d) % n,
                src: nothing,
            },
            Action::Recv {
                peer: (rank + n - d) % n,
                dst: nothing,
            },
        ]);
        d *= 2;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use crate::ring::testing::*;
    use crate::{generate, Action, Algorithm, Collective, Counts, PlanOptions, Shape};

    #[test]
    fn all_gather_matches_reference() {
        for n in 1..=17 {
            for blocks in block_sets(n) {
                let shape = Shape::new(Collective::AllGather, n, 0, Counts::Blocks(blocks));
                check(Algorithm::Bruck, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn all_gather_takes_ceil_log2_rounds() {
        for n in 2..=17usize {
            let shape = Shape::new(
                Collective::AllGather,
                n,
                0,
                Counts::Blocks(crate::even_blocks(10 * n as u64, n)),
            );
            let rounds = n.next_power_of_two().trailing_zeros() as usize;
            for r in 0..n {
                let p = generate(Algorithm::Bruck, &shape, r, &PlanOptions::default()).unwrap();
                assert_eq!(p.messages_sent(), rounds);
                assert_eq!(p.steps.len(), rounds + 1);
            }
        }
    }

    #[test]
    fn barrier_rounds_and_reachability() {
        assert!(generate(
            Algorithm::Dissemination,
            &Shape::new(Collective::Barrier, 1, 0, Counts::None),
            0,
            &PlanOptions::default()
        )
        .unwrap()
        .steps
        .is_empty());
        for n in 2..=17usize {
            let shape = Shape::new(Collective::Barrier, n, 0, Counts::None);
            let plans: Vec<_> = (0..n)
                .map(|r| {
                    generate(Algorithm::Dissemination, &shape, r, &PlanOptions::default()).unwrap()
                })
                .collect();
            let rounds = n.next_power_of_two().trailing_zeros() as usize;
            // knows[r][s]: rank r has (transitively) heard that rank s entered.
            let mut knows: Vec<Vec<bool>> =
                (0..n).map(|r| (0..n).map(|s| s == r).collect()).collect();
            for k in 0..rounds {
                let before = knows.clone();
                for (r, plan) in plans.iter().enumerate() {
                    assert_eq!(plan.steps.len(), rounds);
                    for a in &plan.steps[k].actions {
                        if let Action::Recv { peer, dst } = a {
                            assert_eq!(dst.len, 0);
                            for s in 0..n {
                                knows[r][s] |= before[*peer][s];
                            }
                        }
                    }
                }
            }
            assert!(knows.iter().all(|row| row.iter().all(|k| *k)), "n={n}");
            check(Algorithm::Dissemination, &shape, &PlanOptions::default());
        }
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let big = 3 * (1u64 << 31) + 7;
        for n in [1, 2, 3, 5, 8, 13] {
            let shape = Shape::new(
                Collective::AllGather,
                n,
                0,
                Counts::Blocks(crate::even_blocks(big, n)),
            );
            check_huge(Algorithm::Bruck, &shape, &PlanOptions::default());
        }
    }
}
