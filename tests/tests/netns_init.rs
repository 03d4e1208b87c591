//! `kube-mtls-init` and the sidecar in a pod built from a network namespace:
//! real packets from a client outside, through real iptables (nft and legacy),
//! to an app that binds 0.0.0.0 inside.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kube_mtls_tests::certs::{Leaf, TestCa};
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::plain_get;
use kube_mtls_tests::require_netns;
use kube_mtls_tests::tls::{client_config, get};

const POD_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/front";

/// Sends a plaintext HTTP request; returns whatever came back (possibly nothing).
fn plaintext_request(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /plain HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn jumps(rules: &str, chain: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.contains(&format!("-j {chain}")))
        .count()
}

async fn capture_in_pod(backend: &str) {
    let ca = TestCa::new("cluster CA");
    let mut pod = Pod::create();
    let certs = pod.dir.join("certs");
    ca.issue(&Leaf::spiffe(POD_ID)).write_dir(&certs).unwrap();
    pod.start_app(&[8080, 9090]);

    // Before init, the app answers plaintext on its own port: the thing to prevent.
    assert!(plaintext_request(pod.addr(8080)).contains("\"path\":\"/plain\""));

    let out = pod.init(&["--backend", backend, "--skip-inbound-ports", "9090"]);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pod.start_sidecar(&certs, &[]);

    // mTLS with a valid certificate, to the pod IP and the app's own port.
    let client = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["http/1.1"],
    );
    let reply = get(pod.addr(8080), client, "/through", &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo: kube_mtls_tests::app::Echo = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(echo.path, "/through");
    let xfcc = echo.header("x-forwarded-client-cert").expect("XFCC");
    assert!(
        xfcc.contains(&format!("URI={CLIENT_ID}")) && xfcc.contains(&format!("By={POD_ID}")),
        "{xfcc}"
    );
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some(pod.host_ip.to_string().as_str())
    );

    // Plaintext to the same IP and port meets the TLS listener, not the app.
    let plain = plaintext_request(pod.addr(8080));
    assert!(
        !plain.contains("\"path\""),
        "plaintext reached the app: {plain}"
    );

    // A skipped port and the admin port are reached directly.
    assert!(plaintext_request(pod.addr(9090)).contains("\"path\":\"/plain\""));
    assert_eq!(
        plain_get(pod.addr(15020), "/ready").map(|(s, _)| s),
        Some(200)
    );

    // Running init again leaves one copy of the rules.
    let before = pod.nat_rules(backend);
    assert_eq!(jumps(&before, "KUBE_MTLS_INBOUND"), 1, "{before}");
    assert!(
        before.contains("--comment \"kube-mtls: all other inbound TCP"),
        "{before}"
    );
    let again = pod.init(&["--backend", backend, "--skip-inbound-ports", "9090"]);
    assert!(again.status.success());
    assert_eq!(pod.nat_rules(backend), before);

    // Cleanup removes every rule and chain; the app is exposed again, which shows
    // it was the rules that protected it.
    let out = pod.init(&["--backend", backend, "--cleanup"]);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = pod.nat_rules(backend);
    assert!(!after.contains("KUBE_MTLS"), "{after}");
    assert!(plaintext_request(pod.addr(8080)).contains("\"path\":\"/plain\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_backend_captures_inbound_traffic() {
    require_netns!();
    capture_in_pod("nft").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_backend_captures_inbound_traffic() {
    require_netns!();
    capture_in_pod("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_ports_only_and_auto_backend() {
    require_netns!();
    let ca = TestCa::new("cluster CA");
    let mut pod = Pod::create();
    let certs = pod.dir.join("certs");
    ca.issue(&Leaf::spiffe(POD_ID)).write_dir(&certs).unwrap();
    pod.start_app(&[8080, 7070]);
    let out = pod.init(&["--inbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pod.start_sidecar(&certs, &[]);
    assert!(!plaintext_request(pod.addr(8080)).contains("\"path\""));
    // 7070 is not listed: not captured.
    assert!(plaintext_request(pod.addr(7070)).contains("\"path\":\"/plain\""));
    let client = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe(CLIENT_ID))),
        &["h2"],
    );
    assert_eq!(
        get(pod.addr(8080), client, "/", &[]).await.unwrap().status,
        200
    );
    // auto chose nft in a fresh namespace.
    assert!(pod.nat_rules("nft").contains("KUBE_MTLS_INBOUND"));
}

#[test]
fn init_errors_name_the_cause_and_fix() {
    require_netns!();
    let pod = Pod::create();
    let init = kube_mtls_tests::bins::bin("kube-mtls-init");

    // Without NET_ADMIN (dropped from the bounding set, as a pod spec would).
    let out = pod
        .command("setpriv")
        .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin"])
        .arg(&init)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NET_ADMIN capability missing") && err.contains("capabilities.add"),
        "{err}"
    );

    // Without the iptables binary.
    let out = pod
        .command("env")
        .arg("PATH=/nonexistent")
        .arg(&init)
        .args(["--backend", "legacy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iptables-legacy-save not found") && err.contains("install iptables"),
        "{err}"
    );

    // A bad port list.
    let out = pod
        .command(&init)
        .args(["--inbound-ports", "80,web"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--inbound-ports") && err.contains("\"web\""),
        "{err}"
    );
    assert!(!pod.nat_rules("nft").contains("KUBE_MTLS"));
}

#[test]
fn dry_run_prints_the_plan_without_privileges() {
    let out = std::process::Command::new(kube_mtls_tests::bins::bin("kube-mtls-init"))
        .args([
            "--dry-run",
            "--inbound-ports",
            "8080",
            "--outbound-ports",
            "443",
            "--skip-outbound-cidrs",
            "10.0.0.0/8",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("# iptables-restore --noflush")
            && plan.contains("# ip6tables-restore --noflush")
    );
    assert!(plan.contains("--dport 8080 -m comment --comment \"kube-mtls: app port 8080"));
    assert!(plan.contains("-d 10.0.0.0/8 -m comment"));
    assert!(plan.contains("-j REDIRECT --to-ports 15001"));
}

/// CNI mode's first init container: unprivileged, with every capability
/// dropped, it exits 97 while the pod's rules are missing and 0 once they are
/// in place.
#[test]
fn validate_tells_whether_the_rules_are_in_place_without_privileges() {
    require_netns!();
    let pod = Pod::create();
    let validate = || {
        kube_mtls_tests::process::output_within(
            pod.command_as(
                kube_mtls_contract::names::PROXY_UID,
                kube_mtls_tests::bins::bin("kube-mtls-init"),
            )
            .args(["--validate", "--log-format=text"]),
            b"",
            Duration::from_secs(20),
        )
        .expect("run kube-mtls-init --validate")
    };
    let before = validate();
    assert_eq!(
        before.status.code(),
        Some(kube_mtls_contract::names::VALIDATION_FAILED_EXIT),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let err = String::from_utf8_lossy(&before.stderr);
    assert!(
        err.contains("not redirected") && err.contains("kube-mtls-cni"),
        "{err}"
    );

    let out = pod.init(&["--inbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = validate();
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}
