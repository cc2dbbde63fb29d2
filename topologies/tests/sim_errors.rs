//! The simulator's own checks, on hand-built plans: each broken plan must be
//! refused with the right error and a message that says what is wrong.

use braid_topologies::{
    simulate, simulate_with_stats, Action, Algorithm, BufferId, Collective, Plan, PlanDefect,
    RankData, Region, SimError, Step,
};
use BufferId::*;

fn plan(rank: usize, nranks: usize, lens: (u64, u64, u64), steps: Vec<Vec<Action>>) -> Plan {
    let mut p = Plan::new(Collective::AllGather, Algorithm::Ring, rank, nranks);
    (p.input_len, p.output_len, p.scratch_len) = lens;
    p.steps = steps.into_iter().map(Step::new).collect();
    p
}

fn r(buf: BufferId, offset: u64, len: u64) -> Region {
    Region::new(buf, offset, len)
}

fn data(plans: &[Plan]) -> Vec<RankData<i64>> {
    plans
        .iter()
        .map(|p| RankData {
            input: (0..p.input_len as i64).collect(),
            output: vec![0; p.output_len as usize],
        })
        .collect()
}

fn run(plans: &[Plan]) -> Result<Vec<RankData<i64>>, SimError> {
    simulate(plans, data(plans), |a, b| a + b)
}

fn send(peer: usize, src: Region) -> Action {
    Action::Send { peer, src }
}

fn recv(peer: usize, dst: Region) -> Action {
    Action::Recv { peer, dst }
}

#[test]
fn exchange_in_one_step_works() {
    // Both ranks send and receive in the same step: full duplex, no deadlock.
    let plans: Vec<Plan> = (0..2)
        .map(|me| {
            plan(
                me,
                2,
                (2, 4, 0),
                vec![vec![
                    Action::Copy {
                        src: r(Input, 0, 2),
                        dst: r(Output, 2 * me as u64, 2),
                    },
                    send(1 - me, r(Input, 0, 2)),
                    recv(1 - me, r(Output, 2 * (1 - me) as u64, 2)),
                ]],
            )
        })
        .collect();
    let out = run(&plans).unwrap();
    assert_eq!(out[0].output, vec![0, 1, 0, 1]);
    assert_eq!(out[1].output, vec![0, 1, 0, 1]);
}

#[test]
fn receive_first_in_separate_steps_deadlocks() {
    // Each rank first receives (step 0), then sends (step 1): under
    // rendezvous neither send is ever posted.
    let plans: Vec<Plan> = (0..2)
        .map(|me| {
            plan(
                me,
                2,
                (2, 2, 0),
                vec![
                    vec![recv(1 - me, r(Output, 0, 2))],
                    vec![send(1 - me, r(Input, 0, 2))],
                ],
            )
        })
        .collect();
    let e = run(&plans).unwrap_err();
    let SimError::Deadlock { stuck } = &e else {
        panic!("expected a deadlock, got {e}");
    };
    assert_eq!(stuck.len(), 2);
    assert_eq!((stuck[0].rank, stuck[0].step, stuck[0].steps), (0, 0, 2));
    assert_eq!(stuck[1].pending, vec![(0, recv(0, r(Output, 0, 2)))]);
    let msg = e.to_string();
    assert!(
        msg.starts_with("deadlock: 2 rank(s) cannot make progress"),
        "{msg}"
    );
    assert!(msg.contains("rank 0 is stuck in step 0 of 2"), "{msg}");
    assert!(
        msg.contains("action 0: recv from rank 1 into Output[0..2] (rank 1 is in step 0)"),
        "{msg}"
    );
}

#[test]
fn deadlock_report_shows_where_peers_are() {
    // Ranks 0 and 2 each wait for the other first; rank 1's send to rank 2
    // waits for a receive that rank 2 posts only in its step 1.
    let p0 = plan(
        0,
        3,
        (0, 1, 0),
        vec![
            vec![recv(2, r(Output, 0, 1))],
            vec![send(2, r(Output, 0, 1))],
        ],
    );
    let p1 = plan(1, 3, (1, 0, 0), vec![vec![send(2, r(Input, 0, 1))]]);
    let p2 = plan(
        2,
        3,
        (1, 2, 0),
        vec![
            vec![recv(0, r(Output, 0, 1))],
            vec![recv(1, r(Output, 1, 1)), send(0, r(Input, 0, 1))],
        ],
    );
    let e = run(&[p0, p1, p2]).unwrap_err();
    let SimError::Deadlock { stuck } = &e else {
        panic!("expected a deadlock, got {e}");
    };
    // Rank 1 is stuck too: its send waits on rank 2's step 1.
    assert_eq!(
        stuck.iter().map(|s| s.rank).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let msg = e.to_string();
    assert!(
        msg.contains("send Input[0..1] to rank 2 (rank 2 is in step 0)"),
        "{msg}"
    );
}

#[test]
fn length_mismatch_names_both_sides() {
    let p0 = plan(0, 2, (3, 0, 0), vec![vec![], vec![send(1, r(Input, 0, 3))]]);
    let p1 = plan(1, 2, (0, 4, 0), vec![vec![recv(0, r(Output, 0, 4))]]);
    let e = run(&[p0, p1]).unwrap_err();
    assert_eq!(
        e,
        SimError::LengthMismatch {
            src: 0,
            dst: 1,
            send_step: 1,
            send_action: 0,
            recv_step: 0,
            recv_action: 0,
            send_len: 3,
            recv_len: 4,
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("rank 0 step 1 action 0 sends 3 elements to rank 1"),
        "{msg}"
    );
    assert!(msg.contains("expects 4"), "{msg}");
}

#[test]
fn overlapping_receives_are_a_hazard() {
    let p0 = plan(
        0,
        3,
        (0, 4, 0),
        vec![vec![recv(1, r(Output, 0, 3)), recv(2, r(Output, 2, 2))]],
    );
    let p1 = plan(1, 3, (3, 0, 0), vec![vec![send(0, r(Input, 0, 3))]]);
    let p2 = plan(2, 3, (2, 0, 0), vec![vec![send(0, r(Input, 0, 2))]]);
    let e = run(&[p0, p1, p2]).unwrap_err();
    let SimError::Hazard {
        rank: 0,
        step: 0,
        action: 0,
        defect,
    } = &e
    else {
        panic!("expected a hazard on rank 0, got {e:?}");
    };
    assert!(
        matches!(
            **defect,
            PlanDefect::Hazard {
                first: 0,
                second: 1,
                both_receives: true,
                ..
            }
        ),
        "{defect:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("rank 0: step 0: data race between action 0"),
        "{msg}"
    );
    assert!(
        msg.contains("two receives write overlapping elements"),
        "{msg}"
    );
}

#[test]
fn receive_over_a_send_source_is_a_hazard() {
    let p0 = plan(
        0,
        2,
        (0, 4, 0),
        vec![vec![send(1, r(Output, 0, 2)), recv(1, r(Output, 1, 2))]],
    );
    let p1 = plan(
        1,
        2,
        (2, 2, 0),
        vec![vec![send(0, r(Input, 0, 2)), recv(0, r(Output, 0, 2))]],
    );
    let e = run(&[p0, p1]).unwrap_err();
    assert!(matches!(e, SimError::Hazard { rank: 0, .. }), "{e:?}");
    assert!(e
        .to_string()
        .contains("a receive writes elements that a send of the same step reads"));
}

#[test]
fn receive_into_input_is_a_hazard() {
    let p0 = plan(
        0,
        2,
        (2, 0, 0),
        vec![vec![Action::RecvReduce {
            peer: 1,
            dst: r(Input, 0, 2),
        }]],
    );
    let p1 = plan(1, 2, (2, 0, 0), vec![vec![send(0, r(Input, 0, 2))]]);
    let e = run(&[p0, p1]).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::Hazard {
                rank: 0,
                step: 0,
                action: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("writes into the read-only Input buffer"),
        "{e}"
    );
}

#[test]
fn out_of_bounds_region() {
    let p0 = plan(
        0,
        2,
        (0, 4, 2),
        vec![
            vec![Action::Copy {
                src: r(Output, 0, 2),
                dst: r(Scratch, 0, 2),
            }],
            vec![send(1, r(Scratch, 1, 2))],
        ],
    );
    let p1 = plan(1, 2, (0, 2, 0), vec![vec![recv(0, r(Output, 0, 2))]]);
    let e = run(&[p0, p1]).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::OutOfBounds {
                rank: 0,
                step: 1,
                action: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("rank 0: step 1, action 0 (send Scratch[1..3] to rank 1): region Scratch[1..3] is out of bounds of Scratch (2 elements)"),
        "{msg}"
    );
}

#[test]
fn unmatched_send() {
    // Rank 0 sends twice to rank 1, which receives once.
    let p0 = plan(
        0,
        2,
        (2, 0, 0),
        vec![vec![send(1, r(Input, 0, 1))], vec![send(1, r(Input, 1, 1))]],
    );
    let p1 = plan(1, 2, (0, 1, 0), vec![vec![recv(0, r(Output, 0, 1))]]);
    let e = run(&[p0, p1]).unwrap_err();
    let SimError::Unmatched { pairs } = &e else {
        panic!("expected unmatched messages, got {e}");
    };
    assert_eq!(
        (pairs[0].src, pairs[0].dst, pairs[0].sends, pairs[0].recvs),
        (0, 1, 2, 1)
    );
    assert!(
        e.to_string()
            .contains("rank 0 sends 2 message(s) to rank 1, which posts 1 receive(s) from rank 0"),
        "{e}"
    );
}

#[test]
fn bad_peers_and_local_actions() {
    let p0 = plan(0, 2, (0, 2, 0), vec![vec![send(0, r(Output, 0, 2))]]);
    let p1 = plan(1, 2, (0, 2, 0), vec![]);
    let e = run(&[p0, p1.clone()]).unwrap_err();
    assert!(matches!(e, SimError::BadPeer { rank: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("peer 0 is this rank itself"), "{e}");

    let p0 = plan(0, 2, (0, 2, 0), vec![vec![recv(5, r(Output, 0, 2))]]);
    let e = run(&[p0, p1.clone()]).unwrap_err();
    assert!(
        e.to_string().contains("peer 5 is out of range for 2 ranks"),
        "{e}"
    );

    let p0 = plan(
        0,
        2,
        (0, 4, 0),
        vec![vec![Action::Copy {
            src: r(Output, 0, 3),
            dst: r(Output, 1, 3),
        }]],
    );
    let e = run(&[p0, p1.clone()]).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::BadLocal {
                rank: 0,
                step: 0,
                action: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("overlap"), "{e}");

    let p0 = plan(
        0,
        2,
        (0, 4, 0),
        vec![vec![Action::Reduce {
            src: r(Output, 0, 1),
            dst: r(Output, 1, 3),
        }]],
    );
    let e = run(&[p0, p1]).unwrap_err();
    assert!(
        e.to_string()
            .contains("source has 1 elements but destination has 3"),
        "{e}"
    );
}

#[test]
fn plan_and_data_must_agree() {
    let p0 = plan(0, 2, (1, 1, 0), vec![]);
    let p1 = plan(1, 2, (1, 1, 0), vec![]);
    let e = simulate::<i64>(&[p0.clone(), p1.clone()], vec![], |a, _| a).unwrap_err();
    assert_eq!(e, SimError::RankCount { plans: 2, data: 0 });
    let e = run(&[p1.clone(), p0.clone()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("plans[0] is the plan of rank 1 of 2"),
        "{e}"
    );
    let e = run(std::slice::from_ref(&p0)).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::WrongRank {
                index: 0,
                plan_nranks: 2,
                nranks: 1,
                ..
            }
        ),
        "{e}"
    );
    let mut d = data(&[p0.clone(), p1.clone()]);
    d[1].output.push(0);
    let e = simulate(&[p0, p1], d, |a, b| a + b).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rank 1: Output buffer has 2 elements but its plan expects 1"
    );
}

#[test]
fn stats_count_zero_length_messages() {
    // A barrier-like exchange: zero-length messages still synchronise and count.
    let plans: Vec<Plan> = (0..3)
        .map(|me| {
            plan(
                me,
                3,
                (0, 0, 0),
                vec![
                    vec![
                        send((me + 1) % 3, r(Output, 0, 0)),
                        recv((me + 2) % 3, r(Output, 0, 0)),
                    ],
                    vec![
                        send((me + 2) % 3, r(Output, 0, 0)),
                        recv((me + 1) % 3, r(Output, 0, 0)),
                    ],
                ],
            )
        })
        .collect();
    let (_, stats) = simulate_with_stats::<i64>(&plans, data(&plans), |a, b| a + b).unwrap();
    assert_eq!(stats.messages, 6);
    assert_eq!(stats.elements, 0);
    assert_eq!(stats.sent_messages, vec![2, 2, 2]);
    assert_eq!(stats.received_messages, vec![2, 2, 2]);
    assert!(stats.depends_on.iter().all(|row| row.iter().all(|&d| d)));

    // One round is not enough for 3 ranks: rank 0 hears only from rank 2.
    let one: Vec<Plan> = plans
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.steps.truncate(1);
            p
        })
        .collect();
    let (_, stats) = simulate_with_stats::<i64>(&one, data(&one), |a, b| a + b).unwrap();
    assert_eq!(stats.depends_on[0], vec![true, false, true]);
}
