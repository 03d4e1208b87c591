//! `--listen` with an address binds that address only: a quick start on a
//! laptop can keep the sidecar off every other interface.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kube_mtls_tests::app;
use kube_mtls_tests::certs::Leaf;
use kube_mtls_tests::process::{Sidecar, free_port};
use kube_mtls_tests::sidecar_env::{CLIENT_ID, server_certs};
use kube_mtls_tests::tls::{client_config, get};

#[tokio::test]
async fn a_listen_address_binds_that_address_only() {
    let (ca, dir) = server_certs();
    let app = app::start().await;
    let port = free_port();
    let listen = format!("--listen=127.0.0.1:{port}:{}", app.port());
    let _sidecar = Sidecar::start(dir.path(), &[], &[&listen]);

    let client = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    let on = SocketAddr::from(([127, 0, 0, 1], port));
    let reply = get(on, client, "/hello", &[])
        .await
        .expect("served on 127.0.0.1");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // 127.0.0.2 is this host too, but not the address the listener took.
    let off = SocketAddr::from(([127, 0, 0, 2], port));
    assert!(
        TcpStream::connect_timeout(&off, Duration::from_secs(5)).is_err(),
        "{off} accepted a connection"
    );
}

#[test]
fn a_listen_address_that_is_not_one_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sidecar = Sidecar::spawn(dir.path(), &[], &["--listen=localhost:8443:8080"]);
    let status = sidecar
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the sidecar exits");
    assert!(!status.success());
    let logs = sidecar.proc.logs();
    assert!(
        logs.contains("--listen") && logs.contains("\"localhost\" is not an IP address"),
        "{logs}"
    );
}
