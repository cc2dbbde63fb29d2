//! The cost model against the closed forms of the literature, priced on the
//! plans the generators really produce.
//!
//! Unless a test says otherwise: latency α = 5 µs, bandwidth B = 1 GB/s,
//! reduction γ = 0.25 ns/B, no copy or per-message cost, no reduce/transfer
//! overlap (`pipeline_bytes = 0`, the textbooks' store-and-forward
//! reduction), f32 elements and counts that divide evenly, and rendezvous
//! messages (`buffer_bytes = 0`: the textbooks' synchronous rounds). Where
//! the closed form also holds with buffered (eager) messages the test runs
//! both; where buffering changes the answer the test derives the new value.

use braid_topologies::cost::pipelines;
use braid_topologies::{
    even_blocks, generate, lower_bound, price, price_call, price_call_within, tune, Action,
    Algorithm, BufferId, Collective, CostError, Counts, Estimate, Hosts, Injection, Link, Network,
    Plan, PlanOptions, Region, Shape, SizeCurve, Step, TuneOptions,
};

const ALPHA: f64 = 5e-6;
const BW: f64 = 1e9;
const GAMMA: f64 = 0.25e-9;
const ELEM: u64 = 4;

/// The textbook model: rendezvous, store-and-forward reduction.
fn net() -> Network {
    Network::uniform(ALPHA, BW)
        .with_gamma(GAMMA)
        .with_pipeline_bytes(0)
        .with_buffer_bytes(0)
}

/// The same with 4 MiB buffered per ordered pair (braid's transports).
fn buffered() -> Network {
    net().with_buffer_bytes(4 << 20)
}

/// Both models.
fn both() -> [Network; 2] {
    [net(), buffered()]
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-9 * want.abs().max(1e-9);
    assert!(
        (got - want).abs() <= tol,
        "{what}: model {got:e} s, closed form {want:e} s (diff {:e})",
        got - want
    );
}

fn single(c: Collective, n: usize, count: u64) -> Shape {
    Shape::new(c, n, 0, Counts::Single(count))
}

fn blocks(c: Collective, n: usize, per_rank: u64) -> Shape {
    Shape::new(c, n, 0, Counts::Blocks(vec![per_rank; n]))
}

fn priced(alg: Algorithm, shape: &Shape, chunk_elems: u64, net: &Network) -> Estimate {
    price_call(alg, shape, &PlanOptions { chunk_elems }, net, ELEM)
        .unwrap_or_else(|e| panic!("{alg} {shape:?}: {e}"))
}

fn log2_ceil(n: usize) -> f64 {
    n.next_power_of_two().trailing_zeros() as f64
}

#[test]
fn ring_all_reduce_is_2_n_minus_1_alpha_plus_s_over_nb_plus_gamma() {
    for n in [2usize, 3, 4, 5, 7, 8, 16, 33] {
        let count = 1000 * n as u64;
        let s = (count * ELEM) as f64;
        let nf = n as f64;
        let want = 2.0 * (nf - 1.0) * (ALPHA + s / (nf * BW)) + (nf - 1.0) * (s / nf) * GAMMA;
        let shape = single(Collective::AllReduce, n, count);
        let e = priced(Algorithm::Ring, &shape, 0, &buffered());
        close(e.time, want, &format!("buffered ring all_reduce N={n}"));
        let e = priced(Algorithm::Ring, &shape, 0, &net());
        close(e.time, want, &format!("ring all_reduce N={n}"));
        // The critical path splits into the closed form's three terms.
        let p = e.critical_path;
        close(p.latency, 2.0 * (nf - 1.0) * ALPHA, "latency term");
        close(
            p.transfer,
            2.0 * (nf - 1.0) * s / (nf * BW),
            "bandwidth term",
        );
        close(p.reduce, (nf - 1.0) * (s / nf) * GAMMA, "reduction term");
        assert_eq!(p.contention, 0.0);
        assert_eq!(e.messages, 2 * (n as u64 - 1) * n as u64);
        close(e.bytes, 2.0 * (nf - 1.0) * s, "bytes sent");
        assert_eq!(e.max_steps, 2 * (n as u64 - 1));
    }
}

#[test]
fn ring_all_reduce_charges_copies_and_per_message_overhead() {
    // Each reduce-scatter step copies its input segment before receiving
    // into it: (N−1)·S/N copied; every step sends one message: 2(N−1)·o.
    let (copy, o) = (0.1e-9, 1e-6);
    for n in [2usize, 5, 8] {
        let count = 4096 * n as u64;
        let s = (count * ELEM) as f64;
        let nf = n as f64;
        let net = net().with_copy(copy).with_overhead(o);
        let e = priced(
            Algorithm::Ring,
            &single(Collective::AllReduce, n, count),
            0,
            &net,
        );
        let want =
            2.0 * (nf - 1.0) * (o + ALPHA + s / (nf * BW)) + (nf - 1.0) * (s / nf) * (GAMMA + copy);
        close(
            e.time,
            want,
            &format!("ring all_reduce with copy and overhead, N={n}"),
        );
        close(
            e.critical_path.copy,
            (nf - 1.0) * (s / nf) * copy,
            "copy term",
        );
        // A per-call cost comes once, on every rank, as latency.
        let call = 3e-6;
        let c = priced(
            Algorithm::Ring,
            &single(Collective::AllReduce, n, count),
            0,
            &net.clone().with_call_overhead(call),
        );
        close(c.time, want + call, &format!("with a call cost, N={n}"));
        close(
            c.critical_path.latency,
            e.critical_path.latency + call,
            "call cost as latency",
        );
        for (with, without) in c.rank_finish.iter().zip(&e.rank_finish) {
            close(*with, without + call, "every rank pays the call");
        }
    }
    let mut bad = net();
    bad.call_overhead = -1.0;
    assert!(matches!(
        price_call(
            Algorithm::Ring,
            &single(Collective::AllReduce, 2, 8),
            &PlanOptions::default(),
            &bad,
            ELEM
        ),
        Err(CostError::Network(_))
    ));
}

#[test]
fn ring_reduce_overlaps_transfer_piece_by_piece() {
    // N = 2: one reduce-scatter step (a message of s = S/2 bytes, reduced on
    // arrival) and one all-gather step. With pieces of P = s/4 the
    // reduction runs one piece behind the transfer: α + s/B + P·γ when the
    // link is the bottleneck, α + P/B + s·γ when the reduction is.
    let count = 1u64 << 20;
    let s = (count * ELEM / 2) as f64;
    let piece = (count * ELEM / 8) as f64;
    let shape = single(Collective::AllReduce, 2, count);
    let link_bound = net().with_pipeline_bytes(piece as u64);
    let e = priced(Algorithm::Ring, &shape, 0, &link_bound);
    close(
        e.time,
        (ALPHA + s / BW + piece * GAMMA) + (ALPHA + s / BW),
        "link-bound overlap",
    );
    let slow_gamma = 4.0 / BW;
    let reduce_bound = link_bound.clone().with_gamma(slow_gamma);
    let e = priced(Algorithm::Ring, &shape, 0, &reduce_bound);
    close(
        e.time,
        (ALPHA + piece / BW + s * slow_gamma) + (ALPHA + s / BW),
        "reduce-bound overlap",
    );
    // Store-and-forward costs strictly more than either.
    let e0 = priced(Algorithm::Ring, &shape, 0, &net().with_gamma(slow_gamma));
    close(
        e0.time,
        (ALPHA + s / BW + s * slow_gamma) + (ALPHA + s / BW),
        "no overlap",
    );
}

#[test]
fn ring_all_gather_and_reduce_scatter() {
    // Also with a duplex rate D: every ring step sends and receives, so
    // each block moves at D instead of B.
    let d = BW / 2.5;
    for (n, net, rate) in [2usize, 3, 6, 8, 17]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
        .flat_map(|(n, m)| [(n, m.clone(), BW), (n, duplex(m, d), d)])
    {
        let per = 3000u64;
        let nf = n as f64;
        let b = (per * ELEM) as f64; // S/N
        let e = priced(
            Algorithm::Ring,
            &blocks(Collective::AllGather, n, per),
            0,
            &net,
        );
        close(
            e.time,
            (nf - 1.0) * (ALPHA + b / rate),
            &format!("ring all_gather N={n} at {rate:e} B/s"),
        );
        let e = priced(
            Algorithm::Ring,
            &blocks(Collective::ReduceScatter, n, per),
            0,
            &net,
        );
        close(
            e.time,
            (nf - 1.0) * (ALPHA + b / rate + b * GAMMA),
            &format!("ring reduce_scatter N={n} at {rate:e} B/s"),
        );
    }
}

/// `net` with a core that copies both ways: each direction at `rate` while
/// a rank sends and receives in one step.
fn duplex(net: Network, rate: f64) -> Network {
    Network {
        inter: net.inter.with_duplex(rate),
        intra: net.intra.with_duplex(rate),
        ..net
    }
}

#[test]
fn a_rank_that_sends_and_receives_at_once_moves_each_way_at_the_duplex_rate() {
    let d = BW / 2.5;
    let per = 3000u64;
    let b = (per * ELEM) as f64;
    for (n, net) in [2usize, 3, 6, 8, 17]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let nf = n as f64;
        let net = duplex(net, d);
        // (The ring, which sends and receives in every step, is in
        // ring_all_gather_and_reduce_scatter.) A star's root only sends, its leaves only receive: one way at B.
        let e = priced(
            Algorithm::Star,
            &single(Collective::Broadcast, n, per),
            0,
            &net,
        );
        close(
            e.time,
            ALPHA + (nf - 1.0) * b / BW,
            &format!("star broadcast N={n}, duplex"),
        );
        // The star all-reduce gathers in one step and sends in the next.
        let e = priced(
            Algorithm::Star,
            &single(Collective::AllReduce, n, per),
            0,
            &net,
        );
        close(
            e.time,
            2.0 * ALPHA + 2.0 * (nf - 1.0) * b / BW + (nf - 1.0) * b * GAMMA,
            &format!("star all_reduce N={n}, duplex"),
        );
    }
    // A binomial tree receives, then sends in later steps: one way at B.
    let count = 250_000u64;
    let s = (count * ELEM) as f64;
    for n in [2usize, 8, 64] {
        let shape = single(Collective::Broadcast, n, count);
        let e = priced(Algorithm::Tree, &shape, count, &duplex(net(), d));
        close(
            e.time,
            log2_ceil(n) * (ALPHA + s / BW),
            &format!("binomial broadcast N={n}, duplex"),
        );
    }
    // The duplex rate applies on the class it is given for only.
    let mut hosts = net().with_hosts(Hosts::Blocks(2), Link::new(ALPHA, BW).with_duplex(d));
    hosts.inter = Link::new(ALPHA, BW);
    let e = priced(
        Algorithm::Ring,
        &blocks(Collective::AllGather, 2, per),
        0,
        &hosts,
    );
    close(e.time, ALPHA + b / d, "ring N=2 on one host");
    hosts.hosts = Hosts::Blocks(1);
    let e = priced(
        Algorithm::Ring,
        &blocks(Collective::AllGather, 2, per),
        0,
        &hosts,
    );
    close(e.time, ALPHA + b / BW, "ring N=2 across hosts");
    // A bad rate is an error.
    let bad = duplex(net(), 0.0);
    assert!(matches!(
        price_call(
            Algorithm::Ring,
            &blocks(Collective::AllGather, 2, per),
            &PlanOptions::default(),
            &bad,
            ELEM
        ),
        Err(CostError::Network(_))
    ));
}

#[test]
fn binomial_broadcast_is_ceil_log2_n_rounds_of_alpha_plus_s_over_b() {
    let count = 250_000u64;
    let s = (count * ELEM) as f64;
    for n in [2usize, 4, 8, 16, 32, 64, 128] {
        let shape = single(Collective::Broadcast, n, count);
        // A chunk as large as the message: one round per tree level.
        for inj in [Injection::Link, Injection::Unlimited] {
            for net in both() {
                let e = priced(Algorithm::Tree, &shape, count, &net.with_injection(inj));
                close(
                    e.time,
                    log2_ceil(n) * (ALPHA + s / BW),
                    &format!("binomial broadcast N={n} {inj:?}"),
                );
            }
        }
    }
    // Other roots price the same.
    let shape = Shape::new(Collective::Broadcast, 16, 11, Counts::Single(count));
    close(
        priced(Algorithm::Tree, &shape, count, &net()).time,
        4.0 * (ALPHA + s / BW),
        "root 11",
    );
}

#[test]
fn binomial_broadcast_at_five_ranks_beats_the_textbook() {
    // N = 5: the root's children are ranks 2 (with child 3), 1 and 4; the
    // generator sends to 2 at label 0, then to 1 and 4 together at label 1,
    // so the tree is 2 levels deep, not ⌈log2 5⌉ = 3. Per link (unlimited
    // ports) that is 2(α + S/B). With one NIC the root's two label-1 sends
    // share its port: rank 4 gets its copy at α + 3S/B, rank 3 at
    // 2(α + S/B); the later of the two.
    let count = 1000u64;
    let shape = single(Collective::Broadcast, 5, count);
    for (alpha, bw) in [(5e-6, 1e9), (1e-6, 1e8)] {
        let s = (count * ELEM) as f64;
        let base = Network::uniform(alpha, bw).with_pipeline_bytes(0);
        let e = priced(
            Algorithm::Tree,
            &shape,
            count,
            &base.clone().with_injection(Injection::Unlimited),
        );
        close(e.time, 2.0 * (alpha + s / bw), "per-link model");
        let e = priced(Algorithm::Tree, &shape, count, &base);
        let want = (alpha + 3.0 * s / bw).max(2.0 * (alpha + s / bw));
        close(e.time, want, &format!("one NIC, alpha={alpha} B={bw}"));
        assert!(e.time <= 3.0 * (alpha + s / bw));
        if alpha * bw < s {
            // Bandwidth-bound: rank 4, fed second at label 1, finishes last.
            assert_eq!(e.last_rank, 4);
            assert!(e.critical_path.contention > 0.0);
        }
    }
}

#[test]
fn pipelined_chain_broadcast_is_c_plus_n_minus_2_steps() {
    // Ring broadcast: C chunks down a chain of N ranks. In synchronous
    // rounds (rendezvous) every step costs α + S/(C·B):
    // (C + N − 2)(α + S/(C·B)). With buffered messages a rank forwards
    // chunk c as soon as it has it, so latency is paid once per hop, not
    // once per step: (N − 1)α + (C + N − 2)·S/(C·B).
    for n in [2usize, 3, 5, 8] {
        for c in [1u64, 2, 4, 7] {
            let chunk = 1000u64;
            let count = chunk * c;
            let x = (chunk * ELEM) as f64 / BW;
            let (nf, cf) = (n as f64, c as f64);
            let shape = single(Collective::Broadcast, n, count);
            let e = priced(Algorithm::Ring, &shape, chunk, &net());
            close(
                e.time,
                (cf + nf - 2.0) * (ALPHA + x),
                &format!("chain N={n} C={c}"),
            );
            let e = priced(Algorithm::Ring, &shape, chunk, &buffered());
            close(
                e.time,
                (nf - 1.0) * ALPHA + (cf + nf - 2.0) * x,
                &format!("buffered chain N={n} C={c}"),
            );
        }
    }
}

#[test]
fn pipelined_binomial_broadcast_is_l_plus_k_minus_1_steps_per_link() {
    // Per-link model: k chunks of C elements down a tree of height L take
    // (L + k − 1)(α + C/B). With one NIC a rank feeding several children
    // chunks in the same step serialises them: more, but at most L chunks
    // per step.
    for n in [2usize, 4, 8, 16] {
        let l = log2_ceil(n);
        for k in [1u64, 3, 8] {
            let chunk = 2048u64;
            let x = (chunk * ELEM) as f64 / BW;
            let shape = single(Collective::Broadcast, n, chunk * k);
            let per_link = priced(
                Algorithm::Tree,
                &shape,
                chunk,
                &net().with_injection(Injection::Unlimited),
            );
            let want = (l + k as f64 - 1.0) * (ALPHA + x);
            close(per_link.time, want, &format!("pipelined tree N={n} k={k}"));
            // Buffered: latency once per level, L·α + (L + k − 1)·C/B.
            let e = priced(
                Algorithm::Tree,
                &shape,
                chunk,
                &buffered().with_injection(Injection::Unlimited),
            );
            close(
                e.time,
                l * ALPHA + (l + k as f64 - 1.0) * x,
                &format!("buffered pipelined tree N={n} k={k}"),
            );
            let nic = priced(Algorithm::Tree, &shape, chunk, &net());
            if n == 2 || k == 1 {
                close(
                    nic.time,
                    want,
                    &format!("one child or one chunk, N={n} k={k}"),
                );
            } else {
                assert!(nic.time > want * (1.0 + 1e-9), "N={n} k={k}");
                assert!(nic.time <= (l + k as f64 - 1.0) * (ALPHA + l * x) * (1.0 + 1e-9));
            }
        }
    }
}

#[test]
fn rabenseifner_all_reduce_power_of_two() {
    // 2·log2 N·α + 2(N−1)/N·S/B + (N−1)/N·S·γ
    for (n, net) in [2usize, 4, 8, 16, 64]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let count = 512 * n as u64;
        let s = (count * ELEM) as f64;
        let nf = n as f64;
        let e = priced(
            Algorithm::HalvingDoubling,
            &single(Collective::AllReduce, n, count),
            0,
            &net,
        );
        let want =
            2.0 * nf.log2() * ALPHA + 2.0 * (nf - 1.0) / nf * s / BW + (nf - 1.0) / nf * s * GAMMA;
        close(e.time, want, &format!("Rabenseifner N={n}"));
    }
}

#[test]
fn rabenseifner_all_reduce_folds_extra_ranks() {
    // N = 6 = 4 + 2: ranks 1 and 3 fold into 0 and 2 (α + S/B + S·γ),
    // Rabenseifner on p = 4, then the results go back (α + S/B):
    // 2·log2 p·α + 2(p−1)/p·S/B + (p−1)/p·S·γ + 2α + 2S/B + S·γ.
    let count = 4000u64;
    let s = (count * ELEM) as f64;
    let shape = single(Collective::AllReduce, 6, count);
    let want =
        4.0 * ALPHA + 1.5 * s / BW + 0.75 * s * GAMMA + 2.0 * ALPHA + 2.0 * s / BW + s * GAMMA;
    for net in [
        net(),
        net().with_injection(Injection::Unlimited),
        buffered().with_injection(Injection::Unlimited),
    ] {
        let e = priced(Algorithm::HalvingDoubling, &shape, 0, &net);
        close(e.time, want, &format!("Rabenseifner N=6 {net:?}"));
    }
    // Buffered with one NIC: rank 4 (virtual rank 2, which does not fold)
    // sends its first half (S/2) to rank 0 at once, while rank 0 still
    // takes the fold from rank 1: both share rank 0's port, which delays
    // the fold by up to S/(2B).
    let e = priced(Algorithm::HalvingDoubling, &shape, 0, &buffered());
    assert!(e.time > want * (1.0 + 1e-9) && e.time <= want + 0.5 * s / BW * (1.0 + 1e-9));
    assert!(e.critical_path.contention > 0.0);
}

/// A size curve's value at `s` between its points `p` and `q`: by the
/// logarithm of the size.
fn between(s: f64, p: (f64, f64), q: (f64, f64)) -> f64 {
    p.1 + (q.1 - p.1) * (s / p.0).ln() / (q.0 / p.0).ln()
}

#[test]
fn latency_follows_the_curve_of_message_sizes() {
    // α by payload: 1 µs up to 8 B (shared memory's inline writes), 3 µs at
    // 64 B, then up to α at 4 KiB (by the logarithm of the size) and flat
    // beyond. A ring all-gather
    // pays α(block) on each of its N−1 steps.
    let curve = SizeCurve::new(&[(8.0, 1e-6), (64.0, 3e-6), (4096.0, ALPHA)]).unwrap();
    let at = |b: f64| {
        if b <= 8.0 {
            1e-6
        } else if b <= 64.0 {
            between(b, (8.0, 1e-6), (64.0, 3e-6))
        } else if b <= 4096.0 {
            between(b, (64.0, 3e-6), (4096.0, ALPHA))
        } else {
            ALPHA
        }
    };
    for (n, base) in [2usize, 3, 8]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let nf = n as f64;
        let mut net = base;
        net.inter = net.inter.with_latency_by_size(curve);
        net.intra = net.inter;
        for per_rank in [1u64, 2, 3, 16, 36, 1000, 2000] {
            let b = (per_rank * ELEM) as f64;
            close(curve.at(b), at(b), &format!("the curve at {b} B"));
            let e = priced(
                Algorithm::Ring,
                &blocks(Collective::AllGather, n, per_rank),
                0,
                &net,
            );
            let what = format!("ring all_gather N={n}, {per_rank} elements per rank");
            close(e.time, (nf - 1.0) * (at(b) + b / BW), &what);
            close(e.critical_path.latency, (nf - 1.0) * at(b), &what);
        }
    }
    for bad in [
        &[][..],
        &[(64.0, 1e-6), (8.0, 1e-6)],
        &[(8.0, 1e-6), (8.0, 2e-6)],
        &[(8.0, f64::NAN)],
        &[(-1.0, 1e-6)],
        &[(1.0, 1e-6); 9],
    ] {
        assert!(
            matches!(SizeCurve::new(bad), Err(CostError::Network(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn bandwidth_and_duplex_follow_the_size_of_the_call() {
    // B by the call's largest buffer: 4 GB/s up to 256 KiB (in the
    // caches), 1 GB/s at 16 MiB, 0.5 GB/s from 64 MiB; D half of B.
    let points = [
        (256.0 * 1024.0, 4e9),
        (16.0 * 1048576.0, 1e9),
        (64.0 * 1048576.0, 0.5e9),
    ];
    let b_curve = SizeCurve::new(&points).unwrap();
    let d_curve = SizeCurve::new(&points.map(|(s, b)| (s, b / 2.0))).unwrap();
    let at = |s: f64| {
        if s <= points[0].0 {
            points[0].1
        } else if s <= points[1].0 {
            between(s, points[0], points[1])
        } else if s <= points[2].0 {
            between(s, points[1], points[2])
        } else {
            points[2].1
        }
    };
    for (n, base) in [2usize, 3, 8]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let nf = n as f64;
        let mut net = base;
        net.inter = net
            .inter
            .with_duplex(BW)
            .with_bandwidth_by_size(b_curve)
            .with_duplex_by_size(d_curve);
        net.intra = net.inter;
        // Elements per rank: a call of 64 KiB … 128 MiB (N = 8).
        for per_rank in [2048u64, 100_000, 1 << 20, 4 << 20] {
            let b = (per_rank * ELEM) as f64;
            let call = b * nf;
            let what = format!("N={n}, {per_rank} elements per rank ({call} B call)");
            close(b_curve.at(call), at(call), &what);
            // A ring all-gather exchanges: (N−1)(α + b/D(S)).
            let shape = blocks(Collective::AllGather, n, per_rank);
            let e = priced(Algorithm::Ring, &shape, 0, &net);
            close(e.time, (nf - 1.0) * (ALPHA + b / (at(call) / 2.0)), &what);
            // The same from the plans themselves.
            let plans: Vec<Plan> = (0..n)
                .map(|r| generate(Algorithm::Ring, &shape, r, &PlanOptions::default()).unwrap())
                .collect();
            close(price(&plans, &net, ELEM).unwrap().time, e.time, &what);
            // The bound counts the link at its fastest, so it stays a bound.
            assert!(
                lower_bound(&plans[0], &net, ELEM) <= e.time * (1.0 + 1e-12),
                "{what}"
            );
            // A ring reduce-scatter also folds at γ(S): 4·γ up to 256 KiB,
            // γ from 16 MiB on.
            let gammas =
                SizeCurve::new(&[(points[0].0, 4.0 * GAMMA), (points[1].0, GAMMA)]).unwrap();
            let copies = SizeCurve::new(&[(1.0, 0.0)]).unwrap();
            let folding = net.clone().with_memory_by_size(gammas, copies);
            let e = priced(
                Algorithm::Ring,
                &blocks(Collective::ReduceScatter, n, per_rank),
                0,
                &folding,
            );
            close(
                e.time,
                (nf - 1.0) * (ALPHA + b / (at(call) / 2.0) + b * gammas.at(call)),
                &what,
            );
            // A star broadcast of the call's size sends one way at B(S).
            let shape = single(Collective::Broadcast, n, per_rank * n as u64);
            let e = priced(Algorithm::Star, &shape, 0, &net);
            close(e.time, ALPHA + (nf - 1.0) * call / at(call), &what);
        }
    }
    // Resolving gives a plain link; a network without curves is borrowed.
    let net = Network::uniform(ALPHA, BW);
    assert!(matches!(
        net.at_call_bytes(1 << 20),
        std::borrow::Cow::Borrowed(_)
    ));
    let link = Link::new(ALPHA, BW)
        .with_bandwidth_by_size(b_curve)
        .at_call_bytes(1 << 40);
    assert_eq!((link.bandwidth, link.bandwidth_by_size), (0.5e9, None));
    // A rate of 0 anywhere on a curve is an error.
    let mut bad = net;
    bad.inter = bad
        .inter
        .with_bandwidth_by_size(SizeCurve::new(&[(1.0, 1e9), (2.0, 0.0)]).unwrap());
    assert!(matches!(
        price_call(
            Algorithm::Ring,
            &blocks(Collective::AllGather, 2, 8),
            &PlanOptions::default(),
            &bad,
            ELEM
        ),
        Err(CostError::Network(_))
    ));
}

#[test]
fn a_fold_into_a_piece_copied_before_folds_at_the_gamma_of_its_size() {
    // γ by size: γ/4 up to 4 MiB (in the caches), γ from 16 MiB on.
    let gammas =
        SizeCurve::new(&[(4.0 * 1048576.0, GAMMA / 4.0), (16.0 * 1048576.0, GAMMA)]).unwrap();
    let copies = SizeCurve::new(&[(1.0, 0.0)]).unwrap();
    let folding = net().with_memory_by_size(gammas, copies);
    // A 64 MiB call: rank 1 sends `len` elements, rank 0 folds them into
    // its output after copying `copy` (a region of the output) in the
    // same step.
    let call_len = 16u64 << 20;
    let len = 1000u64;
    let b = (len * ELEM) as f64;
    // `earlier`: the copy is a step of its own before the fold's (as a
    // pipelined tree's root copies a chunk, then folds a child's piece
    // into it steps later).
    let time_after = |copy: Region, earlier: bool| {
        let copy = Action::Copy {
            src: Region::new(BufferId::Input, copy.offset, copy.len),
            dst: copy,
        };
        let fold = Action::RecvReduce {
            peer: 1,
            dst: out(len),
        };
        let steps = if earlier {
            vec![vec![copy], vec![fold]]
        } else {
            vec![vec![copy, fold]]
        };
        let mut root = plan(0, 2, steps);
        let send = Action::Send {
            peer: 0,
            src: Region::new(BufferId::Input, 0, len),
        };
        let mut leaf = plan(
            1,
            2,
            if earlier {
                vec![vec![], vec![send]]
            } else {
                vec![vec![send]]
            },
        );
        for p in [&mut root, &mut leaf] {
            (p.input_len, p.output_len) = (call_len, call_len);
        }
        price(&[root, leaf], &folding, ELEM).unwrap().time
    };
    let time = |copy: Region| time_after(copy, false);
    let out_at = |offset, len| Region::new(BufferId::Output, offset, len);
    // Copied a step before: still in the cache.
    close(
        time_after(out_at(0, len), true),
        ALPHA + b / BW + b * GAMMA / 4.0,
        "copied a step before",
    );
    close(
        time_after(out_at(len, len), true),
        ALPHA + b / BW + b * GAMMA,
        "elsewhere, a step before",
    );
    // Copied just before, and small: in the cache.
    close(
        time(out_at(0, len)),
        ALPHA + b / BW + b * GAMMA / 4.0,
        "copied piece",
    );
    close(
        time(out_at(0, 2 * len)),
        ALPHA + b / BW + b * GAMMA / 4.0,
        "inside a copy",
    );
    // Not what the step copied: the call's γ (64 MiB: out of the cache).
    close(
        time(out_at(len, len)),
        ALPHA + b / BW + b * GAMMA,
        "elsewhere",
    );
    close(
        time(out_at(1, len)),
        ALPHA + b / BW + b * GAMMA,
        "partly copied",
    );
    // Copied, but a copy of 32 MiB has left the cache before the fold.
    let big = 8u64 << 20;
    close(
        time(out_at(0, big)),
        ALPHA + b / BW + b * gammas.at((big * ELEM) as f64),
        "copied in a large copy",
    );
    // A pipelined tree reduce of a 64 MiB call folds each piece it just
    // copied at the cached γ: cheaper than the same call with no copy in
    // the cache, and the gain is its bytes at the difference.
    let shape = single(Collective::Reduce, 2, call_len);
    let piece = 64u64 << 10;
    let cached = priced(Algorithm::Tree, &shape, piece, &folding).time;
    let cold_net = net().with_gamma(GAMMA);
    let cold = priced(Algorithm::Tree, &shape, piece, &cold_net).time;
    let gain = (call_len * ELEM) as f64 * (GAMMA - GAMMA / 4.0);
    close(cold - cached, gain, "tree reduce");
    // Rabenseifner folds into halves of 32 MiB it copied: the call's γ.
    let rabenseifner = |net: &Network| priced(Algorithm::HalvingDoubling, &shape, 0, net).time;
    close(
        rabenseifner(&folding),
        rabenseifner(&cold_net),
        "Rabenseifner",
    );
}

#[test]
fn recursive_doubling_all_reduce_and_all_gather() {
    for (n, net) in [2usize, 4, 8, 32]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let nf = n as f64;
        let lg = nf.log2();
        let count = 1000u64 * n as u64;
        let s = (count * ELEM) as f64;
        // All-reduce: log2 N exchanges of the whole vector, each folded in
        // (by the next step's local Reduce): log2 N·(α + S/B + S·γ).
        let e = priced(
            Algorithm::RecursiveDoubling,
            &single(Collective::AllReduce, n, count),
            0,
            &net,
        );
        close(
            e.time,
            lg * (ALPHA + s / BW + s * GAMMA),
            &format!("recursive doubling all_reduce N={n}"),
        );
        // All-gather (halving_doubling): log2 N·α + (N−1)/N·S/B.
        let e = priced(
            Algorithm::HalvingDoubling,
            &blocks(Collective::AllGather, n, 1000),
            0,
            &net,
        );
        close(
            e.time,
            lg * ALPHA + (nf - 1.0) / nf * s / BW,
            &format!("recursive doubling all_gather N={n}"),
        );
    }
    // N = 6: fold (α + S/B + S·γ), two exchanges each reduced, the result
    // back: log2 p·(α + S/B + S·γ) + 2α + 2S/B + S·γ.
    let count = 6000u64;
    let s = (count * ELEM) as f64;
    let want = 2.0 * (ALPHA + s / BW + s * GAMMA) + 2.0 * ALPHA + 2.0 * s / BW + s * GAMMA;
    let shape = single(Collective::AllReduce, 6, count);
    let e = priced(Algorithm::RecursiveDoubling, &shape, 0, &net());
    close(e.time, want, "recursive doubling all_reduce N=6");
    // Buffered (per link): ranks 4 and 5 do not fold, so their second
    // exchange's message is already at ranks 0 and 2 when those get there;
    // ranks 0 and 2 are then done with that step once their own bytes have
    // left (S/B), one α less on the critical path.
    let e = priced(
        Algorithm::RecursiveDoubling,
        &shape,
        0,
        &buffered().with_injection(Injection::Unlimited),
    );
    close(e.time, want - ALPHA, "buffered recursive doubling N=6");
    // With one NIC that early message also competes for rank 0's port.
    let e = priced(Algorithm::RecursiveDoubling, &shape, 0, &buffered());
    assert!(e.time > (want - ALPHA) * (1.0 + 1e-9) && e.time <= want + s / BW);
}

#[test]
fn bruck_all_gather_any_n() {
    // ⌈log2 N⌉·α + (N−1)/N·S/B, plus (with a copy cost) the own block copied
    // in and the final rotation: (S/N + S)·copy.
    let copy = 0.05e-9;
    for n in 2usize..=17 {
        let per = 1500u64;
        let nf = n as f64;
        let b = (per * ELEM) as f64;
        let s = b * nf;
        let shape = blocks(Collective::AllGather, n, per);
        for net in both() {
            let e = priced(Algorithm::Bruck, &shape, 0, &net);
            close(
                e.time,
                log2_ceil(n) * ALPHA + (nf - 1.0) / nf * s / BW,
                &format!("Bruck N={n}"),
            );
        }
        let e = priced(Algorithm::Bruck, &shape, 0, &buffered().with_copy(copy));
        close(
            e.time,
            log2_ceil(n) * ALPHA + (nf - 1.0) / nf * s / BW + (b + s) * copy,
            &format!("Bruck with copies N={n}"),
        );
    }
}

#[test]
fn star_root_serialises_its_sends_through_its_port() {
    let count = 10_000u64;
    let s = (count * ELEM) as f64;
    for (n, net) in [2usize, 3, 8, 33]
        .into_iter()
        .flat_map(|n| both().map(|m| (n, m)))
    {
        let net = || net.clone();
        let nf = n as f64;
        let shape = single(Collective::Broadcast, n, count);
        // One NIC: α + (N−1)·S/B; the root is done when its last byte left.
        let e = priced(Algorithm::Star, &shape, 0, &net());
        close(e.time, ALPHA + (nf - 1.0) * s / BW, &format!("star N={n}"));
        close(e.rank_finish[0], (nf - 1.0) * s / BW, "root leaves");
        let root = generate(Algorithm::Star, &shape, 0, &PlanOptions::default()).unwrap();
        close(
            lower_bound(&root, &net(), ELEM),
            (nf - 1.0) * s / BW,
            "root's bound",
        );
        assert_eq!(e.last_rank, n - 1);
        // An injection limit below the link: every byte at that rate.
        let limit = BW / 4.0;
        let e = priced(
            Algorithm::Star,
            &shape,
            0,
            &net().with_injection(Injection::Limit(limit)),
        );
        close(e.time, ALPHA + (nf - 1.0) * s / limit, "star, 1/4 port");
        // No port limit: all at once.
        let e = priced(
            Algorithm::Star,
            &shape,
            0,
            &net().with_injection(Injection::Unlimited),
        );
        close(e.time, ALPHA + s / BW, "star, unlimited port");
        // All-reduce: gather (ejection port), fold N−1 inputs, send back.
        let e = priced(
            Algorithm::Star,
            &single(Collective::AllReduce, n, count),
            0,
            &net(),
        );
        close(
            e.time,
            2.0 * ALPHA + 2.0 * (nf - 1.0) * s / BW + (nf - 1.0) * s * GAMMA,
            &format!("star all_reduce N={n}"),
        );
    }
}

#[test]
fn linear_all_to_all_takes_n_minus_1_messages_through_each_port() {
    // Every rank posts its N−1 sends at once, staggered (rank r sends to
    // r+1, r+2, …): the k-th message of every sender reaches a different
    // receiver, so each port is busy (N−1)·S/B and never waits. The
    // receivers' ports are asked for later intervals before earlier ones
    // (rank 0's third message before rank 1's first); served in time
    // order they fit: (N−1)·S/B + α, not about twice that. Buffered
    // messages only: in rendezvous a sender's messages start in the order
    // their receivers post, which at one instant is rank order, not the
    // plan's (a known limit: N = 3 prices 3·S/B + α there).
    let count = 10_000u64;
    let s = (count * ELEM) as f64;
    let net = buffered();
    for n in [2usize, 3, 5, 8, 13] {
        let nf = n as f64;
        let shape = Shape::new(
            Collective::AllToAll,
            n,
            0,
            Counts::Matrix {
                counts: vec![count; n * n],
                partial: false,
            },
        );
        let e = priced(Algorithm::Linear, &shape, 0, &net);
        close(
            e.time,
            ALPHA + (nf - 1.0) * s / BW,
            &format!("linear all_to_all N={n}"),
        );
        // All on one host whose bus carries exactly N transfers at B at
        // once: the bus, asked out of time order as the ports are, packs
        // them back to back and does not bind.
        let one_host = net
            .clone()
            .with_hosts(Hosts::Blocks(n), net.inter)
            .with_host_bandwidth(nf * BW);
        let e = priced(Algorithm::Linear, &shape, 0, &one_host);
        close(
            e.time,
            ALPHA + (nf - 1.0) * s / BW,
            &format!("linear all_to_all N={n}, one host"),
        );
        // Pairwise: N−1 exchanges, each α + S/B.
        let e = priced(Algorithm::Pairwise, &shape, 0, &net);
        close(
            e.time,
            (nf - 1.0) * (ALPHA + s / BW),
            &format!("pairwise all_to_all N={n}"),
        );
    }
}

#[test]
fn links_are_classified_by_host_with_a_port_per_class() {
    // 8 ranks, 4 per host: the star root 0 feeds ranks 1–3 over shared
    // memory and ranks 4–7 over the network, both ports at once.
    let shm = Link::new(0.5e-6, 20e9);
    let tcp = Link::new(20e-6, 1.25e9);
    let net = Network {
        inter: tcp,
        ..Network::uniform(1.0, 1.0)
    }
    .with_pipeline_bytes(0)
    .with_hosts(Hosts::Blocks(4), shm);
    assert_eq!(net.link(0, 3), &shm);
    assert_eq!(net.link(3, 4), &tcp);
    assert_eq!(net.link(7, 4), &shm);
    let count = 100_000u64;
    let s = (count * ELEM) as f64;
    let e = priced(
        Algorithm::Star,
        &single(Collective::Broadcast, 8, count),
        0,
        &net,
    );
    close(
        e.time,
        (shm.alpha + 3.0 * s / shm.bandwidth).max(tcp.alpha + 4.0 * s / tcp.bandwidth),
        "mixed star",
    );
    // An explicit map: ranks 0 and 5 share a host, everyone else is remote.
    let map = net
        .clone()
        .with_hosts(Hosts::Map(vec![0, 1, 2, 3, 4, 0, 6, 7]), shm);
    assert_eq!(map.link(0, 5), &shm);
    assert_eq!(map.link(0, 1), &tcp);
    let e = priced(
        Algorithm::Star,
        &single(Collective::Broadcast, 8, count),
        0,
        &map,
    );
    close(e.time, tcp.alpha + 6.0 * s / tcp.bandwidth, "map star");
    close(
        e.rank_finish[5],
        shm.alpha + s / shm.bandwidth,
        "rank 5 over shm",
    );
}

#[test]
fn every_algorithm_prices_at_small_n_and_one_rank_is_free() {
    for (c, net) in Collective::ALL
        .into_iter()
        .flat_map(|c| both().map(|m| (c, m.with_copy(0.1e-9).with_overhead(1e-7))))
    {
        for &alg in c.algorithms() {
            for n in 1..=9usize {
                let shape = match c {
                    Collective::Broadcast | Collective::Reduce | Collective::AllReduce => {
                        single(c, n, 777)
                    }
                    Collective::AllToAll => Shape::new(
                        c,
                        n,
                        0,
                        Counts::Matrix {
                            counts: vec![13; n * n],
                            partial: false,
                        },
                    ),
                    Collective::Barrier => Shape::new(c, n, 0, Counts::None),
                    _ => Shape::new(c, n, n / 2, Counts::Blocks(even_blocks(777, n))),
                };
                let options = PlanOptions { chunk_elems: 100 };
                let e = price_call(alg, &shape, &options, &net, 2)
                    .unwrap_or_else(|e| panic!("{alg} {c} N={n}: {e}"));
                assert!(e.time.is_finite() && e.time >= 0.0);
                // Each rank's own work bounds its finish from below.
                for r in 0..n {
                    let plan = generate(alg, &shape, r, &options).unwrap();
                    let lb = lower_bound(&plan, &net, 2);
                    assert!(
                        lb <= e.rank_finish[r] * (1.0 + 1e-9) + 1e-15,
                        "{alg} {c} N={n} rank {r}: bound {lb} > finish {}",
                        e.rank_finish[r]
                    );
                }
                close(e.critical_path.total(), e.time, "breakdown adds up");
                if n == 1 {
                    assert_eq!(e.messages, 0, "{alg} {c}");
                    assert!(
                        e.time <= 2.0 * 777.0 * 2.0 * 0.1e-9 * (1.0 + 1e-9),
                        "{alg} {c}"
                    );
                } else if c == Collective::Barrier {
                    assert!(e.time > 0.0, "{alg} barrier N={n}");
                }
            }
        }
    }
}

#[test]
fn price_of_given_plans_equals_price_of_generated_ones() {
    // Above 64 ranks generation runs on several threads; the merged
    // templates must price exactly as the serial path.
    for (alg, shape) in [
        (
            Algorithm::Ring,
            single(Collective::AllReduce, 300, 300 * 17 + 5),
        ),
        (Algorithm::Tree, single(Collective::AllReduce, 200, 100_000)),
        (Algorithm::Bruck, blocks(Collective::AllGather, 150, 7)),
    ] {
        let options = PlanOptions { chunk_elems: 4096 };
        let plans: Vec<Plan> = (0..shape.nranks)
            .map(|r| generate(alg, &shape, r, &options).unwrap())
            .collect();
        let net = net().with_copy(0.1e-9).with_overhead(1e-7);
        let a = price(&plans, &net, ELEM).unwrap();
        let b = price_call(alg, &shape, &options, &net, ELEM).unwrap();
        assert_eq!(a, b, "{alg}");
    }
}

#[test]
fn tuner_picks_latency_optimal_small_and_bandwidth_optimal_large() {
    let opts = TuneOptions {
        exhaustive: true,
        ..TuneOptions::default()
    };
    // Without a per-message cost the star's two latencies beat any number
    // of rounds: its hub's 2·63 tiny messages cost nothing but bytes.
    let free = Network::uniform(20e-6, 1.25e9).with_gamma(GAMMA);
    let t = tune(Collective::AllReduce, 8, 64, ELEM, &free, &opts).unwrap();
    assert_eq!(t.best().unwrap().algorithm, Algorithm::Star);
    // With 1 µs per message on the sender's port, 2·63 µs at the hub lose
    // to log2 64 = 6 rounds of α + o (plus a few nanoseconds of bytes).
    let net = free.with_overhead(1e-6);
    let small = tune(Collective::AllReduce, 8, 64, ELEM, &net, &opts).unwrap();
    assert_eq!(
        small.best().unwrap().algorithm,
        Algorithm::RecursiveDoubling
    );
    let t = small.best().unwrap().time().unwrap();
    assert!((6.0 * 21e-6..6.1 * 21e-6).contains(&t), "{t}");
    let large = tune(Collective::AllReduce, 256 << 20, 64, ELEM, &net, &opts).unwrap();
    assert_eq!(large.best().unwrap().algorithm, Algorithm::HalvingDoubling);
    for t in [&small, &large] {
        let times: Vec<f64> = t.candidates.iter().map(|c| c.time().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        // Every algorithm of the collective is among the candidates, and
        // each candidate is the price of its own plans.
        for &a in Collective::AllReduce.algorithms() {
            assert!(t.candidates.iter().any(|c| c.algorithm == a), "{a}");
        }
        for c in &t.candidates {
            let mut n = net.clone();
            if let Some(b) = c.chunk_bytes {
                assert!(pipelines(c.algorithm, Collective::AllReduce));
                n = n.with_pipeline_bytes(b);
            }
            let e = price_call(c.algorithm, &t.shape, &c.options, &n, ELEM).unwrap();
            assert_eq!(Some(e.time), c.time());
        }
    }
    // Large all-gather on a non-power of two: the ring (or Bruck, same
    // volume) beats the star and the folded recursive doubling.
    let ag = tune(Collective::AllGather, 64 << 20, 24, ELEM, &net, &opts).unwrap();
    let best = ag.best().unwrap().algorithm;
    assert!(matches!(best, Algorithm::Ring | Algorithm::Bruck), "{best}");
    let table = ag.to_string();
    assert!(table.contains('*') && table.contains("ring") && table.contains("star"));
}

#[test]
fn pruned_tuning_chooses_as_the_exhaustive_one() {
    // The default search skips candidates whose lower bound exceeds the
    // best time so far and abandons simulations that pass it; it must land
    // on the same choice, at the same time, while pricing less.
    let nets = [
        Network::uniform(20e-6, 1.25e9)
            .with_gamma(GAMMA)
            .with_overhead(1e-6),
        Network::uniform(2e-6, 12.5e9).with_overhead(0.2e-6),
        {
            // Shared memory as calibrated: latency by size, a call cost, a
            // core that copies both ways, bandwidth by the call's size.
            let mut shm = Network::uniform(0.2e-6, 10e9)
                .with_overhead(0.1e-6)
                .with_call_overhead(0.3e-6);
            let curve =
                SizeCurve::new(&[(8.0, 0.1e-6), (64.0, 0.3e-6), (16384.0, 0.2e-6)]).unwrap();
            let by_size =
                SizeCurve::new(&[(262144.0, 20e9), (4194304.0, 10e9), (67108864.0, 6e9)]).unwrap();
            shm.inter = shm
                .inter
                .with_latency_by_size(curve)
                .with_duplex(4e9)
                .with_bandwidth_by_size(by_size);
            shm.intra = shm.inter;
            shm
        },
    ];
    let full = TuneOptions {
        exhaustive: true,
        ..TuneOptions::default()
    };
    let mut pruned_some = false;
    for net in &nets {
        for c in [
            Collective::AllReduce,
            Collective::Broadcast,
            Collective::AllGather,
            Collective::ReduceScatter,
        ] {
            for n in [2usize, 7, 16, 64] {
                for bytes in [8u64, 64 << 10, 4 << 20] {
                    let a = tune(c, bytes, n, ELEM, net, &TuneOptions::default()).unwrap();
                    let b = tune(c, bytes, n, ELEM, net, &full).unwrap();
                    let (x, y) = (a.best().unwrap(), b.best().unwrap());
                    assert_eq!(x.time(), y.time(), "{c} N={n} {bytes} B");
                    assert_eq!(a.candidates.len(), b.candidates.len());
                    // A priced candidate has its exhaustive time; a pruned
                    // one really was slower than the choice.
                    for ca in &a.candidates {
                        let cb = b
                            .candidates
                            .iter()
                            .find(|cb| cb.algorithm == ca.algorithm && cb.options == ca.options)
                            .unwrap();
                        match &ca.outcome {
                            Ok(e) => assert_eq!(Some(e.time), cb.time()),
                            Err(CostError::Pruned { best }) => {
                                pruned_some = true;
                                assert!(cb.time().unwrap() > *best, "{c} N={n} {bytes} B");
                                assert!(*best >= y.time().unwrap());
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }
        }
    }
    assert!(pruned_some);
}

#[test]
fn budget_skips_candidates_instead_of_pricing_them() {
    let shape = single(Collective::AllReduce, 64, 1 << 20);
    let err = price_call_within(
        Algorithm::Ring,
        &shape,
        &PlanOptions::default(),
        &net(),
        ELEM,
        1000,
    )
    .unwrap_err();
    assert_eq!(err, CostError::Budget { limit: 1000 });
    let opts = TuneOptions {
        max_messages: 1000,
        ..TuneOptions::default()
    };
    let t = tune(Collective::AllReduce, 4 << 20, 64, ELEM, &net(), &opts).unwrap();
    // Recursive doubling (64·6 messages) fits, the ring (64·126) does not.
    let ring = t
        .candidates
        .iter()
        .find(|c| c.algorithm == Algorithm::Ring)
        .unwrap();
    assert!(matches!(ring.outcome, Err(CostError::Budget { .. })));
    assert!(t.best().unwrap().outcome.is_ok());
    assert!(t.candidates.last().unwrap().outcome.is_err());
}

fn plan(rank: usize, n: usize, steps: Vec<Vec<Action>>) -> Plan {
    let mut p = Plan::new(Collective::AllReduce, Algorithm::Ring, rank, n);
    p.input_len = 100;
    p.output_len = 100;
    p.steps = steps.into_iter().map(Step::new).collect();
    p
}

fn out(len: u64) -> Region {
    Region::new(BufferId::Output, 0, len)
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let send = |peer, len| Action::Send {
        peer,
        src: out(len),
    };
    let recv = |peer, len| Action::Recv {
        peer,
        dst: out(len),
    };
    // Both ranks receive first: a cycle of waits.
    let deadlock = [
        plan(0, 2, vec![vec![recv(1, 5)], vec![send(1, 5)]]),
        plan(1, 2, vec![vec![recv(0, 5)], vec![send(0, 5)]]),
    ];
    match price(&deadlock, &net(), 4) {
        Err(CostError::Deadlock { stuck, detail }) => {
            assert_eq!(stuck, vec![0, 1]);
            assert!(detail.contains("receive from rank 1"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // A send nobody receives: the sender waits for ever, or (buffered) the
    // message is left over.
    let unmatched = [plan(0, 2, vec![vec![send(1, 5)]]), plan(1, 2, vec![])];
    assert!(matches!(
        price(&unmatched, &net(), 4),
        Err(CostError::Deadlock { .. })
    ));
    assert_eq!(
        price(&unmatched, &buffered(), 4),
        Err(CostError::Unmatched {
            src: 0,
            dst: 1,
            send_step: 0
        })
    );
    // Both send first, then receive: a deadlock in synchronous rounds, fine
    // when the messages fit the buffers (each side sends at once).
    let swap = |r: usize| plan(r, 2, vec![vec![send(1 - r, 5)], vec![recv(1 - r, 5)]]);
    assert!(matches!(
        price(&[swap(0), swap(1)], &net(), 4),
        Err(CostError::Deadlock { .. })
    ));
    let e = price(&[swap(0), swap(1)], &buffered(), 4).unwrap();
    close(e.time, ALPHA + 20.0 / BW, "swap through the buffers");
    assert!(matches!(
        price(&[swap(0), swap(1)], &buffered().with_buffer_bytes(16), 4),
        Err(CostError::Deadlock { .. })
    ));
    let mismatch = [
        plan(0, 2, vec![vec![send(1, 5)]]),
        plan(1, 2, vec![vec![recv(0, 6)]]),
    ];
    assert!(matches!(
        price(&mismatch, &net(), 4),
        Err(CostError::LengthMismatch {
            send_len: 5,
            recv_len: 6,
            ..
        })
    ));
    let bad_peer = [plan(0, 2, vec![vec![send(2, 5)]]), plan(1, 2, vec![])];
    assert!(matches!(
        price(&bad_peer, &net(), 4),
        Err(CostError::BadPeer { peer: 2, .. })
    ));
    let self_peer = [plan(0, 2, vec![vec![send(0, 5)]]), plan(1, 2, vec![])];
    assert!(matches!(
        price(&self_peer, &net(), 4),
        Err(CostError::BadPeer { peer: 0, .. })
    ));
    let swapped = [plan(1, 2, vec![]), plan(0, 2, vec![])];
    assert!(matches!(
        price(&swapped, &net(), 4),
        Err(CostError::WrongRank { index: 0, .. })
    ));
    assert!(matches!(price(&[], &net(), 4), Err(CostError::Argument(_))));
    let ok = [plan(0, 1, vec![])];
    assert!(matches!(price(&ok, &net(), 0), Err(CostError::Argument(_))));
    for bad in [
        Network::uniform(-1.0, 1e9),
        Network::uniform(f64::NAN, 1e9),
        Network::uniform(1e-6, 0.0),
        Network::uniform(1e-6, f64::INFINITY),
        Network::uniform(1e-6, 1e9).with_gamma(-1.0),
        Network::uniform(1e-6, 1e9).with_injection(Injection::Limit(0.0)),
        Network::uniform(1e-6, 1e9).with_hosts(Hosts::Blocks(0), Link::new(1e-6, 1e9)),
        Network::uniform(1e-6, 1e9).with_hosts(Hosts::Map(vec![0]), Link::new(1e-6, 1e9)),
    ] {
        let shape = single(Collective::AllReduce, 2, 10);
        assert!(
            matches!(
                price_call(Algorithm::Ring, &shape, &PlanOptions::default(), &bad, 4),
                Err(CostError::Network(_))
            ),
            "{bad:?}"
        );
    }
    // Generator errors come through.
    let shape = single(Collective::AllReduce, 4, 10);
    assert!(matches!(
        price_call(Algorithm::Bruck, &shape, &PlanOptions::default(), &net(), 4),
        Err(CostError::Plan(_))
    ));
    let shape = single(Collective::AllReduce, 0, 10);
    assert!(matches!(
        price_call(Algorithm::Ring, &shape, &PlanOptions::default(), &net(), 4),
        Err(CostError::Plan(_))
    ));
    assert!(tune(
        Collective::Broadcast,
        8,
        4,
        4,
        &net(),
        &TuneOptions {
            root: 4,
            ..TuneOptions::default()
        }
    )
    .is_err());
    assert!(tune(
        Collective::AllReduce,
        8,
        4,
        4,
        &net(),
        &TuneOptions {
            algorithms: Some(vec![Algorithm::Bruck]),
            ..TuneOptions::default()
        }
    )
    .is_err());
}

/// One plan per rank of `n`, buffers of `len` elements, whose one step is
/// `actions(rank)`.
fn one_step_each(n: usize, len: u64, actions: impl Fn(usize) -> Vec<Action>) -> Vec<Plan> {
    (0..n)
        .map(|r| {
            let mut p = plan(r, n, vec![]);
            p.input_len = len;
            p.output_len = len;
            p.steps = vec![Step::new(actions(r))];
            p
        })
        .collect()
}

/// Every rank sends `len` elements to the next rank of its host and
/// receives as many from the previous one, in one step (`per_host`
/// consecutive ranks per host).
fn host_rings(n: usize, per_host: usize, len: u64) -> Vec<Plan> {
    one_step_each(n, len, |r| {
        let base = r / per_host * per_host;
        let next = base + (r - base + 1) % per_host;
        let prev = base + (r - base + per_host - 1) % per_host;
        vec![
            Action::Send {
                peer: next,
                src: Region::new(BufferId::Input, 0, len),
            },
            Action::Recv {
                peer: prev,
                dst: out(len),
            },
        ]
    })
}

#[test]
fn concurrent_transfers_on_one_host_share_its_bus() {
    // k ranks of one host each move s bytes to a neighbour at once: the
    // bus carries k·s, so the batch takes max(s/B, k·s/C) after o, and α.
    let count = 250_000u64;
    let s = (count * ELEM) as f64;
    let o = 1e-6;
    for k in [2usize, 3, 4, 8] {
        for cap in [0.5 * BW, 2.0 * BW, 100.0 * BW] {
            for base in both() {
                let l = base.inter;
                let net = base
                    .with_overhead(o)
                    .with_hosts(Hosts::Blocks(k), l)
                    .with_host_bandwidth(cap);
                let e = price(&host_rings(k, k, count), &net, ELEM).unwrap();
                let kf = k as f64;
                let what = format!("{k} ranks, bus {cap:e} B/s");
                close(e.time, ALPHA + o + (s / BW).max(kf * s / cap), &what);
                // The breakdown still adds up; the bus wait is contention.
                close(e.critical_path.total(), e.time, &what);
                // Without a bus, or with every rank on a host of its own
                // (the transfers are between hosts), the textbook form.
                let free = net.clone().with_host_bandwidth(f64::INFINITY);
                let e = price(&host_rings(k, k, count), &free, ELEM).unwrap();
                close(e.time, ALPHA + o + s / BW, &what);
                let apart = net.clone().with_hosts(Hosts::Blocks(1), l);
                let e = price(&host_rings(k, k, count), &apart, ELEM).unwrap();
                close(e.time, ALPHA + o + s / BW, &what);
            }
        }
    }
}

#[test]
fn the_host_bus_follows_the_size_of_the_call() {
    // A bus of 8·B for calls up to 64 KiB, 0.5·B from 4 MiB: four ranks of
    // one host moving s each take max(s/B, 4·s/C(S)) with S = s.
    let curve = SizeCurve::new(&[(65536.0, 8.0 * BW), (4194304.0, 0.5 * BW)]).unwrap();
    for count in [1024u64, 100_000, 2_000_000] {
        let s = (count * ELEM) as f64;
        let l = net().inter;
        let net = net()
            .with_hosts(Hosts::Blocks(4), l)
            .with_host_bandwidth(BW)
            .with_host_bandwidth_by_size(curve);
        let e = price(&host_rings(4, 4, count), &net, ELEM).unwrap();
        close(
            e.time,
            ALPHA + (s / BW).max(4.0 * s / curve.at(s)),
            &format!("{s} B each"),
        );
        let resolved = net.at_call_bytes(s as u64);
        assert_eq!(resolved.host_bandwidth, curve.at(s));
        assert_eq!(resolved.host_bandwidth_by_size, None);
    }
    let bad = net().with_host_bandwidth_by_size(SizeCurve::new(&[(1.0, 0.0)]).unwrap());
    assert!(matches!(
        price(&host_rings(2, 2, 8), &bad, ELEM),
        Err(CostError::Network(_))
    ));
}

#[test]
fn each_host_has_a_bus_of_its_own() {
    // 2 hosts of 4 ranks, a ring inside each: both buses carry 4·s at once.
    let count = 250_000u64;
    let s = (count * ELEM) as f64;
    let cap = 2.0 * BW;
    let l = net().inter;
    let net = net()
        .with_hosts(Hosts::Blocks(4), l)
        .with_host_bandwidth(cap);
    let e = price(&host_rings(8, 4, count), &net, ELEM).unwrap();
    close(e.time, ALPHA + 4.0 * s / cap, "two hosts");
    // One host of 8: one bus carries 8·s.
    let one = net.clone().with_hosts(Hosts::Blocks(8), l);
    let e = price(&host_rings(8, 4, count), &one, ELEM).unwrap();
    close(e.time, ALPHA + 8.0 * s / cap, "one host");
}

#[test]
fn ring_all_gather_on_a_saturated_bus() {
    // α = 0: the bus never idles, so N−1 steps of N messages of S/N take
    // (N−1)·N·(S/N)/C = (N−1)·S/C, against (N−1)·S/(N·B) without it.
    for n in [2usize, 3, 4, 8] {
        let per = 100_000u64;
        let s = (per * n as u64 * ELEM) as f64;
        let cap = 0.5 * BW;
        for base in both() {
            let mut base = base;
            base.inter.alpha = 0.0;
            let l = base.inter;
            let net = base
                .with_hosts(Hosts::Blocks(n), l)
                .with_host_bandwidth(cap);
            let shape = blocks(Collective::AllGather, n, per);
            let e = priced(Algorithm::Ring, &shape, 0, &net);
            let nf = n as f64;
            let what = format!("ring all_gather N={n}");
            close(e.time, (nf - 1.0) * s / cap, &what);
            let free = net.with_host_bandwidth(f64::INFINITY);
            let e = priced(Algorithm::Ring, &shape, 0, &free);
            close(e.time, (nf - 1.0) * s / (nf * BW), &what);
        }
    }
}

#[test]
fn a_bad_host_bandwidth_is_an_error() {
    let plans = host_rings(2, 2, 10);
    for cap in [0.0, -1.0, f64::NAN] {
        let net = net().with_host_bandwidth(cap);
        assert!(
            matches!(price(&plans, &net, ELEM), Err(CostError::Network(_))),
            "{cap}"
        );
    }
}

/// Every rank of `n` folds `len` elements of its input into its output in
/// one step of its own (no messages).
fn local_reductions(n: usize, len: u64) -> Vec<Plan> {
    one_step_each(n, len, |_| {
        vec![Action::Reduce {
            src: Region::new(BufferId::Input, 0, len),
            dst: out(len),
        }]
    })
}

#[test]
fn ranks_take_turns_at_their_host_s_cores() {
    // k ranks of one host with c cores: each message holds a core of its
    // sender's host for its overhead and its copy, o + s/B, so the last
    // of k leaves after ⌈k/c⌉ such turns; k reductions of s·γ take ⌈k/c⌉
    // turns; with a core per rank, the textbook forms.
    let count = 1000u64;
    let s = (count * ELEM) as f64;
    let o = 2e-6;
    for k in [2usize, 3, 4, 5, 8] {
        for cores in [1usize, 2, 3, 4, 8, 16] {
            for base in both() {
                let l = base.inter;
                let net = base
                    .with_overhead(o)
                    .with_hosts(Hosts::Blocks(k), l)
                    .with_host_cores(cores);
                let turns = k.div_ceil(cores) as f64;
                let what = format!("{k} ranks, {cores} cores");
                let e = price(&host_rings(k, k, count), &net, ELEM).unwrap();
                close(e.time, turns * (o + s / BW) + ALPHA, &what);
                close(e.critical_path.total(), e.time, &what);
                let e = price(&local_reductions(k, count), &net, ELEM).unwrap();
                close(e.time, turns * s * GAMMA, &what);
                close(e.critical_path.total(), e.time, &what);
                // Each rank on a host of its own: a core each.
                let apart = net.clone().with_hosts(Hosts::Blocks(1), l);
                let e = price(&host_rings(k, k, count), &apart, ELEM).unwrap();
                close(e.time, o + s / BW + ALPHA, &what);
            }
        }
    }
}

#[test]
fn a_rank_at_work_alone_has_a_core_and_enough_cores_change_nothing() {
    // A star's root sends while its leaves wait: 2 cores for 8 ranks cost
    // it nothing. A ring all-reduce on 8 cores for 8 ranks is priced as
    // with no limit; on 2 it is slower (every rank sends each step).
    let n = 8;
    let shape = single(Collective::Broadcast, n, 1 << 16);
    for base in both() {
        let l = base.inter;
        let net = base.with_overhead(1e-6).with_hosts(Hosts::Blocks(n), l);
        let free = priced(Algorithm::Star, &shape, 0, &net).time;
        let two = priced(Algorithm::Star, &shape, 0, &net.clone().with_host_cores(2)).time;
        close(two, free, "star broadcast on 2 cores");
        let ring = single(Collective::AllReduce, n, 1 << 16);
        let free = priced(Algorithm::Ring, &ring, 0, &net).time;
        let eight = priced(Algorithm::Ring, &ring, 0, &net.clone().with_host_cores(8)).time;
        close(eight, free, "ring all-reduce on 8 cores");
        let two = priced(Algorithm::Ring, &ring, 0, &net.clone().with_host_cores(2)).time;
        // Each step's 8 folds of S/8 take 4 turns on 2 cores: at least
        // 3 more folds per reduce-scatter step than with a core each.
        let fold = (1u64 << 16) as f64 * ELEM as f64 / n as f64 * GAMMA;
        let least = free + (n as f64 - 1.0) * 3.0 * fold;
        assert!(
            two >= least * (1.0 - 1e-9),
            "ring all-reduce on 2 cores: {two} < {least}"
        );
    }
}

#[test]
fn too_many_host_cores_is_an_error() {
    let net = net().with_host_cores(usize::MAX);
    assert!(matches!(
        price(&host_rings(2, 2, 10), &net, ELEM),
        Err(CostError::Network(_))
    ));
}

#[test]
fn ranks_woken_at_once_take_turns_to_resume() {
    // k ranks of one host on c cores, each waiting for an empty message
    // from its neighbour: the k messages land together at α, and the k
    // waiting ranks resume ⌈k/c⌉ wakes of w apart. With a core each, or
    // a message already in when its receiver looks, no turn is waited.
    let w = 3e-6;
    for k in [2usize, 3, 4, 8] {
        for cores in [1usize, 2, 3, 8] {
            let base = net();
            let l = base.inter;
            let net = base
                .with_hosts(Hosts::Blocks(k), l)
                .with_host_cores(cores)
                .with_wake(w);
            let what = format!("{k} ranks, {cores} cores");
            let e = price(&host_rings(k, k, 0), &net, ELEM).unwrap();
            let turns = if k > cores {
                k.div_ceil(cores) as f64
            } else {
                0.0
            };
            close(e.time, ALPHA + turns * w, &what);
            close(e.critical_path.total(), e.time, &what);
        }
    }
    // A receiver busy folding past the landing finds the message in: it
    // resumes without a wake (2 ranks, 1 core: the folds take turns).
    let count = 10_000u64;
    let fold = (count * ELEM) as f64 * GAMMA;
    let plans: Vec<Plan> = (0..2)
        .map(|r| {
            let mut p = plan(r, 2, vec![]);
            p.input_len = count;
            p.output_len = count;
            p.steps = vec![
                Step::new(vec![Action::Send {
                    peer: 1 - r,
                    src: Region::new(BufferId::Input, 0, 0),
                }]),
                Step::new(vec![Action::Reduce {
                    src: Region::new(BufferId::Input, 0, count),
                    dst: out(count),
                }]),
                Step::new(vec![Action::Recv {
                    peer: 1 - r,
                    dst: out(0),
                }]),
            ];
            p
        })
        .collect();
    let l = buffered().inter;
    let one_core = buffered()
        .with_hosts(Hosts::Blocks(2), l)
        .with_host_cores(1)
        .with_wake(w);
    assert!(2.0 * fold > ALPHA);
    let e = price(&plans, &one_core, ELEM).unwrap();
    close(
        e.time,
        2.0 * fold,
        "messages in before their receivers look",
    );
}

#[test]
fn one_core_copying_both_ways_takes_a_rank_s_sends_and_receives_in_turn() {
    // A linear all-to-all of one element per peer, o = 1 µs, α = 0.1 µs.
    // With full-duplex ports a rank's N − 1 sends and N − 1 receives
    // overlap: under 2(N − 1)·o. Where one core copies both ways (a duplex
    // rate), each receive's o (the end of its α) needs the core the rank's
    // own sends hold: 2(N − 1)·o at least, in turns first come, first
    // served (up to about an o and α more per peer where they interleave).
    let (o, alpha) = (1e-6, 0.1e-6);
    for n in [2usize, 3, 4, 8] {
        let nf = n as f64;
        let shape = Shape::new(
            Collective::AllToAll,
            n,
            0,
            Counts::Matrix {
                counts: vec![1; n * n],
                partial: false,
            },
        );
        let ports = Network::uniform(alpha, BW)
            .with_overhead(o)
            .with_buffer_bytes(0);
        let apart = priced(Algorithm::Linear, &shape, 0, &ports).time;
        assert!(apart < 2.0 * (nf - 1.0) * o, "N={n} full duplex: {apart:e}");
        let mut one_core = ports.clone();
        one_core.inter = one_core.inter.with_duplex(BW / 2.0);
        one_core.intra = one_core.inter;
        let e = priced(Algorithm::Linear, &shape, 0, &one_core);
        let want = 2.0 * (nf - 1.0) * o;
        assert!(
            e.time >= want && e.time < want + (nf - 1.0) * (o + alpha),
            "N={n} one core: {:e}, want about {want:e}",
            e.time
        );
    }
}

#[test]
fn one_core_copying_both_ways_folds_after_the_bytes_are_in() {
    // A ring reduce-scatter with blocks of 16 pieces: where the pieces
    // stream in while the last ones fold, each step costs α + b/B + one
    // piece's γ; where one core copies both ways (a duplex rate D) it takes
    // the bytes in, then folds them: α + b/D + b·γ.
    let (n, per_rank) = (4usize, 1u64 << 20);
    let (nf, b) = (n as f64, (per_rank * ELEM) as f64);
    let piece = b / 16.0;
    let base = net().with_pipeline_bytes(piece as u64);
    let shape = blocks(Collective::ReduceScatter, n, per_rank);
    let e = priced(Algorithm::Ring, &shape, 0, &base);
    close(
        e.time,
        (nf - 1.0) * (ALPHA + b / BW + piece * GAMMA),
        "streamed folds",
    );
    let mut one_core = base.clone();
    let d = BW / 2.0;
    one_core.inter = one_core.inter.with_duplex(d);
    one_core.intra = one_core.inter;
    let e = priced(Algorithm::Ring, &shape, 0, &one_core);
    close(
        e.time,
        (nf - 1.0) * (ALPHA + b / d + b * GAMMA),
        "folds after the bytes",
    );
}

#[test]
fn a_staged_fold_holds_the_receiver_s_port() {
    // Rank 0 folds s bytes from rank 1 and s bytes from rank 2 in one step,
    // over one-core links (a duplex rate), in synchronous rounds: it takes
    // in both messages (s/B each) and folds each (s·γ). Folding out of the
    // transport's memory, the second message comes in while the first
    // folds: 2s/B + α + s·γ. Folding a copy its core made first (a socket
    // read), that core takes nothing in while it folds, so the second
    // message waits for the first fold: 2(s/B + α + s·γ).
    let len = 1u64 << 18;
    let s = (len * ELEM) as f64;
    let plans = |net: &Network| {
        let fold = |peer| Action::RecvReduce {
            peer,
            dst: out(len),
        };
        let send = Action::Send {
            peer: 0,
            src: Region::new(BufferId::Input, 0, len),
        };
        let mut plans = [
            plan(0, 3, vec![vec![fold(1), fold(2)]]),
            plan(1, 3, vec![vec![send]]),
            plan(2, 3, vec![vec![send]]),
        ];
        for p in &mut plans {
            (p.input_len, p.output_len) = (len, len);
        }
        price(&plans, net, ELEM).unwrap().time
    };
    let one_core = |staged: bool| {
        let mut net = net();
        net.inter = net.inter.with_duplex(BW);
        if staged {
            net.inter = net.inter.with_staged_fold();
        }
        net.intra = net.inter;
        net
    };
    close(
        plans(&one_core(false)),
        2.0 * s / BW + ALPHA + s * GAMMA,
        "folding out of the ring",
    );
    close(
        plans(&one_core(true)),
        2.0 * (s / BW + ALPHA + s * GAMMA),
        "folding a staged copy",
    );
    // Where a NIC takes the bytes in (no duplex rate) the flag changes
    // nothing.
    let mut nic = net();
    nic.inter = nic.inter.with_staged_fold();
    nic.intra = nic.inter;
    close(plans(&nic), plans(&net()), "NIC");
}
