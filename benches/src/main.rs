//! `braid-bench <collective> [options]`: nccl-tests style benchmark of
//! braid's collectives; `braid-bench --help` for the options.

use std::io::Write;
use std::process::ExitCode;

use braid_bench::args::{parse, AlgoChoice, ArgError, USAGE};
use braid_bench::report::{format_row, header, Summary};
use braid_bench::run::{run, run_distributed};

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
    // Under a launcher (and without --ranks) this process is one rank.
    let launched = !o.ranks_from_flag && braid::launch::detect().is_ok();
    let comm = if launched {
        match braid::Communicator::from_env() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("braid-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let mut o = o;
    let prints = comm.as_ref().is_none_or(|c| c.rank() == 0);
    if let Some(c) = &comm {
        o.ranks = c.size();
    }
    let mut out = std::io::stdout().lock();
    if !o.json && prints {
        let transport = comm.as_ref().map_or("local", |c| c.transport_name());
        let _ = write!(out, "{}", header(&o, transport));
    }
    let mut summary = Summary::default();
    let mark_auto = o.algo == AlgoChoice::All;
    let on_row = |row: &braid_bench::report::Row| {
        summary.add(row);
        let line = if o.json {
            serde_json::to_string(row).expect("rows serialise")
        } else {
            format_row(row, mark_auto)
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let result = match comm {
        Some(c) => run_distributed(&o, c, on_row),
        None => run(&o, config, on_row),
    };
    if let Err(e) = result {
        eprintln!("braid-bench: {e}");
        return ExitCode::FAILURE;
    }
    if !o.json && prints {
        let _ = write!(out, "{}", summary.footer(o.check));
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
