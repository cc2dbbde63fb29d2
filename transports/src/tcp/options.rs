//! Tuning of the TCP transport: [`TcpOptions`], [`InterfaceFilter`] and their
//! `BRAID_*` environment variables.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::settings::{parse_size_usize, parse_spin_us};

/// Default sockets per peer, chosen by the loopback benchmark
/// (`cargo test -p braid-transports -- --ignored --nocapture throughput`:
/// 64 MiB between two threads, 256 KiB offers, copied out on receipt). On the
/// 2-vCPU development VMs the medians were about 2.45 GB/s with one socket,
/// 2.3-2.5 GB/s with two and 2.2-2.3 GB/s with four: loopback is bound by
/// memory copies, not by one flow. Striping pays where one TCP flow cannot
/// fill the link (long fat networks, NICs that hash flows to queues); raise
/// it there with `BRAID_SOCKETS_PER_PEER`.
pub const DEFAULT_SOCKETS_PER_PEER: usize = 1;

/// Most sockets one peer's stream may be striped over.
pub const MAX_SOCKETS_PER_PEER: usize = 64;

/// Default `SO_SNDBUF`/`SO_RCVBUF` (forced above the kernel's cap where
/// permitted, else the cap; see `BRAID_SOCKET_BUFFER`).
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 32 << 20;

/// Default longest busy-poll of [`Transport::wait`](crate::Transport::wait).
/// The transport spins less, down to not at all, while spinning does not pay
/// (see [`TcpOptions::spin`]).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Default limit on one connection attempt (connect plus handshake), and on
/// how long an accepted connection may take to finish its handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the TCP transport is tuned. [`TcpOptions::default`] for the defaults,
/// [`TcpOptions::from_env`] to read the `BRAID_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Sockets one peer's stream is striped over (1 ..= 64; see
    /// [`DEFAULT_SOCKETS_PER_PEER`]). Every rank of a job must use the same
    /// value. `BRAID_SOCKETS_PER_PEER`.
    pub sockets_per_peer: usize,
    /// Which network interfaces to listen on. `BRAID_SOCKET_IFNAME`.
    pub interfaces: InterfaceFilter,
    /// `SO_SNDBUF` and `SO_RCVBUF` of every socket; 0 leaves both to the
    /// kernel (Linux then autotunes them within `tcp_wmem`/`tcp_rmem`; a set
    /// value is capped by `net.core.wmem_max`/`rmem_max`).
    /// `BRAID_SOCKET_BUFFER` (`4M`, `512K`, `1048576`, `0`).
    pub socket_buffer_bytes: usize,
    /// The longest [`Transport::wait`](crate::Transport::wait) busy-polls
    /// before it sleeps in the kernel: a sleeping wake-up costs tens of
    /// microseconds, a busy-polled one a few, when the peer runs on another
    /// core. Where spins keep running out (shared cores, busy peers) the
    /// transport halves its spin down to none and only probes now and then,
    /// so spinning cannot starve a peer. `BRAID_SPIN_US` (microseconds; 0
    /// never spins).
    pub spin: Duration,
    /// Yield the core between looks while spinning: for ranks that
    /// outnumber this host's CPUs, whose peers need the core to answer
    /// (measured: 4 ranks on 2 vCPUs, 8 B all-reduce 150 → 44–82 µs, 64 KiB
    /// 300 → 65 µs). `Communicator::connect` sets it from the ranks it finds
    /// on this host.
    pub yield_while_spinning: bool,
    /// Limit on one connection attempt (connect plus handshake) before the
    /// next address of the peer is tried, and on the handshake of an accepted
    /// connection before it is dropped.
    pub connect_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            sockets_per_peer: DEFAULT_SOCKETS_PER_PEER,
            interfaces: InterfaceFilter::default(),
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
            spin: DEFAULT_SPIN,
            yield_while_spinning: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl TcpOptions {
    /// The defaults overridden by `BRAID_SOCKET_IFNAME`,
    /// `BRAID_SOCKETS_PER_PEER`, `BRAID_SOCKET_BUFFER` and `BRAID_SPIN_US`.
    /// The error names the variable, its value and what was expected.
    ///
    /// Without `BRAID_SOCKET_IFNAME`, a job whose `MASTER_ADDR` is a loopback
    /// address (`127.0.0.1`, `::1`, `localhost`: every rank on this host, as
    /// `braid-run` and single-node torchrun start them) listens on loopback
    /// only ([`InterfaceFilter::loopback`]).
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`TcpOptions::from_env`] with the variables read through `lookup`
    /// (for tests and for programs that keep their settings elsewhere).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut opts = TcpOptions::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("BRAID_SOCKET_IFNAME") {
            opts.interfaces = v
                .parse()
                .map_err(|e| format!("BRAID_SOCKET_IFNAME='{v}': {e}"))?;
        } else if get("MASTER_ADDR").is_some_and(|m| is_loopback_name(&m)) {
            opts.interfaces = InterfaceFilter::loopback();
        }
        if let Some(v) = get("BRAID_SOCKETS_PER_PEER") {
            opts.sockets_per_peer = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|k| (1..=MAX_SOCKETS_PER_PEER).contains(k))
                .ok_or_else(|| {
                    format!(
                        "BRAID_SOCKETS_PER_PEER='{v}': expected a whole number from 1 to {MAX_SOCKETS_PER_PEER}"
                    )
                })?;
        }
        if let Some(v) = get("BRAID_SOCKET_BUFFER") {
            opts.socket_buffer_bytes = parse_size_usize(&v).ok_or_else(|| {
                format!(
                    "BRAID_SOCKET_BUFFER='{v}': expected a size such as 4M, 512K or 1048576 (0 leaves it to the kernel)"
                )
            })?;
        }
        if let Some(v) = get("BRAID_SPIN_US") {
            opts.spin = parse_spin_us(&v)?;
        }
        Ok(opts)
    }
}

/// Whether a host name or address is this host's loopback.
fn is_loopback_name(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterMode {
    /// Every non-loopback interface that is up; loopback when there is none.
    Default,
    /// Only interfaces matching a name.
    Include,
    /// Every interface (loopback included) except those matching a name.
    Exclude,
    /// Only loopback interfaces (by their flag, whatever their names).
    Loopback,
}

/// Which network interfaces the transport listens on, in the syntax of
/// `BRAID_SOCKET_IFNAME` (that of `NCCL_SOCKET_IFNAME`):
///
/// - `""` (the default): every interface that is up except loopback, or
///   loopback when the host has nothing else;
/// - `eth0,eth1`: only interfaces whose names start with `eth0` or `eth1`,
///   preferred in that order;
/// - `^lo,docker`: every interface that is up except those whose names start
///   with `lo` or `docker`;
/// - a `=` after the optional `^` makes the names exact (`=eth0` matches
///   `eth0` but not `eth0.100`; `^=docker0`).
///
/// ```
/// use braid_transports::tcp::InterfaceFilter;
/// let f: InterfaceFilter = "^lo,docker".parse().unwrap();
/// assert!(f.matches("eth0") && !f.matches("docker0") && !f.matches("lo"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceFilter {
    mode: FilterMode,
    exact: bool,
    names: Vec<String>,
}

impl Default for InterfaceFilter {
    fn default() -> Self {
        InterfaceFilter {
            mode: FilterMode::Default,
            exact: false,
            names: Vec::new(),
        }
    }
}

impl InterfaceFilter {
    /// The filter that takes only the interfaces named (prefixes).
    pub fn only<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        InterfaceFilter {
            mode: FilterMode::Include,
            exact: false,
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// The filter that takes only loopback interfaces (`lo`, `lo0`, ...),
    /// for jobs whose ranks all run on one host (the launcher's master
    /// address is a loopback address).
    pub fn loopback() -> Self {
        InterfaceFilter {
            mode: FilterMode::Loopback,
            exact: false,
            names: Vec::new(),
        }
    }

    /// Whether this is the default choice (no names given).
    pub fn is_default(&self) -> bool {
        self.mode == FilterMode::Default
    }

    /// Whether this is [`InterfaceFilter::loopback`].
    pub fn is_loopback(&self) -> bool {
        self.mode == FilterMode::Loopback
    }

    /// Whether the filter lets an interface of this name through. The default
    /// and loopback filters decide by the interface's flags, not its name,
    /// and match every name here.
    pub fn matches(&self, name: &str) -> bool {
        match self.mode {
            FilterMode::Default | FilterMode::Loopback => true,
            FilterMode::Include => self.rank(name).is_some(),
            FilterMode::Exclude => self.rank(name).is_none(),
        }
    }

    /// Position of the first listed name that `name` matches.
    pub(crate) fn rank(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| {
            if self.exact {
                name == n
            } else {
                name.starts_with(n.as_str())
            }
        })
    }

    /// Whether the filter prefers interfaces in the order it lists them.
    pub(crate) fn is_include(&self) -> bool {
        self.mode == FilterMode::Include
    }
}

/// Why a `BRAID_SOCKET_IFNAME` value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InterfaceFilterError(String);

impl FromStr for InterfaceFilter {
    type Err = InterfaceFilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |m: String| Err(InterfaceFilterError(m));
        let mut rest = text.trim();
        if rest.is_empty() {
            return Ok(InterfaceFilter::default());
        }
        let mode = match rest.strip_prefix('^') {
            Some(r) => {
                rest = r;
                FilterMode::Exclude
            }
            None => FilterMode::Include,
        };
        let exact = match rest.strip_prefix('=') {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        let mut names = Vec::new();
        for item in rest.split(',') {
            let name = item.trim();
            if name.is_empty() {
                if rest.trim().is_empty() {
                    return err(format!(
                        "no interface names after '{}'; write e.g. 'eth0,eth1' or '^docker,lo'",
                        &text.trim()[..text.trim().len() - rest.len()]
                    ));
                }
                // A stray comma ("eth0,") is harmless.
                continue;
            }
            if name.starts_with('^') || name.starts_with('=') {
                return err(format!(
                    "'{name}': '^' (exclude) and '=' (exact) apply to the whole list and go once at its start, as in '^=docker0,lo'"
                ));
            }
            if name.len() > 15 {
                return err(format!(
                    "'{name}' is longer than an interface name can be (15 characters)"
                ));
            }
            if let Some(c) = name
                .chars()
                .find(|c| c.is_whitespace() || *c == '/' || *c == ':' || c.is_control())
            {
                return err(format!(
                    "'{name}' is not an interface name (it contains {c:?}); list names such as eth0, separated by commas"
                ));
            }
            names.push(name.to_string());
        }
        if names.is_empty() {
            return err(format!("'{text}' lists no interface names"));
        }
        Ok(InterfaceFilter { mode, exact, names })
    }
}

impl fmt::Display for InterfaceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            FilterMode::Default => return f.write_str("(default: non-loopback interfaces)"),
            FilterMode::Loopback => return f.write_str("(loopback)"),
            FilterMode::Include => {}
            FilterMode::Exclude => f.write_str("^")?,
        }
        if self.exact {
            f.write_str("=")?;
        }
        f.write_str(&self.names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse_size;

    #[test]
    fn filters_parse_like_nccl_socket_ifname() {
        let only: InterfaceFilter = "eth0,eth1".parse().unwrap();
        assert!(only.matches("eth0") && only.matches("eth1") && only.matches("eth0.100"));
        assert!(!only.matches("eth2") && !only.matches("lo") && !only.matches("docker0"));
        assert_eq!(only.rank("eth1"), Some(1));
        assert_eq!(only.to_string(), "eth0,eth1");

        let except: InterfaceFilter = " ^lo, docker ".parse().unwrap();
        assert!(except.matches("eth0") && except.matches("ib0"));
        assert!(!except.matches("lo") && !except.matches("docker0"));
        assert_eq!(except.to_string(), "^lo,docker");

        let exact: InterfaceFilter = "=eth0".parse().unwrap();
        assert!(exact.matches("eth0") && !exact.matches("eth0.100"));
        let exact_except: InterfaceFilter = "^=docker0".parse().unwrap();
        assert!(!exact_except.matches("docker0") && exact_except.matches("docker1"));

        assert!("".parse::<InterfaceFilter>().unwrap().is_default());
        assert!(
            InterfaceFilter::loopback().is_loopback() && !InterfaceFilter::loopback().is_default()
        );
        assert!("  ".parse::<InterfaceFilter>().unwrap().is_default());
        assert_eq!(
            "eth0,".parse::<InterfaceFilter>().unwrap(),
            InterfaceFilter::only(["eth0"])
        );
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (text, says) in [
            ("^", "no interface names"),
            ("=", "no interface names"),
            ("^=", "no interface names"),
            (",", "lists no interface names"),
            ("eth0,^lo", "whole list"),
            ("eth 0", "not an interface name"),
            ("10.0.0.1/8", "not an interface name"),
            ("averyveryverylongname0", "longer than"),
        ] {
            let e = text.parse::<InterfaceFilter>().unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn sizes_accept_suffixes() {
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size(" 512k "), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("0"), Some(0));
        for bad in ["", "M", "4X", "-1", "4.5M", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn options_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            TcpOptions::from_lookup(env(&[])).unwrap(),
            TcpOptions::default()
        );
        let o = TcpOptions::from_lookup(env(&[
            ("BRAID_SOCKET_IFNAME", "^docker"),
            ("BRAID_SOCKETS_PER_PEER", "3"),
            ("BRAID_SOCKET_BUFFER", "8M"),
            ("BRAID_SPIN_US", "0"),
        ]))
        .unwrap();
        assert_eq!(o.sockets_per_peer, 3);
        assert_eq!(o.socket_buffer_bytes, 8 << 20);
        assert_eq!(o.spin, Duration::ZERO);
        assert!(!o.interfaces.matches("docker0") && o.interfaces.matches("eth0"));
        // A single-host job listens on loopback, unless told otherwise.
        for master in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.1.1"] {
            let o = TcpOptions::from_lookup(|n| (n == "MASTER_ADDR").then(|| master.to_string()))
                .unwrap();
            assert!(o.interfaces.is_loopback(), "{master}");
        }
        let o = TcpOptions::from_lookup(env(&[("MASTER_ADDR", "10.1.2.3")])).unwrap();
        assert!(o.interfaces.is_default());
        let o = TcpOptions::from_lookup(env(&[
            ("MASTER_ADDR", "127.0.0.1"),
            ("BRAID_SOCKET_IFNAME", "eth"),
        ]))
        .unwrap();
        assert_eq!(o.interfaces, InterfaceFilter::only(["eth"]));
        for (pairs, says) in [
            (
                &[("BRAID_SOCKETS_PER_PEER", "0")][..],
                "BRAID_SOCKETS_PER_PEER='0'",
            ),
            (&[("BRAID_SOCKETS_PER_PEER", "65")][..], "1 to 64"),
            (
                &[("BRAID_SOCKET_BUFFER", "lots")][..],
                "BRAID_SOCKET_BUFFER='lots'",
            ),
            (&[("BRAID_SPIN_US", "-5")][..], "BRAID_SPIN_US='-5'"),
            (
                &[("BRAID_SOCKET_IFNAME", "^")][..],
                "BRAID_SOCKET_IFNAME='^'",
            ),
        ] {
            let e = TcpOptions::from_lookup(env(pairs)).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
