//! Finding a running pod's network namespace from the node.
//!
//! The agent runs with the host's PID namespace, so `/proc` lists every
//! process on the node, each with the routing view of its own network
//! namespace. The pod's namespace is the one whose local addresses include
//! the pod's IP: for IPv4, a `/32 host LOCAL` leaf of that address in
//! `/proc/<pid>/net/fib_trie`; for IPv6, a line of `/proc/<pid>/net/if_inet6`.
//! Processes that share a namespace are looked at once.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Whether a `fib_trie` text lists `ip` as a local address of the namespace.
pub fn fib_trie_has_local(text: &str, ip: Ipv4Addr) -> bool {
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with("+--") || line.ends_with(':') {
            leaf = None;
        } else if line.starts_with('/') && leaf == Some(ip) {
            let mut words = line.split_whitespace();
            let prefix = words.next();
            if prefix == Some("/32") && words.any(|w| w == "LOCAL") {
                return true;
            }
        }
    }
    false
}

/// Whether an `if_inet6` text lists `ip` on one of the namespace's interfaces.
pub fn if_inet6_has(text: &str, ip: Ipv6Addr) -> bool {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .any(|bits| Ipv6Addr::from(bits) == ip)
}

/// Whether the namespace of `pid` has `ip` as a local address.
fn has_address(proc_root: &Path, pid: &str, ip: IpAddr) -> bool {
    let net = proc_root.join(pid).join("net");
    match ip {
        IpAddr::V4(v4) => std::fs::read_to_string(net.join("fib_trie"))
            .is_ok_and(|text| fib_trie_has_local(&text, v4)),
        IpAddr::V6(v6) => {
            std::fs::read_to_string(net.join("if_inet6")).is_ok_and(|text| if_inet6_has(&text, v6))
        }
    }
}

/// The network namespace (`<proc_root>/<pid>/ns/net`) holding `ip`, looking
/// at every process under `proc_root` (`/proc`); `None` when no process's
/// namespace has it.
pub fn find(proc_root: &Path, ip: IpAddr) -> std::io::Result<Option<PathBuf>> {
    let mut seen = HashSet::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let ns = entry.path().join("ns").join("net");
        // Processes that exit while being looked at are skipped.
        let Ok(id) = std::fs::read_link(&ns) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        if has_address(proc_root, pid, ip) {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/28 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.7
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
           |-- 10.244.1.7
              /32 host LOCAL
";

    /// The node's namespace routes to the pod's IP but does not own it.
    const NODE_FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.244.1.0/24 2 0 2
        |-- 10.244.1.0
           /24 link UNICAST
        |-- 10.244.1.1
           /32 host LOCAL
        |-- 10.244.1.7
           /32 link UNICAST
";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_pod_ip_is_local_in_the_pods_namespace() {
        assert!(fib_trie_has_local(POD_FIB_TRIE, ip("10.244.1.7")));
        assert!(fib_trie_has_local(POD_FIB_TRIE, ip("127.0.0.1")));
    }

    #[test]
    fn routes_and_networks_are_not_local_addresses() {
        assert!(!fib_trie_has_local(NODE_FIB_TRIE, ip("10.244.1.7")));
        assert!(fib_trie_has_local(NODE_FIB_TRIE, ip("10.244.1.1")));
        // A network's own address, a broadcast, and an address not present.
        assert!(!fib_trie_has_local(POD_FIB_TRIE, ip("10.244.1.0")));
        assert!(!fib_trie_has_local(POD_FIB_TRIE, ip("10.244.1.255")));
        assert!(!fib_trie_has_local(POD_FIB_TRIE, ip("10.244.1.8")));
        // 127.0.0.0/8 is a local route, not the address 127.0.0.0.
        assert!(!fib_trie_has_local(POD_FIB_TRIE, ip("127.0.0.0")));
    }

    #[test]
    fn ipv6_addresses_from_if_inet6() {
        let text = "\
fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
";
        assert!(if_inet6_has(text, "fd00::2".parse().expect("v6")));
        assert!(if_inet6_has(text, "::1".parse().expect("v6")));
        assert!(!if_inet6_has(text, "fd00::3".parse().expect("v6")));
    }

    #[test]
    fn find_walks_a_proc_tree() {
        let root = tempfile::tempdir().expect("temp dir");
        for (pid, ns, trie) in [
            ("1", "net:[1]", NODE_FIB_TRIE),
            ("42", "net:[2]", POD_FIB_TRIE),
        ] {
            let dir = root.path().join(pid);
            std::fs::create_dir_all(dir.join("ns")).expect("ns dir");
            std::fs::create_dir_all(dir.join("net")).expect("net dir");
            std::os::unix::fs::symlink(ns, dir.join("ns/net")).expect("link");
            std::fs::write(dir.join("net/fib_trie"), trie).expect("trie");
        }
        std::fs::create_dir_all(root.path().join("self")).expect("not a pid");
        let found = find(root.path(), IpAddr::V4(ip("10.244.1.7"))).expect("walk");
        assert_eq!(found, Some(root.path().join("42/ns/net")));
        let none = find(root.path(), IpAddr::V4(ip("10.244.9.9"))).expect("walk");
        assert_eq!(none, None);
    }
}
