//! The real `kube-mtls-sidecar` binary in front of a real app, driven by real
//! clients: the rustls/hyper test client, `curl` and `openssl s_client`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_mtls_tests::app::{self, echo};
use kube_mtls_tests::certs::{KubeletDir, Leaf, TestCa, Usage, Validity};
use kube_mtls_tests::deadline::{PATIENCE, within};
use kube_mtls_tests::process::{
    Sidecar, free_port, output, output_with_input, plain_get, wait_until,
};
use kube_mtls_tests::sidecar_env::{CLIENT_ID, SERVER_ID, SidecarEnv as Env, sample, server_certs};
use kube_mtls_tests::tls::{HttpConn, client_config, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_caller_reaches_app_with_xfcc_and_spoofed_headers_replaced() {
    let env = Env::start(&[]).await;
    let id = env.caller(CLIENT_ID);
    let reply = get(
        env.addr,
        env.client(&id),
        "/orders?x=1",
        &[
            (
                "x-forwarded-client-cert",
                "By=spiffe://evil;URI=spiffe://cluster.local/ns/admin/sa/root",
            ),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let e = echo(&reply.body);
    assert_eq!(e.path, "/orders?x=1");
    let xfcc = e.header_all("x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "exactly one XFCC: {xfcc:?}");
    let xfcc = xfcc[0];
    assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
    assert!(xfcc.contains(&format!(";URI={CLIENT_ID}")), "{xfcc}");
    assert!(xfcc.contains(";DNS=localhost"), "{xfcc}");
    assert!(xfcc.contains("Subject=\"CN=front"), "{xfcc}");
    assert!(!xfcc.contains("evil") && !xfcc.contains("admin"), "{xfcc}");
    // Hash is the hex SHA-256 of the client certificate's DER.
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(id.cert_pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer| d.to_vec())
        .unwrap();
    let hash: String = ring_hex(&der);
    assert!(xfcc.contains(&format!("Hash={hash};")), "{xfcc} vs {hash}");
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e.header_all("x-forwarded-proto"), vec!["https"]);
    assert!(e.header("x-real-ip").is_none());
    assert!(e.header("forwarded").is_none());
    assert!(
        e.header("x-hop").is_none(),
        "hop-by-hop header named in Connection must go"
    );
    assert_eq!(e.header("host"), Some("localhost"));
}

fn ring_hex(der: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_admits_one_identity_and_refuses_another_with_403() {
    let env = Env::start(&[
        "--allowed-clients",
        "spiffe://cluster.local/ns/web/sa/*,reports.example.com",
    ])
    .await;
    let ok = get(env.addr, env.client(&env.caller(CLIENT_ID)), "/", &[])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let dns_ok = get(
        env.addr,
        env.client(&env.ca.issue(&Leaf::dns("reports.example.com"))),
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(dns_ok.status, 200);

    let intruder = "spiffe://cluster.local/ns/batch/sa/cron";
    let refused = get(env.addr, env.client(&env.caller(intruder)), "/", &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains(intruder), "{}", refused.body);
    assert!(
        env.sidecar
            .proc
            .wait_for_log("caller refused", Duration::from_secs(5)),
        "{}",
        env.sidecar.proc.logs()
    );
    let logs = env.sidecar.proc.logs();
    let line = logs.lines().find(|l| l.contains("caller refused")).unwrap();
    assert!(
        line.contains(intruder) && line.contains("not on the allow-list"),
        "{line}"
    );
    assert!(
        sample(
            &env.metrics(),
            "kube_mtls_sidecar_refusals_total{reason=\"identity_not_allowed\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_is_the_pods_trust_domain() {
    let env = Env::start(&[]).await;
    let foreign = get(
        env.addr,
        env.client(&env.caller("spiffe://other.example/ns/web/sa/front")),
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(foreign.status, 403);
    let dns_only = get(
        env.addr,
        env.client(&env.ca.issue(&Leaf::dns("x.example.com"))),
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(dns_only.status, 403);
}

/// A handshake the server refuses: the first request on it fails.
async fn refused_at_handshake(env: &Env, cfg: std::sync::Arc<rustls::ClientConfig>) -> bool {
    match HttpConn::open(env.addr, cfg).await {
        Err(_) => true,
        Ok(mut c) => c.send("GET", "/", &[], "").await.is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_at_the_handshake() {
    let env = Env::start(&[]).await;
    let other_ca = TestCa::new("someone else's CA");
    let cases: Vec<(&str, std::sync::Arc<rustls::ClientConfig>, &str, &str)> = vec![
        (
            "no certificate",
            client_config(&env.ca.cert_pem, None, &["http/1.1"]),
            "no_client_certificate",
            "no_certificate",
        ),
        (
            "untrusted chain",
            client_config(
                &env.ca.cert_pem,
                Some(&other_ca.issue(&Leaf::spiffe(CLIENT_ID))),
                &["http/1.1"],
            ),
            "untrusted_certificate",
            "untrusted_issuer",
        ),
        (
            "expired",
            env.client(
                &env.ca
                    .issue(&Leaf::spiffe(CLIENT_ID).validity(Validity::Expired)),
            ),
            "expired_certificate",
            "expired",
        ),
        (
            "not yet valid",
            env.client(
                &env.ca
                    .issue(&Leaf::spiffe(CLIENT_ID).validity(Validity::NotYetValid)),
            ),
            "not_yet_valid_certificate",
            "not_yet_valid",
        ),
        (
            "no clientAuth usage",
            env.client(
                &env.ca
                    .issue(&Leaf::spiffe(CLIENT_ID).usage(Usage::ServerOnly)),
            ),
            "wrong_key_usage",
            "bad_usage",
        ),
    ];
    for (what, cfg, reason, failure) in cases {
        assert!(
            refused_at_handshake(&env, cfg).await,
            "{what}: was not refused"
        );
        let label = format!("kube_mtls_sidecar_refusals_total{{reason=\"{reason}\"}}");
        let counted = wait_until(Duration::from_secs(5), || {
            sample(&env.metrics(), &label) >= 1.0
        });
        assert!(
            counted,
            "{what}: refusal {reason} not counted:\n{}",
            env.metrics()
        );
        let label = format!(
            "kube_mtls_sidecar_handshake_failures_total{{direction=\"inbound\",reason=\"{failure}\"}}"
        );
        assert_eq!(sample(&env.metrics(), &label), 1.0, "{what}: {label}");
    }
    let logs = env.sidecar.proc.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("client certificate refused")
                && l.contains("untrusted_issuer")
                && l.contains("CN=someone else's CA")),
        "the refusal names the untrusted issuer:\n{logs}"
    );
    // The app never saw any of them: the only request counted is none.
    assert_eq!(
        sample(&env.metrics(), "kube_mtls_sidecar_requests_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_as_clients() {
    let env = Env::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let id = env.caller(CLIENT_ID);
    id.write_dir(dir.path()).unwrap();
    let (crt, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    let url = format!("https://localhost:{}/from-curl", env.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", env.addr.port());

    let out = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(&url),
    );
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = echo(&String::from_utf8_lossy(&out.stdout));
    assert!(
        e.header("x-forwarded-client-cert")
            .unwrap()
            .contains(CLIENT_ID)
    );

    // HTTP/2 through curl too.
    let out = output(
        Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                "--cacert",
            ])
            .arg(&ca)
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(&url),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");

    let out = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert"])
            .arg(&ca)
            .arg(&url),
    );
    assert!(
        !out.status.success(),
        "curl without a client certificate must fail"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("x-forwarded-client-cert"));

    // openssl s_client without a certificate: the server demands one. With
    // TLS 1.3 the client's side of the handshake completes before the server
    // checks the (missing) certificate, so s_client must keep reading after
    // its input ends (-ign_eof) to see the alert; `Connection: close` makes
    // the connection end even if a request were (wrongly) answered.
    let out = output_with_input(
        Command::new("openssl")
            .args([
                "s_client",
                "-ign_eof",
                "-connect",
                &env.addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
            ])
            .arg(&ca),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("x-forwarded-client-cert"), "{all}");
    assert!(
        all.contains("certificate required")
            || all.contains("alert")
            || all.contains("handshake failure"),
        "openssl did not report a refused handshake: {all}"
    );
    // With the certificate, openssl gets an answer from the app. -quiet keeps
    // reading after its input ends (it implies -ign_eof), until the sidecar
    // closes the connection after its reply.
    let out = output_with_input(
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &env.addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
            ])
            .arg(&ca)
            .arg("-cert")
            .arg(&crt)
            .arg("-key")
            .arg(&key),
        b"GET /openssl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("200 OK") && reply.contains(CLIENT_ID),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_alpn_to_an_http1_app() {
    let env = Env::start(&[]).await;
    let cfg = client_config(
        &env.ca.cert_pem,
        Some(&env.caller(CLIENT_ID)),
        &["h2", "http/1.1"],
    );
    let mut conn = HttpConn::open(env.addr, cfg).await.unwrap();
    assert!(matches!(conn, HttpConn::H2(_)), "ALPN must pick h2");
    for i in 0..3 {
        let r = conn
            .send("GET", &format!("/h2/{i}"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_2);
        let e = echo(&r.body);
        assert_eq!(e.version, "HTTP/1.1");
        assert_eq!(e.header("host"), Some("localhost"));
        assert!(
            e.header("x-forwarded-client-cert")
                .unwrap()
                .contains(CLIENT_ID)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_h2_upstream() {
    // The app port is marked h2: the sidecar speaks HTTP/2 cleartext to it.
    let app = app::start().await;
    let (ca, dir) = server_certs();
    let listen = free_port();
    let h2 = app.port().to_string();
    let _sidecar = Sidecar::start(dir.path(), &[(listen, app.port())], &["--h2-ports", &h2]);
    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["h2"],
    );
    let mut conn = HttpConn::open(SocketAddr::from(([127, 0, 0, 1], listen)), cfg)
        .await
        .unwrap();
    let r = conn
        .send(
            "POST",
            "/shop.Orders/Get",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            "\0\0\0\0\0",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let e = echo(&r.body);
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.header("te"), Some("trailers"));
    assert_eq!(e.header("content-type"), Some("application/grpc"));
    assert!(
        e.header("x-forwarded-client-cert")
            .unwrap()
            .contains(CLIENT_ID)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_copies_bytes_and_closes_on_refusal() {
    let echo_addr = app::start_tcp_echo().await;
    let (ca, dir) = server_certs();
    let listen = free_port();
    let tcp = echo_addr.port().to_string();
    let _sidecar = Sidecar::start(
        dir.path(),
        &[(listen, echo_addr.port())],
        &["--tcp-ports", &tcp, "--allowed-clients", CLIENT_ID],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    // ALPN offered by a database client must not break a TCP port.
    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["postgresql"],
    );
    let mut s = kube_mtls_tests::tls::connect(addr, cfg).await.unwrap();
    let mut buf = [0u8; 17];
    within(PATIENCE, "the TCP echo through the sidecar", async {
        s.write_all(b"\x00\x01binary payload\xff").await?;
        s.read_exact(&mut buf).await
    })
    .await
    .unwrap();
    assert_eq!(&buf, b"\x00\x01binary payload\xff");

    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe("spiffe://cluster.local/ns/x/sa/y"))),
        &[],
    );
    let mut s = kube_mtls_tests::tls::connect(addr, cfg).await.unwrap();
    let mut buf = Vec::new();
    let what = "the sidecar to close a refused caller's connection";
    let n = within(PATIENCE, what, async {
        let _ = s.write_all(b"hello").await;
        s.read_to_end(&mut buf).await.unwrap_or(0)
    })
    .await;
    assert_eq!(
        n, 0,
        "a refused caller gets a closed connection, not an echo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_carries_megabytes_intact_both_ways() {
    let echo_addr = app::start_tcp_echo().await;
    let (ca, dir) = server_certs();
    let listen = free_port();
    let tcp = echo_addr.port().to_string();
    let _sidecar = Sidecar::start(
        dir.path(),
        &[(listen, echo_addr.port())],
        &["--tcp-ports", &tcp],
    );
    let cfg = client_config(&ca.cert_pem, Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))), &[]);
    let s = kube_mtls_tests::tls::connect(SocketAddr::from(([127, 0, 0, 1], listen)), cfg)
        .await
        .unwrap();
    // Large writes (whole TLS records, read ahead) and odd-sized ones, while
    // the echo streams back: every byte in order.
    let sent: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut rx, mut tx) = tokio::io::split(s);
    let writer = {
        let sent = sent.clone();
        async move {
            for (i, piece) in sent.chunks(70_001).enumerate() {
                let cut = (i * 977) % piece.len();
                tx.write_all(&piece[..cut]).await?;
                tx.write_all(&piece[cut..]).await?;
            }
            tx.flush().await
        }
    };
    let mut got = vec![0u8; sent.len()];
    let (written, read) = within(PATIENCE, "6 MB echoed through a TCP port", async {
        tokio::join!(writer, rx.read_exact(&mut got))
    })
    .await;
    written.unwrap();
    read.unwrap();
    assert!(got == sent, "the echo differs from what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_gives_502_with_a_body() {
    let (ca, dir) = server_certs();
    let (listen, dead) = (free_port(), free_port());
    let sidecar = Sidecar::start(dir.path(), &[(listen, dead)], &[]);
    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    let r = get(SocketAddr::from(([127, 0, 0, 1], listen)), cfg, "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("upstream unavailable") && r.body.contains(&dead.to_string()),
        "{}",
        r.body
    );
    let m = plain_get(sidecar.admin, "/metrics").unwrap().1;
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_upstream_errors_total{direction=\"inbound\"}"
        ) >= 1.0,
        "{m}"
    );
}

/// The server certificate a fresh handshake presents.
async fn served_cert(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    let s = kube_mtls_tests::tls::connect(addr, cfg).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    let d: rustls_pki_types::CertificateDer =
        rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    d.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_data_symlink_swap_keeps_open_connections_and_refuses_corrupt_sets() {
    let ca = TestCa::new("ca");
    let root = tempfile::tempdir().unwrap();
    let first = ca.issue(&Leaf::spiffe(SERVER_ID));
    let mut dir = KubeletDir::create(&root.path().join("certs"), &first).unwrap();
    let app = app::start().await;
    let listen = free_port();
    let sidecar = Sidecar::start(&dir.path, &[(listen, app.port())], &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    assert_eq!(
        served_cert(addr, cfg.clone()).await,
        pem_der(&first.cert_pem)
    );

    // A connection opened before the rotation...
    let mut open = HttpConn::open(addr, cfg.clone()).await.unwrap();
    assert_eq!(
        open.send("GET", "/before", &[], "").await.unwrap().status,
        200
    );

    let second = ca.issue(&Leaf::spiffe(SERVER_ID));
    dir.swap(&second).unwrap();
    let rotated = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if served_cert(addr, cfg.clone()).await == pem_der(&second.cert_pem) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        rotated,
        "new certificate never served:\n{}",
        sidecar.proc.logs()
    );
    // ...keeps working after it.
    assert_eq!(
        open.send("GET", "/after", &[], "").await.unwrap().status,
        200
    );

    // A corrupt set and a mismatched key are refused; the second set keeps serving.
    let metrics = || plain_get(sidecar.admin, "/metrics").unwrap().1;
    let refused = "kube_mtls_sidecar_certificate_reloads_total{result=\"refused\"}";
    dir.swap_raw(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        &second.key_pem,
        &ca.cert_pem,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || sample(&metrics(), refused)
            >= 1.0),
        "{}",
        sidecar.proc.logs()
    );
    let other = ca.issue(&Leaf::spiffe(SERVER_ID));
    dir.swap_raw(&second.cert_pem, &other.key_pem, &ca.cert_pem)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || sample(&metrics(), refused)
            >= 2.0),
        "{}",
        sidecar.proc.logs()
    );
    assert!(
        sidecar.proc.logs().contains("does not match"),
        "{}",
        sidecar.proc.logs()
    );
    assert_eq!(
        served_cert(addr, cfg.clone()).await,
        pem_der(&second.cert_pem)
    );
    let r = get(addr, cfg, "/still-serving", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(plain_get(sidecar.admin, "/ready").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight() {
    let mut env = Env::start(&["--drain-timeout", "10s"]).await;
    let cfg = env.client(&env.caller(CLIENT_ID));
    let mut conn = HttpConn::open(env.addr, cfg).await.unwrap();
    let in_flight = tokio::spawn(async move { conn.send("GET", "/slow?ms=1500", &[], "").await });
    // The request is in flight once the sidecar has counted it.
    let admin = env.sidecar.admin;
    let counted = wait_until(Duration::from_secs(5), || {
        sample(
            &plain_get(admin, "/metrics").unwrap().1,
            "kube_mtls_sidecar_requests_total",
        ) >= 1.0
    });
    assert!(counted, "the slow request never reached the sidecar");
    env.sidecar.proc.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || plain_get(admin, "/ready")
            .is_some_and(|(s, _)| s == 503)),
        "/ready must turn 503 while draining"
    );
    // New connections are no longer accepted.
    let connect = tokio::net::TcpStream::connect(env.addr);
    let refused_new = within(PATIENCE, "a connection to a draining sidecar", connect)
        .await
        .is_err()
        || get(env.addr, env.client(&env.caller(CLIENT_ID)), "/", &[])
            .await
            .is_err();
    assert!(refused_new, "listener still accepting while draining");
    let r = within(PATIENCE, "the request in flight", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    assert_eq!(
        r.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    let status = env
        .sidecar
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("process exits after draining");
    assert!(status.success(), "{status:?}: {}", env.sidecar.proc.logs());
    let _ = env.app;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_probe_forwarding() {
    let app = app::start().await;
    let dead = free_port();
    let probes = format!(
        r#"{{"web/readiness":{{"httpGet":{{"port":{p},"path":"/healthz","httpHeaders":[{{"name":"X-Probe","value":"1"}}]}}}},
            "web/liveness":{{"tcpSocket":{{"port":{p}}}}},
            "web/startup":{{"tcpSocket":{{"port":{dead}}}}},
            "grpc/liveness":{{"grpc":{{"port":{p}}}}}}}"#,
        p = app.port()
    );
    let env = Env::start(&[
        "--app-probes",
        &probes,
        "--h2-ports",
        &app.port().to_string(),
    ])
    .await;
    let a = env.sidecar.admin;
    assert_eq!(plain_get(a, "/live").unwrap().0, 200);
    assert_eq!(plain_get(a, "/ready").unwrap().0, 200);
    let m = plain_get(a, "/metrics").unwrap().1;
    for name in [
        "kube_mtls_sidecar_requests_total",
        "kube_mtls_sidecar_handshakes_total",
        "kube_mtls_sidecar_refusals_total",
        "kube_mtls_sidecar_upstream_errors_total",
        "kube_mtls_sidecar_certificate_expiry_timestamp_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    assert!(sample(&m, "kube_mtls_sidecar_certificate_expiry_timestamp_seconds") > 3.0e9);
    assert_eq!(plain_get(a, "/app-health/web/readiness").unwrap().0, 200);
    assert_eq!(plain_get(a, "/app-health/web/liveness").unwrap().0, 200);
    assert_eq!(plain_get(a, "/app-health/web/startup").unwrap().0, 503);
    assert_eq!(
        plain_get(a, "/app-health/grpc/liveness").unwrap().0,
        200,
        "gRPC health check"
    );
    // Only configured targets: nothing else of the app is reachable here.
    assert_eq!(plain_get(a, "/app-health/web/other").unwrap().0, 404);
    assert_eq!(plain_get(a, "/app-health/../orders").unwrap().0, 404);
    assert_eq!(plain_get(a, "/orders").unwrap().0, 404);
    let _ = env.app;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let env = Env::start(&["--max-header-size", "4096"]).await;
    let big = "x".repeat(20_000);
    let r = get(
        env.addr,
        env.client(&env.caller(CLIENT_ID)),
        "/",
        &[("x-big", &big)],
    )
    .await;
    // The sidecar stops reading after a bounded drain, so the 431 reaches the
    // client instead of being lost to a reset.
    assert_eq!(r.expect("a 431 reply, not a reset").status, 431);
    // And the app never saw it.
    assert_eq!(
        sample(&env.metrics(), "kube_mtls_sidecar_requests_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_was_not_redirected_is_closed() {
    // On loopback nothing is redirected: the inbound port has no original
    // destination and must not forward anywhere.
    let (ca, dir) = server_certs();
    let inbound = free_port();
    let admin = free_port();
    let mut cmd = Command::new(kube_mtls_tests::bins::bin("kube-mtls-sidecar"));
    cmd.arg("--cert-dir").arg(dir.path()).args([
        "--inbound-port",
        &inbound.to_string(),
        "--admin-port",
        &admin.to_string(),
        "--outbound-port",
        "0",
    ]);
    let p = kube_mtls_tests::process::Proc::spawn(cmd);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    assert!(
        wait_until(Duration::from_secs(20), || plain_get(admin, "/ready")
            .is_some_and(|(s, _)| s == 200)),
        "the sidecar never became ready:\n{}",
        p.logs()
    );
    let cfg = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    let r = get(SocketAddr::from(([127, 0, 0, 1], inbound)), cfg, "/", &[]).await;
    assert!(r.is_err(), "got a reply: {r:?}");
    assert!(
        p.wait_for_log("no original destination", Duration::from_secs(5)),
        "{}",
        p.logs()
    );
}

#[test]
fn bad_settings_exit_non_zero_naming_the_setting() {
    let (ca, dir) = server_certs();
    // Free ports throughout: were a setting taken by mistake, the sidecar
    // would run, on ports of its own, until the deadline stops it.
    let (inbound, admin) = (free_port().to_string(), free_port().to_string());
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(kube_mtls_tests::bins::bin("kube-mtls-sidecar"));
        cmd.args(["--outbound-port", "0", "--inbound-port", &inbound]);
        if !args.contains(&"--admin-port") {
            cmd.args(["--admin-port", &admin]);
        }
        let out = output(cmd.args(args).envs(envs.iter().copied()));
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let d = dir.path().to_str().unwrap();
    let err = run(&["--cert-dir", "/nonexistent/certs"], &[]);
    assert!(
        err.contains("--cert-dir") && err.contains("tls.crt"),
        "{err}"
    );
    let err = run(&["--cert-dir", d, "--admin-port", &inbound], &[]);
    assert!(
        err.contains("--inbound-port") && err.contains("--admin-port"),
        "{err}"
    );
    let err = run(
        &["--cert-dir", d],
        &[(
            "KUBE_MTLS_ALLOWED_CLIENTS",
            "spiffe://cluster.local/ns/a*/sa/b",
        )],
    );
    assert!(
        err.contains("--allowed-clients") && err.contains("KUBE_MTLS_ALLOWED_CLIENTS"),
        "{err}"
    );
    let err = run(&["--cert-dir", d, "--tcp-ports", "5432,abc"], &[]);
    assert!(err.contains("--tcp-ports"), "{err}");
    // A key that does not belong to the certificate.
    let other = ca.issue(&Leaf::spiffe(SERVER_ID));
    std::fs::write(dir.path().join("tls.key"), other.key_pem).unwrap();
    let err = run(&["--cert-dir", d], &[]);
    assert!(
        err.contains("--cert-dir") && err.contains("does not match"),
        "{err}"
    );
}

/// The serial number of a PEM certificate as `openssl x509 -serial` prints it.
fn openssl_serial(cert_pem: &str) -> String {
    let out = output_with_input(
        Command::new("openssl").args(["x509", "-noout", "-serial"]),
        cert_pem.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.strip_prefix("serial=")
        .expect("serial=<hex>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_certificates_serial_is_on_metrics_and_follows_rotation() {
    let ca = TestCa::new("ca");
    let root = tempfile::tempdir().unwrap();
    let first = ca.issue(&Leaf::spiffe(SERVER_ID));
    let mut dir = KubeletDir::create(&root.path().join("certs"), &first).unwrap();
    let app = app::start().await;
    let sidecar = Sidecar::start(&dir.path, &[(free_port(), app.port())], &[]);
    let metrics = || plain_get(sidecar.admin, "/metrics").unwrap().1;
    let info = |serial: &str| format!("kube_mtls_sidecar_certificate_info{{serial=\"{serial}\"}}");
    let (one, m) = (openssl_serial(&first.cert_pem), metrics());
    assert_eq!(sample(&m, &info(&one)), 1.0, "{m}");

    let second = ca.issue(&Leaf::spiffe(SERVER_ID));
    let two = openssl_serial(&second.cert_pem);
    assert_ne!(one, two);
    dir.swap(&second).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || sample(&metrics(), &info(&two))
            == 1.0),
        "{}",
        metrics()
    );
    // Only the serial served now has a series.
    let m = metrics();
    assert_eq!(
        m.matches("kube_mtls_sidecar_certificate_info{").count(),
        1,
        "{m}"
    );
}
