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
//! Each rank also owns a doorbell segment `/braid-<job_id hex>-<rank>-bell`
//! holding a futex word. Whoever publishes data to a rank, or frees ring
//! space a rank may be waiting for, bumps that word and — only when the
//! rank's sleeper count says it sleeps — wakes it. [`Transport::wait`] spins
//! for [`ShmOptions::spin`] on the word, then sleeps on it with `FUTEX_WAIT`
//! until the deadline, so ranks that outnumber cores do not burn them.
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
/// Default busy-wait before sleeping.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// How often a sleeping `wait` checks that its peers' processes still live.
pub const LIVENESS_PERIOD: Duration = Duration::from_millis(100);

/// Settings of the shared-memory transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    /// Bytes of each incoming ring's data area: a power of two from
    /// [`MIN_RING_BYTES`] to [`MAX_RING_BYTES`] (`BRAID_SHM_RING`).
    pub ring_bytes: usize,
    /// How long `wait` polls before sleeping (`BRAID_SPIN_US`).
    pub spin: Duration,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            spin: DEFAULT_SPIN,
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
            opts.spin = parse_spin_us(&v)?;
        }
        Ok(opts)
    }
}

fn valid_ring(bytes: usize) -> bool {
    bytes.is_power_of_two() && (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&bytes)
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

/// One connected peer.
struct Link {
    tx: Producer,
    rx: Consumer,
    bell: Mapping,
    pid: u32,
    start: u64,
    dead: bool,
}

impl Link {
    fn ring_peer(&self) {
        self.bell.bell_header().bell.0.ring();
    }

    /// Whether the peer closed its endpoint or its process is gone.
    fn gone(&self) -> bool {
        self.dead
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
    seen: u32,
    /// Consecutive waits whose spin found nothing; past a few, `wait` spins
    /// only now and then (the peers are likely descheduled: cores are shared
    /// or oversubscribed).
    spin_misses: u32,
    last_liveness: Instant,
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
        m.sender_attached.store(1, Ordering::Release);
        let rx = incoming[p].take().expect("incoming ring created above");
        links[p] = Some(Link {
            tx,
            rx,
            bell,
            pid: peer_pid,
            start: peer_start,
            dead: false,
        });
    }

    // 3. Unlink every name once its other end has attached. From here on an
    // error drops `t`, which marks every ring closed for the peers.
    let seen = own_bell.bell_header().bell.0.seq.load(Ordering::Acquire);
    let t = ShmTransport {
        rank,
        size,
        spin: opts.spin,
        links,
        own_bell,
        seen,
        spin_misses: 0,
        last_liveness: Instant::now(),
    };
    let npeers = peers.len() as u32;
    loop {
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
        if bell_done && missing.is_empty() {
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
    for (p, l) in t.links.iter().enumerate() {
        let Some(l) = l else { continue };
        if l.rx.header().meta.sender_pid.load(Ordering::Relaxed) != l.pid {
            return Err(TransportError::Io {
                peer: p,
                reason: "the two rings of this peer were attached by different processes".into(),
            });
        }
    }
    tracing::debug!(
        rank,
        size,
        peers = peers.len(),
        ring_bytes = opts.ring_bytes,
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

    /// Whether the doorbell moved since the last look (and remember it).
    fn rung(&mut self) -> bool {
        let s = self
            .own_bell
            .bell_header()
            .bell
            .0
            .seq
            .load(Ordering::SeqCst);
        if s != self.seen {
            self.seen = s;
            true
        } else {
            false
        }
    }
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
        let link = self.link(peer)?;
        if link.gone() {
            return Err(TransportError::PeerClosed { peer });
        }
        let n = link.tx.push(parts);
        if n > 0 {
            link.ring_peer();
        }
        Ok(n)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
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
        let n = link.rx.pop(max, granule, sink);
        if n > 0 {
            // Space was freed: the sender may be waiting for it.
            link.ring_peer();
        } else if link.gone() && link.rx.available() < granule {
            // Checked after the closed flag, so bytes published before the
            // peer closed are never lost.
            return Err(TransportError::PeerClosed { peer });
        }
        Ok(n)
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let spin = if self.spin_misses < 8 || self.spin_misses % 16 == 0 {
            self.spin
        } else {
            Duration::ZERO
        };
        let spin_until = Instant::now() + spin;
        let mut spins = 0u32;
        loop {
            if self.rung() {
                self.spin_misses = 0;
                return Ok(());
            }
            if Instant::now() >= spin_until.min(deadline) {
                break;
            }
            // A few pure spins, then yield between looks: on a shared or
            // oversubscribed core the peer may need this core to answer.
            spins += 1;
            if spins < 64 {
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
            if s == self.seen {
                let timeout = (deadline - now).min(LIVENESS_PERIOD);
                raw::futex_wait(&bell.seq, s, timeout);
            }
            bell.sleeping.fetch_sub(1, Ordering::SeqCst);
            if self.rung() {
                return Ok(());
            }
        }
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
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
