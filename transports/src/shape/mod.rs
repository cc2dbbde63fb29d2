//! Link shaping: any transport made to behave like a slower network, so that
//! braid's algorithm choices can be tried on networks this machine does not
//! have (`BRAID_SHAPE=alpha_us,gbps`, e.g. `500,1`: 500 µs per message and
//! 1 Gbit/s per link).
//!
//! [`ShapedTransport`] wraps a finished transport (local threads, TCP, shared
//! memory, mixed) in user space and knows nothing of what the bytes mean.
//!
//! # Where shaping happens: at the receiver
//! Sends go straight to the inner transport (so its back-pressure, its
//! zero-copy paths and its progress after a call returns are unchanged). The
//! receiving side takes bytes out of the inner transport as soon as it sees
//! them, stamps them with the time it saw them (*arrival*), keeps them in a
//! per-peer queue and lends them to the caller only once released:
//!
//! ```text
//! serial_end = max(arrival, link_free) + bytes / B     link_free = serial_end
//! release    = serial_end + α
//! ```
//!
//! i.e. each directed link `i → j` is a wire that serialises at B bytes per
//! second and delivers every byte α after it was put on it. The two
//! directions of a pair are separate wires (full duplex) and every ordered
//! pair has its own (per-link bandwidth: the cost model's
//! `Injection::Unlimited`). Batches taken from the inner transport are cut
//! into pieces of [`PIECE_BYTES`], each released at its own time, so that a
//! large message is lent as it trickles in, not all at once at its end.
//!
//! With [`Ports::PerRank`] (`BRAID_SHAPE=500,1,ports`) each rank instead has
//! one injection and one ejection port at B, as the cost model's default
//! `Injection::Link` (one NIC per rank): the ejection port is one wire
//! clock shared by all of a rank's incoming links, and the injection port
//! paces sends — `send` takes nothing while the port is still busy with the
//! bytes it took before (`taken / B`), so the bytes a rank sends to all its
//! peers together leave at B at most. Nothing is held on the sending side.
//!
//! # How messages are delimited: they are not
//! The wrapper never parses the stream (the executor's 40-byte headers stay
//! opaque). α is a latency every byte pays from the moment it was sent, not
//! a per-call charge: a message lands α plus its bytes/B after it was sent,
//! and messages sent back to back on one link overlap their latencies as on
//! a real wire (a message that finds the link still busy queues behind the
//! earlier bytes instead of paying α again). A message that waits for a
//! reply — every step of a collective that depends on the previous one —
//! pays α again, so a ring all-reduce of N ranks costs at least 2(N−1)·α.
//! This is what the cost model charges ("lands α after it is absorbed").
//!
//! Arrivals are stamped when this rank looks: at every `recv` from that peer
//! and at every `wait` (which takes from all peers before and after it
//! sleeps, and wakes when the inner transport has news). Bytes that arrive
//! while the rank is outside braid (computing) are stamped when it comes
//! back, so the emulation can overstate a delay, never understate it.
//!
//! # Memory and back-pressure
//! A peer's queue holds at most [`LinkShape::queue_bytes`] (2·B·α, at least
//! 4 MiB, at most 256 MiB; 16 MiB without a bandwidth limit): the wrapper
//! stops taking from the inner transport beyond it, whose own cap then stalls
//! the sender. Twice the bandwidth-delay product keeps a busy link busy.
//!
//! # Waiting
//! [`Transport::wait`] takes what has arrived, returns at once if bytes were
//! released since the last wait returned (the caller may not have seen them)
//! or a paced send may go again, and otherwise sleeps in the inner
//! transport's `wait` until the earliest of the next release, the injection
//! port's free time (after a refused send) and the caller's deadline: it
//! never asks to sleep past a due release and never spins while nothing is
//! due. A release must be lent on time, yet no sleep ends sooner than the
//! machine wakes a thread: on the 2-vCPU VM a timed sleep ended 15–25 µs
//! late, and 65–70 µs late with Linux's default timer slack of 50 µs (which
//! let a link shaped to α = 20 µs measure 22 or 62 µs from run to run). So
//! a sleep towards a release runs with the thread's timer slack at its least
//! (restored afterwards) and ends early by the inner transport's average
//! lateness (at most [`MAX_SPIN`]); the rest is spun, yielding the core and
//! taking arrivals. Inner transports whose timed waits end much later (an
//! average above [`COARSE_LATENESS`]) are noticed: epoll counts whole
//! milliseconds, and the local transport yields the CPU a hundred times
//! before it sleeps, which on a busy machine costs tens of milliseconds. For them the last stretch before that (twice their
//! lateness, at least [`FINE_SPAN`]) is slept with `thread::sleep` in
//! slices of at most [`POLL_SLICE`] (so arrivals are stamped and freed space
//! is seen at most that late); their lateness is measured again from time to
//! time. The first late wake of a transport is a miss: its release is lent
//! late (by the inner transport's lateness), later ones are not.
//!
//! Errors of the inner transport pass through: a failing peer's error is
//! returned by `recv` once the bytes it sent before are lent (as on a real
//! network, where they were already on the wire); `send` and `wait` return
//! theirs at once. `abandon` is forwarded.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use braid_transports::shape::{LinkShape, ShapedTransport};
//! use braid_transports::{local, Transport};
//!
//! let shape = LinkShape::parse("2000,1")?.unwrap(); // 2 ms, 1 Gbit/s
//! let mut ends = local::endpoints(2, 1 << 20);
//! let mut b = ShapedTransport::new(Box::new(ends.pop().unwrap()), shape);
//! let mut a = ShapedTransport::new(Box::new(ends.pop().unwrap()), shape);
//! let sent = Instant::now();
//! assert_eq!(a.send(1, &[b"hello"]).unwrap(), 5);
//! let mut got = Vec::new();
//! while got.len() < 5 {
//!     if b.recv(0, 5, 1, &mut |bytes| got.extend_from_slice(bytes)).unwrap() == 0 {
//!         b.wait(Instant::now() + Duration::from_secs(5)).unwrap();
//!     }
//! }
//! assert_eq!(got, b"hello");
//! assert!(sent.elapsed() >= Duration::from_millis(2));
//! # Ok::<(), String>(())
//! ```

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::{MemoryKind, Transport, TransportError};

/// The environment variable [`LinkShape::from_env`] reads.
pub const VARIABLE: &str = "BRAID_SHAPE";

/// The largest bytes released at one time: a batch taken from the inner
/// transport is cut into pieces of this size, each released when its last
/// byte has crossed the emulated wire.
pub const PIECE_BYTES: usize = 64 << 10;

/// An inner transport whose waits end this much later than asked, on
/// average, is treated as coarse (see [`FINE_SPAN`]).
pub const COARSE_LATENESS: Duration = Duration::from_micros(250);

/// With a coarse inner transport, the last stretch before a release that is
/// slept with `thread::sleep` (in slices of [`POLL_SLICE`]) instead of the
/// inner transport's `wait`: twice the average lateness, at least this.
pub const FINE_SPAN: Duration = Duration::from_millis(2);

/// The longest such stretch (for inner transports that are very late).
const MAX_FINE_SPAN: Duration = Duration::from_millis(500);

/// The longest `thread::sleep` in one wait: how late, at worst, arrivals
/// are stamped and freed space is seen while a coarse inner transport is
/// not listened to.
pub const POLL_SLICE: Duration = Duration::from_micros(200);

/// The longest stretch before a release that is spun (yielding the core)
/// instead of slept: the inner transport's average lateness, at most this.
pub const MAX_SPIN: Duration = Duration::from_micros(100);

/// A coarse inner transport not timed for this long is given the benefit of
/// the doubt (its lateness divided by 4).
const RELEARN_AFTER: Duration = Duration::from_secs(2);

/// The longest latency `BRAID_SHAPE` accepts: 10 s.
const MAX_ALPHA_US: f64 = 10_000_000.0;
/// The lowest bandwidth `BRAID_SHAPE` accepts: 1 kbit/s.
const MIN_GBPS: f64 = 1e-6;

/// Where the bandwidth of a [`LinkShape`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ports {
    /// Every directed link carries B bytes per second, independently of the
    /// others (the cost model's `Injection::Unlimited`). The default.
    PerLink,
    /// Each rank has one injection and one ejection port at B: what it sends
    /// to all peers together, and what it receives from all peers together,
    /// moves at B (the cost model's default `Injection::Link`).
    PerRank,
}

/// The network a [`ShapedTransport`] emulates: a latency and a bandwidth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkShape {
    /// α: how long after it was sent a byte may be lent to the receiver.
    pub alpha: Duration,
    /// B in bytes per second; `f64::INFINITY` for no bandwidth limit.
    pub bandwidth: f64,
    /// Whether B is per link or per rank.
    pub ports: Ports,
}

impl LinkShape {
    /// Latency `alpha` and `gbps` gigabits (10^9 bits) per second per link.
    pub fn new(alpha: Duration, gbps: f64) -> LinkShape {
        LinkShape {
            alpha,
            bandwidth: gbps * 1e9 / 8.0,
            ports: Ports::PerLink,
        }
    }

    /// The same shape with its bandwidth applied as `ports` says.
    pub fn with_ports(self, ports: Ports) -> LinkShape {
        LinkShape { ports, ..self }
    }

    /// The bandwidth in gigabits per second (infinite when unlimited).
    pub fn gbps(&self) -> f64 {
        self.bandwidth * 8.0 / 1e9
    }

    /// The default cap on the bytes queued per peer: twice the
    /// bandwidth-delay product B·α, at least 4 MiB and at most 256 MiB
    /// (16 MiB without a bandwidth limit).
    pub fn queue_bytes(&self) -> usize {
        const MIN: f64 = (4u64 << 20) as f64;
        const MAX: f64 = (256u64 << 20) as f64;
        let bdp = if self.bandwidth.is_finite() {
            2.0 * self.bandwidth * self.alpha.as_secs_f64()
        } else {
            (16u64 << 20) as f64
        };
        bdp.clamp(MIN, MAX) as usize
    }

    /// Parses a `BRAID_SHAPE` value: `alpha_us,gbps[,links|ports]` —
    /// latency in microseconds (0 to 10 000 000, fractions allowed),
    /// bandwidth in Gbit/s (at least 0.000001, or `inf` for none), and where
    /// the bandwidth applies (`links`, the default: per directed link;
    /// `ports`: per rank, see [`Ports`]). Empty, `off` or `none` means no
    /// shaping (`Ok(None)`). The error names the variable, the value and the
    /// expected form.
    pub fn parse(value: &str) -> Result<Option<LinkShape>, String> {
        let text = value.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none")
        {
            return Ok(None);
        }
        let bad = |what: String| {
            format!(
                "{VARIABLE}='{value}': {what}; expected alpha_us,gbps[,links|ports], \
                 e.g. 500,1 (500 µs per message, 1 Gbit/s per link), 50,inf (latency only) \
                 or 500,1,ports (1 Gbit/s per rank); off disables shaping"
            )
        };
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if !(2..=3).contains(&fields.len()) {
            return Err(bad(format!(
                "{} comma-separated fields where 2 or 3 were expected",
                fields.len()
            )));
        }
        let alpha_us: f64 = fields[0]
            .parse()
            .ok()
            .filter(|a: &f64| a.is_finite() && *a >= 0.0 && *a <= MAX_ALPHA_US)
            .ok_or_else(|| {
                bad(format!(
                    "latency '{}' is not a number of microseconds from 0 to 10000000",
                    fields[0]
                ))
            })?;
        let gbps: f64 = match fields[1].to_ascii_lowercase().as_str() {
            "inf" | "infinity" | "unlimited" => f64::INFINITY,
            other => other
                .parse()
                .ok()
                .filter(|g: &f64| g.is_finite() && *g >= MIN_GBPS)
                .ok_or_else(|| {
                    bad(format!(
                        "bandwidth '{}' is not a number of Gbit/s of at least 0.000001 (or inf)",
                        fields[1]
                    ))
                })?,
        };
        let ports = match fields.get(2).map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("link") | Some("links") => Ports::PerLink,
            Some("port") | Some("ports") => Ports::PerRank,
            Some(_) => {
                return Err(bad(format!(
                    "'{}' is neither links (bandwidth per link) nor ports (per rank)",
                    fields[2]
                )))
            }
        };
        Ok(Some(
            LinkShape::new(Duration::from_secs_f64(alpha_us * 1e-6), gbps).with_ports(ports),
        ))
    }

    /// Reads and parses `BRAID_SHAPE` ([`LinkShape::parse`]); `Ok(None)` when
    /// it is unset.
    pub fn from_env() -> Result<Option<LinkShape>, String> {
        match std::env::var(VARIABLE) {
            Ok(v) => LinkShape::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!(
                "{VARIABLE}={v:?} is not valid UTF-8; expected alpha_us,gbps[,links|ports], e.g. 500,1"
            )),
        }
    }

    /// Seconds-per-byte as a duration for `bytes` (zero without a limit).
    fn wire_time(&self, bytes: usize) -> Duration {
        if self.bandwidth.is_finite() {
            Duration::from_secs_f64(bytes as f64 / self.bandwidth)
        } else {
            Duration::ZERO
        }
    }
}

impl fmt::Display for LinkShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpha_us = self.alpha.as_nanos() as f64 / 1e3;
        let per = match self.ports {
            Ports::PerLink => "per link",
            Ports::PerRank => "per rank (injection and ejection ports)",
        };
        if self.bandwidth.is_finite() {
            write!(f, "α {alpha_us} µs, {} Gbit/s {per}", self.gbps())
        } else {
            write!(f, "α {alpha_us} µs, no bandwidth limit")
        }
    }
}

/// What one look at a peer's inner stream found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pulled {
    Nothing,
    Bytes,
    Error,
}

/// What this rank has taken from one peer and not yet lent.
struct PeerQueue {
    /// Bytes taken; those before `head` were lent.
    buf: Vec<u8>,
    head: usize,
    /// Stream positions: bytes taken from the inner transport, bytes
    /// released, bytes lent (`lent <= released <= taken`).
    taken: u64,
    released: u64,
    lent: u64,
    /// Not yet released pieces: (stream position of their end, release time),
    /// in order.
    marks: VecDeque<(u64, Instant)>,
    /// When this link's wire is free again (per-link bandwidth).
    link_free: Instant,
    /// The inner transport's error for this peer: nothing more is taken; it
    /// is returned once the queue can lend nothing more.
    error: Option<TransportError>,
}

impl PeerQueue {
    fn new(now: Instant) -> PeerQueue {
        PeerQueue {
            buf: Vec::new(),
            head: 0,
            taken: 0,
            released: 0,
            lent: 0,
            marks: VecDeque::new(),
            link_free: now,
            error: None,
        }
    }

    fn queued(&self) -> usize {
        (self.taken - self.lent) as usize
    }

    /// Releases the pieces due at `now`; returns the release time of the
    /// last one released, if any.
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        let mut last = None;
        while let Some(&(end, at)) = self.marks.front() {
            if at > now {
                break;
            }
            self.released = end;
            last = Some(at);
            self.marks.pop_front();
        }
        last
    }

    /// Lends up to `max` released bytes, whole `granule`s only, in one slice.
    fn lend(&mut self, max: usize, granule: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let available = ((self.released - self.lent) as usize).min(max);
        let n = available / granule * granule;
        if n == 0 {
            return 0;
        }
        sink(&self.buf[self.head..self.head + n]);
        self.head += n;
        self.lent += n as u64;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= PIECE_BYTES && self.head >= self.buf.len() - self.head {
            // More lent than left: moving what is left costs less than what
            // was lent since the last move (amortised one copy per byte).
            self.buf.drain(..self.head);
            self.head = 0;
        }
        n
    }

    /// True when the queue can never lend another `granule` and the inner
    /// transport reported an error: time to pass it on.
    fn exhausted(&self, granule: usize) -> bool {
        self.error.is_some()
            && self.marks.is_empty()
            && ((self.released - self.lent) as usize) < granule
    }
}

/// A transport whose links behave like a network of latency α and bandwidth
/// B. See the [module documentation](self).
pub struct ShapedTransport {
    inner: Box<dyn Transport>,
    shape: LinkShape,
    queue_bytes: usize,
    peers: Vec<PeerQueue>,
    /// Per-rank ports ([`Ports::PerRank`]): when the ejection wire (shared by
    /// all incoming links) and the injection port are free again.
    eject_free: Instant,
    inject_free: Instant,
    /// A send was refused because the injection port was busy: the next wait
    /// wakes when it is free.
    paced: bool,
    /// When the last wait returned: releases after it may be unseen.
    last_wake: Instant,
    /// Average lateness of the inner transport's waits, and when it was
    /// last measured.
    lateness: Duration,
    sampled: Instant,
    name: &'static str,
}

impl ShapedTransport {
    /// Wraps `inner` so that its links behave as `shape` says, queueing at
    /// most [`LinkShape::queue_bytes`] per peer.
    pub fn new(inner: Box<dyn Transport>, shape: LinkShape) -> ShapedTransport {
        let now = Instant::now();
        let name = match inner.name() {
            "local" => "local+shape",
            "tcp" => "tcp+shape",
            "shm" => "shm+shape",
            "mixed" => "mixed+shape",
            _ => "shaped",
        };
        ShapedTransport {
            peers: (0..inner.size()).map(|_| PeerQueue::new(now)).collect(),
            inner,
            queue_bytes: shape.queue_bytes(),
            shape,
            eject_free: now,
            inject_free: now,
            paced: false,
            last_wake: now,
            lateness: MAX_SPIN / 2,
            sampled: now,
            name,
        }
    }

    /// The same transport queueing at most `bytes` per peer (at least 64).
    pub fn with_queue_bytes(mut self, bytes: usize) -> ShapedTransport {
        self.queue_bytes = bytes.max(64);
        self
    }

    /// The network this transport emulates.
    pub fn shape(&self) -> &LinkShape {
        &self.shape
    }

    /// The cap on the bytes queued per peer.
    pub fn queue_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// Bytes taken from `peer` and not yet lent (at most
    /// [`ShapedTransport::queue_bytes`]).
    pub fn queued(&self, peer: usize) -> usize {
        self.peers.get(peer).map_or(0, PeerQueue::queued)
    }

    /// Takes what `peer` has sent, up to the queue's cap, and schedules its
    /// release.
    fn pull(&mut self, peer: usize) -> Pulled {
        let rank = self.inner.rank();
        let q = &mut self.peers[peer];
        if peer == rank || q.error.is_some() {
            return Pulled::Nothing;
        }
        let room = self.queue_bytes.saturating_sub(q.queued());
        if room == 0 {
            return Pulled::Nothing;
        }
        let before = q.buf.len();
        let buf = &mut q.buf;
        match self
            .inner
            .recv(peer, room, 1, &mut |b| buf.extend_from_slice(b))
        {
            Ok(_) => {}
            Err(e) => {
                q.error = Some(e);
                return Pulled::Error;
            }
        }
        let mut left = q.buf.len() - before;
        if left == 0 {
            return Pulled::Nothing;
        }
        let arrival = Instant::now();
        let clock = match self.shape.ports {
            Ports::PerLink => &mut q.link_free,
            Ports::PerRank => &mut self.eject_free,
        };
        while left > 0 {
            let piece = left.min(PIECE_BYTES);
            left -= piece;
            let end = (*clock).max(arrival) + self.shape.wire_time(piece);
            *clock = end;
            q.taken += piece as u64;
            let release = end + self.shape.alpha;
            match q.marks.back_mut() {
                Some(last) if last.1 == release => last.0 = q.taken,
                _ => q.marks.push_back((q.taken, release)),
            }
        }
        Pulled::Bytes
    }

    /// [`ShapedTransport::pull`] from every peer; true when a peer failed.
    fn pull_all(&mut self) -> bool {
        let mut failed = false;
        for peer in 0..self.peers.len() {
            failed |= self.pull(peer) == Pulled::Error;
        }
        failed
    }

    /// Releases what is due at `now` on every link; true when something was
    /// released that was due after the last wait returned.
    fn advance_all(&mut self, now: Instant) -> bool {
        let mut fresh = false;
        for q in &mut self.peers {
            if let Some(at) = q.advance(now) {
                fresh |= at > self.last_wake;
            }
        }
        fresh
    }

    /// The next time something becomes due: a release, or the injection port
    /// after a refused send.
    fn next_due(&self) -> Option<Instant> {
        let releases = self
            .peers
            .iter()
            .filter_map(|q| q.marks.front().map(|m| m.1));
        let port = self.paced.then_some(self.inject_free);
        releases.chain(port).min()
    }

    /// Sleeps in the inner transport until `target` or news, whichever is
    /// first; precise near a release even where the inner transport is not.
    fn sleep_until(&mut self, target: Instant, due: bool) -> Result<(), TransportError> {
        let now = Instant::now();
        if now >= target {
            return Ok(());
        }
        if !due {
            // A caller's deadline needs no punctual wake.
            return self.inner.wait(target);
        }
        // No sleep ends sooner than the machine wakes a thread (15–25 µs on
        // the 2-vCPU VM): the last stretch before a release, as long as the
        // inner transport's waits have been late, is spun.
        let spin = self.lateness.min(MAX_SPIN);
        if target - now <= spin {
            let mut target = target;
            while Instant::now() < target {
                self.pull_all();
                // An arrival just stamped may fall due first (α < spin).
                target = self.next_due().map_or(target, |t| t.min(target));
                std::thread::yield_now();
            }
            return Ok(());
        }
        let _precise = PreciseWakes::new();
        let wake = target - spin;
        let mut until = wake;
        if self.lateness > COARSE_LATENESS {
            if now - self.sampled > RELEARN_AFTER {
                // Long since the inner transport was last timed: it may be
                // punctual again (the machine less busy).
                self.lateness /= 4;
                self.sampled = now;
            }
            // Wake early enough for the inner transport's lateness, then
            // sleep the rest precisely, in slices so that arrivals and freed
            // space are still seen.
            let span = (self.lateness * 2).clamp(FINE_SPAN, MAX_FINE_SPAN);
            if wake - now <= span {
                std::thread::sleep((wake - now).min(POLL_SLICE));
                return Ok(());
            }
            until = wake - span;
        }
        self.inner.wait(until)?;
        let woke = Instant::now();
        if woke >= until {
            self.lateness = (self.lateness * 3 + (woke - until)) / 4;
            self.sampled = woke;
        }
        Ok(())
    }
}

/// While it lives, this thread's timed sleeps end on time. Linux lets a sleep
/// of an ordinary thread end up to its timer slack late (50 µs unless set) so
/// that wake-ups can be batched; a link shaped to α = 20 µs then delivered in
/// 22 or 62 µs, run to run, depending on what else the machine was doing.
/// The thread's own setting is restored on drop, so a caller's threads keep
/// theirs outside braid.
struct PreciseWakes {
    /// The slack to put back (none where it was not changed).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    restore: Option<libc::c_ulong>,
    /// Not `Send`: the slack belongs to the thread that set it.
    on_this_thread: std::marker::PhantomData<*const ()>,
}

impl PreciseWakes {
    fn new() -> PreciseWakes {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: PR_GET_TIMERSLACK takes no argument and only reads the
            // calling thread's slack, which it returns (in nanoseconds).
            let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
            // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the
            // calling thread's slack; 1 ns is the least (0 means the default).
            if slack > 1 && unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) } == 0
            {
                return PreciseWakes {
                    restore: Some(slack as libc::c_ulong),
                    on_this_thread: std::marker::PhantomData,
                };
            }
        }
        PreciseWakes {
            restore: None,
            on_this_thread: std::marker::PhantomData,
        }
    }
}

impl Drop for PreciseWakes {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(slack) = self.restore {
            // SAFETY: as in `new`: sets the calling thread's slack back to
            // what it was (the guard is not `Send`, so this is the thread
            // that made it).
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack) };
        }
    }
}

impl Transport for ShapedTransport {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn memory(&self) -> MemoryKind {
        self.inner.memory()
    }

    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        if self.shape.ports == Ports::PerLink || !self.shape.bandwidth.is_finite() {
            return self.inner.send(peer, parts);
        }
        let now = Instant::now();
        if self.inject_free > now {
            self.paced = true;
            return Ok(0);
        }
        let taken = self.inner.send(peer, parts)?;
        self.inject_free = now + self.shape.wire_time(taken);
        Ok(taken)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        let size = self.peers.len();
        if peer >= size {
            return Err(TransportError::NoSuchPeer { peer, size });
        }
        if peer == self.inner.rank() {
            // Nothing is queued from this rank: the inner transport says why.
            return self.inner.recv(peer, max, granule, sink);
        }
        let granule = granule.max(1);
        self.pull(peer);
        let q = &mut self.peers[peer];
        q.advance(Instant::now());
        let lent = q.lend(max, granule, sink);
        if lent > 0 {
            // Room again: take what waits (the sender may be stalled on it)
            // and stamp it now.
            self.pull(peer);
        } else if self.peers[peer].exhausted(granule) {
            if let Some(e) = self.peers[peer].error.clone() {
                return Err(e);
            }
        }
        Ok(lent)
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let failed = self.pull_all();
        let now = Instant::now();
        let fresh = self.advance_all(now);
        let port_free = self.paced && self.inject_free <= now;
        if failed || fresh || port_free {
            self.last_wake = now;
            self.paced = false;
            return Ok(());
        }
        let (target, due) = match self.next_due() {
            Some(t) if t < deadline => (t, true),
            _ => (deadline, false),
        };
        let slept = self.sleep_until(target, due);
        self.pull_all();
        let now = Instant::now();
        self.advance_all(now);
        self.last_wake = now;
        self.paced = false;
        slept
    }

    fn abandon(&mut self) {
        self.inner.abandon();
    }
}
