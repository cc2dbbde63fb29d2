//! The in-memory plan simulator: runs every rank's plan together.
//!
//! The simulator models *rendezvous* (zero-buffering) message passing: a send
//! and its receive complete together, only when both ranks have reached the
//! steps holding them. A set of plans that finishes here finishes on any real
//! transport, however much (or little) it buffers, and gives the same result
//! there because a step's send sources and receive destinations never overlap
//! (checked by [`validate_plan`]).
//!
//! Per rank and step: the local actions run first, in order, when the rank
//! enters the step; then its communication actions are pending. A send from
//! `a` to `b` matches a receive of `b` from `a` when both are pending in the
//! ranks' current steps and each is the first still-pending action of that
//! direction in its step, so the k-th send `a → b` meets the k-th receive of
//! `b` from `a` (FIFO per ordered pair). Data moves at match time. A rank
//! moves to its next step when all actions of its step are done.
//!
//! Before running, every plan is checked with [`validate_plan`] and every
//! ordered pair of ranks must post as many sends as receives
//! ([`SimError::Unmatched`] otherwise), so a deadlock report always means a
//! cycle of waits, never a message nobody receives.
//!
//! Zero-sized element types (`simulate::<()>`) skip all data movement, so
//! index arithmetic on buffers past 2^32 elements can be checked without
//! allocating them.

use std::collections::HashMap;
use std::fmt;

use crate::validate::ShowAction;
use crate::{validate_plan, Action, BufferId, Plan, PlanDefect, Region};

/// One rank's buffers in a simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankData<T> {
    /// The send buffer.
    pub input: Vec<T>,
    /// The receive buffer.
    pub output: Vec<T>,
}

/// What a simulation moved, and which ranks heard from which.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages matched (every send met exactly one receive), zero-length ones included.
    pub messages: u64,
    /// Elements moved between ranks, all messages together.
    pub elements: u64,
    /// `sent_messages[r]`: messages rank `r` sent.
    pub sent_messages: Vec<u64>,
    /// `received_messages[r]`: messages rank `r` received.
    pub received_messages: Vec<u64>,
    /// `sent_elements[r]`: elements rank `r` sent.
    pub sent_elements: Vec<u64>,
    /// `received_elements[r]`: elements rank `r` received.
    pub received_elements: Vec<u64>,
    /// Steps each rank ran (its plan's step count).
    pub steps: Vec<usize>,
    /// `depends_on[r][s]`: whether rank `r` could only finish after rank `s`
    /// had started, through a chain of messages (each from sender to
    /// receiver, a step after the one that received the previous). Always
    /// true for `r == s`. This ordering holds on every transport, buffered
    /// or not; a barrier needs it for every pair.
    pub depends_on: Vec<Vec<bool>>,
}

/// A rank that cannot make progress, in a [`SimError::Deadlock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckRank {
    /// The rank.
    pub rank: usize,
    /// The step it is stuck in.
    pub step: usize,
    /// How many steps its plan has.
    pub steps: usize,
    /// Its still-pending communication actions: (index in the step, action).
    pub pending: Vec<(usize, Action)>,
}

/// Messages from one rank to another that cannot all be matched, in a
/// [`SimError::Unmatched`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmatchedPair {
    /// The sending rank.
    pub src: usize,
    /// The receiving rank.
    pub dst: usize,
    /// Sends from `src` to `dst` over `src`'s whole plan.
    pub sends: u64,
    /// Receives of `dst` from `src` over `dst`'s whole plan.
    pub recvs: u64,
}

/// Why a simulation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The number of plans and of ranks' data differ.
    #[error("{plans} plans given but data for {data} ranks")]
    RankCount {
        /// `plans.len()`.
        plans: usize,
        /// `data.len()`.
        data: usize,
    },
    /// `plans[index]` is not the plan of rank `index` in a group of `nranks`.
    #[error(
        "plans[{index}] is the plan of rank {plan_rank} of {plan_nranks}, expected rank {index} of {nranks}"
    )]
    WrongRank {
        /// Position in `plans`.
        index: usize,
        /// The plan's [`Plan::rank`].
        plan_rank: usize,
        /// The plan's [`Plan::nranks`].
        plan_nranks: usize,
        /// The number of plans given.
        nranks: usize,
    },
    /// A rank's input or output buffer does not have the length its plan expects.
    #[error(
        "rank {rank}: {buffer:?} buffer has {actual} elements but its plan expects {expected}"
    )]
    BufferLength {
        /// The rank.
        rank: usize,
        /// [`BufferId::Input`] or [`BufferId::Output`].
        buffer: BufferId,
        /// Length the plan expects.
        expected: u64,
        /// Length given.
        actual: u64,
    },
    /// The scratch space a plan asks for cannot be allocated.
    #[error("rank {rank}: cannot allocate {len} scratch elements")]
    ScratchTooLarge {
        /// The rank.
        rank: usize,
        /// [`Plan::scratch_len`].
        len: u64,
    },
    /// A region lies outside its buffer.
    #[error("rank {rank}: {defect}")]
    OutOfBounds {
        /// The rank.
        rank: usize,
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// Details ([`PlanDefect::OutOfBounds`]).
        defect: Box<PlanDefect>,
    },
    /// A communication peer is out of range or the rank itself.
    #[error("rank {rank}: {defect}")]
    BadPeer {
        /// The rank.
        rank: usize,
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// Details ([`PlanDefect::BadPeer`]).
        defect: Box<PlanDefect>,
    },
    /// A Copy or Reduce with unequal lengths, overlapping regions or an
    /// [`BufferId::Input`] destination.
    #[error("rank {rank}: {defect}")]
    BadLocal {
        /// The rank.
        rank: usize,
        /// Step index.
        step: usize,
        /// Action index within the step.
        action: usize,
        /// Details.
        defect: Box<PlanDefect>,
    },
    /// Communication actions of one step race (overlapping receive
    /// destinations, a receive over a send source), or a receive writes into
    /// the read-only [`BufferId::Input`].
    #[error("rank {rank}: {defect}")]
    Hazard {
        /// The rank.
        rank: usize,
        /// Step index.
        step: usize,
        /// Index of the (first) offending action within the step.
        action: usize,
        /// Details ([`PlanDefect::Hazard`] or [`PlanDefect::WriteToInput`]).
        defect: Box<PlanDefect>,
    },
    /// A send and the receive it matched differ in length.
    #[error(
        "length mismatch: rank {src} step {send_step} action {send_action} sends {send_len} elements to rank {dst}, \
         whose matching receive (step {recv_step} action {recv_action}) expects {recv_len}"
    )]
    LengthMismatch {
        /// Sending rank.
        src: usize,
        /// Receiving rank.
        dst: usize,
        /// Sender's step.
        send_step: usize,
        /// Sender's action index in that step.
        send_action: usize,
        /// Receiver's step.
        recv_step: usize,
        /// Receiver's action index in that step.
        recv_action: usize,
        /// Elements sent.
        send_len: u64,
        /// Elements the receive expects.
        recv_len: u64,
    },
    /// No rank can make progress while some have not finished.
    #[error("{}", DeadlockReport(stuck))]
    Deadlock {
        /// Every rank that has not finished, in rank order.
        stuck: Vec<StuckRank>,
    },
    /// Some ordered pair of ranks posts different numbers of sends and
    /// receives over their whole plans (checked before running).
    #[error("{}", UnmatchedReport(pairs))]
    Unmatched {
        /// Every pair whose counts differ, in (src, dst) order.
        pairs: Vec<UnmatchedPair>,
    },
}

impl SimError {
    fn from_defect(rank: usize, defect: PlanDefect) -> SimError {
        #[derive(Clone, Copy)]
        enum Kind {
            OutOfBounds,
            BadPeer,
            BadLocal,
            Hazard,
        }
        let (kind, step, action) = match defect {
            PlanDefect::BadRank {
                rank: plan_rank,
                nranks,
            } => {
                return SimError::WrongRank {
                    index: rank,
                    plan_rank,
                    plan_nranks: nranks,
                    nranks,
                }
            }
            PlanDefect::OutOfBounds { step, action, .. } => (Kind::OutOfBounds, step, action),
            PlanDefect::BadPeer { step, action, .. } => (Kind::BadPeer, step, action),
            PlanDefect::WriteToInput { step, action, what } if what.is_communication() => {
                (Kind::Hazard, step, action)
            }
            PlanDefect::WriteToInput { step, action, .. }
            | PlanDefect::LocalLengthMismatch { step, action, .. }
            | PlanDefect::LocalOverlap { step, action, .. } => (Kind::BadLocal, step, action),
            PlanDefect::Hazard { step, first, .. } => (Kind::Hazard, step, first),
        };
        let defect = Box::new(defect);
        match kind {
            Kind::OutOfBounds => SimError::OutOfBounds {
                rank,
                step,
                action,
                defect,
            },
            Kind::BadPeer => SimError::BadPeer {
                rank,
                step,
                action,
                defect,
            },
            Kind::BadLocal => SimError::BadLocal {
                rank,
                step,
                action,
                defect,
            },
            Kind::Hazard => SimError::Hazard {
                rank,
                step,
                action,
                defect,
            },
        }
    }
}

/// At most this many stuck ranks, and pending actions per rank, are spelled out.
const REPORT_LIMIT: usize = 8;

struct DeadlockReport<'a>(&'a [StuckRank]);

impl fmt::Display for DeadlockReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stuck = self.0;
        write!(f, "deadlock: {} rank(s) cannot make progress", stuck.len())?;
        for s in stuck.iter().take(REPORT_LIMIT) {
            write!(
                f,
                "\n  rank {} is stuck in step {} of {}, waiting on:",
                s.rank, s.step, s.steps
            )?;
            for (i, a) in s.pending.iter().take(REPORT_LIMIT) {
                write!(f, "\n    action {i}: {}", ShowAction(a))?;
                if let Some(peer) = peer_of(a) {
                    match stuck.binary_search_by_key(&peer, |p| p.rank) {
                        Ok(k) => write!(f, " (rank {peer} is in step {})", stuck[k].step)?,
                        Err(_) => write!(f, " (rank {peer} has finished)")?,
                    }
                }
            }
            if s.pending.len() > REPORT_LIMIT {
                write!(f, "\n    ... and {} more", s.pending.len() - REPORT_LIMIT)?;
            }
        }
        if stuck.len() > REPORT_LIMIT {
            write!(
                f,
                "\n  ... and {} more stuck ranks",
                stuck.len() - REPORT_LIMIT
            )?;
        }
        Ok(())
    }
}

struct UnmatchedReport<'a>(&'a [UnmatchedPair]);

impl fmt::Display for UnmatchedReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unmatched messages:")?;
        for p in self.0.iter().take(REPORT_LIMIT) {
            write!(
                f,
                "\n  rank {} sends {} message(s) to rank {}, which posts {} receive(s) from rank {}",
                p.src, p.sends, p.dst, p.recvs, p.src
            )?;
        }
        if self.0.len() > REPORT_LIMIT {
            write!(f, "\n  ... and {} more pairs", self.0.len() - REPORT_LIMIT)?;
        }
        Ok(())
    }
}

fn peer_of(a: &Action) -> Option<usize> {
    match a {
        Action::Send { peer, .. } | Action::Recv { peer, .. } | Action::RecvReduce { peer, .. } => {
            Some(*peer)
        }
        Action::Copy { .. } | Action::Reduce { .. } => None,
    }
}

/// Runs all ranks' plans together and returns every rank's buffers.
///
/// `plans[r]` is rank `r`'s plan and `data[r]` its buffers, whose lengths must
/// be the plan's `input_len` and `output_len`; scratch space is allocated
/// here (filled with `T::default()`). `op` is the reduction used by
/// `Reduce` and `RecvReduce` (`dst = op(dst, src)`). See the module
/// documentation for the exact semantics, and [`SimError`] for what is
/// checked. Equivalent to [`simulate_with_stats`] without the statistics.
pub fn simulate<T: Copy + Default>(
    plans: &[Plan],
    data: Vec<RankData<T>>,
    op: impl Fn(T, T) -> T,
) -> Result<Vec<RankData<T>>, SimError> {
    simulate_with_stats(plans, data, op).map(|(data, _)| data)
}

/// [`simulate`], also returning what moved between ranks.
pub fn simulate_with_stats<T: Copy + Default>(
    plans: &[Plan],
    data: Vec<RankData<T>>,
    op: impl Fn(T, T) -> T,
) -> Result<(Vec<RankData<T>>, SimStats), SimError> {
    let n = plans.len();
    if data.len() != n {
        return Err(SimError::RankCount {
            plans: n,
            data: data.len(),
        });
    }
    for (r, (plan, d)) in plans.iter().zip(&data).enumerate() {
        if plan.rank != r || plan.nranks != n {
            return Err(SimError::WrongRank {
                index: r,
                plan_rank: plan.rank,
                plan_nranks: plan.nranks,
                nranks: n,
            });
        }
        for (buffer, expected, actual) in [
            (BufferId::Input, plan.input_len, d.input.len()),
            (BufferId::Output, plan.output_len, d.output.len()),
        ] {
            if actual as u64 != expected {
                return Err(SimError::BufferLength {
                    rank: r,
                    buffer,
                    expected,
                    actual: actual as u64,
                });
            }
        }
        validate_plan(plan).map_err(|d| SimError::from_defect(r, d))?;
    }
    let total_sends = check_pair_counts(plans)?;

    let zst = std::mem::size_of::<T>() == 0;
    let mut bufs = Vec::with_capacity(n);
    for (r, (plan, d)) in plans.iter().zip(data).enumerate() {
        let mut scratch = Vec::new();
        // A zero-sized scratch is never touched: data movement is skipped.
        if !zst && plan.scratch_len > 0 {
            let too_large = || SimError::ScratchTooLarge {
                rank: r,
                len: plan.scratch_len,
            };
            let len = usize::try_from(plan.scratch_len).map_err(|_| too_large())?;
            scratch.try_reserve_exact(len).map_err(|_| too_large())?;
            scratch.resize(len, T::default());
        }
        bufs.push(Bufs {
            input: d.input,
            output: d.output,
            scratch,
        });
    }

    let words = n.div_ceil(64);
    let mut know = vec![0u64; n * words];
    for r in 0..n {
        know[r * words + r / 64] |= 1 << (r % 64);
    }
    let mut sim = Sim {
        plans,
        bufs,
        states: (0..n).map(|_| RankState::default()).collect(),
        ready: (0..n).rev().collect(),
        know,
        incoming: vec![0u64; n * words],
        words,
        zst,
        op,
        stats: SimStats {
            sent_messages: vec![0; n],
            received_messages: vec![0; n],
            sent_elements: vec![0; n],
            received_elements: vec![0; n],
            steps: plans.iter().map(|p| p.steps.len()).collect(),
            ..SimStats::default()
        },
    };
    while let Some(r) = sim.ready.pop() {
        sim.advance(r)?;
    }
    let stuck: Vec<StuckRank> = (0..n)
        .filter(|&r| !sim.states[r].done)
        .map(|r| sim.stuck(r))
        .collect();
    if !stuck.is_empty() {
        return Err(SimError::Deadlock { stuck });
    }
    if sim.stats.messages != total_sends {
        // Unreachable when every rank finished: each finished step had all
        // its sends matched. Kept as a guard on the simulator itself.
        return Err(SimError::Unmatched { pairs: Vec::new() });
    }
    let mut stats = sim.stats;
    stats.depends_on = (0..n)
        .map(|r| {
            (0..n)
                .map(|s| sim.know[r * words + s / 64] & (1 << (s % 64)) != 0)
                .collect()
        })
        .collect();
    let data = sim
        .bufs
        .into_iter()
        .map(|b| RankData {
            input: b.input,
            output: b.output,
        })
        .collect();
    Ok((data, stats))
}

/// Checks that every ordered pair posts as many sends as receives; returns
/// the total number of sends.
fn check_pair_counts(plans: &[Plan]) -> Result<u64, SimError> {
    let mut counts: HashMap<(usize, usize), (u64, u64)> = HashMap::new();
    let mut total = 0;
    for (r, plan) in plans.iter().enumerate() {
        for a in plan.actions() {
            match a {
                Action::Send { peer, .. } => {
                    counts.entry((r, *peer)).or_default().0 += 1;
                    total += 1;
                }
                Action::Recv { peer, .. } | Action::RecvReduce { peer, .. } => {
                    counts.entry((*peer, r)).or_default().1 += 1;
                }
                Action::Copy { .. } | Action::Reduce { .. } => {}
            }
        }
    }
    let mut pairs: Vec<UnmatchedPair> = counts
        .into_iter()
        .filter(|(_, (s, r))| s != r)
        .map(|((src, dst), (sends, recvs))| UnmatchedPair {
            src,
            dst,
            sends,
            recvs,
        })
        .collect();
    if pairs.is_empty() {
        Ok(total)
    } else {
        pairs.sort_by_key(|p| (p.src, p.dst));
        Err(SimError::Unmatched { pairs })
    }
}

/// One rank's three buffers.
struct Bufs<T> {
    input: Vec<T>,
    output: Vec<T>,
    scratch: Vec<T>,
}

impl<T> Bufs<T> {
    fn get(&self, buf: BufferId) -> &[T] {
        match buf {
            BufferId::Input => &self.input,
            BufferId::Output => &self.output,
            BufferId::Scratch => &self.scratch,
        }
    }

    /// A writable buffer; never Input (validation forbids writing it).
    fn get_mut(&mut self, buf: BufferId) -> &mut [T] {
        match buf {
            BufferId::Input => unreachable!("validated plans never write Input"),
            BufferId::Output => &mut self.output,
            BufferId::Scratch => &mut self.scratch,
        }
    }

    /// Two different buffers, the second writable.
    fn pair(&mut self, src: BufferId, dst: BufferId) -> (&[T], &mut [T]) {
        match (src, dst) {
            (BufferId::Input, BufferId::Output) => (&self.input, &mut self.output),
            (BufferId::Input, BufferId::Scratch) => (&self.input, &mut self.scratch),
            (BufferId::Output, BufferId::Scratch) => (&self.output, &mut self.scratch),
            (BufferId::Scratch, BufferId::Output) => (&self.scratch, &mut self.output),
            _ => unreachable!("validated plans never write Input"),
        }
    }
}

fn range(r: &Region) -> std::ops::Range<usize> {
    // In bounds of a buffer that exists (validated), so it fits in usize.
    r.offset as usize..(r.offset + r.len) as usize
}

fn reduce_into<T: Copy>(dst: &mut [T], src: &[T], op: &impl Fn(T, T) -> T) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = op(*d, *s);
    }
}

/// The pending communication of one rank toward one peer in one direction:
/// `entries[next..end]` of the rank's current step, in action order.
#[derive(Clone, Copy, Debug)]
struct Group {
    peer: usize,
    send: bool,
    next: usize,
    end: usize,
}

#[derive(Default)]
struct RankState {
    /// Entered at least one step (or finished).
    started: bool,
    /// Ran past its last step.
    done: bool,
    /// Current step.
    step: usize,
    /// Communication actions of the current step not yet matched.
    remaining: usize,
    /// Action indices of the current step's communication, grouped by
    /// (peer, direction) in `groups` order, each group in action order.
    entries: Vec<usize>,
    /// Sorted by (peer, send).
    groups: Vec<Group>,
    /// Scratch for building `entries`.
    keyed: Vec<(usize, bool, usize)>,
}

impl RankState {
    fn find(&self, peer: usize, send: bool) -> Option<usize> {
        self.groups
            .binary_search_by_key(&(peer, send), |g| (g.peer, g.send))
            .ok()
    }
}

struct Sim<'p, T, F> {
    plans: &'p [Plan],
    bufs: Vec<Bufs<T>>,
    states: Vec<RankState>,
    /// Ranks whose current step is complete (or that have not started).
    ready: Vec<usize>,
    /// Per rank, bitset of ranks it has heard from as of entering its current step.
    know: Vec<u64>,
    /// Per rank, what the receives of its current step brought.
    incoming: Vec<u64>,
    words: usize,
    zst: bool,
    op: F,
    stats: SimStats,
}

impl<T: Copy + Default, F: Fn(T, T) -> T> Sim<'_, T, F> {
    /// Moves `r` into its next step (running local actions and matching what
    /// can be matched), skipping steps with no communication.
    fn advance(&mut self, r: usize) -> Result<(), SimError> {
        let plan = &self.plans[r];
        loop {
            let st = &mut self.states[r];
            let next = if st.started { st.step + 1 } else { 0 };
            st.started = true;
            st.step = next;
            let w = self.words;
            for k in r * w..(r + 1) * w {
                self.know[k] |= std::mem::take(&mut self.incoming[k]);
            }
            let Some(step) = plan.steps.get(next) else {
                st.done = true;
                return Ok(());
            };
            if !self.zst {
                for a in &step.actions {
                    self.local(r, a);
                }
            }
            let st = &mut self.states[r];
            st.keyed.clear();
            for (i, a) in step.actions.iter().enumerate() {
                match a {
                    Action::Send { peer, .. } => st.keyed.push((*peer, true, i)),
                    Action::Recv { peer, .. } | Action::RecvReduce { peer, .. } => {
                        st.keyed.push((*peer, false, i))
                    }
                    Action::Copy { .. } | Action::Reduce { .. } => {}
                }
            }
            if st.keyed.is_empty() {
                continue;
            }
            st.keyed.sort_unstable();
            st.remaining = st.keyed.len();
            st.entries.clear();
            st.groups.clear();
            for (k, &(peer, send, i)) in st.keyed.iter().enumerate() {
                st.entries.push(i);
                match st.groups.last_mut() {
                    Some(g) if g.peer == peer && g.send == send => g.end = k + 1,
                    _ => st.groups.push(Group {
                        peer,
                        send,
                        next: k,
                        end: k + 1,
                    }),
                }
            }
            for gi in 0..self.states[r].groups.len() {
                let g = self.states[r].groups[gi];
                if g.send {
                    self.match_pair(r, g.peer)?;
                } else {
                    self.match_pair(g.peer, r)?;
                }
            }
            return Ok(());
        }
    }

    /// Runs one local action of rank `r` (communication actions are ignored).
    fn local(&mut self, r: usize, a: &Action) {
        let b = &mut self.bufs[r];
        match a {
            Action::Copy { src, dst } => {
                if src.buf == dst.buf {
                    b.get_mut(dst.buf)
                        .copy_within(range(src), dst.offset as usize);
                } else {
                    let (s, d) = b.pair(src.buf, dst.buf);
                    d[range(dst)].copy_from_slice(&s[range(src)]);
                }
            }
            Action::Reduce { src, dst } => {
                if src.buf == dst.buf {
                    let buf = b.get_mut(dst.buf);
                    let len = dst.len as usize;
                    // Non-overlapping (validated): split between them.
                    if src.offset < dst.offset {
                        let (lo, hi) = buf.split_at_mut(dst.offset as usize);
                        reduce_into(&mut hi[..len], &lo[range(src)], &self.op);
                    } else {
                        let (lo, hi) = buf.split_at_mut(src.offset as usize);
                        reduce_into(&mut lo[range(dst)], &hi[..len], &self.op);
                    }
                } else {
                    let (s, d) = b.pair(src.buf, dst.buf);
                    reduce_into(&mut d[range(dst)], &s[range(src)], &self.op);
                }
            }
            Action::Send { .. } | Action::Recv { .. } | Action::RecvReduce { .. } => {}
        }
    }

    /// Matches pending sends `a → b` with pending receives of `b` from `a`,
    /// front to front, while both sides have one in their current step.
    fn match_pair(&mut self, a: usize, b: usize) -> Result<(), SimError> {
        let (Some(ga), Some(gb)) = (self.states[a].find(b, true), self.states[b].find(a, false))
        else {
            return Ok(());
        };
        loop {
            let sa = &self.states[a];
            let sb = &self.states[b];
            let (g_send, g_recv) = (sa.groups[ga], sb.groups[gb]);
            if g_send.next == g_send.end || g_recv.next == g_recv.end {
                return Ok(());
            }
            let (send_step, recv_step) = (sa.step, sb.step);
            let send_idx = sa.entries[g_send.next];
            let recv_idx = sb.entries[g_recv.next];
            let send = self.plans[a].steps[send_step].actions[send_idx];
            let recv = self.plans[b].steps[recv_step].actions[recv_idx];
            let Action::Send { src, .. } = send else {
                unreachable!("send groups hold sends")
            };
            let (dst, reduce) = match recv {
                Action::Recv { dst, .. } => (dst, false),
                Action::RecvReduce { dst, .. } => (dst, true),
                _ => unreachable!("receive groups hold receives"),
            };
            if src.len != dst.len {
                return Err(SimError::LengthMismatch {
                    src: a,
                    dst: b,
                    send_step,
                    send_action: send_idx,
                    recv_step,
                    recv_action: recv_idx,
                    send_len: src.len,
                    recv_len: dst.len,
                });
            }
            if !self.zst && src.len > 0 {
                let (ba, bb) = two_mut(&mut self.bufs, a, b);
                let s = &ba.get(src.buf)[range(&src)];
                let d = &mut bb.get_mut(dst.buf)[range(&dst)];
                if reduce {
                    reduce_into(d, s, &self.op);
                } else {
                    d.copy_from_slice(s);
                }
            }
            let w = self.words;
            for k in 0..w {
                self.incoming[b * w + k] |= self.know[a * w + k];
            }
            let st = &mut self.stats;
            st.messages += 1;
            st.elements += src.len;
            st.sent_messages[a] += 1;
            st.received_messages[b] += 1;
            st.sent_elements[a] += src.len;
            st.received_elements[b] += src.len;
            for (rank, g) in [(a, ga), (b, gb)] {
                let s = &mut self.states[rank];
                s.groups[g].next += 1;
                s.remaining -= 1;
                if s.remaining == 0 {
                    self.ready.push(rank);
                }
            }
        }
    }

    fn stuck(&self, r: usize) -> StuckRank {
        let st = &self.states[r];
        let step = &self.plans[r].steps[st.step];
        let mut pending: Vec<(usize, Action)> = st
            .groups
            .iter()
            .flat_map(|g| st.entries[g.next..g.end].iter())
            .map(|&i| (i, step.actions[i]))
            .collect();
        pending.sort_by_key(|&(i, _)| i);
        StuckRank {
            rank: r,
            step: st.step,
            steps: self.plans[r].steps.len(),
            pending,
        }
    }
}

fn two_mut<X>(v: &mut [X], a: usize, b: usize) -> (&mut X, &mut X) {
    debug_assert_ne!(a, b);
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Collective, Step};
    use BufferId::*;

    fn plan(rank: usize, nranks: usize, lens: (u64, u64, u64), steps: Vec<Vec<Action>>) -> Plan {
        let mut p = Plan::new(Collective::AllReduce, Algorithm::Ring, rank, nranks);
        (p.input_len, p.output_len, p.scratch_len) = lens;
        p.steps = steps.into_iter().map(Step::new).collect();
        p
    }

    fn r(buf: BufferId, offset: u64, len: u64) -> Region {
        Region::new(buf, offset, len)
    }

    fn data(input: Vec<i64>, out_len: usize) -> RankData<i64> {
        RankData {
            input,
            output: vec![-1; out_len],
        }
    }

    #[test]
    fn two_rank_all_reduce_by_hand() {
        // Each rank copies its input to output, then both exchange and reduce
        // through scratch, then locally reduce scratch into output.
        let mk = |rank: usize| {
            let peer = 1 - rank;
            plan(
                rank,
                2,
                (3, 3, 3),
                vec![
                    vec![
                        Action::Copy {
                            src: r(Input, 0, 3),
                            dst: r(Output, 0, 3),
                        },
                        Action::Send {
                            peer,
                            src: r(Input, 0, 3),
                        },
                        Action::Recv {
                            peer,
                            dst: r(Scratch, 0, 3),
                        },
                    ],
                    vec![Action::Reduce {
                        src: r(Scratch, 0, 3),
                        dst: r(Output, 0, 3),
                    }],
                ],
            )
        };
        let plans = [mk(0), mk(1)];
        let (out, stats) = simulate_with_stats(
            &plans,
            vec![data(vec![1, 2, 3], 3), data(vec![10, 20, 30], 3)],
            |a, b| a + b,
        )
        .unwrap();
        assert_eq!(out[0].output, vec![11, 22, 33]);
        assert_eq!(out[1].output, vec![11, 22, 33]);
        assert_eq!(out[0].input, vec![1, 2, 3]);
        assert_eq!(stats.messages, 2);
        assert_eq!(stats.elements, 6);
        assert_eq!(stats.sent_elements, vec![3, 3]);
        assert_eq!(stats.depends_on, vec![vec![true, true], vec![true, true]]);
    }

    #[test]
    fn same_buffer_local_actions_and_fifo() {
        // Rank 0 sends two messages to rank 1 in one step; rank 1 receives
        // them in two steps, the second with RecvReduce.
        let p0 = plan(
            0,
            2,
            (0, 4, 0),
            vec![vec![
                Action::Send {
                    peer: 1,
                    src: r(Output, 0, 2),
                },
                Action::Send {
                    peer: 1,
                    src: r(Output, 2, 2),
                },
            ]],
        );
        let p1 = plan(
            1,
            2,
            (0, 6, 0),
            vec![
                vec![Action::Recv {
                    peer: 0,
                    dst: r(Output, 0, 2),
                }],
                vec![
                    Action::Copy {
                        src: r(Output, 0, 2),
                        dst: r(Output, 2, 2),
                    },
                    Action::RecvReduce {
                        peer: 0,
                        dst: r(Output, 2, 2),
                    },
                ],
                vec![Action::Reduce {
                    src: r(Output, 2, 2),
                    dst: r(Output, 4, 2),
                }],
                vec![Action::Reduce {
                    src: r(Output, 4, 2),
                    dst: r(Output, 0, 2),
                }],
            ],
        );
        let d = vec![
            RankData {
                input: vec![],
                output: vec![1, 2, 3, 4],
            },
            RankData {
                input: vec![],
                output: vec![0, 0, 0, 0, 100, 100],
            },
        ];
        let (out, stats) = simulate_with_stats(&[p0, p1], d, |a, b| a + b).unwrap();
        // [1,2] lands; copy → [1,2,1,2]; + [3,4] → [1,2,4,6]; → out[4..6] = 104,106;
        // out[0..2] += that → 105,108.
        assert_eq!(out[1].output, vec![105, 108, 4, 6, 104, 106]);
        assert_eq!(stats.depends_on, vec![vec![true, false], vec![true, true]]);
    }

    #[test]
    fn zero_sized_elements_skip_data() {
        let big = 3 * (1u64 << 31) + 7;
        let p0 = plan(
            0,
            2,
            (big, 0, big),
            vec![vec![
                Action::Copy {
                    src: r(Input, 0, big),
                    dst: r(Scratch, 0, big),
                },
                Action::Send {
                    peer: 1,
                    src: r(Scratch, 1, big - 1),
                },
            ]],
        );
        let p1 = plan(
            1,
            2,
            (0, big, 0),
            vec![vec![Action::RecvReduce {
                peer: 0,
                dst: r(Output, 0, big - 1),
            }]],
        );
        let mut d0 = RankData {
            input: Vec::new(),
            output: Vec::new(),
        };
        let mut d1 = RankData {
            input: Vec::new(),
            output: Vec::new(),
        };
        // Vec<()> never allocates; `resize` only sets the length (once optimised).
        d0.input.resize(big as usize, ());
        d1.output.resize(big as usize, ());
        let (_, stats) = simulate_with_stats(&[p0, p1], vec![d0, d1], |_, _| ()).unwrap();
        assert_eq!(stats.elements, big - 1);
    }
}
