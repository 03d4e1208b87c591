//! The webhook itself: its Deployment's replicas, whether the API server gets
//! an injected pod back from it (a dry-run pod creation, which the webhook
//! answers without side effects), whether every caBundle verifies its serving
//! certificate, and when that certificate expires.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, PostParams};
use kube::{Client, ResourceExt};

use super::platform::ready_condition;
use super::selectors::{namespace_labels, selected_by};
use super::{Cluster, Line, Options, api_error};
use crate::certs::{self, human};
use crate::contract::{INJECT, SIDECAR_NAME, STATUS, certificate_resource};
use crate::install::{Install, webhook_container};

/// Every webhook line; one skip before the install.
pub async fn all(c: &Cluster, opts: &Options) -> Vec<Line> {
    let Some(install) = &c.install else {
        return vec![Line::skip(
            "webhook",
            "kube-mtls is not installed (no MutatingWebhookConfiguration labelled app.kubernetes.io/name=kube-mtls): helm install kube-mtls charts/kube-mtls -n kube-mtls --create-namespace",
        )];
    };
    let Some(deployment) = &install.deployment else {
        let svc = install
            .service
            .as_ref()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .unwrap_or_else(|| "(none)".into());
        return vec![Line::fail(
            "webhook",
            format!(
                "the webhook configuration calls Service {svc}, but no Deployment there matches its selector"
            ),
            "helm upgrade --install kube-mtls charts/kube-mtls -n <namespace> (the chart creates both)",
        )];
    };
    let mut lines = vec![replicas(deployment)];
    if let Some(e) = &install.flags_error {
        lines.push(Line::fail(
            "webhook flags",
            format!("the webhook does not start with its Deployment's args: {e}"),
            "fix the args (helm upgrade with the chart's values), or use the kubectl-mtls of the webhook's version",
        ));
    }
    lines.push(admission(c, install, opts).await);
    lines.extend(ca_bundle(&c.client, install, deployment, opts).await);
    lines
}

fn replicas(d: &Deployment) -> Line {
    let check = "webhook replicas";
    let name = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let msg = format!("Deployment {name}: {ready} of {want} replicas ready");
    if ready >= want {
        Line::pass(check, msg)
    } else {
        Line::warn(
            check,
            msg,
            format!(
                "kubectl -n {} describe deployment {}; kubectl -n {} logs deployment/{}",
                d.namespace().unwrap_or_default(),
                d.name_any(),
                d.namespace().unwrap_or_default(),
                d.name_any()
            ),
        )
    }
}

/// A pod opted in by label, created with dryRun: the API server calls the
/// webhook as for a real pod, and the answer shows whether it injected.
async fn admission(c: &Cluster, install: &Install, opts: &Options) -> Line {
    let check = "webhook admission";
    let ns = &opts.probe_namespace;
    let pod_labels = BTreeMap::from([(INJECT.to_owned(), "enabled".to_owned())]);
    let Some(namespace) = c.namespace(ns) else {
        return Line::skip(
            check,
            format!("namespace {ns} does not exist: pass --probe-namespace"),
        );
    };
    if !selected_by(&install.hooks, &namespace_labels(namespace), &pod_labels) {
        return Line::skip(
            check,
            format!(
                "namespace {ns} is not sent to the webhook: pass --probe-namespace with one that is"
            ),
        );
    }
    let pod = probe_pod(pod_labels);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let fix = logs_fix(install);
    match Api::<Pod>::namespaced(c.client.clone(), ns)
        .create(&params, &pod)
        .await
    {
        Ok(created) => {
            let status = created.annotations().get(STATUS).is_some();
            match (status, sidecar(&created)) {
                (true, Some(s)) => Line::pass(
                    check,
                    format!(
                        "a dry-run pod in {ns} came back injected (sidecar {})",
                        s.image.as_deref().unwrap_or("?")
                    ),
                ),
                _ => Line::fail(
                    check,
                    format!(
                        "a dry-run pod labelled {INJECT}=enabled in {ns} came back without the sidecar"
                    ),
                    fix,
                ),
            }
        }
        Err(e) => Line::fail(
            check,
            format!("a dry-run pod in {ns} was refused: {}", api_error(&e)),
            fix,
        ),
    }
}

/// The dry-run pod: opted in by label, one pause container.
fn probe_pod(labels: BTreeMap<String, String>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("kubectl-mtls-check-".into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn logs_fix(install: &Install) -> String {
    match install.deployment_name() {
        Some(d) => {
            let (ns, name) = d.split_once('/').unwrap_or(("", &d));
            format!(
                "kubectl -n {ns} logs deployment/{name}; kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={}",
                install
                    .service
                    .as_ref()
                    .map(|s| s.1.as_str())
                    .unwrap_or(name)
            )
        }
        None => "check the webhook Deployment and its Service".into(),
    }
}

/// The injected sidecar container of a pod (native: an init container).
pub fn sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == SIDECAR_NAME)
}

/// The Secret holding the serving certificate: the one mounted at `--tls-dir`.
fn serving_secret(d: &Deployment, tls_dir: &str) -> Option<String> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    let c = webhook_container(d)?;
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == tls_dir.trim_end_matches('/'))?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    volume.secret.as_ref()?.secret_name.clone()
}

/// Every webhook's caBundle verifies the serving certificate for the Service's
/// name; the certificate's expiry; its cert-manager Certificate is Ready.
async fn ca_bundle(
    client: &Client,
    install: &Install,
    d: &Deployment,
    opts: &Options,
) -> Vec<Line> {
    let ns = d.namespace().unwrap_or_default();
    let Some(secret) = serving_secret(d, &install.flags.tls_dir) else {
        return vec![Line::fail(
            "ca-bundle",
            format!(
                "the webhook mounts no Secret at --tls-dir {}",
                install.flags.tls_dir
            ),
            "helm upgrade --install with the chart's templates (the serving certificate is a Secret volume)",
        )];
    };
    let chain = match Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&secret)
        .await
    {
        Ok(s) => s
            .data
            .and_then(|d| d.get("tls.crt").cloned())
            .map(|b| b.0)
            .unwrap_or_default(),
        Err(e) => {
            return vec![Line::warn(
                "ca-bundle",
                format!(
                    "cannot read Secret {ns}/{secret} with the serving certificate: {}",
                    api_error(&e)
                ),
                "run the check with permission to get secrets in the webhook's namespace",
            )];
        }
    };
    let chain = match certs::pem_certs(&chain, "tls.crt") {
        Ok(c) => c,
        Err(e) => {
            return vec![Line::fail(
                "ca-bundle",
                format!("Secret {ns}/{secret}: {e}"),
                format!(
                    "kubectl -n {ns} describe certificate; cert-manager writes tls.crt when it issues"
                ),
            )];
        }
    };
    let dns = format!(
        "{}.{}.svc",
        install.service.as_ref().map(|s| s.1.as_str()).unwrap_or(""),
        ns
    );
    let mut lines = bundles(install, &chain, &dns, opts.now);
    lines.push(expiry(&chain, &secret, &ns, opts));
    lines.push(serving_certificate(client, install).await);
    lines
}

fn bundles(
    install: &Install,
    chain: &[rustls_pki_types::CertificateDer<'_>],
    dns: &str,
    now: i64,
) -> Vec<Line> {
    let inject_from = install
        .hooks
        .annotations()
        .get("cert-manager.io/inject-ca-from")
        .cloned();
    let fix = match &inject_from {
        Some(from) => format!("cert-manager's cainjector fills it from Certificate {from}: check that the cainjector runs and that Certificate is Ready"),
        None => "set each webhook's clientConfig.caBundle to the CA that signs the serving certificate (or annotate the configuration with cert-manager.io/inject-ca-from)".into(),
    };
    let mut lines = Vec::new();
    for w in install.hooks.webhooks.iter().flatten() {
        let check = format!("ca-bundle {}", w.name);
        let bundle = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        if bundle.is_empty() {
            lines.push(Line::fail(
                check,
                "caBundle is empty: the API server cannot trust the webhook",
                fix.clone(),
            ));
            continue;
        }
        let verified = certs::pem_certs(&bundle, "the caBundle")
            .and_then(|cas| certs::verify_serving(&cas, chain, dns, now));
        lines.push(match verified {
            Ok(()) => Line::pass(
                check,
                format!("caBundle verifies the serving certificate for {dns}"),
            ),
            Err(e) => Line::fail(check, e.to_string(), fix.clone()),
        });
    }
    lines
}

fn expiry(
    chain: &[rustls_pki_types::CertificateDer<'_>],
    secret: &str,
    ns: &str,
    opts: &Options,
) -> Line {
    let check = "serving certificate expiry";
    let renew = format!(
        "cert-manager renews it; to force: kubectl -n {ns} delete secret {secret} (cert-manager issues a new one)"
    );
    match chain.first().map(certs::not_after) {
        Some(Ok(t)) => {
            let left = t - opts.now;
            if left <= 0 {
                Line::fail(
                    check,
                    format!(
                        "expired {} ago: the API server refuses the webhook",
                        human(-left)
                    ),
                    renew,
                )
            } else if left < opts.expiry_warning_secs {
                Line::warn(check, format!("expires in {}", human(left)), renew)
            } else {
                Line::pass(check, format!("expires in {}", human(left)))
            }
        }
        Some(Err(e)) => Line::fail(check, e.to_string(), renew),
        None => Line::fail(check, "no certificate", renew),
    }
}

/// The cert-manager Certificate the caBundle comes from is Ready.
async fn serving_certificate(client: &Client, install: &Install) -> Line {
    let check = "serving certificate";
    let Some(from) = install
        .hooks
        .annotations()
        .get("cert-manager.io/inject-ca-from")
        .cloned()
    else {
        return Line::skip(check, "the caBundle is not injected by cert-manager");
    };
    let Some((ns, name)) = from.split_once('/') else {
        return Line::fail(
            check,
            format!("cert-manager.io/inject-ca-from {from:?} is not <namespace>/<name>"),
            "helm upgrade --install with the chart's templates",
        );
    };
    match Api::<DynamicObject>::namespaced_with(client.clone(), ns, &certificate_resource())
        .get_opt(name)
        .await
    {
        Ok(Some(cert)) => match ready_condition(&cert.data) {
            (true, _) => Line::pass(check, format!("Certificate {from} Ready")),
            (false, why) => Line::fail(
                check,
                format!("Certificate {from} not Ready: {why}"),
                format!("kubectl -n {ns} describe certificate {name}"),
            ),
        },
        Ok(None) => Line::fail(
            check,
            format!("Certificate {from} not found"),
            "helm upgrade --install with the chart's templates",
        ),
        Err(e) => Line::warn(
            check,
            format!("cannot read Certificate {from}: {}", api_error(&e)),
            "run the check with permission to get certificates.cert-manager.io",
        ),
    }
}
