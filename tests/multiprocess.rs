//! Ranks in separate processes over loopback TCP: every collective exact at
//! N = 2, 3, 4 and 8 (started directly and through `braid-run`), and the
//! failures a real job meets — a rank killed with SIGKILL, a peer that stops
//! reading, ranks calling different collectives, strangers on the store port.
//! Every test is bounded in time: ranks run with a short BRAID_TIMEOUT and
//! the test kills whatever outlives its limit.
//!
//! This test binary is also the rank program: started with BRAID_TEST_ROLE
//! set, `rank_main` plays that role instead of testing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid::{Algorithm, Collective, Communicator, ReduceOp};
use common::ranks::{braid_segments, free_port, rank_command, spawn_ranks, wait_all};
use common::{sweep_comm, MOVING, REDUCING};

const BRAID_RUN: &str = env!("CARGO_BIN_EXE_braid-run");

/// One rank's part, when this binary runs as a rank.
#[test]
fn rank_main() {
    let Ok(role) = std::env::var("BRAID_TEST_ROLE") else {
        return;
    };
    if let Ok(ms) = std::env::var("BRAID_TEST_DELAY_MS") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
    }
    let mut comm = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            println!("INIT ERROR: {e}");
            std::process::exit(4);
        }
    };
    let rank = comm.rank();
    let code = match role.as_str() {
        "sweep" => {
            let counts: &[usize] = if comm.size() > 4 {
                &[0, 1, 13, 1031]
            } else {
                &[0, 1, 2, 7, 13, 1031, 70_001]
            };
            let mut failures = sweep_comm(&mut comm, &REDUCING, false, counts);
            failures.extend(sweep_comm(&mut comm, &MOVING, false, counts));
            for f in &failures {
                println!("FAIL {f}");
            }
            if failures.is_empty() {
                println!("SWEEP OK rank {rank}");
                0
            } else {
                1
            }
        }
        "loop" => {
            comm.set_algorithm(Collective::AllReduce, Some(Algorithm::Ring))
                .unwrap();
            let send = vec![1.0f32; 64 << 10];
            let mut recv = vec![0.0f32; 64 << 10];
            comm.all_reduce(&send, &mut recv, ReduceOp::Sum).unwrap();
            println!("READY");
            std::io::stdout().flush().unwrap();
            loop {
                if let Err(e) = comm.all_reduce(&send, &mut recv, ReduceOp::Sum) {
                    println!("ERROR {:?}: {e}", e.kind());
                    break 3;
                }
            }
        }
        "stop_reading" => {
            comm.set_algorithm(Collective::AllReduce, Some(Algorithm::Ring))
                .unwrap();
            if rank == 1 {
                // Alive, connected, but not taking part for a long while.
                std::thread::sleep(Duration::from_secs(6));
                0
            } else {
                let send = vec![1u8; 64 << 20];
                let mut recv = vec![0u8; 64 << 20];
                match comm.all_reduce(&send, &mut recv, ReduceOp::Sum) {
                    Ok(()) => 0,
                    Err(e) => {
                        println!("ERROR {:?}: {e}", e.kind());
                        3
                    }
                }
            }
        }
        "mismatch" => {
            let result = if rank == 0 {
                comm.all_reduce(&[1.0f32; 16], &mut [0.0; 16], ReduceOp::Sum)
            } else {
                comm.broadcast(&mut [2.0f32; 16], 1)
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    println!("ERROR {:?}: {e}", e.kind());
                    3
                }
            }
        }
        other => panic!("unknown BRAID_TEST_ROLE {other}"),
    };
    std::process::exit(code);
}

fn assert_sweep_ok(results: &[(Option<i32>, String, String)]) {
    for (rank, (code, out, err)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{out}\n{err}");
        assert!(
            out.contains(&format!("SWEEP OK rank {rank}")),
            "rank {rank}:\n{out}\n{err}"
        );
    }
}

#[test]
fn every_collective_exact_across_processes() {
    for n in [2, 3, 4, 8] {
        let results = wait_all(spawn_ranks(n, "sweep", &[]), Duration::from_secs(240));
        assert_sweep_ok(&results);
    }
}

#[test]
fn every_collective_exact_through_braid_run() {
    // Three ranks with the default transport (auto: all on this host, so
    // shared memory), four over TCP.
    let _one_at_a_time = SHM_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    for (n, transport) in [(3, "auto"), (4, "tcp")] {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(BRAID_RUN);
        if transport != "auto" {
            cmd.env("BRAID_TRANSPORT", transport);
        }
        let out = cmd
            .args(["-n", &n.to_string(), "--"])
            .arg(exe)
            .args(["--exact", "rank_main", "--nocapture", "--test-threads", "1"])
            .env("BRAID_TEST_ROLE", "sweep")
            .env("BRAID_TIMEOUT", "20")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let results = wait_all(vec![out], Duration::from_secs(240));
        let (code, stdout, stderr) = &results[0];
        assert_eq!(*code, Some(0), "{stdout}\n{stderr}");
        for rank in 0..n {
            // The test harness starts the line ("test rank_main ... ").
            let prefix = format!("[{rank}] ");
            let ok = format!("SWEEP OK rank {rank}");
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&prefix) && l.contains(&ok)),
                "{stdout}\n{stderr}"
            );
        }
    }
}

#[test]
fn a_rank_killed_mid_all_reduce_fails_every_survivor_quickly() {
    kill_one_rank_mid_all_reduce(&[]);
}

/// The shared-memory tests check that /dev/shm holds no braid segment after
/// their job; run one at a time so neither sees the other's job mid-setup.
static SHM_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_collective_exact_over_shared_memory() {
    let _one_at_a_time = SHM_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    // The rings at every size, and at N = 4 messages from 1 KiB read
    // straight out of the sender's memory (single copy).
    for (n, single_copy) in [(2, "off"), (3, "off"), (4, "off"), (8, "off"), (4, "1K")] {
        let env = [
            ("BRAID_TRANSPORT", "shm".to_string()),
            ("BRAID_SHM_CMA", single_copy.to_string()),
        ];
        let results = wait_all(spawn_ranks(n, "sweep", &env), Duration::from_secs(240));
        assert_sweep_ok(&results);
    }
    assert_eq!(
        braid_segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

#[test]
fn a_rank_killed_mid_all_reduce_over_shared_memory_leaves_nothing_behind() {
    let _one_at_a_time = SHM_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    kill_one_rank_mid_all_reduce(&[("BRAID_TRANSPORT", "shm".into())]);
    assert_eq!(
        braid_segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

/// Two "hosts" told apart by BRAID_HOST_ID: shared memory inside each,
/// TCP between them, every collective exact; what each rank chose is logged.
#[test]
fn a_mixed_group_uses_shared_memory_within_a_host_and_tcp_across() {
    let _one_at_a_time = SHM_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    // Four ranks as {0, 1} and {2, 3}; five interleaved as {0, 2, 4} and {1, 3}.
    for (n, host_of) in [(4, (|r| r / 2) as fn(usize) -> usize), (5, |r| r % 2)] {
        let mut env: Vec<(String, String)> = vec![
            ("BRAID_TRANSPORT".into(), "auto".into()),
            ("BRAID_DEBUG".into(), "info".into()),
        ];
        for r in 0..n {
            env.push((
                format!("RANK{r}:BRAID_HOST_ID"),
                format!("host-{}", host_of(r)),
            ));
        }
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let results = wait_all(spawn_ranks(n, "sweep", &env), Duration::from_secs(240));
        assert_sweep_ok(&results);
        for (r, (_, _, err)) in results.iter().enumerate() {
            let (here, there): (Vec<usize>, Vec<usize>) = (0..n)
                .filter(|&p| p != r)
                .partition(|&p| host_of(p) == host_of(r));
            let line = format!("shared memory to ranks {here:?}, TCP to ranks {there:?}");
            assert!(err.contains(&line), "rank {r} should log '{line}':\n{err}");
            assert!(err.contains("transport=\"mixed\""), "rank {r}:\n{err}");
        }
    }
    assert_eq!(
        braid_segments(),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

#[test]
fn an_unknown_transport_is_a_clear_error() {
    let results = wait_all(
        spawn_ranks(2, "sweep", &[("BRAID_TRANSPORT", "carrier-pigeon".into())]),
        Duration::from_secs(60),
    );
    for (code, out, err) in &results {
        assert_eq!(*code, Some(4), "{out}\n{err}");
        assert!(
            out.contains("BRAID_TRANSPORT='carrier-pigeon'") && out.contains("auto, tcp, shm"),
            "{out}"
        );
    }
}

fn kill_one_rank_mid_all_reduce(env: &[(&str, String)]) {
    let mut env = env.to_vec();
    env.push(("BRAID_TIMEOUT", "60".into()));
    let mut children = spawn_ranks(4, "loop", &env);
    // Wait until every rank is inside the all-reduce loop.
    let mut stdouts: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for (rank, out) in stdouts.iter_mut().enumerate() {
        // Skip the test harness's own lines.
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "rank {rank} ended before READY: {seen}"
            );
            seen.push_str(&line);
            if line.contains("READY") {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let killed_at = Instant::now();
    children[2].kill().unwrap(); // SIGKILL
    let _ = children[2].wait();
    for (rank, (child, out)) in children.iter_mut().zip(stdouts.iter_mut()).enumerate() {
        if rank == 2 {
            continue;
        }
        let mut rest = String::new();
        let deadline = killed_at + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                out.read_to_string(&mut rest).unwrap();
                assert_eq!(status.code(), Some(3), "rank {rank}: {rest}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rank {rank} still running 30 s after its peer died"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            rest.contains("ERROR PeerFailed") || rest.contains("ERROR Transport"),
            "rank {rank}: {rest}"
        );
    }
    // Survivors noticed long before the 60 s timeout.
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed_at.elapsed()
    );
}

#[test]
fn a_peer_that_stops_reading_is_a_timeout_naming_it() {
    let start = Instant::now();
    let results = wait_all(
        spawn_ranks(2, "stop_reading", &[("BRAID_TIMEOUT", "1.5".into())]),
        Duration::from_secs(60),
    );
    let (code, out, err) = &results[0];
    assert_eq!(*code, Some(3), "{out}\n{err}");
    assert!(out.contains("ERROR Timeout"), "{out}");
    assert!(out.contains("ranks [1] did not answer"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn ranks_calling_different_collectives_get_a_mismatch() {
    let results = wait_all(
        spawn_ranks(2, "mismatch", &[("BRAID_TIMEOUT", "3".into())]),
        Duration::from_secs(60),
    );
    let (code, out, err) = &results[0];
    assert_eq!(*code, Some(3), "{out}\n{err}");
    assert!(out.contains("ERROR Mismatch"), "{out}");
    assert!(out.contains("rank 1 is in broadcast #0"), "{out}");
}

#[test]
fn strangers_on_the_store_port_do_not_disturb_the_job() {
    let port = free_port();
    // Rank 1 starts late; meanwhile strangers knock on rank 0's store port.
    let mut children: Vec<Child> = (0..2)
        .map(|rank| {
            let mut cmd = rank_command("sweep");
            cmd.env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("BRAID_TOKEN", "the-real-token");
            if rank == 1 {
                cmd.env("BRAID_TEST_DELAY_MS", "1500");
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let addr = format!("127.0.0.1:{port}");
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(&addr) {
                Ok(s) => return s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("store never listened: {e}"),
            }
        }
    };
    // Garbage, a truncated frame, and a frame claiming to be huge.
    let mut s = connect();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s2 = connect();
    let _ = s2.write_all(&[0, 0, 0, 40, 1, 2]);
    drop(s2);
    let mut s3 = connect();
    let _ = s3.write_all(&u32::MAX.to_be_bytes());
    let _ = s3.write_all(&u32::MAX.to_le_bytes());
    drop(s3);
    let results = wait_all(std::mem::take(&mut children), Duration::from_secs(240));
    drop(s);
    assert_sweep_ok(&results);
}

/// Two network namespaces joined by a veth pair: 10.77.0.1 and 10.77.0.2,
/// as on two hosts. Removed again on drop (deleting a namespace removes its
/// end of the veth pair, and with it the other end).
struct NetnsPair {
    names: [String; 2],
}

impl NetnsPair {
    fn create() -> Result<NetnsPair, String> {
        let tag = format!("braid{}", std::process::id() % 100_000);
        let pair = NetnsPair {
            names: [format!("{tag}a"), format!("{tag}b")],
        };
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let [a, b] = &pair.names;
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", a])?;
        ip(&["link", "set", &vb, "netns", b])?;
        ip(&["-n", a, "addr", "add", "10.77.0.1/24", "dev", &va])?;
        ip(&["-n", b, "addr", "add", "10.77.0.2/24", "dev", &vb])?;
        for (ns, dev) in [(a, &va), (b, &vb)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn ranks_in_separate_network_namespaces() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !has_ip {
        eprintln!("skipped: needs root and iproute2 to create network namespaces (root: {root}, ip: {has_ip})");
        return;
    }
    let pair = match NetnsPair::create() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: cannot create network namespaces here: {e}");
            return;
        }
    };
    let port = "29517";
    let exe = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &pair.names[rank]])
                .arg(&exe)
                .args(["--exact", "rank_main", "--nocapture", "--test-threads", "1"])
                .env("BRAID_TEST_ROLE", "sweep")
                .env("BRAID_TIMEOUT", "20")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "10.77.0.1")
                .env("MASTER_PORT", port)
                .env("BRAID_TOKEN", "netns-test-token")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let results = wait_all(children, Duration::from_secs(240));
    assert_sweep_ok(&results);
    drop(pair);
}
