//! Launcher detection from environment variables, and the store it leads to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use braid::launch::{
    detect_from, expand_hostlist, parse_tasks_per_node, store_from, LaunchInfo, Launcher,
};
use braid::{Error, ErrorKind};

mod common;
use common::ranks::local_launch;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn detect(pairs: &[(&str, &str)]) -> braid::Result<LaunchInfo> {
    let map = env(pairs);
    detect_from(&|name| map.get(name).cloned())
}

fn config_error(pairs: &[(&str, &str)]) -> Error {
    let e = detect(pairs).expect_err("expected a configuration error");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    e
}

fn assert_mentions(e: &Error, parts: &[&str]) {
    for p in parts {
        assert!(e.message().contains(p), "missing {p:?} in: {e}");
    }
}

const TORCHRUN: &[(&str, &str)] = &[
    ("RANK", "5"),
    ("WORLD_SIZE", "8"),
    ("LOCAL_RANK", "1"),
    ("LOCAL_WORLD_SIZE", "4"),
    ("MASTER_ADDR", "node01"),
    ("MASTER_PORT", "29500"),
];

#[test]
fn torchrun_style() {
    let info = detect(TORCHRUN).unwrap();
    assert_eq!(
        info,
        LaunchInfo {
            rank: 5,
            size: 8,
            local_rank: 1,
            local_size: 4,
            master_addr: "node01".into(),
            master_port: 29500,
            launcher: Launcher::Torchrun,
        }
    );
    assert_eq!(
        info.to_string(),
        "rank 5 of 8 (local 1 of 4) from torchrun, store at node01:29500"
    );
    // Kubernetes operators set no LOCAL_*: one rank per pod.
    let info = detect(&[
        ("RANK", "2"),
        ("WORLD_SIZE", "3"),
        ("MASTER_ADDR", "job-master-0.job"),
        ("MASTER_PORT", "23456"),
    ])
    .unwrap();
    assert_eq!((info.local_rank, info.local_size), (0, 1));
    // Surrounding whitespace is ignored.
    let info = detect(&[
        ("RANK", " 0 "),
        ("WORLD_SIZE", "1\n"),
        ("MASTER_ADDR", "::1"),
        ("MASTER_PORT", "1"),
    ])
    .unwrap();
    assert_eq!((info.rank, info.size, info.master_port), (0, 1, 1));
    assert_eq!(info.master_addr, "::1");
}

#[test]
fn torchrun_missing_pieces() {
    let e = config_error(&[("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
    assert_mentions(
        &e,
        &[
            "WORLD_SIZE is not set",
            "found RANK=0, MASTER_ADDR=h, MASTER_PORT=1",
            "needed: RANK, WORLD_SIZE",
        ],
    );
    let e = config_error(&[("WORLD_SIZE", "4")]);
    assert_mentions(&e, &["RANK is not set", "WORLD_SIZE=4"]);
    let e = config_error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]);
    assert_mentions(&e, &["MASTER_ADDR is not set", "torchrun"]);
    let e = config_error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
    assert_mentions(&e, &["MASTER_PORT is not set"]);
    let e = config_error(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1"),
    ]);
    assert_mentions(&e, &["LOCAL_RANK is set but LOCAL_WORLD_SIZE is not"]);
    // An empty variable counts as unset.
    let e = config_error(&[
        ("RANK", "0"),
        ("WORLD_SIZE", ""),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1"),
    ]);
    assert_mentions(&e, &["WORLD_SIZE is not set"]);
}

#[test]
fn bad_values_are_rejected_clearly() {
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        TORCHRUN
            .iter()
            .map(|(a, b)| {
                (
                    a.to_string(),
                    if *a == k {
                        v.to_string()
                    } else {
                        b.to_string()
                    },
                )
            })
            .collect()
    };
    let check = |k: &str, v: &str, parts: &[&str]| {
        let pairs = with(k, v);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let e = config_error(&pairs);
        assert_mentions(&e, parts);
    };
    check(
        "RANK",
        "five",
        &["RANK='five' is not a non-negative integer"],
    );
    check("RANK", "-1", &["RANK='-1'"]);
    check("RANK", "8", &["RANK=8 is not below WORLD_SIZE=8", "0 to 7"]);
    check("WORLD_SIZE", "0", &["WORLD_SIZE=0", "at least one rank"]);
    check("WORLD_SIZE", "2.5", &["WORLD_SIZE='2.5'"]);
    check(
        "MASTER_PORT",
        "70000",
        &["MASTER_PORT=70000 is out of range", "1 to 65535"],
    );
    check("MASTER_PORT", "0", &["MASTER_PORT=0 is out of range"]);
    check(
        "MASTER_PORT",
        "http",
        &["MASTER_PORT='http' is not a port number"],
    );
    check("LOCAL_RANK", "4", &["local rank 4 of 4"]);
    check(
        "LOCAL_WORLD_SIZE",
        "9",
        &["local rank 1 of 9", "job of 8 ranks"],
    );
}

#[test]
fn nothing_set_says_what_to_do() {
    let e = config_error(&[]);
    assert_mentions(
        &e,
        &[
            "no launcher variables found",
            "braid-run",
            "srun",
            "mpirun",
            "MASTER_ADDR",
        ],
    );
    let e = config_error(&[("BRAID_LAUNCHER", "pbs")]);
    assert_mentions(
        &e,
        &["BRAID_LAUNCHER='pbs'", "torchrun, slurm, openmpi or pmi"],
    );
}

#[test]
fn slurm() {
    let base = [
        ("SLURM_PROCID", "6"),
        ("SLURM_NTASKS", "11"),
        ("SLURM_LOCALID", "2"),
        ("SLURM_NODEID", "1"),
        ("SLURM_TASKS_PER_NODE", "4(x2),3"),
        ("SLURM_JOB_NODELIST", "node[01-04,07],gpu3"),
        ("SLURM_JOB_ID", "123456"),
    ];
    let info = detect(&base).unwrap();
    assert_eq!(
        info,
        LaunchInfo {
            rank: 6,
            size: 11,
            local_rank: 2,
            local_size: 4,
            master_addr: "node01".into(),
            master_port: (20000 + 123456 % 20000) as u16,
            launcher: Launcher::Slurm,
        }
    );
    // The third node runs 3 tasks.
    let mut third = base.to_vec();
    third[3] = ("SLURM_NODEID", "2");
    third[2] = ("SLURM_LOCALID", "0");
    assert_eq!(detect(&third).unwrap().local_size, 3);
    // MASTER_ADDR / MASTER_PORT win over the derived ones.
    let mut explicit = base.to_vec();
    explicit.push(("MASTER_ADDR", "10.1.2.3"));
    explicit.push(("MASTER_PORT", "4000"));
    let info = detect(&explicit).unwrap();
    assert_eq!(
        (info.master_addr.as_str(), info.master_port),
        ("10.1.2.3", 4000)
    );
    // The step's node list is preferred, then SLURM_NODELIST.
    let mut step = base.to_vec();
    step.push(("SLURM_STEP_NODELIST", "gpu[10-11]"));
    assert_eq!(detect(&step).unwrap().master_addr, "gpu10");
    // SLURM_NTASKS_PER_NODE alone, and SLURM_NPROCS / SLURM_JOBID (older names).
    let info = detect(&[
        ("SLURM_PROCID", "1"),
        ("SLURM_NPROCS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "2"),
        ("SLURM_NODELIST", "a,b"),
        ("SLURM_JOBID", "7"),
    ])
    .unwrap();
    assert_eq!((info.rank, info.size, info.local_size), (1, 4, 2));
    assert_eq!((info.master_addr.as_str(), info.master_port), ("a", 20007));
    // Uniform list without SLURM_NODEID.
    let info = detect(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_TASKS_PER_NODE", "2(x2)"),
        ("SLURM_JOB_NODELIST", "n1"),
        ("SLURM_JOB_ID", "1"),
    ])
    .unwrap();
    assert_eq!(info.local_size, 2);
}

#[test]
fn slurm_missing_pieces() {
    let e = config_error(&[("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]);
    assert_mentions(
        &e,
        &[
            "incomplete slurm environment",
            "SLURM_NTASKS or SLURM_NPROCS is not set",
            "SLURM_PROCID=0",
            "srun",
        ],
    );
    let e = config_error(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS_PER_NODE", "2"),
        ("SLURM_JOB_ID", "1"),
    ]);
    assert_mentions(&e, &["neither MASTER_ADDR nor SLURM_JOB_NODELIST is set"]);
    let e = config_error(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS_PER_NODE", "2"),
        ("SLURM_JOB_NODELIST", "n1"),
    ]);
    assert_mentions(&e, &["neither MASTER_PORT nor SLURM_JOB_ID is set"]);
    let e = config_error(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "7"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_TASKS_PER_NODE", "4,3"),
        ("SLURM_JOB_NODELIST", "n[1-2]"),
        ("SLURM_JOB_ID", "1"),
    ]);
    assert_mentions(
        &e,
        &["SLURM_TASKS_PER_NODE='4,3'", "SLURM_NODEID is not set"],
    );
    let e = config_error(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "7"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NODEID", "5"),
        ("SLURM_TASKS_PER_NODE", "4,3"),
        ("SLURM_JOB_NODELIST", "n[1-2]"),
        ("SLURM_JOB_ID", "1"),
    ]);
    assert_mentions(&e, &["SLURM_NODEID=5", "2 node(s)"]);
    let e = config_error(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS_PER_NODE", "2"),
        ("SLURM_JOB_NODELIST", "n[1-"),
        ("SLURM_JOB_ID", "1"),
    ]);
    assert_mentions(&e, &["SLURM_JOB_NODELIST='n[1-'", "set MASTER_ADDR"]);
    // A batch script (no task yet) is not a Slurm launch.
    let e = config_error(&[("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "3")]);
    assert_mentions(&e, &["no launcher variables found"]);
}

#[test]
fn open_mpi() {
    let base = [
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
    ];
    let e = config_error(&base);
    assert_mentions(
        &e,
        &[
            "MASTER_ADDR is not set",
            "OMPI_COMM_WORLD_RANK=3",
            "Open MPI does not provide",
            "-x MASTER_ADDR",
        ],
    );
    let mut full = base.to_vec();
    full.push(("MASTER_ADDR", "head"));
    full.push(("MASTER_PORT", "29400"));
    let info = detect(&full).unwrap();
    assert_eq!(
        (
            info.rank,
            info.size,
            info.local_rank,
            info.local_size,
            info.launcher
        ),
        (3, 4, 1, 2, Launcher::OpenMpi)
    );
    let e = config_error(&[
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1"),
    ]);
    assert_mentions(&e, &["OMPI_COMM_WORLD_RANK is not set"]);
}

#[test]
fn pmi() {
    let e = config_error(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]);
    assert_mentions(
        &e,
        &[
            "MASTER_ADDR is not set",
            "PMI_RANK=1, PMI_SIZE=2",
            "PMI does not provide",
        ],
    );
    let mut full = vec![
        ("PMI_RANK", "1"),
        ("PMI_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1234"),
    ];
    let info = detect(&full).unwrap();
    assert_eq!(
        (info.rank, info.size, info.local_rank, info.local_size),
        (1, 2, 0, 1)
    );
    assert_eq!(info.launcher, Launcher::Pmi);
    full.push(("MPI_LOCALRANKID", "1"));
    full.push(("MPI_LOCALNRANKS", "2"));
    let info = detect(&full).unwrap();
    assert_eq!((info.local_rank, info.local_size), (1, 2));
    full.pop();
    let e = config_error(&full);
    assert_mentions(
        &e,
        &["MPI_LOCALRANKID is set but PMI_LOCAL_SIZE / MPI_LOCALNRANKS is not"],
    );
}

#[test]
fn precedence_and_contradictions() {
    // Agreeing launchers: explicit RANK/WORLD_SIZE first, then Slurm, Open MPI, PMI.
    let mut both = TORCHRUN.to_vec();
    both.extend([("PMI_RANK", "5"), ("PMI_SIZE", "8")]);
    assert_eq!(detect(&both).unwrap().launcher, Launcher::Torchrun);
    let info = detect(&[
        ("OMPI_COMM_WORLD_RANK", "1"),
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ("PMI_RANK", "1"),
        ("PMI_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "1"),
    ])
    .unwrap();
    assert_eq!(info.launcher, Launcher::OpenMpi);

    // torchrun started by one srun task per node: nested, not contradictory.
    let mut nested = TORCHRUN.to_vec(); // rank 5 of 8, 4 per node
    nested.extend([
        ("SLURM_PROCID", "1"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS_PER_NODE", "1"),
        ("SLURM_JOB_NODELIST", "node[01-02]"),
        ("SLURM_JOB_ID", "9"),
    ]);
    let info = detect(&nested).unwrap();
    assert_eq!(
        (info.rank, info.size, info.launcher),
        (5, 8, Launcher::Torchrun)
    );
    assert_eq!(info.master_addr, "node01");

    // Disagreement: same size, different rank.
    let mut clash = TORCHRUN.to_vec();
    clash.extend([("PMI_RANK", "4"), ("PMI_SIZE", "8")]);
    let e = config_error(&clash);
    assert_mentions(
        &e,
        &[
            "contradictory",
            "torchrun says rank 5 of 8 (RANK=5, WORLD_SIZE=8)",
            "pmi says rank 4 of 8 (PMI_RANK=4, PMI_SIZE=8)",
            "BRAID_LAUNCHER=",
        ],
    );
    // Disagreement: sizes that do not nest, or the wrong block.
    let mut clash = TORCHRUN.to_vec();
    clash.extend([("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]);
    assert_mentions(
        &config_error(&clash),
        &["contradictory", "slurm says rank 0 of 2"],
    );
    let mut clash = TORCHRUN.to_vec();
    clash.extend([("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "3")]);
    assert_mentions(
        &config_error(&clash),
        &["contradictory", "openmpi says rank 0 of 3"],
    );

    // BRAID_LAUNCHER picks one and ignores the rest.
    let mut forced = TORCHRUN.to_vec();
    forced.extend([
        ("PMI_RANK", "4"),
        ("PMI_SIZE", "8"),
        ("BRAID_LAUNCHER", "pmi"),
    ]);
    let info = detect(&forced).unwrap();
    assert_eq!((info.rank, info.launcher), (4, Launcher::Pmi));
    let e = config_error(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("BRAID_LAUNCHER", "slurm"),
    ]);
    assert_mentions(
        &e,
        &["BRAID_LAUNCHER=slurm but none of its variables are set"],
    );
}

#[test]
fn slurm_hostlists_expand() {
    assert_eq!(
        expand_hostlist("node[01-04,07],gpu3").unwrap(),
        ["node01", "node02", "node03", "node04", "node07", "gpu3"]
    );
    assert_eq!(expand_hostlist("a").unwrap(), ["a"]);
    assert_eq!(expand_hostlist("n[8-10]").unwrap(), ["n8", "n9", "n10"]);
    assert_eq!(
        expand_hostlist("n[098-101]").unwrap(),
        ["n098", "n099", "n100", "n101"]
    );
    assert_eq!(
        expand_hostlist("r[1-2]n[1-2]-ib").unwrap(),
        ["r1n1-ib", "r1n2-ib", "r2n1-ib", "r2n2-ib"]
    );
    assert_eq!(expand_hostlist("x, y").unwrap(), ["x", "y"]);
    for bad in [
        "",
        "n[1-",
        "n]",
        "n[[1]]",
        "n[]",
        "n[a-b]",
        "n[5-3]",
        "n[1-2-3]",
        "n[99999999999999999999]",
    ] {
        let e = expand_hostlist(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        assert!(e.message().contains("hostlist"), "{e}");
    }
    assert!(expand_hostlist("n[0-99999999]")
        .unwrap_err()
        .message()
        .contains("more than"));
}

#[test]
fn slurm_tasks_per_node_parse() {
    assert_eq!(parse_tasks_per_node("4(x2),3").unwrap(), [4, 4, 3]);
    assert_eq!(parse_tasks_per_node("1").unwrap(), [1]);
    assert_eq!(parse_tasks_per_node("2(x3)").unwrap(), [2, 2, 2]);
    for bad in ["", "x", "4(2)", "4(x0)", "4(x2", "-1", "4(xx)"] {
        let e = parse_tasks_per_node(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        assert!(e.message().contains(&format!("'{bad}'")), "{e}");
    }
}

// ------------------------------------------------------------- the store

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ranks as threads; rank 0 starts last, so the others' connects must retry.
fn rendezvous(vars: &[(&str, &str)], port: u16) {
    let map = env(vars);
    let vars = |n: &str| map.get(n).cloned();
    const N: usize = 3;
    std::thread::scope(|s| {
        for rank in 0..N {
            let vars = &vars;
            s.spawn(move || {
                if rank == 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
                let store = store_from(&local_launch(rank, N, port), Duration::from_secs(10), vars)
                    .unwrap();
                store.set(&format!("addr/{rank}"), &[rank as u8]).unwrap();
                let keys: Vec<String> = (0..N).map(|r| format!("addr/{r}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                store
                    .wait(&keys, Instant::now() + Duration::from_secs(10))
                    .unwrap();
                assert!(store.add("done", 1).unwrap() as usize <= N);
                // Rank 0 hosts the store: it leaves after everyone is done.
                if rank == 0 {
                    store
                        .wait(
                            &["bye/1", "bye/2"],
                            Instant::now() + Duration::from_secs(10),
                        )
                        .unwrap();
                } else {
                    store.set(&format!("bye/{rank}"), b"").unwrap();
                }
            });
        }
    });
}

#[test]
fn tcp_store_from_env_with_and_without_token() {
    rendezvous(&[("BRAID_TOKEN", "s3cret")], free_port());
    rendezvous(&[("BRAID_STORE", "tcp")], free_port());
}

#[test]
fn file_store_from_env() {
    let dir = std::env::temp_dir().join(format!("braid-launch-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = format!("file://{}", dir.display());
    rendezvous(&[("BRAID_STORE", &spec)], 1);
    assert!(dir.join(".lock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn store_from_env_rejects_bad_settings() {
    let bad = |vars: &[(&str, &str)]| {
        let map = env(vars);
        match store_from(&local_launch(1, 2, 1), Duration::from_millis(100), &|n| {
            map.get(n).cloned()
        }) {
            Ok(_) => panic!("expected an error for {vars:?}"),
            Err(e) => e,
        }
    };
    let e = bad(&[("BRAID_STORE", "redis://x")]);
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("file:///shared/dir"), "{e}");
    let e = bad(&[("BRAID_STORE", "file://relative/dir")]);
    assert!(e.message().contains("absolute"), "{e}");
    let e = bad(&[("BRAID_TOKEN", "")]);
    assert!(e.message().contains("BRAID_TOKEN is set but empty"), "{e}");
    // Nobody listens (port 1): a timeout naming the address.
    let e = bad(&[]);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("127.0.0.1:1"), "{e}");
}
