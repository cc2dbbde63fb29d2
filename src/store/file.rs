//! [`FileStore`]: one file per key in a directory every rank can see
//! (`BRAID_STORE=file:///shared/dir`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{add_counter, check_key_for, check_keys_for, check_set, parse_counter};
use super::{wait_timeout_error, Backoff, Store};
use crate::{Error, ErrorKind, Result};

/// Escaped key names longer than this are replaced by a hash (file names are
/// limited to 255 bytes on most filesystems).
const MAX_ESCAPED_NAME: usize = 200;

/// Name of the lock file that serialises `add` across processes.
const LOCK_FILE: &str = ".lock";

/// A store kept as files in a shared directory: one file per key, so any
/// filesystem that all ranks mount works (NFS, Lustre, GPFS, a local disk for
/// one machine).
///
/// - A key's file is named `k-` plus the key with every byte outside
///   `[A-Za-z0-9._-]` written as `%XX`, or `h-` plus the key's SHA-256 when
///   that would be longer than 200 bytes; names never contain `/` and never
///   start with `.`.
/// - `set` writes a temporary file (`.tmp-...`) and renames it over the key's
///   file, so readers see the old value or the new one, never a partial one.
/// - `add` holds an exclusive `flock` on `<dir>/.lock` while it reads, adds
///   and renames, so it is atomic across processes and machines (Linux NFS
///   clients implement `flock` with NFS locks).
/// - `wait` polls for the files with a backoff from 1 ms to 100 ms. On NFS a
///   new file can take up to the client's attribute-cache time to appear on
///   other machines (mount with `lookupcache=positive` to shorten that).
///
/// The directory is not cleaned: use a fresh one per job.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    lock_timeout: Duration,
}

impl FileStore {
    /// A store in `dir`, created (with parents) if missing.
    pub fn new(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "file store: cannot create directory {}: {e}; give a directory that \
                     every rank can create and write (BRAID_STORE=file:///shared/path)",
                    dir.display()
                ),
            )
        })?;
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "file store: {} exists but is not a directory; give a directory path",
                    dir.display()
                ),
            ));
        }
        Ok(FileStore {
            dir,
            lock_timeout: Duration::from_secs(60),
        })
    }

    /// How long `add` may wait for the lock of another process before it fails
    /// (60 s unless changed).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `key`.
    fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(file_name_for(key))
    }

    fn io_error(&self, what: &str, key: &str, path: &Path, e: &io::Error) -> Error {
        Error::new(
            ErrorKind::Transport,
            format!(
                "{self}: cannot {what} key {key:?} ({}): {e}; check that the directory is \
                 mounted on this node, writable by this user and not full",
                path.display()
            ),
        )
    }

    /// Writes `value` to a temporary file and renames it over `key`'s file.
    fn write_atomic(&self, key: &str, value: &[u8]) -> Result<()> {
        let target = self.path_for(key);
        let tmp = self.dir.join(temp_name());
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(value)?;
            drop(f);
            fs::rename(&tmp, &target)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error("write", key, &target, &e)
        })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_for(key);
        match fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("read", key, &path, &e)),
        }
    }

    /// Whether `key`'s file exists. Opens it rather than `stat`ing it: on NFS
    /// an open revalidates the directory (close-to-open consistency).
    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path_for(key);
        match File::open(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error("look up", key, &path, &e)),
        }
    }

    /// Opens and exclusively locks the lock file; the lock ends when the
    /// returned file is dropped (closing it releases the `flock`).
    fn lock(&self, key: &str) -> Result<File> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| self.io_error("lock (for add)", key, &path, &e))?;
        let start = Instant::now();
        let deadline = start + self.lock_timeout;
        let mut backoff = Backoff::new(Duration::from_micros(50), Duration::from_millis(10));
        loop {
            // SAFETY: `file` owns a valid open descriptor for the whole call;
            // flock only reads the descriptor and takes no pointers.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(file);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN => {}
                _ => return Err(self.io_error("lock (for add)", key, &path, &e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{self}: add to key {key:?} waited {:.1} s for the lock {} held by \
                         another process; a process may hang while holding it: check the \
                         other ranks, or use a directory no other job uses",
                        start.elapsed().as_secs_f64(),
                        path.display()
                    ),
                ));
            }
            backoff.sleep_until_at_most(deadline);
        }
    }
}

impl fmt::Display for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file store at {}", self.dir.display())
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.dir).finish()
    }
}

impl Store for FileStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_set(self, key, value.len())?;
        self.write_atomic(key, value)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key_for(self, key)?;
        self.read(key)
    }

    fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()> {
        check_keys_for(self, keys)?;
        let start = Instant::now();
        let mut pending: Vec<&str> = keys.to_vec();
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(100));
        loop {
            let mut still = Vec::with_capacity(pending.len());
            for k in pending {
                if !self.exists(k)? {
                    still.push(k);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = pending.iter().map(|k| k.to_string()).collect();
                return Err(wait_timeout_error(
                    self,
                    &missing,
                    keys.len(),
                    start.elapsed(),
                ));
            }
            backoff.sleep_until_at_most(deadline);
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        check_key_for(self, key)?;
        let lock = self.lock(key)?;
        let current = parse_counter(self, key, self.read(key)?.as_deref())?;
        let new = add_counter(self, key, current, delta)?;
        self.write_atomic(key, new.to_string().as_bytes())?;
        drop(lock);
        Ok(new)
    }
}

/// `k-<escaped key>`, or `h-<sha256 hex>` for keys whose escaped form is long.
fn file_name_for(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 2);
    name.push_str("k-");
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
        if name.len() > MAX_ESCAPED_NAME {
            let digest = Sha256::digest(key.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            return format!("h-{hex}");
        }
    }
    name
}

/// A temporary name unique across threads, processes and machines.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SALT: OnceLock<u64> = OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without OS randomness, the pid and the time still separate processes.
        if getrandom::getrandom(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            b = t.to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".tmp-{}-{salt:016x}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_escaped_safely() {
        assert_eq!(file_name_for("rank/0/addr"), "k-rank%2F0%2Faddr");
        assert_eq!(file_name_for(".."), "k-..");
        assert_eq!(file_name_for("a%b"), "k-a%25b");
        assert_eq!(file_name_for("é"), "k-%C3%A9");
        let long = file_name_for(&"/".repeat(100));
        assert!(long.starts_with("h-") && long.len() == 66, "{long}");
        assert_ne!(
            file_name_for(&"/".repeat(100)),
            file_name_for(&"/".repeat(101))
        );
        // Escaped names are distinct for distinct keys.
        assert_ne!(file_name_for("a/b"), file_name_for("a%2Fb"));
    }
}
