//! The plan IR: what one rank does, step by step, over element ranges of named buffers.
//!
//! A [`Plan`] is data. The executor in `braid` runs it over a transport, the
//! [`crate::simulate`] function runs every rank's plan in memory, and the cost
//! model prices it. All offsets and lengths are in *elements* (never bytes) and
//! are 64-bit so that buffers past 2^31 elements work.
//!
//! # Step semantics
//! A step runs in two phases:
//! 1. its local actions ([`Action::Copy`], [`Action::Reduce`]) in the order listed;
//! 2. its communication actions ([`Action::Send`], [`Action::Recv`],
//!    [`Action::RecvReduce`]) all at once (full duplex). Messages between one
//!    ordered pair of ranks are matched in order (FIFO per direction).
//!
//! A step is over when every send has been taken by its receiver and every
//! receive has landed. Within one step, no receive destination may overlap
//! another receive destination or a send source (the data would race).

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::{Algorithm, Collective};

/// The buffers a plan names. Their lengths are given by [`Plan::buffer_len`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BufferId {
    /// The caller's send buffer (read only).
    Input,
    /// The caller's receive buffer (for broadcast: the one in-place buffer).
    Output,
    /// Temporary space the executor allocates, [`Plan::scratch_len`] elements.
    Scratch,
}

/// A contiguous element range of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Region {
    /// Which buffer.
    pub buf: BufferId,
    /// First element.
    pub offset: u64,
    /// Number of elements.
    pub len: u64,
}

impl Region {
    /// `len` elements of `buf` starting at `offset`.
    pub const fn new(buf: BufferId, offset: u64, len: u64) -> Self {
        Region { buf, offset, len }
    }
    /// One past the last element.
    pub const fn end(&self) -> u64 {
        self.offset + self.len
    }
    /// Whether the two regions share at least one element.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.buf == other.buf
            && self.len > 0
            && other.len > 0
            && self.offset < other.end()
            && other.offset < self.end()
    }
    /// The sub-range `[offset, offset + len)` of this region.
    pub fn slice(&self, offset: u64, len: u64) -> Region {
        debug_assert!(offset + len <= self.len);
        Region::new(self.buf, self.offset + offset, len)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}[{}..{}]", self.buf, self.offset, self.end())
    }
}

/// `len` elements of the send buffer from `offset` (generator shorthand).
pub(crate) fn input(offset: u64, len: u64) -> Region {
    Region::new(BufferId::Input, offset, len)
}

/// `len` elements of the receive buffer from `offset` (generator shorthand).
pub(crate) fn output(offset: u64, len: u64) -> Region {
    Region::new(BufferId::Output, offset, len)
}

/// `len` elements of scratch from `offset` (generator shorthand).
pub(crate) fn scratch(offset: u64, len: u64) -> Region {
    Region::new(BufferId::Scratch, offset, len)
}

/// The empty region zero-byte (synchronising) messages name.
pub(crate) const EMPTY: Region = Region::new(BufferId::Output, 0, 0);

/// One thing a rank does in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Send the elements of `src` to `peer`.
    Send { peer: usize, src: Region },
    /// Receive `dst.len` elements from `peer` into `dst`.
    Recv { peer: usize, dst: Region },
    /// Receive `dst.len` elements from `peer` and fold them into `dst` with the
    /// collective's reduction op (`dst[i] = op(dst[i], incoming[i])`).
    RecvReduce { peer: usize, dst: Region },
    /// Copy `src` to `dst` (same length, no overlap).
    Copy { src: Region, dst: Region },
    /// Fold `src` into `dst` with the reduction op (same length, no overlap).
    Reduce { src: Region, dst: Region },
}

impl Action {
    /// Whether this action moves data between ranks.
    pub fn is_communication(&self) -> bool {
        matches!(
            self,
            Action::Send { .. } | Action::Recv { .. } | Action::RecvReduce { .. }
        )
    }
    /// Elements the action moves or touches.
    pub fn len(&self) -> u64 {
        match self {
            Action::Send { src, .. } => src.len,
            Action::Recv { dst, .. } | Action::RecvReduce { dst, .. } => dst.len,
            Action::Copy { dst, .. } | Action::Reduce { dst, .. } => dst.len,
        }
    }
    /// Whether the action touches no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A group of actions: local ones first, then all communication at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The actions, in order.
    pub actions: Vec<Action>,
}

impl Step {
    /// A step with these actions.
    pub fn new(actions: Vec<Action>) -> Self {
        Step { actions }
    }
}

/// Everything one rank does for one collective call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The collective this plan implements.
    pub collective: Collective,
    /// The algorithm that generated it.
    pub algorithm: Algorithm,
    /// This rank.
    pub rank: usize,
    /// Ranks in the group.
    pub nranks: usize,
    /// Elements of the caller's send buffer this plan expects.
    pub input_len: u64,
    /// Elements of the caller's receive buffer this plan expects.
    pub output_len: u64,
    /// Elements of scratch space the executor must provide.
    pub scratch_len: u64,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// An empty plan (no steps yet) for `rank` of `nranks`.
    pub fn new(collective: Collective, algorithm: Algorithm, rank: usize, nranks: usize) -> Self {
        Plan {
            collective,
            algorithm,
            rank,
            nranks,
            input_len: 0,
            output_len: 0,
            scratch_len: 0,
            steps: Vec::new(),
        }
    }

    /// The length in elements of `buf` for this plan.
    pub fn buffer_len(&self, buf: BufferId) -> u64 {
        match buf {
            BufferId::Input => self.input_len,
            BufferId::Output => self.output_len,
            BufferId::Scratch => self.scratch_len,
        }
    }

    /// Appends a step, dropping actions that move no element and skipping the
    /// step if nothing is left. (Barrier plans use [`Plan::push_step_keep_empty`].)
    pub fn push_step(&mut self, actions: Vec<Action>) {
        let actions: Vec<Action> = actions.into_iter().filter(|a| !a.is_empty()).collect();
        if !actions.is_empty() {
            self.steps.push(Step::new(actions));
        }
    }

    /// Appends a step keeping zero-length messages: they still synchronise.
    pub fn push_step_keep_empty(&mut self, actions: Vec<Action>) {
        if !actions.is_empty() {
            self.steps.push(Step::new(actions));
        }
    }

    /// All actions of all steps, in order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.steps.iter().flat_map(|s| s.actions.iter())
    }

    /// Number of messages this rank sends.
    pub fn messages_sent(&self) -> usize {
        self.actions()
            .filter(|a| matches!(a, Action::Send { .. }))
            .count()
    }
}
