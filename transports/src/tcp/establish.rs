//! Listening, connecting and authenticating: from interface addresses to a
//! full mesh of handshaken sockets.
//!
//! Establishment runs on one thread with one `mio::Poll`: outgoing attempts
//! (connect, hello, challenge, proof, accepted) and accepted connections
//! (hello, challenge, proof, accepted) are state machines advanced by
//! readiness events, each with its own time limit (`connect_timeout`), so a
//! connection that stalls or sends garbage is dropped without holding up the
//! others. An outgoing attempt that fails moves on to the peer's next
//! address, and after a round over all of them backs off (5 ms doubling to
//! 500 ms) until the deadline.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::handshake::{
    self, Accepted, AcceptorView, Challenge, Hello, Proof, ACCEPTED_BYTES, CHALLENGE_BYTES,
    HELLO_BYTES, PROOF_BYTES, PROTOCOL_VERSION,
};
use super::interfaces::{self, InterfaceAddr};
use super::options::MAX_SOCKETS_PER_PEER;
use super::{JobAuth, TcpOptions, TcpTransport};
use crate::TransportError;

/// Outgoing attempts in flight at once (a bound on simultaneous SYNs).
const MAX_CONNECTING: usize = 256;
/// Accepted connections still in their handshake, at most.
const MAX_HANDSHAKING: usize = 1024;
/// Rejections from unknown senders kept for the final error message.
const MAX_STRANGERS: usize = 4;

fn setup_error(reason: String) -> TransportError {
    TransportError::Setup { reason }
}

/// The kernel's caps on `SO_SNDBUF` and `SO_RCVBUF` (`net.core.wmem_max`,
/// `net.core.rmem_max`), where it tells them.
fn buffer_caps() -> (Option<usize>, Option<usize>) {
    static CAPS: std::sync::OnceLock<(Option<usize>, Option<usize>)> = std::sync::OnceLock::new();
    *CAPS.get_or_init(|| {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        };
        (
            read("/proc/sys/net/core/wmem_max"),
            read("/proc/sys/net/core/rmem_max"),
        )
    })
}

/// Applies `bytes` as `SO_SNDBUF`/`SO_RCVBUF` (0 leaves both to the
/// kernel). Above the kernel's cap (`net.core.[wr]mem_max`) it forces the
/// size where the process may (`SO_SNDBUFFORCE`/`SO_RCVBUFFORCE`, root or
/// CAP_NET_ADMIN) and otherwise sets the cap: measured here, 32 MiB
/// buffers carry 64 MiB all-gathers ~30% faster than the 4 MiB cap, and
/// the kernel's autotuning was slowest of the three at 1 MiB.
fn set_buffers(socket: &Socket, bytes: usize) {
    if bytes == 0 {
        return;
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    let (wmax, rmax) = buffer_caps();
    let mut notes = Vec::new();
    for (name, cap, plain, force) in [
        ("SO_SNDBUF", wmax, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
        ("SO_RCVBUF", rmax, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
    ] {
        let above = matches!(cap, Some(m) if bytes > m);
        if above && set_int(socket, force, bytes).is_ok() {
            continue;
        }
        let size = if above { cap.unwrap_or(bytes) } else { bytes };
        if let Err(e) = set_int(socket, plain, size) {
            notes.push(format!("{name}: {e}"));
        } else if above {
            notes.push(format!(
                "{name} capped at net.core.{}mem_max={size} (no permission to force more)",
                if plain == libc::SO_SNDBUF { "w" } else { "r" }
            ));
        }
    }
    if !notes.is_empty() {
        ONCE.call_once(|| {
            tracing::info!(
                "tcp: socket buffers of {bytes} bytes asked for: {}",
                notes.join(", ")
            )
        });
    }
}

/// `setsockopt(SOL_SOCKET, option, value)`.
fn set_int(socket: &Socket, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the live socket `socket` borrows for the
    // call; `value` is a c_int on the stack, passed with its exact size;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Listening sockets on this rank's chosen addresses (one per address, each on
/// a free port), ready for [`TcpListenerSet::establish`].
#[derive(Debug)]
pub struct TcpListenerSet {
    listeners: Vec<std::net::TcpListener>,
    addrs: Vec<SocketAddr>,
}

/// Binds a listener, on a free port, on every address of the interfaces
/// `opts.interfaces` picks (IPv4 and IPv6; IPv6 link-local addresses are left
/// out). Addresses that cannot be bound are skipped with a warning; it fails
/// when none can. Errors name no peer ([`TransportError::Setup`]).
pub fn listen(opts: &TcpOptions) -> Result<TcpListenerSet, TransportError> {
    let all = interfaces::up_addresses()
        .map_err(|e| setup_error(format!("cannot list this host's network interfaces: {e}")))?;
    let chosen = interfaces::select(&all, &opts.interfaces);
    if chosen.is_empty() {
        let seen: Vec<String> = all.iter().map(|a| format!("{} {}", a.name, a.ip)).collect();
        return Err(setup_error(format!(
            "BRAID_SOCKET_IFNAME '{}' picks none of this host's interfaces that are up ({}); \
             name one of them, e.g. BRAID_SOCKET_IFNAME={}",
            opts.interfaces,
            seen.join(", "),
            all.first().map(|a| a.name.as_str()).unwrap_or("eth0")
        )));
    }
    tracing::info!(
        filter = %opts.interfaces,
        interfaces = ?chosen.iter().map(|a| format!("{} {}", a.name, a.ip)).collect::<Vec<_>>(),
        "tcp: listening on the chosen interfaces"
    );
    bind_all(&chosen, opts)
}

/// Like [`listen`], on these addresses instead of interfaces (port 0 each;
/// an unspecified IPv6 address listens dual-stack where the host allows).
pub fn listen_on(ips: &[IpAddr], opts: &TcpOptions) -> Result<TcpListenerSet, TransportError> {
    let named: Vec<InterfaceAddr> = ips
        .iter()
        .map(|ip| InterfaceAddr {
            name: String::from("(given)"),
            ip: *ip,
            loopback: ip.is_loopback(),
        })
        .collect();
    bind_all(&named, opts)
}

fn bind_all(addrs: &[InterfaceAddr], opts: &TcpOptions) -> Result<TcpListenerSet, TransportError> {
    let mut set = TcpListenerSet {
        listeners: Vec::new(),
        addrs: Vec::new(),
    };
    let mut failures = Vec::new();
    for a in addrs {
        match bind(a.ip, opts) {
            Ok((listener, addr)) => {
                set.listeners.push(listener);
                set.addrs.push(addr);
            }
            Err(e) => {
                tracing::warn!(
                    "tcp: cannot listen on {} ({}): {e}; skipping it",
                    a.ip,
                    a.name
                );
                failures.push(format!("{}: {e}", a.ip));
            }
        }
    }
    if set.listeners.is_empty() {
        return Err(setup_error(format!(
            "cannot listen on any chosen address ({})",
            if failures.is_empty() {
                "none given".to_string()
            } else {
                failures.join("; ")
            }
        )));
    }
    tracing::info!(addresses = ?set.addrs, "tcp: listening");
    Ok(set)
}

fn bind(ip: IpAddr, opts: &TcpOptions) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if ip.is_ipv6() {
        // A specific IPv6 address takes IPv6 only; `::` serves both families.
        let _ = socket.set_only_v6(!ip.is_unspecified());
    }
    // Lets a restarted job bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit the buffer sizes, and the receive window scale
    // is fixed by the SYN exchange: set them before listening.
    set_buffers(&socket, opts.socket_buffer_bytes);
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    let listener: std::net::TcpListener = socket.into();
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// A connection's handshake bytes: one frame out, one frame in, at a time.
struct Wire {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
    out: [u8; CHALLENGE_BYTES],
    out_len: usize,
    out_sent: usize,
    inb: [u8; CHALLENGE_BYTES],
    in_want: usize,
    in_got: usize,
}

impl Wire {
    fn new(stream: TcpStream, addr: SocketAddr) -> Self {
        Wire {
            stream,
            addr,
            since: Instant::now(),
            out: [0; CHALLENGE_BYTES],
            out_len: 0,
            out_sent: 0,
            inb: [0; CHALLENGE_BYTES],
            in_want: 0,
            in_got: 0,
        }
    }

    fn queue(&mut self, frame: &[u8]) {
        self.out[..frame.len()].copy_from_slice(frame);
        self.out_len = frame.len();
        self.out_sent = 0;
    }

    fn expect(&mut self, bytes: usize) {
        self.in_want = bytes;
        self.in_got = 0;
    }

    /// Writes the queued frame; true once all of it is out.
    fn flush(&mut self) -> io::Result<bool> {
        while self.out_sent < self.out_len {
            match (&self.stream).write(&self.out[self.out_sent..self.out_len]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads the expected frame and not a byte more (data may follow it);
    /// true once all of it is in.
    fn fill(&mut self) -> io::Result<bool> {
        while self.in_got < self.in_want {
            match (&self.stream).read(&mut self.inb[self.in_got..self.in_want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the connection closed after {} of the {} bytes expected",
                            self.in_got, self.in_want
                        ),
                    ))
                }
                Ok(n) => self.in_got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn frame(&self) -> &[u8] {
        &self.inb[..self.in_want]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutPhase {
    Connecting,
    SendHello,
    AwaitChallenge,
    SendProof,
    AwaitAccepted,
}

struct Attempt {
    wire: Wire,
    phase: OutPhase,
    hello: Hello,
}

/// One outgoing connection to make: rank `peer`, socket `index`.
struct Outgoing {
    peer: usize,
    index: usize,
    /// Which of the peer's addresses the next attempt tries.
    addr_idx: usize,
    /// Rounds over all of the peer's addresses that failed.
    rounds: u32,
    next_try: Instant,
    attempt: Option<Attempt>,
    done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InPhase {
    AwaitHello,
    SendChallenge,
    AwaitProof,
    SendAccepted,
}

struct Incoming {
    wire: Wire,
    phase: InPhase,
    hello: Option<Hello>,
    challenge: Option<Challenge>,
}

/// A failed attempt: why, and whether it deserves a warning (a handshake
/// refused) rather than a debug line (a peer not listening yet).
struct Failure {
    reason: String,
    warn: bool,
}

impl Failure {
    fn quiet(reason: String) -> Self {
        Failure {
            reason,
            warn: false,
        }
    }
    fn loud(reason: String) -> Self {
        Failure { reason, warn: true }
    }
}

struct Establisher<'a> {
    rank: usize,
    size: usize,
    k: usize,
    auth: &'a JobAuth,
    opts: &'a TcpOptions,
    peers: &'a [Vec<SocketAddr>],
    /// The ranks this rank connects with over TCP.
    wanted: Vec<bool>,
    poll: Poll,
    listeners: Vec<TcpListener>,
    out: Vec<Outgoing>,
    incoming: HashMap<usize, Incoming>,
    next_token: usize,
    slots: Vec<Vec<Option<TcpStream>>>,
    connected: usize,
    needed: usize,
    connecting: usize,
    /// The last problem seen with each rank.
    problems: Vec<Option<String>>,
    /// The last rejections of connections that named no rank of this group.
    strangers: Vec<String>,
}

impl TcpListenerSet {
    /// Addresses peers should try, in preference order (braid publishes them
    /// through its rendezvous store).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Connects this rank (`rank` of `size`) to every other: it connects to
    /// every lower rank `j` (trying `peers[j]` in order, retrying until the
    /// deadline since `j` may not listen yet) and accepts every higher rank,
    /// `opts.sockets_per_peer` connections per pair. Every connection proves
    /// the job (see [`handshake`](super::handshake)) before use; one that
    /// fails (wrong magic, version, job or token, garbage, truncation,
    /// timeout) is closed with a warning and establishment goes on waiting for
    /// the real peer. Fails at `deadline` naming the ranks still missing and
    /// the last problem seen with each.
    pub fn establish(
        self,
        rank: usize,
        size: usize,
        peers: &[Vec<SocketAddr>],
        auth: &JobAuth,
        opts: &TcpOptions,
        deadline: Instant,
    ) -> Result<TcpTransport, TransportError> {
        let others: Vec<usize> = (0..size).filter(|&p| p != rank).collect();
        self.establish_with(rank, size, &others, peers, auth, opts, deadline)
    }

    /// [`TcpListenerSet::establish`] with only the ranks in `tcp_peers`
    /// (the others are reached through another transport, such as shared
    /// memory on this host). Every rank must agree on who talks TCP with
    /// whom; a connection from a rank not in `tcp_peers` is refused.
    /// `peers[j]` may be empty for ranks not in `tcp_peers`.
    #[allow(clippy::too_many_arguments)]
    pub fn establish_with(
        self,
        rank: usize,
        size: usize,
        tcp_peers: &[usize],
        peers: &[Vec<SocketAddr>],
        auth: &JobAuth,
        opts: &TcpOptions,
        deadline: Instant,
    ) -> Result<TcpTransport, TransportError> {
        let k = opts.sockets_per_peer;
        let mut wanted = vec![false; size];
        for &p in tcp_peers {
            if p >= size || p == rank || wanted[p] {
                return Err(setup_error(format!(
                    "TCP peer list {tcp_peers:?} of rank {rank} names itself, repeats a rank or names one outside a group of {size}"
                )));
            }
            wanted[p] = true;
        }
        if rank >= size {
            return Err(setup_error(format!(
                "rank {rank} is not in a group of {size}"
            )));
        }
        if peers.len() != size {
            return Err(setup_error(format!(
                "{} address lists given for a group of {size} ranks",
                peers.len()
            )));
        }
        if !(1..=MAX_SOCKETS_PER_PEER).contains(&k) {
            return Err(setup_error(format!(
                "sockets_per_peer is {k}; it must be from 1 to {MAX_SOCKETS_PER_PEER}"
            )));
        }
        if size > u32::MAX as usize {
            return Err(setup_error(format!("a group of {size} ranks is too large")));
        }
        if auth.token.is_empty() {
            tracing::warn!("tcp: the job token is empty: connections prove nothing but the job id");
        }
        let started = Instant::now();
        let poll = Poll::new()
            .map_err(|e| setup_error(format!("cannot create an epoll instance: {e}")))?;
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)
                .map_err(|e| setup_error(format!("cannot watch a listening socket: {e}")))?;
            listeners.push(l);
        }
        let now = Instant::now();
        let out: Vec<Outgoing> = (0..rank)
            .filter(|&peer| wanted[peer])
            .flat_map(|peer| (0..k).map(move |index| (peer, index)))
            .map(|(peer, index)| Outgoing {
                peer,
                index,
                addr_idx: 0,
                rounds: 0,
                next_try: now,
                attempt: None,
                done: false,
            })
            .collect();
        let mut e = Establisher {
            rank,
            size,
            k,
            auth,
            opts,
            peers,
            poll,
            next_token: listeners.len() + out.len(),
            listeners,
            out,
            incoming: HashMap::new(),
            slots: (0..size).map(|_| (0..k).map(|_| None).collect()).collect(),
            connected: 0,
            needed: tcp_peers.len() * k,
            wanted,
            connecting: 0,
            problems: vec![None; size],
            strangers: Vec::new(),
        };
        e.run(deadline)?;
        let Establisher { poll, slots, .. } = e;
        let streams: Vec<Vec<TcpStream>> = slots
            .into_iter()
            .map(|socks| socks.into_iter().flatten().collect())
            .collect();
        tracing::info!(
            rank,
            size,
            sockets_per_peer = k,
            elapsed_ms = started.elapsed().as_millis() as u64,
            tcp_peers = tcp_peers.len(),
            "tcp: connected to every TCP peer"
        );
        TcpTransport::new(rank, size, k, poll, streams, opts.spin)
            .map(|t| t.yielding(opts.yield_while_spinning))
    }
}

fn backoff(rounds: u32) -> Duration {
    Duration::from_millis(5u64 << rounds.min(7)).min(Duration::from_millis(500))
}

impl Establisher<'_> {
    fn out_token(&self, i: usize) -> Token {
        Token(self.listeners.len() + i)
    }

    fn run(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<Token> = Vec::new();
        while self.connected < self.needed {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.missing_error());
            }
            self.start_due(now);
            self.expire(now);
            // Attempts waiting for a free slot (MAX_CONNECTING) start when an
            // attempt in flight ends, which is an event or a timeout below.
            let can_start = self.connecting < MAX_CONNECTING;
            let mut wake = deadline;
            for o in &self.out {
                match &o.attempt {
                    None if !o.done && can_start => wake = wake.min(o.next_try),
                    Some(a) if matches!(a.phase, OutPhase::SendProof | OutPhase::AwaitAccepted) => {
                    }
                    Some(a) => wake = wake.min(a.wire.since + self.opts.connect_timeout),
                    None => {}
                }
            }
            for c in self.incoming.values() {
                wake = wake.min(c.wire.since + self.opts.connect_timeout);
            }
            if self.connected >= self.needed {
                break;
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(setup_error(format!("waiting for connections failed: {e}"))),
            }
            ready.clear();
            ready.extend(events.iter().map(|ev| ev.token()));
            for &token in &ready {
                let t = token.0;
                if t < self.listeners.len() {
                    self.accept_all(t);
                } else if t < self.listeners.len() + self.out.len() {
                    self.drive_out(t - self.listeners.len());
                } else {
                    self.drive_in(t);
                }
            }
        }
        Ok(())
    }

    /// Starts the outgoing attempts that are due.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.out.len() {
            if self.connecting >= MAX_CONNECTING {
                return;
            }
            let o = &self.out[i];
            if o.done || o.attempt.is_some() || o.next_try > now {
                continue;
            }
            let (peer, index) = (o.peer, o.index);
            let Some(&addr) = self.peers[peer].get(o.addr_idx) else {
                self.problems[peer] = Some(format!("rank {peer} published no address"));
                self.out[i].next_try = now + backoff(u32::MAX);
                continue;
            };
            let token = self.out_token(i);
            let nonce = match handshake::nonce() {
                Ok(n) => n,
                Err(e) => {
                    self.retry_later(i, e.to_string());
                    continue;
                }
            };
            let hello = Hello {
                version: PROTOCOL_VERSION,
                sockets_per_peer: self.k as u16,
                job_id: self.auth.job_id,
                rank: self.rank as u32,
                size: self.size as u32,
                socket_index: index as u16,
                nonce,
            };
            match self.connect(addr, token) {
                Ok(stream) => {
                    self.connecting += 1;
                    self.out[i].attempt = Some(Attempt {
                        wire: Wire::new(stream, addr),
                        phase: OutPhase::Connecting,
                        hello,
                    });
                    self.drive_out(i);
                }
                Err(e) => {
                    let reason = format!("cannot connect to rank {peer} at {addr}: {e}");
                    tracing::debug!(rank = self.rank, peer, "tcp: {reason}");
                    self.retry_later(i, reason);
                }
            }
        }
    }

    fn connect(&self, addr: SocketAddr, token: Token) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
        socket.set_nosigpipe(true)?;
        set_buffers(&socket, self.opts.socket_buffer_bytes);
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS)
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    /// Drops attempts and handshakes that ran past the connect timeout.
    fn expire(&mut self, now: Instant) {
        let limit = self.opts.connect_timeout;
        for i in 0..self.out.len() {
            if let Some(a) = &self.out[i].attempt {
                // Once the proof is out, the acceptor may already have taken
                // the socket: giving up then could leave the ends disagreeing,
                // so only the deadline ends that wait.
                let proven = matches!(a.phase, OutPhase::SendProof | OutPhase::AwaitAccepted);
                if !proven && now >= a.wire.since + limit {
                    let what = match a.phase {
                        OutPhase::Connecting => "connecting",
                        _ => "waiting for its challenge",
                    };
                    let reason = format!(
                        "no answer from rank {} at {} after {:?} ({what})",
                        self.out[i].peer, a.wire.addr, limit
                    );
                    self.fail_out(i, Failure::quiet(reason));
                }
            }
        }
        let late: Vec<usize> = self
            .incoming
            .iter()
            .filter(|(_, c)| now >= c.wire.since + limit)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(c) = self.incoming.get(&t) {
                let reason = format!(
                    "its handshake did not finish within {limit:?} (had {} of the {} bytes of the {})",
                    c.wire.in_got,
                    c.wire.in_want,
                    match c.phase {
                        InPhase::AwaitHello => "hello",
                        InPhase::SendChallenge => "challenge sent",
                        InPhase::AwaitProof => "proof",
                        InPhase::SendAccepted => "acceptance sent",
                    }
                );
                self.reject(t, Failure::loud(reason));
            }
        }
    }

    fn drive_out(&mut self, i: usize) {
        let (peer, token) = (self.out[i].peer, self.auth.token.as_slice());
        let Some(a) = self.out[i].attempt.as_mut() else {
            return;
        };
        match progress_out(a, token, peer) {
            Ok(false) => {}
            Ok(true) => {
                let o = &mut self.out[i];
                if let Some(a) = o.attempt.take() {
                    tracing::debug!(peer, socket = o.index, addr = %a.wire.addr, "tcp: connected");
                    self.slots[peer][o.index] = Some(a.wire.stream);
                    o.done = true;
                    self.connected += 1;
                    self.connecting -= 1;
                }
            }
            Err(f) => self.fail_out(i, f),
        }
    }

    fn fail_out(&mut self, i: usize, failure: Failure) {
        if let Some(mut a) = self.out[i].attempt.take() {
            let _ = self.poll.registry().deregister(&mut a.wire.stream);
            self.connecting -= 1;
        }
        let peer = self.out[i].peer;
        if failure.warn {
            tracing::warn!(rank = self.rank, peer, "tcp: {}", failure.reason);
        } else {
            tracing::debug!(rank = self.rank, peer, "tcp: {}", failure.reason);
        }
        self.retry_later(i, failure.reason);
    }

    /// Notes why an attempt failed and schedules the next: the peer's next
    /// address at once, or after a backoff once all were tried.
    fn retry_later(&mut self, i: usize, reason: String) {
        let now = Instant::now();
        let o = &mut self.out[i];
        self.problems[o.peer] = Some(reason);
        o.addr_idx += 1;
        if o.addr_idx >= self.peers[o.peer].len() {
            o.addr_idx = 0;
            o.next_try = now + backoff(o.rounds);
            o.rounds = o.rounds.saturating_add(1);
        } else {
            o.next_try = now;
        }
    }

    fn accept_all(&mut self, l: usize) {
        loop {
            match self.listeners[l].accept() {
                Ok((mut stream, addr)) => {
                    if self.incoming.len() >= MAX_HANDSHAKING {
                        tracing::warn!(%addr, "tcp: too many connections in their handshake; dropping one from {addr}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let t = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(t),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(%addr, "tcp: cannot watch a connection from {addr}: {e}");
                        continue;
                    }
                    let mut wire = Wire::new(stream, addr);
                    wire.expect(HELLO_BYTES);
                    self.incoming.insert(
                        t,
                        Incoming {
                            wire,
                            phase: InPhase::AwaitHello,
                            hello: None,
                            challenge: None,
                        },
                    );
                    self.drive_in(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED and the like concern one connection;
                    // EMFILE leaves it queued, and the deadline reports it.
                    tracing::warn!("tcp: accepting a connection failed: {e}");
                    if e.kind() == io::ErrorKind::ConnectionAborted {
                        continue;
                    }
                    return;
                }
            }
        }
    }

    fn drive_in(&mut self, t: usize) {
        let view = AcceptorView {
            job_id: self.auth.job_id,
            rank: self.rank,
            size: self.size,
            sockets_per_peer: self.k,
        };
        let Some(c) = self.incoming.get_mut(&t) else {
            return;
        };
        let slots = &self.slots;
        let connected = |r: usize, i: usize| {
            slots
                .get(r)
                .and_then(|s| s.get(i))
                .is_some_and(|s| s.is_some())
        };
        let outcome = progress_in(c, &view, &self.auth.token, &connected);
        let claimed = c.hello.as_ref().map(|h| h.rank as usize);
        if let Some(r) = claimed.filter(|&r| r < self.size && !self.wanted[r]) {
            return self.reject(
                t,
                Failure::loud(format!(
                    "rank {r} connected over TCP, but this rank reaches it through another transport (same host: shared memory); do the ranks disagree on BRAID_TRANSPORT or BRAID_HOST_ID?"
                )),
            );
        }
        match outcome {
            Ok(None) => {}
            Ok(Some((peer, index))) => {
                if let Some(c) = self.incoming.remove(&t) {
                    tracing::debug!(peer, socket = index, addr = %c.wire.addr, "tcp: accepted");
                    self.slots[peer][index] = Some(c.wire.stream);
                    self.connected += 1;
                }
            }
            Err(failure) => self.reject(t, failure),
        }
    }

    /// Closes an accepted connection that failed its handshake.
    /// Closes an accepted connection that failed its handshake. Connections
    /// that close before sending a byte of a frame (probes, connectors that
    /// gave up waiting and retry) are only logged at debug level.
    fn reject(&mut self, t: usize, failure: Failure) {
        let Some(mut c) = self.incoming.remove(&t) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.wire.stream);
        let addr = c.wire.addr;
        let reason = failure.reason;
        if failure.warn {
            tracing::warn!(rank = self.rank, %addr, "tcp: rejected a connection from {addr}: {reason}");
        } else {
            tracing::debug!(rank = self.rank, %addr, "tcp: dropped a connection from {addr}: {reason}");
        }
        match c.hello.as_ref().map(|h| h.rank as usize) {
            Some(r) if r < self.size && r != self.rank => {
                self.problems[r] = Some(format!(
                    "a connection from {addr} claiming rank {r} was rejected: {reason}"
                ));
            }
            _ => {
                if self.strangers.len() == MAX_STRANGERS {
                    self.strangers.remove(0);
                }
                self.strangers.push(format!("{addr}: {reason}"));
            }
        }
    }

    fn missing_error(&self) -> TransportError {
        let missing: Vec<usize> = (0..self.size)
            .filter(|&r| self.wanted[r] && self.slots[r].iter().any(Option::is_none))
            .collect();
        let mut reason = format!(
            "rank {} of {}: no authenticated connection with ranks {:?} by the deadline ({} of {} sockets connected)",
            self.rank, self.size, missing, self.connected, self.needed
        );
        for &r in &missing {
            let role = if r < self.rank {
                "connecting to it"
            } else {
                "waiting for it to connect"
            };
            match &self.problems[r] {
                Some(p) => reason.push_str(&format!("; rank {r} ({role}): {p}")),
                None => reason.push_str(&format!("; rank {r} ({role}): nothing heard")),
            }
        }
        if !self.strangers.is_empty() {
            reason.push_str(&format!("; also rejected: {}", self.strangers.join("; ")));
        }
        match missing.first() {
            Some(&peer) => TransportError::Io { peer, reason },
            None => TransportError::Setup { reason },
        }
    }
}

/// Advances an outgoing handshake; true once the proof is out.
fn progress_out(a: &mut Attempt, token: &[u8], peer: usize) -> Result<bool, Failure> {
    let addr = a.wire.addr;
    let io = |what: &str, e: io::Error| Failure::loud(format!("{what} rank {peer} at {addr}: {e}"));
    loop {
        match a.phase {
            OutPhase::Connecting => {
                match a.wire.stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        return Err(Failure::quiet(format!(
                            "cannot connect to rank {peer} at {addr}: {e}"
                        )))
                    }
                }
                match a.wire.stream.peer_addr() {
                    Ok(_) => {
                        let frame = a.hello.encode();
                        a.wire.queue(&frame);
                        a.phase = OutPhase::SendHello;
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::NotConnected
                            || e.raw_os_error() == Some(libc::ENOTCONN) =>
                    {
                        return Ok(false)
                    }
                    Err(e) => {
                        return Err(Failure::quiet(format!(
                            "cannot connect to rank {peer} at {addr}: {e}"
                        )))
                    }
                }
            }
            OutPhase::SendHello => {
                if !a.wire.flush().map_err(|e| io("sending the hello to", e))? {
                    return Ok(false);
                }
                a.wire.expect(CHALLENGE_BYTES);
                a.phase = OutPhase::AwaitChallenge;
            }
            OutPhase::AwaitChallenge => {
                let complete = a.wire.fill().map_err(|e| {
                    Failure::loud(format!(
                        "rank {peer} at {addr} did not answer the hello ({e}); it refused this rank's \
                         hello (see its log) or is not a braid rank of this job"
                    ))
                })?;
                if !complete {
                    return Ok(false);
                }
                let refused = |e: handshake::HandshakeError| {
                    Failure::loud(format!(
                        "refused the acceptor at {addr} (meant to be rank {peer}): it {e}"
                    ))
                };
                let challenge = Challenge::decode(a.wire.frame()).map_err(refused)?;
                handshake::verify_challenge(token, &a.hello, &challenge, peer).map_err(refused)?;
                let proof = handshake::make_proof(token, &a.hello, &challenge);
                a.wire.queue(&proof.encode());
                a.phase = OutPhase::SendProof;
            }
            OutPhase::SendProof => {
                if !a.wire.flush().map_err(|e| io("sending the proof to", e))? {
                    return Ok(false);
                }
                a.wire.expect(ACCEPTED_BYTES);
                a.phase = OutPhase::AwaitAccepted;
            }
            OutPhase::AwaitAccepted => {
                let complete = a.wire.fill().map_err(|e| {
                    Failure::loud(format!(
                        "rank {peer} at {addr} did not take the connection after its proof ({e}); \
                         see its log for why"
                    ))
                })?;
                if !complete {
                    return Ok(false);
                }
                Accepted::decode(a.wire.frame()).map_err(|e| {
                    Failure::loud(format!(
                        "rank {peer} at {addr} ended the handshake oddly: {e}"
                    ))
                })?;
                return Ok(true);
            }
        }
    }
}

/// Advances an accepted handshake; the rank and socket index once proven.
fn progress_in(
    c: &mut Incoming,
    view: &AcceptorView,
    token: &[u8],
    connected: &dyn Fn(usize, usize) -> bool,
) -> Result<Option<(usize, usize)>, Failure> {
    // Closed before a byte of the frame: quiet; anything else: loud.
    let read_failed = |w: &Wire, what: &str, e: io::Error| {
        let reason = format!("reading its {what}: {e}");
        if e.kind() == io::ErrorKind::UnexpectedEof && w.in_got == 0 {
            Failure::quiet(format!("{reason} (it closed without sending one)"))
        } else {
            Failure::loud(reason)
        }
    };
    let loud = |reason: String| Failure::loud(reason);
    loop {
        match c.phase {
            InPhase::AwaitHello => {
                match c.wire.fill() {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    Err(e) => return Err(read_failed(&c.wire, "hello", e)),
                }
                let hello = Hello::decode(c.wire.frame()).map_err(|e| loud(e.to_string()))?;
                c.hello = Some(hello.clone());
                handshake::validate_hello(&hello, view, connected)
                    .map_err(|e| loud(e.to_string()))?;
                let nonce = handshake::nonce().map_err(|e| loud(e.to_string()))?;
                let challenge = handshake::make_challenge(token, &hello, view.rank as u32, nonce);
                c.wire.queue(&challenge.encode());
                c.challenge = Some(challenge);
                c.phase = InPhase::SendChallenge;
            }
            InPhase::SendChallenge => {
                if !c
                    .wire
                    .flush()
                    .map_err(|e| loud(format!("sending the challenge: {e}")))?
                {
                    return Ok(None);
                }
                c.wire.expect(PROOF_BYTES);
                c.phase = InPhase::AwaitProof;
            }
            InPhase::AwaitProof => {
                match c.wire.fill() {
                    Ok(true) => {}
                    Ok(false) => return Ok(None),
                    Err(e) => {
                        return Err(read_failed(
                            &c.wire,
                            "proof (it gave up waiting, or refused this rank's challenge: a different job token?)",
                            e,
                        ))
                    }
                }
                let (Some(hello), Some(challenge)) = (&c.hello, &c.challenge) else {
                    return Err(loud("internal error: proof before hello".into()));
                };
                let proof = Proof::decode(c.wire.frame()).map_err(|e| loud(e.to_string()))?;
                handshake::verify_proof(token, hello, challenge, &proof)
                    .map_err(|e| loud(format!("rank {} {e}", hello.rank)))?;
                if connected(hello.rank as usize, hello.socket_index as usize) {
                    return Err(loud(
                        handshake::HandshakeError::Duplicate {
                            rank: hello.rank,
                            index: hello.socket_index,
                        }
                        .to_string(),
                    ));
                }
                c.wire.queue(&Accepted.encode());
                c.phase = InPhase::SendAccepted;
            }
            InPhase::SendAccepted => {
                if !c
                    .wire
                    .flush()
                    .map_err(|e| loud(format!("sending its acceptance: {e}")))?
                {
                    return Ok(None);
                }
                let Some(hello) = &c.hello else {
                    return Err(loud("internal error: acceptance before hello".into()));
                };
                return Ok(Some((hello.rank as usize, hello.socket_index as usize)));
            }
        }
    }
}
