//! The TCP transport: ranks are processes, one full mesh of authenticated
//! TCP connections between them.
//!
//! Setting up takes two steps, around braid's rendezvous store:
//! 1. [`listen`] binds a listener on a free port of every address of the
//!    chosen interfaces ([`TcpOptions::interfaces`], `BRAID_SOCKET_IFNAME`);
//!    braid publishes [`TcpListenerSet::addresses`] through the store;
//! 2. [`TcpListenerSet::establish`] connects to every lower rank and accepts
//!    every higher one, `sockets_per_peer` sockets per pair, each proving the
//!    job token through the [`handshake`] before use.
//!
//! The resulting [`TcpTransport`] writes straight from the caller's slices
//! (`sendmsg`, no user-space copy), stripes a peer's stream over its sockets
//! in [`SEGMENT_BYTES`] segments, lends received bytes from per-socket buffers
//! in whole elements, and waits by busy-polling briefly ([`TcpOptions::spin`])
//! then sleeping in epoll. A peer that closes or resets its connections turns
//! into [`TransportError::PeerClosed`](crate::TransportError::PeerClosed) on
//! the next call that needs it.
//!
//! Each rank holds `(N - 1) * sockets_per_peer` sockets (plus one listener
//! per address while establishing): large groups need a matching open-file
//! limit (`ulimit -n`). Receive buffers start at 64 KiB per socket and grow
//! to 1 MiB only on sockets that stream.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use braid_transports::tcp::{self, JobAuth, TcpOptions};
//! # fn publish_and_collect(_: Vec<std::net::SocketAddr>) -> Vec<Vec<std::net::SocketAddr>> { vec![] }
//! let opts = TcpOptions::from_env()?;
//! let listener = tcp::listen(&opts).map_err(|e| e.to_string())?;
//! let peers = publish_and_collect(listener.addresses()); // through the store
//! let auth = JobAuth { job_id: 42, token: b"a secret shared by the job".to_vec() };
//! let deadline = Instant::now() + Duration::from_secs(60);
//! let transport = listener
//!     .establish(0, peers.len(), &peers, &auth, &opts, deadline)
//!     .map_err(|e| e.to_string())?;
//! # Ok::<(), String>(())
//! ```

mod establish;
pub mod handshake;
mod interfaces;
mod options;
mod transport;

#[cfg(test)]
mod tests;

pub use establish::{listen, listen_on, TcpListenerSet};
pub use options::{
    InterfaceFilter, InterfaceFilterError, TcpOptions, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKETS_PER_PEER, DEFAULT_SOCKET_BUFFER_BYTES, DEFAULT_SPIN, MAX_SOCKETS_PER_PEER,
};
pub use transport::{TcpTransport, SEGMENT_BYTES};

/// The identity every connection of a job proves: a job id sent in clear and
/// a secret token that never travels (each side proves it with an HMAC over
/// the other side's fresh nonce).
#[derive(Clone, PartialEq, Eq)]
pub struct JobAuth {
    /// Tells jobs that share hosts and ports apart.
    pub job_id: u64,
    /// The shared secret; an empty token proves nothing.
    pub token: Vec<u8>,
}

impl std::fmt::Debug for JobAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobAuth")
            .field("job_id", &format_args!("{:#018x}", self.job_id))
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .finish()
    }
}
