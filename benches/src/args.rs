//! Command-line parsing, by hand, with nccl-tests' flag names.

use std::fmt;
use std::str::FromStr;

use braid::{parse_size, Algorithm, Collective, DType, ReduceOp};

/// The usage text, printed by `-h` and (to stderr) after a bad argument.
pub const USAGE: &str = "\
usage: braid-bench <collective> [options]

collectives: all_reduce all_gather broadcast reduce reduce_scatter gather
             scatter all_to_all send_recv barrier

options:
  --ranks N                  ranks, as threads of this process; without it, under a
                             launcher (braid-run, torchrun, srun, mpirun) this process
                             is one rank and rank 0 prints; otherwise 4 threads
  --transport T              local: ranks as threads over the in-process transport;
                             auto, tcp, shm: under a launcher, this process is one rank
                             connected that way (sets BRAID_TRANSPORT); without one,
                             --ranks threads of this process connected that way;
                             cuda: not available in this build.
                             Default: local, or BRAID_TRANSPORT under a launcher
  -b, --minbytes SIZE        smallest size (default 8)
  -e, --maxbytes SIZE        largest size (default 16M)
  -f, --stepfactor F         multiply the size by F from one row to the next (default 4, >= 2)
      --sizes LIST           exactly these sizes instead (e.g. 8,64K,1M,16M,64M)
  -n, --iters N              timed calls per row (default 20; up to 50x more below 64K,
                             fewer above 16M unless given)
  -w, --warmup_iters N       untimed calls per row first (default 5; scaled as -n)
  -c, --check                check every element of every result; exit 1 if any is wrong
  -d, --datatype T           f32 (default) f64 f16 bf16 i8 u8 i32 u32 i64 u64
  -o, --op OP                sum (default) prod min max avg (avg: float types only)
  -r, --root R               root of broadcast, reduce, gather and scatter (default 0)
  -a, --algorithm A          auto (default: the cost model's choice), all (one row per
                             algorithm, * marks auto's choice; the algorithms of a size
                             take their timed calls in turn) or an algorithm name
      --start S              how the ranks start each timed call: barrier (default: a
                             barrier, then the call, as mpi_coll_bench and the gloo
                             anchor time it) or together (after the barrier all ranks
                             start at one instant: a start line for threads, a moment on
                             the shared clock for processes on one host; what the cost
                             model predicts)
      --json                 one JSON object per row on stdout instead of the table
                             (fields: collective bytes count dtype op root nranks
                             transport algorithm auto_choice time_us algbw_gbps
                             busbw_gbps wrong predicted_us, and error when failed)
  -h, --help                 this text

SIZE is the largest per-rank buffer in bytes (nccl-tests' convention) and takes
K, M, G suffixes (powers of 1024): 8, 64K, 16M, 1G.
The predicted column is the cost model's time for the row's algorithm (for
send_recv, its one step) on the links the group calibrated (BRAID_LINK,
BRAID_CALIBRATE; docs/cost-model.md).
Environment: BRAID_ALGO, BRAID_TIMEOUT, BRAID_CHUNK_BYTES, BRAID_LINK,
BRAID_CALIBRATE as for any braid program.
Exit status: 0 ok, 1 a wrong element or a failed call, 2 bad arguments.
";

/// What a run measures: one of braid's collectives or paired send/recv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// A collective call of `braid::Communicator` (barrier included).
    Collective(Collective),
    /// `send_recv` around a ring: rank r sends to r+1 while it receives from r−1.
    SendRecv,
}

impl Bench {
    /// Every bench, in the order of the usage text.
    pub const ALL: [Bench; 10] = [
        Bench::Collective(Collective::AllReduce),
        Bench::Collective(Collective::AllGather),
        Bench::Collective(Collective::Broadcast),
        Bench::Collective(Collective::Reduce),
        Bench::Collective(Collective::ReduceScatter),
        Bench::Collective(Collective::Gather),
        Bench::Collective(Collective::Scatter),
        Bench::Collective(Collective::AllToAll),
        Bench::SendRecv,
        Bench::Collective(Collective::Barrier),
    ];

    /// The name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Bench::Collective(c) => c.name(),
            Bench::SendRecv => "send_recv",
        }
    }

    /// The collective, unless this is send/recv.
    pub fn collective(self) -> Option<Collective> {
        match self {
            Bench::Collective(c) => Some(c),
            Bench::SendRecv => None,
        }
    }

    /// Whether the call takes a reduction op.
    pub fn reduces(self) -> bool {
        self.collective().is_some_and(Collective::reduces)
    }

    /// Whether the call takes a root.
    pub fn rooted(self) -> bool {
        self.collective().is_some_and(Collective::rooted)
    }

    /// The algorithms that implement it (none for send/recv).
    pub fn algorithms(self) -> &'static [Algorithm] {
        self.collective().map_or(&[], Collective::algorithms)
    }
}

impl fmt::Display for Bench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bench {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Bench::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Bench::ALL.iter().map(|b| b.name()).collect();
                format!("unknown collective '{s}'; valid: {}", names.join(", "))
            })
    }
}

/// How the ranks of a run are connected (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    /// Ranks as threads over the in-process transport.
    Local,
    /// Shared memory on this host, TCP to others (`BRAID_TRANSPORT=auto`).
    Auto,
    /// TCP everywhere.
    Tcp,
    /// Shared memory (every rank on this host).
    Shm,
}

impl TransportChoice {
    /// The name on the command line (and the `BRAID_TRANSPORT` value).
    pub fn name(self) -> &'static str {
        match self {
            TransportChoice::Local => "local",
            TransportChoice::Auto => "auto",
            TransportChoice::Tcp => "tcp",
            TransportChoice::Shm => "shm",
        }
    }
}

impl FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(TransportChoice::Local),
            "auto" => Ok(TransportChoice::Auto),
            "tcp" => Ok(TransportChoice::Tcp),
            "shm" => Ok(TransportChoice::Shm),
            "cuda" => Err(
                "--transport cuda is not available in this build (braid has no CUDA transport yet); \
                 use local, auto, tcp or shm"
                    .into(),
            ),
            _ => Err(format!(
                "unknown transport '{s}'; valid: local, auto, tcp, shm (cuda: not in this build)"
            )),
        }
    }
}

/// Which algorithms the rows use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgoChoice {
    /// Whatever the communicator picks (the size rule, or `BRAID_ALGO`).
    Auto,
    /// One row per algorithm that implements the collective, per size.
    All,
    /// This algorithm for every row.
    Force(Algorithm),
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// What to measure.
    pub bench: Bench,
    /// Ranks in the in-process group (or, under a launcher, the job's size).
    pub ranks: usize,
    /// Whether `--ranks` was given: without it, a launcher's environment
    /// (braid-run, torchrun, Slurm, Open MPI, PMI) makes this process one rank.
    pub ranks_from_flag: bool,
    /// Smallest size in bytes.
    pub min_bytes: u64,
    /// Largest size in bytes.
    pub max_bytes: u64,
    /// Size multiplier between rows (>= 2).
    pub factor: u64,
    /// Exact sizes (`--sizes 8,64K,1M`), instead of `-b`/`-e`/`-f`.
    pub sizes: Option<Vec<u64>>,
    /// Timed calls per row; `None` scales the default down for large sizes.
    pub iters: Option<usize>,
    /// Warm-up calls per row; `None` scales the default down for large sizes.
    pub warmup: Option<usize>,
    /// Check every element of every result.
    pub check: bool,
    /// Element type.
    pub dtype: DType,
    /// Reduction op (used by reducing collectives only).
    pub op: ReduceOp,
    /// Root rank (used by rooted collectives only).
    pub root: usize,
    /// Algorithm choice.
    pub algo: AlgoChoice,
    /// JSON lines instead of the table.
    pub json: bool,
    /// `--transport`, if given.
    pub transport: Option<TransportChoice>,
    /// `--start`.
    pub start: StartMode,
}

/// How the ranks begin each timed call (`--start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// A barrier, then the call: the anchors' definition (a rank that leaves
    /// the barrier late may find its data already there).
    Barrier,
    /// After the barrier, every rank starts at the same instant: the time
    /// from a common start to the last rank's end, as the cost model prices
    /// it.
    Together,
}

impl FromStr for StartMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "barrier" => Ok(StartMode::Barrier),
            "together" => Ok(StartMode::Together),
            _ => Err(format!("--start '{s}': valid: barrier, together")),
        }
    }
}

/// Default timed calls per row.
pub const DEFAULT_ITERS: usize = 20;
/// Default warm-up calls per row.
pub const DEFAULT_WARMUP: usize = 5;

impl Options {
    /// The defaults for `bench`.
    pub fn new(bench: Bench) -> Options {
        Options {
            bench,
            ranks: 4,
            ranks_from_flag: false,
            min_bytes: 8,
            max_bytes: 16 << 20,
            factor: 4,
            sizes: None,
            iters: None,
            warmup: None,
            check: false,
            dtype: DType::F32,
            op: ReduceOp::Sum,
            root: 0,
            algo: AlgoChoice::Auto,
            json: false,
            transport: None,
            start: StartMode::Barrier,
        }
    }
}

/// Why no [`Options`] came out of the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// `-h` / `--help`: print [`USAGE`] and exit 0.
    Help,
    /// A bad argument: print the message and [`USAGE`] to stderr, exit 2.
    Usage(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Help => f.write_str("help requested"),
            ArgError::Usage(m) => f.write_str(m),
        }
    }
}

/// A usage error saying `msg`.
pub fn usage(msg: impl Into<String>) -> ArgError {
    ArgError::Usage(msg.into())
}

impl ArgError {
    /// What a program does with this error: `-h` prints `usage_text` and
    /// exits 0; a bad argument prints the message and `usage_text` to
    /// stderr and exits 2.
    pub fn exit(self, program: &str, usage_text: &str) -> std::process::ExitCode {
        match self {
            ArgError::Help => {
                print!("{usage_text}");
                std::process::ExitCode::SUCCESS
            }
            ArgError::Usage(msg) => {
                eprintln!("{program}: {msg}\n\n{usage_text}");
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// Walks the arguments flag by flag, taking `--flag=value` and
/// `--flag value` alike.
pub struct Flags {
    args: Vec<String>,
    next: usize,
}

impl Flags {
    /// The arguments after the program name.
    pub fn new<I, S>(args: I) -> Flags
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Flags {
            args: args.into_iter().map(|a| a.as_ref().to_string()).collect(),
            next: 0,
        }
    }

    /// The next argument and the value written into it (`--flag=value`);
    /// `None` at the end. `switches` take no value: one written in is an
    /// error.
    pub fn next_flag(
        &mut self,
        switches: &[&str],
    ) -> Result<Option<(String, Option<String>)>, ArgError> {
        let Some(arg) = self.args.get(self.next).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if inline.is_some() && switches.contains(&flag.as_str()) {
            return Err(usage(format!("{flag} takes no value")));
        }
        Ok(Some((flag, inline)))
    }

    /// The value of `flag`: the one written in, else the next argument.
    pub fn value(&mut self, flag: &str, inline: &mut Option<String>) -> Result<String, ArgError> {
        if let Some(v) = inline.take() {
            return Ok(v);
        }
        let v = self
            .args
            .get(self.next)
            .cloned()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        self.next += 1;
        Ok(v)
    }
}

fn number<T: FromStr>(flag: &str, v: &str) -> Result<T, ArgError> {
    v.trim()
        .parse()
        .map_err(|_| usage(format!("{flag} takes a whole number, got '{v}'")))
}

fn size(flag: &str, v: &str) -> Result<u64, ArgError> {
    parse_size(v).ok_or_else(|| {
        usage(format!(
            "{flag} takes a size in bytes such as 8, 64K, 16M or 1G, got '{v}'"
        ))
    })
}

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Options, ArgError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut flags = Flags::new(args);
    let mut bench: Option<Bench> = None;
    let mut o = Options::new(Bench::SendRecv);
    let mut algo: Option<String> = None;
    while let Some((flag, mut inline)) =
        flags.next_flag(&["-c", "--check", "--json", "-h", "--help"])?
    {
        let flag = flag.as_str();
        let mut value = || flags.value(flag, &mut inline);
        match flag {
            "-h" | "--help" => return Err(ArgError::Help),
            "-c" | "--check" => o.check = true,
            "--json" => o.json = true,
            "--ranks" => {
                o.ranks = number(flag, &value()?)?;
                o.ranks_from_flag = true;
            }
            "-b" | "--minbytes" => o.min_bytes = size(flag, &value()?)?,
            "-e" | "--maxbytes" => o.max_bytes = size(flag, &value()?)?,
            "-f" | "--stepfactor" => o.factor = number(flag, &value()?)?,
            "--sizes" => {
                let list = value()?;
                let sizes = list
                    .split(',')
                    .map(|s| size(flag, s))
                    .collect::<Result<Vec<u64>, ArgError>>()?;
                o.sizes = Some(sizes);
            }
            "-n" | "--iters" => o.iters = Some(number(flag, &value()?)?),
            "-w" | "--warmup_iters" => o.warmup = Some(number(flag, &value()?)?),
            "-d" | "--datatype" => o.dtype = value()?.parse().map_err(usage)?,
            "-o" | "--op" => o.op = value()?.parse().map_err(usage)?,
            "-r" | "--root" => o.root = number(flag, &value()?)?,
            "-a" | "--algorithm" => algo = Some(value()?),
            "--transport" => o.transport = Some(value()?.parse().map_err(usage)?),
            "--start" => o.start = value()?.parse().map_err(usage)?,
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(usage(format!("unknown option '{f}'")))
            }
            name => {
                if let Some(b) = bench {
                    return Err(usage(format!(
                        "one collective per run: got '{b}' and '{name}'"
                    )));
                }
                bench = Some(name.parse().map_err(usage)?);
            }
        }
    }
    o.bench = bench.ok_or_else(|| usage("name the collective to measure"))?;
    o.algo = match algo.as_deref() {
        None | Some("auto") => AlgoChoice::Auto,
        Some("all") => AlgoChoice::All,
        Some(name) => AlgoChoice::Force(check_algorithm(o.bench, name)?),
    };
    validate(&o)?;
    Ok(o)
}

fn check_algorithm(bench: Bench, name: &str) -> Result<Algorithm, ArgError> {
    let algorithm: Algorithm = name.parse().map_err(usage)?;
    let valid: Vec<&str> = bench.algorithms().iter().map(|a| a.name()).collect();
    if valid.is_empty() {
        return Err(usage(format!(
            "{bench} has no algorithms to choose from; use -a auto"
        )));
    }
    if !algorithm.supports(bench.collective().expect("has algorithms")) {
        return Err(usage(format!(
            "algorithm '{algorithm}' does not implement {bench}; valid for {bench}: {}, or auto, all",
            valid.join(", ")
        )));
    }
    Ok(algorithm)
}

fn validate(o: &Options) -> Result<(), ArgError> {
    if o.ranks == 0 {
        return Err(usage("--ranks must be at least 1"));
    }
    if o.factor < 2 {
        return Err(usage(format!(
            "-f must be at least 2 (got {}) so that sizes grow",
            o.factor
        )));
    }
    if o.min_bytes > o.max_bytes {
        return Err(usage(format!(
            "-b {} is larger than -e {}",
            o.min_bytes, o.max_bytes
        )));
    }
    if o.iters == Some(0) {
        return Err(usage("-n must be at least 1"));
    }
    if o.bench.rooted() && o.root >= o.ranks {
        return Err(usage(format!(
            "root {} is out of range for {} ranks (valid: 0..={})",
            o.root,
            o.ranks,
            o.ranks - 1
        )));
    }
    if o.bench.reduces() && o.op == ReduceOp::Avg && !o.dtype.is_float() {
        return Err(usage(format!(
            "op avg is for float dtypes only (f32 f64 f16 bf16), not {}",
            o.dtype
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(ArgError::Usage(m)) => m,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = parse(["all_reduce"]).unwrap();
        assert_eq!(o, Options::new(Bench::Collective(Collective::AllReduce)));
        assert_eq!(o.ranks, 4);
        assert_eq!((o.min_bytes, o.max_bytes, o.factor), (8, 16 << 20, 4));
    }

    #[test]
    fn every_option() {
        let o = parse([
            "--ranks", "3", "-b", "64K", "-e", "1G", "-f", "2", "-n", "7", "-w", "0", "-c", "-d",
            "bf16", "-o", "max", "-r", "2", "-a", "tree", "--json", "--start", "together",
            "reduce",
        ])
        .unwrap();
        assert_eq!(o.start, StartMode::Together);
        assert_eq!(
            parse(["all_reduce"]).unwrap().start,
            StartMode::Barrier,
            "the anchors' definition by default"
        );
        assert_eq!(o.bench, Bench::Collective(Collective::Reduce));
        assert_eq!(o.ranks, 3);
        assert_eq!((o.min_bytes, o.max_bytes, o.factor), (64 << 10, 1 << 30, 2));
        assert_eq!((o.iters, o.warmup), (Some(7), Some(0)));
        assert!(o.check && o.json);
        assert_eq!((o.dtype, o.op, o.root), (DType::BF16, ReduceOp::Max, 2));
        assert_eq!(o.algo, AlgoChoice::Force(Algorithm::Tree));
        let o = parse(["--minbytes=1K", "all_gather", "--algorithm=all"]).unwrap();
        assert_eq!((o.min_bytes, o.algo), (1024, AlgoChoice::All));
        assert_eq!(parse(["send_recv"]).unwrap().bench, Bench::SendRecv);
        assert_eq!(
            parse(["barrier", "-a", "auto"]).unwrap().algo,
            AlgoChoice::Auto
        );
    }

    #[test]
    fn help_is_not_an_error_message() {
        assert_eq!(parse(["-h"]), Err(ArgError::Help));
        assert_eq!(parse(["all_reduce", "--help"]), Err(ArgError::Help));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        assert!(err(&[]).contains("name the collective"));
        assert!(err(&["allreduce"]).contains("valid: all_reduce"));
        assert!(err(&["all_reduce", "--bogus"]).contains("unknown option '--bogus'"));
        assert!(err(&["all_reduce", "-b"]).contains("-b needs a value"));
        assert!(err(&["all_reduce", "--sizes", "8,x"]).contains("--sizes"));
        let o = parse(["all_reduce", "--sizes", "8,64K,1M"]).unwrap();
        assert_eq!(o.sizes, Some(vec![8, 65536, 1 << 20]));
        assert!(err(&["all_reduce", "-b", "8X"]).contains("16M"));
        assert!(err(&["all_reduce", "-n", "many"]).contains("whole number"));
        assert!(err(&["all_reduce", "-n", "0"]).contains("at least 1"));
        assert!(err(&["all_reduce", "--start", "now"]).contains("valid: barrier, together"));
        assert!(err(&["all_reduce", "-f", "1"]).contains("at least 2"));
        assert!(err(&["all_reduce", "-b", "1M", "-e", "1K"]).contains("larger than"));
        assert!(err(&["all_reduce", "--ranks", "0"]).contains("at least 1"));
        assert!(err(&["all_reduce", "-d", "f128"]).contains("bf16"));
        assert!(err(&["all_reduce", "-o", "xor"]).contains("valid ops"));
        assert!(err(&["all_reduce", "-d", "i32", "-o", "avg"]).contains("float dtypes only"));
        assert!(err(&["broadcast", "-r", "4"]).contains("out of range for 4 ranks"));
        assert!(err(&["all_reduce", "reduce"]).contains("one collective per run"));
        assert!(err(&["all_reduce", "--check=1"]).contains("takes no value"));
        assert!(err(&["all_reduce", "--transport", "cuda"]).contains("not available in this build"));
        assert!(err(&["all_reduce", "--transport", "ib"]).contains("valid: local, auto, tcp, shm"));
    }

    #[test]
    fn transports_parse() {
        assert_eq!(parse(["all_reduce"]).unwrap().transport, None);
        for t in ["local", "auto", "tcp", "shm"] {
            let o = parse(["all_reduce", "--transport", t]).unwrap();
            assert_eq!(o.transport.map(TransportChoice::name), Some(t));
        }
    }

    #[test]
    fn forced_algorithms_must_implement_the_collective() {
        let e = err(&["all_to_all", "-a", "ring"]);
        assert!(e.contains("does not implement all_to_all"), "{e}");
        assert!(e.contains("pairwise, linear, star"), "{e}");
        assert!(err(&["all_reduce", "-a", "rign"]).contains("unknown algorithm 'rign'"));
        assert!(err(&["send_recv", "-a", "ring"]).contains("no algorithms"));
        // Unused settings are accepted: the root of an unrooted call, avg on integers
        // for a call that does not reduce.
        assert!(parse(["all_gather", "-r", "9", "-d", "i8", "-o", "avg"]).is_ok());
    }

    #[test]
    fn every_bench_name_round_trips() {
        for b in Bench::ALL {
            assert_eq!(b.name().parse::<Bench>().unwrap(), b);
        }
        assert_eq!(Bench::ALL.len(), Collective::ALL.len() + 1);
    }
}
