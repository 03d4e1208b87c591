//! Certificates for a benchmark run, laid out like cert-manager Secrets.

use std::path::Path;

use kube_mtls_tests::certs::{Issued, Leaf, TestCa};

/// The SPIFFE identity the load generator presents.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/loadgen";
/// The SPIFFE identity of the proxy under test.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";

/// Writes `server/` and `client/` (each `tls.crt`, `tls.key`, `ca.crt`) under
/// `dir`, plus `server/combined.pem` (certificate then key) for HAProxy. Both
/// certificates are ECDSA P-256, as cert-manager issues them for workloads.
pub fn write(dir: &Path) -> std::io::Result<()> {
    let ca = TestCa::new("kube-mtls bench CA");
    let server = ca.issue(&Leaf::spiffe(SERVER_ID));
    let client = ca.issue(&Leaf::spiffe(CLIENT_ID));
    server.write_dir(&dir.join("server"))?;
    client.write_dir(&dir.join("client"))?;
    write_combined(&server, &dir.join("server").join("combined.pem"))
}

fn write_combined(issued: &Issued, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, format!("{}{}", issued.cert_pem, issued.key_pem))
}
