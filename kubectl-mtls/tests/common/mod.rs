//! A mock API server for the plugin's tests, on tower-test: it holds objects
//! by their REST path, answers gets and lists (with label selectors, across
//! namespaces), `/version`, cert-manager's discovery, and dry-run pod
//! creation as the webhook would (injected, not injected, or refused).
//!
//! [`Fake::installed`] starts from `deploy/kube-mtls.yaml` (the chart rendered
//! with default values) plus the status a healthy cluster gives it, and a
//! trust bundle with one workload in `web`, so the tests judge the chart's
//! real objects; each test then breaks one thing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube_mtls_tests::certs::{Issued, Leaf, TestCa, Validity};
use kube_mtls_webhook::trust::bundle::{self, Bundle, Entry, Retain};
use kube_mtls_webhook::trust::der::{CaCert, pem_certs};
use serde::Deserialize;
use serde_json::{Value, json};

/// What a dry-run pod creation answers.
#[derive(Clone)]
pub enum DryRun {
    /// As the webhook: the pod with the status annotation and the sidecar.
    Inject,
    /// Created as sent: nothing called the webhook.
    Plain,
    /// Refused with this message (e.g. the webhook could not be called).
    Refuse(String),
}

/// The mock cluster.
#[derive(Clone)]
pub struct Fake {
    pub objects: BTreeMap<String, Value>,
    pub version: (String, String),
    pub cert_manager: bool,
    pub dry_run: DryRun,
    /// Every request, as `METHOD path?query`.
    pub requests: Arc<Mutex<Vec<String>>>,
}

pub const NOW_2030: i64 = 1_893_456_000;
/// The chart's webhook Deployment.
pub const WEBHOOK_DEPLOYMENT: &str =
    "/apis/apps/v1/namespaces/kube-mtls/deployments/kube-mtls-webhook";

/// The labels of the chart's CNI agent pods (charts/kube-mtls/templates/cni-daemonset.yaml).
pub fn cni_agent_labels() -> Value {
    json!({"app.kubernetes.io/name": "kube-mtls", "app.kubernetes.io/instance": "kube-mtls", "app.kubernetes.io/component": "cni-agent"})
}
/// What the chart's webhook injects (deploy/kube-mtls.yaml, `--sidecar-image`).
pub const SIDECAR_IMAGE: &str = "ghcr.io/kube-mtls/kube-mtls-sidecar:0.1.0";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The REST path of an object.
pub fn path_of(o: &Value) -> String {
    let api = o["apiVersion"].as_str().unwrap_or("v1");
    let base = if api == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api}")
    };
    let plural = format!("{}s", o["kind"].as_str().unwrap_or("").to_ascii_lowercase());
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{base}/{plural}/{name}"),
    }
}

fn ready(o: &mut Value, kind: &str) {
    o["status"]["conditions"] =
        json!([{"type": kind, "status": "True", "reason": "Ready", "message": "ok"}]);
}

impl Fake {
    /// An empty cluster with cert-manager's API and the default namespaces.
    pub fn empty() -> Fake {
        let mut f = Fake {
            objects: BTreeMap::new(),
            version: ("1".into(), "33".into()),
            cert_manager: true,
            dry_run: DryRun::Inject,
            requests: Arc::default(),
        };
        for ns in ["default", "kube-system", "cert-manager"] {
            f.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        f
    }

    /// The chart as `helm install` leaves it on a healthy cluster, with a
    /// serving certificate from `ca` valid as `serving`.
    pub fn installed(ca: &TestCa, serving: Validity) -> Fake {
        let mut f = Fake::empty();
        let manifests = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kube-mtls.yaml"
        ))
        .expect("deploy/kube-mtls.yaml");
        for doc in serde_yaml::Deserializer::from_str(&manifests) {
            let Ok(o) = Value::deserialize(doc) else {
                continue;
            };
            if o.is_object() {
                f.put(o);
            }
        }
        let issued = ca.issue(&Leaf::dns("kube-mtls-webhook.kube-mtls.svc").validity(serving));
        f.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kube-mtls-webhook-tls", "namespace": "kube-mtls"},
            "data": {"tls.crt": b64(&issued.cert_pem), "tls.key": b64(&issued.key_pem), "ca.crt": b64(&ca.cert_pem)}}));
        f.set_ca_bundle(&ca.cert_pem);
        f.edit(
            "/apis/apps/v1/namespaces/kube-mtls/deployments/kube-mtls-webhook",
            |d| {
                d["status"] = json!({"replicas": 2, "readyReplicas": 2, "availableReplicas": 2});
            },
        );
        f.edit("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/mtlsprofiles.kube-mtls.io", |c| {
            c["status"] = json!({"acceptedNames": {"kind": "MtlsProfile", "plural": "mtlsprofiles"}, "storedVersions": ["v1alpha1"]});
            ready(c, "Established");
        });
        for p in [
            "/apis/cert-manager.io/v1/clusterissuers/kube-mtls-ca",
            "/apis/cert-manager.io/v1/namespaces/kube-mtls/certificates/kube-mtls-webhook-tls",
        ] {
            f.edit(p, |o| ready(o, "Ready"));
        }
        f.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"kube-mtls.io/inject": "enabled"}}}));
        let workload_ca = TestCa::new("kube-mtls workload CA (cluster.local)");
        f.trust_bundle(&[&workload_ca], &[]);
        f.trust_configmap("web", &[&workload_ca]);
        f.workload("web", "front", &workload_ca);
        f
    }

    /// The master trust bundle: `current` CAs, and `previous` ones kept until then.
    pub fn trust_bundle(&mut self, current: &[&TestCa], previous: &[(&TestCa, i64)]) {
        let mut b = Bundle::default();
        for (ca, until) in previous {
            let c = ca_cert(ca);
            let entry = Entry {
                ca: c.clone(),
                retain: Retain::Until(*until),
            };
            b.cas.insert(c.fingerprint, entry);
        }
        let seen: Vec<CaCert> = current.iter().map(|ca| ca_cert(ca)).collect();
        let b = bundle::merge(&b, &seen, NOW_2030, 86_400);
        self.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-mtls-trust-bundle", "namespace": "kube-mtls", "labels": {"app.kubernetes.io/managed-by": "kube-mtls"}},
            "data": b.data()}));
    }

    /// `kube-mtls-trust` in `ns` with these CAs.
    pub fn trust_configmap(&mut self, ns: &str, cas: &[&TestCa]) {
        let pem: String = cas.iter().map(|ca| ca_cert(ca).pem).collect();
        self.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-mtls-trust", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "kube-mtls"}},
            "data": {"ca-bundle.crt": pem}}));
    }

    /// The workload Secret `kube-mtls-<sa>-tls` in `ns`, issued by `ca`.
    pub fn workload(&mut self, ns: &str, sa: &str, ca: &TestCa) {
        let issued = ca.issue(&Leaf::spiffe(&format!(
            "spiffe://cluster.local/ns/{ns}/sa/{sa}"
        )));
        self.put(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("kube-mtls-{sa}-tls"), "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "kube-mtls"}},
            "data": {"tls.crt": b64(&issued.cert_pem), "tls.key": b64(&issued.key_pem), "ca.crt": b64(&issued.ca_pem)}}));
    }

    pub fn put(&mut self, o: Value) {
        self.objects.insert(path_of(&o), o);
    }

    pub fn remove(&mut self, path: &str) {
        assert!(self.objects.remove(path).is_some(), "no object at {path}");
    }

    pub fn edit(&mut self, path: &str, f: impl FnOnce(&mut Value)) {
        f(self
            .objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("no object at {path}")));
    }

    /// Sets the webhook container's `--<flag>=<value>` arg (replacing the
    /// chart's, or added when the chart writes none).
    pub fn set_webhook_arg(&mut self, flag: &str, value: &str) {
        self.edit(WEBHOOK_DEPLOYMENT, |d| {
            let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array_mut()
                .expect("the webhook's args");
            let prefix = format!("--{flag}=");
            args.retain(|a| !a.as_str().is_some_and(|s| s.starts_with(&prefix)));
            args.push(json!(format!("{prefix}{value}")));
        });
    }

    /// CNI mode as `helm install --set cni.enabled=true` leaves it: the
    /// webhook's `--cni-mode=true` and the agent DaemonSet (no pods yet).
    pub fn cni_mode(&mut self) {
        self.set_webhook_arg("cni-mode", "true");
        self.put(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-mtls-cni", "namespace": "kube-mtls", "labels": cni_agent_labels()},
            "spec": {"selector": {"matchLabels": cni_agent_labels()}, "template": {"metadata": {"labels": cni_agent_labels()},
                "spec": {"containers": [{"name": "cni-agent", "image": SIDECAR_IMAGE}]}}}}));
    }

    /// A node; `os` is its `kubernetes.io/os` label.
    pub fn node(&mut self, name: &str, os: &str) {
        self.put(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": os, "kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    }

    /// The CNI agent's pod on `node`, Ready or waiting with `reason`.
    pub fn cni_agent(&mut self, node: &str, waiting: Option<&str>) {
        let (ready, state) = match waiting {
            None => ("True", json!({"running": {}})),
            Some(reason) => ("False", json!({"waiting": {"reason": reason}})),
        };
        self.put(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("kube-mtls-cni-{node}"), "namespace": "kube-mtls", "labels": cni_agent_labels(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-mtls-cni", "uid": "u", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "cni-agent", "image": SIDECAR_IMAGE}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": ready}],
                "containerStatuses": [{"name": "cni-agent", "image": SIDECAR_IMAGE, "imageID": "", "ready": ready == "True", "restartCount": 0, "state": state}]}}));
    }

    pub fn set_ca_bundle(&mut self, pem: &str) {
        self.edit(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kube-mtls",
            |h| {
                for w in h["webhooks"].as_array_mut().into_iter().flatten() {
                    w["clientConfig"]["caBundle"] = json!(b64(pem));
                }
            },
        );
    }

    /// A client of this cluster; the fake serves until the client is dropped.
    pub fn client(self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                send.send_response(self.answer(req).await);
            }
        });
        Client::new(svc, "default")
    }

    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        self.requests
            .lock()
            .expect("log")
            .push(format!("{method} {path}?{query}"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (status, value) = match (method, path.as_str()) {
            (Method::GET, "/version") => (
                StatusCode::OK,
                json!({
                "major": self.version.0, "minor": self.version.1, "gitVersion": format!("v{}.{}.0", self.version.0, self.version.1),
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            (Method::GET, "/apis/cert-manager.io/v1") if self.cert_manager => (
                StatusCode::OK,
                json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cert-manager.io/v1",
                "resources": cert_manager_resources()}),
            ),
            (Method::GET, _) => self.get(&path, &query),
            (Method::POST, p) if p.ends_with("/pods") && query.contains("dryRun=All") => {
                self.dry_run(&path, &body)
            }
            _ => not_found(&path),
        };
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&value).expect("JSON")))
            .expect("response")
    }

    fn get(&self, path: &str, query: &str) -> (StatusCode, Value) {
        if let Some(o) = self.objects.get(path) {
            return (StatusCode::OK, o.clone());
        }
        // After /api/v1 or /apis/<group>/<version>: an odd number of segments is a list.
        let rest: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let skip = if rest.first() == Some(&"api") { 2 } else { 3 };
        if rest.len() <= skip || (rest.len() - skip).is_multiple_of(2) {
            return not_found(path);
        }
        let selector = labels_in(query);
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(p, _)| in_collection(p, path))
            .map(|(_, o)| o.clone())
            .filter(|o| {
                selector
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][k] == *v)
            })
            .collect();
        (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
        )
    }

    fn dry_run(&self, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let mut pod: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let ns = path.split('/').nth(4).unwrap_or("default");
        pod["metadata"]["namespace"] = json!(ns);
        pod["metadata"]["name"] = json!("kubectl-mtls-check-abcde");
        match &self.dry_run {
            DryRun::Plain => (StatusCode::CREATED, pod),
            DryRun::Inject => {
                pod["metadata"]["annotations"]["kube-mtls.io/status"] = json!("{}");
                pod["spec"]["initContainers"] = json!([{"name": "kube-mtls-init", "image": SIDECAR_IMAGE}, {"name": "kube-mtls-sidecar", "image": SIDECAR_IMAGE, "restartPolicy": "Always"}]);
                (StatusCode::CREATED, pod)
            }
            DryRun::Refuse(msg) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": msg, "reason": "InternalError", "code": 500}),
            ),
        }
    }
}

/// Whether the object at `object` is in the collection `list` (namespaced or across namespaces).
fn in_collection(object: &str, list: &str) -> bool {
    let Some((parent, _)) = object.rsplit_once('/') else {
        return false;
    };
    if parent == list {
        return true;
    }
    // /api/v1/namespaces/<ns>/pods lists as /api/v1/pods too.
    let segs: Vec<&str> = parent.split('/').collect();
    match segs.iter().position(|s| *s == "namespaces") {
        Some(i) if segs.len() == i + 3 => {
            let mut all = segs[..i].to_vec();
            all.push(segs[i + 2]);
            all.join("/") == list
        }
        _ => false,
    }
}

/// `labelSelector=a%3Db,c%3Dd` as pairs.
fn labels_in(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("labelSelector="))
        .flat_map(|s| {
            s.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn cert_manager_resources() -> Vec<Value> {
    ["certificates", "issuers", "clusterissuers"]
        .map(|r| json!({"name": r, "singularName": "", "namespaced": r != "clusterissuers", "kind": r, "verbs": ["get", "list"]}))
        .to_vec()
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// The certificate material of a workload CA for tests.
pub fn issued(ca: &TestCa, dns: &str, validity: Validity) -> Issued {
    ca.issue(&Leaf::dns(dns).validity(validity))
}

/// A CA's certificate as the trust bundle keeps it.
pub fn ca_cert(ca: &TestCa) -> CaCert {
    pem_certs(&ca.cert_pem).expect("a CA certificate").remove(0)
}
