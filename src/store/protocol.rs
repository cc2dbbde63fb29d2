//! The TCP store's wire protocol: length-prefixed binary frames.
//!
//! # Frames
//!
//! ```text
//! frame    = length:u32 body            length = bytes in body, 1..=MAX_FRAME_LEN
//! body     = opcode:u8 fields...        integers big-endian, no padding
//! str      = len:u32 utf8-bytes         keys: 1..=MAX_KEY_LEN bytes
//! bytes    = len:u32 raw-bytes          values: 0..=MAX_VALUE_LEN bytes
//! keys     = count:u32 str*count        0..=MAX_WAIT_KEYS keys
//! ```
//!
//! | opcode | request | fields |
//! |---|---|---|
//! | `0x01` | `Hello` | `"BRST"` magic, version:u16, client nonce:\[u8; 32\] |
//! | `0x02` | `Auth` | mac:\[u8; 32\] |
//! | `0x10` | `Set` | key:str, value:bytes |
//! | `0x11` | `Get` | key:str |
//! | `0x12` | `Add` | key:str, delta:i64 |
//! | `0x13` | `Wait` | keys, timeout_ms:u64 |
//!
//! | opcode | response | fields |
//! |---|---|---|
//! | `0x81` | `Challenge` | version:u16, server nonce:\[u8; 32\], auth_required:u8 (0/1) |
//! | `0x82` | `Welcome` | mac:\[u8; 32\] |
//! | `0x90` | `Done` (to `Set`) | |
//! | `0x91` | `Value` (to `Get`) | present:u8 (0/1), then bytes if 1 |
//! | `0x92` | `Counter` (to `Add`) | value:i64 |
//! | `0x93` | `Ready` (to `Wait`) | |
//! | `0x94` | `Missing` (to `Wait`, at its timeout) | keys (at least one) |
//! | `0xA0` | `Error` | code:u8, message:str (≤ 64 KiB) |
//!
//! # Session
//!
//! 1. client → `Hello`; server → `Challenge` (a fresh random nonce).
//! 2. If the server has a token (`auth_required`), the client sends
//!    `Auth { mac: HMAC-SHA256(token, "braid-store/1 client" ‖ server nonce ‖ client nonce) }`;
//!    the server checks it in constant time and answers
//!    `Welcome { mac: HMAC-SHA256(token, "braid-store/1 server" ‖ client nonce ‖ server nonce) }`,
//!    which the client checks in turn: each side proves it knows the token
//!    without sending it, and nonces from both sides stop replays. A wrong MAC
//!    gets `Error { AuthFailed }` and the connection is closed. A client with a
//!    token refuses a server without one.
//! 3. Then requests, one at a time, each answered by one response. Frames
//!    before authentication are limited to [`MAX_HANDSHAKE_FRAME_LEN`] bytes.
//!
//! Decoding is strict (exact lengths, no trailing bytes, booleans 0 or 1,
//! limits checked), never panics, and for every frame it accepts, encoding
//! the result gives the same bytes back.

use crate::{Error, ErrorKind, Result};

use super::{check_key, MAX_KEY_LEN, MAX_VALUE_LEN};

/// Magic bytes at the start of `Hello`.
pub const MAGIC: [u8; 4] = *b"BRST";
/// Protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Largest frame body accepted after authentication.
pub const MAX_FRAME_LEN: usize = MAX_VALUE_LEN + (64 << 10);
/// Largest frame body accepted before authentication.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 256;
/// Most keys in one `Wait` (or `Missing`).
pub const MAX_WAIT_KEYS: usize = 1 << 16;
/// Longest error message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 << 10;
/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes in an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;

/// A client's message to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Opens the session.
    Hello {
        /// Protocol version of the client.
        version: u16,
        /// The client's random nonce.
        nonce: [u8; NONCE_LEN],
    },
    /// Proves the client knows the token.
    Auth {
        /// HMAC-SHA256 over the nonces (see the module docs).
        mac: [u8; MAC_LEN],
    },
    /// Stores a value.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Reads a value.
    Get {
        /// The key.
        key: String,
    },
    /// Adds to a counter.
    Add {
        /// The key.
        key: String,
        /// The amount added.
        delta: i64,
    },
    /// Waits on the server until all keys exist or the timeout passes.
    Wait {
        /// The keys.
        keys: Vec<String>,
        /// How long the server may wait, in milliseconds.
        timeout_ms: u64,
    },
}

/// Why the server refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame broke the protocol; the server closes the connection.
    BadRequest = 1,
    /// The client's token proof was wrong, or missing; the connection is closed.
    AuthFailed = 2,
    /// A valid request the store refuses (e.g. `Add` to a non-counter).
    Refused = 3,
    /// The server is stopping.
    ShuttingDown = 4,
}

impl ErrorCode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::AuthFailed,
            3 => ErrorCode::Refused,
            4 => ErrorCode::ShuttingDown,
            _ => return None,
        })
    }
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answer to `Hello`.
    Challenge {
        /// Protocol version of the server.
        version: u16,
        /// The server's random nonce.
        nonce: [u8; NONCE_LEN],
        /// Whether the client must send `Auth`.
        auth_required: bool,
    },
    /// Answer to a correct `Auth`: the server's own proof.
    Welcome {
        /// HMAC-SHA256 over the nonces (see the module docs).
        mac: [u8; MAC_LEN],
    },
    /// `Set` done.
    Done,
    /// `Get`'s value, `None` when absent.
    Value(Option<Vec<u8>>),
    /// `Add`'s new value.
    Counter(i64),
    /// `Wait`: every key exists.
    Ready,
    /// `Wait` timed out: these keys are missing.
    Missing(Vec<String>),
    /// The request failed.
    Error {
        /// Why.
        code: ErrorCode,
        /// What happened and what to do.
        message: String,
    },
}

mod op {
    pub const HELLO: u8 = 0x01;
    pub const AUTH: u8 = 0x02;
    pub const SET: u8 = 0x10;
    pub const GET: u8 = 0x11;
    pub const ADD: u8 = 0x12;
    pub const WAIT: u8 = 0x13;
    pub const CHALLENGE: u8 = 0x81;
    pub const WELCOME: u8 = 0x82;
    pub const DONE: u8 = 0x90;
    pub const VALUE: u8 = 0x91;
    pub const COUNTER: u8 = 0x92;
    pub const READY: u8 = 0x93;
    pub const MISSING: u8 = 0x94;
    pub const ERROR: u8 = 0xA0;
}

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Transport,
        format!(
            "malformed TCP store frame: {what}; the peer is not a braid store of the same \
             version, or the stream is corrupt"
        ),
    )
}

fn too_large(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!("TCP store request too large: {what}"),
    )
}

/// Encodes a request as a whole frame (length prefix included). Fails when a
/// field breaks a limit (key length, value size, number of keys, frame size).
pub fn encode_request(req: &Request) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    match req {
        Request::Hello { version, nonce } => {
            e.u8(op::HELLO);
            e.raw(&MAGIC);
            e.u16(*version);
            e.raw(nonce);
        }
        Request::Auth { mac } => {
            e.u8(op::AUTH);
            e.raw(mac);
        }
        Request::Set { key, value } => {
            e.u8(op::SET);
            e.key(key)?;
            e.value(value)?;
        }
        Request::Get { key } => {
            e.u8(op::GET);
            e.key(key)?;
        }
        Request::Add { key, delta } => {
            e.u8(op::ADD);
            e.key(key)?;
            e.u64(*delta as u64);
        }
        Request::Wait { keys, timeout_ms } => {
            e.u8(op::WAIT);
            e.keys(keys, 0)?;
            e.u64(*timeout_ms);
        }
    }
    e.finish()
}

/// Decodes one whole frame (length prefix included) into a request.
pub fn decode_request(frame: &[u8]) -> Result<Request> {
    let mut d = Decoder::frame(frame)?;
    let req = match d.u8()? {
        op::HELLO => {
            if d.array::<4>()? != MAGIC {
                return Err(malformed("Hello without the \"BRST\" magic"));
            }
            Request::Hello {
                version: d.u16()?,
                nonce: d.array()?,
            }
        }
        op::AUTH => Request::Auth { mac: d.array()? },
        op::SET => Request::Set {
            key: d.key()?,
            value: d.value()?,
        },
        op::GET => Request::Get { key: d.key()? },
        op::ADD => Request::Add {
            key: d.key()?,
            delta: d.u64()? as i64,
        },
        op::WAIT => Request::Wait {
            keys: d.keys(0)?,
            timeout_ms: d.u64()?,
        },
        other => return Err(malformed(format!("unknown request opcode 0x{other:02x}"))),
    };
    d.end()?;
    Ok(req)
}

/// Encodes a response as a whole frame (length prefix included). Fails when a
/// field breaks a limit.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    match resp {
        Response::Challenge {
            version,
            nonce,
            auth_required,
        } => {
            e.u8(op::CHALLENGE);
            e.u16(*version);
            e.raw(nonce);
            e.u8(u8::from(*auth_required));
        }
        Response::Welcome { mac } => {
            e.u8(op::WELCOME);
            e.raw(mac);
        }
        Response::Done => e.u8(op::DONE),
        Response::Value(v) => {
            e.u8(op::VALUE);
            match v {
                None => e.u8(0),
                Some(v) => {
                    e.u8(1);
                    e.value(v)?;
                }
            }
        }
        Response::Counter(n) => {
            e.u8(op::COUNTER);
            e.u64(*n as u64);
        }
        Response::Ready => e.u8(op::READY),
        Response::Missing(keys) => {
            e.u8(op::MISSING);
            e.keys(keys, 1)?;
        }
        Response::Error { code, message } => {
            e.u8(op::ERROR);
            e.u8(*code as u8);
            if message.len() > MAX_MESSAGE_LEN {
                return Err(too_large(format!(
                    "error message of {} bytes (limit {MAX_MESSAGE_LEN})",
                    message.len()
                )));
            }
            e.bytes(message.as_bytes());
        }
    }
    e.finish()
}

/// Decodes one whole frame (length prefix included) into a response.
pub fn decode_response(frame: &[u8]) -> Result<Response> {
    let mut d = Decoder::frame(frame)?;
    let resp = match d.u8()? {
        op::CHALLENGE => Response::Challenge {
            version: d.u16()?,
            nonce: d.array()?,
            auth_required: d.bool()?,
        },
        op::WELCOME => Response::Welcome { mac: d.array()? },
        op::DONE => Response::Done,
        op::VALUE => Response::Value(if d.bool()? { Some(d.value()?) } else { None }),
        op::COUNTER => Response::Counter(d.u64()? as i64),
        op::READY => Response::Ready,
        op::MISSING => Response::Missing(d.keys(1)?),
        op::ERROR => {
            let code = d.u8()?;
            let code = ErrorCode::from_u8(code)
                .ok_or_else(|| malformed(format!("unknown error code {code}")))?;
            let message = d.string(MAX_MESSAGE_LEN, "error message")?;
            Response::Error { code, message }
        }
        other => return Err(malformed(format!("unknown response opcode 0x{other:02x}"))),
    };
    d.end()?;
    Ok(resp)
}

/// The body length announced by a frame's 4-byte header, checked against
/// `max` (use [`MAX_HANDSHAKE_FRAME_LEN`] before authentication,
/// [`MAX_FRAME_LEN`] after).
pub fn frame_body_len(header: [u8; 4], max: usize) -> Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(malformed("empty frame (length 0)"));
    }
    if len > max {
        return Err(malformed(format!(
            "frame announces {len} bytes, more than the limit of {max}"
        )));
    }
    Ok(len)
}

struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn new() -> Self {
        Encoder {
            buf: vec![0, 0, 0, 0],
        }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Length-prefixed bytes; callers have checked the length fits.
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(b);
    }

    fn key(&mut self, key: &str) -> Result<()> {
        check_key(key).map_err(too_large)?;
        self.bytes(key.as_bytes());
        Ok(())
    }

    fn value(&mut self, v: &[u8]) -> Result<()> {
        if v.len() > MAX_VALUE_LEN {
            return Err(too_large(format!(
                "value of {} bytes (limit {MAX_VALUE_LEN})",
                v.len()
            )));
        }
        self.bytes(v);
        Ok(())
    }

    fn keys(&mut self, keys: &[String], min: usize) -> Result<()> {
        if keys.len() < min || keys.len() > MAX_WAIT_KEYS {
            return Err(too_large(format!(
                "{} keys in one wait (allowed {min} to {MAX_WAIT_KEYS})",
                keys.len()
            )));
        }
        self.buf
            .extend_from_slice(&(keys.len() as u32).to_be_bytes());
        for k in keys {
            self.key(k)?;
            if self.buf.len() - 4 > MAX_FRAME_LEN {
                break; // reported by finish()
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>> {
        let body = self.buf.len() - 4;
        if body > MAX_FRAME_LEN {
            return Err(too_large(format!(
                "frame of more than {body} bytes (limit {MAX_FRAME_LEN}); wait on fewer or \
                 shorter keys at a time"
            )));
        }
        self.buf[..4].copy_from_slice(&(body as u32).to_be_bytes());
        Ok(self.buf)
    }
}

struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Checks the length prefix against the frame and returns a decoder over the body.
    fn frame(frame: &'a [u8]) -> Result<Self> {
        let Some((header, body)) = frame.split_first_chunk::<4>() else {
            return Err(malformed(format!(
                "{} bytes, shorter than the 4-byte length prefix",
                frame.len()
            )));
        };
        let len = frame_body_len(*header, MAX_FRAME_LEN)?;
        if body.len() != len {
            return Err(malformed(format!(
                "length prefix says {len} bytes but {} follow",
                body.len()
            )));
        }
        Ok(Decoder { rest: body })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed(format!(
                "truncated {what}: needs {n} bytes, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, "fixed-size field")?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(format!("flag byte {b}, expected 0 or 1"))),
        }
    }

    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(malformed(format!(
                "{what} of {len} bytes, more than the limit of {max}"
            )));
        }
        self.take(len, what)
    }

    fn string(&mut self, max: usize, what: &str) -> Result<String> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|e| malformed(format!("{what} is not UTF-8: {e}")))
    }

    fn key(&mut self) -> Result<String> {
        let key = self.string(MAX_KEY_LEN, "key")?;
        check_key(&key).map_err(malformed)?;
        Ok(key)
    }

    fn value(&mut self) -> Result<Vec<u8>> {
        Ok(self.bytes(MAX_VALUE_LEN, "value")?.to_vec())
    }

    fn keys(&mut self, min: usize) -> Result<Vec<String>> {
        let n = self.u32()? as usize;
        if n < min || n > MAX_WAIT_KEYS {
            return Err(malformed(format!(
                "{n} keys (allowed {min} to {MAX_WAIT_KEYS})"
            )));
        }
        // Each key takes at least 5 bytes: never reserve more than the frame holds.
        let mut keys = Vec::with_capacity(n.min(self.rest.len() / 5));
        for _ in 0..n {
            keys.push(self.key()?);
        }
        Ok(keys)
    }

    fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} unexpected bytes after the last field",
                self.rest.len()
            )))
        }
    }
}

fn fuzz_check_frame(frame: &[u8]) {
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

/// Checks the protocol's decoding invariants on arbitrary bytes, whole and
/// behind a correct length prefix: decoding errors, never panics, and every
/// frame that decodes re-encodes to the very same bytes. Used by the
/// `store_protocol` fuzz target and by the test that replays its corpus;
/// panics on a violated invariant.
#[doc(hidden)]
pub fn fuzz_invariants(data: &[u8]) {
    fuzz_check_frame(data);
    if let Some(header) = data.first_chunk::<4>() {
        // Whatever the header says, checking it never panics.
        let _ = frame_body_len(*header, MAX_FRAME_LEN);
    }
    if !data.is_empty() && data.len() <= MAX_FRAME_LEN {
        let mut framed = Vec::with_capacity(4 + data.len());
        framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
        framed.extend_from_slice(data);
        fuzz_check_frame(&framed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                version: VERSION,
                nonce: [7; NONCE_LEN],
            },
            Request::Auth { mac: [9; MAC_LEN] },
            Request::Set {
                key: "rank/0".into(),
                value: vec![0, 255, 1],
            },
            Request::Set {
                key: "é".into(),
                value: vec![],
            },
            Request::Get { key: "k".into() },
            Request::Add {
                key: "c".into(),
                delta: -5,
            },
            Request::Wait {
                keys: vec!["a".into(), "b".into()],
                timeout_ms: 1234,
            },
            Request::Wait {
                keys: vec![],
                timeout_ms: 0,
            },
        ]
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::Challenge {
                version: 1,
                nonce: [1; NONCE_LEN],
                auth_required: true,
            },
            Response::Welcome { mac: [2; MAC_LEN] },
            Response::Done,
            Response::Value(None),
            Response::Value(Some(b"v".to_vec())),
            Response::Counter(i64::MIN),
            Response::Ready,
            Response::Missing(vec!["x".into()]),
            Response::Error {
                code: ErrorCode::Refused,
                message: "no".into(),
            },
        ]
    }

    #[test]
    fn round_trips() {
        for r in requests() {
            let f = encode_request(&r).unwrap();
            assert_eq!(decode_request(&f).unwrap(), r);
            // Every strict prefix is rejected, and so is a trailing byte.
            for cut in 0..f.len() {
                assert!(decode_request(&f[..cut]).is_err());
            }
            let mut longer = f.clone();
            longer.push(0);
            assert!(decode_request(&longer).is_err());
        }
        for r in responses() {
            let f = encode_response(&r).unwrap();
            assert_eq!(decode_response(&f).unwrap(), r);
            for cut in 0..f.len() {
                assert!(decode_response(&f[..cut]).is_err());
            }
        }
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let e = encode_request(&Request::Get { key: String::new() }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(encode_response(&Response::Missing(vec![])).is_err());
        let e =
            frame_body_len((MAX_FRAME_LEN as u32 + 1).to_be_bytes(), MAX_FRAME_LEN).unwrap_err();
        assert!(e.message().contains("limit"), "{e}");
        assert!(frame_body_len([0; 4], MAX_FRAME_LEN).is_err());
        // A Get whose key is empty, and one with invalid UTF-8.
        assert!(decode_request(&[0, 0, 0, 5, op::GET, 0, 0, 0, 0]).is_err());
        assert!(decode_request(&[0, 0, 0, 6, op::GET, 0, 0, 0, 1, 0xff]).is_err());
        // A Wait claiming 2^32-1 keys in a tiny frame.
        assert!(decode_request(&[0, 0, 0, 5, op::WAIT, 255, 255, 255, 255]).is_err());
        // A Value flag of 2.
        assert!(decode_response(&[0, 0, 0, 2, op::VALUE, 2]).is_err());
    }
}
