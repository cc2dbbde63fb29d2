//! `braid::Error`: what went wrong, where, and what to do about it.

use std::fmt;

/// The class of a failure, for programs that react to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument is wrong: buffer length, root, peer, counts. Fix the call.
    InvalidArgument,
    /// The call is valid but not supported as asked: an op the dtype lacks, a
    /// forced algorithm that does not implement the call.
    Unsupported,
    /// Configuration (environment variables, config struct) is invalid.
    Config,
    /// Ranks called different collectives or shapes (fingerprint mismatch).
    Mismatch,
    /// A peer did not answer before the deadline.
    Timeout,
    /// A peer went away (exited, crashed, dropped its communicator).
    PeerFailed,
    /// The transport failed otherwise.
    Transport,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "configuration error",
            ErrorKind::Mismatch => "collective mismatch",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PeerFailed => "peer failed",
            ErrorKind::Transport => "transport error",
        }
    }
}

/// Every braid call returns `Result<_, braid::Error>`.
///
/// The message says what went wrong, which collective (and its sequence number
/// on this communicator), which rank, which peers, and what to do:
///
/// ```text
/// braid error (invalid argument) in all_reduce #3 on rank 1 of 4: recv buffer has 5 elements, expected 8 (the send buffer's length); pass buffers of equal length
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    call: Option<&'static str>,
    seq: Option<u64>,
    rank: Option<usize>,
    nranks: Option<usize>,
    peers: Vec<usize>,
    message: String,
}

impl Error {
    /// An error of `kind` with a message saying what and what to do.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            call: None,
            seq: None,
            rank: None,
            nranks: None,
            peers: Vec::new(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Attaches the call, its sequence number and the rank (the executor and
    /// communicator do this so every error says where it happened).
    pub(crate) fn at(mut self, call: &'static str, seq: u64, rank: usize, nranks: usize) -> Self {
        self.call.get_or_insert(call);
        self.seq.get_or_insert(seq);
        self.rank.get_or_insert(rank);
        self.nranks.get_or_insert(nranks);
        self
    }

    pub(crate) fn with_peers(mut self, peers: Vec<usize>) -> Self {
        self.peers = peers;
        self
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The call that failed (`"all_reduce"`, `"gather_v"`, `"send"`, ...).
    pub fn call(&self) -> Option<&'static str> {
        self.call
    }
    /// The rank that reports the error.
    pub fn rank(&self) -> Option<usize> {
        self.rank
    }
    /// The collective's sequence number on this communicator (from 0).
    pub fn sequence(&self) -> Option<u64> {
        self.seq
    }
    /// The peers involved (for a timeout: those that did not answer).
    pub fn peers(&self) -> &[usize] {
        &self.peers
    }
    /// The message alone, without the where.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "braid error ({})", self.kind.label())?;
        if let Some(call) = self.call {
            write!(f, " in {call}")?;
            if let Some(seq) = self.seq {
                write!(f, " #{seq}")?;
            }
        }
        if let Some(rank) = self.rank {
            write!(f, " on rank {rank}")?;
            if let Some(n) = self.nranks {
                write!(f, " of {n}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_says_what_where_and_what_to_do() {
        let e = Error::invalid("recv buffer has 5 elements, expected 8; pass equal lengths").at(
            "all_reduce",
            3,
            1,
            4,
        );
        assert_eq!(
            e.to_string(),
            "braid error (invalid argument) in all_reduce #3 on rank 1 of 4: \
             recv buffer has 5 elements, expected 8; pass equal lengths"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.rank(), Some(1));
        assert_eq!(e.call(), Some("all_reduce"));
    }
}
