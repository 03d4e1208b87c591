//! The HTTPS admission endpoint and the plain health/metrics port.
//!
//! The serving certificate is read from files (`tls.crt`, `tls.key`, written by
//! cert-manager into a mounted Secret) and re-read when they change: each TLS
//! handshake asks a resolver for the current certificate, so a rotation takes
//! effect for new connections without a restart. A rotation that does not load
//! is refused and logged; the previous certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::admission::Admission;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "--tls-dir (KUBE_MTLS_WEBHOOK_TLS_DIR): {0}. Fix: mount the webhook's serving certificate Secret (tls.crt, tls.key) there"
    )]
    Certificate(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The serving certificate, swapped in place on rotation.
#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    current: ArcSwap<CertifiedKey>,
    files: ArcSwap<Vec<u8>>,
}

fn load(dir: &Path) -> Result<(CertifiedKey, Vec<u8>), ServeError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| {
            ServeError::Certificate(format!("cannot read {}: {e}", dir.join(name).display()))
        })
    };
    let (crt, key) = (read("tls.crt")?, read("tls.key")?);
    let chain = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Certificate(format!("tls.crt is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(ServeError::Certificate(
            "tls.crt holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| ServeError::Certificate(format!("tls.key is not a PEM key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| ServeError::Certificate(format!("tls.key does not fit tls.crt: {e}")))?;
    let mut files = crt;
    files.extend_from_slice(&std::fs::read(dir.join("tls.key")).unwrap_or_default());
    Ok((certified, files))
}

impl ReloadingCert {
    pub fn open(dir: &Path) -> Result<Arc<Self>, ServeError> {
        let (key, files) = load(dir)?;
        Ok(Arc::new(ReloadingCert {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(key),
            files: ArcSwap::from_pointee(files),
        }))
    }

    /// Re-reads the files; returns whether a new certificate is serving.
    pub fn reload(&self) -> Result<bool, ServeError> {
        let (key, files) = load(&self.dir)?;
        if **self.files.load() == files {
            return Ok(false);
        }
        self.current.store(Arc::new(key));
        self.files.store(Arc::new(files));
        Ok(true)
    }

    /// Checks the files every few seconds (kubelet updates mounted Secrets by
    /// an atomic symlink swap, so a poll never sees half a rotation for long).
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => tracing::info!("serving certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "rotated serving certificate refused; the previous one keeps serving")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server config that always serves the current certificate.
pub fn tls_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn mutate(State(admission): State<Arc<Admission>>, body: Bytes) -> Response {
    match admission.review(&body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The admission router: `POST /mutate`.
pub fn router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(admission)
}

/// Serves `router` over TLS on `listener` until the process ends. Failed
/// accepts (out of file descriptors) are waited out with back-off and
/// counted in `accept_errors` ([`kube_mtls_listener::Listener`]).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    accept_errors: prometheus_client::metrics::counter::Counter,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = kube_mtls_listener::Listener::new(listener, "https", accept_errors);
    loop {
        let (stream, peer) = listener.accept().await;
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// State of the plain port.
pub struct Health {
    pub ready: AtomicBool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// `/healthz`, `/readyz`, `/metrics` on a plain port.
pub fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    h.metrics.encode(),
                )
            }),
        )
        .with_state(health)
}

pub async fn bind(port: u16) -> Result<TcpListener, ServeError> {
    let addr = format!("0.0.0.0:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
