//! Choosing the algorithm, and the pipeline chunk, of a call.
//!
//! Every call whose algorithm is not forced (`BRAID_ALGO`,
//! [`crate::Config::with_algorithm`], [`crate::Communicator::set_algorithm`])
//! takes the cheapest (algorithm, chunk) the cost model
//! ([`braid_topologies::tune`]) predicts for the call's collective, size
//! bucket, number of ranks and element size on the communicator's
//! calibrated network ([`crate::calibrate`]). The choice is a pure function
//! of these inputs, and the network is the same bit for bit on every rank,
//! so every rank chooses alike.
//!
//! - **Buckets.** Sizes (the largest per-rank buffer in bytes) are grouped
//!   by powers of two: a call of `s` bytes is priced at the smallest power
//!   of two at or above `s` ([`bucket`]), once per communicator and bucket
//!   (and once per process for in-process groups, which share the result).
//! - **Chunks.** Pipelined algorithms (tree broadcast, reduce and
//!   all-reduce, double binary tree, ring broadcast) are priced with every
//!   chunk of [`CHUNK_CANDIDATES`] that cuts the message in at most
//!   [`MAX_PIECES`] pieces (the largest always), unless a chunk was given
//!   (`BRAID_CHUNK_BYTES`). The chunk chosen is also the piece the executor
//!   streams the call in.
//! - **Bounded.** Candidates of more than [`MAX_MESSAGES`] messages are not
//!   priced, and `tune` prunes by lower bounds: a bucket costs a few
//!   milliseconds to price at 64 ranks.
//! - **all_to_all_v** with counts each rank only knows in part has no size
//!   the ranks agree on: it takes `pairwise`.
//! - **Fallback.** If the model cannot price any candidate, the size rule
//!   below ([`choose`]) decides, and a warning says why.
//!
//! The size rule, the fallback (and the choice before a communicator has
//! calibrated): small messages take the latency-optimal algorithms
//! (⌈log2 N⌉ rounds), large ones the bandwidth-optimal ones.
//!
//! | collective | up to 64 KiB | above |
//! |---|---|---|
//! | all_reduce | recursive_doubling | ring (halving_doubling up to 1 MiB when N is a power of two) |
//! | all_gather | bruck | ring |
//! | reduce_scatter | halving_doubling | ring |
//! | broadcast | tree | tree (pipelined in chunks) |
//! | reduce | tree | halving_doubling |
//! | scatter, gather | tree | star |
//! | all_to_all | linear | pairwise |
//! | barrier | dissemination | dissemination |
//!
//! "Size" is the largest per-rank buffer in bytes (nccl-tests' convention).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use braid_topologies::cost::pipelines;
use braid_topologies::{tune, CostError, Network, TuneOptions};
use braid_topologies::{Algorithm, Collective};

const SMALL: u64 = 64 << 10;
const MEDIUM: u64 = 1 << 20;

/// The algorithm the size rule picks for `collective` with `bytes` at `nranks`.
pub fn choose(collective: Collective, bytes: u64, nranks: usize) -> Algorithm {
    use Algorithm::*;
    let small = bytes <= SMALL;
    match collective {
        Collective::AllReduce if small => RecursiveDoubling,
        Collective::AllReduce if bytes <= MEDIUM && nranks.is_power_of_two() => HalvingDoubling,
        Collective::AllReduce => Ring,
        Collective::AllGather if small => Bruck,
        Collective::AllGather => Ring,
        Collective::ReduceScatter if small => HalvingDoubling,
        Collective::ReduceScatter => Ring,
        Collective::Broadcast => Tree,
        Collective::Reduce if small => Tree,
        Collective::Reduce => HalvingDoubling,
        Collective::Scatter | Collective::Gather if small => Tree,
        Collective::Scatter | Collective::Gather => Star,
        Collective::AllToAll if small => Linear,
        Collective::AllToAll => Pairwise,
        Collective::Barrier => Dissemination,
    }
}

/// The size a call of `bytes` is priced at: the smallest power of two at or
/// above it (0 for 0).
pub fn bucket(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        bytes.checked_next_power_of_two().unwrap_or(1 << 63)
    }
}

/// Pipeline chunks tried for pipelined algorithms, in bytes.
pub const CHUNK_CANDIDATES: [u64; 5] = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];
/// Chunks that would cut a message in more pieces are not tried.
pub const MAX_PIECES: u64 = 256;
/// Candidates whose plans hold more messages are not priced.
pub const MAX_MESSAGES: u64 = 1 << 20;

/// What `tune` tries for a call of `bytes` (already a [`bucket`]): the chunk
/// `pinned` if given, else the [`CHUNK_CANDIDATES`] of at most [`MAX_PIECES`]
/// pieces (the largest always).
pub fn tune_options(
    bytes: u64,
    pinned: Option<u64>,
    algorithms: Option<Vec<Algorithm>>,
) -> TuneOptions {
    let chunk_bytes = match pinned {
        Some(c) => vec![c.max(1)],
        None => {
            let mut c: Vec<u64> = CHUNK_CANDIDATES
                .iter()
                .copied()
                .filter(|c| bytes / c <= MAX_PIECES)
                .collect();
            if c.is_empty() {
                c.push(CHUNK_CANDIDATES[CHUNK_CANDIDATES.len() - 1]);
            }
            c
        }
    };
    TuneOptions {
        chunk_bytes,
        max_messages: MAX_MESSAGES,
        algorithms,
        ..TuneOptions::default()
    }
}

/// Who chose a call's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChosenBy {
    /// Forced by `BRAID_ALGO` or the config (the model may still pick the
    /// chunk of a pipelined algorithm).
    Forced,
    /// The cost model.
    Model,
    /// The size rule ([`choose`]): before calibration, when the model could
    /// not price the call, or for all_to_all_v.
    Rule,
}

/// The algorithm and chunk a call runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The pipeline chunk in bytes, for pipelined algorithms the model
    /// priced; `None`: the configured chunk (`BRAID_CHUNK_BYTES`).
    pub chunk_bytes: Option<u64>,
    /// The model's predicted time in seconds at the size's bucket.
    pub predicted: Option<f64>,
    /// Who chose.
    pub by: ChosenBy,
}

impl Choice {
    /// `forced` if given, else `rule`, with no chunk and no prediction:
    /// what a call takes when the model is not asked (or cannot answer).
    pub(crate) fn without_model(
        forced: Option<Algorithm>,
        rule: impl FnOnce() -> Algorithm,
    ) -> Choice {
        Choice {
            algorithm: forced.unwrap_or_else(rule),
            chunk_bytes: None,
            predicted: None,
            by: if forced.is_some() {
                ChosenBy::Forced
            } else {
                ChosenBy::Rule
            },
        }
    }
}

/// The model's choice for `collective` at `bytes` (priced at its
/// [`bucket`]) over `nranks` ranks of `elem_bytes`-byte elements on `net`:
/// the cheapest algorithm, or the best chunk of `forced`. `pinned` fixes
/// the chunk of pipelined algorithms.
pub fn model_choice(
    net: &Network,
    collective: Collective,
    bytes: u64,
    nranks: usize,
    elem_bytes: u64,
    forced: Option<Algorithm>,
    pinned: Option<u64>,
) -> Result<Choice, CostError> {
    let size = bucket(bytes);
    let opts = tune_options(size, pinned, forced.map(|a| vec![a]));
    let tuning = tune(collective, size, nranks, elem_bytes, net, &opts)?;
    let best = tuning.best().ok_or_else(|| {
        let why = tuning
            .candidates
            .first()
            .and_then(|c| c.outcome.as_ref().err())
            .map_or_else(|| "no candidates".to_string(), |e| e.to_string());
        CostError::Argument(format!("no candidate could be priced ({why})"))
    })?;
    Ok(Choice {
        algorithm: best.algorithm,
        chunk_bytes: best
            .chunk_bytes
            .filter(|_| pipelines(best.algorithm, collective)),
        predicted: best.time(),
        by: if forced.is_some() {
            ChosenBy::Forced
        } else {
            ChosenBy::Model
        },
    })
}

/// Choices shared by every communicator of this process on the same network.
type MemoKey = (
    Arc<str>,
    Collective,
    u64,
    usize,
    u64,
    Option<Algorithm>,
    Option<u64>,
);
const MEMO_LIMIT: usize = 1 << 14;

fn memo() -> &'static Mutex<HashMap<MemoKey, Choice>> {
    static MEMO: OnceLock<Mutex<HashMap<MemoKey, Choice>>> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(HashMap::new()))
}

/// [`model_choice`] at the bucket of `bytes`, remembered per process under
/// `net_key` (which must identify `net` exactly); falls back to the size
/// rule (or the forced algorithm) when the model errs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn remembered_choice(
    net_key: &Arc<str>,
    net: &Network,
    collective: Collective,
    bytes: u64,
    nranks: usize,
    elem_bytes: u64,
    forced: Option<Algorithm>,
    pinned: Option<u64>,
) -> Choice {
    let key: MemoKey = (
        Arc::clone(net_key),
        collective,
        bucket(bytes),
        nranks,
        elem_bytes,
        forced,
        pinned,
    );
    if let Some(c) = memo().lock().ok().and_then(|m| m.get(&key).copied()) {
        return c;
    }
    let choice = match model_choice(net, collective, bytes, nranks, elem_bytes, forced, pinned) {
        Ok(c) => c,
        Err(e) => {
            let fallback = Choice::without_model(forced, || choose(collective, bytes, nranks));
            tracing::warn!(
                %collective,
                bytes = bucket(bytes),
                nranks,
                "the cost model could not price this call ({e}); using {}",
                fallback.algorithm
            );
            fallback
        }
    };
    if let Ok(mut m) = memo().lock() {
        if m.len() >= MEMO_LIMIT {
            m.clear();
        }
        m.insert(key, choice);
    }
    choice
}

/// One cell of the tuning table: predicted seconds and chunk.
type Cell = (f64, Option<u64>);

/// Sizes (bytes) of the columns of [`tuning_table`].
pub const TABLE_SIZES: [u64; 6] = [8, 256, 8 << 10, 256 << 10, 8 << 20, 256 << 20];

fn short_size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

/// The tuning table (as `BRAID_DEBUG=tuning` prints it): the predicted time
/// in µs of every algorithm of every collective at [`TABLE_SIZES`] over
/// `nranks` ranks of `elem_bytes`-byte elements on `net`, `*` on the
/// model's choice per size, `/64K` the chunk of a pipelined algorithm.
pub fn tuning_table(net: &Network, nranks: usize, elem_bytes: u64, pinned: Option<u64>) -> String {
    let mut out = String::new();
    let mut header = format!("{:<15} {:<19}", "collective", "algorithm");
    for s in TABLE_SIZES {
        header.push_str(&format!(" {:>14}", format!("{} B", short_size(s))));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    for collective in Collective::ALL {
        let sizes: &[u64] = if collective == Collective::Barrier {
            &[0]
        } else {
            &TABLE_SIZES
        };
        let algorithms = collective.algorithms();
        let cells: Vec<Vec<Option<Cell>>> = algorithms
            .iter()
            .map(|&a| {
                sizes
                    .iter()
                    .map(|&s| {
                        model_choice(net, collective, s, nranks, elem_bytes, Some(a), pinned)
                            .ok()
                            .and_then(|c| c.predicted.map(|t| (t, c.chunk_bytes)))
                    })
                    .collect()
            })
            .collect();
        for (ai, a) in algorithms.iter().enumerate() {
            let name = if ai == 0 { collective.name() } else { "" };
            let mut line = format!("{name:<15} {:<19}", a.name());
            for si in 0..sizes.len() {
                let best = cells
                    .iter()
                    .filter_map(|row| row[si].map(|c| c.0))
                    .fold(f64::INFINITY, f64::min);
                let cell = match cells[ai][si] {
                    None => "-".to_string(),
                    Some((t, chunk)) => {
                        let mark = if t == best { "*" } else { "" };
                        // A chunk at or above the message is no pipelining.
                        let chunk = chunk
                            .filter(|&c| c < sizes[si])
                            .map_or(String::new(), |c| format!("/{}", short_size(c)));
                        format!("{mark}{}{chunk}", fmt_us(t))
                    }
                };
                line.push_str(&format!(" {cell:>14}"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Microseconds with three significant digits.
fn fmt_us(seconds: f64) -> String {
    let us = seconds * 1e6;
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_implements_its_collective() {
        for c in Collective::ALL {
            for bytes in [0, 8, SMALL, SMALL + 1, MEDIUM, MEDIUM + 1, 1 << 30] {
                for n in [1, 2, 3, 4, 7, 8, 64] {
                    assert!(choose(c, bytes, n).supports(c), "{c} {bytes} {n}");
                }
            }
        }
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(3), 4);
        assert_eq!(bucket(4096), 4096);
        assert_eq!(bucket(4097), 8192);
        assert_eq!(bucket(u64::MAX), 1 << 63);
    }

    #[test]
    fn chunk_candidates_are_bounded() {
        assert_eq!(
            tune_options(1 << 20, None, None).chunk_bytes,
            CHUNK_CANDIDATES
        );
        assert_eq!(
            tune_options(64 << 20, None, None).chunk_bytes,
            [256 << 10, 1 << 20, 4 << 20]
        );
        assert_eq!(tune_options(1 << 40, None, None).chunk_bytes, [4 << 20]);
        assert_eq!(tune_options(1 << 40, Some(4096), None).chunk_bytes, [4096]);
    }

    #[test]
    fn the_model_chooses_and_the_table_marks_it() {
        let net = Network::uniform(20e-6, 1.25e9).with_gamma(0.05e-9);
        let small = model_choice(&net, Collective::AllReduce, 8, 8, 4, None, None).unwrap();
        let large = model_choice(&net, Collective::AllReduce, 64 << 20, 8, 4, None, None).unwrap();
        assert_eq!(small.by, ChosenBy::Model);
        assert!(small.predicted.unwrap() < large.predicted.unwrap());
        let forced = model_choice(
            &net,
            Collective::Broadcast,
            16 << 20,
            8,
            4,
            Some(Algorithm::Ring),
            None,
        )
        .unwrap();
        assert_eq!(
            (forced.algorithm, forced.by),
            (Algorithm::Ring, ChosenBy::Forced)
        );
        assert!(forced.chunk_bytes.is_some(), "ring broadcast pipelines");
        let table = tuning_table(&net, 8, 4, None);
        assert!(
            table.contains("all_reduce") && table.contains("256M B"),
            "{table}"
        );
        assert!(
            table.lines().filter(|l| l.contains('*')).count() >= 9,
            "{table}"
        );
    }
}
