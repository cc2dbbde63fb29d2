//! Tests of the shared-memory transport. Every wait has a deadline.

use super::*;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

const CONNECT: Duration = Duration::from_secs(20);

/// A job id no other test (or earlier run) uses.
fn job() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// A ring of `ring` bytes; offers of 1 KiB and more go by single copy, so
/// the stream tests mix ring bytes and windows in every way.
fn small(ring: usize) -> ShmOptions {
    ShmOptions {
        ring_bytes: ring,
        spin: Some(Duration::from_micros(20)),
        single_copy_min: Some(1024),
    }
}

/// A ring of `ring` bytes and no single copy: every byte through the ring.
fn rings(ring: usize) -> ShmOptions {
    ShmOptions {
        single_copy_min: None,
        ..small(ring)
    }
}

/// Segments of `job` still in /dev/shm.
fn leftovers(job_id: u64) -> Vec<String> {
    let prefix = format!("braid-{job_id:016x}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// `n` endpoints of one job, every rank connected to every other, each
/// connecting from its own thread.
fn group(n: usize, job_id: u64, opts: &ShmOptions) -> Vec<ShmTransport> {
    let deadline = Instant::now() + CONNECT;
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let opts = opts.clone();
            std::thread::spawn(move || {
                let peers: Vec<usize> = (0..n).filter(|&p| p != r).collect();
                connect(r, n, job_id, &peers, &opts, deadline).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The bytes of stream `src → dst`.
fn pattern(src: usize, dst: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((k.wrapping_mul(31) ^ (k >> 9)) + src * 7 + dst * 13) as u8)
        .collect()
}

struct Out {
    peer: usize,
    data: Vec<u8>,
    sent: usize,
}

struct In {
    peer: usize,
    expect: Vec<u8>,
    got: usize,
    /// Leading bytes received one at a time, so that later elements are not
    /// aligned with the ring and straddle its wrap point.
    pre: usize,
    granule: usize,
}

/// Odd write sizes, cycled.
const CHUNKS: [usize; 6] = [1, 7, 4093, 65_537, 13, 30_011];

fn pump(ep: &mut ShmTransport, outs: &mut [Out], ins: &mut [In], deadline: Instant) {
    let mut step = 0usize;
    loop {
        let mut progress = false;
        let mut all = true;
        for o in outs.iter_mut() {
            if o.sent == o.data.len() {
                continue;
            }
            all = false;
            step += 1;
            let end = (o.sent + CHUNKS[step % CHUNKS.len()]).min(o.data.len());
            let mid = (o.sent + end) / 2;
            let took = ep
                .send(o.peer, &[&o.data[o.sent..mid], &o.data[mid..end]])
                .unwrap();
            assert!(took <= end - o.sent);
            o.sent += took;
            progress |= took > 0;
        }
        for i in ins.iter_mut() {
            if i.got == i.expect.len() {
                continue;
            }
            all = false;
            let (g, max) = if i.got < i.pre {
                (1, i.pre - i.got)
            } else {
                (i.granule, 10_007)
            };
            let mut pos = i.got;
            let expect = &i.expect;
            let n = ep
                .recv(i.peer, max, g, &mut |b| {
                    assert_eq!(b.len() % g, 0, "a partial element was lent");
                    assert!(b == &expect[pos..pos + b.len()], "corrupt bytes at {pos}");
                    pos += b.len();
                })
                .unwrap();
            assert_eq!(pos, i.got + n);
            assert!(n <= max);
            i.got = pos;
            progress |= n > 0;
        }
        if all {
            return;
        }
        if !progress {
            let now = Instant::now();
            assert!(now < deadline, "rank {} stalled", ep.rank());
            ep.wait(deadline.min(now + Duration::from_millis(50)))
                .unwrap();
        }
    }
}

/// Rank 0 (`a`, from a thread of its own) streams `total` pattern bytes to
/// rank 1 (`b`), which takes `pre` bytes one at a time, then elements of
/// `granule` bytes, checking every byte; returns `a` once done.
fn one_way(
    mut a: ShmTransport,
    b: &mut ShmTransport,
    total: usize,
    pre: usize,
    granule: usize,
) -> ShmTransport {
    let deadline = Instant::now() + Duration::from_secs(30);
    let t = std::thread::spawn(move || {
        let mut outs = [Out {
            peer: 1,
            data: pattern(0, 1, total),
            sent: 0,
        }];
        pump(&mut a, &mut outs, &mut [], deadline);
        a
    });
    let mut ins = [In {
        peer: 0,
        expect: pattern(0, 1, total),
        got: 0,
        pre,
        granule,
    }];
    pump(b, &mut [], &mut ins, deadline);
    t.join().unwrap()
}

/// Every pair of `n` ranks streams `len`-ish bytes both ways at once.
fn all_pairs(n: usize, len: usize, ring: usize) {
    all_pairs_with(n, len, &small(ring));
}

fn all_pairs_with(n: usize, len: usize, opts: &ShmOptions) {
    let job_id = job();
    let eps = group(n, job_id, opts);
    assert!(leftovers(job_id).is_empty(), "{:?}", leftovers(job_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    let granules = [1usize, 2, 4, 8, 3, 12];
    let handles: Vec<_> = eps
        .into_iter()
        .map(|mut ep| {
            std::thread::spawn(move || {
                let r = ep.rank();
                let shape = |src: usize, dst: usize| {
                    let g = granules[(src * 5 + dst) % granules.len()];
                    let pre = (src + 2 * dst) % 7 + 1;
                    (g, pre, pre + (len / g) * g)
                };
                let mut outs: Vec<Out> = (0..n)
                    .filter(|&p| p != r)
                    .map(|p| Out {
                        peer: p,
                        data: pattern(r, p, shape(r, p).2),
                        sent: 0,
                    })
                    .collect();
                let mut ins: Vec<In> = (0..n)
                    .filter(|&p| p != r)
                    .map(|p| {
                        let (granule, pre, total) = shape(p, r);
                        In {
                            peer: p,
                            expect: pattern(p, r, total),
                            got: 0,
                            pre,
                            granule,
                        }
                    })
                    .collect();
                pump(&mut ep, &mut outs, &mut ins, deadline);
                ep
            })
        })
        .collect();
    let eps: Vec<ShmTransport> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(eps);
    assert!(leftovers(job_id).is_empty());
}

#[test]
fn two_ranks_stream_both_ways_through_a_small_ring() {
    all_pairs(2, 3_000_000, 64 << 10);
}

#[test]
fn two_ranks_stream_through_the_rings_only() {
    all_pairs_with(2, 3_000_000, &rings(64 << 10));
}

#[test]
fn three_ranks_stream_all_pairs() {
    all_pairs(3, 1_500_000, 64 << 10);
}

#[test]
fn four_ranks_stream_all_pairs() {
    all_pairs(4, 1_000_000, 64 << 10);
}

#[test]
fn eight_ranks_share_few_cores() {
    // More ranks than cores: waiting must sleep, not spin, for this to end.
    all_pairs(8, 200_000, 16 << 10);
}

#[test]
fn large_elements_straddle_the_wrap_point() {
    // 384-byte elements (beyond the stack buffer) after a 5-byte preamble.
    let job_id = job();
    let mut eps = group(2, job_id, &small(4096));
    let mut b = eps.pop().unwrap();
    let a = eps.pop().unwrap();
    drop(one_way(a, &mut b, 5 + 384 * 100, 5, 384));
    // An element larger than the ring can never be lent.
    assert!(matches!(
        b.recv(0, 1 << 20, 8192, &mut |_| {}),
        Err(TransportError::Io { peer: 0, .. })
    ));
}

#[test]
fn a_full_ring_refuses_more_until_drained() {
    let rings_only = rings(4096);
    let mut eps = group(2, job(), &rings_only);
    let (a, b) = eps.split_at_mut(1);
    assert_eq!(a[0].send(1, &[&[7; 3000], &[8; 3000]]).unwrap(), 4096);
    assert_eq!(a[0].send(1, &[&[9; 10]]).unwrap(), 0);
    let mut got = 0;
    assert_eq!(
        b[0].recv(0, 1000, 1, &mut |s| got += s.len()).unwrap(),
        1000
    );
    assert_eq!(got, 1000);
    assert_eq!(a[0].send(1, &[&[9; 2000]]).unwrap(), 1000);
}

/// A large part is read by the receiver straight from the sender's memory:
/// the sender reports it taken only once read; a message given up mid-way
/// is never read after `abandon` returns.
#[test]
fn large_messages_are_read_in_place_and_can_be_withdrawn() {
    let mut eps = group(2, job(), &small(4096));
    let (a, b) = eps.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    assert!(
        a.links[1].as_ref().unwrap().single_copy,
        "the kernel refused process_vm_readv here"
    );
    let header = [1u8; 40];
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    // The header goes through the ring; the payload waits for the reader.
    assert_eq!(a.send(1, &[&header, &payload[..300_000]]).unwrap(), 40);
    let mut got = Vec::new();
    let n = b
        .recv(0, 40 + 100_000, 1, &mut |s| got.extend_from_slice(s))
        .unwrap();
    assert_eq!(n, 40 + 100_000);
    assert_eq!(&got[..40], &header);
    // Read so far is taken; the offer grows the window over the rest.
    assert_eq!(a.send(1, &[&payload[..1_000_000]]).unwrap(), 100_000);
    while got.len() < 40 + 1_000_000 {
        let want = 40 + 1_000_000 - got.len();
        b.recv(0, want, 4, &mut |s| got.extend_from_slice(s))
            .unwrap();
    }
    assert!(got[40..] == payload[..], "window bytes differ");
    assert_eq!(a.send(1, &[&payload[100_000..]]).unwrap(), 900_000);
    // A new message (not contiguous) closes the window and goes on.
    let other = vec![5u8; 50_000];
    assert_eq!(a.send(1, &[&header, &other]).unwrap(), 40);
    let mut got = Vec::new();
    b.recv(0, 40 + 10, 1, &mut |s| got.extend_from_slice(s))
        .unwrap();
    assert_eq!(got.len(), 50);
    // The sender gives up: the reader gets an error, not the bytes.
    a.abandon();
    let err = b.recv(0, 1000, 1, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("gave up") || err.contains("closed"), "{err}");
    assert!(
        a.send(1, &[b"x"]).is_err(),
        "the stream is broken after abandon"
    );
}

#[test]
fn no_segment_is_left_after_connect_or_drop() {
    let job_id = job();
    let eps = group(3, job_id, &small(4096));
    assert!(leftovers(job_id).is_empty(), "{:?}", leftovers(job_id));
    drop(eps);
    assert!(leftovers(job_id).is_empty());
}

#[test]
fn setup_waits_for_its_answer_to_a_sender_that_attached_last() {
    // Every peer attached and rang, every receiver answered this rank,
    // but a sender attached after this rank's last round of answers: it
    // waits for that answer, so this rank must not leave yet (it once did,
    // and the sender waited for its deadline: one connect of 4 processes
    // in some hundreds).
    assert!(!setup_done(true, true, true, false));
    assert!(setup_done(true, true, false, false));
    assert!(!setup_done(true, false, false, false));
    assert!(!setup_done(false, true, false, false));
    assert!(!setup_done(true, true, false, true));
}

#[test]
fn repeated_connects_of_four_ranks_all_finish() {
    // Each connect has 20 s; a rank left waiting for an answer would fail
    // the group's join instead of hanging.
    for _ in 0..40 {
        let job_id = job();
        let eps = group(4, job_id, &rings(4096));
        assert_eq!(eps.len(), 4);
        assert!(leftovers(job_id).is_empty());
    }
}

#[test]
fn a_stale_segment_of_an_earlier_job_does_not_break_a_new_one() {
    let job_id = job();
    // Garbage under the names of ring 1 -> 0, ring 0 -> 1 and rank 1's bell,
    // as a crashed earlier job with the same id could leave them.
    for name in [
        ring_name(job_id, 1, 0),
        ring_name(job_id, 0, 1),
        bell_name(job_id, 1),
    ] {
        let path = format!("/dev/shm{name}");
        std::fs::write(&path, vec![0xA5u8; 64 << 10]).unwrap();
    }
    // And ring 0 -> 1 as one that looks right (same job, magic, version)
    // but whose creator is gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let name = ring_name(job_id, 0, 1);
    raw::unlink(&name);
    let stale = raw::Mapping::create(&name, DATA_OFFSET + 4096).unwrap();
    let m = &stale.ring_header().meta;
    m.version.store(VERSION, Ordering::Relaxed);
    m.src.store(0, Ordering::Relaxed);
    m.dst.store(1, Ordering::Relaxed);
    m.job_id.store(job_id, Ordering::Relaxed);
    m.ring_bytes.store(4096, Ordering::Relaxed);
    m.receiver_pid.store(dead_pid, Ordering::Relaxed);
    m.magic.store(MAGIC, Ordering::Release);
    drop(stale);
    // And rank 0's doorbell likewise.
    let name = bell_name(job_id, 0);
    raw::unlink(&name);
    let stale = raw::Mapping::create(&name, DATA_OFFSET).unwrap();
    let m = &stale.bell_header().meta.0;
    m.version.store(VERSION, Ordering::Relaxed);
    m.rank.store(0, Ordering::Relaxed);
    m.job_id.store(job_id, Ordering::Relaxed);
    m.owner_pid.store(dead_pid, Ordering::Relaxed);
    m.magic.store(MAGIC, Ordering::Release);
    drop(stale);
    let mut eps = group(2, job_id, &small(8192));
    assert!(leftovers(job_id).is_empty(), "{:?}", leftovers(job_id));
    let mut b = eps.pop().unwrap();
    let a = eps.pop().unwrap();
    drop(one_way(a, &mut b, 100_001, 1, 4));
}

#[test]
fn a_dropped_peer_is_reported_at_once() {
    let mut eps = group(2, job(), &small(4096));
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    assert_eq!(b.send(0, &[&[1, 2, 3, 4, 5]]).unwrap(), 5);
    // A waiter blocked with a long deadline is woken by the drop.
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let mut got = Vec::new();
        let err = loop {
            match a.recv(1, 100, 1, &mut |s| got.extend_from_slice(s)) {
                Ok(0) => a.wait(start + Duration::from_secs(30)).unwrap(),
                Ok(_) => {}
                Err(e) => break e,
            }
            assert!(start.elapsed() < Duration::from_secs(20));
        };
        (a, got, err, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(b);
    let (mut a, got, err, took) = t.join().unwrap();
    // Bytes sent before the drop are still delivered, then the close.
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(err, TransportError::PeerClosed { peer: 1 });
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        a.send(1, &[&[1]]).unwrap_err(),
        TransportError::PeerClosed { peer: 1 }
    );
}

#[test]
fn unknown_and_unconnected_peers_are_errors() {
    let job_id = job();
    let deadline = Instant::now() + CONNECT;
    // Ranks 0 and 1 of 3 connect to each other only.
    let h = std::thread::spawn(move || connect(1, 3, job_id, &[0], &small(4096), deadline));
    let mut a = connect(0, 3, job_id, &[1], &small(4096), deadline).unwrap();
    let _b = h.join().unwrap().unwrap();
    assert_eq!(a.name(), "shm");
    assert!(matches!(
        a.send(5, &[&[1]]),
        Err(TransportError::NoSuchPeer { peer: 5, size: 3 })
    ));
    assert!(matches!(
        a.recv(2, 8, 1, &mut |_| {}),
        Err(TransportError::Io { peer: 2, .. })
    ));
    assert!(matches!(
        connect(0, 2, job(), &[0], &small(4096), deadline),
        Err(TransportError::Setup { .. })
    ));
    // A peer that never comes: an error at the deadline, nothing left behind.
    let lonely = job();
    let start = Instant::now();
    let err = connect(
        0,
        2,
        lonely,
        &[1],
        &small(4096),
        start + Duration::from_millis(200),
    );
    assert!(
        matches!(err, Err(TransportError::Io { peer: 1, .. })),
        "{:?}",
        err.err()
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(leftovers(lonely).is_empty(), "{:?}", leftovers(lonely));
}

#[test]
fn wait_returns_at_its_deadline_and_wakes_on_data() {
    let mut eps = group(2, job(), &small(4096));
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    let start = Instant::now();
    a.wait(start + Duration::from_millis(30)).unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(30), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        b.send(0, &[&[42]]).unwrap();
        b
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.is_empty() {
        a.wait(deadline).unwrap();
        assert!(Instant::now() < deadline, "no wake-up before the deadline");
        a.recv(1, 1, 1, &mut |s| got.extend_from_slice(s)).unwrap();
    }
    assert_eq!(got, vec![42]);
    drop(t.join().unwrap());
}

#[test]
fn waiting_sleeps_instead_of_spinning() {
    let mut eps = group(2, job(), &small(4096));
    let start = Instant::now();
    let cpu = raw::thread_cpu_time();
    // Many short waits and one long one: both must mostly sleep.
    for _ in 0..20 {
        eps[0]
            .wait(Instant::now() + Duration::from_millis(5))
            .unwrap();
    }
    eps[0]
        .wait(Instant::now() + Duration::from_millis(300))
        .unwrap();
    let used = raw::thread_cpu_time() - cpu;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(
        used < Duration::from_millis(60),
        "{used:?} of CPU in {waited:?} of waiting"
    );
}

#[test]
fn options_come_from_the_environment() {
    let opts = ShmOptions::from_lookup(|_| None).unwrap();
    assert_eq!(opts, ShmOptions::default());
    let opts = ShmOptions::from_lookup(|n| match n {
        "BRAID_SHM_RING" => Some("64K".into()),
        "BRAID_SPIN_US" => Some("5".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(opts.ring_bytes, 64 << 10);
    assert_eq!(opts.spin, Some(Duration::from_micros(5)));
    for bad in ["3M", "1K", "lots", "2G"] {
        let err = ShmOptions::from_lookup(|n| (n == "BRAID_SHM_RING").then(|| bad.to_string()))
            .unwrap_err();
        assert!(err.contains("BRAID_SHM_RING"), "{err}");
    }
    let cma = |v: &str| ShmOptions::from_lookup(|n| (n == "BRAID_SHM_CMA").then(|| v.to_string()));
    assert_eq!(cma("64K").unwrap().single_copy_min, Some(64 << 10));
    assert_eq!(cma("off").unwrap().single_copy_min, None);
    assert_eq!(cma("0").unwrap().single_copy_min, None);
    let err = cma("sometimes").unwrap_err();
    assert!(err.contains("BRAID_SHM_CMA='sometimes'"), "{err}");
}

const CHILD_ENV: &str = "BRAID_SHM_TEST_CHILD_JOB";
/// Bytes the child process streams to its parent.
const CROSS: usize = 3 + 4 * 500_000;

/// Not a test on its own: the child process of
/// [`a_killed_peer_process_is_reported_within_seconds`].
#[test]
fn child_process_peer() {
    let Ok(job_hex) = std::env::var(CHILD_ENV) else {
        return;
    };
    let job_id = u64::from_str_radix(&job_hex, 16).unwrap();
    let deadline = Instant::now() + CONNECT;
    let mut ep = connect(1, 2, job_id, &[0], &small(4096), deadline).unwrap();
    let mut outs = [Out {
        peer: 0,
        data: pattern(1, 0, CROSS),
        sent: 0,
    }];
    pump(&mut ep, &mut outs, &mut [], Instant::now() + CONNECT);
    // Wait to be killed (but never hang around for long).
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let _ = ep.wait(end);
    }
    std::mem::forget(ep);
}

#[test]
fn a_killed_peer_process_is_reported_within_seconds() {
    let job_id = job();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "shm::tests::child_process_peer",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{job_id:x}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CONNECT;
    let mut ep = match connect(0, 2, job_id, &[1], &small(4096), deadline) {
        Ok(ep) => ep,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}");
        }
    };
    // Bytes cross the process boundary intact (through a ring 500 times
    // smaller than the stream)...
    let mut ins = [In {
        peer: 1,
        expect: pattern(1, 0, CROSS),
        got: 0,
        pre: 3,
        granule: 4,
    }];
    pump(&mut ep, &mut [], &mut ins, deadline);
    // ...and the peer's death is noticed.
    child.kill().unwrap(); // SIGKILL: no Drop, no closed flags
    let start = Instant::now();
    let err = loop {
        match ep.recv(1, 1000, 1, &mut |_| {}) {
            Ok(_) => ep.wait(start + Duration::from_secs(10)).unwrap(),
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "death not noticed"
        );
    };
    let took = start.elapsed();
    eprintln!("a killed peer process was reported after {took:?}");
    let _ = child.wait();
    assert_eq!(err, TransportError::PeerClosed { peer: 1 });
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(leftovers(job_id).is_empty(), "{:?}", leftovers(job_id));
}

/// `cargo test -p braid-transports --release -- --ignored shm_throughput --nocapture`
#[test]
#[ignore]
fn shm_throughput() {
    const TOTAL: usize = 64 << 20;
    const ROUNDS: usize = 4;
    for single_copy_min in [None, Some(64 << 10)] {
        for chunk in [256 << 10, 4 << 20] {
            let opts = ShmOptions {
                single_copy_min,
                ..ShmOptions::default()
            };
            let mut eps = group(2, job(), &opts);
            let mut b = eps.pop().unwrap();
            let mut a = eps.pop().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let t = std::thread::spawn(move || {
                // Offers of `chunk` bytes out of one buffer, as the executor makes.
                let data = vec![1u8; TOTAL];
                for _ in 0..ROUNDS {
                    let mut sent = 0;
                    while sent < TOTAL {
                        let end = (sent + chunk).min(TOTAL);
                        let n = a.send(1, &[&data[sent..end]]).unwrap();
                        sent += n;
                        if n == 0 {
                            assert!(Instant::now() < deadline);
                            a.wait(deadline).unwrap();
                        }
                    }
                }
                a
            });
            let mut best = f64::MAX;
            for _ in 0..ROUNDS {
                let start = Instant::now();
                let mut got = 0usize;
                let mut sum = 0u64;
                while got < TOTAL {
                    let n = b
                        .recv(0, TOTAL - got, 4, &mut |s| {
                            // Read every byte, as a reduction would.
                            sum = s.iter().fold(sum, |acc, &x| acc.wrapping_add(x as u64));
                        })
                        .unwrap();
                    got += n;
                    if n == 0 {
                        assert!(Instant::now() < deadline);
                        b.wait(deadline).unwrap();
                    }
                }
                best = best.min(start.elapsed().as_secs_f64());
                assert_eq!(sum, TOTAL as u64);
            }
            drop(t.join().unwrap());
            println!(
                "shm: {} MiB one way, offers of {} KiB, single copy from {single_copy_min:?}: best of {ROUNDS} {:.2} GB/s",
                TOTAL >> 20,
                chunk >> 10,
                TOTAL as f64 / best / 1e9
            );
        }
    }
}

/// `cargo test -p braid-transports --release -- --ignored shm_latency --nocapture`
#[test]
#[ignore]
fn shm_latency() {
    const ROUNDS: u32 = 20_000;
    let mut eps = group(2, job(), &ShmOptions::from_env().unwrap());
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    fn bounce(ep: &mut ShmTransport, peer: usize, deadline: Instant) {
        while ep.recv(peer, 8, 8, &mut |_| {}).unwrap() == 0 {
            assert!(Instant::now() < deadline);
            ep.wait(deadline).unwrap();
        }
    }
    let t = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            bounce(&mut b, 0, deadline);
            assert_eq!(b.send(0, &[&[0; 8]]).unwrap(), 8);
        }
        b
    });
    let start = Instant::now();
    for _ in 0..ROUNDS {
        assert_eq!(a.send(1, &[&[0; 8]]).unwrap(), 8);
        bounce(&mut a, 1, deadline);
    }
    let rtt = start.elapsed() / ROUNDS;
    drop(t.join().unwrap());
    println!("shm: 8-byte round trip {rtt:?} (one way {:?})", rtt / 2);
}

/// The ring from rank 0 to rank 1 of `eps`, as rank 1 reads it.
fn rx_header(eps: &[ShmTransport]) -> &raw::RingHeader {
    eps[1].links[0].as_ref().unwrap().rx.header()
}

/// Small writes travel inline in the head's line: read whole, in pieces,
/// or (when the reader is behind, the inline copy is being rewritten, or
/// already replaced) from the ring; bytes that are in neither are not
/// lent until the ring has them.
#[test]
fn small_writes_are_read_inline_or_from_the_ring() {
    let rings_only = rings(4096);
    let mut eps = group(2, job(), &rings_only);
    let take = |eps: &mut [ShmTransport], max: usize, granule: usize| {
        let mut got = Vec::new();
        eps[1]
            .recv(0, max, granule, &mut |b| got.extend_from_slice(b))
            .unwrap();
        got
    };
    // A 48-byte message: header-sized piece, then the rest.
    let m1: Vec<u8> = (0..48).collect();
    assert_eq!(eps[0].send(1, &[&m1[..40], &m1[40..]]).unwrap(), 48);
    assert_eq!(take(&mut eps, 40, 1), m1[..40]);
    assert_eq!(take(&mut eps, 100, 4), m1[40..]);
    // Two messages before the reader looks: the inline copy holds only the
    // second, so both come from the ring.
    let (m2, m3) = (vec![2u8; 20], vec![3u8; 30]);
    eps[0].send(1, &[&m2]).unwrap();
    eps[0].send(1, &[&m3]).unwrap();
    assert_eq!(take(&mut eps, 50, 1), [m2, m3].concat());
    // Published but neither inline (tag mid-rewrite) nor in the ring yet
    // (ring_head behind): nothing is lent, and the reader watches ring_head.
    let m4 = vec![4u8; 16];
    eps[0].send(1, &[&m4]).unwrap();
    let h = rx_header(&eps);
    let (tag, ring_head) = (
        h.head.inline_tag.load(Ordering::Relaxed),
        h.ring_head.0.load(Ordering::Relaxed),
    );
    let set = |eps: &[ShmTransport], tag: u64, ring_head: u64| {
        let h = rx_header(eps);
        h.head.inline_tag.store(tag, Ordering::Relaxed);
        h.ring_head.0.store(ring_head, Ordering::Relaxed);
    };
    set(&eps, raw::INLINE_WRITING, ring_head - 16);
    assert_eq!(take(&mut eps, 100, 1), Vec::<u8>::new());
    assert!(eps[1].links[0].as_ref().unwrap().rx.ring_lagging());
    // The inline copy back: lent from there though the ring still lags.
    set(&eps, tag, ring_head - 16);
    assert_eq!(take(&mut eps, 8, 1), m4[..8]);
    // The ring catches up: the rest comes from it.
    set(&eps, raw::INLINE_WRITING, ring_head);
    assert_eq!(take(&mut eps, 100, 1), m4[8..]);
}

/// Thousands of small writes of every size up to and past the inline
/// limit, through a small ring (wrapping often), read in pieces of random
/// sizes and granules: the stream arrives intact and in order.
#[test]
fn streams_of_small_writes_arrive_intact() {
    let rings_only = rings(4096);
    let mut eps = group(2, job(), &rings_only);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % bound as u64) as usize
    };
    let total = 200_000usize;
    let stream = pattern(0, 1, total);
    let (mut sent, mut got) = (0usize, Vec::with_capacity(total));
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < total {
        assert!(Instant::now() < deadline, "stream stalled at {}", got.len());
        for _ in 0..next(4) {
            let len = (1 + next(64)).min(total - sent);
            let split = next(len + 1);
            let n = eps[0]
                .send(
                    1,
                    &[
                        &stream[sent..sent + split],
                        &stream[sent + split..sent + len],
                    ],
                )
                .unwrap();
            sent += n;
        }
        let granule = [1, 2, 4, 8][next(4)];
        let max = 1 + next(200);
        eps[1]
            .recv(0, max, granule, &mut |b| got.extend_from_slice(b))
            .unwrap();
        if total - got.len() < granule {
            eps[1]
                .recv(0, total - got.len(), 1, &mut |b| got.extend_from_slice(b))
                .unwrap();
        }
    }
    assert!(
        got == stream,
        "stream differs from byte {}",
        got.iter()
            .zip(&stream)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len())
    );
}

/// Senders waiting for ring space, asleep at once (no spin), are woken by
/// the receiver's reads (three senders to one receiver, as in a gather),
/// also when a ring filled up while the receiver was still copying out of
/// it: a lost wake-up would leave a sender asleep until its liveness period
/// (100 ms) runs out.
#[test]
fn senders_waiting_for_space_are_woken() {
    let sleepy = ShmOptions {
        ring_bytes: 64 << 10,
        spin: Some(Duration::ZERO),
        single_copy_min: None,
    };
    let mut eps = group(4, job(), &sleepy);
    let total = 64 << 20;
    let deadline = Instant::now() + Duration::from_secs(60);
    let senders: Vec<_> = eps
        .drain(1..)
        .map(|mut a| {
            std::thread::spawn(move || {
                let data = pattern(a.rank(), 0, total);
                let mut sent = 0;
                while sent < total {
                    let n = a
                        .send(0, &[&data[sent..(sent + 65_536).min(total)]])
                        .unwrap();
                    sent += n;
                    if n == 0 {
                        assert!(Instant::now() < deadline, "sender stalled at {sent}");
                        a.wait(deadline).unwrap();
                    }
                }
                // Stay connected until the receiver has everything.
                let mut done = [0u8; 1];
                while a.recv(0, 1, 1, &mut |b| done.copy_from_slice(b)).unwrap() == 0 {
                    assert!(Instant::now() < deadline, "no goodbye from rank 0");
                    a.wait(deadline).unwrap();
                }
                a.missed_wakes
            })
        })
        .collect();
    let b = &mut eps[0];
    let expect: Vec<Vec<u8>> = (0..4).map(|p| pattern(p, 0, total)).collect();
    let mut got = [total, 0, 0, 0];
    let mut step = 0;
    while got.iter().any(|&g| g < total) {
        let mut moved = false;
        for p in 1..4 {
            step += 1;
            let max = [1 << 20, 1000, 1 << 20, 17, 1 << 20][step % 5];
            let at = &mut got[p];
            let n = b
                .recv(p, max, 1, &mut |s| {
                    assert!(
                        s == &expect[p][*at..*at + s.len()],
                        "corrupt bytes from {p}"
                    );
                    *at += s.len();
                })
                .unwrap();
            moved |= n > 0;
        }
        if !moved {
            assert!(Instant::now() < deadline, "receiver stalled at {got:?}");
            b.wait(deadline).unwrap();
        }
    }
    for p in 1..4 {
        b.send(p, &[&[1]]).unwrap();
    }
    let missed: u32 = senders.into_iter().map(|t| t.join().unwrap()).sum();
    // A sleep that runs to its 100 ms timeout though its ring's tail had
    // moved is a lost wake-up (not a slow scheduler: a reader that runs at
    // all rings right after it reads).
    assert_eq!(missed, 0, "senders slept through {missed} wake-ups");
}
