//! `braid-run -n N [--] cmd args...`: starts N ranks of `cmd` on this machine.
//!
//! Each rank gets the torchrun-style variables braid (and torch) read —
//! RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT —
//! with a free port, plus a fresh BRAID_TOKEN (unless one is set) so the job's
//! connections authenticate. Output lines are prefixed with `[rank]`. When a
//! rank fails, the others are stopped and braid-run exits with its status.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The signal (SIGINT, SIGTERM) braid-run received, 0 if none.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Each rank runs in its own process group (so that killing a rank also kills
/// what it started); Ctrl-C therefore reaches braid-run only, which passes
/// the stop on to every rank.
fn forward_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe; the function pointer has the C ABI signal() expects.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Kills a rank's whole process group.
fn kill_group(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a negative pid signals that process group; the
    // group is the rank's own (process_group(0) at spawn), never ours.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.kill();
}

const USAGE: &str =
    "usage: braid-run -n N [--port PORT] [--bind core|none] [--no-prefix] [--] command [args...]

Starts N ranks of `command` on this machine with RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT (a free port unless --port)
and BRAID_TOKEN (random unless set) in their environment. Output lines are
prefixed with [rank]. If a rank exits non-zero, the others are killed and
braid-run exits with that rank's status.

--bind core (the default) pins rank r to the r-th CPU braid-run may use, as
mpirun does, when there are at least N of them; with more ranks than CPUs
(or --bind none) ranks are left to the scheduler.

For several machines use the launcher you have: srun, mpirun, or a torchrun-style
Kubernetes job; braid reads their variables (see README).";

#[derive(Debug)]
struct Args {
    ranks: usize,
    port: Option<u16>,
    bind: bool,
    prefix: bool,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut ranks = None;
    let mut port = None;
    let mut prefix = true;
    let mut bind = true;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let value = |i: usize| args.get(i + 1).cloned().ok_or(format!("{a} needs a value"));
        match a {
            "-n" | "--np" | "--nproc" => {
                let v = value(i)?;
                ranks = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or(format!("-n takes a rank count >= 1, got '{v}'"))?,
                );
                i += 2;
            }
            "--port" => {
                let v = value(i)?;
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("--port takes a port number, got '{v}'"))?,
                );
                i += 2;
            }
            "--bind" => {
                bind = match value(i)?.as_str() {
                    "core" => true,
                    "none" => false,
                    other => return Err(format!("--bind takes core or none, got '{other}'")),
                };
                i += 2;
            }
            "--no-prefix" => {
                prefix = false;
                i += 1;
            }
            "-h" | "--help" => return Err(String::new()),
            "--" => {
                i += 1;
                break;
            }
            s if s.starts_with('-') && ranks.is_none() => {
                return Err(format!("unknown flag '{s}'"))
            }
            _ => break,
        }
    }
    let command: Vec<String> = args[i..].to_vec();
    let ranks = ranks.ok_or("missing -n N")?;
    if command.is_empty() {
        return Err("missing the command to run".into());
    }
    Ok(Args {
        ranks,
        port,
        bind,
        prefix,
        command,
    })
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data (zeroed is a valid empty set), and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the child to `cpu` between fork and exec.
fn bind_to(cmd: &mut Command, cpu: usize) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls sched_setaffinity, a plain system call (async-signal-safe), on a
    // stack-local set; a failure is ignored (the rank just runs unbound).
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Still unique per job: time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` to `to` line by line, each line prefixed.
fn pump(
    from: impl Read + Send + 'static,
    to: Arc<Mutex<dyn Write + Send>>,
    prefix: Option<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut out = to.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(p) = &prefix {
                        let _ = out.write_all(p.as_bytes());
                    }
                    let _ = out.write_all(&line);
                    if !line.ends_with(b"\n") {
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                }
            }
        }
    })
}

fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(1, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(1, 255) as u8,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("braid-run: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let port = match args.port.map_or_else(free_port, Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("braid-run: cannot find a free port on 127.0.0.1: {e}");
            return ExitCode::from(1);
        }
    };
    forward_stop_signals();
    let token = std::env::var("BRAID_TOKEN").unwrap_or_else(|_| random_token());
    let stdout: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let stderr: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stderr()));
    let mut children: Vec<Child> = Vec::new();
    let mut pumps = Vec::new();
    // One CPU per rank when there are enough (as mpirun binds); oversubscribed
    // ranks are left to the scheduler.
    let cpus = allowed_cpus();
    let bind = args.bind && cpus.len() >= args.ranks;
    for rank in 0..args.ranks {
        let mut command = Command::new(&args.command[0]);
        if let Some(&cpu) = cpus.get(rank).filter(|_| bind) {
            bind_to(&mut command, cpu);
        }
        let spawned = command
            .args(&args.command[1..])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.ranks.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.ranks.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("BRAID_TOKEN", &token)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let prefix = args.prefix.then(|| format!("[{rank}] "));
                if let Some(out) = child.stdout.take() {
                    pumps.push(pump(out, Arc::clone(&stdout), prefix.clone()));
                }
                if let Some(err) = child.stderr.take() {
                    pumps.push(pump(err, Arc::clone(&stderr), prefix));
                }
                children.push(child);
            }
            Err(e) => {
                eprintln!(
                    "braid-run: cannot start '{}' for rank {rank}: {e}",
                    args.command[0]
                );
                for c in &mut children {
                    kill_group(c);
                    let _ = c.wait();
                }
                return ExitCode::from(127);
            }
        }
    }
    let mut exit = 0u8;
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    while running.iter().any(Option::is_some) {
        let sig = STOP_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 && exit == 0 {
            eprintln!("braid-run: stopped by signal {sig}; stopping every rank");
            exit = (128 + sig) as u8;
            for child in running.iter_mut().flatten() {
                kill_group(child);
            }
        }
        for rank in 0..running.len() {
            let Some(child) = running[rank].as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    running[rank] = None;
                    if !status.success() && exit == 0 {
                        exit = status_code(status);
                        eprintln!(
                            "braid-run: rank {rank} failed ({status}); stopping the other ranks"
                        );
                        for other in running.iter_mut().flatten() {
                            kill_group(other);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("braid-run: lost track of rank {rank}: {e}");
                    running[rank] = None;
                    exit = exit.max(1);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in pumps {
        let _ = p.join();
    }
    ExitCode::from(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_counts_ports_and_the_command() {
        let a = parse(&args("-n 4 -- echo hi")).unwrap();
        assert_eq!((a.ranks, a.port, a.prefix), (4, None, true));
        assert_eq!(a.command, vec!["echo", "hi"]);
        let a = parse(&args("-n 2 --port 2999 --no-prefix prog --flag")).unwrap();
        assert_eq!(
            (a.ranks, a.port, a.prefix, a.bind),
            (2, Some(2999), false, true)
        );
        assert_eq!(a.command, vec!["prog", "--flag"]);
        let a = parse(&args("-n 2 --bind none prog")).unwrap();
        assert!(!a.bind);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        assert!(parse(&args("echo")).unwrap_err().contains("missing -n"));
        assert!(parse(&args("-n 0 echo")).unwrap_err().contains(">= 1"));
        assert!(parse(&args("-n 2"))
            .unwrap_err()
            .contains("missing the command"));
        assert!(parse(&args("--bogus -n 2 x"))
            .unwrap_err()
            .contains("unknown flag"));
        assert!(parse(&args("-n 2 --port x y"))
            .unwrap_err()
            .contains("port number"));
    }
}
