//! A stand-in app: an HTTP server that answers every request with a JSON echo
//! of what it received, so tests can see exactly what the sidecar forwarded.
//!
//! `GET /slow?ms=N` waits N milliseconds first (for in-flight requests during
//! shutdown); `/close` answers with `Connection: close` and then closes the
//! connection; `/grpc.health.v1.Health/Check` answers SERVING in gRPC framing.
//! Every echo says which of the app's connections the request came on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The echo of one request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub version: String,
    /// Header name (lower case) and value, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Which connection the app received the request on: 1 for the first it
    /// accepted, 2 for the next, and so on.
    #[serde(default)]
    pub connection: u64,
}

impl Echo {
    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }
}

/// Parses the echo app's reply body, panicking with the body if it is not an echo.
pub fn echo(body: &str) -> Echo {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo ({e}): {body}"))
}

async fn answer(
    req: Request<Incoming>,
    connection: u64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let version = format!("{:?}", req.version());
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(ms) = path
        .strip_prefix("/slow?ms=")
        .and_then(|m| m.parse::<u64>().ok())
    {
        // Said at the start, so a test knows the request is in flight.
        println!("app: answering {path} after {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/grpc.health.v1.Health/Check" {
        // A gRPC reply: one message {status: SERVING}, then grpc-status 0 in trailers.
        return Ok(grpc_serving());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let echo = Echo {
        method,
        path,
        version,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        connection,
    };
    let json = serde_json::to_vec(&echo).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if echo.path == "/close" {
        resp.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
    }
    Ok(resp)
}

fn grpc_serving() -> Response<Full<Bytes>> {
    // hyper's Full body has no trailers, so this is a "trailers-only"-style reply
    // with grpc-status in the headers, which gRPC clients accept.
    let mut resp = Response::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    resp.headers_mut()
        .insert("grpc-status", http::HeaderValue::from_static("0"));
    resp
}

/// The next connection on `listener`. A failed accept (out of descriptors,
/// as in the descriptor-exhaustion tests) pauses the loop briefly instead of
/// retrying at once, which would spin a core.
async fn accept_next(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Serves the echo app on `listener`: HTTP/1.1 and cleartext HTTP/2 (prior knowledge).
pub async fn serve(listener: TcpListener) {
    let mut accepted = 0;
    loop {
        let stream = accept_next(&listener).await;
        accepted += 1;
        let service = hyper::service::service_fn(move |req| answer(req, accepted));
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the echo app on `listener` until `stop` turns true, then lets every
/// connection finish the request it is answering and closes it (a
/// well-behaved app on SIGTERM).
pub async fn serve_until(listener: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut count = 0;
    loop {
        tokio::select! {
            stream = accept_next(&listener) => {
                count += 1;
                let service = hyper::service::service_fn(move |req| answer(req, count));
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(graceful.watch(conn));
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Starts the echo app on a free port of 127.0.0.1 in this process.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(serve(listener));
    addr
}

/// A raw TCP echo server (for TCP-mode ports): writes back what it reads.
pub async fn start_tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let mut s = accept_next(&listener).await;
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
