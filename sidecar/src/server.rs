//! Start-up and shutdown: bind every listener, serve, and drain on SIGTERM.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::config::{MtlsMode, Policy};
use crate::metrics::Metrics;
use crate::permissive::PlaintextLog;
use crate::proxy::{self, Target};
use crate::shared::{Shared, Upstream};
use crate::tls::{self, TlsStore};
use kube_mtls_listener::Listener;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "--{flag}: cannot listen on {addr}: {source}. Fix: choose a free port or stop what holds it"
    )]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn listen_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // One socket per family keeps SO_ORIGINAL_DST unambiguous.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A direct listener: on its address, or on every interface without one.
fn bind_listen(listen: &crate::config::Listen) -> Result<Vec<TcpListener>, StartError> {
    match listen.address {
        None => bind_all("listen", listen.port),
        Some(ip) => {
            let addr = SocketAddr::new(ip, listen.port);
            let l = listen_socket(addr).map_err(|source| StartError::Bind {
                flag: "listen",
                addr,
                source,
            })?;
            Ok(vec![l])
        }
    }
}

/// Binds 0.0.0.0:port, and [::]:port where the host has IPv6.
fn bind_all(flag: &'static str, port: u16) -> Result<Vec<TcpListener>, StartError> {
    let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
    let mut out = vec![listen_socket(v4).map_err(|source| StartError::Bind {
        flag,
        addr: v4,
        source,
    })?];
    let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
    match listen_socket(v6) {
        Ok(l) => out.push(l),
        Err(e) => tracing::debug!(port, error = %e, "no IPv6 listener"),
    }
    Ok(out)
}

/// Says loudly, at start-up, that a mode or policy lets callers through.
fn warn_of_open_modes(cfg: &Config) {
    if cfg.mtls_mode == MtlsMode::Permissive {
        tracing::warn!(
            detect_timeout = ?cfg.detect_timeout,
            "--mode permissive: callers without TLS reach the app as plaintext (without identity headers) on HTTP ports; switch to strict once plaintext_connections_total stops growing"
        );
    }
    if cfg.policy == Policy::Audit {
        tracing::warn!(
            "--policy audit: authenticated callers not on the allow-list are let through and counted as would_deny"
        );
    }
}

/// Runs the sidecar until `shutdown_signal` completes, then drains.
pub async fn run(
    cfg: Config,
    store: TlsStore,
    shutdown_signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let cfg = Arc::new(cfg);
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let state = store.current();
    metrics.cert_expiry.set(state.key_pair.not_after);
    metrics.set_certificate(&state.key_pair.serial);
    metrics.set_trusted_cas(&state.trust.cas);
    metrics.set_modes(cfg.mtls_mode.as_str(), cfg.policy.as_str());

    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        tls: store.clone(),
        metrics: metrics.clone(),
        upstream: Upstream::new(),
        slots: Arc::new(Semaphore::new(cfg.max_connections)),
        handshakes: crate::limits::HandshakeGate::new(
            cfg.max_handshakes,
            cfg.max_handshakes_per_source,
        ),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        draining: AtomicBool::new(false),
        plaintext_log: PlaintextLog::default(),
    });
    let admin = Arc::new(Admin {
        shared: shared.clone(),
        listeners_up: AtomicBool::new(false),
    });

    let mut listeners: Vec<(Listener, Target)> = Vec::new();
    let mut accept_tasks_outbound = Vec::new();
    for l in bind_all("inbound-port", cfg.inbound_port)? {
        listeners.push((
            Listener::new(l, "inbound", metrics.accept_errors("inbound")),
            Target::Redirected,
        ));
    }
    for listen in &cfg.listen {
        for l in bind_listen(listen)? {
            let target = Target::Fixed(listen.app_port);
            listeners.push((
                Listener::new(l, "listen", metrics.accept_errors("listen")),
                target,
            ));
        }
    }
    if cfg.outbound_port != 0 {
        // Loopback only: the outbound listener must never be reachable from outside the pod.
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), cfg.outbound_port);
        let listener = listen_socket(addr).map_err(|source| StartError::Bind {
            flag: "outbound-port",
            addr,
            source,
        })?;
        let client = crate::outbound::client(store.clone(), metrics.clone());
        accept_tasks_outbound.push(tokio::spawn(crate::outbound::accept_loop(
            Listener::new(listener, "outbound", metrics.accept_errors("outbound")),
            shared.clone(),
            client,
        )));
    }
    for l in bind_all("admin-port", cfg.admin_port)? {
        tokio::spawn(admin::serve(
            Listener::new(l, "admin", metrics.accept_errors("admin")),
            admin.clone(),
        ));
    }

    let mut accept_tasks = Vec::new();
    for (listener, target) in listeners {
        accept_tasks.push(tokio::spawn(proxy::accept_loop(
            listener,
            target,
            shared.clone(),
        )));
    }
    tokio::spawn(tls::watch(store.clone(), metrics.clone()));
    tokio::spawn(crate::upstream::reap_idle(shared.clone()));
    admin.listeners_up.store(true, Ordering::Relaxed);
    tracing::info!(
        inbound_port = cfg.inbound_port,
        admin_port = cfg.admin_port,
        identity = %state.key_pair.own.display_name(),
        trust_bundle = %state.trust.path.display(),
        trusted = %state.trust.subjects(),
        mode = cfg.mtls_mode.as_str(),
        policy = cfg.policy.as_str(),
        "kube-mtls-sidecar ready"
    );
    tls::warn_if_own_issuer_untrusted(&state);
    drop(state);
    warn_of_open_modes(&cfg);

    shutdown_signal.await;
    tracing::info!(drain_timeout = ?cfg.drain_timeout, "shutting down: draining connections");
    shared.draining.store(true, Ordering::Relaxed);
    shared.shutdown.cancel();
    for t in accept_tasks.into_iter().chain(accept_tasks_outbound) {
        let _ = t.await;
    }
    shared.tracker.close();
    if tokio::time::timeout(cfg.drain_timeout, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.tracker.len(),
            "drain deadline reached; closing remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
    Ok(())
}
