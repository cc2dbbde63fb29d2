//! # braid-transports
//!
//! The contract between braid's executor and the things that move bytes, and
//! the transports themselves, one folder each. A transport connects one rank
//! to its peers and moves bytes, nothing more: it knows no collectives.
//!
//! The contract is a set of per-peer byte streams, one per direction, driven by
//! the executor without blocking:
//! - [`Transport::send`] hands bytes for a peer over and says how many it took
//!   (possibly none while its buffers are full);
//! - [`Transport::recv`] *lends* received bytes to a sink closure, so that a
//!   receive-and-reduce reads straight out of the transport's buffer with no
//!   staging copy;
//! - [`Transport::wait`] sleeps until progress may be possible or a deadline
//!   passes: nothing waits forever.
//!
//! Errors name the peer ([`TransportError`]).

use std::time::Instant;

pub mod local;
pub mod mixed;
pub mod settings;
pub mod shape;
pub mod shm;
pub mod tcp;

/// Where the memory of a buffer lives; the executor tells transports so that a
/// GPU transport can copy device to device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Ordinary host memory.
    Host,
    /// Memory of the GPU with this ordinal.
    Device(u32),
}

/// A failure of the transport, always naming the peer involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer has gone away (its endpoint was dropped, its process died, or
    /// it closed the connection) while data was still expected.
    #[error("peer rank {peer} closed its connection (it exited, crashed or was dropped)")]
    PeerClosed {
        /// The peer.
        peer: usize,
    },
    /// The peer index is not in the group.
    #[error("peer rank {peer} does not exist in a group of {size}")]
    NoSuchPeer {
        /// The peer asked for.
        peer: usize,
        /// Ranks in the group.
        size: usize,
    },
    /// A failure that concerns no single peer: binding a listener, polling,
    /// establishing the group as a whole.
    #[error("transport setup failed: {reason}")]
    Setup {
        /// What went wrong and what to do.
        reason: String,
    },
    /// Anything else the operating system reported.
    #[error("transport failure with peer rank {peer}: {reason}")]
    Io {
        /// The peer.
        peer: usize,
        /// What went wrong.
        reason: String,
    },
}

/// Moves bytes between this rank and its peers. See the crate docs.
///
/// Every method returns at once except [`Transport::wait`], which returns at
/// the latest at its deadline.
pub trait Transport: Send {
    /// This rank.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn size(&self) -> usize;
    /// A short name for logs ("local", "tcp", ...).
    fn name(&self) -> &'static str;
    /// The class of link that reaches `peer` ("local", "shm", "tcp", ...):
    /// braid calibrates latency and bandwidth per class. The default is
    /// [`Transport::name`]; transports that route peers over different
    /// links (the mixed transport) say which one serves `peer`.
    fn link_kind(&self, peer: usize) -> &'static str {
        let _ = peer;
        self.name()
    }
    /// Where the buffers this transport moves may live.
    fn memory(&self) -> MemoryKind {
        MemoryKind::Host
    }
    /// Offers the concatenation of `parts` to the stream towards `peer`;
    /// returns how many bytes (a prefix) it took, 0 when its buffers are full.
    /// The next offer starts right after the bytes taken, from the same
    /// memory while a message lasts: a transport may take bytes only once
    /// its peer has read them in place. Parts that are separate in memory
    /// never split an element of the receiver's `granule`.
    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError>;
    /// Lends up to `max` bytes received from `peer` to `sink`, in one or more
    /// slices whose lengths are multiples of `granule` (the element size; the
    /// transport holds back a partial element). Returns the bytes lent; 0 when
    /// nothing is there yet.
    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError>;
    /// Receives up to `dst.len()` bytes from `peer` straight into `dst` (a
    /// plain copy, nothing to reduce, so partial elements are fine); returns
    /// the bytes written, 0 when nothing is there yet. Transports that can
    /// read into the caller's memory directly (TCP) skip their own buffer;
    /// the default copies what [`Transport::recv`] lends.
    fn recv_into(&mut self, peer: usize, dst: &mut [u8]) -> Result<usize, TransportError> {
        let mut at = 0usize;
        self.recv(peer, dst.len(), 1, &mut |b| {
            dst[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        })
    }
    /// Blocks until something may have changed (data arrived, space freed, a
    /// peer closed) or `deadline` passes, whichever is first.
    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError>;
    /// Watches for a change for a short, bounded while without reading the
    /// clock or sleeping; true if something may have changed. Lets a caller
    /// whose message is already on its way skip the clock read that a
    /// deadline for [`Transport::wait`] costs. The default returns false at
    /// once (the caller then waits).
    fn wait_briefly(&mut self) -> bool {
        false
    }
    /// Called when a call fails with messages unfinished: from now on the
    /// caller's buffers may change, so a transport that lets peers read
    /// them in place (shared-memory single copy) withdraws them, waiting for
    /// a read under way to end. The streams of those messages are broken
    /// afterwards. The default does nothing (transports that copy at once).
    fn abandon(&mut self) {}
}
