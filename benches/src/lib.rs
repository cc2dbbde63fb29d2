//! # braid-bench
//!
//! The `braid-bench` binary, nccl-tests style: `braid-bench all_reduce
//! --ranks 4 -b 8 -e 16M -f 4 -c -a all` prints one row per size (and per
//! algorithm with `-a all`) with nccl-tests' size, algbw and busbw
//! definitions (see `/work/shared/anchors/README.md`), as a table or as JSON
//! lines. The modules hold its pieces so that they can be tested:
//!
//! - [`args`]: the command line;
//! - [`layout`]: sizes, counts, iteration counts, bus-bandwidth factors;
//! - [`check`]: exactly-summable inputs and expected results for `-c`;
//! - [`run`]: the rank threads and the row loop;
//! - [`report`]: combining ranks' samples into rows, table and JSON output.

#![warn(missing_docs)]

pub mod args;
pub mod check;
pub mod layout;
pub mod report;
pub mod run;
