//! The rules as data: a pure function from [`Config`] to a [`Plan`], and the
//! rendering of a plan into `iptables-restore` input.
//!
//! Everything lives in two chains of our own in the nat table, jumped to from
//! PREROUTING (inbound) and OUTPUT (outbound). Installing declares (and so
//! flushes) those chains, deletes any jump a previous run left, and adds one
//! jump each, all in one `iptables-restore --noflush` transaction: running it
//! again gives the same rules, and a failure changes nothing.

use std::fmt::Write;

use kube_mtls_contract::names::VALIDATION_PROBE_IP;

use crate::config::{Config, InboundPorts};

pub const INBOUND_CHAIN: &str = "KUBE_MTLS_INBOUND";
pub const OUTBOUND_CHAIN: &str = "KUBE_MTLS_OUTBOUND";

/// IPv4 (iptables) or IPv6 (ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// One rule: its match and target, and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    /// e.g. `-p tcp --dport 8080 -j REDIRECT --to-ports 15006`, without the comment.
    pub spec: String,
    pub why: String,
}

/// The rules for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub family: Family,
    pub rules: Vec<Rule>,
}

fn rule(chain: &'static str, spec: String, why: String) -> Rule {
    Rule { chain, spec, why }
}

/// Turns the settings into the rules for one family.
pub fn plan(cfg: &Config, family: Family) -> Plan {
    let mut rules = Vec::new();
    let i = INBOUND_CHAIN;
    rules.push(rule(
        i,
        format!("-p tcp --dport {} -j RETURN", cfg.admin_port),
        "kube-mtls: the sidecar admin port (health, metrics, kubelet probes) is reached directly"
            .into(),
    ));
    rules.push(rule(
        i,
        format!("-p tcp --dport {} -j RETURN", cfg.inbound_port),
        "kube-mtls: connections to the sidecar inbound port need no redirect".into(),
    ));
    for p in &cfg.skip_inbound {
        rules.push(rule(
            i,
            format!("-p tcp --dport {p} -j RETURN"),
            format!("kube-mtls: port {p} is skipped by configuration and reaches the app directly"),
        ));
    }
    match &cfg.inbound {
        InboundPorts::All => rules.push(rule(
            i,
            format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_port),
            "kube-mtls: all other inbound TCP must pass the sidecar mTLS listener".into(),
        )),
        InboundPorts::Only(ports) => {
            for p in ports.iter().filter(|p| !cfg.skip_inbound.contains(p)) {
                rules.push(rule(
                    i,
                    format!(
                        "-p tcp --dport {p} -j REDIRECT --to-ports {}",
                        cfg.inbound_port
                    ),
                    format!("kube-mtls: app port {p} must pass the sidecar mTLS listener"),
                ));
            }
        }
    }

    let o = OUTBOUND_CHAIN;
    if family == Family::V4 {
        // First in the chain, so it holds whichever UID connects: the
        // unprivileged check of CNI mode (`kube-mtls-init --validate`).
        rules.push(rule(
            o,
            format!(
                "-d {VALIDATION_PROBE_IP}/32 -p tcp --dport {port} -j REDIRECT --to-ports {port}",
                port = cfg.admin_port
            ),
            "kube-mtls: the validation probe reaches the pod's admin port, proving the rules are in place".into(),
        ));
    }
    if !cfg.outbound.is_empty() {
        outbound_rules(cfg, family, &mut rules);
    }
    Plan { family, rules }
}

/// The outbound chain's rules for `--outbound-ports`.
fn outbound_rules(cfg: &Config, family: Family, rules: &mut Vec<Rule>) {
    let o = OUTBOUND_CHAIN;
    rules.push(rule(
        o,
        format!("-m owner --uid-owner {} -j RETURN", cfg.proxy_uid),
        "kube-mtls: the sidecar's own connections leave as they are".into(),
    ));
    rules.push(rule(
        o,
        format!("-d {} -j RETURN", family.loopback()),
        "kube-mtls: loopback traffic stays inside the pod".into(),
    ));
    rules.push(rule(
        o,
        "-o lo -j RETURN".into(),
        "kube-mtls: traffic to the pod's own addresses stays inside the pod".into(),
    ));
    for net in &cfg.skip_outbound {
        let matches_family = matches!(
            (family, net),
            (Family::V4, ipnet::IpNet::V4(_)) | (Family::V6, ipnet::IpNet::V6(_))
        );
        if matches_family {
            rules.push(rule(
                o,
                format!("-d {net} -j RETURN"),
                format!("kube-mtls: destination {net} is skipped by configuration"),
            ));
        }
    }
    for p in &cfg.outbound {
        rules.push(rule(
            o,
            format!(
                "-p tcp --dport {p} -j REDIRECT --to-ports {}",
                cfg.outbound_port
            ),
            format!("kube-mtls: outbound port {p} is upgraded to mTLS by the sidecar"),
        ));
    }
}

const INBOUND_JUMP: &str = "-p tcp -m comment --comment \"kube-mtls: inbound TCP passes the kube-mtls rules\" -j KUBE_MTLS_INBOUND";
const OUTBOUND_JUMP: &str = "-p tcp -m comment --comment \"kube-mtls: outbound TCP passes the kube-mtls rules\" -j KUBE_MTLS_OUTBOUND";

/// What an `iptables-save -t nat` shows of us: jumps into our chains, and which
/// of our chains exist.
#[derive(Debug, Default, PartialEq)]
pub struct Existing {
    /// Whole rule lines such as `-A PREROUTING ... -j KUBE_MTLS_INBOUND`.
    pub jumps: Vec<String>,
    pub chains: Vec<String>,
    /// Number of rules in our chains.
    pub rules: usize,
}

impl Existing {
    pub fn from_save(save: &str) -> Existing {
        let mut e = Existing::default();
        let mut in_nat = false;
        for line in save.lines() {
            let line = line.trim();
            if line.starts_with('*') {
                in_nat = line == "*nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.starts_with("KUBE_MTLS_") {
                    e.chains.push(name.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap_or("");
                if chain.starts_with("KUBE_MTLS_") {
                    e.rules += 1;
                } else if rest.contains("-j KUBE_MTLS_") {
                    e.jumps.push(line.to_owned());
                }
            }
        }
        e
    }

    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }
}

/// The `iptables-restore --noflush` input that installs `plan`, given what is there now.
pub fn render_install(plan: &Plan, existing: &Existing) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{OUTBOUND_CHAIN} - [0:0]");
    for jump in &existing.jumps {
        let _ = writeln!(out, "-D{}", &jump[2..]);
    }
    for r in &plan.rules {
        let (head, target) = r
            .spec
            .split_once(" -j ")
            .unwrap_or((r.spec.as_str(), "RETURN"));
        let _ = writeln!(
            out,
            "-A {} {head} -m comment --comment \"{}\" -j {target}",
            r.chain, r.why
        );
    }
    let _ = writeln!(out, "-A PREROUTING {INBOUND_JUMP}");
    let _ = writeln!(out, "-A OUTPUT {OUTBOUND_JUMP}");
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes everything of ours;
/// `None` when there is nothing to remove.
pub fn render_cleanup(existing: &Existing) -> Option<String> {
    if existing.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for chain in &existing.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for jump in &existing.jumps {
        let _ = writeln!(out, "-D{}", &jump[2..]);
    }
    for chain in &existing.chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["kube-mtls-init"];
        v.extend_from_slice(args);
        Config::from_args(&Args::parse_from(v)).unwrap()
    }

    fn specs(p: &Plan) -> Vec<String> {
        p.rules
            .iter()
            .map(|r| format!("{} {}", r.chain, r.spec))
            .collect()
    }

    fn inbound(p: &Plan) -> Vec<String> {
        let mut s = specs(p);
        s.retain(|r| r.starts_with(INBOUND_CHAIN));
        s
    }

    #[test]
    fn listed_ports_are_redirected_and_admin_never() {
        let p = plan(
            &cfg(&[
                "--inbound-ports",
                "8080,9090",
                "--skip-inbound-ports",
                "9090",
            ]),
            Family::V4,
        );
        assert_eq!(
            inbound(&p),
            vec![
                "KUBE_MTLS_INBOUND -p tcp --dport 15020 -j RETURN",
                "KUBE_MTLS_INBOUND -p tcp --dport 15006 -j RETURN",
                "KUBE_MTLS_INBOUND -p tcp --dport 9090 -j RETURN",
                "KUBE_MTLS_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006",
            ]
        );
        assert!(p.rules.iter().all(|r| r.why.starts_with("kube-mtls: ")));
    }

    #[test]
    fn all_ports_but_skipped_ones() {
        let p = plan(&cfg(&["--skip-inbound-ports", "22"]), Family::V4);
        let s = inbound(&p);
        assert_eq!(
            s.last().unwrap(),
            "KUBE_MTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006"
        );
        let admin = s
            .iter()
            .position(|r| r.contains("--dport 15020 -j RETURN"))
            .unwrap();
        let skip = s
            .iter()
            .position(|r| r.contains("--dport 22 -j RETURN"))
            .unwrap();
        assert!(
            admin < s.len() - 1 && skip < s.len() - 1,
            "RETURNs come before the catch-all"
        );
    }

    #[test]
    fn the_validation_probe_comes_first_outbound_for_every_uid_and_ipv4_only() {
        let probe =
            "KUBE_MTLS_OUTBOUND -d 192.0.2.1/32 -p tcp --dport 15020 -j REDIRECT --to-ports 15020";
        for args in [&[][..], &["--outbound-ports", "443"][..]] {
            let c = cfg(args);
            let v4 = specs(&plan(&c, Family::V4));
            let first_out = v4.iter().find(|r| r.starts_with(OUTBOUND_CHAIN));
            assert_eq!(first_out.map(String::as_str), Some(probe), "{v4:?}");
            let v6 = specs(&plan(&c, Family::V6));
            assert!(!v6.iter().any(|r| r.contains("192.0.2.1")), "{v6:?}");
        }
        // With no outbound ports the probe is the only outbound rule, and
        // OUTPUT still jumps to the chain.
        let p = plan(&cfg(&[]), Family::V4);
        let out: Vec<_> = specs(&p)
            .into_iter()
            .filter(|r| r.starts_with(OUTBOUND_CHAIN))
            .collect();
        assert_eq!(out, [probe]);
        assert!(
            render_install(&p, &Existing::default())
                .contains(&format!("-A OUTPUT {OUTBOUND_JUMP}"))
        );
    }

    #[test]
    fn outbound_excludes_proxy_loopback_and_skipped_cidrs_per_family() {
        let c = cfg(&[
            "--outbound-ports",
            "8080",
            "--skip-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
        ]);
        let v4 = specs(&plan(&c, Family::V4));
        let v6 = specs(&plan(&c, Family::V6));
        let redirect = "KUBE_MTLS_OUTBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15001";
        for (s, lo, skip, other) in [
            (&v4, "127.0.0.0/8", "10.96.0.0/12", "fd00::/8"),
            (&v6, "::1/128", "fd00::/8", "10.96.0.0/12"),
        ] {
            let pos = |needle: &str| s.iter().position(|r| r.contains(needle));
            let r = pos(redirect).unwrap();
            assert!(pos("--uid-owner 15337 -j RETURN").unwrap() < r);
            assert!(pos(&format!("-d {lo} -j RETURN")).unwrap() < r);
            assert!(pos("-o lo -j RETURN").unwrap() < r);
            assert!(pos(&format!("-d {skip} -j RETURN")).unwrap() < r);
            assert!(pos(other).is_none());
        }
    }

    #[test]
    fn install_replaces_earlier_jumps_and_cleanup_removes_all() {
        let p = plan(&cfg(&["--inbound-ports", "8080"]), Family::V4);
        let save = format!(
            "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:{INBOUND_CHAIN} - [0:0]\n-A PREROUTING {INBOUND_JUMP}\n-A {INBOUND_CHAIN} -p tcp -j RETURN\nCOMMIT\n"
        );
        let existing = Existing::from_save(&save);
        assert_eq!(existing.jumps.len(), 1);
        assert_eq!(existing.rules, 1);
        let input = render_install(&p, &existing);
        assert!(
            input.contains(&format!("-D PREROUTING {INBOUND_JUMP}\n")),
            "{input}"
        );
        assert_eq!(input.matches("-A PREROUTING").count(), 1);
        assert!(input.contains(
            "-A KUBE_MTLS_INBOUND -p tcp --dport 8080 -m comment --comment \"kube-mtls: app port 8080 must pass the sidecar mTLS listener\" -j REDIRECT --to-ports 15006"
        ), "{input}");
        let cleanup = render_cleanup(&existing).unwrap();
        assert!(cleanup.contains("-X KUBE_MTLS_INBOUND") && cleanup.contains("-D PREROUTING"));
        assert_eq!(render_cleanup(&Existing::from_save("*nat\nCOMMIT\n")), None);
    }
}
