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

use braid::store::protocol::{
    decode_request, decode_response, encode_request, encode_response, frame_body_len, MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fn check(frame: &[u8]) {
    if let Ok(req) = decode_request(frame) {
        let again = encode_request(&req).expect("a decoded request must encode");
        assert_eq!(again, frame, "request {req:?} re-encodes differently");
        assert_eq!(decode_request(&again).expect("re-decode"), req);
    }
    if let Ok(resp) = decode_response(frame) {
        let again = encode_response(&resp).expect("a decoded response must encode");
        assert_eq!(again, frame, "response {resp:?} re-encodes differently");
        assert_eq!(decode_response(&again).expect("re-decode"), resp);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(header) = data.first_chunk::<4>() {
        // Whatever the header says, checking it never panics.
        let _ = frame_body_len(*header, MAX_FRAME_LEN);
    }
    if !data.is_empty() && data.len() <= MAX_FRAME_LEN {
        let mut framed = Vec::with_capacity(4 + data.len());
        framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
        framed.extend_from_slice(data);
        check(&framed);
    }
});
