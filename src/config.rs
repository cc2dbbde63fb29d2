//! Configuration: a struct for embedding programs, filled from `BRAID_*`
//! environment variables by [`Config::from_env`].
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `BRAID_ALGO` | force algorithms: `all_reduce=ring,broadcast=tree` | chosen per call by the cost model |
//! | `BRAID_TIMEOUT` | seconds any wait may take before it fails | 60 |
//! | `BRAID_CHUNK_BYTES` | pipeline chunk for large messages (`256K`, `1M`); setting it also stops the model from choosing the chunk | 256 KiB, chosen per call for pipelined algorithms |
//! | `BRAID_LINK` | link figures instead of measuring: `alpha_us,gbps[,overhead_us]` for every link kind, or per kind `shm=0.5,80;tcp=20,10` | measured (or cached) |
//! | `BRAID_CALIBRATE` | `auto` (cached figures, else measure), `refresh` (measure and rewrite the cache), `off` (documented defaults, no measuring, no cache) | `auto` |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use braid_topologies::{Algorithm, Collective};
pub use braid_transports::settings::parse_size;

use crate::{Error, Result};

/// How a communicator behaves. `Config::default()` is what an unset
/// environment gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How long any single wait may take before the call fails with a
    /// timeout naming the peers that did not answer.
    pub timeout: Duration,
    /// Algorithms forced per collective (otherwise the cost model chooses).
    pub algorithms: BTreeMap<Collective, Algorithm>,
    /// Large messages are streamed in pieces of this many bytes, so that the
    /// receiver reduces one piece while the next is in flight; also the
    /// pipeline chunk of pipelined algorithms unless `tune_chunk`.
    pub chunk_bytes: usize,
    /// Whether the cost model picks the pipeline chunk of pipelined
    /// algorithms (tree broadcast/reduce/all-reduce, double binary tree,
    /// ring broadcast) per call. Cleared by `BRAID_CHUNK_BYTES` and
    /// [`Config::with_chunk_bytes`]: a chunk given is a chunk used.
    pub tune_chunk: bool,
    /// Whether and how the communicator measures its links (see
    /// [`Calibrate`]).
    pub calibrate: Calibrate,
    /// Link figures used instead of measuring (`BRAID_LINK`): the key `"*"`
    /// applies to every link kind, otherwise the key is a link kind
    /// (`"local"`, `"shm"`, `"tcp"`).
    pub links: BTreeMap<String, LinkSpec>,
    /// Where the calibration cache lives; `None`: `$XDG_CACHE_HOME/braid`,
    /// else `~/.cache/braid`.
    pub cache_dir: Option<PathBuf>,
}

/// How a communicator gets the latency and bandwidth of its links, which
/// the cost model needs to choose algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Calibrate {
    /// Figures cached for this host, else measured (and cached).
    #[default]
    Auto,
    /// Always measure, and rewrite the cache.
    Refresh,
    /// Never measure nor touch the cache: documented defaults per link kind
    /// (or `BRAID_LINK`).
    Off,
}

/// One link's figures, as given by `BRAID_LINK` or [`Config::with_link`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// Latency α in seconds.
    pub alpha: f64,
    /// Bandwidth B in bytes per second.
    pub bandwidth: f64,
    /// Per-message overhead o in seconds; `None`: the link kind's default.
    pub overhead: Option<f64>,
}

impl LinkSpec {
    /// A link of `alpha_us` microseconds and `gbps` Gbit/s (10^9 bits per
    /// second), as `BRAID_LINK` writes it.
    pub fn new(alpha_us: f64, gbps: f64) -> LinkSpec {
        LinkSpec {
            alpha: alpha_us * 1e-6,
            bandwidth: gbps * 1e9 / 8.0,
            overhead: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(60),
            algorithms: BTreeMap::new(),
            chunk_bytes: 256 << 10,
            tune_chunk: true,
            calibrate: Calibrate::Auto,
            links: BTreeMap::new(),
            cache_dir: None,
        }
    }
}

impl Config {
    /// Reads `BRAID_ALGO`, `BRAID_TIMEOUT`, `BRAID_CHUNK_BYTES`, `BRAID_LINK`
    /// and `BRAID_CALIBRATE`; errors name the variable, its value and the
    /// accepted forms.
    pub fn from_env() -> Result<Config> {
        let mut config = Config::default();
        if let Ok(v) = std::env::var("BRAID_ALGO") {
            config.algorithms = parse_algorithms(&v)
                .map_err(|e| Error::config(format!("BRAID_ALGO='{v}': {e}")))?;
        }
        if let Ok(v) = std::env::var("BRAID_TIMEOUT") {
            config.timeout = parse_seconds(&v).ok_or_else(|| {
                Error::config(format!(
                    "BRAID_TIMEOUT='{v}' is not a positive number of seconds (e.g. 30 or 0.5)"
                ))
            })?;
        }
        if let Ok(v) = std::env::var("BRAID_CHUNK_BYTES") {
            config.chunk_bytes = parse_size(&v).filter(|b| *b > 0).ok_or_else(|| {
                Error::config(format!(
                    "BRAID_CHUNK_BYTES='{v}' is not a positive size (e.g. 65536, 64K, 1M)"
                ))
            })? as usize;
            config.tune_chunk = false;
        }
        if let Ok(v) = std::env::var("BRAID_LINK") {
            config.links =
                parse_links(&v).map_err(|e| Error::config(format!("BRAID_LINK='{v}': {e}")))?;
        }
        if let Ok(v) = std::env::var("BRAID_CALIBRATE") {
            config.calibrate = parse_calibrate(&v)
                .map_err(|e| Error::config(format!("BRAID_CALIBRATE='{v}': {e}")))?;
        }
        Ok(config)
    }

    /// Forces `algorithm` for `collective`; errors if it does not implement it.
    pub fn with_algorithm(mut self, collective: Collective, algorithm: Algorithm) -> Result<Self> {
        check_pair(collective, algorithm).map_err(Error::config)?;
        self.algorithms.insert(collective, algorithm);
        Ok(self)
    }

    /// Sets the deadline of every wait.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Streams messages in pieces of `bytes` (at least 1) and uses it as the
    /// chunk of pipelined algorithms, as `BRAID_CHUNK_BYTES` does.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self.tune_chunk = false;
        self
    }

    /// Uses `link` for the link kind `kind` (`"*"`: every kind) instead of
    /// measuring it, as `BRAID_LINK` does.
    pub fn with_link(mut self, kind: &str, link: LinkSpec) -> Self {
        self.links.insert(kind.to_string(), link);
        self
    }

    /// Sets how links are calibrated.
    pub fn with_calibrate(mut self, calibrate: Calibrate) -> Self {
        self.calibrate = calibrate;
        self
    }

    /// Keeps the calibration cache in `dir` instead of the user's cache
    /// directory.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }
}

fn check_pair(collective: Collective, algorithm: Algorithm) -> std::result::Result<(), String> {
    if algorithm.supports(collective) {
        return Ok(());
    }
    let valid: Vec<&str> = collective.algorithms().iter().map(|a| a.name()).collect();
    Err(format!(
        "algorithm '{algorithm}' does not implement {collective}; valid for {collective}: {}",
        valid.join(", ")
    ))
}

/// Parses `collective=algorithm[,collective=algorithm...]`.
pub fn parse_algorithms(
    spec: &str,
) -> std::result::Result<BTreeMap<Collective, Algorithm>, String> {
    let mut map = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (c, a) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not of the form collective=algorithm"))?;
        let collective: Collective = c.trim().parse()?;
        let algorithm: Algorithm = a.trim().parse()?;
        check_pair(collective, algorithm)?;
        map.insert(collective, algorithm);
    }
    Ok(map)
}

/// Parses `BRAID_LINK`: `alpha_us,gbps[,overhead_us]` for every link kind,
/// or `kind=alpha_us,gbps[,overhead_us]` items separated by `;`.
pub fn parse_links(spec: &str) -> std::result::Result<BTreeMap<String, LinkSpec>, String> {
    const FORM: &str = "give alpha_us,gbps[,overhead_us] (e.g. 20,10 for 20 us and 10 Gbit/s), \
                        or per link kind shm=0.5,80;tcp=20,10";
    let mut map = BTreeMap::new();
    let items: Vec<&str> = spec
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(format!("no link figures; {FORM}"));
    }
    for item in items {
        let (kind, figures) = match item.split_once('=') {
            Some((k, f)) => (k.trim(), f.trim()),
            None => ("*", item),
        };
        if kind != "*" && !crate::calibrate::LINK_KINDS.contains(&kind) {
            return Err(format!(
                "'{kind}' is not a link kind (valid: {}); {FORM}",
                crate::calibrate::LINK_KINDS.join(", ")
            ));
        }
        let numbers: Vec<&str> = figures.split(',').map(str::trim).collect();
        if !(2..=3).contains(&numbers.len()) {
            return Err(format!(
                "'{figures}' has {} numbers, expected 2 or 3; {FORM}",
                numbers.len()
            ));
        }
        let number = |what: &str, v: &str, positive: bool| -> std::result::Result<f64, String> {
            let x: f64 = v
                .parse()
                .map_err(|_| format!("{what} '{v}' is not a number; {FORM}"))?;
            if !x.is_finite() || x < 0.0 || (positive && x == 0.0) {
                let want = if positive { "> 0" } else { ">= 0" };
                return Err(format!("{what} '{v}' must be finite and {want}; {FORM}"));
            }
            Ok(x)
        };
        let mut link = LinkSpec::new(
            number("latency (us)", numbers[0], false)?,
            number("bandwidth (Gbit/s)", numbers[1], true)?,
        );
        if let Some(o) = numbers.get(2) {
            link.overhead = Some(number("overhead (us)", o, false)? * 1e-6);
        }
        if map.insert(kind.to_string(), link).is_some() {
            return Err(format!("link kind '{kind}' is given twice"));
        }
    }
    if map.contains_key("*") && map.len() > 1 {
        return Err(format!(
            "figures for every link kind and for named kinds at once; {FORM}"
        ));
    }
    Ok(map)
}

/// Parses `BRAID_CALIBRATE`.
pub fn parse_calibrate(v: &str) -> std::result::Result<Calibrate, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" | "on" | "1" | "yes" | "true" => Ok(Calibrate::Auto),
        "refresh" => Ok(Calibrate::Refresh),
        "off" | "0" | "no" | "false" => Ok(Calibrate::Off),
        _ => Err(
            "valid: auto (cached, else measured), refresh (measure again), off (defaults)".into(),
        ),
    }
}

fn parse_seconds(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algo_overrides_parse_and_reject_clearly() {
        let m = parse_algorithms("all_reduce=ring, broadcast=tree").unwrap();
        assert_eq!(m[&Collective::AllReduce], Algorithm::Ring);
        assert_eq!(m[&Collective::Broadcast], Algorithm::Tree);
        let e = parse_algorithms("all_reduce=rign").unwrap_err();
        assert!(
            e.contains("unknown algorithm 'rign'") && e.contains("halving_doubling"),
            "{e}"
        );
        let e = parse_algorithms("allreduce=ring").unwrap_err();
        assert!(
            e.contains("unknown collective 'allreduce'") && e.contains("all_reduce"),
            "{e}"
        );
        let e = parse_algorithms("all_to_all=ring").unwrap_err();
        assert!(
            e.contains("does not implement all_to_all") && e.contains("pairwise"),
            "{e}"
        );
        assert!(parse_algorithms("ring")
            .unwrap_err()
            .contains("collective=algorithm"));
    }

    #[test]
    fn link_figures_parse_and_reject_clearly() {
        let m = parse_links("20,10").unwrap();
        let l = m["*"];
        assert!((l.alpha - 20e-6).abs() < 1e-15 && (l.bandwidth - 1.25e9).abs() < 1e-3);
        assert_eq!(l.overhead, None);
        let m = parse_links("shm=0.5,80,0.1; tcp=20,10").unwrap();
        assert_eq!(m.len(), 2);
        assert!((m["shm"].overhead.unwrap() - 0.1e-6).abs() < 1e-15);
        for (bad, want) in [
            ("", "no link figures"),
            ("20", "has 1 numbers, expected 2 or 3"),
            ("x,10", "latency (us) 'x' is not a number"),
            ("20,0", "bandwidth (Gbit/s) '0' must be finite and > 0"),
            ("-1,10", "must be finite and >= 0"),
            ("20,10,1,2", "has 4 numbers"),
            ("tcp=1,2;tcp=3,4", "given twice"),
            ("1,2;tcp=3,4", "every link kind and for named kinds"),
            (
                "t c=1,2",
                "'t c' is not a link kind (valid: local, shm, tcp",
            ),
            ("ib=1,2", "'ib' is not a link kind"),
        ] {
            let e = parse_links(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(
                e.contains("alpha_us,gbps") || want.contains("twice"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn calibrate_modes_parse() {
        assert_eq!(parse_calibrate("off"), Ok(Calibrate::Off));
        assert_eq!(parse_calibrate("0"), Ok(Calibrate::Off));
        assert_eq!(parse_calibrate("Refresh"), Ok(Calibrate::Refresh));
        assert_eq!(parse_calibrate("auto"), Ok(Calibrate::Auto));
        assert!(parse_calibrate("sometimes")
            .unwrap_err()
            .contains("refresh"));
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("8"), Some(8));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }
}
