//! Starting ranks as processes of the test binary itself: the binary re-runs
//! its `rank_main` test with `BRAID_TEST_ROLE` set, and these helpers start,
//! watch and (at a limit) kill those processes.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rank `rank` of `size`, all on this host, as torchrun describes them,
/// with the store at 127.0.0.1:`port`.
pub fn local_launch(rank: usize, size: usize, port: u16) -> braid::launch::LaunchInfo {
    braid::launch::LaunchInfo {
        rank,
        size,
        local_rank: rank,
        local_size: size,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        launcher: braid::launch::Launcher::Torchrun,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rank_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "rank_main", "--nocapture", "--test-threads", "1"])
        .env("BRAID_TEST_ROLE", role)
        .env("BRAID_TIMEOUT", "20")
        // TCP unless a test asks for another transport (auto would pick
        // shared memory for ranks on one host).
        .env("BRAID_TRANSPORT", "tcp")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `RANK<r>:NAME` → (r, NAME): a variable for rank r only.
fn per_rank(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("RANK")?;
    let (r, name) = rest.split_once(':')?;
    Some((r.parse().ok()?, name))
}

/// Starts `n` ranks directly (no launcher), torchrun-style variables;
/// `env` entries named `RANK<r>:NAME` go to rank r only.
pub fn spawn_ranks(n: usize, role: &str, env: &[(&str, String)]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..n)
        .map(|rank| {
            let mut cmd = rank_command(role);
            cmd.env("RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("BRAID_TOKEN", "multiprocess-test-token");
            for (k, v) in env {
                if let Some((only, key)) = per_rank(k) {
                    if rank == only {
                        cmd.env(key, v);
                    }
                } else {
                    cmd.env(k, v);
                }
            }
            cmd.spawn().unwrap()
        })
        .collect()
}

/// Waits for every child, killing all of them at `limit`; returns
/// (exit code, stdout, stderr) per rank.
pub fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<(Option<i32>, String, String)> {
    let deadline = Instant::now() + limit;
    let mut children: Vec<Child> = children;
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut out = c.stdout.take().unwrap();
            let mut err = c.stderr.take().unwrap();
            std::thread::spawn(move || {
                let (mut o, mut e) = (String::new(), String::new());
                let _ = out.read_to_string(&mut o);
                let _ = err.read_to_string(&mut e);
                (o, e)
            })
        })
        .collect();
    let mut codes = vec![None; children.len()];
    loop {
        let mut running = false;
        for (i, c) in children.iter_mut().enumerate() {
            if codes[i].is_none() {
                match c.try_wait().unwrap() {
                    Some(s) => codes[i] = Some(s.code().unwrap_or(-1)),
                    None => running = true,
                }
            }
        }
        if !running {
            break;
        }
        if Instant::now() > deadline {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            panic!("ranks still running after {limit:?}: the job hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    readers
        .into_iter()
        .zip(codes)
        .map(|(r, code)| {
            let (o, e) = r.join().unwrap();
            (code, o, e)
        })
        .collect()
}

/// braid's segments in /dev/shm (the shm transport unlinks them once mapped).
pub fn braid_segments() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("braid-"))
                .collect()
        })
        .unwrap_or_default()
}
