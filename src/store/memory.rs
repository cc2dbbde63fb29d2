//! [`MemoryStore`]: a store for ranks that are threads of one process (and the
//! table behind the TCP store's server).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{add_counter, check_key_for, check_keys_for, check_set, parse_counter};
use super::{wait_timeout_error, Store};
use crate::Result;

/// A store in this process's memory. Clones share one table, so hand a clone
/// to each thread.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    map: Mutex<HashMap<String, Vec<u8>>>,
    /// Notified on every change (and by [`MemoryStore::wake_all`]).
    changed: Condvar,
}

/// How a [`MemoryStore::wait_until`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// Every key exists.
    Ready,
    /// The deadline passed; these keys are missing.
    Missing(Vec<String>),
    /// `cancelled` returned true.
    Cancelled,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // No code panics while holding the lock, but a poisoned table is still
        // consistent (every update is a single insert), so keep serving it.
        self.inner
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Waits until all `keys` exist, `deadline` passes or `cancelled()` (called
    /// with the table locked, after every wake-up and at least every `poll`)
    /// returns true. Keys must have been checked.
    pub(crate) fn wait_until(
        &self,
        keys: &[&str],
        deadline: Instant,
        poll: Duration,
        cancelled: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome {
        let mut map = self.lock();
        loop {
            if keys.iter().all(|k| map.contains_key(*k)) {
                return WaitOutcome::Ready;
            }
            if cancelled() {
                return WaitOutcome::Cancelled;
            }
            let now = Instant::now();
            if now >= deadline {
                let missing = keys
                    .iter()
                    .filter(|k| !map.contains_key(**k))
                    .map(|k| k.to_string())
                    .collect();
                return WaitOutcome::Missing(missing);
            }
            let slice = (deadline - now).min(poll);
            map = self
                .inner
                .changed
                .wait_timeout(map, slice)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// `add` whose errors name `name` as the store (the TCP server's table
    /// speaks for the TCP store). The key must have been checked.
    pub(crate) fn add_as(&self, name: &dyn fmt::Display, key: &str, delta: i64) -> Result<i64> {
        let mut map = self.lock();
        let current = parse_counter(name, key, map.get(key).map(Vec::as_slice))?;
        let new = add_counter(name, key, current, delta)?;
        map.insert(key.to_owned(), new.to_string().into_bytes());
        drop(map);
        self.inner.changed.notify_all();
        Ok(new)
    }

    /// Wakes every waiter so that it re-checks its `cancelled` condition.
    /// Takes the lock first: a waiter that has just checked its condition is
    /// then already asleep on the condvar and cannot miss the wake-up.
    pub(crate) fn wake_all(&self) {
        let _map = self.lock();
        self.inner.changed.notify_all();
    }
}

impl fmt::Display for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory store")
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .finish()
    }
}

impl Store for MemoryStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_set(self, key, value.len())?;
        self.lock().insert(key.to_owned(), value.to_vec());
        self.inner.changed.notify_all();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key_for(self, key)?;
        Ok(self.lock().get(key).cloned())
    }

    fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()> {
        check_keys_for(self, keys)?;
        let start = Instant::now();
        match self.wait_until(keys, deadline, Duration::from_secs(3600), &mut || false) {
            WaitOutcome::Ready | WaitOutcome::Cancelled => Ok(()),
            WaitOutcome::Missing(missing) => Err(wait_timeout_error(
                self,
                &missing,
                keys.len(),
                start.elapsed(),
            )),
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        check_key_for(self, key)?;
        self.add_as(self, key, delta)
    }
}
