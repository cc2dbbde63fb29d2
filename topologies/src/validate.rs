//! Static checks on one plan, without running it.
//!
//! [`validate_plan`] checks everything that can be judged from a single rank's
//! plan: regions inside their buffers, peers in range, no writes into the
//! read-only [`BufferId::Input`], well-formed local actions, and no data races
//! between the concurrent communication actions of one step. What needs all
//! ranks at once (matching, lengths of matched messages, deadlock) is the
//! simulator's job ([`crate::simulate`]), which runs this check first.

use std::fmt;

use crate::{Action, BufferId, Plan, Region};

/// A defect found in a single plan without running it.
///
/// `step` and `action` are indices into [`Plan::steps`] and
/// [`crate::Step::actions`]; `what` is the offending action itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanDefect {
    /// The plan's own rank is not one of its `nranks` ranks (or `nranks` is 0).
    #[error("the plan is for rank {rank} of {nranks} ranks, which is out of range")]
    BadRank {
        /// [`Plan::rank`].
        rank: usize,
        /// [`Plan::nranks`].
        nranks: usize,
    },
    /// A region reaches past the end of its buffer.
    #[error(
        "step {step}, action {action} ({}): region {} is out of bounds of {:?} ({buffer_len} elements)",
        ShowAction(what),
        ShowRegion(region),
        region.buf
    )]
    OutOfBounds {
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// The action.
        what: Action,
        /// The offending region.
        region: Region,
        /// The length of the region's buffer in this plan.
        buffer_len: u64,
    },
    /// A communication action names a peer that is out of range or the rank itself.
    #[error(
        "step {step}, action {action} ({}): peer {peer} is {}",
        ShowAction(what),
        if *peer == *rank { format!("this rank itself (rank {rank})") } else { format!("out of range for {nranks} ranks") }
    )]
    BadPeer {
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// The action.
        what: Action,
        /// The peer named.
        peer: usize,
        /// The plan's rank.
        rank: usize,
        /// Ranks in the group.
        nranks: usize,
    },
    /// An action writes into the read-only input buffer.
    #[error(
        "step {step}, action {action} ({}): writes into the read-only Input buffer",
        ShowAction(what)
    )]
    WriteToInput {
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// The action.
        what: Action,
    },
    /// A Copy or Reduce whose source and destination differ in length.
    #[error(
        "step {step}, action {action} ({}): source has {src_len} elements but destination has {dst_len}",
        ShowAction(what)
    )]
    LocalLengthMismatch {
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// The action.
        what: Action,
        /// Source length.
        src_len: u64,
        /// Destination length.
        dst_len: u64,
    },
    /// A Copy or Reduce whose source and destination overlap.
    #[error(
        "step {step}, action {action} ({}): source and destination overlap",
        ShowAction(what)
    )]
    LocalOverlap {
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// The action.
        what: Action,
    },
    /// Two concurrent communication actions of one step race on the same
    /// elements: two receive destinations overlap, or a receive destination
    /// overlaps a send source.
    #[error(
        "step {step}: data race between action {first} ({}) and action {second} ({}): {}",
        ShowRegion(first_region),
        ShowRegion(second_region),
        if *both_receives {
            "two receives write overlapping elements"
        } else {
            "a receive writes elements that a send of the same step reads"
        }
    )]
    Hazard {
        /// Step index.
        step: usize,
        /// The lower action index.
        first: usize,
        /// The higher action index.
        second: usize,
        /// The region action `first` reads or writes.
        first_region: Region,
        /// The region action `second` reads or writes.
        second_region: Region,
        /// Whether both actions are receives (else one is a send).
        both_receives: bool,
    },
}

impl PlanDefect {
    /// The step the defect is in (`None` for [`PlanDefect::BadRank`]).
    pub fn step(&self) -> Option<usize> {
        match self {
            PlanDefect::BadRank { .. } => None,
            PlanDefect::OutOfBounds { step, .. }
            | PlanDefect::BadPeer { step, .. }
            | PlanDefect::WriteToInput { step, .. }
            | PlanDefect::LocalLengthMismatch { step, .. }
            | PlanDefect::LocalOverlap { step, .. }
            | PlanDefect::Hazard { step, .. } => Some(*step),
        }
    }
}

/// Displays a region as `Output[4..8]`.
pub(crate) struct ShowRegion<'a>(pub(crate) &'a Region);

impl fmt::Display for ShowRegion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Region::end may overflow for a corrupt region; print it without adding.
        let r = self.0;
        match r.offset.checked_add(r.len) {
            Some(end) => write!(f, "{:?}[{}..{}]", r.buf, r.offset, end),
            None => write!(f, "{:?}[{}..+{}]", r.buf, r.offset, r.len),
        }
    }
}

/// Displays an action in words, e.g. `send Output[0..4] to rank 1`.
pub(crate) struct ShowAction<'a>(pub(crate) &'a Action);

impl fmt::Display for ShowAction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Action::Send { peer, src } => write!(f, "send {} to rank {peer}", ShowRegion(src)),
            Action::Recv { peer, dst } => {
                write!(f, "recv from rank {peer} into {}", ShowRegion(dst))
            }
            Action::RecvReduce { peer, dst } => {
                write!(f, "recv-reduce from rank {peer} into {}", ShowRegion(dst))
            }
            Action::Copy { src, dst } => {
                write!(f, "copy {} to {}", ShowRegion(src), ShowRegion(dst))
            }
            Action::Reduce { src, dst } => {
                write!(f, "reduce {} into {}", ShowRegion(src), ShowRegion(dst))
            }
        }
    }
}

fn buf_index(buf: BufferId) -> u8 {
    match buf {
        BufferId::Input => 0,
        BufferId::Output => 1,
        BufferId::Scratch => 2,
    }
}

/// Checks one plan on its own.
///
/// Checks, in order of steps and actions (the first defect found is returned):
/// * the plan's rank is in `0..nranks`;
/// * every region lies within its buffer ([`Plan::buffer_len`]);
/// * every communication peer is in `0..nranks` and is not the rank itself;
/// * nothing writes into [`BufferId::Input`] (a zero-length region writes
///   nothing and is allowed);
/// * Copy and Reduce have equal source and destination lengths that do not overlap;
/// * within one step's communication, no two receive destinations overlap and
///   no receive destination overlaps a send source.
///
/// Local actions run before communication and in order, so they may touch
/// what the step's communication touches.
pub fn validate_plan(plan: &Plan) -> Result<(), PlanDefect> {
    if plan.nranks == 0 || plan.rank >= plan.nranks {
        return Err(PlanDefect::BadRank {
            rank: plan.rank,
            nranks: plan.nranks,
        });
    }
    // Reused per step: (buffer, offset, end, action index) of receive
    // destinations and send sources.
    let mut writes: Vec<(u8, u64, u64, usize)> = Vec::new();
    let mut reads: Vec<(u8, u64, u64, usize)> = Vec::new();
    for (s, step) in plan.steps.iter().enumerate() {
        writes.clear();
        reads.clear();
        for (i, a) in step.actions.iter().enumerate() {
            let in_bounds = |region: &Region| -> Result<(), PlanDefect> {
                let len = plan.buffer_len(region.buf);
                match region.offset.checked_add(region.len) {
                    Some(end) if end <= len => Ok(()),
                    _ => Err(PlanDefect::OutOfBounds {
                        step: s,
                        action: i,
                        what: *a,
                        region: *region,
                        buffer_len: len,
                    }),
                }
            };
            let good_peer = |peer: usize| -> Result<(), PlanDefect> {
                if peer >= plan.nranks || peer == plan.rank {
                    Err(PlanDefect::BadPeer {
                        step: s,
                        action: i,
                        what: *a,
                        peer,
                        rank: plan.rank,
                        nranks: plan.nranks,
                    })
                } else {
                    Ok(())
                }
            };
            let writable = |dst: &Region| -> Result<(), PlanDefect> {
                if dst.buf == BufferId::Input && dst.len > 0 {
                    Err(PlanDefect::WriteToInput {
                        step: s,
                        action: i,
                        what: *a,
                    })
                } else {
                    Ok(())
                }
            };
            match a {
                Action::Send { peer, src } => {
                    in_bounds(src)?;
                    good_peer(*peer)?;
                    if src.len > 0 {
                        reads.push((buf_index(src.buf), src.offset, src.end(), i));
                    }
                }
                Action::Recv { peer, dst } | Action::RecvReduce { peer, dst } => {
                    in_bounds(dst)?;
                    good_peer(*peer)?;
                    writable(dst)?;
                    if dst.len > 0 {
                        writes.push((buf_index(dst.buf), dst.offset, dst.end(), i));
                    }
                }
                Action::Copy { src, dst } | Action::Reduce { src, dst } => {
                    in_bounds(src)?;
                    in_bounds(dst)?;
                    writable(dst)?;
                    if src.len != dst.len {
                        return Err(PlanDefect::LocalLengthMismatch {
                            step: s,
                            action: i,
                            what: *a,
                            src_len: src.len,
                            dst_len: dst.len,
                        });
                    }
                    if src.overlaps(dst) {
                        return Err(PlanDefect::LocalOverlap {
                            step: s,
                            action: i,
                            what: *a,
                        });
                    }
                }
            }
        }
        check_races(s, &step.actions, &mut writes, &reads)?;
    }
    Ok(())
}

/// Finds overlapping receive destinations, and receive destinations that
/// overlap send sources, in O(k log k) for k communication actions.
fn check_races(
    step: usize,
    actions: &[Action],
    writes: &mut [(u8, u64, u64, usize)],
    reads: &[(u8, u64, u64, usize)],
) -> Result<(), PlanDefect> {
    let hazard = |x: usize, y: usize| {
        let (first, second) = (x.min(y), x.max(y));
        let region = |i: usize| match actions[i] {
            Action::Send { src: r, .. }
            | Action::Recv { dst: r, .. }
            | Action::RecvReduce { dst: r, .. }
            | Action::Copy { dst: r, .. }
            | Action::Reduce { dst: r, .. } => r,
        };
        PlanDefect::Hazard {
            step,
            first,
            second,
            first_region: region(first),
            second_region: region(second),
            both_receives: !matches!(actions[first], Action::Send { .. })
                && !matches!(actions[second], Action::Send { .. }),
        }
    };
    if writes.len() + reads.len() < 2 || writes.is_empty() {
        return Ok(());
    }
    writes.sort_unstable_by_key(|&(b, off, _, i)| (b, off, i));
    // Sorted by start (regions are non-empty), the writes are pairwise
    // disjoint iff each starts at or after the end of the one before it.
    for w in writes.windows(2) {
        let ((pb, _, pe, pi), (b, off, _, i)) = (w[0], w[1]);
        if pb == b && off < pe {
            return Err(hazard(pi, i));
        }
    }
    // Writes are now disjoint and sorted, so their ends are sorted too: the
    // only write that can overlap a read is the first one ending after the
    // read's start.
    for &(b, off, end, i) in reads {
        let k = writes.partition_point(|&(wb, _, we, _)| (wb, we) <= (b, off));
        if let Some(&(wb, wo, _, wi)) = writes.get(k) {
            if wb == b && wo < end {
                return Err(hazard(wi, i));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Collective, Step};
    use BufferId::*;

    fn plan(steps: Vec<Vec<Action>>) -> Plan {
        let mut p = Plan::new(Collective::AllReduce, Algorithm::Ring, 0, 3);
        p.input_len = 10;
        p.output_len = 10;
        p.scratch_len = 4;
        p.steps = steps.into_iter().map(Step::new).collect();
        p
    }

    fn r(buf: BufferId, offset: u64, len: u64) -> Region {
        Region::new(buf, offset, len)
    }

    #[test]
    fn accepts_a_good_plan() {
        let p = plan(vec![
            vec![
                Action::Copy {
                    src: r(Input, 0, 10),
                    dst: r(Output, 0, 10),
                },
                Action::Send {
                    peer: 1,
                    src: r(Output, 0, 5),
                },
                Action::Send {
                    peer: 2,
                    src: r(Output, 0, 5),
                },
                Action::Recv {
                    peer: 1,
                    dst: r(Scratch, 0, 4),
                },
                Action::RecvReduce {
                    peer: 2,
                    dst: r(Output, 5, 5),
                },
            ],
            vec![Action::Reduce {
                src: r(Scratch, 0, 4),
                dst: r(Output, 6, 4),
            }],
            vec![Action::Recv {
                peer: 1,
                dst: r(Input, 3, 0),
            }],
        ]);
        assert_eq!(validate_plan(&p), Ok(()));
    }

    #[test]
    fn rejects_bad_rank() {
        let mut p = plan(vec![]);
        p.rank = 3;
        let e = validate_plan(&p).unwrap_err();
        assert!(
            matches!(e, PlanDefect::BadRank { rank: 3, nranks: 3 }),
            "{e}"
        );
    }

    #[test]
    fn rejects_out_of_bounds_and_overflow() {
        let p = plan(vec![vec![Action::Send {
            peer: 1,
            src: r(Scratch, 2, 3),
        }]]);
        let e = validate_plan(&p).unwrap_err();
        assert!(matches!(
            e,
            PlanDefect::OutOfBounds {
                step: 0,
                action: 0,
                buffer_len: 4,
                ..
            }
        ));
        assert!(e.to_string().contains("Scratch[2..5]"), "{e}");
        let p = plan(vec![
            vec![],
            vec![Action::Send {
                peer: 1,
                src: r(Output, u64::MAX, 2),
            }],
        ]);
        let e = validate_plan(&p).unwrap_err();
        assert!(matches!(e, PlanDefect::OutOfBounds { step: 1, .. }), "{e}");
    }

    #[test]
    fn rejects_bad_peers() {
        let p = plan(vec![vec![Action::Recv {
            peer: 0,
            dst: r(Output, 0, 1),
        }]]);
        let e = validate_plan(&p).unwrap_err();
        assert!(e.to_string().contains("this rank itself"), "{e}");
        let p = plan(vec![vec![Action::Send {
            peer: 3,
            src: r(Output, 0, 1),
        }]]);
        let e = validate_plan(&p).unwrap_err();
        assert!(e.to_string().contains("out of range for 3 ranks"), "{e}");
    }

    #[test]
    fn rejects_writes_to_input() {
        let p = plan(vec![vec![Action::RecvReduce {
            peer: 1,
            dst: r(Input, 0, 1),
        }]]);
        assert!(matches!(
            validate_plan(&p),
            Err(PlanDefect::WriteToInput { .. })
        ));
        let p = plan(vec![vec![Action::Copy {
            src: r(Output, 0, 1),
            dst: r(Input, 0, 1),
        }]]);
        assert!(matches!(
            validate_plan(&p),
            Err(PlanDefect::WriteToInput { .. })
        ));
    }

    #[test]
    fn rejects_bad_local_actions() {
        let p = plan(vec![vec![Action::Copy {
            src: r(Output, 0, 2),
            dst: r(Scratch, 0, 3),
        }]]);
        assert!(matches!(
            validate_plan(&p),
            Err(PlanDefect::LocalLengthMismatch {
                src_len: 2,
                dst_len: 3,
                ..
            })
        ));
        let p = plan(vec![vec![Action::Reduce {
            src: r(Output, 0, 4),
            dst: r(Output, 3, 4),
        }]]);
        assert!(matches!(
            validate_plan(&p),
            Err(PlanDefect::LocalOverlap { .. })
        ));
    }

    #[test]
    fn rejects_races() {
        let p = plan(vec![vec![
            Action::Recv {
                peer: 1,
                dst: r(Output, 0, 5),
            },
            Action::Send {
                peer: 2,
                src: r(Scratch, 0, 4),
            },
            Action::Recv {
                peer: 2,
                dst: r(Output, 4, 2),
            },
        ]]);
        let e = validate_plan(&p).unwrap_err();
        assert!(
            matches!(
                e,
                PlanDefect::Hazard {
                    step: 0,
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("two receives"), "{e}");
        let p = plan(vec![vec![
            Action::Recv {
                peer: 1,
                dst: r(Output, 0, 9),
            },
            Action::Recv {
                peer: 1,
                dst: r(Output, 9, 1),
            },
            Action::Send {
                peer: 2,
                src: r(Output, 2, 1),
            },
        ]]);
        let e = validate_plan(&p).unwrap_err();
        assert!(
            matches!(
                e,
                PlanDefect::Hazard {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("a send of the same step reads"),
            "{e}"
        );
        // A long write followed by a short one nested inside it.
        let p = plan(vec![vec![
            Action::Recv {
                peer: 1,
                dst: r(Output, 0, 9),
            },
            Action::Recv {
                peer: 2,
                dst: r(Output, 3, 1),
            },
        ]]);
        assert!(matches!(validate_plan(&p), Err(PlanDefect::Hazard { .. })));
        // Same offsets in different buffers do not race; sends may share sources.
        let p = plan(vec![vec![
            Action::Recv {
                peer: 1,
                dst: r(Output, 0, 4),
            },
            Action::Recv {
                peer: 2,
                dst: r(Scratch, 0, 4),
            },
            Action::Send {
                peer: 1,
                src: r(Input, 0, 4),
            },
            Action::Send {
                peer: 2,
                src: r(Input, 0, 4),
            },
            Action::Send {
                peer: 2,
                src: r(Output, 4, 6),
            },
        ]]);
        assert_eq!(validate_plan(&p), Ok(()));
    }
}
