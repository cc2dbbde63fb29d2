//! # braid
//!
//! Collective communication for SPMD programs: broadcast, scatter, gather,
//! all-gather, reduce, all-reduce, reduce-scatter, all-to-all (with
//! variable-count forms), barrier and point-to-point send/recv, over pluggable
//! transports and topologies.
//!
//! Algorithms are data: a topology generates a per-rank [`Plan`]
//! (`braid_topologies`), the executor runs it over a [`Transport`]
//! (`braid_transports`), a simulator checks every plan in tests, and a
//! cost model prices the plans of each call on the links the communicator
//! measured, to choose its algorithm ([`select`], [`calibrate`]).
//!
//! ```
//! use braid::{run_local, Config, ReduceOp};
//!
//! // Four ranks as threads of this process; each contributes rank+1.
//! let sums = run_local(4, Config::default(), |comm| {
//!     let mine = vec![(comm.rank() + 1) as f32; 3];
//!     let mut total = vec![0.0f32; 3];
//!     comm.all_reduce(&mine, &mut total, ReduceOp::Sum)?;
//!     let mut gathered = vec![0.0f32; 3 * comm.size()];
//!     comm.all_gather(&total, &mut gathered)?;
//!     Ok::<_, braid::Error>(gathered[0])
//! })
//! .unwrap();
//! assert!(sums.iter().all(|r| *r.as_ref().unwrap() == 10.0));
//! ```
//!
//! Every call returns `Result<_, braid::Error>`: bad arguments, ranks that
//! call different collectives, dead peers and timeouts are errors that say
//! what, where and what to do — never a panic or an endless wait.

#![warn(missing_docs)]

pub mod calibrate;
mod communicator;
mod config;
mod dtype;
mod error;
mod executor;
mod init;
pub mod launch;
mod local;
pub mod select;
pub mod store;

pub use calibrate::Calibration;
pub use communicator::{point_to_point_plan, Communicator};
pub use config::{
    parse_algorithms, parse_calibrate, parse_links, parse_size, Calibrate, Config, LinkSpec,
};
pub use dtype::{
    reduce_into, DType, Element, ReduceOp, PARALLEL_REDUCE_BYTES, PARALLEL_REDUCE_MIN_THREADS,
};
pub use error::{Error, ErrorKind, Result};
pub use init::init_logging;
pub use local::{local_group, local_group_with, run_local};
pub use select::{Choice, ChosenBy};

pub use braid_topologies::{Algorithm, Collective, Network, Plan};
pub use braid_transports::Transport;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// f16 and bf16 element types (re-exported from the `half` crate).
pub use half::{bf16, f16};
