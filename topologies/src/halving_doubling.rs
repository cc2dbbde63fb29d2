//! Recursive halving and doubling (Rabenseifner), and plain recursive doubling.
//!
//! Both work on p = the largest power of two ≤ N "virtual" ranks. With
//! `extra = N − p`, rank `2i + 1` (i < extra) first hands its whole input to
//! rank `2i` ("fold"), sits out, and gets its result back at the end
//! ("unfold"); rank `2i` is virtual rank `i`, and rank `r ≥ 2·extra` is
//! virtual rank `r − extra`. Virtual rank v owns the contiguous element range
//! of the original blocks of the ranks it stands for, so uneven blocks and
//! odd N work unchanged.
//!
//! Costs (α latency per message, β per element moved, γ per element reduced,
//! S elements in the full vector; a non-power-of-two N adds the fold and
//! unfold terms in brackets):
//!
//! * **all-reduce** (Rabenseifner: recursive-halving reduce-scatter, then
//!   recursive-doubling all-gather):
//!   `2·log2 p·α + 2(p−1)/p·S·β + (p−1)/p·S·γ  [+ 2α + 2S·β + S·γ]`.
//!   Bandwidth-optimal like the ring but with logarithmic latency: it wins
//!   for medium and large S at large N.
//! * **reduce-scatter** (recursive halving):
//!   `log2 p·α + (p−1)/p·S·(β + γ)  [+ 2α + S·β + S·γ + S/N·β]`.
//! * **all-gather** (recursive doubling):
//!   `log2 p·α + (p−1)/p·S·β  [+ 2α + S/N·β + S·β]`.
//! * **reduce** (recursive-halving reduce-scatter, then binomial gather to
//!   the root): `2·log2 p·α + 2(p−1)/p·S·β + (p−1)/p·S·γ  [+ 2α + 2S·β + S·γ]`
//!   (the last unfold term only when the root is a folded rank). It beats a
//!   binomial reduce (`log2 N·(α + S·β + S·γ)`) once S is large.
//! * **recursive-doubling all-reduce**: `log2 p·(α + S·β + S·γ)
//!   [+ 2α + 2S·β + S·γ]`. Fewest messages of all all-reduces: it wins for
//!   small S, where latency dominates.

use crate::{
    block_offsets, even_blocks, Action, Algorithm, BufferId, Collective, Plan, PlanError,
    PlanOptions, Region, Shape,
};

/// The fold of N ranks onto p = 2^⌊log2 N⌋ virtual ranks.
#[derive(Clone, Copy, Debug)]
struct Fold {
    /// Virtual ranks: the largest power of two ≤ N.
    p: usize,
    /// N − p: pairs (2i, 2i+1), i < extra, that fold into one virtual rank.
    extra: usize,
}

impl Fold {
    fn new(n: usize) -> Self {
        let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
        Fold { p, extra: n - p }
    }

    /// The virtual rank of `rank`, or `None` for a rank that folds away.
    fn virt(&self, rank: usize) -> Option<usize> {
        if rank < 2 * self.extra {
            (rank % 2 == 0).then_some(rank / 2)
        } else {
            Some(rank - self.extra)
        }
    }

    /// The real rank that plays virtual rank `v` (also the lowest original
    /// rank whose block `v` owns).
    fn real(&self, v: usize) -> usize {
        if v < self.extra {
            2 * v
        } else {
            v + self.extra
        }
    }

    /// Prefix sums of the virtual blocks, given the original blocks' prefix
    /// sums `offs` (N + 1 entries).
    fn virtual_offsets(&self, offs: &[u64]) -> Vec<u64> {
        (0..=self.p)
            .map(|v| {
                if v == self.p {
                    offs[offs.len() - 1]
                } else {
                    offs[self.real(v)]
                }
            })
            .collect()
    }
}

/// `len` elements of `buf` from `offset`.
fn reg(buf: BufferId, offset: u64, len: u64) -> Region {
    Region::new(buf, offset, len)
}

/// The element range of virtual blocks `[lo, hi)` in `buf`.
fn vrange(buf: BufferId, voffs: &[u64], lo: usize, hi: usize) -> Region {
    Region::new(buf, voffs[lo], voffs[hi] - voffs[lo])
}

/// The aligned range of `d` virtual blocks that contains `v`.
fn aligned(buf: BufferId, voffs: &[u64], v: usize, d: usize) -> Region {
    let lo = v & !(d - 1);
    vrange(buf, voffs, lo, lo + d)
}

fn copy_all(plan: &mut Plan, len: u64) {
    plan.push_step(vec![Action::Copy {
        src: reg(BufferId::Input, 0, len),
        dst: reg(BufferId::Output, 0, len),
    }]);
}

/// `rank`'s halving-doubling plan for `shape`.
pub(crate) fn plan(shape: &Shape, rank: usize, _options: &PlanOptions) -> Result<Plan, PlanError> {
    let n = shape.nranks;
    let mut plan = Plan::new(shape.collective, Algorithm::HalvingDoubling, rank, n);
    let fold = Fold::new(n);
    match shape.collective {
        Collective::AllReduce => {
            let count = shape.single();
            if n == 1 {
                copy_all(&mut plan, count);
                return Ok(plan);
            }
            let voffs = block_offsets(&even_blocks(count, fold.p));
            halving_reduce_scatter(&mut plan, fold, &voffs, BufferId::Output);
            match fold.virt(rank) {
                None => plan.push_step(vec![Action::Recv {
                    peer: rank - 1,
                    dst: reg(BufferId::Output, 0, count),
                }]),
                Some(v) => {
                    doubling_all_gather(&mut plan, fold, v, &voffs);
                    if v < fold.extra {
                        plan.push_step(vec![Action::Send {
                            peer: rank + 1,
                            src: reg(BufferId::Output, 0, count),
                        }]);
                    }
                }
            }
        }
        Collective::ReduceScatter => {
            let blocks = shape.blocks();
            let offs = block_offsets(blocks);
            let own = reg(BufferId::Output, 0, blocks[rank]);
            if n == 1 {
                copy_all(&mut plan, blocks[0]);
                return Ok(plan);
            }
            let voffs = fold.virtual_offsets(&offs);
            halving_reduce_scatter(&mut plan, fold, &voffs, BufferId::Scratch);
            match fold.virt(rank) {
                None => plan.push_step(vec![Action::Recv {
                    peer: rank - 1,
                    dst: own,
                }]),
                Some(v) => {
                    plan.scratch_len = offs[n];
                    let mut actions = vec![Action::Copy {
                        src: reg(BufferId::Scratch, offs[rank], blocks[rank]),
                        dst: own,
                    }];
                    if v < fold.extra {
                        actions.push(Action::Send {
                            peer: rank + 1,
                            src: reg(BufferId::Scratch, offs[rank + 1], blocks[rank + 1]),
                        });
                    }
                    plan.push_step(actions);
                }
            }
        }
        Collective::AllGather => {
            let blocks = shape.blocks();
            let offs = block_offsets(blocks);
            let own = reg(BufferId::Output, offs[rank], blocks[rank]);
            let input = reg(BufferId::Input, 0, blocks[rank]);
            if n == 1 {
                copy_all(&mut plan, blocks[0]);
                return Ok(plan);
            }
            let voffs = fold.virtual_offsets(&offs);
            match fold.virt(rank) {
                None => {
                    let partner = rank - 1;
                    plan.push_step(vec![Action::Send {
                        peer: partner,
                        src: input,
                    }]);
                    plan.push_step(vec![
                        Action::Copy {
                            src: input,
                            dst: own,
                        },
                        Action::Recv {
                            peer: partner,
                            dst: reg(BufferId::Output, 0, offs[rank]),
                        },
                        Action::Recv {
                            peer: partner,
                            dst: reg(BufferId::Output, offs[rank + 1], offs[n] - offs[rank + 1]),
                        },
                    ]);
                }
                Some(v) => {
                    let mut first = vec![Action::Copy {
                        src: input,
                        dst: own,
                    }];
                    if v < fold.extra {
                        first.push(Action::Recv {
                            peer: rank + 1,
                            dst: reg(BufferId::Output, offs[rank + 1], blocks[rank + 1]),
                        });
                    }
                    plan.push_step(first);
                    doubling_all_gather(&mut plan, fold, v, &voffs);
                    if v < fold.extra {
                        let partner = rank + 1;
                        plan.push_step(vec![
                            Action::Send {
                                peer: partner,
                                src: reg(BufferId::Output, 0, offs[partner]),
                            },
                            Action::Send {
                                peer: partner,
                                src: reg(
                                    BufferId::Output,
                                    offs[partner + 1],
                                    offs[n] - offs[partner + 1],
                                ),
                            },
                        ]);
                    }
                }
            }
        }
        Collective::Reduce => {
            let count = shape.single();
            let root = shape.root;
            if n == 1 {
                copy_all(&mut plan, count);
                return Ok(plan);
            }
            let voffs = block_offsets(&even_blocks(count, fold.p));
            // The root accumulates straight in its output; the others in scratch.
            let acc = if rank == root {
                BufferId::Output
            } else {
                BufferId::Scratch
            };
            halving_reduce_scatter(&mut plan, fold, &voffs, acc);
            // The pieces gather at the root's virtual rank, or at its fold
            // partner when the root itself folded away.
            let vroot = fold.virt(root).unwrap_or(root / 2);
            match fold.virt(rank) {
                None => {
                    if rank == root {
                        plan.push_step(vec![Action::Recv {
                            peer: rank - 1,
                            dst: reg(BufferId::Output, 0, count),
                        }]);
                    }
                }
                Some(v) => {
                    if acc == BufferId::Scratch {
                        plan.scratch_len = count;
                    }
                    // Binomial gather: at distance d, the active rank whose
                    // bit d differs from vroot's sends the aligned d blocks
                    // it holds and retires; its partner receives them.
                    let mut d = 1;
                    while d < fold.p {
                        let partner = v ^ d;
                        let peer = fold.real(partner);
                        if (v ^ vroot) & d != 0 {
                            plan.push_step(vec![Action::Send {
                                peer,
                                src: aligned(acc, &voffs, v, d),
                            }]);
                            break;
                        }
                        plan.push_step(vec![Action::Recv {
                            peer,
                            dst: aligned(acc, &voffs, partner, d),
                        }]);
                        d <<= 1;
                    }
                    if v == vroot && rank != root {
                        plan.push_step(vec![Action::Send {
                            peer: root,
                            src: reg(acc, 0, count),
                        }]);
                    }
                }
            }
        }
        other => {
            return Err(PlanError::Unsupported {
                algorithm: Algorithm::HalvingDoubling,
                collective: other,
                reason:
                    "halving-doubling implements all_reduce, reduce_scatter, all_gather and reduce"
                        .into(),
            })
        }
    }
    Ok(plan)
}

/// Fold plus recursive-halving reduce-scatter over the virtual ranks, whose
/// blocks have prefix sums `voffs` (p + 1 entries, the last being the full
/// length of Input). Afterwards virtual rank v holds its block, reduced over
/// all N inputs, in `acc` at the block's own offset. `acc` is Output or
/// Scratch, never Input; only the ranges this rank accumulates are written.
/// A folded-away rank only sends its input.
fn halving_reduce_scatter(plan: &mut Plan, fold: Fold, voffs: &[u64], acc: BufferId) {
    let rank = plan.rank;
    let total = voffs[fold.p];
    let Some(v) = fold.virt(rank) else {
        plan.push_step(vec![Action::Send {
            peer: rank - 1,
            src: reg(BufferId::Input, 0, total),
        }]);
        return;
    };
    // Whether this rank's running sums live in `acc` (else still in Input).
    let mut in_acc = false;
    if v < fold.extra {
        plan.push_step(vec![
            Action::Copy {
                src: reg(BufferId::Input, 0, total),
                dst: reg(acc, 0, total),
            },
            Action::RecvReduce {
                peer: rank + 1,
                dst: reg(acc, 0, total),
            },
        ]);
        in_acc = true;
    }
    // Blocks [lo, lo + 2d) are this rank's; keep the half holding v, send
    // the other half to v ^ d and fold its half of ours into our half.
    let mut lo = 0;
    let mut d = fold.p / 2;
    while d >= 1 {
        let peer = fold.real(v ^ d);
        let (keep_lo, send_lo) = if v & d == 0 {
            (lo, lo + d)
        } else {
            (lo + d, lo)
        };
        let keep = vrange(acc, voffs, keep_lo, keep_lo + d);
        let src_buf = if in_acc { acc } else { BufferId::Input };
        let mut actions = Vec::with_capacity(3);
        if !in_acc {
            actions.push(Action::Copy {
                src: vrange(BufferId::Input, voffs, keep_lo, keep_lo + d),
                dst: keep,
            });
        }
        actions.push(Action::Send {
            peer,
            src: vrange(src_buf, voffs, send_lo, send_lo + d),
        });
        actions.push(Action::RecvReduce { peer, dst: keep });
        plan.push_step(actions);
        in_acc = true;
        lo = keep_lo;
        d /= 2;
    }
    if !in_acc {
        plan.push_step(vec![Action::Copy {
            src: vrange(BufferId::Input, voffs, v, v + 1),
            dst: vrange(acc, voffs, v, v + 1),
        }]);
    }
}

/// Recursive-doubling all-gather in Output over the virtual ranks: at
/// distance d = 1, 2, …, p/2, exchange the aligned d blocks held with v ^ d.
fn doubling_all_gather(plan: &mut Plan, fold: Fold, v: usize, voffs: &[u64]) {
    let mut d = 1;
    while d < fold.p {
        let partner = v ^ d;
        let peer = fold.real(partner);
        plan.push_step(vec![
            Action::Send {
                peer,
                src: aligned(BufferId::Output, voffs, v, d),
            },
            Action::Recv {
                peer,
                dst: aligned(BufferId::Output, voffs, partner, d),
            },
        ]);
        d <<= 1;
    }
}

/// `rank`'s recursive-doubling plan (all-reduce): log2 p exchanges of the
/// whole vector with partner v ^ 2^k. A partner's vector lands in Scratch
/// (or, in the first exchange, straight in Output while this rank's own
/// data is still in Input) and is folded in by the next step's local phase,
/// so no step both sends and receives into the same range.
pub(crate) fn recursive_doubling_plan(
    shape: &Shape,
    rank: usize,
    _options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let n = shape.nranks;
    if shape.collective != Collective::AllReduce {
        return Err(PlanError::Unsupported {
            algorithm: Algorithm::RecursiveDoubling,
            collective: shape.collective,
            reason: "recursive doubling implements all_reduce only".into(),
        });
    }
    let mut plan = Plan::new(shape.collective, Algorithm::RecursiveDoubling, rank, n);
    let count = shape.single();
    let all = |buf| reg(buf, 0, count);
    if n == 1 {
        copy_all(&mut plan, count);
        return Ok(plan);
    }
    let fold = Fold::new(n);
    let Some(v) = fold.virt(rank) else {
        plan.push_step(vec![Action::Send {
            peer: rank - 1,
            src: all(BufferId::Input),
        }]);
        plan.push_step(vec![Action::Recv {
            peer: rank - 1,
            dst: all(BufferId::Output),
        }]);
        return Ok(plan);
    };
    // Whether this rank's running sum lives in Output (else still in Input).
    let mut in_output = false;
    if v < fold.extra {
        plan.push_step(vec![
            Action::Copy {
                src: all(BufferId::Input),
                dst: all(BufferId::Output),
            },
            Action::RecvReduce {
                peer: rank + 1,
                dst: all(BufferId::Output),
            },
        ]);
        in_output = true;
    }
    let mut pending: Option<Action> = None;
    let mut d = 1;
    while d < fold.p {
        let peer = fold.real(v ^ d);
        let mut actions: Vec<Action> = pending.take().into_iter().collect();
        if in_output {
            actions.push(Action::Send {
                peer,
                src: all(BufferId::Output),
            });
            actions.push(Action::Recv {
                peer,
                dst: all(BufferId::Scratch),
            });
            pending = Some(Action::Reduce {
                src: all(BufferId::Scratch),
                dst: all(BufferId::Output),
            });
            plan.scratch_len = count;
        } else {
            actions.push(Action::Send {
                peer,
                src: all(BufferId::Input),
            });
            actions.push(Action::Recv {
                peer,
                dst: all(BufferId::Output),
            });
            pending = Some(Action::Reduce {
                src: all(BufferId::Input),
                dst: all(BufferId::Output),
            });
            in_output = true;
        }
        plan.push_step(actions);
        d <<= 1;
    }
    let mut last: Vec<Action> = pending.into_iter().collect();
    if v < fold.extra {
        last.push(Action::Send {
            peer: rank + 1,
            src: all(BufferId::Output),
        });
    }
    plan.push_step(last);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use crate::ring::testing::*;
    use crate::{generate, Algorithm, Collective, Counts, PlanOptions, Shape};

    #[test]
    fn all_reduce_matches_reference() {
        for n in 1..=17 {
            for &c in &COUNTS {
                let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(c));
                check(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
                check(
                    Algorithm::RecursiveDoubling,
                    &shape,
                    &PlanOptions::default(),
                );
            }
        }
    }

    #[test]
    fn reduce_scatter_matches_reference() {
        for n in 1..=17 {
            for blocks in block_sets(n) {
                let shape = Shape::new(Collective::ReduceScatter, n, 0, Counts::Blocks(blocks));
                check(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn all_gather_matches_reference() {
        for n in 1..=17 {
            for blocks in block_sets(n) {
                let shape = Shape::new(Collective::AllGather, n, 0, Counts::Blocks(blocks));
                check(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn reduce_matches_reference_for_every_root() {
        for n in 1..=17 {
            for &c in &COUNTS {
                for root in 0..n {
                    let shape = Shape::new(Collective::Reduce, n, root, Counts::Single(c));
                    check(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
                }
            }
        }
    }

    #[test]
    fn step_and_message_counts() {
        // Power of two: log2 N halving steps + log2 N doubling steps.
        let shape = Shape::new(Collective::AllReduce, 8, 0, Counts::Single(800));
        let p = generate(
            Algorithm::HalvingDoubling,
            &shape,
            5,
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(p.steps.len(), 6);
        assert_eq!(p.messages_sent(), 6);
        let sent: u64 = p
            .actions()
            .filter_map(|a| match a {
                crate::Action::Send { src, .. } => Some(src.len),
                _ => None,
            })
            .sum();
        assert_eq!(sent, 2 * 700);
        let p = generate(
            Algorithm::RecursiveDoubling,
            &shape,
            5,
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(p.messages_sent(), 3);
        // N = 6: ranks 1 and 3 fold away: one send, one receive.
        let shape = Shape::new(Collective::AllReduce, 6, 0, Counts::Single(60));
        for alg in [Algorithm::HalvingDoubling, Algorithm::RecursiveDoubling] {
            let p = generate(alg, &shape, 3, &PlanOptions::default()).unwrap();
            assert_eq!(p.steps.len(), 2);
            assert_eq!(p.scratch_len, 0);
        }
    }

    #[test]
    fn rabenseifner_moves_the_bandwidth_optimal_volume() {
        // Power of two: every rank sends 2(N−1)/N·S for all-reduce and
        // (N−1)/N·S for reduce-scatter and all-gather.
        for n in [1usize, 2, 4, 8, 16] {
            let s = 4096u64;
            let per = s / n as u64 * (n as u64 - 1);
            let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(s));
            assert_eq!(
                sent_elements(Algorithm::HalvingDoubling, &shape),
                vec![2 * per; n]
            );
            for c in [Collective::ReduceScatter, Collective::AllGather] {
                let shape = Shape::new(c, n, 0, Counts::Blocks(crate::even_blocks(s, n)));
                assert_eq!(
                    sent_elements(Algorithm::HalvingDoubling, &shape),
                    vec![per; n]
                );
            }
        }
        // N = 6 all-reduce: folded ranks 1 and 3 send their input once; their
        // partners additionally send the result back.
        let shape = Shape::new(Collective::AllReduce, 6, 0, Counts::Single(400));
        assert_eq!(
            sent_elements(Algorithm::HalvingDoubling, &shape),
            vec![600 + 400, 400, 600 + 400, 400, 600, 600]
        );
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let big = 3 * (1u64 << 31) + 7;
        for n in [1, 2, 3, 5, 8, 13] {
            for c in [Collective::AllReduce, Collective::Reduce] {
                let shape = Shape::new(c, n, n / 2, Counts::Single(big));
                check_huge(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
            }
            let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(big));
            check_huge(
                Algorithm::RecursiveDoubling,
                &shape,
                &PlanOptions::default(),
            );
            for c in [Collective::ReduceScatter, Collective::AllGather] {
                let shape = Shape::new(c, n, 0, Counts::Blocks(crate::even_blocks(big, n)));
                check_huge(Algorithm::HalvingDoubling, &shape, &PlanOptions::default());
            }
        }
    }
}
