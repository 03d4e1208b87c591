//! A sidecar with direct listeners in front of the echo app, for black-box
//! tests of the `kube-mtls-sidecar` binary.
//!
//! Several test files start the real binary the same way: a throwaway CA, a
//! server certificate for [`SERVER_ID`] in a temporary cert dir ([`server_certs`]), the echo
//! [`app`](crate::app) and one direct listener in front of it. [`SidecarEnv`]
//! is that set-up, kept in one place with the client and metrics helpers the
//! tests drive it with.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app;
use crate::certs::{Issued, Leaf, TestCa};
use crate::process::{Sidecar, free_port, plain_get};
use crate::tls::client_config;

/// The identity the sidecar serves as.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";
/// An identity the default policy (the pod's trust domain) admits.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/front";

/// A throwaway CA, and a temporary cert dir holding its certificate for
/// [`SERVER_ID`] the way a cert-manager Secret is laid out: what a sidecar
/// started by hand serves with. The CA issues callers' certificates too.
pub fn server_certs() -> (TestCa, tempfile::TempDir) {
    let ca = TestCa::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    ca.issue(&Leaf::spiffe(SERVER_ID))
        .write_dir(dir.path())
        .expect("server certificate");
    (ca, dir)
}

/// A sidecar with one direct listener in front of the echo app.
pub struct SidecarEnv {
    /// First, so that it is killed first when the test ends (fields drop in
    /// order): the cert dir below stays in place for as long as it runs.
    pub sidecar: Sidecar,
    /// The CA that issued the sidecar's certificate; it issues callers' too.
    pub ca: TestCa,
    /// Holds the cert dir for as long as the sidecar runs.
    _dir: tempfile::TempDir,
    /// The echo app.
    pub app: SocketAddr,
    /// The sidecar's listener for `app`.
    pub addr: SocketAddr,
}

impl SidecarEnv {
    /// Starts the echo app and a sidecar with `extra` arguments in front of
    /// it, and waits until the sidecar is ready.
    pub async fn start(extra: &[&str]) -> SidecarEnv {
        let (ca, dir) = server_certs();
        let cert_dir = dir.path().to_owned();
        let app = app::start().await;
        let listen = free_port();
        let sidecar = Sidecar::start(&cert_dir, &[(listen, app.port())], extra);
        SidecarEnv {
            ca,
            _dir: dir,
            app,
            addr: SocketAddr::from(([127, 0, 0, 1], listen)),
            sidecar,
        }
    }

    /// An HTTP/1.1 client config presenting `id`.
    pub fn client(&self, id: &Issued) -> Arc<rustls::ClientConfig> {
        self.client_with(id, &["http/1.1"])
    }

    /// A client config presenting `id` and offering `alpn`.
    pub fn client_with(&self, id: &Issued, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.cert_pem, Some(id), alpn)
    }

    /// A caller certificate for `spiffe`, from the sidecar's CA.
    pub fn caller(&self, spiffe: &str) -> Issued {
        self.ca.issue(&Leaf::spiffe(spiffe))
    }

    /// The sidecar's `/metrics` text, or "" if the admin port did not answer.
    pub fn metrics(&self) -> String {
        plain_get(self.sidecar.admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// The value of a sample line such as `kube_mtls_sidecar_refusals_total{reason="x"} 3`,
/// or 0 if there is none.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of a metric, whatever its labels.
pub fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
