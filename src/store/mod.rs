//! Rendezvous stores: how ranks find each other before any transport exists.
//!
//! A [`Store`] is a small key-value table shared by all ranks of a job, with
//! four operations: `set`, `get`, `wait` (until keys exist, with a deadline)
//! and an atomic `add` on counters. Ranks publish their addresses under
//! agreed keys and wait for their peers' keys.
//!
//! | store | where its data lives | for |
//! |---|---|---|
//! | [`MemoryStore`] | this process | ranks that are threads of one process |
//! | [`FileStore`] | one file per key in a shared directory | `BRAID_STORE=file:///path` |
//! | [`TcpStore`] | a server thread inside rank 0 | the default (MASTER_ADDR:MASTER_PORT) |
//!
//! All three enforce the same limits (keys: 1 to [`MAX_KEY_LEN`] bytes of
//! UTF-8; values: at most [`MAX_VALUE_LEN`] bytes; at most
//! [`protocol::MAX_WAIT_KEYS`] keys per `wait`), so code tested on a
//! `MemoryStore` behaves the same over TCP (which also caps one request at
//! [`protocol::MAX_FRAME_LEN`] bytes, e.g. a wait on very many long keys).
//! Keys are never deleted.
//!
//! ```
//! use braid::store::{MemoryStore, Store};
//! use std::time::{Duration, Instant};
//!
//! let store = MemoryStore::new();
//! let peer = store.clone();
//! std::thread::spawn(move || peer.set("rank/1/addr", b"10.0.0.2:4000").unwrap());
//! let addr = store
//!     .get_wait("rank/1/addr", Instant::now() + Duration::from_secs(5))
//!     .unwrap();
//! assert_eq!(addr, b"10.0.0.2:4000");
//! assert_eq!(store.add("joined", 1).unwrap(), 1);
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Error, ErrorKind, Result};

mod file;
mod memory;
pub mod protocol;
mod tcp;

pub use file::FileStore;
pub use memory::MemoryStore;
pub use tcp::{TcpStore, TcpStoreServer};

/// Longest key, in bytes (keys are non-empty UTF-8 strings).
pub const MAX_KEY_LEN: usize = 4096;

/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 << 20;

/// A key-value table shared by the ranks of a job.
///
/// Every method returns a [`braid::Error`](crate::Error) that names the store,
/// the keys and what to do; nothing waits past its deadline.
pub trait Store: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;

    /// The value under `key`, or `None` when it was never set.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Returns once every key in `keys` exists. At `deadline` it fails with an
    /// [`ErrorKind::Timeout`] error listing the keys still missing.
    fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()>;

    /// Adds `delta` to the counter under `key` (absent counts as 0) and
    /// returns the new value, atomically with respect to every other client.
    /// The value is stored as decimal text, so `get` reads e.g. `b"42"`; `add`
    /// on a key holding anything else is an [`ErrorKind::InvalidArgument`]
    /// error, and so is overflowing `i64`.
    fn add(&self, key: &str, delta: i64) -> Result<i64>;

    /// Waits for `key` (until `deadline`), then returns its value.
    fn get_wait(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        self.wait(&[key], deadline)?;
        self.get(key)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Transport,
                format!(
                    "store: key {key:?} existed a moment ago but now reads as absent; \
                     keys are never deleted, so the store itself is inconsistent \
                     (was a file store's directory cleaned?)"
                ),
            )
        })
    }
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn set(&self, key: &str, value: &[u8]) -> Result<()> {
                (**self).set(key, value)
            }
            fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
                (**self).get(key)
            }
            fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()> {
                (**self).wait(keys, deadline)
            }
            fn add(&self, key: &str, delta: i64) -> Result<i64> {
                (**self).add(key, delta)
            }
            fn get_wait(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
                (**self).get_wait(key, deadline)
            }
        }
    )*};
}

forward_store!(Box<S>, Arc<S>, &S);

/// Checks a key against the limits every store shares; the message says what
/// is wrong (the caller adds which store).
pub(crate) fn check_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty; use a non-empty name such as \"rank/0/addr\"".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key {:?}... is {} bytes long, more than the limit of {MAX_KEY_LEN}; use a shorter key",
            truncate(key, 40),
            key.len()
        ));
    }
    Ok(())
}

/// Checks a value's length against [`MAX_VALUE_LEN`].
pub(crate) fn check_value(key: &str, len: usize) -> std::result::Result<(), String> {
    if len > MAX_VALUE_LEN {
        return Err(format!(
            "value for key {key:?} is {len} bytes, more than the limit of {MAX_VALUE_LEN} \
             (64 MiB); stores are for small rendezvous data: exchange bulk data over a communicator"
        ));
    }
    Ok(())
}

/// Checks key and value, returning an `InvalidArgument` error that names `store`.
pub(crate) fn check_set(store: &dyn std::fmt::Display, key: &str, value_len: usize) -> Result<()> {
    check_key(key)
        .and_then(|()| check_value(key, value_len))
        .map_err(|m| Error::new(ErrorKind::InvalidArgument, format!("{store}: {m}")))
}

/// Checks one key, returning an `InvalidArgument` error that names `store`.
pub(crate) fn check_key_for(store: &dyn std::fmt::Display, key: &str) -> Result<()> {
    check_key(key).map_err(|m| Error::new(ErrorKind::InvalidArgument, format!("{store}: {m}")))
}

/// Checks every key of a `wait`, and their number (at most
/// [`protocol::MAX_WAIT_KEYS`]).
pub(crate) fn check_keys_for(store: &dyn std::fmt::Display, keys: &[&str]) -> Result<()> {
    if keys.len() > protocol::MAX_WAIT_KEYS {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{store}: a wait for {} keys is more than the limit of {}; wait in batches",
                keys.len(),
                protocol::MAX_WAIT_KEYS
            ),
        ));
    }
    keys.iter().try_for_each(|k| check_key_for(store, k))
}

/// The counter stored under `key`: absent is 0, otherwise decimal text.
pub(crate) fn parse_counter(
    store: &dyn std::fmt::Display,
    key: &str,
    value: Option<&[u8]>,
) -> Result<i64> {
    let Some(bytes) = value else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{store}: cannot add to key {key:?}: it holds {} bytes that are not a \
                     decimal integer ({}); add only to keys used as counters",
                    bytes.len(),
                    preview(bytes)
                ),
            )
        })
}

/// `current + delta`, or an `InvalidArgument` error on overflow.
pub(crate) fn add_counter(
    store: &dyn std::fmt::Display,
    key: &str,
    current: i64,
    delta: i64,
) -> Result<i64> {
    current.checked_add(delta).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{store}: adding {delta} to counter {key:?} (now {current}) overflows i64; \
                 the counter keeps its value"
            ),
        )
    })
}

/// The `Timeout` error of a `wait`: how long, which keys are missing, what to do.
pub(crate) fn wait_timeout_error(
    store: &dyn std::fmt::Display,
    missing: &[String],
    total: usize,
    waited: Duration,
) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "{store}: timed out after {:.3} s waiting for {} of {total} key(s): {}; the ranks \
             that set them have not done so: check that they are running and did not fail, \
             or allow a longer timeout (BRAID_TIMEOUT)",
            waited.as_secs_f64(),
            missing.len(),
            list_keys(missing)
        ),
    )
}

/// `"a", "b", "c" and 7 more`: keys quoted, at most 16 listed.
pub(crate) fn list_keys(keys: &[String]) -> String {
    const SHOWN: usize = 16;
    let mut out = String::new();
    for (i, k) in keys.iter().take(SHOWN).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:?}", truncate(k, 120));
    }
    if keys.len() > SHOWN {
        let _ = write!(out, " and {} more", keys.len() - SHOWN);
    }
    out
}

/// A short printable preview of a value for messages.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(32)];
    let mut s = format!("{:?}", String::from_utf8_lossy(head));
    if bytes.len() > head.len() {
        s.push_str("...");
    }
    s
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Sleeps that start short and double up to `max`, never past a deadline.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// Sleeps for the next interval, cut short at `deadline`.
    pub(crate) fn sleep_until_at_most(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(self.next.min(left));
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_listed() {
        assert!(check_key("").unwrap_err().contains("empty"));
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1))
            .unwrap_err()
            .contains("limit of 4096"));
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let l = list_keys(&keys);
        assert!(
            l.starts_with("\"k0\", \"k1\"") && l.ends_with("and 4 more"),
            "{l}"
        );
    }

    #[test]
    fn counters_parse_or_say_why_not() {
        let s = &"test store";
        assert_eq!(parse_counter(s, "c", None).unwrap(), 0);
        assert_eq!(parse_counter(s, "c", Some(b"-17")).unwrap(), -17);
        let e = parse_counter(s, "c", Some(b"abc")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("not a decimal integer"), "{e}");
        let e = add_counter(s, "c", i64::MAX, 1).unwrap_err();
        assert!(e.message().contains("overflows"), "{e}");
    }
}
