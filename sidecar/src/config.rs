//! Settings: command-line flags, each also read from a `KUBE_MTLS_*` environment
//! variable, and the validation that turns them into a [`Config`].
//!
//! Everything that can be wrong with the settings is found here, before a single
//! socket is opened, and reported with the flag's name and how to fix it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::identity::{AllowList, PatternError};

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
    #[arg(long, env = "KUBE_MTLS_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Outbound listener on 127.0.0.1 (0 disables it).
    #[arg(long, env = "KUBE_MTLS_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Plain-HTTP admin port: /ready, /live, /metrics, /app-health/...
    #[arg(long, env = "KUBE_MTLS_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,

    /// Directory holding tls.crt, tls.key and ca.crt, as cert-manager writes a Secret.
    #[arg(
        long,
        env = "KUBE_MTLS_CERT_DIR",
        default_value = "/var/run/kube-mtls/certs"
    )]
    pub cert_dir: PathBuf,

    /// SPIFFE trust domain of this pod.
    #[arg(long, env = "KUBE_MTLS_TRUST_DOMAIN", default_value = "cluster.local")]
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

    /// Direct listeners for setups without redirection: `<listen port>:<app port>,...`.
    #[arg(long, env = "KUBE_MTLS_LISTEN", default_value = "")]
    pub listen: String,

    /// Probe targets reachable at /app-health/<container>/<probe>, as JSON.
    #[arg(long, env = "KUBE_MTLS_APP_PROBES", default_value = "{}")]
    pub app_probes: String,

    /// Destination ports the outbound listener proxies as raw TCP.
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

    /// Time allowed for a TLS handshake.
    #[arg(long, env = "KUBE_MTLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed to read a request's headers.
    #[arg(long, env = "KUBE_MTLS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no traffic for this long is closed.
    #[arg(long, env = "KUBE_MTLS_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long the app may take to send a response's headers before the
    /// caller gets 504; `off` (the default) waits as long as the caller does.
    #[arg(long, env = "KUBE_MTLS_UPSTREAM_TIMEOUT", default_value = "off", value_parser = parse_optional_duration)]
    pub upstream_timeout: Duration,

    /// After SIGTERM, in-flight work gets this long before the process exits.
    #[arg(long, env = "KUBE_MTLS_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest accepted request header block, in bytes.
    #[arg(long, env = "KUBE_MTLS_MAX_HEADER_SIZE", default_value_t = 16 * 1024)]
    pub max_header_size: usize,

    /// Worker threads of the async runtime; 1 runs everything on one thread.
    #[arg(long, env = "KUBE_MTLS_WORKERS", default_value_t = 2)]
    pub workers: usize,

    /// Log format: json, text, or auto (text on a terminal, JSON otherwise).
    #[arg(long, env = "KUBE_MTLS_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,

    /// Wait until the sidecar on --admin-port is ready, then exit (a postStart
    /// hook that holds the app's container until the proxy is up).
    #[arg(long)]
    pub wait_ready: bool,

    /// Log filter, e.g. `info` or `kube_mtls_sidecar=debug`.
    #[arg(long, env = "KUBE_MTLS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    // Permissive and audit modes (the `kube-mtls.io/mode` and
    // `kube-mtls.io/policy` annotations); see `crate::permissive`.
    /// `strict`: every inbound connection must be mTLS. `permissive`: on HTTP
    /// ports a connection that does not open with a TLS ClientHello is passed
    /// to the app as plaintext, with every identity header removed; TLS still
    /// needs a valid client certificate, and ports in --tcp-ports stay mTLS-only.
    #[arg(long, env = "KUBE_MTLS_MODE", value_enum, default_value_t = MtlsMode::Strict)]
    pub mode: MtlsMode,

    /// `enforce`: callers not on --allowed-clients are refused. `audit`: they
    /// are let through, logged and counted as would_deny; a caller without a
    /// valid client certificate is refused either way.
    #[arg(long, env = "KUBE_MTLS_POLICY", value_enum, default_value_t = Policy::Enforce)]
    pub policy: Policy,

    /// In permissive mode, how long to wait for a connection's first byte
    /// before taking it for plaintext. TLS clients speak first, so this only
    /// delays clients that wait for the server; ports in --tcp-ports are never
    /// delayed.
    #[arg(long, env = "KUBE_MTLS_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
}

/// Whether inbound connections must be mTLS (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MtlsMode {
    /// Every inbound connection must be mTLS.
    Strict,
    /// Plaintext callers are let in on HTTP ports, without any identity.
    Permissive,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

/// What happens to an authenticated caller not on the allow-list (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Refused.
    Enforce,
    /// Let through, logged and counted as would_deny.
    Audit,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Enforce => "enforce",
            Policy::Audit => "audit",
        }
    }
}

/// A setting that cannot be used, with the flag it came from and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} ({env}): {problem}. Fix: {fix}")]
    Invalid {
        flag: &'static str,
        env: &'static str,
        problem: String,
        fix: String,
    },
}

fn invalid(
    flag: &'static str,
    env: &'static str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        env,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// How a port's traffic is proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 or HTTP/2 from the client, forwarded per request; the app speaks HTTP/1.1.
    Http,
    /// As `Http`, but the app speaks HTTP/2 cleartext (gRPC).
    Http2,
    /// Bytes copied both ways.
    Tcp,
}

/// A kubelet probe the admin port forwards to the app.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeTarget {
    pub http_get: Option<HttpGetProbe>,
    pub tcp_socket: Option<TcpSocketProbe>,
    pub grpc: Option<GrpcProbe>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetProbe {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
    #[serde(default = "http_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub http_headers: Vec<ProbeHeader>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TcpSocketProbe {
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GrpcProbe {
    pub port: u16,
    #[serde(default)]
    pub service: String,
}

fn root_path() -> String {
    "/".to_owned()
}

fn http_scheme() -> String {
    "HTTP".to_owned()
}

/// The probe kinds kubelet knows; the last segment of `/app-health/<container>/<probe>`.
const PROBE_KINDS: [&str; 3] = ["liveness", "readiness", "startup"];

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub cert_dir: PathBuf,
    pub trust_domain: String,
    pub allow: AllowList,
    tcp_ports: HashSet<u16>,
    h2_ports: HashSet<u16>,
    /// Direct listeners: (listen port, app port).
    pub listen: Vec<(u16, u16)>,
    /// Keyed by `<container>/<probe>`.
    pub app_probes: BTreeMap<String, ProbeTarget>,
    pub outbound_tcp_ports: HashSet<u16>,
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
    // Permissive and audit modes.
    pub mtls_mode: MtlsMode,
    pub policy: Policy,
    /// How long permissive mode waits for a connection's first byte.
    pub detect_timeout: Duration,
}

impl Config {
    /// Checks every setting and gathers them into a `Config`.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let tcp_ports = parse_ports(&args.tcp_ports, "tcp-ports", "KUBE_MTLS_TCP_PORTS")?;
        let h2_ports = parse_ports(&args.h2_ports, "h2-ports", "KUBE_MTLS_H2_PORTS")?;
        let outbound_tcp_ports = parse_ports(
            &args.outbound_tcp_ports,
            "outbound-tcp-ports",
            "KUBE_MTLS_OUTBOUND_TCP_PORTS",
        )?;
        if let Some(p) = tcp_ports.intersection(&h2_ports).next() {
            return Err(invalid(
                "h2-ports",
                "KUBE_MTLS_H2_PORTS",
                format!("port {p} is also in --tcp-ports"),
                "a port is either TCP or HTTP/2; remove it from one list",
            ));
        }
        let listen = parse_listen(&args.listen)?;

        // The sidecar's own ports must be distinct from each other and from the
        // direct listeners, or two listeners would fight over one socket.
        let mut own: Vec<(&'static str, u16)> = vec![
            ("inbound-port", args.inbound_port),
            ("admin-port", args.admin_port),
        ];
        if args.outbound_port != 0 {
            own.push(("outbound-port", args.outbound_port));
        }
        for (name, port) in &own {
            if *port == 0 {
                return Err(invalid(
                    "inbound-port",
                    "KUBE_MTLS_INBOUND_PORT",
                    format!("--{name} is 0"),
                    "give a port between 1 and 65535",
                ));
            }
        }
        for (i, (a, pa)) in own.iter().enumerate() {
            for (b, pb) in own.iter().skip(i + 1) {
                if pa == pb {
                    return Err(invalid(
                        "admin-port",
                        "KUBE_MTLS_ADMIN_PORT",
                        format!("--{a} and --{b} are both {pa}"),
                        "give each of the sidecar's listeners its own port",
                    ));
                }
            }
        }
        for (listen_port, app_port) in &listen {
            for (name, port) in &own {
                if listen_port == port || app_port == port {
                    return Err(invalid(
                        "listen",
                        "KUBE_MTLS_LISTEN",
                        format!("{listen_port}:{app_port} collides with --{name} {port}"),
                        "choose listen and app ports other than the sidecar's own ports",
                    ));
                }
            }
        }
        let mut seen = HashSet::new();
        for (listen_port, _) in &listen {
            if !seen.insert(listen_port) {
                return Err(invalid(
                    "listen",
                    "KUBE_MTLS_LISTEN",
                    format!("listen port {listen_port} appears twice"),
                    "list each listen port once",
                ));
            }
        }

        let allow = AllowList::parse(&args.allowed_clients, &args.trust_domain).map_err(|e: PatternError| {
            invalid(
                "allowed-clients",
                "KUBE_MTLS_ALLOWED_CLIENTS",
                e.to_string(),
                "write spiffe://<trust domain>/ns/<namespace>/sa/<service account> (`*` for one whole segment) or a DNS name",
            )
        })?;
        if args.trust_domain.is_empty()
            || args.trust_domain.contains('/')
            || args.trust_domain.contains(':')
        {
            return Err(invalid(
                "trust-domain",
                "KUBE_MTLS_TRUST_DOMAIN",
                format!("{:?} is not a trust domain", args.trust_domain),
                "give a name such as cluster.local",
            ));
        }

        let app_probes = parse_probes(&args.app_probes)?;
        check_cert_dir(&args.cert_dir)?;

        if args.max_connections == 0 {
            return Err(invalid(
                "max-connections",
                "KUBE_MTLS_MAX_CONNECTIONS",
                "0 would refuse every connection",
                "give a positive number",
            ));
        }
        check_handshake_limits(args)?;
        if args.max_header_size < 1024 {
            return Err(invalid(
                "max-header-size",
                "KUBE_MTLS_MAX_HEADER_SIZE",
                format!(
                    "{} bytes is too small for ordinary requests",
                    args.max_header_size
                ),
                "give at least 1024",
            ));
        }
        if args.workers == 0 {
            return Err(invalid(
                "workers",
                "KUBE_MTLS_WORKERS",
                "0 workers",
                "give at least 1",
            ));
        }
        if args.detect_timeout.is_zero() {
            return Err(invalid(
                "detect-timeout",
                "KUBE_MTLS_DETECT_TIMEOUT",
                "0 would take every connection for plaintext before its first byte arrives",
                "give a duration such as 1s",
            ));
        }

        Ok(Config {
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            admin_port: args.admin_port,
            cert_dir: args.cert_dir.clone(),
            trust_domain: args.trust_domain.clone(),
            allow,
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
            mtls_mode: args.mode,
            policy: args.policy,
            detect_timeout: args.detect_timeout,
        })
    }

    /// How connections for an app port are proxied.
    pub fn mode(&self, app_port: u16) -> Mode {
        if self.tcp_ports.contains(&app_port) {
            Mode::Tcp
        } else if self.h2_ports.contains(&app_port) {
            Mode::Http2
        } else {
            Mode::Http
        }
    }

    /// True for the sidecar's own ports, which are never forwarded to the app.
    pub fn is_own_port(&self, port: u16) -> bool {
        port == self.inbound_port
            || port == self.admin_port
            || (self.outbound_port != 0 && port == self.outbound_port)
    }
}

/// Parses a comma-separated port list such as `8080, 9090`.
pub fn parse_ports(
    value: &str,
    flag: &'static str,
    env: &'static str,
) -> Result<HashSet<u16>, ConfigError> {
    let mut ports = HashSet::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        ports.insert(parse_port(item, flag, env)?);
    }
    Ok(ports)
}

fn parse_port(item: &str, flag: &'static str, env: &'static str) -> Result<u16, ConfigError> {
    match item.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(
            flag,
            env,
            format!("{item:?} is not a port"),
            "give numbers between 1 and 65535, separated by commas",
        )),
    }
}

fn parse_listen(value: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((l, a)) = item.split_once(':') else {
            return Err(invalid(
                "listen",
                "KUBE_MTLS_LISTEN",
                format!("{item:?} has no ':'"),
                "write <listen port>:<app port>, e.g. 8443:8080",
            ));
        };
        out.push((
            parse_port(l.trim(), "listen", "KUBE_MTLS_LISTEN")?,
            parse_port(a.trim(), "listen", "KUBE_MTLS_LISTEN")?,
        ));
    }
    Ok(out)
}

fn parse_probes(value: &str) -> Result<BTreeMap<String, ProbeTarget>, ConfigError> {
    let fix = r#"give a JSON object such as {"app/readiness":{"httpGet":{"port":8080,"path":"/healthz"}}}"#;
    let probes: BTreeMap<String, ProbeTarget> =
        serde_json::from_str(if value.trim().is_empty() { "{}" } else { value }).map_err(|e| {
            invalid(
                "app-probes",
                "KUBE_MTLS_APP_PROBES",
                format!("not valid JSON for probes: {e}"),
                fix,
            )
        })?;
    for (key, target) in &probes {
        let kind_ok = key
            .split_once('/')
            .is_some_and(|(c, p)| !c.is_empty() && !c.contains('/') && PROBE_KINDS.contains(&p));
        if !kind_ok {
            return Err(invalid(
                "app-probes",
                "KUBE_MTLS_APP_PROBES",
                format!("key {key:?} is not <container>/<liveness|readiness|startup>"),
                fix,
            ));
        }
        let kinds = [
            target.http_get.is_some(),
            target.tcp_socket.is_some(),
            target.grpc.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(invalid(
                "app-probes",
                "KUBE_MTLS_APP_PROBES",
                format!("probe {key:?} must have exactly one of httpGet, tcpSocket, grpc"),
                fix,
            ));
        }
        if let Some(h) = &target.http_get {
            let scheme = h.scheme.to_ascii_uppercase();
            if scheme != "HTTP" && scheme != "HTTPS" {
                return Err(invalid(
                    "app-probes",
                    "KUBE_MTLS_APP_PROBES",
                    format!("probe {key:?} has scheme {:?}", h.scheme),
                    "use HTTP or HTTPS",
                ));
            }
            if !h.path.starts_with('/') {
                return Err(invalid(
                    "app-probes",
                    "KUBE_MTLS_APP_PROBES",
                    format!("probe {key:?} path {:?} does not start with '/'", h.path),
                    "give an absolute path such as /healthz",
                ));
            }
        }
    }
    Ok(probes)
}

fn check_handshake_limits(args: &Args) -> Result<(), ConfigError> {
    if args.max_handshakes == 0 {
        return Err(invalid(
            "max-handshakes",
            "KUBE_MTLS_MAX_HANDSHAKES",
            "0 would refuse every connection",
            "give a positive number, e.g. 1024",
        ));
    }
    if args.max_handshakes_per_source == 0 {
        return Err(invalid(
            "max-handshakes-per-source",
            "KUBE_MTLS_MAX_HANDSHAKES_PER_SOURCE",
            "0 would refuse every connection",
            "give a positive number, e.g. 64",
        ));
    }
    Ok(())
}

fn check_cert_dir(dir: &std::path::Path) -> Result<(), ConfigError> {
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(invalid(
                "cert-dir",
                "KUBE_MTLS_CERT_DIR",
                format!("{} does not exist or is not a file", path.display()),
                "point it at the directory where the pod's certificate Secret (tls.crt, tls.key, ca.crt) is mounted",
            ));
        }
    }
    Ok(())
}

/// Parses durations such as `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a duration; write e.g. 500ms, 10s, 5m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{value:?} has unit {unit:?}; use ms, s, m or h")),
    };
    Ok(d)
}

/// As [`parse_duration`], but `off` (or `0`) means no limit, returned as zero.
pub fn parse_optional_duration(value: &str) -> Result<Duration, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_duration(value).map_err(|e| format!("{e}, or off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut v = vec!["kube-mtls-sidecar", "--cert-dir", dir];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_optional_duration("off"), Ok(Duration::ZERO));
        assert_eq!(parse_optional_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_optional_duration("never").is_err());
    }

    #[test]
    fn upstream_timeout_is_off_by_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let d = dir.path().to_str().expect("utf-8 path");
        let cfg = |extra: &[&str]| {
            let mut v = vec!["kube-mtls-sidecar", "--cert-dir", d];
            v.extend_from_slice(extra);
            Config::from_args(&Args::parse_from(v)).expect("valid settings")
        };
        assert_eq!(cfg(&[]).upstream_timeout, None);
        assert_eq!(
            cfg(&["--upstream-timeout", "3s"]).upstream_timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn missing_cert_files_name_the_flag() {
        let err = Config::from_args(&args(&[])).unwrap_err().to_string();
        assert!(err.contains("--cert-dir"), "{err}");
        assert!(err.contains("tls.crt"), "{err}");
    }

    #[test]
    fn port_collisions_are_refused() {
        let a = args(&["--admin-port", "15006"]);
        let err = Config::from_args(&a).unwrap_err().to_string();
        assert!(
            err.contains("inbound-port") && err.contains("admin-port"),
            "{err}"
        );
        let a = args(&["--listen", "15020:8080"]);
        assert!(
            Config::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("--listen")
        );
    }

    #[test]
    fn probes_are_checked() {
        assert!(parse_probes(r#"{"app/readiness":{"httpGet":{"port":8080,"path":"/h"}}}"#).is_ok());
        assert!(parse_probes(r#"{"app/ready":{"tcpSocket":{"port":1}}}"#).is_err());
        assert!(parse_probes(r#"{"app/startup":{}}"#).is_err());
        assert!(parse_probes("nope").is_err());
    }

    #[test]
    fn modes_default_to_strict_and_enforce() {
        let a = args(&[]);
        assert_eq!((a.mode, a.policy), (MtlsMode::Strict, Policy::Enforce));
        assert_eq!(a.detect_timeout, Duration::from_secs(1));
        let a = args(&["--mode", "permissive", "--policy", "audit"]);
        assert_eq!((a.mode, a.policy), (MtlsMode::Permissive, Policy::Audit));
        let err = Args::try_parse_from(["kube-mtls-sidecar", "--mode", "open"]).unwrap_err();
        assert!(err.to_string().contains("strict"), "{err}");
    }

    #[test]
    fn port_lists() {
        let p = parse_ports(" 80, 443 ,", "tcp-ports", "X").unwrap();
        assert!(p.contains(&80) && p.contains(&443));
        assert!(parse_ports("80,http", "tcp-ports", "X").is_err());
        assert!(parse_ports("0", "tcp-ports", "X").is_err());
    }
}
