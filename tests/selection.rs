//! Algorithm selection by the cost model: every rank chooses alike, forced
//! algorithms stay forced, calibration figures are cached and reused, and
//! predictions are sensible. Each test keeps its calibration cache in a
//! directory of its own (through the config, not the environment).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use braid::calibrate::{Source, CURVE_BYTES, HOT_BYTES};
use braid::select::{model_choice, ChosenBy};
use braid::{
    run_local, Algorithm, Calibrate, Collective, Communicator, Config, DType, LinkSpec, ReduceOp,
    Transport,
};
use braid_transports::local::{endpoints, DEFAULT_PAIR_CAPACITY};
use braid_transports::TransportError;

/// A fresh, empty directory for one test's cache.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-selection-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(name: &str) -> Config {
    Config::default()
        .with_timeout(Duration::from_secs(30))
        .with_cache_dir(temp_dir(name))
}

const SIZES: [u64; 7] = [0, 8, 1000, 64 << 10, (64 << 10) + 1, 1 << 20, 64 << 20];

/// Every choice this communicator would make, in a fixed order.
fn choices(comm: &Communicator) -> Vec<String> {
    let mut out = Vec::new();
    for c in Collective::ALL {
        for bytes in SIZES {
            for dtype in [DType::F32, DType::F64, DType::U8] {
                let ch = comm.choice(c, bytes, dtype);
                out.push(format!(
                    "{c} {bytes} {dtype}: {} {:?} {:?} {:?}",
                    ch.algorithm, ch.chunk_bytes, ch.by, ch.predicted
                ));
            }
        }
    }
    out
}

#[test]
fn every_rank_chooses_alike() {
    for n in [2, 3, 4, 5, 8] {
        let views = run_local(n, config(&format!("alike-{n}")), |comm| {
            // Before calibration: the size rule, alike too.
            let before = choices(comm);
            let mut x = vec![comm.rank() as f32; 3];
            comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
            assert_eq!(x[0], (n * (n - 1) / 2) as f32);
            let cal = comm.calibration().expect("the first auto call calibrates");
            let network = format!("{:?}", cal.network);
            (before, choices(comm), network)
        })
        .unwrap();
        for (rank, v) in views.iter().enumerate() {
            assert_eq!(v, &views[0], "rank {rank} of {n} chooses differently");
        }
        let (before, after, _) = &views[0];
        assert!(before.iter().all(|l| l.contains("Rule")), "{before:?}");
        assert!(after.iter().any(|l| l.contains("Model")), "{after:?}");
    }
}

/// Calls whose algorithm and chunk the model picks still compute exactly,
/// at sizes on both sides of a bucket edge and with pipelined choices.
#[test]
fn the_model_s_choices_compute_exactly() {
    let n = 4;
    let failures = run_local(n, config("exact"), |comm| {
        let me = comm.rank();
        let mut bad = Vec::new();
        for count in [1usize, 1000, 1025, 100_000, 300_001] {
            let input: Vec<f64> = (0..count).map(|i| (i + me) as f64).collect();
            let mut out = vec![0f64; count];
            comm.all_reduce(&input, &mut out, ReduceOp::Sum).unwrap();
            let want = |i: usize| (n * i + n * (n - 1) / 2) as f64;
            if (0..count).any(|i| out[i] != want(i)) {
                bad.push(format!("all_reduce {count}"));
            }
            let mut buf: Vec<i32> = if me == 1 {
                (0..count as i32).collect()
            } else {
                vec![0; count]
            };
            comm.broadcast(&mut buf, 1).unwrap();
            if buf.iter().enumerate().any(|(i, v)| *v != i as i32) {
                bad.push(format!("broadcast {count}"));
            }
            let mut red = vec![0f64; if me == 2 { count } else { 0 }];
            comm.reduce(&input, &mut red, ReduceOp::Sum, 2).unwrap();
            if me == 2 && (0..count).any(|i| red[i] != want(i)) {
                bad.push(format!("reduce {count}"));
            }
            let block = count.div_ceil(n);
            let mut all = vec![0u32; block * n];
            comm.all_gather(&vec![me as u32; block], &mut all).unwrap();
            if all
                .iter()
                .enumerate()
                .any(|(i, v)| *v as usize != i / block)
            {
                bad.push(format!("all_gather {count}"));
            }
        }
        bad
    })
    .unwrap();
    assert!(failures.iter().all(Vec::is_empty), "{failures:?}");
}

#[test]
fn forced_algorithms_stay_forced() {
    let cfg = config("forced")
        .with_algorithm(Collective::AllReduce, Algorithm::Star)
        .unwrap();
    let got = run_local(3, cfg, |comm| {
        let before = comm.algorithm_for(Collective::AllReduce, 1 << 20);
        comm.barrier().unwrap(); // auto: calibrates
        assert!(comm.calibration().is_some());
        let after = comm.choice(Collective::AllReduce, 1 << 20, DType::F32);
        let mut x = [1u32; 5];
        comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        // Back to automatic choice.
        comm.set_algorithm(Collective::AllReduce, None).unwrap();
        let auto = comm.choice(Collective::AllReduce, 8, DType::F32);
        (before, after, x[0], auto.by)
    })
    .unwrap();
    for (before, after, sum, auto) in got {
        assert_eq!(before, Algorithm::Star);
        assert_eq!(
            (after.algorithm, after.by),
            (Algorithm::Star, ChosenBy::Forced)
        );
        assert_eq!(sum, 3);
        assert_eq!(auto, ChosenBy::Model);
    }
}

#[test]
fn a_forced_pipelined_algorithm_gets_the_model_s_chunk_unless_one_is_given() {
    let base = config("chunk")
        .with_algorithm(Collective::Broadcast, Algorithm::Ring)
        .unwrap()
        .with_link("*", LinkSpec::new(20.0, 10.0));
    for (cfg, pinned) in [
        (base.clone(), None),
        (base.with_chunk_bytes(12345), Some(12345usize)),
    ] {
        let got = run_local(4, cfg, |comm| {
            comm.calibrate().unwrap();
            let mut buf = vec![comm.rank() as u8; 1 << 20];
            comm.broadcast(&mut buf, 0).unwrap();
            assert!(buf.iter().all(|b| *b == 0));
            comm.choice(Collective::Broadcast, 64 << 20, DType::U8)
        })
        .unwrap();
        for c in got {
            assert_eq!(c.algorithm, Algorithm::Ring);
            match pinned {
                None => {
                    let chunk = c.chunk_bytes.expect("the model picks a chunk");
                    assert!(braid::select::CHUNK_CANDIDATES.contains(&chunk), "{c:?}");
                    assert!(c.predicted.is_some());
                }
                // The configured chunk, nothing to price.
                Some(_) => assert_eq!((c.chunk_bytes, c.predicted), (None, None), "{c:?}"),
            }
        }
    }
}

#[test]
fn calibration_is_cached_and_reused() {
    let dir = temp_dir("cache");
    let cfg = Config::default()
        .with_timeout(Duration::from_secs(30))
        .with_cache_dir(&dir);
    let calibrate = |cfg: Config| {
        run_local(3, cfg, |comm| comm.calibrate().unwrap().clone())
            .unwrap()
            .remove(0)
    };
    let first = calibrate(cfg.clone());
    assert_eq!(first.links.len(), 1);
    assert_eq!(first.links[0].kind, "local");
    assert_eq!(first.links[0].pairs, 6);
    assert_eq!(first.links[0].source, Source::Measured);
    assert_eq!(first.reduce_source, Source::Measured);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("kind=local") && text.contains("n=3"),
        "{text}"
    );
    assert!(text.contains("gamma="), "{text}");
    // Latency by size where the link is fast enough to measure it (the
    // cache keeps it: the network below is the same, exactly).
    let link = &first.links[0];
    assert!(link.call_overhead >= 0.0 && link.call_overhead.is_finite());
    assert_eq!(
        link.latency_by_size.is_some(),
        text.contains("curve="),
        "{text}"
    );
    let crowded = 3 > braid_transports::shm::online_cpus();
    if crowded {
        // More ranks than cores on one host: α, o, c and the wake come
        // from the group's exchanges from a common start, and the model
        // lets the ranks take turns at the host's cores. (α may fit at its
        // floor of 1 ns: the wake then carries a hop's whole cost.)
        assert!(link.alpha >= 1e-9 && link.alpha.is_finite(), "{link:?}");
        assert!(
            link.wake.is_finite() && link.alpha + link.wake > 0.0,
            "{link:?}"
        );
        assert_eq!(first.network.wake, link.wake);
        assert!(
            link.overhead >= 0.0 && link.overhead.is_finite(),
            "{link:?}"
        );
        assert_eq!(
            first.network.host_cores,
            braid_transports::shm::online_cpus()
        );
    } else {
        assert_eq!(first.network.host_cores, 0, "a core per rank");
        assert_eq!(link.wake, 0.0);
    }
    // What each pair measured: where ranks take turns at the cores, the
    // first pair of neighbours alone; else pairs far apart (0 with 2 of 3).
    let want = if crowded { (0, 1) } else { (0, 2) };
    let pairs: Vec<(usize, usize)> = first.pairs.iter().map(|p| p.ranks).collect();
    assert_eq!(pairs, [want]);
    let pair = first.pairs[0];
    assert!(pair.kind == "local" && pair.alpha > 0.0 && pair.bandwidth > 0.0);
    assert!(
        first
            .describe_pairs()
            .starts_with(&format!("local {}-{}: alpha ", want.0, want.1)),
        "{}",
        first.describe_pairs()
    );
    if let Some(curve) = &link.latency_by_size {
        let sizes: Vec<f64> = curve.points().iter().map(|p| p.0).collect();
        let want: Vec<f64> = CURVE_BYTES.iter().map(|&b| b as f64).collect();
        assert_eq!(sizes, want);
        assert_eq!(curve.points()[0].1, link.alpha);
        assert!(curve.points().iter().all(|p| p.1 > 0.0));
    }

    // Rates by call size, cached with the rest: B from a call that stays
    // in the caches to the streams B was measured with; D the same and,
    // unless the host is crowded (one pair measures there, and skips it
    // for the time budget), over a span of buffers beyond them.
    let link_line = text.lines().find(|l| l.starts_with("link")).unwrap();
    assert!(link.bandwidth_by_size.is_some(), "{link:?}");
    assert_eq!(
        link.bandwidth_by_size.is_some(),
        link_line.contains("hot="),
        "{text}"
    );
    if let Some(curve) = &link.bandwidth_by_size {
        let p = curve.points();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, HOT_BYTES as f64);
        assert!(p[1].0 >= (1 << 20) as f64, "{p:?}");
        assert_eq!(p[1].1, link.bandwidth);
        assert!(p.iter().all(|x| x.1 > 0.0 && x.1.is_finite()));
    }
    if let Some(curve) = &link.duplex_by_size {
        assert_eq!(curve.points().len(), if crowded { 2 } else { 3 });
        assert_eq!(Some(curve.points()[1].1), link.duplex);
        assert_eq!(link_line.contains("cold="), !crowded, "{text}");
    }
    assert!(link.duplex_by_size.is_none() || link.duplex.is_some());

    let second = calibrate(cfg.clone());
    assert_eq!(second.links[0].source, Source::Cached);
    assert_eq!(second.reduce_source, Source::Cached);
    assert_eq!(second.network, first.network, "the cached figures, exactly");
    assert!(second.pairs.is_empty(), "nothing measured");

    // Another group size is another entry.
    let other = run_local(2, cfg.clone(), |comm| {
        comm.calibrate().unwrap().links[0].source
    })
    .unwrap();
    assert_eq!(other, [Source::Measured; 2]);

    let refreshed = calibrate(cfg.clone().with_calibrate(Calibrate::Refresh));
    assert_eq!(refreshed.links[0].source, Source::Measured);

    // Off: defaults, and the cache is not touched.
    let off_dir = temp_dir("cache-off");
    let off = calibrate(cfg.with_calibrate(Calibrate::Off).with_cache_dir(&off_dir));
    assert_eq!(off.links[0].source, Source::Default);
    assert_eq!(off.reduce_source, Source::Default);
    assert!(!off_dir.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn link_figures_from_the_config_replace_measuring() {
    let cfg = config("link").with_link("*", LinkSpec::new(20.0, 10.0));
    let cals = run_local(4, cfg, |comm| {
        let cal = comm.calibrate().unwrap().clone();
        // Given figures: one latency for every size, no call cost.
        assert!(cal
            .links
            .iter()
            .all(|l| l.latency_by_size.is_none() && l.call_overhead == 0.0));
        // Predictions: positive, and longer for more bytes.
        for c in Collective::ALL {
            for &a in c.algorithms() {
                let t: Vec<f64> = [8u64, 64 << 10, 16 << 20]
                    .iter()
                    .map(|&b| comm.predict(c, a, b, DType::F32).unwrap())
                    .collect();
                assert!(t.iter().all(|x| *x > 0.0), "{c} {a}: {t:?}");
                if c != Collective::Barrier {
                    assert!(t[0] < t[1] && t[1] < t[2], "{c} {a}: {t:?}");
                }
            }
            assert_eq!(
                comm.predict(c, Algorithm::Dissemination, 8, DType::F32)
                    .is_some(),
                c == Collective::Barrier
            );
        }
        let table = comm.tuning_table().unwrap();
        assert!(table.contains("tcp") || table.contains("local"), "{table}");
        assert!(
            table.contains("BRAID_LINK") && table.contains("reduce_scatter"),
            "{table}"
        );
        cal
    })
    .unwrap();
    let l = &cals[0].links[0];
    assert_eq!(l.source, Source::Override);
    assert!(
        (l.alpha - 20e-6).abs() < 1e-15 && l.bandwidth == 1.25e9,
        "{l:?}"
    );
    // 20 µs: at 8 bytes and 4 ranks, latency decides; one α per round.
    let c = model_choice(&cals[0].network, Collective::AllReduce, 8, 4, 4, None, None).unwrap();
    let t = c.predicted.unwrap();
    assert!((20e-6..200e-6).contains(&t), "{c:?}");
}

#[test]
fn pricing_stays_bounded_at_64_ranks() {
    let net = braid::Network::uniform(20e-6, 1.25e9)
        .with_gamma(0.05e-9)
        .with_overhead(1e-6);
    let start = Instant::now();
    for c in Collective::ALL {
        for bytes in [8, 64 << 10, 1 << 20, 64 << 20, 1 << 30] {
            let ch = model_choice(&net, c, bytes, 64, 4, None, None).unwrap();
            assert!(ch.algorithm.supports(c) && ch.predicted.unwrap() > 0.0);
        }
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "45 choices at 64 ranks took {took:?}"
    );
    eprintln!("45 choices at 64 ranks: {took:?}");
    // And a real group of 64 threads calibrates and chooses.
    let start = Instant::now();
    let sums = run_local(64, config("n64"), |comm| {
        let mut x = vec![1u32; 1000];
        comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        x[999]
    })
    .unwrap();
    assert!(sums.iter().all(|s| *s == 64));
    eprintln!("64 ranks: calibrate + all_reduce {:?}", start.elapsed());
}

/// Wraps a local endpoint and names the link of each peer as if ranks
/// `2k` and `2k + 1` shared a host (shared memory) and the others talked
/// over TCP.
struct TwoKinds(Box<dyn Transport>);

impl Transport for TwoKinds {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn name(&self) -> &'static str {
        "mixed"
    }
    fn link_kind(&self, peer: usize) -> &'static str {
        if peer / 2 == self.rank() / 2 {
            "shm"
        } else {
            "tcp"
        }
    }
    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        self.0.send(peer, parts)
    }
    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        self.0.recv(peer, max, granule, sink)
    }
    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        self.0.wait(deadline)
    }
}

#[test]
fn two_link_kinds_make_two_hosts() {
    let n = 5;
    let cfg = config("kinds").with_link("tcp", LinkSpec::new(50.0, 1.0));
    let comms: Vec<Communicator> = endpoints(n, DEFAULT_PAIR_CAPACITY)
        .into_iter()
        .map(|ep| Communicator::new(Box::new(TwoKinds(Box::new(ep))), cfg.clone()))
        .collect();
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut comm| {
                s.spawn(move || {
                    let mut x = vec![comm.rank() as i64 + 1; 10];
                    comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
                    (x[9], comm.calibration().unwrap().clone(), choices(&comm))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (sum, cal, ch) in &got {
        assert_eq!(*sum, 15);
        assert_eq!(cal.network, got[0].1.network);
        assert_eq!(ch, &got[0].2);
    }
    let cal = &got[0].1;
    let kinds: Vec<(&str, Source, usize)> = cal
        .links
        .iter()
        .map(|l| (l.kind, l.source, l.pairs))
        .collect();
    // Pairs (0,1), (2,3) both ways share a "host"; rank 4 is alone.
    assert_eq!(
        kinds,
        [("shm", Source::Measured, 4), ("tcp", Source::Override, 16)]
    );
    assert_eq!(
        cal.network.hosts,
        braid_topologies::Hosts::Map(vec![0, 0, 2, 2, 4])
    );
    assert!((cal.network.inter.alpha - 50e-6).abs() < 1e-15);
}

#[test]
fn a_calibration_s_line_prices_as_its_network() {
    // `braid-sim --network` and benches/scripts/reprice.py rebuild the
    // network from the line BRAID_DEBUG=tuning prints; the figures are
    // printed to 3 or 4 digits, so prices agree to within a few percent.
    // Two ranks: where ranks take turns at the cores (more ranks than
    // cores) a few digits can reorder the turns and move a price by more
    // (4 ranks on 2 cores: 1 run in 5 off by 3.5–5%); every part of such a
    // line is read back exactly in calibrate's own tests.
    let n = 2;
    let cfg = config("line");
    let cal = run_local(n, cfg.clone(), |comm| comm.calibrate().unwrap().clone())
        .unwrap()
        .remove(0);
    let line = cal.describe();
    let net = braid::calibrate::network_from_description(&line, n, cfg.chunk_bytes as u64)
        .unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(net.host_cores, cal.network.host_cores, "{line}");
    assert_eq!(
        net.inter.duplex.is_some(),
        cal.network.inter.duplex.is_some()
    );
    for c in [
        Collective::AllReduce,
        Collective::AllToAll,
        Collective::Gather,
    ] {
        for bytes in [8u64, 64 << 10, 16 << 20] {
            for a in Algorithm::ALL.into_iter().filter(|a| a.supports(c)) {
                let price = |net| {
                    model_choice(net, c, bytes, n, 4, Some(a), None)
                        .unwrap()
                        .predicted
                        .unwrap()
                };
                let (want, got) = (price(&cal.network), price(&net));
                assert!(
                    (got / want - 1.0).abs() < 0.03,
                    "{c} {a} {bytes} B: {got:e} s from the line, {want:e} s calibrated\n{line}"
                );
            }
        }
    }
    let bad = braid::calibrate::network_from_description("shm: alpha x us", n, 1 << 18);
    assert!(bad.is_err(), "{bad:?}");
}
