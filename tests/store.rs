//! One conformance suite run against every store (memory, file, TCP over
//! loopback), then what is particular to the TCP store (tokens, misbehaving
//! clients, a server that goes away) and the file store (escaping, processes).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use braid::store::protocol::{self, Request, Response};
use braid::store::{FileStore, MemoryStore, Store, TcpStore, TcpStoreServer, MAX_VALUE_LEN};
use braid::ErrorKind;

/// A store under test plus a way to open more clients of the same store.
struct Fixture {
    store: Box<dyn Store>,
    new_client: Box<dyn Fn() -> Box<dyn Store> + Send + Sync>,
    _keep: Box<dyn std::any::Any>,
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "braid-store-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memory() -> Fixture {
    let m = MemoryStore::new();
    let m2 = m.clone();
    Fixture {
        store: Box::new(m),
        new_client: Box::new(move || Box::new(m2.clone())),
        _keep: Box::new(()),
    }
}

fn file() -> Fixture {
    let dir = TempDir::new("conf");
    let path = dir.0.join("store");
    let p2 = path.clone();
    Fixture {
        store: Box::new(FileStore::new(&path).unwrap()),
        new_client: Box::new(move || Box::new(FileStore::new(&p2).unwrap())),
        _keep: Box::new(dir),
    }
}

const TOKEN: &[u8] = b"job-token-for-tests";

fn loopback_server(token: Option<&[u8]>) -> TcpStoreServer {
    TcpStore::server("127.0.0.1:0".parse().unwrap(), token.map(<[u8]>::to_vec)).unwrap()
}

fn tcp() -> Fixture {
    let server = loopback_server(Some(TOKEN));
    let addr = server.local_addr().to_string();
    let connect = move || -> Box<dyn Store> {
        Box::new(
            TcpStore::connect(&addr, Some(TOKEN), soon(5000))
                .unwrap()
                .with_io_timeout(Duration::from_secs(10)),
        )
    };
    Fixture {
        store: connect(),
        new_client: Box::new(connect),
        _keep: Box::new(server),
    }
}

mod suite {
    use super::*;

    pub fn set_get_absent(f: Fixture) {
        let s = &f.store;
        assert_eq!(s.get("absent").unwrap(), None);
        s.set("k", b"v1").unwrap();
        assert_eq!(s.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
        s.set("k", b"v2").unwrap();
        assert_eq!(s.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
        s.set("empty", b"").unwrap();
        assert_eq!(s.get("empty").unwrap(), Some(vec![]));
        // Another client sees the same table.
        let other = (f.new_client)();
        assert_eq!(other.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
        // Keys with separators, dots and non-ASCII are ordinary keys.
        for key in ["rank/0/addr", "..", "../x", "a b", "é€", "%2F"] {
            s.set(key, key.as_bytes()).unwrap();
        }
        for key in ["rank/0/addr", "..", "../x", "a b", "é€", "%2F"] {
            assert_eq!(other.get(key).unwrap().unwrap(), key.as_bytes(), "{key}");
        }
        let e = s.set("", b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("empty"), "{e}");
    }

    pub fn wait_times_out_listing_missing(f: Fixture) {
        let s = &f.store;
        s.set("present", b"1").unwrap();
        let start = Instant::now();
        let e = s
            .wait(&["present", "missing/a", "missing/b"], soon(200))
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        let m = e.message();
        assert!(
            m.contains("\"missing/a\"") && m.contains("\"missing/b\""),
            "{e}"
        );
        assert!(!m.contains("\"present\""), "{e}");
        assert!(m.contains("2 of 3"), "{e}");
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // A deadline already past still checks once.
        s.wait(&["present"], Instant::now()).unwrap();
        assert_eq!(
            s.wait(&["missing/a"], Instant::now()).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        s.wait(&[], Instant::now()).unwrap();
    }

    pub fn wait_succeeds_when_set_later(f: Fixture) {
        let s = &f.store;
        let other = (f.new_client)();
        let start = Instant::now();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                other.set("late/1", b"one").unwrap();
                std::thread::sleep(Duration::from_millis(50));
                other.set("late/2", b"two").unwrap();
            });
            s.wait(&["late/1", "late/2"], soon(10_000)).unwrap();
            assert_eq!(s.get_wait("late/2", soon(1000)).unwrap(), b"two");
        });
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(140), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    pub fn add_is_atomic(f: Fixture) {
        const THREADS: usize = 8;
        const PER: usize = 100;
        let s = &f.store;
        let seen = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for t in 0..THREADS {
                let seen = &seen;
                let new_client = &f.new_client;
                sc.spawn(move || {
                    // Half share the fixture's client, half open their own.
                    let own;
                    let store: &dyn Store = if t % 2 == 0 {
                        &**s
                    } else {
                        own = new_client();
                        &*own
                    };
                    let mut mine = Vec::with_capacity(PER);
                    for _ in 0..PER {
                        mine.push(store.add("counter", 1).unwrap());
                    }
                    seen.lock().unwrap().extend(mine);
                });
            }
        });
        let total = (THREADS * PER) as i64;
        assert_eq!(
            s.get("counter").unwrap().unwrap(),
            total.to_string().as_bytes()
        );
        // Every increment returned a distinct value: 1..=total exactly.
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        assert_eq!(s.add("counter", -total).unwrap(), 0);
        assert_eq!(s.add("fresh", -7).unwrap(), -7);
        assert_eq!(s.add("fresh", 0).unwrap(), -7);
    }

    pub fn add_refuses_non_counters_and_overflow(f: Fixture) {
        let s = &f.store;
        s.set("text", b"hello").unwrap();
        let e = s.add("text", 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(
            e.message().contains("not a decimal integer") && e.message().contains("\"text\""),
            "{e}"
        );
        assert_eq!(s.get("text").unwrap().unwrap(), b"hello");
        s.set("big", i64::MAX.to_string().as_bytes()).unwrap();
        let e = s.add("big", 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.message().contains("overflows"), "{e}");
        // The client is still usable after a refused request.
        s.set("after", b"ok").unwrap();
        s.set("manual", b"41").unwrap();
        assert_eq!(s.add("manual", 1).unwrap(), 42);
    }

    pub fn binary_and_large_values(f: Fixture) {
        let s = &f.store;
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        s.set("bin", &all).unwrap();
        assert_eq!(s.get("bin").unwrap().unwrap(), all);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let big: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        s.set("big", &big).unwrap();
        let other = (f.new_client)();
        assert_eq!(other.get("big").unwrap().unwrap(), big);
        assert_eq!(other.get_wait("big", soon(1000)).unwrap(), big);
    }

    pub fn limits_are_the_same_everywhere(f: Fixture) {
        let s = &f.store;
        let e = s.set("huge", &vec![0u8; MAX_VALUE_LEN + 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("limit"), "{e}");
        let long = "k".repeat(braid::store::MAX_KEY_LEN + 1);
        for e in [
            s.set(&long, b"").unwrap_err(),
            s.get(&long).unwrap_err(),
            s.add(&long, 1).unwrap_err(),
            s.wait(&["ok", &long], soon(10)).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        }
        let longest = "k".repeat(braid::store::MAX_KEY_LEN);
        s.set(&longest, b"fits").unwrap();
        assert_eq!(s.get(&longest).unwrap().unwrap(), b"fits");
    }

    pub fn many_clients(f: Fixture) {
        const N: usize = 16;
        std::thread::scope(|sc| {
            for r in 0..N {
                let new_client = &f.new_client;
                sc.spawn(move || {
                    let c = new_client();
                    c.set(&format!("rank/{r}"), format!("addr-{r}").as_bytes())
                        .unwrap();
                    let keys: Vec<String> = (0..N).map(|p| format!("rank/{p}")).collect();
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    c.wait(&keys, soon(10_000)).unwrap();
                    for p in 0..N {
                        assert_eq!(
                            c.get(&format!("rank/{p}")).unwrap().unwrap(),
                            format!("addr-{p}").as_bytes()
                        );
                    }
                    c.add("joined", 1).unwrap();
                });
            }
        });
        assert_eq!(
            f.store.get("joined").unwrap().unwrap(),
            N.to_string().as_bytes()
        );
    }
}

macro_rules! conformance {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn set_get_absent() {
                suite::set_get_absent(super::$name());
            }
            #[test]
            fn wait_times_out_listing_missing() {
                suite::wait_times_out_listing_missing(super::$name());
            }
            #[test]
            fn wait_succeeds_when_set_later() {
                suite::wait_succeeds_when_set_later(super::$name());
            }
            #[test]
            fn add_is_atomic() {
                suite::add_is_atomic(super::$name());
            }
            #[test]
            fn add_refuses_non_counters_and_overflow() {
                suite::add_refuses_non_counters_and_overflow(super::$name());
            }
            #[test]
            fn binary_and_large_values() {
                suite::binary_and_large_values(super::$name());
            }
            #[test]
            fn limits_are_the_same_everywhere() {
                suite::limits_are_the_same_everywhere(super::$name());
            }
            #[test]
            fn many_clients() {
                suite::many_clients(super::$name());
            }
        }
    };
}

conformance!(memory);
conformance!(file);
conformance!(tcp);

// ---------------------------------------------------------------- TCP only

fn connect(addr: SocketAddr, token: Option<&[u8]>) -> braid::Result<TcpStore> {
    TcpStore::connect(&addr.to_string(), token, soon(3000))
}

#[test]
fn tcp_wrong_or_missing_token_is_rejected_clearly() {
    let server = loopback_server(Some(TOKEN));
    let addr = server.local_addr();
    let start = Instant::now();
    let e = connect(addr, Some(b"not-the-token")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.message().contains("rejected this rank's job token"),
        "{e}"
    );
    assert!(e.message().contains("BRAID_TOKEN"), "{e}");
    assert!(e.message().contains(&addr.to_string()), "{e}");
    let e = connect(addr, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains("requires a job token"), "{e}");
    // A wrong token fails at once: no retrying until the deadline.
    assert!(start.elapsed() < Duration::from_secs(2));
    // The right token still works.
    let ok = connect(addr, Some(TOKEN)).unwrap();
    ok.set("k", b"v").unwrap();

    // A client with a token refuses a server that asks for none.
    let open = loopback_server(None);
    let e = connect(open.local_addr(), Some(TOKEN)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains("asks for none"), "{e}");
    connect(open.local_addr(), None)
        .unwrap()
        .set("k", b"v")
        .unwrap();
}

/// Reads until the server closes the connection; panics if it stays open.
fn assert_closed_by_server(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server did not close the connection: {e}"),
    }
    got
}

/// A raw connection that has completed the handshake with a server without token.
fn raw_session(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = protocol::encode_request(&Request::Hello {
        version: protocol::VERSION,
        nonce: [3; protocol::NONCE_LEN],
    })
    .unwrap();
    s.write_all(&hello).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header) as usize;
    let mut frame = header.to_vec();
    frame.resize(4 + len, 0);
    s.read_exact(&mut frame[4..]).unwrap();
    match protocol::decode_response(&frame).unwrap() {
        Response::Challenge { auth_required, .. } => assert!(!auth_required),
        other => panic!("expected a challenge, got {other:?}"),
    }
    s
}

#[test]
fn tcp_misbehaving_clients_are_dropped_and_others_keep_working() {
    // Shows the server's warnings with --nocapture.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let server = loopback_server(None);
    let addr = server.local_addr();
    let good = connect(addr, None).unwrap();
    good.set("before", b"1").unwrap();
    std::thread::scope(|sc| {
        // A good client blocked in a wait all along.
        let waiter = sc.spawn(|| {
            let c = connect(addr, None).unwrap();
            c.get_wait("released", soon(10_000)).unwrap()
        });

        // Garbage before any handshake (an HTTP request: its first 4 bytes
        // announce a huge frame).
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_closed_by_server(s);
        good.set("after-garbage", b"1").unwrap();

        // Random bytes after a good handshake: a frame with an unknown opcode.
        let mut s = raw_session(addr);
        s.write_all(&[0, 0, 0, 3, 0xEE, 1, 2]).unwrap();
        let answer = assert_closed_by_server(s);
        match protocol::decode_response(&answer).unwrap() {
            Response::Error { code, message } => {
                assert_eq!(code, protocol::ErrorCode::BadRequest);
                assert!(message.contains("unknown request opcode"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(good.get("before").unwrap().unwrap(), b"1");

        // A truncated frame: 100 bytes announced, 10 sent, then the client
        // stops sending.
        let mut s = raw_session(addr);
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(&[0x10; 10]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_closed_by_server(s);
        assert_eq!(good.add("n", 1).unwrap(), 1);

        // An oversize length prefix after the handshake.
        let mut s = raw_session(addr);
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert_closed_by_server(s);
        // And one just over the limit, before it.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&((protocol::MAX_FRAME_LEN + 1) as u32).to_be_bytes())
            .unwrap();
        assert_closed_by_server(s);

        // A second hello in the same session.
        let mut s = raw_session(addr);
        let hello = protocol::encode_request(&Request::Hello {
            version: protocol::VERSION,
            nonce: [0; protocol::NONCE_LEN],
        })
        .unwrap();
        s.write_all(&hello).unwrap();
        assert_closed_by_server(s);

        // A client that connects and leaves without a word.
        drop(TcpStream::connect(addr).unwrap());

        // Everyone else was served all along.
        assert_eq!(good.add("n", 1).unwrap(), 2);
        good.set("released", b"yes").unwrap();
        assert_eq!(waiter.join().unwrap(), b"yes");
    });
}

#[test]
fn tcp_server_dropped_gives_errors_not_hangs() {
    let server = loopback_server(Some(TOKEN));
    let addr = server.local_addr();
    let client = connect(addr, Some(TOKEN)).unwrap();
    client.set("k", b"v").unwrap();
    std::thread::scope(|sc| {
        let waiting = sc.spawn(|| {
            let start = Instant::now();
            let e = client.wait(&["never"], soon(30_000)).unwrap_err();
            (e, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        let dropped = Instant::now();
        drop(server);
        assert!(
            dropped.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            dropped.elapsed()
        );
        let (e, took) = waiting.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(e.message().contains(&addr.to_string()), "{e}");
    });
    // Later calls fail quickly too (the pooled connection is dead, and a new
    // one is refused).
    for _ in 0..2 {
        let start = Instant::now();
        let e = client.get("k").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
        assert!(e.message().contains("rank 0"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    // The port is free again.
    TcpListener::bind(addr).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_connect_waits_for_a_late_server_and_times_out_clearly() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::thread::scope(|sc| {
        let client = sc.spawn(|| TcpStore::connect(&addr.to_string(), Some(TOKEN), soon(10_000)));
        std::thread::sleep(Duration::from_millis(300));
        let server = TcpStore::server(addr, Some(TOKEN.to_vec())).unwrap();
        let c = client.join().unwrap().unwrap();
        c.set("late", b"server").unwrap();
        drop(c);
        drop(server);
    });

    let start = Instant::now();
    let e = TcpStore::connect(&format!("127.0.0.1:{}", free_port()), None, soon(300)).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.message().contains("could not connect") && e.message().contains("MASTER_ADDR"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn tcp_every_resolved_address_is_tried() {
    use std::net::ToSocketAddrs;
    // `localhost` often resolves to ::1 first; the server listens on IPv4 only.
    let server = loopback_server(None);
    let port = server.local_addr().port();
    let name = format!("localhost:{port}");
    if name.to_socket_addrs().map(|a| a.count()).unwrap_or(0) == 0 {
        eprintln!("localhost does not resolve here; skipped");
        return;
    }
    let c = TcpStore::connect(&name, None, soon(3000)).unwrap();
    c.set("k", b"v").unwrap();
    assert!(c.server_addrs().iter().any(|a| a.is_ipv4()));
}

#[test]
fn tcp_ipv6_loopback() {
    let Ok(server) = TcpStore::server("[::1]:0".parse().unwrap(), Some(TOKEN.to_vec())) else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let addr = server.local_addr();
    assert!(addr.is_ipv6());
    let c = TcpStore::connect(&addr.to_string(), Some(TOKEN), soon(3000)).unwrap();
    c.set("v6", b"yes").unwrap();
    assert_eq!(c.get("v6").unwrap().unwrap(), b"yes");
}

#[test]
fn tcp_client_is_shared_between_threads_without_blocking() {
    // One thread waits on a key that a second thread sets through the same
    // client: each call has its own connection, so no deadlock.
    let server = loopback_server(None);
    let c = connect(server.local_addr(), None).unwrap();
    std::thread::scope(|sc| {
        let w = sc.spawn(|| c.get_wait("x", soon(5000)));
        std::thread::sleep(Duration::from_millis(100));
        c.set("x", b"1").unwrap();
        assert_eq!(w.join().unwrap().unwrap(), b"1");
    });
}

#[test]
fn tcp_server_bind_errors_are_clear() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = TcpStore::server(taken.local_addr().unwrap(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains("MASTER_PORT"), "{e}");
    let e = TcpStore::server("127.0.0.1:0".parse().unwrap(), Some(vec![])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

// --------------------------------------------------------------- file only

#[test]
fn file_keys_stay_inside_the_directory() {
    let dir = TempDir::new("escape");
    let root = dir.0.join("store");
    let s = FileStore::new(&root).unwrap();
    for key in [
        "../outside",
        "/abs",
        "a/../../b",
        ".lock",
        ".tmp-1",
        &"/".repeat(300),
    ] {
        s.set(key, b"x").unwrap();
        assert_eq!(s.get(key).unwrap().unwrap(), b"x");
    }
    s.add("c", 1).unwrap();
    let outside: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(outside.len(), 1, "only the store directory: {outside:?}");
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == ".lock" || name.starts_with("k-") || name.starts_with("h-"),
            "{name}"
        );
    }
}

#[test]
fn file_store_on_a_file_is_a_config_error() {
    let dir = TempDir::new("notdir");
    let f = dir.0.join("plain");
    std::fs::write(&f, b"").unwrap();
    let e = FileStore::new(&f).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains(&f.display().to_string()), "{e}");
}

const CHILD_DIR: &str = "BRAID_STORE_TEST_CHILD_DIR";
const CHILD_ADDS: i64 = 200;

/// Runs only as a child of `file_add_is_atomic_across_processes`.
#[test]
fn file_add_child() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let s = FileStore::new(Path::new(&dir)).unwrap();
        for _ in 0..CHILD_ADDS {
            s.add("procs", 1).unwrap();
        }
    }
}

#[test]
fn file_add_is_atomic_across_processes() {
    let dir = TempDir::new("procs");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "file_add_child", "--test-threads=1"])
                .env(CHILD_DIR, &dir.0)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let s = FileStore::new(&dir.0).unwrap();
    for _ in 0..CHILD_ADDS {
        s.add("procs", 1).unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        s.get("procs").unwrap().unwrap(),
        (3 * CHILD_ADDS).to_string().as_bytes()
    );
}

#[test]
fn fuzz_seed_corpus_matches_the_protocol() {
    // fuzz/corpus/store_protocol holds hand-made frames (req_*, resp_*):
    // they must stay valid as the protocol evolves.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/store_protocol");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if name.starts_with("req_") {
            let r = protocol::decode_request(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(protocol::encode_request(&r).unwrap(), bytes, "{name}");
        } else if name.starts_with("resp_") {
            let r = protocol::decode_response(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(protocol::encode_response(&r).unwrap(), bytes, "{name}");
        }
    }
}
