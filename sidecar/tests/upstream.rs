//! The sidecar's connections to the app, seen from the app: an HTTP/1.1
//! client connection keeps one connection to the app, an HTTP/2 client's
//! requests take turns on parked ones, a connection the app closes is
//! replaced without the client noticing, and a client connection outlives the
//! app being down. Real binary, real sockets.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use kube_mtls_tests::app::{self, echo};
use kube_mtls_tests::deadline::{PATIENCE, within};
use kube_mtls_tests::process::{Sidecar, free_port, wait_until};
use kube_mtls_tests::sidecar_env::{CLIENT_ID, SidecarEnv as Env, sample, server_certs};
use kube_mtls_tests::tls::{HttpConn, client_config};
use rustls::ClientConfig;
use tokio::net::TcpListener;

const ACTIVE_INBOUND: &str = "kube_mtls_sidecar_active_connections{direction=\"inbound\"}";
const UPSTREAM_ERRORS: &str = "kube_mtls_sidecar_upstream_errors_total{direction=\"inbound\"}";

/// `n` GETs of `path` on `conn`, each answered 200 by the echo app; the app
/// connection each came on, in order.
async fn app_connections(conn: &mut HttpConn, path: &str, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for i in 0..n {
        let reply = conn.send("GET", path, &[], "").await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        seen.push(echo(&reply.body).connection);
    }
    seen
}

fn distinct(ids: &[u64]) -> usize {
    ids.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_connection_keeps_one_app_connection() {
    let env = Env::start(&[]).await;
    let cfg = env.client(&env.caller(CLIENT_ID));
    let mut first = HttpConn::open(env.addr, cfg.clone()).await.unwrap();
    let ids = app_connections(&mut first, "/one", 20).await;
    assert_eq!(
        distinct(&ids),
        1,
        "one app connection for 20 requests: {ids:?}"
    );

    // A second client connection, open alongside, has its own.
    let mut second = HttpConn::open(env.addr, cfg.clone()).await.unwrap();
    let other = app_connections(&mut second, "/two", 5).await;
    assert_eq!(distinct(&other), 1, "{other:?}");
    assert_ne!(
        other[0], ids[0],
        "two open client connections share no app connection"
    );

    // Once both have ended, a new client connection reuses one of theirs.
    drop((first, second));
    let m = || sample(&env.metrics(), ACTIVE_INBOUND);
    assert!(wait_until(PATIENCE, || m() == 0.0), "{}", env.metrics());
    let mut third = HttpConn::open(env.addr, cfg).await.unwrap();
    let again = app_connections(&mut third, "/three", 1).await;
    assert!(
        again[0] == ids[0] || again[0] == other[0],
        "a new client connection reuses a parked app connection: {again:?} vs {ids:?} {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_closing_every_connection_costs_the_client_nothing() {
    let env = Env::start(&[]).await;
    let mut conn = HttpConn::open(env.addr, env.client(&env.caller(CLIENT_ID)))
        .await
        .unwrap();
    // Each answer says `Connection: close`, so each request needs a new app connection.
    let ids = app_connections(&mut conn, "/close", 20).await;
    assert_eq!(
        distinct(&ids),
        20,
        "a new app connection each time: {ids:?}"
    );
    // And the client connection is still good for more.
    let after = app_connections(&mut conn, "/after", 3).await;
    assert_eq!(distinct(&after), 1, "{after:?}");
    let m = env.metrics();
    assert_eq!(sample(&m, UPSTREAM_ERRORS), 0.0, "{m}");
}

fn h2_client(env: &Env) -> Arc<ClientConfig> {
    client_config(&env.ca.cert_pem, Some(&env.caller(CLIENT_ID)), &["h2"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_take_turns_on_a_parked_app_connection() {
    let env = Env::start(&[]).await;
    let mut h2 = HttpConn::open(env.addr, h2_client(&env)).await.unwrap();
    assert!(matches!(h2, HttpConn::H2(_)), "ALPN must pick h2");
    // Each answer ends before the next request: the connection it came on
    // is back in the idle list by then.
    let ids = app_connections(&mut h2, "/h2", 20).await;
    assert_eq!(
        distinct(&ids),
        1,
        "one app connection for 20 requests: {ids:?}"
    );

    // An HTTP/1.1 client connection takes the same parked connection.
    let h1 = client_config(
        &env.ca.cert_pem,
        Some(&env.caller(CLIENT_ID)),
        &["http/1.1"],
    );
    let mut h1 = HttpConn::open(env.addr, h1).await.unwrap();
    let after = app_connections(&mut h1, "/h1", 2).await;
    assert_eq!(after, vec![ids[0]; 2], "{ids:?}");

    // While the HTTP/1.1 client holds it, HTTP/2 requests get another.
    let other = app_connections(&mut h2, "/h2-again", 3).await;
    assert_eq!(distinct(&other), 1, "{other:?}");
    assert_ne!(other[0], ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_closing_every_connection_costs_an_http2_client_nothing() {
    let env = Env::start(&[]).await;
    let mut h2 = HttpConn::open(env.addr, h2_client(&env)).await.unwrap();
    // `Connection: close` answers: none of those connections may be used again.
    let ids = app_connections(&mut h2, "/close", 10).await;
    assert_eq!(
        distinct(&ids),
        10,
        "a new app connection each time: {ids:?}"
    );
    let after = app_connections(&mut h2, "/after", 3).await;
    assert_eq!(distinct(&after), 1, "{after:?}");
    let m = env.metrics();
    assert_eq!(sample(&m, UPSTREAM_ERRORS), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_comes_up_is_reached_on_the_same_client_connection() {
    let (ca, dir) = server_certs();
    let (listen, app_port) = (free_port(), free_port());
    let _sidecar = Sidecar::start(dir.path(), &[(listen, app_port)], &[]);
    let cfg: Arc<rustls::ClientConfig> = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&kube_mtls_tests::certs::Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    let mut conn = HttpConn::open(SocketAddr::from(([127, 0, 0, 1], listen)), cfg)
        .await
        .unwrap();
    let down = conn.send("GET", "/", &[], "").await.unwrap();
    assert_eq!(down.status, 502, "{}", down.body);
    let expected = format!("the app is not accepting connections on 127.0.0.1:{app_port}");
    assert!(down.body.contains(&expected), "{}", down.body);

    let app = TcpListener::bind(("127.0.0.1", app_port)).await.unwrap();
    tokio::spawn(app::serve(app));
    let ids = app_connections(&mut conn, "/up", 3).await;
    assert_eq!(distinct(&ids), 1, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_without_host_reaches_the_app_with_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start(&[]).await;
    let mut tls = kube_mtls_tests::tls::connect(env.addr, env.client(&env.caller(CLIENT_ID)))
        .await
        .unwrap();
    let mut raw = Vec::new();
    within(PATIENCE, "the answer to an HTTP/1.0 request", async {
        tls.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        // HTTP/1.0 without keep-alive: the sidecar closes after the answer.
        let _ = tls.read_to_end(&mut raw).await;
    })
    .await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    let seen = echo(body);
    assert_eq!(seen.path, "/old");
    let hosts: Vec<_> = seen.headers.iter().filter(|(n, _)| n == "host").collect();
    let app = format!("127.0.0.1:{}", env.app.port());
    assert_eq!(hosts.len(), 1, "{:?}", seen.headers);
    assert_eq!(hosts[0].1, app, "{:?}", seen.headers);
}
