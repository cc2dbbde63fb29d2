//! The size rule that picks an algorithm when none is forced.
//!
//! A stand-in until the cost model prices every plan: small messages take the
//! latency-optimal algorithms (⌈log2 N⌉ rounds), large ones the
//! bandwidth-optimal ones (each byte crosses each link about once).
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
}
