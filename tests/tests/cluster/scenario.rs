//! The cluster test's workloads and the small steps its checks share: the
//! manifests a user would apply, reading pods back, and the offline injector
//! run on the same templates.

use std::process::Command;
use std::time::Duration;

use kube_mtls_tests::bins::bin;
use kube_mtls_tests::cluster::Cluster;
use kube_mtls_tests::process::output_with_input;
use serde::Deserialize;
use serde_json::Value;

/// An opted-in Deployment: its namespace, and its name, which is also its app
/// label and its service account.
pub struct Workload {
    pub namespace: &'static str,
    pub app: &'static str,
}

/// Opted in by the pod label; takes calls from `web` only.
pub const ORDERS: Workload = Workload {
    namespace: "shop",
    app: "orders",
};
/// Opted in by its namespace's label; its plaintext calls to 8080 leave as mTLS.
pub const FRONT: Workload = Workload {
    namespace: "web",
    app: "front",
};
/// Opted in by the pod label; not allowed to call `orders`.
pub const CRON: Workload = Workload {
    namespace: "batch",
    app: "cron",
};

pub const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata:
  name: web
  labels: {kube-mtls.io/inject: enabled}
---
apiVersion: v1
kind: Namespace
metadata: {name: batch}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: front, namespace: web}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cron, namespace: batch}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: orders}}
  template:
    metadata:
      labels: {app: orders, kube-mtls.io/inject: enabled}
      annotations:
        kube-mtls.io/allowed-clients: "spiffe://cluster.local/ns/web/sa/*"
    spec:
      serviceAccountName: orders
      containers:
      - name: app
        image: example/orders:1
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
        livenessProbe:
          httpGet: {path: /livez, port: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: front, namespace: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: front}}
  template:
    metadata:
      labels: {app: front}
      annotations:
        kube-mtls.io/outbound-ports: "8080"
    spec:
      serviceAccountName: front
      containers:
      - name: app
        image: example/front:1
        ports:
        - {name: http, containerPort: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: cron, namespace: batch}
spec:
  replicas: 1
  selector: {matchLabels: {app: cron}}
  template:
    metadata:
      labels: {app: cron, kube-mtls.io/inject: enabled}
    spec:
      serviceAccountName: cron
      containers:
      - name: app
        image: example/cron:1
        ports:
        - {name: http, containerPort: 8080}
"#;

/// The pods read back from the API server, by app.
#[derive(Default)]
pub struct Stored {
    pub pods: Vec<(String, Value)>,
}

impl Stored {
    pub fn pod(&self, app: &str) -> &Value {
        &self
            .pods
            .iter()
            .find(|(a, _)| a == app)
            .unwrap_or_else(|| panic!("no stored pod {app}"))
            .1
    }
}

/// Every document of a multi-document YAML string.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// The Deployment `app` of [`WORKLOADS`], opted in by annotation so that the
/// offline injector (which cannot see namespace labels) injects it too.
pub fn deployment_doc(app: &str) -> String {
    let mut doc = yaml_docs(WORKLOADS)
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == app)
        .unwrap_or_else(|| panic!("no Deployment {app}"));
    doc["spec"]["template"]["metadata"]["annotations"]["kube-mtls.io/inject"] = "enabled".into();
    serde_json::to_string(&doc).expect("JSON is YAML")
}

/// The webhook Deployment's flags that shape injected pods, as the chart set them.
pub fn injection_flags(c: &Cluster) -> Vec<String> {
    let d = c.get_json(&["-n", "kube-mtls", "get", "deployment", "kube-mtls-webhook"]);
    let args =
        kube_mtls_tests::kubelet::strings(&d["spec"]["template"]["spec"]["containers"][0]["args"]);
    let shaping = [
        "--sidecar-image=",
        "--trust-domain=",
        "--issuer=",
        "--cert-duration=",
        "--cert-renew-before=",
        "--native-sidecar=",
    ];
    let flags: Vec<String> = args
        .into_iter()
        .filter(|a| shaping.iter().any(|p| a.starts_with(p)))
        .collect();
    assert_eq!(flags.len(), shaping.len(), "chart args changed: {flags:?}");
    flags
}

/// `kube-mtls-webhook inject` with `flags` on `manifest`: the injected Deployment.
pub fn offline_inject(flags: &[String], manifest: &str) -> Value {
    let mut cmd = Command::new(bin("kube-mtls-webhook"));
    cmd.args(["--log-format", "text", "inject"])
        .args(flags)
        .args(["-f", "-"]);
    let out = output_with_input(&mut cmd, manifest.as_bytes());
    assert!(
        out.status.success(),
        "inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("inject printed the Deployment")
}

/// The one pod of Deployment `app`, once the controller manager created it.
pub fn wait_pod(c: &mut Cluster, ns: &str, app: &str) -> Value {
    let selector = format!("app={app}");
    let mut pod = Value::Null;
    c.wait(
        &format!("a pod of {ns}/{app}"),
        Duration::from_secs(120),
        |c| {
            let list = c.get_json(&["-n", ns, "get", "pods", "-l", &selector]);
            match list["items"].as_array().map(Vec::as_slice) {
                Some([one]) => {
                    pod = one.clone();
                    true
                }
                _ => false,
            }
        },
    );
    pod
}

/// `openssl x509 -noout -text` of a PEM certificate.
pub fn x509_text(pem: &str) -> String {
    openssl(&["x509", "-noout", "-text"], pem)
}

/// The serial of a PEM certificate, as `openssl x509 -serial` prints it.
pub fn serial(pem: &str) -> String {
    openssl(&["x509", "-noout", "-serial"], pem)
        .trim()
        .to_owned()
}

fn openssl(args: &[&str], input: &str) -> String {
    let out = output_with_input(Command::new("openssl").args(args), input.as_bytes());
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
