//! Arbitrary bytes fed to the TCP store's frame decoders
//! (`braid::store::protocol`). Decoding must return an error, never panic,
//! and be exact: every frame that decodes re-encodes to the very same bytes,
//! which decode to the same value again.
//!
//! The input is tried whole as a request and as a response, and also with a
//! correct length prefix put in front of it (so that the fuzzer explores
//! bodies without having to guess lengths).
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run store_protocol -- -max_total_time=180`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| braid::store::protocol::fuzz_invariants(data));
