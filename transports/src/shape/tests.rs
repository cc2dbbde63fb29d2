//! Exactness (no byte lost, duplicated or reordered; whole granules only;
//! bounded queues), timing lower bounds, waking and errors of the shaping
//! wrapper, over in-process endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::local::{endpoints, LocalEndpoint};

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` shaped endpoints over a local group whose pairs hold `inner_cap`
/// bytes, each queueing at most `queue` bytes per peer.
fn group(n: usize, shape: LinkShape, inner_cap: usize, queue: usize) -> Vec<ShapedTransport> {
    endpoints(n, inner_cap)
        .into_iter()
        .map(|ep| ShapedTransport::new(Box::new(ep), shape).with_queue_bytes(queue))
        .collect()
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Byte `pos` of the stream from `src` to `dst`.
fn byte_at(src: usize, dst: usize, pos: u64) -> u8 {
    let x = pos
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((src * 131 + dst * 17) as u64);
    (x >> 29) as u8
}

/// How the receiver reads the stream from `src` to `dst`: records of
/// (length, granule), granule 0 meaning `recv_into`.
fn records(src: usize, dst: usize, total_hint: u64) -> Vec<(u64, usize)> {
    let mut rng = Rng(0x1234_5678 ^ ((src as u64) << 32) ^ dst as u64);
    let granules = [1usize, 2, 3, 4, 5, 7, 8, 0];
    let mut out = Vec::new();
    let mut total = 0;
    while total < total_hint {
        let g = granules[rng.below(granules.len() as u64) as usize];
        let len = match g {
            0 => rng.below(20_000),
            g => g as u64 * rng.below(5_000),
        };
        total += len;
        out.push((len, g));
    }
    out
}

/// Rank `t.rank()` streams `total[dst]`-byte streams to every peer in
/// random pieces and reads every peer's stream record by record, checking
/// every byte, granule and bound.
fn run_rank(mut t: ShapedTransport, hint: u64, seed: u64) -> ShapedTransport {
    let (r, n) = (t.rank(), t.size());
    let peers: Vec<usize> = (0..n).filter(|&p| p != r).collect();
    let out_len: Vec<u64> = (0..n)
        .map(|d| records(r, d, hint).iter().map(|x| x.0).sum())
        .collect();
    let plans: Vec<Vec<(u64, usize)>> = (0..n).map(|s| records(s, r, hint)).collect();
    let mut sent = vec![0u64; n];
    let mut got = vec![0u64; n];
    let mut rec = vec![(0usize, 0u64); n]; // (record index, bytes of it read)
    let mut rng = Rng(seed);
    let mut scratch = vec![0u8; 40_000];
    let deadline = Instant::now() + Duration::from_secs(60);
    let in_len = |s: usize| plans[s].iter().map(|x| x.0).sum::<u64>();
    loop {
        let mut moved = false;
        let mut done = true;
        for &p in &peers {
            // Send a random piece, split into up to three parts.
            if sent[p] < out_len[p] {
                done = false;
                let len = (1 + rng.below(6000)).min(out_len[p] - sent[p]) as usize;
                let bytes: Vec<u8> = (0..len as u64)
                    .map(|i| byte_at(r, p, sent[p] + i))
                    .collect();
                let a = rng.below(len as u64 + 1) as usize;
                let b = a + rng.below((len - a) as u64 + 1) as usize;
                let n = t
                    .send(p, &[&bytes[..a], &bytes[a..b], &bytes[b..]])
                    .unwrap();
                assert!(n <= len);
                sent[p] += n as u64;
                moved |= n > 0;
            }
            // Read from the current record.
            let (ri, read) = rec[p];
            if ri == plans[p].len() {
                continue;
            }
            done = false;
            let (len, g) = plans[p][ri];
            let left = (len - read) as usize;
            let mut chunk = Vec::new();
            let n = if g == 0 {
                let want = left.min(1 + rng.below(scratch.len() as u64) as usize);
                let n = t.recv_into(p, &mut scratch[..want]).unwrap();
                assert!(n <= want);
                chunk.extend_from_slice(&scratch[..n]);
                n
            } else {
                // Any max, not only multiples of the granule.
                let max = left.min(1 + rng.below(30_000) as usize);
                let n = t
                    .recv(p, max, g, &mut |b| {
                        assert_eq!(b.len() % g, 0, "rank {r}: a partial element of {g}");
                        chunk.extend_from_slice(b);
                    })
                    .unwrap();
                assert!(n <= max, "lent {n} > max {max}");
                assert_eq!(n % g, 0);
                n
            };
            assert_eq!(n, chunk.len());
            for (i, &b) in chunk.iter().enumerate() {
                let pos = got[p] + i as u64;
                assert_eq!(b, byte_at(p, r, pos), "rank {r} from {p}, byte {pos}");
            }
            got[p] += n as u64;
            rec[p].1 += n as u64;
            while rec[p].0 < plans[p].len() && rec[p].1 == plans[p][rec[p].0].0 {
                rec[p] = (rec[p].0 + 1, 0);
            }
            moved |= n > 0;
            assert!(t.queued(p) <= t.queue_bytes(), "queue over its cap");
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rank {r} stuck: sent {sent:?} got {got:?}"
        );
        if !moved {
            t.wait(Instant::now() + Duration::from_secs(5)).unwrap();
        }
    }
    for &p in &peers {
        assert_eq!(got[p], in_len(p));
    }
    t
}

#[test]
fn streams_of_odd_sizes_and_granules_arrive_exact() {
    let shapes = [
        LinkShape::new(Duration::ZERO, f64::INFINITY),
        LinkShape::new(us(30), 2.0),
        LinkShape::new(us(10), 0.5).with_ports(Ports::PerRank),
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        // Small inner pairs and queues: back-pressure everywhere.
        for (inner_cap, queue) in [(1000, 64), (1 << 20, 5000)] {
            let start = Instant::now();
            let handles: Vec<_> = group(3, shape, inner_cap, queue)
                .into_iter()
                .enumerate()
                .map(|(r, t)| {
                    std::thread::spawn(move || run_rank(t, 150_000, (i * 7 + r) as u64 + 1))
                })
                .collect();
            let ends: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            for t in &ends {
                for p in 0..3 {
                    assert_eq!(t.queued(p), 0);
                }
            }
            eprintln!(
                "{shape}, inner {inner_cap}, queue {queue}: {:?}",
                start.elapsed()
            );
        }
    }
}

#[test]
fn parse_accepts_the_documented_forms() {
    let s = LinkShape::parse("500,1").unwrap().unwrap();
    assert_eq!(s.alpha, us(500));
    assert_eq!(s.bandwidth, 1.25e8);
    assert_eq!(s.ports, Ports::PerLink);
    let s = LinkShape::parse(" 0.5 , 0.1 ,ports").unwrap().unwrap();
    assert_eq!(s.alpha, Duration::from_nanos(500));
    assert!((s.gbps() - 0.1).abs() < 1e-12);
    assert_eq!(s.ports, Ports::PerRank);
    let s = LinkShape::parse("50,inf,links").unwrap().unwrap();
    assert!(s.bandwidth.is_infinite());
    assert_eq!(
        LinkShape::parse("0,100").unwrap().unwrap().alpha,
        Duration::ZERO
    );
    for off in ["", " ", "off", "OFF", "none"] {
        assert_eq!(LinkShape::parse(off).unwrap(), None, "{off:?}");
    }
    for bad in [
        "500",
        "abc",
        "500,0",
        "-1,1",
        "500,-2",
        "500,1,foo",
        "1,2,3,4",
        "500,nan",
        "nan,1",
        "20000000,1",
        "500,,",
        "1e400,1",
    ] {
        let e = LinkShape::parse(bad).unwrap_err();
        assert!(e.contains("BRAID_SHAPE"), "{e}");
        assert!(e.contains(&format!("'{bad}'")), "{e}");
        assert!(e.contains("alpha_us,gbps"), "{e}");
    }
    assert!(LinkShape::parse("1,0.0000001")
        .unwrap_err()
        .contains("0.000001"));
    assert_eq!(
        LinkShape::parse("500,1").unwrap().unwrap().to_string(),
        "α 500 µs, 1 Gbit/s per link"
    );
}

#[test]
fn queue_cap_follows_the_bandwidth_delay_product() {
    let cap = |a_us: u64, gbps: f64| LinkShape::new(us(a_us), gbps).queue_bytes();
    assert_eq!(cap(500, 1.0), 4 << 20); // 2·B·α = 125 KB: the floor
    assert_eq!(cap(10_000, 100.0), 250_000_000); // 2 · 12.5 GB/s · 10 ms
    assert_eq!(cap(1_000_000, 10.0), 256 << 20); // the ceiling
    assert_eq!(cap(1_000, f64::INFINITY), 16 << 20);
    assert_eq!(cap(0, f64::INFINITY), 16 << 20);
}

#[test]
fn granules_are_held_back_until_whole() {
    let mut g = group(2, LinkShape::new(Duration::ZERO, f64::INFINITY), 1024, 1024);
    let (a, b) = g.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let take = |b: &mut ShapedTransport, max, granule| {
        let mut v = Vec::new();
        b.recv(0, max, granule, &mut |s| v.extend_from_slice(s))
            .unwrap();
        v
    };
    assert_eq!(a.send(1, &[&[1, 2, 3], &[4, 5]]).unwrap(), 5);
    assert_eq!(take(b, 100, 4), vec![1, 2, 3, 4]);
    assert_eq!(take(b, 100, 4), Vec::<u8>::new());
    assert_eq!(a.send(1, &[&[6, 7, 8]]).unwrap(), 3);
    assert_eq!(take(b, 3, 4), Vec::<u8>::new()); // max below one element
    assert_eq!(take(b, 100, 4), vec![5, 6, 7, 8]);
    assert_eq!(a.send(1, &[&[9]]).unwrap(), 1);
    let mut one = [0u8; 4];
    assert_eq!(b.recv_into(0, &mut one).unwrap(), 1);
    assert_eq!(one[0], 9);
}

/// Timing checks that compare two measured times (not a time with a lower
/// bound) can lose to a busy machine: `attempt` gets `tries` chances.
fn retry(tries: usize, mut attempt: impl FnMut() -> Result<(), String>) {
    let mut failures = Vec::new();
    for _ in 0..tries {
        match attempt() {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("every attempt failed: {failures:?}");
}

/// Sends `len` bytes from `a` (rank 0) to `b` (rank 1) in one send (the
/// inner pair holds them all) and returns (when the first bytes were lent,
/// when the last were), counted from when the send returned.
fn one_way(a: &mut ShapedTransport, b: &mut ShapedTransport, len: usize) -> (Duration, Duration) {
    let data: Vec<u8> = (0..len as u64).map(|i| byte_at(0, 1, i)).collect();
    assert_eq!(a.send(1, &[&data]).unwrap(), len);
    let sent = Instant::now();
    let mut got = Vec::with_capacity(len);
    let mut first = None;
    let deadline = sent + Duration::from_secs(30);
    while got.len() < len {
        let n = b
            .recv(0, len - got.len(), 4, &mut |s| got.extend_from_slice(s))
            .unwrap();
        if n > 0 {
            first.get_or_insert_with(|| sent.elapsed());
        } else {
            assert!(Instant::now() < deadline, "stuck at {}", got.len());
            b.wait(deadline).unwrap();
        }
    }
    let last = sent.elapsed();
    assert_eq!(got, data);
    (first.unwrap(), last)
}

#[test]
fn a_megabyte_at_a_tenth_of_a_gigabit_takes_its_wire_time() {
    // 1 MiB at 12.5 MB/s: 83.9 ms on the wire, plus α. The same pair for
    // every attempt: on a busy machine the first may teach it that the
    // local transport's timed waits end late.
    let shape = LinkShape::new(ms(1), 0.1);
    let mut g = group(2, shape, 8 << 20, shape.queue_bytes());
    let (a, b) = g.split_at_mut(1);
    retry(3, || {
        let (first, last) = one_way(&mut a[0], &mut b[0], 1 << 20);
        eprintln!("1 MiB at 0.1 Gbit/s: first bytes at {first:?}, all at {last:?}");
        assert!(last >= ms(84), "{last:?}");
        assert!(last < Duration::from_secs(3), "{last:?}");
        // Lent as it trickles in (pieces of 64 KiB), not all at the end.
        if first > last / 2 {
            return Err(format!("first bytes at {first:?}, all at {last:?}"));
        }
        Ok(())
    });
}

/// Two ranks send `rounds` messages of 8 bytes back and forth; returns the
/// time and the waits both made.
fn ping_pong(shape: LinkShape, rounds: usize) -> (Duration, usize) {
    let mut g = group(2, shape, 1 << 16, shape.queue_bytes());
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| g.remove(0))
        .map(|mut t| {
            std::thread::spawn(move || {
                let me = t.rank();
                let peer = 1 - me;
                let mut waits = 0;
                let deadline = Instant::now() + Duration::from_secs(30);
                for m in 0..rounds {
                    let word = (m as u64).to_le_bytes();
                    if m % 2 == me {
                        assert_eq!(t.send(peer, &[&word]).unwrap(), 8);
                    } else {
                        let mut got = Vec::new();
                        while got.len() < 8 {
                            let n = t
                                .recv(peer, 8 - got.len(), 8, &mut |s| got.extend_from_slice(s))
                                .unwrap();
                            if n == 0 {
                                assert!(Instant::now() < deadline);
                                t.wait(deadline).unwrap();
                                waits += 1;
                            }
                        }
                        assert_eq!(got, word);
                    }
                }
                waits
            })
        })
        .collect();
    let waits = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (start.elapsed(), waits)
}

#[test]
fn a_ping_pong_pays_alpha_per_message() {
    let (took, waits) = ping_pong(LinkShape::new(ms(5), 1.0), 8);
    eprintln!("8 messages of 8 B at α = 5 ms: {took:?}, {waits} waits");
    assert!(took >= ms(40), "{took:?}");
    assert!(took < ms(40) + Duration::from_secs(3), "{took:?}");
    // Woken by releases and arrivals (and, once the inner transport's
    // waits prove late on a busy machine, every POLL_SLICE), not spinning.
    let polls = (took.as_micros() / POLL_SLICE.as_micros()) as usize;
    assert!(
        waits <= 8 * 8 + polls,
        "{waits} waits for 8 messages in {took:?}"
    );
}

#[test]
fn wait_wakes_at_the_release_not_the_deadline() {
    let mut g = group(2, LinkShape::new(ms(30), 10.0), 1024, 1024);
    let mut b = g.pop().unwrap();
    let mut a = g.pop().unwrap();
    let start = Instant::now();
    assert_eq!(a.send(1, &[b"x"]).unwrap(), 1);
    let deadline = start + Duration::from_secs(20);
    let mut waits = 0;
    while b.recv(0, 1, 1, &mut |_| {}).unwrap() == 0 {
        b.wait(deadline).unwrap();
        waits += 1;
        assert!(Instant::now() < deadline);
    }
    let took = start.elapsed();
    assert!(took >= ms(30), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "slept past the release: {took:?}"
    );
    let polls = (took.as_micros() / POLL_SLICE.as_micros()) as usize;
    assert!(waits <= 5 + polls, "{waits} waits");
}

#[test]
fn wait_returns_at_its_deadline_when_nothing_is_due() {
    let mut g = group(2, LinkShape::new(ms(1), 1.0), 1024, 1024);
    let start = Instant::now();
    g[0].wait(start + ms(30)).unwrap();
    let waited = start.elapsed();
    assert!(waited >= ms(30), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

/// Rank `hub` of 3 sends (or receives) 256 KiB to (from) both others at
/// 0.1 Gbit/s; returns when the last byte was lent.
fn fan(ports: Ports, hub_sends: bool) -> Duration {
    let len = 256 << 10;
    let shape = LinkShape::new(Duration::ZERO, 0.1).with_ports(ports);
    let start = Instant::now();
    let handles: Vec<_> = group(3, shape, 8 << 20, shape.queue_bytes())
        .into_iter()
        .map(|mut t| {
            std::thread::spawn(move || {
                let r = t.rank();
                let sends: Vec<usize> = match (r, hub_sends) {
                    (0, true) => vec![1, 2],
                    (_, false) if r != 0 => vec![0],
                    _ => vec![],
                };
                let recvs: Vec<usize> = match (r, hub_sends) {
                    (0, false) => vec![1, 2],
                    (_, true) if r != 0 => vec![0],
                    _ => vec![],
                };
                let data: Vec<u8> = vec![r as u8; len];
                let mut sent = [0; 3];
                let mut got = [0; 3];
                let deadline = Instant::now() + Duration::from_secs(30);
                while sends.iter().any(|&p| sent[p] < len) || recvs.iter().any(|&p| got[p] < len) {
                    let mut moved = false;
                    for &p in &sends {
                        if sent[p] == len {
                            continue;
                        }
                        let n = t.send(p, &[&data[sent[p]..]]).unwrap();
                        sent[p] += n;
                        moved |= n > 0;
                    }
                    for &p in &recvs {
                        if got[p] == len {
                            continue;
                        }
                        let n = t
                            .recv(p, len - got[p], 1, &mut |s| {
                                assert!(s.iter().all(|&x| x == p as u8))
                            })
                            .unwrap();
                        got[p] += n;
                        moved |= n > 0;
                    }
                    assert!(Instant::now() < deadline);
                    if !moved {
                        t.wait(deadline).unwrap();
                    }
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap()
}

#[test]
fn per_rank_ports_share_one_bandwidth() {
    // 256 KiB at 12.5 MB/s: 21 ms per link; a shared port carries two.
    let wire = Duration::from_secs_f64((256 << 10) as f64 / 12.5e6);
    for hub_sends in [true, false] {
        let link = fan(Ports::PerLink, hub_sends);
        let port = fan(Ports::PerRank, hub_sends);
        eprintln!("hub sends {hub_sends}: per link {link:?}, per rank {port:?}");
        assert!(link >= wire, "{link:?}");
        assert!(port >= wire * 2, "{port:?}");
        assert!(port < Duration::from_secs(5), "{port:?}");
    }
}

#[test]
fn both_directions_are_separate_wires() {
    // Full duplex: 1 MiB each way at once takes one wire time, not two (a
    // shared wire would take at least two).
    let wire = Duration::from_secs_f64((1 << 20) as f64 / 12.5e6);
    let shape = LinkShape::new(Duration::ZERO, 0.1);
    let mut g = group(2, shape, 8 << 20, shape.queue_bytes());
    retry(5, || {
        let together = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = std::mem::take(&mut g)
            .into_iter()
            .map(|mut t| {
                let together = Arc::clone(&together);
                std::thread::spawn(move || {
                    let peer = 1 - t.rank();
                    let len = 1 << 20;
                    let data = vec![7u8; len];
                    together.wait();
                    let start = Instant::now();
                    assert_eq!(t.send(peer, &[&data]).unwrap(), len);
                    let mut got = 0;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while got < len {
                        let n = t.recv(peer, len - got, 1, &mut |_| {}).unwrap();
                        got += n;
                        if n == 0 {
                            t.wait(deadline).unwrap();
                        }
                    }
                    (t, start, Instant::now())
                })
            })
            .collect();
        let ends: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let start = ends.iter().map(|e| e.1).min().unwrap();
        let took = ends.iter().map(|e| e.2).max().unwrap() - start;
        g = ends.into_iter().map(|e| e.0).collect();
        assert!(took >= wire, "{took:?}");
        eprintln!("1 MiB each way at 0.1 Gbit/s: {took:?} (wire {wire:?})");
        if took >= wire * 3 / 2 {
            return Err(format!("{took:?}: do the directions share a wire?"));
        }
        Ok(())
    });
}

#[test]
fn back_pressure_bounds_the_queue() {
    // Nothing is released for 50 ms: the queue fills to its cap, then the
    // inner pair, then the sender is refused.
    let mut g = group(2, LinkShape::new(ms(50), f64::INFINITY), 4096, 4096);
    let (a, b) = g.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let mut sent = 0u64;
    for _ in 0..100 {
        let piece: Vec<u8> = (0..1000).map(|i| byte_at(0, 1, sent + i)).collect();
        sent += a.send(1, &[&piece]).unwrap() as u64;
        b.wait(Instant::now()).unwrap();
        assert!(b.queued(0) <= 4096);
    }
    assert_eq!(b.queued(0), 4096);
    assert!(sent <= 4096 + 4096 + 1000, "{sent}");
    // Everything arrives, in order, once released.
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < sent {
        let n = b
            .recv(0, usize::MAX, 1, &mut |s| {
                for (i, &x) in s.iter().enumerate() {
                    assert_eq!(x, byte_at(0, 1, got + i as u64));
                }
            })
            .unwrap();
        got += n as u64;
        if n == 0 {
            assert!(Instant::now() < deadline);
            b.wait(deadline).unwrap();
        }
    }
    assert_eq!(got, sent);
}

#[test]
fn errors_pass_through_after_the_bytes_sent_before() {
    let mut g = group(3, LinkShape::new(ms(20), 1.0), 1024, 1024);
    let gone = g.pop().unwrap(); // rank 2
    let mut b = g.pop().unwrap(); // rank 1
    let mut a = g.pop().unwrap(); // rank 0
    assert_eq!(a.send(1, &[b"0123456789"]).unwrap(), 10);
    drop(a);
    // Not yet released: nothing, and no error yet.
    assert_eq!(b.recv(0, 100, 1, &mut |_| {}).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 10 {
        if b.recv(0, 100, 1, &mut |s| got.extend_from_slice(s))
            .unwrap()
            == 0
        {
            b.wait(deadline).unwrap();
            assert!(Instant::now() < deadline);
        }
    }
    assert_eq!(got, b"0123456789");
    assert_eq!(
        b.recv(0, 100, 1, &mut |_| {}).unwrap_err(),
        TransportError::PeerClosed { peer: 0 }
    );
    drop(gone);
    assert_eq!(
        b.send(2, &[b"x"]).unwrap_err(),
        TransportError::PeerClosed { peer: 2 }
    );
    assert_eq!(
        b.recv(2, 1, 1, &mut |_| {}).unwrap_err(),
        TransportError::PeerClosed { peer: 2 }
    );
    assert!(matches!(
        b.recv(7, 1, 1, &mut |_| {}),
        Err(TransportError::NoSuchPeer { peer: 7, size: 3 })
    ));
    assert!(matches!(
        b.send(7, &[b"x"]),
        Err(TransportError::NoSuchPeer { peer: 7, size: 3 })
    ));
}

/// A local endpoint that counts `abandon` calls and, optionally, wakes late
/// from every wait that runs to its deadline (as epoll, which counts whole
/// milliseconds, does).
struct Probe {
    inner: LocalEndpoint,
    abandons: Arc<AtomicUsize>,
    late: Duration,
}

impl Transport for Probe {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn name(&self) -> &'static str {
        "probe"
    }
    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        self.inner.send(peer, parts)
    }
    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        self.inner.recv(peer, max, granule, sink)
    }
    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        self.inner.wait(deadline + self.late)
    }
    fn abandon(&mut self) {
        self.abandons.fetch_add(1, Ordering::SeqCst);
    }
}

fn probes(late: Duration, shape: LinkShape) -> (Vec<ShapedTransport>, Arc<AtomicUsize>) {
    let abandons = Arc::new(AtomicUsize::new(0));
    let ts = endpoints(2, 1 << 16)
        .into_iter()
        .map(|inner| {
            let p = Probe {
                inner,
                abandons: Arc::clone(&abandons),
                late,
            };
            ShapedTransport::new(Box::new(p), shape)
        })
        .collect();
    (ts, abandons)
}

#[test]
fn abandon_is_forwarded_and_names_say_what_is_shaped() {
    let (mut ts, abandons) = probes(Duration::ZERO, LinkShape::new(us(1), 1.0));
    ts[0].abandon();
    ts[1].abandon();
    assert_eq!(abandons.load(Ordering::SeqCst), 2);
    assert_eq!(ts[0].name(), "shaped");
    let g = group(2, LinkShape::new(us(1), 1.0), 64, 64);
    assert_eq!(g[0].name(), "local+shape");
    assert_eq!(g[1].rank(), 1);
    assert_eq!(g[1].size(), 2);
    assert_eq!(g[1].memory(), MemoryKind::Host);
}

#[test]
fn a_late_waking_inner_transport_is_learned_and_released_on_time() {
    // Every inner wait that runs out ends 6 ms late. Rank 0 sends a byte
    // every 45 ms; rank 1 measures how late past send + α each is lent.
    retry(3, || {
        let alpha = ms(15);
        let (mut ts, _) = probes(ms(6), LinkShape::new(alpha, 1.0));
        let mut b = ts.pop().unwrap();
        let mut a = ts.pop().unwrap();
        let n = 8;
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            let mut sent = Vec::new();
            for k in 0..n {
                std::thread::sleep(
                    (start + ms(45) * k as u32).saturating_duration_since(Instant::now()),
                );
                sent.push(Instant::now());
                assert_eq!(a.send(1, &[&[k as u8]]).unwrap(), 1);
            }
            std::thread::sleep(ms(100));
            sent
        });
        let mut lent = Vec::new();
        let deadline = start + Duration::from_secs(20);
        for k in 0..n {
            let mut got = None;
            while got.is_none() {
                b.recv(0, 1, 1, &mut |s| got = Some(s[0])).unwrap();
                if got.is_none() {
                    b.wait(deadline).unwrap();
                    assert!(Instant::now() < deadline);
                }
            }
            assert_eq!(got, Some(k as u8));
            lent.push(Instant::now());
        }
        let sent = sender.join().unwrap();
        for (s, l) in sent.iter().zip(&lent) {
            assert!(*l - *s >= alpha, "lent {:?} after it was sent", *l - *s);
        }
        let lateness: Vec<Duration> = sent
            .iter()
            .zip(&lent)
            .map(|(s, l)| *l - *s - alpha)
            .collect();
        eprintln!("lateness per message: {lateness:?}");
        // The first ones may be 6 ms late; once learned, most are on time.
        let mut tail = lateness[n / 2..].to_vec();
        tail.sort();
        if tail[tail.len() / 2] >= ms(4) {
            return Err(format!("{lateness:?}"));
        }
        Ok(())
    });
}

#[cfg(target_os = "linux")]
#[test]
fn precise_wakes_set_the_thread_slack_to_the_least_and_put_it_back() {
    // SAFETY: PR_GET_TIMERSLACK takes no argument and only reads this
    // thread's slack.
    let slack = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
    let before = slack();
    assert!(before > 1, "a fresh thread has the default slack: {before}");
    {
        let _precise = PreciseWakes::new();
        assert_eq!(slack(), 1);
    }
    assert_eq!(slack(), before);
}

#[test]
fn releases_spun_rather_than_slept_are_never_early() {
    // α of 40 µs is within the spun stretch (the inner transport's
    // lateness, at first MAX_SPIN / 2): every message must still take α.
    let alpha = us(40);
    let mut g = group(2, LinkShape::new(alpha, 10.0), 1 << 16, 1 << 16);
    let (a, b) = g.split_at_mut(1);
    for len in [4, 8, 1000, 4096] {
        for _ in 0..20 {
            let (first, last) = one_way(&mut a[0], &mut b[0], len);
            assert!(first >= alpha, "{len} B: first bytes after {first:?}");
            assert!(last >= first);
        }
    }
}
