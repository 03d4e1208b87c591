//! `--mode strict|permissive` and `--policy enforce|audit`, black-box against
//! the real binary with real peers: curl (plaintext HTTP/1.1, HTTP/2 with
//! prior knowledge, and TLS without a client certificate), the rustls/hyper
//! mTLS client, and raw sockets.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use kube_mtls_tests::app::echo;
use kube_mtls_tests::certs::{Leaf, TestCa};
use kube_mtls_tests::deadline::{PATIENCE, within};
use kube_mtls_tests::process::{Sidecar, free_port, output, wait_until};
use kube_mtls_tests::sidecar_env::{CLIENT_ID, SidecarEnv as Env, sample, server_certs};
use kube_mtls_tests::tls::{HttpConn, client_config, connect, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Identity headers a plaintext caller might send to pass for someone.
const FORGED: [(&str, &str); 6] = [
    (
        "X-Forwarded-Client-Cert",
        "By=spiffe://cluster.local/ns/shop/sa/orders;URI=spiffe://cluster.local/ns/admin/sa/root",
    ),
    (
        "X_Forwarded_Client_Cert",
        "URI=spiffe://cluster.local/ns/admin/sa/root",
    ),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Real-IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
];

/// curl to `url` with `args`, forged identity headers included.
fn curl(args: &[&str], url: &str) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    for (k, v) in FORGED {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    output(cmd.arg(url))
}

/// Asserts that what the app received carries no identity but the address.
fn assert_no_identity(body: &str, version: &str) {
    let e = echo(body);
    assert_eq!(e.version, version, "{body}");
    assert!(e.header("x-forwarded-client-cert").is_none(), "{body}");
    assert!(
        !e.headers.iter().any(|(k, _)| k.contains('_')),
        "an underscore spelling reached the app: {body}"
    );
    assert!(
        e.header("x-real-ip").is_none() && e.header("forwarded").is_none(),
        "{body}"
    );
    assert_eq!(e.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{body}");
    assert_eq!(e.header_all("x-forwarded-proto"), vec!["http"], "{body}");
    assert!(
        !body.contains("admin/sa/root") && !body.contains("6.6.6.6"),
        "{body}"
    );
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn uncoloured(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The log lines that contain `needle`, without colour.
fn lines_with(logs: &str, needle: &str) -> Vec<String> {
    uncoloured(logs)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_plaintext_and_mtls_on_one_port_without_identity_for_plaintext() {
    let env = Env::start(&["--mode", "permissive"]).await;
    let port = env.addr.port();
    let url = format!("http://127.0.0.1:{port}/plain");

    // mTLS, exactly as in strict mode.
    let mtls = get(env.addr, env.client(&env.caller(CLIENT_ID)), "/mtls", &[])
        .await
        .unwrap();
    assert_eq!(mtls.status, 200, "{}", mtls.body);
    let e = echo(&mtls.body);
    assert!(
        e.header("x-forwarded-client-cert")
            .unwrap()
            .contains(CLIENT_ID)
    );
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));

    // Plaintext HTTP/1.1 and HTTP/2 (prior knowledge), forged headers and all.
    let h1 = curl(&[], &url);
    assert!(
        h1.status.success(),
        "{}",
        String::from_utf8_lossy(&h1.stderr)
    );
    assert_no_identity(&String::from_utf8_lossy(&h1.stdout), "HTTP/1.1");
    let h2 = curl(
        &["--http2-prior-knowledge", "-w", "\n%{http_version}"],
        &url,
    );
    let out = String::from_utf8_lossy(&h2.stdout);
    let (body, version) = out.rsplit_once('\n').expect("body and version");
    assert_eq!(version, "2", "{out}");
    assert_no_identity(body, "HTTP/1.1");

    // TLS without a client certificate is still refused, by curl and by rustls.
    let https = format!("https://localhost:{port}/no-cert");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &env.ca.cert_pem).unwrap();
    let ca_path = ca.path().to_str().unwrap();
    let no_cert = curl(&["--resolve", &resolve, "--cacert", ca_path], &https);
    assert!(
        !no_cert.status.success(),
        "TLS without a client certificate was served"
    );
    assert!(!String::from_utf8_lossy(&no_cert.stdout).contains("x-forwarded"));
    let anonymous = client_config(&env.ca.cert_pem, None, &["http/1.1"]);
    let refused = match HttpConn::open(env.addr, anonymous).await {
        Err(_) => true,
        Ok(mut c) => c.send("GET", "/", &[], "").await.is_err(),
    };
    assert!(refused, "rustls without a client certificate was served");

    let m = env.metrics();
    let plaintext = format!(
        "kube_mtls_sidecar_plaintext_connections_total{{port=\"{}\"}}",
        env.app.port()
    );
    assert_eq!(sample(&m, &plaintext), 2.0, "{m}");
    assert_eq!(
        sample(&m, "kube_mtls_sidecar_handshakes_total{result=\"ok\"}"),
        1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"no_client_certificate\"}"
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_mode_info{mode=\"permissive\",policy=\"enforce\"}"
        ),
        1.0,
        "{m}"
    );
    let logs = env.sidecar.proc.logs();
    let ready = lines_with(&logs, "kube-mtls-sidecar ready");
    assert!(
        ready.len() == 1
            && ready[0].contains("mode=\"permissive\"")
            && ready[0].contains("policy=\"enforce\""),
        "{logs}"
    );
    assert!(logs.contains("--mode permissive"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_are_logged_once_per_source_address_a_minute() {
    let env = Env::start(&["--mode", "permissive"]).await;
    let url = format!("http://127.0.0.1:{}/plain", env.addr.port());
    for _ in 0..3 {
        assert!(curl(&[], &url).status.success());
    }
    // A second caller host on loopback.
    assert!(curl(&["--interface", "127.0.0.2"], &url).status.success());
    let m = env.metrics();
    let plaintext = format!(
        "kube_mtls_sidecar_plaintext_connections_total{{port=\"{}\"}}",
        env.app.port()
    );
    assert_eq!(sample(&m, &plaintext), 4.0, "{m}");
    let logs = env.sidecar.proc.logs();
    let logged = lines_with(&logs, "plaintext connection");
    assert_eq!(logged.len(), 2, "one line per source address:\n{logs}");
    assert!(logged[0].contains("source=127.0.0.1"), "{}", logged[0]);
    assert!(logged[1].contains("source=127.0.0.2"), "{}", logged[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_taken_for_plaintext_after_the_detection_timeout() {
    let env = Env::start(&["--mode", "permissive", "--detect-timeout", "200ms"]).await;
    let plaintext = format!(
        "kube_mtls_sidecar_plaintext_connections_total{{port=\"{}\"}}",
        env.app.port()
    );
    let connect = tokio::net::TcpStream::connect(env.addr);
    let mut s = within(PATIENCE, "a connection to the sidecar", connect)
        .await
        .unwrap();
    // Nothing sent: once the timeout has passed the sidecar has decided.
    assert!(
        wait_until(Duration::from_secs(10), || sample(
            &env.metrics(),
            &plaintext
        ) >= 1.0),
        "the silent connection was never taken for plaintext:\n{}",
        env.metrics()
    );
    let mut reply = String::new();
    within(PATIENCE, "the reply to a late plaintext request", async {
        s.write_all(b"GET /late HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        s.read_to_string(&mut reply).await
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(!reply.contains("x-forwarded-client-cert"), "{reply}");
}

/// A server-speaks-first app (an SMTP-like banner) on a free port.
async fn start_banner_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"220 banner ready\r\n").await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_leaves_tcp_ports_mtls_only_and_never_delays_them() {
    let app = start_banner_app().await;
    let (ca, dir) = server_certs();
    let listen = free_port();
    let tcp = app.port().to_string();
    // A detection timeout far beyond the client's patience: were the port
    // sniffed, the banner would come too late.
    let _sidecar = Sidecar::start(
        dir.path(),
        &[(listen, app.port())],
        &[
            "--mode",
            "permissive",
            "--tcp-ports",
            &tcp,
            "--detect-timeout",
            "60s",
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    let cfg = client_config(&ca.cert_pem, Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))), &[]);
    let mut tls = connect(addr, cfg).await.unwrap();
    let mut banner = [0u8; 18];
    // Far less than the detection timeout.
    let what = "the banner, which must not wait for detection";
    within(Duration::from_secs(10), what, tls.read_exact(&mut banner))
        .await
        .unwrap();
    assert_eq!(&banner, b"220 banner ready\r\n");

    // Plaintext gets nothing of the app on a TCP port.
    let connect = tokio::net::TcpStream::connect(addr);
    let mut plain = within(PATIENCE, "a plaintext connection", connect)
        .await
        .unwrap();
    let _ = within(
        PATIENCE,
        "a plaintext write",
        plain.write_all(b"EHLO intruder\r\n"),
    )
    .await;
    let mut got = Vec::new();
    // Whatever the sidecar does with it (close it, or hold it until the
    // handshake timeout), nothing of the app comes back in 10 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("220"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lets_an_authenticated_caller_off_the_list_through_and_counts_would_deny() {
    let env = Env::start(&["--allowed-clients", CLIENT_ID, "--policy", "audit"]).await;
    let outsider = "spiffe://cluster.local/ns/batch/sa/cron";
    let mut conn = HttpConn::open(env.addr, env.client(&env.caller(outsider)))
        .await
        .unwrap();
    for _ in 0..2 {
        let r = conn.send("GET", "/audited", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let xfcc = echo(&r.body)
            .header("x-forwarded-client-cert")
            .unwrap()
            .to_owned();
        assert!(xfcc.contains(outsider), "{xfcc}");
    }
    let allowed = get(env.addr, env.client(&env.caller(CLIENT_ID)), "/", &[])
        .await
        .unwrap();
    assert_eq!(allowed.status, 200);

    // Unauthenticated callers are refused whatever the policy.
    let other_ca = TestCa::new("someone else's CA");
    let untrusted = client_config(
        &env.ca.cert_pem,
        Some(&other_ca.issue(&Leaf::spiffe(outsider))),
        &["http/1.1"],
    );
    for (what, cfg) in [
        (
            "no certificate",
            client_config(&env.ca.cert_pem, None, &["http/1.1"]),
        ),
        ("untrusted chain", untrusted),
    ] {
        let served = match HttpConn::open(env.addr, cfg).await {
            Err(_) => false,
            Ok(mut c) => c.send("GET", "/", &[], "").await.is_ok(),
        };
        assert!(!served, "{what}: served under --policy audit");
    }

    let m = env.metrics();
    let would_deny = format!("kube_mtls_sidecar_would_deny_total{{identity=\"{outsider}\"}}");
    assert_eq!(sample(&m, &would_deny), 2.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"identity_not_allowed\"}"
        ),
        0.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"no_client_certificate\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"untrusted_certificate\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_mode_info{mode=\"strict\",policy=\"audit\"}"
        ),
        1.0,
        "{m}"
    );
    let logs = env.sidecar.proc.logs();
    let audited = lines_with(&logs, "would_deny: caller");
    assert_eq!(audited.len(), 1, "logged once for the connection:\n{logs}");
    assert!(
        audited[0].contains(outsider) && audited[0].contains("not on the allow-list"),
        "{}",
        audited[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_enforce_stay_the_default() {
    let env = Env::start(&["--allowed-clients", CLIENT_ID]).await;
    let plain = curl(&[], &format!("http://127.0.0.1:{}/plain", env.addr.port()));
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("x-forwarded"),
        "plaintext was served in strict mode"
    );
    let outsider = "spiffe://cluster.local/ns/batch/sa/cron";
    let refused = get(env.addr, env.client(&env.caller(outsider)), "/", &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 403);
    let m = env.metrics();
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_mode_info{mode=\"strict\",policy=\"enforce\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(
        !m.contains("kube_mtls_sidecar_plaintext_connections_total{"),
        "{m}"
    );
    assert!(!m.contains("kube_mtls_sidecar_would_deny_total{"), "{m}");
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_refusals_total{reason=\"identity_not_allowed\"}"
        ),
        1.0,
        "{m}"
    );
    let logs = env.sidecar.proc.logs();
    let ready = lines_with(&logs, "kube-mtls-sidecar ready");
    assert!(
        ready[0].contains("mode=\"strict\"") && ready[0].contains("policy=\"enforce\""),
        "{logs}"
    );
    assert!(
        !logs.contains("--mode permissive") && !logs.contains("--policy audit"),
        "{logs}"
    );
}

#[test]
fn bad_mode_settings_name_the_flag() {
    let (_ca, dir) = server_certs();
    let d = dir.path().to_str().unwrap();
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let out = output(
            Command::new(kube_mtls_tests::bins::bin("kube-mtls-sidecar"))
                .args(["--cert-dir", d, "--outbound-port", "0"])
                .args([
                    "--inbound-port",
                    &free_port().to_string(),
                    "--admin-port",
                    &free_port().to_string(),
                ])
                .args(args)
                .envs(envs.iter().copied()),
        );
        assert!(!out.status.success(), "{args:?} {envs:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--mode", "open"], &[]);
    assert!(
        err.contains("--mode") && err.contains("strict") && err.contains("permissive"),
        "{err}"
    );
    let err = run(&[], &[("KUBE_MTLS_POLICY", "deny")]);
    assert!(
        err.contains("--policy") && err.contains("enforce") && err.contains("audit"),
        "{err}"
    );
    let err = run(&["--detect-timeout", "0s"], &[]);
    assert!(
        err.contains("--detect-timeout") && err.contains("KUBE_MTLS_DETECT_TIMEOUT"),
        "{err}"
    );
}
