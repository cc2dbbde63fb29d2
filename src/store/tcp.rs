//! [`TcpStore`]: the default store. Rank 0 hosts a [`TcpStoreServer`] thread
//! inside its own process at MASTER_ADDR:MASTER_PORT; every rank (rank 0
//! included) talks to it through a [`TcpStore`] client. The wire protocol is
//! in [`protocol`](super::protocol).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::memory::{MemoryStore, WaitOutcome};
use super::protocol::{
    decode_request, decode_response, encode_request, encode_response, frame_body_len, ErrorCode,
    Request, Response, MAC_LEN, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, NONCE_LEN, VERSION,
};
use super::{check_key_for, check_keys_for, check_set, wait_timeout_error, Backoff, Store};
use crate::{Error, ErrorKind, Result};

type HmacSha256 = Hmac<Sha256>;

/// A connection must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a frame has started, the rest of it must arrive within this time; a
/// response must be taken by the client within it too.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// A server-side `wait` never lasts longer than this (the client asks again).
const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How often a waiting connection checks that its client is still there.
const LIVENESS_POLL: Duration = Duration::from_secs(1);
/// How often the accept loop checks that its server handle still exists.
const ACCEPT_POLL_MS: libc::c_int = 50;
/// Idle client connections kept for reuse.
const MAX_IDLE: usize = 64;

const CLIENT_LABEL: &[u8] = b"braid-store/1 client";
const SERVER_LABEL: &[u8] = b"braid-store/1 server";

/// The TCP store's client. Cheap to share between threads (`&TcpStore` is
/// enough): each concurrent call uses its own pooled connection, so one
/// thread's long `wait` never blocks another thread's `set`.
///
/// Once connected, a lost connection is not re-established behind the
/// caller's back (an `add` might then count twice): the call fails with an
/// error, and the next call opens a fresh connection if the server is still
/// there.
pub struct TcpStore {
    target: String,
    addrs: Vec<SocketAddr>,
    token: Option<Vec<u8>>,
    idle: Mutex<Vec<TcpStream>>,
    io_timeout: Duration,
}

/// A running TCP store server; it stops when this handle is dropped (its
/// threads never keep the process alive).
pub struct TcpStoreServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    table: MemoryStore,
    token: Option<Vec<u8>>,
    stop: AtomicBool,
    /// Open connections, so that stopping can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    addr: SocketAddr,
}

/// What the server's table calls itself in error messages sent to clients.
struct ServerName;

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("store server")
    }
}

impl TcpStore {
    /// Starts a server listening on `bind` (port 0 picks a free port: see
    /// [`TcpStoreServer::local_addr`]). With a `token`, every client must
    /// prove it knows the token before its first request.
    pub fn server(bind: SocketAddr, token: Option<Vec<u8>>) -> Result<TcpStoreServer> {
        if token.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("TCP store server at {bind}: the token is empty; pass None or a non-empty token"),
            ));
        }
        let listener = TcpListener::bind(bind).map_err(|e| bind_error(bind, &e))?;
        let addr = listener.local_addr().map_err(|e| bind_error(bind, &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bind_error(bind, &e))?;
        let shared = Arc::new(Shared {
            table: MemoryStore::new(),
            token,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            addr,
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("braid-store-accept".into())
            .spawn(move || accept_loop(&s, &listener))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transport,
                    format!("TCP store server at {addr}: cannot start its thread: {e}"),
                )
            })?;
        tracing::debug!(%addr, auth = shared.token.is_some(), "braid TCP store server listening");
        Ok(TcpStoreServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Connects to the server at `addr` (`"host:port"`, `"10.0.0.1:29500"`,
    /// `"[::1]:29500"`), retrying until `deadline` while the server is not up
    /// yet or the name does not resolve yet. Every address the name resolves
    /// to is tried, IPv4 and IPv6. `token` must match the server's.
    pub fn connect(addr: &str, token: Option<&[u8]>, deadline: Instant) -> Result<TcpStore> {
        let display = format!("TCP store at {addr}");
        if token.is_some_and(|t| t.is_empty()) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{display}: the token is empty; pass None or a non-empty token"),
            ));
        }
        let mut store = TcpStore {
            target: addr.to_owned(),
            addrs: Vec::new(),
            token: token.map(<[u8]>::to_vec),
            idle: Mutex::new(Vec::new()),
            io_timeout: Duration::from_secs(60),
        };
        let start = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let mut last_error = String::from("no attempt finished");
        loop {
            match addr.to_socket_addrs() {
                Ok(resolved) => {
                    let resolved: Vec<SocketAddr> = resolved.collect();
                    if resolved.is_empty() {
                        last_error = format!("{addr:?} resolves to no address");
                    }
                    for (i, a) in resolved.iter().enumerate() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match store
                            .open(*a, left.clamp(Duration::from_millis(50), HANDSHAKE_TIMEOUT))
                        {
                            Ok(conn) => {
                                let mut addrs = resolved.clone();
                                addrs.rotate_left(i);
                                store.addrs = addrs;
                                store.idle_push(conn);
                                tracing::debug!(%a, "braid TCP store client connected");
                                return Ok(store);
                            }
                            Err(Attempt::Fatal(e)) => return Err(e),
                            Err(Attempt::Retry(why)) => last_error = format!("{a}: {why}"),
                        }
                    }
                }
                Err(e) => last_error = format!("cannot resolve {addr:?}: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{display}: could not connect within {:.1} s (last attempt: {last_error}); \
                         check that rank 0 is running and hosts the store at MASTER_ADDR:MASTER_PORT, \
                         that MASTER_ADDR resolves to rank 0's machine from this node, and that no \
                         firewall blocks the port",
                        start.elapsed().as_secs_f64()
                    ),
                ));
            }
            backoff.sleep_until_at_most(deadline);
        }
    }

    /// How long a call may wait for the server's answer (beyond a `wait`'s own
    /// deadline) before it fails with a timeout; 60 s unless changed.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The addresses the server's name resolved to, the one in use first.
    pub fn server_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Connects to `addr` and runs the handshake, all within `timeout` each step.
    fn open(&self, addr: SocketAddr, timeout: Duration) -> std::result::Result<TcpStream, Attempt> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let setup = s
            .set_nodelay(true)
            .and_then(|()| s.set_read_timeout(Some(timeout)))
            .and_then(|()| s.set_write_timeout(Some(timeout)));
        setup.map_err(|e| Attempt::Retry(e.to_string()))?;
        self.client_handshake(&mut s, addr)?;
        Ok(s)
    }

    fn client_handshake(
        &self,
        s: &mut TcpStream,
        addr: SocketAddr,
    ) -> std::result::Result<(), Attempt> {
        let fatal =
            |kind, msg: String| Attempt::Fatal(Error::new(kind, format!("{self} ({addr}): {msg}")));
        let client_nonce = random_nonce();
        let hello = Request::Hello {
            version: VERSION,
            nonce: client_nonce,
        };
        send(s, &encode_request(&hello).map_err(Attempt::Fatal)?)
            .map_err(|e| Attempt::Retry(format!("sending hello: {e}")))?;
        let (server_nonce, auth_required) = match self.handshake_reply(s)? {
            Response::Challenge {
                version,
                nonce,
                auth_required,
            } if version == VERSION => (nonce, auth_required),
            Response::Challenge { version, .. } => {
                return Err(fatal(
                    ErrorKind::Config,
                    format!(
                        "the server speaks store protocol version {version}, this rank {VERSION}; \
                         run the same braid build on every rank"
                    ),
                ))
            }
            other => return Err(self.unexpected_handshake(addr, other)),
        };
        match (&self.token, auth_required) {
            (None, false) => Ok(()),
            (None, true) => Err(fatal(
                ErrorKind::Config,
                "the server requires a job token and this rank has none; set BRAID_TOKEN to \
                 the job's token on every rank"
                    .into(),
            )),
            (Some(_), false) => Err(fatal(
                ErrorKind::Config,
                "this rank has a job token (BRAID_TOKEN) but the server asks for none, so it \
                 cannot prove it belongs to this job (another job's store on the same port?); \
                 set the same BRAID_TOKEN on every rank, rank 0 included"
                    .into(),
            )),
            (Some(token), true) => {
                let mac = hmac(token, CLIENT_LABEL, &server_nonce, &client_nonce);
                send(
                    s,
                    &encode_request(&Request::Auth { mac }).map_err(Attempt::Fatal)?,
                )
                .map_err(|e| Attempt::Retry(format!("sending the token proof: {e}")))?;
                match self.handshake_reply(s)? {
                    Response::Welcome { mac }
                        if verify_hmac(token, SERVER_LABEL, &client_nonce, &server_nonce, &mac) =>
                    {
                        Ok(())
                    }
                    Response::Welcome { .. } => Err(fatal(
                        ErrorKind::Config,
                        "the server could not prove it knows this job's token (another job's \
                         store on the same address?); check MASTER_ADDR, MASTER_PORT and that \
                         every rank has the same BRAID_TOKEN"
                            .into(),
                    )),
                    other => Err(self.unexpected_handshake(addr, other)),
                }
            }
        }
    }

    fn handshake_reply(&self, s: &mut TcpStream) -> std::result::Result<Response, Attempt> {
        let frame = match read_frame(s, MAX_HANDSHAKE_FRAME_LEN, None) {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                return Err(Attempt::Retry(
                    "the server closed the connection during the handshake".into(),
                ))
            }
            Err(FrameError::Io(e)) => return Err(Attempt::Retry(format!("handshake: {e}"))),
            Err(FrameError::Malformed(e)) => {
                return Err(Attempt::Fatal(Error::new(
                    ErrorKind::Transport,
                    format!(
                    "{self}: the server's handshake is not a braid store's ({}); is MASTER_PORT \
                         used by another program?",
                    e.message()
                ),
                )))
            }
        };
        decode_response(&frame).map_err(|e| {
            Attempt::Fatal(Error::new(
                ErrorKind::Transport,
                format!(
                    "{self}: the server's handshake is not a braid store's ({}); is MASTER_PORT \
                     used by another program?",
                    e.message()
                ),
            ))
        })
    }

    fn unexpected_handshake(&self, addr: SocketAddr, resp: Response) -> Attempt {
        let (kind, msg) = match resp {
            Response::Error {
                code: ErrorCode::AuthFailed,
                message,
            } => (
                ErrorKind::Config,
                format!(
                    "the server rejected this rank's job token ({message}); every rank must have \
                     the same BRAID_TOKEN as rank 0"
                ),
            ),
            Response::Error { message, .. } => (
                ErrorKind::Config,
                format!("the server refused the handshake: {message}"),
            ),
            other => (
                ErrorKind::Transport,
                format!("unexpected handshake answer {}", response_name(&other)),
            ),
        };
        Attempt::Fatal(Error::new(kind, format!("{self} ({addr}): {msg}")))
    }

    fn idle_push(&self, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// An idle connection, or a new one (one try per address).
    fn take_conn(&self, what: &str) -> Result<TcpStream> {
        if let Some(c) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(c);
        }
        let mut errors = Vec::new();
        for a in &self.addrs {
            match self.open(*a, self.io_timeout.min(HANDSHAKE_TIMEOUT)) {
                Ok(c) => return Ok(c),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => errors.push(format!("{a}: {why}")),
            }
        }
        Err(Error::new(
            ErrorKind::Transport,
            format!(
                "{self}: cannot reach the server for {what} ({}); rank 0, which hosts the store, \
                 may have exited or failed: check its output",
                errors.join("; ")
            ),
        ))
    }

    /// Sends `req` and returns the server's answer. `read_timeout` bounds the
    /// wait for the answer. `Error` answers become errors.
    fn call(&self, req: &Request, what: &str, read_timeout: Duration) -> Result<Response> {
        let frame = encode_request(req)
            .map_err(|e| Error::new(e.kind(), format!("{self}: {what}: {}", e.message())))?;
        let mut conn = self.take_conn(what)?;
        let lost = |e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::Transport,
                format!(
                    "{self}: connection to the server lost during {what} ({e}); rank 0, which \
                     hosts the store, may have exited or failed: check its output"
                ),
            )
        };
        conn.set_write_timeout(Some(self.io_timeout))
            .and_then(|()| conn.set_read_timeout(Some(read_timeout)))
            .map_err(|e| lost(&e))?;
        send(&mut conn, &frame).map_err(|e| lost(&e))?;
        let answer = match read_frame(&mut conn, MAX_FRAME_LEN, None) {
            Ok(f) => f,
            Err(FrameError::Closed) => return Err(lost(&"the server closed the connection")),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{self}: the server did not answer {what} within {:.1} s; rank 0 may be \
                         overloaded or its machine unreachable",
                        read_timeout.as_secs_f64()
                    ),
                ));
            }
            Err(FrameError::Io(e)) => return Err(lost(&e)),
            Err(FrameError::Malformed(e)) => return Err(lost(&e)),
        };
        let resp = decode_response(&answer).map_err(|e| lost(&e))?;
        if let Response::Error { code, message } = resp {
            let kind = match code {
                ErrorCode::Refused => {
                    self.idle_push(conn);
                    ErrorKind::InvalidArgument
                }
                ErrorCode::AuthFailed => ErrorKind::Config,
                ErrorCode::ShuttingDown | ErrorCode::BadRequest => ErrorKind::Transport,
            };
            return Err(Error::new(kind, format!("{self}: {what}: {message}")));
        }
        self.idle_push(conn);
        Ok(resp)
    }

    fn unexpected(&self, what: &str, resp: &Response) -> Error {
        Error::new(
            ErrorKind::Transport,
            format!(
                "{self}: the server answered {what} with {}; is every rank running the same braid build?",
                response_name(resp)
            ),
        )
    }
}

impl fmt::Display for TcpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TCP store at {}", self.target)
    }
}

impl fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStore")
            .field("target", &self.target)
            .field("addrs", &self.addrs)
            .field("auth", &self.token.is_some())
            .finish()
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_set(self, key, value.len())?;
        let what = format!("set of key {key:?}");
        let req = Request::Set {
            key: key.to_owned(),
            value: value.to_vec(),
        };
        match self.call(&req, &what, self.io_timeout)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(&what, &other)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key_for(self, key)?;
        let what = format!("get of key {key:?}");
        match self.call(
            &Request::Get {
                key: key.to_owned(),
            },
            &what,
            self.io_timeout,
        )? {
            Response::Value(v) => Ok(v),
            other => Err(self.unexpected(&what, &other)),
        }
    }

    fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()> {
        check_keys_for(self, keys)?;
        if keys.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let what = format!("wait for {} key(s)", keys.len());
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(MAX_SERVER_WAIT);
            let timeout_ms = left.as_micros().div_ceil(1000) as u64;
            let req = Request::Wait {
                keys: owned.clone(),
                timeout_ms,
            };
            match self.call(&req, &what, left + self.io_timeout)? {
                Response::Ready => return Ok(()),
                Response::Missing(missing) if Instant::now() >= deadline => {
                    return Err(wait_timeout_error(
                        self,
                        &missing,
                        keys.len(),
                        start.elapsed(),
                    ))
                }
                Response::Missing(_) => continue,
                other => return Err(self.unexpected(&what, &other)),
            }
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        check_key_for(self, key)?;
        let what = format!("add to key {key:?}");
        let req = Request::Add {
            key: key.to_owned(),
            delta,
        };
        match self.call(&req, &what, self.io_timeout)? {
            Response::Counter(n) => Ok(n),
            other => Err(self.unexpected(&what, &other)),
        }
    }
}

/// Outcome of one connection attempt that failed.
enum Attempt {
    /// Worth retrying until the deadline (refused, reset, timed out).
    Retry(String),
    /// Retrying cannot help (wrong token, not a braid store).
    Fatal(Error),
}

impl TcpStoreServer {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Debug for TcpStoreServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStoreServer")
            .field("addr", &self.addr)
            .field("auth", &self.shared.token.is_some())
            .finish()
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.table.wake_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for c in conns.values() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        tracing::debug!(addr = %self.addr, open = conns.len(), "braid TCP store server stopped");
    }
}

fn bind_error(bind: SocketAddr, e: &io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "another program (another job, or a previous run still exiting) uses port {}; \
             choose another MASTER_PORT",
            bind.port()
        ),
        io::ErrorKind::AddrNotAvailable => {
            "that address is not one of this machine's; rank 0 must run on MASTER_ADDR".into()
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges; choose a MASTER_PORT above 1024".into()
        }
        _ => "check MASTER_ADDR and MASTER_PORT".into(),
    };
    Error::new(
        ErrorKind::Config,
        format!("TCP store server: cannot listen on {bind}: {e}; {hint}"),
    )
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        // SAFETY: `pfd` is a valid pollfd that outlives the call, the count is
        // 1, and its descriptor stays open (the listener is borrowed).
        let rc = unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL_MS) };
        if rc <= 0 {
            continue; // timeout or EINTR: re-check `stop`
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => start_connection(shared, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. out of file descriptors: back off, keep serving.
                    tracing::warn!(addr = %shared.addr, "braid TCP store server: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let registered = stream.try_clone().map(|c| {
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, c);
    });
    if let Err(e) = registered {
        tracing::warn!(%peer, "braid TCP store server: dropping connection: {e}");
        return;
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("braid-store-conn".into())
        .stack_size(256 << 10)
        .spawn(move || {
            serve_connection(&s, stream, peer);
            s.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
    if let Err(e) = spawned {
        tracing::warn!(%peer, "braid TCP store server: cannot start a thread for a connection: {e}");
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Why a connection is being closed: logged at `warn` for misbehaving
/// clients, `debug` for ordinary ends.
enum Close {
    Quiet(String),
    Warn(String),
}

fn serve_connection(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let result = (|| {
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| stream.set_write_timeout(Some(FRAME_TIMEOUT)))
            .and_then(|()| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(|e| Close::Quiet(format!("socket setup failed: {e}")))?;
        server_handshake(shared, &mut stream)?;
        loop {
            stream
                .set_read_timeout(None)
                .map_err(|e| Close::Quiet(e.to_string()))?;
            let frame = read_frame(&mut stream, MAX_FRAME_LEN, Some(FRAME_TIMEOUT))
                .map_err(|e| frame_close(shared, e))?;
            let req = match decode_request(&frame) {
                Ok(r) => r,
                Err(e) => {
                    reply_error(&mut stream, ErrorCode::BadRequest, e.message());
                    return Err(Close::Warn(e.message().to_owned()));
                }
            };
            let resp = handle(shared, &stream, req)?;
            let bytes = encode_response(&resp).map_err(|e| Close::Warn(e.to_string()))?;
            send(&mut stream, &bytes)
                .map_err(|e| Close::Quiet(format!("sending the answer: {e}")))?;
        }
    })();
    match result {
        Ok(()) => {}
        Err(Close::Quiet(why)) => {
            tracing::debug!(%peer, "braid TCP store server: connection closed: {why}")
        }
        Err(Close::Warn(why)) => tracing::warn!(
            %peer,
            addr = %shared.addr,
            "braid TCP store server: closing a connection that broke the protocol: {why}"
        ),
    }
}

fn frame_close(shared: &Shared, e: FrameError) -> Close {
    if shared.stop.load(Ordering::SeqCst) {
        return Close::Quiet("server stopping".into());
    }
    match e {
        FrameError::Closed => Close::Quiet("client disconnected".into()),
        FrameError::Io(e) => Close::Warn(format!("reading a frame: {e}")),
        FrameError::Malformed(e) => Close::Warn(e.message().to_owned()),
    }
}

fn server_handshake(shared: &Shared, stream: &mut TcpStream) -> std::result::Result<(), Close> {
    let frame = read_frame(stream, MAX_HANDSHAKE_FRAME_LEN, Some(HANDSHAKE_TIMEOUT)).map_err(
        |e| match e {
            FrameError::Closed => Close::Quiet("closed before its hello".into()),
            other => frame_close(shared, other),
        },
    )?;
    let client_nonce = match decode_request(&frame) {
        Ok(Request::Hello { version, nonce }) if version == VERSION => nonce,
        Ok(Request::Hello { version, .. }) => {
            let msg = format!(
                "the client speaks store protocol version {version}, this server {VERSION}; \
                 run the same braid build on every rank"
            );
            reply_error(stream, ErrorCode::BadRequest, &msg);
            return Err(Close::Warn(msg));
        }
        Ok(other) => {
            let msg = format!("expected a hello, got {}", request_name(&other));
            reply_error(stream, ErrorCode::BadRequest, &msg);
            return Err(Close::Warn(msg));
        }
        Err(e) => {
            reply_error(stream, ErrorCode::BadRequest, e.message());
            return Err(Close::Warn(e.message().to_owned()));
        }
    };
    let server_nonce = random_nonce();
    let challenge = Response::Challenge {
        version: VERSION,
        nonce: server_nonce,
        auth_required: shared.token.is_some(),
    };
    send_response(stream, &challenge)?;
    let Some(token) = &shared.token else {
        return Ok(());
    };
    let frame = read_frame(stream, MAX_HANDSHAKE_FRAME_LEN, Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| frame_close(shared, e))?;
    match decode_request(&frame) {
        Ok(Request::Auth { mac })
            if verify_hmac(token, CLIENT_LABEL, &server_nonce, &client_nonce, &mac) =>
        {
            let mac = hmac(token, SERVER_LABEL, &client_nonce, &server_nonce);
            send_response(stream, &Response::Welcome { mac })
        }
        Ok(Request::Auth { .. }) => {
            reply_error(
                stream,
                ErrorCode::AuthFailed,
                "wrong job token: the proof does not match this server's BRAID_TOKEN",
            );
            Err(Close::Warn(
                "rejected a client with a wrong job token".into(),
            ))
        }
        Ok(other) => {
            let msg = format!(
                "this server requires a job token; expected its proof, got {}",
                request_name(&other)
            );
            reply_error(stream, ErrorCode::AuthFailed, &msg);
            Err(Close::Warn(msg))
        }
        Err(e) => {
            reply_error(stream, ErrorCode::BadRequest, e.message());
            Err(Close::Warn(e.message().to_owned()))
        }
    }
}

fn handle(
    shared: &Shared,
    stream: &TcpStream,
    req: Request,
) -> std::result::Result<Response, Close> {
    let table = &shared.table;
    Ok(match req {
        Request::Set { key, value } => match table.set(&key, &value) {
            Ok(()) => Response::Done,
            Err(e) => refused(&e),
        },
        Request::Get { key } => match table.get(&key) {
            Ok(v) => Response::Value(v),
            Err(e) => refused(&e),
        },
        Request::Add { key, delta } => match table.add_as(&ServerName, &key, delta) {
            Ok(n) => Response::Counter(n),
            Err(e) => refused(&e),
        },
        Request::Wait { keys, timeout_ms } => {
            let timeout = Duration::from_millis(timeout_ms).min(MAX_SERVER_WAIT);
            let deadline = Instant::now() + timeout;
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut last_check = Instant::now();
            let mut client_gone = false;
            let outcome = table.wait_until(&keys, deadline, LIVENESS_POLL, &mut || {
                if shared.stop.load(Ordering::SeqCst) {
                    return true;
                }
                if last_check.elapsed() >= LIVENESS_POLL {
                    last_check = Instant::now();
                    client_gone = !peer_alive(stream);
                }
                client_gone
            });
            match outcome {
                WaitOutcome::Ready => Response::Ready,
                WaitOutcome::Missing(m) => Response::Missing(m),
                WaitOutcome::Cancelled if client_gone => {
                    return Err(Close::Quiet("client left during a wait".into()))
                }
                WaitOutcome::Cancelled => Response::Error {
                    code: ErrorCode::ShuttingDown,
                    message: "the store server is stopping (rank 0 is shutting down)".into(),
                },
            }
        }
        Request::Hello { .. } | Request::Auth { .. } => {
            let msg = format!(
                "{} after the handshake is over; send one hello per connection",
                request_name(&req)
            );
            let mut s = stream;
            reply_error(&mut s, ErrorCode::BadRequest, &msg);
            return Err(Close::Warn(msg));
        }
    })
}

fn refused(e: &Error) -> Response {
    Response::Error {
        code: ErrorCode::Refused,
        message: e.message().to_owned(),
    }
}

/// Whether the peer is still connected (it has not closed its side).
fn peer_alive(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let alive = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    stream.set_nonblocking(false).is_ok() && alive
}

fn send_response(stream: &mut TcpStream, resp: &Response) -> std::result::Result<(), Close> {
    let bytes = encode_response(resp).map_err(|e| Close::Warn(e.to_string()))?;
    send(stream, &bytes).map_err(|e| Close::Quiet(format!("sending {}: {e}", response_name(resp))))
}

/// Best effort: tell the client why it is being dropped.
fn reply_error(stream: &mut impl Write, code: ErrorCode, message: &str) {
    let mut message = message.to_owned();
    message.truncate(super::protocol::MAX_MESSAGE_LEN.min(4096));
    while std::str::from_utf8(message.as_bytes()).is_err() {
        message.pop();
    }
    if let Ok(bytes) = encode_response(&Response::Error { code, message }) {
        let _ = stream.write_all(&bytes);
    }
}

fn send(stream: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}

enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    Io(io::Error),
    Malformed(Error),
}

/// Reads one whole frame (header included). The current read timeout applies
/// until the first byte; then `body_timeout` if given.
fn read_frame(
    stream: &mut TcpStream,
    max: usize,
    body_timeout: Option<Duration>,
) -> std::result::Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {got} of a frame header's 4 bytes"),
                )))
            }
            Ok(n) => {
                if got == 0 && body_timeout.is_some() {
                    stream
                        .set_read_timeout(body_timeout)
                        .map_err(FrameError::Io)?;
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = frame_body_len(header, max).map_err(FrameError::Malformed)?;
    // Grow with the data actually received rather than trusting the header.
    let mut frame = Vec::with_capacity(4 + len.min(64 << 10));
    frame.extend_from_slice(&header);
    Read::take(&mut *stream, len as u64)
        .read_to_end(&mut frame)
        .map_err(FrameError::Io)?;
    if frame.len() != 4 + len {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "truncated frame: connection closed after {} of {len} bytes",
                frame.len() - 4
            ),
        )));
    }
    Ok(frame)
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if let Err(e) = getrandom::getrandom(&mut n) {
        // Without OS randomness, fall back to a hash of time, pid and a counter:
        // still unique per connection, which is what replay protection needs.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        tracing::warn!("braid TCP store: no OS randomness ({e}); using a time-based nonce");
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(format!(
            "{:?} {} {}",
            std::time::SystemTime::now(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        n.copy_from_slice(&h.finalize());
    }
    n
}

fn mac_state(token: &[u8], label: &[u8], first: &[u8], second: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(token)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    m.update(label);
    m.update(first);
    m.update(second);
    m
}

fn hmac(token: &[u8], label: &[u8], first: &[u8], second: &[u8]) -> [u8; MAC_LEN] {
    mac_state(token, label, first, second)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time comparison of `mac` with the expected tag.
fn verify_hmac(token: &[u8], label: &[u8], first: &[u8], second: &[u8], mac: &[u8]) -> bool {
    mac_state(token, label, first, second)
        .verify_slice(mac)
        .is_ok()
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "a hello",
        Request::Auth { .. } => "a token proof",
        Request::Set { .. } => "a set",
        Request::Get { .. } => "a get",
        Request::Add { .. } => "an add",
        Request::Wait { .. } => "a wait",
    }
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Challenge { .. } => "a challenge",
        Response::Welcome { .. } => "a welcome",
        Response::Done => "done",
        Response::Value(_) => "a value",
        Response::Counter(_) => "a counter",
        Response::Ready => "ready",
        Response::Missing(_) => "missing keys",
        Response::Error { .. } => "an error",
    }
}
