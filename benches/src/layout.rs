//! Sizes, element counts, iteration counts and bus-bandwidth factors,
//! following nccl-tests (see the anchors' README).

use braid::Collective;

use crate::args::Bench;

/// The sizes of a run: `min`, `min·factor`, `min·factor²`, … up to `max`.
/// A zero `min` gives a zero-size row, then continues from 1 byte.
pub fn size_list(min: u64, max: u64, factor: u64) -> Vec<u64> {
    assert!(factor >= 2, "factor must be at least 2");
    let mut sizes = Vec::new();
    let mut s = min;
    if s == 0 {
        sizes.push(0);
        s = 1;
    }
    while s <= max {
        sizes.push(s);
        match s.checked_mul(factor) {
            Some(next) => s = next,
            None => break,
        }
    }
    sizes
}

/// Whether the call's buffers are `nranks` blocks of the per-rank count.
pub fn chunked(bench: Bench) -> bool {
    matches!(
        bench.collective(),
        Some(
            Collective::AllGather
                | Collective::ReduceScatter
                | Collective::Gather
                | Collective::Scatter
                | Collective::AllToAll
        )
    )
}

/// One row's element counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The count the call takes, as nccl-tests prints it: the whole buffer for
    /// all_reduce, broadcast, reduce and send_recv; one rank's block for
    /// chunked calls.
    pub count: u64,
    /// The size column: the largest per-rank buffer in bytes
    /// (`count · elem`, or `count · nranks · elem` for chunked calls).
    pub bytes: u64,
}

/// The layout of a row asked for as `requested` bytes: sizes round down to
/// whole elements (whole blocks of `nranks` elements for chunked calls), but
/// never below one element, so that 8 B of f32 at 4 ranks becomes 16 B for a
/// chunked call. Barrier moves no data.
pub fn layout(bench: Bench, requested: u64, nranks: usize, elem: usize) -> Layout {
    let elem = elem as u64;
    let n = nranks as u64;
    if bench == Bench::Collective(Collective::Barrier) {
        return Layout { count: 0, bytes: 0 };
    }
    let per = if chunked(bench) { n * elem } else { elem };
    let count = if requested == 0 {
        0
    } else {
        (requested / per).max(1)
    };
    Layout {
        count,
        bytes: count * per,
    }
}

/// busbw / algbw: how much of the size each rank must move over its links
/// in the best algorithm (nccl-tests): 2(n−1)/n for all_reduce, (n−1)/n for
/// all_gather, reduce_scatter, gather, scatter and all_to_all, 1 for
/// broadcast, reduce and send_recv, 0 for barrier.
pub fn bus_factor(bench: Bench, nranks: usize) -> f64 {
    let n = nranks as f64;
    match bench {
        Bench::SendRecv => 1.0,
        Bench::Collective(c) => match c {
            Collective::AllReduce => 2.0 * (n - 1.0) / n,
            Collective::AllGather
            | Collective::ReduceScatter
            | Collective::Gather
            | Collective::Scatter
            | Collective::AllToAll => (n - 1.0) / n,
            Collective::Broadcast | Collective::Reduce => 1.0,
            Collective::Barrier => 0.0,
        },
    }
}

/// [`bus_factor`] as a formula in n, for the header.
pub fn bus_factor_formula(bench: Bench) -> &'static str {
    match bench.collective() {
        None | Some(Collective::Broadcast | Collective::Reduce) => "1",
        Some(Collective::AllReduce) => "2(n-1)/n",
        Some(Collective::Barrier) => "0",
        Some(_) => "(n-1)/n",
    }
}

/// Above this size the default iteration counts shrink in proportion.
pub const SCALE_ABOVE: u64 = 16 << 20;
/// Below this size the default iteration counts grow in proportion (a
/// median of a few microsecond-long samples is noise), up to
/// [`SMALL_SIZE_FACTOR`] times.
pub const SCALE_BELOW: u64 = 64 << 10;
/// The most the default counts grow for small sizes.
pub const SMALL_SIZE_FACTOR: usize = 50;

/// The calls to make at `bytes`: `given` when the user set it, else
/// `default` scaled by `SCALE_ABOVE / bytes` above [`SCALE_ABOVE`], but not
/// below `floor`, and by `SCALE_BELOW / bytes` below [`SCALE_BELOW`], at
/// most [`SMALL_SIZE_FACTOR`] times.
pub fn scaled_iters(given: Option<usize>, default: usize, floor: usize, bytes: u64) -> usize {
    if let Some(n) = given {
        return n;
    }
    if bytes < SCALE_BELOW {
        let factor = (SCALE_BELOW / bytes.max(1)).min(SMALL_SIZE_FACTOR as u64) as usize;
        return default * factor;
    }
    if bytes <= SCALE_ABOVE {
        return default;
    }
    let scaled = (default as u128 * SCALE_ABOVE as u128 / bytes as u128) as usize;
    scaled.max(floor).min(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_by_the_factor_up_to_max() {
        assert_eq!(size_list(8, 128, 4), [8, 32, 128]);
        assert_eq!(size_list(8, 127, 4), [8, 32]);
        assert_eq!(size_list(8, 8, 2), [8]);
        assert_eq!(size_list(0, 4, 2), [0, 1, 2, 4]);
        assert_eq!(size_list(8, 16 << 20, 4).len(), 11); // 8 B .. 8 MiB
        assert_eq!(*size_list(1, u64::MAX, 2).last().unwrap(), 1 << 63);
    }

    #[test]
    fn counts_follow_nccl_tests() {
        let ar = Bench::Collective(Collective::AllReduce);
        let ag = Bench::Collective(Collective::AllGather);
        let a2a = Bench::Collective(Collective::AllToAll);
        assert_eq!(layout(ar, 8, 4, 4), Layout { count: 2, bytes: 8 });
        assert_eq!(layout(ar, 10, 4, 4), Layout { count: 2, bytes: 8 });
        assert_eq!(layout(ar, 2, 4, 4), Layout { count: 1, bytes: 4 });
        assert_eq!(layout(ar, 0, 4, 4), Layout { count: 0, bytes: 0 });
        // Chunked: whole blocks of n elements, at least one element per block.
        assert_eq!(
            layout(ag, 8, 4, 4),
            Layout {
                count: 1,
                bytes: 16
            }
        );
        assert_eq!(
            layout(ag, 64, 4, 4),
            Layout {
                count: 4,
                bytes: 64
            }
        );
        assert_eq!(
            layout(a2a, 100, 3, 8),
            Layout {
                count: 4,
                bytes: 96
            }
        );
        assert_eq!(
            layout(Bench::SendRecv, 64, 3, 8),
            Layout {
                count: 8,
                bytes: 64
            }
        );
        assert_eq!(
            layout(Bench::Collective(Collective::Barrier), 1 << 20, 4, 4),
            Layout { count: 0, bytes: 0 }
        );
    }

    #[test]
    fn bus_factors_are_nccl_tests_ones() {
        let f = |c| bus_factor(Bench::Collective(c), 4);
        assert_eq!(f(Collective::AllReduce), 1.5);
        assert_eq!(f(Collective::AllGather), 0.75);
        assert_eq!(f(Collective::ReduceScatter), 0.75);
        assert_eq!(f(Collective::Gather), 0.75);
        assert_eq!(f(Collective::Scatter), 0.75);
        assert_eq!(f(Collective::AllToAll), 0.75);
        assert_eq!(f(Collective::Broadcast), 1.0);
        assert_eq!(f(Collective::Reduce), 1.0);
        assert_eq!(f(Collective::Barrier), 0.0);
        assert_eq!(bus_factor(Bench::SendRecv, 4), 1.0);
        assert_eq!(bus_factor(Bench::Collective(Collective::AllReduce), 1), 0.0);
        assert_eq!(bus_factor(Bench::Collective(Collective::AllReduce), 2), 1.0);
        for b in Bench::ALL {
            let by_formula = match bus_factor_formula(b) {
                "2(n-1)/n" => 1.5,
                "(n-1)/n" => 0.75,
                "1" => 1.0,
                _ => 0.0,
            };
            assert_eq!(bus_factor(b, 4), by_formula, "{b}");
        }
    }

    #[test]
    fn large_sizes_get_fewer_calls_unless_asked() {
        assert_eq!(scaled_iters(None, 20, 5, 8), 1000);
        assert_eq!(scaled_iters(None, 20, 5, 0), 1000);
        assert_eq!(scaled_iters(None, 20, 5, 16 << 10), 80);
        assert_eq!(scaled_iters(None, 20, 5, 64 << 10), 20);
        assert_eq!(scaled_iters(None, 20, 5, 16 << 20), 20);
        assert_eq!(scaled_iters(None, 20, 5, 32 << 20), 10);
        assert_eq!(scaled_iters(None, 20, 5, 1 << 30), 5);
        assert_eq!(scaled_iters(None, 5, 1, 64 << 20), 1);
        assert_eq!(scaled_iters(None, 0, 1, 64 << 20), 0);
        assert_eq!(scaled_iters(Some(50), 20, 5, 1 << 30), 50);
        assert_eq!(scaled_iters(Some(3), 20, 5, 8), 3);
    }
}
