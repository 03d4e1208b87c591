//! Pod-to-pod mTLS without touching the app: app A calls app B in plaintext,
//! the call leaves pod A as mTLS with A's identity, and B's sidecar checks it.
//! A capture on the wire between the pods shows only TLS.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use kube_mtls_tests::certs::{Leaf, TestCa};
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::Proc;
use kube_mtls_tests::require_netns;

const A_ID: &str = "spiffe://cluster.local/ns/web/sa/front";
const B_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";

/// A pod with the echo app on 8080 behind init and the sidecar.
fn server_pod(ca: &TestCa, allowed: &str) -> Pod {
    let mut pod = Pod::create();
    let certs = pod.dir.join("certs");
    ca.issue(&Leaf::spiffe(B_ID)).write_dir(&certs).unwrap();
    pod.start_app(&[8080]);
    let out = pod.init(&["--inbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pod.start_sidecar(&certs, &["--allowed-clients", allowed]);
    pod
}

/// The plaintext call app A makes, from inside pod A (as root, not the sidecar's UID).
fn call(pod: &Pod, ip: Ipv4Addr) -> Output {
    pod.command("curl")
        .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
        .arg(format!("http://{ip}:8080/from-a"))
        .output()
        .expect("curl is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_call_leaves_as_mtls_with_the_callers_identity() {
    require_netns!();
    let ca = TestCa::new("cluster CA");
    let b = server_pod(&ca, "spiffe://cluster.local/ns/web/sa/*");
    let b_strict = server_pod(&ca, "spiffe://cluster.local/ns/admin/sa/*");
    let mut c = Pod::create(); // no sidecar at all
    c.start_app(&[8080]);

    let mut a = Pod::create();
    let (_, b_ip, a_to_b) = a.link(&b);
    let (_, strict_ip, _) = a.link(&b_strict);
    let (_, c_ip, _) = a.link(&c);
    let certs = a.dir.join("certs");
    ca.issue(&Leaf::spiffe(A_ID)).write_dir(&certs).unwrap();
    let out = a.init(&["--inbound-ports", "9999", "--outbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start_sidecar(&certs, &[]);

    // Capture what crosses the wire between A and B.
    let pcap = a.dir.join("a-to-b.pcap");
    let mut dump = a.command("tcpdump");
    dump.args([
        "--immediate-mode",
        "-i",
        &a_to_b,
        "-Z",
        "root",
        "-U",
        "-n",
        "-w",
    ])
    .arg(&pcap)
    .args(["tcp", "port", "8080"]);
    let capture = Proc::spawn(dump);
    assert!(
        capture.wait_for_log("listening on", Duration::from_secs(10)),
        "{}",
        capture.logs()
    );

    let out = call(&a, b_ip);
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        reply.ends_with("\n200"),
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: kube_mtls_tests::app::Echo =
        serde_json::from_str(reply.rsplit_once('\n').unwrap().0).unwrap();
    let xfcc = echo.header("x-forwarded-client-cert").expect("XFCC at B");
    assert!(
        xfcc.contains(&format!("URI={A_ID}")) && xfcc.contains(&format!("By={B_ID}")),
        "{xfcc}"
    );
    assert_eq!(echo.path, "/from-a");

    capture.signal("INT");
    drop(capture);
    let read = Command::new("tcpdump")
        .args(["-n", "-A", "-r"])
        .arg(&pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    let packets = text.lines().filter(|l| l.contains(" IP ")).count();
    assert!(
        packets > 5,
        "nothing captured between the pods:\n{text}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    for plaintext in [
        "GET /from-a",
        "HTTP/1.1",
        "from-a",
        "x-forwarded-client-cert",
        "application/json",
    ] {
        assert!(
            !text.contains(plaintext),
            "{plaintext:?} crossed the wire in the clear:\n{text}"
        );
    }
    let raw = std::fs::read(&pcap).unwrap();
    // A TLS handshake record (content type 22, version 3.x) is on the wire.
    assert!(
        raw.windows(3)
            .any(|w| w == [0x16, 0x03, 0x01] || w == [0x16, 0x03, 0x03]),
        "no TLS records captured"
    );

    // B refuses A when A is not on B's allow-list.
    let out = call(&a, strict_ip);
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.ends_with("\n403") && reply.contains(A_ID), "{reply}");

    // A pod without a sidecar: a clear error, not a plaintext call.
    let out = call(&a, c_ip);
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.ends_with("\n502") && reply.contains("does not speak mTLS"),
        "{reply}"
    );
}
