//! Regression tests for the sidecar's limits and error accounting, each driven
//! black-box against the real binary: timeouts that must not cut live requests,
//! refusals that must reach the client, client mistakes that must not count
//! against the app, and limits that unauthenticated peers must not exhaust.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube_mtls_tests::app::{self, echo};
use kube_mtls_tests::certs::{KubeletDir, Leaf, TestCa, Validity};
use kube_mtls_tests::deadline::{PATIENCE, within};
use kube_mtls_tests::process::{Sidecar, free_port, output, plain_get, wait_until};
use kube_mtls_tests::sidecar_env::{
    CLIENT_ID, SERVER_ID, SidecarEnv as Env, sample, server_certs, sum,
};
use kube_mtls_tests::tls::{HttpConn, connect, connect_from, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What only these tests need of the shared environment.
trait LimitsEnv {
    /// An HTTP/1.1 client config presenting an allowed caller's certificate.
    fn h1(&self) -> Arc<rustls::ClientConfig>;
    /// An HTTP/2 client config presenting an allowed caller's certificate.
    fn h2(&self) -> Arc<rustls::ClientConfig>;
    /// The caller's certificate files, for curl and openssl.
    fn write_caller_files(&self) -> (tempfile::TempDir, [String; 3]);
}

impl LimitsEnv for Env {
    fn h1(&self) -> Arc<rustls::ClientConfig> {
        self.client_with(&self.ca.issue(&Leaf::spiffe(CLIENT_ID)), &["http/1.1"])
    }

    fn h2(&self) -> Arc<rustls::ClientConfig> {
        self.client_with(&self.ca.issue(&Leaf::spiffe(CLIENT_ID)), &["h2"])
    }

    fn write_caller_files(&self) -> (tempfile::TempDir, [String; 3]) {
        let dir = tempfile::tempdir().unwrap();
        self.ca
            .issue(&Leaf::spiffe(CLIENT_ID))
            .write_dir(dir.path())
            .unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let files = [p("tls.crt"), p("tls.key"), p("ca.crt")];
        (dir, files)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_requests_waiting_for_the_app() {
    let env = Env::start(&["--idle-timeout", "1s"]).await;
    // The app answers after 2.5 s, more than twice the idle timeout, while not
    // a byte moves on the client connection.
    let (h1, h2) = tokio::join!(
        get(env.addr, env.h1(), "/slow?ms=2500", &[]),
        get(env.addr, env.h2(), "/slow?ms=2500", &[]),
    );
    for (what, reply) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        let reply = reply.unwrap_or_else(|e| {
            panic!(
                "{what}: the slow request was cut: {e:#}\n{}",
                env.sidecar.proc.logs()
            )
        });
        assert_eq!(reply.status, 200, "{what}: {}", reply.body);
        assert_eq!(echo(&reply.body).path, "/slow?ms=2500");
    }

    // A connection with nothing in flight is still closed once idle.
    let mut tls = connect(env.addr, env.h1()).await.unwrap();
    let mut buf = Vec::new();
    let what = "the sidecar to close an idle keep-alive connection";
    within(PATIENCE, what, async {
        tls.write_all(b"GET /quick HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("the request is written");
        // Closed with or without close_notify: either ends the read.
        let _ = tls.read_to_end(&mut buf).await;
    })
    .await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

/// One whole HTTP/1.1 answer with a `Content-Length` body, read off `tls`.
async fn read_answer(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .expect("the answer has a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection ended inside an answer: {text}");
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_unfinished_after_the_header_read_timeout_closes_the_connection() {
    let env = Env::start(&["--header-read-timeout", "1s"]).await;
    let mut tls = connect(env.addr, env.h1()).await.unwrap();
    // Whole requests first: each head read starts a deadline and ends it.
    for i in 0..3 {
        let answer = within(PATIENCE, "a quick answer", async {
            let req = format!("GET /quick/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            read_answer(&mut tls).await
        })
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
    }
    // Then a head that never ends.
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    within(
        PATIENCE,
        "the sidecar to close a connection with a stalled head",
        async {
            tls.write_all(b"GET /stalled HTTP/1.1\r\nHost: loc")
                .await
                .unwrap();
            let _ = tls.read_to_end(&mut buf).await;
        },
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s header read timeout"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_answers_504_and_counts_it() {
    let env = Env::start(&["--upstream-timeout", "1s"]).await;
    let quick = get(env.addr, env.h1(), "/quick", &[]).await.unwrap();
    assert_eq!(quick.status, 200);
    let (h1, h2) = tokio::join!(
        get(env.addr, env.h1(), "/slow?ms=4000", &[]),
        get(env.addr, env.h2(), "/slow?ms=4000", &[]),
    );
    for (what, reply) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 504, "{what}: {}", reply.body);
        assert!(reply.body.contains("did not answer"), "{}", reply.body);
    }
    let m = env.metrics();
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_upstream_timeouts_total{direction=\"inbound\"}"
        ),
        2.0,
        "{m}"
    );
    assert!(
        env.sidecar.proc.logs().contains("upstream timeout"),
        "{}",
        env.sidecar.proc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_431_reaches_curl_over_http1() {
    let env = Env::start(&["--max-header-size", "4096"]).await;
    let (_files, [crt, key, ca]) = env.write_caller_files();
    let url = format!("https://localhost:{}/big", env.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", env.addr.port());
    // Far more than the sidecar reads before it answers, so most of the
    // request is still unread when it closes.
    let big = format!("x-big: {}", "x".repeat(60_000));
    let out = output(
        Command::new("curl")
            .args([
                "-sS",
                "--http1.1",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
            ])
            .args(["--cacert", &ca, "--cert", &crt, "--key", &key])
            .args(["-H", &big, "-o", "/dev/null", "-w", "%{http_code}", &url]),
    );
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "431");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_fails_only_its_http2_stream() {
    let env = Env::start(&["--max-header-size", "4096"]).await;
    let mut conn = HttpConn::open(env.addr, env.h2()).await.unwrap();
    assert!(matches!(conn, HttpConn::H2(_)));
    // One request first, so the client has acknowledged the sidecar's settings.
    assert_eq!(conn.send("GET", "/a", &[], "").await.unwrap().status, 200);
    for size in [8_000, 20_000] {
        let big = "x".repeat(size);
        let r = conn
            .send("GET", "/big", &[("x-big", &big)], "")
            .await
            .unwrap_or_else(|e| panic!("{size}-byte header: {e:#}"));
        assert_eq!(r.status, 431, "{size}-byte header");
        let r = conn
            .send("GET", "/after", &[], "")
            .await
            .unwrap_or_else(|e| {
                panic!("the connection did not survive a {size}-byte header: {e:#}")
            });
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        sample(&env.metrics(), "kube_mtls_sidecar_requests_total"),
        3.0
    );
}

/// Sends one raw HTTP/1.1 request over mTLS and returns what came back
/// before the sidecar closed the connection.
async fn raw_request(env: &Env, request: &[u8]) -> String {
    let mut tls = connect(env.addr, env.h1()).await.unwrap();
    let mut buf = Vec::new();
    within(PATIENCE, "the sidecar to answer and close", async {
        let _ = tls.write_all(request).await;
        let _ = tls.read_to_end(&mut buf).await;
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_the_clients_400_not_the_apps_502() {
    let env = Env::start(&[]).await;
    let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    let long_extension = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(17_000));
    let bodies = [
        ("non-hex size", "zz\r\nhello\r\n0\r\n\r\n".to_owned()),
        (
            "overflowing size",
            "1ffffffffffffffff\r\nx\r\n0\r\n\r\n".to_owned(),
        ),
        ("over-long size line", long_extension),
    ];
    for (what, body) in &bodies {
        let reply = raw_request(&env, format!("{head}{body}").as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{what}: {reply}");
    }
    let m = env.metrics();
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_upstream_errors_total{direction=\"inbound\"}"
        ),
        0.0,
        "a client's bad framing is not the app's error:\n{m}"
    );
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_client_errors_total{reason=\"malformed_body\"}"
        ),
        3.0,
        "{m}"
    );
    let logs = env.sidecar.proc.logs();
    assert!(!logs.contains("upstream error"), "{logs}");
    // A well-formed chunked body still reaches the app.
    let ok = raw_request(
        &env,
        format!("{head}5\r\nhello\r\n0\r\n\r\n")
            .replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("\"body\":\"hello\""),
        "{ok}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_source_do_not_lock_out_valid_clients() {
    let env = Env::start(&[
        "--max-connections",
        "20",
        "--max-handshakes-per-source",
        "8",
        "--handshake-timeout",
        "60s",
    ])
    .await;
    // 30 TCP connections from 127.0.0.1 that never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..30 {
        let connect = tokio::net::TcpStream::connect(env.addr);
        silent.push(
            within(PATIENCE, "a silent connection", connect)
                .await
                .unwrap(),
        );
    }
    // Every one of them has been through the accept loop (taken a slot or been refused).
    let seen = wait_until(Duration::from_secs(10), || {
        let m = env.metrics();
        sum(&m, "kube_mtls_sidecar_connections_total") + sum(&m, "kube_mtls_sidecar_refusals_total")
            >= 30.0
    });
    assert!(seen, "{}", env.metrics());
    // A valid client from another host is still served.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let tls = connect_from(other, env.addr, env.h1()).await.unwrap();
    let reply = HttpConn::over(tls)
        .await
        .unwrap()
        .send("GET", "/", &[], "")
        .await
        .unwrap_or_else(|e| panic!("valid client locked out: {e:#}\n{}", env.metrics()));
    assert_eq!(reply.status, 200);
    let m = env.metrics();
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"source_handshake_limit\"}"
        ) >= 22.0,
        "{m}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_identity_headers_never_reach_the_app() {
    let env = Env::start(&[]).await;
    let spoofed = [
        ("X_Forwarded_Client_Cert", "By=spiffe://evil"),
        ("x_forwarded_for", "6.6.6.6"),
        ("X_Forwarded_Proto", "http"),
        ("x-forwarded_host", "evil.example"),
        ("X_Forwarded_Port", "1"),
        ("X_Real_IP", "6.6.6.6"),
        ("x_app_setting", "kept"),
    ];
    for cfg in [env.h1(), env.h2()] {
        let reply = get(env.addr, cfg, "/", &spoofed).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let e = echo(&reply.body);
        let leaked: Vec<_> = e
            .headers
            .iter()
            .filter(|(k, _)| k.contains('_') && k != "x_app_setting")
            .collect();
        assert!(leaked.is_empty(), "{} leaked {leaked:?}", e.version);
        assert_eq!(e.header("x_app_setting"), Some("kept"));
        assert!(!reply.body.contains("evil") && !reply.body.contains("6.6.6.6"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_counted_once() {
    let env = Env::start(&["--allowed-clients", CLIENT_ID]).await;
    let intruder = env
        .ca
        .issue(&Leaf::spiffe("spiffe://cluster.local/ns/x/sa/y"));
    let label = "kube_mtls_sidecar_refusals_total{reason=\"identity_not_allowed\"}";
    let mut conn = HttpConn::open(env.addr, env.client_with(&intruder, &["http/1.1"]))
        .await
        .unwrap();
    assert_eq!(conn.send("GET", "/", &[], "").await.unwrap().status, 403);
    assert_eq!(sample(&env.metrics(), label), 1.0, "{}", env.metrics());
    assert_eq!(conn.send("GET", "/", &[], "").await.unwrap().status, 403);
    assert_eq!(sample(&env.metrics(), label), 2.0, "{}", env.metrics());
}

/// The /ready status once the admin port answers at all.
fn ready_status(sidecar: &Sidecar) -> u16 {
    let mut status = 0;
    let answered = wait_until(Duration::from_secs(20), || {
        plain_get(sidecar.admin, "/ready").is_some_and(|(s, _)| {
            status = s;
            true
        })
    });
    assert!(answered, "{}", sidecar.proc.logs());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_intermediate_makes_the_sidecar_unready() {
    let root = TestCa::new("root");
    let expired = root.intermediate("expired intermediate", Validity::Expired);
    let current = root.intermediate("current intermediate", Validity::Current);
    let app = app::start().await;

    // At start-up: a valid leaf under an expired intermediate.
    let dir = tempfile::tempdir().unwrap();
    expired
        .issue(&Leaf::spiffe(SERVER_ID))
        .write_dir(dir.path())
        .unwrap();
    let sidecar = Sidecar::spawn(dir.path(), &[(free_port(), app.port())], &[]);
    assert_eq!(ready_status(&sidecar), 503, "{}", sidecar.proc.logs());
    let (_, body) = plain_get(sidecar.admin, "/ready").unwrap();
    assert!(body.contains("not valid"), "{body}");
    drop(sidecar);

    // After a rotation from a good chain to one with an expired intermediate.
    let certs = tempfile::tempdir().unwrap();
    let good = current.issue(&Leaf::spiffe(SERVER_ID));
    let mut kdir = KubeletDir::create(&certs.path().join("certs"), &good).unwrap();
    let sidecar = Sidecar::start(&kdir.path, &[(free_port(), app.port())], &[]);
    let expiry = "kube_mtls_sidecar_certificate_expiry_timestamp_seconds";
    let metrics = || plain_get(sidecar.admin, "/metrics").unwrap().1;
    assert!(sample(&metrics(), expiry) > 3.0e9);
    kdir.swap(&expired.issue(&Leaf::spiffe(SERVER_ID))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            plain_get(sidecar.admin, "/ready").is_some_and(|(s, _)| s == 503)
        }),
        "/ready stayed 200 with an expired intermediate:\n{}",
        sidecar.proc.logs()
    );
    // The expiry gauge reports when the chain stopped verifying (2021).
    assert!(sample(&metrics(), expiry) < 1.7e9, "{}", metrics());
}

#[test]
fn new_limits_are_validated_naming_flag_and_variable() {
    let (_ca, dir) = server_certs();
    let d = dir.path().to_str().unwrap();
    for (env_var, value, flag) in [
        ("KUBE_MTLS_MAX_HANDSHAKES", "0", "--max-handshakes"),
        (
            "KUBE_MTLS_MAX_HANDSHAKES_PER_SOURCE",
            "0",
            "--max-handshakes-per-source",
        ),
    ] {
        let mut cmd = Command::new(kube_mtls_tests::bins::bin("kube-mtls-sidecar"));
        cmd.args(["--cert-dir", d, "--outbound-port", "0"])
            .args(["--inbound-port", &free_port().to_string()])
            .args(["--admin-port", &free_port().to_string()])
            .env(env_var, value);
        let mut p = kube_mtls_tests::process::Proc::spawn(cmd);
        let status = p.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{env_var}={value} must stop the sidecar: {status:?}"
        );
        let err = p.logs();
        assert!(err.contains(flag) && err.contains(env_var), "{err}");
    }
}
