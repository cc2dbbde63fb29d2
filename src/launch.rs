//! Who am I: rank, size and the rendezvous address, read from the environment
//! that the launcher (torchrun, braid-run, Kubernetes, Slurm, Open MPI, PMI)
//! gives every process, and the [`Store`] the ranks meet in.
//!
//! | launcher | rank / size | local rank / size | rendezvous |
//! |---|---|---|---|
//! | torchrun, braid-run, Kubernetes | `RANK`, `WORLD_SIZE` | `LOCAL_RANK`, `LOCAL_WORLD_SIZE` (both or neither: 0 of 1) | `MASTER_ADDR`, `MASTER_PORT` |
//! | Slurm (`srun`) | `SLURM_PROCID`, `SLURM_NTASKS` | `SLURM_LOCALID`; `SLURM_STEP_TASKS_PER_NODE`, `SLURM_TASKS_PER_NODE` (e.g. `4(x2),3`, indexed by `SLURM_NODEID`) or `SLURM_NTASKS_PER_NODE` | `MASTER_ADDR` or the first host of `SLURM_STEP_NODELIST` / `SLURM_NODELIST` / `SLURM_JOB_NODELIST`; `MASTER_PORT` or 20000 + `SLURM_JOB_ID` % 20000 |
//! | Open MPI (`mpirun`) | `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE` | `MASTER_ADDR`, `MASTER_PORT` (required) |
//! | PMI (MPICH, Intel MPI `mpiexec`) | `PMI_RANK`, `PMI_SIZE` | `PMI_LOCAL_RANK` / `MPI_LOCALRANKID` with `PMI_LOCAL_SIZE` / `MPI_LOCALNRANKS` (or neither: 0 of 1) | `MASTER_ADDR`, `MASTER_PORT` (required) |
//!
//! When several launchers' variables are present, each pair must agree: the
//! same rank and size, or one launcher nested in the other (torchrun started
//! by one `srun` task per node: `WORLD_SIZE` = k × `SLURM_NTASKS` and
//! `RANK` / k = `SLURM_PROCID`), in which case the inner launcher, the one
//! with more ranks, describes this process. Between equals, the order is
//! torchrun-style variables, Slurm, Open MPI, PMI. Anything else is a
//! contradiction and an error; `BRAID_LAUNCHER=torchrun|slurm|openmpi|pmi`
//! reads one launcher's variables and ignores the others.
//!
//! Empty variables count as unset. Errors are [`ErrorKind::Config`] and list
//! the variables found (`NAME=value`) and what is needed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::store::{FileStore, Store, TcpStore, TcpStoreServer};
use crate::{Error, ErrorKind, Result};

/// This process's place in the job, as the launcher describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchInfo {
    /// Rank in the job, `0..size`.
    pub rank: usize,
    /// Number of ranks in the job.
    pub size: usize,
    /// Rank among the ranks on this machine, `0..local_size` (pick a GPU with it).
    pub local_rank: usize,
    /// Number of ranks on this machine.
    pub local_size: usize,
    /// Host (name or IP) where rank 0 hosts the TCP store.
    pub master_addr: String,
    /// Port of the TCP store.
    pub master_port: u16,
    /// Which launcher's variables were used.
    pub launcher: Launcher,
}

/// The launcher whose variables describe this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Launcher {
    /// `RANK` / `WORLD_SIZE` / `MASTER_ADDR`...: torchrun, braid-run,
    /// Kubernetes training operators, or set by hand.
    Torchrun,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, ...).
    Slurm,
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A PMI launcher: MPICH's or Intel MPI's `mpiexec` (`PMI_RANK`, `PMI_SIZE`).
    Pmi,
}

impl Launcher {
    /// All launchers, in precedence order.
    pub const ALL: [Launcher; 4] = [
        Launcher::Torchrun,
        Launcher::Slurm,
        Launcher::OpenMpi,
        Launcher::Pmi,
    ];

    /// The name used by `BRAID_LAUNCHER` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "slurm",
            Launcher::OpenMpi => "openmpi",
            Launcher::Pmi => "pmi",
        }
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for LaunchInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {} (local {} of {}) from {}, store at {}",
            self.rank,
            self.size,
            self.local_rank,
            self.local_size,
            self.launcher,
            host_port(&self.master_addr, self.master_port)
        )
    }
}

/// Reads this process's launch information from its environment.
pub fn detect() -> Result<LaunchInfo> {
    detect_from(&process_env)
}

/// [`detect`] over any variable source (`env(name)` returns the value, `None`
/// when unset), for tests and embedding programs.
pub fn detect_from(env: &dyn Fn(&str) -> Option<String>) -> Result<LaunchInfo> {
    let env = Env(env);
    let forced = match env.get("BRAID_LAUNCHER") {
        None => None,
        Some(v) => Some(
            Launcher::ALL
                .into_iter()
                .find(|l| l.name().eq_ignore_ascii_case(&v))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Config,
                        format!(
                            "BRAID_LAUNCHER='{v}' is not a launcher; use torchrun, slurm, \
                             openmpi or pmi (or unset it to detect the launcher)"
                        ),
                    )
                })?,
        ),
    };
    let mut claims = Vec::new();
    for launcher in Launcher::ALL {
        if forced.is_some_and(|f| f != launcher) {
            continue;
        }
        if let Some(c) = claim(&env, launcher)? {
            claims.push(c);
        }
    }
    if claims.is_empty() {
        return Err(match forced {
            Some(l) => Error::new(
                ErrorKind::Config,
                format!(
                    "BRAID_LAUNCHER={l} but none of its variables are set ({}); {}",
                    found(&env, vars_of(l)),
                    needs(l)
                ),
            ),
            None => Error::new(
                ErrorKind::Config,
                "no launcher variables found (none of RANK, WORLD_SIZE, SLURM_PROCID, \
                 OMPI_COMM_WORLD_RANK, PMI_RANK is set): start the program with braid-run, \
                 torchrun, srun, mpirun or mpiexec, or export RANK, WORLD_SIZE, MASTER_ADDR \
                 and MASTER_PORT",
            ),
        });
    }
    // Every pair must agree or nest; the innermost (most ranks) wins, ties by precedence.
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            let agree = a.rank == b.rank && a.size == b.size;
            if !agree && !nested(a, b) && !nested(b, a) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "contradictory launcher variables: {} says rank {} of {} ({}) but {} \
                         says rank {} of {} ({}), and neither launcher runs inside the other; \
                         unset the stale variables (left over from another job?), or set \
                         BRAID_LAUNCHER={} or BRAID_LAUNCHER={} to use one of them",
                        a.launcher,
                        a.rank,
                        a.size,
                        a.vars,
                        b.launcher,
                        b.rank,
                        b.size,
                        b.vars,
                        a.launcher,
                        b.launcher
                    ),
                ));
            }
        }
    }
    let chosen = claims
        .iter()
        .enumerate()
        .max_by_key(|(i, c)| (c.size, std::cmp::Reverse(*i)))
        .map(|(_, c)| c)
        .unwrap_or(&claims[0]);
    if claims.len() > 1 {
        tracing::debug!(
            launcher = %chosen.launcher,
            others = ?claims.iter().map(|c| c.launcher).collect::<Vec<_>>(),
            "braid launch: several launchers' variables found; using the innermost"
        );
    }
    finish(&env, chosen)
}

/// Whether `inner` runs inside `outer`: each of outer's tasks started
/// `inner.size / outer.size` of inner's ranks, in blocks.
fn nested(inner: &Claim, outer: &Claim) -> bool {
    inner.size > outer.size
        && inner.size % outer.size == 0
        && inner.rank / (inner.size / outer.size) == outer.rank
}

/// Rank and size as one launcher states them.
struct Claim {
    launcher: Launcher,
    rank: usize,
    size: usize,
    /// `NAME=value` of the variables the claim rests on, for messages.
    vars: String,
}

fn vars_of(l: Launcher) -> &'static [&'static str] {
    match l {
        Launcher::Torchrun => &[
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        ],
        Launcher::Slurm => &[
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "SLURM_NPROCS",
            "SLURM_LOCALID",
            "SLURM_NODEID",
            "SLURM_STEP_TASKS_PER_NODE",
            "SLURM_TASKS_PER_NODE",
            "SLURM_NTASKS_PER_NODE",
            "SLURM_STEP_NODELIST",
            "SLURM_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_JOB_ID",
            "SLURM_JOBID",
            "MASTER_ADDR",
            "MASTER_PORT",
        ],
        Launcher::OpenMpi => &[
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        ],
        Launcher::Pmi => &[
            "PMI_RANK",
            "PMI_SIZE",
            "PMI_LOCAL_RANK",
            "PMI_LOCAL_SIZE",
            "MPI_LOCALRANKID",
            "MPI_LOCALNRANKS",
            "MASTER_ADDR",
            "MASTER_PORT",
        ],
    }
}

fn needs(l: Launcher) -> &'static str {
    match l {
        Launcher::Torchrun => {
            "needed: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (LOCAL_RANK with \
             LOCAL_WORLD_SIZE, or neither); start the program with torchrun or braid-run, or \
             export them"
        }
        Launcher::Slurm => {
            "needed: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_TASKS_PER_NODE (with \
             SLURM_NODEID) or SLURM_NTASKS_PER_NODE, and SLURM_JOB_NODELIST or MASTER_ADDR, \
             SLURM_JOB_ID or MASTER_PORT; run the program under srun (not directly in the \
             batch script)"
        }
        Launcher::OpenMpi => {
            "needed: OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK, \
             OMPI_COMM_WORLD_LOCAL_SIZE (set by mpirun), and MASTER_ADDR and MASTER_PORT, \
             which Open MPI does not provide: export them to every rank, e.g. \
             mpirun -x MASTER_ADDR=<rank 0's host> -x MASTER_PORT=<free port>"
        }
        Launcher::Pmi => {
            "needed: PMI_RANK, PMI_SIZE (set by mpiexec), and MASTER_ADDR and MASTER_PORT, \
             which PMI does not provide: export them to every rank, e.g. \
             mpiexec -genv MASTER_ADDR <rank 0's host> -genv MASTER_PORT <free port>"
        }
    }
}

/// Variables of the environment; empty values count as unset.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The first of `names` that is set, with its name.
    fn first(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// `NAME=value, ...` for every variable of `names` that is set.
fn found(env: &Env, names: &[&str]) -> String {
    let list: Vec<String> = names
        .iter()
        .filter_map(|n| env.get(n).map(|v| format!("{n}={}", shorten(&v))))
        .collect();
    if list.is_empty() {
        "found none of them".into()
    } else {
        format!("found {}", list.join(", "))
    }
}

fn shorten(v: &str) -> String {
    if v.chars().count() <= 60 {
        v.to_owned()
    } else {
        format!("{}...", v.chars().take(60).collect::<String>())
    }
}

fn incomplete(env: &Env, l: Launcher, what: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "incomplete {l} environment: {what}; {}; {}",
            found(env, vars_of(l)),
            needs(l)
        ),
    )
}

fn parse_count(env: &Env, l: Launcher, name: &str, value: &str) -> Result<usize> {
    value.parse::<usize>().map_err(|_| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{name}='{}' is not a non-negative integer; {}; {}",
                shorten(value),
                found(env, vars_of(l)),
                needs(l)
            ),
        )
    })
}

/// A required count: missing → incomplete, non-numeric → error.
fn required(env: &Env, l: Launcher, names: &[&'static str]) -> Result<(usize, &'static str)> {
    match env.first(names) {
        Some((name, v)) => Ok((parse_count(env, l, name, &v)?, name)),
        None => Err(incomplete(
            env,
            l,
            &format!("{} is not set", names.join(" or ")),
        )),
    }
}

/// Rank and size of launcher `l`, `None` when none of its marker variables is set.
fn claim(env: &Env, l: Launcher) -> Result<Option<Claim>> {
    let (rank_vars, size_vars): (&[&'static str], &[&'static str]) = match l {
        Launcher::Torchrun => (&["RANK"], &["WORLD_SIZE"]),
        Launcher::Slurm => (&["SLURM_PROCID"], &["SLURM_NTASKS", "SLURM_NPROCS"]),
        Launcher::OpenMpi => (&["OMPI_COMM_WORLD_RANK"], &["OMPI_COMM_WORLD_SIZE"]),
        Launcher::Pmi => (&["PMI_RANK"], &["PMI_SIZE"]),
    };
    // Slurm's size variables are set in batch scripts too: only a task
    // (SLURM_PROCID) makes a Slurm launch.
    let marked =
        env.first(rank_vars).is_some() || (l != Launcher::Slurm && env.first(size_vars).is_some());
    if !marked {
        return Ok(None);
    }
    let (rank, rank_name) = required(env, l, rank_vars)?;
    let (size, size_name) = required(env, l, size_vars)?;
    let vars = format!("{rank_name}={rank}, {size_name}={size}");
    if size == 0 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{size_name}=0: a job needs at least one rank; {}",
                found(env, vars_of(l))
            ),
        ));
    }
    if rank >= size {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{rank_name}={rank} is not below {size_name}={size}: ranks run from 0 to {}; \
                 the launcher's variables are inconsistent ({})",
                size - 1,
                found(env, vars_of(l))
            ),
        ));
    }
    Ok(Some(Claim {
        launcher: l,
        rank,
        size,
        vars,
    }))
}

/// Local rank and size, master address and port of the chosen claim.
fn finish(env: &Env, c: &Claim) -> Result<LaunchInfo> {
    let l = c.launcher;
    let (local_rank, local_size) = match l {
        Launcher::Torchrun => {
            optional_pair(env, l, &["LOCAL_RANK"], &["LOCAL_WORLD_SIZE"])?.unwrap_or((0, 1))
        }
        Launcher::Slurm => (
            required(env, l, &["SLURM_LOCALID"])?.0,
            slurm_local_size(env)?,
        ),
        Launcher::OpenMpi => (
            required(env, l, &["OMPI_COMM_WORLD_LOCAL_RANK"])?.0,
            required(env, l, &["OMPI_COMM_WORLD_LOCAL_SIZE"])?.0,
        ),
        Launcher::Pmi => optional_pair(
            env,
            l,
            &["PMI_LOCAL_RANK", "MPI_LOCALRANKID"],
            &["PMI_LOCAL_SIZE", "MPI_LOCALNRANKS"],
        )?
        .unwrap_or((0, 1)),
    };
    if local_size == 0 || local_rank >= local_size || local_size > c.size {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "local rank {local_rank} of {local_size} does not fit a job of {} ranks (the \
                 local rank must be below the local size, which must be 1 to the job size); \
                 {}",
                c.size,
                found(env, vars_of(l))
            ),
        ));
    }
    let master_addr = match env.get("MASTER_ADDR") {
        Some(a) => a,
        None if l == Launcher::Slurm => {
            let (name, list) = env
                .first(&[
                    "SLURM_STEP_NODELIST",
                    "SLURM_NODELIST",
                    "SLURM_JOB_NODELIST",
                ])
                .ok_or_else(|| {
                    incomplete(env, l, "neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
                })?;
            first_host(&list).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "{name}='{}': {e}; set MASTER_ADDR to rank 0's host instead",
                        shorten(&list)
                    ),
                )
            })?
        }
        None => return Err(incomplete(env, l, "MASTER_ADDR is not set")),
    };
    let master_port = match env.get("MASTER_PORT") {
        Some(p) => parse_port(&p)?,
        None if l == Launcher::Slurm => {
            let (name, id) = env
                .first(&["SLURM_JOB_ID", "SLURM_JOBID"])
                .ok_or_else(|| incomplete(env, l, "neither MASTER_PORT nor SLURM_JOB_ID is set"))?;
            let id: u64 = id.parse().map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "{name}='{}' is not a number, so no port can be derived from it; set \
                         MASTER_PORT",
                        shorten(&id)
                    ),
                )
            })?;
            (20000 + id % 20000) as u16
        }
        None => return Err(incomplete(env, l, "MASTER_PORT is not set")),
    };
    Ok(LaunchInfo {
        rank: c.rank,
        size: c.size,
        local_rank,
        local_size,
        master_addr,
        master_port,
        launcher: l,
    })
}

/// Both of a (rank, size) pair, or neither (`None`); one alone is an error.
fn optional_pair(
    env: &Env,
    l: Launcher,
    rank_vars: &[&'static str],
    size_vars: &[&'static str],
) -> Result<Option<(usize, usize)>> {
    match (env.first(rank_vars), env.first(size_vars)) {
        (None, None) => Ok(None),
        (Some((rn, rv)), Some((sn, sv))) => Ok(Some((
            parse_count(env, l, rn, &rv)?,
            parse_count(env, l, sn, &sv)?,
        ))),
        (Some((rn, _)), None) => Err(incomplete(
            env,
            l,
            &format!("{rn} is set but {} is not", size_vars.join(" / ")),
        )),
        (None, Some((sn, _))) => Err(incomplete(
            env,
            l,
            &format!("{sn} is set but {} is not", rank_vars.join(" / ")),
        )),
    }
}

fn slurm_local_size(env: &Env) -> Result<usize> {
    let l = Launcher::Slurm;
    let node = match env.get("SLURM_NODEID") {
        Some(v) => Some(parse_count(env, l, "SLURM_NODEID", &v)?),
        None => None,
    };
    if let Some((name, list)) = env.first(&["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]) {
        let bad = |e: String| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "{name}='{}': {e}; {}",
                    shorten(&list),
                    found(env, vars_of(l))
                ),
            )
        };
        let counts = tasks_per_node(&list).map_err(bad)?;
        return match node {
            Some(n) => counts.get(n).copied().ok_or_else(|| {
                bad(format!(
                    "SLURM_NODEID={n} but the list describes {} node(s)",
                    counts.len()
                ))
            }),
            None if counts.iter().all(|c| *c == counts[0]) => Ok(counts[0]),
            None => Err(bad(
                "nodes run different numbers of tasks and SLURM_NODEID is not set to say \
                 which node this is"
                    .into(),
            )),
        };
    }
    Ok(required(env, l, &["SLURM_NTASKS_PER_NODE"])?.0)
}

fn parse_port(v: &str) -> Result<u16> {
    match v.parse::<u64>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(Error::new(
            ErrorKind::Config,
            format!("MASTER_PORT={p} is out of range; use a free port from 1 to 65535 (e.g. 29500)"),
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "MASTER_PORT='{}' is not a port number; use a free port from 1 to 65535 (e.g. 29500)",
                shorten(v)
            ),
        )),
    }
}

/// Expands a Slurm hostlist: `node[01-03,07],gpu3` gives node01, node02,
/// node03, node07, gpu3. Several bracket groups in one name multiply
/// (`r[1-2]n[1-2]`: r1n1, r1n2, r2n1, r2n2). Zero padding follows the width of
/// each range's first number.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    const LIMIT: usize = 1 << 20;
    let bad = |e: String| {
        Error::new(
            ErrorKind::Config,
            format!("hostlist '{}': {e}", shorten(list)),
        )
    };
    let mut hosts = Vec::new();
    for item in split_top(list).map_err(bad)? {
        let mut names = vec![String::new()];
        for piece in parse_host(item).map_err(bad)? {
            match piece {
                Piece::Lit(s) => names.iter_mut().for_each(|n| n.push_str(s)),
                Piece::Set(ranges) => {
                    let count: u64 = ranges.iter().map(|r| r.hi - r.lo + 1).sum();
                    if (names.len() as u64).saturating_mul(count) + hosts.len() as u64
                        > LIMIT as u64
                    {
                        return Err(bad(format!("expands to more than {LIMIT} hosts")));
                    }
                    names = names
                        .iter()
                        .flat_map(|n| {
                            ranges.iter().flat_map(move |r| {
                                (r.lo..=r.hi).map(move |i| format!("{n}{i:0w$}", w = r.width))
                            })
                        })
                        .collect();
                }
            }
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// The first host of a Slurm hostlist, without expanding the rest.
fn first_host(list: &str) -> std::result::Result<String, String> {
    let first = split_top(list)?[0];
    let mut name = String::new();
    for piece in parse_host(first)? {
        match piece {
            Piece::Lit(s) => name.push_str(s),
            Piece::Set(ranges) => {
                let r = ranges.first().ok_or("empty brackets")?;
                name.push_str(&format!("{:0w$}", r.lo, w = r.width));
            }
        }
    }
    Ok(name)
}

/// Parses Slurm's tasks-per-node form: `4(x2),3` gives `[4, 4, 3]`.
pub fn parse_tasks_per_node(list: &str) -> Result<Vec<usize>> {
    tasks_per_node(list).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("tasks-per-node list '{}': {e}", shorten(list)),
        )
    })
}

fn tasks_per_node(list: &str) -> std::result::Result<Vec<usize>, String> {
    const LIMIT: usize = 1 << 20;
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (count, repeat) = match item.split_once('(') {
            None => (item, "1"),
            Some((c, rest)) => {
                let r = rest
                    .strip_prefix('x')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("'{item}' is not of the form N or N(xM)"))?;
                (c, r)
            }
        };
        let count: usize = count
            .parse()
            .map_err(|_| format!("'{item}': '{count}' is not a task count"))?;
        let repeat: usize = repeat
            .parse()
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| format!("'{item}': '{repeat}' is not a positive repeat count"))?;
        if out.len() + repeat > LIMIT {
            return Err(format!("describes more than {LIMIT} nodes"));
        }
        out.resize(out.len() + repeat, count);
    }
    Ok(out)
}

struct Range {
    lo: u64,
    hi: u64,
    width: usize,
}

enum Piece<'a> {
    Lit(&'a str),
    Set(Vec<Range>),
}

/// Splits a hostlist at the commas outside brackets.
fn split_top(list: &str) -> std::result::Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("nested '['".into()),
            ']' if depth == 1 => depth = 0,
            ']' => return Err("']' without '['".into()),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("'[' without ']'".into());
    }
    items.push(&list[start..]);
    let items: Vec<&str> = items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err("no host names".into());
    }
    Ok(items)
}

fn parse_host(item: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = item;
    while !rest.is_empty() {
        match rest.find('[') {
            None => {
                pieces.push(Piece::Lit(rest));
                break;
            }
            Some(open) => {
                if open > 0 {
                    pieces.push(Piece::Lit(&rest[..open]));
                }
                let close = rest[open..]
                    .find(']')
                    .map(|c| open + c)
                    .ok_or("'[' without ']'")?;
                pieces.push(Piece::Set(parse_ranges(&rest[open + 1..close])?));
                rest = &rest[close + 1..];
            }
        }
    }
    if pieces.is_empty() {
        return Err("empty host name".into());
    }
    Ok(pieces)
}

fn parse_ranges(inner: &str) -> std::result::Result<Vec<Range>, String> {
    let number = |s: &str| -> std::result::Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("'{s}' in [{inner}] is not a number"));
        }
        s.parse()
            .map_err(|_| format!("'{s}' in [{inner}] is too large"))
    };
    inner
        .split(',')
        .map(|r| {
            let r = r.trim();
            let (lo_s, hi_s) = r.split_once('-').unwrap_or((r, r));
            let (lo, hi) = (number(lo_s)?, number(hi_s)?);
            if hi < lo {
                return Err(format!("range '{r}' in [{inner}] runs backwards"));
            }
            Ok(Range {
                lo,
                hi,
                width: lo_s.len(),
            })
        })
        .collect()
}

/// `host:port`, with brackets around IPv6 literals.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The store for this job: `BRAID_STORE=file:///path` gives a [`FileStore`];
/// otherwise (unset or `tcp`) rank 0 starts a TCP store server and every rank,
/// rank 0 included, connects to it, with `BRAID_TOKEN` (if set) as the job
/// token. Rank 0's server lives as long as the returned store. `timeout`
/// bounds the connection (the server may start after the other ranks) and
/// every answer.
pub fn store_from_env(info: &LaunchInfo, timeout: Duration) -> Result<Box<dyn Store>> {
    store_from(info, timeout, &process_env)
}

/// [`store_from_env`] over any variable source (`BRAID_STORE`, `BRAID_TOKEN`).
pub fn store_from(
    info: &LaunchInfo,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn Store>> {
    let spec = env("BRAID_STORE")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if let Some(rest) = spec.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "BRAID_STORE='{spec}' does not name an absolute directory; use \
                     file:///shared/dir (three slashes), a directory every rank can reach"
                ),
            ));
        }
        return Ok(Box::new(FileStore::new(path)?.with_lock_timeout(timeout)));
    }
    if !(spec.is_empty() || spec.eq_ignore_ascii_case("tcp")) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "BRAID_STORE='{}' is not a store; use file:///shared/dir (a directory every \
                 rank can reach) or tcp (the default: rank 0 hosts the store at \
                 MASTER_ADDR:MASTER_PORT)",
                shorten(&spec)
            ),
        ));
    }
    let token = match env("BRAID_TOKEN") {
        None => None,
        Some(t) if t.is_empty() => {
            return Err(Error::new(
                ErrorKind::Config,
                "BRAID_TOKEN is set but empty; unset it, or give every rank the same \
                 non-empty token",
            ))
        }
        Some(t) => Some(t.into_bytes()),
    };
    let deadline = Instant::now() + timeout;
    if info.rank != 0 {
        let target = host_port(&info.master_addr, info.master_port);
        let client = TcpStore::connect(&target, token.as_deref(), deadline)?;
        return Ok(Box::new(client.with_io_timeout(timeout)));
    }
    let server = start_server(info, token.clone())?;
    let local = server.local_addr();
    let loopback = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let client = TcpStore::connect(
        &SocketAddr::new(loopback, local.port()).to_string(),
        token.as_deref(),
        deadline,
    )?;
    Ok(Box::new(HostedStore {
        client: client.with_io_timeout(timeout),
        _server: server,
    }))
}

/// Rank 0's server: on MASTER_ADDR when that is a loopback address (a
/// one-machine job stays private to the machine), on every interface
/// otherwise (IPv6 and IPv4 when MASTER_ADDR has an IPv6 address).
fn start_server(info: &LaunchInfo, token: Option<Vec<u8>>) -> Result<TcpStoreServer> {
    let port = info.master_port;
    let resolved: Vec<SocketAddr> = (info.master_addr.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    if let Some(first) = resolved.first() {
        if resolved.iter().all(|a| a.ip().is_loopback()) {
            return TcpStore::server(*first, token);
        }
    }
    let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    // IPv6 wildcard (which also takes IPv4 on Linux) only where MASTER_ADDR
    // has an IPv6 address and this machine has IPv6 at all.
    let ipv6_usable = resolved.iter().any(|a| a.is_ipv6())
        && std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok();
    TcpStore::server(if ipv6_usable { any6 } else { any4 }, token)
}

/// Rank 0's store: its client, and the server it hosts (dropped after the client).
struct HostedStore {
    client: TcpStore,
    _server: TcpStoreServer,
}

impl Store for HostedStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.client.set(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.client.get(key)
    }
    fn wait(&self, keys: &[&str], deadline: Instant) -> Result<()> {
        self.client.wait(keys, deadline)
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        self.client.add(key, delta)
    }
    fn get_wait(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        self.client.get_wait(key, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_takes_the_first_of_each_group() {
        assert_eq!(first_host("node[01-04,07],gpu3").unwrap(), "node01");
        assert_eq!(first_host("gpu3,node[1-2]").unwrap(), "gpu3");
        assert_eq!(first_host("r[2-3]n[009-010]").unwrap(), "r2n009");
        assert!(first_host("node[01").is_err());
        assert!(first_host("").is_err());
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 5), "[::1]:5");
        assert_eq!(host_port("[::1]", 5), "[::1]:5");
        assert_eq!(host_port("node1", 5), "node1:5");
    }
}
