//! The host's network interfaces and the addresses the transport listens on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::InterfaceFilter;

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InterfaceAddr {
    pub name: String,
    pub ip: IpAddr,
    pub loopback: bool,
}

/// The addresses of every interface that is up, in the order the system
/// lists them. IPv6 link-local addresses are left out: they need a scope to
/// be reached, which the addresses peers exchange do not carry.
pub(crate) fn up_addresses() -> io::Result<Vec<InterfaceAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into `list`;
    // on success the list is freed below with freeifaddrs, once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a non-null node of the list getifaddrs returned,
        // valid until freeifaddrs below.
        let node = unsafe { &*cursor };
        cursor = node.ifa_next;
        let flags = node.ifa_flags as libc::c_int;
        if flags & libc::IFF_UP == 0 || node.ifa_addr.is_null() || node.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose family
        // field says which larger structure it is; each is read unaligned
        // from memory the list owns.
        let ip = unsafe {
            match i32::from((*node.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = std::ptr::read_unaligned(node.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sa = std::ptr::read_unaligned(node.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if is_v6_link_local(&ip) {
            continue;
        }
        out.push(InterfaceAddr {
            name,
            ip,
            loopback: flags & libc::IFF_LOOPBACK != 0 || ip.is_loopback(),
        });
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once; no
    // reference into it outlives this point (names were copied).
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

fn is_v6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Name prefixes of container and VM bridges: their addresses are often the
/// same on every host, so peers elsewhere try them last.
const BRIDGES: [&str; 6] = ["docker", "br-", "veth", "virbr", "cni", "flannel"];

/// The addresses `filter` picks out of `all`, most preferred first:
/// interfaces in the order the filter names them (or the system lists them),
/// non-loopback before loopback, bridges after the rest, IPv4 before IPv6
/// within an interface.
pub(crate) fn select(all: &[InterfaceAddr], filter: &InterfaceFilter) -> Vec<InterfaceAddr> {
    let mut chosen: Vec<InterfaceAddr> = if filter.is_loopback() {
        all.iter().filter(|a| a.loopback).cloned().collect()
    } else if filter.is_default() {
        let outside: Vec<InterfaceAddr> = all.iter().filter(|a| !a.loopback).cloned().collect();
        if outside.is_empty() {
            all.iter().filter(|a| a.loopback).cloned().collect()
        } else {
            outside
        }
    } else {
        all.iter()
            .filter(|a| filter.matches(&a.name))
            .cloned()
            .collect()
    };
    // Stable sort: keeps the system's order within equal keys.
    let name_order: Vec<String> = {
        let mut names: Vec<String> = Vec::new();
        for a in &chosen {
            if !names.contains(&a.name) {
                names.push(a.name.clone());
            }
        }
        names
    };
    chosen.sort_by_key(|a| {
        let listed = if filter.is_include() {
            filter.rank(&a.name).unwrap_or(usize::MAX)
        } else {
            0
        };
        let bridge = BRIDGES.iter().any(|b| a.name.starts_with(b));
        let system = name_order.iter().position(|n| *n == a.name).unwrap_or(0);
        (a.loopback, listed, bridge, system, a.ip.is_ipv6())
    });
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str, ip: &str) -> InterfaceAddr {
        let ip: IpAddr = ip.parse().unwrap();
        InterfaceAddr {
            name: name.into(),
            ip,
            loopback: ip.is_loopback(),
        }
    }

    #[test]
    fn selection_prefers_outside_interfaces_and_the_listed_order() {
        let all = vec![
            addr("lo", "127.0.0.1"),
            addr("lo", "::1"),
            addr("eth0", "fd00::2"),
            addr("eth0", "192.0.2.2"),
            addr("docker0", "172.17.0.1"),
            addr("ib0", "10.0.0.2"),
        ];
        let pick = |f: &str| -> Vec<String> {
            select(&all, &f.parse().unwrap())
                .into_iter()
                .map(|a| a.ip.to_string())
                .collect()
        };
        assert_eq!(pick(""), ["192.0.2.2", "fd00::2", "10.0.0.2", "172.17.0.1"]);
        assert_eq!(pick("ib,eth"), ["10.0.0.2", "192.0.2.2", "fd00::2"]);
        assert_eq!(
            pick("^docker"),
            ["192.0.2.2", "fd00::2", "10.0.0.2", "127.0.0.1", "::1"]
        );
        assert_eq!(pick("lo"), ["127.0.0.1", "::1"]);
        let loopback: Vec<String> = select(&all, &InterfaceFilter::loopback())
            .into_iter()
            .map(|a| a.ip.to_string())
            .collect();
        assert_eq!(loopback, ["127.0.0.1", "::1"]);
        assert!(pick("wlan").is_empty());
        // Nothing but loopback: the default falls back to it.
        let only_lo = &all[..2];
        let got: Vec<IpAddr> = select(only_lo, &InterfaceFilter::default())
            .into_iter()
            .map(|a| a.ip)
            .collect();
        assert_eq!(got, [all[0].ip, all[1].ip]);
    }

    #[test]
    fn this_host_lists_loopback() {
        let all = up_addresses().unwrap();
        assert!(
            all.iter()
                .any(|a| a.loopback && a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{all:?}"
        );
        assert!(all.iter().all(|a| !is_v6_link_local(&a.ip)));
    }
}
