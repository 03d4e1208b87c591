//! `kubectl mtls check` against the mock API server: the chart as installed
//! passes every check, and each check fails (or warns) with its fix when the
//! one thing it looks at is broken.

mod common;

use common::{DryRun, Fake, NOW_2030};
use kube_mtls_tests::certs::{TestCa, Validity};
use kubectl_mtls::check::{self, Level, Line, Options};
use serde_json::json;

const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kube-mtls";
const DEPLOY: &str = "/apis/apps/v1/namespaces/kube-mtls/deployments/kube-mtls-webhook";
const ISSUER: &str = "/apis/cert-manager.io/v1/clusterissuers/kube-mtls-ca";
const CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/mtlsprofiles.kube-mtls.io";
const SERVING: &str =
    "/apis/cert-manager.io/v1/namespaces/kube-mtls/certificates/kube-mtls-webhook-tls";

fn opts() -> Options {
    Options {
        probe_namespace: "default".into(),
        expiry_warning_secs: 7 * 86_400,
        now: NOW_2030,
    }
}

async fn run(f: Fake) -> Vec<Line> {
    run_with(f, opts()).await
}

async fn run_with(f: Fake, o: Options) -> Vec<Line> {
    check::run(&f.client(), &o).await.expect("the check runs")
}

fn healthy() -> (Fake, TestCa) {
    let ca = TestCa::new("webhook CA");
    (Fake::installed(&ca, Validity::Current), ca)
}

/// The line whose check starts with `prefix`.
fn line<'a>(lines: &'a [Line], prefix: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.check == prefix)
        .or_else(|| lines.iter().find(|l| l.check.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no line {prefix}: {lines:#?}"))
}

fn assert_line(lines: &[Line], prefix: &str, level: Level, needle: &str) {
    let l = line(lines, prefix);
    assert_eq!(l.level, level, "{l:#?}");
    assert!(l.message.contains(needle), "{needle:?} not in {l:#?}");
    if level >= Level::Warn {
        assert!(
            l.fix.as_deref().is_some_and(|f| !f.is_empty()),
            "no fix: {l:#?}"
        );
    }
}

#[tokio::test]
async fn the_chart_as_installed_passes_every_check() {
    let (f, _ca) = healthy();
    let requests = f.requests.clone();
    let lines = run(f).await;
    for l in &lines {
        assert_eq!(l.level, Level::Pass, "{l:#?}");
    }
    for prefix in [
        "api-server",
        "cert-manager",
        "issuer ClusterIssuer/kube-mtls-ca",
        "crd",
        "webhook replicas",
        "webhook admission",
        "ca-bundle namespace.inject.kube-mtls.io",
        "ca-bundle pod.inject.kube-mtls.io",
        "serving certificate expiry",
        "serving certificate",
        "selectors",
        "pod-security/web",
    ] {
        line(&lines, prefix);
    }
    assert!(!check::failed(&lines));
    assert_line(&lines, "api-server", Level::Pass, "native sidecars");
    assert_line(
        &lines,
        "serving certificate expiry",
        Level::Pass,
        "expires in",
    );
    let log = requests.lock().unwrap();
    assert!(
        log.iter()
            .any(|r| r.starts_with("POST /api/v1/namespaces/default/pods?")
                && r.contains("dryRun=All")),
        "{log:?}"
    );
}

#[tokio::test]
async fn before_install_only_the_platform_is_judged() {
    let lines = run(Fake::empty()).await;
    assert!(!check::failed(&lines), "{lines:#?}");
    assert_line(&lines, "cert-manager", Level::Pass, "served");
    for skipped in ["issuer", "crd", "webhook", "selectors", "pod-security"] {
        assert_eq!(line(&lines, skipped).level, Level::Skip, "{lines:#?}");
    }
}

#[tokio::test]
async fn an_api_server_without_native_sidecars_warns_and_fails_when_forced() {
    let (mut f, _ca) = healthy();
    f.version = ("1".into(), "28".into());
    assert_line(&run(f.clone()).await, "api-server", Level::Warn, "fallback");
    f.edit(DEPLOY, |d| {
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array_mut()
            .unwrap();
        for a in args.iter_mut() {
            if a.as_str()
                .is_some_and(|s| s.starts_with("--native-sidecar="))
            {
                *a = json!("--native-sidecar=true");
            }
        }
    });
    let lines = run(f).await;
    assert_line(&lines, "api-server", Level::Fail, "never start");
    assert!(check::failed(&lines));
}

#[tokio::test]
async fn without_cert_manager_the_check_fails_and_issuers_are_skipped() {
    let (mut f, _ca) = healthy();
    f.cert_manager = false;
    let lines = run(f).await;
    assert_line(&lines, "cert-manager", Level::Fail, "not installed");
    assert_eq!(line(&lines, "issuer").level, Level::Skip);
}

#[tokio::test]
async fn an_issuer_that_is_not_ready_fails_with_its_reason() {
    let (mut f, _ca) = healthy();
    f.edit(ISSUER, |i| {
        i["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "ErrGetKeyPair", "message": "secret \"kube-mtls-ca\" not found"}]);
    });
    let lines = run(f.clone()).await;
    assert_line(
        &lines,
        "issuer ClusterIssuer/kube-mtls-ca",
        Level::Fail,
        "ErrGetKeyPair",
    );
    assert!(check::failed(&lines));

    f.remove(ISSUER);
    assert_line(
        &run(f).await,
        "issuer ClusterIssuer/kube-mtls-ca",
        Level::Fail,
        "not found",
    );
}

#[tokio::test]
async fn an_issuer_a_profile_names_is_checked_too() {
    let (mut f, _ca) = healthy();
    f.put(json!({"apiVersion": "kube-mtls.io/v1alpha1", "kind": "MtlsProfile", "metadata": {"name": "p", "namespace": "web"},
        "spec": {"issuer": {"kind": "Issuer", "name": "team-ca"}}}));
    assert_line(
        &run(f).await,
        "issuer Issuer/team-ca in web",
        Level::Fail,
        "MtlsProfile",
    );
}

#[tokio::test]
async fn a_missing_or_unestablished_crd_fails() {
    let (mut f, _ca) = healthy();
    f.edit(CRD, |c| {
        c["status"]["conditions"] = json!([{"type": "Established", "status": "False"}])
    });
    assert_line(&run(f.clone()).await, "crd", Level::Fail, "not Established");
    f.remove(CRD);
    assert_line(&run(f).await, "crd", Level::Fail, "not installed");
}

#[tokio::test]
async fn webhook_replicas_that_are_not_ready_warn() {
    let (mut f, _ca) = healthy();
    f.edit(DEPLOY, |d| d["status"]["readyReplicas"] = json!(0));
    assert_line(
        &run(f).await,
        "webhook replicas",
        Level::Warn,
        "0 of 2 replicas ready",
    );
}

#[tokio::test]
async fn a_webhook_that_does_not_inject_fails_the_admission_check() {
    let (mut f, _ca) = healthy();
    f.dry_run = DryRun::Refuse("Internal error occurred: failed calling webhook \"namespace.inject.kube-mtls.io\": connection refused".into());
    assert_line(
        &run(f.clone()).await,
        "webhook admission",
        Level::Fail,
        "failed calling webhook",
    );
    f.dry_run = DryRun::Plain;
    assert_line(
        &run(f).await,
        "webhook admission",
        Level::Fail,
        "without the sidecar",
    );
}

#[tokio::test]
async fn webhook_args_the_webhook_refuses_fail_with_its_own_message() {
    let (f, _ca) = healthy();
    assert!(
        run(f.clone())
            .await
            .iter()
            .all(|l| l.check != "webhook flags")
    );
    let mut f = f;
    f.edit(DEPLOY, |d| {
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array_mut()
            .unwrap();
        for a in args.iter_mut() {
            if a.as_str().is_some_and(|s| s.starts_with("--default-mode=")) {
                *a = json!("--default-mode=lenient");
            }
        }
    });
    assert_line(
        &run(f).await,
        "webhook flags",
        Level::Fail,
        "'lenient' for '--default-mode",
    );
}

#[tokio::test]
async fn a_missing_webhook_deployment_fails() {
    let (mut f, _ca) = healthy();
    f.remove(DEPLOY);
    assert_line(&run(f).await, "webhook", Level::Fail, "no Deployment");
}

#[tokio::test]
async fn a_ca_bundle_that_is_empty_or_from_another_ca_fails() {
    let (mut f, _ca) = healthy();
    f.edit(MWC, |h| {
        for w in h["webhooks"].as_array_mut().unwrap() {
            w["clientConfig"]
                .as_object_mut()
                .unwrap()
                .remove("caBundle");
        }
    });
    assert_line(
        &run(f.clone()).await,
        "ca-bundle namespace.inject",
        Level::Fail,
        "caBundle is empty",
    );
    f.set_ca_bundle(&TestCa::new("another CA").cert_pem);
    let lines = run(f).await;
    assert_line(
        &lines,
        "ca-bundle pod.inject",
        Level::Fail,
        "does not verify",
    );
    assert!(
        line(&lines, "ca-bundle pod.inject")
            .fix
            .as_deref()
            .unwrap()
            .contains("cainjector")
    );
}

#[tokio::test]
async fn a_serving_certificate_for_another_name_fails() {
    let ca = TestCa::new("webhook CA");
    let mut f = Fake::installed(&ca, Validity::Current);
    let other = common::issued(&ca, "elsewhere.kube-mtls.svc", Validity::Current);
    f.edit(
        "/api/v1/namespaces/kube-mtls/secrets/kube-mtls-webhook-tls",
        |s| {
            s["data"]["tls.crt"] = json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &other.cert_pem
            ));
        },
    );
    assert_line(
        &run(f).await,
        "ca-bundle namespace.inject",
        Level::Fail,
        "not valid for kube-mtls-webhook.kube-mtls.svc",
    );
}

#[tokio::test]
async fn serving_certificate_expiry_warns_when_close_and_fails_when_past() {
    let (f, _ca) = healthy();
    // The test CA's leaves are valid until 2090: judge them just before and after.
    let end = 3_786_912_000; // 2090-01-01
    let mut o = opts();
    o.now = end - 3 * 86_400;
    let lines = run_with(f.clone(), o.clone()).await;
    let l = line(&lines, "serving certificate expiry");
    assert!(
        l.level == Level::Warn && l.message.contains("expires in"),
        "{l:#?}"
    );
    o.now = end + 86_400 * 400;
    assert_line(
        &run_with(f, o).await,
        "serving certificate expiry",
        Level::Fail,
        "expired",
    );
}

#[tokio::test]
async fn a_serving_certificate_that_cert_manager_has_not_issued_fails() {
    let (mut f, _ca) = healthy();
    f.edit(SERVING, |c| c["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "Pending", "message": "issuing"}]));
    assert_line(
        &run(f).await,
        "serving certificate",
        Level::Fail,
        "not Ready: issuing (Pending)",
    );
}

#[tokio::test]
async fn selectors_that_send_the_webhooks_own_namespace_or_skip_opted_in_ones_are_reported() {
    let (mut f, _ca) = healthy();
    f.edit(MWC, |h| {
        for w in h["webhooks"].as_array_mut().unwrap() {
            w["namespaceSelector"]["matchExpressions"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e["key"] != "kubernetes.io/metadata.name");
        }
    });
    let lines = run(f.clone()).await;
    assert!(
        lines.iter().any(|l| l.check == "selectors"
            && l.level == Level::Fail
            && l.message.contains("own namespace kube-mtls")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.check == "selectors"
            && l.level == Level::Warn
            && l.message.contains("kube-system")),
        "{lines:#?}"
    );

    let (mut f, _ca) = healthy();
    f.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager", "labels": {"kube-mtls.io/inject": "enabled"}}}));
    let lines = run(f).await;
    assert!(
        lines.iter().any(|l| l.check == "selectors"
            && l.level == Level::Warn
            && l.message.contains("namespace cert-manager opted in")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn namespaces_whose_pod_security_refuses_net_admin_fail_before_pods_do() {
    for (labels, level, needle) in [
        (
            json!({"pod-security.kubernetes.io/enforce": "baseline"}),
            Level::Fail,
            "enforces Pod Security baseline",
        ),
        (
            json!({"pod-security.kubernetes.io/enforce": "restricted"}),
            Level::Fail,
            "NET_ADMIN",
        ),
        (
            json!({"pod-security.kubernetes.io/enforce": "privileged", "pod-security.kubernetes.io/warn": "baseline"}),
            Level::Warn,
            "warn=baseline",
        ),
        (
            json!({"pod-security.kubernetes.io/enforce": "privileged"}),
            Level::Pass,
            "privileged",
        ),
    ] {
        let (mut f, _ca) = healthy();
        // Opted in by a pod's label rather than the namespace's.
        let mut l = labels.clone();
        l["kubernetes.io/metadata.name"] = json!("shop");
        f.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": l}}));
        f.put(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"kube-mtls.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}));
        let lines = run(f).await;
        assert_line(&lines, "pod-security/shop", level, needle);
        assert_eq!(check::failed(&lines), level == Level::Fail, "{labels}");
    }
}

/// An opted-in namespace `shop` with these Pod Security labels.
fn shop(f: &mut Fake, labels: serde_json::Value) {
    let mut l = labels;
    l["kubernetes.io/metadata.name"] = json!("shop");
    l["kube-mtls.io/inject"] = json!("enabled");
    f.put(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": l}}),
    );
}

#[tokio::test]
async fn in_cni_mode_baseline_and_restricted_namespaces_pass_and_say_why() {
    for (labels, needle) in [
        (
            json!({"pod-security.kubernetes.io/enforce": "restricted"}),
            "enforces Pod Security restricted",
        ),
        (
            json!({"pod-security.kubernetes.io/enforce": "baseline"}),
            "enforces Pod Security baseline",
        ),
        (
            json!({"pod-security.kubernetes.io/enforce": "privileged", "pod-security.kubernetes.io/warn": "restricted"}),
            "enforces Pod Security privileged",
        ),
    ] {
        let (mut f, _ca) = healthy();
        f.cni_mode();
        f.node("node-a", "linux");
        f.cni_agent("node-a", None);
        shop(&mut f, labels.clone());
        let lines = run(f.clone()).await;
        assert_line(&lines, "pod-security/shop", Level::Pass, needle);
        assert_line(&lines, "pod-security/shop", Level::Pass, "CNI mode");
        assert_line(&lines, "pod-security/shop", Level::Pass, "NET_ADMIN");
        assert!(!check::failed(&lines), "{labels}: {lines:#?}");
        // The same namespace without CNI mode fails (or warns) as before.
        f.set_webhook_arg("cni-mode", "false");
        let level = line(&run(f).await, "pod-security/shop").level;
        assert!(level >= Level::Warn, "{labels}: {level:?}");
    }
}

#[tokio::test]
async fn in_cni_mode_every_node_has_a_line_and_one_without_a_ready_agent_fails() {
    let (mut f, _ca) = healthy();
    f.cni_mode();
    for n in ["node-a", "node-b", "node-c"] {
        f.node(n, "linux");
    }
    f.node("win-1", "windows");
    f.cni_agent("node-a", None);
    f.cni_agent("node-b", None);
    f.cni_agent("node-c", None);
    let lines = run(f.clone()).await;
    assert!(!check::failed(&lines), "{lines:#?}");
    for n in ["node-a", "node-b", "node-c"] {
        assert_line(
            &lines,
            &format!("cni-agent/{n}"),
            Level::Pass,
            "kube-mtls-cni is installed and in the node's CNI configuration",
        );
    }
    assert_line(&lines, "cni-agent/win-1", Level::Skip, "windows");

    // One agent crashes, another node has none (its taints are not tolerated).
    f.cni_agent("node-b", Some("CrashLoopBackOff"));
    f.remove("/api/v1/namespaces/kube-mtls/pods/kube-mtls-cni-node-c");
    let lines = run(f).await;
    assert!(check::failed(&lines));
    assert_line(&lines, "cni-agent/node-a", Level::Pass, "ready");
    assert_line(
        &lines,
        "cni-agent/node-b",
        Level::Fail,
        "agent kube-mtls-cni-node-b is not ready (Running, CrashLoopBackOff)",
    );
    assert_line(
        &lines,
        "cni-agent/node-b",
        Level::Fail,
        "kube-mtls-validate",
    );
    let fix = line(&lines, "cni-agent/node-b")
        .fix
        .clone()
        .unwrap_or_default();
    assert!(
        fix.contains("kubectl -n kube-mtls logs kube-mtls-cni-node-b"),
        "{fix}"
    );
    assert_line(
        &lines,
        "cni-agent/node-c",
        Level::Fail,
        "no kube-mtls CNI agent runs on this node",
    );
    let fix = line(&lines, "cni-agent/node-c")
        .fix
        .clone()
        .unwrap_or_default();
    assert!(
        fix.contains("describe daemonset kube-mtls-cni") && fix.contains("node node-c"),
        "{fix}"
    );
}

#[tokio::test]
async fn in_cni_mode_without_the_agent_daemonset_the_check_fails() {
    let (mut f, _ca) = healthy();
    f.set_webhook_arg("cni-mode", "true");
    f.node("node-a", "linux");
    let lines = run(f).await;
    assert_line(&lines, "cni-agent", Level::Fail, "no DaemonSet labelled");
    assert!(
        line(&lines, "cni-agent")
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("cni.enabled=true"))
    );
    assert_line(
        &lines,
        "cni-agent/node-a",
        Level::Fail,
        "no kube-mtls CNI agent",
    );
}

#[tokio::test]
async fn in_the_default_mode_no_node_lines_are_shown() {
    let (mut f, _ca) = healthy();
    f.node("node-a", "linux");
    // Even with the agent's objects present, the webhook decides the mode.
    f.cni_mode();
    f.set_webhook_arg("cni-mode", "false");
    let lines = run(f).await;
    assert!(
        lines.iter().all(|l| !l.check.starts_with("cni-agent")),
        "{lines:#?}"
    );
    assert!(!check::failed(&lines), "{lines:#?}");
}

const MASTER: &str = "/api/v1/namespaces/kube-mtls/configmaps/kube-mtls-trust-bundle";
const WEB_TRUST: &str = "/api/v1/namespaces/web/configmaps/kube-mtls-trust";

/// Fingerprint prefix of a CA as the check names it.
fn short_fp(ca: &TestCa) -> String {
    common::ca_cert(ca).fingerprint[..12].to_owned()
}

/// Mid-rotation: `old` is the previous CA, `new` the current one; `web` has
/// both in its bundle, `front` still holds a certificate from `old`, `api`
/// one from `new`.
fn mid_rotation() -> (Fake, TestCa, TestCa) {
    let (mut f, _ca) = healthy();
    let (old, new) = (TestCa::new("workload CA"), TestCa::new("workload CA"));
    f.trust_bundle(&[&new], &[(&old, NOW_2030 + 86_400)]);
    f.trust_configmap("web", &[&old, &new]);
    f.workload("web", "front", &old);
    f.workload("web", "api", &new);
    (f, old, new)
}

#[tokio::test]
async fn the_trust_bundle_lines_say_which_cas_are_trusted_and_the_healthy_one_passes() {
    let (f, _ca) = healthy();
    let lines = run(f).await;
    assert_line(&lines, "trust-bundle CA ", Level::Pass, "current");
    assert_line(
        &lines,
        "trust-bundle CA ",
        Level::Pass,
        "CN=kube-mtls workload CA",
    );
    assert_line(
        &lines,
        "workload certificates",
        Level::Pass,
        "1 live workload certificates, all from the current CA",
    );
    assert_line(&lines, "trust-bundle/web", Level::Pass, "every CA");
}

#[tokio::test]
async fn mid_rotation_the_previous_ca_and_the_workloads_still_on_it_are_counted() {
    let (f, old, new) = mid_rotation();
    let lines = run(f).await;
    assert!(!check::failed(&lines), "{lines:#?}");
    let old_line = format!("trust-bundle CA {}", short_fp(&old));
    assert_line(
        &lines,
        &old_line,
        Level::Pass,
        "previous CA, trusted until 2030-01-02T00:00:00Z",
    );
    assert_line(&lines, &old_line, Level::Pass, "kube-mtls.io/retire=");
    let new_line = format!("trust-bundle CA {}", short_fp(&new));
    assert_line(&lines, &new_line, Level::Pass, ": current");
    assert_line(
        &lines,
        "workload certificates",
        Level::Warn,
        "1 of 2 live workload certificates are still from a previous CA (in web)",
    );
    assert!(
        line(&lines, "workload certificates")
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("cmctl renew --all -n web"))
    );
    assert_line(
        &lines,
        "trust-bundle/web",
        Level::Pass,
        "every CA of the trust bundle (2)",
    );
}

#[tokio::test]
async fn a_namespace_bundle_without_the_ca_of_a_live_certificate_fails_with_the_fix() {
    let (mut f, _old, new) = mid_rotation();
    f.trust_configmap("web", &[&new]);
    let lines = run(f).await;
    assert_line(
        &lines,
        "trust-bundle/web",
        Level::Fail,
        "lacks the CA of 1 live workload certificates (web/kube-mtls-front-tls)",
    );
    let fix = line(&lines, "trust-bundle/web")
        .fix
        .clone()
        .unwrap_or_default();
    assert!(
        fix.contains("kubectl -n web delete configmap kube-mtls-trust")
            && fix.contains("logs deployment/kube-mtls-webhook"),
        "{fix}"
    );
    assert!(check::failed(&lines));
}

#[tokio::test]
async fn a_namespace_bundle_not_yet_updated_warns_and_a_missing_one_fails() {
    let (mut f, old, _new) = mid_rotation();
    f.trust_configmap("web", &[&old]);
    f.remove("/api/v1/namespaces/web/secrets/kube-mtls-api-tls");
    assert_line(
        &run(f.clone()).await,
        "trust-bundle/web",
        Level::Warn,
        "does not have every CA of the trust bundle yet (missing CN=workload CA",
    );
    f.remove(WEB_TRUST);
    let lines = run(f).await;
    assert_line(
        &lines,
        "trust-bundle/web",
        Level::Fail,
        "no ConfigMap kube-mtls-trust",
    );
}

#[tokio::test]
async fn a_certificate_from_a_ca_outside_the_bundle_fails() {
    let (mut f, _ca) = healthy();
    f.workload("web", "legacy", &TestCa::new("retired too early"));
    let lines = run(f).await;
    assert_line(
        &lines,
        "workload certificates",
        Level::Fail,
        "1 of 2 live workload certificates chain to no CA in the trust bundle (web/kube-mtls-legacy-tls)",
    );
}

#[tokio::test]
async fn an_intermediate_ca_with_its_root_counts_its_certificates_as_current() {
    let (mut f, _ca) = healthy();
    let root = TestCa::new("corp root");
    let mid = root.intermediate("corp workload CA", Validity::Current);
    f.trust_bundle(&[&root, &mid], &[]);
    f.trust_configmap("web", &[&root, &mid]);
    f.workload("web", "front", &mid);
    let lines = run(f).await;
    assert!(!check::failed(&lines), "{lines:#?}");
    assert_line(
        &lines,
        "workload certificates",
        Level::Pass,
        "all from the current CA",
    );
    assert_line(
        &lines,
        &format!("trust-bundle CA {}", short_fp(&mid)),
        Level::Pass,
        "CN=corp workload CA",
    );
}

#[tokio::test]
async fn without_a_master_bundle_the_check_warns_and_with_the_secret_source_it_skips() {
    let (mut f, _ca) = healthy();
    f.remove(MASTER);
    let lines = run(f.clone()).await;
    assert_line(
        &lines,
        "trust-bundle",
        Level::Warn,
        "no kube-mtls-trust-bundle in kube-mtls",
    );
    assert!(
        line(&lines, "trust-bundle")
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("trustBundle.source=secret"))
    );
    f.set_webhook_arg("trust-bundle-source", "secret");
    let lines = run(f).await;
    assert_line(
        &lines,
        "trust-bundle",
        Level::Skip,
        "--trust-bundle-source=secret",
    );
    assert!(lines.iter().all(|l| l.check != "workload certificates"));
}

#[tokio::test]
async fn a_current_ca_close_to_its_end_warns_to_rotate() {
    let (f, _ca) = healthy();
    let mut o = opts();
    o.now = 3_944_678_400 - 86_400; // the test CA ends 2095-01-01
    let lines = run_with(f, o).await;
    assert_line(&lines, "trust-bundle CA ", Level::Warn, "close to its end");
}
