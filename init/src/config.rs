//! Flags of `kube-mtls-init`, each also read from a `KUBE_MTLS_*` environment
//! variable, and their validation into a [`Config`].

use std::collections::BTreeSet;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Use whichever the pod's network namespace already uses (nft when neither).
    Auto,
    Nft,
    Legacy,
}

/// Whether to install IPv6 rules too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Choice {
    /// When the namespace has IPv6 addresses.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kube-mtls-init",
    version,
    about = "Installs the iptables rules that route a pod's traffic through its kube-mtls sidecar"
)]
pub struct Args {
    /// Ports whose inbound TCP is redirected to the sidecar, comma-separated, or `*` for all.
    #[arg(long, env = "KUBE_MTLS_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: String,

    /// Ports never redirected inbound (the admin port never is).
    #[arg(long, env = "KUBE_MTLS_SKIP_INBOUND_PORTS", default_value = "")]
    pub skip_inbound_ports: String,

    /// The sidecar's inbound port: the redirect target.
    #[arg(long, env = "KUBE_MTLS_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// The sidecar's admin port, always reachable directly.
    #[arg(long, env = "KUBE_MTLS_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,

    /// Destination ports whose outbound TCP is redirected to the sidecar (empty: no outbound capture).
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORTS", default_value = "")]
    pub outbound_ports: String,

    /// Destinations never redirected outbound, as CIDRs.
    #[arg(long, env = "KUBE_MTLS_SKIP_OUTBOUND_CIDRS", default_value = "")]
    pub skip_outbound_cidrs: String,

    /// The sidecar's outbound port.
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// The sidecar's UID: its own traffic is never redirected.
    #[arg(long, env = "KUBE_MTLS_PROXY_UID", default_value_t = 15337)]
    pub proxy_uid: u32,

    #[arg(
        long,
        env = "KUBE_MTLS_IPTABLES_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    pub backend: BackendChoice,

    #[arg(long, env = "KUBE_MTLS_IPV6", value_enum, default_value = "auto")]
    pub ipv6: Ipv6Choice,

    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub cleanup: bool,

    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Log format: json, text, or auto.
    #[arg(long, env = "KUBE_MTLS_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--{flag} ({env}): {problem}. Fix: {fix}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub problem: String,
    pub fix: &'static str,
}

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    All,
    Only(BTreeSet<u16>),
}

/// Validated settings: everything the rule plan depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub inbound: InboundPorts,
    pub skip_inbound: BTreeSet<u16>,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub outbound: BTreeSet<u16>,
    pub skip_outbound: Vec<IpNet>,
    pub outbound_port: u16,
    pub proxy_uid: u32,
}

fn ports(value: &str, flag: &'static str, env: &'static str) -> Result<BTreeSet<u16>, ConfigError> {
    let mut out = BTreeSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => {
                out.insert(p);
            }
            _ => {
                return Err(ConfigError {
                    flag,
                    env,
                    problem: format!("{item:?} is not a port"),
                    fix: "give port numbers from 1 to 65535 separated by commas (or `*` for --inbound-ports)",
                });
            }
        }
    }
    Ok(out)
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Self, ConfigError> {
        let inbound = if a.inbound_ports.trim() == "*" {
            InboundPorts::All
        } else {
            let p = ports(&a.inbound_ports, "inbound-ports", "KUBE_MTLS_INBOUND_PORTS")?;
            if p.is_empty() {
                return Err(ConfigError {
                    flag: "inbound-ports",
                    env: "KUBE_MTLS_INBOUND_PORTS",
                    problem: "no ports given".into(),
                    fix: "list the app's ports, or `*` for all",
                });
            }
            InboundPorts::Only(p)
        };
        let skip_inbound = ports(
            &a.skip_inbound_ports,
            "skip-inbound-ports",
            "KUBE_MTLS_SKIP_INBOUND_PORTS",
        )?;
        let outbound = ports(
            &a.outbound_ports,
            "outbound-ports",
            "KUBE_MTLS_OUTBOUND_PORTS",
        )?;
        let mut skip_outbound = Vec::new();
        for item in a
            .skip_outbound_cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError {
                    flag: "skip-outbound-cidrs",
                    env: "KUBE_MTLS_SKIP_OUTBOUND_CIDRS",
                    problem: format!("{item:?} is not a CIDR"),
                    fix: "write addresses or networks such as 10.0.0.0/8,fd00::/8",
                })?;
            skip_outbound.push(net.trunc());
        }
        let own = [
            ("inbound-port", "KUBE_MTLS_INBOUND_PORT", a.inbound_port),
            ("admin-port", "KUBE_MTLS_ADMIN_PORT", a.admin_port),
            ("outbound-port", "KUBE_MTLS_OUTBOUND_PORT", a.outbound_port),
        ];
        for (flag, env, port) in own {
            if port == 0 {
                return Err(ConfigError {
                    flag,
                    env,
                    problem: "port 0".into(),
                    fix: "give the sidecar's port (1-65535)",
                });
            }
        }
        if let InboundPorts::Only(p) = &inbound {
            for (flag, _, port) in own {
                if p.contains(&port) {
                    return Err(ConfigError {
                        flag: "inbound-ports",
                        env: "KUBE_MTLS_INBOUND_PORTS",
                        problem: format!("port {port} is the sidecar's --{flag}"),
                        fix: "remove the sidecar's own ports from the list",
                    });
                }
            }
        }
        if a.proxy_uid == 0 {
            return Err(ConfigError {
                flag: "proxy-uid",
                env: "KUBE_MTLS_PROXY_UID",
                problem: "UID 0 would exempt every root process from the outbound rules".into(),
                fix: "run the sidecar under its own non-root UID (15337 by default)",
            });
        }
        Ok(Config {
            inbound,
            skip_inbound,
            inbound_port: a.inbound_port,
            admin_port: a.admin_port,
            outbound,
            skip_outbound,
            outbound_port: a.outbound_port,
            proxy_uid: a.proxy_uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["kube-mtls-init"];
        v.extend_from_slice(args);
        Config::from_args(&Args::parse_from(v))
    }

    #[test]
    fn lists_and_star() {
        let c = parse(&["--inbound-ports", "8080, 9090"]).unwrap();
        assert_eq!(c.inbound, InboundPorts::Only([8080, 9090].into()));
        assert_eq!(parse(&[]).unwrap().inbound, InboundPorts::All);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = parse(&["--inbound-ports", "80,http"]).unwrap_err();
        assert_eq!(e.flag, "inbound-ports");
        assert!(e.to_string().contains("KUBE_MTLS_INBOUND_PORTS"));
        assert_eq!(
            parse(&["--inbound-ports", "15020"]).unwrap_err().flag,
            "inbound-ports"
        );
        assert_eq!(
            parse(&["--skip-outbound-cidrs", "10.0.0.0/33"])
                .unwrap_err()
                .flag,
            "skip-outbound-cidrs"
        );
        assert_eq!(parse(&["--proxy-uid", "0"]).unwrap_err().flag, "proxy-uid");
    }
}
