//! Building a communicator across processes: launcher variables, rendezvous
//! through a store, authenticated TCP connections.

use std::time::Instant;

use braid_transports::mixed::MixedTransport;
use braid_transports::shape::{LinkShape, ShapedTransport};
use braid_transports::shm::{self, ShmOptions};
use braid_transports::tcp::{self, JobAuth, TcpOptions};
use braid_transports::Transport;

use crate::launch::{self, LaunchInfo};
use crate::store::Store;
use crate::{Communicator, Config, Error, ErrorKind, Result};

/// Installs a log subscriber for `BRAID_DEBUG` (`info`, `debug`, `trace`, or
/// any `tracing` filter) unless the program already has one, the way
/// `NCCL_DEBUG=INFO` works. Called by [`Communicator::from_env`].
pub fn init_logging() {
    let Ok(level) = std::env::var("BRAID_DEBUG") else {
        return;
    };
    let filter = match level.to_ascii_lowercase().as_str() {
        "info" | "debug" | "trace" | "warn" | "error" => {
            format!(
                "braid={0},braid_transports={0},braid_topologies={0}",
                level.to_ascii_lowercase()
            )
        }
        _ => level,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn env_overrides() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("BRAID_"))
        .collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("no randomness for the job token: {e}"),
        )
    })?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which transports `BRAID_TRANSPORT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// Shared memory to the ranks on this host, TCP to the others (default).
    Auto,
    /// TCP to every rank.
    Tcp,
    /// Shared memory to every rank; all must be on this host.
    Shm,
}

/// `BRAID_TRANSPORT`: `auto` (the default), `tcp` or `shm`.
fn transport_choice() -> Result<Choice> {
    match std::env::var("BRAID_TRANSPORT").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Choice::Auto),
        Ok("tcp") => Ok(Choice::Tcp),
        Ok("shm") => Ok(Choice::Shm),
        Ok(other) => Err(Error::config(format!(
            "BRAID_TRANSPORT='{other}' is not a transport; valid: auto, tcp, shm"
        ))),
    }
}

/// This host's identity: `BRAID_HOST_ID` if set (to split or join ranks by
/// hand, e.g. containers that share /dev/shm), else the host name and kernel
/// boot id, so that two containers or VMs with the same host name are still
/// told apart.
fn host_identity() -> String {
    if let Ok(id) = std::env::var("BRAID_HOST_ID") {
        if !id.is_empty() {
            return format!("id:{id}");
        }
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{}/{}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    )
}

/// Splits the other ranks into those on this host and those elsewhere, by
/// host identities exchanged through the store.
fn split_by_host(
    rank: usize,
    size: usize,
    store: &dyn Store,
    deadline: Instant,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let me = host_identity();
    store.set(&format!("braid/host/{rank}"), me.as_bytes())?;
    let (mut here, mut elsewhere) = (Vec::new(), Vec::new());
    for peer in (0..size).filter(|&p| p != rank) {
        let theirs = store.get_wait(&format!("braid/host/{peer}"), deadline)?;
        if theirs == me.as_bytes() {
            here.push(peer);
        } else {
            elsewhere.push(peer);
        }
    }
    Ok((here, elsewhere))
}

/// Connects to `peers` (all on this host) through shared memory.
fn connect_shm(
    rank: usize,
    size: usize,
    peers: &[usize],
    job_id: u64,
    deadline: Instant,
) -> Result<shm::ShmTransport> {
    let options = ShmOptions::from_env().map_err(Error::config)?;
    let transport = shm::connect(rank, size, job_id, peers, &options, deadline).map_err(|e| {
        let kind = if Instant::now() >= deadline {
            ErrorKind::Timeout
        } else {
            ErrorKind::Transport
        };
        Error::new(
            kind,
            format!("{e}; check that every rank started and that /dev/shm has room"),
        )
    })?;
    tracing::info!(rank, size, peers = ?peers, ring_bytes = options.ring_bytes, "shm: connected");
    Ok(transport)
}

/// Connects to `tcp_peers` over TCP, exchanging addresses through `store`.
#[allow(clippy::too_many_arguments)]
fn connect_tcp(
    info: &LaunchInfo,
    store: &dyn Store,
    options: &TcpOptions,
    tcp_peers: &[usize],
    auth: &JobAuth,
    deadline: Instant,
) -> Result<tcp::TcpTransport> {
    let (rank, size) = (info.rank, info.size);
    let listener =
        tcp::listen(options).map_err(|e| Error::new(ErrorKind::Transport, e.to_string()))?;
    let mine: Vec<String> = listener.addresses().iter().map(|a| a.to_string()).collect();
    tracing::info!(rank, size, addresses = ?mine, sockets_per_peer = options.sockets_per_peer, "listening");
    store.set(&format!("braid/addr/{rank}"), mine.join(",").as_bytes())?;
    let mut peers = vec![Vec::new(); size];
    for &peer in tcp_peers {
        let raw = store.get_wait(&format!("braid/addr/{peer}"), deadline)?;
        let text = String::from_utf8_lossy(&raw);
        peers[peer] = text
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .collect::<std::result::Result<Vec<std::net::SocketAddr>, _>>()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transport,
                    format!("rank {peer} published unreadable addresses '{text}': {e}"),
                )
            })?;
    }
    let transport = listener
        .establish_with(rank, size, tcp_peers, &peers, auth, options, deadline)
        .map_err(|e| {
            let kind = if Instant::now() >= deadline { ErrorKind::Timeout } else { ErrorKind::Transport };
            Error::new(kind, format!("{e}; check that every rank started and that BRAID_SOCKET_IFNAME picks reachable interfaces"))
        })?;
    tracing::info!(rank, size, peers = ?tcp_peers, launcher = ?info.launcher, "tcp: connected");
    Ok(transport)
}

impl Communicator {
    /// A communicator for this process, from the launcher's environment:
    /// torchrun / Kubernetes / braid-run (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT`, ...), Slurm, Open MPI or PMI. Ranks meet through the
    /// TCP store served by rank 0 (or `BRAID_STORE=file:///path`), then talk
    /// through shared memory to the ranks on their host and over TCP to the
    /// others (`BRAID_TRANSPORT=auto`, the default; `tcp` or `shm` force one),
    /// each TCP connection proving the job token (`BRAID_TOKEN`, or one rank
    /// 0 makes and shares through the store).
    pub fn from_env() -> Result<Communicator> {
        init_logging();
        let config = Config::from_env()?;
        // Settings errors come before any rendezvous, so that every rank
        // reports them at once instead of some waiting for others that quit.
        transport_choice()?;
        TcpOptions::from_env().map_err(Error::config)?;
        ShmOptions::from_env().map_err(Error::config)?;
        LinkShape::from_env().map_err(Error::config)?;
        let info = launch::detect()?;
        for (k, v) in env_overrides() {
            if k != "BRAID_TOKEN" {
                tracing::info!(rank = info.rank, "{k}={v}");
            }
        }
        let store = launch::store_from_env(&info, config.timeout)?;
        Communicator::connect(&info, store.as_ref(), config)
    }

    /// Connects rank `info.rank` of `info.size` to its peers, exchanging
    /// host identities, addresses and the job's identity through `store`:
    /// shared memory to the ranks on this host, TCP to the others, as
    /// `BRAID_TRANSPORT` says (see [`Communicator::from_env`]).
    pub fn connect(info: &LaunchInfo, store: &dyn Store, config: Config) -> Result<Communicator> {
        let (rank, size) = (info.rank, info.size);
        let at = |e: Error| e.at("init", 0, rank, size);
        let deadline = Instant::now() + config.timeout;
        let options = TcpOptions::from_env().map_err(|e| at(Error::config(e)))?;
        let shape = LinkShape::from_env().map_err(|e| at(Error::config(e)))?;

        // The job's identity: a random id and, unless BRAID_TOKEN is set, a
        // random token, both made by rank 0 and shared through the store.
        let token = match std::env::var("BRAID_TOKEN") {
            Ok(t) if !t.is_empty() => t.into_bytes(),
            _ => {
                if rank == 0 {
                    store
                        .set(
                            "braid/token",
                            hex(&random_bytes::<32>().map_err(at)?).as_bytes(),
                        )
                        .map_err(at)?;
                }
                store.get_wait("braid/token", deadline).map_err(at)?
            }
        };
        if rank == 0 {
            store
                .set("braid/job", &random_bytes::<8>().map_err(at)?)
                .map_err(at)?;
        }
        let job = store.get_wait("braid/job", deadline).map_err(at)?;
        let job_id = u64::from_le_bytes(job.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
            at(Error::new(ErrorKind::Transport, "the store holds a malformed job id under braid/job; is another job using the same store?"))
        })?);

        let choice = transport_choice().map_err(at)?;
        let everyone: Vec<usize> = (0..size).filter(|&p| p != rank).collect();
        let (same_host, other_hosts) = split_by_host(rank, size, store, deadline).map_err(at)?;
        // Ranks that outnumber this host's CPUs: TCP yields while spinning
        // (shared memory decides the same for itself).
        let mut options = options;
        options.yield_while_spinning = same_host.len() + 1 > shm::online_cpus();
        let (here, elsewhere) = match choice {
            Choice::Tcp => (Vec::new(), everyone),
            _ => (same_host, other_hosts),
        };
        if choice == Choice::Shm && !elsewhere.is_empty() {
            return Err(at(Error::config(format!(
                "BRAID_TRANSPORT=shm needs every rank on this host, but ranks {elsewhere:?} run elsewhere; \
                 use BRAID_TRANSPORT=auto (shared memory on this host, TCP to the others) or tcp"
            ))));
        }
        tracing::info!(
            rank,
            size,
            "BRAID_TRANSPORT={}: shared memory to ranks {here:?}, TCP to ranks {elsewhere:?}",
            format!("{choice:?}").to_lowercase()
        );
        let auth = JobAuth { job_id, token };
        // A lone rank (or a forced shm group) takes one transport; mixed
        // groups route each peer to the transport that reaches it.
        let transport: Box<dyn Transport> = if elsewhere.is_empty()
            && (choice == Choice::Shm || !here.is_empty())
        {
            Box::new(connect_shm(rank, size, &here, job_id, deadline).map_err(at)?)
        } else if here.is_empty() {
            Box::new(connect_tcp(info, store, &options, &elsewhere, &auth, deadline).map_err(at)?)
        } else {
            let near = connect_shm(rank, size, &here, job_id, deadline).map_err(at)?;
            let far =
                connect_tcp(info, store, &options, &elsewhere, &auth, deadline).map_err(at)?;
            Box::new(
                MixedTransport::new(
                    rank,
                    size,
                    vec![(Box::new(near), here), (Box::new(far), elsewhere)],
                )
                .map_err(|e| at(Error::new(ErrorKind::Transport, e.to_string())))?,
            )
        };
        // BRAID_SHAPE: every link emulates a slower network (validation of
        // the cost model on networks this machine does not have).
        let transport: Box<dyn Transport> = match shape {
            Some(shape) => {
                let shaped = ShapedTransport::new(transport, shape);
                tracing::info!(
                    rank,
                    size,
                    queue_bytes = shaped.queue_bytes(),
                    "BRAID_SHAPE: every link shaped to {shape}"
                );
                Box::new(shaped)
            }
            None => transport,
        };
        tracing::info!(rank, size, transport = transport.name(), launcher = ?info.launcher, "communicator ready");
        Ok(Communicator::new(transport, config))
    }
}
