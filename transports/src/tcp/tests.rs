//! Loopback tests of the TCP transport: streams, striping, handshakes and
//! failures. Every wait has a deadline; nothing here leaves loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::handshake::{self, Challenge, Hello, PROTOCOL_VERSION};
use super::*;
use crate::{Transport, TransportError};

const JOB: u64 = 0x0b4a_1d00_0000_0001;
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn auth() -> JobAuth {
    JobAuth {
        job_id: JOB,
        token: b"braid test token".to_vec(),
    }
}

fn opts(k: usize) -> TcpOptions {
    TcpOptions {
        sockets_per_peer: k,
        interfaces: InterfaceFilter::only(["lo"]),
        spin: Duration::from_micros(20),
        connect_timeout: Duration::from_secs(3),
        ..TcpOptions::default()
    }
}

/// `n` connected transports on `ip`, established concurrently.
fn group(n: usize, o: &TcpOptions, ip: IpAddr) -> Vec<TcpTransport> {
    let listeners: Vec<TcpListenerSet> = (0..n).map(|_| listen_on(&[ip], o).unwrap()).collect();
    let peers: Vec<Vec<SocketAddr>> = listeners.iter().map(|l| l.addresses()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (peers, o) = (peers.clone(), o.clone());
            thread::spawn(move || l.establish(rank, n, &peers, &auth(), &o, deadline))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect()
}

/// The bytes rank `from` streams to rank `to`: position-dependent with a long
/// period, so a lost, doubled or misplaced segment shows.
fn pattern(from: usize, to: usize, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ ((from as u64) << 40) ^ ((to as u64) << 20);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Offer sizes the senders cycle through (odd, small and large).
const OFFERS: [usize; 8] = [1, 7, 40, 1000, 65_537, 300_001, 1 << 20, 3];

struct Flow {
    peer: usize,
    out: Vec<u8>,
    sent: usize,
    offer: usize,
    expect: Vec<u8>,
    got: usize,
    turn: usize,
}

/// Streams `len`-byte patterns to and from every peer at once. The first
/// `prefix` bytes are received one byte at a time, the rest in `granule`s,
/// so that elements straddle stripe segments.
fn exchange(t: &mut TcpTransport, len: usize, prefix: usize, granule: usize, deadline: Instant) {
    let me = t.rank();
    let mut flows: Vec<Flow> = (0..t.size())
        .filter(|&p| p != me)
        .map(|peer| Flow {
            peer,
            out: pattern(me, peer, len),
            sent: 0,
            offer: peer,
            expect: pattern(peer, me, len),
            got: 0,
            turn: 0,
        })
        .collect();
    loop {
        let mut progressed = false;
        let mut done = true;
        for f in flows.iter_mut() {
            if f.sent < len {
                done = false;
                // Re-offer from the first byte not taken, cut in two parts at
                // a varying point, like a header and a payload.
                let size = OFFERS[f.offer % OFFERS.len()].min(len - f.sent);
                let cut = (f.sent * 31 + 17) % (size + 1);
                let offered = &f.out[f.sent..f.sent + size];
                let taken = t.send(f.peer, &[&offered[..cut], &offered[cut..]]).unwrap();
                assert!(taken <= size);
                f.sent += taken;
                f.offer += 1;
                progressed |= taken > 0;
            }
            if f.got < len {
                done = false;
                let (g, max) = if f.got < prefix {
                    (1, prefix - f.got)
                } else {
                    let limits = [granule, 3 * granule, 1000 * granule, usize::MAX];
                    f.turn += 1;
                    (granule, limits[f.turn % limits.len()].min(len - f.got))
                };
                let (expect, got, peer) = (&f.expect, &mut f.got, f.peer);
                let n = t
                    .recv(peer, max, g, &mut |b| {
                        assert_eq!(
                            b.len() % g,
                            0,
                            "a slice of {} bytes at granule {g}",
                            b.len()
                        );
                        let at = *got;
                        if b != &expect[at..at + b.len()] {
                            let bad = (0..b.len()).find(|&i| b[i] != expect[at + i]).unwrap_or(0);
                            panic!(
                                "rank {me} from {peer}: wrong byte at stream offset {}",
                                at + bad
                            );
                        }
                        *got += b.len();
                    })
                    .unwrap();
                assert!(n <= max);
                progressed |= n > 0;
            }
        }
        if done {
            return;
        }
        if !progressed {
            assert!(
                Instant::now() < deadline,
                "rank {me}: no progress by the deadline"
            );
            t.wait(deadline).unwrap();
        }
    }
}

/// A group of `n` on `ip`, every pair streaming about `mb` MB both ways.
fn all_pairs(n: usize, k: usize, granule: usize, ip: IpAddr, mb: usize) {
    let started = Instant::now();
    let o = opts(k);
    let transports = group(n, &o, ip);
    let prefix = 5;
    let len = prefix + (mb << 20) / granule * granule + 3 * granule;
    let deadline = Instant::now() + Duration::from_secs(60);
    let handles: Vec<_> = transports
        .into_iter()
        .map(|mut t| {
            thread::spawn(move || {
                exchange(&mut t, len, prefix, granule, deadline);
                t
            })
        })
        .collect();
    // Keep every transport until all are done, then drop them together.
    let done: Vec<TcpTransport> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(done
        .iter()
        .all(|t| t.sockets_per_peer() == k && t.name() == "tcp"));
    eprintln!(
        "{n} ranks, {k} sockets per peer, granule {granule}: {} directed streams of {len} bytes in {:?}",
        n * (n - 1),
        started.elapsed()
    );
}

#[test]
fn two_ranks_one_socket_granule_2() {
    all_pairs(2, 1, 2, V4, 4);
}

#[test]
fn two_ranks_three_sockets_granule_8() {
    all_pairs(2, 3, 8, V4, 4);
}

#[test]
fn three_ranks_three_sockets_granule_4() {
    all_pairs(3, 3, 4, V4, 3);
}

#[test]
fn four_ranks_one_socket_granule_8() {
    all_pairs(4, 1, 8, V4, 2);
}

#[test]
fn four_ranks_three_sockets_granule_2() {
    all_pairs(4, 3, 2, V4, 2);
}

#[test]
fn ipv6_loopback() {
    if let Err(e) = listen_on(&[V6], &opts(1)) {
        eprintln!("skipped: cannot listen on [::1] ({e}); IPv6 is off on this host");
        return;
    }
    all_pairs(2, 2, 4, V6, 2);
}

#[test]
fn listen_uses_the_chosen_interfaces() {
    let o = opts(1);
    let set = listen(&o).unwrap();
    let addrs = set.addresses();
    assert!(!addrs.is_empty());
    assert!(
        addrs.iter().all(|a| a.ip().is_loopback() && a.port() != 0),
        "{addrs:?}"
    );
    assert!(addrs[0].is_ipv4(), "IPv4 first: {addrs:?}");
    let none = TcpOptions {
        interfaces: "=no-such-if9".parse().unwrap(),
        ..opts(1)
    };
    let e = listen(&none).unwrap_err().to_string();
    assert!(e.contains("picks none of this host's interfaces"), "{e}");

    // A rank that listens on every loopback address is reachable.
    let other = listen_on(&[V4], &o).unwrap();
    let peers = vec![addrs, other.addresses()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let p = peers.clone();
    let h = thread::spawn(move || set.establish(0, 2, &p, &auth(), &opts(1), deadline));
    let mut b = other
        .establish(1, 2, &peers, &auth(), &o, deadline)
        .unwrap();
    let mut a = h.join().unwrap().unwrap();
    assert_eq!(b.send(0, &[b"hi"]).unwrap(), 2);
    let mut got = Vec::new();
    while got.len() < 2 {
        a.wait(deadline).unwrap();
        a.recv(1, 2, 1, &mut |s| got.extend_from_slice(s)).unwrap();
        assert!(Instant::now() < deadline);
    }
    assert_eq!(got, b"hi");
}

fn hello(job_id: u64, rank: u32, size: u32, socket_index: u16) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        sockets_per_peer: 1,
        job_id,
        rank,
        size,
        socket_index,
        nonce: [3; 32],
    }
}

/// Whether the other end closes this connection within a few seconds.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn impostors_are_refused_and_the_real_peer_still_connects() {
    let o = opts(1);
    let acceptor = listen_on(&[V4], &o).unwrap();
    let connector = listen_on(&[V4], &o).unwrap();
    let target = acceptor.addresses()[0];
    // A fake acceptor with the wrong token, listed before the real one.
    let fake = std::net::TcpListener::bind((V4, 0)).unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let peers = vec![vec![fake_addr, target], connector.addresses()];
    let deadline = Instant::now() + Duration::from_secs(15);

    let p = peers.clone();
    let accepting =
        thread::spawn(move || acceptor.establish(0, 2, &p, &auth(), &opts(1), deadline));

    // Garbage: closed.
    let mut garbage = TcpStream::connect(target).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: braid\r\n\r\n0123456789012345678901234567890123456789")
        .unwrap();
    assert!(closed_by_peer(&mut garbage), "garbage was not refused");

    // Another job: closed before any challenge.
    let mut stranger = TcpStream::connect(target).unwrap();
    stranger
        .write_all(&hello(JOB + 1, 1, 2, 0).encode())
        .unwrap();
    assert!(
        closed_by_peer(&mut stranger),
        "a hello of another job was not refused"
    );

    // The right job but the wrong token: gets a challenge it cannot verify,
    // and its proof is refused.
    let mut wrong = TcpStream::connect(target).unwrap();
    let h = hello(JOB, 1, 2, 0);
    wrong.write_all(&h.encode()).unwrap();
    let mut frame = [0u8; handshake::CHALLENGE_BYTES];
    wrong
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    wrong.read_exact(&mut frame).unwrap();
    let challenge = Challenge::decode(&frame).unwrap();
    assert!(handshake::verify_challenge(b"guess", &h, &challenge, 0).is_err());
    assert!(handshake::verify_challenge(&auth().token, &h, &challenge, 0).is_ok());
    let proof = handshake::make_proof(b"guess", &h, &challenge);
    wrong.write_all(&proof.encode()).unwrap();
    assert!(closed_by_peer(&mut wrong), "a wrong token was not refused");

    // A truncated hello left hanging: must not hold the real peer up.
    let mut truncated = TcpStream::connect(target).unwrap();
    truncated
        .write_all(&hello(JOB, 1, 2, 0).encode()[..30])
        .unwrap();

    // The fake acceptor answers with a challenge made with a wrong token;
    // the real connector must refuse it (no proof) and move on.
    let faking = thread::spawn(move || {
        let (mut s, _) = fake.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut frame = [0u8; handshake::HELLO_BYTES];
        s.read_exact(&mut frame).unwrap();
        let h = Hello::decode(&frame).unwrap();
        let c = handshake::make_challenge(b"not the token", &h, 0, [1; 32]);
        s.write_all(&c.encode()).unwrap();
        // The connector closes without sending a proof.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        rest.len()
    });

    let started = Instant::now();
    let mut b = connector
        .establish(1, 2, &peers, &auth(), &o, deadline)
        .unwrap();
    let mut a = accepting.join().unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the real peer waited {took:?}"
    );
    assert_eq!(
        faking.join().unwrap(),
        0,
        "a proof was sent to a fake acceptor"
    );
    assert!(closed_by_peer(&mut truncated));

    // Data flows on the real connection.
    assert_eq!(b.send(0, &[b"real ", b"data"]).unwrap(), 9);
    let mut got = Vec::new();
    while got.len() < 9 {
        a.wait(deadline).unwrap();
        a.recv(1, 9, 1, &mut |s| got.extend_from_slice(s)).unwrap();
        assert!(Instant::now() < deadline);
    }
    assert_eq!(got, b"real data");
}

#[test]
fn a_late_acceptor_still_gets_its_peers() {
    // The connector's attempts sit unanswered in the late rank's backlog,
    // time out and retry; when the late rank starts, the stale ones are
    // dropped and the live ones connect.
    let o = TcpOptions {
        connect_timeout: Duration::from_millis(150),
        ..opts(2)
    };
    let late = listen_on(&[V4], &o).unwrap();
    let early = listen_on(&[V4], &o).unwrap();
    let peers = vec![late.addresses(), early.addresses()];
    let deadline = Instant::now() + Duration::from_secs(15);
    let (p, o2) = (peers.clone(), o.clone());
    let connecting = thread::spawn(move || early.establish(1, 2, &p, &auth(), &o2, deadline));
    thread::sleep(Duration::from_millis(700));
    let mut a = late.establish(0, 2, &peers, &auth(), &o, deadline).unwrap();
    let mut b = connecting.join().unwrap().unwrap();
    assert!(Instant::now() < deadline);
    // Both sockets of the pair carry the stream (it spans two segments).
    let data = pattern(1, 0, SEGMENT_BYTES + 1000);
    let mut sent = 0;
    let mut got = Vec::new();
    while got.len() < data.len() {
        sent += b.send(0, &[&data[sent..]]).unwrap();
        a.recv(1, usize::MAX, 1, &mut |s| got.extend_from_slice(s))
            .unwrap();
        assert!(Instant::now() < deadline);
        if got.len() < data.len() {
            a.wait(Instant::now() + Duration::from_millis(5)).unwrap();
        }
    }
    assert!(got == data);
}

#[test]
fn a_missing_peer_fails_at_the_deadline_naming_it() {
    let o = TcpOptions {
        connect_timeout: Duration::from_millis(200),
        ..opts(2)
    };
    let acceptor = listen_on(&[V4], &o).unwrap();
    // Rank 1 is published on a port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind((V4, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let peers = vec![acceptor.addresses(), vec![closed], vec![closed]];
    let started = Instant::now();
    let e = acceptor
        .establish(
            0,
            3,
            &peers,
            &auth(),
            &o,
            started + Duration::from_millis(300),
        )
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("ranks [1, 2]") && msg.contains("0 of 4 sockets"),
        "{msg}"
    );
    assert!(matches!(e, TransportError::Io { peer: 1, .. }));

    // A connector facing a closed port says so.
    let me = listen_on(&[V4], &o).unwrap();
    let peers = vec![vec![closed], me.addresses()];
    let e = me
        .establish(
            1,
            2,
            &peers,
            &auth(),
            &o,
            Instant::now() + Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("ranks [0]") && e.contains("refused"), "{e}");
}

#[test]
fn a_dropped_peer_is_reported_quickly() {
    for k in [1, 2] {
        let mut ts = group(2, &opts(k), V4);
        let mut leaver = ts.pop().unwrap();
        let mut stayer = ts.pop().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let sender = thread::spawn(move || {
            // Half a megabyte of a longer message, then gone.
            let data = vec![7u8; 512 << 10];
            let mut sent = 0;
            while sent < data.len() {
                sent += leaver.send(0, &[&data[sent..]]).unwrap();
                if sent < data.len() {
                    leaver.wait(deadline).unwrap();
                }
            }
            drop(leaver);
            Instant::now()
        });
        let mut got = 0usize;
        let err = loop {
            match stayer.recv(1, usize::MAX, 4, &mut |b| got += b.len()) {
                Ok(0) => {
                    assert!(Instant::now() < deadline, "no error by the deadline");
                    stayer.wait(deadline).unwrap();
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        let dropped_at = sender.join().unwrap();
        let noticed = dropped_at.elapsed();
        assert_eq!(err, TransportError::PeerClosed { peer: 1 });
        assert!(
            noticed < Duration::from_secs(2),
            "noticed after {noticed:?}"
        );
        assert_eq!(got, 512 << 10, "k={k}");
        // Sending to it fails too, soon.
        let until = Instant::now() + Duration::from_secs(5);
        let e = loop {
            match stayer.send(1, &[&[1u8; 4096]]) {
                Ok(_) => {
                    assert!(
                        Instant::now() < until,
                        "sends to a closed peer kept succeeding"
                    );
                    stayer
                        .wait(Instant::now() + Duration::from_millis(10))
                        .unwrap();
                }
                Err(e) => break e,
            }
        };
        assert_eq!(e, TransportError::PeerClosed { peer: 1 });
        assert!(matches!(
            stayer.send(5, &[b"x"]),
            Err(TransportError::NoSuchPeer { peer: 5, size: 2 })
        ));
        assert!(matches!(
            stayer.recv(0, 1, 1, &mut |_| {}),
            Err(TransportError::Io { peer: 0, .. })
        ));
    }
}

#[test]
fn a_peer_that_stops_reading_stalls_the_sender() {
    let mut ts = group(2, &opts(2), V4);
    let silent = ts.pop().unwrap();
    let mut sender = ts.pop().unwrap();
    let chunk = vec![1u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut total = 0usize;
    // Offer until the buffers refuse more for a while.
    let mut refused_since: Option<Instant> = None;
    loop {
        let n = sender.send(1, &[&chunk]).unwrap();
        total += n;
        assert!(
            total < 256 << 20,
            "the transport keeps taking bytes nobody reads"
        );
        if n > 0 {
            refused_since = None;
            continue;
        }
        let since = *refused_since.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(Instant::now() < deadline);
        sender
            .wait(Instant::now() + Duration::from_millis(50))
            .unwrap();
    }
    eprintln!("the sender stalled after {} KiB", total >> 10);
    // Now wait() sleeps until its deadline and send() still takes nothing.
    let start = Instant::now();
    sender.wait(start + Duration::from_millis(200)).unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(sender.send(1, &[&chunk]).unwrap(), 0);

    // The silent peer goes away with unread data (a reset): the stalled
    // sender hears of it soon, not at some deadline.
    drop(silent);
    let dropped = Instant::now();
    let e = loop {
        match sender.send(1, &[&chunk]) {
            Ok(_) => {
                assert!(dropped.elapsed() < Duration::from_secs(5), "no error");
                sender
                    .wait(Instant::now() + Duration::from_secs(5))
                    .unwrap();
            }
            Err(e) => break e,
        }
    };
    assert_eq!(e, TransportError::PeerClosed { peer: 1 });
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "{:?}",
        dropped.elapsed()
    );
}

#[test]
fn a_group_of_one_needs_no_connections() {
    let o = opts(2);
    let set = listen_on(&[V4], &o).unwrap();
    let peers = vec![set.addresses()];
    let started = Instant::now();
    let mut t = set
        .establish(0, 1, &peers, &auth(), &o, started + Duration::from_secs(5))
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!((t.rank(), t.size()), (0, 1));
    t.wait(Instant::now() + Duration::from_millis(10)).unwrap();
    assert!(matches!(
        t.send(1, &[b"x"]),
        Err(TransportError::NoSuchPeer { peer: 1, size: 1 })
    ));
}

/// Loopback throughput for the default of `sockets_per_peer`:
/// `cargo test -p braid-transports --release -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput_loopback() {
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 256 << 10;
    for buffer in [0, 4 << 20] {
        for k in [1, 2, 4] {
            let mut rates = Vec::new();
            for _ in 0..7 {
                let o = TcpOptions {
                    socket_buffer_bytes: buffer,
                    spin: DEFAULT_SPIN,
                    ..opts(k)
                };
                let mut ts = group(2, &o, V4);
                let mut rx = ts.pop().unwrap();
                let mut tx = ts.pop().unwrap();
                // Buffers written once, so no page faults are timed.
                let data = vec![5u8; TOTAL];
                let mut dst = vec![1u8; TOTAL];
                let deadline = Instant::now() + Duration::from_secs(60);
                let start = Instant::now();
                let sender = thread::spawn(move || {
                    // Like the executor: chunk_bytes pieces of one big buffer,
                    // offered from the first byte not taken.
                    let mut sent = 0;
                    while sent < TOTAL {
                        let end = TOTAL.min(sent + CHUNK);
                        let n = tx.send(1, &[&data[sent..end]]).unwrap();
                        sent += n;
                        if n == 0 {
                            tx.wait(deadline).unwrap();
                        }
                    }
                    tx
                });
                // The receiver copies into its destination, as a receive does.
                let mut got = 0usize;
                while got < TOTAL {
                    let n = rx
                        .recv(0, TOTAL - got, 4, &mut |b| {
                            dst[got..got + b.len()].copy_from_slice(b);
                            got += b.len();
                        })
                        .unwrap();
                    if n == 0 {
                        assert!(Instant::now() < deadline);
                        rx.wait(deadline).unwrap();
                    }
                }
                let sum: u64 = dst.iter().step_by(4096).map(|&b| b as u64).sum();
                let secs = start.elapsed().as_secs_f64();
                let _tx = sender.join().unwrap();
                assert!(sum > 0);
                rates.push(TOTAL as f64 / secs / 1e6);
            }
            rates.sort_by(f64::total_cmp);
            eprintln!(
                "throughput: sockets_per_peer {k}, socket buffer {}: median {:.0} MB/s, best {:.0} MB/s (7 runs of 64 MiB)",
                if buffer == 0 { "kernel".to_string() } else { format!("{} MiB", buffer >> 20) },
                rates[3],
                rates[6]
            );
        }
    }
}

/// Round-trip time of an 8-byte ping-pong, with and without busy-polling:
/// `cargo test -p braid-transports -- --ignored --nocapture latency`.
#[test]
#[ignore]
fn latency_loopback() {
    const ROUNDS: usize = 5000;
    for spin in [Duration::ZERO, Duration::from_micros(10), DEFAULT_SPIN] {
        let o = TcpOptions { spin, ..opts(1) };
        let mut ts = group(2, &o, V4);
        let mut b = ts.pop().unwrap();
        let mut a = ts.pop().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        fn bounce(t: &mut TcpTransport, to: usize, deadline: Instant) {
            let mut got = 0;
            while got < 8 {
                got += t.recv(to, 8 - got, 8, &mut |_| {}).unwrap();
                if got < 8 {
                    assert!(Instant::now() < deadline);
                    t.wait(deadline).unwrap();
                }
            }
        }
        let echo = thread::spawn(move || {
            for _ in 0..ROUNDS {
                bounce(&mut b, 0, deadline);
                assert_eq!(b.send(0, &[&[0u8; 8]]).unwrap(), 8);
            }
            b
        });
        let mut rtts = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            assert_eq!(a.send(1, &[&[0u8; 8]]).unwrap(), 8);
            bounce(&mut a, 1, deadline);
            rtts.push(t0.elapsed());
        }
        let _b = echo.join().unwrap();
        rtts.sort();
        eprintln!(
            "latency: spin {spin:?}: median round trip {:?}, p90 {:?} ({ROUNDS} rounds of 8 bytes)",
            rtts[ROUNDS / 2],
            rtts[ROUNDS * 9 / 10]
        );
    }
}

/// Three ranks where only 0–2 and 1–2 talk TCP (0 and 1 would share a host):
/// those pairs stream, 0 → 1 is refused with a clear error; a rank that
/// wrongly connects to a peer expecting it elsewhere is turned away.
#[test]
fn a_subset_of_peers_over_tcp() {
    let o = opts(1);
    let listeners: Vec<TcpListenerSet> = (0..3).map(|_| listen_on(&[V4], &o).unwrap()).collect();
    let peers: Vec<Vec<SocketAddr>> = listeners.iter().map(|l| l.addresses()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let tcp_peers = [vec![2], vec![2], vec![0, 1]];
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (peers, o, mine) = (peers.clone(), o.clone(), tcp_peers[rank].clone());
            thread::spawn(move || l.establish_with(rank, 3, &mine, &peers, &auth(), &o, deadline))
        })
        .collect();
    let mut ts: Vec<TcpTransport> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let err = ts[0].send(1, &[b"x"]).unwrap_err().to_string();
    assert!(err.contains("not connected over TCP"), "{err}");
    for from in [0, 1] {
        assert_eq!(ts[from].send(2, &[&[from as u8; 3]]).unwrap(), 3);
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = ts[2]
                .recv(from, 3 - got.len(), 1, &mut |b| got.extend_from_slice(b))
                .unwrap();
            if n == 0 {
                ts[2].wait(deadline).unwrap();
            }
        }
        assert_eq!(got, [from as u8; 3]);
    }

    // Rank 1 wants TCP with rank 0, but rank 0 reaches 1 another way.
    let listeners: Vec<TcpListenerSet> = (0..2).map(|_| listen_on(&[V4], &o).unwrap()).collect();
    let peers: Vec<Vec<SocketAddr>> = listeners.iter().map(|l| l.addresses()).collect();
    let mut it = listeners.into_iter();
    let (l0, l1) = (it.next().unwrap(), it.next().unwrap());
    let deadline = Instant::now() + Duration::from_secs(2);
    let p = peers.clone();
    let o2 = o.clone();
    let h0 = thread::spawn(move || l0.establish_with(0, 2, &[], &p, &auth(), &o2, deadline));
    let r1 = l1.establish_with(1, 2, &[0], &peers, &auth(), &o, deadline);
    assert!(h0.join().unwrap().is_ok(), "rank 0 needs nobody over TCP");
    let Err(err) = r1 else {
        panic!("rank 1 cannot connect to a rank that does not want it");
    };
    let err = err.to_string();
    assert!(err.contains("rank 0") || err.contains("[0]"), "{err}");
    assert!(err.contains("no authenticated connection"), "{err}");
}

/// Receives straight into the caller's buffer, interleaved with lent
/// receives (which leave bytes in the transport's buffer): the stream stays
/// whole and in order, with one socket per peer and with striping.
#[test]
fn receiving_into_place_keeps_the_stream_whole() {
    for k in [1, 3] {
        let mut ts = group(2, &opts(k), V4);
        let mut b = ts.pop().unwrap();
        let mut a = ts.pop().unwrap();
        let len = 3_000_017;
        let data = pattern(0, 1, len);
        let expect = data.clone();
        let sender = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sent = 0;
            while sent < len {
                let n = a.send(1, &[&data[sent..(sent + 70_001).min(len)]]).unwrap();
                sent += n;
                if n == 0 {
                    a.wait(deadline).unwrap();
                }
            }
            a
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = vec![0u8; len];
        let mut at = 0usize;
        let mut turn = 0usize;
        while at < len {
            turn += 1;
            let n = if turn % 3 == 0 {
                let want = (len - at).min(4099);
                let mut w = at;
                b.recv(0, want, 1, &mut |s| {
                    got[w..w + s.len()].copy_from_slice(s);
                    w += s.len();
                })
                .unwrap()
            } else {
                let end = (at + 500_009).min(len);
                b.recv_into(0, &mut got[at..end]).unwrap()
            };
            at += n;
            if n == 0 {
                assert!(Instant::now() < deadline, "stalled at {at}");
                b.wait(deadline).unwrap();
            }
        }
        assert!(got == expect, "sockets per peer {k}: stream differs");
        drop(sender.join().unwrap());
    }
}
