//! `braid-sim [options] [collective ...]`: which algorithm braid's cost
//! model picks, and the time it predicts, for every rank count and size on a
//! network given by α, B and γ. Nothing runs on a network: every candidate
//! (algorithm, pipeline chunk) is priced by a discrete-event simulation of
//! its plans (`braid_topologies::cost`). `braid-sim --help` for the options.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use braid::calibrate::network_from_description;
use braid::{parse_size, DType};
use braid_bench::args::{usage, ArgError, Flags};
use braid_topologies::cost::DEFAULT_PIPELINE_BYTES;
use braid_topologies::{
    tune, Candidate, Collective, CostError, Estimate, Hosts, Injection, Link, Network, TuneOptions,
    Tuning,
};

const USAGE: &str = "\
usage: braid-sim [options] [collective ...]

Prices every algorithm (and pipeline chunk) of each collective with braid's
cost model and prints the cheapest, per rank count and size.

collectives: all_reduce all_gather broadcast reduce reduce_scatter gather
             scatter all_to_all barrier
             (default: all_reduce all_gather broadcast reduce_scatter)

network:
  -a, --alpha US             link latency in microseconds (default 20)
  -B, --bandwidth GBIT       link bandwidth in Gbit/s (default 10)
  -g, --gamma NS             reduction cost in ns per byte (default 0.05)
      --copy NS              local copy cost in ns per byte (default 0.05)
      --overhead US          per-message cost on the ports in microseconds (default 1)
      --injection X          per-rank NIC port on the inter-host links: link (default:
                             one port at the link's bandwidth), unlimited, or a rate
                             in Gbit/s
      --buffer SIZE          bytes buffered per pair of ranks; 0 = rendezvous (default 4M)
      --pipeline SIZE        piece a receive-and-reduce overlaps; 0 = none (default 256K)
      --ranks-per-host K     ranks per host, which talk over the intra link (default 1)
      --intra-alpha US       intra-host latency in microseconds (default 0.5)
      --intra-bandwidth GBIT intra-host bandwidth in Gbit/s (default 100)
      --network LINE         the network a calibration printed (BRAID_DEBUG=tuning's
                             line after \"braid tuning network: \"; one link kind, ranks
                             on one host) instead of the flags above but --pipeline

calls:
  -n, --ranks LIST           rank counts: 2,8,64 or A..B (A, 2A, 4A, ... up to B)
                             (default 2,8,64,512,4096)
  -s, --sizes LIST           sizes in bytes, the largest per-rank buffer as in
                             braid-bench: 8,64K,1M or A..B[:F] (A, A*F, ... up to B;
                             F = 2 unless given) (default 8,64K,1M,64M,1G)
  -d, --datatype T           f32 (default) f64 f16 bf16 i8 u8 i32 u32 i64 u64
  -r, --root R               root of rooted collectives (default 0)
      --chunks LIST          pipeline chunks tried (default 16K,64K,256K,1M,4M,16M);
                             braid: per size, the chunks and message bound a
                             communicator tries (its size bucket's)
      --max-messages N       skip candidates with more messages (default 67108864)

output:
      --all                  every candidate priced to the end, * marking the choice
                             (the tuning table; slower)
      --fast                 with --all: abandon candidates slower than the best
                             so far (the default search)
      --json                 one JSON object per row
      --markdown             one table per collective: ranks down, sizes across
  -h, --help                 this text

Exit status: 0 ok, 1 a row no candidate could be priced for, 2 bad arguments.
";

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Markdown,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
struct Options {
    collectives: Vec<Collective>,
    net: Network,
    /// `--network`: a calibration's line, made a network per rank count.
    described: Option<String>,
    ranks: Vec<usize>,
    sizes: Vec<u64>,
    dtype: DType,
    tune: TuneOptions,
    /// `--chunks braid`: per size, the chunks and message bound of
    /// `braid::select::tune_options` instead of `tune`'s.
    as_communicator: bool,
    all: bool,
    format: Format,
    /// The network flags as given, for the header.
    flags: String,
}

fn float(flag: &str, v: &str, positive: bool) -> Result<f64, ArgError> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| usage(format!("{flag} takes a number, got '{v}'")))?;
    let ok = x.is_finite() && if positive { x > 0.0 } else { x >= 0.0 };
    if !ok {
        let need = if positive { "> 0" } else { ">= 0" };
        return Err(usage(format!(
            "{flag} must be finite and {need}, got '{v}'"
        )));
    }
    Ok(x)
}

fn whole(flag: &str, v: &str) -> Result<u64, ArgError> {
    v.trim()
        .parse()
        .map_err(|_| usage(format!("{flag} takes a whole number, got '{v}'")))
}

fn size(flag: &str, v: &str) -> Result<u64, ArgError> {
    parse_size(v.trim()).ok_or_else(|| {
        usage(format!(
            "{flag} takes a size in bytes such as 8, 64K, 16M or 1G, got '{v}'"
        ))
    })
}

/// `a,b,c` or `A..B[:F]` (A, A·F, A·F², … up to B; F defaults to 2).
fn list(
    flag: &str,
    v: &str,
    item: impl Fn(&str) -> Result<u64, ArgError>,
) -> Result<Vec<u64>, ArgError> {
    let mut out = Vec::new();
    for part in v.split(',').filter(|p| !p.trim().is_empty()) {
        if let Some((lo, rest)) = part.split_once("..") {
            let (hi, factor) = match rest.split_once(':') {
                Some((hi, f)) => (hi, whole(flag, f)?),
                None => (rest, 2),
            };
            let (lo, hi) = (item(lo)?, item(hi)?);
            if factor < 2 || lo == 0 || lo > hi {
                return Err(usage(format!(
                    "{flag}: a range A..B[:F] needs 0 < A <= B and F >= 2, got '{part}'"
                )));
            }
            let mut x = lo;
            while x <= hi {
                out.push(x);
                match x.checked_mul(factor) {
                    Some(next) => x = next,
                    None => break,
                }
            }
        } else {
            out.push(item(part)?);
        }
    }
    if out.is_empty() {
        return Err(usage(format!("{flag} needs at least one value")));
    }
    Ok(out)
}

fn parse<I, S>(args: I) -> Result<Options, ArgError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let (mut alpha, mut bw, mut gamma, mut copy, mut overhead) = (20.0, 10.0, 0.05, 0.05, 1.0);
    let mut injection = Injection::Link;
    let mut buffer = 4u64 << 20;
    let mut pipeline = DEFAULT_PIPELINE_BYTES;
    let (mut per_host, mut intra_alpha, mut intra_bw) = (1usize, 0.5, 100.0);
    let mut ranks = vec![2usize, 8, 64, 512, 4096];
    let mut sizes = vec![8u64, 64 << 10, 1 << 20, 64 << 20, 1 << 30];
    let mut dtype = DType::F32;
    let mut tune = TuneOptions::default();
    let mut as_communicator = false;
    let (mut all, mut format) = (false, Format::Table);
    let mut collectives = Vec::new();
    let mut described = None;
    let mut flags = Flags::new(args);
    while let Some((flag, mut inline)) =
        flags.next_flag(&["--all", "--fast", "--json", "--markdown", "-h", "--help"])?
    {
        let flag = flag.as_str();
        let mut value = || flags.value(flag, &mut inline);
        match flag {
            "-h" | "--help" => return Err(ArgError::Help),
            "--all" => {
                all = true;
                tune.exhaustive = true;
            }
            "--fast" => tune.exhaustive = false,
            "--json" => format = Format::Json,
            "--markdown" => format = Format::Markdown,
            "-a" | "--alpha" => alpha = float(flag, &value()?, false)?,
            "-B" | "--bandwidth" => bw = float(flag, &value()?, true)?,
            "-g" | "--gamma" => gamma = float(flag, &value()?, false)?,
            "--copy" => copy = float(flag, &value()?, false)?,
            "--overhead" => overhead = float(flag, &value()?, false)?,
            "--injection" => {
                let v = value()?;
                injection = match v.trim() {
                    "link" => Injection::Link,
                    "unlimited" => Injection::Unlimited,
                    x => {
                        let g = float(flag, x, true).map_err(|_| {
                            usage(format!(
                                "--injection takes link, unlimited or a rate in Gbit/s, got '{v}'"
                            ))
                        })?;
                        Injection::Limit(g * 1e9 / 8.0)
                    }
                };
            }
            "--buffer" => buffer = size(flag, &value()?)?,
            "--pipeline" => pipeline = size(flag, &value()?)?,
            "--ranks-per-host" => {
                per_host = whole(flag, &value()?)? as usize;
                if per_host == 0 {
                    return Err(usage("--ranks-per-host must be at least 1"));
                }
            }
            "--intra-alpha" => intra_alpha = float(flag, &value()?, false)?,
            "--intra-bandwidth" => intra_bw = float(flag, &value()?, true)?,
            "--network" => described = Some(value()?),
            "-n" | "--ranks" => {
                let v = value()?;
                ranks = list(flag, &v, |s| whole(flag, s))?
                    .into_iter()
                    .map(|n| n as usize)
                    .collect();
                if ranks.contains(&0) {
                    return Err(usage("--ranks: a group needs at least 1 rank"));
                }
            }
            "-s" | "--sizes" => {
                let v = value()?;
                sizes = list(flag, &v, |s| size(flag, s))?;
            }
            "-d" | "--datatype" => dtype = value()?.parse().map_err(ArgError::Usage)?,
            "-r" | "--root" => tune.root = whole(flag, &value()?)? as usize,
            "--chunks" => {
                let v = value()?;
                as_communicator = v.trim() == "braid";
                if as_communicator {
                    continue;
                }
                tune.chunk_bytes = list(flag, &v, |s| size(flag, s))?;
                if tune.chunk_bytes.contains(&0) {
                    return Err(usage("--chunks: a chunk must be at least 1 byte"));
                }
            }
            "--max-messages" => tune.max_messages = whole(flag, &value()?)?,
            f if f.starts_with('-') => return Err(usage(format!("unknown option '{f}'"))),
            name => collectives.push(name.parse::<Collective>().map_err(ArgError::Usage)?),
        }
    }
    if collectives.is_empty() {
        collectives = vec![
            Collective::AllReduce,
            Collective::AllGather,
            Collective::Broadcast,
            Collective::ReduceScatter,
        ];
    }
    if let Some(&n) = ranks.iter().find(|&&n| tune.root >= n) {
        if collectives.iter().any(|c| c.rooted()) {
            return Err(usage(format!(
                "--root {} is out of range for {n} ranks",
                tune.root
            )));
        }
    }
    let gbit = |g: f64| g * 1e9 / 8.0;
    let ports = match injection {
        Injection::Link => "one port per rank at link rate".to_string(),
        Injection::Unlimited => "unlimited ports".to_string(),
        Injection::Limit(r) => format!("ports of {} Gbit/s", r * 8.0 / 1e9),
    };
    let mut flags = format!(
        "alpha {alpha} us, bandwidth {bw} Gbit/s, gamma {gamma} ns/B, copy {copy} ns/B, \
         overhead {overhead} us, {ports}, buffer {}, pipeline {}, {dtype}",
        fmt_size(buffer),
        fmt_size(pipeline)
    );
    if per_host > 1 {
        let _ = write!(
            flags,
            ", {per_host} ranks per host (intra: alpha {intra_alpha} us, {intra_bw} Gbit/s)"
        );
    }
    // The port limit is the NIC's: it applies to the inter-host links.
    let net = Network::uniform(alpha / 1e6, gbit(bw))
        .with_injection(injection)
        .with_gamma(gamma / 1e9)
        .with_copy(copy / 1e9)
        .with_overhead(overhead / 1e6)
        .with_buffer_bytes(buffer)
        .with_pipeline_bytes(pipeline)
        .with_hosts(
            Hosts::Blocks(per_host),
            Link::new(intra_alpha / 1e6, gbit(intra_bw)),
        );
    if let Some(line) = &described {
        let n = ranks.iter().copied().max().unwrap_or(2);
        network_from_description(line, n, pipeline)
            .map_err(|e| usage(format!("--network: {e}")))?;
        flags = format!(
            "the calibrated network '{line}', pipeline {}",
            fmt_size(pipeline)
        );
    }
    Ok(Options {
        collectives,
        net,
        described,
        ranks,
        sizes,
        dtype,
        tune,
        as_communicator,
        all,
        format,
        flags,
    })
}

impl Options {
    /// What `tune` tries for calls of `bytes`: `--chunks braid`'s per size
    /// (a communicator's, `braid::select::tune_options`), else the flags'.
    fn tune_for(&self, bytes: u64) -> Cow<'_, TuneOptions> {
        if !self.as_communicator {
            return Cow::Borrowed(&self.tune);
        }
        let braid = braid::select::tune_options(bytes, None, None);
        Cow::Owned(TuneOptions {
            chunk_bytes: braid.chunk_bytes,
            max_messages: braid.max_messages,
            ..self.tune.clone()
        })
    }
}

/// `8`, `64K`, `1M`, `1G` when exact, else bytes.
fn fmt_size(b: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if b >= 1 << shift && b % (1 << shift) == 0 {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// Seconds as µs, ms or s with three significant digits or so.
fn fmt_time(t: f64) -> String {
    let (v, unit) = if t < 1e-3 {
        (t * 1e6, "µs")
    } else if t < 1.0 {
        (t * 1e3, "ms")
    } else {
        (t, "s")
    };
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// The algorithm, with its pipeline chunk when the call is cut into
/// several (`tree/1M`).
fn label(c: &Candidate, bytes: u64) -> String {
    match c.chunk_bytes {
        Some(b) if b < bytes => format!("{}/{}", c.algorithm, fmt_size(b)),
        _ => c.algorithm.to_string(),
    }
}

/// The critical path's main shares, e.g. `latency 62%, transfer 38%`.
fn breakdown(e: &Estimate) -> String {
    let p = e.critical_path;
    let total = p.total();
    if total <= 0.0 {
        return String::new();
    }
    let mut parts: Vec<(&str, f64)> = vec![
        ("latency", p.latency),
        ("transfer", p.transfer),
        ("reduce", p.reduce),
        ("copy", p.copy),
        ("contention", p.contention),
    ];
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    parts
        .iter()
        .filter(|(_, v)| *v / total >= 0.05)
        .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v / total))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_row(o: &Options, t: &Tuning, c: &Candidate, chosen: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "collective": t.shape.collective.name(),
        "ranks": t.shape.nranks,
        "bytes": t.bytes,
        "dtype": o.dtype.name(),
        "algorithm": c.algorithm.name(),
        "chunk_bytes": c.chunk_bytes,
        "chosen": chosen,
    });
    match &c.outcome {
        Ok(e) => {
            v["time_us"] = serde_json::json!(e.time * 1e6);
            v["messages"] = serde_json::json!(e.messages);
            v["critical_path_us"] = serde_json::json!({
                "latency": e.critical_path.latency * 1e6,
                "transfer": e.critical_path.transfer * 1e6,
                "reduce": e.critical_path.reduce * 1e6,
                "copy": e.critical_path.copy * 1e6,
                "contention": e.critical_path.contention * 1e6,
            });
        }
        Err(e) => v["skipped"] = serde_json::json!(e.to_string()),
    }
    v
}

fn header(o: &Options) -> String {
    format!("# braid-sim: {}", o.flags)
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => return e.exit("braid-sim", USAGE),
    };
    let elem = o.dtype.size() as u64;
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    if o.format != Format::Json {
        let _ = writeln!(out, "{}", header(&o));
    }
    for &c in &o.collectives {
        let mut grid: Vec<Vec<String>> = Vec::new();
        match o.format {
            Format::Table => {
                let _ = writeln!(
                    out,
                    "\n# {c}\n# {:>6} {:>8} {:>28} {:>12}  critical path",
                    "ranks", "size", "algorithm", "predicted"
                );
            }
            Format::Markdown => {
                let _ = writeln!(out, "\n**{c}**\n");
                let mut line = String::from("| ranks |");
                let mut rule = String::from("|---|");
                for &s in &o.sizes {
                    let _ = write!(line, " {} |", fmt_size(s));
                    rule.push_str("---|");
                }
                let _ = writeln!(out, "{line}\n{rule}");
            }
            Format::Json => {}
        }
        for &n in &o.ranks {
            let mut cells = vec![n.to_string()];
            let described = o.described.as_ref().map(|line| {
                network_from_description(line, n, o.net.pipeline_bytes)
                    .expect("checked when parsed")
            });
            let net = described.as_ref().unwrap_or(&o.net);
            for &s in &o.sizes {
                let t = match tune(c, s, n, elem, net, &o.tune_for(s)) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("braid-sim: {c} N={n} {s} B: {e}");
                        failed = true;
                        cells.push("error".into());
                        continue;
                    }
                };
                let best = t.best();
                if best.is_none() {
                    failed = true;
                }
                match o.format {
                    Format::Json => {
                        let rows: Vec<&Candidate> = if o.all {
                            t.candidates.iter().collect()
                        } else {
                            best.into_iter().collect()
                        };
                        for cand in rows {
                            let chosen = best.is_some_and(|b| std::ptr::eq(b, cand));
                            let _ = writeln!(out, "{}", json_row(&o, &t, cand, chosen));
                        }
                        if best.is_none() && !o.all {
                            let _ = writeln!(
                                out,
                                "{}",
                                serde_json::json!({
                                    "collective": c.name(), "ranks": n, "bytes": t.bytes,
                                    "dtype": o.dtype.name(), "algorithm": null,
                                    "skipped": "no candidate within --max-messages",
                                })
                            );
                        }
                    }
                    Format::Table => {
                        let (alg, time) = best.map_or(("-".to_string(), "-".to_string()), |b| {
                            (label(b, t.bytes), fmt_time(b.time().unwrap_or(f64::NAN)))
                        });
                        let path = best
                            .and_then(|b| b.outcome.as_ref().ok())
                            .map_or(String::new(), breakdown);
                        let _ = writeln!(
                            out,
                            "  {n:>6} {:>8} {alg:>28} {time:>12}  {path}",
                            fmt_size(t.bytes)
                        );
                        if o.all {
                            for (k, cand) in t.candidates.iter().enumerate() {
                                let mark = if k == 0 && best.is_some() { '*' } else { ' ' };
                                let time = match &cand.outcome {
                                    Ok(e) => fmt_time(e.time),
                                    Err(CostError::Pruned { best }) => {
                                        format!("> {}", fmt_time(*best))
                                    }
                                    Err(CostError::Budget { .. }) => {
                                        "over --max-messages".to_string()
                                    }
                                    Err(e) => e.to_string(),
                                };
                                let _ = writeln!(
                                    out,
                                    "  {mark} {:>43} {time:>12}",
                                    label(cand, t.bytes)
                                );
                            }
                        }
                    }
                    Format::Markdown => cells.push(best.map_or("-".to_string(), |b| {
                        format!(
                            "{} {}",
                            label(b, t.bytes),
                            fmt_time(b.time().unwrap_or(f64::NAN))
                        )
                    })),
                }
            }
            grid.push(cells);
        }
        if o.format == Format::Markdown {
            for row in grid {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_units() {
        let o = parse(["all_reduce"]).unwrap();
        assert_eq!(o.collectives, vec![Collective::AllReduce]);
        assert_eq!(o.ranks, vec![2, 8, 64, 512, 4096]);
        assert_eq!(o.net.inter.alpha, 20e-6);
        assert_eq!(o.net.inter.bandwidth, 1.25e9);
        assert_eq!(o.net.gamma, 0.05e-9);
        assert_eq!(o.net.buffer_bytes, 4 << 20);
        let o = parse(["-a", "2", "--bandwidth=100", "-n", "2..16", "-s", "8..64:4"]).unwrap();
        assert_eq!(o.collectives.len(), 4);
        assert_eq!(o.net.inter.alpha, 2e-6);
        assert_eq!(o.net.inter.bandwidth, 12.5e9);
        assert_eq!(o.ranks, vec![2, 4, 8, 16]);
        assert_eq!(o.sizes, vec![8, 32]);
        let o = parse([
            "-s",
            "8,64K,1G",
            "--injection",
            "unlimited",
            "--buffer",
            "0",
        ])
        .unwrap();
        assert_eq!(o.sizes, vec![8, 64 << 10, 1 << 30]);
        assert_eq!(o.net.inter.injection, Injection::Unlimited);
        assert_eq!(o.net.buffer_bytes, 0);
        let o = parse(["--injection", "40", "--ranks-per-host", "8"]).unwrap();
        assert_eq!(o.net.inter.injection, Injection::Limit(5e9));
        assert!(o.net.same_host(0, 7) && !o.net.same_host(7, 8));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            vec!["--nope"],
            vec!["all_reduc"],
            vec!["-a"],
            vec!["-a", "x"],
            vec!["-B", "0"],
            vec!["-g", "-1"],
            vec!["-n", "0"],
            vec!["-n", "16..2"],
            vec!["-s", "12Q"],
            vec!["-s", "8..1G:1"],
            vec!["-d", "f128"],
            vec!["--injection", "fast"],
            vec!["--json=1"],
            vec!["broadcast", "-r", "4", "-n", "4"],
            vec!["--ranks-per-host", "0"],
            vec!["--chunks", "0"],
            vec!["--network", "tcp: B 1 GB/s"],
        ] {
            assert!(matches!(parse(&bad), Err(ArgError::Usage(_))), "{bad:?}");
        }
        assert_eq!(parse(["-h"]), Err(ArgError::Help));
    }

    #[test]
    fn braid_s_chunks_are_a_communicator_s_per_size() {
        let o = parse(["--chunks", "braid", "-r", "1"]).unwrap();
        let big = o.tune_for(1 << 30);
        assert_eq!(
            big.chunk_bytes,
            vec![4 << 20],
            "1 GiB in at most 256 pieces"
        );
        assert_eq!(big.max_messages, braid::select::MAX_MESSAGES);
        assert_eq!(big.root, 1);
        assert_eq!(
            o.tune_for(64 << 10).chunk_bytes,
            braid::select::CHUNK_CANDIDATES.to_vec()
        );
        let o = parse(["--chunks", "16K,1M"]).unwrap();
        assert_eq!(o.tune_for(1 << 30).chunk_bytes, vec![16 << 10, 1 << 20]);
    }

    #[test]
    fn a_calibration_s_line_is_the_network() {
        let line = "tcp: alpha 1.50 us, B 2.000 GB/s, o 4.00 us, call 0.20 us, one port \
                    (measured, 12 pairs); gamma 0.100 ns/B, copy 0.080 ns/B (measured); \
                    no host bus; calibrated in 100.0 ms";
        let o = parse(["--network", line, "-n", "4", "all_to_all"]).unwrap();
        let net = network_from_description(o.described.as_deref().unwrap(), 4, 256 << 10).unwrap();
        let close = |got: f64, want: f64| assert!((got / want - 1.0).abs() < 1e-12, "{got} {want}");
        close(net.inter.alpha, 1.5e-6);
        close(net.inter.bandwidth, 2e9);
        close(net.overhead, 4e-6);
        close(net.call_overhead, 0.2e-6);
        close(net.gamma, 0.1e-9);
        close(net.copy, 0.08e-9);
        assert!(net.host_bandwidth.is_infinite() && net.inter.duplex.is_none());
        assert!(o.flags.contains("calibrated network"), "{}", o.flags);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_size(8), "8");
        assert_eq!(fmt_size(64 << 10), "64K");
        assert_eq!(fmt_size(3 << 20), "3M");
        assert_eq!(fmt_size(1000), "1000");
        assert_eq!(fmt_time(12.345e-6), "12.3 µs");
        assert_eq!(fmt_time(1.5e-3), "1.50 ms");
        assert_eq!(fmt_time(2.0), "2.00 s");
    }
}
