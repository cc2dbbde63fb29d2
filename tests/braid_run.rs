//! `braid-run` end to end: variables, prefixes, and stopping the job when a
//! rank fails.

use std::process::Command;
use std::time::{Duration, Instant};

const BRAID_RUN: &str = env!("CARGO_BIN_EXE_braid-run");

#[test]
fn every_rank_gets_its_variables_and_a_prefix() {
    let out = Command::new(BRAID_RUN)
        .args(["-n", "3", "--", "sh", "-c"])
        .arg("echo rank=$RANK of=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE at=$MASTER_ADDR:$MASTER_PORT token=${#BRAID_TOKEN}")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{text}");
    let port = lines[0]
        .split(':')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(port.parse::<u16>().unwrap() > 0);
    for (r, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("[{r}] rank={r} of=3 local={r}/3 at=127.0.0.1:{port} token=32"),
            "{text}"
        );
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_sets_the_exit_code() {
    let start = Instant::now();
    let out = Command::new(BRAID_RUN)
        .args([
            "-n",
            "4",
            "sh",
            "-c",
            "if [ $RANK = 2 ]; then echo bye >&2; exit 3; fi; sleep 60",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("[2] bye"), "{err}");
    assert!(err.contains("rank 2 failed"), "{err}");
}

#[test]
fn bad_usage_exits_2_with_help() {
    let out = Command::new(BRAID_RUN).args(["echo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: braid-run -n N"));
}

fn allowed_lists(extra: &[&str], n: usize) -> Vec<String> {
    let out = Command::new(BRAID_RUN)
        .args(["-n", &n.to_string()])
        .args(extra)
        .args(["--", "sh", "-c", "grep Cpus_allowed_list /proc/self/status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect();
    lines.sort();
    lines
}

#[test]
fn ranks_are_bound_to_one_cpu_each_unless_oversubscribed() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs at least 2 CPUs to bind 2 ranks");
        return;
    }
    // Two ranks, each on a CPU of its own.
    let bound = allowed_lists(&[], 2);
    assert_eq!(bound.len(), 2);
    assert_ne!(bound[0], bound[1], "{bound:?}");
    assert!(
        bound.iter().all(|l| l.parse::<usize>().is_ok()),
        "{bound:?}"
    );
    // Asked not to, or more ranks than CPUs: left to the scheduler.
    let free = allowed_lists(&["--bind", "none"], 2);
    assert!(free.iter().all(|l| l.parse::<usize>().is_err()), "{free:?}");
    let over = allowed_lists(&[], cpus + 1);
    assert!(over.iter().all(|l| l.parse::<usize>().is_err()), "{over:?}");
}
