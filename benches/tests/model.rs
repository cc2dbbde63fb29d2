//! braid-bench and the cost model: JSON rows carry the model's prediction
//! and mark its choice, `--transport` connects the ranks as asked, and
//! `BRAID_DEBUG=tuning` prints the tuning table.

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let cache = std::env::temp_dir().join(format!("braid-bench-model-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_braid-bench"));
    cmd.args(args)
        .env_remove("BRAID_ALGO")
        .env_remove("BRAID_DEBUG")
        .env_remove("BRAID_TRANSPORT")
        .env_remove("BRAID_SHAPE")
        .env("BRAID_TIMEOUT", "20")
        .env("XDG_CACHE_HOME", &cache);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running braid-bench")
}

fn rows(out: &Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

const FIELDS: [&str; 15] = [
    "algbw_gbps",
    "algorithm",
    "auto_choice",
    "busbw_gbps",
    "bytes",
    "collective",
    "count",
    "dtype",
    "nranks",
    "op",
    "predicted_us",
    "root",
    "time_us",
    "transport",
    "wrong",
];

#[test]
fn json_rows_carry_predictions_and_mark_the_model_s_choice() {
    let out = bench(
        &[
            "all_reduce",
            "--ranks",
            "4",
            "--sizes",
            "8,64K,1M",
            "-n",
            "2",
            "-w",
            "1",
            "-c",
            "-a",
            "all",
            "--json",
        ],
        &[("BRAID_LINK", "20,10")],
    );
    let rows = rows(&out);
    assert_eq!(
        rows.len(),
        3 * braid::Collective::AllReduce.algorithms().len()
    );
    for r in &rows {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, FIELDS, "{r}");
        assert_eq!(r["wrong"], 0, "{r}");
        assert_eq!(r["transport"], "local");
        assert!(r["predicted_us"].as_f64().is_some_and(|p| p > 0.0), "{r}");
    }
    for bytes in [8u64, 64 << 10, 1 << 20] {
        let at: Vec<&Value> = rows.iter().filter(|r| r["bytes"] == bytes).collect();
        let marked: Vec<&&Value> = at.iter().filter(|r| r["auto_choice"] == true).collect();
        assert_eq!(marked.len(), 1, "{at:#?}");
        // The model marks what it predicts fastest (ties: one of them).
        let best = at
            .iter()
            .map(|r| r["predicted_us"].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        let chosen = marked[0]["predicted_us"].as_f64().unwrap();
        assert!(chosen <= best * (1.0 + 1e-9), "{at:#?}");
    }
    // 20 µs links: predictions grow with the size.
    let auto: Vec<f64> = rows
        .iter()
        .filter(|r| r["auto_choice"] == true)
        .map(|r| r["predicted_us"].as_f64().unwrap())
        .collect();
    assert!(auto.windows(2).all(|w| w[0] < w[1]), "{auto:?}");
}

#[test]
fn send_recv_rows_are_priced_as_their_one_step() {
    // Every rank sends to the next and receives from the previous in one
    // step: over 20 µs links at least α, more for more bytes; no algorithm.
    let rows = rows(&bench(
        &[
            "send_recv",
            "--ranks",
            "3",
            "-b",
            "8",
            "-e",
            "2M",
            "-f",
            "64",
            "-n",
            "2",
            "-w",
            "0",
            "--json",
        ],
        &[("BRAID_LINK", "20,10")],
    ));
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["algorithm"].is_null()), "{rows:?}");
    let predicted: Vec<f64> = rows
        .iter()
        .map(|r| r["predicted_us"].as_f64().unwrap())
        .collect();
    assert!(predicted[0] >= 20.0, "{predicted:?}");
    assert!(predicted.windows(2).all(|w| w[0] < w[1]), "{predicted:?}");
    // 2 MiB at 10 Gbit/s take 1678 µs besides α.
    assert!(predicted[3] > 20.0 + 1677.0, "{predicted:?}");
}

#[test]
fn transports_tcp_and_shm_as_threads() {
    for t in ["tcp", "shm", "auto"] {
        let rows = rows(&bench(
            &[
                "all_gather",
                "--transport",
                t,
                "--ranks",
                "3",
                "-e",
                "4K",
                "-f",
                "16",
                "-n",
                "2",
                "-w",
                "1",
                "-c",
                "--json",
            ],
            &[],
        ));
        assert_eq!(rows.len(), 3, "{t}: {rows:#?}");
        let want = if t == "auto" { "shm" } else { t };
        for r in &rows {
            assert_eq!(r["transport"], want, "{r}");
            assert_eq!(r["wrong"], 0, "{r}");
            assert_eq!(r["auto_choice"], true);
        }
    }
}

#[test]
fn cuda_is_not_in_this_build() {
    let out = bench(&["all_reduce", "--transport", "cuda"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--transport cuda is not available in this build"),
        "{e}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn braid_debug_tuning_prints_the_table_once() {
    let out = bench(
        &["broadcast", "--ranks", "3", "-e", "8", "-n", "1", "-w", "0"],
        &[("BRAID_DEBUG", "tuning"), ("BRAID_CALIBRATE", "off")],
    );
    assert!(out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.matches("braid tuning table: 3 ranks").count(), 1, "{e}");
    assert!(
        e.contains("local: alpha 1.00 us") && e.contains("(default"),
        "{e}"
    );
    for c in braid::Collective::ALL {
        assert!(e.contains(c.name()), "{c} missing:\n{e}");
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("predicted"), "{table}");
}
