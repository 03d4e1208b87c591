//! `kube-mtls-sidecar`: its flags ([`Args`]), their validated form
//! ([`Settings`]) and the args and environment the webhook writes for a
//! settings value ([`Settings::render`]).
//!
//! Everything that can be wrong with the flags is found here, before a single
//! socket is opened, except what needs the filesystem (the certificate files,
//! checked by the sidecar itself).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::duration::{
    parse_duration, parse_optional_duration, render_duration, render_optional_duration,
};
use crate::names::{
    ADMIN_PORT, CERT_DIR, DEFAULT_TRUST_DOMAIN, INBOUND_PORT, OUTBOUND_PORT, SIDECAR_BINARY,
};
use crate::pattern::{AllowedClients, PATTERN_FIX};
use crate::ports::{self, PORTS_FIX, PortSet};
use crate::probe::{self, AppProbes};
use crate::{ConfigError, LogFormat, Rendered};

/// Flags of `kube-mtls-sidecar`. The webhook writes these into every injected pod.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kube-mtls-sidecar",
    version,
    about = "mTLS proxy in front of a pod's app"
)]
pub struct Args {
    /// Port for inbound connections redirected by iptables; the port the caller
    /// dialled is recovered with SO_ORIGINAL_DST.
    #[arg(long, env = "KUBE_MTLS_INBOUND_PORT", default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,

    /// Outbound listener on 127.0.0.1 (0 disables it).
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORT", default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// Plain-HTTP admin port: /ready, /live, /metrics, /app-health/<container>/<probe>.
    #[arg(long, env = "KUBE_MTLS_ADMIN_PORT", default_value_t = ADMIN_PORT)]
    pub admin_port: u16,

    /// Directory holding tls.crt, tls.key and ca.crt, as cert-manager writes a Secret.
    #[arg(long, env = "KUBE_MTLS_CERT_DIR", default_value = CERT_DIR)]
    pub cert_dir: PathBuf,

    /// PEM file of every CA certificate peers' certificates may chain to
    /// (inbound clients and outbound servers), reloaded when it changes.
    /// Empty: trust `<cert-dir>/ca.crt`, the CA that issued this pod's own certificate.
    #[arg(long, env = "KUBE_MTLS_TRUST_BUNDLE", default_value = "")]
    pub trust_bundle: String,

    /// SPIFFE trust domain of this pod.
    #[arg(long, env = "KUBE_MTLS_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Allowed callers, comma-separated: spiffe:// patterns (`*` matches one path
    /// segment) or DNS names (`*.example.com` matches one label). Empty: any
    /// SPIFFE identity in the trust domain.
    #[arg(long, env = "KUBE_MTLS_ALLOWED_CLIENTS", default_value = "")]
    pub allowed_clients: String,

    /// App ports proxied as raw TCP (all others are HTTP).
    #[arg(long, env = "KUBE_MTLS_TCP_PORTS", default_value = "")]
    pub tcp_ports: String,

    /// App ports whose app speaks HTTP/2 without TLS (gRPC).
    #[arg(long, env = "KUBE_MTLS_H2_PORTS", default_value = "")]
    pub h2_ports: String,

    /// Direct listeners for setups without redirection:
    /// `[<address>:]<listen port>:<app port>,...`; without an address, every
    /// interface (e.g. `127.0.0.1:8443:8080`, `[::1]:8443:8080`, `8443:8080`).
    #[arg(long, env = "KUBE_MTLS_LISTEN", default_value = "")]
    pub listen: String,

    /// Probe targets reachable at /app-health/<container>/<probe>, as JSON keyed by
    /// `<container>/<liveness|readiness|startup>`, each with one of httpGet, tcpSocket, grpc.
    #[arg(long, env = "KUBE_MTLS_APP_PROBES", default_value = "{}")]
    pub app_probes: String,

    /// Destination ports the outbound listener proxies as raw TCP; others are HTTP.
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_TCP_PORTS", default_value = "")]
    pub outbound_tcp_ports: String,

    /// Cap on concurrently open client connections that completed the mTLS
    /// handshake; further ones are closed at once.
    #[arg(long, env = "KUBE_MTLS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Cap on mTLS handshakes in progress, kept apart from --max-connections so
    /// that peers who never finish a handshake cannot take authenticated
    /// callers' places; further connections are closed at once.
    #[arg(long, env = "KUBE_MTLS_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: usize,

    /// Cap on mTLS handshakes in progress from one source IP address.
    #[arg(
        long,
        env = "KUBE_MTLS_MAX_HANDSHAKES_PER_SOURCE",
        default_value_t = 64
    )]
    pub max_handshakes_per_source: usize,

    /// Time allowed for a TLS handshake (durations take ms, s, m, h).
    #[arg(long, env = "KUBE_MTLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed to read a request's headers.
    #[arg(long, env = "KUBE_MTLS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in progress and no traffic for this long is closed.
    #[arg(long, env = "KUBE_MTLS_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long the app may take to send a response's headers before the
    /// caller gets 504; `off` (the default) waits as long as the caller does.
    #[arg(long, env = "KUBE_MTLS_UPSTREAM_TIMEOUT", default_value = "off", value_parser = parse_optional_duration)]
    pub upstream_timeout: Duration,

    /// After SIGTERM, in-flight work gets this long before the process exits.
    #[arg(long, env = "KUBE_MTLS_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest accepted request header block, in bytes; larger requests get 431.
    #[arg(long, env = "KUBE_MTLS_MAX_HEADER_SIZE", default_value_t = 16 * 1024)]
    pub max_header_size: usize,

    /// Worker threads of the async runtime; 1 runs everything on one thread
    /// (current-thread runtime), the lightest setting for small pods.
    #[arg(long, env = "KUBE_MTLS_WORKERS", default_value_t = 2)]
    pub workers: usize,

    /// Log format: json, text (coloured only on a terminal), or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "KUBE_MTLS_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// Wait until the sidecar on --admin-port is ready, then exit (a postStart
    /// hook that holds the app's container until the proxy is up).
    #[arg(long)]
    pub wait_ready: bool,

    /// Log filter, e.g. `info` or `kube_mtls_sidecar=debug`.
    #[arg(long, env = "KUBE_MTLS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `strict`: every inbound connection must be mTLS. `permissive`: on HTTP
    /// ports a connection that does not open with a TLS ClientHello is passed
    /// to the app as plaintext, with every identity header removed; TLS still
    /// needs a valid client certificate, and ports in --tcp-ports stay mTLS-only.
    #[arg(long, env = "KUBE_MTLS_MODE", value_enum, default_value_t)]
    pub mode: MtlsMode,

    /// `enforce`: callers not on --allowed-clients are refused. `audit`: they
    /// are let through, logged and counted as would_deny; a caller without a
    /// valid client certificate is refused either way.
    #[arg(long, env = "KUBE_MTLS_POLICY", value_enum, default_value_t)]
    pub policy: Policy,

    /// In permissive mode, how long to wait for a connection's first byte
    /// before taking it for plaintext. TLS clients speak first, so this only
    /// delays clients that wait for the server; ports in --tcp-ports are never
    /// delayed.
    #[arg(long, env = "KUBE_MTLS_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
}

/// Whether inbound connections must be mTLS (`--mode`, the
/// `kube-mtls.io/mode` annotation, an MtlsProfile's `mode`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Every inbound connection must be mTLS.
    #[default]
    Strict,
    /// Plaintext callers are let in on HTTP ports, without any identity.
    Permissive,
}

impl MtlsMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

/// What happens to an authenticated caller not on the allow-list
/// (`--policy`, the `kube-mtls.io/policy` annotation, an MtlsProfile's `policy`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Refused.
    #[default]
    Enforce,
    /// Let through, logged and counted as would_deny.
    Audit,
}

impl Policy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Enforce => "enforce",
            Policy::Audit => "audit",
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub inbound_port: u16,
    /// 0: no outbound listener.
    pub outbound_port: u16,
    pub admin_port: u16,
    pub cert_dir: PathBuf,
    /// `None`: trust `<cert_dir>/ca.crt`.
    pub trust_bundle: Option<PathBuf>,
    pub trust_domain: String,
    /// Empty: any SPIFFE ID in `trust_domain`.
    pub allowed_clients: AllowedClients,
    pub tcp_ports: PortSet,
    pub h2_ports: PortSet,
    /// Direct listeners.
    pub listen: Vec<Listen>,
    /// Keyed by `<container>/<probe>`.
    pub app_probes: AppProbes,
    pub outbound_tcp_ports: PortSet,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// `None`: no limit on the wait for the app's response headers.
    pub upstream_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub max_header_size: usize,
    pub workers: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub mode: MtlsMode,
    pub policy: Policy,
    /// How long permissive mode waits for a connection's first byte.
    pub detect_timeout: Duration,
}

impl Default for Settings {
    /// What the flags' defaults give.
    fn default() -> Self {
        Settings {
            inbound_port: INBOUND_PORT,
            outbound_port: OUTBOUND_PORT,
            admin_port: ADMIN_PORT,
            cert_dir: PathBuf::from(CERT_DIR),
            trust_bundle: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            allowed_clients: AllowedClients::default(),
            tcp_ports: PortSet::new(),
            h2_ports: PortSet::new(),
            listen: Vec::new(),
            app_probes: AppProbes::new(),
            outbound_tcp_ports: PortSet::new(),
            max_connections: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            upstream_timeout: None,
            drain_timeout: Duration::from_secs(20),
            max_header_size: 16 * 1024,
            workers: 2,
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            mode: MtlsMode::Strict,
            policy: Policy::Enforce,
            detect_timeout: Duration::from_secs(1),
        }
    }
}

fn port_list(value: &str, flag: &'static str, env: &'static str) -> Result<PortSet, ConfigError> {
    ports::parse_ports(value).map_err(|e| ConfigError::new(flag, env, e.to_string(), PORTS_FIX))
}

/// A direct listener (`--listen`): where it binds and which app port it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// `None`: every interface (0.0.0.0, and [::] where the host has IPv6).
    pub address: Option<std::net::IpAddr>,
    pub port: u16,
    pub app_port: u16,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.address {
            Some(std::net::IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            Some(std::net::IpAddr::V4(a)) => write!(f, "{a}:")?,
            None => {}
        }
        write!(f, "{}:{}", self.port, self.app_port)
    }
}

/// Splits `[<address>:]<listen port>:<app port>` into its address (if any)
/// and the two ports' text.
fn split_listen(item: &str) -> Option<(Option<&str>, &str, &str)> {
    if let Some(rest) = item.strip_prefix('[') {
        let (address, ports) = rest.split_once("]:")?;
        let (l, a) = ports.split_once(':')?;
        return Some((Some(address), l, a));
    }
    let mut parts = item.rsplitn(3, ':');
    let (a, l) = (parts.next()?, parts.next()?);
    Some((parts.next(), l, a))
}

/// Parses `--listen`: `[<address>:]<listen port>:<app port>,...`.
pub fn parse_listen(value: &str) -> Result<Vec<Listen>, ConfigError> {
    let bad = |problem: String| {
        ConfigError::new(
            "listen",
            "KUBE_MTLS_LISTEN",
            problem,
            "write [<address>:]<listen port>:<app port>, e.g. 127.0.0.1:8443:8080 or 8443:8080",
        )
    };
    ports::items(value)
        .map(|item| {
            let (address, l, a) =
                split_listen(item).ok_or_else(|| bad(format!("{item:?} has no ':'")))?;
            let address = address
                .map(|ip| {
                    ip.parse()
                        .map_err(|_| bad(format!("{ip:?} is not an IP address")))
                })
                .transpose()?;
            Ok(Listen {
                address,
                port: ports::parse_port(l).map_err(|e| bad(e.to_string()))?,
                app_port: ports::parse_port(a).map_err(|e| bad(e.to_string()))?,
            })
        })
        .collect()
}

/// The trust domain's grammar: a name, without `/` or `:`.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.contains('/') || td.contains(':') {
        return Err(format!("{td:?} is not a trust domain"));
    }
    Ok(())
}

impl Settings {
    /// Checks every flag and gathers them into settings.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let tcp_ports = port_list(&args.tcp_ports, "tcp-ports", "KUBE_MTLS_TCP_PORTS")?;
        let h2_ports = port_list(&args.h2_ports, "h2-ports", "KUBE_MTLS_H2_PORTS")?;
        let outbound_tcp_ports = port_list(
            &args.outbound_tcp_ports,
            "outbound-tcp-ports",
            "KUBE_MTLS_OUTBOUND_TCP_PORTS",
        )?;
        if let Some(p) = tcp_ports.intersection(&h2_ports).next() {
            return Err(ConfigError::new(
                "h2-ports",
                "KUBE_MTLS_H2_PORTS",
                format!("port {p} is also in --tcp-ports"),
                "a port is either TCP or HTTP/2; remove it from one list",
            ));
        }
        let listen = parse_listen(&args.listen)?;
        check_own_ports(args, &listen)?;
        check_trust_domain(&args.trust_domain).map_err(|problem| {
            ConfigError::new(
                "trust-domain",
                "KUBE_MTLS_TRUST_DOMAIN",
                problem,
                "give a name such as cluster.local",
            )
        })?;
        let allowed_clients = args
            .allowed_clients
            .parse::<AllowedClients>()
            .map_err(|e| {
                ConfigError::new(
                    "allowed-clients",
                    "KUBE_MTLS_ALLOWED_CLIENTS",
                    e.to_string(),
                    PATTERN_FIX,
                )
            })?;
        let app_probes = probe::parse_app_probes(&args.app_probes)?;
        let trust_bundle = check_trust_bundle(&args.trust_bundle)?;
        check_limits(args)?;
        Ok(Settings {
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            admin_port: args.admin_port,
            cert_dir: args.cert_dir.clone(),
            trust_bundle,
            trust_domain: args.trust_domain.clone(),
            allowed_clients,
            tcp_ports,
            h2_ports,
            listen,
            app_probes,
            outbound_tcp_ports,
            max_connections: args.max_connections,
            max_handshakes: args.max_handshakes,
            max_handshakes_per_source: args.max_handshakes_per_source,
            handshake_timeout: args.handshake_timeout,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            upstream_timeout: (!args.upstream_timeout.is_zero()).then_some(args.upstream_timeout),
            drain_timeout: args.drain_timeout,
            max_header_size: args.max_header_size,
            workers: args.workers,
            log_format: args.log_format,
            log_level: args.log_level.clone(),
            mode: args.mode,
            policy: args.policy,
            detect_timeout: args.detect_timeout,
        })
    }

    /// True for the sidecar's own ports, which are never forwarded to the app.
    pub fn is_own_port(&self, port: u16) -> bool {
        port == self.inbound_port
            || port == self.admin_port
            || (self.outbound_port != 0 && port == self.outbound_port)
    }
}

/// `--trust-bundle`: empty for `<cert-dir>/ca.crt`, else the path of a file
/// (whether it exists is for the sidecar to check, when it reads it).
fn check_trust_bundle(path: &str) -> Result<Option<PathBuf>, ConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let bad = |problem: String| {
        ConfigError::new(
            "trust-bundle",
            "KUBE_MTLS_TRUST_BUNDLE",
            problem,
            "give the path of the PEM file of trusted CAs, e.g. /var/run/kube-mtls/trust/ca-bundle.crt, or leave it empty to trust <cert-dir>/ca.crt",
        )
    };
    if path.trim().is_empty() {
        return Err(bad(format!("{path:?} is only blanks")));
    }
    if path.ends_with('/') {
        return Err(bad(format!("{path} names a directory")));
    }
    Ok(Some(PathBuf::from(path)))
}

/// The sidecar's own ports must be set, distinct from each other and from
/// the direct listeners, or two listeners would fight over one socket.
fn check_own_ports(args: &Args, listen: &[Listen]) -> Result<(), ConfigError> {
    let mut own: Vec<(&'static str, &'static str, u16)> = vec![
        ("inbound-port", "KUBE_MTLS_INBOUND_PORT", args.inbound_port),
        ("admin-port", "KUBE_MTLS_ADMIN_PORT", args.admin_port),
    ];
    if args.outbound_port != 0 {
        own.push((
            "outbound-port",
            "KUBE_MTLS_OUTBOUND_PORT",
            args.outbound_port,
        ));
    }
    for (flag, env, port) in &own {
        if *port == 0 {
            return Err(ConfigError::new(
                flag,
                env,
                "port 0",
                "give a port between 1 and 65535",
            ));
        }
    }
    for (i, (a, _, pa)) in own.iter().enumerate() {
        for (b, env, pb) in own.iter().skip(i + 1) {
            if pa == pb {
                return Err(ConfigError::new(
                    b,
                    env,
                    format!("--{a} and --{b} are both {pa}"),
                    "give each of the sidecar's listeners its own port",
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for &Listen {
        port: listen_port,
        app_port,
        ..
    } in listen
    {
        for (name, _, port) in &own {
            if listen_port == *port || app_port == *port {
                return Err(ConfigError::new(
                    "listen",
                    "KUBE_MTLS_LISTEN",
                    format!("{listen_port}:{app_port} collides with --{name} {port}"),
                    "choose listen and app ports other than the sidecar's own ports",
                ));
            }
        }
        if !seen.insert(listen_port) {
            return Err(ConfigError::new(
                "listen",
                "KUBE_MTLS_LISTEN",
                format!("listen port {listen_port} appears twice"),
                "list each listen port once",
            ));
        }
    }
    Ok(())
}

fn check_limits(args: &Args) -> Result<(), ConfigError> {
    let positive = [
        (
            "max-connections",
            "KUBE_MTLS_MAX_CONNECTIONS",
            args.max_connections,
            "0 would refuse every connection",
        ),
        (
            "max-handshakes",
            "KUBE_MTLS_MAX_HANDSHAKES",
            args.max_handshakes,
            "0 would refuse every connection",
        ),
        (
            "max-handshakes-per-source",
            "KUBE_MTLS_MAX_HANDSHAKES_PER_SOURCE",
            args.max_handshakes_per_source,
            "0 would refuse every connection",
        ),
        (
            "workers",
            "KUBE_MTLS_WORKERS",
            args.workers,
            "0 workers would run nothing",
        ),
    ];
    for (flag, env, value, problem) in positive {
        if value == 0 {
            return Err(ConfigError::new(
                flag,
                env,
                problem,
                "give a positive number",
            ));
        }
    }
    if args.detect_timeout.is_zero() {
        return Err(ConfigError::new(
            "detect-timeout",
            "KUBE_MTLS_DETECT_TIMEOUT",
            "0 would take every connection for plaintext before its first byte arrives",
            "give a duration such as 1s",
        ));
    }
    if args.max_header_size < 1024 {
        return Err(ConfigError::new(
            "max-header-size",
            "KUBE_MTLS_MAX_HEADER_SIZE",
            format!(
                "{} bytes is too small for ordinary requests",
                args.max_header_size
            ),
            "give at least 1024",
        ));
    }
    Ok(())
}

impl Settings {
    /// The args and environment that give these settings. The ports, the
    /// trust domain and the cert dir are always written (an image whose
    /// defaults differ still gets the pod's values); other flags only when
    /// they differ from the default. The log format and the probes go in the
    /// environment, where a long JSON value reads better than in the args.
    pub fn render(&self) -> Rendered {
        let Settings {
            inbound_port,
            outbound_port,
            admin_port,
            cert_dir,
            trust_bundle,
            trust_domain,
            allowed_clients,
            tcp_ports,
            h2_ports,
            listen,
            app_probes,
            outbound_tcp_ports,
            max_connections,
            max_handshakes,
            max_handshakes_per_source,
            handshake_timeout,
            header_read_timeout,
            idle_timeout,
            upstream_timeout,
            drain_timeout,
            max_header_size,
            workers,
            log_format,
            log_level,
            mode,
            policy,
            detect_timeout,
        } = self;
        let d = Settings::default();
        let mut r = Rendered::default();
        r.arg("trust-domain", trust_domain);
        r.arg("cert-dir", cert_dir.display());
        if let Some(bundle) = trust_bundle {
            r.arg("trust-bundle", bundle.display());
        }
        r.arg("inbound-port", inbound_port);
        r.arg("admin-port", admin_port);
        if !allowed_clients.0.is_empty() {
            r.arg("allowed-clients", allowed_clients);
        }
        for (flag, set) in [("tcp-ports", tcp_ports), ("h2-ports", h2_ports)] {
            if !set.is_empty() {
                r.arg(flag, ports::join(set));
            }
        }
        r.arg("outbound-port", outbound_port);
        if !listen.is_empty() {
            let items: Vec<String> = listen.iter().map(ToString::to_string).collect();
            r.arg("listen", items.join(","));
        }
        if !outbound_tcp_ports.is_empty() {
            r.arg("outbound-tcp-ports", ports::join(outbound_tcp_ports));
        }
        let counts = [
            ("max-connections", *max_connections, d.max_connections),
            ("max-handshakes", *max_handshakes, d.max_handshakes),
            (
                "max-handshakes-per-source",
                *max_handshakes_per_source,
                d.max_handshakes_per_source,
            ),
            ("max-header-size", *max_header_size, d.max_header_size),
            ("workers", *workers, d.workers),
        ];
        for (flag, value, default) in counts {
            if value != default {
                r.arg(flag, value);
            }
        }
        let times = [
            ("handshake-timeout", *handshake_timeout, d.handshake_timeout),
            (
                "header-read-timeout",
                *header_read_timeout,
                d.header_read_timeout,
            ),
            ("idle-timeout", *idle_timeout, d.idle_timeout),
            ("drain-timeout", *drain_timeout, d.drain_timeout),
        ];
        for (flag, value, default) in times {
            if value != default {
                r.arg(flag, render_duration(value));
            }
        }
        if *upstream_timeout != d.upstream_timeout {
            r.arg(
                "upstream-timeout",
                render_optional_duration(*upstream_timeout),
            );
        }
        if *log_level != d.log_level {
            r.arg("log-level", log_level);
        }
        if *mode != d.mode {
            r.arg("mode", mode.as_str());
        }
        if *policy != d.policy {
            r.arg("policy", policy.as_str());
        }
        if *detect_timeout != d.detect_timeout {
            r.arg("detect-timeout", render_duration(*detect_timeout));
        }
        if *log_format != d.log_format {
            r.env
                .push(("KUBE_MTLS_LOG_FORMAT".into(), log_format.as_str().into()));
        }
        if !app_probes.is_empty() {
            r.env.push((
                "KUBE_MTLS_APP_PROBES".into(),
                probe::render_app_probes(app_probes),
            ));
        }
        r
    }
}

/// The command of the non-native sidecar's postStart hook: waits until the
/// sidecar on `admin_port` is ready.
pub fn wait_ready_command(admin_port: u16) -> Vec<String> {
    vec![
        SIDECAR_BINARY.to_owned(),
        "--wait-ready".to_owned(),
        format!("--admin-port={admin_port}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, ConfigError> {
        let mut v = vec!["kube-mtls-sidecar"];
        v.extend_from_slice(extra);
        Settings::from_args(&Args::parse_from(v))
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        assert_eq!(parse(&[]), Ok(Settings::default()));
        assert_eq!(
            parse(&["--upstream-timeout", "3s"])
                .unwrap()
                .upstream_timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn errors_name_the_flag_at_fault() {
        let flag = |extra: &[&str]| parse(extra).unwrap_err().flag;
        assert_eq!(flag(&["--admin-port", "0"]), "admin-port");
        assert_eq!(flag(&["--inbound-port", "0"]), "inbound-port");
        assert_eq!(flag(&["--outbound-port", "15006"]), "outbound-port");
        assert_eq!(flag(&["--admin-port", "15006"]), "admin-port");
        assert_eq!(flag(&["--listen", "15020:8080"]), "listen");
        assert_eq!(flag(&["--listen", "8443:8080,8443:8081"]), "listen");
        assert_eq!(flag(&["--listen", "8443"]), "listen");
        assert_eq!(flag(&["--tcp-ports", "80,http"]), "tcp-ports");
        assert_eq!(flag(&["--tcp-ports", "80", "--h2-ports", "80"]), "h2-ports");
        assert_eq!(flag(&["--trust-domain", "a/b"]), "trust-domain");
        assert_eq!(flag(&["--allowed-clients", "a..b"]), "allowed-clients");
        assert_eq!(flag(&["--app-probes", "[]"]), "app-probes");
        assert_eq!(flag(&["--max-connections", "0"]), "max-connections");
        assert_eq!(flag(&["--max-handshakes", "0"]), "max-handshakes");
        assert_eq!(
            flag(&["--max-handshakes-per-source", "0"]),
            "max-handshakes-per-source"
        );
        assert_eq!(flag(&["--max-header-size", "10"]), "max-header-size");
        assert_eq!(flag(&["--workers", "0"]), "workers");
        assert_eq!(flag(&["--detect-timeout", "0s"]), "detect-timeout");
        assert_eq!(flag(&["--trust-bundle", "/trust/"]), "trust-bundle");
        assert_eq!(flag(&["--trust-bundle", " "]), "trust-bundle");
    }

    #[test]
    fn listen_takes_an_optional_address() {
        let l = parse_listen("8443:8080, 127.0.0.1:9443:9090,[::1]:9444:9090").unwrap();
        let shown: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["8443:8080", "127.0.0.1:9443:9090", "[::1]:9444:9090"]
        );
        assert_eq!(l[0].address, None);
        assert_eq!((l[1].port, l[1].app_port), (9443, 9090));
        for bad in [
            "localhost:8443:8080",
            "[::1:8443:8080",
            "1.2.3.4:8443",
            "a:b:c:d",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert_eq!(e.flag, "listen", "{bad}: {e}");
        }
    }

    #[test]
    fn modes_default_to_strict_and_enforce() {
        let s = parse(&[]).unwrap();
        assert_eq!((s.mode, s.policy), (MtlsMode::Strict, Policy::Enforce));
        assert_eq!(s.detect_timeout, Duration::from_secs(1));
        let s = parse(&["--mode", "permissive", "--policy", "audit"]).unwrap();
        assert_eq!((s.mode, s.policy), (MtlsMode::Permissive, Policy::Audit));
        let err = Args::try_parse_from(["kube-mtls-sidecar", "--mode", "open"]).unwrap_err();
        assert!(err.to_string().contains("strict"), "{err}");
    }

    #[test]
    fn every_setting_renders_and_parses_back() {
        let s = Settings {
            inbound_port: 16006,
            outbound_port: 0,
            admin_port: 16020,
            cert_dir: PathBuf::from("/certs"),
            trust_bundle: Some(PathBuf::from("/var/run/kube-mtls/trust/ca-bundle.crt")),
            trust_domain: "example.org".into(),
            allowed_clients: "spiffe://example.org/ns/*/sa/web,*.example.com"
                .parse()
                .unwrap(),
            tcp_ports: [5432].into(),
            h2_ports: [9000].into(),
            listen: parse_listen("8443:8080,127.0.0.1:9443:9090,[::1]:9444:9090").unwrap(),
            app_probes: probe::parse_app_probes(r#"{"app/readiness":{"tcpSocket":{"port":8080}}}"#)
                .unwrap(),
            outbound_tcp_ports: [6379].into(),
            max_connections: 5,
            max_handshakes: 6,
            max_handshakes_per_source: 7,
            handshake_timeout: Duration::from_millis(1500),
            header_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            upstream_timeout: Some(Duration::from_secs(30)),
            drain_timeout: Duration::from_secs(5),
            max_header_size: 2048,
            workers: 1,
            log_format: LogFormat::Json,
            log_level: "debug".into(),
            mode: MtlsMode::Permissive,
            policy: Policy::Audit,
            detect_timeout: Duration::from_millis(250),
        };
        let r = s.render();
        let args: Args = crate::parse_container(SIDECAR_BINARY, &r.args, &r.env).unwrap();
        assert_eq!(Settings::from_args(&args), Ok(s));
        let r = Settings::default().render();
        let args: Args = crate::parse_container(SIDECAR_BINARY, &r.args, &r.env).unwrap();
        assert_eq!(Settings::from_args(&args), Ok(Settings::default()));
    }
}
