//! Bad input, mismatched calls, silent and dead peers: each is an error that
//! names the call, the rank and what was expected — never a panic or a hang.

use std::time::{Duration, Instant};

use braid::{
    local_group_with, run_local, Algorithm, Collective, Config, Error, ErrorKind, ReduceOp,
};

fn short_timeout() -> Config {
    Config::default().with_timeout(Duration::from_millis(300))
}

fn assert_error(e: &Error, kind: ErrorKind, call: &str, rank: usize, parts: &[&str]) {
    let text = e.to_string();
    assert_eq!(e.kind(), kind, "{text}");
    assert_eq!(e.call(), Some(call), "{text}");
    assert_eq!(e.rank(), Some(rank), "{text}");
    assert!(text.contains(&format!("in {call} #")), "{text}");
    assert!(text.contains(&format!("on rank {rank} of")), "{text}");
    for p in parts {
        assert!(text.contains(p), "expected '{p}' in: {text}");
    }
}

/// Runs `f` on a single rank of a 4-rank group whose other ranks do nothing:
/// argument errors must come back before any communication.
fn on_rank<R>(rank: usize, f: impl FnOnce(&mut braid::Communicator) -> R) -> R {
    let mut group = local_group_with(4, short_timeout()).unwrap();
    f(&mut group[rank])
}

#[test]
fn buffer_lengths_that_disagree_with_the_collective() {
    on_rank(1, |c| {
        let e = c
            .all_reduce(&[1.0f32; 8], &mut [0.0; 5], ReduceOp::Sum)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_reduce",
            1,
            &["recv buffer has 5 elements, expected 8"],
        );
        let e = c.all_gather(&[1u8; 3], &mut [0u8; 11]).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_gather",
            1,
            &["recv buffer has 11 elements, expected 12"],
        );
        let e = c
            .reduce_scatter(&[1i32; 7], &mut [0; 2], ReduceOp::Sum)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "reduce_scatter",
            1,
            &["send buffer has 7 elements, expected 8"],
        );
        let e = c.gather(&[1i64; 2], &mut [0; 7], 1).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "gather",
            1,
            &["recv buffer has 7 elements, expected 8"],
        );
        let e = c.scatter(&[1u32; 7], &mut [0; 2], 1).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "scatter",
            1,
            &["send buffer has 7 elements, expected 8"],
        );
        let e = c.all_to_all(&[0f64; 6], &mut [0.0; 6]).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_to_all",
            1,
            &["not a multiple of the 4 ranks", "all_to_all_v"],
        );
        let e = c
            .all_gather_v(&[1u8; 2], &mut [0u8; 3], &[1, 2])
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_gather_v",
            1,
            &["2 counts given for 4 ranks"],
        );
        let e = c
            .all_gather_v(&[1u8; 1], &mut [0u8; 6], &[1, 2, 1, 2])
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_gather_v",
            1,
            &["send buffer has 1 elements, expected 2"],
        );
        let e = c
            .all_to_all_v(&[1u8; 3], &[1, 1, 1, 1], &mut [0u8; 4], &[1, 1, 1, 1])
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "all_to_all_v",
            1,
            &["send buffer has 3 elements, expected 4"],
        );
        let e = c
            .reduce(&[1.0f64; 4], &mut [0.0; 3], ReduceOp::Max, 1)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "reduce",
            1,
            &["recv buffer has 3 elements, expected 4"],
        );
    });
}

#[test]
fn root_and_peer_out_of_range() {
    on_rank(2, |c| {
        let e = c.broadcast(&mut [0u8; 4], 4).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "broadcast",
            2,
            &["root 4 is out of range", "0..=3"],
        );
        let e = c
            .reduce(&[1.0f32], &mut [0.0], ReduceOp::Sum, 9)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "reduce",
            2,
            &["root 9 is out of range"],
        );
        let e = c.gather(&[1u8], &mut [], 17).unwrap_err();
        assert_error(&e, ErrorKind::InvalidArgument, "gather", 2, &["root 17"]);
        let e = c.send(&[1u8], 4).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "send",
            2,
            &["peer 4 is out of range"],
        );
    });
}

#[test]
fn an_op_the_dtype_does_not_support() {
    on_rank(0, |c| {
        let e = c
            .all_reduce(&[1i32; 4], &mut [0; 4], ReduceOp::Avg)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::Unsupported,
            "all_reduce",
            0,
            &["avg", "i32", "use sum"],
        );
        let e = c
            .reduce_scatter(&[1u8; 4], &mut [0; 1], ReduceOp::Avg)
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::Unsupported,
            "reduce_scatter",
            0,
            &["avg", "u8"],
        );
    });
}

#[test]
fn send_to_self_without_a_matching_receive() {
    on_rank(3, |c| {
        let e = c.send(&[1.0f32; 2], 3).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "send",
            3,
            &["own rank 3", "send_recv"],
        );
        let e = c.recv(&mut [0.0f32; 2], 3).unwrap_err();
        assert_error(&e, ErrorKind::InvalidArgument, "recv", 3, &["own rank 3"]);
        let e = c.send_recv(&[1u8], 3, &mut [0u8], 0).unwrap_err();
        assert_error(
            &e,
            ErrorKind::InvalidArgument,
            "send_recv",
            3,
            &["one side only"],
        );
    });
}

#[test]
fn a_forced_algorithm_that_does_not_support_the_call() {
    // Star routes all-to-all through rank 0, which needs every rank's counts;
    // all_to_all_v ranks only know their own.
    on_rank(1, |c| {
        c.set_algorithm(Collective::AllToAll, Some(Algorithm::Star))
            .unwrap();
        let e = c
            .all_to_all_v(&[1u8; 4], &[1, 1, 1, 1], &mut [0u8; 4], &[1, 1, 1, 1])
            .unwrap_err();
        assert_error(
            &e,
            ErrorKind::Unsupported,
            "all_to_all_v",
            1,
            &["algorithm star", "forced", "pairwise"],
        );
        let e = c
            .set_algorithm(Collective::AllToAll, Some(Algorithm::Ring))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("valid for all_to_all: pairwise, linear, star"),
            "{e}"
        );
    });
}

#[test]
fn an_empty_group_is_refused() {
    let e = local_group_with(0, Config::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("at least one rank"), "{e}");
}

#[test]
fn ranks_calling_different_collectives_get_a_mismatch_not_corrupt_data() {
    let results = run_local(2, short_timeout(), |c| {
        if c.rank() == 0 {
            c.all_reduce(&[1.0f32; 16], &mut [0.0; 16], ReduceOp::Sum)
        } else {
            let r = c.broadcast(&mut [2.0f32; 16], 1);
            // Stay connected: rank 0 must meet the mismatch, not a dead peer.
            std::thread::sleep(Duration::from_millis(300));
            r
        }
    })
    .unwrap();
    let e = results[0].as_ref().unwrap_err();
    assert_error(
        e,
        ErrorKind::Mismatch,
        "all_reduce",
        0,
        &[
            "rank 1 is in broadcast #0",
            "root 1",
            "called all_reduce #0",
        ],
    );
    assert_eq!(e.peers(), &[1]);
}

#[test]
fn ranks_with_different_counts_get_a_mismatch() {
    let results = run_local(3, short_timeout(), |c| {
        let n = if c.rank() == 2 { 5 } else { 4 };
        c.all_reduce(&vec![1i32; n], &mut vec![0; n], ReduceOp::Sum)
    })
    .unwrap();
    let mismatches: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!mismatches.is_empty());
    for e in mismatches {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Mismatch | ErrorKind::Timeout | ErrorKind::PeerFailed
            ),
            "{e}"
        );
    }
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .any(|e| e.kind() == ErrorKind::Mismatch
                && e.to_string().contains("count 5")
                && e.to_string().contains("count 4")),
        "{results:?}"
    );
}

#[test]
fn a_silent_peer_is_a_timeout_naming_it() {
    let start = Instant::now();
    let results = run_local(3, short_timeout(), |c| {
        if c.rank() == 2 {
            // Alive but never joins: the others must give up at the deadline.
            std::thread::sleep(Duration::from_millis(1200));
            return Ok(());
        }
        c.set_algorithm(Collective::AllReduce, Some(Algorithm::Ring))
            .unwrap();
        let r = c.all_reduce(&[1u64; 64], &mut [0; 64], ReduceOp::Sum);
        // Stay connected until rank 2 is done, so that no rank meets a dead
        // peer instead of the silent one.
        std::thread::sleep(Duration::from_millis(1300).saturating_sub(start.elapsed()));
        r
    })
    .unwrap();
    for (rank, result) in results.iter().enumerate().take(2) {
        let e = result.as_ref().unwrap_err();
        assert_error(
            e,
            ErrorKind::Timeout,
            "all_reduce",
            rank,
            &["no progress for 0.3 s", "BRAID_TIMEOUT"],
        );
        assert!(!e.peers().is_empty(), "{e}");
    }
    assert!(
        results[0].as_ref().unwrap_err().peers().contains(&2)
            || results[1].as_ref().unwrap_err().peers().contains(&2)
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_dead_peer_is_reported_quickly() {
    let start = Instant::now();
    let results = run_local(
        4,
        Config::default().with_timeout(Duration::from_secs(30)),
        |c| {
            if c.rank() == 3 {
                return None; // its communicator is dropped when the thread ends
            }
            std::thread::sleep(Duration::from_millis(50));
            c.set_algorithm(Collective::AllReduce, Some(Algorithm::Ring))
                .unwrap();
            Some(c.all_reduce(&[1.0f32; 1000], &mut [0.0; 1000], ReduceOp::Sum))
        },
    )
    .unwrap();
    // Well before the 30 s deadline every survivor has an error.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    for r in results.iter().take(3) {
        let e = r.as_ref().unwrap().as_ref().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::PeerFailed), "{e}");
        assert!(e.to_string().contains("closed its connection"), "{e}");
    }
}

#[test]
fn mismatched_point_to_point_lengths_are_errors() {
    let results = run_local(2, short_timeout(), |c| {
        if c.rank() == 0 {
            c.send(&[1u32; 10], 1)
        } else {
            c.recv(&mut [0u32; 12], 0)
        }
    })
    .unwrap();
    let e = results[1].as_ref().unwrap_err();
    assert_error(e, ErrorKind::Mismatch, "recv", 1, &["count 10", "count 12"]);
}
