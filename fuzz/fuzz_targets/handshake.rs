//! Arbitrary bytes fed to the TCP handshake's decoders (hello, challenge,
//! proof, accepted) and to the acceptor's hello validation and MAC checks. They must
//! return errors, never panic, and agree with each other: a hello that
//! validates meets every rule, an encoded frame decodes to itself, and a MAC
//! verifies exactly when it is the honest one.
//!
//! Input layout (any bytes are accepted; missing parts are skipped):
//! `hello (60) ‖ challenge (72) ‖ proof (36) ‖ view (3) ‖ token (rest)`,
//! where the view bytes pick the acceptor's rank, group size and sockets per
//! peer (and, with the top bit of the first, another job id).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run handshake -- -max_total_time=180`
#![no_main]

use braid_transports::tcp::handshake::{
    make_challenge, make_proof, validate_hello, verify_challenge, verify_proof, Accepted,
    AcceptorView, Challenge, Hello, Proof, CHALLENGE_BYTES, HELLO_BYTES, PROOF_BYTES,
    PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8], n: usize) -> (Option<&[u8]>, &[u8]) {
    match data.get(..n) {
        Some(head) => (Some(head), &data[n..]),
        None => (None, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
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

    let (hello, rest) = split(data, HELLO_BYTES);
    let (challenge, rest) = split(rest, CHALLENGE_BYTES);
    let (proof, rest) = split(rest, PROOF_BYTES);
    let (view, token) = split(rest, 3);
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
});
