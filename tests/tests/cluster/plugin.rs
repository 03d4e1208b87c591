//! `kubectl mtls` on the real control plane, run by kubectl as a plugin found
//! on PATH: `check` passes right after `helm install`, and fails with the
//! right line when cert-manager's issuer is not Ready or an opted-in namespace
//! enforces Pod Security baseline (which the real API server then proves by
//! refusing an injected pod); `status` and `policy` show the cluster test's
//! workloads as the webhook resolved them.

use std::process::Output;
use std::time::Duration;

use kube_mtls_tests::bins::bin;
use kube_mtls_tests::cluster::{Cluster, bin_dir, has_condition};
use serde_json::Value;

/// `kubectl mtls <args>` as the admin, the plugin on kubectl's PATH.
fn kubectl_mtls(c: &Cluster, args: &[&str]) -> Output {
    let plugin = bin("kubectl-mtls");
    let dir = plugin.parent().expect("the plugin's directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.command(bin_dir().join("kubectl"))
        .arg("mtls")
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run kubectl mtls")
}

/// `kubectl mtls check -o json`: its exit code and lines.
fn check(c: &Cluster) -> (Option<i32>, Vec<Value>) {
    let out = kubectl_mtls(c, &["check", "-o", "json"]);
    let lines: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check -o json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code(),
        lines.as_array().cloned().unwrap_or_default(),
    )
}

fn line<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["check"] == name)
        .unwrap_or_else(|| panic!("no line {name}: {lines:#?}"))
}

/// Right after `helm install` (and the webhook started), nothing fails. The
/// webhook's replicas warn: this control plane has no node, so the harness
/// runs the webhook next to it and the Deployment never has a ready pod.
pub fn check_passes_after_install(c: &Cluster) {
    let (code, lines) = check(c);
    assert_eq!(code, Some(0), "{lines:#?}");
    for l in &lines {
        let allowed =
            l["level"] == "pass" || (l["check"] == "webhook replicas" && l["level"] == "warn");
        assert!(allowed || l["level"] == "skip", "{l:#}");
    }
    for name in [
        "api-server",
        "cert-manager",
        "issuer ClusterIssuer/kube-mtls-ca",
        "crd",
        "webhook admission",
        "ca-bundle namespace.inject.kube-mtls.io",
        "ca-bundle pod.inject.kube-mtls.io",
        "serving certificate expiry",
        "serving certificate",
        "selectors",
    ] {
        assert_eq!(line(&lines, name)["level"], "pass", "{lines:#?}");
    }
    // The table a user reads says the same, without colour off a terminal.
    let out = kubectl_mtls(c, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("kubectl mtls check:\n{text}");
    assert!(
        out.status.success() && text.contains("PASS  ") && !text.contains('\x1b'),
        "{text}"
    );
}

fn issuer_ready(c: &Cluster) -> bool {
    c.try_get_json(&["get", "clusterissuer", "kube-mtls-ca"])
        .is_some_and(|o| has_condition(&o, "Ready"))
}

fn patch_issuer_secret(c: &Cluster, secret: &str) {
    let patch = format!(r#"{{"spec":{{"ca":{{"secretName":"{secret}"}}}}}}"#);
    c.kubectl_ok(&[
        "patch",
        "clusterissuer",
        "kube-mtls-ca",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// A ClusterIssuer whose CA Secret is gone is not Ready: `check` exits 1 on
/// that issuer's line; restored, it passes again.
pub fn check_fails_when_the_issuer_is_not_ready(c: &mut Cluster) {
    patch_issuer_secret(c, "kube-mtls-ca-missing");
    c.wait("the issuer to lose Ready", Duration::from_secs(60), |c| {
        !issuer_ready(c)
    });
    let (code, lines) = check(c);
    assert_eq!(code, Some(1), "{lines:#?}");
    let l = line(&lines, "issuer ClusterIssuer/kube-mtls-ca");
    assert_eq!(l["level"], "fail", "{l:#}");
    assert!(
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("not Ready")),
        "{l:#}"
    );
    let failed: Vec<&Value> = lines.iter().filter(|l| l["level"] == "fail").collect();
    assert_eq!(failed.len(), 1, "only the issuer fails: {failed:#?}");

    patch_issuer_secret(c, "kube-mtls-ca");
    c.wait(
        "the issuer Ready again",
        Duration::from_secs(60),
        issuer_ready,
    );
    assert_eq!(check(c).0, Some(0));
}

/// An opted-in namespace enforcing baseline: `check` names it, and the real
/// API server refuses an injected pod there for the reason the line gives.
pub fn check_fails_when_a_namespace_enforces_baseline(c: &mut Cluster) {
    c.kubectl_ok(&["create", "namespace", "hardened"]);
    c.kubectl_ok(&[
        "label",
        "namespace",
        "hardened",
        "kube-mtls.io/inject=enabled",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    let (code, lines) = check(c);
    assert_eq!(code, Some(1), "{lines:#?}");
    let l = line(&lines, "pod-security/hardened");
    assert_eq!(l["level"], "fail", "{l:#}");
    let message = l["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("baseline") && message.contains("NET_ADMIN"),
        "{l:#}"
    );
    assert!(
        l["fix"]
            .as_str()
            .is_some_and(|f| f.contains("enforce=privileged")),
        "{l:#}"
    );

    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: refused, namespace: hardened}\nspec:\n  containers: [{name: app, image: example/app:1}]\n";
    let out = c.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], pod);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PodSecurity") && err.contains("NET_ADMIN"),
        "{err}"
    );

    c.kubectl_ok(&["label", "namespace", "hardened", "kube-mtls.io/inject-"]);
    assert_eq!(check(c).0, Some(0), "the namespace no longer opted in");
}

/// `status` lists the cluster test's workloads with their identities, and
/// `policy` resolves orders' allow-list: web's front may call it, batch's cron not.
pub fn status_and_policy(c: &Cluster) {
    status_lists_the_workloads(c);
    policy_resolves_the_allow_list(c);
}

fn status_lists_the_workloads(c: &Cluster) {
    let out = kubectl_mtls(c, &["status", "-A"]);
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("kubectl mtls status -A:\n{table}");
    assert!(
        out.status.success() && table.starts_with("NAMESPACE"),
        "{table}"
    );
    let out = kubectl_mtls(c, &["status", "-A", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let workloads = inv["workloads"].as_array().cloned().unwrap_or_default();
    for (ns, app) in [("shop", "orders"), ("web", "front"), ("batch", "cron")] {
        let w = workloads
            .iter()
            .find(|w| w["namespace"] == ns && w["name"] == app)
            .unwrap_or_else(|| panic!("no {ns}/{app}: {inv:#}"));
        assert_eq!(w["kind"], "Deployment", "{w:#}");
        assert_eq!(
            w["identity"],
            format!("spiffe://cluster.local/ns/{ns}/sa/{app}"),
            "{w:#}"
        );
        assert_eq!(
            (w["mode"].as_str(), w["policy"].as_str()),
            (Some("strict"), Some("enforce"))
        );
        assert!(
            w["pods"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["outdated"] == false)),
            "{w:#}"
        );
        assert!(
            w["certificateNotAfter"].is_i64(),
            "cert-manager issued it: {w:#}"
        );
    }
}

fn policy_resolves_the_allow_list(c: &Cluster) {
    let out = kubectl_mtls(c, &["policy", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).expect("policy JSON");
    let verdict = |caller: &str, server: &str| {
        m["edges"]
            .as_array()
            .and_then(|es| {
                es.iter()
                    .find(|e| e["caller"] == caller && e["server"] == server)
            })
            .map(|e| e["verdict"].clone())
            .unwrap_or_else(|| panic!("{caller} -> {server}: {m:#}"))
    };
    assert_eq!(verdict("web/front", "shop/orders"), "allow");
    assert_eq!(verdict("batch/cron", "shop/orders"), "deny");
    assert_eq!(
        verdict("shop/orders", "web/front"),
        "allow",
        "no allow-list: the trust domain"
    );

    let out = kubectl_mtls(c, &["policy", "-n", "shop", "--for", "batch/cron"]);
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("kubectl mtls policy -n shop --for batch/cron:\n{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("batch/cron"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row, ["batch/cron", "-"], "{table}");
}
