//! `kube-mtls-init`: its flags ([`Args`]), their validated form ([`Settings`],
//! what the rule plan is made from) and the args the webhook writes for a
//! settings value ([`Settings::render`]).

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

use crate::names::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};
use crate::ports::{self, InboundPorts, InboundPortsError, PORTS_FIX, PortSet};
use crate::{ConfigError, LogFormat, Rendered};

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BackendChoice {
    /// Use whichever the pod's network namespace already uses (nft when neither).
    #[default]
    Auto,
    Nft,
    Legacy,
}

/// Whether to install IPv6 rules too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Ipv6Choice {
    /// When the namespace has IPv6 addresses.
    #[default]
    Auto,
    On,
    Off,
}

/// Flags of `kube-mtls-init`, each also read from a `KUBE_MTLS_*` variable.
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
    #[arg(long, env = "KUBE_MTLS_INBOUND_PORT", default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,

    /// The sidecar's admin port, always reachable directly.
    #[arg(long, env = "KUBE_MTLS_ADMIN_PORT", default_value_t = ADMIN_PORT)]
    pub admin_port: u16,

    /// Destination ports whose outbound TCP is redirected to the sidecar (empty: no outbound capture).
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORTS", default_value = "")]
    pub outbound_ports: String,

    /// Destinations never redirected outbound, as CIDRs or addresses.
    #[arg(long, env = "KUBE_MTLS_SKIP_OUTBOUND_CIDRS", default_value = "")]
    pub skip_outbound_cidrs: String,

    /// The sidecar's outbound port.
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORT", default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// The sidecar's UID: its own traffic is never redirected.
    #[arg(long, env = "KUBE_MTLS_PROXY_UID", default_value_t = PROXY_UID)]
    pub proxy_uid: u32,

    /// The iptables implementation: auto (whichever the namespace uses), nft or legacy.
    #[arg(long, env = "KUBE_MTLS_IPTABLES_BACKEND", value_enum, default_value_t)]
    pub backend: BackendChoice,

    /// Whether to install IPv6 rules too: auto (when the namespace has IPv6), on or off.
    #[arg(long, env = "KUBE_MTLS_IPV6", value_enum, default_value_t)]
    pub ipv6: Ipv6Choice,

    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub cleanup: bool,

    /// Print the plan and change nothing (needs no privileges).
    #[arg(long)]
    pub dry_run: bool,

    /// Change nothing; check that the rules are in place (CNI mode's unprivileged
    /// first init container). Exits with code 97 when they are not.
    #[arg(long, conflicts_with_all = ["cleanup", "dry_run"])]
    pub validate: bool,

    /// Log format: json, text (coloured only on a terminal), or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "KUBE_MTLS_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `kube_mtls_init=debug`.
    #[arg(long, env = "KUBE_MTLS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Validated settings: everything the rule plan depends on, and how to log.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub inbound: InboundPorts,
    pub skip_inbound: PortSet,
    pub inbound_port: u16,
    pub admin_port: u16,
    /// Empty: no outbound capture.
    pub outbound: PortSet,
    /// Normalised networks (`10.0.0.1` is `10.0.0.1/32`).
    pub skip_outbound: Vec<IpNet>,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub backend: BackendChoice,
    pub ipv6: Ipv6Choice,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl Default for Settings {
    /// What the flags' defaults give.
    fn default() -> Self {
        Settings {
            inbound: InboundPorts::All,
            skip_inbound: PortSet::new(),
            inbound_port: INBOUND_PORT,
            admin_port: ADMIN_PORT,
            outbound: PortSet::new(),
            skip_outbound: Vec::new(),
            outbound_port: OUTBOUND_PORT,
            proxy_uid: PROXY_UID,
            backend: BackendChoice::Auto,
            ipv6: Ipv6Choice::Auto,
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
        }
    }
}

fn port_list(value: &str, flag: &'static str, env: &'static str) -> Result<PortSet, ConfigError> {
    ports::parse_ports(value).map_err(|e| ConfigError::new(flag, env, e.to_string(), PORTS_FIX))
}

/// A CIDR list; a bare address is its own /32 or /128.
pub fn parse_cidrs(value: &str) -> Result<Vec<IpNet>, String> {
    ports::items(value)
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{item:?} is not a CIDR"))
        })
        .collect()
}

/// What to write instead of a bad CIDR list.
pub const CIDRS_FIX: &str = "write addresses or networks such as 10.0.0.0/8,fd00::/8";

impl Settings {
    /// Checks every flag and gathers them into settings.
    pub fn from_args(a: &Args) -> Result<Self, ConfigError> {
        const INBOUND: (&str, &str) = ("inbound-ports", "KUBE_MTLS_INBOUND_PORTS");
        let inbound = a
            .inbound_ports
            .parse::<InboundPorts>()
            .map_err(|e| match e {
                InboundPortsError::Empty => ConfigError::new(
                    INBOUND.0,
                    INBOUND.1,
                    "no ports given",
                    "list the app's ports, or `*` for all",
                ),
                InboundPortsError::Port(e) => ConfigError::new(
                    INBOUND.0,
                    INBOUND.1,
                    e.to_string(),
                    format!("{PORTS_FIX}, or `*` for all"),
                ),
            })?;
        let skip_inbound = port_list(
            &a.skip_inbound_ports,
            "skip-inbound-ports",
            "KUBE_MTLS_SKIP_INBOUND_PORTS",
        )?;
        let outbound = port_list(
            &a.outbound_ports,
            "outbound-ports",
            "KUBE_MTLS_OUTBOUND_PORTS",
        )?;
        let skip_outbound = parse_cidrs(&a.skip_outbound_cidrs).map_err(|problem| {
            ConfigError::new(
                "skip-outbound-cidrs",
                "KUBE_MTLS_SKIP_OUTBOUND_CIDRS",
                problem,
                CIDRS_FIX,
            )
        })?;
        let own = [
            ("inbound-port", "KUBE_MTLS_INBOUND_PORT", a.inbound_port),
            ("admin-port", "KUBE_MTLS_ADMIN_PORT", a.admin_port),
            ("outbound-port", "KUBE_MTLS_OUTBOUND_PORT", a.outbound_port),
        ];
        for (flag, env, port) in own {
            if port == 0 {
                return Err(ConfigError::new(
                    flag,
                    env,
                    "port 0",
                    "give the sidecar's port (1-65535)",
                ));
            }
        }
        if let InboundPorts::Only(p) = &inbound {
            for (flag, _, port) in own {
                if p.contains(&port) {
                    return Err(ConfigError::new(
                        INBOUND.0,
                        INBOUND.1,
                        format!("port {port} is the sidecar's --{flag}"),
                        "remove the sidecar's own ports from the list",
                    ));
                }
            }
        }
        if a.proxy_uid == 0 {
            return Err(ConfigError::new(
                "proxy-uid",
                "KUBE_MTLS_PROXY_UID",
                "UID 0 would exempt every root process from the outbound rules",
                format!("run the sidecar under its own non-root UID ({PROXY_UID} by default)"),
            ));
        }
        Ok(Settings {
            inbound,
            skip_inbound,
            inbound_port: a.inbound_port,
            admin_port: a.admin_port,
            outbound,
            skip_outbound,
            outbound_port: a.outbound_port,
            proxy_uid: a.proxy_uid,
            backend: a.backend,
            ipv6: a.ipv6,
            log_format: a.log_format,
            log_level: a.log_level.clone(),
        })
    }

    /// The args that give these settings. The sidecar's ports and UID are
    /// always written (an image whose defaults differ still gets the pod's
    /// values); other flags only when they differ from the default.
    pub fn render(&self) -> Rendered {
        let Settings {
            inbound,
            skip_inbound,
            inbound_port,
            admin_port,
            outbound,
            skip_outbound,
            outbound_port,
            proxy_uid,
            backend,
            ipv6,
            log_format,
            log_level,
        } = self;
        let d = Settings::default();
        let mut r = Rendered::default();
        r.arg("inbound-ports", inbound);
        r.arg("inbound-port", inbound_port);
        r.arg("admin-port", admin_port);
        r.arg("outbound-port", outbound_port);
        r.arg("proxy-uid", proxy_uid);
        if !skip_inbound.is_empty() {
            r.arg("skip-inbound-ports", ports::join(skip_inbound));
        }
        if !outbound.is_empty() {
            r.arg("outbound-ports", ports::join(outbound));
        }
        if !skip_outbound.is_empty() {
            let nets: Vec<String> = skip_outbound.iter().map(IpNet::to_string).collect();
            r.arg("skip-outbound-cidrs", nets.join(","));
        }
        if *backend != d.backend {
            r.arg("backend", value_name(*backend));
        }
        if *ipv6 != d.ipv6 {
            r.arg("ipv6", value_name(*ipv6));
        }
        if *log_format != d.log_format {
            r.arg("log-format", log_format.as_str());
        }
        if *log_level != d.log_level {
            r.arg("log-level", log_level);
        }
        r
    }
}

/// The flag value of a `ValueEnum` variant.
pub(crate) fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut v = vec!["kube-mtls-init"];
        v.extend_from_slice(args);
        Settings::from_args(&Args::parse_from(v))
    }

    #[test]
    fn lists_and_star() {
        let c = parse(&["--inbound-ports", "8080, 9090"]).unwrap();
        assert_eq!(c.inbound, InboundPorts::Only([8080, 9090].into()));
        assert_eq!(parse(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn errors_name_the_flag() {
        let e = parse(&["--inbound-ports", "80,http"]).unwrap_err();
        assert_eq!(e.flag, "inbound-ports");
        assert!(e.to_string().contains("KUBE_MTLS_INBOUND_PORTS"));
        assert_eq!(
            parse(&["--inbound-ports", ""]).unwrap_err().flag,
            "inbound-ports"
        );
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
        assert_eq!(
            parse(&["--admin-port", "0"]).unwrap_err().flag,
            "admin-port"
        );
        assert_eq!(
            parse(&["--outbound-port", "0"]).unwrap_err().flag,
            "outbound-port"
        );
    }

    #[test]
    fn settings_render_and_parse_back() {
        let s = Settings {
            inbound: InboundPorts::Only([8080].into()),
            skip_inbound: [22].into(),
            outbound: [443, 5432].into(),
            skip_outbound: parse_cidrs("10.0.0.1,fd00::/8").unwrap(),
            backend: BackendChoice::Legacy,
            ipv6: Ipv6Choice::Off,
            log_format: LogFormat::Json,
            log_level: "debug".into(),
            ..Settings::default()
        };
        let r = s.render();
        let args: Args = crate::parse_container("kube-mtls-init", &r.args, &r.env).unwrap();
        assert_eq!(Settings::from_args(&args), Ok(s));
    }
}
