//! The cost model: prices any set of plans on a network model by a
//! discrete-event simulation of the plans, so a new topology is priced
//! without a formula of its own, and picks the cheapest (algorithm, chunk)
//! for a call ([`tune`]).
//!
//! ```
//! use braid_topologies::{price_call, tune, Algorithm, Collective, Counts, Network,
//!                        PlanOptions, Shape, TuneOptions};
//! // 20 µs, 10 Gbit/s, 0.05 ns per byte reduced; textbook rounds.
//! let net = Network::uniform(20e-6, 1.25e9).with_gamma(0.05e-9)
//!     .with_buffer_bytes(0).with_pipeline_bytes(0);
//! let shape = Shape::new(Collective::AllReduce, 8, 0, Counts::Single(1 << 20));
//! let e = price_call(Algorithm::Ring, &shape, &PlanOptions::default(), &net, 4).unwrap();
//! // 2(N−1)(α + S/(N·B)) + (N−1)/N·S·γ with S = 4 MiB.
//! let s = (4u64 << 20) as f64;
//! let want = 14.0 * (20e-6 + s / 8.0 / 1.25e9) + 7.0 / 8.0 * s * 0.05e-9;
//! assert!((e.time - want).abs() < 1e-12);
//! let t = tune(Collective::AllReduce, 8, 64, 4, &net, &TuneOptions::default()).unwrap();
//! println!("{t}"); // the tuning table, cheapest first
//! ```
//!
//! # The network model
//! A [`Network`] gives every ordered pair of ranks a [`Link`]
//! ([`Network::link`]): ranks on the same host ([`Hosts`]) use
//! [`Network::intra`], the others [`Network::inter`] (one (α, B) for shared
//! memory, another for TCP). A link has a latency α (seconds) and a
//! bandwidth B (bytes per second) and is full duplex, unless it has a
//! [`Link::duplex`] rate: then a rank whose step both sends and receives
//! over that class moves each direction at that rate (one core copies both
//! ways, as over shared memory and loopback TCP). Each rank has, per
//! link class, one injection port and one ejection port ([`Injection`]):
//! the messages a rank sends over that class share the injection port, the
//! messages it receives share the ejection port, so a star's hub serialises
//! its N−1 sends. The default port rate is the link's bandwidth (one NIC
//! per rank); [`Injection::Unlimited`] gives the per-link model of the
//! textbooks. [`Network::gamma`] is the reduction cost (seconds per byte
//! folded), [`Network::copy`] the local copy cost, [`Network::overhead`] a
//! per-message cost that holds the ports (LogGP's o and g in one).
//!
//! # What a plan is charged
//! Each rank runs its plan's steps in order, as the executor does:
//! 1. the step's local actions, one after another: a `Copy` of s bytes
//!    costs `s·copy`, a `Reduce` `s·γ`;
//! 2. then all of its messages at once. The k-th send of rank i to rank j
//!    meets the k-th receive of j from i (FIFO per ordered pair).
//!
//! A message starts when its sender has posted it, the sender's port is
//! free (first come, first served) and the pair's previous message of the
//! step has left, **and** either the receiver has posted the step holding
//! it (rendezvous, as in [`crate::simulate`]) or the message fits in what is
//! left of the pair's buffer ([`Network::buffer_bytes`]: a socket buffer or
//! shared-memory ring; the receiver picks it up when it gets to that step).
//! With `buffer_bytes = 0` every message is a rendezvous: synchronous
//! rounds, the textbooks' model.
//!
//! A message of s bytes that starts at t, with `w = s / min(B, port rate)`
//! and `h = o + s / port rate` (B and the port rate of a side whose step
//! sends and receives over a link with a [`Link::duplex`] rate D are at
//! most D; a buffered message's receiver counts as receiving only):
//! * holds the sender's injection port for `h`, and the receiver's ejection
//!   port for `h` in its earliest free interval that long from t on (a
//!   receiver's port is asked in the order senders launch, not in time
//!   order, so it keeps a calendar);
//! * has left the sender at `t + o + w`, or, between two ranks of the same
//!   host when [`Network::host_bandwidth`] C is finite, when its bytes
//!   have passed the host bus: the bus is one resource per host, held by
//!   each such message for `s / C` from `t + o` or when it is free (first
//!   come, first served), so that k concurrent transfers of s bytes on one
//!   host take `max(s / B, k·s / C)` however many ports there are;
//! * is taken by the receiver's port (`absorbed`) then, or when the
//!   receiver's port is done with it;
//! * the sender's side is done when it is absorbed (the transport took the
//!   bytes, held back only by a receiver that takes bytes slower);
//! * lands at the receiver α after it is absorbed. A `Recv` is done then
//!   (or when the receiver posts, for a buffered message);
//! * a `RecvReduce` folds the bytes in as they arrive: the executor streams
//!   payloads in pieces of [`Network::pipeline_bytes`] and reduces one piece
//!   while the next is in flight, a two-stage pipeline that ends at
//!   `max(landed + last piece·γ, first piece landed + s·γ)` (and not before
//!   the receiver's earlier reductions and its posting). With
//!   `pipeline_bytes = 0` the whole message lands first, then `s·γ`: the
//!   textbook `α + s/B + s·γ`. Where one core copies both ways
//!   ([`Link::duplex`]) it folds after the bytes are in, and where it
//!   folds a copy it made first ([`Link::staged_fold`], TCP) the fold also
//!   holds its port.
//!
//! On a host with more ranks than [`Network::host_cores`] K, the ranks take
//! turns at its K cores (a calendar per core, the earliest free): a
//! message's start waits for a core for o (o + s/B between ranks of one
//! host, whose copy is a core's work), a step's local work and a
//! `RecvReduce`'s folding for their time, and a rank that waited for its
//! step's last message for [`Network::wake`] before it goes on.
//!
//! A step ends when its sends are done and its receives are in; the next
//! step starts then. The predicted time of the call is when the last rank
//! ends its last step, every rank entering at 0.
//!
//! Events are processed in time order (a radix heap), so contention for a
//! port is resolved first come, first served. Each rank also carries the
//! breakdown of the longest chain of waits that ended at its current time
//! ([`Breakdown`]): the critical path, split into latency, transfer,
//! reduction, copy and contention.
//!
//! # Limits
//! No congestion inside the network (only at the ranks' ports and the host
//! bus), no routing
//! or switch topology, no per-piece costs, ports shared first come first
//! served rather than fairly (a port faster than its links is reserved for
//! `s/port rate` per message, which staggers concurrent messages; messages
//! too large for the pair's buffer start in the order their receivers
//! post, which at one instant is rank order rather than the plan's, so a
//! linear all-to-all of such messages is priced up to about twice its
//! port time), buffers
//! freed only when the receiver posts, and the CPU cost of moving a
//! transport's bytes is in α, B, o and the host bus (only the plan's `Copy`
//! actions pay [`Network::copy`]; on a host with fewer cores than ranks the
//! sender's copy also holds a core, the receiver's does not). Reductions and local copies do not use
//! the host bus: charged at full weight they priced braid's measured shared
//! memory reduce-scatter 2–3× too slow (docs/cost-model.md).
//!
//! # Cost of pricing
//! Plans are compacted as they are generated, one rank at a time, on every
//! core: a step becomes a template (local elements, messages with peers
//! relative to the rank) shared between ranks and run-length encoded, so a
//! ring all-reduce at 4096 ranks (33.5 million messages) fits in about ten
//! megabytes and prices in about five seconds on two cores. [`tune`] avoids
//! most of that work with [`lower_bound`] and by abandoning simulations that
//! pass the best time so far (exact: the choice is the same;
//! [`TuneOptions::exhaustive`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{generate, Action, Algorithm, Collective, Counts, Plan, PlanError};
use crate::{PlanOptions, Shape};

// ---------------------------------------------------------------------------
// Network model
// ---------------------------------------------------------------------------

/// How fast a rank can push bytes into (and take bytes out of) one class of
/// links, all its peers together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Injection {
    /// One port per rank at the link's bandwidth (one NIC): sends to
    /// different peers share it. The default.
    Link,
    /// No port limit: every link runs at its full bandwidth concurrently
    /// (the per-link model of most closed forms).
    Unlimited,
    /// One port per rank at this rate, in bytes per second. A message then
    /// moves at the lower of this and the link's bandwidth.
    Limit(f64),
}

/// One class of links.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Latency α in seconds, per message.
    pub alpha: f64,
    /// Bandwidth B in bytes per second.
    pub bandwidth: f64,
    /// The ranks' port limit on this class of links.
    pub injection: Injection,
    /// Latency by message size, where it depends on it; `None`: `alpha`
    /// for every message.
    pub latency_by_size: Option<SizeCurve>,
    /// Bandwidth by the size of the call a message belongs to (its largest
    /// per-rank buffer, in bytes), where it depends on it: buffers that
    /// stay in the caches move faster than the streams `bandwidth` was
    /// measured with, buffers far beyond them slower. `None`: `bandwidth`
    /// for every call. [`Network::at_call_bytes`] resolves it.
    pub bandwidth_by_size: Option<SizeCurve>,
    /// [`Link::duplex`] by the size of the call, as `bandwidth_by_size`.
    pub duplex_by_size: Option<SizeCurve>,
    /// Bytes per second in each direction while a rank both sends and
    /// receives over this class in one step, where that is below
    /// `bandwidth`: one core copies both ways (shared memory, loopback
    /// TCP), so an exchange moves each direction slower than a one-way
    /// transfer. `None`: full duplex (a NIC, an emulated wire).
    pub duplex: Option<f64>,
    /// Where one core copies both ways ([`Link::duplex`]): a
    /// receive-and-reduce folds a copy its core made first (a socket read
    /// into a buffer, as braid's TCP transport does), so that core takes
    /// no other message in while it folds: the fold holds the receiver's
    /// port. `false`: the fold reads the transport's memory in the same
    /// pass (a shared-memory ring), and the next message waits only for
    /// the port.
    pub staged_fold: bool,
}

/// A figure as a function of a size in bytes, from measured points: between
/// two points by the logarithm of the size (linear from a point at 0 B),
/// the first point's below it, the last's beyond it.
///
/// Latency by message size ([`Link::latency_by_size`]): small messages are
/// not all alike: shared memory carries 8 bytes in the very line the
/// receiver polls but more through a ring, cache line by cache line (on the
/// 2-vCPU VM, in its slow state, one exchange took 0.40 µs at 8 B per rank,
/// 0.67 µs at 16 B and 0.86 µs at 512 B, where B alone adds 0.05 µs).
/// Bandwidth by call size ([`Link::bandwidth_by_size`]): over shared memory
/// on the same VM a one-way 4 MiB broadcast moved 35 GB/s, 64 MiB 17 GB/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeCurve {
    points: [(f64, f64); SizeCurve::MAX_POINTS],
    len: usize,
}

impl SizeCurve {
    /// The most points a curve holds.
    pub const MAX_POINTS: usize = 8;

    /// A curve through `points` (bytes, value), sizes strictly increasing,
    /// values finite and ≥ 0; 1 to [`Self::MAX_POINTS`].
    pub fn new(points: &[(f64, f64)]) -> Result<SizeCurve, CostError> {
        let bad = |what: &str| {
            Err(CostError::Network(format!(
                "size curve {points:?}: {what}; expected 1 to {} (bytes, value) points, \
                 sizes increasing, values finite and >= 0",
                Self::MAX_POINTS
            )))
        };
        if points.is_empty() || points.len() > Self::MAX_POINTS {
            return bad("wrong number of points");
        }
        if points
            .iter()
            .any(|&(b, a)| !(b.is_finite() && b >= 0.0 && a.is_finite() && a >= 0.0))
        {
            return bad("a size or value is out of range");
        }
        if points.windows(2).any(|w| w[1].0 <= w[0].0) {
            return bad("sizes do not increase");
        }
        let mut c = SizeCurve {
            points: [(0.0, 0.0); Self::MAX_POINTS],
            len: points.len(),
        };
        c.points[..points.len()].copy_from_slice(points);
        Ok(c)
    }

    /// The points, sizes increasing.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points[..self.len]
    }

    /// The value at `bytes`.
    pub fn at(&self, bytes: f64) -> f64 {
        let p = self.points();
        let (first, last) = (p[0], p[p.len() - 1]);
        if bytes <= first.0 {
            return first.1;
        }
        if bytes >= last.0 {
            return last.1;
        }
        let i = p.partition_point(|&(b, _)| b <= bytes);
        let ((b0, a0), (b1, a1)) = (p[i - 1], p[i]);
        // By the logarithm of the size: a rate that falls as buffers leave
        // the caches falls by the size's order of magnitude, not its bytes
        // (16-core device, 2026-11-27: 1 MiB calls moved at about the rates
        // of 16 MiB ones, far from the linear midpoint near the hot rate).
        let f = if b0 > 0.0 {
            (bytes / b0).ln() / (b1 / b0).ln()
        } else {
            (bytes - b0) / (b1 - b0)
        };
        a0 + (a1 - a0) * f
    }
}

impl Link {
    /// A link with latency `alpha` (seconds) and `bandwidth` (bytes per
    /// second) and one port per rank at that bandwidth.
    pub fn new(alpha: f64, bandwidth: f64) -> Link {
        Link {
            alpha,
            bandwidth,
            injection: Injection::Link,
            latency_by_size: None,
            bandwidth_by_size: None,
            duplex_by_size: None,
            duplex: None,
            staged_fold: false,
        }
    }

    /// The same link with its receive-and-reduce folding a staged copy
    /// ([`Link::staged_fold`]).
    pub fn with_staged_fold(self) -> Link {
        Link {
            staged_fold: true,
            ..self
        }
    }

    /// The same link with `bytes_per_second` in each direction while a
    /// rank both sends and receives over it in one step ([`Link::duplex`]).
    pub fn with_duplex(self, bytes_per_second: f64) -> Link {
        Link {
            duplex: Some(bytes_per_second),
            ..self
        }
    }

    /// The same link with its latency by message size ([`SizeCurve`] of
    /// seconds).
    pub fn with_latency_by_size(self, curve: SizeCurve) -> Link {
        Link {
            latency_by_size: Some(curve),
            ..self
        }
    }

    /// The same link with its bandwidth by call size ([`SizeCurve`] of
    /// bytes per second; [`Link::bandwidth_by_size`]).
    pub fn with_bandwidth_by_size(self, curve: SizeCurve) -> Link {
        Link {
            bandwidth_by_size: Some(curve),
            ..self
        }
    }

    /// The same link with its duplex rate by call size ([`SizeCurve`] of
    /// bytes per second; [`Link::duplex_by_size`]).
    pub fn with_duplex_by_size(self, curve: SizeCurve) -> Link {
        Link {
            duplex_by_size: Some(curve),
            ..self
        }
    }

    /// Whether the link's rates depend on the call's size.
    fn by_call_size(&self) -> bool {
        self.bandwidth_by_size.is_some() || self.duplex_by_size.is_some()
    }

    /// The link as a call whose largest per-rank buffer is `bytes` sees it:
    /// bandwidth and duplex rate from their curves, if any.
    pub fn at_call_bytes(&self, bytes: u64) -> Link {
        let b = bytes as f64;
        Link {
            bandwidth: self.bandwidth_by_size.map_or(self.bandwidth, |c| c.at(b)),
            duplex: self.duplex_by_size.map(|c| c.at(b)).or(self.duplex),
            bandwidth_by_size: None,
            duplex_by_size: None,
            ..*self
        }
    }

    /// The latency of a message of `bytes`.
    pub fn alpha_for(&self, bytes: f64) -> f64 {
        match &self.latency_by_size {
            Some(c) => c.at(bytes),
            None => self.alpha,
        }
    }

    /// The same link with another port limit.
    pub fn with_injection(self, injection: Injection) -> Link {
        Link { injection, ..self }
    }

    /// The port rate in bytes per second (infinite when unlimited).
    fn port_rate(&self) -> f64 {
        match self.injection {
            Injection::Link => self.bandwidth,
            Injection::Unlimited => f64::INFINITY,
            Injection::Limit(r) => r,
        }
    }
}

/// Which host each rank runs on: ranks on the same host talk over
/// [`Network::intra`], the others over [`Network::inter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// Consecutive blocks of this many ranks per host (`srun
    /// --ntasks-per-node`); 1 puts every rank on a host of its own.
    Blocks(usize),
    /// `map[r]` is the host of rank `r`.
    Map(Vec<usize>),
}

/// Default [`Network::pipeline_bytes`]: braid's default `BRAID_CHUNK_BYTES`.
pub const DEFAULT_PIPELINE_BYTES: u64 = 256 << 10;

/// Default [`Network::buffer_bytes`]: braid's socket buffer and shared
/// memory ring (`BRAID_SOCKET_BUFFER`, `BRAID_SHM_RING`).
pub const DEFAULT_BUFFER_BYTES: u64 = 4 << 20;

/// The network a plan is priced on. See the module documentation for what
/// each parameter charges.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Links between ranks on different hosts.
    pub inter: Link,
    /// Links between ranks on the same host.
    pub intra: Link,
    /// Which rank runs on which host.
    pub hosts: Hosts,
    /// γ: seconds per byte reduced (local `Reduce` and `RecvReduce`).
    pub gamma: f64,
    /// Seconds per byte of a local `Copy`.
    pub copy: f64,
    /// γ and the copy cost by the size of the call (its largest per-rank
    /// buffer), where they depend on it: a call whose buffers stay in the
    /// caches folds and copies faster than one whose buffers do not (on
    /// the 2-vCPU VM a 4 MiB copy ran at 50–60 GB/s, one of 64 MiB at
    /// 18 GB/s). `None`: `gamma` and `copy` for every call.
    /// [`Network::at_call_bytes`] resolves them. A `RecvReduce` into
    /// elements a `Copy` of its step or an earlier one wrote (a pipelined
    /// tree's rank copies a piece of its input, then folds its children's
    /// pieces into it) folds at the γ of a call the copy's size, at most
    /// the call's: what that copy wrote is still in the cache when it is
    /// small.
    pub gamma_by_size: Option<SizeCurve>,
    /// See [`Network::gamma_by_size`].
    pub copy_by_size: Option<SizeCurve>,
    /// Seconds per message, at the sender, occupying its port.
    pub overhead: f64,
    /// Bytes per piece the executor streams a payload in (a `RecvReduce`
    /// reduces one piece while the next is in flight); 0: no overlap.
    pub pipeline_bytes: u64,
    /// Bytes each ordered pair of ranks buffers (a socket buffer, a shared
    /// memory ring): a send that fits starts as soon as its sender posts
    /// it, before the receiver reaches its step; 0: rendezvous for every
    /// message.
    pub buffer_bytes: u64,
    /// Bytes per second of messages one host moves between its own ranks,
    /// all of them together (the host bus: its memory bandwidth for shared
    /// memory, its kernel and cores for loopback TCP). Every message
    /// between two ranks of the same host holds it for `s / host_bandwidth`
    /// from when it is free, first come first served, and has not left its
    /// sender before then. Infinite (the default): no such limit.
    pub host_bandwidth: f64,
    /// The host bus by the size of the call (its largest per-rank buffer),
    /// where it depends on it: buffers that stay in the caches do not load
    /// memory as streams beyond them do. `None`: `host_bandwidth` for every
    /// call. [`Network::at_call_bytes`] resolves it.
    pub host_bandwidth_by_size: Option<SizeCurve>,
    /// Seconds a call costs besides its steps (entering and leaving the
    /// library, setting a plan up), added to every rank's finish.
    pub call_overhead: f64,
    /// Cores of each host that its ranks' work shares; 0 (the default):
    /// as many as it runs ranks. With more ranks on a host than cores,
    /// the ranks take turns: each message's overhead `o` at its sender
    /// (with, between ranks of one host, its copy `s/B`), a step's `Copy`
    /// and `Reduce` and a `RecvReduce`'s folding hold one of the host's
    /// cores, the earliest free (first come, first served, like the ports),
    /// and so does a woken rank for [`Network::wake`]. A rank alone at work still has a core to itself: a
    /// star's root sends at `o` a message while its leaves wait, where a
    /// step in which every rank sends costs `ranks · o / cores`.
    pub host_cores: usize,
    /// Seconds of a core a rank needs to resume after it waited for the
    /// last message of a step, where ranks take turns at a host's cores
    /// ([`Network::host_cores`]; unused elsewhere): the switch back to a
    /// rank that slept or yielded. k ranks woken at once on K cores resume
    /// ⌈k/K⌉ such turns apart; a step whose messages were all in when it
    /// was posted wakes nobody.
    pub wake: f64,
}

impl Network {
    /// Every pair of ranks on one link class with latency `alpha` (seconds)
    /// and `bandwidth` (bytes per second), one NIC per rank, no reduction,
    /// copy or per-message cost, pieces of [`DEFAULT_PIPELINE_BYTES`].
    pub fn uniform(alpha: f64, bandwidth: f64) -> Network {
        let link = Link::new(alpha, bandwidth);
        Network {
            inter: link,
            intra: link,
            hosts: Hosts::Blocks(1),
            gamma: 0.0,
            copy: 0.0,
            gamma_by_size: None,
            copy_by_size: None,
            overhead: 0.0,
            pipeline_bytes: DEFAULT_PIPELINE_BYTES,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            host_bandwidth: f64::INFINITY,
            host_bandwidth_by_size: None,
            call_overhead: 0.0,
            host_cores: 0,
            wake: 0.0,
        }
    }

    /// The same network where a rank that waited for a message needs a
    /// core for `seconds` to resume ([`Network::wake`]).
    pub fn with_wake(self, seconds: f64) -> Network {
        Network {
            wake: seconds,
            ..self
        }
    }

    /// The same network with `cores` cores per host shared by its ranks'
    /// work ([`Network::host_cores`]; 0: a core per rank).
    pub fn with_host_cores(self, cores: usize) -> Network {
        Network {
            host_cores: cores,
            ..self
        }
    }

    /// The same network with a per-call cost of `seconds`.
    pub fn with_call_overhead(self, seconds: f64) -> Network {
        Network {
            call_overhead: seconds,
            ..self
        }
    }

    /// The same network with a host bus of `bytes_per_second` shared by
    /// the ranks of each host ([`Network::host_bandwidth`]; infinite: none).
    pub fn with_host_bandwidth(self, bytes_per_second: f64) -> Network {
        Network {
            host_bandwidth: bytes_per_second,
            ..self
        }
    }

    /// The same network with its host bus by call size ([`SizeCurve`] of
    /// bytes per second; [`Network::host_bandwidth_by_size`]).
    pub fn with_host_bandwidth_by_size(self, curve: SizeCurve) -> Network {
        Network {
            host_bandwidth_by_size: Some(curve),
            ..self
        }
    }

    /// The same network with γ and the copy cost by call size
    /// ([`SizeCurve`]s of seconds per byte; [`Network::gamma_by_size`]).
    pub fn with_memory_by_size(self, gamma: SizeCurve, copy: SizeCurve) -> Network {
        Network {
            gamma_by_size: Some(gamma),
            copy_by_size: Some(copy),
            ..self
        }
    }

    /// The same network with reduction cost `gamma` (seconds per byte).
    pub fn with_gamma(self, gamma: f64) -> Network {
        Network { gamma, ..self }
    }

    /// The same network with local copy cost `copy` (seconds per byte).
    pub fn with_copy(self, copy: f64) -> Network {
        Network { copy, ..self }
    }

    /// The same network with a per-message `overhead` (seconds).
    pub fn with_overhead(self, overhead: f64) -> Network {
        Network { overhead, ..self }
    }

    /// The same network with pieces of `bytes` (0: no reduce overlap).
    pub fn with_pipeline_bytes(self, bytes: u64) -> Network {
        Network {
            pipeline_bytes: bytes,
            ..self
        }
    }

    /// The same network with `bytes` of buffer per ordered pair (0:
    /// rendezvous for every message).
    pub fn with_buffer_bytes(self, bytes: u64) -> Network {
        Network {
            buffer_bytes: bytes,
            ..self
        }
    }

    /// The same network with the port limit `injection` on both link classes.
    pub fn with_injection(self, injection: Injection) -> Network {
        Network {
            inter: self.inter.with_injection(injection),
            intra: self.intra.with_injection(injection),
            ..self
        }
    }

    /// The same network with ranks placed on `hosts`, which talk among
    /// themselves over `intra`.
    pub fn with_hosts(self, hosts: Hosts, intra: Link) -> Network {
        Network {
            hosts,
            intra,
            ..self
        }
    }

    /// The network as a call whose largest per-rank buffer is `bytes` sees
    /// it ([`Link::at_call_bytes`] on both classes; the host bus, γ and the
    /// copy cost from their curves; γ's curve stays for folds into freshly
    /// copied elements, see [`Network::gamma_by_size`]); borrowed when
    /// nothing depends on the call's size.
    pub fn at_call_bytes(&self, bytes: u64) -> Cow<'_, Network> {
        if !self.by_call_size() {
            return Cow::Borrowed(self);
        }
        Cow::Owned(Network {
            inter: self.inter.at_call_bytes(bytes),
            intra: self.intra.at_call_bytes(bytes),
            host_bandwidth: self
                .host_bandwidth_by_size
                .map_or(self.host_bandwidth, |c| c.at(bytes as f64)),
            host_bandwidth_by_size: None,
            gamma: self
                .gamma_by_size
                .map_or(self.gamma, |c| c.at(bytes as f64)),
            // Kept: a fold into elements its step has just copied is
            // priced by the copy's size.
            copy: self.copy_by_size.map_or(self.copy, |c| c.at(bytes as f64)),
            copy_by_size: None,
            ..self.clone()
        })
    }

    /// Whether a rate depends on the call's size.
    fn by_call_size(&self) -> bool {
        self.inter.by_call_size()
            || self.intra.by_call_size()
            || self.host_bandwidth_by_size.is_some()
            || self.gamma_by_size.is_some()
            || self.copy_by_size.is_some()
    }

    /// The host of `rank` (`usize::MAX` when a [`Hosts::Map`] does not name it).
    pub fn host_of(&self, rank: usize) -> usize {
        match &self.hosts {
            Hosts::Blocks(k) => rank / (*k).max(1),
            Hosts::Map(m) => m.get(rank).copied().unwrap_or(usize::MAX),
        }
    }

    /// Whether ranks `i` and `j` share a host.
    pub fn same_host(&self, i: usize, j: usize) -> bool {
        self.host_of(i) == self.host_of(j)
    }

    /// The link between ranks `i` and `j`.
    pub fn link(&self, i: usize, j: usize) -> &Link {
        if self.same_host(i, j) {
            &self.intra
        } else {
            &self.inter
        }
    }

    /// Checks every parameter for a group of `nranks` ranks.
    pub fn check(&self, nranks: usize) -> Result<(), CostError> {
        let bad = |what: String| Err(CostError::Network(what));
        // A rate curve, where there is one, is above 0 at every point.
        let positive =
            |c: Option<SizeCurve>| c.is_none_or(|c| c.points().iter().all(|p| p.1 > 0.0));
        for (name, l) in [("inter", &self.inter), ("intra", &self.intra)] {
            if !(l.alpha.is_finite() && l.alpha >= 0.0) {
                return bad(format!(
                    "{name} latency must be finite and >= 0 seconds, got {}",
                    l.alpha
                ));
            }
            if !(l.bandwidth.is_finite() && l.bandwidth > 0.0) {
                return bad(format!(
                    "{name} bandwidth must be finite and > 0 bytes/s, got {}",
                    l.bandwidth
                ));
            }
            for (what, c) in [
                ("bandwidth", l.bandwidth_by_size),
                ("duplex", l.duplex_by_size),
            ] {
                if !positive(c) {
                    return bad(format!(
                        "{name} {what} by size must be > 0 bytes/s at every point"
                    ));
                }
            }
            if let Some(d) = l.duplex {
                if !(d.is_finite() && d > 0.0) {
                    return bad(format!(
                        "{name} duplex bandwidth must be finite and > 0 bytes/s, got {d}"
                    ));
                }
            }
            if let Injection::Limit(r) = l.injection {
                if r.is_nan() || r <= 0.0 {
                    return bad(format!(
                        "{name} injection limit must be > 0 bytes/s, got {r}"
                    ));
                }
            }
        }
        if !positive(self.host_bandwidth_by_size) {
            return bad("host bandwidth by size must be > 0 bytes/s at every point".into());
        }
        if self.host_bandwidth.is_nan() || self.host_bandwidth <= 0.0 {
            return bad(format!(
                "host bandwidth must be > 0 bytes/s (infinite: no limit), got {}",
                self.host_bandwidth
            ));
        }
        for (name, v) in [
            ("gamma", self.gamma),
            ("copy", self.copy),
            ("overhead", self.overhead),
            ("call overhead", self.call_overhead),
            ("wake", self.wake),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be finite and >= 0, got {v}"));
            }
        }
        if self.host_cores > 1 << 20 {
            return bad(format!(
                "host cores must be at most 1048576 (0: a core per rank), got {}",
                self.host_cores
            ));
        }
        match &self.hosts {
            Hosts::Blocks(0) => bad("Hosts::Blocks needs at least 1 rank per host".into()),
            Hosts::Map(m) if m.len() < nranks => bad(format!(
                "Hosts::Map names {} ranks but the group has {nranks}",
                m.len()
            )),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Results and errors
// ---------------------------------------------------------------------------

/// Where the time of a critical path goes; the fields add up to its length.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// Link latency α and per-message overhead.
    pub latency: f64,
    /// Bytes on the wire: s / B.
    pub transfer: f64,
    /// Reduction (local `Reduce`, and the part of a `RecvReduce` after its
    /// last byte landed).
    pub reduce: f64,
    /// Local copies.
    pub copy: f64,
    /// Waiting for a busy port or for the pair's previous message.
    pub contention: f64,
}

impl Breakdown {
    /// The length of the path.
    pub fn total(&self) -> f64 {
        self.latency + self.transfer + self.reduce + self.copy + self.contention
    }
}

/// The predicted cost of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Seconds from every rank entering to the last rank leaving.
    pub time: f64,
    /// The rank that leaves last (the lowest such).
    pub last_rank: usize,
    /// The critical path that ends at `last_rank`.
    pub critical_path: Breakdown,
    /// Seconds at which each rank leaves.
    pub rank_finish: Vec<f64>,
    /// Messages, all ranks together.
    pub messages: u64,
    /// Bytes sent, all ranks together.
    pub bytes: f64,
    /// The most steps any rank runs.
    pub max_steps: u64,
}

/// Why a plan could not be priced.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CostError {
    /// A network parameter is out of range.
    #[error("bad network model: {0}")]
    Network(String),
    /// An argument other than the network is out of range.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// The plans could not be generated.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `plans[index]` is not rank `index`'s plan of the group.
    #[error(
        "plans[{index}] is the plan of rank {plan_rank} of {plan_nranks}, expected rank {index} of {nranks}"
    )]
    WrongRank {
        /// Position in the slice.
        index: usize,
        /// Its [`Plan::rank`].
        plan_rank: usize,
        /// Its [`Plan::nranks`].
        plan_nranks: usize,
        /// Plans given.
        nranks: usize,
    },
    /// A message names a peer out of range or the rank itself.
    #[error("rank {rank} step {step}: message peer {peer} is out of range 0..{nranks} or the rank itself")]
    BadPeer {
        /// The rank.
        rank: usize,
        /// The step.
        step: u64,
        /// The peer named.
        peer: usize,
        /// Ranks in the group.
        nranks: usize,
    },
    /// A send and the receive it meets differ in length.
    #[error("length mismatch: rank {src} (step {send_step}) sends {send_len} elements to rank {dst}, whose matching receive (step {recv_step}) expects {recv_len}")]
    LengthMismatch {
        /// Sender.
        src: usize,
        /// Receiver.
        dst: usize,
        /// Sender's step.
        send_step: u64,
        /// Receiver's step.
        recv_step: u64,
        /// Elements sent.
        send_len: u64,
        /// Elements expected.
        recv_len: u64,
    },
    /// Some ranks never finish: a cycle of waits or a message nobody receives.
    #[error("deadlock: {} rank(s) cannot finish: {detail}", stuck.len())]
    Deadlock {
        /// The ranks that cannot finish.
        stuck: Vec<usize>,
        /// What the first of them wait for.
        detail: String,
    },
    /// A buffered message was never received.
    #[error("unmatched message: rank {src} sends to rank {dst} in its step {send_step}, but rank {dst} finished without receiving it")]
    Unmatched {
        /// Sender.
        src: usize,
        /// Receiver.
        dst: usize,
        /// Sender's step.
        send_step: u64,
    },
    /// The simulation passed `best` seconds, the time of a cheaper
    /// candidate, and was abandoned ([`tune`] only).
    #[error("slower than the best candidate so far ({best:e} s); abandoned")]
    Pruned {
        /// The time it could not beat.
        best: f64,
    },
    /// The plans hold more messages than the caller allowed.
    #[error(
        "more than {limit} messages (the pricing budget); use larger chunks or raise the limit"
    )]
    Budget {
        /// The limit.
        limit: u64,
    },
}

// ---------------------------------------------------------------------------
// Compact plans
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Send,
    Recv,
    RecvReduce,
}

/// One message of a step template; `rel` is the peer minus the rank, mod N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Op {
    elems: u64,
    rel: u32,
    kind: Kind,
    /// A `RecvReduce` into elements a `Copy` of its step has just written:
    /// the elements of that copy (0: none), whose size decides whether the
    /// fold finds them in the cache.
    copied: u64,
}

impl Op {
    fn key(&self) -> (u32, bool) {
        (self.rel, self.kind != Kind::Send)
    }
}

/// The messages of one template toward one peer in one direction:
/// `ops[start..end]` of the template, in plan order.
#[derive(Clone, Copy, Debug)]
struct Group {
    rel: u32,
    recv: bool,
    start: u32,
    end: u32,
}

/// A step, compacted: local elements and messages (sorted by (peer,
/// direction), plan order within).
#[derive(Clone, Copy, Debug)]
struct Tmpl {
    copy: u64,
    reduce: u64,
    ops: u32,
    nops: u32,
    groups: u32,
    ngroups: u32,
}

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const NONE: u32 = u32::MAX;

/// Interned step templates.
#[derive(Default)]
struct Book {
    ops: Vec<Op>,
    groups: Vec<Group>,
    tmpls: Vec<Tmpl>,
    index: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    /// Next template with the same hash.
    chain: Vec<u32>,
}

fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95)
}

fn hash_step(copy: u64, reduce: u64, ops: &[Op]) -> u64 {
    let mut h = mix(mix(0, copy), reduce);
    for o in ops {
        h = mix(h, o.elems);
        h = mix(h, ((o.rel as u64) << 2) | o.kind as u64);
        h = mix(h, o.copied);
    }
    h
}

impl Book {
    fn ops_of(&self, t: &Tmpl) -> &[Op] {
        &self.ops[t.ops as usize..(t.ops + t.nops) as usize]
    }

    fn groups_of(&self, t: &Tmpl) -> &[Group] {
        &self.groups[t.groups as usize..(t.groups + t.ngroups) as usize]
    }

    fn same(&self, id: u32, copy: u64, reduce: u64, ops: &[Op]) -> bool {
        let t = &self.tmpls[id as usize];
        t.copy == copy && t.reduce == reduce && self.ops_of(t) == ops
    }

    fn intern(&mut self, copy: u64, reduce: u64, ops: &[Op]) -> Result<u32, CostError> {
        let h = hash_step(copy, reduce, ops);
        let head = self.index.get(&h).copied().unwrap_or(NONE);
        let mut cur = head;
        while cur != NONE {
            if self.same(cur, copy, reduce, ops) {
                return Ok(cur);
            }
            cur = self.chain[cur as usize];
        }
        let too_many = || CostError::Argument("more than 2^32 distinct steps".into());
        let id = u32::try_from(self.tmpls.len()).map_err(|_| too_many())?;
        let op_start = u32::try_from(self.ops.len()).map_err(|_| too_many())?;
        let group_start = u32::try_from(self.groups.len()).map_err(|_| too_many())?;
        self.ops.extend_from_slice(ops);
        for (k, o) in ops.iter().enumerate() {
            let (rel, recv) = o.key();
            match self.groups[group_start as usize..].last_mut() {
                Some(g) if g.rel == rel && g.recv == recv => g.end = k as u32 + 1,
                _ => self.groups.push(Group {
                    rel,
                    recv,
                    start: k as u32,
                    end: k as u32 + 1,
                }),
            }
        }
        self.tmpls.push(Tmpl {
            copy,
            reduce,
            ops: op_start,
            nops: ops.len() as u32,
            groups: group_start,
            ngroups: self.groups.len() as u32 - group_start,
        });
        self.chain.push(head);
        self.index.insert(h, id);
        Ok(id)
    }
}

/// One rank's plan as runs of templates: (template, repetitions).
#[derive(Default)]
struct Compact {
    runs: Vec<(u32, u32)>,
    steps: u64,
    sends: u64,
    bytes: f64,
}

fn compact(
    book: &mut Book,
    plan: &Plan,
    rank: usize,
    ops: &mut Vec<Op>,
    elem: f64,
) -> Result<Compact, CostError> {
    let n = plan.nranks;
    let mut out = Compact::default();
    // The length of the latest copy into each (buffer, offset) of earlier
    // steps: a pipelined tree copies a chunk of its input, then folds its
    // children's pieces into it over the next steps, while it is still in
    // the cache when small.
    let mut copies: HashMap<(crate::BufferId, u64), u64> = HashMap::new();
    for (si, step) in plan.steps.iter().enumerate() {
        let (mut copy, mut reduce) = (0u64, 0u64);
        ops.clear();
        // The step's copies run before its messages: a fold into what one
        // of them (or of an earlier step's) wrote reads it back from the
        // cache when it is small.
        let copied_into = |dst: &crate::Region| {
            let earlier = copies
                .get(&(dst.buf, dst.offset))
                .copied()
                .filter(|&len| dst.len <= len);
            step.actions
                .iter()
                .filter_map(|a| match a {
                    Action::Copy { dst: c, .. }
                        if c.buf == dst.buf
                            && c.offset <= dst.offset
                            && dst.offset + dst.len <= c.offset + c.len =>
                    {
                        Some(c.len)
                    }
                    _ => None,
                })
                .chain(earlier)
                .max()
                .unwrap_or(0)
        };
        for a in &step.actions {
            let (peer, elems, kind, copied) = match *a {
                Action::Copy { dst, .. } => {
                    copy = copy.saturating_add(dst.len);
                    continue;
                }
                Action::Reduce { dst, .. } => {
                    reduce = reduce.saturating_add(dst.len);
                    continue;
                }
                Action::Send { peer, src } => (peer, src.len, Kind::Send, 0),
                Action::Recv { peer, dst } => (peer, dst.len, Kind::Recv, 0),
                Action::RecvReduce { peer, dst } => {
                    (peer, dst.len, Kind::RecvReduce, copied_into(&dst))
                }
            };
            if peer >= n || peer == rank || n > u32::MAX as usize {
                return Err(CostError::BadPeer {
                    rank,
                    step: si as u64,
                    peer,
                    nranks: n,
                });
            }
            if kind == Kind::Send {
                out.sends += 1;
                out.bytes += elems as f64 * elem;
            }
            ops.push(Op {
                elems,
                rel: ((peer + n - rank) % n) as u32,
                kind,
                copied,
            });
        }
        for a in &step.actions {
            if let Action::Copy { dst, .. } = a {
                copies.insert((dst.buf, dst.offset), dst.len);
            }
        }
        // Stable: plan order within one (peer, direction).
        ops.sort_by_key(Op::key);
        match out.runs.last_mut() {
            Some((id, count)) if *count < u32::MAX && book.same(*id, copy, reduce, ops) => {
                *count += 1
            }
            _ => {
                let id = book.intern(copy, reduce, ops)?;
                out.runs.push((id, 1));
            }
        }
        out.steps += 1;
    }
    Ok(out)
}

/// Compacted plans of every rank.
struct Compacted {
    book: Book,
    ranks: Vec<Compact>,
}

/// Generates and compacts every rank's plan, in parallel, giving up past
/// `limit` messages.
fn generate_compact(
    algorithm: Algorithm,
    shape: &Shape,
    options: &PlanOptions,
    elem: f64,
    limit: u64,
) -> Result<Compacted, CostError> {
    let n = shape.nranks;
    crate::check_shape(shape, 0)?;
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.div_ceil(64))
        .max(1);
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let work = |lo: usize, hi: usize| -> Result<(Book, Vec<Compact>), CostError> {
        let mut book = Book::default();
        let mut ops = Vec::new();
        let mut out = Vec::with_capacity(hi - lo);
        for r in lo..hi {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let plan = generate(algorithm, shape, r, options)?;
            let c = compact(&mut book, &plan, r, &mut ops, elem)?;
            if sent.fetch_add(c.sends, Ordering::Relaxed) + c.sends > limit {
                stop.store(true, Ordering::Relaxed);
                return Err(CostError::Budget { limit });
            }
            out.push(c);
        }
        Ok((book, out))
    };
    let per = n.div_ceil(threads);
    let parts: Vec<Result<(Book, Vec<Compact>), CostError>> = if threads == 1 {
        vec![work(0, n)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                    let work = &work;
                    s.spawn(move || work(lo, hi))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CostError::Argument("a plan generator panicked".into()))
                    })
                })
                .collect()
        })
    };
    let mut merged: Option<Book> = None;
    let mut ranks = Vec::with_capacity(n);
    // Report the first error in rank order, a budget overrun last (other
    // parts may have stopped early because of it).
    let mut budget = None;
    let mut ok = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Ok(x) => ok.push(x),
            Err(CostError::Budget { limit }) => budget = Some(limit),
            Err(e) => return Err(e),
        }
    }
    if let Some(limit) = budget {
        return Err(CostError::Budget { limit });
    }
    for (book, mut part) in ok {
        match merged.as_mut() {
            None => merged = Some(book),
            Some(global) => {
                let remap = book
                    .tmpls
                    .iter()
                    .map(|t| global.intern(t.copy, t.reduce, book.ops_of(t)))
                    .collect::<Result<Vec<u32>, _>>()?;
                for c in &mut part {
                    for run in &mut c.runs {
                        run.0 = remap[run.0 as usize];
                    }
                }
            }
        }
        ranks.extend(part);
    }
    Ok(Compacted {
        book: merged.unwrap_or_default(),
        ranks,
    })
}

// ---------------------------------------------------------------------------
// The event simulation
// ---------------------------------------------------------------------------

/// Precomputed link class parameters.
#[derive(Clone, Copy)]
struct LinkP {
    /// The class's link, for its latency.
    of: Link,
    /// Wire rate: min(bandwidth, port rate).
    wire: f64,
    /// Port rate (infinite: no port).
    port: f64,
}

#[derive(Clone, Copy, Default)]
struct Cursor {
    next: u32,
    /// When the pair's previous message of this step left the sender.
    free: f64,
}

#[derive(Default)]
struct RankState {
    run: usize,
    left: u32,
    step: u64,
    tmpl: u32,
    started: bool,
    posted: bool,
    done: bool,
    /// Messages of the step not yet started (sends) or not yet in (receives).
    pending: u32,
    send_until: f64,
    send_path: Breakdown,
    path: Breakdown,
    /// When the current step was posted.
    posted_at: f64,
    cursors: Vec<Cursor>,
    /// Per link class (inter, intra): whether the posted step both sends
    /// and receives over it (then a [`Link::duplex`] rate applies).
    both_ways: [bool; 2],
}

/// A buffered message that reached its receiver before the receiver posted
/// the step that takes it.
#[derive(Clone, Copy)]
struct Early {
    from: u32,
    elems: u64,
    bytes: f64,
    landed: f64,
    wire: f64,
    send_step: u64,
    /// The path to `landed`.
    path: Breakdown,
}

struct Msg {
    rank: u32,
    path: Breakdown,
}

/// The timing of one transfer.
struct Flight {
    /// When the receiver's port has taken the last byte (the sender is done).
    absorbed: f64,
    /// When the last byte has landed (`absorbed + α`).
    landed: f64,
    wire: f64,
    /// The path to `absorbed`.
    path: Breakdown,
}

/// A monotone priority queue (radix heap) of (time bits, event): every key
/// pushed is at least the last one popped, as in any discrete-event
/// simulation, so keys live in buckets by their highest bit that differs
/// from the last popped key. Amortised O(1) push, O(log range) pop.
struct RadixHeap {
    last: u64,
    len: usize,
    buckets: Vec<Vec<(u64, u64)>>,
    spare: Vec<(u64, u64)>,
}

impl RadixHeap {
    fn new() -> Self {
        RadixHeap {
            last: 0,
            len: 0,
            buckets: (0..65).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
        }
    }

    fn bucket(key: u64, last: u64) -> usize {
        64 - (key ^ last).leading_zeros() as usize
    }

    fn push(&mut self, key: u64, value: u64) {
        let key = key.max(self.last);
        self.buckets[Self::bucket(key, self.last)].push((key, value));
        self.len += 1;
    }

    fn pop(&mut self) -> Option<(u64, u64)> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let i = self.buckets.iter().position(|b| !b.is_empty())?;
            let min = self.buckets[i].iter().map(|e| e.0).min()?;
            self.last = min;
            let mut moved =
                std::mem::replace(&mut self.buckets[i], std::mem::take(&mut self.spare));
            for e in moved.drain(..) {
                self.buckets[Self::bucket(e.0, min)].push(e);
            }
            self.spare = moved;
        }
        self.len -= 1;
        self.buckets[0].pop()
    }
}

const EV_POST: u64 = 0;
const EV_STEP_END: u64 = 1;
const EV_RECV: u64 = 2;
const EV_WOKEN: u64 = 3;

struct Engine<'a> {
    book: &'a Book,
    plans: &'a [Compact],
    n: usize,
    net: &'a Network,
    links: [LinkP; 2],
    elem: f64,
    gamma: f64,
    overhead: f64,
    piece: f64,
    buffer: f64,
    st: Vec<RankState>,
    /// Injection ports' free times, index rank * 2 + class (0 inter, 1
    /// intra): a rank launches its own messages in time order.
    inj_free: Vec<f64>,
    /// Ejection ports' reservations, same index: messages from different
    /// senders are launched out of time order.
    ejection: Vec<Calendar>,
    cpu_free: Vec<f64>,
    /// Each rank's own core, where one core copies both ways (a class with
    /// a [`Link::duplex`] rate): the overhead o of each message it sends
    /// and of each it receives (the last o of the message's α) take it in
    /// turn, so that a rank sending and receiving many messages in one
    /// step (a linear all-to-all) pays both, where ports alone would
    /// overlap them.
    own: Vec<Calendar>,
    /// The host bus: bytes per second (infinite: none), each rank's host
    /// (dense index) and each host's bus reservations.
    bus: f64,
    host: Vec<u32>,
    bus_busy: Vec<Calendar>,
    /// Each host's cores, where some host runs more ranks than it has
    /// ([`Network::host_cores`]); empty: a core per rank.
    cores: Vec<Cores>,
    /// Per receiver, buffered messages in arrival order.
    early: Vec<Vec<Early>>,
    heap: RadixHeap,
    msgs: Vec<Msg>,
    free_msgs: Vec<u32>,
    /// Ranks to post at the current time.
    work: Vec<usize>,
    now: f64,
    /// Give up (as [`CostError::Pruned`]) once the simulation passes this.
    cutoff: f64,
    finish: Vec<f64>,
    finish_path: Vec<Breakdown>,
    /// Whether a link class has a [`Link::duplex`] rate (steps are then
    /// checked for sending and receiving at once).
    any_duplex: bool,
}

/// When a port is taken: disjoint intervals in time order. A sender
/// launches each message of a step when the step is posted, though it
/// starts only when the sender's port is free, so one receiver's port is
/// asked for a later interval (the third message of one sender) before an
/// earlier one (the first of another). Taking the earliest gap serves them
/// in the order of their times; a port free only after its last
/// reservation (`max(start, free)`) let every rank of a linear all-to-all
/// wait for the others' later messages, and priced it at about twice the
/// N − 1 messages' port time it takes.
#[derive(Default)]
struct Calendar {
    busy: std::collections::VecDeque<(f64, f64)>,
}

impl Calendar {
    /// Takes the port for `len` seconds at the earliest time from `from` on
    /// when it is free that long; returns when that ends. Reservations that
    /// ended by `now` are forgotten (no message starts before now).
    fn reserve(&mut self, from: f64, len: f64, now: f64) -> f64 {
        self.forget(now);
        let (begin, i) = self.earliest(from, len);
        self.take(begin, len, i)
    }

    /// Forgets the reservations that ended by `now`.
    fn forget(&mut self, now: f64) {
        while self.busy.front().is_some_and(|&(_, end)| end <= now) {
            self.busy.pop_front();
        }
    }

    /// The earliest time from `from` on when the port is free for `len`,
    /// and where that interval goes among the reservations.
    fn earliest(&self, from: f64, len: f64) -> (f64, usize) {
        // Sums of the same durations in another order differ in the last
        // bits; an overlap that small is none (else a port packed back to
        // back by several senders turns a message away by a whole slot).
        let slack = 1e-9 * len;
        let mut begin = from;
        let mut i = self.busy.partition_point(|&(_, end)| end <= begin + slack);
        while i < self.busy.len() && self.busy[i].0 < begin + len - slack {
            begin = begin.max(self.busy[i].1);
            i += 1;
        }
        (begin, i)
    }

    /// Reserves `len` from `begin`, placed at `i` (from [`Calendar::earliest`]);
    /// returns when it ends.
    fn take(&mut self, begin: f64, len: f64, i: usize) -> f64 {
        let slack = 1e-9 * len;
        let end = begin + len;
        // Join touching neighbours, so that a port taken back to back
        // stays one interval.
        let joins_before = i > 0 && self.busy[i - 1].1 >= begin - slack;
        let joins_after = i < self.busy.len() && self.busy[i].0 <= end + slack;
        match (joins_before, joins_after) {
            (true, true) => {
                self.busy[i - 1].1 = self.busy[i].1;
                self.busy.remove(i);
            }
            (true, false) => self.busy[i - 1].1 = self.busy[i - 1].1.max(end),
            (false, true) => self.busy[i].0 = self.busy[i].0.min(begin),
            (false, false) => self.busy.insert(i, (begin, end)),
        }
        end
    }
}

/// A host's cores ([`Network::host_cores`]): one calendar each; work takes
/// the core where it can start first.
struct Cores {
    lanes: Vec<Calendar>,
}

impl Cores {
    /// Holds a core for `len` seconds from the earliest time from `from` on;
    /// returns when that ends.
    fn reserve(&mut self, from: f64, len: f64, now: f64) -> f64 {
        let mut best = (f64::INFINITY, 0, 0);
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            lane.forget(now);
            let (begin, i) = lane.earliest(from, len);
            if begin < best.0 {
                best = (begin, i, k);
            }
            if begin <= from {
                break;
            }
        }
        let (begin, i, k) = best;
        self.lanes[k].take(begin, len, i)
    }
}

fn add(mut p: Breakdown, f: impl FnOnce(&mut Breakdown)) -> Breakdown {
    f(&mut p);
    p
}

impl<'a> Engine<'a> {
    fn new(book: &'a Book, plans: &'a [Compact], net: &'a Network, elem: f64, cutoff: f64) -> Self {
        let n = plans.len();
        let lp = |l: &Link| LinkP {
            of: *l,
            wire: l.bandwidth.min(l.port_rate()),
            port: l.port_rate(),
        };
        let mut st = Vec::with_capacity(n);
        st.resize_with(n, RankState::default);
        let mut early = Vec::with_capacity(n);
        early.resize_with(n, Vec::new);
        let bus = net.host_bandwidth;
        let mut host = Vec::new();
        let mut hosts = 0usize;
        let mut crowded = false;
        if bus.is_finite() || net.host_cores > 0 {
            let mut dense: HashMap<usize, u32> = HashMap::new();
            host = (0..n)
                .map(|r| {
                    let next = dense.len() as u32;
                    *dense.entry(net.host_of(r)).or_insert(next)
                })
                .collect();
            hosts = dense.len();
            if net.host_cores > 0 {
                let mut ranks = vec![0usize; hosts];
                for &h in &host {
                    ranks[h as usize] += 1;
                }
                crowded = ranks.iter().any(|&k| k > net.host_cores);
            }
        }
        let cores = if crowded {
            (0..hosts)
                .map(|_| Cores {
                    lanes: (0..net.host_cores).map(|_| Calendar::default()).collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Engine {
            book,
            plans,
            n,
            net,
            links: [lp(&net.inter), lp(&net.intra)],
            any_duplex: net.inter.duplex.is_some() || net.intra.duplex.is_some(),
            elem,
            gamma: net.gamma,
            overhead: net.overhead,
            piece: net.pipeline_bytes as f64,
            buffer: net.buffer_bytes as f64,
            st,
            inj_free: vec![0.0; 2 * n],
            ejection: (0..2 * n).map(|_| Calendar::default()).collect(),
            cpu_free: vec![0.0; n],
            own: (0..n).map(|_| Calendar::default()).collect(),
            bus,
            host,
            bus_busy: (0..hosts).map(|_| Calendar::default()).collect(),
            cores,
            early,
            heap: RadixHeap::new(),
            msgs: Vec::new(),
            free_msgs: Vec::new(),
            work: Vec::new(),
            now: 0.0,
            cutoff,
            finish: vec![0.0; n],
            finish_path: vec![Breakdown::default(); n],
        }
    }

    /// Reserves `bytes` of rank `r`'s host bus in its earliest free interval
    /// from `from` on (a calendar, as a receiver's port: messages launched
    /// later may start earlier); returns when they have passed (`from`
    /// without a bus).
    /// Reserving rather than sharing fairly staggers concurrent messages,
    /// but ends a batch of them when fair sharing would.
    fn on_bus(&mut self, r: usize, from: f64, bytes: f64) -> f64 {
        if !self.bus.is_finite() || bytes <= 0.0 {
            return from;
        }
        let h = self.host[r] as usize;
        self.bus_busy[h].reserve(from, bytes / self.bus, self.now)
    }

    /// Holds a core of rank `r`'s host for `len` seconds from `from` on, the
    /// earliest free; returns when that ends (`from + len` with a core per
    /// rank).
    fn on_core(&mut self, r: usize, from: f64, len: f64) -> f64 {
        if self.cores.is_empty() || len <= 0.0 {
            return from + len;
        }
        let h = self.host[r] as usize;
        self.cores[h].reserve(from, len, self.now)
    }

    fn push(&mut self, t: f64, kind: u64, idx: usize) {
        // Non-negative floats order like their bit patterns.
        self.heap
            .push(t.max(self.now).to_bits(), (kind << 32) | idx as u64);
    }

    fn run(mut self) -> Result<(Vec<f64>, Vec<Breakdown>), CostError> {
        for r in 0..self.n {
            self.advance(r, Breakdown::default());
        }
        self.drain()?;
        while let Some((bits, ev)) = self.heap.pop() {
            self.now = f64::from_bits(bits);
            // The call's own cost comes on top of every finish.
            if self.now + self.net.call_overhead > self.cutoff {
                return Err(CostError::Pruned { best: self.cutoff });
            }
            let (kind, idx) = (ev >> 32, (ev & 0xffff_ffff) as usize);
            match kind {
                EV_POST => self.work.push(idx),
                EV_STEP_END => {
                    let path = self.st[idx].send_path;
                    self.advance(idx, path);
                }
                EV_WOKEN => {
                    let path = self.st[idx].path;
                    self.step_complete(idx, path, true);
                }
                _ => {
                    let m = &self.msgs[idx];
                    let (r, path) = (m.rank as usize, m.path);
                    self.free_msgs.push(idx as u32);
                    let s = &mut self.st[r];
                    s.pending -= 1;
                    if s.pending == 0 {
                        // A rank that waited for its step's last bytes
                        // needs a core to resume, where ranks take turns.
                        let now = self.now;
                        if self.net.wake > 0.0 && !self.cores.is_empty() && now > s.posted_at {
                            let at = self.on_core(r, now, self.net.wake);
                            self.st[r].path = add(path, |p| p.contention += at - now);
                            self.push(at, EV_WOKEN, r);
                        } else {
                            self.step_complete(r, path, true);
                        }
                    }
                }
            }
            self.drain()?;
        }
        if self.st.iter().any(|s| !s.done) {
            return Err(self.deadlock());
        }
        if let Some((dst, e)) = self
            .early
            .iter()
            .enumerate()
            .find_map(|(b, q)| q.first().map(|e| (b, *e)))
        {
            return Err(CostError::Unmatched {
                src: e.from as usize,
                dst,
                send_step: e.send_step,
            });
        }
        Ok((self.finish, self.finish_path))
    }

    fn drain(&mut self) -> Result<(), CostError> {
        while let Some(r) = self.work.pop() {
            self.post(r)?;
        }
        Ok(())
    }

    /// All of `r`'s messages of this step have started and its receives
    /// are in, at `self.now`, by the path `path`. The step ends when its
    /// sends are done too; the rank moves on at once only when `inline`
    /// (not in the middle of matching its messages) and nothing is left.
    fn step_complete(&mut self, r: usize, path: Breakdown, inline: bool) {
        let now = self.now;
        let s = &mut self.st[r];
        if s.send_until <= now {
            s.send_path = path;
            if inline {
                self.advance(r, path);
                return;
            }
        }
        let at = s.send_until.max(now);
        self.push(at, EV_STEP_END, r);
    }

    /// Moves `r` into its next step at `self.now` (its previous step ended
    /// by `path`), charging the local actions.
    fn advance(&mut self, r: usize, path: Breakdown) {
        let plan = &self.plans[r];
        let s = &mut self.st[r];
        s.posted = false;
        if s.started && s.left > 0 {
            s.left -= 1;
        } else {
            if s.started {
                s.run += 1;
            }
            match plan.runs.get(s.run) {
                Some(&(id, count)) => {
                    s.tmpl = id;
                    s.left = count - 1;
                }
                None => {
                    s.done = true;
                    s.started = true;
                    self.finish[r] = self.now;
                    self.finish_path[r] = path;
                    return;
                }
            }
        }
        if s.started {
            s.step += 1;
        }
        s.started = true;
        let t = &self.book.tmpls[s.tmpl as usize];
        let copy = t.copy as f64 * self.elem * self.net.copy;
        let reduce = t.reduce as f64 * self.elem * self.gamma;
        s.path = add(path, |p| {
            p.copy += copy;
            p.reduce += reduce;
        });
        if copy + reduce > 0.0 {
            let now = self.now;
            let at = self.on_core(r, now, copy + reduce);
            // Waiting for a core is contention.
            let waited = at - (now + copy + reduce);
            if waited > 0.0 {
                self.st[r].path.contention += waited;
            }
            self.push(at, EV_POST, r);
        } else {
            self.work.push(r);
        }
    }

    /// The group of `peer`'s current step toward `r` in direction `recv`,
    /// if `peer` has posted it and it still has messages.
    fn open_group(&self, peer: usize, r: usize, recv: bool) -> Option<usize> {
        let p = &self.st[peer];
        if !p.posted || p.done {
            return None;
        }
        let book = self.book;
        let pt = book.tmpls[p.tmpl as usize];
        let back = ((r + self.n - peer) % self.n) as u32;
        let groups = book.groups_of(&pt);
        let g = groups
            .binary_search_by_key(&(back, recv), |h| (h.rel, h.recv))
            .ok()?;
        (p.cursors[g].next < groups[g].end).then_some(g)
    }

    /// `r` posts its current step's messages at `self.now`.
    fn post(&mut self, r: usize) -> Result<(), CostError> {
        let book = self.book;
        let t = book.tmpls[self.st[r].tmpl as usize];
        let groups = book.groups_of(&t);
        let now = self.now;
        {
            let s = &mut self.st[r];
            s.posted = true;
            s.posted_at = now;
            s.pending = t.nops;
            s.send_until = now;
            s.send_path = s.path;
            s.cursors.clear();
            s.cursors.extend(groups.iter().map(|g| Cursor {
                next: g.start,
                free: now,
            }));
        }
        let path = self.st[r].path;
        if t.nops == 0 {
            self.st[r].both_ways = [false; 2];
            self.step_complete(r, path, true);
            return Ok(());
        }
        let n = self.n;
        if self.any_duplex {
            let (mut sends, mut recvs) = ([false; 2], [false; 2]);
            for g in groups {
                let class = usize::from(self.net.same_host(r, (r + g.rel as usize) % n));
                if g.recv {
                    recvs[class] = true;
                } else {
                    sends[class] = true;
                }
            }
            self.st[r].both_ways = [sends[0] && recvs[0], sends[1] && recvs[1]];
        }
        for (gi, g) in groups.iter().enumerate() {
            let peer = (r + g.rel as usize) % n;
            if g.recv {
                // Buffered messages first (they were sent earlier), then
                // the ones the sender holds for this step.
                self.take_early(r, gi, peer, path)?;
                if let Some(pg) = self.open_group(peer, r, false) {
                    self.match_pair(peer, pg, r, gi, path)?;
                    // Room freed in the pair's buffer: the sender may push
                    // messages for later steps now.
                    self.send_eager(peer, pg, r, path);
                }
            } else {
                if let Some(pg) = self.open_group(peer, r, true) {
                    self.match_pair(r, gi, peer, pg, path)?;
                }
                self.send_eager(r, gi, peer, path);
            }
        }
        Ok(())
    }

    /// Moves one message of `bytes` from `a` to `b` starting no earlier
    /// than now; `path` leads to now. `posted`: `b` has posted the step
    /// that takes it (else it is buffered ahead of `b`).
    fn launch(
        &mut self,
        a: usize,
        ga: usize,
        b: usize,
        bytes: f64,
        path: Breakdown,
        posted: bool,
    ) -> Flight {
        let class = usize::from(self.net.same_host(a, b));
        let link = &self.links[class];
        let (mut wire, mut port_a, mut port_b) = (link.wire, link.port, link.port);
        // A side that sends and receives in this step copies both ways.
        if let Some(d) = link.of.duplex {
            if self.st[a].both_ways[class] {
                wire = wire.min(d);
                port_a = port_a.min(d);
            }
            if posted && self.st[b].both_ways[class] {
                wire = wire.min(d);
                port_b = port_b.min(d);
            }
        }
        let alpha = link.of.alpha_for(bytes);
        let now = self.now;
        let (ia, jb) = (2 * a + class, 2 * b + class);
        // The sender's port pushes the bytes out from `start` to `pushed`;
        // the receiver's port takes them in as they come, or after its
        // earlier messages (`absorbed`); the last byte lands α later.
        let mut start = now.max(self.st[a].cursors[ga].free).max(self.inj_free[ia]);
        if link.of.duplex.is_some() && self.overhead > 0.0 {
            start = self.own[a].reserve(start, self.overhead, now) - self.overhead;
        }
        let xfer = bytes / wire;
        if !self.cores.is_empty() {
            // The sender's overhead needs one of its host's cores, and
            // between ranks of one host so does its copy of the bytes.
            let work = self.overhead + if class == 1 { xfer } else { 0.0 };
            if work > 0.0 {
                start = self.on_core(a, start, work) - work;
            }
        }
        let alone = start + self.overhead + xfer;
        // Between ranks of one host the bytes also pass its bus.
        let pushed = if class == 1 {
            alone.max(self.on_bus(a, start + self.overhead, bytes))
        } else {
            alone
        };
        let mut absorbed = pushed;
        if port_a.is_finite() {
            let busy = self.overhead + bytes / port_a;
            self.inj_free[ia] = start + busy;
            let taken = self.ejection[jb].reserve(start, self.overhead + bytes / port_b, now);
            absorbed = absorbed.max(taken);
        }
        let path = add(path, |p| {
            p.contention += (start - now) + (absorbed - alone);
            p.latency += self.overhead;
            p.transfer += xfer;
        });
        // The sender is held until the receiver's port has the bytes.
        let s = &mut self.st[a];
        s.cursors[ga].next += 1;
        s.cursors[ga].free = pushed;
        s.pending -= 1;
        if absorbed > s.send_until {
            s.send_until = absorbed;
            s.send_path = path;
        }
        if s.pending == 0 {
            let sp = s.send_path;
            self.step_complete(a, sp, false);
        }
        Flight {
            absorbed,
            landed: absorbed + alpha,
            wire,
            path,
        }
    }

    /// γ of a `RecvReduce`: the call's, or where the elements it folds
    /// into were copied (by its step or an earlier one), that of a call
    /// the copy's size (in the cache when small), never more than the
    /// call's.
    fn gamma_of(&self, op: Op) -> f64 {
        match self.net.gamma_by_size {
            Some(curve) if op.copied > 0 => curve.at(op.copied as f64 * self.elem).min(self.gamma),
            _ => self.gamma,
        }
    }

    /// When `b` has folded in a message of `bytes` from `a` whose last byte
    /// lands at `landed` (pieces stream in at `wire`), not starting before
    /// now. Folding overlaps the next piece's flight, except where one core
    /// copies both ways (a [`Link::duplex`] class): there the receiver's
    /// core takes the bytes in, so it folds after they are in, and where it
    /// folds a staged copy ([`Link::staged_fold`]) the fold holds its port.
    fn reduced(&mut self, a: usize, b: usize, op: Op, bytes: f64, landed: f64, wire: f64) -> f64 {
        let gamma = self.gamma_of(op);
        let red = bytes * gamma;
        let cpu = self.cpu_free[b].max(self.now);
        let overlaps = !self.one_core(a, b);
        let d = if overlaps && self.piece > 0.0 && bytes > self.piece {
            let k = (bytes / self.piece).ceil();
            let last = bytes - self.piece * (k - 1.0);
            let first_landed = landed - (bytes - self.piece) / wire;
            let folded = self.on_core(b, first_landed.max(cpu), red);
            (landed + last * gamma)
                .max(landed - last / wire + (self.piece + last) * gamma)
                .max(folded)
        } else if red > 0.0 && self.staged_fold(a, b) {
            // The core that reads the socket folds: no other message gets
            // in meanwhile.
            let port = 2 * b + usize::from(self.net.same_host(a, b));
            let held = self.ejection[port].reserve(landed.max(cpu), red, self.now);
            self.on_core(b, held - red, red)
        } else {
            self.on_core(b, landed.max(cpu), red)
        };
        self.cpu_free[b] = d;
        d
    }

    /// Whether one core copies both ways between `a` and `b`: their link
    /// class has a [`Link::duplex`] rate (shared memory, loopback TCP).
    fn one_core(&self, a: usize, b: usize) -> bool {
        self.links[usize::from(self.net.same_host(a, b))]
            .of
            .duplex
            .is_some()
    }

    /// Whether `b` folds a message from `a` from a copy it made first, on a
    /// one-core link ([`Link::staged_fold`]).
    fn staged_fold(&self, a: usize, b: usize) -> bool {
        let link = &self.links[usize::from(self.net.same_host(a, b))].of;
        link.staged_fold && link.duplex.is_some()
    }

    /// When `b` has taken a message from `a` whose bytes are in at `landed`:
    /// where one core copies both ways, the message's overhead o, the end
    /// of its α, needs `b`'s own core (see `own`); else `landed`.
    fn received(&mut self, a: usize, b: usize, landed: f64) -> f64 {
        let o = self.overhead;
        if !self.one_core(a, b) || o <= 0.0 {
            return landed;
        }
        let from = (landed - o).max(self.now);
        self.own[b].reserve(from, o, self.now).max(landed)
    }

    /// Records that `b`'s receive (of `kind`) is in at `done` by `path`.
    fn deliver(&mut self, b: usize, gb: usize, done: f64, path: Breakdown) {
        self.st[b].cursors[gb].next += 1;
        let msg = Msg {
            rank: b as u32,
            path,
        };
        let id = match self.free_msgs.pop() {
            Some(id) => {
                self.msgs[id as usize] = msg;
                id as usize
            }
            None => {
                self.msgs.push(msg);
                self.msgs.len() - 1
            }
        };
        self.push(done, EV_RECV, id);
    }

    fn mismatch(&self, a: usize, send_step: u64, b: usize, send: u64, recv: u64) -> CostError {
        CostError::LengthMismatch {
            src: a,
            dst: b,
            send_step,
            recv_step: self.st[b].step,
            send_len: send,
            recv_len: recv,
        }
    }

    /// Starts every message from `a` (group `ga`) to `b` (group `gb`) that
    /// both have posted, front to front; `path` leads to now.
    fn match_pair(
        &mut self,
        a: usize,
        ga: usize,
        b: usize,
        gb: usize,
        path: Breakdown,
    ) -> Result<(), CostError> {
        let book = self.book;
        let ta = book.tmpls[self.st[a].tmpl as usize];
        let tb = book.tmpls[self.st[b].tmpl as usize];
        let (end_a, end_b) = (book.groups_of(&ta)[ga].end, book.groups_of(&tb)[gb].end);
        loop {
            let (na, nb) = (self.st[a].cursors[ga].next, self.st[b].cursors[gb].next);
            if na == end_a || nb == end_b {
                return Ok(());
            }
            let send = book.ops[(ta.ops + na) as usize];
            let recv = book.ops[(tb.ops + nb) as usize];
            if send.elems != recv.elems {
                return Err(self.mismatch(a, self.st[a].step, b, send.elems, recv.elems));
            }
            let bytes = send.elems as f64 * self.elem;
            let f = self.launch(a, ga, b, bytes, path, true);
            let landed = self.received(a, b, f.landed);
            let done = match recv.kind {
                Kind::RecvReduce => self.reduced(a, b, recv, bytes, landed, f.wire),
                _ => landed,
            };
            let alpha = f.landed - f.absorbed;
            let rpath = add(f.path, |p| {
                p.latency += alpha;
                p.contention += landed - f.landed;
                p.reduce += done - landed;
            });
            self.deliver(b, gb, done, rpath);
        }
    }

    /// Pushes `a`'s next messages of group `ga` to `b` into the pair's
    /// buffer while they fit (nothing when buffering is off); `path` leads
    /// to now.
    fn send_eager(&mut self, a: usize, ga: usize, b: usize, path: Breakdown) {
        if self.buffer <= 0.0 || self.open_group(b, a, true).is_some() {
            return;
        }
        let book = self.book;
        let ta = book.tmpls[self.st[a].tmpl as usize];
        let end = book.groups_of(&ta)[ga].end;
        let mut queued: f64 = self.early[b]
            .iter()
            .filter(|e| e.from as usize == a)
            .map(|e| e.bytes)
            .sum();
        loop {
            let next = self.st[a].cursors[ga].next;
            if next == end {
                return;
            }
            let op = book.ops[(ta.ops + next) as usize];
            let bytes = op.elems as f64 * self.elem;
            if queued + bytes > self.buffer {
                return;
            }
            queued += bytes;
            let send_step = self.st[a].step;
            let f = self.launch(a, ga, b, bytes, path, false);
            let alpha = f.landed - f.absorbed;
            self.early[b].push(Early {
                from: a as u32,
                elems: op.elems,
                bytes,
                landed: f.landed,
                wire: f.wire,
                send_step,
                path: add(f.path, |p| p.latency += alpha),
            });
        }
    }

    /// `b` takes the buffered messages from `a` that its group `gb`
    /// receives; `path` leads to now.
    fn take_early(
        &mut self,
        b: usize,
        gb: usize,
        a: usize,
        path: Breakdown,
    ) -> Result<(), CostError> {
        if self.early[b].is_empty() {
            return Ok(());
        }
        let book = self.book;
        let tb = book.tmpls[self.st[b].tmpl as usize];
        let end = book.groups_of(&tb)[gb].end;
        while self.st[b].cursors[gb].next < end {
            let Some(i) = self.early[b].iter().position(|e| e.from as usize == a) else {
                return Ok(());
            };
            let e = self.early[b].remove(i);
            let recv = book.ops[(tb.ops + self.st[b].cursors[gb].next) as usize];
            if e.elems != recv.elems {
                return Err(self.mismatch(a, e.send_step, b, e.elems, recv.elems));
            }
            // Whichever came later, the bytes or the receiver, leads here.
            let (from, at) = if e.landed >= self.now {
                (e.path, e.landed)
            } else {
                (path, self.now)
            };
            let taken = self.received(a, b, at);
            let done = match recv.kind {
                Kind::RecvReduce => self.reduced(a, b, recv, e.bytes, taken, e.wire),
                _ => taken,
            };
            let rpath = add(from, |p| {
                p.contention += taken - at;
                p.reduce += done - taken;
            });
            self.deliver(b, gb, done, rpath);
        }
        Ok(())
    }

    fn deadlock(&self) -> CostError {
        let stuck: Vec<usize> = (0..self.n).filter(|&r| !self.st[r].done).collect();
        let mut detail = String::new();
        for &r in stuck.iter().take(4) {
            let s = &self.st[r];
            let t = self.book.tmpls[s.tmpl as usize];
            detail.push_str(&format!("\n  rank {r} in step {} waits on:", s.step));
            let ops = self.book.ops_of(&t);
            for (gi, g) in self.book.groups_of(&t).iter().enumerate() {
                let next = s.cursors.get(gi).map_or(g.start, |c| c.next);
                let peer = (r + g.rel as usize) % self.n;
                for o in &ops[next as usize..g.end as usize] {
                    let what = match o.kind {
                        Kind::Send => "send to",
                        Kind::Recv => "receive from",
                        Kind::RecvReduce => "receive-reduce from",
                    };
                    let ps = &self.st[peer];
                    let there = if ps.done {
                        "finished".to_string()
                    } else {
                        format!("in step {}", ps.step)
                    };
                    detail.push_str(&format!(
                        " {what} rank {peer} ({} elements; rank {peer} is {there});",
                        o.elems
                    ));
                }
            }
        }
        if stuck.len() > 4 {
            detail.push_str(&format!("\n  ... and {} more", stuck.len() - 4));
        }
        CostError::Deadlock { stuck, detail }
    }
}

fn run_engine(c: &Compacted, net: &Network, elem: f64, cutoff: f64) -> Result<Estimate, CostError> {
    // The per-call cost delays every finish alike; the simulation runs
    // without it (and gives up where it would pass the cutoff with it).
    let call = net.call_overhead;
    let (mut finish, mut paths) = Engine::new(&c.book, &c.ranks, net, elem, cutoff).run()?;
    for (f, p) in finish.iter_mut().zip(paths.iter_mut()) {
        *f += call;
        p.latency += call;
    }
    let mut last = 0;
    for (r, &f) in finish.iter().enumerate() {
        if f > finish[last] {
            last = r;
        }
    }
    Ok(Estimate {
        time: finish.get(last).copied().unwrap_or(0.0),
        last_rank: last,
        critical_path: paths.get(last).copied().unwrap_or_default(),
        messages: c.ranks.iter().map(|r| r.sends).sum(),
        bytes: c.ranks.iter().map(|r| r.bytes).sum(),
        max_steps: c.ranks.iter().map(|r| r.steps).max().unwrap_or(0),
        rank_finish: finish,
    })
}

fn check_elem(elem_bytes: u64) -> Result<f64, CostError> {
    if elem_bytes == 0 {
        return Err(CostError::Argument(
            "element size must be at least 1 byte".into(),
        ));
    }
    Ok(elem_bytes as f64)
}

/// Prices `plans` (`plans[r]` is rank r's plan) on `net`, with elements of
/// `elem_bytes` bytes.
///
/// Errors when a plan is not its index's, a peer is out of range, a send and
/// its receive differ in length, the plans deadlock or the network is bad.
/// Region bounds and in-step hazards are not checked ([`crate::validate_plan`]).
pub fn price(plans: &[Plan], net: &Network, elem_bytes: u64) -> Result<Estimate, CostError> {
    let elem = check_elem(elem_bytes)?;
    let n = plans.len();
    if n == 0 {
        return Err(CostError::Argument("no plans to price".into()));
    }
    net.check(n)?;
    let mut book = Book::default();
    let mut ops = Vec::new();
    let mut ranks = Vec::with_capacity(n);
    for (r, plan) in plans.iter().enumerate() {
        if plan.rank != r || plan.nranks != n {
            return Err(CostError::WrongRank {
                index: r,
                plan_rank: plan.rank,
                plan_nranks: plan.nranks,
                nranks: n,
            });
        }
        ranks.push(compact(&mut book, plan, r, &mut ops, elem)?);
    }
    let largest = plans
        .iter()
        .map(|p| p.input_len.max(p.output_len))
        .max()
        .unwrap_or(0);
    let net = net.at_call_bytes(largest.saturating_mul(elem_bytes));
    run_engine(&Compacted { book, ranks }, &net, elem, f64::INFINITY)
}

/// Generates every rank's plan for `algorithm` on `shape` (one rank at a
/// time, compacting as it goes) and prices them on `net`.
pub fn price_call(
    algorithm: Algorithm,
    shape: &Shape,
    options: &PlanOptions,
    net: &Network,
    elem_bytes: u64,
) -> Result<Estimate, CostError> {
    price_call_within(algorithm, shape, options, net, elem_bytes, u64::MAX)
}

/// [`price_call`], giving up with [`CostError::Budget`] as soon as the
/// plans hold more than `max_messages` messages.
pub fn price_call_within(
    algorithm: Algorithm,
    shape: &Shape,
    options: &PlanOptions,
    net: &Network,
    elem_bytes: u64,
    max_messages: u64,
) -> Result<Estimate, CostError> {
    price_call_before(
        algorithm,
        shape,
        options,
        net,
        elem_bytes,
        max_messages,
        f64::INFINITY,
    )
}

/// [`price_call_within`], abandoning the simulation with
/// [`CostError::Pruned`] once it passes `cutoff` seconds.
fn price_call_before(
    algorithm: Algorithm,
    shape: &Shape,
    options: &PlanOptions,
    net: &Network,
    elem_bytes: u64,
    max_messages: u64,
    cutoff: f64,
) -> Result<Estimate, CostError> {
    let elem = check_elem(elem_bytes)?;
    net.check(shape.nranks)?;
    let net = net.at_call_bytes(shape.largest_buffer().saturating_mul(elem_bytes));
    let c = generate_compact(algorithm, shape, options, elem, max_messages)?;
    run_engine(&c, &net, elem, cutoff)
}

/// A lower bound on the time of any set of plans that includes `plan`, on
/// `net`: the rank's own work, counted without waiting for anyone. Its steps
/// run one after another, each its local actions and then its sends, which
/// share the rank's port of their link class (different classes in
/// parallel); and everything it receives passes its ejection ports. Rates
/// that depend on the call's size count at their fastest (pass
/// [`Network::at_call_bytes`] for a tighter bound).
pub fn lower_bound(plan: &Plan, net: &Network, elem_bytes: u64) -> f64 {
    let fastest = |l: &Link| Link {
        bandwidth: l.bandwidth_by_size.map_or(l.bandwidth, |c| {
            c.points().iter().fold(l.bandwidth, |m, p| m.max(p.1))
        }),
        bandwidth_by_size: None,
        duplex_by_size: None,
        ..*l
    };
    let owned;
    let net = if net.by_call_size() {
        let least = |v: f64, c: Option<SizeCurve>| {
            c.map_or(v, |c| c.points().iter().fold(v, |m, p| m.min(p.1)))
        };
        owned = Network {
            inter: fastest(&net.inter),
            intra: fastest(&net.intra),
            gamma: least(net.gamma, net.gamma_by_size),
            copy: least(net.copy, net.copy_by_size),
            ..net.clone()
        };
        &owned
    } else {
        net
    };
    let elem = elem_bytes as f64;
    let o = net.overhead;
    // Time a message of `b` bytes holds a port of `l`, or the wire when
    // ports are unlimited (then only the step's longest message counts).
    let hold = |l: &Link, b: f64| {
        let rate = l.port_rate();
        if rate.is_finite() {
            o + b / rate
        } else {
            o + b / l.bandwidth
        }
    };
    let (mut sends, mut recvs) = (0.0f64, [0.0f64; 2]);
    for step in &plan.steps {
        let mut local = 0.0;
        let mut out = [0.0f64; 2];
        for a in &step.actions {
            match *a {
                Action::Copy { dst, .. } => local += dst.len as f64 * elem * net.copy,
                Action::Reduce { dst, .. } => local += dst.len as f64 * elem * net.gamma,
                Action::Send { peer, src } => {
                    let l = net.link(plan.rank, peer);
                    let k = usize::from(net.same_host(plan.rank, peer));
                    let t = hold(l, src.len as f64 * elem);
                    out[k] = if l.port_rate().is_finite() {
                        out[k] + t
                    } else {
                        out[k].max(t)
                    };
                }
                Action::Recv { peer, dst } | Action::RecvReduce { peer, dst } => {
                    let l = net.link(plan.rank, peer);
                    let k = usize::from(net.same_host(plan.rank, peer));
                    if l.port_rate().is_finite() {
                        recvs[k] += hold(l, dst.len as f64 * elem);
                    }
                }
            }
        }
        sends += local + out[0].max(out[1]);
    }
    sends.max(recvs[0]).max(recvs[1])
}

/// What three ranks' plans (0, N/2, N − 1) tell of a candidate before it
/// is generated in full.
struct Sampled {
    /// N × their mean messages (exact where every rank sends alike).
    messages: u64,
    /// N × their least messages.
    at_least: u64,
    /// The largest of their [`lower_bound`]s.
    bound: f64,
}

fn sample(
    algorithm: Algorithm,
    shape: &Shape,
    options: &PlanOptions,
    net: &Network,
    elem_bytes: u64,
) -> Result<Sampled, CostError> {
    let n = shape.nranks;
    let mut ranks = vec![0, n / 2, n.saturating_sub(1)];
    ranks.dedup();
    let (mut sum, mut least, mut bound) = (0u128, u128::MAX, 0.0f64);
    for &r in &ranks {
        let plan = generate(algorithm, shape, r, options)?;
        let sent = plan.messages_sent() as u128;
        sum += sent;
        least = least.min(sent);
        bound = bound.max(lower_bound(&plan, net, elem_bytes));
    }
    let clamp = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
    Ok(Sampled {
        messages: clamp(sum * n as u128 / ranks.len() as u128),
        at_least: clamp(least * n as u128),
        bound,
    })
}

// ---------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------

/// Whether `algorithm`'s plans for `collective` depend on
/// [`PlanOptions::chunk_elems`] (pipelined algorithms).
pub fn pipelines(algorithm: Algorithm, collective: Collective) -> bool {
    matches!(
        (algorithm, collective),
        (
            Algorithm::Tree,
            Collective::Broadcast | Collective::Reduce | Collective::AllReduce
        ) | (Algorithm::DoubleBinaryTree, Collective::AllReduce)
            | (Algorithm::Ring, Collective::Broadcast)
    )
}

/// The call shape of `collective` at `bytes` (the largest per-rank buffer,
/// nccl-tests' and braid-bench's convention) over `nranks` ranks of
/// `elem_bytes`-byte elements: sizes round down to whole elements (whole
/// blocks of `nranks` elements for the block collectives) but never below
/// one element; barrier has no data.
pub fn shape_for(
    collective: Collective,
    bytes: u64,
    nranks: usize,
    elem_bytes: u64,
    root: usize,
) -> Result<Shape, CostError> {
    check_elem(elem_bytes)?;
    if nranks == 0 {
        return Err(CostError::Argument(
            "a group needs at least one rank".into(),
        ));
    }
    if collective.rooted() && root >= nranks {
        return Err(CostError::Argument(format!(
            "root {root} is out of range for {nranks} ranks"
        )));
    }
    let n = nranks as u64;
    let count = |per: u64| if bytes == 0 { 0 } else { (bytes / per).max(1) };
    let counts = match collective {
        Collective::Broadcast | Collective::Reduce | Collective::AllReduce => {
            Counts::Single(count(elem_bytes))
        }
        Collective::Scatter
        | Collective::Gather
        | Collective::AllGather
        | Collective::ReduceScatter => {
            let per = n.checked_mul(elem_bytes).ok_or_else(|| {
                CostError::Argument(format!("{nranks} ranks × {elem_bytes} B overflows"))
            })?;
            Counts::Blocks(vec![count(per); nranks])
        }
        Collective::AllToAll => {
            let per = n.checked_mul(elem_bytes).ok_or_else(|| {
                CostError::Argument(format!("{nranks} ranks × {elem_bytes} B overflows"))
            })?;
            let cells = nranks.checked_mul(nranks).filter(|c| *c <= 1 << 26);
            let cells = cells.ok_or_else(|| {
                CostError::Argument(format!(
                    "an all_to_all count matrix of {nranks}×{nranks} is too large to build"
                ))
            })?;
            Counts::Matrix {
                counts: vec![count(per); cells],
                partial: false,
            }
        }
        Collective::Barrier => Counts::None,
    };
    Ok(Shape::new(collective, nranks, root, counts))
}

/// What [`tune`] tries.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneOptions {
    /// Chunk sizes in bytes tried for pipelined algorithms ([`pipelines`]);
    /// those at or above the message size collapse into one candidate.
    pub chunk_bytes: Vec<u64>,
    /// Candidates whose plans hold more messages are skipped
    /// ([`CostError::Budget`]) instead of priced.
    pub max_messages: u64,
    /// Root of rooted collectives.
    pub root: usize,
    /// Only these algorithms (all of the collective's when `None`).
    pub algorithms: Option<Vec<Algorithm>>,
    /// Price every candidate to the end. Otherwise (the default) the
    /// candidates are priced most promising first (by the [`lower_bound`]
    /// of three ranks' plans: 0, N/2 and N − 1), a candidate whose bound
    /// already exceeds the best time so far is not generated, and a
    /// simulation is abandoned as soon as it passes the best time so far
    /// (both [`CostError::Pruned`]); a candidate whose sampled ranks show
    /// it must exceed `max_messages` is not generated either. Pruning never
    /// changes the choice or its time, only what is known of the losers.
    pub exhaustive: bool,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            chunk_bytes: vec![16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20],
            max_messages: 1 << 26,
            root: 0,
            algorithms: None,
            exhaustive: false,
        }
    }
}

/// One (algorithm, chunk) tried by [`tune`].
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The pipeline chunk in bytes (`BRAID_CHUNK_BYTES`) for pipelined
    /// algorithms; `None` when the plan does not depend on it (the
    /// network's [`Network::pipeline_bytes`] is used).
    pub chunk_bytes: Option<u64>,
    /// The options the plans were generated with.
    pub options: PlanOptions,
    /// The prediction, or why there is none (over budget, say).
    pub outcome: Result<Estimate, CostError>,
}

impl Candidate {
    /// The predicted time, if priced.
    pub fn time(&self) -> Option<f64> {
        self.outcome.as_ref().ok().map(|e| e.time)
    }
}

/// Every candidate [`tune`] tried, cheapest first (those it could not price
/// last).
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// The call shape priced.
    pub shape: Shape,
    /// Its size in bytes (the largest per-rank buffer).
    pub bytes: u64,
    /// Element size in bytes.
    pub elem_bytes: u64,
    /// The candidates, cheapest first.
    pub candidates: Vec<Candidate>,
}

impl Tuning {
    /// The cheapest candidate, unless none could be priced.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first().filter(|c| c.outcome.is_ok())
    }
}

impl fmt::Display for Tuning {
    /// The tuning table: one line per candidate, `*` on the cheapest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} N={} {} B: {:>20} {:>10} {:>14}",
            self.shape.collective, self.shape.nranks, self.bytes, "algorithm", "chunk", "predicted"
        )?;
        for (i, c) in self.candidates.iter().enumerate() {
            let mark = if i == 0 && c.outcome.is_ok() {
                '*'
            } else {
                ' '
            };
            let chunk = c
                .chunk_bytes
                .map_or_else(|| "-".to_string(), |b| b.to_string());
            match &c.outcome {
                Ok(e) => writeln!(
                    f,
                    "{mark} {:>20} {:>10} {:>12.3} µs",
                    c.algorithm.name(),
                    chunk,
                    e.time * 1e6
                )?,
                Err(e) => writeln!(f, "  {:>20} {:>10} skipped: {e}", c.algorithm.name(), chunk)?,
            }
        }
        Ok(())
    }
}

/// Prices every (algorithm, chunk) candidate for `collective` at `bytes`
/// over `nranks` ranks of `elem_bytes`-byte elements on `net`, cheapest
/// first. A candidate that cannot be priced (over the message budget, say)
/// is kept with its error; the call fails only on bad arguments.
pub fn tune(
    collective: Collective,
    bytes: u64,
    nranks: usize,
    elem_bytes: u64,
    net: &Network,
    opts: &TuneOptions,
) -> Result<Tuning, CostError> {
    let shape = shape_for(collective, bytes, nranks, elem_bytes, opts.root)?;
    net.check(nranks)?;
    let actual = shape.largest_buffer().saturating_mul(elem_bytes);
    // Every candidate is priced on the links as a call of this size sees them.
    let net = &*net.at_call_bytes(actual);
    let algorithms: Vec<Algorithm> = match &opts.algorithms {
        Some(list) => {
            if let Some(a) = list.iter().find(|a| !a.supports(collective)) {
                return Err(CostError::Argument(format!(
                    "algorithm '{a}' does not implement {collective}"
                )));
            }
            list.clone()
        }
        None => collective.algorithms().to_vec(),
    };
    // Every (algorithm, chunk) with its network and estimated messages.
    let mut todo: Vec<(Sampled, Candidate, Network)> = Vec::new();
    let mut candidates = Vec::new();
    for alg in algorithms {
        let chunks: Vec<Option<u64>> = if pipelines(alg, collective) {
            // The double binary tree pipelines each half separately.
            let len = match alg {
                Algorithm::DoubleBinaryTree => shape.single().div_ceil(2),
                _ => shape.single(),
            }
            .max(1);
            let mut chunks: Vec<u64> = opts
                .chunk_bytes
                .iter()
                .map(|&b| (b / elem_bytes).max(1))
                .collect();
            chunks.sort_unstable();
            chunks.dedup();
            // Chunks at or above the length all mean "one chunk".
            if let Some(i) = chunks.iter().position(|&c| c >= len) {
                chunks.truncate(i + 1);
            }
            chunks.into_iter().rev().map(Some).collect()
        } else {
            vec![None]
        };
        for chunk_elems in chunks {
            let options = PlanOptions {
                chunk_elems: chunk_elems.unwrap_or(0),
            };
            let chunk_bytes = chunk_elems.map(|c| c * elem_bytes);
            let net = match chunk_bytes {
                Some(b) if net.pipeline_bytes > 0 => net.clone().with_pipeline_bytes(b),
                _ => net.clone(),
            };
            let mut cand = Candidate {
                algorithm: alg,
                chunk_bytes,
                options,
                outcome: Err(CostError::Pruned {
                    best: f64::INFINITY,
                }),
            };
            let est = if opts.exhaustive {
                Sampled {
                    messages: 0,
                    at_least: 0,
                    bound: 0.0,
                }
            } else {
                match sample(alg, &shape, &cand.options, &net, elem_bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        cand.outcome = Err(e);
                        candidates.push(cand);
                        continue;
                    }
                }
            };
            todo.push((est, cand, net));
        }
    }
    // The most promising first (smallest lower bound), so that the best
    // time found early prunes the rest; ties by messages (cost to price).
    todo.sort_by(|x, y| {
        x.0.bound
            .total_cmp(&y.0.bound)
            .then(x.0.messages.cmp(&y.0.messages))
    });
    let mut best = f64::INFINITY;
    for (est, mut cand, net) in todo {
        let alg = cand.algorithm;
        cand.outcome = if opts.exhaustive {
            price_call_within(
                alg,
                &shape,
                &cand.options,
                &net,
                elem_bytes,
                opts.max_messages,
            )
        } else if est.bound > best {
            Err(CostError::Pruned { best })
        } else if est.at_least > opts.max_messages {
            Err(CostError::Budget {
                limit: opts.max_messages,
            })
        } else {
            price_call_before(
                alg,
                &shape,
                &cand.options,
                &net,
                elem_bytes,
                opts.max_messages,
                best,
            )
        };
        if let Ok(e) = &cand.outcome {
            best = best.min(e.time);
        }
        candidates.push(cand);
    }
    candidates.sort_by(|a, b| match (a.time(), b.time()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(Tuning {
        shape,
        bytes: actual,
        elem_bytes,
        candidates,
    })
}
