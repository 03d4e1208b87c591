//! The echo app as a process, for pods built from network namespaces and for
//! the end-to-end test's container image: `kube-mtls-test-app <port> [<port>...]`
//! listens on 0.0.0.0 on each port. On SIGTERM it stops accepting, finishes
//! the requests in flight, closes its connections and exits, as a
//! well-behaved app in a pod does, so a test can see the sidecar let those
//! requests finish.

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("usage: kube-mtls-test-app <port>...: {e}"))?;
    anyhow::ensure!(!ports.is_empty(), "usage: kube-mtls-test-app <port>...");
    let mut term = signal(SignalKind::terminate())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for port in ports {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        let app = kube_mtls_tests::app::serve_until(listener, stopped.clone());
        tasks.push(tokio::spawn(app));
    }
    term.recv().await;
    println!("SIGTERM: finishing the requests in flight");
    stop.send_replace(true);
    for t in tasks {
        t.await?;
    }
    println!("SIGTERM: done; exiting");
    Ok(())
}
