//! Configuration: a struct for embedding programs, filled from `BRAID_*`
//! environment variables by [`Config::from_env`].
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `BRAID_ALGO` | force algorithms: `all_reduce=ring,broadcast=tree` | chosen per call |
//! | `BRAID_TIMEOUT` | seconds any wait may take before it fails | 60 |
//! | `BRAID_CHUNK_BYTES` | pipeline chunk for large messages (`256K`, `1M`) | 256 KiB |

use std::collections::BTreeMap;
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
    /// Algorithms forced per collective (otherwise the size rule chooses).
    pub algorithms: BTreeMap<Collective, Algorithm>,
    /// Large messages are streamed in pieces of this many bytes, so that the
    /// receiver reduces one piece while the next is in flight.
    pub chunk_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(60),
            algorithms: BTreeMap::new(),
            chunk_bytes: 256 << 10,
        }
    }
}

impl Config {
    /// Reads `BRAID_ALGO`, `BRAID_TIMEOUT` and `BRAID_CHUNK_BYTES`; errors name
    /// the variable, its value and the accepted forms.
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
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("8"), Some(8));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }
}
