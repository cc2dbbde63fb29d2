//! In-process groups: one communicator per thread, over the local transport.

use braid_transports::local::{endpoints, DEFAULT_PAIR_CAPACITY};
use braid_transports::shape::{LinkShape, ShapedTransport};
use braid_transports::Transport;

use crate::{Communicator, Config, Error, Result};

/// `n` communicators connected inside this process, rank `r` at index `r`,
/// configured from the `BRAID_*` environment. Move each into its own thread.
pub fn local_group(n: usize) -> Result<Vec<Communicator>> {
    local_group_with(n, Config::from_env()?)
}

/// [`local_group`] with an explicit configuration. `BRAID_SHAPE`, when set,
/// still shapes the links (an invalid value is an error).
pub fn local_group_with(n: usize, config: Config) -> Result<Vec<Communicator>> {
    if n == 0 {
        return Err(Error::invalid(
            "a group needs at least one rank; ask for n >= 1",
        ));
    }
    let shape = LinkShape::from_env().map_err(Error::config)?;
    // BRAID_DEBUG logs in-process groups too (a no-op when it is unset or
    // the program has a subscriber of its own).
    crate::init_logging();
    if let Some(shape) = &shape {
        tracing::info!(
            ranks = n,
            queue_bytes = shape.queue_bytes(),
            "BRAID_SHAPE: every link of the in-process group shaped to {shape}"
        );
    }
    Ok(endpoints(n, DEFAULT_PAIR_CAPACITY)
        .into_iter()
        .map(|ep| {
            let transport: Box<dyn Transport> = match shape {
                Some(shape) => Box::new(ShapedTransport::new(Box::new(ep), shape)),
                None => Box::new(ep),
            };
            Communicator::new(transport, config.clone())
        })
        .collect())
}

/// Runs `f` on every rank of a new in-process group of `n` ranks, one thread
/// each, and returns the results in rank order. A panic on a rank is re-raised
/// after all threads end (peers of a panicked rank get a `PeerFailed` error).
pub fn run_local<R, F>(n: usize, config: Config, f: F) -> Result<Vec<R>>
where
    R: Send,
    F: Fn(&mut Communicator) -> R + Sync,
{
    let group = local_group_with(n, config)?;
    let f = &f;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|mut comm| {
                std::thread::Builder::new()
                    .name(format!("braid-rank-{}", comm.rank()))
                    .spawn_scoped(s, move || f(&mut comm))
                    .expect("spawning a rank thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .collect())
}
