//! Runs the built `braid-bench` binary: every collective with `-c -a all` at
//! 3 ranks over a tiny size range must exit 0 with no wrong element, and bad
//! arguments must exit 2 with the usage text.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid-bench"))
        .args(args)
        .env_remove("BRAID_ALGO")
        .env("BRAID_TIMEOUT", "20")
        .output()
        .expect("running braid-bench")
}

/// Runs `collective` checked with every algorithm and returns its JSON rows.
fn checked_rows(collective: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        collective, "--ranks", "3", "-b", "8", "-e", "4K", "-f", "8", "-n", "2", "-w", "1", "-c",
        "-a", "all", "--json",
    ];
    args.extend_from_slice(extra);
    let out = bench(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r.get("error").is_some() || r["wrong"] != 0)
        .collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "{collective} {extra:?}: exit {:?}\nfailed rows: {failed:#?}\nstderr: {stderr}",
        out.status.code()
    );
    assert!(!rows.is_empty(), "{collective}: no rows");
    for r in &rows {
        assert_eq!(r["collective"], collective);
        assert_eq!(r["nranks"], 3);
        assert!(r["time_us"].as_f64().is_some_and(|t| t >= 0.0), "{r}");
    }
    rows
}

/// Every algorithm of the collective appears, and automatic choice marks
/// exactly one row per size.
fn all_algorithms_per_size(rows: &[Value]) {
    let collective: braid::Collective = rows[0]["collective"].as_str().unwrap().parse().unwrap();
    let algorithms = collective.algorithms().len();
    let sizes: std::collections::BTreeSet<u64> =
        rows.iter().map(|r| r["bytes"].as_u64().unwrap()).collect();
    assert_eq!(rows.len(), sizes.len() * algorithms, "{rows:#?}");
    for s in sizes {
        let marked = rows
            .iter()
            .filter(|r| r["bytes"] == s && r["auto_choice"] == true)
            .count();
        assert_eq!(marked, 1, "size {s}: {rows:#?}");
    }
}

#[test]
fn all_reduce_checks_clean() {
    all_algorithms_per_size(&checked_rows("all_reduce", &[]));
}

#[test]
fn all_reduce_checks_clean_in_bf16_avg() {
    checked_rows("all_reduce", &["-d", "bf16", "-o", "avg"]);
}

#[test]
fn all_gather_checks_clean() {
    all_algorithms_per_size(&checked_rows("all_gather", &[]));
}

#[test]
fn broadcast_checks_clean() {
    all_algorithms_per_size(&checked_rows("broadcast", &["-r", "2"]));
}

#[test]
fn reduce_checks_clean() {
    all_algorithms_per_size(&checked_rows(
        "reduce",
        &["-r", "1", "-o", "max", "-d", "i8"],
    ));
}

#[test]
fn reduce_scatter_checks_clean() {
    all_algorithms_per_size(&checked_rows(
        "reduce_scatter",
        &["-o", "prod", "-d", "f16"],
    ));
}

#[test]
fn gather_checks_clean() {
    all_algorithms_per_size(&checked_rows("gather", &["-r", "1"]));
}

#[test]
fn scatter_checks_clean() {
    all_algorithms_per_size(&checked_rows("scatter", &["-r", "2", "-d", "u64"]));
}

#[test]
fn all_to_all_checks_clean() {
    all_algorithms_per_size(&checked_rows("all_to_all", &[]));
}

#[test]
fn send_recv_and_barrier_check_clean() {
    let rows = checked_rows("send_recv", &[]);
    assert!(rows.iter().all(|r| r["algorithm"].is_null()));
    let rows = checked_rows("barrier", &[]);
    all_algorithms_per_size(&rows);
    assert!(
        rows.iter().all(|r| r["bytes"] == 0),
        "barrier moves no data"
    );
}

#[test]
fn the_table_has_a_header_and_a_footer() {
    let out = bench(&["all_reduce", "--ranks", "2", "-e", "64", "-c"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("#wrong  algorithm"), "{text}");
    assert!(text.contains("busbw = algbw * 2(n-1)/n"), "{text}");
    assert!(text.contains("# Wrong elements       : 0 OK"), "{text}");
    let rows = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(rows, 2, "8 and 32 bytes\n{text}");
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &["all_reduce", "--bogus"][..],
        &["allreduce"],
        &[],
        &["all_to_all", "-a", "ring"],
        &["all_reduce", "-e", "lots"],
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("usage: braid-bench <collective>"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let e = String::from_utf8_lossy(&bench(&["all_to_all", "-a", "ring"]).stderr).into_owned();
    assert!(
        e.contains("valid for all_to_all: pairwise, linear, star"),
        "{e}"
    );
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    let out = bench(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: braid-bench"));
}
