//! The shared-memory transport: ranks are processes (or threads) of one
//! Linux host.
//!
//! Each ordered pair `i → j` has a single-producer single-consumer byte ring
//! in its own POSIX shared-memory segment `/braid-<job_id hex>-<i>-<j>`: a
//! header (identity, pids, flags, and `head`/`tail` counters on their own
//! cache lines) followed by a power-of-two data area
//! ([`ShmOptions::ring_bytes`]). `send` copies into the ring and publishes
//! `head` (Release); `recv` lends whole elements straight out of the ring to
//! the sink (an element straddling the wrap point is joined in a small
//! buffer) and then advances `tail` (Release): no staging copy.
//!
//! [`Transport::wait`] spins for [`ShmOptions::spin`] watching the counters
//! its peers move (ring heads, the tails of its outgoing rings, windows,
//! closing flags: lines a peer writes only when it has something to say),
//! then sleeps with `FUTEX_WAIT` on a word in its own doorbell segment
//! `/braid-<job_id hex>-<rank>-bell` until the deadline. Whoever publishes a
//! change to a rank checks that rank's sleeper count (after a fence, paired
//! with the sleeper's second look) and only if it sleeps bumps the word and
//! wakes it. The spin is long (1 ms) while this host's ranks fit its CPUs
//! and short (20 µs, backing off) when they outnumber them, so ranks that
//! outnumber cores do not burn them.
//!
//! Setting up ([`connect`]): every rank creates (`O_CREAT | O_EXCL`) its
//! doorbell and its incoming rings — replacing a stale segment left by an
//! earlier job under the same name — and stamps them with a magic number,
//! layout version, job id, ranks and its pid; then opens its peers'
//! doorbells and its outgoing rings (retrying until the deadline, refusing
//! any segment whose stamp does not match or whose creator is not alive) and
//! marks itself attached. Once every peer has attached, the creator unlinks
//! the names: after `connect` returns, nothing of the job is left in
//! `/dev/shm`, whatever happens to the processes.
//!
//! A peer that drops its endpoint sets `closed` flags and rings the
//! doorbells, seen at once; a peer process that dies without doing so is
//! found by `wait` within about [`LIVENESS_PERIOD`] by checking its pid (and
//! its start time, against pid reuse). Either way `send` to it, and `recv`
//! from it once its remaining bytes are consumed, return
//! [`TransportError::PeerClosed`].
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use braid_transports::shm::{self, ShmOptions};
//! let opts = ShmOptions::from_env()?;
//! let deadline = Instant::now() + Duration::from_secs(30);
//! // Rank 0 of 4, every rank on this host.
//! let t = shm::connect(0, 4, 0x1234, &[1, 2, 3], &opts, deadline).map_err(|e| e.to_string())?;
//! # Ok::<(), String>(())
//! ```

mod raw;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raw::{Consumer, Mapping, Producer, DATA_OFFSET, MAGIC, VERSION};

use crate::settings::{parse_size_usize, parse_spin_us};
use crate::{Transport, TransportError};

/// Default bytes of each ring's data area.
pub const DEFAULT_RING_BYTES: usize = 4 << 20;
/// Smallest ring accepted.
pub const MIN_RING_BYTES: usize = 4 << 10;
/// Largest ring accepted.
pub const MAX_RING_BYTES: usize = 1 << 30;
/// Busy-wait before sleeping while this host's ranks fit its CPUs.
pub const SPIN_WITH_SPARE_CORES: Duration = Duration::from_millis(1);
/// Busy-wait before sleeping when ranks outnumber CPUs.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// Whether large messages go by single copy unless `BRAID_SHM_CMA` says
/// otherwise: off, because on the hosts measured so far (docs/performance.md)
/// `process_vm_readv` copies at 6-7 GB/s where two cached memcpys through a
/// ring reach 15-20 GB/s, and all-reduce ran at half the bus bandwidth.
pub const DEFAULT_SINGLE_COPY_MIN: Option<usize> = None;
/// Bytes a receiver copies out of a sender's memory per read: small enough
/// to stay in cache between the copy and the caller's reduce or copy.
const BOUNCE_BYTES: usize = 256 << 10;
/// How long giving up a message waits for a peer's read of it to end.
const REVOKE_WAIT: Duration = Duration::from_secs(1);
/// How often a sleeping `wait` checks that its peers' processes still live.
pub const LIVENESS_PERIOD: Duration = Duration::from_millis(100);
/// Looks at the peers' counters in one `wait_briefly` (a few microseconds).
const BRIEF_LOOKS: u32 = 512;

/// Settings of the shared-memory transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    /// Bytes of each incoming ring's data area: a power of two from
    /// [`MIN_RING_BYTES`] to [`MAX_RING_BYTES`] (`BRAID_SHM_RING`).
    pub ring_bytes: usize,
    /// How long `wait` polls before sleeping (`BRAID_SPIN_US`); `None`
    /// picks by the cores: [`SPIN_WITH_SPARE_CORES`] while this host's
    /// ranks fit its online CPUs (a rank spinning takes no one's core, and
    /// a futex wake-up costs tens of microseconds), [`DEFAULT_SPIN`] when
    /// they outnumber them (a spinning rank would hold the core its peer
    /// needs to answer).
    pub spin: Option<Duration>,
    /// Messages (send offers) of at least this many bytes are copied once,
    /// by the receiver straight out of the sender's memory
    /// (`process_vm_readv`), where the kernel allows it; `None` sends
    /// everything through the rings (`BRAID_SHM_CMA`, a size or `off`).
    pub single_copy_min: Option<usize>,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            spin: None,
            single_copy_min: DEFAULT_SINGLE_COPY_MIN,
        }
    }
}

impl ShmOptions {
    /// The defaults overridden by `BRAID_SHM_RING` (a size such as `4M`) and
    /// `BRAID_SPIN_US`. The error names the variable, its value and what was
    /// expected.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ShmOptions::from_env`] with the variables read through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut opts = ShmOptions::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("BRAID_SHM_RING") {
            opts.ring_bytes = parse_size_usize(&v)
                .filter(|b| valid_ring(*b))
                .ok_or_else(|| {
                    format!(
                        "BRAID_SHM_RING='{v}': expected a power of two from 4K to 1G, such as 4M"
                    )
                })?;
        }
        if let Some(v) = get("BRAID_SPIN_US") {
            opts.spin = Some(parse_spin_us(&v)?);
        }
        if let Some(v) = get("BRAID_SHM_CMA") {
            opts.single_copy_min = match v.trim() {
                "off" | "0" => None,
                size => Some(parse_size_usize(size).ok_or_else(|| {
                    format!("BRAID_SHM_CMA='{v}': expected a size such as 64K, or off")
                })?),
            };
        }
        Ok(opts)
    }
}

fn valid_ring(bytes: usize) -> bool {
    bytes.is_power_of_two() && (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&bytes)
}

/// CPUs online on this host (at least 1), whatever this process's affinity.
pub fn online_cpus() -> usize {
    raw::online_cpus()
}

/// The name of ring `src → dst` of job `job_id`.
pub fn ring_name(job_id: u64, src: usize, dst: usize) -> String {
    format!("/braid-{job_id:016x}-{src}-{dst}")
}

/// The name of `rank`'s doorbell segment of job `job_id`.
pub fn bell_name(job_id: u64, rank: usize) -> String {
    format!("/braid-{job_id:016x}-{rank}-bell")
}

/// The start time of this process (see `raw::proc_stat`); 0 if unknown.
fn own_start() -> u64 {
    raw::proc_stat(std::process::id()).map_or(0, |(_, s)| s)
}

fn setup(reason: String) -> TransportError {
    TransportError::Setup { reason }
}

/// Creates segment `name`, replacing a stale one of the same name.
fn create_fresh(name: &str, len: usize) -> Result<Mapping, TransportError> {
    match Mapping::create(name, len) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::debug!(name, "replacing a stale shared-memory segment");
            raw::unlink(name);
            Mapping::create(name, len)
        }
        other => other,
    }
    .map_err(|e| setup(format!("creating shared memory {name} (in /dev/shm): {e}")))
}

/// Unlinks the names it holds when dropped (connect's error paths).
struct Names(Vec<String>);

impl Drop for Names {
    fn drop(&mut self) {
        for name in &self.0 {
            raw::unlink(name);
        }
    }
}

/// Opens segment `name` until `check` accepts it or `deadline` passes.
fn open_until(
    name: &str,
    min_len: usize,
    deadline: Instant,
    peer: usize,
    check: impl Fn(&Mapping) -> bool,
) -> Result<Mapping, TransportError> {
    loop {
        let last = match Mapping::open(name, min_len) {
            Ok(m) if check(&m) => return Ok(m),
            Ok(_) => "it belongs to another job or is not initialised yet".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(TransportError::Io {
                peer,
                reason: format!(
                    "could not open shared memory {name} before the deadline ({last}); is rank {peer} running on this host, with this job id and this rank in its peer list?"
                ),
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Whether [`connect`] is done: every peer rang this rank's doorbell and
/// attached to its incoming ring, this rank answered every sender's
/// single-copy probe, and every receiver answered this rank's.
fn setup_done(bell_done: bool, all_attached: bool, unanswered: bool, undecided: bool) -> bool {
    bell_done && all_attached && !unanswered && !undecided
}

/// Whether this process may read `pid`'s memory: reads the magic number at
/// the start of its mapping of a ring (at `base` there).
fn probe_single_copy(pid: u32, base: u64) -> bool {
    let mut word = [0u8; 8];
    match raw::read_process(pid, base, &mut word) {
        Ok(()) => u64::from_ne_bytes(word) == MAGIC,
        Err(e) => {
            tracing::debug!(
                pid,
                "shm: single-copy reads refused ({e}); large messages go through the rings"
            );
            false
        }
    }
}

/// Bytes from the start of `parts` that lie back to back in memory (a
/// window spans them, so that no element is cut at its end: the caller
/// never splits an element over separate buffers).
fn contiguous_run(parts: &[&[u8]]) -> usize {
    let mut parts = parts.iter().skip_while(|p| p.is_empty());
    let Some(first) = parts.next() else { return 0 };
    let mut end = first.as_ptr_range().end;
    let mut len = first.len();
    for p in parts {
        if p.is_empty() {
            continue;
        }
        if p.as_ptr() != end {
            break;
        }
        end = p.as_ptr_range().end;
        len += p.len();
    }
    len
}

/// The parts of `parts` after their first `skip` bytes.
fn skip_bytes<'a>(parts: &[&'a [u8]], mut skip: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
        } else {
            out.push(&p[skip..]);
            skip = 0;
        }
    }
    out
}

/// One connected peer.
struct Link {
    tx: Producer,
    rx: Consumer,
    bell: Mapping,
    pid: u32,
    start: u64,
    dead: bool,
    /// The peer reads large messages straight from this rank's memory.
    single_copy: bool,
    /// The outgoing window, while one is open.
    window: Option<OpenWindow>,
    /// Windows opened so far on the outgoing ring.
    generation: u64,
    /// A message to this peer was given up mid-way: the stream is broken.
    abandoned: bool,
    /// The last send did not fit the ring: waiting for the peer to free
    /// space, so [`Link::stamp`] watches the ring's tail.
    send_blocked: bool,
}

/// The sender's record of its open window (see `raw::Window`).
struct OpenWindow {
    addr: u64,
    start: u64,
    end: u64,
    /// Window bytes reported to the caller as taken (read by the peer).
    reported: u64,
}

impl Link {
    /// Wakes the peer if it sleeps (after publishing a change).
    fn ring_peer(&self) {
        self.bell.bell_header().bell.0.ring();
    }

    /// The sum of every counter and flag of this link the peer moves and
    /// this rank waits for (each only ever grows, so the sum changes when
    /// any does). Spinning reads lines the peer writes only when it has
    /// something to say: the outgoing ring's tail and window reads only
    /// while a send waits for them, the ring's copy of small writes only
    /// while a receive waits for it, as the peer writes those on every
    /// message it takes, and a line read here is one its next write must
    /// first take back.
    fn stamp(&self) -> u64 {
        let (rx, tx) = (self.rx.header(), self.tx.header());
        let a = Ordering::Acquire;
        let mut sum = rx
            .head
            .head
            .load(a)
            .wrapping_add(rx.window.0.state.load(a))
            .wrapping_add(rx.window.0.end.load(a))
            .wrapping_add(rx.window.0.revoked.load(a) as u64)
            .wrapping_add(rx.meta.sender_closed.load(a) as u64)
            .wrapping_add(tx.meta.receiver_closed.load(a) as u64);
        if self.rx.ring_lagging() {
            sum = sum.wrapping_add(rx.ring_head.0.load(a));
        }
        if self.send_blocked {
            sum = sum.wrapping_add(tx.tail.0.load(a));
        }
        if self.window.is_some() {
            sum = sum.wrapping_add(tx.window_ack.0.done.load(a));
        }
        sum
    }

    /// The open incoming window: its address in the peer, the count of its
    /// first byte and of the end of what is offered so far.
    fn incoming_window(&self) -> Option<(u64, u64, u64)> {
        let w = &self.rx.header().window.0;
        loop {
            let s1 = w.state.load(Ordering::Acquire);
            if s1 % 2 == 0 {
                return None;
            }
            let (addr, start) = (
                w.addr.load(Ordering::Relaxed),
                w.start.load(Ordering::Relaxed),
            );
            // Acquire: an `end` of a later window would make the state
            // check below see that window's change.
            let end = w.end.load(Ordering::Acquire);
            std::sync::atomic::fence(Ordering::Acquire);
            if w.state.load(Ordering::Relaxed) == s1 {
                return Some((addr, start, end));
            }
        }
    }

    /// Whether the peer closed its endpoint or its process is gone.
    fn gone(&self) -> bool {
        self.dead
            || self.abandoned
            || self.rx.header().window.0.revoked.load(Ordering::Acquire) != 0
            || self.rx.header().meta.sender_closed.load(Ordering::Acquire) != 0
            || self
                .tx
                .header()
                .meta
                .receiver_closed
                .load(Ordering::Acquire)
                != 0
    }
}

/// One rank's end of a shared-memory group. Create it with [`connect`].
pub struct ShmTransport {
    rank: usize,
    size: usize,
    spin: Duration,
    links: Vec<Option<Link>>,
    own_bell: Mapping,
    /// Each link's [`Link::stamp`] at the last look.
    seen: Vec<u64>,
    /// This host's ranks outnumber its online CPUs.
    oversubscribed: bool,
    /// Consecutive waits whose spin found nothing; past a few, `wait` spins
    /// only now and then (the peers are likely descheduled: cores are shared
    /// or oversubscribed).
    spin_misses: u32,
    /// Sleeps that ran to their timeout though something they waited for
    /// had changed (a lost wake-up); for the tests.
    #[cfg(test)]
    missed_wakes: u32,
    last_liveness: Instant,
    single_copy_min: Option<usize>,
    /// Where a receiver's reads of peers' memory land (allocated on first use).
    bounce: Vec<u8>,
}

/// Connects rank `rank` of a group of `size` to the `peers` on this host
/// (ranks, not `rank` itself), through shared memory named after `job_id`.
/// Every listed peer must call `connect` with the same `job_id`, `size`
/// and this rank in its own list (lists are symmetric). `opts.ring_bytes`
/// sizes this rank's *incoming* rings. Returns once every ring is attached
/// and every name unlinked; fails at `deadline` (naming the peers that did
/// not come), or at once if a peer's process is gone.
pub fn connect(
    rank: usize,
    size: usize,
    job_id: u64,
    peers: &[usize],
    opts: &ShmOptions,
    deadline: Instant,
) -> Result<ShmTransport, TransportError> {
    if rank >= size {
        return Err(setup(format!("rank {rank} is not in a group of {size}")));
    }
    if !valid_ring(opts.ring_bytes) {
        return Err(setup(format!(
            "ring size {} is not a power of two from 4 KiB to 1 GiB",
            opts.ring_bytes
        )));
    }
    let mut wanted = vec![false; size];
    for &p in peers {
        if p >= size {
            return Err(TransportError::NoSuchPeer { peer: p, size });
        }
        if p == rank || wanted[p] {
            return Err(setup(format!(
                "peer list {peers:?} of rank {rank} repeats a rank or names itself"
            )));
        }
        wanted[p] = true;
    }
    let pid = std::process::id();
    let start = own_start();
    let mut names = Names(Vec::new());

    // 1. This rank's doorbell and incoming rings.
    let bell_nm = bell_name(job_id, rank);
    let own_bell = create_fresh(&bell_nm, DATA_OFFSET)?;
    names.0.push(bell_nm.clone());
    {
        let m = &own_bell.bell_header().meta.0;
        m.version.store(VERSION, Ordering::Relaxed);
        m.rank.store(rank as u32, Ordering::Relaxed);
        m.job_id.store(job_id, Ordering::Relaxed);
        m.owner_pid.store(pid, Ordering::Relaxed);
        m.owner_start.store(start, Ordering::Relaxed);
        m.magic.store(MAGIC, Ordering::Release);
    }
    let mut incoming: Vec<Option<Consumer>> = (0..size).map(|_| None).collect();
    for &p in peers {
        let name = ring_name(job_id, p, rank);
        let map = create_fresh(&name, DATA_OFFSET + opts.ring_bytes)?;
        names.0.push(name.clone());
        let m = &map.ring_header().meta;
        m.version.store(VERSION, Ordering::Relaxed);
        m.src.store(p as u32, Ordering::Relaxed);
        m.dst.store(rank as u32, Ordering::Relaxed);
        m.job_id.store(job_id, Ordering::Relaxed);
        m.ring_bytes
            .store(opts.ring_bytes as u64, Ordering::Relaxed);
        m.receiver_pid.store(pid, Ordering::Relaxed);
        m.receiver_start.store(start, Ordering::Relaxed);
        m.magic.store(MAGIC, Ordering::Release);
        incoming[p] =
            Some(Consumer::new(map).ok_or_else(|| setup(format!("ring {name} has a bad size")))?);
    }

    // 2. Peers' doorbells and this rank's outgoing rings.
    let mut links: Vec<Option<Link>> = (0..size).map(|_| None).collect();
    for &p in peers {
        let bell = open_until(&bell_name(job_id, p), DATA_OFFSET, deadline, p, |m| {
            let b = &m.bell_header().meta.0;
            b.magic.load(Ordering::Acquire) == MAGIC
                && b.version.load(Ordering::Relaxed) == VERSION
                && b.job_id.load(Ordering::Relaxed) == job_id
                && b.rank.load(Ordering::Relaxed) == p as u32
                && raw::process_alive(
                    b.owner_pid.load(Ordering::Relaxed),
                    b.owner_start.load(Ordering::Relaxed),
                )
        })?;
        bell.bell_header()
            .meta
            .0
            .attached
            .fetch_add(1, Ordering::AcqRel);
        let name = ring_name(job_id, rank, p);
        let map = open_until(&name, DATA_OFFSET, deadline, p, |m| {
            let h = &m.ring_header().meta;
            h.magic.load(Ordering::Acquire) == MAGIC
                && h.version.load(Ordering::Relaxed) == VERSION
                && h.job_id.load(Ordering::Relaxed) == job_id
                && h.src.load(Ordering::Relaxed) == rank as u32
                && h.dst.load(Ordering::Relaxed) == p as u32
                && h.sender_attached.load(Ordering::Relaxed) == 0
                && raw::process_alive(
                    h.receiver_pid.load(Ordering::Relaxed),
                    h.receiver_start.load(Ordering::Relaxed),
                )
        })?;
        let tx = Producer::new(map).ok_or_else(|| TransportError::Io {
            peer: p,
            reason: format!("shared memory {name} is shorter than the ring it announces"),
        })?;
        let m = &tx.header().meta;
        let (peer_pid, peer_start) = (
            m.receiver_pid.load(Ordering::Relaxed),
            m.receiver_start.load(Ordering::Relaxed),
        );
        m.sender_pid.store(pid, Ordering::Relaxed);
        m.sender_start.store(start, Ordering::Relaxed);
        tx.header()
            .window
            .0
            .sender_base
            .store(tx.base(), Ordering::Relaxed);
        m.sender_attached.store(1, Ordering::Release);
        let rx = incoming[p].take().expect("incoming ring created above");
        links[p] = Some(Link {
            tx,
            rx,
            bell,
            pid: peer_pid,
            start: peer_start,
            dead: false,
            single_copy: false,
            window: None,
            generation: 0,
            abandoned: false,
            send_blocked: false,
        });
    }

    // 3. Unlink every name once its other end has attached. From here on an
    // error drops `t`, which marks every ring closed for the peers.
    let oversubscribed = peers.len() >= online_cpus();
    let t = ShmTransport {
        rank,
        size,
        spin: opts.spin.unwrap_or(if oversubscribed {
            DEFAULT_SPIN
        } else {
            SPIN_WITH_SPARE_CORES
        }),
        oversubscribed,
        links,
        own_bell,
        seen: vec![0; size],
        spin_misses: 0,
        #[cfg(test)]
        missed_wakes: 0,
        last_liveness: Instant::now(),
        single_copy_min: opts.single_copy_min,
        bounce: Vec::new(),
    };
    let npeers = peers.len() as u32;
    let mut t = t;
    loop {
        // Each receiver decides whether it reads its sender's memory, by
        // trying it once the sender has attached (its pid and mapping known).
        for l in t.links.iter().flatten() {
            let (rm, ack) = (&l.rx.header().meta, &l.rx.header().window_ack.0);
            if rm.sender_attached.load(Ordering::Acquire) != 0
                && ack.enabled.load(Ordering::Relaxed) == 0
            {
                let ok = opts.single_copy_min.is_some()
                    && probe_single_copy(
                        rm.sender_pid.load(Ordering::Relaxed),
                        l.rx.header().window.0.sender_base.load(Ordering::Relaxed),
                    );
                ack.enabled.store(if ok { 1 } else { 2 }, Ordering::Release);
            }
        }
        let undecided = t
            .links
            .iter()
            .flatten()
            .any(|l| l.tx.header().window_ack.0.enabled.load(Ordering::Acquire) == 0);
        let bell_done = t
            .own_bell
            .bell_header()
            .meta
            .0
            .attached
            .load(Ordering::Acquire)
            >= npeers;
        let missing: Vec<usize> = (0..size)
            .filter(|&p| {
                t.links[p].as_ref().is_some_and(|l| {
                    l.rx.header().meta.sender_attached.load(Ordering::Acquire) == 0
                })
            })
            .collect();
        // A sender that attached after the answers above still waits for
        // this rank's answer: leaving now would hold it until its deadline.
        let unanswered = t
            .links
            .iter()
            .flatten()
            .any(|l| l.rx.header().window_ack.0.enabled.load(Ordering::Acquire) == 0);
        if setup_done(bell_done, missing.is_empty(), unanswered, undecided) {
            break;
        }
        if let Some(&p) = missing.iter().find(|&&p| {
            t.links[p]
                .as_ref()
                .is_some_and(|l| !raw::process_alive(l.pid, l.start))
        }) {
            return Err(TransportError::PeerClosed { peer: p });
        }
        if Instant::now() >= deadline {
            return Err(setup(format!(
                "rank {rank}: peers {missing:?} did not attach to their shared-memory rings before the deadline"
            )));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    drop(names); // unlinks every name this rank created
    let wanted = opts.single_copy_min.is_some();
    for l in t.links.iter_mut().flatten() {
        l.single_copy = wanted && l.tx.header().window_ack.0.enabled.load(Ordering::Acquire) == 1;
    }
    for (p, l) in t.links.iter().enumerate() {
        let Some(l) = l else { continue };
        if l.rx.header().meta.sender_pid.load(Ordering::Relaxed) != l.pid {
            return Err(TransportError::Io {
                peer: p,
                reason: "the two rings of this peer were attached by different processes".into(),
            });
        }
    }
    let single_copy: Vec<usize> = (0..size)
        .filter(|&p| t.links[p].as_ref().is_some_and(|l| l.single_copy))
        .collect();
    tracing::debug!(
        rank,
        size,
        peers = peers.len(),
        ring_bytes = opts.ring_bytes,
        single_copy_min = ?opts.single_copy_min,
        single_copy_to = ?single_copy,
        "shm transport connected"
    );
    Ok(t)
}

impl ShmTransport {
    fn link(&mut self, peer: usize) -> Result<&mut Link, TransportError> {
        if peer >= self.size {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.size,
            });
        }
        self.links[peer].as_mut().ok_or_else(|| TransportError::Io {
            peer,
            reason: format!(
                "rank {peer} is not connected by shared memory (not in the peer list of connect)"
            ),
        })
    }

    /// Marks peers whose processes are gone; true if any newly is.
    fn check_liveness(&mut self) -> bool {
        let mut changed = false;
        for l in self.links.iter_mut().flatten() {
            if !l.dead && !raw::process_alive(l.pid, l.start) {
                tracing::debug!(pid = l.pid, "shm peer process is gone");
                l.dead = true;
                changed = true;
            }
        }
        changed
    }

    /// Whether anything this rank waits for moved since the last look (and
    /// remember it): a peer's ring head, window or closing, or the space and
    /// window reads a peer gave back.
    fn moved(&mut self) -> bool {
        let mut moved = false;
        for (l, seen) in self.links.iter().zip(self.seen.iter_mut()) {
            if let Some(l) = l {
                let now = l.stamp();
                if now != *seen {
                    *seen = now;
                    moved = true;
                }
            }
        }
        moved
    }
}

/// Withdraws `l`'s open window, if the peer has not read all of it: from
/// now on the caller's memory may change, so the peer must not read it.
/// Waits (briefly) for a read under way to end; the stream is broken after.
fn give_up_window(l: &mut Link) {
    let Some(w) = l.window.take() else { return };
    let ack = &l.tx.header().window_ack.0;
    if ack.done.load(Ordering::Acquire) >= w.end {
        l.tx.header()
            .window
            .0
            .state
            .store(2 * l.generation, Ordering::Release);
        return;
    }
    l.abandoned = true;
    // Paired with the reader's `reading` then `revoked` (both SeqCst): either
    // it sees `revoked` and does not read, or this sees `reading` and waits.
    l.tx.header().window.0.revoked.store(1, Ordering::SeqCst);
    let until = Instant::now() + REVOKE_WAIT;
    while ack.reading.load(Ordering::SeqCst) != 0
        && Instant::now() < until
        && raw::process_alive(l.pid, l.start)
    {
        std::thread::yield_now();
    }
    l.ring_peer();
}

impl ShmTransport {
    /// `recv`, with `bounce` for reads out of the peer's memory.
    fn recv_with(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
        bounce: &mut Vec<u8>,
    ) -> Result<usize, TransportError> {
        let link = self.link(peer)?;
        let granule = granule.max(1);
        if granule > link.rx.capacity() {
            return Err(TransportError::Io {
                peer,
                reason: format!(
                    "element of {granule} bytes is larger than the {}-byte ring (raise BRAID_SHM_RING)",
                    link.rx.capacity()
                ),
            });
        }
        let mut lent = link.rx.pop(max, granule, sink);
        // Space was freed or window bytes read: the sender may be waiting
        // for that. (Ringing only after reading from a ring found full lost
        // wake-ups: a ring fills up while its receiver copies out of it.)
        let mut wake_sender = lent > 0;
        let mut window_left = 0u64;
        if let Some((addr, start, end)) = link.incoming_window() {
            // While a window is open the sender adds nothing to the ring, so
            // what the ring still holds comes before the window.
            let ring_left = link.rx.available();
            let mut done = link.rx.header().window_ack.0.done.load(Ordering::Relaxed);
            let publish = |link: &Link, done: u64| {
                link.rx
                    .header()
                    .window_ack
                    .0
                    .done
                    .store(done, Ordering::Release)
            };
            if bounce.len() < BOUNCE_BYTES.max(granule) {
                bounce.resize(BOUNCE_BYTES.max(granule), 0);
            }
            let mut ready = ring_left == 0;
            if ring_left > 0
                && ring_left < granule
                && end - done >= (granule - ring_left) as u64
                && max - lent >= granule
            {
                // One element starts in the ring and ends in the window.
                let mut at = 0usize;
                link.rx.pop(ring_left, 1, &mut |b| {
                    bounce[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                });
                read_window(
                    link,
                    peer,
                    addr + (done - start),
                    &mut bounce[ring_left..granule],
                )?;
                sink(&bounce[..granule]);
                done += (granule - ring_left) as u64;
                publish(link, done);
                lent += granule;
                wake_sender = true;
                ready = true;
            }
            while ready && lent < max {
                let mut n = (end - done)
                    .min((max - lent) as u64)
                    .min(bounce.len() as u64) as usize;
                n -= n % granule;
                if n == 0 {
                    break;
                }
                read_window(link, peer, addr + (done - start), &mut bounce[..n])?;
                sink(&bounce[..n]);
                done += n as u64;
                publish(link, done);
                lent += n;
                wake_sender = true;
            }
            window_left = end - done;
        }
        if wake_sender {
            link.ring_peer();
        }
        if lent == 0 && link.gone() {
            // Checked after the closed flag, so bytes published before the
            // peer closed are never lost.
            let drained = link.rx.available() < granule && window_left == 0;
            if drained || !raw::process_alive(link.pid, link.start) {
                return Err(TransportError::PeerClosed { peer });
            }
        }
        Ok(lent)
    }
}

/// Copies window bytes at `addr` of `link`'s peer into `dst`, unless the
/// peer has withdrawn the window.
fn read_window(link: &Link, peer: usize, addr: u64, dst: &mut [u8]) -> Result<(), TransportError> {
    let h = link.rx.header();
    let ack = &h.window_ack.0;
    ack.reading.store(1, Ordering::SeqCst);
    if h.window.0.revoked.load(Ordering::SeqCst) != 0 {
        ack.reading.store(0, Ordering::SeqCst);
        return Err(TransportError::Io {
            peer,
            reason: format!("rank {peer} gave up the message it was sending (its call failed)"),
        });
    }
    let result = raw::read_process(link.pid, addr, dst);
    ack.reading.store(0, Ordering::SeqCst);
    result.map_err(|e| {
        if e.raw_os_error() == Some(libc::ESRCH) || !raw::process_alive(link.pid, link.start) {
            TransportError::PeerClosed { peer }
        } else {
            TransportError::Io {
                peer,
                reason: format!(
                    "reading the message straight from rank {peer}'s memory failed: {e}"
                ),
            }
        }
    })
}

impl Transport for ShmTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn name(&self) -> &'static str {
        "shm"
    }

    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        let single_copy_min = self.single_copy_min;
        let link = self.link(peer)?;
        if link.gone() {
            return Err(TransportError::PeerClosed { peer });
        }
        let mut taken = 0usize;
        if let Some(w) = &mut link.window {
            // The offer continues where the last report left off, inside the
            // window: report what the peer has read since, and grow the
            // window over the rest of the offer's first part.
            let first = parts.iter().find(|p| !p.is_empty()).copied().unwrap_or(&[]);
            let continues = first.as_ptr() as u64 == w.addr + (w.reported - w.start);
            if w.reported < w.end && !first.is_empty() && !continues {
                return Err(TransportError::Io {
                    peer,
                    reason: "internal error: a send does not continue the message in flight; this is a braid bug".into(),
                });
            }
            // An offer after the whole window was reported may be a new
            // message elsewhere: it extends the window only if contiguous.
            let run = if continues { contiguous_run(parts) } else { 0 };
            let offered = w.reported + run as u64;
            let done = link
                .tx
                .header()
                .window_ack
                .0
                .done
                .load(Ordering::Acquire)
                .min(offered);
            taken = (done - w.reported) as usize;
            w.reported = done;
            if done < w.end || offered > w.end {
                if offered > w.end {
                    w.end = offered;
                    link.tx
                        .header()
                        .window
                        .0
                        .end
                        .store(offered, Ordering::Release);
                    link.ring_peer();
                }
                return Ok(taken);
            }
            // Read to the end: close it; the rest of the offer goes on below.
            link.window = None;
            link.tx
                .header()
                .window
                .0
                .state
                .store(2 * link.generation, Ordering::Release);
        }
        // A new message (nothing taken above) goes on without a copy of the
        // part list: this runs on every send.
        let skipped;
        let rest: &[&[u8]] = if taken == 0 {
            parts
        } else {
            skipped = skip_bytes(parts, taken);
            &skipped
        };
        let big = single_copy_min
            .filter(|_| link.single_copy)
            .and_then(|min| rest.iter().position(|p| p.len() >= min.max(1)));
        let Some(big) = big else {
            let n = link.tx.push(rest);
            link.send_blocked = n < rest.iter().map(|p| p.len()).sum();
            if n > 0 {
                link.ring_peer();
            }
            return Ok(taken + n);
        };
        // Small parts before the large one (the message header) go through
        // the ring; the large part becomes a window the peer reads from.
        let small: usize = rest[..big].iter().map(|p| p.len()).sum();
        let n = link.tx.push(&rest[..big]);
        taken += n;
        link.send_blocked = n < small;
        if n < small {
            if n > 0 {
                link.ring_peer();
            }
            return Ok(taken);
        }
        let part = rest[big];
        let h = &link.tx.header().window.0;
        let start = h.end.load(Ordering::Relaxed);
        let w = OpenWindow {
            addr: part.as_ptr() as u64,
            start,
            end: start + contiguous_run(&rest[big..]) as u64,
            reported: start,
        };
        link.generation += 1;
        h.ring_pos.store(link.tx.published(), Ordering::Relaxed);
        h.addr.store(w.addr, Ordering::Relaxed);
        h.start.store(w.start, Ordering::Relaxed);
        h.end.store(w.end, Ordering::Release);
        h.state.store(2 * link.generation + 1, Ordering::Release);
        link.window = Some(w);
        link.ring_peer();
        Ok(taken)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        let mut bounce = std::mem::take(&mut self.bounce);
        let result = self.recv_with(peer, max, granule, sink, &mut bounce);
        self.bounce = bounce;
        result
    }

    fn abandon(&mut self) {
        for l in self.links.iter_mut().flatten() {
            give_up_window(l);
        }
    }

    fn wait_briefly(&mut self) -> bool {
        if self.oversubscribed {
            // The peer may need this core to answer: wait (and yield) now.
            return false;
        }
        for _ in 0..BRIEF_LOOKS {
            if self.moved() {
                self.spin_misses = 0;
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let spin = if self.spin_misses < 8 || self.spin_misses % 16 == 0 {
            self.spin
        } else {
            Duration::ZERO
        };
        // The clock is first read after a few looks: a message that is
        // already on its way is seen without paying for a clock read.
        let mut spin_until = None;
        let mut spins = 0u32;
        loop {
            if self.moved() {
                self.spin_misses = 0;
                return Ok(());
            }
            // The clock now and then only: reading it costs more than a look.
            spins += 1;
            if spins % 32 == 0 {
                let now = Instant::now();
                if now >= (*spin_until.get_or_insert(now + spin)).min(deadline) {
                    break;
                }
            }
            // With spare cores, pure spinning; oversubscribed, a few pure
            // spins, then yield between looks: the peer may need this core
            // to answer.
            if !self.oversubscribed || spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Count misses (restarting the count past a million keeps the
        // now-and-then probe going without overflow).
        self.spin_misses = if self.spin_misses < 1 << 20 {
            self.spin_misses + 1
        } else {
            8
        };
        loop {
            let now = Instant::now();
            if now.duration_since(self.last_liveness) >= LIVENESS_PERIOD {
                self.last_liveness = now;
                if self.check_liveness() {
                    return Ok(());
                }
            }
            if now >= deadline {
                return Ok(());
            }
            let bell = &self.own_bell.bell_header().bell.0;
            bell.sleeping.fetch_add(1, Ordering::SeqCst);
            let s = bell.seq.load(Ordering::SeqCst);
            // After announcing the sleep, look once more (see Bell::ring).
            std::sync::atomic::fence(Ordering::SeqCst);
            let moved = self.moved();
            let bell = &self.own_bell.bell_header().bell.0;
            let timed_out = !moved && {
                let timeout = (deadline - now).min(LIVENESS_PERIOD);
                raw::futex_wait(&bell.seq, s, timeout)
            };
            bell.sleeping.fetch_sub(1, Ordering::SeqCst);
            if moved || self.moved() {
                // Something changed while this slept to its timeout: a
                // peer that changed it did not ring.
                #[cfg(test)]
                if timed_out {
                    self.missed_wakes += 1;
                }
                let _ = timed_out;
                return Ok(());
            }
        }
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        self.abandon();
        for l in self.links.iter().flatten() {
            l.rx.header()
                .meta
                .receiver_closed
                .store(1, Ordering::Release);
            l.tx.header().meta.sender_closed.store(1, Ordering::Release);
            l.ring_peer();
        }
    }
}
