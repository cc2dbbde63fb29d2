//! Every `unsafe` of the shared-memory transport: POSIX shared-memory
//! segments and their mappings, the layout of the shared headers, the futex
//! calls, and the raw byte copies in and out of a ring. Everything exported
//! is safe to call; the single-producer single-consumer discipline of a ring
//! is enforced by ownership ([`Producer`] and [`Consumer`] are neither `Clone`
//! nor shared, and the connect protocol hands each role of a ring to exactly
//! one endpoint).

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Marks a ring or doorbell segment of this transport ("BRAIDSHM").
pub const MAGIC: u64 = 0x4252_4149_4453_484d;
/// Layout version of the headers below; an opener refuses any other.
pub const VERSION: u32 = 3;
/// Where a ring's data area starts in its segment (one page, so the data is
/// page-aligned and the header never shares a line with it).
pub const DATA_OFFSET: usize = 4096;

/// One cache line holding `T`, so that fields written by different processes
/// never share a line.
#[repr(C, align(64))]
pub struct Line<T>(pub T);

/// Identity and state of a ring, written by its two ends. Every field is an
/// atomic integer, so any bit pattern (a stale or garbage segment) is a valid
/// value: the opener reads it and refuses what does not match.
#[repr(C, align(64))]
pub struct RingMeta {
    /// [`MAGIC`], stored last (Release) by the creator once the rest is set.
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub src: AtomicU32,
    pub dst: AtomicU32,
    pub receiver_pid: AtomicU32,
    pub job_id: AtomicU64,
    pub ring_bytes: AtomicU64,
    pub receiver_start: AtomicU64,
    pub sender_pid: AtomicU32,
    /// Set (Release) by the sender once it has mapped the ring and stored its
    /// pid; the receiver then unlinks the name.
    pub sender_attached: AtomicU32,
    pub sender_start: AtomicU64,
    pub sender_closed: AtomicU32,
    pub receiver_closed: AtomicU32,
}

/// The header at the start of a ring segment (`src` → `dst`).
#[repr(C)]
pub struct RingHeader {
    pub meta: RingMeta,
    /// Bytes ever written, and a copy of the latest small write beside it;
    /// only the sender stores them.
    pub head: HeadLine,
    /// Bytes ever written that are in the ring's data area; only the sender
    /// stores it. Behind `head` while a small write is copied there after
    /// being published in [`HeadLine`].
    pub ring_head: Line<AtomicU64>,
    /// Bytes ever consumed; only the receiver stores it.
    pub tail: Line<AtomicU64>,
    /// The single-copy window the sender opens on a large message.
    pub window: Line<Window>,
    /// The receiver's side of the window.
    pub window_ack: Line<WindowAck>,
}

/// A large write is published in pieces of this many bytes.
const PUBLISH_PIECE: usize = 64 << 10;

/// Bytes a write of at most this many is also copied into the head's line.
pub const INLINE_BYTES: usize = 48;
const INLINE_WORDS: usize = INLINE_BYTES / 8;
/// An `inline_tag` while the inline bytes are being rewritten.
pub const INLINE_WRITING: u64 = u64::MAX;

/// The line a receiver polls. A small write (a message header with a few
/// elements) lands here whole, next to the count that publishes it, so the
/// receiver gets it with the one cache miss that tells it something came,
/// instead of a second, dependent miss on the ring's data line.
#[repr(C, align(64))]
pub struct HeadLine {
    /// Bytes ever written (Release): everything below is readable, from the
    /// inline copy or from the ring (up to `ring_head`).
    pub head: AtomicU64,
    /// `end << 8 | len`: the inline words hold the `len` stream bytes ending
    /// at `end`; [`INLINE_WRITING`] while they change (a seqlock: a reader
    /// checks the tag is unchanged after copying the words).
    pub inline_tag: AtomicU64,
    /// The latest small write's bytes, little-endian words.
    pub inline: [AtomicU64; INLINE_WORDS],
}

/// A large message the receiver copies straight out of the sender's memory
/// (`process_vm_readv`) instead of through the ring. Window bytes are
/// counted cumulatively over all windows of the ring: window `g` holds
/// bytes `start..end` of that count, byte `x` at `addr + (x - start)` in the
/// sender's address space, and comes in the stream after ring byte
/// `ring_pos`. Written by the sender only; `addr`, `start` and `ring_pos`
/// change only while the window is closed (a seqlock on `state`).
#[repr(C)]
pub struct Window {
    /// `2g + 1` while window `g` is open, even while closed.
    pub state: AtomicU64,
    pub ring_pos: AtomicU64,
    pub addr: AtomicU64,
    pub start: AtomicU64,
    /// Window bytes ever offered (grows while a window is open).
    pub end: AtomicU64,
    /// Set when the sender gives up on a message (its call failed): its
    /// memory may change from then on, so the receiver must not read it.
    pub revoked: AtomicU32,
    /// The sender's address of this ring's mapping, for the receiver's probe.
    pub sender_base: AtomicU64,
}

/// Written by the receiver only.
#[repr(C)]
pub struct WindowAck {
    /// Window bytes ever consumed (read and lent).
    pub done: AtomicU64,
    /// 1 while a read of the sender's memory is under way.
    pub reading: AtomicU32,
    /// Whether the receiver can and will read the sender's memory:
    /// 0 undecided, 1 yes, 2 no (the kernel refused, or it is switched off).
    pub enabled: AtomicU32,
}

/// The header of a rank's doorbell segment: the futex word its `wait` sleeps
/// on, rung by every peer that sends to it or frees space it waits for.
#[repr(C)]
pub struct BellHeader {
    pub meta: Line<BellMeta>,
    pub bell: Line<Bell>,
}

/// Identity of a doorbell segment.
#[repr(C)]
pub struct BellMeta {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub rank: AtomicU32,
    pub job_id: AtomicU64,
    /// Peers that have mapped this doorbell; the owner unlinks the name once
    /// all have.
    pub attached: AtomicU32,
    /// The owner's pid and start time: an opener refuses a doorbell whose
    /// owner is gone (a stale one).
    pub owner_pid: AtomicU32,
    pub owner_start: AtomicU64,
}

/// The futex word and the count of its sleepers.
#[repr(C)]
pub struct Bell {
    /// Bumped on every ring; the futex word.
    pub seq: AtomicU32,
    /// Threads sleeping (or about to) on `seq`; a ring skips the wake-up
    /// system call while it is 0.
    pub sleeping: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<HeadLine>() == 64);
const _: () = assert!(std::mem::size_of::<RingHeader>() <= DATA_OFFSET);
const _: () = assert!(std::mem::size_of::<BellHeader>() <= DATA_OFFSET);

impl Bell {
    /// Wakes the owner if it sleeps, after the caller published a change
    /// (a ring's head or tail, a window, a flag). A spinning owner watches
    /// those values themselves, so an awake owner costs nothing here but a
    /// read of `sleeping`, a line it rarely writes.
    ///
    /// Paired with the sleeper's `sleeping` increment, fence and second look
    /// at the values: either it sees the change or this sees it sleeping.
    pub fn ring(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(&self.seq);
        }
    }
}

/// A mapped POSIX shared-memory segment, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access
// to it goes through atomics or through the ring discipline of
// Producer/Consumer, which need `&mut self`.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only reach atomics.
unsafe impl Sync for Mapping {}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn map_fd(fd: libc::c_int, len: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh shared mapping of an open descriptor; the kernel picks
    // the address; the result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            // Populated now: a first touch of each ring page mid-stream would
            // cost a page fault per 4 KiB message slice (20 us per 64 KiB).
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and no longer needed: the mapping keeps the memory.
    unsafe { libc::close(fd) };
    if ptr == libc::MAP_FAILED {
        return Err(err);
    }
    Ok(Mapping {
        ptr: ptr.cast(),
        len,
    })
}

impl Mapping {
    /// Creates segment `name` of `len` bytes, zero-filled; fails with
    /// `AlreadyExists` when the name is taken.
    pub fn create(name: &str, len: usize) -> io::Result<Mapping> {
        let c = c_name(name)?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = unsafe {
            libc::shm_open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::mode_t,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the descriptor just opened.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: as above; the name is ours to remove again.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(c.as_ptr());
            }
            return Err(err);
        }
        // Reserve the memory now, so that a full /dev/shm is an error here
        // rather than a SIGBUS on first touch mid-stream. Filesystems without
        // fallocate keep the sparse segment.
        // SAFETY: `fd` is the descriptor just opened and sized.
        let rc = unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) };
        if rc == libc::ENOSPC || rc == libc::ENOMEM {
            // SAFETY: as above.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(c.as_ptr());
            }
            return Err(io::Error::from_raw_os_error(rc));
        }
        map_fd(fd, len).inspect_err(|_| unlink(name))
    }

    /// Opens existing segment `name`, refusing one shorter than `min_len`
    /// (`InvalidData`).
    pub fn open(name: &str, min_len: usize) -> io::Result<Mapping> {
        let c = c_name(name)?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is a writable stat.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: `fd` is ours.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        let len = st.st_size as usize;
        if len < min_len {
            // SAFETY: `fd` is ours.
            unsafe { libc::close(fd) };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {name} holds {len} bytes, expected at least {min_len}"),
            ));
        }
        map_fd(fd, len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The ring header at the start of the segment.
    pub fn ring_header(&self) -> &RingHeader {
        assert!(self.len >= DATA_OFFSET);
        // SAFETY: the mapping is page-aligned, at least DATA_OFFSET bytes
        // (>= size_of::<RingHeader>()), lives as long as `self`, and
        // RingHeader consists of atomics only, valid for any bit pattern and
        // meant for concurrent access.
        unsafe { &*(self.ptr as *const RingHeader) }
    }

    /// The doorbell header at the start of the segment.
    pub fn bell_header(&self) -> &BellHeader {
        assert!(self.len >= std::mem::size_of::<BellHeader>());
        // SAFETY: as for ring_header: aligned, long enough, atomics only.
        unsafe { &*(self.ptr as *const BellHeader) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in map_fd; nothing borrows
        // it any more (borrows are tied to `&self`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Removes segment `name` (ignoring a name already gone).
pub fn unlink(name: &str) {
    if let Ok(c) = c_name(name) {
        // SAFETY: `c` is a valid NUL-terminated string.
        unsafe { libc::shm_unlink(c.as_ptr()) };
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout` (spurious
/// returns are possible); true if the timeout ended it. Works across
/// processes (no FUTEX_PRIVATE_FLAG).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 (in shared memory); `ts` lives
    // across the call; FUTEX_WAIT only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

/// Wakes every thread sleeping on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Whether `pid` names a running (not zombie) process that started at
/// `start` (clock ticks since boot, field 22 of `/proc/<pid>/stat`; 0 skips
/// that comparison).
pub fn process_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for the process; it sends nothing.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match proc_stat(pid) {
        Some((state, started)) => {
            !matches!(state, 'Z' | 'X' | 'x') && (start == 0 || started == start)
        }
        // The entry is gone (dead), unless there is no /proc at all: then
        // trust kill.
        None => !std::path::Path::new("/proc/self").exists(),
    }
}

/// The state and start time of process `pid`.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 18 more to skip.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The writing end of a ring.
pub struct Producer {
    map: Mapping,
    cap: usize,
    /// The consumer's `tail` at the last look: reloaded (a cache miss, as
    /// the consumer wrote it) only when the space it leaves is too small.
    tail_seen: u64,
    /// This end's own `head`, kept here: the shared copy's line is the one
    /// the consumer polls, so reading it back would miss.
    head: u64,
}

/// The reading end of a ring.
pub struct Consumer {
    map: Mapping,
    cap: usize,
    /// For elements straddling the wrap point that are too large for the
    /// stack buffer.
    scratch: Vec<u8>,
    /// The last look found published bytes that are neither inline nor yet
    /// in the ring (the producer is copying them there): only then is
    /// `ring_head` worth watching.
    ring_lagging: std::cell::Cell<bool>,
}

/// What a consumer can read now (see `Consumer::ready`).
enum Ready {
    /// `len` bytes from `bytes[at..]`, copied out of the head's line.
    Inline {
        bytes: [u8; INLINE_BYTES],
        at: usize,
        len: usize,
    },
    /// `len` bytes in the ring's data area from the tail on.
    Ring(usize),
}

/// Validated ring geometry: the segment holds `DATA_OFFSET + cap` bytes and
/// `cap` is a power of two.
fn ring_cap(map: &Mapping) -> Option<usize> {
    let cap = map.ring_header().meta.ring_bytes.load(Ordering::Acquire) as usize;
    (cap.is_power_of_two() && map.len() >= DATA_OFFSET.checked_add(cap)?).then_some(cap)
}

impl Producer {
    /// The sending role of a ring; `None` if its recorded size does not fit
    /// the segment.
    pub fn new(map: Mapping) -> Option<Producer> {
        let cap = ring_cap(&map)?;
        let head = map.ring_header().head.head.load(Ordering::Acquire);
        let tail_seen = map.ring_header().tail.0.load(Ordering::Acquire);
        Some(Producer {
            map,
            cap,
            tail_seen,
            head,
        })
    }

    pub fn header(&self) -> &RingHeader {
        self.map.ring_header()
    }

    /// The address of this ring's mapping in this process.
    pub fn base(&self) -> u64 {
        self.map.base()
    }

    /// Copies as much of the concatenation of `parts` as fits; returns the
    /// bytes taken and publishes them (Release).
    pub fn push(&mut self, parts: &[&[u8]]) -> usize {
        let h = self.header();
        let head = self.head;
        let wanted: usize = parts.iter().map(|p| p.len()).sum();
        let mut tail = self.tail_seen;
        if self.cap - (head.wrapping_sub(tail) as usize) < wanted {
            tail = h.tail.0.load(Ordering::Acquire);
            self.tail_seen = tail;
        }
        let used = head.wrapping_sub(tail) as usize;
        if used >= self.cap {
            return 0;
        }
        let free = self.cap - used;
        if wanted > 0 && wanted <= INLINE_BYTES.min(free) {
            // Small and whole: publish it in the head's line first (what the
            // receiver polls), then copy it into the ring for a receiver that
            // is behind and reads the ring instead.
            let mut bytes = [0u8; INLINE_BYTES];
            let mut at = 0;
            for part in parts {
                bytes[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            let end = head.wrapping_add(wanted as u64);
            let line = &self.header().head;
            line.inline_tag.store(INLINE_WRITING, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
            for (word, b) in line.inline.iter().zip(bytes.chunks_exact(8)) {
                word.store(
                    u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                    Ordering::Relaxed,
                );
            }
            line.inline_tag
                .store(end << 8 | wanted as u64, Ordering::Release);
            line.head.store(end, Ordering::Release);
            self.head = end;
            self.copy_range(head, &[&bytes[..wanted]], 0, wanted);
            self.header().ring_head.0.store(end, Ordering::Release);
            return wanted;
        }
        // Published piece by piece: the consumer copies one piece out while
        // this copies the next in (one large copy in, then one out, would
        // take twice as long).
        let n = wanted.min(free);
        let mut done = 0;
        while done < n {
            let piece = (n - done).min(PUBLISH_PIECE);
            self.copy_range(head, parts, done, piece);
            done += piece;
            let end = head.wrapping_add(done as u64);
            // ring_head first: a receiver that sees `head` reads the ring.
            self.header().ring_head.0.store(end, Ordering::Release);
            self.header().head.head.store(end, Ordering::Release);
            self.head = end;
        }
        n
    }

    /// Bytes ever written.
    pub fn published(&self) -> u64 {
        self.head
    }

    /// Copies bytes `from..from + len` of the concatenation of `parts` (all
    /// there) into the ring at stream position `head + from`; nothing is
    /// published.
    fn copy_range(&mut self, head: u64, parts: &[&[u8]], from: usize, len: usize) {
        let mask = self.cap - 1;
        let (mut skip, mut n) = (from, 0usize);
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let mut src = &part[skip..part.len().min(skip + len - n)];
            skip = 0;
            while !src.is_empty() {
                let pos = (head as usize).wrapping_add(from + n) & mask;
                let chunk = src.len().min(self.cap - pos);
                // SAFETY: [pos, pos + chunk) lies in the data area (pos < cap,
                // chunk <= cap - pos, segment holds DATA_OFFSET + cap bytes)
                // and in the free part of the ring ([head, tail + cap)), which
                // the consumer does not read from the ring until `ring_head`
                // is published past it; only this Producer (one per ring)
                // writes there.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        self.map.ptr.add(DATA_OFFSET + pos),
                        chunk,
                    );
                }
                n += chunk;
                src = &src[chunk..];
            }
            if n == len {
                break;
            }
        }
    }
}

impl Consumer {
    /// The receiving role of a ring; `None` if its recorded size does not fit
    /// the segment.
    pub fn new(map: Mapping) -> Option<Consumer> {
        let cap = ring_cap(&map)?;
        Some(Consumer {
            map,
            cap,
            scratch: Vec::new(),
            ring_lagging: std::cell::Cell::new(false),
        })
    }

    pub fn header(&self) -> &RingHeader {
        self.map.ring_header()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes published and not yet consumed that `pop` can lend now.
    pub fn available(&self) -> usize {
        let tail = self.header().tail.0.load(Ordering::Relaxed);
        match self.ready(tail) {
            Ready::Inline { len, .. } | Ready::Ring(len) => len,
        }
    }

    /// What can be read from stream position `tail` on: the inline copy in
    /// the head's line when it holds everything published from `tail` (the
    /// usual case of a small message: no look at the ring's data), else
    /// what the ring's data area holds.
    fn ready(&self, tail: u64) -> Ready {
        let line = &self.header().head;
        let head = line.head.load(Ordering::Acquire);
        let pending = head.wrapping_sub(tail) as usize;
        if pending == 0 {
            return Ready::Ring(0);
        }
        let tag = line.inline_tag.load(Ordering::Acquire);
        let len = (tag & 0xff) as usize;
        if tag != INLINE_WRITING
            && len <= INLINE_BYTES
            && tag >> 8 == head & (u64::MAX >> 8)
            && pending <= len
        {
            let mut bytes = [0u8; INLINE_BYTES];
            for (word, b) in line.inline.iter().zip(bytes.chunks_exact_mut(8)) {
                b.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            // The seqlock's check: the words were not being rewritten.
            std::sync::atomic::fence(Ordering::Acquire);
            if line.inline_tag.load(Ordering::Relaxed) == tag {
                return Ready::Inline {
                    bytes,
                    at: len - pending,
                    len: pending,
                };
            }
        }
        let ring_head = self.header().ring_head.0.load(Ordering::Acquire);
        // Behind `tail` when inline bytes were read before their ring copy.
        let in_ring = (ring_head.wrapping_sub(tail) as i64).max(0) as usize;
        self.ring_lagging.set(in_ring < pending);
        Ready::Ring(in_ring)
    }

    /// The bytes at ring position `pos` (masked), `len` of them without
    /// wrapping.
    fn slice(&self, pos: usize, len: usize) -> &[u8] {
        assert!(pos + len <= self.cap);
        // SAFETY: in the data area (checked above); the caller only asks for
        // unconsumed bytes in the ring ([tail, ring_head)), which the
        // producer does not write until `tail` moves past them, and `tail`
        // only moves in `pop` after the borrow ends.
        unsafe { std::slice::from_raw_parts(self.map.ptr.add(DATA_OFFSET + pos), len) }
    }

    /// Whether the last look found bytes published but not yet readable
    /// (see `ring_lagging`).
    pub fn ring_lagging(&self) -> bool {
        self.ring_lagging.get()
    }

    /// Lends up to `max` published bytes, whole multiples of `granule`
    /// (>= 1), straight out of the ring; then frees them (Release). Returns
    /// the bytes lent.
    pub fn pop(&mut self, max: usize, granule: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let g = granule.max(1);
        let tail = self.header().tail.0.load(Ordering::Relaxed);
        let ready = self.ready(tail);
        let (Ready::Inline { len, .. } | Ready::Ring(len)) = ready;
        let mut want = len.min(max);
        want -= want % g;
        if want == 0 {
            return 0;
        }
        if let Ready::Inline { bytes, at, .. } = ready {
            sink(&bytes[at..at + want]);
            self.header()
                .tail
                .0
                .store(tail.wrapping_add(want as u64), Ordering::Release);
            return want;
        }
        let mask = self.cap - 1;
        let mut done = 0usize;
        let mut stack = [0u8; 256];
        while done < want {
            let pos = (tail as usize).wrapping_add(done) & mask;
            let contig = self.cap - pos;
            let remaining = want - done;
            if contig >= remaining {
                sink(self.slice(pos, remaining));
                done += remaining;
                continue;
            }
            let whole = contig - contig % g;
            if whole > 0 {
                sink(self.slice(pos, whole));
                done += whole;
            }
            let first = contig - whole;
            if first > 0 {
                // One element straddles the wrap point: join its two pieces.
                let mut heap = std::mem::take(&mut self.scratch);
                let buf: &mut [u8] = if g <= stack.len() {
                    &mut stack[..g]
                } else {
                    heap.resize(g, 0);
                    &mut heap[..g]
                };
                buf[..first].copy_from_slice(self.slice(pos + whole, first));
                buf[first..].copy_from_slice(self.slice(0, g - first));
                sink(buf);
                self.scratch = heap;
                done += g;
            }
        }
        self.header()
            .tail
            .0
            .store(tail.wrapping_add(want as u64), Ordering::Release);
        want
    }
}

impl Mapping {
    /// This mapping's address in this process (the probe target peers read).
    pub fn base(&self) -> u64 {
        self.ptr as u64
    }
}

/// Copies `dst.len()` bytes from address `addr` of process `pid` into `dst`
/// (cross-memory attach, one copy). Fails when the kernel refuses (no
/// permission to ptrace the peer, seccomp, no such process) or the range is
/// not mapped there.
pub fn read_process(pid: u32, addr: u64, dst: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: dst.len() - done,
        };
        // SAFETY: `local` describes the writable slice `dst[done..]`, which
        // the kernel fills and nothing else touches during the call; the
        // remote range is only read, in the other process, by the kernel,
        // which checks that it is mapped there (EFAULT otherwise).
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "process_vm_readv copied nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// CPUs online on this host (at least 1).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// CPU time this thread has used (for tests that check waiting sleeps).
#[cfg(test)]
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
