//! Settings: the flags ([`Args`]) and their validation into a [`Config`].
//!
//! The flags, their types and every check that needs no filesystem live in the
//! contract crate (`kube_mtls_contract::sidecar`), beside the rendering the
//! webhook writes the sidecar's args with, so both read one definition. Here
//! the sidecar adds what only it can check (the certificate files and the
//! trust bundle exist) and
//! the lookups its hot path wants (hash sets, the allow-list, the proxy mode
//! of a port).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube_mtls_contract::names::CERT_FILES;
use kube_mtls_contract::sidecar::Settings;

use crate::identity::AllowList;

pub use kube_mtls_contract::ConfigError;
pub use kube_mtls_contract::duration::{parse_duration, parse_optional_duration};
pub use kube_mtls_contract::probe::{
    GrpcProbe, HttpGetProbe, ProbeHeader, ProbeTarget, TcpSocketProbe,
};
pub use kube_mtls_contract::sidecar::{Args, Listen, MtlsMode, Policy};

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

/// Validated settings, in the shape the proxy reads them.
#[derive(Debug, Clone)]
pub struct Config {
    pub inbound_port: u16,
    /// 0: no outbound listener.
    pub outbound_port: u16,
    pub admin_port: u16,
    pub cert_dir: PathBuf,
    /// The CAs peers' certificates must chain to (`--trust-bundle`);
    /// `None`: `<cert_dir>/ca.crt`.
    pub trust_bundle: Option<PathBuf>,
    pub trust_domain: String,
    /// Who may call, decided once per connection.
    pub allow: AllowList,
    /// Read through [`Config::mode`].
    tcp_ports: HashSet<u16>,
    /// Read through [`Config::mode`].
    h2_ports: HashSet<u16>,
    /// Direct listeners (`--listen`), each on its address or every interface.
    pub listen: Vec<Listen>,
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
    /// Whether plaintext callers are let in on HTTP ports (`--mode`).
    pub mtls_mode: MtlsMode,
    /// Whether callers off the allow-list are refused or only counted (`--policy`).
    pub policy: Policy,
    /// How long permissive mode waits for a connection's first byte.
    pub detect_timeout: Duration,
}

impl Config {
    /// Checks every setting and gathers them into a `Config`.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let s = Settings::from_args(args)?;
        check_cert_dir(&s.cert_dir, s.trust_bundle.is_none())?;
        if let Some(bundle) = &s.trust_bundle {
            check_trust_bundle(bundle)?;
        }
        Ok(Config {
            allow: AllowList::new(s.allowed_clients, &s.trust_domain),
            inbound_port: s.inbound_port,
            outbound_port: s.outbound_port,
            admin_port: s.admin_port,
            cert_dir: s.cert_dir,
            trust_bundle: s.trust_bundle,
            trust_domain: s.trust_domain,
            tcp_ports: s.tcp_ports.into_iter().collect(),
            h2_ports: s.h2_ports.into_iter().collect(),
            listen: s.listen,
            app_probes: s.app_probes,
            outbound_tcp_ports: s.outbound_tcp_ports.into_iter().collect(),
            max_connections: s.max_connections,
            max_handshakes: s.max_handshakes,
            max_handshakes_per_source: s.max_handshakes_per_source,
            handshake_timeout: s.handshake_timeout,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            upstream_timeout: s.upstream_timeout,
            drain_timeout: s.drain_timeout,
            max_header_size: s.max_header_size,
            workers: s.workers,
            mtls_mode: s.mode,
            policy: s.policy,
            detect_timeout: s.detect_timeout,
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

/// The key pair's files, and `ca.crt` when it is the trust bundle.
fn check_cert_dir(dir: &Path, with_ca: bool) -> Result<(), ConfigError> {
    for name in CERT_FILES {
        if name == "ca.crt" && !with_ca {
            continue;
        }
        let path = dir.join(name);
        if !path.is_file() {
            return Err(ConfigError::new(
                "cert-dir",
                "KUBE_MTLS_CERT_DIR",
                format!("{} does not exist or is not a file", path.display()),
                "point it at the directory where the pod's certificate Secret (tls.crt, tls.key, ca.crt) is mounted",
            ));
        }
    }
    Ok(())
}

fn check_trust_bundle(path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        return Ok(());
    }
    Err(ConfigError::new(
        "trust-bundle",
        "KUBE_MTLS_TRUST_BUNDLE",
        format!("{} does not exist or is not a file", path.display()),
        "mount the trust bundle there (the ca-bundle.crt key of the namespace's trust bundle ConfigMap), or leave the flag empty to trust <cert-dir>/ca.crt",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut v = vec!["kube-mtls-sidecar", "--cert-dir", dir];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn upstream_timeout_is_off_by_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in CERT_FILES {
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
        let c = cfg(&["--tcp-ports", "5432", "--h2-ports", "9000"]);
        assert_eq!(
            (c.mode(5432), c.mode(9000), c.mode(8080)),
            (Mode::Tcp, Mode::Http2, Mode::Http)
        );
    }

    #[test]
    fn a_trust_bundle_must_exist_and_replaces_ca_crt() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["tls.crt", "tls.key"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let d = dir.path().to_str().expect("utf-8 path");
        let from = |extra: &[&str]| {
            let mut v = vec!["kube-mtls-sidecar", "--cert-dir", d];
            v.extend_from_slice(extra);
            Config::from_args(&Args::parse_from(v))
        };
        let err = from(&[]).unwrap_err().to_string();
        assert!(
            err.contains("--cert-dir") && err.contains("ca.crt"),
            "{err}"
        );
        let bundle = dir.path().join("bundle.pem");
        let b = bundle.to_str().expect("utf-8 path");
        let err = from(&["--trust-bundle", b]).unwrap_err().to_string();
        assert!(
            err.contains("--trust-bundle")
                && err.contains("KUBE_MTLS_TRUST_BUNDLE")
                && err.contains("bundle.pem"),
            "{err}"
        );
        std::fs::write(&bundle, "").expect("write");
        let cfg = from(&["--trust-bundle", b]).expect("valid settings");
        assert_eq!(cfg.trust_bundle.as_deref(), Some(bundle.as_path()));
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
}
