//! Real AdmissionReview JSON over HTTPS to the running `kube-mtls-webhook serve`
//! (standalone: no API server), every answer checked, rejections included.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kube_mtls_tests::certs::{Issued, Leaf, TestCa};
use kube_mtls_tests::process::{
    Proc, cpu_ticks, free_port, open_fds, plain_get, set_fd_limit, wait_until,
};
use kube_mtls_tests::tls::{HttpConn, client_config};
use serde_json::{Value, json};

struct Webhook {
    proc: Proc,
    https: SocketAddr,
    plain: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Webhook {
    fn start() -> Webhook {
        let ca = TestCa::new("webhook CA");
        let dir = tempfile::tempdir().unwrap();
        ca.issue(&Leaf::dns("localhost"))
            .write_dir(dir.path())
            .unwrap();
        let (https, plain) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-mtls-webhook"));
        cmd.args([
            "--log-format",
            "text",
            "serve",
            "--standalone",
            "--namespace",
            "kube-mtls",
        ])
        .arg("--port")
        .arg(https.to_string())
        .arg("--metrics-port")
        .arg(plain.to_string())
        .arg("--tls-dir")
        .arg(dir.path());
        let proc = Proc::spawn(cmd);
        let plain = SocketAddr::from(([127, 0, 0, 1], plain));
        assert!(
            wait_until(Duration::from_secs(20), || plain_get(plain, "/readyz")
                .is_some_and(|(s, _)| s == 200)),
            "webhook not ready:\n{}",
            proc.logs()
        );
        Webhook {
            proc,
            https: SocketAddr::from(([127, 0, 0, 1], https)),
            plain,
            ca,
            dir,
        }
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.cert_pem, None, &["http/1.1"])
    }

    async fn post(&self, body: &str) -> (u16, String) {
        let mut conn = HttpConn::open(self.https, self.client()).await.unwrap();
        let r = conn
            .send(
                "POST",
                "/mutate",
                &[("content-type", "application/json")],
                body,
            )
            .await
            .unwrap();
        (r.status.as_u16(), r.body)
    }

    async fn review(&self, namespace: &str, pod: Value) -> Value {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false
            }
        });
        let (status, body) = self.post(&review.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        v["response"].clone()
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "orders-7d9f-", "labels": {"app": "orders"}, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d9f", "uid": "1", "controller": true}]},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [{
                "name": "app", "image": "example/orders:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "futureField": {"kept": true}
            }]
        }
    })
}

fn apply(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("the patch applies cleanly");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reviews_over_https() {
    let wh = Webhook::start();

    // Opted in: a patch that applies and injects, keeping unknown fields.
    let p = pod(json!({"kube-mtls.io/inject": "enabled"}));
    let r = wh.review("shop", p.clone()).await;
    assert_eq!(r["allowed"], true);
    let injected = apply(&p, &r);
    assert_eq!(
        injected["spec"]["initContainers"][0]["name"],
        "kube-mtls-init"
    );
    assert_eq!(
        injected["spec"]["initContainers"][1]["name"],
        "kube-mtls-sidecar"
    );
    assert_eq!(
        injected["spec"]["containers"][0]["futureField"]["kept"],
        true
    );
    assert_eq!(
        injected["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        15020
    );
    // Reinvocation on the injected pod: no second copy.
    let again = wh.review("shop", injected).await;
    assert_eq!(again["allowed"], true);
    assert!(again.get("patch").is_none(), "{again}");

    // Left alone: not opted in, opted out, kube-system, the webhook's namespace, host network.
    for (ns, p) in [
        ("shop", pod(json!({}))),
        ("shop", pod(json!({"kube-mtls.io/inject": "disabled"}))),
        (
            "kube-system",
            pod(json!({"kube-mtls.io/inject": "enabled"})),
        ),
        ("kube-mtls", pod(json!({"kube-mtls.io/inject": "enabled"}))),
    ] {
        let r = wh.review(ns, p).await;
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{ns}: {r}");
    }
    let mut host = pod(json!({"kube-mtls.io/inject": "enabled"}));
    host["spec"]["hostNetwork"] = json!(true);
    assert!(wh.review("shop", host).await.get("patch").is_none());

    // Rejections name the annotation and the problem.
    for (annotations, needle) in [
        (json!({"kube-mtls.io/inject": "yes"}), "kube-mtls.io/inject"),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/tcp-ports": "5432,db"}),
            "kube-mtls.io/tcp-ports",
        ),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/inbound-ports": "8080,15020"}),
            "15020",
        ),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/profile": "strict"}),
            "kube-mtls.io/profile",
        ),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/allowed-clients": "spiffe://x/ns/a*"}),
            "kube-mtls.io/allowed-clients",
        ),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/issuer": "Vault/x"}),
            "kube-mtls.io/issuer",
        ),
        (
            json!({"kube-mtls.io/inject": "enabled", "kube-mtls.io/sidecar-memory-limit": "lots"}),
            "kube-mtls.io/sidecar-memory-limit",
        ),
    ] {
        let r = wh.review("shop", pod(annotations.clone())).await;
        assert_eq!(r["allowed"], false, "{annotations}: {r}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle) && msg.contains("Fix:"),
            "{annotations}: {msg}"
        );
        assert_eq!(r["status"]["code"], 400);
    }

    // Softer problems are warnings: no declared ports means all are captured.
    let mut bare = pod(json!({"kube-mtls.io/inject": "enabled"}));
    bare["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("ports");
    bare["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("readinessProbe");
    let r = wh.review("shop", bare).await;
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("all inbound TCP ports"),
        "{r}"
    );

    // Not a pod CREATE: allowed untouched.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u2", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "UPDATE", "object": pod(json!({"kube-mtls.io/inject": "enabled"}))}});
    let (status, body) = wh.post(&review.to_string()).await;
    assert_eq!(status, 200);
    assert!(!body.contains("patch"));

    // Malformed bodies: HTTP 400, and the server keeps serving.
    for bad in [
        "not json",
        "{}",
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
    ] {
        let (status, body) = wh.post(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("AdmissionReview"), "{body}");
    }

    let metrics = plain_get(wh.plain, "/metrics").unwrap().1;
    assert!(
        metrics.contains("kube_mtls_webhook_injected_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_mtls_webhook_rejected_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_mtls_webhook_skipped_total{reason=\"already_injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_mtls_webhook_admission_duration_seconds_count"),
        "{metrics}"
    );
    assert_eq!(plain_get(wh.plain, "/healthz").unwrap().0, 200);
    let _ = &wh.proc;
}

async fn served(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let s = kube_mtls_tests::tls::connect(addr, cfg).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(i: &Issued) -> Vec<u8> {
    let d: rustls_pki_types::CertificateDer =
        rustls_pki_types::pem::PemObject::from_pem_slice(i.cert_pem.as_bytes()).unwrap();
    d.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_rotates_and_a_bad_one_is_refused() {
    let wh = Webhook::start();
    let next = wh.ca.issue(&Leaf::dns("localhost"));
    assert_ne!(served(wh.https, wh.client()).await, der(&next));
    next.write_dir(wh.dir.path()).unwrap();
    let mut rotated = false;
    for _ in 0..400 {
        if served(wh.https, wh.client()).await == der(&next) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "rotated serving certificate never served:\n{}",
        wh.proc.logs()
    );
    std::fs::write(wh.dir.path().join("tls.crt"), "garbage").unwrap();
    assert!(
        wh.proc.wait_for_log(
            "rotated serving certificate refused",
            Duration::from_secs(20)
        ),
        "{}",
        wh.proc.logs()
    );
    assert_eq!(served(wh.https, wh.client()).await, der(&next));
}

/// Out of file descriptors, the HTTPS listener backs off instead of spinning
/// (the real binary under a real RLIMIT_NOFILE), counts the failures, and
/// answers reviews again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_webhook_backs_off_and_serves_again() {
    let w = Webhook::start();
    let pid = w.proc.pid();
    set_fd_limit(pid, open_fds(pid) + 4);
    let silent: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(w.https).expect("the kernel queues the connection"))
        .collect();
    assert!(
        w.proc
            .wait_for_log("accept failed", Duration::from_secs(10)),
        "no failed accept logged:\n{}",
        w.proc.logs()
    );
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(used < 20, "{used} ticks of CPU in 1 s out of descriptors");
    drop(silent);
    assert!(
        w.proc
            .wait_for_log("accepting connections again", Duration::from_secs(10)),
        "{}",
        w.proc.logs()
    );
    let response = w.review("default", pod(json!({}))).await;
    assert_eq!(response["allowed"], true, "{response}");
    let (_, metrics) = plain_get(w.plain, "/metrics").expect("metrics");
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kube_mtls_webhook_accept_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(failed.is_some_and(|n| n >= 1.0), "{metrics}");
}
