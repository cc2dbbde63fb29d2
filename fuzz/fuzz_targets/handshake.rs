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

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| braid_transports::tcp::handshake::fuzz_invariants(data));
