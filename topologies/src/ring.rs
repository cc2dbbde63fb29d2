//! Ring algorithms: every rank talks only to its neighbours `rank − 1` (left)
//! and `rank + 1` (right), so each link carries the same load.
//!
//! Costs, with α the per-message latency, β = 1/B the per-element transfer
//! time, γ the per-element reduce time, S the element count of the full
//! vector and N the rank count:
//!
//! * **all-reduce** (reduce-scatter then all-gather, segments of S/N):
//!   `2(N−1)(α + S/N·β) + (N−1)/N·S·γ`. Bandwidth-optimal: it wins for large
//!   S, where the `2(N−1)α` latency term no longer matters.
//! * **reduce-scatter** (uneven blocks, S = total): `(N−1)(α + max_block·β) +
//!   (N−1)·max_block·γ`, which is `(N−1)α + (N−1)/N·S·(β + γ)` for even blocks.
//! * **all-gather** (uneven blocks): `(N−1)(α + max_block·β)`, i.e.
//!   `(N−1)α + (N−1)/N·S·β` for even blocks.
//! * **broadcast** (pipelined chain root → root+1 → …, C chunks of S/C):
//!   `(C + N − 2)(α + S/C·β)`. With the best chunk count
//!   `C ≈ √((N−2)·S·β/α)` this approaches `S·β` for large S, independent of N;
//!   for small S a binomial tree (`⌈log2 N⌉(α + S·β)`) wins.

use crate::{
    block_offsets, even_blocks, Action, Algorithm, BufferId, Collective, Plan, PlanError,
    PlanOptions, Region, Shape,
};

/// Default pipeline chunk of the ring broadcast, in elements.
pub(crate) const DEFAULT_CHUNK_ELEMS: u64 = 64 * 1024;

/// `rank`'s ring plan for `shape`.
pub(crate) fn plan(shape: &Shape, rank: usize, options: &PlanOptions) -> Result<Plan, PlanError> {
    let mut plan = Plan::new(shape.collective, Algorithm::Ring, rank, shape.nranks);
    match shape.collective {
        Collective::AllReduce => all_reduce(&mut plan, shape.single()),
        Collective::ReduceScatter => reduce_scatter(&mut plan, shape.blocks()),
        Collective::AllGather => all_gather(&mut plan, shape.blocks()),
        Collective::Broadcast => {
            broadcast(&mut plan, shape.root, shape.single(), options.chunk_elems)
        }
        other => {
            return Err(PlanError::Unsupported {
                algorithm: Algorithm::Ring,
                collective: other,
                reason: "the ring implements all_reduce, reduce_scatter, all_gather and broadcast"
                    .into(),
            })
        }
    }
    Ok(plan)
}

/// Block `i` (taken modulo the block count) of the blocks described by the
/// prefix sums `offs`, as a region of `buf` at the block's own offset.
fn block(buf: BufferId, offs: &[u64], i: usize) -> Region {
    let i = i % (offs.len() - 1);
    Region::new(buf, offs[i], offs[i + 1] - offs[i])
}

/// Reduce-scatter around the ring on segments of `count / N`, then
/// all-gather around the ring. Everything accumulates in Output.
fn all_reduce(plan: &mut Plan, count: u64) {
    let (n, r) = (plan.nranks, plan.rank);
    let everything = |buf| Region::new(buf, 0, count);
    if n == 1 {
        plan.push_step(vec![Action::Copy {
            src: everything(BufferId::Input),
            dst: everything(BufferId::Output),
        }]);
        return;
    }
    let offs = block_offsets(&even_blocks(count, n));
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    // Reduce-scatter: at step s rank r passes on segment r − s (its own input
    // at s = 0, the running sum afterwards) and folds segment r − s − 1 into
    // its own input copy of it. Afterwards segment r + 1 is complete.
    for s in 0..n - 1 {
        let send_seg = r + n - s;
        let recv_seg = r + 2 * n - s - 1;
        let src = if s == 0 {
            block(BufferId::Input, &offs, send_seg)
        } else {
            block(BufferId::Output, &offs, send_seg)
        };
        let dst = block(BufferId::Output, &offs, recv_seg);
        plan.push_step(vec![
            Action::Copy {
                src: block(BufferId::Input, &offs, recv_seg),
                dst,
            },
            Action::Send { peer: right, src },
            Action::RecvReduce { peer: left, dst },
        ]);
    }
    // All-gather: at step s pass on segment r + 1 − s, receive segment r − s.
    for s in 0..n - 1 {
        plan.push_step(vec![
            Action::Send {
                peer: right,
                src: block(BufferId::Output, &offs, r + 1 + n - s),
            },
            Action::Recv {
                peer: left,
                dst: block(BufferId::Output, &offs, r + n - s),
            },
        ]);
    }
}

/// Reduce-scatter around the ring with the caller's (possibly uneven) blocks
/// as segments. Running sums travel through two scratch slots (never through
/// Input); the last step folds straight into Output.
fn reduce_scatter(plan: &mut Plan, blocks: &[u64]) {
    let (n, r) = (plan.nranks, plan.rank);
    let offs = block_offsets(blocks);
    let own = Region::new(BufferId::Output, 0, blocks[r]);
    if n == 1 {
        plan.push_step(vec![Action::Copy {
            src: block(BufferId::Input, &offs, 0),
            dst: own,
        }]);
        return;
    }
    let max_block = blocks.iter().copied().max().unwrap_or(0);
    // Slot k % 2 holds the running sum received at step k; slot 1 is first
    // needed at step 1 with N ≥ 4, and no slot is needed for N = 2.
    plan.scratch_len = max_block * (n as u64 - 2).min(2);
    let slot = |k: usize, len: u64| Region::new(BufferId::Scratch, (k % 2) as u64 * max_block, len);
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    // At step s rank r sends the running sum of block r − s − 1 and folds the
    // left neighbour's running sum of block r − s − 2 into its own input of
    // that block; at s = N − 2 that block is r itself.
    for s in 0..n - 1 {
        let send_blk = (r + 2 * n - s - 1) % n;
        let recv_blk = (r + 2 * n - s - 2) % n;
        let src = if s == 0 {
            block(BufferId::Input, &offs, send_blk)
        } else {
            slot(s - 1, blocks[send_blk])
        };
        let dst = if s == n - 2 {
            own
        } else {
            slot(s, blocks[recv_blk])
        };
        plan.push_step(vec![
            Action::Copy {
                src: block(BufferId::Input, &offs, recv_blk),
                dst,
            },
            Action::Send { peer: right, src },
            Action::RecvReduce { peer: left, dst },
        ]);
    }
}

/// All-gather around the ring with the caller's (possibly uneven) blocks.
fn all_gather(plan: &mut Plan, blocks: &[u64]) {
    let (n, r) = (plan.nranks, plan.rank);
    let offs = block_offsets(blocks);
    let input = Region::new(BufferId::Input, 0, blocks[r]);
    let copy_own = Action::Copy {
        src: input,
        dst: block(BufferId::Output, &offs, r),
    };
    if n == 1 {
        plan.push_step(vec![copy_own]);
        return;
    }
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    for s in 0..n - 1 {
        let mut actions = Vec::with_capacity(3);
        let src = if s == 0 {
            actions.push(copy_own);
            input
        } else {
            block(BufferId::Output, &offs, r + n - s)
        };
        actions.push(Action::Send { peer: right, src });
        actions.push(Action::Recv {
            peer: left,
            dst: block(BufferId::Output, &offs, r + n - s - 1),
        });
        plan.push_step(actions);
    }
}

/// Pipelined chain root → root + 1 → … → root − 1 in chunks of
/// `chunk_elems` (0: [`DEFAULT_CHUNK_ELEMS`]). The rank at chain position
/// p ≥ 1 receives chunk c at step c + p − 1 and, unless last, forwards it at
/// step c + p, so C chunks take C + N − 2 steps.
fn broadcast(plan: &mut Plan, root: usize, count: u64, chunk_elems: u64) {
    let (n, r) = (plan.nranks, plan.rank);
    if n == 1 || count == 0 {
        return;
    }
    let chunk = if chunk_elems == 0 {
        DEFAULT_CHUNK_ELEMS
    } else {
        chunk_elems
    };
    let chunks = count.div_ceil(chunk);
    let chunk_region = |c: u64| {
        let offset = c * chunk;
        Region::new(BufferId::Output, offset, chunk.min(count - offset))
    };
    let pos = ((r + n - root) % n) as u64;
    let last = n as u64 - 1;
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    // Steps at which this rank does anything: from receiving chunk 0 (step
    // pos − 1) to forwarding the last chunk (step pos + chunks − 1).
    let first_step = pos.saturating_sub(1);
    let last_step = if pos == last {
        pos + chunks - 2
    } else {
        pos + chunks - 1
    };
    for t in first_step..=last_step {
        let mut actions = Vec::with_capacity(2);
        // Receive chunk t + 1 − pos.
        if pos >= 1 && t + 1 >= pos && t + 1 - pos < chunks {
            actions.push(Action::Recv {
                peer: prev,
                dst: chunk_region(t + 1 - pos),
            });
        }
        // Forward chunk t − pos.
        if pos < last && t >= pos && t - pos < chunks {
            actions.push(Action::Send {
                peer: next,
                src: chunk_region(t - pos),
            });
        }
        plan.push_step(actions);
    }
}

/// Simulation against sequential references, shared by the tests of
/// ring.rs, halving_doubling.rs and bruck.rs.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{
        block_offsets, buffer_lengths, generate, simulate, simulate_with_stats, Action, Algorithm,
        BufferId, Collective, Plan, PlanOptions, RankData, Region, Shape,
    };

    /// Checks every region of every plan lies inside its buffer and the
    /// intra-step hazard rules hold.
    pub(crate) fn check_regions(plans: &[Plan]) {
        for plan in plans {
            if let Err(e) = crate::validate_plan(plan) {
                panic!("rank {} of {}: {e}", plan.rank, plan.nranks);
            }
            for (si, step) in plan.steps.iter().enumerate() {
                let mut recvs: Vec<Region> = Vec::new();
                let mut sends: Vec<Region> = Vec::new();
                for a in &step.actions {
                    let regions: Vec<Region> = match *a {
                        Action::Send { peer, src } => {
                            assert!(peer < plan.nranks && peer != plan.rank, "{a:?}");
                            sends.push(src);
                            vec![src]
                        }
                        Action::Recv { peer, dst } | Action::RecvReduce { peer, dst } => {
                            assert!(peer < plan.nranks && peer != plan.rank, "{a:?}");
                            assert_ne!(dst.buf, BufferId::Input, "write to Input: {a:?}");
                            recvs.push(dst);
                            vec![dst]
                        }
                        Action::Copy { src, dst } | Action::Reduce { src, dst } => {
                            assert_eq!(src.len, dst.len, "{a:?}");
                            assert!(!src.overlaps(&dst), "{a:?}");
                            assert_ne!(dst.buf, BufferId::Input, "write to Input: {a:?}");
                            vec![src, dst]
                        }
                    };
                    for reg in regions {
                        assert!(
                            reg.end() <= plan.buffer_len(reg.buf),
                            "rank {} step {si}: {reg} outside {:?} of {} ({a:?})",
                            plan.rank,
                            reg.buf,
                            plan.buffer_len(reg.buf)
                        );
                    }
                }
                for (i, x) in recvs.iter().enumerate() {
                    for y in recvs.iter().skip(i + 1).chain(sends.iter()) {
                        assert!(
                            !x.overlaps(y),
                            "rank {} step {si}: receive {x} overlaps {y}",
                            plan.rank
                        );
                    }
                }
            }
        }
    }

    fn value(rank: usize, j: u64) -> u64 {
        (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j.wrapping_mul(1_000_003)
    }

    /// Generates all plans for `shape`, simulates them and compares every
    /// rank's output with a sequential reference.
    pub(crate) fn check(algorithm: Algorithm, shape: &Shape, options: &PlanOptions) {
        let n = shape.nranks;
        let plans: Vec<Plan> = (0..n)
            .map(|r| generate(algorithm, shape, r, options).unwrap())
            .collect();
        check_regions(&plans);
        let data: Vec<RankData<u64>> = (0..n)
            .map(|r| {
                let (il, ol) = buffer_lengths(shape, r);
                let input = (0..il).map(|j| value(r, j)).collect();
                let output = if shape.collective == Collective::Broadcast && r == shape.root {
                    (0..ol).map(|j| value(r, j)).collect()
                } else {
                    vec![0xDEAD_BEEF; ol as usize]
                };
                RankData { input, output }
            })
            .collect();
        let inputs: Vec<Vec<u64>> = data.iter().map(|d| d.input.clone()).collect();
        let (data, stats) = simulate_with_stats(&plans, data, u64::wrapping_add)
            .unwrap_or_else(|e| panic!("{algorithm} {shape:?}: {e}"));
        if shape.collective == Collective::Barrier {
            assert!(
                stats.depends_on.iter().all(|row| row.iter().all(|d| *d)),
                "{algorithm} n={n}: not a barrier"
            );
        }
        let sum = |len: usize| -> Vec<u64> {
            (0..len)
                .map(|j| inputs.iter().fold(0u64, |acc, x| acc.wrapping_add(x[j])))
                .collect()
        };
        for (r, RankData { output: out, .. }) in data.iter().enumerate() {
            let expect: Vec<u64> = match shape.collective {
                Collective::AllReduce => sum(shape.single() as usize),
                Collective::Reduce if r == shape.root => sum(shape.single() as usize),
                Collective::Reduce => Vec::new(),
                Collective::Broadcast => {
                    (0..shape.single()).map(|j| value(shape.root, j)).collect()
                }
                Collective::AllGather => inputs.concat(),
                Collective::ReduceScatter => {
                    let offs = block_offsets(shape.blocks());
                    sum(offs[n] as usize)[offs[r] as usize..offs[r + 1] as usize].to_vec()
                }
                Collective::Barrier => Vec::new(),
                other => unimplemented!("{other}"),
            };
            assert!(
                *out == expect,
                "{algorithm} {:?} n={n} root={} rank {r}: wrong output",
                shape.collective,
                shape.root
            );
        }
    }

    /// Elements each rank sends when running all ranks' plans for `shape`.
    pub(crate) fn sent_elements(algorithm: Algorithm, shape: &Shape) -> Vec<u64> {
        let plans: Vec<Plan> = (0..shape.nranks)
            .map(|r| generate(algorithm, shape, r, &PlanOptions::default()).unwrap())
            .collect();
        let data = (0..shape.nranks)
            .map(|r| {
                let (il, ol) = buffer_lengths(shape, r);
                RankData {
                    input: vec![(); il as usize],
                    output: vec![(); ol as usize],
                }
            })
            .collect();
        simulate_with_stats::<()>(&plans, data, |_, _| ())
            .unwrap()
            .1
            .sent_elements
    }

    /// Counts exercised by the sweeps.
    pub(crate) const COUNTS: [u64; 9] = [0, 1, 2, 3, 5, 7, 13, 100, 1009];

    /// Block vectors for `n` ranks: even splits of several totals plus a few
    /// uneven ones with zeros.
    pub(crate) fn block_sets(n: usize) -> Vec<Vec<u64>> {
        let mut sets: Vec<Vec<u64>> = COUNTS.iter().map(|&c| crate::even_blocks(c, n)).collect();
        sets.push((0..n).map(|i| (i as u64 * 7 + 3) % 11).collect());
        sets.push(
            (0..n)
                .map(|i| if i % 3 == 1 { 0 } else { i as u64 + 1 })
                .collect(),
        );
        sets.push((0..n).map(|i| if i == n - 1 { 29 } else { 0 }).collect());
        sets.push((0..n).map(|i| if i == 0 { 17 } else { 1 }).collect());
        sets
    }

    /// Asserts all ranks' plans for a huge count generate, stay in bounds
    /// and run to completion (on zero-sized elements: no data is moved).
    pub(crate) fn check_huge(algorithm: Algorithm, shape: &Shape, options: &PlanOptions) {
        let plans: Vec<Plan> = (0..shape.nranks)
            .map(|r| generate(algorithm, shape, r, options).unwrap())
            .collect();
        check_regions(&plans);
        let data = (0..shape.nranks)
            .map(|r| {
                let (il, ol) = buffer_lengths(shape, r);
                RankData {
                    input: vec![(); il as usize],
                    output: vec![(); ol as usize],
                }
            })
            .collect();
        simulate::<()>(&plans, data, |_, _| ())
            .unwrap_or_else(|e| panic!("{algorithm} {shape:?}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use crate::{generate, Algorithm, Collective, Counts, PlanOptions, Shape};

    #[test]
    fn all_reduce_matches_reference() {
        for n in 1..=17 {
            for &c in &COUNTS {
                let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(c));
                check(Algorithm::Ring, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn reduce_scatter_matches_reference() {
        for n in 1..=17 {
            for blocks in block_sets(n) {
                let shape = Shape::new(Collective::ReduceScatter, n, 0, Counts::Blocks(blocks));
                check(Algorithm::Ring, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn all_gather_matches_reference() {
        for n in 1..=17 {
            for blocks in block_sets(n) {
                let shape = Shape::new(Collective::AllGather, n, 0, Counts::Blocks(blocks));
                check(Algorithm::Ring, &shape, &PlanOptions::default());
            }
        }
    }

    #[test]
    fn broadcast_matches_reference() {
        for n in 1..=17 {
            for &c in &COUNTS {
                for root in 0..n {
                    for chunk in [0, 1, 3, 64] {
                        let shape = Shape::new(Collective::Broadcast, n, root, Counts::Single(c));
                        check(Algorithm::Ring, &shape, &PlanOptions { chunk_elems: chunk });
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_is_a_pipeline() {
        // C chunks through N ranks: C + N − 2 steps end to end; the root sends
        // C messages in C steps, the last rank receives C in C steps.
        let (n, c) = (6usize, 10u64);
        let shape = Shape::new(Collective::Broadcast, n, 2, Counts::Single(c * 4));
        let opts = PlanOptions { chunk_elems: 4 };
        let plans: Vec<_> = (0..n)
            .map(|r| generate(Algorithm::Ring, &shape, r, &opts).unwrap())
            .collect();
        assert_eq!(plans[2].steps.len(), c as usize);
        assert_eq!(plans[1].steps.len(), c as usize); // last in the chain
        assert_eq!(plans[3].steps.len(), c as usize + 1);
        assert!(plans[3].steps[1..c as usize]
            .iter()
            .all(|s| s.actions.len() == 2));
        // Step t of chain position p happens at global time t + p − 1.
        let span = (0..n)
            .map(|r| {
                let p = (r + n - 2) % n;
                p.saturating_sub(1) + plans[r].steps.len()
            })
            .max()
            .unwrap();
        assert_eq!(span, c as usize + n - 2);
    }

    #[test]
    fn all_reduce_step_counts() {
        for n in 2..=9 {
            let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(1000));
            let p = generate(Algorithm::Ring, &shape, 1, &PlanOptions::default()).unwrap();
            assert_eq!(p.steps.len(), 2 * (n - 1));
            assert_eq!(p.messages_sent(), 2 * (n - 1));
            assert_eq!(p.scratch_len, 0);
        }
    }

    #[test]
    fn moves_the_bandwidth_optimal_volume() {
        // Every rank sends 2(N−1)/N·S for all-reduce, (N−1)/N·S otherwise.
        for n in 1..=9usize {
            let s = 840 * 9;
            let per = s / n as u64 * (n as u64 - 1);
            let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(s));
            assert_eq!(sent_elements(Algorithm::Ring, &shape), vec![2 * per; n]);
            for c in [Collective::ReduceScatter, Collective::AllGather] {
                let shape = Shape::new(c, n, 0, Counts::Blocks(crate::even_blocks(s, n)));
                assert_eq!(sent_elements(Algorithm::Ring, &shape), vec![per; n]);
            }
        }
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let big = 3 * (1u64 << 31) + 7;
        for n in [1, 2, 3, 5, 8] {
            let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(big));
            check_huge(Algorithm::Ring, &shape, &PlanOptions::default());
            let shape = Shape::new(
                Collective::ReduceScatter,
                n,
                0,
                Counts::Blocks(crate::even_blocks(big, n)),
            );
            check_huge(Algorithm::Ring, &shape, &PlanOptions::default());
            let shape = Shape::new(
                Collective::AllGather,
                n,
                0,
                Counts::Blocks(crate::even_blocks(big, n)),
            );
            check_huge(Algorithm::Ring, &shape, &PlanOptions::default());
            let shape = Shape::new(Collective::Broadcast, n, n - 1, Counts::Single(big));
            check_huge(
                Algorithm::Ring,
                &shape,
                &PlanOptions {
                    chunk_elems: 1 << 28,
                },
            );
        }
    }
}
