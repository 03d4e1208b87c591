//! The agent's Prometheus metrics, prefixed `kube_mtls_cni_`, on plain HTTP
//! (`GET /metrics`): repairs by action and result, re-insertions of the
//! conflist entry after another agent rewrote the file (a count that keeps
//! growing means two agents fight over it), and whether the entry is in place.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Repair {
    action: &'static str,
    result: &'static str,
}

/// The agent's counters and gauge.
pub struct Metrics {
    registry: Registry,
    repairs: Family<Repair, Counter>,
    /// Entries put back after the file was rewritten without it.
    pub reinsertions: Counter,
    /// 1 while the primary configuration holds the entry.
    pub entry_in_place: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kube_mtls_cni");
        let repairs = Family::<Repair, Counter>::default();
        registry.register(
            "repairs",
            "Pods that started before the plugin was installed, by action (reinstall, delete) and result (success, failure)",
            repairs.clone(),
        );
        let reinsertions = Counter::default();
        registry.register(
            "conflist_reinsertions",
            "Times the entry was put back into the primary CNI configuration after the file was rewritten without it",
            reinsertions.clone(),
        );
        let entry_in_place = Gauge::default();
        registry.register(
            "entry_in_place",
            "1 while the primary CNI configuration holds the kube-mtls-cni entry, 0 otherwise",
            entry_in_place.clone(),
        );
        Metrics {
            registry,
            repairs,
            reinsertions,
            entry_in_place,
        }
    }

    /// Counts one repair.
    pub fn repaired(&self, action: &'static str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.repairs.get_or_create(&Repair { action, result }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metrics endpoint cannot listen.
#[derive(Debug, thiserror::Error)]
#[error(
    "--metrics-port (KUBE_MTLS_METRICS_PORT): cannot listen on {addr}: {source}. Fix: choose a free port, or 0 to turn the endpoint off"
)]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds the metrics port on every IPv4 address.
pub async fn bind(port: u16) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `GET /metrics` on `listener` until the process exits.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| route(req, metrics.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics.encode()),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: GET /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.repaired("reinstall", true);
        m.reinsertions.inc();
        m.entry_in_place.set(1);
        let text = m.encode();
        assert!(
            text.contains(r#"kube_mtls_cni_repairs_total{action="reinstall",result="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("kube_mtls_cni_conflist_reinsertions_total 1"),
            "{text}"
        );
        assert!(text.contains("kube_mtls_cni_entry_in_place 1"), "{text}");
    }
}
