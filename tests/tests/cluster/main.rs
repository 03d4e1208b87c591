//! Cluster test: the user's path on a real control plane. `helm install` the
//! chart, opt Deployments in by label, and check that the real API server,
//! controller manager and cert-manager turn them into pods that serve mTLS.
//!
//! The control plane ([`kube_mtls_tests::cluster`]) has no node: the webhook
//! Deployment runs as this repository's binary with the chart's arguments and
//! its ServiceAccount's token, reached through its Service by the API server;
//! injected pods read back from the API server run in network-namespace pods
//! through the stand-in kubelet ([`kube_mtls_tests::kubelet`]).
//!
//! `kubectl mtls` ([`plugin`]) checks the install, fails on a broken issuer
//! or a baseline namespace, and reads the workloads back.
//!
//! Run it alone with `make cluster-test` (it builds the control plane first).

use std::process::Output;
use std::time::Duration;

use kube_mtls_tests::bins::bin;
use kube_mtls_tests::cluster::{API_IP, Cluster, contained_in, has_condition, repo_root};
use kube_mtls_tests::kubelet::{RunningPod, run_injected};

mod failure;
mod plugin;
mod scenario;
mod serve;

use failure::*;
use scenario::*;
use serve::*;

const RELEASE_NS: &str = "kube-mtls";
const WEBHOOK: &str = "kube-mtls-webhook";

#[test]
#[ignore = "needs root and the control plane from e2e/cluster/build.sh: run `make cluster-test`"]
fn helm_install_annotate_and_serve_mtls_on_a_real_control_plane() {
    let started = std::time::Instant::now();
    let step = |name: &str| eprintln!("==> {name} (at {:.1?})", started.elapsed());
    let mut c = Cluster::start();
    step("control plane up; helm install");
    install_chart(&mut c);
    start_webhook(&mut c);
    step("kubectl mtls check");
    plugin::check_passes_after_install(&c);
    plugin::check_fails_when_the_issuer_is_not_ready(&mut c);
    plugin::check_fails_when_a_namespace_enforces_baseline(&mut c);
    step("workloads");
    let stored = deploy_workloads(&mut c);
    step("kubectl mtls status and policy");
    plugin::status_and_policy(&c);
    step("injected pods serve mTLS");
    let (mut orders, front) = run_pods(&c, &stored);
    let orders_ip = serve_mtls(&c, &orders, &front);
    step("rotation");
    rotate(&mut c, &mut orders, &front, orders_ip);
    step("bad input and failure");
    refuse_bad_annotations(&mut c);
    keep_profiles_and_settle(&mut c);
    remove_certificates_with_their_service_account(&mut c);
    fail_closed_without_the_webhook(&mut c);
    step("uninstall");
    uninstall(&mut c);
    step("done");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 1. The chart installs with default values: its CRD is established,
///    cert-manager issues the serving certificate and the workload CA, and
///    the cainjector fills the webhook configuration's caBundle.
fn install_chart(c: &mut Cluster) {
    let chart = repo_root().join("charts/kube-mtls");
    let out = c.helm(&[
        "install",
        "kube-mtls",
        &chart.display().to_string(),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
    ]);
    assert!(out.status.success(), "helm install: {}", stderr(&out));
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/mtlsprofiles.kube-mtls.io",
    ]);
    for (ns, kind, name) in [
        (RELEASE_NS, "certificate", "kube-mtls-webhook-tls"),
        ("cert-manager", "certificate", "kube-mtls-ca"),
        ("", "clusterissuer", "kube-mtls-ca"),
    ] {
        wait_ready(c, ns, kind, name);
    }
    c.wait(
        "the caBundle from cainjector",
        Duration::from_secs(120),
        |c| {
            let hooks = c.get_json(&["get", "mutatingwebhookconfiguration", "kube-mtls"]);
            let ca = c.secret_files(RELEASE_NS, "kube-mtls-webhook-tls").ca_pem;
            let want = b64(&ca);
            hooks["webhooks"]
                .as_array()
                .is_some_and(|ws| ws.iter().all(|w| w["clientConfig"]["caBundle"] == want))
        },
    );
}

/// The webhook Deployment, run as the chart configured it, behind its Service.
fn start_webhook(c: &mut Cluster) {
    c.run_deployment(RELEASE_NS, WEBHOOK, "webhook", &bin("kube-mtls-webhook"));
    c.route_service(RELEASE_NS, WEBHOOK, &[(443, 8443), (8080, 8080)]);
    c.wait("the webhook's /readyz", Duration::from_secs(60), |c| {
        let out = c
            .command("curl")
            .args(["-sf", &format!("http://{API_IP}:8080/readyz")])
            .output();
        out.is_ok_and(|o| o.status.success())
    });
}

/// 2. The controller manager creates the pods through real admission, and they
///    are stored injected exactly as the offline injector writes them.
fn deploy_workloads(c: &mut Cluster) -> Stored {
    let out = c.apply(WORKLOADS);
    assert!(out.status.success(), "apply workloads: {}", stderr(&out));
    let chart_flags = injection_flags(c);
    let mut stored = Stored::default();
    for w in [&ORDERS, &FRONT, &CRON] {
        let pod = wait_pod(c, w.namespace, w.app);
        assert!(
            pod["metadata"]["generateName"].is_string(),
            "{} was not created by a ReplicaSet: {}",
            w.app,
            pod["metadata"]
        );
        let offline = offline_inject(&chart_flags, &deployment_doc(w.app));
        let template = &offline["spec"]["template"];
        if let Err(diff) = contained_in(&template["spec"], &pod["spec"]) {
            panic!(
                "{}: stored pod differs from offline inject at {diff}",
                w.app
            );
        }
        let status = "kube-mtls.io/status";
        assert_eq!(
            pod["metadata"]["annotations"][status], template["metadata"]["annotations"][status],
            "{}: status annotation",
            w.app
        );
        check_certificate(c, w);
        stored.pods.push((w.app.to_owned(), pod));
    }
    stored
}

/// 3. The pod's Certificate names its SPIFFE ID, and real cert-manager issued it.
fn check_certificate(c: &mut Cluster, w: &Workload) {
    let name = format!("kube-mtls-{}", w.app);
    wait_ready(c, w.namespace, "certificate", &name);
    let cert = c.get_json(&["-n", w.namespace, "get", "certificate", &name]);
    let id = format!("spiffe://cluster.local/ns/{}/sa/{}", w.namespace, w.app);
    assert_eq!(cert["spec"]["uris"], serde_json::json!([id]), "{cert}");
    let secret = cert["spec"]["secretName"].as_str().expect("secretName");
    let issued = c.secret_files(w.namespace, secret);
    let text = x509_text(&issued.cert_pem);
    assert!(text.contains(&format!("URI:{id}")), "{text}");
}

/// 4. Two stored pods run: the server and an allowed caller, each with the
///    certificate real cert-manager issued.
fn run_pods(c: &Cluster, stored: &Stored) -> (RunningPod, RunningPod) {
    let run = |w: &Workload| {
        let spec = &stored.pod(w.app)["spec"];
        let secret = c.secret_files(w.namespace, &format!("kube-mtls-{}-tls", w.app));
        run_injected(spec, &secret, &[8080])
    };
    (run(&ORDERS), run(&FRONT))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Waits for condition Ready of `kind/name`.
fn wait_ready(c: &mut Cluster, ns: &str, kind: &str, name: &str) {
    c.wait(
        &format!("{kind} {ns}/{name} Ready"),
        Duration::from_secs(180),
        |c| {
            let mut args = vec!["get", kind, name];
            if !ns.is_empty() {
                args.extend(["-n", ns]);
            }
            c.try_get_json(&args)
                .is_some_and(|o| has_condition(&o, "Ready"))
        },
    );
}
