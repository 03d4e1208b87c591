//! AdmissionReview in, AdmissionReview out.
//!
//! [`decide`] is the whole policy and does no I/O: skip, inject (with the patch),
//! or reject (with the reason). [`Admission::review`] wraps it with the wire
//! format, the Certificate for the pod's identity, the namespace's trust
//! bundle ConfigMap when it has none yet, metrics and events.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use serde_json::{Value, json};

use crate::annotations::{self, INJECT, Rejection};
use crate::certificate::{DesiredCertificate, ensure_certificate};
use crate::checks;
use crate::cluster::ClusterView;
use crate::events::Recorder;
use crate::metrics::Metrics;
use crate::patch::{self, Injection};
use crate::resolve::{self, Defaults, Resolved};
use crate::trust::controller::ensure_namespace_configmap;

pub use crate::skip::Skip;

/// The verdict on one pod.
#[derive(Debug)]
pub enum Decision {
    Skip(Skip),
    Inject(Box<(Injection, Resolved)>),
    Reject(Rejection),
}

/// Decides what to do with `pod` in `namespace`.
pub fn decide(
    pod: &Value,
    namespace: &str,
    own_namespace: &str,
    view: &ClusterView,
    defaults: &Defaults,
) -> Decision {
    if namespace == "kube-system" {
        return Decision::Skip(Skip::SystemNamespace);
    }
    if namespace == own_namespace {
        return Decision::Skip(Skip::OwnNamespace);
    }
    let ann = annotations::annotations(pod);
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(INJECT))
        .and_then(Value::as_str);
    match ann.get(INJECT).and_then(Value::as_str).or(label) {
        Some("enabled") => {}
        Some("disabled") => return Decision::Skip(Skip::OptedOut),
        Some(other) => {
            return Decision::Reject(Rejection {
                subject: format!("annotation {INJECT}"),
                problem: format!("{other:?} is not enabled or disabled"),
                fix: "write enabled or disabled".into(),
            });
        }
        None if view.namespace_opted_in(namespace) => {}
        None => return Decision::Skip(Skip::NotOptedIn),
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Decision::Skip(Skip::HostNetwork);
    }
    if patch::already_injected(pod) {
        return Decision::Skip(Skip::AlreadyInjected);
    }
    // Without containers the patch cannot apply (`add /spec/containers/0`,
    // `add /spec/initContainers` under a missing spec); the API server would
    // refuse the pod anyway, so say why.
    if pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Decision::Reject(Rejection {
            subject: "pod".into(),
            problem: "spec.containers is missing or empty: a pod needs at least one container"
                .into(),
            fix: "give the pod at least one container in spec.containers".into(),
        });
    }
    if let Err(r) = checks::proxy_uid(pod) {
        return Decision::Reject(r);
    }
    match resolve::resolve(pod, namespace, view, defaults) {
        Ok((resolved, mut warnings)) => {
            let mut injection = patch::inject(pod, &resolved);
            if let Err(problem) = patch::parse_back(&injection) {
                return Decision::Reject(Rejection {
                    subject: "the injected containers' settings".into(),
                    problem,
                    fix:
                        "change the annotation, profile field or pod value behind the setting named"
                            .into(),
                });
            }
            warnings.append(&mut injection.warnings);
            warnings.extend(checks::soft_gaps(pod, &resolved));
            injection.warnings = warnings;
            Decision::Inject(Box::new((injection, resolved)))
        }
        Err(r) => Decision::Reject(r),
    }
}

/// A request body that is not an AdmissionReview.
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview v1: {0}")]
pub struct BadReview(pub String);

/// The admission handler's state.
pub struct Admission {
    pub defaults: Defaults,
    pub own_namespace: String,
    pub view: ClusterView,
    /// `None` in standalone mode: no Certificates, no Events.
    pub client: Option<kube::Client>,
    pub metrics: Arc<Metrics>,
    pub events: Option<Recorder>,
}

fn response(uid: &Value, body: Value) -> Value {
    let mut resp = body;
    resp["uid"] = uid.clone();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
}

impl Admission {
    /// Handles one AdmissionReview request body.
    pub async fn review(&self, body: &[u8]) -> Result<Value, BadReview> {
        let started = Instant::now();
        let review: Value = serde_json::from_slice(body)
            .map_err(|e| BadReview(format!("body is not JSON: {e}")))?;
        if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
            return Err(BadReview("kind is not AdmissionReview".into()));
        }
        if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
            return Err(BadReview("apiVersion is not admission.k8s.io/v1".into()));
        }
        let req = review
            .get("request")
            .ok_or_else(|| BadReview("no request".into()))?;
        let uid = req
            .get("uid")
            .filter(|u| u.is_string())
            .ok_or_else(|| BadReview("request.uid missing".into()))?;
        let is_pod_create = req.get("operation").and_then(Value::as_str) == Some("CREATE")
            && req.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod");
        let Some(pod) = req.get("object").filter(|o| o.is_object() && is_pod_create) else {
            self.metrics.skipped(Skip::NotPodCreate);
            return Ok(response(uid, json!({"allowed": true})));
        };
        let namespace = req
            .get("namespace")
            .and_then(Value::as_str)
            .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
            .unwrap_or("default");
        let dry_run = req.get("dryRun").and_then(Value::as_bool).unwrap_or(false);
        let pod_name = pod
            .pointer("/metadata/name")
            .or_else(|| pod.pointer("/metadata/generateName"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();

        let out = match decide(
            pod,
            namespace,
            &self.own_namespace,
            &self.view,
            &self.defaults,
        ) {
            Decision::Skip(why) => {
                self.metrics.skipped(why);
                if !matches!(why, Skip::NotOptedIn | Skip::NotPodCreate) {
                    tracing::info!(namespace, pod = %pod_name, reason = why.as_str(), "not injected");
                    self.event(
                        pod,
                        namespace,
                        "Skipped",
                        &format!("kube-mtls: not injected ({})", why.as_str()),
                        dry_run,
                    )
                    .await;
                }
                response(uid, json!({"allowed": true}))
            }
            Decision::Reject(r) => {
                self.rejected(uid, pod, namespace, &pod_name, &r, dry_run)
                    .await
            }
            Decision::Inject(boxed) => {
                let (injection, resolved) = *boxed;
                if let (Some(client), false, None) = (&self.client, dry_run, &resolved.secret) {
                    let desired = DesiredCertificate::from_resolved(&resolved);
                    if let Err(e) = ensure_certificate(client, &desired).await {
                        let r = Rejection {
                            subject: format!("Certificate {}/{}", desired.namespace, desired.name()),
                            problem: format!("cannot be created or updated: {e}"),
                            fix: "check that cert-manager is installed and the webhook's RBAC allows certificates.cert-manager.io".into(),
                        };
                        return Ok(self
                            .rejected(uid, pod, namespace, &pod_name, &r, dry_run)
                            .await);
                    }
                }
                if resolved.trust_bundle && !dry_run {
                    self.ensure_trust_configmap(namespace).await;
                }
                let patch = serde_json::to_vec(&injection.ops).unwrap_or_default();
                self.metrics.injected.inc();
                tracing::info!(namespace, pod = %pod_name, identity = %resolved.identity(), "injected");
                self.event(
                    pod,
                    namespace,
                    "Injected",
                    &format!("kube-mtls: sidecar injected for {}", resolved.identity()),
                    dry_run,
                )
                .await;
                let mut body = json!({
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                });
                if !injection.warnings.is_empty() {
                    body["warnings"] = json!(injection.warnings);
                }
                response(uid, body)
            }
        };
        self.metrics.observe_latency(started.elapsed());
        Ok(out)
    }

    /// The namespace's `kube-mtls-trust`, created when the controller's
    /// cache has none (a namespace's first injected pod); nothing is sent when
    /// it exists. A failure only delays the pod (its volume waits for the
    /// ConfigMap, which the controller also creates), so it is logged.
    async fn ensure_trust_configmap(&self, namespace: &str) {
        let (Some(client), Some(trust)) = (&self.client, self.view.trust()) else {
            return;
        };
        if trust.has_configmap(namespace) {
            return;
        }
        let Some(pem) = trust.shared.bundle() else {
            return;
        };
        if let Err(e) = ensure_namespace_configmap(client, namespace, &pem).await {
            tracing::warn!(namespace, error = %e, "cannot create the trust bundle ConfigMap kube-mtls-trust; the controller retries. Fix: the webhook's RBAC must allow create and patch on configmaps");
        }
    }

    async fn rejected(
        &self,
        uid: &Value,
        pod: &Value,
        ns: &str,
        pod_name: &str,
        r: &Rejection,
        dry_run: bool,
    ) -> Value {
        self.metrics.rejected.inc();
        tracing::warn!(namespace = ns, pod = %pod_name, reason = %r, "rejected");
        self.event(pod, ns, "Rejected", &format!("kube-mtls: {r}"), dry_run)
            .await;
        response(
            uid,
            json!({"allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": format!("kube-mtls: {r}")}}),
        )
    }

    async fn event(&self, pod: &Value, ns: &str, reason: &str, note: &str, dry_run: bool) {
        if dry_run {
            return;
        }
        if let Some(rec) = &self.events {
            rec.publish_on_owner(pod, ns, reason, note).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::defaults;

    fn pod(annotations: Value, spec: Value) -> Value {
        let mut annotations = annotations;
        annotations[INJECT] = json!("enabled");
        json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec})
    }

    fn decide_on(pod: &Value, native: bool) -> Decision {
        decide(
            pod,
            "shop",
            "kube-mtls",
            &ClusterView::empty(),
            &defaults(native),
        )
    }

    fn warnings(d: Decision) -> Vec<String> {
        match d {
            Decision::Inject(b) => b.0.warnings,
            other => panic!("not injected: {other:?}"),
        }
    }

    fn app(extra: Value) -> Value {
        let mut c = json!({"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    #[test]
    fn the_proxy_uid_is_rejected_on_the_pod_and_on_any_container() {
        let as_proxy = json!({"runAsUser": 15337});
        let pods = [
            pod(
                json!({}),
                json!({"securityContext": as_proxy, "containers": [app(json!({}))]}),
            ),
            pod(
                json!({}),
                json!({"containers": [app(json!({"securityContext": as_proxy}))]}),
            ),
            pod(
                json!({}),
                json!({"initContainers": [{"name": "setup", "image": "x", "securityContext": as_proxy}], "containers": [app(json!({}))]}),
            ),
        ];
        for (i, p) in pods.iter().enumerate() {
            match decide_on(p, true) {
                Decision::Reject(r) => {
                    let msg = r.to_string();
                    assert!(
                        msg.contains("15337") && msg.contains("runAsUser") && msg.contains("Fix:"),
                        "{i}: {msg}"
                    );
                }
                other => panic!("pod {i} was not rejected: {other:?}"),
            }
        }
        let other_uid = pod(
            json!({}),
            json!({"securityContext": {"runAsUser": 1000}, "containers": [app(json!({}))]}),
        );
        assert!(matches!(decide_on(&other_uid, true), Decision::Inject(_)));
    }

    #[test]
    fn a_lone_sidecar_resource_annotation_gives_a_pod_the_api_server_accepts() {
        let p = pod(
            json!({"kube-mtls.io/sidecar-memory-request": "128Mi"}),
            json!({"containers": [app(json!({}))]}),
        );
        let Decision::Inject(b) = decide_on(&p, true) else {
            panic!("not injected")
        };
        let (injection, resolved) = *b;
        assert_eq!(resolved.resources["limits"]["memory"], "128Mi");
        assert!(
            injection
                .warnings
                .iter()
                .any(|w| w.contains("sidecar-memory-limit")),
            "{:?}",
            injection.warnings
        );
        let both = pod(
            json!({"kube-mtls.io/sidecar-cpu-request": "200m", "kube-mtls.io/sidecar-cpu-limit": "100m"}),
            json!({"containers": [app(json!({}))]}),
        );
        assert!(matches!(decide_on(&both, true), Decision::Reject(_)));
    }

    #[test]
    fn grpc_ports_outside_h2_ports_are_warned_about() {
        let grpc = app(
            json!({"ports": [{"name": "grpc", "containerPort": 9000}, {"containerPort": 9001, "appProtocol": "kubernetes.io/h2c"}, {"containerPort": 9002}],
            "readinessProbe": {"grpc": {"port": 9002}}}),
        );
        let w = warnings(decide_on(
            &pod(json!({}), json!({"containers": [grpc.clone()]})),
            true,
        ));
        for port in ["9000", "9001", "9002"] {
            assert!(
                w.iter()
                    .any(|w| w.contains(&format!("port {port} "))
                        && w.contains("kube-mtls.io/h2-ports")),
                "port {port}: {w:?}"
            );
        }
        let declared = pod(
            json!({"kube-mtls.io/h2-ports": "9000,9001,9002"}),
            json!({"containers": [grpc]}),
        );
        assert_eq!(warnings(decide_on(&declared, true)), Vec::<String>::new());
    }

    #[test]
    fn init_containers_before_a_regular_sidecar_with_outbound_capture_are_warned_about() {
        let spec = json!({"initContainers": [{"name": "migrate", "image": "x"}], "containers": [app(json!({}))]});
        let outbound = json!({"kube-mtls.io/outbound-ports": "5432"});
        let w = warnings(decide_on(&pod(outbound.clone(), spec.clone()), false));
        assert!(
            w.iter().any(|w| w.contains("migrate")
                && w.contains("5432")
                && w.contains("native-sidecar")),
            "{w:?}"
        );
        assert_eq!(
            warnings(decide_on(&pod(outbound, spec.clone()), true)),
            Vec::<String>::new()
        );
        assert_eq!(
            warnings(decide_on(&pod(json!({}), spec), false)),
            Vec::<String>::new()
        );
    }

    fn admission() -> Admission {
        Admission {
            defaults: defaults(true),
            own_namespace: "kube-mtls".into(),
            view: ClusterView::empty(),
            client: None,
            metrics: Arc::new(Metrics::new()),
            events: None,
        }
    }

    async fn review_of(pod: Value) -> Value {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u1", "operation": "CREATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": pod},
        });
        admission()
            .review(&serde_json::to_vec(&body).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_pod_without_containers_is_rejected_rather_than_given_a_patch_that_cannot_apply() {
        let no_spec = json!({"metadata": {"name": "p", "annotations": {INJECT: "enabled"}}});
        let pods = [
            no_spec,
            pod(json!({}), json!({})),
            pod(json!({}), json!({"containers": []})),
            pod(json!({}), json!({"containers": "app"})),
        ];
        for (i, p) in pods.into_iter().enumerate() {
            let r = review_of(p).await;
            let resp = &r["response"];
            assert_eq!(resp["allowed"], false, "{i}: {r}");
            assert!(resp.get("patch").is_none(), "{i}: {r}");
            let msg = resp["status"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains("spec.containers is missing or empty") && msg.contains("Fix:"),
                "{i}: {msg}"
            );
        }
        let ok = review_of(pod(json!({}), json!({"containers": [app(json!({}))]}))).await;
        assert_eq!(ok["response"]["allowed"], true, "{ok}");
        assert!(ok["response"]["patch"].is_string(), "{ok}");
    }

    /// The pod and namespace that lead `decide` to `skip` (`None`: only the
    /// AdmissionReview wrapper can tell, see the test below).
    fn skipped_case(skip: Skip) -> Option<(Value, &'static str)> {
        use crate::fixtures::{NS, OWN_NS, pod};
        let injected = || {
            let p = pod().build();
            match decide(&p, NS, OWN_NS, &fixture_view(), &defaults(true)) {
                Decision::Inject(b) => patch::apply(&p, &b.0.ops).expect("applies"),
                other => panic!("not injected: {other:?}"),
            }
        };
        Some(match skip {
            Skip::NotOptedIn => (pod().unannotate("inject").build(), NS),
            Skip::OptedOut => (pod().annotate("inject", "disabled").build(), "labelled"),
            Skip::SystemNamespace => (pod().build(), "kube-system"),
            Skip::OwnNamespace => (pod().build(), OWN_NS),
            Skip::HostNetwork => (pod().spec("hostNetwork", json!(true)).build(), NS),
            Skip::AlreadyInjected => (injected(), NS),
            Skip::NotPodCreate => return None,
        })
    }

    /// Namespace `labelled` opts in by label.
    fn fixture_view() -> ClusterView {
        use crate::fixtures::{namespace, view};
        view(
            vec![],
            vec![namespace("labelled", &[(INJECT, "enabled")], &[])],
        )
    }

    #[test]
    fn every_skip_reason_is_decided() {
        for skip in Skip::ALL {
            let Some((p, ns)) = skipped_case(skip) else {
                continue;
            };
            let d = decide(
                &p,
                ns,
                crate::fixtures::OWN_NS,
                &fixture_view(),
                &defaults(true),
            );
            assert!(
                matches!(d, Decision::Skip(s) if s == skip),
                "{skip:?}: {d:?}"
            );
        }
    }

    #[tokio::test]
    async fn what_is_not_a_pod_create_is_allowed_untouched_and_counted() {
        let a = admission();
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u2", "operation": "UPDATE", "kind": {"kind": "Pod"}, "namespace": "shop", "object": crate::fixtures::pod().build()},
        });
        let r = a.review(&serde_json::to_vec(&body).unwrap()).await.unwrap();
        assert_eq!(r["response"]["allowed"], true, "{r}");
        assert!(r["response"].get("patch").is_none(), "{r}");
        assert!(
            a.metrics.encode().contains("reason=\"not_pod_create\"} 1"),
            "{}",
            a.metrics.encode()
        );
    }

    #[test]
    fn opting_in_by_pod_label_or_namespace_label_and_bad_values() {
        use crate::fixtures::{OWN_NS, pod};
        let by_label = pod().unannotate("inject").label(INJECT, "enabled").build();
        let by_namespace = pod().unannotate("inject").build();
        let view = fixture_view();
        for (p, ns) in [(&by_label, "shop"), (&by_namespace, "labelled")] {
            let d = decide(p, ns, OWN_NS, &view, &defaults(true));
            assert!(matches!(d, Decision::Inject(_)), "{d:?}");
        }
        let bad = pod().annotate("inject", "yes").build();
        match decide(&bad, "shop", OWN_NS, &view, &defaults(true)) {
            Decision::Reject(r) => assert_eq!(r.subject, format!("annotation {INJECT}")),
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn a_setting_the_sidecar_would_refuse_is_rejected_before_admission() {
        use crate::fixtures::{OWN_NS, container, pod};
        let probe = json!({"httpGet": {"port": 8080, "path": "healthz"}});
        let p = pod()
            .containers(vec![
                container("app")
                    .port("http", 8080)
                    .probe("readinessProbe", probe)
                    .build(),
            ])
            .build();
        match decide(&p, "shop", OWN_NS, &ClusterView::empty(), &defaults(true)) {
            Decision::Reject(r) => {
                let msg = r.to_string();
                assert!(
                    msg.contains("--app-probes") && msg.contains("healthz"),
                    "{msg}"
                );
            }
            other => panic!("admitted a pod whose sidecar would not start: {other:?}"),
        }
    }
}
