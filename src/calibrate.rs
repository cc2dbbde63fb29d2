//! Calibration: the latency α, bandwidth B and per-message overhead o of
//! each kind of link a communicator uses, and the reduction and copy costs
//! γ of this host, which the cost model needs to choose algorithms.
//!
//! # What runs, and when
//! A communicator calibrates once, collectively: at its first call whose
//! algorithm the model chooses, or when every rank calls
//! [`crate::Communicator::calibrate`].
//!
//! 1. Every rank names the link kind of each peer
//!    ([`braid_transports::Transport::link_kind`]: `local`, `shm`, `tcp`) and
//!    the ranks all-gather these rows. Rank 0 adds its decision per kind:
//!    figures from `BRAID_LINK`, from the cache, the documented defaults
//!    (`BRAID_CALIBRATE=off`), or "measure".
//! 2. Every rank times a reduction and a copy of 4 MiB of f32 in 256 KiB
//!    pieces (γ, copy). Then, for each kind to measure, the ranks pair up
//!    (greedily in rank order, each with the highest free rank it reaches by
//!    that kind: 0 with 7, 1 with 6, ... of 8, so that pairs span near and
//!    far ranks as a collective's steps do; the lowest where ranks take
//!    turns at cores) and all pairs measure at once, as all ranks compete
//!    in a collective: ping-pong of 8-byte messages (α: the best of 4 runs of 4
//!    round trips, 2 runs on links slower than 1 ms), bursts of 16 messages
//!    in one step (o, what a message costs beyond its step: the best of 3),
//!    and messages of a size s that takes about 2 ms (1 to 16 MiB) and of s/4,
//!    sent both ways at once as a collective's steps do (B: the slope
//!    between their medians of 3, after one untimed).
//!    α = round trip / 2 − o.
//! 3. An all-gather hands every rank what every pair measured; a link's
//!    rates are the slowest pair's (a collective's steps wait for their
//!    slowest transfer), its other figures the median over the pairs (γ
//!    and copy: over the ranks), computed alike on every rank, so that
//!    every rank prices the same network, bit for bit, and makes the same
//!    choices.
//! 4. The host bus ([`braid_topologies::Network::host_bandwidth`]), when a
//!    host runs two or more ranks over `local`, `shm` or `tcp` links: the
//!    ranks of each host (grouped by host identity) run at once the steps
//!    of a ring all-gather at two sizes (see `measure_bus`); each rank's
//!    slope times the host's ranks is its estimate, and the median over the
//!    ranks, all-gathered, is the figure. Rank 0 writes what was measured
//!    to the cache.
//!
//! The cache is a text file per host under `$XDG_CACHE_HOME/braid` (else
//! `~/.cache/braid`), one line per figure, keyed by host identity, build
//! (debug or release), the transport settings in the environment, link kind
//! and number of ranks; entries older than 30 days are measured again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use braid_topologies::cost::DEFAULT_BUFFER_BYTES;
use braid_topologies::{
    generate, price, Action, Algorithm, BufferId, Collective, Counts, Hosts, Injection, Link,
    Network, Plan, PlanOptions, Region, Shape, SizeCurve,
};
use braid_transports::Transport;

use crate::config::{Calibrate, LinkSpec};
use crate::dtype::{reduce_into, DType, ReduceOp};
use crate::executor::{call_code, run_plan, Buffers, Fingerprint, RunOptions};
use crate::{Config, Error, Result};

/// Link kinds with a code of their own: a transport wrapped by
/// `BRAID_SHAPE` (`local+shape`, ...) is `shaped`, any other name `other`.
pub const LINK_KINDS: [&str; 6] = ["local", "shm", "tcp", "cuda", "shaped", "other"];
const SLOTS: usize = LINK_KINDS.len();

/// The sequence number of calibration messages (never a call's).
const CALIBRATION_SEQ: u64 = u64::MAX;

/// Cache entries older than this are measured again.
const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The measuring method: cached figures of another version are measured
/// again.
const METHOD: &str = "10";
/// Lines kept in a cache file (the newest).
const CACHE_MAX_LINES: usize = 256;

/// Where a figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Measured by this communicator.
    Measured,
    /// Read from the calibration cache.
    Cached,
    /// Given by `BRAID_LINK` or [`Config::links`].
    Override,
    /// The documented default (`BRAID_CALIBRATE=off`).
    Default,
}

impl Source {
    fn code(self) -> f64 {
        match self {
            Source::Override => 1.0,
            Source::Cached => 2.0,
            Source::Default => 3.0,
            Source::Measured => 4.0,
        }
    }

    fn from_code(c: f64) -> Option<Source> {
        Some(match c as u8 {
            1 => Source::Override,
            2 => Source::Cached,
            3 => Source::Default,
            4 => Source::Measured,
            _ => return None,
        })
    }

    /// A word for logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Source::Measured => "measured",
            Source::Cached => "cached",
            Source::Override => "BRAID_LINK",
            Source::Default => "default",
        }
    }
}

/// The figures of one link kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFigures {
    /// `local`, `shm`, `tcp`, `cuda`, `shaped` or `other`.
    pub kind: &'static str,
    /// Latency α in seconds.
    pub alpha: f64,
    /// Bandwidth B in bytes per second, one way.
    pub bandwidth: f64,
    /// Bytes per second in each direction while both directions of a pair
    /// are busy, where that is below `bandwidth` (one core copies both
    /// ways: shared memory, loopback TCP; [`braid_topologies::Link::duplex`]);
    /// `None`: full duplex, or not measured.
    pub duplex: Option<f64>,
    /// B by the size of a call ([`braid_topologies::Link::bandwidth_by_size`]):
    /// at [`HOT_BYTES`] and at the streams B was measured with; `None`
    /// where not measured (kinds other than `local`, `shm` and `tcp`,
    /// crowded hosts, `BRAID_LINK`, defaults).
    pub bandwidth_by_size: Option<SizeCurve>,
    /// The duplex rate by the size of a call: as `bandwidth_by_size`, and
    /// over a span of buffers beyond the caches.
    pub duplex_by_size: Option<SizeCurve>,
    /// Per-message overhead o in seconds.
    pub overhead: f64,
    /// What a call costs besides its steps, in seconds (entering and
    /// leaving, setting its plan up): a round trip alone against one of
    /// four in a row. 0 when not measured.
    pub call_overhead: f64,
    /// What a rank that waited for a message needs of a core to resume,
    /// in seconds, on a host with more ranks than cores
    /// ([`braid_topologies::Network::wake`]); 0 elsewhere.
    pub wake: f64,
    /// Latency by message size, measured at [`CURVE_BYTES`] on links fast
    /// enough for it (round trips under [`CURVE_MAX_RTT`]); `None` when not
    /// measured (slow links, `BRAID_LINK`, defaults): `alpha` for all.
    pub latency_by_size: Option<SizeCurve>,
    /// Where they came from.
    pub source: Source,
    /// Ordered pairs of ranks joined by this kind.
    pub pairs: usize,
    /// How a rank's messages over this kind share its port: one port at the
    /// link's bandwidth (a NIC; a core that copies a message at a time:
    /// `tcp`, `shm`, `local`, any kind given by `BRAID_LINK`), or none
    /// (links shaped one by one by `BRAID_SHAPE` without `ports`).
    pub injection: Injection,
}

/// How a rank's messages over link kind `kind` share its port (see
/// [`LinkFigures::injection`]): 0 one port at the link's rate, 1 no
/// limit.
fn port_mode(kind: &str) -> f64 {
    let per_link =
        kind == "shaped" && !std::env::var("BRAID_SHAPE").is_ok_and(|v| v.contains("ports"));
    f64::from(u8::from(per_link))
}

/// What a communicator knows of its links after calibrating; identical on
/// every rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// One entry per link kind the group uses, in [`LINK_KINDS`] order.
    pub links: Vec<LinkFigures>,
    /// γ: seconds per byte reduced.
    pub gamma: f64,
    /// Seconds per byte copied locally.
    pub copy: f64,
    /// Where γ and the copy cost came from.
    pub reduce_source: Source,
    /// Bytes per second of messages one host moves between its own ranks,
    /// all of them at once ([`Network::host_bandwidth`]); infinite when
    /// there is no host bus (no host runs two ranks, links shaped by
    /// `BRAID_SHAPE` or given by `BRAID_LINK`, or `BRAID_CALIBRATE=off`).
    pub host_bandwidth: f64,
    /// The host bus by the size of a call ([`Network::host_bandwidth_by_size`]):
    /// at [`HOT_BYTES`] and at the size `host_bandwidth` was measured at;
    /// `None` without a bus or where not measured.
    pub host_bandwidth_by_size: Option<SizeCurve>,
    /// Where the host bus figure came from.
    pub host_source: Source,
    /// The network the cost model prices plans on.
    pub network: Network,
    /// How long calibrating took on this rank.
    pub elapsed: Duration,
    /// What each pair measured this time (none where the figures were
    /// cached, given or defaults), from which the links' figures were
    /// taken: pairs far apart in rank order may be slower than neighbours.
    pub pairs: Vec<PairFigures>,
}

/// Pairs [`Calibration::describe_pairs`] lists.
pub const PAIRS_DESCRIBED: usize = 64;

/// What one pair of ranks measured of a link kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairFigures {
    /// The link kind ([`LINK_KINDS`]).
    pub kind: &'static str,
    /// The ranks, the one that led first.
    pub ranks: (usize, usize),
    /// Latency α in seconds.
    pub alpha: f64,
    /// Per-message overhead o in seconds.
    pub overhead: f64,
    /// Bandwidth one way, bytes per second.
    pub bandwidth: f64,
    /// Bytes per second each way with both directions busy; 0 where not
    /// measured.
    pub duplex: f64,
}

impl Calibration {
    /// What each pair measured, for logs: "shm 0-7: alpha 0.31 us, o 0.20
    /// us, B 7.463 GB/s, each way at once 4.454 GB/s; ..."; the first
    /// [`PAIRS_DESCRIBED`] pairs (a group of thousands of ranks would print
    /// a line of hundreds of kilobytes), then how many more
    /// [`Calibration::pairs`] holds; empty when nothing was measured.
    pub fn describe_pairs(&self) -> String {
        let mut pairs: Vec<String> = self
            .pairs
            .iter()
            .take(PAIRS_DESCRIBED)
            .map(|p| {
                let duplex = if p.duplex > 0.0 {
                    format!(", each way at once {:.3} GB/s", p.duplex / 1e9)
                } else {
                    String::new()
                };
                format!(
                    "{} {}-{}: alpha {:.2} us, o {:.2} us, B {:.3} GB/s{duplex}",
                    p.kind,
                    p.ranks.0,
                    p.ranks.1,
                    p.alpha * 1e6,
                    p.overhead * 1e6,
                    p.bandwidth / 1e9
                )
            })
            .collect();
        if self.pairs.len() > PAIRS_DESCRIBED {
            pairs.push(format!("{} more pairs", self.pairs.len() - PAIRS_DESCRIBED));
        }
        pairs.join("; ")
    }

    /// One line per figure, for logs.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for l in &self.links {
            let port = match l.injection {
                Injection::Link => "one port".to_string(),
                Injection::Unlimited => "no port limit".to_string(),
                Injection::Limit(r) => format!("port {:.1} GB/s", r / 1e9),
            };
            // Rates by call size, first and last point:
            // " (calls of 262144 B: 45.872, 16777216 B: 13.557)".
            let sizes = |c: Option<SizeCurve>| {
                c.map_or(String::new(), |c| {
                    let p = c.points();
                    let (first, last) = (p[0], p[p.len() - 1]);
                    format!(
                        " (calls of {} B: {:.3}, {} B: {:.3})",
                        first.0,
                        first.1 / 1e9,
                        last.0,
                        last.1 / 1e9
                    )
                })
            };
            let by_size = sizes(l.bandwidth_by_size);
            let duplex = l.duplex.map_or(String::new(), |d| {
                format!(
                    " one way, {:.3} GB/s each way at once{}",
                    d / 1e9,
                    sizes(l.duplex_by_size)
                )
            });
            let fast = l.latency_by_size.map_or(String::new(), |c| {
                let points: Vec<String> = c
                    .points()
                    .iter()
                    .map(|(b, a)| format!("{b} B {:.2}", a * 1e6))
                    .collect();
                format!(" (by size: {} us)", points.join(", "))
            });
            let wake = if l.wake > 0.0 {
                format!(", wake {:.2} us", l.wake * 1e6)
            } else {
                String::new()
            };
            s.push_str(&format!(
                "{}: alpha {:.2} us{fast}, B {:.3} GB/s{by_size}{duplex}, o {:.2} us, call {:.2} us{wake}, {port} ({}, {} pairs); ",
                l.kind,
                l.alpha * 1e6,
                l.bandwidth / 1e9,
                l.overhead * 1e6,
                l.call_overhead * 1e6,
                l.source.name(),
                l.pairs
            ));
        }
        let cold = match (self.network.gamma_by_size, self.network.copy_by_size) {
            (Some(g), Some(c)) => {
                let (b, g) = g.points()[g.points().len() - 1];
                let c = c.points()[c.points().len() - 1].1;
                format!(" (calls of {b} B: {:.3}, {:.3})", g * 1e9, c * 1e9)
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "gamma {:.3} ns/B, copy {:.3} ns/B{cold} ({}); ",
            self.gamma * 1e9,
            self.copy * 1e9,
            self.reduce_source.name(),
        ));
        if self.host_bandwidth.is_finite() {
            let hot = self.host_bandwidth_by_size.map_or(String::new(), |c| {
                let p = c.points();
                let ((b, c), (stream, _)) = (p[0], p[p.len() - 1]);
                format!(" (calls of {b} B: {:.2}, {stream} B)", c / 1e9)
            });
            s.push_str(&format!(
                "host bus {:.2} GB/s{hot} ({}); ",
                self.host_bandwidth / 1e9,
                self.host_source.name()
            ));
        } else {
            s.push_str("no host bus; ");
        }
        if self.network.host_cores > 0 {
            s.push_str(&format!(
                "ranks take turns at {} cores per host; ",
                self.network.host_cores
            ));
        }
        s.push_str(&format!(
            "calibrated in {:.1} ms",
            self.elapsed.as_secs_f64() * 1e3
        ));
        s
    }
}

/// The network a [`Calibration::describe`] line of a group of `nranks`
/// ranks on one host stands for (the line `BRAID_DEBUG=tuning` prints after
/// "braid tuning network: "), priced with pieces of `chunk_bytes`: so that
/// `braid-sim --network` can replay a calibration and rows measured with it
/// can be priced again. One link kind only (the line does not say which
/// ranks a second kind joins); figures as printed (3 or 4 digits).
pub fn network_from_description(
    text: &str,
    nranks: usize,
    chunk_bytes: u64,
) -> std::result::Result<Network, String> {
    let number = |s: &str, after: &str| -> std::result::Result<f64, String> {
        let at = s
            .find(after)
            .ok_or_else(|| format!("no '{}' in '{s}'", after.trim()))?;
        let rest = &s[at + after.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
            .unwrap_or(rest.len());
        rest[..end]
            .parse()
            .map_err(|_| format!("'{}' is not a number in '{s}'", &rest[..end]))
    };
    // "(calls of A B: x, C B: y)" → [(A, x·scale), (C, y·scale)]; a last
    // point without a value ("C B)") gets `last`.
    let calls = |s: &str, scale: f64, last: f64| -> Vec<(f64, f64)> {
        let Some(at) = s.find("(calls of ") else {
            return Vec::new();
        };
        let inner = &s[at + 10..];
        let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
        inner
            .split(", ")
            .filter_map(|p| {
                let (bytes, value) = p.split_once(" B")?;
                let value = value.trim_start_matches(':').trim();
                let v = if value.is_empty() {
                    last
                } else {
                    value.parse::<f64>().ok()? * scale
                };
                Some((bytes.trim().parse().ok()?, v))
            })
            .collect()
    };
    let curve = |p: &[(f64, f64)]| SizeCurve::new(p).map_err(|e| e.to_string());
    let segments: Vec<&str> = text.split("; ").map(str::trim).collect();
    let mut links = Vec::new();
    let (mut gamma, mut copy, mut memory) = (DEFAULT_GAMMA, DEFAULT_COPY, None);
    let (mut bus, mut bus_curve, mut cores) = (f64::INFINITY, Vec::new(), 0usize);
    for seg in &segments {
        if let Some(rest) = seg.strip_prefix("gamma ") {
            gamma = number(rest, "")? * 1e-9;
            copy = number(rest, "copy ")? * 1e-9;
            if let Some(at) = rest.find("(calls of ") {
                let cold = &rest[at + 10..];
                let size = number(cold, "")?;
                let g = number(cold, ": ")? * 1e-9;
                let c = number(cold, ", ")? * 1e-9;
                let at =
                    |hot: f64, cold: f64| curve(&[(HOT_REDUCE_BYTES as f64, hot), (size, cold)]);
                memory = Some((at(gamma, g)?, at(copy, c)?));
            }
        } else if let Some(rest) = seg.strip_prefix("host bus ") {
            bus = number(rest, "")? * 1e9;
            bus_curve = calls(rest, 1e9, bus);
        } else if let Some(rest) = seg.strip_prefix("ranks take turns at ") {
            cores = number(rest, "")? as usize;
        } else if let Some((kind, rest)) = seg.split_once(": alpha ") {
            let kind = LINK_KINDS
                .iter()
                .copied()
                .find(|k| *k == kind || (*k == "shaped" && kind.ends_with("+shape")))
                .unwrap_or("other");
            let alpha = number(rest, "")? * 1e-6;
            let latency_by_size = match rest.find("(by size: ") {
                Some(at) => {
                    let inner = &rest[at + 10..];
                    let inner = &inner[..inner.find(" us)").unwrap_or(inner.len())];
                    let points: Vec<(f64, f64)> = inner
                        .split(", ")
                        .filter_map(|p| {
                            let (b, a) = p.split_once(" B ")?;
                            Some((b.parse().ok()?, a.parse::<f64>().ok()? * 1e-6))
                        })
                        .collect();
                    Some(curve(&points)?)
                }
                None => None,
            };
            let b_at = rest.find(", B ").ok_or("no ', B ' in a link")?;
            let b_part = &rest[b_at..];
            let bandwidth = number(b_part, ", B ")? * 1e9;
            let (b_text, d_text) = match b_part.find(" one way, ") {
                Some(at) => (&b_part[..at], Some(&b_part[at + 10..])),
                None => (b_part, None),
            };
            let b_text = &b_text[..b_text.find(", o ").unwrap_or(b_text.len())];
            let b_points = calls(b_text, 1e9, bandwidth);
            let stream = b_points.last().map(|p| p.0);
            let bandwidth_by_size = (!b_points.is_empty())
                .then(|| curve(&b_points))
                .transpose()?;
            let (duplex, duplex_by_size) = match d_text {
                Some(d) => {
                    let rate = number(d, "")? * 1e9;
                    let d = &d[..d.find(", o ").unwrap_or(d.len())];
                    let mut p = calls(d, 1e9, rate);
                    // Three points: the hot, the stream's (not printed), the cold.
                    if let (Some(s), [_, last]) = (stream, p.as_slice()) {
                        if last.0 != s {
                            p.insert(1, (s, rate));
                        }
                    }
                    (Some(rate), (!p.is_empty()).then(|| curve(&p)).transpose()?)
                }
                None => (None, None),
            };
            let tail = &rest[rest.find(", o ").ok_or("no ', o ' in a link")?..];
            let wake = if tail.contains(", wake ") {
                number(tail, ", wake ")? * 1e-6
            } else {
                0.0
            };
            links.push(LinkFigures {
                kind,
                alpha,
                bandwidth,
                duplex,
                bandwidth_by_size,
                duplex_by_size,
                overhead: number(tail, ", o ")? * 1e-6,
                call_overhead: number(tail, ", call ")? * 1e-6,
                wake,
                latency_by_size,
                source: Source::Measured,
                pairs: nranks * nranks.saturating_sub(1),
                injection: if tail.contains("no port limit") {
                    Injection::Unlimited
                } else {
                    Injection::Link
                },
            });
        }
    }
    let [only] = links.as_slice() else {
        return Err(format!(
            "expected one link kind in '{text}', found {}",
            links.len()
        ));
    };
    let bus_by_size = match bus_curve.as_slice() {
        [hot, ..] if bus.is_finite() => {
            let stream = match bus_curve.get(1) {
                Some(p) => p.0,
                // Lines before the stream point was printed: measure_bus's
                // size for this group (a hot point: it had a core per rank).
                None => {
                    let steps = nranks.saturating_sub(1).max(1) as u64;
                    (steps * bus_step_bytes(only.bandwidth, steps, 1.0)) as f64
                }
            };
            Some(curve(&[*hot, (stream, bus)])?)
        }
        _ => None,
    };
    Ok(HostFigures {
        memory,
        hosts: Some(Hosts::Blocks(nranks.max(1))),
        bus,
        bus_by_size,
        cores: (cores > 0).then_some(cores),
    }
    .apply(build_network(&[], &links, gamma, copy, chunk_bytes)))
}

/// What a calibration adds to [`build_network`]'s links, γ and copy: γ and
/// copy by call size, and where one host runs several ranks, which ranks
/// share a host, its bus (C, by call size) and the cores they take turns
/// at.
struct HostFigures {
    memory: Option<(SizeCurve, SizeCurve)>,
    /// Which ranks share a host, for one link kind (with several, the
    /// kinds other than TCP join hosts already).
    hosts: Option<Hosts>,
    /// C; infinite: no bus.
    bus: f64,
    bus_by_size: Option<SizeCurve>,
    cores: Option<usize>,
}

impl HostFigures {
    fn apply(self, mut network: Network) -> Network {
        if let Some((g, c)) = self.memory {
            network = network.with_memory_by_size(g, c);
        }
        if self.bus.is_finite() || self.cores.is_some() {
            if let Some(hosts) = self.hosts {
                let link = network.inter;
                network = network.with_hosts(hosts, link);
            }
        }
        if self.bus.is_finite() {
            network = network.with_host_bandwidth(self.bus);
            if let Some(c) = self.bus_by_size {
                network = network.with_host_bandwidth_by_size(c);
            }
        }
        if let Some(cores) = self.cores {
            network = network.with_host_cores(cores);
        }
        network
    }
}

/// The figures used without measuring (`BRAID_CALIBRATE=off`), and the
/// overhead of a `BRAID_LINK` that gives none: α (s), B (B/s), o (s).
pub fn default_link(kind: &str) -> (f64, f64, f64) {
    match kind {
        "local" => (1e-6, 8e9, 0.2e-6),
        "shm" => (1e-6, 8e9, 0.2e-6),
        "cuda" => (10e-6, 20e9, 2e-6),
        // tcp, shaped, other: a 10 Gbit/s network.
        _ => (20e-6, 1.25e9, 2e-6),
    }
}

/// Default γ and copy cost (seconds per byte): 20 GB/s.
pub const DEFAULT_GAMMA: f64 = 0.05e-9;
/// Default copy cost (seconds per byte).
pub const DEFAULT_COPY: f64 = 0.05e-9;

fn kind_code(name: &str) -> usize {
    let name = if name.ends_with("+shape") {
        "shaped"
    } else {
        name
    };
    LINK_KINDS
        .iter()
        .position(|k| *k == name)
        .unwrap_or(SLOTS - 1)
}

// ---------------------------------------------------------------------------
// Host identity and the cache
// ---------------------------------------------------------------------------

/// This host's identity: `BRAID_HOST_ID` if set, else host name and boot id
/// (as the transports use it).
pub fn host_identity() -> String {
    if let Ok(id) = std::env::var("BRAID_HOST_ID") {
        if !id.is_empty() {
            return clean(&format!("id:{id}"));
        }
    }
    clean(&format!("{}/{}", host_name(), boot_id()))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// No tabs, newlines or spaces in a cache field.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The transport settings that change what a link measures.
fn settings_key() -> String {
    const VARS: [&str; 8] = [
        "BRAID_SHAPE",
        "BRAID_SOCKETS_PER_PEER",
        "BRAID_SOCKET_BUFFER",
        "BRAID_SOCKET_IFNAME",
        "BRAID_SHM_RING",
        "BRAID_SHM_CMA",
        "BRAID_SPIN_US",
        "BRAID_CHUNK_BYTES",
    ];
    let set: Vec<String> = VARS
        .iter()
        .filter_map(|v| std::env::var(v).ok().map(|x| format!("{v}={x}")))
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        clean(&set.join(";"))
    }
}

fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The cache directory: `dir` if given, else `$XDG_CACHE_HOME/braid`, else
/// `~/.cache/braid`.
pub fn cache_dir(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = dir {
        return Some(d.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("braid"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("braid"))
}

/// The cache file of this host in `dir`.
pub fn cache_file(dir: &Path) -> PathBuf {
    let host: String = host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    dir.join(format!("calibration-{host}.tsv"))
}

/// One line of the cache: a record type and `key=value` fields.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    record: String,
    fields: BTreeMap<String, String>,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let mut parts = line.split('\t');
        let record = parts.next()?.trim();
        if record.is_empty() || record.starts_with('#') {
            return None;
        }
        let fields = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Entry {
            record: record.to_string(),
            fields,
        })
    }

    fn line(&self) -> String {
        let mut s = self.record.clone();
        for (k, v) in &self.fields {
            s.push('\t');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    fn key(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "host" | "build" | "env" | "kind" | "n" | "v"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn number(&self, k: &str) -> Option<f64> {
        self.fields
            .get(k)?
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
    }

    fn fresh(&self) -> bool {
        let at: u64 = match self.fields.get("at").and_then(|a| a.parse().ok()) {
            Some(a) => a,
            None => return false,
        };
        now_secs().saturating_sub(at) <= CACHE_MAX_AGE.as_secs()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn link_key(kind: &str, nranks: usize) -> Entry {
    let mut fields = BTreeMap::new();
    fields.insert("host".into(), host_identity());
    fields.insert("build".into(), build().into());
    fields.insert("env".into(), settings_key());
    fields.insert("kind".into(), kind.into());
    fields.insert("n".into(), nranks.to_string());
    fields.insert("v".into(), METHOD.into());
    Entry {
        record: "link".into(),
        fields,
    }
}

/// The cache key of the host bus: it depends on the transports (`kinds`,
/// e.g. `shm` or `tcp`) and on how many ranks share the host.
fn bus_key(kinds: &str, nranks: usize) -> Entry {
    let mut e = link_key(kinds, nranks);
    e.record = "bus".into();
    e
}

fn reduce_key() -> Entry {
    let mut fields = BTreeMap::new();
    fields.insert("host".into(), host_identity());
    fields.insert("build".into(), build().into());
    fields.insert("v".into(), METHOD.into());
    Entry {
        record: "reduce".into(),
        fields,
    }
}

fn read_cache(path: &Path) -> Vec<Entry> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(Entry::parse).collect())
        .unwrap_or_default()
}

fn lookup<'a>(entries: &'a [Entry], key: &Entry) -> Option<&'a Entry> {
    let want = key.key();
    entries
        .iter()
        .rev()
        .find(|e| e.record == key.record && e.key() == want && e.fresh())
}

/// Replaces the entries of the same keys and writes the file atomically.
fn write_cache(path: &Path, new: &[Entry]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut entries: Vec<Entry> = read_cache(path)
        .into_iter()
        .filter(|e| {
            !new.iter()
                .any(|n| n.record == e.record && n.key() == e.key())
        })
        .collect();
    entries.extend(new.iter().cloned());
    let skip = entries.len().saturating_sub(CACHE_MAX_LINES);
    let mut text = String::from(
        "# braid calibration cache (docs/cost-model.md): one figure per line; \
         seconds, bytes per second; delete to measure again\n",
    );
    for e in &entries[skip..] {
        text.push_str(&e.line());
        text.push('\n');
    }
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

/// Runs hand-made plans between this rank and its peers.
struct Wire<'a> {
    transport: &'a mut dyn Transport,
    rank: usize,
    size: usize,
    opts: RunOptions,
}

impl Wire<'_> {
    fn fingerprint(&self, call: &str, dtype: DType, count: u64) -> Fingerprint {
        Fingerprint {
            call: call_code(call),
            dtype,
            op: 0,
            root: 0,
            count,
            seq: CALIBRATION_SEQ,
        }
    }

    /// Runs `plan` on u8 buffers; returns the seconds it took.
    fn run_bytes(&mut self, plan: &Plan, input: &[u8], output: &mut [u8]) -> Result<f64> {
        let fp = self.fingerprint("send", DType::U8, 0);
        let start = Instant::now();
        run_plan(
            &mut *self.transport,
            plan,
            Buffers {
                input,
                output,
                scratch: &mut [],
            },
            &fp,
            &fp,
            &self.opts,
        )?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Runs a generated collective plan on f64 buffers.
    fn collective(
        &mut self,
        algorithm: Algorithm,
        shape: &Shape,
        input: &[f64],
        output: &mut [f64],
    ) -> Result<()> {
        let plan = generate(algorithm, shape, self.rank, &PlanOptions::default())
            .map_err(|e| Error::new(crate::ErrorKind::Unsupported, e.to_string()))?;
        let mut scratch = vec![0f64; plan.scratch_len as usize];
        let fp = self.fingerprint(shape.collective.name(), DType::F64, shape.largest_buffer());
        let opts = RunOptions {
            op: ReduceOp::Max,
            timeout: self.opts.timeout,
            chunk_bytes: self.opts.chunk_bytes,
        };
        run_plan(
            &mut *self.transport,
            &plan,
            Buffers {
                input,
                output,
                scratch: &mut scratch,
            },
            &fp,
            &fp,
            &opts,
        )
    }

    fn barrier(&mut self) -> Result<()> {
        let shape = Shape::new(Collective::Barrier, self.size, 0, Counts::None);
        self.collective(Algorithm::Dissemination, &shape, &[], &mut [])
    }
}

/// One side of a measured pair.
struct Pair<'w, 'a> {
    wire: &'w mut Wire<'a>,
    peer: usize,
    initiator: bool,
    /// This rank's host runs more ranks than it has cores, and they all
    /// measure at once.
    crowded: bool,
    /// Measure D over a span of buffers beyond the caches: not for the
    /// lone pair of a crowded host (the first touches of that span, on top
    /// of the group's turns, took calibration past its time budget there).
    cold: bool,
    /// The kind moves bytes through host memory (`local`, `shm`, `tcp`):
    /// its rates depend on the size of the call. Not so a wire (`shaped`
    /// emulates one; its shaping lets a 256 KiB burst pass at 1.2–1.7 GB/s
    /// where it caps 10 Gbit/s).
    by_memory: bool,
    input: Vec<u8>,
    output: Vec<u8>,
}

fn send(peer: usize, offset: u64, len: u64) -> Action {
    Action::Send {
        peer,
        src: Region::new(BufferId::Input, offset, len),
    }
}

fn recv(peer: usize, offset: u64, len: u64) -> Action {
    Action::Recv {
        peer,
        dst: Region::new(BufferId::Output, offset, len),
    }
}

/// What [`Pair::measure`] finds for one link kind.
struct Measured {
    alpha: f64,
    bandwidth: f64,
    /// Bytes per second each way with both directions busy.
    duplex: f64,
    /// The bytes of the messages `bandwidth` and `duplex` were measured
    /// with (one buffer of that size, reused).
    stream: f64,
    /// [B, D] for a call of [`HOT_BYTES`], and D for one of
    /// `cold_span(stream)` bytes; 0 where not measured.
    hot: [f64; 2],
    cold: f64,
    overhead: f64,
    call: f64,
    /// α at each of [`CURVE_BYTES`] but the first (which is `alpha`).
    curve: Option<[f64; CURVE_BYTES.len() - 1]>,
}

/// The payloads at which a link's latency curve is measured. Small
/// messages differ by more than their bytes over B: shared memory carries
/// 8 bytes in the line its receiver polls and more through a ring (on the
/// 2-vCPU VM, slow state, one exchange took 0.40 µs at 8 B per rank, 0.67 µs
/// at 16 B and 0.86 µs at 512 B, where B alone adds 0.05 µs).
pub const CURVE_BYTES: [u64; 7] = [8, 16, 64, 256, 1 << 10, 4 << 10, 16 << 10];

/// The call size at which fast links' rates are also measured: buffers
/// that stay in the caches.
pub const HOT_BYTES: u64 = 256 << 10;

/// The span of buffers the large point of the duplex rate by call size
/// runs through, for streams of `bytes` (1 to 16 MiB): four messages, at
/// most 32 MiB (with two or more ranks per host, input and output, beyond
/// the 32 MiB last level cache of the VM; a larger span would cost more
/// of the time budget in first touches than it tells).
fn cold_span(bytes: u64) -> u64 {
    (4 * bytes).min(32 << 20)
}

/// Links whose round trip is longer are not measured for a curve: there
/// latency dwarfs what the size adds besides B, and the round trips would
/// cost too much of the time budget.
pub const CURVE_MAX_RTT: f64 = 100e-6;

impl Pair<'_, '_> {
    fn plan(&self, steps: Vec<Vec<Action>>) -> Plan {
        let mut plan = Plan::new(
            Collective::AllToAll,
            Algorithm::Linear,
            self.wire.rank,
            self.wire.size,
        );
        for s in steps {
            plan.push_step_keep_empty(s);
        }
        plan
    }

    fn run(&mut self, steps: Vec<Vec<Action>>, bytes: usize) -> Result<f64> {
        let plan = self.plan(steps);
        if self.input.len() < bytes {
            self.input.resize(bytes, 1);
        }
        if self.output.len() < bytes {
            self.output.resize(bytes, 0);
        }
        self.wire.run_bytes(&plan, &self.input, &mut self.output)
    }

    /// `rounds` round trips of `bytes`; seconds on the initiator.
    fn pings(&mut self, rounds: usize, bytes: u64) -> Result<f64> {
        let p = self.peer;
        let mut steps = Vec::new();
        for _ in 0..rounds {
            if self.initiator {
                steps.push(vec![send(p, 0, bytes)]);
                steps.push(vec![recv(p, 0, bytes)]);
            } else {
                steps.push(vec![recv(p, 0, bytes)]);
                steps.push(vec![send(p, 0, bytes)]);
            }
        }
        self.run(steps, bytes as usize)
    }

    /// One step of `k` 8-byte messages (they leave back to back, as a
    /// star's root sends its messages), then an 8-byte reply: what a message
    /// costs beyond the step it is in.
    fn burst(&mut self, k: u64) -> Result<f64> {
        let p = self.peer;
        let mut steps: Vec<Vec<Action>> = if self.initiator {
            vec![(0..k).map(|_| send(p, 0, 8)).collect()]
        } else {
            vec![(0..k).map(|i| recv(p, 8 * i, 8)).collect()]
        };
        steps.push(vec![if self.initiator {
            recv(p, 0, 8)
        } else {
            send(p, 0, 8)
        }]);
        self.run(steps, 8 * k as usize)
    }

    /// One message of `bytes` from the initiator to the responder, or with
    /// `both_ways` one each way at once (as in a collective's exchange, so
    /// that copies on a shared host meet the contention they meet there),
    /// then an 8-byte reply.
    /// The message lies at byte `at` of the buffers.
    fn stream(&mut self, bytes: u64, at: u64, both_ways: bool) -> Result<f64> {
        let p = self.peer;
        let first = if both_ways {
            vec![send(p, at, bytes), recv(p, at, bytes)]
        } else if self.initiator {
            vec![send(p, at, bytes)]
        } else {
            vec![recv(p, at, bytes)]
        };
        let steps = if self.initiator {
            vec![first, vec![recv(p, 0, 8)]]
        } else {
            vec![first, vec![send(p, 0, 8)]]
        };
        self.run(steps, (at + bytes) as usize)
    }

    /// Seconds per byte of streams of `bytes` (one way, or both ways at
    /// once), on the initiator: [`slope_per_byte`] of 3 messages of a
    /// quarter and 3 of the whole, after an untimed one that touches the
    /// pages, with `rtt` what a message pays besides its bytes. The messages take turns at each `bytes` of the first `span` bytes of
    /// the buffers: a span beyond the caches is what a call that large
    /// gets, one message reused is what a call of `bytes` gets.
    fn per_byte(&mut self, bytes: u64, span: u64, both_ways: bool, rtt: f64) -> Result<f64> {
        let slots = (span / bytes).max(1);
        let mut turn = 0u64;
        let mut next = || {
            turn += 1;
            (turn % slots) * bytes
        };
        // Touch the whole span before timing (pages, and the lines a
        // call's buffers would not have in the cache either).
        let end = (slots * bytes) as usize;
        self.input.resize(self.input.len().max(end), 1);
        self.output.resize(self.output.len().max(end), 0);
        self.stream(bytes, next(), both_ways)?;
        let (mut small, mut large) = ([0f64; 3], [0f64; 3]);
        for i in 0..3 {
            small[i] = self.stream(bytes / 4, next(), both_ways)?;
            large[i] = self.stream(bytes, next(), both_ways)?;
        }
        Ok(slope_per_byte(
            &mut small,
            &mut large,
            (bytes / 4) as f64,
            bytes as f64,
            rtt,
        ))
    }

    /// The initiator tells the responder a number.
    fn tell(&mut self, value: u64) -> Result<u64> {
        let p = self.peer;
        if self.initiator {
            self.input.resize(self.input.len().max(8), 0);
            self.input[..8].copy_from_slice(&value.to_le_bytes());
            self.run(vec![vec![send(p, 0, 8)]], 8)?;
            self.input[..8].fill(1);
            Ok(value)
        } else {
            self.run(vec![vec![recv(p, 0, 8)]], 8)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.output[..8]);
            Ok(u64::from_le_bytes(b))
        }
    }

    /// The whole measurement; figures on the initiator, `None` on the
    /// responder. Both sides run the same sequence of plans; the one size
    /// the initiator picks from what it measured travels by [`Pair::tell`].
    fn measure(&mut self) -> Result<Option<Measured>> {
        const BURST: u64 = 16;
        // Two untimed round trips; on slow links (over 1 ms) half the runs,
        // to stay within the time budget.
        let warm = self.pings(2, 8)? / 2.0;
        let runs = self.tell(if warm > 1e-3 { 2 } else { 4 })?;
        // Each run: four round trips in one plan and one alone. What a
        // call costs besides its steps shows in their difference (one
        // alone takes rtt + c, one of four rtt + c/4). Differences come
        // from back-to-back plans, which met the same scheduling: with more
        // ranks than cores, the best of runs picks a lucky moment, and
        // figures picked at different moments do not fit together.
        let mut rtt = f64::INFINITY;
        let mut calls = Vec::with_capacity(runs as usize);
        for _ in 0..runs {
            let four = self.pings(4, 8)? / 4.0;
            rtt = rtt.min(four);
            if !self.crowded {
                let one = self.pings(1, 8)?;
                calls.push((one - four) * 4.0 / 3.0);
            }
        }
        // Crowded: no runs, no call cost.
        let call = middle(&mut calls).max(0.0);
        let rtt = (rtt - call / 4.0).max(rtt * 0.25);
        // The latency curve: how much longer a round trip of each size is
        // than one of 8 bytes run just before it (the median of the runs;
        // the initiator decides from its warm-up whether to measure it).
        let with_curve = self.tell(u64::from(warm < CURVE_MAX_RTT && !self.crowded))? == 1;
        let mut longer = [0f64; CURVE_BYTES.len() - 1];
        if with_curve {
            for (d, &bytes) in longer.iter_mut().zip(&CURVE_BYTES[1..]) {
                self.pings(1, bytes)?;
                let mut runs_d = Vec::with_capacity(runs as usize);
                for _ in 0..runs {
                    let base = self.pings(4, 8)? / 4.0;
                    runs_d.push(self.pings(4, bytes)? / 4.0 - base);
                }
                *d = middle(&mut runs_d);
            }
        }
        let mut burst = f64::INFINITY;
        for _ in 0..3 {
            burst = burst.min(self.burst(BURST)?);
        }
        let overhead = ((burst - call - rtt) / BURST as f64).max(0.0);
        // A probe sizes the bandwidth messages to about 2 ms both ways
        // (1 to 16 MiB).
        let probe = 256u64 << 10;
        let t = self.stream(probe, 0, true)?;
        let rough = probe as f64 / (t - rtt).max(t * 0.05);
        let want = (rough * 2e-3).clamp((1u64 << 20) as f64, (16u64 << 20) as f64) as u64;
        let bytes = self.tell(want.div_ceil(64 << 10) * (64 << 10))?;
        // B one way, and each way with both busy: where one core copies
        // both ways (shared memory, loopback TCP) the second is lower (on
        // the 2-vCPU VM 0.8 of B over shm, 0.5 over TCP), and a
        // collective's exchange steps move at it while a star's root or a
        // tree's leaves move at B. Other links slower than 1 ms a round
        // trip are a network's, taken as full duplex: measuring both would
        // cost another 50 ms of the time budget at α = 2 ms. (Links
        // through memory are measured whatever their round trip: on a
        // crowded host it can pass 1 ms waiting for a core.)
        let per_byte = self.per_byte(bytes, bytes, false, rtt)?;
        // Fast links through memory also by the size of the call: both
        // rates for buffers that stay in the caches (HOT_BYTES; on the
        // 2-vCPU VM a one-way broadcast of 4 MiB moved 35 GB/s over shared
        // memory, one of 64 MiB 17 GB/s), and D for buffers that do not
        // (the span of cold_span; B one way beyond the streams' size
        // measured bimodal there, 10 or 20 GB/s, and broadcasts of 64 MiB
        // at about the streams' B).
        let mut rates = [0f64; 4];
        if runs > 2 || self.by_memory {
            let span = cold_span(bytes);
            let (crowded, by_memory, cold) = (self.crowded, self.by_memory, self.cold);
            let mut at = |bytes, span, both_ways| -> Result<f64> {
                Ok((1.0 / self.per_byte(bytes, span, both_ways, rtt)?).min(1e13))
            };
            rates[0] = at(bytes, bytes, true)?;
            // Not on a crowded host: there a call's rates depend on turns
            // at the cores more than on the caches (with 4 and 8 ranks on
            // the 2-vCPU VM, 20 more calls of 64 KiB–1 MiB came out below
            // 2/3 of measured with them).
            if by_memory && !crowded {
                rates[1] = at(HOT_BYTES, HOT_BYTES, false)?;
                rates[2] = at(HOT_BYTES, HOT_BYTES, true)?;
                if cold {
                    rates[3] = at(bytes, span, true)?;
                }
            }
        }
        if !self.initiator {
            return Ok(None);
        }
        let bandwidth = (1.0 / per_byte).min(1e13);
        let [duplex, hot_b, hot_d, cold_d] = rates;
        let alpha = (rtt / 2.0 - overhead).max(rtt * 0.1).max(1e-8);
        // Each size's α: the 8-byte α plus half its longer round trip,
        // less its bytes at B (of a call that small, where measured).
        let small_b = if hot_b > 0.0 { hot_b } else { bandwidth };
        let curve = with_curve.then(|| {
            let mut a = [0f64; CURVE_BYTES.len() - 1];
            for ((a, d), &bytes) in a.iter_mut().zip(longer).zip(&CURVE_BYTES[1..]) {
                *a = (alpha + d / 2.0 - bytes as f64 / small_b).max(alpha * 0.1);
            }
            a
        });
        Ok(Some(Measured {
            alpha,
            bandwidth,
            duplex,
            stream: bytes as f64,
            hot: [hot_b, hot_d],
            cold: cold_d,
            overhead,
            call,
            curve,
        }))
    }
}

/// The call size at which γ and the copy cost are measured first, in the
/// caches.
const HOT_REDUCE_BYTES: u64 = 4 << 20;

/// The call size at which γ and the copy cost are measured again, over
/// buffers the caches of a host running two ranks or more do not hold.
pub const COLD_REDUCE_BYTES: u64 = 16 << 20;

/// γ and the copy cost of this host, seconds per byte: [γ, copy] for a
/// call of 4 MiB, the best of two passes over 4 MiB of f32 (after one that
/// warms them up), folded in 256 KiB pieces as the executor folds received
/// pieces; then [γ, copy] for one of [`COLD_REDUCE_BYTES`], one pass over
/// buffers that large, which the caches do not hold. The hot passes run
/// over the start of the cold pass's buffers: fresh pages cost more than
/// the passes (on the 2-vCPU VM, touching 40 MiB of new memory took 30–40
/// ms, the passes 10).
fn measure_reduce() -> [f64; 4] {
    let n = COLD_REDUCE_BYTES as usize / 4;
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut dst = vec![1.0f32; n];
    let [gamma_cold, copy_cold] = reduce_pass(&src, &mut dst, 1);
    let hot = HOT_REDUCE_BYTES as usize / 4;
    let [gamma, copy] = reduce_pass(&src[..hot], &mut dst[..hot], 3);
    [gamma, copy, gamma_cold, copy_cold]
}

/// [`measure_reduce`] over `src` into `dst`: the best of `passes` (the
/// first of several only warms up).
fn reduce_pass(src: &[f32], dst: &mut [f32], passes: usize) -> [f64; 2] {
    const PIECE: usize = (256 << 10) / 4;
    let (mut gamma, mut copy) = (f64::INFINITY, f64::INFINITY);
    for pass in 0..passes {
        let t = Instant::now();
        for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
            reduce_into(ReduceOp::Sum, d, s);
        }
        let g = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
            d.copy_from_slice(s);
        }
        std::hint::black_box(&mut *dst);
        let c = t.elapsed().as_secs_f64();
        // The first of several passes warms the caches up.
        if pass > 0 || passes == 1 {
            gamma = gamma.min(g);
            copy = copy.min(c);
        }
    }
    let bytes = std::mem::size_of_val(src) as f64;
    [(gamma / bytes).max(1e-13), (copy / bytes).max(1e-13)]
}

// ---------------------------------------------------------------------------
// The collective procedure
// ---------------------------------------------------------------------------

/// Rank 0's decision for every link kind code and for γ: [source code,
/// alpha, bandwidth, overhead, call overhead, duplex bandwidth (0: full
/// duplex), the bytes B and D were measured with, B and D of a call of
/// [`HOT_BYTES`], D of one of [`cold_span`] (0: not measured), then α at each of
/// [`CURVE_BYTES`] but the first (all 0: no curve)] per kind (source 0:
/// measure), then
/// [source, gamma, copy, cold gamma, cold copy (0: not measured)], then
/// the port mode per kind ([`port_mode`]),
/// then [source, bytes per second, the call size it was measured at, bytes
/// per second for calls of [`HOT_BYTES`]] of the host bus (0 bytes per
/// second: none; 0 call size: one figure for every call).
const DECISION: usize = BUS_AT + 4;
const LINK_WIDTH: usize = WAKE_AT + 1;
/// Within a kind's slot: the call overhead, the duplex bandwidth, the rates
/// by call size (stream bytes, hot B and D, cold D), then the curve.
const CALL_AT: usize = 4;
const DUPLEX_AT: usize = 5;
const STREAM_AT: usize = 6;
const HOT_AT: usize = 7;
const COLD_AT: usize = 9;
const CURVE_AT: usize = 10;
/// Where a kind's wake figure sits (after its curve).
const WAKE_AT: usize = CURVE_AT + CURVE_BYTES.len() - 1;
/// A kind's latency curve: α at each of [`CURVE_BYTES`] but the first.
const CURVE: std::ops::Range<usize> = CURVE_AT..WAKE_AT;
/// [source, gamma, copy] of the reduce kernels.
const REDUCE_AT: usize = SLOTS * LINK_WIDTH;
const PORTS_AT: usize = REDUCE_AT + 5;
const BUS_AT: usize = PORTS_AT + SLOTS;

/// Where link kind `code`'s figures lie in a decision.
fn link_slot(code: usize) -> std::ops::Range<usize> {
    code * LINK_WIDTH..(code + 1) * LINK_WIDTH
}

/// The link kinds of a row of kind codes, joined by `+` (the host bus's
/// cache key: it depends on the transports).
fn kinds_name(row: &[f64]) -> String {
    let mut used = [false; SLOTS];
    for &c in row {
        if c >= 0.0 && (c as usize) < SLOTS {
            used[c as usize] = true;
        }
    }
    let names: Vec<&str> = (0..SLOTS)
        .filter(|&c| used[c])
        .map(|c| LINK_KINDS[c])
        .collect();
    names.join("+")
}

/// Whether the host bus applies to links of these kind codes: a real host's
/// transports (`local`, `shm`, `tcp`), not links shaped one by one
/// (`BRAID_SHAPE` emulates separate hosts), GPU or unknown ones.
fn bus_kinds(used: &[usize]) -> bool {
    used.iter()
        .all(|&c| c < SLOTS && matches!(LINK_KINDS[c], "local" | "shm" | "tcp"))
}

fn decide(config: &Config, nranks: usize, kinds: &str) -> Vec<f64> {
    let mut d = vec![0f64; DECISION];
    let cache = match config.calibrate {
        Calibrate::Auto => cache_dir(config.cache_dir.as_deref())
            .map(|dir| read_cache(&cache_file(&dir)))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    for (code, kind) in LINK_KINDS.iter().enumerate() {
        let slot = &mut d[link_slot(code)];
        let (_, _, default_o) = default_link(kind);
        let given = config.links.get(*kind).or_else(|| config.links.get("*"));
        if let Some(LinkSpec {
            alpha,
            bandwidth,
            overhead,
        }) = given
        {
            slot[..CALL_AT].copy_from_slice(&[
                Source::Override.code(),
                *alpha,
                *bandwidth,
                overhead.unwrap_or(default_o),
            ]);
        } else if config.calibrate == Calibrate::Off {
            let (a, b, o) = default_link(kind);
            slot[..CALL_AT].copy_from_slice(&[Source::Default.code(), a, b, o]);
        } else if let Some(e) = lookup(&cache, &link_key(kind, nranks)) {
            if let (Some(a), Some(b), Some(o)) = (
                e.number("alpha"),
                e.number("bandwidth"),
                e.number("overhead"),
            ) {
                if b > 0.0 {
                    slot[..CALL_AT].copy_from_slice(&[Source::Cached.code(), a, b, o]);
                    slot[CALL_AT] = e.number("call").unwrap_or(0.0);
                    slot[WAKE_AT] = e.number("wake").unwrap_or(0.0);
                    slot[DUPLEX_AT] = e.number("duplex").unwrap_or(0.0);
                    slot[STREAM_AT] = e.number("stream").unwrap_or(0.0);
                    if let Some(r) = e.fields.get("hot").and_then(|r| parse_figures::<2>(r)) {
                        slot[HOT_AT..HOT_AT + 2].copy_from_slice(&r);
                    }
                    slot[COLD_AT] = e.number("cold").unwrap_or(0.0);
                    if let Some(curve) = e
                        .fields
                        .get("curve")
                        .and_then(|c| parse_figures::<{ CURVE_BYTES.len() - 1 }>(c))
                    {
                        slot[CURVE].copy_from_slice(&curve);
                    }
                }
            }
        }
    }
    for (code, kind) in LINK_KINDS.iter().enumerate() {
        // BRAID_LINK describes a network link: one port at its rate.
        d[PORTS_AT + code] = if d[link_slot(code).start] == Source::Override.code() {
            0.0
        } else {
            port_mode(kind)
        };
    }
    // The bus: none when off or when BRAID_LINK describes the links (a
    // network), else cached or measured.
    d[BUS_AT] = if config.calibrate == Calibrate::Off {
        Source::Default.code()
    } else if !config.links.is_empty() {
        Source::Override.code()
    } else {
        let cached =
            lookup(&cache, &bus_key(kinds, nranks)).and_then(|e| Some((e, e.number("bandwidth")?)));
        match cached {
            Some((e, b)) => {
                d[BUS_AT + 1] = b;
                d[BUS_AT + 2] = e.number("stream").unwrap_or(0.0);
                d[BUS_AT + 3] = e.number("hot").unwrap_or(0.0);
                Source::Cached.code()
            }
            None => 0.0,
        }
    };
    let r = &mut d[REDUCE_AT..PORTS_AT];
    if config.calibrate == Calibrate::Off {
        r[..3].copy_from_slice(&[Source::Default.code(), DEFAULT_GAMMA, DEFAULT_COPY]);
    } else if let Some(e) = lookup(&cache, &reduce_key()) {
        if let (Some(g), Some(c)) = (e.number("gamma"), e.number("copy")) {
            r[..3].copy_from_slice(&[Source::Cached.code(), g, c]);
            if let Some(cold) = e.fields.get("cold").and_then(|c| parse_figures::<2>(c)) {
                r[3..].copy_from_slice(&cold);
            }
        }
    }
    d
}

/// Calibrates rank `rank` of `size` over `transport`; every rank of the
/// group must call it at the same point of its calls.
pub(crate) fn calibrate(transport: &mut dyn Transport, config: &Config) -> Result<Calibration> {
    let start = Instant::now();
    let (rank, size) = (transport.rank(), transport.size());
    // This rank's row of link kinds (self: -1).
    let row: Vec<f64> = (0..size)
        .map(|p| {
            if p == rank {
                -1.0
            } else {
                kind_code(transport.link_kind(p)) as f64
            }
        })
        .collect();
    let decision = if rank == 0 {
        decide(config, size, &kinds_name(&row))
    } else {
        vec![0f64; DECISION]
    };
    let mut wire = Wire {
        transport,
        rank,
        size,
        opts: RunOptions {
            op: ReduceOp::Sum,
            timeout: config.timeout,
            chunk_bytes: config.chunk_bytes,
        },
    };
    // Each rank's block: its row, rank 0's decision, its host's online
    // cores, its host (a 48-bit hash of the host identity, exact in an
    // f64).
    let block = size + DECISION + 2;
    let host_hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host_identity().hash(&mut h);
        (h.finish() >> 16) as f64
    };
    let mut all = vec![0f64; block * size];
    let mine: Vec<f64> = row
        .iter()
        .chain(decision.iter())
        .copied()
        .chain([braid_transports::shm::online_cpus() as f64, host_hash])
        .collect();
    if size > 1 {
        let shape = Shape::new(
            Collective::AllGather,
            size,
            0,
            Counts::Blocks(vec![block as u64; size]),
        );
        wire.collective(Algorithm::Bruck, &shape, &mine, &mut all)?;
    } else {
        all[..block].copy_from_slice(&mine);
    }
    let hosts_of: Vec<f64> = (0..size).map(|r| all[r * block + block - 1]).collect();
    let cores_of: Vec<usize> = (0..size)
        .map(|r| all[r * block + block - 2] as usize)
        .collect();
    let groups = host_groups(&hosts_of);
    let my_group: &[usize] = groups
        .iter()
        .find(|g| g.contains(&rank))
        .map_or(&[], |g| &g[..]);
    // Some host runs more ranks than it has cores: the model lets every
    // host's ranks take turns at the fewest cores any host has (every rank
    // decides alike, from what all of them sent).
    let turns_at = groups
        .iter()
        .any(|g| g.len() > cores_of[g[0]])
        .then(|| cores_of.iter().copied().min().unwrap_or(1).max(1));
    // With more ranks than cores a round trip waits for the scheduler
    // (milliseconds at times): sub-microsecond differences between sizes,
    // or between one round trip and four, are then noise, and are not
    // measured (on the 2-vCPU VM with 8 ranks they came out anywhere from
    // 0.1 to 180 µs).
    let crowded = my_group.len() > cores_of[rank];
    // One host runs every rank, and more of them than it has cores.
    let alone = crowded && groups.len() == 1;
    // Pairs far apart in rank order, unless ranks take turns at cores
    // (see `pairing`); alike on every rank.
    let far = turns_at.is_none();
    let kinds: Vec<Vec<usize>> = (0..size)
        .map(|i| {
            (0..size)
                .map(|j| {
                    let c = all[i * block + j];
                    if c < 0.0 {
                        usize::MAX
                    } else {
                        c as usize
                    }
                })
                .collect()
        })
        .collect();
    let decision: Vec<f64> = all[size..size + DECISION].to_vec();
    let mut pairs = [0usize; SLOTS];
    for row in &kinds {
        for &c in row {
            if c < SLOTS {
                pairs[c] += 1;
            }
        }
    }
    // Measure what rank 0 has no figures for, every rank at once (as in a
    // collective, where all of them compete for the cores and memory).
    let mut measured = vec![0f64; DECISION];
    let mut any = false;
    let gamma_unknown = decision[REDUCE_AT] == 0.0;
    // On a crowded host only as many ranks as it has cores measure γ and
    // the copy cost, a core each (the model lets the ranks take turns):
    // all of them at once took turns at the cores for 16 MiB passes (50 ms
    // with 4 threads on the 2-vCPU VM), and figures of passes cut into by
    // turns priced a crowded host's turns twice.
    let has_a_core = my_group
        .iter()
        .position(|&r| r == rank)
        .is_some_and(|i| i < cores_of[rank].max(1));
    if gamma_unknown && size > 1 {
        any = true;
        if !crowded || has_a_core {
            let [g, c, g_cold, c_cold] = measure_reduce();
            measured[REDUCE_AT..PORTS_AT].copy_from_slice(&[
                Source::Measured.code(),
                g,
                c,
                g_cold,
                c_cold,
            ]);
        }
    }
    // Who measures each kind with whom (kinds the group uses).
    let pairings: Vec<Vec<Option<(usize, bool)>>> = (0..SLOTS)
        .map(|code| match pairs[code] {
            0 => Vec::new(),
            _ => pairing(&kinds, code, far),
        })
        .collect();
    for code in 0..SLOTS {
        if pairs[code] == 0 || decision[link_slot(code).start] != 0.0 {
            continue;
        }
        any = true;
        wire.barrier()?;
        // On one crowded host a single pair measures, with the cores to
        // itself (the others wait): the model lets the ranks take turns,
        // and figures of pairs that took turns with each other priced the
        // turns twice (α 0.1 to 1100 µs, B 4 to 39 GB/s with 8 processes
        // on the 2-vCPU VM).
        let partner = &pairings[code];
        let lead = |r: usize| partner[r].map(|(peer, initiator)| if initiator { r } else { peer });
        let first = (0..size).find_map(lead);
        // (Links through memory only: pairs over emulated wires wait on
        // their shaping, not on cores, and one pair alone gave no median
        // to hold back a disturbed measurement.)
        let lone = alone && bus_kinds(&[code]);
        let measures = !lone || lead(rank) == first;
        if let Some((peer, initiator)) = partner[rank].filter(|_| measures) {
            let mut pair = Pair {
                wire: &mut wire,
                peer,
                initiator,
                crowded: crowded && !lone,
                cold: !lone,
                by_memory: bus_kinds(&[code]),
                input: Vec::new(),
                output: Vec::new(),
            };
            if let Some(m) = pair.measure()? {
                let slot = &mut measured[link_slot(code)];
                slot[..CALL_AT].copy_from_slice(&[
                    Source::Measured.code(),
                    m.alpha,
                    m.bandwidth,
                    m.overhead,
                ]);
                slot[CALL_AT] = m.call;
                slot[DUPLEX_AT] = m.duplex;
                slot[STREAM_AT] = m.stream;
                slot[HOT_AT..HOT_AT + 2].copy_from_slice(&m.hot);
                slot[COLD_AT] = m.cold;
                if let Some(curve) = m.curve {
                    slot[CURVE].copy_from_slice(&curve);
                }
            }
        }
    }
    let mut agreed = vec![0f64; DECISION];
    let mut pair_figures = Vec::new();
    if any {
        let shape = Shape::new(
            Collective::AllGather,
            size,
            0,
            Counts::Blocks(vec![DECISION as u64; size]),
        );
        let mut every = vec![0f64; DECISION * size];
        wire.collective(Algorithm::Bruck, &shape, &measured, &mut every)?;
        agreed = medians(&every, size);
        for (code, partner) in pairings.iter().enumerate() {
            for (r, peer) in partner.iter().enumerate().filter_map(|(r, p)| match p {
                Some((peer, true)) => Some((r, *peer)),
                _ => None,
            }) {
                let row = &every[r * DECISION..][link_slot(code)];
                if row[0] != Source::Measured.code() {
                    continue;
                }
                pair_figures.push(PairFigures {
                    kind: LINK_KINDS[code],
                    ranks: (r, peer),
                    alpha: row[1],
                    overhead: row[3],
                    bandwidth: row[2],
                    duplex: row[DUPLEX_AT],
                });
            }
        }
    }
    // One crowded host, one kind measured: α, o, c and the wake from the
    // group at once (every rank decides alike, from what was all-gathered).
    let measured_kinds: Vec<usize> = (0..SLOTS)
        .filter(|&c| pairs[c] > 0 && decision[link_slot(c).start] == 0.0)
        .collect();
    if let [code] = measured_kinds[..] {
        if alone {
            let times = measure_turns(&mut wire)?;
            let bandwidth = agreed[link_slot(code).start + 2];
            if times.iter().all(|t| t.is_finite()) && bandwidth > 0.0 && bandwidth.is_finite() {
                // A core each where the model has no turns (links that
                // are not the host's memory).
                let cores = turns_at.filter(|_| bus_kinds(&[code])).unwrap_or(size);
                let [alpha, overhead, call, wake] = fit_turns(times, size, cores, bandwidth);
                // 0 marks a figure not measured: an α that fits at 0 (the
                // wake carrying a hop's whole cost) is kept at 1 ns.
                let alpha = alpha.max(1e-9);
                let slot = &mut agreed[link_slot(code)];
                // The lone pair's latency curve keeps what each size adds
                // to its 8 B α, on top of the group's α.
                let was = slot[1];
                for a in slot[CURVE].iter_mut().filter(|a| **a > 0.0) {
                    *a = (alpha + *a - was).max(alpha * 0.1);
                }
                slot[1] = alpha;
                slot[3] = overhead;
                slot[CALL_AT] = call;
                slot[WAKE_AT] = wake;
            }
        }
    }
    // Every rank combines rank 0's decision with what was measured.
    let mut links = Vec::new();
    let mut new_entries = Vec::new();
    for code in 0..SLOTS {
        if pairs[code] == 0 {
            continue;
        }
        let from = if decision[link_slot(code).start] != 0.0 {
            &decision[link_slot(code)]
        } else {
            &agreed[link_slot(code)]
        };
        let source = Source::from_code(from[0]).unwrap_or(Source::Default);
        let (da, db, d_o) = default_link(LINK_KINDS[code]);
        let ok = from[2] > 0.0 && from[2].is_finite() && from[1].is_finite();
        let (alpha, bandwidth, overhead) = if ok {
            (from[1], from[2], from[3])
        } else {
            (da, db, d_o)
        };
        // A measured figure that may be 0 (not measured) but not negative.
        let figure = |at: usize| {
            if ok && from[at].is_finite() {
                from[at].max(0.0)
            } else {
                0.0
            }
        };
        let (wake, call_overhead) = (figure(WAKE_AT), figure(CALL_AT));
        // Whether a figure that must be positive was measured.
        let measured = |x: f64| x > 0.0 && x.is_finite();
        // Full duplex unless each way at once is clearly slower than one.
        let duplex = (ok && measured(from[DUPLEX_AT]))
            .then_some(from[DUPLEX_AT])
            .filter(|&d| d < 0.9 * bandwidth);
        let curve = if ok && from[CURVE].iter().all(|&a| measured(a)) {
            let points: Vec<(f64, f64)> = CURVE_BYTES
                .iter()
                .zip(std::iter::once(&alpha).chain(&from[CURVE]))
                .map(|(&b, &a)| (b as f64, a))
                .collect();
            SizeCurve::new(&points).ok()
        } else {
            None
        };
        // Rates by call size: the hot point, the measured stream, and for D
        // the cold span, where all were measured.
        let stream = from[STREAM_AT];
        let sized = ok && stream > HOT_BYTES as f64 && measured(stream);
        let by_size = |points: &[(f64, f64)]| {
            (sized && points.iter().all(|p| measured(p.1)))
                .then(|| SizeCurve::new(points).ok())
                .flatten()
        };
        let bandwidth_by_size = by_size(&[(HOT_BYTES as f64, from[HOT_AT]), (stream, bandwidth)]);
        let duplex_by_size = duplex.and_then(|d| {
            let points = [
                (HOT_BYTES as f64, from[HOT_AT + 1]),
                (stream, d),
                (cold_span(stream as u64) as f64, from[COLD_AT]),
            ];
            // The cold point where measured (not on crowded hosts).
            by_size(&points[..if measured(from[COLD_AT]) { 3 } else { 2 }])
        });
        if source == Source::Measured && ok {
            let mut e = link_key(LINK_KINDS[code], size);
            e.fields.insert("alpha".into(), format!("{alpha:e}"));
            e.fields
                .insert("bandwidth".into(), format!("{bandwidth:e}"));
            e.fields.insert("overhead".into(), format!("{overhead:e}"));
            e.fields.insert("call".into(), format!("{call_overhead:e}"));
            if wake > 0.0 {
                e.fields.insert("wake".into(), format!("{wake:e}"));
            }
            if from[DUPLEX_AT] > 0.0 {
                e.fields
                    .insert("duplex".into(), format!("{:e}", from[DUPLEX_AT]));
            }
            if bandwidth_by_size.is_some() {
                e.fields.insert("stream".into(), format!("{stream:e}"));
                let hot = format!("{:e}/{:e}", from[HOT_AT], from[HOT_AT + 1]);
                e.fields.insert("hot".into(), hot);
                if measured(from[COLD_AT]) {
                    e.fields
                        .insert("cold".into(), format!("{:e}", from[COLD_AT]));
                }
            }
            if curve.is_some() {
                let text: Vec<String> = from[CURVE].iter().map(|a| format!("{a:e}")).collect();
                e.fields.insert("curve".into(), text.join("/"));
            }
            e.fields.insert("at".into(), now_secs().to_string());
            new_entries.push(e);
        }
        links.push(LinkFigures {
            kind: LINK_KINDS[code],
            alpha,
            bandwidth,
            duplex,
            bandwidth_by_size,
            duplex_by_size,
            overhead,
            call_overhead,
            wake,
            latency_by_size: curve,
            source,
            pairs: pairs[code],
            injection: if decision[PORTS_AT + code] == 1.0 {
                Injection::Unlimited
            } else {
                Injection::Link
            },
        });
    }
    let r = if decision[REDUCE_AT] != 0.0 {
        &decision[REDUCE_AT..PORTS_AT]
    } else {
        &agreed[REDUCE_AT..PORTS_AT]
    };
    let (reduce_source, gamma, copy) = match Source::from_code(r[0]) {
        Some(s) if r[1] > 0.0 && r[2] > 0.0 => (s, r[1], r[2]),
        _ => (Source::Default, DEFAULT_GAMMA, DEFAULT_COPY),
    };
    // By call size where the cold figures were measured: HOT_REDUCE_BYTES,
    // then COLD_REDUCE_BYTES.
    let memory_by_size = (r[1] > 0.0 && r[2] > 0.0 && r[3] > 0.0 && r[4] > 0.0)
        .then(|| {
            let at = |hot: f64, cold: f64| {
                SizeCurve::new(&[
                    (HOT_REDUCE_BYTES as f64, hot),
                    (COLD_REDUCE_BYTES as f64, cold),
                ])
            };
            at(gamma, r[3]).ok().zip(at(copy, r[4]).ok())
        })
        .flatten();
    if reduce_source == Source::Measured {
        let mut e = reduce_key();
        e.fields.insert("gamma".into(), format!("{gamma:e}"));
        e.fields.insert("copy".into(), format!("{copy:e}"));
        if memory_by_size.is_some() {
            e.fields
                .insert("cold".into(), format!("{:e}/{:e}", r[3], r[4]));
        }
        e.fields.insert("at".into(), now_secs().to_string());
        new_entries.push(e);
    }
    // The host bus: every host's ranks stream at once (after the links,
    // whose bandwidth sizes the messages).
    let used: Vec<usize> = (0..SLOTS).filter(|&c| pairs[c] > 0).collect();
    let shared = groups.iter().any(|g| g.len() > 1);
    let (host_source, [host_bandwidth, bus_stream, bus_hot]) = if !shared || !bus_kinds(&used) {
        (Source::Default, [f64::INFINITY, 0.0, 0.0])
    } else if decision[BUS_AT] != 0.0 {
        let b = decision[BUS_AT + 1];
        let source = Source::from_code(decision[BUS_AT]).unwrap_or(Source::Default);
        let b = if b > 0.0 { b } else { f64::INFINITY };
        (source, [b, decision[BUS_AT + 2], decision[BUS_AT + 3]])
    } else {
        let guide = links
            .iter()
            .map(|l| l.bandwidth)
            .fold(f64::INFINITY, f64::min);
        // Crowded hosts have no rates by call size (see Pair::measure).
        let mine = measure_bus(&mut wire, my_group, cores_of[rank], guide, !crowded)?;
        let shape = Shape::new(
            Collective::AllGather,
            size,
            0,
            Counts::Blocks(vec![3; size]),
        );
        let mut every = vec![0f64; 3 * size];
        wire.collective(Algorithm::Bruck, &shape, &mine, &mut every)?;
        // Per figure, the median over the ranks that share a host.
        let median = |i: usize| {
            let mut v: Vec<f64> = every
                .chunks(3)
                .filter(|m| m[0] > 0.0 && m[0].is_finite())
                .map(|m| m[i])
                .collect();
            (!v.is_empty()).then(|| middle(&mut v))
        };
        match (median(0), median(1), median(2)) {
            (Some(c), Some(stream), Some(hot)) => {
                let mut e = bus_key(&kinds_name(&all[..size]), size);
                e.fields.insert("bandwidth".into(), format!("{c:e}"));
                e.fields.insert("stream".into(), format!("{stream:e}"));
                if hot > 0.0 {
                    e.fields.insert("hot".into(), format!("{hot:e}"));
                }
                e.fields.insert("at".into(), now_secs().to_string());
                new_entries.push(e);
                (Source::Measured, [c, stream, hot])
            }
            _ => (Source::Default, [f64::INFINITY, 0.0, 0.0]),
        }
    };
    // The bus by call size where both sizes were measured.
    let host_bandwidth_by_size = (host_bandwidth.is_finite()
        && bus_stream > HOT_BYTES as f64
        && bus_hot > 0.0
        && bus_hot.is_finite())
    .then(|| SizeCurve::new(&[(HOT_BYTES as f64, bus_hot), (bus_stream, host_bandwidth)]).ok())
    .flatten();
    if rank == 0 && !new_entries.is_empty() && config.calibrate != Calibrate::Off {
        if let Some(dir) = cache_dir(config.cache_dir.as_deref()) {
            let path = cache_file(&dir);
            match write_cache(&path, &new_entries) {
                Ok(()) => tracing::debug!(path = %path.display(), "calibration cached"),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "could not write the calibration cache ({e}); the next run measures again"
                ),
            }
        }
    }
    let network = HostFigures {
        memory: memory_by_size,
        // One kind: hosts by identity (loopback TCP between ranks of one
        // host is the same link class as TCP between hosts).
        hosts: (links.len() == 1).then(|| Hosts::Map(host_map(&hosts_of))),
        bus: host_bandwidth,
        bus_by_size: host_bandwidth_by_size,
        // Turns only where the links move bytes through the host's memory
        // (`local`, `shm`, `tcp`): a `shaped` link emulates a wire between
        // hosts, whose time is not a core's.
        cores: turns_at.filter(|_| bus_kinds(&used)),
    }
    .apply(build_network(
        &kinds,
        &links,
        gamma,
        copy,
        config.chunk_bytes as u64,
    ));
    Ok(Calibration {
        links,
        gamma,
        copy,
        reduce_source,
        host_bandwidth,
        host_bandwidth_by_size,
        host_source,
        network,
        elapsed: start.elapsed(),
        pairs: pair_figures,
    })
}

/// The `K` figures of a cached field (`x/x/…`: the α of a `curve` at each
/// of [`CURVE_BYTES`] but the first, B/D of `hot` and `cold`); `None`
/// unless all are there and positive.
fn parse_figures<const K: usize>(text: &str) -> Option<[f64; K]> {
    let mut curve = [0f64; K];
    let mut parts = text.split('/');
    for a in curve.iter_mut() {
        *a = parts
            .next()?
            .parse()
            .ok()
            .filter(|a: &f64| *a > 0.0 && a.is_finite())?;
    }
    parts.next().is_none().then_some(curve)
}

/// Seconds per byte from runs that moved `small_bytes` (times `small`) and
/// `large_bytes` (times `large`): the slope between their medians, so that
/// whatever a run pays besides its bytes (latency, a peer that waits for a
/// core) cancels out. Noise can make the slope meaningless (not positive,
/// or under a quarter of the large run less `rtt`): then the large run
/// less `rtt`, per byte.
fn slope_per_byte(
    small: &mut [f64],
    large: &mut [f64],
    small_bytes: f64,
    large_bytes: f64,
    rtt: f64,
) -> f64 {
    let (t_small, t_large) = (middle(small), middle(large));
    let slope = (t_large - t_small) / (large_bytes - small_bytes);
    if slope > 0.0 && slope * large_bytes > 0.25 * (t_large - rtt) {
        slope
    } else {
        (t_large - rtt).max(t_large * 0.05) / large_bytes
    }
}

/// The median of `v` (of an even count, the mean of the middle two); 0
/// when empty. (The upper middle one biased every figure of an even count
/// of pairs or ranks: with 4 ranks a link's rates were the faster pair's,
/// and on the 16-core device machine calls of 1 MiB and more came out at
/// a median 0.82–0.85 of measured.)
fn middle(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The ranks of each host (by host hash), each group in rank order, groups
/// in order of their lowest rank.
fn host_groups(hosts: &[f64]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
    for (r, &h) in hosts.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == h) {
            Some(g) => g.1.push(r),
            None => groups.push((h, vec![r])),
        }
    }
    groups.into_iter().map(|g| g.1).collect()
}

/// The host of each rank: the lowest rank of its host group.
fn host_map(hosts: &[f64]) -> Vec<usize> {
    let mut map = vec![0; hosts.len()];
    for g in host_groups(hosts) {
        for &r in &g {
            map[r] = g[0];
        }
    }
    map
}

/// This rank's estimates of its host bus, in message bytes per second
/// (0 when it is alone on its host), for calls of two sizes: [bus, the
/// call size it was measured at, bus for calls of [`HOT_BYTES`]]. The
/// ranks of each host (`group`) run at once the steps of a ring all-gather
/// (each sends to the next rank of the host and receives from the previous
/// one, into fresh memory), first at a size that takes about 2 ms per rank
/// at the link bandwidth `guide`, then at one whose output is
/// [`HOT_BYTES`] (it stays in the caches; only with `hot`, else 0). Every
/// rank of the group runs the same barriers and plans, alone ones only the
/// barriers. A group of k ranks on c < k cores takes turns at them: the
/// size is cut by √(k/c) (8 processes on the 2-vCPU VM took 120–140 ms to
/// measure it otherwise, most of calibration's time budget; cut by k/c,
/// the streams fit in the caches and the bus came out 1.5× faster than
/// calls of 16 MiB and more move over loopback TCP).
fn measure_bus(
    wire: &mut Wire<'_>,
    group: &[usize],
    cores: usize,
    guide: f64,
    hot: bool,
) -> Result<[f64; 3]> {
    let steps = group.len().saturating_sub(1).max(1) as u64;
    let turns = (group.len() as f64 / cores.max(1) as f64).max(1.0).sqrt();
    let bytes = bus_step_bytes(guide, steps, turns);
    let main = bus_at(wire, group, bytes)?;
    let hot = if hot {
        bus_at(wire, group, (HOT_BYTES / steps / 4096).max(1) * 4096)?
    } else {
        0.0
    };
    Ok([main, (steps * bytes) as f64, hot])
}

/// The bytes per step of [`measure_bus`]'s main size: about 2 ms per rank
/// at the link bandwidth `guide` over `steps` steps, cut by `turns` where
/// ranks take turns at the cores; 64 KiB to 32 MiB in all, whole pages.
fn bus_step_bytes(guide: f64, steps: u64, turns: f64) -> u64 {
    let want =
        (guide * 2e-3 / steps as f64 / turns).clamp((64 << 10) as f64, ((32 << 20) / steps) as f64);
    ((want as u64) / 4096).max(1) * 4096
}

/// [`measure_bus`] at `bytes` per step: [`slope_per_byte`] of 3 runs of
/// `bytes` and 3 of a quarter of it (after one untimed run) is what one
/// rank gets while all stream, and the host moves that times the group's
/// size. (2 of each on crowded hosts, for the time budget, let the bus
/// come out 53 GB/s where calls move about 20: the median of 2 is no
/// median.)
fn bus_at(wire: &mut Wire<'_>, group: &[usize], bytes: u64) -> Result<f64> {
    let k = group.len();
    let me = group.iter().position(|&r| r == wire.rank);
    let steps = k.saturating_sub(1).max(1) as u64;
    let plan = |len: u64| -> Option<Plan> {
        let i = me?;
        if k < 2 {
            return None;
        }
        let (next, prev) = (group[(i + 1) % k], group[(i + k - 1) % k]);
        let mut plan = Plan::new(Collective::AllGather, Algorithm::Ring, wire.rank, wire.size);
        for s in 0..steps {
            plan.push_step_keep_empty(vec![send(next, 0, len), recv(prev, s * len, len)]);
        }
        Some(plan)
    };
    let (large, small) = (plan(bytes), plan(bytes / 4));
    let input = vec![1u8; bytes as usize];
    let mut output = vec![0u8; (steps * bytes) as usize];
    let mut times = [[0f64; 3]; 2];
    for i in 0..7 {
        // One untimed large run, then small and large in turn.
        let which = if i == 0 { 0 } else { (i + 1) % 2 };
        wire.barrier()?;
        let p = if which == 0 { &large } else { &small };
        if let Some(p) = p {
            let t = wire.run_bytes(p, &input, &mut output)?;
            if i > 0 {
                times[which][(i - 1) / 2] = t;
            }
        }
    }
    if large.is_none() {
        return Ok(0.0);
    }
    let [large_times, small_times] = &mut times;
    let per_byte = slope_per_byte(
        small_times,
        large_times,
        (steps * (bytes / 4)) as f64,
        (steps * bytes) as f64,
        0.0,
    );
    Ok(k as f64 / per_byte)
}

/// Nanoseconds on the host's clock, which every process of the host reads
/// alike (the common start of [`measure_turns`]).
fn clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Repetitions of each plan of [`measure_turns`].
const TURN_RUNS: usize = 5;

/// Messages per rank in the busy step of [`measure_turns`].
const TURN_BURST: u64 = 16;

/// The times from which [`fit_turns`] gets α, o, the call cost c and the
/// wake w of one host that runs more ranks than it has cores: the ranks
/// take turns at the cores, so what a message costs depends on how many
/// of them are busy, and a call costs a round of turns before its last
/// rank has started. Pairs measured one by one (the others busy with
/// their own figures or asleep) came out anywhere from 0.1 to 1100 µs with
/// 8 processes on the 2-vCPU VM.
///
/// Every rank runs, from a common start on the host's clock (as
/// braid-bench's `--start together`), the plans of [`turn_plans`]: ring
/// exchanges of 8 B each way of one step (t₁) and of four (t₄), one step
/// of [`TURN_BURST`] messages each way (t_b), and a token passed once
/// around the ring (t_k). A run takes the slowest rank's time from the
/// start; each figure is the median of [`TURN_RUNS`] runs no rank spoiled.
/// Returns [t₁, t₄, t_b, t_k], the same on every rank, to the bit.
fn measure_turns(wire: &mut Wire<'_>) -> Result<[f64; 4]> {
    let (rank, size) = (wire.rank, wire.size);
    let plans = turn_plans(rank, size);
    let input = vec![1u8; 8 * TURN_BURST as usize];
    let mut output = vec![0u8; 8 * TURN_BURST as usize];
    let mut mine = vec![0f64; TURN_RUNS * plans.len()];
    let broadcast = Shape::new(Collective::Broadcast, size, 0, Counts::Single(1));
    for run in 0..TURN_RUNS {
        for (k, plan) in plans.iter().enumerate() {
            let began = Instant::now();
            wire.barrier()?;
            // Far enough ahead that the broadcast reaches every rank: four
            // barriers' time and 300 µs (100 µs let the broadcast miss it
            // in most runs with 8 processes on the 2-vCPU VM). The moment
            // travels as the bits of an f64 (a broadcast copies them).
            let ahead = 300_000 + 4 * began.elapsed().as_nanos() as u64;
            // (In place: a broadcast's buffer is its output.)
            let mut at = [f64::from_bits(clock_ns() + ahead)];
            wire.collective(Algorithm::Tree, &broadcast, &[], &mut at)?;
            let at = at[0].to_bits();
            // A rank that learns the moment after it passed spoils the
            // run: the others' times would count the broadcast.
            let late = clock_ns() > at;
            let give_up = Instant::now() + Duration::from_secs(1);
            while clock_ns() < at && Instant::now() < give_up {
                // Let the ranks not yet at the line run.
                std::thread::yield_now();
            }
            wire.run_bytes(plan, &input, &mut output)?;
            mine[run * plans.len() + k] = if late {
                f64::NAN
            } else {
                clock_ns().saturating_sub(at) as f64 * 1e-9
            };
        }
    }
    let mut every = vec![0f64; mine.len() * size];
    let gather = Shape::new(
        Collective::AllGather,
        size,
        0,
        Counts::Blocks(vec![mine.len() as u64; size]),
    );
    wire.collective(Algorithm::Bruck, &gather, &mine, &mut every)?;
    let figure = |k| slowest_median(&every, size, plans.len(), k);
    Ok([figure(0), figure(1), figure(2), figure(3)])
}

/// Rank `rank`'s plans of [`measure_turns`]: ring exchanges of 8 B of one
/// step, of four, and of one step of [`TURN_BURST`] messages each way, and
/// a token of 8 B passed once around the ring (one rank busy at a time).
fn turn_plans(rank: usize, size: usize) -> [Plan; 4] {
    let (next, prev) = ((rank + 1) % size, (rank + size - 1) % size);
    let plan_of = |steps: u64, messages: u64| {
        let mut plan = Plan::new(Collective::AllToAll, Algorithm::Linear, rank, size);
        for _ in 0..steps {
            let mut step: Vec<Action> = (0..messages).map(|i| send(next, 8 * i, 8)).collect();
            step.extend((0..messages).map(|i| recv(prev, 8 * i, 8)));
            plan.push_step_keep_empty(step);
        }
        plan
    };
    let mut token = Plan::new(Collective::AllToAll, Algorithm::Linear, rank, size);
    let (first, second) = (vec![send(next, 0, 8)], vec![recv(prev, 0, 8)]);
    let (first, second) = if rank == 0 {
        (first, second)
    } else {
        (second, first)
    };
    token.push_step_keep_empty(first);
    token.push_step_keep_empty(second);
    [plan_of(1, 1), plan_of(4, 1), plan_of(1, TURN_BURST), token]
}

/// The network [`fit_turns`] prices the exchanges on: `size` ranks on one
/// host of `cores` cores, links of bandwidth `bandwidth`, and `figures`
/// [α, o, w].
fn turn_network(size: usize, cores: usize, bandwidth: f64, figures: [f64; 3]) -> Network {
    let [alpha, overhead, wake] = figures;
    let link = Link::new(alpha, bandwidth);
    Network::uniform(alpha, bandwidth)
        .with_overhead(overhead)
        .with_buffer_bytes(DEFAULT_BUFFER_BYTES)
        .with_hosts(Hosts::Blocks(size), link)
        .with_host_cores(cores)
        .with_wake(wake)
}

/// [α, o, c, w] such that the model, with `size` ranks taking turns at
/// `cores` cores, prices the exchanges of [`measure_turns`] at their
/// measured times `[one, four, busy, token]`: α from the token's N hops
/// beyond `one` (one rank busy at a time: a hop's latency and one wake),
/// the wake w from the three all-busy steps `four` has beyond `one` (N
/// ranks woken at once take turns), o from the messages `busy` has beyond
/// `one`, each in turn by regula falsi until they settle (at most 60
/// rounds; the prices grow with each), and c what `one` has beyond its
/// price. With a core per rank there are no turns: w is 0 and α comes from
/// `four`. Every rank fits alike, to the bit.
fn fit_turns(times: [f64; 4], size: usize, cores: usize, bandwidth: f64) -> [f64; 4] {
    let [one, four, busy, token] = times;
    let mut by_plan: [Vec<Plan>; 4] = Default::default();
    for r in 0..size {
        for (k, plan) in turn_plans(r, size).into_iter().enumerate() {
            by_plan[k].push(plan);
        }
    }
    let priced = |k: usize, figures: [f64; 3]| {
        let net = turn_network(size, cores, bandwidth, figures);
        price(&by_plan[k], &net, 1).map_or(f64::NAN, |e| e.time)
    };
    // How much longer plan k prices than the one-step exchange.
    let beyond = |k: usize, figures: [f64; 3]| priced(k, figures) - priced(0, figures);
    // Unknowns x = [α, o, w] (w fixed at 0 without turns, and α then
    // from `four`); what each equation's plan must price beyond `one`.
    let turns = size > cores;
    let (plans, wants): (Vec<usize>, Vec<f64>) = if turns {
        (vec![3, 2, 1], vec![token - one, busy - one, four - one])
    } else {
        (vec![1, 2], vec![four - one, busy - one])
    };
    let unknowns = plans.len();
    // Each equation in turn for its own figure (Gauss–Seidel; each price
    // grows with its figure, piecewise linearly), by regula falsi (the
    // Illinois rule) between 0 and the time the plan measured, until the
    // figures settle.
    let scale = (four - one).abs().max(1e-9);
    let bounds = [token.max(four), busy, four];
    let mut x = [((four - one) / 3.0).max(0.0), 0.0, 0.0];
    for _ in 0..60 {
        let before = x;
        for u in 0..unknowns {
            let f = |v: f64| {
                let mut y = x;
                y[u] = v;
                beyond(plans[u], y) - wants[u]
            };
            x[u] = falsi(&f, bounds[u].max(0.0), 1e-12 * scale);
        }
        let moved = x
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if moved <= 1e-12 * scale {
            break;
        }
    }
    let [alpha, overhead, wake] = x;
    let call = (one - priced(0, [alpha, overhead, wake])).max(0.0);
    [alpha, overhead, call, wake]
}

/// The root of `f` (growing) in [0, `hi`] to within `tol`, by regula
/// falsi with the Illinois rule; 0 or `hi` where f has no root between.
fn falsi(f: &dyn Fn(f64) -> f64, hi: f64, tol: f64) -> f64 {
    let (mut a, mut b) = (0.0, hi);
    let (mut fa, mut fb) = (f(a), f(b));
    // (NaN prices count as no root: the bound is kept.)
    if fa >= 0.0 || fa.is_nan() {
        return a;
    }
    if fb <= 0.0 || fb.is_nan() {
        return b;
    }
    let mut side = 0i8;
    for _ in 0..100 {
        let c = (a * fb - b * fa) / (fb - fa);
        let fc = f(c);
        if fc.abs() <= tol || (b - a) <= tol {
            return c;
        }
        if fc < 0.0 {
            (a, fa) = (c, fc);
            if side == -1 {
                fb *= 0.5;
            }
            side = -1;
        } else {
            (b, fb) = (c, fc);
            if side == 1 {
                fa *= 0.5;
            }
            side = 1;
        }
    }
    0.5 * (a + b)
}

/// Of `every` (each rank's block of runs × `plans` times, NaN where the
/// rank spoiled the run), plan `k`'s time: per run the slowest rank's,
/// then the median over the runs no rank spoiled; NaN if all were.
fn slowest_median(every: &[f64], size: usize, plans: usize, k: usize) -> f64 {
    let block = every.len() / size.max(1);
    let mut runs: Vec<f64> = (0..block / plans)
        .map(|run| {
            (0..size)
                .map(|r| every[r * block + run * plans + k])
                .fold(0.0, |a: f64, t| {
                    if a.is_nan() || t.is_nan() {
                        f64::NAN
                    } else {
                        a.max(t)
                    }
                })
        })
        .filter(|t| !t.is_nan())
        .collect();
    if runs.is_empty() {
        f64::NAN
    } else {
        middle(&mut runs)
    }
}

/// The figures every rank agrees on from what each measured (`every`:
/// `size` blocks of [`DECISION`]), over the ranks that measured them (the
/// pairs' initiators for a link kind, every rank for γ and copy): a link's
/// rates ([`LINK_RATES`]) the slowest pair's, every other figure the
/// median ([`middle`]). The same on every rank, bit for bit.
///
/// A collective's step ends with its slowest transfer and a ring moves at
/// its slowest link, so the median pair's rates priced loopback TCP calls
/// of 1 MiB and more at a median 0.82–0.84 of measured on the 16-core
/// device machine (2026-11-27); the slowest pair's, at 0.94. (On one
/// crowded host a single pair measures the links; shaped links on the
/// 2-vCPU VM, whose pairs all measure while short of cores, were priced
/// at a median 0.67 of measured at 1 MiB and more with the median pair's
/// rates, 0.90 with the slowest's.)
fn medians(every: &[f64], size: usize) -> Vec<f64> {
    let mut agreed = vec![0f64; DECISION];
    let mut pick = |at: usize, width: usize, rates: &[usize]| {
        let rows: Vec<&[f64]> = (0..size)
            .map(|r| &every[r * DECISION + at..r * DECISION + at + width])
            .filter(|row| row[0] == Source::Measured.code())
            .collect();
        if rows.is_empty() {
            return;
        }
        agreed[at] = Source::Measured.code();
        for k in 1..width {
            let mut v: Vec<f64> = rows.iter().map(|row| row[k]).collect();
            agreed[at + k] = if rates.contains(&k) {
                slowest(&v)
            } else {
                middle(&mut v)
            };
        }
    };
    for code in 0..SLOTS {
        pick(link_slot(code).start, LINK_WIDTH, &LINK_RATES);
    }
    pick(REDUCE_AT, 5, &[]);
    agreed
}

/// A link slot's rates (B, D, the hot B and D, the cold D), which
/// [`medians`] takes from the slowest pair.
const LINK_RATES: [usize; 5] = [2, DUPLEX_AT, HOT_AT, HOT_AT + 1, COLD_AT];

/// The least positive value of `v`; 0 when none is.
fn slowest(v: &[f64]) -> f64 {
    let least = v
        .iter()
        .copied()
        .filter(|x| *x > 0.0)
        .fold(f64::INFINITY, f64::min);
    if least.is_finite() {
        least
    } else {
        0.0
    }
}

/// Each rank's partner for measuring link kind `code` and whether it leads
/// (`None`: no partner): ranks are paired greedily in rank order, each with
/// the highest free rank it reaches by that kind (`far`; 0 with 7, 1 with
/// 6, ... of 8), else the lowest, so that as many pairs as can measure at
/// once.
///
/// Far: a collective's steps span near and far ranks and end with their
/// slowest link, while neighbours in rank order may share a core's
/// caches (two hardware threads of one core, numbered side by side on many
/// virtual machines) or a socket, and `braid-run` pins rank r to the r-th
/// CPU. Near where ranks take turns at a host's cores: there the scheduler
/// places the ranks (`braid-run` pins none), and the crowded figures
/// checked on the 2-vCPU VM were measured by neighbours.
fn pairing(kinds: &[Vec<usize>], code: usize, far: bool) -> Vec<Option<(usize, bool)>> {
    let n = kinds.len();
    let mut partner = vec![None; n];
    for i in 0..n {
        if partner[i].is_some() {
            continue;
        }
        let free = |j: &usize| partner[*j].is_none() && kinds[i][*j] == code;
        let found = if far {
            (i + 1..n).rev().find(free)
        } else {
            (i + 1..n).find(free)
        };
        if let Some(j) = found {
            partner[i] = Some((j, true));
            partner[j] = Some((i, false));
        }
    }
    partner
}

/// The cost model's network for a group whose rank `i` reaches rank `j` by
/// link kind `kinds[i][j]` (codes into [`LINK_KINDS`]).
///
/// One kind: every pair on it. Several: the slowest kind (`tcp` when
/// present) joins hosts, the others join the ranks of a host (shared memory);
/// hosts are the groups of ranks joined by the other kinds. The model's
/// per-message overhead is the largest of the kinds'.
fn build_network(
    kinds: &[Vec<usize>],
    links: &[LinkFigures],
    gamma: f64,
    copy: f64,
    chunk: u64,
) -> Network {
    let link = |l: &LinkFigures| {
        let mut link = Link::new(l.alpha, l.bandwidth).with_injection(l.injection);
        if let Some(c) = l.latency_by_size {
            link = link.with_latency_by_size(c);
        }
        if let Some(c) = l.bandwidth_by_size {
            link = link.with_bandwidth_by_size(c);
        }
        if let Some(c) = l.duplex_by_size {
            link = link.with_duplex_by_size(c);
        }
        if let Some(d) = l.duplex {
            link = link.with_duplex(d);
        }
        // braid's TCP transport reads a socket into its buffer and folds
        // from there (`Transport::recv` lends that buffer); shared memory
        // lends its ring.
        if l.kind == "tcp" {
            link = link.with_staged_fold();
        }
        link
    };
    let overhead = links.iter().map(|l| l.overhead).fold(0.0, f64::max);
    let call = links.iter().map(|l| l.call_overhead).fold(0.0, f64::max);
    let wake = links.iter().map(|l| l.wake).fold(0.0, f64::max);
    let base = |l: Link| Network {
        inter: l,
        intra: l,
        ..Network::uniform(l.alpha, l.bandwidth)
            .with_gamma(gamma)
            .with_copy(copy)
            .with_overhead(overhead)
            .with_call_overhead(call)
            .with_wake(wake)
            .with_pipeline_bytes(chunk)
            .with_buffer_bytes(DEFAULT_BUFFER_BYTES)
    };
    match links {
        [] => {
            let (a, b, _) = default_link("local");
            base(Link::new(a, b))
        }
        [only] => base(link(only)),
        _ => {
            let inter = links
                .iter()
                .find(|l| l.kind == "tcp")
                .or_else(|| links.iter().max_by(|x, y| x.alpha.total_cmp(&y.alpha)))
                .expect("several links");
            let inter_code = kind_code(inter.kind);
            let intra = links
                .iter()
                .filter(|l| l.kind != inter.kind)
                .max_by(|x, y| x.pairs.cmp(&y.pairs).then(x.alpha.total_cmp(&y.alpha)))
                .expect("several links");
            // Hosts: ranks joined by any kind but the inter-host one.
            let n = kinds.len();
            let mut host: Vec<usize> = (0..n).collect();
            fn root(h: &mut [usize], mut x: usize) -> usize {
                while h[x] != x {
                    h[x] = h[h[x]];
                    x = h[x];
                }
                x
            }
            for (i, row) in kinds.iter().enumerate() {
                for (j, &c) in row.iter().enumerate() {
                    if i != j && c != inter_code {
                        let (a, b) = (root(&mut host, i), root(&mut host, j));
                        host[a.max(b)] = a.min(b);
                    }
                }
            }
            let map: Vec<usize> = (0..n).map(|r| root(&mut host, r)).collect();
            base(link(inter)).with_hosts(Hosts::Map(map), link(intra))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(kind: &'static str, alpha: f64, pairs: usize) -> LinkFigures {
        LinkFigures {
            kind,
            alpha,
            bandwidth: 1e9,
            duplex: None,
            bandwidth_by_size: None,
            duplex_by_size: None,
            overhead: 1e-7,
            call_overhead: 0.0,
            wake: 0.0,
            latency_by_size: None,
            source: Source::Default,
            pairs,
            injection: Injection::Link,
        }
    }

    #[test]
    fn a_described_calibration_is_read_back_as_its_network() {
        // Figures exact at the digits `describe` prints, every optional
        // part present: the network read back prices as the calibrated one
        // (a live calibration's figures lose digits; tests/selection.rs
        // checks one of those within 3%).
        let n = 4;
        let stream = 9_437_184.0;
        let c = |p: &[(f64, f64)]| SizeCurve::new(p).unwrap();
        let link = LinkFigures {
            kind: "shm",
            alpha: 0.25e-6,
            bandwidth: 10.125e9,
            duplex: Some(5.5e9),
            bandwidth_by_size: Some(c(&[(HOT_BYTES as f64, 12.5e9), (stream, 10.125e9)])),
            duplex_by_size: Some(c(&[
                (HOT_BYTES as f64, 8.25e9),
                (stream, 5.5e9),
                (cold_span(stream as u64) as f64, 4.0e9),
            ])),
            overhead: 0.5e-6,
            call_overhead: 1.25e-6,
            wake: 0.75e-6,
            latency_by_size: Some(c(&CURVE_BYTES
                .iter()
                .zip([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
                .map(|(&b, us)| (b as f64, us * 1e-6))
                .collect::<Vec<_>>())),
            source: Source::Measured,
            pairs: n * (n - 1),
            injection: Injection::Link,
        };
        let (gamma, copy) = (0.125e-9, 0.075e-9);
        let memory = (
            c(&[
                (HOT_REDUCE_BYTES as f64, gamma),
                (COLD_REDUCE_BYTES as f64, 0.25e-9),
            ]),
            c(&[
                (HOT_REDUCE_BYTES as f64, copy),
                (COLD_REDUCE_BYTES as f64, 0.125e-9),
            ]),
        );
        let bus = c(&[(HOT_BYTES as f64, 30.5e9), (20_971_520.0, 15.25e9)]);
        let built = build_network(&[], &[link], gamma, copy, 256 << 10)
            .with_memory_by_size(memory.0, memory.1);
        let network = built
            .clone()
            .with_hosts(Hosts::Blocks(n), built.inter)
            .with_host_bandwidth(15.25e9)
            .with_host_bandwidth_by_size(bus)
            .with_host_cores(2);
        let cal = Calibration {
            links: vec![link],
            gamma,
            copy,
            reduce_source: Source::Measured,
            host_bandwidth: 15.25e9,
            host_bandwidth_by_size: Some(bus),
            host_source: Source::Measured,
            network: network.clone(),
            elapsed: Duration::from_millis(100),
            pairs: Vec::new(),
        };
        let line = cal.describe();
        let read = network_from_description(&line, n, 256 << 10).unwrap();
        for (c, a) in [
            (Collective::AllReduce, Algorithm::Ring),
            (Collective::AllReduce, Algorithm::Tree),
            (Collective::AllToAll, Algorithm::Linear),
            (Collective::Gather, Algorithm::Star),
        ] {
            for count in [2u64, 16 << 10, 4 << 20] {
                let counts = match c {
                    Collective::AllToAll => Counts::Matrix {
                        counts: vec![count; n * n],
                        partial: false,
                    },
                    Collective::Gather => Counts::Blocks(vec![count; n]),
                    _ => Counts::Single(count),
                };
                let shape = Shape::new(c, n, 0, counts);
                let opts = PlanOptions { chunk_elems: 0 };
                let price = |net: &Network| {
                    braid_topologies::price_call(a, &shape, &opts, net, 4)
                        .unwrap()
                        .time
                };
                let (want, got) = (price(&network), price(&read));
                assert!(
                    (got / want - 1.0).abs() < 1e-9,
                    "{c} {a} {count}: {got:e} read back, {want:e} calibrated\n{line}"
                );
            }
        }
        assert!(network_from_description("shm: alpha x us", n, 1 << 18).is_err());
        // The pairs line lists at most PAIRS_DESCRIBED pairs.
        let pair = PairFigures {
            kind: "shm",
            ranks: (0, 1),
            alpha: 0.25e-6,
            overhead: 0.5e-6,
            bandwidth: 10.125e9,
            duplex: 0.0,
        };
        let many = Calibration {
            pairs: vec![pair; PAIRS_DESCRIBED + 6],
            ..cal.clone()
        };
        let described = many.describe_pairs();
        assert_eq!(
            described.matches("shm 0-1: alpha 0.25 us").count(),
            PAIRS_DESCRIBED
        );
        assert!(described.ends_with("; 6 more pairs"), "{described}");
        assert_eq!(cal.describe_pairs(), "");
        // TCP folds a copy of the socket's bytes, shared memory its ring.
        assert!(!read.inter.staged_fold);
        let tcp = network_from_description(&line.replacen("shm:", "tcp:", 1), n, 256 << 10);
        assert!(tcp.unwrap().inter.staged_fold);
    }

    #[test]
    fn the_turns_fit_recovers_the_figures_the_model_was_priced_with() {
        // Times the model gives the four exchanges for known α, o, c and
        // w (ranks taking turns at fewer cores, or a core each, where w
        // plays no part): the fit gives those figures back (to 1e-11 at
        // 4 and 8 ranks on 2 cores; within 5% where the turns couple the
        // figures more, as 3 or 16 ranks on 2 cores, in its 60 rounds).
        let bandwidth = 1e10;
        for (size, cores) in [(8, 2), (4, 2), (3, 2), (8, 1), (16, 2), (5, 8)] {
            for (alpha, o, c, w) in [
                (6e-6, 0.5e-6, 15e-6, 2e-6),
                (20e-6, 2e-6, 0.0, 5e-6),
                (1e-6, 0.1e-6, 3e-6, 0.5e-6),
            ] {
                let w = if size > cores { w } else { 0.0 };
                let all: Vec<[Plan; 4]> = (0..size).map(|r| turn_plans(r, size)).collect();
                let net = turn_network(size, cores, bandwidth, [alpha, o, w]);
                let time = |k: usize| {
                    let plans: Vec<Plan> = all.iter().map(|p| p[k].clone()).collect();
                    price(&plans, &net, 1).unwrap().time + c
                };
                let times = [time(0), time(1), time(2), time(3)];
                let [a, oo, cc, ww] = fit_turns(times, size, cores, bandwidth);
                let what = format!("{size} ranks on {cores} cores, α {alpha} o {o} c {c} w {w}");
                assert!((a - alpha).abs() <= 5e-2 * alpha, "{what}: α {a}");
                assert!((oo - o).abs() <= 5e-2 * o, "{what}: o {oo}");
                assert!((cc - c).abs() <= 5e-2 * alpha, "{what}: c {cc}");
                assert!((ww - w).abs() <= 5e-2 * alpha, "{what}: w {ww}");
            }
        }
        // Times no figures fit (one exchange slower than four): none
        // negative.
        let [a, o, c, w] = fit_turns([20e-6, 19e-6, 10e-6, 5e-6], 8, 2, bandwidth);
        assert!(
            a >= 0.0 && o >= 0.0 && c >= 0.0 && w >= 0.0,
            "{a} {o} {c} {w}"
        );
    }

    #[test]
    fn pairs_span_near_and_far_ranks_unless_ranks_take_turns() {
        // kinds[i][j]: shm (1) within hosts of `per_host` ranks, tcp (2)
        // across them.
        let kinds = |n: usize, per_host: usize| -> Vec<Vec<usize>> {
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| match (i == j, i / per_host == j / per_host) {
                            (true, _) => usize::MAX,
                            (false, true) => 1,
                            (false, false) => 2,
                        })
                        .collect()
                })
                .collect()
        };
        // Each rank's partner (none: itself), checking that both sides
        // agree and exactly one leads.
        let pairs = |k: &[Vec<usize>], code: usize, far: bool| -> Vec<usize> {
            let partner = pairing(k, code, far);
            (0..k.len())
                .map(|r| match partner[r] {
                    Some((p, leads)) => {
                        assert_eq!(partner[p], Some((r, !leads)));
                        assert_eq!(leads, r < p);
                        p
                    }
                    None => r,
                })
                .collect()
        };
        let one_host = kinds(8, 8);
        assert_eq!(pairs(&one_host, 1, true), [7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(pairs(&one_host, 1, false), [1, 0, 3, 2, 5, 4, 7, 6]);
        assert_eq!(pairs(&kinds(3, 3), 1, true), [2, 1, 0]);
        let two_hosts = kinds(8, 4);
        assert_eq!(pairs(&two_hosts, 1, true), [3, 2, 1, 0, 7, 6, 5, 4]);
        assert_eq!(pairs(&two_hosts, 2, true), [7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(pairs(&two_hosts, 2, false), [4, 5, 6, 7, 0, 1, 2, 3]);
    }

    #[test]
    fn pairs_agree_on_the_slowest_pair_s_rates_and_the_median_of_the_rest() {
        assert_eq!(middle(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(middle(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(middle(&mut []), 0.0);
        // 6 ranks, 3 pairs: the initiators (ranks 0, 2 and 4) measured tcp;
        // the responders' rows are not figures. Rank 4 measured no hot
        // rates (0: not measured) and the others' cold D is 0.
        let tcp = link_slot(kind_code("tcp")).start;
        let mut every = vec![0f64; 6 * DECISION];
        for (rank, alpha, b, d, hot) in [
            (0, 2e-6, 6e9, 3e9, 9e9),
            (2, 5e-6, 4e9, 2e9, 8e9),
            (4, 3e-6, 5e9, 2.5e9, 0.0),
        ] {
            let row = &mut every[rank * DECISION..];
            row[tcp] = Source::Measured.code();
            row[tcp + 1] = alpha;
            row[tcp + 2] = b;
            row[tcp + DUPLEX_AT] = d;
            row[tcp + HOT_AT] = hot;
        }
        let agreed = medians(&every, 6);
        assert_eq!(agreed[tcp], Source::Measured.code());
        assert_eq!(agreed[tcp + 1], 3e-6, "α: the median");
        assert_eq!(agreed[tcp + 2], 4e9, "B: the slowest pair's");
        assert_eq!(agreed[tcp + DUPLEX_AT], 2e9, "D: the slowest pair's");
        assert_eq!(
            agreed[tcp + HOT_AT],
            8e9,
            "hot B: the slowest that measured"
        );
        assert_eq!(agreed[tcp + COLD_AT], 0.0, "cold D: measured by none");
    }

    #[test]
    fn a_turn_is_the_slowest_rank_s_and_spoiled_runs_do_not_count() {
        // 3 ranks, 3 runs, 2 plans: every[rank][run][plan].
        let nan = f64::NAN;
        #[rustfmt::skip]
        let every = [
            1.0, 10.0,   5.0, 50.0,   9.0, 90.0,
            2.0, 20.0,   4.0, nan,    8.0, 80.0,
            3.0, 30.0,   6.0, 60.0,   7.0, 70.0,
        ];
        // Plan 0: runs' slowest 3, 6, 9 → median 6.
        assert_eq!(slowest_median(&every, 3, 2, 0), 6.0);
        // Plan 1: run 1 spoiled by rank 1 (even where it is not first or
        // last); the others' slowest 30 and 90 → their mean.
        assert_eq!(slowest_median(&every, 3, 2, 1), 60.0);
        assert!(slowest_median(&[nan, nan], 2, 1, 0).is_nan());
    }

    #[test]
    fn mixed_kinds_make_hosts() {
        // Ranks 0, 1 on one host (shm), 2, 3 on another; tcp between.
        let s = 1;
        let t = 2;
        let x = usize::MAX;
        let kinds = vec![
            vec![x, s, t, t],
            vec![s, x, t, t],
            vec![t, t, x, s],
            vec![t, t, s, x],
        ];
        let shm = LinkFigures {
            duplex: Some(4e8),
            ..figures("shm", 1e-6, 4)
        };
        let links = [shm, figures("tcp", 2e-5, 8)];
        let net = build_network(&kinds, &links, 1e-10, 1e-10, 1 << 18);
        assert_eq!(net.hosts, Hosts::Map(vec![0, 0, 2, 2]));
        assert_eq!(net.inter.alpha, 2e-5);
        assert_eq!(net.intra.alpha, 1e-6);
        assert_eq!((net.intra.duplex, net.inter.duplex), (Some(4e8), None));
        assert_eq!(net.pipeline_bytes, 1 << 18);
        let one = build_network(&kinds, &links[..1], 1e-10, 1e-10, 1 << 18);
        assert_eq!(one.hosts, Hosts::Blocks(1));
        assert_eq!(one.inter.alpha, 1e-6);
    }

    #[test]
    fn hosts_group_by_identity_and_the_bus_is_for_real_hosts() {
        let hosts = [5.0, 7.0, 5.0, 7.0, 9.0];
        assert_eq!(host_groups(&hosts), vec![vec![0, 2], vec![1, 3], vec![4]]);
        assert_eq!(host_map(&hosts), vec![0, 1, 0, 1, 4]);
        let code = |k: &str| kind_code(k);
        assert!(bus_kinds(&[code("shm"), code("tcp")]));
        assert!(bus_kinds(&[code("local")]));
        assert!(
            !bus_kinds(&[code("local+shape")]),
            "shaped links emulate hosts apart"
        );
        assert!(!bus_kinds(&[code("shm"), code("cuda")]));
        let row = [
            -1.0,
            code("tcp") as f64,
            code("shm") as f64,
            code("shm") as f64,
        ];
        assert_eq!(kinds_name(&row), "shm+tcp");
        assert_ne!(bus_key("shm", 4).key(), bus_key("tcp", 4).key());
        assert_ne!(bus_key("shm", 4).key(), bus_key("shm", 8).key());
    }

    #[test]
    fn cached_curves_read_back_exactly_or_not_at_all() {
        let curve = [1.5e-7, 2e-7, 3.25e-7, 4e-7, 5e-7, 6.125e-7];
        let text: Vec<String> = curve.iter().map(|a| format!("{a:e}")).collect();
        assert_eq!(parse_figures(&text.join("/")), Some(curve));
        assert_eq!(parse_figures::<2>("2e9/1e9"), Some([2e9, 1e9]));
        assert_eq!(parse_figures::<2>("2e9"), None);
        for bad in [
            "",
            "1e-7/2e-7",
            "1e-7/2e-7/3e-7/4e-7/5e-7/6e-7/7e-7",
            "1e-7/2e-7/x/4e-7/5e-7/6e-7",
            "1e-7/2e-7/0/4e-7/5e-7/6e-7",
            "1e-7/2e-7/inf/4e-7/5e-7/6e-7",
        ] {
            assert_eq!(parse_figures::<6>(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_lines_round_trip_and_expire() {
        let mut e = link_key("tcp", 4);
        e.fields.insert("alpha".into(), "2e-5".into());
        e.fields.insert("bandwidth".into(), "1.25e9".into());
        e.fields.insert("overhead".into(), "1e-6".into());
        e.fields.insert("at".into(), now_secs().to_string());
        let back = Entry::parse(&e.line()).unwrap();
        assert_eq!(back, e);
        assert!(lookup(std::slice::from_ref(&back), &link_key("tcp", 4)).is_some());
        assert!(lookup(std::slice::from_ref(&back), &link_key("tcp", 5)).is_none());
        assert!(lookup(std::slice::from_ref(&back), &link_key("shm", 4)).is_none());
        e.fields.insert("at".into(), "1".into());
        assert!(lookup(&[e], &link_key("tcp", 4)).is_none(), "expired");
        assert_eq!(Entry::parse("# comment"), None);
        assert_eq!(Entry::parse(""), None);
    }
}
