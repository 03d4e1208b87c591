//! The outbound listener holds connections to the same rules as the inbound
//! ones: counted by direction, and closed after `--idle-timeout`. Real pods
//! (network namespaces), real iptables from `kube-mtls-init`, the real app.

use std::time::Duration;

use kube_mtls_tests::certs::{Leaf, TestCa};
use kube_mtls_tests::netns::Pod;
use kube_mtls_tests::process::{output_within, plain_get, wait_until};
use kube_mtls_tests::require_netns;
use kube_mtls_tests::sidecar_env::sample;

const A_ID: &str = "spiffe://cluster.local/ns/web/sa/front";
const B_ID: &str = "spiffe://cluster.local/ns/shop/sa/orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbound_connection_is_closed_and_counted() {
    require_netns!();
    let ca = TestCa::new("cluster CA");
    let mut b = Pod::create();
    let b_certs = b.dir.join("certs");
    ca.issue(&Leaf::spiffe(B_ID)).write_dir(&b_certs).unwrap();
    b.start_app(&[8080]);
    let out = b.init(&["--inbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.start_sidecar(&b_certs, &[]);

    let mut a = Pod::create();
    let (_, b_ip, _) = a.link(&b);
    let a_certs = a.dir.join("certs");
    ca.issue(&Leaf::spiffe(A_ID)).write_dir(&a_certs).unwrap();
    let out = a.init(&["--inbound-ports", "9999", "--outbound-ports", "8080"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start_sidecar(&a_certs, &["--idle-timeout", "1s"]);

    // The app in pod A sends one keep-alive request, then stays silent: `cat`
    // ends only when the sidecar closes the connection (or `timeout` kills it).
    let script = format!(
        "exec 3<>/dev/tcp/{b_ip}/8080; \
         printf 'GET /idle HTTP/1.1\\r\\nHost: b\\r\\n\\r\\n' >&3; \
         timeout 20 cat <&3"
    );
    // Longer than `timeout 20` in the script, so the script's own limit speaks first.
    let out = output_within(
        a.command("bash").args(["-c", &script]),
        b"",
        Duration::from_secs(40),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(A_ID),
        "the call left as mTLS with A's identity: {reply}"
    );
    assert!(
        out.status.success(),
        "the idle connection was not closed within 20 s ({:?})",
        out.status
    );

    let admin = a.addr(kube_mtls_contract::names::ADMIN_PORT);
    let metrics = || {
        plain_get(admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let m = metrics();
    assert_eq!(
        sample(
            &m,
            "kube_mtls_sidecar_connections_total{direction=\"outbound\"}"
        ),
        1.0,
        "{m}"
    );
    let closed = wait_until(Duration::from_secs(5), || {
        sample(
            &metrics(),
            "kube_mtls_sidecar_active_connections{direction=\"outbound\"}",
        ) == 0.0
    });
    assert!(closed, "{}", metrics());
}
