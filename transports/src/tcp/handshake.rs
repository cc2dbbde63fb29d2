//! The connection handshake: every TCP connection proves that both ends
//! belong to the same job before a byte of data moves on it.
//!
//! ```text
//! connector                                   acceptor
//!   Hello { magic "BRDT", version, sockets_per_peer, job_id,
//!           rank, size, socket index, nonce_c }  ──►   checks magic, version, job id,
//!                                                       size, sockets, rank, socket index
//!   checks acceptor rank, mac_s  ◄──  Challenge { "BRDC", acceptor rank, nonce_s, mac_s }
//!   Proof { "BRDP", mac_c }  ──►                        checks mac_c (constant time),
//!                                                       takes the socket
//!   takes the socket  ◄──  Accepted { "BRDA" }
//! ```
//!
//! `mac_s = HMAC-SHA256(token, "braid-accept" ‖ version ‖ job_id ‖ acceptor
//! rank ‖ connector rank ‖ socket index ‖ nonce_c ‖ nonce_s)` and `mac_c =
//! HMAC-SHA256(token, "braid-connect" ‖ version ‖ job_id ‖ connector rank ‖
//! acceptor rank ‖ socket index ‖ nonce_s ‖ nonce_c)`. The token never
//! travels; each side proves it knows the token over the other side's fresh
//! nonce, so a recorded exchange cannot be replayed, and the two labels keep a
//! challenge from being reflected back as a proof. Frames have fixed sizes and
//! every field is little-endian.
//!
//! The last frame, [`Accepted`], tells the connector that the acceptor kept
//! the socket: a connector that gave up before it (and retries) never leaves
//! the two ends disagreeing on which socket carries the stream. After it, the
//! connector has no time limit but establishment's deadline.
//!
//! The decoders and [`validate_hello`] never panic, whatever the bytes; the
//! fuzz target `handshake` feeds them arbitrary input.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// First four bytes of a [`Hello`].
pub const HELLO_MAGIC: [u8; 4] = *b"BRDT";
/// First four bytes of a [`Challenge`].
pub const CHALLENGE_TAG: [u8; 4] = *b"BRDC";
/// First four bytes of a [`Proof`].
pub const PROOF_TAG: [u8; 4] = *b"BRDP";
/// The whole [`Accepted`] frame.
pub const ACCEPTED_TAG: [u8; 4] = *b"BRDA";
/// The version of this handshake and of the stream behind it.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of an encoded [`Hello`].
pub const HELLO_BYTES: usize = 60;
/// Bytes of an encoded [`Challenge`].
pub const CHALLENGE_BYTES: usize = 72;
/// Bytes of an encoded [`Proof`].
pub const PROOF_BYTES: usize = 36;
/// Bytes of an encoded [`Accepted`].
pub const ACCEPTED_BYTES: usize = 4;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a MAC.
pub const MAC_BYTES: usize = 32;

/// What the connector sends first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The connector's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The connector's sockets per peer; both ends must agree.
    pub sockets_per_peer: u16,
    /// The job both ends must belong to.
    pub job_id: u64,
    /// The connector's rank.
    pub rank: u32,
    /// Ranks in the connector's group; both ends must agree.
    pub size: u32,
    /// Which of the `sockets_per_peer` connections of the pair this is.
    pub socket_index: u16,
    /// The connector's fresh random nonce.
    pub nonce: [u8; NONCE_BYTES],
}

/// The acceptor's answer: its own nonce and its proof of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The acceptor's rank (the connector checks it reached the rank it meant).
    pub acceptor_rank: u32,
    /// The acceptor's fresh random nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// `mac_s` (see the module docs).
    pub mac: [u8; MAC_BYTES],
}

/// The connector's proof of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// `mac_c` (see the module docs).
    pub mac: [u8; MAC_BYTES],
}

/// The acceptor's last word: the proof held and the socket is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted;

/// Why a handshake frame was refused. The caller adds the address it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Fewer or more bytes than the frame has.
    #[error("a {frame} is {want} bytes, got {got}")]
    Length {
        /// Which frame.
        frame: &'static str,
        /// Bytes it has.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// The frame does not start with its tag: not a braid peer, or out of step.
    #[error("not a braid {frame}: it starts with {found:02x?} instead of {expected:?}")]
    Magic {
        /// Which frame.
        frame: &'static str,
        /// The first four bytes.
        found: [u8; 4],
        /// The tag expected.
        expected: &'static str,
    },
    /// Another protocol version.
    #[error("speaks braid protocol version {theirs}, this rank speaks {ours}; run the same braid version everywhere")]
    Version {
        /// The peer's version.
        theirs: u16,
        /// This side's version.
        ours: u16,
    },
    /// Another job.
    #[error("belongs to job {theirs:#018x}, this rank to job {ours:#018x}")]
    JobId {
        /// The peer's job id.
        theirs: u64,
        /// This side's job id.
        ours: u64,
    },
    /// A group of another size.
    #[error("rank {rank} is in a group of {theirs} ranks, this rank in a group of {ours}")]
    Size {
        /// The connector's rank.
        rank: u32,
        /// The connector's group size.
        theirs: u32,
        /// This side's group size.
        ours: usize,
    },
    /// Another number of sockets per peer.
    #[error("rank {rank} uses {theirs} sockets per peer, this rank {ours}; set BRAID_SOCKETS_PER_PEER alike on every rank")]
    Sockets {
        /// The connector's rank.
        rank: u32,
        /// The connector's sockets per peer.
        theirs: u16,
        /// This side's sockets per peer.
        ours: usize,
    },
    /// A rank this side does not expect a connection from.
    #[error(
        "claims rank {rank}, but rank {acceptor} of {size} accepts only ranks {acceptor}+1..{size}"
    )]
    UnexpectedRank {
        /// The rank claimed.
        rank: u32,
        /// This side's rank.
        acceptor: usize,
        /// Ranks in the group.
        size: usize,
    },
    /// A socket index out of range.
    #[error("rank {rank} sent socket index {index}, but there are {sockets} sockets per peer")]
    SocketIndex {
        /// The connector's rank.
        rank: u32,
        /// The index sent.
        index: u16,
        /// Sockets per peer.
        sockets: usize,
    },
    /// That rank's socket is already connected.
    #[error("rank {rank} socket {index} is already connected (a duplicate or an impostor)")]
    Duplicate {
        /// The connector's rank.
        rank: u32,
        /// The socket index.
        index: u16,
    },
    /// The acceptor is not the rank the connector meant to reach.
    #[error("answered as rank {theirs}, but rank {expected} was expected at this address (stale or mixed-up addresses)")]
    WrongAcceptor {
        /// The rank the acceptor claimed.
        theirs: u32,
        /// The rank meant.
        expected: usize,
    },
    /// The MAC does not prove the token.
    #[error("failed to prove the job token in its {frame} (a different BRAID_TOKEN, or not a rank of this job)")]
    BadMac {
        /// Which frame.
        frame: &'static str,
    },
}

fn check_len(bytes: &[u8], frame: &'static str, want: usize) -> Result<(), HandshakeError> {
    if bytes.len() != want {
        return Err(HandshakeError::Length {
            frame,
            want,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn check_tag(
    bytes: &[u8],
    frame: &'static str,
    tag: &[u8; 4],
    expected: &'static str,
) -> Result<(), HandshakeError> {
    let found = array::<4>(bytes, 0);
    if &found != tag {
        return Err(HandshakeError::Magic {
            frame,
            found,
            expected,
        });
    }
    Ok(())
}

/// `N` bytes of `bytes` at `at`, zeros where `bytes` ends early (the callers
/// check lengths first; this only keeps the decoders free of panics).
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at.saturating_add(N)) {
        out.copy_from_slice(src);
    }
    out
}

impl Hello {
    /// The frame on the wire.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.sockets_per_peer.to_le_bytes());
        b[8..16].copy_from_slice(&self.job_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.rank.to_le_bytes());
        b[20..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..26].copy_from_slice(&self.socket_index.to_le_bytes());
        // 26..28 reserved, zero.
        b[28..60].copy_from_slice(&self.nonce);
        b
    }

    /// Reads a frame: exactly [`HELLO_BYTES`] starting with [`HELLO_MAGIC`].
    /// The fields are checked by [`validate_hello`].
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        check_len(bytes, "hello", HELLO_BYTES)?;
        check_tag(bytes, "hello", &HELLO_MAGIC, "BRDT")?;
        Ok(Hello {
            version: u16::from_le_bytes(array(bytes, 4)),
            sockets_per_peer: u16::from_le_bytes(array(bytes, 6)),
            job_id: u64::from_le_bytes(array(bytes, 8)),
            rank: u32::from_le_bytes(array(bytes, 16)),
            size: u32::from_le_bytes(array(bytes, 20)),
            socket_index: u16::from_le_bytes(array(bytes, 24)),
            nonce: array(bytes, 28),
        })
    }
}

impl Challenge {
    /// The frame on the wire.
    pub fn encode(&self) -> [u8; CHALLENGE_BYTES] {
        let mut b = [0u8; CHALLENGE_BYTES];
        b[0..4].copy_from_slice(&CHALLENGE_TAG);
        b[4..8].copy_from_slice(&self.acceptor_rank.to_le_bytes());
        b[8..40].copy_from_slice(&self.nonce);
        b[40..72].copy_from_slice(&self.mac);
        b
    }

    /// Reads a frame: exactly [`CHALLENGE_BYTES`] starting with [`CHALLENGE_TAG`].
    pub fn decode(bytes: &[u8]) -> Result<Challenge, HandshakeError> {
        check_len(bytes, "challenge", CHALLENGE_BYTES)?;
        check_tag(bytes, "challenge", &CHALLENGE_TAG, "BRDC")?;
        Ok(Challenge {
            acceptor_rank: u32::from_le_bytes(array(bytes, 4)),
            nonce: array(bytes, 8),
            mac: array(bytes, 40),
        })
    }
}

impl Proof {
    /// The frame on the wire.
    pub fn encode(&self) -> [u8; PROOF_BYTES] {
        let mut b = [0u8; PROOF_BYTES];
        b[0..4].copy_from_slice(&PROOF_TAG);
        b[4..36].copy_from_slice(&self.mac);
        b
    }

    /// Reads a frame: exactly [`PROOF_BYTES`] starting with [`PROOF_TAG`].
    pub fn decode(bytes: &[u8]) -> Result<Proof, HandshakeError> {
        check_len(bytes, "proof", PROOF_BYTES)?;
        check_tag(bytes, "proof", &PROOF_TAG, "BRDP")?;
        Ok(Proof {
            mac: array(bytes, 4),
        })
    }
}

impl Accepted {
    /// The frame on the wire.
    pub fn encode(&self) -> [u8; ACCEPTED_BYTES] {
        ACCEPTED_TAG
    }

    /// Reads a frame: exactly [`ACCEPTED_TAG`].
    pub fn decode(bytes: &[u8]) -> Result<Accepted, HandshakeError> {
        check_len(bytes, "accepted", ACCEPTED_BYTES)?;
        check_tag(bytes, "accepted", &ACCEPTED_TAG, "BRDA")?;
        Ok(Accepted)
    }
}

/// What an acceptor expects of a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptorView {
    /// This job.
    pub job_id: u64,
    /// The acceptor's rank; it accepts connections from higher ranks only.
    pub rank: usize,
    /// Ranks in the group.
    pub size: usize,
    /// Sockets per peer.
    pub sockets_per_peer: usize,
}

/// Checks a hello against what the acceptor expects: version, job, group
/// size, sockets per peer, a rank above the acceptor's and in the group, a
/// socket index in range and not `connected` yet (`connected(rank, index)`).
pub fn validate_hello(
    hello: &Hello,
    view: &AcceptorView,
    connected: &dyn Fn(usize, usize) -> bool,
) -> Result<(), HandshakeError> {
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: hello.version,
            ours: PROTOCOL_VERSION,
        });
    }
    if hello.job_id != view.job_id {
        return Err(HandshakeError::JobId {
            theirs: hello.job_id,
            ours: view.job_id,
        });
    }
    if hello.size as usize != view.size {
        return Err(HandshakeError::Size {
            rank: hello.rank,
            theirs: hello.size,
            ours: view.size,
        });
    }
    let rank = hello.rank as usize;
    if rank <= view.rank || rank >= view.size {
        return Err(HandshakeError::UnexpectedRank {
            rank: hello.rank,
            acceptor: view.rank,
            size: view.size,
        });
    }
    if hello.sockets_per_peer as usize != view.sockets_per_peer {
        return Err(HandshakeError::Sockets {
            rank: hello.rank,
            theirs: hello.sockets_per_peer,
            ours: view.sockets_per_peer,
        });
    }
    if hello.socket_index as usize >= view.sockets_per_peer {
        return Err(HandshakeError::SocketIndex {
            rank: hello.rank,
            index: hello.socket_index,
            sockets: view.sockets_per_peer,
        });
    }
    if connected(rank, hello.socket_index as usize) {
        return Err(HandshakeError::Duplicate {
            rank: hello.rank,
            index: hello.socket_index,
        });
    }
    Ok(())
}

fn keyed(token: &[u8], label: &[u8]) -> Option<HmacSha256> {
    // HMAC takes keys of any length; the error case cannot happen, and is
    // treated as a failed proof rather than a panic.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(token).ok()?;
    mac.update(label);
    mac.update(&PROTOCOL_VERSION.to_le_bytes());
    Some(mac)
}

fn accept_mac(
    token: &[u8],
    hello: &Hello,
    acceptor_rank: u32,
    nonce_s: &[u8; NONCE_BYTES],
) -> Option<HmacSha256> {
    let mut mac = keyed(token, b"braid-accept")?;
    mac.update(&hello.job_id.to_le_bytes());
    mac.update(&acceptor_rank.to_le_bytes());
    mac.update(&hello.rank.to_le_bytes());
    mac.update(&hello.socket_index.to_le_bytes());
    mac.update(&hello.nonce);
    mac.update(nonce_s);
    Some(mac)
}

fn connect_mac(token: &[u8], hello: &Hello, challenge: &Challenge) -> Option<HmacSha256> {
    let mut mac = keyed(token, b"braid-connect")?;
    mac.update(&hello.job_id.to_le_bytes());
    mac.update(&hello.rank.to_le_bytes());
    mac.update(&challenge.acceptor_rank.to_le_bytes());
    mac.update(&hello.socket_index.to_le_bytes());
    mac.update(&challenge.nonce);
    mac.update(&hello.nonce);
    Some(mac)
}

fn finish(mac: Option<HmacSha256>) -> [u8; MAC_BYTES] {
    let mut out = [0u8; MAC_BYTES];
    if let Some(mac) = mac {
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// The acceptor's answer to a (validated) hello, over its fresh `nonce`.
pub fn make_challenge(
    token: &[u8],
    hello: &Hello,
    acceptor_rank: u32,
    nonce: [u8; NONCE_BYTES],
) -> Challenge {
    Challenge {
        acceptor_rank,
        nonce,
        mac: finish(accept_mac(token, hello, acceptor_rank, &nonce)),
    }
}

/// The connector's check of a challenge to its `hello`: the acceptor is rank
/// `expected_acceptor` and knows the token.
pub fn verify_challenge(
    token: &[u8],
    hello: &Hello,
    challenge: &Challenge,
    expected_acceptor: usize,
) -> Result<(), HandshakeError> {
    if challenge.acceptor_rank as usize != expected_acceptor {
        return Err(HandshakeError::WrongAcceptor {
            theirs: challenge.acceptor_rank,
            expected: expected_acceptor,
        });
    }
    let mac = accept_mac(token, hello, challenge.acceptor_rank, &challenge.nonce);
    match mac.map(|m| m.verify_slice(&challenge.mac)) {
        Some(Ok(())) => Ok(()),
        _ => Err(HandshakeError::BadMac { frame: "challenge" }),
    }
}

/// The connector's proof, once it has verified the challenge.
pub fn make_proof(token: &[u8], hello: &Hello, challenge: &Challenge) -> Proof {
    Proof {
        mac: finish(connect_mac(token, hello, challenge)),
    }
}

/// The acceptor's check of a proof (constant-time comparison).
pub fn verify_proof(
    token: &[u8],
    hello: &Hello,
    challenge: &Challenge,
    proof: &Proof,
) -> Result<(), HandshakeError> {
    match connect_mac(token, hello, challenge).map(|m| m.verify_slice(&proof.mac)) {
        Some(Ok(())) => Ok(()),
        _ => Err(HandshakeError::BadMac { frame: "proof" }),
    }
}

/// A fresh random nonce.
pub fn nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut n)
        .map_err(|e| std::io::Error::other(format!("no randomness for a nonce: {e}")))?;
    Ok(n)
}

fn fuzz_split(data: &[u8], n: usize) -> (Option<&[u8]>, &[u8]) {
    match data.get(..n) {
        Some(head) => (Some(head), &data[n..]),
        None => (None, &[]),
    }
}

/// Checks the handshake's decoding invariants on arbitrary bytes: decoders
/// return errors, never panic; a decoded frame re-encodes to itself; a hello
/// that validates meets every rule; a MAC verifies exactly when it is the
/// honest one. Input layout: `hello (60) ‖ challenge (72) ‖ proof (36) ‖
/// view (3) ‖ token (rest)`. Used by the `handshake` fuzz target and by the
/// test that replays its corpus; panics on a violated invariant.
#[doc(hidden)]
pub fn fuzz_invariants(data: &[u8]) {
    // The decoders on the whole input: errors, not panics; any success is
    // a frame that re-encodes to the same bytes (reserved bytes aside).
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }
    if let Ok(c) = Challenge::decode(data) {
        assert_eq!(&c.encode()[..], data);
    }
    if let Ok(p) = Proof::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(a) = Accepted::decode(data) {
        assert_eq!(&a.encode()[..], data);
    }

    let (hello, rest) = fuzz_split(data, HELLO_BYTES);
    let (challenge, rest) = fuzz_split(rest, CHALLENGE_BYTES);
    let (proof, rest) = fuzz_split(rest, PROOF_BYTES);
    let (view, token) = fuzz_split(rest, 3);
    let Some(Ok(h)) = hello.map(Hello::decode) else {
        return;
    };
    let view = view.unwrap_or(&[0, 2, 1]);
    let view = AcceptorView {
        job_id: if view[0] & 0x80 == 0 {
            h.job_id
        } else {
            !h.job_id
        },
        rank: (view[0] & 0x3f) as usize,
        size: view[1] as usize,
        sockets_per_peer: view[2] as usize,
    };
    let connected = |r: usize, i: usize| (r * 31 + i) % 5 == 4;
    match validate_hello(&h, &view, &connected) {
        Ok(()) => {
            let (r, i) = (h.rank as usize, h.socket_index as usize);
            assert_eq!(h.version, PROTOCOL_VERSION);
            assert_eq!(h.job_id, view.job_id);
            assert_eq!(h.size as usize, view.size);
            assert_eq!(h.sockets_per_peer as usize, view.sockets_per_peer);
            assert!(r > view.rank && r < view.size && i < view.sockets_per_peer);
            assert!(!connected(r, i));
        }
        Err(e) => {
            // Every refusal explains itself.
            assert!(!e.to_string().is_empty());
        }
    }

    // An honest challenge verifies; a fuzzed one exactly when its MAC is
    // the honest MAC for its nonce and rank.
    let honest = make_challenge(token, &h, view.rank as u32, h.nonce);
    assert_eq!(verify_challenge(token, &h, &honest, view.rank), Ok(()));
    let Some(Ok(c)) = challenge.map(Challenge::decode) else {
        return;
    };
    let expected = make_challenge(token, &h, c.acceptor_rank, c.nonce);
    assert_eq!(
        verify_challenge(token, &h, &c, c.acceptor_rank as usize).is_ok(),
        expected.mac == c.mac
    );
    let honest_proof = make_proof(token, &h, &c);
    assert_eq!(verify_proof(token, &h, &c, &honest_proof), Ok(()));
    if let Some(Ok(p)) = proof.map(Proof::decode) {
        assert_eq!(
            verify_proof(token, &h, &c, &p).is_ok(),
            p.mac == honest_proof.mac
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            sockets_per_peer: 2,
            job_id: 0x1234_5678_9abc_def0,
            rank: 3,
            size: 4,
            socket_index: 1,
            nonce: [7; 32],
        }
    }

    fn view() -> AcceptorView {
        AcceptorView {
            job_id: 0x1234_5678_9abc_def0,
            rank: 1,
            size: 4,
            sockets_per_peer: 2,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins the wire format: frames and MACs computed independently (Python's
    /// hmac module), also the seeds of the fuzz corpus.
    #[test]
    fn known_answer() {
        let h = Hello {
            version: 1,
            sockets_per_peer: 1,
            job_id: 0x0123_4567_89ab_cdef,
            rank: 1,
            size: 2,
            socket_index: 0,
            nonce: std::array::from_fn(|i| i as u8),
        };
        assert_eq!(
            hex(&h.encode()[..28]),
            "4252445401000100efcdab8967452301010000000200000000000000"
        );
        let token = b"braid fuzz token";
        let c = make_challenge(token, &h, 0, std::array::from_fn(|i| 100 + i as u8));
        assert_eq!(
            hex(&c.mac),
            "b6a2c754c613a03e849e544874a42a1f2ae10ea80f73274579714039e11f0fb3"
        );
        let p = make_proof(token, &h, &c);
        assert_eq!(
            hex(&p.mac),
            "961541bb4ef4d20d76feda97e64476f236540f96625ff03dca0f77903f470d1b"
        );
    }

    #[test]
    fn frames_round_trip() {
        let h = hello();
        assert_eq!(Hello::decode(&h.encode()), Ok(h.clone()));
        let c = make_challenge(b"token", &h, 1, [9; 32]);
        assert_eq!(Challenge::decode(&c.encode()), Ok(c.clone()));
        let p = make_proof(b"token", &h, &c);
        assert_eq!(Proof::decode(&p.encode()), Ok(p));
        assert_eq!(Accepted::decode(&Accepted.encode()), Ok(Accepted));
        assert!(Accepted::decode(b"BRDP").is_err() && Accepted::decode(b"BRD").is_err());
    }

    #[test]
    fn short_long_and_foreign_frames_are_refused() {
        let bytes = hello().encode();
        for n in [0, 1, 4, 59] {
            assert!(matches!(
                Hello::decode(&bytes[..n]),
                Err(HandshakeError::Length { want: 60, .. })
            ));
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(Hello::decode(&long).is_err());
        let mut http = bytes;
        http[..4].copy_from_slice(b"GET ");
        let e = Hello::decode(&http).unwrap_err();
        assert!(e.to_string().contains("not a braid hello"), "{e}");
        assert!(Challenge::decode(&[0; 72]).is_err());
        assert!(Proof::decode(&[0; 35]).is_err());
    }

    #[test]
    fn hellos_are_checked_field_by_field() {
        let none = |_: usize, _: usize| false;
        assert_eq!(validate_hello(&hello(), &view(), &none), Ok(()));
        type Change = Box<dyn Fn(&mut Hello)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|h| h.version = 9), "protocol version 9"),
            (Box::new(|h| h.job_id = 5), "job 0x0000000000000005"),
            (Box::new(|h| h.size = 5), "group of 5"),
            (Box::new(|h| h.rank = 1), "claims rank 1"),
            (Box::new(|h| h.rank = 0), "claims rank 0"),
            (Box::new(|h| h.rank = 4), "claims rank 4"),
            (Box::new(|h| h.sockets_per_peer = 3), "3 sockets per peer"),
            (Box::new(|h| h.socket_index = 2), "socket index 2"),
        ];
        for (change, says) in cases {
            let mut h = hello();
            change(&mut h);
            let e = validate_hello(&h, &view(), &none).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let taken = |r: usize, i: usize| r == 3 && i == 1;
        assert!(matches!(
            validate_hello(&hello(), &view(), &taken),
            Err(HandshakeError::Duplicate { rank: 3, index: 1 })
        ));
    }

    #[test]
    fn macs_prove_the_token_and_bind_the_exchange() {
        let h = hello();
        let c = make_challenge(b"token", &h, 1, [9; 32]);
        assert_eq!(verify_challenge(b"token", &h, &c, 1), Ok(()));
        assert!(matches!(
            verify_challenge(b"other", &h, &c, 1),
            Err(HandshakeError::BadMac { .. })
        ));
        assert!(matches!(
            verify_challenge(b"token", &h, &c, 2),
            Err(HandshakeError::WrongAcceptor { .. })
        ));
        // A challenge made for another hello (replayed) does not verify.
        let mut other = h.clone();
        other.nonce = [8; 32];
        assert!(verify_challenge(b"token", &other, &c, 1).is_err());

        let p = make_proof(b"token", &h, &c);
        assert_eq!(verify_proof(b"token", &h, &c, &p), Ok(()));
        assert!(verify_proof(b"tokeN", &h, &c, &p).is_err());
        let mut fresh = c.clone();
        fresh.nonce = [10; 32];
        assert!(verify_proof(b"token", &h, &fresh, &p).is_err());
        // The challenge's MAC is no proof (different labels).
        assert!(verify_proof(b"token", &h, &c, &Proof { mac: c.mac }).is_err());
        // The token itself never appears in a frame.
        let wire = [
            h.encode().to_vec(),
            c.encode().to_vec(),
            p.encode().to_vec(),
        ]
        .concat();
        assert!(!wire.windows(5).any(|w| w == b"token"));
    }
}
