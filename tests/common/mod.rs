//! Shared by the tests: the exact-result sweep of every collective ×
//! algorithm × dtype × op, run on one communicator (in-process threads or
//! separate processes alike). Inputs are small integers so that every dtype,
//! f16 and bf16 included, represents every partial result exactly.
#![allow(dead_code)]

pub mod ranks;

use braid::{bf16, f16, Algorithm, Collective, Communicator, Element, ReduceOp};

pub const COUNTS: [usize; 8] = [0, 1, 2, 3, 7, 13, 100, 1031];

/// Input element `i` of `rank` for `op`: products use 1 and 2 only, so
/// that any order of multiplication is exact (2^N fits every float type).
pub fn input(op: ReduceOp, rank: usize, i: usize) -> i64 {
    match op {
        ReduceOp::Prod => 1 + ((rank + i) % 2) as i64,
        _ => ((rank * 7 + i * 3) % 11 + 1) as i64,
    }
}

pub fn inputs<T: Element>(op: ReduceOp, rank: usize, len: usize) -> Vec<T> {
    (0..len).map(|i| T::from_i64(input(op, rank, i))).collect()
}

/// Element-wise reduction over all ranks, computed exactly in i64 and then
/// converted (integer wrap-around equals conversion of the exact value).
pub fn reduced<T: Element>(op: ReduceOp, n: usize, len: usize, offset: usize) -> Vec<T> {
    let mut out: Vec<T> = (0..len)
        .map(|i| {
            let vals = (0..n).map(|r| input(op, r, offset + i));
            let v = match op {
                ReduceOp::Sum | ReduceOp::Avg => vals.sum(),
                ReduceOp::Prod => vals.product(),
                ReduceOp::Min => vals.min().unwrap(),
                ReduceOp::Max => vals.max().unwrap(),
            };
            T::from_i64(v)
        })
        .collect();
    if op == ReduceOp::Avg {
        T::divide(&mut out, n);
    }
    out
}

pub fn sentinel<T: Element>(len: usize) -> Vec<T> {
    vec![T::from_i64(99); len]
}

/// Uneven counts for the -v forms: zeros, ones and a prime mixed in.
pub fn uneven(n: usize, base: usize) -> Vec<usize> {
    (0..n).map(|r| (base * (r % 3) + r) % (base + 2)).collect()
}

/// Runs calls on one communicator and collects every wrong result.
pub struct Sweep<'a> {
    pub comm: &'a mut Communicator,
    pub failures: Vec<String>,
    /// Counts to sweep.
    pub counts: &'a [usize],
}

impl Sweep<'_> {
    fn check<T: Element>(&mut self, what: String, got: &[T], want: &[T]) {
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b);
            self.failures.push(format!(
                "rank {}: {what} ({}): first difference at {first:?} of {} (got {:?}.., want {:?}..)",
                self.comm.rank(),
                T::DTYPE,
                got.len(),
                &got[..got.len().min(4)],
                &want[..want.len().min(4)]
            ));
        }
    }

    fn fail(&mut self, what: String, e: braid::Error) {
        self.failures
            .push(format!("rank {}: {what}: {e}", self.comm.rank()));
    }

    /// Every count of `collective` with `algo` on element type `T`.
    pub fn run<T: Element>(&mut self, collective: Collective, algo: Algorithm) {
        let n = self.comm.size();
        let me = self.comm.rank();
        let ops: &[ReduceOp] = if T::DTYPE.is_float() {
            &ReduceOp::ALL
        } else {
            &[ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max]
        };
        for &count in self.counts {
            let tag = |extra: String| format!("{collective}/{algo} n={n} count={count} {extra}");
            match collective {
                Collective::AllReduce => {
                    for &op in ops {
                        let mut out = sentinel::<T>(count);
                        match self
                            .comm
                            .all_reduce(&inputs::<T>(op, me, count), &mut out, op)
                        {
                            Ok(()) => {
                                self.check(tag(format!("op={op}")), &out, &reduced(op, n, count, 0))
                            }
                            Err(e) => self.fail(tag(format!("op={op}")), e),
                        }
                    }
                }
                Collective::Reduce => {
                    for &op in ops {
                        for root in roots(n) {
                            let mut out = sentinel::<T>(if me == root { count } else { 0 });
                            match self
                                .comm
                                .reduce(&inputs::<T>(op, me, count), &mut out, op, root)
                            {
                                Ok(()) if me == root => self.check(
                                    tag(format!("op={op} root={root}")),
                                    &out,
                                    &reduced(op, n, count, 0),
                                ),
                                Ok(()) => {}
                                Err(e) => self.fail(tag(format!("op={op} root={root}")), e),
                            }
                        }
                    }
                }
                Collective::ReduceScatter => {
                    for &op in ops {
                        let mut out = sentinel::<T>(count);
                        let send = inputs::<T>(op, me, count * n);
                        match self.comm.reduce_scatter(&send, &mut out, op) {
                            Ok(()) => self.check(
                                tag(format!("op={op}")),
                                &out,
                                &reduced(op, n, count, me * count),
                            ),
                            Err(e) => self.fail(tag(format!("op={op}")), e),
                        }
                        let counts = uneven(n, count);
                        let total: usize = counts.iter().sum();
                        let at: usize = counts[..me].iter().sum();
                        let mut out = sentinel::<T>(counts[me]);
                        let send = inputs::<T>(op, me, total);
                        match self.comm.reduce_scatter_v(&send, &mut out, &counts, op) {
                            Ok(()) => self.check(
                                tag(format!("v op={op}")),
                                &out,
                                &reduced(op, n, counts[me], at),
                            ),
                            Err(e) => self.fail(tag(format!("v op={op}")), e),
                        }
                    }
                }
                Collective::Broadcast => {
                    for root in roots(n) {
                        let want = inputs::<T>(ReduceOp::Sum, root, count);
                        let mut buf = if me == root {
                            want.clone()
                        } else {
                            sentinel(count)
                        };
                        match self.comm.broadcast(&mut buf, root) {
                            Ok(()) => self.check(tag(format!("root={root}")), &buf, &want),
                            Err(e) => self.fail(tag(format!("root={root}")), e),
                        }
                    }
                }
                Collective::AllGather => {
                    let mut out = sentinel::<T>(count * n);
                    let want: Vec<T> = (0..n)
                        .flat_map(|r| inputs::<T>(ReduceOp::Sum, r, count))
                        .collect();
                    match self
                        .comm
                        .all_gather(&inputs::<T>(ReduceOp::Sum, me, count), &mut out)
                    {
                        Ok(()) => self.check(tag(String::new()), &out, &want),
                        Err(e) => self.fail(tag(String::new()), e),
                    }
                    let counts = uneven(n, count);
                    let want: Vec<T> = (0..n)
                        .flat_map(|r| inputs::<T>(ReduceOp::Sum, r, counts[r]))
                        .collect();
                    let mut out = sentinel::<T>(want.len());
                    match self.comm.all_gather_v(
                        &inputs::<T>(ReduceOp::Sum, me, counts[me]),
                        &mut out,
                        &counts,
                    ) {
                        Ok(()) => self.check(tag("v".into()), &out, &want),
                        Err(e) => self.fail(tag("v".into()), e),
                    }
                }
                Collective::Gather => {
                    for root in roots(n) {
                        let counts = uneven(n, count);
                        for (v, counts) in [(false, vec![count; n]), (true, counts)] {
                            let want: Vec<T> = (0..n)
                                .flat_map(|r| inputs::<T>(ReduceOp::Sum, r, counts[r]))
                                .collect();
                            let mut out = sentinel::<T>(if me == root { want.len() } else { 0 });
                            let send = inputs::<T>(ReduceOp::Sum, me, counts[me]);
                            let res = if v {
                                self.comm.gather_v(&send, &mut out, &counts, root)
                            } else {
                                self.comm.gather(&send, &mut out, root)
                            };
                            match res {
                                Ok(()) if me == root => {
                                    self.check(tag(format!("v={v} root={root}")), &out, &want)
                                }
                                Ok(()) => {}
                                Err(e) => self.fail(tag(format!("v={v} root={root}")), e),
                            }
                        }
                    }
                }
                Collective::Scatter => {
                    for root in roots(n) {
                        let counts = uneven(n, count);
                        for (v, counts) in [(false, vec![count; n]), (true, counts)] {
                            let total: usize = counts.iter().sum();
                            let at: usize = counts[..me].iter().sum();
                            let full = inputs::<T>(ReduceOp::Sum, root, total);
                            let send = if me == root { full.clone() } else { Vec::new() };
                            let mut out = sentinel::<T>(counts[me]);
                            let res = if v {
                                self.comm.scatter_v(&send, &mut out, &counts, root)
                            } else {
                                self.comm.scatter(&send, &mut out, root)
                            };
                            match res {
                                Ok(()) => self.check(
                                    tag(format!("v={v} root={root}")),
                                    &out,
                                    &full[at..at + counts[me]],
                                ),
                                Err(e) => self.fail(tag(format!("v={v} root={root}")), e),
                            }
                        }
                    }
                }
                Collective::AllToAll => {
                    // Element k of the block from i to j depends on i, j and k.
                    let elem = |i: usize, j: usize, k: usize| {
                        T::from_i64(((i * 10 + j) % 50 + k % 7) as i64)
                    };
                    let send: Vec<T> = (0..n)
                        .flat_map(|j| (0..count).map(move |k| elem(me, j, k)))
                        .collect();
                    let want: Vec<T> = (0..n)
                        .flat_map(|i| (0..count).map(move |k| elem(i, me, k)))
                        .collect();
                    let mut out = sentinel::<T>(want.len());
                    match self.comm.all_to_all(&send, &mut out) {
                        Ok(()) => self.check(tag(String::new()), &out, &want),
                        Err(e) => self.fail(tag(String::new()), e),
                    }
                    // counts[i][j] = (i + 2j + count) % 5: zeros included.
                    let c = |i: usize, j: usize| (i + 2 * j + count) % 5;
                    let send_counts: Vec<usize> = (0..n).map(|j| c(me, j)).collect();
                    let recv_counts: Vec<usize> = (0..n).map(|i| c(i, me)).collect();
                    let send: Vec<T> = (0..n)
                        .flat_map(|j| (0..c(me, j)).map(move |k| elem(me, j, k)))
                        .collect();
                    let want: Vec<T> = (0..n)
                        .flat_map(|i| (0..c(i, me)).map(move |k| elem(i, me, k)))
                        .collect();
                    let mut out = sentinel::<T>(want.len());
                    let res = self
                        .comm
                        .all_to_all_v(&send, &send_counts, &mut out, &recv_counts);
                    match (algo, res) {
                        // Star needs every rank's counts at the root; -v calls only know their own.
                        (Algorithm::Star, Err(e)) if e.kind() == braid::ErrorKind::Unsupported => {}
                        (_, Ok(())) => self.check(tag("v".into()), &out, &want),
                        (_, Err(e)) => self.fail(tag("v".into()), e),
                    }
                }
                Collective::Barrier => {
                    if let Err(e) = self.comm.barrier() {
                        self.fail(tag(String::new()), e);
                    }
                }
            }
        }
    }
}

pub fn roots(n: usize) -> Vec<usize> {
    let mut r = vec![0, n / 2, n - 1];
    r.dedup();
    r
}

/// Every algorithm of each of `collectives` on `comm`, over `counts`, on all
/// ten dtypes or on f32 and i64 only; returns the failures.
pub fn sweep_comm(
    comm: &mut Communicator,
    collectives: &[Collective],
    all_dtypes: bool,
    counts: &[usize],
) -> Vec<String> {
    let mut s = Sweep {
        comm,
        failures: Vec::new(),
        counts,
    };
    for &c in collectives {
        for &algo in c.algorithms() {
            s.comm.set_algorithm(c, Some(algo)).unwrap();
            if all_dtypes {
                s.run::<f32>(c, algo);
                s.run::<f64>(c, algo);
                s.run::<f16>(c, algo);
                s.run::<bf16>(c, algo);
                s.run::<i8>(c, algo);
                s.run::<u8>(c, algo);
                s.run::<i32>(c, algo);
                s.run::<u32>(c, algo);
                s.run::<i64>(c, algo);
                s.run::<u64>(c, algo);
            } else {
                s.run::<f32>(c, algo);
                s.run::<i64>(c, algo);
            }
        }
        s.comm.set_algorithm(c, None).unwrap();
    }
    s.failures
}

pub const REDUCING: [Collective; 3] = [
    Collective::AllReduce,
    Collective::Reduce,
    Collective::ReduceScatter,
];
pub const MOVING: [Collective; 6] = [
    Collective::Broadcast,
    Collective::AllGather,
    Collective::Gather,
    Collective::Scatter,
    Collective::AllToAll,
    Collective::Barrier,
];
