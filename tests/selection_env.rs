//! The environment variables of selection and calibration: `BRAID_ALGO`,
//! `BRAID_LINK`, `BRAID_CALIBRATE`, `BRAID_CHUNK_BYTES` and the cache under
//! `$XDG_CACHE_HOME`. The environment is the process's: this binary holds a
//! single test, which sets the variables one after another.

use braid::calibrate::Source;
use braid::{
    local_group, Algorithm, Calibrate, ChosenBy, Collective, Config, DType, ErrorKind, ReduceOp,
};

fn clear() {
    for v in [
        "BRAID_ALGO",
        "BRAID_LINK",
        "BRAID_CALIBRATE",
        "BRAID_CHUNK_BYTES",
        "BRAID_SHAPE",
        "BRAID_DEBUG",
    ] {
        std::env::remove_var(v);
    }
}

/// Runs `f` on every rank of a group of `n` built from the environment.
fn with_group<R: Send>(n: usize, f: impl Fn(&mut braid::Communicator) -> R + Sync) -> Vec<R> {
    let group = local_group(n).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || f(&mut c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn selection_and_calibration_follow_the_environment() {
    clear();
    let cache = std::env::temp_dir().join(format!("braid-selection-env-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::env::set_var("XDG_CACHE_HOME", &cache);

    // Bad values: configuration errors that say what is wrong and the form.
    for (var, value, want) in [
        ("BRAID_LINK", "20", "has 1 numbers, expected 2 or 3"),
        (
            "BRAID_LINK",
            "20,fast",
            "bandwidth (Gbit/s) 'fast' is not a number",
        ),
        (
            "BRAID_LINK",
            "shm=1,100;tcp=x,1",
            "latency (us) 'x' is not a number",
        ),
        (
            "BRAID_LINK",
            "ib=1,100",
            "'ib' is not a link kind (valid: local, shm, tcp",
        ),
        ("BRAID_CALIBRATE", "maybe", "valid: auto"),
    ] {
        std::env::set_var(var, value);
        let e = Config::from_env().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("{var}='{value}'")), "{text}");
        assert!(text.contains(want), "{text}");
        if var == "BRAID_LINK" {
            assert!(text.contains("alpha_us,gbps"), "{text}");
        }
        let e = local_group(2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        std::env::remove_var(var);
    }

    // Defaults: measured, cached under $XDG_CACHE_HOME/braid.
    let cal = with_group(3, |c| {
        c.barrier().unwrap();
        c.calibration().unwrap().clone()
    });
    assert_eq!(cal[0].links[0].source, Source::Measured);
    let files: Vec<_> = std::fs::read_dir(cache.join("braid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files.len() == 1 && files[0].starts_with("calibration-") && files[0].ends_with(".tsv"),
        "{files:?}"
    );
    let cal = with_group(3, |c| c.calibrate().unwrap().links[0].source);
    assert_eq!(cal, [Source::Cached; 3]);

    // BRAID_ALGO forces, on every rank, before and after calibration.
    std::env::set_var("BRAID_ALGO", "all_reduce=ring,broadcast=star");
    let got = with_group(4, |c| {
        let before = c.algorithm_for(Collective::AllReduce, 8);
        let mut x = [1.0f32; 7];
        c.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        c.barrier().unwrap();
        let after = c.choice(Collective::AllReduce, 8, DType::F32);
        let bcast = c.choice(Collective::Broadcast, 1 << 20, DType::F32);
        (before, after.algorithm, after.by, bcast.algorithm, x[0])
    });
    for g in got {
        assert_eq!(
            g,
            (
                Algorithm::Ring,
                Algorithm::Ring,
                ChosenBy::Forced,
                Algorithm::Star,
                4.0
            )
        );
    }
    std::env::remove_var("BRAID_ALGO");

    // BRAID_LINK and BRAID_CALIBRATE=off: no measuring.
    std::env::set_var("BRAID_LINK", "2,100");
    std::env::set_var("BRAID_CALIBRATE", "off");
    let config = Config::from_env().unwrap();
    assert_eq!(config.calibrate, Calibrate::Off);
    let links = with_group(2, |c| c.calibrate().unwrap().links[0]);
    assert_eq!(links[0].source, Source::Override);
    assert!((links[0].alpha - 2e-6).abs() < 1e-15 && links[0].bandwidth == 12.5e9);
    std::env::remove_var("BRAID_LINK");
    let links = with_group(2, |c| c.calibrate().unwrap().links[0]);
    assert_eq!(links[0].source, Source::Default);
    std::env::remove_var("BRAID_CALIBRATE");

    // BRAID_CHUNK_BYTES fixes the chunk: the model no longer picks one.
    std::env::set_var("BRAID_CHUNK_BYTES", "64K");
    let config = Config::from_env().unwrap();
    assert_eq!((config.chunk_bytes, config.tune_chunk), (65536, false));
    clear();
    std::env::remove_var("XDG_CACHE_HOME");
    let _ = std::fs::remove_dir_all(&cache);
}
