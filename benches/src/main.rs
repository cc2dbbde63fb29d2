//! `braid-bench <collective> [options]`: nccl-tests style benchmark of
//! braid's collectives; `braid-bench --help` for the options.

use std::io::Write;
use std::process::ExitCode;

use braid_bench::args::{parse, AlgoChoice, ArgError, USAGE};
use braid_bench::report::{format_row, header, Summary};
use braid_bench::run::run;

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(ArgError::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(ArgError::Usage(msg)) => {
            eprintln!("braid-bench: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match braid::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("braid-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    if !o.json {
        // The in-process group's transport; a launcher-started run will name its own.
        let _ = write!(out, "{}", header(&o, "local"));
    }
    let mut summary = Summary::default();
    let mark_auto = o.algo == AlgoChoice::All;
    let result = run(&o, config, |row| {
        summary.add(row);
        let line = if o.json {
            serde_json::to_string(row).expect("rows serialise")
        } else {
            format_row(row, mark_auto)
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    if let Err(e) = result {
        eprintln!("braid-bench: {e}");
        return ExitCode::FAILURE;
    }
    if !o.json {
        let _ = write!(out, "{}", summary.footer(o.check));
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
