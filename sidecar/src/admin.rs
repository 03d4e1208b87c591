//! The plain-HTTP admin port: health, metrics, and kubelet probes for the app.
//!
//! kubelet cannot present a client certificate, so probes aimed at a captured
//! app port would fail at the mTLS listener. The webhook rewrites them to
//! `/app-health/<container>/<probe>` here, and this module performs the probe
//! the pod spec described against the app on localhost. Only the configured
//! probe targets are reachable: the admin port is not a way around mTLS.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{GrpcProbe, HttpGetProbe, ProbeTarget};
use crate::rewrite::{Form, retarget, socket_authority};
use crate::shared::{Body, Shared, text};
use crate::upstream::send_multiplexed;
use kube_mtls_listener::Listener;

/// Time allowed for one probe of the app; kubelet applies its own timeout on top.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// State the admin endpoints report.
pub struct Admin {
    pub shared: Arc<Shared>,
    /// Set once every listener is bound.
    pub listeners_up: AtomicBool,
}

impl Admin {
    fn ready(&self) -> Result<(), &'static str> {
        if self.shared.draining() {
            return Err("draining");
        }
        if !self.listeners_up.load(Ordering::Relaxed) {
            return Err("listeners not up");
        }
        if !self.shared.tls.current().valid_now() {
            return Err("a certificate in the served chain (tls.crt) is not valid now");
        }
        Ok(())
    }
}

/// Serves the admin port until the process exits (it stays up while draining,
/// so `/ready` can say 503).
pub async fn serve(listener: Listener, admin: Arc<Admin>) {
    // Never cancelled: the admin port outlives the drain.
    let never = CancellationToken::new();
    listener
        .run(never, |stream, _| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| route(req, admin.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        })
        .await;
}

async fn route(req: Request<Incoming>, admin: Arc<Admin>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let resp = match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match admin.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut r = text(StatusCode::OK, &admin.shared.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        p if p.starts_with("/app-health/") => {
            let key = &p["/app-health/".len()..];
            match admin.shared.cfg.app_probes.get(key) {
                Some(target) => probe(target, &admin.shared).await,
                None => text(StatusCode::NOT_FOUND, "no such probe\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

async fn probe(target: &ProbeTarget, shared: &Shared) -> Response<Body> {
    let result = if let Some(h) = &target.http_get {
        http_probe(h, shared).await
    } else if let Some(t) = &target.tcp_socket {
        tcp_probe(t.port).await
    } else if let Some(g) = &target.grpc {
        grpc_probe(g, shared).await
    } else {
        Err("probe has no action".to_owned())
    };
    match result {
        Ok(resp) => resp,
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("probe failed: {why}\n"),
        ),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

async fn tcp_probe(port: u16) -> Result<Response<Body>, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(local(port))).await {
        Ok(Ok(_)) => Ok(text(StatusCode::OK, "tcp connect ok\n")),
        Ok(Err(e)) => Err(format!("tcp connect to port {port}: {e}")),
        Err(_) => Err(format!("tcp connect to port {port} timed out")),
    }
}

fn probe_request(h: &HttpGetProbe) -> Result<Request<Body>, String> {
    let uri: Uri = format!("http://127.0.0.1:{}{}", h.port, h.path)
        .parse()
        .map_err(|e| format!("bad probe path: {e}"))?;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::USER_AGENT, "kube-probe (via kube-mtls-sidecar)");
    for hd in &h.http_headers {
        let name = HeaderName::from_bytes(hd.name.as_bytes())
            .map_err(|e| format!("bad probe header: {e}"))?;
        req = req.header(name, hd.value.as_str());
    }
    req.body(Empty::new().map_err(|n| match n {}).boxed())
        .map_err(|e| e.to_string())
}

/// Passes the app's status through: kubelet counts 200-399 as success.
async fn http_probe(h: &HttpGetProbe, shared: &Shared) -> Result<Response<Body>, String> {
    let req = probe_request(h)?;
    let fut = async {
        if h.scheme.eq_ignore_ascii_case("HTTPS") {
            https_request(h.port, req).await.map(|r| r.status())
        } else {
            let mut req = req;
            let app = socket_authority(local(h.port));
            retarget(&mut req, &app, Version::HTTP_11, Form::Origin);
            send_multiplexed(&shared.upstream.idle_h1, h.port, req)
                .await
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        }
    };
    let status = tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_owned())??;
    Ok(text(status, &format!("app answered {status}\n")))
}

/// kubelet does not verify the certificate of an HTTPS probe target, and neither
/// does this: the connection never leaves the pod's loopback.
async fn https_request(port: u16, req: Request<Body>) -> Result<Response<Incoming>, String> {
    let tcp = TcpStream::connect(local(port))
        .await
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(|e| e.to_string())
}

#[derive(Debug)]
struct AcceptAnyServerCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = crate::tls::provider();
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = crate::tls::provider();
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The gRPC health-checking protocol (grpc.health.v1.Health/Check), encoded by
/// hand: the request is `{service: string}` (field 1), the reply
/// `{status: enum}` (field 1), SERVING = 1.
async fn grpc_probe(g: &GrpcProbe, shared: &Shared) -> Result<Response<Body>, String> {
    let mut msg = BytesMut::new();
    if !g.service.is_empty() {
        msg.put_u8(0x0a);
        put_varint(&mut msg, g.service.len() as u64);
        msg.put_slice(g.service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    let uri: Uri = format!("http://127.0.0.1:{}/grpc.health.v1.Health/Check", g.port)
        .parse()
        .map_err(|e| format!("bad gRPC probe target: {e}"))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(frame.freeze()).map_err(|n| match n {}).boxed())
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = shared
            .upstream
            .http2
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        let header_status = grpc_status(resp.headers());
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let status = collected.trailers().and_then(grpc_status).or(header_status);
        Ok::<_, String>((status, collected.to_bytes()))
    };
    let (status, body) = tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_owned())??;
    if status != Some(0) {
        return Err(format!(
            "grpc-status {}",
            status.map_or("missing".into(), |s| s.to_string())
        ));
    }
    match serving_status(body) {
        Some(1) => Ok(text(StatusCode::OK, "SERVING\n")),
        other => Err(format!("health status {}", other.unwrap_or(0))),
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Reads field 1 (varint) of the first message in a gRPC body.
fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 {
        return None;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    let mut msg = body.get(..len)?;
    while !msg.is_empty() {
        let tag = read_varint(&mut msg)?;
        match tag & 7 {
            0 => {
                let v = read_varint(&mut msg)?;
                if tag >> 3 == 1 {
                    return Some(v);
                }
            }
            2 => {
                let l = read_varint(&mut msg)? as usize;
                msg = msg.get(l..)?;
            }
            _ => return None,
        }
    }
    Some(0)
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reply_decoding() {
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])),
            Some(1)
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2])),
            Some(2)
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])),
            Some(0)
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])),
            None
        );
    }
}
