//! Step 6 of the cluster test: bad input is refused with the webhook's own
//! message, the Certificate controller keeps what a profile asked for and
//! settles, identities go with their service accounts, the webhook fails
//! closed only for opted-in pods, and `helm uninstall` leaves nothing behind.

use std::time::Duration;

use kube_mtls_tests::cluster::{API_IP, Cluster};
use serde_json::Value;

const BAD_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: bad
  namespace: shop
  labels: {kube-mtls.io/inject: enabled}
  annotations: {kube-mtls.io/inbound-ports: "no-such-port"}
spec:
  containers: [{name: app, image: example/app:1}]
"#;

const BAD_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: shop}
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata:
      labels: {app: broken, kube-mtls.io/inject: enabled}
      annotations: {kube-mtls.io/inbound-ports: "no-such-port"}
    spec:
      containers: [{name: app, image: example/app:1}]
"#;

/// A bad annotation: `kubectl` shows the webhook's message, and so does the
/// ReplicaSet's FailedCreate event.
pub fn refuse_bad_annotations(c: &mut Cluster) {
    let out = c.apply(BAD_POD);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a pod with a bad annotation was admitted"
    );
    assert!(
        err.contains("denied the request") && err.contains("kube-mtls.io/inbound-ports"),
        "kubectl does not show the webhook's reason: {err}"
    );
    let out = c.apply(BAD_DEPLOYMENT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait("the FailedCreate event", Duration::from_secs(60), |c| {
        let events = c.get_json(&[
            "-n",
            "shop",
            "get",
            "events",
            "--field-selector",
            "reason=FailedCreate",
        ]);
        events["items"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("kube-mtls.io/inbound-ports"))
            })
        })
    });
    c.kubectl_ok(&["-n", "shop", "delete", "deployment", "broken"]);
}

/// A pod (not a Deployment) opted in by label, with extra annotations.
fn pod(ns: &str, name: &str, sa: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
         labels: {{kube-mtls.io/inject: enabled}}\n  annotations: {{{annotations}}}\n\
         spec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: example/app:1}}]\n"
    )
}

fn certificate(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    c.try_get_json(&["-n", ns, "get", "certificate", name])
}

/// The controller's reconcile counter for `outcome`, from the webhook's metrics.
fn reconciles(c: &Cluster, outcome: &str) -> u64 {
    let out = c
        .command("curl")
        .args(["-sf", &format!("http://{API_IP}:8080/metrics")])
        .output()
        .expect("curl");
    let prefix =
        format!("kube_mtls_webhook_certificate_reconciles_total{{outcome=\"{outcome}\"}} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// An MtlsProfile's certificate lifetime survives the controller: a hand edit
/// is brought back to the profile's value (not the flag default), and once in
/// line the controller leaves the Certificate alone.
pub fn keep_profiles_and_settle(c: &mut Cluster) {
    let profile = "apiVersion: kube-mtls.io/v1alpha1\nkind: MtlsProfile\nmetadata: {name: long, namespace: shop}\nspec: {certificateDuration: 48h, certificateRenewBefore: 12h}\n";
    assert!(c.apply(profile).status.success());
    let out = c.apply(&pod(
        "shop",
        "ledger",
        "ledger",
        "kube-mtls.io/profile: long",
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration = |c: &Cluster| {
        certificate(c, "shop", "kube-mtls-ledger").map(|v| v["spec"]["duration"].clone())
    };
    assert_eq!(
        duration(c),
        Some("48h".into()),
        "the profile's duration was not used"
    );
    c.kubectl_ok(&[
        "-n",
        "shop",
        "patch",
        "certificate",
        "kube-mtls-ledger",
        "--type=merge",
        "-p",
        r#"{"spec":{"duration":"99h"}}"#,
    ]);
    c.wait(
        "the controller restoring the profile's duration",
        Duration::from_secs(60),
        |c| duration(c) == Some("48h".into()),
    );
    let (updated, in_line) = (reconciles(c, "updated"), reconciles(c, "in_line"));
    // Touching the service account makes the controller look at its Certificate again.
    c.kubectl_ok(&[
        "-n",
        "shop",
        "annotate",
        "serviceaccount",
        "ledger",
        "touched=1",
    ]);
    c.wait("another reconcile", Duration::from_secs(60), |c| {
        reconciles(c, "in_line") > in_line
    });
    assert_eq!(
        reconciles(c, "updated"),
        updated,
        "the controller re-applied a Certificate that was in line"
    );
    assert_eq!(duration(c), Some("48h".into()));
}

/// Deleting a service account removes its Certificate.
pub fn remove_certificates_with_their_service_account(c: &mut Cluster) {
    let out = c.apply(&pod("shop", "temp", "temp", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        certificate(c, "shop", "kube-mtls-temp").is_some(),
        "no Certificate at admission"
    );
    c.kubectl_ok(&["-n", "shop", "delete", "serviceaccount", "temp"]);
    c.wait(
        "the Certificate of a deleted service account to go",
        Duration::from_secs(60),
        |c| certificate(c, "shop", "kube-mtls-temp").is_none(),
    );
}

/// With the webhook down, opted-in pods are refused (failurePolicy Fail);
/// pods in kube-system and in namespaces that did not opt in are created.
pub fn fail_closed_without_the_webhook(c: &mut Cluster) {
    c.stop("kube-mtls-webhook");
    let out = c.apply(&pod("shop", "while-down", "while-down", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an opted-in pod was created without the webhook"
    );
    assert!(err.contains("failed calling webhook"), "{err}");
    let system = pod("kube-system", "system", "system", "");
    assert!(c.apply(&system).status.success(), "kube-system pod refused");
    c.kubectl_ok(&["create", "namespace", "plain"]);
    let plain = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: plain}\nspec:\n  containers: [{name: app, image: example/app:1}]\n";
    let out = c.apply(plain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm uninstall` and the README's clean-up leave nothing of kube-mtls.
pub fn uninstall(c: &mut Cluster) {
    let out = c.helm(&[
        "uninstall",
        "kube-mtls",
        "--namespace",
        "kube-mtls",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hooks = c.kubectl_ok(&["get", "mutatingwebhookconfigurations", "-o", "name"]);
    assert!(!hooks.contains("kube-mtls"), "left behind: {hooks}");
    let selector = "app.kubernetes.io/managed-by=kube-mtls";
    c.kubectl_ok(&[
        "delete",
        "certificates.cert-manager.io",
        "-A",
        "-l",
        selector,
    ]);
    let left = c.kubectl_ok(&[
        "get",
        "certificates.cert-manager.io",
        "-A",
        "-l",
        selector,
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "Certificates left behind: {left}");
}
