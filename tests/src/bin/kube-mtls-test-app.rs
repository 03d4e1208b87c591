//! The echo app as a process, for pods built from network namespaces:
//! `kube-mtls-test-app <port> [<port>...]` listens on 0.0.0.0 on each port.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("usage: kube-mtls-test-app <port>...: {e}"))?;
    anyhow::ensure!(!ports.is_empty(), "usage: kube-mtls-test-app <port>...");
    let mut tasks = Vec::new();
    for port in ports {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        tasks.push(tokio::spawn(kube_mtls_tests::app::serve(listener)));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
