//! Tree algorithms: the binomial tree ([`Algorithm::Tree`]) and the double
//! binary tree all-reduce ([`Algorithm::DoubleBinaryTree`]).
//!
//! Costs, with α the per-message latency, β = 1/B the per-element transfer
//! time, γ the per-element reduce time, S the element count, N the rank count,
//! L = ⌈log2 N⌉ (the tree height; less when N is not a power of two) and C
//! the pipeline chunk (k = ⌈S/C⌉ chunks, at most [`MAX_CHUNKS`]):
//!
//! * **binomial broadcast / reduce**, unpipelined (k = 1): `L(α + S·β)`
//!   (`+ L·S·γ` for reduce). Ranks are relabelled relative to the root; the
//!   parent of relative rank `r` is `r` with its lowest set bit cleared, so
//!   the root's children head subtrees of 1, 2, 4, … ranks.
//! * **pipelined** in chunks: `(L + k − 1)(α + C·β)` (`+ C·γ` per step for
//!   reduce). A rank forwards chunk c while it receives chunk c + 1; the best
//!   chunk is `C ≈ √(S·α / ((L − 1)β))`, and for large S the cost tends to
//!   `S·β` per link (a rank with several children feeds them concurrently,
//!   one chunk each, so a per-NIC model charges up to L times that).
//! * **all-reduce** = reduce to rank 0 + broadcast from rank 0, overlapped
//!   chunk-wise (rank 0 starts broadcasting chunk c as soon as it is reduced):
//!   `(2L + k − 1)(α + C·β + C·γ)`. Wins over the ring for small and
//!   medium S (2Lα instead of 2(N−1)α latency).
//! * **scatter / gather** (uneven blocks, one message per tree edge carrying
//!   a whole subtree): `L·α + (N−1)/N·S·β` for even blocks (S = the whole
//!   buffer); interior ranks stage their subtree in scratch.
//! * **barrier**: zero-byte gather to rank 0 then release, `2L·α`.
//! * **double binary tree all-reduce** (NCCL's shape): two in-order binary
//!   trees of height ≈ log2 N; in the first the odd ranks are leaves, the
//!   second is the first mirrored (even N) or shifted by one (odd N), so with
//!   even N every rank is a leaf in one tree and interior in the other. Each
//!   tree reduces then broadcasts half the vector, pipelined:
//!   `≈ (2⌈log2 N⌉ + S/2C − 1)(α + C·β + C·γ)`: it keeps the tree's
//!   logarithmic latency while every rank sends and receives only about S
//!   elements in total, so it beats the binomial tree for large S and the
//!   ring for large N.
//!
//! # Schedules
//! Every action is labelled with a global time; a send and its receive carry
//! the same label, and a rank's steps are its labels in increasing order.
//! Such a plan cannot deadlock even with zero buffering: the ranks at the
//! smallest unfinished label wait only on peers at that same label. With
//! `s(v)` the height of v (leaves 0, a parent one more than its tallest
//! child) a rank sends chunk c up at label `c + s(v)`, so a parent receives
//! its children's copies of chunk c at distinct labels when their heights
//! differ (in a binomial tree all but the last, truncated, subtree of a
//! rank); a child of the same height as an earlier one (binary tree; the
//! truncated last subtree) lands in a one-chunk scratch slot that is folded
//! in at the next label. The broadcast mirrors it: v receives chunk c at
//! `c + s(root) − 1 − s(v)`, so the root feeds its tallest subtree first.
//! Scatter and gather are the one-chunk case of the same schedules.

use std::collections::BTreeMap;

use crate::{
    block_offsets, Action, Algorithm, Collective, Plan, PlanError, PlanOptions, Region, Shape,
};

/// Pipeline chunk (elements) when [`PlanOptions::chunk_elems`] is 0.
pub const DEFAULT_CHUNK_ELEMS: u64 = 1 << 16;

/// Most chunks one pipelined data segment is cut into; a larger call gets a
/// proportionally larger chunk (keeps plans of huge calls small).
pub const MAX_CHUNKS: u64 = 1 << 16;

/// The chunk used to pipeline `len` elements: the requested one (default
/// [`DEFAULT_CHUNK_ELEMS`]) raised so there are at most [`MAX_CHUNKS`] chunks.
fn chunk_for(len: u64, options: &PlanOptions) -> u64 {
    let asked = if options.chunk_elems == 0 {
        DEFAULT_CHUNK_ELEMS
    } else {
        options.chunk_elems
    };
    asked.max(len.div_ceil(MAX_CHUNKS)).max(1)
}

use crate::plan::{input, output, scratch, EMPTY};

fn unsupported(shape: &Shape, algorithm: Algorithm, reason: &str) -> PlanError {
    PlanError::Unsupported {
        algorithm,
        collective: shape.collective,
        reason: reason.into(),
    }
}

/// One rank's actions keyed by global time label (see the module docs).
#[derive(Default)]
struct Sched {
    at: BTreeMap<u64, (Vec<Action>, Vec<Action>)>,
}

impl Sched {
    fn local(&mut self, t: u64, a: Action) {
        if !a.is_empty() {
            self.at.entry(t).or_default().0.push(a);
        }
    }

    fn comm(&mut self, t: u64, a: Action, keep_empty: bool) {
        if keep_empty || !a.is_empty() {
            self.at.entry(t).or_default().1.push(a);
        }
    }

    /// Appends one step per label: local actions first, then communication.
    fn emit(self, plan: &mut Plan, keep_empty: bool) {
        for (_, (mut actions, comms)) in self.at {
            actions.extend(comms);
            if keep_empty {
                plan.push_step_keep_empty(actions);
            } else {
                plan.push_step(actions);
            }
        }
    }
}

/// A rooted tree over absolute ranks with every node's height `s`.
struct Tree {
    root: usize,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    s: Vec<u64>,
}

impl Tree {
    fn new(root: usize, children: Vec<Vec<usize>>) -> Tree {
        let n = children.len();
        let mut parent = vec![None; n];
        for (v, kids) in children.iter().enumerate() {
            for &u in kids {
                debug_assert!(parent[u].is_none() && u != root, "rank {u} has two parents");
                parent[u] = Some(v);
            }
        }
        // Pre-order from the root; reversed, every child precedes its parent.
        let mut order = Vec::with_capacity(n);
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            order.push(v);
            stack.extend(children[v].iter().copied());
        }
        debug_assert_eq!(order.len(), n, "tree does not span every rank");
        let mut s = vec![0u64; n];
        for &v in order.iter().rev() {
            s[v] = children[v].iter().map(|&u| s[u] + 1).max().unwrap_or(0);
        }
        Tree {
            root,
            parent,
            children,
            s,
        }
    }

    /// Binomial tree over ranks relabelled relative to `root`: relative rank
    /// `r`'s children are `r + 2^j` for every `2^j` below `r`'s lowest set
    /// bit (every `2^j < n` for the root), in increasing j (= their height).
    fn binomial(n: usize, root: usize) -> Tree {
        let mut children = vec![Vec::new(); n];
        for rel in 0..n {
            let v = (rel + root) % n;
            let limit = if rel == 0 {
                usize::MAX
            } else {
                rel & rel.wrapping_neg()
            };
            let mut bit = 1usize;
            while bit < limit && bit < n - rel {
                children[v].push((rel + bit + root) % n);
                bit <<= 1;
            }
        }
        Tree::new(root, children)
    }

    /// The receive offset of the broadcast mirror schedule (`v` ≠ root).
    fn down(&self, v: usize) -> u64 {
        self.s[self.root] - 1 - self.s[v]
    }

    /// For each child of `v`: `None` if it is the first child of its height
    /// (reduced straight into the accumulator), else the index of the
    /// scratch slot its chunks land in.
    fn slots(&self, v: usize) -> Vec<Option<usize>> {
        let kids = &self.children[v];
        kids.iter()
            .enumerate()
            .map(|(i, &u)| {
                let same = kids[..i]
                    .iter()
                    .filter(|&&w| self.s[w] == self.s[u])
                    .count();
                same.checked_sub(1)
            })
            .collect()
    }
}

/// Children of position `p` in the in-order binary tree over positions
/// `0..n` whose odd positions are leaves: position 0 is the root with one
/// child (the largest power of two below n); an even `p` with lowest set bit
/// `b` has children `p − b/2` and the first of `p + b/2, p + b/4, …, p + 1`
/// that exists.
fn binary_children(n: usize, p: usize) -> Vec<usize> {
    if p == 0 {
        return if n > 1 {
            vec![1 << (usize::BITS - 1 - (n - 1).leading_zeros())]
        } else {
            Vec::new()
        };
    }
    let b = p & p.wrapping_neg();
    if b == 1 {
        return Vec::new();
    }
    let mut kids = vec![p - b / 2];
    let mut h = b / 2;
    while h >= 1 {
        if h < n - p {
            kids.push(p + h);
            break;
        }
        h /= 2;
    }
    kids
}

/// The two trees of the double binary tree: the in-order binary tree on
/// ranks, and the same tree with position p held by rank `n − 1 − p` (even
/// n, mirror) or `p + 1 mod n` (odd n, shift).
fn double_trees(n: usize) -> [Tree; 2] {
    let first = Tree::new(0, (0..n).map(|p| binary_children(n, p)).collect());
    let rank_of = |p: usize| if n % 2 == 0 { n - 1 - p } else { (p + 1) % n };
    let mut children = vec![Vec::new(); n];
    for p in 0..n {
        children[rank_of(p)] = binary_children(n, p).into_iter().map(rank_of).collect();
    }
    [first, Tree::new(rank_of(0), children)]
}

/// A contiguous segment `[off, off + len)` of the vector cut into chunks.
#[derive(Clone, Copy)]
struct Grid {
    off: u64,
    len: u64,
    chunk: u64,
}

impl Grid {
    fn new(off: u64, len: u64, options: &PlanOptions) -> Grid {
        Grid {
            off,
            len,
            chunk: chunk_for(len, options),
        }
    }

    fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// Offset (in the vector) and length of chunk `c`.
    fn at(&self, c: u64) -> (u64, u64) {
        let o = c * self.chunk;
        (self.off + o, self.chunk.min(self.len - o))
    }

    /// The longest chunk.
    fn slot_len(&self) -> u64 {
        self.chunk.min(self.len)
    }
}

/// Where a rank accumulates the chunks it reduces.
#[derive(Clone, Copy)]
enum Acc {
    /// In place, at the chunk's own offset of the output.
    Output,
    /// A ring of `slots` chunk-sized slots in scratch from `base`.
    Window {
        base: u64,
        slots: u64,
        slot_len: u64,
    },
}

impl Acc {
    fn region(&self, c: u64, off: u64, len: u64) -> Region {
        match *self {
            Acc::Output => output(off, len),
            Acc::Window {
                base,
                slots,
                slot_len,
            } => scratch(base + (c % slots) * slot_len, len),
        }
    }
}

/// Pipelined reduce of `grid` up `tree` (labels from `t0`): rank `v` copies
/// its input chunk into `acc`, folds in its children's chunks and sends the
/// result to its parent; a leaf sends straight from its input. Scratch slots
/// for equal-height children start at `slot_base`.
fn reduce_up(
    sch: &mut Sched,
    tree: &Tree,
    v: usize,
    grid: Grid,
    acc: Acc,
    t0: u64,
    slot_base: u64,
) {
    let kids = &tree.children[v];
    let slots = tree.slots(v);
    let first = kids.iter().map(|&u| tree.s[u]).min();
    let slot_len = grid.slot_len();
    for c in 0..grid.chunks() {
        let (off, len) = grid.at(c);
        let Some(first) = first else {
            match tree.parent[v] {
                Some(p) => sch.comm(
                    t0 + c + tree.s[v],
                    Action::Send {
                        peer: p,
                        src: input(off, len),
                    },
                    false,
                ),
                None => sch.local(
                    t0 + c,
                    Action::Copy {
                        src: input(off, len),
                        dst: acc.region(c, off, len),
                    },
                ),
            }
            continue;
        };
        let a = acc.region(c, off, len);
        sch.local(
            t0 + c + first,
            Action::Copy {
                src: input(off, len),
                dst: a,
            },
        );
        for (&u, slot) in kids.iter().zip(&slots) {
            let t = t0 + c + tree.s[u];
            match slot {
                None => sch.comm(t, Action::RecvReduce { peer: u, dst: a }, false),
                Some(k) => {
                    let r = scratch(slot_base + *k as u64 * slot_len, len);
                    sch.comm(t, Action::Recv { peer: u, dst: r }, false);
                    sch.local(t + 1, Action::Reduce { src: r, dst: a });
                }
            }
        }
        if let Some(p) = tree.parent[v] {
            sch.comm(t0 + c + tree.s[v], Action::Send { peer: p, src: a }, false);
        }
    }
}

/// Pipelined broadcast of the output segment `grid` down `tree` (labels
/// from `tb`).
fn bcast_down(sch: &mut Sched, tree: &Tree, v: usize, grid: Grid, tb: u64) {
    for c in 0..grid.chunks() {
        let (off, len) = grid.at(c);
        let r = output(off, len);
        if let Some(p) = tree.parent[v] {
            sch.comm(
                tb + c + tree.down(v),
                Action::Recv { peer: p, dst: r },
                false,
            );
        }
        for &u in &tree.children[v] {
            sch.comm(
                tb + c + tree.down(u),
                Action::Send { peer: u, src: r },
                false,
            );
        }
    }
}

/// Scratch slots `v` needs for equal-height children.
fn extra_slots(tree: &Tree, v: usize) -> u64 {
    tree.slots(v)
        .iter()
        .flatten()
        .map(|&k| k as u64 + 1)
        .max()
        .unwrap_or(0)
}

/// [`Algorithm::Tree`]: binomial-tree broadcast, reduce, all-reduce,
/// scatter, gather and barrier.
pub(crate) fn plan(shape: &Shape, rank: usize, options: &PlanOptions) -> Result<Plan, PlanError> {
    let n = shape.nranks;
    let mut plan = Plan::new(shape.collective, Algorithm::Tree, rank, n);
    let mut sch = Sched::default();
    let mut keep_empty = false;
    match shape.collective {
        Collective::Broadcast => {
            let tree = Tree::binomial(n, shape.root);
            let grid = Grid::new(0, shape.single(), options);
            bcast_down(&mut sch, &tree, rank, grid, 0);
        }
        Collective::Reduce => {
            let tree = Tree::binomial(n, shape.root);
            let grid = Grid::new(0, shape.single(), options);
            let acc = if rank == shape.root || tree.children[rank].is_empty() {
                Acc::Output
            } else {
                let slots = (tree.s[rank] + 1).min(grid.chunks()).max(1);
                plan.scratch_len = slots * grid.slot_len();
                Acc::Window {
                    base: 0,
                    slots,
                    slot_len: grid.slot_len(),
                }
            };
            let slot_base = plan.scratch_len;
            plan.scratch_len += extra_slots(&tree, rank) * grid.slot_len();
            reduce_up(&mut sch, &tree, rank, grid, acc, 0, slot_base);
        }
        Collective::AllReduce => {
            let tree = Tree::binomial(n, 0);
            let grid = Grid::new(0, shape.single(), options);
            plan.scratch_len = extra_slots(&tree, rank) * grid.slot_len();
            reduce_up(&mut sch, &tree, rank, grid, Acc::Output, 0, 0);
            bcast_down(&mut sch, &tree, rank, grid, tree.s[tree.root]);
        }
        Collective::Scatter => scatter(&mut sch, &mut plan, shape, rank),
        Collective::Gather => gather(&mut sch, &mut plan, shape, rank),
        Collective::Barrier => {
            keep_empty = true;
            let tree = Tree::binomial(n, 0);
            if let Some(p) = tree.parent[rank] {
                let down = tree.s[tree.root] + tree.down(rank);
                sch.comm(tree.s[rank], Action::Send { peer: p, src: EMPTY }, true);
                sch.comm(down, Action::Recv { peer: p, dst: EMPTY }, true);
            }
            for &u in &tree.children[rank] {
                let down = tree.s[tree.root] + tree.down(u);
                sch.comm(tree.s[u], Action::Recv { peer: u, dst: EMPTY }, true);
                sch.comm(down, Action::Send { peer: u, src: EMPTY }, true);
            }
        }
        _ => {
            return Err(unsupported(
                shape,
                Algorithm::Tree,
                "the binomial tree implements broadcast, reduce, all_reduce, scatter, gather and barrier",
            ))
        }
    }
    sch.emit(&mut plan, keep_empty);
    Ok(plan)
}

/// Block layout of a rooted scatter/gather on the binomial tree: blocks in
/// relative-rank order, subtree ranges, and where a relative range lies in
/// the root's absolute-order buffer.
struct Layout {
    n: usize,
    root: usize,
    /// Absolute-order block offsets (`n + 1` entries).
    off: Vec<u64>,
    /// Relative-order block offsets (`n + 1` entries).
    roff: Vec<u64>,
}

impl Layout {
    fn new(shape: &Shape) -> Layout {
        let (n, root) = (shape.nranks, shape.root);
        let blocks = shape.blocks();
        let rel_blocks: Vec<u64> = (0..n).map(|r| blocks[(r + root) % n]).collect();
        Layout {
            n,
            root,
            off: block_offsets(blocks),
            roff: block_offsets(&rel_blocks),
        }
    }

    fn rel(&self, v: usize) -> usize {
        (v + self.n - self.root) % self.n
    }

    /// Relative range `[start, end)` of `v`'s subtree.
    fn subtree(&self, v: usize) -> (usize, usize) {
        let r = self.rel(v);
        if r == 0 {
            (0, self.n)
        } else {
            (r, (r + (r & r.wrapping_neg())).min(self.n))
        }
    }

    /// Elements of the relative range.
    fn len(&self, (a, b): (usize, usize)) -> u64 {
        self.roff[b] - self.roff[a]
    }

    /// Where the relative range `[a, b)` sits in the root's absolute-order
    /// buffer: one piece, or two when it wraps past rank n − 1 (the part up
    /// to the end, then the part from offset 0).
    fn pieces(&self, (a, b): (usize, usize)) -> Result<u64, (u64, u64)> {
        let (lo, hi) = (a + self.root, b + self.root);
        if hi <= self.n {
            Ok(self.off[lo])
        } else if lo >= self.n {
            Ok(self.off[lo - self.n])
        } else {
            let total = self.off[self.n];
            Err((self.off[lo], total - self.off[lo]))
        }
    }
}

/// Binomial scatter: every edge carries its child's whole subtree once; the
/// root sends the largest subtree first (label `down(u)`).
fn scatter(sch: &mut Sched, plan: &mut Plan, shape: &Shape, rank: usize) {
    let tree = Tree::binomial(shape.nranks, shape.root);
    let lay = Layout::new(shape);
    let own = shape.blocks()[rank];
    if rank == shape.root {
        sch.local(
            0,
            Action::Copy {
                src: input(lay.off[rank], own),
                dst: output(0, own),
            },
        );
        for &u in &tree.children[rank] {
            let range = lay.subtree(u);
            let len = lay.len(range);
            let src = match lay.pieces(range) {
                Ok(at) => input(at, len),
                Err((at, first)) => {
                    let tmp = scratch(plan.scratch_len, len);
                    plan.scratch_len += len;
                    sch.local(
                        0,
                        Action::Copy {
                            src: input(at, first),
                            dst: tmp.slice(0, first),
                        },
                    );
                    sch.local(
                        0,
                        Action::Copy {
                            src: input(0, len - first),
                            dst: tmp.slice(first, len - first),
                        },
                    );
                    tmp
                }
            };
            sch.comm(tree.down(u), Action::Send { peer: u, src }, false);
        }
        return;
    }
    let parent = tree.parent[rank].expect("non-root has a parent");
    let t = tree.down(rank);
    if tree.children[rank].is_empty() {
        sch.comm(
            t,
            Action::Recv {
                peer: parent,
                dst: output(0, own),
            },
            false,
        );
        return;
    }
    let mine = lay.subtree(rank);
    let stage = scratch(0, lay.len(mine));
    plan.scratch_len = stage.len;
    sch.comm(
        t,
        Action::Recv {
            peer: parent,
            dst: stage,
        },
        false,
    );
    sch.local(
        t + 1,
        Action::Copy {
            src: stage.slice(0, own),
            dst: output(0, own),
        },
    );
    for &u in &tree.children[rank] {
        let range = lay.subtree(u);
        let src = stage.slice(lay.roff[range.0] - lay.roff[mine.0], lay.len(range));
        sch.comm(tree.down(u), Action::Send { peer: u, src }, false);
    }
}

/// Binomial gather: the mirror of [`scatter`]; child `u` sends its subtree
/// at label `s(u)`.
fn gather(sch: &mut Sched, plan: &mut Plan, shape: &Shape, rank: usize) {
    let tree = Tree::binomial(shape.nranks, shape.root);
    let lay = Layout::new(shape);
    let own = shape.blocks()[rank];
    if rank == shape.root {
        sch.local(
            0,
            Action::Copy {
                src: input(0, own),
                dst: output(lay.off[rank], own),
            },
        );
        for &u in &tree.children[rank] {
            let range = lay.subtree(u);
            let len = lay.len(range);
            let t = tree.s[u];
            match lay.pieces(range) {
                Ok(at) => sch.comm(
                    t,
                    Action::Recv {
                        peer: u,
                        dst: output(at, len),
                    },
                    false,
                ),
                Err((at, first)) => {
                    let tmp = scratch(plan.scratch_len, len);
                    plan.scratch_len += len;
                    sch.comm(t, Action::Recv { peer: u, dst: tmp }, false);
                    sch.local(
                        t + 1,
                        Action::Copy {
                            src: tmp.slice(0, first),
                            dst: output(at, first),
                        },
                    );
                    sch.local(
                        t + 1,
                        Action::Copy {
                            src: tmp.slice(first, len - first),
                            dst: output(0, len - first),
                        },
                    );
                }
            }
        }
        return;
    }
    let parent = tree.parent[rank].expect("non-root has a parent");
    let t = tree.s[rank];
    if tree.children[rank].is_empty() {
        sch.comm(
            t,
            Action::Send {
                peer: parent,
                src: input(0, own),
            },
            false,
        );
        return;
    }
    let mine = lay.subtree(rank);
    let stage = scratch(0, lay.len(mine));
    plan.scratch_len = stage.len;
    sch.local(
        0,
        Action::Copy {
            src: input(0, own),
            dst: stage.slice(0, own),
        },
    );
    for &u in &tree.children[rank] {
        let range = lay.subtree(u);
        let dst = stage.slice(lay.roff[range.0] - lay.roff[mine.0], lay.len(range));
        sch.comm(tree.s[u], Action::Recv { peer: u, dst }, false);
    }
    sch.comm(
        t,
        Action::Send {
            peer: parent,
            src: stage,
        },
        false,
    );
}

/// [`Algorithm::DoubleBinaryTree`]: all-reduce over two complementary binary
/// trees, the first half of the vector on one and the second on the other,
/// each a pipelined reduce to its root overlapped with the broadcast back.
pub(crate) fn double_binary_plan(
    shape: &Shape,
    rank: usize,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    if shape.collective != Collective::AllReduce {
        return Err(unsupported(
            shape,
            Algorithm::DoubleBinaryTree,
            "the double binary tree implements all_reduce only; use tree for other collectives",
        ));
    }
    let n = shape.nranks;
    let count = shape.single();
    let mut plan = Plan::new(shape.collective, Algorithm::DoubleBinaryTree, rank, n);
    let half = count.div_ceil(2);
    let grids = [
        Grid::new(0, half, options),
        Grid::new(half, count - half, options),
    ];
    let mut sch = Sched::default();
    for (tree, grid) in double_trees(n).iter().zip(grids) {
        let slot_base = plan.scratch_len;
        plan.scratch_len += extra_slots(tree, rank) * grid.slot_len();
        reduce_up(&mut sch, tree, rank, grid, Acc::Output, 0, slot_base);
        bcast_down(&mut sch, tree, rank, grid, tree.s[tree.root]);
    }
    sch.emit(&mut plan, false);
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An n×n all-to-all count matrix with zeros mixed in (shared by the
    /// star and pairwise tests).
    pub(crate) fn matrix(n: usize, count: u64, seed: u64) -> Vec<u64> {
        (0..(n * n) as u64)
            .map(|k| (k * 2_654_435_761 + seed * 97 + count) % (count + 1))
            .map(|v| if (v + seed) % 5 == 0 { 0 } else { v })
            .collect()
    }
    use crate::{buffer_lengths, generate, sim::simulate_with_stats, Counts, RankData};

    /// A value every rank's element can hold so that sums of 17 stay exact.
    fn value(r: usize, i: u64) -> i64 {
        ((r as i64 * 7919 + i as i64 * 104_729) % 1_000_003) - 500_000
    }

    fn inputs(r: usize, len: u64) -> Vec<i64> {
        (0..len).map(|i| value(r, i)).collect()
    }

    /// Generates every rank's plan, simulates them with exactly-summable
    /// integers and compares with a sequential reference.
    pub(crate) fn check(alg: Algorithm, shape: &Shape, options: &PlanOptions) {
        let n = shape.nranks;
        let ctx = format!("{alg} {shape:?} {options:?}");
        let plans: Vec<Plan> = (0..n)
            .map(|r| generate(alg, shape, r, options).unwrap_or_else(|e| panic!("{ctx}: {e}")))
            .collect();
        let lens: Vec<(u64, u64)> = (0..n).map(|r| buffer_lengths(shape, r)).collect();
        let data: Vec<RankData<i64>> = (0..n)
            .map(|r| {
                let (il, ol) = lens[r];
                let output = if shape.collective == Collective::Broadcast && r == shape.root {
                    inputs(r, ol)
                } else {
                    vec![-7; ol as usize]
                };
                RankData {
                    input: inputs(r, il),
                    output,
                }
            })
            .collect();
        let ins: Vec<Vec<i64>> = data.iter().map(|d| d.input.clone()).collect();
        let (out, stats) = simulate_with_stats(&plans, data, |a, b| a + b)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let sum = |len: u64| -> Vec<i64> {
            (0..len as usize)
                .map(|i| ins.iter().map(|v| v[i]).sum())
                .collect()
        };
        let blocks = shape.blocks();
        let off = block_offsets(blocks);
        let block = |v: &[i64], r: usize| v[off[r] as usize..off[r + 1] as usize].to_vec();
        for (r, d) in out.iter().enumerate() {
            let want: Vec<i64> = match shape.collective {
                Collective::Broadcast => inputs(shape.root, shape.single()),
                Collective::Reduce if r == shape.root => sum(shape.single()),
                Collective::Reduce => Vec::new(),
                Collective::AllReduce => sum(shape.single()),
                Collective::Scatter => block(&ins[shape.root], r),
                Collective::Gather if r == shape.root => ins.concat(),
                Collective::Gather => Vec::new(),
                Collective::AllGather => ins.concat(),
                Collective::ReduceScatter => block(&sum(off[n]), r),
                Collective::AllToAll => (0..n)
                    .flat_map(|i| {
                        let from: u64 = (0..r).map(|j| shape.matrix(i, j)).sum();
                        ins[i][from as usize..(from + shape.matrix(i, r)) as usize].to_vec()
                    })
                    .collect(),
                Collective::Barrier => Vec::new(),
            };
            assert_eq!(d.output, want, "{ctx}: rank {r} output");
        }
        if shape.collective == Collective::Barrier {
            for r in 0..n {
                assert!(
                    stats.depends_on[r].iter().all(|&b| b),
                    "{ctx}: rank {r} may leave before every rank entered"
                );
            }
        }
    }

    pub(crate) const COUNTS: [u64; 9] = [0, 1, 2, 3, 5, 7, 13, 100, 1009];

    pub(crate) fn chunk_options() -> [PlanOptions; 3] {
        [
            PlanOptions { chunk_elems: 1 },
            PlanOptions { chunk_elems: 3 },
            PlanOptions::default(),
        ]
    }

    /// Uneven block patterns over n ranks built from a count: zeros,
    /// counts below n, one big block, ...
    pub(crate) fn block_patterns(n: usize, count: u64) -> Vec<Vec<u64>> {
        let mut pats = vec![crate::even_blocks(count, n)];
        pats.push((0..n as u64).map(|r| (r * 7 + count) % 5).collect());
        let mut one = vec![0; n];
        one[n / 2] = count;
        pats.push(one);
        pats.push(
            (0..n as u64)
                .map(|r| if r % 2 == 0 { count % 4 } else { 0 })
                .collect(),
        );
        pats
    }

    #[test]
    fn binomial_tree_shape() {
        for n in 1..=40 {
            for root in 0..n {
                let t = Tree::binomial(n, root);
                assert_eq!(t.root, root);
                let l = u64::from(n.next_power_of_two().trailing_zeros());
                assert!(t.s[root] <= l, "n {n}");
                if n.is_power_of_two() {
                    assert_eq!(t.s[root], l, "n {n}");
                }
                for v in 0..n {
                    assert!(extra_slots(&t, v) <= 1, "n {n} rank {v}");
                }
            }
        }
    }

    #[test]
    fn double_trees_are_complementary() {
        for n in 1..=300 {
            let [a, b] = double_trees(n);
            for v in 0..n {
                assert!(a.children[v].len() <= 2 && b.children[v].len() <= 2);
                if n % 2 == 0 && n > 2 {
                    let leaf_a = a.children[v].is_empty();
                    let leaf_b = b.children[v].is_empty();
                    assert!(leaf_a != leaf_b, "n {n} rank {v}");
                }
            }
            let height = u64::from(n.next_power_of_two().trailing_zeros());
            assert!(
                a.s[a.root] <= height.max(1) && b.s[b.root] <= height.max(1),
                "n {n}"
            );
        }
    }

    #[test]
    fn broadcast_reduce_allreduce_all_n_roots_counts_chunks() {
        for n in 1..=17 {
            for &count in &COUNTS {
                for opts in chunk_options() {
                    for root in 0..n {
                        for coll in [Collective::Broadcast, Collective::Reduce] {
                            check(
                                Algorithm::Tree,
                                &Shape::new(coll, n, root, Counts::Single(count)),
                                &opts,
                            );
                        }
                    }
                    let shape = Shape::new(Collective::AllReduce, n, 0, Counts::Single(count));
                    check(Algorithm::Tree, &shape, &opts);
                    check(Algorithm::DoubleBinaryTree, &shape, &opts);
                }
            }
        }
    }

    #[test]
    fn scatter_gather_uneven_blocks_every_root() {
        for n in 1..=17 {
            for &count in &COUNTS {
                for blocks in block_patterns(n, count) {
                    for root in 0..n {
                        for coll in [Collective::Scatter, Collective::Gather] {
                            let shape = Shape::new(coll, n, root, Counts::Blocks(blocks.clone()));
                            check(Algorithm::Tree, &shape, &PlanOptions::default());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn barrier_synchronises() {
        for n in 1..=33 {
            check(
                Algorithm::Tree,
                &Shape::new(Collective::Barrier, n, 0, Counts::None),
                &PlanOptions::default(),
            );
        }
    }

    #[test]
    fn larger_rank_counts() {
        for n in [31, 32, 33, 64, 100] {
            for (count, chunk) in [(1000, 7), (5, 1), (64, 0)] {
                let opts = PlanOptions { chunk_elems: chunk };
                let single = Counts::Single(count);
                check(
                    Algorithm::Tree,
                    &Shape::new(Collective::Broadcast, n, n / 3, single.clone()),
                    &opts,
                );
                check(
                    Algorithm::Tree,
                    &Shape::new(Collective::Reduce, n, n - 1, single.clone()),
                    &opts,
                );
                let ar = Shape::new(Collective::AllReduce, n, 0, single);
                check(Algorithm::Tree, &ar, &opts);
                check(Algorithm::DoubleBinaryTree, &ar, &opts);
                let blocks = Counts::Blocks(crate::even_blocks(count, n));
                check(
                    Algorithm::Tree,
                    &Shape::new(Collective::Scatter, n, n / 2 + 1, blocks.clone()),
                    &opts,
                );
                check(
                    Algorithm::Tree,
                    &Shape::new(Collective::Gather, n, n / 2 + 1, blocks),
                    &opts,
                );
            }
        }
    }

    #[test]
    fn unsupported_collectives_are_refused() {
        let shape = Shape::new(Collective::Reduce, 4, 0, Counts::Single(8));
        assert!(matches!(
            double_binary_plan(&shape, 0, &PlanOptions::default()),
            Err(PlanError::Unsupported { .. })
        ));
        let shape = Shape::new(Collective::AllGather, 4, 0, Counts::Blocks(vec![1; 4]));
        assert!(matches!(
            plan(&shape, 0, &PlanOptions::default()),
            Err(PlanError::Unsupported { .. })
        ));
    }

    #[test]
    fn pipelining_shortens_the_critical_path() {
        // 8 ranks, 64 chunks: a pipelined broadcast takes L + k − 1 steps.
        let shape = Shape::new(Collective::Broadcast, 8, 3, Counts::Single(64));
        let opts = PlanOptions { chunk_elems: 1 };
        let max_steps = (0..8)
            .map(|r| {
                generate(Algorithm::Tree, &shape, r, &opts)
                    .unwrap()
                    .steps
                    .len()
            })
            .max()
            .unwrap();
        assert_eq!(max_steps, 64 + 3 - 1);
        let shape = Shape::new(Collective::AllReduce, 8, 0, Counts::Single(64));
        let root = generate(Algorithm::Tree, &shape, 0, &opts).unwrap();
        assert_eq!(root.steps.len(), 64 + 2 * 3 - 1);
        assert_eq!(root.scratch_len, 0);
    }

    #[test]
    fn huge_counts_generate_without_overflow() {
        let count = 3 * (1u64 << 31) + 7;
        let opts = PlanOptions::default();
        for n in [1, 2, 5] {
            let mut cases = Vec::new();
            for coll in [
                Collective::Broadcast,
                Collective::Reduce,
                Collective::AllReduce,
            ] {
                cases.push((
                    Algorithm::Tree,
                    Shape::new(coll, n, n - 1, Counts::Single(count)),
                ));
            }
            cases.push((
                Algorithm::DoubleBinaryTree,
                Shape::new(Collective::AllReduce, n, 0, Counts::Single(count)),
            ));
            let blocks = Counts::Blocks(vec![count; n]);
            for coll in [Collective::Scatter, Collective::Gather] {
                cases.push((Algorithm::Tree, Shape::new(coll, n, n / 2, blocks.clone())));
            }
            for (alg, shape) in cases {
                let plans: Vec<Plan> = (0..n)
                    .map(|r| generate(alg, &shape, r, &opts).unwrap())
                    .collect();
                for p in &plans {
                    for step in &p.steps {
                        assert!(step.actions.len() <= 2 * n + 4);
                    }
                }
                let data = (0..n)
                    .map(|r| {
                        let (il, ol) = buffer_lengths(&shape, r);
                        RankData {
                            input: vec![(); il as usize],
                            output: vec![(); ol as usize],
                        }
                    })
                    .collect();
                crate::simulate::<()>(&plans, data, |_, _| ())
                    .unwrap_or_else(|e| panic!("{alg} {shape:?}: {e}"));
            }
        }
    }
}
