//! Rows: combining the ranks' samples, and printing them as an nccl-tests
//! style table or as JSON lines.

use serde::Serialize;

use crate::args::{AlgoChoice, Bench, Options, StartMode};
use crate::layout::{bus_factor, bus_factor_formula, SCALE_ABOVE, SCALE_BELOW, SMALL_SIZE_FACTOR};
use crate::run::{RankResult, RowSpec};

/// What every row of a run shares.
#[derive(Clone, Debug, PartialEq)]
pub struct RowContext {
    bench: Bench,
    dtype: &'static str,
    op: Option<&'static str>,
    root: Option<usize>,
    nranks: usize,
    transport: &'static str,
    check: bool,
}

impl RowContext {
    /// The context of a run of `o` over `transport`.
    pub fn new(o: &Options, transport: &'static str) -> RowContext {
        RowContext {
            bench: o.bench,
            dtype: o.dtype.name(),
            op: o.bench.reduces().then(|| o.op.name()),
            root: o.bench.rooted().then_some(o.root),
            nranks: o.ranks,
            transport,
            check: o.check,
        }
    }
}

/// One measured row; also the JSON object of `--json`: every field but
/// `iters` and `min_us`, in this order, and `error` only when the row
/// failed. Times and bandwidths of a failed row are NaN (`null` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The collective (or `send_recv`).
    pub collective: &'static str,
    /// Size: the largest per-rank buffer in bytes.
    pub bytes: u64,
    /// The call's element count (one rank's block for chunked calls).
    pub count: u64,
    /// Element type.
    pub dtype: &'static str,
    /// Reduction op (`null` for calls that do not reduce).
    pub op: Option<&'static str>,
    /// Root (`null` for unrooted calls).
    pub root: Option<usize>,
    /// Ranks.
    pub nranks: usize,
    /// Transport name.
    pub transport: &'static str,
    /// Algorithm (`null` for send_recv).
    pub algorithm: Option<&'static str>,
    /// Whether automatic choice picks this algorithm at this size.
    pub auto_choice: bool,
    /// Timed calls (not in the JSON).
    #[serde(skip)]
    pub iters: usize,
    /// Median over samples of the slowest rank's time, in µs.
    pub time_us: f64,
    /// Fastest sample, in µs (not in the JSON).
    #[serde(skip)]
    pub min_us: f64,
    /// `bytes / time_us`, in GB/s (10^9 B/s).
    pub algbw_gbps: f64,
    /// `algbw × bus factor` (nccl-tests), in GB/s.
    pub busbw_gbps: f64,
    /// Wrong elements over all ranks (`null` without `-c`).
    pub wrong: Option<u64>,
    /// The cost model's time for this row's algorithm (with the chunk the
    /// communicator uses) on the group's calibrated network, in µs (for
    /// send_recv, its one step of a send to the next rank and a receive
    /// from the previous); `null` when the model cannot price it.
    pub predicted_us: Option<f64>,
    /// Why the row failed (absent when it did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The median of `v` (the mean of the middle two for even lengths); NaN if empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Combines the ranks' results for one row: sample `k`'s time is the
/// slowest rank's time of its `k`th call; the row's time is their median.
pub fn combine(ctx: &RowContext, spec: &RowSpec, results: &[RankResult]) -> Row {
    let error = results
        .iter()
        .find(|r| r.error.is_some() && !r.consequential)
        .or_else(|| results.iter().find(|r| r.error.is_some()))
        .and_then(|r| r.error.clone());
    let samples = results.iter().map(|r| r.samples.len()).min().unwrap_or(0);
    let mut slowest: Vec<f64> = (0..samples)
        .map(|k| results.iter().map(|r| r.samples[k]).fold(0.0, f64::max))
        .collect();
    let (time, min) = if error.is_some() {
        (f64::NAN, f64::NAN)
    } else {
        let min = slowest.iter().copied().fold(f64::INFINITY, f64::min);
        (median(&mut slowest), min)
    };
    let bytes = spec.layout.bytes;
    let algbw = if bytes == 0 {
        0.0
    } else {
        bytes as f64 / time / 1e9
    };
    let algbw = if time.is_nan() { f64::NAN } else { algbw };
    Row {
        collective: ctx.bench.name(),
        bytes,
        count: spec.layout.count,
        dtype: ctx.dtype,
        op: ctx.op,
        root: ctx.root,
        nranks: ctx.nranks,
        transport: ctx.transport,
        algorithm: spec.algorithm.map(|a| a.name()),
        auto_choice: spec.auto_choice,
        iters: spec.iters,
        time_us: time * 1e6,
        min_us: min * 1e6,
        algbw_gbps: algbw,
        busbw_gbps: algbw * bus_factor(ctx.bench, ctx.nranks),
        wrong: (ctx.check && error.is_none()).then(|| results.iter().map(|r| r.wrong).sum()),
        predicted_us: spec.predicted.map(|p| p * 1e6),
        error,
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The table's header: what was run (over `transport`, the ranks `threads`
/// of this process or not), how it is timed, the column titles.
pub fn header(o: &Options, transport: &str, threads: bool) -> String {
    let mut h = String::new();
    let mut line = |s: String| {
        h.push_str(&s);
        h.push('\n');
    };
    let placement = if threads {
        "as threads of one process"
    } else {
        "in separate processes (rank 0 prints)"
    };
    line(format!(
        "# braid-bench {}: {} ranks {placement}, transport {transport}",
        o.bench, o.ranks
    ));
    let op = if o.bench.reduces() {
        o.op.name()
    } else {
        "none"
    };
    let root = if o.bench.rooted() {
        o.root.to_string()
    } else {
        "-".into()
    };
    let algo = match o.algo {
        AlgoChoice::Auto => "auto".to_string(),
        AlgoChoice::All => "all (* = auto's choice)".to_string(),
        AlgoChoice::Force(a) => a.name().to_string(),
    };
    line(format!(
        "# dtype {}  op {op}  root {root}  algorithm {algo}  check {}",
        o.dtype,
        if o.check { "on" } else { "off" }
    ));
    let iters = o.iters.unwrap_or(crate::args::DEFAULT_ITERS);
    let warmup = o.warmup.unwrap_or(crate::args::DEFAULT_WARMUP);
    let fewer = match (o.iters, o.warmup) {
        (Some(_), Some(_)) => String::new(),
        _ => format!(
            " (up to {SMALL_SIZE_FACTOR}x more below {}, fewer above {} unless given)",
            human(SCALE_BELOW),
            human(SCALE_ABOVE)
        ),
    };
    line(format!(
        "# sizes {} to {}, factor {}; {iters} timed calls per row after {warmup} warm-up calls{fewer}",
        human(o.min_bytes),
        human(o.max_bytes),
        o.factor,
    ));
    if o.bench == Bench::Collective(braid::Collective::Barrier) {
        line("# time: median over samples; a sample is one barrier call, its time the slowest rank's".into());
    } else if o.start == StartMode::Barrier {
        line("# time: median over samples; a sample is a barrier, then one timed call, its time the slowest rank's (as mpi_coll_bench; --start together for a common start)".into());
    } else {
        line("# time: median over samples; a sample is a barrier, a common start (threads: a start line; processes on one host: a moment on the shared clock; hosts: the barrier), then one timed call, its time the slowest rank's".into());
    }
    line(format!(
        "# algbw = size / time; busbw = algbw * {} (nccl-tests); GB/s = 1e9 B/s",
        bus_factor_formula(o.bench)
    ));
    line("#".into());
    line(
        "# predicted: the cost model's time for the row's algorithm on the calibrated links".into(),
    );
    line("#".into());
    line(format!(
        "#{:>11}  {:>12}  {:>6}  {:>6}  {:>5}  {:>10}  {:>10}  {:>8}  {:>8}  {:>6}  {}",
        "size",
        "count",
        "type",
        "redop",
        "root",
        "time",
        "predicted",
        "algbw",
        "busbw",
        "#wrong",
        "algorithm"
    ));
    line(
        format!(
            "#{:>11}  {:>12}  {:>6}  {:>6}  {:>5}  {:>10}  {:>10}  {:>8}  {:>8}  {:>6}",
            "(B)", "(elements)", "", "", "", "(us)", "(us)", "(GB/s)", "(GB/s)", ""
        )
        .trim_end()
        .to_string(),
    );
    h
}

/// One table row; a failed row ends with the error instead of numbers.
pub fn format_row(row: &Row, mark_auto: bool) -> String {
    let root = row.root.map_or("-1".to_string(), |r| r.to_string());
    let algo = row.algorithm.unwrap_or("-");
    let mark = if mark_auto && row.auto_choice && row.algorithm.is_some() {
        "*"
    } else {
        ""
    };
    let prefix = format!(
        "{:>12}  {:>12}  {:>6}  {:>6}  {:>5}",
        row.bytes,
        row.count,
        row.dtype,
        row.op.unwrap_or("none"),
        root
    );
    match &row.error {
        Some(e) => format!("{prefix}  failed ({algo}{mark}): {e}"),
        None => format!(
            "{prefix}  {:>10.2}  {:>10}  {:>8.2}  {:>8.2}  {:>6}  {algo}{mark}",
            row.time_us,
            row.predicted_us
                .map_or("-".to_string(), |p| format!("{p:.2}")),
            row.algbw_gbps,
            row.busbw_gbps,
            row.wrong.map_or("N/A".to_string(), |w| w.to_string()),
        ),
    }
}

/// Totals over a run's rows, for the footer and the exit status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Rows reported.
    pub rows: usize,
    /// Rows that failed.
    pub failed: usize,
    /// Wrong elements over all rows.
    pub wrong: u64,
    busbw_sum: f64,
    busbw_rows: usize,
}

impl Summary {
    /// Adds a row (its bus bandwidth counts toward the average if it is
    /// automatic choice's row and did not fail).
    pub fn add(&mut self, row: &Row) {
        self.rows += 1;
        if row.error.is_some() {
            self.failed += 1;
        } else if row.auto_choice {
            self.busbw_sum += row.busbw_gbps;
            self.busbw_rows += 1;
        }
        self.wrong += row.wrong.unwrap_or(0);
    }

    /// Whether every row ran and every checked element was right.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.wrong == 0
    }

    /// The footer lines.
    pub fn footer(&self, check: bool) -> String {
        let avg = if self.busbw_rows == 0 {
            0.0
        } else {
            self.busbw_sum / self.busbw_rows as f64
        };
        let mut f = format!("# Avg bus bandwidth    : {avg:.4} GB/s (rows of auto's choice)\n");
        if check {
            f.push_str(&format!(
                "# Wrong elements       : {} {}\n",
                self.wrong,
                if self.wrong == 0 { "OK" } else { "FAILED" }
            ));
        }
        if self.failed > 0 {
            f.push_str(&format!(
                "# Failed rows          : {} of {}\n",
                self.failed, self.rows
            ));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse;
    use crate::layout::Layout;
    use braid::Algorithm;

    fn spec(bytes: u64) -> RowSpec {
        RowSpec {
            layout: Layout {
                count: bytes / 4,
                bytes,
            },
            forced: None,
            algorithm: Some(Algorithm::Ring),
            auto_choice: true,
            predicted: Some(2e-3),
            warmup: 1,
            iters: 3,
        }
    }

    fn ok(samples: &[f64], wrong: u64) -> RankResult {
        RankResult {
            samples: samples.to_vec(),
            wrong,
            ..RankResult::default()
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn a_sample_is_the_slowest_rank_and_the_row_their_median() {
        let o = parse(["all_reduce", "--ranks", "2", "-c"]).unwrap();
        let ctx = RowContext::new(&o, "local");
        let rows = [ok(&[1e-3, 5e-3, 2e-3], 0), ok(&[4e-3, 1e-3, 1e-3], 2)];
        let row = combine(&ctx, &spec(4_000_000), &rows);
        // Slowest per sample: 4, 5, 2 ms → median 4 ms, min 2 ms.
        assert!((row.time_us - 4000.0).abs() < 1e-6, "{row:?}");
        assert!((row.min_us - 2000.0).abs() < 1e-6);
        assert!((row.algbw_gbps - 1.0).abs() < 1e-9);
        assert!((row.busbw_gbps - 1.0).abs() < 1e-9, "2(n-1)/n = 1 at n = 2");
        assert_eq!(row.wrong, Some(2));
        assert_eq!(
            (row.op, row.root, row.algorithm),
            (Some("sum"), None, Some("ring"))
        );
        let text = format_row(&row, false);
        assert!(
            text.contains("4000.00") && text.ends_with("2  ring"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_row_names_the_first_real_cause() {
        let o = parse(["broadcast", "--ranks", "2"]).unwrap();
        let ctx = RowContext::new(&o, "local");
        let failed = |msg: &str, consequential| RankResult {
            error: Some(msg.to_string()),
            consequential,
            ..RankResult::default()
        };
        let row = combine(
            &ctx,
            &spec(64),
            &[failed("peer died", true), failed("no plan", false)],
        );
        assert_eq!(row.error.as_deref(), Some("no plan"));
        assert!(row.time_us.is_nan() && row.wrong.is_none());
        let json = serde_json::to_value(&row).unwrap();
        assert!(
            json["time_us"].is_null() && json["error"] == "no plan",
            "{json}"
        );
        assert!(format_row(&row, true).ends_with("failed (ring*): no plan"));
        let mut s = Summary::default();
        s.add(&row);
        assert!(!s.ok() && s.footer(false).contains("Failed rows          : 1 of 1"));
    }

    #[test]
    fn json_rows_have_every_field() {
        let o = parse(["gather", "--ranks", "2", "-r", "1"]).unwrap();
        let row = combine(
            &RowContext::new(&o, "local"),
            &spec(64),
            &[ok(&[1e-6], 0), ok(&[1e-6], 0)],
        );
        let json = serde_json::to_value(&row).unwrap();
        let keys = [
            "collective",
            "bytes",
            "count",
            "dtype",
            "op",
            "root",
            "nranks",
            "transport",
            "algorithm",
            "auto_choice",
            "time_us",
            "algbw_gbps",
            "busbw_gbps",
            "wrong",
            "predicted_us",
        ];
        let got: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = keys.to_vec();
        want.sort_unstable();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want, "exactly these fields");
        assert_eq!(json["predicted_us"], 2000.0);
        assert!(json.get("error").is_none());
        assert_eq!(json["root"], 1);
        assert!(json["op"].is_null() && json["wrong"].is_null());
    }

    #[test]
    fn header_names_columns_and_timing() {
        let o = parse(["all_gather", "-a", "all"]).unwrap();
        let h = header(&o, "local", true);
        assert!(h.contains("busbw = algbw * (n-1)/n"), "{h}");
        assert!(h.contains("* = auto's choice"));
        assert!(h.contains("#wrong  algorithm"));
        assert!(h.contains("sizes 8 B to 16 MiB, factor 4; 20 timed calls per row after 5 warm-up calls (up to 50x more below 64 KiB, fewer above 16 MiB unless given)"), "{h}");
        assert!(h.lines().all(|l| l == l.trim_end()), "no trailing blanks");
    }
}
