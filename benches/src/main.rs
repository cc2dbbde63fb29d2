//! `braid-bench <collective> [options]`: nccl-tests style benchmark of
//! braid's collectives; `braid-bench --help` for the options.

use std::io::Write;
use std::process::ExitCode;

use braid_bench::args::{parse, AlgoChoice, TransportChoice, USAGE};
use braid_bench::report::{format_row, header, Summary};
use braid_bench::run::{connect_group, run, run_distributed, run_group};

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => return e.exit("braid-bench", USAGE),
    };
    let config = match braid::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("braid-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Under a launcher (and without --ranks or --transport local) this
    // process is one rank; --transport auto|tcp|shm says how it connects.
    let launched = !o.ranks_from_flag
        && o.transport != Some(TransportChoice::Local)
        && braid::launch::detect().is_ok();
    let connected = match o.transport {
        Some(t) if t != TransportChoice::Local => {
            // Read by Communicator::connect; set before any thread starts.
            std::env::set_var("BRAID_TRANSPORT", t.name());
            if !launched
                && std::env::var_os("MASTER_ADDR").is_none()
                && std::env::var_os("BRAID_SOCKET_IFNAME").is_none()
            {
                // Threads of this process: TCP over loopback.
                std::env::set_var("MASTER_ADDR", "127.0.0.1");
            }
            !launched
        }
        _ => false,
    };
    let group = if connected {
        match connect_group(o.ranks, &config) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("braid-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
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
        let transport = match (&comm, &group) {
            (Some(c), _) => c.transport_name(),
            (None, Some(g)) => g[0].transport_name(),
            (None, None) => "local",
        };
        let _ = write!(out, "{}", header(&o, transport, comm.is_none()));
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
    let result = match (comm, group) {
        (Some(c), _) => run_distributed(&o, c, on_row),
        (None, Some(g)) => run_group(&o, g, on_row),
        (None, None) => run(&o, config, on_row),
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
