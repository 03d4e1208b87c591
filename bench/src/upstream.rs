//! The upstreams every contestant forwards to: a small HTTP server that answers
//! every request with 200 and a short body, over HTTP/1.1 or cleartext HTTP/2.
//! It reads (and drops) request bodies, so POST scenarios work too. And for
//! the L4 scenarios, a TCP echo and sink ([`serve_tcp`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// What the upstream answers: small, like a health or lookup endpoint.
pub const BODY: &[u8] = b"hello from the upstream\n";

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

/// Serves until the process is stopped.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    accept_each(listen, |tcp| async move {
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service_fn(answer))
            .await;
    })
    .await
}

/// The L4 scenarios' upstream ([`crate::tcp`]): echo or sink, chosen by the
/// first byte of each connection. Serves until the process is stopped.
pub async fn serve_tcp(listen: SocketAddr) -> std::io::Result<()> {
    accept_each(listen, |tcp| async move {
        let _ = tcp_connection(tcp).await;
    })
    .await
}

/// Accepts connections on `listen` (Nagle off) and runs `serve` on each in
/// a task of its own.
async fn accept_each<F, Fut>(listen: SocketAddr, serve: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(tcp));
    }
}

async fn tcp_connection(mut tcp: TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    match tcp.read_u8().await? {
        crate::tcp::ECHO => loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            tcp.write_all(&buf[..n]).await?;
        },
        crate::tcp::SINK => loop {
            let mut left = tcp.read_u64().await?;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = tcp.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            tcp.write_all(crate::tcp::SINK_DONE).await?;
        },
        other => Err(std::io::Error::other(format!(
            "unknown mode byte {other:#x}"
        ))),
    }
}
