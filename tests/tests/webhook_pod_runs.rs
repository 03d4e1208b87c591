//! The injected pod works as written: a pod the offline injector produced is
//! run by the stand-in kubelet ([`kube_mtls_tests::kubelet`]) exactly as its
//! spec says, and then callers are let in or kept out.

use std::process::Command;

use kube_mtls_tests::bins::bin;
use kube_mtls_tests::certs::{Leaf, TestCa};
use kube_mtls_tests::kubelet::{CERT_VOLUME, container, run_injected};
use kube_mtls_tests::process::plain_get;
use kube_mtls_tests::require_netns;
use kube_mtls_tests::tls::{client_config, get};
use serde::Deserialize;
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: orders
  namespace: shop
  annotations:
    kube-mtls.io/inject: enabled
    kube-mtls.io/allowed-clients: spiffe://cluster.local/ns/web/sa/*
spec:
  serviceAccountName: orders
  containers:
  - name: app
    image: example/orders:1
    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      httpGet: {path: /healthz, port: http}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_injected_by_the_webhook_runs_as_written() {
    require_netns!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pod.yaml");
    std::fs::write(&input, MANIFEST).unwrap();
    let out = Command::new(bin("kube-mtls-webhook"))
        .args(["--log-format", "text", "inject", "-f"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
    let pod_doc = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
    let cert_doc = docs.iter().find(|d| d["kind"] == "Certificate").unwrap();
    let spec = &pod_doc["spec"];

    // The Secret cert-manager would write for the Certificate, issued by the cluster CA.
    let ca = TestCa::new("cluster CA");
    let uri = cert_doc["spec"]["uris"][0].as_str().unwrap();
    assert_eq!(uri, "spiffe://cluster.local/ns/shop/sa/orders");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == CERT_VOLUME)
        .unwrap();
    assert_eq!(
        volume["secret"]["secretName"], cert_doc["spec"]["secretName"],
        "the pod mounts its Certificate's Secret"
    );
    let running = run_injected(spec, &ca.issue(&Leaf::spiffe(uri)), &[8080]);
    let pod = &running.pod;
    let sidecar = container(spec, "initContainers", "kube-mtls-sidecar");

    // The sidecar's own startup probe and the app's rewritten readiness probe, as kubelet would call them.
    let startup = &sidecar["startupProbe"]["httpGet"];
    let port = startup["port"].as_u64().unwrap() as u16;
    assert_eq!(
        plain_get(pod.addr(port), startup["path"].as_str().unwrap())
            .unwrap()
            .0,
        200
    );
    let app_probe = &container(spec, "containers", "app")["readinessProbe"]["httpGet"];
    let (status, body) = plain_get(
        pod.addr(app_probe["port"].as_u64().unwrap() as u16),
        app_probe["path"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // An allowed identity gets through and the app learns who called.
    let front = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe("spiffe://cluster.local/ns/web/sa/front"))),
        &["h2", "http/1.1"],
    );
    let r = get(pod.addr(8080), front, "/orders/1", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("URI=spiffe://cluster.local/ns/web/sa/front"),
        "{}",
        r.body
    );

    // Others do not.
    let batch = client_config(
        &ca.cert_pem,
        Some(&ca.issue(&Leaf::spiffe("spiffe://cluster.local/ns/batch/sa/cron"))),
        &["http/1.1"],
    );
    assert_eq!(
        get(pod.addr(8080), batch, "/orders/1", &[])
            .await
            .unwrap()
            .status,
        403
    );
    let stranger = TestCa::new("someone else");
    let outsider = client_config(
        &ca.cert_pem,
        Some(&stranger.issue(&Leaf::spiffe("spiffe://cluster.local/ns/web/sa/front"))),
        &["http/1.1"],
    );
    assert!(get(pod.addr(8080), outsider, "/", &[]).await.is_err());
    let anonymous = client_config(&ca.cert_pem, None, &["http/1.1"]);
    assert!(get(pod.addr(8080), anonymous, "/", &[]).await.is_err());
}
