//! Every collective × algorithm × dtype × op through real in-process
//! communicators (one thread per rank), results compared exactly with a
//! sequential reference (see `common`).

mod common;

use braid::{run_local, Config, ReduceOp};
use common::{inputs, reduced, sweep_comm, COUNTS, MOVING, REDUCING};

fn sweep(n: usize, collectives: &[braid::Collective], all_dtypes: bool) {
    let failures = run_local(n, Config::default(), |comm| {
        sweep_comm(comm, collectives, all_dtypes, &COUNTS)
    })
    .unwrap();
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_dtype_and_op_at_three_and_four_ranks() {
    for n in [3, 4] {
        sweep(n, &REDUCING, true);
        sweep(n, &MOVING, true);
    }
}

#[test]
fn every_collective_and_algorithm_across_group_sizes() {
    for n in [1, 2, 5, 7, 8] {
        sweep(n, &REDUCING, false);
        sweep(n, &MOVING, false);
    }
}

#[test]
fn automatic_choice_is_exact_at_every_size_class() {
    // The size rule switches algorithms at 64 KiB and 1 MiB: cross both.
    let counts = [1usize, 16 << 10, (16 << 10) + 1, 300_000];
    let failures = run_local(4, Config::default(), |comm| {
        let mut bad = Vec::new();
        for &count in &counts {
            let me = comm.rank();
            let mut out = vec![0f32; count];
            comm.all_reduce(
                &inputs::<f32>(ReduceOp::Sum, me, count),
                &mut out,
                ReduceOp::Sum,
            )
            .unwrap();
            if out != reduced::<f32>(ReduceOp::Sum, 4, count, 0) {
                bad.push(format!("all_reduce count {count}"));
            }
            let mut out = vec![0i32; count * 4];
            comm.all_gather(&inputs::<i32>(ReduceOp::Sum, me, count), &mut out)
                .unwrap();
            let want: Vec<i32> = (0..4)
                .flat_map(|r| inputs::<i32>(ReduceOp::Sum, r, count))
                .collect();
            if out != want {
                bad.push(format!("all_gather count {count}"));
            }
            let mut buf = if me == 2 {
                inputs::<u8>(ReduceOp::Sum, 2, count)
            } else {
                vec![0; count]
            };
            comm.broadcast(&mut buf, 2).unwrap();
            if buf != inputs::<u8>(ReduceOp::Sum, 2, count) {
                bad.push(format!("broadcast count {count}"));
            }
        }
        bad
    })
    .unwrap();
    assert!(failures.iter().all(|f| f.is_empty()), "{failures:?}");
}

#[test]
fn point_to_point_in_a_ring_and_to_self() {
    let results = run_local(5, Config::default(), |comm| {
        let (me, n) = (comm.rank(), comm.size());
        let right = (me + 1) % n;
        let left = (me + n - 1) % n;
        let send: Vec<u64> = (0..1000).map(|i| (me * 1000 + i) as u64).collect();
        let mut got = vec![0u64; 1000];
        comm.send_recv(&send, right, &mut got, left).unwrap();
        let ok_ring = got
            .iter()
            .enumerate()
            .all(|(i, v)| *v == (left * 1000 + i) as u64);
        // Plain send/recv: even ranks send first, odd ranks receive first.
        let mut got2 = vec![0i32; 17];
        let mine = vec![me as i32; 17];
        if me % 2 == 0 {
            if right != me && !(n % 2 == 1 && me == n - 1) {
                comm.send(&mine, me + 1).unwrap();
                comm.recv(&mut got2, me + 1).unwrap();
            }
        } else {
            comm.recv(&mut got2, me - 1).unwrap();
            comm.send(&mine, me - 1).unwrap();
        }
        let partner = if me % 2 == 0 { me + 1 } else { me - 1 };
        let ok_pair = partner >= n || got2.iter().all(|v| *v == partner as i32);
        let mut to_self = vec![0u8; 3];
        comm.send_recv(&[1u8, 2, 3], me, &mut to_self, me).unwrap();
        // Zero-length messages still arrive.
        comm.send_recv::<f32>(&[], right, &mut [], left).unwrap();
        ok_ring && ok_pair && to_self == [1, 2, 3]
    })
    .unwrap();
    assert!(results.iter().all(|ok| *ok), "{results:?}");
}
