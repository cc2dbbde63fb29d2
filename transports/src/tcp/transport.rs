//! [`TcpTransport`]: the byte streams over established, authenticated sockets.
//!
//! Sending writes straight from the caller's slices into the socket with one
//! `sendmsg` (no user-space copy). With `k` sockets per peer the stream is cut
//! into [`SEGMENT_BYTES`] segments, segment `g` travelling on socket `g % k`;
//! each socket remembers how many of its bytes it wrote, so bytes of later
//! segments written ahead on other sockets are not written twice when the
//! caller offers them again, and only the in-order prefix is reported taken.
//!
//! Receiving reads each socket into its own buffer (grown from 64 KiB to
//! 1 MiB while a stream keeps it full) and lends bytes in stream order; an
//! element cut by a segment boundary is assembled in a small buffer.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::{Transport, TransportError};

/// Bytes of one stripe segment: segment `g` of a peer's stream travels on its
/// socket `g % sockets_per_peer`. Both ends use this constant.
pub const SEGMENT_BYTES: usize = 256 << 10;
const SEGMENT: u64 = SEGMENT_BYTES as u64;
const INITIAL_RX_BYTES: usize = 64 << 10;
const MAX_RX_BYTES: usize = 1 << 20;
const MAX_IOV: usize = 32;

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// A socket's receive buffer: `buf[start..end]` holds bytes not yet lent.
struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the room: a fast stream, grow when possible.
    grow: bool,
}

impl RxBuf {
    fn new() -> Self {
        RxBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            grow: false,
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after growing or compacting when worth it.
    /// `min_cap` keeps room for two whole elements.
    fn room(&mut self, min_cap: usize) -> &mut [u8] {
        let mut cap = self.buf.len().max(INITIAL_RX_BYTES).max(min_cap);
        if self.grow && cap < MAX_RX_BYTES.max(min_cap) {
            cap = (cap * 2).min(MAX_RX_BYTES.max(min_cap));
            self.grow = false;
        }
        if cap > self.buf.len() {
            if self.len() == 0 {
                self.buf = vec![0; cap];
                self.start = 0;
                self.end = 0;
            } else {
                self.buf.resize(cap, 0);
            }
        }
        let cap = self.buf.len();
        if self.start > 0 && cap - self.end < cap / 4 && self.len() <= cap / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }
}

struct Sock {
    stream: TcpStream,
    fd: RawFd,
    /// Bytes of the stream written on this socket.
    written: u64,
    rx: RxBuf,
    /// The peer closed this socket (read returned 0).
    eof: bool,
}

impl Sock {
    /// Reads into `dst` until it is full or the socket has nothing more:
    /// the bytes read (0 also when the peer closed: `eof` says which).
    fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let mut got = 0usize;
        while got < dst.len() && !self.eof {
            match (&self.stream).read(&mut dst[got..]) {
                Ok(0) => self.eof = true,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// One read into the receive buffer: the bytes read, 0 when none are
    /// there (would block), the buffer is full or the peer closed.
    fn fill(&mut self, min_cap: usize) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let room = self.rx.room(min_cap);
        let len = room.len();
        if len == 0 {
            return Ok(0);
        }
        loop {
            match (&self.stream).read(room) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.rx.end += n;
                    self.rx.grow = n == len;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

struct Peer {
    socks: Vec<Sock>,
    /// Bytes of the outgoing stream reported taken.
    taken: u64,
    /// Bytes of the incoming stream lent.
    lent: u64,
    /// The peer is gone (reset, broken pipe, or closed while data was due).
    closed: bool,
}

/// One rank's connections to its peers over TCP; made by
/// [`TcpListenerSet::establish`](super::TcpListenerSet::establish).
pub struct TcpTransport {
    rank: usize,
    size: usize,
    k: usize,
    poll: Poll,
    events: Events,
    spin: Spin,
    /// Yield between spinning looks (ranks outnumber cores).
    yield_while_spinning: bool,
    /// Indexed by rank; `None` for this rank.
    peers: Vec<Option<Peer>>,
    scratch: Scratch,
}

/// Room to assemble an element cut by a segment boundary.
struct Scratch {
    /// The element, assembled.
    element: Vec<u8>,
    /// Per-socket offsets while looking across segments.
    offsets: Vec<usize>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("sockets_per_peer", &self.k)
            .finish_non_exhaustive()
    }
}

/// How long [`TcpTransport::wait`] busy-polls before sleeping in epoll,
/// learnt from how spinning pays off. Spinning pays where the peer runs on
/// another core and answers within microseconds; it costs where it does not:
/// on hosts whose cores are shared (the 2-vCPU development VMs time-slice
/// their vCPUs, so a spinning rank keeps its peer off the CPU and every spin
/// runs out), or while peers are busy for long. A spin that sees an event
/// restores the full budget; [`Spin::MISSES_TO_HALVE`] spins in a row that run
/// out halve it, down to none, and then every [`Spin::PROBE_EVERY`]-th wait
/// tries the maximum.
#[derive(Clone, Copy, Debug)]
struct Spin {
    max: Duration,
    budget: Duration,
    since_probe: u32,
    /// Spins in a row that ran out.
    misses: u32,
}

impl Spin {
    const PROBE_EVERY: u32 = 64;
    /// Misses in a row before the budget halves: a collective's waits mix
    /// short ones (a peer's reply) with long ones (a peer still computing),
    /// and only the short ones decide whether spinning pays.
    const MISSES_TO_HALVE: u32 = 8;
    const FLOOR: Duration = Duration::from_micros(1);

    fn new(max: Duration) -> Self {
        Spin {
            max,
            budget: max,
            since_probe: 0,
            misses: 0,
        }
    }

    /// The spin of the next wait.
    fn budget(&mut self) -> Duration {
        if self.max.is_zero() || !self.budget.is_zero() {
            return self.budget;
        }
        self.since_probe += 1;
        if self.since_probe >= Self::PROBE_EVERY {
            self.since_probe = 0;
            return self.max;
        }
        Duration::ZERO
    }

    /// Whether the last spin, of `spun`, saw an event before it ran out (a
    /// probe that misses leaves the budget at none).
    fn learn(&mut self, hit: bool) {
        if hit {
            self.budget = self.max;
            self.misses = 0;
            return;
        }
        self.misses += 1;
        if self.misses >= Self::MISSES_TO_HALVE {
            self.misses = 0;
            self.budget = if self.budget / 2 < Self::FLOOR {
                Duration::ZERO
            } else {
                self.budget / 2
            };
        }
    }
}

/// Where byte `local` of socket `s`'s share lies in the stream.
fn stream_offset(local: u64, s: usize, k: usize) -> u64 {
    (local / SEGMENT * k as u64 + s as u64) * SEGMENT + local % SEGMENT
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn io_error(peer: usize, what: &str, socket: usize, e: io::Error) -> TransportError {
    if is_closed(&e) {
        TransportError::PeerClosed { peer }
    } else {
        TransportError::Io {
            peer,
            reason: format!("{what} on socket {socket} of rank {peer}: {e}"),
        }
    }
}

/// `sendmsg` of the gathered slices, without SIGPIPE: the bytes taken, 0 when
/// the socket's buffer is full.
fn send_iov(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: an all-zero msghdr is a valid empty message (no name, no
    // control data); only the iovec fields are filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose entries point into slices the
        // caller borrows for the duration of this call; the kernel only
        // reads them. `fd` is an open socket owned by the caller's stream.
        let n = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Up to [`MAX_IOV`] iovecs, on the stack.
struct Iov {
    v: [libc::iovec; MAX_IOV],
    n: usize,
}

impl Iov {
    fn new() -> Self {
        Iov {
            v: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
            n: 0,
        }
    }

    fn len(&self) -> usize {
        self.n
    }

    fn clear(&mut self) {
        self.n = 0;
    }

    fn push(&mut self, piece: &[u8]) {
        self.v[self.n] = libc::iovec {
            iov_base: piece.as_ptr() as *mut libc::c_void,
            iov_len: piece.len(),
        };
        self.n += 1;
    }

    fn as_slice(&self) -> &[libc::iovec] {
        &self.v[..self.n]
    }
}

/// Appends iovecs for bytes `a..b` of the concatenation of `parts`; returns
/// false when `iov` ran out of entries (what fit is kept).
fn push_range(parts: &[&[u8]], a: usize, b: usize, iov: &mut Iov) -> bool {
    let mut at = 0usize;
    for part in parts {
        let (lo, hi) = (at, at + part.len());
        at = hi;
        if hi <= a || part.is_empty() {
            continue;
        }
        if lo >= b {
            break;
        }
        if iov.len() == MAX_IOV {
            return false;
        }
        let from = a.max(lo) - lo;
        let to = b.min(hi) - lo;
        iov.push(&part[from..to]);
    }
    true
}

impl TcpTransport {
    /// Takes over established streams (`streams[peer]` holds the `k` sockets
    /// of each peer in index order, none for this rank) and registers them
    /// with `poll`.
    pub(crate) fn new(
        rank: usize,
        size: usize,
        k: usize,
        poll: Poll,
        streams: Vec<Vec<TcpStream>>,
        spin: Duration,
    ) -> Result<Self, TransportError> {
        let mut peers = Vec::with_capacity(size);
        for (peer, socks) in streams.into_iter().enumerate() {
            if peer == rank || socks.is_empty() {
                peers.push(None);
                continue;
            }
            let mut list = Vec::with_capacity(k);
            for (s, mut stream) in socks.into_iter().enumerate() {
                poll.registry()
                    .reregister(
                        &mut stream,
                        Token(peer * k + s),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| TransportError::Io {
                        peer,
                        reason: format!("cannot watch socket {s} of rank {peer}: {e}"),
                    })?;
                list.push(Sock {
                    fd: stream.as_raw_fd(),
                    stream,
                    written: 0,
                    rx: RxBuf::new(),
                    eof: false,
                });
            }
            peers.push(Some(Peer {
                socks: list,
                taken: 0,
                lent: 0,
                closed: false,
            }));
        }
        Ok(TcpTransport {
            rank,
            size,
            k,
            poll,
            events: Events::with_capacity(256),
            spin: Spin::new(spin),
            yield_while_spinning: false,
            peers,
            scratch: Scratch {
                element: Vec::new(),
                offsets: vec![0; k],
            },
        })
    }

    /// This transport, yielding the core between spinning looks when `on`.
    pub(crate) fn yielding(mut self, on: bool) -> Self {
        self.yield_while_spinning = on;
        self
    }

    /// Sockets each peer's stream is striped over.
    pub fn sockets_per_peer(&self) -> usize {
        self.k
    }

    fn peer_mut(&mut self, peer: usize) -> Result<&mut Peer, TransportError> {
        if peer >= self.size {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.size,
            });
        }
        match self.peers[peer].as_mut() {
            Some(p) => Ok(p),
            None if peer == self.rank => Err(TransportError::Io {
                peer,
                reason: format!(
                    "rank {peer} is this rank: the TCP transport has no stream to itself"
                ),
            }),
            None => Err(TransportError::Io {
                peer,
                reason: format!(
                    "rank {peer} is not connected over TCP (it is reached through another transport)"
                ),
            }),
        }
    }
}

/// Lends buffered bytes in stream order; returns the socket whose buffer
/// lacks the next bytes.
fn lend_buffered(
    p: &mut Peer,
    k: usize,
    max: usize,
    granule: usize,
    sink: &mut dyn FnMut(&[u8]),
    lent: &mut usize,
    scratch: &mut Scratch,
) -> usize {
    loop {
        let (s, in_segment) = if k == 1 {
            (0, usize::MAX)
        } else {
            let g = p.lent / SEGMENT;
            (
                (g % k as u64) as usize,
                (SEGMENT - p.lent % SEGMENT) as usize,
            )
        };
        let room = max - *lent;
        if room < granule {
            return s;
        }
        let avail = p.socks[s].rx.len();
        let n = avail.min(in_segment).min(room);
        let whole = n - n % granule;
        if whole > 0 {
            sink(&p.socks[s].rx.data()[..whole]);
            p.socks[s].rx.consume(whole);
            p.lent += whole as u64;
            *lent += whole;
            continue;
        }
        if in_segment >= granule || avail < in_segment {
            return s;
        }
        // The element crosses into the next segment(s), on other sockets.
        if let Err(lacking) = gather(p, k, granule, scratch) {
            return lacking;
        }
        sink(&scratch.element);
        p.lent += granule as u64;
        *lent += granule;
    }
}

/// Moves the next `granule` bytes of the stream into `element` if all are
/// buffered; otherwise the socket that lacks some.
fn gather(p: &mut Peer, k: usize, granule: usize, scratch: &mut Scratch) -> Result<(), usize> {
    let Scratch { element, offsets } = scratch;
    offsets.iter_mut().for_each(|o| *o = 0);
    let (mut pos, mut need) = (p.lent, granule);
    while need > 0 {
        let s = ((pos / SEGMENT) % k as u64) as usize;
        let take = need.min((SEGMENT - pos % SEGMENT) as usize);
        if p.socks[s].rx.len() - offsets[s] < take {
            return Err(s);
        }
        offsets[s] += take;
        pos += take as u64;
        need -= take;
    }
    element.clear();
    let (mut pos, mut need) = (p.lent, granule);
    while need > 0 {
        let s = ((pos / SEGMENT) % k as u64) as usize;
        let take = need.min((SEGMENT - pos % SEGMENT) as usize);
        element.extend_from_slice(&p.socks[s].rx.data()[..take]);
        p.socks[s].rx.consume(take);
        pos += take as u64;
        need -= take;
    }
    Ok(())
}

impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn name(&self) -> &'static str {
        "tcp"
    }

    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        let k = self.k;
        let p = self.peer_mut(peer)?;
        if p.closed {
            return Err(TransportError::PeerClosed { peer });
        }
        let total: usize = parts.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let mut iov = Iov::new();
        if k == 1 {
            push_range(parts, 0, total, &mut iov);
            let sock = &mut p.socks[0];
            let n = send_iov(sock.fd, iov.as_slice()).map_err(|e| {
                p.closed = is_closed(&e);
                io_error(peer, "send", 0, e)
            })?;
            sock.written += n as u64;
            p.taken += n as u64;
            return Ok(n);
        }
        let start = p.taken;
        let end = start + total as u64;
        let first = ((start / SEGMENT) % k as u64) as usize;
        for i in 0..k {
            let s = (first + i) % k;
            let sock = &mut p.socks[s];
            let from = stream_offset(sock.written, s, k);
            if from >= end {
                continue;
            }
            // This socket's segments within the offer, from its next byte.
            iov.clear();
            let mut r = from;
            while r < end {
                let segment_end = (r / SEGMENT + 1) * SEGMENT;
                let hi = segment_end.min(end);
                if !push_range(parts, (r - start) as usize, (hi - start) as usize, &mut iov) {
                    break;
                }
                r = segment_end + (k as u64 - 1) * SEGMENT;
            }
            let n = send_iov(sock.fd, iov.as_slice()).map_err(|e| {
                p.closed = is_closed(&e);
                io_error(peer, "send", s, e)
            })?;
            p.socks[s].written += n as u64;
        }
        let prefix = p
            .socks
            .iter()
            .enumerate()
            .map(|(s, sock)| stream_offset(sock.written, s, k))
            .min()
            .unwrap_or(start);
        let taken = (prefix.min(end) - start) as usize;
        p.taken += taken as u64;
        Ok(taken)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        let granule = granule.max(1);
        let k = self.k;
        let min_cap = granule.saturating_mul(2);
        let scratch = &mut self.scratch;
        let p = match self.peers.get_mut(peer) {
            Some(Some(p)) => p,
            _ => return self.peer_mut(peer).map(|_| 0),
        };
        if max < granule {
            return Ok(0);
        }
        let mut lent = 0usize;
        let mut others_read = k == 1;
        let blocked = loop {
            let s = lend_buffered(p, k, max, granule, sink, &mut lent, scratch);
            if max - lent < granule {
                break s;
            }
            let got = p.socks[s].fill(min_cap).map_err(|e| {
                p.closed = is_closed(&e);
                io_error(peer, "receive", s, e)
            })?;
            if !others_read {
                // Drain the other stripes too, so their senders keep going.
                others_read = true;
                for o in (0..k).filter(|o| *o != s) {
                    p.socks[o].fill(min_cap).map_err(|e| {
                        p.closed = is_closed(&e);
                        io_error(peer, "receive", o, e)
                    })?;
                }
            }
            if got == 0 {
                break s;
            }
        };
        if lent == 0 && p.socks[blocked].eof {
            // Nothing more can come: the peer closed with data still due.
            p.closed = true;
            return Err(TransportError::PeerClosed { peer });
        }
        Ok(lent)
    }

    fn recv_into(&mut self, peer: usize, dst: &mut [u8]) -> Result<usize, TransportError> {
        if self.k > 1 {
            // Striped streams interleave segments: reassemble through recv.
            let mut at = 0usize;
            return self.recv(peer, dst.len(), 1, &mut |b| {
                dst[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            });
        }
        let p = self.peer_mut(peer)?;
        let sock = &mut p.socks[0];
        // Bytes already buffered come first, then the socket straight into
        // the destination: one copy, by the kernel.
        let buffered = sock.rx.len().min(dst.len());
        dst[..buffered].copy_from_slice(&sock.rx.data()[..buffered]);
        sock.rx.consume(buffered);
        let read = if buffered < dst.len() && sock.rx.len() == 0 {
            sock.read_into(&mut dst[buffered..]).map_err(|e| {
                p.closed = is_closed(&e);
                io_error(peer, "receive", 0, e)
            })?
        } else {
            0
        };
        let n = buffered + read;
        p.lent += n as u64;
        if n == 0 && p.socks[0].eof && !dst.is_empty() {
            p.closed = true;
            return Err(TransportError::PeerClosed { peer });
        }
        Ok(n)
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let poll_error = |e: io::Error| TransportError::Setup {
            reason: format!("waiting for sockets (epoll) failed: {e}"),
        };
        let budget = self.spin.budget();
        if !budget.is_zero() {
            let spin_end = (Instant::now() + budget).min(deadline);
            loop {
                match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                    Err(e) => return Err(poll_error(e)),
                }
                if !self.events.is_empty() || Instant::now() >= spin_end {
                    break;
                }
                if self.yield_while_spinning {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            let hit = !self.events.is_empty();
            self.spin.learn(hit);
            if hit {
                return Ok(());
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            match self.poll.poll(&mut self.events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => return Err(poll_error(e)),
            }
            if !self.events.is_empty() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_backs_off_when_it_does_not_pay() {
        // One wait: the spin it makes, and what it learns (as `wait` does).
        let step = |s: &mut Spin, hit: bool| {
            let b = s.budget();
            if !b.is_zero() {
                s.learn(hit);
            }
            b
        };
        let max = Duration::from_micros(50);
        let miss_run = Spin::MISSES_TO_HALVE as usize;
        let mut s = Spin::new(max);
        // A run of misses halves the budget, not a single one.
        for _ in 0..miss_run {
            assert_eq!(step(&mut s, false), max);
        }
        assert_eq!(step(&mut s, false), max / 2);
        // A hit in between restores the full spin (latency-bound loops keep it).
        assert_eq!(step(&mut s, true), max / 2);
        assert_eq!(step(&mut s, false), max);
        // Misses only, for long: no spinning, but a probe now and then.
        for _ in 0..20 * miss_run {
            step(&mut s, false);
        }
        let n = 2 * Spin::PROBE_EVERY as usize;
        let spun: Vec<Duration> = (0..n).map(|_| step(&mut s, false)).collect();
        assert_eq!(spun.iter().filter(|b| **b == max).count(), 2);
        assert_eq!(spun.iter().filter(|b| b.is_zero()).count(), n - 2);
        // A probe that pays brings spinning back.
        assert!((0..n).any(|_| step(&mut s, true) == max));
        assert_eq!(step(&mut s, false), max);
        let mut never = Spin::new(Duration::ZERO);
        assert!((0..n).all(|_| step(&mut never, false).is_zero()));
    }

    #[test]
    fn stripes_map_local_bytes_to_stream_offsets() {
        let seg = SEGMENT;
        assert_eq!(stream_offset(0, 0, 1), 0);
        assert_eq!(stream_offset(5 * seg + 7, 0, 1), 5 * seg + 7);
        assert_eq!(stream_offset(0, 2, 3), 2 * seg);
        assert_eq!(stream_offset(seg, 0, 3), 3 * seg);
        assert_eq!(stream_offset(seg + 1, 1, 3), 4 * seg + 1);
    }

    #[test]
    fn ranges_split_over_parts() {
        let (a, b, c) = ([1u8; 10], [2u8; 0], [3u8; 5]);
        let parts: [&[u8]; 3] = [&a, &b, &c];
        let mut iov = Iov::new();
        assert!(push_range(&parts, 8, 12, &mut iov));
        let lens: Vec<usize> = iov.as_slice().iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [2, 2]);
        iov.clear();
        assert!(push_range(&parts, 11, 15, &mut iov));
        assert_eq!(iov.len(), 1);
        assert_eq!(iov.as_slice()[0].iov_len, 4);
        // Many parts: what fits is kept, and the caller is told.
        let many: Vec<&[u8]> = (0..MAX_IOV + 5).map(|_| &a[..]).collect();
        iov.clear();
        assert!(!push_range(&many, 0, 10 * (MAX_IOV + 5), &mut iov));
        assert_eq!(iov.len(), MAX_IOV);
    }

    #[test]
    fn receive_buffers_grow_and_compact() {
        let mut rx = RxBuf::new();
        assert_eq!(rx.room(16).len(), INITIAL_RX_BYTES);
        // A read filled it: the next room doubles the buffer, data kept.
        rx.buf[INITIAL_RX_BYTES - 1] = 9;
        rx.end = INITIAL_RX_BYTES;
        rx.grow = true;
        rx.consume(INITIAL_RX_BYTES - 10);
        assert_eq!(rx.room(16).len(), INITIAL_RX_BYTES);
        assert_eq!(rx.buf.len(), 2 * INITIAL_RX_BYTES);
        assert_eq!((rx.len(), rx.data()[9]), (10, 9));
        // Nearly full at the end, little data: compacted to the front.
        rx.end = 2 * INITIAL_RX_BYTES - 100;
        rx.start = rx.end - 10;
        rx.buf[rx.end - 1] = 8;
        let room = rx.room(16).len();
        assert_eq!((rx.start, rx.end, rx.data()[9]), (0, 10, 8));
        assert_eq!(room, 2 * INITIAL_RX_BYTES - 10);
        // Mostly unread data: left in place, what room is left is offered.
        rx.start = 100;
        rx.end = 2 * INITIAL_RX_BYTES - 5;
        assert_eq!(rx.room(16).len(), 5);
        assert_eq!(rx.start, 100);
        // Emptied: starts over at the front.
        let n = rx.len();
        rx.consume(n);
        assert_eq!((rx.start, rx.end), (0, 0));
    }
}
