//! 64-bit index arithmetic: plans for counts past 2^32 elements, simulated
//! with a zero-sized element type so nothing is allocated and no element is
//! touched. A 32-bit truncation anywhere in a generator shows up as an
//! out-of-bounds region, a length mismatch, a deadlock or too few elements
//! received.

use braid_topologies::{
    buffer_lengths, even_blocks, generate, simulate_with_stats, Algorithm, Collective, Counts,
    PlanOptions, RankData, Shape,
};

/// 3·2^31 + 7: past 2^32, odd, not a multiple of 3, 4 or 5.
const COUNT: u64 = 3 * (1 << 31) + 7;

/// A `Vec<()>` of `len` elements: no allocation, and no per-element loop
/// once optimised.
fn units(len: u64) -> Vec<()> {
    let mut v = Vec::new();
    v.resize(usize::try_from(len).expect("64-bit target"), ());
    v
}

fn shape(collective: Collective, n: usize) -> Shape {
    let counts = match collective {
        Collective::Broadcast | Collective::Reduce | Collective::AllReduce => Counts::Single(COUNT),
        Collective::AllToAll => Counts::Matrix {
            // Every row and column sums to about COUNT, each entry past 2^31.
            counts: (0..n * n)
                .map(|k| COUNT / n as u64 + ((k / n + k % n) % 2) as u64)
                .collect(),
            partial: false,
        },
        Collective::Barrier => Counts::None,
        _ => Counts::Blocks(even_blocks(COUNT, n)),
    };
    Shape::new(collective, n, n - 1, counts)
}

/// A lower bound on what rank `r` must receive: each output element that
/// depends on another rank needs at least one received element (the ops are
/// element-wise).
fn min_received(shape: &Shape, r: usize) -> u64 {
    let root = r == shape.root;
    let (input, output) = buffer_lengths(shape, r);
    match shape.collective {
        Collective::Broadcast | Collective::Scatter => {
            if root {
                0
            } else {
                output
            }
        }
        Collective::Reduce | Collective::AllReduce | Collective::ReduceScatter => output,
        Collective::Gather | Collective::AllGather => output.saturating_sub(input),
        Collective::AllToAll => output - shape.matrix(r, r),
        Collective::Barrier => 0,
    }
}

fn check(
    collective: Collective,
    algorithm: Algorithm,
    n: usize,
    chunk_elems: u64,
) -> Result<(), String> {
    let shape = shape(collective, n);
    let options = PlanOptions { chunk_elems };
    let plans = (0..n)
        .map(|r| {
            generate(algorithm, &shape, r, &options).map_err(|e| format!("generate(rank {r}): {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let data: Vec<RankData<()>> = (0..n)
        .map(|r| {
            let (i, o) = buffer_lengths(&shape, r);
            RankData {
                input: units(i),
                output: units(o),
            }
        })
        .collect();
    let (_, stats) = simulate_with_stats(&plans, data, |_, _| ()).map_err(|e| e.to_string())?;
    for r in 0..n {
        let need = min_received(&shape, r);
        if stats.received_elements[r] < need {
            return Err(format!(
                "rank {r} received only {} elements, needs at least {need}",
                stats.received_elements[r]
            ));
        }
    }
    if stats.elements <= 1 << 32 {
        return Err(format!("only {} elements moved in all", stats.elements));
    }
    Ok(())
}

#[test]
fn counts_past_32_bits() {
    let mut failures = Vec::new();
    let mut runs = 0;
    for c in Collective::ALL {
        if c == Collective::Barrier {
            continue;
        }
        for &a in c.algorithms() {
            for n in [3, 4, 5] {
                // Default chunking, and a chunk that itself does not fit 32 bits.
                for chunk in [0, (1 << 32) + 3] {
                    runs += 1;
                    let what = format!("{c} / {a}, N = {n}, chunk_elems = {chunk}");
                    match std::panic::catch_unwind(|| check(c, a, n, chunk)) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failures.push(format!("{what}: {e}")),
                        Err(p) => {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failures.push(format!("{what}: panicked: {msg}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} runs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
