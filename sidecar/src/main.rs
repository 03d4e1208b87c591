//! The `kube-mtls-sidecar` binary: flags in, the proxy running until SIGTERM
//! (or, with `--wait-ready`, a wait for another sidecar's readiness).

use anyhow::Context;
use clap::Parser;
use kube_mtls_sidecar::config::{Args, Config};
use kube_mtls_sidecar::{server, tls};
use tokio::signal::unix::{SignalKind, signal};

/// Polls `/ready` on the admin port until it answers 200 (at most two minutes).
fn wait_ready(admin_port: u16) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin_port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ =
                s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 16];
            if s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
            {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    anyhow::bail!("the sidecar on admin port {admin_port} did not become ready within 120s")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kube_mtls_telemetry::init(args.log_format, &args.log_level)?;
    if args.wait_ready {
        return wait_ready(args.admin_port);
    }
    let cfg = Config::from_args(&args)?;
    // The error names the flag at fault (--cert-dir or --trust-bundle) and the fix.
    let store = tls::TlsStore::open(
        &cfg.cert_dir,
        cfg.trust_bundle.as_deref(),
        &cfg.trust_domain,
    )?;
    // One worker means one thread doing all the work: the current-thread
    // scheduler then skips the work-stealing machinery (and its wake-ups) that
    // only pays off when there are several threads to balance.
    let mut builder = if cfg.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cfg.workers);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server::run(cfg, store, stop).await?;
        Ok(())
    })
}
